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

/// `vote.sync.all.pred` over the full warp: whether `p` holds in every lane.
#[inline(always)]
pub fn vote_all(p: bool) -> bool {
    let r: u32;
    // SAFETY: all 32 lanes execute this together (callers are warp-uniform); not `pure`, as
    // `shfl_xor`.
    unsafe {
        asm!("{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.all.pred q, p, -1; selp.u32 {0}, 1, 0, q; }}",
            out(reg32) r, in(reg32) p as u32, options(nomem, nostack))
    };
    r != 0
}

/// `shfl.sync.idx.b32` over the full warp: lane `src`'s value.
#[inline(always)]
pub fn shfl_idx(v: u32, src: u32) -> u32 {
    let r: u32;
    // SAFETY: as `vote_all`.
    unsafe {
        asm!("shfl.sync.idx.b32 {0}, {1}, {2}, 31, -1;", out(reg32) r, in(reg32) v, in(reg32) src,
            options(nomem, nostack))
    };
    r
}
