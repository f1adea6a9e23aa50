//! Per-subscription options, over the `[delivery]` defaults of the config.

use super::DualBus;
use crate::config::BusId;
use dualbus_core::transport::StreamKey;
use dualbus_core::{Backpressure, EventKind, Mode, Pattern, StartFrom, SubscribeSpec, TopicError};
use std::sync::Arc;
use std::time::Duration;

/// Per-subscription options; unset fields take the `[delivery]` defaults of the config.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Consumer group (by convention the engine's name).
    pub group: Arc<str>,
    /// Consumer name within the group; defaults to the client's instance id.
    pub consumer: Option<Arc<str>>,
    /// Topic patterns; a message is handled when any matches.
    pub patterns: Vec<Pattern>,
    /// Kinds to read; when empty they come from the patterns' first segments (a wildcard first
    /// segment reads every known kind).
    pub kinds: Vec<EventKind>,
    /// Reliable or fast.
    pub mode: Option<Mode>,
    /// Where a new group starts.
    pub start: Option<StartFrom>,
    /// Queue bound of the group.
    pub queue_bound: Option<usize>,
    /// Policy at the bound.
    pub backpressure: Option<Backpressure>,
    /// Redelivery delay of unacknowledged messages.
    pub idle_timeout: Option<Duration>,
    /// Longest wait before a redelivery (the backoff's cap).
    pub backoff_max: Option<Duration>,
    /// Deliveries before dead-lettering.
    pub max_deliveries: Option<u32>,
    /// Fast-mode lag limit.
    pub lag_limit: Option<u64>,
    /// Messages per read.
    pub batch_max: Option<usize>,
}

impl SubscribeOptions {
    /// Options for `group` reading the given topic patterns.
    ///
    /// # Errors
    /// [`TopicError`] naming the bad pattern segment.
    pub fn new(group: &str, patterns: &[&str]) -> Result<SubscribeOptions, TopicError> {
        Ok(SubscribeOptions {
            group: Arc::from(group),
            consumer: None,
            patterns: patterns
                .iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<_, _>>()?,
            kinds: Vec::new(),
            mode: None,
            start: None,
            queue_bound: None,
            backpressure: None,
            idle_timeout: None,
            backoff_max: None,
            max_deliveries: None,
            lag_limit: None,
            batch_max: None,
        })
    }
    /// Sets the consumer name.
    pub fn consumer(mut self, c: &str) -> Self {
        self.consumer = Some(Arc::from(c));
        self
    }
    /// Sets the mode.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = Some(m);
        self
    }
    /// Sets where a new group starts.
    pub fn start(mut self, s: StartFrom) -> Self {
        self.start = Some(s);
        self
    }
    /// Sets the queue bound and its policy.
    pub fn bound(mut self, bound: usize, policy: Backpressure) -> Self {
        self.queue_bound = Some(bound);
        self.backpressure = Some(policy);
        self
    }
    /// Sets the redelivery timeout and the deliveries before dead-lettering. A message is
    /// redelivered once unacknowledged for `idle`; each further redelivery waits twice as long
    /// as the one before, up to the backoff cap ([`SubscribeOptions::backoff_max`]).
    pub fn redelivery(mut self, idle: Duration, max_deliveries: u32) -> Self {
        self.idle_timeout = Some(idle);
        self.max_deliveries = Some(max_deliveries);
        self
    }
    /// Sets the longest wait before a redelivery (default `delivery.backoff_max_ms`); the
    /// idle timeout or less turns the backoff off: every redelivery waits the idle timeout.
    pub fn backoff_max(mut self, max: Duration) -> Self {
        self.backoff_max = Some(max);
        self
    }
    /// Sets the fast-mode lag limit.
    pub fn lag_limit(mut self, n: u64) -> Self {
        self.lag_limit = Some(n);
        self
    }
    /// Sets the most messages per read.
    pub fn batch_max(mut self, n: usize) -> Self {
        self.batch_max = Some(n);
        self
    }
    /// Reads these kinds instead of deriving them from the patterns.
    pub fn kinds(mut self, kinds: Vec<EventKind>) -> Self {
        self.kinds = kinds;
        self
    }
}

impl DualBus {
    /// The transport's subscription of `opts` to `streams` on `bus`, with the config's defaults
    /// for what the options leave unset.
    pub(super) fn spec(
        &self,
        opts: &SubscribeOptions,
        streams: Vec<StreamKey>,
        bus: BusId,
    ) -> SubscribeSpec {
        let d = &self.inner.cfg.delivery;
        SubscribeSpec {
            group: opts.group.clone(),
            consumer: opts
                .consumer
                .clone()
                .unwrap_or_else(|| self.inner.inst.clone()),
            streams,
            mode: opts.mode.unwrap_or(self.inner.cfg.mode()),
            start: opts.start.unwrap_or(self.inner.cfg.start()),
            queue_bound: opts.queue_bound.unwrap_or(d.queue_bound as usize),
            backpressure: opts.backpressure.unwrap_or(self.inner.cfg.backpressure()),
            lag_limit: opts.lag_limit.unwrap_or(d.lag_limit),
            idle_timeout: opts
                .idle_timeout
                .unwrap_or(Duration::from_millis(d.idle_timeout_ms)),
            backoff_max: opts
                .backoff_max
                .unwrap_or(Duration::from_millis(d.backoff_max_ms)),
            max_deliveries: opts.max_deliveries.unwrap_or(d.max_deliveries as u32),
            dead_letter: self.inner.router.dead_stream(bus),
        }
    }
}
