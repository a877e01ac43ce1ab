//! Call sites as the reports rank them: each distinct stack, or, with a call-site depth
//! `N` (`--call-site-depth`), the stacks grouped by their innermost `N` return addresses
//! (a recorded stack starts at the allocator's caller, so these frames are all outside
//! the allocator). Grouped figures add up (see [`SiteStats::merge`]).

use heaptape_format::StackId;

use super::growth::{fit, SiteGrowth};
use super::table::{SiteStats, SiteTable};
use crate::hash::FastMap;
use crate::stacks::StackTable;

/// One call site of an image (one stack, or a group of stacks).
#[derive(Clone, Debug)]
pub struct CallSite {
    /// The stack that represents it: the smallest stack id of the group.
    pub stack: StackId,
    /// How many of its innermost frames identify it (`None`: all of them).
    pub depth: Option<usize>,
    /// How many distinct stacks it groups.
    pub stacks: usize,
    /// Its figures (summed over the group).
    pub stats: SiteStats,
}

impl CallSite {
    /// Its return addresses, innermost first (at most `depth` of them).
    pub fn addresses(&self, stacks: &StackTable) -> Vec<u64> {
        stacks
            .iter(self.stack)
            .take(self.depth.unwrap_or(usize::MAX))
            .collect()
    }
}

/// The call sites of an image (its `sites`), grouped by their innermost `depth` frames
/// (`None` or `Some(0)`: one per stack), in ascending order of representative stack id.
pub fn call_sites(stacks: &StackTable, sites: &SiteTable, depth: Option<usize>) -> Vec<CallSite> {
    let depth = depth.filter(|&d| d > 0);
    let mut out: Vec<CallSite> = Vec::new();
    match depth {
        None => {
            out.extend(sites.iter().map(|(stack, s)| CallSite {
                stack,
                depth: None,
                stacks: 1,
                stats: s.clone(),
            }));
        }
        Some(d) => {
            let mut members: Vec<(StackId, &SiteStats)> = sites.iter().collect();
            members.sort_by_key(|m| m.0);
            let mut index: FastMap<Vec<u64>, usize> = FastMap::default();
            for (stack, s) in members {
                let key: Vec<u64> = stacks.iter(stack).take(d).collect();
                match index.get(&key) {
                    Some(&i) => {
                        let site: &mut CallSite = &mut out[i];
                        site.stats.merge(s);
                        site.stacks += 1;
                    }
                    None => {
                        index.insert(key, out.len());
                        out.push(CallSite {
                            stack,
                            depth: Some(d),
                            stacks: 1,
                            stats: s.clone(),
                        });
                    }
                }
            }
        }
    }
    out.sort_by_key(|c| c.stack);
    out
}

/// The `n` sites holding the most live bytes at exit (more blocks, then the smaller
/// stack id, first on ties); sites holding nothing are left out.
pub fn top_by_live(sites: &[CallSite], n: usize) -> Vec<&CallSite> {
    top_by(sites, n, |s| (s.live_bytes, s.live_blocks))
}

/// The `n` sites holding the most bytes at the image's heap peak (sites holding
/// nothing then are left out).
pub fn top_at_peak(sites: &[CallSite], n: usize) -> Vec<&CallSite> {
    top_by(sites, n, |s| (s.peak_bytes, s.peak_blocks))
}

fn top_by(sites: &[CallSite], n: usize, key: impl Fn(&SiteStats) -> (u64, u64)) -> Vec<&CallSite> {
    let mut v: Vec<&CallSite> = sites.iter().filter(|c| key(&c.stats).1 > 0).collect();
    v.sort_by(|a, b| {
        key(&b.stats)
            .cmp(&key(&a.stats))
            .then(a.stack.cmp(&b.stack))
    });
    v.truncate(n);
    v
}

/// The growth of every site of `sites` (the call sites of an image whose site table is
/// `table`), most suspicious first: by score, then peak live bytes, then stack id. Sites
/// that never held a byte are left out.
pub fn growth(table: &SiteTable, sites: &[CallSite]) -> Vec<SiteGrowth> {
    let bucket_ns = table.bucket_ns();
    let mut v: Vec<SiteGrowth> = sites
        .iter()
        .enumerate()
        .filter(|(_, c)| c.stats.max_live_bytes > 0)
        .map(|(i, c)| {
            let series = c.stats.series();
            SiteGrowth {
                site: i,
                live_bytes_start: series.first().copied().unwrap_or(0),
                live_bytes_end: c.stats.live_bytes,
                peak_live_bytes: c.stats.max_live_bytes,
                fit: fit(series, bucket_ns),
            }
        })
        .collect();
    v.sort_by(|a, b| {
        b.fit
            .score
            .total_cmp(&a.fit.score)
            .then(b.peak_live_bytes.cmp(&a.peak_live_bytes))
            .then(sites[a.site].stack.cmp(&sites[b.site].stack))
    });
    v
}
