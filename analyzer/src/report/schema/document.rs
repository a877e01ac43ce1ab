//! The document of `heaptape analyze --json`: the trace, its processes and their
//! program images (each image's sections are in [`super::sites`], [`super::leaks`] and
//! [`super::resources`]).

use serde::Serialize;

use super::{
    FdLeak, Frame, GrowthSite, InvalidFree, LeakSummary, LossRecord, LostBetween, MmapLeak,
    Retention, SiteAtPeak, SiteLiveAtExit, Snapshot, TimelinePoint, Verdict,
};

/// The version of the document's shape: 2 since stacks are shared (see
/// [`super::Stack`]) and a site live at exit has `stack` and `stack_id` like the other
/// lists (1: its `frames` and trie id `stack`).
pub const SCHEMA_VERSION: u32 = 2;

/// The whole document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The distinct frames of the document's shared stacks (empty while they are
    /// inline).
    pub frames: Vec<Frame>,
    /// Every process of the recorded tree, in order of appearance.
    pub processes: Vec<Process>,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The distinct shared stacks: indices into `frames`, innermost first.
    pub stacks: Vec<Vec<u32>>,
    /// The trace itself.
    pub trace: Trace,
    /// What the user should know about the trace and its symbolization: at most one
    /// string, every warning joined by `; ` (none for a complete, well-formed trace
    /// whose files all matched).
    pub warnings: Vec<String>,
}

impl Report {
    /// A document of `processes` in `trace`, its stacks as they are (inline when built).
    pub fn new(processes: Vec<Process>, trace: Trace, warnings: Vec<String>) -> Report {
        Report {
            frames: Vec::new(),
            processes,
            schema_version: SCHEMA_VERSION,
            stacks: Vec::new(),
            trace,
            warnings,
        }
    }
}

/// The trace: its header and how much of it was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// The recorded command line.
    pub command: Vec<String>,
    /// Whether the trace was read to its end.
    pub complete: bool,
    /// The time of its last record.
    pub duration_ns: u64,
    /// The recording machine's host name.
    pub host: String,
    /// The recording machine's kernel release.
    pub kernel: String,
    /// The page size of the recording machine.
    pub page_size: u32,
    /// The pid the trace was recorded on (launched or attached to).
    pub pid: u32,
    /// Records read.
    pub records: u64,
    /// Nodes of the stack trie.
    pub stack_nodes: usize,
    /// When recording started, in nanoseconds since the Unix epoch.
    pub start_time_unix_ns: u64,
    /// The recorder's version.
    pub tool_version: String,
    /// Where and why the readable data ends, for an incomplete trace.
    pub truncation: Option<Truncation>,
}

/// Where a truncated trace's readable data ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Truncation {
    /// The byte offset where it ends.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
}

/// One process: the keys of the [`Image`] it ended with (its command and figures are
/// the process's), and its own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Process {
    /// See [`Image::call_site_depth`].
    pub call_site_depth: Option<usize>,
    /// See [`Image::command`].
    pub command: Vec<String>,
    /// See [`Image::end_ns`].
    pub end_ns: u64,
    /// See [`Image::ended_by`].
    pub ended_by: &'static str,
    /// How it ended; `null` when the trace does not say.
    pub exit: Option<Exit>,
    /// See [`Image::fd_leaks`].
    pub fd_leaks: Vec<FdLeak>,
    /// See [`Image::growth`].
    pub growth: Vec<GrowthSite>,
    /// See [`Image::growth_bucket_ns`].
    pub growth_bucket_ns: u64,
    /// See [`Image::invalid_frees`].
    pub invalid_frees: Vec<InvalidFree>,
    /// See [`Image::leaks`].
    pub leaks: Option<LeakSummary>,
    /// See [`Image::leaks_unavailable`].
    pub leaks_unavailable: Option<String>,
    /// See [`Image::loss_records`].
    pub loss_records: Vec<LossRecord>,
    /// See [`Image::lost_between`].
    pub lost_between: Vec<LostBetween>,
    /// See [`Image::mmap_leaks`].
    pub mmap_leaks: Vec<MmapLeak>,
    /// See [`Image::modules`]; `None` (the key left out) only on the HTML page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<Vec<Module>>,
    /// How it started (`launched`, `attached`, `fork`, `vfork`, `clone`); `null` when
    /// the trace never said.
    pub origin: Option<&'static str>,
    /// Its parent's pid, when the parent is in the trace.
    pub parent_pid: Option<u32>,
    /// Its pid.
    pub pid: u32,
    /// The images it exec'd away from, oldest first.
    pub previous_images: Vec<Image>,
    /// See [`Image::retention`].
    pub retention: Option<Retention>,
    /// See [`Image::sites_at_peak`].
    pub sites_at_peak: Vec<SiteAtPeak>,
    /// See [`Image::sites_live_at_exit`].
    pub sites_live_at_exit: Vec<SiteLiveAtExit>,
    /// See [`Image::snapshots`].
    pub snapshots: Vec<Snapshot>,
    /// See [`Image::start_ns`].
    pub start_ns: u64,
    /// See [`Image::timeline`].
    pub timeline: Vec<TimelinePoint>,
    /// See [`Image::timeline_verdict`].
    pub timeline_verdict: Verdict,
    /// See [`Image::totals`].
    pub totals: Totals,
}

impl Process {
    /// The process `pid` that ended with `image` after running `previous_images`.
    pub fn new(
        image: Image,
        pid: u32,
        parent_pid: Option<u32>,
        origin: Option<&'static str>,
        exit: Option<Exit>,
        previous_images: Vec<Image>,
    ) -> Process {
        // Destructured without `..`: a key added to `Image` does not compile until the
        // process has it too.
        let Image {
            call_site_depth,
            command,
            end_ns,
            ended_by,
            fd_leaks,
            growth,
            growth_bucket_ns,
            invalid_frees,
            leaks,
            leaks_unavailable,
            loss_records,
            lost_between,
            mmap_leaks,
            modules,
            retention,
            sites_at_peak,
            sites_live_at_exit,
            snapshots,
            start_ns,
            timeline,
            timeline_verdict,
            totals,
        } = image;
        Process {
            call_site_depth,
            command,
            end_ns,
            ended_by,
            exit,
            fd_leaks,
            growth,
            growth_bucket_ns,
            invalid_frees,
            leaks,
            leaks_unavailable,
            loss_records,
            lost_between,
            mmap_leaks,
            modules: Some(modules),
            origin,
            parent_pid,
            pid,
            previous_images,
            retention,
            sites_at_peak,
            sites_live_at_exit,
            snapshots,
            start_ns,
            timeline,
            timeline_verdict,
            totals,
        }
    }
}

/// How a process ended: `{"code": N}`, `{"signal": N}` or `{"detached": true}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It was still running when the recorder detached (always `true`).
    Detached(bool),
}

/// One program image run by a process (its start, or an exec, to its exit or next
/// exec).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Image {
    /// The `--call-site-depth` the per-site sections are grouped by; `null` for one
    /// site per stack.
    pub call_site_depth: Option<usize>,
    /// Its command line.
    pub command: Vec<String>,
    /// When it ended.
    pub end_ns: u64,
    /// Why it ended: `exit`, `exec`, `trace_end` or `superseded`.
    pub ended_by: &'static str,
    /// Descriptors it opened and did not close.
    pub fd_leaks: Vec<FdLeak>,
    /// Call sites ranked by growth (the top ones).
    pub growth: Vec<GrowthSite>,
    /// The width of a bucket of the growth series.
    pub growth_bucket_ns: u64,
    /// Invalid, double and mismatched frees.
    pub invalid_frees: Vec<InvalidFree>,
    /// The leak summary; `null` without a classification.
    pub leaks: Option<LeakSummary>,
    /// Why leaks could not be classified; `null` when they were.
    pub leaks_unavailable: Option<String>,
    /// memcheck's loss records, largest first.
    pub loss_records: Vec<LossRecord>,
    /// The blocks definitely lost at the last snapshot and the two snapshots between
    /// which each became unreachable; empty with fewer than two snapshots.
    pub lost_between: Vec<LostBetween>,
    /// Regions it mapped itself and did not unmap.
    pub mmap_leaks: Vec<MmapLeak>,
    /// Its modules.
    pub modules: Vec<Module>,
    /// Who holds its reachable memory at its last snapshot; `null` without one.
    pub retention: Option<Retention>,
    /// The call sites holding the most bytes at its heap peak (the top ones).
    pub sites_at_peak: Vec<SiteAtPeak>,
    /// The call sites holding the most bytes when it ended (the top ones).
    pub sites_live_at_exit: Vec<SiteLiveAtExit>,
    /// Its complete snapshots, oldest first: leak classes and largest roots at each.
    pub snapshots: Vec<Snapshot>,
    /// When it started (its process's start, or the exec).
    pub start_ns: u64,
    /// Its live heap beside its RSS over time.
    pub timeline: Vec<TimelinePoint>,
    /// What the timeline's shape says.
    pub timeline_verdict: Verdict,
    /// Its figures.
    pub totals: Totals,
}

/// An image's figures: valgrind's counts and the replay's extras.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Totals {
    /// Bytes requested by the successful allocations.
    pub allocated_bytes: u64,
    /// Allocations per second over the image's lifetime; `null` for a zero-length one.
    pub allocation_rate_per_sec: Option<f64>,
    /// Successful allocation calls (including the allocating half of a realloc).
    pub allocations: u64,
    /// Frees made by the C library's own bookkeeping of pointers that were not live
    /// blocks (neither counted in `frees` nor reported).
    pub allocator_internal_frees: u64,
    /// Allocation calls that returned NULL.
    pub failed_allocations: u64,
    /// Calls that released a non-NULL pointer.
    pub frees: u64,
    /// Blocks inherited from the parent at fork.
    pub inherited_blocks: u64,
    /// Bytes inherited from the parent at fork.
    pub inherited_bytes: u64,
    /// Blocks live when the image ended.
    pub live_at_exit_blocks: u64,
    /// Bytes live when the image ended.
    pub live_at_exit_bytes: u64,
    /// Live blocks when the heap peak was first reached.
    pub peak_live_blocks: u64,
    /// The highest live byte count reached.
    pub peak_live_bytes: u64,
    /// When the peak was first reached; `null` if the heap never held a byte.
    pub peak_live_ns: Option<u64>,
    /// Allocations freed by their thread before its next allocation.
    pub temporary_allocations: u64,
    /// Frees of addresses allocated before an attach.
    pub untracked_frees: u64,
}

/// One module of an image: an executable, a shared library or a pseudo module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Module {
    /// Its load bias (runtime address minus link-time address), `"0x…"`.
    pub base: String,
    /// Its GNU build-id in hex (empty when the file has none).
    pub build_id: String,
    /// When it was mapped.
    pub loaded_ns: u64,
    /// Its file's path, or the pseudo name (`[vdso]`).
    pub path: String,
    /// When it was unmapped; `null` if it stayed.
    pub unloaded_ns: Option<u64>,
}
