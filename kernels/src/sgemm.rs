//! SIMT FP32 GEMM tiles: one `BM × BN` tile of `C` per call, 256 threads.
//!
//! Each operand is seen as an `MN × K` panel (`op(A)` is `m × k`, `op(B)ᵀ` is `n × k`) that is
//! either k-contiguous in memory (A as stored, Bᵀ) or mn-contiguous (Aᵀ, B as stored). Every
//! k-slice of `BK` is staged through shared memory as `[BK][MN + pad]`, mn fastest, so that the
//! inner product reads 16-byte fragments along m and n. Two stages: while the CTA multiplies one
//! slice, each thread holds the next slice's 16 bytes in registers and stores them into the other
//! stage afterwards (one barrier per slice).
//!
//! Thread `(ty, tx)` of the 16 × 16 thread grid owns a `TM × TN` block of outputs made of 4 × 4
//! sub-blocks spaced `BM / (TM/4)` rows and `BN / (TN/4)` columns apart, so that a warp's fragment
//! loads are broadcasts (A) or conflict-free (B).

use crate::abi::{BLOCK_THREADS, ProblemDesc, SGEMM_SMEM_PAD, flags};
use crate::arch::{
    fma, ld_global_nc_f32, ld_global_nc_v4, ld_shared_v4, st_shared_f32, st_shared_v4, sync_threads,
};
use crate::epilogue::Epilogue;

/// One operand's panel in global memory.
#[derive(Clone, Copy)]
struct Panel {
    /// Address of element `(mn = 0, k = 0)`.
    base: u64,
    /// Leading dimension of the stored matrix, in elements.
    ld: u64,
    /// Consecutive `k` are adjacent in memory.
    k_contig: bool,
    /// Rows start 16-byte aligned: 4-wide loads allowed.
    vec: bool,
    /// Extent along mn (`m` for A, `n` for B).
    mn_lim: u32,
    /// Extent along k.
    k_lim: u32,
}

impl Panel {
    #[inline(always)]
    fn addr(&self, mn: u32, k: u32) -> u64 {
        let (r, c) = if self.k_contig { (mn, k) } else { (k, mn) };
        self.base + (r as u64 * self.ld + c as u64) * 4
    }

    #[inline(always)]
    fn in_bounds(&self, mn: u32, k: u32) -> bool {
        mn < self.mn_lim && k < self.k_lim
    }

    /// This thread's chunk offset `(mn, k)` inside an `MN × BK` slice: 4 consecutive elements
    /// along the contiguous dimension. `None` for threads without a chunk.
    #[inline(always)]
    fn chunk<const MN: u32, const BK: u32>(&self, tid: u32) -> Option<(u32, u32)> {
        if tid >= MN * BK / 4 {
            return None;
        }
        Some(if self.k_contig {
            (tid / (BK / 4), tid % (BK / 4) * 4)
        } else {
            (tid % (MN / 4) * 4, tid / (MN / 4))
        })
    }

    /// Loads the 4 elements of a chunk at absolute `(mn, k)`, zero outside the operand.
    ///
    /// # Safety
    /// The operand was validated to span `mn_lim × k_lim` with `ld` at `base`.
    #[inline(always)]
    unsafe fn load4(&self, mn: u32, k: u32) -> [f32; 4] {
        let (dmn, dk) = if self.k_contig { (0, 1) } else { (1, 0) };
        if self.vec && self.in_bounds(mn + 3 * dmn, k + 3 * dk) {
            // SAFETY: all four elements are inside the validated operand; `vec` and the chunk
            // offsets (multiples of 4 along the contiguous dimension) make the address 16-aligned.
            return unsafe { ld_global_nc_v4(self.addr(mn, k)) };
        }
        let mut v = [0.0f32; 4];
        for j in 0..4u32 {
            let (r, c) = (mn + j * dmn, k + j * dk);
            if self.in_bounds(r, c) {
                // SAFETY: inside the validated operand.
                v[j as usize] = unsafe { ld_global_nc_f32(self.addr(r, c)) };
            }
        }
        v
    }

    /// Stores a chunk loaded at slice offset `(mn, k)` into a `[BK][MN + pad]` stage at `stage`.
    ///
    /// # Safety
    /// `stage` is a 16-byte aligned shared address with room for the stage.
    #[inline(always)]
    unsafe fn store<const MN: u32>(&self, stage: u32, mn: u32, k: u32, v: [f32; 4]) {
        let row = MN + SGEMM_SMEM_PAD;
        // SAFETY: `mn < MN`, `k < BK` by construction of the chunk; the stage holds BK rows.
        unsafe {
            if self.k_contig {
                for j in 0..4u32 {
                    st_shared_f32(stage + ((k + j) * row + mn) * 4, v[j as usize]);
                }
            } else {
                st_shared_v4(stage + (k * row + mn) * 4, v);
            }
        }
    }
}

/// Computes one `BM × BK`-staged tile `(tile_m, tile_n)` of problem `p` and runs its epilogue.
/// `TM × TN` outputs per thread; `BM / TM == BN / TN == 16`.
///
/// # Safety
/// Called by all 256 threads of the CTA with the same arguments; `p` was validated on the host
/// (operands span their shapes, `C` does not overlap A or B); `smem` points at
/// `TileKind::smem_bytes` of 16-byte aligned dynamic shared memory.
#[inline(always)]
pub unsafe fn sgemm_tile<
    const BM: u32,
    const BN: u32,
    const BK: u32,
    const TM: usize,
    const TN: usize,
>(
    p: &ProblemDesc,
    epi: &Epilogue,
    tile_m: u32,
    tile_n: u32,
    smem: u32,
) {
    const {
        assert!(BM / TM as u32 == 16 && BN / TN as u32 == 16);
        assert!(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0);
        assert!(BM * BK / 4 <= BLOCK_THREADS && BN * BK / 4 <= BLOCK_THREADS);
    }
    let tid = crate::arch::thread_idx_x();
    let (tx, ty) = (tid % 16, tid / 16);
    let (m0, n0) = (tile_m * BM, tile_n * BN);

    let a = Panel {
        base: p.a,
        ld: p.lda as u64,
        k_contig: p.flags & flags::TRANS_A == 0,
        vec: p.a % 16 == 0 && p.lda % 4 == 0,
        mn_lim: p.m,
        k_lim: p.k,
    };
    let b = Panel {
        base: p.b,
        ld: p.ldb as u64,
        k_contig: p.flags & flags::TRANS_B != 0,
        vec: p.b % 16 == 0 && p.ldb % 4 == 0,
        mn_lim: p.n,
        k_lim: p.k,
    };
    let a_chunk = a.chunk::<BM, BK>(tid);
    let b_chunk = b.chunk::<BN, BK>(tid);

    // Two stages, each [BK][BM + pad] for A then [BK][BN + pad] for B.
    let a_stage_bytes = BK * (BM + SGEMM_SMEM_PAD) * 4;
    let stage_bytes = a_stage_bytes + BK * (BN + SGEMM_SMEM_PAD) * 4;
    let a_row = (BM + SGEMM_SMEM_PAD) * 4; // bytes per k-row of an A stage
    let b_row = (BN + SGEMM_SMEM_PAD) * 4;

    let mut acc = [[0.0f32; TN]; TM]; // (TM, TN)
    let ktiles = p.k.div_ceil(BK);

    // SAFETY (loads): the panels are the validated operands; chunks outside them read as zero.
    // SAFETY (shared): every stage address is inside the two stages at `smem`, which the caller
    // sized with `TileKind::smem_bytes`.
    let load = |kt: u32| unsafe {
        let ra = match a_chunk {
            Some((mn, k)) => a.load4(m0 + mn, kt * BK + k),
            None => [0.0; 4],
        };
        let rb = match b_chunk {
            Some((mn, k)) => b.load4(n0 + mn, kt * BK + k),
            None => [0.0; 4],
        };
        (ra, rb)
    };
    let store = |stage: u32, (ra, rb): ([f32; 4], [f32; 4])| unsafe {
        let base = smem + stage * stage_bytes;
        if let Some((mn, k)) = a_chunk {
            a.store::<BM>(base, mn, k, ra);
        }
        if let Some((mn, k)) = b_chunk {
            b.store::<BN>(base + a_stage_bytes, mn, k, rb);
        }
    };

    store(0, load(0));
    sync_threads();
    for kt in 0..ktiles {
        let stage = kt & 1;
        let next = if kt + 1 < ktiles {
            Some(load(kt + 1))
        } else {
            None
        };

        let a_base = smem + stage * stage_bytes + ty * 16;
        let b_base = smem + stage * stage_bytes + a_stage_bytes + tx * 16;
        for kk in 0..BK {
            let mut af = [0.0f32; TM];
            let mut bf = [0.0f32; TN];
            for g in 0..TM / 4 {
                // SAFETY: row kk < BK of the A stage, columns ty*4 + g*BM/(TM/4) + 0..4 < BM.
                let v = unsafe {
                    ld_shared_v4(a_base + kk * a_row + g as u32 * (BM / (TM as u32 / 4)) * 4)
                };
                af[g * 4..g * 4 + 4].copy_from_slice(&v);
            }
            for h in 0..TN / 4 {
                // SAFETY: row kk < BK of the B stage, columns tx*4 + h*BN/(TN/4) + 0..4 < BN.
                let v = unsafe {
                    ld_shared_v4(b_base + kk * b_row + h as u32 * (BN / (TN as u32 / 4)) * 4)
                };
                bf[h * 4..h * 4 + 4].copy_from_slice(&v);
            }
            for i in 0..TM {
                for j in 0..TN {
                    acc[i][j] = fma(af[i], bf[j], acc[i][j]);
                }
            }
        }

        if let Some(regs) = next {
            // The other stage was last read before the previous barrier: free to overwrite.
            store(stage ^ 1, regs);
        }
        sync_threads();
    }

    for i in 0..TM {
        let row = m0 + (i as u32 / 4) * (BM / (TM as u32 / 4)) + ty * 4 + i as u32 % 4;
        for h in 0..TN / 4 {
            let col = n0 + h as u32 * (BN / (TN as u32 / 4)) + tx * 4;
            let v = [
                acc[i][h * 4],
                acc[i][h * 4 + 1],
                acc[i][h * 4 + 2],
                acc[i][h * 4 + 3],
            ];
            // SAFETY: this thread alone owns these outputs of the tile; the problem is validated.
            unsafe { epi.store4(row, col, v) };
        }
    }
}
