//! Model predictions (`ml_prediction.{SYMBOL}`) and the ML model's parameters (part of a backtest
//! request).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The model's name in [`MlPrediction::model`].
pub const MODEL_NAME: &str = "logistic_sgd_l2";

/// The features used by default (`spread_bps` is available but not used by default).
pub const DEFAULT_FEATURES: [&str; 9] = [
    "ret_1",
    "ret_5",
    "ret_15",
    "realized_vol_20",
    "rsi_14",
    "macd_hist",
    "bollinger_pct_b",
    "order_imbalance",
    "vwap_deviation",
];

/// ML engine parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MlParams {
    /// Names of the features the model uses, in order (by default `ret_1`, `ret_5`, `ret_15`,
    /// `realized_vol_20`, `rsi_14`, `macd_hist`, `bollinger_pct_b`, `order_imbalance`,
    /// `vwap_deviation`).
    pub features: Vec<String>,
    /// SGD step size.
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
    /// Scored predictions in the rolling accuracy (`accuracy_500` of a prediction).
    pub accuracy_window: usize,
}

impl Default for MlParams {
    fn default() -> Self {
        MlParams {
            features: DEFAULT_FEATURES.iter().map(|s| s.to_string()).collect(),
            learning_rate: 0.05,
            l2: 1e-4,
            accuracy_window: 500,
        }
    }
}

impl MlParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.features.is_empty() {
            out.push("features must name at least one feature".to_string());
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.features {
            if f.is_empty() {
                out.push("features contains an empty name".to_string());
            } else if !seen.insert(f.as_str()) {
                out.push(format!("features names {f:?} twice"));
            }
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            out.push(format!(
                "learning_rate {} must be a positive number",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            out.push(format!("l2 {} must be a number at least 0", self.l2));
        }
        if self.accuracy_window == 0 {
            out.push("accuracy_window must be at least 1".to_string());
        }
        out
    }
}

/// One prediction (the payload of `ml_prediction`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MlPrediction {
    /// Instrument.
    pub symbol: String,
    /// The `ts` (bar start, Unix ns) of the feature vector the prediction was made from.
    pub ts: u64,
    /// Horizon in seconds: one bar (the vector's `bar_secs`).
    pub horizon_s: u32,
    /// Probability that the next bar's return is positive.
    pub prob_up: f64,
    /// `(2 prob_up - 1) x` the mean absolute one-bar log return seen so far.
    pub expected_return: f64,
    /// The model: `logistic_sgd_l2`.
    pub model: String,
    /// SGD steps taken so far for this symbol.
    pub model_version: u64,
    /// Share of correct predictions among the last `accuracy_window` (500 by default) scored
    /// ones; `None` before the first is scored.
    pub accuracy_500: Option<f64>,
    /// Predictions scored so far (ties excluded).
    pub scored: u64,
}

impl Message for MlPrediction {
    fn kind() -> EventKind {
        EventKind::MlPrediction
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("ml_prediction.{}", self.symbol)
    }
}
