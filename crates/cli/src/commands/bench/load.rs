//! What the scenarios publish and how their consumer groups count what arrives (lost,
//! duplicated, latency by sequence number).

use super::args::BenchArgs;
use super::report::latency_histogram;
use super::rig::Rig;
use anyhow::Context;
use bytes::Bytes;
use dualbus_bus::{Config, DualBus, Handler, HandlerError, SubscribeOptions, Subscription};
use dualbus_core::{now_unix_nanos, Encoding, Envelope, EventKind, Mode, Priority, Topic};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-group record of what arrived.
pub(super) struct Tally {
    pub(super) seen: Vec<u64>,
    pub(super) delivered: u64,
    pub(super) reported: u64,
    pub(super) duplicated: u64,
    pub(super) hist: Histogram<u64>,
    pub(super) last_at: Option<Instant>,
}

impl Tally {
    pub(super) fn new(messages: u64) -> Tally {
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
pub(super) struct Counting {
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
pub(super) struct Groups {
    pub(super) tallies: Vec<Arc<Mutex<Tally>>>,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) subs: Vec<Subscription>,
    pub(super) n: u64,
    /// The groups' own threads, where they have them (see [`Groups::start`]).
    pub(super) threads: Vec<tokio::runtime::Runtime>,
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
    pub(super) async fn start(
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
    pub(super) async fn wait(&self, quiet: bool) {
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
    pub(super) async fn finish(mut self) -> anyhow::Result<Summary> {
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

pub(super) struct Summary {
    pub(super) hist: Histogram<u64>,
    pub(super) delivered: u64,
    pub(super) duplicated: u64,
    pub(super) lost: u64,
    pub(super) last_at: Option<Instant>,
}

/// Publishes `n` envelopes in batches (until `stop`, when given); returns when all are queued.
/// `sent`, when given, counts the envelopes published so far.
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish_batched(
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
pub(super) fn pace(
    n: u64,
    rate: u64,
    mut send: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
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
pub(super) fn publish_paced(
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

/// A valid JSON payload of exactly `size` bytes (a string of `x`; at least 2 bytes).
pub(super) fn json_payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(2)];
    p[0] = b'"';
    let last = p.len() - 1;
    p[last] = b'"';
    p
}

pub(super) const MD_TOPIC: &str = "market_data.trade.BENCH";

/// The topics the full-speed scenarios publish: [`MD_TOPIC`], or on a partitioned MarketData
/// bus one symbol per partition (`BENCH{i}`, the first `i` falling in each), so every
/// partition (and every master of a cluster) gets an equal share.
pub(super) fn partition_topics(cfg: &Config) -> anyhow::Result<Vec<Topic>> {
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
pub(super) const LOGIC_TOPIC: &str = "strategy_signal.BENCH";
