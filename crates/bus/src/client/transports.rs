//! The transports a config asks for: embedded, or connections to the Redis servers.

use super::BusError;
use crate::config::{BusId, Config, TransportKind};
use dualbus_core::Transport;
use dualbus_memory::{MemoryOptions, MemoryTransport};
use dualbus_redis::{RedisOptions, RedisTransport};
use std::sync::Arc;
use std::time::Duration;

/// The embedded transports a config asks for (for `transport = "memory"`).
///
/// # Errors
/// [`BusError::Config`] when the config names another transport: those need a connection, see
/// [`connect_transports`].
pub fn default_transports(cfg: &Config) -> Result<[Arc<dyn Transport>; 2], BusError> {
    match cfg.transport {
        TransportKind::Memory => {
            let mk = |bus: BusId| -> Arc<dyn Transport> {
                Arc::new(MemoryTransport::with_options(MemoryOptions {
                    maxlen: cfg.bus(bus).maxlen as usize,
                    spin: cfg.memory.spin(),
                }))
            };
            Ok([mk(BusId::MarketData), mk(BusId::Logic)])
        }
        other => Err(BusError::Config(format!(
            "transport {:?} needs a connection: use connect_transports (or DualBus::connect)",
            other.as_str()
        ))),
    }
}

/// The Redis options of one bus from the config.
pub fn redis_options(cfg: &Config, bus: BusId) -> Result<RedisOptions, BusError> {
    let b = cfg.bus(bus);
    Ok(RedisOptions {
        maxlen: b.maxlen,
        connect_timeout: Duration::from_millis(b.connect_timeout_ms),
        max_payload: b.max_payload_bytes as usize,
        tls: tls_config(cfg)?,
        group_lease: Duration::from_millis(cfg.delivery.group_lease_ms),
        ..RedisOptions::new(bus.as_str(), &b.url)
    })
}

/// The certificates of the config's `[tls]` section, read from their files (`None` when it
/// names none).
///
/// # Errors
/// [`BusError::Config`] naming a file that cannot be read or holds no PEM of its kind.
pub fn tls_config(cfg: &Config) -> Result<Option<dualbus_redis::TlsConfig>, BusError> {
    let t = &cfg.tls;
    if t.ca_file.is_none() && t.cert_file.is_none() && t.key_file.is_none() {
        return Ok(None);
    }
    dualbus_redis::TlsConfig::load(
        t.ca_file.as_deref(),
        t.cert_file.as_deref(),
        t.key_file.as_deref(),
    )
    .map(Some)
    .map_err(|e| BusError::Config(format!("[tls]: {e}")))
}

/// Connects the Redis transport of one bus: a single server (`redis://`) or a Redis Cluster
/// (`redis+cluster://`).
///
/// # Errors
/// [`BusError::Connect`] naming the bus and address that could not be reached.
pub async fn connect_transport(cfg: &Config, bus: BusId) -> Result<Arc<dyn Transport>, BusError> {
    let opts = redis_options(cfg, bus)?;
    Ok(if dualbus_redis::is_cluster_url(&opts.url) {
        Arc::new(dualbus_redis::ClusterTransport::connect(opts).await?)
    } else {
        Arc::new(RedisTransport::connect(opts).await?)
    })
}

/// Creates the transports the config asks for: embedded ones, or connections to both Redis
/// servers.
///
/// # Errors
/// [`BusError::Connect`] naming the bus and address that could not be reached.
pub async fn connect_transports(cfg: &Config) -> Result<[Arc<dyn Transport>; 2], BusError> {
    if cfg.transport == TransportKind::Redis {
        Ok([
            connect_transport(cfg, BusId::MarketData).await?,
            connect_transport(cfg, BusId::Logic).await?,
        ])
    } else {
        default_transports(cfg)
    }
}
