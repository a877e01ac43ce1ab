//! The batch pipeline: how a prepared chunk's records flow through the replay (see
//! [`Replay::apply_prepared`]). Runs of allocator events are bound to their threads'
//! images and heaps here, handed to the shard thread ([`super::shards`]), then
//! accounted for, through a run summary computed on the pool and merged in file order
//! ([`super::run_summary`]) or serially ([`Replay::account`]); the records that end a
//! run are applied alone, in order.

use std::ops::Range;
use std::sync::{mpsc, Arc};

use heaptape_format::Record;

use super::batch::Batch;
use super::prepare::{Prepared, MAX_RECORDS};
use super::run_summary::RunSummary;
use super::shards::{Lent, Shards, RUNS_AHEAD};
use super::step::Binding;
use super::Replay;

/// Runs whose summaries may be pending after a merge: with more, the oldest is merged
/// (waiting for it if need be). One per rayon thread, at least two: summaries are a
/// quarter of a replay's work, and they must be able to run on every core at once.
fn summaries_ahead() -> usize {
    rayon::current_num_threads().max(2)
}

/// Fewest rayon threads with which runs are summarized on the pool (see
/// [`super::run_summary`]); with fewer (one core), the replaying thread accounts for them
/// itself.
///
/// Summaries take the accounting off the replaying thread: 100 M synthetic events on
/// two cores, its CPU time 2.05 -> 0.81 s, its share of the work 37% -> 15%, which is
/// what bounds the replay on more cores. On two cores the elapsed time is the same
/// within this VM's noise (medians of alternating runs 6% better to 8% worse), for
/// 0-10% more CPU in all (the pool reads each run's steps (now records) and results from another
/// core's cache); see docs/PERFORMANCE.md.
pub(super) const SUMMARY_MIN_THREADS: usize = 2;

/// Most records in a run: enough to amortise handing runs to the shard thread (a
/// channel message each way), few enough for a run's records and results to stay in a
/// core's cache between the shards and the accounting. On 2 cores, synthetic 10 M
/// events: 16,384-step runs 0.28-0.31 s, 32,768 0.32-0.44 s, 8,192 0.31-0.32 s, 4,096
/// 0.31-0.33 s (elapsed, best and median of 3; measured when runs were planned steps).
pub(super) const RUN_STEPS: usize = 1 << 14;

/// Address shards by default: one per rayon thread but one, at least one. The rayon
/// pool also decodes the chunks (about a third of the work), and a run's shards wait
/// for each other, so a shard handed to a busy pool holds up the replay: on 2 cores,
/// 2 shards replayed 10 M recorded events in 0.60-0.63 s (0.85-0.89 s of CPU) where 1
/// shard took 0.48-0.53 s (0.64-0.69 s of CPU), the other core decoding.
pub(super) fn default_shards() -> usize {
    rayon::current_num_threads().saturating_sub(1).clamp(1, 64)
}

impl Replay {
    /// Applies a chunk's records, in file order, with the same result as
    /// [`Replay::apply`] on each, and leaves `records` empty.
    pub fn apply_chunk(&mut self, records: &mut Vec<Record>) {
        let mut all = std::mem::take(records).into_iter().peekable();
        while all.peek().is_some() {
            let mut chunk = self.spent.pop().unwrap_or_default();
            chunk.clear_records();
            chunk.records.extend(all.by_ref().take(MAX_RECORDS - 1));
            chunk.prepare(self.shards);
            self.apply_prepared(chunk);
        }
    }

    /// Applies a prepared chunk's records (see [`super::prepare`]), in file order, with
    /// the same result as [`Replay::apply`] on each. The chunk's buffers come back
    /// through [`Replay::take_spent`] once its runs are done.
    ///
    /// Runs of allocator events are applied in three passes: the shards run the
    /// live-table operations (insert, remove, look up) the chunk's preparation listed,
    /// each shard in file order (an address only ever meets its own shard, so each sees
    /// its addresses' history in order), prefetching the slots of the operations ahead;
    /// then the accounting, in file order, with the blocks the shards found (sites,
    /// totals, peak, temporaries, freed history, findings): on the pool through run
    /// summaries (see [`super::run_summary`]), or serially. The replaying thread binds each
    /// run's threads to their images and heaps and looks at the records that are not
    /// live-table events: those that change which image or heap a thread's events go to
    /// (process and thread starts and ends, exec, snapshots), and allocator events of
    /// threads it does not know, end a run and are applied on their own; the others
    /// (stack nodes, modules, resources, RSS samples) are applied in order with the run.
    pub(crate) fn apply_prepared(&mut self, chunk: Prepared) {
        let chunk = Arc::new(chunk);
        let n = chunk.records.len();
        // The first record not yet handed over or applied, and the first of the
        // chunk's other records at or after it.
        let mut start = 0;
        let mut other = 0;
        while start < n {
            if self.end_seen {
                // Everything after the end record is counted, not applied.
                self.finish_runs();
                for rec in &chunk.records[start..] {
                    self.apply_now(rec.clone());
                }
                break;
            }
            let others = &chunk.others;
            while other < others.len() && (others[other] as usize) < start {
                other += 1;
            }
            let mut barrier = n;
            while other < others.len() {
                let i = others[other] as usize;
                if self.ends_run(&chunk.records[i]) {
                    barrier = i;
                    break;
                }
                other += 1;
            }
            let end = self
                .first_unbound(&chunk, start..barrier)
                .unwrap_or(barrier);
            self.hand_over(&chunk, start..end);
            if end < n {
                // A barrier: everything before it first, then it alone.
                self.finish_runs();
                self.apply_now(chunk.records[end].clone());
            }
            start = end + 1;
        }
        self.release_chunk(chunk);
    }

    /// Moves emptied chunks (whose runs are done) into `out`, for their buffers to be
    /// reused.
    pub(crate) fn take_spent(&mut self, out: &mut Vec<Prepared>) {
        out.append(&mut self.spent);
    }

    /// Drops a reference to a chunk; the last one keeps its buffers for reuse (with
    /// its records: whoever reuses it empties them, on another thread).
    pub(super) fn release_chunk(&mut self, chunk: Arc<Prepared>) {
        if let Ok(chunk) = Arc::try_unwrap(chunk) {
            self.spent.push(chunk);
        }
    }

    /// Whether `rec`, a record that is not a live-table event, must be applied alone
    /// after everything before it (otherwise it is applied in order with its run).
    pub(super) fn ends_run(&self, rec: &Record) -> bool {
        match rec {
            Record::StackNode { .. }
            | Record::RssSample(_)
            | Record::ModuleUnload { .. }
            | Record::SnapshotRoot(_)
            | Record::SnapshotBlock { .. }
            | Record::SnapshotHeuristic { .. }
            | Record::SnapshotThread(_)
            | Record::SnapshotInfo { .. } => false,
            Record::ModuleLoad(m) => self.running(m.pid).is_none(),
            // Allocator events that change counters only (the thread is known: see
            // `first_unbound`).
            Record::Alloc { .. } | Record::Free { .. } | Record::Realloc { .. } => false,
            _ => match crate::checks::resources::event_thread(rec) {
                Some((tid, _)) => !self.threads.contains_key(&tid),
                None => true,
            },
        }
    }

    /// The first allocator event among `range` of the chunk's records made by a thread
    /// that is not bound (applied alone: `Replay::apply` finds out what it is).
    pub(super) fn first_unbound(&self, chunk: &Prepared, range: Range<usize>) -> Option<usize> {
        let mut first: Option<usize> = None;
        for span in &chunk.threads {
            let (a, b) = (span.first as usize, span.last as usize + 1);
            if b <= range.start || a >= range.end || self.threads.contains_key(&span.tid) {
                continue;
            }
            let from = a.max(range.start);
            let to = b.min(range.end).min(first.unwrap_or(usize::MAX));
            let found = chunk.records[from..to.max(from)].iter().position(|r| {
                matches!(*r, Record::Alloc { tid, .. } | Record::Free { tid, .. } | Record::Realloc { tid, .. } if tid == span.tid)
            });
            if let Some(k) = found {
                first = Some(from + k);
            }
        }
        first
    }

    /// Hands records `range` of `chunk` (no barrier among them) to the shards, in runs
    /// of at most `run_steps` records that end at multiples of it.
    pub(super) fn hand_over(&mut self, chunk: &Arc<Prepared>, range: Range<usize>) {
        let mut a = range.start;
        while a < range.end {
            let b = ((a / self.run_steps + 1) * self.run_steps).min(range.end);
            self.hand_over_run(chunk, a..b);
            a = b;
        }
    }

    /// Hands one run over; accounts for the oldest run handed over if the shards are
    /// [`RUNS_AHEAD`] runs behind.
    pub(super) fn hand_over_run(&mut self, chunk: &Arc<Prepared>, range: Range<usize>) {
        let mut batch = self.spare.pop().unwrap_or_default();
        let shards = self.shards;
        batch.results.resize_with(shards, Vec::new);
        batch.replaced.resize_with(shards, Vec::new);
        batch.op_ranges.extend(chunk.ops.iter().map(|ops| {
            let at = |i: usize| ops.partition_point(|o| (o.index() as usize) < i);
            at(range.start)..at(range.end)
        }));
        let others = |i: usize| chunk.others.partition_point(|&o| (o as usize) < i);
        batch.others = others(range.start)..others(range.end);
        // The threads of the run: bound (see `first_unbound`).
        for span in &chunk.threads {
            if (span.last as usize) < range.start || span.first as usize >= range.end {
                continue;
            }
            let Some(t) = self.threads.get(&span.tid) else {
                continue;
            };
            let img = self.procs[t.process].current();
            let heap_id = self.images[img].heap;
            let heap = if self.heaps.get(heap_id).and_then(Option::as_ref).is_some() {
                if !batch.images.contains(&img) {
                    batch.images.push(img);
                }
                Some(match batch.heaps.iter().position(|&h| h == heap_id) {
                    Some(h) => h as u16,
                    None => {
                        batch.heaps.push(heap_id);
                        (batch.heaps.len() - 1) as u16
                    }
                })
            } else {
                None
            };
            batch.bindings.push(Binding {
                tid: span.tid,
                img: img as u32,
                heap,
            });
        }
        batch.bindings.seal();
        batch.complete.extend(
            batch
                .heaps
                .iter()
                .map(|&h| self.heaps[h].as_ref().is_some_and(|heap| heap.complete)),
        );
        if !Arc::ptr_eq(&batch.internal, &self.internal_known) {
            batch.internal = self.internal_known.clone();
        }
        batch.max_ts = chunk.max_ts(range.clone());
        batch.range = range;
        batch.chunk = Some(chunk.clone());
        self.submit(batch);
    }

    /// Hands a run to the shards; accounts for the oldest run handed over if the shards
    /// are [`RUNS_AHEAD`] runs behind.
    pub(super) fn submit(&mut self, mut batch: Batch) {
        // Out of `self` while `account` needs it (nothing it calls uses the runner).
        let mut shards = self.shard_runner.take().unwrap_or_else(Shards::new);
        let mut lend: Lent = Vec::new();
        for &h in &batch.heaps {
            if !shards.has(h) {
                match &mut self.heaps[h] {
                    Some(heap) => lend.push((h, heap.live.lend())),
                    None => unreachable!("a run's heaps exist until the replay drains"),
                }
            }
        }
        self.predict_clocks(&mut batch);
        shards.run(batch, lend);
        if shards.pending() > RUNS_AHEAD {
            let done = shards.take();
            self.retire(done);
        }
        self.shard_runner = Some(shards);
    }

    /// Notes in `batch.clocks` the clock each of its images is predicted to have before
    /// it, and predicts the clocks after it (see [`super::run_summary`]).
    pub(super) fn predict_clocks(&mut self, batch: &mut Batch) {
        for &img in &batch.images {
            if self.predicted_clocks.len() <= img {
                self.predicted_clocks.resize(img + 1, None);
            }
            let real = self.images[img].sites.clock();
            let start = match self.predicted_clocks[img] {
                Some(p) if p.start() == real.start() && p.shift() >= real.shift() => p,
                _ => real,
            };
            // The run's latest timestamp may be another image's (then the prediction
            // can be too far ahead, and the merge finds it wrong).
            let mut end = start;
            end.advance(batch.max_ts);
            self.predicted_clocks[img] = Some(end);
            batch.clocks.push((img, start));
        }
    }

    /// Accounts for a run whose shards are done: summarized on the pool and merged in
    /// order when the pool has [`SUMMARY_MIN_THREADS`] threads or more (see
    /// [`super::run_summary`]), at once otherwise.
    pub(super) fn retire(&mut self, batch: Batch) {
        if rayon::current_num_threads() < SUMMARY_MIN_THREADS {
            self.account(batch);
            return;
        }
        let (tx, rx) = mpsc::channel();
        let mut batch = batch;
        let freed = std::mem::take(&mut batch.freed);
        rayon::spawn(move || {
            // A summary that panics is left to the serial accounting, which then
            // panics on this thread, where the panic is reported.
            let summary = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                super::run_summary::summarize(&batch, freed)
            }))
            .ok()
            .flatten();
            let _ = tx.send((batch, summary));
        });
        self.summaries.push_back(rx);
        while self.summaries.len() > summaries_ahead() {
            self.merge_oldest();
        }
    }

    /// Merges the oldest run being summarized, waiting for its summary.
    pub(super) fn merge_oldest(&mut self) {
        let Some(rx) = self.summaries.pop_front() else {
            return;
        };
        let (batch, summary) =
            super::handoff::recv(&rx).expect("a summary task always sends its run back");
        match summary {
            Some(sum) if self.summary_applies(&sum) => self.merge(batch, sum),
            _ => self.account(batch),
        }
    }

    /// Whether a run's summary holds in the current state: its images are open, their
    /// clocks are the predicted ones, and no live figure goes below zero.
    pub(super) fn summary_applies(&self, sum: &RunSummary) -> bool {
        sum.images.iter().all(|im| {
            let image = &self.images[im.img];
            image.is_open()
                && image.sites.clock() == im.start_clock
                && image.live_bytes as i128 + i128::from(im.min_bytes) >= 0
                && image.live_blocks as i128 + i128::from(im.min_blocks) >= 0
                && im.sites.iter().all(|s| {
                    let (bytes, blocks) = image.sites.live_of(s.stack);
                    bytes as i128 + i128::from(s.min_bytes) >= 0
                        && blocks as i128 + i128::from(s.min_blocks) >= 0
                })
        })
    }

    /// Applies a run through its summary, with the same result as [`Replay::account`].
    pub(super) fn merge(&mut self, mut batch: Batch, sum: RunSummary) {
        self.runs_merged += 1;
        // The run's other records touch nothing its allocator steps change, except RSS
        // samples, which read an image's live bytes at their point of the run.
        let chunk = batch.chunk.clone().expect("a run has a chunk");
        let mut rss = sum.rss.iter().peekable();
        for (k, &i) in chunk.others[batch.others.clone()].iter().enumerate() {
            match (&chunk.records[i as usize], rss.peek()) {
                (Record::RssSample(s), Some((at, deltas))) if *at == k => {
                    // `apply_now`'s bookkeeping, then the sample.
                    self.last_ts = self.last_ts.max(s.ts);
                    self.records += 1;
                    self.sample_rss(s, deltas);
                    rss.next();
                }
                (rec, _) => self.apply_now(rec.clone()),
            }
        }
        self.records += sum.steps;
        self.alloc_events += sum.steps;
        self.last_ts = self.last_ts.max(sum.max_ts);
        for im in &sum.images {
            let image = &mut self.images[im.img];
            let totals = &mut image.totals;
            totals.allocations += im.allocations;
            totals.allocated_bytes = totals.allocated_bytes.saturating_add(im.allocated_bytes);
            totals.frees += im.frees;
            totals.failed_allocations += im.failed_allocations;
            totals.temporary_allocations += im.temporaries;
            // The record highs above this are new highs of the image.
            let base = image.live_bytes as i128;
            let above = i128::from(totals.peak_live_bytes) - base;
            let new_highs = im.highs.len() - im.highs.partition_point(|&v| i128::from(v) <= above);
            if let (true, Some(&high)) = (new_highs > 0, im.highs.last()) {
                totals.peak_live_bytes = (base + i128::from(high)) as u64;
                totals.peak_live_blocks = (image.live_blocks as i64 + im.high_blocks) as u64;
                totals.peak_ts = Some(im.high_ts);
            }
            image.sites.apply_run(&im.sites, new_highs, im.end_clock);
            image.live_bytes = (base + i128::from(im.d_bytes)) as u64;
            image.live_blocks = (image.live_blocks as i64 + im.d_blocks) as u64;
        }
        for th in &sum.threads {
            let Some(t) = self.threads.get_mut(&th.tid) else {
                continue;
            };
            let mut carried = t.last_alloc;
            for &(owner, address, stack) in &th.pending {
                if carried == Some((owner, address)) {
                    carried = None;
                    let image = &mut self.images[owner];
                    image.totals.temporary_allocations += 1;
                    image.sites.add_temporary(stack);
                }
            }
            t.last_alloc = th.latest.unwrap_or(carried);
        }
        if let Some(img) = sum.freed_by {
            if let Some(heap) = self
                .heaps
                .get_mut(self.images[img].heap)
                .and_then(Option::as_mut)
            {
                batch.freed = heap.remember_frees(sum.freed);
            }
        }
        drop(chunk);
        self.recycle(batch);
    }

    /// Keeps an accounted run's buffers for a later run, and gives its chunk back.
    pub(super) fn recycle(&mut self, mut batch: Batch) {
        if let Some(chunk) = batch.clear() {
            self.release_chunk(chunk);
        }
        self.spare.push(batch);
    }

    /// Finishes every pending run and takes the lent blocks back, so that the state is
    /// that of all records applied.
    pub(super) fn finish_runs(&mut self) {
        let Some(mut shards) = self.shard_runner.take() else {
            return;
        };
        while shards.pending() > 0 {
            let done = shards.take();
            self.retire(done);
        }
        while !self.summaries.is_empty() {
            self.merge_oldest();
        }
        for (h, live) in shards.take_back() {
            match &mut self.heaps[h] {
                Some(heap) => heap.live = live,
                None => unreachable!("a lent heap exists until the replay drains"),
            }
        }
        self.shard_runner = Some(shards);
    }
}
