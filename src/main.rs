use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: profiles of the API under load spent ~15% of its CPU in
/// glibc's malloc/free (small, short-lived allocations from many threads). The crate's `override`
/// feature (Cargo.toml) serves the C code's `malloc` from it as well: librdkafka allocates every
/// record and header, and under glibc that was 40% of the publish path's samples. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = activity_pipeline::cli::Cli::parse();
    activity_pipeline::cli::run(cli)
}
