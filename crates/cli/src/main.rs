//! `dualbus`: the command-line front of the dualbus message backbone.
//!
//! Each verb lives in `commands/<verb>.rs`.

mod commands;

// A thread-caching allocator: envelopes are allocated by publishers and freed after every group
// has them, often on another thread, which the system allocator handles poorly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// dualbus: two isolated message buses (MarketData and Engine Logic) for a multi-engine
/// trading system, embedded in-process or over Redis Streams.
#[derive(Parser)]
#[command(name = "dualbus", version, about, long_about = None)]
struct Cli {
    /// Config file (default: ./dualbus.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure throughput and latency of the bus (see `dualbus bench --help`).
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => commands::bench::run(args, cli.config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
