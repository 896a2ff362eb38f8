//! The descriptor ABI as the host compiles it: sizes, offsets, alignment, enum codes.

use std::mem::{align_of, offset_of, size_of};

use tilemux::abi::*;

#[test]
fn problem_desc_layout() {
    assert_eq!(size_of::<ProblemDesc>(), 128);
    assert_eq!(align_of::<ProblemDesc>(), 16);
    let offsets = [
        (offset_of!(ProblemDesc, a), 0),
        (offset_of!(ProblemDesc, b), 8),
        (offset_of!(ProblemDesc, c), 16),
        (offset_of!(ProblemDesc, bias), 24),
        (offset_of!(ProblemDesc, m), 32),
        (offset_of!(ProblemDesc, n), 36),
        (offset_of!(ProblemDesc, k), 40),
        (offset_of!(ProblemDesc, lda), 44),
        (offset_of!(ProblemDesc, ldb), 48),
        (offset_of!(ProblemDesc, ldc), 52),
        (offset_of!(ProblemDesc, alpha), 56),
        (offset_of!(ProblemDesc, beta), 60),
        (offset_of!(ProblemDesc, flags), 64),
        (offset_of!(ProblemDesc, activation), 68),
        (offset_of!(ProblemDesc, bias_mode), 72),
        (offset_of!(ProblemDesc, tile_kind), 76),
        (offset_of!(ProblemDesc, tiles_m), 80),
        (offset_of!(ProblemDesc, tiles_n), 84),
        (offset_of!(ProblemDesc, tenant), 88),
        (offset_of!(ProblemDesc, completion), 92),
        (offset_of!(ProblemDesc, workspace), 96),
        (offset_of!(ProblemDesc, counters), 104),
        (offset_of!(ProblemDesc, k_splits), 112),
    ];
    for (i, (got, want)) in offsets.iter().enumerate() {
        assert_eq!(got, want, "field {i}");
    }
}

#[test]
fn tile_desc_layout() {
    assert_eq!(size_of::<TileDesc>(), 16);
    assert_eq!(align_of::<TileDesc>(), 16);
    assert_eq!(offset_of!(TileDesc, problem), 0);
    assert_eq!(offset_of!(TileDesc, tile_m), 4);
    assert_eq!(offset_of!(TileDesc, tile_n), 8);
    assert_eq!(offset_of!(TileDesc, split), 12);
}

#[test]
fn descriptors_are_pod_bytes() {
    let t = TileDesc { problem: 7, tile_m: 3, tile_n: 9, split: 0 };
    let bytes: &[u8] = bytemuck::bytes_of(&t);
    assert_eq!(bytes[..12], [7, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0]);
    let p: ProblemDesc = bytemuck::Zeroable::zeroed();
    assert_eq!(bytemuck::bytes_of(&p), &[0u8; 128][..]);
}

#[test]
fn enum_codes_round_trip() {
    for (i, k) in TileKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i, "ALL is in code order");
        assert_eq!(TileKind::from_u32(*k as u32), Some(*k));
        let s = k.shape();
        assert!(s.bm > 0 && s.bn > 0);
        let build = if k.is_wide() { TileKind::wide_smem_bytes() } else { TileKind::megakernel_smem_bytes() };
        assert!(k.smem_bytes() + SMEM_HEADER_BYTES <= build, "{k:?} fits its build's shared memory");
    }
    assert_eq!(TileKind::from_u32(TileKind::ALL.len() as u32), None);
    assert!(TileKind::megakernel_smem_bytes() <= TileKind::wide_smem_bytes());
    assert!(TileKind::ALL.iter().any(|k| k.is_wide()) && !TileKind::Sgemm128x128.is_wide());
    for a in Activation::ALL {
        assert_eq!(Activation::from_u32(a as u32), Some(a));
    }
    for b in BiasMode::ALL {
        assert_eq!(BiasMode::from_u32(b as u32), Some(b));
    }
    assert_eq!(Activation::from_u32(2), None);
    assert_eq!(BiasMode::from_u32(3), None);
}

#[test]
fn gemv_kinds_only_support_plain_matrix_vector() {
    for k in TileKind::ALL {
        assert!(k.supports(7, flags::TRANS_B) != k.is_gemv());
        assert!(k.supports(1, 0));
        assert_eq!(k.supports(1, flags::TRANS_A), !k.is_gemv());
    }
}

#[test]
fn extents() {
    assert_eq!(matrix_extent(3, 4, 10), 24);
    assert_eq!(matrix_extent(1, 5, 5), 5);
    assert_eq!(matrix_extent(0, 5, 5), 0);
}

#[test]
fn embedded_ptx_has_the_megakernel() {
    let ptx = tilemux::cuda::PTX;
    assert!(ptx.contains(".entry tilemux_round"));
    assert!(ptx.contains("fma.rn.f32"), "FMA must be explicit in the PTX");
    assert!(!ptx.contains("__local_depot"));
    assert!(ptx.contains(&format!(".target {}", tilemux::cuda::PTX_TARGET)));
}

#[test]
fn split_ranges_cover_k_once() {
    for k in [1u32, 7, 8, 9, 64, 100, 1152, 1021] {
        let steps = k.div_ceil(SGEMM_BK);
        for splits in 1..=steps.min(MAX_K_SPLITS) {
            let p = ProblemDesc { k, k_splits: splits, ..bytemuck::Zeroable::zeroed() };
            let mut next = 0;
            for s in 0..splits {
                let (a, b) = p.split_range(s);
                assert_eq!(a, next, "k={k} splits={splits} slice {s} starts where the last ended");
                assert!(b >= a);
                next = b;
            }
            assert_eq!(next, k, "k={k} splits={splits} covers k");
        }
    }
}

/// Each build of the megakernel JITs only its entry points, from one embedded PTX.
#[test]
fn ptx_builds_keep_only_their_entries() {
    let entries = |ptx: &str| -> Vec<String> {
        ptx.lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|r| r.split('(').next().unwrap_or("").to_string())
            .collect()
    };
    let all = entries(tilemux::cuda::PTX);
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(entries(&tilemux::cuda::ptx_with_entries(&["tilemux_sm_rtt"])), ["tilemux_sm_rtt"]);
    let narrow = tilemux::cuda::ptx_with_entries(&["tilemux_round", "tilemux_persistent"]);
    let wide = tilemux::cuda::ptx_with_entries(&["tilemux_round_wide"]);
    let probe = tilemux::cuda::ptx_with_entries(&["tilemux_echo"]);
    let mut n = entries(&narrow);
    n.sort();
    assert_eq!(n, ["tilemux_persistent", "tilemux_round"]);
    assert_eq!(entries(&wide), ["tilemux_round_wide"]);
    assert_eq!(entries(&probe), ["tilemux_echo"]);
    // A function the PTX does not export stays only in the builds whose entries call it.
    assert_eq!(narrow.matches("\n.func ").count(), tilemux::cuda::PTX.matches("\n.func ").count());
    assert!(!wide.contains("\n.func ") && !probe.contains("\n.func "));
    for p in [&narrow, &wide, &probe] {
        assert!(p.contains(".extern .shared") && p.contains(".version"));
        assert_eq!(p.matches('{').count(), p.matches('}').count(), "unbalanced braces");
    }
    assert!(narrow.len() + wide.len() + probe.len() < tilemux::cuda::PTX.len() + 4096);
}
