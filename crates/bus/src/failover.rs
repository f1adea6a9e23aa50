//! Failover between the buses (docs/architecture.md, "Failover between the buses").
//!
//! Each bus is watched: a publish that finds its broker unreachable marks the bus down at once,
//! and a heartbeat (`health()` with a short timeout) catches a hung broker and sees it recover.
//! While a bus is down its traffic is published to the other bus under its own stream keys
//! (`dualbus:md:market_data` on the Engine Logic server), where every subscription also reads.
//! A bounded window of recently published messages is re-sent on the surviving bus when a bus
//! goes down, since the broker may have lost them or consumers may not have read them yet;
//! consumers drop the duplicates by (`src`, `inst`, `seq`).
//!
//! Here are the state shared by the clients of one pair of transports ([`FailoverSettings`],
//! the window, which bus is up) and the procedures that change it: the heartbeat (`watch`),
//! failing over (`fail_over`) and back (`fail_back`), and a publish that follows them.

use crate::client::BusError;
use crate::config::{BusId, Config, FailoverMode};
use crate::route::Route;
use dualbus_core::transport::StreamKey;
use dualbus_core::{Confirm, Envelope, Health, PublishError, Transport};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Failover settings in effect.
#[derive(Debug, Clone, Copy)]
pub struct FailoverSettings {
    /// Whether failover is on.
    pub enabled: bool,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A heartbeat slower than this marks the bus down.
    pub heartbeat_timeout: Duration,
    /// Most messages kept per bus for re-sending.
    pub window: usize,
    /// Oldest message kept for re-sending.
    pub window_age: Duration,
}

/// Counters of failover events on one bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FailoverCounters {
    /// Times this bus was marked down (its traffic moved to the other bus).
    pub failovers: u64,
    /// Times it came back (its traffic moved back).
    pub failbacks: u64,
    /// Messages re-sent on the other bus when it went down.
    pub resent: u64,
    /// Messages pushed out of the re-send window by its count limit (`failover.window`)
    /// before `failover.window_ms` passed: published faster than the window holds, they would
    /// not be re-sent if the bus failed within `window_ms` of their publish.
    pub window_overflow: u64,
    /// Whether it is up now.
    pub up: bool,
}

struct Window {
    items: VecDeque<(StreamKey, Envelope, Instant)>,
    /// When an overflow was last logged (at most one warning per [`OVERFLOW_WARN_EVERY`]).
    warned: Option<Instant>,
    /// Overflows since that warning.
    unwarned: u64,
}

/// How often a window overflowing its count limit is logged.
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Failover {
    pub settings: FailoverSettings,
    /// Written while a bus is being failed over (marked down and its window re-sent) or failed
    /// back (the other bus drained, then marked up); read by every publish redirected to the
    /// other bus, around choosing the bus and queueing. So re-sent messages go ahead of new
    /// ones, and no diverted message is queued behind the last drain check of a fail-back.
    switch: tokio::sync::RwLock<()>,
    /// Woken when a bus is marked down, so a publish stuck on a hung broker gives up at once.
    down_notify: [tokio::sync::Notify; 2],
    up: [AtomicBool; 2],
    down_since: [Mutex<Option<Instant>>; 2],
    failovers: [AtomicU64; 2],
    failbacks: [AtomicU64; 2],
    resent: [AtomicU64; 2],
    window_overflow: [AtomicU64; 2],
    window: [Mutex<Window>; 2],
    /// Streams of each bus that received traffic on the other bus during its outage.
    diverted: [Mutex<std::collections::HashSet<StreamKey>>; 2],
}

impl Failover {
    /// The failover state of a new pair of transports, with the config's `[failover]`
    /// settings; when it is on, its heartbeat runs on the current runtime (or, outside one, on
    /// a thread of its own) until the last client of these transports is dropped.
    pub(crate) fn start(cfg: &Config, transports: &[Arc<dyn Transport>; 2]) -> Arc<Failover> {
        let f = &cfg.failover;
        let settings = FailoverSettings {
            enabled: match f.enabled {
                FailoverMode::On => true,
                FailoverMode::Off => false,
                FailoverMode::Auto => transports.iter().all(|t| t.name() != "memory"),
            },
            heartbeat: Duration::from_millis(f.heartbeat_ms),
            heartbeat_timeout: Duration::from_millis(f.heartbeat_timeout_ms),
            window: f.window as usize,
            window_age: Duration::from_millis(f.window_ms),
        };
        let fo = Arc::new(Failover::new(settings));
        if settings.enabled {
            let watcher = watch(Arc::downgrade(&fo), transports.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(watcher);
                }
                // Built outside a runtime (a synchronous program): the heartbeat gets a thread
                // of its own, which ends with the last client of these transports.
                Err(_) => {
                    let started = std::thread::Builder::new()
                        .name("dualbus-failover".into())
                        .spawn(move || {
                            match tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                            {
                                Ok(rt) => rt.block_on(watcher),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "no runtime for the failover heartbeat: failover is off"
                                ),
                            }
                        });
                    if let Err(e) = started {
                        tracing::error!(error = %e, "no thread for the failover heartbeat: failover is off");
                    }
                }
            }
        }
        fo
    }

    fn new(settings: FailoverSettings) -> Failover {
        let w = || {
            Mutex::new(Window {
                items: VecDeque::new(),
                warned: None,
                unwarned: 0,
            })
        };
        Failover {
            settings,
            switch: tokio::sync::RwLock::new(()),
            down_notify: Default::default(),
            up: [AtomicBool::new(true), AtomicBool::new(true)],
            down_since: [Mutex::new(None), Mutex::new(None)],
            failovers: Default::default(),
            failbacks: Default::default(),
            resent: Default::default(),
            window_overflow: Default::default(),
            window: [w(), w()],
            diverted: Default::default(),
        }
    }

    fn is_up(&self, bus: BusId) -> bool {
        self.up[bus.index()].load(Ordering::SeqCst)
    }

    /// Where traffic for `bus` goes now: the bus itself unless it is down and the other is up.
    fn target(&self, bus: BusId) -> BusId {
        if !self.settings.enabled || self.is_up(bus) || !self.is_up(bus.other()) {
            bus
        } else {
            bus.other()
        }
    }

    /// Keeps published messages for re-sending (bounded by count and age). When the bus is
    /// already marked down, its window was drained (or is being drained) for re-sending, so the
    /// messages are handed back for the caller to re-send itself. Checked under the window's
    /// lock, which `mark_down` takes after marking the bus down: no message falls between.
    fn record(&self, bus: BusId, stream: &StreamKey, envs: Vec<Envelope>) -> Option<Vec<Envelope>> {
        let now = Instant::now();
        let mut w = self.window[bus.index()].lock();
        if !self.is_up(bus) {
            return Some(envs);
        }
        for e in envs {
            w.items.push_back((stream.clone(), e, now));
        }
        let cap = self.settings.window;
        let age = self.settings.window_age;
        let mut overflow = 0u64;
        while w.items.len() > cap {
            if let Some((_, _, at)) = w.items.pop_front() {
                if now.duration_since(at) <= age {
                    overflow += 1;
                }
            }
        }
        if overflow > 0 {
            self.window_overflow[bus.index()].fetch_add(overflow, Ordering::Relaxed);
            w.unwarned += overflow;
            if w.warned
                .is_none_or(|t| now.duration_since(t) >= OVERFLOW_WARN_EVERY)
            {
                tracing::warn!(
                    bus = %bus,
                    messages = w.unwarned,
                    window = cap,
                    window_ms = age.as_millis() as u64,
                    "messages left the failover re-send window before window_ms passed \
                     (published faster than failover.window holds): a fail-over right after \
                     their publish would not re-send them (dualbus_failover_window_overflow)"
                );
                w.warned = Some(now);
                w.unwarned = 0;
            }
        }
        while w
            .items
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > age)
        {
            w.items.pop_front();
        }
        None
    }

    /// Notes that traffic of `bus` for `stream` went to the other bus.
    fn diverted(&self, bus: BusId, stream: &StreamKey) {
        let mut d = self.diverted[bus.index()].lock();
        if !d.contains(stream) {
            d.insert(stream.clone());
        }
    }

    /// The streams of `bus` that received traffic on the other bus.
    fn diverted_streams(&self, bus: BusId) -> Vec<StreamKey> {
        self.diverted[bus.index()].lock().iter().cloned().collect()
    }

    /// Marks `bus` down; returns the messages to re-send when this is a new outage.
    fn mark_down(&self, bus: BusId) -> Option<Vec<(StreamKey, Envelope)>> {
        if !self.up[bus.index()].swap(false, Ordering::SeqCst) {
            return None;
        }
        *self.down_since[bus.index()].lock() = Some(Instant::now());
        self.down_notify[bus.index()].notify_waiters();
        self.failovers[bus.index()].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let age = self.settings.window_age;
        let items: Vec<(StreamKey, Envelope)> = self.window[bus.index()]
            .lock()
            .items
            .drain(..)
            .filter(|(_, _, at)| now.duration_since(*at) <= age)
            .map(|(s, e, _)| (s, e))
            .collect();
        self.resent[bus.index()].fetch_add(items.len() as u64, Ordering::Relaxed);
        Some(items)
    }

    /// Resolves once `bus` is marked down (at once if it is down already).
    async fn went_down(&self, bus: BusId) {
        let notified = self.down_notify[bus.index()].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_up(bus) {
            return;
        }
        notified.await;
    }

    /// Marks `bus` up; returns how long it was down when this ends an outage.
    fn mark_up(&self, bus: BusId) -> Option<Duration> {
        if self.up[bus.index()].swap(true, Ordering::SeqCst) {
            return None;
        }
        self.failbacks[bus.index()].fetch_add(1, Ordering::Relaxed);
        self.diverted[bus.index()].lock().clear();
        self.down_since[bus.index()]
            .lock()
            .take()
            .map(|t| t.elapsed())
    }

    pub(crate) fn counters(&self, bus: BusId) -> FailoverCounters {
        let i = bus.index();
        FailoverCounters {
            failovers: self.failovers[i].load(Ordering::Relaxed),
            failbacks: self.failbacks[i].load(Ordering::Relaxed),
            resent: self.resent[i].load(Ordering::Relaxed),
            window_overflow: self.window_overflow[i].load(Ordering::Relaxed),
            up: self.is_up(bus),
        }
    }

    /// Publishes a run of `route`'s stream (failover on): on its own bus, or on the other one
    /// while its bus is down; fails over at once when the broker turns out to be gone. Tells
    /// `published` the bus that took the run as soon as it is queued, then keeps the run for
    /// re-sending (or re-sends it, when its bus went down meanwhile).
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus that refused the run.
    pub(crate) async fn publish(
        &self,
        transports: &[Arc<dyn Transport>; 2],
        route: &Route,
        run: Vec<Envelope>,
        confirm: Confirm,
        published: impl FnOnce(BusId),
    ) -> Result<(), BusError> {
        let mut target = self.target(route.bus);
        // A diverted publish waits for a switch in progress (a fail-over's re-sent window goes
        // first) and holds off a fail-back until it is queued (which then waits for it to be
        // read before moving traffic back).
        let _diverting = if target != route.bus {
            let guard = self.switch.read().await;
            target = self.target(route.bus);
            Some(guard)
        } else {
            None
        };
        let copy = run.clone();
        let publish = transports[target.index()].publish(&route.stream, run, confirm);
        // A hung broker can hold a publish for its whole response timeout; once the heartbeat
        // marks the bus down, stop waiting and send the batch on the other bus instead.
        let res = tokio::select! {
            r = publish => r,
            _ = self.went_down(target), if target == route.bus => Err(PublishError::Unavailable(
                format!("the {target} bus stopped answering its heartbeat"),
            )),
        };
        let used = match res {
            Ok(()) => target,
            Err(PublishError::Unavailable(why)) if self.is_up(target.other()) => {
                // The broker is gone: fail over now rather than at the next heartbeat.
                tracing::warn!(bus = %target, error = %why, "publish failed; failing over");
                fail_over(self, transports, target).await;
                let other = target.other();
                transports[other.index()]
                    .publish(&route.stream, copy.clone(), confirm)
                    .await
                    .map_err(|source| BusError::Publish { bus: other, source })?;
                other
            }
            Err(source) => {
                return Err(BusError::Publish {
                    bus: target,
                    source,
                })
            }
        };
        published(used);
        if used != route.bus {
            self.diverted(route.bus, &route.stream);
        }
        // If the bus was marked down (its window re-sent) while this batch was being queued on
        // it, re-send the batch on the other bus too.
        if let Some(missed) = self.record(used, &route.stream, copy) {
            if self.is_up(used.other()) {
                self.resend_on_other(transports, used, &route.stream, missed)
                    .await;
            }
        }
        Ok(())
    }

    async fn resend_on_other(
        &self,
        transports: &[Arc<dyn Transport>; 2],
        bus: BusId,
        stream: &StreamKey,
        envs: Vec<Envelope>,
    ) {
        let other = bus.other();
        // After the window a fail-over in progress is re-sending (these messages are newer).
        let _diverting = self.switch.read().await;
        self.diverted(bus, stream);
        if let Err(e) = transports[other.index()]
            .publish(stream, envs.clone(), Confirm::Queued)
            .await
        {
            tracing::error!(bus = %other, error = %e, "re-sending on the other bus failed");
        } else {
            // Both buses failing at once leaves nowhere to re-send: the window just ends here.
            let _ = self.record(other, stream, envs);
        }
    }
}

/// Marks `bus` down and re-sends its window of recent messages on the other bus.
async fn fail_over(fo: &Failover, transports: &[Arc<dyn Transport>; 2], bus: BusId) {
    let _switching = fo.switch.write().await;
    let Some(items) = fo.mark_down(bus) else {
        return;
    };
    let other = bus.other();
    tracing::warn!(bus = %bus, resent = items.len(), "bus down: its traffic moves to the {other} bus");
    // Re-send in order, one batch per run of the same stream.
    let mut run: Vec<Envelope> = Vec::new();
    let mut key: Option<StreamKey> = None;
    for (stream, env) in items {
        fo.diverted(bus, &stream);
        if key.as_ref().is_some_and(|k| *k != stream) {
            let k = key.take().expect("checked");
            if let Err(e) = transports[other.index()]
                .publish(&k, std::mem::take(&mut run), Confirm::Queued)
                .await
            {
                tracing::error!(bus = %other, error = %e, "re-sending the window failed");
            }
        }
        key = Some(stream);
        run.push(env);
    }
    if let Some(k) = key {
        if let Err(e) = transports[other.index()]
            .publish(&k, run, Confirm::Queued)
            .await
        {
            tracing::error!(bus = %other, error = %e, "re-sending the window failed");
        }
    }
}

/// Moves the traffic of `bus` back from the other bus. Diverted publishes are held while the
/// other bus's writer is flushed and its diverted streams are checked drained once more, so
/// nothing published there is still unread when new messages start arriving on `bus` (a
/// consumer would otherwise see them out of order). Holds publishers for at most
/// `FAIL_BACK_HOLD`: a group that never reads cannot stop traffic for long.
async fn fail_back(f: &Failover, transports: &[Arc<dyn Transport>; 2], bus: BusId) {
    const FAIL_BACK_HOLD: Duration = Duration::from_millis(100);
    let _switching = f.switch.write().await;
    let held = Instant::now();
    let other = &transports[bus.other().index()];
    let mut clean = false;
    while held.elapsed() < FAIL_BACK_HOLD {
        let flushed = matches!(
            tokio::time::timeout(f.settings.heartbeat_timeout, other.flush()).await,
            Ok(Ok(()))
        );
        if flushed && drained(f, transports, bus, held).await {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !clean {
        tracing::warn!(bus = %bus, "moving traffic back before the {} bus drained: a consumer may see a message of one source after a later one", bus.other());
    }
    if let Some(outage) = f.mark_up(bus) {
        tracing::warn!(bus = %bus, outage_ms = outage.as_millis() as u64, "bus back: its traffic moves back");
    }
}

/// How long a fail-back waits for the groups to handle what went to the other bus. A stalled
/// group (a slow consumer holding its batch) would otherwise keep the traffic diverted for good;
/// moving back before it drained can put later messages ahead of earlier ones for it.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Whether consumers have read everything of `bus` that went to the other bus (so moving its
/// traffic back cannot overtake it). Gives up waiting after [`DRAIN_WAIT`].
async fn drained(
    f: &Failover,
    transports: &[Arc<dyn Transport>; 2],
    bus: BusId,
    since: Instant,
) -> bool {
    if since.elapsed() > DRAIN_WAIT {
        return true;
    }
    let other = &transports[bus.other().index()];
    for stream in f.diverted_streams(bus) {
        match tokio::time::timeout(f.settings.heartbeat_timeout, other.unread(&stream)).await {
            Ok(Ok(0)) => {}
            _ => return false,
        }
    }
    true
}

/// The heartbeat: checks each bus, fails over when one stops answering and fails back once it
/// answers again. Ends when the last client using these transports is dropped.
async fn watch(fo: Weak<Failover>, transports: [Arc<dyn Transport>; 2]) {
    // A bus that answers again takes its traffic back only after answering for a while: its
    // consumers reconnect, and those of the other bus drain what was published there meanwhile.
    let mut healthy_since: [Option<Instant>; 2] = [None, None];
    loop {
        let Some(f) = fo.upgrade() else { return };
        let period = f.settings.heartbeat;
        let settle = f.settings.heartbeat_timeout * 2;
        for bus in BusId::ALL {
            let t = &transports[bus.index()];
            let sent = Instant::now();
            let healthy = match tokio::time::timeout(f.settings.heartbeat_timeout, t.health()).await
            {
                Ok(Health::Up) => true,
                Ok(Health::Down { .. }) => false,
                // No answer in time. A hung broker answers nothing; a busy one (a flood, a
                // starved machine) still answers writes and reads: not a reason to switch.
                // Only answers in the second half of the wait count: replies a broker wrote
                // just before it hung are read right after the heartbeat was sent.
                Err(_) => t.answered_since(sent + f.settings.heartbeat_timeout / 2) && f.is_up(bus),
            };
            if healthy {
                let since = *healthy_since[bus.index()].get_or_insert_with(Instant::now);
                if !f.is_up(bus)
                    && since.elapsed() >= settle
                    && drained(&f, &transports, bus, since).await
                {
                    fail_back(&f, &transports, bus).await;
                }
            } else {
                healthy_since[bus.index()] = None;
                if f.is_up(bus) && f.is_up(bus.other()) {
                    fail_over(&f, &transports, bus).await;
                }
            }
        }
        drop(f);
        // Between heartbeats, notice at once a failure the transport saw itself (a write that
        // lost its connection), without waiting for the next ping.
        let until = Instant::now() + period;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1).min(period)).await;
            let Some(f) = fo.upgrade() else { return };
            for bus in BusId::ALL {
                if transports[bus.index()].reported_down() && f.is_up(bus) && f.is_up(bus.other()) {
                    healthy_since[bus.index()] = None;
                    fail_over(&f, &transports, bus).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_core::{EventKind, Topic};

    fn envs(n: u64) -> Vec<Envelope> {
        (0..n)
            .map(|seq| {
                Envelope::builder(
                    EventKind::MarketData,
                    Topic::new("market_data.trade.X").unwrap(),
                    "hub",
                    "hub-1",
                )
                .seq(seq)
                .build()
            })
            .collect()
    }

    /// Messages pushed out by the count limit while younger than `window_ms` are counted;
    /// those already older than `window_ms` (no longer promised) are not.
    #[test]
    fn the_window_counts_what_its_count_limit_pushes_out_early() {
        let f = Failover::new(FailoverSettings {
            enabled: true,
            heartbeat: Duration::from_millis(10),
            heartbeat_timeout: Duration::from_millis(100),
            window: 10,
            window_age: Duration::from_millis(200),
        });
        let key = StreamKey::from("dualbus:md:market_data");
        assert!(f.record(BusId::MarketData, &key, envs(15)).is_none());
        assert_eq!(f.counters(BusId::MarketData).window_overflow, 5);
        assert_eq!(f.counters(BusId::Logic).window_overflow, 0);
        std::thread::sleep(Duration::from_millis(300));
        // The ten kept are past window_ms now: pushing them out loses no promise.
        f.record(BusId::MarketData, &key, envs(10));
        assert_eq!(f.counters(BusId::MarketData).window_overflow, 5);
    }
}
