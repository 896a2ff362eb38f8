//! Persistent mode on every device: the ring protocol directly (CPU stand-in for the CTAs in CI,
//! the resident kernel on a GPU), then the runtime in persistent mode: correctness under
//! concurrency, hazards between requests in flight, ring-full behaviour, stop with work in
//! flight, and a soak with exactly-once accounting.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::say;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tilemux::abi::ProblemDesc;
use tilemux::abi::TileKind;
use tilemux::abi::ring::FLAG_TILES;
use tilemux::cuda::persistent::{Forwarder, Resident};
use tilemux::persistent::{Engine, RingMemory, RingWriter};
use tilemux::reference::{Case, Staged, random_dims};
use tilemux::round::{CostModel, Round, TileChooser};
use tilemux::runtime::{Mat, Mode, Op, PersistentConfig, Policy, Runtime, RuntimeConfig, TenantSpec, WhenFull};
use tilemux::{Device, Error};

fn persistent(slots: u32, when_full: WhenFull) -> RuntimeConfig {
    RuntimeConfig {
        policy: Policy::FairShare,
        calibrate: false,
        mode: Mode::Persistent(PersistentConfig { slots, when_full, heartbeat_timeout: Duration::from_secs(10) }),
        ..Default::default()
    }
}

/// Relative error (2-norm) of `got` against the f64 reference `want`.
fn rel_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    got.iter().zip(want).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt() / scale
}

/// `y = A·x` in f64 for a row-major `m × k` A.
fn gemv_reference(a: &[f32], x: &[f32], m: usize, k: usize) -> Vec<f64> {
    (0..m).map(|i| (0..k).map(|j| a[i * k + j] as f64 * x[j] as f64).sum::<f64>()).collect()
}

/// `len` values uniform in [-1, 1).
fn random_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `n` random cases (every `gemv.0`-th of shape `gemv.1`, the rest random up to `max`), staged
/// on `d` with poisoned outputs, planned one problem each by the persistent chooser and checked.
fn staged_problems(d: &dyn Device, n: usize, gemv: (usize, (u32, u32, u32)), max: u32) -> (Vec<Case>, Staged, Round) {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let cases: Vec<Case> = (0..n)
        .map(|i| {
            let dims = if i % gemv.0 == 0 { gemv.1 } else { random_dims(&mut rng, max) };
            Case::random(&mut rng, dims)
        })
        .collect();
    let staged = Staged::new(d, &mut common::arena(d), &cases).unwrap();
    staged.poison(d, &cases).unwrap();
    let round = TileChooser::persistent().build(&staged.descs(&cases), &[], &CostModel::default(), d.slots());
    tilemux::round::check(&round, d.pool()).unwrap();
    (cases, staged, round)
}

runtime_test!(ring_protocol, |d: Arc<dyn Device>, _gpu: bool| {
    // Problems straight into a 3-slot ring: wrap-around many times, each completes exactly once;
    // the GEMVs have more than FLAG_TILES tiles (completed by the counter), the rest fewer
    // (completed by flags), so slots take turns between the two.
    let (cases, staged, round) = staged_problems(&*d, 40, (3, (4200, 1, 77)), 90);
    let (ring, engine) = d.start_persistent(3, Duration::from_secs(10)).unwrap();
    let mut w = RingWriter::new(ring.clone());
    let mut seqs = Vec::new();
    for p in &round.problems {
        while !w.has_room(p) {
            w.publish();
            std::thread::yield_now();
        }
        seqs.push(w.write(*p));
        if seqs.len() % 2 == 0 {
            w.publish();
        }
    }
    w.publish();
    let start = Instant::now();
    while !seqs.iter().all(|&s| ring.is_done(s)) {
        assert!(start.elapsed() < Duration::from_secs(60), "ring did not drain");
        std::thread::yield_now();
    }
    ring.request_stop();
    assert_eq!(engine.join().unwrap(), 0);
    for (i, (c, got)) in cases.iter().zip(staged.read_c(&*d, &cases).unwrap()).enumerate() {
        let want = c.reference();
        let kind = TileKind::from_u32(round.problems[i].tile_kind).unwrap();
        assert!(c.error(&got, &want) < 1e-4, "problem {i} ({}x{}x{}, {}) wrong", c.m, c.n, c.k, kind.name());
    }
    // Each slot's completion word holds the last sequence number that used it and completes by
    // its counter (more than FLAG_TILES tiles), plus one; the others completed by flags.
    let counted = |q: &u64| round.problems[*q as usize].tile_count() > FLAG_TILES;
    assert!(seqs.iter().any(counted) && !seqs.iter().all(counted), "both ways of completing");
    for s in 0..3u32 {
        let last = seqs.iter().copied().filter(|q| q % 3 == s as u64 && counted(q)).max().map_or(0, |q| q + 1);
        assert_eq!(ring.done_word(s).load(Ordering::Acquire), last);
    }
});

runtime_test!(concurrent_requests, |d: Arc<dyn Device>, gpu: bool| {
    let rt = Runtime::with_device(d, persistent(64, WhenFull::Wait)).unwrap();
    let tenants: Vec<_> =
        (0..8).map(|i| rt.add_tenant(TenantSpec::new(format!("p{i}")).quota(8 << 20)).unwrap()).collect();
    let per = if gpu { 400 } else { 150 };
    let worst = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (rt, t) = (&rt, &tenants[i % 8]);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(rand::random());
                    (0..per)
                        .map(|_| {
                            let dims = random_dims(&mut rng, 80);
                            let c = Case::random(&mut rng, dims);
                            let b = c.alloc(t).unwrap();
                            c.upload(&b).unwrap();
                            rt.submit(t, c.op(&b)).unwrap().wait().unwrap();
                            c.error(&b.c.read().unwrap(), &c.reference())
                        })
                        .fold(0.0f64, f64::max)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).fold(0.0f64, f64::max)
    });
    assert!(worst < 1e-4, "worst error {worst:e}");
    say(&format!(
        "concurrent_requests (persistent) on {}: {} requests, worst error {worst:.1e}",
        rt.device_name(),
        16 * per
    ));
});

runtime_test!(hazards_between_requests_in_flight, |d: Arc<dyn Device>, _gpu: bool| {
    // Request 2 reads what request 1 writes; submitted back to back, it must see the result.
    let rt = Runtime::with_device(d, persistent(64, WhenFull::Wait)).unwrap();
    let t = rt.add_tenant(TenantSpec::new("chain").quota(16 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let n = 96;
    for _ in 0..20 {
        let (a, b1, b2) = (random_vec(&mut rng, n * n), random_vec(&mut rng, n * n), random_vec(&mut rng, n * n));
        let (ba, bb1, bb2) = (t.upload(&a).unwrap(), t.upload(&b1).unwrap(), t.upload(&b2).unwrap());
        let (c1, c2) = (t.alloc(n * n).unwrap(), t.alloc(n * n).unwrap());
        let m = |b| Mat::new(b, n, n);
        let t1 = rt.submit(&t, Op::gemm(m(&ba), m(&bb1), m(&c1))).unwrap();
        let t2 = rt.submit(&t, Op::gemm(m(&c1), m(&bb2), m(&c2))).unwrap();
        // And a write-after-read: overwrite request 2's input right behind it.
        let t3 = rt.submit(&t, Op::gemm(m(&ba), m(&bb2), m(&c1))).unwrap();
        t1.wait().unwrap();
        t2.wait().unwrap();
        t3.wait().unwrap();
        let mut want = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                let ab: Vec<f64> =
                    (0..n).map(|k| (0..n).map(|l| a[i * n + l] as f64 * b1[l * n + k] as f64).sum()).collect();
                want[i * n + j] = (0..n).map(|k| ab[k] * b2[k * n + j] as f64).sum();
            }
        }
        let err = rel_error(&c2.read().unwrap(), &want);
        assert!(err < 1e-4, "request 2 did not see request 1's output (error {err:e})");
    }
});

runtime_test!(rewritten_inputs_are_read_fresh, |d: Arc<dyn Device>, gpu: bool| {
    // The resident kernel outlives every buffer write: a GEMV's inputs rewritten between
    // requests (the same buffers, the same tiles, likely on SMs that read the old values) must
    // be read as they are now, not from an SM's cache. Fresh A and x each time, y poisoned.
    let rt = Runtime::with_device(d, persistent(16, WhenFull::Wait)).unwrap();
    let t = rt.add_tenant(TenantSpec::new("rewrites").quota(16 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let (m, k) = (512, 512);
    let (a, x, y) = (t.alloc(m * k).unwrap(), t.alloc(k).unwrap(), t.alloc(m).unwrap());
    let rounds = if gpu { 300 } else { 30 };
    let mut worst = 0.0f64;
    for _ in 0..rounds {
        let (av, xv) = (random_vec(&mut rng, m * k), random_vec(&mut rng, k));
        a.write(&av).unwrap();
        x.write(&xv).unwrap();
        y.write(&vec![f32::NAN; m]).unwrap();
        rt.submit(&t, Op::gemm(Mat::new(&a, m, k), Mat::new(&x, k, 1), Mat::new(&y, m, 1))).unwrap().wait().unwrap();
        let err = rel_error(&y.read().unwrap(), &gemv_reference(&av, &xv, m, k));
        assert!(err < 1e-4, "a GEMV read stale or wrong inputs (relative error {err:e})");
        worst = worst.max(err);
    }
    say(&format!("rewritten_inputs_are_read_fresh: {rounds} rewrites, worst error {worst:.1e}"));
});

runtime_test!(transfers_wait_for_requests_on_the_device, |d: Arc<dyn Device>, _gpu: bool| {
    // A request the fast path takes straight to the device: a read of its output issued before
    // waiting sees the result, and a write of its input issued right after submitting waits for
    // it (the request reads the old values).
    let rt = Runtime::with_device(d, persistent(16, WhenFull::Wait)).unwrap();
    let t = rt.add_tenant(TenantSpec::new("transfers").quota(16 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let (m, k) = (512, 512);
    for _ in 0..20 {
        let av: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let xv: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let (a, x, y) = (t.upload(&av).unwrap(), t.upload(&xv).unwrap(), t.upload(&vec![f32::NAN; m]).unwrap());
        let ticket = rt.submit(&t, Op::gemm(Mat::new(&a, m, k), Mat::new(&x, k, 1), Mat::new(&y, m, 1))).unwrap();
        a.write(&vec![0.0; m * k]).unwrap();
        let got = y.read().unwrap();
        ticket.wait().unwrap();
        let want: Vec<f64> = (0..m).map(|i| (0..k).map(|j| av[i * k + j] as f64 * xv[j] as f64).sum::<f64>()).collect();
        let scale = want.iter().map(|v| v * v).sum::<f64>().sqrt();
        let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt() / scale;
        assert!(err < 1e-4, "a transfer did not wait for the request on the device (relative error {err:e})");
    }
});

runtime_test!(remembered_plans_fit_their_ops, |d: Arc<dyn Device>, _gpu: bool| {
    // A thread's lone ops reuse the last one's plan when alike: alternating shapes and scalars,
    // repeats, and a chooser change in between must each run as planned for themselves.
    let rt = Runtime::with_device(d, persistent(16, WhenFull::Wait)).unwrap();
    let t = rt.add_tenant(TenantSpec::new("alike").quota(64 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let shapes =
        [(512, 1, 512), (512, 1, 512), (384, 1, 512), (512, 1, 384), (96, 64, 128), (96, 64, 128), (512, 1, 512)];
    for round in 0..2 {
        if round == 1 {
            rt.set_chooser(TileChooser::default());
        }
        for (i, &shape) in shapes.iter().enumerate() {
            let mut case = Case::plain(&mut rng, shape);
            case.alpha = if i % 2 == 0 { 1.0 } else { -0.75 };
            let bufs = case.alloc(&t).unwrap();
            case.upload(&bufs).unwrap();
            rt.submit(&t, case.op(&bufs)).unwrap().wait().unwrap();
            let e = case.error(&bufs.c.read().unwrap(), &case.reference());
            assert!(e < 1e-4, "{shape:?} (op {i}, round {round}): relative error {e:e}");
        }
    }
});

runtime_test!(set_chooser_keeps_persistent_limits, |d: Arc<dyn Device>, _gpu: bool| {
    // A chooser set later (here the round-mode default, which splits a lone conv2_2 along k)
    // keeps persistent mode's limits: the ring has no split-K workspace.
    let rt = Runtime::with_device(d, persistent(16, WhenFull::Wait)).unwrap();
    rt.set_chooser(TileChooser::default());
    let t = rt.add_tenant(TenantSpec::new("tuned").quota(64 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let case = Case::plain(&mut rng, (256, 128, 1152));
    let bufs = case.alloc(&t).unwrap();
    case.upload(&bufs).unwrap();
    let split = tilemux::round::Plan { kind: TileKind::Sgemm64x64, k_splits: 16 };
    for op in [case.op(&bufs), case.op(&bufs).tile(split)] {
        bufs.c.write(&vec![f32::NAN; 256 * 128]).unwrap();
        rt.submit(&t, op).unwrap().wait().unwrap();
        let e = case.error(&bufs.c.read().unwrap(), &case.reference());
        assert!(e < 1e-4, "relative error {e:e}");
    }
});

runtime_test!(host_gone_stops_the_kernel, |d: Arc<dyn Device>, _gpu: bool| {
    // The host publishes a problem, then goes quiet: no heartbeat, no stop request. The device
    // side runs what it was given and stops by itself after its heartbeat timeout.
    let (cases, staged, round) = staged_problems(&*d, 1, (1, (64, 1, 64)), 64);
    let (ring, engine) = d.start_persistent(4, Duration::from_millis(100)).unwrap();
    let mut w = RingWriter::new(ring.clone());
    let seq = w.write(round.problems[0]);
    w.publish();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || tx.send(engine.join()).unwrap());
    let joined = rx.recv_timeout(Duration::from_secs(20)).expect("the device side did not stop on its own");
    assert_eq!(joined.unwrap(), 0);
    joiner.join().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(90), "stopped before its timeout: {:?}", start.elapsed());
    assert!(ring.is_done(seq), "the published problem ran first");
    let got = staged.read_c(&*d, &cases).unwrap();
    assert!(cases[0].error(&got[0], &cases[0].reference()) < 1e-4);
    say(&format!("host_gone_stops_the_kernel: stopped {:?} after the last publish", start.elapsed()));
});

runtime_test!(ring_full, |d: Arc<dyn Device>, _gpu: bool| {
    // A ring's size: at least one slot, at most what a claim-table entry can name.
    for slots in [0, tilemux::abi::ring::MAX_SLOTS + 1] {
        match Runtime::with_device(d.clone(), persistent(slots, WhenFull::Wait)) {
            Err(Error::Config(m)) => assert!(m.contains("ring slots"), "{m}"),
            other => panic!("{slots} slots: expected a config error, got {:?}", other.err()),
        }
    }
    let cfg = RuntimeConfig { start_paused: true, ..persistent(4, WhenFull::Error) };
    let rt = Runtime::with_device(d.clone(), cfg).unwrap();
    let t = rt.add_tenant(TenantSpec::new("full")).unwrap();
    let a = t.upload(&vec![0.5; 64 * 64]).unwrap();
    let op = |t: &tilemux::runtime::Tenant| {
        Op::gemm(Mat::new(&a, 64, 64), Mat::new(&a, 64, 64), Mat::new(&t.alloc(64 * 64).unwrap(), 64, 64))
    };
    let tickets: Vec<_> = (0..4).map(|_| rt.submit(&t, op(&t)).unwrap()).collect();
    match rt.submit(&t, op(&t)) {
        Err(e @ Error::RingFull { outstanding: 4, requested: 1, slots: 4 }) => {
            assert!(e.to_string().contains("do not fit"))
        }
        other => panic!("expected RingFull, got {other:?}"),
    }
    rt.resume();
    for tk in tickets {
        tk.wait().unwrap();
    }
    rt.submit(&t, op(&t)).unwrap().wait().expect("room again after completions");
    // The device serves one runtime at a time: not while this one's tenant and buffer live.
    drop(rt);
    match Runtime::with_device(d.clone(), persistent(4, WhenFull::Wait)) {
        Err(Error::Config(m)) => assert!(m.contains("already serves a runtime"), "{m}"),
        other => panic!("a second runtime on the device: expected a config error, got {:?}", other.err()),
    }
    drop((a, t));
    // Waiting instead: one thread pushes 10x the ring's size; every request completes.
    let rt = Runtime::with_device(d, persistent(4, WhenFull::Wait)).unwrap();
    let t = rt.add_tenant(TenantSpec::new("wait")).unwrap();
    let a = t.upload(&vec![0.5; 64 * 64]).unwrap();
    let op = |t: &tilemux::runtime::Tenant| {
        Op::gemm(Mat::new(&a, 64, 64), Mat::new(&a, 64, 64), Mat::new(&t.alloc(64 * 64).unwrap(), 64, 64))
    };
    let tickets: Vec<_> = (0..40).map(|_| rt.submit(&t, op(&t)).unwrap()).collect();
    for tk in tickets {
        tk.wait().unwrap();
    }
});

runtime_test!(stop_with_work_in_flight, |d: Arc<dyn Device>, _gpu: bool| {
    let rt = Runtime::with_device(d, persistent(32, WhenFull::Wait)).unwrap();
    let ts: Vec<_> = (0..4).map(|i| rt.add_tenant(TenantSpec::new(format!("s{i}"))).unwrap()).collect();
    let mut tickets = Vec::new();
    for t in &ts {
        let a = t.upload(&vec![0.25; 128 * 128]).unwrap();
        for _ in 0..8 {
            tickets.push(
                rt.submit(
                    t,
                    Op::gemm(
                        Mat::new(&a, 128, 128),
                        Mat::new(&a, 128, 128),
                        Mat::new(&t.alloc(128 * 128).unwrap(), 128, 128),
                    ),
                )
                .unwrap(),
            );
        }
    }
    rt.shutdown();
    let (mut ok, mut closed) = (0, 0);
    for mut t in tickets {
        match t.wait_timeout(Duration::from_secs(30)) {
            Ok(_) => ok += 1,
            Err(Error::Closed) => closed += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok + closed, 32);
    say(&format!("stop_with_work_in_flight: {ok} ran, {closed} closed"));
});

/// `requests` requests from `threads` threads over 16 tenants; every result checked (each
/// request scales a known product by its own alpha, so no upload per request), every ticket
/// resolved exactly once. Each thread keeps 8 requests in flight on 8 output buffers.
fn soak(d: Arc<dyn Device>, threads: usize, requests: usize) {
    let rt = Runtime::with_device(d, persistent(1024, WhenFull::Wait)).unwrap();
    let tenants: Vec<_> =
        (0..16).map(|i| rt.add_tenant(TenantSpec::new(format!("soak{i}")).quota(4 << 20)).unwrap()).collect();
    let resolved = AtomicU64::new(0);
    let start = Instant::now();
    let worst = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (rt, t, resolved) = (&rt, &tenants[i % 16], &resolved);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(i as u64 ^ rand::random::<u64>());
                    let (m, n, k) = [(64usize, 1usize, 96usize), (48, 40, 24), (33, 65, 17)][i % 3];
                    let case = Case::plain(&mut rng, (m as u32, n as u32, k as u32));
                    let want = case.reference();
                    let (a, b) = (t.upload(&case.a).unwrap(), t.upload(&case.b).unwrap());
                    let outs: Vec<_> = (0..8).map(|_| t.alloc(m * n).unwrap()).collect();
                    let mut seen = HashSet::new();
                    let mut worst = 0.0f64;
                    let mut window = std::collections::VecDeque::new();
                    for r in 0..requests / threads {
                        let alpha = rng.random_range(0.5f32..2.0);
                        let slot = r % outs.len();
                        let op =
                            Op::gemm(Mat::new(&a, m, k), Mat::new(&b, k, n), Mat::new(&outs[slot], m, n)).alpha(alpha);
                        window.push_back((r, slot, alpha, rt.submit(t, op).unwrap()));
                        if window.len() == outs.len() {
                            let (r, slot, alpha, tk) = window.pop_front().unwrap();
                            tk.wait().unwrap();
                            assert!(seen.insert(r), "request {r} resolved twice");
                            resolved.fetch_add(1, Ordering::Relaxed);
                            let got = outs[slot].read().unwrap();
                            let num: f64 =
                                got.iter().zip(&want.value).map(|(g, w)| (*g as f64 - alpha as f64 * w).powi(2)).sum();
                            worst = worst.max(num.sqrt() / (alpha as f64 * want.scale));
                        }
                    }
                    for (r, _, _, tk) in window {
                        tk.wait().unwrap();
                        assert!(seen.insert(r), "request {r} resolved twice");
                        resolved.fetch_add(1, Ordering::Relaxed);
                    }
                    worst
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).fold(0.0f64, f64::max)
    });
    let total = (requests / threads * threads) as u64;
    assert_eq!(resolved.load(Ordering::Relaxed), total, "every request resolved exactly once");
    let completed: u64 = tenants.iter().map(|t| t.stats().completed).sum();
    assert_eq!(completed, total);
    assert!(worst < 1e-4, "worst error {worst:e}");
    say(&format!(
        "soak on {}: {total} requests from {threads} threads, 16 tenants, in {:.1?} ({:.0}/s); worst checked error {worst:.1e}",
        rt.device_name(),
        start.elapsed(),
        total as f64 / start.elapsed().as_secs_f64()
    ));
}

#[test]
fn soak_cpu() {
    soak(common::cpu(256 << 20), 32, 20_000);
}

#[test]
fn soak_gpu() {
    match common::gpu() {
        Some((_lock, d)) => soak(d, 32, 1_000_000),
        None => say("soak_gpu: skipped: no CUDA device"),
    }
}

/// Writes `problems` into the bare ring one at a time, each done before the next is written
/// (30 s at most each); `what` names the run in failures.
fn one_at_a_time(ring: &Arc<RingMemory>, problems: &[ProblemDesc], what: &str) {
    let mut w = RingWriter::new(ring.clone());
    let start = Instant::now();
    for p in problems {
        let q = w.write(*p);
        w.publish();
        while !ring.is_done(q) {
            assert!(start.elapsed() < Duration::from_secs(30), "{what}: problem {q} did not finish");
            std::hint::spin_loop();
        }
    }
}

/// Stops the resident kernel (which must end cleanly) and checks every case's result.
fn stop_and_check(ring: &RingMemory, engine: &dyn Engine, d: &dyn Device, cases: &[Case], staged: &Staged, what: &str) {
    ring.request_stop();
    assert_eq!(engine.join().unwrap(), 0, "{what}: the kernel's status");
    for (i, (c, got)) in cases.iter().zip(staged.read_c(d, cases).unwrap()).enumerate() {
        assert!(c.error(&got, &c.reference()) < 1e-4, "{what}: problem {i} wrong");
    }
}

/// The resident kernel's trace: for every finished problem the stamps follow the problem's way
/// (forwarder saw it ≤ forwarded ≤ tile 0 found ≤ staged ≤ done ≤ completion written), and the
/// results are right. GPU only (the CPU engine has no forwarder and no trace).
#[test]
fn trace_follows_each_problem() {
    let Some((_g, d)) = common::gpu() else {
        say("trace_follows_each_problem: skipped, no CUDA device");
        return;
    };
    let (cases, staged, round) = staged_problems(&*d, 30, (2, (512, 1, 512)), 300);
    let (ring, engine) = d.start_persistent(8, Duration::from_secs(10), Resident::new().traced()).unwrap();
    // One at a time, so each problem's stamps are its own.
    one_at_a_time(&ring, &round.problems, "traced");
    let trace = engine.trace().unwrap();
    stop_and_check(&ring, &engine, &*d, &cases, &staged, "traced");
    for (q, t) in trace.iter().take(round.problems.len()).enumerate() {
        let steps = [t.seen, t.forwarded, t.found, t.staged, t.tile_done, t.completing, t.completed];
        assert!(steps.iter().all(|&s| s != 0), "problem {q}: missing stamps {t:?}");
        assert!(steps.windows(2).all(|w| w[0] <= w[1]), "problem {q}: stamps out of order {t:?}");
        assert!(t.completed - t.seen < 10_000_000, "problem {q}: 10 ms on the device {t:?}");
    }
    say(&format!("trace_follows_each_problem: {} problems on {}", round.problems.len(), d.name()));
}

/// The forwarder wherever it is placed: on the SM with the shortest bus round trip (the
/// default), on block 0, and on an SM that has no CTA (block 0 takes over after waiting for a
/// claim that never comes); and unpaced (the first poll after a forward not delayed). Results
/// are right each time. GPU only.
#[test]
fn forwarder_anywhere() {
    let Some((_g, d)) = common::gpu() else {
        say("forwarder_anywhere: skipped, no CUDA device");
        return;
    };
    let (cases, staged, round) = staged_problems(&*d, 24, (2, (512, 1, 512)), 120);
    let unpaced = (Forwarder::FastestSm, false);
    for (forwarder, pace) in
        [(Forwarder::FastestSm, true), (Forwarder::Block0, true), (Forwarder::Sm(1 << 20), true), unpaced]
    {
        staged.poison(&*d, &cases).unwrap();
        let (ring, engine) =
            d.start_persistent(8, Duration::from_secs(10), Resident { forwarder, pace, ..Resident::new() }).unwrap();
        let what = format!("{forwarder:?}, paced {pace}");
        one_at_a_time(&ring, &round.problems, &what);
        stop_and_check(&ring, &engine, &*d, &cases, &staged, &what);
    }
    say(&format!("forwarder_anywhere: {} problems four ways (one unpaced) on {}", round.problems.len(), d.name()));
}

/// Untraced (the runtime's way: no timer reads on a problem's way), the kernel stamps nothing
/// and its engine says so when asked for the trace; results are right. GPU only.
#[test]
fn untraced_kernel_has_no_trace() {
    let Some((_g, d)) = common::gpu() else {
        say("untraced_kernel_has_no_trace: skipped, no CUDA device");
        return;
    };
    let (cases, staged, round) = staged_problems(&*d, 31, (2, (512, 1, 512)), 100);
    let (ring, engine) = d.start_persistent(8, Duration::from_secs(10), Resident::new()).unwrap();
    one_at_a_time(&ring, &round.problems, "untraced");
    let err = engine.trace().expect_err("an untraced kernel has no trace");
    assert!(err.to_string().contains("without its trace"), "{err}");
    stop_and_check(&ring, &engine, &*d, &cases, &staged, "untraced");
    say(&format!("untraced_kernel_has_no_trace: {} problems on {}", round.problems.len(), d.name()));
}

/// The per-SM round-trip probe measures every SM once: a bus round trip from each (host-mapped
/// memory), well above an L2 round trip (device memory). GPU only.
#[test]
fn sm_rtt_measures_every_sm() {
    let Some((_g, d)) = common::gpu() else {
        say("sm_rtt_measures_every_sm: skipped, no CUDA device");
        return;
    };
    let recs = tilemux::cuda::probe::sm_rtt(&d, 16).unwrap();
    let sms = d.gpu().sm_count as usize;
    assert_eq!(recs.len(), sms);
    let mut seen: Vec<u32> = recs.iter().map(|r| r.sm).collect();
    seen.dedup();
    assert_eq!(seen.len(), sms, "one CTA per SM: {seen:?}");
    for r in &recs {
        assert!(r.device_ns > 0 && r.device_ns < 5_000, "{r:?}");
        assert!(r.host_ns > r.device_ns && r.host_ns < 100_000, "{r:?}");
        assert_eq!(r.sink, 0, "the chains read zeroed words");
    }
    say(&format!("sm_rtt_measures_every_sm: {} SMs on {}", recs.len(), d.name()));
}

/// The transport probe answers every doorbell, whichever way it is rung. GPU only.
#[test]
fn echo_probe_answers_every_doorbell() {
    use tilemux::cuda::probe::{Doorbell, echo};
    let Some((_g, d)) = common::gpu() else {
        say("echo_probe_answers_every_doorbell: skipped, no CUDA device");
        return;
    };
    for how in Doorbell::ALL {
        for bytes in [0, 160] {
            let l = echo(&d, how, bytes, 200).unwrap();
            assert_eq!(l.len(), 200);
            assert!(l[0] > 0.0 && l[199] < 1e6, "{}: {l:?}", how.label());
        }
    }
    // Several polling warps, the stamped payload polled itself, every kind of reply.
    use tilemux::cuda::probe::{EchoWay, Reply, Write};
    for reply in [Reply::TwoReleases, Reply::SysFence, Reply::GpuFence, Reply::Relaxed] {
        for (pollers, inline, bytes) in [(1, true, 224), (4, true, 224), (8, false, 160), (3, false, 0)] {
            let w = EchoWay { doorbell: Doorbell::HostStore, pollers, inline, reply, write: Write::Stamps };
            let l = echo(&d, w, bytes, 500).unwrap();
            assert_eq!(l.len(), 500);
            assert!(l[0] > 0.0 && l[499] < 1e6, "{}: {l:?}", w.label());
        }
    }
    // The payload's data rewritten each echo, with ordinary or non-temporal stores.
    for write in [Write::Image, Write::ImageNonTemporal] {
        let w = EchoWay { doorbell: Doorbell::HostStore, pollers: 1, inline: true, reply: Reply::Relaxed, write };
        let l = echo(&d, w, 208, 500).unwrap();
        assert!(l.len() == 500 && l[0] > 0.0 && l[499] < 1e6, "{}: {l:?}", w.label());
    }
    // Two copies of the payload, one per polling warp.
    let w = EchoWay {
        doorbell: Doorbell::HostStore,
        pollers: 2,
        inline: true,
        reply: Reply::Relaxed,
        write: Write::TwoCopies,
    };
    let l = echo(&d, w, 208, 500).unwrap();
    assert!(l.len() == 500 && l[0] > 0.0 && l[499] < 1e6, "{}: {l:?}", w.label());
    assert!(echo(&d, w, 272, 1).is_err(), "two copies of more than 256 bytes are refused");
    assert!(echo(&d, Doorbell::HostStore, 24, 1).is_err(), "a payload of 24 bytes is refused");
    let inline_store = EchoWay { inline: true, reply: Reply::Relaxed, ..EchoWay::plain(Doorbell::StreamWrite) };
    assert!(echo(&d, inline_store, 160, 1).is_err(), "an inline echo needs a host store");
}
