//! `heaptape analyze`: the report of one trace, as text or JSON.

use std::process::ExitCode;

use heaptape_analyzer::{analyze_with_progress, AnalyzeOptions};

use super::{to_stdout, unreadable, warn, write_json, Outcome};
use crate::cli::AnalyzeArgs;

pub fn run(args: AnalyzeArgs) -> Outcome {
    // Options added later keep their defaults until the CLI exposes them.
    #[allow(clippy::needless_update)]
    let opts = AnalyzeOptions {
        top: args.top,
        symbolize: !args.no_symbols,
        debug_dirs: args.debug_dirs,
        sysroot: args.sysroot,
        fail_on: args.fail_on.unwrap_or_default(),
        leak_heuristics: args.leak_check_heuristics,
        call_site_depth: (args.call_site_depth > 0).then_some(args.call_site_depth),
        ..Default::default()
    };
    let analysis =
        analyze_with_progress(&args.trace, &opts).map_err(|e| unreadable(&args.trace, e))?;
    for warning in analysis.warnings() {
        warn(warning);
    }
    to_stdout("report", |out| {
        if args.json {
            write_json(out, &analysis.to_json())
        } else {
            analysis.render_text(out, &opts)
        }
    })?;
    // Also when the reader went away: the verdict stands.
    for f in analysis.failures() {
        eprintln!("heaptape: fail: {f}");
    }
    Ok(if analysis.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
