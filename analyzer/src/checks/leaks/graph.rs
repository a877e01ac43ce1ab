//! The pointer graph of one snapshot ([`SnapshotGraph`]) and its classification into
//! memcheck's classes: resolving pointers to blocks (start, interior, or accepted by a
//! heuristic), the flat adjacency array, the two marking passes and the cliques of lost
//! blocks (see the [module docs](super) for the rules and their performance).

use std::sync::atomic::{AtomicU8, Ordering};

use heaptape_format::heuristics::BlockIndex;
use heaptape_format::{Pointer, RootKind, SnapshotRoot, SnapshotThread};
use rayon::prelude::*;

use super::heuristics::{BlockRef, HeuristicSet, HeuristicSource};
use super::model::{GraphStats, LeakKind, LeakReport, LiveBlock, NO_HEURISTIC, NO_LEADER};
use super::pointers::{
    edge_kind, edge_target, Csr, PointerGraph, RootRegion, RootWord, Run, KIND_SHIFT, K_HEUR,
    K_INTERIOR, K_START, K_STRAY, OFFSET_MAX, OFFSET_SHIFT,
};
use super::tally::tally;

/// The pointer graph of one snapshot, built record by record, then classified.
#[derive(Clone, Debug, Default)]
pub struct SnapshotGraph {
    blocks: Vec<LiveBlock>,
    roots: Vec<u64>,
    /// Where each of `roots` was found.
    root_words: Vec<RootWord>,
    regions: Vec<RootRegion>,
    threads: Vec<SnapshotThread>,
    runs: Vec<Run>,
    targets: Vec<u64>,
}

/// Sets `bits` in `flag` and returns the previous value (skipping the write when
/// they are set already, as they mostly are in dense graphs).
#[inline]
fn set_bits(flag: &AtomicU8, bits: u8) -> u8 {
    let old = flag.load(Ordering::Relaxed);
    if old & bits == bits {
        old
    } else {
        flag.fetch_or(bits, Ordering::Relaxed)
    }
}

// Mark flags.
const F_DEFINITE: u8 = 1;
const F_ANY: u8 = 2;
const F_START_FROM_DEFINITE: u8 = 4;

impl SnapshotGraph {
    /// A graph over the blocks live at the snapshot (any order; duplicates of an
    /// address are dropped, keeping the first).
    pub fn new(mut blocks: Vec<LiveBlock>) -> Self {
        blocks.par_sort_by_key(|b| b.address);
        blocks.dedup_by_key(|b| b.address);
        SnapshotGraph {
            blocks,
            ..Default::default()
        }
    }

    /// How many live blocks the graph covers.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Adds root pointers found in an unnamed place (an anonymous region at 0, as a
    /// test or a synthetic graph has them).
    pub fn add_root(&mut self, pointers: &[Pointer]) {
        self.add_root_region(&SnapshotRoot {
            pid: 0,
            kind: RootKind::Anonymous,
            start: 0,
            len: pointers.iter().map(|p| p.offset + 8).max().unwrap_or(0),
            pointers: pointers.to_vec(),
        });
    }

    /// Adds a root region and the pointers found in it (a `SnapshotRoot` record; a
    /// region split over several records is simply added several times).
    pub fn add_root_region(&mut self, root: &SnapshotRoot) {
        let region = self.regions.len() as u32;
        self.regions.push(RootRegion {
            kind: root.kind.clone(),
            start: root.start,
            len: root.len,
        });
        self.roots.extend(root.pointers.iter().map(|p| p.target));
        self.root_words
            .extend(root.pointers.iter().map(|p| RootWord {
                region,
                offset: p.offset,
            }));
    }

    /// Adds a thread's call stack at the snapshot (a `SnapshotThread` record), which
    /// names the frames its stack root words are in.
    pub fn add_thread(&mut self, thread: SnapshotThread) {
        self.threads.push(thread);
    }

    /// Adds the pointers found inside the block at `address` (a `SnapshotBlock`
    /// record; split blocks are merged).
    pub fn add_block(&mut self, address: u64, pointers: &[Pointer]) {
        if pointers.is_empty() {
            return;
        }
        let start = self.targets.len();
        self.targets.extend(pointers.iter().map(|p| p.target));
        self.runs.push(Run {
            source: address,
            start,
            end: self.targets.len(),
        });
    }

    /// Classifies every block. `source` answers the heuristics in `enabled` (pass
    /// [`HeuristicSet::NONE`] to turn them off, as `--leak-check-heuristics=none`).
    ///
    /// Fails only when the snapshot has more than `u32::MAX - 1` live blocks.
    pub fn classify(
        self,
        source: &dyn HeuristicSource,
        enabled: HeuristicSet,
    ) -> Result<LeakReport, String> {
        let SnapshotGraph {
            blocks,
            mut roots,
            root_words,
            regions,
            threads,
            mut runs,
            mut targets,
        } = self;
        let n = blocks.len();
        if n >= NO_LEADER as usize {
            return Err(format!(
                "{n} live blocks are more than the leak checker handles"
            ));
        }
        let mut stats = GraphStats {
            blocks: n as u64,
            root_pointers: roots.len() as u64,
            block_pointers: targets.len() as u64,
            ..Default::default()
        };
        let index = BlockIndex::new(blocks.par_iter().map(|b| (b.address, b.size)).collect());
        let resolver = Resolver {
            blocks: &blocks,
            index: &index,
            source,
            enabled,
        };

        // Resolve every target in place.
        roots.par_iter_mut().for_each(|t| *t = resolver.edge(*t));
        targets.par_iter_mut().for_each(|t| *t = resolver.edge(*t));
        stats.stray_pointers = roots
            .par_iter()
            .chain(targets.par_iter())
            .filter(|&&e| edge_kind(e) == K_STRAY)
            .count() as u64;

        // Runs: source address -> block index (u64::MAX: unknown), then CSR.
        runs.par_iter_mut().for_each(|r| {
            r.source = match index.index_of(r.source) {
                Some(i) if blocks[i].address == r.source => i as u64,
                _ => u64::MAX,
            };
        });
        let mut unknown = 0u64;
        runs.retain(|r| {
            let keep = r.source != u64::MAX;
            if !keep {
                unknown += (r.end - r.start) as u64;
            }
            keep
        });
        stats.unknown_source_pointers = unknown;
        runs.par_sort_by_key(|r| r.source);
        let graph = Csr::build(n, &runs, &targets);
        drop(targets);
        drop(runs);

        // Marking: definite reachability (noting, for the heuristic credit, which
        // blocks a start pointer or an accepted interior pointer from a definite source
        // reaches), then reachability at all.
        let flags: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(0)).collect();
        let heur_seen: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(0)).collect();
        let definite = |e: u64| -> Option<u32> {
            let t = edge_target(e);
            let bits = match edge_kind(e) {
                K_START => F_DEFINITE | F_START_FROM_DEFINITE,
                k if k >= K_HEUR => {
                    set_bits(&heur_seen[t], 1 << (k - K_HEUR));
                    F_DEFINITE
                }
                _ => return None,
            };
            (set_bits(&flags[t], bits) & F_DEFINITE == 0).then_some(t as u32)
        };
        let any = |e: u64| -> Option<u32> {
            let t = edge_target(e);
            (edge_kind(e) != K_STRAY && set_bits(&flags[t], F_ANY) & F_ANY == 0).then_some(t as u32)
        };
        let seeds: Vec<u32> = roots.iter().filter_map(|&e| definite(e)).collect();
        graph.reach(seeds, &definite);
        let seeds: Vec<u32> = roots.iter().filter_map(|&e| any(e)).collect();
        graph.reach(seeds, &any);

        let mut kinds: Vec<LeakKind> = flags
            .par_iter()
            .map(|f| {
                let f = f.load(Ordering::Relaxed);
                if f & F_DEFINITE != 0 {
                    LeakKind::StillReachable
                } else if f & F_ANY != 0 {
                    LeakKind::PossiblyLost
                } else {
                    LeakKind::DefinitelyLost // unreached, for now
                }
            })
            .collect();
        let heuristic_of: Vec<u8> = (0..n)
            .into_par_iter()
            .map(|b| {
                let f = flags[b].load(Ordering::Relaxed);
                if f & F_DEFINITE == 0 || f & F_START_FROM_DEFINITE != 0 {
                    return NO_HEURISTIC;
                }
                HeuristicSet(heur_seen[b].load(Ordering::Relaxed))
                    .first()
                    .map_or(NO_HEURISTIC, |h| h.index() as u8)
            })
            .collect();
        drop(flags);
        drop(heur_seen);

        // Cliques, in ascending address order (memcheck's second pass).
        let mut indirect = vec![0u64; n];
        let mut leaders = vec![NO_LEADER; n];
        let mut stack: Vec<u32> = Vec::new();
        for leader in 0..n {
            if kinds[leader] != LeakKind::DefinitelyLost {
                continue;
            }
            stack.push(leader as u32);
            while let Some(top) = stack.pop() {
                for &e in graph.edges(top as usize) {
                    let t = edge_target(e);
                    if kinds[t] != LeakKind::DefinitelyLost || t == leader {
                        continue;
                    }
                    // Unreached: joins this clique (a former leader brings its own).
                    indirect[leader] = indirect[leader]
                        .saturating_add(blocks[t].size)
                        .saturating_add(indirect[t]);
                    indirect[t] = 0;
                    kinds[t] = LeakKind::IndirectlyLost;
                    leaders[t] = leader as u32;
                    stack.push(t as u32);
                }
            }
        }
        // A former leader's members point at it: resolve to the final leader.
        for i in 0..n {
            let mut l = leaders[i];
            if l == NO_LEADER {
                continue;
            }
            while leaders[l as usize] != NO_LEADER {
                l = leaders[l as usize];
            }
            let mut j = i;
            while leaders[j] != NO_LEADER && leaders[j] != l {
                let next = leaders[j] as usize;
                leaders[j] = l;
                j = next;
            }
        }

        let (summary, loss_records) = tally(&blocks, &kinds, &indirect, &heuristic_of);
        Ok(LeakReport {
            summary,
            loss_records,
            stats,
            heuristics: enabled,
            blocks,
            kinds,
            leaders,
            indirect,
            heuristic_of,
            graph: PointerGraph {
                csr: graph,
                roots,
                root_words,
                regions,
                threads,
            },
        })
    }
}

struct Resolver<'a> {
    blocks: &'a [LiveBlock],
    index: &'a BlockIndex,
    source: &'a dyn HeuristicSource,
    enabled: HeuristicSet,
}

impl Resolver<'_> {
    /// The encoded edge for a pointer to `target`.
    #[inline]
    fn edge(&self, target: u64) -> u64 {
        let Some(b) = self.index.index_of(target) else {
            return K_STRAY << KIND_SHIFT;
        };
        let offset = target - self.blocks[b].address;
        let kind = if offset == 0 {
            K_START
        } else if self.enabled.is_empty() {
            K_INTERIOR
        } else {
            let block = &self.blocks[b];
            let r = BlockRef {
                address: block.address,
                size: block.size,
                func: block.func,
            };
            match self
                .source
                .matching(&r, offset)
                .intersect(self.enabled)
                .first()
            {
                Some(h) => K_HEUR + h.index() as u64,
                None => K_INTERIOR,
            }
        };
        (offset.min(OFFSET_MAX) << OFFSET_SHIFT) | (kind << KIND_SHIFT) | b as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::leaks::{Count, NoHeuristicData};
    use heaptape_format::AllocFn;

    fn blk(address: u64, size: u64) -> LiveBlock {
        LiveBlock {
            address,
            size,
            stack: 1,
            func: AllocFn::Malloc,
            ts: 0,
        }
    }

    fn p(target: u64) -> Pointer {
        Pointer { offset: 0, target }
    }

    #[test]
    fn merged_clique_resolves_to_final_leader() {
        // 0x100 -> 0x200; 0x300 -> 0x100. 0x100 leads first, then 0x300 absorbs it.
        let mut g = SnapshotGraph::new(vec![blk(0x300, 8), blk(0x100, 8), blk(0x200, 8)]);
        g.add_block(0x100, &[p(0x200)]);
        g.add_block(0x300, &[p(0x100)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(
            r.summary.definitely_lost,
            Count {
                blocks: 1,
                bytes: 8
            }
        );
        assert_eq!(
            r.summary.indirectly_lost,
            Count {
                blocks: 2,
                bytes: 16
            }
        );
        assert_eq!(r.find(0x300).unwrap().indirect_bytes, 16);
        assert_eq!(r.find(0x100).unwrap().indirect_bytes, 0);
        assert_eq!(r.find(0x100).unwrap().leader, Some(0x300));
        assert_eq!(r.find(0x200).unwrap().leader, Some(0x300));
        assert_eq!(r.find(0x300).unwrap().kind, LeakKind::DefinitelyLost);
    }

    #[test]
    fn stray_and_unknown_pointers_are_counted_and_ignored() {
        let mut g = SnapshotGraph::new(vec![blk(0x100, 8)]);
        g.add_root(&[p(0x5000)]);
        g.add_block(0x900, &[p(0x100)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(r.stats.stray_pointers, 1);
        assert_eq!(r.stats.unknown_source_pointers, 1);
        assert_eq!(
            r.summary.definitely_lost,
            Count {
                blocks: 1,
                bytes: 8
            }
        );
    }

    #[test]
    fn zero_sized_block_is_reached_by_its_start() {
        let mut g = SnapshotGraph::new(vec![blk(0x100, 0), blk(0x101, 4)]);
        g.add_root(&[p(0x100), p(0x101)]);
        let r = g.classify(&NoHeuristicData, HeuristicSet::ALL).unwrap();
        assert_eq!(
            r.summary.still_reachable,
            Count {
                blocks: 2,
                bytes: 4
            }
        );
    }
}
