//! The Backtesting engine on the bus, behind the MarketData hub (synthetic provider) and the
//! Features engine: periodic `analytics_result.backtest` re-runs over the hub's history, then
//! backtests on request through [`BacktestClient`], and bad requests refused naming the value.
//!
//! Guarded by a timeout so a bug fails the test instead of hanging it; no wall-clock assertion.

mod support;

use support::start_engine;

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, StartFrom};
use dualbus_engines::backtesting::{BacktestClient, BacktestError, BacktestingEngine};
use dualbus_engines::engine::HostOptions;
use dualbus_engines::features::FeaturesEngine;
use dualbus_engines::hub::{HubOptions, MarketDataHub};
use dualbus_engines::provider::synthetic::{SyntheticOptions, SyntheticProvider};
use dualbus_engines::provider::Speed;
use dualbus_model::backtest::{BacktestParams, BacktestRequest, BacktestResult};
use dualbus_testkit::wait_until;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const S: u64 = 1_000_000_000;
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
/// Request timeout of the test client (above the engine's 5 s wait for the hub).
const REPLY_WAIT: Duration = Duration::from_secs(20);

/// The keys of a periodic result, in any run.
const RESULT_KEYS: [&str; 17] = [
    "bars",
    "bars_skipped",
    "fees",
    "fills",
    "final_equity",
    "from_ts",
    "params",
    "performance",
    "positions",
    "problems",
    "realized_pnl",
    "report",
    "signals",
    "symbols",
    "to_ts",
    "ts",
    "unrealized_pnl",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reruns_are_published_and_requests_answered() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let results: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
        let r = results.clone();
        let _sub = root
            .subscribe(
                SubscribeOptions::new("checker", &["analytics_result.>"])
                    .unwrap()
                    .start(StartFrom::Oldest),
                handler_fn(move |m| {
                    if m.kind == EventKind::AnalyticsResult
                        && m.topic.as_str() == "analytics_result.backtest"
                    {
                        r.lock().push(m.enc.decode(&m.payload).unwrap());
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let backtesting = start_engine(
            BacktestingEngine::default(),
            &root,
            "backtesting",
            HostOptions {
                config: serde_json::json!({"every_secs": 1800, "min_bars": 30, "limit": 120}),
                ..Default::default()
            },
        )
        .await;
        let features = start_engine(
            FeaturesEngine::default(),
            &root,
            "features",
            HostOptions::default(),
        )
        .await;
        // Three hours of data for three symbols, 600 bars of history before it; steps of one
        // second (rather than 100 ms) keep the number of quotes small.
        let provider = SyntheticProvider::new(SyntheticOptions {
            speed: Speed::Times(6000.0),
            step: Duration::from_secs(1),
            duration: Some(Duration::from_secs(3 * 3600)),
            warmup_bars: 600,
            symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap();
        let start_ts = SyntheticOptions::default().start_ts;
        let hub = MarketDataHub::new(Arc::new(provider), HubOptions::default());
        let handle = hub.handle();
        let hub_run = start_engine(hub, &root, "marketdata", HostOptions::default()).await;
        handle.feed_done().await;
        // The first re-run comes after 30 minutes of data, then one every 30 minutes: at least
        // two in three hours once the engine has read the vectors.
        wait_until("two periodic backtests", Duration::from_secs(90), || {
            results.lock().len() >= 2
        })
        .await;

        // On request: two symbols, 200 bars each of the hub's history, live parameters.
        let client = BacktestClient::new(root.clone(), Some(REPLY_WAIT));
        let req = BacktestRequest {
            symbols: vec!["BTCUSDT".into(), "ETHUSDT".into()],
            limit: 200,
            end_ts: None,
            params: None,
        };
        let report = client.run(&req).await.unwrap();
        // The same request again: the same report (the data has ended, so the history is the
        // same).
        let again = client.run(&req).await.unwrap();
        // Bad requests: refused, naming the bad value.
        let empty = client
            .run(&BacktestRequest {
                symbols: Vec::new(),
                ..req.clone()
            })
            .await;
        let zero = client
            .run(&BacktestRequest {
                limit: 0,
                ..req.clone()
            })
            .await;
        let unknown = client
            .run(&BacktestRequest {
                symbols: vec!["BTCUSDT".into(), "NOPEUSDT".into()],
                ..req.clone()
            })
            .await;

        hub_run.stop().await;
        features.stop().await;
        let counts = backtesting.stop().await;
        let published = counts.published.get("analytics_result").copied();
        wait_until(
            "every result published delivered",
            Duration::from_secs(30),
            || Some(results.lock().len() as u64) == published,
        )
        .await;
        let results = results.lock().clone();
        (
            results,
            start_ts,
            report,
            again,
            [empty, zero, unknown],
            counts,
        )
    };
    let (results, start_ts, report, again, bad, counts) =
        tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .expect("the test finishes");

    // Periodic re-runs: the same shape every time, in data-time order, over the hub's bars up
    // to their data time, with the live parameters.
    let want_keys: BTreeSet<&str> = RESULT_KEYS.into_iter().collect();
    let mut last_ts = 0;
    for v in &results {
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, want_keys, "{v}");
        let r: BacktestResult = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.report, "backtest");
        assert!(r.ts > last_ts, "re-runs in data-time order: {results:?}");
        last_ts = r.ts;
        let b = &r.backtest;
        assert!(b.bars > 0 && b.bars <= 3 * 120, "{b:?}");
        assert!(b.to_ts <= r.ts && b.from_ts < b.to_ts, "{b:?}");
        assert_eq!(b.symbols, SYMBOLS.to_vec(), "{b:?}");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(b.params, BacktestParams::default());
        assert_eq!(b.performance.fills, b.fills);
        assert!(b.final_equity.is_finite() && b.final_equity > 0.0);
    }
    let first: BacktestResult = serde_json::from_value(results[0].clone()).unwrap();
    // The first once a symbol has had 30 vectors: 30 minutes into the data at the earliest.
    assert!(first.ts >= start_ts + 30 * 60 * S, "{}", first.ts);
    // 120 bars of each symbol: the hub holds 600 warm-up bars and the live ones.
    assert_eq!(first.backtest.bars, 3 * 120);

    // The requested report.
    assert_eq!(report.symbols, vec!["BTCUSDT", "ETHUSDT"]);
    assert_eq!(report.bars, 2 * 200);
    assert!(report.fills > 0, "{report:?}");
    assert_eq!(report.performance.fills, report.fills);
    assert!(report.signals >= report.fills);
    assert!(report.final_equity.is_finite() && report.final_equity > 0.0);
    assert_eq!(report.performance.equity, Some(report.final_equity));
    assert_eq!(report.params, BacktestParams::default());
    assert_eq!(again, report);

    let reason = |r: &Result<_, BacktestError>| match r {
        Err(BacktestError::Refused(reason)) => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let [empty, zero, unknown] = &bad;
    assert!(reason(empty).contains("symbols is empty"), "{empty:?}");
    assert!(reason(zero).contains("limit 0"), "{zero:?}");
    assert!(reason(unknown).contains("\"NOPEUSDT\""), "{unknown:?}");
    // Five requests answered (counted as replies of the request kind).
    assert_eq!(counts.published.get("backtest_request").copied(), Some(5));
}
