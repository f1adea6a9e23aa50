//! A failing handler is not silent: each failure is a warning naming the group, the kind, the
//! message id and the reason, at most one a second per reader with the count of those left
//! unlogged; the message is redelivered and dead-lettered after `max_deliveries`.

use dualbus_bus::{handler_fn, BusId, DualBus, HandlerError, SubscribeOptions};
use dualbus_core::EventKind;
use std::time::Duration;

#[test]
fn handler_failures_are_warnings_naming_group_kind_id_and_reason() {
    let captured = dualbus_testkit::CapturedLog::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = DualBus::builder("test").build().unwrap();
        let sub = bus
            .subscribe(
                SubscribeOptions::new("strategy", &["ml_prediction.>"])
                    .unwrap()
                    .redelivery(Duration::from_millis(20), 2),
                handler_fn(|_m| Err(HandlerError("missing field `prob_up`".into()))),
            )
            .await
            .unwrap();
        for n in 0..5 {
            bus.publish(
                EventKind::MlPrediction,
                "ml_prediction.BTCUSDT",
                &serde_json::json!({"n": n}),
            )
            .await
            .unwrap();
        }
        // Each of the 5 fails twice, then goes to the dead-letter stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while bus.counters(BusId::Logic).dead_lettered < 5 {
            assert!(tokio::time::Instant::now() < deadline, "not dead-lettered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            sub.stats()
                .failed
                .load(std::sync::atomic::Ordering::Relaxed),
            10
        );
        sub.stop().await;
    });
    let log = captured.text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handler failed"))
        .collect();
    assert!(!warnings.is_empty(), "{log}");
    // Rate-limited: ten failures within well under a second or two give few lines.
    assert!(warnings.len() < 10, "{log}");
    let first = warnings[0];
    for needle in [
        "WARN",
        "group=strategy",
        "kind=ml_prediction",
        "id=",
        "missing field `prob_up`",
        "dead-lettered after max_deliveries",
    ] {
        assert!(first.contains(needle), "{needle} not in {first}");
    }
}
