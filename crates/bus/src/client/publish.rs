//! Publishing: stamping envelopes, checking the kinds a client may publish, and sending each run
//! of one stream on its bus.

use super::{BusError, DualBus};
use crate::config::BusId;
use crate::route::{is_priority, Route};
use bytes::Bytes;
use dualbus_core::{Confirm, Encoding, Envelope, EventKind, Priority, Topic};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl DualBus {
    /// Builds an envelope from this client: next sequence number, current time.
    ///
    /// # Errors
    /// [`BusError::TopicKindMismatch`] when the topic does not start with the kind's name.
    pub fn stamp(
        &self,
        kind: EventKind,
        topic: Topic,
        prio: Priority,
        enc: Encoding,
        payload: Bytes,
    ) -> Result<Envelope, BusError> {
        if !topic.starts_with_segment(kind.as_str()) {
            return Err(BusError::TopicKindMismatch {
                topic: topic.to_string(),
                kind: kind.to_string(),
            });
        }
        Ok(Envelope {
            kind,
            topic,
            src: self.inner.src.clone(),
            inst: self.inner.inst.clone(),
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
            ts: dualbus_core::now_unix_nanos(),
            prio,
            enc,
            corr: None,
            reply: None,
            payload,
        })
    }

    /// Encodes `payload` with the configured encoding and stamps an envelope.
    ///
    /// # Errors
    /// Bad topic, topic/kind mismatch, or a payload that does not encode.
    pub fn envelope<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        prio: Priority,
        payload: &T,
    ) -> Result<Envelope, BusError> {
        let topic = Topic::new(topic)?;
        let bytes = self.inner.enc.encode(payload)?;
        self.stamp(kind, topic, prio, self.inner.enc, bytes)
    }

    /// Publishes a payload at normal priority; returns once it is queued.
    ///
    /// # Errors
    /// See [`DualBus::envelope`] and [`DualBus::publish_batch`].
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        payload: &T,
    ) -> Result<(), BusError> {
        let env = self.envelope(kind, topic, Priority::Normal, payload)?;
        self.publish_envelope(env).await
    }

    /// Publishes one envelope; returns once it is queued.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus.
    pub async fn publish_envelope(&self, env: Envelope) -> Result<(), BusError> {
        self.send(vec![env], Confirm::Queued).await
    }

    /// Publishes one envelope; returns once the broker has it.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus.
    pub async fn publish_confirmed(&self, env: Envelope) -> Result<(), BusError> {
        self.send(vec![env], Confirm::Broker).await
    }

    /// Publishes envelopes in order; consecutive envelopes for one stream go in one transport
    /// call. Returns once all are queued.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus; envelopes before the failing run were published.
    pub async fn publish_batch(&self, envs: Vec<Envelope>) -> Result<(), BusError> {
        self.send(envs, Confirm::Queued).await
    }

    fn check_declared(&self, envs: &[Envelope]) -> Result<(), BusError> {
        let Some(allowed) = &self.publishes else {
            return Ok(());
        };
        match envs.iter().find(|e| !allowed.contains(&e.kind)) {
            None => Ok(()),
            Some(e) => Err(BusError::Undeclared {
                src: self.inner.src.to_string(),
                kind: e.kind.to_string(),
                declared: if allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    allowed
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    async fn send(&self, envs: Vec<Envelope>, confirm: Confirm) -> Result<(), BusError> {
        let Some(first) = envs.first() else {
            return Ok(());
        };
        self.check_declared(&envs)?;
        let router = &self.inner.router;
        let lane = is_priority(&first.kind, first.prio);
        if envs
            .iter()
            .all(|e| e.kind == first.kind && is_priority(&e.kind, e.prio) == lane)
            && (lane || !router.is_partitioned(&first.kind))
        {
            // One stream: hand the batch over as it is.
            let route = router.route(&first.kind, first.prio);
            return self.send_run(&route, envs, confirm).await;
        }
        // Several streams (kinds, lanes, partitions): one run per stream, each in the batch's
        // order, sent in the order the streams first appear.
        let mut runs: Vec<(Route, Vec<Envelope>)> = Vec::new();
        for env in envs {
            let route = router.route_topic(&env.kind, env.prio, env.topic.as_str());
            match runs
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(&r.stream, &route.stream) || r.stream == route.stream)
            {
                Some((_, run)) => run.push(env),
                None => runs.push((route, vec![env])),
            }
        }
        for (route, run) in runs {
            self.send_run(&route, run, confirm).await?;
        }
        Ok(())
    }

    /// Publishes a run of envelopes of one stream on its bus (or, with failover, on the bus
    /// that carries its traffic now) and counts it there.
    pub(super) async fn send_run(
        &self,
        route: &Route,
        run: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), BusError> {
        if run.is_empty() {
            return Ok(());
        }
        let n = run.len() as u64;
        let count = |bus: BusId| {
            self.inner.counters[bus.index()]
                .published
                .0
                .fetch_add(n, Ordering::Relaxed);
        };
        let fo = &self.inner.failover;
        if !fo.settings.enabled {
            self.inner.transports[route.bus.index()]
                .publish(&route.stream, run, confirm)
                .await
                .map_err(|source| BusError::Publish {
                    bus: route.bus,
                    source,
                })?;
            count(route.bus);
            return Ok(());
        }
        fo.publish(&self.inner.transports, route, run, confirm, count)
            .await
    }
}
