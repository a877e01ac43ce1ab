//! `heaptape diff`: compare the traces of two versions, optionally with a differential
//! flamegraph and regression conditions.

use std::process::ExitCode;

use heaptape_analyzer::diff::{diff, render_text, to_json};
use heaptape_analyzer::flamegraph::{folded, write_atomically, write_diff_svg};
use heaptape_analyzer::{AnalyzeOptions, Prefetch};

use super::{load, suppressions, to_stdout, write_json, Failure, Outcome};
use crate::cli::DiffArgs;

pub fn run(args: DiffArgs) -> Outcome {
    if args
        .flamegraph
        .as_ref()
        .is_some_and(|p| p.as_os_str() == "-")
    {
        return Err(Failure::new(
            2,
            "--flamegraph - would mix the SVG with the report on standard output; give a file name",
        ));
    }
    let opts = AnalyzeOptions {
        // A diff's frames are its own, symbolized as it asks.
        prefetch: Prefetch::Nothing,
        suppressions: suppressions(&args.suppressions)?,
        ..args.symbols.options()
    };
    // Both traces are read, so that both are reported when neither can be.
    let (old, new) = match (load(&args.old, &opts), load(&args.new, &opts)) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(a), Err(b)) => return Err(a.and(b)),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let result = diff(&old, &new, args.call_site_depth);
    let failures: Vec<String> = args
        .fail_if
        .iter()
        .filter_map(|c| c.check(&result))
        .collect();
    if let Some(path) = &args.flamegraph {
        let metric = args.metric.metric();
        let old_lines = folded(&old, metric, old.symbolizer());
        let new_lines = folded(&new, metric, new.symbolizer());
        let title = format!("Change from old to new: {}", metric.title());
        write_atomically(path, |w| {
            write_diff_svg(&old_lines, &new_lines, &title, metric.unit(), w)
        })
        .map_err(|e| Failure::new(1, format!("cannot write {}: {e}", path.display())))?;
    }
    to_stdout("report", |out| {
        if args.json {
            write_json(out, &to_json(&result, &failures), args.pretty)
        } else {
            render_text(&result, args.top, out)
        }
    })?;
    // Also when the reader went away: the verdict stands.
    for f in &failures {
        eprintln!("heaptape: regression: {f}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
