//! The MarketData bus on a Redis Cluster (`redis+cluster://`), partitioned by symbol: each test
//! starts its own cluster of 3 masters and 3 replicas and an Engine Logic server on free ports,
//! and asserts what was delivered, how many times and in what order, also across a master
//! killed with SIGKILL.

use dualbus_bus::{handler_fn, BusId, Config, DualBus, SubscribeOptions, Subscription};
use dualbus_core::partition::{partition_of, slot_of};
use dualbus_core::{Envelope, EventKind, Priority, Transport};
use dualbus_redis::{ClusterTransport, RedisOptions, RedisTransport};
use dualbus_testkit::{guarded, wait_until, RedisCluster, RedisServer};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 12;

struct Setup {
    cluster: RedisCluster,
    _logic_server: RedisServer,
    md: Arc<ClusterTransport>,
    logic: Arc<dyn Transport>,
}

async fn setup() -> Setup {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .expect("start a 3-master cluster (redis-server, redis-cli)");
    let logic_server = RedisServer::start().expect("start the Engine Logic redis-server");
    let md = Arc::new(
        ClusterTransport::connect(RedisOptions::new("md", &cluster.url()))
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster: {e}")),
    );
    let logic: Arc<dyn Transport> = Arc::new(
        RedisTransport::connect(RedisOptions::new("logic", &logic_server.url()))
            .await
            .unwrap(),
    );
    Setup {
        cluster,
        _logic_server: logic_server,
        md,
        logic,
    }
}

impl Setup {
    fn bus(&self, src: &str, inst: &str) -> DualBus {
        let mut cfg = Config::default();
        cfg.md.partitions = PARTITIONS;
        cfg.failover.heartbeat_ms = 100;
        cfg.failover.heartbeat_timeout_ms = 300;
        DualBus::builder(src)
            .instance(inst)
            .config(cfg)
            .transports(self.md.clone(), self.logic.clone())
            .first_seq(1)
            .build()
            .unwrap()
    }
}

/// Every handled market-data message as (symbol, n).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u64)>>>);

impl Seen {
    async fn subscribe(&self, bus: &DualBus, group: &str) -> Subscription {
        let seen = self.0.clone();
        bus.subscribe(
            SubscribeOptions::new(group, &["market_data.>"]).unwrap(),
            handler_fn(move |m: &Envelope| {
                let v = m.enc.to_json_value(&m.payload).map_err(|e| e.to_string())?;
                let sym = m.topic.as_str().rsplit('.').next().unwrap().to_string();
                seen.lock().push((sym, v["n"].as_u64().unwrap()));
                Ok(())
            }),
        )
        .await
        .unwrap()
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    fn distinct(&self) -> usize {
        self.0.lock().iter().collect::<HashSet<_>>().len()
    }
    fn per_symbol(&self) -> HashMap<String, Vec<u64>> {
        let mut m: HashMap<String, Vec<u64>> = HashMap::new();
        for (s, n) in self.0.lock().iter() {
            m.entry(s.clone()).or_default().push(*n);
        }
        m
    }
}

fn symbols() -> Vec<String> {
    (0..24).map(|i| format!("S{i:02}USDT")).collect()
}

async fn publish_round(hub: &DualBus, symbols: &[String], n: u64) {
    let batch = symbols
        .iter()
        .map(|s| {
            hub.envelope(
                EventKind::MarketData,
                &format!("market_data.trade.{s}"),
                Priority::Normal,
                &json!({ "n": n }),
            )
            .unwrap()
        })
        .collect();
    hub.publish_batch(batch).await.unwrap();
}

/// The partitions spread over the masters; two instances of one group split them; each symbol
/// is handled once, by one instance, in order; a group reading everything gets everything in
/// order per symbol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_the_masters_and_split_between_instances() {
    guarded("partitions on a cluster", async {
        let s = setup().await;
        let masters = s.md.masters();
        assert_eq!(masters.len(), 3, "{masters:?}");
        let hub = s.bus("hub", "hub-1");
        let streams = hub
            .router()
            .kind_streams(BusId::MarketData, &EventKind::MarketData);
        let nodes: HashSet<u16> = streams
            .iter()
            .map(|k| s.cluster.master_of(slot_of(k.as_bytes())).unwrap())
            .collect();
        assert_eq!(nodes.len(), 3, "the 12 partitions live on every master");

        let a = Seen::default();
        let b = Seen::default();
        let all = Seen::default();
        let even: Vec<u32> = (0..PARTITIONS).filter(|p| p % 2 == 0).collect();
        let odd: Vec<u32> = (0..PARTITIONS).filter(|p| p % 2 == 1).collect();
        let s1 = a
            .subscribe(
                &s.bus("features", "features-1")
                    .reading_partitions(&even)
                    .unwrap(),
                "features",
            )
            .await;
        let s2 = b
            .subscribe(
                &s.bus("features", "features-2")
                    .reading_partitions(&odd)
                    .unwrap(),
                "features",
            )
            .await;
        let s3 = all.subscribe(&s.bus("risk", "risk-1"), "risk").await;
        let symbols = symbols();
        const ROUNDS: u64 = 100;
        for n in 0..ROUNDS {
            publish_round(&hub, &symbols, n).await;
        }
        let total = symbols.len() * ROUNDS as usize;
        wait_until("every message handled by features and risk", LIMIT, || {
            a.len() + b.len() >= total && all.len() >= total
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.len() + b.len(), total, "features: each message once");
        assert_eq!(all.len(), total, "risk: each message once");
        let in_order: Vec<u64> = (0..ROUNDS).collect();
        for (seen, parts) in [(&a, &even), (&b, &odd)] {
            for (sym, ns) in seen.per_symbol() {
                assert!(parts.contains(&partition_of(&sym, PARTITIONS)), "{sym}");
                assert_eq!(ns, in_order, "{sym} in order");
            }
        }
        let both: HashSet<String> = a.per_symbol().into_keys().collect();
        assert!(
            b.per_symbol().keys().all(|k| !both.contains(k)),
            "a symbol in two instances"
        );
        for (sym, ns) in all.per_symbol() {
            assert_eq!(ns, in_order, "{sym} in order for risk");
        }
        assert_eq!(hub.counters(BusId::MarketData).published, total as u64);
        // Stopping sends what the readers still hold: every message is acknowledged, with no
        // traffic left to carry the acknowledgements.
        for sub in [s1, s2, s3] {
            sub.stop().await;
        }
        for stream in &streams {
            for g in s.md.groups(stream).await.unwrap() {
                assert_eq!(g.pending, 0, "{stream} group {}: {g:?}", g.group);
                assert_eq!(g.lag, Some(0), "{stream} group {}", g.group);
            }
        }
    })
    .await;
}

/// A master killed (SIGKILL) while the hub publishes: the bus fails over to the Engine Logic
/// server and re-sends its window, the cluster promotes the master's replica, the bus moves
/// back, and every message is handled exactly once by each group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_nothing_and_duplicates_nothing() {
    guarded("kill a master", async {
        let mut s = setup().await;
        let hub = s.bus("hub", "hub-1");
        let a = Seen::default();
        let b = Seen::default();
        let even: Vec<u32> = (0..PARTITIONS).filter(|p| p % 2 == 0).collect();
        let odd: Vec<u32> = (0..PARTITIONS).filter(|p| p % 2 == 1).collect();
        let _s1 = a
            .subscribe(&s.bus("features", "features-1").reading_partitions(&even).unwrap(), "features")
            .await;
        let _s2 = b
            .subscribe(&s.bus("features", "features-2").reading_partitions(&odd).unwrap(), "features")
            .await;
        let symbols = symbols();
        // The master of partition 0's streams.
        let victim_stream = hub
            .router()
            .kind_streams(BusId::MarketData, &EventKind::MarketData)[0]
            .clone();
        let victim = s.cluster.master_of(slot_of(victim_stream.as_bytes())).unwrap();
        const ROUNDS: u64 = 600;
        const AFTER: u64 = 100;
        for n in 0..ROUNDS {
            publish_round(&hub, &symbols, n).await;
            if n == ROUNDS / 4 {
                s.cluster.kill(victim);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The cluster promotes the replica; the bus sees every slot served again and moves
        // back; what is published then goes to the new master.
        let cluster = &s.cluster;
        let slot = slot_of(victim_stream.as_bytes());
        let t0 = std::time::Instant::now();
        while cluster.master_of(slot) == Some(victim) {
            if t0.elapsed() > LIMIT {
                for port in cluster.ports() {
                    let out = std::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "CLUSTER", "NODES"])
                        .output()
                        .unwrap();
                    eprintln!("node {port}:\n{}", String::from_utf8_lossy(&out.stdout));
                    let log = cluster.log(port);
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!("log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
                panic!("the replica of {victim} was not promoted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let promoted = cluster.master_of(slot);
        wait_until("the bus moves back to the cluster", LIMIT, || {
            hub.failover_counters(BusId::MarketData).failbacks >= 1
        })
        .await;
        for n in ROUNDS..ROUNDS + AFTER {
            publish_round(&hub, &symbols, n).await;
        }
        let total = symbols.len() * (ROUNDS + AFTER) as usize;
        wait_until("every message handled once after the failover", LIMIT, || {
            a.distinct() + b.distinct() >= total
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fo = hub.failover_counters(BusId::MarketData);
        eprintln!(
            "killed master {victim}; slot now on {promoted:?}; failovers {fo:?}; handled {} for {total}",
            a.len() + b.len()
        );
        assert!(fo.failovers >= 1 && fo.failbacks >= 1, "{fo:?}");
        let streams_on_new = hub
            .router()
            .kind_streams(BusId::MarketData, &EventKind::MarketData);
        assert!(streams_on_new.iter().all(|k| s.md.masters().iter().any(|(_, n)| *n > 0)
            && cluster.master_of(slot_of(k.as_bytes())) != Some(victim)));
        assert_eq!(a.distinct() + b.distinct(), total, "nothing lost");
        assert_eq!(a.len() + b.len(), total, "nothing handled twice");
    })
    .await;
}

/// A cluster URL that names a single server says so, and how to name it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_at_a_single_server_says_so() {
    let server = RedisServer::start().unwrap();
    let url = format!("redis+cluster://127.0.0.1:{}", server.port());
    let err = ClusterTransport::connect(RedisOptions::new("md", &url))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("is not a Redis Cluster node")
            && err.contains(&format!("redis://127.0.0.1:{}", server.port())),
        "{err}"
    );
}

/// A message that keeps failing on a cluster is dead-lettered: the copy goes to the master of
/// the dead-letter stream's slot (usually not the master of the partition it came from), then
/// the entry is acknowledged on its own master. Every failing message is there once, and
/// nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_on_a_cluster_are_dead_lettered_across_masters() {
    guarded("dead letters on a cluster", async {
        let s = setup().await;
        let hub = s.bus("marketdata", "marketdata-1");
        let vpin = s.bus("vpin", "vpin-1");
        let _sub = vpin
            .subscribe(
                SubscribeOptions::new("vpin", &["market_data.>"])
                    .unwrap()
                    .redelivery(Duration::from_millis(200), 2),
                handler_fn(|m: &Envelope| {
                    let v = m.enc.to_json_value(&m.payload).map_err(|e| e.to_string())?;
                    match v["n"].as_u64() {
                        Some(0) => Err("round 0 always fails".into()),
                        _ => Ok(()),
                    }
                }),
            )
            .await
            .unwrap();
        let symbols = symbols();
        for n in 0..3 {
            publish_round(&hub, &symbols, n).await;
        }
        // Round 0 of every symbol fails: 24 dead letters, from partitions on every master.
        let dead_slot = slot_of(b"dualbus:md:dead");
        let from: HashSet<u16> = symbols
            .iter()
            .filter_map(|sym| {
                let p = partition_of(sym, PARTITIONS);
                s.cluster.master_of(slot_of(format!("{{p{p}}}").as_bytes()))
            })
            .collect();
        assert!(
            from.iter()
                .any(|m| Some(*m) != s.cluster.master_of(dead_slot)),
            "some letters come from another master than the dead-letter stream's"
        );
        wait_until("24 dead letters", LIMIT, || {
            vpin.counters(BusId::MarketData).dead_lettered >= 24
        })
        .await;
        let cli = |slot: u16, args: &[&str]| -> String {
            let port = s.cluster.master_of(slot).expect("a master").to_string();
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(cli(dead_slot, &["XLEN", "dualbus:md:dead"]), "24");
        // Each one once, from the partition streams, and acknowledged there.
        let entries = cli(dead_slot, &["XRANGE", "dualbus:md:dead", "-", "+"]);
        let from_streams = entries
            .lines()
            .filter(|l| l.starts_with("dualbus:md:{p"))
            .count();
        assert_eq!(from_streams, 24, "{entries}");
        let pending = || -> u64 {
            (0..PARTITIONS)
                .map(|p| {
                    let key = format!("dualbus:md:{{p{p}}}:market_data");
                    let out = cli(slot_of(key.as_bytes()), &["XPENDING", &key, "vpin"]);
                    out.lines()
                        .next()
                        .and_then(|l| l.parse::<u64>().ok())
                        .unwrap_or(0)
                })
                .sum()
        };
        wait_until("nothing pending", LIMIT, || pending() == 0).await;
    })
    .await;
}
