//! The resident megakernel of persistent mode: launched once (cooperatively, so every CTA is
//! resident), it drains the ring until told to stop. Protocol and memory ordering: `QUEUE.md`,
//! "Persistent mode".
//!
//! Block 0 is the forwarder: its thread 0 polls the host's `published` word across the bus, and
//! the whole CTA copies newly published slots from host memory into the device ring, then
//! publishes them to the workers in device memory. Every other block is a worker: its thread 0
//! claims the next global tile index and waits (nanosleep backoff on a device word) until a
//! published problem may cover it; then all its threads look through up to 256 published
//! problems at once for the one holding the claim, stage its descriptor into shared memory, run
//! the tile and count it. The CTA finishing a problem's last tile marks the slot done in device
//! memory and writes the problem's completion word to host memory.

use core::mem::offset_of;

use crate::abi::ring::{
    DeviceState, HOST_HEADER_BYTES, HostHeader, RingSlot, TRACE_PROBLEMS, Trace, done_offset, slot_offset,
};
use crate::abi::{BLOCK_THREADS, SMEM_DESC_OFFSET, SMEM_HEADER_BYTES, TileDesc};
use crate::arch::{
    atom_add_acq_rel_gpu_u32, atom_add_relaxed_gpu_u64, block_idx_x, fence_acq_rel_gpu, globaltimer,
    ld_acquire_gpu_u32, ld_acquire_gpu_u64, ld_acquire_sys_u64, ld_shared_u32, ld_shared_u64, ld_volatile_u32,
    ld_volatile_u64, ld_volatile_v4_u32, nanosleep, smem_base, st_relaxed_gpu_u32, st_relaxed_gpu_u64,
    st_relaxed_gpu_v4_u32, st_release_gpu_u32, st_release_gpu_u64, st_release_sys_u64, st_shared_u32, st_shared_u64,
    st_shared_v4_u32, sync_threads, thread_idx_x,
};
use crate::megakernel::run_tile;
use crate::problem::Problem;

/// Longest nanosleep between a waiting worker's polls of the device `published` word: bounds
/// the wake-up latency of an idle worker.
const MAX_BACKOFF_NS: u32 = 128;
/// The forwarder polls back to back (each poll is one bus round trip, about 1 µs) until this
/// long passes without work, then sleeps this long between polls.
const FORWARDER_IDLE_NS: u64 = 1_000_000;
const FORWARDER_IDLE_SLEEP_NS: u32 = 1000;
/// The forwarder reads the host's stop and heartbeat words every this many idle polls.
const FORWARDER_CONTROL_EVERY: u32 = 32;
/// 16-byte chunks per slot, and per forwarder thread and pass.
const SLOT_CHUNKS: u32 = (size_of::<RingSlot>() / 16) as u32;
const CHUNKS_PER_THREAD: u32 = 5;
/// Slots the forwarder copies per pass (all its threads' chunks).
const FORWARD_SLOTS: u64 = (BLOCK_THREADS * CHUNKS_PER_THREAD / SLOT_CHUNKS) as u64;
/// Scratch words in the tile area of shared memory (free between tiles).
const SCRATCH_PUBLISHED: u32 = 0;
const SCRATCH_CLAIM: u32 = 8;
const SCRATCH_FOUND: u32 = 16;
const SCRATCH_SLOT: u32 = 24;
const SCRATCH_TILE: u32 = 28;
const SCRATCH_TILES: u32 = 32;
/// The forwarder's scratch words: the range of problems to copy, and the last one's first tile
/// and tile count (from the chunks that hold them).
const SCRATCH_FROM: u32 = 0;
const SCRATCH_TO: u32 = 8;
const SCRATCH_LAST_FIRST: u32 = 16;
const SCRATCH_LAST_TILES: u32 = 24;
/// `first_tile` and `tiles` lie in a slot's first and second 16-byte chunks.
const _: () = {
    assert!(offset_of!(RingSlot, first_tile) == 8 && offset_of!(RingSlot, tiles) == 16);
};

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
    /// The host block (host-mapped): header, slots, completion words.
    host: u64,
    /// `TRACE_PROBLEMS` × `Trace` (0: none).
    trace: u64,
    slots: u32,
}

impl Ring {
    fn state(&self, field: usize) -> u64 {
        self.state + field as u64
    }

    fn slot(&self, i: u32, field: usize) -> u64 {
        self.slots_addr + (slot_offset(i) + field) as u64
    }

    fn header(&self, field: usize) -> u64 {
        self.host + field as u64
    }

    /// Slot index of problem `q`.
    fn index(&self, q: u64) -> u32 {
        q.checked_rem(self.slots as u64).unwrap_or(0) as u32
    }

    /// Stamps `%globaltimer` into field `field` of problem `q`'s trace entry (if tracing).
    fn stamp(&self, q: u64, field: usize) {
        if self.trace != 0 {
            let at = self.trace + (q % TRACE_PROBLEMS as u64) * size_of::<Trace>() as u64 + field as u64;
            // SAFETY: inside the trace buffer (`DeviceState::trace`'s contract).
            unsafe { st_relaxed_gpu_u64(at, globaltimer()) };
        }
    }
}

/// The forwarder's thread 0: waits for host-published problems past `forwarded` and returns
/// the range to copy next, or `None` once the host asked to stop (and everything it published is
/// forwarded) or its heartbeat stopped for the timeout.
///
/// # Safety
/// As [`tilemux_persistent`].
unsafe fn poll_host(r: &Ring, forwarded: u64) -> Option<(u64, u64)> {
    let published = r.header(offset_of!(HostHeader, published));
    // SAFETY (loads below): the host header and the device state.
    let timeout = unsafe { ld_volatile_u64(r.state(offset_of!(DeviceState, heartbeat_timeout_ns))) };
    let (mut beat, mut beat_at) = (0u64, globaltimer());
    let mut polls = 0u32;
    let start = globaltimer();
    loop {
        let p = unsafe { ld_acquire_sys_u64(published) };
        if p > forwarded {
            let to = if p - forwarded > FORWARD_SLOTS { forwarded + FORWARD_SLOTS } else { p };
            return Some((forwarded, to));
        }
        polls += 1;
        let now = globaltimer();
        if polls % FORWARDER_CONTROL_EVERY == 0 {
            // The stop word before `published` again: the host stores it after its last publish.
            if unsafe { ld_acquire_sys_u64(r.header(offset_of!(HostHeader, stop))) } != 0
                && unsafe { ld_acquire_sys_u64(published) } <= forwarded
            {
                return None;
            }
            let b = unsafe { ld_volatile_u64(r.header(offset_of!(HostHeader, heartbeat))) };
            if b != beat || polls == FORWARDER_CONTROL_EVERY {
                (beat, beat_at) = (b, now);
            } else if timeout != 0 && now.wrapping_sub(beat_at) > timeout {
                return None;
            }
        }
        if now.wrapping_sub(start) > FORWARDER_IDLE_NS {
            nanosleep(FORWARDER_IDLE_SLEEP_NS);
        }
    }
}

/// Block 0: forwards published slots from the host block to the device ring until stopped, then
/// sets the device stop word (after its last `published`).
///
/// # Safety
/// As [`tilemux_persistent`].
unsafe fn forward(r: &Ring, tid: u32, scratch: u32) {
    let mut forwarded = 0u64;
    loop {
        if tid == 0 {
            // SAFETY: this kernel's contract; scratch words in this CTA's shared memory.
            let (from, to) = unsafe { poll_host(r, forwarded) }.unwrap_or((0, u64::MAX));
            if to != u64::MAX {
                r.stamp(from, offset_of!(Trace, seen));
            }
            unsafe {
                st_shared_u64(scratch + SCRATCH_FROM, from);
                st_shared_u64(scratch + SCRATCH_TO, to);
            }
        }
        sync_threads();
        // SAFETY: written before the barrier.
        let (from, to) = unsafe { (ld_shared_u64(scratch + SCRATCH_FROM), ld_shared_u64(scratch + SCRATCH_TO)) };
        if to == u64::MAX {
            if tid == 0 {
                // SAFETY: the device stop word; released after the last `published`.
                unsafe { st_release_gpu_u32(r.state(offset_of!(DeviceState, stop)), 1) };
            }
            return;
        }
        // Copy: every thread loads its chunks (all in flight), fences, stores them.
        let chunks = (to - from) as u32 * SLOT_CHUNKS;
        let at = |c: u32| {
            let i = r.index(from + (c / SLOT_CHUNKS) as u64);
            (slot_offset(i) + (c % SLOT_CHUNKS) as usize * 16) as u64
        };
        let mut buf = [[0u32; 4]; CHUNKS_PER_THREAD as usize];
        let last = chunks - SLOT_CHUNKS;
        for (u, b) in buf.iter_mut().enumerate() {
            let c = tid + u as u32 * BLOCK_THREADS;
            if c < chunks {
                // SAFETY: a published slot of the host block, stable until its problem is done.
                *b = unsafe { ld_volatile_v4_u32(r.host + HOST_HEADER_BYTES as u64 + at(c)) };
                // SAFETY (both): scratch words of this CTA.
                if c == last {
                    unsafe { st_shared_u64(scratch + SCRATCH_LAST_FIRST, b[2] as u64 | (b[3] as u64) << 32) };
                } else if c == last + 1 {
                    unsafe { st_shared_u32(scratch + SCRATCH_LAST_TILES, b[0]) };
                }
            }
        }
        fence_acq_rel_gpu();
        for (u, b) in buf.iter().enumerate() {
            let c = tid + u as u32 * BLOCK_THREADS;
            if c < chunks {
                // SAFETY: the same slot of the device ring; its previous problem is done.
                unsafe { st_relaxed_gpu_v4_u32(r.slots_addr + at(c), *b) };
            }
        }
        sync_threads();
        if tid == 0 {
            // SAFETY: the device `published` words; scratch words written before the barrier.
            // One release covers both: workers read `published` only after acquiring
            // `tiles_published`, and every copying thread's stores precede it (barrier, then the
            // release, cumulative).
            unsafe {
                let end =
                    ld_shared_u64(scratch + SCRATCH_LAST_FIRST) + ld_shared_u32(scratch + SCRATCH_LAST_TILES) as u64;
                st_relaxed_gpu_u64(r.state(offset_of!(DeviceState, published)), to);
                r.stamp(from, offset_of!(Trace, forwarded));
                st_release_gpu_u64(r.state(offset_of!(DeviceState, tiles_published)), end);
            }
            forwarded = to;
        }
    }
}

/// A worker's thread 0: waits until the forwarded tiles cover claim `g` and returns how many
/// problems are forwarded, or `None` once the forwarder stopped and none will cover it.
///
/// # Safety
/// As [`tilemux_persistent`].
unsafe fn wait_published(r: &Ring, g: u64) -> Option<u64> {
    let tiles = r.state(offset_of!(DeviceState, tiles_published));
    let mut ns = 32u32;
    loop {
        // SAFETY (loads below): device state words. `published` after `tiles_published`: the
        // forwarder releases them in the other order, so the problems are all there.
        if unsafe { ld_acquire_gpu_u64(tiles) } > g {
            return Some(unsafe { ld_acquire_gpu_u64(r.state(offset_of!(DeviceState, published))) });
        }
        // The stop word before the tiles again: the forwarder releases it after its last ones.
        if unsafe { ld_acquire_gpu_u32(r.state(offset_of!(DeviceState, stop))) } != 0
            && unsafe { ld_acquire_gpu_u64(tiles) } <= g
        {
            return None;
        }
        nanosleep(ns);
        ns = (ns * 2).min(MAX_BACKOFF_NS);
    }
}

/// Persistent-mode entry point. Launch cooperatively with `BLOCK_THREADS` threads, a grid of
/// at least 2 and at most the co-resident CTAs, and `TileKind::megakernel_smem_bytes()` of
/// dynamic shared memory. `state` is a [`DeviceState`] (with `slots` and `heartbeat_timeout_ns`
/// set, the rest zero), `slots_addr` the device ring, `dev_done` and `done_ctr` zeroed per-slot
/// words (u64, u32), `host` the device address of the host-mapped block (`abi::ring::host_bytes`,
/// zeroed before launch).
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
    host: u64,
) {
    let tid = thread_idx_x();
    let header = smem_base();
    let desc = Problem(header + SMEM_DESC_OFFSET);
    let smem = header + SMEM_HEADER_BYTES;
    // SAFETY: the device state.
    let slots = unsafe { ld_volatile_u32(state + offset_of!(DeviceState, slots) as u64) };
    // SAFETY: the device state.
    let trace = unsafe { ld_volatile_u64(state + offset_of!(DeviceState, trace) as u64) };
    let r = Ring { state, slots_addr, dev_done, done_ctr, host, trace, slots };
    if block_idx_x() == 0 {
        // SAFETY: this kernel's contract; the scratch words lie in this CTA's tile area.
        unsafe { forward(&r, tid, smem) };
        return;
    }
    let status = state + offset_of!(DeviceState, status) as u64;
    let host_done = host + done_offset(slots, 0) as u64;
    // Uniform across the CTA: the oldest problem its claims may still fall in.
    let mut cursor = 0u64;
    loop {
        if tid == 0 {
            // SAFETY: the claim counter; a scratch word (the previous tile is over).
            unsafe {
                let g = atom_add_relaxed_gpu_u64(r.state(offset_of!(DeviceState, claim)), 1);
                st_shared_u64(smem + SCRATCH_CLAIM, g);
            }
        }
        // Find the published problem holding the claim, 256 candidates per look.
        let (seq, slot, tile, tiles) = loop {
            if tid == 0 {
                // SAFETY: this kernel's contract; scratch words (the claim, written above).
                let p = unsafe { wait_published(&r, ld_shared_u64(smem + SCRATCH_CLAIM)) }.unwrap_or(u64::MAX);
                unsafe {
                    st_shared_u64(smem + SCRATCH_PUBLISHED, p);
                    st_shared_u64(smem + SCRATCH_FOUND, u64::MAX);
                }
            }
            sync_threads();
            // SAFETY: written before the barrier.
            let (p, g) = unsafe { (ld_shared_u64(smem + SCRATCH_PUBLISHED), ld_shared_u64(smem + SCRATCH_CLAIM)) };
            if p == u64::MAX {
                return;
            }
            let end = if p - cursor > BLOCK_THREADS as u64 { cursor + BLOCK_THREADS as u64 } else { p };
            let q = cursor + tid as u64;
            if q < end {
                let i = r.index(q);
                // SAFETY: slot words of the device ring and the slot's done word. Problem q is
                // published; if it finished, the forwarder may be rewriting the slot, and the
                // done re-check after the fence discards what was read.
                unsafe {
                    let seq = ld_volatile_u64(r.slot(i, offset_of!(RingSlot, seq)));
                    let first = ld_volatile_u64(r.slot(i, offset_of!(RingSlot, first_tile)));
                    let tiles = ld_volatile_u32(r.slot(i, offset_of!(RingSlot, tiles))) as u64;
                    if seq == q && first <= g && g < first + tiles {
                        fence_acq_rel_gpu();
                        if ld_acquire_gpu_u64(r.dev_done + i as u64 * 8) <= q {
                            // The only thread that can get here: the claim lies in one problem.
                            st_shared_u64(smem + SCRATCH_FOUND, q);
                            st_shared_u32(smem + SCRATCH_SLOT, i);
                            st_shared_u32(smem + SCRATCH_TILE, (g - first) as u32);
                            st_shared_u32(smem + SCRATCH_TILES, tiles as u32);
                        }
                    }
                }
            }
            sync_threads();
            // SAFETY: written before the barrier.
            let found = unsafe { ld_shared_u64(smem + SCRATCH_FOUND) };
            if found != u64::MAX {
                // SAFETY: as above.
                // SAFETY: as above.
                unsafe {
                    break (
                        found,
                        ld_shared_u32(smem + SCRATCH_SLOT),
                        ld_shared_u32(smem + SCRATCH_TILE),
                        ld_shared_u32(smem + SCRATCH_TILES),
                    );
                }
            }
            // Not among these: the claim lies past them (its problem is never done before
            // this CTA runs the tile, so its slot reads back intact when looked at).
            cursor = end;
            sync_threads(); // everyone read the scratch words before thread 0 rewrites them
        };
        cursor = seq; // later claims are larger: they lie in this problem or later ones
        if tid == 0 && tile == 0 {
            r.stamp(seq, offset_of!(Trace, found));
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
        if tid == 0 && tile == 0 {
            r.stamp(seq, offset_of!(Trace, staged));
        }
        let tiles_n = desc.tiles_n();
        let (tm, tn) = if tiles_n == 0 { (u32::MAX, 0) } else { (tile / tiles_n, tile % tiles_n) };
        // SAFETY: the staged, validated problem; `run_tile` rejects bad coordinates.
        let _ =
            unsafe { run_tile::<false>(desc, TileDesc { problem: 0, tile_m: tm, tile_n: tn, split: 0 }, smem, status) };
        sync_threads(); // the tile's stores are issued; descriptor, stages and scratch are free
        if tid == 0 && tile == 0 {
            r.stamp(seq, offset_of!(Trace, tile_done));
        }
        if tid == 0 {
            let ctr = r.done_ctr + slot as u64 * 4;
            // SAFETY: the slot's words.
            unsafe {
                // Release: this CTA's tile results (barrier, then the release, cumulative) precede
                // the count; acquire: the last CTA sees every other CTA's.
                if atom_add_acq_rel_gpu_u32(ctr, 1) == tiles - 1 {
                    // Last tile: reset the counter for the slot's next problem and mark the slot
                    // done on the device (nothing is read through either: the slot's next problem
                    // comes only after the host sees the completion word), then tell the host; the
                    // sys-scope release orders every tile's results, the reset and the device mark
                    // before it.
                    st_relaxed_gpu_u32(ctr, 0);
                    st_relaxed_gpu_u64(r.dev_done + slot as u64 * 8, seq + 1);
                    r.stamp(seq, offset_of!(Trace, completing));
                    st_release_sys_u64(host_done + slot as u64 * 8, seq + 1);
                    r.stamp(seq, offset_of!(Trace, completed));
                }
            }
        }
    }
}
