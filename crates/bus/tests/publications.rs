//! A client restricted to its engine's declared kinds publishes those and nothing else; a
//! refused publish sends nothing, in a batch neither.

use dualbus_bus::{handler_fn, BusError, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn a_restricted_client_publishes_only_its_declared_kinds() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let watcher = root
            .subscribe(
                SubscribeOptions::new("watch", &["market_data.>", "feature_vector.>"]).unwrap(),
                handler_fn(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let features = root
            .sibling("features", "features-1")
            .unwrap()
            .restricted_to(&[EventKind::FeatureVector]);
        assert_eq!(
            features.publications(),
            Some(&[EventKind::FeatureVector][..])
        );
        let md = |bus: &DualBus| {
            bus.envelope(
                EventKind::MarketData,
                "market_data.trade.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({"price": 1.0}),
            )
            .unwrap()
        };
        let err = features
            .publish(
                EventKind::MarketData,
                "market_data.trade.BTCUSDT",
                &serde_json::json!({"price": 1.0}),
            )
            .await
            .expect_err("market data from features");
        assert!(matches!(err, BusError::Undeclared { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "features published market_data, a kind it does not declare (it publishes \
             feature_vector); nothing was sent"
        );
        // A batch with one undeclared envelope sends none of it.
        let fv = features
            .envelope(
                EventKind::FeatureVector,
                "feature_vector.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({}),
            )
            .unwrap();
        let err = features
            .publish_batch(vec![fv.clone(), md(&features)])
            .await
            .expect_err("a mixed batch");
        assert!(matches!(err, BusError::Undeclared { .. }), "{err:?}");
        // Requests are publications too.
        let err = features
            .request(
                EventKind::Custom("hub_request".into()),
                "hub_request.snapshot.BTCUSDT",
                &serde_json::json!({}),
                Some(Duration::from_millis(10)),
            )
            .await
            .expect_err("an undeclared request");
        assert!(err.to_string().contains("hub_request"), "{err}");
        // The declared kind goes through; the unrestricted client is unaffected.
        features.publish_batch(vec![fv]).await.unwrap();
        root.publish_envelope(md(&root)).await.unwrap();
        while seen.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        watcher.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}
