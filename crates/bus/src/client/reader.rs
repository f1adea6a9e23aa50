//! The read loop of a subscription: reads a batch, filters it, drops duplicates, hands the rest
//! to the handler and acknowledges what it handled.

use super::counters::Counters;
use super::subscribe::Filter;
use super::{Handler, HandlerError, SubscriptionStats};
use crate::config::BusId;
use dualbus_core::dedup::{SourceDedup, Verdict};
use dualbus_core::{Envelope, EventKind, Mode, ReceiveError, Subscriber, Topic};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Handler failures as warnings naming the group, the kind, the message id and the reason: at
/// most one a second per reader, with the number of failures left unlogged since the last.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, bus: BusId, group: &str, env: &Envelope, reason: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            bus = %bus,
            group = %group,
            kind = %env.kind,
            id = %env.id(),
            unlogged_since_last = self.unlogged,
            "handler failed (the message is redelivered, then dead-lettered after max_deliveries): {reason}"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// One reader of a subscription: one bus, one lane.
pub(super) struct Reader<H> {
    pub(super) bus: BusId,
    /// The consumer group (the engine, for an engine's subscription), for logs.
    pub(super) group: Arc<str>,
    /// The counters of the client it reads for (not the client itself: a reply reader that
    /// held its client would keep it alive for good).
    pub(super) counters: Arc<[Counters; 2]>,
    pub(super) handler: Arc<H>,
    pub(super) filter: Option<Arc<Filter>>,
    pub(super) dedup: Arc<Mutex<SourceDedup>>,
    /// Taken while a batch is checked and handled; shared by the readers of one lane.
    pub(super) turn: Arc<tokio::sync::Mutex<()>>,
    pub(super) stats: Arc<SubscriptionStats>,
    pub(super) mode: Mode,
    pub(super) batch_max: usize,
}

impl<H> Clone for Reader<H> {
    fn clone(&self) -> Self {
        Reader {
            bus: self.bus,
            group: self.group.clone(),
            counters: self.counters.clone(),
            handler: self.handler.clone(),
            filter: self.filter.clone(),
            dedup: self.dedup.clone(),
            turn: self.turn.clone(),
            stats: self.stats.clone(),
            mode: self.mode,
            batch_max: self.batch_max,
        }
    }
}

impl<H: Handler> Reader<H> {
    /// Calls the handler; a panic in it is this message's failure, not the reader's end: it
    /// is logged, counted (`panicked`, and `failed` with the other failures) and the message
    /// is redelivered, then dead-lettered with the panic's text after `max_deliveries`.
    async fn handle(&self, env: &Envelope, received: Instant) -> Result<(), HandlerError> {
        use futures_util::FutureExt;
        use std::panic::{catch_unwind, AssertUnwindSafe};
        // A synchronous handler (`handler_fn`) runs when its future is made, not when polled.
        let outcome = match catch_unwind(AssertUnwindSafe(|| {
            self.handler.handle_received(env, received)
        })) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(p) => Err(p),
        };
        match outcome {
            Ok(r) => r,
            Err(p) => {
                let why = panic_text(&*p);
                tracing::error!(
                    bus = %self.bus,
                    group = %self.group,
                    kind = %env.kind,
                    id = %env.id(),
                    "the handler panicked: {why} (the message counts as failed: redelivered, \
                     then dead-lettered after max_deliveries)"
                );
                self.counters[self.bus.index()]
                    .panicked
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.panicked.fetch_add(1, Ordering::Relaxed);
                Err(HandlerError(format!("the handler panicked: {why}")))
            }
        }
    }

    pub(super) async fn run(self, mut sub: Box<dyn Subscriber>, mut stop: watch::Receiver<bool>) {
        let counters = &self.counters[self.bus.index()];
        let mut acks = Vec::with_capacity(self.batch_max);
        let mut verdicts = Vec::with_capacity(self.batch_max);
        let mut backoff = Duration::from_millis(10);
        let mut failure_log = FailureLog::default();
        loop {
            let batch = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                b = sub.next_batch(self.batch_max) => b,
            };
            let batch = match batch {
                Ok(b) => {
                    backoff = Duration::from_millis(10);
                    b
                }
                Err(ReceiveError::Closed) => break,
                Err(e) => {
                    tracing::warn!(bus = %self.bus, error = %e, "read failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    // Short: a broker back from a crash must be read again at once.
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                    continue;
                }
            };
            if batch.skipped > 0 {
                tracing::warn!(
                    bus = %self.bus,
                    group = %self.group,
                    skipped = batch.skipped,
                    "a fast-mode consumer fell further behind than its lag limit and skipped to \
                     the newest message: the skipped messages are not delivered to this group \
                     (dualbus_skipped_total; a reliable group gets every message)"
                );
                counters.skipped.fetch_add(batch.skipped, Ordering::Relaxed);
                self.stats
                    .skipped
                    .fetch_add(batch.skipped, Ordering::Relaxed);
            }
            if batch.dead_lettered > 0 {
                self.stats
                    .dead_lettered
                    .fetch_add(batch.dead_lettered, Ordering::Relaxed);
            }
            let received = Instant::now();
            acks.clear();
            verdicts.clear();
            let turn = self.turn.lock().await;
            {
                let mut dedup = self.dedup.lock();
                // Consecutive messages often share a topic allocation: match it once.
                let mut last: Option<(Topic, EventKind, bool)> = None;
                for d in &batch.deliveries {
                    let e = &d.envelope;
                    let accepted = match (&self.filter, &last) {
                        (None, _) => true,
                        (Some(_), Some((t, k, ok)))
                            if Topic::ptr_eq(t, &e.topic) && *k == e.kind =>
                        {
                            *ok
                        }
                        (Some(f), _) => {
                            let ok = f.accepts(e);
                            last = Some((e.topic.clone(), e.kind.clone(), ok));
                            ok
                        }
                    };
                    verdicts.push(if !accepted {
                        None
                    } else {
                        Some(dedup.check(&e.src, &e.inst, e.seq))
                    });
                }
            }
            let mut handled = 0u64;
            let mut dups = 0u64;
            let mut failures: Vec<usize> = Vec::new();
            for (i, d) in batch.deliveries.iter().enumerate() {
                match verdicts[i] {
                    None => acks.push((d.stream, d.id)),
                    Some(Verdict::Duplicate) => {
                        dups += 1;
                        acks.push((d.stream, d.id));
                    }
                    Some(_) => match self.handle(&d.envelope, received).await {
                        Ok(()) => {
                            handled += 1;
                            acks.push((d.stream, d.id));
                        }
                        Err(e) => {
                            failures.push(i);
                            if self.mode == Mode::Reliable {
                                sub.nack(d.stream, d.id, &e.0).await;
                            }
                            failure_log.failed(self.bus, &self.group, &d.envelope, &e.0);
                        }
                    },
                }
            }
            if !failures.is_empty() && self.mode == Mode::Reliable {
                // Failed messages will come back: they must not count as duplicates then.
                let mut dedup = self.dedup.lock();
                for &i in &failures {
                    let e = &batch.deliveries[i].envelope;
                    dedup.forget(&e.src, &e.inst, e.seq);
                }
            }
            drop(turn);
            let failed = failures.len() as u64;
            counters
                .delivered
                .fetch_add(handled + failed, Ordering::Relaxed);
            self.stats.handled.fetch_add(handled, Ordering::Relaxed);
            if dups > 0 {
                counters.duplicates.fetch_add(dups, Ordering::Relaxed);
                self.stats.duplicates.fetch_add(dups, Ordering::Relaxed);
            }
            if failed > 0 {
                counters.failed.fetch_add(failed, Ordering::Relaxed);
                self.stats.failed.fetch_add(failed, Ordering::Relaxed);
            }
            // Release the messages before acknowledging: the transport may then free them on
            // the publisher's side, where they were allocated.
            drop(batch);
            if self.mode == Mode::Reliable && !acks.is_empty() {
                match sub.ack(&acks).await {
                    Ok(()) => {
                        counters
                            .acknowledged
                            .fetch_add(acks.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(bus = %self.bus, error = %e, "acknowledgement failed; messages will be redelivered")
                    }
                }
            }
        }
        if let Err(e) = sub.close().await {
            tracing::warn!(bus = %self.bus, error = %e, "final acknowledgements failed; messages will be redelivered");
        }
    }
}
