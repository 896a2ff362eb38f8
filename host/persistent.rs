//! Persistent mode, host side: the ring (layout in [`crate::abi::ring`], protocol in
//! `kernels/src/QUEUE.md`) and the engines that drain it: the resident CUDA kernel
//! ([`crate::cuda::persistent`]) or CPU threads standing in for its CTAs ([`CpuEngine`]), which
//! follow the same claim/find/complete protocol.
//!
//! One thread writes ([`RingWriter`]: fill slots in host memory, then [`Engine::publish`] makes
//! them visible to the device side), one thread watches completions ([`RingMemory::is_done`]);
//! a slot is reused only after the problem that held it is done. Slot words are accessed with
//! atomics on the host, so a CPU engine reading a slot the writer is refilling is never a data
//! race (the protocol discards such a read).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::abi::ProblemDesc;
use crate::abi::ring::{RingSlot, done_offset, host_bytes, slot_offset};
use crate::error::{Error, Result};

/// Host memory of a ring: `slots` slot images (written by the host, copied to the device ring
/// on publish), then `slots` completion words (written by the device side). 64-byte aligned,
/// zeroed. For CUDA it is pinned and device-mapped.
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

    /// Host address of slot `i`'s image.
    pub(crate) fn slot_ptr(&self, i: u32) -> *const u8 {
        // SAFETY: in bounds for i < slots.
        unsafe { self.base.as_ptr().add(slot_offset(i)) }
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

    /// Whether problem `seq` is done.
    pub fn is_done(&self, seq: u64) -> bool {
        self.done_word((seq % self.slots as u64) as u32).load(Ordering::Acquire) > seq
    }

    /// Writes slot `i` with relaxed atomic stores (callers publish with a release).
    fn store_slot(&self, i: u32, s: &RingSlot) {
        let words: &[u32] = bytemuck::cast_slice(bytemuck::bytes_of(s));
        for (j, w) in words.iter().enumerate() {
            self.u32_at(slot_offset(i) + 4 * j).store(*w, Ordering::Relaxed);
        }
    }

    /// Reads slot `i` with relaxed atomic loads (the CPU engine's view of the device ring).
    fn load_slot(&self, i: u32) -> RingSlot {
        let mut words = [0u32; size_of::<RingSlot>() / 4];
        for (j, w) in words.iter_mut().enumerate() {
            *w = self.u32_at(slot_offset(i) + 4 * j).load(Ordering::Relaxed);
        }
        bytemuck::pod_read_unaligned(bytemuck::cast_slice::<u32, u8>(&words))
    }
}

/// The device side of a ring.
pub trait Engine: Send + Sync {
    /// Makes the slots of problems `from..to` (written, in order) visible to the device side,
    /// then publishes `to` problems.
    fn publish(&self, mem: &RingMemory, from: u64, to: u64) -> Result<()>;
    /// Tells the device side the host is alive (it stops by itself after the timeout).
    fn beat(&self, n: u64);
    /// Asks the device side to stop once nothing published needs it.
    fn request_stop(&self);
    /// Waits for the device side to stop; returns the first device error code (0: none).
    fn join(&self) -> Result<u32>;
}

/// The ring's single writer.
pub struct RingWriter {
    mem: Arc<RingMemory>,
    engine: Arc<dyn Engine>,
    next_seq: u64,
    next_tile: u64,
    published: u64,
}

impl RingWriter {
    /// A writer for a fresh ring and its engine.
    pub fn new(mem: Arc<RingMemory>, engine: Arc<dyn Engine>) -> RingWriter {
        RingWriter { mem, engine, next_seq: 0, next_tile: 0, published: 0 }
    }

    /// Whether the slot the next problem needs is free (its previous problem is done).
    pub fn has_room(&self) -> bool {
        let n = self.mem.slots as u64;
        self.next_seq < n || self.mem.is_done(self.next_seq - n)
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
    pub fn publish(&mut self) -> Result<()> {
        if self.published < self.next_seq {
            fence(Ordering::Release);
            self.engine.publish(&self.mem, self.published, self.next_seq)?;
            self.published = self.next_seq;
        }
        Ok(())
    }

    /// Problems written so far.
    pub fn written(&self) -> u64 {
        self.next_seq
    }
}

/// CPU threads running the resident kernel's protocol (the stand-in for CTAs in CI).
pub struct CpuEngine {
    state: Arc<CpuState>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct CpuState {
    claim: AtomicU64,
    published: AtomicU64,
    stop: AtomicBool,
    /// Per slot: `seq + 1` of its last finished problem (the device-side done words).
    dev_done: Vec<AtomicU64>,
    done_ctr: Vec<AtomicU32>,
}

impl CpuEngine {
    /// Starts `workers` threads on `mem` (its problems' addresses point into a CPU pool).
    pub fn start(mem: Arc<RingMemory>, workers: usize) -> CpuEngine {
        let n = mem.slots as usize;
        let state = Arc::new(CpuState {
            claim: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stop: AtomicBool::new(false),
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
        CpuEngine { state, threads: Mutex::new(threads) }
    }
}

impl Engine for CpuEngine {
    fn publish(&self, _mem: &RingMemory, _from: u64, to: u64) -> Result<()> {
        // The CPU side reads the host slots directly: the release store is the whole copy.
        self.state.published.store(to, Ordering::Release);
        Ok(())
    }

    fn beat(&self, _n: u64) {}

    fn request_stop(&self) {
        self.state.stop.store(true, Ordering::Release);
    }

    fn join(&self) -> Result<u32> {
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in threads {
            t.join().map_err(|_| Error::RoundFailed("a CPU CTA panicked".into()))?;
        }
        Ok(0)
    }
}

/// One CPU "CTA": the loop of `kernels/src/persistent.rs`, step for step.
fn cpu_cta(mem: &RingMemory, st: &CpuState) {
    let slots = mem.slots as u64;
    let mut cursor = 0u64;
    loop {
        let g = st.claim.fetch_add(1, Ordering::Relaxed);
        let mut idle = Instant::now();
        let found = loop {
            let q = cursor;
            if st.published.load(Ordering::Acquire) <= q {
                if st.stop.load(Ordering::Acquire) && st.published.load(Ordering::Acquire) <= q {
                    break None;
                }
                if idle.elapsed() > Duration::from_micros(50) {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle = Instant::now();
            let i = (q % slots) as usize;
            if st.dev_done[i].load(Ordering::Acquire) > q {
                cursor += 1;
                continue;
            }
            let slot = mem.load_slot(i as u32);
            fence(Ordering::Acquire);
            if st.dev_done[i].load(Ordering::Acquire) > q || slot.seq != q {
                cursor += 1; // finished while we read: the writer may be refilling the slot
                continue;
            }
            if g < slot.first_tile + slot.tiles as u64 {
                break Some((q, slot, (g - slot.first_tile) as u32));
            }
            cursor += 1;
        };
        let Some((seq, slot, tile)) = found else { return };
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
