//! Failover between the buses (docs/architecture.md, "Failover between the buses").
//!
//! Each bus is watched: a publish that finds its broker unreachable marks the bus down at once,
//! and a heartbeat (`health()` with a short timeout) catches a hung broker and sees it recover.
//! While a bus is down its traffic is published to the other bus under its own stream keys
//! (`dualbus:md:market_data` on the Engine Logic server), where every subscription also reads.
//! A bounded window of recently published messages is re-sent on the surviving bus when a bus
//! goes down, since the broker may have lost them or consumers may not have read them yet;
//! consumers drop the duplicates by (`src`, `inst`, `seq`).

use crate::config::BusId;
use dualbus_core::transport::StreamKey;
use dualbus_core::Envelope;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Whether it is up now.
    pub up: bool,
}

struct Window {
    items: VecDeque<(StreamKey, Envelope, Instant)>,
}

pub(crate) struct Failover {
    pub settings: FailoverSettings,
    /// Written while a bus is being failed over (marked down and its window re-sent) or failed
    /// back (the other bus drained, then marked up); read by every publish redirected to the
    /// other bus, around choosing the bus and queueing. So re-sent messages go ahead of new
    /// ones, and no diverted message is queued behind the last drain check of a fail-back.
    pub switch: tokio::sync::RwLock<()>,
    /// Woken when a bus is marked down, so a publish stuck on a hung broker gives up at once.
    down_notify: [tokio::sync::Notify; 2],
    up: [AtomicBool; 2],
    down_since: [Mutex<Option<Instant>>; 2],
    failovers: [AtomicU64; 2],
    failbacks: [AtomicU64; 2],
    resent: [AtomicU64; 2],
    window: [Mutex<Window>; 2],
    /// Streams of each bus that received traffic on the other bus during its outage.
    diverted: [Mutex<std::collections::HashSet<StreamKey>>; 2],
}

impl Failover {
    pub(crate) fn new(settings: FailoverSettings) -> Failover {
        let w = || {
            Mutex::new(Window {
                items: VecDeque::new(),
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
            window: [w(), w()],
            diverted: Default::default(),
        }
    }

    pub(crate) fn is_up(&self, bus: BusId) -> bool {
        self.up[bus.index()].load(Ordering::SeqCst)
    }

    /// Where traffic for `bus` goes now: the bus itself unless it is down and the other is up.
    pub(crate) fn target(&self, bus: BusId) -> BusId {
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
    pub(crate) fn record(
        &self,
        bus: BusId,
        stream: &StreamKey,
        envs: Vec<Envelope>,
    ) -> Option<Vec<Envelope>> {
        let now = Instant::now();
        let mut w = self.window[bus.index()].lock();
        if !self.is_up(bus) {
            return Some(envs);
        }
        for e in envs {
            w.items.push_back((stream.clone(), e, now));
        }
        let cap = self.settings.window;
        while w.items.len() > cap {
            w.items.pop_front();
        }
        let age = self.settings.window_age;
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
    pub(crate) fn diverted(&self, bus: BusId, stream: &StreamKey) {
        let mut d = self.diverted[bus.index()].lock();
        if !d.contains(stream) {
            d.insert(stream.clone());
        }
    }

    /// The streams of `bus` that received traffic on the other bus.
    pub(crate) fn diverted_streams(&self, bus: BusId) -> Vec<StreamKey> {
        self.diverted[bus.index()].lock().iter().cloned().collect()
    }

    /// Marks `bus` down; returns the messages to re-send when this is a new outage.
    pub(crate) fn mark_down(&self, bus: BusId) -> Option<Vec<(StreamKey, Envelope)>> {
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
    pub(crate) async fn went_down(&self, bus: BusId) {
        let notified = self.down_notify[bus.index()].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_up(bus) {
            return;
        }
        notified.await;
    }

    /// Marks `bus` up; returns how long it was down when this ends an outage.
    pub(crate) fn mark_up(&self, bus: BusId) -> Option<Duration> {
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
            up: self.is_up(bus),
        }
    }
}
