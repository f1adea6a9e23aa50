//! `dualbus tail PATTERN`: print messages from the Redis buses as they arrive.

use super::{inspect, runtime, Global, BUSES};
use clap::Args;
use dualbus_bus::{Handler, HandlerError, SubscribeOptions};
use dualbus_core::{Envelope, Mode, StartFrom};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// Arguments of `dualbus tail`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Examples:
  dualbus tail 'risk_alert.>'
  dualbus tail 'market_data.trade.*' --count 10 --json
  dualbus tail '>' --from-start
  dualbus tail 'risk_alert.>' --since 15m
  dualbus tail 'trade_execution.>' --since 2026-12-05T09:30:00Z")]
pub struct TailArgs {
    /// Topic pattern: segments separated by dots, `*` for one segment, `>` for the rest; the
    /// first segment names the kind (`risk_alert.>`); a wildcard there reads every kind.
    pattern: String,
    /// Read as a consumer of this group (acknowledging like an engine would). Without it, tail
    /// uses a private group that does not hold anything back and is removed on exit.
    #[arg(long)]
    group: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line: every wire field and the decoded payload.
    #[arg(long)]
    json: bool,
    /// Start from the oldest entry the streams hold (for a new group).
    #[arg(long, conflicts_with = "since")]
    from_start: bool,
    /// Start from what the streams hold from this time on (for a new group): a duration ago
    /// (`15m`, `2h`, `1d`) or a time (RFC 3339, `2026-12-05T09:30:00Z`). On Redis by the
    /// broker's clock (stream ids are its milliseconds).
    #[arg(long, value_parser = parse_since)]
    since: Option<u64>,
}

/// `--since`: a duration ago or an RFC 3339 time, as Unix milliseconds (read by the
/// `humantime` crate).
fn parse_since(s: &str) -> Result<u64, String> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{s:?} ago is before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is neither a duration (15m, 2h) nor a time (2026-12-05T09:30:00Z)")
        })?,
    };
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

struct Forward(mpsc::Sender<Envelope>);

impl Handler for Forward {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let tx = self.0.clone();
        let msg = msg.clone();
        async move {
            tx.send(msg)
                .await
                .map_err(|_| HandlerError::from("tail is exiting"))
        }
    }
}

/// `HH:MM:SS.micros` (UTC) of a Unix-nanosecond timestamp.
fn clock(ts: u64) -> String {
    let secs = ts / 1_000_000_000;
    let micros = (ts % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn line(e: &Envelope) -> String {
    let payload = match e.enc.to_json_value(&e.payload) {
        Ok(v) => v.to_string(),
        Err(err) => format!("<{err}>"),
    };
    format!(
        "{} {:<18} {:<32} {:<28} {:<8} {}",
        clock(e.ts),
        e.kind.as_str(),
        e.topic.as_str(),
        e.id(),
        e.prio.as_str(),
        payload
    )
}

/// Runs `dualbus tail`.
pub fn run(args: TailArgs, global: &Global) -> anyhow::Result<()> {
    let cfg = global.redis_config()?;
    let private = args.group.is_none();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("tail-{}", std::process::id()));
    runtime(2)?.block_on(async move {
        let bus = super::connect_buses("tail", cfg.clone()).await?;
        let mut opts = SubscribeOptions::new(&group, &[&args.pattern])?.start(
            match (args.from_start, args.since) {
                (true, _) => StartFrom::Oldest,
                (_, Some(ms)) => StartFrom::Time(ms),
                _ => StartFrom::Newest,
            },
        );
        if private {
            // A private group never holds publishers back: no bound, no acknowledgements.
            opts = opts.mode(Mode::Fast).lag_limit(u64::MAX / 2);
        }
        let (tx, mut rx) = mpsc::channel(1024);
        let sub = bus.subscribe(opts, Forward(tx)).await?;
        if !args.json {
            eprintln!("tailing {} as group {group} (Ctrl-C to stop)", args.pattern);
        }
        let mut seen = 0u64;
        let mut stop = super::stop::StopSignal::new()?;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stop.recv() => None,
            };
            let Some(msg) = msg else { break };
            if args.json {
                println!("{}", msg.to_json());
            } else {
                println!("{}", line(&msg));
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        drop(rx);
        sub.stop().await;
        if private {
            remove_group(&cfg, &group).await;
        }
        Ok(())
    })
}

/// Removes a private group from every stream of both buses (best effort).
async fn remove_group(cfg: &dualbus_bus::Config, group: &str) {
    for (bus, _) in BUSES {
        let Ok(conns) = inspect::connect_nodes(cfg, bus, Duration::from_secs(2)).await else {
            continue;
        };
        for mut conn in conns {
            let Ok(streams) = inspect::streams(&mut conn, &cfg.prefix).await else {
                continue;
            };
            for s in streams
                .iter()
                .filter(|s| s.groups.iter().any(|g| g.name == group))
            {
                let _ = redis::cmd("XGROUP")
                    .arg("DESTROY")
                    .arg(&s.key)
                    .arg(group)
                    .query_async::<()>(&mut conn)
                    .await;
            }
        }
    }
}
