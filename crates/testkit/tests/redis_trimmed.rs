//! `trimmed_unread`: entries a stream trim (`MAXLEN ~`) removed before a reliable group read
//! them are counted, once, per group: in the transport's stats and in `{stream}#trimmed`.
//! Each test checks the count against what the group was really given: every published
//! message is either delivered or counted as trimmed, never both, never neither.

use dualbus_bus::{BusId, DualBus};
use dualbus_core::{Envelope, EventKind, Priority, SubscribeSpec, Subscriber, Transport};
use dualbus_redis::{trimmed_key, RedisOptions, RedisTransport};
use dualbus_testkit::{redis_client, RedisServer};
use serde_json::json;
use std::sync::Arc;

type StreamKey = Arc<str>;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const MAXLEN: u64 = 100;

struct Rig {
    server: RedisServer,
    logic: Arc<RedisTransport>,
    bus: DualBus,
    stream: StreamKey,
}

async fn rig() -> Rig {
    let server = RedisServer::start().unwrap();
    let opts = |bus: &str| RedisOptions {
        maxlen: MAXLEN,
        ..RedisOptions::new(bus, &server.url())
    };
    let (bus, _, logic) = redis_client("analytics", opts("md"), opts("logic"), None).await;
    let stream = bus
        .route(&EventKind::AnalyticsResult, Priority::Normal)
        .stream;
    Rig {
        server,
        logic,
        bus,
        stream,
    }
}

impl Rig {
    /// A reliable consumer of the group `ws`, whose bound never holds the publisher (the
    /// test is about trimming, not admission).
    async fn subscribe(&self, idle: Duration) -> Box<dyn Subscriber> {
        let mut spec = SubscribeSpec::new(
            "ws",
            "ws-1",
            vec![self.stream.clone()],
            self.bus.router().dead_stream(BusId::Logic),
        );
        spec.queue_bound = 1_000_000;
        spec.idle_timeout = idle;
        self.logic.subscribe(spec).await.unwrap()
    }

    /// Publishes `from..to`, the last one confirmed (so all are on the server).
    async fn publish(&self, from: u64, to: u64) {
        for n in from..to {
            let e = self
                .bus
                .envelope(
                    EventKind::AnalyticsResult,
                    "analytics_result.pnl",
                    Priority::Normal,
                    &json!({ "n": n }),
                )
                .unwrap();
            if n + 1 == to {
                self.bus.publish_confirmed(e).await.unwrap();
            } else {
                self.bus.publish_envelope(e).await.unwrap();
            }
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn xlen(&self) -> u64 {
        redis::cmd("XLEN")
            .arg(&*self.stream)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// The group's count in `{stream}#trimmed` (0 when absent).
    async fn recorded(&self) -> u64 {
        let v: Option<u64> = redis::cmd("HGET")
            .arg(trimmed_key(&self.stream))
            .arg("ws")
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        v.unwrap_or(0)
    }

    fn trimmed(&self) -> u64 {
        self.logic.stats().trimmed_unread
    }
}

fn n_of(e: &Envelope) -> u64 {
    e.enc.to_json_value(&e.payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// Reads and acknowledges until `want` returns true for what was read.
async fn read_until(
    sub: &mut Box<dyn Subscriber>,
    ns: &mut Vec<u64>,
    want: impl Fn(&[u64]) -> bool,
) {
    tokio::time::timeout(LIMIT, async {
        while !want(ns) {
            let b = sub.next_batch(50).await.unwrap();
            let ids: Vec<_> = b.deliveries.iter().map(|d| (d.stream, d.id)).collect();
            ns.extend(b.deliveries.iter().map(|d| n_of(&d.envelope)));
            sub.ack(&ids).await.unwrap();
        }
    })
    .await
    .expect("the reads end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_back_after_its_consumers_were_gone_counts_what_was_trimmed_meanwhile() {
    let r = rig().await;
    let mut sub = r.subscribe(Duration::from_secs(30)).await;
    r.publish(0, 5).await;
    let mut ns = Vec::new();
    read_until(&mut sub, &mut ns, |ns| ns.len() >= 5).await;
    sub.close().await.unwrap();
    drop(sub);
    // While the group has no consumer, the stream is trimmed far past it.
    r.publish(5, 1005).await;
    let left = r.xlen().await;
    assert!(left < 1000, "the stream was trimmed ({left} entries left)");
    let lost = 1000 - left;
    assert_eq!(r.trimmed(), 0);
    // The group comes back: the loss is counted before its first read.
    let mut back = r.subscribe(Duration::from_secs(30)).await;
    assert_eq!(r.trimmed(), lost);
    assert_eq!(r.recorded().await, lost);
    let mut got = Vec::new();
    read_until(&mut back, &mut got, |ns| ns.last() == Some(&1004)).await;
    // What it is given is exactly what was left, in order.
    assert_eq!(got, (1005 - left..1005).collect::<Vec<_>>());
    assert_eq!(got.len() as u64 + lost, 1000);
    // Checking again (a sweep, another consumer's start) counts nothing twice.
    back.close().await.unwrap();
    let again = r.subscribe(Duration::from_secs(30)).await;
    assert_eq!(r.trimmed(), lost);
    assert_eq!(r.recorded().await, lost);
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_counts_the_trimmed_gap_at_its_next_sweep() {
    let r = rig().await;
    // Idle 40 ms: a sweep is due every 10 ms, so one runs before the next read.
    let mut sub = r.subscribe(Duration::from_millis(40)).await;
    r.publish(0, 1).await;
    let mut ns = Vec::new();
    read_until(&mut sub, &mut ns, |ns| !ns.is_empty()).await;
    // The consumer stalls (no reads) while 1000 more are published and trimmed.
    r.publish(1, 1001).await;
    let left = r.xlen().await;
    assert!(left < 1000, "the stream was trimmed ({left} entries left)");
    tokio::time::sleep(Duration::from_millis(50)).await;
    read_until(&mut sub, &mut ns, |ns| ns.last() == Some(&1000)).await;
    let lost = 1000 - left;
    assert_eq!(r.trimmed(), lost);
    assert_eq!(r.recorded().await, lost);
    let mut expect = vec![0];
    expect.extend(1001 - left..1001);
    assert_eq!(ns, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_trimmed_while_it_reads_loses_nothing_uncounted() {
    let r = Arc::new(rig().await);
    let mut sub = r.subscribe(Duration::from_millis(40)).await;
    const N: u64 = 3000;
    // The publisher runs ahead of a consumer that reads ten at a time with pauses, so the
    // stream is trimmed under the group while it reads, and its reads jump gaps.
    let p = r.clone();
    let publisher = tokio::spawn(async move {
        for chunk in 0..N / 100 {
            p.publish(chunk * 100, (chunk + 1) * 100).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut ns = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while ns.last() != Some(&(N - 1)) {
            let b = sub.next_batch(10).await.unwrap();
            let ids: Vec<_> = b.deliveries.iter().map(|d| (d.stream, d.id)).collect();
            ns.extend(b.deliveries.iter().map(|d| n_of(&d.envelope)));
            sub.ack(&ids).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
    .await
    .expect("the consumer reaches the last message");
    publisher.await.unwrap();
    // Caught up: the next sweep sees the whole gap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tokio::time::timeout(Duration::from_millis(300), sub.next_batch(10)).await;
    let trimmed = r.trimmed();
    assert!(
        trimmed > 0,
        "the consumer was outrun: something was trimmed"
    );
    // In order, nothing twice, and every message either given or counted.
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    assert_eq!(ns.len() as u64 + trimmed, N);
    assert_eq!(r.recorded().await, trimmed);
}
