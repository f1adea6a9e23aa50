//! File replay: real market data files played back at 1x, Nx or maximum speed.
//!
//! [`ReplayProvider::open`] reads the whole file once into a compact table (about 40 bytes a
//! row, so a 1,000,000-row day is 40 MB); every [`Provider::stream`] then replays that table
//! from the start, independently of the others. Rows come out in file order, as
//! [`MarketEvent::Trade`] or [`MarketEvent::Quote`], in batches of up to
//! [`MAX_BATCH`] rows.
//!
//! # Formats
//! * [`FileFormat::Binance`]: a Binance public trade dump (`data.binance.vision`, unzipped), no
//!   header: `id,price,qty,quote_qty,time,is_buyer_maker,is_best_match`, for example
//!   `553287559,39432.48,0.000263,10.37074224,1610064000278,True,True`. `time` is Unix
//!   milliseconds in older dumps and microseconds in newer ones (2025 on): a value above 1e14
//!   is taken as microseconds. `is_buyer_maker = True` means the seller was the aggressor
//!   ([`Side::Sell`]). Booleans are `True`/`False` in any case. The 6-column futures dump
//!   (no `is_best_match`) and a header line starting with `id` are accepted too. The symbol
//!   is not in the file: it comes from [`ReplayOptions::symbol`], else from the file name
//!   (`BTCUSDT-trades-2021-01-08.csv`, `binance-btcusdt-trades-2021-01-08.csv`: the part
//!   before `trades`).
//! * [`FileFormat::Tardis`]: a Tardis.dev trades CSV with the header
//!   `exchange,symbol,timestamp,local_timestamp,id,side,price,amount` (columns are found by
//!   name, so their order does not matter). `timestamp` (the exchange's time, Unix
//!   microseconds) is the event time; `exchange` and `local_timestamp` are not used. A
//!   numeric `id` is kept; any other id (BitMEX's UUIDs) becomes its 64-bit FNV-1a hash,
//!   stable across runs, and an empty one 0. Side `unknown` (or empty) is resolved by the
//!   **tick rule**: a trade above the symbol's previous trade price is a buy, below it a
//!   sell, at the same price the direction of the last price change, and a buy when the
//!   price has not changed yet. A file may hold several symbols; [`ReplayOptions::symbol`],
//!   when given, keeps only that one (case-insensitive).
//! * [`FileFormat::Quotes`]: top of book, header `timestamp,bid,ask` (found by name, extra
//!   columns ignored; sizes are not read, so quotes carry size 0 meaning unknown).
//!   `timestamp` is an ISO 8601 datetime such as `2013-01-01 22:00:00.295000+00:00` (`T` or a
//!   space between date and time, any number of fractional digits, `Z`, `+HH:MM`, `+HHMM`,
//!   `+HH` or no offset, which means UTC), or a Unix time in seconds, milliseconds,
//!   microseconds or nanoseconds told apart by magnitude (below 1e11 seconds, below 1e14
//!   milliseconds, below 1e17 microseconds), with an optional fraction. The symbol comes from
//!   the options, else from the file name (`truefx-usdjpy-quotes-2013-01.csv` gives
//!   `USDJPY`: the part before `quotes`), else `QUOTES`.
//!
//! Fields are split on `,` with no quoting (none of these formats quotes), a trailing `\r`
//! and a UTF-8 byte order mark are dropped, blank lines are ignored. Fields the replay does
//! not use (Binance's `quote_qty`, `is_best_match`) are not checked.
//!
//! # Bad rows
//! A row that cannot be read (wrong field count, a number or timestamp that does not parse,
//! an unknown side) is skipped: once the file is read, one `tracing` warning counts them and
//! names the first (`file`, line, reason, text), [`ReplayProvider::skipped_rows`] lists them
//! all, and each stream's [`MarketStream::skipped`] counts those it has passed. A file none
//! of whose rows can be read is not of the format given: opening it fails with
//! [`ProviderError::Mismatch`] naming the first bad line, and warns of nothing. Rows
//! that parse but hold nonsense (a NaN or negative price, a crossed quote, time going
//! backwards) are passed on as they are: judging data is the hub's [`Validator`]'s job, so
//! it is counted in one place. They are, however, kept out of the bars the replay builds,
//! since the validator would reject the print a bar is made of.
//!
//! # Bars
//! While it replays trades a stream also builds bars of [`ReplayOptions::bar_secs`] with a
//! [`BarBuilder`]: a bar is emitted right when it closes, before the trade that closed it,
//! and the bars still open are flushed at the end of the data. Quote files give no bars in
//! the stream (a bar is made of trades).
//!
//! # History and look-ahead
//! [`Provider::history`] builds bars from the rows the most recently opened stream has
//! delivered, and returns only those that ended at or before the latest event time it has
//! delivered: a strategy warming up on history never sees the replay's future. Before any
//! stream is opened there is no history. For a quote file the bars are of mid prices, with
//! volume 0 and 0 trades.
//!
//! # Layout
//! * this file: the options, the provider, its stream and its history;
//! * `load`: reading a whole file (the loader the formats share), with one module per format:
//!   `load/binance.rs`, `load/tardis.rs`, `load/quotes.rs`;
//! * `time`: the files' timestamps (ISO 8601 datetimes, Unix times of any unit).
//!
//! [`Validator`]: crate::market::Validator

mod load;
mod time;

use crate::market::BarBuilder;
use load::load;

use crate::provider::{HistoryRequest, MarketStream, Pacer, Provider, ProviderError, Speed};
use async_trait::async_trait;
use dualbus_model::market::{Bar, Instrument, MarketEvent, Quote, Side, Trade};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

/// Most data rows a stream appends per [`MarketStream::next_batch`] call (bars closed by those
/// rows come on top).
pub const MAX_BATCH: usize = 1024;

/// Line numbers of bad rows the one warning of a load lists (then "…").
pub const LINES_NAMED: usize = 5;

/// Which kind of file is being replayed. Parses from `binance`, `tardis`, `quotes` or `quote`
/// (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// A Binance public trade dump (no header).
    Binance,
    /// A Tardis.dev trades CSV.
    Tardis,
    /// A `timestamp,bid,ask` quote CSV.
    Quotes,
}

impl FileFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [FileFormat; 3] = [FileFormat::Binance, FileFormat::Tardis, FileFormat::Quotes];

    /// The format's name, as [`FromStr`](std::str::FromStr) accepts it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Binance => "binance",
            FileFormat::Tardis => "tardis",
            FileFormat::Quotes => "quotes",
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is none of [`FileFormat::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown replay format {value:?}: expected binance, tardis or quotes")]
pub struct ParseFileFormatError {
    /// The name that was given.
    pub value: String,
}

impl std::str::FromStr for FileFormat {
    type Err = ParseFileFormatError;

    /// `binance`, `tardis`, `quotes` or `quote`, in any case.
    fn from_str(s: &str) -> Result<FileFormat, ParseFileFormatError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("binance") {
            Ok(FileFormat::Binance)
        } else if t.eq_ignore_ascii_case("tardis") {
            Ok(FileFormat::Tardis)
        } else if t.eq_ignore_ascii_case("quotes") || t.eq_ignore_ascii_case("quote") {
            Ok(FileFormat::Quotes)
        } else {
            Err(ParseFileFormatError {
                value: s.to_string(),
            })
        }
    }
}

/// What to replay and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOptions {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: FileFormat,
    /// The instrument: names a Binance or quote file's rows (else guessed from the file name);
    /// for a Tardis file, keeps only that symbol's rows.
    pub symbol: Option<String>,
    /// Playback speed.
    pub speed: Speed,
    /// Length of the bars the stream emits, in seconds (60 by default).
    pub bar_secs: u32,
}

impl ReplayOptions {
    /// `path` in `format`, at maximum speed, symbol from the file, 1-minute bars.
    ///
    /// ```
    /// use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
    /// let opts = ReplayOptions::new("BTCUSDT-trades-2021-01-08.csv", FileFormat::Binance);
    /// assert_eq!(opts.bar_secs, 60);
    /// ```
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> ReplayOptions {
        ReplayOptions {
            path: path.into(),
            format,
            symbol: None,
            speed: Speed::Max,
            bar_secs: 60,
        }
    }

    /// Sets the symbol.
    ///
    /// ```
    /// use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
    /// let opts = ReplayOptions::new("trades.csv", FileFormat::Binance).symbol("ETHUSDT");
    /// assert_eq!(opts.symbol.as_deref(), Some("ETHUSDT"));
    /// ```
    pub fn symbol(mut self, symbol: impl Into<String>) -> ReplayOptions {
        self.symbol = Some(symbol.into());
        self
    }

    /// Sets the playback speed.
    ///
    /// ```
    /// use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
    /// use dualbus_engines::provider::Speed;
    /// let opts = ReplayOptions::new("q.csv", FileFormat::Quotes).speed(Speed::Times(60.0));
    /// assert_eq!(opts.speed, Speed::Times(60.0));
    /// ```
    pub fn speed(mut self, speed: Speed) -> ReplayOptions {
        self.speed = speed;
        self
    }

    /// Sets the length of the streamed bars, in seconds.
    ///
    /// ```
    /// use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
    /// let opts = ReplayOptions::new("t.csv", FileFormat::Tardis).bar_secs(300);
    /// assert_eq!(opts.bar_secs, 300);
    /// ```
    pub fn bar_secs(mut self, secs: u32) -> ReplayOptions {
        self.bar_secs = secs;
        self
    }

    /// Checks the options without touching the file.
    ///
    /// # Errors
    /// [`ProviderError::Config`] listing every problem at once: an empty path, a `bar_secs` of
    /// 0, a speed that is not a positive finite factor, an empty symbol or one with spaces.
    pub fn validate(&self) -> Result<(), ProviderError> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push("replay path is empty".to_string());
        }
        if self.bar_secs == 0 {
            problems.push("bar_secs must be at least 1".to_string());
        }
        if let Speed::Times(x) = self.speed {
            if !(x.is_finite() && x > 0.0) {
                problems.push(format!("speed {x}x: expected a positive factor"));
            }
        }
        if let Some(s) = &self.symbol {
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == ',') {
                problems.push(format!(
                    "symbol {s:?}: expected a non-empty name without spaces or commas"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::Config(problems.join("; ")))
        }
    }
}

/// Why a row was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowError {
    /// The row has the wrong number of fields.
    FieldCount {
        /// How many the format has.
        expected: usize,
        /// How many the row has.
        found: usize,
    },
    /// A field does not parse.
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
    /// The row is not UTF-8 text.
    NotUtf8,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowError::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            RowError::Invalid { field, expected } => write!(f, "{field}: expected {expected}"),
            RowError::NotUtf8 => f.write_str("not UTF-8 text"),
        }
    }
}

/// A row the replay skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    /// Line number in the file, from 1.
    pub line: u64,
    /// Why.
    pub problem: RowError,
}

/// Replays a file of trades or quotes (see the [module docs](self)).
///
/// Opening reads and parses the file; streams and history calls then work from memory. A
/// stream's position is shared with [`Provider::history`] so history never runs ahead of
/// what has been streamed.
pub struct ReplayProvider {
    opts: ReplayOptions,
    data: Arc<ReplayData>,
    /// Position of the most recently opened stream (`None` before the first).
    latest: Mutex<Option<Arc<Mutex<Position>>>>,
    streams_opened: AtomicU64,
    /// Bars built so far per (symbol index, bar length), extended as the stream advances.
    history: Mutex<HashMap<(u32, u32), HistoryBars>>,
}

impl fmt::Debug for ReplayProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayProvider")
            .field("path", &self.opts.path)
            .field("format", &self.opts.format)
            .field("symbols", &self.data.symbols)
            .field("rows", &self.data.rows.len())
            .field("skipped", &self.data.skipped.len())
            .finish()
    }
}

impl ReplayProvider {
    /// Reads and parses `opts.path`. This blocks while it reads (about half a second per
    /// million rows): call it before starting the runtime, or in `spawn_blocking`.
    ///
    /// # Errors
    /// * [`ProviderError::Config`]: invalid options; a Binance file with no symbol given and
    ///   none in its name; a Tardis or quote file whose header lacks a needed column; a file
    ///   with no data rows, or none that can be read; a Tardis symbol filter that matches no
    ///   row (the message names the symbols found).
    /// * [`ProviderError::Io`]: the file cannot be opened or read.
    pub fn open(opts: ReplayOptions) -> Result<ReplayProvider, ProviderError> {
        opts.validate()?;
        let data = load(&opts)?;
        Ok(ReplayProvider {
            opts,
            data: Arc::new(data),
            latest: Mutex::new(None),
            streams_opened: AtomicU64::new(0),
            history: Mutex::new(HashMap::new()),
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ReplayOptions {
        &self.opts
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// The symbols with data, in order of first appearance.
    pub fn symbols(&self) -> &[String] {
        &self.data.symbols
    }

    /// Trades or quotes loaded (the skipped rows are not counted).
    pub fn len(&self) -> usize {
        self.data.rows.len()
    }

    /// Whether no row was loaded (never true for a provider that opened: such a file is an
    /// error).
    pub fn is_empty(&self) -> bool {
        self.data.rows.is_empty()
    }

    /// Earliest and latest event time in the file, Unix ns.
    pub fn time_range(&self) -> Option<(u64, u64)> {
        self.data.time_range
    }

    /// Rows the latest stream has delivered so far (0 before the first stream), for progress
    /// output: compare with [`len`](Self::len).
    pub fn delivered(&self) -> usize {
        self.latest
            .lock()
            .as_ref()
            .map_or(0, |p| p.lock().delivered)
    }

    /// Every row skipped as unreadable, in file order.
    pub fn skipped_rows(&self) -> &[SkippedRow] {
        &self.data.skipped
    }
}

#[async_trait]
impl Provider for ReplayProvider {
    fn name(&self) -> &'static str {
        "replay"
    }

    /// One instrument per symbol. Tick and lot sizes are inferred from the data as
    /// `10^-d`, `d` being the most decimal places (trailing zeros dropped) seen in the
    /// symbol's prices and sizes: at most the real increment, finer when the data never uses
    /// the last digit (BitMEX XBTUSD's 0.5 tick shows as 0.1). Quote files, which carry no
    /// sizes, get a lot size of 1.
    fn instruments(&self) -> Vec<Instrument> {
        self.data.instruments.clone()
    }

    /// A new replay from the first row, independent of any earlier stream; from now on
    /// history follows this one.
    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        let generation = self.streams_opened.fetch_add(1, Ordering::Relaxed) + 1;
        let position = Arc::new(Mutex::new(Position {
            generation,
            delivered: 0,
            data_ts: 0,
        }));
        *self.latest.lock() = Some(Arc::clone(&position));
        let bars = match self.data.kind {
            RowKind::Trades => Some(BarBuilder::new(self.opts.bar_secs)),
            RowKind::Quotes => None,
        };
        Ok(Box::new(ReplayStream {
            data: Arc::clone(&self.data),
            next: 0,
            data_ts: 0,
            speed: self.opts.speed,
            pacer: Pacer::new(self.opts.speed),
            bars,
            finished: false,
            position,
        }))
    }

    /// Bars of `req.bar_secs` for `req.symbol`, built from the rows the latest stream has
    /// delivered (mid prices, volume 0, for a quote file): those that ended at or before both
    /// that stream's latest event time and `req.end_ts`, the latest `req.limit` of them,
    /// oldest first. Empty before any stream is opened.
    ///
    /// # Errors
    /// [`ProviderError::BadRequest`] for a symbol not in the file (the message lists those
    /// that are) or a `bar_secs` of 0.
    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        if req.bar_secs == 0 {
            return Err(ProviderError::BadRequest(
                "history: bar_secs must be at least 1".to_string(),
            ));
        }
        let Some(sym) = self.data.symbols.iter().position(|s| *s == req.symbol) else {
            return Err(ProviderError::BadRequest(format!(
                "history: unknown symbol {:?}; the replay of {} has {}",
                req.symbol,
                self.opts.path.display(),
                self.data.symbols.join(", ")
            )));
        };
        let Some(latest) = self.latest.lock().clone() else {
            return Ok(Vec::new());
        };
        let pos = *latest.lock();
        if pos.delivered == 0 || req.limit == 0 {
            return Ok(Vec::new());
        }
        let cutoff = pos.data_ts.min(req.end_ts.unwrap_or(u64::MAX));
        let mut cache = self.history.lock();
        let built = cache
            .entry((sym as u32, req.bar_secs))
            .or_insert_with(|| HistoryBars::new(pos.generation));
        if built.generation != pos.generation || built.next_row > pos.delivered {
            *built = HistoryBars::new(pos.generation);
        }
        let symbol = &self.data.symbols[sym];
        for row in &self.data.rows[built.next_row..pos.delivered] {
            if row.sym != sym as u32 {
                continue;
            }
            match self.data.kind {
                RowKind::Trades if fits_a_bar(row.a, row.b) => {
                    built.add(symbol, req.bar_secs, row.ts, row.a, row.b, row.side, 1);
                }
                RowKind::Quotes => {
                    if let Some(mid) = usable_mid(row.a, row.b) {
                        built.add(symbol, req.bar_secs, row.ts, mid, 0.0, Side::Buy, 0);
                    }
                }
                RowKind::Trades => {}
            }
        }
        built.next_row = pos.delivered;
        Ok(built.ended_by(cutoff, req.limit as usize))
    }
}

/// What a row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    /// `a` is the price, `b` the size.
    Trades,
    /// `a` is the bid, `b` the ask.
    Quotes,
}

/// One trade or quote, without its symbol string: kept small because a day of trades is
/// millions of them.
#[derive(Clone, Copy, Debug)]
struct Row {
    ts: u64,
    id: u64,
    a: f64,
    b: f64,
    sym: u32,
    side: Side,
}

/// A parsed file, shared by the provider and its streams.
#[derive(Debug)]
struct ReplayData {
    kind: RowKind,
    symbols: Vec<String>,
    instruments: Vec<Instrument>,
    rows: Vec<Row>,
    skipped: Vec<SkippedRow>,
    /// For each skipped row, how many good rows precede it (so a stream can tell which it
    /// has passed).
    skipped_before: Vec<usize>,
    time_range: Option<(u64, u64)>,
}

/// How far a stream has got.
#[derive(Clone, Copy, Debug)]
struct Position {
    /// Which stream (counts `stream()` calls), so history rebuilds after a restart.
    generation: u64,
    /// Rows delivered.
    delivered: usize,
    /// Latest event time delivered, Unix ns (0 before the first).
    data_ts: u64,
}

/// One replay of a [`ReplayData`].
struct ReplayStream {
    data: Arc<ReplayData>,
    next: usize,
    data_ts: u64,
    speed: Speed,
    pacer: Pacer,
    bars: Option<BarBuilder>,
    finished: bool,
    position: Arc<Mutex<Position>>,
}

#[async_trait]
impl MarketStream for ReplayStream {
    /// Cancel-safe: the only waits (the pacer, the scheduler budget) come before any state
    /// changes, so a dropped call loses nothing.
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        let data = Arc::clone(&self.data);
        let rows = &data.rows;
        if self.next >= rows.len() {
            if self.finished {
                return Ok(false);
            }
            // Only reached with no rows at all; `open` refuses such files, but be total.
            let before = out.len();
            self.finish(out);
            return Ok(out.len() > before);
        }
        let end = (self.next + MAX_BATCH).min(rows.len());
        match self.speed {
            Speed::Max => {
                // A max-speed replay never waits: give the scheduler a turn so other tasks
                // on this worker (the hub's request handling) are not starved.
                tokio::task::consume_budget().await;
                for row in &rows[self.next..end] {
                    emit(&data, row, &mut self.bars, out);
                    self.data_ts = self.data_ts.max(row.ts);
                }
                self.next = end;
            }
            Speed::Times(_) => {
                self.pacer.wait_for(rows[self.next].ts).await;
                let mut i = self.next;
                loop {
                    emit(&data, &rows[i], &mut self.bars, out);
                    self.data_ts = self.data_ts.max(rows[i].ts);
                    i += 1;
                    if i == end || !due_now(&mut self.pacer, rows[i].ts) {
                        break;
                    }
                }
                self.next = i;
            }
        }
        if self.next == rows.len() {
            self.finish(out);
        } else {
            self.publish_position();
        }
        Ok(true)
    }

    fn skipped(&self) -> u64 {
        let passed = if self.next >= self.data.rows.len() {
            self.data.skipped_before.len()
        } else {
            self.data.skipped_before.partition_point(|&k| k < self.next)
        };
        passed as u64
    }
}

impl ReplayStream {
    /// End of data: the open bars close.
    fn finish(&mut self, out: &mut Vec<MarketEvent>) {
        if let Some(bars) = &mut self.bars {
            out.extend(bars.flush().into_iter().map(MarketEvent::Bar));
        }
        self.finished = true;
        self.publish_position();
    }

    fn publish_position(&self) {
        let mut pos = self.position.lock();
        pos.delivered = self.next;
        pos.data_ts = self.data_ts;
    }
}

/// Whether the pacer would let the event at `ts` through right now, without waiting: polls
/// its wait once. Dropping the pending wait is fine (the pacer's origin is already set).
fn due_now(pacer: &mut Pacer, ts: u64) -> bool {
    let wait = pacer.wait_for(ts);
    let mut wait = std::pin::pin!(wait);
    let mut cx = Context::from_waker(Waker::noop());
    wait.as_mut().poll(&mut cx).is_ready()
}

/// Appends `row` as an event, preceded by the bar it closes, if any.
fn emit(data: &ReplayData, row: &Row, bars: &mut Option<BarBuilder>, out: &mut Vec<MarketEvent>) {
    let symbol = data.symbols[row.sym as usize].clone();
    match data.kind {
        RowKind::Trades => {
            let trade = Trade {
                symbol,
                ts: row.ts,
                price: row.a,
                size: row.b,
                side: row.side,
                id: row.id,
            };
            if let Some(builder) = bars {
                if fits_a_bar(trade.price, trade.size) {
                    if let Some(bar) = builder.on_trade(&trade) {
                        out.push(MarketEvent::Bar(bar));
                    }
                }
            }
            out.push(MarketEvent::Trade(trade));
        }
        RowKind::Quotes => out.push(MarketEvent::Quote(Quote {
            symbol,
            ts: row.ts,
            bid: row.a,
            ask: row.b,
            bid_size: 0.0,
            ask_size: 0.0,
        })),
    }
}

/// Whether a trade passes the validator's rules for a print (`market::check`): one it would
/// reject must not move a bar either.
fn fits_a_bar(price: f64, size: f64) -> bool {
    price.is_finite() && price > 0.0 && size.is_finite() && size >= 0.0
}

/// The mid of a quote the validator would accept.
fn usable_mid(bid: f64, ask: f64) -> Option<f64> {
    let ok = bid.is_finite() && ask.is_finite() && bid > 0.0 && ask > 0.0 && bid <= ask;
    ok.then(|| (bid + ask) / 2.0)
}

/// History bars of one symbol and length, built incrementally as the stream advances. It
/// follows [`BarBuilder`]'s rules (aligned periods, late prints ignored, no bar for a period
/// without prints) but keeps the open bar readable, since a bar that has ended by the data
/// time belongs in history before the next print closes it.
#[derive(Debug)]
struct HistoryBars {
    generation: u64,
    next_row: usize,
    closed: Vec<Bar>,
    open: Option<Bar>,
    /// Time of the last print taken (older prints are ignored, as the validator rejects them).
    last_ts: u64,
}

impl HistoryBars {
    fn new(generation: u64) -> HistoryBars {
        HistoryBars {
            generation,
            next_row: 0,
            closed: Vec::new(),
            open: None,
            last_ts: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        symbol: &str,
        secs: u32,
        ts: u64,
        price: f64,
        size: f64,
        side: Side,
        prints: u64,
    ) {
        if ts < self.last_ts {
            return;
        }
        self.last_ts = ts;
        let len = u64::from(secs) * 1_000_000_000;
        let start = ts - ts % len;
        let buy = if side == Side::Buy { size } else { 0.0 };
        match &mut self.open {
            Some(bar) if bar.ts == start => {
                bar.high = bar.high.max(price);
                bar.low = bar.low.min(price);
                bar.close = price;
                bar.volume += size;
                bar.buy_volume += buy;
                bar.trades += prints;
            }
            Some(bar) if start < bar.ts => {} // late print: BarBuilder drops it too
            _ => {
                let fresh = Bar {
                    symbol: symbol.to_string(),
                    ts: start,
                    secs,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    volume: size,
                    buy_volume: buy,
                    trades: prints,
                };
                if let Some(done) = self.open.replace(fresh) {
                    self.closed.push(done);
                }
            }
        }
    }

    /// The latest `limit` bars that ended at or before `cutoff`, oldest first.
    fn ended_by(&self, cutoff: u64, limit: usize) -> Vec<Bar> {
        // Bars close in time order, so the closed list is sorted by end.
        let n = self.closed.partition_point(|b| b.end_ts() <= cutoff);
        let open = self
            .open
            .as_ref()
            .filter(|b| n == self.closed.len() && b.end_ts() <= cutoff);
        let total = n + usize::from(open.is_some());
        let skip = total.saturating_sub(limit);
        self.closed[..n]
            .iter()
            .chain(open)
            .skip(skip)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::load::tardis::{trade_id, TickRule};
    use super::load::{decimals, symbol_from_file_name};
    use super::time::parse_timestamp_ns;
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn truefx_datetimes_parse_to_unix_nanoseconds() {
        // 2013-01-01T00:00:00Z is 1356998400.
        let base = 1_356_998_400 * S;
        let at = base + (22 * 3600) * S + 295_000_000;
        assert_eq!(
            parse_timestamp_ns("2013-01-01 22:00:00.295000+00:00"),
            Some(at)
        );
        assert_eq!(parse_timestamp_ns("2013-01-01T22:00:00.295Z"), Some(at));
        assert_eq!(parse_timestamp_ns("2013-01-01t22:00:00.295z"), Some(at));
        assert_eq!(parse_timestamp_ns("2013-01-01 22:00:00.295"), Some(at));
        assert_eq!(
            parse_timestamp_ns("2013-01-01 23:00:00.295+01:00"),
            Some(at)
        );
        assert_eq!(parse_timestamp_ns("2013-01-01 23:00:00.295+0100"), Some(at));
        assert_eq!(parse_timestamp_ns("2013-01-01 23:00:00.295+01"), Some(at));
        assert_eq!(
            parse_timestamp_ns("2013-01-01 21:30:00.295-00:30"),
            Some(at)
        );
        assert_eq!(
            parse_timestamp_ns("2013-01-01 22:00:00.2950001239Z"),
            Some(at + 123),
            "digits past nanoseconds are truncated"
        );
        assert_eq!(
            parse_timestamp_ns("2013-01-01 22:00:00"),
            Some(at - 295_000_000)
        );
        assert_eq!(parse_timestamp_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp_ns("2000-02-29T00:00:00Z"),
            Some(951_782_400 * S)
        );
        assert_eq!(
            parse_timestamp_ns("2024-12-31T23:59:59Z"),
            Some(1_735_689_599 * S)
        );
        for bad in [
            "2013-02-29 00:00:00",
            "2013-13-01 00:00:00",
            "2013-01-01 24:00:00",
            "2013-01-01 22:00",
            "2013-01-01 22:00:00.",
            "2013-01-01 22:00:00+1:00",
            "2013-01-01 22:00:00 junk",
            "1969-12-31 23:59:59Z",
            "2013/01/01 22:00:00",
        ] {
            assert_eq!(parse_timestamp_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_times_are_told_apart_by_magnitude() {
        let ns = 1_357_077_600_295_000_000u64;
        assert_eq!(parse_timestamp_ns("1357077600.295"), Some(ns));
        assert_eq!(parse_timestamp_ns("1357077600295"), Some(ns));
        assert_eq!(parse_timestamp_ns("1357077600295000"), Some(ns));
        assert_eq!(parse_timestamp_ns("1357077600295000000"), Some(ns));
        assert_eq!(parse_timestamp_ns("1357077600295.5"), Some(ns + 500_000));
        assert_eq!(parse_timestamp_ns("-1357077600"), None);
        assert_eq!(parse_timestamp_ns("1357077600.x"), None);
        assert_eq!(parse_timestamp_ns(""), None);
    }

    #[test]
    fn symbols_come_from_file_names() {
        let guess = |name: &str, k: &[&str]| symbol_from_file_name(Path::new(name), k);
        let trades = ["trades"];
        assert_eq!(
            guess("/x/BTCUSDT-trades-2021-01-08.csv", &trades).as_deref(),
            Some("BTCUSDT")
        );
        assert_eq!(
            guess("binance-btcusdt-trades-2021-01-08.csv", &trades).as_deref(),
            Some("BTCUSDT")
        );
        assert_eq!(
            guess("truefx-usdjpy-quotes-2013-01.csv", &["quotes"]).as_deref(),
            Some("USDJPY")
        );
        assert_eq!(guess("trades-2021.csv", &trades), None);
        assert_eq!(guess("2021-trades.csv", &trades), None);
        assert_eq!(guess("data.csv", &trades), None);
    }

    #[test]
    fn the_tick_rule_classifies_unknown_sides() {
        let mut t = TickRule::default();
        assert_eq!(t.classify(10.0), Side::Buy, "no price change yet: buy");
        t.observe(10.0);
        assert_eq!(t.classify(9.0), Side::Sell);
        t.observe(9.0);
        assert_eq!(t.classify(9.0), Side::Sell, "zero tick: last change");
        t.observe(9.0);
        assert_eq!(t.classify(9.5), Side::Buy);
    }

    #[test]
    fn decimals_ignore_trailing_zeros_and_exponents() {
        assert_eq!(decimals("39432.48000000"), 2);
        assert_eq!(decimals("0.000263"), 6);
        assert_eq!(decimals("2152"), 0);
        assert_eq!(decimals("1e-5"), 0);
    }

    #[test]
    fn uuid_trade_ids_hash_stably() {
        assert_eq!(trade_id("553287559"), 553_287_559);
        assert_eq!(trade_id(""), 0);
        let a = trade_id("ccc3c1fa-212c-e8b0-1706-9b9c4f3d5ecf");
        assert_ne!(a, 0);
        assert_eq!(a, trade_id("ccc3c1fa-212c-e8b0-1706-9b9c4f3d5ecf"));
        assert_ne!(a, trade_id("b46c84da-6942-b404-ab94-18a9ad497fdd"));
    }
}
