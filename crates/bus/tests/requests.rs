//! Request/reply: a reply goes to the requester's reply stream and nowhere else, whatever a
//! request names, and counts in the requester's own counters.

use dualbus_bus::{handler_fn, BusError, DualBus, Handler, HandlerError, SubscribeOptions};
use dualbus_core::{Envelope, EventKind, Priority};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers every request with `{"ok": true}`.
struct Answer(DualBus);

impl Handler for Answer {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let (bus, msg) = (self.0.clone(), msg.clone());
        async move {
            bus.reply(&msg, &serde_json::json!({"ok": true}))
                .await
                .map_err(|e| HandlerError(e.to_string()))
        }
    }
}

/// The reply reader counted in a client of its own, so a requester's `counters()` never showed
/// the replies it received.
#[tokio::test]
async fn a_reply_is_counted_in_the_requesters_counters() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let hub = root.sibling("marketdata", "marketdata-1").unwrap();
        let server = hub
            .subscribe(
                SubscribeOptions::new("marketdata", &["hub_request.>"]).unwrap(),
                Answer(hub.clone()),
            )
            .await
            .unwrap();
        let requester = root.sibling("features", "features-1").unwrap();
        let kind = EventKind::Custom("hub_request".into());
        let bus = requester.route(&kind, Priority::Normal).bus;
        let reply = requester
            .request(
                kind,
                "hub_request.snapshot.BTCUSDT",
                &serde_json::json!({}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(&*reply.src, "marketdata");
        // The reader counts a message once its handler has returned, just after the reply was
        // handed over.
        tokio::time::timeout(Duration::from_secs(10), async {
            while requester.counters(bus).acknowledged == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the reply is never counted in the requester's counters");
        let c = requester.counters(bus);
        assert_eq!(
            (c.published, c.delivered, c.acknowledged),
            (1, 1, 1),
            "{c:?}"
        );
        assert_eq!((c.duplicates, c.failed), (0, 0), "{c:?}");
        server.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}

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
