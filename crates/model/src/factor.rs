//! Cross-sectional factor scores (`factor_calculation.universe`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The method in [`FactorCalculation::method`].
pub const METHOD: &str = "cross_sectional_zscore";

/// One symbol's scores in a cross-section.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FactorScores {
    /// z-score of the 20-bar log return.
    pub momentum: f64,
    /// z-score of minus the 1-bar log return.
    pub reversal: f64,
    /// z-score of minus the 20-bar realized volatility.
    pub low_volatility: f64,
    /// z-score of the volume's z-score against the symbol's previous 20 bars.
    pub liquidity: f64,
    /// Mean of the four z-scores.
    pub composite: f64,
}

/// The cross-section of one bar (the payload of `factor_calculation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FactorCalculation {
    /// Bar start, Unix ns.
    pub ts: u64,
    /// Bar length in seconds.
    pub bar_secs: u32,
    /// How the scores were made: `cross_sectional_zscore`.
    pub method: String,
    /// Scores by symbol.
    pub scores: BTreeMap<String, FactorScores>,
}

impl Message for FactorCalculation {
    fn kind() -> EventKind {
        EventKind::FactorCalculation
    }

    const PRIORITY: Priority = Priority::Low;

    fn topic(&self) -> String {
        "factor_calculation.universe".to_string()
    }
}
