//! Enhanced VPIN on synthetic data: a day with an injected flash crash alerts within two
//! minutes of data time of the crash start; a calm day raises no alert. Then the same chain
//! (hub, VPIN engine, Enhanced VPIN engine) on the bus.

mod support;

use dualbus_core::EventKind;
use support::{start_engine, Checker};

use dualbus_bus::DualBus;
use dualbus_engines::engine::HostOptions;
use dualbus_engines::enhanced_vpin::{CrashDetector, EnhancedVpinEngine, EnhancedVpinParams};
use dualbus_engines::hub::{HubOptions, MarketDataHub};
use dualbus_engines::provider::synthetic::{SyntheticOptions, SyntheticProvider};
use dualbus_engines::provider::{Provider, Speed};
use dualbus_engines::vpin::{VolumeUnit, VpinCalculator, VpinEngine, VpinParams};
use dualbus_model::market::MarketEvent;
use dualbus_model::vpin::FlashCrashAlert;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];

/// VPIN in quote currency: 50,000 per bucket (about 25 calm trades), 50 buckets.
fn vpin_params() -> VpinParams {
    VpinParams {
        bar_secs: 60,
        bucket_volume: 50_000.0,
        window: 50,
        sigma_bars: 50,
        cdf_threshold: 0.9,
        volume_unit: VolumeUnit::Quote,
        ..Default::default()
    }
}

fn enhanced_params() -> EnhancedVpinParams {
    EnhancedVpinParams {
        vpin_window: Some(50),
        ..Default::default()
    }
}

/// Three symbols, quotes every second, no price jumps (a jump of 10 sigma-minutes is a
/// discontinuity the detector may rightly flag; a calm day has none).
fn synthetic(secs: u64, crash_at: Option<Duration>, speed: Speed) -> SyntheticProvider {
    SyntheticProvider::new(SyntheticOptions {
        seed: 11,
        speed,
        step: Duration::from_secs(1),
        jumps_per_hour: 0.0,
        flash_crash_at: crash_at,
        duration: Some(Duration::from_secs(secs)),
        warmup_bars: 0,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .unwrap()
}

/// The calculators fed in data order, without a bus.
async fn alerts_of(p: SyntheticProvider) -> Vec<FlashCrashAlert> {
    let mut vpin: BTreeMap<String, VpinCalculator> = BTreeMap::new();
    let mut det: BTreeMap<String, CrashDetector> = BTreeMap::new();
    let mut alerts = Vec::new();
    let mut buckets = Vec::new();
    let mut s = p.stream().await.unwrap();
    let mut evs = Vec::new();
    loop {
        evs.clear();
        let more = s.next_batch(&mut evs).await.unwrap();
        for e in &evs {
            let sym = e.symbol().to_string();
            let d = det
                .entry(sym.clone())
                .or_insert_with(|| CrashDetector::new(&sym, enhanced_params()));
            match e {
                MarketEvent::Trade(t) => {
                    alerts.extend(d.on_trade(t.ts, t.price));
                    vpin.entry(sym.clone())
                        .or_insert_with(|| VpinCalculator::new(&sym, vpin_params()))
                        .on_trade(t.ts, t.price, t.price * t.size, &mut buckets);
                    for b in buckets.drain(..) {
                        alerts.extend(d.on_vpin(&b));
                    }
                }
                MarketEvent::Quote(q) => alerts.extend(d.on_quote(q.ts, q.spread_bps())),
                _ => {}
            }
        }
        if !more {
            return alerts;
        }
    }
}

const START: u64 = 1_767_571_200_000_000_000; // SyntheticOptions' default start

#[tokio::test]
async fn a_flash_crash_alerts_within_two_minutes_of_its_start() {
    let crash = Duration::from_secs(4 * 3600);
    let alerts = alerts_of(synthetic(5 * 3600, Some(crash), Speed::Max)).await;
    let crash_ns = START + crash.as_nanos() as u64;
    assert!(!alerts.is_empty(), "no alert");
    for a in &alerts {
        assert!(
            a.ts >= crash_ns && a.ts <= crash_ns + 120_000_000_000,
            "alert outside the first two minutes of the crash: {a:?}"
        );
    }
    for s in SYMBOLS {
        let first = alerts.iter().find(|a| a.symbol == s);
        assert!(first.is_some(), "no alert for {s}: {alerts:?}");
        eprintln!(
            "{s}: {:?} after {:.1} s: {}",
            first.unwrap().rule,
            (first.unwrap().ts - crash_ns) as f64 / 1e9,
            first.unwrap().reason
        );
    }
}

#[tokio::test]
async fn a_calm_day_raises_no_alert() {
    let alerts = alerts_of(synthetic(24 * 3600, None, Speed::Max)).await;
    for a in &alerts {
        eprintln!(
            "{:.0} s {} {}",
            (a.ts - START) as f64 / 1e9,
            a.symbol,
            a.reason
        );
    }
    assert!(
        alerts.is_empty(),
        "{} alerts: {:?}",
        alerts.len(),
        alerts.first()
    );
}

#[test]
fn flash_crash_alert_example_is_an_alert() {
    let a: FlashCrashAlert =
        serde_json::from_value(dualbus_testkit::wire_example("flash_crash_alert")).unwrap();
    assert_eq!(a.rule, dualbus_model::vpin::CrashRule::SpreadWidening);
}

/// The chain on the bus: the hub plays a crash at 600x, the VPIN engine computes VPIN, the
/// Enhanced VPIN engine reads it with the trades and quotes and alerts for every symbol within
/// two minutes of data time of the crash start, never before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_alert_on_the_bus() {
    let crash = Duration::from_secs(2 * 3600);
    let crash_ns = START + crash.as_nanos() as u64;
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["flash_crash_alert.>"]).await;
        let vpin = start_engine(
            VpinEngine::default(),
            &root,
            "vpin",
            HostOptions {
                config: serde_json::to_value(vpin_params()).unwrap(),
                ..Default::default()
            },
        )
        .await;
        let enhanced = start_engine(
            EnhancedVpinEngine::default(),
            &root,
            "enhanced_vpin",
            HostOptions {
                config: serde_json::json!({"vpin_window": 50}),
                ..Default::default()
            },
        )
        .await;
        // Two hours and three minutes of data: the crash and its first minutes.
        let provider = synthetic(crash.as_secs() + 180, Some(crash), Speed::Times(600.0));
        let hub = MarketDataHub::new(Arc::new(provider), HubOptions::default());
        let handle = hub.handle();
        let hub_run = start_engine(hub, &root, "marketdata", HostOptions::default()).await;
        handle.feed_done().await;
        while checker
            .of::<FlashCrashAlert>(EventKind::FlashCrashAlert)
            .iter()
            .map(|a| a.symbol.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            < SYMBOLS.len()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        enhanced.stop().await;
        vpin.stop().await;
        hub_run.stop().await;
        checker.of::<FlashCrashAlert>(EventKind::FlashCrashAlert)
    };
    let alerts = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("every symbol alerts");
    for s in SYMBOLS {
        let first = alerts.iter().find(|a| a.symbol == s).unwrap();
        assert!(
            first.ts >= crash_ns && first.ts <= crash_ns + 120_000_000_000,
            "{first:?}"
        );
    }
    assert!(alerts.iter().all(|a| a.ts >= crash_ns), "{alerts:?}");
}
