//! The library's one error type.

use std::time::Duration;

/// Why a descriptor of a round cannot run. Found by [`crate::round::check`] before any backend
/// touches memory.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DescriptorError {
    #[error("problem {problem}: dimension {dim} is zero")]
    ZeroDim { problem: usize, dim: char },
    #[error("problem {problem}: dimension {dim} = {value} exceeds the limit {limit}")]
    DimTooLarge { problem: usize, dim: char, value: u32, limit: u32 },
    #[error("problem {problem}: leading dimension of {matrix} is {ld}, below its row length {row_len}")]
    LeadingDim { problem: usize, matrix: char, ld: u32, row_len: u32 },
    #[error(
        "problem {problem}: {matrix} spans {start:#x}..{end:#x}, outside device memory {pool_start:#x}..{pool_end:#x}"
    )]
    OutOfBounds { problem: usize, matrix: char, start: u64, end: u64, pool_start: u64, pool_end: u64 },
    #[error("problem {problem}: address of {matrix} ({addr:#x}) is not 4-byte aligned")]
    Misaligned { problem: usize, matrix: char, addr: u64 },
    #[error("problem {problem}: unknown flag bits {flags:#x}")]
    BadFlags { problem: usize, flags: u32 },
    #[error("problem {problem}: unknown tile kind {code}")]
    BadTileKind { problem: usize, code: u32 },
    #[error("problem {problem}: tile kind {kind} cannot run an m×n×k = {m}×{n}×{k} problem with these transposes")]
    UnsupportedTileKind { problem: usize, kind: &'static str, m: u32, n: u32, k: u32 },
    #[error("problem {problem}: k_splits = {k_splits} is outside 1..={max}")]
    KSplits { problem: usize, k_splits: u32, max: u32 },
    #[error("problem {problem}: unknown activation {activation} or bias mode {bias_mode}")]
    BadEpilogue { problem: usize, activation: u32, bias_mode: u32 },
    #[error("problem {problem}: alpha or beta is not finite")]
    NonFiniteScalar { problem: usize },
    #[error(
        "problem {problem}: tile grid {tiles_m}×{tiles_n} does not match its shape and tile kind (expected {expect_m}×{expect_n})"
    )]
    TileGrid { problem: usize, tiles_m: u32, tiles_n: u32, expect_m: u32, expect_n: u32 },
    #[error("problem {problem}: completion slot {slot} is past the round's {slots} slots")]
    CompletionSlot { problem: usize, slot: u32, slots: usize },
    #[error("problem {problem}: C overlaps {other_matrix} of problem {other}")]
    Overlap { problem: usize, other: usize, other_matrix: char },
    #[error("tile {tile}: problem index {problem} is past the round's {problems} problems")]
    TileProblem { tile: usize, problem: u32, problems: usize },
    #[error(
        "tile {tile}: coordinates ({tile_m}, {tile_n}) are outside the {tiles_m}×{tiles_n} grid of problem {problem}"
    )]
    TileCoord { tile: usize, problem: u32, tile_m: u32, tile_n: u32, tiles_m: u32, tiles_n: u32 },
    #[error(
        "tile {tile}: grains {first}..={last} as part {index} of {count} do not fit problem {problem} ({k_splits} grains of k, at most {k_parts} parts per output tile)"
    )]
    TilePart { tile: usize, problem: u32, first: u32, last: u32, index: u32, count: u32, k_splits: u32, k_parts: u32 },
    #[error("the round's {units} unit offsets do not run from 0 up to its {tiles} tiles in increasing steps")]
    Units { units: usize, tiles: usize },
    #[error("problem {problem}, output tile ({tile_m}, {tile_n}): {what}")]
    KCover { problem: usize, tile_m: u32, tile_n: u32, what: &'static str },
    #[error("problem {problem}: k_parts = {k_parts} is outside 0..={max}")]
    KParts { problem: usize, k_parts: u32, max: u32 },
    #[error("tile {tile}: ({tile_m}, {tile_n}) of problem {problem} appears twice")]
    DuplicateTile { tile: usize, problem: u32, tile_m: u32, tile_n: u32 },
    #[error("problem {problem}: the round holds {present} of its tiles, expected each of its {expected} tiles once")]
    MissingTiles { problem: usize, present: u32, expected: u32 },
}

/// Every error tilemux returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- devices
    #[error("no CUDA driver could be loaded (libcuda): {0}")]
    NoCudaDriver(String),
    #[error("no CUDA device is present")]
    NoCudaDevice,
    #[error("CUDA driver call {call} failed: {source}")]
    Cuda { call: &'static str, source: cudarc::driver::DriverError },
    #[error("cuBLAS call {call} failed: {source}")]
    Cublas { call: &'static str, source: cudarc::cublas::result::CublasError },
    #[error("loading the embedded PTX failed: {source}\nJIT log:\n{log}")]
    ModuleLoad { source: cudarc::driver::DriverError, log: String },
    #[error("the megakernel reported status {code} ({meaning})")]
    DeviceStatus { code: u32, meaning: &'static str },
    #[error("problem {problem} finished {ran} tiles, expected {expected} (each tile must run exactly once)")]
    TileCount { problem: usize, ran: u32, expected: u32 },
    #[error("invalid round descriptor: {0}")]
    Descriptor(#[from] DescriptorError),
    #[error("device memory access {addr:#x}+{bytes} is outside the device pool")]
    PoolAccess { addr: u64, bytes: usize },
    #[error("the device pool of {requested} bytes cannot be allocated: {reason}")]
    PoolAlloc { requested: usize, reason: String },

    // --- memory
    #[error("tenant {tenant}: allocating {requested} bytes exceeds its quota ({available} of {quota} bytes free)")]
    QuotaExceeded { tenant: String, requested: u64, available: u64, quota: u64 },
    #[error("runtime memory budget exhausted: {requested} bytes requested, {available} bytes free in one piece")]
    OutOfDeviceMemory { requested: u64, available: u64 },
    #[error("buffer of {len} elements cannot hold {needed} elements")]
    BufferTooSmall { len: usize, needed: usize },

    // --- validation of user work
    #[error("op {op}: {matrix} belongs to tenant {owner}, not to the submitting tenant {tenant}")]
    ForeignBuffer { op: usize, matrix: char, owner: String, tenant: String },
    #[error("op {op}: {matrix} needs {needed} elements from offset {offset} but its buffer holds {len}")]
    MatrixOutOfBuffer { op: usize, matrix: char, offset: usize, needed: u64, len: usize },
    #[error("op {op}: leading dimension of {matrix} is {ld}, below its row length {row_len}")]
    BadLeadingDim { op: usize, matrix: char, ld: usize, row_len: usize },
    #[error("op {op}: dimensions must be in 1..={limit}, got m={m} n={n} k={k}")]
    BadDims { op: usize, m: usize, n: usize, k: usize, limit: u32 },
    #[error("op {op}: shapes do not fit: op(A) is {a:?}, op(B) is {b:?}, C is {c:?}")]
    ShapeMismatch { op: usize, a: (usize, usize), b: (usize, usize), c: (usize, usize) },
    #[error("op {op}: C cannot be transposed (it is written row-major)")]
    TransposedOutput { op: usize },

    #[error("op {op}: bias has {len} elements, expected {expected}")]
    BadBias { op: usize, len: usize, expected: usize },
    #[error("op {op}: the output C overlaps input {matrix}")]
    OutputOverlapsInput { op: usize, matrix: char },
    #[error("op {op}: alpha and beta must be finite, got alpha={alpha} beta={beta}")]
    NonFiniteScalar { op: usize, alpha: f32, beta: f32 },
    #[error("op {op}: tile kind {kind} cannot run this op")]
    TileKindUnsupported { op: usize, kind: &'static str },
    #[error("a request must hold at least one op")]
    EmptyRequest,
    #[error("ops {first} and {second} of one request write the same buffer or read what the other writes")]
    ConflictingOps { first: usize, second: usize },

    // --- runtime state
    #[error("tenant {0} does not exist (removed?)")]
    NoSuchTenant(String),
    #[error("tenant {0} belongs to another runtime")]
    ForeignTenant(String),
    #[error("a tenant named {0} already exists")]
    DuplicateTenant(String),
    #[error("tenant {tenant}: {pending} requests pending, the limit is {limit}")]
    QueueFull { tenant: String, pending: usize, limit: usize },
    #[error("the runtime is shut down")]
    Closed,
    #[error("tenant {0} was removed before its work ran")]
    TenantRemoved(String),
    #[error("persistent mode: {outstanding} problems in flight and {requested} more do not fit the ring of {slots}")]
    RingFull { outstanding: u64, requested: u64, slots: u32 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the round holding this request failed: {0}")]
    RoundFailed(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
