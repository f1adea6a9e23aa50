//! The whole trading system as a user spreads it over processes: every engine is its own
//! `dualbus engine NAME` process, and they talk only through two real Redis servers (the
//! MarketData and Engine Logic buses). Every engine must consume and publish, and the fills
//! of the hub's paper venue must reach the portfolio. Needs `redis-server` on the PATH (CI
//! installs it).

mod common;

use common::{count, engine_args, heartbeats, Procs};
use dualbus_testkit::RedisServer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The thirteen engines of the system (a copy of `dualbus_engines::system::ENGINES`: a name
/// dropped from the system fails this test).
const ENGINES: [&str; 13] = [
    "marketdata",
    "features",
    "factor",
    "ml",
    "vpin",
    "enhanced_vpin",
    "strategy",
    "risk",
    "portfolio",
    "collateral",
    "analytics",
    "websocket",
    "backtesting",
];

/// How long the consumers run (wall clock, each from its own start).
const CONSUMERS_RUN: &str = "25s";
/// How long the hub runs: it starts once the consumers are up and stops before them, so, as
/// in `dualbus run`, the pipeline drains what the hub published last.
const HUB_RUN: &str = "20s";
/// Upper bound on waiting for the consumers to subscribe (a startup wait, not an assertion).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound on the whole system's run: past it the test fails and kills the processes.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Starts `dualbus engine NAME` on the two buses, as its own Redis user (the passwords of
/// `procs.dir/acl/secrets`), with `extra` arguments.
fn spawn(procs: &mut Procs, name: &str, md: &str, logic: &str, duration: &str, extra: &[&str]) {
    let mut args = engine_args(name, &format!("{name}-1"), md, logic, duration);
    args.push("--redis-secrets".to_string());
    args.push(procs.dir.join("acl").join("secrets").display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    procs.spawn(name, &args, &[]);
}

/// Writes the ACL file and passwords of `dualbus redis up` into `dir`; returns the ACL file.
fn write_acl(dir: &std::path::Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["redis", "acl", "--dir"])
        .arg(dir)
        .output()
        .expect("run dualbus redis acl");
    assert!(out.status.success(), "{out:?}");
    dir.join("users.acl")
}

/// `url` as the operator (`admin`, whose password `redis acl` wrote into `dir/secrets`).
fn as_admin(url: &str, dir: &std::path::Path) -> String {
    let password = std::fs::read_to_string(dir.join("secrets").join("admin")).expect("admin");
    url.replace("redis://", &format!("redis://admin:{}@", password.trim()))
}

/// The whole system with the Redis ACLs of `dualbus redis up` on: each engine process
/// connects as its own user, and the default user is off.
#[test]
fn thirteen_engine_processes_trade_over_the_redis_buses() {
    let mut procs = Procs::new("system-redis");
    let acl_dir = procs.dir.join("acl");
    let acl = write_acl(&acl_dir);
    let acl = acl.to_str().expect("a UTF-8 path");
    let servers = || -> std::io::Result<(RedisServer, RedisServer)> {
        Ok((
            RedisServer::start_with(&["--aclfile", acl])?,
            RedisServer::start_with(&["--aclfile", acl])?,
        ))
    };
    let (md_server, logic_server) = servers().unwrap_or_else(|e| {
        panic!(
            "this test needs redis-server on the PATH (install it: apt-get install \
             redis-server; CI installs it): {e}"
        )
    });
    let (md, logic) = (md_server.url(), logic_server.url());
    let admin_logic = as_admin(&logic, &acl_dir);

    // Consumers first, each subscribing from the newest entry, then the hub, so nobody misses
    // the first market data (the order `dualbus run` starts them in).
    let consumers: Vec<&'static str> = ENGINES
        .iter()
        .copied()
        .filter(|n| *n != "marketdata")
        .collect();
    for &name in &consumers {
        // The dashboard on any free port, not 8600.
        let extra: &[&str] = if name == "websocket" {
            &["--settings", r#"{"bind":"127.0.0.1:0"}"#]
        } else {
            &[]
        };
        spawn(&mut procs, name, &md, &logic, CONSUMERS_RUN, extra);
    }
    let start = Instant::now();
    let mut conn = None;
    loop {
        let up = heartbeats(&mut conn, &admin_logic, "src");
        let waiting: Vec<&str> = consumers
            .iter()
            .copied()
            .filter(|n| !up.contains(*n) && !procs.exited(n))
            .collect();
        if waiting.is_empty() {
            break;
        }
        if start.elapsed() > STARTUP_LIMIT {
            panic!(
                "engines {waiting:?} did not come up within {STARTUP_LIMIT:?}{}",
                procs.stderrs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(conn);
    // 3000x: fifty minutes of market a second; three symbols; the hub's default settings
    // publish 60 warm-up bars first, so features and ML have full windows at once.
    spawn(
        &mut procs,
        "marketdata",
        &md,
        &logic,
        HUB_RUN,
        &["--speed", "3000x", "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT"],
    );

    if !procs.wait_all(RUN_LIMIT) {
        panic!(
            "the engines did not all stop within {RUN_LIMIT:?}{}",
            procs.stderrs()
        );
    }

    // Each engine's final counts: one JSON line on stdout.
    let mut failures: Vec<String> = Vec::new();
    let mut reports: BTreeMap<&str, Value> = BTreeMap::new();
    for p in &procs.all {
        let status = p.status.expect("exited");
        let out = std::fs::read_to_string(&p.stdout).unwrap_or_default();
        let report = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok());
        match report {
            Some(v) if status.success() => {
                reports.insert(p.name.as_str(), v);
            }
            _ => failures.push(format!(
                "{}: exited {status} without its counts (stdout: {:?})",
                p.name,
                out.trim()
            )),
        }
    }
    eprintln!("{:<14} {:<10} counts", "engine", "stopped");
    for name in ENGINES {
        if let Some(v) = reports.get(name) {
            eprintln!(
                "{name:<14} {:<10} received {} published {}",
                v["stopped"].as_str().unwrap_or("?"),
                v["received"],
                v["published"]
            );
        }
    }

    for (&name, v) in &reports {
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{name}: {what}: {v}"));
            }
        };
        check(v["engine"] == name, "reports another engine's name");
        check(
            v["stopped"] == "duration reached",
            "did not stop on --duration",
        );
        let consumed: u64 = v["received"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "engine_health")
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        check(consumed > 0, "received no message besides engine_health");
        check(
            count(v, "published", "engine_health") > 0,
            "published no engine_health",
        );
        let recv = |k: &str| count(v, "received", k);
        let sent = |k: &str| count(v, "published", k);
        match name {
            "marketdata" => {
                check(sent("market_data") > 0, "published no market_data");
                // Risk's orders over the Engine Logic bus, filled at the hub's paper venue.
                check(recv("order_request") > 0, "received no order_request");
                check(sent("trade_execution") > 0, "published no trade_execution");
            }
            "features" => {
                check(recv("market_data") > 0, "received no market_data");
                check(sent("feature_vector") > 0, "published no feature_vector");
            }
            "factor" => check(
                sent("factor_calculation") > 0,
                "published no factor_calculation",
            ),
            "ml" => {
                check(recv("feature_vector") > 0, "received no feature_vector");
                check(sent("ml_prediction") > 0, "published no ml_prediction");
            }
            "vpin" => check(
                sent("vpin_calculation") > 0,
                "published no vpin_calculation",
            ),
            // Its flash crash alerts need a crash; here it only has to consume VPIN.
            "enhanced_vpin" => check(recv("vpin_calculation") > 0, "received no vpin_calculation"),
            "strategy" => check(sent("strategy_signal") > 0, "published no strategy_signal"),
            "risk" => {
                check(recv("strategy_signal") > 0, "received no strategy_signal");
                check(sent("order_request") > 0, "published no order_request");
            }
            "portfolio" => {
                // The fills reached the portfolio.
                check(recv("trade_execution") > 0, "received no trade_execution");
                check(
                    sent("portfolio_update") > 0,
                    "published no portfolio_update",
                );
            }
            "collateral" => check(recv("portfolio_update") > 0, "received no portfolio_update"),
            // A performance report every 900 s of data time: 0.3 s at 3000x.
            "analytics" => check(
                sent("analytics_result") > 0,
                "published no analytics_result",
            ),
            // The dashboard publishes only its heartbeat; it must see the system's output.
            "websocket" => {
                for k in ["portfolio_update", "ml_prediction", "vpin_calculation"] {
                    check(recv(k) > 0, &format!("received no {k}"));
                }
            }
            // The hub's warm-up bars give every symbol 30 feature vectors at once: the first
            // periodic re-run of the live strategy over the hub's history follows.
            "backtesting" => {
                check(recv("feature_vector") > 0, "received no feature_vector");
                check(
                    sent("analytics_result") > 0,
                    "published no analytics_result",
                );
            }
            other => panic!("no checks for engine {other:?}"),
        }
    }

    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        procs.stderrs()
    );
    drop(procs);
    drop((md_server, logic_server));
}
