//! The CUDA backend: the embedded megakernel PTX, loaded once, run round by round.
//!
//! Per round: one async copy of `[status | done | problems | tiles]` from pinned staging, one
//! launch of `tilemux_round` over a persistent grid (occupancy × SMs), one copy of
//! `[status | done]` back, one stream synchronisation. Buffers persist across rounds and only grow.
//! Protocol and memory ordering: `kernels/src/QUEUE.md`.

pub mod cublas;
pub mod driver;
pub mod persistent;
pub mod probe;

use std::ffi::c_void;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys;

use crate::abi::{ProblemDesc, TileDesc, TileKind, status};
use crate::device::{BackendKind, Device, RoundReport, check_access};
use crate::error::{Error, Result};
use crate::round::{Round, check};
use driver::ck;
pub use driver::{DeviceBuffer, Event, Gpu, Module, PinnedBuffer, Stream, driver_present};

/// The megakernel PTX that `build.rs` embedded.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tilemux.ptx"));
/// Where the embedded PTX came from (built by which toolchain, or the committed copy).
pub const PTX_SOURCE: &str = env!("TILEMUX_PTX_SOURCE");
/// The PTX target (`sm_80` unless `TILEMUX_SM` said otherwise).
pub const PTX_TARGET: &str = env!("TILEMUX_PTX_TARGET");

/// How to load and size the megakernel.
#[derive(Clone, Debug)]
pub struct CudaConfig {
    /// Device memory pool in bytes (sub-allocated by the runtime).
    pub pool_bytes: usize,
    /// Register cap per thread for the JIT (0: none). 128 allows two 256-thread CTAs per SM.
    pub max_registers: u32,
    /// CTAs per SM of the persistent grid; `None`: what the occupancy API allows.
    pub ctas_per_sm: Option<u32>,
    /// Also load the wide build (`tilemux_round_wide`, no register cap, one CTA per SM) for rounds
    /// with [`TileKind::is_wide`] tiles; without it such rounds fail with `NEEDS_WIDE`. Default:
    /// on, unless the environment sets `TILEMUX_WIDE=0`.
    pub wide: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        let wide = std::env::var("TILEMUX_WIDE").map_or(true, |v| v != "0");
        let max_registers = std::env::var("TILEMUX_MAX_REGISTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
        CudaConfig { pool_bytes: 1 << 30, max_registers, ctas_per_sm: None, wide }
    }
}

/// The loaded megakernel and what the JIT made of it.
pub struct Megakernel {
    module: Module,
    func: sys::CUfunction,
    /// Registers per thread.
    pub registers: i32,
    /// Local memory per thread (spills) in bytes.
    pub local_bytes: i32,
    /// Dynamic shared memory per CTA in bytes.
    pub smem_bytes: u32,
    /// CTAs resident per SM (occupancy API, or the configured value if lower).
    pub ctas_per_sm: u32,
    /// Grid size: `ctas_per_sm × SMs`.
    pub grid: u32,
    /// The resident kernel of persistent mode and its cooperative grid.
    pub(crate) persistent_func: sys::CUfunction,
    /// CTAs of the resident kernel (one forwards, the rest work).
    pub persistent_grid: u32,
    /// Dynamic shared memory of the resident kernel (bytes): enough that one CTA fits per SM.
    pub persistent_smem: u32,
    /// The wide build, where loaded.
    pub wide: Option<WideKernel>,
}

/// The wide build of the round kernel: its own JIT of the same PTX without a register cap, so
/// the [`TileKind::is_wide`] kinds keep their accumulators in registers.
pub struct WideKernel {
    module: Module,
    func: sys::CUfunction,
    /// Registers per thread.
    pub registers: i32,
    /// Local memory per thread (spills) in bytes.
    pub local_bytes: i32,
    /// CTAs resident per SM.
    pub ctas_per_sm: u32,
    /// Grid size: `ctas_per_sm × SMs`.
    pub grid: u32,
    /// Dynamic shared memory per CTA in bytes.
    pub smem_bytes: u32,
}

impl WideKernel {
    /// ptxas's info log from loading the wide module.
    pub fn jit_log(&self) -> &str {
        &self.module.log
    }
}

/// The embedded PTX without the entry points not in `keep`, so that each build JITs only its own
/// kernels: the narrow build's register cap would make the wide entry spill kilobytes per thread
/// (and the context reserve local memory for it), the uncapped wide build would waste JIT time on
/// the narrow entries.
pub fn ptx_with_entries(keep: &[&str]) -> String {
    let entry_kept = |line: &str| {
        line.strip_prefix(".visible .entry ")
            .map(|rest| keep.iter().any(|k| rest.strip_prefix(k).is_some_and(|r| r.starts_with('('))))
    };
    // The kept entries' text: a (non-visible) function is kept only where one of them names it.
    let mut kept_text = String::new();
    let mut inside = false;
    for line in PTX.split_inclusive('\n') {
        if let Some(k) = entry_kept(line) {
            inside = k;
        }
        if inside {
            kept_text.push_str(line);
            inside = line.trim_end() != "}";
        }
    }
    let mut out = String::with_capacity(PTX.len());
    // Skipping a block; `bodied` once its `{` is seen (a declaration without a body ends at `;`).
    let (mut skipping, mut bodied) = (false, false);
    for line in PTX.split_inclusive('\n') {
        if let Some(k) = entry_kept(line) {
            (skipping, bodied) = (!k, false);
        } else if let Some(name) = local_func_name(line) {
            (skipping, bodied) = (!kept_text.contains(name), false);
        }
        let end = line.trim_end();
        if !skipping {
            out.push_str(line);
        } else if end == "}" || (!bodied && end.ends_with(';')) {
            skipping = false;
        } else if end == "{" {
            bodied = true;
        }
    }
    out
}

/// The name a `.func` line (a function the PTX does not export) defines.
fn local_func_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix(".func ")?.trim_start();
    // A return value comes first: `.func (.param .b32 r) name(`.
    let rest = if rest.starts_with('(') { rest.split_once(')')?.1.trim_start() } else { rest };
    rest.split('(').next().map(str::trim).filter(|n| !n.is_empty())
}

/// Loads `entry` of the PTX `ptx` with `max_registers`, raises its shared memory limit and
/// returns `(module, function, registers, local bytes, CTAs per SM)`.
fn load_entry(
    ptx: &str,
    entry: &str,
    max_registers: u32,
    smem_bytes: u32,
) -> Result<(Module, sys::CUfunction, i32, i32, u32)> {
    use sys::CUfunction_attribute::*;
    let module = Module::load(ptx, max_registers)?;
    let func = module.function(entry)?;
    // SAFETY: valid function; the limit is within the device's opt-in maximum for any tile
    // configuration the ABI defines.
    ck("cuFuncSetAttribute", unsafe {
        sys::cuFuncSetAttribute(func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_bytes as i32)
    })?;
    // SAFETY: `func` belongs to `module`, alive here.
    let (registers, local_bytes) = unsafe {
        (
            driver::func_attr(func, CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            driver::func_attr(func, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        )
    };
    let mut occ = 0;
    // SAFETY: valid function, block size and shared memory size.
    ck("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
        sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
            &mut occ,
            func,
            crate::abi::BLOCK_THREADS as i32,
            smem_bytes as usize,
        )
    })?;
    Ok((module, func, registers, local_bytes, occ.max(0) as u32))
}

// SAFETY: the function handle belongs to `module`, usable from any thread with the context bound.
unsafe impl Send for Megakernel {}
// SAFETY: as above.
unsafe impl Sync for Megakernel {}

impl Megakernel {
    /// JIT-loads the embedded PTX on `gpu` and sizes the persistent grid.
    pub fn load(gpu: &Gpu, cfg: &CudaConfig) -> Result<Megakernel> {
        gpu.bind()?;
        use sys::CUfunction_attribute::*;
        let smem_bytes = TileKind::megakernel_smem_bytes();
        let narrow = ptx_with_entries(&["tilemux_round", "tilemux_persistent"]);
        let (module, func, registers, local_bytes, occ) =
            load_entry(&narrow, "tilemux_round", cfg.max_registers, smem_bytes)?;
        let ctas_per_sm = cfg.ctas_per_sm.map_or(occ, |c| c.min(occ)).max(1);
        let wide = if cfg.wide {
            let wide = ptx_with_entries(&["tilemux_round_wide"]);
            let smem_bytes = TileKind::wide_smem_bytes();
            let (module, func, registers, local_bytes, occ) = load_entry(&wide, "tilemux_round_wide", 0, smem_bytes)?;
            let ctas_per_sm = occ.max(1);
            let grid = ctas_per_sm * gpu.sm_count;
            Some(WideKernel { module, func, registers, local_bytes, ctas_per_sm, grid, smem_bytes })
        } else {
            None
        };
        let persistent_func = module.function("tilemux_persistent")?;
        // The resident kernel runs one CTA per SM: it asks for more than half an SM's shared
        // memory. A request's tiles then never share an SM with another CTA (a co-resident
        // CTA, spinning or running, slowed them: on the H100 the bare ring's GEMV took 5.9 µs
        // this way against 7.1 µs with two per SM, 256³ 18 µs against 27 µs, at the same
        // saturated throughput; `docs/results/h100-2026-11-24/ring-v2-56385b0/after/`).
        let persistent_smem = if gpu.smem_per_block_optin > gpu.smem_per_sm / 2 {
            smem_bytes.max(gpu.smem_per_sm / 2)
        } else {
            smem_bytes
        };
        let mut pocc = 0;
        // SAFETY: valid function; the round kernel's block size, shared memory at least its.
        unsafe {
            ck(
                "cuFuncSetAttribute",
                sys::cuFuncSetAttribute(
                    persistent_func,
                    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    persistent_smem as i32,
                ),
            )?;
            ck(
                "cuOccupancyMaxActiveBlocksPerMultiprocessor",
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                    &mut pocc,
                    persistent_func,
                    crate::abi::BLOCK_THREADS as i32,
                    persistent_smem as usize,
                ),
            )?;
        }
        Ok(Megakernel {
            persistent_func,
            persistent_grid: (pocc as u32).min(ctas_per_sm).max(1) * gpu.sm_count,
            persistent_smem,
            module,
            func,
            registers,
            local_bytes,
            smem_bytes,
            ctas_per_sm,
            grid: ctas_per_sm * gpu.sm_count,
            wide,
        })
    }

    /// ptxas's info log from loading the module.
    pub fn jit_log(&self) -> &str {
        &self.module.log
    }
}

/// Offsets of one round's device-side layout:
/// `[queue u64 | status | done | split counters | problems | tiles | units | split workspace]`.
struct Layout {
    done: usize,
    counters: usize,
    problems: usize,
    tiles: usize,
    units: usize,
    workspace: usize,
    end: usize,
}

const QUEUE_OFF: usize = 0;
const STATUS_OFF: usize = 16;

fn align(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Bytes of split-K workspace `p` needs: `k_parts` partial tiles per output tile.
fn partials_bytes(p: &ProblemDesc) -> usize {
    let tile = TileKind::from_u32(p.tile_kind).map_or(0, |k| (k.shape().bm * k.shape().bn) as usize * 4);
    p.output_tiles() as usize * p.workspace_parts() as usize * tile
}

impl Layout {
    fn new(round: &Round) -> Layout {
        let split = round.problems.iter().filter(|p| p.workspace_parts() > 0);
        let counters_n: usize = split.clone().map(|p| p.output_tiles() as usize).sum();
        let workspace_bytes: usize = split.map(partials_bytes).sum();
        let done = STATUS_OFF + 16;
        let counters = done + align(round.problems.len() * 4, 16);
        let problems = counters + align(counters_n * 4, 16);
        let tiles = problems + round.problems.len() * size_of::<ProblemDesc>();
        let units = tiles + round.tiles.len() * size_of::<TileDesc>();
        let workspace = align(units + round.units.len() * 4, 256);
        Layout { done, counters, problems, tiles, units, workspace, end: workspace + workspace_bytes }
    }
}

struct State {
    stream: Stream,
    start: Event,
    end: Event,
    /// Device copy of the round (and the queue head at offset 0).
    round: DeviceBuffer,
    staging: PinnedBuffer,
    readback: PinnedBuffer,
    /// Queue head value at the start of the next round.
    queue_base: u64,
    /// 1 MiB of pinned zeros (source of `zero`).
    zeros: PinnedBuffer,
}

/// The CUDA megakernel backend.
pub struct CudaDevice {
    kernel: Megakernel,
    pool: DeviceBuffer,
    state: Mutex<State>,
    /// Last: the context outlives every handle above (fields drop in order).
    gpu: Arc<Gpu>,
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Freeing memory, streams and the module needs the context current on this thread.
        let _ = self.gpu.bind();
        if let Ok(st) = self.state.get_mut() {
            let _ = st.stream.sync();
        }
    }
}

fn status_meaning(code: u32) -> &'static str {
    match code {
        status::BAD_TILE_KIND => "unknown tile kind",
        status::BAD_PROBLEM => "tile names a missing problem",
        status::BAD_TILE_COORD => "tile outside its problem's grid",
        status::BAD_EPILOGUE => "unknown activation or bias mode",
        status::NEEDS_WIDE => "tile kind needs the wide build, which is not loaded",
        _ => "unknown status",
    }
}

impl CudaDevice {
    /// Opens GPU 0, loads the megakernel and allocates the pool.
    pub fn new(cfg: &CudaConfig) -> Result<CudaDevice> {
        let gpu = Gpu::open(0)?;
        Self::with_gpu(gpu, cfg)
    }

    /// As [`CudaDevice::new`] on an already opened GPU.
    pub fn with_gpu(gpu: Arc<Gpu>, cfg: &CudaConfig) -> Result<CudaDevice> {
        let kernel = Megakernel::load(&gpu, cfg)?;
        let pool = DeviceBuffer::new(cfg.pool_bytes)
            .map_err(|e| Error::PoolAlloc { requested: cfg.pool_bytes, reason: e.to_string() })?;
        let stream = Stream::new()?;
        let cap = 1 << 20;
        let round = DeviceBuffer::new(cap)?;
        // SAFETY: fresh allocation of `cap` bytes; zero the queue head before first use.
        ck("cuMemsetD8Async", unsafe { sys::cuMemsetD8Async(round.ptr, 0, 16, stream.0) })?;
        stream.sync()?;
        let state = State {
            start: Event::new()?,
            end: Event::new()?,
            staging: PinnedBuffer::new(cap, 0)?,
            readback: PinnedBuffer::new(cap, 0)?,
            zeros: PinnedBuffer::new(1 << 20, 0)?,
            round,
            stream,
            queue_base: 0,
        };
        Ok(CudaDevice { gpu, kernel, pool, state: Mutex::new(state) })
    }

    /// The GPU this device runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The loaded megakernel (registers, occupancy, JIT log).
    pub fn kernel(&self) -> &Megakernel {
        &self.kernel
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.gpu.bind()?;
        Ok(g)
    }

    /// Grows the round buffers: `device` bytes on the GPU, `host` bytes of pinned staging
    /// (synchronising first: queued work may use them).
    fn reserve(st: &mut State, device: usize, host: usize) -> Result<()> {
        if st.staging.len() < host {
            st.stream.sync()?;
            st.staging = PinnedBuffer::new(host.next_power_of_two(), 0)?;
            st.readback = PinnedBuffer::new(host.next_power_of_two(), 0)?;
        }
        if st.round.bytes < device {
            st.stream.sync()?;
            st.round = DeviceBuffer::new(device.next_power_of_two())?;
            // SAFETY: fresh allocation; zero the queue head.
            ck("cuMemsetD8Async", unsafe { sys::cuMemsetD8Async(st.round.ptr, 0, 16, st.stream.0) })?;
            st.queue_base = 0;
        }
        Ok(())
    }

    fn run_locked(&self, st: &mut State, round: &Round) -> Result<RoundReport> {
        let t0 = Instant::now();
        let (p, t) = (round.problems.len(), round.tiles.len());
        let lay = Layout::new(round);
        Self::reserve(st, lay.end, lay.workspace)?;
        let base = st.round.ptr;

        // Stage [status = 0 | done = 0 | counters = 0 | problems | tiles] and send it in one copy.
        // Split-K problems get their slices of the workspace and counters here.
        let stage = st.staging.ptr();
        let tiles: &[u8] = bytemuck::cast_slice(&round.tiles);
        // SAFETY: staging holds `lay.workspace` bytes (reserve); the previous round's copy from it
        // completed (each round ends with a stream synchronisation).
        unsafe {
            std::ptr::write_bytes(stage.add(STATUS_OFF), 0, lay.problems - STATUS_OFF);
            let staged = std::slice::from_raw_parts_mut(stage.add(lay.problems) as *mut ProblemDesc, p);
            staged.copy_from_slice(&round.problems);
            let (mut counter, mut ws) = (lay.counters as u64, lay.workspace as u64);
            for d in staged.iter_mut().filter(|d| d.workspace_parts() > 0) {
                d.counters = base + counter;
                d.workspace = base + ws;
                counter += d.output_tiles() as u64 * 4;
                ws += partials_bytes(d) as u64;
            }
            std::ptr::copy_nonoverlapping(tiles.as_ptr(), stage.add(lay.tiles), tiles.len());
            let units: &[u8] = bytemuck::cast_slice(&round.units);
            std::ptr::copy_nonoverlapping(units.as_ptr(), stage.add(lay.units), units.len());
        }
        // SAFETY: both ranges lie inside their buffers; the stream orders the copy before the
        // launch that reads it.
        ck("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                base + STATUS_OFF as u64,
                stage.add(STATUS_OFF) as *const c_void,
                lay.workspace - STATUS_OFF,
                st.stream.0,
            )
        })?;

        let mut params = driver::KernelArgs::new(&[
            base + lay.problems as u64,
            p as u64,
            base + lay.tiles as u64,
            t as u64,
            base + QUEUE_OFF as u64,
            st.queue_base,
            base + lay.done as u64,
            base + STATUS_OFF as u64,
            if round.units.is_empty() { 0 } else { base + lay.units as u64 },
            round.units.len().saturating_sub(1) as u64,
        ]);
        // A round with a wide tile kind runs on the wide build (when loaded; else the narrow one
        // reports NEEDS_WIDE and runs nothing of those tiles).
        let (func, grid, smem) = match &self.kernel.wide {
            Some(w) if round.is_wide() => (w.func, w.grid, w.smem_bytes),
            _ => (self.kernel.func, self.kernel.grid, self.kernel.smem_bytes),
        };
        st.start.record(&st.stream)?;
        // SAFETY: the parameters match `tilemux_round`'s (and `tilemux_round_wide`'s) signature;
        // the round passed check() against the pool, so every address the kernel derives is
        // inside the pool or the round buffer.
        let launched = ck("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                func,
                grid,
                1,
                1,
                crate::abi::BLOCK_THREADS,
                1,
                1,
                smem,
                st.stream.0,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        });
        if let Err(e) = launched {
            st.queue_base = 0;
            // SAFETY: reset the head so the next round starts from base 0.
            unsafe { sys::cuMemsetD8Async(base, 0, 16, st.stream.0) };
            return Err(e);
        }
        st.end.record(&st.stream)?;
        let back = st.readback.ptr();
        // SAFETY: readback holds `lay.workspace` bytes; synchronised below before reading.
        ck("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                back.add(STATUS_OFF) as *mut c_void,
                base + STATUS_OFF as u64,
                lay.counters - STATUS_OFF,
                st.stream.0,
            )
        })?;
        let synced = st.stream.sync();
        if let Err(e) = synced {
            st.queue_base = 0;
            return Err(e);
        }
        let claimable = if round.units.is_empty() { t } else { round.units.len() - 1 };
        st.queue_base += claimable as u64 + grid as u64;

        // SAFETY: the copy completed; offsets inside readback; u32-aligned.
        let (code, done) = unsafe {
            (*(back.add(STATUS_OFF) as *const u32), std::slice::from_raw_parts(back.add(lay.done) as *const u32, p))
        };
        if code != status::OK {
            return Err(Error::DeviceStatus { code, meaning: status_meaning(code) });
        }
        for (i, (&expected, &ran)) in round.tiles_per_problem().iter().zip(done).enumerate() {
            if ran != expected {
                return Err(Error::TileCount { problem: i, ran, expected });
            }
        }
        let kernel = Duration::from_secs_f64(st.start.elapsed_ms(&st.end)? as f64 / 1e3);
        Ok(RoundReport { kernel, total: t0.elapsed(), tiles: t })
    }
}

impl CudaDevice {
    /// Runs a round without [`check`]: exercises the megakernel's own descriptor checks (status
    /// codes). Only for tests of that path.
    ///
    /// # Safety
    /// Every address the round's problems describe must be valid device memory for the tiles
    /// that would run; only tile kinds, tile coordinates and problem indices may be wrong.
    #[doc(hidden)]
    pub unsafe fn run_unchecked(&self, round: &Round) -> Result<RoundReport> {
        let mut st = self.lock()?;
        self.run_locked(&mut st, round)
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.gpu.name.clone()
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn pool(&self) -> Range<u64> {
        self.pool.ptr..self.pool.ptr + self.pool.bytes as u64
    }

    fn slots(&self) -> usize {
        self.kernel.grid as usize
    }

    fn wide_slots(&self) -> Option<usize> {
        self.kernel.wide.as_ref().map(|w| w.grid as usize)
    }

    fn write(&self, addr: u64, data: &[f32]) -> Result<()> {
        check_access(&self.pool(), addr, size_of_val(data) as u64)?;
        let st = self.lock()?;
        // SAFETY: destination inside the pool (checked); the stream orders it after queued rounds.
        ck("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(addr, data.as_ptr() as *const c_void, size_of_val(data), st.stream.0)
        })?;
        st.stream.sync()
    }

    fn read(&self, addr: u64, out: &mut [f32]) -> Result<()> {
        check_access(&self.pool(), addr, size_of_val(out) as u64)?;
        let st = self.lock()?;
        // SAFETY: source inside the pool (checked); synchronised before returning.
        ck("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr() as *mut c_void, addr, size_of_val(out), st.stream.0)
        })?;
        st.stream.sync()
    }

    fn zero(&self, addr: u64, bytes: u64) -> Result<()> {
        check_access(&self.pool(), addr, bytes)?;
        let st = self.lock()?;
        // Copies from zeroed pinned memory (a copy engine) rather than cuMemset, which may need
        // SMs that the resident kernel of persistent mode holds.
        let chunk = st.zeros.len() as u64;
        let mut done = 0;
        while done < bytes {
            let n = chunk.min(bytes - done);
            // SAFETY: inside the pool (checked); `zeros` holds `chunk` zero bytes.
            ck("cuMemcpyHtoDAsync", unsafe {
                sys::cuMemcpyHtoDAsync_v2(addr + done, st.zeros.ptr() as *const c_void, n as usize, st.stream.0)
            })?;
            done += n;
        }
        st.stream.sync()
    }

    fn start_persistent(
        &self,
        slots: u32,
        heartbeat_timeout: std::time::Duration,
    ) -> Result<(Arc<crate::persistent::RingMemory>, Arc<dyn crate::persistent::Engine>)> {
        let (ring, engine) = CudaDevice::start_persistent(self, slots, heartbeat_timeout, persistent::Resident::new())?;
        Ok((ring, Arc::new(engine)))
    }

    fn run(&self, round: &Round) -> Result<RoundReport> {
        check(round, self.pool())?;
        if round.is_empty() {
            return Ok(RoundReport::default());
        }
        let mut st = self.lock()?;
        self.run_locked(&mut st, round)
    }
}
