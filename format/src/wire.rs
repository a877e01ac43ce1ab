//! The compact, column-oriented encoding of records inside one chunk.
//!
//! Allocator events dominate every trace, so they get a hand-shaped encoding. Each
//! record contributes one *tag* byte to the tag stream and its fields to a handful of
//! other streams (timestamps, threads, stacks, sizes, addresses, ...). Storing each kind
//! of field contiguously lets zstd model every column on its own.
//!
//! Fields are not stored verbatim; both sides keep a small *model* of the recent past
//! and store only what the model does not predict:
//!
//! * timestamps and thread ids are deltas from the previous record's; a timestamp delta
//!   is split into its noisy low byte and the (well compressible) rest;
//! * the function and size of an event are predicted from the last event with the same
//!   stack (one call site almost always calls the same function with the same size);
//! * the model tracks the blocks allocated in the chunk that are still live in a table
//!   of slots (a new block takes the most recently emptied slot); a free names its
//!   block by slot (a fixed two-byte field: O(1) to undo, nothing shifts), and
//!   its stack is predicted from where the previous block of the same allocation site
//!   was freed;
//! * freed blocks go to per-size bins, as in glibc's tcache: an allocation's address is
//!   predicted to be the top of its size's bin, or else the "top of heap" right after
//!   the previous fresh allocation (bump allocation).
//!
//! The model starts empty at every chunk, which is what makes chunks independently
//! decodable (and so decodable in parallel). Rare records are stored as the logical
//! [`Record`] itself, encoded with postcard. `docs/FORMAT.md` specifies every bit.

use crate::record::{AllocFn, Record, StackId};
use crate::MIN_RECORD_BYTES;
use std::mem::MaybeUninit;

/// Number of streams in a chunk payload.
pub(crate) const STREAMS: usize = 12;
/// One tag byte per record.
pub(crate) const S_TAG: usize = 0;
/// Low byte of each zigzag timestamp delta.
pub(crate) const S_TS_LO: usize = 1;
/// Varint of each zigzag timestamp delta shifted right by 8.
pub(crate) const S_TS_HI: usize = 2;
/// Zigzag varint thread id deltas (only when the thread changes).
pub(crate) const S_TID: usize = 3;
/// Varint stack ids (when not predicted).
pub(crate) const S_STACK: usize = 4;
/// Varint sizes (when not predicted) and alignments.
pub(crate) const S_SIZE: usize = 5;
/// Allocation addresses as zigzag deltas; realloc results as deltas from the old block.
pub(crate) const S_ADDR: usize = 6;
/// Depths in a size bin, for allocations that reuse a freed block.
pub(crate) const S_BIN: usize = 7;
/// Released addresses: block slots (`u16`) or zigzag delta varints.
pub(crate) const S_LIVE: usize = 8;
/// Function bytes (when not predicted).
pub(crate) const S_FUNC: usize = 9;
/// Stack trie node fields.
pub(crate) const S_NODE: usize = 10;
/// Postcard-encoded rare records.
pub(crate) const S_OTHER: usize = 11;

/// Names of the streams, for error messages.
const STREAM_NAMES: [&str; STREAMS] = [
    "tag",
    "timestamp low",
    "timestamp high",
    "thread",
    "stack",
    "size",
    "address",
    "bin",
    "release",
    "function",
    "stack node",
    "other",
];

/// Kind of record, in the low three bits of the tag.
const KIND_MASK: u8 = 0b111;
const K_OTHER: u8 = 0;
const K_NODE: u8 = 1;
const K_ALLOC: u8 = 2;
const K_ALIGNED: u8 = 3;
const K_FREE: u8 = 4;
const K_REALLOC: u8 = 5;

/// Event tag bit: the thread differs from the previous event's (a delta follows).
const F_TID: u8 = 1 << 3;
/// Event tag bit: the function is stored (not predicted from the stack).
const F_FUNC: u8 = 1 << 4;
/// Alloc/realloc tag bit: the size is stored (not predicted from the stack).
const F_SIZE: u8 = 1 << 5;
/// Free tag bit: the stack is stored (not predicted from the block's allocation site).
const F_STACK: u8 = 1 << 5;
/// Event tag bits 6-7: how the (first) address is stored.
const A_SHIFT: u8 = 6;
/// Allocation: zigzag delta from the bump prediction in the address stream.
const A_DELTA: u8 = 0;
/// Allocation: taken from its size bin, depth in the bin stream.
const A_BIN: u8 = 1;
/// Allocation: equals the bump prediction.
const A_BUMP: u8 = 2;
/// Release: zigzag delta from the last address in the release stream.
const R_DELTA: u8 = 0;
/// Release: a live block, its slot (`u16`) in the release stream.
const R_LIVE: u8 = 1;
/// Address is 0 (allocations and releases).
const A_ZERO: u8 = 3;
/// Stack node tag bit: the node id is the previous node's plus one.
const F_NEXT_ID: u8 = 1 << 3;

/// Slots of the block table (a power of two, at most 65536: a slot is stored as a
/// `u16`).
pub(crate) const BLOCKS: usize = 4096;
/// Size of the per-stack prediction table (a power of two).
const TABLE: usize = 4096;
/// Number of size bins (a power of two) and blocks remembered per bin.
const BINS: usize = 128;
const BIN_DEPTH: usize = 8;
/// Entries of the encoder's (lossy) index from address to block slot (a power of two).
const INDEX: usize = 1 << 16;

#[inline(always)]
fn index_of(addr: u64) -> usize {
    ((addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize & (INDEX - 1)
}

/// Allocations at least this big are assumed to come from mmap and do not move the bump
/// prediction.
const BUMP_MAX_SIZE: u64 = 128 * 1024;

/// `a` if `c`, else `b`, without a branch.
#[inline(always)]
fn sel(c: bool, a: u64, b: u64) -> u64 {
    b ^ ((a ^ b) & u64::from(c).wrapping_neg())
}

#[inline(always)]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline(always)]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline(always)]
fn delta(new: u64, old: u64) -> u64 {
    zigzag(new.wrapping_sub(old) as i64)
}

#[inline(always)]
fn undelta(old: u64, d: u64) -> u64 {
    old.wrapping_add(unzigzag(d) as u64)
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low first, high bit = more).
#[inline(always)]
pub(crate) fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` as a prefix varint: a value below 2^56 takes `n` = 1 to 8 bytes (7 bits
/// each), stored as the little-endian `n`-byte integer `v << n | 1 << (n - 1)`, so the
/// first byte's trailing zeros tell the length; a larger value is a zero byte and the
/// eight-byte little-endian value. (Cheaper to decode than LEB128: the length is one
/// trailing-zero count, the value one shift and one mask.)
#[inline(always)]
pub(crate) fn put_pv(out: &mut Vec<u8>, v: u64) {
    if v < 1 << 56 {
        let bits = 64 - (v | 1).leading_zeros() as usize;
        let n = bits.div_ceil(7);
        let x = v << n | 1 << (n - 1);
        // Eight bytes then cut back: one fixed-size store instead of a copy of `n`.
        let len = out.len();
        out.extend_from_slice(&x.to_le_bytes());
        out.truncate(len + n);
    } else {
        out.push(0);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The distance from a fresh block of `size` bytes to the next fresh block of a
/// glibc-like allocator: the user size plus an 8-byte header, rounded up to 16, at
/// least 32. Also names the block's size bin.
#[inline(always)]
fn bump_step(size: u64) -> u64 {
    (size.wrapping_add(8 + 15) & !15).max(32)
}

#[inline(always)]
fn bin_of(size: u64) -> usize {
    // `bump_step(size) >> 4`, without the low bits the shift drops anyway.
    (size.wrapping_add(8 + 15) >> 4).max(2) as usize & (BINS - 1)
}

/// Prediction for one stack (slot chosen by the low bits of the stack id).
#[derive(Clone, Copy)]
struct Slot {
    /// Stack id + 1, 0 when empty.
    key: u64,
    /// Size of the last allocation with this stack.
    size: u64,
    /// Stack id + 1 of the last free of a block allocated with this stack, 0 if none.
    free_key: u64,
    /// Function of the last event with this stack.
    func: AllocFn,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: 0,
        size: 0,
        free_key: 0,
        func: AllocFn::Malloc,
    };
}

/// A block allocated in this chunk and not yet released. Only its size bin is kept of
/// its size (all a release needs), so a block takes 16 bytes.
#[derive(Clone, Copy)]
struct Live {
    addr: u64,
    stack: StackId,
    bin: u32,
}

impl Live {
    const EMPTY: Live = Live {
        addr: 0,
        stack: 0,
        bin: 0,
    };
}

/// The block table: [`BLOCKS`] slots, each empty or holding one live block (a
/// non-zero address). An allocation takes the most recently emptied slot, else the
/// lowest never-used one, else (all in use) the slot under a cyclic hand, whose block
/// is forgotten. A release names its block by slot: O(1), nothing moves.
struct Blocks {
    buf: [Live; BLOCKS],
    /// Emptied slots, most recent last (`free[..nfree]`).
    free: [u16; BLOCKS],
    nfree: usize,
    /// Slots `next..` have never been used in this chunk.
    next: usize,
    /// The slot overwritten when every slot is in use.
    hand: usize,
}

impl Blocks {
    const EMPTY: Blocks = Blocks {
        buf: [Live::EMPTY; BLOCKS],
        free: [0; BLOCKS],
        nfree: 0,
        next: 0,
        hand: 0,
    };

    fn clear(&mut self) {
        // Slots `next..` are kept empty, so that a release needs no check against
        // `next`.
        self.buf.fill(Live::EMPTY);
        self.nfree = 0;
        self.next = 0;
        self.hand = 0;
    }

    /// Stores a block (`l.addr != 0`); returns its slot.
    #[inline(always)]
    fn push(&mut self, l: Live) -> usize {
        let s = if self.nfree > 0 {
            self.nfree -= 1;
            self.free[self.nfree & (BLOCKS - 1)] as usize
        } else if self.next < BLOCKS {
            self.next += 1;
            self.next - 1
        } else {
            let s = self.hand;
            self.hand = (s + 1) & (BLOCKS - 1);
            s
        };
        self.buf[s & (BLOCKS - 1)] = l;
        s
    }

    /// Empties slot `s < BLOCKS` and returns its block, if it holds one. (Slots from
    /// `next` on are always empty: never used in this chunk, and zeroed by `clear`.)
    #[inline(always)]
    fn take(&mut self, s: usize) -> Option<Live> {
        let slot = &mut self.buf[s & (BLOCKS - 1)];
        let b = *slot;
        if b.addr == 0 {
            return None;
        }
        slot.addr = 0;
        // A slot below `next` is either live or among the `nfree` emptied ones, so
        // `nfree < next <= BLOCKS` here (the mask never changes the index).
        self.free[self.nfree & (BLOCKS - 1)] = s as u16;
        self.nfree += 1;
        Some(b)
    }
}

/// A size bin: the most recently freed blocks of one size class, newest last, kept
/// as a ring of [`BIN_DEPTH`] entries (pushing onto a full bin overwrites the oldest,
/// taking the newest moves nothing). Entries that hold no block are 0 (a bin only
/// ever holds non-zero addresses), so the entries `0..len` below the newest are the
/// bin's blocks and the others are 0: no length needs to be kept.
#[derive(Clone, Copy)]
struct Bin {
    addrs: [u64; BIN_DEPTH],
    /// Ring index of the next push.
    top: usize,
}

impl Bin {
    const EMPTY: Bin = Bin {
        addrs: [0; BIN_DEPTH],
        top: 0,
    };

    /// Pushes `addr != 0`.
    #[inline(always)]
    fn push(&mut self, addr: u64) {
        self.addrs[self.top & (BIN_DEPTH - 1)] = addr;
        self.top = (self.top + 1) & (BIN_DEPTH - 1);
    }

    /// Removes and returns the block `depth` below the newest.
    #[inline(always)]
    fn take(&mut self, depth: u64) -> Option<u64> {
        let d = (depth as usize) & (BIN_DEPTH - 1);
        let i = self.top.wrapping_sub(1 + d) & (BIN_DEPTH - 1);
        let addr = self.addrs[i];
        if depth >= BIN_DEPTH as u64 || addr == 0 {
            return None;
        }
        // The `d` newer entries move down one place (none for the newest), and the
        // newest place is emptied.
        for k in 0..d {
            self.addrs[(i + k) & (BIN_DEPTH - 1)] = self.addrs[(i + k + 1) & (BIN_DEPTH - 1)];
        }
        self.top = self.top.wrapping_sub(1) & (BIN_DEPTH - 1);
        self.addrs[self.top] = 0;
        Some(addr)
    }

    /// Removes and returns the newest block (`take(0)`).
    #[inline(always)]
    fn take_newest(&mut self) -> Option<u64> {
        let i = self.top.wrapping_sub(1) & (BIN_DEPTH - 1);
        let addr = self.addrs[i];
        if addr == 0 {
            return None;
        }
        self.addrs[i] = 0;
        self.top = i;
        Some(addr)
    }

    /// Depth of `addr != 0` below the newest block, if the bin holds it.
    #[inline(always)]
    fn find(&self, addr: u64) -> Option<u64> {
        (0..BIN_DEPTH)
            .find(|&d| self.addrs[self.top.wrapping_sub(1 + d) & (BIN_DEPTH - 1)] == addr)
            .map(|d| d as u64)
    }
}

/// The state both sides of a chunk keep to undo the predictions.
struct Model {
    ts: u64,
    tid: u32,
    addr: u64,
    bump: u64,
    node_id: StackId,
    node_addr: u64,
    /// The tables, in one allocation (one base pointer for all of them).
    t: Box<Tables>,
}

/// The model's tables.
struct Tables {
    table: [Slot; TABLE],
    blocks: Blocks,
    bins: [Bin; BINS],
}

impl Tables {
    const EMPTY: Tables = Tables {
        table: [Slot::EMPTY; TABLE],
        blocks: Blocks::EMPTY,
        bins: [Bin::EMPTY; BINS],
    };
}

impl Model {
    fn new() -> Self {
        Model {
            ts: 0,
            tid: 0,
            addr: 0,
            bump: 0,
            node_id: 0,
            node_addr: 0,
            t: Box::new(Tables::EMPTY),
        }
    }

    /// Forgets everything (the start of a chunk).
    fn reset(&mut self) {
        self.ts = 0;
        self.tid = 0;
        self.addr = 0;
        self.bump = 0;
        self.node_id = 0;
        self.node_addr = 0;
        self.t.table.fill(Slot::EMPTY);
        self.t.blocks.clear();
        self.t.bins.fill(Bin::EMPTY);
    }

    #[inline(always)]
    fn slot(&mut self, stack: StackId) -> &mut Slot {
        &mut self.t.table[stack as usize & (TABLE - 1)]
    }

    /// Records a new live block; returns its slot.
    #[inline(always)]
    fn push_live(&mut self, addr: u64, size: u64, stack: StackId) -> usize {
        self.t.blocks.push(Live {
            addr,
            stack,
            bin: bin_of(size) as u32,
        })
    }

    /// Empties block slot `d` and returns its block (none if it is empty).
    #[inline(always)]
    fn take_live(&mut self, d: u64) -> Option<Live> {
        if d >= BLOCKS as u64 {
            return None;
        }
        self.t.blocks.take(d as usize)
    }

    /// The stack the free of a block allocated at `alloc_stack` is predicted to have.
    #[inline(always)]
    fn predicted_free_stack(&mut self, alloc_stack: StackId) -> Option<StackId> {
        let slot = *self.slot(alloc_stack);
        if slot.key == u64::from(alloc_stack) + 1 && slot.free_key != 0 {
            Some((slot.free_key - 1) as StackId)
        } else {
            None
        }
    }

    /// Remembers where a block allocated at `alloc_stack` was freed.
    #[inline(always)]
    fn learn_free_stack(&mut self, alloc_stack: StackId, stack: StackId) {
        let slot = self.slot(alloc_stack);
        if slot.key == u64::from(alloc_stack) + 1 {
            slot.free_key = u64::from(stack) + 1;
        }
    }

    /// Updates the per-stack prediction after an event; returns whether the slot held
    /// this stack before.
    #[inline(always)]
    fn learn(&mut self, stack: StackId, func: AllocFn, size: Option<u64>) {
        let key = u64::from(stack) + 1;
        let slot = self.slot(stack);
        let hit = slot.key == key;
        *slot = Slot {
            key,
            size: match size {
                Some(s) => s,
                None if hit => slot.size,
                None => 0,
            },
            free_key: if hit { slot.free_key } else { 0 },
            func,
        };
    }

    /// Model update after an allocation at `address` (mode `mode`).
    #[inline(always)]
    fn after_alloc(&mut self, address: u64, size: u64, stack: StackId, mode: u8) -> usize {
        let mut slot = 0;
        if address != 0 {
            slot = self.push_live(address, size, stack);
            self.addr = address;
            if (mode == A_DELTA || mode == A_BUMP) && size < BUMP_MAX_SIZE {
                self.bump = address.wrapping_add(bump_step(size));
            }
        }
        slot
    }
}

/// Encodes the records of one chunk into its streams.
pub(crate) struct Encoder {
    m: Model,
    /// Block slot + 1 by hashed address (0: none). Lossy: a colliding block overwrites
    /// the entry and is then released by address delta, so entries are verified.
    index: Vec<u16>,
    streams: [Vec<u8>; STREAMS],
    len: usize,
    records: u32,
}

impl Encoder {
    /// An encoder at the start of a chunk.
    pub(crate) fn new() -> Self {
        Encoder {
            m: Model::new(),
            index: vec![0; INDEX],
            streams: Default::default(),
            len: 0,
            records: 0,
        }
    }

    /// Bytes of payload encoded so far (without the stream length prefix).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Records encoded so far in this chunk.
    pub(crate) fn records(&self) -> u32 {
        self.records
    }

    /// Finds the block slot holding `addr != 0`.
    #[inline(always)]
    fn find_live(&self, addr: u64) -> Option<u64> {
        let s = usize::from(self.index[index_of(addr)]).checked_sub(1)?;
        let b = &self.m.t.blocks;
        (s < b.next && b.buf[s].addr == addr).then_some(s as u64)
    }

    /// Records a new live block at `addr != 0` in the model and the index.
    #[inline(always)]
    fn index_block(&mut self, addr: u64, slot: usize) {
        self.index[index_of(addr)] = slot as u16 + 1;
    }

    #[inline(always)]
    fn put_ts(&mut self, ts: u64) {
        let d = delta(ts, self.m.ts);
        self.streams[S_TS_LO].push(d as u8);
        put_pv(&mut self.streams[S_TS_HI], d >> 8);
        self.m.ts = ts;
    }

    #[inline(always)]
    fn put_tid(&mut self, tid: u32) -> u8 {
        if tid == self.m.tid {
            return 0;
        }
        put_pv(
            &mut self.streams[S_TID],
            delta(u64::from(tid), u64::from(self.m.tid)),
        );
        self.m.tid = tid;
        F_TID
    }

    /// Stores the function and size unless the stack's slot predicts them; updates the
    /// slot. Returns the tag bits.
    #[inline(always)]
    fn put_func_size(&mut self, stack: StackId, func: AllocFn, size: Option<u64>) -> u8 {
        let mut tag = 0;
        let key = u64::from(stack) + 1;
        let slot = *self.m.slot(stack);
        let hit = slot.key == key;
        if !(hit && slot.func == func) {
            tag |= F_FUNC;
            self.streams[S_FUNC].push(func as u8);
        }
        if let Some(size) = size {
            if !(hit && slot.size == size) {
                tag |= F_SIZE;
                put_pv(&mut self.streams[S_SIZE], size);
            }
        }
        self.m.learn(stack, func, size);
        tag
    }

    /// Encodes a released address; returns its mode and, for a live block, the block.
    #[inline(always)]
    fn put_released(&mut self, address: u64) -> (u8, Option<Live>) {
        if address == 0 {
            return (A_ZERO, None);
        }
        if let Some(d) = self.find_live(address) {
            self.streams[S_LIVE].extend_from_slice(&(d as u16).to_le_bytes());
            return (R_LIVE, self.m.take_live(d));
        }
        put_pv(&mut self.streams[S_LIVE], delta(address, self.m.addr));
        (R_DELTA, None)
    }

    /// Appends one record. Fails with the record's encoded size, leaving the chunk as it
    /// was, when the record is larger than `max_record`.
    pub(crate) fn encode(&mut self, rec: &Record, max_record: usize) -> Result<(), usize> {
        let tag = match *rec {
            Record::Alloc {
                ts,
                tid,
                func,
                address,
                size,
                align,
                stack,
            } => {
                let mut tag = if align == 0 { K_ALLOC } else { K_ALIGNED };
                self.put_ts(ts);
                tag |= self.put_tid(tid);
                put_pv(&mut self.streams[S_STACK], u64::from(stack));
                tag |= self.put_func_size(stack, func, Some(size));
                if align != 0 {
                    put_pv(&mut self.streams[S_SIZE], align);
                }
                let mode = if address == 0 {
                    A_ZERO
                } else if address == self.m.bump {
                    A_BUMP
                } else {
                    let bin = &mut self.m.t.bins[bin_of(size)];
                    match bin.find(address) {
                        Some(d) => {
                            bin.take(d);
                            put_pv(&mut self.streams[S_BIN], d);
                            A_BIN
                        }
                        None => {
                            put_pv(&mut self.streams[S_ADDR], delta(address, self.m.bump));
                            A_DELTA
                        }
                    }
                };
                let slot = self.m.after_alloc(address, size, stack, mode);
                if address != 0 {
                    self.index_block(address, slot);
                }
                tag | mode << A_SHIFT
            }
            Record::Free {
                ts,
                tid,
                func,
                address,
                stack,
            } => {
                let mut tag = K_FREE;
                self.put_ts(ts);
                tag |= self.put_tid(tid);
                let (mode, block) = self.put_released(address);
                let predicted = block.and_then(|b| self.m.predicted_free_stack(b.stack));
                if predicted != Some(stack) {
                    tag |= F_STACK;
                    put_pv(&mut self.streams[S_STACK], u64::from(stack));
                }
                tag |= self.put_func_size(stack, func, None);
                if address != 0 {
                    self.m.addr = address;
                }
                if let Some(b) = block {
                    self.m.t.bins[b.bin as usize & (BINS - 1)].push(address);
                    self.m.learn_free_stack(b.stack, stack);
                }
                tag | mode << A_SHIFT
            }
            Record::Realloc {
                ts,
                tid,
                func,
                old_address,
                new_address,
                size,
                stack,
            } => {
                let mut tag = K_REALLOC;
                self.put_ts(ts);
                tag |= self.put_tid(tid);
                put_pv(&mut self.streams[S_STACK], u64::from(stack));
                tag |= self.put_func_size(stack, func, Some(size));
                let (mode, block) = self.put_released(old_address);
                put_pv(&mut self.streams[S_ADDR], delta(new_address, old_address));
                if let Some(b) = block {
                    if new_address != old_address {
                        self.m.t.bins[b.bin as usize & (BINS - 1)].push(old_address);
                    }
                }
                if new_address != 0 {
                    let slot = self.m.push_live(new_address, size, stack);
                    self.index_block(new_address, slot);
                    self.m.addr = new_address;
                } else if old_address != 0 {
                    self.m.addr = old_address;
                }
                tag | mode << A_SHIFT
            }
            Record::StackNode {
                id,
                parent,
                address,
            } => {
                let node = &mut self.streams[S_NODE];
                let mut tag = K_NODE;
                if id == self.m.node_id.wrapping_add(1) {
                    tag |= F_NEXT_ID;
                } else {
                    put_var(node, delta(u64::from(id), u64::from(self.m.node_id)));
                }
                put_var(node, u64::from(id.wrapping_sub(parent)));
                put_var(node, delta(address, self.m.node_addr));
                self.m.node_id = id;
                self.m.node_addr = address;
                tag
            }
            ref other => {
                let before = self.streams[S_OTHER].len();
                let buf = std::mem::take(&mut self.streams[S_OTHER]);
                // Serializing a Record into a Vec cannot fail: every field is plain data.
                self.streams[S_OTHER] = match postcard::to_extend(other, buf) {
                    Ok(buf) => buf,
                    Err(_) => return Err(usize::MAX),
                };
                let size = self.streams[S_OTHER].len() - before;
                if size > max_record {
                    self.streams[S_OTHER].truncate(before);
                    return Err(size);
                }
                if let Some(ts) = other.timestamp() {
                    self.m.ts = ts;
                }
                K_OTHER
            }
        };
        self.streams[S_TAG].push(tag);
        self.records += 1;
        self.len = self.streams.iter().map(Vec::len).sum();
        Ok(())
    }

    /// Appends the chunk payload (stream lengths, then the streams) to `out` and starts
    /// a new chunk.
    pub(crate) fn finish_into(&mut self, out: &mut Vec<u8>) {
        out.reserve(self.len + STREAMS * 5);
        for s in &self.streams {
            put_var(out, s.len() as u64);
        }
        for s in &mut self.streams {
            out.extend_from_slice(s);
            s.clear();
        }
        self.m.reset();
        self.index.fill(0);
        self.len = 0;
        self.records = 0;
    }
}

/// Why a payload does not decode: a message and the record it concerns.
#[derive(Debug)]
pub(crate) struct DecodeError {
    /// Index of the record in the chunk.
    pub(crate) record: u32,
    /// What is wrong.
    pub(crate) what: String,
}

/// What is wrong with a record, cheap to return through the hot path; the message is
/// only built when decoding fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The stream ends early.
    Short(usize),
    /// A varint in the stream overflows 64 bits.
    Overflow(usize),
    /// An unknown allocator function byte.
    Func(u8),
    /// A value that does not fit its field.
    Range(&'static str, u64),
    /// A fixed message.
    Msg(&'static str),
    /// A release names an empty block slot.
    Slot(u64),
    /// An allocation names a bin entry that does not exist.
    Bin(u64),
    /// An unknown record kind.
    Kind(u8),
}

impl Fault {
    #[cold]
    #[inline(never)]
    fn message(self, m: &Model) -> String {
        match self {
            Fault::Short(s) => format!("the {} stream ends early", STREAM_NAMES[s]),
            Fault::Overflow(s) => {
                format!("varint overflows 64 bits in the {} stream", STREAM_NAMES[s])
            }
            Fault::Func(b) => format!("unknown allocator function {b}"),
            Fault::Range(what, v) => format!("{what} {v} out of range"),
            Fault::Msg(what) => what.into(),
            Fault::Slot(d) => format!(
                "release names block slot {d}, which is empty (slots in use: {})",
                m.t.blocks.next
            ),
            Fault::Bin(d) => format!("allocation names bin entry {d}, which does not exist"),
            Fault::Kind(k) => format!("unknown record kind {k}"),
        }
    }
}

/// A cursor over one stream. The decoder keeps its cursors in local variables and
/// only ever passes them by reference to inlined functions (or copies), so that they
/// stay in registers.
#[derive(Clone, Copy)]
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cur<'_> {
    /// Reads a LEB128 varint (out of the hot loop: stack nodes, tests).
    #[inline(always)]
    fn var(&mut self, s: usize) -> Result<u64, Fault> {
        let (x, pos) = var_slow(self.b, self.b.len(), self.pos, s)?;
        self.pos = pos;
        Ok(x)
    }
}

/// Byte-at-a-time varint decoding at `b[pos..]`, for the end of a stream and for long
/// varints. Returns the value and the position after it. (Takes and returns the
/// position by value so that the caller's cursor never needs an address.)
#[inline(never)]
fn var_slow(b: &[u8], end: usize, mut pos: usize, s: usize) -> Result<(u64, usize), Fault> {
    let b = b.get(..end).unwrap_or_default();
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let Some(&x) = b.get(pos) else {
            return Err(Fault::Short(s));
        };
        pos += 1;
        if shift == 63 && x > 1 {
            return Err(Fault::Overflow(s));
        }
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return Ok((v, pos));
        }
        shift += 7;
    }
}

/// Decodes a chunk payload of `count` records, appending them to `out`.
pub(crate) fn decode_payload(
    raw: &[u8],
    count: u32,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let (body, streams) = split_streams(raw, count)?;
    // `split_streams` bounded `count` by the payload size.
    out.reserve(count as usize);
    let before = out.len();
    let mut sink = SliceSink {
        spare: out.spare_capacity_mut(),
        n: 0,
    };
    let r = decode_streams(body, streams, count, &mut sink);
    let len = before + sink.n;
    // SAFETY: the sink wrote `sink.n` records, in order, into the first `sink.n` slots
    // of the spare capacity after `before` (it counts a slot only once it is written),
    // and nothing else touched the vector since.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len);
    }
    r
}

/// Writes records into a vector's spare capacity, in order.
struct SliceSink<'a> {
    spare: &'a mut [std::mem::MaybeUninit<Record>],
    /// Slots written.
    n: usize,
}

impl Sink for SliceSink<'_> {
    #[inline(always)]
    fn push(&mut self, rec: Record) {
        self.push_with(|| rec);
    }

    #[inline(always)]
    fn push_with(&mut self, f: impl FnOnce() -> Record) {
        // The spare capacity holds at least `count` slots and the decoder pushes at
        // most `count` records, so this always finds a slot.
        if let Some(slot) = self.spare.get_mut(self.n) {
            slot.write(f());
            self.n += 1;
        }
    }
}

/// Where decoded records go.
pub(crate) trait Sink {
    /// Takes the next record.
    fn push(&mut self, rec: Record);
    /// Takes the next record, built by `f` (so it can be built in place).
    #[inline(always)]
    fn push_with(&mut self, f: impl FnOnce() -> Record) {
        self.push(f());
    }
}

/// A [`Sink`] that calls a function.
pub(crate) struct FnSink<F>(pub(crate) F);

impl<F: FnMut(Record)> Sink for FnSink<F> {
    #[inline(always)]
    fn push(&mut self, rec: Record) {
        (self.0)(rec);
    }
}

/// Checks the stream length prefix and the record count; returns the streams.
fn split_streams(raw: &[u8], count: u32) -> Result<(&[u8], [&[u8]; STREAMS]), DecodeError> {
    let err = |what: String| DecodeError { record: 0, what };
    let mut pos = 0;
    let mut lens = [0usize; STREAMS];
    for len in &mut lens {
        let (v, p) = var_slow(raw, raw.len(), pos, S_TAG)
            .map_err(|_| err("stream length prefix is cut short".into()))?;
        pos = p;
        *len = usize::try_from(v)
            .ok()
            .filter(|&l| l <= raw.len())
            .ok_or_else(|| err(format!("stream length {v} is over the payload size")))?;
    }
    let body = &raw[pos..];
    let total: usize = lens.iter().sum();
    if total != body.len() {
        return Err(err(format!(
            "streams add up to {total} bytes but {} follow the prefix",
            body.len()
        )));
    }
    if lens[S_TAG] != count as usize {
        return Err(err(format!(
            "chunk header says {count} records but the tag stream holds {}",
            lens[S_TAG]
        )));
    }
    // Every record takes at least MIN_RECORD_BYTES of payload, which bounds `count` (and
    // so what a caller reserves for the records) by the payload size.
    if (count as usize).saturating_mul(MIN_RECORD_BYTES) > raw.len() {
        return Err(err(format!(
            "{count} records cannot fit in {} payload bytes",
            raw.len()
        )));
    }
    let mut at = 0;
    let streams = std::array::from_fn(|i| {
        let s = &body[at..at + lens[i]];
        at += lens[i];
        s
    });
    Ok((body, streams))
}

/// Reads of the allocator event streams, through checked cursors ([`Hot`]) or, in the
/// batches of the fast path, unchecked ones ([`Fast`]). Every read returns the value
/// of the stream's bytes at the cursor and moves the cursor past them.
trait Reads {
    /// One byte.
    fn byte(&mut self, s: usize) -> Result<u8, Fault>;
    /// A little-endian `u16`.
    fn u16(&mut self, s: usize) -> Result<u16, Fault>;
    /// A prefix varint.
    fn var(&mut self, s: usize) -> Result<u64, Fault>;
    /// A prefix varint that is usually one byte long.
    fn var1(&mut self, s: usize) -> Result<u64, Fault>;
    /// A prefix varint if `cond`; otherwise nothing is read and the value is `or`.
    fn var_or(&mut self, cond: bool, s: usize, or: u64) -> Result<u64, Fault>;
    /// Whether the next byte is `b` (then it is read; otherwise nothing is).
    fn skip(&mut self, s: usize, b: u8) -> bool;
}

/// The cursors of the streams the hot loop reads. Positions are offsets in the body of
/// the payload (all streams back to back); stream `s` is read through `b[s]`, the body
/// up to the end of stream `s`, so that one comparison bounds a read. (All the slices
/// share one base pointer, and a read of eight bytes may look into earlier streams'
/// bytes only if the cursor went back, which it never does.)
#[derive(Clone, Copy)]
struct Hot<'a> {
    b: [&'a [u8]; STREAMS],
    pos: [usize; STREAMS],
}

impl Hot<'_> {
    /// The eight bytes at `p` in stream `s`, if the stream holds them.
    #[inline(always)]
    fn word(&self, s: usize, p: usize) -> Option<u64> {
        self.b[s]
            .get(p..)
            .and_then(|t| t.first_chunk::<8>())
            .map(|w| u64::from_le_bytes(*w))
    }

    /// The slow path of the prefix varint readers: within the stream, near its end
    /// or for nine-byte values. (The cursor is passed by value: a reference to it would
    /// keep it in memory.)
    #[inline(always)]
    fn pv_slow(&self, s: usize) -> Result<(u64, usize), Fault> {
        pv_slow(self.b[s], self.pos[s], s)
    }
}

impl Reads for Hot<'_> {
    #[inline(always)]
    fn byte(&mut self, s: usize) -> Result<u8, Fault> {
        let p = self.pos[s];
        match self.b[s].get(p) {
            Some(&b) => {
                self.pos[s] = p + 1;
                Ok(b)
            }
            None => Err(Fault::Short(s)),
        }
    }

    /// Reads a little-endian `u16`.
    #[inline(always)]
    fn u16(&mut self, s: usize) -> Result<u16, Fault> {
        let p = self.pos[s];
        match self.b[s].get(p..).and_then(|t| t.first_chunk::<2>()) {
            Some(w) => {
                self.pos[s] = p + 2;
                Ok(u16::from_le_bytes(*w))
            }
            None => Err(Fault::Short(s)),
        }
    }

    /// Reads a prefix varint. The common case (at most eight bytes long, eight bytes
    /// left in the stream) is a load, a trailing-zero count, a shift and a mask.
    #[inline(always)]
    fn var(&mut self, s: usize) -> Result<u64, Fault> {
        let p = self.pos[s];
        if let Some(w) = self.word(s, p) {
            if w & 0xff != 0 {
                let (x, n) = pv_word(w);
                self.pos[s] = p + n;
                return Ok(x);
            }
        }
        let (x, p) = self.pv_slow(s)?;
        self.pos[s] = p;
        Ok(x)
    }

    /// Reads a prefix varint that is usually one byte long (a branch that predicts
    /// well there, cheaper than the general decoding).
    #[inline(always)]
    fn var1(&mut self, s: usize) -> Result<u64, Fault> {
        let p = self.pos[s];
        if let Some(&b) = self.b[s].get(p) {
            if b & 1 != 0 {
                self.pos[s] = p + 1;
                return Ok(u64::from(b >> 1));
            }
        }
        self.var(s)
    }

    /// Reads a prefix varint if `cond`; otherwise reads nothing and returns `or`.
    /// The common case has no branch on `cond`: the varint is decoded either way and
    /// the cursor moves by its length or by nothing.
    #[inline(always)]
    fn var_or(&mut self, cond: bool, s: usize, or: u64) -> Result<u64, Fault> {
        let p = self.pos[s];
        if let Some(w) = self.word(s, p) {
            if w & 0xff != 0 {
                let (x, n) = pv_word(w);
                self.pos[s] = p + (n & usize::from(cond).wrapping_neg());
                return Ok(if cond { x } else { or });
            }
        }
        if cond {
            let (x, p) = self.pv_slow(s)?;
            self.pos[s] = p;
            Ok(x)
        } else {
            Ok(or)
        }
    }

    #[inline(always)]
    fn skip(&mut self, s: usize, b: u8) -> bool {
        let p = self.pos[s];
        let hit = self.b[s].get(p) == Some(&b);
        if hit {
            self.pos[s] = p + 1;
        }
        hit
    }
}

/// Records per batch of the fast decoder: its cursors are checked against their
/// streams' ends once per batch, not at every read.
const BATCH: usize = 64;
/// The most bytes one record moves one cursor by: an aligned allocation reads two
/// prefix varints (at most nine bytes each) from the size stream, and no record reads
/// more from any stream.
const MAX_ADVANCE: usize = 18;
/// Readable bytes the fast decoder needs after a payload's last byte (see [`Fast`]).
pub(crate) const DECODE_PAD: usize = BATCH * MAX_ADVANCE;

/// The fast decoder's cursors: offsets into `mem`, read without bound checks.
///
/// Invariant, kept by [`decode_fast`] (the only code that makes a `Fast`): `mem` is the
/// payload body followed by at least [`DECODE_PAD`] more bytes; before each batch of at
/// most [`BATCH`] records, every cursor is checked to be at most its stream's end, so
/// at most the body's length; a record moves a cursor by at most [`MAX_ADVANCE`] bytes
/// (at most two reads of one stream, each of at most nine bytes), and a read touches
/// only the nine bytes from its cursor (an eight-byte load at the cursor, or at the
/// cursor plus one for the nine-byte form). So a read in the `k`-th record of a batch
/// (`k < BATCH`) touches bytes below `body + k * MAX_ADVANCE + 9 + 9 <= body +
/// BATCH * MAX_ADVANCE <= mem.len()`. Bytes read past a stream's end (into the next
/// stream or the padding) are harmless to memory; they make the cursor pass the
/// stream's end, which the next check (or the final one) turns into a failure. (The
/// hot loop reads the low timestamp byte of its `k`-th record at the position the
/// cursor checked before the batch plus `k`, below `body + BATCH`: where the cursor
/// stands for that record, since each record before it in the batch read one byte.)
#[derive(Clone, Copy)]
struct Fast<'a> {
    mem: &'a [u8],
    pos: [usize; STREAMS],
}

impl Fast<'_> {
    /// The eight bytes at `p`, little-endian.
    #[inline(always)]
    fn word_at(&self, p: usize) -> u64 {
        debug_assert!(p + 8 <= self.mem.len());
        // SAFETY: `p` is a cursor, or a cursor plus one, of a read in a batch, so the
        // eight bytes at `p` are inside `mem` (the invariant of `Fast`).
        #[allow(unsafe_code)]
        let w = unsafe { std::ptr::read_unaligned(self.mem.as_ptr().add(p).cast::<u64>()) };
        u64::from_le(w)
    }

    /// The byte at `p`.
    #[inline(always)]
    fn byte_at(&self, p: usize) -> u8 {
        debug_assert!(p < self.mem.len());
        // SAFETY: `p` is a cursor of a read in a batch (or the low timestamp byte's
        // position computed from the record's index in its batch, below `body +
        // BATCH`): inside `mem` (the invariant of `Fast`).
        #[allow(unsafe_code)]
        unsafe {
            *self.mem.get_unchecked(p)
        }
    }
}

impl Reads for Fast<'_> {
    #[inline(always)]
    fn byte(&mut self, s: usize) -> Result<u8, Fault> {
        let p = self.pos[s];
        self.pos[s] = p + 1;
        Ok(self.byte_at(p))
    }

    #[inline(always)]
    fn u16(&mut self, s: usize) -> Result<u16, Fault> {
        let p = self.pos[s];
        self.pos[s] = p + 2;
        Ok(self.word_at(p) as u16)
    }

    #[inline(always)]
    fn var(&mut self, s: usize) -> Result<u64, Fault> {
        let p = self.pos[s];
        let w = self.word_at(p);
        if w & 0xff != 0 {
            let (x, n) = pv_word(w);
            self.pos[s] = p + n;
            Ok(x)
        } else {
            cold();
            self.pos[s] = p + 9;
            Ok(self.word_at(p + 1))
        }
    }

    #[inline(always)]
    fn var1(&mut self, s: usize) -> Result<u64, Fault> {
        let p = self.pos[s];
        let b = self.byte_at(p);
        if b & 1 != 0 {
            self.pos[s] = p + 1;
            return Ok(u64::from(b >> 1));
        }
        cold();
        self.var(s)
    }

    #[inline(always)]
    fn var_or(&mut self, cond: bool, s: usize, or: u64) -> Result<u64, Fault> {
        let p = self.pos[s];
        let w = self.word_at(p);
        if w & 0xff != 0 {
            let (x, n) = pv_word(w);
            self.pos[s] = p + (n & usize::from(cond).wrapping_neg());
            Ok(if cond { x } else { or })
        } else if cond {
            cold();
            self.pos[s] = p + 9;
            Ok(self.word_at(p + 1))
        } else {
            Ok(or)
        }
    }

    #[inline(always)]
    fn skip(&mut self, s: usize, b: u8) -> bool {
        let p = self.pos[s];
        let hit = self.byte_at(p) == b;
        self.pos[s] = p + usize::from(hit);
        hit
    }
}

/// The streams the event decoders read (through [`Reads`]).
const EVENT_STREAMS: [usize; 9] = [
    S_TS_LO, S_TS_HI, S_TID, S_STACK, S_SIZE, S_ADDR, S_BIN, S_LIVE, S_FUNC,
];

/// Where the fast decoder puts records, a batch at a time: `window(i, n)` gives the
/// places of records `i..i + n` (record `i + k` is written to `window[k]`, once),
/// `commit(i)` says that records `..i` are valid (decoded from their streams' bytes
/// only, as the checked decoder would) and `stop(i)` that decoding ended with records
/// `..i` written; records after the last commit may come from damaged data.
trait FastOut {
    /// Whether there is room for `count` records.
    fn holds(&self, count: usize) -> bool;
    /// The places of records `i..i + n`, `n` of them: `i` is the last commit, `n` is
    /// at most [`BATCH`] and `i + n` at most the count `holds` accepted.
    fn window(&mut self, i: usize, n: usize) -> &mut [MaybeUninit<Record>];
    /// Records `..i` are valid; every one of them has been written.
    fn commit(&mut self, i: usize);
    /// Decoding stopped: records `..i` (at least the last commit) have been written,
    /// and no more will be.
    fn stop(&mut self, i: usize);
}

/// The spare capacity of a vector (record `i` in slot `i`); commits cost nothing.
struct SpareOut<'a>(&'a mut [MaybeUninit<Record>]);

impl FastOut for SpareOut<'_> {
    #[inline(always)]
    fn holds(&self, count: usize) -> bool {
        self.0.len() >= count
    }

    #[inline(always)]
    fn window(&mut self, i: usize, n: usize) -> &mut [MaybeUninit<Record>] {
        &mut self.0[i..i + n]
    }

    #[inline(always)]
    fn commit(&mut self, _: usize) {}

    #[inline(always)]
    fn stop(&mut self, _: usize) {}
}

/// Records held back until they are committed, then handed to a function (so that
/// it never sees a record decoded from damaged data).
struct HeldOut<F: FnMut(Record)> {
    buf: [MaybeUninit<Record>; BATCH],
    /// Record `start + k` is in `buf[k]`; records before `start` were handed on.
    start: usize,
    /// `buf[taken..written]` are initialized and not handed on yet (`buf[..taken]`
    /// were moved out). Kept up to date only while records are handed on and once
    /// decoding stops: in between, only the drop reads them, and a record written
    /// but not counted would only be leaked (a leak is safe, a drop of an
    /// uninitialized record is not).
    taken: usize,
    written: usize,
    f: F,
}

impl<F: FnMut(Record)> HeldOut<F> {
    fn new(f: F) -> Self {
        HeldOut {
            buf: [const { MaybeUninit::uninit() }; BATCH],
            start: 0,
            taken: 0,
            written: 0,
            f,
        }
    }

    /// Hands on `buf[..n]` (all initialized), out of the decoding loop: there the
    /// call of `f` can be inlined.
    #[inline(never)]
    fn hand_on(&mut self, n: usize) {
        self.written = n;
        while self.taken < n {
            let k = self.taken;
            // Counted as moved out before the call, so that if `f` panics, the drop
            // of `self` does not drop it again.
            self.taken = k + 1;
            // SAFETY: `k < n == written` and `k >= taken` (before the increment):
            // the slot is initialized and not moved out yet.
            #[allow(unsafe_code)]
            let rec = unsafe { self.buf[k].assume_init_read() };
            (self.f)(rec);
        }
    }
}

impl<F: FnMut(Record)> FastOut for HeldOut<F> {
    #[inline(always)]
    fn holds(&self, _: usize) -> bool {
        true
    }

    #[inline(always)]
    fn window(&mut self, _: usize, n: usize) -> &mut [MaybeUninit<Record>] {
        &mut self.buf[..n]
    }

    #[inline(always)]
    fn commit(&mut self, i: usize) {
        // Records `start..i` are in `buf[..i - start]`, all written (`i - start` is
        // at most BATCH: the window's length).
        let n = (i - self.start).min(BATCH);
        if n > 0 {
            self.hand_on(n);
        }
        self.start = i;
        self.taken = 0;
        self.written = 0;
    }

    #[inline(always)]
    fn stop(&mut self, i: usize) {
        // Records `start..i`, written since the last commit (which handed on all
        // before `start`), are in `buf[..i - start]`: the drop drops them.
        self.taken = 0;
        self.written = (i - self.start).min(BATCH);
    }
}

impl<F: FnMut(Record)> Drop for HeldOut<F> {
    fn drop(&mut self) {
        for slot in &mut self.buf[self.taken..self.written] {
            // SAFETY: `buf[taken..written]` are initialized and were not moved out.
            #[allow(unsafe_code)]
            unsafe {
                slot.assume_init_drop();
            }
        }
    }
}

/// Marks the path that calls it as rarely taken (for block placement and register
/// allocation). `#[inline]`, so that every codegen unit sees it is empty and drops
/// the call: a copy in another unit than its caller was a real (indirect) call.
#[cold]
#[inline]
fn cold() {}

/// Why the hot loop of [`decode_fast`] stopped.
enum Stop {
    /// The end of the batch.
    End,
    /// A record other than an allocation or a free.
    Rare,
    /// Damaged data.
    Fault,
}

/// Decodes the streams of a chunk like [`decode_streams`], reading the event streams
/// through [`Fast`] cursors: `mem` is the body of the payload (its streams back to
/// back, `body_len` bytes) followed by at least [`DECODE_PAD`] bytes. Records go to
/// `out`, a batch at a time. On failure, returns the number of records written
/// (decoded from damaged data, so to be discarded; the checked decoder must run for
/// the error).
#[inline(always)]
fn decode_fast(
    mem: &[u8],
    body_len: usize,
    s: [&[u8]; STREAMS],
    out: &mut impl FastOut,
) -> Result<(), usize> {
    if mem.len() < body_len.saturating_add(DECODE_PAD) {
        return Err(0);
    }
    let mut c = Fast {
        mem,
        pos: [0; STREAMS],
    };
    let mut end = [0; STREAMS];
    let mut at = 0;
    for (i, stream) in s.iter().enumerate() {
        c.pos[i] = at;
        at += stream.len();
        end[i] = at;
    }
    if at != body_len {
        return Err(0);
    }
    let mut node = Cur {
        b: s[S_NODE],
        pos: 0,
    };
    let mut other = Cur {
        b: s[S_OTHER],
        pos: 0,
    };
    let mut m = Model::new();
    let tags = s[S_TAG];
    if !out.holds(tags.len()) {
        return Err(0);
    }
    let mut i = 0;
    let r = loop {
        if i >= tags.len() {
            break Ok(());
        }
        // The check that keeps `Fast`'s invariant: every cursor at most its stream's
        // end. (Cursors never move back, so this also proves that every record so far
        // read its own streams' bytes only.)
        if EVENT_STREAMS.iter().any(|&k| c.pos[k] > end[k]) {
            break Err(i);
        }
        out.commit(i);
        let batch = &tags[i..tags.len().min(i + BATCH)];
        let n = batch.len();
        let Some(win) = out.window(i, n).get_mut(..n) else {
            break Err(i);
        };
        // Allocations and frees read one byte each of the low timestamp bytes, in
        // record order: the `k`-th record of the batch reads the byte at `lo + k`
        // (a cursor of the batch, read through the record index so that the loop
        // keeps one index fewer), and the rare record that may end the batch reads
        // from there on.
        let lo = c.pos[S_TS_LO];
        // The hot loop: allocations and frees, with no calls. Record `i + k`.
        let mut k = 0;
        let stopped = loop {
            if k >= n {
                break Stop::End;
            }
            let tag = batch[k];
            let slot = &mut win[k];
            let kind = tag & KIND_MASK;
            let put = |rec| {
                slot.write(rec);
            };
            let ts_lo = c.byte_at(lo + k);
            let r = if kind == K_FREE {
                decode_free(&mut m, &mut c, tag, ts_lo, put)
            } else if kind & !1 == K_ALLOC {
                decode_alloc(&mut m, &mut c, tag, ts_lo, put)
            } else {
                break Stop::Rare;
            };
            if r.is_err() {
                cold();
                break Stop::Fault;
            }
            k += 1;
        };
        c.pos[S_TS_LO] = lo + k;
        if let Stop::Rare = stopped {
            // Any other record, out of line, on a copy of the cursors; it is the last
            // record of this batch.
            let (Some(&tag), Some(slot)) = (batch.get(k), win.get_mut(k)) else {
                break Err(i + k);
            };
            let mut c2 = c;
            let r = decode_rare(&mut m, &mut c2, &mut node, &mut other, tag);
            c = c2;
            let Ok(rec) = r else {
                break Err(i + k);
            };
            slot.write(rec);
            k += 1;
        }
        i += k;
        if let Stop::Fault = stopped {
            break Err(i);
        }
    };
    if r.is_ok() && EVENT_STREAMS.iter().all(|&k| c.pos[k] <= end[k]) {
        out.commit(i);
    } else {
        out.stop(i);
    }
    match r {
        Ok(())
            if EVENT_STREAMS.iter().all(|&k| c.pos[k] == end[k])
                && node.pos == node.b.len()
                && other.pos == other.b.len() =>
        {
            Ok(())
        }
        _ => Err(i),
    }
}

/// Decodes a chunk payload of `count` records, `buf[..len]`, handing each to `f` in
/// order; on error, `f` has seen the records before the damaged one. When `buf` holds
/// at least [`DECODE_PAD`] bytes after the payload, the fast decoder runs first,
/// holding records back until their batch is checked (so `f` never sees a record the
/// checked decoder would not produce); if it fails, the checked decoder runs again for
/// the error, skipping the records already handed on.
pub(crate) fn decode_payload_each(
    buf: &[u8],
    len: usize,
    count: u32,
    mut f: impl FnMut(Record),
) -> Result<(), DecodeError> {
    let Some(raw) = buf.get(..len) else {
        return Err(DecodeError {
            record: 0,
            what: "payload length over the buffer".into(),
        });
    };
    let (body, streams) = split_streams(raw, count)?;
    let mem = &buf[len - body.len()..];
    let mut handed = 0;
    if mem.len() >= body.len() + DECODE_PAD {
        let mut out = HeldOut::new(&mut f);
        if decode_fast(mem, body.len(), streams, &mut out).is_ok() {
            return Ok(());
        }
        handed = out.start;
    }
    let mut n = 0;
    let mut sink = FnSink(|rec| {
        if n < handed {
            n += 1;
        } else {
            f(rec);
        }
    });
    decode_streams(body, streams, count, &mut sink)
}

/// Decodes a chunk payload of `count` records, `buf[..len]`, appending them to `out`
/// (left as it was on error). When `buf` holds at least [`DECODE_PAD`] bytes after the
/// payload, the fast decoder runs first; the checked one only when it fails (for the
/// error, which is the same either way).
pub(crate) fn decode_payload_padded(
    buf: &[u8],
    len: usize,
    count: u32,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let Some(raw) = buf.get(..len) else {
        return Err(DecodeError {
            record: 0,
            what: "payload length over the buffer".into(),
        });
    };
    let (body, streams) = split_streams(raw, count)?;
    let mem = &buf[len - body.len()..];
    if mem.len() >= body.len() + DECODE_PAD {
        // `split_streams` bounded `count` by the payload size.
        out.reserve(count as usize);
        let before = out.len();
        let r = decode_fast(
            mem,
            body.len(),
            streams,
            &mut SpareOut(out.spare_capacity_mut()),
        );
        let done = match r {
            Ok(()) => count as usize,
            Err(n) => n,
        };
        let len = before + done;
        // SAFETY: `decode_fast` wrote records into the first `done` slots of the spare
        // capacity after `before` (it counts a record only once it is written), and
        // nothing else touched the vector since.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(len);
        }
        if r.is_ok() {
            return Ok(());
        }
        // Damaged: drop what was decoded, and decode again for the error.
        out.truncate(before);
    }
    decode_payload(raw, count, out)
}

/// Decodes the prefix varint at the start of `w` (eight bytes, little-endian, first
/// byte not zero): returns the value and its length (1 to 8).
#[inline(always)]
fn pv_word(w: u64) -> (u64, usize) {
    // `w` is not 0 (its first byte is not), which the compiler sees from the callers'
    // checks: the count then needs no special case for 0.
    let n = match std::num::NonZeroU64::new(w) {
        Some(w) => w.trailing_zeros() as usize + 1,
        None => 65,
    };
    let x = (w >> n) & (u64::MAX >> (64 - 7 * n));
    (x, n)
}

/// Prefix varint decoding at `b[pos..]` when fewer than eight bytes are left or the
/// value takes nine bytes. Returns the value and the position after it.
#[inline(never)]
fn pv_slow(b: &[u8], pos: usize, s: usize) -> Result<(u64, usize), Fault> {
    let rest = b.get(pos..).unwrap_or_default();
    let Some(&first) = rest.first() else {
        return Err(Fault::Short(s));
    };
    let n = if first == 0 {
        9
    } else {
        first.trailing_zeros() as usize + 1
    };
    let Some(bytes) = rest.get(..n) else {
        return Err(Fault::Short(s));
    };
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |x, &b| x << 8 | u64::from(b));
    let x = match bytes.split_first() {
        Some((0, value)) => le(value),
        _ => (le(bytes) >> n) & (u64::MAX >> (64 - 7 * n)),
    };
    Ok((x, pos + n))
}

/// Decodes the streams of a chunk of `count` records, handing each to `sink` in order.
#[inline(always)]
fn decode_streams(
    body: &[u8],
    s: [&[u8]; STREAMS],
    count: u32,
    sink: &mut impl Sink,
) -> Result<(), DecodeError> {
    let cur = |i: usize| Cur { b: s[i], pos: 0 };
    let mut c = Hot {
        b: [&[]; STREAMS],
        pos: [0; STREAMS],
    };
    let mut at = 0;
    for (i, stream) in s.iter().enumerate() {
        c.pos[i] = at;
        at += stream.len();
        c.b[i] = body.get(..at).unwrap_or_default();
    }
    let mut node = cur(S_NODE);
    let mut other = cur(S_OTHER);
    let mut m = Model::new();
    let tags = s[S_TAG];
    let mut i = 0;
    let r = loop {
        // The hot loop: allocations and frees, with no calls (so that the cursors and
        // the model's scalars can stay in registers). It stops at any other record.
        let fault = loop {
            // `split_streams` checked that the tag stream holds `count` bytes.
            let Some(&tag) = tags.get(i) else {
                break None;
            };
            let kind = tag & KIND_MASK;
            let put = |rec| sink.push(rec);
            let r = if kind == K_FREE {
                c.byte(S_TS_LO)
                    .and_then(|lo| decode_free(&mut m, &mut c, tag, lo, put))
            } else if kind & !1 == K_ALLOC {
                c.byte(S_TS_LO)
                    .and_then(|lo| decode_alloc(&mut m, &mut c, tag, lo, put))
            } else {
                break None;
            };
            if let Err(f) = r {
                break Some(f);
            }
            i += 1;
        };
        if let Some(f) = fault {
            break Err((i, f));
        }
        let Some(&tag) = tags.get(i) else {
            break Ok(());
        };
        // A copy of the cursors goes out of line, so that their address is never taken.
        let mut c2 = c;
        let r = decode_rare(&mut m, &mut c2, &mut node, &mut other, tag);
        c = c2;
        match r {
            Ok(rec) => {
                sink.push(rec);
                i += 1;
            }
            Err(Rare::Fault(f)) => break Err((i, f)),
            Err(Rare::Text(what)) => {
                return Err(DecodeError {
                    record: i as u32,
                    what,
                })
            }
        }
    };
    if let Err((i, f)) = r {
        return Err(DecodeError {
            record: i as u32,
            what: f.message(&m),
        });
    }
    debug_assert_eq!(i, count as usize);
    let ends = [
        S_TS_LO, S_TS_HI, S_TID, S_STACK, S_SIZE, S_ADDR, S_BIN, S_LIVE, S_FUNC,
    ]
    .map(|i| (i, c.b[i].len() - c.pos[i]))
    .into_iter()
    .chain([
        (S_NODE, node.b.len() - node.pos),
        (S_OTHER, other.b.len() - other.pos),
    ]);
    for (s, left) in ends {
        if left != 0 {
            return Err(DecodeError {
                record: count,
                what: format!(
                    "{left} bytes left in the {} stream after the last record",
                    STREAM_NAMES[s]
                ),
            });
        }
    }
    Ok(())
}

/// Why a rare record does not decode.
enum Rare {
    Fault(Fault),
    Text(String),
}

/// Decodes a record that is neither an allocation nor a free (out of the hot loop).
#[inline(never)]
fn decode_rare(
    m: &mut Model,
    c: &mut impl Reads,
    node: &mut Cur<'_>,
    other: &mut Cur<'_>,
    tag: u8,
) -> Result<Record, Rare> {
    let kind = tag & KIND_MASK;
    if kind == K_REALLOC {
        let mut rec = None;
        decode_realloc(m, c, tag, |r| rec = Some(r)).map_err(Rare::Fault)?;
        // `decode_realloc` calls `put` exactly once when it succeeds.
        rec.ok_or(Rare::Fault(Fault::Msg("realloc without a record")))
    } else if kind == K_NODE {
        decode_node(m, node, tag).map_err(Rare::Fault)
    } else if kind == K_OTHER {
        decode_other(m, other).map_err(Rare::Text)
    } else {
        Err(Rare::Fault(Fault::Kind(kind)))
    }
}

#[inline(always)]
fn decode_func(b: u8) -> Result<AllocFn, Fault> {
    match AllocFn::ALL.get(b as usize) {
        Some(&f) => Ok(f),
        None => Err(Fault::Func(b)),
    }
}

/// The timestamp, from its low byte `lo` (read by the caller) and its high part.
#[inline(always)]
fn decode_ts(m: &mut Model, c: &mut impl Reads, lo: u8) -> Result<u64, Fault> {
    let hi = c.var1(S_TS_HI)?;
    m.ts = undelta(m.ts, hi << 8 | u64::from(lo));
    Ok(m.ts)
}

/// The thread: a delta in the thread stream when `F_TID` is set (rarely: a branch).
#[inline(always)]
fn decode_tid(m: &mut Model, c: &mut impl Reads, tag: u8) -> Result<u32, Fault> {
    if tag & F_TID != 0 {
        cold();
        let tid = undelta(u64::from(m.tid), c.var1(S_TID)?);
        m.tid = u32::try_from(tid).map_err(|_| Fault::Range("thread id", tid))?;
    }
    Ok(m.tid)
}

#[inline(always)]
fn decode_stack(c: &mut impl Reads) -> Result<StackId, Fault> {
    let stack = c.var(S_STACK)?;
    StackId::try_from(stack).map_err(|_| Fault::Range("stack id", stack))
}

/// Decodes the function and the size of an allocation at `stack`, and updates the
/// stack's slot. Stored and predicted sizes are selected without branches.
#[inline(always)]
fn decode_func_size(
    m: &mut Model,
    c: &mut impl Reads,
    tag: u8,
    stack: StackId,
) -> Result<(AllocFn, u64), Fault> {
    let key = u64::from(stack) + 1;
    let slot = m.slot(stack);
    let old = *slot;
    let hit = old.key == key;
    let f_func = tag & F_FUNC != 0;
    let f_size = tag & F_SIZE != 0;
    // Whether the size is stored is not predictable (about 2 in 3 here): no branch.
    let size = c.var_or(f_size, S_SIZE, old.size)?;
    let func = if f_func {
        cold();
        decode_func(c.byte(S_FUNC)?)?
    } else if hit {
        old.func
    } else {
        return Err(Fault::Msg("function predicted from an unseen stack"));
    };
    if !hit & !f_size {
        return Err(Fault::Msg("size predicted from an unseen stack"));
    }
    // A hit (the common case) keeps the key and the free stack.
    if hit {
        slot.size = size;
        slot.func = func;
    } else {
        *slot = Slot {
            key,
            size,
            free_key: 0,
            func,
        };
    }
    Ok((func, size))
}

/// Decodes the function of a free at `stack`, and updates the stack's slot (a hit
/// keeps its size, a miss clears it).
#[inline(always)]
fn decode_free_func(
    m: &mut Model,
    c: &mut impl Reads,
    tag: u8,
    stack: StackId,
) -> Result<AllocFn, Fault> {
    let key = u64::from(stack) + 1;
    let slot = m.slot(stack);
    let old = *slot;
    let hit = old.key == key;
    let func = if tag & F_FUNC != 0 {
        cold();
        decode_func(c.byte(S_FUNC)?)?
    } else if hit {
        old.func
    } else {
        return Err(Fault::Msg("function predicted from an unseen stack"));
    };
    // A hit (the common case) keeps everything but the function.
    if hit {
        slot.func = func;
    } else {
        *slot = Slot {
            key,
            size: 0,
            free_key: 0,
            func,
        };
    }
    Ok(func)
}

/// Decodes a released address; returns it and, for a live block, the block.
#[inline(always)]
fn decode_released(
    m: &mut Model,
    c: &mut impl Reads,
    mode: u8,
) -> Result<(u64, Option<Live>), Fault> {
    if mode == R_LIVE {
        let v = u64::from(c.u16(S_LIVE)?);
        match m.take_live(v) {
            Some(b) => Ok((b.addr, Some(b))),
            None => Err(Fault::Slot(v)),
        }
    } else if mode == R_DELTA {
        cold();
        Ok((undelta(m.addr, c.var(S_LIVE)?), None))
    } else if mode == A_ZERO {
        cold();
        Ok((0, None))
    } else {
        cold();
        Err(Fault::Msg("bump address mode on a release"))
    }
}

/// Decodes an allocation (kinds 2 and 3).
#[inline(always)]
fn decode_alloc(
    m: &mut Model,
    c: &mut impl Reads,
    tag: u8,
    lo: u8,
    put: impl FnOnce(Record),
) -> Result<(), Fault> {
    let mode = tag >> A_SHIFT;
    let ts = decode_ts(m, c, lo)?;
    let tid = decode_tid(m, c, tag)?;
    let stack = decode_stack(c)?;
    let (func, size) = decode_func_size(m, c, tag, stack)?;
    let align = if tag & KIND_MASK == K_ALIGNED {
        cold();
        c.var(S_SIZE)?
    } else {
        0
    };
    let bin = bin_of(size);
    // Most allocations reuse a freed block (BIN): plain branches predict well. Only
    // the DELTA and BUMP modes move the bump pointer (past a non-zero address, for a
    // size below BUMP_MAX_SIZE).
    let address = if mode == A_BIN {
        // Nearly always the newest block of the bin: depth 0, the one-byte varint 1.
        let (depth, a) = if c.skip(S_BIN, 1) {
            (0, m.t.bins[bin].take_newest())
        } else {
            cold();
            let depth = c.var1(S_BIN)?;
            (depth, m.t.bins[bin].take(depth))
        };
        match a {
            Some(a) => a,
            None => return Err(Fault::Bin(depth)),
        }
    } else if mode == A_DELTA || mode == A_BUMP {
        cold();
        let address = if mode == A_DELTA {
            undelta(m.bump, c.var(S_ADDR)?)
        } else {
            m.bump
        };
        if (address != 0) & (size < BUMP_MAX_SIZE) {
            m.bump = address.wrapping_add(bump_step(size));
        }
        address
    } else {
        cold();
        0
    };
    // The record is written before the model updates, so that the compiler does not
    // merge the stores of the two kinds of record into one (slower) sequence.
    put(Record::Alloc {
        ts,
        tid,
        func,
        address,
        size,
        align,
        stack,
    });
    if address != 0 {
        m.t.blocks.push(Live {
            addr: address,
            stack,
            bin: bin as u32,
        });
        m.addr = address;
    }
    Ok(())
}

#[inline(always)]
fn decode_free(
    m: &mut Model,
    c: &mut impl Reads,
    tag: u8,
    lo: u8,
    put: impl FnOnce(Record),
) -> Result<(), Fault> {
    let ts = decode_ts(m, c, lo)?;
    let tid = decode_tid(m, c, tag)?;
    let (address, block) = decode_released(m, c, tag >> A_SHIFT)?;
    let stack = if tag & F_STACK != 0 {
        cold();
        decode_stack(c)?
    } else {
        match block.and_then(|b| m.predicted_free_stack(b.stack)) {
            Some(s) => s,
            None => return Err(Fault::Msg("free stack predicted without a basis")),
        }
    };
    let func = decode_free_func(m, c, tag, stack)?;
    put(Record::Free {
        ts,
        tid,
        func,
        address,
        stack,
    });
    if let Some(b) = block {
        // A live block's address is not 0.
        m.addr = address;
        m.t.bins[b.bin as usize & (BINS - 1)].push(address);
        // A predicted stack was learnt already: the slot of `b.stack` holds it as its
        // free stack, and `decode_free_func` changed that slot at most by giving it
        // another key (a miss on a colliding stack), which the learning would skip.
        // So only a stored stack can teach anything (most frees here are predicted).
        if tag & F_STACK != 0 {
            m.learn_free_stack(b.stack, stack);
        }
    } else {
        m.addr = sel(address != 0, address, m.addr);
    }
    Ok(())
}

#[inline(always)]
fn decode_realloc(
    m: &mut Model,
    c: &mut impl Reads,
    tag: u8,
    put: impl FnOnce(Record),
) -> Result<(), Fault> {
    let lo = c.byte(S_TS_LO)?;
    let ts = decode_ts(m, c, lo)?;
    let tid = decode_tid(m, c, tag)?;
    let stack = decode_stack(c)?;
    let (func, size) = decode_func_size(m, c, tag, stack)?;
    let (old_address, block) = decode_released(m, c, tag >> A_SHIFT)?;
    let new_address = undelta(old_address, c.var(S_ADDR)?);
    if let Some(b) = block {
        if new_address != old_address {
            m.t.bins[b.bin as usize & (BINS - 1)].push(old_address);
        }
    }
    if new_address != 0 {
        m.push_live(new_address, size, stack);
        m.addr = new_address;
    } else if old_address != 0 {
        m.addr = old_address;
    }
    put(Record::Realloc {
        ts,
        tid,
        func,
        old_address,
        new_address,
        size,
        stack,
    });
    Ok(())
}

/// Decodes a stack node (rare after the first chunks: kept out of the hot loop).
#[inline(always)]
fn decode_node(m: &mut Model, node: &mut Cur<'_>, tag: u8) -> Result<Record, Fault> {
    let id = if tag & F_NEXT_ID != 0 {
        m.node_id.wrapping_add(1)
    } else {
        undelta(u64::from(m.node_id), node.var(S_NODE)?) as StackId
    };
    let up = node.var(S_NODE)?;
    let up = StackId::try_from(up).map_err(|_| Fault::Range("stack node parent distance", up))?;
    let address = undelta(m.node_addr, node.var(S_NODE)?);
    m.node_id = id;
    m.node_addr = address;
    Ok(Record::StackNode {
        id,
        parent: id.wrapping_sub(up),
        address,
    })
}

/// Decodes a rare record (postcard).
#[inline(always)]
fn decode_other(m: &mut Model, other: &mut Cur<'_>) -> Result<Record, String> {
    let (rec, rest) = postcard::take_from_bytes::<Record>(&other.b[other.pos..])
        .map_err(|e| format!("record does not decode: {e}"))?;
    other.pos = other.b.len() - rest.len();
    if let Some(ts) = rec.timestamp() {
        m.ts = ts;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(ts: u64, address: u64, size: u64, stack: StackId) -> Record {
        Record::Alloc {
            ts,
            tid: 7,
            func: AllocFn::Malloc,
            address,
            size,
            align: 0,
            stack,
        }
    }

    fn free(ts: u64, address: u64, stack: StackId) -> Record {
        Record::Free {
            ts,
            tid: 7,
            func: AllocFn::Free,
            address,
            stack,
        }
    }

    fn encode_all(recs: &[Record]) -> (Encoder, Vec<Record>) {
        let mut e = Encoder::new();
        for r in recs {
            e.encode(r, usize::MAX).expect("encode");
        }
        let count = e.records();
        let mut payload = Vec::new();
        let streams = Encoder {
            streams: e.streams.clone(),
            ..Encoder::new()
        };
        e.finish_into(&mut payload);
        let mut out = Vec::new();
        decode_payload(&payload, count, &mut out).expect("decode");
        (streams, out)
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        let mut values = vec![0, 1, 127, 128, 16383, 16384, u64::MAX, u64::MAX - 1];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        let mut buf = Vec::new();
        for &v in &values {
            put_var(&mut buf, v);
        }
        // Read once with the fast path (padding after), once byte by byte at the end.
        for pad in [0usize, 8] {
            let mut b = buf.clone();
            b.extend(std::iter::repeat_n(0x80, pad));
            let mut c = Cur { b: &b, pos: 0 };
            for &v in &values {
                assert_eq!(c.var(S_SIZE).ok(), Some(v));
            }
        }
        // An eleven-byte varint and one overflowing 64 bits are errors, not panics.
        let bad = [0xff; 11];
        assert!(Cur { b: &bad, pos: 0 }.var(S_SIZE).is_err());
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Cur { b: &over, pos: 0 }.var(S_SIZE).is_err());
    }

    #[test]
    fn prefix_varints_round_trip_at_every_length() {
        let mut values = vec![0, 1, 127, 128, 16383, 16384, u64::MAX, u64::MAX - 1];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        let mut buf = Vec::new();
        for &v in &values {
            put_pv(&mut buf, v);
        }
        // Read through the hot loop's cursor (word at a time while eight bytes are
        // left, then the slow path), and through the slow path alone.
        let mut c = Hot {
            b: [&buf[..]; STREAMS],
            pos: [0; STREAMS],
        };
        let mut pos = 0;
        for &v in &values {
            assert_eq!(c.var(S_SIZE).ok(), Some(v));
            let Ok((x, p)) = pv_slow(&buf, pos, S_SIZE) else {
                panic!("slow path fails at {pos}");
            };
            assert_eq!((x, p), (v, c.pos[S_SIZE]));
            pos = p;
        }
        assert_eq!(pos, buf.len());
        // Cut short: an error, not a panic.
        for cut in 0..9 {
            let b = &buf[buf.len() - 9..buf.len() - cut];
            if cut > 0 {
                assert!(pv_slow(b, 0, S_SIZE).is_err());
            }
        }
        assert!(pv_slow(&[0x04, 0], 0, S_SIZE).is_err());
    }

    #[test]
    fn bump_allocations_store_no_address() {
        // Fresh blocks laid out one after the other, as from a heap top.
        let mut recs = Vec::new();
        let mut a = 0x5555_5556_0010;
        for i in 0..100 {
            recs.push(alloc(i * 10, a, 40, 1));
            a += bump_step(40);
        }
        let (e, out) = encode_all(&recs);
        assert_eq!(out, recs);
        // Only the first address is stored; sizes and functions are predicted.
        assert!(e.streams[S_ADDR].len() <= 10, "{}", e.streams[S_ADDR].len());
        assert!(e.streams[S_SIZE].len() <= 1);
        assert_eq!(e.streams[S_FUNC].len(), 1);
    }

    #[test]
    fn lifo_frees_and_reuse_are_predicted() {
        let mut recs = Vec::new();
        for i in 0..50u64 {
            let a = 0x5555_5556_1000;
            recs.push(alloc(i * 100, a, 24, 3));
            recs.push(free(i * 100 + 50, a, 9));
        }
        let (e, out) = encode_all(&recs);
        assert_eq!(out, recs);
        // Every free names the block in slot 0 (two zero bytes each).
        assert!(e.streams[S_LIVE].iter().all(|&b| b == 0));
        // The free stack is learnt after the first free.
        assert_eq!(e.streams[S_STACK].len(), 50 + 1);
        // Reused blocks come from their size bin, at depth 0 (prefix varint 0: 0x01).
        assert!(e.streams[S_BIN].iter().all(|&b| b == 1));
        assert!(!e.streams[S_BIN].is_empty());
    }

    #[test]
    fn a_full_block_table_overwrites_cyclically() {
        // More live blocks than slots: the oldest are overwritten, and their frees
        // fall back to address deltas. Then free in an interleaved order.
        let n = BLOCKS as u64 + 1500;
        let mut recs = Vec::new();
        for i in 0..n {
            recs.push(alloc(i, 0x1000 + i * 0x40, 48, (i % 7) as StackId));
        }
        for i in (0..n)
            .step_by(3)
            .chain((1..n).step_by(3))
            .chain((2..n).step_by(3))
        {
            recs.push(free(n + i, 0x1000 + i * 0x40, 9));
            recs.push(alloc(2 * n + i, 0x9000_0000 + i * 0x40, 16, 3));
        }
        let (_, out) = encode_all(&recs);
        assert_eq!(out, recs);
    }

    /// A mixed stream: allocations (some aligned, some failing), frees (of live,
    /// unknown and null blocks), reallocs, stack nodes and rare records, over a few
    /// threads, with sizes up to nine-byte varints.
    fn mixed_records(n: usize, seed: u64) -> Vec<Record> {
        let mut x = seed;
        let mut rnd = move |k: u64| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % k
        };
        let mut recs = Vec::new();
        let mut live: Vec<(u64, StackId)> = Vec::new();
        let mut ts = 0u64;
        let mut top = 0x5555_0000_0000u64;
        for _ in 0..n {
            ts += 1 + rnd(3000);
            let tid = 100 + rnd(3) as u32;
            let stack = rnd(40) as StackId;
            match rnd(20) {
                0..=8 => {
                    let size = match rnd(10) {
                        0 => u64::MAX - rnd(5),
                        1..=2 => rnd(1 << 20),
                        _ => 16 * (1 + u64::from(stack) % 7),
                    };
                    let address = if rnd(50) == 0 { 0 } else { top };
                    top += (size & 0xffff) + 32;
                    if address != 0 {
                        live.push((address, stack));
                    }
                    recs.push(Record::Alloc {
                        ts,
                        tid,
                        func: AllocFn::ALL[rnd(14) as usize],
                        address,
                        size,
                        align: if rnd(10) == 0 { 1 << rnd(13) } else { 0 },
                        stack,
                    });
                }
                9..=16 => {
                    let address = match (live.len(), rnd(30)) {
                        (0, _) | (_, 0) => rnd(3) * 0x1234_5678,
                        (l, _) => live.swap_remove(rnd(l as u64) as usize).0,
                    };
                    recs.push(Record::Free {
                        ts,
                        tid,
                        func: AllocFn::Free,
                        address,
                        stack: stack + 100,
                    });
                }
                17 => {
                    let old_address = live.pop().map_or(0, |b| b.0);
                    let new_address = if rnd(4) == 0 { old_address } else { top };
                    top += 4096;
                    if new_address != 0 {
                        live.push((new_address, stack));
                    }
                    recs.push(Record::Realloc {
                        ts,
                        tid,
                        func: AllocFn::Realloc,
                        old_address,
                        new_address,
                        size: rnd(100_000),
                        stack,
                    });
                }
                18 => recs.push(Record::StackNode {
                    id: rnd(1000) as StackId,
                    parent: rnd(1000) as StackId,
                    address: 0x40_0000 + rnd(1 << 20),
                }),
                _ => recs.push(Record::ThreadExit { ts, tid }),
            }
        }
        recs
    }

    fn payload_of(recs: &[Record]) -> (Vec<u8>, u32) {
        let mut e = Encoder::new();
        for r in recs {
            e.encode(r, usize::MAX).expect("encode");
        }
        let count = e.records();
        let mut payload = Vec::new();
        e.finish_into(&mut payload);
        (payload, count)
    }

    /// Both decoders on one payload: the padded one (fast path first) and the checked
    /// one must agree on the records or on the error.
    fn both(payload: &[u8], count: u32) -> Result<Vec<Record>, (u32, String)> {
        let mut buf = payload.to_vec();
        buf.resize(payload.len() + DECODE_PAD, 0xff);
        let mut fast = vec![alloc(1, 2, 3, 4)];
        let f = decode_payload_padded(&buf, payload.len(), count, &mut fast);
        let mut checked = vec![alloc(1, 2, 3, 4)];
        let c = decode_payload(payload, count, &mut checked);
        // Handed on one at a time: the records before the error, then the error.
        let mut each = vec![alloc(1, 2, 3, 4)];
        let e = decode_payload_each(&buf, payload.len(), count, |r| each.push(r));
        assert_eq!(each, checked);
        assert_eq!(
            e.as_ref().map_err(|e| (e.record, &e.what)),
            c.as_ref().map_err(|e| (e.record, &e.what))
        );
        match (f, c) {
            (Ok(()), Ok(())) => {
                assert_eq!(fast, checked);
                Ok(fast.split_off(1))
            }
            (Err(f), Err(c)) => {
                assert_eq!((f.record, &f.what), (c.record, &c.what));
                assert_eq!(fast, checked);
                Err((f.record, f.what))
            }
            (f, c) => panic!("fast {f:?}, checked {c:?}"),
        }
    }

    /// A xorshift generator of numbers below its argument, from `seed`.
    fn below(seed: u64) -> impl FnMut(usize) -> usize {
        let mut x = seed;
        move |k: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % k as u64) as usize
        }
    }

    #[test]
    fn fast_and_checked_decoders_agree_on_damaged_payloads() {
        let recs = mixed_records(3000, 7);
        let (payload, count) = payload_of(&recs);
        assert_eq!(both(&payload, count).expect("decodes"), recs);
        let mut rnd = below(12345);
        let mut errors = 0;
        for round in 0..3000 {
            let mut p = payload.clone();
            let mut n = count;
            match round % 4 {
                // Bytes overwritten.
                0 | 1 => {
                    for _ in 0..1 + rnd(4) {
                        let i = rnd(p.len());
                        p[i] = rnd(256) as u8;
                    }
                }
                // Bytes removed or inserted (so that streams run short or long).
                2 => {
                    let i = rnd(p.len());
                    if rnd(2) == 0 {
                        p.remove(i);
                    } else {
                        p.insert(i, rnd(256) as u8);
                    }
                }
                // A wrong record count.
                _ => n = n.wrapping_add(rnd(5) as u32).wrapping_sub(2),
            }
            errors += usize::from(both(&p, n).is_err());
        }
        assert!(errors > 1000, "only {errors} damaged payloads failed");
    }

    #[test]
    fn size_bins_are_the_bump_step_over_16() {
        let sizes = (0..5000u64)
            .chain((0..64).map(|k| 1u64 << k))
            .chain((0..100).map(|k| u64::MAX - k));
        for size in sizes {
            assert_eq!(
                bin_of(size),
                (bump_step(size) >> 4) as usize & (BINS - 1),
                "{size}"
            );
        }
    }

    #[test]
    fn damaged_payloads_with_heap_records_agree_and_free_each_record_once() {
        // Records that own heap memory among the events, so that a record held back
        // by `decode_payload_each` and dropped twice (or a drop of a slot never
        // written) would be a double or invalid free (memcheck also reports leaks).
        let mut recs = mixed_records(2000, 11);
        for (k, i) in (0..recs.len()).step_by(37).enumerate().rev() {
            recs.insert(
                i,
                Record::ModuleUnload {
                    ts: recs[i].timestamp().unwrap_or(0),
                    pid: 7,
                    base: 0x1000 * k as u64,
                    path: format!("/lib/module-{k}.so"),
                },
            );
        }
        let (payload, count) = payload_of(&recs);
        assert_eq!(both(&payload, count).expect("decodes"), recs);
        let mut rnd = below(777);
        let mut errors = 0;
        for _ in 0..600 {
            let mut p = payload.clone();
            for _ in 0..1 + rnd(3) {
                let i = rnd(p.len());
                p[i] = rnd(256) as u8;
            }
            errors += usize::from(both(&p, count).is_err());
        }
        assert!(errors > 200, "only {errors} damaged payloads failed");
    }

    #[test]
    fn a_panicking_callback_drops_each_held_record_once() {
        // Records that own heap memory, so that a double drop would be a double free.
        // Batches of allocations, each closed by one of them.
        let recs: Vec<Record> = (0..300u64)
            .map(|i| {
                if i % 21 == 20 {
                    Record::ProcessStart {
                        ts: i,
                        pid: i as u32,
                        parent_pid: None,
                        origin: crate::record::ProcessOrigin::Launched,
                        command: vec![format!("command {i}")],
                    }
                } else {
                    alloc(i, 0x1000 + 64 * i, 40, 3)
                }
            })
            .collect();
        let (payload, count) = payload_of(&recs);
        let mut buf = payload.clone();
        buf.resize(payload.len() + DECODE_PAD, 0);
        for stop in [0, 1, 5, 20, 21, 22, 63, 64, 65, 200, 299] {
            let mut seen = 0;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode_payload_each(&buf, payload.len(), count, |rec| {
                    assert_eq!(rec, recs[seen]);
                    assert!(seen < stop, "stop");
                    seen += 1;
                })
            }));
            assert!(r.is_err());
            assert_eq!(seen, stop);
        }
    }

    #[test]
    fn wrong_predictions_are_errors_not_panics() {
        // A free whose stack is "predicted" with nothing to predict from.
        let tag = K_FREE | A_ZERO << A_SHIFT;
        let mut payload = Vec::new();
        // Timestamp low byte 0, high part 0 (prefix varint 0x01).
        let streams: [&[u8]; STREAMS] = [
            &[tag],
            &[0],
            &[1],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
        ];
        for s in &streams {
            put_var(&mut payload, s.len() as u64);
        }
        for s in &streams {
            payload.extend_from_slice(s);
        }
        let mut out = Vec::new();
        let e = decode_payload(&payload, 1, &mut out).expect_err("must fail");
        assert_eq!(e.record, 0);
        assert!(e.what.contains("predicted"), "{}", e.what);
    }
}
