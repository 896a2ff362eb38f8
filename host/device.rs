//! The backend interface: a pool of device memory and an executor of [`Round`]s.
//!
//! Backends do no policy checks; every [`Device::run`] passes the round through
//! [`crate::round::check`] first, which keeps every access inside the pool. Memory calls take
//! device addresses inside [`Device::pool`] and are bounds-checked.

use std::ops::Range;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::round::Round;

/// Which backend a [`Device`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The rayon CPU backend ([`crate::cpu::CpuDevice`]).
    Cpu,
    /// The CUDA megakernel ([`crate::cuda::CudaDevice`]).
    Cuda,
}

/// What a backend measured of one round.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundReport {
    /// Execution of the tiles alone (CUDA events around the launch; wall time on the CPU).
    pub kernel: Duration,
    /// The whole round: descriptor upload, launch, completion check.
    pub total: Duration,
    /// Tiles run.
    pub tiles: usize,
}

/// A backend. Implementations serialise their own calls, so a `Device` may be shared freely.
pub trait Device: Send + Sync {
    /// Human-readable device name (e.g. "NVIDIA H100 80GB HBM3", "CPU (16 threads)").
    fn name(&self) -> String;
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Device addresses of the memory pool this device was created with.
    fn pool(&self) -> Range<u64>;
    /// Tiles that execute at once (CTA slots of the persistent grid, CPU threads).
    fn slots(&self) -> usize;
    /// Tiles that execute at once when a round holds a [`TileKind::is_wide`] kind (the wide build
    /// of the megakernel: one CTA per SM); `None` where wide rounds have no build of their own
    /// (they still run, as on the CPU backend).
    ///
    /// [`TileKind::is_wide`]: crate::abi::TileKind::is_wide
    fn wide_slots(&self) -> Option<usize> {
        None
    }
    /// Whether the parts of an output tile split along `k` run in parallel here (the CUDA
    /// megakernel). The CPU backend computes a split tile whole in its first part, so stream-K
    /// balancing ([`crate::round::Round::balance`]) would only unbalance it.
    fn splits_k_in_parallel(&self) -> bool {
        true
    }
    /// Copies `data` to device address `addr`.
    fn write(&self, addr: u64, data: &[f32]) -> Result<()>;
    /// Copies from device address `addr` into `out`.
    fn read(&self, addr: u64, out: &mut [f32]) -> Result<()>;
    /// Zeroes `bytes` bytes at `addr`.
    fn zero(&self, addr: u64, bytes: u64) -> Result<()>;
    /// Runs every tile of `round` and returns when its results are visible to `read`.
    fn run(&self, round: &Round) -> Result<RoundReport>;

    /// Starts persistent mode: a ring of `slots` slots and its resident executor. Until the
    /// engine is joined, `run` must not be called.
    fn start_persistent(
        &self,
        slots: u32,
        heartbeat_timeout: std::time::Duration,
    ) -> Result<(std::sync::Arc<crate::persistent::RingMemory>, std::sync::Arc<dyn crate::persistent::Engine>)>;
}

/// Checks that `addr .. addr + bytes` lies inside `pool` and is 4-byte aligned.
pub(crate) fn check_access(pool: &Range<u64>, addr: u64, bytes: u64) -> Result<()> {
    let end = addr.checked_add(bytes);
    match end {
        Some(end) if addr >= pool.start && end <= pool.end && addr % 4 == 0 => Ok(()),
        _ => Err(Error::PoolAccess { addr, bytes: bytes as usize }),
    }
}
