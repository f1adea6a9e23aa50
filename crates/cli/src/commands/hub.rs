//! `dualbus hub`: runs the MarketData hub alone, on any provider and either transport.
//!
//! Also home of the provider flags (`--provider`, `--file`, `--format`, ...) that every verb
//! running a hub shares.

use super::progress::Progress;
use super::provider::ProviderArgs;
use super::{parse_duration, runtime, Global, MetricsArgs};
use anyhow::{bail, Context};
use clap::Args;
use dualbus_bus::TransportKind;
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::hub::{HubOptions, HubStats, MarketDataHub};
use dualbus_engines::metrics::BusMetrics;
use dualbus_engines::provider::Provider;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `dualbus hub`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
The hub is the only component that talks to upstream market data providers. It validates what
the provider sends (rejected data is counted by reason, never published), publishes it on the
MarketData bus as market_data.{trade,quote,bar,book}.SYMBOL, caches the latest trade, quote and
bar per symbol and the answers to history requests (coalescing identical requests in flight
into one upstream call), serves hub_request.snapshot.SYMBOL and hub_request.history.SYMBOL over
request/reply, and fills order_request messages in its paper venue (trade_execution).

The transport is the config's (`transport = \"redis\"` in dualbus.toml, or DUALBUS_TRANSPORT);
on the embedded transport the hub is alone in its process, which is useful to measure a replay.
A replay ends by itself at the end of the file; otherwise Ctrl-C or SIGTERM (or --duration) stops.

Examples:
  dualbus hub --duration 10s --stats
  dualbus hub --provider replay --file trades.csv --format binance --speed max
  DUALBUS_TRANSPORT=redis dualbus hub --provider synthetic --flash-crash 30m
  dualbus hub --provider binance --symbols BTCUSDT,ETHUSDT --stats")]
pub struct HubArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Stop after this long (wall clock), e.g. `30s`, `5m`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Print the hub's counters every second, and a final table.
    #[arg(long)]
    pub stats: bool,
    /// Print the final counters as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Runs `dualbus hub`.
pub fn run(args: HubArgs, global: &Global) -> anyhow::Result<()> {
    let mut cfg = global.config()?;
    if cfg.transport == TransportKind::Redis {
        global.authenticate(&mut cfg, "marketdata")?;
    }
    let duration = args
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--duration")?;
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let rt = runtime(args.threads)?;
    rt.block_on(async move {
        let (provider, replay) = args.provider.build_parts()?;
        // The in-memory transport is printed by its user-facing name.
        let transport = match cfg.transport {
            TransportKind::Memory => "embedded",
            TransportKind::Redis => "redis",
        };
        let bus = super::connect_buses("marketdata", cfg.clone()).await?;
        let hub = MarketDataHub::new(provider.clone(), HubOptions::default());
        let handle = hub.handle();
        let started = Instant::now();
        let metrics = Arc::new(BusMetrics::default());
        let running = EngineHost::start(
            hub,
            bus,
            HostOptions {
                metrics: Some(metrics.clone()),
                ..HostOptions::default()
            },
        )
        .await?;
        let metrics_server = args.metrics.serve(&metrics, args.json).await?;
        if !args.json {
            let n = provider.instruments().len();
            eprintln!(
                "hub: {} provider, {} transport, {n} symbol{}; Ctrl-C stops",
                provider.name(),
                transport,
                if n == 1 { "" } else { "s" }
            );
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // A replay's progress through its file, on a terminal (not with the per-second
        // --stats lines, which a bar would overwrite).
        let mut progress = replay
            .as_ref()
            .filter(|_| !args.stats && !args.json)
            .map(|r| (r.clone(), Progress::new("replay", Some(r.len() as u64), "rows")));
        let mut progress_tick = tokio::time::interval(Duration::from_millis(200));
        let mut stop = super::stop::StopSignal::new()?;
        let why = loop {
            tokio::select! {
                why = stop.recv() => break why,
                _ = handle.feed_done() => break "end of data",
                _ = progress_tick.tick(), if progress.is_some() => {
                    if let Some((r, p)) = progress.as_mut() {
                        let s = handle.stats();
                        p.update(|| {
                            (r.delivered() as u64, format!("{} published", s.published))
                        });
                    }
                }
                _ = async {
                    match duration {
                        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(started + d)).await,
                        None => std::future::pending().await,
                    }
                } => break "duration reached",
                _ = tick.tick() => {
                    if args.stats && !args.json {
                        let s = handle.stats();
                        eprintln!(
                            "{:>6.1}s  published {:>10}  rejected {:>6}  requests {:>7}  hit rate {:>5.1}%  upstream {:>5}  fills {:>5}",
                            started.elapsed().as_secs_f64(),
                            s.published,
                            s.rejected.values().sum::<u64>(),
                            s.requests,
                            s.hit_rate * 100.0,
                            s.upstream_calls,
                            s.venue.fills,
                        );
                    }
                }
            }
        };
        if let Some((_, p)) = progress {
            p.finish();
        }
        let elapsed = started.elapsed();
        let counts = running.stop().await;
        if let Some(s) = metrics_server {
            s.stop().await;
        }
        let stats = handle.stats();
        if args.json {
            let mut v = serde_json::to_value(&stats)?;
            v["stopped"] = serde_json::json!(why);
            v["elapsed_s"] = serde_json::json!(elapsed.as_secs_f64());
            v["published_per_s"] =
                serde_json::json!(stats.published as f64 / elapsed.as_secs_f64().max(1e-9));
            v["received"] = serde_json::to_value(&counts.received)?;
            println!("{v}");
        } else {
            print_table(&stats, why, elapsed);
        }
        Ok(())
    })
}

fn print_table(s: &HubStats, why: &str, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("hub stopped ({why}) after {secs:.2} s");
    println!(
        "  published      {:>12}  ({:.0} msgs/s)",
        s.published,
        s.published as f64 / secs
    );
    println!("  accepted       {:>12}", s.accepted);
    let mut rejected: Vec<(&String, &u64)> = s.rejected.iter().collect();
    rejected.sort();
    for (reason, n) in rejected {
        println!("  rejected       {n:>12}  {reason}");
    }
    println!("  skipped rows   {:>12}", s.provider_skipped);
    println!(
        "  requests       {:>12}  (snapshot {}, history {}, unreadable {})",
        s.requests, s.snapshot_requests, s.history_requests, s.bad_requests
    );
    println!(
        "  hits / misses  {:>12}  / {}  (hit rate {:.1}%)",
        s.hits,
        s.misses,
        s.hit_rate * 100.0
    );
    println!(
        "  upstream calls {:>12}  ({:.2}% of requests; {} failed; {} coalesced)",
        s.upstream_calls,
        s.upstream_ratio * 100.0,
        s.upstream_errors,
        s.coalesced
    );
    println!(
        "  paper venue    {:>12}  orders ({} filled, {} rejected, {} resting)",
        s.venue.orders, s.venue.fills, s.venue.rejects, s.venue.resting
    );
}
