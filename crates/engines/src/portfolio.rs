//! The Portfolio engine: positions from fills at average cost, P&L marked to the market, fees,
//! and the equity curve of one account.
//!
//! Everything runs on event time (the data's timestamps), never the wall clock, so the same
//! fills and quotes always give the same updates (a backtest relies on this).
//!
//! # Accounting ([`Book`])
//! * A position is a signed quantity (long > 0, short < 0) and an average price. A fill in the
//!   position's direction (or into a flat position) moves the average:
//!   `avg' = (q x avg + d x p) / (q + d)` for a signed fill `d` at price `p`. A fill against
//!   it realizes `(p - avg) x closed x sign(q)` on the closed quantity `min(|d|, |q|)`; the
//!   average stays while the position only shrinks, and a fill that crosses through zero opens
//!   the rest at the fill price. A fill that closes to within `1e-12` (relative) of zero leaves
//!   the position flat, so float dust does not linger as a tiny position.
//! * Fee per fill: `|qty x price| x fee_bps / 1e4`.
//! * `cash = initial_cash - sum(signed qty x price) - fees`;
//!   `unrealized = sum(qty x (mark - avg))`; `equity = cash + sum(qty x mark)`, which equals
//!   `initial_cash + realized + unrealized - fees` (tested over random fills).
//! * Marks: a symbol's quote mid (`market_data.quote.{SYMBOL}`); before its first quote, the
//!   last fill price. A quote older than the symbol's previous quote is ignored.
//! * Executions with status `rejected` change nothing and are counted; a `filled` execution
//!   whose quantity or price is not a positive number is ignored and counted as invalid.
//! * Every symbol the account has traded stays in the book, flat ones too (quantity 0), so the
//!   per-symbol realized P&L of [`PortfolioUpdate::positions`] sums to `realized_pnl`.
//!
//! # Messages
//! * After every fill: a [`PositionChange`] on `position_change.{SYMBOL}` then a
//!   [`PortfolioUpdate`] on `portfolio_update.{account}`, both at priority normal, in one
//!   batch.
//! * Periodically: a [`PortfolioUpdate`] on the first quote of each period of
//!   `update_every_secs` seconds of data time (periods aligned to the Unix epoch), after that
//!   quote's mark, so also on the very first quote. Fills do not drive this clock.
//! * An update is stamped with the book's clock: the latest data timestamp seen (quote or fill),
//!   so update timestamps never go backwards even when the quote and execution streams (two
//!   streams of the MarketData bus, with no common order) interleave late data. A
//!   [`PositionChange`] carries its fill's own timestamp.
//! * `peak_equity` is the highest equity of all updates (starting at `initial_cash`) and
//!   `drawdown` the fraction of it lost: `(peak - equity) / peak`. Each update also appends a
//!   point to the in-memory equity curve ([`Book::equity_curve`], the last
//!   [`EQUITY_CURVE_CAP`] points).

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind, Topic};
use dualbus_model::market::Quote;
use dualbus_model::orders::{ExecStatus, Execution};
use dualbus_model::portfolio::PositionView;
use dualbus_model::portfolio::{PortfolioUpdate, PositionChange};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

const NS: u64 = 1_000_000_000;

/// Points of equity curve kept in memory (the oldest are dropped first).
pub const EQUITY_CURVE_CAP: usize = 100_000;

/// A fill closing to within this fraction of the position leaves it flat.
const FLAT_EPS: f64 = 1e-12;

/// Portfolio settings (all configurable in the engine's configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortfolioParams {
    /// Cash at the start, in quote currency.
    pub initial_cash: f64,
    /// Fee per fill, basis points of its notional.
    pub fee_bps: f64,
    /// Data-time period of the periodic `portfolio_update`, seconds.
    pub update_every_secs: u64,
    /// The account's name: the last segment of `portfolio_update.{account}`.
    pub account: String,
}

impl Default for PortfolioParams {
    fn default() -> Self {
        PortfolioParams {
            initial_cash: 100_000.0,
            fee_bps: 1.0,
            update_every_secs: 60,
            account: "main".to_string(),
        }
    }
}

impl PortfolioParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.initial_cash.is_finite() && self.initial_cash > 0.0) {
            out.push(format!(
                "initial_cash {} must be a positive number",
                self.initial_cash
            ));
        }
        if !(self.fee_bps.is_finite() && self.fee_bps >= 0.0) {
            out.push(format!(
                "fee_bps {} must be a number at least 0",
                self.fee_bps
            ));
        }
        if self.update_every_secs == 0 {
            out.push("update_every_secs 0 must be at least 1".to_string());
        }
        if Topic::new(&format!("portfolio_update.{}", self.account)).is_err()
            || self.account.contains('.')
        {
            out.push(format!(
                "account {:?} must be one topic segment: 1+ characters of A-Z, a-z, 0-9, '_', '-'",
                self.account
            ));
        }
        out
    }
}

/// One point of the equity curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EquityPoint {
    /// Timestamp of the update, Unix ns.
    pub ts: u64,
    /// Equity then.
    pub equity: f64,
}

/// What a [`Book`] has been given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookCounts {
    /// Fills applied.
    pub fills: u64,
    /// Rejected executions (ignored).
    pub rejected: u64,
    /// Filled executions with a quantity or price that is not a positive number (ignored).
    pub invalid: u64,
    /// Fills of an order already applied (a redelivery; ignored).
    #[serde(default)]
    pub duplicates: u64,
}

/// Filled order ids remembered to drop a redelivered fill (the venue fills an order once).
const FILLS_REMEMBERED: usize = 10_000;

#[derive(Clone, Debug, Default)]
struct Position {
    qty: f64,
    avg_price: f64,
    realized: f64,
}

#[derive(Clone, Copy, Debug)]
struct Mark {
    price: f64,
    ts: u64,
    from_quote: bool,
}

/// The account's book, without the bus: fills in, marks in, updates out.
#[derive(Clone, Debug)]
pub struct Book {
    params: PortfolioParams,
    positions: BTreeMap<String, Position>,
    marks: BTreeMap<String, Mark>,
    cash: f64,
    realized: f64,
    fees: f64,
    peak: f64,
    counts: BookCounts,
    curve: VecDeque<EquityPoint>,
    now: u64,
    /// Period index (`ts / update_every_secs`) of the last periodic update.
    last_period: Option<u64>,
    /// The last [`FILLS_REMEMBERED`] filled order ids, oldest first, and as a set.
    filled: VecDeque<String>,
    filled_set: std::collections::HashSet<String>,
}

impl Book {
    /// An empty book holding `initial_cash`; parameters are assumed valid
    /// ([`PortfolioParams::problems`]).
    pub fn new(params: PortfolioParams) -> Book {
        Book {
            cash: params.initial_cash,
            peak: params.initial_cash,
            params,
            positions: BTreeMap::new(),
            marks: BTreeMap::new(),
            realized: 0.0,
            fees: 0.0,
            counts: BookCounts::default(),
            curve: VecDeque::new(),
            now: 0,
            last_period: None,
            filled: VecDeque::new(),
            filled_set: Default::default(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &PortfolioParams {
        &self.params
    }

    /// Applies an execution: a fill changes its position and returns the change; a rejection
    /// or an invalid fill changes nothing (both are counted) and returns `None`.
    pub fn on_fill(&mut self, x: &Execution) -> Option<PositionChange> {
        if x.status == ExecStatus::Rejected {
            self.counts.rejected += 1;
            return None;
        }
        if !(x.qty.is_finite() && x.qty > 0.0 && x.price.is_finite() && x.price > 0.0) {
            self.counts.invalid += 1;
            return None;
        }
        if !x.order_id.is_empty() {
            if self.filled_set.contains(&x.order_id) {
                self.counts.duplicates += 1;
                return None;
            }
            self.filled_set.insert(x.order_id.clone());
            self.filled.push_back(x.order_id.clone());
            if self.filled.len() > FILLS_REMEMBERED {
                if let Some(old) = self.filled.pop_front() {
                    self.filled_set.remove(&old);
                }
            }
        }
        self.counts.fills += 1;
        self.now = self.now.max(x.ts);
        let (d, p) = (x.side.sign() * x.qty, x.price);
        let fee = (x.qty * p).abs() * self.params.fee_bps / 1e4;
        if !self.positions.contains_key(&x.symbol) {
            self.positions.insert(x.symbol.clone(), Position::default());
        }
        let pos = self.positions.get_mut(&x.symbol).expect("inserted above");
        let prev = pos.qty;
        let mut realized = 0.0;
        if prev == 0.0 || prev.signum() == d.signum() {
            let q = prev + d;
            pos.avg_price = (prev * pos.avg_price + d * p) / q;
            pos.qty = q;
        } else {
            let closed = x.qty.min(prev.abs());
            realized = (p - pos.avg_price) * closed * prev.signum();
            let left = prev.abs() - x.qty;
            if left.abs() <= FLAT_EPS * x.qty.max(prev.abs()) {
                pos.qty = 0.0;
                pos.avg_price = 0.0;
            } else if left > 0.0 {
                pos.qty = prev + d;
            } else {
                pos.qty = prev + d;
                pos.avg_price = p;
            }
        }
        pos.realized += realized;
        let (qty, avg_price) = (pos.qty, pos.avg_price);
        self.realized += realized;
        self.fees += fee;
        self.cash -= d * p + fee;
        match self.marks.get_mut(&x.symbol) {
            Some(m) if m.from_quote => {}
            Some(m) => {
                *m = Mark {
                    price: p,
                    ts: x.ts,
                    from_quote: false,
                }
            }
            None => {
                self.marks.insert(
                    x.symbol.clone(),
                    Mark {
                        price: p,
                        ts: x.ts,
                        from_quote: false,
                    },
                );
            }
        }
        Some(PositionChange {
            account: self.params.account.clone(),
            symbol: x.symbol.clone(),
            ts: x.ts,
            prev_qty: prev,
            qty,
            delta: d,
            avg_price,
            fill_price: p,
            fee,
            realized_pnl: realized,
            order_id: x.order_id.clone(),
        })
    }

    /// Marks `symbol` at `price` (a quote mid) at `ts`. A price that is not a positive number,
    /// or a mark older than the symbol's previous quote mark, is ignored.
    pub fn mark(&mut self, symbol: &str, price: f64, ts: u64) {
        if !(price.is_finite() && price > 0.0) {
            return;
        }
        let fresh = Mark {
            price,
            ts,
            from_quote: true,
        };
        match self.marks.get_mut(symbol) {
            Some(m) if m.from_quote && ts < m.ts => return,
            Some(m) => *m = fresh,
            None => {
                self.marks.insert(symbol.to_string(), fresh);
            }
        }
        self.now = self.now.max(ts);
    }

    /// A quote: marks its symbol at the mid; returns the periodic update when the quote opens
    /// a new period of `update_every_secs` (and on the first quote).
    pub fn on_quote(&mut self, q: &Quote) -> Option<PortfolioUpdate> {
        self.mark(&q.symbol, q.mid(), q.ts);
        let period = self.now / (self.params.update_every_secs * NS);
        if self.last_period.is_some_and(|last| period <= last) {
            return None;
        }
        self.last_period = Some(period);
        Some(self.update(self.now))
    }

    /// The account's state at `ts` (the book's clock if that is later), sampled: the peak
    /// equity and the equity curve take this update into account.
    pub fn update(&mut self, ts: u64) -> PortfolioUpdate {
        self.now = self.now.max(ts);
        let mut u = self.snapshot();
        self.peak = self.peak.max(u.equity);
        u.peak_equity = self.peak;
        u.drawdown = ((self.peak - u.equity) / self.peak).max(0.0);
        if self.curve.len() == EQUITY_CURVE_CAP {
            self.curve.pop_front();
        }
        self.curve.push_back(EquityPoint {
            ts: u.ts,
            equity: u.equity,
        });
        u
    }

    /// The account's state now, without sampling it (peak and drawdown as of the last update).
    pub fn snapshot(&self) -> PortfolioUpdate {
        let mut positions = Vec::with_capacity(self.positions.len());
        let (mut value, mut gross, mut unrealized) = (0.0, 0.0, 0.0);
        for (symbol, p) in &self.positions {
            let mark = self.mark_price(symbol).unwrap_or(p.avg_price);
            let upnl = p.qty * (mark - p.avg_price);
            value += p.qty * mark;
            gross += (p.qty * mark).abs();
            unrealized += upnl;
            positions.push(PositionView {
                symbol: symbol.clone(),
                qty: p.qty,
                avg_price: p.avg_price,
                mark,
                unrealized_pnl: upnl,
                realized_pnl: p.realized,
            });
        }
        let equity = self.cash + value;
        PortfolioUpdate {
            account: self.params.account.clone(),
            ts: self.now,
            equity,
            cash: self.cash,
            realized_pnl: self.realized,
            unrealized_pnl: unrealized,
            fees: self.fees,
            gross_exposure: gross,
            net_exposure: value,
            peak_equity: self.peak,
            drawdown: ((self.peak - equity) / self.peak).max(0.0),
            fills: self.counts.fills,
            positions,
        }
    }

    /// Equity now: `cash + sum(qty x mark)`.
    pub fn equity(&self) -> f64 {
        self.cash
            + self
                .positions
                .iter()
                .map(|(s, p)| p.qty * self.mark_price(s).unwrap_or(p.avg_price))
                .sum::<f64>()
    }

    /// Cash now.
    pub fn cash(&self) -> f64 {
        self.cash
    }

    /// Realized P&L so far.
    pub fn realized_pnl(&self) -> f64 {
        self.realized
    }

    /// Unrealized P&L at the current marks.
    pub fn unrealized_pnl(&self) -> f64 {
        self.positions
            .iter()
            .map(|(s, p)| p.qty * (self.mark_price(s).unwrap_or(p.avg_price) - p.avg_price))
            .sum()
    }

    /// Fees paid so far.
    pub fn fees(&self) -> f64 {
        self.fees
    }

    /// The signed quantity held in `symbol` (0 when none).
    pub fn qty(&self, symbol: &str) -> f64 {
        self.positions.get(symbol).map_or(0.0, |p| p.qty)
    }

    /// The average price of `symbol`'s position (0 when flat or never traded).
    pub fn avg_price(&self, symbol: &str) -> f64 {
        self.positions.get(symbol).map_or(0.0, |p| p.avg_price)
    }

    /// `symbol`'s mark: its latest quote mid, else its last fill price, else `None`.
    pub fn mark_price(&self, symbol: &str) -> Option<f64> {
        self.marks.get(symbol).map(|m| m.price)
    }

    /// Positions that are not flat.
    pub fn open_positions(&self) -> usize {
        self.positions.values().filter(|p| p.qty != 0.0).count()
    }

    /// What the book has been given.
    pub fn counts(&self) -> BookCounts {
        self.counts
    }

    /// The book's clock: the latest data timestamp seen, Unix ns.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The equity of every update so far (the last [`EQUITY_CURVE_CAP`]), oldest first.
    pub fn equity_curve(&self) -> &VecDeque<EquityPoint> {
        &self.curve
    }
}

/// The Portfolio engine (`portfolio`): reads `trade_execution.>` and `market_data.quote.>`,
/// publishes `position_change.{SYMBOL}` and `portfolio_update.{account}` (priority normal).
/// Configuration: [`PortfolioParams`].
pub struct PortfolioEngine {
    book: Book,
    published: u64,
}

impl Default for PortfolioEngine {
    fn default() -> Self {
        PortfolioEngine::new(PortfolioParams::default())
    }
}

impl PortfolioEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: PortfolioParams) -> PortfolioEngine {
        PortfolioEngine {
            book: Book::new(params),
            published: 0,
        }
    }

    /// The account's book.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The equity curve: one point per `portfolio_update`, oldest first.
    pub fn equity_curve(&self) -> &VecDeque<EquityPoint> {
        self.book.equity_curve()
    }

    fn update_envelope(
        &self,
        ctx: &EngineContext,
        u: &PortfolioUpdate,
    ) -> Result<Envelope, dualbus_bus::BusError> {
        ctx.set_equity(u.equity);
        ctx.envelope(u)
    }
}

#[async_trait]
impl Engine for PortfolioEngine {
    fn name(&self) -> &'static str {
        "portfolio"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::PortfolioUpdate, EventKind::PositionChange]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&[
            "trade_execution.>",
            "market_data.quote.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.book = Book::new(ctx.settings()?);
        }
        EngineError::check("portfolio", self.book.params().problems())?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let mut out = Vec::new();
        if msg.kind == EventKind::TradeExecution {
            let x: Execution = msg.decode()?;
            let invalid = self.book.counts().invalid;
            match self.book.on_fill(&x) {
                Some(change) => {
                    let u = self.book.update(change.ts);
                    match ctx.envelope(&change) {
                        Ok(env) => out.push(env),
                        Err(e) => tracing::warn!(error = %e, "position change not published"),
                    }
                    match self.update_envelope(ctx, &u) {
                        Ok(env) => out.push(env),
                        Err(e) => tracing::warn!(error = %e, "portfolio update not published"),
                    }
                }
                None if self.book.counts().invalid > invalid => {
                    tracing::warn!(order = %x.order_id, qty = x.qty, price = x.price,
                        "filled execution without a positive quantity and price ignored");
                }
                None => {}
            }
        } else if msg.topic.as_str().starts_with("market_data.quote.") {
            let q: Quote = msg.decode()?;
            if let Some(u) = self.book.on_quote(&q) {
                match self.update_envelope(ctx, &u) {
                    Ok(env) => out.push(env),
                    Err(e) => tracing::warn!(error = %e, "portfolio update not published"),
                }
            }
        }
        if !out.is_empty() {
            let n = out.len() as u64;
            // The fill is applied now; a failed publish is logged, not retried (a redelivery
            // would apply the fill twice).
            match ctx.publish_batch(out).await {
                Ok(()) => self.published += n,
                Err(e) => tracing::warn!(error = %e, "portfolio messages not published"),
            }
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let c = self.book.counts();
        serde_json::json!({
            "account": self.book.params().account,
            "equity": self.book.equity(),
            "fills": c.fills,
            "rejected": c.rejected,
            "invalid": c.invalid,
            "positions": self.book.open_positions(),
            "published": self.published,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::market::Side;

    const S: u64 = NS;

    fn fill(side: Side, qty: f64, price: f64, ts: u64) -> Execution {
        fill_of("X", side, qty, price, ts)
    }

    fn fill_of(symbol: &str, side: Side, qty: f64, price: f64, ts: u64) -> Execution {
        // A new order id per fill: the book drops a second fill of one order.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Execution {
            order_id: format!("o{n}"),
            symbol: symbol.into(),
            side,
            qty,
            price,
            status: ExecStatus::Filled,
            reason: None,
            liquidity: Some("taker".into()),
            ts,
        }
    }

    fn quote(symbol: &str, bid: f64, ask: f64, ts: u64) -> Quote {
        Quote {
            symbol: symbol.into(),
            ts,
            bid,
            ask,
            bid_size: 1.0,
            ask_size: 1.0,
        }
    }

    fn no_fees() -> PortfolioParams {
        PortfolioParams {
            fee_bps: 0.0,
            ..Default::default()
        }
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn average_cost_realizes_on_reductions_and_crosses_through_zero() {
        let mut b = Book::new(no_fees());
        b.on_fill(&fill(Side::Buy, 2.0, 100.0, S)).unwrap();
        let c = b.on_fill(&fill(Side::Buy, 1.0, 130.0, 2 * S)).unwrap();
        // (2 x 100 + 1 x 130) / 3 = 110.
        assert_eq!((c.prev_qty, c.qty, c.delta), (2.0, 3.0, 1.0));
        assert!(near(c.avg_price, 110.0), "{c:?}");
        assert_eq!(c.realized_pnl, 0.0);
        // Sell 2 @120: (120 - 110) x 2 = 20; 1 left at 110.
        let c = b.on_fill(&fill(Side::Sell, 2.0, 120.0, 3 * S)).unwrap();
        assert!(near(c.realized_pnl, 20.0), "{c:?}");
        assert_eq!(c.qty, 1.0);
        assert!(near(c.avg_price, 110.0));
        // Sell 3 @90: closes 1 at (90 - 110) = -20, opens -2 at 90.
        let c = b.on_fill(&fill(Side::Sell, 3.0, 90.0, 4 * S)).unwrap();
        assert!(near(c.realized_pnl, -20.0), "{c:?}");
        assert_eq!(
            (c.prev_qty, c.qty, c.delta, c.avg_price),
            (1.0, -2.0, -3.0, 90.0)
        );
        assert!(near(b.realized_pnl(), 0.0));
        // Short side: sell 2 more @80 -> -4 @85; buy 1 @70 realizes (70 - 85) x 1 x -1 = 15.
        let c = b.on_fill(&fill(Side::Sell, 2.0, 80.0, 5 * S)).unwrap();
        assert!(near(c.avg_price, 85.0), "{c:?}");
        let c = b.on_fill(&fill(Side::Buy, 1.0, 70.0, 6 * S)).unwrap();
        assert!(near(c.realized_pnl, 15.0), "{c:?}");
        assert_eq!((c.qty, c.avg_price), (-3.0, 85.0));
        // Buy 3 @85 closes exactly: flat, average 0, nothing realized.
        let c = b.on_fill(&fill(Side::Buy, 3.0, 85.0, 7 * S)).unwrap();
        assert_eq!((c.qty, c.avg_price, c.realized_pnl), (0.0, 0.0, 0.0));
        assert!(near(b.realized_pnl(), 15.0));
        assert_eq!(b.open_positions(), 0);
        // Cash: -200 - 130 + 240 + 270 + 160 - 70 - 255 = 15.
        assert!(near(b.cash(), 100_015.0), "{}", b.cash());
        assert!(near(b.equity(), 100_015.0));
    }

    #[test]
    fn float_dust_closes_flat() {
        let mut b = Book::new(no_fees());
        b.on_fill(&fill(Side::Buy, 0.1, 100.0, S));
        b.on_fill(&fill(Side::Buy, 0.2, 100.0, S));
        // 0.1 + 0.2 = 0.30000000000000004; selling 0.3 leaves it flat, not at 4e-17.
        let c = b.on_fill(&fill(Side::Sell, 0.3, 101.0, S)).unwrap();
        assert_eq!((c.qty, c.avg_price), (0.0, 0.0));
        assert!(near(c.realized_pnl, 0.3), "{c:?}");
    }

    #[test]
    fn fees_are_basis_points_of_the_notional_and_come_out_of_cash() {
        let mut b = Book::new(PortfolioParams {
            fee_bps: 2.5,
            ..Default::default()
        });
        // 2 x 100 x 2.5 / 1e4 = 0.05; 1 x 120 x 2.5 / 1e4 = 0.03.
        let c = b.on_fill(&fill(Side::Buy, 2.0, 100.0, S)).unwrap();
        assert!(near(c.fee, 0.05), "{c:?}");
        let c = b.on_fill(&fill(Side::Sell, 1.0, 120.0, 2 * S)).unwrap();
        assert!(near(c.fee, 0.03), "{c:?}");
        assert!(near(b.fees(), 0.08));
        // Fees do not move the average or the realized P&L.
        assert!(near(c.realized_pnl, 20.0) && near(c.avg_price, 100.0));
        // cash = 100000 - 200 + 120 - 0.08; mark = last fill 120: equity = cash + 120.
        assert!(near(b.cash(), 99_919.92), "{}", b.cash());
        assert!(near(b.equity(), 100_039.92));
        assert!(near(b.equity(), 100_000.0 + 20.0 + 20.0 - 0.08));
    }

    #[test]
    fn marks_are_quote_mids_and_fill_prices_before_any_quote() {
        let mut b = Book::new(no_fees());
        b.on_fill(&fill(Side::Buy, 2.0, 100.0, S));
        assert_eq!(b.mark_price("X"), Some(100.0));
        b.on_fill(&fill(Side::Buy, 2.0, 104.0, 2 * S));
        assert_eq!(b.mark_price("X"), Some(104.0), "the last fill price");
        assert!(near(b.unrealized_pnl(), 4.0 * (104.0 - 102.0)));
        b.on_quote(&quote("X", 109.0, 111.0, 3 * S));
        assert_eq!(b.mark_price("X"), Some(110.0));
        // After a quote, fills no longer move the mark, and an older quote is ignored.
        b.on_fill(&fill(Side::Buy, 1.0, 95.0, 4 * S));
        assert_eq!(b.mark_price("X"), Some(110.0));
        b.on_quote(&quote("X", 90.0, 92.0, 2 * S));
        assert_eq!(b.mark_price("X"), Some(110.0));
        // 5 @ (200 + 208 + 95) / 5 = 100.6, marked at 110.
        let u = b.update(5 * S);
        let p = &u.positions[0];
        assert!(
            near(p.avg_price, 100.6) && near(p.unrealized_pnl, 5.0 * 9.4),
            "{p:?}"
        );
        assert!(near(u.gross_exposure, 550.0) && near(u.net_exposure, 550.0));
        assert!(near(u.equity, 100_000.0 + 47.0), "{u:?}");
        // A quote for a symbol never traded is remembered and marks its first fill.
        b.on_quote(&quote("Y", 49.0, 51.0, 6 * S));
        b.on_fill(&fill_of("Y", Side::Sell, 2.0, 49.0, 7 * S));
        assert_eq!(b.mark_price("Y"), Some(50.0));
        let u = b.update(7 * S);
        assert!(near(u.net_exposure, 550.0 - 100.0) && near(u.gross_exposure, 650.0));
        assert!(near(u.unrealized_pnl, 47.0 - 2.0), "{u:?}");
    }

    #[test]
    fn rejections_and_invalid_fills_change_nothing_but_are_counted() {
        let mut b = Book::new(PortfolioParams::default());
        let mut r = fill(Side::Buy, 0.0, 0.0, S);
        r.status = ExecStatus::Rejected;
        r.reason = Some("no quote".into());
        assert!(b.on_fill(&r).is_none());
        assert!(b.on_fill(&fill(Side::Buy, -1.0, 100.0, S)).is_none());
        assert!(b.on_fill(&fill(Side::Buy, 1.0, f64::NAN, S)).is_none());
        assert_eq!(
            b.counts(),
            BookCounts {
                fills: 0,
                rejected: 1,
                invalid: 2,
                duplicates: 0
            }
        );
        let u = b.update(S);
        assert_eq!((u.equity, u.cash, u.fills), (100_000.0, 100_000.0, 0));
        assert!(u.positions.is_empty());
    }

    #[test]
    fn a_redelivered_fill_is_applied_once() {
        let mut b = Book::new(PortfolioParams::default());
        let x = fill(Side::Buy, 2.0, 100.0, S);
        assert!(b.on_fill(&x).is_some());
        assert!(b.on_fill(&x).is_none(), "the same order's fill again");
        assert_eq!(b.qty("X"), 2.0);
        assert_eq!((b.counts().fills, b.counts().duplicates), (1, 1));
    }

    #[test]
    fn periodic_updates_follow_quote_time_and_drawdown_follows_the_peak() {
        let mut b = Book::new(no_fees());
        let m = 60 * S;
        assert!(
            b.on_quote(&quote("X", 99.0, 101.0, 10 * m + S)).is_some(),
            "first quote"
        );
        assert!(b
            .on_quote(&quote("X", 99.0, 101.0, 10 * m + 59 * S))
            .is_none());
        b.on_fill(&fill(Side::Buy, 10.0, 100.0, 10 * m + 59 * S));
        // Mark 110: equity 100100, a new peak.
        let u = b
            .on_quote(&quote("X", 109.0, 111.0, 11 * m))
            .expect("new period");
        assert_eq!(u.ts, 11 * m);
        assert!(near(u.equity, 100_100.0) && near(u.peak_equity, 100_100.0));
        assert_eq!(u.drawdown, 0.0);
        assert!(b
            .on_quote(&quote("X", 89.0, 91.0, 11 * m + 30 * S))
            .is_none());
        // A gap of several periods gives one update.
        let u = b
            .on_quote(&quote("X", 89.0, 91.0, 15 * m + S))
            .expect("new period");
        // Equity 99900: 200 below the 100100 peak.
        assert!(near(u.equity, 99_900.0) && near(u.peak_equity, 100_100.0));
        assert!(near(u.drawdown, 200.0 / 100_100.0), "{u:?}");
        let curve: Vec<u64> = b.equity_curve().iter().map(|p| p.ts).collect();
        assert_eq!(curve, vec![10 * m + S, 11 * m, 15 * m + S]);
        // The clock never goes back: an update asked for an older time is stamped now.
        assert_eq!(b.update(S).ts, 15 * m + S);
    }

    #[test]
    fn the_equity_curve_is_capped() {
        let mut b = Book::new(no_fees());
        for i in 0..EQUITY_CURVE_CAP as u64 + 10 {
            b.update(i);
        }
        let c = b.equity_curve();
        assert_eq!(c.len(), EQUITY_CURVE_CAP);
        assert_eq!(c.front().unwrap().ts, 10);
    }

    /// SplitMix64: a tiny deterministic generator for the tests.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn equity_identity_holds_over_random_fills_and_marks() {
        let mut rng = Rng(20_240_601);
        let mut b = Book::new(PortfolioParams {
            fee_bps: 3.0,
            ..Default::default()
        });
        let symbols = ["A", "B", "C"];
        let mut prices = [100.0, 2_000.0, 0.5];
        let mut crossings = 0;
        for i in 0..1000u64 {
            let k = (rng.next_u64() % 3) as usize;
            prices[k] *= 1.0 + (rng.uniform() - 0.5) * 0.02;
            let ts = i * S;
            if rng.uniform() < 0.4 {
                let p = prices[k];
                b.on_quote(&quote(symbols[k], p * 0.9995, p * 1.0005, ts));
            }
            let held = b.qty(symbols[k]);
            let r = rng.uniform();
            let (side, qty) = if held != 0.0 && r < 0.4 {
                // Against the position: reduce it, close it exactly, or cross through zero.
                let side = if held > 0.0 { Side::Sell } else { Side::Buy };
                let f = if r < 0.05 {
                    1.0
                } else {
                    0.3 + rng.uniform() * 1.7
                };
                (side, held.abs() * f)
            } else {
                let side = if rng.uniform() < 0.5 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                // Notionals from 1 to 500.
                (side, (rng.uniform() * 5.0 + 0.01) * 100.0 / prices[k])
            };
            let c = b
                .on_fill(&fill_of(symbols[k], side, qty, prices[k], ts))
                .unwrap();
            if c.prev_qty * c.qty < 0.0 {
                crossings += 1;
            }
            let u = b.update(ts);
            let identity = b.params().initial_cash + u.realized_pnl + u.unrealized_pnl - u.fees;
            let tol = 1e-6 * u.equity.abs().max(identity.abs());
            assert!(
                (u.equity - identity).abs() <= tol,
                "fill {i}: equity {} != {identity}",
                u.equity
            );
            let by_symbol: f64 = u.positions.iter().map(|p| p.realized_pnl).sum();
            assert!((by_symbol - u.realized_pnl).abs() <= tol);
            let value: f64 = u.positions.iter().map(|p| p.qty * p.mark).sum();
            assert!((u.cash + value - u.equity).abs() <= tol);
        }
        assert!(crossings > 50, "only {crossings} fills crossed zero");
        assert!(b.realized_pnl() != 0.0 && b.unrealized_pnl() != 0.0);
        assert_eq!(b.counts().fills, 1000);
    }

    #[test]
    fn bad_parameters_are_named() {
        let p = PortfolioParams {
            initial_cash: -1.0,
            fee_bps: f64::NAN,
            update_every_secs: 0,
            account: "a.b".into(),
        };
        let all = p.problems().join("; ");
        for needle in [
            "initial_cash -1",
            "fee_bps NaN",
            "update_every_secs 0",
            "account \"a.b\"",
        ] {
            assert!(all.contains(needle), "{all}");
        }
        assert!(PortfolioParams::default().problems().is_empty());
        let e = serde_json::from_str::<PortfolioParams>(r#"{"fees_bps": 1}"#).unwrap_err();
        assert!(e.to_string().contains("fees_bps"), "{e}");
    }
}
