//! Queue bounds of reliable groups, enforced by publishers.
//!
//! Redis has no per-group bound, so each reliable group records its bound and policy in the hash
//! `{stream}#groups` when it subscribes, and every publisher honours it: it keeps an estimate of
//! each group's backlog (pending plus unread at the last check, plus everything it admitted
//! since), and checks precisely (`XINFO GROUPS`, after flushing its own queued writes) when the
//! estimate reaches a bound, or once it admitted a slice of the bound, `ceil(bound / 16)`
//! ([`SLICE`]), since its last check. The estimate counts only this publisher's messages, so
//! with several publishing processes a group can exceed its bound, but by at most a slice per
//! other publisher: at the latest check among the publishers, the backlog seen there includes
//! everything the others had admitted before their own checks (each flushed its writes
//! first), and since then each other publisher admitted at most a slice. With `P` publishers
//! a group holds at most `bound + (P - 1) * ceil(bound / 16)`. Then `reject` fails the publish,
//! `block` waits for room, and `drop_oldest` acknowledges the group's oldest pending entries and
//! moves its cursor past the oldest unread ones, counting them as dropped.
//!
//! A bound holds publishers only while a consumer of its group is alive: every subscriber
//! renews its group's lease, the key `{stream}#alive:{group}` (same slot), which expires
//! `group_lease` after the last renewal. A group whose consumers all died (a killed engine
//! process) stops holding publishers once its lease expires; its unread entries are then
//! trimmed with the stream (`MAXLEN`), not kept for it. A publisher that waits for a living
//! group's room says so in a warning every [`WAIT_WARN_EVERY`].

use crate::reply;
use crate::RedisTransport;
use dualbus_core::transport::StreamKey;
use dualbus_core::{Backpressure, PublishError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a publisher trusts its copy of a stream's group bounds.
const POLICY_TTL: Duration = Duration::from_millis(500);

/// A publisher checks a group's backlog at the broker at least once per `bound / SLICE`
/// messages it admits (see the module doc: what bounds the overshoot of several publishers).
pub const SLICE: u64 = 16;

/// The most a publisher admits to a group between two checks at the broker.
fn slice(bound: u64) -> u64 {
    bound.div_ceil(SLICE).max(1)
}

/// The hash holding the bounds of a stream's groups, in the stream's Redis Cluster hash slot
/// (admission reads both in one round trip to the stream's node): `{stream}#groups` for a key
/// with a hash tag (`dualbus:md:{p3}:market_data#groups`), else the stream as the tag
/// (`{dualbus:md:market_data}#groups`).
pub(crate) fn bounds_key(stream: &str) -> String {
    slot_key(stream, "#groups")
}

/// A key beside `stream`, in its Redis Cluster hash slot: `stream` then `suffix`, with the
/// stream as the hash tag when it has none of its own.
pub(crate) fn slot_key(stream: &str, suffix: &str) -> String {
    if has_hash_tag(stream) {
        format!("{stream}{suffix}")
    } else {
        format!("{{{stream}}}{suffix}")
    }
}

/// The key whose existence says a consumer of `group` on `stream` is alive (renewed by the
/// subscribers, expiring on its own): `{stream}#alive:{group}` in the stream's slot.
pub(crate) fn lease_key(stream: &str, group: &str) -> String {
    slot_key(stream, &format!("#alive:{group}"))
}

/// How often a publisher waiting for a group's room logs a warning.
const WAIT_WARN_EVERY: Duration = Duration::from_secs(5);

/// Whether a key has a Redis Cluster hash tag (a non-empty `{...}`).
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|close| close > 0)
}

/// Encodes a bound for the hash: `{bound} {policy}`.
pub(crate) fn encode(bound: usize, policy: Backpressure) -> String {
    let p = match policy {
        Backpressure::Block => "block",
        Backpressure::DropOldest => "drop_oldest",
        Backpressure::Reject => "reject",
    };
    format!("{bound} {p}")
}

fn decode(v: &str) -> Option<(u64, Backpressure)> {
    let (b, p) = v.split_once(' ')?;
    let policy = match p {
        "block" => Backpressure::Block,
        "drop_oldest" => Backpressure::DropOldest,
        "reject" => Backpressure::Reject,
        _ => return None,
    };
    Some((b.parse().ok()?, policy))
}

struct GroupBound {
    group: String,
    bound: u64,
    policy: Backpressure,
}

#[derive(Default)]
struct StreamBounds {
    groups: Vec<GroupBound>,
    loaded_at: Option<Instant>,
    backlog: HashMap<String, u64>,
    admitted_since: u64,
    checked: bool,
}

/// Per-stream admission state of one transport.
#[derive(Default)]
pub(crate) struct Admission {
    streams: Mutex<HashMap<StreamKey, Arc<tokio::sync::Mutex<StreamBounds>>>>,
}

/// How to publish an admitted batch.
pub(crate) enum Admit {
    /// As one batch.
    Queued,
    /// In pieces of at most this many (the batch exceeds a blocking group's bound).
    Split(usize),
}

fn broker(t: &RedisTransport, e: redis::RedisError) -> PublishError {
    if crate::writer::is_noperm(&e.to_string()) {
        // The server is there and refuses this user the stream: no failover can help.
        return PublishError::Broker(e.to_string());
    }
    PublishError::Unavailable(t.inner.describe(&e))
}

/// Decides whether `n` more entries may go to `stream`; waits, drops or rejects per the
/// groups' policies.
pub(crate) async fn admit(
    t: &RedisTransport,
    stream: &StreamKey,
    n: usize,
) -> Result<Admit, PublishError> {
    let state = t
        .inner
        .admission
        .streams
        .lock()
        .entry(stream.clone())
        .or_default()
        .clone();
    let mut st = state.lock().await;
    let mut conn = t.inner.conn.clone();
    if st.loaded_at.is_none_or(|at| at.elapsed() > POLICY_TTL) {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(bounds_key(stream))
            .query_async(&mut conn)
            .await
            .map_err(|e| broker(t, e))?;
        let bounded: Vec<GroupBound> = raw
            .iter()
            .filter_map(|(g, v)| {
                let (bound, policy) = decode(v)?;
                Some(GroupBound {
                    group: g.clone(),
                    bound,
                    policy,
                })
            })
            .collect();
        st.groups = alive(t, stream, bounded).await?;
        st.loaded_at = Some(Instant::now());
    }
    if st.groups.is_empty() {
        return Ok(Admit::Queued);
    }
    let n64 = n as u64;
    for g in &st.groups {
        if n64 > g.bound {
            match g.policy {
                Backpressure::Block => return Ok(Admit::Split((g.bound / 2).max(1) as usize)),
                Backpressure::Reject => {
                    return Err(PublishError::Full {
                        stream: stream.to_string(),
                        group: g.group.clone(),
                        bound: g.bound as usize,
                    })
                }
                Backpressure::DropOldest => {}
            }
        }
    }
    let fits = st.checked
        && st.groups.iter().all(|g| {
            st.backlog.get(&g.group).copied().unwrap_or(0) + st.admitted_since + n64 <= g.bound
                && st.admitted_since + n64 <= slice(g.bound)
        });
    if fits {
        st.admitted_since += n64;
        return Ok(Admit::Queued);
    }
    // Precise check: first let our own queued writes land, so the counts include them (within
    // the connect timeout: a broker that does not answer is down, not merely slow).
    tokio::time::timeout(t.inner.opts.connect_timeout, t.flush())
        .await
        .map_err(|_| {
            PublishError::Unavailable(format!(
                "{} bus at {}: queued writes not confirmed within {:?}",
                t.inner.opts.bus, t.inner.opts.url, t.inner.opts.connect_timeout
            ))
        })??;
    let waiting_since = Instant::now();
    let mut warned_at = waiting_since;
    loop {
        let infos = reply::xinfo_groups(&mut conn, stream)
            .await
            .map_err(|e| broker(t, e))?;
        let mut wait: Option<(String, u64, u64)> = None;
        let mut backlog = HashMap::new();
        for g in &st.groups {
            let Some(info) = infos.iter().find(|i| i.name == g.group) else {
                continue;
            };
            let unread = match info.lag {
                Some(l) => l,
                None => {
                    reply::count_after(&mut conn, stream, &info.last_delivered, g.bound + n64 + 1)
                        .await
                        .map_err(|e| broker(t, e))?
                }
            };
            let mut b = info.pending + unread;
            if b + n64 > g.bound {
                match g.policy {
                    Backpressure::Reject => {
                        return Err(PublishError::Full {
                            stream: stream.to_string(),
                            group: g.group.clone(),
                            bound: g.bound as usize,
                        })
                    }
                    Backpressure::Block => wait = Some((g.group.clone(), b, g.bound)),
                    Backpressure::DropOldest => {
                        let k = b + n64 - g.bound;
                        let dropped = drop_oldest(t, stream, &g.group, k).await?;
                        b = b.saturating_sub(dropped);
                    }
                }
            }
            backlog.insert(g.group.clone(), b);
        }
        let Some((group, held, bound)) = wait else {
            st.backlog = backlog;
            st.admitted_since = n64;
            st.checked = true;
            return Ok(Admit::Queued);
        };
        if t.inner.down.load(Ordering::SeqCst) {
            return Err(PublishError::Unavailable(format!(
                "{} bus at {} is down",
                t.inner.opts.bus, t.inner.opts.url
            )));
        }
        if warned_at.elapsed() >= WAIT_WARN_EVERY {
            warned_at = Instant::now();
            tracing::warn!(
                bus = %t.inner.opts.bus,
                stream = %stream,
                group = %group,
                backlog = held,
                bound,
                waited_ms = waiting_since.elapsed().as_millis() as u64,
                "publishing waits for a slow group to make room (policy block): it holds its \
                 queue bound; a group whose consumers all died stops holding publishers once \
                 its lease expires"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if st.loaded_at.is_none_or(|at| at.elapsed() > POLICY_TTL) {
            // While waiting, the consumers of the group may die: recheck who is alive.
            let groups = std::mem::take(&mut st.groups);
            st.groups = alive(t, stream, groups).await?;
            st.loaded_at = Some(Instant::now());
        }
    }
}

/// The groups among `groups` whose lease is alive (some consumer renewed it lately).
async fn alive(
    t: &RedisTransport,
    stream: &str,
    groups: Vec<GroupBound>,
) -> Result<Vec<GroupBound>, PublishError> {
    if groups.is_empty() {
        return Ok(groups);
    }
    let mut conn = t.inner.conn.clone();
    let mut pipe = redis::pipe();
    for g in &groups {
        pipe.cmd("EXISTS").arg(lease_key(stream, &g.group));
    }
    let live: Vec<bool> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| broker(t, e))?;
    Ok(groups
        .into_iter()
        .zip(live)
        .filter_map(|(g, alive)| alive.then_some(g))
        .collect())
}

/// The leases this transport's subscribers hold: each lease key with the number of
/// subscriptions holding it. A task renews them all every quarter of the lease.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<String, usize>>,
}

impl Leases {
    /// Takes a share of the lease on `key` (until [`Leases::release`]).
    pub(crate) fn hold(&self, key: String) {
        *self.held.lock().entry(key).or_default() += 1;
    }

    /// Gives back a share taken by [`Leases::hold`]. The lease itself expires on its own:
    /// another process may still hold it.
    pub(crate) fn release(&self, key: &str) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                held.remove(key);
            }
        }
    }

    fn keys(&self) -> Vec<String> {
        self.held.lock().keys().cloned().collect()
    }
}

/// Renews the leases of `inner`'s subscribers every quarter of the lease, until the transport
/// is dropped. Runs on the transport's own thread, so a subscriber whose handler is slow (or
/// stuck) still counts as alive: only a consumer whose process is gone lets its lease expire.
pub(crate) async fn renew_leases(inner: std::sync::Weak<crate::Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let lease = i.opts.group_lease;
        let keys = i.leases.keys();
        if !keys.is_empty() {
            let mut conn = i.conn.clone();
            if let Err(e) = renew(&mut conn, &keys, lease).await {
                tracing::debug!(bus = %i.opts.bus, error = %e, "renewing group leases failed; retrying");
            }
        }
        drop(i);
        tokio::time::sleep((lease / 4).max(Duration::from_millis(10))).await;
    }
}

/// Sets the lease keys to expire `lease` from now. An existing lease is extended with
/// `PEXPIRE`, which a broker out of memory (`maxmemory`, `noeviction`) still accepts; only a
/// missing one is created with `SET`.
pub(crate) async fn renew(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &[String],
    lease: Duration,
) -> redis::RedisResult<()> {
    let ms = lease.as_millis().max(1) as u64;
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("PEXPIRE").arg(k).arg(ms);
    }
    let extended: Vec<bool> = pipe.query_async(conn).await?;
    let mut create = redis::pipe();
    let mut missing = false;
    for (k, ok) in keys.iter().zip(extended) {
        if !ok {
            create.cmd("SET").arg(k).arg(1).arg("PX").arg(ms).ignore();
            missing = true;
        }
    }
    if missing {
        create.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Drops the `k` oldest messages of a group, in one script so that readers of the group cannot
/// interleave: pending ones first (acknowledged unhandled, `XACK` in slices of 1000 ids), then
/// unread ones, past which the group's cursor moves (`XGROUP SETID` from the position the
/// script itself reads, with `ENTRIESREAD` kept exact). Done in steps from the publisher, a
/// reader moving the cursor between the steps had it set back (its messages given again) and
/// the read counter stale. KEYS: the stream. ARGV: the group, `k`. Returns how many were
/// dropped.
const DROP_OLDEST: &str = r#"
local k = tonumber(ARGV[2])
local dropped = 0
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', k)
local ids = {}
for i, r in ipairs(rows) do ids[i] = r[1] end
for i = 1, #ids, 1000 do
  dropped = dropped + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
local rest = k - #rows
if rest <= 0 then return dropped end
local last, read, lag = nil, nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then last, read, lag = f['last-delivered-id'], f['entries-read'], f['lag'] end
end
if not last then return dropped end
local skipped = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', rest)
if #skipped == 0 then return dropped end
local to = skipped[#skipped][1]
if read then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], to, 'ENTRIESREAD', read + #skipped)
elseif lag then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local added = 0
  for i = 1, #info, 2 do if info[i] == 'entries-added' then added = info[i + 1] end end
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], to, 'ENTRIESREAD', added - lag + #skipped)
else
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], to)
end
return dropped + #skipped
"#;

/// Drops the `k` oldest messages a group holds (see [`DROP_OLDEST`]). Returns how many were
/// dropped.
async fn drop_oldest(
    t: &RedisTransport,
    stream: &str,
    group: &str,
    k: u64,
) -> Result<u64, PublishError> {
    // A maintained helper: EVALSHA, and SCRIPT LOAD then EVALSHA again after a NOSCRIPT.
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(DROP_OLDEST));
    let mut conn = t.inner.conn.clone();
    let dropped: u64 = SCRIPT
        .key(stream)
        .arg(group)
        .arg(k)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| broker(t, e))?;
    if dropped > 0 {
        t.inner.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::debug!(
            stream,
            group,
            dropped,
            "queue bound reached: dropped the oldest"
        );
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_live_in_their_streams_slot() {
        use dualbus_core::partition::slot_of;
        for stream in ["dualbus:md:market_data", "dualbus:md:{p3}:market_data"] {
            let key = bounds_key(stream);
            assert!(key.ends_with("#groups"), "{key}");
            assert_eq!(slot_of(key.as_bytes()), slot_of(stream.as_bytes()), "{key}");
        }
        assert_eq!(
            bounds_key("dualbus:md:market_data"),
            "{dualbus:md:market_data}#groups"
        );
    }
}
