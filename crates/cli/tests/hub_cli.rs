//! `dualbus hub` and `dualbus bench hub` as a user runs them.

use std::path::PathBuf;
use std::process::Command;

fn dualbus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .env_remove("DUALBUS_TRANSPORT")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

#[test]
fn hub_replays_a_binance_file_to_its_end_and_reports_json() {
    let file = sample("binance-btcusdt-trades-2021-01-08.csv");
    let file = file.to_str().expect("utf-8 path");
    let (ok, out, err) = dualbus(&[
        "hub",
        "--provider",
        "replay",
        "--file",
        file,
        "--format",
        "binance",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["stopped"], "end of data");
    assert_eq!(v["feed_done"], true);
    // 2,001 trades and the 1-minute bars they make (the sample spans under a minute: 1 bar).
    assert_eq!(v["accepted"], 2002, "{v}");
    assert_eq!(v["published"], 2002, "{v}");
    assert_eq!(v["provider_skipped"], 0);
}

#[test]
fn hub_names_a_missing_file_and_a_bad_format() {
    let (ok, _, err) = dualbus(&[
        "hub",
        "--provider",
        "replay",
        "--file",
        "/nonexistent/x.csv",
        "--format",
        "binance",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/x.csv"), "{err}");
    let (ok, _, err) = dualbus(&[
        "hub",
        "--provider",
        "replay",
        "--file",
        "x.csv",
        "--format",
        "parquet",
    ]);
    assert!(!ok);
    assert!(err.contains("\"parquet\""), "{err}");
    let (ok, _, err) = dualbus(&["hub", "--provider", "replay"]);
    assert!(!ok);
    assert!(err.contains("--file"), "{err}");
}

#[test]
fn bench_hub_json_has_the_cache_figures() {
    let (ok, out, err) = dualbus(&[
        "bench",
        "hub",
        "--engines",
        "3",
        "--duration",
        "2s",
        "--snapshot-every-ms",
        "200",
        "--history-latency-ms",
        "500",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "exactly one JSON object: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("valid JSON");
    for k in [
        "requests",
        "hits",
        "misses",
        "upstream_calls",
        "coalesced",
        "hit_rate",
        "upstream_ratio",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(n("requests"), n("hits") + n("misses"), "{v}");
    // 3 engines ask for the history of 13 symbols as they start: one upstream call per symbol,
    // the other requests joined it or found its answer cached; every snapshot request finds
    // data (the clients start once every symbol has some).
    assert_eq!(n("history_requests"), 39, "{v}");
    assert_eq!(n("upstream_calls"), 13, "{v}");
    assert_eq!(n("misses"), 13 + n("coalesced"), "{v}");
    assert_eq!(
        n("hits"),
        n("snapshot_requests") + 26 - n("coalesced"),
        "{v}"
    );
    assert_eq!(n("failed"), 0, "{v}");
    assert!(v["distribution"]["deliveries"].as_u64().unwrap() > 0, "{v}");
}
