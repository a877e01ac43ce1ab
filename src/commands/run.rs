//! `heaptape run`: record a program, then print its report, like valgrind.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use super::record::{options, record};
use super::{analyze, Failure, Outcome};
use crate::cli::RunArgs;

pub fn run(args: RunArgs) -> Outcome {
    // Before the program runs: a bad suppression file stops it from running for nothing.
    let report_opts = analyze::options(&args.report)?;
    let symbolize = !args.record.no_symbolize;
    let opts = options(args.record, args.program, None, None);
    let (status, path) = record(opts, symbolize)?;
    // The report goes to standard error, so the program's own output stays as it was.
    let terminal = io::stderr().is_terminal();
    let failed = analyze::report(&path, &args.report, &report_opts, terminal, |render| {
        let mut err = BufWriter::new(io::stderr().lock());
        render(&mut err)
            .and_then(|()| err.flush())
            .map_err(|e| Failure::new(1, format!("cannot write the report: {e}")))
    })?;
    Ok(ExitCode::from(if failed { 1 } else { status }))
}
