//! The broker refusing one entry (a key of the wrong type) fails that publish with the
//! broker's reason; the writer keeps going and other streams are written, once each.

use dualbus_bus::{BusError, DualBus};
use dualbus_core::{EventKind, Priority, PublishError};
use dualbus_redis::{RedisOptions, RedisTransport};
use dualbus_testkit::RedisServer;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_fails_its_publish_and_nothing_else() {
    let run = async {
        let md_server = RedisServer::start().unwrap();
        let logic_server = RedisServer::start().unwrap();
        let md = Arc::new(
            RedisTransport::connect(RedisOptions::new("md", &md_server.url()))
                .await
                .unwrap(),
        );
        let logic = Arc::new(
            RedisTransport::connect(RedisOptions::new("logic", &logic_server.url()))
                .await
                .unwrap(),
        );
        let bus = DualBus::builder("strategy")
            .transports(md, logic)
            .first_seq(1)
            .build()
            .unwrap();
        // Someone put a plain string where a stream belongs.
        let client = redis::Client::open(logic_server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("dualbus:logic:strategy_signal")
            .arg("not a stream")
            .query_async(&mut conn)
            .await
            .unwrap();

        let bad = bus
            .envelope(
                EventKind::StrategySignal,
                "strategy_signal.BTC",
                Priority::Normal,
                &json!({"n": 0}),
            )
            .unwrap();
        let err = bus.publish_confirmed(bad).await.unwrap_err();
        match &err {
            BusError::Publish {
                source: PublishError::Broker(why),
                ..
            } => assert!(why.contains("WRONGTYPE"), "{why}"),
            other => panic!("expected a broker error, got {other:?}"),
        }
        // Other streams are still written, exactly once.
        for n in 0..3 {
            let ok = bus
                .envelope(
                    EventKind::OrderRequest,
                    "order_request.BTC",
                    Priority::Normal,
                    &json!({"n": n}),
                )
                .unwrap();
            bus.publish_confirmed(ok).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let len: u64 = redis::cmd("XLEN")
            .arg("dualbus:logic:order_request")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 3);
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

/// A message due for the dead-letter stream while the broker is out of memory (`maxmemory`,
/// `noeviction`: it refuses the copy but would accept the acknowledgement) stays pending,
/// neither copied nor acknowledged, and is dead-lettered once the broker has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_stays_pending() {
    use dualbus_bus::{handler_fn, BusId, HandlerError, SubscribeOptions};
    use std::sync::atomic::{AtomicU64, Ordering};
    let run = async {
        let md_server = RedisServer::start().unwrap();
        let logic_server = RedisServer::start().unwrap();
        let connect = |bus: &'static str, url: String| async move {
            Arc::new(
                RedisTransport::connect(RedisOptions::new(bus, &url))
                    .await
                    .unwrap(),
            )
        };
        let md = connect("md", md_server.url()).await;
        let logic = connect("logic", logic_server.url()).await;
        let bus = DualBus::builder("risk")
            .transports(md, logic)
            .build()
            .unwrap();
        let admin = redis::Client::open(logic_server.url()).unwrap();
        let tries = Arc::new(AtomicU64::new(0));
        let t2 = tries.clone();
        let full = admin.clone();
        let _sub = bus
            .subscribe(
                SubscribeOptions::new("risk", &["strategy_signal.>"])
                    .unwrap()
                    .redelivery(Duration::from_millis(100), 2),
                handler_fn(move |_| {
                    if t2.fetch_add(1, Ordering::SeqCst) == 1 {
                        // The last allowed delivery: the broker fills up before the message
                        // is due for the dead-letter stream.
                        let mut c = full.get_connection().map_err(|e| e.to_string())?;
                        let _: () = redis::cmd("CONFIG")
                            .arg("SET")
                            .arg("maxmemory")
                            .arg("1")
                            .query(&mut c)
                            .map_err(|e| e.to_string())?;
                    }
                    Err(HandlerError::from("price is NaN"))
                }),
            )
            .await
            .unwrap();
        let publisher = bus.sibling("strategy", "strategy-1").unwrap();
        publisher
            .publish(
                EventKind::StrategySignal,
                "strategy_signal.BTC",
                &json!({"n": 0}),
            )
            .await
            .unwrap();
        while tries.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Several sweeps try to dead-letter it and are refused.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg("dualbus:logic:strategy_signal")
            .arg("risk")
            .query_async(&mut conn)
            .await
            .unwrap();
        let redis::Value::Array(summary) = pending else {
            panic!("XPENDING: {pending:?}")
        };
        assert_eq!(
            summary.first(),
            Some(&redis::Value::Int(1)),
            "the refused dead letter must stay pending, not be acknowledged"
        );
        assert!(bus.dead_letters(BusId::Logic, 10).await.unwrap().is_empty());
        assert_eq!(tries.load(Ordering::SeqCst), 2, "not handed out again");
        // Room again: it is dead-lettered, with its reason, and acknowledged.
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut letters = Vec::new();
        while letters.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            letters = bus.dead_letters(BusId::Logic, 10).await.unwrap();
        }
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].group, "risk");
        let pending: u64 = {
            let v: redis::Value = redis::cmd("XPENDING")
                .arg("dualbus:logic:strategy_signal")
                .arg("risk")
                .query_async(&mut conn)
                .await
                .unwrap();
            match v {
                redis::Value::Array(s) => match s.first() {
                    Some(redis::Value::Int(n)) => *n as u64,
                    _ => panic!("{s:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(pending, 0);
        assert_eq!(bus.counters(BusId::Logic).dead_lettered, 1);
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}
