//! Request/reply: a reply goes to the requester's reply stream and nowhere else, whatever a
//! request names.

use dualbus_bus::{handler_fn, BusError, DualBus, SubscribeOptions};
use dualbus_core::{EventKind, Priority};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn a_forged_reply_stream_is_refused_and_nothing_is_written_there() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let watcher = root
            .subscribe(
                SubscribeOptions::new("watch", &["market_data.>"]).unwrap(),
                handler_fn(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let replier = root.sibling("marketdata", "marketdata-1").unwrap();
        // A request whose reply stream is the market-data stream.
        let mut forged = root
            .envelope(
                EventKind::MarketData,
                "market_data.snapshot.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({}),
            )
            .unwrap();
        forged.corr = Some(Arc::from("c-1"));
        forged.reply = Some(Arc::from("dualbus:md:market_data"));
        let err = replier
            .reply(&forged, &serde_json::json!({"price": 1.0}))
            .await
            .expect_err("a reply to a market-data stream");
        assert!(matches!(err, BusError::BadReplyStream { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("\"dualbus:md:market_data\"") && text.contains("not a reply stream"),
            "{text}"
        );
        for bad in [
            "dualbus:logic:order_request",
            "dualbus:md:reply:",
            "dualbus:md:reply:a b",
            "other:md:reply:x",
        ] {
            forged.reply = Some(Arc::from(bad));
            assert!(replier.reply(&forged, &1).await.is_err(), "{bad}");
        }
        // One real market-data message after them: the watcher sees it, and it alone.
        root.publish(
            EventKind::MarketData,
            "market_data.trade.BTCUSDT",
            &serde_json::json!({"price": 1.0}),
        )
        .await
        .unwrap();
        while seen.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        watcher.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}
