//! Why bus operations and requests fail.

use crate::config::BusId;
use dualbus_core::{CodecError, PublishError, ReceiveError, SubscribeError, TopicError};
use dualbus_redis::ConnectError;
use std::time::Duration;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Bad configuration or construction.
    #[error("configuration: {0}")]
    Config(String),
    /// A topic that does not start with its kind's name.
    #[error("topic {topic:?} does not start with its kind {kind:?} (topics are {{kind}}.…)")]
    TopicKindMismatch {
        /// The topic.
        topic: String,
        /// The kind.
        kind: String,
    },
    /// A bad topic or pattern.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A payload that could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Publishing failed on a bus.
    #[error("publish on the {bus} bus failed: {source}")]
    Publish {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: PublishError,
    },
    /// Subscribing failed on a bus.
    #[error("subscribe on the {bus} bus failed: {source}")]
    Subscribe {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: SubscribeError,
    },
    /// Reading a bus failed.
    #[error("reading the {bus} bus failed: {source}")]
    Receive {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: ReceiveError,
    },
    /// A broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `reply` was called with a message that is not a request.
    #[error("message {id} is not a request (it has no reply stream or correlation id)")]
    NotARequest {
        /// The message id.
        id: String,
    },
    /// A request names a reply stream that is not a requester's reply stream.
    #[error(
        "message {id} asks for its reply on {stream:?}, which is not a reply stream \
         ({{prefix}}:{{bus}}:reply:{{instance}}); nothing was written"
    )]
    BadReplyStream {
        /// The message id.
        id: String,
        /// The stream it named.
        stream: String,
    },
    /// A client restricted to the kinds its engine declares published another kind.
    #[error(
        "{src} published {kind}, a kind it does not declare (it publishes {declared}); \
         nothing was sent"
    )]
    Undeclared {
        /// The publishing engine.
        src: String,
        /// The kind it published.
        kind: String,
        /// The kinds it declares, comma-separated (`nothing` when none).
        declared: String,
    },
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No reply within the timeout.
    #[error("request {kind} on {topic} got no reply within {after:?}")]
    Timeout {
        /// The request's kind.
        kind: String,
        /// The request's topic.
        topic: String,
        /// The timeout.
        after: Duration,
    },
    /// The request could not be sent.
    #[error(transparent)]
    Bus(#[from] BusError),
}
