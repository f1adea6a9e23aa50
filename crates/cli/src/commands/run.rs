//! `dualbus run`: the whole system in one process, and `dualbus engine NAME`: one engine in
//! its own process (over Redis, so engines can be spread over processes and hosts).

use super::provider::ProviderArgs;
use super::summary::{ms, ms_f, print_alerts};
use super::{parse_duration, parse_settings, runtime, Global, MetricsArgs};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dualbus_bus::{handler_fn, BusId, DualBus, SubscribeOptions, TransportKind};
use dualbus_core::{Mode, StartFrom};
use dualbus_engines::engine::EngineThread;
use dualbus_engines::metrics::{BusFigures, BusMetrics, Window};
use dualbus_engines::report::{bus_json, Observed, OBSERVED};
use dualbus_engines::system::{self, EngineSetup, System, SystemOptions, AVAILABLE, ENGINES};
use dualbus_engines::telemetry::{self, GroupRow};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which transport the buses use.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In-process buses: nothing else to install (also spelt `memory`).
    #[value(alias = "memory")]
    Embedded,
    /// The two Redis servers of the config (start local ones with `dualbus redis up`).
    Redis,
}

impl Backend {
    fn transport(self) -> TransportKind {
        match self {
            Backend::Embedded => TransportKind::Memory,
            Backend::Redis => TransportKind::Redis,
        }
    }

    /// The name printed for people.
    fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }

    /// One rule for every verb: `--backend`, else the config's `transport` (the file or
    /// `DUALBUS_TRANSPORT`), else the verb's default.
    fn resolve(
        flag: Option<Backend>,
        global: &Global,
        default: Backend,
    ) -> anyhow::Result<Backend> {
        if let Some(b) = flag {
            return Ok(b);
        }
        let cfg = global.config()?;
        Ok(if !cfg.transport_is_set() {
            default
        } else if cfg.transport == TransportKind::Redis {
            Backend::Redis
        } else {
            Backend::Embedded
        })
    }
}

/// Arguments of `dualbus run`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Runs the trading system: the MarketData hub and the engines, on the two buses. With no
arguments: every engine in this process on the embedded buses, the synthetic market (13
symbols) played at 60x real time, so one second shows one minute of market: bars, features,
predictions, factor scores, VPIN. A status line every second shows per bus the messages per
second and the p99 delivery latency, fills, equity and the alerts so far; Ctrl-C (or SIGTERM)
stops every engine gracefully and prints a summary.

The dashboard (WebSocket engine) serves http://127.0.0.1:8600/ (--port to change): prices,
P&L, alerts, signals and bus traffic, live.

Examples:
  dualbus run
  dualbus run --duration 60s --report run.json
  dualbus run --flash-crash 30m --duration 45s
  dualbus redis up && dualbus run --backend redis --duration 60s
  dualbus run --engines marketdata,features,ml --speed 600x")]
pub struct RunArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// The buses: embedded (in-process) or redis (the config's two servers). Default: the
    /// config's `transport` (dualbus.toml or DUALBUS_TRANSPORT), else embedded.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Only these engines (comma-separated; default: every engine of this build).
    #[arg(long, value_delimiter = ',')]
    pub engines: Vec<String>,
    /// On Redis: drop the engines' consumer groups left by an earlier run first, so nothing
    /// published before this run is handled (their pending and unread messages are given up).
    /// Without it an engine resumes where its group stopped.
    #[arg(long)]
    pub fresh: bool,
    /// Stop after this long (wall clock), e.g. `60s`, `5m`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Write the JSON report here when the run stops.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Per-engine settings as JSON: `{"risk": {"max_drawdown": 0.05}}` (each key over that
    /// engine's defaults).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Port of the dashboard (the WebSocket engine's HTTP server; 0: any free port). Ignored
    /// when --settings configures `websocket`.
    #[arg(long, default_value_t = 8600)]
    pub port: u16,
    /// Address the dashboard listens on: 127.0.0.1 (the default) serves this machine only;
    /// 0.0.0.0 every network it is on, which should come with a token
    /// (DUALBUS_DASHBOARD_TOKEN, see docs/security.md). Ignored when --settings configures
    /// `websocket`.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// No status line.
    #[arg(long)]
    pub quiet: bool,
    /// Runtime worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The first stretch of the run (start-up, the hub's warm-up bars) whose latency is
    /// reported apart from the steady state, e.g. `5s`, `0s`.
    #[arg(long, default_value = "5s")]
    pub warmup: String,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The engine whose messages waited longest for it (queue wait plus handler time, p99) in a
/// status-line window, for the status line: `risk 0.12+0.03 ms`.
fn slowest_engine(w: &Window) -> String {
    let mut worst: Option<(f64, String)> = None;
    for (engine, f) in &w.engines {
        let (Some(q), Some(h)) = (f.queue_p99_us, f.handler_p99_us) else {
            continue;
        };
        if worst.as_ref().is_none_or(|(t, _)| q + h > *t) {
            worst = Some((
                q + h,
                format!("{engine} {:.2}+{:.2} ms", q / 1000.0, h / 1000.0),
            ));
        }
    }
    worst.map_or_else(|| "-".into(), |(_, s)| s)
}

/// The buses for `backend`, with a clear message when Redis is not there.
/// On Redis, connects as Redis user `user` (see [`Global::authenticate`]).
async fn connect(
    global: &Global,
    backend: Backend,
    src: &str,
    user: &str,
) -> anyhow::Result<DualBus> {
    let mut cfg = global.config()?;
    cfg.transport = backend.transport();
    if backend == Backend::Redis {
        global.authenticate(&mut cfg, user)?;
    }
    // The engines share the cores, each on a thread of its own: an idle reader parks at once
    // rather than spin on a core another engine needs (unless the config sets a spin).
    cfg.memory.spin_us.get_or_insert(0);
    match backend {
        Backend::Redis => super::connect_buses(src, cfg).await,
        Backend::Embedded => DualBus::connect(src, cfg)
            .await
            .context("starting the embedded buses"),
    }
}

/// The start policy on Redis, said at start (unless `quiet`): a consumer group that exists
/// resumes where it stopped; a new one starts at `delivery.start`. Groups of `groups` that an earlier run left
/// with pending or unread messages are named, with what they hold; with `fresh` they are
/// dropped first (XGROUP DESTROY, with their bounds, trimmed-unread counts and leases), so the
/// engines start at `delivery.start` with nothing old.
async fn earlier_groups(
    bus: &DualBus,
    global: &Global,
    groups: &[String],
    fresh: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let rows: Vec<GroupRow> = telemetry::bus_group_rows(bus)
        .await
        .into_iter()
        .filter(|r| groups.contains(&r.backlog.group))
        .collect();
    let start = match bus.config().start() {
        dualbus_core::StartFrom::Newest => "newest message".to_string(),
        dualbus_core::StartFrom::Oldest => "oldest message".to_string(),
        dualbus_core::StartFrom::Time(_) => {
            format!("first message from {}", bus.config().delivery.start)
        }
    };
    if fresh {
        // Dropping groups is the operator's right: an engine's own Redis user may not.
        let cfg = global.redis_config()?;
        let mut dropped = 0;
        for b in [BusId::MarketData, BusId::Logic] {
            let url = &cfg.bus(b).url;
            let shown = dualbus_core::redact_url(url);
            let client = super::redis_client(&cfg, url)
                .with_context(|| format!("--fresh: bad bus address {shown}"))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("--fresh: cannot reach {shown}"))?;
            for r in rows.iter().filter(|r| r.bus == b) {
                dualbus_redis::drop_group(&mut conn, &r.stream, &r.backlog.group)
                    .await
                    .with_context(|| {
                        format!(
                            "--fresh: dropping group {} of {}",
                            r.backlog.group, r.stream
                        )
                    })?;
                dropped += 1;
            }
        }
        if !quiet {
            eprintln!(
                "--fresh: dropped {dropped} consumer group{} of an earlier run; every group starts at the {start}",
                if dropped == 1 { "" } else { "s" }
            );
        }
        return Ok(());
    }
    let held: Vec<&GroupRow> = rows
        .iter()
        .filter(|r| r.backlog.pending > 0 || r.backlog.lag.unwrap_or(0) > 0)
        .collect();
    if !quiet {
        eprintln!(
            "consumer groups: one that exists resumes where it stopped (at least once: nothing skipped); a new one starts at the {start} (delivery.start)"
        );
    }
    // Said even when quiet: old messages are about to be handled as if they were new.
    if held.is_empty() {
        return Ok(());
    }
    let (pending, unread) = held.iter().fold((0, 0), |(p, u), r| {
        (p + r.backlog.pending, u + r.backlog.lag.unwrap_or(0))
    });
    eprintln!(
        "note: {} group{} left by an earlier run hold {pending} pending and {unread} unread messages, handled first:",
        held.len(),
        if held.len() == 1 { "" } else { "s" }
    );
    for r in held.iter().take(8) {
        eprintln!(
            "  {:<14} {:<40} pending {:>7}  unread {:>7}",
            r.backlog.group,
            r.stream,
            r.backlog.pending,
            r.backlog.lag.map_or("?".into(), |l| l.to_string())
        );
    }
    if held.len() > 8 {
        eprintln!(
            "  ... and {} more (dualbus stats lists them)",
            held.len() - 8
        );
    }
    eprintln!("  --fresh drops these groups first and starts without them");
    Ok(())
}

/// Runs `dualbus run`.
pub fn run(args: RunArgs, global: &Global) -> anyhow::Result<()> {
    let backend = Backend::resolve(args.backend, global, Backend::Embedded)?;
    let duration = args
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--duration")?;
    let warmup = parse_duration(&args.warmup).context("--warmup")?;
    let mut settings = parse_settings(args.settings.as_deref())?;
    let engines: Vec<String> = if args.engines.is_empty() {
        AVAILABLE.iter().map(|s| s.to_string()).collect()
    } else {
        args.engines.clone()
    };
    let dashboard = engines.iter().any(|e| e == "websocket") && !settings.contains_key("websocket");
    if dashboard && args.port != 0 {
        // The engine would name its setting; here the port came from --port.
        let bind = std::net::SocketAddr::new(args.bind, args.port);
        if let Err(e) = std::net::TcpListener::bind(bind) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                bail!(
                    "the dashboard's address {bind} is in use: pick another with --port (or \
                     websocket.bind in --settings)"
                );
            }
            bail!("cannot listen on the dashboard's address {bind}: {e}; pick another with --port");
        }
    }
    if dashboard {
        settings.insert(
            "websocket".into(),
            json!({ "bind": std::net::SocketAddr::new(args.bind, args.port).to_string() }),
        );
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let rt = runtime(threads)?;
    rt.block_on(async move {
        let provider = args.provider.build()?;
        let root = connect(global, backend, "dualbus-run", super::acl::SYSTEM).await?;
        if backend == Backend::Redis {
            let mut groups = engines.clone();
            groups.push("dualbus-run".into());
            earlier_groups(&root, global, &groups, args.fresh, args.quiet).await?;
        }
        let metrics = Arc::new(BusMetrics::new(warmup));
        let observed: Arc<Mutex<Observed>> = Default::default();
        let obs = observed.clone();
        let observer = root
            .subscribe(
                SubscribeOptions::new("dualbus-run", &OBSERVED)?
                    .mode(Mode::Reliable)
                    .start(StartFrom::Newest),
                handler_fn(move |m| {
                    if let Ok(v) = m.enc.decode::<Value>(&m.payload) {
                        obs.lock().on(m.kind.as_str(), &v);
                    }
                    Ok(())
                }),
            )
            .await?;
        let sys = System::start(
            &root,
            SystemOptions {
                engines: engines.clone(),
                provider: provider.clone(),
                config: settings,
                metrics: Some(metrics.clone()),
                health_every: Duration::from_secs(1),
                gate: None,
                thread: EngineThread::Own,
            },
        )
        .await?;
        let started = Instant::now();
        if !args.quiet {
            eprintln!(
                "dualbus run: {} engine{} on the {} buses, {} provider ({} symbols); {}",
                engines.len(),
                if engines.len() == 1 { "" } else { "s" },
                backend.name(),
                provider.name(),
                provider.instruments().len(),
                match duration {
                    Some(d) => format!("stops after {d:?}, Ctrl-C or SIGTERM stops earlier"),
                    None => "Ctrl-C or SIGTERM stops".into(),
                }
            );
        }
        if dashboard && args.port != 0 && !args.quiet {
            let at = std::net::SocketAddr::new(args.bind, args.port);
            let token = std::env::var(dualbus_engines::websocket::TOKEN_ENV)
                .is_ok_and(|t| !t.is_empty());
            if token {
                eprintln!(
                    "dashboard: http://{at}/?token=... (the token of {})",
                    dualbus_engines::websocket::TOKEN_ENV
                );
            } else {
                eprintln!("dashboard: http://{at}/");
            }
            eprintln!("metrics:   http://{at}/metrics (also /healthz, /readyz)");
        }
        let metrics_server = args.metrics.serve(&metrics, args.quiet).await?;
        let tty = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = metrics.take_lane_window();
        let mut stop = super::stop::StopSignal::new()?;
        let why = loop {
            tokio::select! {
                why = stop.recv() => break why,
                _ = async {
                    match sys.hub() {
                        Some(h) => h.feed_done().await,
                        None => std::future::pending().await,
                    }
                } => break "end of data",
                _ = async {
                    match duration {
                        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(started + d)).await,
                        None => std::future::pending().await,
                    }
                } => break "duration reached",
                _ = tick.tick() => {
                    let now = metrics.take_lane_window();
                    let slowest = slowest_engine(&now);
                    if !args.quiet {
                        let o = observed.lock();
                        let line = format!(
                            "{:>5.0}s{} | MarketData {:>7} msg/s p99 {:>9} | Engine Logic {:>6} msg/s p99 {:>9} | priority p99 {:>9} | slowest {} | fills {:>4} | equity {} | alerts: toxicity {}, flash crash {}, risk {}{}",
                            started.elapsed().as_secs_f64(),
                            if started.elapsed() < metrics.warmup() { " warm-up" } else { "" },
                            now.buses[0].delivered - last.buses[0].delivered,
                            ms_f(now.lanes[0].p99_us),
                            now.buses[1].delivered - last.buses[1].delivered,
                            ms_f(now.lanes[1].p99_us),
                            ms_f(now.lanes[2].p99_us),
                            slowest,
                            o.fills,
                            o.equity.map(|e| format!("{e:.2}")).unwrap_or_else(|| "-".into()),
                            o.toxicity,
                            o.flash.values().sum::<u64>(),
                            o.risk.values().sum::<u64>(),
                            if o.breaker { ", CIRCUIT BREAKER" } else { "" },
                        );
                        if tty {
                            eprint!("\r{line}\x1b[K");
                            let _ = std::io::stderr().flush();
                        } else {
                            eprintln!("{line}");
                        }
                    }
                    last = now;
                }
            }
        };
        if tty && !args.quiet {
            eprintln!();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let hub_stats = sys.hub().map(|h| h.stats());
        let counts = sys.stop().await;
        if let Some(s) = metrics_server {
            s.stop().await;
        }
        // Let the observer take what the engines published while stopping.
        tokio::time::sleep(Duration::from_millis(200)).await;
        observer.stop().await;
        let totals = metrics.totals();
        let o = observed.lock();
        let report = json!({
            "stopped": why,
            "backend": backend.name(),
            "provider": provider.name(),
            "duration_s": elapsed,
            "engines": counts,
            "hub": hub_stats,
            "buses": {
                "market_data": bus_json(&totals[0], elapsed, &root.counters(BusId::MarketData)),
                "engine_logic": bus_json(&totals[1], elapsed, &root.counters(BusId::Logic)),
            },
            "fills": o.fills,
            "rejected_orders": o.rejected_orders,
            "alerts": o.alerts_json(),
            "portfolio": o.portfolio,
            "performance": o.analytics,
            "latency": metrics.report(),
        });
        print_summary(&report, &totals);
        if let Some(path) = &args.report {
            std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing the report {}", path.display()))?;
            println!("report written to {}", path.display());
        }
        Ok(())
    })
}

fn print_summary(r: &Value, totals: &[BusFigures; 2]) {
    println!(
        "dualbus run stopped ({}) after {:.1} s",
        r["stopped"].as_str().unwrap_or("?"),
        r["duration_s"].as_f64().unwrap_or(0.0)
    );
    for (name, f) in ["MarketData", "Engine Logic"].iter().zip(totals) {
        println!(
            "  {name:<13} published {:>10}  delivered {:>10}  latency p50 {}  p99 {}  max {}",
            f.published,
            f.delivered,
            ms(f.latency_p50_us),
            ms(f.latency_p99_us),
            ms(f.latency_max_us)
        );
    }
    println!("  {:<16} {:>12} {:>12}", "engine", "received", "published");
    if let Some(engines) = r["engines"].as_object() {
        for name in ENGINES {
            if let Some(c) = engines.get(name) {
                let sum = |k: &str| {
                    c[k].as_object()
                        .map(|m| m.values().filter_map(|v| v.as_u64()).sum::<u64>())
                        .unwrap_or(0)
                };
                println!(
                    "  {name:<16} {:>12} {:>12}",
                    sum("received"),
                    sum("published")
                );
            }
        }
    }
    print_trading(r);
}

/// The trader's part of the summary: equity and P&L from the last portfolio update, fills, and
/// the alerts as a table (kind, rule, count).
fn print_trading(r: &Value) {
    let p = &r["portfolio"];
    match p["equity"].as_f64() {
        Some(equity) => {
            let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
            let pnl = f("realized_pnl") + f("unrealized_pnl") - f("fees");
            let start = equity - pnl;
            let pct = if start > 0.0 {
                100.0 * pnl / start
            } else {
                0.0
            };
            println!(
                "  equity {equity:.2}  P&L {pnl:+.2} ({pct:+.2}%): realized {:+.2}, unrealized {:+.2}, fees {:.2}; drawdown {:.2}%",
                f("realized_pnl"),
                f("unrealized_pnl"),
                f("fees"),
                100.0 * f("drawdown"),
            );
        }
        None => println!("  equity -  (no portfolio update was seen)"),
    }
    println!(
        "  fills {}  rejected orders {}",
        r["fills"], r["rejected_orders"]
    );
    print_alerts(&r["alerts"]);
}

/// Arguments of `dualbus engine NAME`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Runs one engine in this process, so the system can be spread over processes and hosts: start
the Redis buses (`dualbus redis up`, or point --md-url/--logic-url at servers elsewhere), then
one `dualbus engine NAME` per engine. `marketdata` takes the provider flags of `dualbus hub`.

Examples:
  dualbus engine marketdata --flash-crash 30m
  dualbus engine features
  dualbus engine vpin --settings '{\"window\": 30, \"bucket_volume\": 50000, \"volume_unit\": \"quote\"}'")]
pub struct EngineArgs {
    /// The engine: marketdata, features, factor, ml, vpin, enhanced_vpin, strategy, risk,
    /// portfolio, collateral, analytics, websocket, backtesting.
    pub name: String,
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// The buses. Default: the config's `transport` (dualbus.toml or DUALBUS_TRANSPORT),
    /// else redis (an engine alone on embedded buses has nobody to talk to).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Instance id (default NAME-PID): instances of one engine share its consumer group.
    #[arg(long)]
    pub instance: Option<String>,
    /// Drop this engine's consumer groups left by an earlier run first, so nothing published
    /// before it started is handled (their pending and unread messages are given up; do not use
    /// it while another instance of the engine runs). Without it the engine resumes where its
    /// group stopped.
    #[arg(long)]
    pub fresh: bool,
    /// The engine's settings as JSON (each key over those of `dualbus run`).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Stop after this long (wall clock).
    #[arg(long)]
    pub duration: Option<String>,
    /// Print the final counts as JSON.
    #[arg(long)]
    pub json: bool,
    /// Take only partitions K, K+N, K+2N, ... (counting from 1) of the MarketData bus's
    /// `[md] partitions`: N instances started with 1/N .. N/N share the symbols, each symbol
    /// handled by one of them and in order. Per-symbol engines only (features, vpin).
    /// (`--symbols A,B` instead: take only the partitions of these symbols; other symbols that
    /// share those partitions come too, and the command lists the partitions it reads.)
    #[arg(long, value_name = "K/N")]
    pub partition: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The MarketData partitions `--partition K/N` or `--symbols` select, among `partitions`.
pub fn selected_partitions(
    name: &str,
    partition: Option<&str>,
    symbols: Option<&[String]>,
    partitions: u32,
) -> anyhow::Result<Option<Vec<u32>>> {
    use dualbus_core::partition::{partition_of, partitions_of_instance};
    if partition.is_none() && symbols.is_none() {
        return Ok(None);
    }
    if !system::PER_SYMBOL.contains(&name) {
        bail!(
            "engine {name} reads every symbol, so it cannot take a share of them; --partition \
             and --symbols apply to {}",
            system::PER_SYMBOL.join(", ")
        );
    }
    if partitions < 2 {
        bail!(
            "the MarketData bus is not partitioned ([md] partitions = {partitions}): set \
             [md] partitions in dualbus.toml (or DUALBUS_MD_PARTITIONS) to 2 or more, the same \
             for every process, before sharing symbols between instances"
        );
    }
    if let Some(spec) = partition {
        let parsed = spec.split_once('/').and_then(|(k, n)| {
            Some((k.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?))
        });
        let Some((k, n)) = parsed.filter(|(k, n)| *n >= 1 && (1..=*n).contains(k)) else {
            bail!("--partition {spec:?}: expected K/N with 1 <= K <= N, as in 2/4");
        };
        if n > partitions {
            bail!(
                "--partition {spec}: {n} instances for {partitions} partitions would leave \
                 some instances nothing; use at most {partitions} instances or raise [md] partitions"
            );
        }
        return Ok(Some(partitions_of_instance(k, n, partitions)));
    }
    let symbols = symbols.unwrap_or_default();
    if let Some(bad) = symbols.iter().find(|s| s.trim().is_empty()) {
        bail!("--symbols: empty symbol in {bad:?}");
    }
    let mut parts: Vec<u32> = symbols
        .iter()
        .map(|s| partition_of(s.trim(), partitions))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    Ok(Some(parts))
}

/// Runs `dualbus engine NAME`.
pub fn run_engine(args: EngineArgs, global: &Global) -> anyhow::Result<()> {
    let backend = Backend::resolve(args.backend, global, Backend::Redis)?;
    let name = args.name.clone();
    if !ENGINES.contains(&name.as_str()) {
        bail!(
            "unknown engine {name:?}; the engines are {}",
            ENGINES.join(", ")
        );
    }
    let duration = args
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--duration")?;
    let user: Option<Value> = match &args.settings {
        Some(s) => Some(serde_json::from_str(s).context("--settings must be JSON")?),
        None => None,
    };
    let config = system::merged_settings(&name, user.as_ref());
    let rt = runtime(2)?;
    rt.block_on(async move {
        let provider = if name == "marketdata" {
            Some(args.provider.build()?)
        } else {
            None
        };
        let inst = args
            .instance
            .clone()
            .unwrap_or_else(|| format!("{name}-{}", std::process::id()));
        let root = connect(global, backend, &name, &name).await?;
        if backend == Backend::Redis {
            earlier_groups(&root, global, std::slice::from_ref(&name), args.fresh, args.json)
                .await?;
        }
        let mut bus = root.sibling(&name, &inst)?;
        // `--symbols` names the hub's universe for marketdata, a share of it for the others.
        let symbols = (name != "marketdata" && !args.provider.symbols.is_empty())
            .then_some(args.provider.symbols.as_slice());
        if args.partition.is_some() && symbols.is_some() {
            bail!("give --partition or --symbols, not both");
        }
        let parts = selected_partitions(
            &name,
            args.partition.as_deref(),
            symbols,
            bus.config().md.partitions,
        )?;
        if let Some(parts) = &parts {
            bus = bus.reading_partitions(parts)?;
            if !args.json {
                eprintln!(
                    "{inst} reads MarketData partitions {parts:?} of {}",
                    bus.config().md.partitions
                );
            }
        }
        let metrics = Arc::new(BusMetrics::default());
        let (running, hub) = system::start_engine(
            &name,
            bus,
            EngineSetup {
                config,
                provider,
                metrics: Some(metrics.clone()),
                health_every: Duration::from_secs(1),
                gate: None,
                thread: EngineThread::Own,
            },
        )
        .await?;
        if !args.json {
            eprintln!("engine {name} ({inst}) running; Ctrl-C or SIGTERM stops");
        }
        let metrics_server = args.metrics.serve(&metrics, args.json).await?;
        let started = Instant::now();
        let mut stop = super::stop::StopSignal::new()?;
        let why = tokio::select! {
            why = stop.recv() => why,
            _ = async {
                match &hub {
                    Some(h) => h.feed_done().await,
                    None => std::future::pending().await,
                }
            } => "end of data",
            _ = async {
                match duration {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(started + d)).await,
                    None => std::future::pending().await,
                }
            } => "duration reached",
        };
        let counts = running.stop().await;
        if let Some(s) = metrics_server {
            s.stop().await;
        }
        if args.json {
            println!(
                "{}",
                json!({"engine": name, "instance": inst, "partitions": parts, "stopped": why, "received": counts.received, "published": counts.published})
            );
        } else {
            println!("engine {name} stopped ({why})");
            println!("  received  {:?}", counts.received);
            println!("  published {:?}", counts.published);
        }
        Ok(())
    })
}

#[cfg(test)]
mod partition_tests {
    use super::selected_partitions;

    #[test]
    fn partition_flags_select_partitions_or_say_what_is_wrong() {
        assert_eq!(
            selected_partitions("features", None, None, 8).unwrap(),
            None
        );
        assert_eq!(
            selected_partitions("features", Some("2/4"), None, 8).unwrap(),
            Some(vec![1, 5])
        );
        let btc = dualbus_core::partition::partition_of("BTCUSDT", 8);
        assert_eq!(
            selected_partitions("vpin", None, Some(&["BTCUSDT".into(), "BTCUSDT".into()]), 8)
                .unwrap(),
            Some(vec![btc])
        );
        let err = |r: anyhow::Result<Option<Vec<u32>>>| r.unwrap_err().to_string();
        assert!(err(selected_partitions("risk", Some("1/2"), None, 8))
            .contains("engine risk reads every symbol"));
        assert!(err(selected_partitions("features", Some("1/2"), None, 1))
            .contains("[md] partitions = 1"));
        for bad in ["0/2", "3/2", "x/2", "2", "1/0"] {
            assert!(
                err(selected_partitions("features", Some(bad), None, 8))
                    .contains(&format!("--partition {bad:?}: expected K/N")),
                "{bad}"
            );
        }
        assert!(err(selected_partitions("features", Some("1/9"), None, 8))
            .contains("9 instances for 8 partitions"));
    }
}
