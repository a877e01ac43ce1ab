//! Who holds the memory: the dominator tree of a snapshot's reachable blocks, the
//! memory each root retains, and the shortest path from a root to what it holds.
//!
//! The leak classes say whether a block is reachable; this says *why*. The flow graph
//! has a super-root, one node per named root ([`RootName`]: a global variable, a
//! thread's stack frame, its registers or TLS, an anonymous region; the words of one
//! variable or frame are one root), and the reachable blocks; its edges are the
//! snapshot's pointers, start and interior alike (the blocks memcheck calls still
//! reachable or possibly lost). A block's immediate dominator is the closest node every
//! path to it passes through: if that node let go, the block would become
//! unreachable. What a root *retains* is its subtree in the dominator tree; a block
//! dominated by no single root (two roots share it) is retained by none of them and
//! counted as shared (Eclipse Memory Analyzer's rule for Java heaps, applied to the
//! native pointer graph).
//!
//! Call sites: the bytes retained by the blocks allocated at a stack are their
//! subtrees, counting a block only when no block of the same stack dominates it (a
//! list of nodes from one site retains the list once), with the roots that hold them.

mod dominators;
mod roots;

pub use roots::RootName;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::hash::FastMap;

use heaptape_format::StackId;

use crate::checks::leaks::{Count, LeakReport, LiveBlock, PointerGraph, PointerKind};
use crate::modules::ModuleMap;
use crate::stacks::StackTable;
use crate::symbolize::Symbolizer;
use dominators::{Adjacency, Dominators, NONE};
use roots::RootNamer;

/// Blocks shown under each root, at most.
const HELD_PER_ROOT: usize = 3;
/// Roots shown per call site, at most.
const ROOTS_PER_SITE: usize = 3;

/// One hop of a path from a root: the block reached and the pointer that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The block.
    pub block: LiveBlock,
    /// How the previous node (the root, or the previous hop's block) points at it.
    pub via: PointerKind,
    /// For the first hop from a global variable: the offset in the variable of the
    /// word that points at the block.
    pub field: Option<u64>,
}

/// A block a root holds directly in the dominator tree, and the shortest path to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// What the block retains (itself included).
    pub retained: Count,
    /// The shortest path from the root: the last hop is the block.
    pub path: Vec<Hop>,
}

/// A root and what it retains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retainer {
    /// The root.
    pub root: RootName,
    /// What would be freed if it let go.
    pub retained: Count,
    /// Its largest children in the dominator tree, largest first.
    pub held: Vec<Held>,
}

/// A block several roots reach (no single one retains it) and what it retains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBlock {
    /// What it retains (itself included).
    pub retained: Count,
    /// The root nearest to it (fewest hops), one of those that reach it.
    pub nearest_root: Option<RootName>,
    /// The shortest path from that root: its last hop is the block.
    pub path: Vec<Hop>,
    /// Its largest children in the dominator tree, largest first.
    pub held: Vec<Held>,
}

/// The memory retained by the blocks of one allocation stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRetention {
    /// The allocation stack.
    pub stack: StackId,
    /// The bytes and blocks its blocks retain.
    pub retained: Count,
    /// The roots that hold them, with the bytes each holds, most first; `None` for
    /// blocks no single root retains.
    pub roots: Vec<(Option<RootName>, u64)>,
}

/// Who holds the memory of one snapshot (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// The reachable blocks (still reachable and possibly lost).
    pub reachable: Count,
    /// Blocks no single root retains (reachable from several).
    pub shared: Count,
    /// How many roots retain something.
    pub root_count: usize,
    /// The blocks no single root retains that retain the most, most first (where
    /// memory held from several places, a shared table or an object with many
    /// referrers, keeps its subtree alive).
    pub shared_blocks: Vec<SharedBlock>,
    /// The roots that retain the most, most first.
    pub roots: Vec<Retainer>,
    /// The allocation stacks whose blocks retain the most, most first.
    pub sites: Vec<SiteRetention>,
}

/// The `k` numbers that retain the most bytes among those offered (ties: the lower
/// number first), kept while scanning millions without sorting them.
struct Largest {
    k: usize,
    heap: BinaryHeap<Reverse<(u64, Reverse<usize>)>>,
}

impl Largest {
    fn new(k: usize) -> Self {
        Largest {
            k,
            heap: BinaryHeap::new(),
        }
    }

    #[inline]
    fn offer(&mut self, bytes: u64, x: usize) {
        let key = Reverse((bytes, Reverse(x)));
        if self.heap.len() < self.k {
            self.heap.push(key);
        } else if self.heap.peek().is_some_and(|min| key < *min) {
            self.heap.pop();
            self.heap.push(key);
        }
    }

    /// Most first.
    fn into_sorted(self) -> Vec<usize> {
        let mut v: Vec<(u64, usize)> = self
            .heap
            .into_iter()
            .map(|Reverse((bytes, Reverse(x)))| (bytes, x))
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, x)| x).collect()
    }
}

/// The flow graph: node 0 the super-root, nodes `1..=roots` the named roots, then the
/// blocks (block `b` is node `1 + roots + b`), as a flat adjacency array.
struct Flow<'a> {
    graph: &'a PointerGraph,
    roots: usize,
    adj: Adjacency,
    /// How each root points into each of its targets, in the order of its successors.
    root_kinds: Vec<PointerKind>,
    /// The address of the root word that does (the first one, for a target several
    /// words of a root point into).
    root_words: Vec<u64>,
}

impl<'a> Flow<'a> {
    /// `pairs`: (root, target block, how, the word's address), sorted by root, one per
    /// (root, target).
    fn new(
        graph: &'a PointerGraph,
        roots: usize,
        pairs: &[(usize, u32, PointerKind, u64)],
    ) -> Self {
        let first = 1 + roots as u32;
        let n = 1 + roots + graph.block_count();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut targets = Vec::with_capacity(roots + pairs.len() + graph.edge_count());
        offsets.push(0);
        targets.extend(1..first);
        offsets.push(targets.len());
        let mut at = 0;
        for r in 0..roots {
            while at < pairs.len() && pairs[at].0 == r {
                targets.push(first + pairs[at].1);
                at += 1;
            }
            offsets.push(targets.len());
        }
        for b in 0..graph.block_count() {
            targets.extend(graph.targets(b).map(|t| first + t));
            offsets.push(targets.len());
        }
        Flow {
            graph,
            roots,
            adj: Adjacency { offsets, targets },
            root_kinds: pairs.iter().map(|p| p.2).collect(),
            root_words: pairs.iter().map(|p| p.3).collect(),
        }
    }

    #[inline]
    fn first_block(&self) -> u32 {
        1 + self.roots as u32
    }
}

/// The retention analysis of a snapshot, kept to answer several questions (the
/// summary, the flame graph of retained bytes).
pub struct RetentionTree<'a> {
    report: &'a LeakReport,
    flow: Flow<'a>,
    names: Vec<RootName>,
    dom: Dominators,
    /// Retained bytes and blocks per preorder number.
    bytes: Vec<u64>,
    blocks: Vec<u64>,
}

impl<'a> RetentionTree<'a> {
    /// Builds the dominator tree of `report`'s reachable blocks. `stacks`, `modules` and
    /// `sym` name the roots (the image's stack table, module map and a symbolizer).
    pub fn new(
        report: &'a LeakReport,
        stacks: &StackTable,
        modules: &ModuleMap,
        sym: &dyn Symbolizer,
    ) -> RetentionTree<'a> {
        let graph = report.graph();
        // Group the root words by what holds them.
        let namer = RootNamer::new(graph, stacks, modules, sym);
        let mut ids: FastMap<RootName, usize> = FastMap::default();
        let mut names: Vec<RootName> = Vec::new();
        let mut pairs: Vec<(usize, u32, PointerKind, u64)> = Vec::new();
        for (word, target, kind) in graph.root_pointers() {
            let name = namer.name(word);
            let id = *ids.entry(name).or_insert_with_key(|n| {
                names.push(n.clone());
                names.len() - 1
            });
            pairs.push((id, target, kind, namer.address(word)));
        }
        pairs.sort_by_key(|&(id, target, _, word)| (id, target, word));
        pairs.dedup_by_key(|p| (p.0, p.1));
        let flow = Flow::new(graph, names.len(), &pairs);
        drop(pairs);
        let dom = Dominators::compute(&flow.adj, 0);

        // Retained sizes: every node's own size, summed up the dominator tree (a
        // node's immediate dominator has a smaller preorder number).
        let n = dom.len();
        let first = flow.first_block() as usize;
        let mut bytes = vec![0u64; n];
        let mut blocks = vec![0u64; n];
        for x in 0..n {
            let v = dom.order[x] as usize;
            if v >= first {
                bytes[x] = report.live_block(v - first).size;
                blocks[x] = 1;
            }
        }
        for x in (1..n).rev() {
            let d = dom.idom[x] as usize;
            bytes[d] = bytes[d].saturating_add(bytes[x]);
            blocks[d] += blocks[x];
        }
        RetentionTree {
            report,
            flow,
            names,
            dom,
            bytes,
            blocks,
        }
    }

    fn count(&self, x: usize) -> Count {
        Count {
            blocks: self.blocks[x],
            bytes: self.bytes[x],
        }
    }

    fn block_of(&self, x: usize) -> Option<usize> {
        (self.dom.order[x] as usize).checked_sub(self.flow.first_block() as usize)
    }

    /// The summary: the `top` roots that retain the most (each with its largest
    /// children and the shortest paths to them), and the `top` allocation stacks.
    pub fn summary(&self, top: usize) -> Retention {
        let n = self.dom.len();
        let roots = self.flow.roots;
        // Roots by retained bytes (a root's number: its node's).
        let mut by_root: Vec<usize> = (1..=roots)
            .filter_map(|r| {
                let x = self.dom.number[r];
                (x != NONE && self.blocks[x as usize] > 0).then_some(x as usize)
            })
            .collect();
        let root_count = by_root.len();
        by_root.sort_by(|&a, &b| {
            self.bytes[b].cmp(&self.bytes[a]).then_with(|| {
                self.names[self.dom.order[a] as usize - 1]
                    .cmp(&self.names[self.dom.order[b] as usize - 1])
            })
        });
        by_root.truncate(top);

        // Blocks no single root retains: the super-root's children that are blocks.
        let mut shared = Count::default();
        let mut largest = Largest::new(top);
        for x in 1..n {
            if self.dom.idom[x] == 0 && self.block_of(x).is_some() {
                shared.blocks += self.blocks[x];
                shared.bytes = shared.bytes.saturating_add(self.bytes[x]);
                largest.offer(self.bytes[x], x);
            }
        }
        let shared_top = largest.into_sorted();
        let parents: Vec<usize> = by_root.iter().chain(&shared_top).copied().collect();
        let mut held = self.held(&parents);
        let retainers = by_root
            .iter()
            .map(|&x| Retainer {
                root: self.name_of(x).clone(),
                retained: self.count(x),
                held: held.remove(&x).unwrap_or_default(),
            })
            .collect();
        let shared_blocks = shared_top
            .iter()
            .map(|&x| {
                let (root, path) = self
                    .path_back(x, |p| self.is_root(p))
                    .map_or((None, Vec::new()), |(r, hops)| {
                        (Some(self.name_of(r as usize).clone()), hops)
                    });
                SharedBlock {
                    retained: self.count(x),
                    nearest_root: root,
                    path,
                    held: held.remove(&x).unwrap_or_default(),
                }
            })
            .collect();
        let reachable = self.count(0);
        Retention {
            reachable,
            shared,
            root_count,
            roots: retainers,
            shared_blocks,
            sites: self.sites(top),
        }
    }

    /// A shortest path to number `target` from the nearest number `goal` accepts (a
    /// root), found breadth-first backwards from the target (a few nodes when the
    /// target is near a root, as the largest blocks a root holds mostly are; a forward
    /// search from the roots would visit every node nearer than the target): the
    /// root's number and the hops from it.
    fn path_back(&self, target: usize, goal: impl Fn(u32) -> bool) -> Option<(u32, Vec<Hop>)> {
        let target = target as u32;
        let mut next: FastMap<u32, u32> = FastMap::default();
        let mut queue = std::collections::VecDeque::from([target]);
        let mut root = None;
        'search: while let Some(x) = queue.pop_front() {
            for &p in self.dom.predecessors(x as usize) {
                if goal(p) {
                    next.insert(p, x);
                    root = Some(p);
                    break 'search;
                }
                // The super-root and the other roots lead nowhere.
                if p == 0 || (self.dom.order[p as usize] as usize) <= self.flow.roots {
                    continue;
                }
                if p != target && !next.contains_key(&p) {
                    next.insert(p, x);
                    queue.push_back(p);
                }
            }
        }
        let root = root?;
        let first = self.flow.first_block();
        let mut hops = Vec::new();
        let mut at = root;
        while at != target {
            let to = next[&at];
            let (from_node, to_node) = (self.dom.order[at as usize], self.dom.order[to as usize]);
            let (via, field) = self.pointer_kind(from_node, to_node - first);
            hops.push(Hop {
                block: *self.report.live_block((to_node - first) as usize),
                via,
                field,
            });
            at = to;
        }
        Some((root, hops))
    }

    /// The hops of a shortest path from root number `root` to number `target`, which
    /// it dominates.
    fn path(&self, root: usize, target: usize) -> Vec<Hop> {
        self.path_back(target, |p| p as usize == root)
            .map_or_else(Vec::new, |(_, hops)| hops)
    }

    /// Whether number `x` is a root's.
    fn is_root(&self, x: u32) -> bool {
        x != 0 && (self.dom.order[x as usize] as usize) <= self.flow.roots
    }

    /// The name of root number `x`.
    fn name_of(&self, x: usize) -> &RootName {
        &self.names[self.dom.order[x] as usize - 1]
    }

    /// Each number's largest children in the dominator tree (for the numbers of
    /// `parents`), at most [`HELD_PER_ROOT`], largest first.
    fn held(&self, parents: &[usize]) -> FastMap<usize, Vec<Held>> {
        // One bit per number says "a parent asked for"; the scan stays in the cache.
        let mut wanted = vec![0u64; self.dom.len().div_ceil(64)];
        let slot: FastMap<usize, usize> =
            parents.iter().enumerate().map(|(i, &p)| (p, i)).collect();
        for &p in parents {
            wanted[p / 64] |= 1 << (p % 64);
        }
        let mut largest: Vec<Largest> = parents
            .iter()
            .map(|_| Largest::new(HELD_PER_ROOT))
            .collect();
        for x in 1..self.dom.len() {
            let d = self.dom.idom[x] as usize;
            if wanted[d / 64] & (1 << (d % 64)) != 0 {
                largest[slot[&d]].offer(self.bytes[x], x);
            }
        }
        parents
            .iter()
            .zip(largest)
            .map(|(&p, top)| {
                let list = top.into_sorted();
                let held = list
                    .iter()
                    .map(|&c| Held {
                        retained: self.count(c),
                        // From the root, or from the block for a shared block's.
                        path: self.path(p, c),
                    })
                    .collect();
                (p, held)
            })
            .collect()
    }

    /// How node `from` points at block `to` (the first such pointer), and for a
    /// global variable, at which offset in it the pointer is.
    fn pointer_kind(&self, from: u32, to: u32) -> (PointerKind, Option<u64>) {
        let first = self.flow.first_block();
        if from >= first {
            let kind = self
                .flow
                .graph
                .edges((from - first) as usize)
                .find(|&(t, _)| t == to)
                .map_or(PointerKind::Start, |(_, k)| k);
            (kind, None)
        } else {
            // A root's successors are its kinds' order; roots' kinds follow the
            // super-root's `roots` successors in the adjacency.
            let (start, end) = (
                self.flow.adj.offsets[from as usize],
                self.flow.adj.offsets[from as usize + 1],
            );
            let Some(i) = (start..end).find(|&i| self.flow.adj.targets[i] == to + first) else {
                return (PointerKind::Start, None);
            };
            let field = match &self.names[from as usize - 1] {
                RootName::Global { address, .. } => {
                    Some(self.flow.root_words[i - self.flow.roots].wrapping_sub(*address))
                }
                _ => None,
            };
            (self.flow.root_kinds[i - self.flow.roots], field)
        }
    }

    /// The children of each number in the dominator tree (a flat array).
    fn children(&self) -> (Vec<usize>, Vec<u32>) {
        let n = self.dom.len();
        let mut offsets = vec![0usize; n + 1];
        for x in 1..n {
            offsets[self.dom.idom[x] as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut kids = vec![0u32; offsets[n]];
        for x in 1..n {
            let d = self.dom.idom[x] as usize;
            kids[fill[d]] = x as u32;
            fill[d] += 1;
        }
        (offsets, kids)
    }

    /// Walks the dominator tree: for every reachable block, `f(root, sites, size)`: the
    /// root that retains it (`None`: shared by several), the allocation stacks of the
    /// blocks on its dominator-tree path from there, itself last (a run of blocks from
    /// one stack, like a list's nodes, counts once), and its size.
    pub fn walk(&self, mut f: impl FnMut(Option<&RootName>, &[StackId], u64)) {
        let (offsets, kids) = self.children();
        let mut sites: Vec<StackId> = Vec::new();
        // (number, next child, the root above it: 0 for none, whether it pushed a site)
        let mut stack: Vec<(u32, usize, usize, bool)> = vec![(0, 0, 0, false)];
        while let Some(top) = stack.last_mut() {
            let (x, i, root, _) = *top;
            let x = x as usize;
            if offsets[x] + i < offsets[x + 1] {
                top.1 += 1;
                let c = kids[offsets[x] + i] as usize;
                let Some(b) = self.block_of(c) else {
                    stack.push((c as u32, 0, c, false));
                    continue;
                };
                let block = self.report.live_block(b);
                let pushed = sites.last() != Some(&block.stack);
                if pushed {
                    sites.push(block.stack);
                }
                let name = (root != 0).then(|| &self.names[self.dom.order[root] as usize - 1]);
                f(name, &sites, block.size);
                stack.push((c as u32, 0, root, pushed));
            } else {
                if top.3 {
                    sites.pop();
                }
                stack.pop();
            }
        }
    }

    /// The `top` allocation stacks by retained bytes (see the module docs).
    fn sites(&self, top: usize) -> Vec<SiteRetention> {
        let (offsets, kids) = self.children();
        let stacks = (0..self.report.len())
            .map(|b| self.report.live_block(b).stack as usize + 1)
            .max()
            .unwrap_or(0);
        let mut active: Vec<u32> = vec![0; stacks];
        let mut totals: Vec<Count> = vec![Count::default(); stacks];
        let mut held: FastMap<(StackId, usize), u64> = FastMap::default();
        // What each stack holds under the current child of the super-root (a root, or
        // a shared block), moved into `held` when the walk leaves it.
        let mut under: Vec<u64> = vec![0; stacks];
        let mut touched: Vec<StackId> = Vec::new();
        let mut flush = |root: usize, under: &mut Vec<u64>, touched: &mut Vec<StackId>| {
            for s in touched.drain(..) {
                let bytes = std::mem::take(&mut under[s as usize]);
                if bytes > 0 {
                    *held.entry((s, root)).or_insert(0) += bytes;
                }
            }
        };
        // (number, next child, the root above it: 0 for none)
        let mut stack: Vec<(u32, usize, usize)> = vec![(0, 0, 0)];
        while let Some(top_frame) = stack.last_mut() {
            let (x, i, root) = *top_frame;
            let x = x as usize;
            if offsets[x] + i < offsets[x + 1] {
                top_frame.1 += 1;
                let c = kids[offsets[x] + i] as usize;
                let root = if x == 0 && self.block_of(c).is_none() {
                    c
                } else {
                    root
                };
                if let Some(b) = self.block_of(c) {
                    let s = self.report.live_block(b).stack;
                    if active[s as usize] == 0 {
                        let t = &mut totals[s as usize];
                        t.blocks += self.blocks[c];
                        t.bytes = t.bytes.saturating_add(self.bytes[c]);
                        if under[s as usize] == 0 {
                            touched.push(s);
                        }
                        under[s as usize] += self.bytes[c];
                    }
                    active[s as usize] += 1;
                }
                stack.push((c as u32, 0, root));
            } else {
                stack.pop();
                if let Some(b) = self.block_of(x) {
                    active[self.report.live_block(b).stack as usize] -= 1;
                }
                if stack.len() == 1 {
                    // Left a child of the super-root.
                    flush(root, &mut under, &mut touched);
                }
            }
        }
        let totals = totals
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.blocks > 0)
            .map(|(s, c)| (s as StackId, c));
        let mut sites: Vec<SiteRetention> = totals
            .into_iter()
            .map(|(stack, retained)| SiteRetention {
                stack,
                retained,
                roots: Vec::new(),
            })
            .collect();
        sites.sort_by(|a, b| {
            b.retained
                .bytes
                .cmp(&a.retained.bytes)
                .then(a.stack.cmp(&b.stack))
        });
        sites.truncate(top);
        for site in &mut sites {
            let mut roots: Vec<(Option<RootName>, u64)> = held
                .iter()
                .filter(|((s, _), _)| *s == site.stack)
                .map(|(&(_, r), &bytes)| {
                    let name = (r != 0).then(|| self.names[self.dom.order[r] as usize - 1].clone());
                    (name, bytes)
                })
                .collect();
            roots.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            roots.truncate(ROOTS_PER_SITE);
            site.roots = roots;
        }
        sites
    }
}
