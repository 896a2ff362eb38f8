//! CTA barriers.

use core::arch::asm;

/// `barrier.sync 0`: every thread of the CTA arrives before any continues; orders shared and
/// global memory accesses among the CTA's threads.
///
/// Deliberately not `bar.sync` (= `barrier.sync.aligned`): the aligned form requires every thread
/// to execute the same barrier *instruction*, and LLVM may tail-duplicate a barrier into both arms
/// of a thread-dependent branch (seen: `if tid == 0 { claim } ; sync` became two barriers, and the
/// megakernel hung). The non-aligned form only needs every thread to arrive, which any
/// transformation that keeps each thread's number of barriers preserves.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: every tile routine calls this the same number of times in every thread of the CTA.
    unsafe { asm!("barrier.sync 0;", options(nostack)) }
}

/// `bar.warp.sync -1`: the warp's lanes reconverge; orders memory accesses among them.
#[inline(always)]
pub fn sync_warp() {
    // SAFETY: every lane of the warp executes it (callers are warp-uniform).
    unsafe { asm!("bar.warp.sync -1;", options(nostack)) }
}
