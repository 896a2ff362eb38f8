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

/// `red.relaxed.gpu.global.add.u32`: an atomic increment that orders nothing else.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn red_add_relaxed_gpu_u32(addr: u64, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("red.relaxed.gpu.global.add.u32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
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

/// `ld.acquire.gpu.global.u64`.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn ld_acquire_gpu_u64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.acquire.gpu.global.u64 {0}, [{1}];", out(reg64) v, in(reg64) addr, options(nostack)) };
    v
}

/// `ld.acquire.gpu.global.u32`.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn ld_acquire_gpu_u32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.acquire.gpu.global.u32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(nostack)) };
    v
}

/// `ld.acquire.sys.global.u64`: for words the host writes (host-mapped memory).
///
/// # Safety
/// `addr` is an 8-byte aligned global (or mapped host) address.
#[inline(always)]
pub unsafe fn ld_acquire_sys_u64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.acquire.sys.global.u64 {0}, [{1}];", out(reg64) v, in(reg64) addr, options(nostack)) };
    v
}

/// `st.release.gpu.global.u64`.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn st_release_gpu_u64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.release.gpu.global.u64 [{0}], {1};", in(reg64) addr, in(reg64) v, options(nostack)) };
}

/// `st.release.gpu.global.u32`.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn st_release_gpu_u32(addr: u64, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.release.gpu.global.u32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `st.release.sys.global.u64`: publishes to the host (host-mapped memory).
///
/// # Safety
/// `addr` is an 8-byte aligned global (or mapped host) address.
#[inline(always)]
pub unsafe fn st_release_sys_u64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.release.sys.global.u64 [{0}], {1};", in(reg64) addr, in(reg64) v, options(nostack)) };
}

/// `st.relaxed.gpu.global.u32`.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn st_relaxed_gpu_u32(addr: u64, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.relaxed.gpu.global.u32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `ld.volatile.global.u64`: a load that goes to memory every time (host-mapped words).
///
/// # Safety
/// `addr` is an 8-byte aligned global (or mapped host) address.
#[inline(always)]
pub unsafe fn ld_volatile_u64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.volatile.global.u64 {0}, [{1}];", out(reg64) v, in(reg64) addr, options(nostack)) };
    v
}

/// `ld.volatile.global.u32`.
///
/// # Safety
/// `addr` is a 4-byte aligned global (or mapped host) address.
#[inline(always)]
pub unsafe fn ld_volatile_u32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.volatile.global.u32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(nostack)) };
    v
}

/// `ld.volatile.global.v4.u32`: 16 bytes, from memory every time.
///
/// # Safety
/// `addr` is a 16-byte aligned global (or mapped host) address.
#[inline(always)]
pub unsafe fn ld_volatile_v4_u32(addr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("ld.volatile.global.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr, options(nostack))
    };
    [a, b, c, d]
}

/// `nanosleep.u32`: suspends the thread for about `ns` nanoseconds (sm_70+).
#[inline(always)]
pub fn nanosleep(ns: u32) {
    // SAFETY: no memory effects.
    unsafe { asm!("nanosleep.u32 {0};", in(reg32) ns, options(nostack, nomem)) };
}

/// `%globaltimer`: nanoseconds of a GPU-wide clock.
#[inline(always)]
pub fn globaltimer() -> u64 {
    let v: u64;
    // SAFETY: reading a special register.
    unsafe { asm!("mov.u64 {0}, %globaltimer;", out(reg64) v, options(nostack, nomem)) };
    v
}

/// `st.relaxed.gpu.global.v4.u32`: 16 bytes, morally strong at GPU scope (a reader that fences
/// after seeing them synchronizes with a fence before them).
///
/// # Safety
/// `addr` is a 16-byte aligned global address.
#[inline(always)]
pub unsafe fn st_relaxed_gpu_v4_u32(addr: u64, v: [u32; 4]) {
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("st.relaxed.gpu.global.v4.u32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg64) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack))
    };
}

/// `st.relaxed.gpu.global.u64`.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn st_relaxed_gpu_u64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.relaxed.gpu.global.u64 [{0}], {1};", in(reg64) addr, in(reg64) v, options(nostack)) };
}

/// `fence.acq_rel.sys`.
#[inline(always)]
pub fn fence_acq_rel_sys() {
    // SAFETY: a fence has no preconditions.
    unsafe { asm!("fence.acq_rel.sys;", options(nostack)) };
}

/// `st.relaxed.sys.global.u64`.
///
/// # Safety
/// `addr` is an 8-byte aligned global (or host-mapped) address.
#[inline(always)]
pub unsafe fn st_relaxed_sys_u64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.relaxed.sys.global.u64 [{0}], {1};", in(reg64) addr, in(reg64) v, options(nostack)) };
}

/// `st.relaxed.sys.global.u8` of `v`'s low byte.
///
/// # Safety
/// `addr` is a global (or host-mapped) address.
#[inline(always)]
pub unsafe fn st_relaxed_sys_u8(addr: u64, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.relaxed.sys.global.u8 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `red.relaxed.gpu.global.max.u64`: raises the word to `v` if it is lower.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn red_max_relaxed_gpu_u64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("red.relaxed.gpu.global.max.u64 [{0}], {1};", in(reg64) addr, in(reg64) v, options(nostack)) };
}

/// `ld.volatile.shared.u32`: a load the compiler keeps inside a polling loop.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_volatile_shared_u32(addr: u32) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.volatile.shared.u32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(nostack)) };
    v
}

/// `atom.shared.cas.b32`: returns the old value.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory, 4-byte aligned.
#[inline(always)]
pub unsafe fn atom_cas_shared_u32(addr: u32, compare: u32, v: u32) -> u32 {
    let old: u32;
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("atom.shared.cas.b32 {0}, [{1}], {2}, {3};",
            out(reg32) old, in(reg32) addr, in(reg32) compare, in(reg32) v, options(nostack))
    };
    old
}

/// `atom.release.gpu.global.add.u64`: returns the old value.
///
/// # Safety
/// `addr` is an 8-byte aligned global address.
#[inline(always)]
pub unsafe fn atom_add_release_gpu_u64(addr: u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: the caller guarantees the address.
    unsafe {
        asm!("atom.release.gpu.global.add.u64 {0}, [{1}], {2};", out(reg64) old, in(reg64) addr, in(reg64) v, options(nostack))
    };
    old
}
