//! A restarted Risk engine never reissues an order id: a Portfolio engine that kept running
//! applies the fills of both runs' orders instead of dropping the second run's as duplicates.

mod support;

use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_engines::engine::HostOptions;
use dualbus_engines::portfolio::PortfolioEngine;
use dualbus_engines::risk::RiskEngine;
use dualbus_model::market::{Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest};
use dualbus_model::portfolio::PositionChange;
use dualbus_model::strategy::StrategySignal;
use dualbus_model::Message;
use std::time::Duration;
use support::{from_oldest, received, start_engine, until, Checker};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_717_171_200 * S;
const SYM: &str = "BTCUSDT";

fn quote(ts: u64) -> Quote {
    Quote {
        symbol: SYM.into(),
        ts,
        bid: 99.99,
        ask: 100.01,
        bid_size: 1.0,
        ask_size: 1.0,
    }
}

fn signal(ts: u64, target: f64) -> StrategySignal {
    StrategySignal {
        symbol: SYM.into(),
        ts,
        strategy: "ml_factor".into(),
        target_position: target,
        target_notional: target * 100.0,
        price: 100.0,
        score: 0.1,
        prob_up: 0.6,
        composite: None,
        halted: None,
        reason: "test".into(),
    }
}

async fn send<M: Message>(bus: &DualBus, m: &M) {
    bus.publish(M::kind(), &m.topic(), m).await.unwrap();
}

/// Starts Risk as `risk-1`, waits until it has read the `fills` earlier executions its group
/// holds, hands it a quote and a signal for `target` at data time `ts`, waits for the order it
/// sends, and stops it.
async fn one_run(root: &DualBus, checker: &Checker, fills: u64, ts: u64, target: f64) {
    let risk = start_engine(RiskEngine::default(), root, "risk", from_oldest()).await;
    let md = root.sibling("marketdata", "marketdata-1").unwrap();
    let strategy = root.sibling("strategy", "strategy-1").unwrap();
    let before = checker.count(EventKind::OrderRequest);
    until(|| received(&risk.counts(), "trade_execution") == fills).await;
    send(&md, &quote(ts)).await;
    until(|| received(&risk.counts(), "market_data") == 1).await;
    send(&strategy, &signal(ts + S, target)).await;
    checker.wait_for(EventKind::OrderRequest, before + 1).await;
    risk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_risk_engine_issues_new_order_ids_and_portfolio_applies_both_fills() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["order_request.>", "position_change.>"]).await;
        let portfolio = start_engine(
            PortfolioEngine::default(),
            &root,
            "portfolio",
            HostOptions::default(),
        )
        .await;
        let venue = root.sibling("marketdata", "marketdata-1").unwrap();
        // The first run buys 10; the venue fills it.
        one_run(&root, &checker, 0, T0, 10.0).await;
        let first = checker.of::<OrderRequest>(EventKind::OrderRequest)[0].clone();
        let fill = |o: &OrderRequest, ts: u64| Execution {
            order_id: o.order_id.clone(),
            symbol: SYM.into(),
            side: o.side,
            qty: o.qty,
            price: 100.0,
            status: ExecStatus::Filled,
            reason: None,
            liquidity: Some("taker".into()),
            ts,
        };
        send(&venue, &fill(&first, T0 + 2 * S)).await;
        checker.wait_for(EventKind::PositionChange, 1).await;
        // The restarted engine (same instance name, a later start) reads the fill its group
        // kept, then buys 10 more for a target of 20: its first order, under a new id.
        tokio::time::sleep(Duration::from_millis(2)).await;
        one_run(&root, &checker, 1, T0 + 10 * S, 20.0).await;
        let second = checker.of::<OrderRequest>(EventKind::OrderRequest)[1].clone();
        assert_ne!(first.order_id, second.order_id);
        for o in [&first, &second] {
            assert!(o.order_id.starts_with("risk-1-"), "{}", o.order_id);
            assert!(o.order_id.ends_with("-000001"), "{}", o.order_id);
            assert_eq!((o.side, o.qty), (Side::Buy, 10.0));
        }
        send(&venue, &fill(&second, T0 + 12 * S)).await;
        checker.wait_for(EventKind::PositionChange, 2).await;
        let counts = portfolio.stop().await;
        assert_eq!(received(&counts, "trade_execution"), 2);
        let last = checker.of::<PositionChange>(EventKind::PositionChange)[1].clone();
        assert_eq!(
            (last.prev_qty, last.qty),
            (10.0, 20.0),
            "both fills applied"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}
