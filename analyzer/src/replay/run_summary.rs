//! Run summaries: the accounting of a run of allocator events, computed off the
//! replaying thread and merged in file order.
//!
//! # Why
//!
//! The replay's last pass, the accounting (call sites, growth series, live totals, the
//! peak, temporaries), used to run on the replaying thread, event by event, in file
//! order: a quarter of a replay's work done by one thread whatever the number of
//! cores. But a run's accounting depends on the state before it only through a few
//! numbers per image, per call site and per thread, so it can be computed *relative*
//! to that unknown state, on the pool, several runs at once, and merged afterwards at
//! a cost that grows with the call sites and threads the run touched, not with its
//! events:
//!
//! * counts (allocations, bytes, frees) add up;
//! * live bytes and blocks (per image, per site) are a start value plus the run's
//!   deltas; the run keeps the lowest prefix of each delta, so the merge can check
//!   that no figure would have gone below zero (the serial path saturates there);
//! * the peak: the run keeps the ascending *record highs* of its image's live-byte
//!   prefix. With the live bytes `base` before the run and the peak `peak` so far, the
//!   record highs above `peak - base` are exactly the new highs the serial path would
//!   have seen, and each site's figures at the last of them are its delta there (kept
//!   with the same lazy epoch rule as [`crate::callsites`]);
//! * growth series: a site's series only changes where its (bucket width, bucket)
//!   changes; the run keeps, per site, one entry per such stretch with the relative live
//!   bytes at its first and last touch. The bucket widths follow the image's clock,
//!   which depends only on timestamps: the run starts from the clock the replaying thread
//!   predicted, and the merge checks the prediction;
//! * temporaries: a free before its thread's first allocation in the run is temporary
//!   iff the block is the thread's latest allocation from before the run; such frees
//!   are kept as pending checks, resolved by the merge in order;
//! * the freed-block history (for telling double frees from invalid ones): the run's
//!   frees, in order, become one chunk of the heap's history, moved, not copied.
//!
//! Runs whose events need the whole state (a free of an address that is not live, an
//! allocation at a live address, a mismatched free, a block freed by another image
//! than its owner, frees by two images, a failed realloc of a pointer that is not
//! live) are not summarized: the merge then runs
//! the serial accounting on them, so their results are exactly the serial path's.
//! The summary is a pure function of the run and the shards' results; the merge checks
//! its assumptions (the image is open, the predicted clock is the real one, no figure
//! goes below zero) and falls back to the serial accounting when one fails.

use heaptape_format::{Record, StackId, Timestamp};

use super::batch::Batch;
use super::heap::{Block, Freed, ImageId};
use super::step::{realloc_frees_old, LastBinding, Step};
use crate::callsites::{Clock, SiteSummary, Stretch};
use crate::hash::FastMap;

/// Largest block size a summary handles (larger ones, if any, take the serial path, so
/// that a run's byte deltas cannot overflow an `i64`).
const MAX_SIZE: u64 = 1 << 44;

/// The accounting of one run relative to the state before it (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RunSummary {
    /// Allocator steps in the run.
    pub steps: u64,
    /// Their latest timestamp.
    pub max_ts: Timestamp,
    /// Per image the run touched, in order of first touch.
    pub images: Vec<ImageSummary>,
    /// Per thread that made an allocator call, in order of first call.
    pub threads: Vec<ThreadSummary>,
    /// The run's valid frees, in order, for the freed-block history of the heap of
    /// `freed_by` (the image that made them all: a run whose frees come from several
    /// images is accounted for serially).
    pub freed: Vec<Freed>,
    pub freed_by: Option<ImageId>,
    /// Per RSS sample among the run's other records (by its index among them): the
    /// relative live bytes of each image touched so far, which the sample records
    /// beside the process's RSS.
    pub rss: Vec<(usize, Vec<(ImageId, i64)>)>,
}

/// One image's accounting in a run.
#[derive(Debug)]
pub(crate) struct ImageSummary {
    pub img: ImageId,
    /// The clock the run started from (predicted when the run was handed over).
    pub start_clock: Clock,
    /// The clock after the run.
    pub end_clock: Clock,
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub frees: u64,
    pub failed_allocations: u64,
    /// Temporaries found within the run (pending ones are the threads').
    pub temporaries: u64,
    /// Live bytes and blocks: change over the run, and lowest prefix (at most 0).
    pub d_bytes: i64,
    pub d_blocks: i64,
    pub min_bytes: i64,
    pub min_blocks: i64,
    /// Record highs of the live-byte prefix (ascending, all above 0).
    pub highs: Vec<i64>,
    /// Live blocks (relative) and time at the last record high.
    pub high_blocks: i64,
    pub high_ts: Timestamp,
    /// Its sites, in order of first touch.
    pub sites: Vec<SiteSummary>,
    index: FastMap<StackId, u32>,
    /// A direct-mapped cache of `index` (see [`crate::callsites::SiteTable`]).
    cache: [(StackId, u32); 64],
}

/// One thread's calls in a run.
#[derive(Debug)]
pub(crate) struct ThreadSummary {
    pub tid: u32,
    /// `Some(latest)` once the thread allocated (or its earlier latest allocation was
    /// found freed) in the run: its latest allocation at the end of the run.
    pub latest: Option<Option<(ImageId, u64)>>,
    /// Frees made before `latest` was known: temporary iff the block is the thread's
    /// latest allocation from before the run (checked by the merge, in order).
    pub pending: Vec<(ImageId, u64, StackId)>,
}

impl ImageSummary {
    fn new(img: ImageId, clock: Clock) -> Self {
        ImageSummary {
            img,
            start_clock: clock,
            end_clock: clock,
            allocations: 0,
            allocated_bytes: 0,
            frees: 0,
            failed_allocations: 0,
            temporaries: 0,
            d_bytes: 0,
            d_blocks: 0,
            min_bytes: 0,
            min_blocks: 0,
            highs: Vec::new(),
            high_blocks: 0,
            high_ts: 0,
            sites: Vec::new(),
            index: FastMap::default(),
            cache: [(0, 0); 64],
        }
    }

    /// The site of `stack`, touched at `ts` as
    /// [`SiteTable::touch_at`](crate::callsites::SiteTable::touch_at)
    /// does: its bucket stretch, highest touch and high figures brought up to date.
    #[inline]
    fn touch(&mut self, stack: StackId, ts: Timestamp) -> usize {
        let bucket = self.end_clock.advance(ts);
        let shift = self.end_clock.shift();
        let slot = stack as usize % self.cache.len();
        let i = match self.cache[slot] {
            (s, i) if i != 0 && s == stack => (i - 1) as usize,
            _ => {
                let sites = &mut self.sites;
                let i = *self.index.entry(stack).or_insert_with(|| {
                    sites.push(SiteSummary::new(stack));
                    (sites.len() - 1) as u32
                });
                self.cache[slot] = (stack, i + 1);
                i as usize
            }
        };
        let epoch = self.highs.len();
        let site = &mut self.sites[i];
        site.sync_high(epoch);
        match site.stretches.last_mut() {
            Some(s) if s.shift == shift && s.bucket == bucket => s.last = site.d_bytes,
            _ => site.stretches.push(Stretch {
                shift,
                bucket,
                first: site.d_bytes,
                last: site.d_bytes,
            }),
        }
        site.max_touch_bytes = site.max_touch_bytes.max(site.d_bytes);
        i
    }

    /// As `Image::add_live` for an allocation.
    #[inline]
    fn allocated(&mut self, stack: StackId, size: u64, ts: Timestamp) {
        let i = self.touch(stack, ts);
        let site = &mut self.sites[i];
        let size = size as i64;
        site.allocations += 1;
        site.allocated_bytes += size as u64;
        site.d_blocks += 1;
        site.d_bytes += size;
        self.allocations += 1;
        self.allocated_bytes += size as u64;
        self.d_blocks += 1;
        self.d_bytes += size;
        if self.d_bytes > self.highs.last().copied().unwrap_or(0) {
            self.highs.push(self.d_bytes);
            self.high_blocks = self.d_blocks;
            self.high_ts = ts;
        }
    }

    /// As `Image::remove_live`.
    #[inline]
    fn released(&mut self, stack: StackId, size: u64, temporary: bool, ts: Timestamp) {
        let i = self.touch(stack, ts);
        let site = &mut self.sites[i];
        let size = size as i64;
        site.d_blocks -= 1;
        site.d_bytes -= size;
        site.min_blocks = site.min_blocks.min(site.d_blocks);
        site.min_bytes = site.min_bytes.min(site.d_bytes);
        site.frees += 1;
        if temporary {
            site.temporaries += 1;
            self.temporaries += 1;
        }
        self.d_blocks -= 1;
        self.d_bytes -= size;
        self.min_blocks = self.min_blocks.min(self.d_blocks);
        self.min_bytes = self.min_bytes.min(self.d_bytes);
    }

    /// Brings every site's high figures to the run's last record high.
    fn settle(&mut self) {
        let epoch = self.highs.len();
        for site in &mut self.sites {
            site.sync_high(epoch);
        }
    }
}

/// What a thread's latest allocation is known to be while a run is summarized.
impl ThreadSummary {
    /// A free of `address` (block `b`) by this thread: whether it is known to be
    /// temporary (`None`: it is pending).
    #[inline]
    fn frees(&mut self, address: u64, b: &Block) -> Option<bool> {
        match &mut self.latest {
            Some(latest) => {
                let temporary = *latest == Some((b.owner, address));
                if temporary {
                    *latest = None;
                }
                Some(temporary)
            }
            None => {
                self.pending.push((b.owner, address, b.stack));
                None
            }
        }
    }
}

/// Why a run is left to the serial accounting.
struct Serial;

/// The summary of `batch`, whose shards have run, or `None` if the run must be
/// accounted for serially (see the module docs). `batch.clocks` holds the predicted
/// clock of every image its steps name. The summary collects the run's frees in
/// `freed` (emptied first), a buffer recycled from the freed-block history.
pub(crate) fn summarize(batch: &Batch, freed: Vec<Freed>) -> Option<RunSummary> {
    summarize_or_serial(batch, freed).ok()
}

fn summarize_or_serial(batch: &Batch, mut freed: Vec<Freed>) -> Result<RunSummary, Serial> {
    freed.clear();
    let mut sum = RunSummary {
        freed,
        ..RunSummary::default()
    };
    let mut cursors = vec![0usize; batch.results.len()];
    let mut next = |shard: u16| -> Result<Option<Block>, Serial> {
        let s = usize::from(shard);
        let r = batch.results.get(s).and_then(|r| r.get(cursors[s]));
        cursors[s] += 1;
        r.copied().ok_or(Serial)
    };
    // A thread whose image has no heap makes steps that are applied as other records:
    // the serial accounting does that.
    if batch.bindings.headless() {
        return Err(Serial);
    }
    let chunk = batch.chunk();
    let mut deferred = batch.others().iter().enumerate();
    // The index of the latest image and thread used (most steps repeat them), and of
    // every thread (a program may have thousands).
    let mut last_img: Option<(u32, usize)> = None;
    let mut last_tid: Option<(u32, usize)> = None;
    let mut thread_index: FastMap<u32, usize> = FastMap::default();
    // An allocation at a live address (an insertion that replaced a block) needs the
    // serial accounting.
    if batch.replaced.iter().any(|r| !r.is_empty()) {
        return Err(Serial);
    }
    let mut last = LastBinding::default();
    for i in batch.range.clone() {
        let step = batch.step(i, &mut last);
        let (img, tid, ts) = match step {
            Step::Deferred => {
                match deferred
                    .next()
                    .map(|(k, &j)| (k, &chunk.records[j as usize]))
                {
                    // Its sample reads the live total at this point.
                    Some((i, Record::RssSample(_))) => sum.rss.push((
                        i,
                        sum.images.iter().map(|im| (im.img, im.d_bytes)).collect(),
                    )),
                    Some(_) => {}
                    None => return Err(Serial),
                }
                continue;
            }
            Step::Alloc { img, tid, ts, .. }
            | Step::Free { img, tid, ts, .. }
            | Step::Realloc { img, tid, ts, .. } => (img, tid, ts),
        };
        sum.steps += 1;
        sum.max_ts = sum.max_ts.max(ts);
        let i = match last_img {
            Some((m, i)) if m == img => i,
            _ => {
                let i = match sum.images.iter().position(|s| s.img == img as ImageId) {
                    Some(i) => i,
                    None => {
                        let clock = batch
                            .clocks
                            .iter()
                            .find(|(m, _)| *m == img as ImageId)
                            .map(|(_, c)| *c)
                            .ok_or(Serial)?;
                        sum.images.push(ImageSummary::new(img as ImageId, clock));
                        sum.images.len() - 1
                    }
                };
                last_img = Some((img, i));
                i
            }
        };
        let t = match last_tid {
            Some((t, k)) if t == tid => k,
            _ => {
                let threads = &mut sum.threads;
                let k = *thread_index.entry(tid).or_insert_with(|| {
                    threads.push(ThreadSummary {
                        tid,
                        latest: None,
                        pending: Vec::new(),
                    });
                    threads.len() - 1
                });
                last_tid = Some((tid, k));
                k
            }
        };
        let image = &mut sum.images[i];
        let thread = &mut sum.threads[t];
        let img = img as ImageId;
        // What the step releases (a free, or the old block of a realloc that frees it):
        // the shard, address, function and stack; and what it allocates: the address,
        // size and stack.
        let (release, allocate) = match step {
            Step::Deferred => unreachable!("handled above"),
            Step::Alloc {
                address,
                size,
                stack,
                ..
            } => (None, Some((address, size, stack))),
            Step::Free {
                func,
                address,
                stack,
                shard,
                ..
            } => (Some((shard, address, func, stack)), None),
            Step::Realloc {
                func,
                old,
                new,
                size,
                stack,
                old_shard,
                ..
            } => {
                let frees_old = realloc_frees_old(old, new, size);
                if !frees_old && old != 0 {
                    // A failed realloc: nothing changes if the pointer is live.
                    image.failed_allocations += 1;
                    if next(old_shard)?.is_none() {
                        return Err(Serial);
                    }
                    continue;
                }
                if new == 0 && old == 0 {
                    image.failed_allocations += 1;
                }
                (
                    frees_old.then_some((old_shard, old, func, stack)),
                    (new != 0).then_some((new, size, stack)),
                )
            }
        };
        if let Some((shard, address, func, stack)) = release {
            image.frees += 1;
            let b = next(shard)?.ok_or(Serial)?;
            if b.owner != img
                || b.func.family() != func.family()
                || b.size >= MAX_SIZE
                || *sum.freed_by.get_or_insert(img) != img
            {
                return Err(Serial);
            }
            let temporary = thread.frees(address, &b) == Some(true);
            sum.freed.push(Freed {
                address,
                alloc_stack: b.stack,
                free_stack: stack,
                size: b.size,
                alloc_fn: b.func,
            });
            image.released(b.stack, b.size, temporary, ts);
        }
        if let Some((address, size, stack)) = allocate {
            if size >= MAX_SIZE {
                return Err(Serial);
            }
            image.allocated(stack, size, ts);
            thread.latest = Some(Some((img, address)));
        }
    }
    for image in &mut sum.images {
        image.settle();
    }
    Ok(sum)
}
