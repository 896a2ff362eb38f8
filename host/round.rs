//! Rounds: the descriptors of one megakernel launch, the checks every backend runs on them, the
//! tile chooser and the cost model that sizes and orders them.
//!
//! A [`Round`] is plain data. [`check`] is the memory-safety gate of the backend layer: a round
//! that passes only reads and writes inside the device pool, its outputs overlap nothing else it
//! touches, and each tile appears exactly once. Policy (tenants, quotas) is not checked here; that
//! is `validate`'s job.

use std::ops::Range;
use std::time::Duration;

use crate::abi::{self, Activation, BiasMode, MAX_DIM, ProblemDesc, TileDesc, TileKind, flags, matrix_extent};
use crate::error::DescriptorError;

/// The descriptors of one launch. Problem `i` uses completion slot `i`.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// One descriptor per problem.
    pub problems: Vec<ProblemDesc>,
    /// Every tile of every problem, in the order CTAs will claim them.
    pub tiles: Vec<TileDesc>,
}

impl Round {
    /// Adds `p` to run with `kind` and `k_splits` slices of `k`: fills its tile grid, split count
    /// and completion slot and appends all its tiles. Returns the problem's index.
    pub fn push(&mut self, mut p: ProblemDesc, kind: TileKind, k_splits: u32) -> usize {
        let idx = self.problems.len();
        let s = kind.shape();
        p.tile_kind = kind as u32;
        p.tiles_m = p.m.div_ceil(s.bm);
        p.tiles_n = p.n.div_ceil(s.bn);
        p.k_splits = k_splits;
        p.completion = idx as u32;
        for tile_m in 0..p.tiles_m {
            for tile_n in 0..p.tiles_n {
                for split in 0..k_splits {
                    self.tiles.push(TileDesc { problem: idx as u32, tile_m, tile_n, split });
                }
            }
        }
        self.problems.push(p);
        idx
    }

    /// Whether some problem runs a [`TileKind::is_wide`] kind: then the whole round runs on the
    /// wide build of the megakernel (one CTA per SM, [`crate::device::Device::wide_slots`]).
    pub fn is_wide(&self) -> bool {
        self.problems.iter().any(|p| TileKind::from_u32(p.tile_kind).is_some_and(TileKind::is_wide))
    }

    /// Orders tiles longest first by `cost` (LPT list scheduling): long tiles start early, short
    /// ones fill the tail. Stable, so equal tiles keep problem order.
    pub fn order_longest_first(&mut self, cost: &CostModel) {
        // All tiles of a problem cost the same: order problems, then lay their tiles out in that
        // order (O(P log P + T) rather than sorting every tile).
        let mut order: Vec<(u64, usize)> =
            self.problems.iter().enumerate().map(|(i, p)| (cost.tile_ns(p) as u64, i)).collect();
        order.sort_by_key(|&(c, i)| (std::cmp::Reverse(c), i));
        let mut start = vec![0usize; self.problems.len() + 1];
        for t in &self.tiles {
            start[t.problem as usize + 1] += 1;
        }
        for i in 0..self.problems.len() {
            start[i + 1] += start[i];
        }
        let mut by_problem = vec![TileDesc { problem: 0, tile_m: 0, tile_n: 0, split: 0 }; self.tiles.len()];
        let mut fill = start.clone();
        for t in &self.tiles {
            by_problem[fill[t.problem as usize]] = *t;
            fill[t.problem as usize] += 1;
        }
        self.tiles.clear();
        for (_, i) in order {
            self.tiles.extend_from_slice(&by_problem[start[i]..start[i + 1]]);
        }
    }

    /// Floating-point operations of the whole round (2·m·n·k per problem).
    pub fn flops(&self) -> f64 {
        self.problems.iter().map(|p| 2.0 * p.m as f64 * p.n as f64 * p.k as f64).sum()
    }

    /// Whether the round holds no work.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Removes all problems and tiles, keeping the allocations.
    pub fn clear(&mut self) {
        self.problems.clear();
        self.tiles.clear();
    }
}

/// A descriptor for `C = act(alpha·op(A)·op(B) + beta·C + bias)` before the round builder picks
/// its tile kind. Addresses are device addresses.
#[allow(clippy::too_many_arguments)]
pub fn problem(
    (a, b, c, bias): (u64, u64, u64, u64),
    (m, n, k): (u32, u32, u32),
    (lda, ldb, ldc): (u32, u32, u32),
    (alpha, beta): (f32, f32),
    flags: u32,
    activation: Activation,
    bias_mode: BiasMode,
) -> ProblemDesc {
    ProblemDesc {
        a,
        b,
        c,
        bias,
        m,
        n,
        k,
        lda,
        ldb,
        ldc,
        alpha,
        beta,
        flags,
        activation: activation as u32,
        bias_mode: bias_mode as u32,
        tile_kind: 0,
        tiles_m: 0,
        tiles_n: 0,
        tenant: 0,
        completion: 0,
        workspace: 0,
        counters: 0,
        k_splits: 1,
        _reserved: [0; 3],
    }
}

/// Most useful k-splits of `p` with `kind`: at least 4 `SGEMM_BK` steps per slice, never for GEMV.
pub fn max_splits(kind: TileKind, p: &ProblemDesc) -> u32 {
    if kind.is_gemv() { 1 } else { (p.k.div_ceil(abi::SGEMM_BK) / 4).clamp(1, abi::MAX_K_SPLITS) }
}

/// Byte ranges a problem reads (`A`, `B`, bias, and `C` when `beta != 0`) and writes (`C`).
fn spans(p: &ProblemDesc) -> [(char, Range<u64>); 4] {
    let span = |addr: u64, elems: u64| addr..addr + elems * 4;
    let (ar, ac) = p.a_stored();
    let (br, bc) = p.b_stored();
    [
        ('A', span(p.a, matrix_extent(ar, ac, p.lda))),
        ('B', span(p.b, matrix_extent(br, bc, p.ldb))),
        ('C', span(p.c, matrix_extent(p.m, p.n, p.ldc))),
        ('b', span(p.bias, p.bias_len() as u64)),
    ]
}

fn check_problem(i: usize, p: &ProblemDesc, pool: &Range<u64>) -> Result<TileKind, DescriptorError> {
    for (dim, value) in [('m', p.m), ('n', p.n), ('k', p.k)] {
        if value == 0 {
            return Err(DescriptorError::ZeroDim { problem: i, dim });
        }
        if value > MAX_DIM {
            return Err(DescriptorError::DimTooLarge { problem: i, dim, value, limit: MAX_DIM });
        }
    }
    if p.flags & !flags::ALL != 0 {
        return Err(DescriptorError::BadFlags { problem: i, flags: p.flags });
    }
    if Activation::from_u32(p.activation).is_none() || BiasMode::from_u32(p.bias_mode).is_none() {
        return Err(DescriptorError::BadEpilogue { problem: i, activation: p.activation, bias_mode: p.bias_mode });
    }
    if !p.alpha.is_finite() || !p.beta.is_finite() {
        return Err(DescriptorError::NonFiniteScalar { problem: i });
    }
    let kind = TileKind::from_u32(p.tile_kind).ok_or(DescriptorError::BadTileKind { problem: i, code: p.tile_kind })?;
    if !kind.supports(p.n, p.flags) {
        return Err(DescriptorError::UnsupportedTileKind { problem: i, kind: kind.name(), m: p.m, n: p.n, k: p.k });
    }
    let steps = p.k.div_ceil(abi::SGEMM_BK);
    if p.k_splits == 0 || p.k_splits > abi::MAX_K_SPLITS || p.k_splits > steps || (kind.is_gemv() && p.k_splits != 1) {
        return Err(DescriptorError::KSplits {
            problem: i,
            k_splits: p.k_splits,
            max: if kind.is_gemv() { 1 } else { steps.min(abi::MAX_K_SPLITS) },
        });
    }
    let s = kind.shape();
    let (expect_m, expect_n) = (p.m.div_ceil(s.bm), p.n.div_ceil(s.bn));
    if (p.tiles_m, p.tiles_n) != (expect_m, expect_n) {
        return Err(DescriptorError::TileGrid {
            problem: i,
            tiles_m: p.tiles_m,
            tiles_n: p.tiles_n,
            expect_m,
            expect_n,
        });
    }
    for (matrix, ld, row_len) in [('A', p.lda, p.a_stored().1), ('B', p.ldb, p.b_stored().1), ('C', p.ldc, p.n)] {
        if ld < row_len {
            return Err(DescriptorError::LeadingDim { problem: i, matrix, ld, row_len });
        }
    }
    for (matrix, r) in spans(p) {
        if r.is_empty() {
            continue; // no bias
        }
        if r.start % 4 != 0 {
            return Err(DescriptorError::Misaligned { problem: i, matrix, addr: r.start });
        }
        if r.start < pool.start || r.end > pool.end {
            return Err(DescriptorError::OutOfBounds {
                problem: i,
                matrix,
                start: r.start,
                end: r.end,
                pool_start: pool.start,
                pool_end: pool.end,
            });
        }
    }
    Ok(kind)
}

/// Checks a round against a device pool. On success, running it reads and writes only inside
/// `pool`, no output overlaps anything else the round touches, every tile of every problem is
/// present exactly once, and each tile kind suits its problem.
pub fn check(round: &Round, pool: Range<u64>) -> Result<(), DescriptorError> {
    let slots = round.problems.len();
    let mut first_tile = Vec::with_capacity(slots + 1);
    let mut total: u64 = 0;
    for (i, p) in round.problems.iter().enumerate() {
        check_problem(i, p, &pool)?;
        if p.completion as usize >= slots {
            return Err(DescriptorError::CompletionSlot { problem: i, slot: p.completion, slots });
        }
        first_tile.push(total);
        total += p.tile_count() as u64;
    }
    first_tile.push(total);

    // Every tile in range; then per-problem counts; then, with the total known to equal the
    // round's length, a bitset (bounded by the round itself) finds duplicates.
    let mut count = vec![0u32; slots];
    for (ti, t) in round.tiles.iter().enumerate() {
        let p = round.problems.get(t.problem as usize).ok_or(DescriptorError::TileProblem {
            tile: ti,
            problem: t.problem,
            problems: slots,
        })?;
        if t.tile_m >= p.tiles_m || t.tile_n >= p.tiles_n || t.split >= p.k_splits {
            return Err(DescriptorError::TileCoord {
                tile: ti,
                problem: t.problem,
                tile_m: t.tile_m,
                tile_n: t.tile_n,
                tiles_m: p.tiles_m,
                tiles_n: p.tiles_n,
            });
        }
        count[t.problem as usize] += 1;
    }
    if total == round.tiles.len() as u64 {
        let mut seen = vec![0u64; (total as usize).div_ceil(64)];
        for (ti, t) in round.tiles.iter().enumerate() {
            let p = &round.problems[t.problem as usize];
            let bit = first_tile[t.problem as usize]
                + (t.tile_m as u64 * p.tiles_n as u64 + t.tile_n as u64) * p.k_splits as u64
                + t.split as u64;
            let (w, b) = ((bit / 64) as usize, bit % 64);
            if seen[w] & (1 << b) != 0 {
                return Err(DescriptorError::DuplicateTile {
                    tile: ti,
                    problem: t.problem,
                    tile_m: t.tile_m,
                    tile_n: t.tile_n,
                });
            }
            seen[w] |= 1 << b;
        }
    }
    for (i, p) in round.problems.iter().enumerate() {
        if count[i] != p.tile_count() {
            return Err(DescriptorError::MissingTiles { problem: i, present: count[i], expected: p.tile_count() });
        }
    }

    // Outputs against everything else: sort all spans by start; an interval overlaps an earlier
    // one exactly when it starts before the largest end seen so far.
    let mut spans_all: Vec<(u64, u64, usize, char)> = Vec::with_capacity(slots * 4);
    for (i, p) in round.problems.iter().enumerate() {
        for (matrix, r) in spans(p) {
            if !r.is_empty() {
                spans_all.push((r.start, r.end, i, matrix));
            }
        }
    }
    spans_all.sort_unstable_by_key(|s| (s.0, s.1));
    let mut max_any: Option<(u64, usize, char)> = None;
    let mut max_out: Option<(u64, usize, char)> = None;
    for &(start, end, i, matrix) in &spans_all {
        let is_out = matrix == 'C';
        if is_out
            && let Some((e, j, m)) = max_any
            && e > start
        {
            return Err(DescriptorError::Overlap { problem: i, other: j, other_matrix: m });
        }
        if let Some((e, j, _)) = max_out
            && e > start
        {
            return Err(DescriptorError::Overlap { problem: j, other: i, other_matrix: matrix });
        }
        if max_any.is_none_or(|(e, _, _)| end > e) {
            max_any = Some((end, i, matrix));
        }
        if is_out && max_out.is_none_or(|(e, _, _)| end > e) {
            max_out = Some((end, i, matrix));
        }
    }
    Ok(())
}

/// Predicted execution time of tiles, per tile kind: `fixed + per_unit · units`, where a unit is
/// one k-step of the tile for the SGEMM kinds and one byte of `A` for the GEMV kinds. Defaults
/// come from the H100 figures in `docs/results/`; [`CostModel::calibrate`] refits them for the
/// device at hand and [`CostModel::observe`] tracks drift online.
#[derive(Clone, Debug)]
pub struct CostModel {
    fixed_ns: [f64; TileKind::ALL.len()],
    per_unit_ns: [f64; TileKind::ALL.len()],
    /// Ratio measured / predicted, smoothed over recent rounds.
    scale: f64,
    /// Fixed cost of a round (launch, copies, synchronisation).
    pub round_overhead_ns: f64,
    /// Cost of moving one partial tile through L2 in a split-K reduction.
    pub split_ns: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        // Per-CTA-slot rates on an H100 with 2 CTAs per SM: ~254 GFLOP/s of FMA peak and
        // ~11 GB/s of DRAM bandwidth per slot, at the efficiencies the tiles reach. A slot of the
        // wide build is a whole SM (twice the peak).
        let flops_ns = |bm: f64, bn: f64, eff: f64| 2.0 * bm * bn / (eff * 254.0);
        CostModel {
            // The wide kind: fitted to 120 × conv2_2 and 120 × 256³ on the H100 relative to the
            // 128×128 kind (`docs/results/`): a slightly faster k-step, but a large per-tile cost
            // (prologue and a 128 KB epilogue that no second CTA on the SM overlaps).
            fixed_ns: [2000.0, 1500.0, 1000.0, 1500.0, 2000.0, 16_400.0],
            per_unit_ns: [
                flops_ns(128.0, 128.0, 0.70),
                flops_ns(128.0, 64.0, 0.62),
                flops_ns(64.0, 64.0, 0.50),
                1.0 / 9.5,
                1.0 / 9.5,
                flops_ns(256.0, 128.0, 0.77) / 2.0,
            ],
            scale: 1.0,
            round_overhead_ns: 8000.0,
            split_ns: 600.0,
        }
    }
}

impl CostModel {
    /// Work units of one tile of `p` with `kind` (see the type's docs).
    /// A k-split tile does its share of `k`.
    pub fn units(kind: TileKind, p: &ProblemDesc) -> f64 {
        if kind.is_gemv() {
            kind.shape().bm.min(p.m) as f64 * p.k as f64 * 4.0
        } else {
            (p.k.div_ceil(abi::SGEMM_BK).div_ceil(p.k_splits.max(1)) * abi::SGEMM_BK) as f64
        }
    }

    /// Predicted nanoseconds of one tile of `p` (whose `tile_kind` is set).
    pub fn tile_ns(&self, p: &ProblemDesc) -> f64 {
        let kind = TileKind::from_u32(p.tile_kind).unwrap_or(TileKind::Sgemm64x64);
        self.kind_tile_ns(kind, p)
    }

    /// Predicted nanoseconds of one tile of `p` if it ran with `kind` (and `p.k_splits`). A split
    /// tile also pays for publishing its partial and, on average, a share of the final reduction.
    pub fn kind_tile_ns(&self, kind: TileKind, p: &ProblemDesc) -> f64 {
        let i = kind as usize;
        let reduce = if p.k_splits > 1 { self.split_ns * (1.0 + p.k_splits as f64 / 2.0) } else { 0.0 };
        self.scale * (self.fixed_ns[i] + self.per_unit_ns[i] * Self::units(kind, p) + reduce)
    }

    /// Sets one kind's coefficients (from calibration or a tuning table).
    pub fn set_kind(&mut self, kind: TileKind, fixed_ns: f64, per_unit_ns: f64) {
        self.fixed_ns[kind as usize] = fixed_ns.max(0.0);
        self.per_unit_ns[kind as usize] = per_unit_ns.max(1e-6);
    }

    /// A kind's coefficients `(fixed_ns, per_unit_ns)`.
    pub fn kind(&self, kind: TileKind) -> (f64, f64) {
        (self.fixed_ns[kind as usize], self.per_unit_ns[kind as usize])
    }

    /// Makespan of tiles of these costs on `slots` parallel CTA slots, claimed in the given order
    /// (each free slot takes the next tile): the greedy list schedule the device queue performs.
    pub fn makespan_ns(costs: impl IntoIterator<Item = f64>, slots: usize) -> f64 {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let slots = slots.max(1);
        let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(slots);
        let mut end = 0u64;
        for c in costs {
            let start = if heap.len() < slots { 0 } else { heap.pop().map_or(0, |r| r.0) };
            let finish = start + c.max(0.0) as u64;
            end = end.max(finish);
            heap.push(Reverse(finish));
        }
        end as f64
    }

    /// Makespan of groups of identical tiles `(cost, count)` on `slots` slots, claimed longest
    /// first, in O(groups): the larger of the average load and, for every cost level, the waves
    /// the tiles at least that long need (`ceil(count_so_far / slots) · cost`). Exact for one
    /// group; within a wave of the list schedule otherwise.
    pub fn makespan_groups(groups: &mut [(f64, usize)], slots: usize) -> f64 {
        let slots = slots.max(1);
        groups.sort_by(|a, b| b.0.total_cmp(&a.0));
        let total: f64 = groups.iter().map(|g| g.0 * g.1 as f64).sum();
        let (mut n, mut best) = (0usize, total / slots as f64);
        for &(c, k) in groups.iter() {
            n += k;
            best = best.max(n.div_ceil(slots) as f64 * c);
        }
        best
    }

    /// Predicted duration of `round` on `slots` CTA slots, launch overhead included.
    pub fn predict(&self, round: &Round, slots: usize) -> Duration {
        let mut groups: Vec<(f64, usize)> =
            round.problems.iter().map(|p| (self.tile_ns(p), p.tile_count() as usize)).collect();
        Duration::from_nanos((Self::makespan_groups(&mut groups, slots) + self.round_overhead_ns) as u64)
    }

    /// Folds one measured round into the model (exponential smoothing of measured / predicted).
    pub fn observe(&mut self, predicted: Duration, measured: Duration) {
        let p = predicted.as_nanos() as f64;
        if p <= self.round_overhead_ns || measured.is_zero() {
            return;
        }
        let work_pred = p - self.round_overhead_ns;
        let work_meas = (measured.as_nanos() as f64 - self.round_overhead_ns).max(0.05 * work_pred);
        let ratio = (work_meas / work_pred).clamp(0.25, 4.0);
        self.scale = (0.8 * self.scale + 0.2 * self.scale * ratio).clamp(0.05, 20.0);
    }

    /// The current drift factor (1.0 = calibrated constants hold).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Refits every kind from timed rounds: `time(kind, k, n)` must run one round of `n`
    /// identical tiles of `kind` with depth `k` (for GEMV, `k` columns of 64-row tiles) and return
    /// its duration; two depths per kind give the fixed and per-unit terms. The wide kinds are
    /// timed with `wide_slots` tiles, and kept at their defaults when that is `None`.
    pub fn calibrate(
        &mut self,
        slots: usize,
        wide_slots: Option<usize>,
        mut time: impl FnMut(TileKind, u32, usize) -> crate::Result<Duration>,
    ) -> crate::Result<()> {
        let overhead = time(TileKind::Gemv32, 4, 1)?.as_nanos() as f64;
        self.round_overhead_ns = overhead;
        for kind in TileKind::ALL {
            let slots = match (kind.is_wide(), wide_slots) {
                (false, _) => slots,
                (true, Some(w)) => w,
                (true, None) => continue,
            };
            let (k1, k2) = if kind.is_gemv() { (256u32, 4096u32) } else { (64u32, 1024u32) };
            // One full wave of tiles per slot: the round time is one tile's time.
            let t1 = (time(kind, k1, slots)?.as_nanos() as f64 - overhead).max(1.0);
            let t2 = (time(kind, k2, slots)?.as_nanos() as f64 - overhead).max(t1 + 1.0);
            let probe = |k: u32| {
                let mut p = problem(
                    (0, 0, 0, 0),
                    (kind.shape().bm, 1, k),
                    (k, 1, 1),
                    (1.0, 0.0),
                    0,
                    Activation::None,
                    BiasMode::None,
                );
                p.tile_kind = kind as u32;
                Self::units(kind, &p)
            };
            let (u1, u2) = (probe(k1), probe(k2));
            let per_unit = (t2 - t1) / (u2 - u1);
            self.set_kind(kind, t1 - per_unit * u1, per_unit);
        }
        self.scale = 1.0;
        Ok(())
    }
}

/// How one problem runs: its tile kind and how many slices of `k` its output tiles are split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tile routine.
    pub kind: TileKind,
    /// Slices of `k` (1: no split-K).
    pub k_splits: u32,
}

impl Plan {
    /// `kind` without split-K.
    pub fn new(kind: TileKind) -> Plan {
        Plan { kind, k_splits: 1 }
    }
}

/// Picks tile kinds and k-splits for the problems of a round.
///
/// GEMV-shaped problems (`n == 1`, no `TRANS_A`) take the GEMV kind; the GEMM problems of a round
/// all take the SGEMM kind and split count whose predicted makespan on `slots` CTA slots is
/// shortest: big tiles when there are many problems, small ones and split-K when few problems
/// must spread over all SMs. Where the device has a wide build (`wide_slots`), the 256×128 kind on
/// one CTA per SM competes too (it needs enough tiles for every SM). A per-problem override (from
/// the op, or a tuning table) wins whenever it supports the problem.
#[derive(Clone, Debug, Default)]
pub struct TileChooser {
    /// Tuning-table entries `(m, n, k) → plan` that win over the heuristic for exact shapes
    /// (written by `tilemux bench tune --write`).
    pub table: Vec<((u32, u32, u32), Plan)>,
    /// Never split k (persistent mode has no split-K workspace).
    pub no_split_k: bool,
    /// Never run [`TileKind::is_wide`] kinds, not even when an override or the table names one
    /// (persistent mode: the resident kernel is the narrow build).
    pub no_wide: bool,
    /// CTA slots of the wide build ([`crate::device::Device::wide_slots`]): when set, the
    /// heuristic also weighs running the round wide, its GEMMs in [`WIDE_KIND`] tiles.
    pub wide_slots: Option<usize>,
}

/// The SGEMM kind the chooser weighs for rounds on the wide build.
pub const WIDE_KIND: TileKind = TileKind::Sgemm256x128;

/// SGEMM kinds the chooser considers for GEMM problems, largest first.
const GEMM_KINDS: [TileKind; 3] = [TileKind::Sgemm128x128, TileKind::Sgemm128x64, TileKind::Sgemm64x64];

/// Split counts the chooser tries when a round has too few tiles to fill the slots.
const SPLITS: [u32; 9] = [1, 2, 3, 4, 6, 8, 12, 16, 24];

impl TileChooser {
    /// Plans for `problems`, honouring `overrides[i]` where given and supported.
    pub fn choose(
        &self,
        problems: &[ProblemDesc],
        overrides: &[Option<Plan>],
        cost: &CostModel,
        slots: usize,
    ) -> Vec<Plan> {
        let usable = |k: TileKind, p: &ProblemDesc| k.supports(p.n, p.flags) && !(self.no_wide && k.is_wide());
        let fixed = |i: usize, p: &ProblemDesc| -> Option<Plan> {
            let o = overrides.get(i).copied().flatten().filter(|o| usable(o.kind, p));
            o.or_else(|| self.table.iter().find(|(s, k)| *s == (p.m, p.n, p.k) && usable(k.kind, p)).map(|e| e.1))
                .map(|o| Plan { kind: o.kind, k_splits: o.k_splits.clamp(1, max_splits(o.kind, p)) })
        };
        let mut plans: Vec<Option<Plan>> = problems
            .iter()
            .enumerate()
            .map(|(i, p)| {
                fixed(i, p).or_else(|| TileKind::Gemv32.supports(p.n, p.flags).then(|| Plan::new(TileKind::Gemv32)))
            })
            .collect();

        if plans.iter().any(|k| k.is_none()) {
            // A fixed wide plan puts the whole round on the wide build.
            let forced_wide = plans.iter().flatten().any(|p| p.kind.is_wide());
            let wide_slots = self.wide_slots.filter(|_| !self.no_wide);
            let makespan = |g: TileKind, splits: u32, slots: usize| {
                let mut groups: Vec<(f64, usize)> = problems
                    .iter()
                    .zip(&plans)
                    .map(|(p, k)| {
                        let plan = k.unwrap_or(Plan { kind: g, k_splits: splits.min(max_splits(g, p)) });
                        let sh = plan.kind.shape();
                        let mut q = *p;
                        q.k_splits = plan.k_splits;
                        let n = (p.m.div_ceil(sh.bm) * p.n.div_ceil(sh.bn) * plan.k_splits) as usize;
                        (cost.kind_tile_ns(plan.kind, &q), n)
                    })
                    .collect();
                CostModel::makespan_groups(&mut groups, slots)
            };

            // Candidates, largest tile first: the wide kind on the wide build's slots, then every
            // narrow kind on the round's slots (on the wide build's when a fixed plan forces it).
            // A later candidate (smaller tile, or larger split) must win by 3%: it costs claims,
            // workspace traffic and epilogues that the model blurs.
            let mut candidates: Vec<(TileKind, usize)> = Vec::new();
            if let Some(w) = wide_slots {
                candidates.push((WIDE_KIND, w));
            }
            for g in GEMM_KINDS {
                match (forced_wide, wide_slots) {
                    (true, Some(w)) => candidates.push((g, w)),
                    _ => candidates.push((g, slots)),
                }
            }
            let mut best = (f64::INFINITY, Plan::new(TileKind::Sgemm64x64));
            for (g, slots) in candidates {
                let sh = g.shape();
                let tiles: usize = problems
                    .iter()
                    .zip(&plans)
                    .filter(|(_, k)| k.is_none())
                    .map(|(p, _)| (p.m.div_ceil(sh.bm) * p.n.div_ceil(sh.bn)) as usize)
                    .sum();
                // Splitting only pays while the output tiles alone leave slots idle.
                let splits = if tiles < 2 * slots && !self.no_split_k { &SPLITS[..] } else { &SPLITS[..1] };
                for &sp in splits {
                    let t = makespan(g, sp, slots);
                    if t < best.0 * 0.97 || (best.0.is_infinite()) {
                        best = (t, Plan { kind: g, k_splits: sp });
                    }
                }
            }
            for (p, k) in problems.iter().zip(plans.iter_mut()) {
                if k.is_none() {
                    *k = Some(Plan { kind: best.1.kind, k_splits: best.1.k_splits.min(max_splits(best.1.kind, p)) });
                }
            }
        }
        plans.into_iter().map(|k| k.unwrap_or(Plan::new(TileKind::Sgemm64x64))).collect()
    }

    /// CTA slots a round planned by this chooser runs on: the wide build's for a wide round.
    pub fn round_slots(&self, round: &Round, slots: usize) -> usize {
        match self.wide_slots {
            Some(w) if round.is_wide() => w,
            _ => slots,
        }
    }

    /// The chooser for rounds on `device`: it weighs the wide build where the device has one.
    pub fn for_device(device: &dyn crate::device::Device) -> TileChooser {
        TileChooser { wide_slots: device.wide_slots(), ..TileChooser::default() }
    }

    /// The chooser for persistent mode: no split-K workspace and only the narrow build's kinds.
    pub fn persistent() -> TileChooser {
        TileChooser { no_split_k: true, no_wide: true, ..TileChooser::default() }
    }

    /// Reads a tuning table: one `m n k kind k_splits` line per shape (`#` starts a comment).
    pub fn load(path: &std::path::Path) -> crate::Result<TileChooser> {
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::Error::Config(format!("{}: {e}", path.display())))?;
        let mut table = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || crate::Error::Config(format!("{}:{}: expected `m n k kind k_splits`", path.display(), i + 1));
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() != 5 {
                return Err(bad());
            }
            let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
            let kind = TileKind::ALL.into_iter().find(|k| k.name() == w[3]).ok_or_else(bad)?;
            table.push(((num(w[0])?, num(w[1])?, num(w[2])?), Plan { kind, k_splits: num(w[4])?.max(1) }));
        }
        Ok(TileChooser { table, ..TileChooser::default() })
    }

    /// Writes the tuning table in the format [`TileChooser::load`] reads.
    pub fn save(&self, path: &std::path::Path) -> crate::Result<()> {
        let mut s = String::from("# m n k kind k_splits (tilemux bench tune --write)\n");
        for ((m, n, k), p) in &self.table {
            s += &format!("{m} {n} {k} {} {}\n", p.kind.name(), p.k_splits);
        }
        std::fs::write(path, s).map_err(|e| crate::Error::Config(format!("{}: {e}", path.display())))
    }

    /// Builds a round from `problems` with chosen plans, tiles ordered longest first.
    pub fn build(&self, problems: &[ProblemDesc], overrides: &[Option<Plan>], cost: &CostModel, slots: usize) -> Round {
        let mut plans = self.choose(problems, overrides, cost, slots);
        if self.no_split_k {
            plans.iter_mut().for_each(|p| p.k_splits = 1);
        }
        let mut round = Round::default();
        for (p, plan) in problems.iter().zip(plans) {
            round.push(*p, plan.kind, plan.k_splits);
        }
        round.order_longest_first(cost);
        round
    }
}

/// Re-exported for tests: the descriptor ABI's tile shapes.
pub use abi::TileShape;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn conv2_2(n: usize) -> Vec<ProblemDesc> {
        let p =
            problem((0, 0, 0, 0), (256, 128, 1152), (1152, 128, 128), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        vec![p; n]
    }

    /// The wide kind is weighed only where the device has a wide build, wins for a big batch of
    /// large GEMMs, loses to split-K tiles for a single problem, and never runs in persistent mode.
    #[test]
    fn chooser_weighs_the_wide_build() {
        let cost = CostModel::default();
        let narrow_only = TileChooser::default().build(&conv2_2(120), &[], &cost, 264);
        assert!(!narrow_only.is_wide());
        let wide = TileChooser { wide_slots: Some(132), ..TileChooser::default() };
        let big = wide.build(&conv2_2(120), &[], &cost, 264);
        assert!(big.is_wide(), "120 × conv2_2 should run wide: {:?}", big.problems[0].tile_kind);
        assert_eq!(wide.round_slots(&big, 264), 132);
        // 120 × 256³ has short tiles: the wide build's per-tile cost loses to 128×128 there.
        let sq =
            problem((0, 0, 0, 0), (256, 256, 256), (256, 256, 256), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        assert!(!wide.build(&vec![sq; 120], &[], &cost, 264).is_wide());
        let one = wide.build(&conv2_2(1), &[], &cost, 264);
        assert!(!one.is_wide() && one.problems[0].k_splits > 1, "one problem wants split-K tiles");
        assert_eq!(wide.round_slots(&one, 264), 264);

        // An override to the wide kind is honoured, except by the persistent chooser.
        let o = [Some(Plan::new(TileKind::Sgemm256x128))];
        assert!(TileChooser::default().build(&conv2_2(1), &o, &cost, 264).is_wide());
        let p = TileChooser { wide_slots: Some(132), ..TileChooser::persistent() };
        for r in [p.build(&conv2_2(1), &o, &cost, 264), p.build(&conv2_2(120), &[], &cost, 264)] {
            assert!(!r.is_wide() && r.problems.iter().all(|q| q.k_splits == 1));
        }
        // A wide table entry puts the whole round on the wide build; the other GEMMs are planned
        // for its slots.
        let mut t = TileChooser { wide_slots: Some(132), ..TileChooser::default() };
        t.table.push(((256, 128, 1152), Plan::new(TileKind::Sgemm256x128)));
        let mut mixed = conv2_2(1);
        mixed.push(problem((0, 0, 0, 0), (64, 64, 64), (64, 64, 64), (1.0, 0.0), 0, Activation::None, BiasMode::None));
        let r = t.build(&mixed, &[], &cost, 264);
        assert!(r.is_wide() && r.problems[0].tile_kind == TileKind::Sgemm256x128 as u32);
    }

    /// The O(groups) makespan stays within one tile of the exact longest-first list schedule.
    #[test]
    fn wave_model_tracks_the_list_schedule() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let slots = rng.random_range(1..300);
            let mut groups: Vec<(f64, usize)> = (0..rng.random_range(1..6))
                .map(|_| (rng.random_range(1.0..100.0f64).round(), rng.random_range(1..400)))
                .collect();
            let estimate = CostModel::makespan_groups(&mut groups, slots);
            let costs = groups.iter().flat_map(|&(c, n)| std::iter::repeat_n(c, n));
            let exact = CostModel::makespan_ns(costs, slots);
            let longest = groups.iter().map(|g| g.0).fold(0.0, f64::max);
            assert!((estimate - exact).abs() <= longest + 1.0, "estimate {estimate}, exact {exact}, groups {groups:?}");
        }
    }
}
