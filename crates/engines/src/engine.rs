//! The [`Engine`] trait and the host that runs an engine on the buses.
//!
//! An engine says what it listens to ([`Engine::subscriptions`]), which timers it wants
//! ([`Engine::timers`]), and handles messages and timer ticks one at a time (`&mut self`: no
//! locking inside the engine). The [`EngineHost`] subscribes it (group = the engine's name,
//! consumer = its instance id, as docs/architecture.md, "Delivery semantics", says), fires its
//! timers, publishes an `engine_health` heartbeat every `health_every`, counts what it received
//! and published by kind, and stops it gracefully: subscriptions drain their current batch,
//! then [`Engine::stop`] runs, then a last heartbeat says `stopped`.
//!
//! The host only uses [`DualBus`], so an engine runs unchanged on the embedded and the Redis
//! transport.

use crate::metrics::{BusMetrics, DeliveryTimes, EngineTimes, LaneId, WARMUP};
use dualbus_model::health::EngineCounts;
use dualbus_model::health::{EngineFaults, EngineHealth};

use async_trait::async_trait;
use dualbus_bus::{BusError, DualBus, Handler, HandlerError, SubscribeOptions, Subscription};
use dualbus_core::{Envelope, EventKind, Mode, Priority};
use dualbus_model::Message;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an engine listens to: topic patterns read by the engine's consumer group.
#[derive(Clone, Debug)]
pub struct Interest {
    /// Topic patterns (`market_data.quote.*`, `order_request.>`).
    pub patterns: Vec<String>,
    /// Fast mode (no acknowledgements, a lagging reader jumps to the head) instead of reliable.
    pub fast: bool,
}

impl Interest {
    /// Reliable delivery of the topics matching `patterns`.
    pub fn reliable(patterns: &[&str]) -> Interest {
        Interest {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            fast: false,
        }
    }

    /// Fast delivery of the topics matching `patterns`.
    pub fn fast(patterns: &[&str]) -> Interest {
        Interest {
            fast: true,
            ..Interest::reliable(patterns)
        }
    }
}

/// A periodic timer an engine asks for.
#[derive(Clone, Debug)]
pub struct Timer {
    /// Passed back to [`Engine::on_timer`].
    pub name: &'static str,
    /// Period (wall-clock).
    pub every: Duration,
}

/// An engine's failure to start, tick or stop.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A bus operation failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The engine's configuration is wrong.
    #[error("{engine}: bad configuration: {reason}")]
    Config {
        /// The engine.
        engine: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// Anything else, with the reason.
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// `Ok` when `problems` is empty, else [`EngineError::Config`] naming every problem.
    ///
    /// # Errors
    /// The problems, joined with `; `.
    pub fn check(engine: &str, problems: Vec<String>) -> Result<(), EngineError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Config {
                engine: engine.to_string(),
                reason: problems.join("; "),
            })
        }
    }
}

/// A component of the trading system that runs on the buses.
#[async_trait]
pub trait Engine: Send + 'static {
    /// The engine's name (`marketdata`, `features`, ...): its consumer group.
    fn name(&self) -> &'static str;

    /// What it listens to (nothing by default).
    fn subscriptions(&self) -> Vec<Interest> {
        Vec::new()
    }

    /// The kinds it publishes, and the kinds of the requests it sends (nothing by default;
    /// heartbeats, replies and dead letters need no declaration). Publishing another kind
    /// through its context fails with [`BusError::Undeclared`], and `dualbus redis up` gives
    /// the engine's Redis user the right to append these kinds only.
    fn publishes(&self) -> Vec<EventKind> {
        Vec::new()
    }

    /// Its periodic timers (none by default).
    fn timers(&self) -> Vec<Timer> {
        Vec::new()
    }

    /// Called once before any message or timer.
    ///
    /// # Errors
    /// An [`EngineError`] stops the host from starting the engine.
    async fn start(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        Ok(())
    }

    /// Called once after the subscriptions exist, before the timers start: the place to begin
    /// producing (the MarketData hub starts its feed here, so that no request an engine sends
    /// in answer to the first data can reach the hub before its group exists).
    ///
    /// # Errors
    /// An [`EngineError`] stops the host from starting the engine.
    async fn ready(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        Ok(())
    }

    /// Handles one message. `Err` leaves it unacknowledged: it is redelivered after the idle
    /// timeout and dead-lettered with this reason after the last allowed delivery.
    async fn on_message(&mut self, ctx: &EngineContext, msg: &Envelope)
        -> Result<(), HandlerError>;

    /// A timer fired.
    ///
    /// # Errors
    /// Logged; the timer keeps running.
    async fn on_timer(
        &mut self,
        _ctx: &EngineContext,
        _timer: &'static str,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Called once after the subscriptions and timers have stopped.
    ///
    /// # Errors
    /// Logged by the host.
    async fn stop(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        Ok(())
    }

    /// Engine-specific details for its `engine_health` heartbeat.
    fn health(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Adds `n` to a per-kind count, allocating the key only the first time a kind is seen.
fn bump(counts: &mut BTreeMap<String, u64>, kind: &EventKind, n: u64) {
    match counts.get_mut(kind.as_str()) {
        Some(c) => *c += n,
        None => {
            counts.insert(kind.to_string(), n);
        }
    }
}

/// What an engine gets to act on the buses: publish (counted by kind), request, reply.
/// Cheap to clone.
#[derive(Clone)]
pub struct EngineContext {
    bus: DualBus,
    name: &'static str,
    counts: Arc<Mutex<EngineCounts>>,
    config: Arc<serde_json::Value>,
    metrics: Option<Arc<BusMetrics>>,
    times: Arc<EngineTimes>,
}

impl EngineContext {
    /// The engine's bus client.
    pub fn bus(&self) -> &DualBus {
        &self.bus
    }

    /// The engine's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The engine's instance id.
    pub fn instance(&self) -> &str {
        self.bus.inst()
    }

    /// The engine's own configuration section (JSON `null` when none was given).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// Reads the engine's configuration section as `T`; a missing section gives `T::default()`.
    ///
    /// # Errors
    /// [`EngineError::Config`] naming the engine and every bad key of its section at once, by
    /// its dotted key: `risk.max_drawdown: expected a number, got the string "x"`,
    /// `websocket.port: unknown key; known keys: ...`.
    pub fn settings<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, EngineError> {
        if self.config.is_null() {
            return Ok(T::default());
        }
        let whole = match serde_json::from_value((*self.config).clone()) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // Then each key alone, so that every bad one is named (settings types take their
        // defaults for the keys not given).
        let problems: Vec<String> = self
            .config
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| {
                let mut one = serde_json::Map::new();
                one.insert(key.clone(), value.clone());
                let e = serde_json::from_value::<T>(serde_json::Value::Object(one)).err()?;
                let message = e.to_string();
                (!message.starts_with("missing field")).then(|| {
                    format!(
                        "{}.{key}: {}",
                        self.name,
                        dualbus_bus::config::explain_serde_error(&message, &json_in_words(value))
                    )
                })
            })
            .collect();
        Err(EngineError::Config {
            engine: self.name.to_string(),
            reason: if problems.is_empty() {
                whole.to_string()
            } else {
                problems.join("; ")
            },
        })
    }

    /// Counts so far.
    pub fn counts(&self) -> EngineCounts {
        self.counts.lock().clone()
    }

    /// The process's metrics, when the host was given them ([`HostOptions::metrics`]).
    pub fn metrics(&self) -> Option<&Arc<BusMetrics>> {
        self.metrics.as_ref()
    }

    /// Counts one alert for `/metrics` (`dualbus_alerts_total{kind,rule}`); nothing without
    /// metrics.
    pub fn count_alert(&self, kind: &str, rule: &str) {
        if let Some(m) = &self.metrics {
            m.trading().alert(kind, rule);
        }
    }

    /// Sets the portfolio's equity for `/metrics` (`dualbus_equity`); nothing without metrics.
    pub fn set_equity(&self, equity: f64) {
        if let Some(m) = &self.metrics {
            m.trading().set_equity(equity);
        }
    }

    fn count_published<'a>(&self, kinds: impl Iterator<Item = &'a EventKind>) {
        let mut c = self.counts.lock();
        // Runs of one kind (a batch of market data) count with one map lookup.
        let mut last: Option<(&EventKind, u64)> = None;
        for k in kinds {
            match &mut last {
                Some((lk, n)) if *lk == k => *n += 1,
                _ => {
                    if let Some((lk, n)) = last.replace((k, 1)) {
                        bump(&mut c.published, lk, n);
                    }
                }
            }
        }
        if let Some((lk, n)) = last {
            bump(&mut c.published, lk, n);
        }
    }

    /// Publishes a payload at `prio`.
    ///
    /// # Errors
    /// [`BusError`] from [`DualBus::envelope`] or the publish.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        prio: Priority,
        payload: &T,
    ) -> Result<(), BusError> {
        let env = self.bus.envelope(kind, topic, prio, payload)?;
        self.publish_batch(vec![env]).await
    }

    /// Publishes a message at its own kind, topic and priority ([`Message`]).
    ///
    /// # Errors
    /// [`BusError`] from [`DualBus::envelope`] or the publish.
    pub async fn send<M: Message>(&self, msg: &M) -> Result<(), BusError> {
        self.publish(M::kind(), &msg.topic(), M::PRIORITY, msg)
            .await
    }

    /// The envelope of a message (its kind, topic and priority), for
    /// [`EngineContext::publish_batch`].
    ///
    /// # Errors
    /// [`BusError`] from [`DualBus::envelope`].
    pub fn envelope<M: Message>(&self, msg: &M) -> Result<Envelope, BusError> {
        self.bus.envelope(M::kind(), &msg.topic(), M::PRIORITY, msg)
    }

    /// Publishes envelopes built with [`DualBus::envelope`], in order.
    ///
    /// # Errors
    /// [`BusError`] from the publish.
    pub async fn publish_batch(&self, envs: Vec<Envelope>) -> Result<(), BusError> {
        // Counted once published: a publish that fails (or is given up) is not. A batch of one
        // kind (nearly all) is remembered as (kind, bus, count), without an allocation.
        let Some(first) = envs.first() else {
            return Ok(());
        };
        let one = (
            first.kind.clone(),
            self.bus.route(&first.kind, first.prio).bus,
        );
        let n = envs.len() as u64;
        let mixed: Option<Vec<(EventKind, dualbus_bus::BusId)>> =
            envs.iter().any(|e| e.kind != one.0).then(|| {
                envs.iter()
                    .map(|e| (e.kind.clone(), self.bus.route(&e.kind, e.prio).bus))
                    .collect()
            });
        self.bus.publish_batch(envs).await?;
        match &mixed {
            None => {
                self.count_published(std::iter::repeat_n(&one.0, n as usize));
                if let Some(m) = &self.metrics {
                    m.published(one.1, n);
                }
            }
            Some(kinds) => {
                self.count_published(kinds.iter().map(|(k, _)| k));
                if let Some(m) = &self.metrics {
                    for (_, bus) in kinds {
                        m.published(*bus, 1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers a request (counted as a publish of the request's kind).
    ///
    /// # Errors
    /// [`BusError::NotARequest`] when `request` expects no reply.
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        request: &Envelope,
        payload: &T,
    ) -> Result<(), BusError> {
        self.count_published(std::iter::once(&request.kind));
        self.bus.reply(request, payload).await
    }
}

/// Host settings.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// How often `engine_health` is published.
    pub health_every: Duration,
    /// The engine's configuration section.
    pub config: serde_json::Value,
    /// Where reads start for a new group (defaults to the bus config).
    pub start: Option<dualbus_core::StartFrom>,
    /// Per-bus traffic and latency, shared by the engines of a run.
    pub metrics: Option<Arc<BusMetrics>>,
    /// Where the engine's readers, handlers and timers run.
    pub thread: EngineThread,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            health_every: Duration::from_secs(1),
            config: serde_json::Value::Null,
            start: None,
            metrics: None,
            thread: EngineThread::Own,
        }
    }
}

/// Where an engine's readers, handlers and timers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineThread {
    /// A thread of its own (a one-worker runtime named `engine-NAME`): a slow handler or timer
    /// of one engine holds that thread only, never the others' deliveries, and the operating
    /// system shares the cores between the engines. The default.
    #[default]
    Own,
    /// The runtime of the caller of [`EngineHost::start`] (`dualbus backtest` runs every
    /// engine on one thread, so the same input is handled in the same order).
    Caller,
}

/// Runs engines on a bus.
pub struct EngineHost;

/// A running engine; [`RunningEngine::stop`] stops it gracefully.
pub struct RunningEngine<E: Engine> {
    engine: Arc<tokio::sync::Mutex<E>>,
    ctx: EngineContext,
    subs: Vec<Subscription>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    started: Instant,
    thread: OwnThread,
}

/// The engine's own runtime ([`EngineThread::Own`]); shut down when dropped, without waiting,
/// so dropping a running engine inside another runtime is safe.
struct OwnThread(Option<tokio::runtime::Runtime>);

impl OwnThread {
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `on` (the engine's own runtime) or, without one, here.
async fn run_on<T: Send + 'static>(
    on: Option<tokio::runtime::Handle>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match on {
        Some(h) => h.spawn(fut).await,
        None => Ok(fut.await),
    }
}

struct Dispatch<E: Engine> {
    engine: Arc<tokio::sync::Mutex<E>>,
    ctx: EngineContext,
}

impl<E: Engine> Handler for Dispatch<E> {
    async fn handle(&self, msg: &Envelope) -> Result<(), HandlerError> {
        self.handle_received(msg, Instant::now()).await
    }

    async fn handle_received(&self, msg: &Envelope, received: Instant) -> Result<(), HandlerError> {
        let mut engine = self.engine.lock().await;
        let began = Instant::now();
        let latency_us = dualbus_core::now_unix_nanos().saturating_sub(msg.ts) / 1_000;
        let res = engine.on_message(&self.ctx, msg).await;
        let ended = Instant::now();
        drop(engine);
        bump(&mut self.ctx.counts.lock().received, &msg.kind, 1);
        let bus = self.ctx.bus.router().bus_of(&msg.kind);
        self.ctx.times.record_message(
            &msg.kind,
            DeliveryTimes {
                bus,
                lane: LaneId::of(bus, msg),
                latency_us,
                received,
                began,
                ended,
            },
        );
        res
    }
}

impl EngineHost {
    /// Starts `engine` on `bus` (whose `src` should be the engine's name and `inst` its
    /// instance id): calls [`Engine::start`], subscribes, starts timers and heartbeats.
    ///
    /// # Errors
    /// What [`Engine::start`] returned, or a failed subscription.
    pub async fn start<E: Engine>(
        engine: E,
        bus: DualBus,
        opts: HostOptions,
    ) -> Result<RunningEngine<E>, EngineError> {
        let name = engine.name();
        let thread = OwnThread(match opts.thread {
            EngineThread::Own => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("engine-{name}"))
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        EngineError::Other(format!("{name}: no thread for the engine: {e}"))
                    })?,
            ),
            EngineThread::Caller => None,
        });
        // Everything the engine starts (its readers, their connections, its timers, the tasks
        // it spawns) belongs to its own runtime.
        let mut running = run_on(thread.handle(), Self::start_here(engine, bus, opts))
            .await
            .map_err(|e| EngineError::Other(format!("{name}: start failed: {e}")))??;
        running.thread = thread;
        Ok(running)
    }

    async fn start_here<E: Engine>(
        mut engine: E,
        bus: DualBus,
        opts: HostOptions,
    ) -> Result<RunningEngine<E>, EngineError> {
        let name = engine.name();
        let times = match &opts.metrics {
            Some(m) => m.engine(name),
            None => Arc::new(EngineTimes::new(name, Instant::now(), WARMUP)),
        };
        // The engine may publish what it declares, and its heartbeats: nothing else, in every
        // transport (`dualbus redis up` makes the Redis ACLs from the same declarations).
        let mut allowed = engine.publishes();
        allowed.push(EventKind::EngineHealth);
        let ctx = EngineContext {
            bus: bus.restricted_to(&allowed),
            name,
            counts: Default::default(),
            config: Arc::new(opts.config.clone()),
            metrics: opts.metrics.clone(),
            times,
        };
        if let Some(m) = &opts.metrics {
            m.attach(
                ctx.times.clone(),
                ctx.counts.clone(),
                bus.clone(),
                opts.health_every,
            );
        }
        engine.start(&ctx).await?;
        let interests = engine.subscriptions();
        let timers = engine.timers();
        let engine = Arc::new(tokio::sync::Mutex::new(engine));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let mut subs = Vec::new();
        for (i, interest) in interests.iter().enumerate() {
            let patterns: Vec<&str> = interest.patterns.iter().map(|s| s.as_str()).collect();
            // One group per engine; a second interest of the same engine needs its own
            // consumer name (one subscription per (stream, group, consumer)).
            let mut so = SubscribeOptions::new(name, &patterns)
                .map_err(|e| EngineError::Config {
                    engine: name.to_string(),
                    reason: format!("subscription {patterns:?}: {e}"),
                })?
                .mode(if interest.fast {
                    Mode::Fast
                } else {
                    Mode::Reliable
                });
            if i > 0 {
                so = so.consumer(&format!("{}-{i}", bus.inst()));
            }
            if let Some(s) = opts.start {
                so = so.start(s);
            }
            let handler = Dispatch {
                engine: engine.clone(),
                ctx: ctx.clone(),
            };
            subs.push(bus.subscribe(so, handler).await?);
        }
        if let Err(e) = engine.lock().await.ready(&ctx).await {
            for s in subs {
                s.stop().await;
            }
            return Err(e);
        }
        let mut tasks = Vec::new();
        for t in timers {
            let engine = engine.clone();
            let ctx = ctx.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(t.every);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await; // the first tick is immediate: skip it
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = every.tick() => {}
                    }
                    let mut e = engine.lock().await;
                    let began = Instant::now();
                    if let Err(err) = e.on_timer(&ctx, t.name).await {
                        tracing::warn!(engine = ctx.name, timer = t.name, error = %err, "timer failed");
                    }
                    ctx.times.record_timer(began.elapsed());
                }
            }));
        }
        {
            let engine = engine.clone();
            let ctx = ctx.clone();
            let mut stop = stop_rx.clone();
            let every = opts.health_every;
            let stats: Vec<_> = subs.iter().map(Subscription::shared_stats).collect();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tick.tick() => {}
                    }
                    let details = engine.lock().await.health();
                    heartbeat(&ctx, "running", started, details, faults(&stats)).await;
                }
            }));
        }
        Ok(RunningEngine {
            engine,
            ctx,
            subs,
            tasks,
            stop_tx,
            started,
            thread: OwnThread(None),
        })
    }
}

/// The faults of an engine's subscriptions, `None` while there are none.
fn faults(stats: &[Arc<dualbus_bus::SubscriptionStats>]) -> Option<EngineFaults> {
    use std::sync::atomic::Ordering;
    let f = EngineFaults {
        handler_panics: stats
            .iter()
            .map(|s| s.panicked.load(Ordering::Relaxed))
            .sum(),
        reader_restarts: stats
            .iter()
            .map(|s| s.restarted.load(Ordering::Relaxed))
            .sum(),
    };
    (f != EngineFaults::default()).then_some(f)
}

/// Publishes a heartbeat; a running engine with faults says `degraded`.
async fn heartbeat(
    ctx: &EngineContext,
    status: &str,
    started: Instant,
    details: serde_json::Value,
    faults: Option<EngineFaults>,
) {
    let status = if status == "running" && faults.is_some() {
        "degraded"
    } else {
        status
    };
    let health = EngineHealth {
        engine: ctx.name.to_string(),
        instance: ctx.instance().to_string(),
        status: status.to_string(),
        uptime_s: started.elapsed().as_secs_f64(),
        counts: ctx.counts(),
        details,
        latency: Some(ctx.times.take_window()),
        faults,
    };
    ctx.times.beat();
    if let Err(e) = ctx.send(&health).await {
        tracing::warn!(engine = ctx.name, error = %e, "heartbeat not published");
    }
}

impl<E: Engine> RunningEngine<E> {
    /// The engine's context (its bus, counters).
    pub fn context(&self) -> &EngineContext {
        &self.ctx
    }

    /// Counts so far.
    pub fn counts(&self) -> EngineCounts {
        self.ctx.counts()
    }

    /// Runs `f` on the engine (between messages).
    pub async fn with<R>(&self, f: impl FnOnce(&mut E) -> R) -> R {
        let mut e = self.engine.lock().await;
        f(&mut e)
    }

    /// Stops gracefully: subscriptions finish their current batch, timers and heartbeats stop,
    /// [`Engine::stop`] runs, a last `engine_health` says `stopped`. Returns the final counts.
    pub async fn stop(self) -> EngineCounts {
        let RunningEngine {
            engine,
            ctx,
            subs,
            tasks,
            stop_tx,
            started,
            thread,
        } = self;
        let counts = ctx.clone();
        let stats: Vec<_> = subs.iter().map(Subscription::shared_stats).collect();
        let stopping = async move {
            let _ = stop_tx.send(true);
            for s in subs {
                s.stop().await;
            }
            for t in tasks {
                let _ = t.await;
            }
            let details = {
                let mut e = engine.lock().await;
                if let Err(err) = e.stop(&ctx).await {
                    tracing::warn!(engine = ctx.name, error = %err, "stop failed");
                }
                e.health()
            };
            heartbeat(&ctx, "stopped", started, details, faults(&stats)).await;
            // What the engine published is with the brokers before its process may exit (the
            // Redis writer queues; the embedded transport has nothing to flush).
            for bus in [dualbus_bus::BusId::MarketData, dualbus_bus::BusId::Logic] {
                if let Err(e) = ctx.bus.transport(bus).flush().await {
                    tracing::warn!(engine = ctx.name, error = %e, "published messages not flushed");
                }
            }
        };
        // On the engine's own runtime, where its tasks and connections live; then that
        // runtime ends.
        if let Err(e) = run_on(thread.handle(), stopping).await {
            tracing::warn!(engine = counts.name, error = %e, "stop failed");
        }
        drop(thread);
        counts.counts()
    }
}

/// A JSON value as an error message shows it: `the string "x"`, `the number -1`, `an object`.
fn json_in_words(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}
