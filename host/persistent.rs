//! Persistent mode, host side: the ring (layout in [`crate::abi::ring`], protocol in
//! `kernels/src/QUEUE.md`) and the engines that drain it: the resident CUDA kernel
//! ([`crate::cuda::persistent`]) or CPU threads standing in for its worker CTAs ([`CpuEngine`]),
//! which follow the same claim/find/complete protocol.
//!
//! One thread writes ([`RingWriter`]: fill slots in host memory, then one release store of the
//! header's `published` word publishes them; no driver call), one thread watches completions
//! ([`RingMemory::is_done`]);
//! a slot is reused only after the problem that held it is done. Slot words are accessed with
//! atomics on the host, so a CPU engine reading a slot the writer is refilling is never a data
//! race (the protocol discards such a read).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::abi::ProblemDesc;
use crate::abi::ring::{HostHeader, RingSlot, done_offset, host_bytes, host_slot_offset};
use crate::error::{Error, Result};

/// Host memory of a ring: the [`HostHeader`] (published count, heartbeat, stop), `slots` slot
/// images (written by the host, copied to the device ring by the forwarder CTA), then `slots`
/// completion words (written by the device side). 64-byte aligned, zeroed. For CUDA it is
/// pinned and device-mapped.
pub struct RingMemory {
    base: NonNull<u8>,
    slots: u32,
    owner: Owner,
}

enum Owner {
    Heap(Layout),
    Pinned(crate::cuda::PinnedBuffer),
}

// SAFETY: the ring is shared memory accessed only through atomics (and DMA of published,
// stable slots).
unsafe impl Send for RingMemory {}
// SAFETY: as above.
unsafe impl Sync for RingMemory {}

impl Drop for RingMemory {
    fn drop(&mut self) {
        if let Owner::Heap(layout) = self.owner {
            // SAFETY: allocated in `on_heap` with this layout.
            unsafe { dealloc(self.base.as_ptr(), layout) }
        }
    }
}

impl RingMemory {
    /// A ring in ordinary host memory (the CPU engine's).
    pub fn on_heap(slots: u32) -> Result<RingMemory> {
        let layout = Layout::from_size_align(host_bytes(slots), 64).map_err(|e| Error::Config(e.to_string()))?;
        // SAFETY: non-zero size (callers ask for at least one slot).
        let base =
            NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(Error::Config("ring allocation failed".into()))?;
        Ok(RingMemory { base, slots, owner: Owner::Heap(layout) })
    }

    /// A ring in pinned, device-mapped memory (the CUDA engine's); `buf` is zeroed.
    pub(crate) fn pinned(slots: u32, buf: crate::cuda::PinnedBuffer) -> Result<RingMemory> {
        let base = NonNull::new(buf.ptr()).ok_or(Error::Config("null pinned ring".into()))?;
        Ok(RingMemory { base, slots, owner: Owner::Pinned(buf) })
    }

    /// Device address of the block (CUDA: the mapped address).
    pub(crate) fn device_base(&self) -> Result<u64> {
        match &self.owner {
            Owner::Pinned(b) => b.device_addr(),
            Owner::Heap(_) => Ok(self.base.as_ptr() as u64),
        }
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is 8-aligned inside the block; the word is only accessed atomically.
        unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is 4-aligned inside the block; the word is only accessed atomically.
        unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU32) }
    }

    /// The completion word of slot `i` (`seq + 1` of its last finished problem).
    pub fn done_word(&self, i: u32) -> &AtomicU64 {
        self.u64_at(done_offset(self.slots, i))
    }

    /// Publishes problems `..to` (their slots written): one release store, which the device
    /// side's acquire of the word pairs with.
    pub fn publish(&self, to: u64) {
        self.u64_at(std::mem::offset_of!(HostHeader, published)).store(to, Ordering::Release);
    }

    /// Problems published.
    pub fn published(&self) -> u64 {
        self.u64_at(std::mem::offset_of!(HostHeader, published)).load(Ordering::Acquire)
    }

    /// Tells the device side the host is alive (it stops by itself after its timeout without a
    /// change).
    pub fn beat(&self, n: u64) {
        self.u64_at(std::mem::offset_of!(HostHeader, heartbeat)).store(n, Ordering::Relaxed);
    }

    /// Asks the device side to stop once nothing published needs it (after the last publish).
    pub fn request_stop(&self) {
        self.u64_at(std::mem::offset_of!(HostHeader, stop)).store(1, Ordering::Release);
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.u64_at(std::mem::offset_of!(HostHeader, stop)).load(Ordering::Acquire) != 0
    }

    /// Whether problem `seq` is done.
    pub fn is_done(&self, seq: u64) -> bool {
        self.done_word((seq % self.slots as u64) as u32).load(Ordering::Acquire) > seq
    }

    /// Writes slot `i` with relaxed atomic stores (callers publish with a release).
    fn store_slot(&self, i: u32, s: &RingSlot) {
        let words: &[u32] = bytemuck::cast_slice(bytemuck::bytes_of(s));
        for (j, w) in words.iter().enumerate() {
            self.u32_at(host_slot_offset(i) + 4 * j).store(*w, Ordering::Relaxed);
        }
    }

    /// Reads slot `i` with relaxed atomic loads (the CPU engine's view of the device ring).
    fn load_slot(&self, i: u32) -> RingSlot {
        let mut words = [0u32; size_of::<RingSlot>() / 4];
        for (j, w) in words.iter_mut().enumerate() {
            *w = self.u32_at(host_slot_offset(i) + 4 * j).load(Ordering::Relaxed);
        }
        bytemuck::pod_read_unaligned(bytemuck::cast_slice::<u32, u8>(&words))
    }
}

/// The device side of a ring (it learns of work, heartbeats and the stop request through the
/// ring's header: [`RingMemory::publish`], [`RingMemory::beat`], [`RingMemory::request_stop`]).
pub trait Engine: Send + Sync {
    /// Waits for the device side to stop (after [`RingMemory::request_stop`] or its heartbeat
    /// timeout); returns the first device error code (0: none).
    fn join(&self) -> Result<u32>;
}

/// The ring's single writer.
pub struct RingWriter {
    mem: Arc<RingMemory>,
    next_seq: u64,
    next_tile: u64,
    published: u64,
}

impl RingWriter {
    /// A writer for a fresh ring.
    pub fn new(mem: Arc<RingMemory>) -> RingWriter {
        RingWriter { mem, next_seq: 0, next_tile: 0, published: 0 }
    }

    /// Whether the slot the next problem needs is free (its previous problem is done).
    pub fn has_room(&self) -> bool {
        let n = self.mem.slots as u64;
        self.next_seq < n || self.mem.is_done(self.next_seq - n)
    }

    /// Whether the slots the next `n` problems need are all free.
    pub fn has_room_for(&self, n: u64) -> bool {
        let slots = self.mem.slots as u64;
        n <= slots && (self.next_seq..self.next_seq + n).all(|q| q < slots || self.mem.is_done(q - slots))
    }

    /// Writes `p` (tile grid set, `k_splits == 1`) into the next slot without publishing it.
    /// Returns its sequence number. Callers check [`RingWriter::has_room`] first.
    pub fn write(&mut self, mut p: ProblemDesc) -> u64 {
        assert!(self.has_room(), "RingWriter::write without room");
        let seq = self.next_seq;
        let i = (seq % self.mem.slots as u64) as u32;
        p.completion = i;
        let tiles = p.tile_count();
        // The slot's previous problem is done (acquired in `has_room`); this fence orders that
        // before the refill, so a reader that sees any refilled word also sees the slot done
        // on its re-check and discards what it read.
        fence(Ordering::Release);
        self.mem.store_slot(i, &RingSlot { seq, first_tile: self.next_tile, tiles, _reserved: [0; 3], problem: p });
        self.next_seq += 1;
        self.next_tile += tiles as u64;
        seq
    }

    /// Publishes every written problem.
    pub fn publish(&mut self) {
        if self.published < self.next_seq {
            self.mem.publish(self.next_seq);
            self.published = self.next_seq;
        }
    }

    /// Problems written so far.
    pub fn written(&self) -> u64 {
        self.next_seq
    }
}

/// CPU threads running the resident kernel's worker protocol (the stand-in for CTAs in CI): they
/// read the host block directly, so the forwarder's copy is the identity.
pub struct CpuEngine {
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct CpuState {
    claim: AtomicU64,
    /// Per slot: `seq + 1` of its last finished problem (the device-side done words).
    dev_done: Vec<AtomicU64>,
    done_ctr: Vec<AtomicU32>,
}

/// Problems a worker looks through at once (the kernel's block size).
const WINDOW: u64 = crate::abi::BLOCK_THREADS as u64;

impl CpuEngine {
    /// Starts `workers` threads on `mem` (its problems' addresses point into a CPU pool).
    pub fn start(mem: Arc<RingMemory>, workers: usize) -> CpuEngine {
        let n = mem.slots as usize;
        let state = Arc::new(CpuState {
            claim: AtomicU64::new(0),
            dev_done: (0..n).map(|_| AtomicU64::new(0)).collect(),
            done_ctr: (0..n).map(|_| AtomicU32::new(0)).collect(),
        });
        let threads = (0..workers.max(1))
            .map(|i| {
                let (mem, state) = (mem.clone(), state.clone());
                std::thread::Builder::new()
                    .name(format!("tilemux-cta-{i}"))
                    .spawn(move || cpu_cta(&mem, &state))
                    .expect("spawning a CPU CTA")
            })
            .collect();
        CpuEngine { threads: Mutex::new(threads) }
    }
}

impl Engine for CpuEngine {
    fn join(&self) -> Result<u32> {
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in threads {
            t.join().map_err(|_| Error::RoundFailed("a CPU CTA panicked".into()))?;
        }
        Ok(0)
    }
}

/// Waits until more than `cursor` problems are published; `None` once a stop was requested and
/// none past `cursor` will come (the worker's `wait_published`).
fn cpu_wait_published(mem: &RingMemory, cursor: u64) -> Option<u64> {
    let idle = Instant::now();
    loop {
        let p = mem.published();
        if p > cursor {
            return Some(p);
        }
        if mem.stop_requested() && mem.published() <= cursor {
            return None;
        }
        if idle.elapsed() > Duration::from_micros(50) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// One CPU "CTA": the worker loop of `kernels/src/persistent.rs`, step for step (the window of
/// candidates the kernel's threads check at once is checked in a loop here).
fn cpu_cta(mem: &RingMemory, st: &CpuState) {
    let slots = mem.slots as u64;
    let mut cursor = 0u64;
    loop {
        let g = st.claim.fetch_add(1, Ordering::Relaxed);
        let found = 'find: loop {
            let Some(p) = cpu_wait_published(mem, cursor) else { break None };
            let end = p.min(cursor + WINDOW);
            for q in cursor..end {
                let i = (q % slots) as usize;
                let slot = mem.load_slot(i as u32);
                if slot.seq == q && slot.first_tile <= g && g < slot.first_tile + slot.tiles as u64 {
                    // Finished while we read: the writer may be refilling the slot.
                    fence(Ordering::Acquire);
                    if st.dev_done[i].load(Ordering::Acquire) <= q {
                        break 'find Some((q, slot, (g - slot.first_tile) as u32));
                    }
                }
            }
            cursor = end;
        };
        let Some((seq, slot, tile)) = found else { return };
        cursor = seq;
        let p = slot.problem;
        let t = crate::abi::TileDesc {
            problem: 0,
            tile_m: tile / p.tiles_n.max(1),
            tile_n: tile % p.tiles_n.max(1),
            split: 0,
        };
        // SAFETY: the runtime validated the problem against the CPU pool (and checked the round);
        // the scheduler keeps in-flight problems free of hazards, so this tile's output is
        // touched by no one else.
        unsafe { crate::cpu::run_tile(&p, &t) };
        let i = (seq % slots) as usize;
        if st.done_ctr[i].fetch_add(1, Ordering::AcqRel) + 1 == slot.tiles {
            st.done_ctr[i].store(0, Ordering::Relaxed);
            st.dev_done[i].store(seq + 1, Ordering::Release);
            mem.done_word(i as u32).store(seq + 1, Ordering::Release);
        }
    }
}
