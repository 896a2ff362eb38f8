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
use super::{Done, Inner, Policy, Request, RoundInfo, TenantState};
use crate::abi::{Activation, BiasMode, TileKind};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::Arena;
use crate::round::{CostModel, Round, problem};
use crate::validate::{Checked, CheckedOp, check_request};

/// How long the scheduler, the executor and ticket waiters spin before they block: short enough
/// to cost nothing when idle, long enough to skip a sleeping thread's wake-up (tens of µs) on
/// the critical path of a request. Zero on machines with fewer than 8 cores, where spinning
/// threads would take the cores the callers need.
pub(crate) fn spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
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
}

impl Pending {
    /// Buffers the request touches: `(id, written)`.
    fn touches(&self) -> impl Iterator<Item = (u64, bool)> + '_ {
        self.ops.iter().flat_map(|o| {
            let o = o.get();
            o.reads.iter().map(|b| (b.id(), false)).chain(std::iter::once((o.write.id(), true)))
        })
    }

    fn release(&self) {
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
    seq: u64,
    rounds: u64,
}

impl SchedState {
    pub(crate) fn new(paused: bool) -> SchedState {
        SchedState { open: true, paused, queues: BTreeMap::new(), seq: 0, rounds: 0 }
    }

    fn has_work(&self) -> bool {
        self.queues.values().any(|q| !q.pending.is_empty())
    }
}

/// A round handed to the executor with the requests it serves.
struct Batch {
    index: u64,
    round: Round,
    reqs: Vec<(Arc<TenantState>, Pending)>,
    predicted: Duration,
}

/// Validates and queues a request (see [`super::Runtime::submit`]).
pub(crate) fn submit(inner: &Arc<Inner>, tenant: &Arc<TenantState>, req: Request) -> Result<Ticket<Done>> {
    let reject = |e: Error| {
        tenant.counters().rejected += 1;
        Err(e)
    };
    if let Err(e) = inner.check_open() {
        return reject(e);
    }
    if tenant.is_removed() {
        return reject(Error::NoSuchTenant(tenant.name.to_string()));
    }
    let ops = match check_request(tenant, req) {
        Ok(ops) => ops,
        Err(e) => return reject(e),
    };
    let (cost_ns, ref_tiles) = {
        let cost = inner.cost.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter().fold((0.0, 0), |(c, t), o| {
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
        })
    };
    let (t, resolver) = ticket();
    let mut s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
    if !s.open {
        drop(s);
        return reject(Error::Closed);
    }
    let floor = s.queues.values().filter(|q| !q.pending.is_empty()).map(|q| q.vt).fold(f64::INFINITY, f64::min);
    let q = s.queues.entry(tenant.id).or_insert_with(|| Queue {
        tenant: tenant.clone(),
        pending: VecDeque::new(),
        vt: 0.0,
    });
    if q.pending.len() >= tenant.spec.max_pending {
        let (pending, limit) = (q.pending.len(), tenant.spec.max_pending);
        drop(s);
        return reject(Error::QueueFull { tenant: tenant.name.to_string(), pending, limit });
    }
    if q.pending.is_empty() && floor.is_finite() {
        // A tenant coming back from idle starts level with the backlogged ones: no banked credit.
        q.vt = q.vt.max(floor);
    }
    let now = Instant::now();
    let slo = tenant.spec.slo.unwrap_or(inner.cfg.default_deadline);
    for o in &ops {
        o.get().reads.iter().for_each(|b| b.add_user());
        o.get().write.add_user();
    }
    let q = s.queues.get_mut(&tenant.id).expect("inserted above");
    q.pending.push_back(Pending { seq: 0, ops, resolver, submitted: now, deadline: now + slo, cost_ns, ref_tiles });
    s.seq += 1;
    let seq = s.seq;
    s.queues.get_mut(&tenant.id).and_then(|q| q.pending.back_mut()).expect("pushed").seq = seq;
    tenant.inflight.fetch_add(1, Ordering::AcqRel);
    tenant.counters().submitted += 1;
    drop(s);
    inner.submitted.fetch_add(1, Ordering::AcqRel);
    if inner.sched_sleeping.load(Ordering::Acquire) {
        inner.wake.notify_all();
    }
    Ok(t)
}

/// Resolves every queued request of `tenant` (or of all tenants) with `err()`.
pub(crate) fn cancel_tenant(inner: &Inner, tenant: u32, err: impl Fn() -> Error) {
    let drained: Vec<(Arc<TenantState>, Pending)> = {
        let mut s = inner.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.queues
            .remove(&tenant)
            .map(|q| q.pending.into_iter().map(|p| (q.tenant.clone(), p)).collect())
            .unwrap_or_default()
    };
    finish_cancelled(inner, drained, err);
}

fn finish_cancelled(inner: &Inner, reqs: Vec<(Arc<TenantState>, Pending)>, err: impl Fn() -> Error) {
    for (t, p) in reqs {
        p.release();
        t.counters().failed += 1;
        t.inflight.fetch_sub(1, Ordering::AcqRel);
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
        let conflict =
            head.touches().any(|(b, w)| entry.1.contains(&(b, true)) || (w && entry.1.contains(&(b, false))));
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
        q.vt += p.cost_ns / q.tenant.spec.weight;
        entry.0 += p.ref_tiles;
        entry.1.extend(p.touches());
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
    let predicted = cost.predict(&round, inner.device.slots());
    s.rounds += 1;
    Some(Batch { index: s.rounds, round, reqs: taken, predicted })
}

/// Starts the scheduler and executor threads, connected by a rendezvous channel.
pub(crate) fn spawn(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(0);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let completer = inner.clone();
    Ok(vec![
        spawn_scheduler(inner.clone(), tx)?,
        spawn_executor(inner.clone(), rx, done_tx)?,
        std::thread::Builder::new()
            .name("tilemux-completer".into())
            .spawn(move || {
                for c in done_rx {
                    complete(&completer, c);
                }
            })
            .map_err(|e| Error::Config(format!("spawning the completer: {e}")))?,
    ])
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
                    assemble(&inner, &mut s)
                };
                active = Instant::now();
                if let Some(b) = batch {
                    let busy_until = inner.epoch.elapsed() + b.predicted;
                    inner.busy_until.store(busy_until.as_nanos() as u64, Ordering::Release);
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
                let t = Instant::now();
                let b = loop {
                    match rx.try_recv() {
                        Ok(b) => break Some(b),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => break None,
                        Err(std::sync::mpsc::TryRecvError::Empty) if t.elapsed() < spin() => std::hint::spin_loop(),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break rx.recv().ok(),
                    }
                };
                match b {
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
        p.release();
        let e = per.entry(t.id).or_default();
        e.0 += p.ref_tiles;
        e.1 += 1;
        let queued = start.saturating_duration_since(p.submitted);
        {
            let mut c = t.counters();
            match &res {
                Ok(_) => {
                    c.completed += 1;
                    c.ops += p.ops.len() as u64;
                    c.tiles += p.ref_tiles as u64;
                    c.tile_time_ns += p.cost_ns;
                    c.record(queued, executed);
                }
                Err(_) => c.failed += 1,
            }
        }
        t.inflight.fetch_sub(1, Ordering::AcqRel);
        let out = match &res {
            Ok(_) => Ok(Done { round: b.index, queued, executed }),
            Err(e) => Err(Error::RoundFailed(e.to_string())),
        };
        p.resolver.resolve(out);
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
    let c = scratch(slots as u64 * 128 * 128 * 4)?;
    device.write(a, &data)?;
    device.write(b, &data)?;
    cost.calibrate(slots, |kind, k, n| {
        let s = kind.shape();
        let mut round = Round::default();
        for i in 0..n {
            let (pm, pn) = if kind.is_gemv() { (s.bm, 1) } else { (s.bm, s.bn) };
            let p = problem(
                (a, b, c + (i as u64) * 128 * 128 * 4, 0),
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
        for _ in 0..3 {
            best = best.min(device.run(&round)?.kernel);
        }
        Ok(best)
    })
}
