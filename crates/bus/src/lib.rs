//! The DualBus client: two buses, one API.
//!
//! A [`DualBus`] holds two transports, the MarketData bus and the Engine Logic bus, and routes
//! every message to one of them by its kind (docs/architecture.md, "Buses and routing by
//! kind"), so a market-data flood never delays a risk alert. Critical kinds travel on each
//! bus's priority lane: a stream and a reader of their own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dualbus_bus::{DualBus, SubscribeOptions, handler_fn};
//! use dualbus_core::EventKind;
//!
//! let risk = DualBus::builder("risk").build()?;
//! let strategy = risk.sibling("strategy", "strategy-1")?; // same process, same buses
//! let _sub = risk
//!     .subscribe(SubscribeOptions::new("risk", &["strategy_signal.>"])?, handler_fn(|msg| {
//!         println!("{} {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//!         Ok(())
//!     }))
//!     .await?;
//! strategy
//!     .publish(EventKind::StrategySignal, "strategy_signal.BTCUSDT", &serde_json::json!({"target": 1.5}))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! * [`config`]: [`Config`], the TOML file with environment overrides and validation.
//! * [`route`]: [`Router`], kind to bus and stream key, the priority lane.
//! * [`failover`]: heartbeats, failing over to the other bus and back, the re-send window.
//! * [`client`]: [`DualBus`], its builder and accessors; one file per concept under it:
//!   * `client/transports.rs`: the transports a config asks for (embedded, Redis, TLS).
//!   * `client/publish.rs`: stamping envelopes, declared kinds, publishing by route.
//!   * `client/subscribe.rs`: [`Subscription`], its readers per bus and lane, their claims.
//!   * `client/reader.rs`: the read loop: filter, duplicate suppression, handler, acks.
//!   * `client/request.rs`: request/reply and the requester's reply reader.
//!   * `client/options.rs`: [`SubscribeOptions`] over the config's `[delivery]` defaults.
//!   * `client/handler.rs`: [`Handler`], [`handler_fn`], [`HandlerError`].
//!   * `client/counters.rs`: [`BusCounters`], what a client and its readers count.
//!   * `client/error.rs`: [`BusError`], [`RequestError`].
//!   * `client/priority.rs`: the thread of the priority lane (real-time scheduling).

// Unsafe code only where a system call needs it, each allowed where it stands.
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod route;

pub use client::{
    connect_transport, connect_transports, default_transports, handler_fn, redis_options,
    BusCounters, BusError, DualBus, DualBusBuilder, FnHandler, Handler, HandlerError, RequestError,
    SubscribeOptions, Subscription, SubscriptionStats,
};
pub use config::{BusId, Config, ConfigError, FailoverMode, TransportKind};
pub use failover::{FailoverCounters, FailoverSettings};
pub use route::{Lane, Route, Router};
