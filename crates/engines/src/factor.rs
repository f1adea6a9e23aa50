//! The Factor engine: cross-sectional factor scores over the whole universe at each bar close,
//! from the `feature_vector`s (only their `close` and `volume` are used).
//!
//! Per symbol, the last 21 bars (the symbol's own vectors, in order: a period without trades
//! has no vector, so "20 bars back" is the symbol's 20th previous bar). Raw factors of bar `t`,
//! defined once the symbol has 21 bars:
//! * momentum = `ln(close_t / close_(t-20))`;
//! * reversal = `-ln(close_t / close_(t-1))`;
//! * low_volatility = minus the sample standard deviation (n - 1) of the last 20 one-bar log
//!   returns;
//! * liquidity = `(volume_t - mean) / sd` over the previous 20 volumes (sample sd; 0 when the
//!   sd is 0).
//!
//! Each factor is z-scored across the symbols of the bar's cross-section (those with all four
//! raw factors): `(x - mean) / sd` with the population sd, 0 when the sd is 0. The composite is
//! the mean of the four z-scores. A cross-section needs at least 2 symbols; with fewer nothing
//! is published for that period.
//!
//! Grouping: vectors are keyed by bar start (`ts`). Period `T` is processed (published, if its
//! cross-section has 2 symbols) when every symbol seen so far has delivered `T` or a later
//! period (a symbol's vectors arrive in order, so one that moved past `T` had no trade in it),
//! when a vector of a period `>= T + 2 bar_secs` arrives (symbols that have not delivered `T`
//! are left out of it), or at stop. Periods are processed in increasing order, once each. A
//! vector for a period already processed is late: left out (counted), but it still enters its
//! symbol's history so that the symbol's later returns stay one bar long. A vector not after
//! its symbol's previous one is a duplicate and ignored (counted).
//!
//! The engine works at one bar length: that of the first vector it sees; vectors of another
//! `bar_secs` are ignored (counted).

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use crate::stats::mean_sd;
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::factor::FactorScores;
use dualbus_model::factor::{FactorCalculation, METHOD};
use dualbus_model::features::FeatureVector as FeatureInput;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bars per symbol the raw factors need (20 returns).
pub const HISTORY: usize = 21;

/// A symbol's raw (not yet cross-sectionally scored) factors for one bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawFactors {
    /// `ln(close_t / close_(t-20))`.
    pub momentum: f64,
    /// `-ln(close_t / close_(t-1))`.
    pub reversal: f64,
    /// Minus the sample sd of the last 20 one-bar log returns.
    pub low_volatility: f64,
    /// `(volume_t - mean) / sd` of the previous 20 volumes (0 when the sd is 0).
    pub liquidity: f64,
}

impl RawFactors {
    /// The raw factors of the last of `closes` and `volumes` (oldest first); `None` unless both
    /// hold [`HISTORY`] values (earlier values are ignored).
    pub fn from_history(closes: &[f64], volumes: &[f64]) -> Option<RawFactors> {
        if closes.len() < HISTORY || volumes.len() < HISTORY {
            return None;
        }
        let c = &closes[closes.len() - HISTORY..];
        let v = &volumes[volumes.len() - HISTORY..];
        let last = HISTORY - 1;
        let rets: Vec<f64> = c.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
        let (_, ret_sd) = mean_sd(&rets, 1);
        let (vol_mean, vol_sd) = mean_sd(&v[..last], 1);
        Some(RawFactors {
            momentum: (c[last] / c[0]).ln(),
            reversal: -rets[last - 1],
            low_volatility: -ret_sd,
            liquidity: if vol_sd > 0.0 {
                (v[last] - vol_mean) / vol_sd
            } else {
                0.0
            },
        })
    }
}

/// Cross-sectional z-scores and composite of the symbols in `raws`; `None` with fewer than 2.
pub fn cross_section(
    ts: u64,
    bar_secs: u32,
    raws: &BTreeMap<String, RawFactors>,
) -> Option<FactorCalculation> {
    if raws.len() < 2 {
        return None;
    }
    let z = |f: fn(&RawFactors) -> f64| -> Vec<f64> {
        let x: Vec<f64> = raws.values().map(f).collect();
        let (mean, sd) = mean_sd(&x, 0);
        x.iter()
            .map(|v| if sd > 0.0 { (v - mean) / sd } else { 0.0 })
            .collect()
    };
    let m = z(|r| r.momentum);
    let r = z(|r| r.reversal);
    let v = z(|r| r.low_volatility);
    let l = z(|r| r.liquidity);
    let scores = raws
        .keys()
        .enumerate()
        .map(|(i, s)| {
            let sc = FactorScores {
                momentum: m[i],
                reversal: r[i],
                low_volatility: v[i],
                liquidity: l[i],
                composite: (m[i] + r[i] + v[i] + l[i]) / 4.0,
            };
            (s.clone(), sc)
        })
        .collect();
    Some(FactorCalculation {
        ts,
        bar_secs,
        method: METHOD.to_string(),
        scores,
    })
}

#[derive(Clone, Debug, Default)]
struct SymbolHistory {
    closes: VecDeque<f64>,
    volumes: VecDeque<f64>,
    last_ts: u64,
}

/// Factor scores over the universe, fed bar by bar (module docs).
#[derive(Clone, Debug, Default)]
pub struct FactorModel {
    bar_secs: Option<u32>,
    symbols: BTreeMap<String, SymbolHistory>,
    /// Periods not processed yet: the symbols with all four raw factors in each.
    pending: BTreeMap<u64, BTreeMap<String, RawFactors>>,
    processed_through: Option<u64>,
    published: u64,
    late: u64,
    duplicates: u64,
    other_bar_secs: u64,
}

impl FactorModel {
    /// A model with no data.
    pub fn new() -> FactorModel {
        FactorModel::default()
    }

    /// Takes `symbol`'s bar starting at `ts` (Unix ns); appends the cross-sections it lets
    /// through, in period order.
    pub fn on_bar(
        &mut self,
        symbol: &str,
        ts: u64,
        bar_secs: u32,
        close: f64,
        volume: f64,
        out: &mut Vec<FactorCalculation>,
    ) {
        if *self.bar_secs.get_or_insert(bar_secs) != bar_secs {
            self.other_bar_secs += 1;
            return;
        }
        let h = self.symbols.entry(symbol.to_string()).or_default();
        if !h.closes.is_empty() && ts <= h.last_ts {
            self.duplicates += 1;
            return;
        }
        h.last_ts = ts;
        h.closes.push_back(close);
        h.volumes.push_back(volume);
        while h.closes.len() > HISTORY {
            h.closes.pop_front();
            h.volumes.pop_front();
        }
        if self.processed_through.is_some_and(|p| ts <= p) {
            self.late += 1;
        } else {
            let raw =
                RawFactors::from_history(h.closes.make_contiguous(), h.volumes.make_contiguous());
            let period = self.pending.entry(ts).or_default();
            if let Some(raw) = raw {
                period.insert(symbol.to_string(), raw);
            }
        }
        // Periods forced out by this vector, then the periods every symbol has moved past.
        let force_through = ts.checked_sub(2 * u64::from(bar_secs) * 1_000_000_000);
        let everyone_from = self.symbols.values().map(|h| h.last_ts).min().unwrap_or(0);
        while let Some((&t, _)) = self.pending.first_key_value() {
            if force_through.is_some_and(|f| t <= f) || t <= everyone_from {
                self.process_first(out);
            } else {
                break;
            }
        }
    }

    /// End of the data: processes every pending period.
    pub fn finish(&mut self, out: &mut Vec<FactorCalculation>) {
        while !self.pending.is_empty() {
            self.process_first(out);
        }
    }

    fn process_first(&mut self, out: &mut Vec<FactorCalculation>) {
        let Some((t, raws)) = self.pending.pop_first() else {
            return;
        };
        self.processed_through = Some(t);
        let bar_secs = self.bar_secs.unwrap_or(0);
        if let Some(c) = cross_section(t, bar_secs, &raws) {
            self.published += 1;
            out.push(c);
        }
    }

    /// Cross-sections published so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Vectors for a period already processed.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Vectors not after their symbol's previous one.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Vectors of another bar length than the first one seen.
    pub fn other_bar_secs(&self) -> u64 {
        self.other_bar_secs
    }

    /// Symbols seen.
    pub fn symbols(&self) -> BTreeSet<&str> {
        self.symbols.keys().map(|s| s.as_str()).collect()
    }

    /// Periods waiting to be processed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The Factor engine (`factor`): reads every `feature_vector.>` and publishes one
/// `factor_calculation.universe` (low priority) per bar with every symbol's scores. On stop,
/// the pending periods are processed (the end of the data). No configuration.
#[derive(Default)]
pub struct FactorEngine {
    model: FactorModel,
    out: Vec<FactorCalculation>,
}

impl FactorEngine {
    /// An engine with no data.
    pub fn new() -> FactorEngine {
        FactorEngine::default()
    }

    /// The model.
    pub fn model(&self) -> &FactorModel {
        &self.model
    }

    /// Publishes the calculations produced so far, in order. One leaves `out` only once
    /// published: after a failed publish the rest (the failed one included) stays and goes out,
    /// in order, before the next bar's (or at stop), so an error loses nothing.
    async fn publish_out(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        let mut sent = 0;
        let mut res = Ok(());
        for c in &self.out {
            if let Err(e) = ctx.send(c).await {
                res = Err(e.into());
                break;
            }
            sent += 1;
        }
        self.out.drain(..sent);
        res
    }
}

#[async_trait]
impl Engine for FactorEngine {
    fn name(&self) -> &'static str {
        "factor"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::FactorCalculation]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&["feature_vector.>"])]
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let v: FeatureInput = msg.decode()?;
        self.model.on_bar(
            &v.symbol,
            v.ts,
            v.bar_secs,
            v.close,
            v.volume,
            &mut self.out,
        );
        // The bar is counted now, so the message is not failed (a redelivery would be ignored
        // as a duplicate): what could not be published stays and goes out first next time.
        if let Err(e) = self.publish_out(ctx).await {
            tracing::warn!(
                error = %e,
                unpublished = self.out.len(),
                "factor calculation not published yet: kept, to be sent before the next one"
            );
        }
        Ok(())
    }

    async fn stop(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        self.model.finish(&mut self.out);
        self.publish_out(ctx).await
    }

    fn health(&self) -> serde_json::Value {
        let m = &self.model;
        serde_json::json!({
            "symbols": m.symbols.len(),
            "published": m.published,
            "pending_periods": m.pending.len(),
            "late": m.late,
            "duplicates": m.duplicates,
            "other_bar_secs": m.other_bar_secs,
            "unpublished": self.out.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn raw_factors_by_hand() {
        // Closes 100 e^(0.01 i), i = 0..=20: momentum 0.2, reversal -0.01, every return 0.01 so
        // the volatility is 0. Previous volumes alternate 9, 11: mean 10, sample sd
        // sqrt(20 / 19) = 1.025978352; volume 12 -> liquidity 2 / 1.025978352 = 1.949358869.
        let closes: Vec<f64> = (0..=20).map(|i| 100.0 * (0.01 * i as f64).exp()).collect();
        let mut volumes: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 9.0 } else { 11.0 })
            .collect();
        volumes.push(12.0);
        let r = RawFactors::from_history(&closes, &volumes).unwrap();
        assert!(close(r.momentum, 0.2), "{r:?}");
        assert!(close(r.reversal, -0.01), "{r:?}");
        assert!(r.low_volatility.abs() < 1e-12, "{r:?}");
        assert!(close(r.liquidity, 1.949_358_869), "{r:?}");
        assert!(RawFactors::from_history(&closes[1..], &volumes[1..]).is_none());
        // Realized volatility: returns alternate +0.01, -0.01 (10 each): mean 0, sample sd
        // sqrt(20 x 0.0001 / 19) = 0.010259784; flat volume -> liquidity 0.
        let closes: Vec<f64> = (0..=20)
            .map(|i| 100.0 * (if i % 2 == 1 { 0.01f64 } else { 0.0 }).exp())
            .collect();
        let r = RawFactors::from_history(&closes, &[5.0; 21]).unwrap();
        assert!(close(r.low_volatility, -0.010_259_784), "{r:?}");
        assert!(close(r.momentum, 0.0) && close(r.reversal, 0.01) && r.liquidity == 0.0);
    }

    #[test]
    fn cross_sectional_z_scores_by_hand() {
        // momentum  0.1, 0, -0.1:       mean 0, population sd 0.0816497 -> 1.2247449, 0, -1.2247449
        // reversal -0.01, 0.02, -0.01:  mean 0, sd 0.0141421          -> -0.7071068, 1.4142136, -0.7071068
        // low vol  -0.02, -0.01, -0.03: mean -0.02, sd 0.0081650      -> 0, 1.2247449, -1.2247449
        // liquidity 1, 0, -1:           mean 0, sd 0.8164966          -> 1.2247449, 0, -1.2247449
        // composite: A (1.2247449 - 0.7071068 + 0 + 1.2247449) / 4 = 0.4355958,
        //            B (0 + 1.4142136 + 1.2247449 + 0) / 4 = 0.6597396,
        //            C (-1.2247449 - 0.7071068 - 1.2247449 - 1.2247449) / 4 = -1.0953354.
        let raw = |m, r, v, l| RawFactors {
            momentum: m,
            reversal: r,
            low_volatility: v,
            liquidity: l,
        };
        let raws = BTreeMap::from([
            ("A".to_string(), raw(0.1, -0.01, -0.02, 1.0)),
            ("B".to_string(), raw(0.0, 0.02, -0.01, 0.0)),
            ("C".to_string(), raw(-0.1, -0.01, -0.03, -1.0)),
        ]);
        let c = cross_section(60 * S, 60, &raws).unwrap();
        assert_eq!((c.ts, c.bar_secs, c.method.as_str()), (60 * S, 60, METHOD));
        let k = 1.224_744_871;
        let (h, r2) = (std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::SQRT_2);
        let want = [
            ("A", [k, -h, 0.0, k, 0.435_595_740]),
            ("B", [0.0, r2, k, 0.0, 0.659_739_608]),
            ("C", [-k, -h, -k, -k, -1.095_335_348]),
        ];
        for (s, w) in want {
            let g = c.scores[s];
            let got = [
                g.momentum,
                g.reversal,
                g.low_volatility,
                g.liquidity,
                g.composite,
            ];
            for (a, b) in got.iter().zip(w) {
                assert!(close(*a, b), "{s}: {got:?} vs {w:?}");
            }
        }
        // No spread: every z-score 0. One symbol: nothing.
        let flat = BTreeMap::from([
            ("A".to_string(), raw(0.1, 0.1, 0.1, 0.1)),
            ("B".to_string(), raw(0.1, 0.1, 0.1, 0.1)),
        ]);
        let c = cross_section(0, 60, &flat).unwrap();
        assert!(c
            .scores
            .values()
            .all(|s| s.composite == 0.0 && s.momentum == 0.0));
        let one = BTreeMap::from([("A".to_string(), raw(0.1, 0.1, 0.1, 0.1))]);
        assert!(cross_section(0, 60, &one).is_none());
    }

    /// A deterministic close and volume for `symbol` at bar `i`.
    fn bar(symbol: &str, i: u64) -> (f64, f64) {
        let k = symbol.bytes().map(u64::from).sum::<u64>() as f64;
        let close = 100.0 + k + ((i as f64) * 0.7 + k).sin() * 2.0;
        let volume = 10.0 + ((i as f64) * 1.3 + k).cos() * 3.0;
        (close, volume)
    }

    fn feed(m: &mut FactorModel, symbol: &str, i: u64, out: &mut Vec<FactorCalculation>) {
        let (c, v) = bar(symbol, i);
        m.on_bar(symbol, i * 60 * S, 60, c, v, out);
    }

    /// What a cross-section of `symbols` at bar `i` must be (each with bars 0..=i).
    fn expected(symbols: &[&str], i: u64) -> FactorCalculation {
        let raws = symbols
            .iter()
            .map(|s| {
                let (c, v): (Vec<f64>, Vec<f64>) = (i - 20..=i).map(|j| bar(s, j)).unzip();
                (s.to_string(), RawFactors::from_history(&c, &v).unwrap())
            })
            .collect();
        cross_section(i * 60 * S, 60, &raws).unwrap()
    }

    #[test]
    fn a_period_is_published_when_every_symbol_has_delivered_it() {
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        for i in 0..20 {
            for s in ["A", "B", "C"] {
                feed(&mut m, s, i, &mut out);
            }
        }
        assert!(out.is_empty(), "fewer than 21 bars: no factors");
        // At start-up, A's period 0 completed before B and C were seen: their period-0
        // vectors were late (they still entered their histories).
        assert_eq!(m.late(), 2);
        feed(&mut m, "A", 20, &mut out);
        feed(&mut m, "B", 20, &mut out);
        assert!(out.is_empty(), "C has not delivered period 20");
        feed(&mut m, "C", 20, &mut out);
        assert_eq!(out, vec![expected(&["A", "B", "C"], 20)]);
        assert_eq!(out[0].scores.len(), 3);
        m.finish(&mut out);
        assert_eq!(out.len(), 1, "nothing pending");
    }

    #[test]
    fn a_later_period_forces_a_publish_and_a_late_vector_is_dropped() {
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        for i in 0..=20 {
            for s in ["A", "B", "C"] {
                feed(&mut m, s, i, &mut out);
            }
        }
        out.clear();
        let late0 = m.late();
        // C is slow on period 21; A reaches period 22 (T + 1): not forced yet.
        feed(&mut m, "A", 21, &mut out);
        feed(&mut m, "B", 21, &mut out);
        feed(&mut m, "A", 22, &mut out);
        assert!(out.is_empty());
        // Period 23 = T + 2 bars: 21 is published without C.
        feed(&mut m, "A", 23, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ts, 21 * 60 * S);
        assert_eq!(out[0].scores.keys().collect::<Vec<_>>(), ["A", "B"]);
        // C's vector for 21 arrives late: dropped, counted, nothing republished.
        feed(&mut m, "C", 21, &mut out);
        assert_eq!((out.len(), m.late()), (1, late0 + 1));
        // C skips 22 and delivers 23: 22 waits for B (last at 21).
        feed(&mut m, "C", 23, &mut out);
        assert_eq!(out.len(), 1);
        // B delivers 23: 22 (only A) is processed without a publish, then 23 (A, B, C).
        feed(&mut m, "B", 23, &mut out);
        assert_eq!(
            out.len(),
            2,
            "{:?}",
            out.iter().map(|c| c.ts).collect::<Vec<_>>()
        );
        assert_eq!(out[1].ts, 23 * 60 * S);
        assert_eq!(out[1].scores.len(), 3);
        // B's 22 after its 23 is out of order, and its 23 again a repeat: both ignored.
        feed(&mut m, "B", 22, &mut out);
        feed(&mut m, "B", 23, &mut out);
        assert_eq!((m.late(), m.duplicates(), out.len()), (late0 + 1, 2, 2));
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn the_late_bar_stays_in_its_symbols_history() {
        // After C's late period-21 bar, C's raw factors for 22 use bars 2..=22 (all its own).
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        for i in 0..=20 {
            for s in ["A", "B", "C"] {
                feed(&mut m, s, i, &mut out);
            }
        }
        let late0 = m.late();
        feed(&mut m, "A", 21, &mut out);
        feed(&mut m, "B", 21, &mut out);
        feed(&mut m, "A", 23, &mut out);
        feed(&mut m, "C", 21, &mut out);
        assert_eq!(m.late(), late0 + 1);
        feed(&mut m, "B", 23, &mut out);
        feed(&mut m, "C", 23, &mut out);
        let last = out.last().unwrap();
        assert_eq!(last.ts, 23 * 60 * S);
        // Everyone's last 21 bars are 2..=21 and 23 (no 22).
        let raws = ["A", "B", "C"]
            .iter()
            .map(|s| {
                let (c, v): (Vec<f64>, Vec<f64>) = (2..=21).chain([23]).map(|j| bar(s, j)).unzip();
                (s.to_string(), RawFactors::from_history(&c, &v).unwrap())
            })
            .collect();
        assert_eq!(*last, cross_section(23 * 60 * S, 60, &raws).unwrap());
    }

    #[test]
    fn fewer_than_two_symbols_publish_nothing() {
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        for i in 0..30 {
            feed(&mut m, "A", i, &mut out);
        }
        m.finish(&mut out);
        assert!(out.is_empty());
        // A second symbol that never has 21 bars changes nothing.
        for i in 30..35 {
            feed(&mut m, "A", i, &mut out);
            feed(&mut m, "B", i, &mut out);
        }
        m.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn stop_publishes_the_pending_periods_in_order() {
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        for i in 0..=22 {
            for s in ["A", "B", "C"] {
                if !(s == "C" && i >= 21) {
                    feed(&mut m, s, i, &mut out);
                }
            }
        }
        // A and B at 22 do not force 21 (22 < 21 + 2): 21 and 22 wait for C.
        assert_eq!(out.len(), 1);
        m.finish(&mut out);
        let ts: Vec<u64> = out.iter().map(|c| c.ts / (60 * S)).collect();
        assert_eq!(ts, [20, 21, 22]);
        assert_eq!(out[2].scores.len(), 2);
    }

    #[test]
    fn another_bar_length_is_ignored() {
        let mut m = FactorModel::new();
        let mut out = Vec::new();
        m.on_bar("A", 0, 60, 1.0, 1.0, &mut out);
        m.on_bar("A", 60 * S, 1, 1.0, 1.0, &mut out);
        assert_eq!(m.other_bar_secs(), 1);
    }
}
