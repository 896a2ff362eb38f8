//! Rounds: the descriptors of one megakernel launch, the checks every backend runs on them, the
//! tile chooser and the cost model that sizes and orders them.
//!
//! A [`Round`] is plain data. [`check`] is the memory-safety gate of the backend layer: a round
//! that passes only reads and writes inside the device pool, its outputs overlap nothing else it
//! touches, and each tile appears exactly once. Policy (tenants, quotas) is not checked here; that
//! is `validate`'s job.

use std::ops::Range;
use std::time::Duration;

use crate::abi::{self, Activation, BiasMode, KPart, MAX_DIM, ProblemDesc, TileDesc, TileKind, flags, matrix_extent};
use crate::error::DescriptorError;

/// The descriptors of one launch. Problem `i` uses completion slot `i`.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// One descriptor per problem.
    pub problems: Vec<ProblemDesc>,
    /// Every tile of every problem, in the order CTAs will claim them.
    pub tiles: Vec<TileDesc>,
    /// What a CTA claims: unit `u` is tiles `units[u] .. units[u + 1]`, run in order on one CTA
    /// (increasing offsets from 0 to `tiles.len()`). Empty: every tile is a unit of its own. A
    /// stream-K balanced round ([`Round::balance`]) makes each CTA slot's share one unit.
    pub units: Vec<u32>,
}

impl Round {
    /// Adds `p` to run with `kind` and `k_splits` slices of `k`: fills its tile grid, split count
    /// and completion slot and appends all its tiles. Returns the problem's index.
    pub fn push(&mut self, p: ProblemDesc, kind: TileKind, k_splits: u32) -> usize {
        let idx = self.problems.len();
        let mut p = Round::planned(p, kind, k_splits);
        p.completion = idx as u32;
        self.tiles.reserve(p.tile_count() as usize);
        for tile_m in 0..p.tiles_m {
            for tile_n in 0..p.tiles_n {
                for s in 0..k_splits {
                    let split = KPart::uniform(s, k_splits).encode();
                    self.tiles.push(TileDesc { problem: idx as u32, tile_m, tile_n, split });
                }
            }
        }
        self.problems.push(p);
        idx
    }

    /// `p` with its tile grid for `kind` and `k_splits` uniform parts (as [`Round::push`] adds
    /// it, without listing its tiles: persistent mode's ring runs a problem's tiles implicitly).
    pub fn planned(mut p: ProblemDesc, kind: TileKind, k_splits: u32) -> ProblemDesc {
        let s = kind.shape();
        p.tile_kind = kind as u32;
        p.tiles_m = p.m.div_ceil(s.bm);
        p.tiles_n = p.n.div_ceil(s.bn);
        p.k_splits = k_splits;
        p.k_parts = k_splits;
        p
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

    /// How many tiles of each problem the round holds (what each completion counter reaches).
    pub fn tiles_per_problem(&self) -> Vec<u32> {
        let mut n = vec![0u32; self.problems.len()];
        for t in &self.tiles {
            if let Some(c) = n.get_mut(t.problem as usize) {
                *c += 1;
            }
        }
        n
    }

    /// Stream-K balancing. Claimed longest first, the tiles of a round leave CTA slots idle when
    /// they do not fill whole waves: 120 one-tile conv2_2 problems on 132 slots keep 12 slots idle
    /// for the whole round. This recuts the unsplit SGEMM problems into grains of `k` and gives
    /// each of the `slots` slots an equal share of their work, contiguous in (tile, k) order, so
    /// an output tile is computed in one part or a few; the last part to finish sums the
    /// partials (the split-K reduction). Each slot's share becomes one claimable unit
    /// ([`Round::units`]), so the device runs exactly the planned cut; the other problems'
    /// tiles follow as units of their own. Kept only when the cost model's list schedule of the
    /// units is at least 1% shorter. Returns whether the round changed.
    pub fn balance(&mut self, cost: &CostModel, slots: usize) -> bool {
        self.recut(cost, slots, false)
    }

    /// [`Round::balance`] without its judgement: recuts whenever the round has an unsplit
    /// SGEMM problem with at least two grains, whatever the cost model predicts (for tuning:
    /// `tilemux bench tune` times every kind both ways).
    pub fn force_balance(&mut self, cost: &CostModel, slots: usize) -> bool {
        self.recut(cost, slots, true)
    }

    fn recut(&mut self, cost: &CostModel, slots: usize, force: bool) -> bool {
        let slots = slots.max(1);
        let desc_ns = |ps: &[ProblemDesc], t: &TileDesc| cost.desc_ns(&ps[t.problem as usize], t);
        // Every tile of an unsplit problem costs the same: one cost-model call per problem.
        let per_problem: Vec<f64> = self.problems.iter().map(|p| cost.tile_ns(p)).collect();
        let tile_ns = |t: &TileDesc| {
            let p = &self.problems[t.problem as usize];
            if p.k_splits <= 1 { per_problem[t.problem as usize] } else { cost.desc_ns(p, t) }
        };
        let before = CostModel::makespan_ns(self.tiles.iter().map(tile_ns), slots);
        let total: f64 = self.tiles.iter().map(tile_ns).sum();
        if !force && before <= total / slots as f64 * 1.01 {
            return false; // no slot idles
        }
        let steps = |p: &ProblemDesc| p.k.div_ceil(abi::SGEMM_BK);
        let candidate = |p: &ProblemDesc| {
            TileKind::from_u32(p.tile_kind).is_some_and(|k| !k.is_gemv())
                && p.k_splits == 1
                && steps(p) >= 2 * GRAIN_STEPS
        };
        let mut problems = self.problems.clone();
        for p in problems.iter_mut().filter(|p| candidate(p)) {
            let per = GRAIN_STEPS.max(steps(p).div_ceil(abi::MAX_K_SPLITS));
            p.k_splits = steps(p).div_ceil(per);
        }
        let (sk, others): (Vec<TileDesc>, Vec<TileDesc>) =
            self.tiles.iter().partition(|t| candidate(&self.problems[t.problem as usize]));
        if sk.is_empty() {
            return false;
        }
        // Cost of each grain of each candidate problem (the same for all its tiles), and of
        // starting a part (prologue, epilogue).
        let grains: Vec<Vec<f64>> = problems
            .iter()
            .zip(&self.problems)
            .map(|(p, orig)| {
                if !candidate(orig) {
                    return Vec::new();
                }
                let kind = TileKind::from_u32(p.tile_kind).unwrap_or(TileKind::Sgemm64x64);
                let fixed = cost.scale() * cost.kind(kind).0;
                (0..p.k_splits)
                    .map(|g| {
                        let split = KPart { first: g, last: g, index: 0, count: 1 }.encode();
                        cost.desc_ns(p, &TileDesc { problem: 0, tile_m: 0, tile_n: 0, split }) - fixed
                    })
                    .collect()
            })
            .collect();
        let start_ns = |p: &ProblemDesc| {
            cost.scale() * cost.kind(TileKind::from_u32(p.tile_kind).unwrap_or(TileKind::Sgemm64x64)).0
        };
        let tile_work = |t: &TileDesc| grains[t.problem as usize].iter().sum::<f64>();
        let work: f64 = sk.iter().map(|t| start_ns(&problems[t.problem as usize]) + tile_work(t)).sum();
        let mean_start = sk.iter().map(|t| start_ns(&problems[t.problem as usize])).sum::<f64>() / sk.len() as f64;
        let target = (work + mean_start * slots as f64) / slots as f64;
        if !force && sk.iter().map(tile_work).fold(0.0, f64::max) > MAX_SHARES * target {
            return false; // few tiles for many slots: uniform split-K's regime, not a last wave's
        }

        // Walk the tiles' grains in queue order, cutting a slot's share at the grain boundary
        // nearest its target: segments (tile, first grain, last grain), in share order. Shares
        // end at multiples of the target in the running total, so rounding to grain boundaries
        // does not drift onto the last slot.
        let mut segments: Vec<(usize, u32, u32)> = Vec::new();
        let mut share_end = Vec::with_capacity(slots + 1);
        let (mut slot, mut total) = (0usize, 0.0f64);
        for (ti, t) in sk.iter().enumerate() {
            let p = &problems[t.problem as usize];
            let mut first = 0;
            total += start_ns(p);
            for (g, &ns) in (0..).zip(&grains[t.problem as usize]) {
                total += ns;
                if slot + 1 < slots && total >= (slot + 1) as f64 * target - ns / 2.0 {
                    segments.push((ti, first, g));
                    share_end.push(segments.len() as u32);
                    (slot, first) = (slot + 1, g + 1);
                    if first < p.k_splits {
                        total += start_ns(p);
                    }
                }
            }
            if first < p.k_splits {
                segments.push((ti, first, p.k_splits - 1));
            }
        }
        share_end.push(segments.len() as u32);
        // Parts per output tile (segments of a tile come in grain order).
        let mut parts = vec![0u32; sk.len()];
        for s in &segments {
            parts[s.0] += 1;
        }
        let mut index = vec![0u32; sk.len()];
        let descs: Vec<TileDesc> = segments
            .iter()
            .map(|&(ti, first, last)| {
                let part = KPart { first, last, index: index[ti], count: parts[ti] };
                index[ti] += 1;
                let t = sk[ti];
                let p = &mut problems[t.problem as usize];
                p.k_parts = p.k_parts.max(part.count);
                TileDesc { split: part.encode(), ..t }
            })
            .collect();

        // One unit per share (a CTA runs its share's parts in order, so no claim order can
        // hand them out differently), then one per other tile, which fill in behind.
        let mut units = vec![0u32];
        units.extend(share_end.iter().copied().filter(|&e| e > 0));
        units.dedup();
        let n = descs.len() as u32;
        units.extend((1..=others.len() as u32).map(|i| n + i));
        let queue: Vec<TileDesc> = descs.into_iter().chain(others.iter().copied()).collect();
        let unit_ns =
            units.windows(2).map(|w| queue[w[0] as usize..w[1] as usize].iter().map(|t| desc_ns(&problems, t)).sum());
        let span = CostModel::makespan_ns(unit_ns, slots);
        if force || span < before * 0.99 {
            self.problems = problems;
            self.tiles = queue;
            self.units = units;
            return true;
        }
        false
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
        self.units.clear();
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
        k_parts: 1,
        _reserved: [0; 2],
    }
}

/// Fewest `SGEMM_BK` steps in a grain of stream-K balancing ([`Round::balance`]).
pub const GRAIN_STEPS: u32 = 2;

/// Stream-K balancing leaves alone rounds whose longest SGEMM tile is more than this many slot
/// shares: cut finer, the partial sums would cost more than the idle slots.
const MAX_SHARES: f64 = 3.0;

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
    if p.k_parts > p.k_splits.max(1) || (kind.is_gemv() && p.k_parts > 1) {
        return Err(DescriptorError::KParts { problem: i, k_parts: p.k_parts, max: p.k_splits });
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

/// Checks one problem of persistent mode's ring (as [`Round::planned`] made it, whole tiles)
/// against a device pool: what [`check`] checks of a round holding it alone.
pub fn check_alone(p: &ProblemDesc, pool: Range<u64>) -> Result<(), DescriptorError> {
    check_problem(0, p, &pool)?;
    if p.k_splits != 1 || p.k_parts > 1 {
        return Err(DescriptorError::KSplits { problem: 0, k_splits: p.k_splits, max: 1 });
    }
    Ok(())
}

/// Checks a round against a device pool. On success, running it reads and writes only inside
/// `pool`, no output overlaps anything else the round touches, the tiles of every output tile
/// cover its grains of `k` exactly once in part order (each tile present once), and each tile
/// kind suits its problem.
pub fn check(round: &Round, pool: Range<u64>) -> Result<(), DescriptorError> {
    let slots = round.problems.len();
    let (mut stack, mut heap) = ([0u64; 33], Vec::new());
    let (first_out, count) = scratch(&mut stack, &mut heap, 2 * slots + 1).split_at_mut(slots + 1);
    let mut total_out: u64 = 0;
    for (i, p) in round.problems.iter().enumerate() {
        check_problem(i, p, &pool)?;
        if p.completion as usize >= slots {
            return Err(DescriptorError::CompletionSlot { problem: i, slot: p.completion, slots });
        }
        first_out[i] = total_out;
        total_out += p.output_tiles() as u64;
    }
    first_out[slots] = total_out;

    // Units, where given, partition the tiles into non-empty runs.
    if !round.units.is_empty() {
        let u = &round.units;
        let increasing = u.windows(2).all(|w| w[0] < w[1]);
        if u[0] != 0 || *u.last().expect("non-empty") as usize != round.tiles.len() || !increasing {
            return Err(DescriptorError::Units { units: u.len(), tiles: round.tiles.len() });
        }
    }

    // Every tile names a problem, lies in its grid and has a part that fits it.
    for (ti, t) in round.tiles.iter().enumerate() {
        let p = round.problems.get(t.problem as usize).ok_or(DescriptorError::TileProblem {
            tile: ti,
            problem: t.problem,
            problems: slots,
        })?;
        if t.tile_m >= p.tiles_m || t.tile_n >= p.tiles_n {
            return Err(DescriptorError::TileCoord {
                tile: ti,
                problem: t.problem,
                tile_m: t.tile_m,
                tile_n: t.tile_n,
                tiles_m: p.tiles_m,
                tiles_n: p.tiles_n,
            });
        }
        let part = t.part();
        let gemv = TileKind::from_u32(p.tile_kind).is_some_and(TileKind::is_gemv);
        if !part.fits(p.k_splits, p.k_parts) || (gemv && part.count != 1) {
            return Err(DescriptorError::TilePart {
                tile: ti,
                problem: t.problem,
                first: part.first,
                last: part.last,
                index: part.index,
                count: part.count,
                k_splits: p.k_splits,
                k_parts: p.k_parts,
            });
        }
        count[t.problem as usize] += 1;
    }
    // Each output tile needs a tile, which also bounds the buckets below by the round's length.
    for (i, p) in round.problems.iter().enumerate() {
        if count[i] < p.output_tiles() as u64 {
            let present = count[i] as u32;
            return Err(DescriptorError::MissingTiles { problem: i, present, expected: p.output_tiles() });
        }
    }

    if round.problems.iter().all(|p| p.k_splits == 1) {
        // No problem is split (every tile is whole, `fits` saw to it): each output tile once.
        // (A small round's bitset lives on the stack: this runs for every persistent request.)
        let (mut stack, mut heap) = ([0u64; 16], Vec::new());
        let seen = scratch(&mut stack, &mut heap, (total_out as usize).div_ceil(64));
        for (ti, t) in round.tiles.iter().enumerate() {
            let p = &round.problems[t.problem as usize];
            let bit = first_out[t.problem as usize] + t.tile_m as u64 * p.tiles_n as u64 + t.tile_n as u64;
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
        // As many tiles as output tiles, none twice: all there.
        if round.tiles.len() as u64 == total_out {
            return check_overlaps(round);
        }
    }

    // Bucket the tiles by output tile (a counting sort); each bucket must be its output tile's
    // parts, covering grains 0..k_splits once, in part order.
    let out_of = |t: &TileDesc| {
        let p = &round.problems[t.problem as usize];
        (first_out[t.problem as usize] + t.tile_m as u64 * p.tiles_n as u64 + t.tile_n as u64) as usize
    };
    let mut start = vec![0u32; total_out as usize + 1];
    for t in &round.tiles {
        start[out_of(t) + 1] += 1;
    }
    for o in 0..total_out as usize {
        start[o + 1] += start[o];
    }
    let mut fill = start.clone();
    let mut order = vec![0u32; round.tiles.len()];
    for (ti, t) in round.tiles.iter().enumerate() {
        let o = out_of(t);
        order[fill[o] as usize] = ti as u32;
        fill[o] += 1;
    }
    let mut problem = 0;
    for o in 0..total_out as usize {
        while problem + 1 < slots && first_out[problem + 1] as usize <= o {
            problem += 1;
        }
        let p = &round.problems[problem];
        let local = (o as u64 - first_out[problem]) as u32;
        let cover =
            |what| DescriptorError::KCover { problem, tile_m: local / p.tiles_n, tile_n: local % p.tiles_n, what };
        let bucket = &mut order[start[o] as usize..start[o + 1] as usize];
        if bucket.is_empty() {
            return Err(cover("no tile computes it"));
        }
        bucket.sort_unstable_by_key(|&ti| round.tiles[ti as usize].part().first);
        let mut next = 0;
        for &ti in bucket.iter() {
            let t = &round.tiles[ti as usize];
            let part = t.part();
            if part.first < next {
                return Err(DescriptorError::DuplicateTile {
                    tile: ti as usize,
                    problem: t.problem,
                    tile_m: t.tile_m,
                    tile_n: t.tile_n,
                });
            }
            if part.first > next {
                return Err(cover("its tiles leave grains of k out"));
            }
            next = part.last + 1;
        }
        if next != p.k_splits {
            return Err(cover("its tiles leave grains of k out"));
        }
        for (j, &ti) in bucket.iter().enumerate() {
            let part = round.tiles[ti as usize].part();
            if part.index != j as u32 || part.count != bucket.len() as u32 {
                return Err(cover("its tiles' part numbers are not 0.. in grain order, or miscount them"));
            }
        }
    }

    check_overlaps(round)
}

/// `n` zeroed words: in `stack` when they fit (no allocation for the small rounds of persistent
/// mode's fast path), else in `heap`.
fn scratch<'a, const N: usize>(stack: &'a mut [u64; N], heap: &'a mut Vec<u64>, n: usize) -> &'a mut [u64] {
    if n <= N {
        &mut stack[..n]
    } else {
        heap.resize(n, 0);
        heap
    }
}

/// The overlap part of [`check`]: no problem's output overlaps anything else the round touches.
fn check_overlaps(round: &Round) -> Result<(), DescriptorError> {
    let slots = round.problems.len();
    // Outputs against everything else: sort all spans by start; an interval overlaps an earlier
    // one exactly when it starts before the largest end seen so far.
    let (mut stack, mut heap) = ([(0u64, 0u64, 0usize, ' '); 32], Vec::new());
    let all: &mut [(u64, u64, usize, char)] = if slots * 4 <= stack.len() {
        &mut stack[..slots * 4]
    } else {
        heap.resize(slots * 4, (0, 0, 0, ' '));
        &mut heap
    };
    let mut n = 0;
    for (i, p) in round.problems.iter().enumerate() {
        for (matrix, r) in spans(p) {
            if !r.is_empty() {
                all[n] = (r.start, r.end, i, matrix);
                n += 1;
            }
        }
    }
    let spans_all = &mut all[..n];
    spans_all.sort_unstable_by_key(|s| (s.0, s.1));
    let mut max_any: Option<(u64, usize, char)> = None;
    let mut max_out: Option<(u64, usize, char)> = None;
    for &(start, end, i, matrix) in spans_all.iter() {
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

/// Rounds over which [`CostModel::observe`] takes its median.
pub const DRIFT_WINDOW: usize = 15;

/// Predicted execution time of tiles, per tile kind: `fixed + per_unit · units`, where a unit is
/// one k-step of the tile for the SGEMM kinds and one byte of `A` for the GEMV kinds. Defaults
/// come from the H100 figures in `docs/results/`; [`CostModel::calibrate`] refits them for the
/// device at hand and [`CostModel::observe`] tracks drift online.
#[derive(Clone, Debug)]
pub struct CostModel {
    fixed_ns: [f64; TileKind::ALL.len()],
    per_unit_ns: [f64; TileKind::ALL.len()],
    /// Drift factor: the median of `drift`, so that a few rounds stalled by something else
    /// (a loaded host, another context) do not move it.
    scale: f64,
    /// The last rounds' measured work / unscaled predicted work, oldest overwritten first. It
    /// starts full of 1.0 (the calibrated constants hold), so that one stalled round right after
    /// calibration does not move the factor: the rounds' word wins once they are the majority.
    drift: [f64; DRIFT_WINDOW],
    /// Rounds observed since calibration.
    observed: usize,
    /// Fixed cost of a round (launch, copies, synchronisation).
    pub round_overhead_ns: f64,
    /// Cost of moving one partial tile through L2 in a split-K reduction.
    pub split_ns: f64,
    /// Cost of one part of a stream-K balanced 128×128 tile (scaled by tile area for other
    /// kinds): its partial's store and its share of the reduction while every SM does the same,
    /// plus a claim whose latency no longer hides. Fitted on the H100 (`bench kernel`, 20–120
    /// problems of conv2_2, 256³ and the seed mix): balancing must win where it measured faster
    /// (80 × conv2_2, 80 × 256³, 120 × mix) and lose where it did not (120 × 256³).
    pub part_ns: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        // Per-CTA-slot rates on an H100 with 2 CTAs per SM: ~254 GFLOP/s of FMA peak and
        // ~11 GB/s of DRAM bandwidth per slot, at the efficiencies the tiles reach. A slot of the
        // wide build is a whole SM (twice the peak).
        let flops_ns = |bm: f64, bn: f64, eff: f64| 2.0 * bm * bn / (eff * 254.0);
        CostModel {
            // The wide kind: fitted on the H100 to 40 and 120 × conv2_2 and × 256³ relative to
            // the 128×128 kind, the same rounds timed both ways (`docs/results/`): 0.86× its
            // time at k = 1152 and 0.91× at k = 256 (a per-tile cost no second CTA overlaps).
            fixed_ns: [2000.0, 1500.0, 1000.0, 1500.0, 2000.0, 5100.0, 1200.0],
            per_unit_ns: [
                flops_ns(128.0, 128.0, 0.70),
                flops_ns(128.0, 64.0, 0.62),
                flops_ns(64.0, 64.0, 0.50),
                1.0 / 9.5,
                1.0 / 9.5,
                flops_ns(256.0, 128.0, 0.835) / 2.0,
                1.0 / 9.5,
            ],
            scale: 1.0,
            drift: [1.0; DRIFT_WINDOW],
            observed: 0,
            round_overhead_ns: 8000.0,
            split_ns: 600.0,
            part_ns: 2500.0,
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

    /// Predicted nanoseconds of tile `t` of `p`: its own run of grains, and a share of the
    /// reduction when its output tile is computed in parts.
    pub fn desc_ns(&self, p: &ProblemDesc, t: &TileDesc) -> f64 {
        let kind = TileKind::from_u32(p.tile_kind).unwrap_or(TileKind::Sgemm64x64);
        if kind.is_gemv() || p.k_splits <= 1 {
            return self.kind_tile_ns(kind, p);
        }
        let part = t.part();
        let (k0, k1) = (p.split_range(part.first).0, p.split_range(part.last).1);
        let reduce = if part.count > 1 { self.part_cost(kind) * (1.0 + part.count as f64 / 4.0) } else { 0.0 };
        let i = kind as usize;
        self.scale * (self.fixed_ns[i] + self.per_unit_ns[i] * (k1 - k0) as f64 + reduce)
    }

    /// [`CostModel::part_ns`] for `kind`'s tile size.
    pub fn part_cost(&self, kind: TileKind) -> f64 {
        let s = kind.shape();
        self.part_ns * (s.bm * s.bn) as f64 / (128.0 * 128.0)
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
        if !round.units.is_empty() {
            let ns = |t: &TileDesc| self.desc_ns(&round.problems[t.problem as usize], t);
            let units = round.units.windows(2).map(|w| {
                round.tiles.get(w[0] as usize..w[1] as usize).map_or(0.0, |ts| ts.iter().map(ns).sum::<f64>())
            });
            return Duration::from_nanos((Self::makespan_ns(units, slots) + self.round_overhead_ns) as u64);
        }
        // Unsplit problems as groups of equal tiles; the tiles of split ones singly.
        let uniform = |p: &ProblemDesc| p.k_splits <= 1;
        let mut groups: Vec<(f64, usize)> =
            round.problems.iter().filter(|p| uniform(p)).map(|p| (self.tile_ns(p), p.tile_count() as usize)).collect();
        for t in &round.tiles {
            let p = &round.problems[t.problem as usize];
            if !uniform(p) {
                groups.push((self.desc_ns(p, t), 1));
            }
        }
        Duration::from_nanos((Self::makespan_groups(&mut groups, slots) + self.round_overhead_ns) as u64)
    }

    /// Folds one measured round into the model: the drift factor becomes the median of measured
    /// / unscaled predicted work over the last [`DRIFT_WINDOW`] rounds, and the round overhead
    /// never stays above a measured round (no round takes less than the fixed cost, so a shorter
    /// one shows that calibration timed the overhead through a stall).
    pub fn observe(&mut self, predicted: Duration, measured: Duration) {
        if measured.is_zero() {
            return;
        }
        let m = measured.as_nanos() as f64;
        let work_pred = predicted.as_nanos() as f64 - self.round_overhead_ns;
        self.round_overhead_ns = self.round_overhead_ns.min(m);
        if work_pred <= 0.0 {
            return;
        }
        let work_meas = (m - self.round_overhead_ns).max(0.05 * work_pred);
        self.drift[self.observed % DRIFT_WINDOW] = (self.scale * work_meas / work_pred).clamp(0.05, 20.0);
        self.observed += 1;
        let mut recent = self.drift;
        recent.sort_by(f64::total_cmp);
        self.scale = recent[DRIFT_WINDOW / 2];
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
        (self.scale, self.drift, self.observed) = (1.0, [1.0; DRIFT_WINDOW], 0);
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
    /// Never recut `k` for stream-K balance ([`Round::balance`]): rounds keep the chooser's
    /// uniform plans (to measure what balancing buys).
    pub no_balance: bool,
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
        self.plan(problems, overrides, cost, slots).0
    }

    /// The plan for one problem that runs by itself (persistent mode's fast path: nothing else is
    /// queued, so its latency is what counts): as [`TileChooser::choose`], except that a GEMV
    /// without an override or table entry takes whichever GEMV kind the cost model says finishes
    /// first on `slots` (the 8-row kind must win by 3%). A lone GEMV waits on its tiles' loads,
    /// each SM's share of L2 bandwidth, so four times the tiles on four times the SMs end sooner
    /// while they fit in one wave.
    pub fn choose_alone(&self, p: &ProblemDesc, over: Option<Plan>, cost: &CostModel, slots: usize) -> Plan {
        let fixed = over.is_some_and(|o| o.kind.supports(p.n, p.flags))
            || self.table.iter().any(|(s, k)| *s == (p.m, p.n, p.k) && k.kind.supports(p.n, p.flags));
        if fixed || !TileKind::Gemv32.supports(p.n, p.flags) {
            return self.choose(&[*p], &[over], cost, slots)[0];
        }
        let finish = |kind: TileKind| {
            let tiles = p.m.div_ceil(kind.shape().bm) as usize;
            tiles.div_ceil(slots.max(1)) as f64 * cost.kind_tile_ns(kind, p)
        };
        let kind =
            if finish(TileKind::Gemv8) < 0.97 * finish(TileKind::Gemv32) { TileKind::Gemv8 } else { TileKind::Gemv32 };
        Plan::new(kind)
    }

    /// [`TileChooser::choose`], and whether the winning plan counted on stream-K balancing.
    fn plan(
        &self,
        problems: &[ProblemDesc],
        overrides: &[Option<Plan>],
        cost: &CostModel,
        slots: usize,
    ) -> (Vec<Plan>, bool) {
        let usable = |k: TileKind, p: &ProblemDesc| k.supports(p.n, p.flags) && !(self.no_wide && k.is_wide());
        let fixed = |i: usize, p: &ProblemDesc| -> Option<Plan> {
            let o = overrides.get(i).copied().flatten().filter(|o| usable(o.kind, p));
            o.or_else(|| self.table.iter().find(|(s, k)| *s == (p.m, p.n, p.k) && usable(k.kind, p)).map(|e| e.1))
                .map(|o| Plan { kind: o.kind, k_splits: o.k_splits.clamp(1, max_splits(o.kind, p)) })
        };
        // GEMV problems without an override take the 32-row GEMV kind (the 64-row one in a round
        // that runs wide, below).
        let (mut plans, default_gemv): (Vec<Option<Plan>>, Vec<bool>) = problems
            .iter()
            .enumerate()
            .map(|(i, p)| match fixed(i, p) {
                Some(plan) => (Some(plan), false),
                None if TileKind::Gemv32.supports(p.n, p.flags) => (Some(Plan::new(TileKind::Gemv32)), true),
                None => (None, false),
            })
            .unzip();

        let mut relies_on_balance = false;
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
                        // A slot of the wide build is a whole SM: a GEMV tile there has twice a
                        // narrow slot's share of the memory bandwidth.
                        let on_wide = g.is_wide() || (forced_wide && wide_slots.is_some());
                        let ns = cost.kind_tile_ns(plan.kind, &q);
                        (if on_wide && plan.kind.is_gemv() { ns / 2.0 } else { ns }, n)
                    })
                    .collect();
                let lpt = CostModel::makespan_groups(&mut groups, slots);
                if splits > 1 || self.no_split_k || self.no_balance {
                    return (lpt, false);
                }
                // Stream-K balancing (`Round::balance`) spreads the work evenly when no tile is
                // longer than a few slot shares, at the price of a prologue and a partial per slot.
                let total: f64 = groups.iter().map(|g| g.0 * g.1 as f64).sum();
                let share = total / slots as f64;
                let longest = groups.iter().map(|g| g.0).fold(0.0, f64::max);
                if longest > MAX_SHARES * share {
                    return (lpt, false);
                }
                let balanced = share + cost.scale() * (cost.kind(g).0 + 2.0 * cost.part_cost(g));
                if balanced < lpt { (balanced, true) } else { (lpt, false) }
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
                // Splitting only pays while the output tiles alone leave slots idle, and never
                // measured faster than stream-K balancing for the wide kind (its parts each
                // write and reread a 128 KB partial, with no second CTA on the SM to hide it).
                let splits =
                    if tiles < 2 * slots && !self.no_split_k && !g.is_wide() { &SPLITS[..] } else { &SPLITS[..1] };
                for &sp in splits {
                    let (t, balanced) = makespan(g, sp, slots);
                    if t < best.0 * 0.97 || (best.0.is_infinite()) {
                        (best, relies_on_balance) = ((t, Plan { kind: g, k_splits: sp }), balanced);
                    }
                }
            }
            for (p, k) in problems.iter().zip(plans.iter_mut()) {
                if k.is_none() {
                    *k = Some(Plan { kind: best.1.kind, k_splits: best.1.k_splits.min(max_splits(best.1.kind, p)) });
                }
            }
            // One CTA per SM keeps fewer loads in flight per SM: bigger GEMV tiles (more rows,
            // so more independent loads per lane) measured 2–3% faster on the 120-problem seed
            // mix (docs/results/h100-2026-11-24/wide-27feeb2/gemv-tiles.log).
            if forced_wide || best.1.kind.is_wide() {
                for (k, _) in plans.iter_mut().zip(&default_gemv).filter(|(_, d)| **d) {
                    *k = Some(Plan::new(TileKind::Gemv64));
                }
            }
        }
        (plans.into_iter().map(|k| k.unwrap_or(Plan::new(TileKind::Sgemm64x64))).collect(), relies_on_balance)
    }

    /// CTA slots a round planned by this chooser runs on: the wide build's for a wide round.
    pub fn round_slots(&self, round: &Round, slots: usize) -> usize {
        match self.wide_slots {
            Some(w) if round.is_wide() => w,
            _ => slots,
        }
    }

    /// The chooser for rounds on `device`: it weighs the wide build where the device has one,
    /// and balances rounds only where k-parts run in parallel.
    pub fn for_device(device: &dyn crate::device::Device) -> TileChooser {
        TileChooser::default().fitted_to(device)
    }

    /// This chooser (its table and settings) with `device`'s facts: the wide build's slots, and
    /// no stream-K balancing where k-parts do not run in parallel.
    pub fn fitted_to(mut self, device: &dyn crate::device::Device) -> TileChooser {
        self.wide_slots = device.wide_slots();
        self.no_balance |= !device.splits_k_in_parallel();
        self
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

    /// Builds a round from `problems` with chosen plans, tiles ordered longest first, then
    /// stream-K balanced ([`Round::balance`]) unless split-K or balancing is off.
    pub fn build(&self, problems: &[ProblemDesc], overrides: &[Option<Plan>], cost: &CostModel, slots: usize) -> Round {
        let (mut plans, relies_on_balance) = self.plan(problems, overrides, cost, slots);
        if self.no_split_k {
            plans.iter_mut().for_each(|p| p.k_splits = 1);
        }
        let mut round = Round::default();
        for (p, plan) in problems.iter().zip(&plans) {
            round.push(*p, plan.kind, plan.k_splits);
        }
        round.order_longest_first(cost);
        if !self.no_split_k
            && !self.no_balance
            && !round.balance(cost, self.round_slots(&round, slots))
            && relies_on_balance
        {
            // The plan counted on a balance the cut could not reach: plan without it.
            let plain = TileChooser { no_balance: true, ..self.clone() };
            let again = plain.choose(problems, overrides, cost, slots);
            let chosen = |r: &Round| cost.predict(r, self.round_slots(r, slots));
            let mut other = Round::default();
            for (p, plan) in problems.iter().zip(again) {
                other.push(*p, plan.kind, plan.k_splits);
            }
            other.order_longest_first(cost);
            if chosen(&other) < chosen(&round) {
                return other;
            }
        }
        round
    }
}

/// Re-exported for tests: the descriptor ABI's tile shapes.
pub use abi::TileShape;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use rand::{Rng, SeedableRng};

    fn conv2_2(n: usize) -> Vec<ProblemDesc> {
        let p =
            problem((0, 0, 0, 0), (256, 128, 1152), (1152, 128, 128), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        vec![p; n]
    }

    /// Drift tracking: a device 3× slower or faster than calibrated is tracked within 10%, and
    /// so is one whose calibration timed the round overhead through a stall (its predictions all
    /// overhead), while one round in four is stalled 20× by something else.
    #[test]
    fn observe_tracks_drift_through_stalls() {
        let mut round = Round::default();
        for p in conv2_2(4) {
            round.push(p, TileKind::Sgemm128x64, 1);
        }
        let model = CostModel::default();
        let calibrated = model.predict(&round, 132);
        let work = calibrated.as_secs_f64() - model.round_overhead_ns * 1e-9;
        let device = |speed: f64| Duration::from_secs_f64(model.round_overhead_ns * 1e-9 + work * speed);
        let stalled = CostModel { round_overhead_ns: 4e6, ..model.clone() };
        for (mut m, actual) in
            [(model.clone(), device(3.0)), (model.clone(), device(1.0 / 3.0)), (stalled, device(1.0))]
        {
            for i in 0..40 {
                let predicted = m.predict(&round, 132);
                m.observe(predicted, if i % 4 == 1 { actual * 20 } else { actual });
            }
            let ratio = m.predict(&round, 132).as_secs_f64() / actual.as_secs_f64();
            assert!((0.9..1.1).contains(&ratio), "predicted / measured {ratio:.3} after 40 rounds ({m:?})");
        }
    }

    /// A lone GEMV spreads over 8-row tiles while they fit in about one wave of slots; an override,
    /// a table entry and a GEMM plan as in a round.
    #[test]
    fn a_lone_gemv_spreads_over_the_sms() {
        let cost = CostModel::default();
        let lone = TileChooser::persistent();
        let gemv =
            |m: u32| problem((0, 0, 0, 0), (m, 1, 512), (512, 1, 1), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        assert_eq!(lone.choose_alone(&gemv(512), None, &cost, 132).kind, TileKind::Gemv8);
        assert_eq!(lone.choose_alone(&gemv(1024), None, &cost, 132).kind, TileKind::Gemv8);
        // 1024 8-row tiles are eight waves; 256 32-row ones, two.
        assert_eq!(lone.choose_alone(&gemv(8192), None, &cost, 132).kind, TileKind::Gemv32);
        let forced = Some(Plan::new(TileKind::Gemv64));
        assert_eq!(lone.choose_alone(&gemv(512), forced, &cost, 132).kind, TileKind::Gemv64);
        let tuned =
            TileChooser { table: vec![((512, 1, 512), Plan::new(TileKind::Gemv32))], ..TileChooser::persistent() };
        assert_eq!(tuned.choose_alone(&gemv(512), None, &cost, 132).kind, TileKind::Gemv32);
        let sq =
            problem((0, 0, 0, 0), (256, 256, 256), (256, 256, 256), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        assert_eq!(lone.choose_alone(&sq, None, &cost, 132), lone.choose(&[sq], &[None], &cost, 132)[0]);
    }

    /// The wide kind is weighed only where the device has a wide build, wins for a big batch of
    /// large GEMMs, loses to split-K tiles for a single problem, and never runs in persistent mode.
    #[test]
    fn chooser_weighs_the_wide_build() {
        let cost = CostModel::default();
        let narrow_only = TileChooser::default().build(&conv2_2(120), &[], &cost, 264);
        assert!(!narrow_only.is_wide());
        // Without stream-K balancing, 120 × conv2_2 runs wide (one tile per SM, 12 SMs idle);
        // with it, whatever the chooser picks is predicted no slower.
        let unbalanced = TileChooser { wide_slots: Some(132), no_balance: true, ..TileChooser::default() };
        let big = unbalanced.build(&conv2_2(120), &[], &cost, 264);
        assert!(big.is_wide(), "120 × conv2_2 should run wide: {:?}", big.problems[0].tile_kind);
        assert_eq!(unbalanced.round_slots(&big, 264), 132);
        let wide = TileChooser { wide_slots: Some(132), ..TileChooser::default() };
        let best = wide.build(&conv2_2(120), &[], &cost, 264);
        assert!(cost.predict(&best, wide.round_slots(&best, 264)) <= cost.predict(&big, 132));
        // As measured on the H100 (docs/results/h100-2026-11-24/wide-*): 120 × 256³ runs wide
        // unsplit, 40 × 256³ narrow; the wide kind never takes uniform split-K.
        let sq =
            problem((0, 0, 0, 0), (256, 256, 256), (256, 256, 256), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        let sq120 = wide.build(&vec![sq; 120], &[], &cost, 264);
        assert!(sq120.is_wide() && sq120.units.is_empty() && sq120.problems.iter().all(|p| p.k_splits == 1));
        assert!(!wide.build(&vec![sq; 40], &[], &cost, 264).is_wide());
        for n in [10, 40, 80, 120] {
            let r = wide.build(&conv2_2(n), &[], &cost, 264);
            assert!(!r.is_wide() || r.problems.iter().all(|p| p.k_splits == 1 || !r.units.is_empty()), "{n}");
        }
        // The seed mix: 40 each of GEMV, conv2_2 and 256³ run wide with 64-row GEMV tiles; 10
        // of them run narrow with 32-row ones.
        let rnn = problem((0, 0, 0, 0), (512, 1, 512), (512, 1, 1), (1.0, 0.0), 0, Activation::None, BiasMode::None);
        let mix = |n: usize| -> Vec<ProblemDesc> { (0..n).map(|i| [rnn, conv2_2(1)[0], sq][i % 3]).collect() };
        let gemv_kinds = |r: &Round| -> Vec<u32> {
            r.problems.iter().filter(|p| p.n == 1).map(|p| p.tile_kind).collect::<BTreeSet<_>>().into_iter().collect()
        };
        let big = wide.build(&mix(120), &[], &cost, 264);
        assert!(big.is_wide() && gemv_kinds(&big) == [TileKind::Gemv64 as u32]);
        let small = wide.build(&mix(10), &[], &cost, 264);
        assert!(!small.is_wide() && gemv_kinds(&small) == [TileKind::Gemv32 as u32]);
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

    /// 240 tiles on 264 slots: balancing cuts each tile in at most three parts that
    /// cover its grains in order, queues every slot's first part first, passes `check`, and
    /// shortens the predicted round.
    #[test]
    fn stream_k_fills_a_partial_wave() {
        let cost = CostModel::default();
        let mut probs = conv2_2(120);
        for (i, p) in probs.iter_mut().enumerate() {
            (p.a, p.b, p.c) = (1 << 20, 1 << 24, (1 << 28) + i as u64 * (256 * 128 * 4));
        }
        let wide = [Some(Plan::new(TileKind::Sgemm128x128)); 120];
        let plain = TileChooser { no_balance: true, ..TileChooser::default() }.build(&probs, &wide, &cost, 264);
        let balanced = TileChooser::default().build(&probs, &wide, &cost, 264);
        check(&balanced, 0..1 << 32).unwrap();
        let (before, after) = (cost.predict(&plain, 264), cost.predict(&balanced, 264));
        assert!(after.as_secs_f64() < before.as_secs_f64() * 0.99, "{before:?} -> {after:?}");
        assert!(balanced.tiles.len() > 240 && balanced.tiles.len() <= 240 + 264);
        assert!(balanced.problems.iter().all(|p| p.k_splits == 48 && (1..=3).contains(&p.k_parts)));
        let mut parts = std::collections::HashMap::new();
        for t in &balanced.tiles {
            *parts.entry((t.problem, t.tile_m, t.tile_n)).or_insert(0u32) += 1;
        }
        assert_eq!(parts.len(), 240);
        assert!(parts.values().all(|&n| (1..=3).contains(&n)));
        // One unit per slot's share, each one or a few parts.
        assert_eq!(balanced.units.len(), 264 + 1);
        assert!(balanced.units.windows(2).all(|w| (1..=3).contains(&(w[1] - w[0]))));
        // A round that fills its waves exactly is left alone.
        let mut full =
            TileChooser { no_balance: true, ..TileChooser::default() }.build(&probs[..66], &wide[..66], &cost, 132);
        assert!(!full.balance(&cost, 132));
    }

    /// Random rounds, balanced on random slot counts, always pass `check`, and their tiles
    /// cover every output tile's grains once.
    #[test]
    fn balanced_rounds_pass_check() {
        let cost = CostModel::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut changed = 0;
        for _ in 0..300 {
            let n = rng.random_range(1..40);
            let mut addr = 1u64 << 20;
            let probs: Vec<ProblemDesc> = (0..n)
                .map(|_| {
                    let (m, k) = (rng.random_range(1..700), rng.random_range(1..2000));
                    let n = if rng.random_bool(0.2) { 1 } else { rng.random_range(1..700) };
                    let p = problem(
                        (addr, addr, addr, 0),
                        (m, n, k),
                        (k, n, n),
                        (1.0, 0.0),
                        0,
                        Activation::None,
                        BiasMode::None,
                    );
                    let mut p = p;
                    p.a = addr;
                    p.b = p.a + (m as u64 * k as u64) * 4;
                    p.c = p.b + (k as u64 * n as u64) * 4;
                    addr = p.c + (m as u64 * n as u64) * 4 + 16;
                    p
                })
                .collect();
            let kinds = [TileKind::Sgemm128x128, TileKind::Sgemm128x64, TileKind::Sgemm64x64, TileKind::Sgemm256x128];
            let kind = kinds[rng.random_range(0..kinds.len())];
            let o: Vec<Option<Plan>> = probs.iter().map(|p| (p.n > 1).then_some(Plan::new(kind))).collect();
            let mut r = TileChooser { no_balance: true, ..TileChooser::default() }.build(&probs, &o, &cost, 264);
            let slots = rng.random_range(1..300);
            changed += r.balance(&cost, slots) as u32;
            check(&r, 0..addr).unwrap_or_else(|e| panic!("{e} (slots {slots})"));
            assert_eq!(r.tiles_per_problem().iter().sum::<u32>() as usize, r.tiles.len());
        }
        assert!(changed > 30, "only {changed} of 300 random rounds were balanced");
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
