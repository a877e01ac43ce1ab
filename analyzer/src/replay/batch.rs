//! A run of the batch path: a stretch of a prepared chunk's records and everything its
//! passes need (the bindings of its threads, the shards' results, the heaps and images
//! it uses, the predicted clocks), so that it can move to the shard thread, to the pool
//! and back (see [`Replay::apply_prepared`](super::Replay::apply_prepared)).

use std::ops::Range;
use std::sync::Arc;

use heaptape_format::StackId;

use super::heap::{Block, Freed, ImageId};
use super::prepare::Prepared;
use super::step::{step, Bindings, LastBinding, Step};
use crate::callsites::Clock;
use crate::hash::FastSet;

/// A removal or look-up of a run that found no live block: a bad free (or a bad
/// realloc pointer), or the C library freeing its own bookkeeping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Miss {
    /// The record's index in its chunk.
    pub index: u32,
    /// Its heap (index into [`Batch::heaps`]).
    pub heap: u16,
    /// Its thread's image.
    pub img: u32,
    /// The address released.
    pub address: u64,
}

/// What the run's shards found about a miss (see [`super::describe`]): the record's
/// index, and the live block its address lay in then, with the block's start.
pub(crate) type Described = (u32, Option<(u64, Block)>);

/// One run of the batch path (see
/// [`Replay::apply_prepared`](super::Replay::apply_prepared)): a stretch of a prepared
/// chunk's records, with everything its passes need, so that it can move to the shard
/// thread, to the pool, and back.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The chunk its records are in.
    pub chunk: Option<Arc<Prepared>>,
    /// Its records (indices into the chunk's).
    pub range: Range<usize>,
    /// Per shard: its operations (indices into the chunk's operations of that shard).
    pub op_ranges: Vec<Range<usize>>,
    /// Its records that are not live-table events (indices into the chunk's `others`).
    pub others: Range<usize>,
    /// The image and heap of each thread of the run.
    pub bindings: Bindings,
    /// Per shard: the results of its removals and look-ups, in order.
    pub results: Vec<Vec<Option<Block>>>,
    /// Per shard: the blocks its insertions replaced (an allocation at a live address,
    /// which is rare), with the insertion's record index, in order. Insertions that
    /// replaced nothing leave no result: half the operations write and hand over
    /// nothing.
    pub replaced: Vec<Vec<(u32, Block)>>,
    /// Per shard: its removals and look-ups that found no live block, in order.
    pub misses: Vec<Vec<Miss>>,
    /// The misses whose address the shards looked up among the live blocks (see
    /// [`super::describe`]), by record index.
    pub described: Vec<Described>,
    /// The heaps the run uses (ids into `Replay::heaps`).
    pub heaps: Vec<usize>,
    /// Per heap of the run: whether it saw every allocation (only such a heap's misses
    /// are described).
    pub complete: Vec<bool>,
    /// The frees known, when the run was handed over, to be the C library's own
    /// bookkeeping, by (image, stack): their misses are not described.
    pub internal: std::sync::Arc<FastSet<(ImageId, StackId)>>,
    /// The images its threads are bound to.
    pub images: Vec<ImageId>,
    /// The latest timestamp of its live-table events.
    pub max_ts: u64,
    /// A buffer for the frees of the run's summary (recycled from the freed-block
    /// history, so that no run allocates and faults in a fresh one).
    pub freed: Vec<Freed>,
    /// Each of those images' bucket clock before the run, as predicted when the run
    /// was handed over (see [`super::run_summary`]).
    pub clocks: Vec<(ImageId, Clock)>,
}

impl Batch {
    /// The run's chunk.
    #[inline]
    pub fn chunk(&self) -> &Prepared {
        self.chunk.as_deref().expect("a run has a chunk")
    }

    /// The run's records that are not live-table events.
    pub fn others(&self) -> &[u32] {
        &self.chunk().others[self.others.clone()]
    }

    /// The step of record `i` of the chunk, one of the run's (see [`Step`]).
    #[inline]
    pub fn step(&self, i: usize, last: &mut LastBinding) -> Step {
        step(
            &self.chunk().records,
            &self.bindings,
            self.results.len(),
            i,
            last,
        )
    }

    /// Empties the run for reuse, keeping its buffers; gives its chunk back.
    pub fn clear(&mut self) -> Option<Arc<Prepared>> {
        for v in &mut self.results {
            v.clear();
        }
        for v in &mut self.replaced {
            v.clear();
        }
        for v in &mut self.misses {
            v.clear();
        }
        self.described.clear();
        self.complete.clear();
        self.op_ranges.clear();
        self.bindings.clear();
        self.heaps.clear();
        self.images.clear();
        self.max_ts = 0;
        self.clocks.clear();
        self.range = 0..0;
        self.others = 0..0;
        self.chunk.take()
    }
}
