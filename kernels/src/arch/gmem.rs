//! Global memory loads and stores. `.nc` loads go through the read-only path and are only for
//! data no thread writes during the launch (A, B, bias, round descriptors).

use core::arch::asm;

/// `ld.global.nc.f32`.
///
/// # Safety
/// `addr` is a valid global address of an `f32` not written during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_f32(addr: u64) -> f32 {
    let v: f32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.global.nc.f32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(pure, readonly, nostack)) };
    v
}

/// `ld.global.nc.u32`.
///
/// # Safety
/// `addr` is a valid, 4-byte aligned global address of a `u32` not written during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_u32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.global.nc.u32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(pure, readonly, nostack)) };
    v
}

/// `ld.global.nc.v4.f32`: 16 bytes.
///
/// # Safety
/// `addr` is 16-byte aligned, valid for 16 bytes and not written during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_v4(addr: u64) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("ld.global.nc.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
            options(pure, readonly, nostack))
    };
    [a, b, c, d]
}

/// `ld.global.nc.v4.u32`: 16 bytes of descriptor words.
///
/// # Safety
/// `addr` is 16-byte aligned, valid for 16 bytes and not written during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_v4_u32(addr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("ld.global.nc.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
            options(pure, readonly, nostack))
    };
    [a, b, c, d]
}

/// `ld.global.f32` (coherent: for `C`, which the launch also writes).
///
/// # Safety
/// `addr` is a valid global address of an `f32`.
#[inline(always)]
pub unsafe fn ld_global_f32(addr: u64) -> f32 {
    let v: f32;
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("ld.global.f32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(readonly, nostack)) };
    v
}

/// `ld.global.v4.f32` (coherent).
///
/// # Safety
/// `addr` is 16-byte aligned and valid for 16 bytes.
#[inline(always)]
pub unsafe fn ld_global_v4(addr: u64) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("ld.global.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
            options(readonly, nostack))
    };
    [a, b, c, d]
}

/// `st.global.f32`.
///
/// # Safety
/// `addr` is a valid global address of an `f32` that no other thread accesses concurrently.
#[inline(always)]
pub unsafe fn st_global_f32(addr: u64, v: f32) {
    // SAFETY: the caller guarantees the address.
    unsafe { asm!("st.global.f32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `st.global.v4.f32`: 16 bytes.
///
/// # Safety
/// `addr` is 16-byte aligned, valid for 16 bytes, and not accessed concurrently by other threads.
#[inline(always)]
pub unsafe fn st_global_v4(addr: u64, v: [f32; 4]) {
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("st.global.v4.f32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg64) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
            options(nostack))
    };
}

/// `ld.global.cg.v4.f32`: 16 bytes through L2 only (never a stale L1 line): for data other CTAs
/// wrote during the launch, read after an acquire.
///
/// # Safety
/// `addr` is 16-byte aligned and valid for 16 bytes.
#[inline(always)]
pub unsafe fn ld_global_cg_v4(addr: u64) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    // SAFETY: the caller guarantees alignment and range.
    unsafe {
        asm!("ld.global.cg.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
            options(readonly, nostack))
    };
    [a, b, c, d]
}
