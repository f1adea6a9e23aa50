//! The MarketData bus on a Redis Cluster, as a user scales it out: a local cluster of 3
//! masters and 3 replicas, `[md] partitions = 12`, the hub and the engines as separate
//! `dualbus engine` processes, two `features` instances sharing the symbols (`--partition 1/2`
//! and `2/2`), and a master killed with SIGKILL while the hub publishes. Every market-data
//! message the hub published must be handled exactly once by the features group (once by one
//! of its two instances) and once by vpin's group. Needs `redis-server` and `redis-cli`.

mod common;

use common::{count, engine_args, heartbeats, Procs};
use dualbus_core::partition::{partition_of, slot_of};
use dualbus_testkit::{RedisCluster, RedisServer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: &str = "12";
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[test]
fn engines_share_symbols_on_a_cluster_and_survive_a_killed_master() {
    let mut cluster = RedisCluster::start(3).unwrap_or_else(|e| {
        panic!("this test needs redis-server and redis-cli (apt-get install redis-server): {e}")
    });
    let logic_server = RedisServer::start().expect("start the Engine Logic server");
    let (md, logic) = (cluster.url(), logic_server.url());
    let env = [("DUALBUS_MD_PARTITIONS", PARTITIONS)];
    let mut procs = Procs::new("system-cluster");

    let consumers = [
        ("features", "features-1", Some("1/2")),
        ("features", "features-2", Some("2/2")),
        ("vpin", "vpin-1", None),
    ];
    for (name, inst, part) in consumers {
        let mut args = engine_args(name, inst, &md, &logic, "30s");
        if let Some(p) = part {
            args.extend(["--partition".to_string(), p.to_string()]);
        }
        procs.spawn(inst, &args, &env);
    }
    let start = Instant::now();
    let mut conn = None;
    loop {
        let up = heartbeats(&mut conn, &logic, "inst");
        let waiting: Vec<&str> = consumers
            .iter()
            .map(|c| c.1)
            .filter(|i| !up.contains(*i))
            .collect();
        if waiting.is_empty() {
            break;
        }
        if start.elapsed() > STARTUP_LIMIT || waiting.iter().any(|i| procs.exited(i)) {
            panic!("{waiting:?} did not come up{}", procs.stderrs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(conn);

    let mut args = engine_args("marketdata", "marketdata-1", &md, &logic, "15s");
    args.extend(
        [
            "--speed",
            "3000x",
            "--symbols",
            "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,ADAUSDT",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    procs.spawn("marketdata", &args, &env);
    // Under load: the master of BTCUSDT's partition dies.
    std::thread::sleep(Duration::from_secs(5));
    let p = partition_of("BTCUSDT", PARTITIONS.parse().unwrap());
    let slot = slot_of(format!("dualbus:md:{{p{p}}}:market_data").as_bytes());
    let victim = cluster
        .master_of(slot)
        .expect("a master for BTCUSDT's partition");
    cluster.kill(victim);
    let t0 = Instant::now();
    while cluster.master_of(slot) == Some(victim) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the replica of {victim} was not promoted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "killed master {victim}; BTCUSDT's partition {p} now on {:?} after {:?}",
        cluster.master_of(slot),
        t0.elapsed()
    );

    if !procs.wait_all(RUN_LIMIT) {
        panic!("the engines did not all stop{}", procs.stderrs());
    }
    let mut reports: BTreeMap<String, Value> = BTreeMap::new();
    for p in &procs.all {
        let out = std::fs::read_to_string(&p.stdout).unwrap_or_default();
        let report = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok());
        match report {
            Some(v) if p.status.is_some_and(|s| s.success()) => {
                reports.insert(p.name.clone(), v);
            }
            _ => panic!(
                "{} exited {:?} without its counts{}",
                p.name,
                p.status,
                procs.stderrs()
            ),
        }
    }
    for (name, v) in &reports {
        eprintln!(
            "{name:<14} partitions {} received {} published {}",
            v["partitions"], v["received"], v["published"]
        );
    }
    let published = count(&reports["marketdata"], "published", "market_data");
    let f1 = count(&reports["features-1"], "received", "market_data");
    let f2 = count(&reports["features-2"], "received", "market_data");
    assert!(published > 0, "the hub published no market data");
    assert!(
        f1 > 0 && f2 > 0,
        "each features instance handles some symbols: {f1} {f2}"
    );
    if f1 + f2 != published {
        // What the streams hold: which group has what unread or pending, on which bus.
        let stats = std::process::Command::new(env!("CARGO_BIN_EXE_dualbus"))
            .args(["stats", "--all", "--md-url", &md, "--logic-url", &logic])
            .env("DUALBUS_MD_PARTITIONS", PARTITIONS)
            .output()
            .expect("run dualbus stats");
        panic!(
            "the features group handled {} of the {published} market-data messages (two \
             instances: {f1} + {f2}); once each expected\n{}{}",
            f1 + f2,
            String::from_utf8_lossy(&stats.stdout),
            procs.stderrs()
        );
    }
    let parts = |i: &str| -> Vec<u64> {
        reports[i]["partitions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    assert_eq!(parts("features-1"), vec![0, 2, 4, 6, 8, 10]);
    assert_eq!(parts("features-2"), vec![1, 3, 5, 7, 9, 11]);
    assert!(
        count(&reports["vpin-1"], "received", "market_data") > 0,
        "vpin reads every partition"
    );
    assert!(count(&reports["features-1"], "published", "feature_vector") > 0);
}
