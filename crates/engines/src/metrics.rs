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
use dualbus_bus::{BusId, Router};
use dualbus_core::{Envelope, EventKind};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after the start a run counts as warming up (start-up, the hub's warm-up bars).
pub const WARMUP: Duration = Duration::from_secs(5);

/// Latencies up to an hour are recorded (microseconds, 3 significant digits).
const MAX_US: u64 = 3_600_000_000;
/// Handler and queue times up to 10 minutes are recorded (nanoseconds).
const MAX_NS: u64 = 600_000_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds")
}

/// Per-engine histograms keep 2 significant digits (1%): an engine holds several windows of
/// them, and a p99 needs no more.
fn ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 2).expect("valid bounds")
}

fn us_histogram_2() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds")
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

    fn index(self) -> usize {
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

/// Percentiles of one histogram of microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Largest.
    pub max_us: Option<f64>,
    /// Messages recorded.
    pub count: u64,
}

/// Rounds to 0.1 µs: the figures are read by people, and HDR keeps 3 significant digits.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Percentiles {
    /// From a histogram whose unit is `unit_ns` nanoseconds.
    fn of(h: &Histogram<u64>, unit_ns: f64) -> Percentiles {
        let us = |v: u64| tenth(v as f64 * unit_ns / 1000.0);
        let q = |p: f64| (!h.is_empty()).then(|| us(h.value_at_quantile(p)));
        Percentiles {
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: (!h.is_empty()).then(|| us(h.max())),
            count: h.len(),
        }
    }
}

/// One engine's figures: handler time, queue wait, messages handled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerFigures {
    /// 99th percentile of the handler's time per message, microseconds.
    pub handler_p99_us: Option<f64>,
    /// Longest handler time, microseconds.
    pub handler_max_us: Option<f64>,
    /// 99th percentile of the queue wait, microseconds.
    pub queue_p99_us: Option<f64>,
    /// Longest queue wait, microseconds.
    pub queue_max_us: Option<f64>,
    /// Messages handled.
    pub handled: u64,
    /// Longest timer callback, microseconds (timers hold the engine like a handler does).
    pub timer_max_us: Option<f64>,
}

/// What one engine's heartbeat says about its latency, over the time since the previous one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineLatency {
    /// Handler time and queue wait.
    #[serde(flatten)]
    pub handler: HandlerFigures,
    /// Delivery latency to this engine, per lane that carried messages to it.
    pub delivery: BTreeMap<String, Percentiles>,
}

#[derive(Debug)]
struct TimesWindow {
    handler: Histogram<u64>,
    queue: Histogram<u64>,
    timer: Histogram<u64>,
    lanes: [Histogram<u64>; 3],
}

impl TimesWindow {
    fn new() -> TimesWindow {
        TimesWindow {
            handler: ns_histogram(),
            queue: ns_histogram(),
            timer: ns_histogram(),
            lanes: [us_histogram_2(), us_histogram_2(), us_histogram_2()],
        }
    }

    fn handler_figures(&self) -> HandlerFigures {
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

/// One engine's handler time, queue wait and delivery latency (see the module doc).
#[derive(Debug)]
pub struct EngineTimes {
    engine: &'static str,
    started: Instant,
    warmup: Duration,
    /// Since the last heartbeat.
    window: Mutex<TimesWindow>,
    /// Since the last status line of the run (handler and queue only).
    status: Mutex<TimesWindow>,
    /// Steady state since the start.
    steady: Mutex<TimesWindow>,
}

impl EngineTimes {
    /// Figures of `engine`; the first `warmup` after now count as warm-up.
    pub fn new(engine: &'static str, started: Instant, warmup: Duration) -> EngineTimes {
        EngineTimes {
            engine,
            started,
            warmup,
            window: Mutex::new(TimesWindow::new()),
            status: Mutex::new(TimesWindow::new()),
            steady: Mutex::new(TimesWindow::new()),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    fn steady_at(&self, at: Instant) -> bool {
        at.duration_since(self.started) >= self.warmup
    }

    /// Records one handled message: its lane, its delivery latency (µs), when the reader took
    /// it from the transport, when its handler began and ended.
    pub fn record_message(
        &self,
        lane: LaneId,
        latency_us: u64,
        received: Instant,
        began: Instant,
        ended: Instant,
    ) {
        let queue = (began.saturating_duration_since(received).as_nanos() as u64).clamp(1, MAX_NS);
        let handler = (ended.saturating_duration_since(began).as_nanos() as u64).clamp(1, MAX_NS);
        let latency_us = latency_us.clamp(1, MAX_US);
        let record = |w: &mut TimesWindow| {
            let _ = w.queue.record(queue);
            let _ = w.handler.record(handler);
            let _ = w.lanes[lane.index()].record(latency_us);
        };
        record(&mut self.window.lock());
        {
            let mut st = self.status.lock();
            let _ = st.queue.record(queue);
            let _ = st.handler.record(handler);
        }
        if self.steady_at(began) {
            record(&mut self.steady.lock());
        }
    }

    /// Records how long a timer callback held the engine.
    pub fn record_timer(&self, took: Duration) {
        let ns = (took.as_nanos() as u64).clamp(1, MAX_NS);
        let _ = self.window.lock().timer.record(ns);
        if self.steady_at(Instant::now()) {
            let _ = self.steady.lock().timer.record(ns);
        }
    }

    /// Figures since the previous call (for the heartbeat), and a fresh window.
    pub fn take_window(&self) -> EngineLatency {
        let w = std::mem::replace(&mut *self.window.lock(), TimesWindow::new());
        EngineLatency {
            handler: w.handler_figures(),
            delivery: LaneId::ALL
                .iter()
                .filter(|l| !w.lanes[l.index()].is_empty())
                .map(|l| {
                    (
                        l.as_str().to_string(),
                        Percentiles::of(&w.lanes[l.index()], 1000.0),
                    )
                })
                .collect(),
        }
    }

    /// Handler figures since the previous call (for the run's status line, apart from the
    /// heartbeat's window).
    pub fn take_status_window(&self) -> HandlerFigures {
        std::mem::replace(&mut *self.status.lock(), TimesWindow::new()).handler_figures()
    }

    /// Steady-state handler figures since the start.
    pub fn steady(&self) -> HandlerFigures {
        self.steady.lock().handler_figures()
    }
}

#[derive(Debug)]
struct BusLane {
    published: AtomicU64,
    delivered: AtomicU64,
    /// Since the last [`BusMetrics::take_window`].
    window: Mutex<Histogram<u64>>,
    /// Since the start.
    total: Mutex<Histogram<u64>>,
}

impl Default for BusLane {
    fn default() -> Self {
        BusLane {
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            window: Mutex::new(histogram()),
            total: Mutex::new(histogram()),
        }
    }
}

#[derive(Debug)]
struct LaneHists {
    warmup: Histogram<u64>,
    steady: Histogram<u64>,
    window: Histogram<u64>,
}

impl Default for LaneHists {
    fn default() -> Self {
        LaneHists {
            warmup: histogram(),
            steady: histogram(),
            window: histogram(),
        }
    }
}

/// Traffic and latency of the engines of one process: per bus, per lane, per kind, per engine.
#[derive(Debug)]
pub struct BusMetrics {
    started: Instant,
    warmup: Duration,
    buses: [BusLane; 2],
    lanes: [Mutex<LaneHists>; 3],
    /// Steady state, by kind.
    kinds: Mutex<HashMap<EventKind, Histogram<u64>>>,
    engines: Mutex<Vec<Arc<EngineTimes>>>,
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

/// The lane figures of one status-line window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    /// Per bus (MarketData, Engine Logic): counts since the start, latency since the last call.
    pub buses: [BusFigures; 2],
    /// Per lane (market data, engine logic, priority): latency since the last call.
    pub lanes: [Percentiles; 3],
}

impl BusMetrics {
    /// Metrics whose first `warmup` (from now) is reported apart from the steady state.
    pub fn new(warmup: Duration) -> BusMetrics {
        BusMetrics {
            started: Instant::now(),
            warmup,
            buses: Default::default(),
            lanes: Default::default(),
            kinds: Mutex::new(HashMap::new()),
            engines: Mutex::new(Vec::new()),
        }
    }

    /// When the run started (the warm-up is measured from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The warm-up length.
    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    /// Counts `n` messages published on `bus`.
    pub fn published(&self, bus: BusId, n: u64) {
        self.buses[bus.index()]
            .published
            .fetch_add(n, Ordering::Relaxed);
    }

    /// A new engine's times, reported with the run's.
    pub fn engine(&self, engine: &'static str) -> Arc<EngineTimes> {
        let t = Arc::new(EngineTimes::new(engine, self.started, self.warmup));
        self.engines.lock().push(t.clone());
        t
    }

    /// Records a delivery of `env` routed to `bus`, whose handler began at `began`; returns its
    /// latency in microseconds and its lane.
    pub fn delivered_env(
        &self,
        router: &Router,
        env: &Envelope,
        began: Instant,
        now_unix_ns: u64,
    ) -> (u64, LaneId) {
        let bus = router.bus_of(&env.kind);
        let lane = LaneId::of(bus, env);
        let us = (now_unix_ns.saturating_sub(env.ts) / 1_000).clamp(1, MAX_US);
        self.record(bus, lane, Some(&env.kind), us, began);
        (us, lane)
    }

    /// Records a delivery on `bus` of a message stamped at `ts` (Unix ns), normal lane.
    pub fn delivered(&self, bus: BusId, ts: u64) {
        let us = (dualbus_core::now_unix_nanos().saturating_sub(ts) / 1_000).clamp(1, MAX_US);
        let lane = match bus {
            BusId::MarketData => LaneId::MarketData,
            BusId::Logic => LaneId::EngineLogic,
        };
        self.record(bus, lane, None, us, Instant::now());
    }

    fn record(&self, bus: BusId, lane: LaneId, kind: Option<&EventKind>, us: u64, at: Instant) {
        let b = &self.buses[bus.index()];
        b.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = b.window.lock().record(us);
        let _ = b.total.lock().record(us);
        let steady = at.duration_since(self.started) >= self.warmup;
        {
            let mut l = self.lanes[lane.index()].lock();
            let _ = l.window.record(us);
            let _ = if steady {
                l.steady.record(us)
            } else {
                l.warmup.record(us)
            };
        }
        if let (true, Some(kind)) = (steady, kind) {
            let mut kinds = self.kinds.lock();
            match kinds.get_mut(kind) {
                Some(h) => {
                    let _ = h.record(us);
                }
                None => {
                    let mut h = histogram();
                    let _ = h.record(us);
                    kinds.insert(kind.clone(), h);
                }
            }
        }
    }

    /// Figures since the start, per bus (MarketData, Engine Logic).
    pub fn totals(&self) -> [BusFigures; 2] {
        [BusId::MarketData, BusId::Logic].map(|b| {
            let l = &self.buses[b.index()];
            figures(
                &l.total.lock(),
                l.published.load(Ordering::Relaxed),
                l.delivered.load(Ordering::Relaxed),
            )
        })
    }

    /// Latency figures since the previous call (counts are totals), and a fresh window.
    pub fn take_window(&self) -> [BusFigures; 2] {
        self.take_lane_window().buses
    }

    /// Per bus and per lane, latency since the previous call, and a fresh window.
    pub fn take_lane_window(&self) -> Window {
        let buses = [BusId::MarketData, BusId::Logic].map(|b| {
            let l = &self.buses[b.index()];
            let h = std::mem::replace(&mut *l.window.lock(), histogram());
            figures(
                &h,
                l.published.load(Ordering::Relaxed),
                l.delivered.load(Ordering::Relaxed),
            )
        });
        let lanes = LaneId::ALL.map(|l| {
            let h = std::mem::replace(&mut self.lanes[l.index()].lock().window, histogram());
            Percentiles::of(&h, 1000.0)
        });
        Window { buses, lanes }
    }

    /// The engines' times, in the order they started.
    pub fn engines(&self) -> Vec<Arc<EngineTimes>> {
        self.engines.lock().clone()
    }

    /// The run report's `latency` section.
    pub fn report(&self) -> LatencyReport {
        let mut steady = BTreeMap::new();
        let mut warmup = BTreeMap::new();
        for l in LaneId::ALL {
            let h = self.lanes[l.index()].lock();
            steady.insert(l.as_str().to_string(), Percentiles::of(&h.steady, 1000.0));
            warmup.insert(l.as_str().to_string(), Percentiles::of(&h.warmup, 1000.0));
        }
        let by_kind = self
            .kinds
            .lock()
            .iter()
            .map(|(k, h)| {
                let p = Percentiles::of(h, 1000.0);
                (
                    k.as_str().to_string(),
                    KindFigures {
                        p50_us: p.p50_us,
                        p99_us: p.p99_us,
                        count: p.count,
                    },
                )
            })
            .collect();
        let mut handlers: BTreeMap<String, HandlerFigures> = BTreeMap::new();
        for e in self.engines.lock().iter() {
            let f = e.steady();
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
        LatencyReport {
            steady,
            warmup,
            by_kind,
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
    use dualbus_bus::Config;
    use dualbus_core::{Priority, Topic};

    fn env(kind: EventKind, prio: Priority, ts: u64) -> Envelope {
        Envelope::builder(
            kind.clone(),
            Topic::new(&format!("{kind}.X")).unwrap(),
            "t",
            "t-1",
        )
        .prio(prio)
        .ts(ts)
        .build()
    }

    #[test]
    fn counts_and_windows_are_per_bus() {
        let m = BusMetrics::default();
        let now = dualbus_core::now_unix_nanos();
        m.published(BusId::MarketData, 3);
        m.delivered(BusId::MarketData, now);
        m.delivered(BusId::Logic, now - 5_000_000); // 5 ms ago
        let w = m.take_window();
        assert_eq!((w[0].published, w[0].delivered), (3, 1));
        assert_eq!((w[1].published, w[1].delivered), (0, 1));
        assert!(w[1].latency_p99_us.unwrap() >= 5_000);
        let w2 = m.take_window();
        assert_eq!(w2[1].latency_p99_us, None, "a fresh window");
        assert_eq!(w2[1].delivered, 1, "counts are totals");
        assert!(m.totals()[1].latency_max_us.unwrap() >= 5_000);
    }

    #[test]
    fn lanes_kinds_and_phases_are_recorded_apart() {
        let router = Router::new(&Config::default());
        // No warm-up: everything is steady state.
        let m = BusMetrics::new(Duration::ZERO);
        let now = dualbus_core::now_unix_nanos();
        let began = Instant::now();
        let quote = env(EventKind::MarketData, Priority::Normal, now - 1_000_000);
        let signal = env(EventKind::StrategySignal, Priority::Normal, now - 2_000_000);
        let alert = env(EventKind::RiskAlert, Priority::Normal, now - 3_000_000);
        let urgent = env(
            EventKind::StrategySignal,
            Priority::Critical,
            now - 4_000_000,
        );
        assert_eq!(
            m.delivered_env(&router, &quote, began, now).1,
            LaneId::MarketData
        );
        assert_eq!(
            m.delivered_env(&router, &signal, began, now).1,
            LaneId::EngineLogic
        );
        assert_eq!(
            m.delivered_env(&router, &alert, began, now),
            (3_000, LaneId::Priority)
        );
        assert_eq!(
            m.delivered_env(&router, &urgent, began, now).1,
            LaneId::Priority
        );
        let r = m.report();
        assert_eq!(r.steady["market_data"].count, 1);
        assert_eq!(r.steady["engine_logic"].count, 1);
        assert_eq!(r.steady["priority_lane"].count, 2);
        assert_eq!(r.warmup["priority_lane"].count, 0);
        let p = r.steady["priority_lane"].p99_us.unwrap();
        assert!((3990.0..=4010.0).contains(&p), "{p}");
        assert_eq!(r.by_kind["strategy_signal"].count, 2);
        assert_eq!(r.by_kind["risk_alert"].count, 1);
        assert_eq!(r.by_kind["market_data"].count, 1);
        // Bus totals still count the priority lane on its bus.
        assert_eq!(m.totals()[1].delivered, 3);

        // Everything before the warm-up ends is warm-up, and not in by_kind.
        let m = BusMetrics::new(Duration::from_secs(3600));
        m.delivered_env(&router, &signal, Instant::now(), now);
        let r = m.report();
        assert_eq!(r.warmup["engine_logic"].count, 1);
        assert_eq!(r.steady["engine_logic"].count, 0);
        assert!(r.by_kind.is_empty());
    }

    #[test]
    fn engine_times_split_queue_wait_from_handler_time() {
        let m = BusMetrics::new(Duration::ZERO);
        let t = m.engine("risk");
        let received = Instant::now();
        let began = received + Duration::from_micros(300);
        let ended = began + Duration::from_micros(50);
        t.record_message(LaneId::Priority, 400, received, began, ended);
        t.record_timer(Duration::from_millis(2));
        let w = t.take_window();
        assert_eq!(w.handler.handled, 1);
        let q = w.handler.queue_p99_us.unwrap();
        let h = w.handler.handler_p99_us.unwrap();
        assert!((297.0..=303.0).contains(&q), "{q}");
        assert!((49.5..=50.5).contains(&h), "{h}");
        assert!(w.handler.timer_max_us.unwrap() >= 1990.0);
        assert_eq!(w.delivery["priority_lane"].count, 1);
        assert!(!w.delivery.contains_key("market_data"));
        assert_eq!(t.take_window().handler.handled, 0, "a fresh window");
        let r = m.report();
        assert_eq!(r.handlers["risk"].handled, 1);
        assert!(r.handlers["risk"].queue_p99_us.unwrap() >= 297.0);
    }
}
