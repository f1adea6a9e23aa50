//! `dualbus backtest`: the same file twice gives byte-identical JSON reports (apart from the
//! `wall_clock` section), with fills, P&L and messages per kind; bad arguments are named.

use std::path::Path;
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

/// Four hours of a seeded random walk in Binance's trade format, a trade every 1-2 s.
fn write_trades(path: &Path) {
    let mut state: u64 = 42;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut price, mut t_ms) = (40_000.0f64, 1_610_064_000_000u64);
    let mut csv = String::new();
    for id in 0..10_000 {
        t_ms += 1_000 + (next() * 1_000.0) as u64;
        price *= 1.0 + (next() - 0.5) * 0.0012;
        let qty = 0.001 + next() * 0.05;
        let maker = next() < 0.5;
        csv.push_str(&format!(
            "{id},{price:.2},{qty:.6},{:.8},{t_ms},{maker},True\n",
            price * qty
        ));
    }
    std::fs::write(path, csv).unwrap();
}

#[test]
fn the_same_file_gives_the_same_report() {
    let dir = std::env::temp_dir().join(format!("dualbus-backtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("trades.csv");
    write_trades(&data);
    let mut reports = Vec::new();
    for i in 0..2 {
        let report = dir.join(format!("report-{i}.json"));
        let (ok, out, err) = dualbus(&[
            "backtest",
            "--data",
            data.to_str().unwrap(),
            "--format",
            "binance",
            "--symbol",
            "BTCUSDT",
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(out.contains("P&L") && out.contains("Sharpe"), "{out}");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert!(v["wall_clock"]["elapsed_s"].as_f64().is_some(), "{v}");
        v.as_object_mut().unwrap().remove("wall_clock");
        reports.push(serde_json::to_string(&v).unwrap());
    }
    assert_eq!(reports[0], reports[1], "two runs of the same file differ");
    let r: serde_json::Value = serde_json::from_str(&reports[0]).unwrap();
    assert!(r["fills"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["messages"]["market_data"]["trade_execution"], r["fills"],
        "{r}"
    );
    assert!(
        r["messages"]["engine_logic"]["order_request"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(r["pnl"]["final_equity"].as_f64().is_some(), "{r}");
    assert!(r["performance"]["max_drawdown"].as_f64().is_some(), "{r}");
    assert!(
        r["engines"]["portfolio"]["received"]["trade_execution"]
            .as_u64()
            .unwrap()
            > 0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_and_a_bad_format_are_named() {
    let (ok, _, err) = dualbus(&[
        "backtest",
        "--data",
        "/nonexistent.csv",
        "--format",
        "binance",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent.csv"), "{err}");
    let (ok, _, err) = dualbus(&["backtest", "--data", "Cargo.toml", "--format", "fix"]);
    assert!(!ok);
    assert!(err.contains("fix"), "{err}");
}
