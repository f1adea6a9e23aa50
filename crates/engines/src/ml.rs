//! The ML engine: an online model per symbol that predicts the sign of the next bar's return
//! from the current `feature_vector`, and publishes `ml_prediction`.
//!
//! The model is logistic regression on standardized features, trained by stochastic gradient
//! descent with L2 regularization, one step per resolved prediction. It was chosen because it is
//! small, has no hyperparameters beyond the step and the penalty, learns online in O(features)
//! per bar, and its output is a probability. Per symbol, on feature vector `t`:
//!
//! 1. If the prediction made from vector `t - 1` is pending, its label is whether `ret_1` of
//!    vector `t` (the return from `t - 1`'s close to `t`'s) is positive. `ret_1 == 0` is a tie:
//!    neither scored nor trained on. Otherwise it is scored (correct when
//!    `(prob_up >= 0.5) == label`) into a ring of the last `accuracy_window` scores, and the
//!    model takes one SGD step on `(x_(t-1), label)`:
//!    `w -= lr * ((p - y) * z + l2 * w)`, `b -= lr * (p - y)` (no penalty on the bias), where `z`
//!    and `p` are exactly the standardized input and the probability published for `t - 1`
//!    (nothing changed the model in between). Then the standardizer takes in `x_(t-1)`, and the
//!    model version goes up by one.
//! 2. If vector `t` has every used feature (finite), the model predicts from it:
//!    `prob_up = sigmoid(w . z_t + b)`, and a prediction is published and left pending until
//!    vector `t + 1`. Otherwise nothing is predicted (nothing is pending).
//!
//! So the model only learns from a bar once the next bar's return is known: a prediction never
//! depends on anything after its own vector (no look-ahead).
//!
//! Standardization: per feature, a running mean and sample variance (Welford) of the inputs
//! trained on so far; `z = (x - mean) / sd` clipped to `[-5, 5]`, and `z = 0` while the
//! standard deviation is 0 or undefined (fewer than 2 inputs).
//!
//! `expected_return = (2 prob_up - 1) x` the mean absolute `ret_1` seen so far for the symbol:
//! a simple calibration that scales the model's edge by the typical size of a one-bar move, not
//! a regression of the return's size.
//!
//! A vector whose `ts` is not after the symbol's previous one (a duplicate or out of order) is
//! ignored and counted as stale, so a redelivery cannot train the model twice.

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::ml::{MlParams, MlPrediction, MODEL_NAME};
use std::collections::{BTreeMap, VecDeque};

/// Standardized inputs are clipped to `[-Z_CLIP, Z_CLIP]`.
pub const Z_CLIP: f64 = 5.0;

use dualbus_model::features::FeatureVector as FeatureInput;

/// `1 / (1 + e^-s)`, without overflow for large `|s|`.
pub fn sigmoid(s: f64) -> f64 {
    if s >= 0.0 {
        1.0 / (1.0 + (-s).exp())
    } else {
        let e = s.exp();
        e / (1.0 + e)
    }
}

/// Running mean and sample variance per feature (Welford's algorithm).
#[derive(Clone, Debug)]
pub struct Standardizer {
    n: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Standardizer {
    /// A standardizer for `dims` features, with no data.
    pub fn new(dims: usize) -> Standardizer {
        Standardizer {
            n: 0,
            mean: vec![0.0; dims],
            m2: vec![0.0; dims],
        }
    }

    /// Inputs taken in so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Takes in one input (`x.len()` must be the dimension).
    pub fn push(&mut self, x: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for ((m, m2), &v) in self.mean.iter_mut().zip(&mut self.m2).zip(x) {
            let d = v - *m;
            *m += d / n;
            *m2 += d * (v - *m);
        }
    }

    /// The standardized input: `(x - mean) / sd` clipped to `[-Z_CLIP, Z_CLIP]`, 0 where the
    /// sample standard deviation is 0 or undefined.
    pub fn z(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(self.mean.iter().zip(&self.m2))
            .map(|(&v, (&m, &m2))| {
                if self.n < 2 {
                    return 0.0;
                }
                let sd = (m2 / (self.n - 1) as f64).sqrt();
                if sd > 0.0 {
                    ((v - m) / sd).clamp(-Z_CLIP, Z_CLIP)
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// Logistic regression on standardized inputs, trained online by SGD with an L2 penalty.
#[derive(Clone, Debug)]
pub struct OnlineLogistic {
    w: Vec<f64>,
    b: f64,
    lr: f64,
    l2: f64,
    version: u64,
}

impl OnlineLogistic {
    /// A model for `dims` inputs, all weights and the bias 0 (predicts 0.5).
    pub fn new(dims: usize, learning_rate: f64, l2: f64) -> OnlineLogistic {
        OnlineLogistic {
            w: vec![0.0; dims],
            b: 0.0,
            lr: learning_rate,
            l2,
            version: 0,
        }
    }

    /// The weights.
    pub fn weights(&self) -> &[f64] {
        &self.w
    }

    /// The bias.
    pub fn bias(&self) -> f64 {
        self.b
    }

    /// SGD steps taken.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `sigmoid(w . z + b)`.
    pub fn prob_up(&self, z: &[f64]) -> f64 {
        sigmoid(self.w.iter().zip(z).map(|(w, z)| w * z).sum::<f64>() + self.b)
    }

    /// One SGD step on the log loss of `(z, up)`: `w -= lr ((p - y) z + l2 w)`,
    /// `b -= lr (p - y)`.
    pub fn step(&mut self, z: &[f64], up: bool) {
        let g = self.prob_up(z) - if up { 1.0 } else { 0.0 };
        for (w, z) in self.w.iter_mut().zip(z) {
            *w -= self.lr * (g * z + self.l2 * *w);
        }
        self.b -= self.lr * g;
        self.version += 1;
    }
}

#[derive(Clone, Debug)]
struct Pending {
    x: Vec<f64>,
    prob_up: f64,
}

/// The model of one symbol, fed feature vector by feature vector: scores and trains on the
/// pending prediction, then predicts (module docs).
#[derive(Clone, Debug)]
pub struct SymbolModel {
    symbol: String,
    features: Vec<String>,
    window: usize,
    scaler: Standardizer,
    model: OnlineLogistic,
    pending: Option<Pending>,
    last_ts: Option<u64>,
    ring: VecDeque<bool>,
    ring_hits: usize,
    scored: u64,
    hits: u64,
    abs_ret_sum: f64,
    abs_ret_n: u64,
    incomplete: u64,
    stale: u64,
}

impl SymbolModel {
    /// A model for `symbol`. Parameters are assumed valid ([`MlParams::problems`]).
    pub fn new(symbol: &str, p: &MlParams) -> SymbolModel {
        let dims = p.features.len();
        SymbolModel {
            symbol: symbol.to_string(),
            features: p.features.clone(),
            window: p.accuracy_window,
            scaler: Standardizer::new(dims),
            model: OnlineLogistic::new(dims, p.learning_rate, p.l2),
            pending: None,
            last_ts: None,
            ring: VecDeque::new(),
            ring_hits: 0,
            scored: 0,
            hits: 0,
            abs_ret_sum: 0.0,
            abs_ret_n: 0,
            incomplete: 0,
            stale: 0,
        }
    }

    /// Takes the feature vector of the bar starting at `ts` (Unix ns): resolves the pending
    /// prediction with its `ret_1`, then returns the prediction made from it, if it has every
    /// used feature. A vector not after the previous one is ignored (stale).
    pub fn on_vector(
        &mut self,
        ts: u64,
        bar_secs: u32,
        features: &BTreeMap<String, f64>,
    ) -> Option<MlPrediction> {
        if self.last_ts.is_some_and(|last| ts <= last) {
            self.stale += 1;
            return None;
        }
        self.last_ts = Some(ts);
        let ret_1 = features.get("ret_1").copied().filter(|r| r.is_finite());
        if let Some(r) = ret_1 {
            self.abs_ret_sum += r.abs();
            self.abs_ret_n += 1;
        }
        // (1) The previous vector's prediction: its label is this vector's ret_1. Without a
        // ret_1 it cannot be resolved and is dropped.
        if let (Some(p), Some(r)) = (self.pending.take(), ret_1) {
            if r != 0.0 {
                let up = r > 0.0;
                self.score((p.prob_up >= 0.5) == up);
                let z = self.scaler.z(&p.x);
                self.model.step(&z, up);
                self.scaler.push(&p.x);
            }
        }
        // (2) Predict from this vector.
        let x: Option<Vec<f64>> = self
            .features
            .iter()
            .map(|f| features.get(f).copied().filter(|v| v.is_finite()))
            .collect();
        let Some(x) = x else {
            self.incomplete += 1;
            return None;
        };
        let prob_up = self.model.prob_up(&self.scaler.z(&x));
        let mean_abs = if self.abs_ret_n == 0 {
            0.0
        } else {
            self.abs_ret_sum / self.abs_ret_n as f64
        };
        self.pending = Some(Pending { x, prob_up });
        Some(MlPrediction {
            symbol: self.symbol.clone(),
            ts,
            horizon_s: bar_secs,
            prob_up,
            expected_return: (2.0 * prob_up - 1.0) * mean_abs,
            model: MODEL_NAME.to_string(),
            model_version: self.model.version(),
            accuracy_500: self.accuracy(),
            scored: self.scored,
        })
    }

    fn score(&mut self, correct: bool) {
        self.scored += 1;
        self.hits += u64::from(correct);
        self.ring.push_back(correct);
        self.ring_hits += usize::from(correct);
        while self.ring.len() > self.window {
            if self.ring.pop_front() == Some(true) {
                self.ring_hits -= 1;
            }
        }
    }

    /// Share of correct predictions among the last `accuracy_window` scored ones.
    pub fn accuracy(&self) -> Option<f64> {
        (!self.ring.is_empty()).then(|| self.ring_hits as f64 / self.ring.len() as f64)
    }

    /// Share of correct predictions among all scored ones.
    pub fn cumulative_accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.hits as f64 / self.scored as f64)
    }

    /// Predictions scored so far (ties excluded).
    pub fn scored(&self) -> u64 {
        self.scored
    }

    /// Vectors without every used feature (no prediction made).
    pub fn incomplete(&self) -> u64 {
        self.incomplete
    }

    /// Vectors ignored because they were not after the previous one.
    pub fn stale(&self) -> u64 {
        self.stale
    }

    /// The underlying model.
    pub fn model(&self) -> &OnlineLogistic {
        &self.model
    }
}

/// The ML engine (`ml`): reads every `feature_vector.>` and publishes one
/// `ml_prediction.{SYMBOL}` (normal priority) per vector that has every used feature.
/// Configuration: [`MlParams`] (the same for every symbol).
#[derive(Default)]
pub struct MlEngine {
    params: MlParams,
    models: BTreeMap<String, SymbolModel>,
    predictions: u64,
}

impl MlEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: MlParams) -> MlEngine {
        MlEngine {
            params,
            ..Default::default()
        }
    }

    /// The model of `symbol`, if a vector of it was seen.
    pub fn model(&self, symbol: &str) -> Option<&SymbolModel> {
        self.models.get(symbol)
    }
}

#[async_trait]
impl Engine for MlEngine {
    fn name(&self) -> &'static str {
        "ml"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::MlPrediction]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&["feature_vector.>"])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.params = ctx.settings()?;
        }
        EngineError::check("ml", self.params.problems())?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let v: FeatureInput = msg.decode()?;
        let params = &self.params;
        let pred = self
            .models
            .entry(v.symbol.clone())
            .or_insert_with(|| SymbolModel::new(&v.symbol, params))
            .on_vector(v.ts, v.bar_secs, &v.features);
        // The model has learned from the vector; a failed publish is logged rather than
        // retried (a redelivery would be ignored as stale anyway).
        if let Some(p) = pred {
            self.predictions += 1;
            if let Err(e) = ctx.send(&p).await {
                tracing::warn!(error = %e, "ML prediction not published");
            }
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let sum = |f: fn(&SymbolModel) -> u64| self.models.values().map(f).sum::<u64>();
        serde_json::json!({
            "symbols": self.models.len(),
            "predictions": self.predictions,
            "scored": sum(SymbolModel::scored),
            "incomplete": sum(SymbolModel::incomplete),
            "stale": sum(SymbolModel::stale),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::ml::DEFAULT_FEATURES;

    const S: u64 = 1_000_000_000;

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

        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Standard normal (Box-Muller).
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn vector(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn one_sgd_step_by_hand() {
        // w = (0.5, -0.25), b = 0.1, lr = 0.1, l2 = 0.01; z = (1, 2), label up.
        // w.z + b = 0.5 - 0.5 + 0.1 = 0.1; p = sigmoid(0.1) = 0.52497918747894; p - y = -0.47502081252106
        // w_a = 0.5 - 0.1 (-0.47502081252106 x 1 + 0.01 x 0.5)      = 0.547002081252106
        // w_b = -0.25 - 0.1 (-0.47502081252106 x 2 + 0.01 x -0.25)  = -0.154745837495788
        // b   = 0.1 - 0.1 (-0.47502081252106)                       = 0.147502081252106
        let mut m = OnlineLogistic::new(2, 0.1, 0.01);
        m.w = vec![0.5, -0.25];
        m.b = 0.1;
        assert!(close(m.prob_up(&[1.0, 2.0]), 0.524_979_187_478_94));
        m.step(&[1.0, 2.0], true);
        assert!(close(m.weights()[0], 0.547_002_081_252_106), "{m:?}");
        assert!(close(m.weights()[1], -0.154_745_837_495_788), "{m:?}");
        assert!(close(m.bias(), 0.147_502_081_252_106), "{m:?}");
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn the_symbol_model_trains_on_the_previous_vector_with_this_ones_return() {
        // Features (a, b), lr 0.1, l2 0.01.
        // v0 (a 1, b 2, no ret_1): no data, z = 0, p = 0.5; pending.
        // v1 (ret_1 +0.01: up): step on z = 0 with p = 0.5: w stays 0, b = 0.05; scaler takes
        //   (1, 2). Predicts (3, -2): one input, z = 0, p = sigmoid(0.05).
        // v2 (ret_1 -0.02: down): step on z = 0, p = sigmoid(0.05) = 0.512497396484: b = 0.05 -
        //   0.0512497396484 = -0.0012497396484; scaler takes (3, -2): mean (2, 0), sample sd
        //   (sqrt 2, sqrt 8). Predicts (4, 1): z = (sqrt 2, 1 / sqrt 8), p = sigmoid(b) since w = 0.
        // v3 (ret_1 +0.03: up): p = sigmoid(-0.0012497396484) = 0.499687565139, p - y =
        //   -0.500312434861; w_a = 0.1 x 0.500312434861 x sqrt 2 = 0.070755284, w_b = 0.1 x
        //   0.500312434861 / sqrt 8 = 0.017688821, b = -0.0012497396484 + 0.0500312434861.
        let p = MlParams {
            features: vec!["a".into(), "b".into()],
            learning_rate: 0.1,
            l2: 0.01,
            accuracy_window: 500,
        };
        let mut m = SymbolModel::new("X", &p);
        let p0 = m
            .on_vector(0, 60, &vector(&[("a", 1.0), ("b", 2.0)]))
            .unwrap();
        assert_eq!(
            (p0.prob_up, p0.model_version, p0.accuracy_500),
            (0.5, 0, None)
        );
        assert_eq!(p0.expected_return, 0.0, "no return seen yet");
        let p1 = m
            .on_vector(
                60 * S,
                60,
                &vector(&[("a", 3.0), ("b", -2.0), ("ret_1", 0.01)]),
            )
            .unwrap();
        assert!(close(m.model().bias(), 0.05));
        assert!(close(p1.prob_up, sigmoid(0.05)));
        // p0 = 0.5 counts as "up": correct.
        assert_eq!(
            (p1.model_version, p1.accuracy_500, p1.scored),
            (1, Some(1.0), 1)
        );
        assert!(close(
            p1.expected_return,
            (2.0 * sigmoid(0.05) - 1.0) * 0.01
        ));
        let p2 = m
            .on_vector(
                120 * S,
                60,
                &vector(&[("a", 4.0), ("b", 1.0), ("ret_1", -0.02)]),
            )
            .unwrap();
        let b2 = 0.05 - 0.1 * sigmoid(0.05);
        assert!(close(m.model().bias(), b2));
        assert_eq!(m.model().weights(), &[0.0, 0.0]);
        assert!(close(p2.prob_up, sigmoid(b2)));
        // p1 > 0.5 said up, the return was down.
        assert_eq!((p2.model_version, p2.accuracy_500), (2, Some(0.5)));
        let _ = m
            .on_vector(
                180 * S,
                60,
                &vector(&[("a", 0.0), ("b", 0.0), ("ret_1", 0.03)]),
            )
            .unwrap();
        let g = sigmoid(b2) - 1.0;
        assert!(close(m.model().weights()[0], -0.1 * g * 2f64.sqrt()));
        assert!(close(m.model().weights()[1], -0.1 * g / 8f64.sqrt()));
        assert!(close(m.model().bias(), b2 - 0.1 * g));
        assert!((m.model().weights()[0] - 0.070_754_863).abs() < 1e-8);
        assert!((m.model().weights()[1] - 0.017_688_716).abs() < 1e-8);
        assert!((m.model().bias() - 0.048_781_503_839).abs() < 1e-11);
    }

    #[test]
    fn ties_missing_features_and_stale_vectors() {
        let p = MlParams {
            features: vec!["a".into()],
            ..Default::default()
        };
        let mut m = SymbolModel::new("X", &p);
        assert!(m.on_vector(S, 1, &vector(&[("a", 1.0)])).is_some());
        // A zero return is a tie: the pending prediction is neither scored nor trained on.
        let p1 = m
            .on_vector(2 * S, 1, &vector(&[("a", 2.0), ("ret_1", 0.0)]))
            .unwrap();
        assert_eq!((p1.scored, p1.model_version, p1.accuracy_500), (0, 0, None));
        // Missing a used feature: no prediction, but its ret_1 resolves the pending one.
        assert!(m.on_vector(3 * S, 1, &vector(&[("ret_1", 0.5)])).is_none());
        assert_eq!((m.scored(), m.model().version(), m.incomplete()), (1, 1, 1));
        // Nothing pending now: the next return resolves nothing.
        let p3 = m
            .on_vector(4 * S, 1, &vector(&[("a", 1.0), ("ret_1", 0.5)]))
            .unwrap();
        assert_eq!((p3.scored, p3.model_version), (1, 1));
        // Not after the previous vector: ignored, the pending prediction stays.
        assert!(m
            .on_vector(4 * S, 1, &vector(&[("a", 1.0), ("ret_1", -0.5)]))
            .is_none());
        assert_eq!((m.stale(), m.scored()), (1, 1));
        // A non-finite value counts as missing.
        assert!(m
            .on_vector(5 * S, 1, &vector(&[("a", f64::NAN), ("ret_1", 0.1)]))
            .is_none());
        assert_eq!(m.scored(), 2);
    }

    #[test]
    fn standardized_inputs_are_clipped_and_zero_without_spread() {
        let mut s = Standardizer::new(2);
        assert_eq!(s.z(&[3.0, 3.0]), vec![0.0, 0.0]);
        s.push(&[0.0, 1.0]);
        assert_eq!(s.z(&[3.0, 3.0]), vec![0.0, 0.0], "one input: sd undefined");
        s.push(&[2.0, 1.0]);
        // a: mean 1, sd sqrt 2; b: sd 0.
        let z = s.z(&[2.0, 7.0]);
        assert!(close(z[0], 1.0 / 2f64.sqrt()) && z[1] == 0.0, "{z:?}");
        assert_eq!(s.z(&[100.0, 0.0]), vec![Z_CLIP, 0.0]);
        assert_eq!(s.z(&[-100.0, 0.0]), vec![-Z_CLIP, 0.0]);
    }

    /// Feeds `n` bars where `order_imbalance` at bar t carries 0.3 of the next bar's return
    /// (in units of sigma); returns the model after the last one.
    fn planted(n: usize, seed: u64) -> (SymbolModel, Vec<MlPrediction>) {
        let mut rng = Rng(seed);
        let sigma = 0.001;
        let mut m = SymbolModel::new("X", &MlParams::default());
        let mut preds = Vec::new();
        let mut f_prev: Option<f64> = None;
        for t in 0..n {
            let mut v = BTreeMap::new();
            for name in DEFAULT_FEATURES {
                v.insert(name.to_string(), rng.normal());
            }
            let f = rng.normal();
            v.insert("order_imbalance".into(), f);
            match f_prev {
                Some(fp) => v.insert("ret_1".into(), (0.3 * fp + rng.normal()) * sigma),
                None => v.remove("ret_1"),
            };
            f_prev = Some(f);
            preds.extend(m.on_vector(t as u64 * 60 * S, 60, &v));
        }
        (m, preds)
    }

    #[test]
    fn a_planted_predictive_feature_is_learned() {
        // The best possible accuracy: sign(0.3 f + e) agrees with sign(f) with probability
        // 0.5 + asin(0.3 / sqrt 1.09) / pi = 0.593. With the default learning rate (0.05) the
        // SGD noise on the eight useless weights costs a few points: over seeds 0..100,
        // accuracy_500 after 3000 bars averages 0.566 and is at most 0.55 for 23 of them
        // (with a learning rate of 0.01: 0.586, and 3 of them).
        // Observed with this seed: accuracy_500 0.556, cumulative 0.561.
        let (m, preds) = planted(3000, 7);
        let acc = m.accuracy().unwrap();
        assert!(acc > 0.55, "accuracy_500 {acc}");
        assert_eq!(preds.last().unwrap().accuracy_500, Some(acc));
        let oi = DEFAULT_FEATURES
            .iter()
            .position(|f| *f == "order_imbalance")
            .unwrap();
        let w = m.model().weights();
        assert!(w[oi] > 0.1, "the planted feature's weight: {w:?}");
    }

    #[test]
    fn a_planted_predictive_feature_is_learned_whatever_the_seed() {
        // One seed's last 500 predictions have a standard deviation of about 0.022; the mean
        // over 20 seeds is steadier. Observed: 0.563.
        let mean = (0..20)
            .map(|seed| planted(3000, seed).0.accuracy().unwrap())
            .sum::<f64>()
            / 20.0;
        assert!(mean > 0.55, "mean accuracy_500 {mean}");
    }

    /// A random walk of `n` bars with features computed from past closes only.
    fn random_walk(n: usize, seed: u64) -> Vec<BTreeMap<String, f64>> {
        let mut rng = Rng(seed);
        let sigma = 0.001;
        let mut closes = vec![100.0f64];
        let mut out = Vec::new();
        let (mut ema12, mut ema26, mut signal) = (100.0, 100.0, 0.0);
        let mut pv = 0.0;
        let mut vol = 0.0;
        for t in 1..=n {
            let c = closes[t - 1] * (sigma * rng.normal()).exp();
            closes.push(c);
            let volume = 1.0 + rng.uniform();
            let mut v = BTreeMap::new();
            let ret = |k: usize| (closes[t] / closes[t - k]).ln();
            for (name, k) in [("ret_1", 1), ("ret_5", 5), ("ret_15", 15)] {
                if t >= k {
                    v.insert(name.to_string(), ret(k));
                }
            }
            let rets: Vec<f64> = (1..=t)
                .rev()
                .take(20)
                .map(|i| (closes[i] / closes[i - 1]).ln())
                .collect();
            if rets.len() == 20 {
                let mean = rets.iter().sum::<f64>() / 20.0;
                let var = rets.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 19.0;
                v.insert("realized_vol_20".into(), var.sqrt());
                let w = &closes[t - 19..=t];
                let m = w.iter().sum::<f64>() / 20.0;
                let sd = (w.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 20.0).sqrt();
                v.insert("bollinger_pct_b".into(), (c - (m - 2.0 * sd)) / (4.0 * sd));
            }
            if t >= 14 {
                let (mut up, mut down) = (0.0, 0.0);
                for i in t - 13..=t {
                    let d = closes[i] - closes[i - 1];
                    if d > 0.0 {
                        up += d;
                    } else {
                        down -= d;
                    }
                }
                v.insert("rsi_14".into(), 100.0 * up / (up + down));
            }
            ema12 += (c - ema12) * 2.0 / 13.0;
            ema26 += (c - ema26) * 2.0 / 27.0;
            let macd = ema12 - ema26;
            signal += (macd - signal) * 2.0 / 10.0;
            v.insert("macd_hist".into(), macd - signal);
            pv = 0.9 * pv + c * volume;
            vol = 0.9 * vol + volume;
            v.insert("vwap_deviation".into(), (c - pv / vol) / c);
            v.insert("order_imbalance".into(), 2.0 * rng.uniform() - 1.0);
            out.push(v);
        }
        out
    }

    #[test]
    fn a_random_walk_is_not_predicted() {
        let bars = random_walk(12_000, 42);
        let mut m = SymbolModel::new("X", &MlParams::default());
        for (t, v) in bars.iter().enumerate() {
            m.on_vector(t as u64 * 60 * S, 60, v);
        }
        let cumulative = m.cumulative_accuracy().unwrap();
        let last_500 = m.accuracy().unwrap();
        // About 12,000 scored (sd of the accuracy 0.005); the last 500 have an sd of 0.022, so
        // the 0.03 bound on them holds for this seed, not for every seed (over seeds 100..150:
        // the cumulative accuracy always within 0.011 of 0.5, the last 500 within 0.03 for 43).
        // Observed with this seed: cumulative 0.504, accuracy_500 0.506.
        assert!(m.scored() > 11_900, "{}", m.scored());
        assert!((cumulative - 0.5).abs() <= 0.03, "cumulative {cumulative}");
        assert!((last_500 - 0.5).abs() <= 0.03, "accuracy_500 {last_500}");
    }

    #[test]
    fn a_prediction_does_not_depend_on_what_follows() {
        // The same 300 bars, then two different futures: the predictions published for the
        // first 300 vectors are identical, and each was made by a model that had trained on
        // exactly the bars whose next return was known (version = vectors before it - 1).
        let prefix = random_walk(300, 1);
        let future_a = random_walk(200, 2);
        let mut future_b = random_walk(200, 3);
        // Even the next vector's return (the label of the last prefix prediction) differs.
        for v in &mut future_b {
            if let Some(r) = v.get_mut("ret_1") {
                *r = -*r;
            }
        }
        let run = |future: &[BTreeMap<String, f64>]| {
            let mut m = SymbolModel::new("X", &MlParams::default());
            prefix
                .iter()
                .chain(future)
                .enumerate()
                .filter_map(|(t, v)| m.on_vector(t as u64 * S, 1, v))
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(&future_a), run(&future_b));
        let in_prefix = |p: &&MlPrediction| p.ts < 300 * S;
        let pa: Vec<_> = a.iter().filter(in_prefix).collect();
        let pb: Vec<_> = b.iter().filter(in_prefix).collect();
        assert!(pa.len() > 250, "{}", pa.len());
        assert_eq!(pa, pb);
        assert_ne!(a, b, "the futures do differ");
        // Every prefix vector from bar 20 on has all features; its prediction's model trained
        // on the bars before it that had a prediction and a known next return.
        for w in pa.windows(2) {
            assert_eq!(w[1].model_version, w[0].model_version + 1, "{:?}", w[1]);
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let p = MlParams {
            features: vec!["ret_1".into(), "ret_1".into(), String::new()],
            learning_rate: 0.0,
            l2: -1.0,
            accuracy_window: 0,
        };
        let problems = p.problems().join("; ");
        for needle in [
            "\"ret_1\" twice",
            "empty name",
            "learning_rate 0",
            "l2 -1",
            "accuracy_window",
        ] {
            assert!(problems.contains(needle), "{problems}");
        }
        assert!(MlParams::default().problems().is_empty());
        assert!(MlParams {
            features: vec![],
            ..Default::default()
        }
        .problems()[0]
            .contains("at least one"));
    }

    #[test]
    fn parameters_reject_unknown_fields() {
        let e = serde_json::from_value::<MlParams>(serde_json::json!({"learning_rat": 0.1}));
        assert!(e.is_err());
        let p: MlParams = serde_json::from_value(serde_json::json!({"l2": 0.0})).unwrap();
        assert_eq!((p.l2, p.accuracy_window), (0.0, 500));
    }
}
