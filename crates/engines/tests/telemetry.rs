//! `/metrics`, `/healthz` and `/readyz` of a process: the Prometheus text parses with the
//! reference parser (PyPI `prometheus-client`, through `tests/tools/prometheus_parse.py`) and
//! counts exactly what the engines published and handled; readiness follows the buses.

mod support;

use async_trait::async_trait;
use dualbus_bus::{DualBus, HandlerError};
use dualbus_core::{Envelope, EventKind, Priority};
use dualbus_engines::engine::{Engine, EngineContext, HostOptions, Interest};
use dualbus_engines::metrics::BusMetrics;
use dualbus_engines::telemetry::MetricsServer;
use dualbus_memory::MemoryTransport;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{start_engine, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const QUOTES: u64 = 300;
const ALERTS: u64 = 7;

/// Publishes `QUOTES` market data messages and `ALERTS` critical risk alerts once ready.
struct Source;

#[async_trait]
impl Engine for Source {
    fn name(&self) -> &'static str {
        "source"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::MarketData, EventKind::RiskAlert]
    }

    async fn ready(
        &mut self,
        ctx: &EngineContext,
    ) -> Result<(), dualbus_engines::engine::EngineError> {
        for i in 0..QUOTES {
            ctx.publish(
                EventKind::MarketData,
                "market_data.quote.BTCUSDT",
                Priority::Normal,
                &json!({"i": i}),
            )
            .await
            .unwrap();
        }
        for i in 0..ALERTS {
            ctx.publish(
                EventKind::RiskAlert,
                "risk_alert.book",
                Priority::Critical,
                &json!({"i": i}),
            )
            .await
            .unwrap();
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        _ctx: &EngineContext,
        _msg: &Envelope,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Handles both; counts each alert for `/metrics` and sets the equity.
struct Sink;

#[async_trait]
impl Engine for Sink {
    fn name(&self) -> &'static str {
        "sink"
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&["market_data.>", "risk_alert.>"])]
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        if msg.kind == EventKind::RiskAlert {
            ctx.count_alert("risk_alert", "max_drawdown");
            ctx.set_equity(123.5);
        }
        Ok(())
    }
}

/// One GET; the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Parses the text with the reference parser; fails (never skips) when it is missing.
fn parse(text: &str) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/tools/prometheus_parse.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 is required to parse /metrics: {e}"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "/metrics does not pass the reference parser (pip install -r tests/requirements.txt \
         if prometheus_client is missing): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(parsed: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_published_and_handled_and_readiness_follows_the_buses() {
    let run = async {
        let md = MemoryTransport::new();
        let root = DualBus::builder("test")
            .transports(Arc::new(md.clone()), Arc::new(MemoryTransport::new()))
            .build()
            .unwrap();
        let metrics = Arc::new(BusMetrics::default());
        let opts = || HostOptions {
            metrics: Some(metrics.clone()),
            health_every: Duration::from_millis(100),
            ..HostOptions::default()
        };
        let server = MetricsServer::start("127.0.0.1:0", metrics.clone())
            .await
            .unwrap();
        let addr = server.addr();
        let sink = start_engine(Sink, &root, "sink", opts()).await;
        let source = start_engine(Source, &root, "source", opts()).await;
        until(|| sink.counts().received.values().sum::<u64>() >= QUOTES + ALERTS).await;

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        // Ready once both engines have sent a heartbeat.
        let ready = loop {
            let (code, body) = get(addr, "/readyz").await;
            if code == 200 {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["ready"], true);
        assert_eq!(ready["buses"]["md"]["up"], true);
        assert_eq!(ready["engines"]["sink"]["fresh"], true);

        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let m = parse(&text);
        assert_eq!(
            m["families"]["dualbus_delivery_latency_seconds"],
            "histogram"
        );
        assert_eq!(m["families"]["dualbus_messages_delivered"], "counter");
        let q = QUOTES as f64;
        let a = ALERTS as f64;
        let published = "dualbus_messages_published_total";
        let delivered = "dualbus_messages_delivered_total";
        assert_eq!(
            sample(
                &m,
                published,
                &[("bus", "md"), ("kind", "market_data"), ("engine", "source")]
            ),
            q
        );
        assert_eq!(
            sample(
                &m,
                published,
                &[
                    ("bus", "logic"),
                    ("kind", "risk_alert"),
                    ("engine", "source")
                ]
            ),
            a
        );
        assert_eq!(
            sample(
                &m,
                delivered,
                &[("bus", "md"), ("kind", "market_data"), ("group", "sink")]
            ),
            q
        );
        assert_eq!(
            sample(
                &m,
                delivered,
                &[("bus", "logic"), ("kind", "risk_alert"), ("group", "sink")]
            ),
            a
        );
        let latency = "dualbus_delivery_latency_seconds_count";
        assert_eq!(
            sample(&m, latency, &[("bus", "md"), ("lane", "market_data")]),
            q
        );
        assert_eq!(
            sample(&m, latency, &[("bus", "logic"), ("lane", "priority_lane")]),
            a
        );
        // The +Inf bucket holds every message.
        assert_eq!(
            sample(
                &m,
                "dualbus_delivery_latency_seconds_bucket",
                &[("bus", "md"), ("lane", "market_data"), ("le", "+Inf")]
            ),
            q
        );
        assert_eq!(
            sample(&m, "dualbus_handler_seconds_count", &[("engine", "sink")]),
            q + a
        );
        assert_eq!(
            sample(
                &m,
                "dualbus_alerts_total",
                &[("kind", "risk_alert"), ("rule", "max_drawdown")]
            ),
            a
        );
        assert_eq!(sample(&m, "dualbus_equity", &[]), 123.5);
        assert_eq!(sample(&m, "dualbus_bus_up", &[("bus", "md")]), 1.0);
        assert_eq!(
            sample(
                &m,
                "dualbus_handler_failures_total",
                &[("bus", "md"), ("group", "sink")]
            ),
            0.0
        );

        // Everything handled and acknowledged: the sink's group holds nothing on either stream.
        for (bus, stream) in [
            ("md", "dualbus:md:market_data"),
            ("logic", "dualbus:logic:priority"),
        ] {
            let g = [("bus", bus), ("stream", stream), ("group", "sink")];
            assert_eq!(sample(&m, "dualbus_group_lag_messages", &g), 0.0);
            assert_eq!(sample(&m, "dualbus_pending_messages", &g), 0.0);
        }

        // The MarketData bus goes down: not ready, and the body says which bus and why.
        md.set_available(false);
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["ready"], false);
        assert_eq!(body["buses"]["md"]["up"], false);
        assert!(
            body["buses"]["md"]["reason"]
                .as_str()
                .unwrap()
                .contains("unavailable"),
            "{body}"
        );
        assert_eq!(body["buses"]["logic"]["up"], true);
        md.set_available(true);

        let (code, body) = get(addr, "/nope").await;
        assert_eq!((code, body.as_str()), (404, "no such path /nope\n"));
        source.stop().await;
        sink.stop().await;
        server.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("test timed out");
}
