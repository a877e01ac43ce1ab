//! `heaptape dump`: every record of a trace, one per line.

use std::io::Write;
use std::process::ExitCode;

use heaptape_format::TraceReader;

use super::{to_stdout, unreadable, warn, Delivery, Failure, Outcome};
use crate::cli::DumpArgs;

pub fn run(args: DumpArgs) -> Outcome {
    let reader = TraceReader::open(&args.trace).map_err(|e| unreadable(&args.trace, e))?;
    let mut records = reader.records();
    let mut damaged = None;
    let delivery = to_stdout("the records", |out| {
        writeln!(out, "{:?}", records.header())?;
        for rec in records.by_ref() {
            match rec {
                Ok(r) => writeln!(out, "{r:?}")?,
                Err(e) => {
                    // What was read so far is written first.
                    damaged = Some(unreadable(&args.trace, e));
                    break;
                }
            }
        }
        Ok(())
    });
    match (damaged, delivery) {
        (Some(damaged), Err(unwritten)) => Err(damaged.and(unwritten)),
        (Some(damaged), Ok(Delivery::Whole)) => Err(damaged),
        // A reader that went away ends `dump` successfully, as it always has; the
        // damage is still reported.
        (Some(damaged), Ok(Delivery::ReaderGone)) => Err(Failure {
            status: 0,
            ..damaged
        }),
        (None, Err(unwritten)) => Err(unwritten),
        // The records were not all read: no word on how the trace ends.
        (None, Ok(Delivery::ReaderGone)) => Ok(ExitCode::SUCCESS),
        (None, Ok(Delivery::Whole)) => {
            if let Some(t) = records.truncation() {
                warn(t);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
