//! CTA barriers.

/// `bar.sync 0`: every thread of the CTA arrives before any continues; orders shared and global
/// memory accesses among the CTA's threads.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: every tile routine calls this from uniform control flow (all 256 threads).
    unsafe { core::arch::nvptx::_syncthreads() }
}
