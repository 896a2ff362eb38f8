//! The descriptor ABI: what the host writes and the megakernel reads.
//!
//! One definition for both sides. The host compiles this module with `bytemuck::Pod` derives and
//! fills [`ProblemDesc`]s and [`TileDesc`]s; the device build reads the very same layout. Enums
//! travel as raw `u32` fields (a `Pod` type may hold any bit pattern); [`TileKind::from_u32`] and
//! friends decode them, and the megakernel reports undecodable values through [`status`] codes.
//!
//! Matrices are row-major. A problem computes
//! `C = act(alpha · op(A) · op(B) + beta · C + bias)` with `op(A)` of shape `m × k`, `op(B)` of
//! shape `k × n` and `C` of shape `m × n`. With [`flags::TRANS_A`] the stored `A` is `k × m`
//! (`op(A) = Aᵀ`); likewise [`flags::TRANS_B`]. When `beta == 0`, `C` is not read (BLAS rules),
//! so it may hold anything, NaN included.

#[cfg(not(target_arch = "nvptx64"))]
use bytemuck::{Pod, Zeroable};

/// Threads per CTA for every tile routine: the megakernel has one block size.
pub const BLOCK_THREADS: u32 = 256;

/// Largest `m`, `n` or `k` a problem may have.
pub const MAX_DIM: u32 = 1 << 24;

/// Bytes reserved at the start of dynamic shared memory for the megakernel's own use: the tile
/// claim broadcast at offset 0, the split-K "last arriver" flag at [`SMEM_FLAG_OFFSET`], and the
/// current tile's [`ProblemDesc`] at [`SMEM_DESC_OFFSET`]. Tile routines get what follows.
pub const SMEM_HEADER_BYTES: u32 = 16 + 128;

/// Offset of the split-K broadcast word in dynamic shared memory.
pub const SMEM_FLAG_OFFSET: u32 = 4;

/// Most k-splits a problem may use.
pub const MAX_K_SPLITS: u32 = 64;

/// Offset of the current tile's problem descriptor in dynamic shared memory.
pub const SMEM_DESC_OFFSET: u32 = 16;

/// Depth of the k-slices the SGEMM tiles stage through shared memory.
pub const SGEMM_BK: u32 = 8;

/// Floats of padding after each shared-memory row of an SGEMM stage (keeps 16-byte alignment and
/// makes the transposing stores conflict-free).
pub const SGEMM_SMEM_PAD: u32 = 4;

/// Bit flags of [`ProblemDesc::flags`].
pub mod flags {
    /// The stored `A` is `k × m` row-major; the problem uses its transpose.
    pub const TRANS_A: u32 = 1 << 0;
    /// The stored `B` is `n × k` row-major; the problem uses its transpose.
    pub const TRANS_B: u32 = 1 << 1;
    /// Every flag this ABI version defines.
    pub const ALL: u32 = TRANS_A | TRANS_B;
}

/// Status codes the megakernel writes (first one wins) when it meets a descriptor it cannot run.
/// The host turns a non-zero code into an error; the offending tile is skipped, never executed.
pub mod status {
    /// Every tile ran.
    pub const OK: u32 = 0;
    /// A problem's `tile_kind` is not a [`super::TileKind`].
    pub const BAD_TILE_KIND: u32 = 1;
    /// A tile names a problem index past the round's problem count.
    pub const BAD_PROBLEM: u32 = 2;
    /// A tile's coordinates lie outside its problem's tile grid, or its [`super::KPart`] does not
    /// fit the problem's grains and parts.
    pub const BAD_TILE_COORD: u32 = 3;
    /// A problem's activation or bias mode is not defined.
    pub const BAD_EPILOGUE: u32 = 4;
    /// A problem's tile kind runs only in the wide build ([`super::TileKind::is_wide`]) but the
    /// launch was of the narrow one.
    pub const NEEDS_WIDE: u32 = 5;
}

/// The activation applied last in the epilogue.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `act(x) = x`.
    None = 0,
    /// `act(x) = max(x, 0)`.
    Relu = 1,
}

/// Which bias vector, if any, the epilogue adds before the activation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BiasMode {
    /// No bias.
    None = 0,
    /// One value per row of `C` (length `m`), broadcast along `n`: conv-as-GEMM, RNN cells.
    Row = 1,
    /// One value per column of `C` (length `n`), broadcast along `m`: a linear layer `x·W + b`.
    Col = 2,
}

impl Activation {
    /// Every activation, in code order.
    pub const ALL: [Activation; 2] = [Activation::None, Activation::Relu];

    /// Decodes a raw descriptor field.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Activation::None),
            1 => Some(Activation::Relu),
            _ => None,
        }
    }
}

impl BiasMode {
    /// Every bias mode, in code order.
    pub const ALL: [BiasMode; 3] = [BiasMode::None, BiasMode::Row, BiasMode::Col];

    /// Decodes a raw descriptor field.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(BiasMode::None),
            1 => Some(BiasMode::Row),
            2 => Some(BiasMode::Col),
            _ => None,
        }
    }
}

/// The tile routine a problem's tiles run. Every routine uses [`BLOCK_THREADS`] threads.
///
/// Adding a size: instantiate the generic routine in `megakernel.rs` and add one entry here (its
/// code, its [`TileKind::shape`] and its line in [`TileKind::ALL`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// 128×128 output tile, BK = 8, 8×8 outputs per thread. Highest arithmetic intensity: large
    /// GEMMs and big batches, where there are enough tiles to fill every SM.
    Sgemm128x128 = 0,
    /// 128×64 output tile, BK = 8, 8×4 per thread. Twice the tiles of 128×128 for the same
    /// problem: mid-size batches, and `n` near 64.
    Sgemm128x64 = 1,
    /// 64×64 output tile, BK = 8, 4×4 per thread. Small problems and latency-bound rounds with
    /// few problems; the fallback for transposed GEMVs.
    Sgemm64x64 = 2,
    /// Matrix-vector (`n == 1`, `A` not transposed), 32 rows per tile, 4 rows per warp, 16-byte
    /// loads with 8 in flight per lane: bandwidth-bound RNN cells.
    Gemv32 = 3,
    /// Matrix-vector with 64 rows per tile, 8 rows per warp: fewer, longer tiles (less claim
    /// overhead) for tall matrices.
    Gemv64 = 4,
    /// 256×128 output tile, BK = 8, 16×8 outputs per thread (128 accumulators): the highest
    /// arithmetic intensity, for rounds of large GEMMs. Needs about 200 registers, so it runs only
    /// in the wide build (one CTA per SM, see [`TileKind::is_wide`]).
    Sgemm256x128 = 5,
    /// Matrix-vector with 8 rows per tile, one row per warp: four times the tiles of the 32-row
    /// kind, so a lone request spreads over four times the SMs. Its tile time is mostly the SM's
    /// share of L2 bandwidth (a 32-row tile of a 512-wide row moves 64 KiB into one SM), which is
    /// what a request on an idle GPU waits on.
    Gemv8 = 6,
}

/// Output tile extent of a [`TileKind`]: `bm` rows by `bn` columns of `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Rows of `C` per tile.
    pub bm: u32,
    /// Columns of `C` per tile.
    pub bn: u32,
}

impl TileKind {
    /// Every tile kind, in code order.
    pub const ALL: [TileKind; 7] = [
        TileKind::Sgemm128x128,
        TileKind::Sgemm128x64,
        TileKind::Sgemm64x64,
        TileKind::Gemv32,
        TileKind::Gemv64,
        TileKind::Sgemm256x128,
        TileKind::Gemv8,
    ];

    /// Decodes a raw descriptor field.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(TileKind::Sgemm128x128),
            1 => Some(TileKind::Sgemm128x64),
            2 => Some(TileKind::Sgemm64x64),
            3 => Some(TileKind::Gemv32),
            4 => Some(TileKind::Gemv64),
            5 => Some(TileKind::Sgemm256x128),
            6 => Some(TileKind::Gemv8),
            _ => None,
        }
    }

    /// The output tile this kind computes.
    #[inline(always)]
    pub const fn shape(self) -> TileShape {
        match self {
            TileKind::Sgemm128x128 => TileShape { bm: 128, bn: 128 },
            TileKind::Sgemm128x64 => TileShape { bm: 128, bn: 64 },
            TileKind::Sgemm64x64 => TileShape { bm: 64, bn: 64 },
            TileKind::Gemv32 => TileShape { bm: 32, bn: 1 },
            TileKind::Gemv64 => TileShape { bm: 64, bn: 1 },
            TileKind::Sgemm256x128 => TileShape { bm: 256, bn: 128 },
            TileKind::Gemv8 => TileShape { bm: 8, bn: 1 },
        }
    }

    /// Whether this kind is a matrix-vector routine (only for `n == 1` without `TRANS_A`).
    #[inline(always)]
    pub const fn is_gemv(self) -> bool {
        matches!(self, TileKind::Gemv32 | TileKind::Gemv64 | TileKind::Gemv8)
    }

    /// Whether this kind runs only in the wide build of the megakernel (`tilemux_round_wide`: one
    /// CTA per SM, no register cap), which every other kind runs in too.
    #[inline(always)]
    pub const fn is_wide(self) -> bool {
        matches!(self, TileKind::Sgemm256x128)
    }

    /// Whether this kind can run a problem of these dimensions and flags.
    #[inline(always)]
    pub const fn supports(self, n: u32, flags: u32) -> bool {
        !self.is_gemv() || (n == 1 && flags & flags::TRANS_A == 0)
    }

    /// Dynamic shared memory the tile routine needs: two stages of `BK × (bm + pad)` for A and
    /// `BK × (bn + pad)` for B for the SGEMM kinds; nothing for GEMV.
    #[inline(always)]
    pub const fn smem_bytes(self) -> u32 {
        if self.is_gemv() {
            0
        } else {
            let s = self.shape();
            2 * SGEMM_BK * (s.bm + s.bn + 2 * SGEMM_SMEM_PAD) * 4
        }
    }

    /// Dynamic shared memory of the megakernel's narrow build (`tilemux_round`,
    /// `tilemux_persistent`): its header plus the largest need of the kinds it runs.
    #[inline]
    pub const fn megakernel_smem_bytes() -> u32 {
        Self::smem_of_build(false)
    }

    /// Dynamic shared memory of the wide build (`tilemux_round_wide`), which runs every kind.
    #[inline]
    pub const fn wide_smem_bytes() -> u32 {
        Self::smem_of_build(true)
    }

    const fn smem_of_build(wide: bool) -> u32 {
        let mut max = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            let b = Self::ALL[i].smem_bytes();
            if b > max && (wide || !Self::ALL[i].is_wide()) {
                max = b;
            }
            i += 1;
        }
        SMEM_HEADER_BYTES + max
    }

    /// Short lowercase name, as used on command lines and in result tables.
    #[inline]
    pub const fn name(self) -> &'static str {
        match self {
            TileKind::Sgemm128x128 => "sgemm_128x128x8",
            TileKind::Sgemm128x64 => "sgemm_128x64x8",
            TileKind::Sgemm64x64 => "sgemm_64x64x8",
            TileKind::Gemv32 => "gemv_rows32",
            TileKind::Gemv64 => "gemv_rows64",
            TileKind::Sgemm256x128 => "sgemm_256x128x8",
            TileKind::Gemv8 => "gemv_rows8",
        }
    }
}

/// One GEMM/GEMV problem of a round. 128 bytes, 16-byte aligned, no implicit padding.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
pub struct ProblemDesc {
    /// Address of the stored `A` (`m × k`, or `k × m` with `TRANS_A`).
    pub a: u64,
    /// Address of the stored `B` (`k × n`, or `n × k` with `TRANS_B`).
    pub b: u64,
    /// Address of `C` (`m × n`), read when `beta != 0`, always written.
    pub c: u64,
    /// Address of the bias vector (length `m` or `n`, see [`BiasMode`]); 0 when there is none.
    pub bias: u64,
    /// Rows of `op(A)` and `C`.
    pub m: u32,
    /// Columns of `op(B)` and `C`.
    pub n: u32,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: u32,
    /// Elements between consecutive rows of the stored `A`.
    pub lda: u32,
    /// Elements between consecutive rows of the stored `B`.
    pub ldb: u32,
    /// Elements between consecutive rows of `C`.
    pub ldc: u32,
    /// Scale of `op(A)·op(B)`.
    pub alpha: f32,
    /// Scale of the old `C`; 0 means `C` is not read.
    pub beta: f32,
    /// [`flags`] bits.
    pub flags: u32,
    /// [`Activation`] code.
    pub activation: u32,
    /// [`BiasMode`] code.
    pub bias_mode: u32,
    /// [`TileKind`] code.
    pub tile_kind: u32,
    /// Tiles along `m`: `ceil(m / bm)`.
    pub tiles_m: u32,
    /// Tiles along `n`: `ceil(n / bn)`.
    pub tiles_n: u32,
    /// Owning tenant (bookkeeping; the device does not act on it).
    pub tenant: u32,
    /// Index of the completion counter this problem's tiles increment.
    pub completion: u32,
    /// Split-K scratch: `tiles_m · tiles_n · k_parts` partial tiles of `bm × bn` floats, filled
    /// in by the backend (0 when `k_parts <= 1`).
    pub workspace: u64,
    /// Split-K arrival counters, one `u32` per output tile, zero at launch (backend-owned).
    pub counters: u64,
    /// Grains of `k`: `k` is cut into this many whole-`SGEMM_BK` ranges
    /// ([`ProblemDesc::split_range`]), and each tile computes a run of consecutive grains (its
    /// [`KPart`]). 1: every tile spans all of `k`.
    pub k_splits: u32,
    /// Most tiles one output tile is computed by (0 or 1: one, no reduction). The tiles of an
    /// output tile each publish a partial; the last to finish sums them in part order and runs
    /// the epilogue. Uniform split-K: `k_splits` parts of one grain each.
    pub k_parts: u32,
    /// Reserved, zero.
    pub _reserved: [u32; 2],
}

/// One unit of megakernel work: grains `first..=last` of `k` of a `bm × bn` tile of one
/// problem's `C`. 16 bytes.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
pub struct TileDesc {
    /// Index of the problem in the round's problem array.
    pub problem: u32,
    /// Tile row: `C` rows `tile_m·bm ..`.
    pub tile_m: u32,
    /// Tile column: `C` columns `tile_n·bn ..`.
    pub tile_n: u32,
    /// Which grains of `k` this tile computes and which part of its output tile that is:
    /// [`KPart::encode`]d (0: the whole of `k`, the only part).
    pub split: u32,
}

/// A tile's share of its output tile's `k`: grains `first..=last` (of the problem's
/// `k_splits`), part `index` of the `count` tiles that compute the output tile. The parts of an
/// output tile cover its grains in order: part 0 starts at grain 0, part `i + 1` right after
/// part `i`, the last ends at grain `k_splits - 1`. Uniform split-K: part `s` is grain `s`;
/// stream-K balancing gives parts unequal runs of grains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KPart {
    /// First grain.
    pub first: u32,
    /// Last grain (inclusive).
    pub last: u32,
    /// Part index, `< count`.
    pub index: u32,
    /// Tiles computing this output tile (1: no reduction).
    pub count: u32,
}

impl KPart {
    /// All of a one-grain `k`, one part.
    pub const WHOLE: KPart = KPart { first: 0, last: 0, index: 0, count: 1 };

    /// Packs into [`TileDesc::split`]: one byte each of `first`, `last`, `index`, `count - 1`
    /// (so [`KPart::WHOLE`] is 0). Every field must fit (`< MAX_K_SPLITS`, `count >= 1`).
    #[inline(always)]
    pub const fn encode(self) -> u32 {
        self.first | self.last << 8 | self.index << 16 | (self.count - 1) << 24
    }

    /// Unpacks a [`TileDesc::split`] word.
    #[inline(always)]
    pub const fn decode(w: u32) -> KPart {
        KPart { first: w & 0xff, last: w >> 8 & 0xff, index: w >> 16 & 0xff, count: (w >> 24) + 1 }
    }

    /// Uniform split-K: grain `s` is part `s` of `splits`.
    #[inline(always)]
    pub const fn uniform(s: u32, splits: u32) -> KPart {
        KPart { first: s, last: s, index: s, count: splits }
    }

    /// Whether this part fits a problem with `k_splits` grains and `k_parts` parts per output tile.
    #[inline(always)]
    pub const fn fits(self, k_splits: u32, k_parts: u32) -> bool {
        let parts = if k_parts == 0 { 1 } else { k_parts };
        self.first <= self.last && self.last < k_splits && self.index < self.count && self.count <= parts
    }
}

impl TileDesc {
    /// This tile's [`KPart`].
    #[inline(always)]
    pub const fn part(&self) -> KPart {
        KPart::decode(self.split)
    }
}

const _: () = {
    assert!(core::mem::size_of::<ProblemDesc>() == 128);
    assert!(core::mem::align_of::<ProblemDesc>() == 16);
    assert!(core::mem::offset_of!(ProblemDesc, a) == 0);
    assert!(core::mem::offset_of!(ProblemDesc, bias) == 24);
    assert!(core::mem::offset_of!(ProblemDesc, m) == 32);
    assert!(core::mem::offset_of!(ProblemDesc, alpha) == 56);
    assert!(core::mem::offset_of!(ProblemDesc, flags) == 64);
    assert!(core::mem::offset_of!(ProblemDesc, tile_kind) == 76);
    assert!(core::mem::offset_of!(ProblemDesc, completion) == 92);
    assert!(core::mem::offset_of!(ProblemDesc, workspace) == 96);
    assert!(core::mem::offset_of!(ProblemDesc, counters) == 104);
    assert!(core::mem::offset_of!(ProblemDesc, k_splits) == 112);
    assert!(core::mem::size_of::<TileDesc>() == 16);
    assert!(core::mem::align_of::<TileDesc>() == 16);
};

/// `ceil(a / b)` for `b > 0`.
#[inline(always)]
pub const fn ceil_div(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// Elements spanned by a row-major `rows × cols` matrix with leading dimension `ld`:
/// the last element's index plus one. Zero when either dimension is zero.
#[inline(always)]
pub const fn matrix_extent(rows: u32, cols: u32, ld: u32) -> u64 {
    if rows == 0 || cols == 0 { 0 } else { (rows as u64 - 1) * ld as u64 + cols as u64 }
}

impl ProblemDesc {
    /// Stored shape (rows, cols) of `A`.
    #[inline(always)]
    pub const fn a_stored(&self) -> (u32, u32) {
        if self.flags & flags::TRANS_A != 0 { (self.k, self.m) } else { (self.m, self.k) }
    }

    /// Stored shape (rows, cols) of `B`.
    #[inline(always)]
    pub const fn b_stored(&self) -> (u32, u32) {
        if self.flags & flags::TRANS_B != 0 { (self.n, self.k) } else { (self.k, self.n) }
    }

    /// Number of output tiles in this problem's grid.
    #[inline(always)]
    pub const fn output_tiles(&self) -> u32 {
        self.tiles_m * self.tiles_n
    }

    /// Number of tiles the megakernel runs for this problem when it is planned uniformly (output
    /// tiles times k-splits; what [`TileDesc`]s a stream-K balanced round holds varies).
    #[inline(always)]
    pub const fn tile_count(&self) -> u32 {
        self.tiles_m * self.tiles_n * self.k_splits
    }

    /// Partial tiles of workspace per output tile (0 without a reduction).
    #[inline(always)]
    pub const fn workspace_parts(&self) -> u32 {
        if self.k_parts > 1 { self.k_parts } else { 0 }
    }

    /// The `k` range `[start, end)` of grain `split`: grains are whole `SGEMM_BK` steps, as equal
    /// as possible, none empty when `k_splits <= ceil(k / SGEMM_BK)` (the last ones may be empty
    /// otherwise).
    #[inline(always)]
    pub const fn split_range(&self, split: u32) -> (u32, u32) {
        let steps = self.k.div_ceil(SGEMM_BK);
        let per = steps.div_ceil(if self.k_splits == 0 { 1 } else { self.k_splits });
        let start = split * per * SGEMM_BK;
        let end = (split + 1) * per * SGEMM_BK;
        (if start < self.k { start } else { self.k }, if end < self.k { end } else { self.k })
    }

    /// Length of the bias vector this problem reads (0 without bias).
    #[inline(always)]
    pub const fn bias_len(&self) -> u32 {
        match BiasMode::from_u32(self.bias_mode) {
            Some(BiasMode::Row) => self.m,
            Some(BiasMode::Col) => self.n,
            _ => 0,
        }
    }
}

/// Persistent mode: the ring the host fills and the resident megakernel drains. Protocol and
/// memory ordering: `kernels/src/QUEUE.md`.
///
/// Problem `q` (the q-th ever written) lives in slot `q % slots`; its tiles are `first_tile ..
/// first_tile + tiles` of one global tile sequence. The host writes each slot's stamped image
/// ([`ring::HOST_SLOT_CHUNKS`] 16-byte chunks, each with `q + 1` in its first word) into pinned,
/// device-mapped host memory; one warp of the resident kernel (the forwarder) polls the next
/// slot's image itself across the bus (no separate doorbell word, so one round trip brings both
/// the news and the problem), copies it into the device ring and publishes each of its tiles in
/// the claim table ([`ring::entry`]), where the CTA holding that tile's claim finds it. What the
/// workers write to host memory is each problem's completion: one flag byte per tile for a
/// problem of at most [`ring::FLAG_TILES`] tiles, else one word, by the CTA that counts the
/// problem's last tile on the slot's device counter.
pub mod ring {
    use super::ProblemDesc;
    #[cfg(not(target_arch = "nvptx64"))]
    use bytemuck::{Pod, Zeroable};

    /// One problem of the ring. Its image (host and device ring alike) carries its bytes from
    /// `first_tile` on in stamped 16-byte chunks; `seq` is the stamps' and `stamp_hi`'s.
    #[repr(C, align(16))]
    #[derive(Clone, Copy, Debug)]
    #[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
    pub struct RingSlot {
        /// Sequence number of the problem in this slot.
        pub seq: u64,
        /// Its first tile in the global tile sequence.
        pub first_tile: u64,
        /// Its tile count (at least 1, at most [`MAX_PROBLEM_TILES`]).
        pub tiles: u32,
        /// `(seq + 1) >> 32`: with a stamp (its low 32 bits), the whole `seq + 1`.
        pub stamp_hi: u32,
        /// How the problem's completion reaches the host. Without [`FLAGGED`]: the slot's tile
        /// counter reads this once the problem's last tile is done, the tiles of every counted
        /// problem the slot has held so far, this one included (the counter is never reset), and
        /// the CTA whose count reaches it writes the completion word. With [`FLAGGED`] (a problem
        /// of at most [`FLAG_TILES`] tiles): each tile's CTA stores the low byte, the flag, into
        /// the tile's byte of the slot's flag line ([`flags_offset`]); the counter is left alone.
        pub done_target: u64,
        /// The problem (tile grid set, `k_splits == 1`, `completion` = slot index).
        pub problem: ProblemDesc,
    }

    /// 16-byte chunks of a slot's image (in the host block and, copied as it is, in the device
    /// ring): word 0 of each is the stamp (`seq + 1`, low 32 bits), words 1..4 carry the slot's
    /// bytes from `first_tile` on, 12 per chunk. A chunk is written and read in one 16-byte
    /// access, so an image whose 13 stamps agree holds one problem, whole.
    pub const HOST_SLOT_CHUNKS: usize = 13;
    /// Bytes of a slot's image.
    pub const HOST_SLOT_BYTES: usize = HOST_SLOT_CHUNKS * 16;
    /// Words of [`RingSlot`] the host image carries (all but `seq`).
    pub const IMAGE_WORDS: usize = core::mem::size_of::<RingSlot>() / 4 - 2;

    /// The stamp of problem `seq` (never 0, so a zeroed image holds no problem).
    pub const fn stamp(seq: u64) -> u32 {
        (seq as u32).wrapping_add(1)
    }

    /// What one poll of a slot image shows (chunk 0's words and whether the 13 stamps agree).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ImageView {
        /// Every chunk carries the same stamp: the image holds one problem, whole.
        pub whole: bool,
        /// Chunk 0's stamp.
        pub stamp: u32,
        /// The problem's first tile and tile count (chunk 0).
        pub first_tile: u64,
        pub tiles: u32,
    }

    /// What a waiting worker does after a poll ([`Cursor::step`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Look {
        /// The polled image holds the claim: its tile within the problem.
        Found(u32),
        /// Poll the cursor's (new) slot at once.
        Next,
        /// Nothing yet: poll again after the backoff.
        Wait,
    }

    /// A worker's guess of where its claim's problem is: the slot whose image it polls, and the
    /// stamp it expects there (`None`: any problem covering the claim). Problems take slots in
    /// order and their tiles follow each other, so a worker that just ran a tile of problem `q`
    /// finds its next claim in `q` or in the problems after it; the claim table is the way out
    /// when the guess is far off (a claim several problems ahead, or a slot already reused).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cursor {
        pub slot: u32,
        pub expect: Option<u32>,
    }

    impl Cursor {
        /// A fresh ring's: problem 0 in slot 0.
        pub const fn new() -> Cursor {
            Cursor { slot: 0, expect: Some(stamp(0)) }
        }

        /// Decides on one poll by the holder of claim `g`: the image of slot `self.slot`
        /// (`view`) and `g`'s claim-table entry, in a ring of `slots` slots.
        ///
        /// - A whole image covering `g` holds it: tile ranges of distinct problems never overlap,
        ///   so whatever problem it is, it is `g`'s (stamps also tell an image being rewritten).
        /// - Else an entry naming `g`'s slot sends the cursor there.
        /// - Else a whole image of the expected problem that ends at or before `g` sends the
        ///   cursor to the next slot and problem.
        /// - Else the problem has not arrived (or its copy is not yet visible): wait.
        #[inline(always)]
        pub fn step(&mut self, g: u64, view: ImageView, entry: u64, slots: u32) -> Look {
            if view.whole && g.wrapping_sub(view.first_tile) < view.tiles as u64 {
                self.expect = Some(view.stamp);
                return Look::Found(g.wrapping_sub(view.first_tile) as u32);
            }
            if let Some((slot, _)) = entry::find(entry, g) {
                if slot != self.slot {
                    *self = Cursor { slot, expect: None };
                    return Look::Next;
                }
                return Look::Wait;
            }
            if view.whole
                && self.expect == Some(view.stamp)
                && view.tiles > 0
                && g.wrapping_sub(view.first_tile) < 1 << 62
            {
                let slot = if self.slot + 1 >= slots { 0 } else { self.slot + 1 };
                *self = Cursor { slot, expect: Some(view.stamp.wrapping_add(1)) };
                return Look::Next;
            }
            Look::Wait
        }
    }

    impl Default for Cursor {
        fn default() -> Cursor {
            Cursor::new()
        }
    }

    /// Entries of the claim table: entry `g % CLAIM_TABLE` tells the CTA holding claim `g`
    /// which slot and tile it has. The host keeps the tiles in flight within the table (a
    /// problem is written only when its tiles end at most this far past the first tile of the
    /// oldest unfinished problem, or into an empty ring), so an entry is rewritten only after
    /// the claim it served was taken.
    pub const CLAIM_TABLE: u64 = 1 << 16;
    /// Most tiles one problem may have in persistent mode (the entry's tile field).
    pub const MAX_PROBLEM_TILES: u32 = 1 << 24;
    /// Most slots a ring may have (the entry's slot field).
    pub const MAX_SLOTS: u32 = 1 << 16;

    /// Claim-table entries: `tag` (24 bits: which lap of the table, plus one) | `slot` (16 bits)
    /// | `tile` within the problem (24 bits).
    pub mod entry {
        use super::CLAIM_TABLE;

        /// Lap tag of claim `g` (never 0: a zeroed table holds no entry).
        pub const fn tag(g: u64) -> u32 {
            ((g / CLAIM_TABLE + 1) & 0xff_ffff) as u32
        }

        /// The entry telling the holder of claim `g` it has tile `tile` of slot `slot`.
        pub const fn pack(g: u64, slot: u32, tile: u32) -> u64 {
            (tag(g) as u64) << 40 | ((slot & 0xffff) as u64) << 24 | (tile & 0xff_ffff) as u64
        }

        /// What entry `e` says the holder of claim `g` has: `(slot, tile)`, or `None` while the
        /// entry still serves an earlier lap. An entry of a later lap tells the same when it
        /// belongs to the same problem (a problem larger than the table laps it), which its tile
        /// index shows.
        pub const fn find(e: u64, g: u64) -> Option<(u32, u32)> {
            let (etag, slot, tile) = ((e >> 40) as u32, (e >> 24) as u32 & 0xffff, e as u32 & 0xff_ffff);
            let ahead = etag.wrapping_sub(tag(g)) & 0xff_ffff;
            if e == 0 || ahead >= 1 << 23 {
                return None;
            }
            let back = ahead as u64 * CLAIM_TABLE;
            if back > tile as u64 {
                return None;
            }
            Some((slot, tile - back as u32))
        }
    }

    /// The host's control words, at the start of the host block (written by the host only).
    #[repr(C, align(64))]
    #[derive(Clone, Copy, Debug)]
    #[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
    pub struct HostHeader {
        /// Reserved, zero (the device polls the slots' stamps, not a count).
        pub _unused: u64,
        /// Host heartbeat: changes at least every heartbeat period while the host side lives.
        pub heartbeat: u64,
        /// Non-zero: stop once everything published is done (release store after the last
        /// publish).
        pub stop: u64,
        /// Reserved, zero.
        pub _reserved: [u64; 5],
    }

    /// The resident kernel's control words, in device memory.
    #[repr(C, align(16))]
    #[derive(Clone, Copy, Debug)]
    #[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
    pub struct DeviceState {
        /// Next global tile index to claim (workers).
        pub claim: u64,
        /// Non-zero: the forwarder paces its first poll after a forward to the phase of its
        /// poll cycle that has been seeing the next problem soonest ([`pace::Pacer`]).
        pub pace: u32,
        /// Reserved, zero.
        pub _unused: u32,
        /// Tiles of the forwarded problems (`first_tile + tiles` of the last one), released
        /// after their claim-table entries: once the forwarder stopped, a claim at or past it
        /// will never be served (forwarder).
        pub tiles_published: u64,
        /// Nanoseconds without a heartbeat change after which the kernel stops by itself (0:
        /// never).
        pub heartbeat_timeout_ns: u64,
        /// Device address of `TRACE_PROBLEMS` × [`Trace`] (0: no trace).
        pub trace: u64,
        /// Non-zero: stop once no published problem needs this CTA (forwarder, after its last
        /// `tiles_published`).
        pub stop: u32,
        /// First error (a [`super::status`] code) (CTAs).
        pub status: u32,
        /// Slots in the ring.
        pub slots: u32,
        /// Polls a waiting worker makes back to back before it starts sleeping between them
        /// (nanosleep backoff); a worker that just finished a tile polls at once.
        pub worker_spin_polls: u32,
        /// The SM (`%smid`) whose CTA forwards, the host's choice (the SM with the shortest bus
        /// round trip: the forwarder polls once per round trip, and every publish waits for its
        /// next poll); `u32::MAX`: block 0 forwards. Only for a grid of one CTA per SM on every
        /// SM, where exactly one CTA runs on it.
        pub forwarder_sm: u32,
        /// Which CTA forwards, claimed once at the start (zero, then 1 by the CTA on
        /// `forwarder_sm`, or 2 by block 0 when none claimed it within `FORWARDER_CLAIM_NS`).
        pub forwarder_claim: u32,
    }

    /// Problems the trace keeps (problem `q` in entry `q % TRACE_PROBLEMS`).
    pub const TRACE_PROBLEMS: u32 = 1024;

    /// `%globaltimer` stamps (ns) of one problem's way through the resident kernel, for tuning
    /// dispatch latency. Written with plain stores; read by the host once the problem is done.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    #[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
    pub struct Trace {
        /// The forwarder saw its stamped image complete in host memory (problems it forwards at
        /// once share the stamp).
        pub seen: u64,
        /// The forwarder copied it into the device ring and is about to publish its tiles.
        pub forwarded: u64,
        /// The CTA running tile 0 found its problem (its image, or its claim-table entry).
        pub found: u64,
        /// That CTA staged its descriptor.
        pub staged: u64,
        /// That CTA finished tile 0.
        pub tile_done: u64,
        /// That CTA's count of the tile returned.
        pub counted: u64,
        /// The CTA finishing the last tile is about to write the completion word.
        pub completing: u64,
        /// ... and has written it.
        pub completed: u64,
        /// When the CTA finishing the last tile found its problem.
        pub last_found: u64,
        /// ... staged its descriptor.
        pub last_staged: u64,
        /// ... finished its tile.
        pub last_tile_done: u64,
        /// Tile 0's CTA: SM cycles (`%clock64`) from issuing the poll that found the problem to
        /// finding it.
        pub poll_cycles: u64,
        /// Tile 0's CTA: SM cycles from staged to tile done (with `tile_done - staged`, the SM
        /// clock).
        pub tile_cycles: u64,
        /// Tile 0's CTA: polls its `find` made for the claim.
        pub polls: u64,
        /// Reserved, zero.
        pub _reserved: [u64; 2],
    }

    /// Per CTA after the `TRACE_PROBLEMS` traces: stamps of its current tile ([`CtaStash`]),
    /// kept until it knows whether it finished its problem.
    pub const TRACE_CTAS: u32 = 1024;

    /// A CTA's stamps of its current tile, in the trace buffer after the problems' traces.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    #[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
    pub struct CtaStash {
        /// When it found its problem.
        pub found: u64,
        /// When it staged the descriptor.
        pub staged: u64,
        /// `%clock64` when it staged it.
        pub staged_clock: u64,
        /// Reserved, zero.
        pub _reserved: u64,
    }

    /// Bytes of the trace buffer: the problems' traces, then the CTAs' stashes.
    pub const TRACE_BYTES: usize = TRACE_PROBLEMS as usize * core::mem::size_of::<Trace>()
        + TRACE_CTAS as usize * core::mem::size_of::<CtaStash>();

    /// Bytes of the header at the start of the host block.
    pub const HOST_HEADER_BYTES: usize = core::mem::size_of::<HostHeader>();

    /// Problems of at most this many tiles complete by flags: each tile's CTA writes its own
    /// byte of the slot's flag line in host memory, and the host sees the problem done when every
    /// byte holds the problem's flag. No CTA waits on the slot's counter (one atomic round trip
    /// to L2 on a small problem's way to the host). Each flag is a bus write of its own into one
    /// line the host polls: measured on the H100 VM, 64 of them (a 512-row GEMV's 8-row tiles)
    /// reached the waiting host 3.5 µs later than one completion word, 16 (a 256³ GEMM's tiles)
    /// 0.35 µs sooner (`docs/results/h100-2026-11-25/tile-flags/`).
    pub const FLAG_TILES: u32 = 16;

    /// Bytes between two slots' flag lines: a cache line each, so the device's flag stores for
    /// one slot never touch the line the host polls for another.
    pub const FLAG_LINE: usize = 64;

    /// `RingSlot::done_target`'s mark of a problem that completes by flags (its low byte the
    /// flag, 1 or 2).
    pub const FLAGGED: u64 = 1 << 63;

    /// Bytes of the host block for `slots` slots: the header, the slot images, the completion
    /// words (the device writes `seq + 1` into word `q % slots` when problem `q` is done), then,
    /// from the next 64-byte boundary, one [`FLAG_LINE`] per slot, its first [`FLAG_TILES`] bytes
    /// the flags.
    pub const fn host_bytes(slots: u32) -> usize {
        flags_offset(slots, slots)
    }

    /// Byte offset of slot `i`'s image in the device ring (images as in the host block).
    pub const fn slot_offset(i: u32) -> usize {
        i as usize * HOST_SLOT_BYTES
    }

    /// Byte offset of slot `i`'s image in the host block.
    pub const fn host_slot_offset(i: u32) -> usize {
        HOST_HEADER_BYTES + i as usize * HOST_SLOT_BYTES
    }

    /// Byte offset of completion word `i` in the host block.
    pub const fn done_offset(slots: u32, i: u32) -> usize {
        host_slot_offset(slots) + i as usize * 8
    }

    /// Byte offset of slot `i`'s flag line in the host block (64-byte aligned).
    pub const fn flags_offset(slots: u32, i: u32) -> usize {
        done_offset(slots, slots).next_multiple_of(FLAG_LINE) + i as usize * FLAG_LINE
    }

    const _: () = {
        assert!(core::mem::size_of::<RingSlot>() == 160);
        assert!(core::mem::offset_of!(RingSlot, first_tile) == 8);
        assert!(core::mem::offset_of!(RingSlot, tiles) == 16);
        assert!(core::mem::offset_of!(RingSlot, done_target) == 24);
        assert!(core::mem::offset_of!(RingSlot, problem) == 32);
        assert!(IMAGE_WORDS <= HOST_SLOT_CHUNKS * 3 && IMAGE_WORDS > (HOST_SLOT_CHUNKS - 1) * 3);
        assert!(core::mem::size_of::<DeviceState>() == 64);
        assert!(core::mem::size_of::<Trace>() == 128);
        assert!(core::mem::size_of::<CtaStash>() == 32);
        assert!(core::mem::size_of::<HostHeader>() == 64);
        assert!(FLAG_TILES as usize <= FLAG_LINE && FLAG_LINE == 64);
    };

    /// The forwarder's pacing of its first poll after a forward (`persistent.rs`; `QUEUE.md`,
    /// step 4). Here, not in the kernel, so that host tests can run it: the kernel keeps the
    /// scores in shared memory, tests in an array.
    pub mod pace {
        /// Phases of its poll cycle at which the forwarder can start polling after a forward.
        pub const PACE_PHASES: u32 = 8;
        /// One forward in this many tries a neighbour of the best phase (alternating sides).
        pub const PACE_EXPLORE_EVERY: u32 = 32;
        /// A wait for the next problem longer than this many poll cycles is not a closed loop's
        /// (the host did something else meanwhile): it scores no phase.
        pub const PACE_LOOP_CYCLES: u64 = 16;

        /// Where a [`Pacer`] keeps its `PACE_PHASES` scores (median waits, SM cycles).
        pub trait PaceScores {
            /// Phase `phase`'s score (`u32::MAX`: not tried).
            fn get(&self, phase: u32) -> u32;
            /// Sets phase `phase`'s score.
            fn set(&mut self, phase: u32, v: u32);
        }

        impl PaceScores for [u32; PACE_PHASES as usize] {
            fn get(&self, phase: u32) -> u32 {
                self[phase as usize]
            }

            fn set(&mut self, phase: u32, v: u32) {
                self[phase as usize] = v;
            }
        }

        /// Where the forwarder's polls fall in time after a forward, learned (the forwarder's lane 0
        /// runs it; times are SM cycles).
        ///
        /// A client that submits its next request when the previous one's result arrives (one at a
        /// time: a closed loop) publishes at a nearly fixed time after the forward of the previous one.
        /// Back-to-back polls from the forward on read the host's memory at a fixed phase of that, so
        /// the publish waits for the next read: anything from nothing to a whole poll cycle, the same
        /// every time, decided by how the host's and the device's times fall (the closed loop's
        /// latency settles on a whole number of cycles). Delaying the first poll after a forward by
        /// `phase / PACE_PHASES` of a poll cycle moves every later read by as much; the pacer scores each
        /// phase by how long the next problem took to be seen after the forward (a running median, SM
        /// cycles), uses the best, and tries a neighbour every `PACE_EXPLORE_EVERY` forwards to follow
        /// drift: a hill climb along the wait's sawtooth, which rises with the delay until a read moves
        /// past the publish and drops by a cycle. Requests that arrive independently of the results see
        /// every phase alike: their waits stray far from the scores (or are too long to score), and
        /// then the pacer does not delay.
        pub struct Pacer<S> {
            /// Per phase, the median wait (`u32::MAX`: not tried).
            scores: S,
            /// The poll cycle, SM cycles (moving average of busy polls' spacing).
            cycle: u64,
            /// When the last busy poll returned (0: the previous poll was not a busy one).
            last_poll: u64,
            /// When the last forward ended and the phase its wait used, until scored (anchor 0: none).
            anchor: u64,
            phase: u32,
            best: u32,
            forwards: u32,
            /// How far waits stray from their phase's score (a running median, SM cycles): small in a
            /// closed loop, about the spread of the arrivals otherwise.
            spread: u64,
        }

        impl<S: PaceScores> Pacer<S> {
            /// A pacer that has tried no phase yet (its scores reset).
            #[inline(always)]
            pub fn new(mut scores: S) -> Pacer<S> {
                for j in 0..PACE_PHASES {
                    scores.set(j, u32::MAX);
                }
                Pacer { scores, cycle: 2400, last_poll: 0, anchor: 0, phase: 0, best: 0, forwards: 0, spread: 0 }
            }

            /// A busy poll found nothing at `now`: one more sample of the cycle.
            #[inline(always)]
            pub fn empty_poll(&mut self, now: u64) {
                if self.last_poll != 0 {
                    let rt = now.wrapping_sub(self.last_poll).min(4 * self.cycle);
                    self.cycle = self.cycle - self.cycle / 16 + rt / 16;
                }
                self.last_poll = now;
            }

            /// A forward ended: the phase its wait uses (the best, or now and then a neighbour),
            /// and the SM cycles to wait before the next poll. The previous forward's phase is
            /// scored with `seen`, when its problem was seen (after this poll is out).
            #[inline(always)]
            pub fn next_wait(&mut self) -> (u64, u32) {
                self.forwards = self.forwards.wrapping_add(1);
                let mut phase = self.best;
                if self.forwards.is_multiple_of(PACE_EXPLORE_EVERY) {
                    let side = if (self.forwards / PACE_EXPLORE_EVERY).is_multiple_of(2) { 1 } else { PACE_PHASES - 1 };
                    phase = (phase + side) % PACE_PHASES;
                }
                (phase as u64 * self.cycle / PACE_PHASES as u64, phase)
            }

            /// Scores the pending phase by its wait (the forward before the one at `now` ended at
            /// `anchor`; the problem that ended the wait was seen at `seen`), then makes `phase`, from
            /// the forward that ended at `now`, the pending one.
            #[inline(always)]
            pub fn seen(&mut self, seen: u64, now: u64, phase: u32) {
                self.last_poll = 0;
                let (anchor, scored) = (self.anchor, self.phase);
                (self.anchor, self.phase) = (now.max(1), phase);
                let wait = seen.wrapping_sub(anchor);
                if anchor == 0 || wait > PACE_LOOP_CYCLES * self.cycle {
                    return;
                }
                let s = self.scores.get(scored);
                // Running medians (each sample moves them a step towards itself): the host's hiccups,
                // long waits now and then, would drag a mean.
                let step = self.cycle as u32 / 32;
                let toward = |m: u32, x: u32| if x > m { m + step } else { m.saturating_sub(step) };
                let s = if s == u32::MAX {
                    wait as u32
                } else {
                    self.spread = toward(self.spread as u32, (wait as u32).abs_diff(s)) as u64;
                    toward(s, wait as u32)
                };
                self.scores.set(scored, s);
                let (mut best, mut min) = (0, u32::MAX);
                for j in 0..PACE_PHASES {
                    let s = self.scores.get(j);
                    if s < min {
                        (best, min) = (j, s);
                    }
                }
                // No delay unless the waits are a closed loop's (they keep within a cycle of their
                // phase's score, on average): waits that do not depend on the phase (requests
                // independent of the results) score every phase alike, up to noise.
                if self.spread > self.cycle {
                    best = 0;
                }
                self.best = best;
            }

            /// The phase the next forward's wait uses, but for exploration (for tests).
            pub fn best(&self) -> u32 {
                self.best
            }
        }
    }
}

/// The transport probe's `how` word (`tilemux_echo`): bits 0..4, polling warps (1..=8).
/// The per-SM round-trip probe's record (`tilemux_sm_rtt`), one per CTA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(target_arch = "nvptx64"), derive(Pod, Zeroable))]
pub struct SmRtt {
    /// `%smid` of the CTA.
    pub sm: u32,
    pub _pad: u32,
    /// Nanoseconds for the chain of dependent loads from host-mapped memory.
    pub host_ns: u64,
    /// Nanoseconds for the chain of dependent loads from device memory (L2).
    pub device_ns: u64,
    /// The chains' last values (kept so no load is optimised away).
    pub sink: u64,
}

pub mod echo {
    /// The payload is polled itself: each 16-byte chunk carries its stamp in its first word.
    pub const INLINE: u32 = 1 << 8;
    /// Shift of the reply mode: 0, two `st.release.sys`; 1, relaxed stores around one
    /// `fence.acq_rel.sys`; 2, around `fence.acq_rel.gpu`; 3, no fence.
    pub const REPLY_SHIFT: u32 = 12;
    /// An inline payload in two copies 256 bytes apart: warp `w` polls copy `w % 2` (two polls
    /// in flight without reading the same lines).
    pub const COPIES: u32 = 1 << 9;
}
