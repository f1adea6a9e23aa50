//! The Strategy engine: per symbol, a target position from the ML engine's probability and the
//! Factor engine's composite, published as `strategy_signal` when it changes enough.
//!
//! Per symbol, on every input (prediction, factor scores, quote, alert):
//!
//! 1. `score = w_ml x (2 prob_up - 1) + w_factor x composite / 3`, with the latest `prob_up`
//!    (needed: nothing is computed before the first prediction) and the latest composite (0 when
//!    the Factor engine has not scored the symbol yet; the reason says so). Dividing the
//!    composite by 3 puts a z-score mean of typical size into `[-1, 1]` like `2 prob_up - 1`.
//! 2. `target_notional = clip(score, -1, 1) x max_notional`, `target_position = target_notional
//!    / mid`, with the latest quote's mid (nothing is computed before the first quote).
//! 3. While a `toxicity_alert` or a `flash_crash_alert` of the symbol is active, the target is
//!    0 and the signal names the alert in `halted`. An alert is active for `alert_secs` of data
//!    time after its `ts`, measured against the latest data `ts` seen for the symbol (every
//!    input's own timestamp), so a replay gives the same signals as the live run.
//! 4. A signal is published ([`SignalRule`]) when `|target - last published target| x mid`
//!    exceeds `min_change_notional`, or when the target becomes zero from nonzero (a halt or a
//!    neutral score always reaches the Risk engine, however small the position). The last
//!    published target starts at 0 (flat).
//!
//! Inputs are timestamped by their data (`ts` of the prediction, of the factor bar, of the
//! quote, of the alert), never by the wall clock. A prediction, factor score or quote older
//! than the one held for the symbol is not used (a redelivery cannot bring back an old value),
//! though its time still counts toward the symbol's latest data time. Every signal carries the
//! inputs that produced it and the rule in words (`reason`).

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::factor::FactorCalculation;
use dualbus_model::market::Quote;
use dualbus_model::ml::MlPrediction;
use dualbus_model::strategy::{StrategyParams, StrategySignal};
use dualbus_model::vpin::FlashCrashAlert;
use dualbus_model::vpin::ToxicityAlert;
use std::collections::BTreeMap;

const NS: u64 = 1_000_000_000;

/// `w_ml x (2 prob_up - 1) + w_factor x composite / 3` (not clipped).
pub fn score(w_ml: f64, w_factor: f64, prob_up: f64, composite: f64) -> f64 {
    w_ml * (2.0 * prob_up - 1.0) + w_factor * composite / 3.0
}

/// Why a signal is published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SignalTrigger {
    /// The target moved by this notional (`|change| x price`), above the threshold.
    Change {
        /// `|new - last| x price`.
        notional: f64,
    },
    /// The target became zero from nonzero.
    Flattened,
}

/// When a new target is worth publishing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignalRule {
    /// The notional change a signal needs (strictly more than this).
    pub min_change_notional: f64,
}

impl SignalRule {
    /// Whether a move from the last published target `last` to `target` at `price` is
    /// published, and why: the target becomes zero from nonzero, or `|target - last| x price`
    /// exceeds the threshold.
    pub fn check(&self, last: f64, target: f64, price: f64) -> Option<SignalTrigger> {
        if target == 0.0 && last != 0.0 {
            return Some(SignalTrigger::Flattened);
        }
        let notional = (target - last).abs() * price;
        (notional > self.min_change_notional).then_some(SignalTrigger::Change { notional })
    }
}

/// An alert that zeroes a symbol's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// A `flash_crash_alert` (takes precedence when both are active).
    FlashCrash,
    /// A `toxicity_alert`.
    Toxicity,
}

impl Halt {
    /// The alert's kind name (`flash_crash_alert`, `toxicity_alert`).
    pub fn as_str(self) -> &'static str {
        match self {
            Halt::FlashCrash => "flash_crash_alert",
            Halt::Toxicity => "toxicity_alert",
        }
    }
}

#[derive(Clone, Debug)]
struct Alert {
    ts: u64,
    reason: String,
}

#[derive(Clone, Debug, Default)]
struct SymbolState {
    /// (ts, prob_up) of the latest prediction.
    prob: Option<(u64, f64)>,
    /// (ts, composite) of the latest factor bar that scored the symbol.
    composite: Option<(u64, f64)>,
    /// (ts, mid) of the latest quote.
    mid: Option<(u64, f64)>,
    /// The latest data ts seen for the symbol.
    last_ts: u64,
    flash: Option<Alert>,
    toxicity: Option<Alert>,
    /// The last published target position (0 before any signal).
    published: f64,
    /// The one before it, restored when the last signal's publish failed
    /// ([`StrategyState::unpublish`]).
    previous: f64,
    signals: u64,
}

/// The Strategy engine's state without the bus: feed it inputs, get the signals to publish.
#[derive(Clone, Debug)]
pub struct StrategyState {
    params: StrategyParams,
    rule: SignalRule,
    /// Predictions ignored as stale.
    stale: u64,
    symbols: BTreeMap<String, SymbolState>,
}

impl StrategyState {
    /// A state with no data. Parameters are assumed valid ([`StrategyParams::problems`]).
    pub fn new(params: StrategyParams) -> StrategyState {
        StrategyState {
            rule: SignalRule {
                min_change_notional: params.min_change_notional,
            },
            params,
            stale: 0,
            symbols: BTreeMap::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &StrategyParams {
        &self.params
    }

    fn symbol(&mut self, symbol: &str, ts: u64) -> &mut SymbolState {
        if !self.symbols.contains_key(symbol) {
            self.symbols
                .insert(symbol.to_string(), SymbolState::default());
        }
        let st = self.symbols.get_mut(symbol).expect("inserted above");
        st.last_ts = st.last_ts.max(ts);
        st
    }

    /// An ML prediction (ignored if older than the one held for its symbol, or stale: made on
    /// a bar that ended more than one bar before the symbol's latest quote, such as the
    /// predictions on the hub's warm-up bars that reach the strategy after live quotes; acting
    /// on each of them would trade history).
    pub fn on_prediction(&mut self, p: &MlPrediction) -> Option<StrategySignal> {
        let st = self.symbol(&p.symbol, p.ts);
        if st.prob.is_some_and(|(ts, _)| p.ts < ts) || !p.prob_up.is_finite() {
            return None;
        }
        let bar = u64::from(p.horizon_s.max(1)) * 1_000_000_000;
        if st
            .mid
            .is_some_and(|(quote_ts, _)| p.ts.saturating_add(2 * bar) < quote_ts)
        {
            self.stale += 1;
            return None;
        }
        st.prob = Some((p.ts, p.prob_up));
        self.evaluate(&p.symbol)
    }

    /// A factor cross-section: the composite of each symbol it scores (ignored for a symbol
    /// whose composite is from a later bar).
    pub fn on_factors(&mut self, c: &FactorCalculation) -> Vec<StrategySignal> {
        let mut out = Vec::new();
        for (symbol, s) in &c.scores {
            let st = self.symbol(symbol, c.ts);
            if st.composite.is_some_and(|(ts, _)| c.ts < ts) || !s.composite.is_finite() {
                continue;
            }
            st.composite = Some((c.ts, s.composite));
            out.extend(self.evaluate(symbol));
        }
        out
    }

    /// A quote: its mid (ignored unless bid and ask are positive, or if older than the mid
    /// held) and its time.
    pub fn on_quote(&mut self, q: &Quote) -> Option<StrategySignal> {
        let st = self.symbol(&q.symbol, q.ts);
        let mid = q.mid();
        if q.bid > 0.0 && q.ask > 0.0 && mid.is_finite() && st.mid.is_none_or(|(t, _)| q.ts >= t) {
            st.mid = Some((q.ts, mid));
        }
        self.evaluate(&q.symbol)
    }

    /// A `toxicity_alert`: zeroes the symbol's target for `alert_secs` of data time.
    pub fn on_toxicity_alert(&mut self, a: &ToxicityAlert) -> Option<StrategySignal> {
        self.on_alert(&a.symbol, a.ts, Halt::Toxicity, &a.reason)
    }

    /// A `flash_crash_alert`: zeroes the symbol's target for `alert_secs` of data time.
    pub fn on_flash_crash_alert(&mut self, a: &FlashCrashAlert) -> Option<StrategySignal> {
        self.on_alert(&a.symbol, a.ts, Halt::FlashCrash, &a.reason)
    }

    fn on_alert(
        &mut self,
        symbol: &str,
        ts: u64,
        halt: Halt,
        reason: &str,
    ) -> Option<StrategySignal> {
        let st = self.symbol(symbol, ts);
        let slot = match halt {
            Halt::FlashCrash => &mut st.flash,
            Halt::Toxicity => &mut st.toxicity,
        };
        // The latest alert decides how long the halt lasts.
        if slot.as_ref().is_none_or(|old| ts >= old.ts) {
            *slot = Some(Alert {
                ts,
                reason: reason.to_string(),
            });
        }
        self.evaluate(symbol)
    }

    fn active_halt<'a>(&self, st: &'a SymbolState) -> Option<(Halt, &'a Alert)> {
        let span = self.params.alert_secs.saturating_mul(NS);
        let active = |a: &'a Option<Alert>| {
            a.as_ref()
                .filter(|a| st.last_ts < a.ts.saturating_add(span))
        };
        // Flash crash first: the more severe alert is the one named.
        active(&st.flash)
            .map(|a| (Halt::FlashCrash, a))
            .or_else(|| active(&st.toxicity).map(|a| (Halt::Toxicity, a)))
    }

    /// The alert zeroing `symbol`'s target now, if any.
    pub fn halt(&self, symbol: &str) -> Option<Halt> {
        let st = self.symbols.get(symbol)?;
        self.active_halt(st).map(|(h, _)| h)
    }

    /// The last target position published for `symbol` (0 before any signal).
    pub fn published_target(&self, symbol: &str) -> Option<f64> {
        self.symbols.get(symbol).map(|s| s.published)
    }

    /// Symbols seen so far.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.symbols.keys().map(String::as_str)
    }

    /// Signals made so far, all symbols.
    pub fn signals(&self) -> u64 {
        self.symbols.values().map(|s| s.signals).sum()
    }

    /// Predictions ignored as stale (see [`StrategyState::on_prediction`]).
    pub fn stale_predictions(&self) -> u64 {
        self.stale
    }

    fn evaluate(&mut self, symbol: &str) -> Option<StrategySignal> {
        let p = &self.params;
        let st = self.symbols.get(symbol)?;
        let ((_, prob_up), (_, mid)) = (st.prob?, st.mid?);
        let composite = st.composite.map(|(_, c)| c);
        let raw = score(p.w_ml, p.w_factor, prob_up, composite.unwrap_or(0.0));
        let clipped = raw.clamp(-1.0, 1.0);
        let mut how = format!(
            "score {raw:.4} = {} x (2 x prob_up {prob_up:.4} - 1) + {} x composite {} / 3",
            p.w_ml,
            p.w_factor,
            match composite {
                Some(c) => format!("{c:.4}"),
                None => "0 (no factor score yet for the symbol)".to_string(),
            }
        );
        if clipped != raw {
            how.push_str(&format!(", clipped to {clipped}"));
        }
        let halt = self.active_halt(st);
        let (target, notional) = match halt {
            Some((h, a)) => {
                how.push_str(&format!(
                    "; target 0 while the {} of ts {} is active ({} s of data time, latest \
                     data ts {}): {}",
                    h.as_str(),
                    a.ts,
                    p.alert_secs,
                    st.last_ts,
                    a.reason
                ));
                (0.0, 0.0)
            }
            None => {
                let notional = clipped * p.max_notional;
                let target = notional / mid;
                how.push_str(&format!(
                    "; x max notional {} = target notional {notional:.2}, {target} at mid {mid}",
                    p.max_notional
                ));
                (target, notional)
            }
        };
        let last = st.published;
        let why = match self.rule.check(last, target, mid)? {
            SignalTrigger::Flattened => {
                format!("published: the target became zero from {last}")
            }
            SignalTrigger::Change { notional: n } => format!(
                "published: the change from the last published target {last} is {n:.2} \
                 notional, above {}",
                self.rule.min_change_notional
            ),
        };
        let signal = StrategySignal {
            symbol: symbol.to_string(),
            ts: st.last_ts,
            strategy: p.strategy.clone(),
            target_position: target,
            target_notional: notional,
            price: mid,
            score: raw,
            prob_up,
            composite,
            halted: halt.map(|(h, _)| h.as_str().to_string()),
            reason: format!("{how}; {why}"),
        };
        let st = self.symbols.get_mut(symbol).expect("looked up above");
        st.previous = st.published;
        st.published = target;
        st.signals += 1;
        Some(signal)
    }

    /// The last signal of `symbol` could not be published: its target counts as not
    /// published, so the next input of the symbol makes the signal again (if still due).
    pub fn unpublish(&mut self, symbol: &str) {
        if let Some(st) = self.symbols.get_mut(symbol) {
            st.published = st.previous;
            st.signals = st.signals.saturating_sub(1);
        }
    }
}

/// The Strategy engine (`strategy`): reads predictions, factor scores, toxicity and flash
/// crash alerts and quotes, publishes `strategy_signal.{SYMBOL}` (normal priority).
/// Configuration: [`StrategyParams`].
pub struct StrategyEngine {
    state: StrategyState,
}

impl Default for StrategyEngine {
    fn default() -> Self {
        StrategyEngine::new(StrategyParams::default())
    }
}

impl StrategyEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: StrategyParams) -> StrategyEngine {
        StrategyEngine {
            state: StrategyState::new(params),
        }
    }

    /// The state.
    pub fn state(&self) -> &StrategyState {
        &self.state
    }
}

#[async_trait]
impl Engine for StrategyEngine {
    fn name(&self) -> &'static str {
        "strategy"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::StrategySignal]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&[
            "ml_prediction.>",
            "factor_calculation.>",
            "toxicity_alert.>",
            "flash_crash_alert.>",
            "market_data.quote.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        let params = if ctx.config().is_null() {
            self.state.params().clone()
        } else {
            ctx.settings()?
        };
        EngineError::check("strategy", params.problems())?;
        self.state = StrategyState::new(params);
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let s = &mut self.state;
        let signals: Vec<StrategySignal> = match msg.kind {
            EventKind::MlPrediction => s.on_prediction(&msg.decode()?).into_iter().collect(),
            EventKind::FactorCalculation => s.on_factors(&msg.decode()?),
            EventKind::ToxicityAlert => s.on_toxicity_alert(&msg.decode()?).into_iter().collect(),
            EventKind::FlashCrashAlert => {
                s.on_flash_crash_alert(&msg.decode()?).into_iter().collect()
            }
            EventKind::MarketData if msg.topic.as_str().starts_with("market_data.quote.") => {
                s.on_quote(&msg.decode()?).into_iter().collect()
            }
            _ => Vec::new(),
        };
        // A signal that could not be published is taken back: the symbol's next input makes
        // it again (the input itself is not failed: a redelivery would be a duplicate).
        for sig in signals {
            if let Err(e) = ctx.send(&sig).await {
                tracing::warn!(error = %e, symbol = %sig.symbol, "strategy signal not published: made again on the next input");
                self.state.unpublish(&sig.symbol);
            }
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let halted: Vec<&str> = self
            .state
            .symbols()
            .filter(|s| self.state.halt(s).is_some())
            .collect();
        serde_json::json!({
            "symbols": self.state.symbols.len(),
            "signals": self.state.signals(),
            "halted": halted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::factor::FactorScores;
    use dualbus_model::vpin::CrashRule;

    const S: u64 = NS;
    const T0: u64 = 1_717_171_200 * S;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(1.0)
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

    fn prediction(symbol: &str, ts: u64, prob_up: f64) -> MlPrediction {
        MlPrediction {
            symbol: symbol.into(),
            ts,
            horizon_s: 60,
            prob_up,
            expected_return: 0.0,
            model: "m".into(),
            model_version: 1,
            accuracy_500: None,
            scored: 0,
        }
    }

    fn factors(ts: u64, scores: &[(&str, f64)]) -> FactorCalculation {
        FactorCalculation {
            ts,
            bar_secs: 60,
            method: "m".into(),
            scores: scores
                .iter()
                .map(|(s, c)| {
                    let f = FactorScores {
                        momentum: 0.0,
                        reversal: 0.0,
                        low_volatility: 0.0,
                        liquidity: 0.0,
                        composite: *c,
                    };
                    (s.to_string(), f)
                })
                .collect(),
        }
    }

    fn flash(symbol: &str, ts: u64) -> FlashCrashAlert {
        FlashCrashAlert {
            symbol: symbol.into(),
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

    fn toxicity(symbol: &str, ts: u64) -> ToxicityAlert {
        ToxicityAlert {
            symbol: symbol.into(),
            bucket: 7,
            vpin: 0.6,
            percentile: 0.97,
            threshold: 0.95,
            ts,
            reason: "VPIN high".into(),
        }
    }

    #[test]
    fn score_formula_by_hand() {
        // 1 x (2 x 0.7 - 1) + 0.5 x 0.6 / 3 = 0.4 + 0.1 = 0.5
        assert!(close(score(1.0, 0.5, 0.7, 0.6), 0.5));
        // 2 x (2 x 0.25 - 1) + 0.3 x -1.5 / 3 = -1 - 0.15
        assert!(close(score(2.0, 0.3, 0.25, -1.5), -1.15));
        assert_eq!(score(1.0, 0.5, 0.5, 0.0), 0.0);
    }

    #[test]
    fn a_prediction_on_a_bar_long_past_the_quotes_is_stale() {
        let mut s = StrategyState::new(StrategyParams::default());
        let m = 60 * S;
        s.on_quote(&quote("BTC", T0 + 10 * m, 100.0));
        // A warm-up bar's prediction, ten minutes before the quote: not traded.
        assert!(s.on_prediction(&prediction("BTC", T0, 0.9)).is_none());
        assert_eq!(s.stale_predictions(), 1);
        // The bar that just closed (started two bars before the quote at most): traded.
        assert!(s
            .on_prediction(&prediction("BTC", T0 + 8 * m, 0.9))
            .is_some());
        assert_eq!(s.stale_predictions(), 1);
    }

    #[test]
    fn a_signal_carries_the_inputs_that_made_it() {
        let mut s = StrategyState::new(StrategyParams::default());
        assert!(
            s.on_quote(&quote("BTC", T0, 100.0)).is_none(),
            "no prediction yet"
        );
        assert!(s.on_factors(&factors(T0, &[("BTC", 0.6)])).is_empty());
        let sig = s.on_prediction(&prediction("BTC", T0 + S, 0.7)).unwrap();
        // Score 0.5 -> 5000 notional -> 50 at mid 100.
        assert!(close(sig.score, 0.5), "{sig:?}");
        assert!(close(sig.target_notional, 5_000.0), "{sig:?}");
        assert!(close(sig.target_position, 50.0), "{sig:?}");
        assert_eq!(
            (sig.price, sig.prob_up, sig.composite),
            (100.0, 0.7, Some(0.6))
        );
        assert_eq!((sig.ts, sig.halted.as_deref()), (T0 + S, None));
        assert_eq!(sig.strategy, "ml_factor");
        assert!(sig.reason.contains("above 500"), "{}", sig.reason);
        assert_eq!(s.published_target("BTC"), Some(sig.target_position));
    }

    #[test]
    fn a_signal_whose_publish_failed_is_made_again_on_the_next_input() {
        let mut s = StrategyState::new(StrategyParams::default());
        s.on_quote(&quote("BTC", T0, 100.0));
        let first = s.on_prediction(&prediction("BTC", T0 + S, 0.7)).unwrap();
        // Published: the same inputs make nothing new.
        assert!(s.on_quote(&quote("BTC", T0 + 2 * S, 100.0)).is_none());
        // Not published: the next input makes it again.
        s.unpublish("BTC");
        assert_eq!(s.published_target("BTC"), Some(0.0));
        let again = s.on_quote(&quote("BTC", T0 + 3 * S, 100.0)).unwrap();
        assert_eq!(again.target_position, first.target_position);
        assert_eq!(s.published_target("BTC"), Some(first.target_position));
    }

    #[test]
    fn without_a_composite_zero_is_used_and_said() {
        let mut s = StrategyState::new(StrategyParams::default());
        s.on_quote(&quote("ETH", T0, 50.0));
        let sig = s.on_prediction(&prediction("ETH", T0, 0.4)).unwrap();
        // -0.2 x 10000 = -2000 notional, -40 at 50.
        assert!(close(sig.target_position, -40.0), "{sig:?}");
        assert_eq!(sig.composite, None);
        assert!(sig.reason.contains("no factor score yet"), "{}", sig.reason);
    }

    #[test]
    fn no_signal_before_a_mid_is_known() {
        let mut s = StrategyState::new(StrategyParams::default());
        assert!(s.on_prediction(&prediction("BTC", T0, 0.9)).is_none());
        // The quote completes the inputs: the signal comes with it.
        let sig = s.on_quote(&quote("BTC", T0 + S, 200.0)).unwrap();
        assert!(close(sig.target_position, 8_000.0 / 200.0), "{sig:?}");
    }

    #[test]
    fn the_score_is_clipped_to_the_maximum_notional() {
        let p = StrategyParams {
            w_ml: 3.0,
            ..Default::default()
        };
        let mut s = StrategyState::new(p);
        s.on_quote(&quote("BTC", T0, 100.0));
        let sig = s.on_prediction(&prediction("BTC", T0, 0.9)).unwrap();
        // 3 x 0.8 = 2.4, clipped to 1: 10000 notional, 100 at 100.
        assert!(close(sig.score, 2.4));
        assert!(close(sig.target_notional, 10_000.0) && close(sig.target_position, 100.0));
        assert!(sig.reason.contains("clipped to 1"), "{}", sig.reason);
        let sig = s.on_prediction(&prediction("BTC", T0 + S, 0.05)).unwrap();
        assert!(close(sig.target_notional, -10_000.0), "{sig:?}");
    }

    #[test]
    fn small_changes_are_suppressed() {
        let mut s = StrategyState::new(StrategyParams::default());
        s.on_quote(&quote("BTC", T0, 100.0));
        // 0.52 -> 0.04 x 10000 = 400 notional: below 500, nothing published.
        assert!(s.on_prediction(&prediction("BTC", T0, 0.52)).is_none());
        assert_eq!(s.published_target("BTC"), Some(0.0));
        // 0.53 -> 600: published (6 at 100).
        let sig = s.on_prediction(&prediction("BTC", T0 + S, 0.53)).unwrap();
        assert!(close(sig.target_position, 6.0));
        // 0.55 -> 1000 notional, a change of 400 from 600: suppressed; 0.56 -> +600: published.
        assert!(s
            .on_prediction(&prediction("BTC", T0 + 2 * S, 0.55))
            .is_none());
        assert!(s
            .on_prediction(&prediction("BTC", T0 + 3 * S, 0.56))
            .is_some());
        // The mid drifts: 12 at 100 is 1200; at 101 the target is 11.88, a change of 0.12 x 101.
        assert!(s.on_quote(&quote("BTC", T0 + 4 * S, 101.0)).is_none());
        // A zero target from nonzero is always published, however small the change.
        let p = StrategyParams {
            min_change_notional: 1e9,
            ..Default::default()
        };
        let mut s = StrategyState::new(p);
        s.on_quote(&quote("BTC", T0, 100.0));
        s.state_published("BTC", 0.1);
        let sig = s.on_prediction(&prediction("BTC", T0, 0.5)).unwrap();
        assert_eq!(sig.target_position, 0.0);
        assert!(
            sig.reason.contains("became zero from 0.1"),
            "{}",
            sig.reason
        );
        // Zero again: nothing.
        assert!(s.on_prediction(&prediction("BTC", T0 + S, 0.5)).is_none());
    }

    #[test]
    fn the_signal_rule_by_hand() {
        let r = SignalRule {
            min_change_notional: 500.0,
        };
        assert_eq!(r.check(0.0, 5.0, 100.0), None, "exactly 500 is not above");
        assert_eq!(
            r.check(0.0, 5.01, 100.0),
            Some(SignalTrigger::Change { notional: 501.0 })
        );
        assert_eq!(r.check(0.01, 0.0, 100.0), Some(SignalTrigger::Flattened));
        assert_eq!(r.check(0.0, 0.0, 100.0), None);
    }

    #[test]
    fn an_alert_zeroes_the_target_until_it_expires_in_data_time() {
        for (halt, alert) in [(Halt::FlashCrash, true), (Halt::Toxicity, false)] {
            let mut s = StrategyState::new(StrategyParams::default());
            s.on_quote(&quote("BTC", T0, 100.0));
            let sig = s.on_prediction(&prediction("BTC", T0, 0.7)).unwrap();
            assert!(close(sig.target_position, 40.0));
            let sig = if alert {
                s.on_flash_crash_alert(&flash("BTC", T0 + 10 * S))
            } else {
                s.on_toxicity_alert(&toxicity("BTC", T0 + 10 * S))
            }
            .expect("the zero target is published");
            assert_eq!(sig.target_position, 0.0);
            assert_eq!(sig.target_notional, 0.0);
            assert_eq!(sig.halted.as_deref(), Some(halt.as_str()));
            assert_eq!(sig.ts, T0 + 10 * S);
            assert!(
                sig.reason.contains("became zero from 39.99"),
                "{}",
                sig.reason
            );
            assert_eq!(s.halt("BTC"), Some(halt));
            // Another symbol is not halted.
            assert_eq!(s.halt("ETH"), None);
            // Still active 599.999 s after the alert: a new prediction changes nothing.
            assert!(s
                .on_prediction(&prediction("BTC", T0 + 609 * S, 0.9))
                .is_none());
            assert!(s.on_quote(&quote("BTC", T0 + 610 * S - 1, 100.0)).is_none());
            assert_eq!(s.halt("BTC"), Some(halt));
            // At 600 s of data time after the alert, it has expired: the target comes back.
            let sig = s.on_quote(&quote("BTC", T0 + 610 * S, 100.0)).unwrap();
            assert_eq!(s.halt("BTC"), None);
            assert_eq!(sig.halted, None);
            assert!(close(sig.target_position, 80.0), "{sig:?}");
        }
    }

    #[test]
    fn flash_crash_is_named_over_toxicity_and_old_inputs_are_ignored() {
        let mut s = StrategyState::new(StrategyParams::default());
        s.on_quote(&quote("BTC", T0, 100.0));
        s.on_prediction(&prediction("BTC", T0, 0.7)).unwrap();
        let sig = s.on_toxicity_alert(&toxicity("BTC", T0)).unwrap();
        assert_eq!(sig.halted.as_deref(), Some("toxicity_alert"));
        assert!(s.on_flash_crash_alert(&flash("BTC", T0 + S)).is_none());
        assert_eq!(s.halt("BTC"), Some(Halt::FlashCrash));
        // An older prediction does not replace the newer one.
        assert!(s.on_prediction(&prediction("BTC", T0 - S, 0.1)).is_none());
        assert_eq!(s.symbols["BTC"].prob, Some((T0, 0.7)));
        // Nor an older factor bar.
        s.on_factors(&factors(T0, &[("BTC", 1.0)]));
        s.on_factors(&factors(T0 - 60 * S, &[("BTC", -1.0)]));
        assert_eq!(s.symbols["BTC"].composite, Some((T0, 1.0)));
    }

    #[test]
    fn bad_parameters_are_all_named() {
        let p = StrategyParams {
            w_ml: f64::NAN,
            max_notional: 0.0,
            min_change_notional: -1.0,
            alert_secs: 0,
            strategy: String::new(),
            ..Default::default()
        };
        let problems = p.problems();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(StrategyParams::default().problems().is_empty());
        let e = serde_json::from_str::<StrategyParams>(r#"{"w_ml": 1, "wml": 2}"#);
        assert!(e.is_err(), "unknown fields are refused");
    }

    impl StrategyState {
        fn state_published(&mut self, symbol: &str, target: f64) {
            self.symbols.get_mut(symbol).unwrap().published = target;
        }
    }
}
