//! A Redis client dropped with publishes still queued: its writer writes them all the same
//! (nothing is lost because the last handle went away first), and when the broker does not
//! take them in time it says how many are lost, with an error in the log.

use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_redis::{RedisOptions, RedisTransport};
use dualbus_testkit::RedisServer;
use parking_lot::Mutex;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged at warning or above by any thread of this test binary (the writer runs on
/// the transport's own thread, so the subscriber is the global one).
fn log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let c = Captured(Default::default());
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

async fn client(server: &RedisServer, connect_timeout: Duration) -> DualBus {
    let connect = |bus: &str| {
        let mut o = RedisOptions::new(bus, &server.url());
        o.connect_timeout = connect_timeout;
        RedisTransport::connect(o)
    };
    let md = Arc::new(connect("md").await.unwrap());
    let logic = Arc::new(connect("logic").await.unwrap());
    DualBus::builder("analytics")
        .transports(md, logic)
        .first_seq(1)
        .build()
        .unwrap()
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
        let text = String::from_utf8_lossy(&log.0.lock()).into_owned();
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
