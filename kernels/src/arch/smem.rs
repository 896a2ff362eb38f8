//! Shared memory: the dynamic `.extern .shared` window and `ld.shared`/`st.shared`.
//! Addresses are 32-bit offsets in the shared window.

use core::arch::{asm, global_asm};

global_asm!(".extern .shared .align 16 .b8 tilemux_smem[];");

/// Shared-window address of the dynamic shared memory.
#[inline(always)]
pub fn smem_base() -> u32 {
    let r: u32;
    // SAFETY: takes the address of a symbol; touches no memory.
    unsafe { asm!("mov.u32 {0}, tilemux_smem;", out(reg32) r, options(pure, nomem, nostack)) };
    r
}

/// `ld.shared.f32`.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_f32(addr: u32) -> f32 {
    let v: f32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.shared.f32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(pure, readonly, nostack)) };
    v
}

/// `ld.shared.u32`.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_u32(addr: u32) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.shared.u32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(pure, readonly, nostack)) };
    v
}

/// `ld.shared.v4.f32`: 16 bytes.
///
/// # Safety
/// `addr` is 16-byte aligned and lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("ld.shared.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
            options(pure, readonly, nostack))
    };
    [a, b, c, d]
}

/// `st.shared.f32`.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_f32(addr: u32, v: f32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.shared.f32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack)) };
}

/// `st.shared.u32`.
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.shared.u32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack)) };
}

/// `st.shared.v4.f32`: 16 bytes.
///
/// # Safety
/// `addr` is 16-byte aligned and lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v4(addr: u32, v: [f32; 4]) {
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("st.shared.v4.f32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
            options(nostack))
    };
}

/// `ld.shared.u64`.
///
/// # Safety
/// `addr` is 8-byte aligned and lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_u64(addr: u32) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.shared.u64 {0}, [{1}];", out(reg64) v, in(reg32) addr, options(pure, readonly, nostack)) };
    v
}

/// `st.shared.v4.u32`: 16 bytes of words.
///
/// # Safety
/// `addr` is 16-byte aligned and lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v4_u32(addr: u32, v: [u32; 4]) {
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("st.shared.v4.u32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
            options(nostack))
    };
}

/// `st.shared.u64`.
///
/// # Safety
/// `addr` is 8-byte aligned and lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_u64(addr: u32, v: u64) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.shared.u64 [{0}], {1};", in(reg32) addr, in(reg64) v, options(nostack)) };
}

/// `ld.acquire.gpu.shared.u32`. On sm_90 an acquire at GPU scope is the load and then
/// `CCTL.IVALL` (every L1 line of the SM dropped, so no later load is served data older than
/// the acquire); from shared memory the load itself costs nothing, which makes this the way to
/// order a thread's later global loads after an earlier relaxed one without a fence (see
/// `persistent::find`).
///
/// # Safety
/// `addr` lies in the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_acquire_gpu_shared_u32(addr: u32) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.acquire.gpu.shared.u32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(nostack)) };
    v
}
