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
use std::collections::{BTreeMap, VecDeque};

use heaptape_format::{AllocFn, StackId, Timestamp};

use crate::hash::{fmix64, FastMap};
use crate::platform::prefetch;

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
    /// Its address.
    pub address: u64,
    /// Where the block had been allocated.
    pub alloc_stack: StackId,
    /// Where it was freed.
    pub free_stack: StackId,
    /// Its size.
    pub size: u64,
    /// Its allocating function.
    pub alloc_fn: AllocFn,
}

/// The freed-block history: at least the last [`FREED_HISTORY`] frees, in chunks,
/// oldest dropped first; a lookup sees only the last [`FREED_HISTORY`].
///
/// Every free is remembered but a lookup (a free of an address that is not live) is
/// rare in a correct program, so remembering must be cheap and looking up need not be:
/// a free is one write at the end of the newest chunk, with no hashing and no per-free
/// allocation, and a run summarized off the replaying thread (see [`super::run_summary`])
/// hands its frees over as one chunk, moved, not copied. The address index that makes
/// lookups O(1) is only built at the first lookup (from the chunks, newest entry
/// winning) and maintained from then on, so a buggy program that frees wild pointers
/// over and over costs what a hash map would, and a correct one never pays for it.
///
/// The most recent free of an address wins. No entry needs forgetting when its address
/// is allocated again: a lookup only happens for an address that is not live, and the
/// only way a live block stops being live is a free, which is then the newest entry.
#[derive(Clone, Debug, Default)]
struct FreedHistory {
    /// Oldest first.
    chunks: VecDeque<Vec<Freed>>,
    /// Frees remembered so far (the number of the next one).
    total: u64,
    /// The number of the first entry of `chunks[0]`.
    first: u64,
    /// Address -> number of its newest free, once a lookup asked for it.
    index: OnceCell<FastMap<u64, u64>>,
    /// Chunks dropped from the front, for new ones (a fresh 128 KiB vector is a fresh
    /// mapping whose pages fault in: about 0.5 s over 100 M events).
    spare: Vec<Vec<Freed>>,
}

/// Most frees in a chunk made by single pushes.
const FREED_CHUNK: usize = 4096;

impl FreedHistory {
    #[inline]
    fn push(&mut self, f: Freed) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < FREED_CHUNK => c.push(f),
            _ => self.push_chunk(f),
        }
        if let Some(index) = self.index.get_mut() {
            index.insert(f.address, self.total);
        }
        self.total += 1;
    }

    /// Starts a chunk with `f`, dropping the chunks the window no longer needs (only
    /// here and in `append`: keeping a chunk longer than needed is harmless, since a
    /// lookup only sees the window).
    #[cold]
    fn push_chunk(&mut self, f: Freed) {
        self.trim();
        let mut c = self.spare_chunk();
        c.reserve(FREED_CHUNK);
        c.push(f);
        self.chunks.push_back(c);
    }

    /// An empty vector, recycled if one was dropped.
    fn spare_chunk(&mut self) -> Vec<Freed> {
        self.spare.pop().unwrap_or_default()
    }

    /// Remembers `frees`, in order, after the frees remembered so far; returns an
    /// empty vector for the next such call.
    fn append(&mut self, frees: Vec<Freed>) -> Vec<Freed> {
        if frees.is_empty() {
            return frees;
        }
        if let Some(index) = self.index.get_mut() {
            for (i, f) in frees.iter().enumerate() {
                index.insert(f.address, self.total + i as u64);
            }
        }
        self.total += frees.len() as u64;
        self.chunks.push_back(frees);
        self.trim();
        self.spare_chunk()
    }

    /// The number of the oldest free a lookup may see.
    fn window_start(&self) -> u64 {
        self.total.saturating_sub(FREED_HISTORY as u64)
    }

    /// Drops the oldest chunks while the others still hold the lookup window.
    fn trim(&mut self) {
        let start = self.window_start();
        while let Some(front) = self.chunks.front() {
            let end = self.first + front.len() as u64;
            if end > start {
                break;
            }
            if let Some(index) = self.index.get_mut() {
                for (i, f) in front.iter().enumerate() {
                    if index.get(&f.address) == Some(&(self.first + i as u64)) {
                        index.remove(&f.address);
                    }
                }
            }
            self.first = end;
            if let Some(mut c) = self.chunks.pop_front() {
                if self.spare.len() < 4 {
                    c.clear();
                    self.spare.push(c);
                }
            }
        }
    }

    fn get(&self, address: u64) -> Option<&Freed> {
        let index = self.index.get_or_init(|| {
            // Oldest first, so that the newest free of an address wins.
            let mut index = FastMap::default();
            for (n, f) in (self.first..).zip(self.chunks.iter().flatten()) {
                index.insert(f.address, n);
            }
            index
        });
        let n = *index.get(&address)?;
        if n < self.window_start() {
            return None;
        }
        let mut start = self.first;
        for c in &self.chunks {
            if n < start + c.len() as u64 {
                return c.get((n - start) as usize);
            }
            start += c.len() as u64;
        }
        None
    }

    /// The latest free (among those a lookup may see) of a block that `address` lies in,
    /// its start excluded: a stale pointer into a freed block. A scan of the window,
    /// newest first (a recently freed block is found at once): only bad frees that
    /// are neither a live block's nor a freed block's start ask, and they are rare.
    fn containing(&self, address: u64) -> Option<&Freed> {
        let start = self.window_start();
        let mut end = self.total;
        for c in self.chunks.iter().rev() {
            let first = end.saturating_sub(c.len() as u64);
            let from = start.saturating_sub(first).min(c.len() as u64) as usize;
            let hit = c[from..].iter().rev().find(|f| {
                let offset = address.wrapping_sub(f.address);
                offset != 0 && offset < f.size
            });
            if hit.is_some() || first <= start {
                return hit;
            }
            end = first;
        }
        None
    }

    /// Frees a lookup may see.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.total - self.window_start()
    }
}

/// One slot of a [`LiveTable`]: a block, flattened with its address (0 marks an empty
/// slot: no allocation returns NULL as a block) and the low half of its address's hash
/// (its home slot, so that deletion need not hash again), in 40 bytes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    address: u64,
    size: u64,
    ts: Timestamp,
    stack: StackId,
    hash: u32,
    owner: u32,
    func: AllocFn,
}

const EMPTY_SLOT: Slot = Slot {
    address: 0,
    size: 0,
    ts: 0,
    stack: 0,
    hash: 0,
    owner: 0,
    func: AllocFn::Malloc,
};

impl Slot {
    #[inline]
    fn new(address: u64, hash: u64, b: Block) -> Slot {
        Slot {
            address,
            size: b.size,
            ts: b.ts,
            stack: b.stack,
            hash: hash as u32,
            // Image ids index a vector of images: far below 2^32.
            owner: b.owner as u32,
            func: b.func,
        }
    }

    #[inline]
    fn block(&self) -> Block {
        Block {
            size: self.size,
            ts: self.ts,
            stack: self.stack,
            owner: self.owner as ImageId,
            func: self.func,
        }
    }
}

/// How far below an address [`containing`] looks for a block start, one 8-byte step at
/// a time; blocks larger than this are also kept in each table's ordered index of large
/// blocks, where the look-up finds those that start farther below.
pub(crate) const CONTAINING_REACH: u64 = 4096;

/// The live block `address` lies in, with its start, among `tables` (one per address
/// shard of a heap, in shard order): the block with the greatest start at or below
/// `address`, if it reaches past `address` (blocks do not overlap in a real heap, so it
/// is the only one that can). Starts are looked up one 8-byte step at a time (every
/// allocator returns 8-byte aligned pointers) down to [`CONTAINING_REACH`] below; when
/// none is there, only a block larger than that can hold the address: the large block
/// with the greatest start below, from the tables' ordered indexes. Asked only for bad
/// frees (rare), never for the free of a live block's start.
pub(crate) fn containing(tables: &[&LiveTable], address: u64) -> Option<(u64, Block)> {
    if tables.is_empty() {
        return None;
    }
    let lowest = address.saturating_sub(CONTAINING_REACH);
    let mut x = address & !7;
    while x != 0 && x >= lowest {
        let h = fmix64(x);
        let t = tables[Live::shard_of(h, tables.len())];
        if let Some(b) = t.get_hashed(x, h) {
            return (address - x < b.size).then_some((x, b));
        }
        x -= 8;
    }
    // No start within reach: the large block with the greatest start below.
    let (start, size, t) = tables
        .iter()
        .filter_map(|t| {
            let (&start, &size) = t.large.range(..lowest).next_back()?;
            Some((start, size, t))
        })
        .max_by_key(|&(start, _, _)| start)?;
    if address - start >= size {
        return None;
    }
    t.get_hashed(start, fmix64(start)).map(|b| (start, b))
}

/// Live blocks by address: open addressing with linear probing and backward-shift
/// deletion (no tombstones, so a long run of frees and allocations never degrades or
/// rehashes in place), at most half full, blocks stored in the slots. The slot of an
/// address is known from its hash alone, so a caller that knows which addresses come
/// next can [`LiveTable::prefetch`] their slots and overlap the cache misses, which
/// dominate a replay whose live set does not fit the cache.
#[derive(Clone, Debug)]
pub(crate) struct LiveTable {
    slots: Vec<Slot>,
    len: usize,
    /// The live blocks larger than [`CONTAINING_REACH`], start → size, in address order
    /// (for [`containing`]; few, each being large).
    large: BTreeMap<u64, u64>,
}

impl Default for LiveTable {
    fn default() -> Self {
        LiveTable {
            slots: vec![EMPTY_SLOT; 16],
            len: 0,
            large: BTreeMap::new(),
        }
    }
}

impl LiveTable {
    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        // Tables stay far below 2^32 slots: the low half of the hash is enough.
        (hash as u32) as usize & self.mask()
    }

    /// The slot holding `address`, if it is live.
    #[inline]
    fn find(&self, address: u64, hash: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let a = self.slots[i].address;
            if a == address {
                return Some(i);
            }
            if a == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the slot an address whose hash is `hash` would be found at.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[self.home(hash)]);
    }

    /// The block at `address` (whose hash is `hash`), if it is live.
    #[inline]
    pub fn get_hashed(&self, address: u64, hash: u64) -> Option<Block> {
        self.find(address, hash).map(|i| self.slots[i].block())
    }

    /// Makes `block` live at `address` (not 0), returning the block it replaces.
    #[inline]
    pub fn insert_hashed(&mut self, address: u64, hash: u64, block: Block) -> Option<Block> {
        debug_assert_ne!(address, 0, "address 0 marks an empty slot");
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        if block.size > CONTAINING_REACH {
            self.large.insert(address, block.size);
        }
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let slot = &mut self.slots[i];
            if slot.address == address {
                let old = slot.block();
                *slot = Slot::new(address, hash, block);
                if old.size > CONTAINING_REACH && block.size <= CONTAINING_REACH {
                    self.large.remove(&address);
                }
                return Some(old);
            }
            if slot.address == 0 {
                *slot = Slot::new(address, hash, block);
                self.len += 1;
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes the block at `address`, if it is live.
    #[inline(always)]
    pub fn remove_hashed(&mut self, address: u64, hash: u64) -> Option<Block> {
        let mut hole = self.find(address, hash)?;
        let block = self.slots[hole].block();
        self.len -= 1;
        if block.size > CONTAINING_REACH {
            self.large.remove(&address);
        }
        // Backward shift: move later members of the cluster into the hole when their
        // home slot does not lie (cyclically) after it.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.address == 0 {
                break;
            }
            let home = s.hash as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY_SLOT;
        Some(block)
    }

    #[cold]
    fn grow(&mut self) {
        let bigger = vec![EMPTY_SLOT; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.mask();
        for s in old {
            if s.address != 0 {
                let mut i = s.hash as usize & mask;
                while self.slots[i].address != 0 {
                    i = (i + 1) & mask;
                }
                self.slots[i] = s;
            }
        }
    }

    /// Live blocks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every live block with its address, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.address != 0)
            .map(|s| (s.address, s.block()))
    }

    /// Gives every live block to image `owner`.
    fn set_owner(&mut self, owner: ImageId) {
        for s in &mut self.slots {
            s.owner = owner as u32;
        }
    }
}

/// A heap's live blocks, split by address into shards that the replay can update in
/// parallel (each address always lives in the same shard; see `replay`'s batch path).
#[derive(Clone, Debug)]
pub(crate) struct Live {
    shards: Box<[LiveTable]>,
}

impl Live {
    /// An empty set of `shards` shards (at least one).
    pub fn new(shards: usize) -> Self {
        Live {
            shards: (0..shards.max(1)).map(|_| LiveTable::default()).collect(),
        }
    }

    /// The shard of an address whose hash is `hash` (the high half picks the shard,
    /// the low bits the slot inside it).
    #[inline]
    pub fn shard_of(hash: u64, shards: usize) -> usize {
        (((hash >> 32) * shards as u64) >> 32) as usize
    }

    #[inline]
    fn shard(&self, hash: u64) -> &LiveTable {
        &self.shards[Self::shard_of(hash, self.shards.len())]
    }

    #[inline]
    fn shard_mut(&mut self, hash: u64) -> &mut LiveTable {
        let n = self.shards.len();
        &mut self.shards[Self::shard_of(hash, n)]
    }

    /// The shards, for the batch replay.
    pub fn shards_mut(&mut self) -> &mut [LiveTable] {
        &mut self.shards
    }

    /// Takes the blocks out, leaving a set with no shards at all (no allocation), for
    /// the replay to lend them to its shard thread; any use before they are put back
    /// panics (an index into no shards) rather than see an empty heap.
    pub fn lend(&mut self) -> Live {
        std::mem::replace(
            self,
            Live {
                shards: Box::new([]),
            },
        )
    }

    /// Makes `block` live at `address` (not 0), returning the block it replaces.
    pub fn insert(&mut self, address: u64, block: Block) -> Option<Block> {
        let h = fmix64(address);
        self.shard_mut(h).insert_hashed(address, h, block)
    }

    /// Removes the block at `address`, if it is live.
    pub fn remove(&mut self, address: u64) -> Option<Block> {
        let h = fmix64(address);
        self.shard_mut(h).remove_hashed(address, h)
    }

    /// The block at `address`, if it is live.
    pub fn get(&self, address: u64) -> Option<Block> {
        let h = fmix64(address);
        self.shard(h).get_hashed(address, h)
    }

    /// Whether a block is live at `address`.
    pub fn contains_key(&self, address: u64) -> bool {
        self.get(address).is_some()
    }

    /// Every live block with its address, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        self.shards.iter().flat_map(LiveTable::iter)
    }

    /// Every live block, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = Block> + '_ {
        self.iter().map(|(_, b)| b)
    }

    /// The live block `address` lies in, with its start (see [`containing`]); `None`
    /// while the blocks are lent.
    pub fn containing(&self, address: u64) -> Option<(u64, Block)> {
        let tables: Vec<&LiveTable> = self.shards.iter().collect();
        containing(&tables, address)
    }
}

/// One heap (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Heap {
    /// Live blocks by address.
    pub live: Live,
    /// Whether every block of this heap was seen being allocated. False for a heap
    /// attached to mid-run: frees of blocks allocated before the attach are then not
    /// invalid, just untracked.
    pub complete: bool,
    /// How many process images use this heap (more than one after vfork).
    pub users: u32,
    freed: FreedHistory,
}

impl Heap {
    /// An empty heap with one user, its live blocks in `shards` shards.
    pub fn new(complete: bool, shards: usize) -> Self {
        Heap {
            live: Live::new(shards),
            complete,
            users: 1,
            freed: FreedHistory::default(),
        }
    }

    /// A copy for a fork child: same blocks (now owned by `child`), same freed history,
    /// one user.
    pub fn fork(&self, child: ImageId) -> Heap {
        let mut h = self.clone();
        for t in h.live.shards.iter_mut() {
            t.set_owner(child);
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

    /// Remembers `frees` (a run's, in order; see [`super::run_summary`]); returns an empty
    /// vector to collect the next run's in.
    pub fn remember_frees(&mut self, frees: Vec<Freed>) -> Vec<Freed> {
        self.freed.append(frees)
    }

    /// What is remembered about the latest free of `address`, if it is remembered.
    /// Only meaningful for an address that is not live (see [`FreedHistory`]).
    pub fn freed(&self, address: u64) -> Option<&Freed> {
        self.freed.get(address)
    }

    /// The latest remembered free of a block that `address` lies in, past its start (a
    /// stale interior pointer; see [`Heap::freed`] for a block's start).
    pub fn freed_containing(&self, address: u64) -> Option<&Freed> {
        self.freed.containing(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_history_is_bounded_and_newest_free_wins() {
        let mut h = Heap::new(true, 1);
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
        assert_eq!(h.freed.len(), FREED_HISTORY as u64);
        assert!(h.freed.index.get().unwrap().len() <= FREED_HISTORY + FREED_CHUNK);
    }

    #[test]
    fn freed_index_built_late_sees_the_newest_free_after_wrapping() {
        let mut h = Heap::new(true, 1);
        // Fill the history past its window, with 0x20 freed twice at the end: the
        // later free must win when the index is built, and 0x10 (freed first) must
        // have left the window.
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

    /// Single frees and appended chunks (a summarized run's), lookups before and after
    /// the index exists: always the newest free of the address among the last
    /// [`FREED_HISTORY`], as a plain list of every free says.
    #[test]
    fn freed_history_matches_a_list_of_every_free() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut h = FreedHistory::default();
        let mut all: Vec<Freed> = Vec::new();
        let freed = |address, n: usize| Freed {
            address,
            alloc_stack: n as StackId,
            free_stack: 0,
            size: n as u64,
            alloc_fn: AllocFn::Malloc,
        };
        for round in 0..400 {
            if next(3) == 0 {
                let chunk: Vec<Freed> = (0..next(3000))
                    .map(|i| freed(16 * next(100_000), all.len() + i as usize))
                    .collect();
                all.extend(&chunk);
                h.append(chunk);
            } else {
                for _ in 0..next(300) {
                    let f = freed(16 * next(100_000), all.len());
                    all.push(f);
                    h.push(f);
                }
            }
            // No lookup in the first rounds: the index is built late.
            if round > 100 {
                let window = &all[all.len().saturating_sub(FREED_HISTORY)..];
                for _ in 0..50 {
                    let a = 16 * next(100_000);
                    let want = window.iter().rev().find(|f| f.address == a);
                    assert_eq!(h.get(a), want, "address {a:#x} after {} frees", all.len());
                }
            }
        }
        assert!(all.len() > 2 * FREED_HISTORY);
    }

    /// [`containing`] follows its definition (the greatest 8-byte aligned start within
    /// reach below the address, else the greatest start of a large block below that),
    /// checked against an ordered map of the same blocks, over shards, with blocks
    /// replaced, removed, and larger and smaller than the reach.
    #[test]
    fn containing_follows_its_definition() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut live = Live::new(3);
        let mut all: std::collections::BTreeMap<u64, u64> = Default::default();
        let block = |size| Block {
            size,
            ts: 0,
            stack: 0,
            owner: 0,
            func: AllocFn::Malloc,
        };
        let want = |all: &std::collections::BTreeMap<u64, u64>, a: u64| {
            let lowest = a.saturating_sub(CONTAINING_REACH);
            let near = all.range(lowest.max(1)..=a).rfind(|(s, _)| *s % 8 == 0);
            let (s, size) = match near {
                Some((&s, &size)) => (s, size),
                None => {
                    let (&s, &size) = all
                        .range(..lowest)
                        .rfind(|(_, size)| **size > CONTAINING_REACH)?;
                    (s, size)
                }
            };
            (a - s < size).then_some((s, size, near.is_none()))
        };
        let mut far = 0;
        for round in 0..20_000u64 {
            // Sparse enough for gaps wider than the reach.
            let a = 16 * (1 + next(20_000)) * if round % 2 == 0 { 1 } else { 97 };
            match next(3) {
                0 => {
                    live.remove(a);
                    all.remove(&a);
                }
                _ => {
                    let size = match next(4) {
                        0 => next(40_000),
                        _ => next(200),
                    };
                    live.insert(a, block(size));
                    all.insert(a, size);
                }
            }
            if round % 7 == 0 {
                let q = next(16 * 20_100 * 97);
                let got = live.containing(q).map(|(s, b)| (s, b.size));
                let expected = want(&all, q);
                far += u64::from(expected.is_some_and(|e| e.2));
                assert_eq!(
                    got,
                    expected.map(|e| (e.0, e.1)),
                    "address {q:#x}, round {round}"
                );
            }
        }
        assert!(far > 20, "{far} found in large blocks beyond the reach");
    }

    #[test]
    fn fork_copies_blocks_under_the_child() {
        let mut h = Heap::new(true, 1);
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
        assert_eq!(c.live.get(0x10).unwrap().owner, 7);
        assert_eq!(h.live.get(0x10).unwrap().owner, 0);
        assert_eq!(c.users, 1);
    }
}
