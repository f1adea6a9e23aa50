//! `dualbus bench SCENARIO`: throughput, fan-out, latency, isolation and stalled-consumer
//! memory of the bus, measured through the public `DualBus` API (publish -> transport ->
//! handler), on the embedded or the Redis transport.
//!
//! Every scenario checks each message by its sequence number at the handler (lost, duplicated)
//! and records publish-to-handler latency (`ts` field to handler entry, same wall clock) in an
//! HDR histogram.

use super::plot::{cdf_points, Line};
use super::Global;
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use dualbus_bus::{
    BusId, Config, DualBus, Handler, HandlerError, SubscribeOptions, Subscription, TransportKind,
};
use dualbus_core::{
    now_unix_nanos, Backpressure, Encoding, Envelope, EventKind, Mode, Priority, Topic, Transport,
};
use dualbus_memory::{MemoryOptions, MemoryTransport};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `dualbus bench`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Scenarios:
  throughput  1 producer, 1 consumer group; messages published in batches of --batch. On Redis
              it also measures, in the same run, the raw ceiling of pipelined XADD on the
              MarketData server with redis-benchmark, and prints our figure as a ratio of it
  fanout      1 producer, --groups groups (12); rate at which every group has every message;
              with --rate, paced one message at a time (latency of every delivery)
  latency     1 producer paced at --rate (default 100,000/s), one message per publish;
              publish-to-handler latency; then, after it in the same run, the floor (below)
  isolation   Engine Logic bus latency at --rate (default 10,000/s) with the MarketData bus
              idle, then while a flood saturates the MarketData bus, in one run; on Redis
              also the raw baseline (below); on memory the raw fields are omitted (the
              latency scenario's floor is the in-process reference)
  stall       a reliable group that never handles anything, with --queue-bound and
              --backpressure; shows that memory stays bounded (blocks, rejects or drops)
  hub         the MarketData hub (synthetic data at --speed, history calls slowed to
              --history-latency-ms) and --engines client engines, each its own group of all
              market data, asking for every symbol's snapshot every --snapshot-every-ms and
              its last 500 bars every --history-every-s, for --duration: cache hit rate,
              upstream calls and coalescing (the hub's counters), distribution latency

Floors (measured in the same run, on the same machine, so that a ratio to them carries across
machines where absolute figures do not):
  latency     after our phase (never at the same time), the same paced publisher thread (same
              pacing code, 1 µs timer slack) hands a timestamp to a consumer thread over a
              bounded std::sync::mpsc::sync_channel; the consumer busy-polls (try_recv, never
              parks) and records publish-to-receive latency. Same count and rate. Reported as
              baseline_latency_ns, with p50_vs_baseline and p99_vs_baseline (ours / floor):
              what two threads of this machine cost at best, with no bus in between
  isolation   (--backend redis) a bare redis client, no dualbus code in the path: XADD of the
              same entry as ours (same fields and payload, ts rewritten) on a stream of the
              Engine Logic server, paced at the same rate by the same pacing code, read by
              XREADGROUP BLOCK on a group of that stream (XACK each); first with the MarketData
              server idle (after our idle phase), then during the same dualbus flood as ours
              (after our saturated phase, the flood still running): raw_idle_latency_ns,
              raw_latency_ns, raw_p99_ratio (flooded / idle) beside our p99_ratio, and
              p99_ratio_vs_raw (ours / raw)

The Redis backend uses the buses of --md-url / --logic-url (default 127.0.0.1:6380 and 6381,
start them with `dualbus redis up`) under a private key prefix, removed afterwards.

Examples:
  dualbus bench throughput --messages 10000000 --payload-bytes 64
  dualbus bench fanout --messages 2000000 --json
  dualbus bench latency --rate 100000 --messages 1000000
  dualbus bench latency --messages 200000 --plot latency.svg
  dualbus bench throughput --backend redis --messages 500000
  dualbus bench isolation --backend redis --messages 50000
  dualbus bench stall --messages 10000000 --queue-bound 100000 --backpressure reject
  dualbus bench hub --duration 60s --json
  dualbus bench hub --backend redis --duration 30s")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Transport under test.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// Messages to publish (per phase for isolation).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Publish rate in messages per second (latency: default 100,000; isolation: 10,000).
    #[arg(long)]
    rate: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Delivery mode of the consumer groups.
    #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
    mode: ModeArg,
    /// Consumer groups (fanout scenario).
    #[arg(long, default_value_t = 12)]
    groups: usize,
    /// Envelopes per publish call (throughput, fanout, the isolation flood).
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Queue bound of each group.
    #[arg(long, default_value_t = 100_000)]
    queue_bound: usize,
    /// Policy at the queue bound.
    #[arg(long, value_enum, default_value_t = PolicyArg::Block)]
    backpressure: PolicyArg,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Redis ceiling: pipeline depth of redis-benchmark (`-P`).
    #[arg(long, default_value_t = 64)]
    ceiling_pipeline: usize,
    /// Redis ceiling: connections of redis-benchmark (`-c`).
    #[arg(long, default_value_t = 4)]
    ceiling_clients: usize,
    /// hub: client engines.
    #[arg(long, default_value_t = 12)]
    pub(super) engines: usize,
    /// hub: how long to run, e.g. `60s`.
    #[arg(long, default_value = "60s")]
    pub(super) duration: String,
    /// hub: playback speed of the synthetic market data (`60x`: about 10,000 msgs/s).
    #[arg(long, default_value = "60x")]
    pub(super) speed: String,
    /// hub: latency added to every upstream history call, in ms.
    #[arg(long, default_value_t = 50)]
    pub(super) history_latency_ms: u64,
    /// hub: each engine asks for every symbol's snapshot this often, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub(super) snapshot_every_ms: u64,
    /// hub: each engine asks for every symbol's last 500 bars this often, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(super) history_every_s: u64,
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// throughput, fanout, latency, isolation: also write the latency distribution here as an
    /// SVG chart, a cumulative distribution on a logarithmic µs axis: ours, and the floor
    /// (latency) or the idle phase and the raw baseline (isolation) where the run has them.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Fanout,
    Latency,
    Isolation,
    Stall,
    Hub,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// The embedded (in-process) transport (also spelt `memory`).
    #[value(alias = "memory")]
    Embedded,
    /// The config's two Redis servers.
    Redis,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ModeArg {
    Reliable,
    Fast,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyArg {
    Block,
    /// Also spelt `drop_oldest`, as in the config file.
    #[value(alias = "drop_oldest")]
    DropOldest,
    Reject,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Isolation => "isolation",
            Scenario::Stall => "stall",
            Scenario::Hub => "hub",
        }
    }
}

impl BenchArgs {
    fn mode(&self) -> Mode {
        match self.mode {
            ModeArg::Reliable => Mode::Reliable,
            ModeArg::Fast => Mode::Fast,
        }
    }
    pub(super) fn mode_name(&self) -> &'static str {
        match self.mode {
            ModeArg::Reliable => "reliable",
            ModeArg::Fast => "fast",
        }
    }
    fn policy(&self) -> Backpressure {
        match self.backpressure {
            PolicyArg::Block => Backpressure::Block,
            PolicyArg::DropOldest => Backpressure::DropOldest,
            PolicyArg::Reject => Backpressure::Reject,
        }
    }
    fn policy_name(&self) -> &'static str {
        match self.backpressure {
            PolicyArg::Block => "block",
            PolicyArg::DropOldest => "drop_oldest",
            PolicyArg::Reject => "reject",
        }
    }
    pub(super) fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }
    fn rate(&self) -> u64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Isolation => 10_000,
            _ => 100_000,
        })
    }
}

/// The buses under test.
pub(super) struct Rig {
    cfg: Config,
    root: DualBus,
    md: Arc<dyn Transport>,
    logic: Arc<dyn Transport>,
    memory_md: Option<MemoryTransport>,
}

impl Rig {
    async fn new(args: &BenchArgs, mut cfg: Config) -> anyhow::Result<Rig> {
        match args.backend {
            Backend::Embedded => {
                // Fast-mode consumers are never waited for: a stream shorter than the run would
                // make them skip (by design), so a fast-mode delivery benchmark keeps it all.
                let maxlen = if args.mode == ModeArg::Fast && args.scenario != Scenario::Isolation {
                    cfg.md.maxlen.max(args.messages + 1)
                } else {
                    cfg.md.maxlen
                };
                let opts = MemoryOptions {
                    maxlen: maxlen as usize,
                    spin: cfg.memory.spin(),
                };
                let md = MemoryTransport::with_options(opts.clone());
                let md_t: Arc<dyn Transport> = Arc::new(md.clone());
                let logic_t: Arc<dyn Transport> = Arc::new(MemoryTransport::with_options(opts));
                Ok(Rig {
                    root: DualBus::builder("bench-rig")
                        .config(cfg.clone())
                        .transports(md_t.clone(), logic_t.clone())
                        .build()?,
                    cfg,
                    md: md_t,
                    logic: logic_t,
                    memory_md: Some(md),
                })
            }
            Backend::Redis => {
                // A private prefix: a run never meets another run's streams or groups.
                cfg.prefix = format!("bench{}", std::process::id());
                cfg.transport = TransportKind::Redis;
                let md_t = dualbus_bus::connect_transport(&cfg, BusId::MarketData)
                    .await
                    .context(
                        "the redis backend needs both buses (start them with `dualbus redis up`)",
                    )?;
                let logic_t = dualbus_bus::connect_transport(&cfg, BusId::Logic)
                    .await
                    .context(
                        "the redis backend needs both buses (start them with `dualbus redis up`)",
                    )?;
                Ok(Rig {
                    root: DualBus::builder("bench-rig")
                        .config(cfg.clone())
                        .transports(md_t.clone(), logic_t.clone())
                        .build()?,
                    cfg,
                    md: md_t,
                    logic: logic_t,
                    memory_md: None,
                })
            }
        }
    }

    /// A client whose sequence numbers start at 0 (the handlers index messages by them). All
    /// clients share one failover state and heartbeat, as engines in one process do.
    pub(super) fn client(&self, src: &str, inst: &str) -> anyhow::Result<DualBus> {
        Ok(self.root.sibling_starting_at(src, inst, 0)?)
    }

    /// Entries retained by a stream.
    async fn stream_len(&self, bus: BusId, kind: &EventKind) -> anyhow::Result<u64> {
        let key = format!("{}:{}:{}", self.cfg.prefix, bus.as_str(), kind.as_str());
        if let Some(m) = &self.memory_md {
            return Ok(m.stream_len(&key) as u64);
        }
        if dualbus_redis::is_cluster_url(&self.cfg.bus(bus).url) {
            bail!("the stall scenario reads one stream's length: run it on a single server");
        }
        let mut conn = super::inspect::connect(&self.cfg, bus, Duration::from_secs(2)).await?;
        Ok(redis::cmd("XLEN").arg(&key).query_async(&mut conn).await?)
    }

    /// Removes the run's keys from the Redis servers.
    async fn cleanup(&self) {
        if self.memory_md.is_some() {
            return;
        }
        // A batch publish returns once queued: what a flood queued last must reach the servers
        // before the keys are removed, or it would recreate them afterwards.
        for t in [&self.md, &self.logic] {
            let _ = tokio::time::timeout(Duration::from_secs(10), t.flush()).await;
        }
        for bus in BusId::ALL {
            let Ok(conns) =
                super::inspect::connect_nodes(&self.cfg, bus, Duration::from_secs(2)).await
            else {
                continue;
            };
            for mut conn in conns {
                let mut cursor = "0".to_string();
                loop {
                    let Ok((next, keys)): Result<(String, Vec<String>), _> = redis::cmd("SCAN")
                        .arg(&cursor)
                        .arg("MATCH")
                        .arg(format!("{}:*", self.cfg.prefix))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                    else {
                        break;
                    };
                    if !keys.is_empty() {
                        let _ = redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<()>(&mut conn)
                            .await;
                    }
                    cursor = next;
                    if cursor == "0" {
                        break;
                    }
                }
            }
        }
    }
}

/// Runs the benchmark.
pub fn run(args: BenchArgs, global: &Global) -> anyhow::Result<()> {
    let mut cfg = global.config()?;
    if args.backend == Backend::Redis {
        // A benchmark makes and deletes streams of its own: the operator's user.
        global.authenticate(&mut cfg, super::acl::ADMIN)?;
    }
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if args.rate == Some(0) {
        bail!("--rate must be at least 1 message per second");
    }
    if args.batch == 0 || args.groups == 0 || args.queue_bound == 0 || args.threads == 0 {
        bail!("--batch, --groups, --queue-bound and --threads must be at least 1");
    }
    if args.plot.is_some() && matches!(args.scenario, Scenario::Stall | Scenario::Hub) {
        bail!(
            "--plot draws a latency distribution: it is for throughput, fanout, latency and \
             isolation, not {}",
            args.scenario.name()
        );
    }
    let rt = super::runtime(args.threads)?;
    rt.block_on(async move {
        let rig = Rig::new(&args, cfg).await?;
        let res = match args.scenario {
            Scenario::Throughput | Scenario::Fanout | Scenario::Latency => {
                delivery_bench(&args, &rig).await
            }
            Scenario::Isolation => isolation_bench(&args, &rig).await,
            Scenario::Stall => stall_bench(&args, &rig).await,
            Scenario::Hub => super::bench_hub::hub_bench(&args, &rig).await,
        };
        rig.cleanup().await;
        res
    })
}

/// Per-group record of what arrived.
struct Tally {
    seen: Vec<u64>,
    delivered: u64,
    reported: u64,
    duplicated: u64,
    hist: Histogram<u64>,
    last_at: Option<Instant>,
}

impl Tally {
    fn new(messages: u64) -> Tally {
        Tally {
            seen: vec![0; messages.div_ceil(64) as usize],
            delivered: 0,
            reported: 0,
            duplicated: 0,
            hist: latency_histogram(),
            last_at: None,
        }
    }
}

#[derive(Clone)]
struct Counting {
    tally: Arc<Mutex<Tally>>,
    progress: Arc<AtomicU64>,
    /// Latency is recorded for every `sample_every`-th message (by sequence number).
    sample_every: u64,
    /// Messages expected; the time the last one arrives ends the run.
    expected: u64,
}

impl Handler for Counting {
    fn handle(&self, m: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let seq = m.seq;
        let sampled = seq.is_multiple_of(self.sample_every);
        let now = if sampled { now_unix_nanos() } else { 0 };
        let mut t = self.tally.lock();
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if let Some(word) = t.seen.get_mut(w) {
            if *word & bit != 0 {
                t.duplicated += 1;
            } else {
                *word |= bit;
                t.delivered += 1;
            }
        }
        if sampled {
            let _ = t.hist.record(now.saturating_sub(m.ts).max(1));
        }
        if t.delivered == self.expected {
            t.last_at = Some(Instant::now());
        }
        // Progress is shared with the waiting loop: report it in steps, not per message.
        let unreported = t.delivered - t.reported;
        if unreported >= 1024 || t.delivered == self.expected {
            t.reported = t.delivered;
            self.progress.fetch_add(unreported, Ordering::Relaxed);
        }
        drop(t);
        std::future::ready(Ok(()))
    }
}

/// Consumer groups counting what they receive.
struct Groups {
    tallies: Vec<Arc<Mutex<Tally>>>,
    progress: Arc<AtomicU64>,
    subs: Vec<Subscription>,
    n: u64,
    /// The groups' own threads, where they have them (see [`Groups::start`]).
    threads: Vec<tokio::runtime::Runtime>,
}

impl Drop for Groups {
    fn drop(&mut self) {
        for rt in self.threads.drain(..) {
            rt.shutdown_background();
        }
    }
}

impl Groups {
    /// Subscribes `groups` groups. With `own_threads`, each group's reader (and its connection)
    /// runs on a thread of its own, a one-worker runtime, as each engine's does in `dualbus
    /// run`; otherwise on the calling runtime.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        rig: &Rig,
        args: &BenchArgs,
        prefix: &str,
        groups: usize,
        pattern: &str,
        mode: Mode,
        n: u64,
        sample_every: u64,
        own_threads: bool,
    ) -> anyhow::Result<Groups> {
        let progress = Arc::new(AtomicU64::new(0));
        let mut tallies = Vec::new();
        let mut subs = Vec::new();
        let mut threads = Vec::new();
        for g in 0..groups {
            let tally = Arc::new(Mutex::new(Tally::new(n)));
            let consumer = rig.client(&format!("{prefix}-sub"), &format!("{prefix}-sub-{g}"))?;
            // Fast-mode groups get a lag limit above the run's size: a delivery benchmark
            // measures delivery, not skipping.
            let opts = SubscribeOptions::new(&format!("{prefix}-g{g}"), &[pattern])?
                .mode(mode)
                .bound(args.queue_bound, args.policy())
                .lag_limit(n.saturating_add(1).max(args.queue_bound as u64));
            let handler = Counting {
                tally: tally.clone(),
                progress: progress.clone(),
                sample_every,
                expected: n,
            };
            let sub = if own_threads {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("bench-{prefix}-g{g}"))
                    .enable_all()
                    .build()
                    .context("no thread for a benchmark group")?;
                let sub = rt
                    .spawn(async move { consumer.subscribe(opts, handler).await })
                    .await
                    .context("a benchmark group's thread died")??;
                threads.push(rt);
                sub
            } else {
                consumer.subscribe(opts, handler).await?
            };
            subs.push(sub);
            tallies.push(tally);
        }
        Ok(Groups {
            tallies,
            progress,
            subs,
            n,
            threads,
        })
    }

    /// Waits until every group has every message, or until progress stops for 10 s.
    async fn wait(&self, quiet: bool) {
        let total = self.n * self.tallies.len() as u64;
        let mut last = 0;
        let mut last_change = Instant::now();
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let p = self.progress.load(Ordering::Relaxed);
            if p >= total {
                break;
            }
            if p != last {
                last = p;
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(10) {
                eprintln!("no progress for 10 s: stopping with {p} of {total} deliveries");
                break;
            }
            if !quiet && last_report.elapsed() > Duration::from_secs(1) {
                eprintln!("  {p} / {total} deliveries");
                last_report = Instant::now();
            }
        }
    }

    /// Stops the groups and sums up: histogram, delivered, duplicated, lost, last delivery.
    async fn finish(mut self) -> anyhow::Result<Summary> {
        for s in self.subs.drain(..) {
            s.stop().await;
        }
        let mut s = Summary {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            delivered: 0,
            duplicated: 0,
            lost: 0,
            last_at: None,
        };
        for t in &self.tallies {
            let t = t.lock();
            s.hist.add(&t.hist)?;
            s.delivered += t.delivered;
            s.duplicated += t.duplicated;
            s.lost += self.n.saturating_sub(t.delivered);
            s.last_at = s.last_at.max(t.last_at);
        }
        Ok(s)
    }
}

struct Summary {
    hist: Histogram<u64>,
    delivered: u64,
    duplicated: u64,
    lost: u64,
    last_at: Option<Instant>,
}

pub(super) fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

pub(super) fn percentile_line(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   ({} samples)",
        super::human_ns(h.value_at_quantile(0.50)),
        super::human_ns(h.value_at_quantile(0.90)),
        super::human_ns(h.value_at_quantile(0.99)),
        super::human_ns(h.value_at_quantile(0.999)),
        super::human_ns(h.max()),
        h.len()
    )
}

/// Publishes `n` envelopes in batches (until `stop`, when given); returns when all are queued.
/// `sent`, when given, counts the envelopes published so far.
#[allow(clippy::too_many_arguments)]
async fn publish_batched(
    bus: DualBus,
    kind: EventKind,
    topics: Vec<Topic>,
    n: u64,
    batch: usize,
    payload: Vec<u8>,
    stop: Option<Arc<AtomicBool>>,
    sent: Option<Arc<AtomicU64>>,
) -> anyhow::Result<u64> {
    let mut i = 0;
    while i < n {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let k = (batch as u64).min(n - i) as usize;
        let mut envs = Vec::with_capacity(k);
        for j in 0..k {
            // Round robin over the topics (one per partition of a partitioned bus).
            let topic = &topics[(i as usize + j) % topics.len()];
            envs.push(bus.stamp(
                kind.clone(),
                topic.clone(),
                Priority::Normal,
                Encoding::Json,
                Bytes::copy_from_slice(&payload),
            )?);
        }
        bus.publish_batch(envs).await?;
        i += k as u64;
        if let Some(c) = &sent {
            c.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    Ok(i)
}

/// Calls `send(i)` for `i` in `0..n` at `rate` per second on the calling thread: sleeps through
/// most of each gap, then spins until the message's time (so pacing does not depend on timer
/// resolution), with a 1 µs timer slack on this thread. Our paced publisher and the floors are
/// paced by this same code. Call it on a thread of its own (the timer slack stays set).
#[allow(unsafe_code)]
fn pace(n: u64, rate: u64, mut send: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<()> {
    // A 1 µs timer slack (the default is 50 µs) makes short sleeps end on time.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
    let interval = 1e9 / rate as f64;
    let t0 = Instant::now();
    for i in 0..n {
        let target = t0 + Duration::from_nanos((i as f64 * interval) as u64);
        // Sleep through most of the gap (so the core is free for the brokers and consumers),
        // spin through the last stretch.
        let now = Instant::now();
        if target > now + Duration::from_micros(40) {
            std::thread::sleep(target - now - Duration::from_micros(25));
        }
        while Instant::now() < target {
            std::hint::spin_loop();
        }
        send(i)?;
    }
    Ok(())
}

/// Publishes `n` envelopes one by one at `rate` per second from a thread of its own, paced by
/// [`pace`].
fn publish_paced(
    bus: DualBus,
    kind: EventKind,
    topic: Topic,
    n: u64,
    rate: u64,
    payload: Vec<u8>,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<()>> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let res = pace(n, rate, |_| {
            let env = bus.stamp(
                kind.clone(),
                topic.clone(),
                Priority::Normal,
                Encoding::Json,
                Bytes::copy_from_slice(&payload),
            )?;
            handle.block_on(bus.publish_envelope(env))?;
            Ok(())
        });
        let _ = tx.send(res);
    });
    rx
}

/// An empty latency histogram (1 ns to 60 s, 3 significant digits), as every phase uses.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// The floor of a hand-over between two threads on this machine, with no bus in between: a
/// thread paced by [`pace`] (as our publisher is) sends `now_unix_nanos()` into a bounded
/// `std::sync::mpsc::sync_channel` (std: no extra crate) of `bound` slots; a consumer thread
/// busy-polls it (`try_recv`, `spin_loop`, never parks) and records publish-to-receive latency
/// in nanoseconds, on the same clock as our handlers. Blocking: run it off the runtime.
/// Returns the histogram and how many timestamps arrived.
fn channel_floor(n: u64, rate: u64, bound: usize) -> anyhow::Result<(Histogram<u64>, u64)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(bound.max(1));
    let consumer = std::thread::spawn(move || {
        let mut hist = latency_histogram();
        let mut received = 0u64;
        while received < n {
            match rx.try_recv() {
                Ok(ts) => {
                    let _ = hist.record(now_unix_nanos().saturating_sub(ts).max(1));
                    received += 1;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                // The publisher stopped (an error): what arrived is all there is.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        }
        (hist, received)
    });
    let publisher = std::thread::spawn(move || {
        pace(n, rate, |_| {
            tx.send(now_unix_nanos())
                .map_err(|_| anyhow::anyhow!("the floor's consumer thread stopped"))
        })
    });
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's publisher thread panicked"))?;
    let got = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's consumer thread panicked"))?;
    published?;
    Ok(got)
}

/// The raw Redis baseline of the isolation scenario: a bare `redis` client (no dualbus code in
/// the path) on the Engine Logic server.
struct RawRedis {
    /// A client of the Engine Logic server (its credentials and TLS are the bus's).
    client: redis::Client,
    /// Its address, password redacted.
    shown: String,
    prefix: String,
    /// The fields of an entry like ours (built once from a stamped envelope); `ts` is
    /// rewritten for every entry.
    fields: Vec<(&'static str, Bytes)>,
    maxlen: u64,
    count: u64,
}

impl RawRedis {
    /// One phase: `n` XADDs on `{prefix}:raw:{phase}` paced by [`pace`] from a thread of its
    /// own (a blocking connection), read on the calling thread by `XREADGROUP ... BLOCK` on a
    /// group of that stream, every entry acknowledged (`XACK` of each read's ids) after its
    /// latency (`ts` field to receipt) is recorded. Blocking: run it off the runtime. Returns
    /// the histogram and how many entries arrived.
    fn phase(&self, phase: &str, n: u64, rate: u64) -> anyhow::Result<(Histogram<u64>, u64)> {
        let key = format!("{}:raw:{phase}", self.prefix);
        let group = "raw";
        let client = self.client.clone();
        let mut reader = client
            .get_connection()
            .with_context(|| format!("cannot connect to the Engine Logic server {}", self.shown))?;
        reader.set_read_timeout(Some(Duration::from_secs(5)))?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query::<redis::Value>(&mut reader)?;
        let mut writer = client.get_connection()?;
        writer.set_read_timeout(Some(Duration::from_secs(5)))?;
        let fields = self.fields.clone();
        let ts_at = fields
            .iter()
            .position(|(k, _)| *k == "ts")
            .context("an entry has a ts field")?;
        let maxlen = self.maxlen;
        let xadd_key = key.clone();
        let publisher = std::thread::spawn(move || {
            pace(n, rate, |_| {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&xadd_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(maxlen)
                    .arg("*");
                for (i, (k, v)) in fields.iter().enumerate() {
                    cmd.arg(*k);
                    if i == ts_at {
                        cmd.arg(now_unix_nanos());
                    } else {
                        cmd.arg(&v[..]);
                    }
                }
                cmd.query::<redis::Value>(&mut writer)?;
                Ok(())
            })
        });
        let mut hist = latency_histogram();
        let mut received = 0u64;
        let mut last_entry = Instant::now();
        let res = (|| -> anyhow::Result<()> {
            while received < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg("raw-1")
                    .arg("COUNT")
                    .arg(self.count)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query(&mut reader)?;
                let mut ids = Vec::new();
                for stream in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in stream.ids {
                        let now = now_unix_nanos();
                        if let Some(ts) = entry.get::<u64>("ts") {
                            let _ = hist.record(now.saturating_sub(ts).max(1));
                        }
                        ids.push(entry.id);
                    }
                }
                if ids.is_empty() {
                    // Every XADD was answered and nothing more came: the publisher failed.
                    if publisher.is_finished() || last_entry.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    continue;
                }
                received += ids.len() as u64;
                last_entry = Instant::now();
                redis::cmd("XACK")
                    .arg(&key)
                    .arg(group)
                    .arg(&ids)
                    .query::<redis::Value>(&mut reader)?;
            }
            Ok(())
        })();
        let published = publisher
            .join()
            .map_err(|_| anyhow::anyhow!("the raw publisher thread panicked"))?;
        published.context("raw XADD")?;
        res.context("raw XREADGROUP")?;
        Ok((hist, received))
    }
}

/// A valid JSON payload of exactly `size` bytes (a string of `x`; at least 2 bytes).
fn json_payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(2)];
    p[0] = b'"';
    let last = p.len() - 1;
    p[last] = b'"';
    p
}

const MD_TOPIC: &str = "market_data.trade.BENCH";

/// The topics the full-speed scenarios publish: [`MD_TOPIC`], or on a partitioned MarketData
/// bus one symbol per partition (`BENCH{i}`, the first `i` falling in each), so every
/// partition (and every master of a cluster) gets an equal share.
fn partition_topics(cfg: &Config) -> anyhow::Result<Vec<Topic>> {
    let n = cfg.md.partitions;
    if n <= 1 {
        return Ok(vec![Topic::new(MD_TOPIC)?]);
    }
    let mut out = Vec::new();
    for p in 0..n {
        let i = (0u64..)
            .find(|i| dualbus_core::partition::partition_of(&format!("BENCH{i}"), n) == p)
            .expect("every partition has a symbol");
        out.push(Topic::new(&format!("market_data.trade.BENCH{i}"))?);
    }
    Ok(out)
}
const LOGIC_TOPIC: &str = "strategy_signal.BENCH";

async fn delivery_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    let n = args.messages;
    let groups = if args.scenario == Scenario::Fanout {
        args.groups
    } else {
        1
    };
    // Latency runs, and fan-out runs given a --rate, are paced one message at a time.
    let latency = args.scenario == Scenario::Latency
        || (args.scenario == Scenario::Fanout && args.rate.is_some());
    // Paced runs record every message; batch runs every 16th, so that measuring costs the
    // handler little.
    let sample_every = if latency { 1 } else { 16 };
    let consumers = Groups::start(
        rig,
        args,
        "bench",
        groups,
        "market_data.>",
        args.mode(),
        n,
        sample_every,
        false,
    )
    .await?;
    let publisher = rig.client("bench", "bench-1")?;
    let payload = json_payload(args.payload_bytes);
    let topic = Topic::new(MD_TOPIC)?;
    let topics = partition_topics(&rig.cfg)?;
    // The latency scenario also measures the floor, after ours (see `channel_floor`).
    let floor = args.scenario == Scenario::Latency;
    let floor_method = format!(
        "floor, run after ours (not concurrently): the same paced publisher thread (same pacing \
         code, 1 µs timer slack) sends now_unix_nanos() into a std::sync::mpsc::sync_channel of \
         {} slots, read by a thread that busy-polls try_recv and never parks; {n} timestamps at \
         {} msgs/s; publish-to-receive latency of every one",
        args.queue_bound,
        args.rate()
    );
    let method = format!(
        "{} {} messages x {} B through DualBus::{} -> {} transport -> handler; {} group(s); {} mode; {}{}",
        args.scenario.name(),
        n,
        args.payload_bytes,
        if latency { "publish_envelope" } else { "publish_batch" },
        args.backend_name(),
        groups,
        args.mode_name(),
        if latency {
            format!("paced at {} msgs/s; latency of every message", args.rate())
        } else if topics.len() > 1 {
            format!(
                "batches of {}, round robin over {} symbols, one per partition of [md] \
                 partitions; latency of every 16th message",
                args.batch,
                topics.len()
            )
        } else {
            format!("batches of {}; latency of every 16th message", args.batch)
        },
        if floor {
            format!("; then the {floor_method}")
        } else {
            String::new()
        }
    );
    if !args.json {
        // The method is printed once, with the results.
        eprintln!("running; the method and the figures follow when it ends");
    }
    let start = Instant::now();
    let producer = if latency {
        let rx = publish_paced(
            publisher.clone(),
            EventKind::MarketData,
            topic,
            n,
            args.rate(),
            payload.clone(),
        );
        tokio::spawn(async move { rx.await.context("producer thread died")? })
    } else {
        let bus = publisher.clone();
        let batch = args.batch;
        let p = payload.clone();
        tokio::spawn(async move {
            publish_batched(bus, EventKind::MarketData, topics, n, batch, p, None, None)
                .await
                .map(|_| ())
        })
    };
    consumers.wait(args.json).await;
    producer.await??;
    let publish_end = Instant::now();
    let s = consumers.finish().await?;
    let end = s.last_at.unwrap_or(publish_end);
    let duration = end.duration_since(start).as_secs_f64();
    let throughput = n as f64 / duration;
    let mut out = json!({
        "backend": args.backend_name(),
        "scenario": args.scenario.name(),
        "mode": args.mode_name(),
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "duration_s": duration,
        "throughput_msgs_per_s": throughput,
        "delivered": s.delivered,
        "lost": s.lost,
        "duplicated": s.duplicated,
        "latency_ns": percentiles(&s.hist),
    });
    if args.scenario == Scenario::Fanout {
        out["groups"] = json!(groups);
    }
    let mut floor_lines = None;
    let mut floor_hist = None;
    if floor {
        if !args.json {
            eprintln!(
                "floor: {n} timestamps over a sync_channel at {} msgs/s",
                args.rate()
            );
        }
        let (rate, bound) = (args.rate(), args.queue_bound);
        let (fh, received) = tokio::task::spawn_blocking(move || channel_floor(n, rate, bound))
            .await
            .context("the floor's thread died")??;
        let p50 = s.hist.value_at_quantile(0.50) as f64 / fh.value_at_quantile(0.50).max(1) as f64;
        let p99 = s.hist.value_at_quantile(0.99) as f64 / fh.value_at_quantile(0.99).max(1) as f64;
        out["baseline_latency_ns"] = percentiles(&fh);
        out["baseline_delivered"] = json!(received);
        out["baseline_method"] = json!(floor_method);
        out["p50_vs_baseline"] = json!(p50);
        out["p99_vs_baseline"] = json!(p99);
        floor_lines = Some([
            format!(
                "floor      : {} paced thread -> sync_channel -> busy-polling thread ({received} of {n} received)",
                percentile_line(&fh)
            ),
            format!("vs floor   : p50 x{p50:.2}   p99 x{p99:.2} (ours / floor)"),
        ]);
        floor_hist = Some(fh);
    }
    if let Some(path) = &args.plot {
        let mut lines = vec![Line {
            name: format!("ours: publish -> handler ({})", args.backend_name()),
            points: cdf_points(&s.hist),
        }];
        if let Some(fh) = &floor_hist {
            lines.push(Line {
                name: "floor: thread -> sync_channel -> thread".into(),
                points: cdf_points(fh),
            });
        }
        let title = format!(
            "{}: publish-to-handler latency, {} messages at {}",
            args.scenario.name(),
            n,
            if latency {
                format!("{} msgs/s", args.rate())
            } else {
                format!("full speed (every 16th message), batches of {}", args.batch)
            }
        );
        write_plot(path, &title, &lines, args.json)?;
    }
    let mut ceiling_line = None;
    if args.scenario == Scenario::Throughput && args.backend == Backend::Redis {
        let sample = publisher.stamp(
            EventKind::MarketData,
            Topic::new(MD_TOPIC)?,
            Priority::Normal,
            Encoding::Json,
            Bytes::copy_from_slice(&payload),
        )?;
        let ceiling = xadd_ceiling(args, rig, &sample, n.min(2_000_000))?;
        out["ceiling_msgs_per_s"] = json!(ceiling);
        out["ratio_to_ceiling"] = json!(throughput / ceiling);
        out["ceiling_method"] = json!(format!(
            "redis-benchmark -P {} -c {} XADD MAXLEN ~ {} with the same {} fields, on {}",
            args.ceiling_pipeline,
            args.ceiling_clients,
            rig.cfg.md.maxlen,
            sample.to_wire_fields().len(),
            if dualbus_redis::is_cluster_url(&rig.cfg.md.url) {
                "every master of the MarketData cluster (--cluster, a key per master)"
            } else {
                "the MarketData server"
            }
        ));
        ceiling_line = Some(format!(
            "ceiling    : {ceiling:.0} XADD/s raw (redis-benchmark -P {} -c {}, same entry); ours = {:.1}% of it",
            args.ceiling_pipeline,
            args.ceiling_clients,
            100.0 * throughput / ceiling
        ));
    }
    if args.json {
        println!("{out}");
    } else {
        println!("method     : {method}");
        println!("duration   : {duration:.3} s (first publish to last delivery)");
        println!(
            "throughput : {:.0} msgs/s{}",
            throughput,
            if groups > 1 {
                format!(
                    " delivered to each of {groups} groups ({:.0} deliveries/s)",
                    throughput * groups as f64
                )
            } else {
                String::new()
            }
        );
        if let Some(l) = ceiling_line {
            println!("{l}");
        }
        println!(
            "delivered  : {}   lost: {}   duplicated: {}",
            s.delivered, s.lost, s.duplicated
        );
        println!(
            "latency    : {} publish ts -> handler entry",
            percentile_line(&s.hist)
        );
        for l in floor_lines.into_iter().flatten() {
            println!("{l}");
        }
    }
    Ok(())
}

/// The raw rate of pipelined `XADD`s of an entry like ours, measured with `redis-benchmark`
/// against the MarketData server.
fn xadd_ceiling(args: &BenchArgs, rig: &Rig, sample: &Envelope, n: u64) -> anyhow::Result<f64> {
    let cluster = dualbus_redis::is_cluster_url(&rig.cfg.md.url);
    let url = if cluster {
        // Its first node; redis-benchmark --cluster finds the others.
        dualbus_redis::cluster::seed_urls(&rig.cfg.md.url)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .remove(0)
    } else {
        rig.cfg.md.url.clone()
    };
    let client = redis::Client::open(url.as_str())?;
    let info = client.get_connection_info();
    let mut cmd = std::process::Command::new("redis-benchmark");
    if cluster {
        cmd.arg("--cluster");
    }
    match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => {
            cmd.args(["-h", h, "-p", &p.to_string()]);
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            // The same TLS as the bus's connections: the CA and client certificate of [tls].
            cmd.args(["-h", host, "-p", &port.to_string(), "--tls"]);
            let t = &rig.cfg.tls;
            for (flag, file) in [
                ("--cacert", &t.ca_file),
                ("--cert", &t.cert_file),
                ("--key", &t.key_file),
            ] {
                if let Some(f) = file {
                    cmd.arg(flag).arg(f);
                }
            }
        }
        other => bail!("the ceiling needs a TCP address, not {other:?}"),
    }
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        // As the bus's user (the `admin` of `redis up`'s users). redis-benchmark takes the
        // password on its command line only (it reads no environment variable for it), so it
        // is visible to `ps` on this machine while the ceiling runs (a few seconds).
        if let Some(user) = settings.username() {
            cmd.args(["--user", user]);
        }
        cmd.args(["-a", password]);
    }
    // On a cluster, redis-benchmark puts each client on a master and replaces `{tag}` with a
    // hash tag of that master's slots: the ceiling of all the masters together.
    let key = if cluster {
        format!("{}:ceiling:{{tag}}", rig.cfg.prefix)
    } else {
        format!("{}:ceiling", rig.cfg.prefix)
    };
    cmd.args(["-n", &n.to_string()])
        .args(["-P", &args.ceiling_pipeline.to_string()])
        .args(["-c", &args.ceiling_clients.to_string()])
        .arg("--csv")
        .args([
            "XADD",
            &key,
            "MAXLEN",
            "~",
            &rig.cfg.md.maxlen.to_string(),
            "*",
        ]);
    for (k, v) in sample.to_wire_fields() {
        cmd.arg(k).arg(String::from_utf8_lossy(&v).into_owned());
    }
    let out = cmd.output().context(
        "cannot run redis-benchmark (it comes with redis-server: apt-get install redis-server)",
    )?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: a header line, then "XADD ...","<rps>",...
    text.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| {
            l.split("\",\"")
                .nth(1)
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        })
        .with_context(|| format!("cannot read redis-benchmark's output: {text}"))
}

async fn isolation_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    let n = args.messages;
    let rate = args.rate();
    let payload = json_payload(args.payload_bytes);
    let logic_kind = EventKind::StrategySignal;
    // On Redis, the raw baseline: a bare client writing entries like ours (same fields and
    // payload, built once here; only `ts` is rewritten per entry) on the Engine Logic server.
    let raw = if args.backend == Backend::Redis {
        let sample = rig.client("raw", "raw-1")?.stamp(
            logic_kind.clone(),
            Topic::new(LOGIC_TOPIC)?,
            Priority::Normal,
            Encoding::Json,
            Bytes::copy_from_slice(&payload),
        )?;
        Some(Arc::new(RawRedis {
            client: super::redis_client(&rig.cfg, &rig.cfg.logic.url)?,
            shown: dualbus_core::redact_url(&rig.cfg.logic.url),
            prefix: rig.cfg.prefix.clone(),
            fields: sample.to_wire_fields(),
            maxlen: rig.cfg.logic.maxlen,
            count: rig.cfg.delivery.batch_max,
        }))
    } else {
        None
    };
    let raw_method = format!(
        "raw baseline: a bare redis client (no dualbus code) XADDs {n} entries like ours (same \
         fields, {} B payload, ts rewritten) on a private stream of the Engine Logic server, paced \
         at {rate} msgs/s by the same pacing code; a consumer reads them with XREADGROUP COUNT {} \
         BLOCK 100 on a group of that stream and XACKs each read; XADD ts to receipt; first idle \
         (after our idle phase), then during the same dualbus flood (after our saturated phase, \
         the flood still running)",
        args.payload_bytes, rig.cfg.delivery.batch_max
    );
    let method = format!(
        "isolation: {n} strategy_signal messages x {} B on the Engine Logic bus paced at {rate} msgs/s, \
         first with the MarketData bus idle, then while one producer floods it with market_data in \
         batches of {} (a fast-mode group draining it); {} transport; latency of every message{}",
        args.payload_bytes,
        args.batch,
        args.backend_name(),
        if raw.is_some() {
            format!("; and the {raw_method}")
        } else {
            String::new()
        }
    );
    if !args.json {
        // The method is printed once, with the results.
        eprintln!("running; the method and the figures follow when it ends");
    }
    let phase = |name: &'static str| {
        let rig_ptr = rig;
        let payload = payload.clone();
        let kind = logic_kind.clone();
        async move {
            let groups = Groups::start(
                rig_ptr,
                args,
                name,
                1,
                "strategy_signal.>",
                Mode::Reliable,
                n,
                1,
                true,
            )
            .await?;
            let publisher = rig_ptr.client(name, &format!("{name}-1"))?;
            let rx = publish_paced(publisher, kind, Topic::new(LOGIC_TOPIC)?, n, rate, payload);
            groups.wait(args.json).await;
            rx.await.context("producer thread died")??;
            groups.finish().await
        }
    };
    let raw_phase = |name: &'static str| {
        let raw = raw.clone();
        let quiet = args.json;
        async move {
            let Some(raw) = raw else {
                return Ok(None);
            };
            if !quiet {
                eprintln!("raw {name}: {n} bare XADD -> XREADGROUP on the Engine Logic server");
            }
            let got = tokio::task::spawn_blocking(move || raw.phase(name, n, rate))
                .await
                .context("the raw baseline's thread died")??;
            anyhow::Ok(Some(got))
        }
    };
    let idle = phase("idle").await?;
    let raw_idle = raw_phase("idle").await?;

    // Saturate the MarketData bus.
    let flood_groups = Groups::start(
        rig,
        args,
        "flood",
        1,
        "market_data.>",
        Mode::Fast,
        1,
        1_000_000,
        true,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_bus = rig.client("flood", "flood-1")?;
    let flood = tokio::spawn(publish_batched(
        flood_bus,
        EventKind::MarketData,
        vec![Topic::new(MD_TOPIC)?],
        u64::MAX,
        args.batch,
        payload.clone(),
        Some(stop.clone()),
        Some(sent.clone()),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The flood's rate during a phase: envelopes it published then, over the phase's length.
    let flood_rate_during = |t0: Instant, sent0: u64| {
        (sent.load(Ordering::Relaxed) - sent0) as f64 / t0.elapsed().as_secs_f64()
    };
    let (t0, sent0) = (Instant::now(), sent.load(Ordering::Relaxed));
    let saturated = phase("saturated").await;
    let flood_rate = flood_rate_during(t0, sent0);
    let (t0, sent0) = (Instant::now(), sent.load(Ordering::Relaxed));
    let raw_flooded = match &saturated {
        Ok(_) => raw_phase("flooded").await,
        Err(_) => Ok(None),
    };
    let raw_flood_rate = flood_rate_during(t0, sent0);
    stop.store(true, Ordering::Relaxed);
    flood.await??;
    // Stopped and waited for, not dropped: a group still reading when the run's keys are
    // removed would recreate its stream (NOGROUP recovery) after the cleanup.
    flood_groups.finish().await?;
    let saturated = saturated?;
    let raw_flooded = raw_flooded?;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    let p99_ratio = p99(&saturated.hist) / p99(&idle.hist).max(1.0);
    let mut out = json!({
        "backend": args.backend_name(),
        "scenario": "isolation",
        "mode": "reliable",
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "rate": rate,
        "delivered": saturated.delivered,
        "lost": saturated.lost,
        "duplicated": saturated.duplicated,
        "latency_ns": percentiles(&saturated.hist),
        "idle_latency_ns": percentiles(&idle.hist),
        "idle_lost": idle.lost,
        "md_flood_msgs_per_s": flood_rate,
        "p99_ratio": p99_ratio,
    });
    let mut raw_lines = None;
    if let (Some((ri, ri_n)), Some((rf, rf_n))) = (&raw_idle, &raw_flooded) {
        let raw_ratio = p99(rf) / p99(ri).max(1.0);
        out["raw_idle_latency_ns"] = percentiles(ri);
        out["raw_latency_ns"] = percentiles(rf);
        out["raw_idle_delivered"] = json!(ri_n);
        out["raw_delivered"] = json!(rf_n);
        out["raw_md_flood_msgs_per_s"] = json!(raw_flood_rate);
        out["raw_p99_ratio"] = json!(raw_ratio);
        out["p99_ratio_vs_raw"] = json!(p99_ratio / raw_ratio);
        out["raw_method"] = json!(raw_method);
        raw_lines = Some([
            format!("raw idle   : {}", percentile_line(ri)),
            format!(
                "raw flooded: {}   (flood {raw_flood_rate:.0} msgs/s meanwhile)",
                percentile_line(rf)
            ),
            format!(
                "raw ratio  : {raw_ratio:.2} (flooded / idle, bare XADD -> XREADGROUP; received {ri_n} + {rf_n} of {n} + {n})   ours / raw: {:.2}",
                p99_ratio / raw_ratio
            ),
        ]);
    }
    if let Some(path) = &args.plot {
        let mut lines = vec![
            Line {
                name: "ours, MarketData bus idle".into(),
                points: cdf_points(&idle.hist),
            },
            Line {
                name: "ours, MarketData bus flooded".into(),
                points: cdf_points(&saturated.hist),
            },
        ];
        if let (Some((ri, _)), Some((rf, _))) = (&raw_idle, &raw_flooded) {
            lines.push(Line {
                name: "raw redis baseline, idle".into(),
                points: cdf_points(ri),
            });
            lines.push(Line {
                name: "raw redis baseline, flooded".into(),
                points: cdf_points(rf),
            });
        }
        let title = format!(
            "isolation: Engine Logic latency at {rate} msgs/s ({})",
            args.backend_name()
        );
        write_plot(path, &title, &lines, args.json)?;
    }
    if args.json {
        println!("{out}");
    } else {
        println!("method     : {method}");
        println!("idle       : {}", percentile_line(&idle.hist));
        println!("saturated  : {}", percentile_line(&saturated.hist));
        println!(
            "flood      : {flood_rate:.0} market_data msgs/s on the MarketData bus during the saturated phase"
        );
        println!(
            "p99 ratio  : {p99_ratio:.2} (saturated / idle)   lost: {} + {}   duplicated: {} + {}",
            idle.lost, saturated.lost, idle.duplicated, saturated.duplicated
        );
        for l in raw_lines.into_iter().flatten() {
            println!("{l}");
        }
    }
    Ok(())
}

/// Writes the latency distributions as an SVG chart to `path`.
fn write_plot(
    path: &std::path::Path,
    title: &str,
    lines: &[Line],
    quiet: bool,
) -> anyhow::Result<()> {
    let svg = super::plot::cdf(title, lines)?;
    std::fs::write(path, svg).with_context(|| format!("writing the plot {}", path.display()))?;
    if !quiet {
        eprintln!("latency distribution plotted to {}", path.display());
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    dualbus_testkit::stress::peak_rss_of("self")
}

/// A handler that never finishes: the group stalls with its first batch in hand.
struct Stalled;

impl Handler for Stalled {
    fn handle(&self, _m: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::pending()
    }
}

async fn stall_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    if args.mode == ModeArg::Fast {
        bail!("the stall scenario measures a reliable group; drop --mode fast");
    }
    let n = args.messages;
    let consumer = rig.client("stalled", "stalled-1")?;
    let opts = SubscribeOptions::new("stalled", &["market_data.>"])?
        .mode(Mode::Reliable)
        .bound(args.queue_bound, args.policy());
    let _sub = consumer.subscribe(opts, Stalled).await?;
    let publisher = rig.client("bench", "bench-1")?;
    let payload = json_payload(args.payload_bytes);
    let topic = Topic::new(MD_TOPIC)?;
    let (mut accepted, mut rejected, mut blocked) = (0u64, 0u64, false);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut i = 0u64;
    let mut first_error = None;
    while i < n {
        let k = (args.batch as u64).min(n - i) as usize;
        let mut envs = Vec::with_capacity(k);
        for _ in 0..k {
            envs.push(publisher.stamp(
                EventKind::MarketData,
                topic.clone(),
                Priority::Normal,
                Encoding::Json,
                Bytes::copy_from_slice(&payload),
            )?);
        }
        match tokio::time::timeout(Duration::from_secs(1), publisher.publish_batch(envs)).await {
            Err(_) => {
                blocked = true;
                break;
            }
            Ok(Ok(())) => accepted += k as u64,
            Ok(Err(e)) => {
                rejected += k as u64;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        i += k as u64;
        if !args.json && last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  {i} / {n} attempted");
            last_report = Instant::now();
        }
    }
    let dropped = rig.md.stats().dropped;
    let retained = rig
        .stream_len(BusId::MarketData, &EventKind::MarketData)
        .await?;
    let out = json!({
        "backend": args.backend_name(),
        "scenario": "stall",
        "mode": "reliable",
        "policy": args.policy_name(),
        "queue_bound": args.queue_bound,
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "attempted": i,
        "accepted": accepted,
        "rejected": rejected,
        "dropped": dropped,
        "blocked": blocked,
        "retained_in_stream": retained,
        "duration_s": start.elapsed().as_secs_f64(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("method     : publish {n} x {} B in batches of {} at a reliable group that never acknowledges; queue bound {}, policy {}; {} transport",
            args.payload_bytes, args.batch, args.queue_bound, args.policy_name(), args.backend_name());
        println!(
            "attempted  : {i}   accepted: {accepted}   rejected: {rejected}   dropped: {dropped}"
        );
        println!(
            "blocked    : {blocked}{}",
            if blocked {
                " (a publish waited over 1 s for room: the publisher is held at the bound)"
            } else {
                ""
            }
        );
        println!("retained   : {retained} entries in the stream");
        if let Some(e) = first_error {
            println!("first error: {e}");
        }
        println!(
            "peak RSS   : {:.1} MiB (this process)",
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
