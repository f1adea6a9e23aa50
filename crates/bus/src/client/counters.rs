//! What a client counts on each bus, with the transport's and the failover's own counts.

use super::DualBus;
use crate::config::BusId;
use crate::failover::FailoverCounters;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one bus, as seen by this client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BusCounters {
    /// Messages published.
    pub published: u64,
    /// Messages handed to handlers (first deliveries and redeliveries, not duplicates).
    pub delivered: u64,
    /// Messages acknowledged (handled, filtered out or duplicates).
    pub acknowledged: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Messages moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages dropped by a `drop_oldest` policy, or trimmed after they were read and before
    /// they were acknowledged.
    pub dropped: u64,
    /// Messages a stream trim removed before a reliable group read them (Redis).
    pub trimmed_unread: u64,
    /// Messages the broker refused to store (a Redis ACL, memory); their publish failed.
    pub refused: u64,
    /// Fast-mode messages skipped by consumers that fell behind.
    pub skipped: u64,
    /// Duplicates suppressed by (`src`, `inst`, `seq`).
    pub duplicates: u64,
    /// Handler failures.
    pub failed: u64,
    /// Handler panics (counted in `failed` too): each fails its message, its reader goes on.
    pub panicked: u64,
}

/// A counter on a cache line of its own: publishers write it while readers write the others.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Padded(pub(super) AtomicU64);

/// What a client counts on one bus; shared with its readers, which count what they read.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) published: Padded,
    pub(super) delivered: AtomicU64,
    pub(super) acknowledged: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) panicked: AtomicU64,
}

impl DualBus {
    /// This client's counters for one bus, with the transport's own counts.
    pub fn counters(&self, bus: BusId) -> BusCounters {
        let c = &self.inner.counters[bus.index()];
        let t = self.inner.transports[bus.index()].stats();
        BusCounters {
            published: c.published.0.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            acknowledged: c.acknowledged.load(Ordering::Relaxed),
            redelivered: t.redelivered,
            dead_lettered: t.dead_lettered,
            dropped: t.dropped,
            trimmed_unread: t.trimmed_unread,
            refused: t.refused,
            skipped: c.skipped.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
        }
    }

    /// Failover counters of a bus (shared by clients on the same transports).
    pub fn failover_counters(&self, bus: BusId) -> FailoverCounters {
        self.inner.failover.counters(bus)
    }
}
