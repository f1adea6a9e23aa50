//! Two engines in one process: `strategy` publishes a signal, `risk` handles it.
//!
//! `cargo run -p dualbus-bus --example engine`

use dualbus_bus::{handler_fn, DualBus, SubscribeOptions};
use dualbus_core::EventKind;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let risk = DualBus::builder("risk").instance("risk-1").build()?; // embedded transports
    let strategy = risk.sibling("strategy", "strategy-1")?; // same process, same buses

    let _sub = risk
        .subscribe(
            SubscribeOptions::new("risk", &["strategy_signal.>"])?,
            handler_fn(|msg| {
                println!(
                    "{} from {}: {}",
                    msg.topic,
                    msg.src,
                    String::from_utf8_lossy(&msg.payload)
                );
                Ok(())
            }),
        )
        .await?;

    strategy
        .publish(
            EventKind::StrategySignal,
            "strategy_signal.BTCUSDT",
            &serde_json::json!({"target": 1.5}),
        )
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}
