//! Per-symbol feature vectors (`feature_vector.{SYMBOL}`) and the names of their features.

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `ln(c_n / c_(n-1))`.
pub const RET_1: &str = "ret_1";

/// `ln(c_n / c_(n-5))`.
pub const RET_5: &str = "ret_5";

/// `ln(c_n / c_(n-15))`.
pub const RET_15: &str = "ret_15";

/// Sample standard deviation of the last 20 one-bar log returns.
pub const REALIZED_VOL_20: &str = "realized_vol_20";

/// RSI over 14 bars with Wilder smoothing.
pub const RSI_14: &str = "rsi_14";

/// MACD line (EMA12 - EMA26).
pub const MACD: &str = "macd";

/// MACD signal line (EMA9 of the line).
pub const MACD_SIGNAL: &str = "macd_signal";

/// MACD histogram (line - signal).
pub const MACD_HIST: &str = "macd_hist";

/// Bollinger %b over 20 closes, 2 standard deviations.
pub const BOLLINGER_B: &str = "bollinger_pct_b";

/// Mean quoted spread of the bar, in basis points of the mid.
pub const SPREAD_BPS: &str = "spread_bps";

/// Buy minus sell volume over the bar's volume.
pub const ORDER_IMBALANCE: &str = "order_imbalance";

/// Close over the 20-bar VWAP, minus 1.
pub const VWAP_DEVIATION: &str = "vwap_deviation";

/// Every feature name the Features engine computes, in the order of its documentation.
pub const ALL: [&str; 12] = [
    RET_1,
    RET_5,
    RET_15,
    REALIZED_VOL_20,
    RSI_14,
    MACD,
    MACD_SIGNAL,
    MACD_HIST,
    BOLLINGER_B,
    SPREAD_BPS,
    ORDER_IMBALANCE,
    VWAP_DEVIATION,
];

/// The features of one symbol at one bar close (the payload of `feature_vector`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureVector {
    /// Instrument.
    pub symbol: String,
    /// Start of the bar, Unix ns.
    pub ts: u64,
    /// Bar length in seconds.
    pub bar_secs: u32,
    /// The bar's close.
    pub close: f64,
    /// The bar's volume.
    pub volume: f64,
    /// The features whose window is full, by name (`ret_1`, `ret_5`, `ret_15`,
    /// `realized_vol_20`, `rsi_14`, `macd`, `macd_signal`, `macd_hist`, `bollinger_pct_b`,
    /// `spread_bps`, `order_imbalance`, `vwap_deviation`).
    pub features: BTreeMap<String, f64>,
}

impl Message for FeatureVector {
    fn kind() -> EventKind {
        EventKind::FeatureVector
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("feature_vector.{}", self.symbol)
    }
}
