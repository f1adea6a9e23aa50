//! `dualbus vpin` on the real Binance sample, as the README shows it.

use std::process::Command;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/data/binance-btcusdt-trades-2021-01-08.csv"
);

fn vpin(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["vpin", SAMPLE, "--format", "binance"])
        .args(extra)
        .output()
        .expect("runs")
}

/// One-second bars and half-BTC buckets: enough VPIN values from the 46 s sample.
const SMALL_BUCKETS: &[&str] = &[
    "--bar-secs",
    "1",
    "--bucket-volume",
    "0.5",
    "--window",
    "10",
    "--sigma-bars",
    "20",
];

#[test]
fn one_json_object_per_bucket_from_the_window_on() {
    let out = vpin(&[SMALL_BUCKETS, &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert!(!rows.is_empty());
    // The first VPIN comes with bucket `window`, then one per bucket, in order.
    assert_eq!(rows[0]["bucket"], 10);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["bucket"].as_u64().unwrap(), 10 + i as u64, "{r}");
        assert_eq!(r["symbol"], "BTCUSDT");
        let v = r["vpin"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{r}");
        let (b, s) = (
            r["buy_volume"].as_f64().unwrap(),
            r["sell_volume"].as_f64().unwrap(),
        );
        assert!(
            (b + s - 0.5).abs() < 1e-9,
            "a bucket holds exactly 0.5: {r}"
        );
        assert!(r["ts"].as_u64().unwrap() >= 1_610_064_000_278_000_000);
    }
    // 87.07 BTC in 0.5 buckets: 174 buckets at most, less the first bar's (reference) volume.
    assert!(rows.len() <= 174 - 9, "{}", rows.len());
}

#[test]
fn bad_parameters_and_formats_are_named() {
    let out = vpin(&["--bucket-volume=-2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bucket_volume -2"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["vpin", SAMPLE, "--format", "quotes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs trades"));
}

/// The table is for people: bucket times as ISO 8601 UTC, not Unix nanoseconds.
#[test]
fn the_table_shows_bucket_times_in_utc() {
    let out = vpin(SMALL_BUCKETS);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("BTCUSDT")).collect();
    assert!(!rows.is_empty(), "{text}");
    for r in rows {
        assert!(r.contains(" 2021-01-08T00:0"), "{r}");
        assert!(!r.contains("161006"), "{r}");
    }
}
