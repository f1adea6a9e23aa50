//! The throughput, fanout and latency scenarios.

use super::args::{Backend, BenchArgs, Scenario};
use super::floor::{channel_floor, xadd_ceiling};
use super::load::{
    json_payload, partition_topics, publish_batched, publish_paced, Groups, MD_TOPIC,
};
use super::report::{percentile_line, percentiles, write_plot};
use super::rig::Rig;
use crate::commands::plot::{cdf_points, Line};
use anyhow::Context;
use bytes::Bytes;
use dualbus_core::{Encoding, EventKind, Priority, Topic};
use serde_json::json;
use std::time::Instant;

pub(super) async fn delivery_bench(args: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    let n = args.messages;
    let groups = if args.scenario == Scenario::Fanout {
        args.groups
    } else {
        1
    };
    // Latency runs, and fan-out runs given a --rate, are paced one message at a time.
    let latency = args.scenario == Scenario::Latency
        || (args.scenario == Scenario::Fanout && args.rate.is_some());
    // Paced runs record every message; batch runs every 16th, so that measuring costs the
    // handler little.
    let sample_every = if latency { 1 } else { 16 };
    let consumers = Groups::start(
        rig,
        args,
        "bench",
        groups,
        "market_data.>",
        args.mode(),
        n,
        sample_every,
        false,
    )
    .await?;
    let publisher = rig.client("bench", "bench-1")?;
    let payload = json_payload(args.payload_bytes);
    let topic = Topic::new(MD_TOPIC)?;
    let topics = partition_topics(&rig.cfg)?;
    // The latency scenario also measures the floor, after ours (see `channel_floor`).
    let floor = args.scenario == Scenario::Latency;
    let floor_method = format!(
        "floor, run after ours (not concurrently): the same paced publisher thread (same pacing \
         code, 1 µs timer slack) sends now_unix_nanos() into a std::sync::mpsc::sync_channel of \
         {} slots, read by a thread that busy-polls try_recv and never parks; {n} timestamps at \
         {} msgs/s; publish-to-receive latency of every one",
        args.queue_bound,
        args.rate()
    );
    let method = format!(
        "{} {} messages x {} B through DualBus::{} -> {} transport -> handler; {} group(s); {} mode; {}{}",
        args.scenario.name(),
        n,
        args.payload_bytes,
        if latency { "publish_envelope" } else { "publish_batch" },
        args.backend_name(),
        groups,
        args.mode_name(),
        if latency {
            format!("paced at {} msgs/s; latency of every message", args.rate())
        } else if topics.len() > 1 {
            format!(
                "batches of {}, round robin over {} symbols, one per partition of [md] \
                 partitions; latency of every 16th message",
                args.batch,
                topics.len()
            )
        } else {
            format!("batches of {}; latency of every 16th message", args.batch)
        },
        if floor {
            format!("; then the {floor_method}")
        } else {
            String::new()
        }
    );
    if !args.json {
        // The method is printed once, with the results.
        eprintln!("running; the method and the figures follow when it ends");
    }
    let start = Instant::now();
    let producer = if latency {
        let rx = publish_paced(
            publisher.clone(),
            EventKind::MarketData,
            topic,
            n,
            args.rate(),
            payload.clone(),
        );
        tokio::spawn(async move { rx.await.context("producer thread died")? })
    } else {
        let bus = publisher.clone();
        let batch = args.batch;
        let p = payload.clone();
        tokio::spawn(async move {
            publish_batched(bus, EventKind::MarketData, topics, n, batch, p, None, None)
                .await
                .map(|_| ())
        })
    };
    consumers.wait(args.json).await;
    producer.await??;
    let publish_end = Instant::now();
    let s = consumers.finish().await?;
    let end = s.last_at.unwrap_or(publish_end);
    let duration = end.duration_since(start).as_secs_f64();
    let throughput = n as f64 / duration;
    let mut out = json!({
        "backend": args.backend_name(),
        "scenario": args.scenario.name(),
        "mode": args.mode_name(),
        "messages": n,
        "payload_bytes": args.payload_bytes,
        "duration_s": duration,
        "throughput_msgs_per_s": throughput,
        "delivered": s.delivered,
        "lost": s.lost,
        "duplicated": s.duplicated,
        "latency_ns": percentiles(&s.hist),
    });
    if args.scenario == Scenario::Fanout {
        out["groups"] = json!(groups);
    }
    let mut floor_lines = None;
    let mut floor_hist = None;
    if floor {
        if !args.json {
            eprintln!(
                "floor: {n} timestamps over a sync_channel at {} msgs/s",
                args.rate()
            );
        }
        let (rate, bound) = (args.rate(), args.queue_bound);
        let (fh, received) = tokio::task::spawn_blocking(move || channel_floor(n, rate, bound))
            .await
            .context("the floor's thread died")??;
        let p50 = s.hist.value_at_quantile(0.50) as f64 / fh.value_at_quantile(0.50).max(1) as f64;
        let p99 = s.hist.value_at_quantile(0.99) as f64 / fh.value_at_quantile(0.99).max(1) as f64;
        out["baseline_latency_ns"] = percentiles(&fh);
        out["baseline_delivered"] = json!(received);
        out["baseline_method"] = json!(floor_method);
        out["p50_vs_baseline"] = json!(p50);
        out["p99_vs_baseline"] = json!(p99);
        floor_lines = Some([
            format!(
                "floor      : {} paced thread -> sync_channel -> busy-polling thread ({received} of {n} received)",
                percentile_line(&fh)
            ),
            format!("vs floor   : p50 x{p50:.2}   p99 x{p99:.2} (ours / floor)"),
        ]);
        floor_hist = Some(fh);
    }
    if let Some(path) = &args.plot {
        let mut lines = vec![Line {
            name: format!("ours: publish -> handler ({})", args.backend_name()),
            points: cdf_points(&s.hist),
        }];
        if let Some(fh) = &floor_hist {
            lines.push(Line {
                name: "floor: thread -> sync_channel -> thread".into(),
                points: cdf_points(fh),
            });
        }
        let title = format!(
            "{}: publish-to-handler latency, {} messages at {}",
            args.scenario.name(),
            n,
            if latency {
                format!("{} msgs/s", args.rate())
            } else {
                format!("full speed (every 16th message), batches of {}", args.batch)
            }
        );
        write_plot(path, &title, &lines, args.json)?;
    }
    let mut ceiling_line = None;
    if args.scenario == Scenario::Throughput && args.backend == Backend::Redis {
        let sample = publisher.stamp(
            EventKind::MarketData,
            Topic::new(MD_TOPIC)?,
            Priority::Normal,
            Encoding::Json,
            Bytes::copy_from_slice(&payload),
        )?;
        let ceiling = xadd_ceiling(args, rig, &sample, n.min(2_000_000))?;
        out["ceiling_msgs_per_s"] = json!(ceiling);
        out["ratio_to_ceiling"] = json!(throughput / ceiling);
        out["ceiling_method"] = json!(format!(
            "redis-benchmark -P {} -c {} XADD MAXLEN ~ {} with the same {} fields, on {}",
            args.ceiling_pipeline,
            args.ceiling_clients,
            rig.cfg.md.maxlen,
            sample.to_wire_fields().len(),
            if dualbus_redis::is_cluster_url(&rig.cfg.md.url) {
                "every master of the MarketData cluster (--cluster, a key per master)"
            } else {
                "the MarketData server"
            }
        ));
        ceiling_line = Some(format!(
            "ceiling    : {ceiling:.0} XADD/s raw (redis-benchmark -P {} -c {}, same entry); ours = {:.1}% of it",
            args.ceiling_pipeline,
            args.ceiling_clients,
            100.0 * throughput / ceiling
        ));
    }
    if args.json {
        println!("{out}");
    } else {
        println!("method     : {method}");
        println!("duration   : {duration:.3} s (first publish to last delivery)");
        println!(
            "throughput : {:.0} msgs/s{}",
            throughput,
            if groups > 1 {
                format!(
                    " delivered to each of {groups} groups ({:.0} deliveries/s)",
                    throughput * groups as f64
                )
            } else {
                String::new()
            }
        );
        if let Some(l) = ceiling_line {
            println!("{l}");
        }
        println!(
            "delivered  : {}   lost: {}   duplicated: {}",
            s.delivered, s.lost, s.duplicated
        );
        println!(
            "latency    : {} publish ts -> handler entry",
            percentile_line(&s.hist)
        );
        for l in floor_lines.into_iter().flatten() {
            println!("{l}");
        }
    }
    Ok(())
}
