//! The replay provider on the real samples in `tests/data` (see its README) and on
//! small files written here for the edge cases.

use dualbus_engines::provider::replay::{
    FileFormat, ReplayOptions, ReplayProvider, RowError, SkippedRow, MAX_BATCH,
};
use dualbus_engines::provider::{HistoryRequest, MarketStream, Provider, ProviderError, Speed};
use dualbus_model::market::{Bar, MarketEvent, Quote, Side, Trade};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BINANCE: &str = "binance-btcusdt-trades-2021-01-08.csv";
const TARDIS: &str = "tardis-bitmex-XBTUSD-trades-sample.csv";
const TRUEFX: &str = "truefx-usdjpy-quotes-2013-01.csv";

/// Guards every drain against a stream that never ends (a bug, not a speed limit).
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A sample file from `tests/data` (always `Some`; kept an `Option` for the tests' shape).
fn sample(name: &str) -> Option<PathBuf> {
    // The samples live in the repository (tests/data), so the tests always run on them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
    assert!(
        dir.is_dir(),
        "sample data directory {} is missing",
        dir.display()
    );
    Some(dir.join(name))
}

/// A file in the temp directory, removed on drop. `name` ends the file name, so it can carry
/// a symbol (`ethusdt-trades.csv`).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &str) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("dualbus-replay-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, content).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything one stream delivers.
struct Replayed {
    events: Vec<MarketEvent>,
    skipped: u64,
}

impl Replayed {
    fn trades(&self) -> Vec<&Trade> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MarketEvent::Trade(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn quotes(&self) -> Vec<&Quote> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MarketEvent::Quote(q) => Some(q),
                _ => None,
            })
            .collect()
    }

    fn bars(&self) -> Vec<&Bar> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MarketEvent::Bar(b) => Some(b),
                _ => None,
            })
            .collect()
    }
}

async fn drain_stream(stream: &mut Box<dyn MarketStream>) -> Replayed {
    let run = async {
        let mut events = Vec::new();
        let mut out = Vec::new();
        while stream.next_batch(&mut out).await.expect("next_batch") {
            events.append(&mut out);
        }
        assert!(out.is_empty(), "the final Ok(false) carries no events");
        Replayed {
            events,
            skipped: stream.skipped(),
        }
    };
    tokio::time::timeout(HANG_GUARD, run)
        .await
        .expect("the replay ended")
}

async fn replay(p: &ReplayProvider) -> Replayed {
    let mut stream = p.stream().await.expect("stream");
    drain_stream(&mut stream).await
}

fn open(opts: ReplayOptions) -> ReplayProvider {
    ReplayProvider::open(opts).expect("open")
}

fn history(symbol: &str, bar_secs: u32, limit: u32, end_ts: Option<u64>) -> HistoryRequest {
    HistoryRequest {
        symbol: symbol.into(),
        bar_secs,
        limit,
        end_ts,
    }
}

fn config_error(res: Result<ReplayProvider, ProviderError>) -> String {
    match res {
        Err(ProviderError::Config(msg)) => msg,
        other => panic!("expected a Config error, got {other:?}"),
    }
}

/// The message of a [`ProviderError::Mismatch`] naming `option`.
fn mismatch(res: Result<ReplayProvider, ProviderError>, option: &str) -> String {
    match res {
        Err(ProviderError::Mismatch { message, option: o }) if o == option => message,
        other => panic!("expected a Mismatch of `{option}`, got {other:?}"),
    }
}

#[tokio::test]
async fn binance_sample_replays_every_trade_exactly_as_in_the_file() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance));
    assert_eq!(p.name(), "replay");
    assert_eq!(
        p.symbols(),
        ["BTCUSDT"],
        "symbol guessed from the file name"
    );
    assert_eq!(p.len(), 2001);
    assert!(p.skipped_rows().is_empty());
    let r = replay(&p).await;
    let trades = r.trades();
    assert_eq!(trades.len(), 2001);
    assert_eq!(r.skipped, 0);
    // 553287559,39432.48,0.000263,10.37074224,1610064000278,True,True
    assert_eq!(
        *trades[0],
        Trade {
            symbol: "BTCUSDT".into(),
            ts: 1_610_064_000_278_000_000,
            price: 39432.48,
            size: 0.000263,
            side: Side::Sell,
            id: 553_287_559,
        }
    );
    // 553287560,39439.44,0.004376,172.58698944,1610064000310,False,True
    assert_eq!(trades[1].side, Side::Buy);
    assert_eq!(trades[1].ts, 1_610_064_000_310_000_000);
    // 553289559,39491.76,0.014596,576.42172896,1610064046355,True,True
    assert_eq!(
        *trades[2000],
        Trade {
            symbol: "BTCUSDT".into(),
            ts: 1_610_064_046_355_000_000,
            price: 39491.76,
            size: 0.014596,
            side: Side::Sell,
            id: 553_289_559,
        }
    );
    // File order is kept (ids are consecutive in this dump).
    assert!(trades.windows(2).all(|w| w[1].id == w[0].id + 1));
    let volume: f64 = trades.iter().map(|t| t.size).sum();
    assert!((volume - 87.071596).abs() < 1e-9, "{volume}");
    assert_eq!(
        p.time_range(),
        Some((1_610_064_000_278_000_000, 1_610_064_046_355_000_000))
    );
    let inst = p.instruments();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].symbol, "BTCUSDT");
    assert_eq!((inst[0].tick_size, inst[0].lot_size), (0.01, 0.000001));
}

#[tokio::test]
async fn bars_close_right_before_the_trade_that_closes_them_and_flush_at_the_end() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance).bar_secs(10));
    let r = replay(&p).await;
    let bars = r.bars();
    // 00:00:00.278 to 00:00:46.355: five 10-second periods, every one with trades.
    assert_eq!(bars.len(), 5);
    let counts: Vec<u64> = bars.iter().map(|b| b.trades).collect();
    assert_eq!(counts, [350, 328, 531, 543, 249]);
    let day = 1_610_064_000_000_000_000u64;
    for (i, b) in bars.iter().enumerate() {
        assert_eq!(b.ts, day + i as u64 * 10_000_000_000);
        assert_eq!((b.secs, b.symbol.as_str()), (10, "BTCUSDT"));
    }
    for (i, ev) in r.events.iter().enumerate() {
        let MarketEvent::Bar(bar) = ev else { continue };
        let prev_trade = r.events[..i].iter().rev().find_map(|e| match e {
            MarketEvent::Trade(t) => Some(t),
            _ => None,
        });
        assert!(prev_trade.is_some_and(|t| t.ts < bar.end_ts()));
        match r.events.get(i + 1) {
            // Mid-stream: the very next event is the first trade of a later period.
            Some(MarketEvent::Trade(t)) => assert!(t.ts >= bar.end_ts()),
            // Flushed at the end of data: nothing after it.
            None => assert_eq!(bar.ts, day + 40_000_000_000),
            Some(other) => panic!("a bar followed by {other:?}"),
        }
    }
    // The bars hold every trade once.
    let trades = r.trades();
    let first = &trades[..350];
    assert_eq!(bars[0].open, first[0].price);
    assert_eq!(bars[0].close, first[349].price);
    let high = first.iter().map(|t| t.price).fold(f64::MIN, f64::max);
    let buy: f64 = first
        .iter()
        .filter(|t| t.side == Side::Buy)
        .map(|t| t.size)
        .sum();
    assert_eq!(bars[0].high, high);
    assert!((bars[0].buy_volume - buy).abs() < 1e-9);
    let bar_volume: f64 = bars.iter().map(|b| b.volume).sum();
    let volume: f64 = trades.iter().map(|t| t.size).sum();
    assert!((bar_volume - volume).abs() < 1e-9);
}

#[tokio::test]
async fn tardis_sample_replays_every_trade() {
    let Some(path) = sample(TARDIS) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Tardis));
    assert_eq!(p.symbols(), ["XBTUSD"]);
    let r = replay(&p).await;
    let trades = r.trades();
    assert_eq!(trades.len(), 10);
    assert_eq!(r.skipped, 0);
    // bitmex,XBTUSD,1583020803145000,1583020803307160,ccc3c1fa-...,sell,8531.5,2152
    let t = trades[0];
    assert_eq!(
        (t.symbol.as_str(), t.ts, t.price, t.size, t.side),
        (
            "XBTUSD",
            1_583_020_803_145_000_000,
            8531.5,
            2152.0,
            Side::Sell
        )
    );
    // bitmex,XBTUSD,1583020803276000,1583020803336743,7cae8d7b-...,sell,8531.5,1
    let t = trades[9];
    assert_eq!(
        (t.symbol.as_str(), t.ts, t.price, t.size, t.side),
        ("XBTUSD", 1_583_020_803_276_000_000, 8531.5, 1.0, Side::Sell)
    );
    // UUID ids become distinct non-zero hashes.
    let mut ids: Vec<u64> = trades.iter().map(|t| t.id).collect();
    assert!(ids.iter().all(|&id| id != 0));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    // All in one minute: a single bar, flushed at the end.
    let bars = r.bars();
    assert_eq!(bars.len(), 1);
    assert_eq!((bars[0].trades, bars[0].volume), (10, 2161.0));
    assert!(matches!(r.events.last(), Some(MarketEvent::Bar(_))));
    let inst = p.instruments();
    assert_eq!((inst[0].tick_size, inst[0].lot_size), (0.1, 1.0));
}

#[tokio::test]
async fn truefx_sample_replays_every_quote() {
    let Some(path) = sample(TRUEFX) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Quotes));
    assert_eq!(p.symbols(), ["USDJPY"], "symbol guessed from the file name");
    let r = replay(&p).await;
    let quotes = r.quotes();
    assert_eq!(quotes.len(), 1000);
    assert_eq!(r.events.len(), 1000, "no bars from a quote file");
    // 2013-01-01 22:00:00.295000+00:00,86.655,86.728
    assert_eq!(
        *quotes[0],
        Quote {
            symbol: "USDJPY".into(),
            ts: 1_357_077_600_295_000_000,
            bid: 86.655,
            ask: 86.728,
            bid_size: 0.0,
            ask_size: 0.0,
        }
    );
    // 2013-01-01 22:35:13.494000+00:00,86.836,86.854
    let q = quotes[999];
    assert_eq!(
        (q.ts, q.bid, q.ask),
        (1_357_079_713_494_000_000, 86.836, 86.854)
    );
    assert!(quotes.windows(2).all(|w| w[0].ts <= w[1].ts));
    let inst = p.instruments();
    assert_eq!((inst[0].tick_size, inst[0].lot_size), (0.001, 1.0));
}

#[tokio::test]
async fn quote_timestamps_parse_in_every_accepted_shape() {
    let at = 1_357_077_600_295_000_000u64; // 2013-01-01 22:00:00.295 UTC
    let f = TempFile::new(
        "fx.csv",
        "timestamp,bid,ask\n\
         2013-01-01 22:00:00.295000+00:00,1.0,1.1\n\
         2013-01-01T22:00:00.295Z,1.0,1.1\n\
         2013-01-01T23:00:00.295+01:00,1.0,1.1\n\
         2013-01-01 22:00:00.295000000999,1.0,1.1\n\
         2013-01-01 22:00:00.3,1.0,1.1\n\
         1357077600.295,1.0,1.1\n\
         1357077600295,1.0,1.1\n\
         1357077600295000,1.0,1.1\n\
         1357077600295000000,1.0,1.1\n",
    );
    let p = open(ReplayOptions::new(f.path(), FileFormat::Quotes));
    assert_eq!(p.symbols(), ["QUOTES"], "no symbol in options or file name");
    let r = replay(&p).await;
    let ts: Vec<u64> = r.quotes().iter().map(|q| q.ts).collect();
    assert_eq!(ts, [at, at, at, at, at + 5_000_000, at, at, at, at]);
}

#[tokio::test]
async fn binance_time_in_microseconds_is_told_from_milliseconds_by_magnitude() {
    let f = TempFile::new(
        "ethusdt-trades-2025-01-01.csv",
        // Old dump (ms, True/False) then new dump (us, true/false).
        "1,100.5,2,201,1610064000278,True,True\n\
         2,100.5,2,201,1735689600123456,false,true\n",
    );
    let p = open(ReplayOptions::new(f.path(), FileFormat::Binance));
    assert_eq!(p.symbols(), ["ETHUSDT"]);
    let r = replay(&p).await;
    let t = r.trades();
    assert_eq!(
        (t[0].ts, t[0].side),
        (1_610_064_000_278_000_000, Side::Sell)
    );
    assert_eq!((t[1].ts, t[1].side), (1_735_689_600_123_456_000, Side::Buy));
}

#[tokio::test]
async fn bad_rows_are_skipped_counted_and_named_by_line() {
    let f = TempFile::new(
        "bad.csv",
        "1,100.0,0.5,50,1610064000000,True,True\n\
         2,abc,0.5,50,1610064000100,True,True\n\
         3,100.5,0.5,50,1610064000200,False,True\n\
         4,100.0,0.5\n\
         \n\
         5,100.0,0.5,50,yesterday,True,True\n\
         6,100.0,0.5,50,1610064000300,maybe,True\n\
         7,101.0,0.5,50,1610064000400,False,True\r\n\
         8,NaN,0.5,50,1610064000500,False,True\n\
         garbage\n",
    );
    let p = open(ReplayOptions::new(f.path(), FileFormat::Binance).symbol("TESTUSDT"));
    let skipped = p.skipped_rows();
    let lines: Vec<u64> = skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, [2, 4, 6, 7, 10], "blank line 5 is not a bad row");
    assert_eq!(
        skipped[0],
        SkippedRow {
            line: 2,
            problem: RowError::Invalid {
                field: "price",
                expected: "a number"
            }
        }
    );
    assert_eq!(
        skipped[1].problem,
        RowError::FieldCount {
            expected: 7,
            found: 3
        }
    );
    assert!(matches!(
        skipped[2].problem,
        RowError::Invalid { field: "time", .. }
    ));
    assert!(matches!(
        skipped[3].problem,
        RowError::Invalid {
            field: "is_buyer_maker",
            ..
        }
    ));
    assert_eq!(skipped[4].problem.to_string(), "expected 7 fields, found 1");

    let mut stream = p.stream().await.expect("stream");
    assert_eq!(stream.skipped(), 0, "nothing read yet");
    let r = drain_stream(&mut stream).await;
    assert_eq!(r.skipped, 5);
    let ids: Vec<u64> = r.trades().iter().map(|t| t.id).collect();
    // The NaN price parses: rejecting it is the validator's job, not the replay's ...
    assert_eq!(ids, [1, 3, 7, 8]);
    assert!(r.trades()[3].price.is_nan());
    // ... but it stays out of the bar.
    let bars = r.bars();
    assert_eq!(bars.len(), 1);
    assert_eq!(
        (bars[0].trades, bars[0].high, bars[0].volume),
        (3, 101.0, 1.5)
    );
}

#[tokio::test]
async fn a_file_with_no_readable_row_is_an_error_naming_the_first_problem() {
    let Some(path) = sample(TARDIS) else { return };
    let msg = mismatch(
        ReplayProvider::open(ReplayOptions::new(path, FileFormat::Binance).symbol("XBTUSD")),
        "format",
    );
    assert!(msg.contains("no line is a binance trade"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
    assert!(msg.contains("expected 7 fields, found 8"), "{msg}");
}

#[tokio::test]
async fn tardis_unknown_sides_follow_the_tick_rule_and_the_symbol_filters() {
    let f = TempFile::new(
        "tardis.csv",
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n\
         x,AAA,1000000,1000001,1,unknown,100,1\n\
         x,BBB,1000000,1000001,2,sell,5,1\n\
         x,AAA,2000000,2000001,3,unknown,101,1\n\
         x,AAA,3000000,3000001,4,unknown,101,1\n\
         x,AAA,4000000,4000001,5,sell,100,1\n\
         x,AAA,5000000,5000001,6,,100,1\n\
         x,AAA,6000000,6000001,7,unknown,99.5,1\n\
         x,AAA,7000000,7000001,8,UNKNOWN,100,1\n\
         x,AAA,8000000,8000001,9,sideways,100,1\n",
    );
    let p = open(ReplayOptions::new(f.path(), FileFormat::Tardis).symbol("aaa"));
    assert_eq!(p.symbols(), ["AAA"], "BBB filtered out");
    assert_eq!(p.skipped_rows().len(), 1);
    assert_eq!(p.skipped_rows()[0].line, 10);
    let r = replay(&p).await;
    let sides: Vec<(u64, Side)> = r.trades().iter().map(|t| (t.id, t.side)).collect();
    use Side::{Buy, Sell};
    assert_eq!(
        sides,
        [
            (1, Buy),  // no price change seen yet
            (3, Buy),  // uptick
            (4, Buy),  // zero tick after an uptick
            (5, Sell), // as reported
            (6, Sell), // zero tick after a downtick
            (7, Sell), // downtick
            (8, Buy),  // uptick
        ]
    );
    assert_eq!(r.trades()[0].ts, 1_000_000_000);

    let both = open(ReplayOptions::new(f.path(), FileFormat::Tardis));
    assert_eq!(both.symbols(), ["AAA", "BBB"]);
    assert_eq!(both.instruments().len(), 2);

    let msg = config_error(ReplayProvider::open(
        ReplayOptions::new(f.path(), FileFormat::Tardis).symbol("CCC"),
    ));
    assert!(msg.contains("CCC") && msg.contains("AAA, BBB"), "{msg}");
}

#[tokio::test]
async fn headers_must_have_the_needed_columns() {
    let f = TempFile::new(
        "t.csv",
        "exchange,symbol,timestamp,id,price,amount\nx,A,1,1,1,1\n",
    );
    let msg = mismatch(
        ReplayProvider::open(ReplayOptions::new(f.path(), FileFormat::Tardis)),
        "format",
    );
    assert!(msg.contains("lacks side"), "{msg}");
    let f = TempFile::new("q.csv", "time,bid\n1,1\n");
    let msg = mismatch(
        ReplayProvider::open(ReplayOptions::new(f.path(), FileFormat::Quotes)),
        "format",
    );
    assert!(msg.contains("lacks timestamp, ask"), "{msg}");
}

#[tokio::test]
async fn the_symbol_comes_from_the_options_else_the_file_name_else_an_error() {
    let f = TempFile::new("dump.csv", "1,100.0,0.5,50,1610064000000,True,True\n");
    let msg = mismatch(
        ReplayProvider::open(ReplayOptions::new(f.path(), FileFormat::Binance)),
        "symbol",
    );
    assert!(msg.contains("does not name its symbol"), "{msg}");
    let p = open(ReplayOptions::new(f.path(), FileFormat::Binance).symbol("SOLUSDT"));
    assert_eq!(p.symbols(), ["SOLUSDT"]);
    let r = replay(&p).await;
    assert_eq!(r.trades()[0].symbol, "SOLUSDT");
}

#[tokio::test]
async fn a_missing_file_is_an_io_error_naming_it() {
    let path = std::env::temp_dir().join("dualbus-replay-no-such-file-trades.csv");
    match ReplayProvider::open(ReplayOptions::new(&path, FileFormat::Binance).symbol("X")) {
        Err(e @ ProviderError::Io { .. }) => {
            assert!(e.to_string().contains("dualbus-replay-no-such-file"), "{e}")
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn invalid_options_are_reported_all_at_once() {
    let opts = ReplayOptions::new("x.csv", FileFormat::Binance)
        .bar_secs(0)
        .speed(Speed::Times(-1.0))
        .symbol("");
    let msg = match opts.validate() {
        Err(ProviderError::Config(msg)) => msg,
        other => panic!("expected a Config error, got {other:?}"),
    };
    assert!(msg.contains("bar_secs"), "{msg}");
    assert!(msg.contains("speed"), "{msg}");
    assert!(msg.contains("symbol"), "{msg}");
}

#[test]
fn formats_parse_by_name_and_a_bad_one_lists_the_choices() {
    assert_eq!("binance".parse(), Ok(FileFormat::Binance));
    assert_eq!("Tardis".parse(), Ok(FileFormat::Tardis));
    assert_eq!("quotes".parse(), Ok(FileFormat::Quotes));
    assert_eq!("QUOTE".parse(), Ok(FileFormat::Quotes));
    let err = "csv".parse::<FileFormat>().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"csv\""), "{msg}");
    assert!(msg.contains("binance, tardis or quotes"), "{msg}");
    for f in FileFormat::ALL {
        assert_eq!(f.to_string().parse(), Ok(f));
    }
}

#[tokio::test]
async fn max_speed_delivers_everything_in_full_batches() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance));
    let mut stream = p.stream().await.expect("stream");
    let mut out = Vec::new();
    assert!(stream.next_batch(&mut out).await.expect("batch"));
    let trades = out
        .iter()
        .filter(|e| matches!(e, MarketEvent::Trade(_)))
        .count();
    assert_eq!(trades, MAX_BATCH, "a full batch at once");
    out.clear();
    assert!(stream.next_batch(&mut out).await.expect("batch"));
    let trades = out
        .iter()
        .filter(|e| matches!(e, MarketEvent::Trade(_)))
        .count();
    assert_eq!(trades, 2001 - MAX_BATCH, "the rest, then the flushed bar");
    assert!(matches!(out.last(), Some(MarketEvent::Bar(_))));
    out.clear();
    assert!(!stream.next_batch(&mut out).await.expect("end"));
    assert!(!stream.next_batch(&mut out).await.expect("still the end"));
    assert!(out.is_empty());
}

#[tokio::test]
async fn pacing_at_1000x_never_delivers_an_event_before_its_time() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance).speed(Speed::Times(1000.0)));
    let mut stream = p.stream().await.expect("stream");
    let start = tokio::time::Instant::now();
    let run = async {
        let mut out = Vec::new();
        let mut delivered: Vec<Trade> = Vec::new();
        let mut batches = 0;
        let mut t0 = None;
        while stream.next_batch(&mut out).await.expect("batch") {
            batches += 1;
            let elapsed = start.elapsed();
            for ev in out.drain(..) {
                if let MarketEvent::Trade(t) = ev {
                    let t0 = *t0.get_or_insert(t.ts);
                    // Due at (ts - t0) / 1000 after the replay started: never earlier.
                    let due = Duration::from_nanos((t.ts - t0) / 1000);
                    assert!(elapsed >= due, "trade {} at {elapsed:?}, due {due:?}", t.id);
                    delivered.push(t);
                }
            }
        }
        (delivered, batches)
    };
    let (trades, batches) = tokio::time::timeout(HANG_GUARD, run)
        .await
        .expect("the replay ended");
    // Everything, in file order, spread over more than the two batches max speed uses.
    assert_eq!(trades.len(), 2001);
    assert!(trades.windows(2).all(|w| w[1].id == w[0].id + 1));
    assert!(batches > 2, "{batches} batches");
    // 46.077 s of data at 1000x takes at least 46.077 ms.
    assert!(start.elapsed() >= Duration::from_micros(46_077));
}

#[tokio::test]
async fn a_second_stream_restarts_from_the_beginning() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance));
    let mut first = p.stream().await.expect("stream");
    let mut out = Vec::new();
    assert!(first.next_batch(&mut out).await.expect("batch"));
    let mut second = p.stream().await.expect("stream");
    let a = drain_stream(&mut first).await;
    let b = drain_stream(&mut second).await;
    let mut whole_first = out;
    whole_first.extend(a.events);
    assert_eq!(whole_first, b.events, "same replay, independently");
    assert_eq!(b.trades().len(), 2001);
}

#[tokio::test]
async fn history_never_looks_ahead_of_the_stream() {
    let Some(path) = sample(BINANCE) else { return };
    let full = replay(&open(
        ReplayOptions::new(&path, FileFormat::Binance).bar_secs(10),
    ))
    .await;
    let all_bars: Vec<Bar> = full.bars().into_iter().cloned().collect();
    assert_eq!(all_bars.len(), 5);

    let p = open(ReplayOptions::new(&path, FileFormat::Binance).bar_secs(10));
    let req = history("BTCUSDT", 10, 100, None);
    assert!(
        p.history(&req).await.expect("history").is_empty(),
        "no stream yet: no history"
    );
    let mut stream = p.stream().await.expect("stream");
    assert!(p.history(&req).await.expect("history").is_empty());

    let mut out = Vec::new();
    assert!(stream.next_batch(&mut out).await.expect("batch"));
    let now = out.iter().map(MarketEvent::ts).max().expect("events");
    let bars = p.history(&req).await.expect("history");
    let ended: Vec<Bar> = all_bars
        .iter()
        .filter(|b| b.end_ts() <= now)
        .cloned()
        .collect();
    assert!(!bars.is_empty());
    assert_eq!(bars, ended, "exactly the bars that ended by the data time");

    // The rest of the data: the last bar (40 s to 50 s) has not ended at 46.355 s, so it
    // stays out of history although the stream flushed it.
    drain_stream(&mut stream).await;
    let bars = p.history(&req).await.expect("history");
    assert_eq!(bars, all_bars[..4]);
    assert!(p
        .history(&history("BTCUSDT", 60, 100, None))
        .await
        .expect("history")
        .is_empty());

    // limit keeps the latest, end_ts cuts earlier.
    let last_two = p
        .history(&history("BTCUSDT", 10, 2, None))
        .await
        .expect("history");
    assert_eq!(last_two, all_bars[2..4]);
    let upto = p
        .history(&history("BTCUSDT", 10, 100, Some(all_bars[1].end_ts())))
        .await
        .expect("history");
    assert_eq!(upto, all_bars[..2]);
    // Another length, built on demand from the same trades.
    let fives = p
        .history(&history("BTCUSDT", 5, 100, None))
        .await
        .expect("history");
    assert_eq!(fives.len(), 9, "0-5 s ... 40-45 s");
    let before_45s = full
        .trades()
        .iter()
        .filter(|t| t.ts < 1_610_064_045_000_000_000)
        .count() as u64;
    assert_eq!(fives.iter().map(|b| b.trades).sum::<u64>(), before_45s);

    // A new stream moves history back to its start.
    let _again = p.stream().await.expect("stream");
    assert!(p.history(&req).await.expect("history").is_empty());
}

#[tokio::test]
async fn history_rejects_unknown_symbols_and_zero_length_bars() {
    let Some(path) = sample(BINANCE) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Binance));
    match p.history(&history("ETHUSDT", 60, 10, None)).await {
        Err(ProviderError::BadRequest(msg)) => {
            assert!(msg.contains("ETHUSDT") && msg.contains("BTCUSDT"), "{msg}")
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    match p.history(&history("BTCUSDT", 0, 10, None)).await {
        Err(ProviderError::BadRequest(msg)) => assert!(msg.contains("bar_secs"), "{msg}"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[tokio::test]
async fn history_of_a_quote_file_is_mid_price_bars() {
    let Some(path) = sample(TRUEFX) else { return };
    let p = open(ReplayOptions::new(path, FileFormat::Quotes));
    let r = replay(&p).await;
    let bars = p
        .history(&history("USDJPY", 60, 1000, None))
        .await
        .expect("history");
    // 34 minutes have quotes, 22:00 to 22:35; the 22:35 bar has not ended at 22:35:13.494.
    assert_eq!(bars.len(), 33);
    let quotes = r.quotes();
    assert_eq!(bars[0].open, (86.655 + 86.728) / 2.0);
    assert_eq!(bars[0].ts, 1_357_077_600_000_000_000);
    let in_first: Vec<f64> = quotes
        .iter()
        .filter(|q| q.ts < bars[0].end_ts())
        .map(|q| q.mid())
        .collect();
    assert_eq!(bars[0].close, *in_first.last().expect("quotes"));
    assert_eq!(
        bars[0].high,
        in_first.iter().copied().fold(f64::MIN, f64::max)
    );
    assert!(bars
        .iter()
        .all(|b| b.volume == 0.0 && b.trades == 0 && b.symbol == "USDJPY"));
}

/// Not a pass/fail test: measures a max-speed replay of a generated 1,000,000-row Binance
/// dump. Run it with
/// `cargo test -p dualbus-engines --release --test replay -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_one_million_rows_at_max_speed() {
    use std::fmt::Write;
    const ROWS: u64 = 1_000_000;
    let mut text = String::with_capacity(70 * ROWS as usize);
    let mut price = 39_432.48f64;
    for i in 0..ROWS {
        // A day of trades, 86.4 ms apart, prices wandering by cents.
        price += if i % 7 < 3 { 0.01 } else { -0.01 } * ((i % 5) as f64);
        let qty = 0.000263 + (i % 1000) as f64 * 0.000001;
        let ts = 1_610_064_000_000 + i * 864 / 10;
        let maker = if i % 3 == 0 { "True" } else { "False" };
        let _ = writeln!(
            text,
            "{},{price:.2},{qty:.6},{:.8},{ts},{maker},True",
            553_287_559 + i,
            price * qty
        );
    }
    let f = TempFile::new("btcusdt-trades-1m.csv", &text);
    drop(text);
    let started = std::time::Instant::now();
    let p = open(ReplayOptions::new(f.path(), FileFormat::Binance));
    let opened = started.elapsed();
    let started = std::time::Instant::now();
    let mut stream = p.stream().await.expect("stream");
    let mut out = Vec::with_capacity(2 * MAX_BATCH);
    let (mut trades, mut bars) = (0u64, 0u64);
    while stream.next_batch(&mut out).await.expect("batch") {
        for ev in out.drain(..) {
            match ev {
                MarketEvent::Trade(_) => trades += 1,
                MarketEvent::Bar(_) => bars += 1,
                _ => {}
            }
        }
    }
    let streamed = started.elapsed();
    assert_eq!(trades, ROWS);
    println!(
        "open (read + parse) {} rows: {opened:?} = {:.2} M rows/s; stream at max speed: \
         {streamed:?} = {:.2} M trades/s ({bars} 1-minute bars)",
        ROWS,
        ROWS as f64 / opened.as_secs_f64() / 1e6,
        ROWS as f64 / streamed.as_secs_f64() / 1e6,
    );
}
