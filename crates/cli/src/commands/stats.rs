//! `dualbus stats`: per stream and group, what was published, delivered, is pending, lagging,
//! dead-lettered and trimmed before the group read it, read from the Redis servers.

use super::{inspect, runtime, Global, BUSES};
use clap::Args;
use dualbus_bus::Router;
use serde_json::json;
use std::time::Duration;

/// Arguments of `dualbus stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One JSON object per stream and group instead of a table.
    #[arg(long)]
    json: bool,
    /// Also the failover mirror rows that are empty: each bus holds the other bus's streams
    /// and groups too, so that a failover finds them ready; they stay empty until one.
    #[arg(long)]
    all: bool,
}

/// Runs `dualbus stats`.
pub fn run(args: StatsArgs, global: &Global) -> anyhow::Result<()> {
    let cfg = global.redis_config()?;
    let router = Router::new(&cfg);
    runtime(1)?.block_on(async move {
        // Both buses are read before anything is printed: a bus that does not answer gives
        // the error alone, not a table header and then the error.
        let mut lines = Vec::new();
        let mut hidden = 0usize;
        let mut shown_mirror = false;
        if !args.json {
            lines.push(format!(
                "{:<6} {:<40} {:>10} {:<20} {:>10} {:>8} {:>8} {:>6} {:>8}",
                "bus",
                "stream",
                "published",
                "group",
                "delivered",
                "pending",
                "lag",
                "dead",
                "trimmed"
            ));
        }
        for (bus, _) in BUSES {
            let timeout = Duration::from_millis(cfg.bus(bus).connect_timeout_ms);
            let conns = inspect::connect_nodes(&cfg, bus, timeout)
                .await
                .map_err(super::unreachable)?;
            let dead_key = router.dead_stream(bus);
            // Every server of the bus (the masters of a cluster each hold some streams).
            let mut streams = Vec::new();
            let mut dead = std::collections::BTreeMap::new();
            for mut conn in conns {
                streams.extend(inspect::streams(&mut conn, &cfg.prefix).await?);
                dead.extend(inspect::dead_counts(&mut conn, &dead_key).await?);
            }
            streams.sort_by(|a, b| a.key.cmp(&b.key));
            for s in &streams {
                // A stream of the other bus (`PREFIX:logic:...` on the MarketData server, and
                // the reverse): the failover mirror.
                let mirror = router.bus_of_stream(&s.key) != Some(bus);
                if mirror && s.entries_added == 0 && !args.all {
                    hidden += 1;
                    continue;
                }
                shown_mirror |= mirror;
                let rows: Vec<Option<&inspect::GroupRow>> = if s.groups.is_empty() {
                    vec![None]
                } else {
                    s.groups.iter().map(Some).collect()
                };
                for g in rows {
                    let group = g.map(|g| g.name.as_str()).unwrap_or("-");
                    let dead_n = g
                        .map(|g| *dead.get(&(s.key.clone(), g.name.clone())).unwrap_or(&0))
                        .unwrap_or(0);
                    if args.json {
                        lines.push(
                            json!({
                                "bus": bus.as_str(),
                                "stream": s.key,
                                "length": s.length,
                                "published": s.entries_added,
                                "group": g.map(|g| g.name.clone()),
                                "delivered": g.and_then(|g| g.delivered()),
                                "pending": g.map(|g| g.pending),
                                "lag": g.and_then(|g| g.lag),
                                "dead_lettered": dead_n,
                                "trimmed_unread": g.map(|g| g.trimmed),
                                "failover_mirror": mirror,
                            })
                            .to_string(),
                        );
                    } else {
                        let opt = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
                        lines.push(format!(
                            "{:<6} {:<40} {:>10} {:<20} {:>10} {:>8} {:>8} {:>6} {:>8}",
                            bus.as_str(),
                            if mirror {
                                format!("{} (mirror)", s.key)
                            } else {
                                s.key.clone()
                            },
                            s.entries_added,
                            group,
                            opt(g.and_then(|g| g.delivered())),
                            opt(g.map(|g| g.pending)),
                            opt(g.and_then(|g| g.lag)),
                            dead_n,
                            opt(g.map(|g| g.trimmed))
                        ));
                    }
                }
            }
        }
        for line in &lines {
            println!("{line}");
        }
        if !args.json {
            if hidden > 0 {
                println!(
                    "({hidden} empty failover mirror streams not shown, --all shows them: each bus \
                     also holds the other bus's streams and groups, so that a failover finds \
                     them ready)"
                );
            } else if args.all || shown_mirror {
                println!(
                    "(mirror: a stream of the other bus held here for failover; it fills only \
                     while that bus is down)"
                );
            }
        }
        Ok(())
    })
}
