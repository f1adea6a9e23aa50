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
//! * [`partition`]: the partition of a symbol and the Redis Cluster slot of a key.

#![forbid(unsafe_code)]

pub mod codec;
pub mod dedup;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod kind;
pub mod partition;
pub mod topic;
pub mod transport;

pub use codec::{CodecError, Encoding};
pub use envelope::{Envelope, EnvelopeBuilder, PayloadError, WireError, WIRE_VERSION};
pub use kind::{EventKind, KindError, Priority};
pub use topic::{Pattern, Topic, TopicError};
pub use transport::redelivery_wait;
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

/// `url` with its password, if any, replaced by `***` (`redis://user:***@host:port`), for
/// messages and logs: a password in a bus address is never printed.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; credentials end at its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((creds, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match creds.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // `redis://secret@host`: a lone name may be the password (older clients read it so).
        None if !creds.is_empty() => "***".to_string(),
        None => String::new(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            ("redis://127.0.0.1:6380", "redis://127.0.0.1:6380"),
            ("redis://:s3cret@h:6380", "redis://:***@h:6380"),
            (
                "redis://engine:s3cret@h:6380/0",
                "redis://engine:***@h:6380/0",
            ),
            ("redis://s3cret@h:6380", "redis://***@h:6380"),
            ("redis://u:p@ss:w@rd@h:1", "redis://u:***@h:1"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
