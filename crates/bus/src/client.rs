//! The `DualBus` client.

use crate::config::{BusId, Config};
use crate::failover::{Failover, FailoverCounters, FailoverSettings};
use crate::route::{is_priority, Route, Router};
use bytes::Bytes;
use dualbus_core::dedup::{SourceDedup, Verdict};
use dualbus_core::transport::StreamKey;
use dualbus_core::{
    Backpressure, CodecError, Confirm, DeadLetter, Encoding, Envelope, EventKind, Health, Mode,
    Pattern, Priority, PublishError, ReceiveError, StartFrom, SubscribeError, SubscribeSpec,
    Subscriber, Topic, TopicError, Transport,
};
use dualbus_memory::{MemoryOptions, MemoryTransport};
use dualbus_redis::{ConnectError, RedisOptions, RedisTransport};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, OnceCell};
use tokio::task::JoinHandle;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Bad configuration or construction.
    #[error("configuration: {0}")]
    Config(String),
    /// A topic that does not start with its kind's name.
    #[error("topic {topic:?} does not start with its kind {kind:?} (topics are {{kind}}.…)")]
    TopicKindMismatch {
        /// The topic.
        topic: String,
        /// The kind.
        kind: String,
    },
    /// A bad topic or pattern.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A payload that could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Publishing failed on a bus.
    #[error("publish on the {bus} bus failed: {source}")]
    Publish {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: PublishError,
    },
    /// Subscribing failed on a bus.
    #[error("subscribe on the {bus} bus failed: {source}")]
    Subscribe {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: SubscribeError,
    },
    /// Reading a bus failed.
    #[error("reading the {bus} bus failed: {source}")]
    Receive {
        /// The bus.
        bus: BusId,
        /// What failed.
        source: ReceiveError,
    },
    /// A broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `reply` was called with a message that is not a request.
    #[error("message {id} is not a request (it has no reply stream or correlation id)")]
    NotARequest {
        /// The message id.
        id: String,
    },
    /// A request names a reply stream that is not a requester's reply stream.
    #[error(
        "message {id} asks for its reply on {stream:?}, which is not a reply stream \
         ({{prefix}}:{{bus}}:reply:{{instance}}); nothing was written"
    )]
    BadReplyStream {
        /// The message id.
        id: String,
        /// The stream it named.
        stream: String,
    },
    /// A client restricted to the kinds its engine declares published another kind.
    #[error(
        "{src} published {kind}, a kind it does not declare (it publishes {declared}); \
         nothing was sent"
    )]
    Undeclared {
        /// The publishing engine.
        src: String,
        /// The kind it published.
        kind: String,
        /// The kinds it declares, comma-separated (`nothing` when none).
        declared: String,
    },
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No reply within the timeout.
    #[error("request {kind} on {topic} got no reply within {after:?}")]
    Timeout {
        /// The request's kind.
        kind: String,
        /// The request's topic.
        topic: String,
        /// The timeout.
        after: Duration,
    },
    /// The request could not be sent.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A handler's failure: the message is not acknowledged, is redelivered after the idle timeout,
/// and is dead-lettered with this reason after the last allowed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError(s)
    }
}

/// A payload that does not decode fails its handler with the reason
/// (`order_request does not decode: ...`): redelivered, then dead-lettered.
impl From<dualbus_core::PayloadError> for HandlerError {
    fn from(e: dualbus_core::PayloadError) -> Self {
        HandlerError(e.to_string())
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError(s.to_string())
    }
}

/// Handles the messages of a subscription. Called concurrently from the normal and the
/// priority-lane reader (and from both buses), hence `&self`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message; `Ok` acknowledges it.
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Like [`Handler::handle`], told when the reader took the message's batch from the
    /// transport (a handler that measures how long messages wait for it overrides this one;
    /// the default calls `handle`).
    fn handle_received(
        &self,
        msg: &Envelope,
        received: Instant,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = received;
        self.handle(msg)
    }
}

/// A synchronous closure as a [`Handler`]; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps a closure `Fn(&Envelope) -> Result<(), HandlerError>` as a handler.
pub fn handler_fn<F>(f: F) -> FnHandler<F>
where
    F: Fn(&Envelope) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    FnHandler(f)
}

impl<F> Handler for FnHandler<F>
where
    F: Fn(&Envelope) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready((self.0)(msg))
    }
}

/// Counters of one bus, as seen by this client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BusCounters {
    /// Messages published.
    pub published: u64,
    /// Messages handed to handlers (first deliveries and redeliveries, not duplicates).
    pub delivered: u64,
    /// Messages acknowledged (handled, filtered out or duplicates).
    pub acknowledged: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Messages moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages dropped by a `drop_oldest` policy or a stream trim.
    pub dropped: u64,
    /// Messages the broker refused to store (a Redis ACL, memory); their publish failed.
    pub refused: u64,
    /// Fast-mode messages skipped by consumers that fell behind.
    pub skipped: u64,
    /// Duplicates suppressed by (`src`, `inst`, `seq`).
    pub duplicates: u64,
    /// Handler failures.
    pub failed: u64,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

#[derive(Default)]
struct Counters {
    published: Padded,
    delivered: AtomicU64,
    acknowledged: AtomicU64,
    skipped: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
}

/// Per-subscription options; unset fields take the `[delivery]` defaults of the config.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Consumer group (by convention the engine's name).
    pub group: Arc<str>,
    /// Consumer name within the group; defaults to the client's instance id.
    pub consumer: Option<Arc<str>>,
    /// Topic patterns; a message is handled when any matches.
    pub patterns: Vec<Pattern>,
    /// Kinds to read; when empty they come from the patterns' first segments (a wildcard first
    /// segment reads every known kind).
    pub kinds: Vec<EventKind>,
    /// Reliable or fast.
    pub mode: Option<Mode>,
    /// Where a new group starts.
    pub start: Option<StartFrom>,
    /// Queue bound of the group.
    pub queue_bound: Option<usize>,
    /// Policy at the bound.
    pub backpressure: Option<Backpressure>,
    /// Redelivery delay of unacknowledged messages.
    pub idle_timeout: Option<Duration>,
    /// Deliveries before dead-lettering.
    pub max_deliveries: Option<u32>,
    /// Fast-mode lag limit.
    pub lag_limit: Option<u64>,
    /// Messages per read.
    pub batch_max: Option<usize>,
}

impl SubscribeOptions {
    /// Options for `group` reading the given topic patterns.
    ///
    /// # Errors
    /// [`TopicError`] naming the bad pattern segment.
    pub fn new(group: &str, patterns: &[&str]) -> Result<SubscribeOptions, TopicError> {
        Ok(SubscribeOptions {
            group: Arc::from(group),
            consumer: None,
            patterns: patterns
                .iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<_, _>>()?,
            kinds: Vec::new(),
            mode: None,
            start: None,
            queue_bound: None,
            backpressure: None,
            idle_timeout: None,
            max_deliveries: None,
            lag_limit: None,
            batch_max: None,
        })
    }
    /// Sets the consumer name.
    pub fn consumer(mut self, c: &str) -> Self {
        self.consumer = Some(Arc::from(c));
        self
    }
    /// Sets the mode.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = Some(m);
        self
    }
    /// Sets where a new group starts.
    pub fn start(mut self, s: StartFrom) -> Self {
        self.start = Some(s);
        self
    }
    /// Sets the queue bound and its policy.
    pub fn bound(mut self, bound: usize, policy: Backpressure) -> Self {
        self.queue_bound = Some(bound);
        self.backpressure = Some(policy);
        self
    }
    /// Sets the redelivery timeout and the deliveries before dead-lettering.
    pub fn redelivery(mut self, idle: Duration, max_deliveries: u32) -> Self {
        self.idle_timeout = Some(idle);
        self.max_deliveries = Some(max_deliveries);
        self
    }
    /// Sets the fast-mode lag limit.
    pub fn lag_limit(mut self, n: u64) -> Self {
        self.lag_limit = Some(n);
        self
    }
    /// Sets the most messages per read.
    pub fn batch_max(mut self, n: usize) -> Self {
        self.batch_max = Some(n);
        self
    }
    /// Reads these kinds instead of deriving them from the patterns.
    pub fn kinds(mut self, kinds: Vec<EventKind>) -> Self {
        self.kinds = kinds;
        self
    }
}

/// Counters of one subscription.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Messages handled successfully.
    pub handled: AtomicU64,
    /// Handler failures.
    pub failed: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Fast-mode messages skipped.
    pub skipped: AtomicU64,
    /// Messages dead-lettered while this subscription read.
    pub dead_lettered: AtomicU64,
}

/// A running subscription. Dropping it stops its readers (without waiting).
pub struct Subscription {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<SubscriptionStats>,
    /// The (bus, stream, group, consumer) this subscription reads, released when it ends.
    claims: Option<(Claims, Vec<Claim>)>,
}

type Claim = (usize, StreamKey, Arc<str>, Arc<str>);
type Claims = Arc<Mutex<std::collections::HashSet<Claim>>>;

struct ClaimGuard {
    claims: Claims,
    mine: Option<Vec<Claim>>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(mine) = self.mine.take() {
            let mut c = self.claims.lock();
            for k in mine {
                c.remove(&k);
            }
        }
    }
}

impl Subscription {
    /// Its counters.
    pub fn stats(&self) -> &SubscriptionStats {
        &self.stats
    }

    /// Kills the readers at once, as a crash of the consumer's process would: the batch in
    /// hand is neither finished nor acknowledged (another consumer of the group takes it over
    /// after the idle timeout).
    pub fn abort(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Stops the readers and waits for them: the batch in hand is finished and acknowledged.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some((claims, mine)) = self.claims.take() {
            let mut c = claims.lock();
            for k in mine {
                c.remove(&k);
            }
        }
    }
}

type Waiters = Arc<Mutex<HashMap<Arc<str>, oneshot::Sender<Envelope>>>>;

struct WaiterGuard<'a> {
    waiting: &'a Waiters,
    corr: Arc<str>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiting.lock().remove(&self.corr);
    }
}

struct Inner {
    cfg: Config,
    router: Router,
    src: Arc<str>,
    inst: Arc<str>,
    enc: Encoding,
    transports: [Arc<dyn Transport>; 2],
    /// Shared with this client's readers (its reply readers too), which count what they read.
    counters: Arc<[Counters; 2]>,
    seq: AtomicU64,
    corr_seq: AtomicU64,
    waiting: Waiters,
    reply_readers: [OnceCell<Subscription>; 2],
    /// Shared by every client built on the same transports.
    failover: Arc<Failover>,
    /// What this client's subscriptions read.
    claims: Claims,
}

/// The client of the two buses: routes each message by kind, publishes, subscribes, and does
/// request/reply. Cheap to clone.
#[derive(Clone)]
pub struct DualBus {
    inner: Arc<Inner>,
    /// The kinds this client may publish ([`DualBus::restricted_to`]); `None`: any.
    publishes: Option<Arc<[EventKind]>>,
    /// The MarketData partitions this client's subscriptions read
    /// ([`DualBus::reading_partitions`]); `None`: all.
    reads: Option<Arc<[u32]>>,
}

/// Builds a [`DualBus`].
pub struct DualBusBuilder {
    src: String,
    inst: Option<String>,
    cfg: Config,
    transports: Option<[Arc<dyn Transport>; 2]>,
    first_seq: Option<u64>,
    failover: Option<Arc<Failover>>,
}

impl DualBusBuilder {
    /// Sets the instance id (default: the config's `instance`, else `{engine}-1`).
    pub fn instance(mut self, inst: &str) -> Self {
        self.inst = Some(inst.to_string());
        self
    }
    /// Uses this configuration (default: [`Config::default`]).
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self
    }
    /// Uses these transports for the MarketData and Engine Logic buses (engines sharing a
    /// process share transports); default: new embedded transports.
    pub fn transports(mut self, md: Arc<dyn Transport>, logic: Arc<dyn Transport>) -> Self {
        self.transports = Some([md, logic]);
        self
    }
    /// The first sequence number (default: the current Unix time in ns, so numbers keep
    /// increasing across restarts of the same instance).
    pub fn first_seq(mut self, seq: u64) -> Self {
        self.first_seq = Some(seq);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`BusError::Config`] for an invalid config or names, or a transport this build lacks.
    pub fn build(self) -> Result<DualBus, BusError> {
        let problems = self.cfg.problems();
        if !problems.is_empty() {
            return Err(BusError::Config(
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        let inst = self
            .inst
            .or_else(|| self.cfg.instance.clone())
            .unwrap_or_else(|| format!("{}-1", self.src));
        if !Envelope::names_valid(&self.src, &inst) {
            return Err(BusError::Config(format!(
                "engine name {:?} and instance {:?} must be 1-128 characters of [A-Za-z0-9_-]",
                self.src, inst
            )));
        }
        let transports = match self.transports {
            Some(t) => t,
            None => default_transports(&self.cfg)?,
        };
        let failover = match self.failover {
            Some(f) => f,
            None => {
                let f = &self.cfg.failover;
                let settings = FailoverSettings {
                    enabled: match f.enabled.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => transports.iter().all(|t| t.name() != "memory"),
                    },
                    heartbeat: Duration::from_millis(f.heartbeat_ms),
                    heartbeat_timeout: Duration::from_millis(f.heartbeat_timeout_ms),
                    window: f.window as usize,
                    window_age: Duration::from_millis(f.window_ms),
                };
                let fo = Arc::new(Failover::new(settings));
                if settings.enabled {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(watch(Arc::downgrade(&fo), transports.clone()));
                    }
                }
                fo
            }
        };
        Ok(DualBus {
            publishes: None,
            reads: None,
            inner: Arc::new(Inner {
                router: Router::new(&self.cfg),
                enc: self.cfg.encoding(),
                src: Arc::from(self.src),
                inst: Arc::from(inst),
                transports,
                counters: Default::default(),
                seq: AtomicU64::new(self.first_seq.unwrap_or_else(dualbus_core::now_unix_nanos)),
                corr_seq: AtomicU64::new(0),
                waiting: Default::default(),
                reply_readers: Default::default(),
                failover,
                claims: Default::default(),
                cfg: self.cfg,
            }),
        })
    }
}

/// The embedded transports a config asks for (for `transport = "memory"`).
///
/// # Errors
/// [`BusError::Config`] when the config names another transport: those need a connection, see
/// [`connect_transports`].
pub fn default_transports(cfg: &Config) -> Result<[Arc<dyn Transport>; 2], BusError> {
    match cfg.transport.as_str() {
        "memory" => {
            let mk = |bus: BusId| -> Arc<dyn Transport> {
                Arc::new(MemoryTransport::with_options(MemoryOptions {
                    maxlen: cfg.bus(bus).maxlen as usize,
                    spin: cfg.memory.spin(),
                }))
            };
            Ok([mk(BusId::MarketData), mk(BusId::Logic)])
        }
        other => Err(BusError::Config(format!(
            "transport {other:?} needs a connection: use connect_transports (or DualBus::connect)"
        ))),
    }
}

/// The Redis options of one bus from the config.
pub fn redis_options(cfg: &Config, bus: BusId) -> Result<RedisOptions, BusError> {
    let b = cfg.bus(bus);
    Ok(RedisOptions {
        maxlen: b.maxlen,
        connect_timeout: Duration::from_millis(b.connect_timeout_ms),
        max_payload: b.max_payload_bytes as usize,
        tls: tls_config(cfg)?,
        ..RedisOptions::new(bus.as_str(), &b.url)
    })
}

/// The certificates of the config's `[tls]` section, read from their files (`None` when it
/// names none).
///
/// # Errors
/// [`BusError::Config`] naming a file that cannot be read or holds no PEM of its kind.
pub fn tls_config(cfg: &Config) -> Result<Option<dualbus_redis::TlsConfig>, BusError> {
    let t = &cfg.tls;
    if t.ca_file.is_none() && t.cert_file.is_none() && t.key_file.is_none() {
        return Ok(None);
    }
    dualbus_redis::TlsConfig::load(
        t.ca_file.as_deref(),
        t.cert_file.as_deref(),
        t.key_file.as_deref(),
    )
    .map(Some)
    .map_err(|e| BusError::Config(format!("[tls]: {e}")))
}

/// Connects the Redis transport of one bus: a single server (`redis://`) or a Redis Cluster
/// (`redis+cluster://`).
///
/// # Errors
/// [`BusError::Connect`] naming the bus and address that could not be reached.
pub async fn connect_transport(cfg: &Config, bus: BusId) -> Result<Arc<dyn Transport>, BusError> {
    let opts = redis_options(cfg, bus)?;
    Ok(if dualbus_redis::is_cluster_url(&opts.url) {
        Arc::new(dualbus_redis::ClusterTransport::connect(opts).await?)
    } else {
        Arc::new(RedisTransport::connect(opts).await?)
    })
}

/// Creates the transports the config asks for: embedded ones, or connections to both Redis
/// servers.
///
/// # Errors
/// [`BusError::Connect`] naming the bus and address that could not be reached.
pub async fn connect_transports(cfg: &Config) -> Result<[Arc<dyn Transport>; 2], BusError> {
    if cfg.transport == "redis" {
        Ok([
            connect_transport(cfg, BusId::MarketData).await?,
            connect_transport(cfg, BusId::Logic).await?,
        ])
    } else {
        default_transports(cfg)
    }
}

impl DualBus {
    /// Starts building a client for the engine `src`.
    pub fn builder(src: &str) -> DualBusBuilder {
        DualBusBuilder {
            src: src.to_string(),
            inst: None,
            cfg: Config::default(),
            transports: None,
            first_seq: None,
            failover: None,
        }
    }

    /// Connects the transports the config names (embedded or Redis) and builds a client for
    /// engine `src`.
    ///
    /// # Errors
    /// [`BusError::Connect`] naming an unreachable bus, or [`BusError::Config`].
    pub async fn connect(src: &str, cfg: Config) -> Result<DualBus, BusError> {
        let [md, logic] = connect_transports(&cfg).await?;
        DualBus::builder(src)
            .config(cfg)
            .transports(md, logic)
            .build()
    }

    /// A client for another engine sharing this client's transports and config (engines in
    /// one process).
    ///
    /// # Errors
    /// [`BusError::Config`] for bad names.
    pub fn sibling(&self, src: &str, inst: &str) -> Result<DualBus, BusError> {
        self.sibling_builder(src, inst).build()
    }

    /// Like [`DualBus::sibling`], with sequence numbers starting at `first_seq` (tests and
    /// benchmarks that index messages by sequence number).
    ///
    /// # Errors
    /// [`BusError::Config`] for bad names.
    pub fn sibling_starting_at(
        &self,
        src: &str,
        inst: &str,
        first_seq: u64,
    ) -> Result<DualBus, BusError> {
        self.sibling_builder(src, inst).first_seq(first_seq).build()
    }

    fn sibling_builder(&self, src: &str, inst: &str) -> DualBusBuilder {
        let mut b = DualBus::builder(src)
            .instance(inst)
            .config(self.inner.cfg.clone())
            .transports(
                self.inner.transports[0].clone(),
                self.inner.transports[1].clone(),
            );
        // One failover state (and one heartbeat) per set of transports.
        b.failover = Some(self.inner.failover.clone());
        b
    }

    /// This client's engine name.
    pub fn src(&self) -> &str {
        &self.inner.src
    }
    /// This client's instance id.
    pub fn inst(&self) -> &str {
        &self.inner.inst
    }
    /// The payload encoding this client publishes with.
    pub fn encoding(&self) -> Encoding {
        self.inner.enc
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }
    /// The router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }
    /// The transport of a bus.
    pub fn transport(&self, bus: BusId) -> &Arc<dyn Transport> {
        &self.inner.transports[bus.index()]
    }

    /// Where a message of this kind and priority goes (on a partitioned MarketData bus, the
    /// bus and lane; the stream is partition 0's: see [`DualBus::route_topic`]).
    pub fn route(&self, kind: &EventKind, prio: Priority) -> Route {
        self.inner.router.route(kind, prio)
    }

    /// Where a message of this kind, priority and topic goes.
    pub fn route_topic(&self, kind: &EventKind, prio: Priority, topic: &str) -> Route {
        self.inner.router.route_topic(kind, prio, topic)
    }

    /// Builds an envelope from this client: next sequence number, current time.
    ///
    /// # Errors
    /// [`BusError::TopicKindMismatch`] when the topic does not start with the kind's name.
    pub fn stamp(
        &self,
        kind: EventKind,
        topic: Topic,
        prio: Priority,
        enc: Encoding,
        payload: Bytes,
    ) -> Result<Envelope, BusError> {
        if !topic.starts_with_segment(kind.as_str()) {
            return Err(BusError::TopicKindMismatch {
                topic: topic.to_string(),
                kind: kind.to_string(),
            });
        }
        Ok(Envelope {
            kind,
            topic,
            src: self.inner.src.clone(),
            inst: self.inner.inst.clone(),
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
            ts: dualbus_core::now_unix_nanos(),
            prio,
            enc,
            corr: None,
            reply: None,
            payload,
        })
    }

    /// Encodes `payload` with the configured encoding and stamps an envelope.
    ///
    /// # Errors
    /// Bad topic, topic/kind mismatch, or a payload that does not encode.
    pub fn envelope<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        prio: Priority,
        payload: &T,
    ) -> Result<Envelope, BusError> {
        let topic = Topic::new(topic)?;
        let bytes = self.inner.enc.encode(payload)?;
        self.stamp(kind, topic, prio, self.inner.enc, bytes)
    }

    /// Publishes a payload at normal priority; returns once it is queued.
    ///
    /// # Errors
    /// See [`DualBus::envelope`] and [`DualBus::publish_batch`].
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        payload: &T,
    ) -> Result<(), BusError> {
        let env = self.envelope(kind, topic, Priority::Normal, payload)?;
        self.publish_envelope(env).await
    }

    /// Publishes one envelope; returns once it is queued.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus.
    pub async fn publish_envelope(&self, env: Envelope) -> Result<(), BusError> {
        self.send(vec![env], Confirm::Queued).await
    }

    /// Publishes one envelope; returns once the broker has it.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus.
    pub async fn publish_confirmed(&self, env: Envelope) -> Result<(), BusError> {
        self.send(vec![env], Confirm::Broker).await
    }

    /// Publishes envelopes in order; consecutive envelopes for one stream go in one transport
    /// call. Returns once all are queued.
    ///
    /// # Errors
    /// [`BusError::Publish`] naming the bus; envelopes before the failing run were published.
    pub async fn publish_batch(&self, envs: Vec<Envelope>) -> Result<(), BusError> {
        self.send(envs, Confirm::Queued).await
    }

    /// This client, allowed to publish (and send requests of) `kinds` only: any other kind is
    /// [`BusError::Undeclared`] before anything is sent. Engines get such a client for the
    /// kinds they declare, the same lists the Redis ACLs of `dualbus redis up` are made from,
    /// so a publication missing from a declaration fails in every transport, not only where a
    /// broker enforces it. Replies are not restricted ([`DualBus::reply`] writes only to reply
    /// streams).
    pub fn restricted_to(&self, kinds: &[EventKind]) -> DualBus {
        DualBus {
            inner: self.inner.clone(),
            publishes: Some(Arc::from(kinds)),
            reads: self.reads.clone(),
        }
    }

    /// This client, reading only the given partitions of the MarketData bus's partitioned
    /// streams (`dualbus engine NAME --partition K/N` or `--symbols`): instances of a per-symbol
    /// engine share the symbols, each symbol handled by one instance and in order. Streams of
    /// the Engine Logic bus and the priority lanes are read as before.
    ///
    /// # Errors
    /// [`BusError::Config`] when a partition is not below the bus's `[md] partitions`.
    pub fn reading_partitions(&self, parts: &[u32]) -> Result<DualBus, BusError> {
        let n = self.inner.router.partitions();
        if let Some(p) = parts.iter().find(|&&p| p >= n) {
            return Err(BusError::Config(format!(
                "partition {p} does not exist: the MarketData bus has {n} partition{} \
                 ([md] partitions)",
                if n == 1 { "" } else { "s" }
            )));
        }
        let mut parts = parts.to_vec();
        parts.sort_unstable();
        parts.dedup();
        Ok(DualBus {
            inner: self.inner.clone(),
            publishes: self.publishes.clone(),
            reads: Some(Arc::from(parts)),
        })
    }

    /// The MarketData partitions this client reads, when restricted
    /// ([`DualBus::reading_partitions`]).
    pub fn read_partitions(&self) -> Option<&[u32]> {
        self.reads.as_deref()
    }

    /// The kinds this client may publish, when restricted ([`DualBus::restricted_to`]).
    pub fn publications(&self) -> Option<&[EventKind]> {
        self.publishes.as_deref()
    }

    fn check_declared(&self, envs: &[Envelope]) -> Result<(), BusError> {
        let Some(allowed) = &self.publishes else {
            return Ok(());
        };
        match envs.iter().find(|e| !allowed.contains(&e.kind)) {
            None => Ok(()),
            Some(e) => Err(BusError::Undeclared {
                src: self.inner.src.to_string(),
                kind: e.kind.to_string(),
                declared: if allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    allowed
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    async fn send(&self, envs: Vec<Envelope>, confirm: Confirm) -> Result<(), BusError> {
        let Some(first) = envs.first() else {
            return Ok(());
        };
        self.check_declared(&envs)?;
        let router = &self.inner.router;
        let lane = is_priority(&first.kind, first.prio);
        if envs
            .iter()
            .all(|e| e.kind == first.kind && is_priority(&e.kind, e.prio) == lane)
            && (lane || !router.is_partitioned(&first.kind))
        {
            // One stream: hand the batch over as it is.
            let route = router.route(&first.kind, first.prio);
            return self.send_run(&route, envs, confirm).await;
        }
        // Several streams (kinds, lanes, partitions): one run per stream, each in the batch's
        // order, sent in the order the streams first appear.
        let mut runs: Vec<(Route, Vec<Envelope>)> = Vec::new();
        for env in envs {
            let route = router.route_topic(&env.kind, env.prio, env.topic.as_str());
            match runs
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(&r.stream, &route.stream) || r.stream == route.stream)
            {
                Some((_, run)) => run.push(env),
                None => runs.push((route, vec![env])),
            }
        }
        for (route, run) in runs {
            self.send_run(&route, run, confirm).await?;
        }
        Ok(())
    }

    async fn send_run(
        &self,
        route: &Route,
        run: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), BusError> {
        if run.is_empty() {
            return Ok(());
        }
        let n = run.len() as u64;
        let fo = &self.inner.failover;
        if !fo.settings.enabled {
            self.inner.transports[route.bus.index()]
                .publish(&route.stream, run, confirm)
                .await
                .map_err(|source| BusError::Publish {
                    bus: route.bus,
                    source,
                })?;
            self.inner.counters[route.bus.index()]
                .published
                .0
                .fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        let mut target = fo.target(route.bus);
        // A diverted publish waits for a switch in progress (a fail-over's re-sent window goes
        // first) and holds off a fail-back until it is queued (which then waits for it to be
        // read before moving traffic back).
        let _diverting = if target != route.bus {
            let guard = fo.switch.read().await;
            target = fo.target(route.bus);
            Some(guard)
        } else {
            None
        };
        let copy = run.clone();
        let publish = self.inner.transports[target.index()].publish(&route.stream, run, confirm);
        // A hung broker can hold a publish for its whole response timeout; once the heartbeat
        // marks the bus down, stop waiting and send the batch on the other bus instead.
        let res = tokio::select! {
            r = publish => r,
            _ = fo.went_down(target), if target == route.bus => Err(PublishError::Unavailable(
                format!("the {target} bus stopped answering its heartbeat"),
            )),
        };
        let used = match res {
            Ok(()) => target,
            Err(PublishError::Unavailable(why)) if fo.is_up(target.other()) => {
                // The broker is gone: fail over now rather than at the next heartbeat.
                tracing::warn!(bus = %target, error = %why, "publish failed; failing over");
                fail_over(fo, &self.inner.transports, target).await;
                let other = target.other();
                self.inner.transports[other.index()]
                    .publish(&route.stream, copy.clone(), confirm)
                    .await
                    .map_err(|source| BusError::Publish { bus: other, source })?;
                other
            }
            Err(source) => {
                return Err(BusError::Publish {
                    bus: target,
                    source,
                })
            }
        };
        self.inner.counters[used.index()]
            .published
            .0
            .fetch_add(n, Ordering::Relaxed);
        if used != route.bus {
            fo.diverted(route.bus, &route.stream);
        }
        // If the bus was marked down (its window re-sent) while this batch was being queued on
        // it, re-send the batch on the other bus too.
        if let Some(missed) = fo.record(used, &route.stream, copy) {
            if fo.is_up(used.other()) {
                self.resend_on_other(used, &route.stream, missed).await;
            }
        }
        Ok(())
    }

    async fn resend_on_other(&self, bus: BusId, stream: &StreamKey, envs: Vec<Envelope>) {
        let other = bus.other();
        let fo = &self.inner.failover;
        // After the window a fail-over in progress is re-sending (these messages are newer).
        let _diverting = fo.switch.read().await;
        fo.diverted(bus, stream);
        if let Err(e) = self.inner.transports[other.index()]
            .publish(stream, envs.clone(), Confirm::Queued)
            .await
        {
            tracing::error!(bus = %other, error = %e, "re-sending on the other bus failed");
        } else {
            // Both buses failing at once leaves nowhere to re-send: the window just ends here.
            let _ = fo.record(other, stream, envs);
        }
    }

    /// Failover counters of a bus (shared by clients on the same transports).
    pub fn failover_counters(&self, bus: BusId) -> FailoverCounters {
        self.inner.failover.counters(bus)
    }

    /// Subscribes a handler. Reads the kinds' streams on their buses and the priority lanes,
    /// each with its own reader task; a handler sees each message once (duplicates by
    /// (`src`, `inst`, `seq`) are dropped) and, per kind, in per-source order.
    ///
    /// # Errors
    /// [`BusError::Subscribe`] naming the bus, or a bad kind in a pattern.
    pub async fn subscribe<H: Handler>(
        &self,
        opts: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, BusError> {
        let kinds = if opts.kinds.is_empty() {
            kinds_of_patterns(&opts.patterns, &self.inner.cfg)?
        } else {
            opts.kinds.clone()
        };
        let filter = Arc::new(Filter {
            kinds: kinds.clone(),
            patterns: opts.patterns.clone(),
        });
        let mut plan: Vec<ReaderPlan> = Vec::new();
        for bus in BusId::ALL {
            let router = &self.inner.router;
            let mut streams: Vec<StreamKey> = kinds
                .iter()
                .filter(|k| router.bus_of(k) == bus)
                // Critical kinds travel on the priority lane, but their own streams are read
                // too: a client that is not a DualBus (redis-cli, Python) may XADD there.
                .flat_map(|k| match &self.reads {
                    Some(parts) => router.kind_streams_in(bus, k, parts),
                    None => router.kind_streams(bus, k),
                })
                .collect();
            let on_bus = kinds.iter().any(|k| self.inner.router.bus_of(k) == bus);
            if !on_bus {
                continue;
            }
            streams.dedup();
            streams.push(self.inner.router.priority_stream(bus));
            // The priority lane has a reader of its own, never behind bulk traffic.
            let lanes = [
                streams[..streams.len() - 1].to_vec(),
                vec![streams[streams.len() - 1].clone()],
            ];
            for (i, lane) in lanes.into_iter().enumerate().filter(|(_, l)| !l.is_empty()) {
                let priority = i == 1;
                // The readers of one lane (this bus and, with failover, its mirror on the other
                // bus) hand messages to the handler one batch at a time: around a switch both
                // hold messages of the same sources, and per-source order must survive it.
                let turn = Arc::new(tokio::sync::Mutex::new(()));
                if self.inner.failover.settings.enabled {
                    // While this bus is down its traffic arrives on the other one, under the
                    // same keys: read there too (the groups exist before they are needed).
                    plan.push((bus.other(), lane.clone(), turn.clone(), priority));
                }
                plan.push((bus, lane, turn, priority));
            }
        }
        let handler = Arc::new(handler);
        let dedup = Arc::new(Mutex::new(SourceDedup::new(
            self.inner.cfg.delivery.dedup_window,
        )));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(SubscriptionStats::default());
        let mut tasks = Vec::new();
        // One (stream, group, consumer) is read by one subscription: a second one would split
        // the messages with the first, each acknowledging what its filter skips.
        let consumer = opts
            .consumer
            .clone()
            .unwrap_or_else(|| self.inner.inst.clone());
        let mine: Vec<Claim> = plan
            .iter()
            .flat_map(|(bus, streams, _, _)| {
                streams
                    .iter()
                    .map(|s| (bus.index(), s.clone(), opts.group.clone(), consumer.clone()))
            })
            .collect();
        {
            let mut claimed = self.inner.claims.lock();
            if let Some((_, stream, group, consumer)) = mine.iter().find(|k| claimed.contains(*k)) {
                return Err(BusError::Config(format!(
                    "group {group:?} consumer {consumer:?} already reads {stream} in another \
                     subscription of this client; give this subscription its own group"
                )));
            }
            claimed.extend(mine.iter().cloned());
        }
        // Released if subscribing fails below; handed to the subscription otherwise.
        let mut guard = ClaimGuard {
            claims: self.inner.claims.clone(),
            mine: Some(mine),
        };
        for (bus, streams, turn, priority) in plan {
            let spec = self.spec(&opts, streams, bus);
            // The priority lane's reader lives on the priority thread, and so does everything
            // its transport drives (a Redis connection is served by the runtime it was made on).
            let own_thread = priority && self.inner.cfg.delivery.priority_thread;
            let transport = self.inner.transports[bus.index()].clone();
            let sub = if own_thread {
                let spec = spec.clone();
                priority_runtime(self.inner.cfg.delivery.priority_realtime)?
                    .spawn(async move { transport.subscribe(spec).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(SubscribeError::Unavailable(format!(
                            "the priority-lane thread failed: {e}"
                        )))
                    })
            } else {
                transport.subscribe(spec.clone()).await
            }
            .map_err(|source| BusError::Subscribe { bus, source })?;
            let reader = Reader {
                bus,
                group: spec.group.clone(),
                counters: self.inner.counters.clone(),
                handler: handler.clone(),
                filter: Some(filter.clone()),
                dedup: dedup.clone(),
                turn,
                stats: stats.clone(),
                mode: spec.mode,
                batch_max: opts
                    .batch_max
                    .unwrap_or(self.inner.cfg.delivery.batch_max as usize),
            };
            tasks.push(if own_thread {
                priority_runtime(self.inner.cfg.delivery.priority_realtime)?
                    .spawn(reader.run(sub, stop_rx.clone()))
            } else {
                tokio::spawn(reader.run(sub, stop_rx.clone()))
            });
        }
        Ok(Subscription {
            stop: stop_tx,
            tasks,
            stats,
            claims: Some((
                self.inner.claims.clone(),
                guard.mine.take().unwrap_or_default(),
            )),
        })
    }

    fn spec(&self, opts: &SubscribeOptions, streams: Vec<StreamKey>, bus: BusId) -> SubscribeSpec {
        let d = &self.inner.cfg.delivery;
        SubscribeSpec {
            group: opts.group.clone(),
            consumer: opts
                .consumer
                .clone()
                .unwrap_or_else(|| self.inner.inst.clone()),
            streams,
            mode: opts.mode.unwrap_or(self.inner.cfg.mode()),
            start: opts.start.unwrap_or(self.inner.cfg.start()),
            queue_bound: opts.queue_bound.unwrap_or(d.queue_bound as usize),
            backpressure: opts.backpressure.unwrap_or(self.inner.cfg.backpressure()),
            lag_limit: opts.lag_limit.unwrap_or(d.lag_limit),
            idle_timeout: opts
                .idle_timeout
                .unwrap_or(Duration::from_millis(d.idle_timeout_ms)),
            max_deliveries: opts.max_deliveries.unwrap_or(d.max_deliveries as u32),
            dead_letter: self.inner.router.dead_stream(bus),
        }
    }

    /// Sends a request and waits for its reply (default timeout from the config).
    ///
    /// # Errors
    /// [`RequestError::Timeout`] when no reply arrives in time; [`RequestError::Bus`] when the
    /// request could not be sent.
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        kind: EventKind,
        topic: &str,
        payload: &T,
        timeout: Option<Duration>,
    ) -> Result<Envelope, RequestError> {
        let mut env = self.envelope(kind, topic, Priority::Normal, payload)?;
        let bus = self.inner.router.bus_of(&env.kind);
        self.ensure_reply_reader(bus).await?;
        let corr: Arc<str> = Arc::from(format!(
            "{}:{}",
            self.inner.inst,
            self.inner.corr_seq.fetch_add(1, Ordering::Relaxed)
        ));
        env.corr = Some(corr.clone());
        env.reply = Some(self.inner.router.reply_stream(bus, &self.inner.inst));
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.lock().insert(corr.clone(), tx);
        // Removes the waiter however this call ends: reply, timeout, error or cancellation.
        let _waiter = WaiterGuard {
            waiting: &self.inner.waiting,
            corr,
        };
        let after = timeout.unwrap_or(self.inner.cfg.request_timeout());
        let (kind, topic) = (env.kind.to_string(), env.topic.to_string());
        self.publish_envelope(env).await?;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(RequestError::Timeout { kind, topic, after }),
        }
    }

    /// Answers a request: publishes `payload` to the request's reply stream, with its
    /// correlation id.
    ///
    /// # Errors
    /// [`BusError::NotARequest`] when `request` has no reply stream or correlation id;
    /// [`BusError::BadReplyStream`] when the stream it names is not a requester's reply stream
    /// (a forged request must not make the replier write to a market-data or order stream).
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        request: &Envelope,
        payload: &T,
    ) -> Result<(), BusError> {
        let (Some(reply), Some(corr)) = (&request.reply, &request.corr) else {
            return Err(BusError::NotARequest { id: request.id() });
        };
        if !self.inner.router.is_reply_stream(reply) {
            return Err(BusError::BadReplyStream {
                id: request.id(),
                stream: reply.to_string(),
            });
        }
        let mut env = self.stamp(
            request.kind.clone(),
            request.topic.clone(),
            request.prio,
            self.inner.enc,
            self.inner.enc.encode(payload)?,
        )?;
        env.corr = Some(corr.clone());
        let bus = self.inner.router.bus_of(&request.kind);
        let route = Route {
            bus,
            lane: crate::route::Lane::Normal,
            stream: reply.clone(),
        };
        self.send_run(&route, vec![env], Confirm::Queued).await
    }

    async fn ensure_reply_reader(&self, bus: BusId) -> Result<(), BusError> {
        self.inner.reply_readers[bus.index()]
            .get_or_try_init(|| async {
                let stream = self.inner.router.reply_stream(bus, &self.inner.inst);
                let mut opts = SubscribeOptions::new(&self.inner.inst, &[])
                    .expect("no patterns")
                    .mode(Mode::Reliable)
                    .start(StartFrom::Oldest);
                opts.consumer = Some(self.inner.inst.clone());
                let (stop_tx, stop_rx) = watch::channel(false);
                let stats = Arc::new(SubscriptionStats::default());
                let dedup = Arc::new(Mutex::new(SourceDedup::new(
                    self.inner.cfg.delivery.dedup_window,
                )));
                let mut buses = vec![bus];
                if self.inner.failover.settings.enabled {
                    // Replies to requests sent during an outage arrive on the other bus.
                    buses.push(bus.other());
                }
                let mut tasks = Vec::new();
                let turn = Arc::new(tokio::sync::Mutex::new(()));
                for b in buses {
                    let spec = self.spec(&opts, vec![stream.clone()], b);
                    let sub = self.inner.transports[b.index()]
                        .subscribe(spec)
                        .await
                        .map_err(|source| BusError::Subscribe { bus: b, source })?;
                    let reader = Reader {
                        bus: b,
                        group: Arc::from("replies"),
                        counters: self.inner.counters.clone(),
                        handler: Arc::new(ReplyHandler(self.inner.waiting.clone())),
                        filter: None,
                        dedup: dedup.clone(),
                        turn: turn.clone(),
                        stats: stats.clone(),
                        mode: Mode::Reliable,
                        batch_max: 64,
                    };
                    tasks.push(tokio::spawn(reader.run(sub, stop_rx.clone())));
                }
                Ok::<_, BusError>(Subscription {
                    stop: stop_tx,
                    tasks,
                    stats,
                    claims: None,
                })
            })
            .await?;
        Ok(())
    }

    /// This client's counters for one bus, with the transport's own counts.
    pub fn counters(&self, bus: BusId) -> BusCounters {
        let c = &self.inner.counters[bus.index()];
        let t = self.inner.transports[bus.index()].stats();
        BusCounters {
            published: c.published.0.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            acknowledged: c.acknowledged.load(Ordering::Relaxed),
            redelivered: t.redelivered,
            dead_lettered: t.dead_lettered,
            dropped: t.dropped,
            refused: t.refused,
            skipped: c.skipped.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Whether each bus answers.
    pub async fn health(&self) -> [Health; 2] {
        [
            self.inner.transports[0].health().await,
            self.inner.transports[1].health().await,
        ]
    }

    /// Reads up to `max` entries of a bus's dead-letter stream.
    ///
    /// # Errors
    /// [`BusError::Receive`] naming the bus.
    pub async fn dead_letters(&self, bus: BusId, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.inner.transports[bus.index()]
            .dead_letters(&self.inner.router.dead_stream(bus), max)
            .await
            .map_err(|source| BusError::Receive { bus, source })
    }
}

/// Marks `bus` down and re-sends its window of recent messages on the other bus.
async fn fail_over(fo: &Failover, transports: &[Arc<dyn Transport>; 2], bus: BusId) {
    let _switching = fo.switch.write().await;
    let Some(items) = fo.mark_down(bus) else {
        return;
    };
    let other = bus.other();
    tracing::warn!(bus = %bus, resent = items.len(), "bus down: its traffic moves to the {other} bus");
    // Re-send in order, one batch per run of the same stream.
    let mut run: Vec<Envelope> = Vec::new();
    let mut key: Option<StreamKey> = None;
    for (stream, env) in items {
        fo.diverted(bus, &stream);
        if key.as_ref().is_some_and(|k| *k != stream) {
            let k = key.take().expect("checked");
            if let Err(e) = transports[other.index()]
                .publish(&k, std::mem::take(&mut run), Confirm::Queued)
                .await
            {
                tracing::error!(bus = %other, error = %e, "re-sending the window failed");
            }
        }
        key = Some(stream);
        run.push(env);
    }
    if let Some(k) = key {
        if let Err(e) = transports[other.index()]
            .publish(&k, run, Confirm::Queued)
            .await
        {
            tracing::error!(bus = %other, error = %e, "re-sending the window failed");
        }
    }
}

/// Moves the traffic of `bus` back from the other bus. Diverted publishes are held while the
/// other bus's writer is flushed and its diverted streams are checked drained once more, so
/// nothing published there is still unread when new messages start arriving on `bus` (a
/// consumer would otherwise see them out of order). Holds publishers for at most
/// `FAIL_BACK_HOLD`: a group that never reads cannot stop traffic for long.
async fn fail_back(f: &Failover, transports: &[Arc<dyn Transport>; 2], bus: BusId) {
    const FAIL_BACK_HOLD: Duration = Duration::from_millis(100);
    let _switching = f.switch.write().await;
    let held = std::time::Instant::now();
    let other = &transports[bus.other().index()];
    let mut clean = false;
    while held.elapsed() < FAIL_BACK_HOLD {
        let flushed = matches!(
            tokio::time::timeout(f.settings.heartbeat_timeout, other.flush()).await,
            Ok(Ok(()))
        );
        if flushed && drained(f, transports, bus, held).await {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !clean {
        tracing::warn!(bus = %bus, "moving traffic back before the {} bus drained: a consumer may see a message of one source after a later one", bus.other());
    }
    if let Some(outage) = f.mark_up(bus) {
        tracing::warn!(bus = %bus, outage_ms = outage.as_millis() as u64, "bus back: its traffic moves back");
    }
}

/// How long a fail-back waits for the groups to handle what went to the other bus. A stalled
/// group (a slow consumer holding its batch) would otherwise keep the traffic diverted for good;
/// moving back before it drained can put later messages ahead of earlier ones for it.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Whether consumers have read everything of `bus` that went to the other bus (so moving its
/// traffic back cannot overtake it). Gives up waiting after [`DRAIN_WAIT`].
async fn drained(
    f: &Failover,
    transports: &[Arc<dyn Transport>; 2],
    bus: BusId,
    since: std::time::Instant,
) -> bool {
    if since.elapsed() > DRAIN_WAIT {
        return true;
    }
    let other = &transports[bus.other().index()];
    for stream in f.diverted_streams(bus) {
        match tokio::time::timeout(f.settings.heartbeat_timeout, other.unread(&stream)).await {
            Ok(Ok(0)) => {}
            _ => return false,
        }
    }
    true
}

/// The heartbeat: checks each bus, fails over when one stops answering and fails back once it
/// answers again. Ends when the last client using these transports is dropped.
async fn watch(fo: std::sync::Weak<Failover>, transports: [Arc<dyn Transport>; 2]) {
    // A bus that answers again takes its traffic back only after answering for a while: its
    // consumers reconnect, and those of the other bus drain what was published there meanwhile.
    let mut healthy_since: [Option<std::time::Instant>; 2] = [None, None];
    loop {
        let Some(f) = fo.upgrade() else { return };
        let period = f.settings.heartbeat;
        let settle = f.settings.heartbeat_timeout * 2;
        for bus in BusId::ALL {
            let t = &transports[bus.index()];
            let sent = std::time::Instant::now();
            let healthy = match tokio::time::timeout(f.settings.heartbeat_timeout, t.health()).await
            {
                Ok(Health::Up) => true,
                Ok(Health::Down { .. }) => false,
                // No answer in time. A hung broker answers nothing; a busy one (a flood, a
                // starved machine) still answers writes and reads: not a reason to switch.
                // Only answers in the second half of the wait count: replies a broker wrote
                // just before it hung are read right after the heartbeat was sent.
                Err(_) => t.answered_since(sent + f.settings.heartbeat_timeout / 2) && f.is_up(bus),
            };
            if healthy {
                let since = *healthy_since[bus.index()].get_or_insert_with(std::time::Instant::now);
                if !f.is_up(bus)
                    && since.elapsed() >= settle
                    && drained(&f, &transports, bus, since).await
                {
                    fail_back(&f, &transports, bus).await;
                }
            } else {
                healthy_since[bus.index()] = None;
                if f.is_up(bus) && f.is_up(bus.other()) {
                    fail_over(&f, &transports, bus).await;
                }
            }
        }
        drop(f);
        // Between heartbeats, notice at once a failure the transport saw itself (a write that
        // lost its connection), without waiting for the next ping.
        let until = std::time::Instant::now() + period;
        while std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1).min(period)).await;
            let Some(f) = fo.upgrade() else { return };
            for bus in BusId::ALL {
                if transports[bus.index()].reported_down() && f.is_up(bus) && f.is_up(bus.other()) {
                    healthy_since[bus.index()] = None;
                    fail_over(&f, &transports, bus).await;
                }
            }
        }
    }
}

fn kinds_of_patterns(patterns: &[Pattern], cfg: &Config) -> Result<Vec<EventKind>, BusError> {
    let mut kinds: Vec<EventKind> = Vec::new();
    for p in patterns {
        match p.literal_first_segment() {
            Some(name) => {
                let k = EventKind::parse(name).map_err(|e| {
                    BusError::Config(format!(
                        "pattern {p}: its first segment must name a kind: {e}"
                    ))
                })?;
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            None => {
                for k in EventKind::KNOWN
                    .iter()
                    .cloned()
                    .chain(cfg.routes.keys().filter_map(|k| EventKind::parse(k).ok()))
                {
                    if !kinds.contains(&k) {
                        kinds.push(k);
                    }
                }
            }
        }
    }
    if kinds.is_empty() {
        return Err(BusError::Config(
            "a subscription needs at least one pattern or kind".into(),
        ));
    }
    Ok(kinds)
}

/// One reader of a subscription: its bus, its streams, the turn it shares with the readers of
/// the same lane, and whether it reads the priority lane.
type ReaderPlan = (BusId, Vec<StreamKey>, Arc<tokio::sync::Mutex<()>>, bool);

/// The thread of the priority lane: one per process, started with the first priority-lane
/// subscription (a one-worker runtime, so it has its own timers and I/O driver). Critical
/// messages are read and handled there, never queued behind bulk traffic on a busy runtime.
/// With `realtime` (the first subscription's `delivery.priority_realtime` decides) the thread
/// asks for real-time scheduling: see [`make_realtime`].
fn priority_runtime(realtime: bool) -> Result<&'static tokio::runtime::Runtime, BusError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("dualbus-priority")
                .enable_all()
                .build()
                .inspect(|rt| {
                    // Run on the one worker (not on_thread_start: that would also apply to
                    // the runtime's blocking threads).
                    if realtime {
                        rt.spawn(async { make_realtime() });
                    }
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BusError::Config(format!("the priority-lane thread could not start: {e}")))
}

/// Puts the calling thread under `SCHED_FIFO` at the lowest real-time priority (1): when a
/// critical message wakes it, it runs at once rather than after the time slice of whichever
/// engine thread holds the core. Measured on a 2-core machine in `dualbus run --flash-crash`:
/// the priority lane's p50 about a third and its p99 about half of what they were (see
/// docs/latency.md). Its handlers are short; a real-time thread that computed for long would
/// starve the other threads of its core (the kernel's real-time throttling leaves them 5%).
/// Without the right (`CAP_SYS_NICE` or `RLIMIT_RTPRIO`) the thread stays as it was.
#[allow(unsafe_code)]
fn make_realtime() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: plain system call on the calling thread (pid 0) with a valid parameter.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc == 0 {
            tracing::debug!("priority-lane thread: real-time scheduling (SCHED_FIFO 1)");
        } else {
            tracing::info!(
                error = %std::io::Error::last_os_error(),
                "priority-lane thread: no real-time scheduling (needs CAP_SYS_NICE or \
                 RLIMIT_RTPRIO); it runs at normal priority"
            );
        }
    }
}

struct Filter {
    kinds: Vec<EventKind>,
    patterns: Vec<Pattern>,
}

impl Filter {
    fn accepts(&self, env: &Envelope) -> bool {
        self.kinds.contains(&env.kind)
            && (self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(&env.topic)))
    }
}

struct ReplyHandler(Waiters);

impl Handler for ReplyHandler {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        if let Some(corr) = &msg.corr {
            match self.0.lock().remove(corr) {
                Some(tx) => {
                    let _ = tx.send(msg.clone());
                }
                None => tracing::debug!(corr = %corr, "reply arrived after its request timed out"),
            }
        }
        std::future::ready(Ok(()))
    }
}

/// Handler failures as warnings naming the group, the kind, the message id and the reason: at
/// most one a second per reader, with the number of failures left unlogged since the last.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, bus: BusId, group: &str, env: &Envelope, reason: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            bus = %bus,
            group = %group,
            kind = %env.kind,
            id = %env.id(),
            unlogged_since_last = self.unlogged,
            "handler failed (the message is redelivered, then dead-lettered after max_deliveries): {reason}"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}

struct Reader<H> {
    bus: BusId,
    /// The consumer group (the engine, for an engine's subscription), for logs.
    group: Arc<str>,
    /// The counters of the client it reads for (not the client itself: a reply reader that
    /// held its client would keep it alive for good).
    counters: Arc<[Counters; 2]>,
    handler: Arc<H>,
    filter: Option<Arc<Filter>>,
    dedup: Arc<Mutex<SourceDedup>>,
    /// Taken while a batch is checked and handled; shared by the readers of one lane.
    turn: Arc<tokio::sync::Mutex<()>>,
    stats: Arc<SubscriptionStats>,
    mode: Mode,
    batch_max: usize,
}

impl<H: Handler> Reader<H> {
    async fn run(self, mut sub: Box<dyn Subscriber>, mut stop: watch::Receiver<bool>) {
        let counters = &self.counters[self.bus.index()];
        let mut acks = Vec::with_capacity(self.batch_max);
        let mut verdicts = Vec::with_capacity(self.batch_max);
        let mut backoff = Duration::from_millis(10);
        let mut failure_log = FailureLog::default();
        loop {
            let batch = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                b = sub.next_batch(self.batch_max) => b,
            };
            let batch = match batch {
                Ok(b) => {
                    backoff = Duration::from_millis(10);
                    b
                }
                Err(ReceiveError::Closed) => break,
                Err(e) => {
                    tracing::warn!(bus = %self.bus, error = %e, "read failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    // Short: a broker back from a crash must be read again at once.
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                    continue;
                }
            };
            if batch.skipped > 0 {
                tracing::warn!(
                    bus = %self.bus,
                    group = %self.group,
                    skipped = batch.skipped,
                    "a fast-mode consumer fell further behind than its lag limit and skipped to \
                     the newest message: the skipped messages are not delivered to this group \
                     (dualbus_skipped_total; a reliable group gets every message)"
                );
                counters.skipped.fetch_add(batch.skipped, Ordering::Relaxed);
                self.stats
                    .skipped
                    .fetch_add(batch.skipped, Ordering::Relaxed);
            }
            if batch.dead_lettered > 0 {
                self.stats
                    .dead_lettered
                    .fetch_add(batch.dead_lettered, Ordering::Relaxed);
            }
            let received = Instant::now();
            acks.clear();
            verdicts.clear();
            let turn = self.turn.lock().await;
            {
                let mut dedup = self.dedup.lock();
                // Consecutive messages often share a topic allocation: match it once.
                let mut last: Option<(Topic, EventKind, bool)> = None;
                for d in &batch.deliveries {
                    let e = &d.envelope;
                    let accepted = match (&self.filter, &last) {
                        (None, _) => true,
                        (Some(_), Some((t, k, ok)))
                            if Topic::ptr_eq(t, &e.topic) && *k == e.kind =>
                        {
                            *ok
                        }
                        (Some(f), _) => {
                            let ok = f.accepts(e);
                            last = Some((e.topic.clone(), e.kind.clone(), ok));
                            ok
                        }
                    };
                    verdicts.push(if !accepted {
                        None
                    } else {
                        Some(dedup.check(&e.src, &e.inst, e.seq))
                    });
                }
            }
            let mut handled = 0u64;
            let mut dups = 0u64;
            let mut failures: Vec<usize> = Vec::new();
            for (i, d) in batch.deliveries.iter().enumerate() {
                match verdicts[i] {
                    None => acks.push((d.stream, d.id)),
                    Some(Verdict::Duplicate) => {
                        dups += 1;
                        acks.push((d.stream, d.id));
                    }
                    Some(_) => match self.handler.handle_received(&d.envelope, received).await {
                        Ok(()) => {
                            handled += 1;
                            acks.push((d.stream, d.id));
                        }
                        Err(e) => {
                            failures.push(i);
                            if self.mode == Mode::Reliable {
                                sub.nack(d.stream, d.id, &e.0).await;
                            }
                            failure_log.failed(self.bus, &self.group, &d.envelope, &e.0);
                        }
                    },
                }
            }
            if !failures.is_empty() && self.mode == Mode::Reliable {
                // Failed messages will come back: they must not count as duplicates then.
                let mut dedup = self.dedup.lock();
                for &i in &failures {
                    let e = &batch.deliveries[i].envelope;
                    dedup.forget(&e.src, &e.inst, e.seq);
                }
            }
            drop(turn);
            let failed = failures.len() as u64;
            counters
                .delivered
                .fetch_add(handled + failed, Ordering::Relaxed);
            self.stats.handled.fetch_add(handled, Ordering::Relaxed);
            if dups > 0 {
                counters.duplicates.fetch_add(dups, Ordering::Relaxed);
                self.stats.duplicates.fetch_add(dups, Ordering::Relaxed);
            }
            if failed > 0 {
                counters.failed.fetch_add(failed, Ordering::Relaxed);
                self.stats.failed.fetch_add(failed, Ordering::Relaxed);
            }
            // Release the messages before acknowledging: the transport may then free them on
            // the publisher's side, where they were allocated.
            drop(batch);
            if self.mode == Mode::Reliable && !acks.is_empty() {
                match sub.ack(&acks).await {
                    Ok(()) => {
                        counters
                            .acknowledged
                            .fetch_add(acks.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(bus = %self.bus, error = %e, "acknowledgement failed; messages will be redelivered")
                    }
                }
            }
        }
        if let Err(e) = sub.close().await {
            tracing::warn!(bus = %self.bus, error = %e, "final acknowledgements failed; messages will be redelivered");
        }
    }
}
