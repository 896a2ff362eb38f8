//! `tilemux bench latency`: open-loop Poisson arrivals from tenants of mixed shapes at fractions
//! of tilemux's measured capacity. Per-tenant p50/p99/p99.9 and the spread between the fastest
//! and slowest tenant's p99, for tilemux (EDF and fair share) against one stream per tenant and
//! serial launches; then a noisy neighbour whose rate goes ×10.
//!
//! Latency is measured from a request's scheduled arrival to its completion, so a generator that
//! falls behind counts against the variant, as it would for a real client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use tilemux::Device;
use tilemux::cuda::cublas::Cublas;
use tilemux::cuda::{CudaConfig, CudaDevice, Stream};
use tilemux::reference::{Case, SEED_MIX, Staged};
use tilemux::runtime::{Buffer, Mat, Op, Policy, Runtime, RuntimeConfig, Tenant, TenantSpec};

use crate::gpu::{Gpu, percentile};
use crate::plot::{self, Series};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    /// Tenants (round-robin over the seed mix's shapes).
    #[arg(long, default_value_t = 24)]
    pub tenants: usize,
    /// Seconds of arrivals per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Offered load as fractions of tilemux's measured capacity.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.3, 0.6, 0.9])]
    pub loads: Vec<f64>,
    /// Smoke run: one load, 1 s.
    #[arg(long)]
    pub quick: bool,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Latency targets per shape for EDF (a few times each shape's time alone on the GPU).
fn slo(shape: (u32, u32, u32)) -> Duration {
    match shape.1 {
        1 => Duration::from_micros(500),
        128 => Duration::from_millis(2),
        _ => Duration::from_millis(1),
    }
}

/// Per-tenant latencies (µs) of one measurement, and requests not finished within the drain cap.
struct Outcome {
    per_tenant: Vec<Vec<f64>>,
    unfinished: usize,
}

/// Arrival offsets of a Poisson process of `rate` per second over `secs`.
fn arrivals(rate: f64, secs: f64, seed: u64) -> Vec<Duration> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exp = Exp::new(rate.max(1e-9)).expect("positive rate");
    let mut t = 0.0;
    let mut v = Vec::new();
    loop {
        t += exp.sample(&mut rng);
        if t >= secs {
            return v;
        }
        v.push(Duration::from_secs_f64(t));
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One tenant of the runtime variants: weights, input, a ring of outputs.
struct RtTenant {
    t: Tenant,
    ops: Vec<Op>,
}

fn rt_tenants(rt: &Runtime, cases: &[Case], slos: bool) -> Result<Vec<RtTenant>> {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut spec = TenantSpec::new(format!("t{i}")).quota(64 << 20).max_pending(1 << 16);
            if slos {
                spec = spec.slo(slo((c.m, c.n, c.k)));
            }
            let t = rt.add_tenant(spec)?;
            let (a, b) = (t.upload(&c.a)?, t.upload(&c.b)?);
            let ops = (0..32)
                .map(|_| -> Result<Op> {
                    let out: Buffer = t.alloc(c.c0.len())?;
                    Ok(Op::gemm(
                        Mat::new(&a, c.m as usize, c.k as usize),
                        Mat::new(&b, c.k as usize, c.n as usize),
                        Mat::new(&out, c.m as usize, c.n as usize),
                    ))
                })
                .collect::<Result<_>>()?;
            Ok(RtTenant { t, ops })
        })
        .collect()
}

/// Open-loop run through the runtime: per tenant a generator (submits at its arrival times)
/// and a collector (waits the tickets in order).
fn run_runtime(rt: &Runtime, ts: &[RtTenant], rates: &[f64], secs: f64) -> Result<Outcome> {
    let start = Instant::now() + Duration::from_millis(20);
    let per_tenant = std::thread::scope(|s| -> Result<Vec<Vec<f64>>> {
        let hs: Vec<_> = ts
            .iter()
            .zip(rates)
            .enumerate()
            .map(|(i, (t, &rate))| {
                let (tx, rx) = mpsc::channel();
                let arr = arrivals(rate, secs, 1000 + i as u64);
                s.spawn(move || -> Result<()> {
                    for (j, off) in arr.into_iter().enumerate() {
                        let at = start + off;
                        sleep_until(at);
                        let sub = Instant::now();
                        tx.send((at, sub, rt.submit(&t.t, t.ops[j % t.ops.len()].clone())?))?;
                    }
                    Ok(())
                });
                s.spawn(move || -> Result<Vec<f64>> {
                    let mut lat = Vec::new();
                    for (at, sub, ticket) in rx {
                        let d = ticket.wait()?;
                        lat.push(((sub - at) + d.queued + d.executed).as_secs_f64() * 1e6);
                    }
                    Ok(lat)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("collector")).collect()
    })?;
    Ok(Outcome { per_tenant, unfinished: 0 })
}

/// Open-loop run through cuBLAS: `workers` threads, each with its own stream and handle;
/// tenant `i` is served by worker `i % workers` in arrival order (one worker: serial; one per
/// tenant: a stream per tenant). Requests still queued `drain` after the last arrival are
/// abandoned and counted as unfinished.
fn run_cublas(
    gpu: &Gpu,
    descs: &[tilemux::abi::ProblemDesc],
    rates: &[f64],
    secs: f64,
    workers: usize,
    drain: Duration,
) -> Result<Outcome> {
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs_f64(secs) + drain;
    let n = descs.len();
    let (res_tx, res_rx) = mpsc::channel::<(usize, f64)>();
    let mut unfinished = 0;
    std::thread::scope(|s| -> Result<()> {
        let mut txs = Vec::new();
        let mut hs = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel::<(usize, Instant)>();
            txs.push(tx);
            let res_tx = res_tx.clone();
            let g = gpu.dev.gpu().clone();
            hs.push(s.spawn(move || -> Result<usize> {
                g.bind()?;
                let stream = Stream::new()?;
                let blas = Cublas::new(&g, &stream)?;
                let mut left = 0;
                for (i, at) in rx {
                    if Instant::now() > deadline {
                        left += 1;
                        continue;
                    }
                    // SAFETY: staged device matrices of tenant i.
                    unsafe { blas.sgemm(&descs[i])? };
                    stream.sync()?;
                    let _ = res_tx.send((i, at.elapsed().as_secs_f64() * 1e6));
                }
                Ok(left)
            }));
        }
        drop(res_tx);
        let gens: Vec<_> = (0..n)
            .map(|i| {
                let tx = txs[i % workers].clone();
                let arr = arrivals(rates[i], secs, 1000 + i as u64);
                s.spawn(move || {
                    for off in arr {
                        let at = start + off;
                        sleep_until(at);
                        let _ = tx.send((i, at));
                    }
                })
            })
            .collect();
        drop(txs);
        for g in gens {
            g.join().expect("generator");
        }
        for h in hs {
            unfinished += h.join().expect("worker")?;
        }
        Ok(())
    })?;
    let mut per_tenant = vec![Vec::new(); n];
    for (i, us) in res_rx {
        per_tenant[i].push(us);
    }
    Ok(Outcome { per_tenant, unfinished })
}

fn summarize(o: &mut Outcome) -> (Vec<(f64, f64, f64)>, f64) {
    let ps: Vec<(f64, f64, f64)> =
        o.per_tenant.iter_mut().map(|v| (percentile(v, 0.5), percentile(v, 0.99), percentile(v, 0.999))).collect();
    let p99s: Vec<f64> = ps.iter().map(|p| p.1).filter(|p| p.is_finite()).collect();
    let spread = p99s.iter().copied().fold(0.0, f64::max) / p99s.iter().copied().fold(f64::INFINITY, f64::min);
    (ps, spread)
}

pub fn run(mut args: LatencyArgs) -> Result<()> {
    if args.quick {
        args.loads = vec![0.5];
        args.seconds = 1.0;
    }
    let gpu = Gpu::open(4 << 30, 128)?;
    let describe = gpu.describe();
    println!("# tilemux bench latency\n{describe}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let shapes: Vec<(u32, u32, u32)> = (0..args.tenants).map(|i| SEED_MIX[i % SEED_MIX.len()]).collect();
    let cases: Vec<Case> = shapes.iter().map(|&s| Case::plain(&mut rng, s)).collect();
    let pool = gpu.dev.pool();
    let mut arena = tilemux::memory::Arena::new(pool.start, pool.end - pool.start);
    let staged = Staged::new(&*gpu.dev, &mut arena, &cases)?;
    let descs = staged.descs(&cases);
    let rt_dev: Arc<dyn Device> = Arc::new(CudaDevice::new(&CudaConfig { pool_bytes: 4 << 30, ..Default::default() })?);
    let runtime = |policy| Runtime::with_device(rt_dev.clone(), RuntimeConfig { policy, ..Default::default() });
    let persistent = || {
        Runtime::with_device(
            rt_dev.clone(),
            RuntimeConfig {
                policy: Policy::FairShare,
                mode: tilemux::runtime::Mode::Persistent(Default::default()),
                ..Default::default()
            },
        )
    };

    // Capacity: closed loop, every tenant keeping 8 requests in flight, 1 s.
    let capacity = {
        let rt = runtime(Policy::FairShare)?;
        let ts = rt_tenants(&rt, &cases, false)?;
        let start = Instant::now();
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in &ts {
                let (rt, done) = (&rt, &done);
                s.spawn(move || -> Result<()> {
                    let mut q = std::collections::VecDeque::new();
                    let mut j = 0;
                    while start.elapsed() < Duration::from_secs(1) {
                        while q.len() < 8 {
                            q.push_back(rt.submit(&t.t, t.ops[j % t.ops.len()].clone())?);
                            j += 1;
                        }
                        q.pop_front().expect("queued").wait()?;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    for t in q {
                        t.wait()?;
                    }
                    Ok(())
                });
            }
        });
        done.into_inner() as f64 / start.elapsed().as_secs_f64()
    };
    println!("tilemux capacity (closed loop, 8 in flight per tenant): {capacity:.0} requests/s");

    let mut table = Table::new(&["load", "variant", "tenant", "shape", "p50_us", "p99_us", "p999_us"]);
    let mut summary =
        Table::new(&["load", "variant", "median_p99_us", "worst_p99_us", "spread_p99_max_over_min", "unfinished"]);
    let mut cdf: Vec<Series> = Vec::new();
    let variants =
        ["tilemux EDF", "tilemux fair share", "tilemux persistent (fair share)", "stream per tenant", "serial"];
    for &load in &args.loads {
        let rates = vec![load * capacity / args.tenants as f64; args.tenants];
        for v in variants {
            let mut o = match v {
                "tilemux EDF" | "tilemux fair share" => {
                    let edf = v == "tilemux EDF";
                    let rt = runtime(if edf { Policy::Edf } else { Policy::FairShare })?;
                    let ts = rt_tenants(&rt, &cases, edf)?;
                    run_runtime(&rt, &ts, &rates, args.seconds)?
                }
                "tilemux persistent (fair share)" => {
                    let rt = persistent()?;
                    let ts = rt_tenants(&rt, &cases, false)?;
                    run_runtime(&rt, &ts, &rates, args.seconds)?
                }
                "stream per tenant" => {
                    run_cublas(&gpu, &descs, &rates, args.seconds, args.tenants, Duration::from_secs(5))?
                }
                _ => run_cublas(&gpu, &descs, &rates, args.seconds, 1, Duration::from_secs(5))?,
            };
            let (ps, spread) = summarize(&mut o);
            for (i, p) in ps.iter().enumerate() {
                let s = shapes[i];
                table.row(vec![
                    format!("{load:.1}"),
                    v.into(),
                    i.to_string(),
                    format!("{}x{}x{}", s.0, s.1, s.2),
                    format!("{:.0}", p.0),
                    format!("{:.0}", p.1),
                    format!("{:.0}", p.2),
                ]);
            }
            let mut p99s: Vec<f64> = ps.iter().map(|p| p.1).collect();
            summary.row(vec![
                format!("{load:.1}"),
                v.into(),
                format!("{:.0}", percentile(&mut p99s, 0.5)),
                format!("{:.0}", percentile(&mut p99s, 1.0)),
                format!("{spread:.2}"),
                o.unfinished.to_string(),
            ]);
            if (load - args.loads[args.loads.len() / 2]).abs() < 1e-9 {
                let mut all: Vec<f64> = o.per_tenant.concat();
                all.sort_by(|a, b| a.total_cmp(b));
                let n = all.len().max(1) as f64;
                let pts = (0..=200)
                    .map(|q| q as f64 / 200.0)
                    .map(|q| (all.get(((n - 1.0) * q) as usize).copied().unwrap_or(f64::NAN), q))
                    .collect();
                cdf.push(Series { name: v.into(), points: pts });
            }
            eprintln!("load {load:.1} {v}: p99 spread {spread:.2}");
        }
    }

    // Noisy neighbour: tenant 0's rate ×10 at 30% load.
    let mut noisy = Table::new(&["variant", "tenant", "shape", "p99_before_us", "p99_after_us"]);
    let base = vec![0.3 * capacity / args.tenants as f64; args.tenants];
    let mut loud = base.clone();
    loud[0] *= 10.0;
    for v in ["tilemux EDF", "tilemux fair share", "tilemux persistent (fair share)", "stream per tenant"] {
        let mut before_after = Vec::new();
        for rates in [&base, &loud] {
            let mut o = match v {
                "stream per tenant" => {
                    run_cublas(&gpu, &descs, rates, args.seconds, args.tenants, Duration::from_secs(5))?
                }
                "tilemux persistent (fair share)" => {
                    let rt = persistent()?;
                    let ts = rt_tenants(&rt, &cases, false)?;
                    run_runtime(&rt, &ts, rates, args.seconds)?
                }
                _ => {
                    let edf = v == "tilemux EDF";
                    let rt = runtime(if edf { Policy::Edf } else { Policy::FairShare })?;
                    let ts = rt_tenants(&rt, &cases, edf)?;
                    run_runtime(&rt, &ts, rates, args.seconds)?
                }
            };
            before_after.push(summarize(&mut o).0);
        }
        for i in 1..args.tenants {
            let s = shapes[i];
            noisy.row(vec![
                v.into(),
                i.to_string(),
                format!("{}x{}x{}", s.0, s.1, s.2),
                format!("{:.0}", before_after[0][i].1),
                format!("{:.0}", before_after[1][i].1),
            ]);
        }
    }
    ensure!(capacity > 0.0, "no capacity measured");
    let pre = format!(
        "{describe}\n{} tenants round-robin over 512x1x512, 256x128x1152, 256x256x256; Poisson arrivals, {} s per measurement; tilemux capacity {capacity:.0} requests/s. EDF SLOs: GEMV 0.5 ms, conv 2 ms, square 1 ms. Baselines abandon requests still queued 5 s after the last arrival (unfinished).\n\n## Summary\n\n{}\n## Noisy neighbour (tenant 0 at 10x its rate, 30% load)\n\n{}\n## Per tenant\n",
        args.tenants,
        args.seconds,
        summary.markdown(),
        noisy.markdown()
    );
    table.finish(&pre, args.out.as_deref(), "latency")?;
    if let Some(dir) = &args.out {
        plot::lines(
            &dir.join("latency-cdf.png"),
            "latency CDF (all tenants, middle load)",
            "latency (µs)",
            "fraction",
            &cdf,
            true,
        )?;
    }
    Ok(())
}
