//! The provider flags of `dualbus hub`, `dualbus run` and `dualbus engine marketdata`: which
//! provider the hub takes market data from, and its options.

use super::parse_duration;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dualbus_engines::provider::binance::{BinanceOptions, BinanceProvider};
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use dualbus_engines::provider::synthetic::{SyntheticOptions, SyntheticProvider};
use dualbus_engines::provider::{Provider, Speed};
use std::path::PathBuf;
use std::sync::Arc;

/// Where market data comes from.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// Deterministic synthetic market (13 symbols), needs nothing.
    Synthetic,
    /// Replay of a file (--file, --format).
    Replay,
    /// Live Binance public streams (--symbols); needs internet access.
    Binance,
}

/// The flags that choose and configure a provider.
#[derive(Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Market data source.
    #[arg(long, value_enum, default_value_t = ProviderKind::Synthetic)]
    pub provider: ProviderKind,
    /// replay: the file to play.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// replay: its format (binance, tardis, quotes).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// replay: the symbol of a Binance or quote file (else guessed from the file name); for a
    /// Tardis file, only this symbol's rows.
    #[arg(long)]
    pub symbol: Option<String>,
    /// Playback speed of synthetic or replayed data: `max` or a factor like `1x`, `60x`
    /// (default: 60x for synthetic, max for replay).
    #[arg(long)]
    pub speed: Option<String>,
    /// synthetic: seed (the same seed gives the same market).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// synthetic: inject a flash crash this long into the data (data time), e.g. `30m`.
    #[arg(long, value_name = "AT")]
    pub flash_crash: Option<String>,
    /// synthetic: only these symbols; binance: the symbols to stream (comma-separated). For
    /// `dualbus engine features|vpin`: take only these symbols' partitions (see --partition).
    #[arg(long, value_delimiter = ',')]
    pub symbols: Vec<String>,
}

impl ProviderArgs {
    fn speed(&self, default: Speed) -> anyhow::Result<Speed> {
        match &self.speed {
            None => Ok(default),
            Some(s) => s.parse::<Speed>().map_err(anyhow::Error::msg),
        }
    }

    /// Builds the provider the flags describe.
    ///
    /// # Errors
    /// A flag that does not fit the provider, or a provider that cannot open its data.
    pub fn build(&self) -> anyhow::Result<Arc<dyn Provider>> {
        Ok(self.build_parts()?.0)
    }

    /// [`build`](Self::build), and the replay provider again when it is one (for progress).
    pub fn build_parts(&self) -> anyhow::Result<BuiltProvider> {
        let name = match self.provider {
            ProviderKind::Synthetic => "synthetic",
            ProviderKind::Replay => "replay",
            ProviderKind::Binance => "binance",
        };
        use ProviderKind::{Replay, Synthetic};
        // Each flag with the providers it applies to.
        let flags: [(bool, &str, &[ProviderKind]); 5] = [
            (self.file.is_some(), "--file", &[Replay]),
            (self.format.is_some(), "--format", &[Replay]),
            (self.symbol.is_some(), "--symbol", &[Replay]),
            (self.flash_crash.is_some(), "--flash-crash", &[Synthetic]),
            (self.speed.is_some(), "--speed", &[Synthetic, Replay]),
        ];
        let misplaced: Vec<&str> = flags
            .iter()
            .filter(|(given, _, applies)| *given && !applies.contains(&self.provider))
            .map(|(_, flag, _)| *flag)
            .collect();
        if !misplaced.is_empty() {
            bail!(
                "{} do(es) not apply to --provider {name} (a live feed plays at its own pace; \
                 --file/--format/--symbol are for replay, --flash-crash for synthetic)",
                misplaced.join(", ")
            );
        }
        match self.provider {
            ProviderKind::Synthetic => {
                let flash_crash_at = self
                    .flash_crash
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .context("--flash-crash")?;
                let p = SyntheticProvider::new(SyntheticOptions {
                    seed: self.seed,
                    speed: self.speed(Speed::Times(60.0))?,
                    flash_crash_at,
                    symbols: self.symbols.clone(),
                    ..Default::default()
                })?;
                Ok((Arc::new(p), None))
            }
            ProviderKind::Replay => {
                let Some(file) = &self.file else {
                    bail!(
                        "--provider replay needs --file FILE (and --format binance|tardis|quotes)"
                    );
                };
                let Some(format) = &self.format else {
                    bail!("--provider replay needs --format binance|tardis|quotes");
                };
                let format: FileFormat = format.parse()?;
                let mut opts = ReplayOptions::new(file, format).speed(self.speed(Speed::Max)?);
                if let Some(s) = &self.symbol {
                    opts = opts.symbol(s.clone());
                }
                let p = Arc::new(super::open_replay(opts)?);
                Ok((p.clone(), Some(p)))
            }
            ProviderKind::Binance => {
                let symbols = if self.symbols.is_empty() {
                    vec!["BTCUSDT".to_string()]
                } else {
                    self.symbols.clone()
                };
                Ok((
                    Arc::new(BinanceProvider::new(BinanceOptions::new(symbols))?),
                    None,
                ))
            }
        }
    }
}

/// A provider, and the same provider as a replay when it is one (for progress output).
pub type BuiltProvider = (Arc<dyn Provider>, Option<Arc<ReplayProvider>>);
