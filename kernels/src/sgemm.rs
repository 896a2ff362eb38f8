//! SIMT FP32 GEMM tiles: one `BM × BN` tile of `C` per call, 256 threads.
//!
//! Each operand is seen as an `MN × K` panel (`op(A)` is `m × k`, `op(B)ᵀ` is `n × k`) that is
//! either k-contiguous in memory (A as stored, Bᵀ) or mn-contiguous (Aᵀ, B as stored). Every
//! k-slice of `BK` is staged through shared memory as `[BK][MN + pad]`, mn fastest, so that the
//! inner product reads 16-byte fragments along m and n. Two stages: while the CTA multiplies one
//! slice, each thread holds the next slice's 16 bytes in registers and stores them into the other
//! stage before the slice's last k-row (one barrier per slice); the last k-row is multiplied
//! after the barrier while the next stage's first fragments load, so no warp waits on shared
//! memory right after a barrier ([`k_loop`]).
//!
//! Each thread owns one 4-element chunk of each panel slice (two of the wide tile's 256-row A
//! panel). A chunk's address advances by a fixed step per slice. Two loaders feed the one k-loop
//! ([`k_loop`]):
//! - the interior path ([`interior_k_loop`]), for a tile inside `m` and `n` of a problem with A
//!   k-contiguous, B either way and both 16-byte aligned (every tile of the seed shapes): each
//!   chunk of a full slice is one `ld.global.nc.v4` at pointer + step, with no bounds in the loop;
//! - the general path ([`Chunk`]): a chunk inside the operand and 16-byte aligned is one
//!   `ld.global.nc.v4`; chunks on an edge take a predicated scalar path that reads the operand's
//!   bounds from the staged descriptor, so no bounds live in registers across the loop.
//!
//! Split-K: a tile computes the grains of `k` its [`KPart`] names. An output tile computed in
//! several parts (uniform split-K, or the unequal runs of stream-K balancing) has each part
//! write its raw accumulators to the problem's workspace; the last part to arrive (an
//! acquire-release counter per output tile) sums all partials in part order, so the result does
//! not depend on arrival order, and runs the epilogue.
//!
//! Thread `(ty, tx)` of the 16 × 16 thread grid owns a `TM × TN` block of outputs made of 4 × 4
//! sub-blocks spaced `BM / (TM/4)` rows and `BN / (TN/4)` columns apart, so that a warp's fragment
//! loads are broadcasts (A) or conflict-free (B).

use crate::abi::{BLOCK_THREADS, KPart, SGEMM_SMEM_PAD, SMEM_FLAG_OFFSET, flags};
use crate::arch::{
    atom_add_acq_rel_gpu_u32, fence_acq_rel_gpu, fma, ld_global_cg_v4, ld_global_nc_f32, ld_global_nc_v4,
    ld_shared_u32, ld_shared_v4, smem_base, st_global_v4, st_shared_f32, st_shared_u32, st_shared_v4, sync_threads,
    thread_idx_x,
};
use crate::epilogue::Epilogue;
use crate::problem::Problem;

/// One thread's chunk of one operand's panel.
#[derive(Clone, Copy)]
struct Chunk {
    /// Address of the chunk in slice 0 (valid only when `fast`).
    ptr: u64,
    /// Bytes between the chunk's addresses in consecutive slices.
    step: u64,
    /// Absolute mn index of the chunk's first element, and its k offset inside a slice.
    mn: u32,
    kq: u32,
    /// The chunk is 4 consecutive elements along k (else along mn).
    k_contig: bool,
    /// This thread has a chunk (small panels leave some threads without).
    active: bool,
    /// The chunk lies inside the operand along mn and 16-byte aligned: interior slices are one
    /// vector load.
    fast: bool,
}

/// Where chunk `idx` of an `MN × BK` panel slice lies: its mn offset in the tile and its k offset
/// in the slice. A k-contiguous chunk runs along k, any other along mn.
#[inline(always)]
fn chunk_at<const MN: u32, const BK: u32>(idx: u32, k_contig: bool) -> (u32, u32) {
    if k_contig { (idx / (BK / 4), idx % (BK / 4) * 4) } else { (idx % (MN / 4) * 4, idx / (MN / 4)) }
}

/// Address of the chunk at absolute mn index `mn`, k offset `kq` in slice 0, of an operand at
/// `base` with leading dimension `ld`.
#[inline(always)]
fn chunk_ptr(base: u64, ld: u32, k_contig: bool, mn: u32, kq: u32) -> u64 {
    let (r, c) = if k_contig { (mn, kq) } else { (kq, mn) };
    base + (r as u64 * ld as u64 + c as u64) * 4
}

/// Writes chunk `v`, whose first element sits at (`dmn`, `kq`), into the `[BK][MN + pad]` stage at
/// `stage`: down the k rows when the chunk is k-contiguous (the stage transposes it), else as one
/// 16-byte store.
///
/// # Safety
/// `dmn < MN`, `kq` + the chunk's k extent `<= BK`; `stage` is a 16-byte aligned shared address
/// with room for the stage.
#[inline(always)]
unsafe fn st_chunk<const MN: u32>(stage: u32, dmn: u32, kq: u32, k_contig: bool, v: [f32; 4]) {
    let row = (MN + SGEMM_SMEM_PAD) * 4;
    let at = stage + kq * row + dmn * 4;
    // SAFETY: inside the stage (the caller's contract).
    unsafe {
        if k_contig {
            for j in 0..4u32 {
                st_shared_f32(at + j * row, v[j as usize]);
            }
        } else {
            st_shared_v4(at, v);
        }
    }
}

impl Chunk {
    /// Chunk `idx` (`thread + c · BLOCK_THREADS` for the thread's `c`-th chunk) of the `MN × BK`
    /// slices of an operand at `base` with leading dimension `ld` and mn extent `mn_lim`, for the
    /// tile starting at `mn0`.
    #[inline(always)]
    fn new<const MN: u32, const BK: u32>(idx: u32, base: u64, ld: u32, k_contig: bool, mn0: u32, mn_lim: u32) -> Chunk {
        let active = idx < MN * BK / 4;
        let (dmn, kq) = chunk_at::<MN, BK>(idx, k_contig);
        let mn = mn0 + dmn;
        let ptr = chunk_ptr(base, ld, k_contig, mn, kq);
        let step = if k_contig { BK as u64 * 4 } else { BK as u64 * ld as u64 * 4 };
        let last_mn = if k_contig { mn } else { mn + 3 };
        let fast = active && last_mn < mn_lim && base % 16 == 0 && ld % 4 == 0;
        Chunk { ptr, step, mn, kq, k_contig, active, fast }
    }

    /// Loads the chunk of slice `kt`; `full` slices lie wholly inside k. Zero outside the operand.
    ///
    /// # Safety
    /// The operand (`which`: 0 = A, 1 = B) of the staged problem `d` was validated.
    #[inline(always)]
    unsafe fn load<const BK: u32>(&self, d: Problem, which: u32, kt: u32, full: u32) -> [f32; 4] {
        if self.fast && kt < full {
            // SAFETY: interior chunk: in bounds along mn (fast) and k (kt < full), 16-aligned.
            return unsafe { ld_global_nc_v4(self.ptr + kt as u64 * self.step) };
        }
        if !self.active {
            return [0.0; 4];
        }
        // Edge: bounds and layout from the staged descriptor.
        let (base, ld, mn_lim) = if which == 0 { (d.a(), d.lda(), d.m()) } else { (d.b(), d.ldb(), d.n()) };
        let k_lim = d.k();
        let k0 = kt * BK + self.kq;
        let mut v = [0.0f32; 4];
        for j in 0..4u32 {
            let (mn, k) = if self.k_contig { (self.mn, k0 + j) } else { (self.mn + j, k0) };
            if mn < mn_lim && k < k_lim {
                let (r, c) = if self.k_contig { (mn, k) } else { (k, mn) };
                // SAFETY: inside the validated operand.
                v[j as usize] = unsafe { ld_global_nc_f32(base + (r as u64 * ld as u64 + c as u64) * 4) };
            }
        }
        v
    }

    /// Stores a loaded chunk into a `[BK][MN + pad]` stage at `stage` (transposing k-contiguous
    /// chunks).
    ///
    /// # Safety
    /// `stage` is a 16-byte aligned shared address with room for the stage.
    #[inline(always)]
    unsafe fn store<const MN: u32>(&self, stage: u32, mn0: u32, v: [f32; 4]) {
        if !self.active {
            return;
        }
        // SAFETY: mn - mn0 < MN and kq < BK by construction; the stage holds BK rows.
        unsafe { st_chunk::<MN>(stage, self.mn - mn0, self.kq, self.k_contig, v) }
    }
}

/// Computes the grains the [`KPart`] packed in `split` names of output tile `(tile_m, tile_n)`
/// of the staged problem `d`; the part that completes the tile runs its epilogue.
/// `TM × TN` outputs per thread; `BM / TM == BN / TN == 16`; `CA`/`CB` chunks of the A/B slices
/// per thread (`ceil(BM · BK / 1024)`, `ceil(BN · BK / 1024)`).
///
/// # Safety
/// Called by all 256 threads of the CTA with the same arguments; the problem was validated on the
/// host (operands span their shapes, `C` does not overlap A or B); `smem` points at
/// `TileKind::smem_bytes` of 16-byte aligned dynamic shared memory.
#[inline(always)]
pub unsafe fn sgemm_tile<
    const BM: u32,
    const BN: u32,
    const BK: u32,
    const TM: usize,
    const TN: usize,
    const CA: usize,
    const CB: usize,
>(
    d: Problem,
    tile_m: u32,
    tile_n: u32,
    split: u32,
    smem: u32,
) {
    const {
        assert!(BM / TM as u32 == 16 && BN / TN as u32 == 16);
        assert!(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0);
        assert!(CA as u32 == (BM * BK / 4).div_ceil(BLOCK_THREADS));
        assert!(CB as u32 == (BN * BK / 4).div_ceil(BLOCK_THREADS));
    }
    let tid = thread_idx_x();
    let (tx, ty) = (tid % 16, tid / 16);
    let (m0, n0) = (tile_m * BM, tile_n * BN);
    let fl = d.flags();
    let k = d.k();
    // Slices [kt0, kt1) of BK (the part's grains); slices below `full` lie wholly inside k.
    let part = KPart::decode(split);
    let steps = k.div_ceil(BK);
    let (kt0, kt1, full) = if d.k_splits() > 1 {
        let per = steps.div_ceil(d.k_splits());
        ((part.first * per).min(steps), ((part.last + 1) * per).min(steps), k / BK)
    } else {
        (0, steps, k / BK)
    };
    let slices = Slices { kt0, kt1, smem, tx, ty };

    // Interior tile of a problem with k-contiguous A and 16-byte aligned operands (the common
    // case: A row-major, B either way): every chunk of every slice but a k tail is one 16-byte
    // load, so nothing about bounds stays live in the loop.
    let interior = fl & flags::TRANS_A == 0
        && m0 + BM <= d.m()
        && n0 + BN <= d.n()
        && (d.a() | d.b()) % 16 == 0
        && (d.lda() | d.ldb()) % 4 == 0;
    // SAFETY (every arm): the caller's contract; the chunks address the validated operands.
    let mut acc = if interior && fl & flags::TRANS_B == 0 {
        unsafe { interior_k_loop::<BM, BN, BK, TM, TN, CA, CB, false>(d, m0, n0, full, slices) }
    } else if interior {
        unsafe { interior_k_loop::<BM, BN, BK, TM, TN, CA, CB, true>(d, m0, n0, full, slices) }
    } else {
        let a: [Chunk; CA] = core::array::from_fn(|c| {
            Chunk::new::<BM, BK>(tid + c as u32 * BLOCK_THREADS, d.a(), d.lda(), fl & flags::TRANS_A == 0, m0, d.m())
        });
        let b: [Chunk; CB] = core::array::from_fn(|c| {
            Chunk::new::<BN, BK>(tid + c as u32 * BLOCK_THREADS, d.b(), d.ldb(), fl & flags::TRANS_B != 0, n0, d.n())
        });
        let a_stage = BK * (BM + SGEMM_SMEM_PAD) * 4;
        let load =
            #[inline(always)]
            |kt: u32| unsafe { (a.map(|c| c.load::<BK>(d, 0, kt, full)), b.map(|c| c.load::<BK>(d, 1, kt, full))) };
        let store = #[inline(always)]
        |stage: u32, v: ([[f32; 4]; CA], [[f32; 4]; CB])| unsafe {
            for c in 0..CA {
                a[c].store::<BM>(stage, m0, v.0[c]);
            }
            for c in 0..CB {
                b[c].store::<BN>(stage + a_stage, n0, v.1[c]);
            }
        };
        unsafe { k_loop::<BM, BN, BK, TM, TN, CA, CB>(load, store, slices) }
    };

    let part = KPart::decode(split);
    if part.count > 1 {
        // SAFETY: the backend sized the workspace and counters for this problem's grid and parts.
        match unsafe { reduce_splits::<BM, BN, TM, TN>(d, tile_m, tile_n, part, &mut acc) } {
            true => {}
            false => return, // another slice finishes this tile
        }
    }

    let epi = Epilogue::new(d);
    let inside = m0 + BM <= d.m() && n0 + BN <= d.n();
    let rows = (m0 + ty * 4, BM / (TM as u32 / 4));
    let cols = (n0 + tx * 4, BN / (TN as u32 / 4));
    // SAFETY: this thread alone owns these outputs of the tile; the problem is validated; the
    // block's rows and columns lie inside the tile, which lies inside `C` when `inside`.
    unsafe { epi.store_block(&acc, rows, cols, inside) };
}

/// The k-loop of an interior tile (see [`sgemm_tile`]): A k-contiguous, B n-contiguous or, with
/// `B_KC`, k-contiguous (`TRANS_B`: the stage transposes it like A); both 16-byte aligned with
/// leading dimensions that are multiples of 4, the tile inside `m` and `n`. Chunks are 16-byte
/// loads at a pointer plus a fixed step per slice; only slices from `full` on (the k tail) check
/// bounds.
///
/// # Safety
/// As [`sgemm_tile`], and the tile and problem meet the conditions above.
#[inline(always)]
unsafe fn interior_k_loop<
    const BM: u32,
    const BN: u32,
    const BK: u32,
    const TM: usize,
    const TN: usize,
    const CA: usize,
    const CB: usize,
    const B_KC: bool,
>(
    d: Problem,
    m0: u32,
    n0: u32,
    full: u32,
    slices: Slices,
) -> [[f32; TN]; TM] {
    let tid = thread_idx_x();
    let k = d.k();
    // Chunk c of this thread: (mn offset, k offset) in A's and B's panel slices.
    let at_a = |c: usize| chunk_at::<BM, BK>(tid + c as u32 * BLOCK_THREADS, true);
    let at_b = |c: usize| chunk_at::<BN, BK>(tid + c as u32 * BLOCK_THREADS, B_KC);
    let a: [u64; CA] = core::array::from_fn(|c| {
        let (dm, kq) = at_a(c);
        chunk_ptr(d.a(), d.lda(), true, m0 + dm, kq)
    });
    let b: [u64; CB] = core::array::from_fn(|c| {
        let (dn, kq) = at_b(c);
        chunk_ptr(d.b(), d.ldb(), B_KC, n0 + dn, kq)
    });
    let b_step = if B_KC { BK as u64 * 4 } else { BK as u64 * d.ldb() as u64 * 4 };
    // Chunk c of this thread exists (small panels leave some threads without; folds to
    // `true` where the panel has a multiple of BLOCK_THREADS chunks).
    let has = |c: usize, chunks: u32| chunks % BLOCK_THREADS == 0 || tid + (c as u32) * BLOCK_THREADS < chunks;
    // SAFETY (`load`, `store`): interior chunks of the validated operands (the function's
    // contract); stage offsets inside `smem`.
    let load = #[inline(always)]
    |kt: u32| unsafe {
        let (mut va, mut vb) = ([[0.0f32; 4]; CA], [[0.0f32; 4]; CB]);
        if kt < full {
            for (c, v) in va.iter_mut().enumerate() {
                if has(c, BM * BK / 4) {
                    *v = ld_global_nc_v4(a[c] + kt as u64 * BK as u64 * 4);
                }
            }
            for (c, v) in vb.iter_mut().enumerate() {
                if has(c, BN * BK / 4) {
                    *v = ld_global_nc_v4(b[c] + kt as u64 * b_step);
                }
            }
        } else {
            // The k tail: k-contiguous chunks lose their last elements, n-contiguous rows of B
            // past k are zero.
            for (c, v) in va.iter_mut().enumerate() {
                let k0 = kt * BK + at_a(c).1;
                for (j, x) in v.iter_mut().enumerate() {
                    if has(c, BM * BK / 4) && k0 + (j as u32) < k {
                        *x = ld_global_nc_f32(a[c] + kt as u64 * BK as u64 * 4 + j as u64 * 4);
                    }
                }
            }
            for (c, v) in vb.iter_mut().enumerate() {
                let k0 = kt * BK + at_b(c).1;
                if B_KC {
                    for (j, x) in v.iter_mut().enumerate() {
                        if has(c, BN * BK / 4) && k0 + (j as u32) < k {
                            *x = ld_global_nc_f32(b[c] + kt as u64 * b_step + j as u64 * 4);
                        }
                    }
                } else if has(c, BN * BK / 4) && k0 < k {
                    *v = ld_global_nc_v4(b[c] + kt as u64 * b_step);
                }
            }
        }
        (va, vb)
    };
    let store = #[inline(always)]
    |stage: u32, v: ([[f32; 4]; CA], [[f32; 4]; CB])| unsafe {
        let b_stage = stage + BK * (BM + SGEMM_SMEM_PAD) * 4;
        for c in 0..CA {
            if has(c, BM * BK / 4) {
                let (dm, kq) = at_a(c);
                st_chunk::<BM>(stage, dm, kq, true, v.0[c]);
            }
        }
        for c in 0..CB {
            if has(c, BN * BK / 4) {
                let (dn, kq) = at_b(c);
                st_chunk::<BN>(b_stage, dn, kq, B_KC, v.1[c]);
            }
        }
    };
    // SAFETY: the caller's contract.
    unsafe { k_loop::<BM, BN, BK, TM, TN, CA, CB>(load, store, slices) }
}

/// The slices a tile multiplies and where its stages live.
#[derive(Clone, Copy)]
struct Slices {
    /// Slices `[kt0, kt1)` of `BK`.
    kt0: u32,
    kt1: u32,
    /// The stages' shared address.
    smem: u32,
    /// This thread's column and row in the 16 × 16 thread grid.
    tx: u32,
    ty: u32,
}

/// The k-loop of [`sgemm_tile`]: multiplies slices `[kt0, kt1)` into fresh accumulators. `load`
/// fetches a slice's chunks of A and B into registers, `store` writes them into a stage.
///
/// # Safety
/// As [`sgemm_tile`]; `load` and `store` are safe to call for the tile's slices and stages.
#[inline(always)]
unsafe fn k_loop<
    const BM: u32,
    const BN: u32,
    const BK: u32,
    const TM: usize,
    const TN: usize,
    const CA: usize,
    const CB: usize,
>(
    load: impl Fn(u32) -> ([[f32; 4]; CA], [[f32; 4]; CB]),
    store: impl Fn(u32, ([[f32; 4]; CA], [[f32; 4]; CB])),
    s: Slices,
) -> [[f32; TN]; TM] {
    let Slices { kt0, kt1, smem, tx, ty } = s;
    // Two stages, each [BK][BM + pad] for A then [BK][BN + pad] for B.
    let a_row = (BM + SGEMM_SMEM_PAD) * 4; // bytes per k-row of an A stage
    let b_row = (BN + SGEMM_SMEM_PAD) * 4;
    let a_stage = BK * a_row;
    let stage_bytes = a_stage + BK * b_row;

    // This thread's A and B fragments of k-row `kk` of the stage at `stage`.
    let frag = #[inline(always)]
    |stage: u32, kk: u32| {
        let (mut af, mut bf) = ([0.0f32; TM], [0.0f32; TN]);
        let (a_base, b_base) = (stage + ty * 16, stage + a_stage + tx * 16);
        for g in 0..TM / 4 {
            // SAFETY: row kk < BK of the A stage, columns ty*4 + g*BM/(TM/4) + 0..4 < BM.
            let v = unsafe { ld_shared_v4(a_base + kk * a_row + g as u32 * (BM / (TM as u32 / 4)) * 4) };
            af[g * 4..g * 4 + 4].copy_from_slice(&v);
        }
        for h in 0..TN / 4 {
            // SAFETY: row kk < BK of the B stage, columns tx*4 + h*BN/(TN/4) + 0..4 < BN.
            let v = unsafe { ld_shared_v4(b_base + kk * b_row + h as u32 * (BN / (TN as u32 / 4)) * 4) };
            bf[h * 4..h * 4 + 4].copy_from_slice(&v);
        }
        (af, bf)
    };
    let mut acc = [[0.0f32; TN]; TM]; // (TM, TN)
    let mul = #[inline(always)]
    |acc: &mut [[f32; TN]; TM], (af, bf): ([f32; TM], [f32; TN])| {
        for i in 0..TM {
            for j in 0..TN {
                acc[i][j] = fma(af[i], bf[j], acc[i][j]);
            }
        }
    };
    store(smem, load(kt0));
    sync_threads();
    // Fragments of the slice's first k-row, read ahead: each slice reads the next stage's first
    // row right after the barrier and multiplies its own last row meanwhile, so no warp waits on
    // shared memory after a barrier.
    let mut cur = frag(smem, 0);
    for kt in kt0..kt1 {
        let stage = smem + ((kt - kt0) & 1) * stage_bytes;
        let other = smem + ((kt + 1 - kt0) & 1) * stage_bytes;
        let more = kt + 1 < kt1;
        let next = if more { load(kt + 1) } else { ([[0.0; 4]; CA], [[0.0; 4]; CB]) };
        for kk in 0..BK - 1 {
            let ahead = frag(stage, kk + 1);
            mul(&mut acc, cur);
            cur = ahead;
        }
        if more {
            // The other stage was last read before the previous barrier: free to overwrite.
            store(other, next);
        }
        sync_threads();
        // After the last slice this reads a stale stage, unused (inside `smem` either way).
        let ahead = frag(other, 0);
        mul(&mut acc, cur);
        cur = ahead;
    }
    acc
}

/// Split-K: publishes this part's accumulators and, if it is the last part of the output tile
/// to arrive, replaces `acc` with the sum of all parts (in part order) and returns `true`.
///
/// Ordering: every thread stores its partial, the barrier makes them CTA-ordered, thread 0's
/// `fence.acq_rel.gpu` + `atom.acq_rel.gpu` releases them (cumulatively) and acquires the
/// earlier parts' releases; the barrier after it orders every thread's reads of the partials
/// (through L2, `ld.global.cg`) after that acquire.
///
/// # Safety
/// All threads of the CTA call this; `d.workspace()` holds `tiles_m · tiles_n · k_parts`
/// partials of `BM × BN` floats, `d.counters()` one zeroed `u32` per output tile, and
/// `part.count <= k_parts` tiles compute this output tile.
#[inline(always)]
unsafe fn reduce_splits<const BM: u32, const BN: u32, const TM: usize, const TN: usize>(
    d: Problem,
    tile_m: u32,
    tile_n: u32,
    part: KPart,
    acc: &mut [[f32; TN]; TM],
) -> bool {
    let tid = thread_idx_x();
    let tile = tile_m * d.tiles_n() + tile_n;
    let part_bytes = (BM * BN * 4) as u64;
    let (split, splits) = (part.index, part.count);
    let tile_ws = d.workspace() + (tile * d.k_parts()) as u64 * part_bytes;
    // q-major layout: chunk q of every thread is contiguous across the CTA (coalesced).
    let at = |s: u32, q: usize| tile_ws + s as u64 * part_bytes + ((q as u64 * 256) + tid as u64) * 16;
    for i in 0..TM {
        for h in 0..TN / 4 {
            let v = [acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]];
            // SAFETY: inside this slice's partial (caller's contract).
            unsafe { st_global_v4(at(split, i * (TN / 4) + h), v) };
        }
    }
    sync_threads();
    let flag = smem_base() + SMEM_FLAG_OFFSET;
    if tid == 0 {
        fence_acq_rel_gpu();
        // SAFETY: this output tile's counter (caller's contract).
        let before = unsafe { atom_add_acq_rel_gpu_u32(d.counters() + tile as u64 * 4, 1) };
        // SAFETY: the header's flag word, read by all threads after the next barrier.
        unsafe { st_shared_u32(flag, (before == splits - 1) as u32) };
    }
    sync_threads();
    // SAFETY: written by thread 0 before the barrier.
    if unsafe { ld_shared_u32(flag) } == 0 {
        return false;
    }
    *acc = [[0.0; TN]; TM];
    for s in 0..splits {
        for i in 0..TM {
            for h in 0..TN / 4 {
                // SAFETY: every slice's partial is complete (the counter reached `splits`).
                let v = unsafe { ld_global_cg_v4(at(s, i * (TN / 4) + h)) };
                for j in 0..4 {
                    acc[i][h * 4 + j] += v[j];
                }
            }
        }
    }
    true
}
