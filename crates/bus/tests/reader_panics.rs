//! A reader that panics outside its handler (a bug in a transport's read path, here one
//! injected on purpose) is started again: the subscription keeps delivering, the batch the
//! dead reader held comes back after the idle timeout, and the restart is counted.

use async_trait::async_trait;
use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::transport::{GroupBacklog, StreamKey};
use dualbus_core::{
    AckError, Batch, Confirm, DeadLetter, EntryId, Envelope, EventKind, Health, PublishError,
    ReceiveError, SubscribeError, SubscribeSpec, Subscriber, Transport, TransportStats,
};
use dualbus_memory::MemoryTransport;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The embedded transport, whose subscribers panic once (the first of them to read a
/// non-empty batch of `strategy_signal` while `armed`), after taking the batch.
struct Panicky {
    inner: MemoryTransport,
    armed: Arc<AtomicBool>,
}

struct PanickySub {
    inner: Box<dyn Subscriber>,
    armed: Arc<AtomicBool>,
}

#[async_trait]
impl Subscriber for PanickySub {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        let b = self.inner.next_batch(max).await?;
        let signals = b
            .deliveries
            .iter()
            .any(|d| d.envelope.kind == EventKind::StrategySignal);
        if signals && self.armed.swap(false, Ordering::SeqCst) {
            panic!("a bug in the read path");
        }
        Ok(b)
    }
    async fn ack(&mut self, ids: &[(u16, EntryId)]) -> Result<(), AckError> {
        self.inner.ack(ids).await
    }
    async fn nack(&mut self, stream: u16, id: EntryId, reason: &str) {
        self.inner.nack(stream, id, reason).await
    }
    async fn close(&mut self) -> Result<(), AckError> {
        self.inner.close().await
    }
}

#[async_trait]
impl Transport for Panicky {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn publish(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), PublishError> {
        self.inner.publish(stream, batch, confirm).await
    }
    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Subscriber>, SubscribeError> {
        Ok(Box::new(PanickySub {
            inner: self.inner.subscribe(spec).await?,
            armed: self.armed.clone(),
        }))
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn dead_letters(
        &self,
        stream: &StreamKey,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ReceiveError> {
        self.inner.dead_letters(stream, max).await
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
    async fn unread(&self, stream: &StreamKey) -> Result<u64, ReceiveError> {
        self.inner.unread(stream).await
    }
    async fn groups(&self, stream: &StreamKey) -> Result<Vec<GroupBacklog>, ReceiveError> {
        self.inner.groups(stream).await
    }
}

#[tokio::test]
async fn a_reader_that_panics_is_started_again_and_loses_nothing() {
    let run = async {
        let armed = Arc::new(AtomicBool::new(true));
        let logic: Arc<dyn Transport> = Arc::new(Panicky {
            inner: MemoryTransport::new(),
            armed: armed.clone(),
        });
        let md: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
        let bus = DualBus::builder("risk")
            .transports(md, logic)
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sub = bus
            .subscribe(
                SubscribeOptions::new("risk", &["strategy_signal.>"])
                    .unwrap()
                    .redelivery(Duration::from_millis(100), 5),
                handler_fn(move |m| {
                    s2.lock().push(m.seq);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        for i in 0..20u64 {
            bus.publish(
                EventKind::StrategySignal,
                "strategy_signal.BTC",
                &serde_json::json!({ "n": i }),
            )
            .await
            .unwrap();
        }
        while seen.lock().len() < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !armed.load(Ordering::SeqCst),
            "the injected panic never fired"
        );
        let mut got = seen.lock().clone();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 20, "every message handled: {got:?}");
        assert_eq!(sub.stats().restarted.load(Ordering::SeqCst), 1);
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the subscription stopped delivering after its reader panicked");
}
