//! Failover between the buses against real `redis-server` processes: a broker killed under
//! load (and restarted empty) loses nothing and duplicates nothing; traffic moves to the other
//! bus and back.

use dualbus_bus::{handler_fn, BusId, DualBus, SubscribeOptions};
use dualbus_core::{Envelope, EventKind, StartFrom};
use dualbus_redis::{RedisOptions, RedisTransport};
use dualbus_testkit::{wait_until, RedisServer};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn transport(bus: &str, url: &str) -> Arc<RedisTransport> {
    let mut opts = RedisOptions::new(bus, url);
    opts.connect_timeout = Duration::from_millis(500);
    Arc::new(RedisTransport::connect(opts).await.expect("connect"))
}

fn n_of(e: &Envelope) -> u64 {
    e.enc.to_json_value(&e.payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketdata_broker_crash_loses_and_duplicates_nothing() {
    let guard = async {
        let mut md_server = RedisServer::start().unwrap();
        let logic_server = RedisServer::start().unwrap();
        let md = transport("md", &md_server.url()).await;
        let logic = transport("logic", &logic_server.url()).await;
        let mk = |src: &str| {
            DualBus::builder(src)
                .transports(md.clone(), logic.clone())
                .first_seq(1)
                .build()
                .unwrap()
        };
        let publisher = mk("hub");
        let consumer = mk("risk");
        let seen: Arc<Mutex<Vec<(EventKind, u64)>>> = Default::default();
        let s2 = seen.clone();
        let _sub = consumer
            .subscribe(
                SubscribeOptions::new("risk", &["market_data.>", "strategy_signal.>"])
                    .unwrap()
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    s2.lock().push((m.kind.clone(), n_of(m)));
                    Ok(())
                }),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        const N: u64 = 3000;
        let start = Instant::now();
        let mut killed = false;
        let mut restarted = false;
        for i in 0..N {
            // ~3 s of steady load: the MarketData broker dies at 1/3, comes back empty at 2/3.
            if i == N / 3 && !killed {
                md_server.kill();
                killed = true;
            }
            if i == 2 * N / 3 && !restarted {
                md_server.restart().unwrap();
                restarted = true;
            }
            publisher
                .publish(
                    EventKind::MarketData,
                    "market_data.trade.BTCUSDT",
                    &json!({"n": i}),
                )
                .await
                .unwrap();
            publisher
                .publish(
                    EventKind::StrategySignal,
                    "strategy_signal.BTCUSDT",
                    &json!({"n": i}),
                )
                .await
                .unwrap();
            let due = start + Duration::from_millis(i);
            tokio::time::sleep_until(due.into()).await;
        }
        wait_until("every message delivered", Duration::from_secs(30), || {
            seen.lock().len() as u64 >= 2 * N
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = seen.lock().clone();
        let mut per_kind: HashMap<EventKind, Vec<u64>> = HashMap::new();
        for (k, n) in seen {
            per_kind.entry(k).or_default().push(n);
        }
        for (k, ns) in &per_kind {
            let mut sorted = ns.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len() as u64,
                N,
                "{k}: lost {}",
                N - sorted.len() as u64
            );
            assert_eq!(
                ns.len() as u64,
                N,
                "{k}: {} duplicates",
                ns.len() as u64 - N
            );
            // Order across a switch is not guaranteed (see docs/guarantees.md); report it.
            let reordered = ns.windows(2).filter(|w| w[1] < w[0]).count();
            if reordered > 0 {
                eprintln!("{k}: {reordered} message(s) out of order across a switch");
            }
        }
        let f = publisher.failover_counters(BusId::MarketData);
        assert!(f.failovers >= 1, "{f:?}");
        assert!(f.failbacks >= 1, "{f:?}");
        assert!(f.up);
    };
    tokio::time::timeout(Duration::from_secs(90), guard)
        .await
        .expect("no hang");
}

/// A client built outside any tokio runtime (a synchronous program that made its transports on
/// a runtime of its own) still fails over when a broker dies, and back when it returns: its
/// heartbeat runs on a thread of its own.
#[test]
fn a_client_built_outside_a_runtime_fails_over_and_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut md_server = RedisServer::start().unwrap();
    let logic_server = RedisServer::start().unwrap();
    let md = rt.block_on(transport("md", &md_server.url()));
    let logic = rt.block_on(transport("logic", &logic_server.url()));
    // Not inside `block_on`: no runtime is current here.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let bus = DualBus::builder("features")
        .transports(md, logic)
        .build()
        .unwrap();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for: {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    md_server.kill();
    wait("the MarketData bus failed over", &|| {
        bus.failover_counters(BusId::MarketData).failovers >= 1
    });
    assert!(!bus.failover_counters(BusId::MarketData).up);
    md_server.restart().unwrap();
    wait("the MarketData bus failed back", &|| {
        bus.failover_counters(BusId::MarketData).failbacks >= 1
    });
    assert!(bus.failover_counters(BusId::MarketData).up);
    drop(bus);
    drop(rt);
}
