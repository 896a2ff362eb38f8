//! The space-time scheduler: per-tenant FIFO queues, a policy that picks which tenant's oldest
//! request joins the round next, and an executor that runs rounds while the next is assembled.
//!
//! Rules a round obeys:
//! - a tenant's requests run in its submission order (only the head of a queue can be taken, and
//!   a head that conflicts with the tenant's work already in the round waits for the next one);
//! - a tenant takes at most its cap of reference tiles per round (unless a single request is
//!   larger than the cap: it then runs alone in its round, so nothing starves);
//! - the round's predicted duration stays under a budget: a third of the tightest SLO among
//!   tenants with queued work, or [`RuntimeConfig::max_round`] without SLOs.
//!
//! Pipelining: the executor publishes when it expects to be free; the scheduler assembles the
//! next round shortly before that, so requests that arrive during a round still make the next
//! one, and the handover to the executor (a rendezvous channel) leaves no idle gap.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ticket::{Resolver, Ticket, ticket};
use super::{Buffer, Done, Inner, Policy, Request, RoundInfo, TenantState};
use crate::abi::{Activation, BiasMode, ProblemDesc, TileKind};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::Arena;
use crate::round::{CostModel, Round, problem};
use crate::validate::{Checked, CheckedOp, check_request};

/// How long the scheduler, the executor and ticket waiters spin before they block: short enough
/// to cost nothing when idle, long enough to skip a sleeping thread's wake-up (tens of µs) on
/// the critical path of a request. Zero on machines with fewer than 8 cores, where spinning
/// threads would take the cores the callers need. `TILEMUX_SPIN_US` overrides it.
pub(crate) fn spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        if let Some(us) = std::env::var("TILEMUX_SPIN_US").ok().and_then(|v| v.parse().ok()) {
            return Duration::from_micros(us);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= 8 { Duration::from_micros(100) } else { Duration::ZERO }
    })
}

/// A validated request waiting for a round.
pub(crate) struct Pending {
    seq: u64,
    ops: Vec<Checked<CheckedOp>>,
    resolver: Resolver<Done>,
    submitted: Instant,
    deadline: Instant,
    cost_ns: f64,
    ref_tiles: usize,
    /// Its buffers count it as a user (a queued request). A request the fast path takes is on
    /// the device at once, and its buffers count it there only ([`Buffer::on_device`]): two
    /// read-modify-writes per buffer fewer on its way in and out.
    users: bool,
}

/// Buffers `ops` touch: `(buffer, written)`.
fn touches(ops: &[Checked<CheckedOp>]) -> impl Iterator<Item = (&Buffer, bool)> + '_ {
    ops.iter().flat_map(|o| {
        let o = o.get();
        o.reads.iter().map(|b| (b, false)).chain(std::iter::once((&o.write, true)))
    })
}

impl Pending {
    /// Buffers the request touches: `(buffer, written)`.
    fn touches(&self) -> impl Iterator<Item = (&Buffer, bool)> + '_ {
        touches(&self.ops)
    }

    /// Its buffers no longer count it as a user (if they did).
    fn release(&self) {
        if !self.users {
            return;
        }
        for o in &self.ops {
            let o = o.get();
            o.reads.iter().for_each(|b| b.remove_user());
            o.write.remove_user();
        }
    }
}

pub(crate) struct Queue {
    tenant: Arc<TenantState>,
    pending: VecDeque<Pending>,
    /// Fair-share virtual time: predicted tile-time taken, divided by weight.
    vt: f64,
}

pub(crate) struct SchedState {
    pub(crate) open: bool,
    pub(crate) paused: bool,
    queues: BTreeMap<u32, Queue>,
    /// Requests in all queues (kept with every push and pop: the fast path and `has_work` ask it
    /// without walking the tenants).
    queued: usize,
    seq: u64,
    rounds: u64,
}

impl SchedState {
    pub(crate) fn new(paused: bool) -> SchedState {
        SchedState { open: true, paused, queues: BTreeMap::new(), queued: 0, seq: 0, rounds: 0 }
    }

    fn has_work(&self) -> bool {
        self.queued > 0
    }
}

/// A round handed to the executor with the requests it serves.
struct Batch {
    index: u64,
    round: Round,
    reqs: Vec<(Arc<TenantState>, Pending)>,
    predicted: Duration,
}

/// Persistent mode's ring: its memory, the engine draining it, its one writer and the way to
/// the completer.
pub(crate) struct Ring {
    pub(crate) mem: Arc<crate::persistent::RingMemory>,
    engine: Arc<dyn crate::persistent::Engine>,
    /// The ring's single writer: the ring-writer thread's for scheduled batches, or a
    /// submitting thread's for a request that finds nothing queued (the fast path).
    writer: std::sync::Mutex<crate::persistent::RingWriter>,
    /// Written requests on their way to the completer; `None` once the writer thread is done.
    flights: std::sync::Mutex<Option<std::sync::mpsc::Sender<Arc<FlightCell>>>>,
    /// The hazard lock: guards every buffer's count of requests on the device that read and
    /// write it ([`Buffer::on_device`]): requests overlap there, so one must not touch what
    /// another in flight writes. Taken after the scheduler lock where both are needed; the
    /// completer needs only this one.
    hazards: std::sync::Mutex<()>,
    /// Fast paths between taking a request (under the scheduler lock, runtime open) and
    /// handing it to the completer; shutdown waits for none.
    fast_writers: std::sync::atomic::AtomicU32,
    /// The completer thread, and whether it rests (parked while every request in flight has a
    /// waiter spinning on it; see [`ring_completer`]).
    completer: std::sync::OnceLock<std::thread::Thread>,
    completer_rests: std::sync::atomic::AtomicBool,
}

/// Books `ops`' buffers as on the device (`hazards`: the hazard lock, held), unless one
/// conflicts with a request in flight (read-after-write, write-after-read, write-after-write):
/// then books nothing and returns false.
fn try_book(hazards: &std::sync::MutexGuard<'_, ()>, ops: &[Checked<CheckedOp>]) -> bool {
    let conflict = touches(ops).any(|(b, w)| {
        let (r, wr) = b.on_device();
        wr > 0 || (w && r > 0)
    });
    if !conflict {
        book(hazards, ops, true);
    }
    !conflict
}

/// Counts `ops`' buffers as on the device (`add`) or no longer (the hazard lock held).
fn book(_hazards: &std::sync::MutexGuard<'_, ()>, ops: &[Checked<CheckedOp>], add: bool) {
    for (b, w) in touches(ops) {
        b.count_on_device(w, add);
    }
}

impl Ring {
    pub(crate) fn new(mem: Arc<crate::persistent::RingMemory>, engine: Arc<dyn crate::persistent::Engine>) -> Ring {
        let writer = std::sync::Mutex::new(crate::persistent::RingWriter::new(mem.clone()));
        Ring {
            mem,
            engine,
            writer,
            flights: std::sync::Mutex::new(None),
            hazards: Default::default(),
            fast_writers: Default::default(),
            completer: Default::default(),
            completer_rests: Default::default(),
        }
    }

    /// Wakes the completer if it rests: a request just handed to it that no spinning waiter
    /// will finish (a batch's, or one whose waiter stopped spinning or never spun) must not
    /// wait for the end of its rest. A system call, so only then.
    pub(crate) fn wake_completer(&self) {
        // Orders the hand-over before the flag's load (the completer raises the flag, then looks
        // for new flights once more).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.completer_rests.load(Ordering::Relaxed)
            && let Some(t) = self.completer.get()
        {
            t.unpark();
        }
    }
}

/// Persistent mode's admission control: at most `slots` problems accepted and unfinished. Takes
/// `n` of them, waiting or failing as configured.
fn admit(inner: &Inner, n: u64) -> Result<()> {
    let super::Mode::Persistent(cfg) = &inner.cfg.mode else {
        inner.outstanding.fetch_add(n, Ordering::AcqRel);
        return Ok(());
    };
    let slots = cfg.slots as u64;
    let full = |have: u64| Error::RingFull { outstanding: have, requested: n, slots: cfg.slots };
    if n > slots {
        return Err(full(inner.outstanding.load(Ordering::Acquire)));
    }
    loop {
        let have = inner.outstanding.load(Ordering::Acquire);
        if have + n <= slots {
            if inner.outstanding.compare_exchange(have, have + n, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Ok(());
            }
            continue;
        }
        match cfg.when_full {
            super::WhenFull::Error => return Err(full(have)),
            super::WhenFull::Wait => {
                inner.check_open()?;
                inner.wait_until(|| {
                    inner.outstanding.load(Ordering::Acquire) + n <= slots || inner.check_open().is_err()
                });
            }
        }
    }
}

/// Validates and queues a request (see [`super::Runtime::submit`]).
pub(crate) fn submit(inner: &Arc<Inner>, tenant: &Arc<TenantState>, req: Request) -> Result<Ticket<Done>> {
    let reject = |e: Error| {
        tenant.counters().rejected += 1;
        Err(e)
    };
    super::phases::start();
    if let Err(e) = inner.check_open() {
        return reject(e);
    }
    if tenant.is_removed() {
        return reject(Error::NoSuchTenant(tenant.name.to_string()));
    }
    if let Some(ring) = &inner.persistent {
        // The image lines the fast path will write, requested writable while it validates.
        ring.mem.prefetch_next_slot();
    }
    // Validation consumes `req`: its buffer handles move into the checked ops.
    let ops = match check_request(tenant, req) {
        Ok(ops) => ops,
        Err(e) => return reject(e),
    };
    super::phases::mark(super::phases::Step::Validated);
    if let Err(e) = admit(inner, ops.len() as u64) {
        return reject(e);
    }
    super::phases::mark(super::phases::Step::AdmitDone);
    // In persistent mode the fast path's plan too, under the same lock: the plan depends on the
    // ops, the cost model and the chooser only (wasted when the request has to queue). A lone
    // op shaped as this thread's last one reuses its plan and cost, neither lock taken.
    let generation = inner.plans.load(Ordering::Acquire);
    let remembered = inner.persistent.as_ref().and_then(|_| PlanMemo::recall(inner, generation, &ops));
    let (cost_ns, ref_tiles, planned) = if let Some(r) = remembered {
        r
    } else {
        let cost = inner.cost.lock().unwrap_or_else(|e| e.into_inner());
        let planned = inner.persistent.as_ref().map(|_| plan_alone(inner, &cost, &ops));
        super::phases::mark(super::phases::Step::Planned);
        let (cost_ns, ref_tiles) = ops.iter().fold((0.0, 0), |(c, t), o| {
            let o = o.get();
            let kind = o.plan.map_or(
                if TileKind::Gemv32.supports(o.desc.n, o.desc.flags) {
                    TileKind::Gemv32
                } else {
                    TileKind::Sgemm128x128
                },
                |p| p.kind,
            );
            let mut d = o.desc;
            d.tile_kind = kind as u32;
            (c + cost.kind_tile_ns(kind, &d) * o.ref_tiles as f64, t + o.ref_tiles)
        });
        if let (Some(p), [o]) = (&planned, &ops[..]) {
            PlanMemo::remember(inner, generation, o.get(), TileKind::from_u32(p.0[0].tile_kind), cost_ns);
        }
        (cost_ns, ref_tiles, planned)
    };
    super::phases::mark(super::phases::Step::Admitted);
    let now = Instant::now();
    let slo = tenant.spec.slo.unwrap_or(inner.cfg.default_deadline);
    let mut s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
    super::phases::mark(super::phases::Step::Locked);
    if !s.open {
        drop(s);
        return reject(Error::Closed);
    }
    if tenant.spec.max_pending == 0 {
        drop(s);
        return reject(Error::QueueFull { tenant: tenant.name.to_string(), pending: 0, limit: 0 });
    }
    let fast = FastPath { submitted: now, deadline: now + slo, cost_ns, ref_tiles };
    let ops = match fast.take(inner, s, tenant, ops, planned) {
        Ok(t) => return Ok(t),
        Err((guard, ops)) => {
            s = guard;
            ops
        }
    };
    let activating = s.queues.get(&tenant.id).is_none_or(|q| q.pending.is_empty());
    // Only a tenant coming back from idle, with others queued, needs the floor (an O(tenants)
    // scan).
    let floor = if activating && s.queued > 0 {
        s.queues.values().filter(|q| !q.pending.is_empty()).map(|q| q.vt).fold(f64::INFINITY, f64::min)
    } else {
        f64::INFINITY
    };
    let q = queue(&mut s, tenant);
    if q.pending.len() >= tenant.spec.max_pending {
        let (pending, limit) = (q.pending.len(), tenant.spec.max_pending);
        drop(s);
        return reject(Error::QueueFull { tenant: tenant.name.to_string(), pending, limit });
    }
    if q.pending.is_empty() && floor.is_finite() {
        // A tenant coming back from idle starts level with the backlogged ones: no banked credit.
        q.vt = q.vt.max(floor);
    }
    let (t, resolver) = ticket();
    add_users(&ops);
    s.seq += 1;
    let seq = s.seq;
    let q = queue(&mut s, tenant);
    q.pending.push_back(Pending {
        seq,
        ops,
        resolver,
        submitted: now,
        deadline: now + slo,
        cost_ns,
        ref_tiles,
        users: true,
    });
    s.queued += 1;
    tenant.inflight.fetch_add(1, Ordering::AcqRel);
    tenant.counters().submitted += 1;
    super::phases::mark(super::phases::Step::Queued);
    inner.submitted.fetch_add(1, Ordering::AcqRel);
    if inner.sched_sleeping.load(Ordering::Acquire) {
        inner.wake.notify_all();
    }
    Ok(t)
}

/// `tenant`'s queue, made if it has none.
fn queue<'a>(s: &'a mut SchedState, tenant: &Arc<TenantState>) -> &'a mut Queue {
    s.queues.entry(tenant.id).or_insert_with(|| Queue { tenant: tenant.clone(), pending: VecDeque::new(), vt: 0.0 })
}

/// Counts a request's users of its buffers (they outlive it on the device).
fn add_users(ops: &[Checked<CheckedOp>]) {
    for o in ops {
        o.get().reads.iter().for_each(|b| b.add_user());
        o.get().write.add_user();
    }
}

/// A request the fast path gave back: the scheduler lock, still held, and the request's ops.
type Refused<'a> = (std::sync::MutexGuard<'a, SchedState>, Vec<Checked<CheckedOp>>);

/// What the fast path needs of a validated request besides its ops.
struct FastPath {
    submitted: Instant,
    deadline: Instant,
    cost_ns: f64,
    ref_tiles: usize,
}

impl FastPath {
    /// Persistent mode's fast path: a request that finds nothing queued (and the runtime not
    /// paused, nothing in flight it conflicts with) goes into the ring on the submitting thread
    /// rather than through the scheduler and writer threads: the policy has nothing to choose
    /// between. Under the scheduler lock (`s`, the runtime open) it takes the request, booking
    /// fair-share time and hazards as `assemble` would; after releasing it, it plans, writes and
    /// publishes the request under the ring's writer lock, and only then makes its ticket and
    /// hands it to the completer: nothing the device does waits for the bookkeeping. Gives the
    /// lock and the ops back when the request must queue.
    fn take<'a>(
        self,
        inner: &Arc<Inner>,
        mut s: std::sync::MutexGuard<'a, SchedState>,
        tenant: &Arc<TenantState>,
        ops: Vec<Checked<CheckedOp>>,
        planned: Option<Planned>,
    ) -> std::result::Result<Ticket<Done>, Refused<'a>> {
        let (Some(ring), Some((problems, checked))) = (&inner.persistent, planned) else { return Err((s, ops)) };
        // Alone: nothing queued, so no tenant's turn to take (`queued` counts every queue).
        if s.paused || s.queued != 0 {
            return Err((s, ops));
        }
        if !try_book(&ring.hazards.lock().unwrap_or_else(|e| e.into_inner()), &ops) {
            return Err((s, ops));
        }
        super::phases::mark(super::phases::Step::HazardsBooked);
        // As `submit` then `assemble` would: its sequence number, its fair-share time (a tenant
        // with nothing queued needs no floor when no other has anything queued either).
        s.seq += 1;
        let seq = s.seq;
        let q = queue(&mut s, tenant);
        q.vt += self.cost_ns / tenant.spec.weight;
        // Counted while the runtime is open (under the lock): a shutdown waits for it.
        ring.fast_writers.fetch_add(1, Ordering::AcqRel);
        drop(s);
        tenant.inflight.fetch_add(1, Ordering::AcqRel);
        let checked = within_ring_limits(&problems, checked);
        let seqs = match &checked {
            Ok(()) => {
                let mut w = ring.writer.lock().unwrap_or_else(|e| e.into_inner());
                let seqs = write_request(&mut w, &problems);
                w.publish();
                seqs
            }
            Err(_) => 0..0,
        };
        super::phases::mark(super::phases::Step::Published);
        let published = Instant::now();
        tenant.counters().submitted += 1;
        let (t, resolver) = ticket();
        let FastPath { submitted, deadline, cost_ns, ref_tiles } = self;
        let pending = Pending { seq, ops, resolver, submitted, deadline, cost_ns, ref_tiles, users: false };
        let f = Flight { tenant: tenant.clone(), pending, seqs, published };
        match checked {
            Ok(()) => {
                if let Some(tx) = ring.flights.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let _ = tx.send(FlightCell::with_waiter(f, Arc::downgrade(inner), ring.mem.clone()));
                }
            }
            Err(e) => finish_flights(inner, [f], Some(e)),
        }
        ring.fast_writers.fetch_sub(1, Ordering::AcqRel);
        super::phases::mark(super::phases::Step::HandedOver);
        Ok(t)
    }
}

/// A lone request's problems, planned for latency, and the backend's check of them.
type Planned = (Vec<ProblemDesc>, std::result::Result<(), String>);

/// The plan of the last lone op a thread submitted in persistent mode: the kind the chooser
/// picked and the op's fair-share cost. Both depend only on what the op is (shape, scalars,
/// flags, tile override: its descriptor without addresses), the cost model and the chooser, so
/// an op alike in those, on the same runtime, while neither changed (`Inner::plans`), gets the
/// same: no cost-model or chooser lock, no choice on its way to the ring.
struct PlanMemo {
    runtime: u64,
    generation: u64,
    /// The op's descriptor without its addresses and tenant.
    shape: ProblemDesc,
    over: Option<crate::round::Plan>,
    kind: TileKind,
    cost_ns: f64,
    /// The last planned descriptor of this shape that passed the backend's check
    /// (`round::check_alone`, a function of the descriptor and the device pool only): the same
    /// op again, addresses and all, needs no second check.
    checked: Option<ProblemDesc>,
}

thread_local! {
    static LAST_PLAN: std::cell::RefCell<Option<PlanMemo>> = const { std::cell::RefCell::new(None) };
}

impl PlanMemo {
    fn shape(o: &CheckedOp) -> ProblemDesc {
        let mut d = o.desc;
        (d.a, d.b, d.c, d.bias, d.tenant) = (0, 0, 0, 0, 0);
        d
    }

    /// `ops`' plan, cost and reference tiles if it is one op alike this thread's last.
    fn recall(inner: &Inner, generation: u64, ops: &[Checked<CheckedOp>]) -> Option<(f64, usize, Option<Planned>)> {
        let [o] = ops else { return None };
        let o = o.get();
        let (d, cost_ns, seen) = LAST_PLAN.with_borrow(|m| {
            let m = m.as_ref()?;
            let alike = m.runtime == inner.id
                && m.generation == generation
                && m.over == o.plan
                && bytemuck::bytes_of(&m.shape) == bytemuck::bytes_of(&Self::shape(o));
            let d = alike.then(|| crate::round::Round::planned(o.desc, m.kind, 1))?;
            let seen = m.checked.is_some_and(|c| bytemuck::bytes_of(&c) == bytemuck::bytes_of(&d));
            Some((d, m.cost_ns, seen))
        })?;
        let checked = if seen {
            Ok(())
        } else {
            let checked = crate::round::check_alone(&d, inner.device.pool()).map_err(|e| e.to_string());
            if checked.is_ok() {
                LAST_PLAN.with_borrow_mut(|m| m.as_mut().map(|m| m.checked = Some(d)));
            }
            checked
        };
        super::phases::mark(super::phases::Step::Planned);
        Some((cost_ns, o.ref_tiles, Some((vec![d], checked))))
    }

    /// Remembers `o`'s plan (`kind`, if the descriptor names one) and cost for this thread, as
    /// of `generation` (read before they were computed: a change meanwhile makes it stale).
    fn remember(inner: &Inner, generation: u64, o: &CheckedOp, kind: Option<TileKind>, cost_ns: f64) {
        let Some(kind) = kind else { return };
        let memo = PlanMemo {
            runtime: inner.id,
            generation,
            shape: Self::shape(o),
            over: o.plan,
            kind,
            cost_ns,
            checked: None,
        };
        LAST_PLAN.with_borrow_mut(|m| *m = Some(memo));
    }
}

/// Plans `ops` as a lone request (the fast path's plan) with `cost`, the locked cost model.
fn plan_alone(inner: &Inner, cost: &CostModel, ops: &[Checked<CheckedOp>]) -> Planned {
    let chooser = inner.chooser.read().unwrap_or_else(|e| e.into_inner());
    super::phases::mark(super::phases::Step::PlanLocks);
    if let [o] = ops {
        // One problem (the usual request): its plan and the backend's check, without a round
        // (the ring lists no tiles; the persistent chooser splits nothing).
        let o = o.get();
        let plan = chooser.choose_alone(&o.desc, o.plan, cost, inner.device.slots());
        super::phases::mark(super::phases::Step::Chosen);
        let d = crate::round::Round::planned(o.desc, plan.kind, 1);
        let checked = crate::round::check_alone(&d, inner.device.pool()).map_err(|e| e.to_string());
        (vec![d], checked)
    } else {
        let (descs, overrides): (Vec<_>, Vec<_>) = ops.iter().map(|o| (o.get().desc, o.get().plan)).unzip();
        let round = chooser.build(&descs, &overrides, cost, inner.device.slots());
        let checked = crate::round::check(&round, inner.device.pool()).map_err(|e| e.to_string());
        (round.problems, checked)
    }
}

/// Resolves every queued request of `tenant` (or of all tenants) with `err()`.
pub(crate) fn cancel_tenant(inner: &Inner, tenant: u32, err: impl Fn() -> Error) {
    let drained: Vec<(Arc<TenantState>, Pending)> = {
        let mut s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
        let q = s.queues.remove(&tenant);
        s.queued -= q.as_ref().map_or(0, |q| q.pending.len());
        q.map(|q| q.pending.into_iter().map(|p| (q.tenant.clone(), p)).collect()).unwrap_or_default()
    };
    finish_cancelled(inner, drained, err);
}

fn finish_cancelled(inner: &Inner, reqs: Vec<(Arc<TenantState>, Pending)>, err: impl Fn() -> Error) {
    for (t, p) in reqs {
        p.release();
        t.counters().failed += 1;
        t.inflight.fetch_sub(1, Ordering::AcqRel);
        inner.outstanding.fetch_sub(p.ops.len() as u64, Ordering::AcqRel);
        p.resolver.resolve(Err(err()));
    }
    inner.notify_progress();
}

/// Picks the next tenant to take a request from, by policy, among `candidates`.
fn pick(policy: Policy, s: &SchedState, exhausted: &HashSet<u32>) -> Option<u32> {
    let heads = s
        .queues
        .iter()
        .filter(|(id, q)| !exhausted.contains(id) && !q.pending.is_empty())
        .map(|(id, q)| (*id, q, q.pending.front().expect("non-empty")));
    match policy {
        Policy::Fifo => heads.min_by_key(|(_, _, p)| p.seq).map(|h| h.0),
        Policy::Edf => heads.min_by_key(|(_, _, p)| (p.deadline, p.seq)).map(|h| h.0),
        Policy::FairShare => heads.min_by(|a, b| a.1.vt.total_cmp(&b.1.vt).then(a.2.seq.cmp(&b.2.seq))).map(|h| h.0),
    }
}

/// Takes requests for one round under the policy, caps, hazards and the time budget.
fn assemble(inner: &Inner, s: &mut SchedState) -> Option<Batch> {
    let cfg = &inner.cfg;
    let slots = inner.device.slots().max(1) as f64;
    let cost = inner.cost.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let tightest = s
        .queues
        .values()
        .filter(|q| !q.pending.is_empty())
        .filter_map(|q| q.tenant.spec.slo)
        .min()
        .map_or(cfg.max_round, |slo| (slo / 3).min(cfg.max_round));
    let budget_ns = (tightest.as_nanos() as f64 - cost.round_overhead_ns).max(20_000.0);

    let mut taken: Vec<(Arc<TenantState>, Pending)> = Vec::new();
    let mut exhausted = HashSet::new();
    let mut per_tenant: BTreeMap<u32, (usize, HashSet<(u64, bool)>)> = BTreeMap::new();
    let (mut tiles, mut sum_ns) = (0usize, 0.0f64);
    let hazards = inner.persistent.as_ref().map(|r| r.hazards.lock().unwrap_or_else(|e| e.into_inner()));
    while let Some(id) = pick(cfg.policy, s, &exhausted) {
        let q = s.queues.get_mut(&id).expect("picked");
        let head = q.pending.front().expect("non-empty");
        let cap = q.tenant.spec.round_cap.or(cfg.tenant_round_cap);
        let entry = per_tenant.entry(id).or_default();
        if let Some(cap) = cap
            && entry.0 > 0
            && entry.0 + head.ref_tiles > cap
        {
            exhausted.insert(id);
            continue;
        }
        let conflict = head.touches().any(|(b, w)| {
            let (r, wr) = if hazards.is_some() { b.on_device() } else { (0, 0) };
            let id = b.id();
            entry.1.contains(&(id, true)) || (w && entry.1.contains(&(id, false))) || wr > 0 || (w && r > 0)
        });
        if conflict {
            exhausted.insert(id);
            continue;
        }
        if !taken.is_empty() {
            let predicted = (sum_ns + head.cost_ns) / slots;
            if tiles + head.ref_tiles > cfg.max_round_tiles || predicted > budget_ns {
                break;
            }
        }
        let p = q.pending.pop_front().expect("non-empty");
        s.queued -= 1;
        if let Some(h) = &hazards {
            book(h, &p.ops, true);
        }
        q.vt += p.cost_ns / q.tenant.spec.weight;
        entry.0 += p.ref_tiles;
        entry.1.extend(p.touches().map(|(b, w)| (b.id(), w)));
        tiles += p.ref_tiles;
        sum_ns += p.cost_ns;
        // A tenant at its cap stops here; past-the-cap singles run alone.
        if cap.is_some_and(|c| entry.0 >= c) {
            exhausted.insert(id);
        }
        taken.push((q.tenant.clone(), p));
    }
    if taken.is_empty() {
        return None;
    }
    let (mut descs, mut overrides) = (Vec::new(), Vec::new());
    for (_, p) in &taken {
        for o in &p.ops {
            descs.push(o.get().desc);
            overrides.push(o.get().plan);
        }
    }
    let chooser = inner.chooser.read().unwrap_or_else(|e| e.into_inner());
    let round = chooser.build(&descs, &overrides, &cost, inner.device.slots());
    let predicted = cost.predict(&round, chooser.round_slots(&round, inner.device.slots()));
    s.rounds += 1;
    Some(Batch { index: s.rounds, round, reqs: taken, predicted })
}

/// Starts the scheduler and executor threads, connected by a rendezvous channel.
pub(crate) fn spawn(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(0);
    if let Some(ring) = &inner.persistent {
        let (ftx, frx) = std::sync::mpsc::channel();
        *ring.flights.lock().unwrap_or_else(|e| e.into_inner()) = Some(ftx.clone());
        let (a, b) = (inner.clone(), inner.clone());
        let thread = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| Error::Config(format!("spawning {name}: {e}")))
        };
        return Ok(vec![
            spawn_scheduler(inner.clone(), tx)?,
            thread("tilemux-ring-writer", Box::new(move || ring_writer(&a, rx, ftx)))?,
            thread("tilemux-ring-completer", Box::new(move || ring_completer(&b, frx)))?,
        ]);
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let completer = inner.clone();
    Ok(vec![
        spawn_scheduler(inner.clone(), tx)?,
        spawn_executor(inner.clone(), rx, done_tx)?,
        std::thread::Builder::new()
            .name("tilemux-completer".into())
            .spawn(move || {
                // Spin briefly between rounds (a waiter's ticket is on the critical path), then
                // block.
                while let Some(c) = recv_spinning(&done_rx) {
                    complete(&completer, c);
                }
            })
            .map_err(|e| Error::Config(format!("spawning the completer: {e}")))?,
    ])
}

/// Receives from `rx`, spinning up to [`spin`] before blocking; `None` once disconnected.
fn recv_spinning<T>(rx: &Receiver<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if t.elapsed() < spin() => std::hint::spin_loop(),
            Err(std::sync::mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// A round that ran, on its way to the completer thread.
struct Completed {
    batch: Batch,
    res: Result<crate::device::RoundReport>,
    start: Instant,
    executed: Duration,
}

/// The scheduler thread.
fn spawn_scheduler(inner: Arc<Inner>, tx: SyncSender<Batch>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tilemux-scheduler".into())
        .spawn(move || {
            let margin = Duration::from_micros(200);
            let mut active = Instant::now();
            loop {
                let batch = {
                    let mut s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if !s.open {
                            s.queued = 0;
                            let all: Vec<_> = std::mem::take(&mut s.queues)
                                .into_values()
                                .flat_map(|q| {
                                    let t = q.tenant.clone();
                                    q.pending.into_iter().map(move |p| (t.clone(), p))
                                })
                                .collect();
                            drop(s);
                            finish_cancelled(&inner, all, || Error::Closed);
                            return;
                        }
                        let busy = Duration::from_nanos(inner.busy_until.load(Ordering::Acquire));
                        let wait = busy.saturating_sub(inner.epoch.elapsed() + margin);
                        if !s.paused && s.has_work() && wait.is_zero() {
                            break;
                        }
                        // Spin (lock released) while work is likely soon: right after a round, or
                        // when the executor frees up within the spin window. Then sleep.
                        if !s.paused && (active.elapsed() < spin() || (s.has_work() && wait < spin())) {
                            let seen = inner.submitted.load(Ordering::Acquire);
                            drop(s);
                            let t = Instant::now();
                            while t.elapsed() < spin().min(wait.max(Duration::from_micros(5)))
                                && inner.submitted.load(Ordering::Acquire) == seen
                                && inner.busy_until.load(Ordering::Acquire) != 0
                            {
                                std::hint::spin_loop();
                            }
                            while t.elapsed() < spin()
                                && inner.submitted.load(Ordering::Acquire) == seen
                                && wait.is_zero()
                            {
                                std::hint::spin_loop();
                            }
                            s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
                            if inner.submitted.load(Ordering::Acquire) != seen {
                                active = Instant::now();
                            }
                            continue;
                        }
                        let timeout = if wait.is_zero() { Duration::from_millis(50) } else { wait };
                        inner.sched_sleeping.store(true, Ordering::Release);
                        s = inner.wake.wait_timeout(s, timeout).unwrap_or_else(|e| e.into_inner()).0;
                        inner.sched_sleeping.store(false, Ordering::Release);
                        active = Instant::now();
                    }
                    let b = assemble(&inner, &mut s);
                    if b.is_none() {
                        // Every queue head waits on work still on the device (persistent mode):
                        // sleep until a completion wakes us.
                        inner.sched_sleeping.store(true, Ordering::Release);
                        inner.sched_on_hazards.store(true, Ordering::SeqCst);
                        drop(inner.wake.wait_timeout(s, Duration::from_millis(1)).unwrap_or_else(|e| e.into_inner()));
                        inner.sched_on_hazards.store(false, Ordering::Release);
                        inner.sched_sleeping.store(false, Ordering::Release);
                    }
                    b
                };
                active = Instant::now();
                if let Some(b) = batch {
                    if inner.persistent.is_none() {
                        let busy_until = inner.epoch.elapsed() + b.predicted;
                        inner.busy_until.store(busy_until.as_nanos() as u64, Ordering::Release);
                    }
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::Config(format!("spawning the scheduler: {e}")))
}

/// The executor thread: runs rounds in order and resolves their tickets.
fn spawn_executor(
    inner: Arc<Inner>,
    rx: Receiver<Batch>,
    done: std::sync::mpsc::Sender<Completed>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tilemux-executor".into())
        .spawn(move || {
            loop {
                // Spin briefly for the next round (it is usually assembled already), then block.
                match recv_spinning(&rx) {
                    Some(b) => {
                        if done.send(run_batch(&inner, b)).is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        })
        .map_err(|e| Error::Config(format!("spawning the executor: {e}")))
}

/// Runs one round on the device (the executor's only job: the completer does the rest, so the
/// next round starts at once).
fn run_batch(inner: &Inner, batch: Batch) -> Completed {
    let start = Instant::now();
    let span = tracing::debug_span!(
        "round",
        index = batch.index,
        problems = batch.round.problems.len(),
        tiles = batch.round.tiles.len()
    );
    let res = span.in_scope(|| inner.device.run(&batch.round));
    let executed = start.elapsed();
    inner.busy_until.store(0, Ordering::Release);
    // The round may have ended before its prediction: a scheduler waiting for that must not
    // leave the device idle until its timer fires.
    if inner.sched_sleeping.load(Ordering::Acquire) {
        inner.wake.notify_all();
    }
    Completed { batch, res, start, executed }
}

/// Turns a finished round into resolved tickets, statistics and a log entry.
fn complete(inner: &Inner, c: Completed) {
    let Completed { batch: b, res, start, executed } = c;
    let mut info = RoundInfo {
        index: b.index,
        problems: b.round.problems.len(),
        tiles: b.round.tiles.len(),
        tenants: Vec::new(),
        requests: b.reqs.iter().map(|(_, p)| p.seq).collect(),
        predicted: b.predicted,
        measured: Duration::ZERO,
        total: executed,
    };
    match &res {
        Ok(report) => {
            info.measured = report.kernel;
            inner.cost.lock().unwrap_or_else(|e| e.into_inner()).observe(b.predicted, report.kernel);
            inner.plans.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                index = b.index,
                predicted_us = b.predicted.as_micros() as u64,
                measured_us = report.kernel.as_micros() as u64,
                "round done"
            );
        }
        Err(e) => tracing::warn!(index = b.index, error = %e, "round failed"),
    }
    let mut per: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (t, p) in b.reqs {
        let e = per.entry(t.id).or_default();
        e.0 += p.ref_tiles;
        e.1 += 1;
        let err = res.as_ref().err().map(|e| e.to_string());
        resolve(finish(inner, &t, p, err, b.index, start, executed));
    }
    info.tenants = per.into_iter().map(|(id, (tiles, reqs))| (id, tiles, reqs)).collect();
    {
        let mut log = inner.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == 4096 {
            log.pop_front();
        }
        log.push_back(info);
    }
    inner.notify_progress();
}

/// A request whose problems are in the ring.
pub(crate) struct Flight {
    tenant: Arc<TenantState>,
    pending: Pending,
    /// Ring sequence numbers of its problems (written one after another, under one writer lock).
    seqs: std::ops::Range<u64>,
    published: Instant,
}

/// A flight on its way to being finished, by the completer or, on the fast path, by the
/// request's own waiter while it spins (whoever takes it first; the completer leaves it to a
/// waiter that says it is spinning).
#[repr(C)]
pub(crate) struct FlightCell {
    /// Next to the `Arc`'s counts: the lines a waiter that finishes the request writes.
    flight: std::sync::Mutex<Option<Flight>>,
    /// Keeps what the completer reads off the lines above: each read it makes of them there
    /// would cost the waiter a cross-core invalidation on the result's path.
    _line: [u8; 64],
    /// Read by the completer on its passes (the waiter polls its own copy).
    seqs: std::ops::Range<u64>,
    /// The request's waiter is spinning on it and will finish it (see [`FlightCell::with_waiter`]).
    spinning: std::sync::atomic::AtomicBool,
}

/// How long the completer leaves a done flight to its spinning waiter before taking it anyway
/// (a waiter preempted, or gone, must not hold the request's resources for long).
const WAITER_GRACE: Duration = Duration::from_millis(1);
/// How often the completer looks at a flight whose waiter spins on it (only to catch a waiter
/// that stalls: each look reads lines of the cell the waiter writes when it finishes).
const WAITER_LOOK: Duration = Duration::from_micros(100);

impl FlightCell {
    fn holding(f: Flight) -> FlightCell {
        FlightCell {
            seqs: f.seqs.clone(),
            flight: std::sync::Mutex::new(Some(f)),
            _line: [0; 64],
            spinning: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn new(f: Flight) -> Arc<FlightCell> {
        Arc::new(FlightCell::holding(f))
    }

    /// A cell whose ticket's waiter finishes it once its problems are done: the completion
    /// words are in host memory, so the waiting thread sees them as soon as the completer
    /// would, and the request's result does not wait for a second thread. The waiter's first
    /// spin marks the cell `spinning` (the completer then leaves it alone, up to
    /// [`WAITER_GRACE`] after it is done, or until a look finds that the waiter took it), and a
    /// waiter that stops spinning without taking it unmarks it. Meanwhile each spin
    /// reads only the request's completion words, through copies the hook owns: nothing the
    /// completer touches is written while both poll (an `Arc` count bumped per spin would bounce
    /// the cell's line between the two threads).
    fn with_waiter(
        f: Flight,
        inner: std::sync::Weak<Inner>,
        mem: Arc<crate::persistent::RingMemory>,
    ) -> Arc<FlightCell> {
        Arc::new_cyclic(|cell: &std::sync::Weak<FlightCell>| {
            let (cell, seqs) = (cell.clone(), f.seqs.clone());
            // Its first problem's slot, once: the spins below poll without dividing.
            let first = (seqs.start % u64::from(mem.slots())) as u32;
            // The cell and the runtime, strong, from the first spin on: taking them at the result
            // would put two reference-count changes each on its path. (A cycle through the
            // ticket until the flight is taken, by its waiter or the completer; after that the
            // ticket keeps the runtime's state alive until it is dropped, as a buffer does.)
            let held: std::sync::OnceLock<Option<(Arc<FlightCell>, Arc<Inner>)>> = std::sync::OnceLock::new();
            f.pending.resolver.set_hook(Box::new(move |spinning: bool| {
                if !spinning {
                    if let Some(c) = cell.upgrade() {
                        c.spinning.store(false, Ordering::Release);
                    }
                    // The completer finishes it now: it may be resting.
                    if let Some(ring) = inner.upgrade().as_ref().and_then(|i| i.persistent.as_ref()) {
                        ring.wake_completer();
                    }
                    return None;
                }
                let (c, inner) = held
                    .get_or_init(|| {
                        let c = cell.upgrade()?;
                        c.spinning.store(true, Ordering::Release);
                        Some((c, inner.upgrade()?))
                    })
                    .as_ref()?;
                let (mut i, slots) = (first, mem.slots());
                for s in seqs.clone() {
                    if !mem.is_done_in(i, s) {
                        return None;
                    }
                    i = if i + 1 == slots { 0 } else { i + 1 };
                }
                super::phases::mark(super::phases::Step::SeenDone);
                // A contended lock means the completer is taking it.
                let f = c.flight.try_lock().ok().and_then(|mut f| f.take());
                super::phases::mark(super::phases::Step::Taken);
                // The cell stays marked spinning: the completer reads that line on every pass, so
                // a store here would wait for it to come back from that core, on the result's
                // path. The completer's next look finds the flight gone and drops the cell.
                let done = settle_own(inner, f?);
                super::phases::mark(super::phases::Step::Settled);
                Some(done)
            }));
            FlightCell::holding(f)
        })
    }

    fn is_done(&self, ring: &crate::persistent::RingMemory) -> bool {
        self.seqs.clone().all(|s| ring.is_done(s))
    }

    /// The flight, unless someone took it.
    fn take(&self) -> Option<Flight> {
        self.flight.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Finishes flights whose problems are done and tells whoever waits on progress (admission,
/// shutdown, a scheduler waiting on hazards).
fn settle(inner: &Inner, done: impl AsRef<[Flight]> + IntoIterator<Item = Flight>) {
    finish_flights(inner, done, None);
    notify_finished(inner);
}

/// A fast-path request finished by its own waiter: as [`settle`], its outcome handed back for
/// the waiter to return rather than resolved into the ticket (which the waiter owns: no one
/// else can look at it), which saves the ticket's lock on both sides.
fn settle_own(inner: &Inner, f: Flight) -> Result<Done> {
    unbook(inner, std::slice::from_ref(&f));
    let (resolver, outcome) = finish(inner, &f.tenant, f.pending, None, 0, f.published, f.published.elapsed());
    let done = resolver.hand_over(outcome);
    super::phases::mark(super::phases::Step::Resolved);
    notify_finished(inner);
    done
}

/// Tells whoever waits on progress that requests finished (admission, shutdown, a scheduler
/// waiting on hazards).
fn notify_finished(inner: &Inner) {
    inner.notify_progress();
    // Only a scheduler held up by hazards waits for completions; one idle for lack of work
    // (the usual case on the fast path) is left asleep: waking it costs a system call per
    // request on the waiter's critical path. (`notify_progress`'s fence orders the in-flight
    // map's release before this load.)
    if inner.sched_on_hazards.load(Ordering::SeqCst) {
        inner.wake.notify_all();
    }
}

/// Writes a batch's problems into the ring (waiting for their slots) and publishes them; the
/// device starts at once. Returns the requests written, for the completer, and those that failed
/// the backend's check with why, for [`finish_failed`] once the writer lock is released.
fn write_batch(inner: &Inner, w: &mut crate::persistent::RingWriter, b: Batch) -> (Vec<Flight>, Vec<(Flight, String)>) {
    // The backend's own gate, as in round mode: every access inside the pool.
    let checked = crate::round::check(&b.round, inner.device.pool()).map_err(|e| e.to_string());
    write_problems(w, &b.round.problems, b.reqs, checked)
}

/// `checked` (the backend's check of `problems`), and the ring's limit on one problem's tiles.
fn within_ring_limits(
    problems: &[ProblemDesc],
    checked: std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let max = crate::abi::ring::MAX_PROBLEM_TILES;
    checked.and_then(|()| match problems.iter().map(|d| d.tile_count()).find(|&t| t > max) {
        Some(t) => Err(format!("a problem of {t} tiles: persistent mode takes at most {max} per problem")),
        None => Ok(()),
    })
}

/// Writes one request's `problems` into the ring, one after another, each once its slot is free
/// (publishing what is written while it waits, so the device can drain). Returns their sequence
/// numbers; the caller publishes them.
fn write_request(w: &mut crate::persistent::RingWriter, problems: &[ProblemDesc]) -> std::ops::Range<u64> {
    let mut seqs = w.written()..w.written();
    for d in problems {
        let mut spins = 0u32;
        while !w.has_room(d) {
            w.publish();
            spins += 1;
            if spins > 1000 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        super::phases::mark(super::phases::Step::SlotFree);
        let q = w.write(*d);
        debug_assert_eq!(q, seqs.end, "a request's problems follow each other");
        seqs.end = q + 1;
    }
    seqs
}

/// Writes `problems` (the requests' problems in order, `checked` by the backend's gate) into
/// the ring, waiting for their slots, and publishes them. Returns the requests written and those
/// that failed, with why.
fn write_problems(
    w: &mut crate::persistent::RingWriter,
    problems: &[ProblemDesc],
    reqs: impl IntoIterator<Item = (Arc<TenantState>, Pending)>,
    checked: std::result::Result<(), String>,
) -> (Vec<Flight>, Vec<(Flight, String)>) {
    let reqs = reqs.into_iter();
    let checked = within_ring_limits(problems, checked);
    let now = Instant::now();
    let mut out = Vec::with_capacity(reqs.size_hint().0);
    let mut failed = Vec::new();
    let mut next = 0;
    for (t, p) in reqs {
        let n = p.ops.len();
        if let Err(e) = &checked {
            failed.push((Flight { tenant: t, pending: p, seqs: 0..0, published: now }, e.clone()));
            continue;
        }
        let seqs = write_request(w, &problems[next..next + n]);
        next += n;
        out.push(Flight { tenant: t, pending: p, seqs, published: now });
    }
    w.publish();
    // Waiting for slots may take a while: executed time counts from the publish.
    let now = Instant::now();
    out.iter_mut().for_each(|f| f.published = now);
    (out, failed)
}

/// Resolves requests that failed the backend's check (and frees their buffers).
fn finish_failed(inner: &Inner, failed: Vec<(Flight, String)>) {
    for (f, e) in failed {
        finish_flights(inner, [f], Some(e));
    }
}

/// Persistent mode's executor: writes each scheduled batch into the ring. On shutdown it waits
/// for everything published to finish, then stops and joins the resident kernel.
fn ring_writer(inner: &Inner, rx: Receiver<Batch>, flights: std::sync::mpsc::Sender<Arc<FlightCell>>) {
    let ring = inner.persistent.as_ref().expect("persistent mode");
    while let Some(b) = recv_spinning(&rx) {
        let (out, failed) = write_batch(inner, &mut ring.writer.lock().unwrap_or_else(|e| e.into_inner()), b);
        finish_failed(inner, failed);
        if out.into_iter().any(|f| flights.send(FlightCell::new(f)).is_err()) {
            break;
        }
        // No waiter spins on these (they are not the fast path's).
        ring.wake_completer();
    }
    // The scheduler is gone, so the runtime is closed and no new fast path starts; those that
    // started finish handing their requests to the completer. The completer stops once what is
    // in flight resolves.
    drop(flights);
    while ring.fast_writers.load(Ordering::Acquire) > 0 {
        std::thread::yield_now();
    }
    ring.flights.lock().unwrap_or_else(|e| e.into_inner()).take();
    let written = ring.writer.lock().unwrap_or_else(|e| e.into_inner()).written();
    // Clean stop: everything published completes, then the kernel is told to stop.
    inner.wait_until(|| (0..written).rev().take(ring.mem.slots() as usize).all(|s| ring.mem.is_done(s)));
    ring.mem.request_stop();
    if let Err(err) = ring.engine.join() {
        tracing::warn!(error = %err, "the resident kernel reported an error");
    }
}

/// Persistent mode's completer: polls the ring's completion words for the requests in flight
/// (spinning briefly after activity, then sleeping in short steps), resolves finished requests,
/// and keeps the heartbeat going so the resident kernel knows the host is alive.
fn ring_completer(inner: &Inner, rx: Receiver<Arc<FlightCell>>) {
    let shared = inner.persistent.as_ref().expect("persistent mode");
    let _ = shared.completer.set(std::thread::current());
    // Its own handle: polling through the `Ring` would read a line the submitting threads write.
    let ring = shared.mem.clone();
    // Each with when the completer first found it done while its waiter spun on it, and when it
    // last looked at it while its waiter spun.
    let mut flights: VecDeque<(Arc<FlightCell>, Option<Instant>, Option<Instant>)> = VecDeque::new();
    let mut active = Instant::now();
    let mut connected = true;
    let (mut beats, mut last_beat) = (0u64, Instant::now());
    loop {
        if last_beat.elapsed() > Duration::from_millis(20) {
            beats += 1;
            ring.beat(beats);
            last_beat = Instant::now();
        }
        loop {
            match rx.try_recv() {
                Ok(v) => {
                    flights.push_back((v, None, None));
                    active = Instant::now();
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    connected = false;
                    break;
                }
            }
        }
        let (mut done, mut seen_done) = (Vec::new(), false);
        // Whether a waiter spins on every flight (each then finishes its own).
        let mut all_waited = true;
        let mut i = 0;
        while i < flights.len() {
            let (cell, seen, looked) = &mut flights[i];
            let spinning = cell.spinning.load(Ordering::Acquire);
            all_waited &= spinning;
            if spinning {
                // A spinning waiter finishes its own request: looked at now and then, and left
                // to it for a grace period once done.
                if looked.is_some_and(|t| t.elapsed() < WAITER_LOOK) {
                    i += 1;
                    continue;
                }
                *looked = Some(Instant::now());
                if !cell.is_done(&ring) {
                    i += 1;
                    continue;
                }
                seen_done = true;
                if cell.flight.try_lock().is_ok_and(|f| f.is_none()) {
                    // Its waiter finished it.
                    flights.swap_remove_back(i);
                    continue;
                }
                if seen.get_or_insert_with(Instant::now).elapsed() < WAITER_GRACE {
                    i += 1;
                    continue;
                }
            } else if cell.is_done(&ring) {
                seen_done = true;
            } else {
                i += 1;
                continue;
            }
            // Unless its waiter took it first.
            done.extend(flights.swap_remove_back(i).expect("in range").0.take());
        }
        if seen_done {
            active = Instant::now();
        }
        if !done.is_empty() {
            settle(inner, done);
        }
        if flights.is_empty() {
            if !connected {
                return;
            }
            // Idle: spin for the next flight (it is on a waiter's critical path), then block,
            // waking every 20 ms to keep the heartbeat.
            if active.elapsed() < spin() {
                std::hint::spin_loop();
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(v) => {
                    flights.push_back((v, None, None));
                    active = Instant::now();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => connected = false,
            }
        } else if all_waited {
            // Every request in flight has a waiter spinning on it, which finishes it: rest
            // rather than spin beside them (a spinning completer made each fast-path `submit()`
            // 0.3–0.5 µs slower on the H100 VM's host), until the next look at a waiter's cell is
            // due. Whoever hands over a request no waiter spins on wakes it
            // ([`Ring::wake_completer`]); the flag is raised before the last look at the
            // channel, so such a request is either seen now or wakes the park. (20 µs rests, as
            // first measured, cost the resting completer 5–8% of a core in wake-ups.)
            shared.completer_rests.store(true, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            match rx.try_recv() {
                Ok(v) => flights.push_back((v, None, None)),
                Err(_) => std::thread::park_timeout(WAITER_LOOK),
            }
            shared.completer_rests.store(false, Ordering::Relaxed);
        } else if active.elapsed() < spin().max(Duration::from_micros(20)) {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Finishes persistent-mode requests (one hold of the hazard lock for all of them) and frees
/// their buffers for later requests of their tenants.
fn finish_flights(inner: &Inner, done: impl AsRef<[Flight]> + IntoIterator<Item = Flight>, err: Option<String>) {
    unbook(inner, done.as_ref());
    for f in done {
        resolve(finish(inner, &f.tenant, f.pending, err.clone(), 0, f.published, f.published.elapsed()));
    }
}

/// Releases the hazards of `done`, requests no longer on the device (one hold of the lock).
fn unbook(inner: &Inner, done: &[Flight]) {
    if let Some(ring) = &inner.persistent {
        let hazards = ring.hazards.lock().unwrap_or_else(|e| e.into_inner());
        super::phases::mark(super::phases::Step::HazardsLocked);
        for f in done {
            book(&hazards, &f.pending.ops, false);
        }
    }
    super::phases::mark(super::phases::Step::Unbooked);
}

/// Resolves a finished request's ticket with its outcome (from [`finish`]).
fn resolve((resolver, outcome): (Resolver<Done>, Result<Done>)) {
    resolver.resolve(outcome);
    super::phases::mark(super::phases::Step::Resolved);
}

/// Finishes the bookkeeping of one request that ran (`err`: why its round failed): its buffers'
/// users, its tenant's statistics, admission. Returns its resolver with the outcome to resolve
/// it with.
fn finish(
    inner: &Inner,
    t: &TenantState,
    p: Pending,
    err: Option<String>,
    round: u64,
    start: Instant,
    executed: Duration,
) -> (Resolver<Done>, Result<Done>) {
    p.release();
    super::phases::mark(super::phases::Step::UsersReleased);
    let queued = start.saturating_duration_since(p.submitted);
    {
        let mut c = t.counters();
        if err.is_none() {
            c.completed += 1;
            c.ops += p.ops.len() as u64;
            c.tiles += p.ref_tiles as u64;
            c.tile_time_ns += p.cost_ns;
            c.record(queued, executed);
        } else {
            c.failed += 1;
        }
    }
    super::phases::mark(super::phases::Step::Counted);
    t.inflight.fetch_sub(1, Ordering::AcqRel);
    inner.outstanding.fetch_sub(p.ops.len() as u64, Ordering::AcqRel);
    let outcome = match err {
        None => Ok(Done { round, queued, executed }),
        Some(e) => Err(Error::RoundFailed(e)),
    };
    (p.resolver, outcome)
}

/// Fits the cost model to `device`: per tile kind, one round of identical tiles (one per CTA
/// slot) at two depths, on random data in a scratch part of the pool.
pub(crate) fn calibrate(device: &dyn Device, cost: &mut CostModel) -> Result<()> {
    let pool = device.pool();
    let mut arena = Arena::new(pool.start, pool.end - pool.start);
    let slots = device.slots();
    let kmax = 4096u32;
    let mut rng = rand::rng();
    let data: Vec<f32> = (0..(128 * kmax) as usize).map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0)).collect();
    let mut scratch = |bytes: u64| {
        arena.alloc(bytes).ok_or(Error::OutOfDeviceMemory { requested: bytes, available: arena.largest_free() })
    };
    let a = scratch((data.len() * 4) as u64)?;
    let b = scratch((data.len() * 4) as u64)?;
    // One output tile per slot, at most 256 × 128 each.
    let tile_bytes = 256 * 128 * 4;
    let c = scratch(slots.max(device.wide_slots().unwrap_or(0)) as u64 * tile_bytes)?;
    device.write(a, &data)?;
    device.write(b, &data)?;
    cost.calibrate(slots, device.wide_slots(), |kind: TileKind, k: u32, n: usize| {
        let s = kind.shape();
        let mut round = Round::default();
        for i in 0..n {
            let (pm, pn) = if kind.is_gemv() { (s.bm, 1) } else { (s.bm, s.bn) };
            let p = problem(
                (a, b, c + (i as u64) * tile_bytes, 0),
                (pm, pn, k),
                (k, pn, pn),
                (1.0, 0.0),
                0,
                Activation::None,
                BiasMode::None,
            );
            round.push(p, kind, 1);
        }
        let mut best = Duration::MAX;
        for _ in 0..5 {
            best = best.min(device.run(&round)?.kernel);
        }
        Ok(best)
    })
}
