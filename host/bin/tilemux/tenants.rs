//! `tilemux bench seed` (the poster's table: one shape, R tenants) and `tilemux bench mix`
//! (heterogeneous tenants): tilemux against time-only, space-only and cuBLAS's batched calls,
//! all in one process on the same inputs, outputs cross-checked before timing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, ensure};
use clap::Args;
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use tilemux::Device;
use tilemux::abi::ProblemDesc;
use tilemux::cuda::cublas::Group;
use tilemux::cuda::{CudaConfig, CudaDevice};
use tilemux::memory::Arena;
use tilemux::reference::{SEED_MIX, SEED_SHAPES};
use tilemux::round::{CostModel, TileChooser};
use tilemux::runtime::{Buffer, Mat, Op, Policy, Runtime, RuntimeConfig, TenantSpec};

use crate::baselines::{self, Graph, Streams};
use crate::gpu::{Gpu, cross_check, median};
use crate::kernel::{Set, grouped_in_order, stage_sets, time_rounds};
use crate::plot::{self, Series};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    /// Tenant counts R.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2, 5, 10, 20, 40, 60, 80, 100, 120])]
    pub rs: Vec<usize>,
    /// Timed repetitions per variant (median reported).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Untimed warm-up runs per variant.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Smoke run: R in {2, 10, 20}, few repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Largest R measured with one CUDA context per tenant (context creation is slow).
    #[arg(long, default_value_t = 40)]
    pub max_contexts: usize,
    /// Largest R measured with MPS client processes.
    #[arg(long, default_value_t = 40)]
    pub max_mps: usize,
    /// Leave MPS out.
    #[arg(long)]
    pub no_mps: bool,
    /// Only these workloads.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Directory for CSV, markdown and PNG outputs.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl TableArgs {
    fn settle(&mut self) {
        if self.quick {
            self.rs = vec![2, 10, 20];
            self.reps = 5;
            self.warmup = 1;
            self.max_contexts = self.max_contexts.min(10);
            self.max_mps = self.max_mps.min(10);
        }
    }
}

/// Time-only variants (the poster's "time-only" column takes the best of them).
const TIME_ONLY: [&str; 3] = ["serial cuBLAS (time-only)", "CUDA graph (time-only)", "context per tenant (time-only)"];
/// Space-only variants.
const SPACE_ONLY: [&str; 2] = ["stream per tenant (space-only)", "MPS (space-only)"];
const RUNTIME: &str = "tilemux (runtime API)";
const RAW: &str = "tilemux (raw megakernel)";

/// The mix: the seed mix's shapes on even tenants, random shapes in 1..=1024 on odd ones.
pub fn mix_shapes(n: usize) -> Vec<(u32, u32, u32)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                SEED_MIX[(i / 2) % SEED_MIX.len()]
            } else {
                (rng.random_range(1..=1024), rng.random_range(1..=1024), rng.random_range(1..=1024))
            }
        })
        .collect()
}

/// Device pointer arrays of `idx` problems sorted by shape, and their groups, for grouped GEMM.
fn grouped(dev: &dyn Device, arena: &mut Arena, set: &Set, idx: &[usize]) -> Result<([u64; 3], Vec<Group>)> {
    let mut order: Vec<usize> = idx.to_vec();
    order.sort_by_key(|&i| (set.cases[i].m, set.cases[i].n, set.cases[i].k));
    grouped_in_order(dev, arena, set, &order)
}

/// Throughput of `shapes` done in `us`: TB/s of the bytes they must move when all are GEMVs
/// (bandwidth-bound), TFLOP/s otherwise.
fn metric(shapes: &[(u32, u32, u32)], us: f64) -> (f64, &'static str) {
    let f = |m: u32, n: u32, k: u32| (m as f64, n as f64, k as f64);
    let bytes: f64 = shapes.iter().map(|&(m, n, k)| f(m, n, k)).map(|(m, n, k)| 4.0 * (m * k + k * n + m * n)).sum();
    let flops: f64 = shapes.iter().map(|&(m, n, k)| f(m, n, k)).map(|(m, n, k)| 2.0 * m * n * k).sum();
    if shapes.iter().all(|s| s.1 == 1) { (bytes / us / 1e6, "TB/s") } else { (flops / us / 1e6, "TFLOP/s") }
}

pub fn run(mut args: TableArgs, mix: bool) -> Result<()> {
    args.settle();
    let max_r = *args.rs.iter().max().unwrap_or(&2);
    type Workload = (String, Vec<(u32, u32, u32)>);
    let workloads: Vec<Workload> = if mix {
        vec![("mix".into(), mix_shapes(max_r))]
    } else {
        SEED_SHAPES.iter().map(|(n, s)| (n.to_string(), vec![*s; max_r])).collect()
    };
    let workloads: Vec<_> =
        workloads.into_iter().filter(|w| args.only.is_empty() || args.only.contains(&w.0)).collect();

    // MPS first: this process must not own a CUDA context while the daemon starts.
    let mut mps: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut mps_note = String::from("MPS: not measured in mix mode");
    if !mix && !args.no_mps {
        let shapes: Vec<_> = workloads.iter().map(|w| w.1[0]).collect();
        let rs: Vec<usize> = args.rs.iter().copied().filter(|&r| r <= args.max_mps).collect();
        eprintln!("MPS: starting the daemon and {} client processes", rs.iter().max().unwrap_or(&0));
        match crate::mps::sweep(&shapes, &rs, 20, args.reps.min(5)) {
            Ok(s) => {
                ensure!(s.worst_error < 1e-4, "an MPS client's result is wrong: {:e}", s.worst_error);
                for (wi, row) in s.times.iter().enumerate() {
                    for &(r, us) in row {
                        mps.insert((wi, r), us);
                    }
                }
                mps_note = format!(
                    "MPS: R client processes through nvidia-cuda-mps-control, each running its GEMM 20x back to back; time per round = slowest client / 20; worst client error {:.1e}",
                    s.worst_error
                );
            }
            Err(e) => {
                mps_note = format!("MPS could not run here: {e:#}");
                eprintln!("{mps_note}");
            }
        }
    }

    let gpu = Gpu::open(24 << 30, 128)?;
    let _ws = baselines::capture_workspace(&gpu)?;
    let rt_dev: Arc<dyn Device> = Arc::new(CudaDevice::new(&CudaConfig { pool_bytes: 8 << 30, ..Default::default() })?);
    let rt = Runtime::with_device(rt_dev, RuntimeConfig { policy: Policy::Fifo, ..Default::default() })?;
    let describe = gpu.describe();
    println!("# tilemux bench {}\n{describe}", if mix { "mix" } else { "seed" });
    let dev: &dyn Device = &*gpu.dev;
    let streams = Streams::new(max_r)?;
    let mut table = Table::new(&["workload", "R", "variant", "us", "throughput", "unit", "tilemux_runtime_speedup"]);
    let mut all: BTreeMap<(String, usize, String), f64> = BTreeMap::new();

    for (wi, (name, shapes)) in workloads.iter().enumerate() {
        let pool = dev.pool();
        let mut arena = Arena::new(pool.start, pool.end - pool.start);
        let set = stage_sets(&gpu, &mut arena, shapes, 0)?.swap_remove(0);
        // Runtime tenants with the same data, one per problem.
        let tenants: Vec<(tilemux::runtime::Tenant, Op, Buffer)> = set
            .cases
            .iter()
            .enumerate()
            .map(|(i, c)| -> Result<_> {
                let t = rt.add_tenant(
                    TenantSpec::new(format!("{name}-{i}"))
                        .quota(((c.a.len() + c.b.len() + c.c0.len()) * 4 + (1 << 16)) as u64),
                )?;
                let (a, b, cc) = (t.upload(&c.a)?, t.upload(&c.b)?, t.alloc(c.c0.len())?);
                let op = Op::gemm(
                    Mat::new(&a, c.m as usize, c.k as usize),
                    Mat::new(&b, c.k as usize, c.n as usize),
                    Mat::new(&cc, c.m as usize, c.n as usize),
                );
                Ok((t, op, cc))
            })
            .collect::<Result<_>>()?;
        let contexts = if mix {
            (Vec::new(), None, 0.0)
        } else {
            let n = args.max_contexts.min(max_r);
            eprintln!("{name}: creating {n} CUDA contexts");
            baselines::contexts(gpu.dev.gpu(), set.cases[..n].to_vec())
        };
        gpu.dev.gpu().bind()?;
        if let Some(stop) = &contexts.1 {
            eprintln!("{name}: context creation stopped at {}: {stop}", contexts.0.len());
        }
        let pb = ProgressBar::new(args.rs.len() as u64).with_message(name.clone());
        for &r in &args.rs {
            let cases = &set.cases[..r];
            let descs: Vec<ProblemDesc> = set.blas.descs(&set.staged, &set.cases)[..r].to_vec();
            let same_shape = descs.iter().all(|d| (d.m, d.n, d.k) == (descs[0].m, descs[0].n, descs[0].k));
            let idx: Vec<usize> = (0..r).collect();
            let (garr, gr) = grouped(dev, &mut arena, &set, &idx)?;
            let graph = Graph::capture(&gpu.stream, || baselines::serial(&gpu, &descs))?;
            let round =
                [TileChooser::for_device(dev).build(&set.staged.descs(cases), &[], &CostModel::default(), dev.slots())];

            // Cross-check every variant against serial cuBLAS, and cuBLAS against f64.
            let poison = |gpu: &Gpu| -> Result<()> {
                for (c, &a) in cases.iter().zip(&set.blas.c_addrs) {
                    dev.write(a, &vec![f32::NAN; c.c0.len()])?;
                }
                gpu.stream.sync()?;
                Ok(())
            };
            poison(&gpu)?;
            baselines::serial(&gpu, &descs)?;
            gpu.stream.sync()?;
            let want = set.blas.read_c(dev, cases)?;
            let e0 = cases[0].error(&want[0], &cases[0].reference());
            ensure!(e0 < 1e-4, "{name} R={r}: cuBLAS differs from the f64 reference: {e0:e}");
            let check = |label: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
                poison(&gpu)?;
                f()?;
                gpu.stream.sync()?;
                cross_check(label, cases, &set.blas.read_c(dev, cases)?, &want, 1e-4).map(|_| ())
            };
            let batched = || -> Result<()> {
                // SAFETY: the pointer arrays and the matrices they point to are staged device memory.
                unsafe { gpu.blas.sgemm_batched(&descs[0], set.blas.a, set.blas.b, set.blas.c, r) }?;
                Ok(())
            };
            let grouped_call = || -> Result<()> {
                // SAFETY: as above.
                unsafe { gpu.blas.sgemm_grouped(&gr, garr[0], garr[1], garr[2]) }?;
                Ok(())
            };
            check("graph", &mut || graph.launch(&gpu.stream))?;
            check("streams", &mut || streams.run(&gpu, &gpu.stream, &descs))?;
            if same_shape {
                check("batched", &mut || batched())?;
            }
            check("grouped", &mut || grouped_call())?;
            set.staged.poison(dev, cases)?;
            dev.run(&round[0])?;
            cross_check("megakernel", cases, &set.staged.read_c(dev, cases)?, &want, 1e-4)?;
            for (i, (_, op, c)) in tenants[..r].iter().enumerate() {
                c.write(&vec![f32::NAN; c.len()])?;
                rt.submit(&tenants[i].0, op.clone())?.wait()?;
            }
            let got: Vec<Vec<f32>> = tenants[..r].iter().map(|t| t.2.read()).collect::<Result<_, _>>()?;
            // The runtime's C has no padding; compare against the dense part of cuBLAS's.
            cross_check("runtime", cases, &got, &want, 1e-4)?;

            // Timing.
            let mut row: Vec<(String, f64)> = Vec::new();
            let w = args.warmup;
            row.push((TIME_ONLY[0].into(), gpu.time(w, args.reps, || baselines::serial(&gpu, &descs))?));
            row.push((TIME_ONLY[1].into(), gpu.time(w, args.reps, || graph.launch(&gpu.stream))?));
            if r <= contexts.0.len() {
                let us = baselines::time_contexts(&contexts.0[..r], w, args.reps)?;
                let worst = contexts.0[..r]
                    .iter()
                    .map(|c| c.check())
                    .collect::<Result<Vec<f64>>>()?
                    .into_iter()
                    .fold(0.0, f64::max);
                ensure!(worst < 1e-4, "{name} R={r}: a context tenant's result is wrong: {worst:e}");
                gpu.dev.gpu().bind()?;
                row.push((TIME_ONLY[2].into(), us));
            }
            row.push((SPACE_ONLY[0].into(), gpu.time(w, args.reps, || streams.run(&gpu, &gpu.stream, &descs))?));
            if let Some(&us) = mps.get(&(wi, r)) {
                row.push((SPACE_ONLY[1].into(), us));
            }
            if same_shape {
                row.push(("cublasSgemmBatched".into(), gpu.time(w, args.reps, batched)?));
            }
            row.push(("cublasSgemmGroupedBatched".into(), gpu.time(w, args.reps, grouped_call)?));
            row.push((RAW.into(), time_rounds(dev, &round, w, args.reps)?));
            let mut t = Vec::new();
            for i in 0..w + args.reps {
                let start = Instant::now();
                let tickets: Vec<_> =
                    tenants[..r].iter().map(|(t, op, _)| rt.submit(t, op.clone())).collect::<Result<_, _>>()?;
                for tk in tickets {
                    tk.wait()?;
                }
                if i >= w {
                    t.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
            row.push((RUNTIME.into(), median(&mut t)));

            let rt_us = row.iter().find(|v| v.0 == RUNTIME).map_or(f64::NAN, |v| v.1);
            for (v, us) in &row {
                let (tp, unit) = metric(&shapes[..r], *us);
                table.row(vec![
                    name.clone(),
                    r.to_string(),
                    v.clone(),
                    format!("{us:.1}"),
                    format!("{tp:.3}"),
                    unit.into(),
                    format!("{:.2}", us / rt_us),
                ]);
                all.insert((name.clone(), r, v.clone()), *us);
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        drop(contexts);
        gpu.dev.gpu().bind()?;
        for (t, _, _) in tenants {
            rt.remove_tenant(&t)?;
        }
    }

    // The poster's summary: tilemux over the best time-only and best space-only variant.
    let mut summary = Table::new(&["workload", "tilemux", "vs", "R=10", "R=20", "geomean over R"]);
    for (name, _) in &workloads {
        for tm in [RUNTIME, RAW] {
            for (vs, group) in [
                ("best time-only", &TIME_ONLY[..]),
                ("best space-only", &SPACE_ONLY[..]),
                ("cuBLAS batched/grouped", &["cublasSgemmBatched", "cublasSgemmGroupedBatched"][..]),
            ] {
                let speedup = |r: usize| -> Option<f64> {
                    let base = group
                        .iter()
                        .filter_map(|g| all.get(&(name.clone(), r, g.to_string())))
                        .fold(f64::INFINITY, |a, &b| a.min(b));
                    all.get(&(name.clone(), r, tm.to_string())).map(|t| base / t).filter(|s| s.is_finite())
                };
                let logs: Vec<f64> = args.rs.iter().filter_map(|&r| speedup(r)).map(f64::ln).collect();
                let geo = if logs.is_empty() { f64::NAN } else { (logs.iter().sum::<f64>() / logs.len() as f64).exp() };
                let f = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.2}x"));
                summary.row(vec![
                    name.clone(),
                    tm.into(),
                    vs.into(),
                    f(speedup(10)),
                    f(speedup(20)),
                    format!("{geo:.2}x"),
                ]);
            }
        }
    }

    let stem = if mix { "mix" } else { "seed" };
    let mut pre = format!(
        "{describe}\n{mps_note}\nTime-only with contexts: up to R = {} (context creation cost).\n",
        args.max_contexts
    );
    pre += "Runtime API: R tenants each submit one request from one thread; wall time until all tickets resolve (validation, scheduling, upload, launch, completion).\n";
    pre += &format!("\n## Summary (speedup of tilemux)\n\n{}\n## All measurements\n", summary.markdown());
    table.finish(&pre, args.out.as_deref(), stem)?;
    if let Some(dir) = &args.out {
        let rows: Vec<PlotRow> = all
            .iter()
            .map(|((name, r, v), &us)| {
                let shapes = &workloads.iter().find(|w| w.0 == *name).expect("workload").1;
                let (throughput, unit) = metric(&shapes[..*r], us);
                PlotRow { workload: name.clone(), r: *r, variant: v.clone(), us, throughput, unit: unit.into() }
            })
            .collect();
        plots(dir, stem, &rows)?;
    }
    Ok(())
}

/// One measurement of a seed or mix table, as its CSV holds it.
pub struct PlotRow {
    pub workload: String,
    pub r: usize,
    pub variant: String,
    pub us: f64,
    pub throughput: f64,
    pub unit: String,
}

/// Per workload, `<stem>-<workload>-throughput.png` (every variant against R) and
/// `<stem>-<workload>-speedup.png` (the runtime API's speedup over each other variant).
pub fn plots(dir: &Path, stem: &str, rows: &[PlotRow]) -> Result<()> {
    let workloads: BTreeSet<&str> = rows.iter().map(|p| p.workload.as_str()).collect();
    for name in workloads {
        let of: Vec<&PlotRow> = rows.iter().filter(|p| p.workload == name).collect();
        let variants: BTreeSet<&str> = of.iter().map(|p| p.variant.as_str()).collect();
        let runtime_us: BTreeMap<usize, f64> =
            of.iter().filter(|p| p.variant == RUNTIME).map(|p| (p.r, p.us)).collect();
        let series = |f: &dyn Fn(&PlotRow) -> Option<f64>, prefix: &str, skip: Option<&str>| -> Vec<Series> {
            variants
                .iter()
                .filter(|v| Some(**v) != skip)
                .map(|v| Series {
                    name: format!("{prefix}{v}"),
                    points: of.iter().filter(|p| p.variant == *v).filter_map(|p| Some((p.r as f64, f(p)?))).collect(),
                })
                .collect()
        };
        let tp = series(&|p| Some(p.throughput), "", None);
        let unit = of.first().map_or("", |p| p.unit.as_str());
        plot::lines(
            &dir.join(format!("{stem}-{name}-throughput.png")),
            &format!("{name}: throughput vs tenants"),
            "tenants R",
            unit,
            &tp,
            false,
        )?;
        let sp = series(&|p| Some(p.us / runtime_us.get(&p.r)?), "vs ", Some(RUNTIME));
        plot::lines(
            &dir.join(format!("{stem}-{name}-speedup.png")),
            &format!("{name}: speedup of the tilemux runtime"),
            "tenants R",
            "speedup (x)",
            &sp,
            false,
        )?;
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A `seed.csv` or `mix.csv` written by `bench seed` / `bench mix`.
    pub csv: PathBuf,
    /// Where the PNGs go (default: next to the CSV).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `tilemux plot`: redraws a seed or mix table's charts from its CSV (no GPU needed).
pub fn replot(args: &PlotArgs) -> Result<()> {
    let mut rd = csv::Reader::from_path(&args.csv)?;
    let mut rows = Vec::new();
    for rec in rd.records() {
        let rec = rec?;
        let field = |i: usize| rec.get(i).ok_or_else(|| anyhow!("{}: short row {rec:?}", args.csv.display()));
        rows.push(PlotRow {
            workload: field(0)?.into(),
            r: field(1)?.parse()?,
            variant: field(2)?.into(),
            us: field(3)?.parse()?,
            throughput: field(4)?.parse()?,
            unit: field(5)?.into(),
        });
    }
    ensure!(!rows.is_empty(), "{}: no rows", args.csv.display());
    let stem = args.csv.file_stem().and_then(|s| s.to_str()).unwrap_or("table");
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => args.csv.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    std::fs::create_dir_all(&dir)?;
    plots(&dir, stem, &rows)?;
    println!("wrote {stem}-*.png to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replot_reads_a_table_csv_and_draws_both_charts() {
        let dir = std::env::temp_dir().join(format!("tilemux-replot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("seed.csv");
        std::fs::write(
            &csv,
            "workload,R,variant,us,throughput,unit,tilemux_runtime_speedup\n\
             rnn512,2,serial cuBLAS (time-only),20.2,0.104,TB/s,0.24\n\
             rnn512,2,tilemux (runtime API),84.0,0.025,TB/s,1.00\n\
             rnn512,10,serial cuBLAS (time-only),95.0,0.110,TB/s,0.50\n\
             rnn512,10,tilemux (runtime API),190.0,0.055,TB/s,1.00\n",
        )
        .unwrap();
        replot(&PlotArgs { csv: csv.clone(), out: None }).unwrap();
        if plot::has_font() {
            for chart in ["seed-rnn512-throughput.png", "seed-rnn512-speedup.png"] {
                let bytes = std::fs::read(dir.join(chart)).unwrap();
                assert_eq!(&bytes[1..4], b"PNG", "{chart} is not a PNG");
            }
        } else {
            eprintln!("charts not drawn: no TrueType font on this machine");
        }
        std::fs::write(&csv, "workload,R,variant,us,throughput,unit\nrnn512,two,x,1,1,TB/s\n").unwrap();
        assert!(replot(&PlotArgs { csv, out: None }).is_err(), "a malformed R must be an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
