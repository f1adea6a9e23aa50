//! `dualbus publish`: publish messages to the Redis buses from the command line.

use super::{runtime, Global};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dualbus_core::{EventKind, Priority, Topic};
use std::time::{Duration, Instant};

/// Arguments of `dualbus publish`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Examples:
  dualbus publish --kind risk_alert --topic risk_alert.BTCUSDT --payload '{\"rule\":\"max_position\"}'
  dualbus publish --kind market_data --topic market_data.trade.BTCUSDT \\
      --payload '{\"price\":42000.5,\"size\":0.1}' --count 1000 --rate 100")]
pub struct PublishArgs {
    /// Event kind (snake_case), e.g. `risk_alert`; it decides the bus.
    #[arg(long)]
    kind: String,
    /// Topic; its first segment must be the kind, e.g. `risk_alert.BTCUSDT`.
    #[arg(long)]
    topic: String,
    /// Payload as JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Publish this many messages; the payload (a JSON object) gets a field "n" numbering
    /// them from 0.
    #[arg(long)]
    count: Option<u64>,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Priority; `critical` (and the critical kinds) take the priority lane.
    #[arg(long, value_enum, default_value_t = PrioArg::Normal)]
    prio: PrioArg,
    /// Engine name written as `src`.
    #[arg(long, default_value = "cli")]
    src: String,
    /// Instance id written as `inst` (default `cli-{pid}`).
    #[arg(long)]
    inst: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum PrioArg {
    Low,
    Normal,
    High,
    Critical,
}

/// Runs `dualbus publish`.
pub fn run(args: PublishArgs, global: &Global) -> anyhow::Result<()> {
    let kind = EventKind::parse(&args.kind).map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
    let topic = Topic::new(&args.topic).map_err(|e| anyhow::anyhow!("--topic: {e}"))?;
    if !topic.starts_with_segment(kind.as_str()) {
        bail!(
            "--topic {:?} must start with its kind: {}.…",
            args.topic,
            kind.as_str()
        );
    }
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .with_context(|| format!("--payload is not valid JSON: {}", args.payload))?;
    if args.count.is_some() && !payload.is_object() {
        bail!("--count numbers messages with a field \"n\", so --payload must be a JSON object");
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of messages per second, not {r}");
        }
    }
    let prio = match args.prio {
        PrioArg::Low => Priority::Low,
        PrioArg::Normal => Priority::Normal,
        PrioArg::High => Priority::High,
        PrioArg::Critical => Priority::Critical,
    };
    let mut cfg = global.redis_config()?;
    cfg.instance = Some(
        args.inst
            .clone()
            .unwrap_or_else(|| format!("cli-{}", std::process::id())),
    );
    runtime(1)?.block_on(async move {
        let bus = super::connect_buses(&args.src, cfg).await?;
        let route = bus.route_topic(&kind, prio, topic.as_str());
        let n = args.count.unwrap_or(1);
        let start = Instant::now();
        let mut last_report = Instant::now();
        for i in 0..n {
            if let Some(rate) = args.rate {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let mut p = payload.clone();
            if args.count.is_some() {
                p["n"] = serde_json::json!(i);
            }
            let env = bus.envelope(kind.clone(), topic.as_str(), prio, &p)?;
            if i + 1 == n {
                // The last one is confirmed: once it is written, all before it are too.
                bus.publish_confirmed(env).await?;
            } else {
                bus.publish_envelope(env).await?;
            }
            if last_report.elapsed() > Duration::from_secs(1) {
                eprintln!("  {} / {n} published", i + 1);
                last_report = Instant::now();
            }
        }
        println!(
            "published {n} message{} to {} on the {} bus ({})",
            if n == 1 { "" } else { "s" },
            route.stream,
            route.bus,
            // The address as the config has it may carry a password (`redis up`'s users).
            dualbus_core::redact_url(&bus.config().bus(route.bus).url)
        );
        Ok(())
    })
}
