//! The Redis Streams transport: one Redis server per bus, the same semantics as the embedded
//! transport (the conformance suite in `dualbus-testkit` runs unchanged against both).
//!
//! # Layout
//!
//! * [`RedisTransport`], [`RedisOptions`], [`ConnectError`]: connecting to one bus's server.
//! * `writer` (private): the task that owns the publishing connection and sends whatever is
//!   queued as one pipeline per round trip (no timer, no waiting for a batch to fill).
//! * `admission` (private): queue bounds of consumer groups, enforced by publishers (block,
//!   drop oldest, reject) from the groups' pending and lag counts.
//! * `subscriber` (private): `XREADGROUP` over all of a subscription's streams per call, on a
//!   connection of its own; `XPENDING`/`XCLAIM` sweeps with a backoff; dead letters; `NOGROUP`
//!   recovery.
//! * `reply` (private): parsing of Redis replies (RESP2 arrays and RESP3 maps).
//! * `resp` (private): the read path's own connection, whose `XREADGROUP` replies a small
//!   RESP2 parser reads straight into entries (its fuzzing entry is public).
//! * `tls` (private): `rediss://` connections ([`TlsConfig`], [`client`]).
//! * `trim` (private): counting the entries a stream trim removed before a reliable group read
//!   them ([`trimmed_key`]).
//! * [`cluster`]: [`ClusterTransport`], below.
//!
//! # Keys
//!
//! The bus chooses stream keys (`{prefix}:{bus}:{kind}`); this transport adds one hash per
//! stream, `{stream}#groups` (in the stream's hash slot: see `admission::bounds_key`), where
//! each reliable group records its queue bound and policy so that publishers in other processes
//! can honour them, and one key per stream and group, `{stream}#alive:{group}`, which its
//! subscribers renew and which expires once they are all gone (a dead group's bound no longer
//! holds publishers), and one hash per stream, `{stream}#trimmed`, counting per group the
//! entries a trim removed before the group read them.
//!
//! [`ClusterTransport`] (`redis+cluster://`) runs one [`RedisTransport`] per master of a Redis
//! Cluster and sends each stream's commands to the master of its hash slot.

#![forbid(unsafe_code)]

mod admission;
pub mod cluster;
mod reply;
mod resp;
mod subscriber;
mod tls;
mod trim;
mod writer;

pub use admission::SLICE as ADMISSION_SLICE;
pub use trim::trimmed_key;

/// Drops consumer group `group` of `stream` and what dualbus keeps beside it: its bound in
/// `{stream}#groups` and its trimmed-unread count in `{stream}#trimmed`, so a group created
/// again under the name starts with none of the old one's state (its lease expires on its
/// own). All the keys are in the stream's hash slot (one command pipeline, on a cluster too).
/// Returns whether the group existed.
///
/// # Errors
/// The broker's error (a user without `XGROUP DESTROY` or `HDEL`, the connection).
pub async fn drop_group(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> redis::RedisResult<bool> {
    let (destroyed, _, _): (i64, i64, i64) = redis::pipe()
        .cmd("XGROUP")
        .arg("DESTROY")
        .arg(stream)
        .arg(group)
        .cmd("HDEL")
        .arg(admission::bounds_key(stream))
        .arg(group)
        .cmd("HDEL")
        .arg(trimmed_key(stream))
        .arg(group)
        .query_async(conn)
        .await?;
    Ok(destroyed > 0)
}

pub use cluster::{is_cluster_url, ClusterTransport};
pub use tls::{client, TlsConfig};

/// For the fuzz targets (`fuzz/`) and the property tests only: not a stable API.
#[doc(hidden)]
pub use resp::fuzzing;

use async_trait::async_trait;
use dualbus_core::transport::{GroupBacklog, StreamKey};
use dualbus_core::{
    Confirm, DeadLetter, Envelope, Health, Mode, PublishError, ReceiveError, SubscribeError,
    SubscribeSpec, Subscriber, Transport, TransportStats,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Options of one bus's Redis connection.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The bus name, for messages (`md`, `logic`).
    pub bus: String,
    /// Server address, `redis://host:port` or `rediss://host:port` (TLS).
    pub url: String,
    /// Certificates for a `rediss://` address (`None`: the system's roots, no client
    /// certificate).
    pub tls: Option<TlsConfig>,
    /// `XADD ... MAXLEN ~ maxlen`.
    pub maxlen: u64,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Longest accepted payload; larger entries are dead-lettered.
    pub max_payload: usize,
    /// Messages that may wait for the writer before publishers wait (or fail, while the server
    /// is down).
    pub outgoing_bound: usize,
    /// How long a group counts as alive after its last consumer stopped renewing its lease
    /// (renewed every quarter of this): a reliable group's queue bound holds publishers only
    /// while it is alive.
    pub group_lease: Duration,
    /// Where keys of other hash slots live, for a transport that serves one master of a Redis
    /// Cluster ([`ClusterTransport`] sets it on its masters' transports): the dead-letter
    /// stream is usually on another master than the stream its entries come from. `None`: one
    /// server holds every key.
    pub node_route: Option<NodeRoute>,
}

/// The connection of the master serving a key's hash slot (see [`RedisOptions::node_route`]).
#[derive(Clone)]
pub struct NodeRoute(Arc<RouteFn>);

/// What a [`NodeRoute`] asks: the connection of the master of a key.
type RouteFn = dyn Fn(&str) -> Option<ConnectionManager> + Send + Sync;

impl NodeRoute {
    /// A route that asks `f` for the connection of the master of a key.
    pub fn new(f: impl Fn(&str) -> Option<ConnectionManager> + Send + Sync + 'static) -> Self {
        NodeRoute(Arc::new(f))
    }

    /// The connection of the master serving `key`, if one is known.
    pub fn conn_for(&self, key: &str) -> Option<ConnectionManager> {
        (self.0)(key)
    }
}

impl std::fmt::Debug for NodeRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeRoute")
    }
}

impl RedisOptions {
    /// Options with the defaults for `bus` at `url`.
    pub fn new(bus: &str, url: &str) -> RedisOptions {
        RedisOptions {
            bus: bus.to_string(),
            url: url.to_string(),
            tls: None,
            maxlen: 1_000_000,
            connect_timeout: Duration::from_secs(2),
            max_payload: dualbus_core::envelope::DEFAULT_MAX_PAYLOAD,
            outgoing_bound: 100_000,
            group_lease: Duration::from_secs(10),
            node_route: None,
        }
    }
}

/// Why connecting to a bus failed; names the bus and the address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("the {bus} bus URL {url:?} is invalid: {reason}")]
    BadUrl {
        /// The bus.
        bus: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer within the connect timeout.
    #[error("cannot reach the {bus} bus at {url} within {after:?}: {reason}")]
    Unreachable {
        /// The bus.
        bus: String,
        /// The URL.
        url: String,
        /// The connect timeout.
        after: Duration,
        /// What failed.
        reason: String,
    },
    /// The server answered and refused this connection's credentials (none given to a server
    /// that requires them, a wrong password, an unknown user).
    #[error("the {bus} bus at {url} refused the credentials: {reason}")]
    Refused {
        /// The bus.
        bus: String,
        /// The URL (password redacted).
        url: String,
        /// The server's answer.
        reason: String,
    },
}

/// Whether `e` is the server refusing credentials: `NOAUTH` (none given), `WRONGPASS`, a
/// failed `AUTH`.
pub fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        || e.to_string().contains("NOAUTH")
}

#[derive(Default)]
pub(crate) struct Stats {
    pub dropped: AtomicU64,
    /// Entries the broker refused (`NOPERM`, `OOM`, ...).
    pub refused: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub redelivered: AtomicU64,
    pub skipped: AtomicU64,
    /// Entries trimmed before a reliable group of this transport's subscribers read them.
    pub trimmed_unread: AtomicU64,
}

pub(crate) struct Inner {
    pub opts: RedisOptions,
    pub client: redis::Client,
    /// The TLS configuration of the read connections (`rediss://` only).
    pub read_tls: Option<Arc<rustls::ClientConfig>>,
    /// For everything but publishing, reading and heartbeats: admission checks, dead letters.
    pub conn: ConnectionManager,
    /// Heartbeats only, so a PING never waits behind other commands.
    pub health_conn: ConnectionManager,
    pub writer: mpsc::Sender<writer::Job>,
    pub permits: Arc<Semaphore>,
    pub stats: Stats,
    pub down: AtomicBool,
    pub admission: admission::Admission,
    /// The group leases this transport's subscribers hold (see `admission`).
    pub leases: admission::Leases,
    /// When the broker last answered a write or a read ([`since_epoch`] nanoseconds): a
    /// heartbeat that times out while the broker still answers means busy, not hung.
    pub answered: std::sync::atomic::AtomicU64,
    /// The thread serving the connections above and the writer; it ends with this.
    _io: IoThread,
}

/// The thread of one bus's transport (`dualbus-{bus}-io`, a current-thread runtime): its
/// shared connections and its writer run there, so that one bus's traffic (encoding a
/// pipeline of thousands of market-data entries, parsing their replies) never holds the other
/// bus's publishes, admission checks or heartbeats on a shared runtime worker, and neither do
/// the caller's own tasks. Subscribers' connections are made by the subscribing task, on its
/// runtime (an engine's own thread in `dualbus run`). When this is dropped, the thread lets the
/// writer write what is still queued (see `writer::run`: for at most `drain`), then ends.
struct IoThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl IoThread {
    /// Starts the thread; the writer holds the returned sender and drops it when it is done.
    async fn start(
        bus: &str,
        drain: Duration,
    ) -> std::io::Result<(IoThread, tokio::sync::oneshot::Sender<()>)> {
        let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (writer_tx, writer_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("dualbus-{bus}-io"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        // Until the transport is dropped and its writer has written what was
                        // queued (it gives up by itself once writes failed for `drain`; the
                        // margin covers a write in flight, which times out after at most
                        // `drain` or 1 s); then the other tasks end with the runtime.
                        rt.block_on(async {
                            let _ = stop_rx.await;
                            let margin = drain.max(Duration::from_secs(1)) + Duration::from_secs(1);
                            let _ = tokio::time::timeout(drain + margin, writer_rx).await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .await
            .map_err(|_| std::io::Error::other("the thread ended at start"))??;
        Ok((
            IoThread {
                handle,
                _stop: stop_tx,
            },
            writer_tx,
        ))
    }
}

/// Nanoseconds since this process's first call (a monotonic clock as an integer).
pub(crate) fn since_epoch(at: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    at.saturating_duration_since(epoch).as_nanos() as u64
}

impl Inner {
    pub(crate) fn describe(&self, e: &redis::RedisError) -> String {
        format!("{} bus at {}: {e}", self.opts.bus, self.opts.url)
    }

    /// Notes that the broker answered just now.
    pub(crate) fn note_answer(&self) {
        self.answered
            .fetch_max(since_epoch(std::time::Instant::now()), Ordering::Relaxed);
    }

    pub(crate) fn mark(&self, up: bool) {
        let was_down = self.down.swap(!up, Ordering::SeqCst);
        if was_down && up {
            tracing::info!(bus = %self.opts.bus, url = %self.opts.url, "connection restored");
        } else if !was_down && !up {
            tracing::warn!(bus = %self.opts.bus, url = %self.opts.url, "connection lost");
        }
    }

    /// A connection of its own (for a subscriber), whose responses may take `response` long.
    pub(crate) async fn dedicated(&self, response: Duration) -> Result<ConnectionManager, String> {
        let cfg = manager_config(&self.opts).set_response_timeout(Some(response));
        self.client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(|e| self.describe(&e))
    }
}

fn manager_config(opts: &RedisOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(opts.connect_timeout))
        .set_response_timeout(Some(opts.connect_timeout.max(Duration::from_secs(1))))
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(3)
}

/// The Redis Streams transport of one bus. Cheap to clone.
#[derive(Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

impl RedisTransport {
    /// Connects to the bus's server.
    ///
    /// # Errors
    /// [`ConnectError`] naming the bus and address: a bad URL, or no answer within the connect
    /// timeout.
    pub async fn connect(mut opts: RedisOptions) -> Result<RedisTransport, ConnectError> {
        // Connect with the URL as given; show it everywhere else without its password.
        let shown = dualbus_core::redact_url(&opts.url);
        let secret_url = std::mem::replace(&mut opts.url, shown);
        let bad_url = |e: redis::RedisError| ConnectError::BadUrl {
            bus: opts.bus.clone(),
            url: opts.url.clone(),
            reason: e.to_string(),
        };
        // Small writes (one message, an acknowledgement) must leave at once: no Nagle delay.
        let info = redis::IntoConnectionInfo::into_connection_info(secret_url.as_str())
            .map_err(bad_url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = tls::client(info, opts.tls.as_ref()).map_err(bad_url)?;
        let read_tls = match client.get_connection_info().addr() {
            redis::ConnectionAddr::TcpTls { .. } => {
                Some(tls::rustls_config(opts.tls.as_ref()).map_err(bad_url)?)
            }
            _ => None,
        };
        let (bus, url, after) = (opts.bus.clone(), opts.url.clone(), opts.connect_timeout);
        let (bus2, url2) = (bus.clone(), url.clone());
        let refused = move |e: &redis::RedisError| ConnectError::Refused {
            bus: bus2.clone(),
            url: url2.clone(),
            reason: e.to_string(),
        };
        let unreachable = move |reason: String| ConnectError::Unreachable {
            bus: bus.clone(),
            url: url.clone(),
            after,
            reason,
        };
        // Each bus's connections and its writer live on a thread of their own (see
        // [`IoThread`]), made there, since a Redis connection is served by the runtime it was
        // made on.
        let (io, writer_done) = IoThread::start(&opts.bus, opts.connect_timeout)
            .await
            .map_err(|e| unreachable(format!("no thread for the bus's connections: {e}")))?;
        let manager = |check: bool| {
            let client = client.clone();
            let cfg = manager_config(&opts);
            io.handle.spawn(async move {
                let mut conn = client.get_connection_manager_with_config(cfg).await?;
                if check {
                    redis::cmd("PING").query_async::<()>(&mut conn).await?;
                }
                Ok::<_, redis::RedisError>(conn)
            })
        };
        let made =
            |r: Result<Result<ConnectionManager, redis::RedisError>, tokio::task::JoinError>| {
                match r {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) if is_auth_error(&e) => Err(refused(&e)),
                    Ok(Err(e)) => Err(unreachable(e.to_string())),
                    Err(e) => Err(unreachable(format!("the connecting task ended: {e}"))),
                }
            };
        // The connection manager retries on its own; bound the first connection by the
        // connect timeout so a wrong address fails promptly.
        let conn = match tokio::time::timeout(opts.connect_timeout, manager(true)).await {
            Ok(r) => made(r)?,
            Err(_) => return Err(unreachable("timed out".into())),
        };
        let health_conn = made(manager(false).await)?;
        let writer_conn = made(manager(false).await)?;
        let (tx, rx) = mpsc::channel(4096);
        let handle = io.handle.clone();
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(opts.outgoing_bound.max(1))),
            opts,
            client,
            read_tls,
            conn,
            health_conn,
            writer: tx,
            stats: Stats::default(),
            down: AtomicBool::new(false),
            admission: admission::Admission::default(),
            leases: admission::Leases::default(),
            answered: Default::default(),
            _io: io,
        });
        handle.spawn(writer::run(
            rx,
            writer_conn,
            Arc::downgrade(&inner),
            writer::Orphan {
                maxlen: inner.opts.maxlen,
                bus: inner.opts.bus.clone(),
                drain: inner.opts.connect_timeout,
                _done: writer_done,
            },
        ));
        handle.spawn(admission::renew_leases(Arc::downgrade(&inner)));
        Ok(RedisTransport { inner })
    }

    /// The options this transport was connected with (the URL without its password).
    pub fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }

    async fn publish_inner(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), PublishError> {
        let n = batch.len();
        if n > self.inner.opts.outgoing_bound {
            // Larger than the whole outgoing queue: send it in pieces.
            let mut batch = batch;
            while !batch.is_empty() {
                let rest = batch.split_off(batch.len().min(self.inner.opts.outgoing_bound));
                let piece = std::mem::replace(&mut batch, rest);
                Box::pin(self.publish_inner(stream, piece, confirm)).await?;
            }
            return Ok(());
        }
        let permits = match self.inner.permits.clone().try_acquire_many_owned(n as u32) {
            Ok(p) => p,
            Err(_) if self.inner.down.load(Ordering::SeqCst) => {
                return Err(PublishError::Unavailable(format!(
                    "{} bus at {} is down and its outgoing queue ({} messages) is full",
                    self.inner.opts.bus, self.inner.opts.url, self.inner.opts.outgoing_bound
                )))
            }
            Err(_) => self
                .inner
                .permits
                .clone()
                .acquire_many_owned(n as u32)
                .await
                .map_err(|_| PublishError::Closed)?,
        };
        let (done_tx, done_rx) = if confirm == Confirm::Broker {
            let (t, r) = tokio::sync::oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let job = writer::Job {
            stream: stream.clone(),
            batch,
            done: done_tx,
            _permits: Some(permits),
        };
        match self.inner.writer.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(PublishError::Closed),
            // While the server is down the writer is not draining: fail instead of waiting.
            Err(mpsc::error::TrySendError::Full(_)) if self.inner.down.load(Ordering::SeqCst) => {
                return Err(PublishError::Unavailable(format!(
                    "{} bus at {} is down and its outgoing queue is full",
                    self.inner.opts.bus, self.inner.opts.url
                )))
            }
            Err(mpsc::error::TrySendError::Full(job)) => self
                .inner
                .writer
                .send(job)
                .await
                .map_err(|_| PublishError::Closed)?,
        }
        match done_rx {
            Some(rx) => rx.await.map_err(|_| PublishError::Closed)?,
            None => Ok(()),
        }
    }

    /// Waits until everything queued before this call has been written (or failed).
    /// [`Transport::publish`], giving the batch back when it failed before any of it was
    /// queued (an admission check the broker refused), so that a caller may send it elsewhere
    /// (the cluster transport after a redirect) without keeping a copy.
    pub(crate) async fn publish_or_return(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), (PublishError, Option<Vec<Envelope>>)> {
        if batch.is_empty() {
            return Ok(());
        }
        // A stream this process's Redis user may not use is refused before anything is sent.
        let refused = |e: PublishError, batch: &[Envelope]| match e {
            PublishError::Broker(why) if writer::is_noperm(&why) => {
                let n = batch.len() as u64;
                self.inner.stats.refused.fetch_add(n, Ordering::Relaxed);
                let why = writer::refusal(&self.inner.opts.bus, stream, &batch[0], &why);
                tracing::error!(error = %why, "the broker refused entries; they are counted as refused");
                PublishError::Broker(why)
            }
            other => other,
        };
        let admitted = match admission::admit(self, stream, batch.len()).await {
            Ok(a) => a,
            // Nothing was queued: the caller gets its batch back.
            Err(e) => {
                let e = refused(e, &batch);
                return Err((e, Some(batch)));
            }
        };
        match admitted {
            admission::Admit::Queued => self
                .publish_inner(stream, batch, confirm)
                .await
                .map_err(|e| (e, None)),
            admission::Admit::Split(chunk) => {
                // Larger than a blocking group's bound: admit it piece by piece.
                let mut batch = batch;
                while !batch.is_empty() {
                    let rest = batch.split_off(batch.len().min(chunk.max(1)));
                    let piece = std::mem::replace(&mut batch, rest);
                    if let Err(e) = admission::admit(self, stream, piece.len()).await {
                        return Err((refused(e, &piece), None));
                    }
                    self.publish_inner(stream, piece, confirm)
                        .await
                        .map_err(|e| (e, None))?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn flush(&self) -> Result<(), PublishError> {
        writer::flush(&self.inner).await
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), PublishError> {
        self.publish_or_return(stream, batch, confirm)
            .await
            .map_err(|(e, _)| e)
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Subscriber>, SubscribeError> {
        if spec.streams.is_empty() {
            return Err(SubscribeError::Invalid("no streams to read".into()));
        }
        if spec.group.is_empty() || spec.consumer.is_empty() {
            return Err(SubscribeError::Invalid(
                "group and consumer names must not be empty".into(),
            ));
        }
        if spec.mode == Mode::Reliable && (spec.queue_bound == 0 || spec.max_deliveries == 0) {
            return Err(SubscribeError::Invalid(format!(
                "queue_bound ({}) and max_deliveries ({}) must be at least 1",
                spec.queue_bound, spec.max_deliveries
            )));
        }
        let sub = subscriber::RedisSubscriber::start(self.inner.clone(), spec).await?;
        Ok(Box::new(sub))
    }

    async fn health(&self) -> Health {
        // The heartbeat connection, then the command connection: a broker back from a crash
        // counts as up only once both reconnected, so the first publish after a fail-back does
        // not meet a stale connection.
        let mut hb = self.inner.health_conn.clone();
        let mut cmdc = self.inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = async {
            cmd.query_async::<String>(&mut hb).await?;
            cmd.query_async::<String>(&mut cmdc).await
        };
        match tokio::time::timeout(self.inner.opts.connect_timeout, ping).await {
            Ok(Ok(_)) if self.inner.down.load(Ordering::SeqCst) => {
                // The broker answers; the writer must too before the bus counts as up (a
                // successful flush, which pings on the writer's connection, clears the flag).
                match tokio::time::timeout(self.inner.opts.connect_timeout, self.flush()).await {
                    Ok(Ok(())) => Health::Up,
                    _ => Health::Down {
                        reason: format!(
                            "{} bus at {}: the publishing connection has not recovered",
                            self.inner.opts.bus, self.inner.opts.url
                        ),
                    },
                }
            }
            Ok(Ok(_)) => Health::Up,
            Ok(Err(e)) => Health::Down {
                reason: self.inner.describe(&e),
            },
            Err(_) => Health::Down {
                reason: format!(
                    "{} bus at {}: no answer to PING within {:?}",
                    self.inner.opts.bus, self.inner.opts.url, self.inner.opts.connect_timeout
                ),
            },
        }
    }

    async fn dead_letters(
        &self,
        stream: &StreamKey,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ReceiveError> {
        let mut conn = self.inner.conn.clone();
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&**stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await
            .map_err(|e| ReceiveError::Unavailable(self.inner.describe(&e)))?;
        let entries = reply::entries(v).map_err(ReceiveError::Broker)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let get = |k: &str| {
                    e.fields
                        .iter()
                        .find(|(f, _)| f == k.as_bytes())
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let envelope = Envelope::from_wire_fields(
                    e.fields.iter().map(|(k, v)| (&k[..], &v[..])),
                    usize::MAX,
                )
                .ok();
                DeadLetter {
                    stream: get("dead_stream"),
                    group: get("dead_group"),
                    entry: reply::parse_id(get("dead_entry").as_bytes()).unwrap_or_default(),
                    deliveries: get("dead_deliveries").parse().unwrap_or(0),
                    reason: get("dead_reason"),
                    envelope,
                }
            })
            .collect())
    }

    async fn flush(&self) -> Result<(), PublishError> {
        writer::flush(&self.inner).await
    }

    fn answered_since(&self, at: std::time::Instant) -> bool {
        self.inner.answered.load(Ordering::Relaxed) > since_epoch(at)
    }

    async fn unread(&self, stream: &StreamKey) -> Result<u64, ReceiveError> {
        let mut conn = self.inner.conn.clone();
        let groups = reply::xinfo_groups(&mut conn, stream)
            .await
            .map_err(|e| ReceiveError::Unavailable(self.inner.describe(&e)))?;
        // A group whose lag Redis cannot tell counts as behind.
        Ok(groups
            .iter()
            .map(|g| g.lag.unwrap_or(1) + g.pending)
            .max()
            .unwrap_or(0))
    }

    async fn groups(&self, stream: &StreamKey) -> Result<Vec<GroupBacklog>, ReceiveError> {
        let mut conn = self.inner.conn.clone();
        let groups = reply::xinfo_groups(&mut conn, stream)
            .await
            .map_err(|e| ReceiveError::Unavailable(self.inner.describe(&e)))?;
        Ok(groups
            .into_iter()
            .map(|g| GroupBacklog {
                group: g.name,
                pending: g.pending,
                lag: g.lag,
            })
            .collect())
    }

    fn reported_down(&self) -> bool {
        self.inner.down.load(Ordering::SeqCst)
    }

    fn stats(&self) -> TransportStats {
        let s = &self.inner.stats;
        TransportStats {
            dropped: s.dropped.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
            redelivered: s.redelivered.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            trimmed_unread: s.trimmed_unread.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus that cannot be reached is named by its address without the password, and so is
    /// the transport's address afterwards.
    #[tokio::test]
    async fn connect_errors_do_not_show_the_password() {
        // A port nothing listens on: bound then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut opts = RedisOptions::new("md", &format!("redis://engine:s3cret@127.0.0.1:{port}"));
        opts.connect_timeout = Duration::from_millis(500);
        let err = match RedisTransport::connect(opts).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("redis://engine:***@127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}
