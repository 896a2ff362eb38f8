//! `tilemux`: the demo (the README's first command) and the benchmark suite.

mod gpu;
mod kernel;
mod report;

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
    /// Print the backend that would run, the device and the megakernel's resources.
    Info,
    /// Benchmarks (GPU).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Raw megakernel vs cublasSgemmBatched / cublasSgemmGroupedBatched on the seed shapes.
    Kernel(kernel::KernelArgs),
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
        Cmd::Info => info(),
        Cmd::Bench(Bench::Kernel(a)) => kernel::run(&a),
    }
}
