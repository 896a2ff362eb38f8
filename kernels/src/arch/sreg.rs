//! Special registers: thread and block indices.

/// `%tid.x`.
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`.
#[inline(always)]
pub fn block_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_block_idx_x() as u32 }
}

/// `%nctaid.x`.
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_grid_dim_x() as u32 }
}

/// `%smid`: the SM the thread runs on (for probes; it may change across preemptions).
#[inline(always)]
pub fn sm_id() -> u32 {
    let v: u32;
    // SAFETY: reading a special register.
    unsafe { core::arch::asm!("mov.u32 {0}, %smid;", out(reg32) v, options(nostack, nomem)) };
    v
}

/// `%clock64`: the SM's cycle counter (for the trace: cheap to read, unlike `%globaltimer`).
#[inline(always)]
pub fn clock64() -> u64 {
    let v: u64;
    // SAFETY: reading a special register.
    unsafe { core::arch::asm!("mov.u64 {0}, %clock64;", out(reg64) v, options(nostack, nomem)) };
    v
}
