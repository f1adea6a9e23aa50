//! `dualbus stress SCENARIO`: fault injection under load against `redis-server` processes it
//! starts on free ports and kills itself (see the `dualbus-stress` crate).

use super::{runtime, Global};
use anyhow::Context;
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
  soak           the whole system for --duration: the 13 engines as `dualbus engine`
                 processes (the hub on the synthetic market) and the checked traffic beside
                 them on the same two servers; a broker killed (SIGKILL, restarted empty)
                 every --kill-every, MarketData and Engine Logic in turn (every third of
                 --duration when that is shorter), and half-way between kills in turn: a
                 consumer kill (the vpin engine process SIGKILLed and started again, and a
                 consumer process of the checked group killed holding a batch), a slow
                 consumer (a checked group stalls for a quarter of the interval, at most
                 20 s, then catches up) and a burst (market data at 50x --rate for a quarter
                 of the interval, at most 10 s)

Every message is checked at the consumer by (kind, seq): lost, duplicated, out of order.
failover_ms is the time from a fault to the first delivery, over the other bus, of a message
published after the fault. Needs only redis-server on the PATH.

The soak's checked traffic has stream keys of its own (prefix `soak`), so no engine reads it;
its groups are `stress` (every kind) and `slow` (market data), each checked, and its clients
take a 1 s heartbeat timeout so that the engines' load on a small machine does not pass for a
hung broker (a kill breaks the connection and is seen at once). Before each broker kill the
checked groups catch up first (at most 60 s): a group further behind than the failover window
when its broker dies loses the rest (docs/guarantees.md). dead_lettered and trimmed_unread are
read from the brokers, every group of the engines and of the checked traffic: a killed broker
restarts empty, so each server's counts are read just before it is killed and at the end, and
summed (what a group dead-letters or loses to a trim between that read and the kill is not
counted). peak_rss_bytes is every process's VmHWM from /proc, read every 0.5 s and before each
kill. It exits non-zero, naming what, when a checked message was lost or duplicated, an engine
process exited on its own or did not stop on SIGTERM at the end, or a killed bus was not taken
back within 60 s. A failed soak keeps the engines' output in $TMPDIR/dualbus-soak-PID.

Examples:
  dualbus stress crash --kills 20
  dualbus stress hang --json
  dualbus stress soak --duration 30m")]
pub struct StressArgs {
    /// The scenario.
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// crash: how many kills (alternating buses).
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Messages per second on each bus in normal operation (default 1000; soak: 200, its
    /// bursts are 50x that beside the engines).
    #[arg(long)]
    rate: Option<u64>,
    /// hang: how long the server stays frozen, in ms.
    #[arg(long, default_value_t = 2_000)]
    hang_ms: u64,
    /// flash-crash: how long the burst lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    burst_s: u64,
    /// slow-consumer: the backlog to build.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// soak: how long (30s to 24h), e.g. 2m, 30m.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// soak: a broker kill every this long (a third of --duration when that is shorter; at
    /// least 10s).
    #[arg(long, value_name = "DURATION", default_value = "3m")]
    kill_every: String,
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
    Soak,
}

/// Runs `dualbus stress`.
pub fn run(args: StressArgs, _global: &Global) -> anyhow::Result<()> {
    let scenario = match args.scenario {
        ScenarioArg::Crash => Scenario::Crash,
        ScenarioArg::Hang => Scenario::Hang,
        ScenarioArg::FlashCrash => Scenario::FlashCrash,
        ScenarioArg::SlowConsumer => Scenario::SlowConsumer,
        ScenarioArg::ConsumerCrash => Scenario::ConsumerCrash,
        ScenarioArg::Soak => return run_soak(args),
    };
    if args.duration.is_some() {
        anyhow::bail!("--duration is for `dualbus stress soak`");
    }
    let rate = args.rate.unwrap_or(1_000);
    if rate == 0 || args.kills == 0 || args.backlog == 0 {
        anyhow::bail!("--rate, --kills and --backlog must be at least 1");
    }
    let mut opts = StressOptions::new(scenario);
    opts.kills = args.kills;
    opts.rate = rate;
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
        print_json(&report, summarised)?;
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

/// Runs `dualbus stress soak`.
fn run_soak(args: StressArgs) -> anyhow::Result<()> {
    use super::soak::{self, SoakOptions};
    let Some(duration_arg) = args.duration.as_deref() else {
        anyhow::bail!("`dualbus stress soak` needs --duration, e.g. --duration 30m");
    };
    let duration = super::parse_duration(duration_arg).context("--duration")?;
    if !(soak::MIN_DURATION..=soak::MAX_DURATION).contains(&duration) {
        anyhow::bail!(
            "--duration {duration_arg}: a soak runs from 30s to 24h (it kills each broker at \
             least once)"
        );
    }
    let kill_every = super::parse_duration(&args.kill_every).context("--kill-every")?;
    if kill_every < soak::MIN_KILL_EVERY {
        anyhow::bail!(
            "--kill-every {}: at least 10s (a killed broker needs time to come back)",
            args.kill_every
        );
    }
    let rate = args.rate.unwrap_or(200);
    if rate == 0 {
        anyhow::bail!("--rate must be at least 1");
    }
    let opts = SoakOptions {
        duration,
        kill_every,
        rate,
        exe: std::env::current_exe()?,
    };
    let quiet = args.json;
    let summarised = crate::logs::summarise(args.verbose);
    if !quiet {
        eprintln!(
            "stress soak: {} of the whole system on two redis-servers, checked traffic {} msgs/s \
             per bus",
            humantime::format_duration(duration),
            opts.rate
        );
    }
    let report = runtime(2)?.block_on(soak::run(&opts, &|line| {
        if !quiet {
            eprintln!("{line}");
        }
    }))?;
    if args.json {
        print_json(&report, summarised)?;
    } else {
        print_soak(&report, summarised);
    }
    if !report.failures.is_empty() {
        anyhow::bail!("the soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// Prints a report as one JSON object, with the summarised warnings when they are.
fn print_json(report: &impl serde::Serialize, summarised: bool) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(report)?;
    if summarised {
        v["warnings"] = crate::logs::summary()
            .into_iter()
            .map(|(n, m)| serde_json::json!({"message": m, "count": n}))
            .collect();
    }
    println!("{v}");
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// The soak's report as a table.
fn print_soak(r: &super::soak::SoakReport, summarised: bool) {
    let c = &r.checked;
    let kills = |bus: &str| r.broker_kills.get(bus).copied().unwrap_or(0);
    println!(
        "scenario      : soak, {:.0} s, a broker kill every {:.0} s",
        r.duration_s, r.kill_every_s
    );
    println!(
        "faults        : broker kills MarketData {}, Engine Logic {}; consumer kills {} \
         (engine {}; checked consumer processes {}); slow consumer {}; bursts {}",
        kills("md"),
        kills("logic"),
        r.consumer_kills,
        super::soak::KILLED_ENGINE,
        c.checked_consumer_kills,
        r.slow_consumer_stalls,
        r.bursts
    );
    println!(
        "messages      : published {}  delivered {} of {}  lost {}  duplicated {}  reordered {}  \
         (publish errors {})",
        c.published, c.delivered, c.expected, c.lost, c.duplicated, c.reordered, c.publish_errors
    );
    for g in &c.groups {
        let t = &g.tally;
        println!(
            "  group {:<7}: delivered {} of {}  lost {}  duplicated {}  reordered {}  ({})",
            g.group,
            t.delivered,
            t.expected,
            t.lost,
            t.duplicated,
            t.reordered,
            g.kinds.join(", ")
        );
    }
    println!(
        "fail-over     : p50 {:.1} ms  max {:.1} ms  ({} fail-overs, {} fail-backs, {} redelivered)",
        c.failover_ms.p50, c.failover_ms.max, c.failovers, c.failbacks, c.redelivered
    );
    let by_group = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = m.iter().map(|(g, n)| format!("{g} {n}")).collect();
            format!(" ({})", parts.join(", "))
        }
    };
    println!(
        "brokers       : dead-lettered {}{}  trimmed unread {}{}",
        r.dead_lettered,
        by_group(&r.dead_lettered_by_group),
        r.trimmed_unread,
        by_group(&r.trimmed_unread_by_group)
    );
    let restarts: u64 = r.engines.iter().map(|e| e.restarts).sum();
    println!(
        "engines       : {} processes, {} restarts, {} died on their own",
        r.engines.len(),
        restarts,
        r.engine_deaths.len()
    );
    let rss: Vec<String> = r
        .peak_rss_bytes
        .iter()
        .map(|(p, b)| format!("{p} {}", mib(*b)))
        .collect();
    println!("peak RSS (MiB): {}", rss.join(", "));
    if summarised {
        println!(
            "warnings      : {} (this process's clients; the engines' go to their own stderr)",
            crate::logs::summary_line(3)
        );
    }
    for f in &r.failures {
        println!("FAILED        : {f}");
    }
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
