//! `heaptape record`: run or attach to a program under the recorder.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use heaptape_recorder::{CpuPolicy, RecordMode, RecordOptions};

use super::{Failure, Outcome};
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
    let opts = options(args.flags, args.program, args.pid, args.duration);
    let outcome =
        heaptape_recorder::record(&opts).map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
    eprintln!("{}", outcome.summary());
    Ok(ExitCode::from(outcome.exit_code()))
}
