//! The checked traffic of `dualbus stress soak`, and its schedule of faults.
//!
//! The soak runs the whole system (every engine as a process of its own, started by the
//! `dualbus` command) on two servers, and beside it this traffic, under a prefix of its own so
//! that no engine takes it for market data: the checked publisher of the scenarios (market
//! data, strategy signals, risk alerts) and two checked groups, `stress` (every kind; a
//! consumer process now and then joins it and is killed holding a batch) and `slow` (market
//! data; stalls now and then, then catches up). Every message is checked by (kind, seq) in each
//! group: lost, duplicated, out of order.

use crate::harness::{
    checked_config, checked_group_options, checked_publisher, pending_of, start_publishers,
    subscribe_slow, tally, wait_delivered, wait_up, ChildConsumer, ChildSpec, Millis, Nanos,
    PendingFault, Publishing, Recorder, Seen, Tally, CHECKED_KINDS,
};
use dualbus_bus::{BusId, DualBus, Subscription};
use dualbus_core::{EventKind, Transport};
use dualbus_redis::RedisTransport;
use parking_lot::Mutex;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One fault of the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// SIGKILL the bus's server, restart it (empty).
    BrokerKill(BusId),
    /// SIGKILL an engine process and start it again; a consumer process of the `stress` group
    /// killed holding a batch.
    ConsumerKill,
    /// The `slow` group stalls, then catches up.
    SlowConsumer,
    /// Market data at 50x the rate.
    Burst,
}

/// A fault and when it starts, from the start of the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When.
    pub at: Duration,
    /// What.
    pub phase: Phase,
}

/// The soak's plan over `duration`: a broker kill every `kill_every` (alternating MarketData
/// and Engine Logic), and half-way between two kills a consumer kill, a slow consumer or a
/// burst in turn. A duration shorter than three times `kill_every` kills every third of it, so
/// that each bus's broker is killed at least once. Returns the kill interval used and the steps
/// in time order.
pub fn schedule(duration: Duration, kill_every: Duration) -> (Duration, Vec<Step>) {
    let every = kill_every.min(duration / 3);
    let mut steps = Vec::new();
    if every.is_zero() {
        return (every, steps);
    }
    let others = [Phase::ConsumerKill, Phase::SlowConsumer, Phase::Burst];
    let mut i = 0u32;
    loop {
        let middle = every * i + every / 2;
        if middle >= duration {
            break;
        }
        steps.push(Step {
            at: middle,
            phase: others[i as usize % others.len()],
        });
        let kill = every * (i + 1);
        if kill < duration {
            steps.push(Step {
                at: kill,
                phase: Phase::BrokerKill(if i.is_multiple_of(2) {
                    BusId::MarketData
                } else {
                    BusId::Logic
                }),
            });
        }
        i += 1;
    }
    (every, steps)
}

/// How to run the checked traffic.
#[derive(Debug, Clone)]
pub struct SoakTrafficOptions {
    /// Messages per second per bus in normal operation.
    pub rate: u64,
    /// Stream-key prefix (not the system's, so that no engine reads this traffic).
    pub prefix: String,
    /// The `dualbus` binary, for the consumer process that is killed; `None`: no consumer
    /// process (the consumer kill only kills engines).
    pub consumer_exe: Option<PathBuf>,
    /// A heartbeat slower than this marks a bus down (the default, 100 ms, when `None`).
    pub heartbeat_timeout: Option<Duration>,
    /// Idle time after which another instance of the `stress` group takes over a dead
    /// consumer's batch.
    pub idle: Duration,
}

/// What one checked group got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupReport {
    /// The group.
    pub group: String,
    /// The kinds it takes.
    pub kinds: Vec<String>,
    /// Its counts.
    #[serde(flatten)]
    pub tally: Tally,
}

/// What the checked traffic found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakTrafficReport {
    /// Messages accepted by publish calls.
    pub published: u64,
    /// Publish calls that failed.
    pub publish_errors: u64,
    /// What each group should have handled: the published messages of its kinds, summed.
    pub expected: u64,
    /// Distinct messages handled, summed over the groups.
    pub delivered: u64,
    /// Published and never handled, summed over the groups.
    pub lost: u64,
    /// Handled more than once, summed over the groups.
    pub duplicated: u64,
    /// Handled after a later one of the same kind, summed over the groups.
    pub reordered: u64,
    /// Each group.
    pub groups: Vec<GroupReport>,
    /// Times the checked publisher moved a bus's traffic to the other bus.
    pub failovers: u64,
    /// Times it moved it back.
    pub failbacks: u64,
    /// Messages pushed out of the re-send window early (published faster than it holds).
    pub window_overflow: u64,
    /// From each broker kill to the first delivery over the other bus.
    pub failover_ms: Millis,
    /// Publish-to-handler latency of risk alerts (priority lane), at the `stress` group.
    pub critical_latency_ns: Nanos,
    /// Deliveries after the first (taken over from a dead consumer, or after a failure).
    pub redelivered: u64,
    /// Consumer processes of the `stress` group killed holding a batch.
    pub checked_consumer_kills: u64,
    /// Largest peak resident set of those consumer processes (the soak's report lists it with
    /// every other process's).
    #[serde(skip)]
    pub consumer_peak_rss_bytes: u64,
}

/// The checked traffic, running.
pub struct SoakTraffic {
    md: Arc<RedisTransport>,
    logic: Arc<RedisTransport>,
    publisher: DualBus,
    spec: ChildSpec,
    exe: Option<PathBuf>,
    seen: Arc<Mutex<Seen>>,
    slow_seen: Arc<Mutex<Seen>>,
    fault: Arc<Mutex<Option<PendingFault>>>,
    failover_ms: Arc<Mutex<Vec<f64>>>,
    gate: Arc<AtomicBool>,
    publishing: Publishing,
    base_rate: u64,
    subs: Vec<Subscription>,
    children: usize,
    consumer_peak_rss: u64,
}

/// The queue bound of the checked groups: high enough that a stalled group never holds the
/// publisher back.
const BOUND: usize = 2_000_000;
/// Stream length: a stall at 50x the rate still fits.
const MAXLEN: u64 = 2_000_000;
/// The in-process instance of the `stress` group; consumer processes are 1, 2, ...
const IN_PROCESS: usize = 0;

impl SoakTraffic {
    /// Connects to the two servers, subscribes the checked groups and starts publishing.
    ///
    /// # Errors
    /// When the servers cannot be reached.
    pub async fn start(
        md_url: &str,
        logic_url: &str,
        opts: &SoakTrafficOptions,
    ) -> Result<SoakTraffic, String> {
        let cfg = checked_config(MAXLEN, opts.heartbeat_timeout, &opts.prefix);
        let (md, logic, publisher) = checked_publisher(md_url, logic_url, &cfg).await?;
        let seen: Arc<Mutex<Seen>> = Default::default();
        let slow_seen: Arc<Mutex<Seen>> = Default::default();
        let fault: Arc<Mutex<Option<PendingFault>>> = Default::default();
        let failover_ms: Arc<Mutex<Vec<f64>>> = Default::default();
        let gate = Arc::new(AtomicBool::new(true));
        let mut subs = Vec::new();
        subs.push(
            publisher
                .sibling("stress-sub", "stress-sub-0")
                .map_err(|e| e.to_string())?
                .subscribe(
                    checked_group_options(opts.idle, BOUND)?,
                    Recorder {
                        seen: seen.clone(),
                        fault: fault.clone(),
                        failover_ms: failover_ms.clone(),
                        gate: None,
                        dead: None,
                        instance: IN_PROCESS,
                    },
                )
                .await
                .map_err(|e| e.to_string())?,
        );
        subs.push(subscribe_slow(&publisher, BOUND, slow_seen.clone(), gate.clone()).await?);
        let publishing = start_publishers(&publisher, opts.rate)?;
        Ok(SoakTraffic {
            md,
            logic,
            publisher,
            spec: ChildSpec {
                md_url: md_url.to_string(),
                logic_url: logic_url.to_string(),
                maxlen: MAXLEN,
                bound: BOUND,
                prefix: opts.prefix.clone(),
                instance: String::new(),
                idle: opts.idle,
            },
            exe: opts.consumer_exe.clone(),
            seen,
            slow_seen,
            fault,
            failover_ms,
            gate,
            publishing,
            base_rate: opts.rate,
            subs,
            children: 0,
            consumer_peak_rss: 0,
        })
    }

    /// Per group (`stress`, `slow`): messages handled (duplicates included) and published of
    /// the kinds it takes.
    fn progress(&self) -> [(u64, u64); 2] {
        let published = self.publishing.published.lock();
        let all: u64 = published.values().map(|v| v.len() as u64).sum();
        let md = published
            .get(&EventKind::MarketData)
            .map_or(0, |v| v.len() as u64);
        drop(published);
        [
            (self.seen.lock().handled(), all),
            (self.slow_seen.lock().handled_of(&EventKind::MarketData), md),
        ]
    }

    /// Messages the checked groups have still to handle.
    pub fn behind(&self) -> u64 {
        self.progress()
            .iter()
            .map(|(got, want)| want.saturating_sub(*got))
            .sum()
    }

    /// Waits until the checked groups have handled everything published so far, at most
    /// `within`; whether they have.
    pub async fn catch_up(&self, within: Duration) -> bool {
        let t = Instant::now();
        loop {
            if self.behind() == 0 {
                return true;
            }
            if t.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Market data at `factor` times the rate (1: back to normal).
    pub fn set_rate_factor(&self, factor: u64) {
        self.publishing
            .rate
            .store(self.base_rate.saturating_mul(factor), Ordering::Relaxed);
    }

    /// Stalls the `slow` group (it holds the batch in hand) or lets it go on.
    pub fn stall_slow(&self, stalled: bool) {
        self.gate.store(!stalled, Ordering::SeqCst);
    }

    /// Notes that `bus`'s server just died: the next delivery over the other bus of a message
    /// published after now ends the fail-over time.
    pub fn fault(&self, bus: BusId) {
        *self.fault.lock() = Some(PendingFault::now(bus));
    }

    /// Waits until the checked publisher has taken `bus` back, at most `within`; whether it has.
    pub async fn wait_back(&self, bus: BusId, within: Duration) -> bool {
        wait_up(&self.publisher, bus, within).await
    }

    /// Starts a consumer process of the `stress` group, lets it take its share for `share`,
    /// then kills it (SIGKILL) holding a batch it has neither handled nor acknowledged: the
    /// in-process instance takes the batch over once it has been idle. False without a binary
    /// to start.
    ///
    /// # Errors
    /// When the process does not start or never stops at a message.
    pub async fn kill_consumer(&mut self, share: Duration) -> Result<bool, String> {
        let Some(exe) = self.exe.clone() else {
            return Ok(false);
        };
        self.children += 1;
        let instance = self.children;
        let spec = ChildSpec {
            instance: format!("stress-sub-{instance}"),
            ..self.spec.clone()
        };
        let mut child = ChildConsumer::start(&exe, &spec).await?;
        tokio::time::sleep(share).await;
        if let Some(pid) = child.pid() {
            self.consumer_peak_rss = self
                .consumer_peak_rss
                .max(crate::peak_rss_of(&pid.to_string()));
        }
        child.kill_holding_a_batch().await?;
        child.merge_into(&mut self.seen.lock(), instance)?;
        // What it held is what the brokers still list as its pending entries: those reach the
        // in-process instance as redeliveries, after later messages.
        for url in [&spec.md_url, &spec.logic_url] {
            let held = pending_of(url, &spec.prefix, "stress", &spec.instance).await?;
            self.seen.lock().held.extend(held);
        }
        Ok(true)
    }

    /// Stops publishing, waits until the groups have handled everything (or made no progress
    /// for `idle`), and counts.
    pub async fn finish(mut self, idle: Duration) -> SoakTrafficReport {
        self.stall_slow(false);
        self.set_rate_factor(1);
        self.publishing.stop.store(true, Ordering::Relaxed);
        for t in self.publishing.tasks.drain(..) {
            let _ = t.await;
        }
        wait_delivered(
            || {
                let [(a, x), (b, y)] = self.progress();
                (a.min(x) + b.min(y), x + y)
            },
            idle,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in self.subs.drain(..) {
            s.stop().await;
        }
        let published = self.publishing.published.lock().clone();
        let groups = [
            (
                "stress",
                CHECKED_KINDS.to_vec(),
                tally(&published, &self.seen.lock(), &CHECKED_KINDS),
            ),
            (
                "slow",
                vec![EventKind::MarketData],
                tally(&published, &self.slow_seen.lock(), &[EventKind::MarketData]),
            ),
        ];
        let mut r = SoakTrafficReport {
            published: published.values().map(|v| v.len() as u64).sum(),
            publish_errors: self.publishing.errors.load(Ordering::Relaxed),
            failover_ms: Millis::of(self.failover_ms.lock().clone()),
            critical_latency_ns: Nanos::of(self.seen.lock().critical_ns.clone()),
            redelivered: self.md.stats().redelivered + self.logic.stats().redelivered,
            checked_consumer_kills: self.children as u64,
            consumer_peak_rss_bytes: self.consumer_peak_rss,
            ..Default::default()
        };
        for (group, kinds, t) in groups {
            r.expected += t.expected;
            r.delivered += t.delivered;
            r.lost += t.lost;
            r.duplicated += t.duplicated;
            r.reordered += t.reordered;
            r.groups.push(GroupReport {
                group: group.to_string(),
                kinds: kinds.iter().map(|k| k.to_string()).collect(),
                tally: t,
            });
        }
        for bus in BusId::ALL {
            let c = self.publisher.failover_counters(bus);
            r.failovers += c.failovers;
            r.failbacks += c.failbacks;
            r.window_overflow += c.window_overflow;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kills(steps: &[Step], bus: BusId) -> usize {
        steps
            .iter()
            .filter(|s| s.phase == Phase::BrokerKill(bus))
            .count()
    }

    #[test]
    fn a_two_minute_soak_kills_each_broker_and_runs_every_other_fault() {
        let (every, steps) = schedule(Duration::from_secs(120), Duration::from_secs(180));
        assert_eq!(every, Duration::from_secs(40));
        let at: Vec<(u64, Phase)> = steps.iter().map(|s| (s.at.as_secs(), s.phase)).collect();
        assert_eq!(
            at,
            [
                (20, Phase::ConsumerKill),
                (40, Phase::BrokerKill(BusId::MarketData)),
                (60, Phase::SlowConsumer),
                (80, Phase::BrokerKill(BusId::Logic)),
                (100, Phase::Burst),
            ]
        );
    }

    #[test]
    fn a_long_soak_kills_every_interval_alternating_buses() {
        let (every, steps) = schedule(Duration::from_secs(1800), Duration::from_secs(180));
        assert_eq!(every, Duration::from_secs(180));
        assert_eq!(kills(&steps, BusId::MarketData), 5);
        assert_eq!(kills(&steps, BusId::Logic), 4);
        for phase in [Phase::ConsumerKill, Phase::SlowConsumer, Phase::Burst] {
            assert!(steps.iter().filter(|s| s.phase == phase).count() >= 3);
        }
        assert!(steps.windows(2).all(|w| w[0].at < w[1].at));
        assert!(steps.iter().all(|s| s.at < Duration::from_secs(1800)));
    }
}
