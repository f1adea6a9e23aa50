//! `dualbus bench SCENARIO`: throughput, fan-out, latency and stalled-consumer memory of the
//! bus, measured through the public `DualBus` API (publish -> transport -> handler).
//!
//! Every scenario checks each message by its sequence number at the handler (lost, duplicated)
//! and records publish-to-handler latency (`ts` field to handler entry, same wall clock) in an
//! HDR histogram.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use dualbus_bus::{BusId, Config, DualBus, Handler, HandlerError, SubscribeOptions};
use dualbus_core::{
    now_unix_nanos, Backpressure, Encoding, Envelope, EventKind, Mode, Priority, Topic, Transport,
};
use dualbus_memory::{MemoryOptions, MemoryTransport};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `dualbus bench`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Scenarios:
  throughput  1 producer, 1 consumer group; messages published in batches of --batch
  fanout      1 producer, --groups groups (12); rate at which every group has every message
  latency     1 producer paced at --rate, one message per publish; publish-to-handler latency
  stall       a reliable group that never handles anything, with --queue-bound and
              --backpressure; shows that memory stays bounded (blocks, rejects or drops)

Examples:
  dualbus bench throughput --messages 10000000 --payload-bytes 64
  dualbus bench fanout --messages 2000000 --json
  dualbus bench latency --rate 100000 --messages 1000000
  dualbus bench stall --messages 10000000 --queue-bound 100000 --backpressure reject")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Transport under test.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Publish rate in messages per second (latency scenario).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Delivery mode of the consumer groups.
    #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
    mode: ModeArg,
    /// Consumer groups (fanout scenario).
    #[arg(long, default_value_t = 12)]
    groups: usize,
    /// Envelopes per publish call (throughput and fanout).
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
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Fanout,
    Latency,
    Stall,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
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
    DropOldest,
    Reject,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Stall => "stall",
        }
    }
}

/// Runs the benchmark.
pub fn run(args: BenchArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if args.scenario == Scenario::Latency && args.rate == 0 {
        bail!("--rate must be at least 1 message per second");
    }
    if args.batch == 0 || args.groups == 0 || args.queue_bound == 0 || args.threads == 0 {
        bail!("--batch, --groups, --queue-bound and --threads must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let (md, logic, memory) = match args.backend {
            Backend::Memory => {
                let opts = MemoryOptions {
                    maxlen: cfg.md.maxlen as usize,
                    spin: Duration::from_micros(cfg.memory.spin_us),
                };
                let md = MemoryTransport::with_options(opts.clone());
                let logic = MemoryTransport::with_options(opts);
                (
                    Arc::new(md.clone()) as Arc<dyn Transport>,
                    Arc::new(logic) as Arc<dyn Transport>,
                    Some(md),
                )
            }
            Backend::Redis => {
                bail!("the Redis backend is not part of this build yet; use --backend memory")
            }
        };
        let publisher = DualBus::builder("bench")
            .instance("bench-1")
            .config(cfg)
            .transports(md, logic)
            .first_seq(0)
            .build()?;
        match args.scenario {
            Scenario::Throughput | Scenario::Fanout | Scenario::Latency => {
                delivery_bench(&args, &publisher).await
            }
            Scenario::Stall => stall_bench(&args, &publisher, memory).await,
        }
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
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
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
        let now = if m.seq.is_multiple_of(self.sample_every) {
            now_unix_nanos()
        } else {
            0
        };
        let mut t = self.tally.lock();
        let seq = m.seq;
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if let Some(word) = t.seen.get_mut(w) {
            if *word & bit != 0 {
                t.duplicated += 1;
            } else {
                *word |= bit;
                t.delivered += 1;
            }
        }
        if seq.is_multiple_of(self.sample_every) {
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

fn mode(args: &BenchArgs) -> Mode {
    match args.mode {
        ModeArg::Reliable => Mode::Reliable,
        ModeArg::Fast => Mode::Fast,
    }
}

fn policy(args: &BenchArgs) -> Backpressure {
    match args.backpressure {
        PolicyArg::Block => Backpressure::Block,
        PolicyArg::DropOldest => Backpressure::DropOldest,
        PolicyArg::Reject => Backpressure::Reject,
    }
}

fn mode_name(args: &BenchArgs) -> &'static str {
    match args.mode {
        ModeArg::Reliable => "reliable",
        ModeArg::Fast => "fast",
    }
}

fn policy_name(args: &BenchArgs) -> &'static str {
    match args.backpressure {
        PolicyArg::Block => "block",
        PolicyArg::DropOldest => "drop_oldest",
        PolicyArg::Reject => "reject",
    }
}

fn backend_name(args: &BenchArgs) -> &'static str {
    match args.backend {
        Backend::Memory => "memory",
        Backend::Redis => "redis",
    }
}

const TOPIC: &str = "market_data.trade.BENCH";

async fn delivery_bench(args: &BenchArgs, publisher: &DualBus) -> anyhow::Result<()> {
    let n = args.messages;
    let groups = if args.scenario == Scenario::Fanout {
        args.groups
    } else {
        1
    };
    // Paced runs record every message; batch runs every 16th, so that measuring costs the
    // handler little.
    let sample_every = if args.scenario == Scenario::Latency {
        1
    } else {
        16
    };
    let mut tallies = Vec::new();
    let progress = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for g in 0..groups {
        let tally = Arc::new(Mutex::new(Tally::new(n)));
        let consumer = publisher.sibling("bench-sub", &format!("bench-sub-{g}"))?;
        let opts = SubscribeOptions::new(&format!("bench-g{g}"), &["market_data.>"])?
            .mode(mode(args))
            .bound(args.queue_bound, policy(args))
            .lag_limit(args.queue_bound as u64);
        subs.push(
            consumer
                .subscribe(
                    opts,
                    Counting {
                        tally: tally.clone(),
                        progress: progress.clone(),
                        sample_every,
                        expected: n,
                    },
                )
                .await?,
        );
        tallies.push(tally);
    }
    let payload = vec![b'x'; args.payload_bytes];
    let topic = Topic::new(TOPIC)?;
    let total = n * groups as u64;
    if !args.json {
        eprintln!(
            "bench {}: {} messages of {} B, {} group(s), {} mode, {} backend{}",
            args.scenario.name(),
            n,
            args.payload_bytes,
            groups,
            mode_name(args),
            backend_name(args),
            if args.scenario == Scenario::Latency {
                format!(", paced at {} msgs/s", args.rate)
            } else {
                format!(", batches of {}", args.batch)
            }
        );
    }
    let start = Instant::now();
    let producer: tokio::task::JoinHandle<anyhow::Result<Instant>> =
        if args.scenario == Scenario::Latency {
            let bus = publisher.clone();
            let rate = args.rate;
            let handle = tokio::runtime::Handle::current();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let res = (|| -> anyhow::Result<Instant> {
                    let interval = 1e9 / rate as f64;
                    let t0 = Instant::now();
                    for i in 0..n {
                        let target = t0 + Duration::from_nanos((i as f64 * interval) as u64);
                        while Instant::now() < target {
                            std::hint::spin_loop();
                        }
                        let env = bus.stamp(
                            EventKind::MarketData,
                            topic.clone(),
                            Priority::Normal,
                            Encoding::Json,
                            Bytes::copy_from_slice(&payload),
                        )?;
                        handle.block_on(bus.publish_envelope(env))?;
                    }
                    Ok(Instant::now())
                })();
                let _ = tx.send(res);
            });
            tokio::spawn(async move { rx.await.context("producer thread died")? })
        } else {
            let bus = publisher.clone();
            let batch = args.batch;
            tokio::spawn(async move {
                let mut i = 0;
                while i < n {
                    let k = (batch as u64).min(n - i) as usize;
                    let mut envs = Vec::with_capacity(k);
                    for _ in 0..k {
                        envs.push(bus.stamp(
                            EventKind::MarketData,
                            topic.clone(),
                            Priority::Normal,
                            Encoding::Json,
                            Bytes::copy_from_slice(&payload),
                        )?);
                    }
                    bus.publish_batch(envs).await?;
                    i += k as u64;
                }
                Ok(Instant::now())
            })
        };

    // Wait until every group has every message, or until progress stops for 10 s.
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let p = progress.load(Ordering::Relaxed);
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
        if !args.json && last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  {p} / {total} deliveries");
            last_report = Instant::now();
        }
    }
    let publish_end = producer.await??;
    for s in subs {
        s.stop().await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut delivered, mut duplicated, mut lost) = (0u64, 0u64, 0u64);
    let mut end = publish_end;
    for t in &tallies {
        let t = t.lock();
        hist.add(&t.hist)?;
        delivered += t.delivered;
        duplicated += t.duplicated;
        lost += n - t.delivered;
        if let Some(at) = t.last_at {
            end = end.max(at);
        }
    }
    let duration = end.duration_since(start).as_secs_f64();
    let throughput = n as f64 / duration;
    let lat = json!({
        "p50": hist.value_at_quantile(0.50),
        "p90": hist.value_at_quantile(0.90),
        "p99": hist.value_at_quantile(0.99),
        "p999": hist.value_at_quantile(0.999),
        "max": hist.max(),
    });
    let mut out = json!({
        "backend": backend_name(args),
        "scenario": args.scenario.name(),
        "mode": mode_name(args),
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "duration_s": duration,
        "throughput_msgs_per_s": throughput,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "latency_ns": lat,
    });
    if args.scenario == Scenario::Fanout {
        out["groups"] = json!(groups);
    }
    if args.json {
        println!("{out}");
    } else {
        let c = publisher.counters(BusId::MarketData);
        println!("method     : {} {} messages x {} B through DualBus::{} -> {} transport -> handler; {} group(s); {} mode; {}",
            args.scenario.name(), n, args.payload_bytes,
            if args.scenario == Scenario::Latency { "publish_envelope" } else { "publish_batch" },
            backend_name(args), groups, mode_name(args),
            if args.scenario == Scenario::Latency { format!("paced at {} msgs/s", args.rate) } else { format!("batches of {}", args.batch) });
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
        println!("delivered  : {delivered}   lost: {lost}   duplicated: {duplicated}   (bus counters: published {}, acknowledged {}, dropped {})",
            c.published, c.acknowledged, c.dropped);
        println!(
            "latency ns : p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   ({} samples, publish ts -> handler entry)",
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.90),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
            hist.len()
        );
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A handler that never finishes: the group stalls with its first batch in hand.
struct Stalled;

impl Handler for Stalled {
    fn handle(&self, _m: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::pending()
    }
}

async fn stall_bench(
    args: &BenchArgs,
    publisher: &DualBus,
    memory: Option<MemoryTransport>,
) -> anyhow::Result<()> {
    if args.mode == ModeArg::Fast {
        bail!("the stall scenario measures a reliable group; drop --mode fast");
    }
    let n = args.messages;
    let consumer = publisher.sibling("stalled", "stalled-1")?;
    let opts = SubscribeOptions::new("stalled", &["market_data.>"])?
        .mode(Mode::Reliable)
        .bound(args.queue_bound, policy(args));
    let _sub = consumer.subscribe(opts, Stalled).await?;
    let payload = vec![b'x'; args.payload_bytes];
    let topic = Topic::new(TOPIC)?;
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
    let c = publisher.counters(BusId::MarketData);
    let retained = memory.map(|m| m.stream_len("dualbus:md:market_data") as u64);
    let out = json!({
        "backend": backend_name(args),
        "scenario": "stall",
        "mode": "reliable",
        "policy": policy_name(args),
        "queue_bound": args.queue_bound,
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "attempted": i,
        "accepted": accepted,
        "rejected": rejected,
        "dropped": c.dropped,
        "blocked": blocked,
        "retained_in_stream": retained,
        "duration_s": start.elapsed().as_secs_f64(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("method     : publish {n} x {} B in batches of {} at a reliable group that never acknowledges; queue bound {}, policy {}",
            args.payload_bytes, args.batch, args.queue_bound, policy_name(args));
        println!(
            "attempted  : {i}   accepted: {accepted}   rejected: {rejected}   dropped: {}",
            c.dropped
        );
        println!(
            "blocked    : {blocked}{}",
            if blocked {
                " (a publish waited over 1 s for room: the publisher is held at the bound)"
            } else {
                ""
            }
        );
        if let Some(r) = retained {
            println!("retained   : {r} entries in the stream");
        }
        if let Some(e) = first_error {
            println!("first error: {e}");
        }
        println!(
            "peak RSS   : {:.1} MiB",
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
