//! The live Binance spot public market data: trades and top of book over WebSocket, klines
//! over REST.
//!
//! [`BinanceProvider`] is configured by [`BinanceOptions`]. Its stream ([`BinanceStream`])
//! is one background task that owns the WebSocket:
//!
//! * it connects to [`BinanceOptions::ws_url`] and sends one `SUBSCRIBE` for
//!   `<symbol>@trade` and `<symbol>@bookTicker` of every configured symbol;
//! * it turns `trade` frames into [`Trade`]s and `bookTicker` frames into [`Quote`]s, raw or in
//!   the combined-stream wrapper `{"stream":..,"data":..}`; anything else is counted as
//!   skipped ([`MarketStream::skipped`]) and logged, never fatal;
//! * when the connection drops, errors, or is silent for [`BinanceOptions::idle_timeout`], it
//!   reconnects with a doubling backoff and subscribes again; the stream fails only after
//!   [`BinanceOptions::max_connect_failures`] consecutive failed attempts (by default never).
//!
//! History ([`Provider::history`]) is `GET /api/v3/klines`, one request per call, over a small
//! HTTP/1.1 client built on the same rustls stack as the WebSocket (ring crypto and the
//! webpki root certificates compiled in, so `wss://` and `https://` work without OpenSSL or a
//! system certificate store).
//!
//! Timestamps are Binance's own (trade time, kline open time). Spot `bookTicker` carries no
//! time, so a quote is stamped with its local receive time unless the frame has `T` or `E`.

use super::{HistoryRequest, MarketStream, Provider, ProviderError};
use async_trait::async_trait;
use dualbus_model::market::{Bar, Instrument, MarketEvent, Quote, Side, Trade};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

/// Binance intervals by bar length in seconds: the only bar lengths history can serve.
const INTERVALS: [(u32, &str); 8] = [
    (60, "1m"),
    (180, "3m"),
    (300, "5m"),
    (900, "15m"),
    (1800, "30m"),
    (3600, "1h"),
    (14400, "4h"),
    (86400, "1d"),
];

/// Binance's largest `limit` for klines.
const MAX_KLINES: u32 = 1000;

/// Binance allows at most 1024 streams on one connection.
const MAX_STREAMS: usize = 1024;

/// Events buffered between the socket task and the consumer. When full, the task stops
/// reading the socket (TCP backpressure) rather than growing without bound.
const QUEUE_CAPACITY: usize = 4096;

/// Most events one [`MarketStream::next_batch`] call appends.
const MAX_BATCH: usize = 512;

/// Largest HTTP response head and body accepted (1000 klines are about 150 KB).
const MAX_HTTP_HEAD: usize = 64 * 1024;
const MAX_HTTP_BODY: usize = 16 * 1024 * 1024;

/// Settings of the Binance provider.
///
/// Symbols are Binance spot symbols in any case (`BTCUSDT`, `ethusdt`): they are upper-cased
/// for instruments and REST, lower-cased in stream names. In a config file durations are
/// milliseconds (`reconnect_min_ms = 100`).
///
/// ```
/// use dualbus_engines::provider::binance::BinanceOptions;
/// use std::time::Duration;
///
/// let opts = BinanceOptions::new(["BTCUSDT", "ETHUSDT"])
///     .reconnect(Duration::from_millis(200), Duration::from_secs(10))
///     .idle_timeout(Duration::from_secs(60));
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinanceOptions {
    /// Spot symbols to stream (default `["BTCUSDT"]`).
    pub symbols: Vec<String>,
    /// WebSocket base URL (default `wss://stream.binance.com:9443/ws`); the combined endpoint
    /// `.../stream` works too.
    pub ws_url: String,
    /// REST base URL (default `https://api.binance.com`).
    pub rest_url: String,
    /// First wait before reconnecting (default 100 ms); it doubles on each failed attempt.
    #[serde(rename = "reconnect_min_ms", with = "millis")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnect attempts (default 5 s).
    #[serde(rename = "reconnect_max_ms", with = "millis")]
    pub reconnect_max: Duration,
    /// A connection that delivers no frame (not even a ping) for this long is replaced
    /// (default 30 s). Binance pings every few minutes and `bookTicker` is rarely quiet.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// Longest time for one connection attempt, TCP, TLS and WebSocket handshake
    /// (default 10 s).
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Longest time for one history request (default 10 s).
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// The stream fails after this many consecutive failed connection attempts; `None`
    /// (the default) retries forever. An attempt fails unless the connection gets as far as
    /// the subscription reply or a first market data frame.
    pub max_connect_failures: Option<u32>,
    /// Tick size reported by [`Provider::instruments`] for every symbol (default 0.01,
    /// BTCUSDT's). The provider does not fetch Binance's per-symbol filters.
    pub tick_size: f64,
    /// Lot size reported by [`Provider::instruments`] for every symbol (default 0.00001,
    /// BTCUSDT's).
    pub lot_size: f64,
}

impl Default for BinanceOptions {
    fn default() -> BinanceOptions {
        BinanceOptions {
            symbols: vec!["BTCUSDT".to_string()],
            ws_url: "wss://stream.binance.com:9443/ws".to_string(),
            rest_url: "https://api.binance.com".to_string(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connect_failures: None,
            tick_size: 0.01,
            lot_size: 0.00001,
        }
    }
}

impl BinanceOptions {
    /// The defaults with these symbols.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// let opts = BinanceOptions::new(["btcusdt"]);
    /// assert_eq!(opts.symbols, ["btcusdt"]);
    /// ```
    pub fn new<I, S>(symbols: I) -> BinanceOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        BinanceOptions {
            symbols: symbols.into_iter().map(Into::into).collect(),
            ..BinanceOptions::default()
        }
    }

    /// Sets the WebSocket base URL (a local server in tests, a testnet).
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// let opts = BinanceOptions::default().ws_url("wss://testnet.binance.vision/ws");
    /// assert_eq!(opts.ws_url, "wss://testnet.binance.vision/ws");
    /// ```
    pub fn ws_url(mut self, url: impl Into<String>) -> BinanceOptions {
        self.ws_url = url.into();
        self
    }

    /// Sets the REST base URL.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// let opts = BinanceOptions::default().rest_url("https://testnet.binance.vision");
    /// assert_eq!(opts.rest_url, "https://testnet.binance.vision");
    /// ```
    pub fn rest_url(mut self, url: impl Into<String>) -> BinanceOptions {
        self.rest_url = url.into();
        self
    }

    /// Sets the reconnect backoff: `min` first, doubling up to `max`.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// # use std::time::Duration;
    /// let opts = BinanceOptions::default()
    ///     .reconnect(Duration::from_millis(50), Duration::from_secs(2));
    /// assert_eq!(opts.reconnect_max, Duration::from_secs(2));
    /// ```
    pub fn reconnect(mut self, min: Duration, max: Duration) -> BinanceOptions {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Sets how long a silent connection is kept before it is replaced.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// # use std::time::Duration;
    /// let opts = BinanceOptions::default().idle_timeout(Duration::from_secs(10));
    /// assert_eq!(opts.idle_timeout, Duration::from_secs(10));
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> BinanceOptions {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the time limit of one connection attempt.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// # use std::time::Duration;
    /// let opts = BinanceOptions::default().connect_timeout(Duration::from_secs(3));
    /// assert_eq!(opts.connect_timeout, Duration::from_secs(3));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> BinanceOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the time limit of one history request.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// # use std::time::Duration;
    /// let opts = BinanceOptions::default().request_timeout(Duration::from_secs(3));
    /// assert_eq!(opts.request_timeout, Duration::from_secs(3));
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> BinanceOptions {
        self.request_timeout = timeout;
        self
    }

    /// Makes the stream fail after `n` consecutive failed connection attempts (`None`: never).
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// let opts = BinanceOptions::default().max_connect_failures(Some(20));
    /// assert_eq!(opts.max_connect_failures, Some(20));
    /// ```
    pub fn max_connect_failures(mut self, n: Option<u32>) -> BinanceOptions {
        self.max_connect_failures = n;
        self
    }

    /// Sets the tick and lot size reported for every symbol.
    ///
    /// ```
    /// # use dualbus_engines::provider::binance::BinanceOptions;
    /// let opts = BinanceOptions::new(["ETHUSDT"]).sizes(0.01, 0.0001);
    /// assert_eq!((opts.tick_size, opts.lot_size), (0.01, 0.0001));
    /// ```
    pub fn sizes(mut self, tick_size: f64, lot_size: f64) -> BinanceOptions {
        self.tick_size = tick_size;
        self.lot_size = lot_size;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ProviderError::Config`] listing every problem found, separated by `; `.
    pub fn validate(&self) -> Result<(), ProviderError> {
        let mut problems = Vec::new();
        if self.symbols.is_empty() {
            problems.push("symbols: at least one symbol is needed".to_string());
        }
        for s in &self.symbols {
            if !valid_symbol(s) {
                problems.push(format!(
                    "symbols: {s:?} is not a Binance symbol (ASCII letters and digits only)"
                ));
            }
        }
        if self.symbols.len() * 2 > MAX_STREAMS {
            problems.push(format!(
                "symbols: {} symbols need {} streams, Binance allows {MAX_STREAMS} per connection",
                self.symbols.len(),
                self.symbols.len() * 2
            ));
        }
        check_url(&mut problems, "ws_url", &self.ws_url, &["ws", "wss"]);
        check_url(
            &mut problems,
            "rest_url",
            &self.rest_url,
            &["http", "https"],
        );
        if self.reconnect_min.is_zero() {
            problems.push("reconnect_min: must be above zero".to_string());
        }
        if self.reconnect_max < self.reconnect_min {
            problems.push(format!(
                "reconnect_max ({:?}) is below reconnect_min ({:?})",
                self.reconnect_max, self.reconnect_min
            ));
        }
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{name}: must be above zero"));
            }
        }
        if self.max_connect_failures == Some(0) {
            problems.push("max_connect_failures: must be at least 1 (or none)".to_string());
        }
        for (name, v) in [("tick_size", self.tick_size), ("lot_size", self.lot_size)] {
            if !(v.is_finite() && v > 0.0) {
                problems.push(format!("{name}: {v} must be a positive number"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::Config(format!(
                "binance options: {}",
                problems.join("; ")
            )))
        }
    }

    /// The stream names subscribed to, two per symbol.
    fn stream_names(&self) -> Vec<String> {
        self.symbols
            .iter()
            .flat_map(|s| {
                let s = s.to_ascii_lowercase();
                [format!("{s}@trade"), format!("{s}@bookTicker")]
            })
            .collect()
    }
}

fn valid_symbol(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn check_url(problems: &mut Vec<String>, name: &str, url: &str, schemes: &[&str]) {
    match url.parse::<Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {
            let scheme = uri.scheme_str().unwrap_or("");
            if !schemes.contains(&scheme) {
                problems.push(format!(
                    "{name}: {url:?} must start with {}",
                    schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ));
            }
        }
        Ok(_) => problems.push(format!("{name}: {url:?} has no host")),
        Err(e) => problems.push(format!("{name}: {url:?} is not a URL ({e})")),
    }
}

/// Durations as whole milliseconds in config files.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Counts shared between a stream's task and its readers.
#[derive(Debug, Default)]
struct Counters {
    reconnects: AtomicU64,
    skipped: AtomicU64,
}

/// The live Binance spot provider: trades and quotes over WebSocket, klines over REST.
///
/// ```no_run
/// # async fn demo() -> Result<(), dualbus_engines::provider::ProviderError> {
/// use dualbus_engines::provider::binance::{BinanceOptions, BinanceProvider};
/// use dualbus_engines::provider::{MarketStream, Provider};
///
/// let provider = BinanceProvider::new(BinanceOptions::new(["BTCUSDT"]))?;
/// let mut stream = provider.stream().await?;
/// let mut events = Vec::new();
/// stream.next_batch(&mut events).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BinanceProvider {
    opts: Arc<BinanceOptions>,
    tls: Arc<ClientConfig>,
    /// Totals over every stream this provider opened.
    totals: Arc<Counters>,
}

impl fmt::Debug for BinanceProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinanceProvider")
            .field("opts", &self.opts)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl BinanceProvider {
    /// A provider with these settings. Nothing is connected until [`Provider::stream`] or
    /// [`Provider::history`] is called.
    ///
    /// # Errors
    /// [`ProviderError::Config`] when the options do not validate
    /// ([`BinanceOptions::validate`]) or TLS cannot be set up.
    pub fn new(opts: BinanceOptions) -> Result<BinanceProvider, ProviderError> {
        opts.validate()?;
        Ok(BinanceProvider {
            opts: Arc::new(opts),
            tls: tls_config()?,
            totals: Arc::default(),
        })
    }

    /// The settings in use.
    pub fn options(&self) -> &BinanceOptions {
        &self.opts
    }

    /// Reconnections so far, over every stream this provider opened.
    pub fn reconnects(&self) -> u64 {
        self.totals.reconnects.load(Ordering::Relaxed)
    }

    /// Frames skipped as unreadable so far, over every stream this provider opened.
    pub fn skipped(&self) -> u64 {
        self.totals.skipped.load(Ordering::Relaxed)
    }

    /// Opens the live stream as its concrete type (for [`BinanceStream::reconnects`]);
    /// [`Provider::stream`] is the same, boxed. It returns at once: the connection is made in
    /// the background and its failures surface through [`MarketStream::next_batch`].
    ///
    /// # Errors
    /// [`ProviderError::Config`] when called outside a Tokio runtime.
    pub fn open_stream(&self) -> Result<BinanceStream, ProviderError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            ProviderError::Config(format!("binance stream needs a Tokio runtime: {e}"))
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let conn = Connection {
            opts: self.opts.clone(),
            streams: self.opts.stream_names(),
            tls: self.tls.clone(),
            tx,
            counters: counters.clone(),
            totals: self.totals.clone(),
            next_id: 1,
            connected_before: false,
        };
        runtime.spawn(conn.run());
        Ok(BinanceStream {
            rx,
            pending: None,
            counters,
        })
    }

    async fn fetch_klines(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        let interval = interval_for(req.bar_secs)?;
        if !valid_symbol(&req.symbol) {
            return Err(ProviderError::BadRequest(format!(
                "{:?} is not a Binance symbol (ASCII letters and digits only)",
                req.symbol
            )));
        }
        let symbol = req.symbol.to_ascii_uppercase();
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = req.limit.min(MAX_KLINES);
        // Binance's endTime bounds the open time; a bar that ended at or before `end` opened at
        // or before `end - length`. Always sending it keeps the unfinished bar out.
        let end_ns = req.end_ts.unwrap_or_else(now_ns);
        let bar_ms = u64::from(req.bar_secs) * 1000;
        let Some(last_open_ms) = (end_ns / 1_000_000).checked_sub(bar_ms) else {
            return Ok(Vec::new());
        };
        let url = format!(
            "{}/api/v3/klines?symbol={symbol}&interval={interval}&limit={limit}&endTime={last_open_ms}",
            self.opts.rest_url.trim_end_matches('/')
        );
        let what = format!("klines {symbol} {interval}");
        let (status, body) =
            tokio::time::timeout(self.opts.request_timeout, http_get(&url, &self.tls))
                .await
                .map_err(|_| {
                    ProviderError::Upstream(format!(
                        "{what}: no answer within {:?}",
                        self.opts.request_timeout
                    ))
                })?
                .map_err(|e| ProviderError::Upstream(format!("{what}: {e}")))?;
        if status.code != 200 {
            let text = excerpt(&String::from_utf8_lossy(&body), 300);
            // Binance answers an unknown symbol with 400 and code -1121 ("Invalid symbol.").
            if status.code == 400 && text.contains("-1121") {
                return Err(ProviderError::BadRequest(format!(
                    "unknown Binance symbol {symbol}: HTTP {status}: {text}"
                )));
            }
            return Err(ProviderError::Upstream(format!(
                "{what}: HTTP {status}: {text}"
            )));
        }
        let mut bars = parse_klines(&body, &symbol, req.bar_secs)
            .map_err(|e| ProviderError::Upstream(format!("{what}: {e}")))?;
        // The same bound again in case the server ignored endTime; oldest first, latest kept.
        bars.retain(|b| b.end_ts() <= end_ns);
        bars.sort_by_key(|b| b.ts);
        bars.dedup_by_key(|b| b.ts);
        let extra = bars.len().saturating_sub(limit as usize);
        bars.drain(..extra);
        Ok(bars)
    }
}

#[async_trait]
impl Provider for BinanceProvider {
    fn name(&self) -> &'static str {
        "binance"
    }

    /// The configured symbols, upper-cased, with the configured tick and lot sizes.
    fn instruments(&self) -> Vec<Instrument> {
        self.opts
            .symbols
            .iter()
            .map(|s| Instrument {
                symbol: s.to_ascii_uppercase(),
                tick_size: self.opts.tick_size,
                lot_size: self.opts.lot_size,
            })
            .collect()
    }

    /// Opens the live stream; see [`BinanceProvider::open_stream`].
    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        Ok(Box::new(self.open_stream()?))
    }

    /// Klines of `req.bar_secs` (60, 180, 300, 900, 1800, 3600, 14400 or 86400 s), at most
    /// 1000 per call; only bars that have ended (by `req.end_ts`, or the local clock).
    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        self.fetch_klines(req).await
    }
}

/// The Binance interval name for a bar length.
fn interval_for(bar_secs: u32) -> Result<&'static str, ProviderError> {
    INTERVALS
        .iter()
        .find(|(secs, _)| *secs == bar_secs)
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            let supported: Vec<String> = INTERVALS
                .iter()
                .map(|(secs, name)| format!("{secs} ({name})"))
                .collect();
            ProviderError::BadRequest(format!(
                "binance has no {bar_secs} s bars; supported bar_secs: {}",
                supported.join(", ")
            ))
        })
}

/// A live Binance stream: trades and quotes of the configured symbols.
///
/// A background task owns the connection; dropping the stream stops it and closes the
/// connection.
#[derive(Debug)]
pub struct BinanceStream {
    rx: mpsc::Receiver<Result<MarketEvent, ProviderError>>,
    /// A fatal error that arrived behind events already returned.
    pending: Option<ProviderError>,
    counters: Arc<Counters>,
}

impl BinanceStream {
    /// Times this stream connected again after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl MarketStream for BinanceStream {
    /// Waits for at least one event, then appends what else is already buffered. A live stream
    /// never returns `Ok(false)`.
    ///
    /// Cancel safe: events are only taken from the queue once they are appended to `out`.
    ///
    /// # Errors
    /// [`ProviderError::Upstream`] when the connection cannot be recovered
    /// ([`BinanceOptions::max_connect_failures`] reached, subscription rejected); every later
    /// call fails too.
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        match self.rx.recv().await {
            Some(Ok(ev)) => out.push(ev),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(ProviderError::Upstream(
                    "binance stream has stopped after a fatal error".to_string(),
                ))
            }
        }
        for _ in 1..MAX_BATCH {
            match self.rx.try_recv() {
                Ok(Ok(ev)) => out.push(ev),
                Ok(Err(e)) => {
                    self.pending = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(true)
    }

    fn skipped(&self) -> u64 {
        self.counters.skipped.load(Ordering::Relaxed)
    }
}

/// How one connection ended, when it may be retried.
struct Ended {
    /// It got as far as the subscription reply or a market data frame.
    healthy: bool,
    reason: String,
}

impl Ended {
    fn failed(reason: String) -> Ended {
        Ended {
            healthy: false,
            reason,
        }
    }
}

/// The background task behind a [`BinanceStream`]: one connection at a time.
struct Connection {
    opts: Arc<BinanceOptions>,
    streams: Vec<String>,
    tls: Arc<ClientConfig>,
    tx: mpsc::Sender<Result<MarketEvent, ProviderError>>,
    counters: Arc<Counters>,
    totals: Arc<Counters>,
    next_id: u64,
    connected_before: bool,
}

impl Connection {
    async fn run(mut self) {
        let tx = self.tx.clone();
        // The consumer dropping the stream ends the task wherever it waits (socket, backoff,
        // full queue).
        let fatal = tokio::select! {
            () = tx.closed() => {
                tracing::debug!("binance stream dropped; closing the connection");
                return;
            }
            fatal = self.maintain() => fatal,
        };
        if tx.is_closed() {
            // The consumer went away while the task was handing it an event: not a failure.
            return;
        }
        tracing::error!("binance stream stopped: {fatal}");
        let _ = tx.send(Err(fatal)).await;
    }

    /// Connects, reads, reconnects; returns only the error that ends the stream.
    async fn maintain(&mut self) -> ProviderError {
        let mut backoff = self.opts.reconnect_min;
        let mut failures: u32 = 0;
        loop {
            let ended = match self.session().await {
                Ok(ended) => ended,
                Err(fatal) => return fatal,
            };
            if ended.healthy {
                failures = 0;
                backoff = self.opts.reconnect_min;
            } else {
                failures = failures.saturating_add(1);
            }
            if let Some(max) = self.opts.max_connect_failures {
                if failures >= max {
                    return ProviderError::Upstream(format!(
                        "binance: giving up after {failures} consecutive failed connection attempts to {}: {}",
                        self.opts.ws_url, ended.reason
                    ));
                }
            }
            tracing::warn!(
                url = %self.opts.ws_url,
                failures,
                "binance connection lost: {}; reconnecting in {backoff:?}",
                ended.reason
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(self.opts.reconnect_max);
        }
    }

    /// One connection: connect, subscribe, read until it ends.
    ///
    /// Errors are fatal for the stream; a connection that merely ends is `Ok`.
    async fn session(&mut self) -> Result<Ended, ProviderError> {
        let url = self.opts.ws_url.as_str();
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true, // small frames that matter now: no Nagle delay
            Some(Connector::Rustls(self.tls.clone())),
        );
        let mut ws = match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
            Err(_) => {
                return Ok(Ended::failed(format!(
                    "connect timed out after {:?}",
                    self.opts.connect_timeout
                )))
            }
            Ok(Err(e)) => return Ok(Ended::failed(format!("connect: {e}"))),
            Ok(Ok((ws, _response))) => ws,
        };
        let id = self.next_id;
        self.next_id += 1;
        let subscribe = serde_json::json!({
            "method": "SUBSCRIBE",
            "params": self.streams,
            "id": id,
        });
        // `send` flushes, so the request is on the wire before we wait for frames.
        if let Err(e) = ws.send(Message::text(subscribe.to_string())).await {
            return Ok(Ended::failed(format!("sending SUBSCRIBE: {e}")));
        }
        if self.connected_before {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            let n = self.totals.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(url, reconnects = n, "binance reconnected and resubscribed");
        } else {
            tracing::info!(url, streams = self.streams.len(), "binance connected");
        }
        self.connected_before = true;

        let mut healthy = false;
        let mut warned_full = false;
        loop {
            let msg = match tokio::time::timeout(self.opts.idle_timeout, ws.next()).await {
                Err(_) => {
                    return Ok(Ended {
                        healthy,
                        reason: format!("no frame for {:?}", self.opts.idle_timeout),
                    })
                }
                Ok(None) => {
                    return Ok(Ended {
                        healthy,
                        reason: "connection closed".to_string(),
                    })
                }
                Ok(Some(Err(e))) => {
                    return Ok(Ended {
                        healthy,
                        reason: e.to_string(),
                    })
                }
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(text) => match decode(text.as_str(), now_ns) {
                    Ok(Decoded::Event(ev)) => {
                        healthy = true;
                        let ev = match self.tx.try_send(Ok(ev)) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                return Err(ProviderError::Upstream("consumer gone".into()))
                            }
                            Err(mpsc::error::TrySendError::Full(ev)) => ev,
                        };
                        if !warned_full {
                            warned_full = true;
                            tracing::warn!(
                                capacity = QUEUE_CAPACITY,
                                "binance consumer is slow: event queue full, reading paused"
                            );
                        }
                        if self.tx.send(ev).await.is_err() {
                            return Err(ProviderError::Upstream("consumer gone".into()));
                        }
                    }
                    Ok(Decoded::Ack { id: got }) => {
                        healthy = true;
                        tracing::debug!(id = got, "binance subscription acknowledged");
                    }
                    Ok(Decoded::Rejected { id: got, code, msg }) if got == id => {
                        return Err(ProviderError::Upstream(format!(
                            "binance rejected the subscription to {}: code {code}: {msg}",
                            self.streams.join(",")
                        )));
                    }
                    Ok(Decoded::Rejected { .. }) => self.skip("error reply", text.as_str()),
                    Err(why) => self.skip(&why, text.as_str()),
                },
                Message::Binary(_) => self.skip("binary frame", ""),
                Message::Ping(_) => {
                    // tungstenite queued the pong while reading; push it out now rather
                    // than with the next read.
                    if let Err(e) = ws.flush().await {
                        return Ok(Ended {
                            healthy,
                            reason: format!("answering ping: {e}"),
                        });
                    }
                }
                Message::Close(frame) => {
                    // Keep reading: tungstenite answers the close and the next read ends.
                    tracing::info!(?frame, "binance closed the connection");
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn skip(&self, why: &str, text: &str) {
        self.totals.skipped.fetch_add(1, Ordering::Relaxed);
        let n = self.counters.skipped.fetch_add(1, Ordering::Relaxed) + 1;
        // Every one is counted; the log shows the first few, then one in a thousand.
        if n <= 10 || n.is_multiple_of(1000) {
            tracing::warn!(
                skipped = n,
                "binance: skipping frame ({why}): {}",
                excerpt(text, 200)
            );
        }
    }
}

/// What one text frame was.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Event(MarketEvent),
    /// `{"result":..,"id":N}`
    Ack {
        id: u64,
    },
    /// `{"error":{"code":..,"msg":..},"id":N}`
    Rejected {
        id: u64,
        code: i64,
        msg: String,
    },
}

/// Every field a frame may carry; Binance adds fields over time, unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
struct Wire {
    #[serde(rename = "e")]
    event: Option<String>,
    #[serde(rename = "E")]
    event_time: Option<u64>,
    #[serde(rename = "T")]
    trade_time: Option<u64>,
    #[serde(rename = "s")]
    symbol: Option<String>,
    #[serde(rename = "t")]
    trade_id: Option<u64>,
    #[serde(rename = "p")]
    price: Option<Num>,
    #[serde(rename = "q")]
    qty: Option<Num>,
    #[serde(rename = "m")]
    buyer_is_maker: Option<bool>,
    // Older trade frames used `b`/`a` for order ids (numbers): `Num` reads those too.
    #[serde(rename = "b")]
    bid: Option<Num>,
    #[serde(rename = "B")]
    bid_qty: Option<Num>,
    #[serde(rename = "a")]
    ask: Option<Num>,
    #[serde(rename = "A")]
    ask_qty: Option<Num>,
    id: Option<u64>,
    error: Option<WireError>,
    stream: Option<String>,
    data: Option<Box<Wire>>,
}

#[derive(Debug, Default, Deserialize)]
struct WireError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
}

/// A decimal that Binance sends as a string (`"37000.50"`); numbers are accepted too.
#[derive(Clone, Copy, Debug)]
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number, or a string holding one")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Num, E> {
                match s.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Num(x)),
                    _ => Err(E::custom(format!("not a decimal: {s:?}"))),
                }
            }

            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Num, E> {
                Ok(Num(x))
            }

            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }

            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }
        }
        d.deserialize_any(NumVisitor)
    }
}

/// Decodes one text frame; `now` stamps quotes that carry no time. `Err` says why the frame
/// is unusable.
pub(crate) fn decode(text: &str, now: fn() -> u64) -> Result<Decoded, String> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| format!("unreadable: {e}"))?;
    if let Some(id) = wire.id {
        return Ok(match wire.error {
            Some(err) => Decoded::Rejected {
                id,
                code: err.code,
                msg: err.msg,
            },
            None => Decoded::Ack { id },
        });
    }
    match wire.data {
        Some(data) => {
            let stream = wire.stream.unwrap_or_default();
            decode_payload(*data, &stream, now)
        }
        None => decode_payload(wire, "", now),
    }
}

/// A market data payload; `stream` is the combined-stream name, when there was one.
fn decode_payload(w: Wire, stream: &str, now: fn() -> u64) -> Result<Decoded, String> {
    let is_book = match w.event.as_deref() {
        Some("trade") => false,
        Some("bookTicker") => true,
        // Spot bookTicker frames have no "e".
        None if stream.ends_with("@bookTicker") || (w.bid.is_some() && w.ask.is_some()) => true,
        Some(other) => return Err(format!("unsupported event {other:?}")),
        None => return Err("not a trade or bookTicker frame".to_string()),
    };
    let symbol = w.symbol.filter(|s| !s.is_empty()).ok_or("no symbol (s)")?;
    let ev = if is_book {
        let (Some(bid), Some(ask)) = (w.bid, w.ask) else {
            return Err("bookTicker without bid (b) or ask (a)".to_string());
        };
        let ts = match w.trade_time.or(w.event_time) {
            Some(ms) => ms_to_ns(ms)?,
            None => now(),
        };
        MarketEvent::Quote(Quote {
            symbol,
            ts,
            bid: bid.0,
            ask: ask.0,
            bid_size: w.bid_qty.map_or(0.0, |n| n.0),
            ask_size: w.ask_qty.map_or(0.0, |n| n.0),
        })
    } else {
        let (Some(price), Some(qty)) = (w.price, w.qty) else {
            return Err("trade without price (p) or quantity (q)".to_string());
        };
        let maker = w.buyer_is_maker.ok_or("trade without m")?;
        let ms = w
            .trade_time
            .or(w.event_time)
            .ok_or("trade without time (T)")?;
        MarketEvent::Trade(Trade {
            symbol,
            ts: ms_to_ns(ms)?,
            price: price.0,
            size: qty.0,
            // The buyer made the market, so the seller crossed the spread.
            side: if maker { Side::Sell } else { Side::Buy },
            id: w.trade_id.unwrap_or(0),
        })
    };
    Ok(Decoded::Event(ev))
}

fn ms_to_ns(ms: u64) -> Result<u64, String> {
    ms.checked_mul(1_000_000)
        .ok_or_else(|| format!("time {ms} ms out of range"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The first `max` characters of `text`, marked when cut.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Parses a klines reply: `[[openTime,"o","h","l","c","v",closeTime,"qv",trades,"tbv",..],..]`.
fn parse_klines(body: &[u8], symbol: &str, secs: u32) -> Result<Vec<Bar>, String> {
    let rows: Vec<Vec<serde_json::Value>> = serde_json::from_slice(body).map_err(|e| {
        format!(
            "unreadable klines ({e}): {}",
            excerpt(&String::from_utf8_lossy(body), 200)
        )
    })?;
    rows.iter()
        .enumerate()
        .map(|(i, row)| kline(row, symbol, secs).map_err(|e| format!("kline {i}: {e}: {row:?}")))
        .collect()
}

fn kline(row: &[serde_json::Value], symbol: &str, secs: u32) -> Result<Bar, String> {
    let field = |i: usize| row.get(i).ok_or_else(|| format!("no field {i}"));
    let uint = |i: usize| {
        field(i)?
            .as_u64()
            .ok_or_else(|| format!("field {i} is not an integer"))
    };
    let dec = |i: usize| match field(i)? {
        serde_json::Value::String(s) => s
            .parse::<f64>()
            .map_err(|_| format!("field {i} is not a decimal")),
        v => v
            .as_f64()
            .ok_or_else(|| format!("field {i} is not a decimal")),
    };
    Ok(Bar {
        symbol: symbol.to_string(),
        ts: ms_to_ns(uint(0)?)?,
        secs,
        open: dec(1)?,
        high: dec(2)?,
        low: dec(3)?,
        close: dec(4)?,
        volume: dec(5)?,
        buy_volume: dec(9)?,
        trades: uint(8)?,
    })
}

/// rustls with ring and the webpki roots compiled in. The provider is passed explicitly so
/// nothing depends on a process-wide default (which panics when two are compiled in).
fn tls_config() -> Result<Arc<ClientConfig>, ProviderError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP status with its reason phrase, as it is shown in errors.
struct Status {
    code: u16,
    reason: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// One HTTP/1.1 GET (`http://` or `https://`), `Connection: close`; the status and body.
///
/// A hand-written client because one GET per history call is all we need, and it reuses the
/// rustls stack the WebSocket already compiles in.
async fn http_get(url: &str, tls: &Arc<ClientConfig>) -> Result<(Status, Vec<u8>), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported scheme {other:?} in {url:?}")),
    };
    let host = uri.host().ok_or_else(|| format!("no host in {url:?}"))?;
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: dualbus/{}\r\n\
         Accept: application/json\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    // IPv6 literals come bracketed in URLs, bare in socket addresses and SNI.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect {host_header}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if secure {
        let name = ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("bad TLS name {bare_host:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host_header}: {e}"))?;
        exchange(stream, &request).await
    } else {
        exchange(tcp, &request).await
    }
}

/// How the end of a response body is found.
enum BodyLength {
    Exact(usize),
    Chunked,
    UntilClose,
}

async fn exchange<S>(mut io: S, request: &str) -> Result<(Status, Vec<u8>), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending request: {e}"))?;
    io.flush()
        .await
        .map_err(|e| format!("sending request: {e}"))?;

    let mut buf = Vec::with_capacity(16 * 1024);
    let (status, head_len, length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = Status {
                    code: response.code.unwrap_or(0),
                    reason: response.reason.unwrap_or("").to_string(),
                };
                break (status, head_len, body_length(response.headers)?);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HTTP_HEAD => {
                return Err("response head too large".to_string())
            }
            Ok(httparse::Status::Partial) => {
                if read_more(&mut io, &mut buf).await? == 0 {
                    return Err("connection closed before the response head".to_string());
                }
            }
            Err(e) => return Err(format!("malformed response: {e}")),
        }
    };
    let mut body = buf.split_off(head_len);
    let mut chunks = Dechunker::default();
    loop {
        match length {
            BodyLength::Exact(n) if body.len() >= n => {
                body.truncate(n);
                return Ok((status, body));
            }
            BodyLength::Chunked if chunks.advance(&body)? => {
                return Ok((status, chunks.out));
            }
            _ => {}
        }
        if body.len() > MAX_HTTP_BODY {
            return Err("response body too large".to_string());
        }
        if read_more(&mut io, &mut body).await? == 0 {
            return match length {
                BodyLength::UntilClose => Ok((status, body)),
                _ => Err("connection closed in the middle of the body".to_string()),
            };
        }
    }
}

fn body_length(headers: &[httparse::Header<'_>]) -> Result<BodyLength, String> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return Ok(BodyLength::Chunked);
    }
    match value("content-length") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_HTTP_BODY => Ok(BodyLength::Exact(n)),
            Ok(n) => Err(format!("response body too large ({n} bytes)")),
            Err(_) => Err(format!("bad Content-Length {v:?}")),
        },
        None => Ok(BodyLength::UntilClose),
    }
}

/// Reads once into `buf`; 0 at the end. A TLS peer that closes without `close_notify` is an
/// end too (common, and the body length says whether anything is missing).
async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    match io.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(format!("reading response: {e}")),
    }
}

/// Decodes a chunked body as it arrives: each call goes on from the last complete chunk, so
/// a body read in many pieces is parsed once in all (not again from its start per piece).
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    /// The decoded body so far.
    pub(crate) out: Vec<u8>,
    /// Where the next chunk starts in the raw body.
    pos: usize,
}

impl Dechunker {
    /// Decodes the complete chunks of `raw` (the whole raw body so far) past the last call's;
    /// `true` once the last chunk arrived.
    pub(crate) fn advance(&mut self, raw: &[u8]) -> Result<bool, String> {
        loop {
            let rest = &raw[self.pos..];
            let (start, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(v)) => v,
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err("malformed chunked body".to_string()),
            };
            let size = usize::try_from(size).map_err(|_| "chunk too large".to_string())?;
            if size == 0 {
                // Trailers are not used by Binance; the last chunk is enough.
                return Ok(true);
            }
            let end = start
                .checked_add(size)
                .filter(|_| self.out.len().saturating_add(size) <= MAX_HTTP_BODY)
                .ok_or("chunk too large")?;
            if rest.len() < end + 2 {
                return Ok(false);
            }
            if &rest[end..end + 2] != b"\r\n" {
                return Err("malformed chunked body: no CRLF after a chunk's data".to_string());
            }
            self.out.extend_from_slice(&rest[start..end]);
            self.pos += end + 2;
        }
    }
}

/// Decodes a whole chunked body; `None` while it is incomplete.
#[cfg(test)]
fn dechunk(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut d = Dechunker::default();
    Ok(d.advance(raw)?.then_some(d.out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_42() -> u64 {
        42
    }

    fn event(text: &str) -> MarketEvent {
        match decode(text, at_42) {
            Ok(Decoded::Event(ev)) => ev,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn trades_quotes_and_replies_decode() {
        let t = event(
            r#"{"e":"trade","E":2,"s":"BTCUSDT","t":7,"p":"10.5","q":"0.25","b":88,"a":50,"T":1,"m":false,"M":true}"#,
        );
        assert_eq!(
            t,
            MarketEvent::Trade(Trade {
                symbol: "BTCUSDT".into(),
                ts: 1_000_000,
                price: 10.5,
                size: 0.25,
                side: Side::Buy,
                id: 7,
            })
        );
        let q = event(r#"{"u":1,"s":"ETHUSDT","b":"1.5","B":"2","a":"1.6","A":"3"}"#);
        assert_eq!(q.ts(), 42);
        let q = event(
            r#"{"stream":"ethusdt@bookTicker","data":{"u":1,"s":"ETHUSDT","b":"1.5","B":"2","a":"1.6","A":"3","E":5}}"#,
        );
        assert_eq!(q.ts(), 5_000_000);
        assert_eq!(
            decode(r#"{"result":null,"id":3}"#, at_42),
            Ok(Decoded::Ack { id: 3 })
        );
        assert_eq!(
            decode(r#"{"error":{"code":2,"msg":"bad"},"id":3}"#, at_42),
            Ok(Decoded::Rejected {
                id: 3,
                code: 2,
                msg: "bad".into()
            })
        );
        for bad in [
            "garbage",
            "[]",
            "{}",
            r#"{"e":"aggTrade","s":"X"}"#,
            r#"{"e":"trade","s":"X","p":"abc","q":"1","T":1,"m":true}"#,
            r#"{"e":"trade","s":"X","p":"1","q":"1","T":1}"#,
            r#"{"e":"trade","s":"X","p":"NaN","q":"1","T":1,"m":true}"#,
            r#"{"e":"trade","p":"1","q":"1","T":1,"m":true}"#,
            r#"{"e":"trade","s":"X","p":"1","q":"1","T":99999999999999999,"m":true}"#,
        ] {
            assert!(decode(bad, at_42).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_map_and_others_are_refused_with_the_list() {
        assert_eq!(interval_for(60).ok(), Some("1m"));
        assert_eq!(interval_for(86400).ok(), Some("1d"));
        let e = interval_for(7).unwrap_err().to_string();
        assert!(e.contains("no 7 s bars") && e.contains("14400 (4h)"), "{e}");
    }

    #[test]
    fn chunked_bodies_decode_only_when_complete() {
        let raw = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(dechunk(raw), Ok(Some(b"Wikipedia".to_vec())));
        assert_eq!(dechunk(&raw[..12]), Ok(None));
        assert!(dechunk(b"zz\r\n").is_err());
        // The CRLF after a chunk's data is checked, not skipped.
        assert!(dechunk(b"4\r\nWikiXY5\r\npedia\r\n0\r\n\r\n").is_err());
        // Fed piece by piece, the same body, each byte parsed once past the last chunk.
        let mut d = Dechunker::default();
        let mut done = false;
        for n in 1..=raw.len() {
            done = d.advance(&raw[..n]).unwrap();
            if done {
                break;
            }
        }
        assert!(done);
        assert_eq!(d.out, b"Wikipedia");
    }

    #[test]
    fn options_report_every_problem_at_once() {
        let mut opts = BinanceOptions::new(["BTC-USDT"])
            .ws_url("https://x")
            .reconnect(Duration::from_secs(2), Duration::from_secs(1));
        opts.tick_size = 0.0;
        let e = opts.validate().unwrap_err().to_string();
        for part in ["BTC-USDT", "ws_url", "reconnect_max", "tick_size"] {
            assert!(e.contains(part), "{part} missing in {e}");
        }
        assert!(BinanceOptions::default().validate().is_ok());
        let parsed: BinanceOptions =
            serde_json::from_str(r#"{"symbols":["ETHUSDT"],"idle_timeout_ms":1500}"#)
                .expect("parses");
        assert_eq!(parsed.idle_timeout, Duration::from_millis(1500));
        assert!(serde_json::from_str::<BinanceOptions>(r#"{"idle":1}"#).is_err());
        assert_eq!(
            BinanceOptions::new(["BTCUSDT"]).stream_names(),
            ["btcusdt@trade", "btcusdt@bookTicker"]
        );
    }
}
