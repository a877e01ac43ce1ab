//! The accounting of allocator events: what an allocation, a free or a realloc does to
//! its image's totals, call sites, peak and temporaries, to the heap's freed-block
//! history, and which bad frees it reports (double, invalid, mismatched, or the C
//! library's own bookkeeping). Both paths use it: the record-by-record one
//! ([`Replay::apply`]) and the serial accounting of a run whose shards are done
//! ([`Replay::account`]; runs that are summarized instead are merged by the pipeline).

use heaptape_format::{AllocFn, StackId, Timestamp};

use super::batch::Batch;
use super::heap::{Block, ImageId};
use super::lifecycle::Thread;
use super::step::{realloc_frees_old, step, LastBinding, Step};
use super::Replay;
use crate::checks::{BadFreeBlock, Finding, FindingKind, Occurrence};
use crate::hash::FastMap;
use crate::modules::is_libc_path;

/// The batch path's copy of one thread's latest allocation (see [`Thread`]), so that
/// consecutive steps of one thread look it up once.
#[derive(Debug, Default)]
struct HotThread {
    tid: u32,
    /// Whether `tid`'s state is here (it is then authoritative).
    loaded: bool,
    /// Whether the thread is bound (an unbound thread has no latest allocation).
    bound: bool,
    last_alloc: Option<(ImageId, u64)>,
}

impl HotThread {
    /// Puts the cached state back into `threads`.
    fn write_back(&mut self, threads: &mut FastMap<u32, Thread>) {
        if self.loaded && self.bound {
            if let Some(t) = threads.get_mut(&self.tid) {
                t.last_alloc = self.last_alloc;
            }
        }
        self.loaded = false;
    }

    /// The state of `tid`, loaded if another thread's is cached.
    #[inline]
    fn get(&mut self, threads: &mut FastMap<u32, Thread>, tid: u32) -> &mut Self {
        if !self.loaded || self.tid != tid {
            self.write_back(threads);
            let t = threads.get(&tid);
            *self = HotThread {
                tid,
                loaded: true,
                bound: t.is_some(),
                last_alloc: t.and_then(|t| t.last_alloc),
            };
        }
        self
    }

    /// The thread allocated at `address` in image `img`.
    #[inline]
    fn allocated(&mut self, img: ImageId, address: u64) {
        if self.bound {
            self.last_alloc = Some((img, address));
        }
    }

    /// The thread released `address`, which held `removed`: whether that was its
    /// latest allocation (temporary), which it then no longer is.
    #[inline]
    fn freed(&mut self, removed: Option<Block>, address: u64) -> bool {
        self.bound && frees_latest(&mut self.last_alloc, removed, address)
    }
}

/// Whether releasing `address`, which held `removed`, frees its thread's latest
/// allocation `last_alloc` (the allocation is then temporary, and no longer the latest).
#[inline]
fn frees_latest(
    last_alloc: &mut Option<(ImageId, u64)>,
    removed: Option<Block>,
    address: u64,
) -> bool {
    match removed {
        Some(b) if *last_alloc == Some((b.owner, address)) => {
            *last_alloc = None;
            true
        }
        _ => false,
    }
}

/// A call that releases a block (a free, or the old block of a realloc), as the
/// release accounting needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Release {
    pub(super) img: ImageId,
    pub(super) tid: u32,
    pub(super) ts: Timestamp,
    pub(super) func: AllocFn,
    pub(super) address: u64,
    pub(super) stack: StackId,
    /// A plain free, which may turn out to be allocator bookkeeping.
    pub(super) may_be_internal: bool,
    /// Where to learn which live block the address lay in, should it be no block's
    /// start.
    pub(super) inside: Inside,
}

/// Which live block a released address lay in when it is no live block's start (see
/// [`Replay::release_bad`]), as the caller knows it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Inside {
    /// The heap's live blocks are at hand, as they were at the release: look there.
    Look,
    /// The run's shards looked when it happened (see [`super::describe`]): the block
    /// and its start, if any (`None` too for a miss they did not describe).
    Known(Option<(u64, Block)>),
}

impl Release {
    /// A finding about this call, first seen now: of `kind`, about the block the
    /// address fell in, if any (`alloc`: its allocating function and stack;
    /// `previous_free_stack`: where it was freed, if it was).
    fn finding(
        &self,
        kind: FindingKind,
        block: Option<(BadFreeBlock, AllocFn, StackId)>,
        previous_free_stack: Option<StackId>,
    ) -> Finding {
        Finding {
            kind,
            free_fn: self.func,
            free_stack: self.stack,
            alloc_fn: block.map(|b| b.1),
            alloc_stack: block.map(|b| b.2),
            previous_free_stack,
            count: 1,
            first: Occurrence {
                address: self.address,
                tid: self.tid,
                ts: self.ts,
                size: block.map(|b| b.0.size),
                block: block.map(|b| b.0),
            },
        }
    }

    /// The block at `start` of `size` bytes, which the address fell in.
    fn block(&self, start: u64, size: u64, freed: bool) -> BadFreeBlock {
        BadFreeBlock {
            address: start,
            size,
            offset: self.address.wrapping_sub(start),
            freed,
        }
    }
}

/// Functions of a statically linked C library whose frees are allocator bookkeeping:
/// glibc's `tcache_thread_shutdown`, which a static build inlines into
/// `__malloc_arena_thread_freeres` (only the latter is in the symbol table then).
pub const INTERNAL_FREE_FUNCTIONS: &[&str] =
    &["tcache_thread_shutdown", "__malloc_arena_thread_freeres"];

impl Replay {
    /// Whether a bad free from `stack` in image `img` is allocator bookkeeping (see
    /// [`Replay::set_symbolizer`]).
    pub(super) fn allocator_internal(&mut self, img: ImageId, stack: StackId) -> bool {
        if let Some(&known) = self.internal_frees.get(&(img, stack)) {
            return known;
        }
        let modules = &self.images[img].modules;
        let verdict = match self.stacks.iter(stack).next() {
            None => false,
            Some(caller) => match modules.lookup(caller) {
                Some(hit) if is_libc_path(&hit.module.path) => true,
                _ if modules.modules().iter().any(|m| is_libc_path(&m.path)) => false,
                _ => self.symbolizer.as_ref().is_some_and(|sym| {
                    sym.symbolize(modules, caller, true).iter().any(|f| {
                        f.function
                            .as_deref()
                            .is_some_and(|name| INTERNAL_FREE_FUNCTIONS.contains(&name))
                    })
                }),
            },
        };
        self.internal_frees.insert((img, stack), verdict);
        if verdict {
            std::sync::Arc::make_mut(&mut self.internal_known).insert((img, stack));
        }
        verdict
    }

    /// The accounting of a run whose shards are done, in file order; its buffers are
    /// kept for a later run.
    pub(super) fn account(&mut self, mut batch: Batch) {
        self.runs_serial += 1;
        let chunk = batch.chunk.clone().expect("a run has a chunk");
        let shards = batch.results.len();
        // The accounting, in file order.
        let mut results: Vec<std::vec::Drain<'_, Option<Block>>> =
            batch.results.iter_mut().map(|r| r.drain(..)).collect();
        let mut next = |shard: u16| -> Option<Block> {
            results[usize::from(shard)]
                .next()
                .expect("one result per shard removal or look-up")
        };
        let mut replaced: Vec<_> = batch
            .replaced
            .iter_mut()
            .map(|r| r.drain(..).peekable())
            .collect();
        // The live block each described miss's address lay in, by record index.
        let mut described = batch.described.drain(..).peekable();
        let mut inside = |i: u32| -> Inside {
            while described.next_if(|&(j, _)| j < i).is_some() {}
            Inside::Known(described.next_if(|&(j, _)| j == i).and_then(|(_, hit)| hit))
        };
        // The block the insertion of record `i` replaced.
        let mut replaced_at = |shard: u16, i: u32| -> Option<Block> {
            let r = &mut replaced[usize::from(shard)];
            r.next_if(|&(s, _)| s == i).map(|(_, b)| b)
        };
        // The latest allocation of the thread of the latest step, written back to
        // `self.threads` when another thread comes, before a deferred record and at the
        // end (no deferred record reads it, but this keeps the rule simple).
        let mut hot = HotThread::default();
        let mut last = LastBinding::default();
        for i in batch.range.clone() {
            let step = step(&chunk.records, &batch.bindings, shards, i, &mut last);
            let i = i as u32;
            match step {
                Step::Deferred => {
                    hot.write_back(&mut self.threads);
                    self.apply_now(chunk.records[i as usize].clone());
                }
                Step::Alloc {
                    img,
                    tid,
                    ts,
                    address,
                    size,
                    stack,
                    shard,
                    ..
                } => {
                    let img = img as ImageId;
                    self.count_alloc_event(ts);
                    let old = replaced_at(shard, i);
                    self.allocated(img, ts, size, stack, old);
                    hot.get(&mut self.threads, tid).allocated(img, address);
                }
                Step::Free {
                    img,
                    tid,
                    ts,
                    func,
                    address,
                    stack,
                    shard,
                } => {
                    let img = img as ImageId;
                    self.count_alloc_event(ts);
                    self.images[img].totals.frees += 1;
                    let removed = next(shard);
                    let temporary = hot.get(&mut self.threads, tid).freed(removed, address);
                    let r = Release {
                        img,
                        tid,
                        ts,
                        func,
                        address,
                        stack,
                        // The release part of a realloc that moved its block (the ring
                        // recorder writes it as a free) is the program's own call.
                        may_be_internal: !matches!(func, AllocFn::Realloc | AllocFn::Reallocarray),
                        inside: if removed.is_none() {
                            inside(i)
                        } else {
                            Inside::Known(None)
                        },
                    };
                    self.released(r, removed, temporary);
                }
                Step::Realloc {
                    img,
                    tid,
                    ts,
                    func,
                    old,
                    new,
                    size,
                    stack,
                    old_shard,
                    new_shard,
                } => {
                    let img = img as ImageId;
                    self.count_alloc_event(ts);
                    // As `Replay::realloc`.
                    let frees_old = realloc_frees_old(old, new, size);
                    let r = Release {
                        img,
                        tid,
                        ts,
                        func,
                        address: old,
                        stack,
                        may_be_internal: false,
                        inside: Inside::Known(None),
                    };
                    if frees_old {
                        self.images[img].totals.frees += 1;
                        let removed = next(old_shard);
                        let temporary = hot.get(&mut self.threads, tid).freed(removed, old);
                        let r = match removed {
                            None => Release {
                                inside: inside(i),
                                ..r
                            },
                            Some(_) => r,
                        };
                        self.released(r, removed, temporary);
                    } else if old != 0 {
                        self.images[img].totals.failed_allocations += 1;
                        let live = next(old_shard).is_some();
                        if !live && self.bad_pointer(img, old) {
                            let r = Release {
                                inside: inside(i),
                                ..r
                            };
                            self.released(r, None, false);
                        }
                        continue;
                    }
                    if new != 0 {
                        let old_block = replaced_at(new_shard, i);
                        self.allocated(img, ts, size, stack, old_block);
                        hot.get(&mut self.threads, tid).allocated(img, new);
                    } else if old == 0 {
                        self.images[img].totals.failed_allocations += 1;
                    }
                }
            }
        }
        hot.write_back(&mut self.threads);
        drop(results);
        drop(replaced);
        drop(described);
        drop(chunk);
        self.recycle(batch);
    }

    /// Records an RSS sample beside the live bytes of its process's image, plus that
    /// image's entry in `deltas` (a summarized run's change up to the sample, see
    /// [`super::run_summary`]; none when the image's figures are current).
    pub(super) fn sample_rss(&mut self, s: &heaptape_format::RssSample, deltas: &[(ImageId, i64)]) {
        if let Some(p) = self.running(s.pid) {
            let img = self.procs[p].current();
            let delta = deltas.iter().find(|d| d.0 == img).map_or(0, |d| d.1);
            let image = &mut self.images[img];
            let live = (image.live_bytes as i64 + delta) as u64;
            let mapped = image.resources.own_mapped_bytes();
            image.timeline.sample(s.ts, live, mapped, s.rss, s.anon);
        }
    }

    /// [`Replay::apply`]'s bookkeeping of an allocator event.
    #[inline]
    pub(super) fn count_alloc_event(&mut self, ts: Timestamp) {
        self.last_ts = self.last_ts.max(ts);
        self.records += 1;
        self.alloc_events += 1;
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate(
        &mut self,
        img: ImageId,
        tid: u32,
        ts: Timestamp,
        func: AllocFn,
        address: u64,
        size: u64,
        stack: StackId,
    ) {
        let heap_id = self.images[img].heap;
        let Some(heap) = self.heaps.get_mut(heap_id).and_then(Option::as_mut) else {
            return;
        };
        let block = Block {
            size,
            ts,
            stack,
            owner: img,
            func,
        };
        let old = heap.live.insert(address, block);
        self.allocated(img, ts, size, stack, old);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.last_alloc = Some((img, address));
        }
    }

    /// The accounting of an allocation whose block was made live (in an existing
    /// heap), replacing `old` if a block was still live at its address. The caller
    /// makes it its thread's latest allocation.
    #[inline]
    pub(super) fn allocated(
        &mut self,
        img: ImageId,
        ts: Timestamp,
        size: u64,
        stack: StackId,
        old: Option<Block>,
    ) {
        if let Some(old) = old {
            self.anomalies.alloc_at_live_address += 1;
            if let Some(owner) = self.images.get_mut(old.owner) {
                owner.remove_live(old.stack, old.size, false, ts);
            }
        }
        self.images[img].add_live(stack, size, ts, true);
    }

    /// Releases `r.address` on behalf of image `r.img` (the free itself is already
    /// counted).
    pub(super) fn release(&mut self, r: Release) {
        let heap_id = self.images[r.img].heap;
        let Some(heap) = self.heaps.get_mut(heap_id).and_then(Option::as_mut) else {
            return;
        };
        // The common case first: one lookup that removes the live block.
        let removed = heap.live.remove(r.address);
        let temporary = self
            .threads
            .get_mut(&r.tid)
            .is_some_and(|t| frees_latest(&mut t.last_alloc, removed, r.address));
        self.released(r, removed, temporary);
    }

    /// The accounting of a release (in an existing heap) that removed `removed` from
    /// the live blocks (`None`: the address was not live); `temporary`: the block was
    /// its thread's latest allocation (the caller checked and cleared that).
    #[inline]
    pub(super) fn released(&mut self, r: Release, removed: Option<Block>, temporary: bool) {
        let Some(block) = removed else {
            self.release_bad(r);
            return;
        };
        if let Some(heap) = self
            .heaps
            .get_mut(self.images[r.img].heap)
            .and_then(Option::as_mut)
        {
            heap.remember_free(r.address, block.stack, block.func, r.stack, block.size);
        }
        if block.func.family() != r.func.family() {
            let at = r.block(r.address, block.size, false);
            self.images[r.img].findings.add(r.finding(
                FindingKind::MismatchedFree,
                Some((at, block.func, block.stack)),
                None,
            ));
        }
        self.images[block.owner].remove_live(block.stack, block.size, temporary, r.ts);
    }

    /// [`Replay::release`] of an address that is not live: allocator bookkeeping, a
    /// double free, an invalid free, or (in an attached heap) an untracked one. The
    /// finding names the block the address fell in, as memcheck does: a block freed
    /// before at that very address (a double free), else a live block it lay inside,
    /// else a remembered freed block it lay inside (a stale pointer), else none.
    #[cold]
    pub(super) fn release_bad(&mut self, r: Release) {
        let Release {
            img,
            address,
            stack,
            may_be_internal,
            ..
        } = r;
        let heap_id = self.images[img].heap;
        let Some(heap) = self.heaps.get(heap_id).and_then(Option::as_ref) else {
            return;
        };
        if may_be_internal
            && (heap.complete || heap.freed(address).is_some())
            && self.allocator_internal(img, stack)
        {
            let totals = &mut self.images[img].totals;
            totals.frees = totals.frees.saturating_sub(1);
            totals.allocator_internal_frees += 1;
            return;
        }
        let Some(heap) = self.heaps.get(heap_id).and_then(Option::as_ref) else {
            return;
        };
        let f = if let Some(prev) = heap.freed(address) {
            let at = r.block(prev.address, prev.size, true);
            r.finding(
                FindingKind::DoubleFree,
                Some((at, prev.alloc_fn, prev.alloc_stack)),
                Some(prev.free_stack),
            )
        } else if !heap.complete {
            self.images[img].totals.untracked_frees += 1;
            return;
        } else {
            let live = match r.inside {
                Inside::Look => heap.live.containing(address),
                Inside::Known(hit) => hit,
            };
            if let Some((start, b)) = live {
                let at = r.block(start, b.size, false);
                r.finding(FindingKind::InvalidFree, Some((at, b.func, b.stack)), None)
            } else if let Some(prev) = heap.freed_containing(address) {
                let at = r.block(prev.address, prev.size, true);
                r.finding(
                    FindingKind::InvalidFree,
                    Some((at, prev.alloc_fn, prev.alloc_stack)),
                    Some(prev.free_stack),
                )
            } else {
                r.finding(FindingKind::InvalidFree, None, None)
            }
        };
        self.images[img].findings.add(f);
    }

    /// Whether `old`, a pointer that is not a live block of image `img`'s heap, is a
    /// bad one (its failed realloc is worth reporting): the heap saw every allocation,
    /// or it freed `old` before. Not in an attached heap's unknown past, nor without a
    /// heap.
    pub(super) fn bad_pointer(&self, img: ImageId, old: u64) -> bool {
        self.heaps
            .get(self.images[img].heap)
            .and_then(Option::as_ref)
            .is_some_and(|h| h.complete || h.freed(old).is_some())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn realloc(
        &mut self,
        img: ImageId,
        tid: u32,
        ts: Timestamp,
        func: AllocFn,
        old: u64,
        new: u64,
        size: u64,
        stack: StackId,
    ) {
        let frees_old = realloc_frees_old(old, new, size);
        let r = Release {
            img,
            tid,
            ts,
            func,
            address: old,
            stack,
            may_be_internal: false,
            inside: Inside::Look,
        };
        if frees_old {
            self.images[img].totals.frees += 1;
            self.release(r);
        } else if old != 0 {
            // Failed: nothing changes, but a bad pointer is still worth reporting.
            self.images[img].totals.failed_allocations += 1;
            let live = self
                .heaps
                .get(self.images[img].heap)
                .and_then(Option::as_ref)
                .is_some_and(|h| h.live.contains_key(old));
            if !live && self.bad_pointer(img, old) {
                self.release(r);
            }
            return;
        }
        if new != 0 {
            self.allocate(img, tid, ts, func, new, size, stack);
        } else if old == 0 {
            self.images[img].totals.failed_allocations += 1;
        }
    }
}
