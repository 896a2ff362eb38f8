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
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const SHAPES: [(&str, (u32, u32, u32)); 2] = [("gemv 512x1x512", (512, 1, 512)), ("gemm 256x256x256", (256, 256, 256))];

/// Times `f` `n` times (after 1% warm-up); returns sorted latencies in µs.
fn lat(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..(n / 100).max(10) {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
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

/// One tenant running `case` through a runtime, checked once, then timed one at a time.
fn runtime_latency(dev: Arc<dyn Device>, persistent: bool, case: &Case, n: usize) -> Result<Vec<f64>> {
    let rt = Runtime::with_device(dev, mode(persistent))?;
    let t = rt.add_tenant(TenantSpec::new("one").quota(64 << 20))?;
    let bufs = case.alloc(&t)?;
    case.upload(&bufs)?;
    let op = case.op(&bufs);
    rt.submit(&t, op.clone())?.wait()?;
    let e = case.error(&bufs.c.read()?, &case.reference());
    ensure!(e < 1e-4, "runtime ({}) result wrong: {e:e}", if persistent { "persistent" } else { "rounds" });
    lat(n, || {
        rt.submit(&t, op.clone())?.wait()?;
        Ok(())
    })
}

/// Closed-loop throughput of the seed mix: 24 tenants, 8 requests in flight each.
fn saturated(dev: Arc<dyn Device>, persistent: bool, secs: f64) -> Result<f64> {
    let rt = Runtime::with_device(dev, mode(persistent))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let tenants: Vec<(Tenant, Vec<Op>)> = (0..24)
        .map(|i| -> Result<_> {
            let (m, n, k) = SEED_MIX[i % 3];
            let c = Case::plain(&mut rng, (m, n, k));
            let t = rt.add_tenant(TenantSpec::new(format!("t{i}")).quota(32 << 20))?;
            let (a, b) = (t.upload(&c.a)?, t.upload(&c.b)?);
            let ops = (0..8)
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
    let tenants: Vec<(&Tenant, &[Op])> = tenants.iter().map(|(t, ops)| (t, &ops[..])).collect();
    closed_loop(&rt, &tenants, 8, Duration::from_secs_f64(secs))
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

pub fn run(mut args: DispatchArgs) -> Result<()> {
    if args.quick {
        args.requests = 5000;
        args.seconds = 0.5;
    }
    let gpu = Gpu::open(1 << 30, 128)?;
    let describe = gpu.describe();
    println!("# tilemux bench dispatch\n{describe}");
    let dev: Arc<dyn Device> = Arc::new(CudaDevice::new(&CudaConfig { pool_bytes: 2 << 30, ..Default::default() })?);
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
    for (name, shape) in SHAPES {
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
        row(name, "runtime, round per launch", runtime_latency(dev.clone(), false, &case, args.requests)?);
        row(name, "runtime, persistent", runtime_latency(dev.clone(), true, &case, args.requests)?);

        // The bare ring: one problem written and published, its completion word polled.
        let pool = dev.pool();
        let mut arena = Arena::new(pool.start, pool.end - pool.start);
        let staged = Staged::new(&*dev, &mut arena, std::slice::from_ref(&case))?;
        let chooser = TileChooser::persistent();
        let round = chooser.build(&staged.descs(std::slice::from_ref(&case)), &[], &CostModel::default(), dev.slots());
        tilemux::round::check(&round, dev.pool())?;
        let (ring, engine) = dev.start_persistent(64, Duration::from_secs(10))?;
        let mut w = RingWriter::new(ring.clone(), engine.clone());
        let mut beats = 0;
        let l = lat(args.requests, || {
            let seq = w.write(round.problems[0]);
            w.publish()?;
            while !ring.is_done(seq) {
                std::hint::spin_loop();
            }
            beats += 1;
            if beats % 1000 == 0 {
                engine.beat(beats);
            }
            Ok(())
        });
        engine.request_stop();
        engine.join()?;
        let got = staged.read_c(&*dev, std::slice::from_ref(&case))?;
        ensure!(case.error(&got[0], &case.reference()) < 1e-4, "bare ring result wrong");
        row(name, "bare ring (no runtime)", l?);
    }
    let rounds = saturated(dev.clone(), false, args.seconds)?;
    let persistent = saturated(dev.clone(), true, args.seconds)?;
    let pre = format!(
        "{describe}\nOne request at a time, closed loop; latency from submit to the result visible on the host (ticket resolved; cuBLAS: stream synchronized).\n\nSaturated throughput, seed mix (24 tenants, 8 in flight each, {} s): round per launch {rounds:.0} requests/s, persistent {persistent:.0} requests/s ({:.2}x).\n",
        args.seconds,
        persistent / rounds
    );
    table.finish(&pre, args.out.as_deref(), "dispatch")
}
