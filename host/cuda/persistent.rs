//! The CUDA engine of persistent mode: the resident `tilemux_persistent` kernel, launched
//! cooperatively (every CTA resident) on a stream of its own. The host publishes by storing a
//! slot's stamped image in the ring's pinned, device-mapped memory; the kernel's forwarder warp
//! polls the images across the bus and copies new problems into the device ring. No driver call
//! per request.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys;

use super::driver::{KernelArgs, ck};
use super::{CudaDevice, DeviceBuffer, PinnedBuffer, Stream};
use crate::abi::ring::{
    CLAIM_TABLE, DeviceState, HOST_SLOT_BYTES, TRACE_BYTES, TRACE_CTAS, TRACE_PROBLEMS, Trace, host_bytes,
};
use crate::error::{Error, Result};
use crate::persistent::{Engine, RingMemory};

/// The resident kernel and its buffers.
pub struct CudaEngine {
    kernel_stream: Stream,
    state: DeviceBuffer,
    _slots: DeviceBuffer,
    _done_ctr: DeviceBuffer,
    _table: DeviceBuffer,
    /// The kernel's trace, when it was started with one.
    trace: Option<DeviceBuffer>,
    /// Keeps the host block mapped while the kernel may touch it.
    _ring: Arc<RingMemory>,
    gpu: Arc<super::Gpu>,
}

// SAFETY: driver handles may be used from any thread with the context bound.
unsafe impl Send for CudaEngine {}
// SAFETY: as above.
unsafe impl Sync for CudaEngine {}

/// Where the resident kernel's forwarder runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarder {
    /// On the SM with the shortest round trip to host memory, measured before the launch
    /// (block 0 where the grid is not one CTA on every SM).
    #[default]
    FastestSm,
    /// Block 0, wherever it runs.
    Block0,
    /// On this SM (`%smid`); block 0 takes over when no CTA there claims it within 1 ms.
    Sm(u32),
}

/// How the resident kernel is started.
#[derive(Clone, Copy, Debug)]
pub struct Resident {
    /// The kernel stamps each problem's way ([`CudaEngine::trace`]). Its timer reads are not
    /// free, so the runtime runs untraced.
    pub traced: bool,
    /// Where the forwarder runs (`TILEMUX_FORWARDER_SM=block0` overrides `FastestSm`).
    pub forwarder: Forwarder,
    /// The forwarder paces its first poll after a forward to the phase of its poll cycle that
    /// has seen the next problem soonest (learned; for clients that submit when a result
    /// arrives, see `QUEUE.md`). `TILEMUX_PACE=0` turns it off.
    pub pace: bool,
}

impl Default for Resident {
    fn default() -> Resident {
        Resident { traced: false, forwarder: Forwarder::default(), pace: true }
    }
}

impl Resident {
    /// Untraced, the forwarder on the fastest SM and paced: as the runtime starts it.
    pub fn new() -> Resident {
        Resident::default()
    }

    /// With the kernel's trace.
    pub fn traced(self) -> Resident {
        Resident { traced: true, ..self }
    }
}

impl CudaDevice {
    /// Starts persistent mode: allocates the ring and launches the resident kernel as `how`
    /// says. While it runs, this device must not run rounds (the kernel holds every SM).
    pub fn start_persistent(
        &self,
        slots: u32,
        heartbeat_timeout: Duration,
        how: Resident,
    ) -> Result<(Arc<RingMemory>, CudaEngine)> {
        let traced = how.traced;
        self.gpu().bind()?;
        let k = self.kernel();
        if k.persistent_grid < 2 || k.persistent_grid > TRACE_CTAS {
            return Err(Error::Config(format!(
                "persistent mode runs 2 (a forwarder and a worker) to {TRACE_CTAS} co-resident CTAs; this device fits {}",
                k.persistent_grid
            )));
        }
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        let ring = Arc::new(RingMemory::pinned(slots, PinnedBuffer::new(host_bytes(slots), flags)?)?);
        let zeroed = |bytes: usize| -> Result<DeviceBuffer> {
            let b = DeviceBuffer::new(bytes)?;
            // SAFETY: fresh allocation of `bytes`; no resident kernel runs yet.
            ck("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(b.ptr, 0, bytes) })?;
            Ok(b)
        };
        let state = DeviceBuffer::new(size_of::<DeviceState>())?;
        let trace = if traced { Some(zeroed(TRACE_BYTES)?) } else { None };
        let init = DeviceState {
            claim: 0,
            pace: (how.pace && std::env::var("TILEMUX_PACE").map_or(true, |v| v != "0")) as u32,
            _unused: 0,
            tiles_published: 0,
            heartbeat_timeout_ns: heartbeat_timeout.as_nanos() as u64,
            trace: trace.as_ref().map_or(0, |t| t.ptr),
            stop: 0,
            status: 0,
            slots,
            worker_spin_polls: worker_spin_polls(),
            forwarder_sm: forwarder_sm(self, k.persistent_grid, how.forwarder),
            forwarder_claim: 0,
        };
        // SAFETY: the buffer holds a DeviceState.
        ck("cuMemcpyHtoD", unsafe {
            sys::cuMemcpyHtoD_v2(
                state.ptr,
                bytemuck::bytes_of(&init).as_ptr() as *const c_void,
                size_of::<DeviceState>(),
            )
        })?;
        let dev_slots = zeroed(slots as usize * HOST_SLOT_BYTES)?;
        let done_ctr = zeroed(slots as usize * 8)?;
        let table = zeroed(CLAIM_TABLE as usize * 8)?;
        let host = ring.device_base()?;
        let kernel_stream = Stream::new()?;
        let mut params = KernelArgs::new(&[state.ptr, dev_slots.ptr, done_ctr.ptr, table.ptr, host]);
        // SAFETY: the parameters match `tilemux_persistent`; the grid is at most the
        // co-resident CTAs (cooperative launches fail otherwise) and at least 2; the buffers
        // outlive the kernel (the engine joins it before they drop).
        ck("cuLaunchCooperativeKernel", unsafe {
            sys::cuLaunchCooperativeKernel(
                k.persistent_func,
                k.persistent_grid,
                1,
                1,
                crate::abi::BLOCK_THREADS,
                1,
                1,
                k.persistent_smem,
                kernel_stream.0,
                params.as_mut_ptr(),
            )
        })?;
        let engine = CudaEngine {
            kernel_stream,
            state,
            _slots: dev_slots,
            _done_ctr: done_ctr,
            _table: table,
            trace,
            _ring: ring.clone(),
            gpu: self.gpu().clone(),
        };
        Ok((ring, engine))
    }
}

/// The SM whose CTA forwards (`DeviceState::forwarder_sm`): the one with the shortest round
/// trip to host-mapped memory (`probe::sm_rtt`, 32 loads from each SM; 1.04–1.23 µs across the
/// H100's SMs, stable per SM pair). The forwarder polls once per round trip and every publish
/// waits for its next poll, so the poll cycle is where the SM matters; block 0 lands on any SM.
/// `u32::MAX` (block 0 forwards) unless the grid is one CTA on every SM (then exactly one runs
/// on the chosen SM), or with `TILEMUX_FORWARDER_SM=block0`.
fn forwarder_sm(dev: &CudaDevice, grid: u32, f: Forwarder) -> u32 {
    let block0 = std::env::var("TILEMUX_FORWARDER_SM").is_ok_and(|v| v == "block0");
    match f {
        Forwarder::Sm(sm) => return sm,
        Forwarder::Block0 => return u32::MAX,
        Forwarder::FastestSm if block0 || grid != dev.gpu().sm_count => return u32::MAX,
        Forwarder::FastestSm => {}
    }
    // A probe that cannot run costs the choice, not the kernel: block 0 forwards.
    let rtt = match super::probe::sm_rtt(dev, 32) {
        Ok(rtt) => rtt,
        Err(e) => {
            tracing::warn!(error = %e, "per-SM round-trip probe failed; block 0 forwards");
            return u32::MAX;
        }
    };
    rtt.iter().filter(|r| r.host_ns > 0).min_by_key(|r| r.host_ns).map_or(u32::MAX, |r| r.sm)
}

/// Back-to-back polls of a waiting worker before it backs off: about 1 ms of L2 round trips,
/// so a worker between requests that come close together does not sleep through the next one.
/// `TILEMUX_WORKER_SPIN_POLLS` overrides it (0: sleep between polls from the first).
fn worker_spin_polls() -> u32 {
    std::env::var("TILEMUX_WORKER_SPIN_POLLS").ok().and_then(|v| v.parse().ok()).unwrap_or(4096)
}

impl CudaEngine {
    /// The kernel's stamps of the last `TRACE_PROBLEMS` problems (entry `q % TRACE_PROBLEMS`;
    /// only entries of finished problems are complete). An error when the kernel was started
    /// untraced.
    pub fn trace(&self) -> Result<Vec<Trace>> {
        let Some(trace) = &self.trace else {
            return Err(Error::Config("the resident kernel was started without its trace".into()));
        };
        self.gpu.bind()?;
        let mut v = vec![bytemuck::Zeroable::zeroed(); TRACE_PROBLEMS as usize];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        // SAFETY: the buffer holds TRACE_PROBLEMS traces; the kernel writes it with plain stores,
        // so entries of problems in flight may be partial (callers read finished ones).
        ck("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(bytes.as_mut_ptr() as *mut c_void, trace.ptr, bytes.len()) })?;
        Ok(v)
    }
}

impl Engine for CudaEngine {
    fn join(&self) -> Result<u32> {
        self.gpu.bind()?;
        self.kernel_stream.sync()?;
        let mut st = [0u8; size_of::<DeviceState>()];
        // SAFETY: the kernel finished; the buffer holds a DeviceState.
        ck("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(st.as_mut_ptr() as *mut c_void, self.state.ptr, st.len()) })?;
        let st: DeviceState = bytemuck::pod_read_unaligned(&st);
        if st.status != 0 {
            return Err(Error::DeviceStatus { code: st.status, meaning: "reported by the resident kernel" });
        }
        Ok(0)
    }
}

/// One problem at a time through the bare ring (no runtime) of a resident kernel started for the
/// purpose: `p` written and published, its completion word spun on; `n / 10` warm-up problems,
/// then `n` timed, each after a random spin below `gap_ns` (0: none) outside the timed interval
/// (a closed loop settles on a whole number of the forwarder's poll cycles; random gaps meet the
/// cycle at random phases). Returns each timed problem's latency in µs, sorted, and, when
/// `how.traced`, the kernel's [`trace_breakdown`]. The kernel is stopped and joined; its results
/// stay in device memory for the caller to check. For kernel developers (`bench dispatch`,
/// `examples/ring_trace`).
pub fn bare_ring_latency(
    dev: &CudaDevice,
    p: crate::abi::ProblemDesc,
    n: usize,
    gap_ns: u64,
    how: Resident,
) -> Result<(Vec<f64>, String)> {
    let (ring, engine) = dev.start_persistent(64, Duration::from_secs(10), how)?;
    let mut w = crate::persistent::RingWriter::new(ring.clone());
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        if gap_ns > 0 {
            let gap = Duration::from_nanos(rand::random_range(0..gap_ns));
            let g = std::time::Instant::now();
            while g.elapsed() < gap {
                std::hint::spin_loop();
            }
        }
        let t = std::time::Instant::now();
        let seq = w.write(p);
        w.publish();
        while !ring.is_done(seq) {
            std::hint::spin_loop();
        }
        if i >= n / 10 {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if i % 1000 == 0 {
            ring.beat(i as u64 + 1);
        }
    }
    ring.request_stop();
    engine.join()?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let trace = if how.traced { trace_breakdown(&engine.trace()?, w.written()) } else { String::new() };
    Ok((lat, trace))
}

/// Where one problem's time went on the device: medians, over the traced problems before
/// `written` (problems `written - n ..`, at most [`TRACE_PROBLEMS`]), of the steps between the
/// resident kernel's stamps, in µs unless named otherwise.
pub fn trace_breakdown(trace: &[Trace], written: u64) -> String {
    let n = (trace.len() as u64).min(written);
    let recent: Vec<&Trace> = (written - n..written).map(|q| &trace[(q % trace.len() as u64) as usize]).collect();
    let median = |f: &dyn Fn(&Trace) -> f64| {
        let mut v: Vec<f64> = recent.iter().map(|t| f(t)).filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
    };
    let us = |a: u64, b: u64| if b >= a && a != 0 { (b - a) as f64 / 1e3 } else { f64::NAN };
    let step = |f: &dyn Fn(&Trace) -> (u64, u64)| median(&|t| us(f(t).0, f(t).1));
    // The SM clock, from tile 0's cycles over its nanoseconds.
    let ghz = median(&|t| t.tile_cycles as f64 / (t.tile_done.saturating_sub(t.staged)) as f64);
    format!(
        "device p50 µs: forward {:.2}, to a worker {:.2} (its poll's round trip {:.2}, {:.0} polls), stage {:.2}, \
         tile 0 {:.2}, its count {:.2}; the last tile's CTA: found {:.2} after the forward, staged {:.2}, tile {:.2}, \
         count {:.2}; completion write {:.2}; seen → completed {:.2} (SM clock {ghz:.2} GHz)",
        step(&|t| (t.seen, t.forwarded)),
        step(&|t| (t.forwarded, t.found)),
        median(&|t| t.poll_cycles as f64 / ghz / 1e3),
        median(&|t| t.polls as f64),
        step(&|t| (t.found, t.staged)),
        step(&|t| (t.staged, t.tile_done)),
        step(&|t| (t.tile_done, t.counted)),
        step(&|t| (t.forwarded, t.last_found)),
        step(&|t| (t.last_found, t.last_staged)),
        step(&|t| (t.last_staged, t.last_tile_done)),
        step(&|t| (t.last_tile_done, t.completing)),
        step(&|t| (t.completing, t.completed)),
        step(&|t| (t.seen, t.completed)),
    )
}
