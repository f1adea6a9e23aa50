//! Performance and traffic analytics (`analytics_result.performance`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The performance part of an `analytics_result` (data-determined).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Performance {
    /// Event time of the latest data, Unix ns.
    pub ts: u64,
    /// Data time covered, seconds (first to latest portfolio update).
    pub period_s: f64,
    /// Latest equity.
    pub equity: Option<f64>,
    /// Equity minus the first equity seen.
    pub pnl: f64,
    /// `pnl` over the first equity.
    pub return_pct: f64,
    /// Sharpe ratio of daily equity returns annualized with `sqrt(365)`, when the data covers
    /// at least two days; `None` otherwise (see `sharpe_per_period`).
    pub sharpe: Option<f64>,
    /// The Sharpe ratio of the returns actually used, per period, with the period named
    /// (`1d` from two days of data on, `1m` below); `None` with fewer than 2 returns.
    #[serde(default)]
    pub sharpe_per_period: Option<SharpeRatio>,
    /// Largest fall below the running peak, fraction of the peak.
    pub max_drawdown: f64,
    /// Longest time under water, seconds of data time: from the last update at a peak to the
    /// first update back at or above it (or to the latest update, if not recovered).
    #[serde(default)]
    pub max_drawdown_duration_s: f64,
    /// Traded notional over the first equity.
    pub turnover: f64,
    /// Fills.
    pub fills: u64,
    /// Winning share of the position changes that realized P&L, before fees.
    pub hit_rate: Option<f64>,
    /// Winning share of the same changes after each one's own fee (`realized_pnl - fee > 0`).
    #[serde(default)]
    pub hit_rate_after_fees: Option<f64>,
    /// Realized plus unrealized P&L per symbol, before fees.
    pub pnl_by_symbol: BTreeMap<String, f64>,
    /// The same minus the fees paid on the symbol's fills.
    #[serde(default)]
    pub pnl_by_symbol_after_fees: BTreeMap<String, f64>,
}

/// A Sharpe ratio of returns of one period, not annualized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SharpeRatio {
    /// The period of the returns: `1m` (one minute) or `1d` (one UTC day).
    pub period: String,
    /// Mean over sample standard deviation of the returns.
    pub value: f64,
    /// Returns it was computed from.
    pub returns: u64,
}

/// Traffic and latency of one bus, as the Analytics engine sees them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusTraffic {
    /// Messages the engines published on this bus (from their heartbeats).
    pub published: u64,
    /// Messages this engine received from this bus.
    pub received: u64,
    /// Delivery latency to this engine, microseconds.
    pub latency_p50_us: Option<u64>,
    /// 99th percentile.
    pub latency_p99_us: Option<u64>,
    /// Largest.
    pub latency_max_us: Option<u64>,
}

/// The payload of an `analytics_result`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AnalyticsResult {
    /// `performance`.
    pub report: String,
    /// `periodic` or `final`.
    pub period: String,
    /// Data-determined figures.
    #[serde(flatten)]
    pub performance: Performance,
    /// Machine-dependent figures: per bus (`market_data`, `engine_logic`).
    pub traffic: BTreeMap<String, BusTraffic>,
}

impl Message for AnalyticsResult {
    fn kind() -> EventKind {
        EventKind::AnalyticsResult
    }

    const PRIORITY: Priority = Priority::Low;

    fn topic(&self) -> String {
        "analytics_result.performance".to_string()
    }
}
