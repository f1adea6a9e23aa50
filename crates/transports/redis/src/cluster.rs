//! A bus on a Redis Cluster: `redis+cluster://host:port,host:port` (`rediss+cluster://` with
//! TLS).
//!
//! The cluster's masters each get a [`RedisTransport`] of their own (its writer, admission
//! checks and read connections), and every command goes to the master of its key's hash slot,
//! from the slot map the cluster reports (`CLUSTER SLOTS`). So the fast paths stay those of a
//! single server: a node's writer pipelines the entries of every stream it owns, and a
//! subscription reads with one `XREADGROUP` per hash slot (a cluster refuses one over keys of
//! several slots, `CROSSSLOT`). With `[md] partitions`, a partition's streams share the hash
//! tag `{pN}` and so one slot and one read.
//!
//! The redis-rs cluster client is not used on the hot paths: it refuses pipelines across slots
//! and has no raw read path; the slot map is small enough to keep here.
//!
//! # Failures
//!
//! A master that stops answering fails its publishes and reads like a single server that
//! stops: the bus fails over to the other bus and re-sends its recent window (which covers the
//! writes the dead master had not yet replicated). Meanwhile the cluster promotes a replica;
//! each health check reloads the slot map, so once every slot has a master that answers, the
//! bus is healthy again and moves back. Reads move with their slots: a subscription's reader of
//! a slot whose master failed subscribes again on the slot's new master. A `MOVED`, `ASK`,
//! `TRYAGAIN` or `CLUSTERDOWN` answer reloads the slot map and the command is tried once more.

use crate::{ConnectError, RedisOptions, RedisTransport};
use async_trait::async_trait;
use dualbus_core::partition::{slot_of, SLOTS};
use dualbus_core::transport::{GroupBacklog, StreamKey};
use dualbus_core::{
    AckError, Batch, Confirm, DeadLetter, EntryId, Envelope, Health, PublishError, ReceiveError,
    SubscribeError, SubscribeSpec, Subscriber, Transport, TransportStats,
};
use parking_lot::{Mutex, RwLock};
use redis::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The URL schemes of a cluster.
pub const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];

/// Whether `url` names a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    CLUSTER_SCHEMES.iter().any(|s| url.starts_with(s))
}

/// The nodes of a cluster URL, each as a single-server URL with the same credentials
/// (`redis+cluster://u:p@a:1,b:2` -> `redis://u:p@a:1`, `redis://u:p@b:2`).
///
/// # Errors
/// Why the URL is not a cluster URL with at least one `host:port`.
pub fn seed_urls(url: &str) -> Result<Vec<String>, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        ("redis://", r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        ("rediss://", r)
    } else {
        return Err("expected redis+cluster://host:port,host:port".into());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (creds, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), authority),
    };
    let mut out = Vec::new();
    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let ok = h
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("node {h:?} is not host:port"));
        }
        out.push(format!("{scheme}{creds}{h}{tail}"));
    }
    if out.is_empty() {
        return Err("no node given: expected redis+cluster://host:port,host:port".into());
    }
    Ok(out)
}

/// Whether a broker's answer means the slot map changed or is changing.
fn is_redirect(text: &str) -> bool {
    ["MOVED", "ASK ", "TRYAGAIN", "CLUSTERDOWN"]
        .iter()
        .any(|c| text.contains(c))
}

/// Least time between two reloads of the slot map.
const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// How often the health check reloads the slot map (in the background).
const RELOAD_EVERY: Duration = Duration::from_millis(500);

struct Node {
    addr: String,
    transport: Arc<RedisTransport>,
}

#[derive(Default)]
struct Topology {
    /// The master of each slot, an index into `nodes` (`u16::MAX`: none).
    slots: Vec<u16>,
    nodes: Vec<Node>,
}

struct Shared {
    opts: RedisOptions,
    /// Node URL prefix (`redis://user:pw@`) and the seed addresses.
    scheme: String,
    seeds: Vec<String>,
    topo: RwLock<Topology>,
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Counts of masters no longer in the slot map.
    retired: Mutex<TransportStats>,
    /// A background reload is running.
    reloading: AtomicBool,
}

/// The transport of a bus on a Redis Cluster (see the module documentation).
pub struct ClusterTransport {
    shared: Arc<Shared>,
}

impl ClusterTransport {
    /// Connects to the cluster named by `opts.url` (`redis+cluster://host:port,...`): reads
    /// the slot map from the first node that answers, then connects to every master.
    ///
    /// # Errors
    /// [`ConnectError::BadUrl`] for a URL that is not a cluster URL or a node that is not a
    /// cluster node (a single server is `redis://`); `Refused` for credentials;
    /// `Unreachable` when no node answers.
    pub async fn connect(opts: RedisOptions) -> Result<ClusterTransport, ConnectError> {
        let shared = Shared::new(opts)?;
        shared.load(true).await?;
        Ok(ClusterTransport { shared })
    }

    /// The masters, as `host:port`, and how many slots each serves.
    pub fn masters(&self) -> Vec<(String, usize)> {
        let topo = self.shared.topo.read();
        topo.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.addr.clone(),
                    topo.slots.iter().filter(|&&s| s as usize == i).count(),
                )
            })
            .collect()
    }
}

/// (`redis://creds@`, [`host:port`, ...]) of the seed URLs.
fn split_seeds(seeds: &[String]) -> (String, Vec<String>) {
    let mut scheme = String::new();
    let mut addrs = Vec::new();
    for s in seeds {
        let (sch, rest) = s.split_once("://").unwrap_or(("redis", s));
        let (creds, addr) = match rest.rsplit_once('@') {
            Some((c, a)) => (format!("{c}@"), a),
            None => (String::new(), rest),
        };
        let addr = addr.split(['/', '?', '#']).next().unwrap_or(addr);
        scheme = format!("{sch}://{creds}");
        addrs.push(addr.to_string());
    }
    (scheme, addrs)
}

/// The masters' slot ranges from a `CLUSTER SLOTS` reply: (first, last, host, port). An empty
/// host means the node that answered.
fn parse_slots(v: &Value, asked: &str) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = v else {
        return None;
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::new();
    for r in ranges {
        let Value::Array(items) = r else { return None };
        let int = |v: &Value| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        };
        let first = int(items.first()?)?;
        let last = int(items.get(1)?)?;
        let Value::Array(master) = items.get(2)? else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let host = if host.is_empty() || host == "?" {
            asked_host.to_string()
        } else {
            host
        };
        let port = int(master.get(1)?)?;
        if !(0..SLOTS as i64).contains(&first) || !(first..SLOTS as i64).contains(&last) {
            return None;
        }
        out.push((first as u16, last as u16, format!("{host}:{port}")));
    }
    Some(out)
}

/// The single-server URLs (with the cluster URL's credentials) of the masters of the cluster
/// at `opts.url`, from the first node that answers: for tools that look at every master
/// (`dualbus stats`, `redis status`).
///
/// # Errors
/// As [`ClusterTransport::connect`].
pub async fn master_urls(opts: RedisOptions) -> Result<Vec<String>, ConnectError> {
    let shared = Shared::new(opts)?;
    let mut first_error = None;
    for addr in &shared.seeds {
        match shared.ask_slots(addr).await {
            Ok(ranges) => {
                let mut addrs: Vec<String> = ranges.into_iter().map(|(_, _, a)| a).collect();
                addrs.sort();
                addrs.dedup();
                return Ok(addrs.iter().map(|a| shared.node_url(a)).collect());
            }
            Err(e @ (ConnectError::BadUrl { .. } | ConnectError::Refused { .. })) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("a cluster URL names at least one node"))
}

impl Shared {
    fn new(opts: RedisOptions) -> Result<Arc<Shared>, ConnectError> {
        let shown = dualbus_core::redact_url(&opts.url);
        let seeds = seed_urls(&opts.url).map_err(|reason| ConnectError::BadUrl {
            bus: opts.bus.clone(),
            url: shown.clone(),
            reason,
        })?;
        let (scheme, addrs) = split_seeds(&seeds);
        let mut node_opts = opts;
        node_opts.url = shown;
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Shared>| {
            // Each master's transport reaches the others through this: a dead letter goes to
            // the master of the dead-letter stream's slot.
            let me = me.clone();
            node_opts.node_route = Some(crate::NodeRoute::new(move |key| {
                Some(me.upgrade()?.node_for(key)?.inner.conn.clone())
            }));
            Shared {
                opts: node_opts,
                scheme,
                seeds: addrs,
                topo: RwLock::new(Topology::default()),
                refresh: tokio::sync::Mutex::new(None),
                retired: Mutex::new(TransportStats::default()),
                reloading: AtomicBool::new(false),
            }
        }))
    }

    fn node_url(&self, addr: &str) -> String {
        format!("{}{addr}", self.scheme)
    }

    /// The master serving `stream`'s slot.
    fn node_for(&self, stream: &str) -> Option<Arc<RedisTransport>> {
        let topo = self.topo.read();
        let i = *topo.slots.get(slot_of(stream.as_bytes()) as usize)?;
        topo.nodes.get(i as usize).map(|n| n.transport.clone())
    }

    fn no_master(&self, stream: &str) -> String {
        format!(
            "the {} bus at {}: no master serves the slot of {stream} (slot {})",
            self.opts.bus,
            self.opts.url,
            slot_of(stream.as_bytes())
        )
    }

    /// `CLUSTER SLOTS` from the node at `addr`.
    async fn ask_slots(&self, addr: &str) -> Result<Vec<(u16, u16, String)>, ConnectError> {
        let bus = self.opts.bus.clone();
        let url = self.node_url(addr);
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| {
            ConnectError::BadUrl {
                bus: bus.clone(),
                url: dualbus_core::redact_url(&url),
                reason: e.to_string(),
            }
        })?;
        let client =
            crate::tls::client(info, self.opts.tls.as_ref()).map_err(|e| ConnectError::BadUrl {
                bus: bus.clone(),
                url: dualbus_core::redact_url(&url),
                reason: e.to_string(),
            })?;
        let unreachable = |reason: String| ConnectError::Unreachable {
            bus: bus.clone(),
            url: dualbus_core::redact_url(&url),
            after: self.opts.connect_timeout,
            reason,
        };
        let ask = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn)
                .await
        };
        let v = match tokio::time::timeout(self.opts.connect_timeout, ask).await {
            Err(_) => return Err(unreachable("timed out".into())),
            Ok(Err(e)) if crate::is_auth_error(&e) => {
                return Err(ConnectError::Refused {
                    bus,
                    url: dualbus_core::redact_url(&url),
                    reason: e.to_string(),
                })
            }
            Ok(Err(e)) if e.to_string().contains("cluster support disabled") => {
                return Err(ConnectError::BadUrl {
                    bus,
                    url: self.opts.url.clone(),
                    reason: format!(
                        "the server at {addr} is not a Redis Cluster node (cluster support \
                         disabled): give a single server as redis://{addr}"
                    ),
                })
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(v)) => v,
        };
        parse_slots(&v, addr).ok_or_else(|| {
            unreachable(format!(
                "CLUSTER SLOTS answered something unexpected: {v:?}"
            ))
        })
    }

    /// Reloads the slot map (at most every [`REFRESH_EVERY`] unless `now`), connecting to new
    /// masters and dropping those no longer in it. Asks the known masters, then the seeds.
    async fn load(&self, now: bool) -> Result<(), ConnectError> {
        let mut last = self.refresh.lock().await;
        if !now && last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let mut candidates: Vec<String> = {
            let topo = self.topo.read();
            topo.nodes
                .iter()
                .filter(|n| !n.transport.reported_down())
                .map(|n| n.addr.clone())
                .collect()
        };
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut first_error = None;
        let mut ranges = None;
        for addr in &candidates {
            match self.ask_slots(addr).await {
                Ok(r) => {
                    ranges = Some(r);
                    break;
                }
                Err(e @ (ConnectError::BadUrl { .. } | ConnectError::Refused { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(ranges) = ranges else {
            return Err(first_error.unwrap_or_else(|| ConnectError::Unreachable {
                bus: self.opts.bus.clone(),
                url: self.opts.url.clone(),
                after: self.opts.connect_timeout,
                reason: "no node to ask".into(),
            }));
        };
        let mut addrs: Vec<String> = ranges.iter().map(|(_, _, a)| a.clone()).collect();
        addrs.sort();
        addrs.dedup();
        let known: HashMap<String, Arc<RedisTransport>> = self
            .topo
            .read()
            .nodes
            .iter()
            .map(|n| (n.addr.clone(), n.transport.clone()))
            .collect();
        let mut nodes = Vec::new();
        for addr in &addrs {
            let transport = match known.get(addr) {
                Some(t) => t.clone(),
                None => {
                    let mut o = self.opts.clone();
                    o.url = self.node_url(addr);
                    Arc::new(RedisTransport::connect(o).await?)
                }
            };
            nodes.push(Node {
                addr: addr.clone(),
                transport,
            });
        }
        let mut slots = vec![u16::MAX; SLOTS as usize];
        for (first, last, addr) in &ranges {
            let i = addrs.iter().position(|a| a == addr).expect("listed") as u16;
            for s in *first..=*last {
                slots[s as usize] = i;
            }
        }
        let mut topo = self.topo.write();
        for old in &topo.nodes {
            if !addrs.contains(&old.addr) {
                tracing::warn!(bus = %self.opts.bus, node = %old.addr, "no longer a master of the cluster");
                add_stats(&mut self.retired.lock(), old.transport.stats());
            }
        }
        *topo = Topology { slots, nodes };
        Ok(())
    }

    /// Reloads the slot map in a task of its own (unless one is running or the map is fresh):
    /// a master that failed is replaced in it once the cluster has promoted its replica.
    fn reload_in_background(self: &Arc<Self>) {
        let fresh = self
            .refresh
            .try_lock()
            .map(|last| last.is_some_and(|t| t.elapsed() < RELOAD_EVERY))
            .unwrap_or(true);
        if fresh || self.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.reload().await;
            me.reloading.store(false, Ordering::Release);
        });
    }

    /// Reloads the slot map, logging instead of failing.
    async fn reload(&self) {
        if let Err(e) = self.load(false).await {
            tracing::debug!(bus = %self.opts.bus, error = %e, "the cluster's slot map could not be reloaded");
        }
    }

    async fn subscribe_slot(
        &self,
        spec: SubscribeSpec,
    ) -> Result<Box<dyn Subscriber>, SubscribeError> {
        let first = spec.streams.first().cloned().unwrap_or_default();
        for attempt in 0..2 {
            let node = self
                .node_for(&first)
                .ok_or_else(|| SubscribeError::Unavailable(self.no_master(&first)))?;
            match node.subscribe(spec.clone()).await {
                Err(SubscribeError::Broker(e)) if attempt == 0 && is_redirect(&e) => {
                    let _ = self.load(true).await;
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }
}

#[async_trait]
impl Transport for ClusterTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        stream: &StreamKey,
        batch: Vec<Envelope>,
        confirm: Confirm,
    ) -> Result<(), PublishError> {
        let s = &self.shared;
        let node = s
            .node_for(stream)
            .ok_or_else(|| PublishError::Unavailable(s.no_master(stream)))?;
        // A redirect at the admission check gives the batch back; a confirmed publish may meet
        // one in the writer too, after the batch was taken: only it keeps a copy.
        let copy = (confirm == Confirm::Broker).then(|| batch.clone());
        match node.publish_or_return(stream, batch, confirm).await {
            Err((PublishError::Broker(e), back))
                if is_redirect(&e) && (back.is_some() || copy.is_some()) =>
            {
                let copy = back.or(copy).expect("checked");
                let _ = s.load(true).await;
                let node = s
                    .node_for(stream)
                    .ok_or_else(|| PublishError::Unavailable(s.no_master(stream)))?;
                node.publish(stream, copy, confirm).await
            }
            Err((e @ PublishError::Unavailable(_), _)) => {
                self.shared.reload_in_background();
                Err(e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Subscriber>, SubscribeError> {
        if spec.streams.is_empty() {
            return Err(SubscribeError::Invalid("no streams".into()));
        }
        // One reader per hash slot (one XREADGROUP may not cross slots), each on the slot's
        // master, all made before this returns so the groups exist.
        let mut by_slot: Vec<(u16, Vec<u16>)> = Vec::new();
        for (i, s) in spec.streams.iter().enumerate() {
            let slot = slot_of(s.as_bytes());
            match by_slot.iter_mut().find(|(sl, _)| *sl == slot) {
                Some((_, idx)) => idx.push(i as u16),
                None => by_slot.push((slot, vec![i as u16])),
            }
        }
        let (tx, rx) = mpsc::channel(by_slot.len());
        let mut children = Vec::new();
        let mut back = vec![(0usize, 0u16); spec.streams.len()];
        let max = Arc::new(AtomicUsize::new(256));
        for (c, (_, idx)) in by_slot.into_iter().enumerate() {
            let mut sub_spec = spec.clone();
            sub_spec.streams = idx
                .iter()
                .map(|&i| spec.streams[i as usize].clone())
                .collect();
            for (local, &global) in idx.iter().enumerate() {
                back[global as usize] = (c, local as u16);
            }
            let sub = self.shared.subscribe_slot(sub_spec.clone()).await?;
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            tokio::spawn(run_child(Child {
                shared: self.shared.clone(),
                spec: sub_spec,
                sub: Some(sub),
                index: c,
                tx: tx.clone(),
                cmds: cmd_rx,
                max: max.clone(),
            }));
            children.push((cmd_tx, idx));
        }
        Ok(Box::new(ClusterSubscriber {
            rx,
            children,
            back,
            max,
            leftover: VecDeque::new(),
            closed: false,
        }))
    }

    async fn health(&self) -> Health {
        // Cheap, as a heartbeat must be: a PING to each known master. The slot map is reloaded
        // beside it, never within the heartbeat's time (that would take new connections).
        let s = &self.shared;
        if s.topo.read().nodes.is_empty() {
            return Health::Down {
                reason: "no slot map yet".into(),
            };
        }
        s.reload_in_background();
        let (uncovered, nodes): (usize, Vec<(String, Arc<RedisTransport>)>) = {
            let topo = s.topo.read();
            (
                topo.slots.iter().filter(|&&i| i == u16::MAX).count(),
                topo.nodes
                    .iter()
                    .map(|n| (n.addr.clone(), n.transport.clone()))
                    .collect(),
            )
        };
        if uncovered > 0 {
            return Health::Down {
                reason: format!("{uncovered} hash slots have no master"),
            };
        }
        for (addr, t) in nodes {
            if let Health::Down { reason } = t.health().await {
                return Health::Down {
                    reason: format!("master {addr}: {reason}"),
                };
            }
        }
        Health::Up
    }

    async fn dead_letters(
        &self,
        stream: &StreamKey,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ReceiveError> {
        let node = self
            .shared
            .node_for(stream)
            .ok_or_else(|| ReceiveError::Unavailable(self.shared.no_master(stream)))?;
        node.dead_letters(stream, max).await
    }

    fn stats(&self) -> TransportStats {
        let mut out = *self.shared.retired.lock();
        for n in &self.shared.topo.read().nodes {
            add_stats(&mut out, n.transport.stats());
        }
        out
    }

    fn reported_down(&self) -> bool {
        self.shared
            .topo
            .read()
            .nodes
            .iter()
            .any(|n| n.transport.reported_down())
    }

    fn answered_since(&self, at: Instant) -> bool {
        self.shared
            .topo
            .read()
            .nodes
            .iter()
            .any(|n| n.transport.answered_since(at))
    }

    async fn flush(&self) -> Result<(), PublishError> {
        let nodes: Vec<Arc<RedisTransport>> = self
            .shared
            .topo
            .read()
            .nodes
            .iter()
            .map(|n| n.transport.clone())
            .collect();
        for n in nodes {
            n.flush().await?;
        }
        Ok(())
    }

    async fn unread(&self, stream: &StreamKey) -> Result<u64, ReceiveError> {
        let node = self
            .shared
            .node_for(stream)
            .ok_or_else(|| ReceiveError::Unavailable(self.shared.no_master(stream)))?;
        node.unread(stream).await
    }

    async fn groups(&self, stream: &StreamKey) -> Result<Vec<GroupBacklog>, ReceiveError> {
        let node = self
            .shared
            .node_for(stream)
            .ok_or_else(|| ReceiveError::Unavailable(self.shared.no_master(stream)))?;
        node.groups(stream).await
    }
}

fn add_stats(into: &mut TransportStats, s: TransportStats) {
    into.dropped += s.dropped;
    into.refused += s.refused;
    into.dead_lettered += s.dead_lettered;
    into.redelivered += s.redelivered;
    into.skipped += s.skipped;
    into.trimmed_unread += s.trimmed_unread;
}

enum Cmd {
    Ack(Vec<(u16, EntryId)>),
    Nack(u16, EntryId, String),
    Close(oneshot::Sender<Result<(), AckError>>),
}

/// The reader of one hash slot's streams: reads on the slot's master and hands each batch to
/// the [`ClusterSubscriber`]; between reads it applies the acknowledgements queued for it. When
/// its master fails it reloads the slot map and subscribes again where the slot now lives.
struct Child {
    shared: Arc<Shared>,
    spec: SubscribeSpec,
    sub: Option<Box<dyn Subscriber>>,
    index: usize,
    tx: mpsc::Sender<(usize, Result<Batch, ReceiveError>)>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    max: Arc<AtomicUsize>,
}

async fn run_child(mut c: Child) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(sub) = c.sub.as_mut() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if c.tx.is_closed() {
                return;
            }
            c.shared.reload().await;
            match c.shared.subscribe_slot(c.spec.clone()).await {
                Ok(s) => {
                    tracing::info!(bus = %c.shared.opts.bus, group = %c.spec.group, stream = %c.spec.streams[0], "reading again on the slot's master");
                    c.sub = Some(s);
                }
                Err(e) => tracing::debug!(error = %e, "subscribing again failed"),
            }
            continue;
        };
        loop {
            match c.cmds.try_recv() {
                Ok(Cmd::Ack(ids)) => {
                    if let Err(e) = sub.ack(&ids).await {
                        tracing::debug!(error = %e, "acknowledgement failed; redelivered later");
                    }
                }
                Ok(Cmd::Nack(stream, id, reason)) => sub.nack(stream, id, &reason).await,
                Ok(Cmd::Close(done)) => {
                    let _ = done.send(sub.close().await);
                    return;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let _ = sub.close().await;
                    return;
                }
            }
        }
        // One read at a time (at most about a second when nothing comes), so queued
        // acknowledgements and a close are applied between reads.
        let res = sub.read_once(c.max.load(Ordering::Relaxed)).await;
        match res {
            Ok(b) if b.deliveries.is_empty() && b.skipped == 0 && b.dead_lettered == 0 => {
                backoff = Duration::from_millis(50);
            }
            Ok(b) => {
                backoff = Duration::from_millis(50);
                if c.tx.send((c.index, Ok(b))).await.is_err() {
                    let _ = sub.close().await;
                    return;
                }
            }
            Err(ReceiveError::Closed) => {
                let _ = c.tx.send((c.index, Err(ReceiveError::Closed))).await;
                return;
            }
            Err(e) => {
                // Reported once per failure; this reader then moves to the slot's master.
                c.sub = None;
                if c.tx.send((c.index, Err(e))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A subscription over the slots of a cluster: the batches of its per-slot readers, with the
/// stream indexes of the whole subscription.
struct ClusterSubscriber {
    rx: mpsc::Receiver<(usize, Result<Batch, ReceiveError>)>,
    /// Per reader: its command queue and the subscription's index of each of its streams.
    children: Vec<(mpsc::UnboundedSender<Cmd>, Vec<u16>)>,
    /// Per stream of the subscription: (reader, its index there).
    back: Vec<(usize, u16)>,
    max: Arc<AtomicUsize>,
    leftover: VecDeque<dualbus_core::Delivery>,
    closed: bool,
}

#[async_trait]
impl Subscriber for ClusterSubscriber {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        let max = max.max(1);
        self.max.store(max, Ordering::Relaxed);
        if self.leftover.is_empty() {
            let Some((child, res)) = self.rx.recv().await else {
                return Err(ReceiveError::Closed);
            };
            let mut batch = res?;
            let map = &self.children[child].1;
            for d in &mut batch.deliveries {
                d.stream = map[d.stream as usize];
            }
            if batch.deliveries.len() <= max {
                return Ok(batch);
            }
            self.leftover.extend(batch.deliveries.drain(..));
            let mut out = Batch {
                deliveries: Vec::new(),
                skipped: batch.skipped,
                dead_lettered: batch.dead_lettered,
            };
            out.deliveries
                .extend(self.leftover.drain(..max.min(self.leftover.len())));
            return Ok(out);
        }
        let n = max.min(self.leftover.len());
        Ok(Batch {
            deliveries: self.leftover.drain(..n).collect(),
            skipped: 0,
            dead_lettered: 0,
        })
    }

    async fn ack(&mut self, ids: &[(u16, EntryId)]) -> Result<(), AckError> {
        let mut per: Vec<Vec<(u16, EntryId)>> = vec![Vec::new(); self.children.len()];
        for &(stream, id) in ids {
            if let Some(&(child, local)) = self.back.get(stream as usize) {
                per[child].push((local, id));
            }
        }
        for (child, ids) in per.into_iter().enumerate() {
            if !ids.is_empty() {
                let _ = self.children[child].0.send(Cmd::Ack(ids));
            }
        }
        Ok(())
    }

    async fn nack(&mut self, stream: u16, id: EntryId, reason: &str) {
        if let Some(&(child, local)) = self.back.get(stream as usize) {
            let _ = self.children[child]
                .0
                .send(Cmd::Nack(local, id, reason.to_string()));
        }
    }

    async fn close(&mut self) -> Result<(), AckError> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let mut waits = Vec::new();
        for (cmds, _) in &self.children {
            let (tx, rx) = oneshot::channel();
            if cmds.send(Cmd::Close(tx)).is_ok() {
                waits.push(rx);
            }
        }
        // A reader may be handing over a batch: take it (its entries stay pending for this
        // consumer) so that it sees the request to close.
        let mut result = Ok(());
        for mut w in waits {
            loop {
                tokio::select! {
                    r = &mut w => {
                        if let Ok(Err(e)) = r {
                            result = Err(e);
                        }
                        break;
                    }
                    _ = self.rx.recv() => {}
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(
            seed_urls("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            seed_urls("rediss+cluster://u:p@h1:1,h2:2").unwrap(),
            ["rediss://u:p@h1:1", "rediss://u:p@h2:2"]
        );
        assert!(seed_urls("redis+cluster://h1")
            .unwrap_err()
            .contains("\"h1\""));
        assert!(seed_urls("redis+cluster://").is_err());
        assert!(seed_urls("redis://h:1").is_err());
        assert!(is_cluster_url("redis+cluster://h:1"));
        assert!(!is_cluster_url("redis://h:1"));
        let (scheme, addrs) = split_seeds(&seed_urls("redis+cluster://u:p@h1:1,h2:2").unwrap());
        assert_eq!(scheme, "redis://u:p@");
        assert_eq!(addrs, ["h1:1", "h2:2"]);
    }

    #[test]
    fn slot_maps_parse() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("", 7001),
                node("10.0.0.3", 7004),
            ]),
        ]);
        assert_eq!(
            parse_slots(&v, "10.0.0.9:7001").unwrap(),
            vec![
                (0, 5460, "10.0.0.1:7000".to_string()),
                (5461, 16383, "10.0.0.9:7001".to_string())
            ]
        );
        let bad = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99999),
            node("h", 1),
        ])]);
        assert!(parse_slots(&bad, "h:1").is_none());
    }
}
