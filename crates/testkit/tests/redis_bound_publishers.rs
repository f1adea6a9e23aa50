//! A reliable group's bound with several publishing processes on Redis: each publisher checks
//! the group's backlog at the broker at least once per slice of the bound
//! (`ceil(bound / ADMISSION_SLICE)`) it admits, so with `P` publishers the group holds at most
//! `bound + (P - 1) * slice`, and every message still arrives once the consumer reads.

use dualbus_bus::{BusId, DualBus};
use dualbus_core::{Backpressure, EventKind, Priority, SubscribeSpec, Transport};
use dualbus_redis::{RedisOptions, RedisTransport, ADMISSION_SLICE};
use dualbus_testkit::{redis_client, RedisServer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const PUBLISHERS: u64 = 3;
const EACH: u64 = 1000;
const BOUND: u64 = 160;

async fn client(server: &RedisServer, name: &str) -> (DualBus, Arc<RedisTransport>) {
    let opts = |bus: &str| RedisOptions::new(bus, &server.url());
    let (bus, _, logic) = redis_client(name, opts("md"), opts("logic"), None).await;
    (bus, logic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_publishers_overfill_a_group_by_at_most_a_slice_each() {
    let server = RedisServer::start().unwrap();
    // The consumer subscribes (its group records the bound) and does not read yet: alive, but
    // stalled.
    let (consumer, logic) = client(&server, "ws").await;
    let stream = consumer
        .route(&EventKind::AnalyticsResult, Priority::Normal)
        .stream;
    let mut spec = SubscribeSpec::new(
        "ws",
        "ws-1",
        vec![stream.clone()],
        consumer.router().dead_stream(BusId::Logic),
    );
    spec.queue_bound = BOUND as usize;
    spec.backpressure = Backpressure::Block;
    let mut sub = logic.subscribe(spec).await.unwrap();
    // Three publishing "processes" (each with its own transports), each sending 1000.
    // They start together, so their first checks at the broker see the same empty group.
    let start = Arc::new(tokio::sync::Barrier::new(PUBLISHERS as usize));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, _) = client(&server, &format!("analytics-{p}")).await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for n in 0..EACH {
                bus.publish(
                    EventKind::AnalyticsResult,
                    "analytics_result.pnl",
                    &json!({ "p": p, "n": n }),
                )
                .await
                .unwrap();
            }
        }));
    }
    // Wait until they are all held: the stream stops growing.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut last = u64::MAX;
    let held = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let len: u64 = redis::cmd("XLEN")
            .arg(&*stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        if len == last {
            break len;
        }
        last = len;
    };
    let slice = BOUND.div_ceil(ADMISSION_SLICE);
    assert!(
        held >= BOUND,
        "the publishers stop at the bound, not before: {held}"
    );
    assert!(
        held <= BOUND + (PUBLISHERS - 1) * slice,
        "{held} held: more than the bound {BOUND} plus a slice ({slice}) per other publisher"
    );
    assert!(tasks.iter().all(|t| !t.is_finished()), "all are held");
    // The consumer reads: everything arrives, once.
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        while (got.len() as u64) < PUBLISHERS * EACH {
            let b = sub.next_batch(100).await.unwrap();
            let ids: Vec<_> = b.deliveries.iter().map(|d| (d.stream, d.id)).collect();
            for d in &b.deliveries {
                let v = d.envelope.enc.to_json_value(&d.envelope.payload).unwrap();
                got.push((v["p"].as_u64().unwrap(), v["n"].as_u64().unwrap()));
            }
            sub.ack(&ids).await.unwrap();
        }
    })
    .await;
    r.expect("every message arrives");
    for t in tasks {
        t.await.unwrap();
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len() as u64, PUBLISHERS * EACH);
}
