//! Fault injection under load, against real `redis-server` processes this harness starts and
//! kills itself. Shared by `dualbus stress` and the failover tests; a crate of its own so that
//! the `dualbus` binary does not carry the test kit.
//!
//! A publisher sends steady traffic on both buses (`market_data` on the MarketData bus,
//! `strategy_signal` on the Engine Logic bus, `risk_alert` on its priority lane); a consumer
//! checks every message by (`kind`, `seq`): lost, duplicated, out of order (per consumer
//! instance; in the consumer-crash scenario the batch the dead instance held reaches the other
//! instance after later messages, as a redelivery must, and is not counted). Faults follow the
//! scenario; the report says what was delivered and how long each fail-over took (from the fault
//! to the first delivery, over the other bus, of a message published after the fault).
//!
//! # Layout
//! * [`harness`] (re-exported here): [`Scenario`], [`StressOptions`], [`run`], the report
//!   ([`StressReport`]), the child consumer process of the consumer-crash scenario, and
//!   [`peak_rss_of`].
//! * [`soak`]: the checked traffic of `dualbus stress soak` ([`soak::SoakTraffic`]) and its
//!   schedule of faults ([`soak::schedule`]); the command runs the engines beside it.
//! * [`redis_server`]: [`RedisServer`], a real `redis-server` on a free port, killed on drop
//!   (and [`RedisCluster`]); the brokers this harness starts and kills, and the test kit's.

#![forbid(unsafe_code)]

pub mod harness;
pub mod redis_server;
pub mod soak;

pub use harness::*;
pub use redis_server::{RedisCluster, RedisServer};
