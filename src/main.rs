//! The `wsgate` binary: parse the command line and run it (the command starts logging once it
//! knows the format: `serve` reads it from its config).

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, not glibc's malloc: chosen by measurement (BENCHMARKS.md, "Memory per connection
/// and memory that comes back"). glibc kept what a burst had freed (341 MB of RSS 30 s after the
/// last of 5,000 busy clients left, against 11 MB before) and its 128-byte-aligned chunks for
/// tokio's tasks and I/O registrations cost slack on every idle connection.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): a background thread gives freed pages back to the system after a second
/// (`dirty_decay_ms`) and at once past that (`muzzy_decay_ms:0`: no MADV_FREE stage, whose
/// pages would still count in RSS), so neither the workers nor an idle server wait on it.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    wsgate::cli::run(wsgate::cli::Cli::parse())
}
