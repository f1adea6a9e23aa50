//! `dualbus backtest`: replays a file through the MarketData hub and the engines on the
//! embedded buses, as fast as the machine allows, and reports P&L, risk and traffic.
//!
//! Determinism: the engines only use data time (the payloads' timestamps), and the run is in
//! lockstep on one thread: the hub lets one event out (a [`FeedGate`] permit), then waits until
//! every engine has handled everything that event caused (no group of any stream holds an
//! entry it has not handled), then the next. Within one event's cascade, messages are handled
//! in the order they were caused. Nothing follows the wall clock (readers park without
//! spinning; the redelivery sweep and the heartbeats are set to a day: each engine sends its
//! first and its last heartbeat only). So the same input gives a byte-identical JSON report,
//! except its top-level `wall_clock` section, which holds every figure that depends on the
//! machine (elapsed time, rates, delivery latency).

use super::run::{bus_json, ms, parse_settings, Observed, OBSERVED};
use super::Global;
use anyhow::{bail, Context};
use clap::Args;
use dualbus_bus::BusId;
use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::transport::StreamKey;
use dualbus_core::{EventKind, Mode, Priority, StartFrom};
use dualbus_engines::engine::EngineThread;
use dualbus_engines::hub::FeedGate;
use dualbus_engines::metrics::BusMetrics;
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use dualbus_engines::provider::{Provider, Speed};
use dualbus_engines::system::{System, SystemOptions, AVAILABLE};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Engines of a backtest: every engine except the dashboard (a server for browsers) and the
/// Backtesting engine (it re-runs bar-level backtests over the hub's history inside live runs).
const SKIPPED: [&str; 2] = ["websocket", "backtesting"];

/// Arguments of `dualbus backtest`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Replays a trade or quote file through the MarketData hub and every engine (features, factor,
ML, VPIN, enhanced VPIN, strategy, risk with the hub's paper venue, portfolio, collateral,
analytics) on the embedded buses, in data time, as fast as the machine allows. Prints a summary
(P&L, Sharpe ratio, drawdown, fills, alerts by rule, messages per kind and bus) and writes the
JSON report with --report. The run is in lockstep (one event, then every engine idle, then
the next), so the same file gives a byte-identical report, except its top-level
\"wall_clock\" section (elapsed time, rates, latency).

Examples:
  dualbus backtest --data tests/data/binance-btcusdt-trades-2021-01-08.csv --format binance
  dualbus backtest --data trades.csv --format tardis --symbol BTCUSDT --report bt.json")]
pub struct BacktestArgs {
    /// The file to replay.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Its format: binance, tardis or quotes.
    #[arg(long)]
    pub format: String,
    /// The symbol of a Binance or quote file (else guessed from the file name); for a Tardis
    /// file, only this symbol's rows.
    #[arg(long)]
    pub symbol: Option<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Per-engine settings as JSON: `{"strategy": {"w_ml": 2.0}}` (each key over that
    /// engine's defaults).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Print the JSON report on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dualbus backtest`.
pub fn run(args: BacktestArgs, global: &Global) -> anyhow::Result<()> {
    let format: FileFormat = args.format.parse()?;
    let mut settings: BTreeMap<String, Value> = parse_settings(args.settings.as_deref())?;
    // A trade file has no quotes: the hub derives them from trades (see HubOptions), so that
    // marks, signals and the paper venue work.
    let hub = settings
        .entry("marketdata".into())
        .or_insert_with(|| json!({}));
    if let Some(h) = hub.as_object_mut() {
        h.entry("quotes_from_trades").or_insert(json!(true));
    }
    if !args.data.exists() {
        bail!("--data {}: no such file", args.data.display());
    }
    let mut cfg = global.config()?;
    cfg.transport = "memory".into();
    // No wake-up that follows the wall clock: an idle reader parks at once (no spin) and the
    // redelivery sweep (a quarter of the idle timeout) does not come round in a backtest.
    cfg.memory.spin_us = Some(0);
    cfg.delivery.idle_timeout_ms = 24 * 3_600_000;
    // Critical messages too are handled on this one thread, in the same order every time.
    cfg.delivery.priority_thread = false;
    // One thread: the same input, the same order of handling.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut opts = ReplayOptions::new(&args.data, format).speed(Speed::Max);
        if let Some(s) = &args.symbol {
            opts = opts.symbol(s.clone());
        }
        let provider: Arc<dyn Provider> = Arc::new(
            ReplayProvider::open(opts).with_context(|| format!("opening {}", args.data.display()))?,
        );
        let root = DualBus::connect("dualbus-backtest", cfg).await?;
        let metrics = Arc::new(BusMetrics::default());
        let gate = FeedGate::new();
        let observed: Arc<Mutex<Observed>> = Default::default();
        let obs = observed.clone();
        let observer = root
            .subscribe(
                SubscribeOptions::new("dualbus-backtest", &OBSERVED)?
                    .mode(Mode::Reliable)
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    if let Ok(v) = m.enc.decode::<Value>(&m.payload) {
                        obs.lock().on(m.kind.as_str(), &v);
                    }
                    Ok(())
                }),
            )
            .await?;
        let engines: Vec<String> = AVAILABLE
            .iter()
            .filter(|e| !SKIPPED.contains(e))
            .map(|e| e.to_string())
            .collect();
        let started = Instant::now();
        let sys = System::start(
            &root,
            SystemOptions {
                engines,
                provider: provider.clone(),
                config: settings,
                metrics: Some(metrics.clone()),
                health_every: Duration::from_secs(86_400),
                gate: Some(gate.clone()),
                thread: EngineThread::Caller,
            },
        )
        .await?;
        let hub = sys.hub().expect("the hub runs").clone();
        let streams = streams(&root);
        // Lockstep: one event out, then wait until every engine has handled everything it
        // caused (fills, signals, updates), then the next.
        settle(&root, &streams).await;
        while !hub.is_feed_done() {
            let before = gate.passed();
            gate.open_one();
            while gate.passed() == before && !hub.is_feed_done() {
                tokio::task::yield_now().await;
            }
            settle(&root, &streams).await;
        }
        let hub_stats = hub.stats();
        // Stopping flushes open bars: each engine's last output reaches the next ones before
        // they stop in turn.
        let counts = sys.stop_settled(|| settle(&root, &streams)).await;
        observer.stop().await;
        let elapsed = started.elapsed().as_secs_f64();

        // Messages per kind and bus, from what the engines published.
        let mut per_bus: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for c in counts.values() {
            for (kind, n) in &c.published {
                let bus = match EventKind::parse(kind) {
                    Ok(k) => match root.route(&k, Priority::Normal).bus {
                        dualbus_bus::BusId::MarketData => "market_data",
                        dualbus_bus::BusId::Logic => "engine_logic",
                    },
                    Err(_) => "unknown",
                };
                *per_bus.entry(bus).or_default().entry(kind.clone()).or_default() += n;
            }
        }
        let o = observed.lock();
        let mut performance = o.analytics.clone().unwrap_or(Value::Null);
        let traffic = performance
            .as_object_mut()
            .and_then(|m| m.remove("traffic"))
            .unwrap_or(Value::Null);
        let portfolio = o.portfolio.clone().unwrap_or(Value::Null);
        let totals = metrics.totals();
        let report = json!({
            "data": {
                "file": args.data.display().to_string(),
                "format": args.format,
                "symbols": provider.instruments().iter().map(|i| i.symbol.clone()).collect::<Vec<_>>(),
            },
            "pnl": {
                "initial_equity": performance["equity"].as_f64().map(|e| e - performance["pnl"].as_f64().unwrap_or(0.0)),
                "final_equity": portfolio["equity"],
                "realized": portfolio["realized_pnl"],
                "unrealized": portfolio["unrealized_pnl"],
                "fees": portfolio["fees"],
            },
            "performance": performance,
            "fills": o.fills,
            "rejected_orders": o.rejected_orders,
            "alerts": o.alerts_json(),
            "engines": counts,
            "messages": per_bus,
            "hub": hub_stats,
            "wall_clock": {
                "elapsed_s": elapsed,
                "events_per_s": hub_stats.published as f64 / elapsed.max(1e-9),
                "buses": {
                    "market_data": bus_json(&totals[0], elapsed),
                    "engine_logic": bus_json(&totals[1], elapsed),
                },
                "analytics_traffic": traffic,
            },
        });
        drop(o);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_summary(&report);
        }
        if let Some(path) = &args.report {
            std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing the report {}", path.display()))?;
            if !args.json {
                println!("report written to {}", path.display());
            }
        }
        Ok(())
    })
}

/// Every stream of both buses: each known kind's and the priority lane.
fn streams(root: &DualBus) -> Vec<(BusId, StreamKey)> {
    let router = root.router();
    let mut out = Vec::new();
    for bus in [BusId::MarketData, BusId::Logic] {
        for kind in EventKind::KNOWN.iter() {
            out.push((bus, router.kind_stream(bus, kind)));
        }
        out.push((bus, router.priority_stream(bus)));
    }
    out
}

/// Waits until no group of any stream has an entry it has not handled (unread or
/// unacknowledged: a handler acknowledges after handling, and publishes what it causes before),
/// twice in a row with the other tasks run in between; or, while stopping, until nothing moves
/// for many rounds (an entry for an engine already stopped stays unread).
async fn settle(root: &DualBus, streams: &[(BusId, StreamKey)]) {
    let (mut idle, mut still, mut last) = (0, 0, u64::MAX);
    while idle < 2 && still < 10_000 {
        tokio::task::yield_now().await;
        let mut total = 0;
        for (bus, key) in streams {
            total += root.transport(*bus).unread(key).await.unwrap_or(0);
        }
        idle = if total == 0 { idle + 1 } else { 0 };
        still = if total == last { still + 1 } else { 0 };
        last = total;
    }
}

fn print_summary(r: &Value) {
    let p = &r["performance"];
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "backtest of {} ({}, {}): {} events in {:.2} s",
        r["data"]["file"].as_str().unwrap_or("?"),
        r["data"]["format"].as_str().unwrap_or("?"),
        r["data"]["symbols"],
        r["hub"]["published"],
        r["wall_clock"]["elapsed_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  P&L {}  (equity {} -> {}; realized {}, unrealized {}, fees {})",
        f(&p["pnl"]),
        f(&r["pnl"]["initial_equity"]),
        f(&r["pnl"]["final_equity"]),
        f(&r["pnl"]["realized"]),
        f(&r["pnl"]["unrealized"]),
        f(&r["pnl"]["fees"])
    );
    println!(
        "  Sharpe {}  max drawdown {}  turnover {}  hit rate {}",
        f(&p["sharpe"]),
        p["max_drawdown"]
            .as_f64()
            .map(|x| format!("{:.3}%", x * 100.0))
            .unwrap_or_else(|| "-".into()),
        f(&p["turnover"]),
        f(&p["hit_rate"])
    );
    println!(
        "  fills {}  rejected orders {}",
        r["fills"], r["rejected_orders"]
    );
    println!("  alerts {}", r["alerts"]);
    if let Some(buses) = r["messages"].as_object() {
        for (bus, kinds) in buses {
            println!("  {bus:<13} {kinds}");
        }
    }
    println!(
        "  latency (machine-dependent): MarketData p99 {}, Engine Logic p99 {}",
        ms(r["wall_clock"]["buses"]["market_data"]["latency_p99_us"].as_u64()),
        ms(r["wall_clock"]["buses"]["engine_logic"]["latency_p99_us"].as_u64())
    );
}
