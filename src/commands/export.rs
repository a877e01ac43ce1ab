//! `heaptape export`: a trace's heap profile in another tool's format (pprof,
//! speedscope); `heaptape report`: the HTML page.

use std::process::ExitCode;

use heaptape_analyzer::flamegraph::write_atomically;
use heaptape_analyzer::html::write_html;
use heaptape_analyzer::pprof::{write_pprof, At};
use heaptape_analyzer::speedscope::write_speedscope;
use heaptape_analyzer::{AnalyzeOptions, Prefetch};

use super::{load, suppressions, Failure, Outcome};
use crate::cli::{AtArg, ExportArgs, ExportFormat, HtmlArgs};

pub fn run(args: ExportArgs) -> Outcome {
    let opts = AnalyzeOptions {
        call_site_depth: (args.call_site_depth > 0).then_some(args.call_site_depth),
        prefetch: Prefetch::Nothing,
        ..args.symbols.options()
    };
    let analysis = load(&args.trace, &opts)?;
    let at = match args.at {
        AtArg::Exit => At::Exit,
        AtArg::Peak => At::Peak,
    };
    let path = &args.output;
    match args.format {
        ExportFormat::Pprof => write_atomically(path, |out| {
            write_pprof(&analysis, at, analysis.symbolizer(), out)
        }),
        ExportFormat::Speedscope => write_atomically(path, |out| {
            write_speedscope(&analysis, analysis.symbolizer(), out)
        }),
    }
    .map_err(|e| Failure::new(1, format!("cannot write {}: {e}", path.display())))?;
    eprintln!("heaptape: wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn html(args: HtmlArgs) -> Outcome {
    let opts = AnalyzeOptions {
        // The page is made from the JSON document.
        prefetch: Prefetch::Json,
        suppressions: suppressions(&args.suppressions)?,
        ..args.symbols.options()
    };
    let analysis = load(&args.trace, &opts)?;
    let path = &args.output;
    write_atomically(path, |out| write_html(&analysis, out))
        .map_err(|e| Failure::new(1, format!("cannot write {}: {e}", path.display())))?;
    eprintln!("heaptape: wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
