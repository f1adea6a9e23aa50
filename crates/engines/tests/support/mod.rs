//! What the engines' integration tests share: a checker subscription that keeps every message
//! it receives, engines started on one bus by name, and waiting for a condition.
//!
//! Each test file takes it with `mod support;`; not every file uses every function, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions, Subscription};
use dualbus_core::{Envelope, EventKind, StartFrom};
use dualbus_engines::engine::{Engine, EngineError, EngineHost, HostOptions, RunningEngine};
use dualbus_model::health::EngineCounts;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// A consumer group that keeps every envelope it receives, in arrival order.
pub struct Checker {
    _sub: Subscription,
    kept: Arc<Mutex<Vec<Envelope>>>,
}

impl Checker {
    /// Group `checker` on `bus` (its own client), reading `patterns` from the oldest message.
    pub async fn start(bus: &DualBus, patterns: &[&str]) -> Checker {
        Checker::named(bus, "checker", patterns).await
    }

    /// Group `group` on a client of its own, reading `patterns` from the oldest message.
    pub async fn named(bus: &DualBus, group: &str, patterns: &[&str]) -> Checker {
        let client = bus
            .sibling(group, &format!("{group}-1"))
            .expect("a client for the checker");
        let kept: Arc<Mutex<Vec<Envelope>>> = Default::default();
        let sink = kept.clone();
        let sub = client
            .subscribe(
                SubscribeOptions::new(group, patterns)
                    .expect("patterns")
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    sink.lock().push(m.clone());
                    Ok(())
                }),
            )
            .await
            .expect("the checker subscribes");
        Checker { _sub: sub, kept }
    }

    /// Every envelope so far.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.kept.lock().clone()
    }

    /// The envelopes of `kind`, in arrival order.
    pub fn envelopes_of(&self, kind: EventKind) -> Vec<Envelope> {
        self.kept
            .lock()
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }

    /// The payloads of `kind`, decoded, in arrival order.
    pub fn of<T: DeserializeOwned>(&self, kind: EventKind) -> Vec<T> {
        self.envelopes_of(kind)
            .iter()
            .map(|e| e.decode().unwrap_or_else(|err| panic!("{err}")))
            .collect()
    }

    /// How many envelopes of `kind` arrived.
    pub fn count(&self, kind: EventKind) -> usize {
        self.kept.lock().iter().filter(|e| e.kind == kind).count()
    }

    /// Waits until at least `n` envelopes of `kind` arrived (the test's timeout guards
    /// against a hang).
    pub async fn wait_for(&self, kind: EventKind, n: usize) {
        until(|| self.count(kind.clone()) >= n).await;
    }
}

/// Starts `engine` on a client `name` (instance `{name}-1`) of `root`'s buses; the engine's
/// error if it does not start (for the tests of bad configurations).
pub async fn try_start_engine<E: Engine>(
    engine: E,
    root: &DualBus,
    name: &str,
    opts: HostOptions,
) -> Result<RunningEngine<E>, EngineError> {
    EngineHost::start(
        engine,
        root.sibling(name, &format!("{name}-1"))
            .expect("a client for the engine"),
        opts,
    )
    .await
}

/// Starts `engine` on a client `name` (instance `{name}-1`) of `root`'s buses.
pub async fn start_engine<E: Engine>(
    engine: E,
    root: &DualBus,
    name: &str,
    opts: HostOptions,
) -> RunningEngine<E> {
    try_start_engine(engine, root, name, opts)
        .await
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

/// Host options that read from the oldest message.
pub fn from_oldest() -> HostOptions {
    HostOptions {
        start: Some(StartFrom::Oldest),
        ..Default::default()
    }
}

/// Messages of `kind` an engine received.
pub fn received(c: &EngineCounts, kind: &str) -> u64 {
    c.received.get(kind).copied().unwrap_or(0)
}

/// Messages of `kind` an engine published.
pub fn published(c: &EngineCounts, kind: &str) -> u64 {
    c.published.get(kind).copied().unwrap_or(0)
}

/// Waits until `cond` holds, checking every few milliseconds (the test's timeout guards
/// against a hang).
pub async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
