//! The stall scenario: a reliable group that never handles anything stays bounded.

use super::args::{BenchArgs, ModeArg};
use super::load::{json_payload, MD_TOPIC};
use super::report::peak_rss_bytes;
use super::rig::Rig;
use anyhow::bail;
use bytes::Bytes;
use dualbus_bus::{BusId, Handler, HandlerError, SubscribeOptions};
use dualbus_core::{Encoding, Envelope, EventKind, Mode, Priority, Topic};
use serde_json::json;
use std::future::Future;
use std::time::{Duration, Instant};

/// A handler that never finishes: the group stalls with its first batch in hand.
pub(super) struct Stalled;

impl Handler for Stalled {
    fn handle(&self, _m: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::pending()
    }
}

pub(super) async fn stall_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    if args.mode == ModeArg::Fast {
        bail!("the stall scenario measures a reliable group; drop --mode fast");
    }
    let n = args.messages;
    let consumer = rig.client("stalled", "stalled-1")?;
    let opts = SubscribeOptions::new("stalled", &["market_data.>"])?
        .mode(Mode::Reliable)
        .bound(args.queue_bound, args.policy());
    let _sub = consumer.subscribe(opts, Stalled).await?;
    let publisher = rig.client("bench", "bench-1")?;
    let payload = json_payload(args.payload_bytes);
    let topic = Topic::new(MD_TOPIC)?;
    let (mut accepted, mut rejected, mut blocked) = (0u64, 0u64, false);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut i = 0u64;
    let mut first_error = None;
    while i < n {
        let k = (args.batch as u64).min(n - i) as usize;
        let mut envs = Vec::with_capacity(k);
        for _ in 0..k {
            envs.push(publisher.stamp(
                EventKind::MarketData,
                topic.clone(),
                Priority::Normal,
                Encoding::Json,
                Bytes::copy_from_slice(&payload),
            )?);
        }
        match tokio::time::timeout(Duration::from_secs(1), publisher.publish_batch(envs)).await {
            Err(_) => {
                blocked = true;
                break;
            }
            Ok(Ok(())) => accepted += k as u64,
            Ok(Err(e)) => {
                rejected += k as u64;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        i += k as u64;
        if !args.json && last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  {i} / {n} attempted");
            last_report = Instant::now();
        }
    }
    let dropped = rig.md.stats().dropped;
    let retained = rig
        .stream_len(BusId::MarketData, &EventKind::MarketData)
        .await?;
    let out = json!({
        "backend": args.backend_name(),
        "scenario": "stall",
        "mode": "reliable",
        "policy": args.policy_name(),
        "queue_bound": args.queue_bound,
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "attempted": i,
        "accepted": accepted,
        "rejected": rejected,
        "dropped": dropped,
        "blocked": blocked,
        "retained_in_stream": retained,
        "duration_s": start.elapsed().as_secs_f64(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("method     : publish {n} x {} B in batches of {} at a reliable group that never acknowledges; queue bound {}, policy {}; {} transport",
            args.payload_bytes, args.batch, args.queue_bound, args.policy_name(), args.backend_name());
        println!(
            "attempted  : {i}   accepted: {accepted}   rejected: {rejected}   dropped: {dropped}"
        );
        println!(
            "blocked    : {blocked}{}",
            if blocked {
                " (a publish waited over 1 s for room: the publisher is held at the bound)"
            } else {
                ""
            }
        );
        println!("retained   : {retained} entries in the stream");
        if let Some(e) = first_error {
            println!("first error: {e}");
        }
        println!(
            "peak RSS   : {:.1} MiB (this process)",
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
