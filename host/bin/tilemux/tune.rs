//! `tilemux bench tune`: every tile kind (and k-split) the megakernel has, for one shape and
//! count, timed side by side with cuBLAS — each unsplit kind twice, as is and recut by stream-K
//! balancing (`/sk`, forced) — and the chooser's own plan; optionally records the winner in the
//! tile chooser's tuning table, which the runtime loads (`RuntimeConfig::tuning` or
//! `TILEMUX_TUNING`).

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Args;
use tilemux::Device;
use tilemux::abi::TileKind;
use tilemux::memory::Arena;
use tilemux::round::{CostModel, Plan, TileChooser, max_splits};

use crate::gpu::Gpu;
use crate::kernel::{plan_label, run_blas, stage_sets, time_rounds, verify};
use crate::report::Table;

#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// The shape `m,n,k`.
    #[arg(long, default_value = "256,128,1152")]
    pub shape: String,
    /// Problems of that shape in the round.
    #[arg(long, default_value_t = 120)]
    pub count: usize,
    /// Timed repetitions per variant.
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
    /// Add (or replace) the winner for this shape in this tuning table.
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Smoke run: fewer repetitions and splits.
    #[arg(long)]
    pub quick: bool,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &TuneArgs) -> Result<()> {
    let v: Vec<u32> = args.shape.split(',').map(|x| x.parse()).collect::<Result<_, _>>()?;
    ensure!(v.len() == 3, "--shape m,n,k");
    let shape = (v[0], v[1], v[2]);
    let reps = if args.quick { 5 } else { args.reps };
    let gpu = Gpu::open(32 << 30, 128)?;
    let describe = gpu.describe();
    println!("# tilemux bench tune {}x{}x{} × {}\n{describe}", shape.0, shape.1, shape.2, args.count);
    let dev: &dyn Device = &*gpu.dev;
    let pool = dev.pool();
    let mut arena = Arena::new(pool.start, pool.end - pool.start);
    let sets = stage_sets(&gpu, &mut arena, &vec![shape; args.count], 0)?;
    let mut i = 0;
    let blas_us = gpu.time(3, reps, || {
        let r = run_blas(&gpu, &sets[i % sets.len()]);
        i += 1;
        r
    })?;
    let mut results: Vec<(String, Option<Plan>, f64, f64)> = Vec::new();
    let probe = sets[0].staged.descs(&sets[0].cases)[0];
    // A forced plan as planned (`balance: None`: the round builder decides on stream-K), or
    // forced unbalanced / balanced.
    let build = |plan: Option<Plan>, balance: Option<bool>| -> Vec<tilemux::round::Round> {
        sets.iter()
            .map(|s| {
                let d = s.staged.descs(&s.cases);
                let chooser = TileChooser { no_balance: balance.is_some(), ..TileChooser::for_device(dev) };
                let cost = CostModel::default();
                let mut r = chooser.build(&d, &vec![plan; d.len()], &cost, dev.slots());
                if balance == Some(true) {
                    let slots = chooser.round_slots(&r, dev.slots());
                    r.force_balance(&cost, slots);
                }
                r
            })
            .collect()
    };
    let auto = build(None, None);
    let e = verify(&gpu, &sets[0], &auto[0])?;
    results.push((format!("chooser: {}", plan_label(&auto[0])), None, time_rounds(dev, &auto, 3, reps)?, e));
    for kind in TileKind::ALL.into_iter().filter(|k| k.supports(shape.1, 0)) {
        let max = max_splits(kind, &probe);
        let splits: Vec<u32> = if args.quick { vec![1, 4] } else { vec![1, 2, 3, 4, 6, 8, 12, 16] };
        for s in splits.into_iter().filter(|&s| s <= max) {
            let plan = Plan { kind, k_splits: s };
            // Unsplit plans both ways: as they are, and recut by stream-K balancing.
            let ways: &[Option<bool>] = if s == 1 { &[Some(false), Some(true)] } else { &[Some(false)] };
            for &balance in ways {
                let rounds = build(Some(plan), balance);
                let e = verify(&gpu, &sets[0], &rounds[0])?;
                results.push((plan_label(&rounds[0]), Some(plan), time_rounds(dev, &rounds, 3, reps)?, e));
            }
        }
    }
    results.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut table = Table::new(&["variant", "us", "vs_cublasSgemmBatched", "max_rel_err"]);
    table.row(vec!["cublasSgemmBatched".into(), format!("{blas_us:.1}"), "1.00".into(), "-".into()]);
    for (name, _, us, e) in &results {
        table.row(vec![name.clone(), format!("{us:.1}"), format!("{:.2}", blas_us / us), format!("{e:.1e}")]);
    }
    if let Some(path) = &args.write {
        let best = results.iter().find_map(|r| r.1).expect("at least one forced plan");
        let mut chooser = if path.exists() { TileChooser::load(path)? } else { TileChooser::default() };
        chooser.table.retain(|(s, _)| *s != shape);
        chooser.table.push((shape, best));
        chooser.save(path)?;
        println!("wrote {}/k{} for {shape:?} to {}", best.kind.name(), best.k_splits, path.display());
    }
    table.finish(&describe, args.out.as_deref(), &format!("tune-{}x{}x{}-{}", shape.0, shape.1, shape.2, args.count))
}
