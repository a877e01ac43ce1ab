//! Which live block a bad free's address lay in, looked up on the shard thread.
//!
//! A free of an address that is no live block's start may still point inside one (an
//! interior pointer: memcheck's "Address 0x… is 8 bytes inside a block of size 64
//! alloc'd"). Only the shards hold the live blocks, and the accounting that reports the
//! free runs later, on another thread, when the tables have moved on; so the shard
//! thread answers the question for every miss of a run (a removal or look-up that
//! found no live block) once the run's shards are done, and the answers travel with the
//! run ([`Batch::described`](super::batch::Batch::described)).
//!
//! The answer must be the heap as it was at the miss, not at the end of the run, and it
//! must not depend on how addresses are split between shards (shards run their
//! operations in parallel, each at its own pace). So the run's operations from the
//! earliest miss on are undone, newest first, across every shard in record order;
//! each miss is looked up when everything after it (and its record's own insertion, a
//! realloc's new block) is undone; then the operations are done again. That is twice a
//! run's operations, only for runs with a miss to describe.
//!
//! Not described (their answer would not be used): misses of a heap that did not see
//! every allocation (an attached process: unknown addresses are untracked frees), and
//! frees whose stack is known, when the run was handed over, to be the C library's own
//! bookkeeping (at every thread exit; see `Replay::allocator_internal`).

use std::ops::Range;

use heaptape_format::{AllocFn, Record, StackId};

use super::batch::{Described, Miss};
use super::heap::{containing, Block, ImageId, LiveTable};
use super::prepare::{Prepared, ShardOpKind};
use super::step::{heap_of, inserted_block, Bindings, LastBinding};
use crate::hash::{fmix64, FastSet};

/// What a run's shards did, read to undo and redo it.
pub(crate) struct RunView<'a> {
    /// The run's chunk.
    pub chunk: &'a Prepared,
    /// Per shard: its operations (indices into the chunk's operations of that shard).
    pub op_ranges: &'a [Range<usize>],
    /// The image and heap of each thread of the run.
    pub bindings: &'a Bindings,
    /// Per shard: the results of its removals and look-ups, in order.
    pub results: &'a [Vec<Option<Block>>],
    /// Per shard: the blocks its insertions replaced, with the insertion's record index.
    pub replaced: &'a [Vec<(u32, Block)>],
    /// Per shard: its removals and look-ups that found nothing.
    pub misses: &'a [Vec<Miss>],
    /// Per heap of the run: whether it saw every allocation.
    pub complete: &'a [bool],
    /// Frees known to be the C library's bookkeeping, by (image, stack).
    pub internal: &'a FastSet<(ImageId, StackId)>,
}

/// What one operation changed in its table.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// `new` was made live, replacing `old`.
    Inserted { new: Block, old: Option<Block> },
    /// The block was removed.
    Removed(Block),
}

/// One operation of the run that changed a table.
#[derive(Clone, Copy, Debug)]
struct Done {
    /// The record's index, then 0 for a removal, 1 for an insertion (a realloc removes
    /// its old block before it inserts the new one).
    at: (u32, u8),
    shard: usize,
    heap: usize,
    address: u64,
    change: Change,
}

/// Whether miss `m` is worth describing (see the module docs).
fn wanted(run: &RunView<'_>, m: &Miss) -> bool {
    if !run
        .complete
        .get(usize::from(m.heap))
        .copied()
        .unwrap_or(false)
    {
        return false;
    }
    match run.chunk.records.get(m.index as usize) {
        Some(&Record::Free { func, stack, .. }) => {
            // The release part of a realloc is never taken for bookkeeping.
            matches!(func, AllocFn::Realloc | AllocFn::Reallocarray)
                || !run.internal.contains(&(m.img as ImageId, stack))
        }
        _ => true,
    }
}

/// Describes the misses of a run whose shards are done (see the module docs), into
/// `out` by record index; `tables` are the run's tables, per shard, per heap.
pub(crate) fn describe_misses(
    tables: &mut [Vec<&mut LiveTable>],
    run: &RunView<'_>,
    out: &mut Vec<Described>,
) {
    let mut wanted: Vec<Miss> = run
        .misses
        .iter()
        .flatten()
        .filter(|m| wanted(run, m))
        .copied()
        .collect();
    let Some(earliest) = wanted.iter().map(|m| m.index).min() else {
        return;
    };
    wanted.sort_unstable_by_key(|m| m.index);
    let mut done = changes_since(run, earliest);
    done.sort_unstable_by_key(|d| std::cmp::Reverse(d.at));
    // Newest first: undo what came at or after each miss, then look.
    let mut undone = 0;
    for m in wanted.iter().rev() {
        while let Some(d) = done.get(undone).filter(|d| d.at.0 >= m.index) {
            undo(tables, d);
            undone += 1;
        }
        let heap: Vec<&LiveTable> = tables
            .iter()
            .filter_map(|per_heap| per_heap.get(usize::from(m.heap)).map(|t| &**t))
            .collect();
        out.push((m.index, containing(&heap, m.address)));
    }
    for d in done[..undone].iter().rev() {
        redo(tables, d);
    }
    out.reverse();
}

/// The run's operations on record `earliest` and later that changed a table, from
/// every shard.
fn changes_since(run: &RunView<'_>, earliest: u32) -> Vec<Done> {
    let single = run.bindings.single_heap();
    let mut done = Vec::new();
    for (shard, range) in run.op_ranges.iter().enumerate() {
        let (Some(ops), Some(results), Some(replaced)) = (
            run.chunk.ops.get(shard).and_then(|o| o.get(range.clone())),
            run.results.get(shard),
            run.replaced.get(shard),
        ) else {
            continue;
        };
        let mut results = results.iter();
        let mut replaced = replaced.iter().peekable();
        let mut last = LastBinding::default();
        for op in ops {
            // As the shard did: operations of threads without a heap were skipped.
            let binding = match single {
                Some(img) => Some((0, img)),
                None => heap_of(run.bindings, &mut last, op.tid),
            };
            let Some((heap, img)) = binding else {
                continue;
            };
            let index = op.index();
            let change = match op.kind() {
                ShardOpKind::Insert => {
                    let old = replaced.next_if(|&&(i, _)| i == index).map(|&(_, b)| b);
                    let Some(rec) = run.chunk.records.get(index as usize) else {
                        continue;
                    };
                    Some((
                        (index, 1),
                        Change::Inserted {
                            new: inserted_block(rec, img),
                            old,
                        },
                    ))
                }
                ShardOpKind::Remove => results
                    .next()
                    .copied()
                    .flatten()
                    .map(|b| ((index, 0), Change::Removed(b))),
                ShardOpKind::Get => {
                    results.next();
                    None
                }
            };
            if let Some((at, change)) = change.filter(|(at, _)| at.0 >= earliest) {
                done.push(Done {
                    at,
                    shard,
                    heap: usize::from(heap),
                    address: op.address,
                    change,
                });
            }
        }
    }
    done
}

/// The table operation `d` happened in.
fn table<'a>(tables: &'a mut [Vec<&mut LiveTable>], d: &Done) -> Option<&'a mut LiveTable> {
    tables
        .get_mut(d.shard)
        .and_then(|per_heap| per_heap.get_mut(d.heap))
        .map(|t| &mut **t)
}

fn undo(tables: &mut [Vec<&mut LiveTable>], d: &Done) {
    let Some(t) = table(tables, d) else {
        return;
    };
    let h = fmix64(d.address);
    match d.change {
        Change::Inserted { old: Some(old), .. } => {
            t.insert_hashed(d.address, h, old);
        }
        Change::Inserted { old: None, .. } => {
            t.remove_hashed(d.address, h);
        }
        Change::Removed(b) => {
            t.insert_hashed(d.address, h, b);
        }
    }
}

fn redo(tables: &mut [Vec<&mut LiveTable>], d: &Done) {
    let Some(t) = table(tables, d) else {
        return;
    };
    let h = fmix64(d.address);
    match d.change {
        Change::Inserted { new, .. } => {
            t.insert_hashed(d.address, h, new);
        }
        Change::Removed(_) => {
            t.remove_hashed(d.address, h);
        }
    }
}
