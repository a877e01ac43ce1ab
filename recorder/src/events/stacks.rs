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
//!
//! The frames below the shared part (cc1plus: 3.2 per call) are looked up first in a
//! small direct-mapped table of recent nodes ([`RECENT`] slots, 64 KiB, which stays in
//! the recorder CPU's cache), then in the map of every node: 70% of cc1plus's look-ups
//! hit the small table, and the map's misses (a random slot in megabytes) were a quarter
//! of the recorder's time per call.

use heaptape_format::{Record, StackId, EMPTY_STACK};

use crate::addr_map::AddrMap;
use crate::sys::Tid;

/// Threads whose last path is kept; past this the paths are dropped and rebuilt.
const MAX_PATHS: usize = 4096;

/// Slots of the table of recent nodes (a power of two).
const RECENT: usize = 4096;

/// Nodes the map of nodes is sized for at the start: cc1plus makes 280 k, and growing
/// the map rehashes it and faults in fresh pages while the program waits.
const INITIAL_NODES: usize = 1 << 16;

/// The recorder's view of the trie: which (parent, address) pairs have ids, and each
/// thread's last path.
pub struct StackTrie {
    nodes: AddrMap<(StackId, u64), StackId>,
    recent: Box<[Recent]>,
    paths: AddrMap<Tid, Path>,
    next: StackId,
}

/// A slot of the table of recent nodes: node `id` is (`parent`, `address`); an `id` of
/// [`EMPTY_STACK`] marks an empty slot (no node has that id).
#[derive(Default, Clone, Copy)]
struct Recent {
    address: u64,
    parent: StackId,
    id: StackId,
}

/// The slot of (`parent`, `address`) in the table of recent nodes.
#[inline]
fn recent_slot(parent: StackId, address: u64) -> usize {
    let h = (address ^ (u64::from(parent) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 52) as usize & (RECENT - 1)
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
            nodes: AddrMap::with_capacity_and_hasher(INITIAL_NODES, Default::default()),
            recent: vec![Recent::default(); RECENT].into_boxed_slice(),
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
            let slot = &mut self.recent[recent_slot(parent, address)];
            if slot.id != EMPTY_STACK && slot.parent == parent && slot.address == address {
                parent = slot.id;
                path.addresses.push(address);
                path.nodes.push(parent);
                continue;
            }
            let id = *self.nodes.entry((parent, address)).or_insert_with(|| {
                let id = self.next;
                self.next += 1;
                out.push(Record::StackNode {
                    id,
                    parent,
                    address,
                });
                id
            });
            *slot = Recent {
                address,
                parent,
                id,
            };
            parent = id;
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

    #[test]
    fn recent_nodes_that_collide_give_the_ids_the_emitted_nodes_spell() {
        // Far more distinct nodes than slots of the table of recent nodes, from a few
        // addresses, so that slots are taken over and the same address recurs under
        // many parents.
        let mut t = StackTrie::new();
        let mut out = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let depth = 1 + (x % 9) as usize;
            let frames: Vec<u64> = (0..depth).map(|d| 0x1000 + ((x >> (d * 4)) % 12)).collect();
            let id = t.intern((i % 3) as Tid, &frames, &mut out);
            assert_eq!(*ids.entry(frames.clone()).or_insert(id), id, "{frames:x?}");
            // The emitted nodes spell the stack back, innermost first.
            let (mut node, mut spelled) = (id, Vec::new());
            while node != EMPTY_STACK {
                let Record::StackNode {
                    parent, address, ..
                } = out[node as usize - 1]
                else {
                    unreachable!()
                };
                spelled.push(address);
                node = parent;
            }
            assert_eq!(spelled, frames);
        }
        assert!(out.len() > 4 * RECENT, "{} nodes", out.len());
        // Distinct stacks, distinct ids.
        let distinct: std::collections::HashSet<_> = ids.values().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
