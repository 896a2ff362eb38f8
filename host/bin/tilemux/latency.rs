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
use tilemux::cuda::{CudaConfig, CudaDevice, Stream};
use tilemux::reference::{Case, SEED_MIX, Staged};
use tilemux::runtime::{Buffer, Mat, Op, Policy, Runtime, RuntimeConfig, Tenant, TenantSpec};

use crate::dispatch;
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

/// Every tenant's Poisson arrivals merged into one schedule `(offset, tenant)`.
fn schedule(rates: &[f64], secs: f64) -> Vec<(Duration, usize)> {
    let mut v: Vec<(Duration, usize)> = rates
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > 0.0)
        .flat_map(|(i, &r)| arrivals(r, secs, 1000 + i as u64).into_iter().map(move |t| (t, i)))
        .collect();
    v.sort();
    v
}

/// Waits until `t`: sleeps while it is far, spins the last 50 µs (arrivals must be on time).
fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        if t - now > Duration::from_micros(200) {
            std::thread::sleep(t - now - Duration::from_micros(150));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Open-loop run through the runtime: one thread submits the merged schedule on time, one
/// collects. A request's latency is its submission delay (behind its scheduled arrival) plus
/// the runtime's own submit-to-completion timestamps, so the collector may be lazy.
fn run_runtime(rt: &Runtime, ts: &[RtTenant], rates: &[f64], secs: f64) -> Result<Outcome> {
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, rx) = mpsc::channel();
    let per_tenant = std::thread::scope(|s| -> Result<Vec<Vec<f64>>> {
        let collector = s.spawn(move || -> Result<Vec<Vec<f64>>> {
            let mut lat = vec![Vec::new(); ts.len()];
            let mut open: Vec<(usize, Duration, tilemux::runtime::Ticket<tilemux::runtime::Done>)> = Vec::new();
            let mut connected = true;
            while connected || !open.is_empty() {
                loop {
                    match rx.try_recv() {
                        Ok(x) => open.push(x),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            connected = false;
                            break;
                        }
                    }
                }
                let mut i = 0;
                while i < open.len() {
                    if open[i].2.is_done() {
                        let (t, late, ticket) = open.swap_remove(i);
                        let d = ticket.wait()?;
                        lat[t].push((late + d.queued + d.executed).as_secs_f64() * 1e6);
                    } else {
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(lat)
        });
        // SUBMITTERS threads, each owning every SUBMITTERS-th tenant's arrivals.
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|k| {
                let tx = tx.clone();
                let mine: Vec<f64> =
                    rates.iter().enumerate().map(|(i, &r)| if i % SUBMITTERS == k { r } else { 0.0 }).collect();
                s.spawn(move || -> Result<()> {
                    let mut counters = vec![0usize; ts.len()];
                    for (off, i) in schedule(&mine, secs) {
                        let at = start + off;
                        wait_until(at);
                        let late = at.elapsed();
                        let t = &ts[i];
                        let op = t.ops[counters[i] % t.ops.len()].clone();
                        counters[i] += 1;
                        tx.send((i, late, rt.submit(&t.t, op)?))?;
                    }
                    Ok(())
                })
            })
            .collect();
        drop(tx);
        for h in submitters {
            h.join().expect("submitter")?;
        }
        collector.join().expect("collector")
    })?;
    Ok(Outcome { per_tenant, unfinished: 0 })
}

/// Threads that submit (runtime) or dispatch (cuBLAS) arrivals: enough for the offered rates,
/// few enough to leave the runtime's threads their cores.
const SUBMITTERS: usize = 4;

/// Open-loop run through cuBLAS, driven as a server with `shards` dispatcher threads would
/// drive streams: each thread owns every `shards`-th tenant, its own cuBLAS handle and its
/// streams (one per tenant, or a single one); an arrival is launched on its stream with an
/// event behind it, and completions are found by polling each stream's oldest event. Requests
/// unfinished `drain` after the last arrival are counted, not waited for.
fn run_cublas(
    gpu: &Gpu,
    descs: &[tilemux::abi::ProblemDesc],
    rates: &[f64],
    secs: f64,
    shards: usize,
    per_tenant_streams: bool,
    drain: Duration,
) -> Result<Outcome> {
    let start = Instant::now() + Duration::from_millis(50);
    let g = gpu.dev.gpu().clone();
    let outs = std::thread::scope(|s| -> Result<Vec<(Vec<Vec<f64>>, usize)>> {
        let hs: Vec<_> = (0..shards)
            .map(|k| {
                let mine: Vec<f64> =
                    rates.iter().enumerate().map(|(i, &r)| if i % shards == k { r } else { 0.0 }).collect();
                let g = g.clone();
                s.spawn(move || dispatch_shard(g, descs, &mine, start, secs, per_tenant_streams, drain))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("dispatcher")).collect()
    })?;
    let mut per_tenant = vec![Vec::new(); descs.len()];
    let mut unfinished = 0;
    for (lat, u) in outs {
        unfinished += u;
        for (i, v) in lat.into_iter().enumerate() {
            per_tenant[i].extend(v);
        }
    }
    Ok(Outcome { per_tenant, unfinished })
}

type EventQueue = std::collections::VecDeque<(usize, Instant, cudarc::driver::sys::CUevent)>;

/// One dispatcher thread of [`run_cublas`].
fn dispatch_shard(
    g: Arc<tilemux::cuda::Gpu>,
    descs: &[tilemux::abi::ProblemDesc],
    rates: &[f64],
    start: Instant,
    secs: f64,
    per_tenant_streams: bool,
    drain: Duration,
) -> Result<(Vec<Vec<f64>>, usize)> {
    use cudarc::driver::sys;
    g.bind()?;
    let nstreams = if per_tenant_streams { descs.len() } else { 1 };
    let ss: Vec<Stream> = (0..nstreams).map(|_| Stream::new()).collect::<Result<_, _>>()?;
    let blas = tilemux::cuda::cublas::Cublas::new(&g, &ss[0])?;
    let mut pool: Vec<sys::CUevent> = Vec::new();
    let fresh = || -> Result<sys::CUevent> {
        let mut e = std::ptr::null_mut();
        // SAFETY: context bound; timing disabled (cheaper record/query).
        unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32) }.result()?;
        Ok(e)
    };
    let sched = schedule(rates, secs);
    let deadline = start + Duration::from_secs_f64(secs) + drain;
    let mut open: Vec<EventQueue> = vec![Default::default(); nstreams];
    let mut lat = vec![Vec::new(); descs.len()];
    let mut next = 0;
    let poll = |open: &mut Vec<EventQueue>, lat: &mut Vec<Vec<f64>>, pool: &mut Vec<sys::CUevent>| {
        for q in open.iter_mut() {
            while let Some(&(t, at, e)) = q.front() {
                // SAFETY: a recorded event of this context.
                if unsafe { sys::cuEventQuery(e) } != sys::CUresult::CUDA_SUCCESS {
                    break;
                }
                lat[t].push(at.elapsed().as_secs_f64() * 1e6);
                pool.push(e);
                q.pop_front();
            }
        }
    };
    loop {
        if next < sched.len() && Instant::now() >= start + sched[next].0 {
            let (off, t) = sched[next];
            next += 1;
            let si = if per_tenant_streams { t } else { 0 };
            blas.set_stream(&ss[si])?;
            // SAFETY: staged device matrices of tenant t.
            unsafe { blas.sgemm(&descs[t])? };
            let e = match pool.pop() {
                Some(e) => e,
                None => fresh()?,
            };
            // SAFETY: valid event and stream.
            unsafe { sys::cuEventRecord(e, ss[si].raw()) }.result()?;
            open[si].push_back((t, start + off, e));
            continue;
        }
        poll(&mut open, &mut lat, &mut pool);
        let pending: usize = open.iter().map(|q| q.len()).sum();
        if next == sched.len() && (pending == 0 || Instant::now() > deadline) {
            for s in &ss {
                s.sync()?;
            }
            for e in pool.into_iter().chain(open.into_iter().flatten().map(|x| x.2)) {
                // SAFETY: events of this context with no pending record.
                unsafe { sys::cuEventDestroy_v2(e) };
            }
            return Ok((lat, pending));
        }
        if next < sched.len() && start + sched[next].0 > Instant::now() + Duration::from_micros(200) {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
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
        let ts: Vec<(&Tenant, &[Op])> = ts.iter().map(|t| (&t.t, &t.ops[..])).collect();
        dispatch::closed_loop(&rt, &ts, 8, Duration::from_secs(1))?
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
                    run_cublas(&gpu, &descs, &rates, args.seconds, SUBMITTERS, true, Duration::from_secs(5))?
                }
                _ => run_cublas(&gpu, &descs, &rates, args.seconds, 1, false, Duration::from_secs(5))?,
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
                    run_cublas(&gpu, &descs, rates, args.seconds, SUBMITTERS, true, Duration::from_secs(5))?
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
