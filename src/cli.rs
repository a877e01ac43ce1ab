//! The command line's options: clap definitions, whose doc comments are the help text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use heaptape_analyzer::diff::{Condition, DEFAULT_DEPTH};
use heaptape_analyzer::flamegraph::Metric;
use heaptape_analyzer::{FailOn, HeuristicSet};

#[derive(Parser)]
#[command(
    name = "heaptape",
    version,
    about = "Record-and-replay heap profiler: record allocator calls under ptrace, analyze leaks offline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a program under the recorder and write a trace of every allocator call.
    Record(RecordArgs),
    /// Record a program and print the report when it ends, like valgrind (the report goes
    /// to standard error; the trace is kept). Exits with the program's status, or 1 when
    /// --fail-on finds something.
    Run(RunArgs),
    /// Replay a trace and report totals, leaks, growth and invalid frees.
    Analyze(AnalyzeArgs),
    /// Write a flamegraph (SVG) of a trace.
    Flamegraph(FlamegraphArgs),
    /// Write a self-contained HTML report of a trace: memory over time (drag to select a
    /// window: its growing call sites and their flame graph), leaks, bad frees, growth.
    Report(HtmlArgs),
    /// Write a trace's heap profile for other tools: pprof (go tool pprof, Pyroscope,
    /// Parca) or speedscope.
    Export(ExportArgs),
    /// Compare the traces of two versions of a program.
    Diff(DiffArgs),
    /// Print every record of a trace, one per line (for debugging and scripting).
    Dump(DumpArgs),
    /// Print a shell completion script: `heaptape completions bash >
    /// /etc/bash_completion.d/heaptape` (or zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff): `heaptape man | man -l -`.
    Man,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct DumpArgs {
    /// The trace.
    pub trace: PathBuf,
    /// One JSON object per line (`"record"`: its kind), addresses as `"0x…"` strings.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RecordArgs {
    /// Attach to this running process instead of launching one; recording ends at
    /// Ctrl-C, SIGTERM, SIGHUP, --duration or the process's exit, then heaptape detaches
    /// and the process goes on unchanged.
    #[arg(long, conflicts_with = "program")]
    pub pid: Option<u32>,
    /// With --pid: record for this long, e.g. 30s, 2m, 500ms.
    #[arg(long, requires = "pid", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub flags: RecordFlags,
    /// The program to run and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub program: Vec<OsString>,
}

/// How to record: the options `record` and `run` share.
#[derive(Args)]
pub struct RecordFlags {
    /// Trace file to write [default: heaptape.<program>.<pid>.trace].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Do not follow children: detach them (after removing breakpoints) instead.
    #[arg(long)]
    pub no_follow: bool,
    /// Maximum number of frames recorded per call stack.
    #[arg(long, default_value_t = 128)]
    pub max_depth: usize,
    /// Also hook allocator functions with this prefix (e.g. `je_`); repeatable.
    #[arg(long = "allocator-prefix", value_name = "PREFIX")]
    pub allocator_prefixes: Vec<String>,
    /// Do not take a reachability snapshot at exit.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Also take a reachability snapshot of every recorded process this often while it
    /// runs, e.g. 10s, 1m (each stops the process for as long as it takes: about 0.5 s
    /// per GiB of heap). SIGUSR2 sent to heaptape takes one at any time.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, conflicts_with = "no_snapshot")]
    pub snapshot_every: Option<Duration>,
    /// CPU placement: `same` pins the recorder and the program to one CPU (fastest for
    /// single-threaded programs on VMs), `free` leaves it to the scheduler.
    #[arg(long, value_enum, default_value_t = CpuArg::Free)]
    pub cpu: CpuArg,
    /// How allocator calls reach the recorder: `ring` (each call writes an event into
    /// shared memory and goes on; the recorder reads them while the program runs) or
    /// `stop` (each call stops the program once).
    #[arg(long, value_enum, default_value_t = ModeArg::Ring)]
    pub mode: ModeArg,
    /// Sample the program's RSS every this many milliseconds (0: never).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub rss_interval: u64,
    /// Print tracer statistics at the end (stops per call, time spent unwinding).
    #[arg(long)]
    pub stats: bool,
    /// Do not embed in the trace, when the recording ends, the symbols (functions,
    /// source files and lines, inlined calls) of every address its stacks hold. Without
    /// them, the trace names its frames only while the recorded files (the same builds)
    /// are at hand.
    #[arg(long)]
    pub no_symbolize: bool,
}

/// `heaptape run`: record a program, then report on it.
#[derive(Args)]
#[command(after_help = "Examples:
  heaptape run -- ./app --port 8080
  heaptape run --fail-on definite,indirect -o app.trace -- ./tests/unit")]
pub struct RunArgs {
    #[command(flatten)]
    pub record: RecordFlags,
    #[command(flatten)]
    pub report: ReportFlags,
    /// The program to run and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM",
        required = true
    )]
    pub program: Vec<OsString>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CpuArg {
    Free,
    Same,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Ring,
    Stop,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// The trace to analyze.
    pub trace: PathBuf,
    #[command(flatten)]
    pub flags: ReportFlags,
}

/// What the report holds and how it reads: the options `analyze` and `run` share.
#[derive(Args)]
pub struct ReportFlags {
    /// Print the report as JSON (compact; each distinct stack once, in the document's
    /// `stacks` and `frames` tables, referred to by index).
    #[arg(long)]
    pub json: bool,
    /// With --json: indented, for people.
    #[arg(long, requires = "json")]
    pub pretty: bool,
    /// Number of entries per ranked section [default: 10 in text, every entry in JSON].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Group call sites by their innermost N frames in every per-site section (0: one
    /// site per distinct stack).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub call_site_depth: usize,
    #[command(flatten)]
    pub symbols: SymbolFlags,
    /// Exit 1 if any of these findings exist: definite, indirect, possible, reachable,
    /// invalid-free (comma-separated, or `all`). For CI.
    #[arg(long, value_name = "KINDS", value_parser = FailOn::parse)]
    pub fail_on: Option<FailOn>,
    #[command(flatten)]
    pub suppressions: SuppressionFlags,
    /// Print one suppression in valgrind's format per loss record instead of the report
    /// (each after a `#` comment naming its record): save it as a file for
    /// --suppressions.
    #[arg(long, conflicts_with = "json")]
    pub gen_suppressions: bool,
    /// memcheck's interior-pointer heuristics: all, none, or a list of stdstring,
    /// length64, newarray, multipleinheritance.
    #[arg(long, value_name = "SET", default_value = "all", value_parser = HeuristicSet::parse)]
    pub leak_check_heuristics: HeuristicSet,
    /// Go on below `main` in the text report's stacks (the C library's start-up
    /// frames), as memcheck's --show-below-main=yes.
    #[arg(long)]
    pub show_below_main: bool,
    /// Colour in the text report: auto (on a terminal, unless NO_COLOR is set), always,
    /// never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

/// Which loss records are hidden: the options every command that shows leaks shares.
#[derive(Args)]
pub struct SuppressionFlags {
    /// Read leak suppressions from FILE, in valgrind memcheck's format (`{ NAME
    /// Memcheck:Leak fun:malloc fun:make_* ... }` blocks) or LeakSanitizer's
    /// (`leak:PATTERN` lines); repeatable. Suppressed loss records are counted as
    /// suppressed, not listed, and never fail --fail-on.
    #[arg(long = "suppressions", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Do not apply heaptape's default suppressions, which hide the blocks the C and C++
    /// runtimes keep for the life of the process (threads' TLS vectors, stdio buffers,
    /// libstdc++'s emergency exception pool, the loader's blocks).
    #[arg(long)]
    pub no_default_suppressions: bool,
}

/// Where frames get their names: the options every command that shows stacks shares.
#[derive(Args)]
pub struct SymbolFlags {
    /// Extra directory of separate debug files (searched before /usr/lib/debug);
    /// repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Root of the recorded machine's file system, for traces analyzed elsewhere: module
    /// paths are looked up under it first.
    #[arg(long, value_name = "DIR")]
    pub sysroot: Option<PathBuf>,
    /// Show raw addresses (module+offset) instead of function names and source lines.
    #[arg(long)]
    pub no_symbols: bool,
}

impl SymbolFlags {
    /// The analyzer's options for these flags (the others at their defaults).
    pub fn options(&self) -> heaptape_analyzer::AnalyzeOptions {
        heaptape_analyzer::AnalyzeOptions {
            symbolize: !self.no_symbols,
            debug_dirs: self.debug_dirs.clone(),
            sysroot: self.sysroot.clone(),
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

impl ColorArg {
    /// Whether to colour a report going to a terminal (`terminal`) or not.
    pub fn enabled(self, terminal: bool) -> bool {
        match self {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

#[derive(Args)]
pub struct FlamegraphArgs {
    /// The trace.
    pub trace: PathBuf,
    /// File to write (SVG, or folded stacks with --folded), `-` for standard output
    /// [default: heaptape.svg; with --folded: standard output].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// What widths measure: bytes leaked (definitely and indirectly lost at exit, as
    /// LSan counts them), bytes in use at exit (reachable or not), bytes allocated,
    /// allocation calls, bytes live at the heap peak, temporary allocations, or bytes
    /// retained (by root and dominator-tree path, at the last snapshot).
    #[arg(long, value_enum, default_value_t = MetricArg::Leaked)]
    pub metric: MetricArg,
    /// Write folded stacks (`outer;...;inner value` lines) instead of an SVG.
    #[arg(long)]
    pub folded: bool,
    /// Group stacks by their innermost N frames (0: whole stacks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub call_site_depth: usize,
    #[command(flatten)]
    pub symbols: SymbolFlags,
    #[command(flatten)]
    pub suppressions: SuppressionFlags,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MetricArg {
    /// Bytes leaked: definitely and indirectly lost at exit (LSan's "leaked").
    Leaked,
    /// Bytes still allocated at exit, reachable or not (memcheck's "in use at exit").
    InUseAtExit,
    /// Bytes allocated over the run.
    AllocatedBytes,
    /// Allocation calls.
    Allocations,
    /// Bytes live at the heap peak.
    Peak,
    /// Temporary allocations (freed before the thread's next allocation).
    Temporary,
    /// Bytes retained at the last snapshot, by root (a global, a thread's frame) and
    /// dominator-tree path: a frame's width is what would be freed if it let go.
    Retained,
}

impl MetricArg {
    pub fn metric(self) -> Metric {
        match self {
            MetricArg::Leaked => Metric::Leaked,
            MetricArg::InUseAtExit => Metric::InUseAtExit,
            MetricArg::AllocatedBytes => Metric::AllocatedBytes,
            MetricArg::Allocations => Metric::Allocations,
            MetricArg::Peak => Metric::Peak,
            MetricArg::Temporary => Metric::Temporary,
            MetricArg::Retained => Metric::Retained,
        }
    }
}

#[derive(Args)]
#[command(after_help = "Example:
  heaptape report -o app.html app.trace && xdg-open app.html")]
pub struct HtmlArgs {
    /// The trace.
    pub trace: PathBuf,
    /// File to write [default: heaptape.html].
    #[arg(short, long, default_value = "heaptape.html")]
    pub output: PathBuf,
    #[command(flatten)]
    pub symbols: SymbolFlags,
    #[command(flatten)]
    pub suppressions: SuppressionFlags,
}

#[derive(Args)]
#[command(after_help = "Examples:
  heaptape export --format pprof -o heap.pb.gz trace.bin && go tool pprof -top heap.pb.gz
  heaptape export --format pprof --at peak -o peak.pb.gz trace.bin
  heaptape export --format speedscope -o heap.speedscope.json trace.bin")]
pub struct ExportArgs {
    /// The trace.
    pub trace: PathBuf,
    /// The format: pprof (a gzipped profile.proto heap profile, as Go's runtime writes:
    /// alloc_objects, alloc_space, inuse_objects, inuse_space) or speedscope (its JSON
    /// file format: bytes in use at exit, bytes allocated, allocation calls).
    #[arg(long, value_enum, default_value_t = ExportFormat::Pprof)]
    pub format: ExportFormat,
    /// File to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// pprof: when the in-use figures are taken, at each program's exit or at its heap
    /// peak.
    #[arg(long, value_enum, default_value_t = AtArg::Exit)]
    pub at: AtArg,
    /// Group stacks by their innermost N frames (0: whole stacks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub call_site_depth: usize,
    #[command(flatten)]
    pub symbols: SymbolFlags,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Pprof,
    Speedscope,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AtArg {
    Exit,
    Peak,
}

#[derive(Args)]
pub struct DiffArgs {
    /// Trace of the old version.
    pub old: PathBuf,
    /// Trace of the new version.
    pub new: PathBuf,
    /// Print the comparison as JSON (compact).
    #[arg(long)]
    pub json: bool,
    /// With --json: indented, for people.
    #[arg(long, requires = "json")]
    pub pretty: bool,
    /// Number of call sites listed.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Match call sites by the functions of N symbolized frames, counted from the first
    /// frame outside the allocator and the C/C++ runtimes (malloc, operator new, std::
    /// internals).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DEPTH)]
    pub call_site_depth: usize,
    /// Also write a differential flamegraph (SVG) to this file (not `-`: the report
    /// goes to standard output): widths from NEW, red where NEW grew.
    #[arg(long, value_name = "SVG")]
    pub flamegraph: Option<PathBuf>,
    /// What the differential flamegraph measures.
    #[arg(long, value_enum, default_value_t = MetricArg::Leaked)]
    pub metric: MetricArg,
    /// Exit with status 1 if NEW regressed: `leaked_bytes>+1KiB` (an increase),
    /// `peak_bytes>64MiB` (NEW's total); metrics leaked_bytes (definitely and indirectly
    /// lost at exit), in_use_at_exit_bytes (live at exit), allocated_bytes, allocations,
    /// peak_bytes; units B, KiB, MiB, GiB, kB, MB, GB. Repeatable.
    #[arg(long = "fail-if", value_name = "CONDITION", value_parser = Condition::parse)]
    pub fail_if: Vec<Condition>,
    // Where both traces' frames get their names.
    #[command(flatten)]
    pub symbols: SymbolFlags,
    // The loss records leaked_bytes leaves out, in both traces.
    #[command(flatten)]
    pub suppressions: SuppressionFlags,
}

/// A duration as [`parse_duration`] reads it, more than zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` is no interval: give more than zero")),
        d => Ok(d),
    }
}

/// Parses a duration as humantime does (`30s`, `2m`, `500ms`, `1h 30m`), or plain
/// seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}; try 30s, 2m, 500ms)"))
}
