//! How the Redis transport's sweep claims what a group left unacknowledged, beyond what the
//! conformance suite checks: entries still backing off never hide the ones after them that are
//! due, a claim counts a delivery, and entries trimmed away while pending are counted as
//! dropped and leave the group's pending list.

use dualbus_bus::{BusId, DualBus};
use dualbus_core::{Envelope, EventKind, Priority, SubscribeSpec, Subscriber, Transport};
use dualbus_redis::{RedisOptions, RedisTransport};
use dualbus_testkit::{redis_client, RedisServer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

type StreamKey = Arc<str>;

/// Hang guard of one wait (not a performance bound).
const LIMIT: Duration = Duration::from_secs(60);

struct Rig {
    server: RedisServer,
    logic: Arc<RedisTransport>,
    bus: DualBus,
    stream: StreamKey,
}

async fn rig() -> Rig {
    let server = RedisServer::start().unwrap();
    let opts = |bus: &str| RedisOptions::new(bus, &server.url());
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
    /// Consumer `consumer` of the group `ws`: idle 100 ms, backing off to a minute, 12
    /// deliveries.
    async fn subscribe(&self, consumer: &str) -> Box<dyn Subscriber> {
        let mut spec = SubscribeSpec::new(
            "ws",
            consumer,
            vec![self.stream.clone()],
            self.bus.router().dead_stream(BusId::Logic),
        );
        spec.queue_bound = 1_000_000;
        spec.idle_timeout = Duration::from_millis(100);
        spec.backoff_max = Duration::from_secs(60);
        spec.max_deliveries = 12;
        self.logic.subscribe(spec).await.unwrap()
    }

    /// Publishes `0..n`, the last one confirmed (so all are on the server).
    async fn publish(&self, n: u64) {
        for k in 0..n {
            let e = self
                .bus
                .envelope(
                    EventKind::AnalyticsResult,
                    "analytics_result.pnl",
                    Priority::Normal,
                    &json!({ "n": k }),
                )
                .unwrap();
            if k + 1 == n {
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

    /// The group's pending entries: (id, deliveries).
    async fn pending(&self) -> Vec<(String, u64)> {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&*self.stream)
            .arg("ws")
            .arg("-")
            .arg("+")
            .arg(10_000)
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        rows.into_iter().map(|(id, _, _, d)| (id, d)).collect()
    }
}

fn n_of(e: &Envelope) -> u64 {
    e.enc.to_json_value(&e.payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// Reads (without acknowledging) until `n` deliveries came.
async fn read(sub: &mut Box<dyn Subscriber>, n: usize) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while out.len() < n {
            let b = sub.next_batch(n - out.len()).await.unwrap();
            out.extend(b.deliveries.iter().map(|d| (n_of(&d.envelope), d.attempt)));
        }
    })
    .await
    .expect("the reads end");
    out
}

/// 300 entries are pending with a dead consumer; the first 200 have been delivered 9 times,
/// so they back off for 25.6 s; the last 100 once, due after 100 ms. Another consumer's
/// sweeps look at 128 pending entries at a time: it must get the last 100 now, each on its
/// second delivery, and none of the first 200 (a sweep that started from the first pending
/// entry every time would only ever see entries still backing off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_backing_off_do_not_hide_the_ones_after_them() {
    let r = rig().await;
    let mut dead = r.subscribe("ws-1").await;
    r.publish(300).await;
    let first = read(&mut dead, 300).await;
    assert_eq!(
        first.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    // As if the first 200 had been delivered 9 times (XCLAIM's RETRYCOUNT sets the count).
    let ids: Vec<String> = r.pending().await.into_iter().map(|p| p.0).collect();
    assert_eq!(ids.len(), 300);
    let mut claim = redis::cmd("XCLAIM");
    claim.arg(&*r.stream).arg("ws").arg("ws-1").arg(0);
    for id in &ids[..200] {
        claim.arg(id);
    }
    claim.arg("RETRYCOUNT").arg(9).arg("JUSTID");
    let _: Vec<String> = claim.query_async(&mut r.conn().await).await.unwrap();

    let mut other = r.subscribe("ws-2").await;
    let got = read(&mut other, 100).await;
    assert_eq!(
        got,
        (200..300).map(|n| (n, 2)).collect::<Vec<_>>(),
        "the due entries, in order, each on its second delivery"
    );
    // The first 200 are still pending with consumer 1, not delivered again.
    let pending = r.pending().await;
    assert_eq!(pending.len(), 300);
    assert!(
        pending[..200].iter().all(|p| p.1 == 9),
        "{:?}",
        &pending[..3]
    );
    assert!(pending[200..].iter().all(|p| p.1 == 2));
}

/// Entries a dead consumer held and a trim removed: the sweep that would have claimed them
/// takes them off the group's pending list and counts them as dropped, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_pending_are_counted_as_dropped() {
    let r = rig().await;
    let mut dead = r.subscribe("ws-1").await;
    r.publish(10).await;
    read(&mut dead, 10).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg(&*r.stream)
        .arg("MAXLEN")
        .arg(4)
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    let before = r.logic.stats().dropped;
    let mut other = r.subscribe("ws-2").await;
    // The 4 entries left come back; the 6 trimmed ones cannot.
    let got = read(&mut other, 4).await;
    assert_eq!(got, (6..10).map(|n| (n, 2)).collect::<Vec<_>>());
    tokio::time::timeout(LIMIT, async {
        while !(r.pending().await.len() == 4 && r.logic.stats().dropped - before >= 6) {
            let _ = other.read_once(10).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the trimmed entries leave the pending list");
    // A few more sweeps count nothing twice.
    for _ in 0..10 {
        let _ = other.read_once(10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(r.logic.stats().dropped - before, 6);
}
