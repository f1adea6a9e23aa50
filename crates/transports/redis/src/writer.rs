//! The writer: one task owns the publishing connection and sends whatever is queued as one
//! pipeline per round trip. Nothing waits for a batch to fill and no timer is involved: while a
//! pipeline is in flight, new jobs queue up and form the next one.

use crate::Inner;
use dualbus_core::transport::StreamKey;
use dualbus_core::{Envelope, PublishError};
use redis::aio::ConnectionManager;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Most entries in one pipeline.
const MAX_PIPELINE: usize = 4096;

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
                        // The transport is gone and the broker does not take the rest: say
                        // how many are lost (no counter outlives the transport).
                        let mut lost: usize = jobs.iter().map(|j| j.batch.len()).sum();
                        rx.close();
                        while let Ok(j) = rx.try_recv() {
                            lost += j.batch.len();
                        }
                        tracing::error!(
                            bus = %orphan.bus,
                            lost,
                            error = %why,
                            "the transport was dropped with messages queued and the broker did \
                             not take them within {:?}: lost (flush before dropping a client)",
                            orphan.drain
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
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
