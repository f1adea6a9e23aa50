//! The HTML report of `dualbus backtest --html`: one self-contained page (inline SVG and CSS,
//! no script, nothing fetched) with the summary table, the equity curve beside buy and hold,
//! the drawdown curve, each symbol's price with its fills, the P&L by symbol and the trade log.

use super::recorded::{Ledger, PriceTape};
use crate::commands::plot::{self, Line, XAxis};
use crate::commands::summary::{few_returns, span};
use serde_json::Value;
use std::fmt::Write;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number with `d` decimals, or `-`.
fn num(v: &Value, d: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.d$}"))
        .unwrap_or_else(|| "-".into())
}

/// The x axis: data time since the first event, in a unit that suits the span; every
/// time chart spans the whole data, so they line up.
struct TimeAxis {
    t0: u64,
    t1: u64,
    unit_ns: f64,
    axis: XAxis,
}

impl TimeAxis {
    fn new(tape: &PriceTape) -> TimeAxis {
        let t0 = tape.first_ts.unwrap_or(0);
        let t1 = tape.last_ts.unwrap_or(t0);
        let covers = tape.covers_s();
        let (unit_ns, unit) = if covers < 3.0 * 3_600.0 {
            (60e9, "minutes")
        } else if covers < 3.0 * 86_400.0 {
            (3_600e9, "hours")
        } else {
            (86_400e9, "days")
        };
        let end = ((t1 - t0) as f64 / unit_ns).max(1e-3);
        TimeAxis {
            t0,
            t1,
            unit_ns,
            axis: XAxis {
                desc: format!("{unit} since {}", dualbus_engines::tearsheet::iso8601(t0)),
                range: -end * 0.01..end * 1.01,
            },
        }
    }

    fn x(&self, ts: u64) -> f64 {
        (ts as f64 - self.t0 as f64) / self.unit_ns
    }

    /// `points` with the last value held until the end of the data (each update holds until
    /// the next, the last until the end).
    fn held(&self, mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
        let end = self.x(self.t1);
        if let Some(&(x, y)) = points.last() {
            if x < end {
                points.push((end, y));
            }
        }
        points
    }
}

/// The last price at or before `ts` (the first price before any).
fn price_at(prices: &[(u64, f64)], ts: u64) -> Option<f64> {
    let i = prices.partition_point(|p| p.0 <= ts);
    prices.get(i.saturating_sub(1)).map(|p| p.1)
}

/// The page.
///
/// # Errors
/// A chart that cannot be drawn.
pub(crate) fn page(report: &Value, ledger: &Ledger, tape: &PriceTape) -> anyhow::Result<String> {
    let axis = TimeAxis::new(tape);
    let mut h = String::new();
    let d = &report["data"];
    let source = match d["file"].as_str() {
        Some(f) => format!("{} ({})", esc(f), esc(d["format"].as_str().unwrap_or("?"))),
        None => format!("the synthetic market, seed {}", d["seed"]),
    };
    let symbols: Vec<&str> = d["symbols"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dualbus backtest</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}}\
         table{{border-collapse:collapse;margin:8px 0 24px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}\
         th{{background:#f3f3f3}} td.l,th.l{{text-align:left}}\
         .note{{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px}}\
         svg{{display:block;margin:8px 0 20px}}\
         </style></head><body>\n<h1>Backtest</h1>\n<p>{source}; {}; {} to {} ({}).</p>\n",
        esc(&symbols.join(", ")),
        esc(d["from"].as_str().unwrap_or("-")),
        esc(d["to"].as_str().unwrap_or("-")),
        span(d["covers_s"].as_f64().unwrap_or(0.0))
    )?;
    if let Some(note) = report["warm_up"]["note"].as_str() {
        writeln!(h, "<p class=\"note\">No trades possible: {}</p>", esc(note))?;
    }

    // The summary table.
    let p = &report["performance"];
    let per = &report["sharpe"]["per_period"];
    let sharpe = match (
        report["sharpe"]["annualized"].as_f64(),
        per["value"].as_f64(),
    ) {
        (Some(a), _) => format!(
            "{a:.2} (annualized from {} daily returns{})",
            per["returns"],
            few_returns(per)
        ),
        (None, Some(v)) => format!(
            "{v:.4} per {} period ({} returns; under two days of data, not annualized)",
            if per["period"] == "1m" {
                "1-minute"
            } else {
                "1-day"
            },
            per["returns"]
        ),
        (None, None) => "- (fewer than 2 returns, or no variation)".into(),
    };
    let rt = &report["round_trips"];
    let e = &report["exposure"];
    let bh = &report["benchmark"]["buy_and_hold"];
    let rows: Vec<(&str, String)> = vec![
        (
            "P&L",
            format!("{} ({}%)", num(&p["pnl"], 2), num(&p["return_pct"], 3)),
        ),
        (
            "equity",
            format!(
                "{} &rarr; {}",
                num(&report["pnl"]["initial_equity"], 2),
                num(&report["pnl"]["final_equity"], 2)
            ),
        ),
        (
            "realized / unrealized / fees",
            format!(
                "{} / {} / {}",
                num(&report["pnl"]["realized"], 2),
                num(&report["pnl"]["unrealized"], 2),
                num(&report["pnl"]["fees"], 2)
            ),
        ),
        (
            "buy and hold (equal weight, first to last price)",
            format!("{}%", num(&bh["return_pct"], 3)),
        ),
        ("Sharpe ratio", sharpe),
        (
            "max drawdown",
            format!("{}%", num(&report["drawdown"]["max_pct"], 3)),
        ),
        (
            "longest time under water",
            span(
                report["drawdown"]["longest_under_water_s"]
                    .as_f64()
                    .unwrap_or(0.0),
            ),
        ),
        (
            "exposure (gross notional): average / max",
            format!("{} / {}", num(&e["avg_gross"], 2), num(&e["max_gross"], 2)),
        ),
        (
            "time in the market",
            format!("{}%", num(&e["time_in_market_pct"], 1)),
        ),
        (
            "round trips closed: won / lost",
            format!(
                "{}: {} / {} (win rate {}); {} still open",
                rt["closed"],
                rt["wins"],
                rt["losses"],
                rt["win_rate"]
                    .as_f64()
                    .map(|x| format!("{:.1}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                rt["open"]
            ),
        ),
        (
            "average win / average loss",
            format!("{} / {}", num(&rt["avg_win"], 2), num(&rt["avg_loss"], 2)),
        ),
        (
            "fills / rejected orders",
            format!("{} / {}", report["fills"], report["rejected_orders"]),
        ),
        ("turnover", num(&p["turnover"], 2)),
    ];
    h.push_str("<h2>Summary</h2>\n<table>\n");
    for (k, v) in rows {
        writeln!(
            h,
            "<tr><th class=\"l\">{k}</th><td class=\"l\">{v}</td></tr>"
        )?;
    }
    h.push_str("</table>\n");

    // Equity beside buy and hold, then drawdown.
    let initial = report["pnl"]["initial_equity"].as_f64().unwrap_or(0.0);
    let equity: Vec<(f64, f64)> = ledger.equity.iter().map(|p| (axis.x(p.0), p.1)).collect();
    let held: Vec<&str> = bh["symbols"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Buy and hold at each update and at the end of the data.
    let hold: Vec<(f64, f64)> = ledger
        .equity
        .iter()
        .map(|p| p.0)
        .chain(tape.last_ts)
        .filter_map(|ts| {
            let ratios: Option<Vec<f64>> = held
                .iter()
                .map(|s| {
                    let prices = tape.symbols.get(*s)?.prices();
                    Some(price_at(prices, ts)? / prices.first()?.1)
                })
                .collect();
            let r = ratios.filter(|r| !r.is_empty())?;
            Some((axis.x(ts), initial * r.iter().sum::<f64>() / r.len() as f64))
        })
        .collect();
    h.push_str("<h2>Equity and drawdown</h2>\n");
    h.push_str(&plot::lines(
        &format!(
            "Equity: strategy (blue), buy and hold of {} (orange)",
            held.join(", ")
        ),
        &axis.axis,
        "equity",
        &[
            Line {
                name: "strategy".into(),
                points: axis.held(equity),
            },
            Line {
                name: format!("buy and hold ({})", held.join(", ")),
                points: hold,
            },
        ],
    )?);
    let drawdown: Vec<(f64, f64)> = ledger
        .equity
        .iter()
        .map(|p| (axis.x(p.0), -p.3 * 100.0))
        .collect();
    h.push_str(&plot::lines(
        "Drawdown (% below the running peak)",
        &axis.axis,
        "drawdown, %",
        &[Line {
            name: "drawdown".into(),
            points: axis.held(drawdown),
        }],
    )?);

    // Each symbol's price with its fills.
    h.push_str("<h2>Prices and fills</h2>\n");
    for (sym, prices) in &tape.symbols {
        let fills = ledger.changes.iter().filter(|c| &c.symbol == sym);
        let (mut buys, mut sells) = (Vec::new(), Vec::new());
        for c in fills {
            let pt = (axis.x(c.ts), c.fill_price);
            if c.delta >= 0.0 {
                buys.push(pt);
            } else {
                sells.push(pt);
            }
        }
        let line: Vec<(f64, f64)> = prices.prices().iter().map(|p| (axis.x(p.0), p.1)).collect();
        h.push_str(&plot::price_with_fills(
            &format!(
                "{sym}: price (grey), {} buys (green, up), {} sells (red, down)",
                buys.len(),
                sells.len()
            ),
            &axis.axis,
            &line,
            &buys,
            &sells,
        )?);
    }

    // P&L by symbol.
    let by_symbol: Vec<(String, f64)> = p["pnl_by_symbol"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    h.push_str("<h2>P&amp;L by symbol</h2>\n");
    if by_symbol.is_empty() {
        h.push_str("<p>No symbol was traded.</p>\n");
    } else {
        h.push_str(&plot::bars(
            "P&L by symbol (realized + unrealized, before fees)",
            "P&L",
            &by_symbol,
        )?);
    }

    // The trade log.
    let trades = report["trades"].as_array().cloned().unwrap_or_default();
    writeln!(h, "<h2>Trade log ({} fills)</h2>", trades.len())?;
    h.push_str(
        "<table>\n<tr><th class=\"l\">time (UTC)</th><th class=\"l\">symbol</th>\
         <th class=\"l\">side</th><th>qty</th><th>price</th><th>fee</th>\
         <th>realized P&amp;L</th></tr>\n",
    );
    for t in &trades {
        writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(t["time"].as_str().unwrap_or("")),
            esc(t["symbol"].as_str().unwrap_or("")),
            esc(t["side"].as_str().unwrap_or("")),
            num(&t["qty"], 6),
            num(&t["price"], 4),
            num(&t["fee"], 4),
            num(&t["realized_pnl"], 4)
        )?;
    }
    h.push_str("</table>\n</body></html>\n");
    Ok(h)
}
