//! Where the time goes: delivery latency per bus, per lane and per kind, and per engine the
//! time its handler takes and the time a message waited for it.
//!
//! Two layers:
//!
//! * [`EngineTimes`], one per engine host (every engine has one, in `dualbus run` or alone in
//!   its own process): per message, its delivery latency by lane, the time it waited in the
//!   engine's hands before its handler began (queue wait) and the handler's own time. The
//!   figures since the last heartbeat travel in the engine's `engine_health` heartbeat
//!   ([`EngineLatency`]), so the dashboard shows them for engines in other processes too.
//! * [`BusMetrics`], shared by the engines of one process (`HostOptions::metrics`): per-bus
//!   traffic (the run's status line and the `buses` section of its report) and the run's
//!   [`LatencyReport`]: steady state and warm-up apart, by lane, by kind, by engine.
//!
//! # What is measured
//!
//! * **Delivery latency**: from the envelope's `ts` (stamped by the publishing client, Unix ns)
//!   to the moment the engine's handler begins. It includes the transport, the reader task and
//!   any wait for the engine. Across processes or hosts it includes their clock difference.
//! * **Queue wait**: from the moment the engine's reader took the message from the transport to
//!   the moment its handler began: the wait behind earlier messages of the same batch, behind a
//!   message of another lane or a timer of the same engine.
//! * **Handler time**: how long `Engine::on_message` ran.
//!
//! A message belongs to the **priority lane** when its kind is critical or its priority is
//! `critical` (it then travels on its bus's priority stream); otherwise to the lane of its bus.
//! The first [`WARMUP`] of a run (start-up, the hub's warm-up bars) is recorded apart from the
//! steady state; the headline figures are the steady state.

use dualbus_bus::route::is_priority;
use dualbus_bus::BusId;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::health::{EngineLatency, HandlerFigures, Percentiles};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after the start a run counts as warming up (start-up, the hub's warm-up bars).
pub const WARMUP: Duration = Duration::from_secs(5);

/// Latencies up to an hour are recorded (microseconds).
const MAX_US: u64 = 3_600_000_000;
/// Handler and queue times up to 10 minutes are recorded (nanoseconds).
const MAX_NS: u64 = 600_000_000_000;

/// Histograms keep 2 significant digits (1%): each engine holds a few dozen of them, and a
/// percentile needs no more.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds")
}

fn ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 2).expect("valid bounds")
}

/// Upper bounds of the buckets of the Prometheus histograms (`/metrics`), seconds: about
/// 2.5x apart from 10 µs to 10 s.
pub const PROM_BUCKETS_S: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`PROM_BUCKETS_S`] in nanoseconds.
const PROM_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A cumulative histogram with the fixed buckets of [`PROM_BUCKETS_S`], as Prometheus scrapes
/// it: counts since the start, never reset (a rate over them is the recent figure).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// Per bucket of [`PROM_BUCKETS_S`], then one for larger values (not cumulative).
    pub counts: [u64; 20],
    /// Sum of the recorded values, nanoseconds.
    pub sum_ns: u128,
    /// Values recorded.
    pub count: u64,
}

impl Buckets {
    /// Records one value in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        // The first bucket whose bound is >= ns (Prometheus buckets are `le`).
        let i = PROM_BOUNDS_NS.partition_point(|b| *b < ns);
        self.counts[i] += 1;
        self.sum_ns += ns as u128;
        self.count += 1;
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }

    /// `(upper bound in seconds, count)` per bucket, the last one `+Inf`, as
    /// `prometheus_client`'s histogram encoder takes them (not cumulative).
    pub fn prometheus(&self) -> Vec<(f64, u64)> {
        PROM_BUCKETS_S
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
    }

    /// The sum in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// One engine's figures since its start, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineTotals {
    /// Delivery latency, per bus (MarketData, Engine Logic) and lane ([`LaneId::ALL`] order).
    pub delivery: [[Buckets; 3]; 2],
    /// Handler time per message.
    pub handler: Buckets,
    /// Queue wait per message.
    pub queue: Buckets,
}

/// The lane a message travels on, as the latency figures separate them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LaneId {
    /// The MarketData bus, normal lane.
    MarketData,
    /// The Engine Logic bus, normal lane.
    EngineLogic,
    /// The priority lane of either bus: critical kinds and critical-priority messages.
    Priority,
}

impl LaneId {
    /// All lanes, in report order.
    pub const ALL: [LaneId; 3] = [LaneId::MarketData, LaneId::EngineLogic, LaneId::Priority];

    /// The report's name (`market_data`, `engine_logic`, `priority_lane`).
    pub fn as_str(self) -> &'static str {
        match self {
            LaneId::MarketData => "market_data",
            LaneId::EngineLogic => "engine_logic",
            LaneId::Priority => "priority_lane",
        }
    }

    /// Its position in [`LaneId::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lane of a message routed to `bus`.
    pub fn of(bus: BusId, env: &Envelope) -> LaneId {
        if is_priority(&env.kind, env.prio) {
            LaneId::Priority
        } else if bus == BusId::MarketData {
            LaneId::MarketData
        } else {
            LaneId::EngineLogic
        }
    }
}

/// Rounds to 0.1 µs (handler and queue times are recorded in ns): the figures are read by
/// people, and the histograms keep 2 significant digits.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Percentiles of a histogram of (whole) microseconds.
fn percentiles_of(h: &Histogram<u64>) -> Percentiles {
    let q = |p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p) as f64);
    Percentiles {
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: (!h.is_empty()).then(|| h.max() as f64),
        count: h.len(),
    }
}

/// Handler time, queue wait and timer time over a window.
#[derive(Debug)]
struct HandlerHists {
    handler: Histogram<u64>,
    queue: Histogram<u64>,
    timer: Histogram<u64>,
}

impl HandlerHists {
    fn new() -> HandlerHists {
        HandlerHists {
            handler: ns_histogram(),
            queue: ns_histogram(),
            timer: ns_histogram(),
        }
    }

    fn record(&mut self, queue: u64, handler: u64) {
        let _ = self.queue.record(queue);
        let _ = self.handler.record(handler);
    }

    fn figures(&self) -> HandlerFigures {
        let ns = |h: &Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| tenth(h.value_at_quantile(q) as f64 / 1000.0))
        };
        let max = |h: &Histogram<u64>| (!h.is_empty()).then(|| tenth(h.max() as f64 / 1000.0));
        HandlerFigures {
            handler_p99_us: ns(&self.handler, 0.99),
            handler_max_us: max(&self.handler),
            queue_p99_us: ns(&self.queue, 0.99),
            queue_max_us: max(&self.queue),
            handled: self.handler.len(),
            timer_max_us: max(&self.timer),
        }
    }
}

/// What the run's status line reads every second.
#[derive(Debug)]
struct StatusWindow {
    handlers: HandlerHists,
    lanes: [Histogram<u64>; 3],
    buses: [Histogram<u64>; 2],
}

impl StatusWindow {
    fn new() -> StatusWindow {
        StatusWindow {
            handlers: HandlerHists::new(),
            lanes: [histogram(), histogram(), histogram()],
            buses: [histogram(), histogram()],
        }
    }
}

/// What the engine's heartbeat reads.
#[derive(Debug)]
struct HeartbeatWindow {
    handlers: HandlerHists,
    lanes: [Histogram<u64>; 3],
}

impl HeartbeatWindow {
    fn new() -> HeartbeatWindow {
        HeartbeatWindow {
            handlers: HandlerHists::new(),
            lanes: [histogram(), histogram(), histogram()],
        }
    }
}

/// Everything one engine records, under one lock that only the engine's own deliveries take
/// per message (readers swap a window out once a second, with one prepared outside the lock),
/// so engines never wait for each other's figures.
#[derive(Debug)]
struct EngineRecord {
    heartbeat: HeartbeatWindow,
    status: StatusWindow,
    steady: HandlerHists,
    steady_lanes: [Histogram<u64>; 3],
    warmup_lanes: [Histogram<u64>; 3],
    steady_kinds: HashMap<EventKind, Histogram<u64>>,
    /// Since the start, per bus (their lengths are the delivered counts).
    bus_total: [Histogram<u64>; 2],
    /// Since the start, in Prometheus buckets.
    totals: EngineTotals,
}

/// One engine's handler time, queue wait and delivery latency (see the module doc).
#[derive(Debug)]
pub struct EngineTimes {
    engine: &'static str,
    started: Instant,
    warmup: Duration,
    record: Mutex<EngineRecord>,
    /// When the engine last sent its heartbeat, ms since `started` (`u64::MAX`: never).
    last_beat_ms: AtomicU64,
}

/// One delivery, as [`EngineTimes::record_message`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryTimes {
    /// The bus the message's kind is routed to.
    pub bus: BusId,
    /// Its lane.
    pub lane: LaneId,
    /// Publish stamp to handler start, microseconds.
    pub latency_us: u64,
    /// When the engine's reader took it from the transport.
    pub received: Instant,
    /// When the handler began.
    pub began: Instant,
    /// When it ended.
    pub ended: Instant,
}

impl EngineTimes {
    /// Figures of `engine`; what happens before `started + warmup` counts as warm-up.
    pub fn new(engine: &'static str, started: Instant, warmup: Duration) -> EngineTimes {
        EngineTimes {
            engine,
            started,
            warmup,
            record: Mutex::new(EngineRecord {
                heartbeat: HeartbeatWindow::new(),
                status: StatusWindow::new(),
                steady: HandlerHists::new(),
                steady_lanes: [histogram(), histogram(), histogram()],
                warmup_lanes: [histogram(), histogram(), histogram()],
                steady_kinds: HashMap::new(),
                bus_total: [histogram(), histogram()],
                totals: EngineTotals::default(),
            }),
            last_beat_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Notes that the engine sent its heartbeat now.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the engine's last heartbeat (`None`: none sent yet).
    pub fn since_beat(&self) -> Option<Duration> {
        match self.last_beat_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Figures since the start, in Prometheus buckets.
    pub fn totals(&self) -> EngineTotals {
        self.record.lock().totals.clone()
    }

    /// The engine.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    fn steady_at(&self, at: Instant) -> bool {
        at.duration_since(self.started) >= self.warmup
    }

    /// Records one handled message of `kind`.
    pub fn record_message(&self, kind: &EventKind, d: DeliveryTimes) {
        let queue =
            (d.began.saturating_duration_since(d.received).as_nanos() as u64).clamp(1, MAX_NS);
        let handler =
            (d.ended.saturating_duration_since(d.began).as_nanos() as u64).clamp(1, MAX_NS);
        let us = d.latency_us.clamp(1, MAX_US);
        let (lane, bus) = (d.lane.index(), d.bus.index());
        let steady = self.steady_at(d.began);
        let mut r = self.record.lock();
        r.heartbeat.handlers.record(queue, handler);
        let _ = r.heartbeat.lanes[lane].record(us);
        r.status.handlers.record(queue, handler);
        let _ = r.status.lanes[lane].record(us);
        let _ = r.status.buses[bus].record(us);
        let _ = r.bus_total[bus].record(us);
        r.totals.delivery[bus][lane].record_ns(us.saturating_mul(1000));
        r.totals.handler.record_ns(handler);
        r.totals.queue.record_ns(queue);
        if steady {
            r.steady.record(queue, handler);
            let _ = r.steady_lanes[lane].record(us);
            match r.steady_kinds.get_mut(kind) {
                Some(h) => {
                    let _ = h.record(us);
                }
                None => {
                    let mut h = histogram();
                    let _ = h.record(us);
                    r.steady_kinds.insert(kind.clone(), h);
                }
            }
        } else {
            let _ = r.warmup_lanes[lane].record(us);
        }
    }

    /// Records how long a timer callback held the engine.
    pub fn record_timer(&self, took: Duration) {
        let ns = (took.as_nanos() as u64).clamp(1, MAX_NS);
        let steady = self.steady_at(Instant::now());
        let mut r = self.record.lock();
        let _ = r.heartbeat.handlers.timer.record(ns);
        let _ = r.status.handlers.timer.record(ns);
        if steady {
            let _ = r.steady.timer.record(ns);
        }
    }

    /// Figures since the previous call (for the heartbeat), and a fresh window.
    pub fn take_window(&self) -> EngineLatency {
        let mut w = HeartbeatWindow::new();
        std::mem::swap(&mut w, &mut self.record.lock().heartbeat);
        EngineLatency {
            handler: w.handlers.figures(),
            delivery: LaneId::ALL
                .iter()
                .filter(|l| !w.lanes[l.index()].is_empty())
                .map(|l| (l.as_str().to_string(), percentiles_of(&w.lanes[l.index()])))
                .collect(),
        }
    }

    /// The status line's window since the previous call (apart from the heartbeat's), and a
    /// fresh one.
    fn take_status(&self) -> StatusWindow {
        let mut w = StatusWindow::new();
        std::mem::swap(&mut w, &mut self.record.lock().status);
        w
    }

    /// Steady-state handler figures since the start.
    pub fn steady(&self) -> HandlerFigures {
        self.record.lock().steady.figures()
    }
}

/// Traffic and latency of the engines of one process: per bus, per lane, per kind, per engine.
/// Deliveries are recorded by each engine in its own [`EngineTimes`]; this adds them up.
#[derive(Debug)]
pub struct BusMetrics {
    started: Instant,
    warmup: Duration,
    published: [AtomicU64; 2],
    engines: Mutex<Vec<Arc<EngineTimes>>>,
    /// What `/metrics` and `/readyz` read besides the times (see [`crate::telemetry`]).
    pub(crate) telemetry: crate::telemetry::Telemetry,
}

impl Default for BusMetrics {
    fn default() -> Self {
        BusMetrics::new(WARMUP)
    }
}

/// One bus's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BusFigures {
    /// Messages published by the engines.
    pub published: u64,
    /// Messages delivered to the engines.
    pub delivered: u64,
    /// Delivery latency percentiles, microseconds (`None` before the first delivery).
    pub latency_p50_us: Option<u64>,
    /// 99th percentile.
    pub latency_p99_us: Option<u64>,
    /// 99.9th percentile.
    pub latency_p999_us: Option<u64>,
    /// Largest.
    pub latency_max_us: Option<u64>,
}

fn figures(h: &Histogram<u64>, published: u64, delivered: u64) -> BusFigures {
    let q = |p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p));
    BusFigures {
        published,
        delivered,
        latency_p50_us: q(0.5),
        latency_p99_us: q(0.99),
        latency_p999_us: q(0.999),
        latency_max_us: (!h.is_empty()).then(|| h.max()),
    }
}

/// Per-kind percentiles (steady state).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindFigures {
    /// Median, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// Messages recorded.
    pub count: u64,
}

/// The `latency` section of the run report (see the module doc for what is measured).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// After the warm-up: the headline figures, by lane.
    pub steady: BTreeMap<String, Percentiles>,
    /// During the warm-up, by lane.
    pub warmup: BTreeMap<String, Percentiles>,
    /// Steady state, by kind.
    pub by_kind: BTreeMap<String, KindFigures>,
    /// Steady state, by engine.
    pub handlers: BTreeMap<String, HandlerFigures>,
    /// How long the warm-up lasted, seconds.
    pub warmup_s: f64,
}

/// The figures of one status-line window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    /// Per bus (MarketData, Engine Logic): counts since the start, latency since the last call.
    pub buses: [BusFigures; 2],
    /// Per lane (market data, engine logic, priority): latency since the last call.
    pub lanes: [Percentiles; 3],
    /// Per engine: handler time and queue wait since the last call.
    pub engines: Vec<(&'static str, HandlerFigures)>,
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both have the same bounds: adding cannot fail.
    let _ = into.add(from);
}

impl BusMetrics {
    /// Metrics whose first `warmup` (from now) is reported apart from the steady state.
    pub fn new(warmup: Duration) -> BusMetrics {
        BusMetrics {
            started: Instant::now(),
            warmup,
            published: Default::default(),
            engines: Mutex::new(Vec::new()),
            telemetry: Default::default(),
        }
    }

    /// Counters of trading events (alerts, equity) that `/metrics` exposes.
    pub fn trading(&self) -> &crate::telemetry::TradingMetrics {
        &self.telemetry.trading
    }

    /// The engines' times, in the order they started.
    pub fn engine_times(&self) -> Vec<Arc<EngineTimes>> {
        self.engine_list()
    }

    /// The warm-up length.
    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    /// Counts `n` messages published on `bus`.
    pub fn published(&self, bus: BusId, n: u64) {
        self.published[bus.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// A new engine's times, reported with the run's.
    pub fn engine(&self, engine: &'static str) -> Arc<EngineTimes> {
        let t = Arc::new(EngineTimes::new(engine, self.started, self.warmup));
        self.engines.lock().push(t.clone());
        t
    }

    fn engine_list(&self) -> Vec<Arc<EngineTimes>> {
        self.engines.lock().clone()
    }

    /// Figures since the start, per bus (MarketData, Engine Logic).
    pub fn totals(&self) -> [BusFigures; 2] {
        let mut hists = [histogram(), histogram()];
        for e in self.engine_list() {
            let r = e.record.lock();
            for (into, from) in hists.iter_mut().zip(&r.bus_total) {
                add(into, from);
            }
        }
        [0, 1].map(|b| {
            figures(
                &hists[b],
                self.published[b].load(Ordering::Relaxed),
                hists[b].len(),
            )
        })
    }

    /// Messages delivered per bus since the start (the status line's counts: no histogram
    /// is merged for them).
    fn delivered(&self) -> [u64; 2] {
        let mut n = [0u64; 2];
        for e in self.engine_list() {
            let r = e.record.lock();
            for (into, h) in n.iter_mut().zip(&r.bus_total) {
                *into += h.len();
            }
        }
        n
    }

    /// Per bus, per lane and per engine, latency since the previous call, and a fresh window.
    pub fn take_lane_window(&self) -> Window {
        let mut buses = [histogram(), histogram()];
        let mut lanes = [histogram(), histogram(), histogram()];
        let mut engines = Vec::new();
        for e in self.engine_list() {
            let w = e.take_status();
            for (into, from) in buses.iter_mut().zip(&w.buses) {
                add(into, from);
            }
            for (into, from) in lanes.iter_mut().zip(&w.lanes) {
                add(into, from);
            }
            engines.push((e.engine(), w.handlers.figures()));
        }
        let delivered = self.delivered();
        Window {
            buses: [0, 1].map(|b| {
                figures(
                    &buses[b],
                    self.published[b].load(Ordering::Relaxed),
                    delivered[b],
                )
            }),
            lanes: [0, 1, 2].map(|l| percentiles_of(&lanes[l])),
            engines,
        }
    }

    /// The run report's `latency` section.
    pub fn report(&self) -> LatencyReport {
        let mut steady_lanes = [histogram(), histogram(), histogram()];
        let mut warmup_lanes = [histogram(), histogram(), histogram()];
        let mut kinds: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        let mut handlers: BTreeMap<String, HandlerFigures> = BTreeMap::new();
        for e in self.engine_list() {
            let r = e.record.lock();
            for l in 0..3 {
                add(&mut steady_lanes[l], &r.steady_lanes[l]);
                add(&mut warmup_lanes[l], &r.warmup_lanes[l]);
            }
            for (k, h) in &r.steady_kinds {
                add(
                    kinds
                        .entry(k.as_str().to_string())
                        .or_insert_with(histogram),
                    h,
                );
            }
            let f = r.steady.figures();
            // Instances of one engine in one process are reported together by their worst.
            handlers
                .entry(e.engine().to_string())
                .and_modify(|old| {
                    old.handled += f.handled;
                    old.handler_p99_us = max_opt(old.handler_p99_us, f.handler_p99_us);
                    old.handler_max_us = max_opt(old.handler_max_us, f.handler_max_us);
                    old.queue_p99_us = max_opt(old.queue_p99_us, f.queue_p99_us);
                    old.queue_max_us = max_opt(old.queue_max_us, f.queue_max_us);
                    old.timer_max_us = max_opt(old.timer_max_us, f.timer_max_us);
                })
                .or_insert(f);
        }
        let lanes = |hs: &[Histogram<u64>; 3]| {
            LaneId::ALL
                .iter()
                .map(|l| (l.as_str().to_string(), percentiles_of(&hs[l.index()])))
                .collect()
        };
        LatencyReport {
            steady: lanes(&steady_lanes),
            warmup: lanes(&warmup_lanes),
            by_kind: kinds
                .into_iter()
                .map(|(k, h)| {
                    let p = percentiles_of(&h);
                    (
                        k,
                        KindFigures {
                            p50_us: p.p50_us,
                            p99_us: p.p99_us,
                            count: p.count,
                        },
                    )
                })
                .collect(),
            handlers,
            warmup_s: self.warmup.as_secs_f64(),
        }
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_core::{Priority, Topic};

    fn env(kind: EventKind, prio: Priority) -> Envelope {
        Envelope::builder(
            kind.clone(),
            Topic::new(&format!("{kind}.X")).unwrap(),
            "t",
            "t-1",
        )
        .prio(prio)
        .build()
    }

    /// Records a delivery of `e` (routed to `bus`) with `latency_us`, a queue wait and a
    /// handler time.
    fn deliver(
        t: &EngineTimes,
        bus: BusId,
        e: &Envelope,
        latency_us: u64,
        queue_us: u64,
        handler_us: u64,
    ) {
        let received = Instant::now();
        let began = received + Duration::from_micros(queue_us);
        t.record_message(
            &e.kind,
            DeliveryTimes {
                bus,
                lane: LaneId::of(bus, e),
                latency_us,
                received,
                began,
                ended: began + Duration::from_micros(handler_us),
            },
        );
    }

    #[test]
    fn lanes_follow_bus_kind_and_priority() {
        let md = BusId::MarketData;
        let logic = BusId::Logic;
        assert_eq!(
            LaneId::of(md, &env(EventKind::MarketData, Priority::Normal)),
            LaneId::MarketData
        );
        assert_eq!(
            LaneId::of(logic, &env(EventKind::StrategySignal, Priority::Normal)),
            LaneId::EngineLogic
        );
        assert_eq!(
            LaneId::of(logic, &env(EventKind::RiskAlert, Priority::Normal)),
            LaneId::Priority
        );
        assert_eq!(
            LaneId::of(logic, &env(EventKind::StrategySignal, Priority::Critical)),
            LaneId::Priority
        );
        assert_eq!(
            LaneId::of(md, &env(EventKind::MarketData, Priority::Critical)),
            LaneId::Priority
        );
    }

    #[test]
    fn counts_and_windows_are_per_bus() {
        let m = BusMetrics::new(Duration::ZERO);
        let t = m.engine("features");
        m.published(BusId::MarketData, 3);
        deliver(
            &t,
            BusId::MarketData,
            &env(EventKind::MarketData, Priority::Normal),
            100,
            1,
            1,
        );
        deliver(
            &t,
            BusId::Logic,
            &env(EventKind::FeatureVector, Priority::Normal),
            5_000,
            1,
            1,
        );
        let w = m.take_lane_window();
        assert_eq!((w.buses[0].published, w.buses[0].delivered), (3, 1));
        assert_eq!((w.buses[1].published, w.buses[1].delivered), (0, 1));
        assert!(w.buses[1].latency_p99_us.unwrap() >= 4_950);
        assert_eq!(w.lanes[1].count, 1);
        assert_eq!(w.engines[0].0, "features");
        assert_eq!(w.engines[0].1.handled, 2);
        let w2 = m.take_lane_window();
        assert_eq!(w2.buses[1].latency_p99_us, None, "a fresh window");
        assert_eq!(w2.buses[1].delivered, 1, "counts are totals");
        assert!(m.totals()[1].latency_max_us.unwrap() >= 4_950);
    }

    #[test]
    fn lanes_kinds_engines_and_phases_are_recorded_apart() {
        // No warm-up: everything is steady state.
        let m = BusMetrics::new(Duration::ZERO);
        let (a, b) = (m.engine("strategy"), m.engine("risk"));
        deliver(
            &a,
            BusId::MarketData,
            &env(EventKind::MarketData, Priority::Normal),
            1_000,
            1,
            1,
        );
        deliver(
            &a,
            BusId::Logic,
            &env(EventKind::StrategySignal, Priority::Normal),
            2_000,
            1,
            1,
        );
        deliver(
            &b,
            BusId::Logic,
            &env(EventKind::RiskAlert, Priority::Normal),
            3_000,
            1,
            1,
        );
        deliver(
            &b,
            BusId::Logic,
            &env(EventKind::StrategySignal, Priority::Critical),
            4_000,
            1,
            1,
        );
        let r = m.report();
        assert_eq!(r.steady["market_data"].count, 1);
        assert_eq!(r.steady["engine_logic"].count, 1);
        assert_eq!(r.steady["priority_lane"].count, 2);
        assert_eq!(r.warmup["priority_lane"].count, 0);
        let p = r.steady["priority_lane"].p99_us.unwrap();
        assert!((3960.0..=4040.0).contains(&p), "{p}");
        assert_eq!(r.by_kind["strategy_signal"].count, 2);
        assert_eq!(r.by_kind["risk_alert"].count, 1);
        assert_eq!(r.by_kind["market_data"].count, 1);
        assert_eq!(
            (r.handlers["strategy"].handled, r.handlers["risk"].handled),
            (2, 2)
        );
        // Bus totals count the priority lane on its bus.
        assert_eq!(m.totals()[1].delivered, 3);

        // Everything before the warm-up ends is warm-up, and not in by_kind.
        let m = BusMetrics::new(Duration::from_secs(3600));
        deliver(
            &m.engine("ml"),
            BusId::Logic,
            &env(EventKind::FeatureVector, Priority::Normal),
            10,
            1,
            1,
        );
        let r = m.report();
        assert_eq!(r.warmup["engine_logic"].count, 1);
        assert_eq!(r.steady["engine_logic"].count, 0);
        assert!(r.by_kind.is_empty());
        assert_eq!(
            r.handlers["ml"].handled, 0,
            "handler figures are steady state"
        );
    }

    #[test]
    fn engine_times_split_queue_wait_from_handler_time() {
        let m = BusMetrics::new(Duration::ZERO);
        let t = m.engine("risk");
        deliver(
            &t,
            BusId::Logic,
            &env(EventKind::RiskAlert, Priority::Normal),
            400,
            300,
            50,
        );
        t.record_timer(Duration::from_millis(2));
        let w = t.take_window();
        assert_eq!(w.handler.handled, 1);
        let q = w.handler.queue_p99_us.unwrap();
        let h = w.handler.handler_p99_us.unwrap();
        assert!((297.0..=303.0).contains(&q), "{q}");
        assert!((49.5..=50.5).contains(&h), "{h}");
        assert!(w.handler.timer_max_us.unwrap() >= 1980.0);
        assert_eq!(w.delivery["priority_lane"].count, 1);
        assert!(!w.delivery.contains_key("market_data"));
        assert_eq!(t.take_window().handler.handled, 0, "a fresh window");
        // The heartbeat's window and the status line's are apart: both saw the message.
        assert_eq!(m.take_lane_window().engines[0].1.handled, 1);
        let r = m.report();
        assert_eq!(r.handlers["risk"].handled, 1);
        assert!(r.handlers["risk"].queue_p99_us.unwrap() >= 297.0);
    }
}
