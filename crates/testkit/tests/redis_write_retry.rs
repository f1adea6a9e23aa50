//! A write whose answer does not come in time (a broker frozen or swamped past the response
//! timeout) may still have been applied: the broker answers it later. The writer must not
//! append it again on its retry, or a broker that stays slow gets every batch several times
//! over, which slows it further (the soak saw a publisher's retries append one range of
//! messages over and over, long after it stopped publishing).

use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_redis::RedisOptions;
use dualbus_testkit::{redis_client, RedisServer};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const STREAM: &str = "dualbus:logic:analytics_result";

async fn client(server: &RedisServer) -> DualBus {
    // A response timeout of 1 s (the writer's floor).
    let opts = |bus: &str| RedisOptions {
        connect_timeout: Duration::from_millis(200),
        ..RedisOptions::new(bus, &server.url())
    };
    let mut cfg = dualbus_bus::Config::default();
    cfg.failover.enabled = dualbus_bus::FailoverMode::Off;
    redis_client("analytics", opts("md"), opts("logic"), Some(cfg))
        .await
        .0
}

async fn publish(bus: &DualBus, from: u64, to: u64) {
    for i in from..to {
        bus.publish(
            EventKind::AnalyticsResult,
            "analytics_result.pnl",
            &json!({ "n": i }),
        )
        .await
        .unwrap();
    }
}

/// Each `seq` of source `src` on the stream, with how many entries carry it.
fn seqs(server: &RedisServer, src: &str) -> HashMap<u64, u64> {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let mut out = HashMap::new();
    for (_, fields) in entries {
        if !fields.iter().any(|(k, v)| k == "src" && v == src) {
            continue;
        }
        let seq = fields
            .iter()
            .find(|(k, _)| k == "seq")
            .map(|(_, v)| v.parse::<u64>().unwrap())
            .expect("every entry has a seq");
        *out.entry(seq).or_default() += 1;
    }
    out
}

/// Freezes the broker past the response timeout with messages `from..to` queued, then thaws it
/// and waits until the writer has written everything.
async fn freeze_while_publishing(server: &RedisServer, bus: &DualBus, from: u64, to: u64) {
    server.pause();
    publish(bus, from, to).await;
    // The writer's pipeline waits for its answer past the 1 s response timeout, and its
    // retries too, while the broker is frozen.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.resume();
    tokio::time::timeout(
        Duration::from_secs(60),
        bus.transport(dualbus_bus::BusId::Logic).flush(),
    )
    .await
    .expect("the queue is written once the broker answers")
    .unwrap();
}

/// Asserts `n` messages of source `src` are on the stream, each once.
async fn each_once(server: &RedisServer, src: &str, n: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = seqs(server, src);
    while (got.len() as u64) < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = seqs(server, src);
    }
    let twice = got.values().filter(|&&k| k > 1).count();
    let entries: u64 = got.values().sum();
    assert_eq!(got.len() as u64, n, "every message on the stream");
    assert_eq!(
        (entries, twice),
        (n, 0),
        "each message once: {entries} entries for {n} messages"
    );
}

/// The writer knows the last entry the broker confirmed to it: it reads back to there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_after_its_timeout_is_not_appended_again() {
    let server = RedisServer::start().unwrap();
    let bus = client(&server).await;
    // One publish first, so the next ones are only queued (no question to the broker first).
    publish(&bus, 0, 1).await;
    bus.transport(dualbus_bus::BusId::Logic)
        .flush()
        .await
        .unwrap();
    freeze_while_publishing(&server, &bus, 1, 3001).await;
    each_once(&server, "analytics", 3001).await;
}

/// A writer the broker never confirmed an entry to (its only earlier entry was refused) has no
/// entry to read back to: it reads back from the end of the stream, past another publisher's
/// entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_no_confirmed_entry_before_it_is_not_appended_again() {
    let server = RedisServer::start().unwrap();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let bus = client(&server).await;
    let bus = bus.sibling_starting_at("risk", "risk-1", 0).unwrap();
    // Its first entry is refused (the key holds a string), so it has no confirmed entry; the
    // publish teaches it the stream's bounds, so the next ones are only queued.
    let _: () = redis::cmd("SET")
        .arg(STREAM)
        .arg("not a stream")
        .query(&mut c)
        .unwrap();
    publish(&bus, 0, 1).await;
    let _ = bus.transport(dualbus_bus::BusId::Logic).flush().await;
    let _: () = redis::cmd("DEL").arg(STREAM).query(&mut c).unwrap();
    let other = client(&server).await;
    publish(&other, 0, 500).await;
    other
        .transport(dualbus_bus::BusId::Logic)
        .flush()
        .await
        .unwrap();
    freeze_while_publishing(&server, &bus, 1, 2001).await;
    each_once(&server, "risk", 2000).await;
    each_once(&server, "analytics", 500).await;
}

/// A question the broker can never answer (the stream's key holds a string) does not hold the
/// writer: the write is sent again whole, refused entry by entry, and the queue moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_the_broker_cannot_answer_does_not_hold_the_writer() {
    let server = RedisServer::start().unwrap();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(STREAM)
        .arg("not a stream")
        .query(&mut c)
        .unwrap();
    let bus = client(&server).await;
    publish(&bus, 0, 1).await;
    let logic = bus.transport(dualbus_bus::BusId::Logic);
    let _ = logic.flush().await;
    freeze_while_publishing(&server, &bus, 1, 11).await;
    assert_eq!(logic.stats().refused, 11, "every entry refused, none held");
}
