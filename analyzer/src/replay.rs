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

use std::sync::Arc;

use heaptape_format::{AllocFn, ExitStatus, Header, ProcessOrigin, Record, StackId, Timestamp};

use crate::findings::{Finding, FindingKind, Findings, Occurrence};
use crate::hash::{FastMap, FastSet};
use crate::heap::{Block, Heap, ImageId};
use crate::leaks::{HeuristicMatches, HeuristicSet, LeakCheck, LiveBlock, SnapshotGraph};
use crate::modules::ModuleMap;
use crate::sites::SiteTable;
use crate::stacks::StackTable;
use crate::symbolize::Symbolizer;

/// Whole-image figures, counted the way valgrind's "total heap usage" line counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Successful allocation calls (including the allocating half of a realloc).
    pub allocations: u64,
    /// Calls that released a non-NULL pointer (valid or not, including the freeing half
    /// of a realloc).
    pub frees: u64,
    /// Bytes requested by the successful allocations.
    pub allocated_bytes: u64,
    /// Blocks live when the image ended.
    pub live_at_exit_blocks: u64,
    /// Bytes live when the image ended.
    pub live_at_exit_bytes: u64,
    /// Highest live byte count reached.
    pub peak_live_bytes: u64,
    /// Live block count when that high was first reached.
    pub peak_live_blocks: u64,
    /// When that high was first reached (`None` if the heap never held a byte).
    pub peak_ts: Option<Timestamp>,
    /// Allocations freed by their thread before its next allocation.
    pub temporary_allocations: u64,
    /// Allocation calls that returned NULL.
    pub failed_allocations: u64,
    /// Blocks inherited from the parent at fork.
    pub inherited_blocks: u64,
    /// Bytes inherited from the parent at fork.
    pub inherited_bytes: u64,
    /// Frees of addresses allocated before an attach (see the module docs).
    pub untracked_frees: u64,
    /// Frees made by the C library's own allocator bookkeeping (glibc's
    /// `tcache_thread_shutdown` at thread exit) of pointers that were not live blocks:
    /// neither counted in `frees` nor reported (see [`Replay::set_symbolizer`]).
    pub allocator_internal_frees: u64,
}

/// Why an image ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageEnd {
    /// Its process exited, was killed, or was detached from.
    Exit,
    /// Its process called execve.
    Exec,
    /// The trace ended first.
    TraceEnd,
    /// Another `ProcessStart` of the same pid arrived while it ran (a damaged trace).
    Superseded,
}

/// One program image run by a process (see the module docs).
#[derive(Clone, Debug)]
pub struct Image {
    /// Its command line.
    pub command: Vec<String>,
    /// When it started (its process's start, or the exec).
    pub start_ts: Timestamp,
    /// When it ended.
    pub end_ts: Timestamp,
    /// Why it ended (`None` while the replay runs).
    pub end: Option<ImageEnd>,
    /// Its figures.
    pub totals: Totals,
    /// Its call sites, keyed by stack id.
    pub sites: SiteTable,
    /// Invalid and mismatched frees made by its threads.
    pub findings: Findings,
    /// Its modules.
    pub modules: ModuleMap,
    /// Its leak classification, from the last complete reachability snapshot taken
    /// while it ran (see [`crate::leaks`]).
    pub leaks: LeakCheck,
    /// Its descriptors and mappings (see [`crate::resources`]).
    pub resources: crate::resources::Resources,
    /// Its live heap beside its RSS over time (see [`crate::timeline`]).
    pub timeline: crate::timeline::Timeline,
    heap: usize,
    live_blocks: u64,
    live_bytes: u64,
}

impl Image {
    fn new(command: Vec<String>, ts: Timestamp, heap: usize, modules: ModuleMap) -> Self {
        Image {
            command,
            start_ts: ts,
            end_ts: ts,
            end: None,
            totals: Totals::default(),
            sites: SiteTable::starting_at(ts),
            findings: Findings::default(),
            modules,
            leaks: LeakCheck::default(),
            resources: Default::default(),
            timeline: Default::default(),
            heap,
            live_blocks: 0,
            live_bytes: 0,
        }
    }

    fn is_open(&self) -> bool {
        self.end.is_none()
    }

    /// Accounts a block that became live in this image (and, if `allocation`, the
    /// allocation call that made it).
    fn add_live(&mut self, stack: StackId, size: u64, ts: Timestamp, allocation: bool) {
        if !self.is_open() {
            return;
        }
        let site = self.sites.touch_at(stack, ts);
        if allocation {
            site.allocations += 1;
            site.allocated_bytes = site.allocated_bytes.saturating_add(size);
            self.totals.allocations += 1;
            self.totals.allocated_bytes = self.totals.allocated_bytes.saturating_add(size);
        }
        site.live_blocks += 1;
        site.live_bytes = site.live_bytes.saturating_add(size);
        self.live_blocks += 1;
        self.live_bytes = self.live_bytes.saturating_add(size);
        if self.live_bytes > self.totals.peak_live_bytes {
            self.totals.peak_live_bytes = self.live_bytes;
            self.totals.peak_live_blocks = self.live_blocks;
            self.totals.peak_ts = Some(ts);
            self.sites.new_peak();
        }
    }

    /// Accounts a block of this image that was released (`temporary`: by the thread
    /// that allocated it, before that thread's next allocation).
    fn remove_live(&mut self, stack: StackId, size: u64, temporary: bool, ts: Timestamp) {
        if !self.is_open() {
            return;
        }
        let site = self.sites.touch_at(stack, ts);
        site.live_blocks = site.live_blocks.saturating_sub(1);
        site.live_bytes = site.live_bytes.saturating_sub(size);
        site.frees += 1;
        if temporary {
            site.temporary_allocations += 1;
            self.totals.temporary_allocations += 1;
        }
        self.live_blocks = self.live_blocks.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(size);
    }
}

/// One process of the trace, after the replay.
#[derive(Clone, Debug)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid, when the parent is in the trace.
    pub parent_pid: Option<u32>,
    /// How it started; `None` when the trace never said (its records appeared without a
    /// `ProcessStart`).
    pub origin: Option<ProcessOrigin>,
    /// How it ended; `None` when the trace does not say.
    pub exit: Option<ExitStatus>,
    /// Its images in order; never empty. The last is the one it ended with.
    pub images: Vec<Image>,
}

impl Process {
    /// The image the process ended with: its command and figures are the process's.
    pub fn image(&self) -> &Image {
        self.images
            .last()
            .expect("a process always has at least one image")
    }

    /// The images it ran before its last exec, oldest first.
    pub fn previous_images(&self) -> &[Image] {
        &self.images[..self.images.len() - 1]
    }
}

/// Oddities of the trace itself (not of the recorded program), reported as warnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Allocator events from threads that belong to no known running process.
    pub unattributed_events: u64,
    /// Allocations returning an address that was still live (a free the recorder
    /// missed); the old block was dropped.
    pub alloc_at_live_address: u64,
    /// Stack nodes that redefined an id or the root.
    pub bad_stack_nodes: u64,
    /// `ProcessExit` records for pids not running.
    pub unknown_process_exits: u64,
    /// `ProcessStart` records for a pid already running.
    pub duplicate_process_starts: u64,
    /// Records after the `End` record (ignored).
    pub records_after_end: u64,
    /// The `End` record's counts disagree with what was read.
    pub end_count_mismatch: Option<String>,
    /// Snapshots whose end record counts another number of live blocks than the
    /// replay had (the trace and the replay disagree; the replay's blocks are used).
    pub snapshot_block_mismatches: u64,
}

impl Anomalies {
    /// One human sentence per anomaly present.
    pub fn messages(&self) -> Vec<String> {
        let mut m = Vec::new();
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                m.push(format!("{n} {what}"));
            }
        };
        add(
            self.unattributed_events,
            "allocator event(s) from threads of no known process were ignored",
        );
        add(
            self.alloc_at_live_address,
            "allocation(s) returned an address that was still live (a free was not recorded)",
        );
        add(
            self.bad_stack_nodes,
            "stack node(s) were malformed and ignored",
        );
        add(
            self.unknown_process_exits,
            "exit record(s) named a process that was not running",
        );
        add(
            self.duplicate_process_starts,
            "process start record(s) named a pid that was already running",
        );
        add(
            self.records_after_end,
            "record(s) after the end record were ignored",
        );
        add(
            self.snapshot_block_mismatches,
            "snapshot(s) covered another number of live blocks than the replay had",
        );
        if let Some(s) = &self.end_count_mismatch {
            m.push(s.clone());
        }
        m
    }
}

#[derive(Clone, Debug)]
struct ProcState {
    pid: u32,
    parent_pid: Option<u32>,
    origin: Option<ProcessOrigin>,
    exit: Option<ExitStatus>,
    images: Vec<ImageId>,
    ended: bool,
    threads: FastSet<u32>,
}

impl ProcState {
    fn current(&self) -> ImageId {
        *self.images.last().expect("a process always has an image")
    }
}

#[derive(Clone, Copy, Debug)]
struct Thread {
    process: usize,
    /// The thread's latest allocation, while it may still turn out temporary.
    last_alloc: Option<(ImageId, u64)>,
}

/// What the replay hands back at the end.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    /// Every process, in order of appearance.
    pub processes: Vec<Process>,
    /// The stack trie.
    pub stacks: StackTable,
    /// Oddities of the trace.
    pub anomalies: Anomalies,
    /// Whether the `End` record was seen.
    pub complete: bool,
    /// Records replayed (the `End` record included).
    pub records: u64,
    /// The latest timestamp seen.
    pub last_ts: Timestamp,
}

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
    /// Whether a bad free from (image, stack) is the C library's own bookkeeping.
    internal_frees: FastMap<(ImageId, StackId), bool>,
    /// Snapshots begun and not yet ended, by pid.
    snapshots: FastMap<u32, PendingSnapshot>,
    leak_heuristics: HeuristicSet,
}

/// A snapshot between its begin and end records.
#[derive(Debug)]
struct PendingSnapshot {
    image: ImageId,
    graph: SnapshotGraph,
    /// The recorder's heuristic verdicts (`SnapshotHeuristic` records).
    heuristics: HeuristicMatches,
}

/// Whether a module path names the C library (`libc.so.6`, `libc-2.31.so`).
pub fn is_libc_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

/// Functions of a statically linked C library whose frees are allocator bookkeeping:
/// glibc's `tcache_thread_shutdown`, which a static build inlines into
/// `__malloc_arena_thread_freeres` (only the latter is in the symbol table then).
pub const INTERNAL_FREE_FUNCTIONS: &[&str] =
    &["tcache_thread_shutdown", "__malloc_arena_thread_freeres"];

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
            internal_frees: FastMap::default(),
            snapshots: FastMap::default(),
            leak_heuristics: HeuristicSet::ALL,
        }
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

    /// Sets the interior-pointer heuristics of the leak check (memcheck's
    /// `--leak-check-heuristics`; all four by default).
    pub fn set_leak_heuristics(&mut self, heuristics: HeuristicSet) {
        self.leak_heuristics = heuristics;
    }

    /// A snapshot of `pid` begins: its graph covers the heap's live blocks now.
    fn snapshot_begin(&mut self, pid: u32) {
        let Some(&p) = self.by_pid.get(&pid) else {
            return;
        };
        let img = self.procs[p].current();
        let heap = self.images[img].heap;
        let pending = match self.heaps.get(heap).and_then(Option::as_ref) {
            Some(heap) if !self.procs[p].ended => PendingSnapshot {
                image: img,
                graph: SnapshotGraph::new(
                    heap.live
                        .iter()
                        .map(|(&address, b)| LiveBlock {
                            address,
                            size: b.size,
                            stack: b.stack,
                            func: b.func,
                        })
                        .collect(),
                ),
                heuristics: HeuristicMatches::new(),
            },
            _ => {
                self.snapshot_lost(
                    img,
                    "the snapshot was recorded after the process ended, when its heap \
                     was no longer known",
                );
                return;
            }
        };
        if let Some(old) = self.snapshots.insert(pid, pending) {
            self.snapshot_lost(
                old.image,
                "the snapshot was cut off (another snapshot began before it ended)",
            );
        }
    }

    /// A snapshot of `pid` is complete: classify it.
    fn snapshot_end(&mut self, pid: u32, blocks: u64) {
        let Some(pending) = self.snapshots.remove(&pid) else {
            return;
        };
        if blocks != pending.graph.block_count() as u64 {
            self.anomalies.snapshot_block_mismatches += 1;
        }
        self.images[pending.image].leaks = match pending
            .graph
            .classify(&pending.heuristics, self.leak_heuristics)
        {
            Ok(report) => LeakCheck::Done(Box::new(report)),
            Err(reason) => LeakCheck::Unavailable(reason),
        };
    }

    /// Notes why a snapshot of `img` came to nothing, unless an earlier one succeeded.
    fn snapshot_lost(&mut self, img: ImageId, reason: &str) {
        let leaks = &mut self.images[img].leaks;
        if leaks.report().is_none() {
            *leaks = LeakCheck::Unavailable(reason.into());
        }
    }

    /// Whether a bad free from `stack` in image `img` is allocator bookkeeping (see
    /// [`Replay::set_symbolizer`]).
    fn allocator_internal(&mut self, img: ImageId, stack: StackId) -> bool {
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
        verdict
    }

    /// The stack trie as built so far.
    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    /// Applies one record, in file order.
    pub fn apply(&mut self, rec: Record) {
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
        if let Some((tid, ts)) = crate::resources::event_thread(&rec) {
            if let Some(img) = self.thread_image(tid, ts) {
                let image = &mut self.images[img];
                if image.is_open() {
                    image.resources.apply(&rec, &self.stacks, &image.modules);
                }
            }
            return;
        }
        if let Record::RssSample {
            ts, pid, rss, anon, ..
        } = rec
        {
            if let Some(p) = self.running(pid) {
                let image = &mut self.images[self.procs[p].current()];
                image.timeline.sample(ts, image.live_bytes, rss, anon);
            }
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
            Record::ModuleLoad {
                ts,
                pid,
                path,
                build_id,
                base,
                segments,
            } => {
                let p = self.process_for(pid, ts);
                let img = self.procs[p].current();
                self.images[img]
                    .modules
                    .load(ts, path, build_id, base, segments);
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
                self.release(img, tid, ts, func, address, stack, true);
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
            | Record::Mremap { .. }
            | Record::FdOpen { .. }
            | Record::FdClose { .. }
            | Record::RssSample { .. }
            | Record::End { .. } => {}
            Record::SnapshotBegin { pid, .. } => self.snapshot_begin(pid),
            Record::SnapshotRoot { pid, pointers, .. } => {
                if let Some(s) = self.snapshots.get_mut(&pid) {
                    s.graph.add_root(&pointers);
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
        }
    }

    /// The running process with `pid`.
    fn running(&self, pid: u32) -> Option<usize> {
        self.by_pid
            .get(&pid)
            .copied()
            .filter(|&p| !self.procs[p].ended)
    }

    /// The running process with `pid`, created if the trace never started it.
    fn process_for(&mut self, pid: u32, ts: Timestamp) -> usize {
        if let Some(p) = self.running(pid) {
            return p;
        }
        let first_process = pid == self.header_pid && !self.by_pid.contains_key(&pid);
        let command = if first_process {
            self.header_command.clone()
        } else {
            Vec::new()
        };
        let heap = self.new_heap(Heap::new(first_process));
        self.add_process(ts, pid, None, None, command, heap, ModuleMap::new())
    }

    fn new_heap(&mut self, heap: Heap) -> usize {
        self.heaps.push(Some(heap));
        self.heaps.len() - 1
    }

    #[allow(clippy::too_many_arguments)]
    fn add_process(
        &mut self,
        ts: Timestamp,
        pid: u32,
        parent_pid: Option<u32>,
        origin: Option<ProcessOrigin>,
        command: Vec<String>,
        heap: usize,
        modules: ModuleMap,
    ) -> usize {
        let img = self.images.len();
        self.images.push(Image::new(command, ts, heap, modules));
        let p = self.procs.len();
        self.procs.push(ProcState {
            pid,
            parent_pid,
            origin,
            exit: None,
            images: vec![img],
            ended: false,
            threads: FastSet::default(),
        });
        self.by_pid.insert(pid, p);
        // The main thread's tid is the pid.
        self.bind_thread(pid, p);
        p
    }

    fn bind_thread(&mut self, tid: u32, process: usize) {
        let old = self.threads.insert(
            tid,
            Thread {
                process,
                last_alloc: None,
            },
        );
        if let Some(old) = old {
            if old.process != process {
                self.procs[old.process].threads.remove(&tid);
            }
        }
        self.procs[process].threads.insert(tid);
    }

    fn process_start(
        &mut self,
        ts: Timestamp,
        pid: u32,
        parent_pid: Option<u32>,
        origin: ProcessOrigin,
        command: Vec<String>,
    ) {
        if let Some(p) = self.running(pid) {
            if self.procs[p].origin.is_none() {
                // Its records came before its start: the start completes it.
                let proc = &mut self.procs[p];
                proc.origin = Some(origin);
                proc.parent_pid = parent_pid;
                let img = proc.current();
                if !command.is_empty() {
                    self.images[img].command = command;
                }
                return;
            }
            self.anomalies.duplicate_process_starts += 1;
            self.end_process(p, ts, None, ImageEnd::Superseded);
        }
        let parent_img = parent_pid
            .and_then(|pp| self.running(pp))
            .map(|pp| self.procs[pp].current());
        let child_img = self.images.len();
        let (heap, modules) = match (origin, parent_img) {
            (ProcessOrigin::Fork, Some(pi)) => {
                let parent = &self.images[pi];
                let heap = match self.heaps.get(parent.heap).and_then(Option::as_ref) {
                    Some(h) => h.fork(child_img),
                    None => Heap::new(false),
                };
                let modules = parent.modules.clone();
                (self.new_heap(heap), modules)
            }
            (ProcessOrigin::Vfork | ProcessOrigin::Clone, Some(pi)) => {
                let (heap_id, modules) = (self.images[pi].heap, self.images[pi].modules.clone());
                match self.heaps.get_mut(heap_id).and_then(Option::as_mut) {
                    Some(h) => {
                        h.users += 1;
                        (heap_id, modules)
                    }
                    None => (self.new_heap(Heap::new(false)), modules),
                }
            }
            (ProcessOrigin::Launched, _) => (self.new_heap(Heap::new(true)), ModuleMap::new()),
            // Attached, or a child whose parent the trace does not know: blocks may exist
            // that the trace never saw allocated.
            _ => (self.new_heap(Heap::new(false)), ModuleMap::new()),
        };
        let p = self.add_process(ts, pid, parent_pid, Some(origin), command, heap, modules);
        debug_assert_eq!(self.procs[p].current(), child_img);
        if origin == ProcessOrigin::Fork {
            self.inherit(child_img, ts);
        }
    }

    /// Accounts a fork child's copied heap as its inherited live blocks.
    fn inherit(&mut self, img: ImageId, ts: Timestamp) {
        let image = &mut self.images[img];
        let Some(heap) = self.heaps.get(image.heap).and_then(Option::as_ref) else {
            return;
        };
        for b in heap.live.values() {
            let site = image.sites.touch_at(b.stack, ts);
            site.live_blocks += 1;
            site.live_bytes = site.live_bytes.saturating_add(b.size);
            site.inherited_blocks += 1;
            site.inherited_bytes = site.inherited_bytes.saturating_add(b.size);
            image.live_blocks += 1;
            image.live_bytes = image.live_bytes.saturating_add(b.size);
        }
        image.totals.inherited_blocks = image.live_blocks;
        image.totals.inherited_bytes = image.live_bytes;
        if image.live_bytes > 0 {
            image.totals.peak_live_bytes = image.live_bytes;
            image.totals.peak_live_blocks = image.live_blocks;
            image.totals.peak_ts = Some(ts);
            image.sites.new_peak();
        }
    }

    fn exec(&mut self, ts: Timestamp, pid: u32, command: Vec<String>) {
        let p = self.process_for(pid, ts);
        let old = self.procs[p].current();
        self.close_image(old, ts, ImageEnd::Exec);
        let heap = self.new_heap(Heap::new(true));
        let img = self.images.len();
        self.images
            .push(Image::new(command, ts, heap, ModuleMap::new()));
        self.procs[p].images.push(img);
    }

    fn close_image(&mut self, img: ImageId, ts: Timestamp, end: ImageEnd) {
        let image = &mut self.images[img];
        if !image.is_open() {
            return;
        }
        image.sites.settle_at(ts.max(image.start_ts));
        let live = self.heaps.get(image.heap).and_then(Option::as_ref);
        image.timeline.finish(live.into_iter().flat_map(|h| {
            h.live
                .values()
                .filter(move |b| b.owner == img)
                .map(|b| (b.stack, b.size, b.ts))
        }));
        image.totals.live_at_exit_blocks = image.live_blocks;
        image.totals.live_at_exit_bytes = image.live_bytes;
        image.end_ts = ts.max(image.start_ts);
        image.end = Some(end);
        if let Some(slot) = self.heaps.get_mut(image.heap) {
            if let Some(heap) = slot {
                heap.users = heap.users.saturating_sub(1);
                if heap.users == 0 {
                    *slot = None;
                }
            }
        }
    }

    fn end_process(&mut self, p: usize, ts: Timestamp, exit: Option<ExitStatus>, end: ImageEnd) {
        let img = self.procs[p].current();
        self.close_image(img, ts, end);
        let proc = &mut self.procs[p];
        proc.exit = exit;
        proc.ended = true;
        for tid in std::mem::take(&mut proc.threads) {
            if self.threads.get(&tid).is_some_and(|t| t.process == p) {
                self.threads.remove(&tid);
            }
        }
    }

    /// The current image of the process `tid` belongs to.
    fn thread_image(&mut self, tid: u32, ts: Timestamp) -> Option<ImageId> {
        if let Some(t) = self.threads.get(&tid) {
            return Some(self.procs[t.process].current());
        }
        // No ThreadStart: a main thread whose process is known, or the first process
        // of a trace that never announced it.
        let p = match self.running(tid) {
            Some(p) => p,
            None if tid == self.header_pid && !self.by_pid.contains_key(&tid) => {
                self.process_for(tid, ts)
            }
            None => {
                self.anomalies.unattributed_events += 1;
                return None;
            }
        };
        self.bind_thread(tid, p);
        Some(self.procs[p].current())
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
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
        if let Some(old) = heap.live.insert(address, block) {
            self.anomalies.alloc_at_live_address += 1;
            if let Some(owner) = self.images.get_mut(old.owner) {
                owner.remove_live(old.stack, old.size, false, ts);
            }
        }
        self.images[img].add_live(stack, size, ts, true);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.last_alloc = Some((img, address));
        }
    }

    /// Releases `address` on behalf of image `img` (the free itself is already counted;
    /// `may_be_internal`: a plain free, which may turn out to be allocator bookkeeping).
    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        img: ImageId,
        tid: u32,
        ts: Timestamp,
        func: AllocFn,
        address: u64,
        stack: StackId,
        may_be_internal: bool,
    ) {
        let heap_id = self.images[img].heap;
        let Some(heap) = self.heaps.get_mut(heap_id).and_then(Option::as_mut) else {
            return;
        };
        // The common case first: one lookup that removes the live block.
        let Some(block) = heap.live.remove(&address) else {
            self.release_bad(img, tid, ts, func, address, stack, may_be_internal);
            return;
        };
        heap.remember_free(address, block.stack, block.func, stack, block.size);
        if block.func.family() != func.family() {
            self.images[img].findings.add(Finding {
                kind: FindingKind::MismatchedFree,
                free_fn: func,
                free_stack: stack,
                alloc_fn: Some(block.func),
                alloc_stack: Some(block.stack),
                previous_free_stack: None,
                count: 1,
                first: Occurrence {
                    address,
                    tid,
                    ts,
                    size: Some(block.size),
                },
            });
        }
        let temporary = match self.threads.get_mut(&tid) {
            Some(t) if t.last_alloc == Some((block.owner, address)) => {
                t.last_alloc = None;
                true
            }
            _ => false,
        };
        self.images[block.owner].remove_live(block.stack, block.size, temporary, ts);
    }

    /// [`Replay::release`] of an address that is not live: allocator bookkeeping, a
    /// double free, an invalid free, or (in an attached heap) an untracked one.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn release_bad(
        &mut self,
        img: ImageId,
        tid: u32,
        ts: Timestamp,
        func: AllocFn,
        address: u64,
        stack: StackId,
        may_be_internal: bool,
    ) {
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
        let finding = |kind, alloc_fn, alloc_stack, previous_free_stack, size| Finding {
            kind,
            free_fn: func,
            free_stack: stack,
            alloc_fn,
            alloc_stack,
            previous_free_stack,
            count: 1,
            first: Occurrence {
                address,
                tid,
                ts,
                size,
            },
        };
        let f = match heap.freed(address) {
            Some(prev) => finding(
                FindingKind::DoubleFree,
                Some(prev.alloc_fn),
                Some(prev.alloc_stack),
                Some(prev.free_stack),
                Some(prev.size),
            ),
            None if !heap.complete => {
                self.images[img].totals.untracked_frees += 1;
                return;
            }
            None => finding(FindingKind::InvalidFree, None, None, None, None),
        };
        self.images[img].findings.add(f);
    }

    #[allow(clippy::too_many_arguments)]
    fn realloc(
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
        // glibc: realloc(p, 0) frees p and returns NULL; realloc(p, n) that fails
        // returns NULL and leaves p alone.
        let frees_old = old != 0 && (new != 0 || size == 0);
        if frees_old {
            self.images[img].totals.frees += 1;
            self.release(img, tid, ts, func, old, stack, false);
        } else if old != 0 {
            // Failed: nothing changes, but a bad pointer is still worth reporting.
            self.images[img].totals.failed_allocations += 1;
            let heap = self.images[img].heap;
            let bad = self
                .heaps
                .get(heap)
                .and_then(Option::as_ref)
                .is_some_and(|h| {
                    !h.live.contains_key(&old) && (h.complete || h.freed(old).is_some())
                });
            if bad {
                self.release(img, tid, ts, func, old, stack, false);
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
