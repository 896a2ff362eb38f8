//! Bad descriptors get typed errors before any backend touches memory, and nothing is written.

mod common;

use common::say;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tilemux::abi::{KPart, TileDesc, TileKind, flags};
use tilemux::reference::{Case, Staged};
use tilemux::round::{CostModel, Plan, Round, TileChooser};
use tilemux::{DescriptorError, Device, Error};

/// A valid three-problem round and its staging.
fn setup(d: &dyn Device) -> (Vec<Case>, Staged, Round) {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let cases = vec![
        Case::plain(&mut rng, (130, 70, 40)),
        Case::plain(&mut rng, (65, 1, 300)),
        Case::plain(&mut rng, (33, 129, 5)),
    ];
    let staged = Staged::new(d, &mut common::arena(d), &cases).unwrap();
    // Unbalanced: the mutations below edit tiles, which stream-K unit offsets would also cover.
    let chooser = TileChooser { no_balance: true, ..TileChooser::default() };
    let round = chooser.build(&staged.descs(&cases), &[], &CostModel::default(), d.slots());
    (cases, staged, round)
}

/// Runs `round` after `mutate`, expects an error that `matches` and whose message contains
/// `msg`, then checks no output was written and that the original round still runs.
fn fail(d: &dyn Device, mutate: impl Fn(&mut Round), matches: impl Fn(&DescriptorError) -> bool, msg: &str) {
    let (cases, staged, round) = setup(d);
    let mut bad = round.clone();
    mutate(&mut bad);
    staged.poison(d, &cases).unwrap();
    match d.run(&bad) {
        Err(Error::Descriptor(e)) => {
            assert!(matches(&e), "wrong error variant: {e:?}");
            assert!(e.to_string().contains(msg), "message {:?} lacks {msg:?}", e.to_string());
        }
        Err(e) => panic!("expected a descriptor error, got {e}"),
        Ok(_) => panic!("a bad round ran"),
    }
    for (c, got) in cases.iter().zip(staged.read_c(d, &cases).unwrap()) {
        assert!(got.iter().all(|v| v.is_nan()), "a rejected round wrote output");
        let _ = c;
    }
    d.run(&round).expect("the device still runs valid rounds");
    for (c, got) in cases.iter().zip(staged.read_c(d, &cases).unwrap()) {
        assert!(c.error(&got, &c.reference()) < 1e-4);
    }
}

/// Replaces problem 0's tiles by `parts` (first, last, index, count) of each output tile, with
/// `k_splits` grains and `k_parts` parts at most (problem 0 is 130×70×40: five k-steps).
fn recut(r: &mut Round, parts: &[(u32, u32, u32, u32)], k_splits: u32, k_parts: u32) {
    let p = &mut r.problems[0];
    (p.k_splits, p.k_parts) = (k_splits, k_parts);
    let (tiles_m, tiles_n) = (p.tiles_m, p.tiles_n);
    r.tiles.retain(|t| t.problem != 0);
    for tile_m in 0..tiles_m {
        for tile_n in 0..tiles_n {
            for &(first, last, index, count) in parts {
                let split = KPart { first, last, index, count }.encode();
                r.tiles.push(TileDesc { problem: 0, tile_m, tile_n, split });
            }
        }
    }
}

/// Output tiles cut by hand into unequal parts (what stream-K balancing emits) run and match
/// the reference; cuts that leave out, repeat or misnumber grains are refused.
fn hand_cut_parts(d: &dyn Device) {
    use DescriptorError as E;
    let (cases, staged, mut round) = setup(d);
    recut(&mut round, &[(0, 1, 0, 2), (2, 4, 1, 2)], 5, 2);
    staged.poison(d, &cases).unwrap();
    d.run(&round).expect("a valid stream-K cut runs");
    for (c, got) in cases.iter().zip(staged.read_c(d, &cases).unwrap()) {
        assert!(c.error(&got, &c.reference()) < 1e-4);
    }
    fail(d, |r| recut(r, &[(0, 1, 0, 2), (3, 4, 1, 2)], 5, 2), |e| matches!(e, E::KCover { .. }), "leave grains");
    fail(d, |r| recut(r, &[(0, 2, 0, 2), (2, 4, 1, 2)], 5, 2), |e| matches!(e, E::DuplicateTile { .. }), "twice");
    fail(d, |r| recut(r, &[(0, 1, 1, 2), (2, 4, 0, 2)], 5, 2), |e| matches!(e, E::KCover { .. }), "part numbers");
    fail(d, |r| recut(r, &[(0, 1, 0, 3), (2, 4, 1, 3)], 5, 3), |e| matches!(e, E::KCover { .. }), "miscount");
    fail(d, |r| recut(r, &[(0, 1, 0, 2), (2, 4, 1, 2)], 5, 1), |e| matches!(e, E::TilePart { .. }), "at most 1");
    fail(d, |r| recut(r, &[(0, 1, 0, 2), (2, 5, 1, 2)], 5, 2), |e| matches!(e, E::TilePart { .. }), "do not fit");
    fail(d, |r| recut(r, &[(0, 4, 0, 1)], 5, 6), |e| matches!(e, E::KParts { .. }), "k_parts");
    // Units: a valid partition runs (above, every tile its own unit); bad offsets are refused.
    let (cases, staged, mut round) = setup(d);
    let n = round.tiles.len() as u32;
    round.units = vec![0, 1, n];
    staged.poison(d, &cases).unwrap();
    d.run(&round).expect("tiles grouped into units run");
    for (c, got) in cases.iter().zip(staged.read_c(d, &cases).unwrap()) {
        assert!(c.error(&got, &c.reference()) < 1e-4);
    }
    fail(d, |r| r.units = vec![0, 1, 1, r.tiles.len() as u32], |e| matches!(e, E::Units { .. }), "increasing");
    fail(d, |r| r.units = vec![0, r.tiles.len() as u32 - 1], |e| matches!(e, E::Units { .. }), "unit offsets");
    fail(d, |r| r.units = vec![1, r.tiles.len() as u32], |e| matches!(e, E::Units { .. }), "unit offsets");
}

fn every_bad_descriptor(d: &dyn Device) {
    let pool_end = d.pool().end;
    use DescriptorError as E;
    fail(
        d,
        |r| r.tiles[0].tile_m = r.problems[r.tiles[0].problem as usize].tiles_m,
        |e| matches!(e, E::TileCoord { .. }),
        "outside",
    );
    fail(d, |r| r.tiles[0].problem = 3, |e| matches!(e, E::TileProblem { .. }), "past the round");
    fail(d, |r| r.problems[0].m = 0, |e| matches!(e, E::ZeroDim { dim: 'm', .. }), "is zero");
    fail(d, |r| r.problems[2].k = 0, |e| matches!(e, E::ZeroDim { dim: 'k', .. }), "is zero");
    fail(
        d,
        |r| r.problems[0].c = pool_end - 64,
        |e| matches!(e, E::OutOfBounds { matrix: 'C', .. }),
        "outside device memory",
    );
    fail(d, |r| r.problems[1].a = 256, |e| matches!(e, E::OutOfBounds { matrix: 'A', .. }), "outside device memory");
    fail(d, |r| r.problems[0].lda = 3, |e| matches!(e, E::LeadingDim { matrix: 'A', .. }), "below its row length");
    fail(d, |r| r.problems[2].b += 2, |e| matches!(e, E::Misaligned { .. }), "aligned");
    fail(d, |r| r.problems[0].flags = 8, |e| matches!(e, E::BadFlags { .. }), "flag");
    fail(d, |r| r.problems[0].tile_kind = 99, |e| matches!(e, E::BadTileKind { code: 99, .. }), "unknown tile kind");
    fail(d, |r| r.problems[0].activation = 7, |e| matches!(e, E::BadEpilogue { .. }), "activation");
    fail(d, |r| r.problems[1].alpha = f32::NAN, |e| matches!(e, E::NonFiniteScalar { .. }), "not finite");
    fail(d, |r| r.problems[0].beta = f32::INFINITY, |e| matches!(e, E::NonFiniteScalar { .. }), "not finite");
    fail(d, |r| r.problems[2].completion = 9, |e| matches!(e, E::CompletionSlot { .. }), "completion slot");
    fail(d, |r| r.problems[0].tiles_m += 1, |e| matches!(e, E::TileGrid { .. }), "tile grid");
    fail(
        d,
        |r| {
            // A GEMV tile kind for a problem with n > 1.
            let p = &mut r.problems[0];
            p.tile_kind = TileKind::Gemv32 as u32;
        },
        |e| matches!(e, E::UnsupportedTileKind { .. } | E::TileGrid { .. }),
        "problem",
    );
    fail(
        d,
        |r| {
            r.tiles.pop();
        },
        |e| matches!(e, E::MissingTiles { .. }),
        "expected each",
    );
    fail(d, |r| r.problems[0].k_splits = 0, |e| matches!(e, E::KSplits { .. }), "k_splits");
    fail(d, |r| r.problems[2].k_splits = 2, |e| matches!(e, E::KSplits { .. }), "k_splits"); // k = 5: one step
    fail(d, |r| r.problems[1].k_splits = 2, |e| matches!(e, E::KSplits { .. }), "k_splits"); // GEMV
    fail(d, |r| r.tiles[0].split = 1, |e| matches!(e, E::TilePart { .. }), "do not fit");
    fail(
        d,
        |r| {
            let t: TileDesc = r.tiles[1];
            r.tiles[0] = t;
        },
        |e| matches!(e, E::DuplicateTile { .. } | E::MissingTiles { .. } | E::KCover { .. }),
        "",
    );
    fail(
        d,
        |r| {
            let t: TileDesc = r.tiles[1];
            r.tiles.push(t);
        },
        |e| matches!(e, E::DuplicateTile { .. }),
        "twice",
    );
    fail(d, |r| r.problems[0].c = r.problems[0].a, |e| matches!(e, E::Overlap { .. }), "overlaps");
    fail(d, |r| r.problems[2].c = r.problems[0].c, |e| matches!(e, E::Overlap { .. }), "overlaps");
    fail(d, |r| r.problems[1].c = r.problems[2].b + 4, |e| matches!(e, E::Overlap { .. }), "overlaps");
    fail(
        d,
        |r| {
            r.problems[1].flags |= flags::TRANS_A;
            r.problems[1].tile_kind = TileKind::Gemv32 as u32;
        },
        |e| matches!(e, E::UnsupportedTileKind { .. } | E::LeadingDim { .. } | E::OutOfBounds { .. }),
        "",
    );
}

device_test!(bad_descriptors, 0, 0, |d: &dyn Device, _max: u32| {
    every_bad_descriptor(d);
    hand_cut_parts(d);
});

#[test]
fn gpu_status_path() {
    // The megakernel's own checks (behind `round::check`): a bad tile kind is reported through
    // the status word and the tile is skipped; the device keeps working afterwards.
    let Some((_lock, g)) = common::gpu() else {
        say("gpu_status_path: skipped: no CUDA device");
        return;
    };
    let d: &dyn Device = &*g;
    let (cases, staged, round) = setup(d);
    let mut bad = round.clone();
    bad.problems[0].tile_kind = 77;
    // SAFETY: only the tile kind is wrong; every address is the staged, valid memory.
    match unsafe { g.run_unchecked(&bad) } {
        Err(Error::DeviceStatus { code, .. }) => {
            assert_eq!(code, tilemux::abi::status::BAD_TILE_KIND)
        }
        other => panic!("expected a device status error, got {other:?}"),
    }
    // An empty unit: BAD_TILE_COORD, nothing run for it.
    let mut bad = round.clone();
    bad.units = vec![0, 0, bad.tiles.len() as u32];
    // SAFETY: only the unit offsets are wrong; every address is the staged, valid memory.
    match unsafe { g.run_unchecked(&bad) } {
        Err(Error::DeviceStatus { code, .. }) => assert_eq!(code, tilemux::abi::status::BAD_TILE_COORD),
        other => panic!("expected a device status error, got {other:?}"),
    }
    // A k-part past the problem's grains: BAD_TILE_COORD, nothing run for it.
    let mut bad = round.clone();
    bad.tiles[0].split = KPart { first: 3, last: 9, index: 0, count: 1 }.encode();
    // SAFETY: only the tile's k-part is wrong; every address is the staged, valid memory.
    match unsafe { g.run_unchecked(&bad) } {
        Err(Error::DeviceStatus { code, .. }) => assert_eq!(code, tilemux::abi::status::BAD_TILE_COORD),
        other => panic!("expected a device status error, got {other:?}"),
    }
    staged.poison(d, &cases).unwrap();
    d.run(&round).unwrap();
    for (c, got) in cases.iter().zip(staged.read_c(d, &cases).unwrap()) {
        assert!(c.error(&got, &c.reference()) < 1e-4);
    }
}

#[test]
fn gpu_wide_kind_without_wide_build() {
    // A device loaded without the wide build reports a wide tile kind through the status word
    // (NEEDS_WIDE) and runs none of its tiles; the same round runs on a device that has it.
    let Some((_lock, g)) = common::gpu() else {
        say("gpu_wide_kind_without_wide_build: skipped: no CUDA device");
        return;
    };
    let narrow = tilemux::cuda::CudaDevice::with_gpu(
        g.gpu().clone(),
        &tilemux::cuda::CudaConfig { pool_bytes: 256 << 20, wide: false, ..Default::default() },
    )
    .unwrap();
    assert!(narrow.wide_slots().is_none() && g.wide_slots().is_some());
    for d in [&narrow as &dyn Device, &*g] {
        let mut rng = rand::rng();
        let cases = vec![Case::random(&mut rng, (300, 200, 77))];
        let staged = Staged::new(d, &mut common::arena(d), &cases).unwrap();
        staged.poison(d, &cases).unwrap();
        let plan = Some(Plan::new(TileKind::Sgemm256x128));
        let round = TileChooser::default().build(&staged.descs(&cases), &[plan], &CostModel::default(), d.slots());
        assert!(round.is_wide());
        // C as staged: NaN, or its initial values where beta != 0 reads them.
        let before = staged.read_c(d, &cases).unwrap();
        match d.run(&round) {
            Err(Error::DeviceStatus { code, .. }) if d.wide_slots().is_none() => {
                assert_eq!(code, tilemux::abi::status::NEEDS_WIDE);
                let got = staged.read_c(d, &cases).unwrap();
                let same = got[0].iter().zip(&before[0]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "a tile of the wide kind ran on the narrow build");
            }
            Ok(_) if d.wide_slots().is_some() => {
                let got = staged.read_c(d, &cases).unwrap();
                assert!(cases[0].error(&got[0], &cases[0].reference()) < 1e-4);
            }
            other => panic!("unexpected result {other:?} (wide build: {:?})", d.wide_slots()),
        }
    }
}
