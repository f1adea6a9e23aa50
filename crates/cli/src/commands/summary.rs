//! How `dualbus run` and `dualbus backtest` print their summaries: latency in milliseconds,
//! the alerts table, spans of data time, the caution after a Sharpe ratio of few returns.

use serde_json::Value;

/// Milliseconds from whole microseconds, for the status line and summaries.
pub fn ms(us: Option<u64>) -> String {
    ms_f(us.map(|us| us as f64))
}

/// Milliseconds from (fractional) microseconds, for the status line.
pub fn ms_f(us: Option<f64>) -> String {
    match us {
        Some(us) => format!("{:.2} ms", us / 1000.0),
        None => "-".into(),
    }
}

/// The alerts of a run or backtest (the `alerts` object of its report) as a table of kind,
/// rule and count, or "alerts none".
pub fn print_alerts(a: &Value) {
    let mut rows: Vec<(String, String, u64)> = Vec::new();
    for (kind, label) in [
        ("toxicity_alert", "toxicity"),
        ("margin_call", "margin call"),
    ] {
        if let Some(n) = a[kind].as_u64().filter(|n| *n > 0) {
            rows.push((label.into(), "-".into(), n));
        }
    }
    for (kind, label) in [("flash_crash_alert", "flash crash"), ("risk_alert", "risk")] {
        if let Some(m) = a[kind].as_object() {
            for (rule, n) in m {
                rows.push((label.into(), rule.clone(), n.as_u64().unwrap_or(0)));
            }
        }
    }
    if rows.is_empty() {
        println!("  alerts none");
    } else {
        println!("  {:<16} {:<28} {:>8}", "alert", "rule", "count");
        for (kind, rule, n) in rows {
            println!("  {kind:<16} {rule:<28} {n:>8}");
        }
    }
    if a["circuit_breaker_tripped"] == true {
        println!("  the risk engine's circuit breaker tripped: trading was halted");
    }
}

/// A span of data time in words: `46 s`, `34 min`, `5.2 h`, `3.0 days`.
pub fn span(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7_200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3_600.0)
    } else {
        format!("{:.1} days", secs / 86_400.0)
    }
}

/// A caution after a Sharpe ratio of few returns (under 30): its standard deviation, and so
/// the ratio, is a rough estimate.
pub fn few_returns(per: &Value) -> &'static str {
    match per["returns"].as_u64() {
        Some(n) if n < 30 => "; fewer than 30: a rough estimate",
        _ => "",
    }
}
