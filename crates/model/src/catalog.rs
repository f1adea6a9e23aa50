//! Every contract at once: each payload that crosses a bus with its kind, topic pattern, who
//! publishes it, who consumes it and its JSON Schema. `docs/schemas/{name}.json` holds each
//! schema (a test checks them against the types) and `dualbus schema NAME` prints one.

use schemars::{schema_for, Schema};

/// What a payload is to the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Published to every group that subscribes to its topic.
    Published,
    /// The body of a request (answered by one replier).
    Request,
    /// The body of a reply (sent to the requester's inbox).
    Reply,
}

impl Role {
    /// `published`, `request` or `reply`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Published => "published",
            Role::Request => "request",
            Role::Reply => "reply",
        }
    }
}

/// One payload's contract.
#[derive(Clone, Copy, Debug)]
pub struct Contract {
    /// The schema's name: `docs/schemas/{name}.json`, the argument of `dualbus schema`.
    pub name: &'static str,
    /// The event kind it travels as.
    pub kind: &'static str,
    /// Its topic pattern (`{SYMBOL}` is an instrument, `{ACCOUNT}` an account name).
    pub topic: &'static str,
    /// Published, request or reply.
    pub role: Role,
    /// The Rust type (`dualbus_model::risk::RiskAlert`).
    pub type_name: &'static str,
    /// Who publishes it.
    pub publisher: &'static str,
    /// Who consumes it (the built-in engines; any other engine may subscribe).
    pub consumers: &'static str,
    /// Its JSON Schema, generated from the type.
    pub schema: fn() -> Schema,
    /// Decodes a payload (as JSON) into the type and encodes it back: what a conforming payload
    /// reads as, or why it does not decode.
    pub check: fn(&serde_json::Value) -> Result<serde_json::Value, String>,
}

impl Contract {
    /// The schema as pretty JSON with a trailing newline (the content of its file in
    /// `docs/schemas/`).
    pub fn schema_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&(self.schema)()).expect("a schema serializes");
        s.push('\n');
        s
    }
}

macro_rules! contract {
    ($name:literal, $kind:literal, $topic:literal, $role:ident, $ty:ty, $publisher:literal, $consumers:literal) => {
        Contract {
            name: $name,
            kind: $kind,
            topic: $topic,
            role: Role::$role,
            type_name: concat!("dualbus_model::", stringify!($ty)),
            publisher: $publisher,
            consumers: $consumers,
            schema: || schema_for!($ty),
            check: |v| {
                let t: $ty = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
                serde_json::to_value(&t).map_err(|e| e.to_string())
            },
        }
    };
}

/// Every payload that crosses a bus, MarketData bus first, then in the order of a trade's path
/// through the engines.
pub const CONTRACTS: &[Contract] = &[
    contract!(
        "market_data.trade",
        "market_data",
        "market_data.trade.{SYMBOL}",
        Published,
        market::Trade,
        "marketdata hub",
        "features, vpin, enhanced_vpin"
    ),
    contract!(
        "market_data.quote",
        "market_data",
        "market_data.quote.{SYMBOL}",
        Published,
        market::Quote,
        "marketdata hub",
        "features, enhanced_vpin, strategy, risk, portfolio, websocket"
    ),
    contract!(
        "market_data.bar",
        "market_data",
        "market_data.bar.{SYMBOL}",
        Published,
        market::Bar,
        "marketdata hub",
        "features"
    ),
    contract!(
        "market_data.book",
        "market_data",
        "market_data.book.{SYMBOL}",
        Published,
        market::BookSnapshot,
        "marketdata hub",
        "none built in"
    ),
    contract!(
        "hub_request.snapshot",
        "hub_request",
        "hub_request.snapshot.{SYMBOL}",
        Request,
        hub::SnapshotRequest,
        "any engine (HubClient::snapshot)",
        "marketdata hub"
    ),
    contract!(
        "hub_request.history",
        "hub_request",
        "hub_request.history.{SYMBOL}",
        Request,
        hub::HistoryQuery,
        "backtesting, any engine (HubClient::history)",
        "marketdata hub"
    ),
    contract!(
        "hub_reply",
        "hub_request",
        "the requester's inbox",
        Reply,
        hub::HubReply,
        "marketdata hub",
        "the requester"
    ),
    contract!(
        "feature_vector",
        "feature_vector",
        "feature_vector.{SYMBOL}",
        Published,
        features::FeatureVector,
        "features",
        "ml, factor, collateral, backtesting"
    ),
    contract!(
        "ml_prediction",
        "ml_prediction",
        "ml_prediction.{SYMBOL}",
        Published,
        ml::MlPrediction,
        "ml",
        "strategy"
    ),
    contract!(
        "factor_calculation",
        "factor_calculation",
        "factor_calculation.universe",
        Published,
        factor::FactorCalculation,
        "factor",
        "strategy"
    ),
    contract!(
        "vpin_calculation",
        "vpin_calculation",
        "vpin_calculation.{SYMBOL}",
        Published,
        vpin::VpinBucket,
        "vpin",
        "enhanced_vpin"
    ),
    contract!(
        "toxicity_alert",
        "toxicity_alert",
        "toxicity_alert.{SYMBOL}",
        Published,
        vpin::ToxicityAlert,
        "vpin",
        "strategy, risk, websocket"
    ),
    contract!(
        "flash_crash_alert",
        "flash_crash_alert",
        "flash_crash_alert.{SYMBOL}",
        Published,
        vpin::FlashCrashAlert,
        "enhanced_vpin",
        "strategy, risk, websocket"
    ),
    contract!(
        "strategy_signal",
        "strategy_signal",
        "strategy_signal.{SYMBOL}",
        Published,
        strategy::StrategySignal,
        "strategy",
        "risk, websocket"
    ),
    contract!(
        "order_request",
        "order_request",
        "order_request.{SYMBOL}",
        Published,
        orders::OrderRequest,
        "risk",
        "marketdata hub (paper venue)"
    ),
    contract!(
        "risk_alert",
        "risk_alert",
        "risk_alert.{SYMBOL} or risk_alert.book",
        Published,
        risk::RiskAlert,
        "risk",
        "websocket"
    ),
    contract!(
        "trade_execution",
        "trade_execution",
        "trade_execution.{SYMBOL}",
        Published,
        orders::Execution,
        "marketdata hub (paper venue)",
        "portfolio, risk, analytics"
    ),
    contract!(
        "portfolio_update",
        "portfolio_update",
        "portfolio_update.{ACCOUNT}",
        Published,
        portfolio::PortfolioUpdate,
        "portfolio",
        "risk, collateral, analytics, websocket"
    ),
    contract!(
        "position_change",
        "position_change",
        "position_change.{SYMBOL}",
        Published,
        portfolio::PositionChange,
        "portfolio",
        "analytics, websocket"
    ),
    contract!(
        "margin_call",
        "margin_call",
        "margin_call.{ACCOUNT}",
        Published,
        collateral::MarginCall,
        "collateral",
        "websocket"
    ),
    contract!(
        "analytics_result.performance",
        "analytics_result",
        "analytics_result.performance",
        Published,
        analytics::AnalyticsResult,
        "analytics",
        "websocket"
    ),
    contract!(
        "backtest_request",
        "backtest_request",
        "backtest_request.run",
        Request,
        backtest::BacktestRequest,
        "any engine (BacktestClient)",
        "backtesting"
    ),
    contract!(
        "backtest_reply",
        "backtest_request",
        "the requester's inbox",
        Reply,
        backtest::BacktestReply,
        "backtesting",
        "the requester"
    ),
    contract!(
        "analytics_result.backtest",
        "analytics_result",
        "analytics_result.backtest",
        Published,
        backtest::BacktestResult,
        "backtesting",
        "websocket"
    ),
    contract!(
        "engine_health",
        "engine_health",
        "engine_health.{ENGINE}",
        Published,
        health::EngineHealth,
        "every engine (its heartbeat)",
        "analytics, websocket"
    ),
];

use crate::{analytics, backtest, collateral, factor, features, health, hub, market, ml, orders};
use crate::{portfolio, risk, strategy, vpin};

/// The contracts a name selects: the one of that name (`market_data.quote`), or every one of
/// that kind (`market_data` gives trade, quote, bar and book).
pub fn find(name: &str) -> Vec<&'static Contract> {
    match CONTRACTS.iter().find(|c| c.name == name) {
        Some(c) => vec![c],
        None => CONTRACTS.iter().filter(|c| c.kind == name).collect(),
    }
}
