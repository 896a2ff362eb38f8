//! The resident megakernel of persistent mode: launched once (cooperatively, so every CTA is
//! resident), it drains the ring until told to stop. Protocol and memory ordering: `QUEUE.md`,
//! "Persistent mode".
//!
//! Each CTA's thread 0 claims the next global tile index and waits, polling device memory with
//! nanosleep backoff (at most 1 µs between polls), until a published problem covers it; the CTA
//! stages that problem's descriptor from the device ring into shared memory, runs the tile, and
//! counts it. The CTA finishing a problem's last tile marks the slot done in device memory and
//! writes the problem's completion word to host memory. The kernel reads no host memory.

use core::mem::offset_of;

use crate::abi::ring::{DeviceState, RingSlot, slot_offset};
use crate::abi::{SMEM_DESC_OFFSET, SMEM_HEADER_BYTES, TileDesc};
use crate::arch::{
    atom_add_acq_rel_gpu_u32, atom_add_relaxed_gpu_u64, fence_acq_rel_gpu, globaltimer, ld_acquire_gpu_u64,
    ld_shared_u32, ld_volatile_u32, ld_volatile_u64, ld_volatile_v4_u32, nanosleep, smem_base, st_relaxed_gpu_u32,
    st_release_gpu_u64, st_release_sys_u64, st_shared_u32, st_shared_v4_u32, sync_threads, thread_idx_x,
};
use crate::megakernel::run_tile;
use crate::problem::Problem;

/// Longest nanosleep between polls: bounds the wake-up latency of an idle kernel.
const MAX_BACKOFF_NS: u32 = 1024;

/// The resident kernel's buffers.
#[derive(Clone, Copy)]
struct Ring {
    /// `DeviceState` (device memory).
    state: u64,
    /// Device ring of `slots` × `RingSlot`.
    slots_addr: u64,
    /// Per slot: `seq + 1` of its last finished problem (device memory).
    dev_done: u64,
    /// Per slot: tiles finished of its current problem (device memory).
    done_ctr: u64,
    /// Per slot: completion words (host-mapped memory).
    host_done: u64,
    slots: u32,
}

impl Ring {
    fn state(&self, field: usize) -> u64 {
        self.state + field as u64
    }

    fn slot(&self, i: u32, field: usize) -> u64 {
        self.slots_addr + (slot_offset(i) + field) as u64
    }
}

/// Thread 0 of a CTA: claims the next global tile and finds the published problem holding it,
/// advancing `cursor` past finished problems. Returns `(seq, slot, tile index)`, or `None` when
/// the kernel stops (host stop, or no heartbeat for the timeout) before any problem covers the
/// claim.
///
/// # Safety
/// As [`tilemux_persistent`].
unsafe fn find_work(r: &Ring, cursor: &mut u64, beat: &mut (u64, u64)) -> Option<(u64, u32, u32)> {
    // SAFETY (all loads and atomics below): addresses inside the device state, the device ring
    // and the done words, sized for `r.slots`.
    let g = unsafe { atom_add_relaxed_gpu_u64(r.state(offset_of!(DeviceState, claim)), 1) };
    let mut ns = 32u32;
    loop {
        let q = *cursor;
        if unsafe { ld_acquire_gpu_u64(r.state(offset_of!(DeviceState, published))) } <= q {
            // Nothing covers the claim yet: stop, or wait.
            let now = globaltimer();
            let b = unsafe { ld_volatile_u64(r.state(offset_of!(DeviceState, heartbeat))) };
            if b != beat.0 {
                *beat = (b, now);
            }
            let timeout = unsafe { ld_volatile_u64(r.state(offset_of!(DeviceState, heartbeat_timeout_ns))) };
            let orphaned = timeout != 0 && now.wrapping_sub(beat.1) > timeout;
            if (orphaned || unsafe { ld_volatile_u32(r.state(offset_of!(DeviceState, stop))) } != 0)
                && unsafe { ld_acquire_gpu_u64(r.state(offset_of!(DeviceState, published))) } <= q
            {
                return None;
            }
            nanosleep(ns);
            ns = (ns * 2).min(MAX_BACKOFF_NS);
            continue;
        }
        let slot = q.checked_rem(r.slots as u64).unwrap_or(0) as u32;
        let done = r.dev_done + slot as u64 * 8;
        if unsafe { ld_acquire_gpu_u64(done) } > q {
            *cursor += 1; // q finished, so the claim lies past it
            continue;
        }
        let seq = unsafe { ld_volatile_u64(r.slot(slot, offset_of!(RingSlot, seq))) };
        let first = unsafe { ld_volatile_u64(r.slot(slot, offset_of!(RingSlot, first_tile))) };
        let tiles = unsafe { ld_volatile_u32(r.slot(slot, offset_of!(RingSlot, tiles))) } as u64;
        // If q finished while we read, the host may be rewriting the slot: discard the read.
        fence_acq_rel_gpu();
        if unsafe { ld_acquire_gpu_u64(done) } > q || seq != q {
            *cursor += 1;
            continue;
        }
        if g < first + tiles {
            return Some((q, slot, (g - first) as u32));
        }
        *cursor += 1;
    }
}

/// Persistent-mode entry point. Launch cooperatively with `BLOCK_THREADS` threads, a grid of
/// at most the co-resident CTAs and `TileKind::megakernel_smem_bytes()` of dynamic shared
/// memory. `state` is a [`DeviceState`] (with `slots` and `heartbeat_timeout_ns` set, the rest
/// zero), `slots_addr` the device ring, `dev_done` and `done_ctr` zeroed per-slot words (u64,
/// u32), `host_done` the host-mapped completion words.
///
/// # Safety
/// The buffers are as described; the host follows the protocol in `QUEUE.md`, publishing only
/// validated problems.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_persistent(
    state: u64,
    slots_addr: u64,
    dev_done: u64,
    done_ctr: u64,
    host_done: u64,
) {
    let tid = thread_idx_x();
    let header = smem_base();
    let desc = Problem(header + SMEM_DESC_OFFSET);
    let smem = header + SMEM_HEADER_BYTES;
    // SAFETY: the device state.
    let slots = unsafe { ld_volatile_u32(state + offset_of!(DeviceState, slots) as u64) };
    let r = Ring { state, slots_addr, dev_done, done_ctr, host_done, slots };
    let status = state + offset_of!(DeviceState, status) as u64;
    // Thread 0's: the oldest problem its claims may still fall in; the problem it runs; the
    // heartbeat it last saw and when.
    let (mut cursor, mut seq, mut beat) = (0u64, 0u64, (0u64, globaltimer()));
    loop {
        if tid == 0 {
            // SAFETY: this kernel's contract.
            let (verdict, slot, tile) = match unsafe { find_work(&r, &mut cursor, &mut beat) } {
                Some((q, slot, tile)) => {
                    seq = q;
                    (1, slot, tile)
                }
                None => (0, 0, 0),
            };
            // SAFETY: header words 0..3 (the split-K flag at word 1 is unused in this mode).
            unsafe {
                st_shared_u32(header, verdict);
                st_shared_u32(header + 4, slot);
                st_shared_u32(header + 8, tile);
            }
        }
        sync_threads();
        // SAFETY: written before the barrier.
        let (verdict, slot, tile) =
            unsafe { (ld_shared_u32(header), ld_shared_u32(header + 4), ld_shared_u32(header + 8)) };
        if verdict == 0 {
            return;
        }
        if tid < 8 {
            // SAFETY: 128 bytes of the slot's problem; the slot keeps this problem until it
            // completes, which needs this tile.
            unsafe {
                let w = ld_volatile_v4_u32(r.slot(slot, offset_of!(RingSlot, problem)) + tid as u64 * 16);
                st_shared_v4_u32(desc.0 + tid * 16, w);
            }
        }
        sync_threads();
        let tiles_n = desc.tiles_n();
        let (tm, tn) = if tiles_n == 0 { (u32::MAX, 0) } else { (tile / tiles_n, tile % tiles_n) };
        // SAFETY: the staged, validated problem; `run_tile` rejects bad coordinates.
        let _ =
            unsafe { run_tile::<false>(desc, TileDesc { problem: 0, tile_m: tm, tile_n: tn, split: 0 }, smem, status) };
        sync_threads(); // the tile's stores are issued; descriptor and stages are free
        if tid == 0 {
            fence_acq_rel_gpu();
            let ctr = r.done_ctr + slot as u64 * 4;
            // SAFETY: the slot's words; its tile count.
            unsafe {
                let tiles = ld_volatile_u32(r.slot(slot, offset_of!(RingSlot, tiles)));
                if atom_add_acq_rel_gpu_u32(ctr, 1) == tiles - 1 {
                    // Last tile: reset the counter for the slot's next problem, mark the slot
                    // done on the device, then tell the host (releases order every tile's
                    // results, and the reset, before them).
                    st_relaxed_gpu_u32(ctr, 0);
                    fence_acq_rel_gpu();
                    st_release_gpu_u64(r.dev_done + slot as u64 * 8, seq + 1);
                    st_release_sys_u64(r.host_done + slot as u64 * 8, seq + 1);
                }
            }
        }
    }
}
