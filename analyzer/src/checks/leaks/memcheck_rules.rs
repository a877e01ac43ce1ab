//! The two rules the recorder also applies to a process's memory, kept together here
//! because one shared implementation of both is to replace them (the recorder has its
//! own copies today):
//!
//! * [`BlockIndex`]: which live block holds an address, in O(1) expected time.
//! * [`header_heuristics`]: memcheck's tests of its interior-pointer heuristics on a
//!   block's header words (the recorder evaluates them on the memory and writes its
//!   verdicts into the trace; here only tests call this one).

use rayon::prelude::*;

use super::heuristics::{BlockRef, Heuristic, HeuristicSet};
use super::model::LiveBlock;

/// The memory a heuristic reads, as the recorder would store it for one block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    /// The block's first two words (`None`: beyond the block or unreadable).
    pub words: [Option<u64>; 2],
    /// Whether the first word is a vtable address (see [`Heuristic::MultipleInheritance`]).
    pub first_word_is_vtable: bool,
}

/// memcheck's exact tests of the first three heuristics on a block's header words, and
/// of the fourth given whether the word the pointer points at is a vtable address
/// (`target_word_is_vtable`, which only the recorder can tell). Word size is 8.
pub fn header_heuristics(
    block: &BlockRef,
    offset: u64,
    header: &BlockHeader,
    target_word_is_vtable: bool,
) -> HeuristicSet {
    const W: u64 = 8;
    let mut set = HeuristicSet::NONE;
    let size = block.size;
    if offset == 3 * W {
        if let (Some(length), Some(capacity)) = (header.words[0], header.words[1]) {
            // memcheck computes in size_t: wrapping.
            if (3 * W).wrapping_add(capacity).wrapping_add(1) == size && length <= capacity {
                set = set.with(Heuristic::StdString);
            }
        }
    }
    if offset == W {
        if let Some(n) = header.words[0] {
            if n > 0 && size.wrapping_sub(W) == n {
                set = set.with(Heuristic::Length64);
            }
            if n > 0 && size.wrapping_sub(W) % n == 0 {
                set = set.with(Heuristic::NewArray);
            }
        }
    }
    if offset % W == 0 && target_word_is_vtable && header.first_word_is_vtable {
        set = set.with(Heuristic::MultipleInheritance);
    }
    set
}

/// Finds the block holding an address in O(1) expected time: the blocks' (start, end)
/// in address order, and per 4 GiB region of the address space (addresses sharing
/// their high 32 bits) a table of equal-width buckets over the region's starts, at most
/// one per block, each holding the index of the first block starting in or after it.
/// A lookup reads one bucket pair and searches the few starts between them, so it
/// costs two or three cache misses where a binary search over millions of starts costs
/// twenty-odd; bucket ranges are searched by bisection, so a skewed layout is never
/// worse than a binary search.
pub(super) struct BlockIndex {
    /// (start, end) of each block (end: start + size, at least start + 1).
    pub(super) spans: Vec<(u64, u64)>,
    /// The regions holding some block's start, in address order.
    regions: Vec<Region>,
    /// The regions' bucket tables, one after the other (each `buckets + 1` long).
    firsts: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Region {
    /// The high 32 bits of its addresses.
    hi: u64,
    /// Its lowest start.
    base: u64,
    /// log2 of the bucket width.
    shift: u32,
    /// How many buckets.
    buckets: u64,
    /// Where its table starts in `firsts`.
    table: usize,
    /// One past its last block.
    end: u32,
}

impl BlockIndex {
    /// Indexes `blocks` (sorted by address, distinct).
    pub(super) fn new(blocks: &[LiveBlock]) -> BlockIndex {
        let spans: Vec<(u64, u64)> = blocks
            .par_iter()
            .map(|b| (b.address, b.address.saturating_add(b.size.max(1))))
            .collect();
        let mut regions = Vec::new();
        let mut firsts = Vec::with_capacity(spans.len() + 64);
        let mut i = 0;
        while i < spans.len() {
            let hi = spans[i].0 >> 32;
            let first = i;
            let len = spans[first..].partition_point(|s| s.0 >> 32 == hi);
            let end = first + len;
            let base = spans[first].0;
            let span = spans[end - 1].0 - base;
            // The narrowest buckets with at most one per block.
            let mut shift = 0;
            while (span >> shift) >= len as u64 {
                shift += 1;
            }
            let buckets = (span >> shift) + 1;
            let table = firsts.len();
            let mut b = first;
            for k in 0..=buckets {
                let from = base.saturating_add(k << shift);
                while b < end && spans[b].0 < from {
                    b += 1;
                }
                firsts.push(b as u32);
            }
            regions.push(Region {
                hi,
                base,
                shift,
                buckets,
                table,
                end: end as u32,
            });
            i = end;
        }
        BlockIndex {
            spans,
            regions,
            firsts,
        }
    }

    /// The index of the block holding `address`, if any.
    #[inline]
    pub(super) fn block_at(&self, address: u64) -> Option<usize> {
        // How many blocks start at or below `address`.
        let hi = address >> 32;
        let r = self.regions.partition_point(|r| r.hi <= hi);
        if r == 0 {
            return None;
        }
        let region = &self.regions[r - 1];
        let count = if region.hi < hi {
            region.end as usize
        } else if address < region.base {
            // The first block of this region starts above: the previous one, if any.
            self.firsts[region.table] as usize
        } else {
            let k = (address - region.base) >> region.shift;
            if k >= region.buckets {
                region.end as usize
            } else {
                let t = region.table + k as usize;
                let (lo, up) = (self.firsts[t] as usize, self.firsts[t + 1] as usize);
                lo + self.spans[lo..up].partition_point(|s| s.0 <= address)
            }
        };
        let b = count.checked_sub(1)?;
        (address < self.spans[b].1).then_some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaptape_format::AllocFn;

    #[test]
    fn header_tests_follow_memcheck() {
        let b = |size| BlockRef {
            address: 0x1000,
            size,
            func: AllocFn::New,
        };
        let h = |w0, w1| BlockHeader {
            words: [Some(w0), Some(w1)],
            first_word_is_vtable: false,
        };
        // std::string rep: length 5, capacity 8, size 24 + 8 + 1.
        assert_eq!(
            header_heuristics(&b(33), 24, &h(5, 8), false),
            HeuristicSet::only(Heuristic::StdString)
        );
        assert_eq!(
            header_heuristics(&b(33), 24, &h(9, 8), false),
            HeuristicSet::NONE
        );
        // length64: first word = size - 8, also a new[] count dividing size - 8.
        assert_eq!(
            header_heuristics(&b(40), 8, &h(32, 0), false),
            HeuristicSet::only(Heuristic::Length64).with(Heuristic::NewArray)
        );
        // new[] of 3 elements of 4 bytes.
        assert_eq!(
            header_heuristics(&b(20), 8, &h(3, 0), false),
            HeuristicSet::only(Heuristic::NewArray)
        );
        assert_eq!(
            header_heuristics(&b(20), 8, &h(0, 0), false),
            HeuristicSet::NONE
        );
        let mut mi = h(0x4000, 0);
        mi.first_word_is_vtable = true;
        assert_eq!(
            header_heuristics(&b(48), 16, &mi, true),
            HeuristicSet::only(Heuristic::MultipleInheritance)
        );
        assert_eq!(header_heuristics(&b(48), 12, &mi, true), HeuristicSet::NONE);
        assert_eq!(
            header_heuristics(&b(48), 16, &mi, false),
            HeuristicSet::NONE
        );
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use heaptape_format::AllocFn;

    /// The index agrees with a linear search on layouts with several 4 GiB regions,
    /// gaps, zero-sized blocks and a block crossing a region boundary.
    #[test]
    fn block_index_matches_linear_search() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..50 {
            let mut blocks = Vec::new();
            let mut addr = 0x5555_0000_0000u64 + (next() % 4096);
            let n = 1 + next() % 300;
            for _ in 0..n {
                let size = match next() % 5 {
                    0 => 0,
                    1 => next() % 100_000,
                    _ => next() % 64,
                };
                blocks.push(LiveBlock {
                    address: addr,
                    size,
                    stack: 1,
                    func: AllocFn::Malloc,
                });
                addr += size.max(1)
                    + match next() % 20 {
                        0 => 1 << 32,
                        1 => next() % (1 << 30),
                        _ => next() % 64,
                    };
            }
            // A block crossing into the next 4 GiB region, and one right after.
            let last = blocks.last().unwrap();
            let cross = ((last.address + last.size + 1) | 0xffff_ffff) - 15;
            blocks.push(LiveBlock {
                address: cross,
                size: 64,
                stack: 1,
                func: AllocFn::Malloc,
            });
            blocks.push(LiveBlock {
                address: cross + 64 + round,
                size: 8,
                stack: 1,
                func: AllocFn::Malloc,
            });
            let index = BlockIndex::new(&blocks);
            let linear = |a: u64| {
                blocks
                    .iter()
                    .position(|b| a >= b.address && a < b.address + b.size.max(1))
            };
            let mut probes = vec![0, u64::MAX, 1 << 32];
            for b in &blocks {
                for d in [0, 1, b.size.saturating_sub(1), b.size, b.size + 1] {
                    probes.push(b.address + d);
                }
                probes.push(b.address - 1);
                probes.push(b.address + next() % (1 << 31));
            }
            for a in probes {
                assert_eq!(index.block_at(a), linear(a), "round {round}: {a:#x}");
            }
        }
    }
}
