//! The Risk engine's book: positions, pending orders, quotes, alerts, equity, the breaker and
//! the VaR, fed inputs without the bus.

use super::checks::{exceeds, secs};
use super::var::covariance;
use super::*;

/// What a signal became.
#[derive(Clone, Debug, PartialEq)]
pub enum SignalOutcome {
    /// An order to publish on `order_request.{SYMBOL}`.
    Order(OrderRequest),
    /// A rejection to publish on `risk_alert.{SYMBOL}`.
    Rejected(RiskAlert),
    /// An order that would have turned the position round was refused; its reducing part (a
    /// flatten, which takes no new risk) goes out instead: the order to publish, and the alert
    /// saying what was refused and why.
    Cut(OrderRequest, RiskAlert),
    /// Nothing to do, and why (the difference is below `min_order_notional`).
    Ignored(String),
}

#[derive(Clone, Debug, Default)]
pub(super) struct SymbolBook {
    pub(super) position: f64,
    mid: Option<f64>,
    quote_ts: Option<u64>,
    last_fill_price: Option<f64>,
    toxicity_ts: Option<u64>,
    /// The latest target of the strategy's signals.
    target: Option<f64>,
    /// Data time of the latest order built toward the target (sent or refused).
    last_attempt: Option<u64>,
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
    pub(super) symbols: BTreeMap<String, SymbolBook>,
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
    /// An empty book whose orders are named `{instance}-{n:06}` (the engine passes its instance
    /// and start time as `instance`: [`order_id_prefix`]). Parameters are assumed valid
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

    /// A strategy signal: the order for the difference, checked. The target is remembered: an
    /// order toward it that only cuts exposure is sent again if it does not fill
    /// ([`RiskBook::resend`]).
    pub fn on_signal(&mut self, sig: &StrategySignal) -> SignalOutcome {
        self.advance(sig.ts);
        self.symbol(&sig.symbol).target = Some(sig.target_position);
        self.order_toward(&sig.symbol, sig.target_position, sig.price)
    }

    /// After a quote of `symbol`: when its position is not at the strategy's latest target, no
    /// order of it is pending, the way to the target cuts exposure (a reduction or a flatten;
    /// for a target across zero, only the flatten), and [`RESEND_SECS`] of data time have passed since the
    /// last order toward it, the order for the difference again (the venue may have rejected
    /// the last one, or Risk itself before the strategy's halt reached it).
    pub fn resend(&mut self, symbol: &str) -> Option<SignalOutcome> {
        let s = self.symbols.get(symbol)?;
        let position = s.position;
        // A target across zero (a turn round whose order did not fill): only its reducing
        // part, the flatten, is sent again; the new risk waits for the next signal.
        let target = match s.target? {
            t if t * position < 0.0 => 0.0,
            t => t,
        };
        let reducing = target.abs() < position.abs();
        let due = s
            .last_attempt
            .is_none_or(|t| self.now.saturating_sub(t) >= RESEND_SECS * NS);
        if !reducing || !due || self.pending_qty(symbol) != 0.0 {
            return None;
        }
        let price = s.mid?;
        match self.order_toward(symbol, target, price) {
            SignalOutcome::Ignored(_) => None,
            out => Some(out),
        }
    }

    /// Forgets a sent order whose publish failed: it is no longer pending, so the exposure is
    /// the position again and the order can be sent anew ([`RiskBook::resend`]).
    pub fn forget(&mut self, order_id: &str) {
        self.pending.remove(order_id);
    }

    /// The order for `target - (position + pending)` of `symbol`, valued at its mid (or
    /// `fallback_price` before a quote), checked.
    fn order_toward(&mut self, symbol: &str, target: f64, fallback_price: f64) -> SignalOutcome {
        let (position, pending) = (self.position(symbol), self.pending_qty(symbol));
        let qty = target - (position + pending);
        let price = self.mid(symbol).unwrap_or(fallback_price);
        let p = self.params();
        let notional = qty.abs() * price;
        if !notional.is_finite() || notional < p.min_order_notional || qty == 0.0 {
            return SignalOutcome::Ignored(format!(
                "target {target} of {symbol} is within {} notional of position {position} + \
                 pending {pending} at {price}: no order",
                p.min_order_notional
            ));
        }
        let now = self.now;
        self.symbol(symbol).last_attempt = Some(now);
        let (order_id, what) = self.name_order(symbol, qty, target, position, pending);
        let proposed = ProposedOrder {
            symbol: symbol.to_string(),
            qty,
            price,
        };
        let Err(r) = self.checks.check(self, &proposed) else {
            return SignalOutcome::Order(self.send(order_id, symbol, qty, &what));
        };
        *self.rejects.entry(r.rule.as_str()).or_default() += 1;
        let alert = RiskAlert {
            rule: r.rule.as_str().to_string(),
            symbol: Some(symbol.to_string()),
            ts: self.now,
            value: r.value,
            limit: r.limit,
            action: RiskAction::RejectOrder,
            order_id: Some(order_id),
            reason: format!("{what} rejected by {}: {}", r.rule.as_str(), r.reason),
        };
        // An order that turns the position round: its reducing part takes no new risk and
        // passes the halts and limits (PreTradeChecks), so the position is at least flat.
        let exposure = position + pending;
        let turns = exposure != 0.0 && (exposure + qty) * exposure < 0.0;
        if turns {
            let flatten = -exposure;
            let part = ProposedOrder {
                symbol: symbol.to_string(),
                qty: flatten,
                price,
            };
            if self.checks.check(self, &part).is_ok() {
                let (id, what) = self.name_order(symbol, flatten, target, position, pending);
                let order = self.send(id, symbol, flatten, &what);
                let alert = RiskAlert {
                    reason: format!(
                        "{}; its reducing part, {what}, is sent instead",
                        alert.reason
                    ),
                    ..alert
                };
                return SignalOutcome::Cut(order, alert);
            }
        }
        SignalOutcome::Rejected(alert)
    }

    /// The next order id, and the order in words.
    fn name_order(
        &mut self,
        symbol: &str,
        qty: f64,
        target: f64,
        position: f64,
        pending: f64,
    ) -> (String, String) {
        self.next_id += 1;
        let order_id = format!("{}-{:06}", self.instance, self.next_id);
        let what = format!(
            "order {order_id} to {} {} {symbol} (target {target} from position {position} + \
             pending {pending})",
            if qty > 0.0 { "buy" } else { "sell" },
            qty.abs(),
        );
        (order_id, what)
    }

    /// Records an order as sent and pending; the request to publish.
    fn send(&mut self, order_id: String, symbol: &str, qty: f64, what: &str) -> OrderRequest {
        self.pending
            .insert(order_id.clone(), (symbol.to_string(), qty));
        self.sent.push_back(self.now);
        self.orders += 1;
        tracing::debug!(%what, "order sent");
        OrderRequest {
            order_id,
            symbol: symbol.to_string(),
            side: if qty > 0.0 { Side::Buy } else { Side::Sell },
            qty: qty.abs(),
            order_type: OrderType::Market,
            limit_price: None,
        }
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
