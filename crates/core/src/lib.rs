//! The core of dualbus: the message and the contracts every other layer builds on.
//!
//! Nothing here knows about Redis, routing or engines. A transport moves [`Envelope`]s between
//! named streams; the bus (crate `dualbus-bus`) decides which stream and which bus a kind goes to.
//!
//! # Layout
//!
//! * [`kind`]: [`EventKind`] (every kind of the trading system plus custom kinds) and [`Priority`].
//! * [`topic`]: [`Topic`] and [`Pattern`], distinct validated types with segment-aware matching.
//! * [`envelope`]: the [`Envelope`] and its wire form (the field list of docs/architecture.md,
//!   "Envelope and wire format", and docs/wire-format.md).
//! * [`codec`]: [`Encoding`], JSON and MessagePack payloads selected per message.
//! * [`transport`]: the [`Transport`] and [`Subscriber`] traits, subscription options and the
//!   error enums of each operation.
//! * [`dedup`]: [`dedup::SourceDedup`], duplicate suppression by (`src`, `inst`, `seq`).

pub mod codec;
pub mod dedup;
pub mod envelope;
pub mod kind;
pub mod topic;
pub mod transport;

pub use codec::{CodecError, Encoding};
pub use envelope::{Envelope, EnvelopeBuilder, WireError, WIRE_VERSION};
pub use kind::{EventKind, KindError, Priority};
pub use topic::{Pattern, Topic, TopicError};
pub use transport::{
    AckError, Backpressure, Batch, Confirm, DeadLetter, Delivery, EntryId, EnvelopeRef, Health,
    Mode, PublishError, ReceiveError, StartFrom, SubscribeError, SubscribeSpec, Subscriber,
    Transport, TransportStats,
};

/// Current Unix time in nanoseconds (the `ts` field of an envelope).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
