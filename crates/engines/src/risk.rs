//! The Risk engine: pre-trade checks that turn strategy signals into orders, the circuit
//! breaker, and a parametric VaR of the book.
//!
//! # Orders
//! Each `strategy_signal` asks for the difference between its target and the symbol's
//! exposure: `qty = target_position - (position + pending)`, where the position is the sum of
//! the fills seen on `trade_execution` (signed by side) and pending is the signed quantity of
//! the orders sent but not yet answered by an execution (filled or rejected, matched by
//! `order_id`). A difference worth less than `min_order_notional` at the mid is ignored, not an
//! alert (the target is already held, give or take rounding). Otherwise the order gets the next
//! id, `{instance}-{n:06}` from 1 (every order built gets one, sent or rejected, so a rejection
//! can name it; the ids depend only on the input), and goes through the checks. A passing order
//! is published as a market order (`dualbus_model::orders::OrderRequest`) on
//! `order_request.{SYMBOL}` at high priority; a rejected one becomes a `risk_alert` naming the
//! rule, the value and the limit. A rejected signal is not retried: the next signal is.
//!
//! # Checks
//! In this order; the first that fails rejects ([`RiskRule::CHECK_ORDER`]). A value above its
//! limit fails (beyond a relative rounding tolerance of 1e-9, so that an order of exactly the
//! limit passes):
//! 1. `circuit_breaker`: the breaker is tripped (value: seconds since it tripped, limit:
//!    `breaker_secs`).
//! 2. `drawdown_stop`: equity (from `portfolio_update.{account}`) is below its peak by more than
//!    `max_drawdown` (value and limit: fractions of the peak).
//! 3. `toxicity_halt`: a `toxicity_alert` for the symbol less than `toxicity_halt_secs` of data
//!    time ago (value: seconds since it, limit: `toxicity_halt_secs`).
//!
//! The three halts stop new risk only: an order that cuts the symbol's `|exposure|` without
//! turning it round (a sell of part or all of a long) passes them, so that the strategy's zero
//! target during an alert flattens the position instead of holding it through the crash.
//! 4. `stale_price`: the symbol's last quote is more than `stale_quote_secs` old (value: its age
//!    in seconds; with no quote ever, the data time seen so far, a lower bound of the age).
//! 5. `max_order_notional`: `|qty| x mid` above `max_order_notional`.
//! 6. `max_position`: `|exposure after the order| x mid` above `max_position_notional`, unless
//!    the order lowers `|exposure|` (a reducing order always helps).
//! 7. `gross_notional`: the sum over symbols of `|exposure| x price` after the order above
//!    `gross_notional_limit`, unless the order lowers its symbol's `|exposure|` (then it lowers
//!    the gross too).
//! 8. `order_rate`: the orders sent in the last 60 s of data time, this one included, above
//!    `max_orders_per_min` (all symbols together).
//!
//! # Circuit breaker
//! A `flash_crash_alert` (any symbol) trips the breaker, and every one publishes a `risk_alert`
//! with action `circuit_breaker_tripped` and the alert's reason (value: alerts in this trip,
//! limit 0: any one trips it). A later alert while tripped re-arms it from its own `ts`. The
//! breaker resets after `breaker_secs` of data time since the last alert; with `breaker_secs`
//! 0 it stays tripped until the engine restarts (the breaker lives in memory, so a restart
//! begins with it reset) or [`RiskBook::reset_breaker`] is called (the engine calls it at start
//! when its configuration says `reset_breaker: true`).
//!
//! # VaR
//! Per symbol, one-minute log returns of the mid: the first quote of each minute of data time
//! is a sample, and the return is from the previous sample (a gap of several minutes gives one
//! return over the gap); the last [`VAR_RETURNS`] are kept. `VaR = z(var_confidence) x
//! sqrt(w' S w)`, `w` the positions' notionals at the mid (filled positions, not pending
//! orders), `S` the full sample covariance matrix of the returns: each pair over the minutes
//! where both symbols have a return (`n - 1` in the denominator; 0 with fewer than 2 common
//! minutes, so a symbol without history adds nothing: the VaR is too low until it has some).
//! It is a one-minute VaR in quote currency, `z(0.99) = 2.326`. It is evaluated after every
//! new return sample and every fill; a `risk_alert` (action `var_breach`, topic
//! `risk_alert.book`) is published when it crosses `var_limit` from below. It does not block
//! orders.
//!
//! Time is data time: the latest `ts` seen in any input (quotes, signals, executions, alerts),
//! never the wall clock, so a replay gives the same orders and alerts as the live run.

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::market::{Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest, OrderType};
use dualbus_model::risk::{RiskAction, RiskAlert};
use dualbus_model::strategy::StrategySignal;
use dualbus_model::vpin::FlashCrashAlert;
use dualbus_model::vpin::ToxicityAlert;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};

const NS: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * NS;

/// One-minute returns kept per symbol for the VaR.
pub const VAR_RETURNS: usize = 120;

/// Filled order ids remembered to drop a redelivered execution.
const FILLS_REMEMBERED: usize = 10_000;

/// Relative tolerance of the limit comparisons (floating point rounding).
const TOLERANCE: f64 = 1e-9;

/// Risk engine parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskParams {
    /// Largest `|exposure| x mid` per symbol.
    pub max_position_notional: f64,
    /// Largest sum of `|exposure| x price` over the symbols.
    pub gross_notional_limit: f64,
    /// Largest `|qty| x mid` of one order.
    pub max_order_notional: f64,
    /// Orders allowed per rolling 60 s of data time (all symbols).
    pub max_orders_per_min: u32,
    /// Largest age of a symbol's last quote, seconds of data time.
    pub stale_quote_secs: u64,
    /// Largest drop of equity below its peak, fraction of the peak.
    pub max_drawdown: f64,
    /// Seconds of data time a `toxicity_alert` halts its symbol.
    pub toxicity_halt_secs: u64,
    /// Seconds of data time the circuit breaker stays tripped (0: until reset or restart).
    pub breaker_secs: u64,
    /// Reset the circuit breaker when the engine starts.
    pub reset_breaker: bool,
    /// Differences worth less than this at the mid are ignored.
    pub min_order_notional: f64,
    /// VaR confidence level.
    pub var_confidence: f64,
    /// VaR above this publishes a `var_breach`.
    pub var_limit: f64,
    /// The account whose `portfolio_update.{account}` gives the equity.
    pub account: String,
}

impl Default for RiskParams {
    fn default() -> Self {
        RiskParams {
            max_position_notional: 20_000.0,
            gross_notional_limit: 100_000.0,
            max_order_notional: 10_000.0,
            max_orders_per_min: 30,
            stale_quote_secs: 10,
            max_drawdown: 0.10,
            toxicity_halt_secs: 600,
            breaker_secs: 1_800,
            reset_breaker: false,
            min_order_notional: 50.0,
            var_confidence: 0.99,
            var_limit: 5_000.0,
            account: "main".to_string(),
        }
    }
}

impl RiskParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v) in [
            ("max_position_notional", self.max_position_notional),
            ("gross_notional_limit", self.gross_notional_limit),
            ("max_order_notional", self.max_order_notional),
            ("var_limit", self.var_limit),
        ] {
            if !(v.is_finite() && v > 0.0) {
                out.push(format!("{name} {v} must be a positive number"));
            }
        }
        if !(self.min_order_notional.is_finite() && self.min_order_notional >= 0.0) {
            out.push(format!(
                "min_order_notional {} must be a number at least 0",
                self.min_order_notional
            ));
        } else if self.min_order_notional > self.max_order_notional {
            out.push(format!(
                "min_order_notional {} must not exceed max_order_notional {}",
                self.min_order_notional, self.max_order_notional
            ));
        }
        if self.max_orders_per_min == 0 {
            out.push("max_orders_per_min must be at least 1".to_string());
        }
        if self.stale_quote_secs == 0 {
            out.push("stale_quote_secs must be at least 1".to_string());
        }
        if self.toxicity_halt_secs == 0 {
            out.push("toxicity_halt_secs must be at least 1 (0 would ignore every alert)".into());
        }
        if !(self.max_drawdown > 0.0 && self.max_drawdown <= 1.0) {
            out.push(format!(
                "max_drawdown {} must be in (0, 1]",
                self.max_drawdown
            ));
        }
        if !(self.var_confidence > 0.5 && self.var_confidence < 1.0) {
            out.push(format!(
                "var_confidence {} must be in (0.5, 1)",
                self.var_confidence
            ));
        }
        if self.account.is_empty() || self.account.contains(['.', '*', '>']) {
            out.push(format!(
                "account {:?} must be one topic segment (no '.', '*', '>')",
                self.account
            ));
        }
        out
    }
}

/// A pre-trade rule (or the VaR limit), by its wire name in [`RiskAlert::rule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RiskRule {
    /// The circuit breaker is tripped.
    CircuitBreaker,
    /// Equity is too far below its peak.
    DrawdownStop,
    /// A toxicity alert halts the symbol.
    ToxicityHalt,
    /// The symbol's quote is too old.
    StalePrice,
    /// The order is too big.
    MaxOrderNotional,
    /// The symbol's exposure would be too big.
    MaxPosition,
    /// The book's gross exposure would be too big.
    GrossNotional,
    /// Too many orders in the last minute.
    OrderRate,
    /// The book's VaR is above its limit (an alert, not a pre-trade check).
    VarLimit,
}

impl RiskRule {
    /// The pre-trade checks in the order they run.
    pub const CHECK_ORDER: [RiskRule; 8] = [
        RiskRule::CircuitBreaker,
        RiskRule::DrawdownStop,
        RiskRule::ToxicityHalt,
        RiskRule::StalePrice,
        RiskRule::MaxOrderNotional,
        RiskRule::MaxPosition,
        RiskRule::GrossNotional,
        RiskRule::OrderRate,
    ];

    /// The wire name (`max_position`).
    pub fn as_str(self) -> &'static str {
        match self {
            RiskRule::CircuitBreaker => "circuit_breaker",
            RiskRule::DrawdownStop => "drawdown_stop",
            RiskRule::ToxicityHalt => "toxicity_halt",
            RiskRule::StalePrice => "stale_price",
            RiskRule::MaxOrderNotional => "max_order_notional",
            RiskRule::MaxPosition => "max_position",
            RiskRule::GrossNotional => "gross_notional",
            RiskRule::OrderRate => "order_rate",
            RiskRule::VarLimit => "var_limit",
        }
    }
}

/// An order before the checks: `qty` signed (positive buys), valued at `price`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProposedOrder {
    /// Instrument.
    pub symbol: String,
    /// Signed quantity.
    pub qty: f64,
    /// The mid it is valued at.
    pub price: f64,
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The failed rule.
    pub rule: RiskRule,
    /// What it measured.
    pub value: f64,
    /// Its limit.
    pub limit: f64,
    /// The rule and the values in words.
    pub reason: String,
}

/// The circuit breaker while tripped.
#[derive(Clone, Debug, PartialEq)]
pub struct Breaker {
    /// `ts` of the alert that last tripped or re-armed it.
    pub since: u64,
    /// That alert's symbol.
    pub symbol: String,
    /// That alert's reason.
    pub reason: String,
    /// Flash crash alerts in this trip.
    pub alerts: u32,
}

/// `value > limit` beyond rounding.
fn exceeds(value: f64, limit: f64) -> bool {
    value > limit + TOLERANCE * limit.abs()
}

fn secs(ns: u64) -> f64 {
    ns as f64 / NS as f64
}

/// The pre-trade checks of [`RiskRule::CHECK_ORDER`] against a book.
#[derive(Clone, Debug)]
pub struct PreTradeChecks {
    p: RiskParams,
}

impl PreTradeChecks {
    /// Checks with these limits (assumed valid, [`RiskParams::problems`]).
    pub fn new(params: RiskParams) -> PreTradeChecks {
        PreTradeChecks { p: params }
    }

    /// The limits.
    pub fn params(&self) -> &RiskParams {
        &self.p
    }

    /// Runs the checks in order at the book's data time.
    ///
    /// # Errors
    /// The first failing rule, with its value and limit.
    pub fn check(&self, book: &RiskBook, o: &ProposedOrder) -> Result<(), Rejection> {
        for rule in RiskRule::CHECK_ORDER {
            self.check_rule(rule, book, o)?;
        }
        Ok(())
    }

    /// Runs one check.
    ///
    /// # Errors
    /// The rule's rejection when it fails (the VaR limit never rejects an order).
    pub fn check_rule(
        &self,
        rule: RiskRule,
        book: &RiskBook,
        o: &ProposedOrder,
    ) -> Result<(), Rejection> {
        let p = &self.p;
        let reject = |value: f64, limit: f64, reason: String| {
            Err(Rejection {
                rule,
                value,
                limit,
                reason,
            })
        };
        let before = book.exposure(&o.symbol);
        let after = before + o.qty;
        let reducing = after.abs() < before.abs();
        // Cuts exposure without turning it round: takes no new risk, so the halts let it
        // through (a halt that kept the position would hold the risk it is meant to stop).
        let derisking = reducing && after * before >= 0.0;
        match rule {
            RiskRule::CircuitBreaker if derisking => {}
            RiskRule::DrawdownStop if derisking => {}
            RiskRule::ToxicityHalt if derisking => {}
            RiskRule::CircuitBreaker => {
                if let Some(b) = book.breaker() {
                    let elapsed = secs(book.now().saturating_sub(b.since));
                    let reset = if p.breaker_secs == 0 {
                        "it resets only by configuration (reset_breaker) or a restart".to_string()
                    } else {
                        format!("it resets after {} s of data time", p.breaker_secs)
                    };
                    return reject(
                        elapsed,
                        p.breaker_secs as f64,
                        format!(
                            "the circuit breaker was tripped {elapsed:.0} s ago by a \
                             flash_crash_alert on {} ({}); {reset}",
                            b.symbol, b.reason
                        ),
                    );
                }
            }
            RiskRule::DrawdownStop => {
                if let (Some(dd), Some(e)) = (book.drawdown(), book.equity()) {
                    if exceeds(dd, p.max_drawdown) {
                        return reject(
                            dd,
                            p.max_drawdown,
                            format!(
                                "equity {e} is {:.2}% below its peak {}, more than the {:.2}% \
                                 drawdown stop",
                                dd * 100.0,
                                book.peak_equity(),
                                p.max_drawdown * 100.0
                            ),
                        );
                    }
                }
            }
            RiskRule::ToxicityHalt => {
                if let Some(elapsed) = book.toxicity_alert_age(&o.symbol) {
                    if elapsed < p.toxicity_halt_secs as f64 {
                        return reject(
                            elapsed,
                            p.toxicity_halt_secs as f64,
                            format!(
                                "a toxicity_alert on {} {elapsed:.0} s ago halts it for {} s of \
                                 data time",
                                o.symbol, p.toxicity_halt_secs
                            ),
                        );
                    }
                }
            }
            RiskRule::StalePrice => {
                let limit = p.stale_quote_secs as f64;
                match book.quote_age(&o.symbol) {
                    None => {
                        return reject(
                            book.data_span(),
                            limit,
                            format!(
                                "no quote for {} in the {:.0} s of data seen",
                                o.symbol,
                                book.data_span()
                            ),
                        );
                    }
                    Some(age) if age > limit => {
                        return reject(
                            age,
                            limit,
                            format!(
                                "the last quote for {} is {age:.1} s old, more than {limit} s",
                                o.symbol
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
            RiskRule::MaxOrderNotional => {
                let n = o.qty.abs() * o.price;
                if exceeds(n, p.max_order_notional) {
                    return reject(
                        n,
                        p.max_order_notional,
                        format!(
                            "order notional {n:.2} ({} at {}) above {}",
                            o.qty.abs(),
                            o.price,
                            p.max_order_notional
                        ),
                    );
                }
            }
            RiskRule::MaxPosition => {
                let n = after.abs() * o.price;
                if !reducing && exceeds(n, p.max_position_notional) {
                    return reject(
                        n,
                        p.max_position_notional,
                        format!(
                            "{} exposure would reach {after} ({n:.2} notional at {}), above {}",
                            o.symbol, o.price, p.max_position_notional
                        ),
                    );
                }
            }
            RiskRule::GrossNotional => {
                let gross = book.gross_notional_with(o);
                if !reducing && exceeds(gross, p.gross_notional_limit) {
                    return reject(
                        gross,
                        p.gross_notional_limit,
                        format!(
                            "gross notional of the book would reach {gross:.2}, above {}",
                            p.gross_notional_limit
                        ),
                    );
                }
            }
            RiskRule::OrderRate => {
                let n = book.orders_last_minute() as f64 + 1.0;
                let limit = f64::from(p.max_orders_per_min);
                if n > limit {
                    return reject(
                        n,
                        limit,
                        format!(
                            "this would be order {n} in the last 60 s of data time, above {limit}"
                        ),
                    );
                }
            }
            RiskRule::VarLimit => {}
        }
        Ok(())
    }
}

/// What a signal became.
#[derive(Clone, Debug, PartialEq)]
pub enum SignalOutcome {
    /// An order to publish on `order_request.{SYMBOL}`.
    Order(OrderRequest),
    /// A rejection to publish on `risk_alert.{SYMBOL}`.
    Rejected(RiskAlert),
    /// Nothing to do, and why (the difference is below `min_order_notional`).
    Ignored(String),
}

#[derive(Clone, Debug, Default)]
struct SymbolBook {
    position: f64,
    mid: Option<f64>,
    quote_ts: Option<u64>,
    last_fill_price: Option<f64>,
    toxicity_ts: Option<u64>,
    /// (minute, mid) of the last VaR sample.
    sample: Option<(u64, f64)>,
    /// (minute, log return from the previous sample), oldest first.
    returns: VecDeque<(u64, f64)>,
}

/// The Risk engine's state without the bus: positions, pending orders, quotes, alerts, equity,
/// the breaker and the VaR; feed it inputs, get the orders and alerts to publish.
#[derive(Clone, Debug)]
pub struct RiskBook {
    checks: PreTradeChecks,
    instance: String,
    z: f64,
    now: u64,
    first_ts: Option<u64>,
    symbols: BTreeMap<String, SymbolBook>,
    /// order id -> (symbol, signed qty) of orders sent and not answered.
    pending: BTreeMap<String, (String, f64)>,
    filled: HashSet<String>,
    filled_order: VecDeque<String>,
    /// Data times of the orders sent in the last minute.
    sent: VecDeque<u64>,
    next_id: u64,
    equity: Option<f64>,
    peak: f64,
    breaker: Option<Breaker>,
    var_above: bool,
    orders: u64,
    rejects: BTreeMap<&'static str, u64>,
}

impl RiskBook {
    /// An empty book whose orders are named `{instance}-{n:06}`. Parameters are assumed valid
    /// ([`RiskParams::problems`]).
    pub fn new(params: RiskParams, instance: &str) -> RiskBook {
        RiskBook {
            z: normal_quantile(params.var_confidence),
            checks: PreTradeChecks::new(params),
            instance: instance.to_string(),
            now: 0,
            first_ts: None,
            symbols: BTreeMap::new(),
            pending: BTreeMap::new(),
            filled: HashSet::new(),
            filled_order: VecDeque::new(),
            sent: VecDeque::new(),
            next_id: 0,
            equity: None,
            peak: 0.0,
            breaker: None,
            var_above: false,
            orders: 0,
            rejects: BTreeMap::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &RiskParams {
        self.checks.params()
    }

    fn symbol(&mut self, symbol: &str) -> &mut SymbolBook {
        if !self.symbols.contains_key(symbol) {
            self.symbols
                .insert(symbol.to_string(), SymbolBook::default());
        }
        self.symbols.get_mut(symbol).expect("inserted above")
    }

    /// Moves data time to `ts` if later; expires the breaker and the order-rate window.
    pub fn advance(&mut self, ts: u64) {
        self.now = self.now.max(ts);
        self.first_ts = Some(self.first_ts.map_or(ts, |f| f.min(ts)));
        let secs = self.params().breaker_secs;
        if secs > 0
            && self
                .breaker
                .as_ref()
                .is_some_and(|b| self.now >= b.since.saturating_add(secs * NS))
        {
            let b = self.breaker.take().expect("checked above");
            tracing::info!(
                since = b.since,
                now = self.now,
                "circuit breaker reset by time"
            );
        }
        while self
            .sent
            .front()
            .is_some_and(|&t| t.saturating_add(MINUTE) <= self.now)
        {
            self.sent.pop_front();
        }
    }

    /// Data time: the latest `ts` seen, Unix ns.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Seconds from the earliest to the latest data time seen.
    pub fn data_span(&self) -> f64 {
        secs(self.now - self.first_ts.unwrap_or(self.now))
    }

    /// Filled position of `symbol` (0 when unknown).
    pub fn position(&self, symbol: &str) -> f64 {
        self.symbols.get(symbol).map_or(0.0, |s| s.position)
    }

    /// Signed quantity of `symbol`'s orders sent and not yet answered.
    pub fn pending_qty(&self, symbol: &str) -> f64 {
        self.pending
            .values()
            .filter(|(s, _)| s == symbol)
            .map(|(_, q)| q)
            .sum()
    }

    /// Orders sent and not yet answered.
    pub fn pending_orders(&self) -> usize {
        self.pending.len()
    }

    /// Position plus pending.
    pub fn exposure(&self, symbol: &str) -> f64 {
        self.position(symbol) + self.pending_qty(symbol)
    }

    /// The latest mid of `symbol`.
    pub fn mid(&self, symbol: &str) -> Option<f64> {
        self.symbols.get(symbol).and_then(|s| s.mid)
    }

    /// The mid, or the last fill price without a quote.
    fn price(&self, symbol: &str) -> Option<f64> {
        let s = self.symbols.get(symbol)?;
        s.mid.or(s.last_fill_price)
    }

    /// Seconds of data time since `symbol`'s last quote (`None`: no quote).
    pub fn quote_age(&self, symbol: &str) -> Option<f64> {
        let ts = self.symbols.get(symbol)?.quote_ts?;
        Some(secs(self.now.saturating_sub(ts)))
    }

    /// Seconds of data time since `symbol`'s last `toxicity_alert`.
    pub fn toxicity_alert_age(&self, symbol: &str) -> Option<f64> {
        let ts = self.symbols.get(symbol)?.toxicity_ts?;
        Some(secs(self.now.saturating_sub(ts)))
    }

    /// The latest equity.
    pub fn equity(&self) -> Option<f64> {
        self.equity
    }

    /// The highest equity seen.
    pub fn peak_equity(&self) -> f64 {
        self.peak
    }

    /// `(peak - equity) / peak`, once an equity is known.
    pub fn drawdown(&self) -> Option<f64> {
        let e = self.equity?;
        (self.peak > 0.0).then(|| (self.peak - e) / self.peak)
    }

    /// The breaker, while tripped.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// Resets the circuit breaker (by configuration).
    pub fn reset_breaker(&mut self) {
        if let Some(b) = self.breaker.take() {
            tracing::info!(since = b.since, "circuit breaker reset");
        }
    }

    /// Orders sent in the last 60 s of data time.
    pub fn orders_last_minute(&self) -> usize {
        self.sent.len()
    }

    /// Orders sent so far.
    pub fn orders_sent(&self) -> u64 {
        self.orders
    }

    /// Rejections so far, by rule.
    pub fn rejections(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejects
    }

    /// Sum over symbols of `|exposure| x price`.
    pub fn gross_notional(&self) -> f64 {
        self.symbols
            .keys()
            .map(|s| self.exposure(s).abs() * self.price(s).unwrap_or(0.0))
            .sum()
    }

    /// The gross notional once `o` is sent (its symbol valued at `o.price`).
    pub fn gross_notional_with(&self, o: &ProposedOrder) -> f64 {
        let others: f64 = self
            .symbols
            .keys()
            .filter(|s| **s != o.symbol)
            .map(|s| self.exposure(s).abs() * self.price(s).unwrap_or(0.0))
            .sum();
        others + (self.exposure(&o.symbol) + o.qty).abs() * o.price
    }

    /// A quote: the mid, its time, and a VaR sample at the first quote of each minute (which
    /// may publish a `var_breach`). Quotes without a positive bid and ask are ignored.
    pub fn on_quote(&mut self, q: &Quote) -> Option<RiskAlert> {
        let mid = q.mid();
        if !(q.bid > 0.0 && q.ask > 0.0 && mid.is_finite()) {
            return None;
        }
        self.advance(q.ts);
        let s = self.symbol(&q.symbol);
        if s.quote_ts.is_some_and(|t| q.ts < t) {
            return None; // out of order: an older quote says nothing new
        }
        s.quote_ts = Some(q.ts);
        s.mid = Some(mid);
        let minute = q.ts / MINUTE;
        let sampled = match s.sample {
            Some((m, _)) if minute <= m => false,
            Some((_, prev)) => {
                s.returns.push_back((minute, (mid / prev).ln()));
                while s.returns.len() > VAR_RETURNS {
                    s.returns.pop_front();
                }
                s.sample = Some((minute, mid));
                true
            }
            None => {
                s.sample = Some((minute, mid));
                false
            }
        };
        if sampled {
            self.check_var()
        } else {
            None
        }
    }

    /// An execution: answers its pending order; a fill (once per order id) moves the position
    /// and the VaR (which may publish a `var_breach`).
    pub fn on_execution(&mut self, x: &Execution) -> Option<RiskAlert> {
        self.advance(x.ts);
        self.pending.remove(&x.order_id);
        if x.status != ExecStatus::Filled || !(x.qty.is_finite() && x.qty > 0.0) {
            return None;
        }
        if !self.filled.insert(x.order_id.clone()) {
            return None; // a redelivered fill
        }
        self.filled_order.push_back(x.order_id.clone());
        while self.filled_order.len() > FILLS_REMEMBERED {
            if let Some(old) = self.filled_order.pop_front() {
                self.filled.remove(&old);
            }
        }
        let s = self.symbol(&x.symbol);
        s.position += x.side.sign() * x.qty;
        if x.price.is_finite() && x.price > 0.0 {
            s.last_fill_price = Some(x.price);
        }
        self.check_var()
    }

    /// A `toxicity_alert`: halts its symbol for `toxicity_halt_secs` from its `ts`.
    pub fn on_toxicity_alert(&mut self, a: &ToxicityAlert) {
        self.advance(a.ts);
        let s = self.symbol(&a.symbol);
        s.toxicity_ts = Some(s.toxicity_ts.map_or(a.ts, |t| t.max(a.ts)));
    }

    /// A `flash_crash_alert`: trips (or re-arms) the circuit breaker.
    pub fn on_flash_crash_alert(&mut self, a: &FlashCrashAlert) -> RiskAlert {
        self.advance(a.ts);
        let (alerts, was) = match self.breaker.take() {
            Some(b) => (b.alerts + 1, Some(b.since.max(a.ts))),
            None => (1, None),
        };
        let since = was.unwrap_or(a.ts);
        self.breaker = Some(Breaker {
            since,
            symbol: a.symbol.clone(),
            reason: a.reason.clone(),
            alerts,
        });
        let until = match self.params().breaker_secs {
            0 => "until reset by configuration (reset_breaker) or a restart".to_string(),
            s => format!("for {s} s of data time"),
        };
        let verb = if alerts == 1 {
            "tripped"
        } else {
            "re-armed (already tripped)"
        };
        // An old alert may already have expired: say so rather than claim a trip.
        self.advance(self.now);
        let state = if self.breaker.is_some() {
            format!("no order passes {until}")
        } else {
            format!("but its ts {} is already {until} in the past", a.ts)
        };
        RiskAlert {
            rule: RiskRule::CircuitBreaker.as_str().to_string(),
            symbol: Some(a.symbol.clone()),
            ts: self.now,
            value: f64::from(alerts),
            limit: 0.0,
            action: RiskAction::CircuitBreakerTripped,
            order_id: None,
            reason: format!(
                "circuit breaker {verb} by a flash_crash_alert on {} ({:?}): {}; {state}",
                a.symbol, a.rule, a.reason
            ),
        }
    }

    /// The account's equity (non-finite values are ignored); the peak follows it up.
    pub fn on_equity(&mut self, equity: f64) {
        if equity.is_finite() {
            self.equity = Some(equity);
            self.peak = self.peak.max(equity);
        }
    }

    /// A strategy signal: the order for the difference, checked.
    pub fn on_signal(&mut self, sig: &StrategySignal) -> SignalOutcome {
        self.advance(sig.ts);
        let symbol = sig.symbol.as_str();
        let (position, pending) = (self.position(symbol), self.pending_qty(symbol));
        let qty = sig.target_position - (position + pending);
        let price = self.mid(symbol).unwrap_or(sig.price);
        let p = self.params();
        let notional = qty.abs() * price;
        if !notional.is_finite() || notional < p.min_order_notional || qty == 0.0 {
            return SignalOutcome::Ignored(format!(
                "target {} of {symbol} is within {} notional of position {position} + pending \
                 {pending} at {price}: no order",
                sig.target_position, p.min_order_notional
            ));
        }
        self.next_id += 1;
        let order_id = format!("{}-{:06}", self.instance, self.next_id);
        let side = if qty > 0.0 { Side::Buy } else { Side::Sell };
        let proposed = ProposedOrder {
            symbol: symbol.to_string(),
            qty,
            price,
        };
        let what = format!(
            "order {order_id} to {} {} {symbol} (target {} from position {position} + pending \
             {pending})",
            match side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            },
            qty.abs(),
            sig.target_position
        );
        if let Err(r) = self.checks.check(self, &proposed) {
            *self.rejects.entry(r.rule.as_str()).or_default() += 1;
            return SignalOutcome::Rejected(RiskAlert {
                rule: r.rule.as_str().to_string(),
                symbol: Some(symbol.to_string()),
                ts: self.now,
                value: r.value,
                limit: r.limit,
                action: RiskAction::RejectOrder,
                order_id: Some(order_id),
                reason: format!("{what} rejected by {}: {}", r.rule.as_str(), r.reason),
            });
        }
        self.pending
            .insert(order_id.clone(), (symbol.to_string(), qty));
        self.sent.push_back(self.now);
        self.orders += 1;
        tracing::debug!(%what, "order sent");
        SignalOutcome::Order(OrderRequest {
            order_id,
            symbol: symbol.to_string(),
            side,
            qty: qty.abs(),
            order_type: OrderType::Market,
            limit_price: None,
        })
    }

    /// One-minute parametric VaR of the filled positions (module docs).
    pub fn var(&self) -> f64 {
        let book: Vec<(f64, &VecDeque<(u64, f64)>)> = self
            .symbols
            .keys()
            .filter_map(|s| {
                let b = &self.symbols[s];
                let w = b.position * self.price(s)?;
                (w != 0.0).then_some((w, &b.returns))
            })
            .collect();
        let mut q = 0.0;
        for (i, (wi, ri)) in book.iter().enumerate() {
            q += wi * wi * covariance(ri, ri);
            for (wj, rj) in &book[i + 1..] {
                q += 2.0 * wi * wj * covariance(ri, rj);
            }
        }
        self.z * q.max(0.0).sqrt()
    }

    /// The z-score of the VaR confidence.
    pub fn var_z(&self) -> f64 {
        self.z
    }

    fn check_var(&mut self) -> Option<RiskAlert> {
        let var = self.var();
        let limit = self.params().var_limit;
        if !exceeds(var, limit) {
            self.var_above = false;
            return None;
        }
        if self.var_above {
            return None;
        }
        self.var_above = true;
        let positions: Vec<String> = self
            .symbols
            .iter()
            .filter(|(_, b)| b.position != 0.0)
            .map(|(s, b)| {
                let n = b.position * self.price(s).unwrap_or(0.0);
                format!(
                    "{s} {} ({n:.2} notional, {} returns)",
                    b.position,
                    b.returns.len()
                )
            })
            .collect();
        Some(RiskAlert {
            rule: RiskRule::VarLimit.as_str().to_string(),
            symbol: None,
            ts: self.now,
            value: var,
            limit,
            action: RiskAction::VarBreach,
            order_id: None,
            reason: format!(
                "one-minute parametric VaR at {} confidence is {var:.2} (z {:.3} x sqrt(w' S w), \
                 S the sample covariance of up to {VAR_RETURNS} one-minute log returns), above \
                 the limit {limit}; positions: {}",
                self.params().var_confidence,
                self.z,
                positions.join(", ")
            ),
        })
    }
}

/// Sample covariance (`n - 1`) of two return series over the minutes both have; 0 with fewer
/// than 2 common minutes. Both series are in increasing minute order.
fn covariance(a: &VecDeque<(u64, f64)>, b: &VecDeque<(u64, f64)>) -> f64 {
    let mut pairs = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                pairs.push((a[i].1, b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    if pairs.len() < 2 {
        return 0.0;
    }
    let n = pairs.len() as f64;
    let ma = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let mb = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    pairs.iter().map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (n - 1.0)
}

/// The standard normal quantile (inverse CDF) at `p` in (0, 1), by Acklam's rational
/// approximation (relative error below 1.2e-9): `normal_quantile(0.99) = 2.326348`.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The part of a `portfolio_update` the Risk engine reads (the Portfolio engine owns the rest).
#[derive(Deserialize)]
struct EquityView {
    equity: f64,
}

/// The Risk engine (`risk`): reads strategy signals, executions, quotes, toxicity and flash
/// crash alerts and the account's `portfolio_update`; publishes `order_request.{SYMBOL}` (high
/// priority) and `risk_alert.{SYMBOL}` or `risk_alert.book` (critical). Configuration:
/// [`RiskParams`]. Orders are named after the engine's instance id.
pub struct RiskEngine {
    book: RiskBook,
    other_accounts: u64,
    ignored: u64,
}

impl Default for RiskEngine {
    fn default() -> Self {
        RiskEngine::new(RiskParams::default())
    }
}

impl RiskEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: RiskParams) -> RiskEngine {
        RiskEngine {
            book: RiskBook::new(params, "risk"),
            other_accounts: 0,
            ignored: 0,
        }
    }

    /// The book.
    pub fn book(&self) -> &RiskBook {
        &self.book
    }

    /// The book, to act on it (reset the breaker) between messages.
    pub fn book_mut(&mut self) -> &mut RiskBook {
        &mut self.book
    }
}

async fn publish_alert(ctx: &EngineContext, a: &RiskAlert) {
    ctx.count_alert("risk_alert", &a.rule);
    if let Err(e) = ctx.send(a).await {
        tracing::warn!(error = %e, rule = %a.rule, "risk alert not published");
    }
}

#[async_trait]
impl Engine for RiskEngine {
    fn name(&self) -> &'static str {
        "risk"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::RiskAlert, EventKind::OrderRequest]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&[
            "strategy_signal.>",
            "trade_execution.>",
            "market_data.quote.>",
            "toxicity_alert.>",
            "flash_crash_alert.>",
            "portfolio_update.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        let params = if ctx.config().is_null() {
            self.book.params().clone()
        } else {
            ctx.settings()?
        };
        EngineError::check("risk", params.problems())?;
        let reset = params.reset_breaker;
        self.book = RiskBook::new(params, ctx.instance());
        if reset {
            self.book.reset_breaker();
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let b = &mut self.book;
        // Every input has changed the book before anything is published; a failed publish is
        // logged rather than retried (a redelivery would count a fill or an order twice).
        let alert = match msg.kind {
            EventKind::StrategySignal => match b.on_signal(&msg.decode()?) {
                SignalOutcome::Order(o) => {
                    if let Err(e) = ctx.send(&o).await {
                        tracing::warn!(error = %e, order = %o.order_id, "order not published");
                    }
                    None
                }
                SignalOutcome::Rejected(a) => Some(a),
                SignalOutcome::Ignored(why) => {
                    self.ignored += 1;
                    tracing::debug!(%why, "signal ignored");
                    None
                }
            },
            EventKind::TradeExecution => b.on_execution(&msg.decode()?),
            EventKind::ToxicityAlert => {
                b.on_toxicity_alert(&msg.decode()?);
                None
            }
            EventKind::FlashCrashAlert => Some(b.on_flash_crash_alert(&msg.decode()?)),
            EventKind::PortfolioUpdate => {
                let account = msg.topic.as_str().rsplit('.').next().unwrap_or_default();
                if account == b.params().account {
                    let v: EquityView = msg.decode()?;
                    b.on_equity(v.equity);
                } else {
                    self.other_accounts += 1;
                }
                None
            }
            EventKind::MarketData if msg.topic.as_str().starts_with("market_data.quote.") => {
                b.on_quote(&msg.decode()?)
            }
            _ => None,
        };
        if let Some(a) = alert {
            publish_alert(ctx, &a).await;
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let b = &self.book;
        let positions: BTreeMap<&str, f64> = b
            .symbols
            .iter()
            .filter(|(_, s)| s.position != 0.0)
            .map(|(k, s)| (k.as_str(), s.position))
            .collect();
        serde_json::json!({
            "now": b.now(),
            "positions": positions,
            "pending_orders": b.pending_orders(),
            "orders": b.orders_sent(),
            "rejections": b.rejections(),
            "ignored_signals": self.ignored,
            "gross_notional": b.gross_notional(),
            "var": b.var(),
            "var_limit": b.params().var_limit,
            "var_confidence": b.params().var_confidence,
            "equity": b.equity(),
            "drawdown": b.drawdown(),
            "breaker": b.breaker().map(|br| serde_json::json!({
                "since": br.since,
                "symbol": br.symbol,
                "alerts": br.alerts,
            })),
            "other_account_updates": self.other_accounts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::vpin::CrashRule;

    const S: u64 = NS;
    const T0: u64 = 1_717_171_200 * S;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(1.0)
    }

    fn book(p: RiskParams) -> RiskBook {
        RiskBook::new(p, "risk-1")
    }

    fn quote(symbol: &str, ts: u64, mid: f64) -> Quote {
        Quote {
            symbol: symbol.into(),
            ts,
            bid: mid - 0.01,
            ask: mid + 0.01,
            bid_size: 1.0,
            ask_size: 1.0,
        }
    }

    fn signal(symbol: &str, ts: u64, target: f64) -> StrategySignal {
        StrategySignal {
            symbol: symbol.into(),
            ts,
            strategy: "ml_factor".into(),
            target_position: target,
            target_notional: target * 100.0,
            price: 100.0,
            score: 0.0,
            prob_up: 0.5,
            composite: None,
            halted: None,
            reason: String::new(),
        }
    }

    fn fill(order_id: &str, symbol: &str, side: Side, qty: f64, ts: u64) -> Execution {
        Execution {
            order_id: order_id.into(),
            symbol: symbol.into(),
            side,
            qty,
            price: 100.0,
            status: ExecStatus::Filled,
            reason: None,
            liquidity: Some("taker".into()),
            ts,
        }
    }

    fn flash(ts: u64) -> FlashCrashAlert {
        FlashCrashAlert {
            symbol: "BTC".into(),
            ts,
            rule: CrashRule::VpinPriceDrop,
            vpin: 0.9,
            vpin_percentile: 0.995,
            price: 90.0,
            reference_price: Some(100.0),
            move_sigmas: Some(-8.0),
            spread_bps: None,
            spread_median_bps: None,
            reason: "price fell 8 sd".into(),
        }
    }

    fn order(o: SignalOutcome) -> OrderRequest {
        match o {
            SignalOutcome::Order(o) => o,
            other => panic!("not an order: {other:?}"),
        }
    }

    fn rejected(o: SignalOutcome) -> RiskAlert {
        match o {
            SignalOutcome::Rejected(a) => a,
            other => panic!("not rejected: {other:?}"),
        }
    }

    /// The rejection's rule, value and limit.
    fn rule(o: SignalOutcome) -> (String, f64, f64) {
        let a = rejected(o);
        assert_eq!(a.action, RiskAction::RejectOrder);
        assert!(a.order_id.is_some() && a.symbol.is_some(), "{a:?}");
        assert!(a.reason.contains(&a.rule), "{}", a.reason);
        (a.rule, a.value, a.limit)
    }

    #[test]
    fn a_signal_becomes_a_market_order_for_the_difference() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        let o = order(b.on_signal(&signal("BTC", T0 + S, 50.0)));
        assert_eq!(o.order_id, "risk-1-000001");
        assert_eq!((o.side, o.qty, o.symbol.as_str()), (Side::Buy, 50.0, "BTC"));
        assert_eq!((o.order_type, o.limit_price), (OrderType::Market, None));
        assert_eq!(b.pending_qty("BTC"), 50.0);
        assert!(b
            .on_execution(&fill(&o.order_id, "BTC", Side::Buy, 50.0, T0 + S))
            .is_none());
        assert_eq!((b.position("BTC"), b.pending_orders()), (50.0, 0));
        // Down to 20: sell 30.
        let o = order(b.on_signal(&signal("BTC", T0 + 2 * S, 20.0)));
        assert_eq!(
            (o.order_id.as_str(), o.side, o.qty),
            ("risk-1-000002", Side::Sell, 30.0)
        );
        assert_eq!(b.exposure("BTC"), 20.0);
    }

    #[test]
    fn pending_orders_count_toward_the_exposure() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        let first = order(b.on_signal(&signal("BTC", T0, 50.0)));
        // Not filled yet: the next target only asks for the rest.
        let second = order(b.on_signal(&signal("BTC", T0 + S, 80.0)));
        assert_eq!((second.side, second.qty), (Side::Buy, 30.0));
        assert_eq!(b.pending_qty("BTC"), 80.0);
        // The venue rejects the first: it is no longer pending, nothing was bought.
        let mut x = fill(&first.order_id, "BTC", Side::Buy, 0.0, T0 + S);
        x.status = ExecStatus::Rejected;
        assert!(b.on_execution(&x).is_none());
        assert_eq!((b.position("BTC"), b.pending_qty("BTC")), (0.0, 30.0));
        let third = order(b.on_signal(&signal("BTC", T0 + 2 * S, 80.0)));
        assert_eq!((third.side, third.qty), (Side::Buy, 50.0));
    }

    #[test]
    fn small_differences_are_ignored_not_alerts() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        order(b.on_signal(&signal("BTC", T0, 50.0)));
        // 0.4 x 100 = 40 < 50.
        match b.on_signal(&signal("BTC", T0, 50.4)) {
            SignalOutcome::Ignored(why) => assert!(why.contains("within 50"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The next id is still 2: nothing was built.
        assert_eq!(
            order(b.on_signal(&signal("BTC", T0, 51.0))).order_id,
            "risk-1-000002"
        );
    }

    #[test]
    fn duplicate_fills_count_once() {
        let mut b = book(RiskParams::default());
        let x = fill("o1", "BTC", Side::Sell, 2.0, T0);
        b.on_execution(&x);
        b.on_execution(&x);
        assert_eq!(b.position("BTC"), -2.0);
    }

    #[test]
    fn rule_circuit_breaker() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_flash_crash_alert(&flash(T0 + 2 * S));
        b.on_quote(&quote("BTC", T0 + 62 * S, 100.0));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0 + 62 * S, 10.0)));
        assert_eq!((r.as_str(), v, l), ("circuit_breaker", 60.0, 1800.0));
    }

    #[test]
    fn the_halts_let_an_order_that_cuts_exposure_through() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        let o = order(b.on_signal(&signal("BTC", T0, 10.0)));
        b.on_execution(&fill(&o.order_id, "BTC", Side::Buy, 10.0, T0 + S));
        b.on_flash_crash_alert(&flash(T0 + 2 * S));
        b.on_quote(&quote("BTC", T0 + 3 * S, 100.0));
        // More risk: rejected by the breaker.
        let (r, _, _) = rule(b.on_signal(&signal("BTC", T0 + 3 * S, 15.0)));
        assert_eq!(r, "circuit_breaker");
        // Turning the long into a short is new risk too.
        let (r, _, _) = rule(b.on_signal(&signal("BTC", T0 + 3 * S, -5.0)));
        assert_eq!(r, "circuit_breaker");
        // Flat: a sell of the whole 10 passes the halt.
        let o = order(b.on_signal(&signal("BTC", T0 + 3 * S, 0.0)));
        assert_eq!((o.side, o.qty), (Side::Sell, 10.0));
    }

    #[test]
    fn rule_drawdown_stop() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_equity(100_000.0);
        b.on_equity(110_000.0);
        b.on_equity(99_000.0); // 10% below the 110k peak: not more than the stop
        order(b.on_signal(&signal("BTC", T0, 10.0)));
        b.on_equity(93_500.0);
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0, 20.0)));
        assert_eq!((r.as_str(), l), ("drawdown_stop", 0.10));
        assert!(close(v, 0.15), "{v}");
    }

    #[test]
    fn rule_toxicity_halt_and_its_expiry() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_toxicity_alert(&ToxicityAlert {
            symbol: "BTC".into(),
            bucket: 1,
            vpin: 0.7,
            percentile: 0.99,
            threshold: 0.95,
            ts: T0,
            reason: "toxic".into(),
        });
        b.on_quote(&quote("BTC", T0 + 100 * S, 100.0));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0 + 100 * S, 10.0)));
        assert_eq!((r.as_str(), v, l), ("toxicity_halt", 100.0, 600.0));
        // Another symbol trades.
        b.on_quote(&quote("ETH", T0 + 100 * S, 100.0));
        order(b.on_signal(&signal("ETH", T0 + 100 * S, 10.0)));
        // 600 s of data time after the alert, the halt is over.
        b.on_quote(&quote("BTC", T0 + 600 * S - 1, 100.0));
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0 + 600 * S - 1, 10.0)));
        assert_eq!(r, "toxicity_halt");
        b.on_quote(&quote("BTC", T0 + 600 * S, 100.0));
        order(b.on_signal(&signal("BTC", T0 + 600 * S, 10.0)));
    }

    #[test]
    fn rule_stale_price() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        order(b.on_signal(&signal("BTC", T0 + 10 * S, 10.0)));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0 + 11 * S, 20.0)));
        assert_eq!((r.as_str(), v, l), ("stale_price", 11.0, 10.0));
        // Never quoted: the data seen so far bounds the age.
        let a = rejected(b.on_signal(&signal("ETH", T0 + 11 * S, 20.0)));
        assert_eq!(
            (a.rule.as_str(), a.value, a.limit),
            ("stale_price", 11.0, 10.0)
        );
        assert!(a.reason.contains("no quote for ETH"), "{}", a.reason);
    }

    #[test]
    fn rule_max_order_notional() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0, 150.0)));
        assert_eq!((r.as_str(), l), ("max_order_notional", 10_000.0));
        assert!(close(v, 15_000.0), "{v}");
        // Exactly the limit passes.
        order(b.on_signal(&signal("BTC", T0, 100.0)));
    }

    #[test]
    fn rule_max_position_and_reducing_orders() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_execution(&fill("x1", "BTC", Side::Buy, 150.0, T0));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0, 250.0)));
        assert_eq!((r.as_str(), l), ("max_position", 20_000.0));
        assert!(close(v, 25_000.0), "{v}");
        // Above the limit already (a fill of someone else's order), a reducing order passes.
        b.on_execution(&fill("x2", "BTC", Side::Buy, 100.0, T0));
        let o = order(b.on_signal(&signal("BTC", T0, 240.0)));
        assert_eq!((o.side, o.qty), (Side::Sell, 10.0));
        // Short side: -150 to -250 is refused too.
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_execution(&fill("x1", "BTC", Side::Sell, 150.0, T0));
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0, -250.0)));
        assert_eq!(r, "max_position");
    }

    #[test]
    fn rule_gross_notional() {
        let p = RiskParams {
            gross_notional_limit: 20_000.0,
            ..Default::default()
        };
        let mut b = book(p);
        b.on_quote(&quote("BTC", T0, 100.0));
        b.on_quote(&quote("ETH", T0, 100.0));
        b.on_execution(&fill("x1", "BTC", Side::Buy, 150.0, T0));
        let (r, v, l) = rule(b.on_signal(&signal("ETH", T0, -90.0)));
        assert_eq!((r.as_str(), l), ("gross_notional", 20_000.0));
        assert!(close(v, 24_000.0), "{v}");
        // Lowering BTC lowers the gross: passes.
        order(b.on_signal(&signal("BTC", T0, 140.0)));
        // 14000 + 6000 = 20000: at the limit, passes.
        order(b.on_signal(&signal("ETH", T0, -60.0)));
    }

    #[test]
    fn rule_order_rate_in_data_time() {
        let p = RiskParams {
            max_orders_per_min: 2,
            ..Default::default()
        };
        let mut b = book(p);
        b.on_quote(&quote("BTC", T0, 100.0));
        order(b.on_signal(&signal("BTC", T0, 10.0)));
        order(b.on_signal(&signal("BTC", T0 + 5 * S, 20.0)));
        let (r, v, l) = rule(b.on_signal(&signal("BTC", T0 + 9 * S, 30.0)));
        assert_eq!((r.as_str(), v, l), ("order_rate", 3.0, 2.0));
        // 60 s after the first order, it has left the window.
        b.on_quote(&quote("BTC", T0 + 60 * S, 100.0));
        order(b.on_signal(&signal("BTC", T0 + 60 * S, 30.0)));
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0 + 61 * S, 40.0)));
        assert_eq!(r, "order_rate");
    }

    #[test]
    fn the_first_failing_rule_in_order_rejects() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        // Too big, stale and breaker: the breaker is named.
        b.on_flash_crash_alert(&flash(T0));
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0 + 30 * S, 500.0)));
        assert_eq!(r, "circuit_breaker");
        b.reset_breaker();
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0 + 30 * S, 500.0)));
        assert_eq!(r, "stale_price");
        b.on_quote(&quote("BTC", T0 + 30 * S, 100.0));
        let (r, ..) = rule(b.on_signal(&signal("BTC", T0 + 30 * S, 500.0)));
        assert_eq!(r, "max_order_notional");
        // Every rule is checked, in the documented order.
        assert_eq!(
            RiskRule::CHECK_ORDER.map(RiskRule::as_str),
            [
                "circuit_breaker",
                "drawdown_stop",
                "toxicity_halt",
                "stale_price",
                "max_order_notional",
                "max_position",
                "gross_notional",
                "order_rate"
            ]
        );
    }

    #[test]
    fn the_breaker_trips_and_resets_by_data_time() {
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 100.0));
        let a = b.on_flash_crash_alert(&flash(T0 + S));
        assert_eq!(a.action, RiskAction::CircuitBreakerTripped);
        assert_eq!(
            (a.rule.as_str(), a.value, a.limit),
            ("circuit_breaker", 1.0, 0.0)
        );
        assert_eq!(
            (a.symbol.as_deref(), a.order_id, a.ts),
            (Some("BTC"), None, T0 + S)
        );
        assert!(a.reason.contains("price fell 8 sd"), "{}", a.reason);
        assert!(b.breaker().is_some());
        // 1799 s later: still tripped.
        b.on_quote(&quote("BTC", T0 + 1_800 * S, 100.0));
        let (r, v, _) = rule(b.on_signal(&signal("BTC", T0 + 1_800 * S, 10.0)));
        assert_eq!((r.as_str(), v), ("circuit_breaker", 1799.0));
        // 1800 s: reset.
        b.on_quote(&quote("BTC", T0 + 1_801 * S, 100.0));
        assert!(b.breaker().is_none());
        order(b.on_signal(&signal("BTC", T0 + 1_801 * S, 10.0)));
        // A second alert while tripped re-arms from its own ts.
        b.on_flash_crash_alert(&flash(T0 + 1_802 * S));
        let a = b.on_flash_crash_alert(&flash(T0 + 2_000 * S));
        assert_eq!(a.value, 2.0);
        assert!(a.reason.contains("re-armed"), "{}", a.reason);
        b.advance(T0 + 3_700 * S);
        assert!(
            b.breaker().is_some(),
            "1800 s from the second alert, not the first"
        );
        b.advance(T0 + 3_800 * S);
        assert!(b.breaker().is_none());
        // breaker_secs 0: only a reset clears it.
        let mut b = book(RiskParams {
            breaker_secs: 0,
            ..Default::default()
        });
        b.on_flash_crash_alert(&flash(T0));
        b.advance(T0 + 1_000_000 * S);
        assert!(b.breaker().is_some());
        b.reset_breaker();
        assert!(b.breaker().is_none());
    }

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-8);
        assert!((normal_quantile(0.95) - 1.644_853_627).abs() < 1e-8);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.001) + 3.090_232_306).abs() < 1e-8);
    }

    #[test]
    fn var_by_hand_for_two_symbols() {
        // One-minute returns (first quote of each minute):
        //   A: 100 -> 100 e^0.02 -> 100 e^0.01 -> 100: +0.02, -0.01, -0.01
        //   B:  50 ->  50 e^-0.01 -> 50 e^0.01 -> 50: -0.01, +0.02, -0.01
        // Means 0. var A = (4 + 1 + 1)e-4 / 2 = 3e-4, var B = 3e-4,
        // cov = (0.02 x -0.01 + -0.01 x 0.02 + -0.01 x -0.01) / 2 = -1.5e-4.
        // Positions 100 A, 100 B at mids 100, 50: w = (10000, 5000).
        // w'Sw = 1e8 x 3e-4 + 2.5e7 x 3e-4 + 2 x 1e4 x 5e3 x -1.5e-4 = 30000 + 7500 - 15000 = 22500
        // VaR = 2.326347874 x 150 = 348.9521811.
        let p = RiskParams {
            var_limit: 300.0,
            ..Default::default()
        };
        let mut b = book(p);
        let a_mids = [100.0, 100.0 * 0.02f64.exp(), 100.0 * 0.01f64.exp(), 100.0];
        let b_mids = [50.0, 50.0 * (-0.01f64).exp(), 50.0 * 0.01f64.exp(), 50.0];
        for m in 0..4u64 {
            let t = T0 + m * 60 * S;
            assert!(b.on_quote(&quote("A", t, a_mids[m as usize])).is_none());
            assert!(b.on_quote(&quote("B", t + S, b_mids[m as usize])).is_none());
            if m < 3 {
                // Later quotes of the minute are not samples.
                b.on_quote(&quote("A", t + 30 * S, 999.0));
                b.on_quote(&quote("B", t + 30 * S, 1.0));
            }
        }
        assert!(close(b.var(), 0.0), "no positions");
        // Long 100 A alone: z x sqrt(1e8 x 3e-4) = 402.93: crosses 300 from below.
        let a = b
            .on_execution(&fill("1", "A", Side::Buy, 100.0, T0 + 200 * S))
            .unwrap();
        assert_eq!(
            (a.action, a.rule.as_str(), a.limit),
            (RiskAction::VarBreach, "var_limit", 300.0)
        );
        assert_eq!(a.symbol, None);
        assert!(
            close(a.value, 2.326_347_874 * 3.0f64.sqrt() * 100.0),
            "{a:?}"
        );
        // Adding B diversifies to 348.95: still above, no new alert.
        assert!(b
            .on_execution(&fill("2", "B", Side::Buy, 100.0, T0 + 200 * S))
            .is_none());
        let want = normal_quantile(0.99) * 150.0;
        assert!((b.var() - want).abs() < 1e-6, "{} vs {want}", b.var());
        assert!((b.var() - 348.952_181_1).abs() < 1e-5);
        // Selling A drops it below the limit; buying it back crosses again.
        assert!(b
            .on_execution(&fill("3", "A", Side::Sell, 100.0, T0 + 200 * S))
            .is_none());
        assert!(b.var() < 300.0);
        assert!(b
            .on_execution(&fill("4", "A", Side::Buy, 100.0, T0 + 200 * S))
            .is_some());
    }

    #[test]
    fn bad_parameters_are_all_named() {
        let p = RiskParams {
            max_position_notional: -1.0,
            max_orders_per_min: 0,
            max_drawdown: 1.5,
            var_confidence: 1.0,
            account: "a.b".into(),
            ..Default::default()
        };
        assert_eq!(p.problems().len(), 5, "{:?}", p.problems());
        assert!(RiskParams::default().problems().is_empty());
        assert!(serde_json::from_str::<RiskParams>(r#"{"max_drawdown": 0.2, "x": 1}"#).is_err());
        let p: RiskParams = serde_json::from_str(r#"{"reset_breaker": true}"#).unwrap();
        assert!(p.reset_breaker && p.breaker_secs == 1_800);
    }
}
