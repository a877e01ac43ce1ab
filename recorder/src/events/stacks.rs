//! Deduplication of call stacks into the trace's stack trie.
//!
//! A stack is stored as a chain of nodes from the outermost frame to the innermost; each
//! node is (parent node, return address). Programs allocate from a few hundred or
//! thousand distinct stacks, so after warm-up every event's stack is a look-up that hits
//! and emits nothing; a new stack emits only its new nodes.
//!
//! Consecutive calls of one thread share most of their stack (cc1plus: 17 of 20 frames
//! on average), so [`StackTrie::intern`] keeps each thread's last path through the trie
//! and walks only the frames below the part shared with it: a comparison of return
//! addresses instead of a hash look-up per frame (or of the whole stack).

use heaptape_format::{Record, StackId, EMPTY_STACK};

use crate::addr_map::AddrMap;
use crate::sys::Tid;

/// Threads whose last path is kept; past this the paths are dropped and rebuilt.
const MAX_PATHS: usize = 4096;

/// The recorder's view of the trie: which (parent, address) pairs have ids, and each
/// thread's last path.
#[derive(Default)]
pub struct StackTrie {
    nodes: AddrMap<(StackId, u64), StackId>,
    paths: AddrMap<Tid, Path>,
    next: StackId,
}

/// A thread's last stack, outermost frame first, with the node of each frame.
#[derive(Default)]
struct Path {
    addresses: Vec<u64>,
    nodes: Vec<StackId>,
}

impl StackTrie {
    /// An empty trie (only node 0, the empty stack).
    pub fn new() -> StackTrie {
        StackTrie {
            nodes: AddrMap::with_capacity_and_hasher(4096, Default::default()),
            paths: AddrMap::default(),
            next: 1,
        }
    }

    /// Interns `frames` (innermost first), a stack of thread `tid`, and returns the id
    /// of the innermost node, pushing a [`Record::StackNode`] to `out` for every node
    /// seen for the first time.
    pub fn intern(&mut self, tid: Tid, frames: &[u64], out: &mut Vec<Record>) -> StackId {
        if self.paths.len() >= MAX_PATHS && !self.paths.contains_key(&tid) {
            self.paths.clear();
        }
        let path = self.paths.entry(tid).or_default();
        let shared = frames
            .iter()
            .rev()
            .zip(&path.addresses)
            .take_while(|(a, b)| a == b)
            .count();
        path.addresses.truncate(shared);
        path.nodes.truncate(shared);
        let mut parent = path.nodes.last().copied().unwrap_or(EMPTY_STACK);
        for &address in frames[..frames.len() - shared].iter().rev() {
            parent = *self.nodes.entry((parent, address)).or_insert_with(|| {
                let id = self.next;
                self.next += 1;
                out.push(Record::StackNode {
                    id,
                    parent,
                    address,
                });
                id
            });
            path.addresses.push(address);
            path.nodes.push(parent);
        }
        parent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_are_emitted_once() {
        let mut t = StackTrie::new();
        let mut out = Vec::new();
        let a = t.intern(1, &[0x30, 0x20, 0x10], &mut out);
        assert_eq!(out.len(), 3);
        let b = t.intern(1, &[0x31, 0x20, 0x10], &mut out);
        assert_eq!(out.len(), 4);
        assert_ne!(a, b);
        assert_eq!(t.intern(1, &[0x30, 0x20, 0x10], &mut out), a);
        assert_eq!(out.len(), 4);
        assert_eq!(t.intern(1, &[], &mut out), EMPTY_STACK);
        assert_eq!(
            out[3],
            Record::StackNode {
                id: 4,
                parent: 2,
                address: 0x31
            }
        );
    }

    #[test]
    fn every_thread_finds_the_same_node_for_the_same_stack() {
        let mut t = StackTrie::new();
        let mut out = Vec::new();
        let deep = t.intern(1, &[0x40, 0x30, 0x20, 0x10], &mut out);
        let shallow = t.intern(1, &[0x20, 0x10], &mut out);
        let other = t.intern(1, &[0x50, 0x20, 0x10], &mut out);
        assert_eq!(out.len(), 5);
        // Another thread, other orders, a stack that shares nothing in between.
        assert_eq!(t.intern(2, &[0x20, 0x10], &mut out), shallow);
        assert_eq!(t.intern(2, &[0x99], &mut out), 6);
        assert_eq!(t.intern(2, &[0x40, 0x30, 0x20, 0x10], &mut out), deep);
        assert_eq!(t.intern(1, &[0x50, 0x20, 0x10], &mut out), other);
        assert_eq!(t.intern(1, &[0x40, 0x30, 0x20, 0x10], &mut out), deep);
        assert_eq!(t.intern(1, &[], &mut out), EMPTY_STACK);
        assert_eq!(t.intern(1, &[0x20, 0x10], &mut out), shallow);
        assert_eq!(out.len(), 6);
        // Node ids are the same as a fresh walk gives, whatever came before.
        let mut fresh = StackTrie::new();
        let mut out2 = Vec::new();
        fresh.intern(7, &[0x40, 0x30, 0x20, 0x10], &mut out2);
        assert_eq!(fresh.intern(7, &[0x20, 0x10], &mut out2), shallow);
    }
}
