//! The whole trading system: every engine by name, with the settings `dualbus run` uses, and
//! a [`System`] that starts them on one bus client family and stops them in pipeline order.
//!
//! Engines are started consumers first and the MarketData hub last, so no engine misses the
//! first market data; they are stopped hub first (no new data), then along the pipeline.

use crate::analytics::AnalyticsEngine;
use crate::backtesting::BacktestingEngine;
use crate::collateral::CollateralEngine;
use crate::engine::{
    Engine, EngineError, EngineHost, EngineThread, HostOptions, Interest, RunningEngine,
};
use crate::enhanced_vpin::EnhancedVpinEngine;
use crate::factor::FactorEngine;
use crate::features::FeaturesEngine;
use crate::hub::{FeedGate, HubHandle, HubOptions, MarketDataHub};
use crate::metrics::BusMetrics;
use crate::ml::MlEngine;
use crate::portfolio::PortfolioEngine;
use crate::provider::Provider;
use crate::risk::RiskEngine;
use crate::strategy::StrategyEngine;
use crate::venue::VenueOptions;
use crate::vpin::VpinEngine;
use crate::websocket::WebSocketEngine;
use async_trait::async_trait;
use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_model::health::EngineCounts;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Every engine of the system, in pipeline order (the MarketData hub first).
pub const ENGINES: [&str; 13] = [
    "marketdata",
    "features",
    "factor",
    "ml",
    "vpin",
    "enhanced_vpin",
    "strategy",
    "risk",
    "portfolio",
    "collateral",
    "analytics",
    "websocket",
    "backtesting",
];

/// The engines this build can run: all of them.
pub const AVAILABLE: [&str; 13] = ENGINES;

/// A running engine of any type.
#[async_trait]
pub trait RunningAny: Send + Sync {
    /// The engine's name.
    fn name(&self) -> &'static str;
    /// Messages received and published so far, by kind.
    fn counts(&self) -> EngineCounts;
    /// Stops it gracefully; the final counts.
    async fn stop(self: Box<Self>) -> EngineCounts;
}

#[async_trait]
impl<E: Engine> RunningAny for RunningEngine<E> {
    fn name(&self) -> &'static str {
        self.context().name()
    }

    fn counts(&self) -> EngineCounts {
        RunningEngine::counts(self)
    }

    async fn stop(self: Box<Self>) -> EngineCounts {
        RunningEngine::stop(*self).await
    }
}

/// The settings `dualbus run` gives an engine unless the config says otherwise: tuned for the
/// synthetic 13-symbol market (one-minute bars; VPIN buckets of 50,000 in quote currency, about
/// 25 calm trades, since prices range from 0.12 to 60,000); the hub publishes an hour of
/// bars of history before the live data.
pub fn default_settings(name: &str) -> serde_json::Value {
    match name {
        "vpin" => serde_json::json!({
            "bar_secs": 60, "bucket_volume": 50000.0, "window": 50, "sigma_bars": 50,
            "cdf_threshold": 0.9, "volume_unit": "quote"
        }),
        "enhanced_vpin" => serde_json::json!({ "vpin_window": 50 }),
        // An hour of one-minute bars before the live data: full indicator windows at once.
        "marketdata" => serde_json::json!({ "warm_bars": 60 }),
        // Thirteen symbols with a signal each per bar: 30 orders a minute would reject most.
        "risk" => serde_json::json!({ "max_orders_per_min": 120 }),
        _ => serde_json::Value::Null,
    }
}

/// An engine's settings: `user`'s keys over [`default_settings`] (a section that sets one key
/// keeps the other defaults); a `user` value that is not an object replaces the defaults.
pub fn merged_settings(name: &str, user: Option<&serde_json::Value>) -> serde_json::Value {
    let mut base = default_settings(name);
    match (user, base.as_object_mut()) {
        (None, _) => base,
        (Some(serde_json::Value::Object(u)), Some(b)) => {
            for (k, v) in u {
                b.insert(k.clone(), v.clone());
            }
            base
        }
        (Some(u), _) => u.clone(),
    }
}

/// The Backtesting engine's settings: its own, with the live strategy's where it sets none
/// (`live.strategy` and `live.ml` from the Strategy and ML engines' settings, `live.fee_bps` and
/// `live.initial_cash` from the Portfolio engine's), so that its re-runs test what trades.
pub fn backtesting_settings(config: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    let mut bt = merged_settings("backtesting", config.get("backtesting"));
    if !bt.is_object() {
        bt = serde_json::json!({});
    }
    let live = bt
        .as_object_mut()
        .expect("an object")
        .entry("live")
        .or_insert_with(|| serde_json::json!({}));
    let Some(live) = live.as_object_mut() else {
        return bt; // not an object: the engine names the bad value
    };
    for (key, engine) in [("strategy", "strategy"), ("ml", "ml")] {
        let theirs = merged_settings(engine, config.get(engine));
        if !theirs.is_null() && !live.contains_key(key) {
            live.insert(key.into(), theirs);
        }
    }
    let portfolio = merged_settings("portfolio", config.get("portfolio"));
    for key in ["fee_bps", "initial_cash"] {
        if let Some(v) = portfolio.get(key) {
            live.entry(key).or_insert_with(|| v.clone());
        }
    }
    bt
}

/// What one engine reads and writes, as it declares it ([`Engine::subscriptions`],
/// [`Engine::publishes`]): what `dualbus redis up` makes each engine's Redis user from.
#[derive(Clone, Debug)]
pub struct Declaration {
    /// The engine's name (its Redis user's name).
    pub engine: &'static str,
    /// What it listens to.
    pub subscriptions: Vec<Interest>,
    /// The kinds it publishes and requests.
    pub publishes: Vec<EventKind>,
}

/// The declarations of every engine of [`ENGINES`], in that order.
pub fn declarations() -> Vec<Declaration> {
    fn of<E: Engine>(e: E) -> Declaration {
        Declaration {
            engine: e.name(),
            subscriptions: e.subscriptions(),
            publishes: e.publishes(),
        }
    }
    ENGINES
        .iter()
        .map(|name| match *name {
            "marketdata" => Declaration {
                engine: "marketdata",
                subscriptions: MarketDataHub::declared_subscriptions(),
                publishes: MarketDataHub::declared_publications(),
            },
            "features" => of(FeaturesEngine::default()),
            "factor" => of(FactorEngine::default()),
            "ml" => of(MlEngine::default()),
            "vpin" => of(VpinEngine::default()),
            "enhanced_vpin" => of(EnhancedVpinEngine::default()),
            "strategy" => of(StrategyEngine::default()),
            "risk" => of(RiskEngine::default()),
            "portfolio" => of(PortfolioEngine::default()),
            "collateral" => of(CollateralEngine::default()),
            "analytics" => of(AnalyticsEngine::default()),
            "websocket" => of(WebSocketEngine::default()),
            "backtesting" => of(BacktestingEngine::default()),
            other => unreachable!("engine {other} has no declaration"),
        })
        .collect()
}

/// What [`start_engine`] needs besides the bus.
#[derive(Clone)]
pub struct EngineSetup {
    /// The engine's settings (JSON `null`: its defaults).
    pub config: serde_json::Value,
    /// Market data source (the MarketData hub only).
    pub provider: Option<Arc<dyn Provider>>,
    /// Shared per-bus traffic and latency.
    pub metrics: Option<Arc<BusMetrics>>,
    /// Heartbeat period.
    pub health_every: Duration,
    /// Lockstep gate of the MarketData hub ([`HubOptions::gate`]).
    pub gate: Option<FeedGate>,
    /// Where the engine runs (its own thread, or the caller's runtime).
    pub thread: EngineThread,
}

/// Engines whose state is per symbol and whose every input is on the MarketData bus, so
/// instances may share the symbols (`dualbus engine NAME --partition K/N`): each instance reads
/// some partitions of a partitioned MarketData bus. The others need every symbol (factor,
/// strategy, risk, portfolio, ...) or read Engine Logic streams that are not partitioned
/// (ml, enhanced_vpin), and read everything.
pub const PER_SYMBOL: &[&str] = &["features", "vpin"];

/// Starts the engine called `name` on `bus` (whose `src` should be `name`). The MarketData hub
/// also returns its handle.
///
/// # Errors
/// [`EngineError::Config`] for an unknown name (listing the known ones), a hub without a
/// provider, or a bad configuration; a failed subscription.
pub async fn start_engine(
    name: &str,
    bus: DualBus,
    setup: EngineSetup,
) -> Result<(Box<dyn RunningAny>, Option<HubHandle>), EngineError> {
    let opts = HostOptions {
        health_every: setup.health_every,
        config: setup.config,
        start: None,
        metrics: setup.metrics,
        thread: setup.thread,
    };
    async fn boxed<E: Engine>(
        e: E,
        bus: DualBus,
        opts: HostOptions,
    ) -> Result<(Box<dyn RunningAny>, Option<HubHandle>), EngineError> {
        Ok((Box::new(EngineHost::start(e, bus, opts).await?), None))
    }
    match name {
        "marketdata" => {
            let Some(provider) = setup.provider else {
                return Err(EngineError::Config {
                    engine: name.into(),
                    reason: "the MarketData hub needs a provider".into(),
                });
            };
            let warm_bars = match opts.config.get("warm_bars") {
                None => 0,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| EngineError::Config {
                        engine: name.into(),
                        reason: format!("warm_bars {v} must be a whole number of bars"),
                    })?,
            };
            let quotes_from_trades = match opts.config.get("quotes_from_trades") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| EngineError::Config {
                    engine: name.into(),
                    reason: format!("quotes_from_trades {v} must be true or false"),
                })?,
            };
            // The paper venue's settings (VenueOptions: slippage_bps, max_quote_age_ms,
            // order_senders); an unknown or ill-typed one is named by serde.
            let venue = match opts.config.get("venue") {
                None => VenueOptions::default(),
                Some(v) => serde_json::from_value::<VenueOptions>(v.clone()).map_err(|e| {
                    EngineError::Config {
                        engine: name.into(),
                        reason: format!("venue {v}: {e}"),
                    }
                })?,
            };
            if let Some(bad) = opts.config.as_object().and_then(|m| {
                m.keys()
                    .find(|k| !["warm_bars", "quotes_from_trades", "venue"].contains(&k.as_str()))
            }) {
                return Err(EngineError::Config {
                    engine: name.into(),
                    reason: format!(
                        "unknown setting {bad:?} (the hub takes warm_bars, quotes_from_trades \
                         and venue)"
                    ),
                });
            }
            let hub = MarketDataHub::new(
                provider,
                HubOptions {
                    warm_bars,
                    quotes_from_trades,
                    venue,
                    gate: setup.gate,
                    ..Default::default()
                },
            );
            let handle = hub.handle();
            let running = EngineHost::start(hub, bus, opts).await?;
            Ok((Box::new(running), Some(handle)))
        }
        "features" => boxed(FeaturesEngine::default(), bus, opts).await,
        "factor" => boxed(FactorEngine::default(), bus, opts).await,
        "ml" => boxed(MlEngine::default(), bus, opts).await,
        "vpin" => boxed(VpinEngine::default(), bus, opts).await,
        "enhanced_vpin" => boxed(EnhancedVpinEngine::default(), bus, opts).await,
        "strategy" => boxed(StrategyEngine::default(), bus, opts).await,
        "risk" => boxed(RiskEngine::default(), bus, opts).await,
        "portfolio" => boxed(PortfolioEngine::default(), bus, opts).await,
        "collateral" => boxed(CollateralEngine::default(), bus, opts).await,
        "analytics" => boxed(AnalyticsEngine::default(), bus, opts).await,
        "websocket" => boxed(WebSocketEngine::default(), bus, opts).await,
        "backtesting" => boxed(BacktestingEngine::default(), bus, opts).await,
        other => Err(EngineError::Config {
            engine: other.into(),
            reason: if ENGINES.contains(&other) {
                format!(
                    "engine {other:?} is not built yet; this build runs {}",
                    AVAILABLE.join(", ")
                )
            } else {
                format!(
                    "unknown engine {other:?}; the engines are {}",
                    ENGINES.join(", ")
                )
            },
        }),
    }
}

/// Settings of a [`System`].
#[derive(Clone)]
pub struct SystemOptions {
    /// The engines to run, by name (default: every available one).
    pub engines: Vec<String>,
    /// Market data source of the hub.
    pub provider: Arc<dyn Provider>,
    /// Per-engine settings, key by key over [`default_settings`] ([`merged_settings`]).
    pub config: BTreeMap<String, serde_json::Value>,
    /// Shared per-bus traffic and latency.
    pub metrics: Option<Arc<BusMetrics>>,
    /// Heartbeat period of every engine.
    pub health_every: Duration,
    /// Lockstep gate of the MarketData hub ([`HubOptions::gate`]).
    pub gate: Option<FeedGate>,
    /// Where each engine runs: a thread of its own (the default), or the caller's runtime.
    pub thread: EngineThread,
}

/// Engines running together.
pub struct System {
    running: Vec<Box<dyn RunningAny>>,
    hub: Option<HubHandle>,
}

impl System {
    /// Starts the engines on clients derived from `root` (each with the engine's name as `src`
    /// and `{name}-1` as instance): consumers first, the MarketData hub last.
    ///
    /// # Errors
    /// The first engine that fails to start (those started are stopped again).
    pub async fn start(root: &DualBus, opts: SystemOptions) -> Result<System, EngineError> {
        let mut names: Vec<&str> = ENGINES
            .iter()
            .copied()
            .filter(|n| opts.engines.iter().any(|e| e == n))
            .collect();
        if let Some(bad) = opts.engines.iter().find(|e| !ENGINES.contains(&e.as_str())) {
            return Err(EngineError::Config {
                engine: bad.clone(),
                reason: format!(
                    "unknown engine {bad:?}; the engines are {}",
                    ENGINES.join(", ")
                ),
            });
        }
        // The hub last: every consumer group exists before the first message.
        names.sort_by_key(|n| *n == "marketdata");
        let mut sys = System {
            running: Vec::new(),
            hub: None,
        };
        for name in names {
            let bus = root.sibling(name, &format!("{name}-1"))?;
            let setup = EngineSetup {
                config: if name == "backtesting" {
                    backtesting_settings(&opts.config)
                } else {
                    merged_settings(name, opts.config.get(name))
                },
                provider: Some(opts.provider.clone()),
                metrics: opts.metrics.clone(),
                health_every: opts.health_every,
                gate: opts.gate.clone(),
                thread: opts.thread,
            };
            match start_engine(name, bus, setup).await {
                Ok((r, hub)) => {
                    sys.running.push(r);
                    if hub.is_some() {
                        sys.hub = hub;
                    }
                }
                Err(e) => {
                    sys.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(sys)
    }

    /// The MarketData hub's handle, when it runs here.
    pub fn hub(&self) -> Option<&HubHandle> {
        self.hub.as_ref()
    }

    /// Counts so far per engine.
    pub fn counts(&self) -> BTreeMap<String, EngineCounts> {
        self.running
            .iter()
            .map(|r| (r.name().to_string(), r.counts()))
            .collect()
    }

    /// Stops every engine: the Backtesting engine (it asks the hub), the hub (last when its
    /// data has ended), then along the pipeline. The final counts.
    pub async fn stop(self) -> BTreeMap<String, EngineCounts> {
        self.stop_settled(|| async {}).await
    }

    /// Stops every engine like [`System::stop`], awaiting `settle()` after each one (a
    /// backtest lets what an engine published on stopping reach the next ones first).
    pub async fn stop_settled<F, Fut>(self, mut settle: F) -> BTreeMap<String, EngineCounts>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut running = self.running;
        // A hub whose data has ended has nothing left to stop but its paper venue, which
        // fills the orders the others send while they stop: then it stops last.
        let feed_done = self.hub.as_ref().is_some_and(|h| h.is_feed_done());
        // The Backtesting engine asks the hub for history: it stops before the hub, or a
        // re-run in progress would wait for answers that cannot come.
        running.sort_by_key(|r| {
            let at = ENGINES.iter().position(|n| *n == r.name());
            (
                r.name() != "backtesting",
                feed_done && r.name() == "marketdata",
                at,
            )
        });
        let mut out = BTreeMap::new();
        for r in running {
            let name = r.name().to_string();
            out.insert(name, r.stop().await);
            settle().await;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn the_hub_takes_its_venue_settings_and_names_a_bad_one() {
        use crate::provider::synthetic::{SyntheticOptions, SyntheticProvider};
        let setup = |config: serde_json::Value| EngineSetup {
            config,
            provider: Some(Arc::new(
                SyntheticProvider::new(SyntheticOptions {
                    duration: Some(Duration::from_secs(1)),
                    ..Default::default()
                })
                .unwrap(),
            )),
            metrics: None,
            health_every: Duration::from_secs(60),
            gate: None,
            thread: EngineThread::Caller,
        };
        let bus = || DualBus::builder("marketdata").build().unwrap();
        let (running, _) = start_engine(
            "marketdata",
            bus(),
            setup(json!({"venue": {"max_quote_age_ms": 5000, "slippage_bps": 2.0}})),
        )
        .await
        .expect("venue settings are taken");
        running.stop().await;
        for (config, needle) in [
            (json!({"venue": {"max_quote_ag": 1}}), "max_quote_ag"),
            (json!({"venue": {"slippage_bps": "x"}}), "venue"),
            (json!({"nope": 1}), "\"nope\""),
        ] {
            let err = match start_engine("marketdata", bus(), setup(config.clone())).await {
                Ok(_) => panic!("started with {config}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn settings_merge_key_by_key_over_the_defaults() {
        let v = merged_settings("vpin", Some(&json!({"window": 30})));
        assert_eq!(v["window"], 30);
        assert_eq!(v["volume_unit"], "quote", "the other defaults stay");
        assert_eq!(merged_settings("features", None), serde_json::Value::Null);
        assert_eq!(
            merged_settings("features", Some(&json!({"bar_secs": 30}))),
            json!({"bar_secs": 30})
        );
    }

    #[test]
    fn the_backtesting_engine_reruns_the_live_strategy() {
        let config = BTreeMap::from([
            ("strategy".to_string(), json!({"w_ml": 2.0})),
            ("portfolio".to_string(), json!({"fee_bps": 3.0})),
        ]);
        let bt = backtesting_settings(&config);
        assert_eq!(bt["live"]["strategy"]["w_ml"], 2.0);
        assert_eq!(bt["live"]["fee_bps"], 3.0);
        assert!(
            bt["live"].get("ml").is_none(),
            "ML runs on its defaults: none to copy"
        );
        // Its own live settings win.
        let config = BTreeMap::from([
            ("strategy".to_string(), json!({"w_ml": 2.0})),
            (
                "backtesting".to_string(),
                json!({"live": {"strategy": {"w_ml": 0.5}}, "every_secs": 600}),
            ),
        ]);
        let bt = backtesting_settings(&config);
        assert_eq!(bt["live"]["strategy"]["w_ml"], 0.5);
        assert_eq!(bt["every_secs"], 600);
    }
}
