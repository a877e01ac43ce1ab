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

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{mpsc, Arc};

use heaptape_format::{AllocFn, ExitStatus, Header, ProcessOrigin, Record, StackId, Timestamp};

use crate::findings::{Finding, FindingKind, Findings, Occurrence};
use crate::growth::Clock;
use crate::hash::{FastMap, FastSet};
use crate::heap::{Block, Heap, ImageId};
use crate::leaks::{HeuristicMatches, HeuristicSet, LeakCheck, LiveBlock, SnapshotGraph};
use crate::modules::ModuleMap;
use crate::prepare::Prepared;
use crate::shards::{Batch, Binding, LastBinding, Lent, Shards, RUNS_AHEAD};
use crate::sites::SiteTable;
use crate::stacks::StackTable;
use crate::summary::RunSummary;
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
    /// [`crate::summary`]).
    summaries: VecDeque<mpsc::Receiver<(Batch, Option<RunSummary>)>>,
    /// Per image: its bucket clock as predicted after the runs handed over so far.
    predicted_clocks: Vec<Option<Clock>>,
    /// Runs accounted for through a summary, and serially.
    runs_merged: u64,
    runs_serial: u64,
}

/// Runs whose summaries may be pending after a merge: with more, the oldest is merged
/// (waiting for it if need be). One per rayon thread, at least two: summaries are a
/// quarter of a replay's work, and they must be able to run on every core at once.
fn summaries_ahead() -> usize {
    rayon::current_num_threads().max(2)
}

/// Fewest rayon threads with which runs are summarized on the pool (see
/// [`crate::summary`]); with fewer (one core), the replaying thread accounts for them
/// itself.
///
/// Summaries take the accounting off the replaying thread: 100 M synthetic events on
/// two cores, its CPU time 2.05 -> 0.81 s, its share of the work 37% -> 15%, which is
/// what bounds the replay on more cores. On two cores the elapsed time is the same
/// within this VM's noise (medians of alternating runs 6% better to 8% worse), for
/// 0-10% more CPU in all (the pool reads each run's steps (now records) and results from another
/// core's cache); see docs/PERFORMANCE.md.
const SUMMARY_MIN_THREADS: usize = 2;

/// What the batch path does with one record of a run: computed from the record and the
/// run's bindings where it is needed (by the accounting and the summaries, see
/// [`crate::shards::step`]), never stored.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// Applied as by [`Replay::apply`], in order: a record that is not a live-table
    /// event, or one of a thread whose image has no heap.
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

/// Whether a realloc of `old` to `size` bytes that returned `new` released `old`.
/// glibc: `realloc(p, 0)` frees `p` and returns NULL; a `realloc(p, n)` that fails
/// returns NULL and leaves `p` alone. (Planning, the batch accounting and the
/// record-by-record path all follow this one rule.)
#[inline]
pub(crate) fn realloc_frees_old(old: u64, new: u64, size: u64) -> bool {
    old != 0 && (new != 0 || size == 0)
}

/// Most records in a run: enough to amortise handing runs to the shard thread (a
/// channel message each way), few enough for a run's records and results to stay in a
/// core's cache between the shards and the accounting. On 2 cores, synthetic 10 M
/// events: 16,384-step runs 0.28-0.31 s, 32,768 0.32-0.44 s, 8,192 0.31-0.32 s, 4,096
/// 0.31-0.33 s (elapsed, best and median of 3; measured when runs were planned steps).
const RUN_STEPS: usize = 1 << 14;

/// Address shards by default: one per rayon thread but one, at least one. The rayon
/// pool also decodes the chunks (about a third of the work), and a run's shards wait
/// for each other, so a shard handed to a busy pool holds up the replay: on 2 cores,
/// 2 shards replayed 10 M recorded events in 0.60-0.63 s (0.85-0.89 s of CPU) where 1
/// shard took 0.48-0.53 s (0.64-0.69 s of CPU), the other core decoding.
/// A call that releases a block (a free, or the old block of a realloc), as the
/// release accounting needs it.
#[derive(Clone, Copy, Debug)]
struct Release {
    img: ImageId,
    tid: u32,
    ts: Timestamp,
    func: AllocFn,
    address: u64,
    stack: StackId,
    /// A plain free, which may turn out to be allocator bookkeeping.
    may_be_internal: bool,
}

impl Release {
    /// A finding about this call, first seen now.
    fn finding(
        &self,
        kind: FindingKind,
        alloc_fn: Option<AllocFn>,
        alloc_stack: Option<StackId>,
        previous_free_stack: Option<StackId>,
        size: Option<u64>,
    ) -> Finding {
        Finding {
            kind,
            free_fn: self.func,
            free_stack: self.stack,
            alloc_fn,
            alloc_stack,
            previous_free_stack,
            count: 1,
            first: Occurrence {
                address: self.address,
                tid: self.tid,
                ts: self.ts,
                size,
            },
        }
    }
}

fn default_shards() -> usize {
    rayon::current_num_threads().saturating_sub(1).clamp(1, 64)
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
            hint_image: None,
            hinted: FastSet::default(),
            hint_range: None,
            internal_frees: FastMap::default(),
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
        }
    }

    /// [`Replay::new`] with the heaps' live blocks in `shards` address shards (the
    /// default: see [`default_shards`]). Results do not depend on it.
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
                        .map(|(address, b)| LiveBlock {
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
        if let Some((tid, ts)) = crate::resources::event_thread(&rec) {
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
            Record::SnapshotBegin { pid, .. } => self.snapshot_begin(pid),
            Record::SnapshotRoot(root) => {
                if let Some(s) = self.snapshots.get_mut(&root.pid) {
                    s.graph.add_root(&root.pointers);
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

    /// Applies a chunk's records, in file order, with the same result as
    /// [`Replay::apply`] on each, and leaves `records` empty.
    pub fn apply_chunk(&mut self, records: &mut Vec<Record>) {
        let mut all = std::mem::take(records).into_iter().peekable();
        while all.peek().is_some() {
            let mut chunk = self.spent.pop().unwrap_or_default();
            chunk.clear_records();
            chunk
                .records
                .extend(all.by_ref().take(crate::prepare::MAX_RECORDS - 1));
            chunk.prepare(self.shards);
            self.apply_prepared(chunk);
        }
    }

    /// Applies a prepared chunk's records (see [`crate::prepare`]), in file order, with
    /// the same result as [`Replay::apply`] on each. The chunk's buffers come back
    /// through [`Replay::take_spent`] once its runs are done.
    ///
    /// Runs of allocator events are applied in three passes: the shards run the
    /// live-table operations (insert, remove, look up) the chunk's preparation listed,
    /// each shard in file order (an address only ever meets its own shard, so each sees
    /// its addresses' history in order), prefetching the slots of the operations ahead;
    /// then the accounting, in file order, with the blocks the shards found (sites,
    /// totals, peak, temporaries, freed history, findings): on the pool through run
    /// summaries (see [`crate::summary`]), or serially. The replaying thread binds each
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
    fn release_chunk(&mut self, chunk: Arc<Prepared>) {
        if let Ok(chunk) = Arc::try_unwrap(chunk) {
            self.spent.push(chunk);
        }
    }

    /// Whether `rec`, a record that is not a live-table event, must be applied alone
    /// after everything before it (otherwise it is applied in order with its run).
    fn ends_run(&self, rec: &Record) -> bool {
        match rec {
            Record::StackNode { .. }
            | Record::RssSample(_)
            | Record::ModuleUnload { .. }
            | Record::SnapshotRoot(_)
            | Record::SnapshotBlock { .. }
            | Record::SnapshotHeuristic { .. } => false,
            Record::ModuleLoad(m) => self.running(m.pid).is_none(),
            // Allocator events that change counters only (the thread is known: see
            // `first_unbound`).
            Record::Alloc { .. } | Record::Free { .. } | Record::Realloc { .. } => false,
            _ => match crate::resources::event_thread(rec) {
                Some((tid, _)) => !self.threads.contains_key(&tid),
                None => true,
            },
        }
    }

    /// The first allocator event among `range` of the chunk's records made by a thread
    /// that is not bound (applied alone: `Replay::apply` finds out what it is).
    fn first_unbound(&self, chunk: &Prepared, range: Range<usize>) -> Option<usize> {
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
    fn hand_over(&mut self, chunk: &Arc<Prepared>, range: Range<usize>) {
        let mut a = range.start;
        while a < range.end {
            let b = ((a / self.run_steps + 1) * self.run_steps).min(range.end);
            self.hand_over_run(chunk, a..b);
            a = b;
        }
    }

    /// Hands one run over; accounts for the oldest run handed over if the shards are
    /// [`RUNS_AHEAD`] runs behind.
    fn hand_over_run(&mut self, chunk: &Arc<Prepared>, range: Range<usize>) {
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
        batch.max_ts = chunk.max_ts(range.clone());
        batch.range = range;
        batch.chunk = Some(chunk.clone());
        self.submit(batch);
    }

    /// Hands a run to the shards; accounts for the oldest run handed over if the shards
    /// are [`RUNS_AHEAD`] runs behind.
    fn submit(&mut self, mut batch: Batch) {
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
    /// it, and predicts the clocks after it (see [`crate::summary`]).
    fn predict_clocks(&mut self, batch: &mut Batch) {
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
    /// [`crate::summary`]), at once otherwise.
    fn retire(&mut self, batch: Batch) {
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
                crate::summary::summarize(&batch, freed)
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
    fn merge_oldest(&mut self) {
        let Some(rx) = self.summaries.pop_front() else {
            return;
        };
        let (batch, summary) =
            crate::handoff::recv(&rx).expect("a summary task always sends its run back");
        match summary {
            Some(sum) if self.summary_applies(&sum) => self.merge(batch, sum),
            _ => self.account(batch),
        }
    }

    /// Whether a run's summary holds in the current state: its images are open, their
    /// clocks are the predicted ones, and no live figure goes below zero.
    fn summary_applies(&self, sum: &RunSummary) -> bool {
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
    fn merge(&mut self, mut batch: Batch, sum: RunSummary) {
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
    fn recycle(&mut self, mut batch: Batch) {
        if let Some(chunk) = batch.clear() {
            self.release_chunk(chunk);
        }
        self.spare.push(batch);
    }

    /// Finishes every pending run and takes the lent blocks back, so that the state is
    /// that of all records applied.
    fn finish_runs(&mut self) {
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

    /// The accounting of a run whose shards are done, in file order; its buffers are
    /// kept for a later run.
    fn account(&mut self, mut batch: Batch) {
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
            let step = crate::shards::step(&chunk, &batch.bindings, shards, i, &mut last);
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
                        may_be_internal: true,
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
                    };
                    if frees_old {
                        self.images[img].totals.frees += 1;
                        let removed = next(old_shard);
                        let temporary = hot.get(&mut self.threads, tid).freed(removed, old);
                        self.released(r, removed, temporary);
                    } else if old != 0 {
                        self.images[img].totals.failed_allocations += 1;
                        let live = next(old_shard).is_some();
                        if !live && self.bad_pointer(img, old) {
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
        drop(chunk);
        self.recycle(batch);
    }

    /// Records an RSS sample beside the live bytes of its process's image, plus that
    /// image's entry in `deltas` (a summarized run's change up to the sample, see
    /// [`crate::summary`]; none when the image's figures are current).
    fn sample_rss(&mut self, s: &heaptape_format::RssSample, deltas: &[(ImageId, i64)]) {
        if let Some(p) = self.running(s.pid) {
            let img = self.procs[p].current();
            let delta = deltas.iter().find(|d| d.0 == img).map_or(0, |d| d.1);
            let image = &mut self.images[img];
            let live = (image.live_bytes as i64 + delta) as u64;
            image.timeline.sample(s.ts, live, s.rss, s.anon);
        }
    }

    /// [`Replay::apply`]'s bookkeeping of an allocator event.
    #[inline]
    fn count_alloc_event(&mut self, ts: Timestamp) {
        self.last_ts = self.last_ts.max(ts);
        self.records += 1;
        self.alloc_events += 1;
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
        let heap = self.new_heap(Heap::new(first_process, self.shards));
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
                    None => Heap::new(false, self.shards),
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
                    None => (self.new_heap(Heap::new(false, self.shards)), modules),
                }
            }
            (ProcessOrigin::Launched, _) => (
                self.new_heap(Heap::new(true, self.shards)),
                ModuleMap::new(),
            ),
            // Attached, or a child whose parent the trace does not know: blocks may exist
            // that the trace never saw allocated.
            _ => (
                self.new_heap(Heap::new(false, self.shards)),
                ModuleMap::new(),
            ),
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
        let heap = self.new_heap(Heap::new(true, self.shards));
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
    fn allocated(
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
    fn release(&mut self, r: Release) {
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
    fn released(&mut self, r: Release, removed: Option<Block>, temporary: bool) {
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
            self.images[r.img].findings.add(r.finding(
                FindingKind::MismatchedFree,
                Some(block.func),
                Some(block.stack),
                None,
                Some(block.size),
            ));
        }
        self.images[block.owner].remove_live(block.stack, block.size, temporary, r.ts);
    }

    /// [`Replay::release`] of an address that is not live: allocator bookkeeping, a
    /// double free, an invalid free, or (in an attached heap) an untracked one.
    #[cold]
    fn release_bad(&mut self, r: Release) {
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
        let f = match heap.freed(address) {
            Some(prev) => r.finding(
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
            None => r.finding(FindingKind::InvalidFree, None, None, None, None),
        };
        self.images[img].findings.add(f);
    }

    /// Whether `old`, a pointer that is not a live block of image `img`'s heap, is a
    /// bad one (its failed realloc is worth reporting): the heap saw every allocation,
    /// or it freed `old` before. Not in an attached heap's unknown past, nor without a
    /// heap.
    fn bad_pointer(&self, img: ImageId, old: u64) -> bool {
        self.heaps
            .get(self.images[img].heap)
            .and_then(Option::as_ref)
            .is_some_and(|h| h.complete || h.freed(old).is_some())
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
        let frees_old = realloc_frees_old(old, new, size);
        let r = Release {
            img,
            tid,
            ts,
            func,
            address: old,
            stack,
            may_be_internal: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::LiveTable;
    use heaptape_format::{ClockSource, EndCounts};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn header() -> Header {
        Header {
            tool_version: "test".into(),
            command: vec!["./app".into()],
            pid: 100,
            start_time_unix_ns: 0,
            host: "h".into(),
            kernel: "k".into(),
            page_size: 4096,
            pointer_size: 8,
            clock: ClockSource::Synthetic,
        }
    }

    /// The first record of a generated trace: process 100 starts.
    fn start_record() -> Record {
        Record::ProcessStart {
            ts: 1,
            pid: 100,
            parent_pid: None,
            origin: ProcessOrigin::Launched,
            command: vec!["./app".into()],
        }
    }

    /// Ends a generated trace with its end record.
    fn push_end(recs: &mut Vec<Record>, ts: u64) {
        recs.push(Record::End {
            ts,
            counts: EndCounts {
                records: recs.len() as u64,
                alloc_events: 0,
                chunks: 0,
            },
        });
    }

    /// A random trace with processes (fork, vfork, exec, exit), threads that come and
    /// go, unbound threads, and allocator events over a small pool of addresses, so
    /// that double, invalid and mismatched frees, temporaries, allocations at live
    /// addresses, reallocs in place and failed reallocs all happen.
    fn random_trace(seed: u64, n: usize) -> Vec<Record> {
        let mut r = Rng(seed | 1);
        let mut recs = vec![start_record()];
        let mut ts = 10u64;
        let funcs = [
            AllocFn::Malloc,
            AllocFn::Calloc,
            AllocFn::New,
            AllocFn::NewArray,
        ];
        let frees = [
            AllocFn::Free,
            AllocFn::Free,
            AllocFn::Delete,
            AllocFn::DeleteArray,
        ];
        let mut next_pid = 101;
        for id in 1..8 {
            recs.push(Record::StackNode {
                id,
                parent: id - 1,
                address: 0x1000 + u64::from(id),
            });
        }
        for _ in 0..n {
            // Mostly forward, sometimes back (threads' clocks need not agree), with
            // gaps that widen the growth buckets.
            ts = match r.below(100) {
                0 => ts.saturating_sub(5_000),
                1 => ts + 1_000_000,
                _ => ts + 1 + r.below(300),
            };
            let tid = [100, 100, 100, 101, 102, 103, 104, 999][r.below(8) as usize];
            let address = 0x10_0000 + 16 * r.below(48);
            let stack = r.below(8) as StackId;
            let rec = match r.below(1000) {
                0..=3 => Record::ProcessStart {
                    ts,
                    pid: next_pid,
                    parent_pid: Some(100),
                    origin: [
                        ProcessOrigin::Fork,
                        ProcessOrigin::Vfork,
                        ProcessOrigin::Attached,
                    ][r.below(3) as usize],
                    command: vec![],
                },
                4 => Record::Exec {
                    ts,
                    pid: [100, 101, 102][r.below(3) as usize],
                    command: vec!["./next".into()],
                },
                5..=6 => Record::ProcessExit {
                    ts,
                    pid: 100 + r.below(4) as u32,
                    status: ExitStatus::Code(0),
                },
                7..=14 => Record::ThreadStart {
                    ts,
                    pid: 100 + r.below(4) as u32,
                    tid,
                },
                15..=18 => Record::ThreadExit { ts, tid },
                19..=25 => Record::RssSample(Box::new(heaptape_format::RssSample {
                    ts,
                    pid: 100 + r.below(3) as u32,
                    rss: r.below(1 << 30),
                    hwm: 0,
                    anon: r.below(1 << 30),
                    file: 0,
                    pss: None,
                })),
                26 => Record::SnapshotBegin { ts, pid: 100 },
                27 => Record::SnapshotEnd {
                    pid: 100,
                    blocks: r.below(40),
                    scanned_bytes: 0,
                },
                28..=29 => Record::StackNode {
                    id: 8 + r.below(8) as StackId,
                    parent: r.below(8) as StackId,
                    address: 0x2000 + r.below(100),
                },
                // A process starting again under a pid that runs (a damaged trace):
                // the threads bound to the old one keep an image without a heap.
                30 => Record::ProcessStart {
                    ts,
                    pid: 100 + r.below(4) as u32,
                    parent_pid: None,
                    origin: ProcessOrigin::Launched,
                    command: vec![],
                },
                31 => Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
                    ts,
                    pid: 100 + r.below(5) as u32,
                    path: "/lib/libx.so".into(),
                    build_id: vec![],
                    base: 0x7000_0000,
                    segments: vec![],
                })),
                32..=33 => Record::Mmap {
                    ts,
                    tid,
                    address: 0x5000_0000 + (r.below(8) << 12),
                    len: 4096,
                    prot: 3,
                    flags: 0x22,
                    fd: -1,
                    stack,
                },
                34..=489 => Record::Alloc {
                    ts,
                    tid,
                    func: funcs[r.below(4) as usize],
                    address: if r.below(50) == 0 { 0 } else { address },
                    size: r.below(5000),
                    align: 0,
                    stack,
                },
                490..=939 => Record::Free {
                    ts,
                    tid,
                    func: frees[r.below(4) as usize],
                    address: if r.below(50) == 0 { 0 } else { address },
                    stack,
                },
                _ => Record::Realloc {
                    ts,
                    tid,
                    func: AllocFn::Realloc,
                    old_address: if r.below(4) == 0 { 0 } else { address },
                    new_address: match r.below(4) {
                        0 => 0,
                        1 => address,
                        _ => 0x10_0000 + 16 * r.below(48),
                    },
                    size: if r.below(5) == 0 { 0 } else { r.below(5000) },
                    stack,
                },
            };
            if let Record::ProcessStart { pid, .. } = rec {
                if pid == next_pid {
                    next_pid += 1;
                }
            }
            recs.push(rec);
        }
        push_end(&mut recs, ts);
        // Sometimes records after the end (counted, never applied).
        if r.below(3) == 0 {
            for k in 0..5 {
                recs.push(Record::Alloc {
                    ts: ts + k,
                    tid: 100,
                    func: AllocFn::Malloc,
                    address: 0x10_0000 + 16 * k,
                    size: 8,
                    align: 0,
                    stack: 1,
                });
            }
        }
        recs
    }

    /// A random trace of mostly valid allocator calls (the kind of run the summaries
    /// take, see [`crate::summary`]): threads that churn, free each other's blocks and
    /// make temporaries, reallocs, timestamps that jump ahead and back, stack nodes, RSS
    /// samples, a fork and an exec; now and then a double free or a mismatched free,
    /// whose runs take the serial accounting.
    fn clean_trace(seed: u64, n: usize) -> Vec<Record> {
        let mut r = Rng(seed | 1);
        let mut recs = vec![start_record()];
        for tid in 101..104 {
            recs.push(Record::ThreadStart {
                ts: 2,
                pid: 100,
                tid,
            });
        }
        let mut ts = 10u64;
        // Per process (100, then its fork 200): live blocks and freed addresses.
        type Blocks = (Vec<(u64, AllocFn)>, Vec<u64>);
        let mut heaps: [Blocks; 2] = Default::default();
        let mut next_address = 0x10_0000u64;
        for i in 0..n {
            ts = match r.below(200) {
                0 => ts.saturating_sub(3_000),
                1 => ts + 300_000,
                _ => ts + 1 + r.below(200),
            };
            let tid = [100, 100, 101, 102, 103][r.below(5) as usize];
            let stack = r.below(12) as StackId;
            if i == n / 2 {
                heaps[1] = heaps[0].clone();
                recs.push(Record::ProcessStart {
                    ts,
                    pid: 200,
                    parent_pid: Some(100),
                    origin: ProcessOrigin::Fork,
                    command: vec![],
                });
            }
            if i == 3 * n / 4 {
                heaps[1] = Default::default();
                recs.push(Record::Exec {
                    ts,
                    pid: 200,
                    command: vec!["./child".into()],
                });
            }
            // The forked child's own thread, now and then.
            let tid = if i > n / 2 && r.below(4) == 0 {
                200
            } else {
                tid
            };
            let (live, freed) = &mut heaps[usize::from(tid == 200)];
            let choice = r.below(5000);
            let rec = match choice {
                0 => Record::RssSample(Box::new(heaptape_format::RssSample {
                    ts,
                    pid: 100,
                    rss: r.below(1 << 30),
                    hwm: 0,
                    anon: r.below(1 << 30),
                    file: 0,
                    pss: None,
                })),
                1 if !freed.is_empty() => Record::Free {
                    ts,
                    tid,
                    func: AllocFn::Free,
                    address: freed[r.below(freed.len() as u64) as usize],
                    stack,
                },
                2..=40 => Record::StackNode {
                    id: 100 + i as StackId,
                    parent: r.below(12) as StackId,
                    address: 0x2000 + r.below(100),
                },
                41..=300 if live.last().is_some_and(|b| b.1 != AllocFn::New) => {
                    let k = live.len() - 1;
                    let old = live[k].0;
                    let new = if r.below(3) == 0 {
                        old
                    } else {
                        next_address += 16 * (1 + r.below(4));
                        next_address
                    };
                    let size = r.below(3000);
                    let new = if size == 0 {
                        // realloc(p, 0) frees p.
                        live.swap_remove(k);
                        freed.push(old);
                        0
                    } else {
                        live[k] = (new, AllocFn::Malloc);
                        new
                    };
                    Record::Realloc {
                        ts,
                        tid,
                        func: AllocFn::Realloc,
                        old_address: old,
                        new_address: new,
                        size,
                        stack,
                    }
                }
                301..=2600 => {
                    // Addresses are reused, as allocators do.
                    let address = match freed.pop() {
                        Some(a) if r.below(2) == 0 => a,
                        other => {
                            freed.extend(other);
                            next_address += 16 * (1 + r.below(4));
                            next_address
                        }
                    };
                    let func =
                        [AllocFn::Malloc, AllocFn::Calloc, AllocFn::New][r.below(3) as usize];
                    live.push((address, func));
                    Record::Alloc {
                        ts,
                        tid,
                        func,
                        address,
                        size: r.below(4000),
                        align: 0,
                        stack,
                    }
                }
                _ if !live.is_empty() => {
                    // Mostly the newest block (a temporary), else any.
                    let k = if r.below(3) == 0 {
                        live.len() - 1
                    } else {
                        r.below(live.len() as u64) as usize
                    };
                    let (address, func) = live.swap_remove(k);
                    freed.push(address);
                    let func = match (func, r.below(10_000)) {
                        (_, 0) => AllocFn::DeleteArray,
                        (AllocFn::New, _) => AllocFn::Delete,
                        _ => AllocFn::Free,
                    };
                    Record::Free {
                        ts,
                        tid,
                        func,
                        address,
                        stack,
                    }
                }
                _ => continue,
            };
            recs.push(rec);
        }
        push_end(&mut recs, ts);
        recs
    }

    /// Everything the replay produced, in a form that does not depend on map order.
    fn canonical(o: &ReplayOutcome) -> String {
        let mut out = format!(
            "{:?} {} {} {}\n",
            o.anomalies, o.complete, o.records, o.last_ts
        );
        for p in &o.processes {
            out += &format!(
                "process {} {:?} {:?} {:?}\n",
                p.pid, p.parent_pid, p.origin, p.exit
            );
            for img in &p.images {
                out += &format!(
                    "image {:?} {} {} {:?}\n{:?}\n{:?}\n{:?}\n{:?}\nbucket {}\n",
                    img.command,
                    img.start_ts,
                    img.end_ts,
                    img.end,
                    img.totals,
                    img.findings.list(),
                    img.timeline,
                    img.leaks,
                    img.sites.bucket_ns()
                );
                let mut sites: Vec<_> = img.sites.iter().collect();
                sites.sort_by_key(|(k, _)| *k);
                for (k, s) in sites {
                    out += &format!("site {k} {s:?}\n");
                }
            }
        }
        out
    }

    fn sequential(recs: &[Record]) -> String {
        let mut r = Replay::with_shards(&header(), 1);
        for rec in recs {
            r.apply(rec.clone());
        }
        canonical(&r.finish())
    }

    fn batched(recs: &[Record], shards: usize, chunk: usize, run_steps: usize) -> String {
        batched_runs(recs, shards, chunk, run_steps).0
    }

    /// [`batched`], and how many runs were merged from summaries and accounted for
    /// serially.
    fn batched_runs(
        recs: &[Record],
        shards: usize,
        chunk: usize,
        run_steps: usize,
    ) -> (String, u64, u64) {
        let mut r = Replay::with_shards(&header(), shards);
        r.run_steps = run_steps;
        for c in recs.chunks(chunk) {
            let mut v = c.to_vec();
            r.apply_chunk(&mut v);
            assert!(v.is_empty());
        }
        r.finish_runs();
        let (merged, serial) = (r.runs_merged, r.runs_serial);
        (canonical(&r.finish()), merged, serial)
    }

    #[test]
    fn batch_replay_equals_record_by_record_replay() {
        for seed in 1..40u64 {
            let recs = random_trace(seed * 0x9e37_79b9, 3000);
            let expected = sequential(&recs);
            // Runs longer than the trace, and short ones (many runs in flight, runs
            // spanning chunks).
            for (shards, chunk, run) in [
                (1, 5000, RUN_STEPS),
                (1, 5000, 1),
                (2, 5000, 7),
                (3, 97, 50),
                (4, 1, 3),
                (7, 613, 1000),
            ] {
                let got = batched(&recs, shards, chunk, run);
                assert!(
                    got == expected,
                    "seed {seed}, {shards} shards, chunks of {chunk}, runs of {run}: differs"
                );
            }
            // With one rayon thread, the shards run inline.
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
            for (shards, chunk, run) in [(1, 97, 5), (2, 613, 50)] {
                let got = one
                    .as_ref()
                    .expect("a pool")
                    .install(|| batched(&recs, shards, chunk, run));
                assert!(
                    got == expected,
                    "seed {seed}, inline, {shards} shards, chunks of {chunk}, runs of {run}: differs"
                );
            }
        }
    }

    /// The summarized accounting (a pool of [`SUMMARY_MIN_THREADS`] threads, see
    /// [`crate::summary`]) gives what the record-by-record replay gives, on traces where
    /// most runs are summarized and some are not.
    #[test]
    fn summarized_replay_equals_record_by_record_replay() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(SUMMARY_MIN_THREADS)
            .build();
        let pool = pool.as_ref().expect("a pool");
        let mut runs = (0, 0);
        for seed in 1..30u64 {
            let recs = clean_trace(seed * 0x2545_f491, 20_000);
            let expected = sequential(&recs);
            for (shards, chunk, run) in
                [(1, 5000, 500), (1, 333, 64), (2, 1000, 7), (3, 4096, 1000)]
            {
                let (got, merged, serial) =
                    pool.install(|| batched_runs(&recs, shards, chunk, run));
                assert!(
                    got == expected,
                    "seed {seed}, {shards} shards, chunks of {chunk}, runs of {run}: differs"
                );
                // Both paths were taken.
                assert!(
                    merged > 0 && serial > 0,
                    "seed {seed}, runs of {run}: {merged} runs merged, {serial} serial"
                );
                runs.0 += merged;
                runs.1 += serial;
            }
        }
        // Most runs were summarized.
        assert!(
            runs.0 > 2 * runs.1,
            "{} runs merged, {} serial",
            runs.0,
            runs.1
        );
    }

    #[test]
    fn live_table_matches_a_map() {
        let mut r = Rng(7);
        let mut t = LiveTable::default();
        let mut m = FastMap::default();
        let block = |size| Block {
            size,
            ts: 0,
            stack: 0,
            owner: 0,
            func: AllocFn::Malloc,
        };
        for i in 0..200_000u64 {
            // A pool that grows then shrinks, so the table grows and clusters form.
            let pool = if i < 100_000 {
                64 + i / 50
            } else {
                64 + (200_000 - i) / 50
            };
            let a = 16 * (1 + r.below(pool));
            let h = crate::hash::fmix64(a);
            if r.below(2) == 0 {
                assert_eq!(t.insert_hashed(a, h, block(i)), m.insert(a, block(i)));
            } else {
                assert_eq!(t.remove_hashed(a, h), m.remove(&a));
            }
            assert_eq!(t.len(), m.len());
        }
        let mut got: Vec<_> = t.iter().collect();
        got.sort_by_key(|x| x.0);
        let mut want: Vec<_> = m.into_iter().collect();
        want.sort_by_key(|x| x.0);
        assert_eq!(got, want);
    }
}
