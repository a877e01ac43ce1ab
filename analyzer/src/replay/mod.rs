//! The replay: a state machine that consumes a trace's records in file order and keeps
//! the state of the recorded process tree (processes, threads, heaps, call sites).
//!
//! File order is causal order: the recorder writes an allocation before any free of its
//! pointer, whatever thread made them, whereas timestamps of different threads need not
//! be monotonic. So the replay never sorts; timestamps only label the time axes.
//!
//! # Model
//!
//! * A **process** is a pid between its `ProcessStart` and its `ProcessExit` (a later
//!   `ProcessStart` of the same pid is a new process). Its threads are bound to it by
//!   `ThreadStart{pid, tid}`, the latest binding winning; the main thread (tid = pid) is
//!   bound by `ProcessStart` itself.
//! * A process runs one or more **images**: `execve` ends the current image and starts a
//!   new one with the new command, an empty heap and an empty module map. The old
//!   image's live blocks are discarded with its address space: they are reported as the
//!   old image's "live at exec", never as leaks of the new image. Every figure (totals,
//!   sites, findings, peak) is per image; a process's figures are those of its last
//!   image, the earlier ones are listed beside it. This is what valgrind does, which
//!   starts afresh at each exec.
//! * A **heap** belongs to an address space. A `fork` child gets a copy of its parent's
//!   heap: inherited blocks are live in both, count as the child's live blocks (and so
//!   as its leaks if it never frees them), but not as its allocations. A `vfork` child,
//!   or a `clone` with `CLONE_VM`, shares its parent's heap until it execs or exits;
//!   each block is accounted to the image that allocated it, whoever frees it.
//! * An **attached** process (and anything forked from it) has blocks allocated before
//!   the recorder arrived; frees of addresses it never saw allocated are counted as
//!   frees but reported as untracked rather than invalid.
//!
//! Memory is bounded by live blocks, call sites, live threads and the processes of the
//! tree, never by the number of records.
//!
//! # Layout
//!
//! * This file: [`Replay`], its public entry points and the record-by-record path
//!   ([`Replay::apply`]); `model`: the public types it hands back ([`Process`],
//!   [`Image`], [`Totals`], [`Anomalies`], [`ReplayOutcome`]).
//! * `lifecycle`: processes, threads, exec and exit; `accounting`: what allocator
//!   events do to an image (both paths); `snapshots`: reachability snapshots into leak
//!   checks; `heap`: the live blocks of an address space and its freed-block history.
//! * The batch path, for speed: `source` decodes and prepares chunks on the pool
//!   (`prepare`), `step` holds the per-record rules every stage follows, `pipeline`
//!   cuts chunks into runs (`batch`) and hands them to the shard thread (`shards`),
//!   whose results are accounted for through run summaries on the pool
//!   (`run_summary`) or serially; `handoff` is how the threads wait for each other.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};

use heaptape_format::{Header, Record, StackId, Timestamp};

use crate::callsites::Clock;
use crate::checks::leaks::HeuristicSet;
use crate::hash::{FastMap, FastSet};
use crate::stacks::StackTable;
use crate::symbolize::Symbolizer;

mod accounting;
mod batch;
mod describe;
mod handoff;
mod heap;
mod lifecycle;
mod model;
mod pipeline;
mod prepare;
mod run_summary;
mod shards;
mod snapshots;
pub(crate) mod source;
mod step;
#[cfg(test)]
mod tests;

pub use accounting::INTERNAL_FREE_FUNCTIONS;
pub use heap::FREED_HISTORY;
pub use model::{Anomalies, Figures, Image, ImageEnd, Process, ReplayOutcome, Totals};
pub(crate) use prepare::Prepared;

use accounting::Release;
use batch::Batch;
use heap::{Heap, ImageId};
use lifecycle::{ProcState, Thread};
use pipeline::{default_shards, RUN_STEPS};
use run_summary::RunSummary;
use shards::Shards;
use snapshots::PendingSnapshot;

/// The replay state machine (see the module docs).
pub struct Replay {
    header_pid: u32,
    header_command: Vec<String>,
    stacks: StackTable,
    procs: Vec<ProcState>,
    images: Vec<Image>,
    heaps: Vec<Option<Heap>>,
    by_pid: FastMap<u32, usize>,
    threads: FastMap<u32, Thread>,
    anomalies: Anomalies,
    records: u64,
    alloc_events: u64,
    end_seen: bool,
    last_ts: Timestamp,
    symbolizer: Option<Arc<dyn Symbolizer + Send + Sync>>,
    /// The image that loaded the latest module: stack addresses are looked up in its
    /// modules for [`Symbolizer::preload`] hints.
    hint_image: Option<ImageId>,
    /// Modules hinted so far: (image, load bias).
    hinted: FastSet<(ImageId, u64)>,
    /// The segment of the module hinted last (consecutive stack nodes mostly fall in
    /// one module: they need no lookup).
    hint_range: Option<(ImageId, std::ops::Range<u64>)>,
    /// Whether a bad free from (image, stack) is the C library's own bookkeeping.
    internal_frees: FastMap<(ImageId, StackId), bool>,
    /// Those that are, shared with the runs handed over (whose misses the shard thread
    /// then does not describe; see `describe`).
    internal_known: Arc<FastSet<(ImageId, StackId)>>,
    /// Snapshots begun and not yet ended, by pid.
    snapshots: FastMap<u32, PendingSnapshot>,
    leak_heuristics: HeuristicSet,
    /// Address shards of every heap's live blocks (see [`Replay::apply_chunk`]).
    shards: usize,
    /// Most steps in a run.
    run_steps: usize,
    /// Chunks whose runs are done, emptied, for their buffers to be reused.
    spent: Vec<Prepared>,
    /// Buffers of accounted runs, for the next ones.
    spare: Vec<Batch>,
    /// Where the runs' shard operations happen (started with the first run).
    shard_runner: Option<Shards>,
    /// Runs whose summaries are being computed on the pool, oldest first (see
    /// [`run_summary`]).
    summaries: VecDeque<mpsc::Receiver<(Batch, Option<RunSummary>)>>,
    /// Per image: its bucket clock as predicted after the runs handed over so far.
    predicted_clocks: Vec<Option<Clock>>,
    /// Runs accounted for through a summary, and serially.
    runs_merged: u64,
    runs_serial: u64,
    /// The trace's embedded symbols (`Symbols` records), when they are kept.
    symbols: Vec<heaptape_format::ModuleSymbols>,
    keep_symbols: bool,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("records", &self.records)
            .field("processes", &self.procs.len())
            .field("symbolizer", &self.symbolizer.is_some())
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// A replay of the trace that starts with `header`.
    pub fn new(header: &Header) -> Self {
        Replay {
            header_pid: header.pid,
            header_command: header.command.clone(),
            stacks: StackTable::new(),
            procs: Vec::new(),
            images: Vec::new(),
            heaps: Vec::new(),
            by_pid: FastMap::default(),
            threads: FastMap::default(),
            anomalies: Anomalies::default(),
            records: 0,
            alloc_events: 0,
            end_seen: false,
            last_ts: 0,
            symbolizer: None,
            hint_image: None,
            hinted: FastSet::default(),
            hint_range: None,
            internal_frees: FastMap::default(),
            internal_known: Arc::default(),
            snapshots: FastMap::default(),
            leak_heuristics: HeuristicSet::ALL,
            shards: default_shards(),
            run_steps: RUN_STEPS,
            spent: Vec::new(),
            spare: Vec::new(),
            shard_runner: None,
            summaries: VecDeque::new(),
            predicted_clocks: Vec::new(),
            runs_merged: 0,
            runs_serial: 0,
            symbols: Vec::new(),
            keep_symbols: true,
        }
    }

    /// [`Replay::new`] with the heaps' live blocks in `shards` address shards (the
    /// default: one per rayon thread but one, at least one; see
    /// `pipeline::default_shards`). Results do not depend on it.
    pub fn with_shards(header: &Header, shards: usize) -> Self {
        let mut r = Replay::new(header);
        r.shards = shards.clamp(1, 64);
        r
    }

    /// The number of address shards of the heaps' live blocks.
    pub(crate) fn shards(&self) -> usize {
        self.shards
    }

    /// Gives the replay a symbolizer for recognising the C library's internal frees in
    /// statically linked programs.
    ///
    /// A free of a pointer that is not a live block (a would-be double or invalid free)
    /// whose innermost frame lies in the C library is glibc freeing its own bookkeeping
    /// (`tcache_thread_shutdown` releasing a dying thread's cached chunks and the tcache
    /// itself); it is counted in `allocator_internal_frees` instead of `frees` and not
    /// reported. The C library is recognised by its module's file name (`libc.so*`,
    /// `libc-*`); when the image maps no such module (a static executable), the
    /// innermost frame must symbolize to one of [`INTERNAL_FREE_FUNCTIONS`], which needs this
    /// symbolizer and a symbol table in the executable.
    pub fn set_symbolizer(&mut self, symbolizer: Arc<dyn Symbolizer + Send + Sync>) {
        self.symbolizer = Some(symbolizer);
    }

    /// Whether the trace's embedded symbols (its `Symbols` records) are kept for
    /// [`ReplayOutcome::symbols`] (the default) or dropped (their reader already has
    /// them: see [`heaptape_format::trailing_symbols`]).
    pub fn set_keep_symbols(&mut self, keep: bool) {
        self.keep_symbols = keep;
    }

    /// Sets the interior-pointer heuristics of the leak check (memcheck's
    /// `--leak-check-heuristics`; all four by default).
    pub fn set_leak_heuristics(&mut self, heuristics: HeuristicSet) {
        self.leak_heuristics = heuristics;
    }

    /// Applies one record, in file order.
    pub fn apply(&mut self, rec: Record) {
        self.finish_runs();
        self.apply_now(rec);
    }

    /// [`Replay::apply`] with no run pending.
    fn apply_now(&mut self, rec: Record) {
        if self.end_seen {
            self.anomalies.records_after_end += 1;
            return;
        }
        if let Some(ts) = rec.timestamp() {
            self.last_ts = self.last_ts.max(ts);
        }
        if let Record::End { counts, .. } = &rec {
            self.end_seen = true;
            if counts.records != self.records || counts.alloc_events != self.alloc_events {
                self.anomalies.end_count_mismatch = Some(format!(
                    "the end record counts {} records and {} allocator events, but {} and {} were read",
                    counts.records, counts.alloc_events, self.records, self.alloc_events
                ));
            }
            self.records += 1;
            return;
        }
        self.records += 1;
        if rec.is_alloc_event() {
            self.alloc_events += 1;
        }
        if let Some((tid, ts)) = crate::checks::resources::event_thread(&rec) {
            if let Some(img) = self.thread_image(tid, ts) {
                let image = &mut self.images[img];
                if image.is_open() {
                    image.resources.apply(&rec, &self.stacks, &image.modules);
                }
            }
            return;
        }
        if let Record::RssSample(s) = rec {
            self.sample_rss(&s, &[]);
            return;
        }
        match rec {
            Record::ProcessStart {
                ts,
                pid,
                parent_pid,
                origin,
                command,
            } => self.process_start(ts, pid, parent_pid, origin, command),
            Record::Exec { ts, pid, command } => self.exec(ts, pid, command),
            Record::ProcessExit { ts, pid, status } => match self.running(pid) {
                Some(p) => self.end_process(p, ts, Some(status), ImageEnd::Exit),
                None => self.anomalies.unknown_process_exits += 1,
            },
            Record::ThreadStart { ts, pid, tid } => {
                let p = self.process_for(pid, ts);
                self.bind_thread(tid, p);
            }
            Record::ThreadExit { tid, .. } => {
                if let Some(t) = self.threads.remove(&tid) {
                    self.procs[t.process].threads.remove(&tid);
                }
            }
            Record::ModuleLoad(m) => {
                let heaptape_format::ModuleLoad {
                    ts,
                    pid,
                    path,
                    build_id,
                    base,
                    segments,
                } = *m;
                let p = self.process_for(pid, ts);
                let img = self.procs[p].current();
                self.images[img]
                    .modules
                    .load(ts, path, build_id, base, segments);
                self.hint_image = Some(img);
            }
            Record::ModuleUnload {
                ts,
                pid,
                base,
                path,
            } => {
                if let Some(p) = self.running(pid) {
                    let img = self.procs[p].current();
                    self.images[img].modules.unload(ts, base, &path);
                }
            }
            Record::StackNode {
                id,
                parent,
                address,
            } => {
                if self.stacks.insert(id, parent, address).is_err() {
                    self.anomalies.bad_stack_nodes += 1;
                }
                self.hint(address);
            }
            Record::Alloc {
                ts,
                tid,
                func,
                address,
                size,
                stack,
                ..
            } => {
                let Some(img) = self.thread_image(tid, ts) else {
                    return;
                };
                if address == 0 {
                    self.images[img].totals.failed_allocations += 1;
                } else {
                    self.allocate(img, tid, ts, func, address, size, stack);
                }
            }
            Record::Free {
                ts,
                tid,
                func,
                address,
                stack,
            } => {
                if address == 0 {
                    return;
                }
                let Some(img) = self.thread_image(tid, ts) else {
                    return;
                };
                self.images[img].totals.frees += 1;
                self.release(Release {
                    img,
                    tid,
                    ts,
                    func,
                    address,
                    stack,
                    may_be_internal: true,
                    inside: accounting::Inside::Look,
                });
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
                let Some(img) = self.thread_image(tid, ts) else {
                    return;
                };
                self.realloc(img, tid, ts, func, old_address, new_address, size, stack);
            }
            Record::Mmap { .. }
            | Record::Munmap { .. }
            | Record::Mremap(_)
            | Record::FdOpen { .. }
            | Record::FdClose { .. }
            | Record::RssSample(_)
            | Record::End { .. } => {}
            Record::SnapshotBegin { ts, pid } => self.snapshot_begin(ts, pid),
            Record::SnapshotRoot(root) => {
                if let Some(s) = self.snapshots.get_mut(&root.pid) {
                    s.graph.add_root_region(&root);
                }
            }
            Record::SnapshotBlock {
                pid,
                address,
                pointers,
            } => {
                if let Some(s) = self.snapshots.get_mut(&pid) {
                    s.graph.add_block(address, &pointers);
                }
            }
            Record::SnapshotEnd { pid, blocks, .. } => self.snapshot_end(pid, blocks),
            Record::SnapshotThread(t) => {
                if let Some(s) = self.snapshots.get_mut(&t.pid) {
                    s.graph.add_thread(*t);
                }
            }
            Record::SnapshotInfo {
                pid,
                trigger,
                pause_ns,
            } => {
                if let Some(s) = self.snapshots.get_mut(&pid) {
                    s.info = Some((trigger, pause_ns));
                }
            }
            Record::Symbols(s) => {
                if self.keep_symbols {
                    self.symbols.push(*s);
                }
            }
            Record::SnapshotHeuristic {
                pid,
                address,
                offset,
                matched,
            } => {
                if let Some(s) = self.snapshots.get_mut(&pid) {
                    s.heuristics
                        .insert(address, offset, HeuristicSet::from_bits(matched));
                }
            }
        }
    }

    /// Ends every process still running (at the latest timestamp seen) and returns the
    /// results.
    pub fn finish(mut self) -> ReplayOutcome {
        self.finish_runs();
        let ts = self.last_ts;
        for p in 0..self.procs.len() {
            if !self.procs[p].ended {
                self.end_process(p, ts, None, ImageEnd::TraceEnd);
            }
        }
        let cut: Vec<ImageId> = self.snapshots.drain().map(|(_, s)| s.image).collect();
        for img in cut {
            self.snapshot_lost(
                img,
                "the snapshot was cut off (the trace ends before its end record)",
            );
        }
        let mut images: Vec<Option<Image>> = self.images.into_iter().map(Some).collect();
        let processes = self
            .procs
            .into_iter()
            .map(|p| Process {
                pid: p.pid,
                parent_pid: p.parent_pid,
                origin: p.origin,
                exit: p.exit,
                images: p
                    .images
                    .iter()
                    .filter_map(|&i| images.get_mut(i).and_then(Option::take))
                    .collect(),
            })
            .collect();
        ReplayOutcome {
            processes,
            stacks: self.stacks,
            anomalies: self.anomalies,
            complete: self.end_seen,
            records: self.records,
            last_ts: self.last_ts,
            symbols: self.symbols,
        }
    }

    /// Tells the symbolizer, once per module, that a stack passes through the module
    /// holding `address` (in the image that loaded a module last: a guess in a trace of
    /// several processes, and only a hint).
    fn hint(&mut self, address: u64) {
        let (Some(sym), Some(img)) = (&self.symbolizer, self.hint_image) else {
            return;
        };
        if matches!(&self.hint_range, Some((i, r)) if *i == img && r.contains(&address)) {
            return;
        }
        let Some(image) = self.images.get(img) else {
            return;
        };
        if let Some(hit) = image.modules.lookup(address) {
            if self.hinted.insert((img, hit.module.base)) {
                sym.preload(&hit.module.path, &hit.module.build_id);
            }
            self.hint_range = hit
                .module
                .segments
                .iter()
                .find(|s| address.wrapping_sub(s.start) < s.len)
                .map(|s| (img, s.start..s.start.saturating_add(s.len)));
        }
    }
}
