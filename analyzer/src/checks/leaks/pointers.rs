//! The resolved pointer graph of a classified snapshot ([`PointerGraph`]): blocks by
//! index in address order, each edge encoded in one word (target, kind, offset), the
//! flat adjacency array ([`Csr`]) the classifier walks, and where each root word was
//! found ([`RootWord`], [`RootRegion`]), which the retention analysis names.

use heaptape_format::{RootKind, SnapshotThread};
use rayon::prelude::*;

/// Frontiers at least this long are expanded in parallel.
const PAR_FRONTIER: usize = 4096;

/// A block's pointers, as found (before the adjacency is built): its address (then its
/// index), and their range in the list of targets.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) source: u64,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// A root region of the snapshot (a `SnapshotRoot` record, without its pointers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRegion {
    /// What the region is.
    pub kind: RootKind,
    /// Its start (0 for registers).
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// Where a root pointer was found: a region (an index into the regions) and the
/// word's offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootWord {
    /// Index of the region.
    pub region: u32,
    /// Byte offset of the word in the region.
    pub offset: u64,
}

// Edge encoding after resolution: target block index in the low 32 bits, the kind in
// the next 8, the offset of the target in its block in the top 24 (saturated: only
// retention paths show it).
pub(super) const KIND_SHIFT: u32 = 32;
pub(super) const OFFSET_SHIFT: u32 = 40;
pub(super) const OFFSET_MAX: u64 = (1 << 24) - 1;
pub(super) const K_STRAY: u64 = 0;
pub(super) const K_START: u64 = 1;
pub(super) const K_INTERIOR: u64 = 2;
/// K_HEUR + heuristic index.
pub(super) const K_HEUR: u64 = 3;

#[inline]
pub(super) fn edge_target(e: u64) -> usize {
    (e & 0xffff_ffff) as usize
}

#[inline]
pub(super) fn edge_kind(e: u64) -> u64 {
    (e >> KIND_SHIFT) & 0xff
}

#[inline]
fn edge_offset(e: u64) -> u64 {
    e >> OFFSET_SHIFT
}

/// The pointer graph of a classified snapshot, resolved to block indexes (address
/// order), kept for the retention analysis ([`crate::checks::retention`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointerGraph {
    pub(super) csr: Csr,
    /// Every root pointer, resolved (stray ones included).
    pub(super) roots: Vec<u64>,
    /// Where each of `roots` was found.
    pub(super) root_words: Vec<RootWord>,
    pub(super) regions: Vec<RootRegion>,
    pub(super) threads: Vec<SnapshotThread>,
}

/// How a pointer reaches its target block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerKind {
    /// To its start.
    Start,
    /// Inside it, at `offset` bytes from its start (at most 16 MiB - 1: larger offsets
    /// are held at that); `heuristic` when one of the enabled heuristics accepts it.
    Interior {
        /// The target's offset in the block.
        offset: u64,
        /// Whether an enabled heuristic accepts the pointer.
        heuristic: bool,
    },
}

#[inline]
fn decode(e: u64) -> Option<(u32, PointerKind)> {
    let kind = match edge_kind(e) {
        K_STRAY => return None,
        K_START => PointerKind::Start,
        k => PointerKind::Interior {
            offset: edge_offset(e),
            heuristic: k >= K_HEUR,
        },
    };
    Some((edge_target(e) as u32, kind))
}

impl PointerGraph {
    /// How many blocks the graph has.
    pub fn block_count(&self) -> usize {
        self.csr.offsets.len().saturating_sub(1)
    }

    /// The blocks block `b` points into, with how (a target appears once per pointer).
    pub fn edges(&self, b: usize) -> impl Iterator<Item = (u32, PointerKind)> + '_ {
        self.csr.edges(b).iter().filter_map(|&e| decode(e))
    }

    /// The blocks block `b` points into (an index each, once per pointer), decoding
    /// nothing else: what graph walks use.
    #[inline]
    pub(crate) fn targets(&self, b: usize) -> impl ExactSizeIterator<Item = u32> + '_ {
        // Stray pointers are not in the adjacency (see `Csr::build`).
        self.csr.edges(b).iter().map(|&e| edge_target(e) as u32)
    }

    /// How many pointers between blocks the graph has.
    pub(crate) fn edge_count(&self) -> usize {
        self.csr.adj.len()
    }

    /// Every root pointer into a block: where it was found, its target, how.
    pub fn root_pointers(&self) -> impl Iterator<Item = (RootWord, u32, PointerKind)> + '_ {
        self.roots
            .iter()
            .zip(&self.root_words)
            .filter_map(|(&e, &w)| decode(e).map(|(t, k)| (w, t, k)))
    }

    /// The root regions, indexed by [`RootWord::region`].
    pub fn regions(&self) -> &[RootRegion] {
        &self.regions
    }

    /// The threads' call stacks at the snapshot (none in traces before format 4).
    pub fn threads(&self) -> &[SnapshotThread] {
        &self.threads
    }
}

/// Adjacency of the blocks: the edges of block `b` are `adj[offsets[b]..offsets[b+1]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Csr {
    offsets: Vec<usize>,
    adj: Vec<u64>,
}

impl Csr {
    pub(super) fn build(n: usize, runs: &[Run], targets: &[u64]) -> Csr {
        let mut offsets = vec![0usize; n + 1];
        for r in runs {
            let live = targets[r.start..r.end]
                .iter()
                .filter(|&&e| edge_kind(e) != K_STRAY)
                .count();
            offsets[r.source as usize + 1] += live;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut adj = Vec::with_capacity(offsets[n]);
        // Runs are sorted by source, so appending in run order fills the CSR order.
        for r in runs {
            adj.extend(
                targets[r.start..r.end]
                    .iter()
                    .filter(|&&e| edge_kind(e) != K_STRAY),
            );
        }
        Csr { offsets, adj }
    }

    #[inline]
    pub(super) fn edges(&self, b: usize) -> &[u64] {
        &self.adj[self.offsets[b]..self.offsets[b + 1]]
    }

    /// Walks from `frontier` (already visited): `visit` marks the target of an edge
    /// and returns it if the walk goes on from there.
    pub(super) fn reach<F>(&self, mut frontier: Vec<u32>, visit: &F)
    where
        F: Fn(u64) -> Option<u32> + Sync,
    {
        while !frontier.is_empty() {
            if frontier.len() >= PAR_FRONTIER {
                frontier = frontier
                    .par_iter()
                    .flat_map_iter(|&b| self.edges(b as usize).iter().filter_map(|&e| visit(e)))
                    .collect();
            } else {
                // Depth-first on this thread until the work is worth sharing.
                while let Some(b) = frontier.pop() {
                    frontier.extend(self.edges(b as usize).iter().filter_map(|&e| visit(e)));
                    if frontier.len() >= 4 * PAR_FRONTIER {
                        break;
                    }
                }
            }
        }
    }
}
