//! The `DualBus` client: the client, its builder and its accessors. What it does lives in one
//! file per concept (publish, subscribe, the reader, request/reply, ...: the crate's
//! `# Layout` lists them); failing over between the buses in [`crate::failover`].

mod counters;
mod error;
mod handler;
mod options;
mod priority;
mod publish;
mod reader;
mod request;
mod subscribe;
mod transports;

pub use counters::BusCounters;
pub use error::{BusError, RequestError};
pub use handler::{handler_fn, FnHandler, Handler, HandlerError};
pub use options::SubscribeOptions;
pub use subscribe::{Subscription, SubscriptionStats};
pub use transports::{
    connect_transport, connect_transports, default_transports, redis_options, tls_config,
};

use crate::config::{BusId, Config};
use crate::failover::Failover;
use crate::route::{Route, Router};
use counters::Counters;
use dualbus_core::{DeadLetter, Encoding, Envelope, EventKind, Health, Priority, Transport};
use request::Waiters;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use subscribe::Claims;
use tokio::sync::OnceCell;

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
            None => Failover::start(&self.cfg, &transports),
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
