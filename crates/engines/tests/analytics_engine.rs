//! The Analytics engine on the bus behind the Portfolio engine: fills and quotes in, and the
//! final `analytics_result` holds what a `PerformanceTracker` fed the Portfolio engine's own
//! output computes; machine figures are apart under `traffic`.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority, StartFrom};
use dualbus_engines::analytics::{AnalyticsEngine, PerformanceTracker};
use dualbus_engines::engine::HostOptions;
use dualbus_engines::portfolio::PortfolioEngine;
use dualbus_model::analytics::AnalyticsResult;
use dualbus_model::market::{Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution};
use dualbus_model::portfolio::{PortfolioUpdate, PositionChange};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_717_171_200 * S;

fn quote(mid: f64, ts: u64) -> Quote {
    Quote {
        symbol: "BTCUSDT".into(),
        ts,
        bid: mid - 0.5,
        ask: mid + 0.5,
        bid_size: 1.0,
        ask_size: 1.0,
    }
}

fn fill(side: Side, qty: f64, price: f64, ts: u64) -> Execution {
    Execution {
        order_id: format!("risk-1-{ts}"),
        symbol: "BTCUSDT".into(),
        side,
        qty,
        price,
        status: ExecStatus::Filled,
        reason: None,
        liquidity: Some("taker".into()),
        ts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_result_matches_the_portfolio_output() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let updates: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Default::default();
        let results: Arc<Mutex<Vec<AnalyticsResult>>> = Default::default();
        let (u, r) = (updates.clone(), results.clone());
        let _sub = root
            .subscribe(
                SubscribeOptions::new(
                    "checker",
                    &[
                        "portfolio_update.>",
                        "position_change.>",
                        "analytics_result.>",
                    ],
                )
                .unwrap()
                .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    if m.kind == EventKind::AnalyticsResult {
                        r.lock().push(m.enc.decode(&m.payload).unwrap());
                    } else {
                        u.lock()
                            .push((m.kind.to_string(), m.enc.decode(&m.payload).unwrap()));
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let analytics = start_engine(
            AnalyticsEngine::default(),
            &root,
            "analytics",
            HostOptions {
                config: serde_json::json!({"every_secs": 120}),
                ..Default::default()
            },
        )
        .await;
        let portfolio = start_engine(
            PortfolioEngine::default(),
            &root,
            "portfolio",
            HostOptions::default(),
        )
        .await;
        // Quotes and fills travel on two streams: each input waits until the portfolio has it.
        let md = root.sibling("marketdata", "marketdata-1").unwrap();
        let mut sent = 0;
        // (is a quote, seconds after T0, price, the fill's side and quantity)
        type Step = (bool, u64, f64, Option<(Side, f64)>);
        let script: Vec<Step> = vec![
            (true, 0, 50_000.0, None),
            (false, 10, 50_010.0, Some((Side::Buy, 1.0))),
            (true, 70, 50_500.0, None),
            (true, 130, 49_800.0, None),
            (false, 140, 49_790.0, Some((Side::Sell, 0.5))),
            (true, 200, 50_200.0, None),
            (true, 260, 50_600.0, None),
            (false, 270, 50_590.0, Some((Side::Sell, 0.5))),
            (true, 330, 50_100.0, None),
        ];
        for (is_quote, secs, px, f) in script {
            let ts = T0 + secs * S;
            if is_quote {
                let env = md
                    .envelope(
                        EventKind::MarketData,
                        "market_data.quote.BTCUSDT",
                        Priority::Normal,
                        &quote(px, ts),
                    )
                    .unwrap();
                md.publish_envelope(env).await.unwrap();
            } else {
                let (side, qty) = f.unwrap();
                let env = md
                    .envelope(
                        EventKind::TradeExecution,
                        "trade_execution.BTCUSDT",
                        Priority::High,
                        &fill(side, qty, px, ts),
                    )
                    .unwrap();
                md.publish_envelope(env).await.unwrap();
            }
            sent += 1;
            while portfolio.counts().received.values().sum::<u64>() < sent {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Everything the portfolio published reached analytics before it stops.
        let published = || {
            portfolio
                .counts()
                .published
                .iter()
                .filter(|(k, _)| *k == "portfolio_update" || *k == "position_change")
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        let want = published();
        loop {
            let got = analytics.counts().received;
            let n = got.get("portfolio_update").copied().unwrap_or(0)
                + got.get("position_change").copied().unwrap_or(0);
            if n >= want && got.get("trade_execution").copied().unwrap_or(0) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        analytics.stop().await;
        portfolio.stop().await;
        while results.lock().last().is_none_or(|r| r.period != "final") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let u = updates.lock().clone();
        let r = results.lock().clone();
        (u, r)
    };
    let (updates, results) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run finishes");
    // The same figures from the Portfolio engine's output, fed in the order it published.
    let mut t = PerformanceTracker::default();
    for (kind, v) in &updates {
        if kind == "portfolio_update" {
            let p: PortfolioUpdate = serde_json::from_value(v.clone()).unwrap();
            let unreal = p
                .positions
                .iter()
                .map(|x| (x.symbol.clone(), x.unrealized_pnl))
                .collect();
            t.on_equity(p.ts, p.equity, unreal);
        } else {
            let c: PositionChange = serde_json::from_value(v.clone()).unwrap();
            t.on_realized(&c.symbol, c.realized_pnl, c.fee);
            t.on_fill(c.ts, c.delta.abs() * c.fill_price);
        }
    }
    let want = t.performance();
    let last = results.last().unwrap();
    assert_eq!(last.period, "final");
    assert_eq!(last.performance.fills, 3);
    assert_eq!(last.performance.equity, want.equity);
    assert!((last.performance.turnover - want.turnover).abs() < 1e-12);
    assert_eq!(last.performance.hit_rate, want.hit_rate);
    assert_eq!(last.performance.pnl_by_symbol, want.pnl_by_symbol);
    assert_eq!(
        last.performance.hit_rate_after_fees,
        want.hit_rate_after_fees
    );
    assert_eq!(
        last.performance.pnl_by_symbol_after_fees,
        want.pnl_by_symbol_after_fees
    );
    assert_eq!(last.performance.sharpe, want.sharpe);
    assert!((last.performance.max_drawdown - want.max_drawdown).abs() < 1e-15);
    // Sold 0.5 at 49,790 from 50,010: a loss; 0.5 at 50,590: a win.
    assert_eq!(last.performance.hit_rate, Some(0.5));
    // A periodic report came before the final one (every 120 s of data time).
    assert!(
        results.iter().any(|r| r.period == "periodic"),
        "{results:?}"
    );
    let md = &last.traffic["market_data"];
    assert_eq!(md.received, 3, "three fills came over the MarketData bus");
    assert!(md.latency_p99_us.is_some());
}
