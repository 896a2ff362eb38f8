//! `tilemux`: the demo (the README's first command) and the benchmark suite.

mod baselines;
mod demo;
mod dispatch;
mod gpu;
mod kernel;
mod latency;
mod mps;
mod plot;
mod report;
mod scale;
mod tenants;
mod tune;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Space-time multiplexing of many tenants' GEMMs on one GPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tenants with the seed workloads on their own threads: space-time multiplexed, then one
    /// at a time; prints per-tenant throughput and latency (GPU if present, else the CPU).
    Demo(demo::DemoArgs),
    /// Print the backend that would run, the device and the megakernel's resources.
    Info,
    /// Benchmarks (GPU).
    #[command(subcommand)]
    Bench(Bench),
    /// Redraw a `bench seed` / `bench mix` table's charts from its CSV.
    Plot(tenants::PlotArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Raw megakernel vs cublasSgemmBatched / cublasSgemmGroupedBatched on the seed shapes.
    Kernel(kernel::KernelArgs),
    /// The poster's table: R tenants of one seed shape; tilemux vs time-only, space-only, cuBLAS.
    Seed(tenants::TableArgs),
    /// Heterogeneous tenants (seed shapes and random ones): tilemux vs grouped, streams, serial.
    Mix(tenants::TableArgs),
    /// 1 to 1000 tenants: memory per tenant and throughput, tilemux vs a context per tenant.
    Scale(scale::ScaleArgs),
    /// Open-loop Poisson arrivals at 30/60/90% of capacity: per-tenant tail latency; noisy
    /// neighbour.
    Latency(latency::LatencyArgs),
    /// Every tile kind and k-split (and stream-K recut) for one shape next to cuBLAS; can write
    /// the tuning table.
    Tune(tune::TuneArgs),
    /// Submit-to-result latency of single requests: persistent vs round mode vs cuBLAS; and
    /// saturated throughput, persistent vs round mode.
    Dispatch(dispatch::DispatchArgs),
    /// (internal) An MPS client process driven by `bench seed`.
    #[command(hide = true)]
    MpsClient(mps::ClientArgs),
}

fn info() -> Result<()> {
    println!("PTX: {} ({})", tilemux::cuda::PTX_SOURCE, tilemux::cuda::PTX_TARGET);
    match tilemux::cuda::CudaDevice::new(&tilemux::cuda::CudaConfig { pool_bytes: 1 << 26, ..Default::default() }) {
        Ok(d) => {
            let k = d.kernel();
            println!("backend: CUDA on {}", d.gpu().name);
            println!(
                "megakernel: {} registers, {} B local, {} B shared, {} CTAs/SM, grid {}",
                k.registers, k.local_bytes, k.smem_bytes, k.ctas_per_sm, k.grid
            );
            println!("JIT log:\n{}", k.jit_log());
            if let Some(w) = &k.wide {
                println!(
                    "wide build: {} registers, {} B local, {} CTA/SM, grid {}",
                    w.registers, w.local_bytes, w.ctas_per_sm, w.grid
                );
                println!("JIT log:\n{}", w.jit_log());
            }
        }
        Err(e) => println!("backend: CPU ({e})"),
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Demo(a) => demo::run(&a),
        Cmd::Info => info(),
        Cmd::Plot(a) => tenants::replot(&a),

        Cmd::Bench(Bench::Kernel(a)) => kernel::run(&a),
        Cmd::Bench(Bench::Seed(a)) => tenants::run(a, false),
        Cmd::Bench(Bench::Mix(a)) => tenants::run(a, true),
        Cmd::Bench(Bench::MpsClient(a)) => mps::client(&a),
        Cmd::Bench(Bench::Scale(a)) => scale::run(a),
        Cmd::Bench(Bench::Latency(a)) => latency::run(a),
        Cmd::Bench(Bench::Tune(a)) => tune::run(&a),
        Cmd::Bench(Bench::Dispatch(a)) => dispatch::run(a),
    }
}
