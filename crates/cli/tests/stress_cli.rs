//! `dualbus stress` as a user runs it: consumer-crash (the consumer that dies is a separate
//! process killed with SIGKILL holding a batch; the other instance of its group takes the
//! batch over), crash with its warnings summarised, and a two-minute soak of the whole system.
//! Needs `redis-server` on the PATH (CI installs it).

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// One run at a time: each starts its own servers and loads the machine, and a heartbeat must
/// not take another run's load for a hung broker.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_killed_consumer_process_loses_nothing() {
    let _serial = one_at_a_time();
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["stress", "consumer-crash", "--json"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(n("published") > 0, "{v}");
    assert_eq!(n("delivered"), n("published"), "{v}");
    assert_eq!(n("lost"), 0, "{v}");
    assert_eq!(n("duplicated"), 0, "{v}");
    assert_eq!(n("reordered"), 0, "{v}");
    // The dead process's batch came back through the broker to the other instance.
    assert!(n("redelivered") > 0, "{v}");
}

/// The clients' retries while servers are killed are expected: they are counted into one
/// summary line of the table, not printed as hundreds of WARN lines over it (`-v` prints them);
/// the piped output carries no colour codes.
#[test]
fn a_crash_run_summarises_the_clients_warnings() {
    let _serial = one_at_a_time();
    let run = |verbose: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dualbus"));
        cmd.args(["stress", "crash", "--kills", "2", "--rate", "500"])
            .env_remove("RUST_LOG");
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd.output().expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run(false);
    assert!(stdout.contains("lost 0"), "{stdout}");
    let warnings = stdout
        .lines()
        .find(|l| l.starts_with("warnings      : "))
        .unwrap_or_else(|| panic!("no warnings line: {stdout}"));
    // Two kills: the clients of the killed server retried and said so.
    assert!(warnings.contains("\"read failed; retrying\""), "{warnings}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped output: {stderr}"
    );

    let (stdout, stderr) = run(true);
    assert!(!stdout.contains("warnings      : "), "{stdout}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped output: {stderr}"
    );
}

/// The whole system for two minutes (13 engine processes on two servers of the soak's own,
/// beside its checked traffic) with a broker kill of each bus, a consumer kill, a slow consumer
/// and a burst: nothing of the checked traffic lost, duplicated or out of order, no engine
/// process died, and the report has every process's peak memory.
#[test]
fn a_two_minute_soak_of_the_whole_system_loses_nothing() {
    let _serial = one_at_a_time();
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["stress", "soak", "--duration", "2m", "--json"])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("one JSON object ({e}): {text}\n{stderr}"));
    assert!(out.status.success(), "{v}\n{stderr}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(n("published") > 0, "{v}");
    assert_eq!(n("lost"), 0, "{v}");
    assert_eq!(n("duplicated"), 0, "{v}");
    assert_eq!(n("reordered"), 0, "{v}");
    assert_eq!(n("delivered"), n("expected"), "{v}");
    // Both checked groups, each checked.
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{v}");
    for g in groups {
        assert!(g["expected"].as_u64() > Some(0), "{g}");
        assert_eq!(g["lost"], 0, "{g}");
    }
    // The faults happened: each broker killed, a consumer killed, a stall and a burst.
    for bus in ["md", "logic"] {
        assert!(v["broker_kills"][bus].as_u64() >= Some(1), "{bus}: {v}");
    }
    assert!(n("consumer_kills") >= 1, "{v}");
    assert!(n("checked_consumer_kills") >= 1, "{v}");
    assert!(n("slow_consumer_stalls") >= 1, "{v}");
    assert!(n("bursts") >= 1, "{v}");
    assert!(n("failovers") >= 2 && n("failbacks") >= 2, "{v}");
    // The broker-side counts are read.
    assert!(
        v["dead_lettered"].is_u64() && v["trimmed_unread"].is_u64(),
        "{v}"
    );
    // Every engine process ran to the end and has its peak memory; none died on its own.
    let engines = v["engines"].as_array().expect("engines");
    assert_eq!(engines.len(), 13, "{v}");
    for e in engines {
        assert!(e["peak_rss_bytes"].as_u64() > Some(0), "{e}");
        assert_eq!(e["stopped"], "terminated", "{e}");
    }
    assert_eq!(v["engine_deaths"], serde_json::json!([]), "{v}");
    assert_eq!(v["failures"], serde_json::json!([]), "{v}");
    let rss = v["peak_rss_bytes"].as_object().expect("peak_rss_bytes");
    for p in [
        "self",
        "redis-server md",
        "redis-server logic",
        "engine marketdata",
    ] {
        assert!(rss.get(p).and_then(|b| b.as_u64()) > Some(0), "{p}: {v}");
    }
}
