//! The stack trie: turns the stack id an event carries into its return addresses.
//!
//! The recorder never repeats a call stack. It emits each distinct stack once, as a chain
//! of [`Record::StackNode`](heaptape_format::Record::StackNode) records (one frame each,
//! pointing at the node for the caller's frames), and every event refers to its stack by
//! the id of its innermost node. This module keeps that trie for the whole trace so that
//! any report can expand a site's id into frames, innermost first, at the very end, when
//! only the few sites worth printing need it. Memory is one entry per distinct frame
//! node, which is bounded by the program's call sites, not by the trace's length.
//!
//! Ids are dense and increasing in a well-formed trace, so nodes live in a vector indexed
//! by id; anything else (a gap, a repeat, a hostile id near `u32::MAX`) is kept aside in
//! a map or refused, never allowed to allocate in proportion to the id's value.

use heaptape_format::{StackId, EMPTY_STACK};

use crate::hash::FastMap;

/// One node of the trie: a frame and the node holding the frames that called it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    parent: StackId,
    address: u64,
}

/// Why a stack node was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackNodeError {
    /// Node 0 is the implicit empty stack and cannot be redefined.
    RootRedefined,
    /// A node with this id was already defined (the first definition is kept).
    Duplicate,
}

/// The trie of every call stack in a trace (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct StackTable {
    /// `dense[i]` is node `i + 1`.
    dense: Vec<Node>,
    /// Nodes whose ids did not arrive in order.
    sparse: FastMap<StackId, Node>,
}

impl StackTable {
    /// An empty table (only the root, the empty stack).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `id`: frame `address` called from the stack `parent`.
    pub fn insert(
        &mut self,
        id: StackId,
        parent: StackId,
        address: u64,
    ) -> Result<(), StackNodeError> {
        if id == EMPTY_STACK {
            return Err(StackNodeError::RootRedefined);
        }
        if self.get(id).is_some() {
            return Err(StackNodeError::Duplicate);
        }
        let node = Node { parent, address };
        if id as usize == self.dense.len() + 1 {
            self.dense.push(node);
            // Nodes that arrived early may now continue the dense run.
            while let Some(next) = self.sparse.remove(&((self.dense.len() + 1) as StackId)) {
                self.dense.push(next);
            }
        } else {
            self.sparse.insert(id, node);
        }
        Ok(())
    }

    fn get(&self, id: StackId) -> Option<Node> {
        if id == EMPTY_STACK {
            return None;
        }
        match self.dense.get(id as usize - 1) {
            Some(node) => Some(*node),
            None => self.sparse.get(&id).copied(),
        }
    }

    /// Whether `id` is the empty stack or a defined node.
    pub fn contains(&self, id: StackId) -> bool {
        id == EMPTY_STACK || self.get(id).is_some()
    }

    /// Number of defined nodes (the root not included).
    pub fn len(&self) -> usize {
        self.dense.len() + self.sparse.len()
    }

    /// Whether no node is defined.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frames of stack `id`, innermost first.
    ///
    /// An undefined id (or a chain that reaches one) ends the list early; a chain that
    /// loops (only possible in a damaged trace) stops after visiting every node once.
    pub fn frames(&self, id: StackId) -> Vec<u64> {
        self.iter(id).collect()
    }

    /// Iterates over the frames of stack `id`, innermost first, without allocating.
    pub fn iter(&self, id: StackId) -> Frames<'_> {
        Frames {
            table: self,
            next: id,
            budget: self.len(),
        }
    }
}

/// Iterator over a stack's return addresses (see [`StackTable::iter`]).
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    table: &'a StackTable,
    next: StackId,
    budget: usize,
}

impl Iterator for Frames<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.budget == 0 {
            return None;
        }
        let node = self.table.get(self.next)?;
        self.budget -= 1;
        self.next = node.parent;
        Some(node.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_innermost_first() {
        let mut t = StackTable::new();
        t.insert(1, 0, 0x100).unwrap(); // main
        t.insert(2, 1, 0x200).unwrap(); // main -> f
        t.insert(3, 2, 0x300).unwrap(); // main -> f -> g
        t.insert(4, 1, 0x400).unwrap(); // main -> h
        assert_eq!(t.frames(3), vec![0x300, 0x200, 0x100]);
        assert_eq!(t.frames(4), vec![0x400, 0x100]);
        assert_eq!(t.frames(EMPTY_STACK), Vec::<u64>::new());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn bad_nodes_are_refused_or_contained() {
        let mut t = StackTable::new();
        assert_eq!(t.insert(0, 0, 1), Err(StackNodeError::RootRedefined));
        t.insert(1, 0, 0x10).unwrap();
        assert_eq!(t.insert(1, 0, 0x99), Err(StackNodeError::Duplicate));
        assert_eq!(t.frames(1), vec![0x10]);
        // A huge id does not allocate a huge vector.
        t.insert(u32::MAX, 1, 0x20).unwrap();
        assert_eq!(t.frames(u32::MAX), vec![0x20, 0x10]);
        // An out-of-order id joins the dense run once the gap closes.
        t.insert(3, 2, 0x30).unwrap();
        t.insert(2, 1, 0x40).unwrap();
        assert_eq!(t.frames(3), vec![0x30, 0x40, 0x10]);
        assert_eq!(t.dense.len(), 3);
        // Unknown parent: the list just ends.
        t.insert(4, 77, 0x50).unwrap();
        assert_eq!(t.frames(4), vec![0x50]);
        assert!(!t.contains(77));
    }

    #[test]
    fn cycles_terminate() {
        let mut t = StackTable::new();
        t.insert(1, 2, 0x1).unwrap();
        t.insert(2, 1, 0x2).unwrap();
        assert_eq!(t.frames(1), vec![0x1, 0x2]);
    }
}
