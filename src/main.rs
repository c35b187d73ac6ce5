use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = activity_pipeline::cli::Cli::parse();
    activity_pipeline::cli::run(cli)
}
