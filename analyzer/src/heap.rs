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

use std::cell::OnceCell;

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
    address: u64,
    /// Where the block had been allocated.
    pub alloc_stack: StackId,
    /// Where it was freed.
    pub free_stack: StackId,
    /// Its size.
    pub size: u64,
    /// Its allocating function.
    pub alloc_fn: AllocFn,
}

/// The freed-block history: the last [`FREED_HISTORY`] frees in a ring, oldest
/// overwritten first.
///
/// Every free is remembered but a lookup (a free of an address that is not live) is
/// rare in a correct program, so remembering must be cheap and looking up need not be:
/// a free is one write into the ring, with no hashing and no per-free allocation. The
/// address index that makes lookups O(1) is only built at the first lookup (from the
/// ring, newest entry winning) and maintained from then on, so a buggy program that
/// frees wild pointers over and over costs what a hash map would, and a correct one
/// never pays for it.
///
/// The most recent free of an address wins. No entry needs forgetting when its address
/// is allocated again: a lookup only happens for an address that is not live, and the
/// only way a live block stops being live is a free, which is then the newest entry.
#[derive(Clone, Debug, Default)]
struct FreedHistory {
    ring: Vec<Freed>,
    /// Where the next free goes once the ring is full.
    next: usize,
    /// Address -> ring slot of its newest free, once a lookup asked for it.
    index: OnceCell<FastMap<u64, u32>>,
}

impl FreedHistory {
    #[inline]
    fn push(&mut self, f: Freed) {
        let slot = if self.ring.len() < FREED_HISTORY {
            self.ring.push(f);
            self.ring.len() - 1
        } else {
            let slot = self.next;
            self.next = if slot + 1 == FREED_HISTORY {
                0
            } else {
                slot + 1
            };
            let old = std::mem::replace(&mut self.ring[slot], f);
            if let Some(index) = self.index.get_mut() {
                if index.get(&old.address) == Some(&(slot as u32)) {
                    index.remove(&old.address);
                }
            }
            slot
        };
        if let Some(index) = self.index.get_mut() {
            index.insert(f.address, slot as u32);
        }
    }

    fn get(&self, address: u64) -> Option<&Freed> {
        let index = self.index.get_or_init(|| {
            // Oldest first, so that the newest free of an address wins.
            let (older, newer) = self.ring.split_at(self.next.min(self.ring.len()));
            let mut index = FastMap::default();
            index.reserve(self.ring.len());
            for (slot, f) in newer
                .iter()
                .enumerate()
                .map(|(i, f)| (i + older.len(), f))
                .chain(older.iter().enumerate())
            {
                index.insert(f.address, slot as u32);
            }
            index
        });
        index.get(&address).map(|&slot| &self.ring[slot as usize])
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ring.len()
    }
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
    freed: FreedHistory,
}

impl Heap {
    /// An empty heap with one user.
    pub fn new(complete: bool) -> Self {
        Heap {
            live: FastMap::default(),
            complete,
            users: 1,
            freed: FreedHistory::default(),
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
    #[inline]
    pub fn remember_free(
        &mut self,
        address: u64,
        alloc_stack: StackId,
        alloc_fn: AllocFn,
        free_stack: StackId,
        size: u64,
    ) {
        self.freed.push(Freed {
            address,
            alloc_stack,
            free_stack,
            size,
            alloc_fn,
        });
    }

    /// What is remembered about the latest free of `address`, if it is remembered.
    /// Only meaningful for an address that is not live (see [`FreedHistory`]).
    pub fn freed(&self, address: u64) -> Option<&Freed> {
        self.freed.get(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_history_is_bounded_and_newest_free_wins() {
        let mut h = Heap::new(true);
        h.remember_free(0x10, 1, AllocFn::Malloc, 2, 8);
        assert_eq!(h.freed(0x10).unwrap().free_stack, 2);
        // Allocated again and freed from elsewhere: the newest free is the one reported
        // (the index, built by the lookup above, is maintained from now on).
        h.remember_free(0x10, 3, AllocFn::New, 4, 16);
        let f = h.freed(0x10).unwrap();
        assert_eq!((f.alloc_stack, f.free_stack, f.size), (3, 4, 16));
        assert_eq!(f.alloc_fn, AllocFn::New);
        for i in 0..FREED_HISTORY as u64 + 5 {
            h.remember_free(0x1000 + i * 16, 1, AllocFn::Malloc, 2, 8);
        }
        assert!(h.freed(0x10).is_none());
        assert!(h.freed(0x1000).is_none());
        assert!(h.freed(0x1000 + 6 * 16).is_some());
        assert_eq!(h.freed.len(), FREED_HISTORY);
        assert!(h.freed.index.get().unwrap().len() <= FREED_HISTORY);
    }

    #[test]
    fn freed_index_built_late_sees_the_newest_free_after_wrapping() {
        let mut h = Heap::new(true);
        // Fill the ring and wrap it, with 0x10 freed once early and once late: the
        // late free (in a slot before `next`) must win when the index is built.
        h.remember_free(0x10, 1, AllocFn::Malloc, 2, 8);
        for i in 0..FREED_HISTORY as u64 {
            h.remember_free(0x1000 + i * 16, 1, AllocFn::Malloc, 2, 8);
        }
        h.remember_free(0x20, 1, AllocFn::Malloc, 2, 8);
        h.remember_free(0x20, 5, AllocFn::Malloc, 6, 24);
        assert!(h.freed(0x10).is_none());
        assert_eq!(h.freed(0x20).unwrap().free_stack, 6);
        assert!(h.freed(0x1000).is_none());
        assert!(h.freed(0x1000 + 16).is_none());
        assert!(h.freed(0x1000 + 2 * 16).is_some());
        // A fork child keeps the history.
        let c = h.fork(1);
        assert_eq!(c.freed(0x20).unwrap().size, 24);
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
