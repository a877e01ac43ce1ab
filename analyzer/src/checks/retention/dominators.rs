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

/// No node / no number.
pub(crate) const NONE: u32 = u32::MAX;

/// A directed graph the dominator computation walks: nodes `0..len()`, the successors
/// of `v` are `succ(v, 0..degree(v))`.
pub(crate) trait FlowGraph {
    /// Number of nodes.
    fn len(&self) -> usize;
    /// Number of successors of `v` (duplicates allowed).
    fn degree(&self, v: u32) -> usize;
    /// The `i`-th successor of `v`.
    fn succ(&self, v: u32, i: usize) -> u32;
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
}

impl Dominators {
    /// The dominator tree of the nodes of `g` reachable from `root`.
    pub(crate) fn compute(g: &impl FlowGraph, root: u32) -> Dominators {
        let (order, number, parent) = depth_first(g, root);
        let n = order.len();
        let preds = Predecessors::new(g, &order, &number);

        // Semidominators, in reverse preorder, with a path-compressed forest of the
        // nodes processed so far (`ancestor`, `label`: the number of least semi on the
        // compressed path).
        let mut semi: Vec<u32> = (0..n as u32).collect();
        let mut label: Vec<u32> = (0..n as u32).collect();
        let mut ancestor: Vec<u32> = vec![NONE; n];
        let mut chain: Vec<u32> = Vec::new();
        for w in (1..n).rev() {
            let mut s = semi[w];
            for &v in preds.of(w) {
                let u = eval(v, &mut ancestor, &mut label, &semi, &mut chain);
                s = s.min(semi[u as usize]);
            }
            semi[w] = s;
            ancestor[w] = parent[w];
        }
        drop(label);
        drop(ancestor);
        drop(preds);

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
        }
    }

    /// How many nodes were reached.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Iterative depth-first search: the preorder, each node's number, each number's DFS
/// parent (a number; the root's is [`NONE`]).
fn depth_first(g: &impl FlowGraph, root: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut number = vec![NONE; g.len()];
    let mut order = vec![root];
    let mut parent = vec![NONE];
    number[root as usize] = 0;
    let mut stack: Vec<(u32, usize)> = vec![(root, 0)];
    while let Some(top) = stack.last_mut() {
        let (v, i) = *top;
        if i < g.degree(v) {
            top.1 = i + 1;
            let w = g.succ(v, i);
            if number[w as usize] == NONE {
                number[w as usize] = order.len() as u32;
                parent.push(number[v as usize]);
                order.push(w);
                stack.push((w, 0));
            }
        } else {
            stack.pop();
        }
    }
    (order, number, parent)
}

/// The predecessors of each reached node, by preorder number (a flat array).
struct Predecessors {
    offsets: Vec<usize>,
    from: Vec<u32>,
}

impl Predecessors {
    fn new(g: &impl FlowGraph, order: &[u32], number: &[u32]) -> Predecessors {
        let n = order.len();
        let mut offsets = vec![0usize; n + 1];
        for &v in order {
            for i in 0..g.degree(v) {
                offsets[number[g.succ(v, i) as usize] as usize + 1] += 1;
            }
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut from = vec![0u32; offsets[n]];
        for (x, &v) in order.iter().enumerate() {
            for i in 0..g.degree(v) {
                let w = number[g.succ(v, i) as usize] as usize;
                from[fill[w]] = x as u32;
                fill[w] += 1;
            }
        }
        Predecessors { offsets, from }
    }

    fn of(&self, w: usize) -> &[u32] {
        &self.from[self.offsets[w]..self.offsets[w + 1]]
    }
}

/// The number of least semidominator on the forest path above `v` (path compression,
/// iteratively: `chain` is scratch space).
fn eval(
    v: u32,
    ancestor: &mut [u32],
    label: &mut [u32],
    semi: &[u32],
    chain: &mut Vec<u32>,
) -> u32 {
    if ancestor[v as usize] == NONE {
        return v;
    }
    chain.clear();
    let mut x = v;
    while ancestor[ancestor[x as usize] as usize] != NONE {
        chain.push(x);
        x = ancestor[x as usize];
    }
    for &y in chain.iter().rev() {
        let a = ancestor[y as usize] as usize;
        if semi[label[a] as usize] < semi[label[y as usize] as usize] {
            label[y as usize] = label[a];
        }
        ancestor[y as usize] = ancestor[a];
    }
    label[v as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Adj(Vec<Vec<u32>>);

    impl FlowGraph for Adj {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn degree(&self, v: u32) -> usize {
            self.0[v as usize].len()
        }
        fn succ(&self, v: u32, i: usize) -> u32 {
            self.0[v as usize][i]
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
