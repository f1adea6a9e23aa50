//! The MarketData hub: the centre of the MarketData bus's star (docs/architecture.md,
//! "The MarketData hub").
//!
//! The hub is the only component that talks to the upstream [`Provider`]. It
//!
//! * validates what the provider sends ([`Validator`]: rejected data is counted by reason,
//!   never published) and publishes it on the MarketData bus as
//!   `market_data.{trade,quote,bar,book}.{SYMBOL}`, the payload being the
//!   [`Trade`](dualbus_model::market::Trade), [`Quote`],
//!   [`Bar`] or [`BookSnapshot`](dualbus_model::market::BookSnapshot) as JSON or MessagePack;
//! * keeps a snapshot cache (latest trade, quote and bar per symbol) and a history cache of
//!   bars with a time-to-live per data type;
//! * coalesces concurrent identical history requests into one upstream call;
//! * serves `hub_request.snapshot.{SYMBOL}` and `hub_request.history.{SYMBOL}` requests over
//!   request/reply ([`HubClient`] is the typed client side);
//! * runs the [paper venue](crate::venue): `order_request` in, `trade_execution` out;
//! * counts requests, hits, misses, upstream calls and coalesced requests ([`HubCounters`]).
//!
//! Requests travel as the `hub_request` kind, a custom kind, which routes to the Engine Logic
//! bus (docs/architecture.md, "Buses and routing by kind"), so they never queue behind a flood
//! of market data. A request is a cache hit when the answer comes from the cache: a snapshot
//! with data for the symbol, a history answer younger than its TTL. Every other request is a
//! miss; a miss either makes the upstream call or joins one already in flight (coalesced).

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use crate::market::{Reject, SymbolMap, Validator};
use crate::provider::{HistoryRequest, Provider, ProviderError};
use crate::venue::{PaperVenue, VenueCounts, VenueOptions};
use async_trait::async_trait;
use dualbus_bus::{DualBus, HandlerError, RequestError};
use dualbus_core::{Envelope, EventKind, Priority, Topic};
use dualbus_model::hub::{hub_request_kind, HistoryQuery, HubReply, Snapshot, HUB_REQUEST};
use dualbus_model::market::{Bar, DataType, MarketEvent, Quote};
use dualbus_model::orders::{Execution, OrderRequest};
use dualbus_model::Message;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hub settings (`dualbus hub` uses the defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubOptions {
    /// Time-to-live of cached history, per data type, in seconds. Providers offer bar history
    /// only, so `bar` is the entry that matters (default 30 s).
    pub history_ttl_secs: HashMap<DataType, f64>,
    /// Most cached history answers kept (the oldest expire first beyond this).
    pub history_entries: usize,
    /// Paper venue settings.
    pub venue: VenueOptions,
    /// Before the live data, publish each symbol's last this many one-minute bars of the
    /// provider's history as `market_data.bar.{SYMBOL}` (0: none), so that engines working on
    /// bars (features, factor, ML) have their windows full from the first live minute. The
    /// bars go out one minute (one bar per symbol) at a time, each once every group has read
    /// the previous one and at least [`WARM_MINUTE_GAP`] after it (at most
    /// [`WARM_MINUTE_WAIT`]), so the warm-up never lands on the engines as one burst.
    pub warm_bars: u32,
    /// For a symbol whose data has no quotes (a trade file), publish with each trade a quote
    /// at the trade's price (bid = ask, just before the trade, released with it under a gate)
    /// so that marks, signals and the paper venue work, and the venue holds a trade's price
    /// before any engine reacts to the trade; a simplification for backtests on trade data.
    /// Stops for a symbol at its first real quote.
    pub quotes_from_trades: bool,
    /// Lockstep: publish one event per permit of this gate (a backtest grants the next once
    /// every engine is idle). `None`: as fast as the provider yields.
    #[serde(skip)]
    pub gate: Option<FeedGate>,
}

/// Lets a hub's events out one at a time ([`HubOptions::gate`]).
#[derive(Clone, Debug)]
pub struct FeedGate {
    permits: Arc<tokio::sync::Semaphore>,
    passed: Arc<AtomicU64>,
}

impl Default for FeedGate {
    fn default() -> Self {
        FeedGate::new()
    }
}

impl FeedGate {
    /// A closed gate.
    pub fn new() -> FeedGate {
        FeedGate {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            passed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lets one more event out.
    pub fn open_one(&self) {
        self.permits.add_permits(1);
    }

    /// Events let out so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }

    /// Waits for a permit (the hub's side). Cancel-safe.
    async fn pass(&self) {
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
            self.passed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            history_ttl_secs: HashMap::from([(DataType::Bar, 30.0)]),
            history_entries: 10_000,
            venue: VenueOptions::default(),
            warm_bars: 0,
            quotes_from_trades: false,
            gate: None,
        }
    }
}

impl HubOptions {
    fn ttl(&self, t: DataType) -> Duration {
        let secs = self
            .history_ttl_secs
            .get(&t)
            .copied()
            .unwrap_or(30.0)
            .max(0.0);
        // Too large for a Duration (`inf`, `1e300`): never expires. `from_secs_f64` would
        // panic inside the task answering the request.
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }
}

/// Counters of the hub (cheap to read while it runs).
#[derive(Debug, Default)]
pub struct HubCounters {
    requests: AtomicU64,
    snapshot_requests: AtomicU64,
    history_requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    upstream_calls: AtomicU64,
    upstream_errors: AtomicU64,
    coalesced: AtomicU64,
    published: AtomicU64,
    bad_requests: AtomicU64,
}

/// A copy of the hub's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HubStats {
    /// Snapshot and history requests served.
    pub requests: u64,
    /// Of which snapshot requests.
    pub snapshot_requests: u64,
    /// Of which history requests.
    pub history_requests: u64,
    /// Answered from the cache.
    pub hits: u64,
    /// Not answered from the cache: a snapshot of a symbol without data yet (answered with an
    /// error), or history that made an upstream call or joined one in flight.
    pub misses: u64,
    /// Calls to the provider's history.
    pub upstream_calls: u64,
    /// Upstream calls that failed.
    pub upstream_errors: u64,
    /// Misses that joined an upstream call already in flight.
    pub coalesced: u64,
    /// `hits / requests` (0 without requests).
    pub hit_rate: f64,
    /// `upstream_calls / requests` (0 without requests).
    pub upstream_ratio: f64,
    /// Market data messages published.
    pub published: u64,
    /// Requests that could not be read (bad topic or body).
    pub bad_requests: u64,
    /// Market data accepted by the validator.
    pub accepted: u64,
    /// Market data rejected, by reason.
    pub rejected: HashMap<String, u64>,
    /// Unreadable rows or frames the provider skipped.
    pub provider_skipped: u64,
    /// Whether the provider's stream has ended (a finished replay).
    pub feed_done: bool,
    /// Paper venue counters.
    pub venue: VenueCounts,
}

/// One cached or in-flight history answer.
type HistoryCell = Arc<tokio::sync::OnceCell<Result<Arc<Vec<Bar>>, String>>>;

/// History answers by request, with their age; and the requests in flight upstream.
#[derive(Default)]
struct HistoryCache {
    done: HashMap<HistoryRequest, (Instant, Arc<Vec<Bar>>)>,
    inflight: HashMap<HistoryRequest, HistoryCell>,
}

struct Shared {
    opts: HubOptions,
    provider: Arc<dyn Provider>,
    snapshots: RwLock<SymbolMap<String, Snapshot>>,
    history: Mutex<HistoryCache>,
    counters: HubCounters,
    validator: Mutex<Validator>,
    venue: Mutex<PaperVenue>,
    skipped: AtomicU64,
    feed_done: AtomicBool,
    feed_ended: tokio::sync::Notify,
    /// History requests being answered (awaited on stop).
    answering: AtomicU64,
}

impl Shared {
    fn stats(&self) -> HubStats {
        let c = &self.counters;
        let requests = c.requests.load(Ordering::Relaxed);
        let hits = c.hits.load(Ordering::Relaxed);
        let upstream = c.upstream_calls.load(Ordering::Relaxed);
        let ratio = |n: u64| {
            if requests == 0 {
                0.0
            } else {
                n as f64 / requests as f64
            }
        };
        let v = self.validator.lock();
        HubStats {
            requests,
            snapshot_requests: c.snapshot_requests.load(Ordering::Relaxed),
            history_requests: c.history_requests.load(Ordering::Relaxed),
            hits,
            misses: c.misses.load(Ordering::Relaxed),
            upstream_calls: upstream,
            upstream_errors: c.upstream_errors.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            hit_rate: ratio(hits),
            upstream_ratio: ratio(upstream),
            published: c.published.load(Ordering::Relaxed),
            bad_requests: c.bad_requests.load(Ordering::Relaxed),
            accepted: v.accepted(),
            rejected: v
                .rejections()
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            provider_skipped: self.skipped.load(Ordering::Relaxed),
            feed_done: self.feed_done.load(Ordering::Relaxed),
            venue: self.venue.lock().counts(),
        }
    }

    fn snapshot(&self, symbol: &str) -> Option<Snapshot> {
        self.snapshots.read().get(symbol).cloned()
    }

    /// Answers a history request from the cache, from a call in flight, or upstream.
    async fn history(&self, req: HistoryRequest) -> Result<Arc<Vec<Bar>>, String> {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.history_requests.fetch_add(1, Ordering::Relaxed);
        let ttl = self.opts.ttl(DataType::Bar);
        let (cell, leader) = {
            let mut h = self.history.lock();
            if let Some((at, bars)) = h.done.get(&req) {
                if at.elapsed() < ttl {
                    c.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(bars.clone());
                }
            }
            c.misses.fetch_add(1, Ordering::Relaxed);
            match h.inflight.get(&req) {
                Some(cell) => {
                    c.coalesced.fetch_add(1, Ordering::Relaxed);
                    (cell.clone(), false)
                }
                None => {
                    let cell: HistoryCell = Default::default();
                    h.inflight.insert(req.clone(), cell.clone());
                    (cell, true)
                }
            }
        };
        if !leader {
            // Waits for the leader's call (or makes it, should the leader have been cancelled).
            return cell
                .get_or_init(|| self.call_upstream(req.clone()))
                .await
                .clone();
        }
        let res = cell
            .get_or_init(|| self.call_upstream(req.clone()))
            .await
            .clone();
        let mut h = self.history.lock();
        h.inflight.remove(&req);
        if let Ok(bars) = &res {
            if h.done.len() >= self.opts.history_entries {
                // Full: drop what has expired, then the oldest.
                h.done.retain(|_, (at, _)| at.elapsed() < ttl);
                if h.done.len() >= self.opts.history_entries {
                    if let Some(oldest) = h
                        .done
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(k, _)| k.clone())
                    {
                        h.done.remove(&oldest);
                    }
                }
            }
            h.done.insert(req, (Instant::now(), bars.clone()));
        }
        res
    }

    async fn call_upstream(&self, req: HistoryRequest) -> Result<Arc<Vec<Bar>>, String> {
        self.counters.upstream_calls.fetch_add(1, Ordering::Relaxed);
        match self.provider.history(&req).await {
            Ok(bars) => Ok(Arc::new(bars)),
            Err(e) => {
                self.counters
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                Err(e.to_string())
            }
        }
    }
}

/// Topic cache: one parsed [`Topic`] per (symbol, data type).
#[derive(Default)]
struct Topics {
    by_symbol: SymbolMap<String, [Option<Topic>; 4]>,
}

impl Topics {
    fn get(&mut self, t: DataType, symbol: &str) -> Result<Topic, String> {
        let slot = t as usize;
        if let Some(Some(topic)) = self.by_symbol.get(symbol).map(|s| &s[slot]) {
            return Ok(topic.clone());
        }
        let topic = Topic::new(&format!("market_data.{}.{symbol}", t.as_str()))
            .map_err(|e| format!("symbol {symbol:?} cannot be a topic segment: {e}"))?;
        self.by_symbol.entry(symbol.to_string()).or_default()[slot] = Some(topic.clone());
        Ok(topic)
    }
}

/// The MarketData hub engine (`marketdata`).
pub struct MarketDataHub {
    shared: Arc<Shared>,
    feed: Option<tokio::task::JoinHandle<()>>,
    stop_feed: Arc<tokio::sync::Notify>,
}

/// A cheap handle to read a running hub's counters and caches.
#[derive(Clone)]
pub struct HubHandle {
    shared: Arc<Shared>,
}

impl HubHandle {
    /// The counters now.
    pub fn stats(&self) -> HubStats {
        self.shared.stats()
    }

    /// The cached snapshot of `symbol`.
    pub fn snapshot(&self, symbol: &str) -> Option<Snapshot> {
        self.shared.snapshot(symbol)
    }

    /// Whether the provider's data has ended (see [`HubHandle::feed_done`]).
    pub fn is_feed_done(&self) -> bool {
        self.shared.feed_done.load(Ordering::SeqCst)
    }

    /// Resolves once the provider's stream has ended (never, for a live provider).
    pub async fn feed_done(&self) {
        loop {
            // Registered before the flag is checked: a wake-up between the two is not lost.
            let notified = self.shared.feed_ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.feed_done.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl MarketDataHub {
    /// A hub over `provider`.
    pub fn new(provider: Arc<dyn Provider>, opts: HubOptions) -> MarketDataHub {
        let symbols = provider.instruments().into_iter().map(|i| i.symbol);
        let venue = PaperVenue::new(opts.venue.clone(), symbols);
        MarketDataHub {
            shared: Arc::new(Shared {
                opts,
                provider,
                snapshots: Default::default(),
                history: Default::default(),
                counters: Default::default(),
                validator: Mutex::new(Validator::new()),
                venue: Mutex::new(venue),
                skipped: AtomicU64::new(0),
                feed_done: AtomicBool::new(false),
                feed_ended: tokio::sync::Notify::new(),
                answering: AtomicU64::new(0),
            }),
            feed: None,
            stop_feed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A handle for counters and caches, usable while the hub runs.
    pub fn handle(&self) -> HubHandle {
        HubHandle {
            shared: self.shared.clone(),
        }
    }
}

/// How long a stop waits for a market-data batch being published before giving it up.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Least time between two minutes of warm-up bars ([`HubOptions::warm_bars`]): what the engines
/// downstream of the bars (features, then ML, factor, strategy) take to handle one minute.
pub const WARM_MINUTE_GAP: Duration = Duration::from_millis(4);

/// Longest wait for the groups to read a minute of warm-up bars before the next goes out (a
/// stopped consumer must not hold the hub).
pub const WARM_MINUTE_WAIT: Duration = Duration::from_millis(100);

/// Waits until no group of `stream` has an entry it has not handled, at most `within`.
async fn drained(
    ctx: &EngineContext,
    bus: dualbus_bus::BusId,
    streams: &[dualbus_core::transport::StreamKey],
    within: Duration,
) {
    let until = Instant::now() + within;
    let transport = ctx.bus().transport(bus);
    for stream in streams {
        while Instant::now() < until {
            match transport.unread(stream).await {
                Ok(0) => break,
                Ok(_) => tokio::time::sleep(Duration::from_micros(500)).await,
                Err(_) => return,
            }
        }
    }
}

/// Publishes the last `warm_bars` bars of each symbol's history (see [`HubOptions::warm_bars`]).
async fn warm(shared: &Shared, ctx: &EngineContext) {
    let bus = ctx.bus();
    let mut bars = Vec::new();
    for inst in shared.provider.instruments() {
        let req = HistoryRequest {
            symbol: inst.symbol.clone(),
            bar_secs: 60,
            limit: shared.opts.warm_bars,
            end_ts: None,
        };
        match shared.provider.history(&req).await {
            Ok(b) => bars.extend(b),
            Err(e) => tracing::warn!(symbol = %inst.symbol, error = %e, "no warm-up history"),
        }
    }
    // In time order across symbols, as live data comes: a cross-sectional engine (factor)
    // groups bars by period.
    bars.sort_by(|a, b| (a.ts, &a.symbol).cmp(&(b.ts, &b.symbol)));
    let mut envs = Vec::with_capacity(bars.len());
    for b in bars {
        let ev = MarketEvent::Bar(b);
        if let Err(reason) = shared.validator.lock().validate(&ev) {
            log_reject(reason, &ev);
            continue;
        }
        let MarketEvent::Bar(b) = ev else {
            unreachable!("built above")
        };
        match bus.envelope(Bar::kind(), &b.topic(), Bar::PRIORITY, &b) {
            Ok(env) => envs.push((b.ts, env)),
            Err(e) => tracing::warn!(error = %e, "warm-up bar not published"),
        }
    }
    // One minute (bars of one start time) per batch; in lockstep (a gate) the gate paces.
    let paced = shared.opts.gate.is_none();
    let route = bus.route(&EventKind::MarketData, Priority::Normal);
    // Every partition's stream (one without `[md] partitions`).
    let streams = bus.router().kind_streams(route.bus, &EventKind::MarketData);
    let mut rest = envs.into_iter().peekable();
    while let Some((ts, first)) = rest.next() {
        let mut minute = vec![first];
        while let Some((_, e)) = rest.next_if(|(t, _)| *t == ts) {
            minute.push(e);
        }
        let n = minute.len() as u64;
        let sent = Instant::now();
        match ctx.publish_batch(minute).await {
            Ok(()) => {
                shared.counters.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "warm-up bars not published"),
        }
        if paced && rest.peek().is_some() {
            drained(ctx, route.bus, &streams, WARM_MINUTE_WAIT).await;
            tokio::time::sleep_until((sent + WARM_MINUTE_GAP).into()).await;
        }
    }
}

/// Adds before each trade of a symbol without quotes of its own a quote at the trade's price,
/// and marks it in `joined` (parallel to `events`: whether an event goes out with the next
/// one). The quote comes first so that the venue holds the trade's price before any engine
/// reacts to the trade; under a gate the two go out on one permit.
fn quotes_from_trades(
    events: &mut Vec<MarketEvent>,
    joined: &mut Vec<bool>,
    quoted: &mut std::collections::HashSet<String>,
) {
    let mut out = Vec::with_capacity(events.len() * 2);
    joined.clear();
    for ev in events.drain(..) {
        let derived = match &ev {
            MarketEvent::Quote(q) => {
                if !quoted.contains(&q.symbol) {
                    quoted.insert(q.symbol.clone());
                }
                None
            }
            MarketEvent::Trade(t) if !quoted.contains(&t.symbol) => Some(Quote {
                symbol: t.symbol.clone(),
                ts: t.ts,
                bid: t.price,
                ask: t.price,
                bid_size: 0.0,
                ask_size: 0.0,
            }),
            _ => None,
        };
        if let Some(q) = derived {
            out.push(MarketEvent::Quote(q));
            joined.push(true);
        }
        out.push(ev);
        joined.push(false);
    }
    *events = out;
}

/// Reads the provider, validates, updates caches and the venue, publishes.
async fn feed(shared: Arc<Shared>, ctx: EngineContext, stop: Arc<tokio::sync::Notify>) {
    if shared.opts.warm_bars > 0 {
        warm(&shared, &ctx).await;
    }
    let mut stream = match shared.provider.stream().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(provider = shared.provider.name(), error = %e, "market data stream did not open");
            shared.feed_done.store(true, Ordering::SeqCst);
            shared.feed_ended.notify_waiters();
            return;
        }
    };
    let bus = ctx.bus().clone();
    let enc = bus.encoding();
    let mut topics = Topics::default();
    let mut events: Vec<MarketEvent> = Vec::with_capacity(1024);
    let mut execs: Vec<Execution> = Vec::new();
    // Symbols with quotes of their own (`HubOptions::quotes_from_trades`).
    let mut quoted: std::collections::HashSet<String> = Default::default();
    // Payloads of a batch are encoded into one shared buffer (one allocation per batch).
    let mut scratch = bytes::BytesMut::new();
    // With a gate (lockstep), events wait here and go out one per permit (a derived quote
    // with its trade: the flag says an event goes out with the next one).
    let mut queued: std::collections::VecDeque<(MarketEvent, bool)> = Default::default();
    let mut joined: Vec<bool> = Vec::new();
    let mut more = true;
    loop {
        events.clear();
        if queued.is_empty() && more {
            let r = tokio::select! {
                // Stopped: the data did not end, so `feed_done` stays false.
                _ = stop.notified() => return,
                r = stream.next_batch(&mut events) => r,
            };
            more = match r {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(provider = shared.provider.name(), error = %e, "market data stream failed");
                    false
                }
            };
            shared.skipped.store(stream.skipped(), Ordering::Relaxed);
            if shared.opts.quotes_from_trades {
                quotes_from_trades(&mut events, &mut joined, &mut quoted);
            } else if shared.opts.gate.is_some() {
                joined.clear();
                joined.resize(events.len(), false);
            }
        }
        if let Some(gate) = &shared.opts.gate {
            queued.extend(events.drain(..).zip(joined.drain(..)));
            if let Some((ev, mut with_next)) = queued.pop_front() {
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = gate.pass() => {}
                }
                events.push(ev);
                while with_next {
                    let Some((next, again)) = queued.pop_front() else {
                        break;
                    };
                    events.push(next);
                    with_next = again;
                }
            }
        }
        let more = more || !queued.is_empty();
        let mut envs: Vec<Envelope> = Vec::with_capacity(events.len());
        {
            let mut validator = shared.validator.lock();
            let mut snaps = shared.snapshots.write();
            let mut venue = shared.venue.lock();
            for ev in &events {
                if let Err(reason) = validator.validate(ev) {
                    log_reject(reason, ev);
                    continue;
                }
                let dt = ev.data_type();
                let topic = match topics.get(dt, ev.symbol()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "market data not published");
                        continue;
                    }
                };
                let snap = match snaps.get_mut(ev.symbol()) {
                    Some(s) => s,
                    None => snaps
                        .entry(ev.symbol().to_string())
                        .or_insert_with(|| Snapshot {
                            symbol: ev.symbol().to_string(),
                            ..Default::default()
                        }),
                };
                let payload = match ev {
                    MarketEvent::Trade(t) => {
                        set(&mut snap.trade, t);
                        venue.on_time(t.ts);
                        enc.encode_into(t, &mut scratch)
                    }
                    MarketEvent::Quote(q) => {
                        set(&mut snap.quote, q);
                        execs.extend(venue.on_quote(q));
                        enc.encode_into(q, &mut scratch)
                    }
                    MarketEvent::Bar(b) => {
                        set(&mut snap.bar, b);
                        enc.encode_into(b, &mut scratch)
                    }
                    MarketEvent::Book(b) => enc.encode_into(b, &mut scratch),
                };
                let payload = match payload {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "market data did not encode");
                        continue;
                    }
                };
                match bus.stamp(EventKind::MarketData, topic, Priority::Normal, enc, payload) {
                    Ok(env) => envs.push(env),
                    Err(e) => tracing::warn!(error = %e, "market data not published"),
                }
            }
        }
        let n = envs.len() as u64;
        if !envs.is_empty() {
            // A publish can wait a long time (a group at its bound with the `block` policy):
            // stopping waits for it a moment, then gives it up (and says so), so what a stop
            // interrupts is either published and counted or neither.
            let publish = ctx.publish_batch(envs);
            tokio::pin!(publish);
            let res = tokio::select! {
                r = &mut publish => r,
                _ = stop.notified() => {
                    match tokio::time::timeout(STOP_GRACE, &mut publish).await {
                        Ok(Ok(())) => shared.counters.published.fetch_add(n, Ordering::Relaxed),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "publishing market data failed");
                            0
                        }
                        Err(_) => {
                            tracing::warn!(
                                messages = n,
                                "stopping: a market-data batch still waited for room after \
                                 {STOP_GRACE:?} and was not published"
                            );
                            0
                        }
                    };
                    return;
                }
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "publishing market data failed");
            } else {
                shared.counters.published.fetch_add(n, Ordering::Relaxed);
            }
        }
        for x in execs.drain(..) {
            publish_execution(&ctx, &x).await;
        }
        if !more {
            break;
        }
    }
    shared.feed_done.store(true, Ordering::SeqCst);
    shared.feed_ended.notify_waiters();
}

fn set<T: Clone>(slot: &mut Option<T>, v: &T) {
    match slot {
        Some(old) => old.clone_from(v),
        None => *slot = Some(v.clone()),
    }
}

fn log_reject(reason: Reject, ev: &MarketEvent) {
    tracing::debug!(%reason, symbol = ev.symbol(), ts = ev.ts(), "market data rejected");
}

async fn publish_execution(ctx: &EngineContext, x: &Execution) {
    if let Err(e) = ctx.send(x).await {
        tracing::warn!(order = %x.order_id, error = %e, "execution not published");
    }
}

/// The hub's counters on `/metrics` (see [`crate::telemetry`]).
struct HubCollector(Arc<Shared>);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

impl prometheus_client::collector::Collector for HubCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;
        let s = self.0.stats();
        let rejected: u64 = s.rejected.values().sum();
        // (name, help, counts by result)
        type Family<'a> = (&'a str, &'a str, Vec<(&'a str, u64)>);
        let families: [Family; 4] = [
            (
                "dualbus_hub_requests",
                "Snapshot and history requests the hub answered, by result",
                vec![("hit", s.hits), ("miss", s.misses), ("bad", s.bad_requests)],
            ),
            (
                "dualbus_hub_upstream_calls",
                "History calls the hub made to its provider, by result",
                vec![
                    ("ok", s.upstream_calls.saturating_sub(s.upstream_errors)),
                    ("error", s.upstream_errors),
                ],
            ),
            (
                "dualbus_hub_market_data",
                "Market data through the hub's validator, by result",
                vec![("accepted", s.accepted), ("rejected", rejected)],
            ),
            (
                "dualbus_venue_orders",
                "Orders the hub's paper venue handled, by result",
                vec![
                    ("filled", s.venue.fills),
                    ("rejected", s.venue.rejects),
                    ("refused_sender", s.venue.foreign),
                ],
            ),
        ];
        for (name, help, rows) in families {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (result, n) in rows {
                ConstCounter::new(n).encode(m.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}

impl MarketDataHub {
    /// What the hub publishes ([`Engine::publishes`]), known without a provider.
    pub fn declared_publications() -> Vec<EventKind> {
        vec![EventKind::MarketData, EventKind::TradeExecution]
    }

    /// What the hub listens to ([`Engine::subscriptions`]), known without a provider.
    pub fn declared_subscriptions() -> Vec<Interest> {
        vec![Interest::reliable(&["hub_request.>", "order_request.>"])]
    }
}

#[async_trait]
impl Engine for MarketDataHub {
    fn name(&self) -> &'static str {
        "marketdata"
    }

    fn publishes(&self) -> Vec<EventKind> {
        MarketDataHub::declared_publications()
    }

    fn subscriptions(&self) -> Vec<Interest> {
        MarketDataHub::declared_subscriptions()
    }

    async fn ready(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if let Some(m) = ctx.metrics() {
            m.add_collector(Arc::new(HubCollector(self.shared.clone())));
        }
        self.feed = Some(tokio::spawn(feed(
            self.shared.clone(),
            ctx.clone(),
            self.stop_feed.clone(),
        )));
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        if msg.kind == EventKind::OrderRequest {
            // Only the order senders' orders reach the venue (a refused one is dead-lettered
            // with the reason, like an unreadable one).
            let refused = self.shared.venue.lock().check_sender(&msg.src, || msg.id());
            if let Err(reason) = refused {
                tracing::warn!(%reason, "order refused");
                return Err(HandlerError(reason));
            }
            // Unreadable: no retry can fix it, so it is dead-lettered with the reason.
            let order: OrderRequest = msg.decode()?;
            let exec = self.shared.venue.lock().submit(order);
            if let Some(x) = exec {
                publish_execution(ctx, &x).await;
            }
            return Ok(());
        }
        let topic = msg.topic.to_string();
        let mut parts = topic.splitn(3, '.');
        let (_, what, symbol) = (parts.next(), parts.next(), parts.next());
        let c = &self.shared.counters;
        match (what, symbol) {
            (Some("snapshot"), Some(symbol)) => {
                c.requests.fetch_add(1, Ordering::Relaxed);
                c.snapshot_requests.fetch_add(1, Ordering::Relaxed);
                let reply = match self.shared.snapshot(symbol) {
                    Some(s) => {
                        c.hits.fetch_add(1, Ordering::Relaxed);
                        HubReply::Snapshot(s)
                    }
                    None => {
                        c.misses.fetch_add(1, Ordering::Relaxed);
                        HubReply::Error {
                            reason: format!("no market data for {symbol:?} yet"),
                        }
                    }
                };
                reply_or_log(ctx, msg, &reply).await;
            }
            (Some("history"), Some(symbol)) => {
                let query: HistoryQuery = if msg.payload.is_empty() {
                    HistoryQuery {
                        bar_secs: 60,
                        limit: 500,
                        end_ts: None,
                    }
                } else {
                    match msg.enc.decode(&msg.payload) {
                        Ok(q) => q,
                        Err(e) => {
                            c.bad_requests.fetch_add(1, Ordering::Relaxed);
                            let reason = format!("history request does not decode: {e}");
                            reply_or_log(ctx, msg, &HubReply::Error { reason }).await;
                            return Ok(());
                        }
                    }
                };
                let req = HistoryRequest {
                    symbol: symbol.to_string(),
                    bar_secs: query.bar_secs,
                    limit: query.limit,
                    end_ts: query.end_ts,
                };
                // The upstream call may take a while: answer from a task of its own so the
                // hub goes on serving snapshots and orders meanwhile.
                let shared = self.shared.clone();
                let ctx = ctx.clone();
                let msg = msg.clone();
                shared.answering.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let reply = match shared.history(req.clone()).await {
                        Ok(bars) => HubReply::History {
                            symbol: req.symbol,
                            bar_secs: req.bar_secs,
                            bars: bars.as_ref().clone(),
                        },
                        Err(reason) => HubReply::Error { reason },
                    };
                    reply_or_log(&ctx, &msg, &reply).await;
                    shared.answering.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ => {
                c.bad_requests.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "unknown request topic {topic:?}: expected hub_request.snapshot.SYMBOL or \
                     hub_request.history.SYMBOL"
                );
                reply_or_log(ctx, msg, &HubReply::Error { reason }).await;
            }
        }
        Ok(())
    }

    async fn stop(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        self.stop_feed.notify_one();
        if let Some(f) = self.feed.take() {
            let _ = f.await;
        }
        // Let history answers in flight finish (bounded: an upstream call could hang).
        let until = Instant::now() + Duration::from_secs(5);
        while self.shared.answering.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        serde_json::to_value(self.shared.stats()).unwrap_or_default()
    }
}

async fn reply_or_log(ctx: &EngineContext, request: &Envelope, reply: &HubReply) {
    if let Err(e) = ctx.reply(request, reply).await {
        tracing::warn!(topic = %request.topic, error = %e, "hub reply not sent");
    }
}

/// Errors of [`HubClient`].
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The request could not be made or was not answered in time.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The hub answered with an error.
    #[error("hub: {0}")]
    Hub(String),
    /// The answer could not be read.
    #[error("hub reply: {0}")]
    Reply(String),
}

/// The client side of the hub's request/reply: what engines use to ask the hub.
#[derive(Clone)]
pub struct HubClient {
    bus: DualBus,
    timeout: Option<Duration>,
}

impl HubClient {
    /// Asks over `bus` (the engine's own client); `timeout` `None` uses the bus config's.
    pub fn new(bus: DualBus, timeout: Option<Duration>) -> HubClient {
        HubClient { bus, timeout }
    }

    async fn ask<T: Serialize>(&self, topic: &str, body: &T) -> Result<HubReply, HubError> {
        let env = self
            .bus
            .request(hub_request_kind(), topic, body, self.timeout)
            .await?;
        let reply: HubReply = env
            .enc
            .decode(&env.payload)
            .map_err(|e| HubError::Reply(e.to_string()))?;
        match reply {
            HubReply::Error { reason } => Err(HubError::Hub(reason)),
            r => Ok(r),
        }
    }

    /// The latest trade, quote and bar of `symbol`.
    ///
    /// # Errors
    /// [`HubError`]: no answer in time, or the hub has no data for the symbol.
    pub async fn snapshot(&self, symbol: &str) -> Result<Snapshot, HubError> {
        match self
            .ask(
                &format!("{HUB_REQUEST}.snapshot.{symbol}"),
                &serde_json::json!({}),
            )
            .await?
        {
            HubReply::Snapshot(s) => Ok(s),
            other => Err(HubError::Reply(format!(
                "expected a snapshot, got {other:?}"
            ))),
        }
    }

    /// The latest `limit` bars of `bar_secs` seconds of `symbol`, oldest first.
    ///
    /// # Errors
    /// [`HubError`]: no answer in time, or the provider refused (unknown symbol or interval).
    pub async fn history(&self, symbol: &str, query: &HistoryQuery) -> Result<Vec<Bar>, HubError> {
        match self
            .ask(&format!("{HUB_REQUEST}.history.{symbol}"), query)
            .await?
        {
            HubReply::History { bars, .. } => Ok(bars),
            other => Err(HubError::Reply(format!("expected history, got {other:?}"))),
        }
    }
}

impl From<ProviderError> for EngineError {
    fn from(e: ProviderError) -> Self {
        EngineError::Other(e.to_string())
    }
}
