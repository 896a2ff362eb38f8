//! `tilemux demo`: N tenants run the seed workloads (RNN-cell GEMVs, ResNet-18 conv2_2 GEMMs,
//! square GEMMs) from their own threads, first space-time multiplexed (all at once), then
//! tenant after tenant (time-only), and the two are compared.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use tilemux::Backend;
use tilemux::runtime::{Buffer, Mat, Op, Runtime, RuntimeConfig, Tenant, TenantSpec, Ticket};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Tenants (models), each with its own thread and weights.
    #[arg(long, default_value_t = 12)]
    pub tenants: usize,
    /// Seconds for each phase (multiplexed, then one tenant at a time).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Requests each tenant keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Backend: auto (GPU if usable), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

/// A tenant's model: one layer of a seed workload.
#[derive(Clone, Copy, Debug)]
enum Model {
    /// RNN cell, hidden 512: `h = relu(W·x + b)`, a 512×1×512 GEMV.
    Rnn,
    /// ResNet-18 conv2_2 as a GEMM: 256×128×1152, bias per output channel, ReLU.
    Conv,
    /// A 256³ dense layer.
    Square,
}

impl Model {
    fn dims(self) -> (usize, usize, usize) {
        match self {
            Model::Rnn => (512, 1, 512),
            Model::Conv => (256, 128, 1152),
            Model::Square => (256, 256, 256),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Model::Rnn => "rnn512",
            Model::Conv => "conv2_2",
            Model::Square => "square256",
        }
    }
}

fn random(n: usize) -> Vec<f32> {
    let mut rng = rand::rng();
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One tenant: its model, weights and `window` input/output sets.
struct Seat {
    model: Model,
    tenant: Tenant,
    ops: Vec<Op>,
    outs: Vec<Buffer>,
}

fn setup(rt: &Runtime, i: usize, model: Model, window: usize) -> Result<Seat> {
    let (m, n, k) = model.dims();
    let quota = ((m * k + m + window * (k * n + m * n)) * 4 + (1 << 20)) as u64;
    let tenant = rt.add_tenant(TenantSpec::new(format!("{}-{i}", model.name())).quota(quota * 2))?;
    let w = tenant.upload(&random(m * k))?;
    let bias = tenant.upload(&random(m))?;
    let mut ops = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..window {
        let x = tenant.upload(&random(k * n))?;
        let y = tenant.alloc(m * n)?;
        ops.push(Op::gemm(Mat::new(&w, m, k), Mat::new(&x, k, n), Mat::new(&y, m, n)).bias_rows(&bias, 0).relu());
        outs.push(y);
    }
    Ok(Seat { model, tenant, ops, outs })
}

#[derive(Default)]
struct Outcome {
    requests: u64,
    flops: f64,
    latency: Option<Histogram<u64>>,
}

/// Runs `model`'s tenant until `stop`, `window` requests in flight; returns what it did.
fn drive(rt: &Runtime, t: &Seat, stop: &AtomicBool, total: &AtomicU64) -> Result<Outcome> {
    let (m, n, k) = t.model.dims();
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut inflight: std::collections::VecDeque<(usize, Instant, Ticket<tilemux::runtime::Done>)> = Default::default();
    let mut count = 0u64;
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) || !inflight.is_empty() {
        if !stop.load(Ordering::Relaxed) && inflight.len() < t.ops.len() {
            let slot = next % t.ops.len();
            next += 1;
            inflight.push_back((slot, Instant::now(), rt.submit(&t.tenant, t.ops[slot].clone())?));
            continue;
        }
        let (_, start, ticket) = inflight.pop_front().expect("non-empty");
        ticket.wait()?;
        lat.saturating_record(start.elapsed().as_micros() as u64);
        count += 1;
        total.fetch_add(1, Ordering::Relaxed);
    }
    // The outputs are real: spot-check one is finite and ReLU'd.
    let y = t.outs[0].read()?;
    anyhow::ensure!(y.iter().all(|v| v.is_finite() && *v >= 0.0), "{}: bad output", t.tenant.name());
    Ok(Outcome { requests: count, flops: count as f64 * 2.0 * (m * n * k) as f64, latency: Some(lat) })
}

fn bar(seconds: f64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new((seconds * 10.0) as u64);
    pb.set_style(ProgressStyle::with_template("{prefix:>14} [{bar:40}] {elapsed:>3} {msg}").expect("template"));
    pb.set_prefix(label.to_string());
    pb
}

/// Ticks the bar while `f` runs, showing requests/s from `total`.
fn with_progress<T>(seconds: f64, label: &str, total: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let pb = bar(seconds, label);
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                pb.set_position(((start.elapsed().as_secs_f64()) * 10.0) as u64);
                let rate = total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
                pb.set_message(format!("{rate:>9.0} requests/s"));
            }
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        r
    });
    pb.finish();
    out
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let backend = match args.backend.as_str() {
        "cpu" => Backend::Cpu,
        "cuda" | "gpu" => Backend::Cuda,
        _ => Backend::Auto,
    };
    let models = [Model::Rnn, Model::Conv, Model::Square];
    let budget: usize = 64 << 20;
    let rt = Runtime::new(RuntimeConfig {
        backend,
        memory_budget: budget * args.tenants + (256 << 20),
        ..Default::default()
    })?;
    println!(
        "tilemux demo on {} ({:?} backend), {} tenants, {} s per phase",
        rt.device_name(),
        rt.backend(),
        args.tenants,
        args.seconds
    );
    let tenants: Vec<Seat> =
        (0..args.tenants).map(|i| setup(&rt, i, models[i % models.len()], args.window)).collect::<Result<_>>()?;

    // Phase 1: every tenant at once, merged into shared rounds.
    let total = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let shared: Vec<Outcome> = with_progress(args.seconds, "space-time", &total, || {
        std::thread::scope(|s| {
            let hs: Vec<_> = tenants.iter().map(|t| s.spawn(|| drive(&rt, t, &stop, &total))).collect();
            std::thread::sleep(Duration::from_secs_f64(args.seconds));
            stop.store(true, Ordering::Relaxed);
            hs.into_iter().map(|h| h.join().expect("tenant thread")).collect::<Result<Vec<_>>>()
        })
    })?;
    let shared_time = start.elapsed().as_secs_f64();

    // Phase 2: the same tenants one after another (time-only multiplexing), same total time.
    let total = AtomicU64::new(0);
    let slice = args.seconds / args.tenants as f64;
    let start = Instant::now();
    let alone: Vec<Outcome> = with_progress(args.seconds, "one at a time", &total, || {
        tenants
            .iter()
            .map(|t| {
                let stop = AtomicBool::new(false);
                std::thread::scope(|s| {
                    let h = s.spawn(|| drive(&rt, t, &stop, &total));
                    std::thread::sleep(Duration::from_secs_f64(slice));
                    stop.store(true, Ordering::Relaxed);
                    h.join().expect("tenant thread")
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let alone_time = start.elapsed().as_secs_f64();

    println!("\n| tenant | space-time req/s | GFLOP/s | p50 | p99 | alone req/s (in its slice) | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    let ms = |h: &Option<Histogram<u64>>, q: f64| h.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3);
    for (t, (s, a)) in tenants.iter().zip(shared.iter().zip(&alone)) {
        println!(
            "| {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms |",
            t.tenant.name(),
            s.requests as f64 / shared_time,
            s.flops / shared_time / 1e9,
            ms(&s.latency, 0.5),
            ms(&s.latency, 0.99),
            a.requests as f64 / slice,
            ms(&a.latency, 0.5),
            ms(&a.latency, 0.99),
        );
    }
    let (sf, af): (f64, f64) = (shared.iter().map(|o| o.flops).sum(), alone.iter().map(|o| o.flops).sum());
    let (sr, ar): (u64, u64) = (shared.iter().map(|o| o.requests).sum(), alone.iter().map(|o| o.requests).sum());
    println!(
        "\nall tenants: space-time {:.0} req/s ({:.1} GFLOP/s) vs one-at-a-time {:.0} req/s ({:.1} GFLOP/s): {:.2}x",
        sr as f64 / shared_time,
        sf / shared_time / 1e9,
        ar as f64 / alone_time,
        af / alone_time / 1e9,
        (sf / shared_time) / (af / alone_time)
    );
    let rounds = rt.rounds();
    if let Some(r) = rounds.last() {
        println!(
            "last round: {} problems from {} tenants, {} tiles, predicted {:?}, measured {:?}",
            r.problems,
            r.tenants.len(),
            r.tiles,
            r.predicted,
            r.measured
        );
    }
    Ok(())
}
