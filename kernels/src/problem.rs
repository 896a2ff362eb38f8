//! The current tile's problem descriptor, staged in shared memory by the megakernel.
//!
//! Tile routines read fields where they use them (`ld.shared`, a few cycles) instead of holding
//! all 24 words in registers across their main loops: registers go to accumulators.

use core::mem::offset_of;

use crate::abi::ProblemDesc;
use crate::arch::{ld_shared_f32, ld_shared_u32, ld_shared_u64};

/// Shared-memory address of a staged [`ProblemDesc`].
#[derive(Clone, Copy)]
pub struct Problem(pub u32);

macro_rules! fields {
    ($($name:ident: $t:ty => $load:ident),* $(,)?) => {
        impl Problem {
            $(
                #[doc = concat!("`ProblemDesc::", stringify!($name), "`.")]
                #[inline(always)]
                pub fn $name(self) -> $t {
                    // SAFETY: the megakernel staged a whole descriptor at `self.0` (16-aligned)
                    // before calling any tile routine; the offset is the field's.
                    unsafe { $load(self.0 + offset_of!(ProblemDesc, $name) as u32) }
                }
            )*
        }
    };
}

fields! {
    a: u64 => ld_shared_u64,
    b: u64 => ld_shared_u64,
    c: u64 => ld_shared_u64,
    bias: u64 => ld_shared_u64,
    m: u32 => ld_shared_u32,
    n: u32 => ld_shared_u32,
    k: u32 => ld_shared_u32,
    lda: u32 => ld_shared_u32,
    ldb: u32 => ld_shared_u32,
    ldc: u32 => ld_shared_u32,
    alpha: f32 => ld_shared_f32,
    beta: f32 => ld_shared_f32,
    flags: u32 => ld_shared_u32,
    activation: u32 => ld_shared_u32,
    bias_mode: u32 => ld_shared_u32,
    tile_kind: u32 => ld_shared_u32,
    tiles_m: u32 => ld_shared_u32,
    tiles_n: u32 => ld_shared_u32,
    completion: u32 => ld_shared_u32,
    workspace: u64 => ld_shared_u64,
    counters: u64 => ld_shared_u64,
    k_splits: u32 => ld_shared_u32,
    k_parts: u32 => ld_shared_u32,
}
