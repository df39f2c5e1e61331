//! The `wsgate` binary: parse the command line and run it (the command starts logging once it
//! knows the format: `serve` reads it from its config).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    wsgate::cli::run(wsgate::cli::Cli::parse())
}
