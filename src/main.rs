use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: profiles of the API under load spent ~15% of its CPU in
/// glibc's malloc/free (small, short-lived allocations from many threads); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = activity_pipeline::cli::Cli::parse();
    activity_pipeline::cli::run(cli)
}
