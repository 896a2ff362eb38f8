//! Persistent mode, host side: the ring (layout in [`crate::abi::ring`], protocol in
//! `kernels/src/QUEUE.md`) and the engines that drain it: the resident CUDA kernel
//! ([`crate::cuda::persistent`]) or CPU threads standing in for its forwarder and CTAs
//! ([`CpuEngine`]), which follow the same poll/claim/find/complete protocol.
//!
//! One thread writes ([`RingWriter`]: fill a slot's image in host memory, then publish it by
//! storing its stamps; no driver call), completions are watched in the completion words or, for
//! a problem of at most [`FLAG_TILES`] tiles, in its slot's flag line ([`RingMemory::is_done`]);
//! a slot is reused only after the problem that held it is done.
//! Image words are accessed with atomics on the host, so a CPU forwarder reading an image the
//! writer is filling is never a data race (its stamps tell it the image is not there yet).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::abi::ProblemDesc;
use crate::abi::ring::{
    CLAIM_TABLE, Cursor, FLAG_TILES, FLAGGED, HOST_SLOT_BYTES, HOST_SLOT_CHUNKS, HostHeader, IMAGE_WORDS, ImageView,
    Look, MAX_PROBLEM_TILES, RingSlot, done_offset, entry, flags_offset, host_bytes, host_slot_offset, stamp,
};
use crate::error::{Error, Result};

/// Host memory of a ring: the [`HostHeader`] (heartbeat, stop), `slots` stamped
/// slot images (written by the host, polled and copied to the device ring by the forwarder),
/// then `slots` completion words and `slots` flag lines (written by the device side). 64-byte
/// aligned, zeroed. For CUDA it is pinned and device-mapped.
pub struct RingMemory {
    base: NonNull<u8>,
    slots: u32,
    owner: Owner,
    /// Per slot, host memory only: how the problem written into it last completes
    /// ([`SlotMeta`]), for [`RingMemory::is_done`]. Written by the ring's writer before it
    /// publishes the problem.
    meta: Box<[AtomicU64]>,
    /// The slot the ring's writer fills next (a hint for [`RingMemory::prefetch_next_slot`]).
    next_slot: AtomicU32,
}

/// Whether the CPU has `prefetchw` (every x86-64 core since Broadwell; checked once).
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        // PRFCHW: CPUID leaf 0x8000_0001, ECX bit 8 (Linux calls it `3dnowprefetch`).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86-64 CPU.
        unsafe {
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        }
    })
}

/// A slot's [`RingMemory::meta`] word: the low 48 bits of its problem's sequence number, its
/// tile count if it completes by flags (else 0), and its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotMeta {
    seq: u64,
    flag_tiles: u32,
    flag: u8,
}

impl SlotMeta {
    const SEQ_BITS: u32 = 48;
    const SEQ_MASK: u64 = (1 << Self::SEQ_BITS) - 1;

    fn pack(self) -> u64 {
        (self.seq & Self::SEQ_MASK) << 16 | (self.flag_tiles as u64) << 8 | self.flag as u64
    }

    fn unpack(w: u64) -> SlotMeta {
        SlotMeta { seq: w >> 16, flag_tiles: (w >> 8) as u32 & 0xff, flag: w as u8 }
    }
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
        Ok(RingMemory {
            base,
            slots,
            owner: Owner::Heap(layout),
            meta: Self::fresh_meta(slots),
            next_slot: AtomicU32::new(0),
        })
    }

    /// A ring in pinned, device-mapped memory (the CUDA engine's); `buf` is zeroed.
    pub(crate) fn pinned(slots: u32, buf: crate::cuda::PinnedBuffer) -> Result<RingMemory> {
        let base = NonNull::new(buf.ptr()).ok_or(Error::Config("null pinned ring".into()))?;
        Ok(RingMemory {
            base,
            slots,
            owner: Owner::Pinned(buf),
            meta: Self::fresh_meta(slots),
            next_slot: AtomicU32::new(0),
        })
    }

    fn fresh_meta(slots: u32) -> Box<[AtomicU64]> {
        (0..slots).map(|_| AtomicU64::new(0)).collect()
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

    /// Tells the device side the host is alive (it stops by itself after its timeout without a
    /// change).
    pub fn beat(&self, n: u64) {
        self.u64_at(std::mem::offset_of!(HostHeader, heartbeat)).store(n, Ordering::Relaxed);
    }

    /// The heartbeat word (what [`RingMemory::beat`] stored last).
    pub fn heartbeat(&self) -> u64 {
        self.u64_at(std::mem::offset_of!(HostHeader, heartbeat)).load(Ordering::Relaxed)
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
        self.is_done_in((seq % self.slots as u64) as u32, seq)
    }

    /// Whether problem `seq`, in slot `i` (`seq % slots`, known to the caller), is done: its
    /// completion word holds more than `seq`, or, for a problem that completes by flags, each of
    /// its tiles' bytes in the slot's flag line holds its flag. (A slot that already holds a
    /// later problem held `seq` until it was done.) `seq` was written by the ring's writer before
    /// the caller asks (the writer's thread, or one it handed the request to).
    pub fn is_done_in(&self, i: u32, seq: u64) -> bool {
        let m = SlotMeta::unpack(self.meta[i as usize].load(Ordering::Acquire));
        if m.seq != seq & SlotMeta::SEQ_MASK {
            // A later problem (written after `seq` was done), unless the word is older than `seq`.
            return m.seq.wrapping_sub(seq) & SlotMeta::SEQ_MASK < 1 << (SlotMeta::SEQ_BITS - 1);
        }
        if m.flag_tiles == 0 {
            return self.done_word(i).load(Ordering::Acquire) > seq;
        }
        let (line, want) = (flags_offset(self.slots, i), u64::from_ne_bytes([m.flag; 8]));
        let (words, rest) = (m.flag_tiles as usize / 8, m.flag_tiles as usize % 8);
        (0..words).all(|w| self.u64_at(line + 8 * w).load(Ordering::Acquire) == want)
            && (rest == 0 || {
                // The bytes past the problem's last tile are not its: masked off (memory order:
                // byte `t` of the word is bit `8t` once read little-endian).
                let mask = u64::MAX >> (64 - 8 * rest);
                u64::from_le(self.u64_at(line + 8 * words).load(Ordering::Acquire)) & mask == want & mask
            })
    }

    /// Byte `tile` of slot `i`'s flag line.
    pub fn flag(&self, i: u32, tile: u32) -> &AtomicU8 {
        debug_assert!(i < self.slots && tile < FLAG_TILES);
        // SAFETY: inside the block (`host_bytes` covers every slot's flag line); accessed only
        // atomically (the device's stores are single bytes).
        unsafe { &*(self.base.as_ptr().add(flags_offset(self.slots, i) + tile as usize) as *const AtomicU8) }
    }

    /// Asks the cache for slot `next_slot()`'s image lines in a writable state, ahead of the
    /// writer (a hint: the slot may have moved on meanwhile). The forwarder's polls read those
    /// lines across the bus, which leaves them shared; each store the writer makes to a line in
    /// that state first waits for the core to own it again.
    pub fn prefetch_next_slot(&self) {
        #[cfg(target_arch = "x86_64")]
        if has_prefetchw() {
            let i = self.next_slot.load(Ordering::Relaxed).min(self.slots - 1);
            let start = host_slot_offset(i) & !63;
            for line in (start..host_slot_offset(i) + HOST_SLOT_BYTES).step_by(64) {
                // SAFETY: a prefetch reads and writes nothing; the address is inside the block.
                unsafe {
                    std::arch::asm!("prefetchw [{}]", in(reg) self.base.as_ptr().add(line), options(nostack, readonly, preserves_flags))
                };
            }
        }
    }

    /// Records how the problem about to be published in slot `i` completes (the ring's writer,
    /// before the publish).
    fn set_meta(&self, i: u32, m: SlotMeta) {
        self.meta[i as usize].store(m.pack(), Ordering::Release);
    }

    /// Writes slot `i`'s image but its stamps: every word of `s` but `seq`, with relaxed atomic
    /// stores ([`RingMemory::stamp_slot`] publishes it).
    fn store_image(&self, i: u32, s: &RingSlot) {
        let words: &[u32] = bytemuck::cast_slice(bytemuck::bytes_of(s));
        let base = host_slot_offset(i);
        // Chunk by chunk, three data words each (word 0 is the stamp): constant offsets, no
        // division per word.
        for c in 0..HOST_SLOT_CHUNKS {
            for m in 0..3 {
                let j = 3 * c + m;
                if j < IMAGE_WORDS {
                    self.u32_at(base + 16 * c + 4 * (1 + m)).store(words[2 + j], Ordering::Relaxed);
                }
            }
        }
    }

    /// Publishes problem `seq` (its image written in slot `seq % slots`): each chunk's stamp, a
    /// release store after the chunk's data.
    fn stamp_slot(&self, seq: u64) {
        let i = (seq % self.slots as u64) as u32;
        for c in 0..HOST_SLOT_CHUNKS {
            self.u32_at(host_slot_offset(i) + 16 * c).store(stamp(seq), Ordering::Release);
        }
    }

    /// Reads problem `seq`'s image from its slot if every chunk carries its stamp (the CPU
    /// forwarder's poll; acquire loads of the stamps, then the chunks' data).
    fn load_image(&self, seq: u64) -> Option<Image> {
        let i = (seq % self.slots as u64) as u32;
        let mut image = [[0u32; 4]; HOST_SLOT_CHUNKS];
        for (c, chunk) in image.iter_mut().enumerate() {
            let at = host_slot_offset(i) + 16 * c;
            if self.u32_at(at).load(Ordering::Acquire) != stamp(seq) {
                return None;
            }
            *chunk =
                std::array::from_fn(
                    |m| if m == 0 { stamp(seq) } else { self.u32_at(at + 4 * m).load(Ordering::Relaxed) },
                );
        }
        Some(image)
    }
}

/// A slot's image: 13 chunks of a stamp and 12 bytes of the slot (see [`HOST_SLOT_CHUNKS`]).
type Image = [[u32; 4]; HOST_SLOT_CHUNKS];

/// The slot an image holds (`seq` from its stamp and `stamp_hi`).
fn decode(image: &Image) -> RingSlot {
    let mut words = [0u32; size_of::<RingSlot>() / 4];
    for (j, w) in words[2..].iter_mut().enumerate() {
        *w = image[j / 3][1 + j % 3];
    }
    let mut slot: RingSlot = bytemuck::pod_read_unaligned(bytemuck::cast_slice::<u32, u8>(&words));
    slot.seq = ((slot.stamp_hi as u64) << 32 | image[0][0] as u64).wrapping_sub(1);
    slot
}

/// The device side of a ring (it learns of work through the stamped slot images
/// ([`RingWriter::publish`]), of heartbeats and the stop request through the ring's header:
/// [`RingMemory::beat`], [`RingMemory::request_stop`]).
pub trait Engine: Send + Sync {
    /// Waits for the device side to stop (after [`RingMemory::request_stop`] or its heartbeat
    /// timeout); returns the first device error code (0: none).
    fn join(&self) -> Result<u32>;
}

/// The ring's single writer.
pub struct RingWriter {
    mem: Arc<RingMemory>,
    next_seq: u64,
    /// `next_seq % slots`, kept as it moves (no division per problem).
    next_slot: u32,
    next_tile: u64,
    published: u64,
    /// Per slot: tiles of every problem it has held that completes by its counter (the target
    /// the counter reaches when the newest is done).
    slot_tiles: Vec<u64>,
    /// Per slot: the first tile of the problem it holds.
    slot_first: Vec<u64>,
    /// Per slot: what its flag line holds, as `(flag, n)`: each of bytes `0..n` is `flag` or 0
    /// (no device store to it in flight: the slot's problems are done before it is reused).
    slot_flags: Vec<(u8, u32)>,
    /// No problem before this one is unfinished.
    oldest: u64,
    /// `oldest % slots`.
    oldest_slot: u32,
}

impl RingWriter {
    /// A writer for a fresh ring.
    pub fn new(mem: Arc<RingMemory>) -> RingWriter {
        let n = mem.slots as usize;
        RingWriter {
            mem,
            next_seq: 0,
            next_slot: 0,
            next_tile: 0,
            published: 0,
            slot_tiles: vec![0; n],
            slot_first: vec![0; n],
            // A fresh ring's flag lines are zeroed.
            slot_flags: vec![(0, FLAG_TILES); n],
            oldest: 0,
            oldest_slot: 0,
        }
    }

    /// Whether `p` can be written now: the slot the next problem needs is free (its previous
    /// problem is done), and `p`'s tiles keep the tiles in flight within the claim table (they
    /// end at most [`CLAIM_TABLE`] past the oldest unfinished problem's first tile, or the ring
    /// is empty).
    pub fn has_room(&mut self, p: &ProblemDesc) -> bool {
        let n = self.mem.slots;
        while self.oldest < self.next_seq && self.mem.is_done_in(self.oldest_slot, self.oldest) {
            self.oldest += 1;
            self.oldest_slot = if self.oldest_slot + 1 == n { 0 } else { self.oldest_slot + 1 };
        }
        // Everything before `oldest` is done; only an older unfinished problem sends us to the
        // slot's completion (written long ago, so likely out of the cache: a read across the
        // memory system on the critical path of every request otherwise).
        let reuse = self.next_seq.checked_sub(n as u64);
        if reuse.is_some_and(|q| q >= self.oldest && !self.mem.is_done_in(self.next_slot, q)) {
            return false;
        }
        self.oldest == self.next_seq
            || self.next_tile + p.tile_count() as u64 <= self.slot_first[self.oldest_slot as usize] + CLAIM_TABLE
    }

    /// Writes `p` (tile grid set, `k_splits == 1`, 1 to [`MAX_PROBLEM_TILES`] tiles) into the
    /// next slot without publishing it. Returns its sequence number. Callers check
    /// [`RingWriter::has_room`] first.
    pub fn write(&mut self, mut p: ProblemDesc) -> u64 {
        assert!(self.has_room(&p), "RingWriter::write without room");
        let tiles = p.tile_count();
        assert!((1..=MAX_PROBLEM_TILES).contains(&tiles), "a ring problem of {tiles} tiles");
        let (seq, i) = (self.next_seq, self.next_slot);
        p.completion = i;
        self.slot_first[i as usize] = self.next_tile;
        // The slot's previous problem is done (acquired in `has_room`); this fence orders that
        // before the refill.
        fence(Ordering::Release);
        let done_target = if tiles <= FLAG_TILES {
            // By flags: one that none of the bytes of its tiles holds now (zeroing those past the
            // ones known to hold a flag or 0).
            let (old, known) = self.slot_flags[i as usize];
            for t in known..tiles {
                self.mem.flag(i, t).store(0, Ordering::Relaxed);
            }
            let flag = if old == 1 { 2 } else { 1 };
            self.slot_flags[i as usize] = (flag, tiles);
            self.mem.set_meta(i, SlotMeta { seq, flag_tiles: tiles, flag });
            FLAGGED | flag as u64
        } else {
            self.slot_tiles[i as usize] += tiles as u64;
            self.mem.set_meta(i, SlotMeta { seq, flag_tiles: 0, flag: 0 });
            self.slot_tiles[i as usize]
        };
        self.mem.store_image(
            i,
            &RingSlot {
                seq,
                first_tile: self.next_tile,
                tiles,
                stamp_hi: ((seq + 1) >> 32) as u32,
                done_target,
                problem: p,
            },
        );
        crate::runtime::phases::mark(crate::runtime::phases::Step::ImageWritten);
        self.next_seq += 1;
        self.next_slot = if i + 1 == self.mem.slots { 0 } else { i + 1 };
        self.mem.next_slot.store(self.next_slot, Ordering::Relaxed);
        self.next_tile += tiles as u64;
        seq
    }

    /// Publishes every written problem: their stamps, in order.
    pub fn publish(&mut self) {
        if self.published < self.next_seq {
            for q in self.published..self.next_seq {
                self.mem.stamp_slot(q);
            }
            self.published = self.next_seq;
        }
    }

    /// Problems written so far.
    pub fn written(&self) -> u64 {
        self.next_seq
    }
}

/// CPU threads running the resident kernel's protocol (the stand-in for its CTAs in CI): a
/// forwarder thread polls the stamped images, copies each into a device-ring stand-in and
/// publishes its tiles in a claim table; worker threads claim tiles, find them (the slot image
/// their cursor guesses, or the table), run them and count them as the kernel's CTAs do.
pub struct CpuEngine {
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct CpuState {
    claim: AtomicU64,
    /// The device ring: per slot, an image as in the host block.
    ring: Vec<DeviceImage>,
    /// Per slot: tiles finished of every problem it has held.
    done_ctr: Vec<AtomicU64>,
    table: Vec<AtomicU64>,
    tiles_published: AtomicU64,
    /// The forwarder stopped (after its last `tiles_published`).
    stop: AtomicBool,
}

impl CpuEngine {
    /// Starts a forwarder and `workers` threads on `mem` (its problems' addresses point into a
    /// CPU pool). Like the resident kernel, the forwarder stops by itself once the host's
    /// heartbeat has not changed for `heartbeat_timeout` (zero: never).
    pub fn start(mem: Arc<RingMemory>, workers: usize, heartbeat_timeout: Duration) -> CpuEngine {
        let n = mem.slots as usize;
        let state = Arc::new(CpuState {
            claim: AtomicU64::new(0),
            ring: (0..n).map(|_| DeviceImage::default()).collect(),
            done_ctr: (0..n).map(|_| AtomicU64::new(0)).collect(),
            table: (0..CLAIM_TABLE).map(|_| AtomicU64::new(0)).collect(),
            tiles_published: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let spawn = |name: String, worker: bool| {
            let (mem, state) = (mem.clone(), state.clone());
            std::thread::Builder::new()
                .name(name)
                .spawn(
                    move || if worker { cpu_cta(&mem, &state) } else { cpu_forward(&mem, &state, heartbeat_timeout) },
                )
                .expect("spawning a CPU CTA")
        };
        let mut threads = vec![spawn("tilemux-forwarder".into(), false)];
        threads.extend((0..workers.max(1)).map(|i| spawn(format!("tilemux-cta-{i}"), true)));
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

/// Spins, then sleeps in short steps, once `idle` is long ago.
fn idle_wait(idle: Instant) {
    if idle.elapsed() > Duration::from_micros(50) {
        std::thread::sleep(Duration::from_micros(50));
    } else {
        std::hint::spin_loop();
    }
}

/// The forwarder (the kernel's `forward`): problem by problem, in order, until a stop request
/// or `heartbeat_timeout` without a heartbeat change.
fn cpu_forward(mem: &RingMemory, st: &CpuState, heartbeat_timeout: Duration) {
    let (mut q, mut idle, mut stopping) = (0u64, Instant::now(), false);
    let (mut beat, mut beat_at) = (mem.heartbeat(), Instant::now());
    loop {
        let Some(image) = mem.load_image(q) else {
            // A poll after the stop request was seen, and still nothing: all is forwarded.
            if stopping {
                break;
            }
            stopping = mem.stop_requested();
            let b = mem.heartbeat();
            if b != beat {
                (beat, beat_at) = (b, Instant::now());
            } else if !heartbeat_timeout.is_zero() && beat_at.elapsed() > heartbeat_timeout {
                break;
            }
            idle_wait(idle);
            continue;
        };
        let i = (q % mem.slots as u64) as usize;
        st.ring[i].store(&image);
        let slot = decode(&image);
        // Entries (relaxed, as the kernel's: a worker checks the image's stamps); a problem larger
        // than the table publishes its last lap.
        for t in slot.tiles.saturating_sub(CLAIM_TABLE as u32)..slot.tiles {
            let g = slot.first_tile + t as u64;
            st.table[(g % CLAIM_TABLE) as usize].store(entry::pack(g, i as u32, t), Ordering::Relaxed);
        }
        st.tiles_published.store(slot.first_tile + slot.tiles as u64, Ordering::Release);
        q += 1;
        idle = Instant::now();
    }
    st.stop.store(true, Ordering::Release);
}

/// One CPU "CTA": the worker loop of `kernels/src/persistent.rs`, step for step (a poll reads
/// the image its cursor points at and the claim's entry; [`Cursor::step`] decides).
fn cpu_cta(mem: &RingMemory, st: &CpuState) {
    let mut cur = Cursor::new();
    loop {
        let g = st.claim.fetch_add(1, Ordering::Relaxed);
        let idle = Instant::now();
        let (slot, tile) = loop {
            let i = cur.slot;
            let image = st.ring[i as usize].load();
            let view =
                image.as_ref().map_or(ImageView { whole: false, stamp: 0, first_tile: 0, tiles: 0 }, |m| ImageView {
                    whole: m.iter().all(|c| c[0] == m[0][0]),
                    stamp: m[0][0],
                    first_tile: m[0][1] as u64 | (m[0][2] as u64) << 32,
                    tiles: m[0][3],
                });
            let e = st.table[(g % CLAIM_TABLE) as usize].load(Ordering::Acquire);
            match cur.step(g, view, e, mem.slots) {
                Look::Found(tile) => break (decode(&image.expect("a whole image")), tile),
                Look::Next => continue,
                Look::Wait => {}
            }
            if st.stop.load(Ordering::Acquire) && st.tiles_published.load(Ordering::Acquire) <= g {
                return;
            }
            idle_wait(idle);
        };
        let i = (slot.seq % mem.slots as u64) as u32;
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
        if slot.done_target & FLAGGED != 0 {
            mem.flag(i, tile).store(slot.done_target as u8, Ordering::Release);
        } else if st.done_ctr[i as usize].fetch_add(1, Ordering::AcqRel) + 1 == slot.done_target {
            mem.done_word(i).store(slot.seq + 1, Ordering::Release);
        }
    }
}

/// A slot image in the CPU engine's device ring. The kernel reads and writes each 16-byte chunk
/// in one access; host atomics are narrower, so a sequence lock stands in: the forwarder makes
/// the version odd while it rewrites the image, and a reader takes an image only when the
/// version was even and unchanged while it read it.
#[derive(Default)]
struct DeviceImage {
    version: AtomicU64,
    chunks: [[AtomicU32; 4]; HOST_SLOT_CHUNKS],
}

impl DeviceImage {
    fn store(&self, image: &Image) {
        self.version.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (c, words) in self.chunks.iter().zip(image) {
            c.iter().zip(words).for_each(|(a, w)| a.store(*w, Ordering::Relaxed));
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The image, if whole (not being rewritten while it was read).
    fn load(&self) -> Option<Image> {
        let v = self.version.load(Ordering::Acquire);
        let image: Image = std::array::from_fn(|c| std::array::from_fn(|m| self.chunks[c][m].load(Ordering::Relaxed)));
        fence(Ordering::Acquire);
        (v % 2 == 0 && self.version.load(Ordering::Relaxed) == v).then_some(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ring::MAX_PROBLEM_TILES;
    use crate::abi::{Activation, BiasMode, TileKind};

    /// A problem of `tiles` tiles for the writer's bookkeeping (never run).
    fn of_tiles(tiles: u32) -> ProblemDesc {
        let mut p: ProblemDesc = bytemuck::Zeroable::zeroed();
        (p.tiles_m, p.tiles_n, p.m, p.n, p.k, p.k_splits) = (tiles, 1, tiles * 32, 1, 1, 1);
        p.tile_kind = TileKind::Gemv32 as u32;
        p
    }

    #[test]
    fn entries_name_their_claim() {
        let g = 5 * CLAIM_TABLE + 17;
        assert_eq!(entry::find(entry::pack(g, 3, 40), g), Some((3, 40)));
        assert_eq!(entry::find(0, 17), None, "a zeroed entry holds nothing");
        assert_eq!(entry::find(entry::pack(g - CLAIM_TABLE, 3, 40), g), None, "an earlier lap's entry");
        // A later lap of the same problem (a problem larger than the table) serves this claim too.
        assert_eq!(entry::find(entry::pack(g + CLAIM_TABLE, 2, 70_000), g), Some((2, 70_000 - CLAIM_TABLE as u32)));
        assert_eq!(entry::find(entry::pack(g + CLAIM_TABLE, 2, 9), g), None, "a later lap of another problem");
        let top = MAX_PROBLEM_TILES - 1;
        assert_eq!(entry::find(entry::pack(7, 65_535, top), 7), Some((65_535, top)));
    }

    /// A worker's cursor: found where guessed, moved on past problems that end before its claim,
    /// sent by the claim table when the guess is off, never fooled by a torn or stale image.
    #[test]
    fn cursors_find_their_claims() {
        let view = |stamp: u32, first_tile: u64, tiles: u32| ImageView { whole: true, stamp, first_tile, tiles };
        let empty = view(0, 0, 0);
        let mut c = Cursor::new();
        assert_eq!(c.step(0, empty, 0, 4), Look::Wait, "nothing published");
        assert_eq!(c.step(1, view(1, 0, 3), 0, 4), Look::Found(1));
        assert_eq!(c, Cursor { slot: 0, expect: Some(1) });
        // Problem 0 ends before claim 3: the next slot, the next problem.
        assert_eq!(c.step(3, view(1, 0, 3), 0, 4), Look::Next);
        assert_eq!(c, Cursor { slot: 1, expect: Some(2) });
        assert_eq!(c.step(3, empty, 0, 4), Look::Wait, "problem 1 not there yet");
        assert_eq!(c.step(3, empty, entry::pack(3, 1, 0), 4), Look::Wait, "its entry, before its image");
        let torn = ImageView { whole: false, ..view(2, 3, 2) };
        assert_eq!(c.step(3, torn, 0, 4), Look::Wait, "an image being rewritten");
        assert_eq!(c.step(4, view(2, 3, 2), 0, 4), Look::Found(1));
        // Claim 200 is far ahead; slot 1 holds a later problem that does not cover it.
        assert_eq!(c.step(200, view(6, 100, 2), 0, 4), Look::Wait);
        assert_eq!(c.step(200, view(6, 100, 2), entry::pack(200, 3, 7), 4), Look::Next);
        assert_eq!(c, Cursor { slot: 3, expect: None });
        assert_eq!(c.step(200, view(4, 150, 2), entry::pack(200, 3, 7), 4), Look::Wait, "slot 3's old problem");
        assert_eq!(c.step(200, view(8, 193, 10), 0, 4), Look::Found(7));
        // The last slot wraps to slot 0.
        assert_eq!(c.step(203, view(8, 193, 10), 0, 4), Look::Next);
        assert_eq!(c, Cursor { slot: 0, expect: Some(9) });
        // An unexpected problem that ends before the claim moves nothing.
        assert_eq!(c.step(300, view(5, 120, 3), 0, 4), Look::Wait);
    }

    /// The CPU device ring's images: whole or not taken, while the forwarder rewrites them.
    #[test]
    fn device_images_are_taken_whole() {
        let img = Arc::new(DeviceImage::default());
        let image = |s: u32| -> Image {
            std::array::from_fn(|c| if s == 0 { [0; 4] } else { [s, s * 7 + c as u32, s ^ 0xabc, s.wrapping_mul(31)] })
        };
        let writer = {
            let img = img.clone();
            std::thread::spawn(move || (1..20_000u32).for_each(|s| img.store(&image(s))))
        };
        let mut seen = 0;
        while !writer.is_finished() {
            if let Some(m) = img.load() {
                assert_eq!(m, image(m[0][0]), "a torn image");
                seen += 1;
            }
        }
        writer.join().unwrap();
        assert_eq!(img.load(), Some(image(19_999)));
        assert!(seen > 0);
    }

    /// Finishes problem `seq` as the device side would: its tiles' flags, or its completion word.
    fn finish(mem: &RingMemory, seq: u64) {
        let i = (seq % mem.slots as u64) as u32;
        let m = SlotMeta::unpack(mem.meta[i as usize].load(Ordering::Acquire));
        assert_eq!(m.seq, seq, "slot {i} holds another problem");
        if m.flag_tiles == 0 {
            mem.done_word(i).store(seq + 1, Ordering::Release);
        }
        for t in 0..m.flag_tiles {
            mem.flag(i, t).store(m.flag, Ordering::Release);
        }
    }

    #[test]
    fn images_are_seen_only_once_stamped() {
        let mem = Arc::new(RingMemory::on_heap(2).unwrap());
        let mut w = RingWriter::new(mem.clone());
        let mut p = of_tiles(3);
        p.a = 0x1234_5678_9abc;
        p.alpha = 1.5;
        assert_eq!(w.write(p), 0);
        assert!(mem.load_image(0).is_none(), "written, not published");
        w.publish();
        let s = decode(&mem.load_image(0).expect("published"));
        // Three tiles complete by flags: the first flag of a fresh slot is 1.
        assert_eq!((s.seq, s.first_tile, s.tiles, s.done_target), (0, 0, 3, FLAGGED | 1));
        assert_eq!((s.problem.a, s.problem.alpha, s.problem.completion), (p.a, 1.5, 0));
        assert!(mem.load_image(2).is_none(), "slot 0's image is problem 0's, not 2's");
        assert_eq!(w.write(of_tiles(100)), 1);
        w.publish();
        let s = decode(&mem.load_image(1).expect("published"));
        assert_eq!((s.first_tile, s.done_target), (3, 100), "more than FLAG_TILES tiles: counted");
        finish(&mem, 0);
        assert_eq!(w.write(of_tiles(5)), 2);
        w.publish();
        let s = decode(&mem.load_image(2).expect("slot 0 reused"));
        assert_eq!((s.seq, s.first_tile, s.tiles, s.done_target), (2, 103, 5, FLAGGED | 2), "the other flag");
        assert!(mem.load_image(0).is_none(), "problem 0's stamps are gone");
        finish(&mem, 1);
        assert_eq!(w.write(of_tiles(80)), 3);
        w.publish();
        // Slot 1's counter has seen 100 tiles, then 80: the target counts both.
        assert_eq!(decode(&mem.load_image(3).expect("slot 1 reused")).done_target, 180);
    }

    /// A problem that completes by flags is done once every one of its tiles' bytes holds its
    /// flag, and never because of what earlier problems left in the slot's line.
    #[test]
    fn flags_tell_done_only_when_every_tile_has_its_own() {
        let mem = Arc::new(RingMemory::on_heap(1).unwrap());
        let mut w = RingWriter::new(mem.clone());
        // Stores problem `seq`'s flag into its tiles' bytes in `order`: done only after the last.
        let flag_in = |seq: u64, order: Vec<u32>| {
            let done_target = decode(&mem.load_image(seq).expect("published")).done_target;
            assert_ne!(done_target & FLAGGED, 0);
            for (n, &t) in order.iter().enumerate() {
                assert!(!mem.is_done(seq), "problem {seq}: {n} of {} flags", order.len());
                mem.flag(0, t).store(done_target as u8, Ordering::Release);
            }
            assert!(mem.is_done(seq), "problem {seq}: every flag");
        };
        // 12 tiles, then 8 (the first 8 bytes hold the old flag), then 16 (bytes 8..12 hold the
        // flag it takes, 1: zeroed before the publish, so flags in every other byte are not
        // enough), then a counted problem, then 16 again (the line holds problem 2's flags).
        assert_eq!(FLAG_TILES, 16);
        for (seq, tiles) in [(0u64, 12u32), (1, 8), (2, 16)] {
            assert_eq!(w.write(of_tiles(tiles)), seq);
            w.publish();
            assert!(seq == 0 || mem.is_done(seq - 1), "the slot's previous problem stays done");
            let (mut order, rest): (Vec<u32>, Vec<u32>) = (0..tiles).partition(|t| !(8..12).contains(t));
            order.extend(rest);
            flag_in(seq, order);
        }
        assert_eq!(w.write(of_tiles(17)), 3);
        w.publish();
        assert!(!mem.is_done(3));
        mem.done_word(0).store(4, Ordering::Release);
        assert!(mem.is_done(3) && mem.is_done(2));
        assert_eq!(w.write(of_tiles(16)), 4);
        w.publish();
        flag_in(4, (0..16).rev().collect());
    }

    /// A slot is reused only once its problem is done, whatever finished after it.
    #[test]
    fn slots_wait_for_their_own_problem() {
        let mem = Arc::new(RingMemory::on_heap(2).unwrap());
        let mut w = RingWriter::new(mem.clone());
        w.write(of_tiles(1));
        w.write(of_tiles(1));
        assert!(!w.has_room(&of_tiles(1)), "both slots hold unfinished problems");
        finish(&mem, 1);
        assert!(!w.has_room(&of_tiles(1)), "problem 1 is done, slot 0's problem 0 is not");
        finish(&mem, 0);
        assert!(w.has_room(&of_tiles(1)));
        assert_eq!(w.write(of_tiles(1)), 2);
        assert!(w.has_room(&of_tiles(1)), "slot 1's problem 1 is done");
        assert_eq!(w.write(of_tiles(1)), 3);
        assert!(!w.has_room(&of_tiles(1)), "slot 0 holds problem 2 now");
    }

    #[test]
    fn tiles_in_flight_stay_within_the_claim_table() {
        let mem = Arc::new(RingMemory::on_heap(8).unwrap());
        let mut w = RingWriter::new(mem.clone());
        let half = (CLAIM_TABLE / 2) as u32;
        w.write(of_tiles(half));
        w.write(of_tiles(half));
        assert!(!w.has_room(&of_tiles(1)), "a full table");
        mem.done_word(1).store(2, Ordering::Release);
        assert!(!w.has_room(&of_tiles(1)), "only the oldest problem's end frees table entries");
        mem.done_word(0).store(1, Ordering::Release);
        assert!(w.has_room(&of_tiles(CLAIM_TABLE as u32)));
        // A problem larger than the table goes only into an empty ring, and holds it alone.
        let big = of_tiles(CLAIM_TABLE as u32 + 5);
        assert!(w.has_room(&big));
        w.write(big);
        assert!(!w.has_room(&of_tiles(1)));
        mem.done_word(2).store(3, Ordering::Release);
        assert!(w.has_room(&of_tiles(1)));
    }

    /// A problem larger than the claim table, through the CPU engine: the claims of its earlier
    /// laps are served from the last lap's entries.
    #[test]
    fn cpu_engine_runs_a_problem_larger_than_the_table() {
        let (rows, k) = ((CLAIM_TABLE as u32 + 3) * 32 - 7, 2u32);
        let a: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let x = [0.5f32, -2.0];
        let mut y = vec![f32::NAN; rows as usize];
        let mut p = crate::round::problem(
            (a.as_ptr() as u64, x.as_ptr() as u64, y.as_mut_ptr() as u64, 0),
            (rows, 1, k),
            (k, 1, 1),
            (1.0, 0.0),
            0,
            Activation::None,
            BiasMode::None,
        );
        let s = TileKind::Gemv32.shape();
        (p.tile_kind, p.tiles_m, p.tiles_n) = (TileKind::Gemv32 as u32, rows.div_ceil(s.bm), 1);
        let small = {
            let mut q = p;
            (q.m, q.tiles_m) = (40, 2);
            q
        };
        let mem = Arc::new(RingMemory::on_heap(4).unwrap());
        let engine = CpuEngine::start(mem.clone(), 2, Duration::ZERO);
        let mut w = RingWriter::new(mem.clone());
        let seqs: Vec<u64> = [small, p, small]
            .into_iter()
            .map(|d| {
                while !w.has_room(&d) {
                    w.publish();
                    std::thread::yield_now();
                }
                w.write(d)
            })
            .collect();
        w.publish();
        let start = Instant::now();
        while !seqs.iter().all(|&q| mem.is_done(q)) {
            assert!(start.elapsed() < Duration::from_secs(120), "the ring did not drain");
            std::thread::sleep(Duration::from_millis(1));
        }
        mem.request_stop();
        engine.join().unwrap();
        for (i, got) in y.iter().enumerate() {
            let want = a[i * 2] * 0.5 - 2.0 * a[i * 2 + 1];
            assert_eq!(*got, want, "row {i}");
        }
    }
}
