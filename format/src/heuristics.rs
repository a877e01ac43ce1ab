//! memcheck's interior-pointer heuristics, evaluated once for the whole project, and
//! the index of live blocks they (and the reachability snapshot) look pointers up in.
//!
//! A pointer to the inside of a block (an *interior* pointer) makes memcheck call the
//! block "possibly lost", unless one of its heuristics says the pointer is one that a
//! live object legitimately holds. memcheck's four heuristics, with their bits in
//! [`Record::SnapshotHeuristic`]'s `matched` (memcheck's order):
//!
//! - [`STDSTRING`] (1): a pointer 24 bytes into a block of `capacity + 25` bytes whose
//!   first two words are a length and a capacity with `length <= capacity` (libstdc++'s
//!   pre-C++11 `std::string` representation);
//! - [`LENGTH64`] (2): a pointer 8 bytes into a block whose first word is the size of the
//!   rest (a length-prefixed buffer);
//! - [`NEWARRAY`] (4): a pointer 8 bytes into a block whose first word is a non-zero
//!   element count dividing the rest (`new[]` of objects with a destructor);
//! - [`MULTIPLE_INHERITANCE`] (8): an aligned pointer at a vtable address inside a block
//!   that starts with a vtable address (a secondary base of a C++ object).
//!
//! The trace never carries the program's memory, so the verdicts are computed where the
//! memory is: the recorder reads the words each heuristic needs ([`InteriorTarget`]
//! says which) and calls [`evaluate`]; the analyzer applies the verdicts. Sizes and
//! lengths are checked, never wrapped: a word whose sum overflows matches nothing.

use std::collections::HashSet;

use crate::{Pointer, Record};

/// The `stdstring` heuristic's bit.
pub const STDSTRING: u8 = 1;
/// The `length64` heuristic's bit.
pub const LENGTH64: u8 = 2;
/// The `newarray` heuristic's bit.
pub const NEWARRAY: u8 = 4;
/// The `multipleinheritance` heuristic's bit.
pub const MULTIPLE_INHERITANCE: u8 = 8;

/// Bytes per word (x86_64).
const W: u64 = 8;

/// Live blocks sorted by address, for "does this word point into a block?".
///
/// Every word of every root and live block is looked up, so the lookup must not be a
/// binary search over millions of blocks (a cache miss per step). Blocks are grouped by
/// 4 GiB region (heaps, mmap'd blocks and thread arenas live far apart); each region's
/// span is cut into buckets of about one block each, and `buckets[b]` is the index of the
/// first block starting at or after bucket b's start. A lookup binary-searches the few
/// regions, then the few blocks of one bucket: never worse than a plain binary search.
pub struct BlockIndex {
    /// (start, end) of each block, in address order: a lookup's search and its final
    /// check read one array (one cache line), not two.
    spans: Vec<(u64, u64)>,
    sizes: Vec<u64>,
    lo: u64,
    hi: u64,
    regions: Vec<Region4G>,
    buckets: Vec<u32>,
}

/// One 4 GiB region of the address space that holds blocks.
struct Region4G {
    /// `address >> 32` of the region.
    key: u64,
    /// Lowest block start in the region.
    lo: u64,
    /// log2 of the bucket size.
    shift: u32,
    /// Where this region's buckets start in `BlockIndex::buckets`.
    first_bucket: usize,
    /// Number of buckets.
    len: usize,
    /// Index of the region's first block (the answer before its first bucket).
    first_block: usize,
}

impl BlockIndex {
    /// Indexes `blocks`, given as (start, size) pairs with distinct starts, in any
    /// order. A block of size 0 covers its start address alone.
    pub fn new(mut v: Vec<(u64, u64)>) -> BlockIndex {
        v.sort_unstable();
        let spans: Vec<(u64, u64)> = v
            .iter()
            .map(|b| (b.0, b.0.saturating_add(b.1.max(1))))
            .collect();
        let sizes: Vec<u64> = v.iter().map(|b| b.1).collect();
        drop(v);
        let lo = spans.first().map_or(u64::MAX, |s| s.0);
        let hi = spans.iter().map(|s| s.1).max().unwrap_or(0);
        let mut regions = Vec::new();
        let mut buckets: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < spans.len() {
            let key = spans[i].0 >> 32;
            let j = spans[i..].partition_point(|s| s.0 >> 32 == key) + i;
            let (rlo, rhi) = (spans[i].0, spans[j - 1].0 + 1);
            let want = ((j - i) as u64).max(1);
            let span = rhi - rlo;
            let shift = (64 - (span / want).max(1).leading_zeros()).max(4);
            let len = (span >> shift) as usize + 1;
            let first_bucket = buckets.len();
            let mut k = i;
            for b in 0..=len {
                let at = rlo + ((b as u64) << shift);
                while k < j && spans[k].0 < at {
                    k += 1;
                }
                buckets.push(k as u32);
            }
            regions.push(Region4G {
                key,
                lo: rlo,
                shift,
                first_bucket,
                len,
                first_block: i,
            });
            i = j;
        }
        BlockIndex {
            spans,
            sizes,
            lo,
            hi,
            regions,
            buckets,
        }
    }

    /// Index of the last block starting at or before `v` (`v` in [lo, hi)).
    #[inline]
    fn last_start_at_or_before(&self, v: u64) -> Option<usize> {
        let key = v >> 32;
        let r = self
            .regions
            .partition_point(|r| r.key <= key)
            .checked_sub(1)?;
        let region = &self.regions[r];
        if key != region.key || v < region.lo {
            // Before this region's first block (or in a region with none): the last
            // block of the regions before it.
            let first = if key != region.key {
                region.first_block + self.region_len(r)
            } else {
                region.first_block
            };
            return first.checked_sub(1);
        }
        let b = (((v - region.lo) >> region.shift) as usize).min(region.len);
        let from = self.buckets[region.first_bucket + b] as usize;
        let to = self.buckets[region.first_bucket + (b + 1).min(region.len)] as usize;
        let to = to.max(from);
        let i = from + self.spans[from..to].partition_point(|s| s.0 <= v);
        i.checked_sub(1)
    }

    fn region_len(&self, r: usize) -> usize {
        let next = self
            .regions
            .get(r + 1)
            .map(|n| n.first_block)
            .unwrap_or(self.spans.len());
        next - self.regions[r].first_block
    }

    /// Whether `v` points into a block (its start included, its end not).
    #[inline]
    pub fn contains(&self, v: u64) -> bool {
        if v < self.lo || v >= self.hi {
            return false;
        }
        self.last_start_at_or_before(v)
            .is_some_and(|i| v < self.spans[i].1)
    }

    /// The start and size of the block containing `v`, if any.
    #[inline]
    pub fn block_of(&self, v: u64) -> Option<(u64, u64)> {
        self.index_of(v).map(|i| (self.spans[i].0, self.sizes[i]))
    }

    /// The position, in address order, of the block containing `v`, if any: for
    /// blocks given sorted by address, the index into that list (the analyzer's leak
    /// graph numbers its blocks this way).
    #[inline]
    pub fn index_of(&self, v: u64) -> Option<usize> {
        if v < self.lo || v >= self.hi {
            return None;
        }
        let i = self.last_start_at_or_before(v)?;
        (v < self.spans[i].1).then_some(i)
    }

    /// Appends the pointers found in `bytes` (which start at an 8-aligned address): each
    /// aligned word that points into a block, with its offset (`base_offset` plus its
    /// position in `bytes`).
    pub fn scan(&self, bytes: &[u8], base_offset: u64, out: &mut Vec<Pointer>) {
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if self.contains(v) {
                out.push(Pointer {
                    offset: base_offset + i as u64 * 8,
                    target: v,
                });
            }
        }
    }
}

/// A (block, offset) pair that some interior pointer targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InteriorTarget {
    /// The block's start.
    pub block: u64,
    /// The block's size.
    pub size: u64,
    /// The target's offset in the block (never 0).
    pub offset: u64,
}

impl InteriorTarget {
    /// Bytes of the block's start the heuristics read: its first two words, or fewer
    /// (whole words only) when the block is smaller.
    pub fn head_len(&self) -> usize {
        16.min(self.size as usize & !7)
    }

    /// Whether the word at the target is read (for [`MULTIPLE_INHERITANCE`]): it is
    /// aligned and lies inside the block.
    pub fn reads_target_word(&self) -> bool {
        self.offset % W == 0 && self.offset + W <= self.size
    }
}

/// The distinct interior targets of the pointers in the snapshot records `records`
/// (`SnapshotRoot` and `SnapshotBlock`; others are skipped), in the order first seen.
pub fn interior_targets(index: &BlockIndex, records: &[Record]) -> Vec<InteriorTarget> {
    let mut targets = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    for rec in records {
        let pointers = match rec {
            Record::SnapshotRoot(root) => &root.pointers,
            Record::SnapshotBlock { pointers, .. } => pointers,
            _ => continue,
        };
        for p in pointers {
            if let Some((start, size)) = index.block_of(p.target) {
                let off = p.target - start;
                if off != 0 && seen.insert((start, off)) {
                    targets.push(InteriorTarget {
                        block: start,
                        size,
                        offset: off,
                    });
                }
            }
        }
    }
    targets
}

/// The memory words a target's heuristics read, as found in the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetWords {
    /// The block's first two words (`None`: beyond [`InteriorTarget::head_len`]).
    pub head: [Option<u64>; 2],
    /// The word at the target (`None` unless [`InteriorTarget::reads_target_word`]).
    pub at_target: Option<u64>,
}

/// memcheck's four heuristics on one interior target: the `matched` bits of its
/// [`Record::SnapshotHeuristic`] (0: none matches). `is_vtable` tells whether an address
/// is a vtable's (memcheck's test needs the process's mappings and memory); it is asked
/// about the word at the target first and, only if that one is, about the first word.
pub fn evaluate(
    target: &InteriorTarget,
    words: &TargetWords,
    mut is_vtable: impl FnMut(u64) -> bool,
) -> u8 {
    let (size, off) = (target.size, target.offset);
    let [w0, w1] = words.head;
    let mut matched = 0u8;
    if let (24, Some(len), Some(cap)) = (off, w0, w1) {
        if len <= cap && cap.checked_add(3 * W + 1) == Some(size) {
            matched |= STDSTRING;
        }
    }
    if let (W, Some(n), Some(rest)) = (off, w0, size.checked_sub(W)) {
        if n > 0 && n == rest {
            matched |= LENGTH64;
        }
        if n > 0 && rest % n == 0 {
            matched |= NEWARRAY;
        }
    }
    if let (Some(inner), Some(first)) = (words.at_target, w0) {
        if is_vtable(inner) && is_vtable(first) {
            matched |= MULTIPLE_INHERITANCE;
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_words_inside_blocks_only() {
        // Blocks at 0x1000 (16 bytes) and 0x2000 (0 bytes); 0x3000 was freed.
        let idx = BlockIndex::new(vec![(0x2000, 0), (0x1000, 16)]);
        assert!(idx.contains(0x1000) && idx.contains(0x100f));
        assert!(!idx.contains(0x1010) && !idx.contains(0xfff));
        assert!(idx.contains(0x2000) && !idx.contains(0x2001));
        assert!(!idx.contains(0x3000));
        let mut bytes = Vec::new();
        for w in [0x1008u64, 7, 0x2000, 0x3000] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        let mut out = Vec::new();
        idx.scan(&bytes, 64, &mut out);
        assert_eq!(
            out,
            vec![
                Pointer {
                    offset: 64,
                    target: 0x1008
                },
                Pointer {
                    offset: 80,
                    target: 0x2000
                }
            ]
        );
        assert_eq!(idx.block_of(0x1008), Some((0x1000, 16)));
        assert_eq!(idx.block_of(0x2001), None);
    }

    #[test]
    fn bucketed_lookup_agrees_with_a_linear_search() {
        // Deterministic pseudo-random layouts: clustered, sparse, zero-sized blocks.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20 {
            // Odd rounds spread blocks over several 4 GiB regions, far apart (heap and
            // mmap'd blocks).
            let mut addr = 0x5555_0000_0000u64 + round * 0x1000;
            let far = round % 2 == 1;
            let mut live = Vec::new();
            let mut blocks = Vec::new();
            for _ in 0..(50 + round * 40) {
                addr += (16 + (next() % if round % 3 == 0 { 1 << 20 } else { 256 })) & !15;
                let size = if next() % 7 == 0 { 0 } else { 1 + next() % 200 };
                live.push((addr, size));
                blocks.push((addr, addr + size.max(1)));
                addr += size;
                if far && next() % 10 == 0 {
                    addr += 0x1_0000_0000 * (1 + next() % 0x2000);
                }
            }
            let idx = BlockIndex::new(live);
            for _ in 0..2000 {
                let (s, e) = blocks[(next() % blocks.len() as u64) as usize];
                for v in [s, e - 1, e, s.wrapping_sub(1), s + next() % 300] {
                    let expect = blocks.iter().any(|&(a, b)| a <= v && v < b);
                    assert_eq!(idx.contains(v), expect, "round {round} value {v:#x}");
                }
            }
        }
    }

    fn target(size: u64, offset: u64) -> InteriorTarget {
        InteriorTarget {
            block: 0x1000,
            size,
            offset,
        }
    }

    fn head(w0: u64, w1: u64) -> TargetWords {
        TargetWords {
            head: [Some(w0), Some(w1)],
            at_target: None,
        }
    }

    #[test]
    fn stdstring_needs_offset_24_and_capacity_plus_25() {
        assert_eq!(
            evaluate(&target(45, 24), &head(5, 20), |_| false),
            STDSTRING
        );
        assert_eq!(evaluate(&target(45, 24), &head(21, 20), |_| false), 0);
        assert_eq!(evaluate(&target(46, 24), &head(5, 20), |_| false), 0);
        assert_eq!(evaluate(&target(45, 16), &head(5, 20), |_| false), 0);
        // No wrap-around: a capacity near u64::MAX matches nothing.
        assert_eq!(evaluate(&target(24, 24), &head(0, u64::MAX), |_| false), 0);
    }

    #[test]
    fn length64_and_newarray_at_offset_8() {
        assert_eq!(
            evaluate(&target(40, 8), &head(32, 0), |_| false),
            LENGTH64 | NEWARRAY
        );
        assert_eq!(evaluate(&target(40, 8), &head(8, 0), |_| false), NEWARRAY);
        assert_eq!(evaluate(&target(40, 8), &head(5, 0), |_| false), 0);
        assert_eq!(evaluate(&target(40, 8), &head(0, 0), |_| false), 0);
        assert_eq!(evaluate(&target(40, 16), &head(32, 0), |_| false), 0);
    }

    #[test]
    fn multiple_inheritance_needs_two_vtables() {
        let words = TargetWords {
            head: [Some(0xa000), Some(0)],
            at_target: Some(0xb000),
        };
        let both = |a: u64| a == 0xa000 || a == 0xb000;
        assert_eq!(
            evaluate(&target(64, 16), &words, both),
            MULTIPLE_INHERITANCE
        );
        assert_eq!(evaluate(&target(64, 16), &words, |a| a == 0xb000), 0);
        // The word at the target is asked about first; the first word only if it is one.
        let mut asked = Vec::new();
        evaluate(&target(64, 16), &words, |a| {
            asked.push(a);
            false
        });
        assert_eq!(asked, vec![0xb000]);
        assert_eq!(evaluate(&target(64, 16), &TargetWords::default(), both), 0);
    }

    #[test]
    fn read_plan_and_distinct_targets() {
        assert_eq!(target(8, 4).head_len(), 8);
        assert_eq!(target(100, 4).head_len(), 16);
        assert!(target(64, 56).reads_target_word());
        assert!(!target(64, 60).reads_target_word());
        assert!(!target(60, 56).reads_target_word());
        let idx = BlockIndex::new(vec![(0x1000, 64), (0x2000, 8)]);
        let recs = vec![
            Record::SnapshotBlock {
                pid: 1,
                address: 0x2000,
                pointers: vec![
                    Pointer {
                        offset: 0,
                        target: 0x1010,
                    },
                    Pointer {
                        offset: 0,
                        target: 0x1000,
                    },
                ],
            },
            Record::SnapshotBlock {
                pid: 1,
                address: 0x1000,
                pointers: vec![
                    Pointer {
                        offset: 8,
                        target: 0x1010,
                    },
                    Pointer {
                        offset: 16,
                        target: 0x2004,
                    },
                    Pointer {
                        offset: 24,
                        target: 0x3000,
                    },
                ],
            },
        ];
        assert_eq!(
            interior_targets(&idx, &recs),
            vec![
                InteriorTarget {
                    block: 0x1000,
                    size: 64,
                    offset: 16
                },
                InteriorTarget {
                    block: 0x2000,
                    size: 8,
                    offset: 4
                },
            ]
        );
    }

    /// The words the recorder would read for `t` from a block whose words (from its
    /// start, 8 bytes each) are `memory`: the head up to [`InteriorTarget::head_len`],
    /// the word at the target if [`InteriorTarget::reads_target_word`].
    fn read(t: &InteriorTarget, memory: &[u64]) -> TargetWords {
        let word = |off: u64| memory.get((off / W) as usize).copied();
        let head_words = t.head_len() as u64 / W;
        TargetWords {
            head: [0, 1].map(|k| if k < head_words { word(k * W) } else { None }),
            at_target: if t.reads_target_word() {
                word(t.offset)
            } else {
                None
            },
        }
    }

    /// memcheck's cases for each heuristic, on the words as the recorder reads them
    /// (these were the analyzer's tests of its own copy of the rules).
    #[test]
    fn header_tests_follow_memcheck() {
        let none = |_: u64| false;
        // std::string rep: length 5, capacity 8, size 24 + 8 + 1.
        let t = target(33, 24);
        assert_eq!(evaluate(&t, &read(&t, &[5, 8]), none), STDSTRING);
        assert_eq!(evaluate(&t, &read(&t, &[9, 8]), none), 0);
        // length64: first word = size - 8, also a new[] count dividing size - 8.
        let t = target(40, 8);
        assert_eq!(evaluate(&t, &read(&t, &[32, 0]), none), LENGTH64 | NEWARRAY);
        // new[] of 3 elements of 4 bytes.
        let t = target(20, 8);
        assert_eq!(evaluate(&t, &read(&t, &[3, 0]), none), NEWARRAY);
        assert_eq!(evaluate(&t, &read(&t, &[0, 0]), none), 0);
        // multipleinheritance: a vtable at the start and at the (aligned) target.
        let memory = [0x4000, 0, 0x5000, 0, 0, 0];
        let vtables = |a: u64| a == 0x4000 || a == 0x5000;
        let t = target(48, 16);
        assert_eq!(
            evaluate(&t, &read(&t, &memory), vtables),
            MULTIPLE_INHERITANCE
        );
        let t = target(48, 12);
        assert_eq!(evaluate(&t, &read(&t, &memory), vtables), 0);
        let t = target(48, 16);
        assert_eq!(evaluate(&t, &read(&t, &memory), |a| a == 0x4000), 0);
    }

    /// [`BlockIndex::index_of`] agrees with a linear search over the sorted blocks on
    /// layouts with several 4 GiB regions, gaps, zero-sized blocks and a block crossing
    /// a region boundary.
    #[test]
    fn index_of_matches_linear_search() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..50 {
            // (start, size), in address order.
            let mut blocks: Vec<(u64, u64)> = Vec::new();
            let mut addr = 0x5555_0000_0000u64 + (next() % 4096);
            let n = 1 + next() % 300;
            for _ in 0..n {
                let size = match next() % 5 {
                    0 => 0,
                    1 => next() % 100_000,
                    _ => next() % 64,
                };
                blocks.push((addr, size));
                addr += size.max(1)
                    + match next() % 20 {
                        0 => 1 << 32,
                        1 => next() % (1 << 30),
                        _ => next() % 64,
                    };
            }
            // A block crossing into the next 4 GiB region, and one right after.
            let &(last, last_size) = blocks.last().unwrap();
            let cross = ((last + last_size + 1) | 0xffff_ffff) - 15;
            blocks.push((cross, 64));
            blocks.push((cross + 64 + round, 8));
            let index = BlockIndex::new(blocks.clone());
            let linear = |a: u64| {
                blocks
                    .iter()
                    .position(|&(s, size)| a >= s && a < s + size.max(1))
            };
            let mut probes = vec![0, u64::MAX, 1 << 32];
            for &(s, size) in &blocks {
                for d in [0, 1, size.saturating_sub(1), size, size + 1] {
                    probes.push(s + d);
                }
                probes.push(s - 1);
                probes.push(s + next() % (1 << 31));
            }
            for a in probes {
                assert_eq!(index.index_of(a), linear(a), "round {round}: {a:#x}");
                assert_eq!(
                    index.block_of(a),
                    linear(a).map(|i| blocks[i]),
                    "round {round}: {a:#x}"
                );
            }
        }
    }
}
