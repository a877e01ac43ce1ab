//! The compact, column-oriented encoding of records inside one chunk.
//!
//! Allocator events dominate every trace, so they get a hand-shaped encoding. Each
//! record contributes one *tag* byte to the tag stream and its fields to a handful of
//! other streams (timestamps, threads, stacks, sizes, addresses, ...). Storing each kind
//! of field contiguously lets zstd model every column on its own, which is worth about a
//! factor of two over an interleaved layout.
//!
//! Fields are not stored verbatim; both sides keep a small *model* of the recent past
//! and store only what the model does not predict:
//!
//! * timestamps and thread ids are deltas from the previous record's;
//! * the function and size of an event are predicted from the last event with the same
//!   stack (one call site almost always calls the same function with the same size);
//! * an allocation's address is predicted to be either the "top of heap" right after
//!   the previous fresh allocation (bump allocation), or one of the recently freed
//!   blocks (allocators reuse freed blocks LIFO), stored as a distance back in a ring of
//!   recent frees;
//! * a free's address is stored as a distance back in a ring of recent allocations.
//!
//! The model starts empty at every chunk, which is what makes chunks independently
//! decodable (and so decodable in parallel). Rare records are stored as the logical
//! [`Record`] itself, encoded with postcard. `docs/FORMAT.md` specifies every bit.

use crate::record::{AllocFn, Record, StackId};
use crate::MIN_RECORD_BYTES;

/// Number of streams in a chunk payload.
pub(crate) const STREAMS: usize = 9;
/// One tag byte per record.
pub(crate) const S_TAG: usize = 0;
/// Zigzag varint timestamp deltas.
pub(crate) const S_TS: usize = 1;
/// Zigzag varint thread id deltas (only when the thread changes).
pub(crate) const S_TID: usize = 2;
/// Varint stack ids.
pub(crate) const S_STACK: usize = 3;
/// Varint sizes (when not predicted) and alignments.
pub(crate) const S_SIZE: usize = 4;
/// Address payloads (ring distances or zigzag deltas).
pub(crate) const S_ADDR: usize = 5;
/// Function bytes (when not predicted).
pub(crate) const S_FUNC: usize = 6;
/// Stack trie node fields.
pub(crate) const S_NODE: usize = 7;
/// Postcard-encoded rare records.
pub(crate) const S_OTHER: usize = 8;

/// Names of the streams, for error messages.
const STREAM_NAMES: [&str; STREAMS] = [
    "tag",
    "timestamp",
    "thread",
    "stack",
    "size",
    "address",
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
/// Event tag bit: the size is stored (not predicted from the stack).
const F_SIZE: u8 = 1 << 5;
/// Event tag bits 6-7: how the (first) address is stored.
const A_SHIFT: u8 = 6;
/// Address is a zigzag delta (from the bump prediction for allocations, from the last
/// address for frees and reallocs).
const A_DELTA: u8 = 0;
/// Address is a distance back in a ring (frees for allocations, allocations for frees).
const A_RING: u8 = 1;
/// Address equals the bump prediction (allocations only).
const A_BUMP: u8 = 2;
/// Address is 0.
const A_ZERO: u8 = 3;
/// Stack node tag bit: the node id is the previous node's plus one.
const F_NEXT_ID: u8 = 1 << 3;

/// Size of the address rings (a power of two).
pub(crate) const RING: usize = 4096;
/// Size of the per-stack prediction table (a power of two).
const TABLE: usize = 4096;
/// Size of the encoder's address-to-ring-position indexes (a power of two).
const INDEX: usize = 16384;
/// Allocations at least this big are assumed to come from mmap and do not move the bump
/// prediction.
const BUMP_MAX_SIZE: u64 = 128 * 1024;

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
fn delta(new: u64, old: u64) -> u64 {
    zigzag(new.wrapping_sub(old) as i64)
}

#[inline]
fn undelta(old: u64, d: u64) -> u64 {
    old.wrapping_add(unzigzag(d) as u64)
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low first, high bit = more).
#[inline]
pub(crate) fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The distance from a fresh block at `address` of `size` bytes to the next fresh block
/// of a glibc-like allocator: the user size plus an 8-byte header, rounded up to 16, at
/// least 32.
#[inline]
fn bump_step(size: u64) -> u64 {
    (size.wrapping_add(8 + 15) & !15).max(32)
}

#[inline]
fn ring_hash(addr: u64) -> usize {
    ((addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INDEX.trailing_zeros())) as usize
}

/// Prediction for one stack (slot chosen by the low bits of the stack id).
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Stack id + 1, 0 when empty.
    key: u64,
    size: u64,
    func: u8,
}

/// The state both sides of a chunk keep to undo the predictions.
struct Model {
    ts: u64,
    tid: u32,
    addr: u64,
    bump: u64,
    node_id: StackId,
    node_addr: u64,
    table: Vec<Slot>,
    alloc_ring: Vec<u64>,
    alloc_n: u64,
    free_ring: Vec<u64>,
    free_n: u64,
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
            table: vec![Slot::default(); TABLE],
            alloc_ring: vec![0; RING],
            alloc_n: 0,
            free_ring: vec![0; RING],
            free_n: 0,
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
        self.table.fill(Slot::default());
        self.alloc_n = 0;
        self.free_n = 0;
    }

    #[inline]
    fn slot(&mut self, stack: StackId) -> &mut Slot {
        &mut self.table[stack as usize & (TABLE - 1)]
    }

    #[inline]
    fn push_alloc(&mut self, addr: u64) -> u64 {
        let seq = self.alloc_n;
        self.alloc_ring[seq as usize & (RING - 1)] = addr;
        self.alloc_n += 1;
        seq
    }

    #[inline]
    fn push_free(&mut self, addr: u64) -> u64 {
        let seq = self.free_n;
        self.free_ring[seq as usize & (RING - 1)] = addr;
        self.free_n += 1;
        seq
    }
}

/// Looks `addr` up in a ring through its index; returns its distance back from the
/// ring's newest entry.
#[inline]
fn ring_find(index: &[u64], ring: &[u64], n: u64, addr: u64) -> Option<u64> {
    let seq = index[ring_hash(addr)];
    if seq < n && n - seq <= RING as u64 && ring[seq as usize & (RING - 1)] == addr {
        Some(n - 1 - seq)
    } else {
        None
    }
}

/// Encodes the records of one chunk into its streams.
pub(crate) struct Encoder {
    m: Model,
    alloc_index: Vec<u64>,
    free_index: Vec<u64>,
    streams: [Vec<u8>; STREAMS],
    len: usize,
    records: u32,
}

impl Encoder {
    /// An encoder at the start of a chunk.
    pub(crate) fn new() -> Self {
        Encoder {
            m: Model::new(),
            alloc_index: vec![u64::MAX; INDEX],
            free_index: vec![u64::MAX; INDEX],
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
                tag |= self.event_head(ts, tid, func, stack, Some(size));
                if align != 0 {
                    put_var(&mut self.streams[S_SIZE], align);
                }
                let mode = if address == 0 {
                    A_ZERO
                } else if address == self.m.bump {
                    A_BUMP
                } else if let Some(d) =
                    ring_find(&self.free_index, &self.m.free_ring, self.m.free_n, address)
                {
                    put_var(&mut self.streams[S_ADDR], d);
                    A_RING
                } else {
                    put_var(&mut self.streams[S_ADDR], delta(address, self.m.bump));
                    A_DELTA
                };
                self.after_alloc(address, size, mode);
                tag | mode << A_SHIFT
            }
            Record::Free {
                ts,
                tid,
                func,
                address,
                stack,
            } => {
                let tag = K_FREE | self.event_head(ts, tid, func, stack, None);
                let mode = self.put_released(address);
                if address != 0 {
                    self.push_free(address);
                    self.m.addr = address;
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
                let tag = K_REALLOC | self.event_head(ts, tid, func, stack, Some(size));
                let mode = self.put_released(old_address);
                put_var(&mut self.streams[S_ADDR], delta(new_address, old_address));
                if old_address != 0 && new_address != old_address {
                    self.push_free(old_address);
                }
                if new_address != 0 {
                    let seq = self.m.push_alloc(new_address);
                    self.alloc_index[ring_hash(new_address)] = seq;
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

    /// Encodes the fields every allocator event has; returns the tag bits they set.
    #[inline]
    fn event_head(
        &mut self,
        ts: u64,
        tid: u32,
        func: AllocFn,
        stack: StackId,
        size: Option<u64>,
    ) -> u8 {
        let mut tag = 0;
        put_var(&mut self.streams[S_TS], delta(ts, self.m.ts));
        self.m.ts = ts;
        if tid != self.m.tid {
            tag |= F_TID;
            put_var(
                &mut self.streams[S_TID],
                delta(u64::from(tid), u64::from(self.m.tid)),
            );
            self.m.tid = tid;
        }
        put_var(&mut self.streams[S_STACK], u64::from(stack));
        let key = u64::from(stack) + 1;
        let slot = self.m.slot(stack);
        let hit = slot.key == key;
        if !(hit && slot.func == func as u8) {
            tag |= F_FUNC;
            self.streams[S_FUNC].push(func as u8);
        }
        if let Some(size) = size {
            if !(hit && slot.size == size) {
                tag |= F_SIZE;
                put_var(&mut self.streams[S_SIZE], size);
            }
            *slot = Slot {
                key,
                size,
                func: func as u8,
            };
        } else {
            let size = if hit { slot.size } else { 0 };
            *slot = Slot {
                key,
                size,
                func: func as u8,
            };
        }
        tag
    }

    /// Encodes the address a free or realloc releases; returns its mode.
    #[inline]
    fn put_released(&mut self, address: u64) -> u8 {
        if address == 0 {
            A_ZERO
        } else if let Some(d) = ring_find(
            &self.alloc_index,
            &self.m.alloc_ring,
            self.m.alloc_n,
            address,
        ) {
            put_var(&mut self.streams[S_ADDR], d);
            A_RING
        } else {
            put_var(&mut self.streams[S_ADDR], delta(address, self.m.addr));
            A_DELTA
        }
    }

    #[inline]
    fn after_alloc(&mut self, address: u64, size: u64, mode: u8) {
        if address != 0 {
            let seq = self.m.push_alloc(address);
            self.alloc_index[ring_hash(address)] = seq;
            self.m.addr = address;
            if mode != A_RING && size < BUMP_MAX_SIZE {
                self.m.bump = address.wrapping_add(bump_step(size));
            }
        }
    }

    #[inline]
    fn push_free(&mut self, address: u64) {
        let seq = self.m.push_free(address);
        self.free_index[ring_hash(address)] = seq;
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
        // The indexes need no clearing: an entry is only used when its sequence number
        // is below the ring's count and the ring holds the same address there, which is
        // true only for entries the new chunk wrote.
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

/// A cursor over one stream.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    stream: usize,
}

/// Stream-level failure, turned into a [`DecodeError`] with the record index.
struct Short(String);

impl<'a> Cur<'a> {
    #[inline]
    fn byte(&mut self) -> Result<u8, Short> {
        match self.b.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.short()),
        }
    }

    #[inline]
    fn var(&mut self) -> Result<u64, Short> {
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(u64::from(b));
        }
        let mut v = u64::from(b & 0x7f);
        let mut shift = 7;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(Short(format!(
                    "varint overflows 64 bits in the {} stream",
                    STREAM_NAMES[self.stream]
                )));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    #[cold]
    fn short(&self) -> Short {
        Short(format!(
            "the {} stream ends early",
            STREAM_NAMES[self.stream]
        ))
    }
}

/// Decodes a chunk payload of `count` records, appending them to `out`.
pub(crate) fn decode_payload(
    raw: &[u8],
    count: u32,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let err = |record: u32, what: String| DecodeError { record, what };
    // The stream length prefix.
    let mut head = Cur {
        b: raw,
        pos: 0,
        stream: S_TAG,
    };
    let mut lens = [0usize; STREAMS];
    for len in &mut lens {
        let v = head
            .var()
            .map_err(|_| err(0, "stream length prefix is cut short".into()))?;
        *len = usize::try_from(v)
            .ok()
            .filter(|&l| l <= raw.len())
            .ok_or_else(|| err(0, format!("stream length {v} is over the payload size")))?;
    }
    let body = &raw[head.pos..];
    let total: usize = lens.iter().sum();
    if total != body.len() {
        return Err(err(
            0,
            format!(
                "streams add up to {total} bytes but {} follow the prefix",
                body.len()
            ),
        ));
    }
    if lens[S_TAG] != count as usize {
        return Err(err(
            0,
            format!(
                "chunk header says {count} records but the tag stream holds {}",
                lens[S_TAG]
            ),
        ));
    }
    let mut at = 0;
    let mut cur: [Cur<'_>; STREAMS] = std::array::from_fn(|i| {
        let c = Cur {
            b: &body[at..at + lens[i]],
            pos: 0,
            stream: i,
        };
        at += lens[i];
        c
    });
    // Every record takes at least MIN_RECORD_BYTES of payload, which bounds `count` (and
    // so this reservation) by the payload size.
    if (count as usize).saturating_mul(MIN_RECORD_BYTES) > raw.len() {
        return Err(err(
            0,
            format!("{count} records cannot fit in {} payload bytes", raw.len()),
        ));
    }
    out.reserve(count as usize);
    let mut m = Model::new();
    for i in 0..count {
        let rec = decode_one(&mut m, &mut cur).map_err(|Short(what)| err(i, what))?;
        out.push(rec);
    }
    for c in &cur {
        if c.pos != c.b.len() {
            return Err(err(
                count,
                format!(
                    "{} bytes left in the {} stream after the last record",
                    c.b.len() - c.pos,
                    STREAM_NAMES[c.stream]
                ),
            ));
        }
    }
    Ok(())
}

#[inline]
fn decode_func(b: u8) -> Result<AllocFn, Short> {
    AllocFn::ALL
        .get(b as usize)
        .copied()
        .ok_or_else(|| Short(format!("unknown allocator function {b}")))
}

/// Decodes the fields every allocator event has: (ts, tid, stack, func, size).
#[inline]
fn decode_head(
    m: &mut Model,
    cur: &mut [Cur<'_>; STREAMS],
    tag: u8,
    with_size: bool,
) -> Result<(u64, u32, StackId, AllocFn, u64), Short> {
    m.ts = undelta(m.ts, cur[S_TS].var()?);
    if tag & F_TID != 0 {
        let tid = undelta(u64::from(m.tid), cur[S_TID].var()?);
        m.tid = u32::try_from(tid).map_err(|_| Short(format!("thread id {tid} out of range")))?;
    }
    let stack = cur[S_STACK].var()?;
    let stack =
        StackId::try_from(stack).map_err(|_| Short(format!("stack id {stack} out of range")))?;
    let key = u64::from(stack) + 1;
    let slot = *m.slot(stack);
    let hit = slot.key == key;
    let func = if tag & F_FUNC != 0 {
        cur[S_FUNC].byte()?
    } else if hit {
        slot.func
    } else {
        return Err(Short("function predicted from an unseen stack".into()));
    };
    let func = decode_func(func)?;
    let size = if !with_size {
        if hit {
            slot.size
        } else {
            0
        }
    } else if tag & F_SIZE != 0 {
        cur[S_SIZE].var()?
    } else if hit {
        slot.size
    } else {
        return Err(Short("size predicted from an unseen stack".into()));
    };
    *m.slot(stack) = Slot {
        key,
        size,
        func: func as u8,
    };
    Ok((m.ts, m.tid, stack, func, size))
}

/// Decodes the address a free or realloc releases.
#[inline]
fn decode_released(m: &Model, cur: &mut [Cur<'_>; STREAMS], mode: u8) -> Result<u64, Short> {
    match mode {
        A_ZERO => Ok(0),
        A_RING => {
            let d = cur[S_ADDR].var()?;
            if d >= m.alloc_n.min(RING as u64) {
                return Err(Short(format!(
                    "address refers to allocation {d} back, only {} known",
                    m.alloc_n.min(RING as u64)
                )));
            }
            Ok(m.alloc_ring[(m.alloc_n - 1 - d) as usize & (RING - 1)])
        }
        A_DELTA => Ok(undelta(m.addr, cur[S_ADDR].var()?)),
        _ => Err(Short("bump address mode on a release".into())),
    }
}

#[inline]
fn decode_one(m: &mut Model, cur: &mut [Cur<'_>; STREAMS]) -> Result<Record, Short> {
    let tag = cur[S_TAG].byte()?;
    let mode = tag >> A_SHIFT;
    match tag & KIND_MASK {
        k @ (K_ALLOC | K_ALIGNED) => {
            let (ts, tid, stack, func, size) = decode_head(m, cur, tag, true)?;
            let align = if k == K_ALIGNED {
                cur[S_SIZE].var()?
            } else {
                0
            };
            let address = match mode {
                A_ZERO => 0,
                A_BUMP => m.bump,
                A_RING => {
                    let d = cur[S_ADDR].var()?;
                    if d >= m.free_n.min(RING as u64) {
                        return Err(Short(format!(
                            "address refers to free {d} back, only {} known",
                            m.free_n.min(RING as u64)
                        )));
                    }
                    m.free_ring[(m.free_n - 1 - d) as usize & (RING - 1)]
                }
                _ => undelta(m.bump, cur[S_ADDR].var()?),
            };
            if address != 0 {
                m.push_alloc(address);
                m.addr = address;
                if mode != A_RING && size < BUMP_MAX_SIZE {
                    m.bump = address.wrapping_add(bump_step(size));
                }
            }
            Ok(Record::Alloc {
                ts,
                tid,
                func,
                address,
                size,
                align,
                stack,
            })
        }
        K_FREE => {
            let (ts, tid, stack, func, _) = decode_head(m, cur, tag, false)?;
            let address = decode_released(m, cur, mode)?;
            if address != 0 {
                m.push_free(address);
                m.addr = address;
            }
            Ok(Record::Free {
                ts,
                tid,
                func,
                address,
                stack,
            })
        }
        K_REALLOC => {
            let (ts, tid, stack, func, size) = decode_head(m, cur, tag, true)?;
            let old_address = decode_released(m, cur, mode)?;
            let new_address = undelta(old_address, cur[S_ADDR].var()?);
            if old_address != 0 && new_address != old_address {
                m.push_free(old_address);
            }
            if new_address != 0 {
                m.push_alloc(new_address);
                m.addr = new_address;
            } else if old_address != 0 {
                m.addr = old_address;
            }
            Ok(Record::Realloc {
                ts,
                tid,
                func,
                old_address,
                new_address,
                size,
                stack,
            })
        }
        K_NODE => {
            let node = &mut cur[S_NODE];
            let id = if tag & F_NEXT_ID != 0 {
                m.node_id.wrapping_add(1)
            } else {
                undelta(u64::from(m.node_id), node.var()?) as StackId
            };
            let up = node.var()?;
            let up = StackId::try_from(up)
                .map_err(|_| Short(format!("stack node parent distance {up} out of range")))?;
            let address = undelta(m.node_addr, node.var()?);
            m.node_id = id;
            m.node_addr = address;
            Ok(Record::StackNode {
                id,
                parent: id.wrapping_sub(up),
                address,
            })
        }
        K_OTHER => {
            let other = &mut cur[S_OTHER];
            let (rec, rest) = postcard::take_from_bytes::<Record>(&other.b[other.pos..])
                .map_err(|e| Short(format!("record does not decode: {e}")))?;
            other.pos = other.b.len() - rest.len();
            if let Some(ts) = rec.timestamp() {
                m.ts = ts;
            }
            Ok(rec)
        }
        k => Err(Short(format!("unknown record kind {k}"))),
    }
}
