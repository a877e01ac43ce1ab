//! Preparing a decoded chunk for the replay, on the core that decoded it.
//!
//! # Why
//!
//! The replay's live-table operations run on the shard thread and its accounting on
//! the pool (see [`super::shards`] and [`super::run_summary`]); what stayed on the replaying
//! thread was the planning: reading every record and writing, per record, a step and a
//! shard operation. That was a sixth of a replay's work done by one thread, whatever
//! the number of cores, and the bound on how far the replay could scale.
//!
//! Most of that planning does not depend on the replay's state: which live-table
//! operations a record makes (insert, remove, look up), in which address shard, which
//! records are not live-table events at all, which threads the chunk's events come
//! from, and its latest timestamps. So it is done here, by the pool task that decoded
//! the chunk, while the records are still in that core's cache. What depends on the
//! state, the image and heap each thread is bound to and whether a record ends a run,
//! is left to the replaying thread, which now looks at a chunk's few threads and few
//! other records instead of every record (see
//! [`Replay::apply_prepared`](super::Replay::apply_prepared)). The records
//! themselves are the runs' data: the shards and the accounting read them in place.

use heaptape_format::Record;

use super::step::{realloc_frees_old, shard_of, table_event};
use crate::hash::FastMap;

/// Records per block of [`Prepared::block_max`].
pub(crate) const BLOCK: usize = 1024;

/// Most records a prepared chunk holds (shard operations keep a record's index in 30
/// bits). A chunk holds at most `MAX_CHUNK_BYTES` (32 MiB) records.
pub(crate) const MAX_RECORDS: usize = 1 << 30;

/// One live-table operation, run by the shard owning its address, in file order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardOp {
    /// The address the operation is about.
    pub address: u64,
    /// The record's index in its chunk (low 30 bits) and the kind (top 2 bits).
    packed: u32,
    /// The thread that made the call (its binding gives the heap).
    pub tid: u32,
}

/// What a [`ShardOp`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShardOpKind {
    /// Make the record's block live; the result is the block it replaced, if any.
    Insert,
    /// Remove the block at the record's (old) address; the result is the block removed.
    Remove,
    /// The result is the live block at the record's old address (left live).
    Get,
}

impl ShardOp {
    fn new(address: u64, index: usize, tid: u32, kind: ShardOpKind) -> Self {
        debug_assert!(index < MAX_RECORDS);
        let k = match kind {
            ShardOpKind::Insert => 0,
            ShardOpKind::Remove => 1,
            ShardOpKind::Get => 2,
        };
        ShardOp {
            address,
            packed: index as u32 | (k << 30),
            tid,
        }
    }

    /// The index of the record in its chunk.
    #[inline]
    pub fn index(self) -> u32 {
        self.packed & (MAX_RECORDS as u32 - 1)
    }

    /// What it does.
    #[inline]
    pub fn kind(self) -> ShardOpKind {
        match self.packed >> 30 {
            0 => ShardOpKind::Insert,
            1 => ShardOpKind::Remove,
            _ => ShardOpKind::Get,
        }
    }
}

/// The span of a chunk's allocator events made by one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadSpan {
    pub tid: u32,
    /// Indices of its first and last allocator event in the chunk.
    pub first: u32,
    pub last: u32,
}

/// A decoded chunk and what the replay needs to know about it that does not depend on
/// the replay's state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Per address shard: the live-table operations of the records, in file order.
    pub ops: Vec<Vec<ShardOp>>,
    /// Indices of the records that are not live-table events (see [`table_event`]),
    /// in order: the only records the replaying thread looks at.
    pub others: Vec<u32>,
    /// The threads of the chunk's allocator events, in order of first event.
    pub threads: Vec<ThreadSpan>,
    /// Per [`BLOCK`] records: the latest timestamp of their live-table events (0 if
    /// none).
    pub block_max: Vec<u64>,
    /// Each thread's index in `threads` (a program may run thousands).
    thread_index: FastMap<u32, usize>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Chunks waiting to be reused hold their records: no drop call for each.
        self.clear_records();
    }
}

/// Puts a thread's span in `threads` (in order of first event), or updates it;
/// `index` gives each thread's place in `threads`.
fn write_back(threads: &mut Vec<ThreadSpan>, index: &mut FastMap<u32, usize>, span: ThreadSpan) {
    match index.get(&span.tid) {
        Some(&t) => threads[t] = span,
        None => {
            index.insert(span.tid, threads.len());
            threads.push(span);
        }
    }
}

impl Prepared {
    /// Prepares [`Prepared::records`] for a replay with `shards` address shards,
    /// reusing the other buffers. There must be fewer than [`MAX_RECORDS`] records.
    pub fn prepare(&mut self, shards: usize) {
        assert!(
            self.records.len() < MAX_RECORDS,
            "a chunk of {} records",
            self.records.len()
        );
        self.ops.resize_with(shards, Vec::new);
        for ops in &mut self.ops {
            ops.clear();
        }
        self.others.clear();
        self.threads.clear();
        self.thread_index.clear();
        self.block_max.clear();
        self.block_max.resize(self.records.len().div_ceil(BLOCK), 0);
        // The span of the latest thread (most events repeat it; written back when
        // another comes), and the latest timestamp of the current block.
        let mut span: Option<ThreadSpan> = None;
        let mut block_max = 0;
        for (i, rec) in self.records.iter().enumerate() {
            if i % BLOCK == 0 && i > 0 {
                self.block_max[i / BLOCK - 1] = block_max;
                block_max = 0;
            }
            let (tid, ts) = match *rec {
                Record::Alloc { tid, ts, .. }
                | Record::Free { tid, ts, .. }
                | Record::Realloc { tid, ts, .. } => (tid, ts),
                _ => {
                    self.others.push(i as u32);
                    continue;
                }
            };
            match &mut span {
                Some(s) if s.tid == tid => s.last = i as u32,
                _ => {
                    if let Some(s) = span {
                        write_back(&mut self.threads, &mut self.thread_index, s);
                    }
                    span = Some(match self.thread_index.get(&tid) {
                        Some(&t) => ThreadSpan {
                            last: i as u32,
                            ..self.threads[t]
                        },
                        None => ThreadSpan {
                            tid,
                            first: i as u32,
                            last: i as u32,
                        },
                    });
                }
            }
            let ops = &mut self.ops;
            let mut op = |kind, address| {
                ops[shard_of(address, shards)].push(ShardOp::new(address, i, tid, kind));
            };
            match *rec {
                Record::Alloc { address, .. } if address != 0 => op(ShardOpKind::Insert, address),
                Record::Free { address, .. } if address != 0 => op(ShardOpKind::Remove, address),
                Record::Realloc {
                    old_address: old,
                    new_address: new,
                    size,
                    ..
                } if old != 0 || new != 0 => {
                    let frees_old = realloc_frees_old(old, new, size);
                    if frees_old {
                        op(ShardOpKind::Remove, old);
                    } else if old != 0 {
                        // A failed realloc: is the pointer live?
                        op(ShardOpKind::Get, old);
                    }
                    if new != 0 && (frees_old || old == 0) {
                        op(ShardOpKind::Insert, new);
                    }
                }
                // NULL: counters only.
                _ => {
                    self.others.push(i as u32);
                    continue;
                }
            }
            block_max = block_max.max(ts);
        }
        if let Some(b) = self.block_max.last_mut() {
            *b = block_max;
        }
        if let Some(s) = span {
            write_back(&mut self.threads, &mut self.thread_index, s);
        }
    }

    /// Empties [`Prepared::records`], keeping its capacity, without a drop call per
    /// record: the records that own memory are among the others, and are dropped first.
    pub fn clear_records(&mut self) {
        for &i in &self.others {
            if let Some(rec) = self.records.get_mut(i as usize) {
                if rec.owns_heap() {
                    *rec = Record::StackNode {
                        id: 0,
                        parent: 0,
                        address: 0,
                    };
                }
            }
        }
        self.others.clear();
        heaptape_format::clear_records(&mut self.records);
    }

    /// The latest timestamp of the live-table events among records `range`.
    pub fn max_ts(&self, range: std::ops::Range<usize>) -> u64 {
        let mut max = 0;
        let mut i = range.start;
        while i < range.end {
            if i % BLOCK == 0 && i + BLOCK <= range.end {
                max = max.max(self.block_max[i / BLOCK]);
                i += BLOCK;
            } else {
                if table_event(&self.records[i]) {
                    max = max.max(self.records[i].timestamp().unwrap_or(0));
                }
                i += 1;
            }
        }
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaptape_format::AllocFn;

    fn alloc(ts: u64, tid: u32, address: u64) -> Record {
        Record::Alloc {
            ts,
            tid,
            func: AllocFn::Malloc,
            address,
            size: 8,
            align: 0,
            stack: 1,
        }
    }

    #[test]
    fn ops_others_threads_and_latest_timestamps() {
        let mut recs = Vec::new();
        for i in 0..3000u64 {
            recs.push(alloc(10_000 - i, 1 + (i % 3 == 0) as u32, 0x1000 + 16 * i));
            if i % 700 == 0 {
                recs.push(Record::StackNode {
                    id: i as u32 + 1,
                    parent: 0,
                    address: 5,
                });
                recs.push(alloc(1, 9, 0));
            }
        }
        recs.push(Record::Realloc {
            ts: 20_000,
            tid: 4,
            func: AllocFn::Realloc,
            old_address: 0x1000,
            new_address: 0x9000,
            size: 3,
            stack: 1,
        });
        let n = recs.len();
        for shards in [1, 3] {
            let mut p = Prepared::default();
            p.records.clone_from(&recs);
            p.prepare(shards);
            // Every live-table operation once, in order within its shard.
            let ops: usize = p.ops.iter().map(Vec::len).sum();
            assert_eq!(ops, 3000 + 2);
            for (s, ops) in p.ops.iter().enumerate() {
                assert!(ops.windows(2).all(|w| w[0].index() <= w[1].index()));
                assert!(ops.iter().all(|o| shard_of(o.address, shards) == s));
            }
            let realloc: Vec<_> = p
                .ops
                .iter()
                .flatten()
                .filter(|o| o.tid == 4)
                .map(|o| (o.kind(), o.address, o.index() as usize))
                .collect();
            assert_eq!(realloc.len(), 2);
            assert!(realloc.contains(&(ShardOpKind::Remove, 0x1000, n - 1)));
            assert!(realloc.contains(&(ShardOpKind::Insert, 0x9000, n - 1)));
            // The stack nodes and the NULL allocations.
            assert_eq!(p.others.len(), 2 * 5);
            assert!(p
                .others
                .iter()
                .all(|&i| !table_event(&p.records[i as usize])));
            let tids: Vec<u32> = p.threads.iter().map(|t| t.tid).collect();
            assert_eq!(tids, [2, 9, 1, 4]);
            assert_eq!(p.threads[3].first as usize, n - 1);
            assert_eq!(p.threads[2].first, 3);
            let last_of_2 = recs
                .iter()
                .rposition(|r| matches!(r, Record::Alloc { tid: 2, .. }));
            assert_eq!(Some(p.threads[0].last as usize), last_of_2);
            for range in [
                0..n,
                1..n - 1,
                1000..3000,
                1024..2048,
                1023..2049,
                5..6,
                7..7,
            ] {
                let expected = recs[range.clone()]
                    .iter()
                    .filter(|r| table_event(r))
                    .filter_map(Record::timestamp)
                    .max()
                    .unwrap_or(0);
                assert_eq!(p.max_ts(range.clone()), expected, "{range:?}");
            }
        }
    }

    #[test]
    fn emptied_with_or_without_records_that_own_memory() {
        let unload = Record::ModuleUnload {
            ts: 1,
            pid: 2,
            base: 3,
            path: "/lib/x.so".repeat(50),
        };
        for prepared in [true, false] {
            let mut p = Prepared::default();
            p.records = vec![alloc(1, 1, 0x10), unload.clone(), alloc(2, 1, 0x20)];
            if prepared {
                p.prepare(1);
                assert_eq!(p.others, [1]);
            }
            let cap = p.records.capacity();
            p.clear_records();
            assert!(p.records.is_empty() && p.others.is_empty());
            assert_eq!(p.records.capacity(), cap);
            // And dropped full.
            p.records.push(unload.clone());
            if prepared {
                p.prepare(1);
            }
        }
    }
}
