//! Per-bus traffic and delivery latency of the engines of one process.
//!
//! [`BusMetrics`] is shared by the engines of a run (`HostOptions::metrics`): each publish is
//! counted on the bus its kind routes to, and each delivery to an engine records its latency,
//! from the envelope's `ts` (stamped by the publishing client, Unix ns) to the moment the host
//! hands the message to the engine. Across processes or hosts the latency includes their clock
//! difference.

use dualbus_bus::BusId;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Latencies up to an hour are recorded (microseconds, 3 significant digits).
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds")
}

#[derive(Debug)]
struct Lane {
    published: AtomicU64,
    delivered: AtomicU64,
    /// Since the last [`BusMetrics::take_window`].
    window: Mutex<Histogram<u64>>,
    /// Since the start.
    total: Mutex<Histogram<u64>>,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            window: Mutex::new(histogram()),
            total: Mutex::new(histogram()),
        }
    }
}

/// Traffic and latency per bus.
#[derive(Debug, Default)]
pub struct BusMetrics {
    lanes: [Lane; 2],
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

impl BusMetrics {
    /// Counts `n` messages published on `bus`.
    pub fn published(&self, bus: BusId, n: u64) {
        self.lanes[bus.index()]
            .published
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Records a delivery on `bus` of a message stamped at `ts` (Unix ns).
    pub fn delivered(&self, bus: BusId, ts: u64) {
        let lane = &self.lanes[bus.index()];
        lane.delivered.fetch_add(1, Ordering::Relaxed);
        let us = (dualbus_core::now_unix_nanos().saturating_sub(ts) / 1_000).clamp(1, MAX_US);
        lane.window.lock().record(us).expect("clamped into range");
        lane.total.lock().record(us).expect("clamped into range");
    }

    /// Figures since the start, per bus (MarketData, Engine Logic).
    pub fn totals(&self) -> [BusFigures; 2] {
        [BusId::MarketData, BusId::Logic].map(|b| {
            let l = &self.lanes[b.index()];
            figures(
                &l.total.lock(),
                l.published.load(Ordering::Relaxed),
                l.delivered.load(Ordering::Relaxed),
            )
        })
    }

    /// Latency figures since the previous call (counts are totals), and a fresh window.
    pub fn take_window(&self) -> [BusFigures; 2] {
        [BusId::MarketData, BusId::Logic].map(|b| {
            let l = &self.lanes[b.index()];
            let h = std::mem::replace(&mut *l.window.lock(), histogram());
            figures(
                &h,
                l.published.load(Ordering::Relaxed),
                l.delivered.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
