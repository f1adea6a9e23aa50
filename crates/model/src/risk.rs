//! Risk alerts (`risk_alert.{SYMBOL}` or `risk_alert.book`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a `risk_alert` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskAction {
    /// An order was rejected by a pre-trade rule.
    RejectOrder,
    /// A flash crash alert tripped (or re-armed) the circuit breaker.
    CircuitBreakerTripped,
    /// The book's VaR crossed its limit from below.
    VarBreach,
}

/// The payload of a `risk_alert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RiskAlert {
    /// The rule: `circuit_breaker`, `drawdown_stop`, `toxicity_halt`, `stale_price`,
    /// `max_order_notional`, `max_position`, `gross_notional`, `order_rate` or `var_limit` from
    /// the Risk engine; other publishers may use their own names.
    pub rule: String,
    /// Instrument (`None` for the whole book).
    pub symbol: Option<String>,
    /// Data time, Unix ns.
    pub ts: u64,
    /// The value the rule measured.
    pub value: f64,
    /// The rule's limit.
    pub limit: f64,
    /// What happened.
    pub action: RiskAction,
    /// The rejected order's id.
    #[serde(default)]
    pub order_id: Option<String>,
    /// The rule, the values and the consequence in words.
    pub reason: String,
}

impl Message for RiskAlert {
    fn kind() -> EventKind {
        EventKind::RiskAlert
    }

    const PRIORITY: Priority = Priority::Critical;

    fn topic(&self) -> String {
        format!("risk_alert.{}", self.symbol.as_deref().unwrap_or("book"))
    }
}
