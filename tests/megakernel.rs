//! The megakernel's correctness on every device: heterogeneous rounds against an f64 reference.
//! The `gpu` variants run on the CUDA device when there is one (see docs/results/ for runs).

mod common;

use common::{Kinds, check_cases, say};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tilemux::Device;
use tilemux::abi::{Activation, BiasMode, TileKind, flags};
use tilemux::reference::{AWKWARD_DIMS, Case, SEED_SHAPES, random_dims};

/// A fresh seed per run (printed), or `TILEMUX_SEED` to replay one.
fn rng() -> StdRng {
    let seed = std::env::var("TILEMUX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    say(&format!("seed {seed} (TILEMUX_SEED={seed} replays it)"));
    StdRng::seed_from_u64(seed)
}

device_test!(mixed_batch, 300, 1100, |d: &dyn Device, max: u32| {
    let mut rng = rng();
    let mut cases: Vec<Case> = (0..120)
        .map(|_| {
            let dims = random_dims(&mut rng, max);
            Case::random(&mut rng, dims)
        })
        .collect();
    let worst = check_cases(d, &mut cases, Kinds::Random, 2, &mut rng);
    say(&format!("mixed_batch on {}: 120 problems × 2 runs, worst relative error {worst:.2e}", d.name()));
});

device_test!(chooser_batch, 300, 1100, |d: &dyn Device, max: u32| {
    let mut rng = rng();
    let mut cases: Vec<Case> = (0..150)
        .map(|_| {
            let dims = random_dims(&mut rng, max);
            Case::random(&mut rng, dims)
        })
        .collect();
    let worst = check_cases(d, &mut cases, Kinds::Auto, 1, &mut rng);
    say(&format!("chooser_batch on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(every_kind_flag_and_epilogue, 0, 0, |d: &dyn Device, _max: u32| {
    let mut rng = rng();
    let mut worst = 0.0f64;
    for kind in TileKind::ALL {
        let mut cases = Vec::new();
        for fl in 0..4u32 {
            for act in Activation::ALL {
                for bias in BiasMode::ALL {
                    let dims = if kind.is_gemv() {
                        if fl & 1 != 0 {
                            continue;
                        }
                        [(129, 1, 67), (1, 1, 1), (300, 1, 1021)][cases.len() % 3]
                    } else {
                        [(129, 65, 33), (1, 1, 1), (200, 131, 17), (64, 128, 9)][cases.len() % 4]
                    };
                    let beta = if cases.len() % 2 == 0 { 0.0 } else { 0.75 };
                    cases.push(Case::build(
                        &mut rng,
                        dims,
                        fl,
                        (cases.len() as u32 % 3, 1, 2),
                        (1.25, beta),
                        act,
                        bias,
                    ));
                }
            }
        }
        worst = worst.max(check_cases(d, &mut cases, Kinds::Only(kind, 1), 1, &mut rng));
    }
    say(&format!("every_kind_flag_and_epilogue on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(interior_layouts, 0, 0, |d: &dyn Device, _max: u32| {
    // Leading dimensions padded to multiples of 4 (16-byte rows): the SGEMM kinds' interior fast
    // path (A k-contiguous, B either way) takes the inner tiles, the general path the edge tiles
    // and the transposed A; k = 37 adds a k-tail slice.
    let mut rng = rng();
    let mut worst = 0.0f64;
    for kind in TileKind::ALL.into_iter().filter(|k| !k.is_gemv()) {
        let mut cases = Vec::new();
        for fl in 0..4u32 {
            for (m, n, k) in [(256u32, 256u32, 72u32), (384, 320, 37), (512, 128, 1152)] {
                let ac = if fl & flags::TRANS_A != 0 { m } else { k };
                let bc = if fl & flags::TRANS_B != 0 { k } else { n };
                let pad = (ac.next_multiple_of(4) - ac, bc.next_multiple_of(4) - bc, 0);
                let (alpha, beta) = (rng.random_range(-2.0f32..2.0), rng.random_range(-1.5f32..1.5));
                cases.push(Case::build(&mut rng, (m, n, k), fl, pad, (alpha, beta), Activation::None, BiasMode::Col));
            }
        }
        worst = worst.max(check_cases(d, &mut cases, Kinds::Only(kind, 1), 1, &mut rng));
    }
    say(&format!("interior_layouts on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(tile_edges, 0, 0, |d: &dyn Device, _max: u32| {
    let mut rng = rng();
    let edges = [1u32, 63, 64, 65, 127, 128, 129, 255, 256, 257];
    let mut cases = Vec::new();
    for (i, &m) in edges.iter().enumerate() {
        let n = edges[(i * 3 + 1) % edges.len()];
        let k = [1u32, 7, 8, 9, 16, 33][i % 6];
        cases.push(Case::random(&mut rng, (m, n, k)));
        cases.push(Case::random(&mut rng, (m, 1, edges[(i * 7) % edges.len()])));
    }
    for k in AWKWARD_DIMS {
        cases.push(Case::random(&mut rng, (37, 41, k)));
    }
    let worst = check_cases(d, &mut cases, Kinds::Random, 2, &mut rng);
    say(&format!("tile_edges on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(seed_shapes, 0, 0, |d: &dyn Device, _max: u32| {
    let mut rng = rng();
    let mut cases: Vec<Case> =
        SEED_SHAPES.iter().flat_map(|(_, s)| [*s; 3]).map(|s| Case::plain(&mut rng, s)).collect();
    let worst = check_cases(d, &mut cases, Kinds::Auto, 2, &mut rng);
    say(&format!("seed_shapes on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(split_k, 0, 0, |d: &dyn Device, _max: u32| {
    let mut rng = rng();
    let mut worst = 0.0f64;
    for kind in [TileKind::Sgemm128x128, TileKind::Sgemm128x64, TileKind::Sgemm64x64] {
        for splits in [2u32, 3, 7, 64] {
            let mut cases = Vec::new();
            for (i, dims) in
                [(256, 128, 1152), (129, 65, 333), (1, 1, 64), (200, 7, 1021), (64, 64, 40)].into_iter().enumerate()
            {
                let act = Activation::ALL[i % 2];
                let bias = BiasMode::ALL[i % 3];
                let beta = if i % 2 == 0 { 0.0 } else { -0.5 };
                cases.push(Case::build(&mut rng, dims, (i as u32) % 4, (0, 4, 1), (0.75, beta), act, bias));
            }
            worst = worst.max(check_cases(d, &mut cases, Kinds::Only(kind, splits), 2, &mut rng));
        }
    }
    say(&format!("split_k on {}: worst relative error {worst:.2e}", d.name()));
});

device_test!(stream_k, 0, 0, |d: &dyn Device, _max: u32| {
    // Rounds recut by stream-K balancing: output tiles in parts of unequal runs of grains,
    // summed by the last part to finish, next to whole tiles, GEMVs and short-k problems.
    let mut rng = rng();
    let mut worst = 0.0f64;
    let mut kinds = vec![TileKind::Sgemm128x128, TileKind::Sgemm128x64, TileKind::Sgemm64x64];
    kinds.extend(TileKind::ALL.into_iter().filter(|k| k.is_wide()));
    for kind in kinds {
        let recut = common::RECUT.with(|r| r.get());
        for slots in [7usize, 10, 29] {
            let mut cases = Vec::new();
            for i in 0..12u32 {
                let dims = match i {
                    5 => (300, 200, 777),
                    11 => (129, 65, 333),
                    _ => (256, 128, 576),
                };
                let act = Activation::ALL[i as usize % 2];
                let bias = BiasMode::ALL[i as usize % 3];
                let beta = if i % 2 == 0 { 0.0 } else { -0.5 };
                cases.push(Case::build(&mut rng, dims, i % 4, (i % 3, 4, 1), (0.75, beta), act, bias));
            }
            cases.push(Case::random(&mut rng, (512, 1, 512)));
            cases.push(Case::random(&mut rng, (100, 90, 20)));
            worst = worst.max(check_cases(d, &mut cases, Kinds::Balanced(kind, slots), 1, &mut rng));
        }
        // Three slot counts: most of these rounds leave a wave partly idle.
        let recut = common::RECUT.with(|r| r.get()) - recut;
        assert!(recut >= 1, "{}: none of 3 rounds was recut", kind.name());
    }
    say(&format!("stream_k on {}: worst relative error {worst:.2e}", d.name()));
});

#[test]
fn gpu_matches_cpu_backend() {
    // The same cases and the same tile plans on both backends; outputs compared element by
    // element (the CPU backend is the reference the GPU is diffed against).
    let Some((_lock, g)) = common::gpu() else {
        say("gpu_matches_cpu_backend: skipped: no CUDA device");
        return;
    };
    let cpu = common::cpu(1 << 30);
    let mut rng = rng();
    let cases: Vec<Case> = (0..60)
        .map(|_| {
            let dims = random_dims(&mut rng, 400);
            Case::random(&mut rng, dims)
        })
        .collect();
    let devices: [&dyn Device; 2] = [&*g, &*cpu];
    let mut outs = Vec::new();
    let mut plans: Option<Vec<tilemux::round::Plan>> = None;
    for d in devices {
        let staged = tilemux::reference::Staged::new(d, &mut common::arena(d), &cases).unwrap();
        staged.poison(d, &cases).unwrap();
        // The GPU's plans, replayed on the CPU: same tile kinds, same k-splits.
        let descs = staged.descs(&cases);
        let overrides: Vec<Option<tilemux::round::Plan>> = match &plans {
            None => vec![None; cases.len()],
            Some(p) => p.iter().copied().map(Some).collect(),
        };
        let round = tilemux::round::TileChooser::default().build(
            &descs,
            &overrides,
            &tilemux::round::CostModel::default(),
            g.slots(),
        );
        plans.get_or_insert_with(|| {
            round
                .problems
                .iter()
                .map(|p| tilemux::round::Plan { kind: TileKind::from_u32(p.tile_kind).unwrap(), k_splits: p.k_splits })
                .collect::<Vec<_>>()
        });
        d.run(&round).unwrap();
        outs.push(staged.read_c(d, &cases).unwrap());
    }
    let mut worst = 0.0f64;
    for (i, c) in cases.iter().enumerate() {
        let want = c.reference();
        let (gpu, cpu) = (&outs[0][i], &outs[1][i]);
        let diff: f64 = gpu
            .iter()
            .zip(cpu)
            .map(|(a, b)| if a.to_bits() == b.to_bits() { 0.0 } else { (*a as f64 - *b as f64).powi(2) })
            .sum();
        let e = diff.sqrt() / want.scale.max(f64::MIN_POSITIVE);
        assert!(e < 1e-5, "case {i} ({}x{}x{}): GPU and CPU backend differ by {e:e}", c.m, c.n, c.k);
        worst = worst.max(e);
    }
    say(&format!("gpu_matches_cpu_backend: 60 random problems, worst GPU-vs-CPU-backend difference {worst:.1e}"));
}
