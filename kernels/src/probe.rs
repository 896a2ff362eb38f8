//! The transport probe: how long a doorbell takes to reach a warp polling on the GPU and its
//! reply to reach the host, with nothing else in the way. Not used by the runtime; `tilemux bench
//! dispatch` reports it as the floor under any persistent-mode ring on the machine at hand, for
//! each way a ring could be polled and answered.

use crate::abi::echo::{COPIES, INLINE, REPLY_SHIFT};
use crate::arch::{
    atom_cas_shared_u32, fence_acq_rel_gpu, fence_acq_rel_sys, globaltimer, ld_acquire_sys_u64, ld_volatile_shared_u32,
    ld_volatile_v4_u32, nanosleep, shfl_idx, shfl_xor, smem_base, st_relaxed_sys_u64, st_release_sys_u64,
    st_shared_u32, sync_threads, thread_idx_x, vote_all,
};

/// Writes the reply: the payload's xor at `at + 8`, then `i` at `at`. Modes: 0, both with
/// `st.release.sys`; 1, one `fence.acq_rel.sys` between relaxed stores; 2, `fence.acq_rel.gpu`
/// instead; 3, no fence.
///
/// # Safety
/// `at` is a valid 16-byte host-mapped (or global) address.
unsafe fn reply(mode: u32, at: u64, x: u64, i: u64) {
    // SAFETY: the caller's address.
    unsafe {
        match mode {
            0 => {
                st_release_sys_u64(at + 8, x);
                st_release_sys_u64(at, i);
            }
            1 | 2 => {
                st_relaxed_sys_u64(at + 8, x);
                if mode == 1 {
                    fence_acq_rel_sys()
                } else {
                    fence_acq_rel_gpu()
                }
                st_relaxed_sys_u64(at, i);
            }
            _ => {
                st_relaxed_sys_u64(at + 8, x);
                st_relaxed_sys_u64(at, i);
            }
        }
    }
}

/// `32 × pollers` threads (`how`: `abi::echo`), 16 bytes of dynamic shared memory. For `i = 1..=n`: the
/// polling warps, started a fraction of a bus round trip apart, each poll until echo `i` is
/// rung: the u64 at `doorbell` (host-mapped or device memory) is at least `i`, after which lanes
/// below `chunks` (≤ 32) load 16 bytes each of `payload`; or, inline, those lanes load their
/// chunk of `payload` directly and every chunk's stamp is at least `i`. The first warp to see it
/// claims `i` (a shared-memory compare-and-swap) and its lane 0 replies to `reply` (host-mapped,
/// 16 bytes). Returns early when one echo takes longer than `timeout_ns`.
///
/// # Safety
/// `doorbell`, `reply` and `payload` (`16 × chunks` bytes) are valid, aligned global or
/// host-mapped addresses.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_echo(
    doorbell: u64,
    reply_at: u64,
    payload: u64,
    chunks: u32,
    n: u64,
    timeout_ns: u64,
    how: u32,
) {
    let tid = thread_idx_x();
    let (warp, lane) = (tid / 32, tid % 32);
    let pollers = (how & 15).clamp(1, 8);
    let inline = how & INLINE != 0;
    let copy = if how & COPIES != 0 { (warp % 2) as u64 * 256 } else { 0 };
    let mode = (how >> REPLY_SHIFT) & 3;
    let next = smem_base();
    if tid == 0 {
        // SAFETY: the launch's 16 bytes of shared memory.
        unsafe { st_shared_u32(next, 1) };
    }
    sync_threads();
    if warp >= pollers {
        return;
    }
    // Spread the warps' polls over one bus round trip (about 1.5 µs).
    nanosleep(warp * (1500 / pollers));
    let (mut last, mut since) = (0u64, globaltimer());
    loop {
        // SAFETY (loads and stores below): shared memory of the launch and the caller's addresses.
        let i = unsafe { ld_volatile_shared_u32(next) } as u64;
        if i > n {
            return;
        }
        if i != last {
            (last, since) = (i, globaltimer());
        }
        let mut x = 0u32;
        let ready = if inline {
            let mut ok = true;
            if lane < chunks {
                let w = unsafe { ld_volatile_v4_u32(payload + copy + lane as u64 * 16) };
                ok = w[0] >= i as u32;
                x = w[1] ^ w[2] ^ w[3];
            }
            vote_all(ok)
        } else {
            let rung = if lane == 0 { (unsafe { ld_acquire_sys_u64(doorbell) } >= i) as u32 } else { 0 };
            let rung = shfl_idx(rung, 0) != 0;
            if rung && lane < chunks {
                let w = unsafe { ld_volatile_v4_u32(payload + lane as u64 * 16) };
                x = w[0] ^ w[1] ^ w[2] ^ w[3];
            }
            rung
        };
        if !ready {
            if globaltimer().wrapping_sub(since) > timeout_ns {
                return;
            }
            continue;
        }
        let mut m = 16;
        while m > 0 {
            x ^= shfl_xor(f32::from_bits(x), m).to_bits();
            m /= 2;
        }
        if lane == 0 && unsafe { atom_cas_shared_u32(next, i as u32, i as u32 + 1) } == i as u32 {
            unsafe { reply(mode, reply_at, x as u64, i) };
        }
    }
}

/// Per-SM round trips: CTA `b` (one per SM: launch with more than half an SM's shared memory)
/// waits for its turn (`turn`, a device word, equal to `b`), then its thread 0 times a chain of
/// `n` dependent loads from `host` (host-mapped) and another from `device` (device memory),
/// each load's address depending on the previous value (`mask` is zero), records them with its
/// `%smid` in `out[b]` (an `abi::SmRtt`) and passes the turn on. One CTA at a time: no chain
/// shares the bus or the L2 slice with another.
///
/// # Safety
/// `host` and `device` point at 8 readable bytes, `turn` at a zeroed device word, `out` at one
/// `SmRtt` per CTA.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_sm_rtt(host: u64, device: u64, turn: u64, out: u64, n: u32, mask: u64) {
    use crate::abi::SmRtt;
    use crate::arch::{
        block_idx_x, ld_acquire_gpu_u32, ld_volatile_u64, sm_id, st_relaxed_gpu_u64, st_release_gpu_u32,
    };
    use core::mem::offset_of;
    if thread_idx_x() != 0 {
        return;
    }
    let b = block_idx_x();
    // SAFETY (loads and stores below): the caller's addresses.
    while unsafe { ld_acquire_gpu_u32(turn) } != b {}
    let chain = |base: u64| {
        let mut v = 0u64;
        let t = globaltimer();
        for _ in 0..n {
            v = unsafe { ld_volatile_u64(base + (v & mask)) };
        }
        // The store waits for the last load's value; the clock is read after it issues.
        unsafe { st_relaxed_gpu_u64(out + (b as usize * size_of::<SmRtt>() + offset_of!(SmRtt, sink)) as u64, v) };
        globaltimer().wrapping_sub(t)
    };
    let host_ns = chain(host);
    let device_ns = chain(device);
    let at = out + (b as usize * size_of::<SmRtt>()) as u64;
    unsafe {
        st_relaxed_gpu_u64(at + offset_of!(SmRtt, sm) as u64, sm_id() as u64);
        st_relaxed_gpu_u64(at + offset_of!(SmRtt, host_ns) as u64, host_ns);
        st_relaxed_gpu_u64(at + offset_of!(SmRtt, device_ns) as u64, device_ns);
        st_release_gpu_u32(turn, b + 1);
    }
}
