//! The pre-trade checks: the rules, the breaker, and the check of one proposed order.

use super::*;

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
pub(super) fn exceeds(value: f64, limit: f64) -> bool {
    value > limit + TOLERANCE * limit.abs()
}

pub(super) fn secs(ns: u64) -> f64 {
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
            // An order that only cuts exposure is never refused: not by a halt (which would
            // hold the risk it is meant to stop), not by the order size or rate limits (a
            // position grown past max_order_notional by a price move must still be closable),
            // not for want of a fresh price (the venue refuses a stale quote itself).
            RiskRule::CircuitBreaker
            | RiskRule::DrawdownStop
            | RiskRule::ToxicityHalt
            | RiskRule::StalePrice
            | RiskRule::MaxOrderNotional
            | RiskRule::OrderRate
                if derisking => {}
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
