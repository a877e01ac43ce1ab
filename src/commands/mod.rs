//! The subcommands, one module each, and what they share: the [`Failure`] they return
//! (printed by `main`, the one error path), standard output for reports (the one place
//! a reader that went away is noticed), warnings, and loading a trace for the commands
//! that compare or draw analyses.

pub mod analyze;
pub mod diff;
pub mod dump;
pub mod export;
pub mod flamegraph;
pub mod help;
pub mod record;
pub mod run;
mod warm;

use std::fmt::Display;
use std::io::{self, BufWriter, ErrorKind, StdoutLock, Write};
use std::path::Path;
use std::process::ExitCode;

use heaptape_analyzer::{analyze_with_progress, Analysis, AnalyzeOptions, Suppressions};

use crate::cli::SuppressionFlags;

/// A command that could not do its job: the lines `main` prints on stderr (each after
/// `heaptape: `) and the exit status.
pub struct Failure {
    pub status: u8,
    pub lines: Vec<String>,
}

impl Failure {
    pub fn new(status: u8, line: impl Into<String>) -> Failure {
        Failure {
            status,
            lines: vec![line.into()],
        }
    }

    /// This failure's lines, then `later`'s; this failure's status.
    pub fn and(mut self, later: Failure) -> Failure {
        self.lines.extend(later.lines);
        self
    }
}

/// What a command ends with: an exit status, or a failure for `main` to report.
pub type Outcome = Result<ExitCode, Failure>;

/// Prints a warning (`heaptape: warning: ...`); the command goes on.
pub fn warn(message: impl Display) {
    eprintln!("heaptape: warning: {message}");
}

/// Standard output for a report or a listing, buffered: Rust's stdout is line-buffered
/// even into a file or a pipe, so a JSON report went out in one `write` call per line
/// (5,500 calls for the report of a small trace, a tenth of its analysis time) and
/// `dump` in one per record.
pub type Stdout = BufWriter<StdoutLock<'static>>;

/// Whether what went to standard output reached its reader.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written and flushed.
    Whole,
    /// The reader went away (`| head`): not an error, the rest was not written.
    ReaderGone,
}

/// Writes `what` (a report, the records, ...) to standard output through `write`, then
/// flushes it. A broken pipe is [`Delivery::ReaderGone`]; any other error (a full disk)
/// is the failure "cannot write WHAT: ERROR".
pub fn to_stdout(
    what: &str,
    write: impl FnOnce(&mut Stdout) -> io::Result<()>,
) -> Result<Delivery, Failure> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(Delivery::Whole),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(Delivery::ReaderGone),
        Err(e) => Err(Failure::new(1, format!("cannot write {what}: {e}"))),
    }
}

/// Writes `value` as JSON (indented when `pretty`) and a newline.
pub fn write_json(
    out: &mut dyn Write,
    value: &impl serde::Serialize,
    pretty: bool,
) -> io::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *out, value)
    } else {
        serde_json::to_writer(&mut *out, value)
    }
    .map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// The failure "PATH: ERROR" (exit status 1) of a trace that cannot be read.
pub fn unreadable(path: &Path, error: impl Display) -> Failure {
    Failure::new(1, format!("{}: {error}", path.display()))
}

/// Analyzes `path` for `flamegraph`/`diff`, printing its warnings (named by the path).
pub fn load(path: &Path, opts: &AnalyzeOptions) -> Result<Analysis, Failure> {
    let analysis = analyze_with_progress(path, opts).map_err(|e| unreadable(path, e))?;
    for warning in analysis.warnings() {
        warn(format!("{}: {warning}", path.display()));
    }
    Ok(analysis)
}

/// The suppressions `flags` ask for: the default list (unless
/// `--no-default-suppressions`), then each `--suppressions` file in order. A file that
/// cannot be read or parsed is a failure (status 2) naming it and the line.
pub fn suppressions(flags: &SuppressionFlags) -> Result<Suppressions, Failure> {
    let mut list = if flags.no_default_suppressions {
        Suppressions::none()
    } else {
        Suppressions::defaults()
    };
    for path in &flags.files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", path.display())))?;
        let parsed = Suppressions::parse(&text, &path.display().to_string())
            .map_err(|e| Failure::new(2, format!("bad suppression: {e}")))?;
        list.extend(parsed);
    }
    Ok(list)
}
