//! Features: per-symbol indicators on time bars, published as one `feature_vector` per bar
//! close for the engines downstream (ML, Factor, Enhanced VPIN).
//!
//! Everything runs on event time (the data's timestamps), with state per symbol, so the same
//! data always gives the same vectors.
//!
//! # Bars
//! * Bars of `bar_secs` seconds (60 by default, [`FeaturesParams`]) aligned to multiples of
//!   `bar_secs` since the Unix epoch, built from the symbol's trades
//!   (`market_data.trade.{SYMBOL}`). A bar closes when the first trade of a later period
//!   arrives, and at the end of the data (engine stop, [`FeatureCalculator::finish`]). A period
//!   without trades makes no bar: every window below counts bars, not periods. A trade older
//!   than the symbol's previous one, or of a period whose bar has closed, is ignored.
//! * A symbol that never had a trade uses the provider's bars (`market_data.bar.{SYMBOL}`)
//!   directly, if they are `bar_secs` long (bars of another length are ignored and counted in
//!   the engine's health as `bars_other_length`). Bars of a symbol that has trades are ignored,
//!   so nothing is counted twice. A bar not later than the symbol's previous one is ignored.
//! * Quotes (`market_data.quote.{SYMBOL}`) belong to the bar whose period `[start, start +
//!   bar_secs)` holds their timestamp. Quotes of a period that makes no bar are dropped.
//!
//! # The vector
//! [`FeatureVector`] (kind `feature_vector`, topic `feature_vector.{SYMBOL}`, priority normal)
//! is published at every bar close, from the first bar on, with the bar's start, close and
//! volume. Its `features` map holds only the features whose window is full. Bar `n` is the
//! symbol's `n`-th bar (from 1) and `c_n` its close.
//!
//! | name ([constant](dualbus_model::features::ALL)) | definition | from bar |
//! |---|---|---|
//! | `ret_1`, `ret_5`, `ret_15` | `ln(c_n / c_(n-k))` for k = 1, 5, 15 | k + 1 |
//! | `realized_vol_20` | sample standard deviation (n - 1) of the last 20 values of `ret_1` (per bar, not annualized) | 21 |
//! | `rsi_14` | Wilder's RSI: the first average gain and loss are the simple means of the first 14 close changes (gains and losses as positive numbers), then `avg = (prev x 13 + x) / 14`; `RSI = 100 - 100 / (1 + avg_gain / avg_loss)`, 100 when `avg_loss = 0`, 50 when both are 0 | 15 |
//! | `macd` | `EMA12 - EMA26` of the closes, each EMA with `alpha = 2 / (n + 1)` and seeded with the simple mean of its first `n` closes | 26 |
//! | `macd_signal` | EMA9 of `macd`, seeded with the simple mean of its first 9 values | 34 |
//! | `macd_hist` | `macd - macd_signal` | 34 |
//! | `bollinger_pct_b` | `(c_n - (mid - 2 sd)) / (4 sd)` with `mid` the mean and `sd` the *population* standard deviation (divide by n, the usual Bollinger convention) of the last 20 closes; 0.5 when `sd = 0` | 20 |
//! | `spread_bps` | mean of [`Quote::spread_bps`] over the quotes in the bar's period; absent for a bar without quotes | any bar with a quote |
//! | `order_imbalance` | `(buy - sell) / volume` of the bar's trades by aggressor side, `sell = volume - buy`; absent when the bar's volume is 0 | 1 |
//! | `vwap_deviation` | `c_n / VWAP - 1`, `VWAP = sum(price x size) / sum(size)` over the trades of the last 20 bars; absent when that volume is 0 | 20 |
//!
//! For a provider's bar, the buy volume is the bar's `buy_volume` (a provider that does not
//! know it sends 0, which reads as all sells), and the bar's `price x size` is its typical
//! price `(high + low + close) / 3` times its volume.

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use crate::stats::mean_sd_from_first;
use async_trait::async_trait;
use dualbus_bus::HandlerError;
use dualbus_core::{Envelope, EventKind};
use dualbus_model::features::{
    FeatureVector, BOLLINGER_B, MACD, MACD_HIST, MACD_SIGNAL, ORDER_IMBALANCE, REALIZED_VOL_20,
    RET_1, RET_15, RET_5, RSI_14, SPREAD_BPS, VWAP_DEVIATION,
};
use dualbus_model::market::{Bar, Quote, Side, Trade};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The symbol's bar (from 1) whose vector first holds the feature `name` (the "from bar" column
/// of the module's table); `None` for an unknown name. `spread_bps` needs only a bar with a
/// quote: 1.
pub fn first_bar(name: &str) -> Option<u32> {
    Some(match name {
        RET_1 => 2,
        RET_5 => 6,
        RET_15 => 16,
        REALIZED_VOL_20 => 21,
        RSI_14 => 15,
        MACD => 26,
        MACD_SIGNAL | MACD_HIST => 34,
        BOLLINGER_B | VWAP_DEVIATION => 20,
        SPREAD_BPS | ORDER_IMBALANCE => 1,
        _ => return None,
    })
}

/// Most closes any feature looks at (`realized_vol_20`: 20 returns).
const CLOSES_KEPT: usize = 21;
/// Bars in the VWAP, the Bollinger band and the realized volatility.
const WINDOW_20: usize = 20;
/// Periods with quotes kept while waiting for their bar; beyond this the oldest are dropped,
/// so a symbol with quotes and no trades or bars holds bounded state.
const QUOTE_PERIODS_KEPT: usize = 64;

/// Features engine parameters (its configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesParams {
    /// Bar length in seconds.
    pub bar_secs: u32,
}

impl Default for FeaturesParams {
    fn default() -> Self {
        FeaturesParams { bar_secs: 60 }
    }
}

impl FeaturesParams {
    /// Every problem with these parameters (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.bar_secs == 0 {
            out.push("bar_secs must be at least 1".to_string());
        }
        out
    }
}

/// An exponential moving average seeded with the simple mean of its first `n` values.
#[derive(Clone, Debug)]
struct Ema {
    n: usize,
    alpha: f64,
    seen: usize,
    seed_sum: f64,
    value: Option<f64>,
}

impl Ema {
    fn new(n: usize) -> Ema {
        Ema {
            n,
            alpha: 2.0 / (n as f64 + 1.0),
            seen: 0,
            seed_sum: 0.0,
            value: None,
        }
    }

    /// Adds `x`; the average once `n` values have been seen.
    fn push(&mut self, x: f64) -> Option<f64> {
        let v = match self.value {
            Some(prev) => self.alpha * x + (1.0 - self.alpha) * prev,
            None => {
                self.seen += 1;
                self.seed_sum += x;
                if self.seen < self.n {
                    return None;
                }
                self.seed_sum / self.n as f64
            }
        };
        self.value = Some(v);
        self.value
    }
}

/// Wilder's RSI over `n` changes.
#[derive(Clone, Debug)]
struct Rsi {
    n: usize,
    seen: usize,
    gain: f64,
    loss: f64,
}

impl Rsi {
    fn new(n: usize) -> Rsi {
        Rsi {
            n,
            seen: 0,
            gain: 0.0,
            loss: 0.0,
        }
    }

    /// Adds a close change; the RSI once `n` changes have been seen.
    fn push(&mut self, change: f64) -> Option<f64> {
        let (g, l) = (change.max(0.0), (-change).max(0.0));
        let n = self.n as f64;
        if self.seen < self.n {
            self.seen += 1;
            self.gain += g;
            self.loss += l;
            if self.seen < self.n {
                return None;
            }
            self.gain /= n;
            self.loss /= n;
        } else {
            self.gain = (self.gain * (n - 1.0) + g) / n;
            self.loss = (self.loss * (n - 1.0) + l) / n;
        }
        Some(if self.loss == 0.0 {
            if self.gain == 0.0 {
                50.0
            } else {
                100.0
            }
        } else {
            100.0 - 100.0 / (1.0 + self.gain / self.loss)
        })
    }
}

/// Quotes of one bar period.
#[derive(Clone, Copy, Debug, Default)]
struct SpreadSum {
    sum: f64,
    count: u64,
}

/// A bar being built from trades.
#[derive(Clone, Debug)]
struct OpenBar {
    bar: Bar,
    /// Sum of price x size.
    notional: f64,
}

/// The features of one symbol, fed in event time.
///
/// [`FeatureCalculator::push_bar`] is the indicator step alone (a closed bar and its quote
/// spreads in, a vector out). [`on_trade`](FeatureCalculator::on_trade),
/// [`on_quote`](FeatureCalculator::on_quote), [`on_bar`](FeatureCalculator::on_bar) and
/// [`finish`](FeatureCalculator::finish) are the market data feed the engine uses: they build
/// the bars and collect the quotes as the module documentation says.
#[derive(Clone, Debug)]
pub struct FeatureCalculator {
    symbol: String,
    bar_secs: u32,
    // The feed.
    open: Option<OpenBar>,
    last_trade_ts: Option<u64>,
    has_trades: bool,
    quotes: BTreeMap<u64, SpreadSum>,
    bars_other_length: u64,
    // The indicators.
    last_bar: Option<u64>,
    bars: u64,
    closes: VecDeque<f64>,
    /// (price x size, size) of the last 20 bars.
    flows: VecDeque<(f64, f64)>,
    rsi: Rsi,
    ema12: Ema,
    ema26: Ema,
    signal: Ema,
}

impl FeatureCalculator {
    /// A calculator for `symbol` with bars of `bar_secs` seconds (at least 1).
    pub fn new(symbol: &str, bar_secs: u32) -> FeatureCalculator {
        FeatureCalculator {
            symbol: symbol.to_string(),
            bar_secs: bar_secs.max(1),
            open: None,
            last_trade_ts: None,
            has_trades: false,
            quotes: BTreeMap::new(),
            bars_other_length: 0,
            last_bar: None,
            bars: 0,
            closes: VecDeque::with_capacity(CLOSES_KEPT + 1),
            flows: VecDeque::with_capacity(WINDOW_20 + 1),
            rsi: Rsi::new(14),
            ema12: Ema::new(12),
            ema26: Ema::new(26),
            signal: Ema::new(9),
        }
    }

    /// The instrument.
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// Bar length in seconds.
    pub fn bar_secs(&self) -> u32 {
        self.bar_secs
    }

    /// Bars closed so far.
    pub fn bars(&self) -> u64 {
        self.bars
    }

    /// Whether the symbol has had a trade (its provider bars are then ignored).
    pub fn has_trades(&self) -> bool {
        self.has_trades
    }

    /// Provider bars ignored because they are not `bar_secs` long.
    pub fn bars_other_length(&self) -> u64 {
        self.bars_other_length
    }

    fn period(&self, ts: u64) -> u64 {
        let len = u64::from(self.bar_secs) * 1_000_000_000;
        ts - ts % len
    }

    /// Adds a trade; returns the vector of the bar it closed, if any.
    pub fn on_trade(&mut self, t: &Trade) -> Option<FeatureVector> {
        if self.last_trade_ts.is_some_and(|last| t.ts < last) {
            return None;
        }
        self.last_trade_ts = Some(t.ts);
        self.has_trades = true;
        let start = self.period(t.ts);
        if self.last_bar.is_some_and(|last| start <= last) {
            return None; // that period's bar is closed (from the provider's bars)
        }
        let buy = if t.side == Side::Buy { t.size } else { 0.0 };
        match &mut self.open {
            Some(o) if o.bar.ts == start => {
                let b = &mut o.bar;
                b.high = b.high.max(t.price);
                b.low = b.low.min(t.price);
                b.close = t.price;
                b.volume += t.size;
                b.buy_volume += buy;
                b.trades += 1;
                o.notional += t.price * t.size;
                return None;
            }
            Some(o) if start < o.bar.ts => return None,
            _ => {}
        }
        let fresh = OpenBar {
            bar: Bar {
                symbol: self.symbol.clone(),
                ts: start,
                secs: self.bar_secs,
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: t.size,
                buy_volume: buy,
                trades: 1,
            },
            notional: t.price * t.size,
        };
        let done = self.open.replace(fresh)?;
        self.close_bar(&done.bar, done.notional)
    }

    /// Adds a quote to the spread of its period's bar.
    pub fn on_quote(&mut self, q: &Quote) {
        let spread = q.spread_bps();
        let start = self.period(q.ts);
        if !spread.is_finite() || self.last_bar.is_some_and(|last| start <= last) {
            return;
        }
        let s = self.quotes.entry(start).or_default();
        s.sum += spread;
        s.count += 1;
        while self.quotes.len() > QUOTE_PERIODS_KEPT {
            self.quotes.pop_first();
        }
    }

    /// Adds a provider's bar; returns its vector, or `None` when the bar is ignored (the
    /// symbol has trades, the bar is not `bar_secs` long or not later than the previous one).
    pub fn on_bar(&mut self, b: &Bar) -> Option<FeatureVector> {
        if self.has_trades {
            return None;
        }
        if b.secs != self.bar_secs {
            self.bars_other_length += 1;
            return None;
        }
        let typical = (b.high + b.low + b.close) / 3.0;
        self.close_bar(b, typical * b.volume)
    }

    /// End of the data: closes the bar being built from trades, if any.
    pub fn finish(&mut self) -> Option<FeatureVector> {
        let done = self.open.take()?;
        self.close_bar(&done.bar, done.notional)
    }

    /// Closes `bar` with the spreads collected for its period.
    fn close_bar(&mut self, bar: &Bar, notional: f64) -> Option<FeatureVector> {
        let spread = self.quotes.remove(&bar.ts).map(|s| s.sum / s.count as f64);
        while self
            .quotes
            .first_key_value()
            .is_some_and(|(k, _)| *k <= bar.ts)
        {
            self.quotes.pop_first();
        }
        self.step(bar, notional, spread)
    }

    /// The indicator step: adds a closed `bar` whose trades' `sum(price x size)` is
    /// `notional`, with the spreads (bps) of the quotes in its period; returns its vector, or
    /// `None` when the bar does not start after the previous one (it is then ignored).
    pub fn push_bar(
        &mut self,
        bar: &Bar,
        notional: f64,
        spreads_bps: &[f64],
    ) -> Option<FeatureVector> {
        let spread = (!spreads_bps.is_empty())
            .then(|| spreads_bps.iter().sum::<f64>() / spreads_bps.len() as f64);
        self.step(bar, notional, spread)
    }

    fn step(&mut self, bar: &Bar, notional: f64, spread: Option<f64>) -> Option<FeatureVector> {
        if self.last_bar.is_some_and(|last| bar.ts <= last) {
            return None;
        }
        self.last_bar = Some(bar.ts);
        self.bars += 1;
        let c = bar.close;
        let mut f = BTreeMap::new();
        let mut put = |name: &str, v: f64| {
            f.insert(name.to_string(), v);
        };

        if let Some(&prev) = self.closes.back() {
            if let Some(rsi) = self.rsi.push(c - prev) {
                put(RSI_14, rsi);
            }
        }
        self.closes.push_back(c);
        if self.closes.len() > CLOSES_KEPT {
            self.closes.pop_front();
        }
        let n = self.closes.len();
        for (name, k) in [(RET_1, 1), (RET_5, 5), (RET_15, 15)] {
            if n > k {
                put(name, (c / self.closes[n - 1 - k]).ln());
            }
        }
        if n == CLOSES_KEPT {
            let rets: Vec<f64> = (1..n)
                .map(|i| (self.closes[i] / self.closes[i - 1]).ln())
                .collect();
            put(REALIZED_VOL_20, mean_sd_from_first(rets.iter(), 1).1);
        }
        if n >= WINDOW_20 {
            let (mid, sd) = mean_sd_from_first(self.closes.range(n - WINDOW_20..), 0);
            let b = if sd == 0.0 {
                0.5
            } else {
                (c - (mid - 2.0 * sd)) / (4.0 * sd)
            };
            put(BOLLINGER_B, b);
        }

        let (e12, e26) = (self.ema12.push(c), self.ema26.push(c));
        if let (Some(e12), Some(e26)) = (e12, e26) {
            let line = e12 - e26;
            put(MACD, line);
            if let Some(signal) = self.signal.push(line) {
                put(MACD_SIGNAL, signal);
                put(MACD_HIST, line - signal);
            }
        }

        if let Some(s) = spread {
            put(SPREAD_BPS, s);
        }
        if bar.volume > 0.0 {
            let sell = bar.volume - bar.buy_volume;
            put(ORDER_IMBALANCE, (bar.buy_volume - sell) / bar.volume);
        }
        self.flows.push_back((notional, bar.volume));
        if self.flows.len() > WINDOW_20 {
            self.flows.pop_front();
        }
        if self.flows.len() == WINDOW_20 {
            let (pv, v) = self
                .flows
                .iter()
                .fold((0.0, 0.0), |(pv, v), (p, s)| (pv + p, v + s));
            if v > 0.0 {
                put(VWAP_DEVIATION, c / (pv / v) - 1.0);
            }
        }

        Some(FeatureVector {
            symbol: self.symbol.clone(),
            ts: bar.ts,
            bar_secs: bar.secs,
            close: c,
            volume: bar.volume,
            features: f,
        })
    }
}

/// The Features engine (`features`): reads trades, quotes and bars
/// (`market_data.{trade,quote,bar}.>`, one subscription so their order is kept) and publishes
/// a `feature_vector.{SYMBOL}` at each bar close, as the module documentation says.
/// Configuration: [`FeaturesParams`]. On stop, the bar being built of each symbol closes (the
/// end of the data), in symbol order.
#[derive(Default)]
pub struct FeaturesEngine {
    params: FeaturesParams,
    calcs: BTreeMap<String, FeatureCalculator>,
    published: u64,
}

impl FeaturesEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: FeaturesParams) -> FeaturesEngine {
        FeaturesEngine {
            params,
            ..Default::default()
        }
    }

    /// Feature vectors published so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    fn calc(&mut self, symbol: &str) -> &mut FeatureCalculator {
        if !self.calcs.contains_key(symbol) {
            let c = FeatureCalculator::new(symbol, self.params.bar_secs);
            self.calcs.insert(symbol.to_string(), c);
        }
        self.calcs.get_mut(symbol).expect("just inserted")
    }

    /// Publishes `v`; a failure is logged rather than retried, since a redelivery of the
    /// message that closed the bar would count it twice.
    async fn publish(&mut self, ctx: &EngineContext, v: &FeatureVector) {
        match ctx.send(v).await {
            Ok(()) => self.published += 1,
            Err(e) => {
                tracing::warn!(symbol = %v.symbol, error = %e, "feature vector not published")
            }
        }
    }
}

#[async_trait]
impl Engine for FeaturesEngine {
    fn name(&self) -> &'static str {
        "features"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::FeatureVector]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        // One interest: one consumer group reading one stream, so a quote stays in order with
        // the trade that closes its bar.
        vec![Interest::reliable(&[
            "market_data.trade.>",
            "market_data.quote.>",
            "market_data.bar.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.params = ctx.settings()?;
        }
        EngineError::check("features", self.params.problems())?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        // market_data.{type}.{SYMBOL}
        let data_type = msg.topic.as_str().split('.').nth(1).unwrap_or("");
        let closed = match data_type {
            "trade" => {
                let t: Trade = msg.decode()?;
                self.calc(&t.symbol).on_trade(&t)
            }
            "quote" => {
                let q: Quote = msg.decode()?;
                self.calc(&q.symbol).on_quote(&q);
                None
            }
            "bar" => {
                let b: Bar = msg.decode()?;
                self.calc(&b.symbol).on_bar(&b)
            }
            _ => None,
        };
        if let Some(v) = closed {
            self.publish(ctx, &v).await;
        }
        Ok(())
    }

    async fn stop(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        let last: Vec<FeatureVector> = self.calcs.values_mut().filter_map(|c| c.finish()).collect();
        for v in &last {
            self.publish(ctx, v).await;
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let other: u64 = self.calcs.values().map(|c| c.bars_other_length()).sum();
        serde_json::json!({
            "symbols": self.calcs.len(),
            "vectors_published": self.published,
            "bars_other_length": other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::features::ALL;

    const S: u64 = 1_000_000_000;
    const MIN: u64 = 60 * S;

    /// A 60 s bar `i` (starting at `i` minutes) closing at `close`, volume 1, half bought.
    fn bar(i: u64, close: f64) -> Bar {
        Bar {
            symbol: "X".into(),
            ts: i * MIN,
            secs: 60,
            open: close,
            high: close,
            low: close,
            close,
            volume: 1.0,
            buy_volume: 0.5,
            trades: 1,
        }
    }

    /// The vectors of `closes` pushed as bars 1, 2, ... without quotes.
    fn run(closes: &[f64]) -> Vec<FeatureVector> {
        let mut c = FeatureCalculator::new("X", 60);
        closes
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                c.push_bar(&bar(i as u64 + 1, x), x, &[])
                    .expect("later bar")
            })
            .collect()
    }

    fn trade(ts: u64, price: f64, size: f64, side: Side) -> Trade {
        Trade {
            symbol: "X".into(),
            ts,
            price,
            size,
            side,
            id: 0,
        }
    }

    fn quote(ts: u64, bid: f64, ask: f64) -> Quote {
        Quote {
            symbol: "X".into(),
            ts,
            bid,
            ask,
            bid_size: 1.0,
            ask_size: 1.0,
        }
    }

    fn get(v: &FeatureVector, name: &str) -> Option<f64> {
        v.features.get(name).copied()
    }

    fn near(got: Option<f64>, want: f64) {
        let got = got.expect("feature present");
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "got {got}, want {want}"
        );
    }

    #[test]
    fn log_returns_over_1_5_and_15_bars() {
        // c_n = 100 + n for bars 1..16.
        // bar 16: ret_1 = ln(116/115), ret_5 = ln(116/111), ret_15 = ln(116/101).
        // bar 6: ret_5 = ln(106/101), the first one.
        let closes: Vec<f64> = (1..=16).map(|n| 100.0 + n as f64).collect();
        let v = run(&closes);
        assert_eq!(get(&v[0], RET_1), None, "one close: no return");
        near(get(&v[1], RET_1), (102.0f64 / 101.0).ln());
        assert_eq!(get(&v[4], RET_5), None);
        near(get(&v[5], RET_5), 0.048_318_577_270_807_73);
        assert_eq!(get(&v[14], RET_15), None);
        let last = &v[15];
        near(get(last, RET_1), 0.008_658_062_743_114_531);
        near(get(last, RET_5), 0.044_059_989_794_030_495);
        near(get(last, RET_15), 0.138_469_674_265_105_12);
    }

    #[test]
    fn realized_volatility_is_the_sample_sd_of_20_returns() {
        // Closes 100, 110, 100, ... (21 closes): the 20 returns are +a, -a, ... with
        // a = ln(1.1), 10 of each: mean 0, sample variance 20 a^2 / 19,
        // sd = ln(1.1) x sqrt(20/19) = 0.09778618121258102.
        let closes: Vec<f64> = (0..21)
            .map(|i| if i % 2 == 0 { 100.0 } else { 110.0 })
            .collect();
        let v = run(&closes);
        assert_eq!(get(&v[19], REALIZED_VOL_20), None, "19 returns");
        near(get(&v[20], REALIZED_VOL_20), 0.097_786_181_212_581_02);
        // A geometric series has 20 equal returns: no volatility.
        let flat: Vec<f64> = (0..21).map(|i| 100.0 * 1.01f64.powi(i)).collect();
        assert!(get(&run(&flat)[20], REALIZED_VOL_20).unwrap() < 1e-15);
    }

    #[test]
    fn rsi_uses_wilder_smoothing_after_a_simple_mean() {
        // 15 closes, changes +2, -1 seven times: gains 7 x 2 = 14, losses 7 x 1 = 7.
        // Bar 15: avg_gain = 14/14 = 1, avg_loss = 7/14 = 0.5, RS = 2, RSI = 100 - 100/3.
        // Bar 16, change +3: avg_gain = (13 x 1 + 3)/14 = 8/7, avg_loss = 13 x 0.5/14 = 13/28,
        //   RS = 32/13, RSI = 100 - 1300/45 = 640/9.
        // Bar 17, change -4: avg_gain = (13 x 8/7)/14 = 52/49,
        //   avg_loss = (13 x 13/28 + 4)/14 = 281/392, RS = 416/281, RSI = 41600/697.
        let mut closes = vec![100.0];
        for _ in 0..7 {
            let c = closes.last().unwrap() + 2.0;
            closes.push(c);
            closes.push(c - 1.0);
        }
        let c = closes.last().unwrap() + 3.0;
        closes.push(c);
        closes.push(c - 4.0);
        let v = run(&closes);
        assert_eq!(get(&v[13], RSI_14), None, "13 changes");
        near(get(&v[14], RSI_14), 200.0 / 3.0);
        near(get(&v[15], RSI_14), 640.0 / 9.0);
        near(get(&v[16], RSI_14), 41600.0 / 697.0);
        // Only gains: 100; no change at all: 50.
        let up: Vec<f64> = (0..15).map(|i| 100.0 + i as f64).collect();
        assert_eq!(get(&run(&up)[14], RSI_14), Some(100.0));
        assert_eq!(get(&run(&[7.0; 15])[14], RSI_14), Some(50.0));
    }

    #[test]
    fn macd_line_signal_and_histogram() {
        // Closes 100, except c_12 = 112 and c_35 = 110.
        // EMA12 seed (bar 12) = (11 x 100 + 112)/12 = 101, then with closes at 100 it decays
        //   by 11/13 a bar: EMA12_t = 100 + (11/13)^(t-12).
        // EMA26 seed (bar 26) = (25 x 100 + 112)/26 = 100 + 6/13, then
        //   EMA26_t = 100 + (6/13)(25/27)^(t-26).
        // line_t = (11/13)^(t-12) - (6/13)(25/27)^(t-26):
        //   line_26 = -0.3650910314775439, line_34 = -0.22401027669433035.
        // signal_34 = mean(line_26..line_34) = -0.29181336946260555,
        //   hist_34 = line_34 - signal_34 = 0.0678030927682752.
        // Bar 35 (close 110): EMA12 = 2/13 x 110 + 11/13 x EMA12_34, EMA26 likewise with 2/27:
        //   line_35 = 20/13 - 20/27 + (11/13)^23 - (6/13)(25/27)^9 = 0.5882820839550424,
        //   signal_35 = 0.2 x line_35 + 0.8 x signal_34 = -0.11579427877907597,
        //   hist_35 = 0.7040763627341184.
        let mut closes = vec![100.0; 35];
        closes[11] = 112.0;
        closes[34] = 110.0;
        let v = run(&closes);
        assert_eq!(get(&v[24], MACD), None, "no EMA26 before bar 26");
        near(get(&v[25], MACD), -0.365_091_031_477_543_9);
        assert_eq!(get(&v[32], MACD_SIGNAL), None, "8 line values");
        assert_eq!(get(&v[32], MACD_HIST), None);
        near(get(&v[33], MACD), -0.224_010_276_694_330_35);
        near(get(&v[33], MACD_SIGNAL), -0.291_813_369_462_605_55);
        near(get(&v[33], MACD_HIST), 0.067_803_092_768_275_2);
        near(get(&v[34], MACD), 0.588_282_083_955_042_4);
        near(get(&v[34], MACD_SIGNAL), -0.115_794_278_779_075_97);
        near(get(&v[34], MACD_HIST), 0.704_076_362_734_118_4);
    }

    #[test]
    fn bollinger_pct_b_uses_the_population_sd() {
        // 19 closes at 100, then 120: mid = 101, population variance
        // = (19 x 1^2 + 19^2)/20 = 19, sd = sqrt(19);
        // %b = (120 - 101 + 2 sqrt(19))/(4 sqrt(19)) = sqrt(19)/4 + 0.5 = 1.5897247358851685.
        let mut closes = vec![100.0; 20];
        closes[19] = 120.0;
        let v = run(&closes);
        assert_eq!(get(&v[18], BOLLINGER_B), None, "19 closes");
        near(get(&v[19], BOLLINGER_B), 1.589_724_735_885_168_5);
        // A flat window has no band: 0.5.
        assert_eq!(get(&run(&[0.1; 20])[19], BOLLINGER_B), Some(0.5));
    }

    #[test]
    fn only_full_windows_are_published_and_every_bar_gives_a_vector() {
        let closes: Vec<f64> = (0..40).map(|i| 100.0 + (i % 7) as f64).collect();
        let v = run(&closes);
        assert_eq!(v.len(), 40);
        let first = |name: &str| v.iter().position(|x| x.features.contains_key(name));
        // Bar numbers (from 1) where each feature appears first.
        for (name, bar) in [
            (RET_1, 2),
            (RET_5, 6),
            (RET_15, 16),
            (REALIZED_VOL_20, 21),
            (RSI_14, 15),
            (MACD, 26),
            (MACD_SIGNAL, 34),
            (MACD_HIST, 34),
            (BOLLINGER_B, 20),
            (ORDER_IMBALANCE, 1),
            (VWAP_DEVIATION, 20),
        ] {
            assert_eq!(first(name), Some(bar - 1), "{name}");
            assert!(v[bar - 1..].iter().all(|x| x.features.contains_key(name)));
        }
        assert_eq!(first(SPREAD_BPS), None, "no quotes");
        assert_eq!(v[33].features.len(), 11, "everything but the spread");
        assert_eq!((v[0].close, v[0].volume, v[0].ts), (100.0, 1.0, MIN));
    }

    #[test]
    fn spread_is_the_mean_over_the_quotes_in_the_bars_period() {
        let mut c = FeatureCalculator::new("X", 60);
        // Bar [60 s, 120 s): quotes of 2 and 4 bps (bid/ask around a mid of 10 000).
        c.on_quote(&quote(50 * S, 9_990.0, 10_010.0)); // before the bar: no bar for period 0
        c.on_quote(&quote(60 * S, 9_999.0, 10_001.0)); // 2 bps
        assert!(c
            .on_trade(&trade(61 * S, 10_000.0, 1.0, Side::Buy))
            .is_none());
        c.on_quote(&quote(119 * S, 9_998.0, 10_002.0)); // 4 bps
        c.on_quote(&quote(120 * S, 9_995.0, 10_005.0)); // 10 bps, next period
        let v = c
            .on_trade(&trade(150 * S, 10_000.0, 1.0, Side::Buy))
            .expect("closed");
        near(get(&v, SPREAD_BPS), 3.0);
        // Period [180 s, 240 s) has a quote but no trade: no bar, its quote is dropped.
        c.on_quote(&quote(200 * S, 9_000.0, 11_000.0));
        let v = c
            .on_trade(&trade(250 * S, 10_000.0, 1.0, Side::Buy))
            .expect("closed");
        assert_eq!(v.ts, 120 * S);
        near(get(&v, SPREAD_BPS), 10.0);
        // A bar without quotes has no spread; a quote of a closed bar's period is ignored.
        c.on_quote(&quote(130 * S, 9_000.0, 11_000.0));
        let v = c.finish().expect("flushed");
        assert_eq!(v.ts, 240 * S);
        assert_eq!(get(&v, SPREAD_BPS), None);
    }

    #[test]
    fn order_imbalance_is_by_aggressor_side() {
        // Buys 3 + 0.5, sells 1 + 0.5: (3.5 - 1.5)/5 = 0.4.
        let mut c = FeatureCalculator::new("X", 60);
        c.on_trade(&trade(0, 10.0, 3.0, Side::Buy));
        c.on_trade(&trade(S, 11.0, 1.0, Side::Sell));
        c.on_trade(&trade(2 * S, 12.0, 0.5, Side::Sell));
        c.on_trade(&trade(3 * S, 11.0, 0.5, Side::Buy));
        let v = c.finish().expect("one bar");
        near(get(&v, ORDER_IMBALANCE), 0.4);
        // A bar of zero-size prints has no imbalance.
        c.on_trade(&trade(MIN, 10.0, 0.0, Side::Buy));
        assert_eq!(get(&c.finish().unwrap(), ORDER_IMBALANCE), None);
    }

    #[test]
    fn vwap_deviation_is_over_the_trades_of_the_last_20_bars() {
        // Bar i (i = 1..21) trades size i at 100 + i; bar 1 as two prints of 0.5 at 100 and
        // 102 (same notional, 101, but its close is 102).
        // Bar 20: VWAP = sum (100 + i) i / sum i over 1..20 = (21000 + 2870)/210 = 113.6667,
        //   deviation = 120/113.6667 - 1 = 0.055718475073313734.
        // Bar 21: bars 2..21: (100 x 230 + 3310)/230 = 114.3913,
        //   deviation = 121/114.3913 - 1 = 0.0577727099961991.
        let mut c = FeatureCalculator::new("X", 60);
        let mut out = Vec::new();
        c.on_trade(&trade(MIN, 100.0, 0.5, Side::Buy));
        c.on_trade(&trade(MIN + S, 102.0, 0.5, Side::Sell));
        for i in 2..=21u64 {
            let p = 100.0 + i as f64;
            out.extend(c.on_trade(&trade(i * MIN, p, i as f64, Side::Buy)));
        }
        out.extend(c.finish());
        assert_eq!(out.len(), 21);
        assert_eq!(out[0].close, 102.0);
        assert_eq!(get(&out[18], VWAP_DEVIATION), None, "19 bars");
        near(get(&out[19], VWAP_DEVIATION), 0.055_718_475_073_313_734);
        near(get(&out[20], VWAP_DEVIATION), 0.057_772_709_996_199_1);
    }

    #[test]
    fn a_bar_closes_only_when_a_trade_of_a_later_period_arrives() {
        let mut c = FeatureCalculator::new("X", 60);
        assert!(c.on_trade(&trade(61 * S, 10.0, 2.0, Side::Buy)).is_none());
        assert!(c.on_trade(&trade(90 * S, 12.0, 1.0, Side::Sell)).is_none());
        assert!(c.on_trade(&trade(119 * S, 9.0, 1.0, Side::Buy)).is_none());
        // An older print is ignored, as the validator rejects it.
        assert!(c.on_trade(&trade(100 * S, 50.0, 9.0, Side::Buy)).is_none());
        // Period [180 s, 240 s): the bar of [60 s, 120 s) closes; period 120 s had no trade.
        let v = c
            .on_trade(&trade(200 * S, 11.0, 1.0, Side::Buy))
            .expect("closed");
        assert_eq!((v.symbol.as_str(), v.ts, v.bar_secs), ("X", 60 * S, 60));
        assert_eq!((v.close, v.volume), (9.0, 4.0));
        near(get(&v, ORDER_IMBALANCE), 0.5);
        assert_eq!(c.bars(), 1);
        let v = c.finish().expect("the open bar");
        assert_eq!((v.ts, v.close), (180 * S, 11.0));
        near(get(&v, RET_1), (11.0f64 / 9.0).ln());
        assert!(c.finish().is_none(), "nothing open");
        // The indicator step ignores a bar that does not start later.
        assert!(c.push_bar(&bar(3, 1.0), 1.0, &[]).is_none());
    }

    #[test]
    fn provider_bars_are_used_for_a_symbol_without_trades() {
        // Bars i = 1..20, close 100 + i, high/low close +- 1: typical price = close, volume 4,
        // buy volume 1: imbalance (1 - 3)/4 = -0.5; VWAP of bar 20 = mean(101..120) = 110.5,
        // deviation = 120/110.5 - 1.
        let mut c = FeatureCalculator::new("X", 60);
        let mut out = Vec::new();
        for i in 1..=20u64 {
            let close = 100.0 + i as f64;
            // Quotes of the bar's period arrive before the bar (published once it has ended).
            c.on_quote(&quote(i * MIN + S, close - 0.01, close + 0.01));
            let b = Bar {
                high: close + 1.0,
                low: close - 1.0,
                volume: 4.0,
                buy_volume: 1.0,
                ..bar(i, close)
            };
            out.extend(c.on_bar(&b));
        }
        assert_eq!(out.len(), 20);
        near(get(&out[0], ORDER_IMBALANCE), -0.5);
        near(get(&out[0], SPREAD_BPS), 0.02 / 101.0 * 1e4);
        near(get(&out[19], VWAP_DEVIATION), 120.0 / 110.5 - 1.0);
        // A bar of another length is ignored and counted.
        let hourly = Bar {
            secs: 3600,
            ..bar(21, 1.0)
        };
        assert!(c.on_bar(&hourly).is_none());
        assert_eq!(c.bars_other_length(), 1);
        // Once the symbol trades, its bars come from the trades only.
        assert!(c.on_trade(&trade(21 * MIN, 50.0, 1.0, Side::Buy)).is_none());
        assert!(c.on_bar(&bar(21, 50.0)).is_none());
        let v = c.finish().expect("the trade bar");
        assert_eq!((v.ts, v.close, c.bars()), (21 * MIN, 50.0, 21));
        // A trade of a period the provider's bars already closed is ignored.
        let mut c = FeatureCalculator::new("X", 60);
        c.on_bar(&bar(5, 10.0)).expect("bar 1");
        assert!(c
            .on_trade(&trade(5 * MIN + S, 11.0, 1.0, Side::Buy))
            .is_none());
        assert!(c.finish().is_none());
    }

    #[test]
    fn the_same_data_gives_the_same_vectors() {
        // A pseudo-random walk of trades and quotes (a fixed LCG), fed to two calculators.
        let mut state = 42u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut price = 100.0;
        let mut feed = Vec::new();
        for k in 0..3000u64 {
            let ts = k * S / 2;
            price *= 1.0 + (next() - 0.5) * 0.01;
            let side = if next() < 0.5 { Side::Buy } else { Side::Sell };
            feed.push((
                trade(ts, price, next() * 3.0, side),
                quote(ts, price - 0.01, price + 0.02),
            ));
        }
        let go = || {
            let mut c = FeatureCalculator::new("X", 10);
            let mut out = Vec::new();
            for (t, q) in &feed {
                c.on_quote(q);
                out.extend(c.on_trade(t));
            }
            out.extend(c.finish());
            out
        };
        let (a, b) = (go(), go());
        assert_eq!(a.len(), 150);
        assert_eq!(a, b);
        assert!(
            a.last().unwrap().features.len() == ALL.len(),
            "{:?}",
            a.last()
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let p = FeaturesParams { bar_secs: 0 };
        assert!(p.problems().join("; ").contains("bar_secs"));
        assert!(FeaturesParams::default().problems().is_empty());
        let err = serde_json::from_value::<FeaturesParams>(serde_json::json!({"bar_sec": 5}));
        assert!(err.is_err(), "unknown fields are refused");
    }

    #[test]
    fn first_bar_is_where_each_feature_first_appears() {
        let closes: Vec<f64> = (0..40).map(|i| 100.0 + (i as f64 * 0.7).sin()).collect();
        let vs = run(&closes);
        for name in ALL.iter().filter(|n| **n != SPREAD_BPS) {
            let first = vs.iter().position(|v| v.features.contains_key(*name));
            assert_eq!(first.map(|i| i as u32 + 1), first_bar(name), "{name}");
        }
        assert_eq!(first_bar(SPREAD_BPS), Some(1));
        assert_eq!(first_bar("nope"), None);
    }
}
