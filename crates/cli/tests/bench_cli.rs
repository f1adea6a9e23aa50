//! `dualbus bench` as a user runs it: one JSON object with the documented keys, every message
//! delivered once.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "dualbus bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "exactly one JSON object: {text}");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn throughput_json_has_every_key_and_loses_nothing() {
    let v = bench(&["throughput", "--messages", "20000"]);
    for k in [
        "backend",
        "scenario",
        "mode",
        "messages",
        "payload_bytes",
        "duration_s",
        "throughput_msgs_per_s",
        "delivered",
        "lost",
        "duplicated",
        "latency_ns",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ns"].get(k).is_some(), "missing latency_ns.{k}");
    }
    assert_eq!(v["backend"], "memory");
    assert_eq!(v["scenario"], "throughput");
    assert_eq!(v["delivered"], 20000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
}

#[test]
fn fanout_delivers_to_every_group() {
    let v = bench(&[
        "fanout",
        "--messages",
        "5000",
        "--groups",
        "12",
        "--mode",
        "fast",
    ]);
    assert_eq!(v["delivered"], 60000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["mode"], "fast");
}

#[test]
fn latency_is_paced() {
    let v = bench(&["latency", "--messages", "2000", "--rate", "20000"]);
    assert_eq!(v["delivered"], 2000);
    assert_eq!(v["lost"], 0);
}

#[test]
fn stall_with_reject_bounds_the_queue() {
    let v = bench(&[
        "stall",
        "--messages",
        "50000",
        "--queue-bound",
        "1000",
        "--backpressure",
        "reject",
        "--batch",
        "100",
    ]);
    assert_eq!(v["accepted"], 1000);
    assert_eq!(v["rejected"], 49000);
    assert_eq!(v["blocked"], false);
    assert_eq!(v["retained_in_stream"], 1000);
}

#[test]
fn bad_values_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["bench", "throughput", "--mode", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sometimes"), "{err}");
}
