//! `heaptape flamegraph`: an SVG or folded stacks of one trace.

use std::path::PathBuf;
use std::process::ExitCode;

use heaptape_analyzer::flamegraph::{folded, write_atomically, write_folded, write_svg, Metric};
use heaptape_analyzer::{AnalyzeOptions, Prefetch, Suppressions};

use super::{load, suppressions, to_stdout, Failure, Outcome};
use crate::cli::FlamegraphArgs;

pub fn run(args: FlamegraphArgs) -> Outcome {
    let list = suppressions(&args.suppressions)?;
    let opts = AnalyzeOptions {
        call_site_depth: (args.call_site_depth > 0).then_some(args.call_site_depth),
        // Its frames are the flamegraph's, symbolized as it asks.
        prefetch: Prefetch::Nothing,
        // Only the leaked metric reads loss records.
        suppressions: if args.metric.metric() == Metric::Leaked {
            list
        } else {
            Suppressions::none()
        },
        ..args.symbols.options()
    };
    let analysis = load(&args.trace, &opts)?;
    let metric = args.metric.metric();
    let lines = folded(&analysis, metric, analysis.symbolizer());
    let write = |w: &mut dyn std::io::Write| {
        if args.folded {
            write_folded(&lines, w)
        } else {
            write_svg(&lines, metric.title(), metric.unit(), w)
        }
    };
    // `-o -`, and folded stacks without `-o`, go to standard output.
    let path = match &args.output {
        Some(path) if path.as_os_str() == "-" => None,
        Some(path) => Some(path.clone()),
        None if args.folded => None,
        None => Some(PathBuf::from("heaptape.svg")),
    };
    match path {
        None => {
            to_stdout("the flamegraph", |out| write(out))?;
        }
        Some(path) => {
            write_atomically(&path, write).map_err(|e| {
                Failure::new(
                    1,
                    format!("cannot write the flamegraph: {}: {e}", path.display()),
                )
            })?;
            eprintln!("heaptape: wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
