//! `drop_oldest` on Redis under concurrent readers: a publisher drops a group's oldest messages
//! (acknowledging pending ones, moving the cursor past unread ones) while three consumers of
//! the group read. Nothing may be given twice (a cursor moved back re-delivers), and at the end
//! the group has read or skipped every entry (its `entries-read` is the stream's count).

use dualbus_bus::BusId;
use dualbus_core::{Backpressure, EventKind, Priority, SubscribeSpec, Subscriber, Transport};
use dualbus_redis::RedisOptions;
use dualbus_testkit::{redis_client, RedisServer};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_under_concurrent_readers_gives_nothing_twice() {
    let server = RedisServer::start().unwrap();
    let opts = |bus: &str| RedisOptions::new(bus, &server.url());
    let (bus, _, logic) = redis_client("analytics", opts("md"), opts("logic"), None).await;
    let stream = bus
        .route(&EventKind::AnalyticsResult, Priority::Normal)
        .stream;
    let mut readers = Vec::new();
    let seen: Arc<Mutex<Vec<u64>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    for c in 0..3 {
        let mut spec = SubscribeSpec::new(
            "ws",
            format!("ws-{c}").as_str(),
            vec![stream.clone()],
            bus.router().dead_stream(BusId::Logic),
        );
        spec.queue_bound = 20;
        spec.backpressure = Backpressure::DropOldest;
        let mut sub: Box<dyn Subscriber> = logic.subscribe(spec).await.unwrap();
        let seen = seen.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let Ok(Ok(b)) =
                    tokio::time::timeout(Duration::from_millis(100), sub.next_batch(7)).await
                else {
                    continue;
                };
                let ids: Vec<_> = b.deliveries.iter().map(|d| (d.stream, d.id)).collect();
                seen.lock().extend(b.deliveries.iter().map(|d| {
                    d.envelope.enc.to_json_value(&d.envelope.payload).unwrap()["n"]
                        .as_u64()
                        .unwrap()
                }));
                sub.ack(&ids).await.unwrap();
                // Slower than the publisher, so the bound is reached over and over.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sub.close().await.unwrap();
        }));
    }
    // Publish faster than the readers take: the bound of 20 is hit over and over.
    for n in 0..N {
        let e = bus
            .envelope(
                EventKind::AnalyticsResult,
                "analytics_result.pnl",
                Priority::Normal,
                &json!({ "n": n }),
            )
            .unwrap();
        if n % 50 == 49 {
            bus.publish_confirmed(e).await.unwrap();
        } else {
            bus.publish_envelope(e).await.unwrap();
        }
    }
    // Let the readers take what is left, then stop them.
    let conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let group = || async {
        let v: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&*stream)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let redis::Value::Array(groups) = v else {
            panic!("{v:?}")
        };
        let redis::Value::Array(fields) = &groups[0] else {
            panic!("{groups:?}")
        };
        let get = |name: &str| {
            let i = fields
                .iter()
                .position(|f| matches!(f, redis::Value::BulkString(b) if b == name.as_bytes()))
                .unwrap();
            match &fields[i + 1] {
                redis::Value::Int(x) => Some(*x as u64),
                _ => None,
            }
        };
        (get("entries-read"), get("lag"), get("pending"))
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while group().await.1 != Some(0) || group().await.2 != Some(0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the readers drain the group");
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let mut ns = seen.lock().clone();
    let given = ns.len();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns.len(), given, "a message was given twice");
    let dropped = logic.stats().dropped;
    assert!(dropped > 0, "the bound was reached");
    // Every entry was read or skipped, once: the group's counter is the stream's.
    let added: u64 = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&*stream)
        .query_async::<redis::Value>(&mut conn.clone())
        .await
        .map(|v| {
            let redis::Value::Array(f) = v else { panic!() };
            let i = f
                .iter()
                .position(|x| matches!(x, redis::Value::BulkString(b) if b == b"entries-added"))
                .unwrap();
            match f[i + 1] {
                redis::Value::Int(x) => x as u64,
                _ => panic!(),
            }
        })
        .unwrap();
    assert_eq!(added, N);
    assert_eq!(group().await.0, Some(N), "entries-read");
    // What was given plus what was dropped unread covers everything (a pending message
    // dropped was given too, so the sum may exceed N by those).
    assert!(
        given as u64 + dropped >= N,
        "given {given} + dropped {dropped} < {N}"
    );
}
