//! A heartbeat that times out means a hung broker only if the broker answers nothing else
//! either: a busy broker (a flood, a starved machine) keeps its traffic.

use async_trait::async_trait;
use dualbus_bus::{BusId, Config, DualBus, FailoverMode};
use dualbus_core::transport::{GroupBacklog, StreamKey};
use dualbus_core::{
    Confirm, DeadLetter, Envelope, Health, PublishError, ReceiveError, SubscribeError,
    SubscribeSpec, Subscriber, Transport, TransportStats,
};
use dualbus_memory::MemoryTransport;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The embedded transport, with a heartbeat that can be made slow and a switch for whether
/// the "broker" still answers other commands.
struct SlowHeartbeat {
    inner: MemoryTransport,
    slow: AtomicBool,
    answering: AtomicBool,
}

#[async_trait]
impl Transport for SlowHeartbeat {
    fn name(&self) -> &'static str {
        "slow-heartbeat"
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
        self.inner.subscribe(spec).await
    }
    async fn health(&self) -> Health {
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Health::Up
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
    fn answered_since(&self, _at: Instant) -> bool {
        self.answering.load(Ordering::SeqCst)
    }
}

async fn failovers_with_a_slow_heartbeat(answering: bool) -> u64 {
    let md = Arc::new(SlowHeartbeat {
        inner: MemoryTransport::new(),
        slow: AtomicBool::new(false),
        answering: AtomicBool::new(answering),
    });
    let logic = Arc::new(MemoryTransport::new());
    let mut cfg = Config::default();
    cfg.failover.enabled = FailoverMode::On;
    let bus = DualBus::builder("hub")
        .config(cfg)
        .transports(md.clone(), logic)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    md.slow.store(true, Ordering::SeqCst);
    // Several heartbeat timeouts (100 ms each).
    tokio::time::sleep(Duration::from_millis(700)).await;
    bus.failover_counters(BusId::MarketData).failovers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_broker_that_still_answers_keeps_its_traffic() {
    assert_eq!(failovers_with_a_slow_heartbeat(true).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_answers_nothing_is_failed_over() {
    assert_eq!(failovers_with_a_slow_heartbeat(false).await, 1);
}
