//! Engines on the dualbus buses.
//!
//! An engine is a component of the trading system that consumes messages from the buses and
//! publishes its own (docs/architecture.md, "Engines and their messages"). This crate holds
//! the [`Engine`](engine::Engine) trait and the host that runs one on either transport, the
//! market data validator, the upstream providers, and the MarketData hub: the centre of the
//! MarketData bus's star, the only component that talks to data providers. The payloads the
//! engines exchange live in the `dualbus-model` crate: an engine depends on the model, never on
//! another engine (the Backtesting engine re-runs the others' calculators).
//!
//! # Layout
//! * [`analytics`]: the Analytics engine: Sharpe ratio, drawdown, turnover, hit rate, P&L by
//!   symbol, per-bus traffic and latency (`analytics_result`).
//! * [`backtesting`]: the Backtesting engine: a simplified, bar-level backtest of the strategy
//!   over the hub's history, on request (`backtest_request`) and every 30 minutes of data time
//!   (`analytics_result.backtest`).
//! * [`engine`]: the `Engine` trait, its context and the host (subscriptions, timers,
//!   `engine_health` heartbeats, graceful stop, per-kind counters).
//! * [`features`]: per-symbol indicators on time bars (returns, realized volatility, RSI,
//!   MACD, Bollinger %b, spread, order-flow imbalance, VWAP deviation) and the Features engine
//!   (`feature_vector`).
//! * [`market`]: the validator of market data; bars built from trades; maps keyed by symbol.
//! * [`metrics`]: per-bus traffic and delivery latency of the engines of a run.
//! * [`provider`]: the `Provider` trait; `synthetic`, `replay` and `binance` providers.
//! * [`report`]: what the run and backtest reports say about the buses: the observer of the
//!   system's outputs (fills, equity, alerts) and each bus's figures.
//! * [`hub`]: the MarketData hub: normalizes and publishes provider data, snapshot and
//!   history caches, coalescing of identical history requests, request/reply.
//! * [`telemetry`]: `/metrics` (Prometheus), `/healthz` and `/readyz` of a process, and the
//!   HTTP server they and the dashboard run on.
//! * [`system`]: every engine by name with the settings `dualbus run` uses; start and stop
//!   them together.
//! * [`venue`]: the paper venue inside the hub (fills `order_request`s against the latest
//!   quote).
//! * [`enhanced_vpin`]: flash crash detection from VPIN percentiles, price falls and spread
//!   blow-outs (`flash_crash_alert`).
//! * [`vpin`]: VPIN with bulk volume classification, per symbol, its toxicity percentile, and
//!   the VPIN engine (`vpin_calculation`, `toxicity_alert`); `dualbus vpin` uses the same
//!   calculator.
//! * [`ml`]: the ML engine: per symbol, online logistic regression (SGD, L2) on standardized
//!   features predicting the sign of the next bar's return (`ml_prediction`).
//! * [`factor`]: the Factor engine: momentum, reversal, low volatility and liquidity z-scored
//!   across the universe at each bar, and their composite (`factor_calculation`).
//! * [`portfolio`]: the Portfolio engine: positions from fills at average cost, P&L marked to
//!   quote mids, fees, drawdown and the equity curve (`portfolio_update`, `position_change`).
//! * [`collateral`]: the Collateral engine: margin per position from a base rate and realized
//!   volatility, utilization of equity, and `margin_call` when it crosses a threshold.
//! * [`strategy`]: the Strategy engine: a target position per symbol from the ML probability
//!   and the factor composite, zeroed while a toxicity or flash crash alert is active
//!   (`strategy_signal`).
//! * [`risk`]: the Risk engine: pre-trade checks that turn signals into orders
//!   (`order_request`) or rejections (`risk_alert`), the circuit breaker, parametric VaR.
//! * [`stats`]: mean and standard deviation, shared by the engines.
//! * [`tearsheet`]: what a trader reads after a backtest: the trade log, round trips won and
//!   lost, exposure over time, the buy-and-hold benchmark.
//! * [`websocket`]: the WebSocket engine: HTTP on port 8600 with a live page, a WebSocket
//!   feed of chosen kinds (quotes coalesced per symbol), `/health` and `/api/state`.

#![forbid(unsafe_code)]

pub mod analytics;
pub mod backtesting;
pub mod collateral;
pub mod engine;
pub mod enhanced_vpin;
pub mod factor;
pub mod features;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod market;
pub mod metrics;
pub mod ml;
pub mod portfolio;
pub mod provider;
pub mod report;
pub mod risk;
pub mod stats;
pub mod strategy;
pub mod system;
pub mod tearsheet;
pub mod telemetry;
pub mod venue;
pub mod vpin;
pub mod websocket;
