//! `dualbus redis status` on two real servers: the memory limit is said in words ("no limit"
//! for `maxmemory 0`, "limit 100.00M" once one is set), not as `limit 0B`.

use dualbus_testkit::RedisServer;
use std::process::Command;

/// `dualbus ARGS` on the buses `md` and `logic`; it must succeed; its stdout.
fn dualbus(md: &RedisServer, logic: &RedisServer, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["--md-url", &md.url(), "--logic-url", &logic.url()])
        .args(args)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn status(md: &RedisServer, logic: &RedisServer) -> String {
    dualbus(md, logic, &["redis", "status"])
}

#[test]
fn redis_status_says_no_limit_rather_than_zero_bytes() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let text = status(&md, &logic);
    assert_eq!(text.matches("(no limit)").count(), 2, "{text}");
    assert!(!text.contains("limit 0B"), "{text}");

    let set = Command::new("redis-cli")
        .args([
            "-p",
            &md.port().to_string(),
            "config",
            "set",
            "maxmemory",
            "100mb",
        ])
        .output()
        .expect("redis-cli");
    assert!(set.status.success());
    let text = status(&md, &logic);
    let md_line = text.lines().find(|l| l.starts_with("MarketData")).unwrap();
    assert!(md_line.contains("(limit 100.00M)"), "{text}");
    assert_eq!(text.matches("(no limit)").count(), 1, "{text}");
}

/// `dualbus stats` explains the failover mirror: each bus holds the other bus's streams and
/// groups, empty until a failover; they are left out (and counted) unless `--all`, which marks
/// them.
#[test]
fn stats_leaves_out_the_empty_failover_mirror_and_says_so() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let dualbus = |args: &[&str]| dualbus(&md, &logic, args);
    // A short run makes the strategy's groups, on both buses.
    dualbus(&[
        "run",
        "--backend",
        "redis",
        "--engines",
        "strategy",
        "--duration",
        "1s",
        "--port",
        "0",
        "--quiet",
    ]);
    let text = dualbus(&["stats"]);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("md ") || l.starts_with("logic "))
        .collect();
    assert!(!rows.is_empty(), "{text}");
    // Every row shown is a stream of its own bus; the mirror is counted in the footnote.
    for r in &rows {
        let bus = r.split_whitespace().next().unwrap();
        assert!(r.contains(&format!("dualbus:{bus}:")), "{r}");
    }
    let note = text.lines().last().unwrap();
    assert!(
        note.contains("empty failover mirror streams not shown, --all shows them"),
        "{text}"
    );
    let all = dualbus(&["stats", "--all"]);
    let mirrors = all.lines().filter(|l| l.contains(" (mirror)")).count();
    let hidden: usize = note
        .trim_start_matches('(')
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hidden > 0 && mirrors >= hidden, "{all}");
    assert!(
        all.lines()
            .filter(|l| l.contains(" (mirror)"))
            .all(|l| l.starts_with("md     dualbus:logic:") || l.starts_with("logic  dualbus:md:")),
        "{all}"
    );
}

/// `dualbus redis up` does not take a server it did not start for a bus's: it names the
/// address, says how the server was started and what to do; a server it started is reused.
#[test]
fn redis_up_refuses_a_server_it_did_not_start() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let dir = std::env::temp_dir().join(format!("dualbus-up-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["--md-url", &md.url(), "--logic-url", &logic.url()])
        .args(["redis", "up", "--dir", dir.to_str().unwrap()])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the MarketData bus's address {} is taken by a Redis server that `dualbus redis up` did not start (it runs without a config file); stop it, or give the bus another address (--md-url)",
            md.url()
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dualbus stats` counts, per group, what a trim (`MAXLEN ~`) took from a stream before the
/// group read it: a group whose consumer is gone while 5000 messages go by a stream kept to
/// about 1000 entries gets back what is left, and the rest is shown as trimmed, not as
/// delivered.
#[test]
fn stats_counts_what_a_trim_took_before_a_group_read_it() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dualbus"))
            .args(["--md-url", &md.url(), "--logic-url", &logic.url()])
            .args(args)
            .env("DUALBUS_LOGIC_MAXLEN", "1000")
            .env("DUALBUS_QUEUE_BOUND", "1000")
            .env("DUALBUS_GROUP_LEASE_MS", "200")
            .output()
            .expect("runs")
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let publish = |n: &str| {
        ok(&[
            "publish",
            "--kind",
            "analytics_result",
            "--topic",
            "analytics_result.pnl",
            "--count",
            n,
        ])
    };
    let row = || -> serde_json::Value {
        ok(&["stats", "--json"])
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["stream"] == "dualbus:logic:analytics_result" && v["group"] == "ws")
            .unwrap_or(serde_json::Value::Null)
    };
    // The group `ws` reads one message, then its consumer goes away.
    let first = std::thread::scope(|s| {
        let tail = s.spawn(|| {
            ok(&[
                "tail",
                "--group",
                "ws",
                "--count",
                "1",
                "analytics_result.>",
            ])
        });
        while row().is_null() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        publish("1");
        tail.join().unwrap()
    });
    assert_eq!(first.lines().count(), 1, "{first}");
    // Its lease runs out (200 ms); publishers no longer wait for it, and the stream is kept
    // to about 1000 entries while 5000 go by.
    std::thread::sleep(std::time::Duration::from_millis(500));
    publish("5000");
    let left = row()["length"].as_u64().unwrap();
    assert!(left < 5000, "the stream was trimmed: {left} left");
    // The consumer comes back: it is given what is left, and the rest is counted.
    let back = ok(&[
        "tail",
        "--group",
        "ws",
        "--count",
        &left.to_string(),
        "analytics_result.>",
    ]);
    assert_eq!(back.lines().count() as u64, left, "{back}");
    let r = row();
    assert_eq!(r["trimmed_unread"], 5000 - left, "{r}");
    assert_eq!(r["delivered"], 1 + left, "{r}");
    assert_eq!(r["lag"], 0, "{r}");
    let table = ok(&["stats"]);
    let line = table
        .lines()
        .find(|l| l.contains("dualbus:logic:analytics_result") && l.contains(" ws "))
        .unwrap();
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .trim_end()
            .ends_with("trimmed"),
        "{table}"
    );
    assert!(
        line.trim_end().ends_with(&format!(" {}", 5000 - left)),
        "{table}"
    );
}

/// `dualbus tail --since` starts a new group at a time: what was published before it is not
/// shown, what came after is; a value that is neither a duration nor a time is refused with
/// the value named.
#[test]
fn tail_since_starts_a_new_group_at_a_time() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let publish = |n: &str| {
        dualbus(
            &md,
            &logic,
            &[
                "publish",
                "--kind",
                "risk_alert",
                "--topic",
                "risk_alert.BTCUSDT",
                "--payload",
                &format!("{{\"batch\": {n}}}"),
                "--count",
                "3",
            ],
        )
    };
    publish("1");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let at = std::time::SystemTime::now();
    std::thread::sleep(std::time::Duration::from_millis(50));
    publish("2");
    // The time as RFC 3339, from the test's clock (the broker's, on this machine).
    let since = humantime::format_rfc3339_millis(at).to_string();
    let out = dualbus(
        &md,
        &logic,
        &[
            "tail",
            "risk_alert.>",
            "--since",
            &since,
            "--count",
            "3",
            "--json",
        ],
    );
    let batches: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["payload"]["batch"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(batches, vec![2, 2, 2], "{out}");
    // A duration ago that covers both batches shows the first one first.
    let out = dualbus(
        &md,
        &logic,
        &[
            "tail",
            "risk_alert.>",
            "--since",
            "1h",
            "--count",
            "1",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["payload"]["batch"], 1, "{out}");
    let bad = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["--md-url", &md.url(), "--logic-url", &logic.url()])
        .args(["tail", "risk_alert.>", "--since", "last tuesday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"last tuesday\" is neither a duration"),
        "{err}"
    );
}
