//! The VPIN engine on the bus: the hub replays the real Binance sample, the engine publishes
//! one `vpin_calculation` per completed bucket and the toxicity alerts, the same as the
//! calculator computes from the file directly.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::StartFrom;
use dualbus_engines::engine::{EngineHost, HostOptions};
use dualbus_engines::hub::{HubOptions, MarketDataHub};
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use dualbus_engines::provider::Provider;
use dualbus_engines::vpin::{VpinCalculator, VpinEngine, VpinParams};
use dualbus_model::vpin::{ToxicityAlert, VpinBucket};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn params() -> VpinParams {
    VpinParams {
        bar_secs: 1,
        bucket_volume: 0.5,
        window: 10,
        sigma_bars: 20,
        cdf_threshold: 0.9,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_publishes_what_the_calculator_computes() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/binance-btcusdt-trades-2021-01-08.csv");
    let run = async {
        let provider: Arc<dyn Provider> =
            Arc::new(ReplayProvider::open(ReplayOptions::new(&file, FileFormat::Binance)).unwrap());
        // What the engine must publish: the calculator over the file's trades, directly.
        let mut expected = Vec::new();
        {
            let mut s = provider.stream().await.unwrap();
            let mut evs = Vec::new();
            while s.next_batch(&mut evs).await.unwrap() {}
            let mut c = VpinCalculator::new("BTCUSDT", params());
            for e in &evs {
                if let dualbus_model::market::MarketEvent::Trade(t) = e {
                    c.on_trade(t.ts, t.price, t.size, &mut expected);
                }
            }
            c.finish(&mut expected);
        }
        assert!(expected.len() > 100, "{}", expected.len());

        let root = DualBus::builder("test").build().unwrap();
        let got: Arc<Mutex<Vec<VpinBucket>>> = Default::default();
        let alerts: Arc<Mutex<Vec<ToxicityAlert>>> = Default::default();
        let (g, a) = (got.clone(), alerts.clone());
        let _sub = root
            .subscribe(
                SubscribeOptions::new("checker", &["vpin_calculation.>", "toxicity_alert.>"])
                    .unwrap()
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    if m.kind.as_str() == "vpin_calculation" {
                        g.lock().push(m.enc.decode(&m.payload).unwrap());
                    } else {
                        a.lock().push(m.enc.decode(&m.payload).unwrap());
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let vpin = start_engine(
            VpinEngine::new(params()),
            &root,
            "vpin",
            HostOptions::default(),
        )
        .await;
        let hub = MarketDataHub::new(provider, HubOptions::default());
        let handle = hub.handle();
        let hub_run = start_engine(hub, &root, "marketdata", HostOptions::default()).await;
        handle.feed_done().await;
        // Every trade handled by the engine, then the end of the data (stop) closes the last bar.
        while vpin
            .counts()
            .received
            .get("market_data")
            .copied()
            .unwrap_or(0)
            < 2001
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        vpin.stop().await;
        while got.lock().len() < expected.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub_run.stop().await;
        let got = got.lock().clone();
        assert_eq!(got.len(), expected.len());
        // Through JSON, floats come back to within a rounding of the last digit.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                g.symbol == e.symbol
                    && g.bucket == e.bucket
                    && g.ts == e.ts
                    && g.toxic == e.toxic
                    && close(g.vpin, e.vpin)
                    && close(g.buy_volume, e.buy_volume)
                    && close(g.sell_volume, e.sell_volume)
                    && close(g.percentile, e.percentile),
                "bucket {}: published {g:?}, computed {e:?}",
                e.bucket
            );
        }
        let toxic: Vec<u64> = expected
            .iter()
            .filter(|b| b.toxic)
            .map(|b| b.bucket)
            .collect();
        let alerted: Vec<u64> = alerts.lock().iter().map(|a| a.bucket).collect();
        assert_eq!(alerted, toxic);
        assert!(!toxic.is_empty());
        for a in alerts.lock().iter() {
            assert!(
                a.percentile >= 0.9 && a.reason.contains("crossing 0.9 from below"),
                "{a:?}"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn bad_configuration_stops_the_engine_from_starting_and_names_the_value() {
    let root = DualBus::builder("test").build().unwrap();
    let opts = HostOptions {
        config: serde_json::json!({"bucket_volume": 0.0}),
        ..Default::default()
    };
    let err = match EngineHost::start(VpinEngine::default(), root, opts).await {
        Ok(_) => panic!("started with a zero bucket volume"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bucket_volume 0"), "{err}");
}
