//! The harness: scenarios, the publisher and checking consumer, faults, the report.

use crate::RedisServer;
use dualbus_bus::{BusId, Config, DualBus, FailoverMode, Handler, HandlerError, SubscribeOptions};
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
struct Seen {
    by_kind: HashMap<EventKind, Vec<u64>>,
    /// The previous message handled by each consumer instance, per kind.
    previous: HashMap<(usize, EventKind), u64>,
    /// Messages handled after a later one of the same kind by the same consumer instance.
    reordered: u64,
    /// Messages a dead consumer was handed and never handled: another instance takes them
    /// over after the idle timeout, after later ones by design (a redelivery, not a reorder).
    held: std::collections::HashSet<(EventKind, u64)>,
    critical_ns: Vec<u64>,
    last_at: Option<Instant>,
    max_gap: Duration,
}

/// A fault waiting for its first delivery over the other bus.
struct PendingFault {
    bus: BusId,
    at: Instant,
    at_ns: u64,
}

struct Recorder {
    seen: Arc<Mutex<Seen>>,
    fault: Arc<Mutex<Option<PendingFault>>>,
    failover_ms: Arc<Mutex<Vec<f64>>>,
    gate: Option<Arc<AtomicBool>>,
    /// Once set, the consumer is dead: it stops at its next message, holding its batch.
    dead: Option<Arc<AtomicBool>>,
    /// Which consumer instance this is (order is checked per instance).
    instance: usize,
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

async fn connect(bus: &str, url: &str, maxlen: u64) -> Result<Arc<RedisTransport>, String> {
    let mut opts = RedisOptions::new(bus, url);
    opts.connect_timeout = Duration::from_millis(500);
    opts.maxlen = maxlen;
    RedisTransport::connect(opts)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Published sequence numbers per kind.
type Published = Arc<Mutex<HashMap<EventKind, Vec<u64>>>>;

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
    let md = connect("md", &md_server.url(), maxlen).await?;
    let logic = connect("logic", &logic_server.url(), maxlen).await?;
    let mut cfg = Config::default();
    cfg.failover.enabled = FailoverMode::On;
    cfg.md.maxlen = maxlen;
    cfg.logic.maxlen = maxlen;
    if let Some(t) = opts.heartbeat_timeout {
        cfg.failover.heartbeat_timeout_ms = t.as_millis() as u64;
    }
    let mk = |src: &str| -> Result<DualBus, String> {
        DualBus::builder(src)
            .config(cfg.clone())
            .transports(md.clone(), logic.clone())
            .first_seq(1)
            .build()
            .map_err(|e| e.to_string())
    };
    let publisher = mk("stress-pub")?;
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
            ChildConsumer::start(exe, &md_server.url(), &logic_server.url(), maxlen, bound).await?,
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
        Some(
            publisher
                .sibling("stress-slow", "stress-slow-1")
                .map_err(|e| e.to_string())?
                .subscribe(
                    SubscribeOptions::new("slow", &["market_data.>"])
                        .map_err(|e| e.to_string())?
                        .start(StartFrom::Oldest)
                        .bound(bound, Backpressure::Block),
                    Recorder {
                        seen: slow_seen.clone(),
                        fault: Default::default(),
                        failover_ms: Default::default(),
                        gate: Some(gate.clone()),
                        dead: None,
                        instance: 1,
                    },
                )
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let rate = Arc::new(AtomicU64::new(opts.rate));
    let stop = Arc::new(AtomicBool::new(false));
    let published: Published = Default::default();
    let errors = Arc::new(AtomicU64::new(0));
    let md_task = tokio::spawn(publish_market_data(
        publisher.clone(),
        rate.clone(),
        stop.clone(),
        published.clone(),
        errors.clone(),
    ));
    let logic_publisher = publisher
        .sibling("stress-logic", "stress-logic-1")
        .map_err(|e| e.to_string())?;
    let logic_task = tokio::spawn(publish_logic(
        logic_publisher,
        opts.rate,
        stop.clone(),
        published.clone(),
        errors.clone(),
    ));
    let set_fault = |bus: BusId| {
        *fault.lock() = Some(PendingFault {
            bus,
            at: Instant::now(),
            at_ns: now_unix_nanos(),
        });
    };
    let wait_back = |bus: BusId| {
        let p = publisher.clone();
        async move {
            let t = Instant::now();
            while !p.failover_counters(bus).up && t.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
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
                c.merge_into(&mut seen.lock())?;
                // What it held is what the broker still lists as its pending entries: those
                // reach consumer 2 as redeliveries, after later messages.
                for url in [md_server.url(), logic_server.url()] {
                    let held = pending_of(&url, "stress", "stress-sub-1").await?;
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
    let _ = md_task.await;
    let _ = logic_task.await;
    sample_servers(&md_server, &logic_server);

    // Wait for every published message (or for progress to stop for 10 s).
    let expected: u64 = published.lock().values().map(|v| v.len() as u64).sum();
    let expected_slow = published
        .lock()
        .get(&EventKind::MarketData)
        .map_or(0, |v| v.len() as u64);
    let count =
        |s: &Arc<Mutex<Seen>>| -> u64 { s.lock().by_kind.values().map(|v| v.len() as u64).sum() };
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let got = count(&seen) + if slow { count(&slow_seen) } else { 0 };
        let want = expected + if slow { expected_slow } else { 0 };
        if got >= want || last_change.elapsed() > Duration::from_secs(10) {
            break;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mut tally = |seen: &Seen, kinds: &[EventKind]| {
        for kind in kinds {
            let sent = published.get(kind).cloned().unwrap_or_default();
            let got = seen.by_kind.get(kind).cloned().unwrap_or_default();
            let mut distinct = got.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let sent_set: std::collections::HashSet<u64> = sent.iter().copied().collect();
            let delivered = distinct.iter().filter(|s| sent_set.contains(s)).count() as u64;
            report.published += sent.len() as u64;
            report.delivered += delivered;
            report.lost += sent.len() as u64 - delivered;
            report.duplicated += (got.len() - distinct.len()) as u64;
        }
        report.reordered += seen.reordered;
        report.max_gap_ms = report.max_gap_ms.max(seen.max_gap.as_secs_f64() * 1e3);
    };
    if slow {
        tally(&slow_seen.lock(), &[EventKind::MarketData]);
    } else {
        tally(
            &seen.lock(),
            &[
                EventKind::MarketData,
                EventKind::StrategySignal,
                EventKind::RiskAlert,
            ],
        );
    }
    let mut fo = failover_ms.lock().clone();
    fo.sort_by(|a, b| a.total_cmp(b));
    if !fo.is_empty() {
        report.failover_ms = Millis {
            p50: fo[fo.len() / 2],
            max: fo[fo.len() - 1],
        };
    }
    let mut crit = seen.lock().critical_ns.clone();
    crit.sort_unstable();
    if !crit.is_empty() {
        let at = |q: f64| crit[((crit.len() as f64 * q) as usize).min(crit.len() - 1)];
        report.critical_latency_ns = Nanos {
            p50: at(0.5),
            p99: at(0.99),
            max: crit[crit.len() - 1],
        };
    }
    for bus in BusId::ALL {
        let c = publisher.failover_counters(bus);
        report.failovers += c.failovers;
        report.failbacks += c.failbacks;
    }
    report.peak_rss_bytes = peak_rss_of("self").max(peak_servers);
    report.redelivered = md.stats().redelivered + logic.stats().redelivered;
    Ok(report)
}

/// Topic patterns of the checked group.
const CHECKED_PATTERNS: [&str; 3] = ["market_data.>", "strategy_signal.>", "risk_alert.>"];

/// Subscription options of the checked group ("stress"), shared with the consumer process.
fn checked_group_options(idle: Duration, bound: usize) -> Result<SubscribeOptions, String> {
    Ok(SubscribeOptions::new("stress", &CHECKED_PATTERNS)
        .map_err(|e| e.to_string())?
        .start(StartFrom::Oldest)
        .bound(bound, Backpressure::Block)
        .redelivery(idle, 5))
}

/// The consumer-crash victim as a separate OS process (`dualbus stress-consumer`).
struct ChildConsumer {
    child: tokio::process::Child,
    /// Where it writes what it handled: one `kind seq` line per message, `held kind seq` for the
    /// message it stopped at.
    out: std::path::PathBuf,
    /// Created by the parent: the child stops at its next message.
    stop_marker: std::path::PathBuf,
}

impl ChildConsumer {
    async fn start(
        exe: &std::path::Path,
        md_url: &str,
        logic_url: &str,
        maxlen: u64,
        bound: usize,
    ) -> Result<ChildConsumer, String> {
        use tokio::io::AsyncBufReadExt;
        let dir = std::env::temp_dir();
        let tag = format!("dualbus-stress-{}-{}", std::process::id(), now_unix_nanos());
        let out = dir.join(format!("{tag}.handled"));
        let stop_marker = dir.join(format!("{tag}.stop"));
        let mut child = tokio::process::Command::new(exe)
            .arg("stress-consumer")
            .arg("--md-url")
            .arg(md_url)
            .arg("--logic-url")
            .arg(logic_url)
            .arg("--maxlen")
            .arg(maxlen.to_string())
            .arg("--bound")
            .arg(bound.to_string())
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

    async fn kill_holding_a_batch(&mut self) -> Result<(), String> {
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

    /// Adds what the dead process handled (as instance 1) and the message it held.
    fn merge_into(&self, seen: &mut Seen) -> Result<(), String> {
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
            if let Some(prev) = seen.previous.insert((1, kind), seq) {
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

/// The body of `dualbus stress-consumer`: instance `stress-sub-1` of the checked group on the
/// given servers; writes each handled message to `out` as it handles it; once `stop_marker`
/// exists, stops at its next message (writing `held kind seq`) and never handles or
/// acknowledges anything again, until it is killed.
///
/// # Errors
/// When it cannot connect or subscribe.
pub async fn run_child_consumer(
    md_url: &str,
    logic_url: &str,
    maxlen: u64,
    bound: usize,
    out: std::path::PathBuf,
    stop_marker: std::path::PathBuf,
) -> Result<(), String> {
    use std::io::Write;
    let md = connect("md", md_url, maxlen).await?;
    let logic = connect("logic", logic_url, maxlen).await?;
    let mut cfg = Config::default();
    cfg.failover.enabled = FailoverMode::On;
    cfg.md.maxlen = maxlen;
    cfg.logic.maxlen = maxlen;
    let bus = DualBus::builder("stress-sub")
        .instance("stress-sub-1")
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
        .subscribe(
            checked_group_options(Duration::from_millis(500), bound)?,
            handler,
        )
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
/// over all dualbus streams there.
async fn pending_of(
    url: &str,
    group: &str,
    consumer: &str,
) -> Result<Vec<(EventKind, u64)>, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("dualbus:*")
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
