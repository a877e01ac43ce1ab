//! The replay's public model: what it hands back about the recorded process tree
//! ([`Process`], [`Image`], [`Totals`], [`ImageEnd`]), about the trace itself
//! ([`Anomalies`]), and all of it at the end ([`ReplayOutcome`]). The semantics are
//! those of the [`replay`](super) module docs.

use heaptape_format::{ExitStatus, ProcessOrigin, StackId, Timestamp};

use crate::callsites::{SiteStats, SiteTable};
use crate::checks::leaks::LeakKind;
use crate::checks::snapshots::SnapshotHistory;
use crate::checks::{Findings, LeakCheck, Resources, Timeline};
use crate::hash::FastMap;
use crate::modules::ModuleMap;
use crate::stacks::StackTable;

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
    /// neither counted in `frees` nor reported (see
    /// [`Replay::set_symbolizer`](super::Replay::set_symbolizer)).
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

/// An image's (or a call site's) figures as the reports add them up: see
/// [`Image::figures`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Successful allocations.
    pub allocations: u64,
    /// Bytes they requested.
    pub allocated_bytes: u64,
    /// Bytes live when the image ended by an exit (or a detach, or the trace's end),
    /// reachable or not.
    pub in_use_at_exit_bytes: u64,
    /// Bytes leaked, as LSan counts them: definitely and indirectly lost at the exit
    /// snapshot, suppressed records left out (0 without one).
    pub leaked_bytes: u64,
    /// Bytes live at the image's heap peak (the site's share of it), for images that
    /// ended that way too.
    pub peak_bytes: u64,
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
    /// while it ran (see [`LeakCheck`]).
    pub leaks: LeakCheck,
    /// Its snapshots over time: the earlier ones, and when lost blocks became
    /// unreachable (see [`SnapshotHistory`]).
    pub snapshots: SnapshotHistory,
    /// Its descriptors and mappings (see [`Resources`]).
    pub resources: Resources,
    /// Its live heap beside its RSS over time (see [`Timeline`]).
    pub timeline: Timeline,
    /// Its heap (an index into the replay's heaps).
    pub(super) heap: usize,
    /// Blocks live in it now.
    pub(super) live_blocks: u64,
    /// Bytes live in it now.
    pub(super) live_bytes: u64,
}

impl Image {
    /// A new image running `command` from `ts`, on heap `heap`.
    pub(super) fn new(
        command: Vec<String>,
        ts: Timestamp,
        heap: usize,
        modules: ModuleMap,
    ) -> Self {
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
            snapshots: SnapshotHistory::default(),
            resources: Default::default(),
            timeline: Default::default(),
            heap,
            live_blocks: 0,
            live_bytes: 0,
        }
    }

    /// Whether it still runs.
    pub(super) fn is_open(&self) -> bool {
        self.end.is_none()
    }

    /// Whether an exec replaced it: its heap was discarded then, neither leaked nor
    /// held at a peak of its own (a fork child that execs held its parent's blocks).
    pub fn replaced_by_exec(&self) -> bool {
        self.end == Some(ImageEnd::Exec)
    }

    /// The figures every report adds up across images and processes (`analyze` shows the
    /// same: an image replaced by exec lists its allocations and what it discarded).
    pub fn figures(&self) -> Figures {
        let ended = !self.replaced_by_exec();
        Figures {
            allocations: self.totals.allocations,
            allocated_bytes: self.totals.allocated_bytes,
            in_use_at_exit_bytes: if ended {
                self.totals.live_at_exit_bytes
            } else {
                0
            },
            leaked_bytes: match (ended, self.leaks.report()) {
                (true, Some(r)) => {
                    r.summary.definitely_lost.bytes + r.summary.indirectly_lost.bytes
                }
                _ => 0,
            },
            peak_bytes: if ended {
                self.totals.peak_live_bytes
            } else {
                0
            },
        }
    }

    /// A call site's figures, counted as [`Image::figures`] counts the image's; its
    /// `leaked_bytes` are `leaked` (the site's share of [`Image::leaked_by_stack`]).
    pub fn site_figures(&self, s: &SiteStats, leaked: u64) -> Figures {
        let ended = !self.replaced_by_exec();
        Figures {
            allocations: s.allocations,
            allocated_bytes: s.allocated_bytes,
            in_use_at_exit_bytes: if ended { s.live_bytes } else { 0 },
            leaked_bytes: if ended { leaked } else { 0 },
            peak_bytes: if ended { s.peak_bytes } else { 0 },
        }
    }

    /// Bytes definitely and indirectly lost at the exit snapshot, by allocation stack,
    /// suppressed records left out (empty without a snapshot).
    pub fn leaked_by_stack(&self) -> FastMap<StackId, u64> {
        let mut out: FastMap<StackId, u64> = FastMap::default();
        for r in self
            .leaks
            .report()
            .into_iter()
            .flat_map(|r| r.reported_records())
        {
            if matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost) {
                *out.entry(r.stack).or_default() += r.bytes;
            }
        }
        out
    }

    /// Accounts a block that became live in this image (and, if `allocation`, the
    /// allocation call that made it).
    pub(super) fn add_live(&mut self, stack: StackId, size: u64, ts: Timestamp, allocation: bool) {
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
    pub(super) fn remove_live(
        &mut self,
        stack: StackId,
        size: u64,
        temporary: bool,
        ts: Timestamp,
    ) {
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
    /// The trace's embedded symbols, in file order (none when
    /// [`Replay::set_keep_symbols`](super::Replay::set_keep_symbols) said so).
    pub symbols: Vec<heaptape_format::ModuleSymbols>,
}
