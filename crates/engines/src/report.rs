//! What `dualbus run` and `dualbus backtest` write in their reports about the buses: what an
//! observer subscribed to the system's outputs sees (fills, equity, alerts), and each bus's
//! traffic and latency figures.

use crate::metrics::BusFigures;
use dualbus_bus::BusCounters;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What the run's own observer sees on the buses: fills, equity, alerts.
#[derive(Default)]
pub struct Observed {
    pub fills: u64,
    pub rejected_orders: u64,
    pub equity: Option<f64>,
    pub portfolio: Option<Value>,
    pub analytics: Option<Value>,
    pub toxicity: u64,
    pub flash: BTreeMap<String, u64>,
    pub risk: BTreeMap<String, u64>,
    pub margin_calls: u64,
    pub breaker: bool,
}

impl Observed {
    /// Counts one message of `kind` (its payload `v`).
    pub fn on(&mut self, kind: &str, v: &Value) {
        let rule = |v: &Value| v["rule"].as_str().unwrap_or("unknown").to_string();
        match kind {
            "trade_execution" => {
                if v["status"] == "filled" {
                    self.fills += 1;
                } else {
                    self.rejected_orders += 1;
                }
            }
            "portfolio_update" => {
                self.equity = v["equity"].as_f64();
                self.portfolio = Some(v.clone());
            }
            "toxicity_alert" => self.toxicity += 1,
            "flash_crash_alert" => *self.flash.entry(rule(v)).or_default() += 1,
            "risk_alert" => {
                if v["action"] == "circuit_breaker_tripped" {
                    self.breaker = true;
                }
                *self.risk.entry(rule(v)).or_default() += 1;
            }
            "margin_call" => self.margin_calls += 1,
            "analytics_result" if v["report"] == "performance" => {
                self.analytics = Some(v.clone());
            }
            _ => {}
        }
    }

    /// The `alerts` object of a report.
    pub fn alerts_json(&self) -> Value {
        json!({
            "toxicity_alert": self.toxicity,
            "flash_crash_alert": self.flash,
            "risk_alert": self.risk,
            "margin_call": self.margin_calls,
            "circuit_breaker_tripped": self.breaker,
        })
    }
}

/// The topics the observer subscribes to: what [`Observed::on`] counts.
pub const OBSERVED: [&str; 7] = [
    "analytics_result.>",
    "trade_execution.>",
    "portfolio_update.>",
    "toxicity_alert.>",
    "flash_crash_alert.>",
    "risk_alert.>",
    "margin_call.>",
];

/// A bus's figures as the report writes them, with the rates over `secs` seconds, and what the
/// process's transport for the bus counted (`c`, from the client the engines were made from):
/// dead letters, drops, entries trimmed before a group read them, redeliveries, refusals.
pub fn bus_json(f: &BusFigures, secs: f64, c: &BusCounters) -> Value {
    let mut v = serde_json::to_value(f).expect("plain figures");
    v["delivered_per_s"] = json!(f.delivered as f64 / secs.max(1e-9));
    v["published_per_s"] = json!(f.published as f64 / secs.max(1e-9));
    v["transport"] = json!({
        "dead_lettered": c.dead_lettered,
        "dropped": c.dropped,
        "trimmed_unread": c.trimmed_unread,
        "redelivered": c.redelivered,
        "refused": c.refused,
    });
    v
}
