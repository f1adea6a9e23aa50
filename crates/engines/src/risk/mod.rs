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
//! id, `{instance}-{start}-{n:06}` from 1, `start` being the engine's start time (Unix
//! milliseconds in base 36), so that a restarted engine never reissues an id that a Portfolio
//! engine still running would drop as a duplicate (every order built gets one, sent or
//! rejected, so a rejection can name it), and goes through the checks. A passing order
//! is published as a market order (`dualbus_model::orders::OrderRequest`) on
//! `order_request.{SYMBOL}` at high priority; a rejected one becomes a `risk_alert` naming the
//! rule, the value and the limit. A rejected signal that would add risk is not retried: the
//! next signal is. An order that would turn the position round and is refused sends its
//! reducing part instead (the sale of a whole long, say), with the alert. And when a symbol's
//! position is not at the latest target, the way there only cuts exposure, and no order of it
//! is pending, each quote of it at least [`RESEND_SECS`] after the last order toward that
//! target sends the order again ([`RiskBook::resend`]; for a target across zero, only the
//! flatten): a flatten the venue rejected, or whose publish failed, is not left undone.
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
//! target during an alert flattens the position instead of holding it through the crash. Such
//! an order also passes `stale_price`, `max_order_notional` and `order_rate` below: a position
//! that a price move grew past the order limit must still be closable (the venue refuses a
//! stale quote itself).
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
//!
//! # Layout
//! * this file: the parameters and the engine on the bus;
//! * `checks`: the rules, the breaker and the pre-trade check of one order ([`PreTradeChecks`]);
//! * `book`: the state fed by the inputs, which turns signals into orders or rejections
//!   ([`RiskBook`]);
//! * `var`: the VaR's covariances and the normal quantile.

mod book;
mod checks;
mod var;

pub use book::{RiskBook, SignalOutcome};
pub use checks::{Breaker, PreTradeChecks, ProposedOrder, Rejection, RiskRule};
pub use var::normal_quantile;

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{now_unix_nanos, Envelope, EventKind};
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

/// Seconds of data time between two orders toward the same target that only cut exposure
/// ([`RiskBook::resend`]): a flatten the venue rejected goes out again on a later quote.
pub const RESEND_SECS: u64 = 5;

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
    /// Publishes an order; one whose publish fails is no longer pending (it can be sent again,
    /// [`RiskBook::resend`]).
    async fn send(&mut self, ctx: &EngineContext, o: OrderRequest) {
        if let Err(e) = ctx.send(&o).await {
            tracing::warn!(error = %e, order = %o.order_id, "order not published");
            self.book.forget(&o.order_id);
        }
    }

    /// Publishes an order of `out`; returns the alert to publish, if any.
    async fn outcome(&mut self, ctx: &EngineContext, out: SignalOutcome) -> Option<RiskAlert> {
        match out {
            SignalOutcome::Order(o) => {
                self.send(ctx, o).await;
                None
            }
            SignalOutcome::Cut(o, a) => {
                self.send(ctx, o).await;
                Some(a)
            }
            SignalOutcome::Rejected(a) => Some(a),
            SignalOutcome::Ignored(why) => {
                self.ignored += 1;
                tracing::debug!(%why, "signal ignored");
                None
            }
        }
    }

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
        self.book = RiskBook::new(params, &order_id_prefix(ctx.instance(), now_unix_nanos()));
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
            EventKind::StrategySignal => {
                let out = b.on_signal(&msg.decode()?);
                self.outcome(ctx, out).await
            }
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
                let q: Quote = msg.decode()?;
                let var = b.on_quote(&q);
                if let Some(out) = b.resend(&q.symbol) {
                    if let Some(a) = self.outcome(ctx, out).await {
                        publish_alert(ctx, &a).await;
                    }
                }
                var
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

/// The prefix of a Risk engine's order ids: its instance and its start time (Unix ms, base 36:
/// `risk-1-mhz3w7k0`), so ids stay unique across restarts of the same instance.
pub fn order_id_prefix(instance: &str, start_unix_ns: u64) -> String {
    let mut ms = start_unix_ns / 1_000_000;
    let mut digits = Vec::new();
    loop {
        let d = (ms % 36) as u32;
        digits.push(std::char::from_digit(d, 36).unwrap_or('0'));
        ms /= 36;
        if ms == 0 {
            break;
        }
    }
    let start: String = digits.into_iter().rev().collect();
    format!("{instance}-{start}")
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

    #[test]
    fn a_flatten_grown_past_the_order_limit_is_sent_and_resent_until_flat() {
        // The issue's case with the defaults: a target clipped at 10,000 USD of BTC bought at
        // 60,000; the mid rises to 62,900 (a change of 483, under the strategy's 500
        // threshold, so no new signal); a flash crash alert makes the target 0. The flatten is
        // worth 10,483 > max_order_notional 10,000: it used to be refused, and the position
        // held through the halt.
        let p = RiskParams::default();
        assert_eq!(p.max_order_notional, 10_000.0);
        let mut b = book(p);
        let qty = 10_000.0 / 60_000.0;
        b.on_quote(&quote("BTC", T0, 60_000.0));
        let buy = order(b.on_signal(&signal("BTC", T0 + S, qty)));
        b.on_execution(&fill(&buy.order_id, "BTC", Side::Buy, qty, T0 + S));
        b.on_quote(&quote("BTC", T0 + 2 * S, 62_900.0));
        b.on_flash_crash_alert(&flash(T0 + 3 * S));
        let flatten = order(b.on_signal(&signal("BTC", T0 + 3 * S, 0.0)));
        assert_eq!((flatten.side, flatten.qty), (Side::Sell, qty));
        // The venue rejects it (a stale quote, say): nothing is pending, the position is
        // still held. A quote within RESEND_SECS sends nothing; one after sends it again.
        b.on_execution(&Execution {
            status: ExecStatus::Rejected,
            qty: 0.0,
            reason: Some("stale quote".into()),
            ..fill(&flatten.order_id, "BTC", Side::Sell, 0.0, T0 + 3 * S)
        });
        assert_eq!(b.position("BTC"), qty);
        b.on_quote(&quote("BTC", T0 + 4 * S, 62_000.0));
        assert_eq!(
            b.resend("BTC"),
            None,
            "within RESEND_SECS of the last order"
        );
        b.on_quote(&quote("BTC", T0 + 9 * S, 61_000.0));
        let again = order(b.resend("BTC").expect("sent again"));
        assert_eq!((again.side, again.qty), (Side::Sell, qty));
        assert_ne!(again.order_id, flatten.order_id);
        // Pending: not sent a third time. Filled: flat during the halt, nothing more to do.
        b.on_quote(&quote("BTC", T0 + 20 * S, 61_000.0));
        assert_eq!(b.resend("BTC"), None);
        b.on_execution(&fill(&again.order_id, "BTC", Side::Sell, qty, T0 + 21 * S));
        assert!(b.breaker().is_some(), "still within the halt");
        assert_eq!(b.position("BTC"), 0.0);
        b.on_quote(&quote("BTC", T0 + 40 * S, 61_000.0));
        assert_eq!(b.resend("BTC"), None);
    }

    #[test]
    fn a_refused_turn_round_sends_its_reducing_part() {
        // Long 0.15 BTC at 60,000 (9,000); a target of -0.15 asks for a sale of 0.3 (18,000 >
        // 10,000): refused, and the sale of the 0.15 held goes out instead.
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 60_000.0));
        let buy = order(b.on_signal(&signal("BTC", T0 + S, 0.15)));
        b.on_execution(&fill(&buy.order_id, "BTC", Side::Buy, 0.15, T0 + S));
        let (o, a) = match b.on_signal(&signal("BTC", T0 + 2 * S, -0.15)) {
            SignalOutcome::Cut(o, a) => (o, a),
            other => panic!("not cut: {other:?}"),
        };
        assert_eq!((o.side, o.qty), (Side::Sell, 0.15));
        assert_eq!(a.rule, "max_order_notional");
        assert!(a.reason.contains("its reducing part"), "{}", a.reason);
        // The venue rejects the reducing part: a quote 5 s later sends the flatten again, not
        // the turn round.
        b.on_execution(&Execution {
            status: ExecStatus::Rejected,
            qty: 0.0,
            reason: Some("stale quote".into()),
            ..fill(&o.order_id, "BTC", Side::Sell, 0.0, T0 + 2 * S)
        });
        b.on_quote(&quote("BTC", T0 + 8 * S, 60_000.0));
        let again = order(b.resend("BTC").expect("the flatten again"));
        assert_eq!((again.side, again.qty), (Side::Sell, 0.15));
        // A turn round that fits the limits goes out whole.
        let mut b = book(RiskParams::default());
        b.on_quote(&quote("BTC", T0, 60_000.0));
        let buy = order(b.on_signal(&signal("BTC", T0 + S, 0.05)));
        b.on_execution(&fill(&buy.order_id, "BTC", Side::Buy, 0.05, T0 + S));
        let whole = order(b.on_signal(&signal("BTC", T0 + 2 * S, -0.05)));
        assert_eq!((whole.side, whole.qty), (Side::Sell, 0.1));
        // Rejected by the venue, or its publish failed (forgotten): only the flatten of the
        // 0.05 held is sent again.
        b.forget(&whole.order_id);
        b.on_quote(&quote("BTC", T0 + 8 * S, 60_000.0));
        let again = order(b.resend("BTC").expect("the flatten"));
        assert_eq!((again.side, again.qty), (Side::Sell, 0.05));
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
    fn order_ids_of_a_restarted_engine_differ() {
        let t = 1_767_571_200_000_000_000; // 2026-01-05 00:00 UTC
        assert_eq!(order_id_prefix("risk-1", t), "risk-1-mk0e96o0");
        assert_eq!(order_id_prefix("risk-1", 0), "risk-1-0");
        // A restart a millisecond later names its orders differently.
        assert_ne!(
            order_id_prefix("risk-1", t),
            order_id_prefix("risk-1", t + 1_000_000)
        );
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
        // Flat: a sell of the whole 10 passes the halt.
        let mut flat = b.clone();
        let o = order(flat.on_signal(&signal("BTC", T0 + 3 * S, 0.0)));
        assert_eq!((o.side, o.qty), (Side::Sell, 10.0));
        // Turning the long into a short is new risk too: refused, and its reducing part (the
        // sale of the 10 held) goes out instead.
        match b.on_signal(&signal("BTC", T0 + 3 * S, -5.0)) {
            SignalOutcome::Cut(o, a) => {
                assert_eq!((o.side, o.qty), (Side::Sell, 10.0));
                assert_eq!(a.rule, "circuit_breaker");
            }
            other => panic!("not cut: {other:?}"),
        }
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
