//! `dualbus backtest`: replays market data (a file, or the synthetic market with no file)
//! through the MarketData hub and the engines on the embedded buses, as fast as the machine
//! allows, and reports P&L, risk and traffic, with the tearsheet a trader expects (trade log,
//! round trips, exposure, drawdown, buy-and-hold benchmark) and, with `--html`, plots.
//!
//! Determinism: the engines only use data time (the payloads' timestamps), and the run is in
//! lockstep on one thread: the hub lets one event out (a [`FeedGate`] permit), then waits until
//! every engine has handled everything that event caused (no group of any stream holds an
//! entry it has not handled), then the next. Within one event's cascade, messages are handled
//! in the order they were caused. Nothing that follows the wall clock changes what happens
//! (readers park without spinning; with an idle timeout of a day the redelivery sweep finds
//! nothing due, and the once-a-second wake-up of an idle reader changes nothing; the
//! heartbeats are set to a day: each engine sends its first and its last heartbeat only). So the same input gives a byte-identical JSON report,
//! except its top-level `wall_clock` section, which holds every figure that depends on the
//! machine (elapsed time, rates, delivery latency). The synthetic market is generated from its
//! seed, so the same seed and flags give the same report too.

mod html;
mod recorded;

use super::parse_settings;
use super::progress::Progress;
use super::summary::{few_returns, ms, span};
use super::{parse_duration, Global};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_bus::{BusId, TransportKind};
use dualbus_core::transport::StreamKey;
use dualbus_core::{EventKind, Mode, Priority, StartFrom};
use dualbus_engines::engine::EngineThread;
use dualbus_engines::features::first_bar;
use dualbus_engines::hub::FeedGate;
use dualbus_engines::metrics::BusMetrics;
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
use dualbus_engines::provider::synthetic::{SyntheticOptions, SyntheticProvider};
use dualbus_engines::provider::{Provider, Speed};
use dualbus_engines::report::{bus_json, Observed, OBSERVED};
use dualbus_engines::system::{System, SystemOptions, AVAILABLE};
use dualbus_engines::tearsheet::{
    buy_and_hold, exposure, iso8601, RoundTripTracker, TradeLogEntry,
};
use dualbus_model::ml::DEFAULT_FEATURES;
use parking_lot::Mutex;
use recorded::{Ledger, PriceTape, TapedProvider};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Engines of a backtest: every engine except the dashboard (a server for browsers) and the
/// Backtesting engine (it re-runs bar-level backtests over the hub's history inside live runs).
const SKIPPED: [&str; 2] = ["websocket", "backtesting"];

/// A market without a file, for `--provider`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BacktestProvider {
    /// The deterministic synthetic market (crates/engines/src/provider/synthetic.rs).
    Synthetic,
}

/// Arguments of `dualbus backtest`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Replays market data through the MarketData hub and every engine (features, factor, ML, VPIN,
enhanced VPIN, strategy, risk with the hub's paper venue, portfolio, collateral, analytics) on
the embedded buses, in data time, as fast as the machine allows. The data is either the
synthetic market (--provider synthetic: generated from --seed, no file needed) or a file
(--data FILE --format binance|tardis|quotes); exactly one of the two.

Prints a summary (P&L, buy-and-hold benchmark, Sharpe ratio, drawdown and time under water,
exposure, round trips won and lost, the first fills of the trade log, alerts, messages per kind
and bus) and writes the JSON report with --report, the HTML report with plots with --html. The
run is in lockstep (one event, then every engine idle, then the next), so the same data gives
a byte-identical JSON report, except its top-level \"wall_clock\" section (elapsed time, rates,
latency).

The strategy trades once its ML model has its first prediction: 34 one-minute bars of a symbol
with the default features. Shorter data makes no fills, and the summary says so.

Examples:
  dualbus backtest --provider synthetic --duration 1d --seed 7 --html report.html
  dualbus backtest --provider synthetic --duration 6h --symbols BTCUSDT,ETHUSDT --report bt.json
  dualbus backtest --data tests/data/binance-btcusdt-trades-2021-01-08.csv --format binance
  dualbus backtest --data trades.csv --format tardis --symbol BTCUSDT --report bt.json")]
pub struct BacktestArgs {
    /// Market data without a file: `synthetic`, generated from --seed over --duration of data
    /// time. Not with --data.
    #[arg(long, value_enum, value_name = "PROVIDER")]
    pub provider: Option<BacktestProvider>,
    /// synthetic: data time to generate, e.g. `6h`, `1d`, `3d` (default 1d).
    #[arg(long, value_name = "SPAN")]
    pub duration: Option<String>,
    /// synthetic: the seed; the same seed gives the same market (default 7).
    #[arg(long)]
    pub seed: Option<u64>,
    /// synthetic: these symbols, comma-separated, or `all` for the 13 of the universe
    /// (default BTCUSDT,ETHUSDT,SOLUSDT).
    #[arg(long, value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// synthetic: the simulation step, one quote per symbol each (default 1s; the provider's
    /// own default is 100ms: ten times the quotes).
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    /// synthetic: a flash crash this far into the data, e.g. `3h`.
    #[arg(long, value_name = "AT")]
    pub flash_crash: Option<String>,
    /// The file to replay (with --format). Not with --provider.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// The file's format: binance, tardis or quotes.
    #[arg(long)]
    pub format: Option<String>,
    /// The symbol of a Binance or quote file (else guessed from the file name); for a Tardis
    /// file, only this symbol's rows.
    #[arg(long)]
    pub symbol: Option<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the HTML report here: one self-contained file (inline SVG, nothing fetched) with
    /// the equity and drawdown curves, each symbol's price with the fills marked, the P&L by
    /// symbol, the summary table and the trade log.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Per-engine settings as JSON: `{"strategy": {"w_ml": 2.0}}` (each key over that
    /// engine's defaults).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Print the JSON report on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Symbols of a synthetic backtest when --symbols is not given: three, so the factor engine
/// has a cross-section and a day runs in seconds.
const SYNTHETIC_SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];

/// Where the backtest's market data comes from, and how the report names it.
struct Source {
    provider: Arc<dyn Provider>,
    data: Value,
    /// The market time the data covers, Unix ns, when known before the run (for progress).
    span_ns: Option<u64>,
}

/// The one source the flags name, or an error naming the flags.
fn source(args: &BacktestArgs) -> anyhow::Result<Source> {
    let synthetic_flags: Vec<&str> = [
        (args.duration.is_some(), "--duration"),
        (args.seed.is_some(), "--seed"),
        (!args.symbols.is_empty(), "--symbols"),
        (args.step.is_some(), "--step"),
        (args.flash_crash.is_some(), "--flash-crash"),
    ]
    .iter()
    .filter(|(given, _)| *given)
    .map(|(_, f)| *f)
    .collect();
    let file_flags: Vec<&str> = [
        (args.format.is_some(), "--format"),
        (args.symbol.is_some(), "--symbol"),
    ]
    .iter()
    .filter(|(given, _)| *given)
    .map(|(_, f)| *f)
    .collect();
    match (args.provider, &args.data) {
        (Some(_), Some(_)) => bail!(
            "give one source of market data, not both: --provider synthetic (no file) or \
             --data FILE --format binance|tardis|quotes"
        ),
        (None, None) => bail!(
            "no market data: give --provider synthetic (a generated market, no file needed; \
             e.g. --provider synthetic --duration 1d) or --data FILE --format \
             binance|tardis|quotes"
        ),
        (Some(BacktestProvider::Synthetic), None) => {
            if !file_flags.is_empty() {
                bail!(
                    "{} belong(s) to --data (a file), not to --provider synthetic",
                    file_flags.join(", ")
                );
            }
            let duration =
                parse_duration(args.duration.as_deref().unwrap_or("1d")).context("--duration")?;
            if duration.is_zero() {
                bail!("--duration must be above zero");
            }
            let step = parse_duration(args.step.as_deref().unwrap_or("1s")).context("--step")?;
            if step.is_zero() {
                bail!("--step must be above zero");
            }
            let flash_crash_at = args
                .flash_crash
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--flash-crash")?;
            let symbols: Vec<String> = match args.symbols.as_slice() {
                [] => SYNTHETIC_SYMBOLS.iter().map(|s| s.to_string()).collect(),
                [all] if all.eq_ignore_ascii_case("all") => Vec::new(),
                s => s.to_vec(),
            };
            let seed = args.seed.unwrap_or(7);
            let p = SyntheticProvider::new(SyntheticOptions {
                seed,
                speed: Speed::Max,
                step,
                flash_crash_at,
                duration: Some(duration),
                symbols,
                ..Default::default()
            })?;
            Ok(Source {
                data: json!({
                    "provider": "synthetic",
                    "seed": seed,
                    "duration_s": duration.as_secs_f64(),
                    "step_ms": step.as_secs_f64() * 1e3,
                    "flash_crash_at_s": flash_crash_at.map(|d| d.as_secs_f64()),
                }),
                provider: Arc::new(p),
                span_ns: Some(duration.as_nanos() as u64),
            })
        }
        (None, Some(path)) => {
            if !synthetic_flags.is_empty() {
                bail!(
                    "{} belong(s) to --provider synthetic, not to --data (a file)",
                    synthetic_flags.join(", ")
                );
            }
            let Some(format) = &args.format else {
                bail!(
                    "--data {} needs --format: binance, tardis or quotes",
                    path.display()
                );
            };
            let format: FileFormat = format.parse()?;
            if !path.exists() {
                bail!("--data {}: no such file", path.display());
            }
            let mut opts = ReplayOptions::new(path, format).speed(Speed::Max);
            if let Some(s) = &args.symbol {
                opts = opts.symbol(s.clone());
            }
            let p = super::open_replay(opts)?;
            Ok(Source {
                data: json!({
                    "file": path.display().to_string(),
                    "format": args.format,
                }),
                span_ns: p.time_range().map(|(a, b)| b - a),
                provider: Arc::new(p),
            })
        }
    }
}

/// Runs `dualbus backtest`.
pub fn run(args: BacktestArgs, global: &Global) -> anyhow::Result<()> {
    let src = source(&args)?;
    let mut settings: BTreeMap<String, Value> = parse_settings(args.settings.as_deref())?;
    // A trade file has no quotes: the hub derives them from trades (see HubOptions), so that
    // marks, signals and the paper venue work.
    let hub = settings
        .entry("marketdata".into())
        .or_insert_with(|| json!({}));
    if let Some(h) = hub.as_object_mut() {
        h.entry("quotes_from_trades").or_insert(json!(true));
    }
    let warm_up_need = WarmUpNeed::from_settings(&settings);
    let mut cfg = global.config()?;
    cfg.transport = TransportKind::Memory;
    // Nothing that follows the wall clock changes the run: an idle reader parks at once (no
    // spin), and with an idle timeout of a day the redelivery sweep (each reader wakes at least
    // once a second for it) never finds anything due.
    cfg.memory.spin_us = Some(0);
    cfg.delivery.idle_timeout_ms = 24 * 3_600_000;
    // Critical messages too are handled on this one thread, in the same order every time.
    cfg.delivery.priority_thread = false;
    // One thread: the same input, the same order of handling.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tape: Arc<Mutex<PriceTape>> = Default::default();
        let provider: Arc<dyn Provider> = Arc::new(TapedProvider {
            inner: src.provider.clone(),
            tape: tape.clone(),
        });
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
        let ledger: Arc<Mutex<Ledger>> = Default::default();
        let led = ledger.clone();
        let ledger_observer = root
            .subscribe(
                SubscribeOptions::new("dualbus-backtest-ledger", &LEDGER)?
                    .mode(Mode::Reliable)
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    led.lock().on(m.kind.as_str(), &m.enc.decode::<Value>(&m.payload).ok());
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
        let mut progress = Progress::new(
            "backtest",
            src.span_ns.map(|n| n.div_ceil(1_000_000_000)),
            "market s",
        );
        while !hub.is_feed_done() {
            let before = gate.passed();
            gate.open_one();
            while gate.passed() == before && !hub.is_feed_done() {
                tokio::task::yield_now().await;
            }
            settle(&root, &streams).await;
            progress.update(|| {
                let t = tape.lock();
                let done = t.last_ts.zip(t.first_ts).map_or(0, |(l, f)| l - f);
                // To the second: 2026-01-05T00:54:09Z.
                let at = t.last_ts.map(iso8601).unwrap_or_default();
                let at = at.get(..19).map(|a| format!("{a}Z")).unwrap_or(at);
                (
                    done / 1_000_000_000,
                    format!("{at}, {} fills", observed.lock().fills),
                )
            });
        }
        progress.finish();
        let hub_stats = hub.stats();
        // Stopping flushes open bars: each engine's last output reaches the next ones before
        // they stop in turn.
        let counts = sys.stop_settled(|| settle(&root, &streams)).await;
        observer.stop().await;
        ledger_observer.stop().await;
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
        let tape = tape.lock();
        let ledger = ledger.lock();
        let mut data = src.data.clone();
        data["symbols"] = json!(provider
            .instruments()
            .iter()
            .map(|i| i.symbol.clone())
            .collect::<Vec<_>>());
        data["from"] = json!(tape.first_ts.map(iso8601));
        data["to"] = json!(tape.last_ts.map(iso8601));
        data["covers_s"] = json!(tape.covers_s());
        let has_trades = tape.symbols.values().any(|p| !p.trades.is_empty());
        let warm_up = warm_up_need.judge(&ledger.bars, tape.covers_s(), has_trades);
        let trades: Vec<TradeLogEntry> = ledger.changes.iter().map(TradeLogEntry::from).collect();
        let mut round_trips = RoundTripTracker::default();
        for c in &ledger.changes {
            round_trips.on_change(c);
        }
        let traded: Vec<String> = {
            let mut t: Vec<String> = ledger.changes.iter().map(|c| c.symbol.clone()).collect();
            t.sort();
            t.dedup();
            t
        };
        let benchmark = buy_and_hold(&tape.first_last(), &traded);
        let gross: Vec<(u64, f64)> = ledger.equity.iter().map(|p| (p.0, p.2)).collect();
        let exposure = exposure(&gross, tape.last_ts.unwrap_or(0));
        let report = json!({
            "data": data,
            "warm_up": warm_up,
            "pnl": {
                "initial_equity": performance["equity"].as_f64().map(|e| e - performance["pnl"].as_f64().unwrap_or(0.0)),
                "final_equity": portfolio["equity"],
                "realized": portfolio["realized_pnl"],
                "unrealized": portfolio["unrealized_pnl"],
                "fees": portfolio["fees"],
                "return_pct": performance["return_pct"],
            },
            "benchmark": {"buy_and_hold": benchmark},
            "sharpe": {
                "annualized": performance["sharpe"],
                "per_period": performance["sharpe_per_period"],
            },
            "drawdown": {
                "max_pct": performance["max_drawdown"].as_f64().map(|x| x * 100.0),
                "longest_under_water_s": performance["max_drawdown_duration_s"],
            },
            "exposure": exposure,
            "round_trips": round_trips.summary(),
            "trades": trades,
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
                    "market_data": bus_json(&totals[0], elapsed, &root.counters(BusId::MarketData)),
                    "engine_logic": bus_json(&totals[1], elapsed, &root.counters(BusId::Logic)),
                },
                "analytics_traffic": traffic,
            },
        });
        drop(o);
        if let Some(path) = &args.html {
            let html = html::page(&report, &ledger, &tape)?;
            std::fs::write(path, html)
                .with_context(|| format!("writing the HTML report {}", path.display()))?;
        }
        drop((tape, ledger));
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
        if let (Some(path), false) = (&args.html, args.json) {
            println!("HTML report written to {}", path.display());
        }
        Ok(())
    })
}

/// What the backtest's own ledger reads: the fills' effects, the equity curve, the bars.
const LEDGER: [&str; 3] = [
    "position_change.>",
    "portfolio_update.>",
    "feature_vector.>",
];

/// What the strategy needs before it can trade: bars of `bar_secs` per symbol until the ML
/// model has every feature it uses (its first prediction).
struct WarmUpNeed {
    bars: u32,
    bar_secs: u32,
    /// The feature that takes longest.
    feature: String,
}

impl WarmUpNeed {
    fn from_settings(settings: &BTreeMap<String, Value>) -> WarmUpNeed {
        let bar_secs = settings
            .get("features")
            .and_then(|f| f.get("bar_secs"))
            .and_then(Value::as_u64)
            .unwrap_or(60) as u32;
        let features: Vec<String> = settings
            .get("ml")
            .and_then(|m| m.get("features"))
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_else(|| DEFAULT_FEATURES.iter().map(|f| f.to_string()).collect());
        let (feature, bars) = features
            .iter()
            .filter_map(|f| Some((f.clone(), first_bar(f)?)))
            .max_by_key(|(_, b)| *b)
            .unwrap_or_default();
        WarmUpNeed {
            bars,
            bar_secs,
            feature,
        }
    }

    /// The report's `warm_up` section: the bars each symbol had, and in plain words whether
    /// the data was long enough for any symbol to trade.
    fn judge(&self, bars: &BTreeMap<String, u64>, covers_s: f64, has_trades: bool) -> Value {
        let most = bars.values().copied().max().unwrap_or(0);
        let enough = most >= u64::from(self.bars);
        let note = match (enough, has_trades || most > 0) {
            (true, _) => None,
            // Longer data would not help: bars come from trades (or a provider's bars).
            (false, false) => Some(format!(
                "the data covers {} of quotes without trades: the Features engine builds its \
                 bars from trades (or a provider's bars), so no symbol got a bar and the \
                 strategy, which needs {} bars of {} s of a symbol, could not trade; give a \
                 trade file, or --provider synthetic",
                span(covers_s),
                self.bars,
                self.bar_secs
            )),
            (false, true) => Some(format!(
                "the data covers {} ({most} bar{} of {} s at most per symbol): the strategy \
                 needs {} bars of {} s of a symbol before it trades (its ML model's first \
                 prediction waits for {}), so nothing could trade; give longer data, e.g. \
                 --provider synthetic --duration 1d",
                span(covers_s),
                if most == 1 { "" } else { "s" },
                self.bar_secs,
                self.bars,
                self.bar_secs,
                self.feature
            )),
        };
        json!({
            "bars_needed": self.bars,
            "bar_secs": self.bar_secs,
            "waits_for": self.feature,
            "bars": bars,
            "enough": enough,
            "note": note,
        })
    }
}

/// Every stream of both buses: each known kind's and the priority lane.
fn streams(root: &DualBus) -> Vec<(BusId, StreamKey)> {
    let router = root.router();
    let mut out = Vec::new();
    for bus in [BusId::MarketData, BusId::Logic] {
        for kind in EventKind::KNOWN.iter() {
            out.extend(router.kind_streams(bus, kind).into_iter().map(|s| (bus, s)));
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

/// How many fills of the trade log the summary prints.
const SUMMARY_TRADES: usize = 10;

fn print_summary(r: &Value) {
    let p = &r["performance"];
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    let d = &r["data"];
    let what = match d["file"].as_str() {
        Some(file) => format!("{file} ({})", d["format"].as_str().unwrap_or("?")),
        None => format!(
            "the synthetic market (seed {}, {} of data)",
            d["seed"],
            span(d["duration_s"].as_f64().unwrap_or(0.0))
        ),
    };
    println!(
        "backtest of {what}, {}: {} to {} ({}): {} events in {:.2} s",
        d["symbols"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        d["from"].as_str().unwrap_or("-"),
        d["to"].as_str().unwrap_or("-"),
        span(d["covers_s"].as_f64().unwrap_or(0.0)),
        r["hub"]["published"],
        r["wall_clock"]["elapsed_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(note) = r["warm_up"]["note"].as_str() {
        println!("  NO TRADES POSSIBLE: {note}");
    }
    println!(
        "  P&L {} ({}%)  equity {} -> {}; realized {}, unrealized {}, fees {}",
        f(&p["pnl"]),
        f(&p["return_pct"]),
        f(&r["pnl"]["initial_equity"]),
        f(&r["pnl"]["final_equity"]),
        f(&r["pnl"]["realized"]),
        f(&r["pnl"]["unrealized"]),
        f(&r["pnl"]["fees"])
    );
    let bh = &r["benchmark"]["buy_and_hold"];
    println!(
        "  buy and hold {}% over the same data ({}, equal weight, first to last price)",
        f(&bh["return_pct"]),
        bh["symbols"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let per = &r["sharpe"]["per_period"];
    let sharpe =
        match (r["sharpe"]["annualized"].as_f64(), per["value"].as_f64()) {
            (Some(a), _) => format!(
                "Sharpe {a:.2} (annualized from {} daily returns{})",
                per["returns"],
                few_returns(per)
            ),
            (None, Some(v)) => {
                format!(
            "Sharpe per {} period {v:.4} (from {} one-minute returns; under two days of data, \
             not annualized)",
            if per["period"] == "1m" { "1-minute" } else { "1-day" },
            per["returns"]
        )
            }
            (None, None) => "Sharpe - (fewer than 2 returns, or no variation)".to_string(),
        };
    println!(
        "  {sharpe}  max drawdown {}%  longest under water {}",
        r["drawdown"]["max_pct"]
            .as_f64()
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "-".into()),
        span(
            r["drawdown"]["longest_under_water_s"]
                .as_f64()
                .unwrap_or(0.0)
        )
    );
    let e = &r["exposure"];
    println!(
        "  exposure (gross notional): average {}, max {}, in the market {}% of the time",
        f(&e["avg_gross"]),
        f(&e["max_gross"]),
        e["time_in_market_pct"]
            .as_f64()
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "-".into())
    );
    let rt = &r["round_trips"];
    println!(
        "  round trips (flat to flat, after fees): {} closed, {} won, {} lost (win rate {}), \
         average win {}, average loss {}; {} still open",
        rt["closed"],
        rt["wins"],
        rt["losses"],
        rt["win_rate"]
            .as_f64()
            .map(|x| format!("{:.1}%", x * 100.0))
            .unwrap_or_else(|| "-".into()),
        f(&rt["avg_win"]),
        f(&rt["avg_loss"]),
        rt["open"]
    );
    println!(
        "  turnover {}  hit rate of closing fills {} before fees, {} after",
        f(&p["turnover"]),
        f(&p["hit_rate"]),
        f(&p["hit_rate_after_fees"])
    );
    println!(
        "  fills {}  rejected orders {}",
        r["fills"], r["rejected_orders"]
    );
    if let Some(trades) = r["trades"].as_array().filter(|t| !t.is_empty()) {
        println!(
            "  trade log (first {} of {}; the JSON and HTML reports hold every fill):",
            trades.len().min(SUMMARY_TRADES),
            trades.len()
        );
        for t in trades.iter().take(SUMMARY_TRADES) {
            println!(
                "    {} {:<9} {:<4} {:>14} @ {:>12}  fee {:>8}  realized {:>10}",
                t["time"].as_str().unwrap_or("?"),
                t["symbol"].as_str().unwrap_or("?"),
                t["side"].as_str().unwrap_or("?"),
                t["qty"]
                    .as_f64()
                    .map(|q| format!("{q:.6}"))
                    .unwrap_or_default(),
                t["price"]
                    .as_f64()
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_default(),
                f(&t["fee"]),
                f(&t["realized_pnl"])
            );
        }
    }
    super::summary::print_alerts(&r["alerts"]);
    if let Some(buses) = r["messages"].as_object() {
        println!("  messages published, by bus and kind:");
        for (bus, kinds) in buses {
            let list: Vec<String> = kinds
                .as_object()
                .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
                .unwrap_or_default();
            println!("    {bus:<13} {}", list.join(", "));
        }
    }
    println!(
        "  latency (machine-dependent): MarketData p99 {}, Engine Logic p99 {}",
        ms(r["wall_clock"]["buses"]["market_data"]["latency_p99_us"].as_u64()),
        ms(r["wall_clock"]["buses"]["engine_logic"]["latency_p99_us"].as_u64())
    );
}
