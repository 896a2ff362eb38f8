//! `tilemux bench dispatch`: how fast one request gets through. Submit → result visible on the
//! host for one 512×1×512 GEMV and one 256³ GEMM, one request at a time, for cuBLAS launch +
//! synchronize, the runtime in round mode, the runtime in persistent mode, and the bare ring
//! (problems written straight into it, completion words polled); then saturated throughput of
//! the seed mix, persistent against round mode.
//!
//! Variants run one after another: while the resident kernel runs, no other kernel can.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use rand::SeedableRng;
use tilemux::Device;
use tilemux::abi::TileKind;
use tilemux::cuda::persistent::{Resident, bare_ring_latency};
use tilemux::cuda::probe::{Doorbell, EchoWay, Reply, Write, echo, sm_rtt};
use tilemux::cuda::{CudaConfig, CudaDevice};
use tilemux::memory::Arena;
use tilemux::persistent::RingWriter;
use tilemux::reference::{Case, SEED_MIX, Staged};
use tilemux::round::{CostModel, TileChooser};
use tilemux::runtime::{Mat, Mode, Op, PersistentConfig, Policy, Runtime, RuntimeConfig, Tenant, TenantSpec};

use crate::gpu::{Gpu, percentile};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct DispatchArgs {
    /// Requests per variant and shape.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// Seconds of saturated throughput per mode.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Smoke run: 5000 requests, 0.5 s.
    #[arg(long)]
    pub quick: bool,
    /// Tenants (one thread each) in the saturated runs.
    #[arg(long, default_value_t = 24)]
    pub tenants: usize,
    /// Requests each tenant keeps in flight in the saturated runs.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Only the saturated runs (no one-at-a-time latencies).
    #[arg(long)]
    pub saturated_only: bool,
    /// Only the transport probe (the echo rows).
    #[arg(long)]
    pub echo_only: bool,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const SHAPES: [(&str, (u32, u32, u32)); 2] = [("gemv 512x1x512", (512, 1, 512)), ("gemm 256x256x256", (256, 256, 256))];

/// Times `f` `n` times (after 1% warm-up); returns sorted latencies in µs.
/// Longest random gap before a request in the gapped latency rows (about two poll cycles).
const GAP_NS: u64 = 2000;

fn lat(n: usize, f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    lat_after(n, || {}, f)
}

/// As [`lat`], running `before` ahead of each call, outside the timed interval.
fn lat_after(n: usize, mut before: impl FnMut(), mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..(n / 100).max(10) {
        before();
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        before();
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

fn mode(persistent: bool) -> RuntimeConfig {
    RuntimeConfig {
        policy: Policy::FairShare,
        mode: if persistent { Mode::Persistent(PersistentConfig::default()) } else { Mode::Rounds },
        ..Default::default()
    }
}

/// One tenant running `case` through a runtime, checked once, then timed one at a time; with
/// `gap_ns`, after a random 0..gap_ns spin before each request (outside the timed interval).
fn runtime_latency(dev: Arc<dyn Device>, persistent: bool, case: &Case, n: usize, gap_ns: u64) -> Result<Vec<f64>> {
    let rt = Runtime::with_device(dev, mode(persistent))?;
    let t = rt.add_tenant(TenantSpec::new("one").quota(64 << 20))?;
    let bufs = case.alloc(&t)?;
    case.upload(&bufs)?;
    let op = case.op(&bufs);
    rt.submit(&t, op.clone())?.wait()?;
    let e = case.error(&bufs.c.read()?, &case.reference());
    ensure!(e < 1e-4, "runtime ({}) result wrong: {e:e}", if persistent { "persistent" } else { "rounds" });
    let mut submit = Vec::with_capacity(n + n / 100 + 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let l = lat_after(
        n,
        || {
            if gap_ns > 0 {
                let gap = Duration::from_nanos(rand::Rng::random_range(&mut rng, 0..gap_ns));
                let g = Instant::now();
                while g.elapsed() < gap {
                    std::hint::spin_loop();
                }
            }
        },
        || {
            let s = Instant::now();
            let ticket = rt.submit(&t, op.clone())?;
            submit.push(s.elapsed().as_secs_f64() * 1e6);
            ticket.wait()?;
            Ok(())
        },
    )?;
    eprintln!("  submit() itself: p50 {:.2} µs", percentile(&mut submit, 0.5));
    Ok(l)
}

/// Closed-loop throughput of the seed mix: `tenants` tenants, `depth` requests in flight each.
fn saturated(dev: Arc<dyn Device>, persistent: bool, secs: f64, tenants: usize, depth: usize) -> Result<(f64, String)> {
    let rt = Runtime::with_device(dev, mode(persistent))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let tenants: Vec<(Tenant, Vec<Op>)> = (0..tenants)
        .map(|i| -> Result<_> {
            let (m, n, k) = SEED_MIX[i % 3];
            let c = Case::plain(&mut rng, (m, n, k));
            let t = rt.add_tenant(TenantSpec::new(format!("t{i}")).quota(32 << 20))?;
            let (a, b) = (t.upload(&c.a)?, t.upload(&c.b)?);
            let ops = (0..depth)
                .map(|_| -> Result<Op> {
                    let o = t.alloc(c.c0.len())?;
                    Ok(Op::gemm(
                        Mat::new(&a, m as usize, k as usize),
                        Mat::new(&b, k as usize, n as usize),
                        Mat::new(&o, m as usize, n as usize),
                    ))
                })
                .collect::<Result<_>>()?;
            Ok((t, ops))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<(&Tenant, &[Op])> = tenants.iter().map(|(t, ops)| (t, &ops[..])).collect();
    let rate = closed_loop(&rt, &refs, depth, Duration::from_secs_f64(secs))?;
    // Where a request's time went: the median tenant's medians, and the rounds' shapes.
    let median = |mut v: Vec<f64>| percentile(&mut v, 0.5);
    let stats: Vec<_> = tenants.iter().map(|(t, _)| t.stats()).collect();
    let lat = |f: &dyn Fn(&tilemux::runtime::TenantStats) -> f64| median(stats.iter().map(f).collect());
    let rounds = rt.rounds();
    let by_shape: Vec<String> = SEED_MIX
        .iter()
        .enumerate()
        .map(|(j, (m, n, k))| {
            let of: Vec<_> = stats.iter().skip(j).step_by(SEED_MIX.len()).collect();
            let med = |f: &dyn Fn(&tilemux::runtime::TenantStats) -> f64| median(of.iter().map(|s| f(s)).collect());
            format!(
                "{m}×{n}×{k} {} done, queued p50/mean/p99 {:.0}/{:.0}/{:.0} µs, executing {:.0}/{:.0}/{:.0} µs",
                of.iter().map(|s| s.completed).sum::<u64>(),
                med(&|s| s.queue_wait.value_at_quantile(0.5) as f64),
                med(&|s| s.queue_wait.mean()),
                med(&|s| s.queue_wait.value_at_quantile(0.99) as f64),
                med(&|s| s.execution.value_at_quantile(0.5) as f64),
                med(&|s| s.execution.mean()),
                med(&|s| s.execution.value_at_quantile(0.99) as f64),
            )
        })
        .collect();
    eprintln!("  by shape: {}", by_shape.join("; "));
    let mut note = format!(
        "{}: {rate:.0} requests/s; median tenant p50 queued {:.0} µs, executing {:.0} µs",
        if persistent { "persistent" } else { "round per launch" },
        lat(&|s| s.queue_wait.value_at_quantile(0.5) as f64),
        lat(&|s| s.execution.value_at_quantile(0.5) as f64),
    );
    if !rounds.is_empty() {
        let n = rounds.len() as f64;
        note += &format!(
            "; last {} rounds: {:.1} problems, {:.0} tiles, kernel {:.0} µs, round {:.0} µs on average",
            rounds.len(),
            rounds.iter().map(|r| r.problems as f64).sum::<f64>() / n,
            rounds.iter().map(|r| r.tiles as f64).sum::<f64>() / n,
            rounds.iter().map(|r| r.measured.as_secs_f64() * 1e6).sum::<f64>() / n,
            rounds.iter().map(|r| r.total.as_secs_f64() * 1e6).sum::<f64>() / n,
        );
    }
    eprintln!("{note}");
    Ok((rate, note))
}

/// Requests per second when each tenant keeps `depth` requests in flight (cycling through its
/// ops) for `dur`, one thread per tenant; any tenant's error is the result.
pub fn closed_loop(rt: &Runtime, tenants: &[(&Tenant, &[Op])], depth: usize, dur: Duration) -> Result<f64> {
    let start = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = tenants
            .iter()
            .map(|&(t, ops)| {
                let done = &done;
                s.spawn(move || -> Result<()> {
                    let mut q = std::collections::VecDeque::new();
                    let mut j = 0;
                    while start.elapsed() < dur {
                        while q.len() < depth {
                            q.push_back(rt.submit(t, ops[j % ops.len()].clone())?);
                            j += 1;
                        }
                        q.pop_front().expect("queued").wait()?;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    for t in q {
                        t.wait()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("tenant thread")?;
        }
        Ok(())
    })?;
    Ok(done.into_inner() as f64 / start.elapsed().as_secs_f64())
}

/// The device side alone at saturation: one thread keeps `depth` problems of the seed mix in
/// the ring (written straight into it, no runtime) for `secs`; problems per second.
fn bare_saturated(dev: &Arc<dyn Device>, depth: u64, secs: f64) -> Result<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let cases: Vec<Case> = SEED_MIX.iter().map(|&s| Case::plain(&mut rng, s)).collect();
    let pool = dev.pool();
    let mut arena = Arena::new(pool.start, pool.end - pool.start);
    let staged = Staged::new(&**dev, &mut arena, &cases)?;
    // One problem at a time through the chooser and the calibrated cost model, as the runtime's
    // fast path builds them.
    let cost = Runtime::with_device(dev.clone(), RuntimeConfig::default())?.cost_model();
    let problems: Vec<_> = staged
        .descs(&cases)
        .iter()
        .map(|d| TileChooser::persistent().build(&[*d], &[], &cost, dev.slots()).problems[0])
        .collect();
    let kinds: Vec<String> = problems
        .iter()
        .map(|p| format!("{}×{}×{}: {} tiles of {:?}", p.m, p.n, p.k, p.tile_count(), TileKind::from_u32(p.tile_kind)))
        .collect();
    eprintln!("bare ring problems: {}", kinds.join(", "));
    let (ring, engine) = dev.start_persistent(1024, Duration::from_secs(10))?;
    let mut w = RingWriter::new(ring.clone());
    let (start, dur) = (Instant::now(), Duration::from_secs_f64(secs));
    let mut done = 0u64;
    while start.elapsed() < dur {
        loop {
            let p = problems[(w.written() % problems.len() as u64) as usize];
            if w.written() - done >= depth || !w.has_room(&p) {
                break;
            }
            w.write(p);
        }
        w.publish();
        while done < w.written() && ring.is_done(done) {
            done += 1;
        }
        ring.beat(done);
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    let drain = Instant::now();
    while done < w.written() {
        done += u64::from(ring.is_done(done));
        ensure!(drain.elapsed() < Duration::from_secs(10), "the bare ring did not drain");
    }
    ring.request_stop();
    engine.join()?;
    Ok(rate)
}

pub fn run(mut args: DispatchArgs) -> Result<()> {
    if args.quick {
        args.requests = 5000;
        args.seconds = 0.5;
    }
    let gpu = Gpu::open(1 << 30, 128)?;
    let describe = gpu.describe();
    println!("# tilemux bench dispatch\n{describe}");
    let cuda = Arc::new(CudaDevice::new(&CudaConfig { pool_bytes: 2 << 30, ..Default::default() })?);
    let dev: Arc<dyn Device> = cuda.clone();
    // Where the bare ring's time goes on the device, per shape (from the kernel's trace).
    let mut breakdown = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut table = Table::new(&["shape", "variant", "requests", "p50_us", "p99_us", "p999_us", "max_us"]);
    let mut row = |shape: &str, v: &str, mut l: Vec<f64>| {
        table.row(vec![
            shape.into(),
            v.into(),
            l.len().to_string(),
            format!("{:.1}", percentile(&mut l, 0.5)),
            format!("{:.1}", percentile(&mut l, 0.99)),
            format!("{:.1}", percentile(&mut l, 0.999)),
            format!("{:.1}", percentile(&mut l, 1.0)),
        ]);
        eprintln!("{shape} {v}: p50 {:.1} µs, p99 {:.1} µs", percentile(&mut l, 0.5), percentile(&mut l, 0.99));
    };
    // The floor: a doorbell's round trip to one polling warp and back, no work in between.
    let probe = CudaDevice::new(&CudaConfig { pool_bytes: 64 << 20, wide: false, ..Default::default() })?;
    for how in Doorbell::ALL.into_iter().filter(|_| !args.saturated_only) {
        for bytes in [0, size_of::<tilemux::abi::ring::RingSlot>()] {
            row(&format!("echo, {bytes} B payload"), how.label(), echo(&probe, how, bytes, args.requests)?);
        }
    }
    // Ways to poll and answer: several warps a fraction of a round trip apart, the stamped
    // payload polled itself (14 chunks carry 168 bytes beside their stamps), lighter replies.
    let way = |pollers, inline, reply| EchoWay {
        doorbell: Doorbell::HostStore,
        pollers,
        inline,
        reply,
        write: Write::Stamps,
    };
    let ways = [
        (way(1, false, Reply::Relaxed), 0),
        (way(2, false, Reply::Relaxed), 0),
        (way(4, false, Reply::Relaxed), 0),
        (way(1, true, Reply::TwoReleases), 224),
        (way(4, true, Reply::TwoReleases), 224),
        (way(8, true, Reply::TwoReleases), 224),
        (way(4, true, Reply::SysFence), 224),
        (way(4, true, Reply::GpuFence), 224),
        (way(4, true, Reply::Relaxed), 224),
        // The ring's own way: one warp polls a 13-chunk stamped image, or two (the forwarder's
        // window), the answer is one relaxed store.
        (way(1, true, Reply::Relaxed), 16 * tilemux::abi::ring::HOST_SLOT_CHUNKS),
        (way(2, true, Reply::Relaxed), 16 * tilemux::abi::ring::HOST_SLOT_CHUNKS),
        (
            EchoWay { write: Write::TwoCopies, ..way(2, true, Reply::Relaxed) },
            16 * tilemux::abi::ring::HOST_SLOT_CHUNKS,
        ),
        (way(1, true, Reply::Relaxed), 32 * tilemux::abi::ring::HOST_SLOT_CHUNKS),
        // ... its data rewritten too, as the ring's writer does: with ordinary stores (each line
        // read for ownership from under the polling GPU) or non-temporal ones.
        (EchoWay { write: Write::Image, ..way(1, true, Reply::Relaxed) }, 16 * tilemux::abi::ring::HOST_SLOT_CHUNKS),
        (
            EchoWay { write: Write::ImageNonTemporal, ..way(1, true, Reply::Relaxed) },
            16 * tilemux::abi::ring::HOST_SLOT_CHUNKS,
        ),
    ];
    for (w, bytes) in ways.into_iter().filter(|_| !args.saturated_only) {
        row(&format!("echo, {bytes} B payload"), &w.label(), echo(&probe, w, bytes, args.requests)?);
    }
    if !args.saturated_only {
        // Where the forwarder runs: a chain of dependent loads from every SM, one SM at a time.
        let recs = sm_rtt(&probe, 64)?;
        let spread = |ns: &dyn Fn(&tilemux::abi::SmRtt) -> u64| {
            let mut v: Vec<f64> = recs.iter().map(|r| ns(r) as f64).collect();
            let [lo, mid, hi] = [0.0, 0.5, 1.0].map(|q| percentile(&mut v, q));
            format!("min {lo:.0} / median {mid:.0} / max {hi:.0}")
        };
        let best = recs.iter().min_by_key(|r| r.host_ns).map_or(0, |r| r.sm);
        println!(
            "one load's round trip per SM (64 dependent loads each, one SM at a time), ns: host-mapped memory {} (fastest SM {best}); device memory {}",
            spread(&|r| r.host_ns),
            spread(&|r| r.device_ns),
        );
        let per_sm: Vec<String> = recs.iter().map(|r| format!("{}:{}/{}", r.sm, r.host_ns, r.device_ns)).collect();
        println!("  per SM (sm:host/device ns): {}", per_sm.join(" "));
    }
    drop(probe);
    if args.echo_only {
        return table.finish(&format!("{describe}\nTransport probe only.\n"), args.out.as_deref(), "dispatch");
    }
    for (name, shape) in SHAPES.into_iter().filter(|_| !args.saturated_only) {
        let case = Case::plain(&mut rng, shape);
        // cuBLAS: launch + synchronize.
        let pool = gpu.dev.pool();
        let mut arena = Arena::new(pool.start, pool.end - pool.start);
        let staged = Staged::new(&*gpu.dev, &mut arena, std::slice::from_ref(&case))?;
        let desc = staged.descs(std::slice::from_ref(&case))[0];
        let l = lat(args.requests, || {
            // SAFETY: staged device matrices.
            unsafe { gpu.blas.sgemm(&desc)? };
            gpu.stream.sync()?;
            Ok(())
        })?;
        row(name, "cuBLAS launch + sync", l);
        row(name, "runtime, round per launch", runtime_latency(dev.clone(), false, &case, args.requests, 0)?);
        row(name, "runtime, persistent", runtime_latency(dev.clone(), true, &case, args.requests, 0)?);
        // Back to back, the loop settles on a whole number of the forwarder's poll cycles;
        // after a random gap each request meets the cycle at a random phase.
        let gapped = runtime_latency(dev.clone(), true, &case, args.requests, GAP_NS)?;
        row(name, &format!("runtime, persistent, after a random 0–{} µs gap", GAP_NS / 1000), gapped);

        // The bare ring: one problem written and published, its completion word polled; planned
        // as the fast path plans a lone request, and (a GEMV) with the 32-row kind beside it.
        let pool = dev.pool();
        let mut arena = Arena::new(pool.start, pool.end - pool.start);
        let staged = Staged::new(&*dev, &mut arena, std::slice::from_ref(&case))?;
        let desc = staged.descs(std::slice::from_ref(&case))[0];
        let lone = TileChooser::persistent().choose_alone(&desc, None, &CostModel::default(), dev.slots()).kind;
        let mut kinds = vec![lone];
        if lone.is_gemv() && lone != TileKind::Gemv32 {
            kinds.push(TileKind::Gemv32);
        }
        for kind in kinds {
            let p = tilemux::round::Round::planned(desc, kind, 1);
            tilemux::round::check_alone(&p, dev.pool())?;
            // Timed untraced (the trace's timer reads cost each problem about 0.3 µs), then a
            // shorter traced run for where the time goes.
            let bare = |n: usize, traced: bool| -> Result<(Vec<f64>, String)> {
                staged.poison(&*dev, std::slice::from_ref(&case))?;
                let timed = bare_ring_latency(&cuda, p, n, 0, Resident { traced, ..Resident::new() })?;
                let got = staged.read_c(&*dev, std::slice::from_ref(&case))?;
                ensure!(case.error(&got[0], &case.reference()) < 1e-4, "bare ring result wrong ({})", kind.name());
                Ok(timed)
            };
            let (l, _) = bare(args.requests, false)?;
            let (_, trace) = bare((args.requests / 5).max(2000), true)?;
            let label = format!("bare ring (no runtime), {} tiles of {}", p.tile_count(), kind.name());
            row(name, &label, l);
            breakdown.push(format!("{name}, {} (traced run): {trace}", kind.name()));
            eprintln!("{}", breakdown.last().expect("pushed"));
        }
    }
    let (t, d) = (args.tenants, args.depth);
    let (rounds, rounds_note) = saturated(dev.clone(), false, args.seconds, t, d)?;
    let (persistent, persistent_note) = saturated(dev.clone(), true, args.seconds, t, d)?;
    let bare = bare_saturated(&dev, (t * d) as u64, args.seconds)?;
    eprintln!("bare ring, {} in flight: {bare:.0} problems/s", t * d);
    let pre = format!(
        "{describe}\nOne request at a time, closed loop; latency from submit to the result visible on the host (ticket resolved; cuBLAS: stream synchronized).\n\nSaturated throughput, seed mix ({t} tenants, {d} in flight each, {} s): round per launch {rounds:.0} requests/s, persistent {persistent:.0} requests/s ({:.2}x); the bare ring (one thread keeping {} seed-mix problems in it, no runtime) {bare:.0} problems/s.\n\n- {rounds_note}\n- {persistent_note}\n\nBare ring, one request at a time, from the resident kernel's %globaltimer stamps (forwarder saw the publish → forwarded → the CTA of tile 0 found it (after its poll's round trip) → staged its descriptor → finished tile 0 → counted it; the CTA of the tile that finished last: found it, staged, finished, counted it → wrote the completion word):\n\n{}\n",
        args.seconds,
        persistent / rounds,
        t * d,
        breakdown.iter().map(|b| format!("- {b}")).collect::<Vec<_>>().join("\n")
    );
    table.finish(&pre, args.out.as_deref(), "dispatch")
}
