//! Atomics and fences with explicit scopes. See `kernels/src/QUEUE.md` for the protocols.

use core::arch::asm;

/// `atom.relaxed.gpu.global.add.u64`: returns the old value.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn atom_add_relaxed_gpu_u64(addr: u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("atom.relaxed.gpu.global.add.u64 {0}, [{1}], {2};", out(reg64) old, in(reg64) addr, in(reg64) v, options(nostack))
    };
    old
}

/// `red.release.gpu.global.add.u32`: a release increment (orders this thread's earlier memory
/// accesses, and those it observed, before the increment).
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn red_add_release_gpu_u32(addr: u64, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("red.release.gpu.global.add.u32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `atom.acq_rel.gpu.global.add.u32`: returns the old value.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn atom_add_acq_rel_gpu_u32(addr: u64, v: u32) -> u32 {
    let old: u32;
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("atom.acq_rel.gpu.global.add.u32 {0}, [{1}], {2};", out(reg32) old, in(reg64) addr, in(reg32) v, options(nostack))
    };
    old
}

/// `atom.relaxed.gpu.global.cas.b32`: returns the old value.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn atom_cas_relaxed_gpu_u32(addr: u64, compare: u32, v: u32) -> u32 {
    let old: u32;
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("atom.relaxed.gpu.global.cas.b32 {0}, [{1}], {2}, {3};",
            out(reg32) old, in(reg64) addr, in(reg32) compare, in(reg32) v, options(nostack))
    };
    old
}

/// `fence.acq_rel.gpu`.
#[inline(always)]
pub fn fence_acq_rel_gpu() {
    // SAFETY: a fence has no preconditions.
    unsafe { asm!("fence.acq_rel.gpu;", options(nostack)) };
}
