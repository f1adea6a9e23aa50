//! Request/reply: a request carries a correlation id and the requester's reply stream; the
//! requester's reply reader hands each reply to the request waiting for it.

use super::reader::Reader;
use super::{
    BusError, DualBus, Handler, HandlerError, RequestError, SubscribeOptions, Subscription,
    SubscriptionStats,
};
use crate::config::BusId;
use crate::route::{Lane, Route};
use dualbus_core::dedup::SourceDedup;
use dualbus_core::{Confirm, Envelope, EventKind, Mode, Priority, StartFrom};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The requests waiting for a reply, by correlation id.
pub(super) type Waiters = Arc<Mutex<HashMap<Arc<str>, oneshot::Sender<Envelope>>>>;

struct WaiterGuard<'a> {
    waiting: &'a Waiters,
    corr: Arc<str>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiting.lock().remove(&self.corr);
    }
}

impl DualBus {
    /// Sends a request and waits for its reply (default timeout from the config).
    ///
    /// # Errors
    /// [`RequestError::Timeout`] when no reply arrives in time; [`RequestError::Bus`] when the
    /// request could not be sent.
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        payload: &T,
        timeout: Option<Duration>,
    ) -> Result<Envelope, RequestError> {
        let mut env = self.envelope(kind, topic, Priority::Normal, payload)?;
        let bus = self.inner.router.bus_of(&env.kind);
        self.ensure_reply_reader(bus).await?;
        let corr: Arc<str> = Arc::from(format!(
            "{}:{}",
            self.inner.inst,
            self.inner.corr_seq.fetch_add(1, Ordering::Relaxed)
        ));
        env.corr = Some(corr.clone());
        env.reply = Some(self.inner.router.reply_stream(bus, &self.inner.inst));
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.lock().insert(corr.clone(), tx);
        // Removes the waiter however this call ends: reply, timeout, error or cancellation.
        let _waiter = WaiterGuard {
            waiting: &self.inner.waiting,
            corr,
        };
        let after = timeout.unwrap_or(self.inner.cfg.request_timeout());
        let (kind, topic) = (env.kind.to_string(), env.topic.to_string());
        self.publish_envelope(env).await?;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(RequestError::Timeout { kind, topic, after }),
        }
    }

    /// Answers a request: publishes `payload` to the request's reply stream, with its
    /// correlation id.
    ///
    /// # Errors
    /// [`BusError::NotARequest`] when `request` has no reply stream or correlation id;
    /// [`BusError::BadReplyStream`] when the stream it names is not a requester's reply stream
    /// (a forged request must not make the replier write to a market-data or order stream).
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        request: &Envelope,
        payload: &T,
    ) -> Result<(), BusError> {
        let (Some(reply), Some(corr)) = (&request.reply, &request.corr) else {
            return Err(BusError::NotARequest { id: request.id() });
        };
        if !self.inner.router.is_reply_stream(reply) {
            return Err(BusError::BadReplyStream {
                id: request.id(),
                stream: reply.to_string(),
            });
        }
        let mut env = self.stamp(
            request.kind.clone(),
            request.topic.clone(),
            request.prio,
            self.inner.enc,
            self.inner.enc.encode(payload)?,
        )?;
        env.corr = Some(corr.clone());
        let bus = self.inner.router.bus_of(&request.kind);
        let route = Route {
            bus,
            lane: Lane::Normal,
            stream: reply.clone(),
        };
        self.send_run(&route, vec![env], Confirm::Queued).await
    }

    async fn ensure_reply_reader(&self, bus: BusId) -> Result<(), BusError> {
        self.inner.reply_readers[bus.index()]
            .get_or_try_init(|| async {
                let stream = self.inner.router.reply_stream(bus, &self.inner.inst);
                let mut opts = SubscribeOptions::new(&self.inner.inst, &[])
                    .expect("no patterns")
                    .mode(Mode::Reliable)
                    .start(StartFrom::Oldest);
                opts.consumer = Some(self.inner.inst.clone());
                let (stop_tx, stop_rx) = watch::channel(false);
                let stats = Arc::new(SubscriptionStats::default());
                let dedup = Arc::new(Mutex::new(SourceDedup::new(
                    self.inner.cfg.delivery.dedup_window,
                )));
                let mut buses = vec![bus];
                if self.inner.failover.settings.enabled {
                    // Replies to requests sent during an outage arrive on the other bus.
                    buses.push(bus.other());
                }
                let mut tasks = Vec::new();
                let turn = Arc::new(tokio::sync::Mutex::new(()));
                for b in buses {
                    let spec = self.spec(&opts, vec![stream.clone()], b);
                    let sub = self.inner.transports[b.index()]
                        .subscribe(spec)
                        .await
                        .map_err(|source| BusError::Subscribe { bus: b, source })?;
                    let reader = Reader {
                        bus: b,
                        group: Arc::from("replies"),
                        counters: self.inner.counters.clone(),
                        handler: Arc::new(ReplyHandler(self.inner.waiting.clone())),
                        filter: None,
                        dedup: dedup.clone(),
                        turn: turn.clone(),
                        stats: stats.clone(),
                        mode: Mode::Reliable,
                        batch_max: 64,
                    };
                    tasks.push(tokio::spawn(reader.run(sub, stop_rx.clone())));
                }
                Ok::<_, BusError>(Subscription {
                    stop: stop_tx,
                    tasks,
                    stats,
                    claims: None,
                })
            })
            .await?;
        Ok(())
    }
}

/// Hands each reply to the request waiting for it.
struct ReplyHandler(Waiters);

impl Handler for ReplyHandler {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        if let Some(corr) = &msg.corr {
            match self.0.lock().remove(corr) {
                Some(tx) => {
                    let _ = tx.send(msg.clone());
                }
                None => tracing::debug!(corr = %corr, "reply arrived after its request timed out"),
            }
        }
        std::future::ready(Ok(()))
    }
}
