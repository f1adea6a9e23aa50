//! An engine whose publish fails keeps what it could not publish and sends it, in order, before
//! its next output (or at stop): the VPIN engine's buckets and toxicity alerts, the Factor
//! engine's calculations.
//!
//! A publish is made to fail by a reliable group of the output kind with a small queue bound and
//! the `reject` policy whose handler holds its messages until the test opens a gate: once the
//! bound is reached, every publish of that kind is rejected. Then the gate opens and more input
//! follows, one message at a time: each lets the engine send what it kept (up to the bound),
//! until everything has gone out.

mod support;

use dualbus_bus::{DualBus, Handler, HandlerError, SubscribeOptions, Subscription};
use dualbus_core::{Backpressure, Envelope, EventKind};
use dualbus_engines::engine::{Engine, HostOptions, RunningEngine};
use dualbus_engines::factor::{FactorEngine, FactorModel};
use dualbus_engines::vpin::{VpinCalculator, VpinEngine, VpinParams};
use dualbus_model::factor::FactorCalculation;
use dualbus_model::features::FeatureVector;
use dualbus_model::market::{Side, Trade};
use dualbus_model::vpin::{ToxicityAlert, VpinBucket};
use dualbus_model::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{published, received, start_engine, until, Checker};

const S: u64 = 1_000_000_000;
/// Input after the gate opens, one message at a time.
const TAIL: u64 = 200;
/// Bars (of every symbol) after the gate opens.
const TAIL_BARS: u64 = 30;
const T0: u64 = 1_717_171_200 * S;

/// A group on `pattern` that holds its messages until `gate` opens; with a bound of [`BOUND`]
/// and `reject`, publishes of that kind fail meanwhile once it holds that many.
async fn blocker(root: &DualBus, pattern: &str, gate: Gate) -> Subscription {
    root.sibling("blocker", "blocker-1")
        .unwrap()
        .subscribe(
            SubscribeOptions::new("blocker", &[pattern])
                .unwrap()
                .bound(BOUND, Backpressure::Reject),
            gate,
        )
        .await
        .unwrap()
}

/// A handler that holds each message until the gate opens (awaiting, not blocking a thread),
/// and counts what it handled.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    handled: Arc<AtomicU64>,
}

impl Handler for Gate {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        while !self.open.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.handled.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Bound of the blocker's group.
const BOUND: usize = 5;

/// Publishes `head` (the engine's `input` kind) from `bus` and waits until the engine read
/// it; checks that at most [`BOUND`] of its `output` (of `expected`) went out, the rest failing
/// at the blocker; then opens the gate and publishes `tail` one message at a time, each once
/// the blocker has handled all that went out (so that each may send up to BOUND of what was
/// kept), and waits until the blocker has handled everything published.
#[allow(clippy::too_many_arguments)]
async fn through_the_gate<E: Engine, M: Message>(
    bus: &DualBus,
    engine: &RunningEngine<E>,
    gate: &Gate,
    input: &str,
    output: &str,
    head: &[M],
    tail: &[M],
    expected: usize,
) {
    for m in head {
        bus.publish(M::kind(), &m.topic(), m).await.unwrap();
    }
    until(|| received(&engine.counts(), input) >= head.len() as u64).await;
    let before = published(&engine.counts(), output);
    assert!(
        before <= BOUND as u64 && (before as usize) < expected / 2,
        "publishes failed meanwhile: {before} of {expected} went out"
    );
    gate.open.store(true, Ordering::Release);
    let drained = || gate.handled.load(Ordering::Acquire) >= published(&engine.counts(), output);
    for (i, m) in tail.iter().enumerate() {
        until(drained).await;
        bus.publish(M::kind(), &m.topic(), m).await.unwrap();
        until(|| received(&engine.counts(), input) >= (head.len() + i + 1) as u64).await;
    }
    until(drained).await;
}

/// Trades of one symbol: a calm stretch, then one-sided selling at falling prices, so that
/// buckets complete all along and some VPIN percentiles cross the threshold (toxicity alerts).
/// Then [`TAIL`] trades, one a second, of a tiny size.
fn trades() -> Vec<Trade> {
    (0..1_500u64 + TAIL)
        .map(|i| {
            let x = i as f64;
            let price = if i < 900 {
                100.0 + (0.13 * x).sin()
            } else {
                100.0 - 0.05 * (x - 900.0)
            };
            Trade {
                symbol: "BTCUSDT".into(),
                ts: T0 + i * S,
                price,
                size: if i < 1_500 {
                    0.2 + 0.1 * (0.7 * x).cos().abs()
                } else {
                    1e-6
                },
                side: if i >= 900 || i % 2 == 0 {
                    Side::Sell
                } else {
                    Side::Buy
                },
                id: i,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpin_outputs_that_could_not_be_published_are_kept_and_sent_in_order() {
    let run = async {
        let params = VpinParams {
            bar_secs: 1,
            bucket_volume: 1.0,
            window: 10,
            sigma_bars: 20,
            cdf_threshold: 0.9,
            ..Default::default()
        };
        let input = trades();
        let mut expected = Vec::new();
        let mut calc = VpinCalculator::new("BTCUSDT", params.clone());
        for t in &input {
            calc.on_trade(t.ts, t.price, t.size, &mut expected);
        }
        calc.finish(&mut expected);
        let toxic: Vec<u64> = expected
            .iter()
            .filter(|b| b.toxic)
            .map(|b| b.bucket)
            .collect();
        assert!(expected.len() > 50, "{}", expected.len());
        assert!(!toxic.is_empty(), "the input makes toxicity alerts");

        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["vpin_calculation.>", "toxicity_alert.>"]).await;
        let gate = Gate::default();
        let _blocker = blocker(&root, "vpin_calculation.>", gate.clone()).await;
        let vpin = start_engine(
            VpinEngine::new(params),
            &root,
            "vpin",
            HostOptions::default(),
        )
        .await;
        let md = root.sibling("marketdata", "marketdata-1").unwrap();
        let (head, tail) = input.split_at(input.len() - TAIL as usize);
        let expected_n = expected.len();
        through_the_gate(
            &md,
            &vpin,
            &gate,
            "market_data",
            "vpin_calculation",
            head,
            tail,
            expected_n,
        )
        .await;
        // Stop publishes the last bar's buckets.
        vpin.stop().await;
        while checker.of::<VpinBucket>(EventKind::VpinCalculation).len() < expected.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got: Vec<VpinBucket> = checker.of(EventKind::VpinCalculation);
        let buckets: Vec<u64> = got.iter().map(|b| b.bucket).collect();
        let want: Vec<u64> = expected.iter().map(|b| b.bucket).collect();
        assert_eq!(buckets, want, "every bucket, once, in order");
        let alerts: Vec<u64> = checker
            .of::<ToxicityAlert>(EventKind::ToxicityAlert)
            .iter()
            .map(|a| a.bucket)
            .collect();
        assert_eq!(alerts, toxic, "every toxicity alert, once, in order");
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factor_calculations_that_could_not_be_published_are_kept_and_sent_in_order() {
    let run = async {
        let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
        let mut input = Vec::new();
        for i in 0..40 + TAIL_BARS {
            for (k, s) in symbols.iter().enumerate() {
                let (x, kf) = (i as f64, k as f64 + 1.0);
                input.push((
                    s.to_string(),
                    T0 + i * 60 * S,
                    100.0 * kf + (0.37 * x * kf).sin() * kf + 0.05 * x,
                    5.0 + (1.7 * x + kf).cos().abs() * 3.0 * kf,
                ));
            }
        }
        let mut model = FactorModel::new();
        let mut expected = Vec::new();
        for (s, ts, close, volume) in &input {
            model.on_bar(s, *ts, 60, *close, *volume, &mut expected);
        }
        model.finish(&mut expected);
        assert!(expected.len() > 10, "{}", expected.len());

        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["factor_calculation.>"]).await;
        let gate = Gate::default();
        let _blocker = blocker(&root, "factor_calculation.>", gate.clone()).await;
        let factor =
            start_engine(FactorEngine::new(), &root, "factor", HostOptions::default()).await;
        let features = root.sibling("features", "features-1").unwrap();
        let vectors: Vec<FeatureVector> = input
            .iter()
            .map(|(s, ts, close, volume)| FeatureVector {
                symbol: s.clone(),
                ts: *ts,
                bar_secs: 60,
                close: *close,
                volume: *volume,
                features: Default::default(),
            })
            .collect();
        let (head, tail) = vectors.split_at(vectors.len() - 3 * TAIL_BARS as usize);
        let expected_n = expected.len();
        through_the_gate(
            &features,
            &factor,
            &gate,
            "feature_vector",
            "factor_calculation",
            head,
            tail,
            expected_n,
        )
        .await;
        factor.stop().await;
        while checker
            .of::<FactorCalculation>(EventKind::FactorCalculation)
            .len()
            < expected.len()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got: Vec<u64> = checker
            .of::<FactorCalculation>(EventKind::FactorCalculation)
            .iter()
            .map(|c| c.ts)
            .collect();
        let want: Vec<u64> = expected.iter().map(|c| c.ts).collect();
        assert_eq!(got, want, "every period, once, in order");
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}
