//! `heaptape record`: run or attach to a program under the recorder.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use heaptape_analyzer::{embed_symbols_with, ElfSymbolizer};
use heaptape_format::units::bytes;
use heaptape_recorder::{CpuPolicy, RecordMode, RecordOptions, RecordOutcome};

use super::{warn, Failure, Outcome};
use crate::cli::{CpuArg, ModeArg, RecordArgs, RecordFlags};

/// The recorder's options for `flags`, launching `program` or attaching to `pid`.
pub fn options(
    flags: RecordFlags,
    program: Vec<OsString>,
    pid: Option<u32>,
    duration: Option<Duration>,
) -> RecordOptions {
    RecordOptions {
        output: flags.output,
        program,
        follow_children: !flags.no_follow,
        max_depth: flags.max_depth,
        allocator_prefixes: flags.allocator_prefixes,
        snapshot: !flags.no_snapshot,
        snapshot_every: flags.snapshot_every,
        stats: flags.stats,
        attach: pid,
        duration,
        rss_interval: (flags.rss_interval > 0).then(|| Duration::from_millis(flags.rss_interval)),
        cpu_policy: match flags.cpu {
            CpuArg::Free => CpuPolicy::Free,
            CpuArg::Same => CpuPolicy::Same,
        },
        mode: match flags.mode {
            ModeArg::Ring => RecordMode::Ring,
            ModeArg::Stop => RecordMode::Stop,
        },
        on_module_load: None,
    }
}

pub fn run(args: RecordArgs) -> Outcome {
    if args.program.is_empty() && args.pid.is_none() {
        return Err(Failure::new(
            2,
            "record needs a program to run: heaptape record [-o FILE] -- PROGRAM [ARGS...]",
        ));
    }
    if args.duration.is_some() && args.pid.is_none() {
        // (clap's `requires` does not catch it next to the trailing program arguments.)
        return Err(Failure::new(
            2,
            "--duration ends an attached recording and needs --pid; a launched program is \
             recorded until it exits (stop it with Ctrl-C or `timeout`)",
        ));
    }
    let symbolize = !args.flags.no_symbolize;
    let opts = options(args.flags, args.program, args.pid, args.duration);
    record(opts, symbolize).map(|(status, _)| ExitCode::from(status))
}

/// Records with `opts`, then embeds the symbols of the trace's stacks (unless
/// `symbolize` is false, or the trace is incomplete), loading the modules' symbols
/// while the program runs ([`super::warm::SymbolWarmer`]); prints the summary and
/// returns the program's exit status and the trace. What `record` and `run` do.
pub fn record(mut opts: RecordOptions, symbolize: bool) -> Result<(u8, PathBuf), Failure> {
    let warmer = symbolize.then(super::warm::SymbolWarmer::start);
    opts.on_module_load = warmer.as_ref().map(|w| w.hook());
    let outcome =
        heaptape_recorder::record(&opts).map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
    let path = outcome.path.clone();
    let symbolizer = warmer.map(|w| w.finish());
    finish(outcome, symbolizer).map(|status| (status, path))
}

/// Once the recorder is done: embeds the symbols of the trace's stacks with
/// `symbolizer` (none: not embedded; nor when the trace is incomplete), prints the
/// summary, and returns the exit status.
fn finish(
    mut outcome: RecordOutcome,
    symbolizer: Option<Arc<ElfSymbolizer>>,
) -> Result<u8, Failure> {
    let embedded = symbolizer
        .filter(|_| outcome.write_error.is_none())
        .map(|s| embed(&mut outcome, &s));
    let summary = outcome.summary();
    match (embedded.flatten(), summary.split_once('\n')) {
        (Some(line), Some((first, rest))) => eprintln!("{first}\n{line}\n{rest}"),
        (Some(line), None) => eprintln!("{summary}\n{line}"),
        (None, _) => eprintln!("{summary}"),
    }
    Ok(outcome.exit_code())
}

/// Embeds the symbols of the trace's stacks (see `heaptape_analyzer::embed_symbols_of`);
/// returns the summary's line about it. A failure is a warning: the trace is as the
/// recorder left it, readable, its frames named while the recorded files are at hand.
fn embed(outcome: &mut RecordOutcome, symbolizer: &ElfSymbolizer) -> Option<String> {
    let start = Instant::now();
    let refs = std::mem::take(&mut outcome.references);
    match embed_symbols_with(&outcome.path, symbolizer, refs.addresses, &refs.modules) {
        Ok(s) => {
            outcome.bytes = s.bytes_after;
            Some(format!(
                "heaptape: embedded the symbols of {} stack addresses ({} named) in {} modules (+{}, {:.2} s)",
                s.addresses,
                s.named,
                s.modules,
                bytes(s.bytes_after.saturating_sub(s.bytes_before)),
                start.elapsed().as_secs_f64()
            ))
        }
        Err(e) => {
            warn(format!(
                "the symbols of the trace's stacks were not embedded: {e}; its frames are named while the recorded files are at hand"
            ));
            None
        }
    }
}
