//! `dualbus bench hub`: the MarketData hub under the load of a full system.
//!
//! The hub runs the synthetic provider, whose history call is slowed to `--history-latency-ms`
//! (50 ms, as a REST API would take). `--engines` client engines (12) run on the same buses,
//! each an [`Engine`] in the [`EngineHost`], each its own consumer group of all market data
//! (`market_data.>`), each asking the hub every `--snapshot-every-ms` (1 s) for the snapshots
//! of every symbol and, at its start and every `--history-every-s` (60 s), for the last 500
//! 1-minute bars of every symbol. Cache figures are the hub's own counters (measured, never
//! computed); distribution latency is from the envelope's `ts` (stamped when the hub publishes)
//! to the client's handler, for every delivery, in an HDR histogram.

use super::args::BenchArgs;
use super::report::{percentile_line, percentiles};
use super::rig::Rig;
use crate::commands::parse_duration;
use anyhow::{bail, Context};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{now_unix_nanos, Envelope, EventKind};
use dualbus_engines::engine::{
    Engine, EngineContext, EngineError, EngineHost, HostOptions, Interest, Timer,
};
use dualbus_engines::hub::{HubClient, HubOptions, MarketDataHub};
use dualbus_engines::provider::synthetic::{SyntheticOptions, SyntheticProvider};
use dualbus_engines::provider::{Provider, SlowHistory, Speed};
use dualbus_model::hub::{hub_request_kind, HistoryQuery};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every client engine records.
#[derive(Default)]
struct Measured {
    delivery_ns: Mutex<Option<Histogram<u64>>>,
    request_ns: Mutex<Option<Histogram<u64>>>,
    deliveries: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Measured {
    fn new() -> anyhow::Result<Measured> {
        Ok(Measured {
            delivery_ns: Mutex::new(Some(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)),
            request_ns: Mutex::new(Some(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)),
            ..Default::default()
        })
    }
}

/// A client engine: consumes all market data and asks the hub on timers.
struct Client {
    name: &'static str,
    hub: Option<HubClient>,
    symbols: Arc<Vec<String>>,
    snapshot_every: Duration,
    history_every: Duration,
    measured: Arc<Measured>,
    fast: bool,
}

impl Client {
    /// Asks for every symbol at once, one task per request, so slow history answers do not
    /// hold the engine.
    fn ask_all(&self, history: bool) {
        let Some(hub) = &self.hub else { return };
        for s in self.symbols.iter() {
            let hub = hub.clone();
            let symbol = s.clone();
            let m = self.measured.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let ok = if history {
                    let q = HistoryQuery {
                        bar_secs: 60,
                        limit: 500,
                        end_ts: None,
                    };
                    hub.history(&symbol, &q).await.map(|_| ())
                } else {
                    hub.snapshot(&symbol).await.map(|_| ())
                };
                match ok {
                    Ok(()) => {
                        m.answered.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = m.request_ns.lock().as_mut() {
                            let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
                        }
                    }
                    Err(e) => {
                        m.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(symbol = %symbol, error = %e, "hub request failed");
                    }
                }
            });
        }
    }
}

#[async_trait]
impl Engine for Client {
    fn name(&self) -> &'static str {
        self.name
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![hub_request_kind()]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        if self.fast {
            vec![Interest::fast(&["market_data.>"])]
        } else {
            vec![Interest::reliable(&["market_data.>"])]
        }
    }

    fn timers(&self) -> Vec<Timer> {
        vec![
            Timer {
                name: "snapshot",
                every: self.snapshot_every,
            },
            Timer {
                name: "history",
                every: self.history_every,
            },
        ]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        self.hub = Some(HubClient::new(
            ctx.bus().clone(),
            Some(Duration::from_secs(10)),
        ));
        self.ask_all(true);
        Ok(())
    }

    async fn on_message(
        &mut self,
        _ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let ns = now_unix_nanos().saturating_sub(msg.ts).max(1);
        self.measured.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.measured.delivery_ns.lock().as_mut() {
            let _ = h.record(ns);
        }
        Ok(())
    }

    async fn on_timer(
        &mut self,
        _ctx: &EngineContext,
        timer: &'static str,
    ) -> Result<(), EngineError> {
        self.ask_all(timer == "history");
        Ok(())
    }
}

/// Runs the hub scenario on the rig's buses.
pub(super) async fn hub_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    let duration = parse_duration(&args.duration).context("--duration")?;
    if args.engines == 0 {
        bail!("--engines must be at least 1");
    }
    let speed: Speed = args.speed.parse().map_err(anyhow::Error::msg)?;
    let synthetic = SyntheticProvider::new(SyntheticOptions {
        speed,
        ..Default::default()
    })?;
    let symbols: Arc<Vec<String>> = Arc::new(
        synthetic
            .instruments()
            .into_iter()
            .map(|i| i.symbol)
            .collect(),
    );
    let provider: Arc<dyn Provider> = Arc::new(SlowHistory::new(
        synthetic,
        Duration::from_millis(args.history_latency_ms),
    ));
    let hub = MarketDataHub::new(provider, HubOptions::default());
    let handle = hub.handle();
    let quiet = HostOptions {
        health_every: Duration::from_secs(5),
        ..Default::default()
    };
    let hub_run = EngineHost::start(
        hub,
        rig.client("marketdata", "marketdata-1")?,
        quiet.clone(),
    )
    .await?;
    // Clients start once the hub has data for every symbol (as engines joining a running
    // system would); the counters include everything from then on and from before.
    let warm = Instant::now();
    while symbols.iter().any(|s| handle.snapshot(s).is_none()) {
        if warm.elapsed() > Duration::from_secs(30) {
            bail!("the hub published no data for 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let measured = Arc::new(Measured::new()?);
    let mut clients = Vec::new();
    for i in 0..args.engines {
        // Engine names are 'static; a benchmark leaks these few short strings once.
        let name: &'static str = Box::leak(format!("bench_client_{:02}", i + 1).into_boxed_str());
        let engine = Client {
            name,
            hub: None,
            symbols: symbols.clone(),
            snapshot_every: Duration::from_millis(args.snapshot_every_ms.max(1)),
            history_every: Duration::from_secs(args.history_every_s.max(1)),
            measured: measured.clone(),
            fast: args.mode_name() == "fast",
        };
        let bus = rig.client(name, &format!("{name}-1"))?;
        clients.push(EngineHost::start(engine, bus, quiet.clone()).await?);
    }
    let published0 = handle.stats().published;
    let started = Instant::now();
    if !args.json {
        eprintln!(
            "hub bench: {} engines on the {} transport for {:.0} s; synthetic data at {}",
            args.engines,
            args.backend_name(),
            duration.as_secs_f64(),
            args.speed
        );
    }
    let mut next_report = Duration::from_secs(5);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !args.json && started.elapsed() >= next_report {
            next_report += Duration::from_secs(5);
            let s = handle.stats();
            eprintln!(
                "  {:>4.0} s  requests {:>7}  hit rate {:>5.1}%  upstream {:>4}  deliveries {:>9}",
                started.elapsed().as_secs_f64(),
                s.requests,
                s.hit_rate * 100.0,
                s.upstream_calls,
                measured.deliveries.load(Ordering::Relaxed)
            );
        }
    }
    let elapsed = started.elapsed();
    let published = handle.stats().published - published0;
    // The producer first: a client stopped first could leave the hub blocked at a full group.
    hub_run.stop().await;
    for c in clients {
        c.stop().await;
    }
    let s = handle.stats();
    let delivery = measured
        .delivery_ns
        .lock()
        .take()
        .unwrap_or_else(|| Histogram::new(3).expect("a histogram with 3 significant digits"));
    let requests = measured
        .request_ns
        .lock()
        .take()
        .unwrap_or_else(|| Histogram::new(3).expect("a histogram with 3 significant digits"));
    let rate = published as f64 / elapsed.as_secs_f64();
    let method = format!(
        "hub with the synthetic provider at {} (history calls slowed to {} ms) and {} client \
         engines on the {} transport for {:.1} s; each client: own consumer group ({} mode) of \
         market_data.>, snapshots of all {} symbols every {} ms, last 500 1-minute bars of each \
         at start and every {} s; cache figures are the hub's counters; latency from publish \
         stamp to client handler, every delivery",
        args.speed,
        args.history_latency_ms,
        args.engines,
        args.backend_name(),
        elapsed.as_secs_f64(),
        args.mode_name(),
        symbols.len(),
        args.snapshot_every_ms,
        args.history_every_s
    );
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": "hub",
                "backend": args.backend_name(),
                "requests": s.requests,
                "hits": s.hits,
                "misses": s.misses,
                "upstream_calls": s.upstream_calls,
                "coalesced": s.coalesced,
                "hit_rate": s.hit_rate,
                "upstream_ratio": s.upstream_ratio,
                "snapshot_requests": s.snapshot_requests,
                "history_requests": s.history_requests,
                "answered": measured.answered.load(Ordering::Relaxed),
                "failed": measured.failed.load(Ordering::Relaxed),
                "request_latency_ns": percentiles(&requests),
                "distribution": {
                    "engines": args.engines,
                    "published": published,
                    "rate_msgs_per_s": rate,
                    "deliveries": measured.deliveries.load(Ordering::Relaxed),
                    "latency_ns": percentiles(&delivery),
                },
                "method": method,
            })
        );
    } else {
        println!("{method}");
        println!(
            "requests        {:>9}  (snapshot {}, history {}; answered {}, failed {})",
            s.requests,
            s.snapshot_requests,
            s.history_requests,
            measured.answered.load(Ordering::Relaxed),
            measured.failed.load(Ordering::Relaxed)
        );
        println!(
            "hits / misses   {:>9}  / {}   hit rate {:.2}%",
            s.hits,
            s.misses,
            s.hit_rate * 100.0
        );
        println!(
            "upstream calls  {:>9}  = {:.3}% of requests   coalesced {}",
            s.upstream_calls,
            s.upstream_ratio * 100.0,
            s.coalesced
        );
        println!("request latency          {}", percentile_line(&requests));
        println!(
            "distribution    {:>9}  messages published ({:.0}/s) -> {} deliveries to {} groups",
            published,
            rate,
            measured.deliveries.load(Ordering::Relaxed),
            args.engines
        );
        println!("delivery latency         {}", percentile_line(&delivery));
    }
    Ok(())
}
