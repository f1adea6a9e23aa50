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
//! [`Validator`]: crate::market::Validator

use crate::market::BarBuilder;

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

// ---------------------------------------------------------------------------------------
// Loading

/// Powers of ten for inferred tick and lot sizes, as literals so they are the nearest doubles.
const DECIMAL_STEPS: [f64; 13] = [
    1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12,
];

/// The widest row of any format; fields past it are only counted.
const MAX_FIELDS: usize = 16;

/// Column positions in a Tardis header.
#[derive(Debug)]
struct TardisColumns {
    count: usize,
    symbol: usize,
    timestamp: usize,
    id: Option<usize>,
    side: usize,
    price: usize,
    amount: usize,
}

/// Column positions in a quote header.
#[derive(Debug)]
struct QuoteColumns {
    count: usize,
    timestamp: usize,
    bid: usize,
    ask: usize,
}

/// How to read a data row; Binance and quote rows all belong to one symbol (its index).
#[derive(Debug)]
enum Layout {
    Binance(u32),
    Tardis(TardisColumns),
    Quotes(u32, QuoteColumns),
}

/// Tick-rule state of one symbol (Tardis `unknown` sides).
#[derive(Clone, Copy, Debug, Default)]
struct TickRule {
    last_price: Option<f64>,
    last_change: Option<Side>,
}

impl TickRule {
    /// The side the tick rule gives a trade at `price`.
    fn classify(&self, price: f64) -> Side {
        match self.last_price {
            Some(p) if price > p => Side::Buy,
            Some(p) if price < p => Side::Sell,
            _ => self.last_change.unwrap_or(Side::Buy),
        }
    }

    fn observe(&mut self, price: f64) {
        if let Some(p) = self.last_price {
            if price > p {
                self.last_change = Some(Side::Buy);
            } else if price < p {
                self.last_change = Some(Side::Sell);
            }
        }
        self.last_price = Some(price);
    }
}

/// Per-symbol state while loading.
#[derive(Debug)]
struct SymbolStats {
    price_dp: u8,
    size_dp: u8,
    ticks: TickRule,
}

/// Everything gathered while reading a file.
struct Loader<'a> {
    file: String,
    format: FileFormat,
    filter: Option<&'a str>,
    symbols: Vec<String>,
    stats: Vec<SymbolStats>,
    /// Symbols seen in a Tardis file but filtered out (for the error when none matches).
    others: Vec<String>,
    rows: Vec<Row>,
    skipped: Vec<SkippedRow>,
    skipped_before: Vec<usize>,
    /// The text of the first skipped row (its start), for the warning or the error.
    first_bad: Option<String>,
}

impl Loader<'_> {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(last) = self.symbols.last() {
            // Files are mostly one symbol: check the newest before searching.
            if last == name {
                return (self.symbols.len() - 1) as u32;
            }
        }
        if let Some(i) = self.symbols.iter().position(|s| s == name) {
            return i as u32;
        }
        self.symbols.push(name.to_string());
        self.stats.push(SymbolStats {
            price_dp: 0,
            size_dp: 0,
            ticks: TickRule::default(),
        });
        (self.symbols.len() - 1) as u32
    }

    fn skip(&mut self, line_no: u64, line: &[u8], problem: RowError) {
        if self.first_bad.is_none() {
            let text = String::from_utf8_lossy(&line[..line.len().min(60)]);
            let more = if line.len() > 60 { "…" } else { "" };
            self.first_bad = Some(format!("{text}{more}"));
        }
        self.skipped.push(SkippedRow {
            line: line_no,
            problem,
        });
        self.skipped_before.push(self.rows.len());
    }

    fn note_decimals(&mut self, sym: u32, price: &str, size: Option<&str>) {
        let st = &mut self.stats[sym as usize];
        st.price_dp = st.price_dp.max(decimals(price));
        if let Some(size) = size {
            st.size_dp = st.size_dp.max(decimals(size));
        }
    }

    fn parse_binance(&mut self, sym: u32, line: &str) -> Result<Row, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != 7 && n != 6 {
            return Err(RowError::FieldCount {
                expected: 7,
                found: n,
            });
        }
        let id = f[0]
            .parse::<u64>()
            .map_err(|_| invalid("id", "an integer"))?;
        let price = parse_f64(f[1], "price")?;
        let size = parse_f64(f[2], "qty")?;
        let time: u64 = f[4]
            .parse()
            .map_err(|_| invalid("time", "Unix milliseconds or microseconds"))?;
        // Dumps switched from milliseconds to microseconds in 2025; 1e14 ms is year 5138,
        // 1e14 us is 1973, so the magnitude tells them apart.
        let ts = if time > 100_000_000_000_000 {
            time.checked_mul(1_000)
        } else {
            time.checked_mul(1_000_000)
        }
        .ok_or(invalid("time", "Unix milliseconds or microseconds"))?;
        let side = match parse_bool(f[5]) {
            // The buyer was the resting order, so the seller crossed the spread.
            Some(true) => Side::Sell,
            Some(false) => Side::Buy,
            None => return Err(invalid("is_buyer_maker", "True or False")),
        };
        self.note_decimals(sym, f[1], Some(f[2]));
        Ok(Row {
            ts,
            id,
            a: price,
            b: size,
            sym,
            side,
        })
    }

    /// `Ok(None)`: a row of a symbol the filter leaves out.
    fn parse_tardis(&mut self, c: &TardisColumns, line: &str) -> Result<Option<Row>, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != c.count {
            return Err(RowError::FieldCount {
                expected: c.count,
                found: n,
            });
        }
        let name = f[c.symbol];
        if name.is_empty() {
            return Err(invalid("symbol", "a symbol"));
        }
        if let Some(want) = self.filter {
            if !name.eq_ignore_ascii_case(want) {
                if !self.others.iter().any(|o| o == name) {
                    self.others.push(name.to_string());
                }
                return Ok(None);
            }
        }
        let us: u64 = f[c.timestamp]
            .parse()
            .map_err(|_| invalid("timestamp", "Unix microseconds"))?;
        let ts = us
            .checked_mul(1_000)
            .ok_or(invalid("timestamp", "Unix microseconds"))?;
        let price = parse_f64(f[c.price], "price")?;
        let size = parse_f64(f[c.amount], "amount")?;
        let side = parse_tardis_side(f[c.side])?;
        let id = c.id.map_or(0, |i| trade_id(f[i]));
        let sym = self.intern(name);
        self.note_decimals(sym, f[c.price], Some(f[c.amount]));
        let ticks = &mut self.stats[sym as usize].ticks;
        let side = side.unwrap_or_else(|| ticks.classify(price));
        ticks.observe(price);
        Ok(Some(Row {
            ts,
            id,
            a: price,
            b: size,
            sym,
            side,
        }))
    }

    fn parse_quote(&mut self, sym: u32, c: &QuoteColumns, line: &str) -> Result<Row, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != c.count {
            return Err(RowError::FieldCount {
                expected: c.count,
                found: n,
            });
        }
        let ts = parse_timestamp_ns(f[c.timestamp])
            .ok_or(invalid("timestamp", "an ISO 8601 datetime or a Unix time"))?;
        let bid = parse_f64(f[c.bid], "bid")?;
        let ask = parse_f64(f[c.ask], "ask")?;
        self.note_decimals(sym, f[c.bid], None);
        self.note_decimals(sym, f[c.ask], None);
        Ok(Row {
            ts,
            id: 0,
            a: bid,
            b: ask,
            sym,
            side: Side::Buy,
        })
    }
}

fn invalid(field: &'static str, expected: &'static str) -> RowError {
    RowError::Invalid { field, expected }
}

fn parse_f64(s: &str, field: &'static str) -> Result<f64, RowError> {
    s.parse::<f64>().map_err(|_| invalid(field, "a number"))
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `Ok(None)` for `unknown` (left to the tick rule).
fn parse_tardis_side(s: &str) -> Result<Option<Side>, RowError> {
    if s.eq_ignore_ascii_case("buy") {
        Ok(Some(Side::Buy))
    } else if s.eq_ignore_ascii_case("sell") {
        Ok(Some(Side::Sell))
    } else if s.is_empty() || s.eq_ignore_ascii_case("unknown") {
        Ok(None)
    } else {
        Err(invalid("side", "buy, sell or unknown"))
    }
}

/// A Tardis trade id as a number: itself when numeric, else its FNV-1a hash (BitMEX ids are
/// UUIDs; a hash keeps distinct ids distinct without a lookup table), 0 when empty.
fn trade_id(s: &str) -> u64 {
    if s.is_empty() {
        return 0;
    }
    if let Ok(n) = s.parse::<u64>() {
        return n;
    }
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Splits on `,` into `out`; returns the number of fields (also those past `out`'s end).
fn split_fields<'a>(line: &'a str, out: &mut [&'a str; MAX_FIELDS]) -> usize {
    let mut n = 0;
    for field in line.split(',') {
        if let Some(slot) = out.get_mut(n) {
            *slot = field;
        }
        n += 1;
    }
    n
}

/// Decimal places of a plain decimal number, trailing zeros dropped (`0` for `1e-5`).
fn decimals(s: &str) -> u8 {
    let Some((_, frac)) = s.split_once('.') else {
        return 0;
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let places = frac.trim_end_matches('0').len();
    places.min(DECIMAL_STEPS.len() - 1) as u8
}

/// A symbol from a file name: the `-`/`_`-separated part just before `keyword`
/// (`binance-btcusdt-trades-2021-01-08.csv` with `trades` gives `BTCUSDT`).
fn symbol_from_file_name(path: &Path, keywords: &[&str]) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    let parts: Vec<&str> = stem.split(['-', '_']).collect();
    let at = parts
        .iter()
        .position(|p| keywords.iter().any(|k| p.eq_ignore_ascii_case(k)))?;
    let sym = parts.get(at.checked_sub(1)?)?;
    let plausible = sym.bytes().all(|b| b.is_ascii_alphanumeric())
        && sym.bytes().any(|b| b.is_ascii_alphabetic());
    plausible.then(|| sym.to_ascii_uppercase())
}

/// The header's column count and the position of each `needed` column (case-insensitive).
///
/// # Errors
/// [`ProviderError::Config`] when the header is wider than [`MAX_FIELDS`].
fn header_columns(
    file: &str,
    header: &str,
    needed: &[&'static str],
) -> Result<(usize, Vec<Option<usize>>), ProviderError> {
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    if names.len() > MAX_FIELDS {
        return Err(ProviderError::Config(format!(
            "{file}: header has {} columns; at most {MAX_FIELDS} are supported",
            names.len()
        )));
    }
    let found = needed
        .iter()
        .map(|want| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
        .collect();
    Ok((names.len(), found))
}

/// A header without the columns a format needs: most likely a file of another format.
fn missing_columns(
    file: &str,
    format: FileFormat,
    header: &str,
    line_no: u64,
    expected: &str,
    missing: &[&str],
) -> ProviderError {
    let mut shown: String = header.chars().take(60).collect();
    if shown.len() < header.len() {
        shown.push('…');
    }
    let header = shown;
    ProviderError::Mismatch {
        message: format!(
            "{file}: not a {format} file: its header (line {line_no}, {header:?}) lacks {}; a \
             {format} header is {expected}",
            missing.join(", ")
        ),
        option: "format",
    }
}

fn tardis_layout(file: &str, header: &str, line_no: u64) -> Result<Layout, ProviderError> {
    const NEEDED: [&str; 6] = ["symbol", "timestamp", "side", "price", "amount", "id"];
    let (count, cols) = header_columns(file, header, &NEEDED)?;
    let missing: Vec<&str> = NEEDED[..5]
        .iter()
        .zip(&cols)
        .filter(|(_, c)| c.is_none())
        .map(|(n, _)| *n)
        .collect();
    match (cols[0], cols[1], cols[2], cols[3], cols[4]) {
        (Some(symbol), Some(timestamp), Some(side), Some(price), Some(amount)) => {
            Ok(Layout::Tardis(TardisColumns {
                count,
                symbol,
                timestamp,
                id: cols[5],
                side,
                price,
                amount,
            }))
        }
        _ => Err(missing_columns(
            file,
            FileFormat::Tardis,
            header,
            line_no,
            "exchange,symbol,timestamp,local_timestamp,id,side,price,amount",
            &missing,
        )),
    }
}

fn quote_layout(file: &str, header: &str, line_no: u64, sym: u32) -> Result<Layout, ProviderError> {
    const NEEDED: [&str; 3] = ["timestamp", "bid", "ask"];
    let (count, cols) = header_columns(file, header, &NEEDED)?;
    match (cols[0], cols[1], cols[2]) {
        (Some(timestamp), Some(bid), Some(ask)) => Ok(Layout::Quotes(
            sym,
            QuoteColumns {
                count,
                timestamp,
                bid,
                ask,
            },
        )),
        _ => {
            let missing: Vec<&str> = NEEDED
                .iter()
                .zip(&cols)
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| *n)
                .collect();
            Err(missing_columns(
                file,
                FileFormat::Quotes,
                header,
                line_no,
                "timestamp,bid,ask",
                &missing,
            ))
        }
    }
}

/// Reads and parses the whole file.
fn load(opts: &ReplayOptions) -> Result<ReplayData, ProviderError> {
    let file = opts.path.display().to_string();
    let io_err = |source| ProviderError::Io {
        path: file.clone(),
        source,
    };
    let handle = std::fs::File::open(&opts.path).map_err(io_err)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, handle);

    let fixed_symbol = match opts.format {
        FileFormat::Binance => Some(
            opts.symbol
                .clone()
                .or_else(|| symbol_from_file_name(&opts.path, &["trades"]))
                .ok_or_else(|| ProviderError::Mismatch {
                    message: format!(
                        "{file}: a Binance trade dump does not name its symbol, nor does this \
                         file name (as BTCUSDT-trades-2021-01-08.csv would)"
                    ),
                    option: "symbol",
                })?,
        ),
        FileFormat::Quotes => Some(
            opts.symbol
                .clone()
                .or_else(|| symbol_from_file_name(&opts.path, &["quotes", "quote"]))
                .unwrap_or_else(|| "QUOTES".to_string()),
        ),
        FileFormat::Tardis => None,
    };
    let mut ld = Loader {
        file: file.clone(),
        format: opts.format,
        filter: match opts.format {
            FileFormat::Tardis => opts.symbol.as_deref(),
            _ => None,
        },
        symbols: Vec::new(),
        stats: Vec::new(),
        others: Vec::new(),
        rows: Vec::new(),
        skipped: Vec::new(),
        skipped_before: Vec::new(),
        first_bad: None,
    };
    // Tardis rows name their own symbol, so there this index is never used.
    let fixed_sym = fixed_symbol.as_deref().map_or(0, |s| ld.intern(s));

    let mut layout = match opts.format {
        FileFormat::Binance => Some(Layout::Binance(fixed_sym)),
        FileFormat::Tardis | FileFormat::Quotes => None, // read from the header
    };
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    let mut data_lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        line_no += 1;
        let mut bytes = buf.as_slice();
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(bytes) else {
            data_lines += 1;
            ld.skip(line_no, bytes, RowError::NotUtf8);
            continue;
        };
        let Some(layout) = &layout else {
            layout = Some(match opts.format {
                FileFormat::Tardis => tardis_layout(&file, line, line_no)?,
                _ => quote_layout(&file, line, line_no, fixed_sym)?,
            });
            continue;
        };
        let parsed = match layout {
            Layout::Binance(sym) => {
                // Some dumps (futures) start with a header line.
                if data_lines == 0 && line.starts_with("id,") {
                    continue;
                }
                ld.parse_binance(*sym, line).map(Some)
            }
            Layout::Quotes(sym, c) => ld.parse_quote(*sym, c, line).map(Some),
            Layout::Tardis(c) => ld.parse_tardis(c, line),
        };
        data_lines += 1;
        match parsed {
            Ok(Some(row)) => ld.rows.push(row),
            Ok(None) => {}
            Err(problem) => ld.skip(line_no, bytes, problem),
        }
    }
    finish_load(opts, ld, data_lines)
}

/// Checks the load produced something and computes the instruments.
fn finish_load(
    opts: &ReplayOptions,
    ld: Loader<'_>,
    data_lines: u64,
) -> Result<ReplayData, ProviderError> {
    let file = &ld.file;
    let what = match ld.format {
        FileFormat::Binance | FileFormat::Tardis => "trade",
        FileFormat::Quotes => "quote",
    };
    let first_bad = |first: &SkippedRow| {
        format!(
            "line {}, {:?}: {}",
            first.line,
            ld.first_bad.as_deref().unwrap_or(""),
            first.problem
        )
    };
    if ld.rows.is_empty() {
        if let Some(first) = ld.skipped.first() {
            if ld.skipped.len() as u64 == data_lines {
                return Err(ProviderError::Mismatch {
                    message: format!(
                        "{file}: no line is a {} {what} (first bad {})",
                        ld.format,
                        first_bad(first)
                    ),
                    option: "format",
                });
            }
        }
    }
    if let Some(first) = ld.skipped.first() {
        if ld.skipped.len() == 1 {
            tracing::warn!("{file}: skipped 1 unreadable row: {}", first_bad(first));
        } else {
            let mut lines: Vec<String> = ld
                .skipped
                .iter()
                .take(LINES_NAMED)
                .map(|r| r.line.to_string())
                .collect();
            if ld.skipped.len() > LINES_NAMED {
                lines.push("…".into());
            }
            tracing::warn!(
                "{file}: skipped {} unreadable rows (lines {}); the first: {}",
                ld.skipped.len(),
                lines.join(", "),
                first_bad(first)
            );
        }
    }
    if ld.rows.is_empty() {
        if let Some(want) = ld.filter {
            return Err(ProviderError::Config(format!(
                "{file}: no trades of {want}; the file has {}",
                if ld.others.is_empty() {
                    "none".to_string()
                } else {
                    ld.others.join(", ")
                }
            )));
        }
        return Err(ProviderError::Config(format!("{file}: no data rows")));
    }
    let kind = match opts.format {
        FileFormat::Quotes => RowKind::Quotes,
        FileFormat::Binance | FileFormat::Tardis => RowKind::Trades,
    };
    let instruments = ld
        .symbols
        .iter()
        .zip(&ld.stats)
        .map(|(symbol, st)| Instrument {
            symbol: symbol.clone(),
            tick_size: DECIMAL_STEPS[usize::from(st.price_dp)],
            lot_size: match kind {
                RowKind::Trades => DECIMAL_STEPS[usize::from(st.size_dp)],
                RowKind::Quotes => 1.0,
            },
        })
        .collect();
    let time_range = ld.rows.iter().fold(None, |acc: Option<(u64, u64)>, r| {
        Some(acc.map_or((r.ts, r.ts), |(lo, hi)| (lo.min(r.ts), hi.max(r.ts))))
    });
    tracing::debug!(
        "{file}: {} rows of {} loaded, {} skipped",
        ld.rows.len(),
        ld.symbols.join(", "),
        ld.skipped.len()
    );
    Ok(ReplayData {
        kind,
        symbols: ld.symbols,
        instruments,
        rows: ld.rows,
        skipped: ld.skipped,
        skipped_before: ld.skipped_before,
        time_range,
    })
}

// ---------------------------------------------------------------------------------------
// Timestamps

/// A timestamp as Unix nanoseconds: an ISO 8601 datetime (see [`parse_datetime_ns`]) or a
/// Unix time whose unit is told by magnitude (see [`parse_unix_ns`]).
fn parse_timestamp_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() >= 10 && b[4] == b'-' {
        parse_datetime_ns(s)
    } else {
        parse_unix_ns(s)
    }
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fffffffff][Z|+HH:MM|-HH:MM|+HHMM|+HH]`, no offset meaning UTC;
/// fractional digits past nanoseconds are truncated. Hand-written so the crate needs no date
/// library; calendar arithmetic by Howard Hinnant's days-from-civil.
fn parse_datetime_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let mut i = 19;
    let mut frac_ns = 0u64;
    if i < b.len() && matches!(b[i], b'.' | b',') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000u64;
        while i < b.len() && b[i].is_ascii_digit() {
            frac_ns += u64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (oh, om, used) = match rest.len() {
                2 => (digits(rest)?, 0, 2),
                4 => (digits(&rest[..2])?, digits(&rest[2..])?, 4),
                5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?, 5),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            i += 1 + used;
            let secs = (oh * 3600 + om * 60) as i64;
            if sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        Some(_) => return None,
    };
    if i != b.len()
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac_ns)
}

/// A Unix time with an optional fraction, its unit told by magnitude: below 1e11 seconds
/// (1e11 s is year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
fn parse_unix_ns(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = digits(int.as_bytes())?;
    let unit_ns: u64 = if whole < 100_000_000_000 {
        1_000_000_000
    } else if whole < 100_000_000_000_000 {
        1_000_000
    } else if whole < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    };
    let mut ns = whole.checked_mul(unit_ns)?;
    let mut scale = unit_ns / 10;
    for d in frac.bytes() {
        ns = ns.checked_add(u64::from(d - b'0') * scale)?;
        scale /= 10;
    }
    Some(ns)
}

/// An unsigned decimal made only of ASCII digits (at most 19, so it cannot overflow).
fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant, "chrono-Compatible Low-Level
/// Date Algorithms").
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
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
