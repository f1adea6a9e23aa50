//! Requests to the MarketData hub (`hub_request.snapshot.{SYMBOL}`,
//! `hub_request.history.{SYMBOL}`) and its replies.

use crate::market::{Bar, Quote, Trade};
use dualbus_core::EventKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind of requests to the hub (`hub_request.snapshot.{SYMBOL}`,
/// `hub_request.history.{SYMBOL}`).
pub const HUB_REQUEST: &str = "hub_request";

/// The [`EventKind`] of hub requests.
pub fn hub_request_kind() -> EventKind {
    EventKind::Custom(HUB_REQUEST.into())
}

/// The body of a snapshot request: an empty object (the symbol is the topic's last segment).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotRequest {}

/// The latest market data of one symbol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    /// Instrument.
    pub symbol: String,
    /// Latest trade.
    pub trade: Option<Trade>,
    /// Latest quote.
    pub quote: Option<Quote>,
    /// Latest closed bar.
    pub bar: Option<Bar>,
}

/// A history request's body (the symbol is the topic's last segment).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryQuery {
    /// Bar length in seconds.
    #[serde(default = "default_bar_secs")]
    pub bar_secs: u32,
    /// Most bars (the latest).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Bars ending at or before this Unix ns time; `None` for the latest.
    #[serde(default)]
    pub end_ts: Option<u64>,
}

fn default_bar_secs() -> u32 {
    60
}

fn default_limit() -> u32 {
    500
}

/// The hub's answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HubReply {
    /// A snapshot.
    Snapshot(Snapshot),
    /// Bars, oldest first.
    History {
        /// Instrument.
        symbol: String,
        /// Bar length.
        bar_secs: u32,
        /// The bars.
        bars: Vec<Bar>,
    },
    /// The request failed.
    Error {
        /// Why.
        reason: String,
    },
}
