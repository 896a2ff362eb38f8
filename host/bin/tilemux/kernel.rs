//! `tilemux bench kernel`: the raw megakernel against cublasSgemmBatched (one shape) and
//! cublasSgemmGroupedBatched (the seed mix), same inputs, cross-checked before timing.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tilemux::Device;
use tilemux::abi::{Activation, BiasMode, ProblemDesc, TileKind, flags};
use tilemux::cuda::cublas::Group;
use tilemux::memory::Arena;
use tilemux::reference::{Case, SEED_MIX, SEED_SHAPES, Staged, alloc};
use tilemux::round::{CostModel, Plan, Round, TileChooser};

use crate::gpu::{BlasArrays, Gpu, cross_check, groups, median};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// Problem counts per workload.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 10, 20, 40, 80, 120])]
    pub counts: Vec<usize>,
    /// Timed repetitions per variant (median reported).
    #[arg(long, default_value_t = 50)]
    pub reps: usize,
    /// Untimed warm-up runs per variant.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Also time every tile kind forced on all problems (tile tuning).
    #[arg(long)]
    pub kinds: bool,
    /// Register cap for the megakernel's JIT (0: none).
    #[arg(long, default_value_t = 128)]
    pub max_registers: u32,
    /// Only these workloads (rnn512, rnn1024, conv2_2, square256, mix).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// B stored transposed (`n × k`, as `nn.Linear` keeps its weights), for both sides.
    #[arg(long)]
    pub trans_b: bool,
    /// Tuning table for the chooser (`m n k kind k_splits` lines, as `bench tune --write` and
    /// the runtime's `TILEMUX_TUNING` use); default: that variable, else none.
    #[arg(long, env = "TILEMUX_TUNING")]
    pub tuning: Option<PathBuf>,
    /// Directory for the CSV and markdown outputs.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Shapes of `count` problems of workload `name`: a seed shape, or the seed mix round-robin
/// (sorted by shape, so cuBLAS's groups are contiguous).
pub fn workload(name: &str, count: usize) -> Vec<(u32, u32, u32)> {
    let mut v: Vec<_> = match SEED_SHAPES.iter().find(|(n, _)| *n == name) {
        Some((_, s)) => vec![*s; count],
        None => (0..count).map(|i| SEED_MIX[i % SEED_MIX.len()]).collect(),
    };
    v.sort();
    v
}

/// Bytes a problem must move at least once (A, B, C) and its flops.
pub fn traffic(cases: &[Case]) -> (f64, f64) {
    let bytes = cases.iter().map(|c| 4.0 * (c.a.len() + c.b.len() + c.c0.len()) as f64).sum();
    (bytes, cases.iter().map(Case::flops).sum())
}

/// One input set: cases, their staging, the baseline's arrays, the megakernel's round.
pub struct Set {
    pub cases: Vec<Case>,
    pub staged: Staged,
    pub blas: BlasArrays,
}

/// Stages enough copies of the workload that rotating through them defeats the 50 MB L2; `flags`
/// are every problem's transposes (`abi::flags`).
pub fn stage_sets(gpu: &Gpu, arena: &mut Arena, shapes: &[(u32, u32, u32)], flags: u32) -> Result<Vec<Set>> {
    let dev: &dyn Device = &*gpu.dev;
    let mut rng = rand::rng();
    let one: f64 = shapes.iter().map(|&(m, n, k)| 4.0 * (m * k + k * n + 2 * m * n) as f64).sum();
    let sets = ((256e6 / one).ceil() as usize).clamp(1, 8);
    (0..sets)
        .map(|_| {
            let cases: Vec<Case> = shapes
                .iter()
                .map(|&s| Case::build(&mut rng, s, flags, (0, 0, 0), (1.0, 0.0), Activation::None, BiasMode::None))
                .collect();
            let staged = Staged::new(dev, arena, &cases)?;
            let blas = BlasArrays::new(dev, arena, &staged, &cases)?;
            Ok(Set { cases, staged, blas })
        })
        .collect()
}

/// The seed mix in arrival order: indices into `shapes` (sorted, as [`workload`] returns them)
/// that interleave the seed shapes round-robin, the order tenants' requests would arrive in.
pub fn arrival_order(shapes: &[(u32, u32, u32)]) -> Vec<usize> {
    let mut next: Vec<usize> = SEED_MIX.iter().map(|s| shapes.iter().position(|x| x == s).unwrap_or(0)).collect();
    (0..shapes.len())
        .map(|i| {
            let s = i % SEED_MIX.len();
            let at = next[s];
            next[s] += 1;
            at
        })
        .collect()
}

/// Device pointer arrays for `cublasSgemmGroupedBatched` over a set's problems taken in `order`
/// (the baseline's own outputs), and their groups: consecutive problems of one shape form a
/// group, so the arrival order of the mix makes every problem a group of its own.
pub fn grouped_in_order(
    dev: &dyn Device,
    arena: &mut Arena,
    set: &Set,
    order: &[usize],
) -> Result<([u64; 3], Vec<Group>)> {
    let descs = set.blas.descs(&set.staged, &set.cases);
    let ordered: Vec<ProblemDesc> = order.iter().map(|&i| descs[i]).collect();
    let mut array = |f: &dyn Fn(&ProblemDesc) -> u64| -> Result<u64> {
        let v: Vec<u64> = ordered.iter().map(f).collect();
        let addr = alloc(arena, (v.len() * 8) as u64)?;
        dev.write(addr, bytemuck::cast_slice(&v))?;
        Ok(addr)
    };
    Ok(([array(&|d| d.a)?, array(&|d| d.b)?, array(&|d| d.c)?], groups(&ordered)))
}

/// Runs the cuBLAS baseline of a set: batched for one shape, grouped otherwise.
pub fn run_blas(gpu: &Gpu, set: &Set) -> Result<()> {
    let descs = set.blas.descs(&set.staged, &set.cases);
    let g = groups(&descs);
    // SAFETY: pointer arrays and matrices are staged device memory of this context.
    unsafe {
        if g.len() == 1 {
            gpu.blas.sgemm_batched(&descs[0], set.blas.a, set.blas.b, set.blas.c, descs.len())?;
        } else {
            gpu.blas.sgemm_grouped(&g, set.blas.a, set.blas.b, set.blas.c)?;
        }
    }
    Ok(())
}

/// Median kernel time in µs of `rounds`, run in rotation.
pub fn time_rounds(dev: &dyn Device, rounds: &[Round], warmup: usize, reps: usize) -> Result<f64> {
    for i in 0..warmup {
        dev.run(&rounds[i % rounds.len()])?;
    }
    let mut t = Vec::with_capacity(reps);
    for i in 0..reps {
        t.push(dev.run(&rounds[i % rounds.len()])?.kernel.as_secs_f64() * 1e6);
    }
    Ok(median(&mut t))
}

/// Rounds for every set with `chooser` (its tuning table; or one forced kind), stream-K
/// balanced or not.
pub fn rounds(
    dev: &dyn Device,
    sets: &[Set],
    kind: Option<TileKind>,
    balance: bool,
    chooser: &TileChooser,
) -> Vec<Round> {
    sets.iter()
        .map(|s| {
            let descs = s.staged.descs(&s.cases);
            TileChooser { no_balance: !balance, ..chooser.clone().fitted_to(dev) }.build(
                &descs,
                &vec![kind.map(Plan::new); descs.len()],
                &CostModel::default(),
                dev.slots(),
            )
        })
        .collect()
}

/// Checks the megakernel against cuBLAS and the f64 reference on the first set.
pub fn verify(gpu: &Gpu, set: &Set, round: &Round) -> Result<f64> {
    let dev: &dyn Device = &*gpu.dev;
    set.staged.poison(dev, &set.cases)?;
    dev.run(round)?;
    run_blas(gpu, set)?;
    gpu.stream.sync()?;
    let got = set.staged.read_c(dev, &set.cases)?;
    let want = set.blas.read_c(dev, &set.cases)?;
    let worst = cross_check("megakernel", &set.cases, &got, &want, 1e-4)?;
    let r = set.cases[0].error(&got[0], &set.cases[0].reference());
    anyhow::ensure!(r < 1e-4, "megakernel vs f64 reference: {r:e}");
    Ok(worst.max(r))
}

pub fn run(args: &KernelArgs) -> Result<()> {
    let gpu = Gpu::open(48 << 30, args.max_registers)?;
    let layout = if args.trans_b { " (B transposed: n × k)" } else { "" };
    println!("# tilemux bench kernel{layout}\n{}", gpu.describe());
    let log = gpu.dev.kernel().jit_log();
    println!(
        "JIT: {}",
        log.lines().filter(|l| l.contains("Used") || l.contains("spill")).collect::<Vec<_>>().join(" | ")
    );
    let (copy_tbs, peak_tflops) = gpu.ceilings()?;
    println!("ceilings: device copy {copy_tbs:.2} TB/s, cuBLAS SGEMM 8192³ {peak_tflops:.1} TFLOP/s");
    let dev: &dyn Device = &*gpu.dev;
    let chooser = match &args.tuning {
        Some(path) => {
            println!("tuning table: {}", path.display());
            TileChooser::load(path)?
        }
        None => TileChooser::default(),
    };

    let mut table = Table::new(&[
        "workload",
        "count",
        "variant",
        "us",
        "speedup_vs_cublas",
        "throughput",
        "pct_ceiling",
        "max_rel_err",
    ]);
    let names: Vec<&str> = SEED_SHAPES.iter().map(|s| s.0).chain(["mix"]).collect();
    for name in names {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        for &count in &args.counts {
            let shapes = workload(name, count);
            let pool = dev.pool();
            let mut arena = Arena::new(pool.start, pool.end - pool.start);
            let sets = stage_sets(&gpu, &mut arena, &shapes, if args.trans_b { flags::TRANS_B } else { 0 })?;
            let auto = rounds(dev, &sets, None, true, &chooser);
            let plain = rounds(dev, &sets, None, false, &chooser);
            let err = verify(&gpu, &sets[0], &auto[0])?;
            let (bytes, flops) = traffic(&sets[0].cases);
            let gemv = shapes.iter().all(|s| s.1 == 1);
            let metric = |us: f64| {
                if gemv {
                    (format!("{:.2} TB/s", bytes / us / 1e6), 100.0 * bytes / us / 1e6 / copy_tbs)
                } else {
                    (format!("{:.1} TFLOP/s", flops / us / 1e6), 100.0 * flops / us / 1e6 / peak_tflops)
                }
            };
            let mut i = 0;
            let blas_us = gpu.time(args.warmup, args.reps, || {
                let r = run_blas(&gpu, &sets[i % sets.len()]);
                i += 1;
                r
            })?;
            let blas_name = if name == "mix" { "cublasSgemmGroupedBatched" } else { "cublasSgemmBatched" };
            let mut variants = vec![(blas_name.to_string(), blas_us, f64::NAN)];
            if name == "mix" && count > 1 {
                // The same call with the problems in arrival order: a group per problem.
                let order = arrival_order(&shapes);
                let calls = sets
                    .iter()
                    .map(|set| grouped_in_order(dev, &mut arena, set, &order))
                    .collect::<Result<Vec<_>>>()?;
                let call = |([a, b, c], g): &([u64; 3], Vec<Group>)| {
                    // SAFETY: pointer arrays and matrices are staged device memory of this context.
                    unsafe { gpu.blas.sgemm_grouped(g, *a, *b, *c) }
                };
                call(&calls[0])?;
                gpu.stream.sync()?;
                let got = sets[0].staged.read_c(dev, &sets[0].cases)?;
                let want = sets[0].blas.read_c(dev, &sets[0].cases)?;
                let e = cross_check("grouped in arrival order", &sets[0].cases, &got, &want, 1e-4)?;
                let mut i = 0;
                let us = gpu.time(args.warmup, args.reps, || {
                    let r = call(&calls[i % calls.len()]);
                    i += 1;
                    r.map_err(Into::into)
                })?;
                variants.push((format!("{blas_name}, arrival order ({} groups)", calls[0].1.len()), us, e));
            }
            variants.push((
                format!("megakernel (auto: {})", plan_label(&auto[0])),
                time_rounds(dev, &auto, args.warmup, args.reps)?,
                err,
            ));
            if plan_label(&plain[0]) != plan_label(&auto[0]) {
                let e = verify(&gpu, &sets[0], &plain[0])?;
                variants.push((
                    format!("megakernel (auto without stream-K: {})", plan_label(&plain[0])),
                    time_rounds(dev, &plain, args.warmup, args.reps)?,
                    e,
                ));
            }
            if args.kinds {
                for k in TileKind::ALL {
                    if !sets[0].cases.iter().all(|c| k.supports(c.n, c.flags)) {
                        continue;
                    }
                    let r = rounds(dev, &sets, Some(k), false, &chooser);
                    let e = verify(&gpu, &sets[0], &r[0])?;
                    variants.push((
                        format!("megakernel {}", k.name()),
                        time_rounds(dev, &r, args.warmup, args.reps)?,
                        e,
                    ));
                }
            }
            for (v, us, e) in variants {
                let (tp, pct) = metric(us);
                table.row(vec![
                    name.to_string(),
                    count.to_string(),
                    v,
                    format!("{us:.1}"),
                    format!("{:.2}", blas_us / us),
                    tp,
                    format!("{pct:.0}%"),
                    if e.is_nan() { "-".into() } else { format!("{e:.1e}") },
                ]);
            }
            eprintln!("{name} × {count} done");
        }
    }
    let mut header = String::new();
    writeln!(header, "{}", gpu.describe())?;
    writeln!(header, "ceilings: device copy {copy_tbs:.2} TB/s, cuBLAS SGEMM 8192³ {peak_tflops:.1} TFLOP/s")?;
    table.finish(&header, args.out.as_deref(), "kernel")
}

/// The distinct plans of a round, e.g. `sgemm_64x64x8/k3+gemv_rows32` (`/k3`: uniform split-K
/// in 3; `/sk`: stream-K balanced).
pub fn plan_label(round: &Round) -> String {
    let mut v: Vec<String> = round
        .problems
        .iter()
        .map(|p| {
            let k = TileKind::from_u32(p.tile_kind).map_or("?", |k| k.name());
            match p.k_splits {
                1 => k.to_string(),
                s if p.k_parts == s => format!("{k}/k{s}"),
                _ => format!("{k}/sk"),
            }
        })
        .collect();
    v.sort();
    v.dedup();
    v.join("+")
}
