//! The MarketData hub end to end, run by the engine host on a real bus: what it publishes (and
//! refuses to), its snapshot and history caches with coalescing and expiry, request/reply, the
//! paper venue, heartbeats, and the same hub unchanged on two Redis servers.
//!
//! Every test is guarded by a timeout so a bug fails it instead of hanging the suite; no test
//! asserts a maximum duration.

mod support;

use async_trait::async_trait;
use dualbus_bus::DualBus;
use dualbus_core::{Envelope, EventKind};
use dualbus_engines::engine::{EngineHost, HostOptions, RunningEngine};
use dualbus_engines::hub::{HubClient, HubError, HubHandle, HubOptions, MarketDataHub};
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use dualbus_engines::provider::{
    HistoryRequest, MarketStream, Provider, ProviderError, SlowHistory,
};
use dualbus_engines::venue::VenueOptions;
use dualbus_model::health::EngineHealth;
use dualbus_model::hub::{hub_request_kind, HistoryQuery, HubReply, Snapshot};
use dualbus_model::market::{
    Bar, BookSnapshot, DataType, Instrument, MarketEvent, Quote, Side, Trade,
};
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest, OrderType};
use dualbus_testkit::{wait_until, RedisFactory, TransportFactory};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Checker;
use tokio::sync::{mpsc, watch};

/// Guards a whole test against a hang (a bug, not a speed limit).
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Guards one wait for a condition inside a test.
const WAIT: Duration = Duration::from_secs(30);
/// Request timeout of the test clients.
const REPLY_WAIT: Duration = Duration::from_secs(10);
const S: u64 = 1_000_000_000;
/// A minute boundary (1_699_999_980 s = 28_333_333 minutes), so bars starting here are aligned.
const T0: u64 = 1_699_999_980 * S;

async fn guarded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, test)
        .await
        .expect("test hung for 60 s")
}

// ---------------------------------------------------------------------------------------------
// A provider scripted by the test.

/// Its stream yields the batches sent on a channel and ends when the sender is dropped; its
/// history returns fixed bars, counts its calls and can be held on a gate.
struct ScriptedProvider {
    instruments: Vec<Instrument>,
    batches: Mutex<Option<mpsc::Receiver<Vec<MarketEvent>>>>,
    bars: Vec<Bar>,
    calls: Arc<AtomicU64>,
    gate: Option<watch::Receiver<bool>>,
}

impl ScriptedProvider {
    /// A provider of `symbols` whose stream plays what the returned sender sends.
    fn live(symbols: &[&str]) -> (ScriptedProvider, mpsc::Sender<Vec<MarketEvent>>) {
        let (tx, rx) = mpsc::channel(64);
        let p = ScriptedProvider {
            instruments: symbols
                .iter()
                .map(|s| Instrument {
                    symbol: s.to_string(),
                    tick_size: 0.01,
                    lot_size: 0.001,
                })
                .collect(),
            batches: Mutex::new(Some(rx)),
            bars: Vec::new(),
            calls: Arc::default(),
            gate: None,
        };
        (p, tx)
    }

    /// A provider whose stream plays `events` (in batches of 3) and ends.
    fn fixed(symbols: &[&str], events: Vec<MarketEvent>) -> ScriptedProvider {
        let (p, tx) = ScriptedProvider::live(symbols);
        for batch in events.chunks(3) {
            tx.try_send(batch.to_vec())
                .expect("room for the whole script");
        }
        p
    }

    fn with_bars(mut self, bars: Vec<Bar>) -> ScriptedProvider {
        self.bars = bars;
        self
    }

    /// History calls wait until the gate says `true`.
    fn gated(mut self, gate: watch::Receiver<bool>) -> ScriptedProvider {
        self.gate = Some(gate);
        self
    }

    /// Counts the history calls.
    fn calls(&self) -> Arc<AtomicU64> {
        self.calls.clone()
    }
}

struct ScriptedStream(mpsc::Receiver<Vec<MarketEvent>>);

#[async_trait]
impl MarketStream for ScriptedStream {
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        match self.0.recv().await {
            Some(batch) => {
                out.extend(batch);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn instruments(&self) -> Vec<Instrument> {
        self.instruments.clone()
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        match self.batches.lock().take() {
            Some(rx) => Ok(Box::new(ScriptedStream(rx))),
            None => Err(ProviderError::Config("the script plays once".into())),
        }
    }

    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let mut gate = gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        if !self.instruments.iter().any(|i| i.symbol == req.symbol) {
            return Err(ProviderError::BadRequest(format!(
                "unknown symbol {:?}",
                req.symbol
            )));
        }
        let end = req.end_ts.unwrap_or(u64::MAX);
        let bars: Vec<Bar> = self
            .bars
            .iter()
            .filter(|b| b.symbol == req.symbol && b.secs == req.bar_secs && b.end_ts() <= end)
            .cloned()
            .collect();
        let skip = bars.len().saturating_sub(req.limit as usize);
        Ok(bars[skip..].to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Market data.

fn trade(symbol: &str, ts: u64, price: f64, size: f64, side: Side) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: symbol.into(),
        ts,
        price,
        size,
        side,
        id: 0,
    })
}

fn quote_of(symbol: &str, ts: u64, bid: f64, ask: f64) -> Quote {
    Quote {
        symbol: symbol.into(),
        ts,
        bid,
        ask,
        bid_size: 1.0,
        ask_size: 2.0,
    }
}

fn quote(symbol: &str, ts: u64, bid: f64, ask: f64) -> MarketEvent {
    MarketEvent::Quote(quote_of(symbol, ts, bid, ask))
}

fn bar_of(symbol: &str, ts: u64, ohlc: [f64; 4]) -> Bar {
    let [open, high, low, close] = ohlc;
    Bar {
        symbol: symbol.into(),
        ts,
        secs: 60,
        open,
        high,
        low,
        close,
        volume: 3.0,
        buy_volume: 1.0,
        trades: 5,
    }
}

fn bar(symbol: &str, ts: u64, ohlc: [f64; 4]) -> MarketEvent {
    MarketEvent::Bar(bar_of(symbol, ts, ohlc))
}

/// Five one-minute bars of `symbol` from `T0`.
fn minute_bars(symbol: &str, base: f64) -> Vec<Bar> {
    (0..5u64)
        .map(|i| {
            let p = base + i as f64;
            bar_of(symbol, T0 + i * 60 * S, [p, p + 0.5, p - 0.5, p + 0.25])
        })
        .collect()
}

/// Good data and one piece of each bad kind, in stream order: `(event, None)` must be
/// published, `(event, Some(reason))` rejected for `reason`.
fn mixed_script() -> Vec<(MarketEvent, Option<&'static str>)> {
    vec![
        (trade("BTCUSDT", T0 + S, 100.0, 0.5, Side::Buy), None),
        (quote("BTCUSDT", T0 + S, 99.9, 100.1), None),
        // Another symbol keeps its own clock: earlier than BTCUSDT's data, still fine.
        (trade("ETHUSDT", T0 + S / 2, 2000.0, 1.0, Side::Sell), None),
        (
            trade("BTCUSDT", T0 + 2 * S, f64::NAN, 1.0, Side::Buy),
            Some("non_finite_price"),
        ),
        (
            trade("BTCUSDT", T0 + 2 * S, 0.0, 1.0, Side::Buy),
            Some("non_positive_price"),
        ),
        (
            trade("BTCUSDT", T0 + 2 * S, -5.0, 1.0, Side::Buy),
            Some("non_positive_price"),
        ),
        (
            trade("BTCUSDT", T0 + 2 * S, 100.0, -1.0, Side::Sell),
            Some("negative_size"),
        ),
        (
            quote("BTCUSDT", T0 + 2 * S, 100.2, 100.1),
            Some("crossed_quote"),
        ),
        // A zero size is a size.
        (trade("BTCUSDT", T0 + 3 * S, 100.2, 0.0, Side::Sell), None),
        (
            trade("BTCUSDT", T0 + 2 * S + S / 2, 100.1, 1.0, Side::Buy),
            Some("timestamp_backwards"),
        ),
        // Locked (bid == ask) is not crossed.
        (quote("BTCUSDT", T0 + 3 * S, 100.1, 100.1), None),
        (bar("BTCUSDT", T0, [100.0, 100.5, 99.5, 100.2]), None),
        (
            // The close is above the high.
            bar("BTCUSDT", T0 + 60 * S, [100.0, 100.1, 99.0, 100.5]),
            Some("inconsistent_bar"),
        ),
        (
            MarketEvent::Book(BookSnapshot {
                symbol: "BTCUSDT".into(),
                ts: T0 + 4 * S,
                bids: vec![(100.0, 1.0), (99.9, 2.0)],
                asks: vec![(100.1, 1.5)],
            }),
            None,
        ),
        (trade("BTCUSDT", T0 + 4 * S, 100.3, 1.0, Side::Buy), None),
    ]
}

fn good_events(script: &[(MarketEvent, Option<&'static str>)]) -> Vec<MarketEvent> {
    script
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(e, _)| e.clone())
        .collect()
}

fn expected_rejections(script: &[(MarketEvent, Option<&'static str>)]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for r in script.iter().filter_map(|(_, r)| *r) {
        *m.entry(r.to_string()).or_default() += 1;
    }
    m
}

/// A `market_data` envelope back into the event it carries; checks its topic on the way.
fn market_event(env: &Envelope) -> MarketEvent {
    assert_eq!(env.kind, EventKind::MarketData, "{}", env.topic);
    let topic = env.topic.to_string();
    let segs: Vec<&str> = topic.split('.').collect();
    assert_eq!(segs.len(), 3, "{topic}");
    let ev = match segs[1] {
        "trade" => MarketEvent::Trade(env.enc.decode(&env.payload).expect("a trade")),
        "quote" => MarketEvent::Quote(env.enc.decode(&env.payload).expect("a quote")),
        "bar" => MarketEvent::Bar(env.enc.decode(&env.payload).expect("a bar")),
        "book" => MarketEvent::Book(env.enc.decode(&env.payload).expect("a book")),
        other => panic!("unexpected data type {other:?} in {topic}"),
    };
    assert_eq!(segs[2], ev.symbol(), "{topic}");
    ev
}

// ---------------------------------------------------------------------------------------------
// Bus plumbing.

/// A hub running in the engine host.
struct RunningHub {
    engine: RunningEngine<MarketDataHub>,
    handle: HubHandle,
    bus: DualBus,
}

impl RunningHub {
    async fn start(
        bus: DualBus,
        provider: impl Provider + 'static,
        opts: HubOptions,
        host: HostOptions,
    ) -> RunningHub {
        let hub = MarketDataHub::new(Arc::new(provider), opts);
        let handle = hub.handle();
        let engine = EngineHost::start(hub, bus.clone(), host)
            .await
            .expect("the hub starts");
        RunningHub {
            engine,
            handle,
            bus,
        }
    }

    /// A hub on fresh embedded buses.
    async fn embedded(provider: impl Provider + 'static, opts: HubOptions) -> RunningHub {
        let bus = DualBus::builder("marketdata")
            .instance("marketdata-1")
            .build()
            .expect("embedded bus");
        RunningHub::start(bus, provider, opts, HostOptions::default()).await
    }

    /// A client of the hub's buses as engine `name`.
    fn client(&self, name: &str) -> HubClient {
        let bus = self
            .bus
            .sibling(name, &format!("{name}-1"))
            .expect("client bus");
        HubClient::new(bus, Some(REPLY_WAIT))
    }

    async fn feed_done(&self) {
        tokio::time::timeout(WAIT, self.handle.feed_done())
            .await
            .expect("the feed ended");
    }

    /// Waits until `n` market data messages are published and `inbox` has them all.
    async fn delivered(&self, inbox: &Checker, n: u64) {
        let h = self.handle.clone();
        wait_until("every market data message delivered", WAIT, || {
            h.stats().published == n && inbox.count(EventKind::MarketData) as u64 == n
        })
        .await;
    }
}

fn history_query(bar_secs: u32, limit: u32) -> HistoryQuery {
    HistoryQuery {
        bar_secs,
        limit,
        end_ts: None,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Replay of the real sample.

/// The Binance sample from `tests/data` (always `Some`).
fn binance_sample() -> Option<PathBuf> {
    // The samples live in the repository (tests/data), so the tests always run on them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
    assert!(
        dir.is_dir(),
        "sample data directory {} is missing",
        dir.display()
    );
    Some(dir.join("binance-btcusdt-trades-2021-01-08.csv"))
}

/// The file's rows read independently of the replay provider:
/// `id,price,qty,quote_qty,time_ms,is_buyer_maker,is_best_match`.
fn binance_rows(path: &Path) -> Vec<Trade> {
    let text = std::fs::read_to_string(path).expect("read the sample");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim().split(',').collect();
            assert_eq!(f.len(), 7, "{l}");
            Trade {
                symbol: "BTCUSDT".into(),
                id: f[0].parse().expect("id"),
                price: f[1].parse().expect("price"),
                size: f[2].parse().expect("qty"),
                ts: f[4].parse::<u64>().expect("time") * 1_000_000,
                side: if f[5] == "True" {
                    Side::Sell
                } else {
                    Side::Buy
                },
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_sample_is_published_in_file_order_and_served_from_the_caches() {
    let Some(path) = binance_sample() else { return };
    guarded(async {
        let rows = binance_rows(&path);
        assert_eq!(rows.len(), 2001);
        let provider =
            ReplayProvider::open(ReplayOptions::new(&path, FileFormat::Binance).bar_secs(10))
                .expect("open the sample");
        assert!(provider.skipped_rows().is_empty());
        let bus = DualBus::builder("marketdata")
            .instance("marketdata-1")
            .build()
            .expect("embedded bus");
        let trades_in = Checker::named(&bus, "trades", &["market_data.trade.>"]).await;
        let bars_in = Checker::named(&bus, "bars", &["market_data.bar.>"]).await;
        let hub =
            RunningHub::start(bus, provider, HubOptions::default(), HostOptions::default()).await;
        hub.feed_done().await;
        let published = hub.handle.stats().published;
        let h = hub.handle.clone();
        wait_until("trades and bars delivered", WAIT, || {
            (trades_in.count(EventKind::MarketData) + bars_in.count(EventKind::MarketData)) as u64
                == h.stats().published
        })
        .await;

        let trades: Vec<Trade> = trades_in.of(EventKind::MarketData);
        assert_eq!(trades.len(), rows.len(), "one trade per valid row");
        assert_eq!(trades, rows, "every trade as in the file, in file order");
        assert!(trades_in
            .envelopes()
            .iter()
            .all(|e| e.topic.to_string() == "market_data.trade.BTCUSDT"));
        assert_eq!(
            trades[0],
            Trade {
                symbol: "BTCUSDT".into(),
                ts: 1_610_064_000_278_000_000,
                price: 39432.48,
                size: 0.000263,
                side: Side::Sell,
                id: 553_287_559,
            }
        );
        assert_eq!(
            trades[2000],
            Trade {
                symbol: "BTCUSDT".into(),
                ts: 1_610_064_046_355_000_000,
                price: 39491.76,
                size: 0.014596,
                side: Side::Sell,
                id: 553_289_559,
            }
        );
        // 00:00:00.278 to 00:00:46.355 in 10 s bars: five, the last one flushed at the end.
        let bars: Vec<Bar> = bars_in.of(EventKind::MarketData);
        let counts: Vec<u64> = bars.iter().map(|b| b.trades).collect();
        assert_eq!(counts, [350, 328, 531, 543, 249]);
        assert_eq!(bars.iter().map(|b| b.trades).sum::<u64>(), 2001);

        let stats = hub.handle.stats();
        assert_eq!(published, 2001 + 5);
        assert_eq!(stats.published, published, "{stats:?}");
        assert_eq!(stats.accepted, published, "{stats:?}");
        assert!(stats.rejected.is_empty(), "{stats:?}");
        assert!(stats.feed_done, "{stats:?}");
        assert_eq!(stats.provider_skipped, 0);

        let client = hub.client("strategy");
        let snap = client.snapshot("BTCUSDT").await.expect("snapshot");
        assert_eq!(
            snap,
            Snapshot {
                symbol: "BTCUSDT".into(),
                trade: Some(trades[2000].clone()),
                quote: None,
                bar: Some(bars[4].clone()),
            }
        );

        // No look-ahead: the 40 s - 50 s bar has not ended at 46.355 s, the last trade.
        let last_ts = trades[2000].ts;
        let history = client
            .history("BTCUSDT", &history_query(10, 100))
            .await
            .expect("history");
        assert_eq!(history, bars[..4]);
        assert!(history.iter().all(|b| b.end_ts() <= last_ts));
        let minutes = client
            .history("BTCUSDT", &history_query(60, 100))
            .await
            .expect("history");
        assert!(minutes.is_empty(), "the only minute has not ended");
        let stats = hub.handle.stats();
        assert_eq!((stats.requests, stats.hits), (3, 1), "{stats:?}");
        assert_eq!(stats.upstream_calls, 2, "{stats:?}");
        hub.engine.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Validation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_market_data_is_published_and_rejections_are_counted_by_reason() {
    guarded(async {
        let script = mixed_script();
        let good = good_events(&script);
        let events: Vec<MarketEvent> = script.iter().map(|(e, _)| e.clone()).collect();
        let bus = DualBus::builder("marketdata")
            .instance("marketdata-1")
            .build()
            .expect("embedded bus");
        let inbox = Checker::named(&bus, "watcher", &["market_data.>"]).await;
        let hub = RunningHub::start(
            bus,
            ScriptedProvider::fixed(&["BTCUSDT", "ETHUSDT"], events),
            HubOptions::default(),
            HostOptions::default(),
        )
        .await;
        hub.feed_done().await;
        hub.delivered(&inbox, good.len() as u64).await;

        let received: Vec<MarketEvent> = inbox.envelopes().iter().map(market_event).collect();
        assert_eq!(received, good, "exactly the valid data, in order");
        let stats = hub.handle.stats();
        assert_eq!(stats.rejected, expected_rejections(&script));
        for reason in [
            "non_finite_price",
            "non_positive_price",
            "negative_size",
            "crossed_quote",
            "timestamp_backwards",
            "inconsistent_bar",
        ] {
            assert!(stats.rejected[reason] >= 1, "{reason}: {stats:?}");
        }
        assert_eq!(stats.accepted, good.len() as u64);
        assert_eq!(stats.published, good.len() as u64);

        // Rejected data never reaches the snapshots either.
        let btc = hub.handle.snapshot("BTCUSDT").expect("BTCUSDT snapshot");
        assert_eq!(
            btc.trade.map(|t| (t.ts, t.price)),
            Some((T0 + 4 * S, 100.3))
        );
        assert_eq!(btc.quote.map(|q| (q.bid, q.ask)), Some((100.1, 100.1)));
        assert_eq!(btc.bar.map(|b| b.ts), Some(T0));
        hub.engine.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Coalescing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_history_requests_make_one_upstream_call() {
    guarded(async {
        let (open_tx, open_rx) = watch::channel(false);
        let provider = ScriptedProvider::fixed(&["BTCUSDT"], Vec::new())
            .with_bars(minute_bars("BTCUSDT", 100.0))
            .gated(open_rx);
        let calls = provider.calls();
        let provider = SlowHistory::new(provider, Duration::from_millis(300));
        let hub = RunningHub::embedded(provider, HubOptions::default()).await;
        let expected = minute_bars("BTCUSDT", 100.0)[2..].to_vec();

        let clients: Vec<HubClient> = (0..4).map(|i| hub.client(&format!("engine{i}"))).collect();
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = clients[i % clients.len()].clone();
            asks.spawn(async move { client.history("BTCUSDT", &history_query(60, 3)).await });
        }
        // The upstream answer is held back until every request has been seen, so they all
        // overlap however slowly this machine runs.
        let h = hub.handle.clone();
        let c = calls.clone();
        wait_until("20 requests seen, one upstream call made", WAIT, || {
            let s = h.stats();
            s.hits + s.misses == 20 && c.load(Ordering::SeqCst) >= 1
        })
        .await;
        open_tx.send(true).expect("gate");
        let mut answers = 0;
        while let Some(res) = asks.join_next().await {
            let bars = res.expect("task").expect("history");
            assert_eq!(bars, expected);
            answers += 1;
        }
        assert_eq!(answers, 20);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call to the provider");
        let stats = hub.handle.stats();
        assert_eq!(
            (stats.requests, stats.history_requests),
            (20, 20),
            "{stats:?}"
        );
        assert_eq!(stats.upstream_calls, 1, "{stats:?}");
        assert_eq!(stats.coalesced, 19, "{stats:?}");
        assert_eq!((stats.misses, stats.hits), (20, 0), "{stats:?}");
        assert_eq!(stats.upstream_errors, 0);

        // Answered: the next identical request is a cache hit.
        let bars = clients[0]
            .history("BTCUSDT", &history_query(60, 3))
            .await
            .expect("history");
        assert_eq!(bars, expected);
        let stats = hub.handle.stats();
        assert_eq!((stats.requests, stats.hits, stats.misses), (21, 1, 20));
        assert_eq!(stats.upstream_calls, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        hub.engine.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Cache expiry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_history_expires_after_its_ttl_and_each_request_has_its_own_entry() {
    guarded(async {
        let mut bars = minute_bars("BTCUSDT", 100.0);
        bars.extend(minute_bars("ETHUSDT", 2000.0));
        let provider =
            ScriptedProvider::fixed(&["BTCUSDT", "ETHUSDT"], Vec::new()).with_bars(bars.clone());
        let calls = provider.calls();
        let ttl = Duration::from_millis(300);
        let opts = HubOptions {
            history_ttl_secs: HashMap::from([(DataType::Bar, ttl.as_secs_f64())]),
            ..HubOptions::default()
        };
        let hub = RunningHub::embedded(provider, opts).await;
        let client = hub.client("strategy");
        let q = history_query(60, 3);

        let before_first = Instant::now();
        let first = client.history("BTCUSDT", &q).await.expect("history");
        let first_answered = Instant::now();
        assert_eq!(first, bars[2..5]);
        let s = hub.handle.stats();
        assert_eq!((s.misses, s.hits, s.upstream_calls), (1, 0, 1), "{s:?}");

        let again = client.history("BTCUSDT", &q).await.expect("history");
        assert_eq!(again, first);
        let s = hub.handle.stats();
        // The entry is at most as old as this round trip: within the TTL it must be a hit. (A
        // machine stalled for longer than the TTL cannot tell; no maximum time is asserted.)
        if before_first.elapsed() < ttl {
            assert_eq!((s.misses, s.hits, s.upstream_calls), (1, 1, 1), "{s:?}");
        } else {
            eprintln!("the round trips outlasted the TTL: the hit is not checked");
        }
        let upstream = s.upstream_calls;

        // The entry was made before the first answer arrived: past this it has expired.
        tokio::time::sleep_until((first_answered + ttl + Duration::from_millis(20)).into()).await;
        let expired = client.history("BTCUSDT", &q).await.expect("history");
        assert_eq!(expired, first);
        let s = hub.handle.stats();
        assert_eq!(s.upstream_calls, upstream + 1, "expired: {s:?}");
        assert_eq!(s.misses, 3 - s.hits, "{s:?}");

        // Another symbol, another limit: entries of their own.
        let eth = client.history("ETHUSDT", &q).await.expect("history");
        assert_eq!(eth, bars[7..10]);
        let two = client
            .history("BTCUSDT", &history_query(60, 2))
            .await
            .expect("history");
        assert_eq!(two, bars[3..5]);
        let s = hub.handle.stats();
        assert_eq!(s.upstream_calls, upstream + 3, "{s:?}");
        assert_eq!(s.requests, 5);
        assert_eq!(s.coalesced, 0);
        assert_eq!(calls.load(Ordering::SeqCst), s.upstream_calls);

        // An upstream refusal is an error answer, not a cached one.
        match client.history("DOGEUSDT", &q).await {
            Err(HubError::Hub(reason)) => assert!(reason.contains("DOGEUSDT"), "{reason}"),
            other => panic!("expected the provider's refusal, got {other:?}"),
        }
        let s = hub.handle.stats();
        assert_eq!(s.upstream_errors, 1, "{s:?}");
        hub.engine.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Snapshots and bad requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_requests_hit_or_miss_and_bad_requests_get_an_error_reply() {
    guarded(async {
        let events = vec![
            trade("BTCUSDT", T0 + S, 100.0, 0.5, Side::Buy),
            quote("BTCUSDT", T0 + S, 99.9, 100.1),
            trade("BTCUSDT", T0 + 2 * S, 100.2, 0.1, Side::Sell),
        ];
        let hub = RunningHub::embedded(
            ScriptedProvider::fixed(&["BTCUSDT"], events.clone()),
            HubOptions::default(),
        )
        .await;
        hub.feed_done().await;
        let client = hub.client("strategy");

        match client.snapshot("DOGEUSDT").await {
            Err(HubError::Hub(reason)) => assert!(reason.contains("DOGEUSDT"), "{reason}"),
            other => panic!("expected a hub error naming DOGEUSDT, got {other:?}"),
        }
        let s = hub.handle.stats();
        assert_eq!(
            (s.requests, s.snapshot_requests, s.misses, s.hits),
            (1, 1, 1, 0)
        );

        let snap = client.snapshot("BTCUSDT").await.expect("snapshot");
        let (MarketEvent::Quote(q), MarketEvent::Trade(t)) = (&events[1], &events[2]) else {
            unreachable!()
        };
        assert_eq!(
            snap,
            Snapshot {
                symbol: "BTCUSDT".into(),
                trade: Some(t.clone()),
                quote: Some(q.clone()),
                bar: None,
            }
        );
        let s = hub.handle.stats();
        assert_eq!(
            (s.requests, s.snapshot_requests, s.misses, s.hits),
            (2, 2, 1, 1)
        );

        // Raw requests the typed client cannot make.
        let bus = hub.bus.sibling("raw", "raw-1").expect("client bus");
        let ask = |topic: &'static str, body: serde_json::Value| {
            let bus = bus.clone();
            async move {
                let env = bus
                    .request(hub_request_kind(), topic, &body, Some(REPLY_WAIT))
                    .await
                    .expect("a reply");
                env.enc
                    .decode::<HubReply>(&env.payload)
                    .expect("a hub reply")
            }
        };
        for (topic, body, says) in [
            (
                "hub_request.bogus",
                serde_json::json!({}),
                "hub_request.bogus",
            ),
            (
                "hub_request.snapshot",
                serde_json::json!({}),
                "hub_request.snapshot",
            ),
            (
                "hub_request.history.BTCUSDT",
                serde_json::json!({"limit": "lots"}),
                "does not decode",
            ),
        ] {
            match ask(topic, body).await {
                HubReply::Error { reason } => assert!(reason.contains(says), "{reason}"),
                other => panic!("{topic}: expected an error reply, got {other:?}"),
            }
        }
        let s = hub.handle.stats();
        assert_eq!(s.bad_requests, 3, "{s:?}");
        assert_eq!(s.requests, 2, "bad requests are not served requests: {s:?}");
        hub.engine.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Paper venue.

fn order(id: &str, symbol: &str, side: Side, qty: f64, limit: Option<f64>) -> OrderRequest {
    OrderRequest {
        order_id: id.into(),
        symbol: symbol.into(),
        side,
        qty,
        order_type: if limit.is_some() {
            OrderType::Limit
        } else {
            OrderType::Market
        },
        limit_price: limit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_requests_on_the_bus_are_filled_or_rejected_by_the_paper_venue() {
    guarded(async {
        let (provider, feed) = ScriptedProvider::live(&["BTCUSDT", "ETHUSDT"]);
        let opts = HubOptions {
            venue: VenueOptions {
                slippage_bps: 10.0,
                ..VenueOptions::default()
            },
            ..HubOptions::default()
        };
        let hub = RunningHub::embedded(provider, opts).await;
        let fills = Checker::named(&hub.bus, "portfolio", &["trade_execution.>"]).await;
        let risk = hub.bus.sibling("risk", "risk-1").expect("risk client");
        let send = |o: OrderRequest| {
            let risk = risk.clone();
            async move {
                let topic = format!("order_request.{}", o.symbol);
                risk.publish(EventKind::OrderRequest, &topic, &o)
                    .await
                    .expect("order published");
            }
        };
        let h = hub.handle.clone();
        let quoted = |q: Quote| {
            let h = h.clone();
            async move {
                wait_until("the quote reached the hub", WAIT, || {
                    h.snapshot(&q.symbol).and_then(|s| s.quote) == Some(q.clone())
                })
                .await;
            }
        };

        let q1 = quote_of("BTCUSDT", T0 + S, 100.0, 101.0);
        feed.send(vec![MarketEvent::Quote(q1.clone())])
            .await
            .expect("feed");
        quoted(q1).await;

        send(order("buy", "BTCUSDT", Side::Buy, 2.0, None)).await;
        send(order("doge", "DOGEUSDT", Side::Buy, 1.0, None)).await;
        send(order("zero", "BTCUSDT", Side::Buy, 0.0, None)).await;
        send(order("eth", "ETHUSDT", Side::Sell, 1.0, None)).await;
        send(order("sell", "BTCUSDT", Side::Sell, 1.0, None)).await;
        send(order("rest", "BTCUSDT", Side::Buy, 1.5, Some(100.5))).await;
        wait_until("five executions and one resting order", WAIT, || {
            fills.count(EventKind::TradeExecution) == 5 && h.stats().venue.resting == 1
        })
        .await;
        let xs: Vec<Execution> = fills.of(EventKind::TradeExecution);
        let ids: Vec<&str> = xs.iter().map(|x| x.order_id.as_str()).collect();
        assert_eq!(ids, ["buy", "doge", "zero", "eth", "sell"], "in order sent");
        let topics: Vec<String> = fills
            .envelopes()
            .iter()
            .map(|e| e.topic.to_string())
            .collect();
        assert_eq!(topics[1], "trade_execution.DOGEUSDT");
        assert!(fills
            .envelopes()
            .iter()
            .all(|e| e.kind == EventKind::TradeExecution));

        let buy = &xs[0];
        assert_eq!(buy.status, ExecStatus::Filled, "{buy:?}");
        assert!(
            (buy.price - 101.0 * 1.001).abs() < 1e-9,
            "at the ask + 10 bp: {buy:?}"
        );
        assert_eq!((buy.qty, buy.side, buy.ts), (2.0, Side::Buy, T0 + S));
        assert_eq!(buy.liquidity.as_deref(), Some("taker"));
        let sell = &xs[4];
        assert_eq!(sell.status, ExecStatus::Filled, "{sell:?}");
        assert!(
            (sell.price - 100.0 * 0.999).abs() < 1e-9,
            "at the bid - 10 bp: {sell:?}"
        );
        for (x, says) in [
            (&xs[1], "unknown symbol \"DOGEUSDT\""),
            (&xs[2], "bad quantity 0"),
            (&xs[3], "no quote for ETHUSDT"),
        ] {
            assert_eq!(x.status, ExecStatus::Rejected, "{x:?}");
            assert_eq!((x.qty, x.price), (0.0, 0.0), "{x:?}");
            let reason = x.reason.as_deref().unwrap_or_default();
            assert!(reason.contains(says), "{reason}");
        }

        // A quote that does not cross the resting buy at 100.5 leaves it resting ...
        let q2 = quote_of("BTCUSDT", T0 + 2 * S, 100.2, 100.6);
        feed.send(vec![MarketEvent::Quote(q2.clone())])
            .await
            .expect("feed");
        quoted(q2).await;
        assert_eq!(fills.count(EventKind::TradeExecution), 5);
        assert_eq!(hub.handle.stats().venue.resting, 1);
        // ... one that does fills it at its limit, at the quote's time.
        let q3 = quote_of("BTCUSDT", T0 + 3 * S, 100.1, 100.4);
        feed.send(vec![MarketEvent::Quote(q3)]).await.expect("feed");
        wait_until("the resting order filled", WAIT, || {
            fills.count(EventKind::TradeExecution) == 6
        })
        .await;
        let rest = &fills.of::<Execution>(EventKind::TradeExecution)[5];
        assert_eq!(rest.order_id, "rest");
        assert_eq!(rest.status, ExecStatus::Filled, "{rest:?}");
        assert_eq!((rest.price, rest.qty, rest.ts), (100.5, 1.5, T0 + 3 * S));
        assert_eq!(rest.liquidity.as_deref(), Some("maker"));

        let v = hub.handle.stats().venue;
        assert_eq!((v.orders, v.fills, v.rejects, v.resting), (6, 3, 3, 0));
        drop(feed);
        hub.feed_done().await;
        let counts = hub.engine.stop().await;
        assert_eq!(counts.received.get("order_request"), Some(&6));
        assert_eq!(counts.published.get("trade_execution"), Some(&6));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Redis.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_hub_runs_unchanged_on_two_redis_servers() {
    guarded(async {
        // Two redis-server processes, killed when `pair` drops.
        let pair = RedisFactory.pair().await;
        let script = mixed_script();
        let good = good_events(&script);
        let events: Vec<MarketEvent> = script.iter().map(|(e, _)| e.clone()).collect();
        let bus = pair.bus_with("marketdata", "marketdata-1", pair.config());
        assert_eq!(
            bus.transport(dualbus_bus::BusId::MarketData).name(),
            "redis"
        );
        let inbox = Checker::named(&bus, "watcher", &["market_data.>"]).await;
        let fills = Checker::named(&bus, "portfolio", &["trade_execution.>"]).await;
        let hub = RunningHub::start(
            bus,
            ScriptedProvider::fixed(&["BTCUSDT", "ETHUSDT"], events),
            HubOptions::default(),
            HostOptions::default(),
        )
        .await;
        hub.feed_done().await;
        hub.delivered(&inbox, good.len() as u64).await;
        let received: Vec<MarketEvent> = inbox.envelopes().iter().map(market_event).collect();
        assert_eq!(received, good);
        assert_eq!(hub.handle.stats().rejected, expected_rejections(&script));

        let client = hub.client("strategy");
        let snap = client.snapshot("ETHUSDT").await.expect("snapshot");
        assert_eq!(snap.trade.map(|t| t.price), Some(2000.0));
        match client.snapshot("DOGEUSDT").await {
            Err(HubError::Hub(reason)) => assert!(reason.contains("DOGEUSDT"), "{reason}"),
            other => panic!("expected a hub error, got {other:?}"),
        }

        // An order across both buses (order_request on Engine Logic, trade_execution on
        // MarketData), filled at the last valid ask: the crossed quote never reached the venue.
        let risk = hub.bus.sibling("risk", "risk-1").expect("risk client");
        risk.publish(
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            &order("o1", "BTCUSDT", Side::Buy, 1.0, None),
        )
        .await
        .expect("order published");
        wait_until("the execution", WAIT, || {
            fills.count(EventKind::TradeExecution) == 1
        })
        .await;
        let x = &fills.of::<Execution>(EventKind::TradeExecution)[0];
        assert_eq!(x.status, ExecStatus::Filled, "{x:?}");
        assert!((x.price - 100.1 * 1.0001).abs() < 1e-9, "{x:?}");
        let counts = hub.engine.stop().await;
        assert_eq!(counts.received.get("hub_request"), Some(&2));
        drop(pair);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. The host.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_publishes_heartbeats_and_counts_requests_until_it_stops() {
    guarded(async {
        let bus = DualBus::builder("marketdata")
            .instance("marketdata-1")
            .build()
            .expect("embedded bus");
        let beats = Checker::named(&bus, "monitor", &["engine_health.>"]).await;
        let events = vec![
            trade("BTCUSDT", T0 + S, 100.0, 0.5, Side::Buy),
            quote("BTCUSDT", T0 + S, 99.9, 100.1),
        ];
        let provider =
            ScriptedProvider::fixed(&["BTCUSDT"], events).with_bars(minute_bars("BTCUSDT", 100.0));
        let host = HostOptions {
            health_every: Duration::from_millis(100),
            ..HostOptions::default()
        };
        let hub = RunningHub::start(bus, provider, HubOptions::default(), host).await;
        hub.feed_done().await;
        let client = hub.client("strategy");
        client.snapshot("BTCUSDT").await.expect("snapshot");
        client.snapshot("BTCUSDT").await.expect("snapshot");
        assert!(client.snapshot("DOGEUSDT").await.is_err());
        client
            .history("BTCUSDT", &history_query(60, 2))
            .await
            .expect("history");
        let sent = 4u64;
        // Periodic: more than one `running` heartbeat before the stop.
        wait_until("two heartbeats", WAIT, || {
            beats.count(EventKind::EngineHealth) >= 2
        })
        .await;

        let counts = hub.engine.stop().await;
        assert_eq!(
            counts.received.get("hub_request"),
            Some(&sent),
            "{counts:?}"
        );
        assert_eq!(
            counts.published.get("hub_request"),
            Some(&sent),
            "one reply each"
        );
        assert_eq!(counts.published.get("market_data"), Some(&2));
        let published_beats = *counts.published.get("engine_health").expect("heartbeats");
        wait_until("every heartbeat delivered", WAIT, || {
            beats.count(EventKind::EngineHealth) as u64 == published_beats
        })
        .await;

        let all = beats.envelopes();
        assert!(all
            .iter()
            .all(|e| e.topic.to_string() == "engine_health.marketdata"));
        let health: Vec<EngineHealth> = beats.of(EventKind::EngineHealth);
        assert!(health.len() >= 3, "{} heartbeats", health.len());
        assert!(health
            .iter()
            .all(|h| h.engine == "marketdata" && h.instance == "marketdata-1"));
        let (last, running) = health.split_last().expect("heartbeats");
        assert!(running.iter().all(|h| h.status == "running"), "{running:?}");
        assert_eq!(last.status, "stopped");
        assert_eq!(last.counts.received.get("hub_request"), Some(&sent));
        assert_eq!(last.details["requests"], 4, "{}", last.details);
        assert_eq!(last.details["snapshot_requests"], 3, "{}", last.details);
        assert!(running.windows(2).all(|w| w[0].uptime_s <= w[1].uptime_s));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Found while writing these tests.

/// A TTL too large for a `Duration` (`inf`, `1e300`: what a config file can say for "never
/// expire") made every history answer panic in its task, so the requester timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_ttl_too_large_for_a_duration_means_never_expire() {
    guarded(async {
        for ttl in [f64::INFINITY, 1e300] {
            let provider = ScriptedProvider::fixed(&["BTCUSDT"], Vec::new())
                .with_bars(minute_bars("BTCUSDT", 100.0));
            let opts = HubOptions {
                history_ttl_secs: HashMap::from([(DataType::Bar, ttl)]),
                ..HubOptions::default()
            };
            let hub = RunningHub::embedded(provider, opts).await;
            let client = hub.client("strategy");
            for _ in 0..2 {
                let bars = client
                    .history("BTCUSDT", &history_query(60, 2))
                    .await
                    .expect("history answered");
                assert_eq!(bars, minute_bars("BTCUSDT", 100.0)[3..]);
            }
            let s = hub.handle.stats();
            assert_eq!(
                (s.misses, s.hits, s.upstream_calls),
                (1, 1, 1),
                "ttl {ttl}: {s:?}"
            );
            hub.engine.stop().await;
        }
    })
    .await;
}

/// A hub that has fed one BTCUSDT quote (100 / 101), on a bus that redelivers after 50 ms and
/// dead-letters at the second delivery, and a `portfolio` listener of its executions.
async fn hub_for_orders() -> (RunningHub, Checker) {
    let mut cfg = dualbus_bus::Config::default();
    cfg.delivery.idle_timeout_ms = 50;
    cfg.delivery.max_deliveries = 2;
    let bus = DualBus::builder("marketdata")
        .instance("marketdata-1")
        .config(cfg)
        .build()
        .expect("embedded bus");
    let q = quote_of("BTCUSDT", T0 + S, 100.0, 101.0);
    let provider = ScriptedProvider::fixed(&["BTCUSDT"], vec![MarketEvent::Quote(q)]);
    let fills = Checker::named(&bus, "portfolio", &["trade_execution.>"]).await;
    let hub = RunningHub::start(bus, provider, HubOptions::default(), HostOptions::default()).await;
    hub.feed_done().await;
    (hub, fills)
}

/// The Engine Logic bus's dead letters, once there is one.
async fn logic_dead_letters(bus: &DualBus) -> Vec<dualbus_core::DeadLetter> {
    loop {
        let dead = bus
            .dead_letters(dualbus_bus::BusId::Logic, 10)
            .await
            .expect("dead letters");
        if !dead.is_empty() {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An order request that does not decode is retried, then dead-lettered with the reason; the
/// orders behind it are filled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_order_request_is_dead_lettered_and_later_orders_fill() {
    guarded(async {
        let (hub, fills) = hub_for_orders().await;
        let risk = hub.bus.sibling("risk", "risk-1").expect("risk client");
        risk.publish(
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            &serde_json::json!({"order_id": 7, "qty": "all"}),
        )
        .await
        .expect("published");
        risk.publish(
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            &order("good", "BTCUSDT", Side::Buy, 1.0, None),
        )
        .await
        .expect("published");
        wait_until("the good order filled", WAIT, || {
            fills.count(EventKind::TradeExecution) == 1
        })
        .await;
        assert_eq!(
            fills.of::<Execution>(EventKind::TradeExecution)[0].order_id,
            "good"
        );
        let dead = logic_dead_letters(&hub.bus).await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(
            dead[0].reason.contains("order_request does not decode"),
            "{}",
            dead[0].reason
        );
        assert_eq!(dead[0].group, "marketdata");
        let counts = hub.engine.stop().await;
        assert_eq!(counts.received.get("order_request"), Some(&3), "{counts:?}");
        assert_eq!(fills.count(EventKind::TradeExecution), 1);
    })
    .await;
}

/// Only the Risk engine's orders reach the paper venue: an order from another engine is
/// refused (no execution), dead-lettered with the reason and counted once; Risk's next order
/// fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_request_from_another_engine_than_risk_is_refused_and_dead_lettered() {
    guarded(async {
        let (hub, fills) = hub_for_orders().await;
        let strategy = hub.bus.sibling("strategy", "strategy-1").expect("client");
        strategy
            .publish(
                EventKind::OrderRequest,
                "order_request.BTCUSDT",
                &order("forged", "BTCUSDT", Side::Buy, 5.0, None),
            )
            .await
            .expect("published");
        let risk = hub.bus.sibling("risk", "risk-1").expect("risk client");
        risk.publish(
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            &order("good", "BTCUSDT", Side::Buy, 1.0, None),
        )
        .await
        .expect("published");
        wait_until("the good order filled", WAIT, || {
            fills.count(EventKind::TradeExecution) == 1
        })
        .await;
        let dead = logic_dead_letters(&hub.bus).await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(
            dead[0]
                .reason
                .contains("from \"strategy\" refused: only [\"risk\"] may send orders"),
            "{}",
            dead[0].reason
        );
        let stats = hub.handle.stats();
        assert_eq!(stats.venue.foreign, 1, "{stats:?}");
        assert_eq!(stats.venue.orders, 1, "{stats:?}");
        let counts = hub.engine.stop().await;
        // Delivered twice (max_deliveries), counted once.
        assert_eq!(counts.received.get("order_request"), Some(&3), "{counts:?}");
        let execs = fills.of::<Execution>(EventKind::TradeExecution);
        assert_eq!(execs.len(), 1);
        assert_eq!(execs[0].order_id, "good");
    })
    .await;
}
