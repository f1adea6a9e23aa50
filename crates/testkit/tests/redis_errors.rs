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
