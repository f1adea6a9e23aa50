//! Tearsheet: what a trader reads after a backtest, beyond the Analytics engine's figures: the
//! trade log, round trips won and lost, exposure over time and a buy-and-hold benchmark. It is
//! computed from the Portfolio engine's output (`position_change`, `portfolio_update`) and
//! the prices of the data, so the same data gives the same tearsheet.
//!
//! * **Trade log** ([`TradeLogEntry`]): one entry per fill, from its `position_change`: time
//!   (ISO 8601, UTC), symbol, side, quantity, price, fee, and the P&L the fill realized
//!   (before fees).
//! * **Round trips** ([`RoundTrips`]): per symbol, a round trip opens when the position leaves
//!   flat and closes when it is flat again, or when a fill takes it through zero (that fill
//!   closes one round trip and opens the next with the rest, its fee split between them by
//!   quantity). A round trip's P&L is the P&L its fills realized minus their fees. A **win**
//!   made money, a **loss** lost some, a round trip with exactly 0 is neither; average win and
//!   average loss are over those. A round trip still open at the end is counted as `open`,
//!   not as won or lost. (The Analytics engine's `hit_rate` counts closing fills instead.)
//! * **Exposure** ([`Exposure`]): the gross notional held (`sum |qty x mark|`, the
//!   `gross_exposure` of each `portfolio_update`), as a step function of data time (each
//!   update holds until the next, the last until the end of the data): its time-weighted
//!   average, its maximum, and the share of time it was above zero ("in the market").
//! * **Buy and hold** ([`BuyAndHold`]): per symbol, the return of holding it from its first
//!   price in the data to its last (trade prices; quote mids for a symbol without trades), and
//!   the benchmark: the equal-weight mean of those returns over the symbols the strategy
//!   traded (over every symbol of the data when it traded none).

use dualbus_model::portfolio::PositionChange;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One fill of the trade log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TradeLogEntry {
    /// Data time of the fill, ISO 8601 in UTC (`2026-01-05T00:34:00.100Z`).
    pub time: String,
    /// Data time of the fill, Unix ns.
    pub ts: u64,
    /// Instrument.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    /// Quantity filled (positive).
    pub qty: f64,
    /// Fill price.
    pub price: f64,
    /// Fee paid on the fill.
    pub fee: f64,
    /// P&L the fill realized, before fees (0 for a fill that only opens or adds).
    pub realized_pnl: f64,
}

impl From<&PositionChange> for TradeLogEntry {
    fn from(c: &PositionChange) -> Self {
        TradeLogEntry {
            time: iso8601(c.ts),
            ts: c.ts,
            symbol: c.symbol.clone(),
            side: if c.delta >= 0.0 { "buy" } else { "sell" }.to_string(),
            qty: c.delta.abs(),
            price: c.fill_price,
            fee: c.fee,
            realized_pnl: c.realized_pnl,
        }
    }
}

/// Round trips won and lost (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundTrips {
    /// Round trips closed.
    pub closed: u64,
    /// Closed with a profit (after fees).
    pub wins: u64,
    /// Closed with a loss (after fees).
    pub losses: u64,
    /// Still open at the end (not counted as won or lost).
    pub open: u64,
    /// `wins / (wins + losses)`; `None` before one.
    pub win_rate: Option<f64>,
    /// Mean P&L of the wins.
    pub avg_win: Option<f64>,
    /// Mean P&L of the losses (negative).
    pub avg_loss: Option<f64>,
    /// Sum of the wins over minus the sum of the losses; `None` without a loss.
    pub profit_factor: Option<f64>,
}

/// Builds [`RoundTrips`] from the position changes, in order.
#[derive(Clone, Debug, Default)]
pub struct RoundTripTracker {
    /// P&L so far of each symbol's open round trip.
    open: BTreeMap<String, f64>,
    /// P&L of each closed round trip, in closing order.
    closed: Vec<f64>,
}

impl RoundTripTracker {
    /// One fill's effect on one position.
    pub fn on_change(&mut self, c: &PositionChange) {
        let (prev, now) = (c.prev_qty, c.qty);
        let crosses = prev != 0.0 && now != 0.0 && prev.signum() != now.signum();
        if prev == 0.0 {
            if now != 0.0 {
                self.open.insert(c.symbol.clone(), c.realized_pnl - c.fee);
            }
            return;
        }
        // Part of the fee that belongs to the closing side of a fill through zero.
        let closing_fee = if crosses {
            c.fee * prev.abs() / (prev.abs() + now.abs())
        } else {
            c.fee
        };
        let trip = self.open.entry(c.symbol.clone()).or_default();
        *trip += c.realized_pnl - closing_fee;
        if now == 0.0 || crosses {
            let pnl = *trip;
            self.closed.push(pnl);
            self.open.remove(&c.symbol);
            if crosses {
                self.open.insert(c.symbol.clone(), -(c.fee - closing_fee));
            }
        }
    }

    /// P&L of each closed round trip, in closing order.
    pub fn closed(&self) -> &[f64] {
        &self.closed
    }

    /// The statistics so far.
    pub fn summary(&self) -> RoundTrips {
        let wins: Vec<f64> = self.closed.iter().copied().filter(|p| *p > 0.0).collect();
        let losses: Vec<f64> = self.closed.iter().copied().filter(|p| *p < 0.0).collect();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let decided = wins.len() + losses.len();
        let lost: f64 = losses.iter().sum();
        RoundTrips {
            closed: self.closed.len() as u64,
            wins: wins.len() as u64,
            losses: losses.len() as u64,
            open: self.open.len() as u64,
            win_rate: (decided > 0).then(|| wins.len() as f64 / decided as f64),
            avg_win: mean(&wins),
            avg_loss: mean(&losses),
            profit_factor: (lost < 0.0).then(|| wins.iter().sum::<f64>() / -lost),
        }
    }
}

/// Gross notional held over time (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Time-weighted average gross notional, quote currency.
    pub avg_gross: f64,
    /// Largest gross notional of any update.
    pub max_gross: f64,
    /// Share of data time with a gross notional above zero, percent.
    pub time_in_market_pct: f64,
}

/// Exposure of `points` (data time in Unix ns, gross notional; in time order), each holding
/// until the next and the last until `end_ts`.
pub fn exposure(points: &[(u64, f64)], end_ts: u64) -> Exposure {
    let Some(&(start, _)) = points.first() else {
        return Exposure::default();
    };
    let (mut weighted, mut in_market) = (0.0, 0u64);
    let mut max_gross: f64 = 0.0;
    for (i, &(ts, gross)) in points.iter().enumerate() {
        let until = points.get(i + 1).map(|p| p.0).unwrap_or(end_ts).max(ts);
        let held = until - ts;
        weighted += gross * held as f64;
        if gross > 0.0 {
            in_market += held;
        }
        max_gross = max_gross.max(gross);
    }
    let span = end_ts.saturating_sub(start);
    Exposure {
        avg_gross: if span > 0 {
            weighted / span as f64
        } else {
            points.last().map(|p| p.1).unwrap_or(0.0)
        },
        max_gross,
        time_in_market_pct: if span > 0 {
            in_market as f64 / span as f64 * 100.0
        } else {
            0.0
        },
    }
}

/// One symbol's first and last price in the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldingReturn {
    /// Data time of the first price, Unix ns.
    pub first_ts: u64,
    /// The first price.
    pub first_price: f64,
    /// Data time of the last price, Unix ns.
    pub last_ts: u64,
    /// The last price.
    pub last_price: f64,
    /// `(last_price / first_price - 1) x 100`.
    pub return_pct: f64,
}

/// The buy-and-hold benchmark (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuyAndHold {
    /// The symbols the benchmark holds, equally weighted.
    pub symbols: Vec<String>,
    /// Mean of their `return_pct`, percent.
    pub return_pct: f64,
    /// Every symbol of the data.
    pub by_symbol: BTreeMap<String, HoldingReturn>,
}

/// The benchmark from `(symbol, first ts, first price, last ts, last price)` per symbol of the
/// data, holding the `traded` symbols (every symbol when `traded` is empty).
pub fn buy_and_hold(prices: &[(String, u64, f64, u64, f64)], traded: &[String]) -> BuyAndHold {
    let by_symbol: BTreeMap<String, HoldingReturn> = prices
        .iter()
        .filter(|p| p.2 > 0.0)
        .map(|(s, t0, p0, t1, p1)| {
            (
                s.clone(),
                HoldingReturn {
                    first_ts: *t0,
                    first_price: *p0,
                    last_ts: *t1,
                    last_price: *p1,
                    return_pct: (p1 / p0 - 1.0) * 100.0,
                },
            )
        })
        .collect();
    let symbols: Vec<String> = if traded.is_empty() {
        by_symbol.keys().cloned().collect()
    } else {
        traded
            .iter()
            .filter(|s| by_symbol.contains_key(*s))
            .cloned()
            .collect()
    };
    let return_pct = if symbols.is_empty() {
        0.0
    } else {
        symbols.iter().map(|s| by_symbol[s].return_pct).sum::<f64>() / symbols.len() as f64
    };
    BuyAndHold {
        symbols,
        return_pct,
        by_symbol,
    }
}

/// Unix nanoseconds as ISO 8601 in UTC with milliseconds: `2021-01-08T00:00:00.123Z`.
pub fn iso8601(ts: u64) -> String {
    let secs = ts / 1_000_000_000;
    let ms = (ts % 1_000_000_000) / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(
        symbol: &str,
        prev: f64,
        qty: f64,
        price: f64,
        fee: f64,
        realized: f64,
    ) -> PositionChange {
        PositionChange {
            account: "paper".into(),
            symbol: symbol.into(),
            ts: 1_610_064_000_000_000_000,
            prev_qty: prev,
            qty,
            delta: qty - prev,
            avg_price: price,
            fill_price: price,
            fee,
            realized_pnl: realized,
            order_id: "o".into(),
        }
    }

    #[test]
    fn round_trips_from_flat_to_flat_and_through_zero() {
        let mut t = RoundTripTracker::default();
        // BTC: buy 2 (fee 1), sell 1 realizing +10 (fee 1), sell 1 realizing +4 (fee 1):
        // one round trip of 10 + 4 - 3 = 11, a win.
        t.on_change(&change("BTC", 0.0, 2.0, 100.0, 1.0, 0.0));
        t.on_change(&change("BTC", 2.0, 1.0, 110.0, 1.0, 10.0));
        t.on_change(&change("BTC", 1.0, 0.0, 104.0, 1.0, 4.0));
        // ETH: buy 1 (fee 0.5), sell 3 through zero realizing -6 with fee 3: a third of the
        // fee (1 of the 3 units closes the long) goes to it: -6 - 0.5 - 1 = -7.5, a loss; the
        // short of 2 opens with the other 2 of fee and stays open.
        t.on_change(&change("ETH", 0.0, 1.0, 50.0, 0.5, 0.0));
        t.on_change(&change("ETH", 1.0, -2.0, 44.0, 3.0, -6.0));
        // SOL: buy then sell at the same price without fees: 0, neither won nor lost.
        t.on_change(&change("SOL", 0.0, 1.0, 10.0, 0.0, 0.0));
        t.on_change(&change("SOL", 1.0, 0.0, 10.0, 0.0, 0.0));
        assert_eq!(t.closed(), &[11.0, -7.5, 0.0]);
        let s = t.summary();
        assert_eq!((s.closed, s.wins, s.losses, s.open), (3, 1, 1, 1));
        assert_eq!(s.win_rate, Some(0.5));
        assert_eq!(s.avg_win, Some(11.0));
        assert_eq!(s.avg_loss, Some(-7.5));
        assert!((s.profit_factor.unwrap() - 11.0 / 7.5).abs() < 1e-12);
        // The open ETH short carries its share of the fee: covering it at no P&L or fee
        // closes a loss of exactly 2.
        t.on_change(&change("ETH", -2.0, 0.0, 44.0, 0.0, 0.0));
        assert_eq!(t.closed().last(), Some(&-2.0));
        assert_eq!(t.summary().open, 0);
    }

    #[test]
    fn exposure_is_time_weighted() {
        // 0 for 10 s, 1,000 for 20 s, 500 for 10 s, then 0 until the end at 50 s.
        let s = 1_000_000_000;
        let pts = [(0, 0.0), (10 * s, 1_000.0), (30 * s, 500.0), (40 * s, 0.0)];
        let e = exposure(&pts, 50 * s);
        assert!((e.avg_gross - (1_000.0 * 20.0 + 500.0 * 10.0) / 50.0).abs() < 1e-9);
        assert_eq!(e.max_gross, 1_000.0);
        assert!((e.time_in_market_pct - 60.0).abs() < 1e-9);
        assert_eq!(exposure(&[], 5), Exposure::default());
    }

    #[test]
    fn buy_and_hold_of_the_traded_symbols() {
        let prices = vec![
            ("BTC".to_string(), 1, 100.0, 9, 110.0),
            ("ETH".to_string(), 2, 50.0, 8, 45.0),
            ("SOL".to_string(), 3, 10.0, 7, 30.0),
        ];
        let b = buy_and_hold(&prices, &["BTC".to_string(), "ETH".to_string()]);
        assert_eq!(b.symbols, ["BTC", "ETH"]);
        assert!((b.return_pct - 0.0).abs() < 1e-9, "(10% - 10%) / 2"); // +10% and -10%
        assert!((b.by_symbol["SOL"].return_pct - 200.0).abs() < 1e-9);
        let all = buy_and_hold(&prices, &[]);
        assert!((all.return_pct - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn trade_log_times_are_iso_8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(1_610_064_000_123_456_789),
            "2021-01-08T00:00:00.123Z"
        );
        assert_eq!(
            iso8601(1_709_164_799_000_000_000),
            "2024-02-28T23:59:59.000Z"
        );
        assert_eq!(
            iso8601(1_709_251_200_000_000_000),
            "2024-03-01T00:00:00.000Z"
        );
        let e = TradeLogEntry::from(&change("BTC", 2.0, 0.5, 100.0, 0.2, 3.0));
        assert_eq!((e.side.as_str(), e.qty, e.fee), ("sell", 1.5, 0.2));
    }
}
