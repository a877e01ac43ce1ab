//! `heaptape analyze`: the report of one trace, as text or JSON.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use heaptape_analyzer::colour::Colour;
use heaptape_analyzer::{analyze_with_progress, AnalyzeOptions, Prefetch};

use super::{suppressions, to_stdout, unreadable, warn, write_json, Failure, Outcome};
use crate::cli::{AnalyzeArgs, ReportFlags};

/// Entries per ranked section of the text report unless `--top` says.
const TEXT_TOP: usize = 10;

/// The analyzer's options for `flags` (fails when a suppression file is bad).
pub fn options(flags: &ReportFlags) -> Result<AnalyzeOptions, Failure> {
    Ok(AnalyzeOptions {
        top: flags.top.unwrap_or(TEXT_TOP),
        fail_on: flags.fail_on.unwrap_or_default(),
        leak_heuristics: flags.leak_check_heuristics,
        call_site_depth: (flags.call_site_depth > 0).then_some(flags.call_site_depth),
        // Only the report that will be printed.
        prefetch: if flags.json {
            Prefetch::Json
        } else if flags.gen_suppressions {
            Prefetch::Nothing
        } else {
            Prefetch::Text
        },
        suppressions: suppressions(&flags.suppressions)?,
        show_below_main: flags.show_below_main,
        ..flags.symbols.options()
    })
}

/// Analyzes `trace` with `opts` (see [`options`]) and writes its report (text, JSON with `--json`, or the loss
/// records' suppressions with `--gen-suppressions`) through `write`
/// (which hands it a writer and reports a failure to write), the text in colour per
/// `--color` (`terminal`: whether the writer is a terminal); prints the warnings and
/// the `--fail-on` findings on stderr. Returns whether a `--fail-on` finding exists.
pub fn report(
    trace: &Path,
    flags: &ReportFlags,
    opts: &AnalyzeOptions,
    terminal: bool,
    write: impl FnOnce(&mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>) -> Result<(), Failure>,
) -> Result<bool, Failure> {
    let analysis = analyze_with_progress(trace, opts).map_err(|e| unreadable(trace, e))?;
    for warning in analysis.warnings() {
        warn(warning);
    }
    let colour = !flags.json && !flags.gen_suppressions && flags.color.enabled(terminal);
    write(&mut |out| {
        if flags.gen_suppressions {
            analysis.write_suppressions(out)
        } else if flags.json {
            write_json(out, &analysis.json_document(flags.top), flags.pretty)
        } else if colour {
            let mut styled = Colour::new(out);
            analysis.render_text(&mut styled, opts)?;
            styled.finish()
        } else {
            analysis.render_text(out, opts)
        }
    })?;
    // Also when the reader went away: the verdict stands.
    for f in analysis.failures() {
        eprintln!("heaptape: fail: {f}");
    }
    Ok(analysis.failed())
}

pub fn run(args: AnalyzeArgs) -> Outcome {
    let terminal = std::io::stdout().is_terminal();
    let opts = options(&args.flags)?;
    let failed = report(&args.trace, &args.flags, &opts, terminal, |render| {
        to_stdout("report", |out| render(out)).map(|_| ())
    })?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
