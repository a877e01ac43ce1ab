//! `heaptape record`: run or attach to a program under the recorder.

use std::process::ExitCode;
use std::time::Duration;

use heaptape_recorder::{CpuPolicy, RecordMode, RecordOptions};

use super::{Failure, Outcome};
use crate::cli::{CpuArg, ModeArg, RecordArgs};

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
    let opts = RecordOptions {
        output: args.output,
        program: args.program,
        follow_children: !args.no_follow,
        max_depth: args.max_depth,
        allocator_prefixes: args.allocator_prefixes,
        snapshot: !args.no_snapshot,
        stats: args.stats,
        attach: args.pid,
        duration: args.duration,
        rss_interval: (args.rss_interval > 0).then(|| Duration::from_millis(args.rss_interval)),
        cpu_policy: match args.cpu {
            CpuArg::Free => CpuPolicy::Free,
            CpuArg::Same => CpuPolicy::Same,
        },
        mode: match args.mode {
            ModeArg::Ring => RecordMode::Ring,
            ModeArg::Stop => RecordMode::Stop,
        },
    };
    let outcome =
        heaptape_recorder::record(&opts).map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
    eprintln!("{}", outcome.summary());
    Ok(ExitCode::from(outcome.exit_code()))
}
