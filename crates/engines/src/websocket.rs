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

/// Per bus (MarketData, Engine Logic): messages seen since the start and their rate.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct BusTraffic {
    total: u64,
    rate: f64,
    #[serde(skip)]
    at_last_tick: u64,
}

/// Alerts of one kind and rule: how many, and the latest.
#[derive(Debug, Clone, Serialize)]
struct AlertRule {
    kind: String,
    rule: String,
    count: u64,
    last_ts: u64,
    last_symbol: Option<String>,
    last_reason: String,
}

/// The rule of an alert payload (`rule`, else the kind's own).
fn alert_rule(kind: &str, payload: &Value) -> String {
    match payload.get("rule").and_then(Value::as_str) {
        Some(r) => r.to_string(),
        None => match kind {
            "toxicity_alert" => "vpin_percentile".into(),
            "margin_call" => "margin_utilization".into(),
            k => k.to_string(),
        },
    }
}

/// Pushes `v` to a bounded queue, dropping the oldest.
fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// The live page, served at `/`.
const PAGE: &str = include_str!("websocket_page.html");

/// The chart library the page uses: uPlot 1.6.32 (MIT), vendored from the npm registry (see
/// `assets/uplot/README.md`), served at `/assets/uplot.js` and `/assets/uplot.css`.
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");

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

/// The kinds one client receives as `message` frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KindFilter(BTreeSet<&'static str>);

impl KindFilter {
    fn includes(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }

    pub(crate) fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<KindFilter, String> {
        let mut kinds = BTreeSet::new();
        let mut unknown = Vec::new();
        for name in names {
            match FEED_KINDS.iter().find(|k| **k == name) {
                Some(k) => {
                    kinds.insert(*k);
                }
                None => unknown.push(name),
            }
        }
        if unknown.is_empty() {
            Ok(KindFilter(kinds))
        } else {
            Err(format!(
                "unknown kinds: {} (the feed carries {}; quotes come as prices frames)",
                unknown.join(", "),
                FEED_KINDS.join(", ")
            ))
        }
    }
}

/// The kind filter of a `/ws` query string: `kinds=a,b` (percent-encoded commas allowed);
/// no `kinds`, or an empty one, gives `default`. The error is the 400 response's text.
pub(crate) fn parse_kinds(query: Option<&str>, default: &KindFilter) -> Result<KindFilter, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| *k == "kinds")
        .map(|(_, v)| percent_decode(v))
        .next_back();
    let Some(value) = value else {
        return Ok(default.clone());
    };
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(default.clone());
    }
    KindFilter::from_names(names)
}

/// Decodes `%XX` and `+` in a query value (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The latest quote of one symbol, as a `prices` frame shows it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct PriceLevel {
    bid: f64,
    ask: f64,
    mid: f64,
    ts: u64,
}

/// Quotes coalesced per symbol: the latest of each, and which changed since the last flush.
#[derive(Debug, Default)]
struct PriceBoard {
    latest: BTreeMap<String, PriceLevel>,
    changed: BTreeSet<String>,
}

impl PriceBoard {
    /// Keeps `q` unless the symbol already has a later quote.
    fn update(&mut self, q: &Quote) {
        let level = PriceLevel {
            bid: q.bid,
            ask: q.ask,
            mid: q.mid(),
            ts: q.ts,
        };
        match self.latest.get_mut(q.symbol.as_str()) {
            Some(l) if l.ts > q.ts => return,
            Some(l) => *l = level,
            None => {
                self.latest.insert(q.symbol.clone(), level);
            }
        }
        if !self.changed.contains(q.symbol.as_str()) {
            self.changed.insert(q.symbol.clone());
        }
    }

    /// The `prices` frame of the symbols changed since the last call (`None`: nothing new).
    fn take_changed(&mut self) -> Option<String> {
        if self.changed.is_empty() {
            return None;
        }
        let prices: BTreeMap<&str, &PriceLevel> = self
            .changed
            .iter()
            .filter_map(|s| self.latest.get_key_value(s.as_str()))
            .map(|(s, l)| (s.as_str(), l))
            .collect();
        let frame = json!({"type": "prices", "prices": prices}).to_string();
        self.changed.clear();
        Some(frame)
    }

    fn all(&self) -> Value {
        json!(self.latest)
    }
}

/// One frame queued for a client: JSON text, shared by every client it goes to.
type Frame = Utf8Bytes;

/// A client's outgoing frames: bounded; when full the oldest is dropped and counted, and the
/// next read starts with a `lagged` frame saying how many were lost.
#[derive(Debug)]
struct ClientQueue {
    cap: usize,
    frames: VecDeque<Frame>,
    skipped: u64,
}

impl ClientQueue {
    fn new(cap: usize) -> ClientQueue {
        ClientQueue {
            cap: cap.max(1),
            frames: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Queues `f`; true when the oldest frame was dropped to make room.
    fn push(&mut self, f: Frame) -> bool {
        let dropped = self.frames.len() >= self.cap;
        if dropped {
            self.frames.pop_front();
            self.skipped += 1;
        }
        self.frames.push_back(f);
        dropped
    }

    /// Moves the queued frames to `out`, preceded by a `lagged` frame when some were dropped
    /// since the last call (it stands where the lost frames stood).
    fn take(&mut self, out: &mut Vec<Frame>) {
        if self.skipped > 0 {
            out.push(lagged_frame(self.skipped).into());
            self.skipped = 0;
        }
        out.extend(self.frames.drain(..));
    }
}

fn lagged_frame(skipped: u64) -> String {
    json!({"type": "lagged", "skipped": skipped}).to_string()
}

/// The `message` frame of one bus message, as a JSON value (also kept for the snapshot).
fn message_value(msg: &Envelope, payload: Value) -> Value {
    json!({
        "type": "message",
        "kind": msg.kind.as_str(),
        "topic": msg.topic.as_str(),
        "src": &*msg.src,
        "ts": msg.ts,
        "payload": payload,
    })
}

/// Messages seen per kind, and their rates over the last tick.
#[derive(Debug)]
struct Traffic {
    counts: BTreeMap<String, u64>,
    rates: BTreeMap<String, f64>,
    at_last_tick: BTreeMap<String, u64>,
    last_tick: Instant,
}

impl Traffic {
    fn new(now: Instant) -> Traffic {
        Traffic {
            counts: BTreeMap::new(),
            rates: BTreeMap::new(),
            at_last_tick: BTreeMap::new(),
            last_tick: now,
        }
    }

    fn count(&mut self, kind: &str) {
        match self.counts.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(kind.to_string(), 1);
            }
        }
    }

    /// Rates since the previous tick (divided by the time actually elapsed, since a timer
    /// tick can be late).
    fn tick(&mut self, now: Instant) {
        let secs = now.duration_since(self.last_tick).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        self.rates = self
            .counts
            .iter()
            .map(|(k, n)| {
                let before = self.at_last_tick.get(k).copied().unwrap_or(0);
                (k.clone(), (n - before) as f64 / secs)
            })
            .collect();
        self.at_last_tick.clone_from(&self.counts);
        self.last_tick = now;
    }

    fn to_json(&self) -> Value {
        json!({"messages": self.counts, "rates": self.rates})
    }
}

/// The latest `engine_health` of one engine.
#[derive(Clone, Debug, Serialize)]
struct EngineSeen {
    instance: String,
    status: String,
    uptime_s: f64,
    received: u64,
    published: u64,
    /// Handler time, queue wait and delivery latency over the engine's last heartbeat period.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<dualbus_model::health::EngineLatency>,
}

impl From<EngineHealth> for EngineSeen {
    fn from(h: EngineHealth) -> EngineSeen {
        EngineSeen {
            instance: h.instance,
            status: h.status,
            uptime_s: h.uptime_s,
            received: h.counts.received.values().sum(),
            published: h.counts.published.values().sum(),
            latency: h.latency,
        }
    }
}

/// One connected WebSocket client.
struct Client {
    id: u64,
    kinds: KindFilter,
    queue: Mutex<ClientQueue>,
    ready: Notify,
}

impl Client {
    /// Queues a frame without waiting; true when the client lost its oldest frame.
    fn offer(&self, f: Frame) -> bool {
        let dropped = self.queue.lock().push(f);
        self.ready.notify_one();
        dropped
    }
}

/// What the dashboard knows, and who is listening.
struct FeedState {
    prices: PriceBoard,
    portfolio: Value,
    alerts: VecDeque<Value>,
    signals: VecDeque<Value>,
    traffic: Traffic,
    engines: BTreeMap<String, EngineSeen>,
    clients: Vec<Arc<Client>>,
    next_client: u64,
    /// `[data time ms, equity, drawdown]`, sampled once a second.
    equity_curve: VecDeque<[f64; 3]>,
    /// Per symbol `[data time ms, mid]`, sampled once a second.
    price_history: BTreeMap<String, VecDeque<[f64; 2]>>,
    /// The latest `trade_execution` payloads.
    fills: VecDeque<Value>,
    /// The latest `order_request` payloads.
    orders: VecDeque<Value>,
    /// Alerts by (kind, rule).
    alert_rules: BTreeMap<(String, String), AlertRule>,
    /// What halts trading now: the risk engine's circuit breaker, the strategy's halted
    /// symbols (from their heartbeats).
    halts: Value,
    buses: [BusTraffic; 2],
}

impl FeedState {
    fn snapshot(&self, uptime_s: f64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("prices".into(), self.prices.all());
        m.insert("portfolio".into(), self.portfolio.clone());
        m.insert("alerts".into(), json!(self.alerts));
        m.insert("signals".into(), json!(self.signals));
        m.insert("traffic".into(), self.traffic.to_json());
        m.insert("engines".into(), json!(self.engines));
        m.insert("clients".into(), json!(self.clients.len()));
        m.insert("uptime_s".into(), json!(uptime_s));
        m.insert("equity_curve".into(), json!(self.equity_curve));
        m.insert("price_history".into(), json!(self.price_history));
        m.insert("fills".into(), json!(self.fills));
        m.insert("orders".into(), json!(self.orders));
        self.live_summary(&mut m);
        m
    }

    /// What the snapshot and every `traffic` frame carry: alerts by rule, halts, per-bus
    /// traffic and per-lane latency.
    fn live_summary(&self, m: &mut Map<String, Value>) {
        m.insert(
            "alert_rules".into(),
            json!(self.alert_rules.values().collect::<Vec<_>>()),
        );
        m.insert("halts".into(), self.halts.clone());
        m.insert(
            "buses".into(),
            json!({"md": self.buses[0], "logic": self.buses[1]}),
        );
        m.insert("lanes".into(), self.lanes());
    }

    /// Per lane, over the engines' last heartbeats: the median of their p50 and the worst
    /// p99 of delivery latency, microseconds.
    fn lanes(&self) -> Value {
        let mut out = Map::new();
        for lane in crate::metrics::LaneId::ALL {
            let mut p50: Vec<f64> = Vec::new();
            let mut p99: Option<f64> = None;
            for e in self.engines.values() {
                let Some(p) = e
                    .latency
                    .as_ref()
                    .and_then(|l| l.delivery.get(lane.as_str()))
                else {
                    continue;
                };
                if let Some(x) = p.p50_us {
                    p50.push(x);
                }
                if let Some(x) = p.p99_us {
                    p99 = Some(p99.map_or(x, |y: f64| y.max(x)));
                }
            }
            p50.sort_by(f64::total_cmp);
            let median = (!p50.is_empty()).then(|| p50[p50.len() / 2]);
            out.insert(
                lane.as_str().into(),
                json!({"p50_us": median, "p99_us": p99}),
            );
        }
        Value::Object(out)
    }

    /// Adds a point to the equity curve and to each symbol's price history when they moved
    /// on in data time (called once a second).
    fn sample_history(&mut self) {
        let p = &self.portfolio["payload"];
        if let (Some(ts), Some(eq)) = (p["ts"].as_u64(), p["equity"].as_f64()) {
            let t = (ts / 1_000_000) as f64;
            if self.equity_curve.back().is_none_or(|l| l[0] < t) {
                let dd = p["drawdown"].as_f64().unwrap_or(0.0);
                push_bounded(&mut self.equity_curve, [t, eq, dd], EQUITY_POINTS);
            }
        }
        for (sym, level) in &self.prices.latest {
            let t = (level.ts / 1_000_000) as f64;
            let h = self.price_history.entry(sym.clone()).or_default();
            if h.back().is_none_or(|l| l[0] < t) {
                push_bounded(h, [t, level.mid], PRICE_POINTS);
            }
        }
    }

    fn wanted(&self, kind: &str) -> bool {
        self.clients.iter().any(|c| c.kinds.includes(kind))
    }
}

/// Shared by the engine (which updates it from the bus) and the server's connections.
struct Feed {
    state: Mutex<FeedState>,
    default_kinds: KindFilter,
    client_queue: usize,
    started: Instant,
    frames_sent: AtomicU64,
    frames_dropped: AtomicU64,
    /// Requests refused: over `max_clients`, without the token, from another origin, with a
    /// body.
    refused_clients: AtomicU64,
    refused_token: AtomicU64,
    refused_origin: AtomicU64,
    refused_body: AtomicU64,
    /// Requests the HTTP server refused before the router (head too large, too slow).
    http_refusals: Arc<telemetry::HttpRefusals>,
}

impl Feed {
    fn new(p: &WebSocketParams) -> Result<Feed, String> {
        let now = Instant::now();
        Ok(Feed {
            state: Mutex::new(FeedState {
                prices: PriceBoard::default(),
                portfolio: Value::Null,
                alerts: VecDeque::new(),
                signals: VecDeque::new(),
                traffic: Traffic::new(now),
                engines: BTreeMap::new(),
                clients: Vec::new(),
                next_client: 0,
                equity_curve: VecDeque::new(),
                price_history: BTreeMap::new(),
                fills: VecDeque::new(),
                orders: VecDeque::new(),
                alert_rules: BTreeMap::new(),
                halts: json!({"breaker": null, "halted": []}),
                buses: Default::default(),
            }),
            default_kinds: KindFilter::from_names(p.kinds_default.iter().map(|k| k.as_str()))?,
            client_queue: p.client_queue,
            started: now,
            frames_sent: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            refused_clients: AtomicU64::new(0),
            refused_token: AtomicU64::new(0),
            refused_origin: AtomicU64::new(0),
            refused_body: AtomicU64::new(0),
            http_refusals: Arc::default(),
        })
    }

    /// Refusals by reason, as `/health` and `/metrics` show them.
    fn refusals(&self) -> [(&'static str, u64); 6] {
        let http = &self.http_refusals;
        [
            ("max_clients", self.refused_clients.load(Ordering::Relaxed)),
            ("token", self.refused_token.load(Ordering::Relaxed)),
            ("origin", self.refused_origin.load(Ordering::Relaxed)),
            ("body", self.refused_body.load(Ordering::Relaxed)),
            (
                "head_too_large",
                http.head_too_large.load(Ordering::Relaxed),
            ),
            ("head_timeout", http.head_timeout.load(Ordering::Relaxed)),
        ]
    }

    fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn clients(&self) -> usize {
        self.state.lock().clients.len()
    }

    /// Queues `frame` for every client (`kind: None`) or those that asked for `kind`.
    fn fan_out(&self, clients: &[Arc<Client>], kind: Option<&str>, frame: String) {
        let frame = Frame::from(frame);
        let mut dropped = 0;
        for c in clients {
            if kind.is_none_or(|k| c.kinds.includes(k)) && c.offer(frame.clone()) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// A message as the unit tests give it: its bus by its kind's default route.
    #[cfg(test)]
    fn on_message(&self, msg: &Envelope) {
        let bus = if msg.kind == dualbus_core::EventKind::MarketData {
            BusId::MarketData
        } else {
            BusId::Logic
        };
        self.on_message_on(msg, bus)
    }

    fn on_message_on(&self, msg: &Envelope, bus: BusId) {
        let kind = msg.kind.as_str();
        let mut st = self.state.lock();
        st.traffic.count(kind);
        st.buses[bus.index()].total += 1;
        if kind == "market_data" {
            // Only quotes are subscribed; anything else under market_data is counted only.
            if msg.topic.as_str().starts_with("market_data.quote.") {
                match msg.enc.decode::<Quote>(&msg.payload) {
                    Ok(q) => st.prices.update(&q),
                    Err(e) => tracing::debug!(topic = %msg.topic, error = %e, "bad quote"),
                }
            }
            return;
        }
        if kind == "engine_health" {
            match msg.enc.decode::<EngineHealth>(&msg.payload) {
                Ok(h) => {
                    match h.engine.as_str() {
                        "risk" => st.halts["breaker"] = h.details["breaker"].clone(),
                        "strategy" => {
                            st.halts["halted"] =
                                h.details.get("halted").cloned().unwrap_or(json!([]))
                        }
                        _ => {}
                    }
                    st.engines.insert(h.engine.clone(), h.into());
                }
                Err(e) => tracing::debug!(topic = %msg.topic, error = %e, "bad engine_health"),
            }
        }
        let is_alert = ALERT_KINDS.contains(&kind);
        let keep = is_alert
            || kind == "strategy_signal"
            || kind == "portfolio_update"
            || kind == "trade_execution"
            || kind == "order_request";
        let wanted = st.wanted(kind);
        if !keep && !wanted {
            return; // nobody to tell: skip decoding
        }
        let payload = msg.enc.to_json_value(&msg.payload).unwrap_or_else(|e| {
            tracing::debug!(topic = %msg.topic, error = %e, "undecodable payload");
            Value::Null
        });
        if is_alert {
            let rule = alert_rule(kind, &payload);
            let e = st
                .alert_rules
                .entry((kind.to_string(), rule.clone()))
                .or_insert_with(|| AlertRule {
                    kind: kind.to_string(),
                    rule,
                    count: 0,
                    last_ts: 0,
                    last_symbol: None,
                    last_reason: String::new(),
                });
            e.count += 1;
            e.last_ts = msg.ts;
            e.last_symbol = payload
                .get("symbol")
                .and_then(Value::as_str)
                .map(str::to_string);
            e.last_reason = payload
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
        }
        let value = message_value(msg, payload);
        if wanted {
            self.fan_out(&st.clients, Some(kind), value.to_string());
        }
        let kept = match kind {
            "portfolio_update" => {
                st.portfolio = value;
                return;
            }
            "trade_execution" => {
                push_bounded(&mut st.fills, value, KEPT_TRADES);
                return;
            }
            "order_request" => {
                push_bounded(&mut st.orders, value, KEPT_TRADES);
                return;
            }
            "strategy_signal" => &mut st.signals,
            _ if is_alert => &mut st.alerts,
            _ => return,
        };
        if kept.len() >= KEPT {
            kept.pop_front();
        }
        kept.push_back(value);
    }

    fn flush_prices(&self) {
        let mut st = self.state.lock();
        if let Some(frame) = st.prices.take_changed() {
            self.fan_out(&st.clients, None, frame);
        }
    }

    fn tick_traffic(&self) {
        let mut st = self.state.lock();
        let now = Instant::now();
        let secs = now.duration_since(st.traffic.last_tick).as_secs_f64();
        st.traffic.tick(now);
        if secs > 0.0 {
            for b in st.buses.iter_mut() {
                b.rate = (b.total - b.at_last_tick) as f64 / secs;
                b.at_last_tick = b.total;
            }
        }
        st.sample_history();
        if st.clients.is_empty() {
            return;
        }
        let mut m = match st.traffic.to_json() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("type".into(), json!("traffic"));
        m.insert("engines".into(), json!(st.engines));
        m.insert("clients".into(), json!(st.clients.len()));
        m.insert("uptime_s".into(), json!(self.uptime_s()));
        st.live_summary(&mut m);
        self.fan_out(&st.clients, None, Value::Object(m).to_string());
    }

    /// A new client whose queue starts with the snapshot: taken under the lock that
    /// broadcasts, so the client misses and repeats nothing.
    fn register(&self, kinds: KindFilter) -> Arc<Client> {
        let mut st = self.state.lock();
        let id = st.next_client;
        st.next_client += 1;
        let client = Arc::new(Client {
            id,
            kinds,
            queue: Mutex::new(ClientQueue::new(self.client_queue)),
            ready: Notify::new(),
        });
        st.clients.push(client.clone());
        let mut snap = st.snapshot(self.uptime_s());
        snap.insert("type".into(), json!("snapshot"));
        client.offer(Value::Object(snap).to_string().into());
        client
    }

    fn unregister(&self, id: u64) {
        self.state.lock().clients.retain(|c| c.id != id);
    }

    fn health_json(&self) -> Value {
        let st = self.state.lock();
        let engines: BTreeMap<&str, Value> = st
            .engines
            .iter()
            .map(|(n, e)| {
                (
                    n.as_str(),
                    json!({"status": e.status, "uptime_s": e.uptime_s}),
                )
            })
            .collect();
        json!({
            "status": "ok",
            "engine": "websocket",
            "clients": st.clients.len(),
            "uptime_s": self.uptime_s(),
            "messages": st.traffic.counts,
            "engines": engines,
            "frames_sent": self.frames_sent.load(Ordering::Relaxed),
            "frames_dropped": self.frames_dropped.load(Ordering::Relaxed),
            "refused": self.refusals().into_iter().collect::<BTreeMap<_, _>>(),
        })
    }

    fn state_json(&self) -> Value {
        Value::Object(self.state.lock().snapshot(self.uptime_s()))
    }
}

/// Removes a client when its connection ends, however it ends.
struct Registered<'a> {
    feed: &'a Feed,
    client: Arc<Client>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.feed.unregister(self.client.id);
    }
}

/// The server's shared state, as every route sees it.
#[derive(Clone)]
struct App {
    feed: Arc<Feed>,
    shutdown: watch::Receiver<bool>,
    /// The WebSocket clients' tasks (they leave the HTTP server once upgraded); stop waits
    /// for them.
    clients: Arc<Mutex<JoinSet<()>>>,
    /// Clients connected or being connected.
    open: Arc<AtomicU64>,
    max_clients: usize,
    /// See [`WebSocketParams::token`].
    token: Option<Arc<str>>,
    /// See [`WebSocketParams::allowed_origins`].
    allowed_origins: Arc<[String]>,
}

/// The environment variable that gives the token when the configuration does not.
pub const TOKEN_ENV: &str = "DUALBUS_DASHBOARD_TOKEN";

/// The cookie that carries the token for a browser.
const TOKEN_COOKIE: &str = "dualbus_token";

/// Equal strings, compared in a time that does not depend on where they first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// How a request presented the token, if it did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    Header,
    Cookie,
    Query,
}

/// Where `req` carries `token`: the `Authorization: Bearer` header, the cookie or the query.
pub(crate) fn presented(
    headers: &HeaderMap,
    query: Option<&str>,
    token: &str,
) -> Option<Presented> {
    let t = token.as_bytes();
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .any(|v| same_secret(v.trim().as_bytes(), t));
    if bearer {
        return Some(Presented::Header);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .any(|v| same_secret(v.as_bytes(), t));
    if cookie {
        return Some(Presented::Cookie);
    }
    let query = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("token="))
        .any(|v| same_secret(v.as_bytes(), t));
    query.then_some(Presented::Query)
}

/// Refuses (413) a request that carries a body: the dashboard only serves GETs, so a body is
/// never read, and a client sending one is told at once rather than left writing into a
/// connection nobody reads.
async fn refuse_body(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = req.headers();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || h.contains_key(header::TRANSFER_ENCODING);
    if !declared {
        return next.run(req).await;
    }
    app.feed.refused_body.fetch_add(1, Ordering::Relaxed);
    let mut r = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the dashboard takes no request bodies\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// The dashboard's refusals and frames in `/metrics`.
struct DashboardCollector(Arc<Feed>);

impl std::fmt::Debug for DashboardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DashboardCollector")
    }
}

impl prometheus_client::collector::Collector for DashboardCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;
        let feed = &self.0;
        let mut m = enc.encode_descriptor(
            "dualbus_dashboard_refused",
            "Dashboard requests refused, by reason (max_clients, token, origin, body, head_too_large, head_timeout)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in feed.refusals() {
            ConstCounter::new(n).encode(m.encode_family(&[("reason", reason)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "dualbus_dashboard_frames",
            "WebSocket frames the dashboard sent, and dropped from slow clients' queues",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("sent", feed.frames_sent.load(Ordering::Relaxed)),
            ("dropped", feed.frames_dropped.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// With a token configured, refuses (401) a request that does not carry it, except the
/// probes; a request that carried it in the query gets it back as a cookie.
async fn require_token(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = app.token.clone() else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    match presented(req.headers(), req.uri().query(), &token) {
        None => {
            app.feed.refused_token.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "this dashboard needs its token: open /?token=TOKEN in a browser, or send \
                 Authorization: Bearer TOKEN (the token is websocket.token or \
                 DUALBUS_DASHBOARD_TOKEN where the dashboard runs)\n",
            )
                .into_response()
        }
        Some(Presented::Query) => {
            let mut res = next.run(req).await;
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(v) = header::HeaderValue::from_str(&cookie) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Some(_) => next.run(req).await,
    }
}

/// Whether a browser page from `origin` may open `/ws` on a server reached as `host`: its own
/// origin (`http://host` or `https://host`) or one of `allowed`.
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let own = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    own || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// Checks a `/ws` request: the kinds it asks for and the WebSocket handshake. On success the
/// `Sec-WebSocket-Accept` value and the filter; else the status and text to answer with.
pub(crate) fn check_upgrade(
    headers: &HeaderMap,
    query: Option<&str>,
    default: &KindFilter,
) -> Result<(String, KindFilter), (StatusCode, String)> {
    let bad = |m: String| Err((StatusCode::BAD_REQUEST, m + "\n"));
    let kinds = match parse_kinds(query, default) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let upgrade = header(header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (true, Some(key)) = (upgrade, header(header::SEC_WEBSOCKET_KEY)) else {
        return bad("/ws expects a WebSocket upgrade request".into());
    };
    if header(header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return bad("/ws speaks WebSocket version 13 only".into());
    }
    Ok((derive_accept_key(key.trim().as_bytes()), kinds))
}

fn json_response(v: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// `GET /ws`: upgrades to WebSocket (through hyper, so the connection speaks the same
/// tokio-tungstenite as the Binance client) and feeds the client until it leaves or the
/// server stops.
async fn ws_route(State(app): State<App>, mut req: axum::extract::Request) -> Response {
    let (accept, kinds) =
        match check_upgrade(req.headers(), req.uri().query(), &app.feed.default_kinds) {
            Ok(ok) => ok,
            Err(reply) => return reply.into_response(),
        };
    // Browsers always send Origin; other clients (scripts, tests) may not, and pass.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if !origin_allowed(origin, host, &app.allowed_origins) {
            app.feed.refused_origin.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::FORBIDDEN,
                format!(
                    "a page from {origin:?} may not open this feed; add it to \
                     websocket.allowed_origins if it should\n"
                ),
            )
                .into_response();
        }
    }
    // Counted before the answer, so a burst of connections cannot pass the limit together.
    let open = app.open.fetch_add(1, Ordering::SeqCst) as usize;
    if open >= app.max_clients {
        app.open.fetch_sub(1, Ordering::SeqCst);
        app.feed.refused_clients.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} clients are connected, the most this dashboard serves; \
                 set websocket.max_clients\n",
                app.max_clients
            ),
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    {
        let mut tasks = app.clients.lock();
        // Reap finished clients so the set holds only the live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let app = task_app;
            let _open = OpenClient(app.open.clone());
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            // Browsers send only small control and text frames; nothing needs more.
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 << 10))
                .max_frame_size(Some(64 << 10));
            let ws = WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            feed_client(ws, &app.feed, kinds, app.shutdown.clone()).await;
        });
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Counts a client as open until it ends.
struct OpenClient(Arc<AtomicU64>);

impl Drop for OpenClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed; use GET\n"),
    )
        .into_response()
}

/// The dashboard's routes; with `metrics`, also `/metrics`, `/healthz` and `/readyz`.
fn routes(app: App, metrics: Option<Arc<BusMetrics>>) -> axum::Router {
    let get_only = |r: axum::routing::MethodRouter<App>| r.fallback(method_not_allowed);
    let page = || async {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            PAGE,
        )
    };
    let asset = |content_type: &'static str, body: &'static str| {
        get_only(get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "max-age=3600"),
                ],
                body,
            )
        }))
    };
    let router = axum::Router::new()
        .route("/", get_only(get(page)))
        .route(
            "/assets/uplot.js",
            asset("text/javascript; charset=utf-8", UPLOT_JS),
        )
        .route(
            "/assets/uplot.css",
            asset("text/css; charset=utf-8", UPLOT_CSS),
        )
        .route(
            "/health",
            get_only(get(|State(app): State<App>| async move {
                json_response(app.feed.health_json())
            })),
        )
        .route(
            "/api/state",
            get_only(get(|State(app): State<App>| async move {
                json_response(app.feed.state_json())
            })),
        )
        .route("/ws", get_only(get(ws_route)))
        .with_state(app.clone());
    let router = match metrics {
        Some(m) => router.merge(telemetry::routes(m)),
        None => router,
    };
    router
        .fallback(telemetry::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(app, refuse_body))
}

/// Sends a client its queued frames until it leaves or the server stops.
async fn feed_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    feed: &Feed,
    kinds: KindFilter,
    mut shutdown: watch::Receiver<bool>,
) {
    let reg = Registered {
        feed,
        client: feed.register(kinds),
    };
    let client = &reg.client;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = stopping(&mut shutdown) => break,
            _ = client.ready.notified() => {
                client.queue.lock().take(&mut out);
                let n = out.len() as u64;
                let sent = tokio::select! {
                    // A client that stopped reading must not hold up the stop.
                    _ = stopping(&mut shutdown) => break,
                    r = send_all(&mut ws, &mut out) => r,
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "client gone");
                    return;
                }
                feed.frames_sent.fetch_add(n, Ordering::Relaxed);
            }
            incoming = ws.next() => match incoming {
                // The client closed (tungstenite answers its close frame) or vanished.
                None | Some(Err(_)) => return,
                // Pings are answered by tungstenite; the client has nothing else to say.
                Some(Ok(_)) => {}
            },
        }
    }
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "server stopping".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
}

async fn send_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    out: &mut Vec<Frame>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for f in out.drain(..) {
        ws.feed(Message::Text(f)).await?;
    }
    ws.flush().await
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
