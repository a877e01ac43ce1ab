//! Call sites as the reports rank them: each distinct stack, or, with a call-site depth
//! `N` (`--call-site-depth`), the stacks grouped by `N` return addresses counted from
//! the first that is not the allocator's or the C/C++ runtimes' (a recorded stack
//! starts at the allocator's caller, which in a C++ program is `operator new`'s caller
//! inside `std::vector` and the like: see [`runtime_prefix`]). Grouped figures add up
//! (see [`SiteStats::merge`]).

use heaptape_format::StackId;

use super::growth::{fit, SiteGrowth};
use super::table::{SiteStats, SiteTable};
use crate::hash::FastMap;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::{is_runtime_frame, Symbolizer};

/// One call site of an image (one stack, or a group of stacks).
#[derive(Clone, Debug)]
pub struct CallSite {
    /// The stack that represents it: the smallest stack id of the group.
    pub stack: StackId,
    /// How many frames identify it, after `skip` (`None`: all of them).
    pub depth: Option<usize>,
    /// How many of the representative's innermost frames are the runtime's (not
    /// counted in `depth`; 0 without a depth).
    pub skip: usize,
    /// How many distinct stacks it groups.
    pub stacks: usize,
    /// Its figures (summed over the group).
    pub stats: SiteStats,
}

impl CallSite {
    /// Its return addresses, innermost first: the runtime's `skip`, then at most `depth`.
    pub fn addresses(&self, stacks: &StackTable) -> Vec<u64> {
        stacks
            .iter(self.stack)
            .take(self.depth.map_or(usize::MAX, |d| self.skip + d))
            .collect()
    }
}

/// How many of stack `id`'s innermost return addresses are the allocator's or the C/C++
/// runtimes' (every frame `symbolizer` gives for them is, by
/// [`is_runtime_frame`]), in the image whose modules are `modules`; 0 when all of
/// them are (such a stack is counted from its innermost frame).
pub fn runtime_prefix(
    stacks: &StackTable,
    id: StackId,
    modules: &ModuleMap,
    symbolizer: &dyn Symbolizer,
) -> usize {
    stacks
        .iter(id)
        .position(|address| {
            !symbolizer
                .symbolize(modules, address, true)
                .iter()
                .all(is_runtime_frame)
        })
        .unwrap_or(0)
}

/// The call sites of an image (its `sites`), grouped by `depth` frames after their
/// [`runtime_prefix`] (`None` or `Some(0)`: one per stack), in ascending order of
/// representative stack id. `modules` and `symbolizer` tell the runtime's frames.
pub fn call_sites(
    stacks: &StackTable,
    sites: &SiteTable,
    depth: Option<usize>,
    modules: &ModuleMap,
    symbolizer: &dyn Symbolizer,
) -> Vec<CallSite> {
    let depth = depth.filter(|&d| d > 0);
    let mut out: Vec<CallSite> = Vec::new();
    match depth {
        None => {
            out.extend(sites.iter().map(|(stack, s)| CallSite {
                stack,
                depth: None,
                skip: 0,
                stacks: 1,
                stats: s.clone(),
            }));
        }
        Some(d) => {
            let mut members: Vec<(StackId, &SiteStats)> = sites.iter().collect();
            members.sort_by_key(|m| m.0);
            let mut index: FastMap<Vec<u64>, usize> = FastMap::default();
            for (stack, s) in members {
                let skip = runtime_prefix(stacks, stack, modules, symbolizer);
                let key: Vec<u64> = stacks.iter(stack).skip(skip).take(d).collect();
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
                            skip,
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
