//! The WebSocket engine: a live feed of the buses for browsers, over HTTP on port 8600.
//!
//! The engine reads every kind the dashboard shows in fast mode (a dashboard must never hold
//! back the pipeline) and serves, on [`WebSocketParams::bind`]:
//!
//! * `GET /`: a self-contained live page (prices, equity and P&L, alerts, strategy signals,
//!   bus traffic by kind, engines), which connects to `/ws`.
//! * `GET /ws?kinds=a,b`: a WebSocket feed. Frames are JSON text:
//!   - first `{"type":"snapshot",...}`: the state of `/api/state`, so a late client sees it
//!     at once;
//!   - `{"type":"message","kind":K,"topic":T,"src":S,"ts":ns,"payload":{...}}` for each bus
//!     message whose kind the client asked for (`kinds`, or
//!     [`WebSocketParams::kinds_default`] when it names none); a name outside [`FEED_KINDS`]
//!     is refused with HTTP 400 naming it;
//!   - `{"type":"prices","prices":{SYM:{"bid","ask","mid","ts"}}}`: quotes coalesced per
//!     symbol, the symbols changed since the last one, at most every
//!     [`WebSocketParams::price_every_ms`];
//!   - `{"type":"traffic","messages":{kind:n},"rates":{kind:per_s},"engines":{...},
//!     "clients":n,"uptime_s":x}` every second;
//!   - `{"type":"lagged","skipped":n}` when the client read too slowly and lost its `n` oldest
//!     frames (each client has a queue of [`WebSocketParams::client_queue`] frames; the engine
//!     never waits for a client and never drops a frame without saying so).
//!
//!   `prices` and `traffic` frames go to every client whatever its `kinds`: they are
//!   rate-limited already, and every view needs them.
//! * `GET /assets/uplot.js`, `/assets/uplot.css`: the chart library the page uses (uPlot,
//!   vendored: the page loads nothing from elsewhere).
//! * `GET /health`: `{"status":"ok","engine":"websocket","clients":n,"uptime_s":x,
//!   "messages":{kind:n},"engines":{name:{"status","uptime_s"}},"frames_sent":n,
//!   "frames_dropped":n}`.
//! * `GET /api/state`: the snapshot (prices, portfolio, the last 50 alerts and strategy
//!   signals, traffic, engines).
//!
//! * `GET /metrics`, `/healthz`, `/readyz`: when the engine runs with the process's metrics
//!   (in `dualbus run` and `dualbus engine websocket`), the process's Prometheus metrics,
//!   liveness and readiness ([`crate::telemetry`]).
//!
//! Anything else is a 404 naming the path; a method other than GET a 405. HTTP/1.1 with
//! keep-alive, on axum's router over hyper's server ([`telemetry::serve`]: a request head of
//! at most 16 KiB, sent within 10 s). At most [`WebSocketParams::max_clients`] WebSocket
//! clients at once; one more is answered 503 naming the setting. With
//! [`WebSocketParams::token`], every request but the probes must carry the token (401
//! otherwise); a browser page from another origin than the dashboard's own or
//! [`WebSocketParams::allowed_origins`] cannot open `/ws` (403); a request with a body is
//! answered 413 (the dashboard serves GETs only). Refusals are counted in `/health` and in
//! `/metrics` (`dualbus_dashboard_refused{reason}`).
//!
//! On [`Engine::stop`] the server stops accepting, open requests finish, WebSocket clients get
//! a close frame (`1001 going away`), and stop waits until every client's task has finished.
//!
//! # Layout
//! * this file: the parameters and the engine (its subscriptions, ticks and stop);
//! * `feed`: what the engine keeps of the buses and hands to each client, by kind;
//! * `http`: the routes, the token and origin checks, the WebSocket upgrade and each client's
//!   connection;
//! * `assets`: the page (`page.html`) and its chart library, built into the binary.

mod assets;
mod feed;
mod http;

use assets::{PAGE, UPLOT_CSS, UPLOT_JS};
use feed::*;
pub(crate) use feed::{parse_kinds, KindFilter};
pub use http::TOKEN_ENV;
use http::*;
pub(crate) use http::{check_upgrade, origin_allowed, presented};

use crate::engine::{Engine, EngineContext, EngineError, Interest, Timer};

use crate::metrics::BusMetrics;
use crate::telemetry::{self, stopping};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dualbus_bus::{BusId, HandlerError};
use dualbus_core::Envelope;
use dualbus_model::health::EngineHealth;
use dualbus_model::market::Quote;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The kinds a client can ask for in `/ws?kinds=`: every kind the engine reads except
/// `market_data`, whose quotes reach clients only as coalesced `prices` frames.
pub const FEED_KINDS: [&str; 14] = [
    "portfolio_update",
    "position_change",
    "strategy_signal",
    "risk_alert",
    "toxicity_alert",
    "flash_crash_alert",
    "margin_call",
    "analytics_result",
    "ml_prediction",
    "factor_calculation",
    "vpin_calculation",
    "engine_health",
    "trade_execution",
    "order_request",
];

/// Kinds kept in the snapshot's `alerts`.
const ALERT_KINDS: [&str; 4] = [
    "risk_alert",
    "toxicity_alert",
    "flash_crash_alert",
    "margin_call",
];

/// Alerts and strategy signals kept for the snapshot.
const KEPT: usize = 50;

/// Fills and orders kept for the snapshot.
const KEPT_TRADES: usize = 200;

/// Points of the equity curve kept (one per second of wall time at most).
const EQUITY_POINTS: usize = 1_800;

/// Points of price history kept per symbol (one per second of wall time at most).
const PRICE_POINTS: usize = 600;

/// How long a client gets to take its close frame on stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`Engine::stop`] waits for the connections to finish before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// WebSocket engine parameters (the `websocket` configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketParams {
    /// Address the HTTP server listens on (`ip:port`; port 0 picks a free one).
    pub bind: String,
    /// Kinds sent to a client that names none in `/ws?kinds=`.
    pub kinds_default: Vec<String>,
    /// Quotes are coalesced per symbol and sent at most this often, in milliseconds.
    pub price_every_ms: u64,
    /// Frames queued per client; a slower client loses its oldest and is told how many.
    pub client_queue: usize,
    /// WebSocket clients served at once; one more is answered 503.
    pub max_clients: usize,
    /// A secret every request must carry (`Authorization: Bearer TOKEN`, the `dualbus_token`
    /// cookie, or `?token=TOKEN`, which answers with that cookie so the page, its assets and
    /// its WebSocket follow). None (the default, unless `DUALBUS_DASHBOARD_TOKEN` is set):
    /// whoever reaches `bind` may read the dashboard. `/healthz` and `/readyz` stay open for
    /// probes. Never logged.
    pub token: Option<String>,
    /// Origins (`scheme://host[:port]`) allowed to open `/ws` besides the dashboard's own: a
    /// browser page from any other origin is refused (403), so a web page a trader happens to
    /// visit cannot read the feed through the trader's browser.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketParams {
    fn default() -> Self {
        WebSocketParams {
            bind: "127.0.0.1:8600".into(),
            kinds_default: [
                "portfolio_update",
                "strategy_signal",
                "risk_alert",
                "toxicity_alert",
                "flash_crash_alert",
                "margin_call",
                "analytics_result",
            ]
            .iter()
            .map(|k| k.to_string())
            .collect(),
            price_every_ms: 250,
            client_queue: 1024,
            max_clients: 64,
            token: None,
            allowed_origins: Vec::new(),
        }
    }
}

impl WebSocketParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.bind.parse::<SocketAddr>().is_err() {
            out.push(format!(
                "bind {:?} must be an address ip:port, e.g. 127.0.0.1:8600",
                self.bind
            ));
        }
        let unknown: Vec<&str> = self
            .kinds_default
            .iter()
            .map(|k| k.as_str())
            .filter(|k| !FEED_KINDS.contains(k))
            .collect();
        if !unknown.is_empty() {
            out.push(format!(
                "kinds_default names kinds the feed does not carry: {} (it carries {})",
                unknown.join(", "),
                FEED_KINDS.join(", ")
            ));
        }
        if self.price_every_ms < 10 {
            out.push(format!(
                "price_every_ms {} must be at least 10",
                self.price_every_ms
            ));
        }
        if self.client_queue == 0 {
            out.push("client_queue must be at least 1".into());
        }
        if self.max_clients == 0 {
            out.push("max_clients must be at least 1".into());
        }
        if let Some(t) = &self.token {
            if t.len() < 16
                || t.bytes()
                    .any(|b| !b.is_ascii_graphic() || b == b';' || b == b'&')
            {
                // The value itself is a secret: never repeat it.
                out.push(
                    "token must be at least 16 printable characters without spaces, ';' or '&' \
                     (e.g. `openssl rand -hex 16`)"
                        .into(),
                );
            }
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                out.push(format!(
                    "allowed_origins entry {o:?} must be scheme://host[:port], e.g. \
                     https://desk.example.com"
                ));
            }
        }
        out
    }
}

/// The server side of a started engine.
struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    clients: Arc<Mutex<JoinSet<()>>>,
}

/// The WebSocket engine (`websocket`). Configuration: [`WebSocketParams`].
#[derive(Default)]
pub struct WebSocketEngine {
    params: WebSocketParams,
    feed: Option<Arc<Feed>>,
    server: Option<Server>,
}

impl WebSocketEngine {
    /// An engine with these parameters (a configuration section given to the host replaces
    /// them).
    pub fn new(params: WebSocketParams) -> WebSocketEngine {
        WebSocketEngine {
            params,
            ..Default::default()
        }
    }

    /// The address the server listens on, once started (the real port when `bind` asked for
    /// port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }
}

#[async_trait]
impl Engine for WebSocketEngine {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::fast(&[
            "market_data.quote.>",
            "portfolio_update.>",
            "position_change.>",
            "strategy_signal.>",
            "risk_alert.>",
            "toxicity_alert.>",
            "flash_crash_alert.>",
            "margin_call.>",
            "analytics_result.>",
            "ml_prediction.>",
            "factor_calculation.>",
            "vpin_calculation.>",
            "engine_health.>",
            "trade_execution.>",
            "order_request.>",
        ])]
    }

    fn timers(&self) -> Vec<Timer> {
        vec![
            Timer {
                name: "prices",
                every: Duration::from_millis(self.params.price_every_ms),
            },
            Timer {
                name: "traffic",
                every: Duration::from_secs(1),
            },
        ]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.params = ctx.settings()?;
        }
        if self.params.token.is_none() {
            self.params.token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        }
        let config = |reason: String| EngineError::Config {
            engine: "websocket".into(),
            reason,
        };
        let problems = self.params.problems();
        if !problems.is_empty() {
            return Err(config(problems.join("; ")));
        }
        let bind = &self.params.bind;
        let listener = TcpListener::bind(bind).await.map_err(|e| {
            config(if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("{bind} is in use; set websocket.bind")
            } else {
                format!("cannot listen on {bind}: {e}; set websocket.bind")
            })
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| config(format!("{bind}: {e}")))?;
        let feed = Arc::new(Feed::new(&self.params).map_err(config)?);
        let (shutdown, rx) = watch::channel(false);
        let clients = Arc::new(Mutex::new(JoinSet::new()));
        let app = App {
            feed: feed.clone(),
            shutdown: rx.clone(),
            clients: clients.clone(),
            open: Arc::new(AtomicU64::new(0)),
            max_clients: self.params.max_clients,
            token: self.params.token.as_deref().map(Arc::from),
            allowed_origins: self.params.allowed_origins.clone().into(),
        };
        if self.params.token.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the dashboard is open to anyone who can reach {addr}: set websocket.token or \
                 DUALBUS_DASHBOARD_TOKEN"
            );
        }
        if let Some(m) = ctx.metrics() {
            m.add_collector(Arc::new(DashboardCollector(feed.clone())));
        }
        let router = routes(app, ctx.metrics().cloned());
        let task = tokio::spawn(telemetry::serve(
            listener,
            router,
            rx,
            feed.http_refusals.clone(),
        ));
        tracing::info!(%addr, "websocket engine listening");
        self.feed = Some(feed);
        self.server = Some(Server {
            addr,
            shutdown,
            task,
            clients,
        });
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        if let Some(feed) = &self.feed {
            feed.on_message_on(msg, ctx.bus().route(&msg.kind, msg.prio).bus);
        }
        Ok(())
    }

    async fn on_timer(
        &mut self,
        _ctx: &EngineContext,
        timer: &'static str,
    ) -> Result<(), EngineError> {
        if let Some(feed) = &self.feed {
            match timer {
                "prices" => feed.flush_prices(),
                "traffic" => feed.tick_traffic(),
                _ => {}
            }
        }
        Ok(())
    }

    async fn stop(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let _ = server.shutdown.send(true);
        let abort = server.task.abort_handle();
        let mut clients = std::mem::take(&mut *server.clients.lock());
        let finished = tokio::time::timeout(STOP_TIMEOUT, async {
            let _ = server.task.await;
            while clients.join_next().await.is_some() {}
        })
        .await;
        match finished {
            Ok(()) => Ok(()),
            Err(_) => {
                abort.abort();
                clients.abort_all();
                Err(EngineError::Other(format!(
                    "websocket: connections still open after {STOP_TIMEOUT:?}; aborted"
                )))
            }
        }
    }

    fn health(&self) -> Value {
        match (&self.feed, &self.server) {
            (Some(feed), server) => json!({
                "addr": server.as_ref().map(|s| s.addr.to_string()),
                "clients": feed.clients(),
                "frames_sent": feed.frames_sent.load(Ordering::Relaxed),
                "frames_dropped": feed.frames_dropped.load(Ordering::Relaxed),
            }),
            (None, _) => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_core::{Encoding, EventKind, Topic};

    fn env(kind: EventKind, topic: &str, payload: Value) -> Envelope {
        Envelope::builder(kind, Topic::new(topic).unwrap(), "test", "test-1")
            .ts(1_700_000_000_000_000_000)
            .payload(Encoding::Json, serde_json::to_vec(&payload).unwrap().into())
            .build()
    }

    fn quote(symbol: &str, ts: u64, bid: f64, ask: f64) -> Quote {
        Quote {
            symbol: symbol.into(),
            ts,
            bid,
            ask,
            bid_size: 1.0,
            ask_size: 1.0,
        }
    }

    fn parse(frame: &Frame) -> Value {
        serde_json::from_str(frame.as_str()).unwrap()
    }

    fn defaults() -> KindFilter {
        KindFilter::from_names(
            WebSocketParams::default()
                .kinds_default
                .iter()
                .map(|k| k.as_str()),
        )
        .unwrap()
    }

    #[test]
    fn default_params_are_valid_and_bad_ones_are_all_named() {
        assert!(WebSocketParams::default().problems().is_empty());
        let p = WebSocketParams {
            bind: "localhost".into(),
            kinds_default: vec!["risk_alert".into(), "quotes".into()],
            price_every_ms: 1,
            client_queue: 0,
            max_clients: 0,
            token: Some("secret".into()),
            allowed_origins: vec!["desk.example.com".into()],
        };
        let problems = p.problems().join("; ");
        assert!(!problems.contains("secret"), "{problems}");
        for needle in [
            "bind \"localhost\"",
            "kinds_default names kinds the feed does not carry: quotes",
            "price_every_ms 1",
            "client_queue",
            "max_clients must be at least 1",
            "token must be at least 16 printable characters",
            "allowed_origins entry \"desk.example.com\" must be scheme://host[:port]",
        ] {
            assert!(problems.contains(needle), "{problems}");
        }
        let unknown = serde_json::from_value::<WebSocketParams>(json!({"port": 1}));
        assert!(unknown.is_err());
    }

    #[test]
    fn kinds_filter_from_the_query() {
        let d = defaults();
        assert_eq!(parse_kinds(None, &d).unwrap(), d);
        assert_eq!(parse_kinds(Some("kinds="), &d).unwrap(), d);
        assert_eq!(parse_kinds(Some("x=1"), &d).unwrap(), d);
        let f = parse_kinds(Some("x=1&kinds=risk_alert,margin_call"), &d).unwrap();
        assert!(f.includes("risk_alert") && f.includes("margin_call"));
        assert!(!f.includes("portfolio_update"));
        assert_eq!(f.0.len(), 2);
        let encoded = parse_kinds(Some("kinds=risk_alert%2Cengine_health"), &d).unwrap();
        assert!(encoded.includes("risk_alert") && encoded.includes("engine_health"));
    }

    #[test]
    fn unknown_kinds_are_refused_by_name() {
        let err = parse_kinds(Some("kinds=bogus,risk_alert,market_data"), &defaults()).unwrap_err();
        assert!(
            err.starts_with("unknown kinds: bogus, market_data (the feed carries "),
            "{err}"
        );
        assert!(err.contains("quotes come as prices frames"), "{err}");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Cb+c"), "a,b c");
        assert_eq!(percent_decode("a%zzb%2"), "a%zzb%2");
    }

    #[test]
    fn quotes_are_coalesced_to_the_latest_per_symbol() {
        let mut b = PriceBoard::default();
        assert_eq!(b.take_changed(), None);
        b.update(&quote("BTCUSDT", 10, 100.0, 102.0));
        b.update(&quote("BTCUSDT", 20, 101.0, 103.0));
        b.update(&quote("BTCUSDT", 15, 1.0, 2.0)); // late: ignored
        b.update(&quote("ETHUSDT", 12, 10.0, 10.5));
        let f: Value = serde_json::from_str(&b.take_changed().unwrap()).unwrap();
        assert_eq!(
            f,
            json!({"type": "prices", "prices": {
                "BTCUSDT": {"bid": 101.0, "ask": 103.0, "mid": 102.0, "ts": 20},
                "ETHUSDT": {"bid": 10.0, "ask": 10.5, "mid": 10.25, "ts": 12},
            }})
        );
        assert_eq!(b.take_changed(), None, "nothing new since the flush");
        b.update(&quote("ETHUSDT", 13, 10.1, 10.5));
        let f: Value = serde_json::from_str(&b.take_changed().unwrap()).unwrap();
        assert_eq!(f["prices"].as_object().unwrap().len(), 1, "{f}");
        assert_eq!(b.all()["BTCUSDT"]["ts"], 20);
    }

    #[test]
    fn message_frame_carries_the_envelope_and_decoded_payload() {
        let m = env(
            EventKind::RiskAlert,
            "risk_alert.BTCUSDT",
            json!({"reason": "drawdown 5%"}),
        );
        let payload = m.enc.to_json_value(&m.payload).unwrap();
        assert_eq!(
            message_value(&m, payload),
            json!({"type": "message", "kind": "risk_alert", "topic": "risk_alert.BTCUSDT",
                   "src": "test", "ts": 1_700_000_000_000_000_000u64,
                   "payload": {"reason": "drawdown 5%"}})
        );
    }

    #[test]
    fn a_slow_client_loses_its_oldest_frames_and_is_told_how_many() {
        let mut q = ClientQueue::new(3);
        let dropped: Vec<bool> = (0..5).map(|i| q.push(format!("{i}").into())).collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        let mut out = Vec::new();
        q.take(&mut out);
        let texts: Vec<&str> = out.iter().map(|f| f.as_str()).collect();
        assert_eq!(parse(&out[0]), json!({"type": "lagged", "skipped": 2}));
        assert_eq!(texts[1..], ["2", "3", "4"]);
        out.clear();
        q.push("5".into());
        q.take(&mut out);
        assert_eq!(out, [Frame::from("5")], "the count is reported once");
    }

    #[test]
    fn the_feed_sends_a_snapshot_then_only_the_kinds_asked_for() {
        let feed = Feed::new(&WebSocketParams {
            client_queue: 4,
            ..Default::default()
        })
        .unwrap();
        feed.on_message(&env(
            EventKind::PortfolioUpdate,
            "portfolio_update.main",
            json!({"equity": 1000.0}),
        ));
        let c = feed.register(KindFilter::from_names(["risk_alert"]).unwrap());
        let mut out = Vec::new();
        c.queue.lock().take(&mut out);
        let snap = parse(&out[0]);
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(snap["portfolio"]["payload"]["equity"], 1000.0);
        assert_eq!(snap["clients"], 1);

        feed.on_message(&env(
            EventKind::PortfolioUpdate,
            "portfolio_update.main",
            json!({"equity": 1001.0}),
        ));
        feed.on_message(&env(
            EventKind::RiskAlert,
            "risk_alert.BTCUSDT",
            json!({"reason": "limit"}),
        ));
        feed.on_message(&env(
            EventKind::MarketData,
            "market_data.quote.BTCUSDT",
            json!(quote("BTCUSDT", 5, 1.0, 3.0)),
        ));
        feed.flush_prices();
        out.clear();
        c.queue.lock().take(&mut out);
        let frames: Vec<Value> = out.iter().map(parse).collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0]["kind"], "risk_alert");
        assert_eq!(frames[1]["prices"]["BTCUSDT"]["mid"], 2.0);

        let state = feed.state_json();
        assert_eq!(state["portfolio"]["payload"]["equity"], 1001.0);
        assert_eq!(state["alerts"][0]["payload"]["reason"], "limit");
        assert_eq!(state["traffic"]["messages"]["portfolio_update"], 2);
        assert_eq!(state["traffic"]["messages"]["market_data"], 1);

        // Five frames into a queue of four: one dropped, counted, reported.
        for _ in 0..5 {
            feed.on_message(&env(EventKind::RiskAlert, "risk_alert.X", json!({})));
        }
        assert_eq!(feed.frames_dropped.load(Ordering::Relaxed), 1);
        out.clear();
        c.queue.lock().take(&mut out);
        assert_eq!(parse(&out[0]), json!({"type": "lagged", "skipped": 1}));
        assert_eq!(out.len(), 5);

        // Only the last 50 alerts are kept.
        for _ in 0..60 {
            feed.on_message(&env(EventKind::MarginCall, "margin_call.main", json!({})));
        }
        assert_eq!(feed.state_json()["alerts"].as_array().unwrap().len(), KEPT);

        feed.unregister(c.id);
        assert_eq!(feed.clients(), 0);
    }

    #[test]
    fn engine_health_keeps_the_latest_per_engine() {
        let feed = Feed::new(&WebSocketParams::default()).unwrap();
        for (status, up) in [("running", 1.0), ("stopped", 2.0)] {
            feed.on_message(&env(
                EventKind::EngineHealth,
                "engine_health.vpin",
                json!({"engine": "vpin", "instance": "vpin-1", "status": status,
                       "uptime_s": up, "received": {"market_data": 7}, "published": {}}),
            ));
        }
        let h = feed.health_json();
        assert_eq!(
            h["engines"],
            json!({"vpin": {"status": "stopped", "uptime_s": 2.0}})
        );
        assert_eq!(h["messages"]["engine_health"], 2);
        assert_eq!(feed.state_json()["engines"]["vpin"]["received"], 7);
        assert!(feed.state_json()["engines"]["vpin"]
            .get("latency")
            .is_none());

        // The heartbeat's latency figures reach the dashboard's state as they came.
        let latency = json!({"handler_p99_us": 4.2, "handler_max_us": 9.0, "queue_p99_us": 80.5,
                             "queue_max_us": 120.0, "handled": 31, "timer_max_us": null,
                             "delivery": {"priority_lane": {"p50_us": 90.0, "p99_us": 150.0,
                                          "p999_us": 150.0, "max_us": 150.0, "count": 2}}});
        feed.on_message(&env(
            EventKind::EngineHealth,
            "engine_health.risk",
            json!({"engine": "risk", "instance": "risk-1", "status": "running",
                   "uptime_s": 3.0, "received": {}, "published": {}, "latency": latency}),
        ));
        assert_eq!(feed.state_json()["engines"]["risk"]["latency"], latency);
    }

    #[test]
    fn traffic_rates_are_over_the_time_elapsed() {
        let t0 = Instant::now();
        let mut t = Traffic::new(t0);
        for _ in 0..10 {
            t.count("market_data");
        }
        t.tick(t0 + Duration::from_secs(2));
        assert_eq!(t.rates["market_data"], 5.0);
        t.count("market_data");
        t.tick(t0 + Duration::from_secs(3));
        assert_eq!(t.rates["market_data"], 1.0);
    }

    #[test]
    fn alerts_are_grouped_by_rule_and_halts_come_from_the_heartbeats() {
        let feed = Feed::new(&WebSocketParams::default()).unwrap();
        for (i, rule) in ["stale_price", "circuit_breaker", "stale_price"]
            .iter()
            .enumerate()
        {
            feed.on_message(&env(
                EventKind::RiskAlert,
                "risk_alert.BTCUSDT",
                json!({"rule": rule, "symbol": "BTCUSDT", "reason": format!("reason {i}")}),
            ));
        }
        feed.on_message(&env(
            EventKind::ToxicityAlert,
            "toxicity_alert.ETHUSDT",
            json!({"symbol": "ETHUSDT", "reason": "VPIN high"}),
        ));
        let st = feed.state_json();
        let rules: Vec<(String, String, u64, String)> = st["alert_rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["rule"].as_str().unwrap().to_string(),
                    r["count"].as_u64().unwrap(),
                    r["last_reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let r = |k: &str, rule: &str, n: u64, reason: &str| {
            (k.to_string(), rule.to_string(), n, reason.to_string())
        };
        assert_eq!(
            rules,
            vec![
                r("risk_alert", "circuit_breaker", 1, "reason 1"),
                r("risk_alert", "stale_price", 2, "reason 2"),
                r("toxicity_alert", "vpin_percentile", 1, "VPIN high"),
            ]
        );
        assert_eq!(st["halts"], json!({"breaker": null, "halted": []}));
        let beat = |engine: &str, details: Value| {
            env(
                EventKind::EngineHealth,
                &format!("engine_health.{engine}"),
                json!({"engine": engine, "instance": "x", "status": "running", "uptime_s": 1.0,
                       "received": {}, "published": {}, "details": details}),
            )
        };
        let breaker = json!({"since": 5, "symbol": "BTCUSDT", "alerts": 2});
        feed.on_message(&beat("risk", json!({"breaker": breaker})));
        feed.on_message(&beat("strategy", json!({"halted": ["BTCUSDT"]})));
        assert_eq!(
            feed.state_json()["halts"],
            json!({"breaker": breaker, "halted": ["BTCUSDT"]})
        );
        // The breaker resets: the next heartbeat says so.
        feed.on_message(&beat("risk", json!({"breaker": null})));
        assert_eq!(feed.state_json()["halts"]["breaker"], Value::Null);
    }

    #[test]
    fn history_is_sampled_when_data_time_moves_on_and_trades_are_kept() {
        let feed = Feed::new(&WebSocketParams::default()).unwrap();
        let q = |ts: u64, mid: f64| {
            env(
                EventKind::MarketData,
                "market_data.quote.BTCUSDT",
                serde_json::to_value(quote("BTCUSDT", ts, mid - 1.0, mid + 1.0)).unwrap(),
            )
        };
        let pu = |ts: u64, equity: f64| {
            env(
                EventKind::PortfolioUpdate,
                "portfolio_update.main",
                json!({"ts": ts, "equity": equity, "drawdown": 0.01}),
            )
        };
        feed.on_message(&q(1_000_000_000, 100.0));
        feed.on_message(&pu(1_000_000_000, 1000.0));
        feed.tick_traffic();
        feed.tick_traffic(); // data time has not moved: no new point
        feed.on_message(&q(2_000_000_000, 101.0));
        feed.on_message(&pu(2_000_000_000, 1001.0));
        feed.tick_traffic();
        let st = feed.state_json();
        assert_eq!(
            st["price_history"]["BTCUSDT"],
            json!([[1000.0, 100.0], [2000.0, 101.0]])
        );
        assert_eq!(
            st["equity_curve"],
            json!([[1000.0, 1000.0, 0.01], [2000.0, 1001.0, 0.01]])
        );
        feed.on_message(&env(
            EventKind::TradeExecution,
            "trade_execution.BTCUSDT",
            json!({"symbol": "BTCUSDT", "status": "filled"}),
        ));
        feed.on_message(&env(
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            json!({"symbol": "BTCUSDT", "side": "buy"}),
        ));
        let st = feed.state_json();
        assert_eq!(st["fills"][0]["payload"]["status"], "filled");
        assert_eq!(st["orders"][0]["payload"]["side"], "buy");
        assert_eq!(st["buses"]["md"]["total"], 2);
        assert_eq!(st["buses"]["logic"]["total"], 4);
    }

    #[test]
    fn upgrade_requests_are_checked() {
        let feed = Feed::new(&WebSocketParams::default()).unwrap();
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let (code, body) = check_upgrade(&headers(&[]), None, &feed.default_kinds).unwrap_err();
        assert_eq!(
            (code, body.trim()),
            (
                StatusCode::BAD_REQUEST,
                "/ws expects a WebSocket upgrade request"
            )
        );
        let good = headers(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        // RFC 6455's example key and answer.
        let (accept, kinds) =
            check_upgrade(&good, Some("kinds=risk_alert"), &feed.default_kinds).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(kinds.includes("risk_alert") && !kinds.includes("portfolio_update"));
        let (code, body) =
            check_upgrade(&good, Some("kinds=bogus"), &feed.default_kinds).unwrap_err();
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.starts_with("unknown kinds: bogus"), "{body}");
        let mut v12 = good.clone();
        v12.insert("sec-websocket-version", "12".parse().unwrap());
        let (_, body) = check_upgrade(&v12, None, &feed.default_kinds).unwrap_err();
        assert_eq!(body.trim(), "/ws speaks WebSocket version 13 only");
    }
}
