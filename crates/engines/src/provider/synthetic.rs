//! Synthetic market data: deterministic from a seed, needs nothing.
//!
//! A universe of 13 symbols, simulated in steps of `step` (100 ms) of data time:
//!
//! * **Prices**: log-price random walk with stochastic volatility (the log of volatility is an
//!   AR(1) process around its base) and occasional jumps (Poisson arrivals, normal sizes).
//! * **Trades**: arrivals are clustered: a self-exciting intensity (each trade raises the rate,
//!   the excess decays exponentially, a discrete-time simplification of a Hawkes process) that
//!   also rises with volatility. Sizes are log-normal; the aggressor side leans with the
//!   step's price move. Buys print at the ask, sells at the bid.
//! * **Quotes**: one per symbol per step, with a spread that widens with volatility and in
//!   stress.
//! * **Bars**: 1-minute bars built from the trades, published as they close.
//! * **Flash crash** (`flash_crash_at`): from that data time on, for `crash_secs` (120 s)
//!   every symbol falls by `crash_depth` (8%), trade intensity is 10x, 90% of trades are
//!   sells and spreads are 5x wide; the next 5 minutes recover half the drop.
//!
//! **Volatility.** A symbol's stated annualized volatility (the universe's last column) is its
//! realized one, stochastic volatility and jumps included: the base volatility of the walk is
//! scaled down by what they add (`base_sigma`). The flash crash comes on top.
//!
//! History: before the stream's start, `warmup_bars` 1-minute bars per symbol come from the
//! same process at the scale of a minute (the stochastic volatility stepped a minute at a time,
//! the same jumps, buying that leans with the move), ending at the stream's first price; after
//! it, the bars the stream has closed so far. So history never looks ahead of the stream.

use super::{HistoryRequest, MarketStream, Pacer, Provider, ProviderError, Speed};
use crate::market::BarBuilder;
use async_trait::async_trait;
use dualbus_model::market::{Bar, Instrument, MarketEvent, Quote, Side, Trade};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The universe: symbol, starting price, tick size, lot size, annualized volatility.
pub const UNIVERSE: [(&str, f64, f64, f64, f64); 13] = [
    ("BTCUSDT", 60_000.0, 0.01, 0.00001, 0.60),
    ("ETHUSDT", 3_000.0, 0.01, 0.0001, 0.70),
    ("SOLUSDT", 150.0, 0.01, 0.01, 0.90),
    ("BNBUSDT", 550.0, 0.01, 0.001, 0.60),
    ("XRPUSDT", 0.55, 0.0001, 1.0, 0.80),
    ("ADAUSDT", 0.45, 0.0001, 1.0, 0.85),
    ("DOGEUSDT", 0.15, 0.00001, 1.0, 1.00),
    ("AVAXUSDT", 35.0, 0.01, 0.01, 0.95),
    ("LINKUSDT", 15.0, 0.001, 0.01, 0.85),
    ("DOTUSDT", 7.0, 0.001, 0.01, 0.85),
    ("LTCUSDT", 80.0, 0.01, 0.001, 0.70),
    ("TRXUSDT", 0.12, 0.00001, 1.0, 0.60),
    ("ATOMUSDT", 9.0, 0.001, 0.01, 0.85),
];

/// Settings of the synthetic provider.
#[derive(Clone, Debug)]
pub struct SyntheticOptions {
    /// Seed: the same seed gives the same data.
    pub seed: u64,
    /// Data time of the first event, Unix ns (default 2026-01-05 00:00 UTC).
    pub start_ts: u64,
    /// Playback speed (default 60x: one minute of market per second).
    pub speed: Speed,
    /// Simulation step in data time.
    pub step: Duration,
    /// Trades per second per symbol in calm markets, before clustering adds its share.
    pub trades_per_sec: f64,
    /// Inject a flash crash this long after the start (data time).
    pub flash_crash_at: Option<Duration>,
    /// How long the crash lasts.
    pub crash_secs: f64,
    /// How far prices fall during the crash (fraction).
    pub crash_depth: f64,
    /// Stop after this much data time (`None`: never).
    pub duration: Option<Duration>,
    /// 1-minute bars of history before the start, per symbol.
    pub warmup_bars: u32,
    /// Price jumps (10 sigma-minutes in size, either way) per hour per symbol; 0 gives a calm
    /// market with no discontinuities (the other random draws stay the same).
    pub jumps_per_hour: f64,
    /// Only these symbols (empty: all 13).
    pub symbols: Vec<String>,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            seed: 7,
            start_ts: 1_767_571_200_000_000_000,
            speed: Speed::Times(60.0),
            step: Duration::from_millis(100),
            trades_per_sec: 1.0,
            flash_crash_at: None,
            crash_secs: 120.0,
            crash_depth: 0.08,
            duration: None,
            warmup_bars: 600,
            jumps_per_hour: 1.0,
            symbols: Vec::new(),
        }
    }
}

/// SplitMix64: small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson with mean `lambda` (Knuth for small means, normal approximation above 30).
    fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u32;
        }
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

fn symbol_seed(seed: u64, symbol: &str) -> u64 {
    // FNV-1a of the symbol, mixed with the seed: each symbol its own stream of numbers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in symbol.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

const SECS_PER_YEAR: f64 = 365.0 * 24.0 * 3600.0;
const NS: u64 = 1_000_000_000;

/// Stationary standard deviation of the log volatility multiplier (the AR(1) of the
/// stochastic volatility).
const LOG_VOL_SD: f64 = 0.35;
/// Mean reversion time of the log volatility, seconds (a half-life of about 5 minutes).
const LOG_VOL_TAU: f64 = 430.0;
/// A jump's standard deviation in sigma-minutes (of the volatility at the time).
const JUMP_SIGMA_MINUTES: f64 = 10.0;

/// The base volatility per sqrt(second) that gives `annual_vol` of realized volatility once the
/// stochastic volatility and the jumps add theirs. Per second, the variance of the log price is
/// `base^2 x E[exp(2 x log_vol)] x (1 + jumps_per_second x 60 x JUMP_SIGMA_MINUTES^2)`, with
/// `E[exp(2 x log_vol)] = exp(2 x LOG_VOL_SD^2)` for the stationary normal log volatility; the
/// base is chosen so that this equals `annual_vol^2` over a year. (The flash crash's drift is
/// on top: it is a stress, not part of the calm market's volatility.)
fn base_sigma(annual_vol: f64, jumps_per_hour: f64) -> f64 {
    let sv = (2.0 * LOG_VOL_SD * LOG_VOL_SD).exp();
    let jumps = 1.0 + jumps_per_hour.max(0.0) / 3600.0 * 60.0 * JUMP_SIGMA_MINUTES.powi(2);
    annual_vol / SECS_PER_YEAR.sqrt() / (sv * jumps).sqrt()
}

/// One symbol's simulated market.
#[derive(Clone, Debug)]
struct SymbolSim {
    symbol: String,
    rng: Rng,
    log_price: f64,
    /// Base volatility per sqrt(second), before the stochastic volatility and the jumps
    /// ([`base_sigma`]).
    sigma: f64,
    /// Log of the volatility multiplier (AR(1) around 0).
    log_vol: f64,
    /// Excess trade intensity from recent trades (self-excitation).
    excitation: f64,
    tick: f64,
    lot: f64,
    base_spread_bps: f64,
    next_trade_id: u64,
    /// Calm trade arrivals per second (before self-excitation).
    rate: f64,
    jumps_per_hour: f64,
}

/// Where a symbol stands in a flash crash at some data time.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stress {
    /// Drift of the log price per second.
    drift: f64,
    /// Multiplier of trade intensity.
    intensity: f64,
    /// Probability that a trade is a sell (0.5 when calm).
    sell_bias: Option<f64>,
    /// Multiplier of the spread.
    spread: f64,
}

const CALM: Stress = Stress {
    drift: 0.0,
    intensity: 1.0,
    sell_bias: None,
    spread: 1.0,
};

impl SymbolSim {
    fn new(seed: u64, spec: &(&str, f64, f64, f64, f64), opts: &SyntheticOptions) -> SymbolSim {
        let (symbol, price, tick, lot, annual_vol) = *spec;
        SymbolSim {
            symbol: symbol.to_string(),
            rng: Rng::new(symbol_seed(seed, symbol)),
            log_price: price.ln(),
            sigma: base_sigma(annual_vol, opts.jumps_per_hour),
            log_vol: 0.0,
            excitation: 0.0,
            tick,
            lot,
            base_spread_bps: 1.0 + annual_vol * 2.0,
            next_trade_id: 1,
            rate: opts.trades_per_sec,
            jumps_per_hour: opts.jumps_per_hour,
        }
    }

    fn round_tick(&self, p: f64) -> f64 {
        ((p / self.tick).round() * self.tick).max(self.tick)
    }

    /// Simulates one step of `dt` seconds starting at `ts`; appends the quote and trades.
    fn step(&mut self, ts: u64, dt: f64, stress: Stress, out: &mut Vec<MarketEvent>) {
        // Stochastic volatility: AR(1) in log space, half-life about 5 minutes.
        let keep = (-dt / LOG_VOL_TAU).exp();
        self.log_vol =
            self.log_vol * keep + LOG_VOL_SD * (1.0 - keep * keep).sqrt() * self.rng.normal();
        let vol = self.sigma * self.log_vol.exp();
        // Jumps: about `jumps_per_hour` per symbol, 10 sigma-minutes in size.
        let jump = if self.rng.uniform() < dt * self.jumps_per_hour / 3600.0 {
            self.rng.normal() * vol * 60f64.sqrt() * JUMP_SIGMA_MINUTES
        } else {
            0.0
        };
        let ret = stress.drift * dt + vol * dt.sqrt() * self.rng.normal() + jump;
        self.log_price += ret;
        let mid = self.log_price.exp();
        let vol_ratio = self.log_vol.exp();
        let spread_bps = self.base_spread_bps * (0.5 + 0.5 * vol_ratio) * stress.spread;
        let half = (mid * spread_bps / 2e4).max(self.tick / 2.0);
        let bid = self.round_tick(mid - half);
        let ask = self.round_tick(mid + half).max(bid + self.tick);
        let (u_bid, u_ask) = (self.rng.uniform(), self.rng.uniform());
        out.push(MarketEvent::Quote(Quote {
            symbol: self.symbol.clone(),
            ts,
            bid,
            ask,
            bid_size: self.round_lot(u_bid * 20.0 * self.lot_scale()),
            ask_size: self.round_lot(u_ask * 20.0 * self.lot_scale()),
        }));
        // Clustered arrivals: base rate, raised by volatility and by recent trades.
        // Each trade adds 0.3/s to the rate, decaying over 2 s: 0.6 follow-on trades per trade
        // (below 1, so bursts die out); capped as a guard.
        let lambda = (self.rate * vol_ratio.sqrt() * stress.intensity + self.excitation) * dt;
        let n = self.rng.poisson(lambda);
        self.excitation =
            (self.excitation * (-dt / 2.0).exp() + 0.3 * f64::from(n)).min(self.rate * 100.0);
        if n == 0 {
            return;
        }
        let mut offsets: Vec<u64> = (0..n)
            .map(|_| (self.rng.uniform() * dt * 1e9) as u64)
            .collect();
        offsets.sort_unstable();
        // Side leans with the move: up-moves come with buying.
        let p_sell = stress.sell_bias.unwrap_or_else(|| {
            (0.5 - 0.3 * (ret / (vol * dt.sqrt()).max(1e-12)).tanh() * 0.5).clamp(0.1, 0.9)
        });
        for off in offsets {
            let side = if self.rng.uniform() < p_sell {
                Side::Sell
            } else {
                Side::Buy
            };
            let z = self.rng.normal();
            let size = self.round_lot(z.exp() * self.lot_scale());
            let price = match side {
                Side::Buy => ask,
                Side::Sell => bid,
            };
            out.push(MarketEvent::Trade(Trade {
                symbol: self.symbol.clone(),
                ts: ts + off,
                price,
                size,
                side,
                id: self.next_trade_id,
            }));
            self.next_trade_id += 1;
        }
    }

    /// A typical trade size: about 2,000 units of quote currency.
    fn lot_scale(&self) -> f64 {
        2_000.0 / self.log_price.exp()
    }

    fn round_lot(&self, q: f64) -> f64 {
        ((q / self.lot).round() * self.lot).max(self.lot)
    }
}

/// The flash crash's effect at `t` seconds after the start.
fn stress_at(opts: &SyntheticOptions, t: f64) -> Stress {
    let Some(at) = opts.flash_crash_at else {
        return CALM;
    };
    let start = at.as_secs_f64();
    let len = opts.crash_secs.max(1.0);
    let fall = -(1.0 - opts.crash_depth.clamp(0.0, 0.95)).ln();
    if t >= start && t < start + len {
        Stress {
            drift: -fall / len,
            intensity: 10.0,
            sell_bias: Some(0.9),
            spread: 5.0,
        }
    } else if t >= start + len && t < start + len + 300.0 {
        Stress {
            drift: fall / 2.0 / 300.0,
            intensity: 2.0,
            sell_bias: None,
            spread: 2.0,
        }
    } else {
        CALM
    }
}

/// Bars shared by the stream (which closes them) and history calls.
#[derive(Default, Debug)]
struct BarStore {
    bars: HashMap<String, Vec<Bar>>,
    /// The provider's data time: the latest event the stream handed out (the start before
    /// it; `u64::MAX` once the data ended). History has no bar ending after it.
    data_ts: u64,
}

/// The synthetic provider.
pub struct SyntheticProvider {
    opts: SyntheticOptions,
    specs: Vec<(&'static str, f64, f64, f64, f64)>,
    /// Bars closed by the most recently opened stream, after the warm-up bars.
    store: Arc<Mutex<BarStore>>,
}

impl SyntheticProvider {
    /// A provider with these settings.
    ///
    /// # Errors
    /// [`ProviderError::Config`] for an unknown symbol or a zero step.
    pub fn new(opts: SyntheticOptions) -> Result<SyntheticProvider, ProviderError> {
        if opts.step.is_zero() {
            return Err(ProviderError::Config(
                "synthetic step must be above zero".into(),
            ));
        }
        let mut specs = Vec::new();
        for s in &opts.symbols {
            match UNIVERSE.iter().find(|u| u.0.eq_ignore_ascii_case(s)) {
                Some(u) => specs.push(*u),
                None => {
                    let known: Vec<&str> = UNIVERSE.iter().map(|u| u.0).collect();
                    return Err(ProviderError::Config(format!(
                        "unknown synthetic symbol {s:?}: the universe is {known:?}"
                    )));
                }
            }
        }
        if specs.is_empty() {
            specs = UNIVERSE.to_vec();
        }
        let p = SyntheticProvider {
            opts,
            specs,
            store: Default::default(),
        };
        *p.store.lock() = p.warmup();
        Ok(p)
    }

    /// Warm-up bars: a bar-level walk per symbol, generated backwards from the first price so
    /// the history joins the stream.
    fn warmup(&self) -> BarStore {
        let mut store = BarStore {
            data_ts: self.opts.start_ts,
            ..Default::default()
        };
        let n = self.opts.warmup_bars as usize;
        let bar_ns = 60 * NS;
        let first_bar = self.opts.start_ts - self.opts.start_ts % bar_ns;
        for spec in &self.specs {
            let sim = SymbolSim::new(self.opts.seed, spec, &self.opts);
            let mut rng = Rng::new(symbol_seed(self.opts.seed ^ 0x5741_524d, spec.0));
            // The stream's process at the scale of a minute, oldest bar first: the stochastic
            // volatility (the same AR(1), stepped a minute at a time), the jumps (Poisson
            // arrivals at the same rate, the same size), and buying that leans with the move
            // as the stream's aggressor sides do. The path is then shifted so that its last
            // close is the stream's first price.
            let keep = (-60.0 / LOG_VOL_TAU).exp();
            let mut log_vol = LOG_VOL_SD * rng.normal();
            let mut steps = Vec::with_capacity(n);
            for _ in 0..n {
                log_vol = log_vol * keep + LOG_VOL_SD * (1.0 - keep * keep).sqrt() * rng.normal();
                let sigma_bar = sim.sigma * log_vol.exp() * 60f64.sqrt();
                let z = rng.normal();
                let jumps = rng.poisson(sim.jumps_per_hour.max(0.0) / 60.0);
                let mut ret = sigma_bar * z;
                for _ in 0..jumps {
                    ret += rng.normal() * sigma_bar * JUMP_SIGMA_MINUTES;
                }
                steps.push((ret, sigma_bar, log_vol));
            }
            let total: f64 = steps.iter().map(|s| s.0).sum();
            let mut close = sim.log_price - total;
            let mut bars = Vec::with_capacity(n);
            for (i, (ret, sigma_bar, log_vol)) in steps.into_iter().enumerate() {
                let ts = first_bar - (n - i) as u64 * bar_ns;
                let open = close;
                close = open + ret;
                let (o, c) = (open.exp(), close.exp());
                let wiggle = sigma_bar * 0.5 * rng.uniform();
                // As in the stream: trades arrive at the base rate, faster when volatility is
                // high (its square root), each bringing 0.6 more on average (self-excitation:
                // 2.5 trades per arrival), of a log-normal size (mean e^0.5 x lot scale).
                let trades = 60.0 * sim.rate * log_vol.exp().sqrt() * 2.5;
                let volume = trades * 0.5f64.exp() * sim.lot_scale() * (0.75 + 0.5 * rng.uniform());
                // The stream's sell probability is 0.5 - 0.15 x tanh(z) per step.
                let buy_share = 0.5 + 0.15 * (ret / sigma_bar.max(1e-300)).tanh();
                bars.push(Bar {
                    symbol: sim.symbol.clone(),
                    ts,
                    secs: 60,
                    open: sim.round_tick(o),
                    high: sim.round_tick(o.max(c) * wiggle.exp()),
                    low: sim.round_tick(o.min(c) * (-wiggle).exp()),
                    close: sim.round_tick(c),
                    volume,
                    buy_volume: volume * buy_share,
                    trades: trades.round() as u64,
                });
            }
            store.bars.insert(sim.symbol, bars);
        }
        store
    }
}

/// The stream of the synthetic provider.
pub struct SyntheticStream {
    opts: SyntheticOptions,
    sims: Vec<SymbolSim>,
    bars: BarBuilder,
    store: Arc<Mutex<BarStore>>,
    pacer: Pacer,
    step_no: u64,
    scratch: Vec<MarketEvent>,
}

#[async_trait]
impl MarketStream for SyntheticStream {
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        let step_ns = self.opts.step.as_nanos() as u64;
        let dt = self.opts.step.as_secs_f64();
        let t0 = self.opts.start_ts;
        // At max speed, hand over several steps per call (fewer, larger publishes).
        let steps = if matches!(self.opts.speed, Speed::Max) {
            10
        } else {
            1
        };
        // The latest event handed out, published as the data time once per call.
        let mut data_ts = 0;
        for _ in 0..steps {
            let ts = t0 + self.step_no * step_ns;
            if let Some(d) = self.opts.duration {
                if ts >= t0 + d.as_nanos() as u64 {
                    let closed = self.bars.flush();
                    self.store_bars(&closed);
                    self.store.lock().data_ts = u64::MAX;
                    out.extend(closed.into_iter().map(MarketEvent::Bar));
                    return Ok(false);
                }
            }
            self.pacer.wait_for(ts).await;
            let stress = stress_at(&self.opts, (ts - t0) as f64 / 1e9);
            self.scratch.clear();
            for sim in &mut self.sims {
                sim.step(ts, dt, stress, &mut self.scratch);
            }
            // Time order across symbols within the step: quotes at the step's start, trades
            // inside it; a bar goes out just before the trade that closed it.
            self.scratch.sort_by_key(|e| e.ts());
            let mut latest = 0;
            for ev in self.scratch.drain(..) {
                if let MarketEvent::Trade(t) = &ev {
                    if let Some(bar) = self.bars.on_trade(t) {
                        self.store
                            .lock()
                            .bars
                            .entry(bar.symbol.clone())
                            .or_default()
                            .push(bar.clone());
                        out.push(MarketEvent::Bar(bar));
                    }
                }
                latest = latest.max(ev.ts());
                out.push(ev);
            }
            data_ts = data_ts.max(latest);
            self.step_no += 1;
        }
        let mut store = self.store.lock();
        store.data_ts = store.data_ts.max(data_ts);
        Ok(true)
    }
}

impl SyntheticStream {
    fn store_bars(&self, bars: &[Bar]) {
        let mut s = self.store.lock();
        for b in bars {
            s.bars.entry(b.symbol.clone()).or_default().push(b.clone());
        }
    }
}

#[async_trait]
impl Provider for SyntheticProvider {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn instruments(&self) -> Vec<Instrument> {
        self.specs
            .iter()
            .map(|s| Instrument {
                symbol: s.0.to_string(),
                tick_size: s.2,
                lot_size: s.3,
            })
            .collect()
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        // A new stream starts the market again: history forgets the bars of the last one.
        *self.store.lock() = self.warmup();
        Ok(Box::new(SyntheticStream {
            opts: self.opts.clone(),
            sims: self
                .specs
                .iter()
                .map(|s| SymbolSim::new(self.opts.seed, s, &self.opts))
                .collect(),
            bars: BarBuilder::new(60),
            store: self.store.clone(),
            pacer: Pacer::new(self.opts.speed),
            step_no: 0,
            scratch: Vec::new(),
        }))
    }

    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        if req.bar_secs == 0 || !req.bar_secs.is_multiple_of(60) {
            return Err(ProviderError::BadRequest(format!(
                "synthetic history has bars of a whole number of minutes; got bar_secs {}",
                req.bar_secs
            )));
        }
        let store = self.store.lock();
        let Some(minute_bars) = store.bars.get(&req.symbol) else {
            let known: Vec<&str> = self.specs.iter().map(|s| s.0).collect();
            return Err(ProviderError::BadRequest(format!(
                "unknown symbol {:?}: the synthetic universe is {known:?}",
                req.symbol
            )));
        };
        // Only finished bars: none ends after the data time (a bar of several minutes is
        // unfinished until its last minute has passed), nor after the request's end.
        let end = req.end_ts.unwrap_or(u64::MAX).min(store.data_ts);
        let bars = aggregate(minute_bars, req.bar_secs);
        let upto: Vec<Bar> = bars.into_iter().filter(|b| b.end_ts() <= end).collect();
        let skip = upto.len().saturating_sub(req.limit as usize);
        Ok(upto[skip..].to_vec())
    }
}

/// Merges consecutive 1-minute bars into bars of `secs` (aligned to multiples of `secs`).
fn aggregate(bars: &[Bar], secs: u32) -> Vec<Bar> {
    if secs == 60 {
        return bars.to_vec();
    }
    let len = u64::from(secs) * NS;
    let mut out: Vec<Bar> = Vec::new();
    for b in bars {
        let start = b.ts - b.ts % len;
        match out.last_mut() {
            Some(cur) if cur.ts == start => {
                cur.high = cur.high.max(b.high);
                cur.low = cur.low.min(b.low);
                cur.close = b.close;
                cur.volume += b.volume;
                cur.buy_volume += b.buy_volume;
                cur.trades += b.trades;
            }
            _ => out.push(Bar {
                ts: start,
                secs,
                ..b.clone()
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::Validator;

    fn opts() -> SyntheticOptions {
        SyntheticOptions {
            speed: Speed::Max,
            duration: Some(Duration::from_secs(600)),
            ..Default::default()
        }
    }

    async fn all(p: &SyntheticProvider) -> Vec<MarketEvent> {
        let mut s = p.stream().await.unwrap();
        let mut out = Vec::new();
        while s.next_batch(&mut out).await.unwrap() {}
        out
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_data_and_another_seed_does_not() {
        let a = all(&SyntheticProvider::new(opts()).unwrap()).await;
        let b = all(&SyntheticProvider::new(opts()).unwrap()).await;
        assert_eq!(a, b);
        let c = all(&SyntheticProvider::new(SyntheticOptions { seed: 8, ..opts() }).unwrap()).await;
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn data_is_valid_and_covers_the_universe() {
        let events = all(&SyntheticProvider::new(opts()).unwrap()).await;
        let mut v = Validator::new();
        let mut trades: HashMap<String, u64> = HashMap::new();
        let mut bars = 0;
        let mut buys = 0u64;
        for e in &events {
            v.validate(e).unwrap_or_else(|r| panic!("{r}: {e:?}"));
            match e {
                MarketEvent::Trade(t) => {
                    *trades.entry(t.symbol.clone()).or_default() += 1;
                    buys += u64::from(t.side == Side::Buy);
                }
                MarketEvent::Bar(_) => bars += 1,
                _ => {}
            }
        }
        assert_eq!(trades.len(), 13);
        let total: u64 = trades.values().sum();
        // 10 minutes at about 1 trade per second per symbol, clustered.
        assert!(total > 13 * 300, "{total}");
        // Both sides trade in a calm market.
        assert!(
            buys > total / 4 && buys < total * 3 / 4,
            "{buys} of {total}"
        );
        // 10 one-minute bars per symbol (the last one flushed at the end).
        assert_eq!(bars, 13 * 10);
    }

    #[tokio::test]
    async fn a_flash_crash_drops_prices_with_one_sided_heavy_flow() {
        let p = SyntheticProvider::new(SyntheticOptions {
            flash_crash_at: Some(Duration::from_secs(300)),
            duration: Some(Duration::from_secs(420)),
            symbols: vec!["BTCUSDT".into()],
            ..opts()
        })
        .unwrap();
        let events = all(&p).await;
        let t0 = SyntheticOptions::default().start_ts;
        let window = |from: u64, to: u64| {
            let trades: Vec<&Trade> = events
                .iter()
                .filter_map(|e| match e {
                    MarketEvent::Trade(t) if t.ts >= t0 + from * NS && t.ts < t0 + to * NS => {
                        Some(t)
                    }
                    _ => None,
                })
                .collect();
            let sells = trades.iter().filter(|t| t.side == Side::Sell).count();
            (
                trades.len(),
                sells,
                trades.first().map(|t| t.price),
                trades.last().map(|t| t.price),
            )
        };
        let (calm_n, _, _, _) = window(180, 300);
        let (crash_n, crash_sells, first, last) = window(300, 420);
        assert!(crash_n > calm_n * 4, "volume surge: {crash_n} vs {calm_n}");
        assert!(
            crash_sells * 10 > crash_n * 8,
            "one-sided: {crash_sells} of {crash_n}"
        );
        let drop = last.unwrap() / first.unwrap() - 1.0;
        assert!(drop < -0.04, "sharp drop: {drop}");
    }

    /// Annualized realized volatility of 1-minute closes.
    fn realized_vol(bars: &[Bar]) -> f64 {
        let r: Vec<f64> = bars
            .windows(2)
            .map(|w| (w[1].close / w[0].close).ln())
            .collect();
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (var * 525_600.0).sqrt()
    }

    #[tokio::test]
    async fn the_stated_volatility_is_the_realized_one_in_the_stream_and_the_warm_up() {
        // BTCUSDT, stated 0.60; one day of data per seed. The stochastic volatility and the
        // jumps (one an hour, 10 sigma-minutes) used to add their variance on top of the
        // stated one: about 1.85x the stated volatility.
        let mut stream_ratios = Vec::new();
        let mut warmup_ratios = Vec::new();
        for seed in [1, 2, 3, 4, 5] {
            let p = SyntheticProvider::new(SyntheticOptions {
                seed,
                symbols: vec!["BTCUSDT".into()],
                duration: Some(Duration::from_secs(86_400)),
                warmup_bars: 1_440,
                ..opts()
            })
            .unwrap();
            let warm = p
                .history(&HistoryRequest {
                    symbol: "BTCUSDT".into(),
                    bar_secs: 60,
                    limit: 1_440,
                    end_ts: None,
                })
                .await
                .unwrap();
            warmup_ratios.push(realized_vol(&warm) / 0.60);
            let bars: Vec<Bar> = all(&p)
                .await
                .into_iter()
                .filter_map(|e| match e {
                    MarketEvent::Bar(b) => Some(b),
                    _ => None,
                })
                .collect();
            assert!(bars.len() >= 1_439, "{}", bars.len());
            stream_ratios.push(realized_vol(&bars) / 0.60);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (s, w) = (median(&mut stream_ratios), median(&mut warmup_ratios));
        eprintln!("realized / stated: stream {stream_ratios:?}, warm-up {warmup_ratios:?}");
        assert!(
            (0.8..1.25).contains(&s),
            "stream: realized / stated {s} ({stream_ratios:?})"
        );
        assert!(
            (0.8..1.25).contains(&w),
            "warm-up: realized / stated {w} ({warmup_ratios:?})"
        );
    }

    #[tokio::test]
    async fn history_joins_the_stream_and_never_looks_ahead() {
        let p = SyntheticProvider::new(SyntheticOptions {
            warmup_bars: 100,
            ..opts()
        })
        .unwrap();
        let req = |limit| HistoryRequest {
            symbol: "ETHUSDT".into(),
            bar_secs: 60,
            limit,
            end_ts: None,
        };
        let before = p.history(&req(500)).await.unwrap();
        assert_eq!(before.len(), 100);
        let start = SyntheticOptions::default().start_ts;
        assert_eq!(before.last().unwrap().end_ts(), start);
        let mut s = p.stream().await.unwrap();
        let mut out = Vec::new();
        // Seven minutes of data: a 5-minute bar done, the next one two minutes in.
        while out
            .iter()
            .filter(|e| matches!(e, MarketEvent::Bar(b) if b.symbol == "ETHUSDT"))
            .count()
            < 7
        {
            s.next_batch(&mut out).await.unwrap();
        }
        let latest = out.iter().map(|e| e.ts()).max().unwrap();
        let after = p.history(&req(500)).await.unwrap();
        assert!(after.len() >= 105, "{}", after.len());
        assert!(after.iter().all(|b| b.end_ts() <= latest));
        assert_eq!(p.history(&req(10)).await.unwrap().len(), 10);
        let five = p
            .history(&HistoryRequest {
                bar_secs: 300,
                ..req(3)
            })
            .await
            .unwrap();
        assert!(five.iter().all(|b| b.ts % (300 * NS) == 0 && b.secs == 300));
        // The 5-minute bar in progress is not handed out as if it were finished.
        assert!(
            five.iter().all(|b| b.end_ts() <= latest),
            "a bar ends after the data time {latest}: {:?}",
            five.last()
        );
        let e = p
            .history(&HistoryRequest {
                symbol: "NOPE".into(),
                ..req(1)
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("\"NOPE\""), "{e}");
    }
}
