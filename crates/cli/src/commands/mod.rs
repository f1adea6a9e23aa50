//! One module per verb, plus what they share: global flags and the configuration.

pub mod bench;
pub mod inspect;
pub mod publish;
pub mod redis;
pub mod stats;
pub mod stress;
pub mod tail;

use anyhow::bail;
use clap::Args;
use dualbus_bus::{BusId, Config};
use std::path::PathBuf;

/// Flags every verb takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Config file (default: ./dualbus.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// MarketData bus address (also DUALBUS_MD_URL or `[md] url`; default redis://127.0.0.1:6380).
    #[arg(long, global = true, value_name = "URL")]
    pub md_url: Option<String>,
    /// Engine Logic bus address (also DUALBUS_LOGIC_URL or `[logic] url`; default redis://127.0.0.1:6381).
    #[arg(long, global = true, value_name = "URL")]
    pub logic_url: Option<String>,
}

impl Global {
    /// The configuration: file, then environment, then these flags; validated.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(u) = &self.md_url {
            cfg.md.url = u.clone();
        }
        if let Some(u) = &self.logic_url {
            cfg.logic.url = u.clone();
        }
        let problems = cfg.problems();
        if !problems.is_empty() {
            bail!(
                "invalid settings:\n{}",
                problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(cfg)
    }

    /// The configuration with the Redis transport (for the verbs that talk to running buses).
    pub fn redis_config(&self) -> anyhow::Result<Config> {
        let mut cfg = self.config()?;
        cfg.transport = "redis".into();
        Ok(cfg)
    }
}

/// A Tokio runtime for one command.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

/// Both buses with their names, for loops.
pub const BUSES: [(BusId, &str); 2] = [
    (BusId::MarketData, "MarketData"),
    (BusId::Logic, "Engine Logic"),
];
