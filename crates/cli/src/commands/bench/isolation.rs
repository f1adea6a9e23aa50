//! The isolation scenario: Engine Logic latency with the MarketData bus idle, then flooded.

use super::args::{Backend, BenchArgs};
use super::floor::RawRedis;
use super::load::{json_payload, publish_batched, publish_paced, Groups, LOGIC_TOPIC, MD_TOPIC};
use super::report::{percentile_line, percentiles, write_plot};
use super::rig::Rig;
use crate::commands::plot::{cdf_points, Line};
use anyhow::Context;
use bytes::Bytes;
use dualbus_core::{Encoding, EventKind, Mode, Priority, Topic};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn isolation_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    let n = args.messages;
    let rate = args.rate();
    let payload = json_payload(args.payload_bytes);
    let logic_kind = EventKind::StrategySignal;
    // On Redis, the raw baseline: a bare client writing entries like ours (same fields and
    // payload, built once here; only `ts` is rewritten per entry) on the Engine Logic server.
    let raw = if args.backend == Backend::Redis {
        let sample = rig.client("raw", "raw-1")?.stamp(
            logic_kind.clone(),
            Topic::new(LOGIC_TOPIC)?,
            Priority::Normal,
            Encoding::Json,
            Bytes::copy_from_slice(&payload),
        )?;
        Some(Arc::new(RawRedis {
            client: crate::commands::redis_client(&rig.cfg, &rig.cfg.logic.url)?,
            shown: dualbus_core::redact_url(&rig.cfg.logic.url),
            prefix: rig.cfg.prefix.clone(),
            fields: sample.to_wire_fields(),
            maxlen: rig.cfg.logic.maxlen,
            count: rig.cfg.delivery.batch_max,
        }))
    } else {
        None
    };
    let raw_method = format!(
        "raw baseline: a bare redis client (no dualbus code) XADDs {n} entries like ours (same \
         fields, {} B payload, ts rewritten) on a private stream of the Engine Logic server, paced \
         at {rate} msgs/s by the same pacing code; a consumer reads them with XREADGROUP COUNT {} \
         BLOCK 100 on a group of that stream and XACKs each read; XADD ts to receipt; first idle \
         (after our idle phase), then during the same dualbus flood (after our saturated phase, \
         the flood still running)",
        args.payload_bytes, rig.cfg.delivery.batch_max
    );
    let method = format!(
        "isolation: {n} strategy_signal messages x {} B on the Engine Logic bus paced at {rate} msgs/s, \
         first with the MarketData bus idle, then while one producer floods it with market_data in \
         batches of {} (a fast-mode group draining it); {} transport; latency of every message{}",
        args.payload_bytes,
        args.batch,
        args.backend_name(),
        if raw.is_some() {
            format!("; and the {raw_method}")
        } else {
            String::new()
        }
    );
    if !args.json {
        // The method is printed once, with the results.
        eprintln!("running; the method and the figures follow when it ends");
    }
    let phase = |name: &'static str| {
        let rig_ptr = rig;
        let payload = payload.clone();
        let kind = logic_kind.clone();
        async move {
            let groups = Groups::start(
                rig_ptr,
                args,
                name,
                1,
                "strategy_signal.>",
                Mode::Reliable,
                n,
                1,
                true,
            )
            .await?;
            let publisher = rig_ptr.client(name, &format!("{name}-1"))?;
            let rx = publish_paced(publisher, kind, Topic::new(LOGIC_TOPIC)?, n, rate, payload);
            groups.wait(args.json).await;
            rx.await.context("producer thread died")??;
            groups.finish().await
        }
    };
    let raw_phase = |name: &'static str| {
        let raw = raw.clone();
        let quiet = args.json;
        async move {
            let Some(raw) = raw else {
                return Ok(None);
            };
            if !quiet {
                eprintln!("raw {name}: {n} bare XADD -> XREADGROUP on the Engine Logic server");
            }
            let got = tokio::task::spawn_blocking(move || raw.phase(name, n, rate))
                .await
                .context("the raw baseline's thread died")??;
            anyhow::Ok(Some(got))
        }
    };
    let idle = phase("idle").await?;
    let raw_idle = raw_phase("idle").await?;

    // Saturate the MarketData bus.
    let flood_groups = Groups::start(
        rig,
        args,
        "flood",
        1,
        "market_data.>",
        Mode::Fast,
        1,
        1_000_000,
        true,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_bus = rig.client("flood", "flood-1")?;
    let flood = tokio::spawn(publish_batched(
        flood_bus,
        EventKind::MarketData,
        vec![Topic::new(MD_TOPIC)?],
        u64::MAX,
        args.batch,
        payload.clone(),
        Some(stop.clone()),
        Some(sent.clone()),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The flood's rate during a phase: envelopes it published then, over the phase's length.
    let flood_rate_during = |t0: Instant, sent0: u64| {
        (sent.load(Ordering::Relaxed) - sent0) as f64 / t0.elapsed().as_secs_f64()
    };
    let (t0, sent0) = (Instant::now(), sent.load(Ordering::Relaxed));
    let saturated = phase("saturated").await;
    let flood_rate = flood_rate_during(t0, sent0);
    let (t0, sent0) = (Instant::now(), sent.load(Ordering::Relaxed));
    let raw_flooded = match &saturated {
        Ok(_) => raw_phase("flooded").await,
        Err(_) => Ok(None),
    };
    let raw_flood_rate = flood_rate_during(t0, sent0);
    stop.store(true, Ordering::Relaxed);
    flood.await??;
    // Stopped and waited for, not dropped: a group still reading when the run's keys are
    // removed would recreate its stream (NOGROUP recovery) after the cleanup.
    flood_groups.finish().await?;
    let saturated = saturated?;
    let raw_flooded = raw_flooded?;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    let p99_ratio = p99(&saturated.hist) / p99(&idle.hist).max(1.0);
    let mut out = json!({
        "backend": args.backend_name(),
        "scenario": "isolation",
        "mode": "reliable",
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "rate": rate,
        "delivered": saturated.delivered,
        "lost": saturated.lost,
        "duplicated": saturated.duplicated,
        "latency_ns": percentiles(&saturated.hist),
        "idle_latency_ns": percentiles(&idle.hist),
        "idle_lost": idle.lost,
        "md_flood_msgs_per_s": flood_rate,
        "p99_ratio": p99_ratio,
    });
    let mut raw_lines = None;
    if let (Some((ri, ri_n)), Some((rf, rf_n))) = (&raw_idle, &raw_flooded) {
        let raw_ratio = p99(rf) / p99(ri).max(1.0);
        out["raw_idle_latency_ns"] = percentiles(ri);
        out["raw_latency_ns"] = percentiles(rf);
        out["raw_idle_delivered"] = json!(ri_n);
        out["raw_delivered"] = json!(rf_n);
        out["raw_md_flood_msgs_per_s"] = json!(raw_flood_rate);
        out["raw_p99_ratio"] = json!(raw_ratio);
        out["p99_ratio_vs_raw"] = json!(p99_ratio / raw_ratio);
        out["raw_method"] = json!(raw_method);
        raw_lines = Some([
            format!("raw idle   : {}", percentile_line(ri)),
            format!(
                "raw flooded: {}   (flood {raw_flood_rate:.0} msgs/s meanwhile)",
                percentile_line(rf)
            ),
            format!(
                "raw ratio  : {raw_ratio:.2} (flooded / idle, bare XADD -> XREADGROUP; received {ri_n} + {rf_n} of {n} + {n})   ours / raw: {:.2}",
                p99_ratio / raw_ratio
            ),
        ]);
    }
    if let Some(path) = &args.plot {
        let mut lines = vec![
            Line {
                name: "ours, MarketData bus idle".into(),
                points: cdf_points(&idle.hist),
            },
            Line {
                name: "ours, MarketData bus flooded".into(),
                points: cdf_points(&saturated.hist),
            },
        ];
        if let (Some((ri, _)), Some((rf, _))) = (&raw_idle, &raw_flooded) {
            lines.push(Line {
                name: "raw redis baseline, idle".into(),
                points: cdf_points(ri),
            });
            lines.push(Line {
                name: "raw redis baseline, flooded".into(),
                points: cdf_points(rf),
            });
        }
        let title = format!(
            "isolation: Engine Logic latency at {rate} msgs/s ({})",
            args.backend_name()
        );
        write_plot(path, &title, &lines, args.json)?;
    }
    if args.json {
        println!("{out}");
    } else {
        println!("method     : {method}");
        println!("idle       : {}", percentile_line(&idle.hist));
        println!("saturated  : {}", percentile_line(&saturated.hist));
        println!(
            "flood      : {flood_rate:.0} market_data msgs/s on the MarketData bus during the saturated phase"
        );
        println!(
            "p99 ratio  : {p99_ratio:.2} (saturated / idle)   lost: {} + {}   duplicated: {} + {}",
            idle.lost, saturated.lost, idle.duplicated, saturated.duplicated
        );
        for l in raw_lines.into_iter().flatten() {
            println!("{l}");
        }
    }
    Ok(())
}
