//! The Features engine on the bus: the hub replays the real Binance sample, the engine
//! publishes one `feature_vector` per 1-second bar, the same as the calculator computes from
//! the file directly; and the `feature_vector` example of `docs/wire-format.md` is a
//! [`FeatureVector`].

mod support;

use dualbus_core::EventKind;
use support::{start_engine, Checker};

use dualbus_bus::DualBus;
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::features::{FeatureCalculator, FeaturesEngine};
use dualbus_engines::hub::{HubOptions, MarketDataHub};
use dualbus_engines::market::Validator;
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use dualbus_engines::provider::Provider;
use dualbus_model::features::FeatureVector;
use dualbus_model::market::MarketEvent;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_publishes_what_the_calculator_computes() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/binance-btcusdt-trades-2021-01-08.csv");
    let run = async {
        let provider: Arc<dyn Provider> =
            Arc::new(ReplayProvider::open(ReplayOptions::new(&file, FileFormat::Binance)).unwrap());
        // What the engine must publish: the calculator over what the hub publishes (the
        // provider's events its validator accepts: the trades and the replay's own bars).
        let mut expected = Vec::new();
        let published;
        {
            let mut s = provider.stream().await.unwrap();
            let mut evs = Vec::new();
            while s.next_batch(&mut evs).await.unwrap() {}
            let mut v = Validator::new();
            let mut c = FeatureCalculator::new("BTCUSDT", 1);
            for e in &evs {
                if v.validate(e).is_err() {
                    continue;
                }
                match e {
                    MarketEvent::Trade(t) => expected.extend(c.on_trade(t)),
                    MarketEvent::Quote(q) => c.on_quote(q),
                    MarketEvent::Bar(b) => expected.extend(c.on_bar(b)),
                    MarketEvent::Book(_) => {}
                }
            }
            expected.extend(c.finish());
            published = v.accepted();
        }
        // Trades in each of the 47 seconds 00:00:00 to 00:00:46: 47 bars.
        assert_eq!(expected.len(), 47);

        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["feature_vector.>"]).await;
        // bar_secs 1 through the engine's configuration section.
        let engine = start_engine(
            FeaturesEngine::default(),
            &root,
            "features",
            HostOptions {
                config: serde_json::json!({"bar_secs": 1}),
                ..Default::default()
            },
        )
        .await;
        let hub = MarketDataHub::new(provider, HubOptions::default());
        let handle = hub.handle();
        let hub_run = start_engine(hub, &root, "marketdata", HostOptions::default()).await;
        handle.feed_done().await;
        // Every event handled by the engine, then the end of the data (stop) closes the last
        // bar.
        while engine
            .counts()
            .received
            .get("market_data")
            .copied()
            .unwrap_or(0)
            < published
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counts = engine.stop().await;
        assert_eq!(counts.published.get("feature_vector").copied(), Some(47));
        while checker.count(EventKind::FeatureVector) < expected.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub_run.stop().await;
        let got: Vec<FeatureVector> = checker.of(EventKind::FeatureVector);
        assert_eq!(got.len(), expected.len());
        // Through JSON, floats come back to within a rounding of the last digit.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let same_names = g.features.keys().eq(e.features.keys());
            let same_values = g
                .features
                .values()
                .zip(e.features.values())
                .all(|(a, b)| close(*a, *b));
            assert!(
                g.symbol == e.symbol
                    && g.ts == e.ts
                    && g.bar_secs == 1
                    && close(g.close, e.close)
                    && close(g.volume, e.volume)
                    && same_names
                    && same_values,
                "bar {}: published {g:?}, computed {e:?}",
                i + 1
            );
        }
        // Consecutive 1-second bars, from the file's first second.
        assert_eq!(got[0].ts, 1_610_064_000_000_000_000);
        // The trade-based features are all there from the 34th bar (the MACD signal), and not
        // before; a trade file has no quotes, so no spread.
        let trade_based: Vec<&str> = dualbus_model::features::ALL
            .iter()
            .copied()
            .filter(|n| *n != dualbus_model::features::SPREAD_BPS)
            .collect();
        let full = |v: &FeatureVector| trade_based.iter().all(|n| v.features.contains_key(*n));
        assert!(got[..33].iter().all(|v| !full(v)));
        assert!(got[33..].iter().all(full), "{:?}", got[33]);
        assert!(got.iter().all(|v| v.features.len() <= trade_based.len()));
        assert!(got[0]
            .features
            .contains_key(dualbus_model::features::ORDER_IMBALANCE));
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn bad_configuration_stops_the_engine_from_starting_and_names_the_value() {
    let root = DualBus::builder("test").build().unwrap();
    for (config, needle) in [
        (serde_json::json!({"bar_secs": 0}), "bar_secs"),
        (serde_json::json!({"bar_seconds": 5}), "bar_seconds"),
    ] {
        let opts = HostOptions {
            config,
            ..Default::default()
        };
        let start = EngineHost::start(FeaturesEngine::default(), root.clone(), opts);
        let err = match tokio::time::timeout(Duration::from_secs(30), start)
            .await
            .expect("no hang")
        {
            Ok(_) => panic!("started with a bad configuration"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn feature_vector_example_in_the_wire_format_is_a_feature_vector() {
    let v: FeatureVector =
        serde_json::from_value(dualbus_testkit::wire_example("feature_vector")).expect("a vector");
    assert_eq!(v.symbol, "BTCUSDT");
    assert_eq!(v.bar_secs, 60);
    assert_eq!(v.ts % 60_000_000_000, 0, "a bar start");
    assert!(v.close > 0.0 && v.volume > 0.0);
    // A full vector: every feature, and nothing else.
    assert!(v
        .features
        .keys()
        .map(String::as_str)
        .eq(dualbus_model::features::ALL
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()));
}
