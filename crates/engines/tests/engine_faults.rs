//! An engine whose handler panics on one message goes on with the next ones, and its
//! heartbeat says so: status `degraded`, with the number of panics.

mod support;

use async_trait::async_trait;
use dualbus_bus::{DualBus, HandlerError};
use dualbus_core::{Envelope, EventKind};
use dualbus_engines::engine::{Engine, EngineContext, HostOptions, Interest};
use dualbus_model::health::{EngineFaults, EngineHealth};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{start_engine, Checker};

/// Keeps the `n` of every signal it handles; panics on `n == 2`.
struct Fragile(Arc<Mutex<Vec<u64>>>);

#[async_trait]
impl Engine for Fragile {
    fn name(&self) -> &'static str {
        "fragile"
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&["strategy_signal.>"])]
    }

    async fn on_message(
        &mut self,
        _ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let v: serde_json::Value = msg.decode()?;
        let n = v["n"].as_u64().unwrap_or(u64::MAX);
        assert_ne!(n, 2, "a sizing bug on signal 2");
        self.0.lock().push(n);
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_engine_goes_on_and_reports_itself_degraded() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["engine_health.fragile"]).await;
        let handled = Arc::new(Mutex::new(Vec::new()));
        let engine = start_engine(
            Fragile(handled.clone()),
            &root,
            "fragile",
            HostOptions {
                health_every: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .await;
        let publisher = root.sibling("strategy", "strategy-1").unwrap();
        for n in 0..5u64 {
            publisher
                .publish(
                    EventKind::StrategySignal,
                    "strategy_signal.BTCUSDT",
                    &json!({ "n": n }),
                )
                .await
                .unwrap();
        }
        support::until(|| handled.lock().len() >= 4).await;
        assert_eq!(*handled.lock(), vec![0, 1, 3, 4]);
        support::until(|| {
            checker
                .of::<EngineHealth>(EventKind::EngineHealth)
                .iter()
                .any(|h| h.faults.is_some())
        })
        .await;
        let beats = checker.of::<EngineHealth>(EventKind::EngineHealth);
        let degraded = beats
            .iter()
            .find(|h| h.faults.is_some())
            .expect("a heartbeat with faults");
        assert_eq!(degraded.status, "degraded");
        assert_eq!(
            degraded.faults,
            Some(EngineFaults {
                handler_panics: 1,
                reader_restarts: 0
            })
        );
        // Before the panic, the same engine said `running` with no faults.
        assert!(beats
            .iter()
            .take_while(|h| h.faults.is_none())
            .all(|h| h.status == "running"));
        engine.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the engine kept handling after the panic");
}
