//! `dualbus`: the command-line front of the dualbus message backbone.
//!
//! # Layout
//!
//! * `commands/<verb>.rs`, or `commands/<verb>/` for a verb of several files: one module per
//!   verb (`run` and `engine`, `hub`, `backtest`, `bench`, `stress`, `vpin`, `redis`, `stats`,
//!   `dlq`, `tail`, `publish`, `schema`). A verb never imports another verb; what several use lives
//!   below them:
//!   * `commands/mod.rs`: the global flags, the configuration they make, durations,
//!     `--settings`, connecting to the buses and the errors said when they are not there.
//!   * `commands/summary.rs`: the summaries `run` and `backtest` print.
//!   * `commands/provider.rs`: the provider flags of `hub`, `run` and `engine marketdata`.
//!   * `commands/progress.rs`, `commands/plot.rs`: progress bars, SVG charts.
//!   * `commands/inspect.rs`: reading streams and groups from a Redis bus (`stats`, `dlq`,
//!     `tail`, `redis status`, `bench`), and whether a server answers.
//!   * `commands/acl.rs`, `commands/certs.rs`, `commands/redis_cluster.rs`: the Redis users,
//!     the TLS certificates and the cluster that `redis up` makes.
//! * `logs.rs`: log output on stderr.
//!
//! What is not about the command line lives in the library crates: the run report's figures in
//! `dualbus-engines` (`report`), stream keys in the bus's `Router`, the fault-injection harness
//! in `dualbus-stress`.

// Unsafe code only where a system call needs it, each allowed where it stands.
#![deny(unsafe_code)]

mod commands;
mod logs;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// A thread-caching allocator: envelopes are allocated by publishers and freed after every group
// has them, often on another thread, which the system allocator handles poorly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dualbus: two isolated message buses (MarketData and Engine Logic) for a multi-engine
/// trading system, embedded in-process or over Redis Streams.
#[derive(Parser)]
#[command(
    name = "dualbus",
    version,
    about = "dualbus: a multi-engine trading system on two isolated message buses (MarketData and \
             Engine Logic), embedded in-process or over Redis Streams.\n\n\
             Start here: `dualbus run` runs the trading system (the MarketData hub and 12 engines, \
             dashboard on http://127.0.0.1:8600/); `dualbus backtest --provider synthetic` \
             backtests it.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    global: commands::Global,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the trading system: the MarketData hub and the engines on the two buses (the main job).
    Run(commands::run::RunArgs),
    /// Backtest on the synthetic market or a file, through the hub and every engine: P&L, benchmark, trades, plots.
    Backtest(commands::backtest::BacktestArgs),
    /// Run one engine in this process (over Redis: spread the system over processes and hosts).
    Engine(commands::run::EngineArgs),
    /// Measure throughput and latency of the bus (see `dualbus bench --help`).
    Bench(commands::bench::BenchArgs),
    /// Start, stop or inspect the two local Redis servers (MarketData 6380, Engine Logic 6381).
    Redis(commands::redis::RedisArgs),
    /// Publish messages to the Redis buses.
    Publish(commands::publish::PublishArgs),
    /// Print messages from the Redis buses as they arrive.
    Tail(commands::tail::TailArgs),
    /// Per stream and group: published, delivered, pending, lag, dead-lettered.
    Stats(commands::stats::StatsArgs),
    /// Dead letters: list them, show one, replay them onto the streams they came from.
    Dlq(commands::dlq::DlqArgs),
    /// Fault injection under load: broker crash, hang, flash crash, slow or crashed consumer.
    Stress(commands::stress::StressArgs),
    /// VPIN of a trade file, bucket by bucket (Binance or Tardis trades).
    Vpin(commands::vpin::VpinArgs),
    /// The consumer process of `dualbus stress consumer-crash` (started and killed by it).
    #[command(hide = true)]
    StressConsumer(commands::stress::ConsumerArgs),
    /// Run the MarketData hub alone: provider in, market data out, snapshots, history, paper venue.
    Hub(commands::hub::HubArgs),
    /// The JSON Schema of a payload (`dualbus schema risk_alert`), or every one (--list, --write).
    Schema(commands::schema::SchemaArgs),
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly on a closed pipe, as Unix tools do,
    // instead of panicking in println!.
    // SAFETY: restoring the default SIGPIPE disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    logs::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args, &cli.global),
        Command::Backtest(args) => commands::backtest::run(args, &cli.global),
        Command::Engine(args) => commands::run::run_engine(args, &cli.global),
        Command::Bench(args) => commands::bench::run(args, &cli.global),
        Command::Redis(args) => commands::redis::run(args, &cli.global),
        Command::Publish(args) => commands::publish::run(args, &cli.global),
        Command::Tail(args) => commands::tail::run(args, &cli.global),
        Command::Stats(args) => commands::stats::run(args, &cli.global),
        Command::Dlq(args) => commands::dlq::run(args, &cli.global),
        Command::Stress(args) => commands::stress::run(args, &cli.global),
        Command::Hub(args) => commands::hub::run(args, &cli.global),
        Command::StressConsumer(args) => commands::stress::run_consumer(args),
        Command::Vpin(args) => commands::vpin::run(args),
        Command::Schema(args) => commands::schema::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", commands::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
