//! `dualbus stress SCENARIO`: fault injection under load against `redis-server` processes it
//! starts on free ports and kills itself (see the `dualbus-stress` crate).

use super::{runtime, Global};
use clap::{Args, ValueEnum};
use dualbus_stress::{self as stress, Scenario, StressOptions};
use std::time::Duration;

/// Arguments of `dualbus stress`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Scenarios (each starts and kills its own redis-server processes on free ports):
  crash          SIGKILL the MarketData server under load, then the Engine Logic server,
                 --kills times, each time restarting it empty
  hang           SIGSTOP the MarketData server for --hang-ms, then SIGCONT
  flash-crash    market data at 50x --rate for --burst-s while risk alerts keep flowing on the
                 priority lane
  slow-consumer  one group stalls while a --backlog message backlog builds, then catches up
  consumer-crash one of two consumers of a group, a separate process, is killed with SIGKILL
                 holding a batch (nothing of it handled or acknowledged); the other takes
                 the batch over after 500 ms idle

Every message is checked at the consumer by (kind, seq): lost, duplicated, out of order.
failover_ms is the time from a fault to the first delivery, over the other bus, of a message
published after the fault. Needs only redis-server on the PATH.

Examples:
  dualbus stress crash --kills 20
  dualbus stress hang --json")]
pub struct StressArgs {
    /// The scenario.
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// crash: how many kills (alternating buses).
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Messages per second on each bus in normal operation.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// hang: how long the server stays frozen, in ms.
    #[arg(long, default_value_t = 2_000)]
    hang_ms: u64,
    /// flash-crash: how long the burst lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    burst_s: u64,
    /// slow-consumer: the backlog to build.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Print every warning the clients log while the faults are injected (by default they are
    /// counted and summarised at the end: each fault makes every client retry and log it).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ScenarioArg {
    Crash,
    Hang,
    FlashCrash,
    SlowConsumer,
    ConsumerCrash,
}

/// Runs `dualbus stress`.
pub fn run(args: StressArgs, _global: &Global) -> anyhow::Result<()> {
    let scenario = match args.scenario {
        ScenarioArg::Crash => Scenario::Crash,
        ScenarioArg::Hang => Scenario::Hang,
        ScenarioArg::FlashCrash => Scenario::FlashCrash,
        ScenarioArg::SlowConsumer => Scenario::SlowConsumer,
        ScenarioArg::ConsumerCrash => Scenario::ConsumerCrash,
    };
    if args.rate == 0 || args.kills == 0 || args.backlog == 0 {
        anyhow::bail!("--rate, --kills and --backlog must be at least 1");
    }
    let mut opts = StressOptions::new(scenario);
    opts.kills = args.kills;
    opts.rate = args.rate;
    opts.hang = Duration::from_millis(args.hang_ms);
    opts.burst = Duration::from_secs(args.burst_s);
    opts.backlog = args.backlog;
    // The consumer that dies is a process of its own: this binary, `dualbus stress-consumer`.
    opts.consumer_exe = Some(std::env::current_exe()?);
    let quiet = args.json;
    let summarised = crate::logs::summarise(args.verbose);
    let report = runtime(2)?.block_on(async move {
        if !quiet {
            eprintln!(
                "stress {}: {} msgs/s per bus (1 in 10 logic messages a risk_alert on the priority lane)",
                scenario.name(),
                opts.rate
            );
        }
        stress::run(&opts, &|line| {
            if !quiet {
                eprintln!("{line}");
            }
        })
        .await
    });
    let report = report.map_err(|e| anyhow::anyhow!("stress run failed: {e}"))?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if summarised {
            v["warnings"] = crate::logs::summary()
                .into_iter()
                .map(|(n, m)| serde_json::json!({"message": m, "count": n}))
                .collect();
        }
        println!("{v}");
    } else {
        println!("scenario      : {}", report.scenario);
        println!(
            "messages      : published {}  delivered {}  lost {}  duplicated {}  reordered {}  (publish errors {})",
            report.published, report.delivered, report.lost, report.duplicated, report.reordered, report.publish_errors
        );
        println!(
            "fail-over     : p50 {:.1} ms  max {:.1} ms  ({} fail-overs, {} fail-backs)",
            report.failover_ms.p50, report.failover_ms.max, report.failovers, report.failbacks
        );
        println!(
            "critical lane : p50 {}  p99 {}  max {} (risk_alert publish -> handler)",
            super::human_ns(report.critical_latency_ns.p50),
            super::human_ns(report.critical_latency_ns.p99),
            super::human_ns(report.critical_latency_ns.max)
        );
        println!(
            "longest gap   : {:.1} ms between two deliveries",
            report.max_gap_ms
        );
        println!(
            "peak RSS      : {:.1} MiB (largest of this process and the Redis servers)",
            report.peak_rss_bytes as f64 / (1 << 20) as f64
        );
        if summarised {
            println!(
                "warnings      : {} (the clients' retries during the faults; -v prints each)",
                crate::logs::summary_line(3)
            );
        }
    }
    Ok(())
}

/// Arguments of the hidden `dualbus stress-consumer` (the consumer process that
/// `dualbus stress consumer-crash` starts and kills).
#[derive(Args, Debug)]
pub struct ConsumerArgs {
    /// MarketData server.
    #[arg(long)]
    md_url: String,
    /// Engine Logic server.
    #[arg(long)]
    logic_url: String,
    /// Stream length.
    #[arg(long)]
    maxlen: u64,
    /// Queue bound of the group.
    #[arg(long)]
    bound: usize,
    /// Stream-key prefix.
    #[arg(long, default_value = stress::DEFAULT_PREFIX)]
    prefix: String,
    /// Its instance name in the checked group.
    #[arg(long, default_value = "stress-sub-1")]
    instance: String,
    /// The group's redelivery idle timeout, in ms.
    #[arg(long, default_value_t = 500)]
    idle_ms: u64,
    /// Where handled messages are written.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Once this file exists, stop at the next message.
    #[arg(long)]
    stop_marker: std::path::PathBuf,
}

/// Runs `dualbus stress-consumer`.
pub fn run_consumer(args: ConsumerArgs) -> anyhow::Result<()> {
    runtime(2)?
        .block_on(stress::run_child_consumer(
            &stress::ChildSpec {
                md_url: args.md_url,
                logic_url: args.logic_url,
                maxlen: args.maxlen,
                bound: args.bound,
                prefix: args.prefix,
                instance: args.instance,
                idle: Duration::from_millis(args.idle_ms),
            },
            args.out,
            args.stop_marker,
        ))
        .map_err(anyhow::Error::msg)
}
