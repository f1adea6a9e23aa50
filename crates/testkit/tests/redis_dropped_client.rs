//! A Redis client dropped with publishes still queued: its writer writes them all the same
//! (nothing is lost because the last handle went away first), and when the broker does not
//! take them in time it says how many are lost, with an error in the log.

use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_redis::RedisOptions;
use dualbus_testkit::{redis_client, CapturedLog, RedisServer};
use serde_json::json;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Everything logged at warning or above by any thread of this test binary (the writer runs on
/// the transport's own thread, so the subscriber is the global one).
fn log() -> &'static CapturedLog {
    static LOG: OnceLock<CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let c = CapturedLog::default();
        let w = c.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        c
    })
}

/// A client whose two buses are one server, failover off: with it on, a bus marked down under
/// the load would re-send its window to the "other" bus, the same server and stream.
async fn client(server: &RedisServer, connect_timeout: Duration) -> DualBus {
    let opts = |bus: &str| RedisOptions {
        connect_timeout,
        ..RedisOptions::new(bus, &server.url())
    };
    let mut cfg = dualbus_bus::Config::default();
    cfg.failover.enabled = dualbus_bus::FailoverMode::Off;
    redis_client("analytics", opts("md"), opts("logic"), Some(cfg))
        .await
        .0
}

async fn publish(bus: &DualBus, n: u64) {
    for i in 0..n {
        bus.publish(
            EventKind::AnalyticsResult,
            "analytics_result.pnl",
            &json!({ "n": i }),
        )
        .await
        .unwrap();
    }
}

fn xlen(server: &RedisServer) -> u64 {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("XLEN")
        .arg("dualbus:logic:analytics_result")
        .query(&mut c)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_with_publishes_queued_still_writes_them() {
    let server = RedisServer::start().unwrap();
    let bus = client(&server, Duration::from_secs(2)).await;
    publish(&bus, 20_000).await;
    // Dropped at once: most of the 20,000 are still in its writer's queue.
    drop(bus);
    let until = Instant::now() + Duration::from_secs(30);
    while xlen(&server) < 20_000 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(xlen(&server), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_while_the_broker_hangs_says_how_many_it_lost() {
    let log = log();
    let server = RedisServer::start().unwrap();
    let bus = client(&server, Duration::from_millis(300)).await;
    // One publish first, so the next ones are only queued (the stream's group bounds are
    // known: no question to the broker before queueing).
    publish(&bus, 1).await;
    bus.transport(dualbus_bus::BusId::Logic)
        .flush()
        .await
        .unwrap();
    server.pause();
    publish(&bus, 10).await;
    drop(bus);
    let until = Instant::now() + Duration::from_secs(30);
    let said = loop {
        let text = log.text();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("lost (flush before dropping"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < until,
            "no word of the lost messages: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.resume();
    assert!(said.contains("lost=10"), "{said}");
    assert!(said.contains("bus=logic"), "{said}");
}
