//! Property tests of the arena allocator: no overlap, alignment, bounds, exact accounting, and
//! full coalescing once everything is freed.

use proptest::prelude::*;
use tilemux::memory::{ALIGN, Arena, round_up};

#[derive(Debug, Clone)]
enum Step {
    Alloc(u64),
    Free(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![3 => (1u64..50_000).prop_map(Step::Alloc), 2 => any::<usize>().prop_map(Step::Free)],
        1..400,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arena_invariants(base in 0u64..100_000, size in 1u64..2_000_000, ops in steps()) {
        let mut a = Arena::new(base, size);
        let (lo, hi) = (a.base(), a.base() + a.capacity());
        // An arena too small to hold one aligned block is empty; its base may lie past the range.
        prop_assert!(lo % ALIGN == 0 && a.capacity() % ALIGN == 0 && lo >= base);
        prop_assert!(a.capacity() == 0 || hi <= base + size);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Step::Alloc(n) => match a.alloc(n) {
                    Some(addr) => {
                        let len = round_up(n);
                        prop_assert!(addr % ALIGN == 0, "aligned");
                        prop_assert!(addr >= lo && addr + len <= hi, "inside the arena");
                        for &(b, l) in &live {
                            prop_assert!(addr + len <= b || b + l <= addr, "no overlap with a live block");
                        }
                        live.push((addr, len));
                    }
                    None => prop_assert!(a.largest_free() < round_up(n), "fails only when no block fits"),
                },
                Step::Free(i) if !live.is_empty() => {
                    let (addr, len) = live.swap_remove(i % live.len());
                    a.free(addr, len);
                }
                Step::Free(_) => {}
            }
            prop_assert_eq!(a.used(), live.iter().map(|l| l.1).sum::<u64>());
            prop_assert!(a.peak() >= a.used());
        }
        for (addr, len) in live.drain(..) {
            a.free(addr, len);
        }
        prop_assert_eq!(a.used(), 0);
        prop_assert!(a.capacity() == 0 || a.free_blocks() == 1, "everything coalesced");
        prop_assert_eq!(a.largest_free(), a.capacity());
    }
}
