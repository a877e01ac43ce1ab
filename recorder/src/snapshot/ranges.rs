//! A set of address ranges: what an allocator mapped for itself, and the masks the
//! snapshot applies to root regions.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent address ranges (adjacent ones are merged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    /// Start to end of each range.
    map: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Adds `r` (merged with the ranges it overlaps or touches).
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // A range starting before `start` that reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let covered: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in covered {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
    }

    /// Removes `r` (splitting the ranges it cuts).
    pub fn remove(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let mut touched: Vec<(u64, u64)> = self
            .map
            .range(..r.end)
            .rev()
            .take_while(|&(_, &e)| e > r.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        touched.reverse();
        for (s, e) in touched {
            self.map.remove(&s);
            if s < r.start {
                self.map.insert(s, r.start);
            }
            if e > r.end {
                self.map.insert(r.end, e);
            }
        }
    }

    /// Whether every address of `r` is in the set.
    pub fn covers(&self, r: &Range<u64>) -> bool {
        r.start >= r.end
            || self
                .map
                .range(..=r.start)
                .next_back()
                .is_some_and(|(_, &e)| e >= r.end)
    }

    /// Whether `addr` is in the set.
    #[cfg(test)]
    pub fn contains(&self, addr: u64) -> bool {
        self.map
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &e)| addr < e)
    }

    /// The ranges, in address order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The parts of `r` outside the set, in address order.
    pub fn outside(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        let first = self
            .map
            .range(..=r.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(r.start);
        for (&s, &e) in self.map.range(first..r.end) {
            if e <= at {
                continue;
            }
            if s > at {
                out.push(at..s.min(r.end));
            }
            at = at.max(e);
            if at >= r.end {
                break;
            }
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }
}

/// Sorted, merged ranges built once and looked up many times (the snapshot's masks).
#[derive(Clone, Debug, Default)]
pub struct RangeIndex {
    ranges: Vec<(u64, u64)>,
}

impl RangeIndex {
    /// The union of `ranges` (in any order, overlapping or not).
    pub fn new(mut ranges: Vec<(u64, u64)>) -> RangeIndex {
        ranges.retain(|&(s, e)| s < e);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        RangeIndex { ranges: merged }
    }

    /// Whether `addr` lies in one of the ranges.
    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|&(s, _)| s <= addr);
        i > 0 && addr < self.ranges[i - 1].1
    }

    /// Whether there is no range.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(r: &Ranges) -> Vec<Range<u64>> {
        r.iter().collect()
    }

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut r = Ranges::default();
        r.insert(0x1000..0x2000);
        r.insert(0x3000..0x4000);
        r.insert(0x2000..0x2800); // touches the first
        assert_eq!(list(&r), vec![0x1000..0x2800, 0x3000..0x4000]);
        r.insert(0x2400..0x3800); // bridges both
        assert_eq!(list(&r), vec![0x1000..0x4000]);
        r.remove(0x1800..0x2000);
        assert_eq!(list(&r), vec![0x1000..0x1800, 0x2000..0x4000]);
        r.remove(0x0..0x1100);
        r.remove(0x3f00..0x9000);
        assert_eq!(list(&r), vec![0x1100..0x1800, 0x2000..0x3f00]);
        assert!(r.contains(0x1100) && !r.contains(0x1800) && r.contains(0x3eff));
        assert!(r.covers(&(0x2000..0x3f00)) && !r.covers(&(0x1700..0x2100)));
        r.remove(0x0..u64::MAX);
        assert!(r.is_empty());
        r.insert(5..5);
        assert!(r.is_empty());
    }

    #[test]
    fn outside_gives_the_gaps() {
        let mut r = Ranges::default();
        r.insert(0x1000..0x2000);
        r.insert(0x3000..0x4000);
        assert_eq!(
            r.outside(0x0..0x5000),
            vec![0x0..0x1000, 0x2000..0x3000, 0x4000..0x5000]
        );
        assert_eq!(r.outside(0x1800..0x3800), vec![0x2000..0x3000]);
        assert_eq!(r.outside(0x1000..0x2000), Vec::<Range<u64>>::new());
        assert_eq!(r.outside(0x2100..0x2200), vec![0x2100..0x2200]);
    }

    #[test]
    fn index_merges_overlaps() {
        let idx = RangeIndex::new(vec![(30, 40), (10, 20), (15, 25), (40, 41), (7, 7)]);
        assert!(!idx.contains(9) && idx.contains(10) && idx.contains(24) && !idx.contains(25));
        assert!(idx.contains(40) && !idx.contains(41) && !idx.contains(7));
        assert!(RangeIndex::new(Vec::new()).is_empty());
    }
}
