//! Market data: trades, quotes, bars and book snapshots the MarketData hub publishes on
//! `market_data.{trade,quote,bar,book}.{SYMBOL}`, and the instruments and events providers give it.
//!
//! Timestamps are Unix nanoseconds of event time (the data's own clock).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which side took liquidity in a trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The buyer was the aggressor (lifted the offer).
    Buy,
    /// The seller was the aggressor (hit the bid).
    Sell,
}

impl Side {
    /// `+1` for buy, `-1` for sell.
    pub fn sign(self) -> f64 {
        match self {
            Side::Buy => 1.0,
            Side::Sell => -1.0,
        }
    }

    /// The other side.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}

/// One trade print.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Trade {
    /// Instrument symbol (`BTCUSDT`).
    pub symbol: String,
    /// Event time, Unix nanoseconds.
    pub ts: u64,
    /// Trade price.
    pub price: f64,
    /// Traded quantity.
    pub size: f64,
    /// Aggressor side.
    pub side: Side,
    /// The venue's trade id (0 when the source has none).
    #[serde(default)]
    pub id: u64,
}

/// Top of book.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Quote {
    /// Instrument symbol.
    pub symbol: String,
    /// Event time, Unix nanoseconds.
    pub ts: u64,
    /// Best bid price.
    pub bid: f64,
    /// Best ask price.
    pub ask: f64,
    /// Size at the best bid (0 when unknown).
    #[serde(default)]
    pub bid_size: f64,
    /// Size at the best ask (0 when unknown).
    #[serde(default)]
    pub ask_size: f64,
}

impl Quote {
    /// Mid price.
    pub fn mid(&self) -> f64 {
        (self.bid + self.ask) / 2.0
    }

    /// Quoted spread in basis points of the mid.
    pub fn spread_bps(&self) -> f64 {
        (self.ask - self.bid) / self.mid() * 1e4
    }
}

/// A time bar (OHLCV) of `secs` seconds starting at `ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Bar {
    /// Instrument symbol.
    pub symbol: String,
    /// Start of the bar, Unix nanoseconds (a multiple of `secs`).
    pub ts: u64,
    /// Length in seconds.
    pub secs: u32,
    /// First trade price.
    pub open: f64,
    /// Highest trade price.
    pub high: f64,
    /// Lowest trade price.
    pub low: f64,
    /// Last trade price.
    pub close: f64,
    /// Traded quantity.
    pub volume: f64,
    /// Quantity bought by aggressors (0 when the source does not say).
    #[serde(default)]
    pub buy_volume: f64,
    /// Number of trades.
    #[serde(default)]
    pub trades: u64,
}

impl Bar {
    /// End of the bar (exclusive), Unix nanoseconds.
    pub fn end_ts(&self) -> u64 {
        self.ts + u64::from(self.secs) * 1_000_000_000
    }
}

/// Several levels of the book.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BookSnapshot {
    /// Instrument symbol.
    pub symbol: String,
    /// Event time, Unix nanoseconds.
    pub ts: u64,
    /// Bids as (price, size), best first.
    pub bids: Vec<(f64, f64)>,
    /// Asks as (price, size), best first.
    pub asks: Vec<(f64, f64)>,
}

/// A tradable instrument.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Instrument {
    /// Symbol (`BTCUSDT`).
    pub symbol: String,
    /// Smallest price increment.
    pub tick_size: f64,
    /// Smallest quantity increment.
    pub lot_size: f64,
}

/// One piece of market data from a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MarketEvent {
    /// A trade.
    Trade(Trade),
    /// A top-of-book quote.
    Quote(Quote),
    /// A closed bar.
    Bar(Bar),
    /// A book snapshot.
    Book(BookSnapshot),
}

impl MarketEvent {
    /// The instrument it is about.
    pub fn symbol(&self) -> &str {
        match self {
            MarketEvent::Trade(t) => &t.symbol,
            MarketEvent::Quote(q) => &q.symbol,
            MarketEvent::Bar(b) => &b.symbol,
            MarketEvent::Book(b) => &b.symbol,
        }
    }

    /// Event time, Unix nanoseconds (a bar's is its end).
    pub fn ts(&self) -> u64 {
        match self {
            MarketEvent::Trade(t) => t.ts,
            MarketEvent::Quote(q) => q.ts,
            MarketEvent::Bar(b) => b.end_ts(),
            MarketEvent::Book(b) => b.ts,
        }
    }

    /// `trade`, `quote`, `bar` or `book`: the third topic segment.
    pub fn data_type(&self) -> DataType {
        match self {
            MarketEvent::Trade(_) => DataType::Trade,
            MarketEvent::Quote(_) => DataType::Quote,
            MarketEvent::Bar(_) => DataType::Bar,
            MarketEvent::Book(_) => DataType::Book,
        }
    }
}

/// The kinds of market data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Trades.
    Trade,
    /// Quotes.
    Quote,
    /// Bars.
    Bar,
    /// Book snapshots.
    Book,
}

impl DataType {
    /// The name used in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Trade => "trade",
            DataType::Quote => "quote",
            DataType::Bar => "bar",
            DataType::Book => "book",
        }
    }
}

impl Message for Trade {
    fn kind() -> EventKind {
        EventKind::MarketData
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("market_data.trade.{}", self.symbol)
    }
}

impl Message for Quote {
    fn kind() -> EventKind {
        EventKind::MarketData
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("market_data.quote.{}", self.symbol)
    }
}

impl Message for Bar {
    fn kind() -> EventKind {
        EventKind::MarketData
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("market_data.bar.{}", self.symbol)
    }
}

impl Message for BookSnapshot {
    fn kind() -> EventKind {
        EventKind::MarketData
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("market_data.book.{}", self.symbol)
    }
}
