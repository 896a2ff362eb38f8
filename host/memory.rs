//! Address-range allocation: [`Arena`] hands out 256-byte aligned blocks of a range and coalesces
//! them back on free. The runtime uses one arena over the device pool to carve tenant arenas, and
//! one arena per tenant for its buffers: the same mechanism at both levels.

use std::collections::BTreeMap;

/// Alignment (and granularity) of every block.
pub const ALIGN: u64 = 256;

/// A first-fit allocator over `base .. base + size` with free-list coalescing.
#[derive(Debug, Clone)]
pub struct Arena {
    base: u64,
    size: u64,
    /// Free blocks by start address → length; never two adjacent entries.
    free: BTreeMap<u64, u64>,
    used: u64,
    peak: u64,
}

/// Rounds a request up to the arena granularity (at least one granule).
pub fn round_up(bytes: u64) -> u64 {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

impl Arena {
    /// An arena over `base .. base + size`; `base` is rounded up and `size` down to [`ALIGN`].
    pub fn new(base: u64, size: u64) -> Self {
        let start = base.div_ceil(ALIGN) * ALIGN;
        let size = (base + size).saturating_sub(start) / ALIGN * ALIGN;
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(start, size);
        }
        Arena { base: start, size, free, used: 0, peak: 0 }
    }

    /// First address of the arena.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes the arena manages.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// Bytes handed out (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Largest `used` ever seen.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Bytes not handed out.
    pub fn available(&self) -> u64 {
        self.size - self.used
    }

    /// The largest block a single allocation could get now.
    pub fn largest_free(&self) -> u64 {
        self.free.values().copied().max().unwrap_or(0)
    }

    /// Number of free blocks (1 when everything is free: full coalescing).
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Allocates `bytes` (rounded up to [`ALIGN`]) at the lowest address that fits. Returns the
    /// block's address, or `None` when no free block is large enough.
    pub fn alloc(&mut self, bytes: u64) -> Option<u64> {
        let len = round_up(bytes);
        let (&start, &free_len) = self.free.iter().find(|(_, l)| **l >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        self.used += len;
        self.peak = self.peak.max(self.used);
        Some(start)
    }

    /// Returns the block at `addr` of `bytes` (as passed to [`Arena::alloc`]), merging it with
    /// free neighbours.
    ///
    /// # Panics
    /// If the block overlaps free space or lies outside the arena: a double free is a bug in the
    /// caller, and continuing would hand the same memory to two owners.
    pub fn free(&mut self, addr: u64, bytes: u64) {
        let mut start = addr;
        let mut len = round_up(bytes);
        assert!(
            start >= self.base && start + len <= self.base + self.size && start % ALIGN == 0,
            "Arena::free({addr:#x}, {bytes}) outside the arena"
        );
        if let Some((&p, &pl)) = self.free.range(..=start).next_back() {
            assert!(p + pl <= start, "Arena::free({addr:#x}): double free");
            if p + pl == start {
                self.free.remove(&p);
                start = p;
                len += pl;
            }
        }
        if let Some((&n, &nl)) = self.free.range(start + 1..).next() {
            assert!(addr + round_up(bytes) <= n, "Arena::free({addr:#x}): double free");
            if start + len == n {
                self.free.remove(&n);
                len += nl;
            }
        }
        self.free.insert(start, len);
        self.used -= round_up(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesces() {
        let mut a = Arena::new(1000, 10 * ALIGN + 24);
        assert_eq!(a.base(), 1024);
        assert_eq!(a.capacity(), 10 * ALIGN);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(ALIGN + 1).unwrap();
        let z = a.alloc(ALIGN).unwrap();
        assert_eq!((x, y, z), (1024, 1024 + ALIGN, 1024 + 3 * ALIGN));
        assert_eq!(a.used(), 4 * ALIGN);
        a.free(y, ALIGN + 1);
        assert_eq!(a.alloc(2 * ALIGN), Some(y), "first fit reuses the hole");
        a.free(x, 1);
        a.free(z, ALIGN);
        a.free(y, 2 * ALIGN);
        assert_eq!(a.free_blocks(), 1);
        assert_eq!(a.largest_free(), 10 * ALIGN);
        assert_eq!(a.peak(), 4 * ALIGN);
        assert_eq!(a.alloc(11 * ALIGN), None);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = Arena::new(0, 4 * ALIGN);
        let x = a.alloc(10).unwrap();
        a.free(x, 10);
        a.free(x, 10);
    }
}
