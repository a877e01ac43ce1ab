//! One record of a run, as the batch path sees it: the rules that say what a record
//! does to the live blocks (whether it is a live-table event at all, whether a realloc
//! releases its old block, which address shard an address belongs to), the bindings of
//! the run's threads to images and heaps, and the [`Step`] computed from a record and
//! those bindings. Preparation, the shards, the run summaries and both accounting
//! paths follow these rules; nothing here depends on the replay's state.

use heaptape_format::{AllocFn, Record, StackId, Timestamp};

use super::heap::{Block, ImageId, Live};

/// What the batch path does with one record of a run: computed from the record and the
/// run's bindings where it is needed (by the accounting and the summaries, see
/// [`step`]), never stored.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// Applied as by [`Replay::apply`](super::Replay::apply), in order: a record that is
    /// not a live-table event, or one of a thread whose image has no heap.
    Deferred,
    /// An allocation (non-NULL) in an existing heap.
    Alloc {
        img: u32,
        tid: u32,
        stack: StackId,
        shard: u16,
        ts: Timestamp,
        address: u64,
        size: u64,
    },
    /// A free of a non-NULL pointer in an existing heap.
    Free {
        img: u32,
        tid: u32,
        stack: StackId,
        func: AllocFn,
        shard: u16,
        ts: Timestamp,
        address: u64,
    },
    /// A realloc in an existing heap, other than `realloc(NULL, n)` returning NULL.
    Realloc {
        img: u32,
        tid: u32,
        stack: StackId,
        func: AllocFn,
        old_shard: u16,
        new_shard: u16,
        ts: Timestamp,
        old: u64,
        new: u64,
        size: u64,
    },
}

/// Whether a realloc of `old` to `size` bytes that returned `new` released `old`.
/// glibc: `realloc(p, 0)` frees `p` and returns NULL; a `realloc(p, n)` that fails
/// returns NULL and leaves `p` alone. (Planning, the batch accounting and the
/// record-by-record path all follow this one rule.)
#[inline]
pub(crate) fn realloc_frees_old(old: u64, new: u64, size: u64) -> bool {
    old != 0 && (new != 0 || size == 0)
}

/// Whether `rec` is a live-table event: an allocator call that inserts, removes or
/// looks up a block (allocations and frees of NULL, and `realloc(NULL, n)` returning
/// NULL, change counters only).
#[inline]
pub(crate) fn table_event(rec: &Record) -> bool {
    match *rec {
        Record::Alloc { address, .. } | Record::Free { address, .. } => address != 0,
        Record::Realloc {
            old_address,
            new_address,
            ..
        } => old_address != 0 || new_address != 0,
        _ => false,
    }
}

/// The shard owning `address` among `shards`.
#[inline]
pub(crate) fn shard_of(address: u64, shards: usize) -> usize {
    // One shard (the default on two cores): no hash to compute.
    if shards == 1 {
        0
    } else {
        Live::shard_of(crate::hash::fmix64(address), shards)
    }
}

/// The block an insertion of record `rec` (an allocation or a realloc) by a thread
/// of image `img` makes live.
#[inline]
pub(crate) fn inserted_block(rec: &Record, img: u32) -> Block {
    match *rec {
        Record::Alloc {
            ts,
            func,
            size,
            stack,
            ..
        }
        | Record::Realloc {
            ts,
            func,
            size,
            stack,
            ..
        } => Block {
            size,
            ts,
            stack,
            owner: img as ImageId,
            func,
        },
        _ => unreachable!("only allocations insert"),
    }
}

/// The image and heap a thread's events go to during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub tid: u32,
    /// Its image.
    pub img: u32,
    /// Index into [`Batch::heaps`](super::batch::Batch::heaps) of its image's heap;
    /// `None` if that heap is gone (its events then change counters only, and the run
    /// is accounted for serially).
    pub heap: Option<u16>,
}

/// The bindings of a run's threads, sorted by thread id.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    entries: Vec<Binding>,
}

impl Bindings {
    /// Adds a binding (in any order; [`Bindings::seal`] sorts them).
    pub fn push(&mut self, b: Binding) {
        self.entries.push(b);
    }

    /// Sorts the bindings for look-ups.
    pub fn seal(&mut self) {
        self.entries.sort_unstable_by_key(|b| b.tid);
    }

    /// The binding of `tid`, if the run has one.
    #[inline]
    pub fn get(&self, tid: u32) -> Option<Binding> {
        match self.entries.as_slice() {
            [only] => (only.tid == tid).then_some(*only),
            all => all
                .binary_search_by_key(&tid, |b| b.tid)
                .ok()
                .map(|i| all[i]),
        }
    }

    /// The image, if every thread is bound to it and its heap is the run's first.
    #[inline]
    pub fn single_heap(&self) -> Option<u32> {
        let first = self.entries.first()?;
        self.entries
            .iter()
            .all(|b| b.img == first.img && b.heap == Some(0))
            .then_some(first.img)
    }

    /// Whether a thread's image has no heap.
    pub fn headless(&self) -> bool {
        self.entries.iter().any(|b| b.heap.is_none())
    }

    /// Empties it for another run.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// A one-entry cache in front of [`Bindings::get`] (consecutive events mostly come from
/// one thread).
#[derive(Debug, Default)]
pub(crate) struct LastBinding(Option<Binding>);

impl LastBinding {
    #[inline]
    pub fn get(&mut self, bindings: &Bindings, tid: u32) -> Option<Binding> {
        match self.0 {
            Some(b) if b.tid == tid => Some(b),
            _ => {
                self.0 = bindings.get(tid);
                self.0
            }
        }
    }
}

/// The heap (index into the batch's) and image of thread `tid`'s operations, `None`
/// for a thread whose image has no heap (its operations are skipped), through the
/// one-entry cache `last`.
#[inline]
pub(crate) fn heap_of(bindings: &Bindings, last: &mut LastBinding, tid: u32) -> Option<(u16, u32)> {
    match last.get(bindings, tid) {
        Some(Binding {
            heap: Some(h), img, ..
        }) => Some((h, img)),
        _ => None,
    }
}

/// The step of record `i` of a chunk's `records` in a run with `bindings` and `shards` address
/// shards (see [`Step`]). Always inlined: a call per record, returning the step through
/// memory, cost 5% of a one-core replay.
#[inline(always)]
pub(crate) fn step(
    records: &[Record],
    bindings: &Bindings,
    shards: usize,
    i: usize,
    last: &mut LastBinding,
) -> Step {
    let rec = &records[i];
    let tid = match *rec {
        Record::Alloc { tid, .. } | Record::Free { tid, .. } | Record::Realloc { tid, .. }
            if table_event(rec) =>
        {
            tid
        }
        _ => return Step::Deferred,
    };
    let img = match last.get(bindings, tid) {
        Some(Binding {
            img, heap: Some(_), ..
        }) => img,
        // A thread of an image without a heap: counters only.
        _ => return Step::Deferred,
    };
    let shard = |address| shard_of(address, shards) as u16;
    match *rec {
        Record::Alloc {
            ts,
            address,
            size,
            stack,
            ..
        } => Step::Alloc {
            img,
            tid,
            stack,
            shard: shard(address),
            ts,
            address,
            size,
        },
        Record::Free {
            ts,
            func,
            address,
            stack,
            ..
        } => Step::Free {
            img,
            tid,
            stack,
            func,
            shard: shard(address),
            ts,
            address,
        },
        Record::Realloc {
            ts,
            func,
            old_address: old,
            new_address: new,
            size,
            stack,
            ..
        } => Step::Realloc {
            img,
            tid,
            stack,
            func,
            old_shard: shard(old),
            new_shard: shard(new),
            ts,
            old,
            new,
            size,
        },
        _ => unreachable!("a live-table event"),
    }
}
