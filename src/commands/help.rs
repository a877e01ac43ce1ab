//! `heaptape completions` and `heaptape man`: shell completions and the man page,
//! generated from the clap definitions (so they never drift from `--help`).

use std::process::ExitCode;

use clap::CommandFactory;

use super::{to_stdout, Outcome};
use crate::cli::{Cli, CompletionsArgs};

pub fn completions(args: CompletionsArgs) -> Outcome {
    let mut cmd = Cli::command();
    to_stdout("the completion script", |out| {
        clap_complete::generate(args.shell, &mut cmd, "heaptape", out);
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> Outcome {
    to_stdout("the man page", |out| {
        clap_mangen::Man::new(Cli::command()).render(out)
    })?;
    Ok(ExitCode::SUCCESS)
}
