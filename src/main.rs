//! `heaptape`: the command line. Thin by design: it parses arguments, hands them to the
//! recorder or analyzer crate, and turns their errors into one line and an exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "heaptape",
    version,
    about = "Record-and-replay heap profiler: record allocator calls under ptrace, analyze leaks offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program under the recorder and write a trace of every allocator call.
    Record(RecordArgs),
    /// Replay a trace and report totals, leaks, growth and invalid frees.
    Analyze(AnalyzeArgs),
    /// Write a flamegraph (SVG) of a trace.
    Flamegraph(FlamegraphArgs),
    /// Compare the traces of two versions of a program.
    Diff(DiffArgs),
    /// Print every record of a trace, one per line (for debugging and scripting).
    Dump(DumpArgs),
}

#[derive(Args)]
struct DumpArgs {
    /// The trace.
    trace: PathBuf,
}

#[derive(Args)]
struct RecordArgs {
    /// Trace file to write [default: heaptape.<program>.<pid>.trace].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Attach to this running process instead of launching one; recording ends at
    /// Ctrl-C, SIGTERM, SIGHUP, --duration or the process's exit, then heaptape detaches
    /// and the process goes on unchanged.
    #[arg(long, conflicts_with = "program")]
    pid: Option<u32>,
    /// With --pid: record for this long, e.g. 30s, 2m, 500ms.
    #[arg(long, requires = "pid", value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Do not follow children: detach them (after removing breakpoints) instead.
    #[arg(long)]
    no_follow: bool,
    /// Maximum number of frames recorded per call stack.
    #[arg(long, default_value_t = 128)]
    max_depth: usize,
    /// Also hook allocator functions with this prefix (e.g. `je_`); repeatable.
    #[arg(long = "allocator-prefix", value_name = "PREFIX")]
    allocator_prefixes: Vec<String>,
    /// Do not take a reachability snapshot at exit.
    #[arg(long)]
    no_snapshot: bool,
    /// CPU placement: `same` pins the recorder and the program to one CPU (fastest for
    /// single-threaded programs on VMs), `free` leaves it to the scheduler.
    #[arg(long, value_enum, default_value_t = CpuArg::Free)]
    cpu: CpuArg,
    /// Sample the program's RSS every this many milliseconds (0: never).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    rss_interval: u64,
    /// Print tracer statistics at the end (stops per call, time spent unwinding).
    #[arg(long)]
    stats: bool,
    /// The program to run and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    program: Vec<OsString>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CpuArg {
    Free,
    Same,
}

#[derive(Args)]
struct AnalyzeArgs {
    /// The trace to analyze.
    trace: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Number of entries per ranked section.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Group call sites by their innermost N frames in every per-site section (0: one
    /// site per distinct stack).
    #[arg(long, value_name = "N", default_value_t = 0)]
    call_site_depth: usize,
    /// Extra directory of separate debug files (searched before /usr/lib/debug);
    /// repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    debug_dirs: Vec<PathBuf>,
    /// Root of the recorded machine's file system, for traces analyzed elsewhere: module
    /// paths are looked up under it first.
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,
    /// Show raw addresses (module+offset) instead of function names and source lines.
    #[arg(long)]
    no_symbols: bool,
    /// Exit 1 if any of these findings exist: definite, indirect, possible, reachable,
    /// invalid-free (comma-separated, or `all`). For CI.
    #[arg(long, value_name = "KINDS", value_parser = heaptape_analyzer::FailOn::parse)]
    fail_on: Option<heaptape_analyzer::FailOn>,
    /// memcheck's interior-pointer heuristics: all, none, or a list of stdstring,
    /// length64, newarray, multipleinheritance.
    #[arg(long, value_name = "SET", default_value = "all", value_parser = heaptape_analyzer::HeuristicSet::parse)]
    leak_check_heuristics: heaptape_analyzer::HeuristicSet,
}

#[derive(Args)]
struct FlamegraphArgs {
    /// The trace.
    trace: PathBuf,
    /// File to write (SVG, or folded stacks with --folded), `-` for standard output
    /// [default: heaptape.svg; with --folded: standard output].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// What widths measure: bytes live at exit (leaked), bytes allocated, allocation
    /// calls, bytes live at the heap peak, or temporary allocations.
    #[arg(long, value_enum, default_value_t = MetricArg::Leaked)]
    metric: MetricArg,
    /// Write folded stacks (`outer;...;inner value` lines) instead of an SVG.
    #[arg(long)]
    folded: bool,
    /// Group stacks by their innermost N frames (0: whole stacks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    call_site_depth: usize,
    /// Show raw addresses (module+offset) instead of function names.
    #[arg(long)]
    no_symbols: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MetricArg {
    Leaked,
    AllocatedBytes,
    Allocations,
    Peak,
    Temporary,
}

impl MetricArg {
    fn metric(self) -> heaptape_analyzer::flamegraph::Metric {
        use heaptape_analyzer::flamegraph::Metric;
        match self {
            MetricArg::Leaked => Metric::Leaked,
            MetricArg::AllocatedBytes => Metric::AllocatedBytes,
            MetricArg::Allocations => Metric::Allocations,
            MetricArg::Peak => Metric::Peak,
            MetricArg::Temporary => Metric::Temporary,
        }
    }
}

#[derive(Args)]
struct DiffArgs {
    /// Trace of the old version.
    old: PathBuf,
    /// Trace of the new version.
    new: PathBuf,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
    /// Number of call sites listed.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Match call sites by their innermost N symbolized frames.
    #[arg(long, value_name = "N", default_value_t = heaptape_analyzer::diff::DEFAULT_DEPTH)]
    call_site_depth: usize,
    /// Also write a differential flamegraph (SVG) to this file (not `-`: the report
    /// goes to standard output): widths from NEW, red where NEW grew.
    #[arg(long, value_name = "SVG")]
    flamegraph: Option<PathBuf>,
    /// What the differential flamegraph measures.
    #[arg(long, value_enum, default_value_t = MetricArg::Leaked)]
    metric: MetricArg,
    /// Exit with status 1 if NEW regressed: `leaked_bytes>+1KiB` (an increase),
    /// `peak_bytes>64MiB` (NEW's total); metrics leaked_bytes, allocated_bytes,
    /// allocations, peak_bytes; units B, KiB, MiB, GiB, kB, MB, GB. Repeatable.
    #[arg(long = "fail-if", value_name = "CONDITION", value_parser = heaptape_analyzer::diff::Condition::parse)]
    fail_if: Vec<heaptape_analyzer::diff::Condition>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Record(args) => record(args),
        Command::Analyze(args) => analyze(args),
        Command::Flamegraph(args) => flamegraph(args),
        Command::Diff(args) => diff(args),
        Command::Dump(args) => dump(args),
    }
}

fn dump(args: DumpArgs) -> ExitCode {
    use std::io::Write;
    let reader = match heaptape_format::TraceReader::open(&args.trace) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("heaptape: {}: {e}", args.trace.display());
            return ExitCode::from(1);
        }
    };
    let mut out = report_output();
    let mut written = writeln!(out, "{:?}", reader.header());
    let mut records = reader.records();
    let mut failed = false;
    for rec in records.by_ref() {
        if written.is_err() {
            break;
        }
        match rec {
            Ok(r) => written = writeln!(out, "{r:?}"),
            Err(e) => {
                eprintln!("heaptape: {}: {e}", args.trace.display());
                failed = true;
                break;
            }
        }
    }
    if let Err(e) = written.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
        eprintln!("heaptape: cannot write the records: {e}");
        return ExitCode::from(1);
    }
    if failed {
        return ExitCode::from(1);
    }
    if let Some(t) = records.truncation() {
        eprintln!("heaptape: warning: {t}");
    }
    ExitCode::SUCCESS
}

/// Standard output for a report or a listing, buffered: Rust's stdout is line-buffered
/// even into a file or a pipe, so a JSON report went out in one `write` call per line
/// (5,500 calls for the report of a small trace, a tenth of its analysis time) and
/// `dump` in one per record. Callers flush it and report the error (a full disk).
fn report_output() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock())
}

/// Parses `30s`, `2m`, `500ms`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn record(args: RecordArgs) -> ExitCode {
    if args.program.is_empty() && args.pid.is_none() {
        eprintln!("heaptape: record needs a program to run: heaptape record [-o FILE] -- PROGRAM [ARGS...]");
        return ExitCode::from(2);
    }
    let opts = heaptape_recorder::RecordOptions {
        output: args.output,
        program: args.program,
        follow_children: !args.no_follow,
        max_depth: args.max_depth,
        allocator_prefixes: args.allocator_prefixes,
        snapshot: !args.no_snapshot,
        stats: args.stats,
        attach: args.pid,
        duration: args.duration,
        rss_interval: (args.rss_interval > 0)
            .then(|| std::time::Duration::from_millis(args.rss_interval)),
        cpu_policy: match args.cpu {
            CpuArg::Free => heaptape_recorder::CpuPolicy::Free,
            CpuArg::Same => heaptape_recorder::CpuPolicy::Same,
        },
    };
    match heaptape_recorder::record(&opts) {
        Ok(outcome) => {
            eprintln!("{}", outcome.summary());
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            eprintln!("heaptape: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn analyze(args: AnalyzeArgs) -> ExitCode {
    // Options added later keep their defaults until the CLI exposes them.
    #[allow(clippy::needless_update)]
    let opts = heaptape_analyzer::AnalyzeOptions {
        top: args.top,
        symbolize: !args.no_symbols,
        debug_dirs: args.debug_dirs,
        sysroot: args.sysroot,
        fail_on: args.fail_on.unwrap_or_default(),
        leak_heuristics: args.leak_check_heuristics,
        call_site_depth: (args.call_site_depth > 0).then_some(args.call_site_depth),
        ..Default::default()
    };
    let analysis = match heaptape_analyzer::analyze_with_progress(&args.trace, &opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("heaptape: {}: {e}", args.trace.display());
            return ExitCode::from(1);
        }
    };
    for warning in analysis.warnings() {
        eprintln!("heaptape: warning: {warning}");
    }
    let mut out = report_output();
    let res = if args.json {
        serde_json::to_writer_pretty(&mut out, &analysis.to_json())
            .map_err(std::io::Error::from)
            .and_then(|_| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        analysis.render_text(&mut out, &opts)
    }
    .and_then(|()| std::io::Write::flush(&mut out));
    let written = match &res {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
    };
    if written {
        for f in analysis.failures() {
            eprintln!("heaptape: fail: {f}");
        }
        return if analysis.failed() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heaptape: cannot write report: {e}");
            ExitCode::from(1)
        }
    }
}

/// Analyzes `path` for `flamegraph`/`diff`, printing warnings; `None` (after printing
/// the error) when the trace cannot be read.
fn load(
    path: &std::path::Path,
    opts: &heaptape_analyzer::AnalyzeOptions,
) -> Option<heaptape_analyzer::Analysis> {
    match heaptape_analyzer::analyze_with_progress(path, opts) {
        Ok(a) => {
            for warning in a.warnings() {
                eprintln!("heaptape: warning: {}: {warning}", path.display());
            }
            Some(a)
        }
        Err(e) => {
            eprintln!("heaptape: {}: {e}", path.display());
            None
        }
    }
}

fn flamegraph(args: FlamegraphArgs) -> ExitCode {
    use heaptape_analyzer::flamegraph as fg;
    let opts = heaptape_analyzer::AnalyzeOptions {
        symbolize: !args.no_symbols,
        call_site_depth: (args.call_site_depth > 0).then_some(args.call_site_depth),
        ..Default::default()
    };
    let Some(analysis) = load(&args.trace, &opts) else {
        return ExitCode::from(1);
    };
    let metric = args.metric.metric();
    let lines = fg::folded(&analysis, metric, analysis.symbolizer());
    // `-o -`, and folded stacks without `-o`, go to standard output.
    let to_stdout = match &args.output {
        Some(path) => path.as_os_str() == "-",
        None => args.folded,
    };
    let res = match (&args.output, args.folded) {
        _ if to_stdout => {
            let mut out = report_output();
            if args.folded {
                fg::write_folded(&lines, &mut out)
            } else {
                fg::write_svg(&lines, metric.title(), metric.unit(), &mut out)
            }
            .and_then(|()| std::io::Write::flush(&mut out))
        }
        (path, folded) => {
            let path = path
                .clone()
                .unwrap_or_else(|| PathBuf::from("heaptape.svg"));
            let r = fg::write_atomically(&path, |w| {
                if folded {
                    fg::write_folded(&lines, w)
                } else {
                    fg::write_svg(&lines, metric.title(), metric.unit(), w)
                }
            });
            if r.is_ok() {
                eprintln!("heaptape: wrote {}", path.display());
            }
            r.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heaptape: cannot write the flamegraph: {e}");
            ExitCode::from(1)
        }
    }
}

fn diff(args: DiffArgs) -> ExitCode {
    use heaptape_analyzer::{diff as d, flamegraph as fg};
    if args
        .flamegraph
        .as_ref()
        .is_some_and(|p| p.as_os_str() == "-")
    {
        eprintln!(
            "heaptape: --flamegraph - would mix the SVG with the report on standard output; give a file name"
        );
        return ExitCode::from(2);
    }
    let opts = heaptape_analyzer::AnalyzeOptions::default();
    let (Some(old), Some(new)) = (load(&args.old, &opts), load(&args.new, &opts)) else {
        return ExitCode::from(1);
    };
    let result = d::diff(&old, &new, args.call_site_depth);
    let failures: Vec<String> = args
        .fail_if
        .iter()
        .filter_map(|c| c.check(&result))
        .collect();
    if let Some(path) = &args.flamegraph {
        let metric = args.metric.metric();
        let old_lines = fg::folded(&old, metric, old.symbolizer());
        let new_lines = fg::folded(&new, metric, new.symbolizer());
        let title = format!("Change from old to new: {}", metric.title());
        if let Err(e) = fg::write_atomically(path, |w| {
            fg::write_diff_svg(&old_lines, &new_lines, &title, metric.unit(), w)
        }) {
            eprintln!("heaptape: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let mut out = report_output();
    let res = if args.json {
        serde_json::to_writer_pretty(&mut out, &d::to_json(&result, &failures))
            .map_err(std::io::Error::from)
            .and_then(|_| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        d::render_text(&result, args.top, &mut out)
    }
    .and_then(|()| std::io::Write::flush(&mut out));
    if let Err(e) = res {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("heaptape: cannot write report: {e}");
            return ExitCode::from(1);
        }
    }
    for f in &failures {
        eprintln!("heaptape: regression: {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
