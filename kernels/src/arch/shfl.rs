//! Warp shuffles.

use core::arch::asm;

/// `shfl.sync.bfly.b32` over the full warp: the value of lane `lane ^ mask`.
#[inline(always)]
pub fn shfl_xor(v: f32, mask: u32) -> f32 {
    let r: f32;
    // SAFETY: all 32 lanes execute this together (the callers are warp-uniform). Not `pure`: the
    // compiler must not move a synchronizing shuffle into divergent code.
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 31, -1;", out(reg32) r, in(reg32) v, in(reg32) mask,
            options(nomem, nostack))
    };
    r
}

/// Sum over the 32 lanes of a warp, returned to every lane.
#[inline(always)]
pub fn warp_sum(mut v: f32) -> f32 {
    v += shfl_xor(v, 16);
    v += shfl_xor(v, 8);
    v += shfl_xor(v, 4);
    v += shfl_xor(v, 2);
    v += shfl_xor(v, 1);
    v
}
