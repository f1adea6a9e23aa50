//! The buses under test: embedded or Redis, and their clean-up.

use super::args::{Backend, BenchArgs, ModeArg, Scenario};
use anyhow::{bail, Context};
use dualbus_bus::{BusId, Config, DualBus, TransportKind};
use dualbus_core::{EventKind, Transport};
use dualbus_memory::{MemoryOptions, MemoryTransport};
use std::sync::Arc;
use std::time::Duration;

/// The buses under test.
pub(super) struct Rig {
    pub(super) cfg: Config,
    pub(super) root: DualBus,
    pub(super) md: Arc<dyn Transport>,
    pub(super) logic: Arc<dyn Transport>,
    pub(super) memory_md: Option<MemoryTransport>,
}

impl Rig {
    pub(super) async fn new(args: &BenchArgs, mut cfg: Config) -> anyhow::Result<Rig> {
        match args.backend {
            Backend::Embedded => {
                // Fast-mode consumers are never waited for: a stream shorter than the run would
                // make them skip (by design), so a fast-mode delivery benchmark keeps it all.
                let maxlen = if args.mode == ModeArg::Fast && args.scenario != Scenario::Isolation {
                    cfg.md.maxlen.max(args.messages + 1)
                } else {
                    cfg.md.maxlen
                };
                let opts = MemoryOptions {
                    maxlen: maxlen as usize,
                    spin: cfg.memory.spin(),
                };
                let md = MemoryTransport::with_options(opts.clone());
                let md_t: Arc<dyn Transport> = Arc::new(md.clone());
                let logic_t: Arc<dyn Transport> = Arc::new(MemoryTransport::with_options(opts));
                Ok(Rig {
                    root: DualBus::builder("bench-rig")
                        .config(cfg.clone())
                        .transports(md_t.clone(), logic_t.clone())
                        .build()?,
                    cfg,
                    md: md_t,
                    logic: logic_t,
                    memory_md: Some(md),
                })
            }
            Backend::Redis => {
                // A private prefix: a run never meets another run's streams or groups.
                cfg.prefix = format!("bench{}", std::process::id());
                cfg.transport = TransportKind::Redis;
                let md_t = dualbus_bus::connect_transport(&cfg, BusId::MarketData)
                    .await
                    .context(
                        "the redis backend needs both buses (start them with `dualbus redis up`)",
                    )?;
                let logic_t = dualbus_bus::connect_transport(&cfg, BusId::Logic)
                    .await
                    .context(
                        "the redis backend needs both buses (start them with `dualbus redis up`)",
                    )?;
                Ok(Rig {
                    root: DualBus::builder("bench-rig")
                        .config(cfg.clone())
                        .transports(md_t.clone(), logic_t.clone())
                        .build()?,
                    cfg,
                    md: md_t,
                    logic: logic_t,
                    memory_md: None,
                })
            }
        }
    }

    /// A client whose sequence numbers start at 0 (the handlers index messages by them). All
    /// clients share one failover state and heartbeat, as engines in one process do.
    pub(super) fn client(&self, src: &str, inst: &str) -> anyhow::Result<DualBus> {
        Ok(self.root.sibling_starting_at(src, inst, 0)?)
    }

    /// Entries retained by a stream.
    pub(super) async fn stream_len(&self, bus: BusId, kind: &EventKind) -> anyhow::Result<u64> {
        let key = self.root.router().kind_stream(bus, kind);
        if let Some(m) = &self.memory_md {
            return Ok(m.stream_len(&key) as u64);
        }
        if dualbus_redis::is_cluster_url(&self.cfg.bus(bus).url) {
            bail!("the stall scenario reads one stream's length: run it on a single server");
        }
        let mut conn =
            crate::commands::inspect::connect(&self.cfg, bus, Duration::from_secs(2)).await?;
        Ok(redis::cmd("XLEN").arg(&*key).query_async(&mut conn).await?)
    }

    /// Removes the run's keys from the Redis servers.
    pub(super) async fn cleanup(&self) {
        if self.memory_md.is_some() {
            return;
        }
        // A batch publish returns once queued: what a flood queued last must reach the servers
        // before the keys are removed, or it would recreate them afterwards.
        for t in [&self.md, &self.logic] {
            let _ = tokio::time::timeout(Duration::from_secs(10), t.flush()).await;
        }
        for bus in BusId::ALL {
            let Ok(conns) =
                crate::commands::inspect::connect_nodes(&self.cfg, bus, Duration::from_secs(2))
                    .await
            else {
                continue;
            };
            for mut conn in conns {
                let mut cursor = "0".to_string();
                loop {
                    let Ok((next, keys)): Result<(String, Vec<String>), _> = redis::cmd("SCAN")
                        .arg(&cursor)
                        .arg("MATCH")
                        .arg(format!("{}:*", self.cfg.prefix))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                    else {
                        break;
                    };
                    if !keys.is_empty() {
                        let _ = redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<()>(&mut conn)
                            .await;
                    }
                    cursor = next;
                    if cursor == "0" {
                        break;
                    }
                }
            }
        }
    }
}
