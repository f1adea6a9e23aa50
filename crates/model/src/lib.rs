//! The messages of the dualbus trading system.
//!
//! Every payload that crosses a bus lives here, apart from the engines that publish and consume
//! it: an engine depends on this crate, never on another engine, and a process in another
//! language follows the same contracts through the JSON Schemas generated from these types
//! (`docs/schemas/`, `dualbus schema KIND`).
//!
//! Each published payload implements [`Message`]: its kind, its topic and its priority, so an
//! engine publishes it with `ctx.send(&msg)` and reads it with `env.decode::<T>()`. Request and
//! reply bodies (hub and backtest requests) are listed in [`CONTRACTS`] with the others.
//!
//! # Layout
//! * [`market`]: trades, quotes, bars and book snapshots (`market_data`), instruments, the
//!   provider's market events.
//! * [`features`]: feature vectors (`feature_vector`) and the feature names.
//! * [`ml`]: predictions (`ml_prediction`) and the model's parameters.
//! * [`factor`]: factor scores (`factor_calculation`).
//! * [`vpin`]: VPIN buckets (`vpin_calculation`), toxicity and flash crash alerts.
//! * [`strategy`]: target positions (`strategy_signal`) and the strategy's parameters.
//! * [`risk`]: risk alerts (`risk_alert`).
//! * [`orders`]: orders (`order_request`) and executions (`trade_execution`).
//! * [`portfolio`]: portfolio updates (`portfolio_update`) and position changes
//!   (`position_change`).
//! * [`collateral`]: margin calls (`margin_call`).
//! * [`analytics`]: performance and traffic analytics (`analytics_result.performance`).
//! * [`backtest`]: backtest requests, replies and results (`analytics_result.backtest`).
//! * [`hub`]: requests to the MarketData hub and its replies.
//! * [`health`]: engine heartbeats (`engine_health`).
//! * [`catalog`]: every contract at once (kind, topic, publisher, consumers, schema).

#![forbid(unsafe_code)]

pub mod analytics;
pub mod backtest;
pub mod catalog;
pub mod collateral;
pub mod factor;
pub mod features;
pub mod health;
pub mod hub;
pub mod market;
pub mod ml;
pub mod orders;
pub mod portfolio;
pub mod risk;
pub mod strategy;
pub mod vpin;

pub use catalog::{Contract, CONTRACTS};

use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload published on a bus: its kind, its topic and the priority it travels at.
///
/// ```
/// use dualbus_model::{Message, risk::{RiskAction, RiskAlert}};
/// let alert = RiskAlert {
///     rule: "max_drawdown".into(),
///     symbol: None,
///     ts: 0,
///     value: 0.12,
///     limit: 0.1,
///     action: RiskAction::CircuitBreakerTripped,
///     order_id: None,
///     reason: "drawdown 12% over 10%".into(),
/// };
/// assert_eq!(RiskAlert::kind().as_str(), "risk_alert");
/// assert_eq!(alert.topic(), "risk_alert.book");
/// ```
pub trait Message: Serialize + DeserializeOwned + JsonSchema {
    /// The kind every message of this type is published as.
    fn kind() -> EventKind;

    /// The priority it is published at (critical kinds take the priority lane whatever this
    /// says).
    const PRIORITY: Priority = Priority::Normal;

    /// The topic this message is published on (`risk_alert.BTCUSDT`).
    fn topic(&self) -> String;
}
