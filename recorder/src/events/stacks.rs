//! Deduplication of call stacks into the trace's stack trie.
//!
//! A stack is stored as a chain of nodes from the outermost frame to the innermost; each
//! node is (parent node, return address). Programs allocate from a few hundred or
//! thousand distinct stacks, so after warm-up every event's stack is a lookup that hits
//! and emits nothing; a new stack emits only its new nodes.

use std::collections::HashMap;

use heaptape_format::{Record, StackId, EMPTY_STACK};

/// The recorder's view of the trie: which (parent, address) pairs have ids.
#[derive(Default)]
pub struct StackTrie {
    nodes: HashMap<(StackId, u64), StackId>,
    next: StackId,
}

impl StackTrie {
    /// An empty trie (only node 0, the empty stack).
    pub fn new() -> StackTrie {
        StackTrie {
            nodes: HashMap::with_capacity(4096),
            next: 1,
        }
    }

    /// Interns `frames` (innermost first) and returns the id of the innermost node,
    /// pushing a [`Record::StackNode`] to `out` for every node seen for the first time.
    pub fn intern(&mut self, frames: &[u64], out: &mut Vec<Record>) -> StackId {
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
