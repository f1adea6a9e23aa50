//! The Portfolio and Collateral engines on the bus: executions, quotes and feature vectors in,
//! and out the same `position_change`s, `portfolio_update`s and `margin_call`s as the pure
//! `Book` and `MarginModel` compute from the same input, with a margin call when the positions
//! grow past the threshold. Also: the `docs/wire-format.md` examples of the three kinds decode
//! into the engines' types and add up.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority, StartFrom};
use dualbus_engines::collateral::{CollateralEngine, CollateralParams, MarginModel};
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::portfolio::{Book, PortfolioEngine, PortfolioParams};
use dualbus_model::collateral::{MarginCall, REDUCE_POSITIONS};
use dualbus_model::features::FeatureVector;
use dualbus_model::health::EngineCounts;
use dualbus_model::market::{Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution};
use dualbus_model::portfolio::{PortfolioUpdate, PositionChange};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const S: u64 = 1_000_000_000;
/// A minute boundary (1717171200 = 28619520 x 60).
const T0: u64 = 1_717_171_200 * S;

/// One input of the script.
enum Input {
    Quote(Quote),
    Exec(Execution),
}

fn quote(symbol: &str, mid: f64, ts: u64) -> Input {
    Input::Quote(Quote {
        symbol: symbol.into(),
        ts,
        bid: mid - 0.5,
        ask: mid + 0.5,
        bid_size: 1.0,
        ask_size: 1.0,
    })
}

fn fill(symbol: &str, side: Side, qty: f64, price: f64, ts: u64) -> Input {
    Input::Exec(Execution {
        order_id: format!("risk-1-{ts}"),
        symbol: symbol.into(),
        side,
        qty,
        price,
        status: ExecStatus::Filled,
        reason: None,
        liquidity: Some("taker".into()),
        ts,
    })
}

fn rejected(symbol: &str, ts: u64) -> Input {
    Input::Exec(Execution {
        order_id: format!("risk-1-{ts}"),
        symbol: symbol.into(),
        side: Side::Buy,
        qty: 0.0,
        price: 0.0,
        status: ExecStatus::Rejected,
        reason: Some("no quote for ETHUSDT yet".into()),
        liquidity: None,
        ts,
    })
}

/// BTC vol 0.002 (rate 0.05 + 10 x 0.002 = 0.07), ETH vol 0.003 (rate 0.08). Equity stays near
/// 100000, so the BTC position crosses 0.8 near 1.1M of notional (about 22 BTC at 50000).
fn script() -> Vec<Input> {
    use Side::{Buy, Sell};
    vec![
        quote("BTCUSDT", 50_000.0, T0 + S), // first quote: periodic update
        quote("ETHUSDT", 3_000.0, T0 + 2 * S),
        fill("BTCUSDT", Buy, 5.0, 50_010.0, T0 + 2 * S),
        rejected("ETHUSDT", T0 + 3 * S),
        fill("ETHUSDT", Sell, 20.0, 2_999.0, T0 + 3 * S),
        quote("BTCUSDT", 50_500.0, T0 + 61 * S), // new minute
        fill("BTCUSDT", Buy, 10.0, 50_510.0, T0 + 62 * S), // 15 BTC: ~0.58
        fill("BTCUSDT", Buy, 10.0, 50_510.0, T0 + 63 * S), // 25 BTC: ~0.9, the first call
        quote("BTCUSDT", 50_600.0, T0 + 64 * S),
        fill("BTCUSDT", Sell, 15.0, 50_590.0, T0 + 65 * S), // 10 BTC: ~0.4, re-armed
        quote("BTCUSDT", 49_000.0, T0 + 121 * S),           // new minute
        fill("BTCUSDT", Buy, 20.0, 49_010.0, T0 + 122 * S), // 30 BTC: ~1.05, the second call
        fill("ETHUSDT", Buy, 20.0, 3_001.0, T0 + 123 * S),  // ETH flat, still above
        quote("ETHUSDT", 3_050.0, T0 + 181 * S),            // new minute
    ]
}

fn vector(symbol: &str, vol: f64) -> FeatureVector {
    FeatureVector {
        symbol: symbol.into(),
        ts: T0 - 60 * S,
        bar_secs: 60,
        close: 1.0,
        volume: 1.0,
        features: [("realized_vol_20".to_string(), vol)].into_iter().collect(),
    }
}

fn close(a: f64, b: f64) -> bool {
    // Through JSON, floats come back to within a rounding of the last digit.
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

fn same_update(g: &PortfolioUpdate, e: &PortfolioUpdate) -> bool {
    g.account == e.account
        && g.ts == e.ts
        && g.fills == e.fills
        && [
            (g.equity, e.equity),
            (g.cash, e.cash),
            (g.realized_pnl, e.realized_pnl),
            (g.unrealized_pnl, e.unrealized_pnl),
            (g.fees, e.fees),
            (g.gross_exposure, e.gross_exposure),
            (g.net_exposure, e.net_exposure),
            (g.peak_equity, e.peak_equity),
            (g.drawdown, e.drawdown),
        ]
        .iter()
        .all(|(a, b)| close(*a, *b))
        && g.positions.len() == e.positions.len()
        && g.positions.iter().zip(&e.positions).all(|(g, e)| {
            g.symbol == e.symbol
                && close(g.qty, e.qty)
                && close(g.avg_price, e.avg_price)
                && close(g.mark, e.mark)
                && close(g.unrealized_pnl, e.unrealized_pnl)
                && close(g.realized_pnl, e.realized_pnl)
        })
}

fn same_change(g: &PositionChange, e: &PositionChange) -> bool {
    g.account == e.account
        && g.symbol == e.symbol
        && g.ts == e.ts
        && g.order_id == e.order_id
        && [
            (g.prev_qty, e.prev_qty),
            (g.qty, e.qty),
            (g.delta, e.delta),
            (g.avg_price, e.avg_price),
            (g.fill_price, e.fill_price),
            (g.fee, e.fee),
            (g.realized_pnl, e.realized_pnl),
        ]
        .iter()
        .all(|(a, b)| close(*a, *b))
}

fn same_call(g: &MarginCall, e: &MarginCall) -> bool {
    g.account == e.account
        && g.ts == e.ts
        && g.action == e.action
        && g.reason == e.reason
        && close(g.margin_utilization, e.margin_utilization)
        && close(g.threshold, e.threshold)
        && close(g.equity, e.equity)
        && close(g.margin, e.margin)
        && g.positions.len() == e.positions.len()
        && g.positions.iter().zip(&e.positions).all(|(g, e)| {
            g.symbol == e.symbol
                && close(g.notional, e.notional)
                && close(g.rate, e.rate)
                && close(g.margin, e.margin)
        })
}

fn received(c: &EngineCounts) -> u64 {
    c.received.values().sum()
}

#[derive(Default)]
struct Collected {
    updates: Vec<PortfolioUpdate>,
    changes: Vec<PositionChange>,
    calls: Vec<MarginCall>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_publish_what_the_book_and_margin_model_compute() {
    let run = async {
        let portfolio_params = PortfolioParams {
            fee_bps: 2.0,
            ..Default::default()
        };
        let collateral_params = CollateralParams::default();
        let vectors = [vector("BTCUSDT", 0.002), vector("ETHUSDT", 0.003)];

        // What the engines must publish: the pure types over the same input, in order.
        let mut book = Book::new(portfolio_params.clone());
        let mut model = MarginModel::new(collateral_params.clone());
        for v in &vectors {
            model.on_vector(v);
        }
        let (mut want_updates, mut want_changes, mut want_calls) = (vec![], vec![], vec![]);
        for input in script() {
            let u = match input {
                Input::Quote(q) => book.on_quote(&q),
                Input::Exec(x) => book.on_fill(&x).map(|c| {
                    let u = book.update(c.ts);
                    want_changes.push(c);
                    u
                }),
            };
            if let Some(u) = u {
                want_calls.extend(model.on_update(&u));
                want_updates.push(u);
            }
        }
        // 4 periodic updates (first quote, minutes 1, 2, 3) and one per fill (7).
        assert_eq!((want_updates.len(), want_changes.len()), (11, 7));
        assert_eq!(book.counts().rejected, 1);
        // The positions crossed the threshold twice: at 25 BTC, and at 30 BTC after falling
        // back below at 10 BTC.
        let calls_at: Vec<u64> = want_calls.iter().map(|c| c.ts).collect();
        assert_eq!(calls_at, vec![T0 + 63 * S, T0 + 122 * S]);
        let util = |ts: u64| {
            let u = want_updates.iter().rev().find(|u| u.ts == ts).unwrap();
            model.assess(u).utilization
        };
        assert!(util(T0 + 62 * S) < 0.8 && util(T0 + 63 * S) >= 0.8);
        assert!(util(T0 + 65 * S) < 0.8 && util(T0 + 121 * S) < 0.8);
        assert!(util(T0 + 122 * S) >= 0.8 && util(T0 + 123 * S) >= 0.8);
        // The first call by hand: 25 BTC at mid 50500, rate 0.07; 20 ETH short at 3000, 0.08.
        let c = &want_calls[0];
        let margin = 25.0 * 50_500.0 * 0.07 + 20.0 * 3_000.0 * 0.08;
        assert!((c.margin - margin).abs() < 1e-6, "{c:?}");
        assert!((c.margin_utilization - margin / c.equity).abs() < 1e-12);
        assert_eq!(c.action, REDUCE_POSITIONS);

        let root = DualBus::builder("test").build().unwrap();
        let got: Arc<Mutex<Collected>> = Default::default();
        let g = got.clone();
        let _checker = root
            .subscribe(
                SubscribeOptions::new(
                    "checker",
                    &["portfolio_update.>", "position_change.>", "margin_call.>"],
                )
                .unwrap()
                .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    let mut g = g.lock();
                    match m.kind {
                        EventKind::PortfolioUpdate => {
                            assert_eq!(m.topic.as_str(), "portfolio_update.main");
                            assert_eq!(m.prio, Priority::Normal);
                            g.updates.push(m.enc.decode(&m.payload).unwrap());
                        }
                        EventKind::PositionChange => {
                            let c: PositionChange = m.enc.decode(&m.payload).unwrap();
                            assert_eq!(m.topic.as_str(), format!("position_change.{}", c.symbol));
                            assert_eq!(m.prio, Priority::Normal);
                            g.changes.push(c);
                        }
                        EventKind::MarginCall => {
                            assert_eq!(m.topic.as_str(), "margin_call.main");
                            assert_eq!(m.prio, Priority::Critical);
                            g.calls.push(m.enc.decode(&m.payload).unwrap());
                        }
                        _ => {}
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let opts = |config: serde_json::Value| HostOptions {
            start: Some(StartFrom::Oldest),
            config,
            ..Default::default()
        };
        let portfolio = start_engine(
            PortfolioEngine::default(),
            &root,
            "portfolio",
            opts(serde_json::to_value(&portfolio_params).unwrap()),
        )
        .await;
        let collateral = start_engine(
            CollateralEngine::default(),
            &root,
            "collateral",
            opts(serde_json::json!({"base_rate": 0.05, "vol_multiplier": 10.0, "threshold": 0.8})),
        )
        .await;

        // The volatilities first: the collateral engine must know them before any update.
        let features = root.sibling("features", "features-1").unwrap();
        for v in &vectors {
            let topic = format!("feature_vector.{}", v.symbol);
            let env = features
                .envelope(EventKind::FeatureVector, &topic, Priority::Normal, v)
                .unwrap();
            features.publish_envelope(env).await.unwrap();
        }
        while received(&collateral.counts()) < vectors.len() as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // Quotes and executions travel on two streams with no common order: send one at a
        // time, each after the engine has taken the previous one, as the pure book saw them.
        let md = root.sibling("marketdata", "marketdata-1").unwrap();
        for (i, input) in script().into_iter().enumerate() {
            let env = match &input {
                Input::Quote(q) => md.envelope(
                    EventKind::MarketData,
                    &format!("market_data.quote.{}", q.symbol),
                    Priority::Normal,
                    q,
                ),
                Input::Exec(x) => md.envelope(
                    EventKind::TradeExecution,
                    &format!("trade_execution.{}", x.symbol),
                    Priority::High,
                    x,
                ),
            }
            .unwrap();
            md.publish_envelope(env).await.unwrap();
            while received(&portfolio.counts()) < i as u64 + 1 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let want_received = (vectors.len() + want_updates.len()) as u64;
        loop {
            let done = {
                let g = got.lock();
                g.updates.len() >= want_updates.len()
                    && g.changes.len() >= want_changes.len()
                    && g.calls.len() >= want_calls.len()
            };
            if done && received(&collateral.counts()) >= want_received {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nothing more arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let (curve, health) = portfolio
            .with(|e| {
                (
                    e.equity_curve().clone(),
                    dualbus_engines::engine::Engine::health(e),
                )
            })
            .await;
        assert_eq!(curve.len(), want_updates.len());
        assert!(curve
            .iter()
            .zip(&want_updates)
            .all(|(p, u)| p.ts == u.ts && close(p.equity, u.equity)));
        assert_eq!(
            (health["fills"].as_u64(), health["rejected"].as_u64()),
            (Some(7), Some(1))
        );
        assert_eq!(health["positions"].as_u64(), Some(1), "BTC open, ETH flat");
        let latest = collateral
            .with(|e| e.model().latest().map(|s| s.utilization))
            .await
            .expect("assessed");
        assert!(latest >= 0.8);

        let p_counts = portfolio.stop().await;
        let c_counts = collateral.stop().await;
        assert_eq!(p_counts.published.get("portfolio_update"), Some(&11));
        assert_eq!(p_counts.published.get("position_change"), Some(&7));
        assert_eq!(c_counts.published.get("margin_call"), Some(&2));

        let got = got.lock();
        assert_eq!(got.updates.len(), want_updates.len());
        for (g, e) in got.updates.iter().zip(&want_updates) {
            assert!(same_update(g, e), "published {g:?}, computed {e:?}");
        }
        assert_eq!(got.changes.len(), want_changes.len());
        for (g, e) in got.changes.iter().zip(&want_changes) {
            assert!(same_change(g, e), "published {g:?}, computed {e:?}");
        }
        assert_eq!(got.calls.len(), want_calls.len());
        for (g, e) in got.calls.iter().zip(&want_calls) {
            assert!(same_call(g, e), "published {g:?}, computed {e:?}");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn bad_configurations_stop_the_engines_from_starting_and_name_the_value() {
    let root = DualBus::builder("test").build().unwrap();
    let opts = |config| HostOptions {
        config,
        ..Default::default()
    };
    let err = match EngineHost::start(
        PortfolioEngine::default(),
        root.sibling("portfolio", "portfolio-1").unwrap(),
        opts(serde_json::json!({"fee_bps": -2.0})),
    )
    .await
    {
        Ok(_) => panic!("started with negative fees"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fee_bps -2"), "{err}");
    let err = match EngineHost::start(
        CollateralEngine::default(),
        root.sibling("collateral", "collateral-1").unwrap(),
        opts(serde_json::json!({"threshold": 0.8, "treshold": 0.9})),
    )
    .await
    {
        Ok(_) => panic!("started with an unknown field"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("treshold"), "{err}");
}

/// Equal to the cent (the examples are rounded to cents).
fn cents(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.011
}

#[test]
fn portfolio_update_example_is_an_update_that_adds_up() {
    let u: PortfolioUpdate =
        serde_json::from_value(dualbus_testkit::wire_example("portfolio_update"))
            .expect("a PortfolioUpdate");
    assert_eq!(u.account, "main");
    let value: f64 = u.positions.iter().map(|p| p.qty * p.mark).sum();
    let gross: f64 = u.positions.iter().map(|p| (p.qty * p.mark).abs()).sum();
    let unrealized: f64 = u
        .positions
        .iter()
        .map(|p| p.qty * (p.mark - p.avg_price))
        .sum();
    let realized: f64 = u.positions.iter().map(|p| p.realized_pnl).sum();
    assert!(cents(u.equity, u.cash + value), "{u:?}");
    assert!(cents(u.net_exposure, value) && cents(u.gross_exposure, gross));
    assert!(cents(u.unrealized_pnl, unrealized) && cents(u.realized_pnl, realized));
    for p in &u.positions {
        assert!(
            cents(p.unrealized_pnl, p.qty * (p.mark - p.avg_price)),
            "{p:?}"
        );
    }
    // With the default 100000 of initial cash.
    let initial = PortfolioParams::default().initial_cash;
    assert!(cents(
        u.equity,
        initial + u.realized_pnl + u.unrealized_pnl - u.fees
    ));
    assert!((u.drawdown - (u.peak_equity - u.equity) / u.peak_equity).abs() < 1e-6);
}

#[test]
fn position_change_example_is_a_change_that_adds_up() {
    let c: PositionChange =
        serde_json::from_value(dualbus_testkit::wire_example("position_change"))
            .expect("a PositionChange");
    assert_eq!((c.account.as_str(), c.symbol.as_str()), ("main", "BTCUSDT"));
    assert!((c.qty - c.prev_qty - c.delta).abs() < 1e-12);
    // The default fee: 1 basis point of the fill's notional.
    let fee_bps = PortfolioParams::default().fee_bps;
    assert!((c.fee - (c.delta * c.fill_price).abs() * fee_bps / 1e4).abs() < 1e-9);
    // The same fill as the trade_execution example.
    let x: Execution = serde_json::from_value(dualbus_testkit::wire_example("trade_execution"))
        .expect("an Execution");
    assert_eq!((c.order_id.as_str(), c.ts), (x.order_id.as_str(), x.ts));
    assert_eq!((c.delta, c.fill_price), (x.qty, x.price));
    // Adding to a long position: the average moves toward the fill price (not to the cent:
    // the example's previous average is not shown).
    assert!(c.avg_price < c.fill_price && c.realized_pnl == 0.0);
    // And the portfolio_update example is the state right after it.
    let u: PortfolioUpdate =
        serde_json::from_value(dualbus_testkit::wire_example("portfolio_update")).unwrap();
    let p = u.positions.iter().find(|p| p.symbol == c.symbol).unwrap();
    assert_eq!((u.ts, p.qty, p.avg_price), (c.ts, c.qty, c.avg_price));
}

#[test]
fn margin_call_example_is_a_call_that_adds_up() {
    let c: MarginCall =
        serde_json::from_value(dualbus_testkit::wire_example("margin_call")).expect("a MarginCall");
    assert_eq!(
        (c.account.as_str(), c.action.as_str()),
        ("main", REDUCE_POSITIONS)
    );
    assert!(c.margin_utilization >= c.threshold);
    let mut vols = BTreeMap::new();
    for p in &c.positions {
        assert!(cents(p.margin, p.notional.abs() * p.rate), "{p:?}");
        // rate = base_rate + vol_multiplier x vol with the defaults: a vol at least 0.
        let d = CollateralParams::default();
        let vol = (p.rate - d.base_rate) / d.vol_multiplier;
        assert!(vol >= 0.0, "{p:?}");
        vols.insert(p.symbol.clone(), vol);
    }
    let margin: f64 = c.positions.iter().map(|p| p.margin).sum();
    assert!(cents(c.margin, margin));
    assert!((c.margin_utilization - c.margin / c.equity).abs() < 1e-4);
    assert!(
        c.reason.contains("86.0%") && c.reason.contains("80.0%"),
        "{}",
        c.reason
    );
    // The same call from the model, given these positions, volatilities and equity.
    let mut model = MarginModel::new(CollateralParams::default());
    for (s, v) in &vols {
        model.set_vol(s, *v, 0);
    }
    let u = PortfolioUpdate {
        account: c.account.clone(),
        ts: c.ts,
        equity: c.equity,
        cash: 0.0,
        realized_pnl: 0.0,
        unrealized_pnl: 0.0,
        fees: 0.0,
        gross_exposure: 0.0,
        net_exposure: 0.0,
        peak_equity: c.equity,
        drawdown: 0.0,
        fills: 0,
        positions: c
            .positions
            .iter()
            .map(|p| dualbus_model::portfolio::PositionView {
                symbol: p.symbol.clone(),
                qty: p.notional,
                avg_price: 1.0,
                mark: 1.0,
                unrealized_pnl: 0.0,
                realized_pnl: 0.0,
            })
            .collect(),
    };
    let m = model.on_update(&u).expect("a call");
    assert!(cents(m.margin, c.margin) && m.reason == c.reason, "{m:?}");
}
