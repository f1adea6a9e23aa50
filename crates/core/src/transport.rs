//! The transport contract: named streams of envelopes, consumer groups, acknowledgements.
//!
//! A transport knows nothing about kinds or routes: the bus hands it stream keys. Every
//! transport gives the same delivery semantics (docs/architecture.md, "Delivery semantics");
//! the conformance suite in `dualbus-testkit` checks each one against the same tests.

use crate::envelope::Envelope;
use async_trait::async_trait;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// The name of a stream (`dualbus:logic:risk_alert`).
pub type StreamKey = Arc<str>;

/// Position of an entry in a stream, ordered; Redis stream ids (`ms-seq`) map onto it directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// Milliseconds part (0 on the embedded transport).
    pub ms: u64,
    /// Sequence part (the offset on the embedded transport).
    pub seq: u64,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A shared, immutable reference to a delivered envelope. Envelopes published in one batch
/// share one allocation, so handing one to every group costs a reference count, not a copy.
#[derive(Clone)]
pub struct EnvelopeRef {
    seg: Arc<Vec<Envelope>>,
    idx: u32,
}

impl EnvelopeRef {
    /// Refers to envelope `idx` of a shared batch.
    ///
    /// # Panics
    /// When `idx` is out of range: a bug in the transport.
    pub fn shared(seg: Arc<Vec<Envelope>>, idx: usize) -> EnvelopeRef {
        assert!(idx < seg.len(), "envelope index out of range");
        EnvelopeRef {
            seg,
            idx: idx as u32,
        }
    }

    /// Wraps one owned envelope.
    pub fn owned(env: Envelope) -> EnvelopeRef {
        EnvelopeRef {
            seg: Arc::new(vec![env]),
            idx: 0,
        }
    }
}

impl Deref for EnvelopeRef {
    type Target = Envelope;
    fn deref(&self) -> &Envelope {
        &self.seg[self.idx as usize]
    }
}

impl fmt::Debug for EnvelopeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Index of the stream in [`SubscribeSpec::streams`].
    pub stream: u16,
    /// The entry's id in that stream; pass it back to acknowledge.
    pub id: EntryId,
    /// 1 on first delivery, then counts redeliveries.
    pub attempt: u32,
    /// The message.
    pub envelope: EnvelopeRef,
}

/// What one call to [`Subscriber::next_batch`] returned.
#[derive(Debug, Default)]
pub struct Batch {
    /// Messages to handle, in stream order per stream.
    pub deliveries: Vec<Delivery>,
    /// Fast mode: messages jumped over because the consumer fell behind its lag limit.
    pub skipped: u64,
    /// Messages this call moved to the dead-letter stream (too many deliveries, or unparsable).
    pub dead_lettered: u64,
}

/// How a subscription acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Acknowledge after the handler succeeds; redeliver otherwise; dead-letter after N tries.
    #[default]
    Reliable,
    /// No acknowledgement; a consumer too far behind jumps to the head and is told how far.
    Fast,
}

/// What a publisher meets when a reliable group's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// The publisher waits until the group has room.
    #[default]
    Block,
    /// The group's oldest messages are dropped and counted.
    DropOldest,
    /// The publish fails with [`PublishError::Full`].
    Reject,
}

/// Where a new group starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only messages published after the group was created.
    #[default]
    Newest,
    /// Everything the stream still holds.
    Oldest,
    /// What the stream still holds from this time on, Unix epoch milliseconds. On Redis by
    /// the broker's clock (stream ids are its milliseconds); embedded by the messages' publish
    /// time (`ts`).
    Time(u64),
}

/// When a publish returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Confirm {
    /// Once queued for the broker.
    #[default]
    Queued,
    /// Once the broker has it.
    Broker,
}

/// One subscription: (group, consumer, streams) and how it is delivered.
#[derive(Clone, Debug)]
pub struct SubscribeSpec {
    /// Consumer group; every group sees every message.
    pub group: Arc<str>,
    /// Consumer within the group; consumers of a group share the messages.
    pub consumer: Arc<str>,
    /// Streams to read, all in one call.
    pub streams: Vec<StreamKey>,
    /// Reliable or fast.
    pub mode: Mode,
    /// Where a new group starts.
    pub start: StartFrom,
    /// Most messages a reliable group may hold unacknowledged or unread.
    pub queue_bound: usize,
    /// What happens at `queue_bound`.
    pub backpressure: Backpressure,
    /// Fast mode: how far behind a consumer may fall before it jumps to the head.
    pub lag_limit: u64,
    /// Unacknowledged messages idle this long are redelivered (to any consumer of the group);
    /// each further redelivery of the same message waits twice as long, up to `backoff_max`
    /// (see [`redelivery_wait`]).
    pub idle_timeout: Duration,
    /// The longest wait before a redelivery; at `idle_timeout` or below, every redelivery
    /// waits `idle_timeout` (no backoff).
    pub backoff_max: Duration,
    /// After this many deliveries without acknowledgement a message is dead-lettered.
    pub max_deliveries: u32,
    /// Where dead letters go.
    pub dead_letter: StreamKey,
}

impl SubscribeSpec {
    /// A reliable subscription with the library defaults (bound 100,000, block, idle 30 s
    /// backing off to at most 2 minutes, 5 deliveries, lag limit 100,000).
    pub fn new(
        group: impl Into<Arc<str>>,
        consumer: impl Into<Arc<str>>,
        streams: Vec<StreamKey>,
        dead_letter: impl Into<Arc<str>>,
    ) -> SubscribeSpec {
        SubscribeSpec {
            group: group.into(),
            consumer: consumer.into(),
            streams,
            mode: Mode::Reliable,
            start: StartFrom::Newest,
            queue_bound: 100_000,
            backpressure: Backpressure::Block,
            lag_limit: 100_000,
            idle_timeout: Duration::from_secs(30),
            backoff_max: Duration::from_secs(120),
            max_deliveries: 5,
            dead_letter: dead_letter.into(),
        }
    }

    /// How long a message delivered `deliveries` times stays unacknowledged before it is
    /// delivered again: see [`redelivery_wait`].
    pub fn redelivery_wait(&self, deliveries: u32) -> Duration {
        redelivery_wait(
            self.idle_timeout,
            self.backoff_max,
            self.max_deliveries,
            deliveries,
        )
    }
}

/// How long a message delivered `deliveries` times stays unacknowledged before it is delivered
/// again: `idle` after the first delivery, doubling with each delivery after that, at most
/// `backoff_max` and never less than `idle`. A message that has had its `max_deliveries` waits
/// `idle` and is then dead-lettered (it will not be delivered again, so there is nothing to
/// back off for).
pub fn redelivery_wait(
    idle: Duration,
    backoff_max: Duration,
    max_deliveries: u32,
    deliveries: u32,
) -> Duration {
    if deliveries <= 1 || deliveries >= max_deliveries {
        return idle;
    }
    let doublings = (deliveries - 1).min(31);
    idle.saturating_mul(1u32 << doublings)
        .min(backoff_max)
        .max(idle)
}

/// A message moved to a dead-letter stream, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The stream it came from.
    pub stream: String,
    /// The group that gave up on it, or that read it and found it unparsable.
    pub group: String,
    /// Its id in the original stream.
    pub entry: EntryId,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The message, when it parsed.
    pub envelope: Option<Envelope>,
}

/// Counters a transport keeps itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages dropped by a `DropOldest` policy, or trimmed from a stream after a group read
    /// them and before it acknowledged them.
    pub dropped: u64,
    /// Messages a stream trim (`MAXLEN ~`) removed before a reliable group read them (Redis;
    /// counted by the group's consumers, see the Redis transport's `trim` module).
    pub trimmed_unread: u64,
    /// Messages moved to a dead-letter stream.
    pub dead_lettered: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Fast-mode messages skipped by consumers that fell behind.
    pub skipped: u64,
    /// Messages the broker refused to store (no permission for the stream, out of memory);
    /// their publish failed, with the broker's reason.
    pub refused: u64,
}

/// One consumer group of a stream, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBacklog {
    /// The group's name.
    pub group: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to it (`None`: the broker cannot tell).
    pub lag: Option<u64>,
}

/// Whether the broker answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reachable.
    Up,
    /// Unreachable, with why.
    Down {
        /// What failed.
        reason: String,
    },
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A group with the `Reject` policy has no room.
    #[error("stream {stream}: group {group} is full ({bound} messages queued), message rejected")]
    Full {
        /// The stream.
        stream: String,
        /// The full group.
        group: String,
        /// Its bound.
        bound: usize,
    },
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
    /// The broker cannot be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(String),
}

/// Why a subscription could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The spec is unusable (no streams, empty group, ...).
    #[error("invalid subscription: {0}")]
    Invalid(String),
    /// The broker cannot be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(String),
}

/// Why receiving failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
    /// The broker cannot be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(String),
}

/// Why an acknowledgement failed (the messages stay pending and will be redelivered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The broker cannot be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(String),
}

/// Moves envelopes between named streams with consumer-group semantics.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and benchmarks (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Appends a batch to one stream, in order.
    ///
    /// # Errors
    /// [`PublishError::Full`] when a group with the `Reject` policy has no room for the whole
    /// batch (nothing is appended); `Unavailable`/`Broker` when the broker fails.
    async fn publish(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), PublishError>;

    /// Joins (creating if needed) a consumer group on the given streams.
    ///
    /// # Errors
    /// [`SubscribeError`] when the spec is invalid or the broker fails.
    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Subscriber>, SubscribeError>;

    /// Whether the broker answers.
    async fn health(&self) -> Health;

    /// Reads up to `max` entries of a dead-letter stream, oldest first.
    ///
    /// # Errors
    /// [`ReceiveError`] when the broker fails.
    async fn dead_letters(
        &self,
        stream: &StreamKey,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ReceiveError>;

    /// Counters kept by the transport.
    fn stats(&self) -> TransportStats;

    /// Whether the transport itself saw its broker fail (a write or read that lost the
    /// connection), without asking the broker. Cheap; failover polls it between heartbeats.
    fn reported_down(&self) -> bool {
        false
    }

    /// Whether the broker answered a write or a read after `at`. A heartbeat that times out
    /// while this holds means a busy broker, not a hung one (failover then waits). The
    /// embedded transport has no broker to hang: `false`.
    fn answered_since(&self, _at: std::time::Instant) -> bool {
        false
    }

    /// Waits until every publish queued before this call has reached the broker (or failed).
    ///
    /// # Errors
    /// [`PublishError`] when the broker fails.
    async fn flush(&self) -> Result<(), PublishError> {
        Ok(())
    }

    /// Entries of `stream` some group has not yet handled: unread plus unacknowledged, the
    /// largest over its groups (0 for an unknown stream). Failover uses it to move traffic back
    /// only once what was published on the other bus meanwhile has been handled.
    ///
    /// # Errors
    /// [`ReceiveError`] when the broker fails.
    async fn unread(&self, stream: &StreamKey) -> Result<u64, ReceiveError>;

    /// The consumer groups of `stream` with their pending and unread entries (none for an
    /// unknown stream).
    ///
    /// # Errors
    /// [`ReceiveError`] when the broker fails.
    async fn groups(&self, stream: &StreamKey) -> Result<Vec<GroupBacklog>, ReceiveError>;
}

/// One consumer of a group. Dropping it leaves its unacknowledged messages pending, to be
/// redelivered after the idle timeout (or at once when the same consumer subscribes again).
#[async_trait]
pub trait Subscriber: Send {
    /// Waits for at least one message (or a fast-mode skip report) and returns up to `max`.
    /// A consumer that subscribes again under the same name first gets its own pending messages.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no message is lost (messages
    /// already taken stay pending and are redelivered after the idle timeout).
    ///
    /// # Errors
    /// [`ReceiveError`] when the transport is closed or the broker fails.
    async fn next_batch(&mut self, max: usize) -> Result<Batch, ReceiveError>;

    /// One read: as [`Subscriber::next_batch`], but may return an empty batch when nothing
    /// arrived within the transport's own wait (at most about a second), so that a caller that
    /// owns the subscriber in a task of its own can apply acknowledgements between reads. The
    /// default waits for a message.
    ///
    /// # Errors
    /// As [`Subscriber::next_batch`].
    async fn read_once(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        self.next_batch(max).await
    }

    /// Acknowledges handled messages (`(stream index, id)`). A transport may batch
    /// acknowledgements and send them with its next read (see [`Subscriber::close`]).
    ///
    /// # Errors
    /// [`AckError`] when the broker fails; the messages stay pending.
    async fn ack(&mut self, ids: &[(u16, EntryId)]) -> Result<(), AckError>;

    /// Records why a message failed; it stays pending and is redelivered after the idle timeout,
    /// and the last reason goes with it to the dead-letter stream.
    async fn nack(&mut self, stream: u16, id: EntryId, reason: &str);

    /// Sends whatever the subscriber still holds (acknowledgements it batches); called before
    /// the subscriber is dropped. Without it, unsent acknowledgements are lost and their messages
    /// redelivered (and dropped as duplicates by the bus).
    ///
    /// # Errors
    /// [`AckError`] when the broker fails.
    async fn close(&mut self) -> Result<(), AckError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(idle_ms: u64, max_ms: u64, deliveries: u32) -> SubscribeSpec {
        let mut s = SubscribeSpec::new("g", "c", Vec::new(), "dead");
        s.idle_timeout = Duration::from_millis(idle_ms);
        s.backoff_max = Duration::from_millis(max_ms);
        s.max_deliveries = deliveries;
        s
    }

    #[test]
    fn redelivery_waits_double_up_to_the_cap() {
        let s = spec(100, 700, 6);
        let waits: Vec<u128> = (1..=6).map(|n| s.redelivery_wait(n).as_millis()).collect();
        // 100, 200, 400, then capped at 700; the sixth delivery was the last: it waits the
        // idle timeout before it is dead-lettered.
        assert_eq!(waits, vec![100, 200, 400, 700, 700, 100]);
    }

    #[test]
    fn a_cap_at_or_below_the_idle_timeout_means_a_fixed_wait() {
        for cap in [0, 50, 100] {
            let s = spec(100, cap, 5);
            let waits: Vec<u128> = (1..=5).map(|n| s.redelivery_wait(n).as_millis()).collect();
            assert_eq!(waits, vec![100; 5], "cap {cap} ms");
        }
    }

    #[test]
    fn huge_delivery_counts_do_not_overflow() {
        let s = spec(30_000, 120_000, u32::MAX);
        assert_eq!(s.redelivery_wait(1_000), Duration::from_secs(120));
        let s = spec(u64::MAX / 2, u64::MAX, u32::MAX);
        assert!(s.redelivery_wait(40) >= s.idle_timeout);
    }
}
