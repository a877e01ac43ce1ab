//! Deduplication of call stacks into the trace's stack trie.
//!
//! A stack is stored as a chain of nodes from the outermost frame to the innermost; each
//! node is (parent node, return address). Programs allocate from a few hundred or
//! thousand distinct stacks, so after warm-up every event's stack is a lookup that hits
//! and emits nothing; a new stack emits only its new nodes. Whole stacks seen before are
//! found with one look-up ([`StackTrie::intern`] walks the trie only for new ones).

use heaptape_format::{Record, StackId, EMPTY_STACK};

use crate::addr_map::AddrMap;

/// The recorder's view of the trie: which (parent, address) pairs have ids, and the id
/// of every whole stack interned so far.
#[derive(Default)]
pub struct StackTrie {
    nodes: AddrMap<(StackId, u64), StackId>,
    stacks: AddrMap<Box<[u64]>, StackId>,
    next: StackId,
}

impl StackTrie {
    /// An empty trie (only node 0, the empty stack).
    pub fn new() -> StackTrie {
        StackTrie {
            nodes: AddrMap::with_capacity_and_hasher(4096, Default::default()),
            stacks: AddrMap::with_capacity_and_hasher(1024, Default::default()),
            next: 1,
        }
    }

    /// Interns `frames` (innermost first) and returns the id of the innermost node,
    /// pushing a [`Record::StackNode`] to `out` for every node seen for the first time.
    pub fn intern(&mut self, frames: &[u64], out: &mut Vec<Record>) -> StackId {
        if let Some(&id) = self.stacks.get(frames) {
            return id;
        }
        let id = self.walk(frames, out);
        self.stacks.insert(frames.into(), id);
        id
    }

    fn walk(&mut self, frames: &[u64], out: &mut Vec<Record>) -> StackId {
        let mut parent = EMPTY_STACK;
        for &address in frames.iter().rev() {
            parent = match self.nodes.get(&(parent, address)) {
                Some(&id) => id,
                None => {
                    let id = self.next;
                    self.next += 1;
                    self.nodes.insert((parent, address), id);
                    out.push(Record::StackNode {
                        id,
                        parent,
                        address,
                    });
                    id
                }
            };
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
        let a = t.intern(&[0x30, 0x20, 0x10], &mut out);
        assert_eq!(out.len(), 3);
        let b = t.intern(&[0x31, 0x20, 0x10], &mut out);
        assert_eq!(out.len(), 4);
        assert_ne!(a, b);
        assert_eq!(t.intern(&[0x30, 0x20, 0x10], &mut out), a);
        assert_eq!(out.len(), 4);
        assert_eq!(t.intern(&[], &mut out), EMPTY_STACK);
        assert_eq!(
            out[3],
            Record::StackNode {
                id: 4,
                parent: 2,
                address: 0x31
            }
        );
    }
}
