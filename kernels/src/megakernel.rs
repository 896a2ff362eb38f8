//! The persistent megakernel: a grid sized to fill every SM once, each CTA claiming tiles of a
//! round from a device-side queue until none are left. Protocol and memory ordering: `QUEUE.md`.

use crate::abi::{Activation, BiasMode, SMEM_DESC_OFFSET, SMEM_HEADER_BYTES, TileDesc, TileKind, status};
use crate::arch::{
    atom_add_relaxed_gpu_u64, atom_cas_relaxed_gpu_u32, ld_global_nc_u32, ld_global_nc_v4_u32, ld_shared_u32,
    red_add_relaxed_gpu_u32, smem_base, st_shared_u32, st_shared_v4_u32, sync_threads, thread_idx_x,
};
use crate::gemv::gemv_tile;
use crate::problem::Problem;
use crate::sgemm::sgemm_tile;

/// Reads a 16-byte tile descriptor.
///
/// # Safety
/// `addr` is a 16-byte aligned descriptor the host wrote before the launch.
#[inline(always)]
unsafe fn load_tile(addr: u64) -> TileDesc {
    // SAFETY: the caller guarantees the address.
    let w = unsafe { ld_global_nc_v4_u32(addr) };
    TileDesc { problem: w[0], tile_m: w[1], tile_n: w[2], split: w[3] }
}

/// Copies problem `index`'s 128-byte descriptor into shared memory at `dst`: threads 0..8 move
/// 16 bytes each. Callers synchronise before reading it.
///
/// # Safety
/// `problems + index·96` is a descriptor the host wrote before the launch; `dst` is the
/// descriptor slot of the megakernel's shared header.
#[inline(always)]
unsafe fn stage_problem(tid: u32, problems: u64, index: u32, dst: u32) {
    if tid < 8 {
        // SAFETY: the caller guarantees both addresses; each thread moves its 16 bytes.
        unsafe {
            let w = ld_global_nc_v4_u32(problems + index as u64 * 128 + tid as u64 * 16);
            st_shared_v4_u32(dst + tid * 16, w);
        }
    }
}

/// Records the first error of the launch; later ones are dropped.
///
/// # Safety
/// `status` is the launch's 4-byte status word.
#[inline(always)]
unsafe fn report(status: u64, code: u32) {
    // SAFETY: the caller guarantees the address.
    unsafe { atom_cas_relaxed_gpu_u32(status, 0, code) };
}

/// Runs one tile of the staged problem `d`. Returns its completion slot, or `None` (after
/// reporting) when the descriptors are not runnable; then nothing is read or written for it.
/// `WIDE`: this is the wide build, which also runs the [`TileKind::is_wide`] kinds.
///
/// # Safety
/// All threads of the CTA call this with the same arguments after a barrier that follows the
/// staging of `d`; descriptors come from a validated round; `smem` has
/// `TileKind::megakernel_smem_bytes - SMEM_HEADER_BYTES` bytes.
#[inline(always)]
pub(crate) unsafe fn run_tile<const WIDE: bool>(d: Problem, t: TileDesc, smem: u32, status_addr: u64) -> Option<u32> {
    let fail = |code| {
        if thread_idx_x() == 0 {
            // SAFETY: the launch's status word.
            unsafe { report(status_addr, code) };
        }
        None
    };
    let kind = TileKind::from_u32(d.tile_kind());
    let gemv = matches!(kind, Some(k) if k.is_gemv());
    let part = t.part();
    if t.tile_m >= d.tiles_m()
        || t.tile_n >= d.tiles_n()
        || !part.fits(d.k_splits(), d.k_parts())
        || (gemv && (d.k_splits() != 1 || part.count != 1))
    {
        return fail(status::BAD_TILE_COORD);
    }
    if Activation::from_u32(d.activation()).is_none() || BiasMode::from_u32(d.bias_mode()).is_none() {
        return fail(status::BAD_EPILOGUE);
    }
    let (tm, tn, ks) = (t.tile_m, t.tile_n, t.split);
    // SAFETY (every arm): the problem is validated and `supports` its kind (host-side chooser);
    // `smem` is sized for the largest routine.
    match kind {
        Some(TileKind::Sgemm128x128) => unsafe { sgemm_tile::<128, 128, 8, 8, 8, 1, 1>(d, tm, tn, ks, smem) },
        Some(TileKind::Sgemm128x64) => unsafe { sgemm_tile::<128, 64, 8, 8, 4, 1, 1>(d, tm, tn, ks, smem) },
        Some(TileKind::Sgemm64x64) => unsafe { sgemm_tile::<64, 64, 8, 4, 4, 1, 1>(d, tm, tn, ks, smem) },
        Some(TileKind::Gemv32) => unsafe { gemv_tile::<4>(d, tm) },
        Some(TileKind::Gemv64) => unsafe { gemv_tile::<8>(d, tm) },
        Some(TileKind::Gemv8) => unsafe { gemv_tile::<1>(d, tm) },
        Some(TileKind::Sgemm256x128) if WIDE => unsafe { sgemm_tile::<256, 128, 8, 16, 8, 2, 1>(d, tm, tn, ks, smem) },
        Some(TileKind::Sgemm256x128) => return fail(status::NEEDS_WIDE),
        None => return fail(status::BAD_TILE_KIND),
    }
    Some(d.completion())
}

/// Claims the next tile index of the round: a relaxed 64-bit ticket minus the round's base.
///
/// # Safety
/// `queue` is the 8-byte queue head.
#[inline(always)]
unsafe fn claim(queue: u64, base: u64) -> u32 {
    // SAFETY: the caller guarantees the address.
    let ticket = unsafe { atom_add_relaxed_gpu_u64(queue, 1) }.wrapping_sub(base);
    if ticket > u32::MAX as u64 { u32::MAX } else { ticket as u32 }
}

/// Defines a round entry point that runs [`round`] with the given `WIDE`.
macro_rules! round_entry {
    ($(#[$doc:meta])* $name:ident, $wide:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            problems: u64,
            num_problems: u32,
            tiles: u64,
            num_tiles: u32,
            queue: u64,
            queue_base: u64,
            done: u64,
            status_addr: u64,
            units: u64,
            num_units: u32,
        ) {
            // SAFETY: this entry point's contract.
            unsafe {
                round::<$wide>(
                    problems,
                    num_problems,
                    tiles,
                    num_tiles,
                    queue,
                    queue_base,
                    done,
                    status_addr,
                    units,
                    num_units,
                )
            }
        }
    };
}

round_entry!(
    /// Round-per-launch entry point. Launch with `BLOCK_THREADS` threads, any grid (the host sizes
    /// it from occupancy to fill every SM once) and `TileKind::megakernel_smem_bytes()` of dynamic
    /// shared memory. Every CTA claims unit indices `queue - queue_base` until one is past the
    /// unit count and runs each unit's tiles in order. With `units == 0` every tile is a unit of
    /// its own (`num_units` unused); else `units` holds `num_units + 1` increasing tile offsets
    /// and unit `u` is tiles `units[u] .. units[u + 1]` (a stream-K balanced round: one CTA's
    /// share of the work). A launch moves the queue head by exactly the unit count plus
    /// `gridDim.x`. A CTA claims its next unit as it starts one (the claim's latency hides
    /// behind the unit).
    ///
    /// `done[slot]` counts finished tiles per completion slot (relaxed increments: the host reads
    /// them after the launch); `status` receives the first error code. The host JIT-caps this
    /// build's registers (two CTAs per SM); a tile of a [`TileKind::is_wide`] kind reports
    /// `status::NEEDS_WIDE`.
    ///
    /// # Safety
    /// The addresses are the round's device buffers as the host backend laid them out, holding
    /// validated descriptors.
    tilemux_round,
    false
);

round_entry!(
    /// The wide build of [`tilemux_round`]: the same protocol and parameters, every tile kind
    /// including the [`TileKind::is_wide`] ones, `TileKind::wide_smem_bytes()` of dynamic shared
    /// memory. The host loads it without a register cap and launches one CTA per SM.
    ///
    /// # Safety
    /// As [`tilemux_round`].
    tilemux_round_wide,
    true
);

/// The body of both round entry points.
///
/// # Safety
/// As [`tilemux_round`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn round<const WIDE: bool>(
    problems: u64,
    num_problems: u32,
    tiles: u64,
    num_tiles: u32,
    queue: u64,
    queue_base: u64,
    done: u64,
    status_addr: u64,
    units: u64,
    num_units: u32,
) {
    let tid = thread_idx_x();
    let header = smem_base();
    let desc = Problem(header + SMEM_DESC_OFFSET);
    let smem = header + SMEM_HEADER_BYTES;
    let claimable = if units == 0 { num_tiles } else { num_units };

    if tid == 0 {
        // SAFETY: `queue` is the round's queue head; the header's first word is the claim slot.
        unsafe { st_shared_u32(header, claim(queue, queue_base)) };
    }
    sync_threads();
    loop {
        // SAFETY: the claim slot, written before the last barrier.
        let u = unsafe { ld_shared_u32(header) };
        if u >= claimable {
            break;
        }
        let (first, end) = if units == 0 {
            (u, u + 1)
        } else {
            // SAFETY: u < num_units: inside the unit array's num_units + 1 words.
            unsafe { (ld_global_nc_u32(units + u as u64 * 4), ld_global_nc_u32(units + u as u64 * 4 + 4)) }
        };
        // Prefetch the next claim: its latency hides behind this unit.
        // SAFETY: as above.
        let next = if tid == 0 { unsafe { claim(queue, queue_base) } } else { 0 };
        if first >= end || end > num_tiles {
            // A malformed unit (the host's check rules it out): nothing of it runs.
            if tid == 0 {
                // SAFETY: the launch's status word.
                unsafe { report(status_addr, status::BAD_TILE_COORD) };
            }
            sync_threads(); // every thread has read the claim slot
            if tid == 0 {
                // SAFETY: the claim slot, read by every thread before the barrier.
                unsafe { st_shared_u32(header, next) };
            }
            sync_threads();
            continue;
        }
        for idx in first..end {
            // SAFETY: idx < end <= num_tiles: inside the round's tile array.
            let t = unsafe { load_tile(tiles + idx as u64 * 16) };
            let valid = t.problem < num_problems;
            if valid {
                // SAFETY: t.problem < num_problems; the descriptor slot is free (last read before
                // the previous barrier).
                unsafe { stage_problem(tid, problems, t.problem, desc.0) };
            }
            sync_threads(); // descriptor staged; every thread has read the claim slot
            let slot = if valid {
                // SAFETY: staged above; the rest per this kernel's contract.
                unsafe { run_tile::<WIDE>(desc, t, smem, status_addr) }
            } else {
                if tid == 0 {
                    // SAFETY: the launch's status word.
                    unsafe { report(status_addr, status::BAD_PROBLEM) };
                }
                None
            };
            if tid == 0 && idx + 1 == end {
                // SAFETY: every thread read the claim slot before the barrier above.
                unsafe { st_shared_u32(header, next) };
            }
            // The tile's stores are issued, shared memory (stages, descriptor) is free again and
            // (after a unit's last tile) the next claim is visible.
            sync_threads();
            if let Some(slot) = slot {
                if tid == 0 {
                    // Relaxed: only the host reads `done`, after the launch completes (QUEUE.md).
                    // SAFETY: the host sized `done` for every completion slot of the round.
                    unsafe { red_add_relaxed_gpu_u32(done + slot as u64 * 4, 1) };
                }
            }
        }
    }
}

/// One entry point per tile kind (feature `probes`), for `scripts/ptx-report.sh`: each routine's
/// own register and spill count. Never launched.
#[cfg(feature = "probes")]
mod probes {
    use super::*;

    macro_rules! probe {
        ($name:ident, $body:expr) => {
            /// Probe entry (see the module docs).
            ///
            /// # Safety
            /// Never launched.
            #[unsafe(no_mangle)]
            pub unsafe extern "ptx-kernel" fn $name(tm: u32, tn: u32) {
                let d = Problem(smem_base() + SMEM_DESC_OFFSET);
                let smem = smem_base() + SMEM_HEADER_BYTES;
                let _ = (tn, smem);
                // SAFETY: never launched.
                unsafe { ($body)(d, tm, tn, smem) }
            }
        };
    }
    probe!(probe_sgemm_128x128x8, |d, tm, tn, s| sgemm_tile::<128, 128, 8, 8, 8, 1, 1>(d, tm, tn, 0, s));
    probe!(probe_sgemm_128x64x8, |d, tm, tn, s| sgemm_tile::<128, 64, 8, 8, 4, 1, 1>(d, tm, tn, 0, s));
    probe!(probe_sgemm_64x64x8, |d, tm, tn, s| sgemm_tile::<64, 64, 8, 4, 4, 1, 1>(d, tm, tn, 0, s));
    probe!(probe_gemv_rows32, |d, tm, _tn, _s| gemv_tile::<4>(d, tm));
    probe!(probe_gemv_rows64, |d, tm, _tn, _s| gemv_tile::<8>(d, tm));
    probe!(probe_gemv_rows8, |d, tm, _tn, _s| gemv_tile::<1>(d, tm));
    probe!(probe_sgemm_256x128x8, |d, tm, tn, s| sgemm_tile::<256, 128, 8, 16, 8, 2, 1>(d, tm, tn, 0, s));
}
