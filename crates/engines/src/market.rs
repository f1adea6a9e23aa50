//! Validation of market data (the types are `dualbus_model::market`), bars built from trades.
//!
//! Every price, size and timestamp that reaches the MarketData bus has passed [`Validator`]:
//! non-finite or non-positive prices, negative sizes, crossed quotes and timestamps going
//! backwards are rejected with a [`Reject`] reason and counted, never published. Timestamps are
//! Unix nanoseconds of event time (the data's own clock).

use dualbus_model::market::{Bar, MarketEvent, Side, Trade};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast, non-cryptographic hasher for maps keyed by symbols on per-message paths (the
/// keys come from our own providers, so hash flooding is not a concern here).
#[derive(Default, Clone, Copy)]
pub struct SymbolHasher(u64);

impl Hasher for SymbolHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by symbol (or anything small) with [`SymbolHasher`].
pub type SymbolMap<K, V> = HashMap<K, V, BuildHasherDefault<SymbolHasher>>;

/// Why a piece of market data was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// A price (or bar field) that is NaN or infinite.
    NonFinitePrice,
    /// A price at or below zero.
    NonPositivePrice,
    /// A size that is NaN, infinite or below zero.
    NegativeSize,
    /// A quote (or book) whose best bid is above its best ask.
    CrossedQuote,
    /// A bar whose high/low do not contain its open and close.
    InconsistentBar,
    /// Older than the previous message of the same symbol and type.
    TimestampBackwards,
    /// An empty symbol.
    MissingSymbol,
}

impl Reject {
    /// Every reason, for reports.
    pub const ALL: [Reject; 7] = [
        Reject::NonFinitePrice,
        Reject::NonPositivePrice,
        Reject::NegativeSize,
        Reject::CrossedQuote,
        Reject::InconsistentBar,
        Reject::TimestampBackwards,
        Reject::MissingSymbol,
    ];

    /// The reason's name (as in reports).
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::NonFinitePrice => "non_finite_price",
            Reject::NonPositivePrice => "non_positive_price",
            Reject::NegativeSize => "negative_size",
            Reject::CrossedQuote => "crossed_quote",
            Reject::InconsistentBar => "inconsistent_bar",
            Reject::TimestampBackwards => "timestamp_backwards",
            Reject::MissingSymbol => "missing_symbol",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn price(p: f64) -> Result<(), Reject> {
    if !p.is_finite() {
        Err(Reject::NonFinitePrice)
    } else if p <= 0.0 {
        Err(Reject::NonPositivePrice)
    } else {
        Ok(())
    }
}

fn size(s: f64) -> Result<(), Reject> {
    if s.is_finite() && s >= 0.0 {
        Ok(())
    } else {
        Err(Reject::NegativeSize)
    }
}

/// Checks one event on its own (everything but timestamp order).
///
/// # Errors
/// The first rule it breaks.
pub fn check(ev: &MarketEvent) -> Result<(), Reject> {
    if ev.symbol().is_empty() {
        return Err(Reject::MissingSymbol);
    }
    match ev {
        MarketEvent::Trade(t) => {
            price(t.price)?;
            size(t.size)
        }
        MarketEvent::Quote(q) => {
            price(q.bid)?;
            price(q.ask)?;
            size(q.bid_size)?;
            size(q.ask_size)?;
            if q.bid > q.ask {
                return Err(Reject::CrossedQuote);
            }
            Ok(())
        }
        MarketEvent::Bar(b) => {
            for p in [b.open, b.high, b.low, b.close] {
                price(p)?;
            }
            size(b.volume)?;
            size(b.buy_volume)?;
            if b.high < b.low || b.open.max(b.close) > b.high || b.open.min(b.close) < b.low {
                return Err(Reject::InconsistentBar);
            }
            Ok(())
        }
        MarketEvent::Book(bk) => {
            for &(p, s) in bk.bids.iter().chain(bk.asks.iter()) {
                price(p)?;
                size(s)?;
            }
            if let (Some(b), Some(a)) = (bk.bids.first(), bk.asks.first()) {
                if b.0 > a.0 {
                    return Err(Reject::CrossedQuote);
                }
            }
            Ok(())
        }
    }
}

/// Validates a stream of market data: each event on its own, and its timestamp against the
/// previous one of the same symbol and type. Counts what it accepts and rejects, by reason.
#[derive(Debug, Default)]
pub struct Validator {
    /// Last accepted timestamp per symbol, indexed by [`DataType`].
    last_ts: SymbolMap<String, [Option<u64>; 4]>,
    accepted: u64,
    rejected: SymbolMap<Reject, u64>,
}

impl Validator {
    /// A validator that has seen nothing.
    pub fn new() -> Validator {
        Validator::default()
    }

    /// Checks `ev`; an accepted event becomes the new reference for its symbol and type.
    ///
    /// # Errors
    /// The rule it breaks (and the rejection is counted).
    pub fn validate(&mut self, ev: &MarketEvent) -> Result<(), Reject> {
        let res = check(ev).and_then(|()| {
            let ts = ev.ts();
            let slot = ev.data_type() as usize;
            match self.last_ts.get_mut(ev.symbol()) {
                Some(last) => match last[slot] {
                    Some(prev) if ts < prev => Err(Reject::TimestampBackwards),
                    _ => {
                        last[slot] = Some(ts);
                        Ok(())
                    }
                },
                None => {
                    let mut last = [None; 4];
                    last[slot] = Some(ts);
                    self.last_ts.insert(ev.symbol().to_string(), last);
                    Ok(())
                }
            }
        });
        match res {
            Ok(()) => self.accepted += 1,
            Err(r) => *self.rejected.entry(r).or_default() += 1,
        }
        res
    }

    /// Events accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Events rejected for `reason` so far.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected.get(&reason).copied().unwrap_or(0)
    }

    /// Rejections by reason (reasons never seen are left out).
    pub fn rejections(&self) -> Vec<(Reject, u64)> {
        Reject::ALL
            .iter()
            .filter_map(|r| self.rejected.get(r).map(|n| (*r, *n)))
            .collect()
    }

    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Builds time bars from trades: bars of `secs` seconds aligned to multiples of `secs` since
/// the Unix epoch. A bar is emitted when the first trade of a later period arrives (or on
/// [`BarBuilder::flush`]); a period without trades makes no bar. A trade older than the
/// symbol's previous one is ignored, as the [`Validator`] rejects it.
#[derive(Debug)]
pub struct BarBuilder {
    secs: u32,
    open: SymbolMap<String, Bar>,
    last_ts: SymbolMap<String, u64>,
}

impl BarBuilder {
    /// Bars of `secs` seconds (at least 1).
    pub fn new(secs: u32) -> BarBuilder {
        BarBuilder {
            secs: secs.max(1),
            open: SymbolMap::default(),
            last_ts: SymbolMap::default(),
        }
    }

    /// Bar length in seconds.
    pub fn secs(&self) -> u32 {
        self.secs
    }

    /// Adds a trade; returns the bar it closed, if any.
    pub fn on_trade(&mut self, t: &Trade) -> Option<Bar> {
        match self.last_ts.get_mut(&t.symbol) {
            Some(last) if t.ts < *last => return None,
            Some(last) => *last = t.ts,
            None => {
                self.last_ts.insert(t.symbol.clone(), t.ts);
            }
        }
        let len = u64::from(self.secs) * 1_000_000_000;
        let start = t.ts - t.ts % len;
        let buy = if t.side == Side::Buy { t.size } else { 0.0 };
        match self.open.get_mut(&t.symbol) {
            Some(bar) if bar.ts == start => {
                bar.high = bar.high.max(t.price);
                bar.low = bar.low.min(t.price);
                bar.close = t.price;
                bar.volume += t.size;
                bar.buy_volume += buy;
                bar.trades += 1;
                None
            }
            Some(bar) if start < bar.ts => None, // late trade: the validator rejects these
            _ => {
                let fresh = Bar {
                    symbol: t.symbol.clone(),
                    ts: start,
                    secs: self.secs,
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: t.size,
                    buy_volume: buy,
                    trades: 1,
                };
                self.open.insert(t.symbol.clone(), fresh)
            }
        }
    }

    /// Closes every open bar (end of data), in symbol order.
    pub fn flush(&mut self) -> Vec<Bar> {
        let mut bars: Vec<Bar> = self.open.drain().map(|(_, b)| b).collect();
        bars.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        bars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::market::{BookSnapshot, Quote};

    fn trade(sym: &str, ts: u64, price: f64, size: f64) -> MarketEvent {
        MarketEvent::Trade(Trade {
            symbol: sym.into(),
            ts,
            price,
            size,
            side: Side::Buy,
            id: 0,
        })
    }

    fn quote(ts: u64, bid: f64, ask: f64) -> MarketEvent {
        MarketEvent::Quote(Quote {
            symbol: "EURUSD".into(),
            ts,
            bid,
            ask,
            bid_size: 1.0,
            ask_size: 1.0,
        })
    }

    #[test]
    fn every_rule_rejects_with_its_reason_and_counts() {
        let mut v = Validator::new();
        assert_eq!(v.validate(&trade("A", 10, 100.0, 1.0)), Ok(()));
        assert_eq!(
            v.validate(&trade("A", 11, f64::NAN, 1.0)),
            Err(Reject::NonFinitePrice)
        );
        assert_eq!(
            v.validate(&trade("A", 11, f64::INFINITY, 1.0)),
            Err(Reject::NonFinitePrice)
        );
        assert_eq!(
            v.validate(&trade("A", 11, 0.0, 1.0)),
            Err(Reject::NonPositivePrice)
        );
        assert_eq!(
            v.validate(&trade("A", 11, -5.0, 1.0)),
            Err(Reject::NonPositivePrice)
        );
        assert_eq!(
            v.validate(&trade("A", 11, 100.0, -1.0)),
            Err(Reject::NegativeSize)
        );
        assert_eq!(
            v.validate(&trade("A", 11, 100.0, f64::NAN)),
            Err(Reject::NegativeSize)
        );
        assert_eq!(
            v.validate(&trade("A", 9, 100.0, 1.0)),
            Err(Reject::TimestampBackwards)
        );
        assert_eq!(
            v.validate(&trade("", 12, 100.0, 1.0)),
            Err(Reject::MissingSymbol)
        );
        // Same timestamp is fine; another symbol has its own clock.
        assert_eq!(v.validate(&trade("A", 10, 100.0, 0.0)), Ok(()));
        assert_eq!(v.validate(&trade("B", 1, 100.0, 1.0)), Ok(()));
        assert_eq!(v.validate(&quote(5, 1.2, 1.1)), Err(Reject::CrossedQuote));
        // A locked quote (bid == ask) is not crossed; quotes have their own clock.
        assert_eq!(v.validate(&quote(5, 1.1, 1.1)), Ok(()));
        assert_eq!(
            v.validate(&quote(4, 1.0, 1.1)),
            Err(Reject::TimestampBackwards)
        );
        assert_eq!(v.accepted(), 4);
        assert_eq!(v.rejected(Reject::NonFinitePrice), 2);
        assert_eq!(v.rejected(Reject::NonPositivePrice), 2);
        assert_eq!(v.rejected(Reject::NegativeSize), 2);
        assert_eq!(v.rejected(Reject::TimestampBackwards), 2);
        assert_eq!(v.rejected(Reject::CrossedQuote), 1);
        assert_eq!(v.rejected(Reject::MissingSymbol), 1);
        assert_eq!(v.rejected_total(), 10);
    }

    #[test]
    fn bars_and_books_are_checked() {
        let bar = |o: f64, h: f64, l: f64, c: f64, vol: f64| {
            MarketEvent::Bar(Bar {
                symbol: "A".into(),
                ts: 0,
                secs: 60,
                open: o,
                high: h,
                low: l,
                close: c,
                volume: vol,
                buy_volume: 0.0,
                trades: 1,
            })
        };
        assert_eq!(check(&bar(10.0, 12.0, 9.0, 11.0, 5.0)), Ok(()));
        assert_eq!(
            check(&bar(10.0, 9.5, 9.0, 11.0, 5.0)),
            Err(Reject::InconsistentBar)
        );
        assert_eq!(
            check(&bar(10.0, 12.0, 9.0, 11.0, -5.0)),
            Err(Reject::NegativeSize)
        );
        assert_eq!(
            check(&bar(10.0, 12.0, -9.0, 11.0, 5.0)),
            Err(Reject::NonPositivePrice)
        );
        let book = |bid: f64, ask: f64| {
            MarketEvent::Book(BookSnapshot {
                symbol: "A".into(),
                ts: 0,
                bids: vec![(bid, 1.0), (bid - 1.0, 2.0)],
                asks: vec![(ask, 1.0)],
            })
        };
        assert_eq!(check(&book(10.0, 11.0)), Ok(()));
        assert_eq!(check(&book(12.0, 11.0)), Err(Reject::CrossedQuote));
    }

    #[test]
    fn bars_are_aligned_and_close_on_the_next_period() {
        let mut b = BarBuilder::new(60);
        let s = 1_000_000_000u64;
        let t = |ts: u64, price: f64, side: Side| Trade {
            symbol: "A".into(),
            ts,
            price,
            size: 2.0,
            side,
            id: 0,
        };
        assert!(b.on_trade(&t(61 * s, 10.0, Side::Buy)).is_none());
        assert!(b.on_trade(&t(90 * s, 12.0, Side::Sell)).is_none());
        assert!(b.on_trade(&t(119 * s, 9.0, Side::Buy)).is_none());
        let bar = b.on_trade(&t(200 * s, 11.0, Side::Buy)).expect("closed");
        assert_eq!(bar.ts, 60 * s);
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close),
            (10.0, 12.0, 9.0, 9.0)
        );
        assert_eq!((bar.volume, bar.buy_volume, bar.trades), (6.0, 4.0, 3));
        // A print older than the previous one does not move the bar (the validator rejects it).
        assert!(b.on_trade(&t(199 * s, 50.0, Side::Buy)).is_none());
        let last = b.flush();
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].low, last[0].volume), (11.0, 2.0));
        assert_eq!(last[0].ts, 180 * s);
    }
}
