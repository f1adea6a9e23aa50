//! Handlers: what a subscription calls for each message, and how one fails.

use dualbus_core::Envelope;
use std::future::Future;
use std::time::Instant;

/// A handler's failure: the message is not acknowledged, is redelivered after the idle timeout,
/// and is dead-lettered with this reason after the last allowed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError(s)
    }
}

/// A payload that does not decode fails its handler with the reason
/// (`order_request does not decode: ...`): redelivered, then dead-lettered.
impl From<dualbus_core::PayloadError> for HandlerError {
    fn from(e: dualbus_core::PayloadError) -> Self {
        HandlerError(e.to_string())
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError(s.to_string())
    }
}

/// Handles the messages of a subscription. Called concurrently from the normal and the
/// priority-lane reader (and from both buses), hence `&self`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message; `Ok` acknowledges it.
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Like [`Handler::handle`], told when the reader took the message's batch from the
    /// transport (a handler that measures how long messages wait for it overrides this one;
    /// the default calls `handle`).
    fn handle_received(
        &self,
        msg: &Envelope,
        received: Instant,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = received;
        self.handle(msg)
    }
}

/// A synchronous closure as a [`Handler`]; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps a closure `Fn(&Envelope) -> Result<(), HandlerError>` as a handler.
pub fn handler_fn<F>(f: F) -> FnHandler<F>
where
    F: Fn(&Envelope) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    FnHandler(f)
}

impl<F> Handler for FnHandler<F>
where
    F: Fn(&Envelope) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready((self.0)(msg))
    }
}
