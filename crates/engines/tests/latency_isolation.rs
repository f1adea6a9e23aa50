//! The mechanisms behind "a market-data flood never delays a risk alert", checked by the order
//! of events (never by a time limit):
//!
//! * each engine runs on a thread of its own: an engine whose handler holds its thread (a
//!   CPU-heavy handler) does not hold another engine's priority-lane message;
//! * the priority lane has its own reader thread: inside one engine, a critical message waits
//!   for the market-data message in hand, not for the rest of the batch;
//! * every engine's heartbeat carries its handler time, queue wait and delivery latency.
//!
//! The test runtime has one thread: before engines had threads of their own, a blocking handler
//! there held every engine, and these tests failed.

mod support;

use async_trait::async_trait;
use dualbus_bus::{DualBus, HandlerError};
use dualbus_core::{Envelope, EventKind, Priority};
use dualbus_engines::engine::{Engine, EngineContext, HostOptions, Interest};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use support::{from_oldest, start_engine, until, Checker};

type Log = Arc<Mutex<Vec<String>>>;

/// Holds its thread for `busy` on every market-data message (a CPU-heavy handler), and logs
/// what it handled.
struct Heavy {
    name: &'static str,
    busy: Duration,
    log: Log,
    alerts: bool,
}

#[async_trait]
impl Engine for Heavy {
    fn name(&self) -> &'static str {
        self.name
    }

    fn subscriptions(&self) -> Vec<Interest> {
        let mut patterns = vec!["market_data.>"];
        if self.alerts {
            patterns.push("risk_alert.>");
        }
        vec![Interest::reliable(&patterns)]
    }

    async fn on_message(
        &mut self,
        _ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        if msg.kind == EventKind::MarketData {
            std::thread::sleep(self.busy);
            self.log
                .lock()
                .push(format!("{} market_data {}", self.name, msg.topic));
        } else {
            self.log.lock().push(format!("{} {}", self.name, msg.kind));
        }
        Ok(())
    }
}

/// Logs every risk alert it handles.
struct AlertWatcher {
    log: Log,
}

#[async_trait]
impl Engine for AlertWatcher {
    fn name(&self) -> &'static str {
        "watcher"
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&["risk_alert.>"])]
    }

    async fn on_message(
        &mut self,
        _ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        self.log.lock().push(format!("watcher {}", msg.kind));
        Ok(())
    }
}

fn opts() -> HostOptions {
    HostOptions {
        health_every: Duration::from_millis(100),
        ..from_oldest()
    }
}

async fn publish_quotes(bus: &DualBus, n: usize) {
    let envs = (0..n)
        .map(|i| {
            bus.envelope(
                EventKind::MarketData,
                &format!("market_data.quote.S{i:03}"),
                Priority::Normal,
                &serde_json::json!({"i": i}),
            )
            .unwrap()
        })
        .collect();
    bus.publish_batch(envs).await.unwrap();
}

async fn wait_for(log: &Log, what: &str, n: usize) {
    let waited = until(|| log.lock().iter().filter(|l| l.contains(what)).count() >= n);
    tokio::time::timeout(Duration::from_secs(60), waited)
        .await
        .unwrap_or_else(|_| panic!("{what} x{n} never came: {:?}", log.lock()));
}

fn position(log: &Log, what: &str) -> usize {
    let l = log.lock();
    l.iter()
        .position(|e| e == what)
        .unwrap_or_else(|| panic!("{what} not in {l:?}"))
}

#[tokio::test]
async fn a_busy_engine_does_not_hold_another_engines_priority_message() {
    let root = DualBus::builder("test").build().unwrap();
    let log: Log = Default::default();
    let heavy = start_engine(
        Heavy {
            name: "heavy",
            busy: Duration::from_millis(40),
            log: log.clone(),
            alerts: false,
        },
        &root,
        "heavy",
        opts(),
    )
    .await;
    let watcher = start_engine(AlertWatcher { log: log.clone() }, &root, "watcher", opts()).await;
    let hub = root.sibling("marketdata", "marketdata-1").unwrap();
    let risk = root.sibling("risk", "risk-1").unwrap();
    // 30 messages of 40 ms each: the heavy engine holds its thread for over a second.
    publish_quotes(&hub, 30).await;
    wait_for(&log, "heavy market_data", 1).await;
    risk.publish(
        EventKind::RiskAlert,
        "risk_alert.BTCUSDT",
        &serde_json::json!({"rule": "max_position"}),
    )
    .await
    .unwrap();
    wait_for(&log, "watcher risk_alert", 1).await;
    wait_for(&log, "heavy market_data", 30).await;
    let alert = position(&log, "watcher risk_alert");
    let last = position(&log, "heavy market_data market_data.quote.S029");
    assert!(
        alert < last,
        "the alert waited for the busy engine: {:?}",
        log.lock()
    );
    watcher.stop().await;
    heavy.stop().await;
}

#[tokio::test]
async fn a_critical_message_waits_for_one_market_data_message_not_the_batch() {
    let root = DualBus::builder("test").build().unwrap();
    let log: Log = Default::default();
    let engine = start_engine(
        Heavy {
            name: "strategy",
            busy: Duration::from_millis(20),
            log: log.clone(),
            alerts: true,
        },
        &root,
        "strategy",
        opts(),
    )
    .await;
    let hub = root.sibling("marketdata", "marketdata-1").unwrap();
    let risk = root.sibling("risk", "risk-1").unwrap();
    // One batch of 50 quotes (one read of the reader), then an alert while it is handled.
    publish_quotes(&hub, 50).await;
    wait_for(&log, "strategy market_data", 2).await;
    risk.publish(
        EventKind::RiskAlert,
        "risk_alert.BTCUSDT",
        &serde_json::json!({"rule": "drawdown_stop"}),
    )
    .await
    .unwrap();
    wait_for(&log, "strategy risk_alert", 1).await;
    wait_for(&log, "strategy market_data", 50).await;
    let alert = position(&log, "strategy risk_alert");
    // Handled next, or after the few quotes handled while it was being published.
    assert!(
        alert < 45,
        "the alert waited behind the market-data batch (handled {alert}th): {:?}",
        log.lock()
    );
    engine.stop().await;
}

#[tokio::test]
async fn heartbeats_carry_handler_time_queue_wait_and_delivery_latency() {
    let root = DualBus::builder("test").build().unwrap();
    let log: Log = Default::default();
    let checker = Checker::start(&root, &["engine_health.>"]).await;
    let beats = || checker.of::<serde_json::Value>(EventKind::EngineHealth);
    let engine = start_engine(
        Heavy {
            name: "features",
            busy: Duration::from_millis(2),
            log: log.clone(),
            alerts: true,
        },
        &root,
        "features",
        opts(),
    )
    .await;
    let hub = root.sibling("marketdata", "marketdata-1").unwrap();
    publish_quotes(&hub, 5).await;
    root.sibling("risk", "risk-1")
        .unwrap()
        .publish(EventKind::RiskAlert, "risk_alert.X", &serde_json::json!({}))
        .await
        .unwrap();
    wait_for(&log, "features", 6).await;
    engine.stop().await;
    let stopped = until(|| beats().iter().any(|h| h["status"] == "stopped"));
    tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("the last heartbeat came");
    // The heartbeats' windows add up to every message, by lane.
    let beats = beats();
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| beats.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(&|h| h["latency"]["handled"].as_u64().unwrap_or(0)),
        6,
        "{beats:?}"
    );
    let lane = |name: &'static str| {
        sum(&move |h: &serde_json::Value| {
            h["latency"]["delivery"][name]["count"]
                .as_u64()
                .unwrap_or(0)
        })
    };
    assert_eq!(
        (lane("market_data"), lane("priority_lane")),
        (5, 1),
        "{beats:?}"
    );
    let busy = beats
        .iter()
        .filter_map(|h| h["latency"]["handler_max_us"].as_f64())
        .fold(0.0, f64::max);
    assert!(busy >= 1900.0, "a 2 ms handler: {busy} µs: {beats:?}");
}
