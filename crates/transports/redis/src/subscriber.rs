//! One consumer of a group: `XREADGROUP` over all of its streams per call on a connection of its
//! own, re-reading its own pending entries first after a restart, `XPENDING`/`XCLAIM` sweeps for
//! entries idle too long, dead letters, and recovery from `NOGROUP`.

use crate::admission;
use crate::reply::{self, Entry};
use crate::resp::RawConnection;
use crate::trim;
use crate::Inner;
use async_trait::async_trait;
use dualbus_core::{
    AckError, Batch, Delivery, EntryId, Envelope, EnvelopeRef, Mode, ReceiveError, StartFrom,
    SubscribeError, SubscribeSpec, Subscriber,
};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most failure reasons remembered for dead letters.
const MAX_REASONS: usize = 10_000;

pub(crate) struct RedisSubscriber {
    inner: Arc<Inner>,
    conn: ConnectionManager,
    /// Reads new entries (the hot path), with its own reply parser.
    raw: RawConnection,
    spec: SubscribeSpec,
    /// Per stream: `Some(last id)` while re-reading this consumer's own pending entries.
    replay: Vec<Option<Vec<u8>>>,
    /// Per stream: the last pending entry a sweep looked at (empty: start from the first).
    claim_cursor: Vec<Vec<u8>>,
    last_sweep: Instant,
    sweep_every: Duration,
    block: Duration,
    reasons: HashMap<(u16, EntryId), String>,
    lag_check_due: bool,
    last_lag_check: Instant,
    recovering: bool,
    /// Acknowledgements not yet sent: they go with the next read, in the same round trip.
    acks: Vec<(u16, EntryId)>,
    /// The group leases this subscriber holds (given back when it is dropped).
    leases: Vec<String>,
    /// Whether to count entries trimmed before the group read them (reliable mode, until the
    /// server refuses the script: an ACL from before the check).
    trim_check: bool,
}

impl Drop for RedisSubscriber {
    fn drop(&mut self) {
        for k in &self.leases {
            self.inner.leases.release(k);
        }
    }
}

/// Pending entries a sweep looks at, at least, per stream (entries still backing off are
/// looked at and passed over).
const CLAIM_SCAN: usize = 128;

/// Acknowledgements held back at most before they are sent on their own.
const MAX_HELD_ACKS: usize = 4096;

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

impl RedisSubscriber {
    pub(crate) async fn start(
        inner: Arc<Inner>,
        spec: SubscribeSpec,
    ) -> Result<RedisSubscriber, SubscribeError> {
        let sweep_every =
            (spec.idle_timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let block = match spec.mode {
            Mode::Reliable => sweep_every.max(Duration::from_millis(10)),
            Mode::Fast => Duration::from_millis(250),
        };
        let conn = inner
            .dedicated(block + inner.opts.connect_timeout + Duration::from_secs(1))
            .await
            .map_err(SubscribeError::Unavailable)?;
        let n = spec.streams.len();
        let raw = RawConnection::new(
            inner.client.get_connection_info().clone(),
            inner.read_tls.clone(),
            inner.opts.connect_timeout,
        );
        let mut sub = RedisSubscriber {
            raw,
            replay: vec![
                if spec.mode == Mode::Reliable {
                    Some(b"0".to_vec())
                } else {
                    None
                };
                n
            ],
            claim_cursor: vec![Vec::new(); n],
            last_sweep: Instant::now(),
            sweep_every,
            block,
            reasons: HashMap::new(),
            lag_check_due: true,
            last_lag_check: Instant::now(),
            recovering: false,
            acks: Vec::new(),
            leases: Vec::new(),
            trim_check: spec.mode == Mode::Reliable,
            inner,
            conn,
            spec,
        };
        // A group made at an id reads the entries after it: for a time, the last possible id
        // of the millisecond before.
        let start: Vec<u8> = match sub.spec.start {
            StartFrom::Newest => b"$".to_vec(),
            StartFrom::Oldest | StartFrom::Time(0) => b"0".to_vec(),
            StartFrom::Time(ms) => format!("{}-{}", ms - 1, u64::MAX).into_bytes(),
        };
        sub.create_groups(&start)
            .await
            .map_err(|e| SubscribeError::Unavailable(sub.inner.describe(&e)))?;
        // A group coming back after its consumers were gone: count what it lost meanwhile,
        // before its first read jumps the gap.
        sub.check_trimmed()
            .await
            .map_err(|e| SubscribeError::Unavailable(sub.inner.describe(&e)))?;
        Ok(sub)
    }

    /// Counts, for each stream, the entries a trim removed before this group read them (see
    /// the `trim` module), logging each loss as a warning.
    async fn check_trimmed(&mut self) -> Result<(), redis::RedisError> {
        if !self.trim_check {
            return Ok(());
        }
        for key in &self.spec.streams {
            match trim::check(&mut self.conn, key, &self.spec.group).await {
                Ok(trim::Found::Lost(0)) => {}
                Ok(trim::Found::Lost(n)) => {
                    self.inner
                        .stats
                        .trimmed_unread
                        .fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        stream = %key,
                        group = %self.spec.group,
                        lost = n,
                        maxlen = self.inner.opts.maxlen,
                        "entries trimmed from the stream before the group read them: lost"
                    );
                }
                Ok(trim::Found::Unknown) => tracing::debug!(
                    stream = %key,
                    group = %self.spec.group,
                    "cannot tell whether entries were trimmed unread (XDEL holes in the stream)"
                ),
                Err(e) if crate::writer::is_noperm(&e.to_string()) => {
                    tracing::warn!(
                        group = %self.spec.group,
                        error = %e,
                        "cannot count entries trimmed unread: the server refuses the check \
                         (an ACL without EVALSHA); regenerate it with `dualbus acl`"
                    );
                    self.trim_check = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the group on every stream (with `MKSTREAM`) and records its bound.
    async fn create_groups(&mut self, start: &[u8]) -> Result<(), redis::RedisError> {
        for key in &self.spec.streams {
            let res = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&**key)
                .arg(&*self.spec.group)
                .arg(start)
                .arg("MKSTREAM")
                .query_async::<()>(&mut self.conn)
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
            // Alive from now on: the transport renews the lease while this subscriber lives.
            let lease = admission::lease_key(key, &self.spec.group);
            admission::renew(
                &mut self.conn,
                std::slice::from_ref(&lease),
                self.inner.opts.group_lease,
            )
            .await?;
            if !self.leases.contains(&lease) {
                self.inner.leases.hold(lease.clone());
                self.leases.push(lease);
            }
            if self.spec.mode == Mode::Reliable {
                redis::cmd("HSET")
                    .arg(admission::bounds_key(key))
                    .arg(&*self.spec.group)
                    .arg(admission::encode(
                        self.spec.queue_bound,
                        self.spec.backpressure,
                    ))
                    .query_async::<()>(&mut self.conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// The group vanished (stream deleted, server restarted empty): recreate it, reading from
    /// the start of whatever the stream now holds so nothing published since is missed. Logged
    /// once per outage, not once per attempt.
    async fn recover_nogroup(&mut self) -> Result<(), ReceiveError> {
        if !self.recovering {
            tracing::warn!(
                bus = %self.inner.opts.bus,
                group = %self.spec.group,
                "consumer group missing (stream deleted or server restarted empty): recreating it"
            );
            self.recovering = true;
        }
        self.create_groups(b"0")
            .await
            .map_err(|e| ReceiveError::Unavailable(self.inner.describe(&e)))?;
        for r in self.replay.iter_mut() {
            *r = None;
        }
        for c in self.claim_cursor.iter_mut() {
            c.clear();
        }
        Ok(())
    }

    /// Adds the held acknowledgements to a pipeline (one `XACK` per stream); returns how many
    /// commands it added.
    fn push_acks(&self, pipe: &mut redis::Pipeline) -> usize {
        let mut by_stream: HashMap<u16, Vec<String>> = HashMap::new();
        for (s, id) in &self.acks {
            by_stream.entry(*s).or_default().push(id.to_string());
        }
        let mut pushed = 0;
        for (s, list) in &by_stream {
            let Some(key) = self.spec.streams.get(*s as usize) else {
                continue;
            };
            let cmd = pipe.cmd("XACK").arg(&**key).arg(&*self.spec.group);
            for id in list {
                cmd.arg(id.as_str());
            }
            cmd.ignore();
            pushed += 1;
        }
        pushed
    }

    /// Sends the held acknowledgements now.
    async fn flush_acks(&mut self) -> Result<(), AckError> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.push_acks(&mut pipe);
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| AckError::Unavailable(self.inner.describe(&e)))?;
        self.acks.clear();
        Ok(())
    }

    fn err(&self, e: &redis::RedisError) -> ReceiveError {
        self.inner
            .mark(!(e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()));
        ReceiveError::Unavailable(self.inner.describe(e))
    }

    fn stream_index(&self, key: &[u8]) -> Option<usize> {
        self.spec.streams.iter().position(|s| s.as_bytes() == key)
    }

    /// Delivery counts of `ids` in stream `i` (after a claim or a re-read).
    async fn counts(
        &mut self,
        i: usize,
        ids: &[&Entry],
    ) -> Result<HashMap<EntryId, u64>, redis::RedisError> {
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(HashMap::new());
        };
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(&*self.spec.streams[i])
            .arg(&*self.spec.group)
            .arg(&first.raw_id[..])
            .arg(&last.raw_id[..])
            .arg(ids.len())
            .arg(&*self.spec.consumer)
            .query_async(&mut self.conn)
            .await?;
        Ok(reply::pending_rows(&v)
            .into_iter()
            .map(|r| (r.id, r.deliveries))
            .collect())
    }

    /// Moves entries to the dead-letter stream with their reason, then acknowledges those whose
    /// copy the broker took. The copies go first, on their own (on a Redis Cluster, to the
    /// master of the dead-letter stream's slot, which is usually another one): an entry whose
    /// copy was refused (`OOM` under `maxmemory`, a key of the wrong type) is not acknowledged
    /// and stays pending, to be tried again after the idle timeout, with its reason kept. A
    /// failure between the copy and the acknowledgement leaves a copy and the entry pending:
    /// it can be dead-lettered twice, never lost. Returns how many were moved.
    async fn dead_letter(
        &mut self,
        i: usize,
        entries: Vec<(&Entry, String, u64)>,
        acknowledge: bool,
    ) -> Result<u64, redis::RedisError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let key = self.spec.streams[i].clone();
        let mut pipe = redis::pipe();
        for (e, reason, deliveries) in &entries {
            let cmd = pipe
                .cmd("XADD")
                .arg(&*self.spec.dead_letter)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.inner.opts.maxlen)
                .arg("*");
            for (k, v) in &e.fields {
                if !k.starts_with(b"dead_") {
                    cmd.arg(&k[..]).arg(&v[..]);
                }
            }
            cmd.arg("dead_reason")
                .arg(reason.as_str())
                .arg("dead_stream")
                .arg(&*key)
                .arg("dead_group")
                .arg(&*self.spec.group)
                .arg("dead_entry")
                .arg(&e.raw_id[..])
                .arg("dead_deliveries")
                .arg(*deliveries);
        }
        let route = self.inner.opts.node_route.as_ref();
        let results: Vec<redis::Value> = match route {
            Some(r) => {
                let mut conn = r.conn_for(&self.spec.dead_letter).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no master known for the dead-letter stream",
                        self.spec.dead_letter.to_string(),
                    ))
                })?;
                pipe.query_async(&mut conn).await?
            }
            None => pipe.query_async(&mut self.conn).await?,
        };
        let mut moved = Vec::new();
        for (k, (e, reason, _)) in entries.iter().enumerate() {
            match results.get(k) {
                Some(redis::Value::ServerError(err)) => tracing::warn!(
                    stream = %key,
                    group = %self.spec.group,
                    entry = %e.id,
                    error = %err,
                    "the dead-letter stream refused the entry: it stays pending and is tried \
                     again after the idle timeout"
                ),
                _ => {
                    tracing::warn!(stream = %key, group = %self.spec.group, entry = %e.id, reason = %reason, "dead-lettered");
                    moved.push(*e);
                }
            }
        }
        if acknowledge && !moved.is_empty() {
            let mut ack = redis::cmd("XACK");
            ack.arg(&*key).arg(&*self.spec.group);
            for e in &moved {
                ack.arg(&e.raw_id[..]);
            }
            ack.query_async::<()>(&mut self.conn).await?;
        }
        for e in &moved {
            self.reasons.remove(&(i as u16, e.id));
        }
        let n = moved.len() as u64;
        self.inner
            .stats
            .dead_lettered
            .fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Turns entries of stream `i` into deliveries; unparsable ones are dead-lettered.
    async fn take(
        &mut self,
        i: usize,
        entries: &[Entry],
        attempts: Option<&HashMap<EntryId, u64>>,
        envs: &mut Vec<Envelope>,
        meta: &mut Vec<(u16, EntryId, u32)>,
        batch: &mut Batch,
    ) -> Result<(), redis::RedisError> {
        let reliable = self.spec.mode == Mode::Reliable;
        let mut bad: Vec<(&Entry, String, u64)> = Vec::new();
        let mut gone: Vec<&Entry> = Vec::new();
        for e in entries {
            if e.deleted {
                gone.push(e);
                continue;
            }
            let attempt = attempts.and_then(|a| a.get(&e.id).copied()).unwrap_or(1);
            if reliable && attempt > self.spec.max_deliveries as u64 {
                // Kept until the entry is dead-lettered: a refused copy is tried again.
                let reason = match self.reasons.get(&(i as u16, e.id)) {
                    Some(r) => format!(
                        "not acknowledged after {} deliveries; last error: {r}",
                        attempt - 1
                    ),
                    None => format!("not acknowledged after {} deliveries", attempt - 1),
                };
                bad.push((e, reason, attempt - 1));
                continue;
            }
            match Envelope::from_wire_fields(
                e.fields.iter().map(|(k, v)| (&k[..], &v[..])),
                self.inner.opts.max_payload,
            ) {
                Ok(env) => {
                    envs.push(env);
                    meta.push((i as u16, e.id, attempt as u32));
                }
                Err(why) => bad.push((e, format!("unparsable entry: {why}"), attempt)),
            }
        }
        // A failure from here on keeps the batch: the entries that failed stay pending and
        // are dealt with again after the idle timeout; the good ones are delivered now.
        let bad_n = bad.len();
        match self.dead_letter(i, bad, reliable).await {
            Ok(n) => batch.dead_lettered += n,
            Err(e) => tracing::warn!(
                bus = %self.inner.opts.bus,
                group = %self.spec.group,
                entries = bad_n,
                error = %e,
                "dead-lettering failed: the entries stay pending and are tried again after the \
                 idle timeout"
            ),
        }
        if !gone.is_empty() && reliable {
            // Trimmed (MAXLEN) while pending: nothing left to deliver; counted once
            // acknowledged (an entry whose acknowledgement failed comes back and is counted
            // then).
            let mut ack = redis::cmd("XACK");
            ack.arg(&*self.spec.streams[i]).arg(&*self.spec.group);
            for e in &gone {
                ack.arg(&e.raw_id[..]);
            }
            match ack.query_async::<u64>(&mut self.conn).await {
                Ok(n) => {
                    self.inner.stats.dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(
                    bus = %self.inner.opts.bus,
                    group = %self.spec.group,
                    error = %e,
                    "acknowledging trimmed entries failed; they come back after the idle timeout"
                ),
            }
        } else if !gone.is_empty() {
            self.inner
                .stats
                .dropped
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Takes entries delivered again (re-read after a restart, or claimed), with their
    /// delivery counts (asked of the broker unless given), and counts them as redelivered.
    async fn take_again(
        &mut self,
        i: usize,
        entries: &[Entry],
        counts: Option<HashMap<EntryId, u64>>,
        envs: &mut Vec<Envelope>,
        meta: &mut Vec<(u16, EntryId, u32)>,
        batch: &mut Batch,
    ) -> Result<(), redis::RedisError> {
        let counts = match counts {
            Some(c) => c,
            None => {
                let live: Vec<&Entry> = entries.iter().filter(|e| !e.deleted).collect();
                self.counts(i, &live).await?
            }
        };
        let before = envs.len();
        self.take(i, entries, Some(&counts), envs, meta, batch)
            .await?;
        self.inner
            .stats
            .redelivered
            .fetch_add((envs.len() - before) as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn read_own_pending(
        &mut self,
        max: usize,
        envs: &mut Vec<Envelope>,
        meta: &mut Vec<(u16, EntryId, u32)>,
        batch: &mut Batch,
    ) -> Result<(), redis::RedisError> {
        let idx: Vec<usize> = (0..self.spec.streams.len())
            .filter(|&i| self.replay[i].is_some())
            .collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*self.spec.group)
            .arg(&*self.spec.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS");
        for &i in &idx {
            cmd.arg(&*self.spec.streams[i]);
        }
        for &i in &idx {
            cmd.arg(&self.replay[i].as_ref().expect("replaying")[..]);
        }
        let v: redis::Value = cmd.query_async(&mut self.conn).await?;
        let streams = reply::read_reply(v).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Parse, "XREADGROUP reply", e))
        })?;
        let mut seen = vec![false; self.spec.streams.len()];
        for (key, entries) in streams {
            let Some(i) = self.stream_index(&key) else {
                continue;
            };
            seen[i] = true;
            match entries.last() {
                None => self.replay[i] = None,
                Some(last) => self.replay[i] = Some(last.raw_id.to_vec()),
            }
            self.take_again(i, &entries, None, envs, meta, batch)
                .await?;
        }
        for &i in &idx {
            if !seen[i] {
                self.replay[i] = None;
            }
        }
        Ok(())
    }

    /// Claims the group's entries that were left unacknowledged long enough: an entry
    /// delivered n times waits `spec.redelivery_wait(n)` (the idle timeout, doubling with each
    /// further delivery up to the backoff cap). Per stream, one `XPENDING IDLE` page from a
    /// cursor (so entries still backing off do not hide the ones after them), then one `XCLAIM`
    /// per wait, whose minimum idle time makes an entry another consumer claimed meanwhile
    /// stay with it.
    async fn sweep(
        &mut self,
        max: usize,
        envs: &mut Vec<Envelope>,
        meta: &mut Vec<(u16, EntryId, u32)>,
        batch: &mut Batch,
    ) -> Result<(), redis::RedisError> {
        self.check_trimmed().await?;
        let idle_ms = self.spec.idle_timeout.as_millis().max(1) as u64;
        for i in 0..self.spec.streams.len() {
            if envs.len() >= max {
                break;
            }
            let room = max - envs.len();
            let page = room.max(CLAIM_SCAN);
            let start = if self.claim_cursor[i].is_empty() {
                b"-".to_vec()
            } else {
                [&b"("[..], &self.claim_cursor[i]].concat()
            };
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(&*self.spec.streams[i])
                .arg(&*self.spec.group)
                .arg("IDLE")
                .arg(idle_ms)
                .arg(start)
                .arg("+")
                .arg(page)
                .query_async(&mut self.conn)
                .await?;
            let rows = reply::pending_rows(&v);
            // Due entries by their wait, in id order within each wait.
            let mut due: std::collections::BTreeMap<u64, Vec<reply::PendingRow>> =
                Default::default();
            let mut taken = 0;
            let mut examined = 0;
            for row in rows.iter() {
                if taken == room {
                    break;
                }
                examined += 1;
                let n = u32::try_from(row.deliveries).unwrap_or(u32::MAX);
                let wait = self.spec.redelivery_wait(n).as_millis().max(1) as u64;
                if row.idle_ms >= wait {
                    taken += 1;
                    due.entry(wait).or_default().push(reply::PendingRow {
                        id: row.id,
                        raw_id: row.raw_id.clone(),
                        idle_ms: row.idle_ms,
                        deliveries: row.deliveries,
                    });
                }
            }
            // The next sweep goes on after the last entry looked at, and starts over once a
            // page came back short (the end of the list).
            self.claim_cursor[i] = if examined == rows.len() && rows.len() < page {
                Vec::new()
            } else {
                rows[examined - 1].raw_id.clone()
            };
            if due.is_empty() {
                continue;
            }
            // Entries trimmed away while pending (older than the stream's first entry: dualbus
            // trims only from the head) cannot be delivered: acknowledged here, and counted as
            // dropped by what `XACK` says it removed, so two consumers sweeping at once count
            // each once (a claim would drop them from the group without saying so).
            self.ack_trimmed(i, &mut due).await?;
            if due.values().all(Vec::is_empty) {
                continue;
            }
            let mut pipe = redis::pipe();
            for (wait, rows) in due.iter().filter(|(_, r)| !r.is_empty()) {
                let cmd = pipe
                    .cmd("XCLAIM")
                    .arg(&*self.spec.streams[i])
                    .arg(&*self.spec.group)
                    .arg(&*self.spec.consumer)
                    .arg(*wait);
                for r in rows {
                    cmd.arg(&r.raw_id[..]);
                }
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
            let mut claimed = Vec::new();
            for v in replies {
                claimed.extend(reply::entries(v).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Parse, "XCLAIM reply", e))
                })?);
            }
            claimed.sort_by_key(|e| e.id);
            if claimed.is_empty() {
                continue;
            }
            // A claim counts a delivery.
            let counts: HashMap<EntryId, u64> = due
                .values()
                .flatten()
                .map(|r| (r.id, r.deliveries + 1))
                .collect();
            self.take_again(i, &claimed, Some(counts), envs, meta, batch)
                .await?;
        }
        Ok(())
    }

    /// Takes out of `due` the entries of stream `i` that a trim removed (older than its first
    /// entry), acknowledges them and counts as dropped those the acknowledgement removed.
    async fn ack_trimmed(
        &mut self,
        i: usize,
        due: &mut std::collections::BTreeMap<u64, Vec<reply::PendingRow>>,
    ) -> Result<(), redis::RedisError> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&*self.spec.streams[i])
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        let first = reply::entries(v)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Parse, "XRANGE reply", e)))?
            .first()
            .map(|e| e.id);
        let mut gone: Vec<Vec<u8>> = Vec::new();
        for rows in due.values_mut() {
            rows.retain(|r| {
                let trimmed = first.is_none_or(|f| r.id < f);
                if trimmed {
                    gone.push(r.raw_id.clone());
                }
                !trimmed
            });
        }
        if gone.is_empty() {
            return Ok(());
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&*self.spec.streams[i]).arg(&*self.spec.group);
        for id in &gone {
            ack.arg(&id[..]);
        }
        let n: u64 = ack.query_async(&mut self.conn).await?;
        self.inner.stats.dropped.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Fast mode: a group further behind than its lag limit jumps to the head.
    async fn check_lag(&mut self, batch: &mut Batch) -> Result<(), redis::RedisError> {
        for i in 0..self.spec.streams.len() {
            let key = self.spec.streams[i].clone();
            let Some(info) = reply::xinfo_groups(&mut self.conn, &key)
                .await?
                .into_iter()
                .find(|g| g.name == *self.spec.group)
            else {
                continue;
            };
            let lag = match info.lag {
                Some(l) => l,
                // No limit to enforce: do not read the whole backlog just to count it.
                None if self.spec.lag_limit >= u64::from(u32::MAX) => continue,
                None => {
                    reply::count_after(
                        &mut self.conn,
                        &key,
                        &info.last_delivered,
                        self.spec.lag_limit + 1,
                    )
                    .await?
                }
            };
            if lag > self.spec.lag_limit {
                let v: redis::Value = redis::cmd("XREVRANGE")
                    .arg(&*key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.conn)
                    .await?;
                if let Some(last) = reply::entries(v).ok().and_then(|mut e| e.pop()) {
                    let mut setid = redis::cmd("XGROUP");
                    setid
                        .arg("SETID")
                        .arg(&*key)
                        .arg(&*self.spec.group)
                        .arg(&last.raw_id[..]);
                    if let Some(read) = info.entries_read {
                        setid.arg("ENTRIESREAD").arg(read + lag);
                    }
                    setid.query_async::<()>(&mut self.conn).await?;
                    batch.skipped += lag;
                }
            }
        }
        self.lag_check_due = false;
        self.last_lag_check = Instant::now();
        Ok(())
    }

    async fn read_new(
        &mut self,
        max: usize,
        envs: &mut Vec<Envelope>,
        meta: &mut Vec<(u16, EntryId, u32)>,
        batch: &mut Batch,
    ) -> Result<(), redis::RedisError> {
        // COUNT applies per stream: split `max` so one read returns at most about `max`.
        let per_stream = max.div_ceil(self.spec.streams.len()).max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*self.spec.group)
            .arg(&*self.spec.consumer)
            .arg("COUNT")
            .arg(per_stream)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64);
        if self.spec.mode == Mode::Fast {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS");
        for k in &self.spec.streams {
            cmd.arg(&**k);
        }
        for _ in &self.spec.streams {
            cmd.arg(">");
        }
        // Held acknowledgements travel in the same round trip, ahead of the read, on the read
        // path's own connection (see `resp`).
        let mut pipe = redis::pipe();
        let acks = self.push_acks(&mut pipe);
        let mut packed = pipe.get_packed_pipeline();
        packed.extend_from_slice(&cmd.get_packed_command());
        let within = self.block + self.inner.opts.connect_timeout + Duration::from_secs(1);
        let streams = self.raw.query_read(&packed, acks + 1, within).await?;
        self.inner.note_answer();
        self.acks.clear();
        let mut total = 0;
        for (key, entries) in streams {
            let Some(i) = self.stream_index(&key) else {
                continue;
            };
            total += entries.len();
            self.take(i, &entries, None, envs, meta, batch).await?;
        }
        // A full read suggests a backlog: check the lag, at most every 100 ms.
        if self.spec.mode == Mode::Fast
            && total >= per_stream
            && self.last_lag_check.elapsed() >= Duration::from_millis(100)
        {
            self.lag_check_due = true;
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Batch, redis::RedisError> {
        let mut batch = Batch::default();
        let mut envs = Vec::new();
        let mut meta = Vec::new();
        let reliable = self.spec.mode == Mode::Reliable;
        let sweep_due = reliable && self.last_sweep.elapsed() >= self.sweep_every;
        if sweep_due && !self.acks.is_empty() {
            // Acknowledge first, so the sweep does not reclaim what was handled.
            let mut pipe = redis::pipe();
            self.push_acks(&mut pipe);
            pipe.query_async::<()>(&mut self.conn).await?;
            self.acks.clear();
        }
        if reliable && self.replay.iter().any(|r| r.is_some()) {
            self.read_own_pending(max, &mut envs, &mut meta, &mut batch)
                .await?;
        }
        if sweep_due && envs.is_empty() {
            self.last_sweep = Instant::now();
            self.sweep(max, &mut envs, &mut meta, &mut batch).await?;
        }
        if !reliable && self.lag_check_due {
            self.check_lag(&mut batch).await?;
        }
        if envs.is_empty() && batch.skipped == 0 && batch.dead_lettered == 0 {
            self.read_new(max, &mut envs, &mut meta, &mut batch).await?;
        }
        let seg = Arc::new(envs);
        batch.deliveries = meta
            .into_iter()
            .enumerate()
            .map(|(k, (stream, id, attempt))| Delivery {
                stream,
                id,
                attempt,
                envelope: EnvelopeRef::shared(seg.clone(), k),
            })
            .collect();
        Ok(batch)
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        loop {
            let batch = self.read_once(max).await?;
            if !batch.deliveries.is_empty() || batch.skipped > 0 || batch.dead_lettered > 0 {
                return Ok(batch);
            }
        }
    }

    async fn read_once(&mut self, max: usize) -> Result<Batch, ReceiveError> {
        match self.poll(max.max(1)).await {
            Ok(batch) => {
                self.inner.mark(true);
                self.recovering = false;
                if batch.skipped > 0 {
                    self.inner
                        .stats
                        .skipped
                        .fetch_add(batch.skipped, Ordering::Relaxed);
                }
                Ok(batch)
            }
            Err(e) if is_nogroup(&e) => {
                self.recover_nogroup().await?;
                Ok(Batch::default())
            }
            Err(e) => Err(self.err(&e)),
        }
    }

    async fn ack(&mut self, ids: &[(u16, EntryId)]) -> Result<(), AckError> {
        if self.spec.mode == Mode::Fast || ids.is_empty() {
            return Ok(());
        }
        if !self.reasons.is_empty() {
            for k in ids {
                self.reasons.remove(k);
            }
        }
        self.acks.extend_from_slice(ids);
        if self.acks.len() >= MAX_HELD_ACKS {
            self.flush_acks().await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), AckError> {
        self.flush_acks().await
    }

    async fn nack(&mut self, stream: u16, id: EntryId, reason: &str) {
        if self.reasons.len() >= MAX_REASONS {
            self.reasons.clear();
        }
        self.reasons.insert((stream, id), reason.to_string());
    }
}
