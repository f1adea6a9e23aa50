//! `dualbus backtest`: the same file twice gives byte-identical JSON reports (apart from the
//! `wall_clock` section), with fills, P&L and messages per kind; so does the synthetic market
//! with the same seed, and it trades; the report's tearsheet (trade log, round trips, exposure,
//! drawdown, buy-and-hold benchmark) agrees with the data; data too short to warm the strategy
//! up is said so in words; bad arguments are named.

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
    // Buy and hold: the last trade price of the file over the first, minus 1.
    let csv = std::fs::read_to_string(&data).unwrap();
    let price = |line: &str| line.split(',').nth(1).unwrap().parse::<f64>().unwrap();
    let (first, last) = (
        price(csv.lines().next().unwrap()),
        price(csv.lines().last().unwrap()),
    );
    let bh = &r["benchmark"]["buy_and_hold"];
    assert_eq!(bh["symbols"], serde_json::json!(["BTCUSDT"]), "{bh}");
    let got = bh["return_pct"].as_f64().unwrap() / 100.0;
    assert!(
        (got - (last / first - 1.0)).abs() < 1e-12,
        "{got} vs {first} -> {last}"
    );
    assert_tearsheet(&r);
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

/// The tearsheet's sections agree with each other and with the fills.
fn assert_tearsheet(r: &serde_json::Value) {
    let fills = r["fills"].as_u64().unwrap();
    let trades = r["trades"].as_array().expect("a trade log");
    assert_eq!(trades.len() as u64, fills, "one trade-log entry per fill");
    for t in trades {
        assert!(t["time"].as_str().unwrap().ends_with('Z'), "{t}");
        assert!(
            ["buy", "sell"].contains(&t["side"].as_str().unwrap()),
            "{t}"
        );
        assert!(t["qty"].as_f64().unwrap() > 0.0 && t["price"].as_f64().unwrap() > 0.0);
        assert!(t["fee"].as_f64().unwrap() >= 0.0);
    }
    // The trade log's realized P&L and fees add up to the book's.
    let sum = |k: &str| trades.iter().map(|t| t[k].as_f64().unwrap()).sum::<f64>();
    let realized = r["pnl"]["realized"].as_f64().unwrap();
    assert!((sum("realized_pnl") - realized).abs() < 1e-6 * (1.0 + realized.abs()));
    let fees = r["pnl"]["fees"].as_f64().unwrap();
    assert!((sum("fee") - fees).abs() < 1e-6 * (1.0 + fees));
    let rt = &r["round_trips"];
    let (closed, wins, losses) = (
        rt["closed"].as_u64().unwrap(),
        rt["wins"].as_u64().unwrap(),
        rt["losses"].as_u64().unwrap(),
    );
    assert!(wins + losses <= closed && closed <= fills, "{rt}");
    if wins > 0 {
        assert!(rt["avg_win"].as_f64().unwrap() > 0.0, "{rt}");
    }
    if losses > 0 {
        assert!(rt["avg_loss"].as_f64().unwrap() < 0.0, "{rt}");
    }
    let dd = r["drawdown"]["max_pct"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&dd), "{dd}");
    assert!(r["drawdown"]["longest_under_water_s"].as_f64().unwrap() >= 0.0);
    let e = &r["exposure"];
    let pct = e["time_in_market_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct), "{e}");
    assert!(e["avg_gross"].as_f64().unwrap() <= e["max_gross"].as_f64().unwrap() + 1e-9);
    // The benchmark is the mean of its symbols' returns, each last / first - 1.
    let bh = &r["benchmark"]["buy_and_hold"];
    let syms = bh["symbols"].as_array().unwrap();
    let mut mean = 0.0;
    for s in syms {
        let h = &bh["by_symbol"][s.as_str().unwrap()];
        let want =
            (h["last_price"].as_f64().unwrap() / h["first_price"].as_f64().unwrap() - 1.0) * 100.0;
        assert!(
            (h["return_pct"].as_f64().unwrap() - want).abs() < 1e-9,
            "{h}"
        );
        mean += want / syms.len() as f64;
    }
    assert!(
        (bh["return_pct"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{bh}"
    );
}

#[test]
fn the_synthetic_market_trades_and_the_same_seed_gives_the_same_report() {
    let dir = std::env::temp_dir().join(format!("dualbus-backtest-syn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut reports = Vec::new();
    for i in 0..2 {
        let report = dir.join(format!("report-{i}.json"));
        let (ok, out, err) = dualbus(&[
            "backtest",
            "--provider",
            "synthetic",
            "--duration",
            "40m",
            "--seed",
            "7",
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(
            out.contains("buy and hold") && out.contains("round trips"),
            "{out}"
        );
        assert!(!out.contains("NO TRADES POSSIBLE"), "{out}");
        // Alerts and messages as words and tables, not raw JSON.
        assert!(!out.contains("{\""), "{out}");
        // The progress bar is for a terminal: none in captured output.
        assert!(
            !err.contains("backtest [") && !err.contains('\u{1b}'),
            "{err}"
        );
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("wall_clock");
        reports.push(serde_json::to_string(&v).unwrap());
    }
    assert_eq!(reports[0], reports[1], "two runs of the same seed differ");
    let r: serde_json::Value = serde_json::from_str(&reports[0]).unwrap();
    assert!(r["fills"].as_u64().unwrap() > 0, "{r}");
    assert!(r["performance"]["pnl"].as_f64().unwrap() != 0.0, "{r}");
    assert_eq!(r["data"]["provider"], "synthetic");
    assert_eq!(r["data"]["seed"], 7);
    assert_eq!(r["warm_up"]["enough"], true);
    // Under two days: the Sharpe ratio is per minute, never annualized.
    assert!(r["sharpe"]["annualized"].is_null(), "{}", r["sharpe"]);
    assert_eq!(r["sharpe"]["per_period"]["period"], "1m");
    assert_tearsheet(&r);
    // Another seed, another market.
    let other = dir.join("other.json");
    let (ok, _, err) = dualbus(&[
        "backtest",
        "--provider",
        "synthetic",
        "--duration",
        "40m",
        "--seed",
        "8",
        "--report",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
    assert_ne!(o["benchmark"], r["benchmark"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_too_short_to_warm_up_is_said_so() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/binance-btcusdt-trades-2021-01-08.csv");
    let (ok, out, err) = dualbus(&[
        "backtest",
        "--data",
        file.to_str().unwrap(),
        "--format",
        "binance",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("the data covers 46 s")
            && out.contains("the strategy needs 34 bars of 60 s of a symbol before it trades"),
        "{out}"
    );
    assert!(out.contains("fills 0"), "{out}");
    // A quote file makes no bar at all: longer data would not help, and the sentence says why.
    let quotes = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/truefx-usdjpy-quotes-2013-01.csv");
    let (ok, out, err) = dualbus(&[
        "backtest",
        "--data",
        quotes.to_str().unwrap(),
        "--format",
        "quotes",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("the data covers 35 min of quotes without trades")
            && out.contains("builds its bars from trades"),
        "{out}"
    );
}

#[test]
fn exactly_one_source_of_data_is_given() {
    let (ok, _, err) = dualbus(&["backtest"]);
    assert!(!ok);
    assert!(
        err.contains("--provider synthetic") && err.contains("--data FILE"),
        "{err}"
    );
    let (ok, _, err) = dualbus(&[
        "backtest",
        "--provider",
        "synthetic",
        "--data",
        "x.csv",
        "--format",
        "binance",
    ]);
    assert!(!ok);
    assert!(err.contains("not both"), "{err}");
    let (ok, _, err) = dualbus(&["backtest", "--data", "Cargo.toml", "--seed", "3"]);
    assert!(!ok);
    assert!(err.contains("--seed"), "{err}");
    let (ok, _, err) = dualbus(&["backtest", "--provider", "synthetic", "--format", "binance"]);
    assert!(!ok);
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn the_html_report_is_one_file_with_plotted_charts_and_the_trade_log() {
    let dir = std::env::temp_dir().join(format!("dualbus-backtest-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (html, report) = (dir.join("report.html"), dir.join("report.json"));
    let (ok, out, err) = dualbus(&[
        "backtest",
        "--provider",
        "synthetic",
        "--duration",
        "30m",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--html",
        html.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("HTML report written to"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    // Self-contained: nothing to fetch (the SVG namespace is a name, not a fetch).
    let fetchable = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for external in ["<script", "<link", "src=", "url(", "http://", "https://"] {
        assert!(!fetchable.contains(external), "{external} in the page");
    }
    // Equity, drawdown, one price chart per symbol, P&L by symbol: 5 charts with lines drawn.
    assert_eq!(page.matches("<svg").count(), 5, "charts");
    let lines = page
        .split("<polyline")
        .skip(1)
        .filter(|p| {
            p.split("points=\"")
                .nth(1)
                .map_or(0, |s| s.split('"').next().unwrap().split(' ').count())
                > 2
        })
        .count();
    assert!(lines >= 4, "{lines} plotted lines");
    // Buys and sells are marked (triangles), and the charts carry their text.
    assert!(page.contains("<polygon"), "fills marked");
    assert!(page.contains("buys (green, up)") && page.contains("sells (red, down)"));
    assert!(page.contains("Drawdown (% below the running peak)"));
    // The trade log has a row per fill.
    let fills = r["fills"].as_u64().unwrap();
    assert!(fills > 0);
    assert!(
        page.contains(&format!("Trade log ({fills} fills)")),
        "trade log heading"
    );
    let first = r["trades"][0]["time"].as_str().unwrap();
    assert!(page.contains(first), "{first}");
    std::fs::remove_dir_all(&dir).unwrap();
}
