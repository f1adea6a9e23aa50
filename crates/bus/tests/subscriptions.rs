//! A client cannot read the same stream twice as the same (group, consumer): the two
//! subscriptions would split the messages silently.

use dualbus_bus::{handler_fn, BusError, DualBus, SubscribeOptions};

#[tokio::test]
async fn overlapping_subscriptions_are_refused_until_the_first_ends() {
    let bus = DualBus::builder("risk").build().unwrap();
    let first = bus
        .subscribe(
            SubscribeOptions::new("risk", &["market_data.trade.>"]).unwrap(),
            handler_fn(|_| Ok(())),
        )
        .await
        .unwrap();
    let err = bus
        .subscribe(
            SubscribeOptions::new("risk", &["market_data.quote.>"]).unwrap(),
            handler_fn(|_| Ok(())),
        )
        .await
        .err()
        .expect("the second subscription overlaps the first");
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"risk\"") && text.contains("dualbus:md:market_data"),
        "{text}"
    );
    // Another group may read the same stream.
    let other = bus
        .subscribe(
            SubscribeOptions::new("analytics", &["market_data.quote.>"]).unwrap(),
            handler_fn(|_| Ok(())),
        )
        .await
        .unwrap();
    first.stop().await;
    let again = bus
        .subscribe(
            SubscribeOptions::new("risk", &["market_data.quote.>"]).unwrap(),
            handler_fn(|_| Ok(())),
        )
        .await
        .unwrap();
    again.stop().await;
    other.stop().await;
}
