//! `tilemux bench scale`: 1 to 1000 tenants, each with its own weights, on one GPU. Memory per
//! tenant and throughput for tilemux against one CUDA context per tenant, which stops at the
//! memory wall (the poster saw it at 18 models on a V100).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Args;
use rand::SeedableRng;
use tilemux::Device;
use tilemux::cuda::{CudaConfig, CudaDevice};
use tilemux::reference::Case;
use tilemux::runtime::{Mat, Op, Policy, Runtime, RuntimeConfig, TenantSpec};

use crate::baselines;
use crate::gpu::{Gpu, median};
use crate::plot::{self, Series};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Tenant counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 5, 10, 20, 50, 100, 200, 500, 1000])]
    pub tenants: Vec<usize>,
    /// Each tenant's layer `m,n,k` (default: ResNet-18 conv2_2).
    #[arg(long, default_value = "256,128,1152")]
    pub shape: String,
    /// Most contexts to create (creation stops earlier at the memory wall).
    #[arg(long, default_value_t = 1000)]
    pub max_contexts: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Smoke run: 1, 10, 100 tenants, contexts up to 20.
    #[arg(long)]
    pub quick: bool,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(mut args: ScaleArgs) -> Result<()> {
    if args.quick {
        args.tenants = vec![1, 10, 100];
        args.max_contexts = 20;
        args.reps = 3;
    }
    let v: Vec<u32> = args.shape.split(',').map(|x| x.parse()).collect::<Result<_, _>>()?;
    ensure!(v.len() == 3, "--shape m,n,k");
    let shape = (v[0], v[1], v[2]);
    let max_n = *args.tenants.iter().max().unwrap_or(&1);
    let gpu = Gpu::open(1 << 28, 128)?;
    let describe = gpu.describe();
    println!("# tilemux bench scale\n{describe}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let cases: Vec<Case> = (0..max_n).map(|_| Case::plain(&mut rng, shape)).collect();
    let per_tenant = ((cases[0].a.len() + cases[0].b.len() + cases[0].c0.len()) * 4) as u64;

    // tilemux: one runtime, one pool, N tenants with their own weights.
    let (free0, _) = gpu.dev.gpu().mem_info()?;
    let quota = tilemux::memory::round_up(per_tenant + 4 * tilemux::memory::ALIGN);
    let pool = (quota * max_n as u64 + (64 << 20)) as usize;
    let dev: Arc<dyn Device> = Arc::new(CudaDevice::new(&CudaConfig { pool_bytes: pool, ..Default::default() })?);
    let rt = Runtime::with_device(dev, RuntimeConfig { policy: Policy::Fifo, ..Default::default() })?;
    let (free1, _) = gpu.dev.gpu().mem_info()?;
    let mut tenants = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let t = rt.add_tenant(TenantSpec::new(format!("t{i}")).quota(quota))?;
        let (a, b, cc) = (t.upload(&c.a)?, t.upload(&c.b)?, t.alloc(c.c0.len())?);
        let op = Op::gemm(
            Mat::new(&a, c.m as usize, c.k as usize),
            Mat::new(&b, c.k as usize, c.n as usize),
            Mat::new(&cc, c.m as usize, c.n as usize),
        );
        tenants.push((t, op, cc));
    }
    let mut table =
        Table::new(&["tenants", "variant", "us_per_round", "requests_per_s", "TFLOP/s", "device_MB_per_tenant"]);
    let flops = cases[0].flops();
    let mut tm_points = Vec::new();
    for &n in &args.tenants {
        // Check first: every tenant's result against f64 for the first and last tenant.
        let tickets: Vec<_> =
            tenants[..n].iter().map(|(t, op, _)| rt.submit(t, op.clone())).collect::<Result<_, _>>()?;
        for tk in tickets {
            tk.wait()?;
        }
        for &i in &[0, n - 1] {
            let got = tenants[i].2.read()?;
            let e = cases[i].error(&got, &cases[i].reference());
            ensure!(e < 1e-4, "tenant {i} of {n}: relative error {e:e}");
        }
        let mut t = Vec::new();
        for _ in 0..args.reps + 1 {
            let start = Instant::now();
            let tickets: Vec<_> =
                tenants[..n].iter().map(|(t, op, _)| rt.submit(t, op.clone())).collect::<Result<_, _>>()?;
            for tk in tickets {
                tk.wait()?;
            }
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
        t.remove(0);
        let us = median(&mut t);
        // Device memory per tenant: its quota, plus its share of the runtime's fixed cost.
        let fixed_mb = (free0 - free1) as f64 / 1e6 - (quota * max_n as u64) as f64 / 1e6;
        let mb = quota as f64 / 1e6 + fixed_mb.max(0.0) / n as f64;
        table.row(vec![
            n.to_string(),
            "tilemux".into(),
            format!("{us:.1}"),
            format!("{:.0}", n as f64 / us * 1e6),
            format!("{:.2}", flops * n as f64 / us / 1e6),
            format!("{mb:.2}"),
        ]);
        tm_points.push((n as f64, flops * n as f64 / us / 1e6));
        eprintln!("tilemux, {n} tenants: {us:.0} µs per round");
    }
    drop(tenants);
    drop(rt);

    // One context per tenant until the memory wall.
    gpu.dev.gpu().bind()?;
    let n_ctx = args.max_contexts.min(max_n);
    eprintln!("creating up to {n_ctx} CUDA contexts");
    let start = Instant::now();
    let (ctx, stop, per_ctx) = baselines::contexts(gpu.dev.gpu(), cases[..n_ctx].to_vec());
    let created = ctx.len();
    let wall = match &stop {
        Some(e) => {
            format!("context {} failed after {created} were created in {:.1?}: {e}", created + 1, start.elapsed())
        }
        None => format!("all {created} contexts created in {:.1?} (no wall below {n_ctx})", start.elapsed()),
    };
    eprintln!("{wall}");
    let mut ctx_points = Vec::new();
    for &n in args.tenants.iter().filter(|&&n| n <= created) {
        let us = baselines::time_contexts(&ctx[..n], 1, args.reps)?;
        table.row(vec![
            n.to_string(),
            "context per tenant".into(),
            format!("{us:.1}"),
            format!("{:.0}", n as f64 / us * 1e6),
            format!("{:.2}", flops * n as f64 / us / 1e6),
            format!("{:.1}", per_ctx / 1e6 + per_tenant as f64 / 1e6),
        ]);
        ctx_points.push((n as f64, flops * n as f64 / us / 1e6));
    }
    let worst = ctx.iter().take(4).map(|c| c.check()).collect::<Result<Vec<f64>>>()?.into_iter().fold(0.0, f64::max);
    ensure!(worst < 1e-4, "a context tenant's result is wrong: {worst:e}");
    drop(ctx);
    gpu.dev.gpu().bind()?;

    let pre = format!(
        "{describe}\nEach tenant: its own {}x{}x{} layer ({:.2} MB of weights and activations). A round: every tenant submits one request; time until all are done.\nContexts: {wall}; {:.0} MB of device memory per context beyond the data.\n",
        shape.0,
        shape.1,
        shape.2,
        per_tenant as f64 / 1e6,
        per_ctx / 1e6
    );
    table.finish(&pre, args.out.as_deref(), "scale")?;
    if let Some(dir) = &args.out {
        let series = vec![
            Series { name: "tilemux".into(), points: tm_points },
            Series { name: "context per tenant".into(), points: ctx_points },
        ];
        plot::lines(&dir.join("scale-throughput.png"), "throughput vs tenants", "tenants", "TFLOP/s", &series, true)?;
    }
    Ok(())
}
