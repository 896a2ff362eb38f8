//! Matrix-vector tiles (`n == 1`, `A` not transposed): `ROWS` rows of `y = A·x` per call.
//!
//! Written for bandwidth: each of the 8 warps owns `RPW` consecutive rows; its lanes stride
//! through `k` in 16-byte chunks (coalesced: a warp reads 512 contiguous bytes of a row per step),
//! four chunks of every row in flight per step with 4 rows per warp, two with more (`4 · RPW` or
//! `2 · RPW` independent 16-byte loads per lane), then
//! a butterfly shuffle sums each row across the warp. Unaligned rows or a strided `x` take a scalar
//! path with the same structure.

use crate::abi::flags;
use crate::arch::{fma, ld_global_nc_f32, ld_global_nc_v4, thread_idx_x, warp_sum};
use crate::epilogue::Epilogue;
use crate::problem::Problem;

#[inline(always)]
fn dot4(a: [f32; 4], x: [f32; 4], acc: f32) -> f32 {
    fma(a[3], x[3], fma(a[2], x[2], fma(a[1], x[1], fma(a[0], x[0], acc))))
}

/// Computes rows `tile_m·8·RPW ..` of the staged problem `d` (a matrix-vector product) and
/// stores them.
///
/// # Safety
/// Called by all 256 threads of the CTA; the problem was validated on the host with `n == 1` and
/// no `TRANS_A` (`TileKind::supports`), so `A` spans `m × k` and `x` (B) spans `k` elements.
#[inline(always)]
pub unsafe fn gemv_tile<const RPW: usize>(d: Problem, tile_m: u32) {
    let tid = thread_idx_x();
    let (warp, lane) = (tid / 32, tid % 32);
    let row0 = tile_m * (8 * RPW as u32) + warp * RPW as u32;
    let (m, k, lda, a, b) = (d.m(), d.k(), d.lda(), d.a(), d.b());
    if row0 >= m {
        return; // warp-uniform: a ragged last tile leaves whole warps idle
    }

    // Rows past `m` re-read the last row (valid memory) and are never stored.
    let mut rows = [0u64; RPW];
    for (r, row) in rows.iter_mut().enumerate() {
        let i = if row0 + (r as u32) < m { row0 + r as u32 } else { m - 1 };
        *row = a + i as u64 * lda as u64 * 4;
    }
    // B is `k × 1` (stride ldb) or, transposed, `1 × k` (stride 1).
    let x_stride = if d.flags() & flags::TRANS_B != 0 { 1 } else { d.ldb() as u64 };
    let vec = a % 16 == 0 && lda % 4 == 0 && x_stride == 1 && b % 16 == 0;
    let k4 = if vec { k / 4 } else { 0 };

    let mut acc = [0.0f32; RPW];
    // SAFETY (all loads): chunk q < k4 covers elements 4q..4q+4 <= k of a validated row or of
    // x; scalar indices are < k; `vec` guarantees 16-byte alignment of 4-wide loads.
    let mut q = lane;
    // Four chunks of every row in flight where registers allow (4 rows or fewer per warp): a
    // 512-wide row is then one round of loads, which is what a lone request waits on.
    while RPW <= 4 && q + 96 < k4 {
        let off = [0u32, 1, 2, 3].map(|u| (q + 32 * u) as u64 * 16);
        let x = unsafe { off.map(|o| ld_global_nc_v4(b + o)) };
        let mut a4 = [[[0.0f32; 4]; 4]; RPW];
        for r in 0..RPW {
            for u in 0..4 {
                a4[r][u] = unsafe { ld_global_nc_v4(rows[r] + off[u]) };
            }
        }
        for r in 0..RPW {
            acc[r] = dot4(a4[r][3], x[3], dot4(a4[r][2], x[2], dot4(a4[r][1], x[1], dot4(a4[r][0], x[0], acc[r]))));
        }
        q += 128;
    }
    while q + 32 < k4 {
        let off0 = q as u64 * 16;
        let off1 = off0 + 32 * 16;
        let (x0, x1) = unsafe { (ld_global_nc_v4(b + off0), ld_global_nc_v4(b + off1)) };
        let mut a0 = [[0.0f32; 4]; RPW];
        let mut a1 = [[0.0f32; 4]; RPW];
        for r in 0..RPW {
            unsafe {
                a0[r] = ld_global_nc_v4(rows[r] + off0);
                a1[r] = ld_global_nc_v4(rows[r] + off1);
            }
        }
        for r in 0..RPW {
            acc[r] = dot4(a1[r], x1, dot4(a0[r], x0, acc[r]));
        }
        q += 64;
    }
    if q < k4 {
        let off = q as u64 * 16;
        let x0 = unsafe { ld_global_nc_v4(b + off) };
        for r in 0..RPW {
            acc[r] = dot4(unsafe { ld_global_nc_v4(rows[r] + off) }, x0, acc[r]);
        }
    }
    let mut kk = k4 * 4 + lane;
    while kk < k {
        let x = unsafe { ld_global_nc_f32(b + kk as u64 * x_stride * 4) };
        for r in 0..RPW {
            acc[r] = fma(unsafe { ld_global_nc_f32(rows[r] + kk as u64 * 4) }, x, acc[r]);
        }
        kk += 32;
    }

    let mut mine = 0.0f32;
    for (r, a) in acc.iter().enumerate() {
        let s = warp_sum(*a);
        if lane == r as u32 {
            mine = s;
        }
    }
    if lane < RPW as u32 {
        // SAFETY: one lane per row; store1 skips rows past `m`.
        unsafe { Epilogue::new(d).store1(row0 + lane, 0, mine) };
    }
}
