//! Engines on the dualbus buses.
//!
//! An engine is a component of the trading system that consumes messages from the buses and
//! publishes its own (DESIGN section 7). This crate holds the [`Engine`](engine::Engine) trait
//! and the host that runs one on either transport, the market data model, the upstream
//! providers, and the MarketData hub: the centre of the MarketData bus's star, the only
//! component that talks to data providers.
//!
//! # Layout
//! * [`engine`]: the `Engine` trait, its context and the host (subscriptions, timers,
//!   `engine_health` heartbeats, graceful stop, per-kind counters).
//! * [`features`]: per-symbol indicators on time bars (returns, realized volatility, RSI,
//!   MACD, Bollinger %b, spread, order-flow imbalance, VWAP deviation) and the Features engine
//!   (`feature_vector`).
//! * [`market`]: `Trade`, `Quote`, `Bar`, `BookSnapshot`, `Instrument`; the validator; bars
//!   built from trades.
//! * [`metrics`]: per-bus traffic and delivery latency of the engines of a run.
//! * [`provider`]: the `Provider` trait; `synthetic`, `replay` and `binance` providers.
//! * [`hub`]: the MarketData hub: normalizes and publishes provider data, snapshot and
//!   history caches, coalescing of identical history requests, request/reply.
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
//! * [`websocket`]: the WebSocket engine: HTTP on port 8600 with a live page, a WebSocket
//!   feed of chosen kinds (quotes coalesced per symbol), `/health` and `/api/state`.

pub mod engine;
pub mod enhanced_vpin;
pub mod factor;
pub mod features;
pub mod hub;
pub mod market;
pub mod metrics;
pub mod ml;
pub mod provider;
pub mod system;
pub mod venue;
pub mod vpin;
pub mod websocket;
