//! Margin calls (`margin_call.{ACCOUNT}`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An unbounded utilization (`f64::INFINITY`) is `null` on the wire, and `null` reads back as
/// `f64::INFINITY`.
pub mod unbounded_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `null` for an unbounded (non-finite) value.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_some(v)
        } else {
            s.serialize_none()
        }
    }

    /// Reads `null` as `f64::INFINITY`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// The `action` of every margin call.
pub const REDUCE_POSITIONS: &str = "reduce_positions";

/// The margin of one position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarginPosition {
    /// Instrument.
    pub symbol: String,
    /// Signed notional `qty x mark` (negative for a short).
    pub notional: f64,
    /// `base_rate + vol_multiplier x vol`.
    pub rate: f64,
    /// `|notional| x rate`.
    pub margin: f64,
}

/// The payload of a `margin_call`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarginCall {
    /// The account.
    pub account: String,
    /// Timestamp of the `portfolio_update` that crossed, Unix ns.
    pub ts: u64,
    /// `margin / equity`; `null` in JSON (`f64::INFINITY` in Rust) when equity is not positive.
    #[serde(with = "unbounded_as_null")]
    #[schemars(with = "Option<f64>")]
    pub margin_utilization: f64,
    /// The threshold it reached.
    pub threshold: f64,
    /// The account's equity.
    pub equity: f64,
    /// Margin of all positions.
    pub margin: f64,
    /// The open positions and their margins.
    pub positions: Vec<MarginPosition>,
    /// What to do: always `reduce_positions`.
    pub action: String,
    /// The numbers in words.
    pub reason: String,
}

impl Message for MarginCall {
    fn kind() -> EventKind {
        EventKind::MarginCall
    }

    const PRIORITY: Priority = Priority::Critical;

    fn topic(&self) -> String {
        format!("margin_call.{}", self.account)
    }
}
