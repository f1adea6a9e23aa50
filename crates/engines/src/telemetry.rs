//! What a process tells its operator over HTTP: Prometheus metrics on `/metrics`, liveness on
//! `/healthz`, readiness on `/readyz`.
//!
//! Every long-running process (`dualbus run`, `dualbus engine NAME`, `dualbus hub`) keeps one
//! [`BusMetrics`] shared by its engines. Scraping reads the figures the engines already keep
//! (per-kind counts, the bus clients' counters, the latency recorded per message in fixed
//! Prometheus buckets, the failover state, the hub's counters): nothing is counted twice on the
//! hot path. The exposition is written by the `prometheus-client` crate (Prometheus text format
//! 0.0.4), not by hand.
//!
//! # Metrics
//!
//! Labels: `bus` is `md` (MarketData) or `logic` (Engine Logic); `group` is the consuming
//! engine (each engine reads in a consumer group of its own name); `lane` is `market_data`,
//! `engine_logic` or `priority_lane`.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `dualbus_messages_published_total` | counter | bus, kind, engine | messages the engines published |
//! | `dualbus_messages_delivered_total` | counter | bus, kind, group | messages handed to the engines' handlers |
//! | `dualbus_delivery_latency_seconds` | histogram | bus, lane | publish stamp to handler start |
//! | `dualbus_handler_seconds` | histogram | engine | time in the engine's handler per message |
//! | `dualbus_queue_wait_seconds` | histogram | engine | read from the transport to handler start |
//! | `dualbus_handler_failures_total` | counter | bus, group | handler errors (the message is redelivered, then dead-lettered) |
//! | `dualbus_duplicates_total` | counter | bus, group | duplicates dropped by (`src`, `inst`, `seq`) |
//! | `dualbus_skipped_total` | counter | bus, group | fast-mode messages a lagging reader jumped over |
//! | `dualbus_redelivered_total` | counter | bus | deliveries after the first |
//! | `dualbus_dead_letters_total` | counter | bus | messages moved to the dead-letter stream |
//! | `dualbus_dropped_total` | counter | bus | messages dropped by `drop_oldest`, or trimmed after they were read and before they were acknowledged |
//! | `dualbus_trimmed_unread_total` | counter | bus | messages a stream trim removed before a reliable group read them (Redis; counted by this process's consumers) |
//! | `dualbus_handler_panics_total` | counter | bus | messages whose handler panicked (each also counts as a failure) |
//! | `dualbus_refused_total` | counter | bus | messages the broker refused to store (a Redis ACL, memory); their publish failed |
//! | `dualbus_group_lag_messages` | gauge | bus, stream, group | entries of the stream not yet delivered to the group |
//! | `dualbus_pending_messages` | gauge | bus, stream, group | entries delivered to the group and not yet acknowledged |
//! | `dualbus_bus_up` | gauge | bus | 1 while the bus carries its own traffic (0: failed over) |
//! | `dualbus_failovers_total` | counter | bus | times the bus was marked down |
//! | `dualbus_failbacks_total` | counter | bus | times its traffic moved back |
//! | `dualbus_failover_resent_total` | counter | bus | messages re-sent on the other bus |
//! | `dualbus_failover_window_overflow_total` | counter | bus | messages pushed out of the failover re-send window by its count limit before `window_ms` |
//! | `dualbus_engine_heartbeat_age_seconds` | gauge | engine | time since the engine's last heartbeat |
//! | `dualbus_hub_requests_total` | counter | result (`hit`, `miss`, `bad`) | snapshot and history requests the hub answered |
//! | `dualbus_hub_upstream_calls_total` | counter | result (`ok`, `error`) | history calls to the provider |
//! | `dualbus_hub_market_data_total` | counter | result (`accepted`, `rejected`) | market data through the hub's validator |
//! | `dualbus_venue_orders_total` | counter | result (`filled`, `rejected`, `refused_sender`) | orders the paper venue handled (`refused_sender`: not from `venue.order_senders`) |
//! | `dualbus_dashboard_refused_total` | counter | reason (`max_clients`, `token`, `origin`, `body`, `head_too_large`, `head_timeout`) | requests the dashboard refused |
//! | `dualbus_dashboard_frames_total` | counter | result (`sent`, `dropped`) | WebSocket frames sent, and dropped from slow clients' queues |
//! | `dualbus_alerts_total` | counter | kind, rule | alerts the engines of this process raised |
//! | `dualbus_equity` | gauge | | the portfolio's equity, quote currency |
//!
//! The histograms' buckets are [`PROM_BUCKETS_S`](crate::metrics::PROM_BUCKETS_S) (10 µs to
//! 10 s).
//!
//! # Readiness
//!
//! `/readyz` answers 200 when both buses answer and carry their own traffic and every engine of
//! the process sent a heartbeat within three heartbeat periods; otherwise 503. Both answers
//! carry a JSON body saying which bus or engine is the reason.

use crate::metrics::{BusMetrics, EngineTimes, LaneId};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dualbus_bus::{BusId, DualBus};
use dualbus_core::transport::{GroupBacklog, Health, StreamKey};
use dualbus_core::{EventKind, Priority};
use dualbus_model::health::EngineCounts;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Longest request head the HTTP servers accept (hyper's smallest allowed buffer is 8 KiB).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a connection may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `/readyz` waits for a broker's answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Alerts by kind and rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `risk_alert`, `toxicity_alert`, `flash_crash_alert`, `margin_call`.
    pub kind: String,
    /// The rule that fired.
    pub rule: String,
}

/// Trading events the engines report for `/metrics` (set through
/// [`EngineContext::trading`](crate::engine::EngineContext::trading)).
#[derive(Debug, Default)]
pub struct TradingMetrics {
    alerts: Family<AlertLabels, Counter>,
    equity: Gauge<f64, AtomicU64>,
    equity_known: AtomicBool,
}

impl TradingMetrics {
    /// Counts one alert of `kind` raised by `rule`.
    pub fn alert(&self, kind: &str, rule: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                kind: kind.to_string(),
                rule: rule.to_string(),
            })
            .inc();
    }

    /// Alerts counted for `kind` and `rule`.
    pub fn alerts(&self, kind: &str, rule: &str) -> u64 {
        self.alerts
            .get_or_create(&AlertLabels {
                kind: kind.to_string(),
                rule: rule.to_string(),
            })
            .get()
    }

    /// The portfolio's equity now.
    pub fn set_equity(&self, equity: f64) {
        self.equity.set(equity);
        self.equity_known
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An engine of this process, as `/metrics` and `/readyz` read it.
struct Attached {
    times: Arc<EngineTimes>,
    counts: Arc<Mutex<EngineCounts>>,
    bus: DualBus,
    health_every: Duration,
}

/// What [`BusMetrics`] keeps for `/metrics` and `/readyz` besides the latency figures.
#[derive(Default)]
pub(crate) struct Telemetry {
    attached: Mutex<Vec<Attached>>,
    collectors: Mutex<Vec<Arc<dyn Collector>>>,
    pub(crate) trading: TradingMetrics,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("engines", &self.attached.lock().len())
            .field("collectors", &self.collectors.lock().len())
            .finish()
    }
}

impl BusMetrics {
    /// Makes an engine's counts, bus client and heartbeat visible on `/metrics` and `/readyz`.
    pub(crate) fn attach(
        &self,
        times: Arc<EngineTimes>,
        counts: Arc<Mutex<EngineCounts>>,
        bus: DualBus,
        health_every: Duration,
    ) {
        self.telemetry.attached.lock().push(Attached {
            times,
            counts,
            bus,
            health_every,
        });
    }

    /// Adds figures of a component (the hub's counters) to `/metrics`, read at each scrape.
    pub fn add_collector(&self, c: Arc<dyn Collector>) {
        self.telemetry.collectors.lock().push(c);
    }
}

/// One consumer group of one stream, as read at a scrape.
#[derive(Debug, Clone)]
pub struct GroupRow {
    /// The stream's bus.
    pub bus: BusId,
    /// The stream's key.
    pub stream: String,
    /// The group, its pending and unread entries.
    pub backlog: GroupBacklog,
}

/// The consumer groups of every stream of the known kinds and of the priority lanes, on both
/// buses, as the brokers report them (a bus that does not answer within 2 s is left out).
pub async fn group_rows(metrics: &BusMetrics) -> Vec<GroupRow> {
    let Some(bus) = metrics
        .telemetry
        .attached
        .lock()
        .first()
        .map(|a| a.bus.clone())
    else {
        return Vec::new();
    };
    bus_group_rows(&bus).await
}

/// The consumer groups of every stream of the known kinds and of the priority lanes on both
/// buses of `bus`, as the brokers report them (a bus that does not answer within 2 s is left
/// out).
pub async fn bus_group_rows(bus: &DualBus) -> Vec<GroupRow> {
    let mut rows = Vec::new();
    for b in [BusId::MarketData, BusId::Logic] {
        let router = bus.router();
        let mut streams: Vec<StreamKey> = EventKind::KNOWN
            .iter()
            .flat_map(|k| router.kind_streams(b, k))
            .collect();
        streams.push(router.priority_stream(b));
        let transport = bus.transport(b).clone();
        let read = async {
            let mut out = Vec::new();
            for s in streams {
                match transport.groups(&s).await {
                    Ok(groups) => out.extend(groups.into_iter().map(|g| GroupRow {
                        bus: b,
                        stream: s.to_string(),
                        backlog: g,
                    })),
                    Err(e) => {
                        tracing::debug!(stream = %s, error = %e, "groups not read for /metrics");
                        break;
                    }
                }
            }
            out
        };
        if let Ok(found) = tokio::time::timeout(HEALTH_TIMEOUT, read).await {
            rows.extend(found);
        }
    }
    rows
}

/// The consumer groups' backlog at a scrape.
#[derive(Debug)]
struct GroupCollector(Vec<GroupRow>);

impl Collector for GroupCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let labels = |r: &GroupRow| -> Labels {
            vec![
                bus_label(r.bus),
                ("stream", r.stream.clone()),
                ("group", r.backlog.group.clone()),
            ]
        };
        gauges(
            &mut enc,
            "dualbus_group_lag_messages",
            "Entries of the stream not yet delivered to the consumer group",
            self.0
                .iter()
                .filter_map(|r| r.backlog.lag.map(|l| (labels(r), l as f64))),
        )?;
        gauges(
            &mut enc,
            "dualbus_pending_messages",
            "Entries delivered to the consumer group and not yet acknowledged",
            self.0.iter().map(|r| (labels(r), r.backlog.pending as f64)),
        )
    }
}

/// The Prometheus text (format 0.0.4) of everything this process's [`BusMetrics`] knows,
/// with the consumer groups' backlog read beforehand ([`group_rows`]).
pub fn encode_with_groups(metrics: &Arc<BusMetrics>, groups: Vec<GroupRow>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GroupCollector(groups)));
    encode_into(metrics, registry)
}

/// The Prometheus text (format 0.0.4) of everything this process's [`BusMetrics`] knows,
/// without the consumer groups' backlog (which needs the brokers: [`encode_with_groups`]).
pub fn encode(metrics: &Arc<BusMetrics>) -> String {
    encode_into(metrics, Registry::default())
}

fn encode_into(metrics: &Arc<BusMetrics>, mut registry: Registry) -> String {
    let t = &metrics.telemetry;
    registry.register(
        "dualbus_alerts",
        "Alerts the engines of this process raised, by kind and rule",
        t.trading.alerts.clone(),
    );
    if t.trading
        .equity_known
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        registry.register(
            "dualbus_equity",
            "The portfolio's equity, quote currency",
            t.trading.equity.clone(),
        );
    }
    registry.register_collector(Box::new(EngineCollector(metrics.clone())));
    for c in t.collectors.lock().iter() {
        registry.register_collector(Box::new(SharedCollector(c.clone())));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A collector added with [`BusMetrics::add_collector`].
#[derive(Debug)]
struct SharedCollector(Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(enc)
    }
}

/// Reads the engines' figures at each scrape.
#[derive(Debug)]
struct EngineCollector(Arc<BusMetrics>);

/// Per (bus, kind, engine) counts of published or received messages.
type KindCounts = BTreeMap<(BusId, String, &'static str), u64>;

fn bus_of(bus: &DualBus, kind: &str) -> BusId {
    match kind.parse::<EventKind>() {
        Ok(k) => bus.route(&k, Priority::Normal).bus,
        Err(_) => BusId::Logic,
    }
}

/// Writes one counter family: `name` (without `_total`), its help, and `(labels, value)` rows.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family.
fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

fn bus_label(bus: BusId) -> (&'static str, String) {
    ("bus", bus.as_str().to_string())
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let attached = self.0.telemetry.attached.lock();
        let mut published = KindCounts::new();
        let mut delivered = KindCounts::new();
        for a in attached.iter() {
            let name = a.times.engine();
            let c = a.counts.lock().clone();
            for (kind, n) in c.published {
                let bus = bus_of(&a.bus, &kind);
                *published.entry((bus, kind, name)).or_default() += n;
            }
            for (kind, n) in c.received {
                let bus = bus_of(&a.bus, &kind);
                *delivered.entry((bus, kind, name)).or_default() += n;
            }
        }
        counters(
            &mut enc,
            "dualbus_messages_published",
            "Messages the engines of this process published",
            published.into_iter().map(|((bus, kind, engine), n)| {
                (
                    vec![bus_label(bus), ("kind", kind), ("engine", engine.into())],
                    n,
                )
            }),
        )?;
        counters(
            &mut enc,
            "dualbus_messages_delivered",
            "Messages handed to the engines' handlers, by consumer group",
            delivered.into_iter().map(|((bus, kind, group), n)| {
                (
                    vec![bus_label(bus), ("kind", kind), ("group", group.into())],
                    n,
                )
            }),
        )?;

        // Latency, handler and queue histograms, summed over the instances of an engine.
        let mut delivery: BTreeMap<(BusId, LaneId), crate::metrics::Buckets> = BTreeMap::new();
        let mut handler: BTreeMap<&'static str, crate::metrics::Buckets> = BTreeMap::new();
        let mut queue: BTreeMap<&'static str, crate::metrics::Buckets> = BTreeMap::new();
        for a in attached.iter() {
            let t = a.times.totals();
            for bus in [BusId::MarketData, BusId::Logic] {
                for lane in LaneId::ALL {
                    let b = &t.delivery[bus.index()][lane.index()];
                    if b.count > 0 {
                        delivery.entry((bus, lane)).or_default().add(b);
                    }
                }
            }
            handler.entry(a.times.engine()).or_default().add(&t.handler);
            queue.entry(a.times.engine()).or_default().add(&t.queue);
        }
        {
            let mut m = enc.encode_descriptor(
                "dualbus_delivery_latency_seconds",
                "Delivery latency: the publisher's stamp to the start of the handler",
                None,
                MetricType::Histogram,
            )?;
            for ((bus, lane), b) in &delivery {
                let labels: Labels = vec![bus_label(*bus), ("lane", lane.as_str().into())];
                m.encode_family(&labels)?.encode_histogram::<Labels>(
                    b.sum_seconds(),
                    b.count,
                    &b.prometheus(),
                    None,
                )?;
            }
        }
        for (name, help, rows) in [
            (
                "dualbus_handler_seconds",
                "Time an engine's handler took per message",
                &handler,
            ),
            (
                "dualbus_queue_wait_seconds",
                "Time a message waited from its read off the transport to its handler's start",
                &queue,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (engine, b) in rows {
                let labels: Labels = vec![("engine", engine.to_string())];
                m.encode_family(&labels)?.encode_histogram::<Labels>(
                    b.sum_seconds(),
                    b.count,
                    &b.prometheus(),
                    None,
                )?;
            }
        }

        // The bus clients' counters: per engine (its consumer group) what its readers counted,
        // per bus what the transport counted (one transport per bus in a process).
        let mut per_group: Vec<(BusId, &'static str, dualbus_bus::BusCounters)> = Vec::new();
        for a in attached.iter() {
            for bus in [BusId::MarketData, BusId::Logic] {
                per_group.push((bus, a.times.engine(), a.bus.counters(bus)));
            }
        }
        for (name, help, pick) in [
            (
                "dualbus_handler_failures",
                "Handler errors (the message is redelivered, then dead-lettered)",
                (|c: &dualbus_bus::BusCounters| c.failed) as fn(&dualbus_bus::BusCounters) -> u64,
            ),
            (
                "dualbus_duplicates",
                "Duplicates dropped by (src, inst, seq)",
                |c| c.duplicates,
            ),
            (
                "dualbus_skipped",
                "Fast-mode messages a lagging reader jumped over",
                |c| c.skipped,
            ),
        ] {
            let mut sums: BTreeMap<(BusId, &'static str), u64> = BTreeMap::new();
            for (bus, group, c) in &per_group {
                *sums.entry((*bus, group)).or_default() += pick(c);
            }
            counters(
                &mut enc,
                name,
                help,
                sums.into_iter()
                    .map(|((bus, g), n)| (vec![bus_label(bus), ("group", g.to_string())], n)),
            )?;
        }
        if let Some(a) = attached.first() {
            let per_bus = |f: fn(&dualbus_bus::BusCounters) -> u64| {
                [BusId::MarketData, BusId::Logic]
                    .map(|bus| (vec![bus_label(bus)], f(&a.bus.counters(bus))))
            };
            counters(
                &mut enc,
                "dualbus_redelivered",
                "Deliveries after the first",
                per_bus(|c| c.redelivered),
            )?;
            counters(
                &mut enc,
                "dualbus_dead_letters",
                "Messages moved to the dead-letter stream",
                per_bus(|c| c.dead_lettered),
            )?;
            counters(
                &mut enc,
                "dualbus_dropped",
                "Messages dropped by a drop_oldest policy, or trimmed after they were read and before they were acknowledged",
                per_bus(|c| c.dropped),
            )?;
            counters(
                &mut enc,
                "dualbus_trimmed_unread",
                "Messages a stream trim removed before a reliable group read them (Redis)",
                per_bus(|c| c.trimmed_unread),
            )?;
            counters(
                &mut enc,
                "dualbus_handler_panics",
                "Messages whose handler panicked (each also counts as failed)",
                per_bus(|c| c.panicked),
            )?;
            counters(
                &mut enc,
                "dualbus_refused",
                "Messages the broker refused to store (a Redis ACL, memory); their publish failed",
                per_bus(|c| c.refused),
            )?;
            let fo = [BusId::MarketData, BusId::Logic].map(|b| (b, a.bus.failover_counters(b)));
            gauges(
                &mut enc,
                "dualbus_bus_up",
                "1 while the bus carries its own traffic, 0 while it is failed over",
                fo.iter().map(|(b, c)| {
                    let up = c.up && !a.bus.transport(*b).reported_down();
                    (vec![bus_label(*b)], if up { 1.0 } else { 0.0 })
                }),
            )?;
            counters(
                &mut enc,
                "dualbus_failovers",
                "Times the bus was marked down and its traffic moved to the other bus",
                fo.iter().map(|(b, c)| (vec![bus_label(*b)], c.failovers)),
            )?;
            counters(
                &mut enc,
                "dualbus_failbacks",
                "Times the bus's traffic moved back to it",
                fo.iter().map(|(b, c)| (vec![bus_label(*b)], c.failbacks)),
            )?;
            counters(
                &mut enc,
                "dualbus_failover_resent",
                "Messages re-sent on the other bus when this one went down",
                fo.iter().map(|(b, c)| (vec![bus_label(*b)], c.resent)),
            )?;
            counters(
                &mut enc,
                "dualbus_failover_window_overflow",
                "Messages pushed out of the failover re-send window by its count limit before \
                 window_ms passed (not re-sent if the bus failed right after their publish)",
                fo.iter()
                    .map(|(b, c)| (vec![bus_label(*b)], c.window_overflow)),
            )?;
        }
        let mut ages: BTreeMap<&'static str, f64> = BTreeMap::new();
        for a in attached.iter() {
            if let Some(age) = a.times.since_beat() {
                let e = ages.entry(a.times.engine()).or_insert(0.0);
                *e = e.max(age.as_secs_f64());
            }
        }
        gauges(
            &mut enc,
            "dualbus_engine_heartbeat_age_seconds",
            "Time since the engine's last heartbeat",
            ages.into_iter()
                .map(|(e, age)| (vec![("engine", e.to_string())], age)),
        )?;
        Ok(())
    }
}

/// Whether this process is ready, and why (the `/readyz` body).
pub async fn readiness(metrics: &BusMetrics) -> (bool, Value) {
    let (first_bus, engines) = {
        let attached = metrics.telemetry.attached.lock();
        let engines: Vec<(&'static str, Option<Duration>, Duration)> = attached
            .iter()
            .map(|a| (a.times.engine(), a.times.since_beat(), a.health_every))
            .collect();
        (attached.first().map(|a| a.bus.clone()), engines)
    };
    let mut ready = true;
    let mut buses = serde_json::Map::new();
    if let Some(bus) = first_bus {
        for b in [BusId::MarketData, BusId::Logic] {
            let fo = bus.failover_counters(b);
            let answer = tokio::time::timeout(HEALTH_TIMEOUT, bus.transport(b).health()).await;
            let problem = match answer {
                Err(_) => Some(format!("no answer within {HEALTH_TIMEOUT:?}")),
                Ok(Health::Down { reason }) => Some(reason),
                Ok(Health::Up) if !fo.up => Some("failed over to the other bus".to_string()),
                Ok(Health::Up) => None,
            };
            ready &= problem.is_none();
            buses.insert(
                b.as_str().into(),
                match problem {
                    None => json!({"up": true}),
                    Some(p) => json!({"up": false, "reason": p}),
                },
            );
        }
    }
    let mut list = serde_json::Map::new();
    for (name, since, every) in engines {
        // Three periods without a heartbeat (at least 3 s): the engine is stuck or gone.
        let limit = (every * 3).max(Duration::from_secs(3));
        let fresh = since.is_some_and(|s| s <= limit);
        // An engine that has not sent its first heartbeat yet is starting.
        ready &= fresh;
        list.insert(
            name.into(),
            json!({
                "heartbeat_age_s": since.map(|s| s.as_secs_f64()),
                "fresh": fresh,
            }),
        );
    }
    (
        ready,
        json!({"ready": ready, "buses": buses, "engines": list}),
    )
}

/// `/metrics`, `/healthz` and `/readyz` over `metrics`, to serve alone or merge into another
/// server's routes (the dashboard's).
pub fn routes(metrics: Arc<BusMetrics>) -> axum::Router {
    let m1 = metrics.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    let groups = group_rows(&m).await;
                    (
                        [(header::CONTENT_TYPE, CONTENT_TYPE)],
                        encode_with_groups(&m, groups),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = metrics.clone();
                async move {
                    let (ready, body) = readiness(&m).await;
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        [(header::CONTENT_TYPE, "application/json")],
                        body.to_string(),
                    )
                        .into_response()
                }
            }),
        )
}

/// The text/plain 404 of the servers: it names the path.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no such path {}\n", uri.path()),
    )
        .into_response()
}

/// Connections the HTTP server ended before a request reached the router, by why.
#[derive(Debug, Default)]
pub struct HttpRefusals {
    /// A request head larger than 16 KiB (answered 431).
    pub head_too_large: AtomicU64,
    /// A request head not sent within 10 s (the connection is closed).
    pub head_timeout: AtomicU64,
}

/// Serves `app` on `listener` (HTTP/1.1 on hyper, a task per connection, upgrades allowed)
/// until `shutdown` turns true; then stops accepting, lets each connection finish its request
/// and waits until every connection has ended. Connections upgraded to another protocol
/// (WebSocket) leave this server: whoever took them tracks them.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
    refusals: Arc<HttpRefusals>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                    let mut stop = shutdown.clone();
                    let refusals = refusals.clone();
                    conns.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(REQUEST_TIMEOUT)
                            .max_buf_size(MAX_REQUEST_HEAD)
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades();
                        tokio::pin!(conn);
                        let res = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = stopping(&mut stop) => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = res {
                            if e.is_parse_too_large() {
                                refusals.head_too_large.fetch_add(1, Ordering::Relaxed);
                            } else if e.is_timeout() {
                                refusals.head_timeout.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::debug!(error = %e, "http connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once `shutdown` is true (or its sender is gone). Cancel-safe.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A running `/metrics` server of its own (`dualbus engine NAME --metrics-port`,
/// `dualbus hub --metrics-port`).
pub struct MetricsServer {
    addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `bind` (`ip:port`; port 0 picks one) and serves [`routes`] over `metrics`.
    ///
    /// # Errors
    /// A message naming the address when it cannot be listened on.
    pub async fn start(bind: &str, metrics: Arc<BusMetrics>) -> Result<MetricsServer, String> {
        let listener = TcpListener::bind(bind).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("metrics address {bind} is in use")
            } else {
                format!("cannot listen on metrics address {bind}: {e}")
            }
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("metrics address {bind}: {e}"))?;
        let app = routes(metrics).fallback(not_found);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, app, rx, Arc::default()));
        Ok(MetricsServer {
            addr,
            shutdown,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting and waits (up to 5 s) for open requests to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}
