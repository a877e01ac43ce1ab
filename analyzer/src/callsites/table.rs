//! Per-call-site aggregates.
//!
//! Every heap report ranks *call sites* (the stack an allocation was made from): which
//! site leaks most, allocates most, holds most at the peak. Keeping one small record per
//! distinct stack, updated in O(1) per event, gives all of those from one streaming pass
//! with memory bounded by the number of sites, never by the trace's length.
//!
//! The contribution of each site to the process's peak is the subtle one: the peak is
//! only known to be the peak after the fact, and copying every site's figures whenever
//! the live total reaches a new high would cost O(sites) per event. Instead each new high
//! bumps a *peak epoch*; a site about to change checks whether a peak was reached since
//! it last looked, and if so its current (unchanged since then) figures are exactly its
//! figures at that peak. `SiteTable::settle` applies the same rule to every site once,
//! at the end.

use heaptape_format::{StackId, Timestamp};

use super::growth::{Clock, Series};
use crate::hash::FastMap;

/// What one call site did in one process image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    /// Successful allocations made from this site.
    pub allocations: u64,
    /// Bytes those allocations requested.
    pub allocated_bytes: u64,
    /// Blocks from this site that were released (by any thread of the heap's users).
    pub frees: u64,
    /// Allocations from this site freed before their thread's next allocation.
    pub temporary_allocations: u64,
    /// Blocks from this site live now (at the end of the image: live at exit).
    pub live_blocks: u64,
    /// Bytes from this site live now (at the end of the image: live at exit).
    pub live_bytes: u64,
    /// Blocks from this site inherited from the parent at fork.
    pub inherited_blocks: u64,
    /// Bytes from this site inherited from the parent at fork.
    pub inherited_bytes: u64,
    /// This site's live blocks at the image's heap peak (valid once settled).
    pub peak_blocks: u64,
    /// This site's live bytes at the image's heap peak (valid once settled).
    pub peak_bytes: u64,
    /// The most bytes this site held at any moment.
    pub max_live_bytes: u64,
    /// The peak epoch `peak_*` were last brought up to.
    epoch: u64,
    /// Live bytes over time (see `callsites::growth`).
    series: Series,
}

impl SiteStats {
    /// Brings `peak_*` up to date before the live figures change (see the module docs).
    fn sync(&mut self, peak_epoch: u64) {
        if self.epoch != peak_epoch {
            self.epoch = peak_epoch;
            self.peak_blocks = self.live_blocks;
            self.peak_bytes = self.live_bytes;
        }
    }

    /// Live bytes at the end of each time bucket of the image (see `callsites::growth`;
    /// complete once the image ended).
    pub fn series(&self) -> &[u64] {
        self.series.values()
    }

    /// Adds `other`'s figures to this site's (grouping call sites): counts add up, the
    /// series add up bucket by bucket (they must share the image's clock), and the
    /// maximum is the larger of the summed series' maximum and each site's own.
    pub fn merge(&mut self, other: &SiteStats) {
        self.allocations += other.allocations;
        self.allocated_bytes = self.allocated_bytes.saturating_add(other.allocated_bytes);
        self.frees += other.frees;
        self.temporary_allocations += other.temporary_allocations;
        self.live_blocks += other.live_blocks;
        self.live_bytes = self.live_bytes.saturating_add(other.live_bytes);
        self.inherited_blocks += other.inherited_blocks;
        self.inherited_bytes = self.inherited_bytes.saturating_add(other.inherited_bytes);
        self.peak_blocks += other.peak_blocks;
        self.peak_bytes = self.peak_bytes.saturating_add(other.peak_bytes);
        let v = &mut self.series.values;
        if v.len() < other.series.values.len() {
            let fill = v.last().copied().unwrap_or(0);
            v.resize(other.series.values.len(), fill);
        }
        let other_last = other.series.values.last().copied().unwrap_or(0);
        for (i, x) in v.iter_mut().enumerate() {
            *x = x.saturating_add(*other.series.values.get(i).unwrap_or(&other_last));
        }
        let series_max = v.iter().copied().max().unwrap_or(0);
        self.max_live_bytes = self
            .max_live_bytes
            .max(other.max_live_bytes)
            .max(series_max);
    }
}

/// All call sites of one process image, and the peak epoch they are measured against.
#[derive(Clone, Debug)]
pub struct SiteTable {
    /// The sites, in order of first appearance.
    sites: Vec<(StackId, SiteStats)>,
    /// Stack id -> index into `sites`.
    index: FastMap<StackId, u32>,
    /// A direct-mapped cache of `index` by the stack id's low bits: `(stack, index + 1)`,
    /// 0 when empty. Stack ids are dense, so a program's few hot sites rarely collide,
    /// and a hit costs one load instead of hashing and probing (two site updates per
    /// allocation made that lookup ~6% of a replay).
    cache: [(StackId, u32); SITE_CACHE],
    peak_epoch: u64,
    clock: Clock,
}

/// Entries of [`SiteTable`]'s lookup cache.
const SITE_CACHE: usize = 64;

impl Default for SiteTable {
    fn default() -> Self {
        SiteTable {
            sites: Vec::new(),
            index: FastMap::default(),
            cache: [(0, 0); SITE_CACHE],
            peak_epoch: 0,
            clock: Clock::default(),
        }
    }
}

impl SiteTable {
    /// An empty table for an image that starts at `start` (its growth buckets count
    /// from there).
    pub(crate) fn starting_at(start: Timestamp) -> Self {
        SiteTable {
            clock: Clock::new(start),
            ..Default::default()
        }
    }

    /// [`SiteTable::touch`] at time `ts`: also brings the site's growth series up to
    /// `ts`'s bucket and its maximum up to date.
    pub(crate) fn touch_at(&mut self, stack: StackId, ts: Timestamp) -> &mut SiteStats {
        let bucket = self.clock.advance(ts);
        let clock = self.clock;
        let site = self.touch(stack);
        site.series.sync(&clock, bucket, site.live_bytes);
        site.max_live_bytes = site.max_live_bytes.max(site.live_bytes);
        site
    }

    /// [`SiteTable::settle`] at the image's end `ts`: also completes every series up to
    /// `ts`'s bucket.
    pub(crate) fn settle_at(&mut self, ts: Timestamp) {
        self.settle();
        let bucket = self.clock.advance(ts);
        for (_, site) in &mut self.sites {
            site.series.sync(&self.clock, bucket, site.live_bytes);
            site.max_live_bytes = site.max_live_bytes.max(site.live_bytes);
        }
    }

    /// Width of the growth buckets, in nanoseconds (final once the image ended).
    pub fn bucket_ns(&self) -> u64 {
        self.clock.bucket_ns()
    }
    /// The site for `stack`, its peak figures brought up to date so that the caller may
    /// change its live figures.
    #[inline]
    pub(crate) fn touch(&mut self, stack: StackId) -> &mut SiteStats {
        let epoch = self.peak_epoch;
        let slot = stack as usize % SITE_CACHE;
        let i = match self.cache[slot] {
            (s, i) if i != 0 && s == stack => i - 1,
            _ => {
                let sites = &mut self.sites;
                let i = *self.index.entry(stack).or_insert_with(|| {
                    sites.push((stack, SiteStats::default()));
                    (sites.len() - 1) as u32
                });
                self.cache[slot] = (stack, i + 1);
                i
            }
        };
        let site = &mut self.sites[i as usize].1;
        site.sync(epoch);
        site
    }

    /// The image's bucket clock.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// Live bytes and blocks of `stack`'s site now (0 for a site not seen yet).
    pub(crate) fn live_of(&self, stack: StackId) -> (u64, u64) {
        self.get(stack)
            .map_or((0, 0), |s| (s.live_bytes, s.live_blocks))
    }

    /// Counts a temporary allocation of `stack`'s site (found by a run's merge).
    pub(crate) fn add_temporary(&mut self, stack: StackId) {
        if let Some(&i) = self.index.get(&stack) {
            self.sites[i as usize].1.temporary_allocations += 1;
        }
    }

    /// Applies the sites of a run summary (see [`SiteSummary`]): the image reached
    /// `new_highs` new highs during the run, the last one with each site at its
    /// summary's high figures; `end` is the clock after the run.
    pub(crate) fn apply_run(&mut self, sites: &[SiteSummary], new_highs: usize, end: Clock) {
        self.peak_epoch += new_highs as u64;
        let clock = self.clock;
        for s in sites {
            // Brings the peak figures up to date (to the latest high before the run).
            let site = self.touch(s.stack);
            let bytes = site.live_bytes as i64;
            let blocks = site.live_blocks as i64;
            let at = |d: i64| (bytes + d) as u64;
            for st in &s.stretches {
                let c = clock.with_shift(st.shift);
                site.series.sync(&c, st.bucket, at(st.first));
                site.series.sync(&c, st.bucket, at(st.last));
            }
            site.max_live_bytes = site.max_live_bytes.max(at(s.max_touch_bytes));
            site.allocations += s.allocations;
            site.allocated_bytes = site.allocated_bytes.saturating_add(s.allocated_bytes);
            site.frees += s.frees;
            site.temporary_allocations += s.temporaries;
            site.live_bytes = at(s.d_bytes);
            site.live_blocks = (blocks + s.d_blocks) as u64;
            if new_highs > 0 {
                site.peak_bytes = at(s.high_bytes);
                site.peak_blocks = (blocks + s.high_blocks) as u64;
            }
        }
        self.clock = end;
    }

    /// Marks that the image's live total just reached a new high.
    pub(crate) fn new_peak(&mut self) {
        self.peak_epoch += 1;
    }

    /// Brings every site's peak figures up to date; call when the image ends.
    pub(crate) fn settle(&mut self) {
        let epoch = self.peak_epoch;
        for (_, site) in &mut self.sites {
            site.sync(epoch);
        }
    }

    /// The site for `stack`, if it did anything.
    pub fn get(&self, stack: StackId) -> Option<&SiteStats> {
        self.index.get(&stack).map(|&i| &self.sites[i as usize].1)
    }

    /// Every site, in order of first appearance.
    pub fn iter(&self) -> impl Iterator<Item = (StackId, &SiteStats)> {
        self.sites.iter().map(|(k, v)| (*k, v))
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Whether no site did anything.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The `n` sites holding the most live bytes (at exit, once the image ended), ties
    /// broken by more live blocks, then by smaller stack id. Sites holding nothing are
    /// left out.
    pub fn top_by_live(&self, n: usize) -> Vec<(StackId, &SiteStats)> {
        let mut v: Vec<_> = self.iter().filter(|(_, s)| s.live_blocks > 0).collect();
        v.sort_by(|a, b| {
            b.1.live_bytes
                .cmp(&a.1.live_bytes)
                .then(b.1.live_blocks.cmp(&a.1.live_blocks))
                .then(a.0.cmp(&b.0))
        });
        v.truncate(n);
        v
    }
}

/// One call site's accounting in a run, relative to the site before the run: what a
/// run summary (see `crate::replay`'s run summaries) keeps per site, and what
/// [`SiteTable::apply_run`] merges.
#[derive(Debug)]
pub(crate) struct SiteSummary {
    pub stack: StackId,
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub frees: u64,
    pub temporaries: u64,
    pub d_bytes: i64,
    pub d_blocks: i64,
    pub min_bytes: i64,
    pub min_blocks: i64,
    /// Highest live bytes seen at a touch, before its change.
    pub max_touch_bytes: i64,
    /// Live figures at the run's last record high (valid once settled).
    pub high_bytes: i64,
    pub high_blocks: i64,
    /// The record high `high_*` were last brought up to.
    epoch: usize,
    /// Stretches of touches with the same bucket width and bucket.
    pub stretches: Vec<Stretch>,
}

/// Consecutive touches of a site in one bucket, in a run (see [`SiteSummary`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stretch {
    pub shift: u32,
    pub bucket: usize,
    /// Relative live bytes before the first and before the last touch.
    pub first: i64,
    pub last: i64,
}

impl SiteSummary {
    /// A site not touched yet in the run.
    pub(crate) fn new(stack: StackId) -> Self {
        SiteSummary {
            stack,
            allocations: 0,
            allocated_bytes: 0,
            frees: 0,
            temporaries: 0,
            d_bytes: 0,
            d_blocks: 0,
            min_bytes: 0,
            min_blocks: 0,
            max_touch_bytes: i64::MIN,
            high_bytes: 0,
            high_blocks: 0,
            epoch: 0,
            stretches: Vec::new(),
        }
    }

    /// Brings `high_*` to the run's record high number `epoch` before the site's
    /// figures change (the lazy epoch rule of [`SiteStats`]'s peak figures).
    #[inline]
    pub(crate) fn sync_high(&mut self, epoch: usize) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.high_bytes = self.d_bytes;
            self.high_blocks = self.d_blocks;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mimics the image's accounting: change a site, then check for a new high.
    fn change(t: &mut SiteTable, total: &mut i64, peak: &mut i64, stack: StackId, d: i64) {
        let s = t.touch(stack);
        s.live_bytes = (s.live_bytes as i64 + d) as u64;
        s.live_blocks = (s.live_blocks as i64 + d.signum()) as u64;
        *total += d;
        if *total > *peak {
            *peak = *total;
            t.new_peak();
        }
    }

    #[test]
    fn peak_contributions_are_those_at_the_last_high() {
        let mut t = SiteTable::default();
        let (mut total, mut peak) = (0, 0);
        change(&mut t, &mut total, &mut peak, 1, 10);
        change(&mut t, &mut total, &mut peak, 2, 5); // peak 15: site1 10, site2 5
        change(&mut t, &mut total, &mut peak, 1, -10);
        change(&mut t, &mut total, &mut peak, 3, 7);
        change(&mut t, &mut total, &mut peak, 2, 3); // 15 again: not a new high
        t.settle();
        assert_eq!(peak, 15);
        assert_eq!(t.get(1).unwrap().peak_bytes, 10);
        assert_eq!(t.get(2).unwrap().peak_bytes, 5);
        assert_eq!(t.get(3).unwrap().peak_bytes, 0);
        assert_eq!(t.get(2).unwrap().live_bytes, 8);
        change(&mut t, &mut total, &mut peak, 3, 20); // 35: new high after settling
        t.settle();
        assert_eq!(t.get(1).unwrap().peak_bytes, 0);
        assert_eq!(t.get(2).unwrap().peak_bytes, 8);
        assert_eq!(t.get(3).unwrap().peak_bytes, 27);
    }

    #[test]
    fn top_by_live_orders_and_filters() {
        let mut t = SiteTable::default();
        for (stack, bytes, blocks) in [(5, 10, 1), (3, 10, 2), (4, 10, 2), (9, 0, 0), (1, 50, 1)] {
            let s = t.touch(stack);
            s.live_bytes = bytes;
            s.live_blocks = blocks;
        }
        let top: Vec<StackId> = t.top_by_live(10).into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, vec![1, 3, 4, 5]);
        assert_eq!(t.top_by_live(2).len(), 2);
    }
}
