//! Orders for the paper venue (`order_request.{SYMBOL}`) and its executions
//! (`trade_execution.{SYMBOL}`).

use crate::market::Side;
use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Order type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OrderType {
    /// Fill now at the touch.
    #[default]
    Market,
    /// Fill at the limit price or better.
    Limit,
}

/// The payload of an `order_request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRequest {
    /// The sender's id for the order (echoed in the execution).
    pub order_id: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity (positive).
    pub qty: f64,
    /// Market or limit.
    #[serde(default, rename = "type")]
    pub order_type: OrderType,
    /// Limit price (limit orders).
    #[serde(default)]
    pub limit_price: Option<f64>,
}

/// Filled or rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    /// Filled in full.
    Filled,
    /// Refused; see `reason`.
    Rejected,
}

/// The payload of a `trade_execution`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Execution {
    /// The order's id.
    pub order_id: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity filled (0 when rejected).
    pub qty: f64,
    /// Fill price (0 when rejected).
    pub price: f64,
    /// Filled or rejected.
    pub status: ExecStatus,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `taker` (filled on arrival) or `maker` (rested, then crossed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liquidity: Option<String>,
    /// Event time of the fill (the quote's), Unix ns; for a rejection, of the latest data.
    pub ts: u64,
}

impl Message for OrderRequest {
    fn kind() -> EventKind {
        EventKind::OrderRequest
    }

    const PRIORITY: Priority = Priority::High;

    fn topic(&self) -> String {
        format!("order_request.{}", self.symbol)
    }
}

impl Message for Execution {
    fn kind() -> EventKind {
        EventKind::TradeExecution
    }

    const PRIORITY: Priority = Priority::High;

    fn topic(&self) -> String {
        format!("trade_execution.{}", self.symbol)
    }
}
