//! The feed: what the engine keeps of the buses (prices, equity, alerts, signals, traffic,
//! engines) and hands to each client's bounded queue, with the kinds each client asked for.

use super::*;

/// Per bus (MarketData, Engine Logic): messages seen since the start and their rate.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct BusTraffic {
    pub(super) total: u64,
    pub(super) rate: f64,
    #[serde(skip)]
    pub(super) at_last_tick: u64,
}

/// Alerts of one kind and rule: how many, and the latest.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AlertRule {
    pub(super) kind: String,
    pub(super) rule: String,
    pub(super) count: u64,
    pub(super) last_ts: u64,
    pub(super) last_symbol: Option<String>,
    pub(super) last_reason: String,
}

/// The rule of an alert payload (`rule`, else the kind's own).
pub(super) fn alert_rule(kind: &str, payload: &Value) -> String {
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
pub(super) fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// The kinds one client receives as `message` frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KindFilter(pub(super) BTreeSet<&'static str>);

impl KindFilter {
    pub(super) fn includes(&self, kind: &str) -> bool {
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
pub(super) fn percent_decode(s: &str) -> String {
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
pub(super) struct PriceLevel {
    pub(super) bid: f64,
    pub(super) ask: f64,
    pub(super) mid: f64,
    pub(super) ts: u64,
}

/// Quotes coalesced per symbol: the latest of each, and which changed since the last flush.
#[derive(Debug, Default)]
pub(super) struct PriceBoard {
    pub(super) latest: BTreeMap<String, PriceLevel>,
    pub(super) changed: BTreeSet<String>,
}

impl PriceBoard {
    /// Keeps `q` unless the symbol already has a later quote.
    pub(super) fn update(&mut self, q: &Quote) {
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
    pub(super) fn take_changed(&mut self) -> Option<String> {
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

    pub(super) fn all(&self) -> Value {
        json!(self.latest)
    }
}

/// One frame queued for a client: JSON text, shared by every client it goes to.
pub(super) type Frame = Utf8Bytes;

/// A client's outgoing frames: bounded; when full the oldest is dropped and counted, and the
/// next read starts with a `lagged` frame saying how many were lost.
#[derive(Debug)]
pub(super) struct ClientQueue {
    pub(super) cap: usize,
    pub(super) frames: VecDeque<Frame>,
    pub(super) skipped: u64,
}

impl ClientQueue {
    pub(super) fn new(cap: usize) -> ClientQueue {
        ClientQueue {
            cap: cap.max(1),
            frames: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Queues `f`; true when the oldest frame was dropped to make room.
    pub(super) fn push(&mut self, f: Frame) -> bool {
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
    pub(super) fn take(&mut self, out: &mut Vec<Frame>) {
        if self.skipped > 0 {
            out.push(lagged_frame(self.skipped).into());
            self.skipped = 0;
        }
        out.extend(self.frames.drain(..));
    }
}

pub(super) fn lagged_frame(skipped: u64) -> String {
    json!({"type": "lagged", "skipped": skipped}).to_string()
}

/// The `message` frame of one bus message, as a JSON value (also kept for the snapshot).
pub(super) fn message_value(msg: &Envelope, payload: Value) -> Value {
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
pub(super) struct Traffic {
    pub(super) counts: BTreeMap<String, u64>,
    pub(super) rates: BTreeMap<String, f64>,
    pub(super) at_last_tick: BTreeMap<String, u64>,
    pub(super) last_tick: Instant,
}

impl Traffic {
    pub(super) fn new(now: Instant) -> Traffic {
        Traffic {
            counts: BTreeMap::new(),
            rates: BTreeMap::new(),
            at_last_tick: BTreeMap::new(),
            last_tick: now,
        }
    }

    pub(super) fn count(&mut self, kind: &str) {
        match self.counts.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(kind.to_string(), 1);
            }
        }
    }

    /// Rates since the previous tick (divided by the time actually elapsed, since a timer
    /// tick can be late).
    pub(super) fn tick(&mut self, now: Instant) {
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

    pub(super) fn to_json(&self) -> Value {
        json!({"messages": self.counts, "rates": self.rates})
    }
}

/// The latest `engine_health` of one engine.
#[derive(Clone, Debug, Serialize)]
pub(super) struct EngineSeen {
    pub(super) instance: String,
    pub(super) status: String,
    pub(super) uptime_s: f64,
    pub(super) received: u64,
    pub(super) published: u64,
    /// Handler time, queue wait and delivery latency over the engine's last heartbeat period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) latency: Option<dualbus_model::health::EngineLatency>,
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
pub(super) struct Client {
    pub(super) id: u64,
    pub(super) kinds: KindFilter,
    pub(super) queue: Mutex<ClientQueue>,
    pub(super) ready: Notify,
}

impl Client {
    /// Queues a frame without waiting; true when the client lost its oldest frame.
    pub(super) fn offer(&self, f: Frame) -> bool {
        let dropped = self.queue.lock().push(f);
        self.ready.notify_one();
        dropped
    }
}

/// What the dashboard knows, and who is listening.
pub(super) struct FeedState {
    pub(super) prices: PriceBoard,
    pub(super) portfolio: Value,
    pub(super) alerts: VecDeque<Value>,
    pub(super) signals: VecDeque<Value>,
    pub(super) traffic: Traffic,
    pub(super) engines: BTreeMap<String, EngineSeen>,
    pub(super) clients: Vec<Arc<Client>>,
    pub(super) next_client: u64,
    /// `[data time ms, equity, drawdown]`, sampled once a second.
    pub(super) equity_curve: VecDeque<[f64; 3]>,
    /// Per symbol `[data time ms, mid]`, sampled once a second.
    pub(super) price_history: BTreeMap<String, VecDeque<[f64; 2]>>,
    /// The latest `trade_execution` payloads.
    pub(super) fills: VecDeque<Value>,
    /// The latest `order_request` payloads.
    pub(super) orders: VecDeque<Value>,
    /// Alerts by (kind, rule).
    pub(super) alert_rules: BTreeMap<(String, String), AlertRule>,
    /// What halts trading now: the risk engine's circuit breaker, the strategy's halted
    /// symbols (from their heartbeats).
    pub(super) halts: Value,
    pub(super) buses: [BusTraffic; 2],
}

impl FeedState {
    pub(super) fn snapshot(&self, uptime_s: f64) -> Map<String, Value> {
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
    pub(super) fn live_summary(&self, m: &mut Map<String, Value>) {
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
    pub(super) fn lanes(&self) -> Value {
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
    pub(super) fn sample_history(&mut self) {
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

    pub(super) fn wanted(&self, kind: &str) -> bool {
        self.clients.iter().any(|c| c.kinds.includes(kind))
    }
}

/// Shared by the engine (which updates it from the bus) and the server's connections.
pub(super) struct Feed {
    pub(super) state: Mutex<FeedState>,
    pub(super) default_kinds: KindFilter,
    pub(super) client_queue: usize,
    pub(super) started: Instant,
    pub(super) frames_sent: AtomicU64,
    pub(super) frames_dropped: AtomicU64,
    /// Requests refused: over `max_clients`, without the token, from another origin, with a
    /// body.
    pub(super) refused_clients: AtomicU64,
    pub(super) refused_token: AtomicU64,
    pub(super) refused_origin: AtomicU64,
    pub(super) refused_body: AtomicU64,
    /// Requests the HTTP server refused before the router (head too large, too slow).
    pub(super) http_refusals: Arc<telemetry::HttpRefusals>,
}

impl Feed {
    pub(super) fn new(p: &WebSocketParams) -> Result<Feed, String> {
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
    pub(super) fn refusals(&self) -> [(&'static str, u64); 6] {
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

    pub(super) fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(super) fn clients(&self) -> usize {
        self.state.lock().clients.len()
    }

    /// Queues `frame` for every client (`kind: None`) or those that asked for `kind`.
    pub(super) fn fan_out(&self, clients: &[Arc<Client>], kind: Option<&str>, frame: String) {
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
    pub(super) fn on_message(&self, msg: &Envelope) {
        let bus = if msg.kind == dualbus_core::EventKind::MarketData {
            BusId::MarketData
        } else {
            BusId::Logic
        };
        self.on_message_on(msg, bus)
    }

    pub(super) fn on_message_on(&self, msg: &Envelope, bus: BusId) {
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

    pub(super) fn flush_prices(&self) {
        let mut st = self.state.lock();
        if let Some(frame) = st.prices.take_changed() {
            self.fan_out(&st.clients, None, frame);
        }
    }

    pub(super) fn tick_traffic(&self) {
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
    pub(super) fn register(&self, kinds: KindFilter) -> Arc<Client> {
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

    pub(super) fn unregister(&self, id: u64) {
        self.state.lock().clients.retain(|c| c.id != id);
    }

    pub(super) fn health_json(&self) -> Value {
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

    pub(super) fn state_json(&self) -> Value {
        Value::Object(self.state.lock().snapshot(self.uptime_s()))
    }
}

/// Removes a client when its connection ends, however it ends.
pub(super) struct Registered<'a> {
    pub(super) feed: &'a Feed,
    pub(super) client: Arc<Client>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.feed.unregister(self.client.id);
    }
}
