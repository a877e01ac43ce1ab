//! `heaptape`: the command line. Thin by design: it parses arguments, hands them to the
//! recorder or analyzer crate, and turns their errors into one line and an exit code.
//!
//! - `cli`: the options (clap definitions; their doc comments are the help text);
//! - `commands`: one module per subcommand, and what they share (standard output,
//!   loading a trace, the [`commands::Failure`] every command returns);
//! - here: parse, dispatch, and the one place a failure becomes lines on stderr and an
//!   exit status.

#![forbid(unsafe_code)]

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => commands::record::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Analyze(args) => commands::analyze::run(args),
        Command::Flamegraph(args) => commands::flamegraph::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Report(args) => commands::export::html(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Dump(args) => commands::dump::run(args),
        Command::Completions(args) => commands::help::completions(args),
        Command::Man => commands::help::man(),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("heaptape: {line}");
            }
            ExitCode::from(failure.status)
        }
    }
}
