//! The Strategy and Risk engines on the bus: quotes, factor scores and a prediction make a
//! signal, the signal an order of the right size; a flash crash zeroes the target and trips the
//! circuit breaker, which rejects the later signals. Also: the `docs/wire-format.md` examples
//! of `strategy_signal` and `risk_alert` decode into the engines' types.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority, StartFrom};
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::risk::{RiskEngine, RiskParams};
use dualbus_engines::strategy::StrategyEngine;
use dualbus_model::factor::{FactorCalculation, FactorScores};
use dualbus_model::health::EngineCounts;
use dualbus_model::market::{Quote, Side};
use dualbus_model::ml::MlPrediction;
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest, OrderType};
use dualbus_model::risk::{RiskAction, RiskAlert};
use dualbus_model::strategy::{StrategyParams, StrategySignal};
use dualbus_model::vpin::{CrashRule, FlashCrashAlert};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_717_171_200 * S;
const SYM: &str = "BTCUSDT";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

/// What the checker saw: payload, topic, priority.
#[derive(Default)]
struct Seen {
    signals: Vec<(StrategySignal, String, Priority)>,
    orders: Vec<(OrderRequest, String, Priority)>,
    alerts: Vec<(RiskAlert, String, Priority)>,
}

async fn publish<T: Serialize>(bus: &DualBus, kind: EventKind, topic: &str, p: Priority, x: &T) {
    let env = bus.envelope(kind, topic, p, x).unwrap();
    bus.publish_envelope(env).await.unwrap();
}

/// Waits until `cond` holds (the caller's timeout guards against a hang).
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether `id` is the `n`th order id of the Risk engine `risk-1`: `risk-1-{start}-{n:06}`.
fn is_order(id: &str, n: u64) -> bool {
    id.strip_prefix("risk-1-")
        .and_then(|rest| rest.rsplit_once('-'))
        .is_some_and(|(start, seq)| !start.is_empty() && seq == format!("{n:06}"))
}

fn received(c: &EngineCounts, kind: &str) -> u64 {
    c.received.get(kind).copied().unwrap_or(0)
}

fn quote(ts: u64, mid: f64) -> Quote {
    Quote {
        symbol: SYM.into(),
        ts,
        bid: mid - 0.01,
        ask: mid + 0.01,
        bid_size: 1.0,
        ask_size: 1.0,
    }
}

fn prediction(ts: u64, prob_up: f64) -> MlPrediction {
    MlPrediction {
        symbol: SYM.into(),
        ts,
        horizon_s: 60,
        prob_up,
        expected_return: 0.0,
        model: "logistic_sgd_l2".into(),
        model_version: 10,
        accuracy_500: Some(0.55),
        scored: 10,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_become_orders_until_a_flash_crash_trips_the_breaker() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let seen: Arc<Mutex<Seen>> = Default::default();
        let s2 = seen.clone();
        let _checker = root
            .subscribe(
                SubscribeOptions::new(
                    "checker",
                    &["strategy_signal.>", "order_request.>", "risk_alert.>"],
                )
                .unwrap()
                .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    let mut s = s2.lock();
                    let (topic, prio) = (m.topic.as_str().to_string(), m.prio);
                    match m.kind {
                        EventKind::StrategySignal => {
                            s.signals
                                .push((m.enc.decode(&m.payload).unwrap(), topic, prio))
                        }
                        EventKind::OrderRequest => {
                            s.orders
                                .push((m.enc.decode(&m.payload).unwrap(), topic, prio))
                        }
                        EventKind::RiskAlert => {
                            s.alerts
                                .push((m.enc.decode(&m.payload).unwrap(), topic, prio))
                        }
                        _ => {}
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let strategy = start_engine(
            StrategyEngine::default(),
            &root,
            "strategy",
            HostOptions {
                config: serde_json::to_value(StrategyParams::default()).unwrap(),
                start: Some(StartFrom::Oldest),
                ..Default::default()
            },
        )
        .await;
        let risk = start_engine(
            RiskEngine::default(),
            &root,
            "risk",
            HostOptions {
                config: serde_json::json!({"breaker_secs": 1800, "stale_quote_secs": 10}),
                start: Some(StartFrom::Oldest),
                ..Default::default()
            },
        )
        .await;
        let md = root.sibling("marketdata", "marketdata-1").unwrap();
        let ml = root.sibling("ml", "ml-1").unwrap();
        let factor = root.sibling("factor", "factor-1").unwrap();
        let crash = root.sibling("enhanced_vpin", "enhanced_vpin-1").unwrap();

        // A quote (mid 100) reaches both engines before the prediction: the strategy can size
        // the target and the risk engine's price is fresh.
        let topic = format!("market_data.quote.{SYM}");
        publish(
            &md,
            EventKind::MarketData,
            &topic,
            Priority::Normal,
            &quote(T0, 100.0),
        )
        .await;
        until(|| {
            received(&strategy.counts(), "market_data") == 1
                && received(&risk.counts(), "market_data") == 1
        })
        .await;
        let scores = |c: f64| FactorScores {
            momentum: c,
            reversal: c,
            low_volatility: c,
            liquidity: c,
            composite: c,
        };
        let calc = FactorCalculation {
            ts: T0,
            bar_secs: 60,
            method: "cross_sectional_zscore".into(),
            scores: [
                (SYM.to_string(), scores(0.6)),
                ("ETHUSDT".into(), scores(-0.6)),
            ]
            .into(),
        };
        let topic = "factor_calculation.universe";
        publish(
            &factor,
            EventKind::FactorCalculation,
            topic,
            Priority::Low,
            &calc,
        )
        .await;
        until(|| received(&strategy.counts(), "factor_calculation") == 1).await;

        // score = 1 x (2 x 0.7 - 1) + 0.5 x 0.6 / 3 = 0.5: 5000 notional, 50 at mid 100.
        let topic = format!("ml_prediction.{SYM}");
        publish(
            &ml,
            EventKind::MlPrediction,
            &topic,
            Priority::Normal,
            &prediction(T0 + S, 0.7),
        )
        .await;
        until(|| {
            let s = seen.lock();
            s.signals.len() == 1 && s.orders.len() == 1
        })
        .await;
        let first_order = {
            let s = seen.lock();
            let (sig, topic, prio) = &s.signals[0];
            assert_eq!(
                (topic.as_str(), *prio),
                ("strategy_signal.BTCUSDT", Priority::Normal)
            );
            assert!(close(sig.target_position, 50.0), "{sig:?}");
            assert!(
                close(sig.target_notional, 5_000.0) && close(sig.score, 0.5),
                "{sig:?}"
            );
            assert_eq!(
                (sig.price, sig.prob_up, sig.composite),
                (100.0, 0.7, Some(0.6))
            );
            assert_eq!((sig.ts, sig.halted.as_deref()), (T0 + S, None));
            let (o, topic, prio) = &s.orders[0];
            assert_eq!(
                (topic.as_str(), *prio),
                ("order_request.BTCUSDT", Priority::High)
            );
            assert!(is_order(&o.order_id, 1), "{}", o.order_id);
            assert_eq!(
                (o.side, o.order_type, o.limit_price),
                (Side::Buy, OrderType::Market, None)
            );
            assert!(close(o.qty, 50.0), "{o:?}");
            o.clone()
        };

        // The venue fills it.
        let fill = Execution {
            order_id: first_order.order_id.clone(),
            symbol: SYM.into(),
            side: Side::Buy,
            qty: first_order.qty,
            price: 100.01,
            status: ExecStatus::Filled,
            reason: None,
            liquidity: Some("taker".into()),
            ts: T0 + S,
        };
        let topic = format!("trade_execution.{SYM}");
        publish(
            &md,
            EventKind::TradeExecution,
            &topic,
            Priority::High,
            &fill,
        )
        .await;
        until(|| received(&risk.counts(), "trade_execution") == 1).await;
        let (position, pending) = risk
            .with(|e| (e.book().position(SYM), e.book().pending_orders()))
            .await;
        assert!(
            close(position, 50.0) && pending == 0,
            "{position} {pending}"
        );

        // A flash crash: the strategy's target drops to zero, the risk engine trips its breaker.
        let alert = FlashCrashAlert {
            symbol: SYM.into(),
            ts: T0 + 2 * S,
            rule: CrashRule::VpinPriceDrop,
            vpin: 0.91,
            vpin_percentile: 0.996,
            price: 92.0,
            reference_price: Some(100.0),
            move_sigmas: Some(-9.5),
            spread_bps: Some(3.0),
            spread_median_bps: Some(1.0),
            reason: "price 92 fell 9.5 standard deviations".into(),
        };
        let topic = format!("flash_crash_alert.{SYM}");
        publish(
            &crash,
            EventKind::FlashCrashAlert,
            &topic,
            Priority::Critical,
            &alert,
        )
        .await;
        until(|| {
            let s = seen.lock();
            s.signals.len() == 2
                && s.alerts
                    .iter()
                    .any(|(a, ..)| a.action == RiskAction::CircuitBreakerTripped)
        })
        .await;
        until(|| received(&risk.counts(), "strategy_signal") == 2).await;
        {
            let s = seen.lock();
            let (sig, ..) = &s.signals[1];
            assert_eq!(sig.target_position, 0.0, "{sig:?}");
            assert_eq!(sig.halted.as_deref(), Some("flash_crash_alert"));
            assert!(sig.reason.contains(&alert.reason), "{}", sig.reason);
            let (trip, topic, prio) = s
                .alerts
                .iter()
                .find(|(a, ..)| a.action == RiskAction::CircuitBreakerTripped)
                .unwrap();
            assert_eq!(
                (topic.as_str(), *prio),
                ("risk_alert.BTCUSDT", Priority::Critical)
            );
            assert_eq!(
                (trip.rule.as_str(), trip.symbol.as_deref()),
                ("circuit_breaker", Some(SYM))
            );
            assert!(trip.reason.contains(&alert.reason), "{}", trip.reason);
        }
        // The zero signal and the alert travel on different streams (the alert on the priority
        // lane), so the risk engine may see the signal first: then it sells the 50 before the
        // breaker trips. Either way the book and the ids say what happened.
        until(|| {
            let s = seen.lock();
            s.orders.len() == 2
                || s.alerts
                    .iter()
                    .any(|(a, ..)| a.order_id.as_deref().is_some_and(|id| is_order(id, 2)))
        })
        .await;
        {
            let s = seen.lock();
            if let Some((o, ..)) = s.orders.get(1) {
                assert!(is_order(&o.order_id, 2), "{}", o.order_id);
                assert_eq!(o.side, Side::Sell);
                assert!(close(o.qty, 50.0), "{o:?}");
            } else {
                let (a, ..) = s
                    .alerts
                    .iter()
                    .find(|(a, ..)| a.order_id.as_deref().is_some_and(|id| is_order(id, 2)))
                    .unwrap();
                assert_eq!(
                    (a.rule.as_str(), a.action),
                    ("circuit_breaker", RiskAction::RejectOrder)
                );
                assert_eq!((a.value, a.limit), (0.0, 1800.0));
            }
        }

        // 698 s after the crash (data time) the strategy's alert has expired (600 s) and a new
        // prediction makes a target of 70; the breaker (1800 s) still rejects it.
        let topic = format!("ml_prediction.{SYM}");
        publish(
            &ml,
            EventKind::MlPrediction,
            &topic,
            Priority::Normal,
            &prediction(T0 + 700 * S, 0.8),
        )
        .await;
        until(|| {
            let s = seen.lock();
            s.alerts
                .iter()
                .any(|(a, ..)| a.order_id.as_deref().is_some_and(|id| is_order(id, 3)))
        })
        .await;
        {
            let s = seen.lock();
            assert_eq!(s.signals.len(), 3);
            let (sig, ..) = &s.signals[2];
            assert!(close(sig.target_position, 70.0), "{sig:?}");
            assert_eq!(sig.halted, None);
            let (a, topic, prio) = s
                .alerts
                .iter()
                .find(|(a, ..)| a.order_id.as_deref().is_some_and(|id| is_order(id, 3)))
                .unwrap();
            assert_eq!(
                (topic.as_str(), *prio),
                ("risk_alert.BTCUSDT", Priority::Critical)
            );
            assert_eq!(
                (a.rule.as_str(), a.action),
                ("circuit_breaker", RiskAction::RejectOrder)
            );
            assert_eq!((a.value, a.limit, a.ts), (698.0, 1800.0, T0 + 700 * S));
            assert!(a.reason.contains(&alert.reason), "{}", a.reason);
            assert!(s.orders.len() <= 2, "no order after the breaker tripped");
        }
        let strategy_counts = strategy.stop().await;
        let risk_counts = risk.stop().await;
        assert_eq!(strategy_counts.published.get("strategy_signal"), Some(&3));
        assert!(
            risk_counts
                .published
                .get("risk_alert")
                .copied()
                .unwrap_or(0)
                >= 2
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn bad_configuration_stops_the_engines_from_starting_and_names_the_value() {
    let root = DualBus::builder("test").build().unwrap();
    let opts = |config| HostOptions {
        config,
        ..Default::default()
    };
    let err = match EngineHost::start(
        RiskEngine::default(),
        root.clone(),
        opts(serde_json::json!({"max_drawdown": 2.0})),
    )
    .await
    {
        Ok(_) => panic!("started with a drawdown stop of 200%"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("max_drawdown 2"), "{err}");
    let err = match EngineHost::start(
        StrategyEngine::default(),
        root,
        opts(serde_json::json!({"max_notional": -5.0})),
    )
    .await
    {
        Ok(_) => panic!("started with a negative max_notional"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("max_notional -5"), "{err}");
}

#[test]
fn strategy_signal_example_is_a_signal() {
    let s: StrategySignal =
        serde_json::from_value(dualbus_testkit::wire_example("strategy_signal"))
            .expect("a StrategySignal");
    assert_eq!((s.symbol.as_str(), s.strategy.as_str()), (SYM, "ml_factor"));
    // Consistent with the default parameters: score = (2 x 0.57 - 1) + 0.5 x 0.42 / 3 = 0.21,
    // 2100 notional at the mid.
    let p = StrategyParams::default();
    let score =
        dualbus_engines::strategy::score(p.w_ml, p.w_factor, s.prob_up, s.composite.unwrap());
    assert!((s.score - score).abs() < 1e-9, "{s:?}");
    assert!((s.target_notional - score * p.max_notional).abs() < 1e-6);
    assert!(
        (s.target_position * s.price - s.target_notional).abs() < 0.01,
        "{s:?}"
    );
    assert_eq!(s.halted, None);
}

#[test]
fn risk_alert_example_is_an_alert() {
    let a: RiskAlert =
        serde_json::from_value(dualbus_testkit::wire_example("risk_alert")).expect("a RiskAlert");
    assert_eq!(
        (a.rule.as_str(), a.action),
        ("max_position", RiskAction::RejectOrder)
    );
    assert_eq!(a.limit, RiskParams::default().max_position_notional);
    assert!(a.value > a.limit);
    assert!(
        a.order_id
            .as_deref()
            .is_some_and(|id| id.ends_with("-000043")),
        "{a:?}"
    );
}

#[test]
fn order_request_example_is_still_a_venue_order() {
    let o: OrderRequest = serde_json::from_value(dualbus_testkit::wire_example("order_request"))
        .expect("an OrderRequest");
    assert!(o.qty > 0.0);
}
