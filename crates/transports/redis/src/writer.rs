//! The writer: one task owns the publishing connection and sends whatever is queued as one
//! pipeline per round trip. Nothing waits for a batch to fill and no timer is involved: while a
//! pipeline is in flight, new jobs queue up and form the next one.

use crate::{reply, Inner};
use dualbus_core::transport::StreamKey;
use dualbus_core::{Envelope, PublishError};
use redis::aio::ConnectionManager;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Most entries in one pipeline.
const MAX_PIPELINE: usize = 4096;

/// Most entries a check of what a failed pipeline wrote looks at per stream, back from the end
/// to the last entry the broker confirmed (past it, what was not found is written again:
/// possibly twice, which consumers drop as duplicates).
const CHECK_LIMIT: usize = 200_000;
/// The same for a stream the writer has no confirmed entry of yet (at least four times the
/// entries looked for).
const CHECK_LIMIT_UNKNOWN: usize = 8_192;
/// Entries per page of that check.
const CHECK_PAGE: usize = 1024;

/// Envelopes to append to one stream; `done` is answered once they are written (confirmed
/// publishes and flushes).
pub(crate) struct Job {
    pub stream: StreamKey,
    pub batch: Vec<Envelope>,
    pub done: Option<oneshot::Sender<Result<(), PublishError>>>,
    /// Room in the outgoing queue, released once written.
    pub _permits: Option<OwnedSemaphorePermit>,
}

/// Waits until every job queued before this call was written (or failed).
pub(crate) async fn flush(inner: &Inner) -> Result<(), PublishError> {
    let (tx, rx) = oneshot::channel();
    inner
        .writer
        .send(Job {
            stream: StreamKey::from(""),
            batch: Vec::new(),
            done: Some(tx),
            _permits: None,
        })
        .await
        .map_err(|_| PublishError::Closed)?;
    rx.await.map_err(|_| PublishError::Closed)?
}

fn pipeline(jobs: &[Job], maxlen: u64) -> (redis::Pipeline, usize) {
    let mut pipe = redis::pipe();
    // Per-command results: one bad entry (WRONGTYPE, OOM at maxmemory) must not fail the rest.
    pipe.ignore_errors();
    let mut n = 0;
    let mut id = String::new();
    for job in jobs {
        for env in &job.batch {
            let cmd = pipe
                .cmd("XADD")
                .arg(&*job.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(maxlen)
                .arg("*");
            // The fields of `Envelope::to_wire_fields`, written straight into the command
            // (no intermediate strings per field).
            id.clear();
            let _ = write!(id, "{}:{}:{}", env.src, env.inst, env.seq);
            cmd.arg("v")
                .arg("1")
                .arg("id")
                .arg(id.as_str())
                .arg("kind")
                .arg(env.kind.as_str())
                .arg("topic")
                .arg(env.topic.as_str())
                .arg("src")
                .arg(&*env.src)
                .arg("inst")
                .arg(&*env.inst)
                .arg("seq")
                .arg(env.seq)
                .arg("ts")
                .arg(env.ts)
                .arg("prio")
                .arg(env.prio.as_str())
                .arg("enc")
                .arg(env.enc.as_str());
            if let Some(c) = &env.corr {
                cmd.arg("corr").arg(&**c);
            }
            if let Some(r) = &env.reply {
                cmd.arg("reply").arg(&**r);
            }
            cmd.arg("payload").arg(&env.payload[..]);
            n += 1;
        }
    }
    (pipe, n)
}

/// A message in a stream: (stream, src, inst, seq).
type Written = (StreamKey, std::sync::Arc<str>, std::sync::Arc<str>, u64);

/// Which entries of `jobs` are on their streams already. Per stream, reads back from the end
/// (`XREVRANGE`) down to the last entry the broker confirmed to this writer, at most
/// `CHECK_LIMIT` entries (`CHECK_LIMIT_UNKNOWN` when none was confirmed yet), matching the
/// entries' `src`, `inst` and `seq` fields. What a failed write did append is at the end.
async fn written_anyway(
    conn: &mut ConnectionManager,
    jobs: &[Job],
    last_ids: &HashMap<StreamKey, Vec<u8>>,
) -> redis::RedisResult<HashSet<Written>> {
    // Per stream, per seq: the sources of the entries looked for.
    type Sources = Vec<(std::sync::Arc<str>, std::sync::Arc<str>)>;
    let mut wanted: HashMap<StreamKey, HashMap<u64, Sources>> = HashMap::new();
    for job in jobs.iter().filter(|j| !j.batch.is_empty()) {
        let w = wanted.entry(job.stream.clone()).or_default();
        for e in &job.batch {
            w.entry(e.seq)
                .or_default()
                .push((e.src.clone(), e.inst.clone()));
        }
    }
    let mut found = HashSet::new();
    for (stream, mut want) in wanted {
        let mut left: usize = want.values().map(Vec::len).sum();
        let (floor, limit) = match last_ids.get(&stream) {
            Some(id) => ([&b"("[..], id].concat(), CHECK_LIMIT),
            None => (b"-".to_vec(), CHECK_LIMIT_UNKNOWN.max(4 * left)),
        };
        let mut top = b"+".to_vec();
        let mut seen = 0;
        while left > 0 && seen < limit {
            let v: redis::Value = redis::cmd("XREVRANGE")
                .arg(&*stream)
                .arg(&top[..])
                .arg(&floor[..])
                .arg("COUNT")
                .arg(CHECK_PAGE)
                .query_async(conn)
                .await?;
            let page = reply::entries(v).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Parse, "XREVRANGE reply", e))
            })?;
            let Some(end) = page.last() else { break };
            top = [&b"("[..], &end.raw_id[..]].concat();
            seen += page.len();
            for entry in &page {
                let field = |name: &[u8]| {
                    entry
                        .fields
                        .iter()
                        .find(|(k, _)| &k[..] == name)
                        .map(|(_, v)| &v[..])
                };
                let seq = field(b"seq")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let (Some(seq), Some(src), Some(inst)) = (seq, field(b"src"), field(b"inst"))
                else {
                    continue;
                };
                let Some(sources) = want.get_mut(&seq) else {
                    continue;
                };
                if let Some(k) = sources
                    .iter()
                    .position(|(s, i)| s.as_bytes() == src && i.as_bytes() == inst)
                {
                    let (s, i) = sources.swap_remove(k);
                    found.insert((stream.clone(), s, i, seq));
                    left -= 1;
                }
            }
            if page.len() < CHECK_PAGE {
                break;
            }
        }
    }
    Ok(found)
}

/// Whether an error asking the broker may clear by itself (an outage, a frozen or loading
/// broker), so the question is asked again, rather than one that will not (a key of another
/// type, a cluster node that lost the slot, an ACL refusal, a reply that does not parse).
fn transient(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN")
        )
}

/// Whether a Redis error is a refusal by an ACL (`NOPERM`).
pub(crate) fn is_noperm(error: &str) -> bool {
    // A command a script calls is refused with a plain error (`ERR The user executing the
    // script can't run this command ...`), not `NOPERM`.
    error.to_ascii_uppercase().starts_with("NOPERM")
        || error.contains("user executing the script can't run")
}

/// Why the broker refused `env` on `stream`, naming the publisher and the kind; a refusal by a
/// Redis ACL (`NOPERM`) also says which rule.
pub(crate) fn refusal(bus: &str, stream: &str, env: &Envelope, error: &str) -> String {
    let rule = if is_noperm(error) {
        format!(
            " (the Redis user of {} may not append to {stream}: with `dualbus redis up`'s users \
             an engine appends only the kinds it declares, see docs/security.md)",
            env.src
        )
    } else {
        String::new()
    };
    format!(
        "the {bus} bus refused {} from {} ({}) on {stream}: {error}{rule}",
        env.kind, env.src, env.inst
    )
}

/// What the writer needs once its transport is dropped: it goes on writing what was queued
/// (for at most `drain` once writes fail), then says how many it could not write.
pub(crate) struct Orphan {
    pub maxlen: u64,
    pub bus: String,
    pub drain: Duration,
    /// Dropped when the writer ends: the transport's thread waits for it.
    pub _done: oneshot::Sender<()>,
}

pub(crate) async fn run(
    mut rx: mpsc::Receiver<Job>,
    mut conn: ConnectionManager,
    inner: Weak<Inner>,
    orphan: Orphan,
) {
    let mut jobs: Vec<Job> = Vec::new();
    // Per stream, the id of the last entry the broker said it appended for this writer: where
    // a check of what a failed pipeline wrote starts.
    let mut last_ids: HashMap<StreamKey, Vec<u8>> = HashMap::new();
    // Whether a check that cannot be made (see `transient`) was logged.
    let mut check_warned = false;
    // Set when the transport is found dropped: from then on, failed writes are retried until
    // `orphan.drain` has passed.
    let mut orphaned_at: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut count = first.batch.len();
        jobs.push(first);
        while count < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(j) => {
                    count += j.batch.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(10);
        loop {
            // The transport may be gone with messages still queued: they are written all the
            // same (nothing but this task knows of them).
            let shared = inner.upgrade();
            if shared.is_none() && orphaned_at.is_none() {
                orphaned_at = Some(std::time::Instant::now());
            }
            let (pipe, n) = pipeline(&jobs, orphan.maxlen);
            let res = if n == 0 {
                // Only flushes: exercise the connection, so a flush also proves it works.
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map(|()| Vec::new())
            } else {
                pipe.query_async::<Vec<redis::Value>>(&mut conn).await
            };
            match res {
                Ok(results) => {
                    if let Some(shared) = &shared {
                        shared.note_answer();
                        shared.mark(true);
                    }
                    // Answer each job with its own entries' outcome.
                    let mut k = 0;
                    for job in jobs.drain(..) {
                        let mut failed = None;
                        for env in &job.batch {
                            if let Some(redis::Value::ServerError(e)) = results.get(k) {
                                failed.get_or_insert_with(|| {
                                    refusal(&orphan.bus, &job.stream, env, &e.to_string())
                                });
                                if let Some(shared) = &shared {
                                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            k += 1;
                        }
                        // The last entry appended to the stream for this job.
                        let appended = results.get(k - job.batch.len()..k).unwrap_or_default();
                        if let Some(id) = appended.iter().rev().find_map(|r| match r {
                            redis::Value::BulkString(id) => Some(id),
                            _ => None,
                        }) {
                            match last_ids.get_mut(&job.stream) {
                                Some(last) => {
                                    last.clear();
                                    last.extend_from_slice(id);
                                }
                                None => {
                                    last_ids.insert(job.stream.clone(), id.clone());
                                }
                            }
                        }
                        if let Some(why) = &failed {
                            tracing::error!(error = %why, "the broker refused entries; they are counted as refused");
                        }
                        if let Some(done) = job.done {
                            let _ = done.send(match failed {
                                None => Ok(()),
                                Some(why) => Err(PublishError::Broker(why)),
                            });
                        }
                    }
                    break;
                }
                Err(e) => {
                    let why = match &shared {
                        Some(shared) => {
                            shared.mark(false);
                            shared.describe(&e)
                        }
                        None => format!("{} bus: {e}", orphan.bus),
                    };
                    tracing::warn!(error = %why, entries = n, "publishing failed; queued messages will be retried");
                    // Confirmed publishes learn of the failure at once (their callers decide);
                    // queued ones were promised delivery and are retried with backoff.
                    jobs.retain_mut(|j| match j.done.take() {
                        Some(done) => {
                            let _ = done.send(Err(PublishError::Unavailable(why.clone())));
                            false
                        }
                        None => true,
                    });
                    drop(shared);
                    if jobs.is_empty() {
                        break;
                    }
                    if orphaned_at.is_some_and(|at| at.elapsed() >= orphan.drain) {
                        give_up(&mut rx, &jobs, &orphan, &why);
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    if n == 0 {
                        continue;
                    }
                    // An answer that did not come in time may be a write the broker made all
                    // the same (a frozen or swamped broker answers late): what it has is not
                    // sent again. Asked on the same connection, after the failed pipeline, and
                    // nothing is sent again until the broker answers the question: a retry
                    // queued behind a frozen broker's late answer would be written twice.
                    let found = loop {
                        match written_anyway(&mut conn, &jobs, &last_ids).await {
                            Ok(found) => {
                                // The broker answers again.
                                if let Some(shared) = inner.upgrade() {
                                    shared.note_answer();
                                    shared.mark(true);
                                }
                                break found;
                            }
                            Err(e) if transient(&e) => {
                                if inner.upgrade().is_none() && orphaned_at.is_none() {
                                    orphaned_at = Some(std::time::Instant::now());
                                }
                                if orphaned_at.is_some_and(|at| at.elapsed() >= orphan.drain) {
                                    give_up(&mut rx, &jobs, &orphan, &e.to_string());
                                    return;
                                }
                                tracing::debug!(bus = %orphan.bus, error = %e, "asking what a failed pipeline wrote failed; asking again");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_millis(100));
                            }
                            // One that will not clear by itself (an ACL from before the check,
                            // a key of another type): the write is sent again whole, as before
                            // the check; consumers drop what they get twice.
                            Err(e) => {
                                if !check_warned {
                                    check_warned = true;
                                    tracing::warn!(bus = %orphan.bus, error = %e, "cannot ask what a failed pipeline wrote: sending it again whole, so consumers may get duplicates, which they drop (`dualbus redis acl` writes rules that allow the check: XREVRANGE)");
                                }
                                break HashSet::new();
                            }
                        }
                    };
                    if !found.is_empty() {
                        let mut dropped = 0;
                        for job in jobs.iter_mut() {
                            let before = job.batch.len();
                            job.batch.retain(|e| {
                                !found.contains(&(
                                    job.stream.clone(),
                                    e.src.clone(),
                                    e.inst.clone(),
                                    e.seq,
                                ))
                            });
                            dropped += before - job.batch.len();
                        }
                        jobs.retain(|j| !j.batch.is_empty() || j.done.is_some());
                        tracing::info!(
                            bus = %orphan.bus,
                            entries = dropped,
                            "the broker had written entries whose answer came too late: not sent again"
                        );
                        if jobs.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// The transport is gone and the broker does not take the rest: says how many are lost (no
/// counter outlives the transport).
fn give_up(rx: &mut mpsc::Receiver<Job>, jobs: &[Job], orphan: &Orphan, why: &str) {
    let mut lost: usize = jobs.iter().map(|j| j.batch.len()).sum();
    rx.close();
    while let Ok(j) = rx.try_recv() {
        lost += j.batch.len();
    }
    tracing::error!(
        bus = %orphan.bus,
        lost,
        error = %why,
        "the transport was dropped with messages queued and the broker did not take them \
         within {:?}: lost (flush before dropping a client)",
        orphan.drain
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_core::{Encoding, EventKind, Priority, Topic};

    /// Refusals by an ACL, of a command or of a command a script calls (the text Redis 7
    /// answers with), are told apart from other errors.
    #[test]
    fn acl_refusals_are_recognised() {
        assert!(is_noperm(
            "NoPerm: this user has no permissions to access one of the keys"
        ));
        assert!(is_noperm(
            "ResponseError: The user executing the script can't run this command or \
             subcommand script: 897afd4d, on @user_script:1."
        ));
        assert!(!is_noperm(
            "ResponseError: WRONGTYPE Operation against a key"
        ));
    }

    /// The writer's fields are exactly `Envelope::to_wire_fields`, in the same order.
    #[test]
    fn command_matches_the_wire_contract() {
        let env = Envelope::builder(
            EventKind::RiskAlert,
            Topic::new("risk_alert.BTC").unwrap(),
            "risk",
            "risk-1",
        )
        .seq(7)
        .prio(Priority::Critical)
        .payload(Encoding::Json, bytes_of(br#"{"a":1}"#))
        .corr("c-1")
        .reply("dualbus:logic:reply:x")
        .build();
        let job = Job {
            stream: StreamKey::from("k"),
            batch: vec![env.clone()],
            done: None,
            _permits: None,
        };
        let (pipe, n) = pipeline(std::slice::from_ref(&job), 100);
        assert_eq!(n, 1);
        let mut expected = redis::cmd("XADD");
        expected
            .arg("k")
            .arg("MAXLEN")
            .arg("~")
            .arg(100u64)
            .arg("*");
        for (k, v) in env.to_wire_fields() {
            expected.arg(k).arg(&v[..]);
        }
        assert_eq!(pipe.get_packed_pipeline(), expected.get_packed_command());
    }

    fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(b)
    }
}
