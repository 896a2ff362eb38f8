//! The transport probe: how long a doorbell takes to reach a thread polling on the GPU and its
//! reply to reach the host, with nothing else in the way. Not used by the runtime; `tilemux bench
//! dispatch` reports it as the floor under any persistent-mode ring on the machine at hand.

use crate::arch::{globaltimer, ld_acquire_sys_u64, ld_volatile_v4_u32, shfl_xor, st_release_sys_u64, thread_idx_x};

/// One warp. For `i = 1..=n`: waits (spinning, no sleep) until the u64 at `doorbell` (host-mapped
/// or device memory) is at least `i`; lanes below `chunks` (≤ 32) load 16 bytes each of
/// `payload` (host-mapped or device memory, 16-byte aligned), as a forwarder would load a ring
/// slot; then lane 0, once every lane's load has arrived (the shuffle needs them), stores their
/// xor to `reply + 8` and `i` to `reply` (host-mapped) with `st.release.sys`. Returns early when
/// one doorbell takes longer than `timeout_ns`.
///
/// # Safety
/// `doorbell`, `reply` (16 bytes) and `payload` (`16 × chunks` bytes) are valid, aligned global
/// or host-mapped addresses.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_echo(
    doorbell: u64,
    reply: u64,
    payload: u64,
    chunks: u32,
    n: u64,
    timeout_ns: u64,
) {
    let lane = thread_idx_x();
    if lane >= 32 {
        return;
    }
    let mut i = 1u64;
    while i <= n {
        let start = globaltimer();
        // SAFETY (loads and stores below): the caller's addresses.
        while unsafe { ld_acquire_sys_u64(doorbell) } < i {
            if globaltimer().wrapping_sub(start) > timeout_ns {
                return;
            }
        }
        let mut x = 0u32;
        if lane < chunks {
            let w = unsafe { ld_volatile_v4_u32(payload + lane as u64 * 16) };
            x = w[0] ^ w[1] ^ w[2] ^ w[3];
        }
        let mut m = 16;
        while m > 0 {
            x ^= shfl_xor(f32::from_bits(x), m).to_bits();
            m /= 2;
        }
        if lane == 0 {
            unsafe {
                st_release_sys_u64(reply + 8, x as u64);
                st_release_sys_u64(reply, i);
            }
        }
        i += 1;
    }
}
