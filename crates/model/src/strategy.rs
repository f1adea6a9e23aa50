//! Strategy signals (`strategy_signal.{SYMBOL}`) and the strategy's parameters (part of a backtest
//! request).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Strategy engine parameters (the same for every symbol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyParams {
    /// Weight of the ML edge `2 prob_up - 1`.
    pub w_ml: f64,
    /// Weight of `composite / 3`.
    pub w_factor: f64,
    /// Target notional at a score of 1 (or -1), per symbol, quote currency.
    pub max_notional: f64,
    /// A signal is published when the target moves by more than this notional (or to zero).
    pub min_change_notional: f64,
    /// Seconds of data time an alert zeroes the target after its `ts`.
    pub alert_secs: u64,
    /// The strategy's name in its signals (`strategy`).
    pub strategy: String,
}

impl Default for StrategyParams {
    fn default() -> Self {
        StrategyParams {
            w_ml: 1.0,
            w_factor: 0.5,
            max_notional: 10_000.0,
            min_change_notional: 500.0,
            alert_secs: 600,
            strategy: "ml_factor".to_string(),
        }
    }
}

impl StrategyParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v) in [("w_ml", self.w_ml), ("w_factor", self.w_factor)] {
            if !v.is_finite() {
                out.push(format!("{name} {v} must be a finite number"));
            }
        }
        if !(self.max_notional.is_finite() && self.max_notional > 0.0) {
            out.push(format!(
                "max_notional {} must be a positive number",
                self.max_notional
            ));
        }
        if !(self.min_change_notional.is_finite() && self.min_change_notional >= 0.0) {
            out.push(format!(
                "min_change_notional {} must be a number at least 0",
                self.min_change_notional
            ));
        }
        if self.alert_secs == 0 {
            out.push("alert_secs must be at least 1 (0 would ignore every alert)".to_string());
        }
        if self.strategy.is_empty() {
            out.push("strategy must name the strategy".to_string());
        }
        out
    }
}

/// A strategy's target position for a symbol (the payload of `strategy_signal`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StrategySignal {
    /// Instrument.
    pub symbol: String,
    /// The latest data time seen for the symbol when the signal was made, Unix ns.
    pub ts: u64,
    /// The strategy's name (`ml_factor` by default).
    pub strategy: String,
    /// Target position, base quantity (signed: negative is short).
    pub target_position: f64,
    /// `target_position x price`.
    pub target_notional: f64,
    /// The mid used to turn the notional into a quantity.
    pub price: f64,
    /// The score before clipping.
    pub score: f64,
    /// The ML probability used.
    pub prob_up: f64,
    /// The factor composite used (`None`: no factor score yet, 0 used).
    pub composite: Option<f64>,
    /// The alert kind that zeroed the target (`flash_crash_alert` or `toxicity_alert`).
    pub halted: Option<String>,
    /// How the target was made and why it was published, in words.
    pub reason: String,
}

impl Message for StrategySignal {
    fn kind() -> EventKind {
        EventKind::StrategySignal
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("strategy_signal.{}", self.symbol)
    }
}
