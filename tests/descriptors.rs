//! Bad descriptors get typed errors before any backend touches memory, and nothing is written.

mod common;

use common::say;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tilemux::abi::{TileDesc, TileKind, flags};
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
    let round = TileChooser::default().build(&staged.descs(&cases), &[], &CostModel::default(), d.slots());
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
    fail(d, |r| r.tiles[0].split = 1, |e| matches!(e, E::TileCoord { .. }), "outside");
    fail(
        d,
        |r| {
            let t: TileDesc = r.tiles[1];
            r.tiles[0] = t;
        },
        |e| matches!(e, E::DuplicateTile { .. } | E::MissingTiles { .. }),
        "",
    );
    fail(
        d,
        |r| {
            let t: TileDesc = r.tiles[1];
            r.tiles.push(t);
        },
        |e| matches!(e, E::MissingTiles { .. }),
        "expected each",
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
