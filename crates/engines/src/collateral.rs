//! The Collateral engine: the margin an account's positions need, its utilization of the
//! account's equity, and a `margin_call` when the utilization reaches a threshold.
//!
//! # The margin model ([`MarginModel`])
//! * Per position: `margin = |qty x mark| x rate`, `rate = base_rate + vol_multiplier x vol`,
//!   with `vol` the symbol's latest `realized_vol_20` from the Features engine
//!   (`feature_vector.{SYMBOL}`), 0 until one is known. A vector without `realized_vol_20`
//!   (its window is not full yet) leaves the last known value; a vector older than the last one
//!   used, or a value that is not a number at least 0, is ignored.
//! * **Units.** `realized_vol_20` is the sample standard deviation of one-bar log returns of the
//!   Features engine's bars (60 s by default), **per bar, not annualized**: with 1-minute bars a
//!   calm BTC minute is around 0.0005 to 0.001, so the default `vol_multiplier` 10 adds 0.5 to 1
//!   percentage point to the 5% base rate, and a violent minute (0.01) adds 10. With bars of
//!   another length, scale `vol_multiplier` to keep the same margins.
//! * `utilization = margin / equity`. When margin is 0 it is 0 (nothing to margin, whatever the
//!   equity). When margin is positive and equity is not (`equity <= 0`), it is unbounded:
//!   `f64::INFINITY` in Rust and **`null` in JSON** (JSON has no infinity, and a huge number
//!   would read as a real ratio); it never is NaN.
//! * A margin call is raised when the utilization reaches `threshold` (`>=`) while the account
//!   is armed; it disarms the account until the utilization falls back below the threshold, so
//!   there is one call per crossing. Accounts start armed: a first update already above the
//!   threshold calls.
//!
//! # Messages
//! The engine reads `portfolio_update.>` and `feature_vector.>` (one reliable interest),
//! assesses every `portfolio_update` (of `account` when the filter is set, of every account
//! otherwise, each with its own crossing state), and publishes a [`MarginCall`] on
//! `margin_call.{account}` at priority critical (a critical kind: always on the priority lane).
//! Volatilities are read as they come: a vector that arrives after an update is used from the
//! next update on.

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::collateral::{unbounded_as_null, MarginCall, MarginPosition, REDUCE_POSITIONS};
use dualbus_model::features::{FeatureVector, REALIZED_VOL_20};
use dualbus_model::portfolio::PortfolioUpdate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Collateral settings (all configurable in the engine's configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollateralParams {
    /// Margin rate of every position before volatility (0.05: 5% of the notional).
    pub base_rate: f64,
    /// Rate added per unit of per-bar realized volatility (see the module documentation).
    pub vol_multiplier: f64,
    /// Utilization at which a margin call is raised.
    pub threshold: f64,
    /// Only this account's updates (every account when `None`).
    pub account: Option<String>,
}

impl Default for CollateralParams {
    fn default() -> Self {
        CollateralParams {
            base_rate: 0.05,
            vol_multiplier: 10.0,
            threshold: 0.8,
            account: None,
        }
    }
}

impl CollateralParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v) in [
            ("base_rate", self.base_rate),
            ("vol_multiplier", self.vol_multiplier),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                out.push(format!("{name} {v} must be a number at least 0"));
            }
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            out.push(format!(
                "threshold {} must be a positive number",
                self.threshold
            ));
        }
        if self.account.as_deref() == Some("") {
            out.push("account \"\" must not be empty (leave it out for every account)".into());
        }
        out
    }
}

/// An account's margin at one `portfolio_update`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginState {
    /// The account.
    pub account: String,
    /// The update's timestamp, Unix ns.
    pub ts: u64,
    /// The update's equity.
    pub equity: f64,
    /// Margin of all positions.
    pub margin: f64,
    /// `margin / equity` ([`utilization`]); `null` in JSON when unbounded.
    #[serde(with = "unbounded_as_null")]
    pub utilization: f64,
    /// The open positions, as in the update.
    pub positions: Vec<MarginPosition>,
}

/// `margin / equity`: 0 when `margin` is 0, `f64::INFINITY` when margin is positive and
/// `equity` is not; never NaN.
pub fn utilization(margin: f64, equity: f64) -> f64 {
    if margin == 0.0 {
        0.0
    } else if equity > 0.0 {
        margin / equity
    } else {
        f64::INFINITY
    }
}

/// Margins and margin calls, without the bus.
#[derive(Clone, Debug, Default)]
pub struct MarginModel {
    params: CollateralParams,
    /// Per symbol: (timestamp of the vector, realized_vol_20).
    vols: BTreeMap<String, (u64, f64)>,
    /// Per account: `true` while a crossing would call.
    armed: BTreeMap<String, bool>,
    latest: Option<MarginState>,
    calls: u64,
}

impl MarginModel {
    /// A model with `params` (assumed valid: [`CollateralParams::problems`]) and no
    /// volatilities yet.
    pub fn new(params: CollateralParams) -> MarginModel {
        MarginModel {
            params,
            ..Default::default()
        }
    }

    /// The parameters.
    pub fn params(&self) -> &CollateralParams {
        &self.params
    }

    /// Sets `symbol`'s per-bar volatility as of `ts`; an older value than the one held, or one
    /// that is not a number at least 0, is ignored.
    pub fn set_vol(&mut self, symbol: &str, vol: f64, ts: u64) {
        if !(vol.is_finite() && vol >= 0.0) {
            return;
        }
        match self.vols.get_mut(symbol) {
            Some(v) if ts < v.0 => {}
            Some(v) => *v = (ts, vol),
            None => {
                self.vols.insert(symbol.to_string(), (ts, vol));
            }
        }
    }

    /// Takes `realized_vol_20` from a feature vector, when it has one.
    pub fn on_vector(&mut self, v: &FeatureVector) {
        if let Some(&vol) = v.features.get(REALIZED_VOL_20) {
            self.set_vol(&v.symbol, vol, v.ts);
        }
    }

    /// `symbol`'s volatility (0 until known).
    pub fn vol(&self, symbol: &str) -> f64 {
        self.vols.get(symbol).map_or(0.0, |v| v.1)
    }

    /// `symbol`'s margin rate: `base_rate + vol_multiplier x vol`.
    pub fn rate(&self, symbol: &str) -> f64 {
        self.params.base_rate + self.params.vol_multiplier * self.vol(symbol)
    }

    /// The margin of `u`'s positions (flat ones left out) and its utilization.
    pub fn assess(&self, u: &PortfolioUpdate) -> MarginState {
        let positions: Vec<MarginPosition> = u
            .positions
            .iter()
            .filter(|p| p.qty != 0.0)
            .map(|p| {
                let notional = p.qty * p.mark;
                let rate = self.rate(&p.symbol);
                MarginPosition {
                    symbol: p.symbol.clone(),
                    notional,
                    rate,
                    margin: notional.abs() * rate,
                }
            })
            .collect();
        let margin = positions.iter().map(|p| p.margin).sum();
        MarginState {
            account: u.account.clone(),
            ts: u.ts,
            equity: u.equity,
            margin,
            utilization: utilization(margin, u.equity),
            positions,
        }
    }

    /// Assesses an update (ignored when the account filter excludes it) and returns the margin
    /// call when its utilization reaches the threshold from below.
    pub fn on_update(&mut self, u: &PortfolioUpdate) -> Option<MarginCall> {
        if self
            .params
            .account
            .as_ref()
            .is_some_and(|a| *a != u.account)
        {
            return None;
        }
        let s = self.assess(u);
        let threshold = self.params.threshold;
        let above = s.utilization >= threshold;
        if !self.armed.contains_key(&u.account) {
            self.armed.insert(u.account.clone(), true);
        }
        let armed = self.armed.get_mut(&u.account).expect("inserted above");
        let call = above && *armed;
        *armed = !above;
        let out = call.then(|| {
            self.calls += 1;
            let reason = if s.utilization.is_finite() {
                format!(
                    "margin utilisation {:.1}% (margin {:.2} on equity {:.2}) reached the \
                     {:.1}% threshold",
                    s.utilization * 100.0,
                    s.margin,
                    s.equity,
                    threshold * 100.0
                )
            } else {
                format!(
                    "equity {:.2} is not positive while the positions need margin {:.2}: \
                     utilisation unbounded, above the {:.1}% threshold",
                    s.equity,
                    s.margin,
                    threshold * 100.0
                )
            };
            MarginCall {
                account: s.account.clone(),
                ts: s.ts,
                margin_utilization: s.utilization,
                threshold,
                equity: s.equity,
                margin: s.margin,
                positions: s.positions.clone(),
                action: REDUCE_POSITIONS.to_string(),
                reason,
            }
        });
        self.latest = Some(s);
        out
    }

    /// The latest assessment.
    pub fn latest(&self) -> Option<&MarginState> {
        self.latest.as_ref()
    }

    /// Margin calls raised so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Symbols with a known volatility.
    pub fn symbols_with_vol(&self) -> usize {
        self.vols.len()
    }
}

/// The Collateral engine (`collateral`): reads `portfolio_update.>` and `feature_vector.>`,
/// publishes `margin_call.{account}` at priority critical. Configuration:
/// [`CollateralParams`].
#[derive(Default)]
pub struct CollateralEngine {
    model: MarginModel,
    calls: Vec<MarginCall>,
}

impl CollateralEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: CollateralParams) -> CollateralEngine {
        CollateralEngine {
            model: MarginModel::new(params),
            calls: Vec::new(),
        }
    }

    /// The margin model.
    pub fn model(&self) -> &MarginModel {
        &self.model
    }

    /// Margin calls raised so far.
    pub fn margin_calls(&self) -> &[MarginCall] {
        &self.calls
    }
}

#[async_trait]
impl Engine for CollateralEngine {
    fn name(&self) -> &'static str {
        "collateral"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::MarginCall]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&[
            "portfolio_update.>",
            "feature_vector.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.model = MarginModel::new(ctx.settings()?);
        }
        EngineError::check("collateral", self.model.params().problems())?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        match msg.kind {
            EventKind::FeatureVector => {
                let v: FeatureVector = msg.decode()?;
                self.model.on_vector(&v);
            }
            EventKind::PortfolioUpdate => {
                let u: PortfolioUpdate = msg.decode()?;
                if let Some(call) = self.model.on_update(&u) {
                    ctx.count_alert("margin_call", "margin_utilization");
                    // The crossing is recorded now; a failed publish is logged, not retried
                    // (a redelivered update no longer crosses).
                    if let Err(e) = ctx.send(&call).await {
                        tracing::warn!(account = %call.account, error = %e, "margin call not published");
                    }
                    self.calls.push(call);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let latest = self.model.latest();
        serde_json::json!({
            "account": latest.map(|s| s.account.clone()),
            "margin_utilization": latest.map(|s| s.utilization).filter(|u| u.is_finite()),
            "utilization_unbounded": latest.is_some_and(|s| !s.utilization.is_finite()),
            "equity": latest.map(|s| s.equity),
            "margin": latest.map(|s| s.margin),
            "margin_calls": self.model.calls(),
            "symbols_with_vol": self.model.symbols_with_vol(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::portfolio::PositionView;

    fn position(symbol: &str, qty: f64, mark: f64) -> PositionView {
        PositionView {
            symbol: symbol.into(),
            qty,
            avg_price: mark,
            mark,
            unrealized_pnl: 0.0,
            realized_pnl: 0.0,
        }
    }

    fn update(ts: u64, equity: f64, positions: Vec<PositionView>) -> PortfolioUpdate {
        PortfolioUpdate {
            account: "main".into(),
            ts,
            equity,
            cash: 0.0,
            realized_pnl: 0.0,
            unrealized_pnl: 0.0,
            fees: 0.0,
            gross_exposure: 0.0,
            net_exposure: 0.0,
            peak_equity: equity,
            drawdown: 0.0,
            fills: 0,
            positions,
        }
    }

    fn vector(symbol: &str, ts: u64, vol: Option<f64>) -> FeatureVector {
        FeatureVector {
            symbol: symbol.into(),
            ts,
            bar_secs: 60,
            close: 1.0,
            volume: 1.0,
            features: vol
                .map(|v| (REALIZED_VOL_20.to_string(), v))
                .into_iter()
                .collect(),
        }
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// BTC vol 0.002, ETH vol 0.003 (defaults: base 0.05, k 10).
    fn model() -> MarginModel {
        let mut m = MarginModel::new(CollateralParams::default());
        m.on_vector(&vector("BTCUSDT", 60, Some(0.002)));
        m.on_vector(&vector("ETHUSDT", 60, Some(0.003)));
        m
    }

    #[test]
    fn margin_of_two_positions_by_hand() {
        let m = model();
        // BTC 2 @ 50000: notional 100000, rate 0.05 + 10 x 0.002 = 0.07, margin 7000.
        // ETH -10 @ 3000: notional -30000, rate 0.05 + 10 x 0.003 = 0.08, margin 2400.
        // A flat SOL is left out. Utilization 9400 / 50000 = 0.188.
        let u = update(
            1,
            50_000.0,
            vec![
                position("BTCUSDT", 2.0, 50_000.0),
                position("ETHUSDT", -10.0, 3_000.0),
                position("SOLUSDT", 0.0, 150.0),
            ],
        );
        let s = m.assess(&u);
        assert_eq!(s.positions.len(), 2);
        let (b, e) = (&s.positions[0], &s.positions[1]);
        assert_eq!((b.symbol.as_str(), b.notional), ("BTCUSDT", 100_000.0));
        assert!(near(b.rate, 0.07) && near(b.margin, 7_000.0), "{b:?}");
        assert_eq!(e.notional, -30_000.0);
        assert!(near(e.rate, 0.08) && near(e.margin, 2_400.0), "{e:?}");
        assert!(
            near(s.margin, 9_400.0) && near(s.utilization, 0.188),
            "{s:?}"
        );
    }

    #[test]
    fn volatility_is_zero_until_known_and_keeps_its_last_value() {
        let mut m = MarginModel::new(CollateralParams::default());
        assert_eq!(m.rate("BTCUSDT"), 0.05);
        m.on_vector(&vector("BTCUSDT", 60, Some(0.004)));
        assert!(near(m.rate("BTCUSDT"), 0.09));
        // Without the feature (window not full): kept. Older, negative or NaN: ignored.
        m.on_vector(&vector("BTCUSDT", 120, None));
        m.on_vector(&vector("BTCUSDT", 30, Some(0.1)));
        m.set_vol("BTCUSDT", -1.0, 200);
        m.set_vol("BTCUSDT", f64::NAN, 200);
        assert_eq!(m.vol("BTCUSDT"), 0.004);
        m.on_vector(&vector("BTCUSDT", 180, Some(0.001)));
        assert_eq!(m.vol("BTCUSDT"), 0.001);
    }

    #[test]
    fn a_call_per_crossing_from_below_re_armed_below_the_threshold() {
        let mut m = model();
        // BTC at 50000, rate 0.07, equity 100000: utilization = qty x 3500 / 100000.
        let at =
            |ts: u64, qty: f64| update(ts, 100_000.0, vec![position("BTCUSDT", qty, 50_000.0)]);
        assert!(m.on_update(&at(1, 10.0)).is_none(), "0.35");
        let c = m.on_update(&at(2, 25.0)).expect("0.875 crosses 0.8");
        assert!(
            near(c.margin_utilization, 0.875) && near(c.margin, 87_500.0),
            "{c:?}"
        );
        assert_eq!(
            (c.ts, c.threshold, c.action.as_str()),
            (2, 0.8, REDUCE_POSITIONS)
        );
        assert_eq!(c.positions.len(), 1);
        assert!(
            c.reason.contains("87.5%") && c.reason.contains("80.0%"),
            "{}",
            c.reason
        );
        assert!(
            m.on_update(&at(3, 30.0)).is_none(),
            "still above: no new call"
        );
        assert!(m.on_update(&at(4, 20.0)).is_none(), "0.7: below, re-armed");
        let c = m
            .on_update(&at(5, 22.9))
            .expect("0.8015 after re-arming: a new call");
        assert!(near(c.margin_utilization, 0.8015), "{c:?}");
        assert_eq!(m.calls(), 2);
    }

    #[test]
    fn exactly_the_threshold_calls_and_accounts_cross_separately() {
        let mut m = MarginModel::new(CollateralParams {
            base_rate: 0.5,
            vol_multiplier: 0.0,
            ..Default::default()
        });
        // 0.5 x 160 / 100 = 0.8 exactly.
        let mut u = update(1, 100.0, vec![position("X", 1.0, 160.0)]);
        assert!(m.on_update(&u).is_some());
        u.account = "other".into();
        assert!(
            m.on_update(&u).is_some(),
            "another account has its own crossing"
        );
        u.account = "main".into();
        assert!(m.on_update(&u).is_none());
        // With a filter, other accounts are not even assessed.
        let mut f = MarginModel::new(CollateralParams {
            account: Some("main".into()),
            ..m.params().clone()
        });
        u.account = "other".into();
        assert!(f.on_update(&u).is_none());
        assert!(f.latest().is_none());
    }

    #[test]
    fn equity_at_or_below_zero_is_unbounded_utilization_never_nan() {
        assert_eq!(utilization(0.0, -5.0), 0.0);
        assert_eq!(utilization(0.0, 0.0), 0.0);
        assert_eq!(utilization(10.0, 0.0), f64::INFINITY);
        assert_eq!(utilization(10.0, -5.0), f64::INFINITY);
        assert_eq!(utilization(10.0, f64::NAN), f64::INFINITY);
        assert_eq!(utilization(10.0, 50.0), 0.2);
        let mut m = model();
        let c = m
            .on_update(&update(7, -250.0, vec![position("BTCUSDT", 1.0, 50_000.0)]))
            .expect("an unbounded utilization is above any threshold");
        assert_eq!(c.margin_utilization, f64::INFINITY);
        assert!(
            c.reason.contains("equity -250.00 is not positive"),
            "{}",
            c.reason
        );
        // On the wire: null, and null reads back as infinity.
        let json = serde_json::to_value(&c).unwrap();
        assert!(json["margin_utilization"].is_null(), "{json}");
        let back: MarginCall = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        // Flat with negative equity: nothing to margin, no call, re-armed.
        assert!(m.on_update(&update(8, -250.0, vec![])).is_none());
        assert_eq!(m.latest().unwrap().utilization, 0.0);
    }

    #[test]
    fn bad_parameters_are_named() {
        let p = CollateralParams {
            base_rate: -0.1,
            vol_multiplier: f64::INFINITY,
            threshold: 0.0,
            account: Some(String::new()),
        };
        let all = p.problems().join("; ");
        for needle in [
            "base_rate -0.1",
            "vol_multiplier inf",
            "threshold 0",
            "account \"\"",
        ] {
            assert!(all.contains(needle), "{all}");
        }
        assert!(CollateralParams::default().problems().is_empty());
    }
}
