//! The multi-tenant runtime: tenants with private memory arenas submit GEMM/GEMV requests from
//! any thread; a scheduler merges them into rounds (one megakernel launch each) under a policy,
//! while an executor runs the previous round.
//!
//! ```no_run
//! use tilemux::runtime::{Mat, Op, Runtime, RuntimeConfig, TenantSpec};
//! let rt = Runtime::new(RuntimeConfig::default())?;
//! let t = rt.add_tenant(TenantSpec::new("resnet").quota(64 << 20))?;
//! let (a, b, c) = (t.alloc(256 * 1152)?, t.alloc(1152 * 128)?, t.alloc(256 * 128)?);
//! a.write(&vec![0.5; 256 * 1152])?;
//! b.write(&vec![0.25; 1152 * 128])?;
//! let op = Op::gemm(Mat::new(&a, 256, 1152), Mat::new(&b, 1152, 128), Mat::new(&c, 256, 128)).relu();
//! rt.submit(&t, op)?.wait()?;
//! let out = c.read()?;
//! # Ok::<(), tilemux::Error>(())
//! ```

mod buffer;
mod op;
pub mod phases;
mod scheduler;
mod ticket;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use buffer::Buffer;
pub use op::{Mat, Op, Request};
pub use ticket::Ticket;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::{ALIGN, Arena};
use crate::round::{CostModel, TileChooser};
use crate::{Backend, BackendKind, open_device};
use scheduler::SchedState;

/// Which pending work goes into the next round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Oldest request first, across tenants.
    Fifo,
    /// Earliest deadline first; a request's deadline is its arrival plus its tenant's SLO
    /// (tenants without one get [`RuntimeConfig::default_deadline`]).
    Edf,
    /// Weighted fair share of predicted tile-time: each tenant's consumed time divided by its
    /// weight stays level, so a flooding tenant cannot starve the others.
    #[default]
    FairShare,
}

/// How rounds reach the device.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// One megakernel launch per round (descriptor upload, launch, completion check).
    #[default]
    Rounds,
    /// A resident megakernel fed through a ring (see [`PersistentConfig`]).
    Persistent(PersistentConfig),
}

/// What `submit` does when persistent mode's ring has no room for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Block until enough problems complete.
    #[default]
    Wait,
    /// Return [`Error::RingFull`].
    Error,
}

/// Persistent mode: the megakernel is launched once and stays resident; requests stream into a
/// ring in device-mapped host memory and completions come back through it, with no launch,
/// upload or synchronisation per round. Protocol: `kernels/src/QUEUE.md`.
#[derive(Clone, Debug)]
pub struct PersistentConfig {
    /// Ring slots: problems accepted and not yet finished, at most.
    pub slots: u32,
    /// Backpressure when a request does not fit.
    pub when_full: WhenFull,
    /// The resident kernel stops by itself after this long without a host heartbeat.
    pub heartbeat_timeout: Duration,
}

impl Default for PersistentConfig {
    fn default() -> Self {
        PersistentConfig { slots: 1024, when_full: WhenFull::Wait, heartbeat_timeout: Duration::from_secs(10) }
    }
}

/// How a [`Runtime`] is built.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Backend; `Auto` takes the GPU when one is usable.
    pub backend: Backend,
    /// Device memory for all tenant arenas together, in bytes.
    pub memory_budget: usize,
    /// Round composition policy.
    pub policy: Policy,
    /// Cap on one tenant's reference tiles per round (a tenant's own cap wins). `None`: no cap.
    pub tenant_round_cap: Option<usize>,
    /// Most reference tiles in one round.
    pub max_round_tiles: usize,
    /// Longest predicted round when no tenant has an SLO.
    pub max_round: Duration,
    /// Deadline given to requests of tenants without an SLO under [`Policy::Edf`].
    pub default_deadline: Duration,
    /// Fit the cost model to the device at start-up (a few timed rounds).
    pub calibrate: bool,
    /// Start with scheduling paused (work queues up until [`Runtime::resume`]).
    pub start_paused: bool,
    /// A tuning table for the tile chooser ([`TileChooser::load`]); `TILEMUX_TUNING` names one
    /// when this is `None`.
    pub tuning: Option<std::path::PathBuf>,
    /// Round per launch, or persistent.
    pub mode: Mode,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            backend: Backend::Auto,
            memory_budget: 1 << 30,
            policy: Policy::default(),
            tenant_round_cap: None,
            max_round_tiles: 8192,
            max_round: Duration::from_millis(2),
            default_deadline: Duration::from_millis(100),
            calibrate: true,
            start_paused: false,
            tuning: None,
            mode: Mode::Rounds,
        }
    }
}

/// A tenant to add.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    /// Unique name.
    pub name: String,
    /// Bytes of device memory reserved for the tenant.
    pub quota: u64,
    /// Share under [`Policy::FairShare`] (relative to other tenants' weights).
    pub weight: f64,
    /// Latency target: under [`Policy::Edf`] a request's deadline, and rounds are kept short
    /// enough for it.
    pub slo: Option<Duration>,
    /// Most requests queued at once; more get [`Error::QueueFull`].
    pub max_pending: usize,
    /// Cap on this tenant's reference tiles per round.
    pub round_cap: Option<usize>,
}

impl TenantSpec {
    /// A tenant with 64 MiB, weight 1, no SLO, 4096 pending requests at most.
    pub fn new(name: impl Into<String>) -> TenantSpec {
        TenantSpec { name: name.into(), quota: 64 << 20, weight: 1.0, slo: None, max_pending: 4096, round_cap: None }
    }

    /// Memory quota in bytes.
    pub fn quota(mut self, bytes: u64) -> TenantSpec {
        self.quota = bytes;
        self
    }

    /// Fair-share weight.
    pub fn weight(mut self, w: f64) -> TenantSpec {
        self.weight = w;
        self
    }

    /// Latency target.
    pub fn slo(mut self, d: Duration) -> TenantSpec {
        self.slo = Some(d);
        self
    }

    /// Queue limit.
    pub fn max_pending(mut self, n: usize) -> TenantSpec {
        self.max_pending = n;
        self
    }

    /// Per-round tile cap.
    pub fn round_cap(mut self, tiles: usize) -> TenantSpec {
        self.round_cap = Some(tiles);
        self
    }
}

/// Latency percentiles of one histogram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latency {
    /// Summary of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |v: u64| Duration::from_micros(v);
        Latency {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// A tenant's counters and latency histograms (microseconds), as of the call.
#[derive(Clone, Debug)]
pub struct TenantStats {
    /// Tenant name.
    pub name: String,
    /// Requests accepted.
    pub submitted: u64,
    /// Requests that ran.
    pub completed: u64,
    /// Requests that failed or were cancelled after acceptance.
    pub failed: u64,
    /// Submissions rejected by validation or admission.
    pub rejected: u64,
    /// Ops that ran.
    pub ops: u64,
    /// Reference tiles that ran.
    pub tiles: u64,
    /// Bytes uploaded / downloaded.
    pub bytes_in: u64,
    /// Bytes downloaded.
    pub bytes_out: u64,
    /// Predicted tile-time consumed (the fair-share measure), nanoseconds.
    pub tile_time_ns: f64,
    /// Memory in use / peak / quota, bytes.
    pub memory_used: u64,
    /// Peak memory in use.
    pub memory_peak: u64,
    /// Reserved bytes.
    pub quota: u64,
    /// Arrival to round start.
    pub queue_wait: Histogram<u64>,
    /// Round start to completion.
    pub execution: Histogram<u64>,
    /// Arrival to completion.
    pub end_to_end: Histogram<u64>,
}

/// What a completed request reports.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// Index of the round that ran it.
    pub round: u64,
    /// Arrival to round start.
    pub queued: Duration,
    /// Round start to completion.
    pub executed: Duration,
}

/// One round as the runtime saw it.
#[derive(Clone, Debug)]
pub struct RoundInfo {
    /// Sequence number.
    pub index: u64,
    /// Problems and megakernel tiles.
    pub problems: usize,
    /// Megakernel tiles.
    pub tiles: usize,
    /// `(tenant id, reference tiles, requests)` per tenant in the round.
    pub tenants: Vec<(u32, usize, usize)>,
    /// Submission sequence numbers of the requests, in the order the policy took them.
    pub requests: Vec<u64>,
    /// Cost-model prediction of the round's kernel time.
    pub predicted: Duration,
    /// Measured kernel time (CUDA events; wall time on the CPU backend).
    pub measured: Duration,
    /// Whole round on the executor (upload, launch, completion check).
    pub total: Duration,
}

#[derive(Default)]
pub(crate) struct Counters {
    submitted: u64,
    completed: u64,
    failed: u64,
    rejected: u64,
    ops: u64,
    tiles: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    tile_time_ns: f64,
    queue_wait: Option<Histogram<u64>>,
    execution: Option<Histogram<u64>>,
    end_to_end: Option<Histogram<u64>>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Counters {
    fn record(&mut self, queued: Duration, executed: Duration) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
        self.queue_wait.get_or_insert_with(hist).saturating_record(us(queued));
        self.execution.get_or_insert_with(hist).saturating_record(us(executed));
        self.end_to_end.get_or_insert_with(hist).saturating_record(us(queued + executed));
    }
}

/// A tenant's runtime-side state.
pub(crate) struct TenantState {
    pub(crate) id: u32,
    /// Its runtime's id (`Inner::id`, unique in the process): with `id`, unique in the process.
    pub(crate) rt: u64,
    pub(crate) name: Arc<str>,
    pub(crate) spec: TenantSpec,
    /// Its buffers' allocator; `None` once the tenant is removed.
    arena: Mutex<Option<Arena>>,
    /// Its range of the device pool.
    region: (u64, u64),
    removed: AtomicBool,
    /// Requests queued or in a round.
    pub(crate) inflight: AtomicUsize,
    pub(crate) stats: Mutex<Counters>,
}

impl TenantState {
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Returns a buffer's block (no-op after removal: the whole region went back at once).
    pub(crate) fn free(&self, addr: u64, bytes: u64) {
        if let Some(a) = self.arena.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            a.free(addr, bytes);
        }
    }

    pub(crate) fn counters(&self) -> MutexGuard<'_, Counters> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A device's claim by the one runtime it serves: two runtimes on one device would hand out the
/// same pool to their tenants. Released when the runtime's state goes (its last tenant, buffer
/// and ticket handle with it).
struct DeviceClaim(usize);

static CLAIMED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl DeviceClaim {
    fn new(device: &Arc<dyn Device>) -> Result<DeviceClaim> {
        let key = Arc::as_ptr(device) as *const () as usize;
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if claimed.contains(&key) {
            return Err(Error::Config(format!(
                "{} already serves a runtime, and two would hand out the same memory: drop that \
                 runtime (its tenants and buffers too) or open another device",
                device.name()
            )));
        }
        claimed.push(key);
        Ok(DeviceClaim(key))
    }
}

impl Drop for DeviceClaim {
    fn drop(&mut self) {
        CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).retain(|&k| k != self.0);
    }
}

/// Shared state of a runtime: the device, the pool, the scheduler queues, the cost model.
pub(crate) struct Inner {
    pub(crate) device: Arc<dyn Device>,
    /// This runtime's hold on `device`.
    _claim: DeviceClaim,
    pub(crate) cfg: RuntimeConfig,
    pool: Mutex<Arena>,
    tenants: Mutex<Vec<Arc<TenantState>>>,
    pub(crate) sched: Mutex<SchedState>,
    pub(crate) wake: Condvar,
    progress: Mutex<()>,
    progress_cv: Condvar,
    pub(crate) cost: Mutex<CostModel>,
    pub(crate) chooser: RwLock<TileChooser>,
    open: AtomicBool,
    next_id: AtomicU64,
    next_tenant: AtomicU32,
    pub(crate) log: Mutex<VecDeque<RoundInfo>>,
    transfers: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Nanoseconds since `epoch` until which the executor is predicted busy (0: idle).
    pub(crate) busy_until: AtomicU64,
    /// Requests accepted so far (the scheduler spins on it).
    pub(crate) submitted: AtomicU64,
    /// The scheduler is blocked on `wake` (submitters notify only then).
    pub(crate) sched_sleeping: AtomicBool,
    /// The scheduler is blocked because every queue head conflicts with work on the device
    /// (persistent mode): completions wake it then, and only then.
    pub(crate) sched_on_hazards: AtomicBool,
    /// Persistent mode's ring, engine and writer.
    pub(crate) persistent: Option<scheduler::Ring>,
    /// Problems accepted and not finished (persistent mode's admission control).
    pub(crate) outstanding: AtomicU64,
    /// Threads in `wait_until` (`notify_progress` skips the wake-up when there are none).
    progress_sleepers: AtomicU32,
    /// This runtime among all in the process (for plans remembered per thread).
    pub(crate) id: u64,
    /// Changes whenever the cost model or the tile chooser does: a remembered plan of an
    /// earlier value is stale.
    pub(crate) plans: AtomicU64,
    pub(crate) epoch: Instant,
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.open.load(Ordering::Acquire) { Ok(()) } else { Err(Error::Closed) }
    }

    /// Blocks until `done()` holds, re-checking after every round and at least every 5 ms.
    pub(crate) fn wait_until(&self, done: impl Fn() -> bool) {
        self.progress_sleepers.fetch_add(1, Ordering::SeqCst);
        let mut g = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        while !done() {
            g = self.progress_cv.wait_timeout(g, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(g);
        self.progress_sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn notify_progress(&self) {
        // Waiters count themselves before they check: a change made before this fence is seen
        // by their check, or they are counted here (and re-check every 5 ms regardless).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.progress_sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            self.progress_cv.notify_all();
        }
    }

    fn transfer(&self, job: Job) {
        let tx = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            // A send only fails after shutdown; the job's resolver then reports Closed on drop.
            let _ = tx.send(job);
        }
    }

    fn shutdown(&self) {
        if !self.open.swap(false, Ordering::AcqRel) {
            return;
        }
        {
            let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
            s.open = false;
            self.wake.notify_all();
        }
        self.transfers.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.notify_progress();
    }
}

/// Dropping the last [`Runtime`] clone shuts the runtime down.
struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// The runtime. `Send + Sync`; clones share one runtime, and dropping the last clone shuts it
/// down (every pending ticket resolves).
#[derive(Clone)]
pub struct Runtime {
    handle: Arc<Handle>,
}

/// A tenant handle: allocates buffers and submits work. Clones refer to the same tenant.
#[derive(Clone)]
pub struct Tenant {
    state: Arc<TenantState>,
    rt: Arc<Inner>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tenant({})", self.state.name)
    }
}

impl Runtime {
    /// Opens the backend, allocates the pool, optionally calibrates, starts the threads.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime> {
        let device = open_device(cfg.backend, cfg.memory_budget)?;
        Self::with_device(device, cfg)
    }

    /// As [`Runtime::new`] on an already opened device (its whole pool becomes the budget).
    pub fn with_device(device: Arc<dyn Device>, cfg: RuntimeConfig) -> Result<Runtime> {
        let claim = DeviceClaim::new(&device)?;
        let pool = device.pool();
        let mut cost = CostModel::default();
        if cfg.calibrate {
            scheduler::calibrate(&*device, &mut cost)?;
        }
        let tuning = cfg.tuning.clone().or_else(|| std::env::var_os("TILEMUX_TUNING").map(Into::into));
        let mut chooser = match tuning {
            Some(p) => TileChooser::load(&p)?,
            None => TileChooser::default(),
        }
        .fitted_to(&*device);
        let persistent = match &cfg.mode {
            Mode::Rounds => None,
            Mode::Persistent(p) => {
                if p.slots == 0 || p.slots > crate::abi::ring::MAX_SLOTS {
                    return Err(Error::Config(format!(
                        "persistent mode takes 1 to {} ring slots, not {}",
                        crate::abi::ring::MAX_SLOTS,
                        p.slots
                    )));
                }
                chooser = TileChooser { table: chooser.table, ..TileChooser::persistent() };
                let (ring, engine) = device.start_persistent(p.slots, p.heartbeat_timeout)?;
                Some(scheduler::Ring::new(ring, engine))
            }
        };
        let (ttx, trx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            _claim: claim,
            pool: Mutex::new(Arena::new(pool.start, pool.end - pool.start)),
            tenants: Mutex::new(Vec::new()),
            sched: Mutex::new(SchedState::new(cfg.start_paused)),
            wake: Condvar::new(),
            progress: Mutex::new(()),
            progress_cv: Condvar::new(),
            cost: Mutex::new(cost),
            chooser: RwLock::new(chooser),
            open: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            next_tenant: AtomicU32::new(1),
            log: Mutex::new(VecDeque::new()),
            transfers: Mutex::new(Some(ttx)),
            threads: Mutex::new(Vec::new()),
            busy_until: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            sched_sleeping: AtomicBool::new(false),
            sched_on_hazards: AtomicBool::new(false),
            persistent,
            outstanding: AtomicU64::new(0),
            progress_sleepers: AtomicU32::new(0),
            id: {
                static RUNTIMES: AtomicU64 = AtomicU64::new(0);
                RUNTIMES.fetch_add(1, Ordering::Relaxed)
            },
            plans: AtomicU64::new(0),
            epoch: Instant::now(),
            device,
            cfg,
        });
        let mut threads = scheduler::spawn(&inner)?;
        threads.push(
            std::thread::Builder::new()
                .name("tilemux-transfer".into())
                .spawn(move || {
                    for job in trx {
                        job();
                    }
                })
                .map_err(|e| Error::Config(format!("spawning the transfer thread: {e}")))?,
        );

        *inner.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(Runtime { handle: Arc::new(Handle(inner)) })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.0
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        self.inner().device.name()
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.inner().device.kind()
    }

    /// The device (for benchmarks that compare against the raw backend).
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.inner().device
    }

    /// Adds a tenant and reserves its quota in the pool.
    pub fn add_tenant(&self, spec: TenantSpec) -> Result<Tenant> {
        let inner = self.inner();
        inner.check_open()?;
        if !(spec.weight.is_finite() && spec.weight > 0.0) {
            return Err(Error::Config(format!("tenant {}: weight must be positive, got {}", spec.name, spec.weight)));
        }
        let mut tenants = inner.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if tenants.iter().any(|t| *t.name == *spec.name) {
            return Err(Error::DuplicateTenant(spec.name));
        }
        let bytes = crate::memory::round_up(spec.quota.max(ALIGN));
        let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let base =
            pool.alloc(bytes).ok_or(Error::OutOfDeviceMemory { requested: bytes, available: pool.largest_free() })?;
        drop(pool);
        let state = Arc::new(TenantState {
            id: inner.next_tenant.fetch_add(1, Ordering::Relaxed),
            rt: inner.id,
            name: spec.name.as_str().into(),
            arena: Mutex::new(Some(Arena::new(base, bytes))),
            region: (base, bytes),
            removed: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            stats: Mutex::new(Counters::default()),
            spec,
        });
        tenants.push(state.clone());
        Ok(Tenant { state, rt: inner.clone() })
    }

    /// Removes a tenant: its queued requests fail with [`Error::TenantRemoved`], requests already
    /// in a round complete, then its memory returns to the pool. Its buffers become unusable.
    /// Returns its final statistics.
    pub fn remove_tenant(&self, tenant: &Tenant) -> Result<TenantStats> {
        let inner = self.inner();
        self.owns(tenant)?;
        let st = &tenant.state;
        if st.removed.swap(true, Ordering::AcqRel) {
            return Err(Error::NoSuchTenant(st.name.to_string()));
        }
        scheduler::cancel_tenant(inner, st.id, || Error::TenantRemoved(st.name.to_string()));
        inner.wait_until(|| st.inflight.load(Ordering::Acquire) == 0);
        let stats = tenant.stats();
        *st.arena.lock().unwrap_or_else(|e| e.into_inner()) = None;
        inner.pool.lock().unwrap_or_else(|e| e.into_inner()).free(st.region.0, st.region.1);
        inner.tenants.lock().unwrap_or_else(|e| e.into_inner()).retain(|t| t.id != st.id);
        Ok(stats)
    }

    /// Validates `req` and queues it. Validation errors come back at once, to this caller only;
    /// the ticket resolves when the request's round has run.
    pub fn submit(&self, tenant: &Tenant, req: impl Into<Request>) -> Result<Ticket<Done>> {
        self.owns(tenant)?;
        scheduler::submit(self.inner(), &tenant.state, req.into())
    }

    /// Whether `tenant` is one of this runtime's (tenant ids are only unique within a runtime).
    fn owns(&self, tenant: &Tenant) -> Result<()> {
        if Arc::ptr_eq(&tenant.rt, self.inner()) {
            Ok(())
        } else {
            Err(Error::ForeignTenant(tenant.state.name.to_string()))
        }
    }

    /// Stops forming rounds (queued work waits) until [`Runtime::resume`].
    pub fn pause(&self) {
        self.inner().sched.lock().unwrap_or_else(|e| e.into_inner()).paused = true;
    }

    /// Resumes forming rounds.
    pub fn resume(&self) {
        let inner = self.inner();
        inner.sched.lock().unwrap_or_else(|e| e.into_inner()).paused = false;
        inner.wake.notify_all();
    }

    /// The most recent rounds (up to 4096), oldest first.
    pub fn rounds(&self) -> Vec<RoundInfo> {
        self.inner().log.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A copy of the cost model (calibrated coefficients, current drift factor).
    pub fn cost_model(&self) -> CostModel {
        self.inner().cost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the tile chooser (e.g. with a tuning table from `tilemux bench tune`), fitted to
    /// the runtime's device ([`TileChooser::fitted_to`]); in persistent mode it keeps that mode's
    /// limits (no split-K, which the ring has no workspace for, and no wide kinds).
    pub fn set_chooser(&self, chooser: TileChooser) {
        let inner = self.inner();
        let mut chooser = chooser.fitted_to(&*inner.device);
        if inner.persistent.is_some() {
            (chooser.no_split_k, chooser.no_wide) = (true, true);
        }
        *inner.chooser.write().unwrap_or_else(|e| e.into_inner()) = chooser;
        inner.plans.fetch_add(1, Ordering::AcqRel);
    }

    /// Closes the runtime: new calls fail with [`Error::Closed`], queued requests resolve with
    /// it, the round in flight completes, and the threads stop. Idempotent.
    pub fn shutdown(&self) {
        self.inner().shutdown();
    }
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Allocates `len` zeroed `f32`s from the tenant's quota.
    pub fn alloc(&self, len: usize) -> Result<Buffer> {
        self.rt.check_open()?;
        if self.state.is_removed() {
            return Err(Error::NoSuchTenant(self.state.name.to_string()));
        }
        let bytes = (len.max(1) * 4) as u64;
        let addr = {
            let mut arena = self.state.arena.lock().unwrap_or_else(|e| e.into_inner());
            let a = arena.as_mut().ok_or_else(|| Error::NoSuchTenant(self.state.name.to_string()))?;
            a.alloc(bytes).ok_or_else(|| Error::QuotaExceeded {
                tenant: self.state.name.to_string(),
                requested: bytes,
                available: a.largest_free(),
                quota: a.capacity(),
            })?
        };
        // Zeroed before the tenant sees it: no tenant reads another's (or its own) old data.
        if let Err(e) = self.rt.device.zero(addr, crate::memory::round_up(bytes)) {
            self.state.free(addr, bytes);
            return Err(e);
        }
        let id = self.rt.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Buffer::new(self.rt.clone(), self.state.clone(), id, addr, len))
    }

    /// Allocates a buffer holding `data`.
    pub fn upload(&self, data: &[f32]) -> Result<Buffer> {
        let b = self.alloc(data.len())?;
        b.write(data)?;
        Ok(b)
    }

    /// Counters, memory and latency histograms.
    pub fn stats(&self) -> TenantStats {
        let c = self.state.counters();
        let (used, peak, quota) = self
            .state
            .arena
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or((0, 0, self.state.region.1), |a| (a.used(), a.peak(), a.capacity()));
        TenantStats {
            name: self.state.name.to_string(),
            submitted: c.submitted,
            completed: c.completed,
            failed: c.failed,
            rejected: c.rejected,
            ops: c.ops,
            tiles: c.tiles,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            tile_time_ns: c.tile_time_ns,
            memory_used: used,
            memory_peak: peak,
            quota,
            queue_wait: c.queue_wait.clone().unwrap_or_else(hist),
            execution: c.execution.clone().unwrap_or_else(hist),
            end_to_end: c.end_to_end.clone().unwrap_or_else(hist),
        }
    }

    /// The tenant's id (as in [`RoundInfo::tenants`]).
    pub fn id(&self) -> u32 {
        self.state.id
    }

    pub(crate) fn state(&self) -> &TenantState {
        &self.state
    }
}
