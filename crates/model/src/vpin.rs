//! Order-flow toxicity: VPIN buckets (`vpin_calculation.{SYMBOL}`), toxicity alerts
//! (`toxicity_alert.{SYMBOL}`) and flash crash alerts (`flash_crash_alert.{SYMBOL}`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One completed bucket with its VPIN (the payload of `vpin_calculation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VpinBucket {
    /// Instrument.
    pub symbol: String,
    /// Bucket index, from 1.
    pub bucket: u64,
    /// VPIN over the last `window` buckets.
    pub vpin: f64,
    /// The bucket's buy volume.
    pub buy_volume: f64,
    /// The bucket's sell volume.
    pub sell_volume: f64,
    /// Unix ns of the last trade of the bar that completed the bucket.
    pub ts: u64,
    /// The VPIN's percentile among the symbol's latest VPIN values (a rolling window of
    /// `percentile_window` values, 10,000 by default, itself included).
    pub percentile: f64,
    /// Whether this value crossed the alert threshold from below.
    pub toxic: bool,
}

/// The payload of a `toxicity_alert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToxicityAlert {
    /// Instrument.
    pub symbol: String,
    /// The bucket whose VPIN crossed the threshold.
    pub bucket: u64,
    /// That VPIN.
    pub vpin: f64,
    /// Its percentile among the symbol's latest VPIN values (a rolling window of
    /// `percentile_window` values, 10,000 by default, itself included).
    pub percentile: f64,
    /// The threshold it crossed from below.
    pub threshold: f64,
    /// Unix ns of the last trade of the bar that completed the bucket.
    pub ts: u64,
    /// The rule, in words.
    pub reason: String,
}

/// The rule behind a flash crash alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CrashRule {
    /// Extreme VPIN and a price fall of several standard deviations.
    VpinPriceDrop,
    /// A spread blow-out with high VPIN.
    SpreadWidening,
}

impl CrashRule {
    /// The rule's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CrashRule::VpinPriceDrop => "vpin_price_drop",
            CrashRule::SpreadWidening => "spread_widening",
        }
    }
}

/// The payload of a `flash_crash_alert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FlashCrashAlert {
    /// Instrument.
    pub symbol: String,
    /// Event time of the data that completed the rule, Unix ns.
    pub ts: u64,
    /// The rule that held.
    pub rule: CrashRule,
    /// The latest VPIN.
    pub vpin: f64,
    /// Its percentile among the symbol's latest VPIN values (the VPIN engine's rolling window).
    pub vpin_percentile: f64,
    /// The latest trade price.
    pub price: f64,
    /// The close `drop_bars` bars back (`None` before there is one).
    pub reference_price: Option<f64>,
    /// The move from the reference in standard deviations of a `drop_bars`-bar move.
    pub move_sigmas: Option<f64>,
    /// The latest quoted spread, basis points.
    pub spread_bps: Option<f64>,
    /// The median bar spread it is compared with, basis points.
    pub spread_median_bps: Option<f64>,
    /// The rule and its values in words.
    pub reason: String,
}

impl Message for VpinBucket {
    fn kind() -> EventKind {
        EventKind::VpinCalculation
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("vpin_calculation.{}", self.symbol)
    }
}

impl Message for ToxicityAlert {
    fn kind() -> EventKind {
        EventKind::ToxicityAlert
    }

    const PRIORITY: Priority = Priority::High;

    fn topic(&self) -> String {
        format!("toxicity_alert.{}", self.symbol)
    }
}

impl Message for FlashCrashAlert {
    fn kind() -> EventKind {
        EventKind::FlashCrashAlert
    }

    const PRIORITY: Priority = Priority::Critical;

    fn topic(&self) -> String {
        format!("flash_crash_alert.{}", self.symbol)
    }
}
