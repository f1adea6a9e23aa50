//! The ML and Factor engines on the bus: synthetic `feature_vector`s in, and out the same
//! `ml_prediction`s and `factor_calculation`s as the pure models compute from the same input.
//! Also: the `docs/wire-format.md` examples of both kinds decode into the engines' types.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority, StartFrom};
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::factor::{FactorEngine, FactorModel};
use dualbus_engines::ml::{MlEngine, SymbolModel};
use dualbus_model::factor::{FactorCalculation, FactorScores, METHOD};
use dualbus_model::ml::{MlParams, MlPrediction, MODEL_NAME};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The Features engine's payload, as it is on the wire.
#[derive(Clone, Debug, Serialize)]
struct FeatureVector {
    symbol: String,
    ts: u64,
    bar_secs: u32,
    close: f64,
    volume: f64,
    features: BTreeMap<String, f64>,
}

const S: u64 = 1_000_000_000;
const T0: u64 = 1_717_171_200 * S;
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
const BARS: u64 = 40;

/// Bars 0..40 of three symbols, interleaved by period; SOLUSDT has no bar 39, so period 39
/// waits for it until the engine stops. Features appear as their windows fill (ret_15 at bar
/// 15), so the first vectors of each symbol make no prediction.
fn vectors() -> Vec<FeatureVector> {
    let mut out = Vec::new();
    let mut closes: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..BARS {
        for (k, s) in SYMBOLS.iter().enumerate() {
            if *s == "SOLUSDT" && i == BARS - 1 {
                continue;
            }
            let x = i as f64;
            let kf = k as f64 + 1.0;
            let close = 100.0 * kf + (0.37 * x * kf).sin() * kf + 0.05 * x;
            let volume = 5.0 + (1.7 * x + kf).cos().abs() * 3.0 * kf;
            let c = closes.entry(s).or_default();
            c.push(close);
            let n = c.len();
            let mut f = BTreeMap::new();
            for (name, lag) in [("ret_1", 1), ("ret_5", 5), ("ret_15", 15)] {
                if n > lag {
                    f.insert(name.to_string(), (close / c[n - 1 - lag]).ln());
                }
            }
            for (j, name) in [
                "realized_vol_20",
                "rsi_14",
                "macd_hist",
                "bollinger_pct_b",
                "order_imbalance",
                "vwap_deviation",
                "spread_bps",
            ]
            .iter()
            .enumerate()
            {
                f.insert(name.to_string(), (x * 0.3 + j as f64 * kf).sin());
            }
            out.push(FeatureVector {
                symbol: s.to_string(),
                ts: T0 + i * 60 * S,
                bar_secs: 60,
                close,
                volume,
                features: f,
            });
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    // Through JSON, floats come back to within a rounding of the last digit.
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

fn same_prediction(g: &MlPrediction, e: &MlPrediction) -> bool {
    g.symbol == e.symbol
        && g.ts == e.ts
        && g.horizon_s == e.horizon_s
        && g.model == e.model
        && g.model_version == e.model_version
        && g.scored == e.scored
        && close(g.prob_up, e.prob_up)
        && close(g.expected_return, e.expected_return)
        && match (g.accuracy_500, e.accuracy_500) {
            (Some(a), Some(b)) => close(a, b),
            (a, b) => a == b,
        }
}

fn same_calculation(g: &FactorCalculation, e: &FactorCalculation) -> bool {
    g.ts == e.ts
        && g.bar_secs == e.bar_secs
        && g.method == e.method
        && g.scores.len() == e.scores.len()
        && g.scores.iter().zip(&e.scores).all(|((gs, g), (es, e))| {
            gs == es
                && close(g.momentum, e.momentum)
                && close(g.reversal, e.reversal)
                && close(g.low_volatility, e.low_volatility)
                && close(g.liquidity, e.liquidity)
                && close(g.composite, e.composite)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_publish_what_the_models_compute() {
    let run = async {
        let input = vectors();
        // What the engines must publish: the pure models over the same vectors, in order.
        let params = MlParams::default();
        let mut models: BTreeMap<String, SymbolModel> = BTreeMap::new();
        let mut want_ml = Vec::new();
        let mut factor = FactorModel::new();
        let mut want_factor = Vec::new();
        for v in &input {
            let m = models
                .entry(v.symbol.clone())
                .or_insert_with(|| SymbolModel::new(&v.symbol, &params));
            want_ml.extend(m.on_vector(v.ts, v.bar_secs, &v.features));
            factor.on_bar(
                &v.symbol,
                v.ts,
                v.bar_secs,
                v.close,
                v.volume,
                &mut want_factor,
            );
        }
        let before_stop = want_factor.len();
        factor.finish(&mut want_factor);
        // Bars 20..=38 with 3 symbols each as they complete, and period 39 (2 symbols) at stop.
        assert_eq!((before_stop, want_factor.len()), (19, 20));
        assert_eq!(want_factor.last().unwrap().scores.len(), 2);
        // From bar 15 on (ret_15): 25 + 25 + 24 predictions.
        assert_eq!(want_ml.len(), 74);
        assert!(want_ml.iter().any(|p| p.scored > 0 && p.model_version > 0));

        let root = DualBus::builder("test").build().unwrap();
        let got_ml: Arc<Mutex<Vec<MlPrediction>>> = Default::default();
        let got_factor: Arc<Mutex<Vec<FactorCalculation>>> = Default::default();
        let (gm, gf) = (got_ml.clone(), got_factor.clone());
        let _checker = root
            .subscribe(
                SubscribeOptions::new("checker", &["ml_prediction.>", "factor_calculation.>"])
                    .unwrap()
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    match m.kind {
                        EventKind::MlPrediction => {
                            gm.lock().push(m.enc.decode(&m.payload).unwrap())
                        }
                        EventKind::FactorCalculation => {
                            assert_eq!(m.topic.as_str(), "factor_calculation.universe");
                            assert_eq!(m.prio, Priority::Low);
                            gf.lock().push(m.enc.decode(&m.payload).unwrap())
                        }
                        _ => {}
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let opts = || HostOptions {
            start: Some(StartFrom::Oldest),
            ..Default::default()
        };
        let ml = start_engine(MlEngine::new(MlParams::default()), &root, "ml", opts()).await;
        let fac = start_engine(FactorEngine::new(), &root, "factor", opts()).await;

        let features = root.sibling("features", "features-1").unwrap();
        for v in &input {
            let env = features
                .envelope(
                    EventKind::FeatureVector,
                    &format!("feature_vector.{}", v.symbol),
                    Priority::Normal,
                    v,
                )
                .unwrap();
            features.publish_envelope(env).await.unwrap();
        }
        let received = |c: dualbus_model::health::EngineCounts| {
            c.received.get("feature_vector").copied().unwrap_or(0)
        };
        while received(ml.counts()) < input.len() as u64
            || received(fac.counts()) < input.len() as u64
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Everything but the period still waiting for SOLUSDT, which stop publishes.
        while got_ml.lock().len() < want_ml.len() || got_factor.lock().len() < before_stop {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ml_counts = ml.stop().await;
        let fac_counts = fac.stop().await;
        while got_factor.lock().len() < want_factor.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nothing more arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ml_counts.published.get("ml_prediction"), Some(&74));
        assert_eq!(fac_counts.published.get("factor_calculation"), Some(&20));

        let got_ml = got_ml.lock().clone();
        assert_eq!(got_ml.len(), want_ml.len());
        for (g, e) in got_ml.iter().zip(&want_ml) {
            assert!(same_prediction(g, e), "published {g:?}, computed {e:?}");
        }
        let got_factor = got_factor.lock().clone();
        assert_eq!(got_factor.len(), want_factor.len());
        for (g, e) in got_factor.iter().zip(&want_factor) {
            assert!(same_calculation(g, e), "published {g:?}, computed {e:?}");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn bad_ml_configuration_stops_the_engine_from_starting_and_names_the_value() {
    let root = DualBus::builder("test").build().unwrap();
    let opts = HostOptions {
        config: serde_json::json!({"learning_rate": -0.5}),
        ..Default::default()
    };
    let err = match EngineHost::start(MlEngine::default(), root, opts).await {
        Ok(_) => panic!("started with a negative learning rate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("learning_rate -0.5"), "{err}");
}

#[test]
fn ml_prediction_example_is_a_prediction() {
    let p: MlPrediction = serde_json::from_value(dualbus_testkit::wire_example("ml_prediction"))
        .expect("an MlPrediction");
    assert_eq!(
        (p.symbol.as_str(), p.model.as_str()),
        ("BTCUSDT", MODEL_NAME)
    );
    assert!(p.prob_up > 0.0 && p.prob_up < 1.0);
    assert!(p.accuracy_500.is_some_and(|a| (0.0..=1.0).contains(&a)));
}

#[test]
fn factor_calculation_example_is_a_calculation() {
    let c: FactorCalculation =
        serde_json::from_value(dualbus_testkit::wire_example("factor_calculation"))
            .expect("a FactorCalculation");
    assert_eq!((c.method.as_str(), c.bar_secs), (METHOD, 60));
    assert_eq!(c.scores.len(), 4);
    // Consistent with the method: each factor's z-scores have mean 0 and population sd 1, and
    // the composite is their mean (to the example's 4 decimals).
    let n = c.scores.len() as f64;
    let factors: [fn(&FactorScores) -> f64; 4] = [
        |s| s.momentum,
        |s| s.reversal,
        |s| s.low_volatility,
        |s| s.liquidity,
    ];
    for f in factors {
        let x: Vec<f64> = c.scores.values().map(f).collect();
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 1.0).abs() < 1e-3,
            "{x:?}"
        );
    }
    for s in c.scores.values() {
        let mean = (s.momentum + s.reversal + s.low_volatility + s.liquidity) / 4.0;
        assert!((s.composite - mean).abs() < 1e-3, "{s:?}");
    }
}
