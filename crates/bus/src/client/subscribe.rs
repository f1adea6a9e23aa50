//! Subscribing: the readers of a subscription (per bus and lane), what they claim, and which
//! messages they hand to the handler.

use super::priority::priority_runtime;
use super::reader::Reader;
use super::{BusError, DualBus, Handler, SubscribeOptions};
use crate::config::{BusId, Config};
use dualbus_core::dedup::SourceDedup;
use dualbus_core::transport::StreamKey;
use dualbus_core::{Envelope, EventKind, Pattern, SubscribeError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Counters of one subscription.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Messages handled successfully.
    pub handled: AtomicU64,
    /// Handler failures.
    pub failed: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Fast-mode messages skipped.
    pub skipped: AtomicU64,
    /// Messages dead-lettered while this subscription read.
    pub dead_lettered: AtomicU64,
    /// Handler panics (each counted in `failed` too).
    pub panicked: AtomicU64,
    /// Readers that ended by a panic of their own (outside the handler) and were started
    /// again.
    pub restarted: AtomicU64,
}

/// A running subscription. Dropping it stops its readers (without waiting).
pub struct Subscription {
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) stats: Arc<SubscriptionStats>,
    /// The (bus, stream, group, consumer) this subscription reads, released when it ends.
    pub(super) claims: Option<(Claims, Vec<Claim>)>,
}

/// A (bus, stream, group, consumer) read by one subscription.
type Claim = (usize, StreamKey, Arc<str>, Arc<str>);
/// What the subscriptions of a client read: one (stream, group, consumer) is read by one.
pub(super) type Claims = Arc<Mutex<std::collections::HashSet<Claim>>>;

struct ClaimGuard {
    claims: Claims,
    mine: Option<Vec<Claim>>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(mine) = self.mine.take() {
            let mut c = self.claims.lock();
            for k in mine {
                c.remove(&k);
            }
        }
    }
}

impl Subscription {
    /// Its counters.
    pub fn stats(&self) -> &SubscriptionStats {
        &self.stats
    }

    /// Its counters, to read after the subscription is gone or from another task.
    pub fn shared_stats(&self) -> Arc<SubscriptionStats> {
        self.stats.clone()
    }

    /// Kills the readers at once, as a crash of the consumer's process would: the batch in
    /// hand is neither finished nor acknowledged (another consumer of the group takes it over
    /// after the idle timeout).
    pub fn abort(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Stops the readers and waits for them: the batch in hand is finished and acknowledged.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some((claims, mine)) = self.claims.take() {
            let mut c = claims.lock();
            for k in mine {
                c.remove(&k);
            }
        }
    }
}

impl DualBus {
    /// Subscribes a handler. Reads the kinds' streams on their buses and the priority lanes,
    /// each with its own reader task; a handler sees each message once (duplicates by
    /// (`src`, `inst`, `seq`) are dropped) and, per kind, in per-source order.
    ///
    /// # Errors
    /// [`BusError::Subscribe`] naming the bus, or a bad kind in a pattern.
    pub async fn subscribe<H: Handler>(
        &self,
        opts: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, BusError> {
        let kinds = if opts.kinds.is_empty() {
            kinds_of_patterns(&opts.patterns, &self.inner.cfg)?
        } else {
            opts.kinds.clone()
        };
        let filter = Arc::new(Filter {
            kinds: kinds.clone(),
            patterns: opts.patterns.clone(),
        });
        let mut plan: Vec<ReaderPlan> = Vec::new();
        for bus in BusId::ALL {
            let router = &self.inner.router;
            let mut streams: Vec<StreamKey> = kinds
                .iter()
                .filter(|k| router.bus_of(k) == bus)
                // Critical kinds travel on the priority lane, but their own streams are read
                // too: a client that is not a DualBus (redis-cli, Python) may XADD there.
                .flat_map(|k| match &self.reads {
                    Some(parts) => router.kind_streams_in(bus, k, parts),
                    None => router.kind_streams(bus, k),
                })
                .collect();
            let on_bus = kinds.iter().any(|k| self.inner.router.bus_of(k) == bus);
            if !on_bus {
                continue;
            }
            streams.dedup();
            streams.push(self.inner.router.priority_stream(bus));
            // The priority lane has a reader of its own, never behind bulk traffic.
            let lanes = [
                streams[..streams.len() - 1].to_vec(),
                vec![streams[streams.len() - 1].clone()],
            ];
            for (i, lane) in lanes.into_iter().enumerate().filter(|(_, l)| !l.is_empty()) {
                let priority = i == 1;
                // The readers of one lane (this bus and, with failover, its mirror on the other
                // bus) hand messages to the handler one batch at a time: around a switch both
                // hold messages of the same sources, and per-source order must survive it.
                let turn = Arc::new(tokio::sync::Mutex::new(()));
                if self.inner.failover.settings.enabled {
                    // While this bus is down its traffic arrives on the other one, under the
                    // same keys: read there too (the groups exist before they are needed).
                    plan.push((bus.other(), lane.clone(), turn.clone(), priority));
                }
                plan.push((bus, lane, turn, priority));
            }
        }
        let handler = Arc::new(handler);
        let dedup = Arc::new(Mutex::new(SourceDedup::new(
            self.inner.cfg.delivery.dedup_window,
        )));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(SubscriptionStats::default());
        let mut tasks = Vec::new();
        // One (stream, group, consumer) is read by one subscription: a second one would split
        // the messages with the first, each acknowledging what its filter skips.
        let consumer = opts
            .consumer
            .clone()
            .unwrap_or_else(|| self.inner.inst.clone());
        let mine: Vec<Claim> = plan
            .iter()
            .flat_map(|(bus, streams, _, _)| {
                streams
                    .iter()
                    .map(|s| (bus.index(), s.clone(), opts.group.clone(), consumer.clone()))
            })
            .collect();
        {
            let mut claimed = self.inner.claims.lock();
            if let Some((_, stream, group, consumer)) = mine.iter().find(|k| claimed.contains(*k)) {
                return Err(BusError::Config(format!(
                    "group {group:?} consumer {consumer:?} already reads {stream} in another \
                     subscription of this client; give this subscription its own group"
                )));
            }
            claimed.extend(mine.iter().cloned());
        }
        // Released if subscribing fails below; handed to the subscription otherwise.
        let mut guard = ClaimGuard {
            claims: self.inner.claims.clone(),
            mine: Some(mine),
        };
        for (bus, streams, turn, priority) in plan {
            let spec = self.spec(&opts, streams, bus);
            // The priority lane's reader lives on the priority thread, and so does everything
            // its transport drives (a Redis connection is served by the runtime it was made on).
            let own_thread = priority && self.inner.cfg.delivery.priority_thread;
            let transport = self.inner.transports[bus.index()].clone();
            let sub = if own_thread {
                let (spec, transport) = (spec.clone(), transport.clone());
                priority_runtime(self.inner.cfg.delivery.priority_realtime)?
                    .spawn(async move { transport.subscribe(spec).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(SubscribeError::Unavailable(format!(
                            "the priority-lane thread failed: {e}"
                        )))
                    })
            } else {
                transport.subscribe(spec.clone()).await
            }
            .map_err(|source| BusError::Subscribe { bus, source })?;
            let reader = Reader {
                bus,
                group: spec.group.clone(),
                counters: self.inner.counters.clone(),
                handler: handler.clone(),
                filter: Some(filter.clone()),
                dedup: dedup.clone(),
                turn,
                stats: stats.clone(),
                mode: spec.mode,
                batch_max: opts
                    .batch_max
                    .unwrap_or(self.inner.cfg.delivery.batch_max as usize),
            };
            let run = supervise(reader, sub, transport, spec, stop_rx.clone());
            tasks.push(if own_thread {
                priority_runtime(self.inner.cfg.delivery.priority_realtime)?.spawn(run)
            } else {
                tokio::spawn(run)
            });
        }
        Ok(Subscription {
            stop: stop_tx,
            tasks,
            stats,
            claims: Some((
                self.inner.claims.clone(),
                guard.mine.take().unwrap_or_default(),
            )),
        })
    }
}

/// Runs a reader for as long as its subscription lives. A reader that panics outside its
/// handler (the handler's own panics are caught per message) loses the batch it held, whose
/// messages come back after the idle timeout as any unacknowledged message does; the panic is
/// logged, counted (`restarted`) and the reader starts again on a new subscriber of the same
/// group and consumer.
async fn supervise<H: Handler>(
    reader: Reader<H>,
    mut sub: Box<dyn dualbus_core::Subscriber>,
    transport: Arc<dyn dualbus_core::Transport>,
    spec: dualbus_core::SubscribeSpec,
    stop: watch::Receiver<bool>,
) {
    use futures_util::FutureExt;
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        let run = std::panic::AssertUnwindSafe(reader.clone().run(sub, stop.clone()));
        let Err(p) = run.catch_unwind().await else {
            return;
        };
        reader.stats.restarted.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            bus = %reader.bus,
            group = %reader.group,
            "a reader panicked: {}; its batch comes back after the idle timeout; starting it \
             again",
            super::reader::panic_text(&*p)
        );
        sub = loop {
            if *stop.borrow() {
                return;
            }
            match transport.subscribe(spec.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(bus = %reader.bus, group = %reader.group, error = %e, "restarting a reader failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
            }
        };
    }
}

fn kinds_of_patterns(patterns: &[Pattern], cfg: &Config) -> Result<Vec<EventKind>, BusError> {
    let mut kinds: Vec<EventKind> = Vec::new();
    for p in patterns {
        match p.literal_first_segment() {
            Some(name) => {
                let k = EventKind::parse(name).map_err(|e| {
                    BusError::Config(format!(
                        "pattern {p}: its first segment must name a kind: {e}"
                    ))
                })?;
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            None => {
                for k in EventKind::KNOWN
                    .iter()
                    .cloned()
                    .chain(cfg.routes.keys().filter_map(|k| EventKind::parse(k).ok()))
                {
                    if !kinds.contains(&k) {
                        kinds.push(k);
                    }
                }
            }
        }
    }
    if kinds.is_empty() {
        return Err(BusError::Config(
            "a subscription needs at least one pattern or kind".into(),
        ));
    }
    Ok(kinds)
}

/// One reader of a subscription: its bus, its streams, the turn it shares with the readers of
/// the same lane, and whether it reads the priority lane.
type ReaderPlan = (BusId, Vec<StreamKey>, Arc<tokio::sync::Mutex<()>>, bool);

/// The messages a subscription handles: of its kinds, on a topic one of its patterns matches.
pub(super) struct Filter {
    kinds: Vec<EventKind>,
    patterns: Vec<Pattern>,
}

impl Filter {
    pub(super) fn accepts(&self, env: &Envelope) -> bool {
        self.kinds.contains(&env.kind)
            && (self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(&env.topic)))
    }
}
