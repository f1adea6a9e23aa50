//! Upstream market data providers: a stream of market data plus a history call.
//!
//! The hub is the only component that talks to a provider (docs/architecture.md, "The
//! MarketData hub"). Each provider gives a [`MarketStream`] (opened once per hub) and answers
//! [`HistoryRequest`]s, which may be slow (a REST call): the hub caches and coalesces them.
//!
//! * [`synthetic`]: deterministic from a seed, needs nothing (the default).
//! * [`replay`]: real files (Binance trade dumps, Tardis trades, quote CSV) at 1x, Nx or
//!   maximum speed.
//! * [`binance`]: the live Binance public streams over WebSocket, klines over REST.

pub mod binance;
pub mod replay;
pub mod synthetic;

use async_trait::async_trait;
use dualbus_model::market::{Bar, Instrument, MarketEvent};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Errors of a provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The upstream service failed or sent something unreadable.
    #[error("upstream: {0}")]
    Upstream(String),
    /// A request the provider cannot answer (unknown symbol, bad interval).
    #[error("{0}")]
    BadRequest(String),
    /// The provider was configured wrongly.
    #[error("{0}")]
    Config(String),
    /// The data does not fit the options, or needs one they lack (a file that is not of the
    /// format given, a file that does not name its symbol): `message` says what, and `option`
    /// names the option to give or change (`format` or `symbol`), so a front end can name its
    /// own flag for it.
    #[error("{message}; check the `{option}` option")]
    Mismatch {
        /// What does not fit, naming the file.
        message: String,
        /// The option to give or change.
        option: &'static str,
    },
}

/// A request for past bars.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Instrument symbol.
    pub symbol: String,
    /// Bar length in seconds (60 for 1-minute bars).
    pub bar_secs: u32,
    /// Most bars to return (the latest ones).
    pub limit: u32,
    /// Only bars that ended at or before this time (Unix ns); `None` for "up to now".
    #[serde(default)]
    pub end_ts: Option<u64>,
}

/// A live stream of market data.
#[async_trait]
pub trait MarketStream: Send {
    /// Appends the next events (in time order) to `out`. Returns `Ok(false)` at the end of the
    /// data (a finished replay); a live stream never ends on its own.
    ///
    /// # Errors
    /// [`ProviderError`] when the stream fails for good (a live provider reconnects by itself
    /// and reports only what it cannot recover from).
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError>;

    /// Rows or frames skipped as unreadable so far.
    fn skipped(&self) -> u64 {
        0
    }
}

/// A source of market data: a stream plus a history call.
#[async_trait]
pub trait Provider: Send + Sync {
    /// A short name (`synthetic`, `replay`, `binance`).
    fn name(&self) -> &'static str;

    /// The instruments it has data for.
    fn instruments(&self) -> Vec<Instrument>;

    /// Opens the stream of market data.
    ///
    /// # Errors
    /// [`ProviderError`] when it cannot be opened (a missing file, an unreachable service).
    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError>;

    /// Past bars, oldest first, at most `req.limit` of them.
    ///
    /// # Errors
    /// [`ProviderError::BadRequest`] for an unknown symbol or interval; `Upstream` when the
    /// service fails.
    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError>;
}

/// A shared provider is a provider (so wrappers like [`SlowHistory`] take `Arc<dyn Provider>`).
#[async_trait]
impl<P: Provider + ?Sized> Provider for std::sync::Arc<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn instruments(&self) -> Vec<Instrument> {
        (**self).instruments()
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        (**self).stream().await
    }

    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        (**self).history(req).await
    }
}

/// Wraps a provider so every history call takes at least `delay` (how a REST API behaves);
/// `dualbus bench hub` uses it to measure the cache against a realistic upstream.
pub struct SlowHistory<P> {
    inner: P,
    delay: Duration,
}

impl<P: Provider> SlowHistory<P> {
    /// `inner` with `delay` added to each history call.
    pub fn new(inner: P, delay: Duration) -> SlowHistory<P> {
        SlowHistory { inner, delay }
    }
}

#[async_trait]
impl<P: Provider> Provider for SlowHistory<P> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn instruments(&self) -> Vec<Instrument> {
        self.inner.instruments()
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        self.inner.stream().await
    }

    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        tokio::time::sleep(self.delay).await;
        self.inner.history(req).await
    }
}

/// How fast a replay plays its data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// As fast as the consumer takes it.
    Max,
    /// `x` times real time (1.0 = the data's own pace).
    Times(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;

    /// `max`, `1x`, `60x`, `0.5x` or a bare number.
    fn from_str(s: &str) -> Result<Speed, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let num = t.strip_suffix(['x', 'X']).unwrap_or(t);
        match num.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(Speed::Times(x)),
            _ => Err(format!(
                "invalid speed {s:?}: expected max, or a positive factor such as 1x or 60x"
            )),
        }
    }
}

/// Paces events by their timestamps at a [`Speed`]: the first event sets the origin.
#[derive(Debug)]
pub struct Pacer {
    speed: Speed,
    origin: Option<(u64, tokio::time::Instant)>,
}

impl Pacer {
    /// A pacer at `speed`.
    pub fn new(speed: Speed) -> Pacer {
        Pacer {
            speed,
            origin: None,
        }
    }

    /// Waits until the event at `ts` (Unix ns) is due.
    pub async fn wait_for(&mut self, ts: u64) {
        let Speed::Times(x) = self.speed else {
            return;
        };
        let (t0, start) = *self
            .origin
            .get_or_insert_with(|| (ts, tokio::time::Instant::now()));
        let data_ns = ts.saturating_sub(t0) as f64 / x;
        let due = start + Duration::from_nanos(data_ns as u64);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse_and_bad_ones_name_the_value() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("60x".parse::<Speed>(), Ok(Speed::Times(60.0)));
        assert_eq!("2".parse::<Speed>(), Ok(Speed::Times(2.0)));
        let e = "-3x".parse::<Speed>().unwrap_err();
        assert!(e.contains("\"-3x\""), "{e}");
        assert!("fast".parse::<Speed>().is_err());
    }
}
