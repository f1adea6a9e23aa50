//! SIGTERM (what systemd, docker and Kubernetes send to stop a service) stops `dualbus run`
//! and `dualbus engine` as gracefully as Ctrl-C does: the engines stop, flush, publish their
//! last heartbeat and the report is written, instead of the process dying mid-batch.

mod common;

use common::{engine_args, heartbeats, Procs};
use dualbus_testkit::RedisServer;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on waiting for a start or an exit (a guard against a hang, not a measure).
const LIMIT: Duration = Duration::from_secs(90);

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

#[test]
fn sigterm_stops_a_run_gracefully_with_its_report() {
    let dir = std::env::temp_dir().join(format!("dualbus-sigterm-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("run.json");
    let stderr = dir.join("run.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args([
            "run",
            "--duration",
            "300s",
            "--speed",
            "3000x",
            "--port",
            "0",
        ])
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start dualbus run");
    // It says when every engine is running.
    let start = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("dualbus run:")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended early: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        assert!(start.elapsed() < LIMIT, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    sigterm(child.id());
    let out = child.wait_with_output().expect("wait for the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(
        stdout.contains("dualbus run stopped (terminated)"),
        "{stdout}\n{err}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["stopped"], "terminated");
    let md = r["engines"]["marketdata"]["published"]["market_data"]
        .as_u64()
        .unwrap_or(0);
    assert!(md > 0, "the report has the hub's counts: {r}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_stops_an_engine_process_gracefully_on_redis() {
    let mut procs = Procs::new("sigterm-engine");
    let (md_server, logic_server) = match (RedisServer::start(), RedisServer::start()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => panic!(
            "this test needs redis-server on the PATH (install it: apt-get install \
             redis-server; CI installs it): {e}"
        ),
    };
    let (md, logic) = (md_server.url(), logic_server.url());
    procs.spawn(
        "features",
        &engine_args("features", "features-1", &md, &logic, "300s"),
        &[],
    );
    let start = Instant::now();
    let mut conn = None;
    while !heartbeats(&mut conn, &logic, "src").contains("features") {
        assert!(!procs.exited("features"), "ended early{}", procs.stderrs());
        assert!(
            start.elapsed() < LIMIT,
            "did not come up{}",
            procs.stderrs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(procs.all[0].child.id());
    assert!(procs.wait_all(LIMIT), "did not stop{}", procs.stderrs());
    let p = &procs.all[0];
    assert!(
        p.status.is_some_and(|s| s.success()),
        "exit {:?}{}",
        p.status,
        procs.stderrs()
    );
    let report: Value = serde_json::from_str(
        std::fs::read_to_string(&p.stdout)
            .expect("its report")
            .trim(),
    )
    .unwrap_or_else(|e| panic!("the report is not JSON: {e}{}", procs.stderrs()));
    assert_eq!(report["stopped"], "terminated", "{report}");
    // Its last heartbeat, published while stopping, reached the broker.
    let mut c = redis::Client::open(logic.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("connect to the Engine Logic server");
    let beats: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("dualbus:logic:engine_health")
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("XRANGE");
    let last = beats
        .ids
        .iter()
        .rev()
        .filter(|id| id.get::<String>("src").as_deref() == Some("features"))
        .find_map(|id| id.get::<String>("payload"))
        .expect("a heartbeat of features");
    let last: Value = serde_json::from_str(&last).expect("a JSON heartbeat");
    assert_eq!(last["status"], "stopped", "{last}");
}
