//! The persistent megakernel: a grid sized to fill every SM once, each CTA claiming tiles of a
//! round from a device-side queue until none are left. Protocol and memory ordering: `QUEUE.md`.

use crate::abi::{ProblemDesc, SMEM_HEADER_BYTES, TileDesc, TileKind, status};
use crate::arch::{
    atom_add_relaxed_gpu_u64, atom_cas_relaxed_gpu_u32, fence_acq_rel_gpu, ld_global_nc_v4_u32,
    ld_shared_u32, red_add_release_gpu_u32, smem_base, st_shared_u32, sync_threads, thread_idx_x,
};
use crate::epilogue::Epilogue;
use crate::gemv::gemv_tile;
use crate::sgemm::sgemm_tile;

/// Reads a 16-byte tile descriptor.
///
/// # Safety
/// `addr` is a 16-byte aligned descriptor the host wrote before the launch.
#[inline(always)]
unsafe fn load_tile(addr: u64) -> TileDesc {
    // SAFETY: the caller guarantees the address.
    let w = unsafe { ld_global_nc_v4_u32(addr) };
    TileDesc {
        problem: w[0],
        tile_m: w[1],
        tile_n: w[2],
        _reserved: w[3],
    }
}

/// Reads a 96-byte problem descriptor.
///
/// # Safety
/// `addr` is a 16-byte aligned descriptor the host wrote before the launch.
#[inline(always)]
unsafe fn load_problem(addr: u64) -> ProblemDesc {
    let mut w = [0u32; 24];
    for i in 0..6 {
        // SAFETY: the caller guarantees 96 readable bytes at `addr`.
        let v = unsafe { ld_global_nc_v4_u32(addr + i as u64 * 16) };
        w[i * 4..i * 4 + 4].copy_from_slice(&v);
    }
    // SAFETY: `ProblemDesc` is `repr(C)`, 96 bytes of u32/u64/f32 fields with no padding (the ABI
    // asserts it): every bit pattern is a valid value.
    unsafe { core::mem::transmute::<[u32; 24], ProblemDesc>(w) }
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

/// Runs one tile. Returns the problem's completion slot, or `None` (after reporting) when the
/// descriptors are not runnable; then nothing is read or written for it.
///
/// # Safety
/// All threads of the CTA call this with the same arguments; descriptors come from a validated
/// round; `smem` has `TileKind::megakernel_smem_bytes - SMEM_HEADER_BYTES` bytes.
#[inline(always)]
unsafe fn run_tile(
    problems: u64,
    num_problems: u32,
    t: TileDesc,
    smem: u32,
    status_addr: u64,
) -> Option<u32> {
    let tid = thread_idx_x();
    if t.problem >= num_problems {
        if tid == 0 {
            // SAFETY: the launch's status word.
            unsafe { report(status_addr, status::BAD_PROBLEM) };
        }
        return None;
    }
    // SAFETY: `t.problem < num_problems`: inside the round's problem array.
    let p = unsafe { load_problem(problems + t.problem as u64 * 96) };
    let fail = |code| {
        if tid == 0 {
            // SAFETY: the launch's status word.
            unsafe { report(status_addr, code) };
        }
        None
    };
    if t.tile_m >= p.tiles_m || t.tile_n >= p.tiles_n {
        return fail(status::BAD_TILE_COORD);
    }
    let Some(epi) = Epilogue::new(&p) else {
        return fail(status::BAD_EPILOGUE);
    };
    let (tm, tn) = (t.tile_m, t.tile_n);
    // SAFETY (every arm): the problem is validated and `supports` its kind (host-side chooser);
    // `smem` is sized for the largest routine.
    match TileKind::from_u32(p.tile_kind) {
        Some(TileKind::Sgemm128x128) => unsafe {
            sgemm_tile::<128, 128, 8, 8, 8>(&p, &epi, tm, tn, smem)
        },
        Some(TileKind::Sgemm128x64) => unsafe {
            sgemm_tile::<128, 64, 8, 8, 4>(&p, &epi, tm, tn, smem)
        },
        Some(TileKind::Sgemm64x64) => unsafe {
            sgemm_tile::<64, 64, 8, 4, 4>(&p, &epi, tm, tn, smem)
        },
        Some(TileKind::Gemv32) => unsafe { gemv_tile::<4>(&p, &epi, tm) },
        Some(TileKind::Gemv64) => unsafe { gemv_tile::<8>(&p, &epi, tm) },
        None => return fail(status::BAD_TILE_KIND),
    }
    Some(p.completion)
}

/// Claims the next tile index of the round: a relaxed 64-bit ticket minus the round's base.
///
/// # Safety
/// `queue` is the 8-byte queue head.
#[inline(always)]
unsafe fn claim(queue: u64, base: u64) -> u32 {
    // SAFETY: the caller guarantees the address.
    let ticket = unsafe { atom_add_relaxed_gpu_u64(queue, 1) }.wrapping_sub(base);
    if ticket > u32::MAX as u64 {
        u32::MAX
    } else {
        ticket as u32
    }
}

/// Round-per-launch entry point. Launch with `BLOCK_THREADS` threads, any grid (the host sizes it
/// from occupancy to fill every SM once) and `TileKind::megakernel_smem_bytes()` of dynamic shared
/// memory. Every CTA claims tile indices `queue - queue_base` until one is past `num_tiles`, so a
/// launch moves the queue head by exactly `num_tiles + gridDim.x`.
///
/// `done[slot]` counts finished tiles per completion slot (release increments); `status` receives
/// the first error code.
///
/// # Safety
/// The addresses are the round's device buffers as the host backend laid them out, holding
/// validated descriptors.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tilemux_round(
    problems: u64,
    num_problems: u32,
    tiles: u64,
    num_tiles: u32,
    queue: u64,
    queue_base: u64,
    done: u64,
    status_addr: u64,
) {
    let tid = thread_idx_x();
    let header = smem_base();
    let smem = header + SMEM_HEADER_BYTES;

    // SAFETY: `queue` is the round's queue head (contract of this kernel).
    let mut next = if tid == 0 {
        unsafe { claim(queue, queue_base) }
    } else {
        0
    };
    loop {
        if tid == 0 {
            // SAFETY: the header's first word is reserved for the claim broadcast.
            unsafe { st_shared_u32(header, next) };
        }
        sync_threads();
        // SAFETY: as above; written before the barrier.
        let idx = unsafe { ld_shared_u32(header) };
        if idx >= num_tiles {
            break;
        }
        if tid == 0 {
            // Prefetch the next claim: its latency hides behind this tile.
            // SAFETY: as above.
            next = unsafe { claim(queue, queue_base) };
        }
        // SAFETY: idx < num_tiles: inside the round's tile array; the rest per this kernel's
        // contract.
        let slot = unsafe {
            run_tile(
                problems,
                num_problems,
                load_tile(tiles + idx as u64 * 16),
                smem,
                status_addr,
            )
        };
        // Every thread's stores of this tile are issued and shared memory is free again.
        sync_threads();
        if let Some(slot) = slot {
            if tid == 0 {
                fence_acq_rel_gpu();
                // SAFETY: the host sized `done` for every completion slot of the round.
                unsafe { red_add_release_gpu_u32(done + slot as u64 * 4, 1) };
            }
        }
    }
}
