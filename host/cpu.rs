//! The CPU backend: executes the very descriptors the megakernel runs, one rayon task per tile,
//! with the GPU's semantics (row-major, leading dimensions, transposes, alpha/beta with BLAS's
//! "beta = 0 does not read C", bias, ReLU, ragged edge tiles). The inner product is
//! `matrixmultiply`'s SGEMM on strided views. It is the default backend without a GPU and the
//! reference the GPU is diffed against, tile by tile.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use crate::abi::{Activation, BiasMode, ProblemDesc, TileDesc, TileKind, flags};
use crate::device::{BackendKind, Device, RoundReport, check_access};
use crate::error::{Error, Result};
use crate::round::{Round, check};

/// Host memory standing in for device memory: one 256-byte aligned, zeroed allocation.
struct HostPool {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the pool is plain memory; `CpuDevice` serialises every access through its lock.
unsafe impl Send for HostPool {}
// SAFETY: as above.
unsafe impl Sync for HostPool {}

impl Drop for HostPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `CpuDevice::new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The rayon CPU backend.
pub struct CpuDevice {
    pool: HostPool,
    lock: Mutex<()>,
    threads: usize,
}

impl CpuDevice {
    /// A CPU device with a zeroed pool of `bytes` bytes.
    pub fn new(bytes: usize) -> Result<Self> {
        let layout = Layout::from_size_align(bytes.max(256), 256)
            .map_err(|e| Error::PoolAlloc { requested: bytes, reason: e.to_string() })?;
        // SAFETY: the layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| Error::PoolAlloc { requested: bytes, reason: "host allocation failed".into() })?;
        Ok(CpuDevice { pool: HostPool { ptr, layout }, lock: Mutex::new(()), threads: rayon::current_num_threads() })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one tile. The first part of an output tile computed in several (split-K, stream-K)
/// computes the whole `k` (the sum every part would contribute) and the other parts do nothing:
/// the same result as the GPU's partial-sum reduction, without a workspace.
///
/// # Safety
/// `p` and `t` passed [`check`] against the pool these addresses point into, and no other thread
/// accesses this tile's part of `C` (check makes tiles' outputs disjoint from everything else).
pub(crate) unsafe fn run_tile(p: &ProblemDesc, t: &TileDesc) {
    if t.part().index != 0 {
        return;
    }
    let kind = TileKind::from_u32(p.tile_kind).expect("checked");
    let s = kind.shape();
    let (m0, n0) = (t.tile_m * s.bm, t.tile_n * s.bn);
    let (mt, nt) = ((p.m - m0).min(s.bm) as usize, (p.n - n0).min(s.bn) as usize);
    let (lda, ldb, ldc) = (p.lda as isize, p.ldb as isize, p.ldc as isize);
    // op(A) element (i, k) and op(B) element (k, j) as (row stride, column stride).
    let (rsa, csa) = if p.flags & flags::TRANS_A != 0 { (1, lda) } else { (lda, 1) };
    let (rsb, csb) = if p.flags & flags::TRANS_B != 0 { (1, ldb) } else { (ldb, 1) };
    let a = (p.a as *const f32).wrapping_offset(m0 as isize * rsa);
    let b = (p.b as *const f32).wrapping_offset(n0 as isize * csb);
    let c = (p.c as *mut f32).wrapping_offset(m0 as isize * ldc + n0 as isize);
    // SAFETY: check() proved every element of op(A), op(B) and this tile of C inside the pool;
    // beta == 0 makes matrixmultiply ignore the old C (NaN included), as on the GPU.
    unsafe {
        matrixmultiply::sgemm(mt, p.k as usize, nt, p.alpha, a, rsa, csa, b, rsb, csb, p.beta, c, ldc, 1);
    }
    let bias = BiasMode::from_u32(p.bias_mode).expect("checked");
    let relu = Activation::from_u32(p.activation) == Some(Activation::Relu);
    if bias == BiasMode::None && !relu {
        return;
    }
    for i in 0..mt {
        for j in 0..nt {
            // SAFETY: (i, j) is inside this tile of C; the bias index is < m (Row) or < n (Col).
            unsafe {
                let e = c.offset(i as isize * ldc + j as isize);
                let mut v = *e;
                v += match bias {
                    BiasMode::None => 0.0,
                    BiasMode::Row => *(p.bias as *const f32).add(m0 as usize + i),
                    BiasMode::Col => *(p.bias as *const f32).add(n0 as usize + j),
                };
                *e = if relu && v < 0.0 { 0.0 } else { v };
            }
        }
    }
}

impl Device for CpuDevice {
    fn splits_k_in_parallel(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        format!("CPU ({} threads)", self.threads)
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn pool(&self) -> Range<u64> {
        let base = self.pool.ptr.as_ptr() as u64;
        base..base + self.pool.layout.size() as u64
    }

    fn slots(&self) -> usize {
        self.threads
    }

    fn write(&self, addr: u64, data: &[f32]) -> Result<()> {
        check_access(&self.pool(), addr, size_of_val(data) as u64)?;
        let _g = self.guard();
        // SAFETY: inside the pool (checked), aligned to 4, and no round runs (lock held).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut f32, data.len()) };
        Ok(())
    }

    fn read(&self, addr: u64, out: &mut [f32]) -> Result<()> {
        check_access(&self.pool(), addr, size_of_val(out) as u64)?;
        let _g = self.guard();
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const f32, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn zero(&self, addr: u64, bytes: u64) -> Result<()> {
        check_access(&self.pool(), addr, bytes)?;
        let _g = self.guard();
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 0, bytes as usize) };
        Ok(())
    }

    fn start_persistent(
        &self,
        slots: u32,
        heartbeat_timeout: std::time::Duration,
    ) -> Result<(std::sync::Arc<crate::persistent::RingMemory>, std::sync::Arc<dyn crate::persistent::Engine>)> {
        let mem = std::sync::Arc::new(crate::persistent::RingMemory::on_heap(slots)?);
        let engine = crate::persistent::CpuEngine::start(mem.clone(), self.threads, heartbeat_timeout);
        Ok((mem, std::sync::Arc::new(engine)))
    }

    fn run(&self, round: &Round) -> Result<RoundReport> {
        let start = Instant::now();
        check(round, self.pool())?;
        let _g = self.guard();
        round.tiles.par_iter().for_each(|t| {
            // SAFETY: the round passed check() against this pool; tiles write disjoint parts of
            // C; memory calls wait for the lock this round holds.
            unsafe { run_tile(&round.problems[t.problem as usize], t) }
        });
        let elapsed = start.elapsed();
        Ok(RoundReport { kernel: elapsed, total: elapsed, tiles: round.tiles.len() })
    }
}
