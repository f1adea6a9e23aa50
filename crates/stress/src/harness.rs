//! The harness: scenarios, the publisher and checking consumer, faults, the report.

use crate::RedisServer;
use dualbus_bus::{
    BusId, Config, DualBus, FailoverMode, Handler, HandlerError, SubscribeOptions, Subscription,
};
use dualbus_core::{
    now_unix_nanos, Backpressure, Envelope, EventKind, Priority, StartFrom, Transport,
};
use dualbus_redis::{RedisOptions, RedisTransport};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// SIGKILL the MarketData server, then the Engine Logic server, `kills` times, each time
    /// restarting it empty.
    Crash,
    /// SIGSTOP the MarketData server for 2 s, then SIGCONT.
    Hang,
    /// Market data at 50x the normal rate for the burst while risk alerts keep flowing.
    FlashCrash,
    /// One group stalls while a backlog builds, then catches up.
    SlowConsumer,
    /// A consumer dies holding a batch; another instance of its group takes the batch over.
    ConsumerCrash,
}

impl Scenario {
    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Hang => "hang",
            Scenario::FlashCrash => "flash-crash",
            Scenario::SlowConsumer => "slow-consumer",
            Scenario::ConsumerCrash => "consumer-crash",
        }
    }
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct StressOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Crash: how many kills.
    pub kills: u32,
    /// Messages per second per bus in normal operation.
    pub rate: u64,
    /// Hang: how long the server is frozen.
    pub hang: Duration,
    /// Flash crash: how long the burst lasts.
    pub burst: Duration,
    /// Slow consumer: the backlog to build.
    pub backlog: u64,
    /// Consumer crash: run the consumer that dies as a separate process, this `dualbus`
    /// binary (`dualbus stress-consumer`), killed with SIGKILL; `None` runs it as tasks of
    /// this process, aborted (what the library's tests do, having no binary to start).
    pub consumer_exe: Option<std::path::PathBuf>,
    /// A heartbeat slower than this marks a bus down (the config's default, 100 ms, unless set).
    pub heartbeat_timeout: Option<Duration>,
}

impl StressOptions {
    /// The defaults of the `dualbus stress` command for a scenario.
    pub fn new(scenario: Scenario) -> StressOptions {
        StressOptions {
            scenario,
            kills: 20,
            rate: 1_000,
            hang: Duration::from_secs(2),
            burst: Duration::from_secs(10),
            backlog: 1_000_000,
            consumer_exe: None,
            heartbeat_timeout: None,
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// Worst.
    pub max: f64,
}

impl Millis {
    /// The median and worst of `v` (zeros when empty).
    pub fn of(mut v: Vec<f64>) -> Millis {
        v.sort_by(|a, b| a.total_cmp(b));
        match v.last() {
            Some(&max) => Millis {
                p50: v[v.len() / 2],
                max,
            },
            None => Millis::default(),
        }
    }
}

/// Percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Nanos {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Worst.
    pub max: u64,
}

impl Nanos {
    /// The median, 99th percentile and worst of `v` (zeros when empty).
    pub fn of(mut v: Vec<u64>) -> Nanos {
        v.sort_unstable();
        let Some(&max) = v.last() else {
            return Nanos::default();
        };
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        Nanos {
            p50: at(0.5),
            p99: at(0.99),
            max,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StressReport {
    /// The scenario.
    pub scenario: String,
    /// Messages accepted by publish calls.
    pub published: u64,
    /// Distinct messages handled.
    pub delivered: u64,
    /// Published, never handled.
    pub lost: u64,
    /// Handled more than once.
    pub duplicated: u64,
    /// Handled after a later message of the same kind.
    pub reordered: u64,
    /// Longest time between two deliveries at the consumer.
    pub max_gap_ms: f64,
    /// From each fault to the first delivery over the other bus.
    pub failover_ms: Millis,
    /// Publish-to-handler latency of risk alerts (priority lane).
    pub critical_latency_ns: Nanos,
    /// Largest peak resident set of this process and the Redis servers.
    pub peak_rss_bytes: u64,
    /// Times a bus was failed over from, and failed back to.
    pub failovers: u64,
    /// Times traffic moved back.
    pub failbacks: u64,
    /// Publish calls that failed.
    pub publish_errors: u64,
    /// Deliveries after the first (taken over from a dead consumer, or after a failure).
    pub redelivered: u64,
}

/// Peak resident set (VmHWM) of a process, in bytes.
pub fn peak_rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) by_kind: HashMap<EventKind, Vec<u64>>,
    /// The previous message handled by each consumer instance, per kind.
    pub(crate) previous: HashMap<(usize, EventKind), u64>,
    /// Messages handled after a later one of the same kind by the same consumer instance.
    pub(crate) reordered: u64,
    /// Messages a dead consumer was handed and never handled: another instance takes them
    /// over after the idle timeout, after later ones by design (a redelivery, not a reorder).
    pub(crate) held: std::collections::HashSet<(EventKind, u64)>,
    pub(crate) critical_ns: Vec<u64>,
    pub(crate) last_at: Option<Instant>,
    pub(crate) max_gap: Duration,
}

impl Seen {
    /// Messages handled, duplicates included.
    pub(crate) fn handled(&self) -> u64 {
        self.by_kind.values().map(|v| v.len() as u64).sum()
    }

    /// Messages of `kind` handled, duplicates included.
    pub(crate) fn handled_of(&self, kind: &EventKind) -> u64 {
        self.by_kind.get(kind).map_or(0, |v| v.len() as u64)
    }
}

/// A fault waiting for its first delivery over the other bus.
pub(crate) struct PendingFault {
    pub(crate) bus: BusId,
    pub(crate) at: Instant,
    pub(crate) at_ns: u64,
}

impl PendingFault {
    /// A fault of `bus` starting now.
    pub(crate) fn now(bus: BusId) -> PendingFault {
        PendingFault {
            bus,
            at: Instant::now(),
            at_ns: now_unix_nanos(),
        }
    }
}

pub(crate) struct Recorder {
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) fault: Arc<Mutex<Option<PendingFault>>>,
    pub(crate) failover_ms: Arc<Mutex<Vec<f64>>>,
    pub(crate) gate: Option<Arc<AtomicBool>>,
    /// Once set, the consumer is dead: it stops at its next message, holding its batch.
    pub(crate) dead: Option<Arc<AtomicBool>>,
    /// Which consumer instance this is (order is checked per instance).
    pub(crate) instance: usize,
}

fn bus_of(kind: &EventKind) -> BusId {
    dualbus_bus::route::default_bus(kind)
}

impl Handler for Recorder {
    fn handle(&self, m: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let gate = self.gate.clone();
        let dead = self.dead.as_ref().is_some_and(|d| d.load(Ordering::SeqCst));
        let now = Instant::now();
        if dead {
            self.seen.lock().held.insert((m.kind.clone(), m.seq));
        } else {
            self.record(m, now);
        }
        async move {
            if dead {
                // A dead consumer neither handles nor acknowledges anything again.
                std::future::pending::<()>().await;
            }
            if let Some(g) = gate {
                while !g.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(())
        }
    }
}

impl Recorder {
    fn record(&self, m: &Envelope, now: Instant) {
        let mut s = self.seen.lock();
        if let Some(last) = s.last_at {
            s.max_gap = s.max_gap.max(now.duration_since(last));
        }
        s.last_at = Some(now);
        s.by_kind.entry(m.kind.clone()).or_default().push(m.seq);
        let taken_over = s.held.contains(&(m.kind.clone(), m.seq));
        if let Some(prev) = s.previous.insert((self.instance, m.kind.clone()), m.seq) {
            if m.seq < prev && !taken_over {
                s.reordered += 1;
                if std::env::var_os("DUALBUS_STRESS_DEBUG").is_some() {
                    eprintln!("out of order: {} {} after {prev}", m.kind, m.seq);
                }
            }
        }
        if m.kind == EventKind::RiskAlert {
            s.critical_ns.push(now_unix_nanos().saturating_sub(m.ts));
        }
        drop(s);
        let mut f = self.fault.lock();
        if let Some(p) = f.as_ref() {
            if bus_of(&m.kind) == p.bus && m.ts > p.at_ns {
                self.failover_ms
                    .lock()
                    .push(now.duration_since(p.at).as_secs_f64() * 1e3);
                *f = None;
            }
        }
        drop(f);
    }
}

pub(crate) async fn connect(
    bus: &str,
    url: &str,
    maxlen: u64,
) -> Result<Arc<RedisTransport>, String> {
    let mut opts = RedisOptions::new(bus, url);
    opts.connect_timeout = Duration::from_millis(500);
    opts.maxlen = maxlen;
    RedisTransport::connect(opts)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Published sequence numbers per kind.
pub(crate) type Published = Arc<Mutex<HashMap<EventKind, Vec<u64>>>>;

/// Publishes market data at `rate` per second (the hub) until `stop`.
async fn publish_market_data(
    bus: DualBus,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    published: Published,
    errors: Arc<AtomicU64>,
) {
    let mut md_budget = 0f64;
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        md_budget += rate.load(Ordering::Relaxed) as f64 * now.duration_since(last).as_secs_f64();
        last = now;
        let mut batch: Vec<Envelope> = Vec::new();
        while md_budget >= 1.0 {
            md_budget -= 1.0;
            match bus.envelope(
                EventKind::MarketData,
                "market_data.trade.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({"price": 42000.5, "size": 0.1}),
            ) {
                Ok(e) => batch.push(e),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !batch.is_empty() {
            let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
            match bus.publish_batch(batch).await {
                Ok(()) => published
                    .lock()
                    .entry(EventKind::MarketData)
                    .or_default()
                    .extend(seqs),
                Err(e) => {
                    errors.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, "publish failed");
                }
            }
        }
    }
}

/// Publishes strategy signals and, one in ten, risk alerts at `rate` per second (the logic
/// engines) until `stop`.
async fn publish_logic(
    bus: DualBus,
    rate: u64,
    stop: Arc<AtomicBool>,
    published: Published,
    errors: Arc<AtomicU64>,
) {
    let start = Instant::now();
    let mut sent_logic = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let logic_due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent_logic < logic_due {
            sent_logic += 1;
            // One risk alert per ten signals, on the priority lane.
            let (kind, topic) = if sent_logic.is_multiple_of(10) {
                (EventKind::RiskAlert, "risk_alert.BTCUSDT")
            } else {
                (EventKind::StrategySignal, "strategy_signal.BTCUSDT")
            };
            let Ok(env) = bus.envelope(
                kind.clone(),
                topic,
                Priority::Normal,
                &serde_json::json!({"target": 1.0}),
            ) else {
                continue;
            };
            let seq = env.seq;
            match bus.publish_envelope(env).await {
                Ok(()) => published.lock().entry(kind).or_default().push(seq),
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "publish failed");
                }
            }
        }
    }
}

/// The stream-key prefix of the scenarios' traffic (the system's default).
pub const DEFAULT_PREFIX: &str = "dualbus";

/// The kinds the checked publishers send.
pub(crate) const CHECKED_KINDS: [EventKind; 3] = [
    EventKind::MarketData,
    EventKind::StrategySignal,
    EventKind::RiskAlert,
];

/// The checked clients' configuration: failover on, streams of `maxlen` entries, keys under
/// `prefix`, and the heartbeat timeout given (the default, 100 ms, when `None`).
pub(crate) fn checked_config(
    maxlen: u64,
    heartbeat_timeout: Option<Duration>,
    prefix: &str,
) -> Config {
    let mut cfg = Config::default();
    cfg.prefix = prefix.to_string();
    cfg.failover.enabled = FailoverMode::On;
    cfg.md.maxlen = maxlen;
    cfg.logic.maxlen = maxlen;
    if let Some(t) = heartbeat_timeout {
        cfg.failover.heartbeat_timeout_ms = t.as_millis() as u64;
    }
    cfg
}

/// Connects both buses and builds the checked publisher (`stress-pub`, sequence numbers from
/// 1); its siblings share the transports.
pub(crate) async fn checked_publisher(
    md_url: &str,
    logic_url: &str,
    cfg: &Config,
) -> Result<(Arc<RedisTransport>, Arc<RedisTransport>, DualBus), String> {
    let md = connect("md", md_url, cfg.md.maxlen).await?;
    let logic = connect("logic", logic_url, cfg.logic.maxlen).await?;
    let publisher = DualBus::builder("stress-pub")
        .config(cfg.clone())
        .transports(md.clone(), logic.clone())
        .first_seq(1)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((md, logic, publisher))
}

/// The checked publishers, running.
pub(crate) struct Publishing {
    /// Market data per second, read at every tick: a burst raises it.
    pub(crate) rate: Arc<AtomicU64>,
    /// Set: they stop.
    pub(crate) stop: Arc<AtomicBool>,
    /// What they published.
    pub(crate) published: Published,
    /// Publish calls that failed.
    pub(crate) errors: Arc<AtomicU64>,
    /// Market data, and strategy signals with risk alerts.
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the checked publishers: market data, and strategy signals with one risk alert in ten,
/// each at `rate` per second (market data's can be changed while they run).
pub(crate) fn start_publishers(publisher: &DualBus, rate: u64) -> Result<Publishing, String> {
    let p = Publishing {
        rate: Arc::new(AtomicU64::new(rate)),
        stop: Arc::new(AtomicBool::new(false)),
        published: Default::default(),
        errors: Arc::new(AtomicU64::new(0)),
        tasks: Vec::new(),
    };
    let md_task = tokio::spawn(publish_market_data(
        publisher.clone(),
        p.rate.clone(),
        p.stop.clone(),
        p.published.clone(),
        p.errors.clone(),
    ));
    let logic_publisher = publisher
        .sibling("stress-logic", "stress-logic-1")
        .map_err(|e| e.to_string())?;
    let logic_task = tokio::spawn(publish_logic(
        logic_publisher,
        rate,
        p.stop.clone(),
        p.published.clone(),
        p.errors.clone(),
    ));
    Ok(Publishing {
        tasks: vec![md_task, logic_task],
        ..p
    })
}

/// Waits until `progress()`, (handled, expected), has handled all expected, or has not moved
/// for `idle`.
pub(crate) async fn wait_delivered(progress: impl Fn() -> (u64, u64), idle: Duration) {
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let (got, want) = progress();
        if got >= want || last_change.elapsed() > idle {
            return;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one checked group got of what was published.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Messages published of the kinds the group takes.
    pub expected: u64,
    /// Distinct messages handled.
    pub delivered: u64,
    /// Published, never handled.
    pub lost: u64,
    /// Handled more than once.
    pub duplicated: u64,
    /// Handled after a later message of the same kind (by the same consumer instance).
    pub reordered: u64,
    /// Longest time between two deliveries.
    pub max_gap_ms: f64,
}

/// Counts, for the `kinds` a group takes, what it handled (`seen`) of what was `published`.
pub(crate) fn tally(
    published: &HashMap<EventKind, Vec<u64>>,
    seen: &Seen,
    kinds: &[EventKind],
) -> Tally {
    let mut t = Tally::default();
    for kind in kinds {
        let sent = published.get(kind).map(Vec::as_slice).unwrap_or_default();
        let got = seen
            .by_kind
            .get(kind)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut distinct = got.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let sent_set: std::collections::HashSet<u64> = sent.iter().copied().collect();
        let delivered = distinct.iter().filter(|s| sent_set.contains(s)).count() as u64;
        t.expected += sent.len() as u64;
        t.delivered += delivered;
        t.lost += sent.len() as u64 - delivered;
        t.duplicated += (got.len() - distinct.len()) as u64;
    }
    t.reordered = seen.reordered;
    t.max_gap_ms = seen.max_gap.as_secs_f64() * 1e3;
    t
}

/// Runs one scenario; `progress` receives a line now and then.
///
/// # Errors
/// When the Redis servers cannot be started or reached.
pub async fn run(
    opts: &StressOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<StressReport, String> {
    let mut md_server = RedisServer::start().map_err(|e| e.to_string())?;
    let mut logic_server = RedisServer::start().map_err(|e| e.to_string())?;
    // Streams must hold the whole backlog a slow group may build (MAXLEN trims regardless of
    // consumer groups).
    let maxlen = opts.backlog.saturating_mul(2).max(1_000_000);
    let cfg = checked_config(maxlen, opts.heartbeat_timeout, DEFAULT_PREFIX);
    let (md, logic, publisher) =
        checked_publisher(&md_server.url(), &logic_server.url(), &cfg).await?;
    let consumer = publisher
        .sibling("stress-sub", "stress-sub-1")
        .map_err(|e| e.to_string())?;

    let seen: Arc<Mutex<Seen>> = Default::default();
    let fault: Arc<Mutex<Option<PendingFault>>> = Default::default();
    let failover_ms: Arc<Mutex<Vec<f64>>> = Default::default();
    let slow = opts.scenario == Scenario::SlowConsumer;
    let consumer_crash = opts.scenario == Scenario::ConsumerCrash;
    // Consumer crash: instance 1 dies holding a batch; instance 2 of the same group takes it
    // over once it has been idle for 500 ms.
    let crash = consumer_crash.then(|| Arc::new(AtomicBool::new(false)));
    let idle = if consumer_crash {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(30)
    };
    let bound = if slow {
        (opts.backlog as usize).saturating_mul(2).max(100_000)
    } else {
        100_000
    };
    // The group every scenario checks ("stress"), and for consumer-crash its second instance.
    let options = || checked_group_options(idle, bound);
    let recorder = |dead: Option<Arc<AtomicBool>>, instance: usize| Recorder {
        seen: seen.clone(),
        fault: fault.clone(),
        failover_ms: failover_ms.clone(),
        gate: None,
        dead,
        instance,
    };
    // Consumer crash in a process of its own: it joins the group before anything is published.
    let mut child = match (&opts.consumer_exe, consumer_crash) {
        (Some(exe), true) => Some(
            ChildConsumer::start(
                exe,
                &ChildSpec {
                    md_url: md_server.url(),
                    logic_url: logic_server.url(),
                    maxlen,
                    bound,
                    prefix: DEFAULT_PREFIX.to_string(),
                    instance: "stress-sub-1".to_string(),
                    idle,
                },
            )
            .await?,
        ),
        _ => None,
    };
    let mut sub = if child.is_some() {
        None
    } else {
        Some(
            consumer
                .subscribe(options()?, recorder(crash.clone(), 1))
                .await
                .map_err(|e| e.to_string())?,
        )
    };
    let second = if consumer_crash {
        let instance = publisher
            .sibling("stress-sub", "stress-sub-2")
            .map_err(|e| e.to_string())?;
        Some(
            instance
                .subscribe(options()?, recorder(None, 2))
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    // The slow group of the slow-consumer scenario: it holds its first batch until the backlog
    // is built, then catches up; its deliveries are what the report counts.
    let gate = Arc::new(AtomicBool::new(!slow));
    let slow_seen: Arc<Mutex<Seen>> = Default::default();
    let slow_sub = if slow {
        Some(subscribe_slow(&publisher, bound, slow_seen.clone(), gate.clone()).await?)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let Publishing {
        rate,
        stop,
        published,
        errors,
        tasks,
    } = start_publishers(&publisher, opts.rate)?;
    let set_fault = |bus: BusId| *fault.lock() = Some(PendingFault::now(bus));
    let wait_back = |bus: BusId| wait_up(&publisher, bus, Duration::from_secs(15));
    let mut peak_servers = 0u64;
    let mut sample_servers = |md: &RedisServer, logic: &RedisServer| {
        for s in [md, logic] {
            if let Some(pid) = s.pid() {
                peak_servers = peak_servers.max(peak_rss_of(&pid.to_string()));
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    match opts.scenario {
        Scenario::Crash => {
            for k in 0..opts.kills {
                let bus = if k % 2 == 0 {
                    BusId::MarketData
                } else {
                    BusId::Logic
                };
                let server = if bus == BusId::MarketData {
                    &mut md_server
                } else {
                    &mut logic_server
                };
                // The fault starts once the server is gone.
                server.kill();
                set_fault(bus);
                tokio::time::sleep(Duration::from_millis(300)).await;
                server.restart().map_err(|e| e.to_string())?;
                wait_back(bus).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                progress(&format!("  kill {}/{}: {} bus", k + 1, opts.kills, bus));
            }
        }
        Scenario::Hang => {
            md_server.pause();
            set_fault(BusId::MarketData);
            tokio::time::sleep(opts.hang).await;
            md_server.resume();
            wait_back(BusId::MarketData).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Scenario::FlashCrash => {
            rate.store(opts.rate * 50, Ordering::Relaxed);
            let t = Instant::now();
            while t.elapsed() < opts.burst {
                tokio::time::sleep(Duration::from_millis(250)).await;
                sample_servers(&md_server, &logic_server);
            }
            rate.store(opts.rate, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Scenario::ConsumerCrash => {
            if let Some(mut c) = child.take() {
                // Tell it to stop at its next message, wait until it holds one, SIGKILL it.
                c.kill_holding_a_batch().await?;
                c.merge_into(&mut seen.lock(), 1)?;
                // What it held is what the broker still lists as its pending entries: those
                // reach consumer 2 as redeliveries, after later messages.
                for url in [md_server.url(), logic_server.url()] {
                    let held = pending_of(&url, DEFAULT_PREFIX, "stress", "stress-sub-1").await?;
                    seen.lock().held.extend(held);
                }
                progress("  consumer process 1 killed (SIGKILL) holding its batch; consumer 2 takes over");
            } else {
                if let Some(c) = &crash {
                    c.store(true, Ordering::SeqCst);
                }
                // Let it reach a message and stop there, then kill it: no acknowledgement leaves.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(s) = sub.take() {
                    s.abort();
                }
                progress("  consumer 1 killed holding its batch; consumer 2 takes over");
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Scenario::SlowConsumer => {
            rate.store(opts.rate.max(50_000), Ordering::Relaxed);
            let t = Instant::now();
            loop {
                let n = published
                    .lock()
                    .get(&EventKind::MarketData)
                    .map_or(0, |v| v.len() as u64);
                if n >= opts.backlog || t.elapsed() > Duration::from_secs(300) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                sample_servers(&md_server, &logic_server);
            }
            rate.store(opts.rate, Ordering::Relaxed);
            progress("  backlog built; the slow group catches up");
            gate.store(true, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    sample_servers(&md_server, &logic_server);

    // Wait for every published message (or for progress to stop for 10 s).
    let expected: u64 = published.lock().values().map(|v| v.len() as u64).sum();
    let expected_slow = published
        .lock()
        .get(&EventKind::MarketData)
        .map_or(0, |v| v.len() as u64);
    wait_delivered(
        || {
            let got = seen.lock().handled() + if slow { slow_seen.lock().handled() } else { 0 };
            let want = expected + if slow { expected_slow } else { 0 };
            (got, want)
        },
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(s) = sub {
        s.stop().await;
    }
    if let Some(s) = second {
        s.stop().await;
    }
    if let Some(s) = slow_sub {
        s.stop().await;
    }

    let published = published.lock().clone();
    let mut report = StressReport {
        scenario: opts.scenario.name().to_string(),
        publish_errors: errors.load(Ordering::Relaxed),
        ..Default::default()
    };
    let t = if slow {
        tally(&published, &slow_seen.lock(), &[EventKind::MarketData])
    } else {
        tally(&published, &seen.lock(), &CHECKED_KINDS)
    };
    report.published = t.expected;
    report.delivered = t.delivered;
    report.lost = t.lost;
    report.duplicated = t.duplicated;
    report.reordered = t.reordered;
    report.max_gap_ms = t.max_gap_ms;
    report.failover_ms = Millis::of(failover_ms.lock().clone());
    report.critical_latency_ns = Nanos::of(seen.lock().critical_ns.clone());
    for bus in BusId::ALL {
        let c = publisher.failover_counters(bus);
        report.failovers += c.failovers;
        report.failbacks += c.failbacks;
    }
    report.peak_rss_bytes = peak_rss_of("self").max(peak_servers);
    report.redelivered = md.stats().redelivered + logic.stats().redelivered;
    Ok(report)
}

/// The `slow` group (market data, from the oldest entry): each message is recorded in `seen`
/// as it arrives, and the handler then holds its batch while `gate` is down.
pub(crate) async fn subscribe_slow(
    publisher: &DualBus,
    bound: usize,
    seen: Arc<Mutex<Seen>>,
    gate: Arc<AtomicBool>,
) -> Result<Subscription, String> {
    publisher
        .sibling("stress-slow", "stress-slow-1")
        .map_err(|e| e.to_string())?
        .subscribe(
            SubscribeOptions::new("slow", &["market_data.>"])
                .map_err(|e| e.to_string())?
                .start(StartFrom::Oldest)
                .bound(bound, Backpressure::Block),
            Recorder {
                seen,
                fault: Default::default(),
                failover_ms: Default::default(),
                gate: Some(gate),
                dead: None,
                instance: 1,
            },
        )
        .await
        .map_err(|e| e.to_string())
}

/// Waits until `publisher` has `bus` up (its traffic back on it), at most `within`; whether it
/// has.
pub(crate) async fn wait_up(publisher: &DualBus, bus: BusId, within: Duration) -> bool {
    let t = Instant::now();
    loop {
        if publisher.failover_counters(bus).up {
            return true;
        }
        if t.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Topic patterns of the checked group.
const CHECKED_PATTERNS: [&str; 3] = ["market_data.>", "strategy_signal.>", "risk_alert.>"];

/// Subscription options of the checked group ("stress"), shared with the consumer process.
pub(crate) fn checked_group_options(
    idle: Duration,
    bound: usize,
) -> Result<SubscribeOptions, String> {
    Ok(SubscribeOptions::new("stress", &CHECKED_PATTERNS)
        .map_err(|e| e.to_string())?
        .start(StartFrom::Oldest)
        .bound(bound, Backpressure::Block)
        .redelivery(idle, 5))
}

/// What the consumer process (`dualbus stress-consumer`) is: the servers, its stream keys,
/// its group's settings and its name.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// MarketData server.
    pub md_url: String,
    /// Engine Logic server.
    pub logic_url: String,
    /// Stream length.
    pub maxlen: u64,
    /// Queue bound of the group.
    pub bound: usize,
    /// Stream-key prefix.
    pub prefix: String,
    /// Its instance name in the checked group.
    pub instance: String,
    /// The group's redelivery idle timeout.
    pub idle: Duration,
}

/// The consumer-crash victim as a separate OS process (`dualbus stress-consumer`).
pub(crate) struct ChildConsumer {
    child: tokio::process::Child,
    /// Where it writes what it handled: one `kind seq` line per message, `held kind seq` for the
    /// message it stopped at.
    out: std::path::PathBuf,
    /// Created by the parent: the child stops at its next message.
    stop_marker: std::path::PathBuf,
}

impl ChildConsumer {
    pub(crate) async fn start(
        exe: &std::path::Path,
        spec: &ChildSpec,
    ) -> Result<ChildConsumer, String> {
        use tokio::io::AsyncBufReadExt;
        let dir = std::env::temp_dir();
        let tag = format!("dualbus-stress-{}-{}", std::process::id(), now_unix_nanos());
        let out = dir.join(format!("{tag}.handled"));
        let stop_marker = dir.join(format!("{tag}.stop"));
        let mut child = tokio::process::Command::new(exe)
            .arg("stress-consumer")
            .arg("--md-url")
            .arg(&spec.md_url)
            .arg("--logic-url")
            .arg(&spec.logic_url)
            .arg("--maxlen")
            .arg(spec.maxlen.to_string())
            .arg("--bound")
            .arg(spec.bound.to_string())
            .arg("--prefix")
            .arg(&spec.prefix)
            .arg("--instance")
            .arg(&spec.instance)
            .arg("--idle-ms")
            .arg(spec.idle.as_millis().to_string())
            .arg("--out")
            .arg(&out)
            .arg("--stop-marker")
            .arg(&stop_marker)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {} stress-consumer: {e}", exe.display()))?;
        // It prints `ready` once subscribed.
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout from the consumer process")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == "ready" => {}
            other => return Err(format!("the consumer process did not start: {other:?}")),
        }
        Ok(ChildConsumer {
            child,
            out,
            stop_marker,
        })
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) async fn kill_holding_a_batch(&mut self) -> Result<(), String> {
        std::fs::write(&self.stop_marker, b"stop").map_err(|e| e.to_string())?;
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("held ")) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the consumer process never stopped at a message".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.child.start_kill().map_err(|e| e.to_string())?;
        let _ = self.child.wait().await;
        Ok(())
    }

    /// Adds what the dead process handled (as consumer instance `instance`) and the message
    /// it held.
    pub(crate) fn merge_into(&self, seen: &mut Seen, instance: usize) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.out).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (held, kind, seq) = match (f.next(), f.next(), f.next()) {
                (Some("held"), Some(k), Some(s)) => (true, k, s),
                (Some(k), Some(s), None) => (false, k, s),
                _ => {
                    return Err(format!(
                        "unreadable line from the consumer process: {line:?}"
                    ))
                }
            };
            let kind = EventKind::parse(kind).map_err(|e| e.to_string())?;
            let seq: u64 = seq.parse().map_err(|e| format!("{line:?}: {e}"))?;
            if held {
                seen.held.insert((kind, seq));
                continue;
            }
            seen.by_kind.entry(kind.clone()).or_default().push(seq);
            if let Some(prev) = seen.previous.insert((instance, kind), seq) {
                if seq < prev {
                    seen.reordered += 1;
                }
            }
        }
        Ok(())
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.stop_marker);
    }
}

/// The body of `dualbus stress-consumer`: instance `spec.instance` of the checked group on the
/// given servers; writes each handled message to `out` as it handles it; once `stop_marker`
/// exists, stops at its next message (writing `held kind seq`) and never handles or
/// acknowledges anything again, until it is killed.
///
/// # Errors
/// When it cannot connect or subscribe.
pub async fn run_child_consumer(
    spec: &ChildSpec,
    out: std::path::PathBuf,
    stop_marker: std::path::PathBuf,
) -> Result<(), String> {
    use std::io::Write;
    let md = connect("md", &spec.md_url, spec.maxlen).await?;
    let logic = connect("logic", &spec.logic_url, spec.maxlen).await?;
    let cfg = checked_config(spec.maxlen, None, &spec.prefix);
    let bus = DualBus::builder("stress-sub")
        .instance(&spec.instance)
        .config(cfg)
        .transports(md, logic)
        .build()
        .map_err(|e| e.to_string())?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let file = Arc::new(Mutex::new(file));
    let handler = dualbus_bus::handler_fn(move |m: &Envelope| {
        let mut f = file.lock();
        if stop_marker.exists() {
            let _ = writeln!(f, "held {} {}", m.kind, m.seq);
            drop(f);
            // Dead from here on: this reader task blocks its thread forever, holding the batch;
            // the parent kills the process.
            loop {
                std::thread::park();
            }
        }
        // One write per message, unbuffered: what is in the file was handled, even after a
        // SIGKILL.
        let _ = writeln!(f, "{} {}", m.kind, m.seq);
        Ok(())
    });
    let _sub = bus
        .subscribe(checked_group_options(spec.idle, spec.bound)?, handler)
        .await
        .map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    std::future::pending::<()>().await;
    Ok(())
}

/// An XRANGE entry: id and fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The (kind, seq) of every entry a consumer has pending in `group` on the server at `url`,
/// over all streams under `prefix` there.
pub(crate) async fn pending_of(
    url: &str,
    prefix: &str,
    group: &str,
    consumer: &str,
) -> Result<Vec<(EventKind, u64)>, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if kind != "stream" {
            continue;
        }
        // A stream without the group answers NOGROUP: nothing pending there.
        let pending: Vec<(String, String, u64, u64)> = match redis::cmd("XPENDING")
            .arg(&key)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(consumer)
            .query_async(&mut conn)
            .await
        {
            Ok(p) => p,
            Err(_) => continue,
        };
        for (id, ..) in pending {
            let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            for (_, fields) in entries {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(f, _)| f == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                if let (Some(k), Some(seq)) = (field("kind"), field("seq")) {
                    if let (Ok(k), Ok(seq)) = (EventKind::parse(&k), seq.parse::<u64>()) {
                        out.push((k, seq));
                    }
                }
            }
        }
    }
    Ok(out)
}
