//! Delta encoding of records inside one chunk.
//!
//! Allocator events dominate every trace, so they get hand-shaped wire forms: the
//! timestamp is a delta from the previous record's, the thread a delta from the previous
//! event's thread, and addresses deltas from the previous heap address, all as zigzag
//! varints (postcard encodes `i64` that way). A typical `malloc` event is 7 to 10 bytes
//! before compression. Every other record is rare and is stored as the logical
//! [`Record`] itself.
//!
//! The delta state starts from zero at every chunk, which is what makes chunks
//! independently decodable (and so decodable in parallel).

use serde::{Deserialize, Serialize};

use crate::record::{AllocFn, Record, StackId};

/// The on-disk shape of one record. `C` is `&Record` when encoding and `Record` when
/// decoding; both serialize identically.
#[derive(Serialize, Deserialize)]
pub(crate) enum Wire<C> {
    Alloc {
        dts: i64,
        dtid: i64,
        func: AllocFn,
        daddr: i64,
        size: u64,
        stack: StackId,
    },
    AlignedAlloc {
        dts: i64,
        dtid: i64,
        func: AllocFn,
        daddr: i64,
        size: u64,
        align: u64,
        stack: StackId,
    },
    Free {
        dts: i64,
        dtid: i64,
        func: AllocFn,
        daddr: i64,
        stack: StackId,
    },
    Realloc {
        dts: i64,
        dtid: i64,
        func: AllocFn,
        dold: i64,
        dnew: i64,
        size: u64,
        stack: StackId,
    },
    StackNode {
        did: i64,
        /// `id - parent`: 1 for a node whose parent was emitted just before it.
        up: u32,
        daddr: i64,
    },
    Other(C),
}

/// The state both sides of a chunk keep to undo the deltas.
#[derive(Default)]
pub(crate) struct DeltaState {
    ts: u64,
    tid: u32,
    addr: u64,
    stack_id: StackId,
    stack_addr: u64,
}

#[inline]
fn delta(new: u64, old: u64) -> i64 {
    new.wrapping_sub(old) as i64
}

#[inline]
fn undelta(old: u64, d: i64) -> u64 {
    old.wrapping_add(d as u64)
}

impl DeltaState {
    /// Turns a record into its wire form and advances the state.
    pub(crate) fn encode<'a>(&mut self, rec: &'a Record) -> Wire<&'a Record> {
        match *rec {
            Record::Alloc {
                ts,
                tid,
                func,
                address,
                size,
                align,
                stack,
            } => {
                let dts = delta(ts, self.ts);
                let dtid = delta(tid as u64, self.tid as u64);
                let daddr = delta(address, self.addr);
                self.ts = ts;
                self.tid = tid;
                self.addr = address;
                if align == 0 {
                    Wire::Alloc {
                        dts,
                        dtid,
                        func,
                        daddr,
                        size,
                        stack,
                    }
                } else {
                    Wire::AlignedAlloc {
                        dts,
                        dtid,
                        func,
                        daddr,
                        size,
                        align,
                        stack,
                    }
                }
            }
            Record::Free {
                ts,
                tid,
                func,
                address,
                stack,
            } => {
                let w = Wire::Free {
                    dts: delta(ts, self.ts),
                    dtid: delta(tid as u64, self.tid as u64),
                    func,
                    daddr: delta(address, self.addr),
                    stack,
                };
                self.ts = ts;
                self.tid = tid;
                if address != 0 {
                    self.addr = address;
                }
                w
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
                let w = Wire::Realloc {
                    dts: delta(ts, self.ts),
                    dtid: delta(tid as u64, self.tid as u64),
                    func,
                    dold: delta(old_address, self.addr),
                    dnew: delta(new_address, old_address),
                    size,
                    stack,
                };
                self.ts = ts;
                self.tid = tid;
                self.addr = new_address;
                w
            }
            Record::StackNode {
                id,
                parent,
                address,
            } => {
                let w = Wire::StackNode {
                    did: delta(id as u64, self.stack_id as u64),
                    up: id.wrapping_sub(parent),
                    daddr: delta(address, self.stack_addr),
                };
                self.stack_id = id;
                self.stack_addr = address;
                w
            }
            ref other => {
                if let Some(ts) = other.timestamp() {
                    self.ts = ts;
                }
                Wire::Other(other)
            }
        }
    }

    /// Turns a decoded wire form back into its record and advances the state.
    pub(crate) fn decode(&mut self, w: Wire<Record>) -> Record {
        match w {
            Wire::Alloc {
                dts,
                dtid,
                func,
                daddr,
                size,
                stack,
            } => self.alloc(dts, dtid, func, daddr, size, 0, stack),
            Wire::AlignedAlloc {
                dts,
                dtid,
                func,
                daddr,
                size,
                align,
                stack,
            } => self.alloc(dts, dtid, func, daddr, size, align, stack),
            Wire::Free {
                dts,
                dtid,
                func,
                daddr,
                stack,
            } => {
                self.ts = undelta(self.ts, dts);
                self.tid = undelta(self.tid as u64, dtid) as u32;
                let address = undelta(self.addr, daddr);
                if address != 0 {
                    self.addr = address;
                }
                Record::Free {
                    ts: self.ts,
                    tid: self.tid,
                    func,
                    address,
                    stack,
                }
            }
            Wire::Realloc {
                dts,
                dtid,
                func,
                dold,
                dnew,
                size,
                stack,
            } => {
                self.ts = undelta(self.ts, dts);
                self.tid = undelta(self.tid as u64, dtid) as u32;
                let old_address = undelta(self.addr, dold);
                let new_address = undelta(old_address, dnew);
                self.addr = new_address;
                Record::Realloc {
                    ts: self.ts,
                    tid: self.tid,
                    func,
                    old_address,
                    new_address,
                    size,
                    stack,
                }
            }
            Wire::StackNode { did, up, daddr } => {
                self.stack_id = undelta(self.stack_id as u64, did) as StackId;
                self.stack_addr = undelta(self.stack_addr, daddr);
                Record::StackNode {
                    id: self.stack_id,
                    parent: self.stack_id.wrapping_sub(up),
                    address: self.stack_addr,
                }
            }
            Wire::Other(rec) => {
                if let Some(ts) = rec.timestamp() {
                    self.ts = ts;
                }
                rec
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn alloc(
        &mut self,
        dts: i64,
        dtid: i64,
        func: AllocFn,
        daddr: i64,
        size: u64,
        align: u64,
        stack: StackId,
    ) -> Record {
        self.ts = undelta(self.ts, dts);
        self.tid = undelta(self.tid as u64, dtid) as u32;
        self.addr = undelta(self.addr, daddr);
        Record::Alloc {
            ts: self.ts,
            tid: self.tid,
            func,
            address: self.addr,
            size,
            align,
            stack,
        }
    }
}
