//! The replayed state of one address space's heap: its live blocks, and a bounded
//! memory of recently freed ones.
//!
//! This is the only state of the replay that grows with the program's heap, so it is
//! kept lean: one small [`Block`] per live allocation, keyed by address. Heaps are
//! separate from processes because the two do not map one to one: a `fork` child starts
//! with a copy of its parent's heap, while a `vfork` child (or a `clone` with `CLONE_VM`)
//! runs in its parent's address space and so shares its heap until it execs.
//!
//! Telling a double free from a wild free needs to remember what was freed. Remembering
//! every freed address forever would grow with the trace, so, like valgrind's freed-block
//! queue, only the most recent [`FREED_HISTORY`] frees are kept; an older double free is
//! reported as an invalid free.

use std::collections::VecDeque;

use heaptape_format::{AllocFn, StackId, Timestamp};

use crate::hash::FastMap;

/// How many freed blocks a heap remembers for double-free detection.
pub const FREED_HISTORY: usize = 1 << 16;

/// Index of a process image in the replay (the owner of a block).
pub(crate) type ImageId = usize;

/// One live heap block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    /// Requested size.
    pub size: u64,
    /// When it was allocated.
    pub ts: Timestamp,
    /// Where it was allocated.
    pub stack: StackId,
    /// The image whose accounting holds it (the allocating one, or the fork child that
    /// inherited it).
    pub owner: ImageId,
    /// The allocating function, for family checks.
    pub func: AllocFn,
}

/// What is remembered about a freed block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freed {
    seq: u64,
    /// Where the block had been allocated.
    pub alloc_stack: StackId,
    /// Its allocating function.
    pub alloc_fn: AllocFn,
    /// Where it was freed.
    pub free_stack: StackId,
    /// Its size.
    pub size: u64,
}

/// One heap (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Heap {
    /// Live blocks by address.
    pub live: FastMap<u64, Block>,
    /// Whether every block of this heap was seen being allocated. False for a heap
    /// attached to mid-run: frees of blocks allocated before the attach are then not
    /// invalid, just untracked.
    pub complete: bool,
    /// How many process images use this heap (more than one after vfork).
    pub users: u32,
    freed: FastMap<u64, Freed>,
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
}

impl Heap {
    /// An empty heap with one user.
    pub fn new(complete: bool) -> Self {
        Heap {
            live: FastMap::default(),
            complete,
            users: 1,
            freed: FastMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// A copy for a fork child: same blocks (now owned by `child`), same freed history,
    /// one user.
    pub fn fork(&self, child: ImageId) -> Heap {
        let mut h = self.clone();
        for b in h.live.values_mut() {
            b.owner = child;
        }
        h.users = 1;
        h
    }

    /// Remembers that `address` was freed.
    pub fn remember_free(
        &mut self,
        address: u64,
        alloc_stack: StackId,
        alloc_fn: AllocFn,
        free_stack: StackId,
        size: u64,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.freed.insert(
            address,
            Freed {
                seq,
                alloc_stack,
                alloc_fn,
                free_stack,
                size,
            },
        );
        self.order.push_back((address, seq));
        while self.order.len() > FREED_HISTORY {
            if let Some((addr, seq)) = self.order.pop_front() {
                if self.freed.get(&addr).is_some_and(|f| f.seq == seq) {
                    self.freed.remove(&addr);
                }
            }
        }
    }

    /// Forgets that `address` was freed (it was allocated again).
    pub fn forget_free(&mut self, address: u64) {
        self.freed.remove(&address);
    }

    /// What is remembered about a free of `address`, if it is remembered.
    pub fn freed(&self, address: u64) -> Option<&Freed> {
        self.freed.get(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_history_is_bounded_and_forgets_reallocated_addresses() {
        let mut h = Heap::new(true);
        h.remember_free(0x10, 1, AllocFn::Malloc, 2, 8);
        assert_eq!(h.freed(0x10).unwrap().free_stack, 2);
        h.forget_free(0x10);
        assert!(h.freed(0x10).is_none());
        for i in 0..FREED_HISTORY as u64 + 5 {
            h.remember_free(0x1000 + i * 16, 1, AllocFn::Malloc, 2, 8);
        }
        assert!(h.freed(0x1000).is_none());
        assert!(h.freed(0x1000 + 5 * 16).is_some());
        assert_eq!(h.freed.len(), FREED_HISTORY);
        assert_eq!(h.order.len(), FREED_HISTORY);
    }

    #[test]
    fn fork_copies_blocks_under_the_child() {
        let mut h = Heap::new(true);
        h.live.insert(
            0x10,
            Block {
                size: 4,
                ts: 0,
                stack: 1,
                owner: 0,
                func: AllocFn::Malloc,
            },
        );
        h.users = 2;
        let c = h.fork(7);
        assert_eq!(c.live[&0x10].owner, 7);
        assert_eq!(h.live[&0x10].owner, 0);
        assert_eq!(c.users, 1);
    }
}
