//! `dualbus run --duration` on the embedded buses: the report names every engine with what it
//! received and published, and the buses' traffic; bad arguments are named.

use std::process::Command;

fn dualbus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_timed_run_writes_a_report_of_every_engine() {
    let dir = std::env::temp_dir().join(format!("dualbus-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("run.json");
    // 3000x: fifty minutes of market per second, and three symbols, so a few seconds give
    // every engine the 34 bars the full feature vector needs.
    let (ok, out, err) = dualbus(&[
        "run",
        "--duration",
        "6s",
        "--speed",
        "3000x",
        "--symbols",
        "BTCUSDT,ETHUSDT,SOLUSDT",
        "--quiet",
        "--warmup",
        "2s",
        "--port",
        "0",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("dualbus run stopped (duration reached)"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let engines = r["engines"].as_object().unwrap();
    let published = |e: &str, k: &str| r["engines"][e]["published"][k].as_u64().unwrap_or(0);
    let received = |e: &str, k: &str| r["engines"][e]["received"][k].as_u64().unwrap_or(0);
    for name in [
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
    ] {
        assert!(engines.contains_key(name), "{name} missing: {r}");
        assert!(published(name, "engine_health") > 0, "{name}: {r}");
    }
    assert!(published("marketdata", "market_data") > 1000, "{r}");
    assert!(received("features", "market_data") > 1000, "{r}");
    assert!(published("features", "feature_vector") > 0, "{r}");
    assert!(received("ml", "feature_vector") > 0, "{r}");
    assert!(published("ml", "ml_prediction") > 0, "{r}");
    assert!(published("factor", "factor_calculation") > 0, "{r}");
    assert!(published("vpin", "vpin_calculation") > 0, "{r}");
    assert!(received("enhanced_vpin", "vpin_calculation") > 0, "{r}");
    // The trading loop: signals, orders, fills at the hub's paper venue, the portfolio.
    assert!(published("strategy", "strategy_signal") > 0, "{r}");
    assert!(published("risk", "order_request") > 0, "{r}");
    assert!(received("marketdata", "order_request") > 0, "{r}");
    assert!(received("portfolio", "trade_execution") > 0, "{r}");
    assert!(published("portfolio", "portfolio_update") > 0, "{r}");
    assert!(published("analytics", "analytics_result") > 0, "{r}");
    assert!(received("websocket", "portfolio_update") > 0, "{r}");
    assert!(received("backtesting", "feature_vector") > 0, "{r}");
    assert!(r["performance"]["report"] == "performance", "{r}");
    assert!(r["fills"].as_u64().unwrap() > 0, "{r}");
    // The summary a trader reads: equity and P&L from the last portfolio update, the fills, the
    // alerts as words or a table, never raw JSON.
    let equity = r["portfolio"]["equity"].as_f64().unwrap();
    assert!(
        out.contains(&format!("  equity {equity:.2}  P&L ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("  fills {}  rejected orders", r["fills"])),
        "{out}"
    );
    assert!(
        out.contains("  alerts none") || out.contains("  alert            rule"),
        "{out}"
    );
    assert!(!out.contains('{'), "JSON in the summary: {out}");
    let md = &r["buses"]["market_data"];
    assert!(md["published"].as_u64().unwrap() > 1000, "{r}");
    assert!(md["latency_p99_us"].as_u64().is_some(), "{r}");
    assert!(
        r["buses"]["engine_logic"]["delivered"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["backend"], "embedded");
    // Where the time goes: lanes in steady state and warm-up apart, kinds, engines.
    let lat = &r["latency"];
    assert_eq!(lat["warmup_s"], 2.0, "{lat}");
    for phase in ["steady", "warmup"] {
        for lane in ["market_data", "engine_logic", "priority_lane"] {
            let l = &lat[phase][lane];
            for key in ["p50_us", "p99_us", "p999_us", "max_us", "count"] {
                assert!(l.get(key).is_some(), "{phase}.{lane}.{key}: {lat}");
            }
        }
        assert!(
            lat[phase]["market_data"]["count"].as_u64().unwrap() > 0,
            "{lat}"
        );
    }
    assert!(
        lat["steady"]["engine_logic"]["p99_us"].as_f64().is_some(),
        "{lat}"
    );
    let kinds = lat["by_kind"].as_object().unwrap();
    for kind in ["market_data", "feature_vector", "engine_health"] {
        assert!(kinds[kind]["count"].as_u64().unwrap() > 0, "{kind}: {lat}");
        assert!(kinds[kind]["p99_us"].as_f64().is_some(), "{kind}: {lat}");
    }
    for engine in ["features", "vpin", "risk", "portfolio", "websocket"] {
        let h = &lat["handlers"][engine];
        assert!(h["handled"].as_u64().unwrap() > 0, "{engine}: {lat}");
        assert!(h["handler_p99_us"].as_f64().is_some(), "{engine}: {lat}");
        assert!(h["queue_p99_us"].as_f64().is_some(), "{engine}: {lat}");
    }
    // What an engine handled in steady state is what the report counts for it.
    let steady_handled: u64 = lat["handlers"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["handled"].as_u64().unwrap())
        .sum();
    let steady_delivered: u64 = ["market_data", "engine_logic", "priority_lane"]
        .iter()
        .map(|l| lat["steady"][l]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(steady_handled, steady_delivered, "{lat}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_engines_and_settings_are_named() {
    let (ok, _, err) = dualbus(&["run", "--engines", "features,oracle", "--duration", "1s"]);
    assert!(!ok);
    assert!(
        err.contains("\"oracle\"") && err.contains("enhanced_vpin"),
        "{err}"
    );
    let (ok, _, err) = dualbus(&["run", "--settings", "{\"oracle\": {}}", "--duration", "1s"]);
    assert!(!ok);
    assert!(err.contains("\"oracle\""), "{err}");
    let (ok, _, err) = dualbus(&["engine", "oracle"]);
    assert!(!ok);
    assert!(err.contains("unknown engine \"oracle\""), "{err}");
}

#[test]
fn redis_that_is_not_there_says_to_start_it() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let (ok, _, err) = dualbus(&[
        "run",
        "--backend",
        "redis",
        "--md-url",
        &url,
        "--logic-url",
        &url,
        "--duration",
        "1s",
    ]);
    assert!(!ok);
    assert!(err.contains("dualbus redis up"), "{err}");
}

/// `dualbus run` without `--backend` takes the config's transport: from `DUALBUS_TRANSPORT`
/// and from the config file (with no Redis there, it says the Redis buses are not reachable,
/// so it did not start on the embedded buses).
#[test]
fn run_takes_the_transport_from_the_environment_and_the_config_file() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let args = [
        "run",
        "--md-url",
        &url,
        "--logic-url",
        &url,
        "--duration",
        "1s",
        "--quiet",
        "--port",
        "0",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .env("DUALBUS_TRANSPORT", "redis")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the Redis buses are not reachable"), "{err}");

    let dir = std::env::temp_dir().join(format!("dualbus-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dualbus.toml");
    std::fs::write(&file, "transport = \"redis\"\n").unwrap();
    let mut with_file = vec!["--config", file.to_str().unwrap()];
    with_file.extend(args);
    let (ok, _, err) = dualbus(&with_file);
    assert!(!ok);
    assert!(err.contains("the Redis buses are not reachable"), "{err}");

    // The flag wins over both; `memory` is another name of the embedded buses, and the
    // config's `embedded` another name of `memory`.
    std::fs::write(
        &file,
        "transport = \"embedded\"\n[delivery]\nbackpressure = \"drop-oldest\"\n",
    )
    .unwrap();
    let (ok, out, err) = dualbus(&[
        "--config",
        file.to_str().unwrap(),
        "run",
        "--backend",
        "memory",
        "--engines",
        "marketdata",
        "--duration",
        "1s",
        "--quiet",
        "--port",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("dualbus run stopped"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On Redis a consumer group left by an earlier run resumes where it stopped: `run` says so at
/// start, naming the group and what it holds, and handles those messages; `--fresh` drops the
/// groups first and nothing published before the run is handled.
#[test]
fn groups_left_by_an_earlier_run_are_named_and_fresh_drops_them() {
    let md = dualbus_testkit::RedisServer::start().expect("redis-server");
    let logic = dualbus_testkit::RedisServer::start().expect("redis-server");
    let (md_url, logic_url) = (md.url(), logic.url());
    let urls = [
        "--md-url",
        md_url.as_str(),
        "--logic-url",
        logic_url.as_str(),
    ];
    let dir = std::env::temp_dir().join(format!("dualbus-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |fresh: bool, name: &str| {
        let report = dir.join(name);
        let mut args: Vec<&str> = urls.to_vec();
        args.extend([
            "run",
            "--backend",
            "redis",
            "--engines",
            "strategy",
            "--duration",
            "2s",
            "--port",
            "0",
            "--report",
            report.to_str().unwrap(),
        ]);
        if fresh {
            args.push("--fresh");
        }
        let (ok, _out, err) = dualbus(&args);
        assert!(ok, "{err}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let got = r["engines"]["strategy"]["received"]["ml_prediction"]
            .as_u64()
            .unwrap_or(0);
        (err, got)
    };
    let publish = || {
        let mut args: Vec<&str> = urls.to_vec();
        args.extend([
            "publish",
            "--kind",
            "ml_prediction",
            "--topic",
            "ml_prediction.BTCUSDT",
            "--payload",
            r#"{"symbol":"BTCUSDT","prob_up":0.6}"#,
            "--count",
            "3",
        ]);
        let (ok, _, err) = dualbus(&args);
        assert!(ok, "{err}");
    };
    // The first run creates the strategy's groups; nothing old yet.
    let (err, got) = run(false, "first.json");
    assert!(
        err.contains("consumer groups: one that exists resumes where it stopped"),
        "{err}"
    );
    assert!(!err.contains("left by an earlier run"), "{err}");
    assert_eq!(got, 0, "{err}");
    // Published while nothing runs: the strategy's group holds them.
    publish();
    let (err, got) = run(false, "second.json");
    let note = err
        .lines()
        .skip_while(|l| !l.starts_with("note: "))
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        note.contains("left by an earlier run hold 0 pending and 3 unread"),
        "{err}"
    );
    assert!(
        note.lines()
            .any(|l| l.contains("strategy") && l.contains("dualbus:logic:ml_prediction")),
        "{err}"
    );
    assert!(err.contains("--fresh drops these groups"), "{err}");
    assert_eq!(got, 3, "the old messages are handled: {err}");
    // Again, but fresh: the groups are dropped and the old messages never reach the engine.
    // What the old group had counted as trimmed goes with it.
    publish();
    let stream = "dualbus:logic:ml_prediction";
    let trimmed = dualbus_redis::trimmed_key(stream);
    let logic_conn = || {
        redis::Client::open(logic_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let _: i64 = redis::cmd("HSET")
        .arg(&trimmed)
        .arg("strategy")
        .arg(7)
        .query(&mut logic_conn())
        .unwrap();
    let (err, got) = run(true, "third.json");
    assert!(err.contains("--fresh: dropped"), "{err}");
    assert!(!err.contains("left by an earlier run"), "{err}");
    assert_eq!(got, 0, "{err}");
    let left: Option<u64> = redis::cmd("HGET")
        .arg(&trimmed)
        .arg("strategy")
        .query(&mut logic_conn())
        .unwrap();
    assert_eq!(
        left.unwrap_or(0),
        0,
        "the dropped group's trimmed count is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
