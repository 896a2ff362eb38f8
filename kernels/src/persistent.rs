//! The resident megakernel of persistent mode: launched once (cooperatively, so every CTA is
//! resident), it drains the ring until told to stop. Protocol and memory ordering: `QUEUE.md`,
//! "Persistent mode".
//!
//! Warp 0 of one block is the forwarder (the CTA on the SM the host chose for its short bus
//! round trip, else block 0; see [`forwards`]): it polls the stamped host images of the next two slots
//! itself (one bus round trip brings both the news and the problems), copies the images that
//! arrived into the device ring as they are, stamps included, and publishes every tile of them in
//! the claim table. Every other block is a worker: its warp 0 claims the next global tile index
//! and polls, in one round trip, the image of the slot it expects that claim's problem in and
//! the claim's table entry (nanosleep backoff, device memory only); an image that covers the
//! claim arrives with the problem itself, which the warp stages at once; the entry names the slot
//! when the guess was wrong. The CTA runs the tile and, for a problem of at most `FLAG_TILES`
//! tiles, writes the tile's flag byte to host memory; for a larger one it counts the tile on the
//! slot's counter, and the CTA whose count reaches the problem's target writes the problem's
//! completion word to host memory.

use core::mem::offset_of;

use crate::abi::ring::pace::{PaceScores, Pacer};
use crate::abi::ring::{
    CLAIM_TABLE, CtaStash, Cursor, DeviceState, FLAG_LINE, FLAGGED, HOST_SLOT_BYTES, HOST_SLOT_CHUNKS, HostHeader,
    IMAGE_WORDS, ImageView, Look, RingSlot, TRACE_PROBLEMS, Trace, done_offset, entry, flags_offset, host_slot_offset,
    slot_offset, stamp,
};
use crate::abi::{SMEM_DESC_OFFSET, SMEM_HEADER_BYTES, TileDesc};
use crate::arch::{
    atom_add_relaxed_gpu_u64, atom_add_release_gpu_u64, atom_cas_relaxed_gpu_u32, block_idx_x, clock64,
    fence_acq_rel_gpu, fence_acq_rel_sys, globaltimer, ld_acquire_gpu_shared_u32, ld_acquire_gpu_u32,
    ld_acquire_gpu_u64, ld_shared_u32, ld_shared_u64, ld_volatile_u32, ld_volatile_u64, ld_volatile_v4_u32, nanosleep,
    red_max_relaxed_gpu_u64, shfl_idx, sm_id, smem_base, st_relaxed_gpu_u64, st_relaxed_gpu_v4_u32, st_relaxed_sys_u8,
    st_relaxed_sys_u64, st_release_gpu_u32, st_release_gpu_u64, st_shared_u32, st_shared_u64, sync_threads, sync_warp,
    thread_idx_x, vote_all,
};
use crate::megakernel::run_tile;
use crate::problem::Problem;

/// Longest nanosleep between a waiting worker's polls of its claim-table entry: bounds the
/// wake-up latency of an idle worker.
const MAX_BACKOFF_NS: u32 = 128;
/// A waiting worker looks at the stop word every this many polls.
const WORKER_STOP_EVERY: u32 = 64;
/// The forwarder polls back to back until this many polls in a row found nothing (each poll is
/// one bus round trip, at least 1 µs: about 1 ms without work), then sleeps this long between
/// polls. Counted in polls, not read off `%globaltimer`: reading the timer after every poll
/// lengthened the poll cycle, and with it the wait for a publish to be seen (a lone GEMV 0.15–0.3
/// µs slower on average on the H100), so the forwarder reads it only on control polls, for the
/// heartbeat.
const FORWARDER_IDLE_POLLS: u32 = 1000;
const FORWARDER_IDLE_SLEEP_NS: u32 = 1000;
/// Every this many polls, two more lanes of the forwarder's poll read the host's stop and
/// heartbeat words (in the same round trip as the slots).
const FORWARDER_CONTROL_EVERY: u32 = 32;
/// Slots the forwarder polls at once (one 16-byte chunk per lane).
const WINDOW: u32 = 2;
const POLL_LANES: u32 = WINDOW * HOST_SLOT_CHUNKS as u32;
const LANE_STOP: u32 = POLL_LANES;
const LANE_BEAT: u32 = POLL_LANES + 1;
/// Scratch words in the tile area of shared memory (free between tiles): the claim's tile.
const SCRATCH_TILE: u32 = 12;
/// When the CTA's warp 0 found the problem (for the trace).
const SCRATCH_FOUND: u32 = 48;
/// SM cycles from issuing the poll that found the problem to finding it (for the trace).
const SCRATCH_POLL_CYCLES: u32 = 56;
/// Polls `find` made for the claim (for the trace).
const SCRATCH_POLLS: u32 = 64;
/// The staged slot's first 32 bytes laid out as `RingSlot`'s (`first_tile`, `tiles`,
/// `done_target` staged; `seq` is in the header).
const SCRATCH_HEAD: u32 = 16;
/// Header words (the first 16 bytes of shared memory: round mode's claim broadcast and split-K
/// flag, unused here), which tiles leave alone: the slot and sequence number of the CTA's
/// current problem (then its last, where the next `find` starts); `u32::MAX` as the slot once
/// the kernel is to exit.
const HEADER_SLOT: u32 = 0;
const HEADER_SEQ: u32 = 8;
/// Header word: non-zero when the kernel traces (set once at the start, read by `find`).
const HEADER_TRACED: u32 = 4;
/// Words of the slot's head the image carries (`first_tile` .. `done_target`): staged into
/// scratch, the rest into the descriptor.
const HEAD_WORDS: u32 = 6;
/// The worker's lane that polls the claim-table entry (lanes 0..13 poll the slot image).
const LANE_ENTRY: u32 = 31;
const _: () = {
    assert!(LANE_BEAT < 32);
    assert!(LANE_ENTRY >= HOST_SLOT_CHUNKS as u32);
    assert!(offset_of!(RingSlot, problem) == 8 + 4 * HEAD_WORDS as usize);
    assert!(HOST_SLOT_BYTES % 16 == 0);
    assert!(offset_of!(RingSlot, problem) == 32 && offset_of!(RingSlot, done_target) == 24);
};

/// The resident kernel's buffers.
#[derive(Clone, Copy)]
struct Ring {
    /// `DeviceState` (device memory).
    state: u64,
    /// Device ring of `slots` × `RingSlot`.
    slots_addr: u64,
    /// Per slot: tiles finished of every problem it has held (u64, device memory).
    done_ctr: u64,
    /// `CLAIM_TABLE` entries (u64, device memory).
    table: u64,
    /// The host block (host-mapped): header, slot images, completion words.
    host: u64,
    /// `TRACE_PROBLEMS` × `Trace` (0: none).
    trace: u64,
    slots: u32,
}

impl Ring {
    fn state(&self, field: usize) -> u64 {
        self.state + field as u64
    }

    fn header(&self, field: usize) -> u64 {
        self.host + field as u64
    }

    /// Slot `i + d` (`i < slots`, `d <= 2`) wrapped into the ring: no 64-bit division (software
    /// on the GPU) on the forwarder's path.
    fn next(&self, i: u32, d: u32) -> u32 {
        let mut j = i + d;
        while j >= self.slots && self.slots > 0 {
            j -= self.slots;
        }
        j
    }

    /// Stamps `%globaltimer` into field `field` of problem `q`'s trace entry (if tracing; the
    /// timer is not read otherwise: reads on a problem's way are not free).
    fn stamp(&self, q: u64, field: usize) {
        if self.trace != 0 {
            self.put(q, field, globaltimer());
        }
    }

    /// Stores `v` into field `field` of problem `q`'s trace entry (if tracing).
    fn put(&self, q: u64, field: usize, v: u64) {
        if self.trace != 0 {
            let at = self.trace + (q % TRACE_PROBLEMS as u64) * size_of::<Trace>() as u64 + field as u64;
            // SAFETY: inside the trace buffer (`DeviceState::trace`'s contract).
            unsafe { st_relaxed_gpu_u64(at, v) };
        }
    }

    /// Raises field `field` of problem `q`'s trace entry to `v` if it is lower (if tracing; the
    /// entries of earlier problems hold earlier stamps, so the latest of a problem's CTAs wins).
    fn raise(&self, q: u64, field: usize, v: u64) {
        if self.trace != 0 {
            let at = self.trace + (q % TRACE_PROBLEMS as u64) * size_of::<Trace>() as u64 + field as u64;
            // SAFETY: inside the trace buffer (`DeviceState::trace`'s contract).
            unsafe { red_max_relaxed_gpu_u64(at, v) };
        }
    }

    /// Address of field `field` of this CTA's stash in the trace buffer (tracing only).
    fn stash(&self, field: usize) -> u64 {
        self.trace
            + TRACE_PROBLEMS as u64 * size_of::<Trace>() as u64
            + block_idx_x() as u64 * size_of::<CtaStash>() as u64
            + field as u64
    }
}

/// Lane `lane`'s value of a u64 held by every lane (two 32-bit shuffles).
fn shfl_u64(v: u64, lane: u32) -> u64 {
    shfl_idx(v as u32, lane) as u64 | (shfl_idx((v >> 32) as u32, lane) as u64) << 32
}

/// The pacer's scores in the forwarding CTA's shared memory, which nothing else uses
/// (`PACE_PHASES` u32 words from this address).
struct SmemScores(u32);

impl PaceScores for SmemScores {
    #[inline(always)]
    fn get(&self, phase: u32) -> u32 {
        // SAFETY: the forwarding CTA's shared memory, unused otherwise.
        unsafe { ld_shared_u32(self.0 + 4 * phase) }
    }

    #[inline(always)]
    fn set(&mut self, phase: u32, v: u32) {
        // SAFETY: as above.
        unsafe { st_shared_u32(self.0 + 4 * phase, v) }
    }
}

/// The forwarding CTA's warp 0: forwards problems from the host images to the device ring and the claim
/// table until stopped, then sets the device stop word (after its last `tiles_published`).
///
/// Each poll is one load per lane: lanes `k·13 + c` read chunk `c` of problem `q + k`'s slot
/// image; a problem has arrived when all 13 of its stamps are `q + k + 1` (the host stores each
/// stamp after its chunk's data, and a 16-byte chunk is read at once).
///
/// # Safety
/// As [`tilemux_persistent`]; called by the 32 lanes of one warp.
unsafe fn forward(r: &Ring, lane: u32, pace: bool) {
    // SAFETY (loads and stores below): the device state, the host block, the device ring and
    // the claim table, as the kernel's contract describes them.
    let timeout = unsafe { ld_volatile_u64(r.state(offset_of!(DeviceState, heartbeat_timeout_ns))) };
    let (mut beat, mut beat_at) = (None, globaltimer());
    // Empty polls in a row (for idling).
    let (mut q, mut idle) = (0u64, 0u32);
    // Problem q's slot, `q % slots`, kept as q moves.
    let mut qi = 0u32;
    let (k, c) = (lane / HOST_SLOT_CHUNKS as u32, lane % HOST_SLOT_CHUNKS as u32);
    // This lane's word of a poll: chunk `c` of problem `q + k`'s image (moves with `q`).
    let poll_at = |qi: u32| r.host + (host_slot_offset(r.next(qi, k)) + c as usize * 16) as u64;
    let mut at = poll_at(qi);
    // Issues poll number `seq`: its lanes' values, and whether it also read the control words.
    let issue = |at: u64, seq: u32| -> ([u32; 4], u64, bool) {
        let control = seq % FORWARDER_CONTROL_EVERY == FORWARDER_CONTROL_EVERY - 1;
        let (mut w, mut ctl) = ([0u32; 4], 0u64);
        if lane < POLL_LANES {
            w = unsafe { ld_volatile_v4_u32(at) };
        } else if control && lane == LANE_STOP {
            // Relaxed: an acquire at system scope would cost this poll a fence; the one that
            // orders the next poll after the stop word comes only once it is seen.
            ctl = unsafe { ld_volatile_u64(r.header(offset_of!(HostHeader, stop))) };
        } else if control && lane == LANE_BEAT {
            ctl = unsafe { ld_volatile_u64(r.header(offset_of!(HostHeader, heartbeat))) };
        }
        (w, ctl, control)
    };
    // The poll being looked at (`seq`), polls issued, and the first one issued after the stop
    // fence (none yet).
    let (mut seq, mut issued, mut after_fence) = (0u32, 1u32, u32::MAX);
    let (mut w, mut ctl, mut control) = issue(at, seq);
    let mut pacer = Pacer::new(SmemScores(smem_base() + SMEM_HEADER_BYTES));
    loop {
        let mine = lane >= POLL_LANES || w[0] == stamp(q + k as u64);
        let first = vote_all(k != 0 || mine);
        let n = if !first {
            0
        } else if vote_all(k != 1 || mine) {
            2
        } else {
            1
        };
        if n == 0 {
            // A poll issued after the stop word was seen, and still nothing: everything the host
            // published before asking to stop is forwarded.
            if seq >= after_fence {
                break;
            }
            idle = idle.saturating_add(1);
            let (looked_ctl, looked_control) = (ctl, control);
            // While busy, the next poll goes out before this one's bookkeeping (which then runs
            // while it is in flight): the poll cycle is the bus round trip, little more.
            let busy = idle <= FORWARDER_IDLE_POLLS;
            if busy {
                (w, ctl, control) = issue(at, issued);
                (seq, issued) = (issued, issued.wrapping_add(1));
                if pace && lane == 0 {
                    pacer.empty_poll(clock64());
                }
            }
            if looked_control {
                let now = globaltimer();
                let (stop, b) = (shfl_u64(looked_ctl, LANE_STOP), shfl_u64(looked_ctl, LANE_BEAT));
                if stop != 0 && after_fence == u32::MAX {
                    // With the load above, an acquire of the stop word: polls issued from here
                    // on see every stamp the host stored before it.
                    sync_warp();
                    fence_acq_rel_sys();
                    after_fence = issued;
                }
                if beat != Some(b) {
                    (beat, beat_at) = (Some(b), now);
                } else if timeout != 0 && now.wrapping_sub(beat_at) > timeout {
                    break;
                }
            }
            if !busy {
                nanosleep(FORWARDER_IDLE_SLEEP_NS);
                (w, ctl, control) = issue(at, issued);
                (seq, issued) = (issued, issued.wrapping_add(1));
            }
            continue;
        }
        idle = 0;
        let seen_at = clock64();
        if lane == 0 {
            for j in 0..n {
                r.stamp(q + j as u64, offset_of!(Trace, seen));
            }
        }
        // Copy: lane (k, c) holds chunk c of problem q + k's image, stamp and data, and stores it
        // into the device ring as it is, in one 16-byte store (a worker takes an image only once
        // its 13 stamps agree, so neither a fence nor an order among the lanes is needed).
        if k < n {
            let dst = r.slots_addr + (slot_offset(r.next(qi, k)) + c as usize * 16) as u64;
            // SAFETY: the slot's previous problem is done (the host reused its image).
            unsafe { st_relaxed_gpu_v4_u32(dst, w) };
        }
        if lane == 0 {
            for j in 0..n {
                r.stamp(q + j as u64, offset_of!(Trace, forwarded));
            }
        }
        let mut end = 0u64;
        for j in 0..n {
            // Chunk 0 of problem q + j's image: first_tile (words 1, 2), tiles (word 3).
            let src = j * HOST_SLOT_CHUNKS as u32;
            let first = shfl_idx(w[1], src) as u64 | (shfl_idx(w[2], src) as u64) << 32;
            let tiles = shfl_idx(w[3], src);
            let slot = r.next(qi, j);
            // A problem larger than the table publishes its last lap only (`entry::find` serves
            // the earlier laps from it).
            let mut t = tiles.saturating_sub(CLAIM_TABLE as u32) + lane;
            while t < tiles {
                let g = first + t as u64;
                unsafe { st_relaxed_gpu_u64(r.table + (g % CLAIM_TABLE) * 8, entry::pack(g, slot, t)) };
                t += 32;
            }
            end = first + tiles as u64;
        }
        sync_warp();
        if lane == 0 {
            // For the stop protocol: released after every lane's copies and entries (the
            // barrier, then the release, cumulative).
            unsafe { st_release_gpu_u64(r.state(offset_of!(DeviceState, tiles_published)), end) };
        }
        q += n as u64;
        qi = r.next(qi, n);
        at = poll_at(qi);
        let (mut now, mut phase) = (0, 0);
        if pace {
            // Lane 0 waits for the phase; the warp then polls together.
            if lane == 0 {
                now = clock64();
                let wait;
                (wait, phase) = pacer.next_wait();
                while clock64().wrapping_sub(now) < wait {}
            }
            sync_warp();
        }
        (w, ctl, control) = issue(at, issued);
        (seq, issued) = (issued, issued.wrapping_add(1));
        if pace && lane == 0 {
            // While the poll is out.
            pacer.seen(seen_at, now, phase);
        }
    }
    if lane == 0 {
        // SAFETY: the device stop word; released after the last `tiles_published`.
        unsafe { st_release_gpu_u32(r.state(offset_of!(DeviceState, stop)), 1) };
    }
}

/// A worker's warp 0: claims the next global tile `g` and polls until it knows `g`'s problem,
/// then stages it into shared memory (the problem into the descriptor, the slot's head, the tile
/// and when it was found into scratch, the slot and sequence number into the header); or, once
/// the forwarder stopped without publishing `g`, stores `u32::MAX` as the header's slot. Each
/// poll is one load per lane, one round trip: lanes 0..13 read the chunks of the slot image the
/// cursor points at (starting where the CTA's previous problem was: the header's slot and
/// sequence number), lane 31 `g`'s claim-table entry; [`Cursor::step`] decides. The problem then comes with the news, its image
/// already in registers. The first `spin_polls` polls go back to back, then nanosleep backoff.
///
/// # Safety
/// As [`tilemux_persistent`]; called by the 32 lanes of one warp, the shared memory it stages
/// into free (the CTA's other warps wait at a barrier).
///
/// Not inlined: ptxas then allocates the kernel's tile code without the poll loop's live values
/// (fewer spills under the 128-register cap: 72 bytes of stack, not 88; 256³ on the bare ring
/// 18.3 µs, not 19.0, on the H100).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn find(
    state: u64,
    slots_addr: u64,
    table: u64,
    slots: u32,
    lane: u32,
    spin_polls: u32,
    header: u32,
    smem: u32,
    desc: u32,
) {
    // Rebuilt from scalars: a `Ring` passed to a function that is not inlined goes through local
    // memory. The fields `find` has no use for (completion, host block, trace) stay zero.
    let r = &Ring { state, slots_addr, table, slots, done_ctr: 0, host: 0, trace: 0 };
    // The cursor: where the previous claim's problem was (problem 0 in slot 0 at the start).
    // SAFETY: header words of this kernel's own.
    let mut cur = unsafe {
        Cursor { slot: ld_shared_u32(header + HEADER_SLOT), expect: Some(stamp(ld_shared_u64(header + HEADER_SEQ))) }
    };
    // SAFETY (loads and stores below): the device state, the claim table and the device ring.
    let g = if lane == 0 { unsafe { atom_add_relaxed_gpu_u64(r.state(offset_of!(DeviceState, claim)), 1) } } else { 0 };
    let g = shfl_u64(g, 0);
    let at = r.table + (g % CLAIM_TABLE) * 8;
    let (mut ns, mut polls) = (0u32, 0u32);
    loop {
        let (mut w, mut e) = ([0u32; 4], 0u64);
        let slot = cur.slot;
        let issued = clock64();
        if lane < HOST_SLOT_CHUNKS as u32 {
            // Relaxed (strong, so never served from L1): an acquire here would drop the SM's L1
            // after every poll (0.17 µs a poll on the H100); it comes once, below, when found.
            w = unsafe { ld_volatile_v4_u32(r.slots_addr + (slot_offset(slot) + lane as usize * 16) as u64) };
        } else if lane == LANE_ENTRY {
            e = unsafe { ld_volatile_u64(at) };
        }
        let s0 = shfl_idx(w[0], 0);
        let view = ImageView {
            whole: vote_all(lane >= HOST_SLOT_CHUNKS as u32 || w[0] == s0),
            stamp: s0,
            first_tile: shfl_idx(w[1], 0) as u64 | (shfl_idx(w[2], 0) as u64) << 32,
            tiles: shfl_idx(w[3], 0),
        };
        // Chunk 1, word 1: `stamp_hi`.
        let hi = shfl_idx(w[1], 1);
        match cur.step(g, view, shfl_u64(e, LANE_ENTRY), r.slots) {
            Look::Found(tile) => {
                // Lane c holds the slot's words 2 + 3c.. (the image leaves out `seq`): the head's
                // into scratch, the problem's into the descriptor.
                for m in 0..3u32 {
                    let j = 3 * lane + m;
                    if lane < HOST_SLOT_CHUNKS as u32 && (j as usize) < IMAGE_WORDS {
                        let to =
                            if j < HEAD_WORDS { smem + SCRATCH_HEAD + 8 + 4 * j } else { desc + 4 * (j - HEAD_WORDS) };
                        // SAFETY: scratch and the descriptor are free (the caller's contract).
                        unsafe { st_shared_u32(to, w[1 + m as usize]) };
                    }
                }
                if lane == 0 {
                    let seq = ((hi as u64) << 32 | s0 as u64).wrapping_sub(1);
                    // SAFETY: scratch and header words.
                    unsafe {
                        st_shared_u32(header + HEADER_SLOT, slot);
                        st_shared_u64(header + HEADER_SEQ, seq);
                        st_shared_u32(smem + SCRATCH_TILE, tile);
                        // The timer only when tracing (reads on the way to the tile are not free).
                        if ld_shared_u32(header + HEADER_TRACED) != 0 {
                            st_shared_u64(smem + SCRATCH_FOUND, globaltimer());
                            st_shared_u64(smem + SCRATCH_POLL_CYCLES, clock64().wrapping_sub(issued));
                            st_shared_u32(smem + SCRATCH_POLLS, polls);
                        }
                    }
                }
                // The acquire for the tile's loads: an acquire load at GPU scope drops the SM's
                // L1, so nothing the tile reads is served from a line older than this poll (the
                // data a request reads reached device memory before the host published it).
                // From shared memory it costs no round trip. (QUEUE.md, step 7.) Last, after the
                // staging: the L1 holds the stack frame's spilled registers too, and one reloaded
                // after the invalidation (the claim's tile, staged above) waited on L2.
                // SAFETY: a header word.
                unsafe { ld_acquire_gpu_shared_u32(header + HEADER_SLOT) };
                return;
            }
            Look::Next => continue,
            Look::Wait => {}
        }
        polls = polls.wrapping_add(1);
        // The stop word before the tiles: the forwarder releases it after its last ones, whose
        // images and entries precede them.
        if polls % WORKER_STOP_EVERY == 0 {
            let gone = lane == 0
                && unsafe { ld_acquire_gpu_u32(r.state(offset_of!(DeviceState, stop))) } != 0
                && unsafe { ld_acquire_gpu_u64(r.state(offset_of!(DeviceState, tiles_published))) } <= g;
            if shfl_idx(gone as u32, 0) != 0 {
                if lane == 0 {
                    // SAFETY: a scratch word.
                    unsafe { st_shared_u32(header + HEADER_SLOT, u32::MAX) };
                }
                return;
            }
        }
        if polls > spin_polls {
            nanosleep(ns);
            ns = (ns * 2).clamp(32, MAX_BACKOFF_NS);
        }
    }
}

/// How long block 0 waits for the CTA on `DeviceState::forwarder_sm` to claim the forwarder
/// before it claims it itself (a grid that left that SM without a CTA must not hang).
const FORWARDER_CLAIM_NS: u64 = 1_000_000;

/// Whether this CTA forwards: the one on `DeviceState::forwarder_sm` (the host's choice) or,
/// without one (`u32::MAX`) or when that CTA has not claimed it within [`FORWARDER_CLAIM_NS`],
/// block 0. Exactly one CTA claims it (a compare-and-swap on `forwarder_claim`); the others
/// work. Called by every thread of the CTA; a candidate's thread 0 decides and tells the others
/// through the shared-memory header (one barrier, at the start only).
///
/// # Safety
/// `state` is the kernel's [`DeviceState`]; `header` the shared-memory header, not yet in use.
#[inline(always)]
unsafe fn forwards(state: u64, header: u32) -> bool {
    // SAFETY (loads and the atomic): the device state.
    let chosen = unsafe { ld_volatile_u32(state + offset_of!(DeviceState, forwarder_sm) as u64) };
    let claim = state + offset_of!(DeviceState, forwarder_claim) as u64;
    let mine = chosen != u32::MAX && sm_id() == chosen;
    if !mine && block_idx_x() != 0 {
        return false;
    }
    if thread_idx_x() == 0 {
        let won = if mine {
            unsafe { atom_cas_relaxed_gpu_u32(claim, 0, 1) == 0 }
        } else {
            // Block 0: the chosen CTA's claim, or its own once the wait is over.
            let start = globaltimer();
            while chosen != u32::MAX
                && unsafe { ld_volatile_u32(claim) } == 0
                && globaltimer().wrapping_sub(start) < FORWARDER_CLAIM_NS
            {
                nanosleep(1000);
            }
            unsafe { atom_cas_relaxed_gpu_u32(claim, 0, 2) == 0 }
        };
        // SAFETY: a header word, read by the CTA after the barrier.
        unsafe { st_shared_u32(header + HEADER_SLOT, won as u32) };
    }
    sync_threads();
    // SAFETY: written before the barrier.
    let won = unsafe { ld_shared_u32(header + HEADER_SLOT) } != 0;
    sync_threads(); // the word is the worker's header again once everyone has read it
    won
}

/// Persistent-mode entry point. Launch cooperatively with `BLOCK_THREADS` threads, a grid of
/// at least 2 and at most the co-resident CTAs, and `TileKind::megakernel_smem_bytes()` of
/// dynamic shared memory. `state` is a [`DeviceState`] (with `slots` and `heartbeat_timeout_ns`
/// set, the rest zero), `slots_addr` the device ring, `done_ctr` zeroed per-slot u64 counters,
/// `table` `CLAIM_TABLE` zeroed u64 entries, `host` the device address of the host-mapped block
/// (`abi::ring::host_bytes`, zeroed before launch).
///
/// # Safety
/// The buffers are as described; the host follows the protocol in `QUEUE.md`, publishing only
/// validated problems.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_persistent(
    state: u64,
    slots_addr: u64,
    done_ctr: u64,
    table: u64,
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
    let r = Ring { state, slots_addr, done_ctr, table, host, trace, slots };
    // SAFETY: the device state.
    if unsafe { forwards(state, header) } {
        if tid < 32 {
            // SAFETY: this kernel's contract; one whole warp.
            unsafe { forward(&r, tid, ld_volatile_u32(state + offset_of!(DeviceState, pace) as u64) != 0) };
        }
        return;
    }
    let status = state + offset_of!(DeviceState, status) as u64;
    // SAFETY: the device state.
    let spin_polls = unsafe { ld_volatile_u32(state + offset_of!(DeviceState, worker_spin_polls) as u64) };
    let host_done = host + done_offset(slots, 0) as u64;
    let host_flags = host + flags_offset(slots, 0) as u64;
    if tid == 0 {
        // SAFETY: header words: the first cursor looks for problem 0 in slot 0.
        unsafe {
            st_shared_u32(header + HEADER_SLOT, 0);
            st_shared_u64(header + HEADER_SEQ, 0);
            st_shared_u32(header + HEADER_TRACED, (trace != 0) as u32);
        }
    }
    sync_threads();
    loop {
        if tid < 32 {
            // SAFETY: one whole warp; the previous tile is over (scratch and descriptor free).
            unsafe { find(r.state, r.slots_addr, r.table, r.slots, tid, spin_polls, header, smem, desc.0) };
        }
        sync_threads();
        // SAFETY: written before the barrier.
        let (slot, tile) = unsafe { (ld_shared_u32(header + HEADER_SLOT), ld_shared_u32(smem + SCRATCH_TILE)) };
        if slot == u32::MAX {
            return;
        }
        // SAFETY: staged before the barrier.
        let (seq, target) = unsafe {
            (
                ld_shared_u64(header + HEADER_SEQ),
                ld_shared_u64(smem + SCRATCH_HEAD + offset_of!(RingSlot, done_target) as u32),
            )
        };
        if tid == 0 && r.trace != 0 {
            // SAFETY: the trace buffer and this CTA's stash; scratch words written before the
            // barriers.
            unsafe {
                let (found, staged, clock) = (ld_shared_u64(smem + SCRATCH_FOUND), globaltimer(), clock64());
                st_relaxed_gpu_u64(r.stash(offset_of!(CtaStash, found)), found);
                st_relaxed_gpu_u64(r.stash(offset_of!(CtaStash, staged)), staged);
                st_relaxed_gpu_u64(r.stash(offset_of!(CtaStash, staged_clock)), clock);
                if tile == 0 {
                    r.put(seq, offset_of!(Trace, found), found);
                    r.put(seq, offset_of!(Trace, staged), staged);
                    r.put(seq, offset_of!(Trace, poll_cycles), ld_shared_u64(smem + SCRATCH_POLL_CYCLES));
                    r.put(seq, offset_of!(Trace, polls), ld_shared_u32(smem + SCRATCH_POLLS) as u64);
                }
            }
        }
        let tiles_n = desc.tiles_n();
        // A GEMV's grid is one column: no division (software on the GPU) on its way to the tile.
        let (tm, tn) = match tiles_n {
            0 => (u32::MAX, 0),
            1 => (tile, 0),
            _ => (tile / tiles_n, tile % tiles_n),
        };
        // SAFETY: the staged, validated problem; `run_tile` rejects bad coordinates.
        let _ =
            unsafe { run_tile::<false>(desc, TileDesc { problem: 0, tile_m: tm, tile_n: tn, split: 0 }, smem, status) };
        sync_threads(); // the tile's stores are issued; descriptor, stages and scratch are free
        if tid == 0 {
            let (done_at, done_clock) = if r.trace != 0 { (globaltimer(), clock64()) } else { (0, 0) };
            if tile == 0 {
                r.put(seq, offset_of!(Trace, tile_done), done_at);
            }
            let flagged = target & FLAGGED != 0;
            // SAFETY (both arms): the slot's flag line, counter and completion word.
            let last = if flagged {
                // A small problem: this tile's flag, straight to the host, after a GPU-scope fence
                // (the barrier, then the fence, cumulative over the CTA's tile stores); no CTA
                // counts or waits for the others. Why GPU scope suffices: QUEUE.md.
                fence_acq_rel_gpu();
                unsafe { st_relaxed_sys_u8(host_flags + slot as u64 * FLAG_LINE as u64 + tile as u64, target as u32) };
                false
            } else {
                // Release: this CTA's tile results (barrier, then the release, cumulative) precede
                // the count. No acquire: the last CTA reads nothing the others wrote (an acquire
                // would drop the SM's L1 and send the spilled registers read next to L2; 0.03–0.1
                // µs on the H100); its next tile's loads have their own (`find`). The counter is
                // never reset: each problem's target counts every counted tile the slot has held.
                unsafe { atom_add_release_gpu_u64(r.done_ctr + slot as u64 * 8, 1) + 1 == target }
            };
            if tile == 0 {
                r.stamp(seq, offset_of!(Trace, counted));
            }
            if last {
                // Last tile: tell the host. Every tile's results are in device memory (L2)
                // before this store issues (every CTA's add released them, and this store
                // depends on the last add's value); see QUEUE.md for why no system-scope fence
                // follows.
                r.stamp(seq, offset_of!(Trace, completing));
                // SAFETY: the slot's completion word.
                unsafe { st_relaxed_sys_u64(host_done + slot as u64 * 8, seq + 1) };
                r.stamp(seq, offset_of!(Trace, completed));
            }
            if flagged && r.trace != 0 {
                // No CTA knows it finished the problem: each raises the last tile's stamps to its
                // own, and the latest flag stands for the completion.
                let now = globaltimer();
                // SAFETY: this CTA's stash (its own stores above).
                let (found, staged) = unsafe {
                    (
                        ld_volatile_u64(r.stash(offset_of!(CtaStash, found))),
                        ld_volatile_u64(r.stash(offset_of!(CtaStash, staged))),
                    )
                };
                r.raise(seq, offset_of!(Trace, last_found), found);
                r.raise(seq, offset_of!(Trace, last_staged), staged);
                r.raise(seq, offset_of!(Trace, last_tile_done), done_at);
                r.raise(seq, offset_of!(Trace, completing), done_at);
                r.raise(seq, offset_of!(Trace, completed), now);
            }
            if r.trace != 0 {
                // SAFETY: this CTA's stash (its own stores above) and the trace buffer.
                unsafe {
                    if tile == 0 {
                        let staged_clock = ld_volatile_u64(r.stash(offset_of!(CtaStash, staged_clock)));
                        r.put(seq, offset_of!(Trace, tile_cycles), done_clock.wrapping_sub(staged_clock));
                    }
                    if last {
                        r.put(
                            seq,
                            offset_of!(Trace, last_found),
                            ld_volatile_u64(r.stash(offset_of!(CtaStash, found))),
                        );
                        r.put(
                            seq,
                            offset_of!(Trace, last_staged),
                            ld_volatile_u64(r.stash(offset_of!(CtaStash, staged))),
                        );
                        r.put(seq, offset_of!(Trace, last_tile_done), done_at);
                    }
                }
            }
        }
    }
}
