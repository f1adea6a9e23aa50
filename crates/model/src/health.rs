//! Engine heartbeats (`engine_health.{ENGINE}`): status, counts and latency figures.

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The payload of an `engine_health` heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct EngineHealth {
    /// The engine's name.
    pub engine: String,
    /// Its instance id.
    pub instance: String,
    /// `running`, `degraded` (running, with `faults`) or `stopped`.
    pub status: String,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Messages received and published, by kind.
    #[serde(flatten)]
    pub counts: EngineCounts,
    /// Engine-specific details.
    #[serde(default)]
    pub details: serde_json::Value,
    /// Handler time, queue wait and delivery latency since the previous heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<EngineLatency>,
    /// What went wrong in the engine's subscriptions since it started; absent while nothing
    /// did. A running engine with faults says `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<EngineFaults>,
}

/// Faults of an engine's subscriptions since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EngineFaults {
    /// Messages whose handler panicked (each failed, redelivered, then dead-lettered).
    pub handler_panics: u64,
    /// Readers that panicked outside the handler and were started again.
    pub reader_restarts: u64,
}

/// Messages received and published by one engine, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EngineCounts {
    /// Messages handed to the engine, by kind.
    pub received: BTreeMap<String, u64>,
    /// Messages the engine published, by kind.
    pub published: BTreeMap<String, u64>,
}

/// Percentiles of one histogram of microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Percentiles {
    /// Median, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Largest.
    pub max_us: Option<f64>,
    /// Messages recorded.
    pub count: u64,
}

/// One engine's figures: handler time, queue wait, messages handled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandlerFigures {
    /// 99th percentile of the handler's time per message, microseconds.
    pub handler_p99_us: Option<f64>,
    /// Longest handler time, microseconds.
    pub handler_max_us: Option<f64>,
    /// 99th percentile of the queue wait, microseconds.
    pub queue_p99_us: Option<f64>,
    /// Longest queue wait, microseconds.
    pub queue_max_us: Option<f64>,
    /// Messages handled.
    pub handled: u64,
    /// Longest timer callback, microseconds (timers hold the engine like a handler does).
    pub timer_max_us: Option<f64>,
}

/// What one engine's heartbeat says about its latency, over the time since the previous one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EngineLatency {
    /// Handler time and queue wait.
    #[serde(flatten)]
    pub handler: HandlerFigures,
    /// Delivery latency to this engine, per lane that carried messages to it.
    pub delivery: BTreeMap<String, Percentiles>,
}

impl Message for EngineHealth {
    fn kind() -> EventKind {
        EventKind::EngineHealth
    }

    const PRIORITY: Priority = Priority::Low;

    fn topic(&self) -> String {
        format!("engine_health.{}", self.engine)
    }
}
