//! The paper venue inside the hub: fills `order_request`s against the latest quote.
//!
//! * A market order fills at once at the touch (a buy at the ask, a sell at the bid), moved
//!   against the trader by `slippage_bps`.
//! * A limit order that is marketable on arrival fills at once the same way, touch plus
//!   slippage, but never worse than its limit; otherwise it rests and fills at its limit price
//!   as soon as a quote crosses it (ask at or below a buy limit, bid at or above a sell limit).
//! * An order that would fill on arrival is rejected when the symbol's quote is older than
//!   `max_quote_age_ms` of data time (the venue's clock: the latest event it has seen).
//! * Orders for unknown symbols, with a quantity that is not a positive finite number, with a
//!   missing or bad limit price, or for a symbol that has no quote yet are rejected with the
//!   reason.
//!
//! This is a simplified venue: fills take the whole quantity (no queue position, no partial
//! fills against the quoted size), and fees are left to the portfolio. A fill on arrival is
//! stamped with the venue's data time when the order arrives (never before the order, nor
//! before its quote); a resting order's fill with the time of the quote that crossed it. Both
//! are data time, so a replay in lockstep gives the same fills every time.

use dualbus_model::market::{Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest, OrderType};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Venue settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VenueOptions {
    /// Slippage of orders that fill on arrival (market orders and marketable limit orders),
    /// basis points against the trader; a limit order never fills worse than its limit.
    pub slippage_bps: f64,
    /// An order that would fill on arrival is rejected when the symbol's latest quote is
    /// older than this, in milliseconds of data time (the venue's clock: the latest trade or
    /// quote of any symbol it has seen). 0: no limit.
    pub max_quote_age_ms: u64,
    /// The engines whose `order_request`s the venue takes (the envelope's `src`); an order
    /// from any other is refused and dead-lettered. On Redis with `dualbus redis up`'s ACLs
    /// only these engines' users can write the `order_request` stream at all.
    pub order_senders: Vec<String>,
}

impl Default for VenueOptions {
    fn default() -> Self {
        VenueOptions {
            slippage_bps: 1.0,
            max_quote_age_ms: 60_000,
            order_senders: vec!["risk".to_string()],
        }
    }
}

/// Counters of the venue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueCounts {
    /// Orders received.
    pub orders: u64,
    /// Orders filled.
    pub fills: u64,
    /// Orders rejected.
    pub rejects: u64,
    /// Limit orders resting now.
    pub resting: u64,
    /// Orders refused because their sender is not one of `order_senders` (each message
    /// once, however often it is redelivered).
    pub foreign: u64,
}

/// A simulated venue: the latest quote per symbol and the resting limit orders.
#[derive(Debug, Default)]
pub struct PaperVenue {
    opts: VenueOptions,
    symbols: HashSet<String>,
    quotes: HashMap<String, Quote>,
    resting: Vec<OrderRequest>,
    counts: VenueCounts,
    last_ts: u64,
    /// Ids of the foreign orders counted (bounded: cleared past `MAX_REMEMBERED`).
    foreign_ids: HashSet<String>,
}

/// Foreign order ids remembered so that a redelivery is not counted twice.
const MAX_REMEMBERED: usize = 4096;

impl PaperVenue {
    /// A venue trading `symbols`.
    pub fn new(opts: VenueOptions, symbols: impl IntoIterator<Item = String>) -> PaperVenue {
        PaperVenue {
            opts,
            symbols: symbols.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Adds a tradable symbol.
    pub fn list(&mut self, symbol: &str) {
        if !self.symbols.contains(symbol) {
            self.symbols.insert(symbol.to_string());
        }
    }

    /// Counters.
    pub fn counts(&self) -> VenueCounts {
        VenueCounts {
            resting: self.resting.len() as u64,
            ..self.counts
        }
    }

    fn reject(&mut self, o: &OrderRequest, reason: String) -> Execution {
        self.counts.rejects += 1;
        Execution {
            order_id: o.order_id.clone(),
            symbol: o.symbol.clone(),
            side: o.side,
            qty: 0.0,
            price: 0.0,
            status: ExecStatus::Rejected,
            reason: Some(reason),
            liquidity: None,
            ts: self.last_ts,
        }
    }

    fn fill(&mut self, o: &OrderRequest, price: f64, ts: u64, liquidity: &str) -> Execution {
        self.counts.fills += 1;
        Execution {
            order_id: o.order_id.clone(),
            symbol: o.symbol.clone(),
            side: o.side,
            qty: o.qty,
            price,
            status: ExecStatus::Filled,
            reason: None,
            liquidity: Some(liquidity.to_string()),
            ts,
        }
    }

    /// Whether `src` may send orders (`order_senders`); when not, counts the message (`id`,
    /// made only then) once and returns the reason to refuse it with.
    pub fn check_sender(&mut self, src: &str, id: impl FnOnce() -> String) -> Result<(), String> {
        if self.opts.order_senders.iter().any(|s| s == src) {
            return Ok(());
        }
        let id = id();
        if self.foreign_ids.len() >= MAX_REMEMBERED {
            self.foreign_ids.clear();
        }
        if self.foreign_ids.insert(id.clone()) {
            self.counts.foreign += 1;
        }
        Err(format!(
            "order_request {id} from {src:?} refused: only {:?} may send orders",
            self.opts.order_senders
        ))
    }

    /// Takes an order: returns its execution (fill or rejection), or `None` when a limit
    /// order rests.
    pub fn submit(&mut self, o: OrderRequest) -> Option<Execution> {
        self.counts.orders += 1;
        if !self.symbols.contains(&o.symbol) {
            let mut known: Vec<&String> = self.symbols.iter().collect();
            known.sort();
            let reason = format!("unknown symbol {:?} (the venue trades {known:?})", o.symbol);
            return Some(self.reject(&o, reason));
        }
        if !o.qty.is_finite() || o.qty <= 0.0 {
            let reason = format!("bad quantity {}: must be a positive number", o.qty);
            return Some(self.reject(&o, reason));
        }
        let limit = match (o.order_type, o.limit_price) {
            (OrderType::Limit, Some(p)) if p.is_finite() && p > 0.0 => Some(p),
            (OrderType::Limit, Some(p)) => {
                let reason = format!("bad limit price {p}: must be a positive number");
                return Some(self.reject(&o, reason));
            }
            (OrderType::Limit, None) => {
                return Some(self.reject(&o, "a limit order needs a limit_price".into()));
            }
            (OrderType::Market, _) => None,
        };
        let Some(q) = self.quotes.get(&o.symbol).cloned() else {
            let reason = format!("no quote for {} yet", o.symbol);
            return Some(self.reject(&o, reason));
        };
        let touch = match o.side {
            Side::Buy => q.ask,
            Side::Sell => q.bid,
        };
        let marketable = match (limit, o.side) {
            (None, _) => true,
            (Some(l), Side::Buy) => touch <= l,
            (Some(l), Side::Sell) => touch >= l,
        };
        if !marketable {
            self.resting.push(o);
            return None;
        }
        let age_ns = self.last_ts.saturating_sub(q.ts);
        let max_ns = self.opts.max_quote_age_ms.saturating_mul(1_000_000);
        if max_ns > 0 && age_ns > max_ns {
            let reason = format!(
                "stale quote: the latest {} quote is {:.3} s old in data time, more than \
                 max_quote_age_ms {}",
                o.symbol,
                age_ns as f64 / 1e9,
                self.opts.max_quote_age_ms
            );
            return Some(self.reject(&o, reason));
        }
        // The same slippage for every order that takes liquidity; a limit caps it.
        let slip = self.opts.slippage_bps / 1e4;
        let price = match (o.side, limit) {
            (Side::Buy, None) => touch * (1.0 + slip),
            (Side::Sell, None) => touch * (1.0 - slip),
            (Side::Buy, Some(l)) => (touch * (1.0 + slip)).min(l),
            (Side::Sell, Some(l)) => (touch * (1.0 - slip)).max(l),
        };
        // Stamped no earlier than the order: at the venue's data time when it arrives (the
        // quote's time or later).
        let ts = q.ts.max(self.last_ts);
        Some(self.fill(&o, price, ts, "taker"))
    }

    /// A new quote: remembered for market orders; fills the resting limit orders it crosses,
    /// in the order they arrived.
    pub fn on_quote(&mut self, q: &Quote) -> Vec<Execution> {
        self.last_ts = self.last_ts.max(q.ts);
        match self.quotes.get_mut(&q.symbol) {
            Some(old) => old.clone_from(q),
            None => {
                self.quotes.insert(q.symbol.clone(), q.clone());
            }
        }
        if self.resting.is_empty() {
            return Vec::new();
        }
        let mut fills = Vec::new();
        let resting = std::mem::take(&mut self.resting);
        for o in resting {
            let l = o.limit_price.unwrap_or(0.0);
            let crossed = o.symbol == q.symbol
                && match o.side {
                    Side::Buy => q.ask <= l,
                    Side::Sell => q.bid >= l,
                };
            if crossed {
                fills.push(self.fill(&o, l, q.ts, "maker"));
            } else {
                self.resting.push(o);
            }
        }
        fills
    }

    /// Notes the time of the latest data (timestamps rejections).
    pub fn on_time(&mut self, ts: u64) {
        self.last_ts = self.last_ts.max(ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn venue() -> PaperVenue {
        let mut v = PaperVenue::new(
            VenueOptions {
                slippage_bps: 10.0,
                ..VenueOptions::default()
            },
            ["BTCUSDT".to_string(), "ETHUSDT".to_string()],
        );
        v.on_quote(&Quote {
            symbol: "BTCUSDT".into(),
            ts: 1_000,
            bid: 100.0,
            ask: 101.0,
            bid_size: 1.0,
            ask_size: 1.0,
        });
        v
    }

    fn order(side: Side, qty: f64, limit: Option<f64>) -> OrderRequest {
        OrderRequest {
            order_id: "o1".into(),
            symbol: "BTCUSDT".into(),
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

    #[test]
    fn market_orders_fill_at_the_touch_plus_slippage() {
        let mut v = venue();
        let buy = v.submit(order(Side::Buy, 2.0, None)).expect("filled");
        assert_eq!(buy.status, ExecStatus::Filled);
        assert!((buy.price - 101.0 * 1.001).abs() < 1e-9, "{buy:?}");
        assert_eq!((buy.qty, buy.ts), (2.0, 1_000));
        let sell = v.submit(order(Side::Sell, 1.0, None)).expect("filled");
        assert!((sell.price - 100.0 * 0.999).abs() < 1e-9, "{sell:?}");
        assert_eq!(v.counts().fills, 2);
    }

    #[test]
    fn limit_orders_fill_when_the_market_crosses_them() {
        let mut v = venue();
        // Marketable on arrival: fills at the touch plus slippage (as a market order), not at
        // the (worse) limit.
        let now = v
            .submit(order(Side::Buy, 1.0, Some(102.0)))
            .expect("filled");
        assert!((now.price - 101.0 * 1.001).abs() < 1e-9, "{now:?}");
        assert_eq!(now.liquidity.as_deref(), Some("taker"));
        // The slippage stops at the limit.
        let capped = v
            .submit(order(Side::Buy, 1.0, Some(101.05)))
            .expect("filled");
        assert_eq!(capped.price, 101.05);
        // Rests below the ask.
        assert!(v.submit(order(Side::Buy, 1.0, Some(100.5))).is_none());
        assert!(v.submit(order(Side::Sell, 1.0, Some(103.0))).is_none());
        assert_eq!(v.counts().resting, 2);
        let q = |bid: f64, ask: f64, ts: u64| Quote {
            symbol: "BTCUSDT".into(),
            ts,
            bid,
            ask,
            bid_size: 1.0,
            ask_size: 1.0,
        };
        assert!(v.on_quote(&q(100.2, 100.6, 2_000)).is_empty());
        let fills = v.on_quote(&q(100.1, 100.5, 3_000));
        assert_eq!(fills.len(), 1);
        assert_eq!(
            (fills[0].side, fills[0].price, fills[0].ts),
            (Side::Buy, 100.5, 3_000)
        );
        assert_eq!(fills[0].liquidity.as_deref(), Some("maker"));
        let fills = v.on_quote(&q(103.5, 104.0, 4_000));
        assert_eq!((fills.len(), fills[0].price), (1, 103.0));
        assert_eq!(v.counts().resting, 0);
    }

    #[test]
    fn an_order_on_a_stale_quote_is_rejected_and_a_fill_is_never_stamped_before_its_order() {
        let mut v = PaperVenue::new(
            VenueOptions {
                max_quote_age_ms: 5_000,
                ..VenueOptions::default()
            },
            ["BTCUSDT".to_string()],
        );
        let s = 1_000_000_000;
        v.on_quote(&Quote {
            symbol: "BTCUSDT".into(),
            ts: 10 * s,
            bid: 100.0,
            ask: 101.0,
            bid_size: 1.0,
            ask_size: 1.0,
        });
        // 3 s of data later (a trade of any symbol moves the venue's clock): still fresh, and
        // the fill is stamped at the venue's time, not the quote's.
        v.on_time(13 * s);
        let f = v.submit(order(Side::Buy, 1.0, None)).expect("filled");
        assert_eq!((f.status, f.ts), (ExecStatus::Filled, 13 * s));
        // 6 s: too old, for a market order and a marketable limit alike.
        v.on_time(16 * s);
        for limit in [None, Some(105.0)] {
            let r = v.submit(order(Side::Buy, 1.0, limit)).expect("rejected");
            assert_eq!(r.status, ExecStatus::Rejected);
            let reason = r.reason.unwrap();
            assert!(
                reason.contains("stale quote") && reason.contains("6.000 s old"),
                "{reason}"
            );
            assert!(reason.contains("max_quote_age_ms 5000"), "{reason}");
        }
        // A limit order that rests is not refused: it waits for a fresh quote.
        assert!(v.submit(order(Side::Buy, 1.0, Some(99.0))).is_none());
    }

    #[test]
    fn bad_orders_are_rejected_with_a_reason() {
        let mut v = venue();
        let mut o = order(Side::Buy, 1.0, None);
        o.symbol = "DOGE".into();
        let r = v.submit(o).expect("rejected");
        assert_eq!(r.status, ExecStatus::Rejected);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("unknown symbol \"DOGE\""),
            "{r:?}"
        );
        for qty in [0.0, -1.0, f64::NAN] {
            let r = v.submit(order(Side::Buy, qty, None)).expect("rejected");
            assert!(
                r.reason.as_deref().unwrap().contains("bad quantity"),
                "{r:?}"
            );
        }
        let r = v
            .submit(order(Side::Buy, 1.0, Some(-3.0)))
            .expect("rejected");
        assert!(
            r.reason.as_deref().unwrap().contains("bad limit price -3"),
            "{r:?}"
        );
        let mut o = order(Side::Buy, 1.0, None);
        o.symbol = "ETHUSDT".into();
        let r = v.submit(o).expect("rejected");
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("no quote for ETHUSDT"),
            "{r:?}"
        );
        assert_eq!(v.counts().rejects, 6);
        assert_eq!(v.counts().orders, 6);
    }
}
