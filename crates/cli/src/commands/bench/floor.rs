//! Floors and ceilings measured in the same run as ours: the bare-channel hand-over, the raw
//! Redis client of the isolation scenario, and redis-benchmark's pipelined XADD.

use super::args::BenchArgs;
use super::load::pace;
use super::report::latency_histogram;
use super::rig::Rig;
use anyhow::{bail, Context};
use bytes::Bytes;
use dualbus_core::{now_unix_nanos, Envelope};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// The floor of a hand-over between two threads on this machine, with no bus in between: a
/// thread paced by [`pace`] (as our publisher is) sends `now_unix_nanos()` into a bounded
/// `std::sync::mpsc::sync_channel` (std: no extra crate) of `bound` slots; a consumer thread
/// busy-polls it (`try_recv`, `spin_loop`, never parks) and records publish-to-receive latency
/// in nanoseconds, on the same clock as our handlers. Blocking: run it off the runtime.
/// Returns the histogram and how many timestamps arrived.
pub(super) fn channel_floor(
    n: u64,
    rate: u64,
    bound: usize,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(bound.max(1));
    let consumer = std::thread::spawn(move || {
        let mut hist = latency_histogram();
        let mut received = 0u64;
        while received < n {
            match rx.try_recv() {
                Ok(ts) => {
                    let _ = hist.record(now_unix_nanos().saturating_sub(ts).max(1));
                    received += 1;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                // The publisher stopped (an error): what arrived is all there is.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        }
        (hist, received)
    });
    let publisher = std::thread::spawn(move || {
        pace(n, rate, |_| {
            tx.send(now_unix_nanos())
                .map_err(|_| anyhow::anyhow!("the floor's consumer thread stopped"))
        })
    });
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's publisher thread panicked"))?;
    let got = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's consumer thread panicked"))?;
    published?;
    Ok(got)
}

/// The raw Redis baseline of the isolation scenario: a bare `redis` client (no dualbus code in
/// the path) on the Engine Logic server.
pub(super) struct RawRedis {
    /// A client of the Engine Logic server (its credentials and TLS are the bus's).
    pub(super) client: redis::Client,
    /// Its address, password redacted.
    pub(super) shown: String,
    pub(super) prefix: String,
    /// The fields of an entry like ours (built once from a stamped envelope); `ts` is
    /// rewritten for every entry.
    pub(super) fields: Vec<(&'static str, Bytes)>,
    pub(super) maxlen: u64,
    pub(super) count: u64,
}

impl RawRedis {
    /// One phase: `n` XADDs on `{prefix}:raw:{phase}` paced by [`pace`] from a thread of its
    /// own (a blocking connection), read on the calling thread by `XREADGROUP ... BLOCK` on a
    /// group of that stream, every entry acknowledged (`XACK` of each read's ids) after its
    /// latency (`ts` field to receipt) is recorded. Blocking: run it off the runtime. Returns
    /// the histogram and how many entries arrived.
    pub(super) fn phase(
        &self,
        phase: &str,
        n: u64,
        rate: u64,
    ) -> anyhow::Result<(Histogram<u64>, u64)> {
        let key = format!("{}:raw:{phase}", self.prefix);
        let group = "raw";
        let client = self.client.clone();
        let mut reader = client
            .get_connection()
            .with_context(|| format!("cannot connect to the Engine Logic server {}", self.shown))?;
        reader.set_read_timeout(Some(Duration::from_secs(5)))?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query::<redis::Value>(&mut reader)?;
        let mut writer = client.get_connection()?;
        writer.set_read_timeout(Some(Duration::from_secs(5)))?;
        let fields = self.fields.clone();
        let ts_at = fields
            .iter()
            .position(|(k, _)| *k == "ts")
            .context("an entry has a ts field")?;
        let maxlen = self.maxlen;
        let xadd_key = key.clone();
        let publisher = std::thread::spawn(move || {
            pace(n, rate, |_| {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&xadd_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(maxlen)
                    .arg("*");
                for (i, (k, v)) in fields.iter().enumerate() {
                    cmd.arg(*k);
                    if i == ts_at {
                        cmd.arg(now_unix_nanos());
                    } else {
                        cmd.arg(&v[..]);
                    }
                }
                cmd.query::<redis::Value>(&mut writer)?;
                Ok(())
            })
        });
        let mut hist = latency_histogram();
        let mut received = 0u64;
        let mut last_entry = Instant::now();
        let res = (|| -> anyhow::Result<()> {
            while received < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg("raw-1")
                    .arg("COUNT")
                    .arg(self.count)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query(&mut reader)?;
                let mut ids = Vec::new();
                for stream in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in stream.ids {
                        let now = now_unix_nanos();
                        if let Some(ts) = entry.get::<u64>("ts") {
                            let _ = hist.record(now.saturating_sub(ts).max(1));
                        }
                        ids.push(entry.id);
                    }
                }
                if ids.is_empty() {
                    // Every XADD was answered and nothing more came: the publisher failed.
                    if publisher.is_finished() || last_entry.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    continue;
                }
                received += ids.len() as u64;
                last_entry = Instant::now();
                redis::cmd("XACK")
                    .arg(&key)
                    .arg(group)
                    .arg(&ids)
                    .query::<redis::Value>(&mut reader)?;
            }
            Ok(())
        })();
        let published = publisher
            .join()
            .map_err(|_| anyhow::anyhow!("the raw publisher thread panicked"))?;
        published.context("raw XADD")?;
        res.context("raw XREADGROUP")?;
        Ok((hist, received))
    }
}

/// The raw rate of pipelined `XADD`s of an entry like ours, measured with `redis-benchmark`
/// against the MarketData server.
pub(super) fn xadd_ceiling(
    args: &BenchArgs,
    rig: &Rig,
    sample: &Envelope,
    n: u64,
) -> anyhow::Result<f64> {
    let cluster = dualbus_redis::is_cluster_url(&rig.cfg.md.url);
    let url = if cluster {
        // Its first node; redis-benchmark --cluster finds the others.
        dualbus_redis::cluster::seed_urls(&rig.cfg.md.url)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .remove(0)
    } else {
        rig.cfg.md.url.clone()
    };
    let client = redis::Client::open(url.as_str())?;
    let info = client.get_connection_info();
    let mut cmd = std::process::Command::new("redis-benchmark");
    if cluster {
        cmd.arg("--cluster");
    }
    match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => {
            cmd.args(["-h", h, "-p", &p.to_string()]);
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            // The same TLS as the bus's connections: the CA and client certificate of [tls].
            cmd.args(["-h", host, "-p", &port.to_string(), "--tls"]);
            let t = &rig.cfg.tls;
            for (flag, file) in [
                ("--cacert", &t.ca_file),
                ("--cert", &t.cert_file),
                ("--key", &t.key_file),
            ] {
                if let Some(f) = file {
                    cmd.arg(flag).arg(f);
                }
            }
        }
        other => bail!("the ceiling needs a TCP address, not {other:?}"),
    }
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        // As the bus's user (the `admin` of `redis up`'s users). redis-benchmark takes the
        // password on its command line only (it reads no environment variable for it), so it
        // is visible to `ps` on this machine while the ceiling runs (a few seconds).
        if let Some(user) = settings.username() {
            cmd.args(["--user", user]);
        }
        cmd.args(["-a", password]);
    }
    // On a cluster, redis-benchmark puts each client on a master and replaces `{tag}` with a
    // hash tag of that master's slots: the ceiling of all the masters together.
    let key = if cluster {
        format!("{}:ceiling:{{tag}}", rig.cfg.prefix)
    } else {
        format!("{}:ceiling", rig.cfg.prefix)
    };
    cmd.args(["-n", &n.to_string()])
        .args(["-P", &args.ceiling_pipeline.to_string()])
        .args(["-c", &args.ceiling_clients.to_string()])
        .arg("--csv")
        .args([
            "XADD",
            &key,
            "MAXLEN",
            "~",
            &rig.cfg.md.maxlen.to_string(),
            "*",
        ]);
    for (k, v) in sample.to_wire_fields() {
        cmd.arg(k).arg(String::from_utf8_lossy(&v).into_owned());
    }
    let out = cmd.output().context(
        "cannot run redis-benchmark (it comes with redis-server: apt-get install redis-server)",
    )?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: a header line, then "XADD ...","<rps>",...
    text.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| {
            l.split("\",\"")
                .nth(1)
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        })
        .with_context(|| format!("cannot read redis-benchmark's output: {text}"))
}
