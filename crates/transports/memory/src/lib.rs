//! The embedded transport: streams, consumer groups and acknowledgements in process memory,
//! with the semantics of Redis Streams (docs/architecture.md, "Delivery semantics"), so
//! engines behave the same whether they run in one process or across Redis servers.
//!
//! # Layout
//!
//! * [`MemoryTransport`]: the [`Transport`]; one per bus.
//! * `Stream` (private): an append-only log of shared batches (segments) with its groups.
//! * `Group` (private): a cursor, a pending-entries list (reliable mode) and its backpressure.
//! * `MemorySubscriber` (private): one consumer; spins briefly, then parks until woken.
//!
//! # How a message flows
//!
//! A published batch becomes one segment (`Arc<[Envelope]>`) appended under the stream's lock.
//! A consumer takes a run of entries from its group's cursor under the same lock, records them as
//! pending (reliable mode), and hands out references into the segment: fan-out to many groups
//! costs a reference count per delivery, never a copy. Segments are dropped once every group has
//! acknowledged (reliable) or passed (fast) them, or when the stream exceeds its `maxlen`.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use dualbus_core::redelivery_wait;
use dualbus_core::transport::{GroupBacklog, StreamKey};
use dualbus_core::{
    AckError, Backpressure, Batch, Confirm, DeadLetter, Delivery, EntryId, Envelope, EnvelopeRef,
    Health, Mode, PublishError, ReceiveError, StartFrom, SubscribeError, SubscribeSpec, Subscriber,
    Transport, TransportStats,
};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Options of the embedded transport.
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// Most entries a stream retains (like `XADD MAXLEN ~`); default 1,000,000.
    pub maxlen: usize,
    /// How long an idle consumer spins before it parks; trades CPU for wake-up latency.
    pub spin: Duration,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            maxlen: 1_000_000,
            spin: Duration::from_micros(20),
        }
    }
}

/// The embedded transport. Cheap to clone; clones share the streams.
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

struct Inner {
    opts: MemoryOptions,
    epoch: Instant,
    streams: RwLock<HashMap<StreamKey, Arc<Stream>>>,
    dead: Mutex<HashMap<StreamKey, VecDeque<DeadLetter>>>,
    stats: Stats,
    available: AtomicBool,
}

#[derive(Default)]
struct Stats {
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    redelivered: AtomicU64,
    skipped: AtomicU64,
}

struct Stream {
    key: StreamKey,
    state: Mutex<State>,
    /// Offset of the next entry; read without the lock by spinning consumers.
    head: AtomicU64,
    space: Notify,
    space_waiters: AtomicUsize,
}

struct Seg {
    base: u64,
    msgs: Arc<Vec<Envelope>>,
}

struct State {
    segs: VecDeque<Seg>,
    /// Offset of the oldest retained entry.
    first: u64,
    /// Offset the next entry gets.
    next: u64,
    groups: Vec<Group>,
}

impl State {
    /// The offset of the first retained message published at or after `ts` (nanoseconds), or
    /// the next offset when there is none.
    fn first_since(&self, ts: u64) -> u64 {
        for seg in &self.segs {
            for (k, env) in seg.msgs.iter().enumerate() {
                let at = seg.base + k as u64;
                if at >= self.first && env.ts >= ts {
                    return at;
                }
            }
        }
        self.next
    }
}

/// A delivered, unacknowledged entry (24 bytes; one per message in flight).
struct Pending {
    offset: u64,
    /// Nanoseconds since the transport's epoch.
    delivered_at: u64,
    consumer: u32,
    count: u16,
    acked: bool,
}

struct Group {
    name: Arc<str>,
    mode: Mode,
    bound: usize,
    policy: Backpressure,
    lag_limit: u64,
    idle_timeout: Duration,
    backoff_max: Duration,
    max_deliveries: u32,
    dead_letter: StreamKey,
    /// Next offset to deliver.
    cursor: u64,
    /// Delivered, not yet acknowledged (acknowledged holes are popped from the front or
    /// compacted); sorted by offset.
    pel: VecDeque<Pending>,
    /// Unacknowledged entries in `pel`.
    pel_live: usize,
    /// Last handler error per pending offset (rare, so kept aside).
    errors: HashMap<u64, Box<str>>,
    consumers: Vec<Arc<str>>,
    wakers: Vec<Arc<ReadWake>>,
    /// Fast mode: entries trimmed before this group read them, to report as skipped.
    unreported_skips: u64,
}

struct ReadWake {
    parked: AtomicBool,
    notify: Notify,
}

impl Group {
    /// Messages the group holds: unread plus unacknowledged.
    fn backlog(&self, next: u64) -> usize {
        (next - self.cursor) as usize + self.pel_live
    }

    /// The oldest offset this group still needs.
    fn floor(&self, next: u64) -> u64 {
        match self.mode {
            Mode::Reliable => self
                .pel
                .iter()
                .find(|p| !p.acked)
                .map_or(self.cursor, |p| p.offset.min(self.cursor)),
            Mode::Fast => self.cursor.max(next.saturating_sub(self.lag_limit)),
        }
    }

    fn pop_acked_front(&mut self) {
        while self.pel.front().is_some_and(|p| p.acked) {
            self.pel.pop_front();
        }
        // Holes left behind a message that is still pending are compacted in bulk.
        if self.pel.len() > 2 * self.pel_live + 1024 {
            self.pel.retain(|p| !p.acked);
        }
    }

    /// Drops the `k` oldest messages the group holds; returns how many it dropped.
    fn drop_oldest(&mut self, mut k: usize, next: u64) -> u64 {
        let mut dropped = 0;
        while k > 0 {
            match self.pel.front() {
                Some(p) if p.acked => {
                    self.pel.pop_front();
                }
                Some(_) => {
                    if let Some(p) = self.pel.pop_front() {
                        if !self.errors.is_empty() {
                            self.errors.remove(&p.offset);
                        }
                    }
                    self.pel_live -= 1;
                    dropped += 1;
                    k -= 1;
                }
                None => break,
            }
        }
        let unread = (next - self.cursor) as usize;
        let skip = k.min(unread);
        self.cursor += skip as u64;
        dropped + skip as u64
    }

    fn wake_readers(&self) {
        for w in &self.wakers {
            if w.parked.load(Ordering::SeqCst) {
                w.notify.notify_one();
            }
        }
    }

    fn consumer_id(&mut self, name: &Arc<str>) -> u32 {
        match self.consumers.iter().position(|c| c == name) {
            Some(i) => i as u32,
            None => {
                self.consumers.push(name.clone());
                (self.consumers.len() - 1) as u32
            }
        }
    }
}

impl State {
    /// Drops segments no group needs any more, and segments beyond `maxlen`. Returns the
    /// removed segments (freed by the caller outside the lock) and how many unread or pending
    /// entries groups lost to the `maxlen` trim.
    fn trim(&mut self, maxlen: usize) -> (Vec<Seg>, u64) {
        let next = self.next;
        let floor = self.groups.iter().map(|g| g.floor(next)).min();
        let mut removed = Vec::new();
        while let Some(front) = self.segs.front() {
            let end = front.base + front.msgs.len() as u64;
            let needed = floor.is_some_and(|f| end > f);
            let over = (next - front.base) as usize > maxlen;
            if !over && (needed || floor.is_none()) {
                break;
            }
            removed.extend(self.segs.pop_front());
        }
        self.first = self.segs.front().map_or(next, |s| s.base);
        let mut lost = 0;
        let first = self.first;
        for g in self.groups.iter_mut() {
            if g.cursor < first {
                match g.mode {
                    Mode::Reliable => lost += first - g.cursor,
                    Mode::Fast => g.unreported_skips += first - g.cursor,
                }
                g.cursor = first;
            }
        }
        (removed, lost)
    }
}

enum Append {
    Done,
    Wait,
}

impl Stream {
    fn new(key: StreamKey) -> Stream {
        Stream {
            key,
            state: Mutex::new(State {
                segs: VecDeque::new(),
                first: 0,
                next: 0,
                groups: Vec::new(),
            }),
            head: AtomicU64::new(0),
            space: Notify::new(),
            space_waiters: AtomicUsize::new(0),
        }
    }

    /// Appends as much of `batch` as the groups' bounds allow.
    fn try_append(&self, batch: &mut Vec<Envelope>, inner: &Inner) -> Result<Append, PublishError> {
        let freed;
        let outcome = {
            let mut st = self.state.lock();
            let next = st.next;
            let n = batch.len();
            let mut room = n;
            // A group nobody reads any more (every subscriber of it dropped) holds no
            // publisher: its bound applies again once a consumer subscribes.
            for g in st
                .groups
                .iter()
                .filter(|g| g.mode == Mode::Reliable && !g.wakers.is_empty())
            {
                let free = g.bound.saturating_sub(g.backlog(next));
                match g.policy {
                    Backpressure::Reject if free < n => {
                        return Err(PublishError::Full {
                            stream: self.key.to_string(),
                            group: g.name.to_string(),
                            bound: g.bound,
                        })
                    }
                    Backpressure::Block => room = room.min(free),
                    _ => {}
                }
            }
            if room == 0 {
                return Ok(Append::Wait);
            }
            let msgs = Arc::new(if room == n {
                std::mem::take(batch)
            } else {
                batch.drain(..room).collect::<Vec<_>>()
            });
            let base = st.next;
            st.segs.push_back(Seg { base, msgs });
            st.next += room as u64;
            let next = st.next;
            self.head.store(next, Ordering::SeqCst);
            let mut dropped = 0;
            for g in st.groups.iter_mut() {
                if g.mode == Mode::Reliable && g.policy == Backpressure::DropOldest {
                    let backlog = g.backlog(next);
                    if backlog > g.bound {
                        dropped += g.drop_oldest(backlog - g.bound, next);
                    }
                }
                g.wake_readers();
            }
            let (removed, lost) = st.trim(inner.opts.maxlen);
            freed = removed;
            dropped += lost;
            if dropped > 0 {
                inner.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            if batch.is_empty() {
                Append::Done
            } else {
                Append::Wait
            }
        };
        drop(freed);
        Ok(outcome)
    }

    fn notify_space(&self) {
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }
}

impl MemoryTransport {
    /// A transport with default options.
    pub fn new() -> MemoryTransport {
        MemoryTransport::with_options(MemoryOptions::default())
    }

    /// A transport with the given options.
    pub fn with_options(opts: MemoryOptions) -> MemoryTransport {
        MemoryTransport {
            inner: Arc::new(Inner {
                opts,
                epoch: Instant::now(),
                streams: RwLock::new(HashMap::new()),
                dead: Mutex::new(HashMap::new()),
                stats: Stats::default(),
                available: AtomicBool::new(true),
            }),
        }
    }

    /// Fault injection: while unavailable, publish and subscribe fail with `Unavailable` and
    /// health reports down (used to test failover without a broker).
    pub fn set_available(&self, up: bool) {
        self.inner.available.store(up, Ordering::SeqCst);
    }

    /// Entries a stream currently retains (0 for an unknown stream).
    pub fn stream_len(&self, key: &str) -> usize {
        self.inner.streams.read().get(key).map_or(0, |s| {
            let st = s.state.lock();
            (st.next - st.first) as usize
        })
    }

    fn stream(&self, key: &StreamKey) -> Arc<Stream> {
        if let Some(s) = self.inner.streams.read().get(key) {
            return s.clone();
        }
        self.inner
            .streams
            .write()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Stream::new(key.clone())))
            .clone()
    }

    fn check_available(&self) -> Result<(), String> {
        if self.inner.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("embedded transport marked unavailable".to_string())
        }
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        MemoryTransport::new()
    }
}

impl Inner {
    fn push_dead(&self, key: &StreamKey, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        self.stats
            .dead_lettered
            .fetch_add(letters.len() as u64, Ordering::Relaxed);
        let mut dead = self.dead.lock();
        let q = dead.entry(key.clone()).or_default();
        for l in letters {
            tracing::warn!(stream = %l.stream, group = %l.group, entry = %l.entry, reason = %l.reason, "dead-lettered");
            q.push_back(l);
            if q.len() > self.opts.maxlen {
                q.pop_front();
            }
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        stream: &StreamKey,
        mut batch: Vec<Envelope>,
        _confirm: Confirm,
    ) -> Result<(), PublishError> {
        self.check_available().map_err(PublishError::Unavailable)?;
        if batch.is_empty() {
            return Ok(());
        }
        let s = self.stream(stream);
        loop {
            if let Append::Done = s.try_append(&mut batch, &self.inner)? {
                return Ok(());
            }
            // A bounded group is full: register for a release, then try once more, so a release
            // between the first try and the registration is not missed.
            let notified = s.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            s.space_waiters.fetch_add(1, Ordering::SeqCst);
            let res = s.try_append(&mut batch, &self.inner);
            if let Ok(Append::Wait) = res {
                notified.await;
            }
            s.space_waiters.fetch_sub(1, Ordering::SeqCst);
            if let Append::Done = res? {
                return Ok(());
            }
            self.check_available().map_err(PublishError::Unavailable)?;
        }
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Subscriber>, SubscribeError> {
        self.check_available()
            .map_err(SubscribeError::Unavailable)?;
        if spec.streams.is_empty() {
            return Err(SubscribeError::Invalid("no streams to read".into()));
        }
        if spec.group.is_empty() || spec.consumer.is_empty() {
            return Err(SubscribeError::Invalid(
                "group and consumer names must not be empty".into(),
            ));
        }
        if spec.streams.len() > u16::MAX as usize {
            return Err(SubscribeError::Invalid(format!(
                "{} streams in one subscription, the limit is {}",
                spec.streams.len(),
                u16::MAX
            )));
        }
        if spec.mode == Mode::Reliable && (spec.queue_bound == 0 || spec.max_deliveries == 0) {
            return Err(SubscribeError::Invalid(format!(
                "queue_bound ({}) and max_deliveries ({}) must be at least 1",
                spec.queue_bound, spec.max_deliveries
            )));
        }
        let wake = Arc::new(ReadWake {
            parked: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let mut readers = Vec::with_capacity(spec.streams.len());
        for key in &spec.streams {
            let s = self.stream(key);
            let (group, consumer) = {
                let mut st = s.state.lock();
                let start = match spec.start {
                    StartFrom::Newest => st.next,
                    StartFrom::Oldest => st.first,
                    StartFrom::Time(ms) => st.first_since(ms.saturating_mul(1_000_000)),
                };
                let gi = match st.groups.iter().position(|g| g.name == spec.group) {
                    Some(i) => i,
                    None => {
                        st.groups.push(Group {
                            name: spec.group.clone(),
                            mode: spec.mode,
                            bound: spec.queue_bound,
                            policy: spec.backpressure,
                            lag_limit: spec.lag_limit.max(1),
                            idle_timeout: spec.idle_timeout,
                            backoff_max: spec.backoff_max,
                            max_deliveries: spec.max_deliveries,
                            dead_letter: spec.dead_letter.clone(),
                            cursor: start,
                            pel: VecDeque::new(),
                            pel_live: 0,
                            consumers: Vec::new(),
                            wakers: Vec::new(),
                            unreported_skips: 0,
                            errors: HashMap::new(),
                        });
                        st.groups.len() - 1
                    }
                };
                let g = &mut st.groups[gi];
                g.wakers.push(wake.clone());
                (gi, g.consumer_id(&spec.consumer))
            };
            readers.push(Reader {
                stream: s,
                group,
                consumer,
            });
        }
        Ok(Box::new(MemorySubscriber {
            inner: self.inner.clone(),
            sweep_every: (spec.idle_timeout / 4)
                .clamp(Duration::from_millis(1), Duration::from_secs(1)),
            readers,
            wake,
            replay_own: true,
            last_sweep: Instant::now(),
            rr: 0,
            spin: self.inner.opts.spin,
        }))
    }

    async fn health(&self) -> Health {
        match self.check_available() {
            Ok(()) => Health::Up,
            Err(reason) => Health::Down { reason },
        }
    }

    async fn dead_letters(
        &self,
        stream: &StreamKey,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ReceiveError> {
        Ok(self
            .inner
            .dead
            .lock()
            .get(stream)
            .map(|q| q.iter().take(max).cloned().collect())
            .unwrap_or_default())
    }

    async fn unread(&self, stream: &StreamKey) -> Result<u64, ReceiveError> {
        let Some(s) = self.inner.streams.read().get(stream).cloned() else {
            return Ok(0);
        };
        let st = s.state.lock();
        Ok(st
            .groups
            .iter()
            .map(|g| g.backlog(st.next) as u64)
            .max()
            .unwrap_or(0))
    }

    async fn groups(&self, stream: &StreamKey) -> Result<Vec<GroupBacklog>, ReceiveError> {
        let Some(s) = self.inner.streams.read().get(stream).cloned() else {
            return Ok(Vec::new());
        };
        let st = s.state.lock();
        Ok(st
            .groups
            .iter()
            .map(|g| GroupBacklog {
                group: g.name.to_string(),
                pending: g.pel_live as u64,
                lag: Some(st.next - g.cursor),
            })
            .collect())
    }

    fn stats(&self) -> TransportStats {
        let s = &self.inner.stats;
        TransportStats {
            dropped: s.dropped.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
            redelivered: s.redelivered.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            // In-process streams refuse nothing they are given.
            refused: 0,
            // In-process queues are not trimmed: they drop only by their policy (`dropped`).
            trimmed_unread: 0,
        }
    }
}

struct Reader {
    stream: Arc<Stream>,
    group: usize,
    consumer: u32,
}

/// Acknowledged entries a stream may retain before an acknowledgement (rather than the next
/// publish) trims them.
const ACK_TRIM_THRESHOLD: u64 = 65_536;

struct MemorySubscriber {
    inner: Arc<Inner>,
    readers: Vec<Reader>,
    wake: Arc<ReadWake>,
    /// The first read re-delivers this consumer's own pending entries (a restart).
    replay_own: bool,
    last_sweep: Instant,
    sweep_every: Duration,
    rr: usize,
    spin: Duration,
}

impl MemorySubscriber {
    /// Takes what is available without waiting.
    fn poll(&mut self, max: usize, batch: &mut Batch) {
        let instant = Instant::now();
        let sweep = instant.duration_since(self.last_sweep) >= self.sweep_every;
        if sweep {
            self.last_sweep = instant;
        }
        let now = instant.duration_since(self.inner.epoch).as_nanos() as u64;
        let replay_own = std::mem::take(&mut self.replay_own);
        let n = self.readers.len();
        for k in 0..n {
            let ri = (self.rr + k) % n;
            if batch.deliveries.len() >= max {
                break;
            }
            self.poll_stream(ri, max, now, sweep, replay_own, batch);
        }
        // The next poll starts at the next stream only after one that delivered: a timed
        // wake-up that found nothing (every `sweep_every` of wall clock) must not change the
        // order in which streams are read, or a lockstep backtest would handle the same input
        // in an order that depends on how long it ran.
        if !batch.deliveries.is_empty() {
            self.rr = (self.rr + 1) % n;
        }
    }

    fn poll_stream(
        &self,
        ri: usize,
        max: usize,
        now: u64,
        sweep: bool,
        replay_own: bool,
        batch: &mut Batch,
    ) {
        let r = &self.readers[ri];
        let stream_idx = ri as u16;
        let mut dead = Vec::new();
        let mut freed = Vec::new();
        let mut redelivered = 0u64;
        let mut lost = 0u64;
        let dl_key;
        {
            let mut guard = r.stream.state.lock();
            let st = &mut *guard;
            let next = st.next;
            let g = &mut st.groups[r.group];
            dl_key = g.dead_letter.clone();
            let out = &mut batch.deliveries;
            match g.mode {
                Mode::Fast => {
                    // Entries trimmed before this group read them mean it fell behind the
                    // lag limit: it jumps to the head as well.
                    let trimmed = std::mem::take(&mut g.unreported_skips);
                    let behind = next - g.cursor;
                    if trimmed > 0 || behind > g.lag_limit {
                        batch.skipped += trimmed + behind;
                        g.cursor = next;
                    }
                }
                Mode::Reliable if replay_own || sweep => {
                    let mut i = 0;
                    while i < g.pel.len() && out.len() < max {
                        let p = &mut g.pel[i];
                        i += 1;
                        if p.acked {
                            continue;
                        }
                        let due = if replay_own && p.consumer == r.consumer {
                            true
                        } else {
                            // Each redelivery of a message waits longer (the backoff).
                            sweep
                                && now.saturating_sub(p.delivered_at)
                                    >= redelivery_wait(
                                        g.idle_timeout,
                                        g.backoff_max,
                                        g.max_deliveries,
                                        u32::from(p.count),
                                    )
                                    .as_nanos() as u64
                        };
                        if !due {
                            continue;
                        }
                        let env = if p.offset >= st.first {
                            let seg_i = st
                                .segs
                                .partition_point(|s| s.base + s.msgs.len() as u64 <= p.offset);
                            st.segs.get(seg_i).map(|seg| {
                                EnvelopeRef::shared(
                                    seg.msgs.clone(),
                                    (p.offset - seg.base) as usize,
                                )
                            })
                        } else {
                            None
                        };
                        let Some(env) = env else {
                            // Trimmed away (maxlen) while pending: nothing left to deliver.
                            p.acked = true;
                            g.pel_live -= 1;
                            g.errors.remove(&p.offset);
                            lost += 1;
                            continue;
                        };
                        if p.count as u32 >= g.max_deliveries {
                            p.acked = true;
                            g.pel_live -= 1;
                            let reason = match g.errors.remove(&p.offset) {
                                Some(e) => format!(
                                    "not acknowledged after {} deliveries; last error: {e}",
                                    p.count
                                ),
                                None => format!("not acknowledged after {} deliveries", p.count),
                            };
                            dead.push(DeadLetter {
                                stream: r.stream.key.to_string(),
                                group: g.name.to_string(),
                                entry: EntryId {
                                    ms: 0,
                                    seq: p.offset,
                                },
                                deliveries: p.count as u32,
                                reason,
                                envelope: Some((*env).clone()),
                            });
                            continue;
                        }
                        p.count = p.count.saturating_add(1);
                        p.consumer = r.consumer;
                        p.delivered_at = now;
                        redelivered += 1;
                        out.push(Delivery {
                            stream: stream_idx,
                            id: EntryId {
                                ms: 0,
                                seq: p.offset,
                            },
                            attempt: p.count as u32,
                            envelope: env,
                        });
                    }
                    g.pop_acked_front();
                }
                Mode::Reliable => {}
            }
            // New entries from the cursor.
            let g = &mut st.groups[r.group];
            if g.cursor < next && out.len() < max {
                let mut seg_i = st
                    .segs
                    .partition_point(|s| s.base + s.msgs.len() as u64 <= g.cursor);
                while out.len() < max && g.cursor < next {
                    let Some(seg) = st.segs.get(seg_i) else { break };
                    let start = (g.cursor - seg.base) as usize;
                    let take = (seg.msgs.len() - start).min(max - out.len());
                    for idx in start..start + take {
                        let offset = seg.base + idx as u64;
                        if g.mode == Mode::Reliable {
                            g.pel.push_back(Pending {
                                offset,
                                delivered_at: now,
                                consumer: r.consumer,
                                count: 1,
                                acked: false,
                            });
                        }
                        out.push(Delivery {
                            stream: stream_idx,
                            id: EntryId { ms: 0, seq: offset },
                            attempt: 1,
                            envelope: EnvelopeRef::shared(seg.msgs.clone(), idx),
                        });
                    }
                    if g.mode == Mode::Reliable {
                        g.pel_live += take;
                    }
                    g.cursor += take as u64;
                    seg_i += 1;
                }
            }
            if !dead.is_empty() || lost > 0 || st.groups[r.group].mode == Mode::Fast {
                let (removed, trimmed) = st.trim(self.inner.opts.maxlen);
                freed = removed;
                lost += trimmed;
            }
        }
        drop(freed);
        if !dead.is_empty() || lost > 0 {
            r.stream.notify_space();
        }
        let stats = &self.inner.stats;
        if redelivered > 0 {
            stats.redelivered.fetch_add(redelivered, Ordering::Relaxed);
        }
        if lost > 0 {
            stats.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        if !dead.is_empty() {
            batch.dead_lettered += dead.len() as u64;
            self.inner.push_dead(&dl_key, dead);
        }
    }

    fn heads(&self) -> u64 {
        self.readers
            .iter()
            .map(|r| r.stream.head.load(Ordering::SeqCst))
            .fold(0u64, |a, h| a.wrapping_add(h))
    }
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        let max = max.max(1);
        loop {
            if !self.inner.available.load(Ordering::SeqCst) {
                return Err(ReceiveError::Unavailable(
                    "embedded transport marked unavailable".into(),
                ));
            }
            let heads = self.heads();
            let mut batch = Batch::default();
            self.poll(max, &mut batch);
            if !batch.deliveries.is_empty() || batch.skipped > 0 || batch.dead_lettered > 0 {
                if batch.skipped > 0 {
                    self.inner
                        .stats
                        .skipped
                        .fetch_add(batch.skipped, Ordering::Relaxed);
                }
                return Ok(batch);
            }
            // Spin briefly: a message arriving within the spin is picked up without a wake-up.
            let spin_until = Instant::now() + self.spin;
            let mut changed = false;
            while Instant::now() < spin_until {
                if self.heads() != heads {
                    changed = true;
                    break;
                }
                std::hint::spin_loop();
            }
            if changed {
                continue;
            }
            self.wake.parked.store(true, Ordering::SeqCst);
            if self.heads() == heads {
                let notified = self.wake.notify.notified();
                let _ = tokio::time::timeout(self.sweep_every, notified).await;
            }
            self.wake.parked.store(false, Ordering::SeqCst);
        }
    }

    async fn ack(&mut self, ids: &[(u16, EntryId)]) -> Result<(), AckError> {
        let mut i = 0;
        while i < ids.len() {
            let si = ids[i].0;
            let Some(r) = self.readers.get(si as usize) else {
                i += 1;
                continue;
            };
            let freed;
            {
                let mut st = r.stream.state.lock();
                let g = &mut st.groups[r.group];
                if g.mode == Mode::Reliable {
                    let mut hint = 0usize;
                    while i < ids.len() && ids[i].0 == si {
                        let off = ids[i].1.seq;
                        i += 1;
                        // Acknowledgements mostly follow delivery order: try the next slot first.
                        let pos = match g.pel.get(hint) {
                            Some(p) if p.offset == off => Ok(hint),
                            _ => g.pel.binary_search_by_key(&off, |p| p.offset),
                        };
                        if let Ok(p) = pos {
                            hint = p + 1;
                        }
                        if let Ok(pos) = pos {
                            let p = &mut g.pel[pos];
                            if !p.acked {
                                p.acked = true;
                                g.pel_live -= 1;
                                if !g.errors.is_empty() {
                                    g.errors.remove(&off);
                                }
                            }
                        }
                    }
                    g.pop_acked_front();
                } else {
                    while i < ids.len() && ids[i].0 == si {
                        i += 1;
                    }
                }
                // Publishers trim on every append, so envelopes are normally freed on the thread
                // that allocated them; an acknowledgement trims only when a large acknowledged
                // prefix has piled up (the publishers went quiet).
                let idle = st.groups[r.group].floor(st.next).saturating_sub(st.first)
                    >= ACK_TRIM_THRESHOLD;
                freed = if idle {
                    let (removed, lost) = st.trim(self.inner.opts.maxlen);
                    if lost > 0 {
                        self.inner.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                    removed
                } else {
                    Vec::new()
                };
            }
            drop(freed);
            r.stream.notify_space();
        }
        Ok(())
    }

    async fn nack(&mut self, stream: u16, id: EntryId, reason: &str) {
        let Some(r) = self.readers.get(stream as usize) else {
            return;
        };
        let mut st = r.stream.state.lock();
        let g = &mut st.groups[r.group];
        if let Ok(pos) = g.pel.binary_search_by_key(&id.seq, |p| p.offset) {
            if !g.pel[pos].acked {
                g.errors.insert(id.seq, reason.into());
            }
        }
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        for r in &self.readers {
            let mut st = r.stream.state.lock();
            st.groups[r.group]
                .wakers
                .retain(|w| !Arc::ptr_eq(w, &self.wake));
            let orphaned = st.groups[r.group].wakers.is_empty();
            drop(st);
            if orphaned {
                // Publishers waiting for this group's room wait no more.
                r.stream.notify_space();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_core::{EventKind, Topic};

    fn envelope(seq: u64) -> Envelope {
        Envelope::builder(
            EventKind::MarketData,
            Topic::new("market_data.trade.X").unwrap(),
            "test",
            "test-1",
        )
        .seq(seq)
        .build()
    }

    /// A consumer of two streams reads them in the same order however many timed wake-ups
    /// (every `sweep_every`, here 1 ms) found nothing before: a lockstep backtest depends on it.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_wake_ups_do_not_change_the_order_streams_are_read() {
        let t = MemoryTransport::with_options(MemoryOptions {
            maxlen: 1_000,
            spin: Duration::ZERO,
        });
        let (a, b): (StreamKey, StreamKey) = ("t:a".into(), "t:b".into());
        let mut subs = Vec::new();
        for g in 0..6u64 {
            let mut spec =
                SubscribeSpec::new(format!("g{g}"), "c", vec![a.clone(), b.clone()], "t:dead");
            spec.start = StartFrom::Oldest;
            spec.idle_timeout = Duration::from_millis(4);
            let mut s = t.subscribe(spec).await.unwrap();
            // Each waits a different while on empty streams: a different number of wake-ups.
            let _ = tokio::time::timeout(Duration::from_millis(1 + 3 * g), s.next_batch(1)).await;
            subs.push(s);
        }
        t.publish(&a, vec![envelope(1)], Confirm::Queued)
            .await
            .unwrap();
        t.publish(&b, vec![envelope(2)], Confirm::Queued)
            .await
            .unwrap();
        let mut firsts = Vec::new();
        for s in &mut subs {
            let batch = s.next_batch(1).await.unwrap();
            firsts.push(batch.deliveries[0].stream);
        }
        assert!(firsts.iter().all(|f| *f == firsts[0]), "{firsts:?}");
    }
}
