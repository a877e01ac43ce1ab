//! Immediate dominators of a flow graph (semi-NCA: Lengauer-Tarjan's semidominators
//! computed with path compression, then each immediate dominator found as the nearest
//! common ancestor of the node's DFS parent and its semidominator; Georgiadis,
//! "Linear-Time Algorithms for Dominators and Related Problems", 2005).
//!
//! A node `d` dominates `v` when every path from the root to `v` passes through `d`:
//! if `d` let go, `v` would be unreachable. The immediate dominator is the closest
//! such node; the immediate-dominator links form a tree (the dominator tree), and the
//! memory a node *retains* is what its subtree holds.
//!
//! Everything is iterative (graphs of tens of millions of nodes, paths as long as a
//! linked list) and works on DFS preorder numbers, in flat `u32` arrays.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::platform::prefetch;

/// No node / no number.
pub(crate) const NONE: u32 = u32::MAX;

/// A directed graph the dominator computation walks: nodes `0..len()`.
pub(crate) trait FlowGraph: Sync {
    /// Number of nodes.
    fn len(&self) -> usize;
    /// The successors of `v` (duplicates allowed).
    fn successors(&self, v: u32) -> &[u32];
    /// A hint that `successors(v)` will be asked for soon. The default does nothing.
    fn prefetch(&self, v: u32) {
        let _ = v;
    }
}

/// A flow graph as a flat adjacency array: the successors of `v` are
/// `targets[offsets[v]..offsets[v + 1]]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Adjacency {
    pub(crate) offsets: Vec<usize>,
    pub(crate) targets: Vec<u32>,
}

impl FlowGraph for Adjacency {
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    fn successors(&self, v: u32) -> &[u32] {
        &self.targets[self.offsets[v as usize]..self.offsets[v as usize + 1]]
    }

    #[inline]
    fn prefetch(&self, v: u32) {
        prefetch(&self.offsets[v as usize]);
    }
}

/// The semidominator computation's state of one preorder number, together in 8 bytes
/// (one cache miss per visit on a large graph).
#[derive(Clone, Copy)]
struct Slot {
    /// Its parent in the path-compressed forest, [`NONE`] before it is linked.
    ancestor: u32,
    /// The least semidominator on its compressed forest path (semi-NCA needs the
    /// value only, not the node that has it).
    best: u32,
}

/// The dominator tree of the nodes reachable from a root, in DFS preorder numbers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dominators {
    /// The nodes reached, in DFS preorder: `order[0]` is the root.
    pub(crate) order: Vec<u32>,
    /// Each node's preorder number, [`NONE`] for the nodes not reached.
    pub(crate) number: Vec<u32>,
    /// The immediate dominator of each number (a number; the root's is itself).
    pub(crate) idom: Vec<u32>,
    /// The predecessors of each number (numbers).
    preds: Predecessors,
}

impl Dominators {
    /// The dominator tree of the nodes of `g` reachable from `root`.
    pub(crate) fn compute(g: &impl FlowGraph, root: u32) -> Dominators {
        let (order, number, parent) = depth_first(g, root);
        let n = order.len();
        let preds = Predecessors::new(g, &order, &number);

        // Semidominators, in reverse preorder, with a path-compressed forest of the
        // numbers processed so far.
        let mut slots: Vec<Slot> = (0..n as u32)
            .map(|x| Slot {
                ancestor: NONE,
                best: x,
            })
            .collect();
        let mut semi: Vec<u32> = (0..n as u32).collect();
        let mut chain: Vec<u32> = Vec::new();
        for w in (1..n).rev() {
            // The predecessors two numbers on are independent loads: start them now.
            if w > 2 {
                for &v in preds.of(w - 2) {
                    prefetch(&slots[v as usize]);
                }
            }
            let mut s = semi[w];
            for &v in preds.of(w) {
                s = s.min(if (v as usize) < w {
                    // Not processed yet, so not linked: its own number.
                    v
                } else {
                    eval(v, &mut slots, &mut chain)
                });
            }
            semi[w] = s;
            slots[w] = Slot {
                ancestor: parent[w],
                best: s,
            };
        }
        drop(slots);
        let preds_kept = preds;

        // Immediate dominators: up the DFS tree from the parent to the first number
        // not above the semidominator.
        let mut idom = parent;
        idom[0] = 0;
        for w in 1..n {
            let mut d = idom[w];
            while d > semi[w] {
                d = idom[d as usize];
            }
            idom[w] = d;
        }
        Dominators {
            order,
            number,
            idom,
            preds: preds_kept,
        }
    }

    /// How many nodes were reached.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The predecessors of number `x` (numbers).
    pub(crate) fn predecessors(&self, x: usize) -> &[u32] {
        self.preds.of(x)
    }
}

/// Iterative depth-first search: the preorder, each node's number, each number's DFS
/// parent (a number; the root's is [`NONE`]).
fn depth_first(g: &impl FlowGraph, root: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    // Visited nodes, one bit each: the test on every edge stays in the cache, where a
    // table of numbers (32 times larger) would take a miss per edge on a large graph;
    // the numbers are written afterwards, on every core.
    let mut seen = vec![0u64; g.len().div_ceil(64)];
    let mut order = vec![root];
    let mut parent = vec![NONE];
    seen[root as usize / 64] |= 1 << (root % 64);
    // (the node's successors, the next one to look at, the node's number)
    let mut stack: Vec<(&[u32], usize, u32)> = vec![(g.successors(root), 0, 0)];
    while let Some(top) = stack.last_mut() {
        let (succ, i, x) = *top;
        if i < succ.len() {
            top.1 = i + 1;
            let w = succ[i];
            let (word, bit) = (w as usize / 64, 1u64 << (w % 64));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                let y = order.len() as u32;
                parent.push(x);
                order.push(w);
                let next = g.successors(w);
                // Its first unvisited successor is entered next: start loading where
                // their successors are.
                for &u in next {
                    g.prefetch(u);
                }
                stack.push((next, 0, y));
            }
        } else {
            stack.pop();
        }
    }
    drop(seen);
    let number = if order.len() < PARALLEL_NODES {
        let mut number = vec![NONE; g.len()];
        for (x, &v) in order.iter().enumerate() {
            number[v as usize] = x as u32;
        }
        number
    } else {
        let number: Vec<AtomicU32> = (0..g.len()).map(|_| AtomicU32::new(NONE)).collect();
        order
            .par_iter()
            .enumerate()
            .for_each(|(x, &v)| number[v as usize].store(x as u32, Ordering::Relaxed));
        number.into_iter().map(AtomicU32::into_inner).collect()
    };
    (order, number, parent)
}

/// Nodes of the preorder looked at per task when the predecessors are counted and
/// filled.
const AHEAD_CHUNK: usize = 1 << 14;
/// How far ahead in the preorder a node's successors are prefetched.
const AHEAD: usize = 8;
/// Graphs of fewer nodes are numbered and their predecessors found on this thread
/// alone: handing small jobs to the pool costs more than the work (a trace of 641
/// short processes spent most of its retention time waking workers).
const PARALLEL_NODES: usize = 1 << 16;

/// The predecessors of each reached node, by preorder number (a flat array).
#[derive(Clone, Debug, Default)]
struct Predecessors {
    offsets: Vec<usize>,
    from: Vec<u32>,
}

impl Predecessors {
    /// Counted and filled on every core: the passes are random accesses over the whole
    /// graph (the order of each node's predecessors does not matter: only their least
    /// semidominator does).
    fn new(g: &impl FlowGraph, order: &[u32], number: &[u32]) -> Predecessors {
        let n = order.len();
        let counts: Vec<AtomicUsize> = (0..=n).map(|_| AtomicUsize::new(0)).collect();
        let parallel = n >= PARALLEL_NODES;
        let count = |chunk: &[u32]| {
            for (k, &v) in chunk.iter().enumerate() {
                if let Some(&u) = chunk.get(k + AHEAD) {
                    g.prefetch(u);
                }
                for &w in g.successors(v) {
                    counts[number[w as usize] as usize + 1].fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        if parallel {
            order.par_chunks(AHEAD_CHUNK).for_each(count);
        } else {
            order.chunks(AHEAD_CHUNK).for_each(count);
        }
        let mut offsets: Vec<usize> = counts.into_iter().map(AtomicUsize::into_inner).collect();
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let fill: Vec<AtomicUsize> = offsets[..n].iter().map(|&o| AtomicUsize::new(o)).collect();
        let from: Vec<AtomicU32> = (0..offsets[n]).map(|_| AtomicU32::new(0)).collect();
        let place = |(c, chunk): (usize, &[u32])| {
            for (k, &v) in chunk.iter().enumerate() {
                if let Some(&u) = chunk.get(k + AHEAD) {
                    g.prefetch(u);
                }
                let x = (c * AHEAD_CHUNK + k) as u32;
                for &w in g.successors(v) {
                    let at = fill[number[w as usize] as usize].fetch_add(1, Ordering::Relaxed);
                    from[at].store(x, Ordering::Relaxed);
                }
            }
        };
        let from = if parallel {
            order.par_chunks(AHEAD_CHUNK).enumerate().for_each(place);
            from.into_par_iter().map(AtomicU32::into_inner).collect()
        } else {
            order.chunks(AHEAD_CHUNK).enumerate().for_each(place);
            from.into_iter().map(AtomicU32::into_inner).collect()
        };
        Predecessors { offsets, from }
    }

    fn of(&self, w: usize) -> &[u32] {
        &self.from[self.offsets[w]..self.offsets[w + 1]]
    }
}

/// The least semidominator on the forest path above `v`, a linked number (path
/// compression, iteratively: `chain` is scratch space).
fn eval(v: u32, slots: &mut [Slot], chain: &mut Vec<u32>) -> u32 {
    let a = slots[v as usize].ancestor;
    if a == NONE || slots[a as usize].ancestor == NONE {
        return slots[v as usize].best;
    }
    chain.clear();
    let mut x = v;
    while slots[slots[x as usize].ancestor as usize].ancestor != NONE {
        chain.push(x);
        x = slots[x as usize].ancestor;
    }
    for &y in chain.iter().rev() {
        let a = slots[y as usize].ancestor as usize;
        let (ba, top) = (slots[a].best, slots[a].ancestor);
        let slot = &mut slots[y as usize];
        slot.best = slot.best.min(ba);
        slot.ancestor = top;
    }
    slots[v as usize].best
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Adj(Vec<Vec<u32>>);

    impl FlowGraph for Adj {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn successors(&self, v: u32) -> &[u32] {
            &self.0[v as usize]
        }
    }

    /// Immediate dominators by node (NONE for the unreached).
    fn idoms(g: &Adj) -> Vec<u32> {
        let d = Dominators::compute(g, 0);
        (0..g.len())
            .map(|v| match d.number[v] {
                NONE => NONE,
                x => d.order[d.idom[x as usize] as usize],
            })
            .collect()
    }

    /// Dominators by definition: d dominates v when v is unreachable without d.
    fn naive(g: &Adj) -> Vec<u32> {
        let n = g.len();
        let reach = |skip: usize| {
            let mut seen = vec![false; n];
            if skip == 0 {
                return seen;
            }
            let mut stack = vec![0usize];
            seen[0] = true;
            while let Some(v) = stack.pop() {
                for &w in &g.0[v] {
                    let w = w as usize;
                    if w != skip && !seen[w] {
                        seen[w] = true;
                        stack.push(w);
                    }
                }
            }
            seen
        };
        let all = reach(usize::MAX);
        // doms[v]: every d whose removal cuts v off.
        let mut doms: Vec<Vec<usize>> = vec![Vec::new(); n];
        for d in 0..n {
            let r = reach(d);
            for v in 0..n {
                if all[v] && v != d && !r[v] {
                    doms[v].push(d);
                }
            }
        }
        (0..n)
            .map(|v| {
                if !all[v] {
                    return NONE;
                }
                if v == 0 {
                    return 0;
                }
                // The immediate dominator is the one every other dominator dominates:
                // the one with the most dominators itself.
                *doms[v].iter().max_by_key(|&&d| doms[d].len()).unwrap() as u32
            })
            .collect()
    }

    #[test]
    fn diamond_and_chain() {
        // 0 -> 1, 2; 1 -> 3; 2 -> 3; 3 -> 4 -> 5; 6 unreached.
        let g = Adj(vec![
            vec![1, 2],
            vec![3],
            vec![3],
            vec![4],
            vec![5],
            vec![],
            vec![5],
        ]);
        assert_eq!(idoms(&g), vec![0, 0, 0, 0, 3, 4, NONE]);
    }

    #[test]
    fn matches_the_definition_on_random_graphs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let n = 2 + (next() % 14) as usize;
            let edges = (next() % (3 * n as u64)) as usize;
            let mut adj = vec![Vec::new(); n];
            for _ in 0..edges {
                let a = (next() % n as u64) as usize;
                let b = (next() % n as u64) as u32;
                adj[a].push(b);
            }
            let g = Adj(adj);
            assert_eq!(idoms(&g), naive(&g), "round {round}: {:?}", g.0);
        }
    }

    #[test]
    fn long_chain_does_not_recurse() {
        let n = 200_000u32;
        let g = Adj((0..n)
            .map(|v| if v + 1 < n { vec![v + 1] } else { vec![] })
            .collect());
        let d = Dominators::compute(&g, 0);
        assert_eq!(d.len(), n as usize);
        assert_eq!(d.idom[(n - 1) as usize], n - 2);
    }
}
