//! Analytics: performance of the book and traffic of the buses.
//!
//! The Analytics engine (`analytics`) reads the Portfolio engine's `portfolio_update` and
//! `position_change`, the fills (`trade_execution`) and every engine's `engine_health`, and
//! publishes `analytics_result.performance` every `every_secs` of data time (default 900) and
//! once more when it stops. Performance figures depend only on the data, so a replay gives the
//! same figures:
//!
//! * **equity, P&L, return**: the latest `portfolio_update`; P&L = equity - the first equity seen.
//! * **Sharpe ratio** ([`SharpeRatio`]), risk-free rate 0, mean over sample standard deviation
//!   (n - 1) of equity returns:
//!   * when the data covers at least two days (2,880 one-minute periods of data time, counted
//!     from the first update's minute to the latest's, both included): of **daily** returns,
//!     annualized with `sqrt(365)` (the market trades every day). A day's equity is the last
//!     of that UTC day; the first day's return is measured from the first equity seen, and the
//!     last (possibly partial) day's to the latest equity;
//!   * otherwise: of **one-minute** returns (the last equity of each minute of data time;
//!     minutes without an update carry the previous equity), stated per minute and *not*
//!     annualized: a few minutes of data say nothing about a year.
//!
//!   `sharpe` holds the annualized figure (`None` under two days), `sharpe_per_period` the
//!   figure of the returns used with their period named. `None` with fewer than 2 returns or
//!   no variation.
//! * **maximum drawdown**: the largest fall of equity below its running peak, as a fraction of
//!   the peak (over every update, not only minute closes); its **duration**, the longest time
//!   under water: from the last update at a peak to the first update back at or above it (a
//!   drawdown not recovered by the latest update lasts until that update).
//! * **turnover**: traded notional (sum of `|qty x price|` of fills) over the first equity.
//! * **hit rate**: the share of position changes that realized a profit among those that
//!   realized any P&L (reducing or closing fills), before fees; **hit rate after fees**: the
//!   same changes, a profit being `realized_pnl - fee > 0` (the change's own fill's fee).
//! * **P&L by symbol**: realized (sum of the position changes' `realized_pnl`) plus the
//!   unrealized P&L of the latest `portfolio_update` position, before fees; **after fees**:
//!   minus every fee paid on the symbol's fills (opening ones included).
//!
//! Traffic and latency depend on the machine and are reported apart, under `traffic`: per bus,
//! the messages the engines published (summed from the per-kind counts of their latest
//! `engine_health` heartbeats, each kind counted on the bus it routes to) and the delivery
//! latency of the messages this engine received (envelope `ts` to hand-over), p50/p99/max.

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use crate::stats::mean_sd;
use dualbus_model::analytics::BusTraffic;
use dualbus_model::analytics::{AnalyticsResult, Performance, SharpeRatio};

use async_trait::async_trait;
use dualbus_bus::{BusId, HandlerError};
use dualbus_core::{Envelope, EventKind, Priority};
use dualbus_model::health::EngineHealth;
use dualbus_model::orders::{ExecStatus, Execution};
use dualbus_model::portfolio::{PortfolioUpdate, PositionChange};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const NS: u64 = 1_000_000_000;
const MINUTE_NS: u64 = 60 * NS;
const DAY_NS: u64 = 86_400 * NS;
/// Days a year for annualizing daily Sharpe ratios (the market trades every day).
pub const DAYS_PER_YEAR: f64 = 365.0;
/// One-minute periods of data the Sharpe ratio needs before it is taken from daily returns and
/// annualized (two days).
pub const ANNUALIZE_AFTER_MINUTES: u64 = 2 * 1_440;

/// Analytics settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsParams {
    /// Data time between two reports, seconds.
    pub every_secs: u64,
}

impl Default for AnalyticsParams {
    fn default() -> Self {
        AnalyticsParams { every_secs: 900 }
    }
}

impl AnalyticsParams {
    /// Every problem with these settings (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        if self.every_secs == 0 {
            vec!["every_secs must be at least 1".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Mean over sample standard deviation (n - 1) of `rets`; `None` with fewer than 2 returns or
/// no variation.
pub fn sharpe_of(rets: &[f64]) -> Option<f64> {
    if rets.len() < 2 {
        return None;
    }
    let (mean, sd) = mean_sd(rets, 1);
    (sd > 0.0).then(|| mean / sd)
}

/// Drawdown of an equity series, fed point by point: its depth and how long it lasts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrawdownTracker {
    peak: Option<f64>,
    /// Time of the last point at the peak, Unix ns.
    peak_ts: u64,
    /// The fraction below the peak at the latest point.
    current: f64,
    max_depth: f64,
    longest_ns: u64,
}

impl DrawdownTracker {
    /// An equity observation at `ts` (Unix ns, not before the previous one); returns the
    /// drawdown there, as a fraction of the peak.
    pub fn on_equity(&mut self, ts: u64, equity: f64) -> f64 {
        let Some(peak) = self.peak else {
            self.peak = Some(equity);
            self.peak_ts = ts;
            return 0.0;
        };
        if equity >= peak {
            // At or back above the peak: the time under water, if any, ends here.
            if self.current > 0.0 {
                self.longest_ns = self.longest_ns.max(ts.saturating_sub(self.peak_ts));
            }
            self.peak = Some(equity);
            self.peak_ts = ts;
            self.current = 0.0;
        } else {
            self.longest_ns = self.longest_ns.max(ts.saturating_sub(self.peak_ts));
            self.current = if peak > 0.0 {
                (peak - equity) / peak
            } else {
                0.0
            };
            self.max_depth = self.max_depth.max(self.current);
        }
        self.current
    }

    /// The largest fall below the running peak so far, fraction of the peak.
    pub fn max_depth(&self) -> f64 {
        self.max_depth
    }

    /// The longest time under water so far, ns (a drawdown still open counts to the latest
    /// point).
    pub fn longest_ns(&self) -> u64 {
        self.longest_ns
    }
}

/// The data-determined part of the analytics, fed event by event.
#[derive(Clone, Debug, Default)]
pub struct PerformanceTracker {
    first_equity: Option<f64>,
    first_ts: Option<u64>,
    equity: Option<f64>,
    ts: u64,
    drawdown: DrawdownTracker,
    /// (minute index, last equity of that minute), the newest last.
    minutes: Vec<(u64, f64)>,
    notional: f64,
    fills: u64,
    wins: u64,
    losses: u64,
    /// Wins and losses of the same changes, each net of its own fill's fee.
    net_wins: u64,
    net_losses: u64,
    realized: BTreeMap<String, f64>,
    fees: BTreeMap<String, f64>,
    unrealized: BTreeMap<String, f64>,
}

impl PerformanceTracker {
    /// An equity observation at `ts` (Unix ns), with the book's unrealized P&L per symbol.
    pub fn on_equity(&mut self, ts: u64, equity: f64, unrealized: BTreeMap<String, f64>) {
        if self.first_equity.is_none() {
            self.first_equity = Some(equity);
            self.first_ts = Some(ts);
        }
        self.equity = Some(equity);
        self.ts = self.ts.max(ts);
        self.drawdown.on_equity(self.ts, equity);
        let minute = ts / MINUTE_NS;
        match self.minutes.last_mut() {
            Some((m, e)) if *m == minute => *e = equity,
            Some((m, _)) if *m > minute => {} // an older update: the minute is closed
            _ => self.minutes.push((minute, equity)),
        }
        self.unrealized = unrealized;
    }

    /// A fill of `notional` (absolute value of quantity x price).
    pub fn on_fill(&mut self, ts: u64, notional: f64) {
        self.fills += 1;
        self.notional += notional.abs();
        self.ts = self.ts.max(ts);
    }

    /// A position change that realized `realized` P&L (0 for an opening fill) and paid `fee`.
    pub fn on_realized(&mut self, symbol: &str, realized: f64, fee: f64) {
        *self.realized.entry(symbol.to_string()).or_default() += realized;
        *self.fees.entry(symbol.to_string()).or_default() += fee;
        if realized > 0.0 {
            self.wins += 1;
        } else if realized < 0.0 {
            self.losses += 1;
        }
        // The same changes (those that realized P&L), judged after their fee: a small gain
        // that the fee eats is a loss here.
        if realized != 0.0 {
            if realized - fee > 0.0 {
                self.net_wins += 1;
            } else {
                self.net_losses += 1;
            }
        }
    }

    /// One-minute returns of equity, carrying the equity over minutes without an update.
    pub fn minute_returns(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for w in self.minutes.windows(2) {
            let ((m0, e0), (m1, e1)) = (w[0], w[1]);
            if e0 <= 0.0 {
                continue;
            }
            // Minutes between them had the equity e0: zero returns.
            out.extend(std::iter::repeat_n(0.0, (m1 - m0 - 1) as usize));
            out.push(e1 / e0 - 1.0);
        }
        out
    }

    /// Daily returns of equity: the last equity of each UTC day over the previous day's (the
    /// first from the first equity seen), the latest day included even if partial; days
    /// without an update carry the equity (zero returns).
    pub fn daily_returns(&self) -> Vec<f64> {
        let Some(mut prev) = self.first_equity else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut day: Option<u64> = None;
        let mut close = prev;
        for &(m, e) in &self.minutes {
            let d = m * MINUTE_NS / DAY_NS;
            match day {
                Some(cur) if cur != d => {
                    out.push(if prev > 0.0 { close / prev - 1.0 } else { 0.0 });
                    out.extend(std::iter::repeat_n(0.0, (d - cur - 1) as usize));
                    prev = close;
                }
                _ => {}
            }
            day = Some(d);
            close = e;
        }
        if day.is_some() {
            out.push(if prev > 0.0 { close / prev - 1.0 } else { 0.0 });
        }
        out
    }

    /// One-minute periods from the first update's minute to the latest's, both included.
    pub fn minutes_covered(&self) -> u64 {
        match (self.minutes.first(), self.minutes.last()) {
            (Some((a, _)), Some((b, _))) => b - a + 1,
            _ => 0,
        }
    }

    /// The Sharpe ratio: (annualized, per period); see the module documentation.
    pub fn sharpe(&self) -> (Option<f64>, Option<SharpeRatio>) {
        let (period, rets) = if self.minutes_covered() >= ANNUALIZE_AFTER_MINUTES {
            ("1d", self.daily_returns())
        } else {
            ("1m", self.minute_returns())
        };
        let per = sharpe_of(&rets).map(|value| SharpeRatio {
            period: period.to_string(),
            value,
            returns: rets.len() as u64,
        });
        let annual = per
            .as_ref()
            .filter(|s| s.period == "1d")
            .map(|s| s.value * DAYS_PER_YEAR.sqrt());
        (annual, per)
    }

    /// The figures so far.
    pub fn performance(&self) -> Performance {
        let first = self.first_equity.unwrap_or(0.0);
        let pnl = self.equity.map(|e| e - first).unwrap_or(0.0);
        let (sharpe, sharpe_per_period) = self.sharpe();
        let mut pnl_by_symbol = self.realized.clone();
        for (s, u) in &self.unrealized {
            *pnl_by_symbol.entry(s.clone()).or_default() += u;
        }
        let mut pnl_by_symbol_after_fees = pnl_by_symbol.clone();
        for (s, f) in &self.fees {
            *pnl_by_symbol_after_fees.entry(s.clone()).or_default() -= f;
        }
        let decided = self.wins + self.losses;
        let net_decided = self.net_wins + self.net_losses;
        Performance {
            ts: self.ts,
            period_s: self
                .first_ts
                .map(|f| self.ts.saturating_sub(f) as f64 / 1e9)
                .unwrap_or(0.0),
            equity: self.equity,
            pnl,
            return_pct: if first > 0.0 {
                pnl / first * 100.0
            } else {
                0.0
            },
            sharpe,
            sharpe_per_period,
            max_drawdown: self.drawdown.max_depth(),
            max_drawdown_duration_s: self.drawdown.longest_ns() as f64 / 1e9,
            turnover: if first > 0.0 {
                self.notional / first
            } else {
                0.0
            },
            fills: self.fills,
            hit_rate: (decided > 0).then(|| self.wins as f64 / decided as f64),
            hit_rate_after_fees: (net_decided > 0)
                .then(|| self.net_wins as f64 / net_decided as f64),
            pnl_by_symbol,
            pnl_by_symbol_after_fees,
        }
    }
}

/// The Analytics engine (`analytics`); see the module documentation.
pub struct AnalyticsEngine {
    params: AnalyticsParams,
    perf: PerformanceTracker,
    next_report: Option<u64>,
    published_by_engine: BTreeMap<String, BTreeMap<String, u64>>,
    latency: [Histogram<u64>; 2],
    received: [u64; 2],
    reports: u64,
    last: Option<AnalyticsResult>,
}

impl Default for AnalyticsEngine {
    fn default() -> Self {
        AnalyticsEngine::new(AnalyticsParams::default())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl AnalyticsEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: AnalyticsParams) -> AnalyticsEngine {
        AnalyticsEngine {
            params,
            perf: PerformanceTracker::default(),
            next_report: None,
            published_by_engine: BTreeMap::new(),
            latency: [histogram(), histogram()],
            received: [0, 0],
            reports: 0,
            last: None,
        }
    }

    /// The latest result published.
    pub fn last(&self) -> Option<&AnalyticsResult> {
        self.last.as_ref()
    }

    /// The figures now.
    pub fn result(&self, ctx: &EngineContext, period: &str) -> AnalyticsResult {
        let mut traffic = BTreeMap::new();
        for (i, (bus, name)) in [
            (BusId::MarketData, "market_data"),
            (BusId::Logic, "engine_logic"),
        ]
        .into_iter()
        .enumerate()
        {
            let published = self
                .published_by_engine
                .values()
                .flat_map(|m| m.iter())
                .filter(|(kind, _)| {
                    EventKind::parse(kind)
                        .map(|k| ctx.bus().route(&k, Priority::Normal).bus == bus)
                        .unwrap_or(false)
                })
                .map(|(_, n)| *n)
                .sum();
            let h = &self.latency[i];
            let q = |p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p));
            traffic.insert(
                name.to_string(),
                BusTraffic {
                    published,
                    received: self.received[i],
                    latency_p50_us: q(0.5),
                    latency_p99_us: q(0.99),
                    latency_max_us: (!h.is_empty()).then(|| h.max()),
                },
            );
        }
        AnalyticsResult {
            report: "performance".into(),
            period: period.into(),
            performance: self.perf.performance(),
            traffic,
        }
    }

    async fn publish(&mut self, ctx: &EngineContext, period: &str) -> Result<(), EngineError> {
        let r = self.result(ctx, period);
        self.reports += 1;
        ctx.send(&r).await?;
        self.last = Some(r);
        Ok(())
    }

    /// Publishes a periodic report when data time passes the next report time.
    async fn maybe_report(&mut self, ctx: &EngineContext, ts: u64) {
        let every = self.params.every_secs * NS;
        match self.next_report {
            None => self.next_report = Some(ts - ts % every + every),
            Some(next) if ts >= next => {
                self.next_report = Some(ts - ts % every + every);
                if let Err(e) = self.publish(ctx, "periodic").await {
                    tracing::warn!(error = %e, "analytics result not published");
                }
            }
            _ => {}
        }
    }
}

#[async_trait]
impl Engine for AnalyticsEngine {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::AnalyticsResult]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        vec![Interest::reliable(&[
            "portfolio_update.>",
            "position_change.>",
            "trade_execution.>",
            "engine_health.>",
        ])]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.params = ctx.settings()?;
        }
        EngineError::check("analytics", self.params.problems())?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        let bus = ctx.bus().route(&msg.kind, msg.prio).bus;
        self.received[bus.index()] += 1;
        let us =
            (dualbus_core::now_unix_nanos().saturating_sub(msg.ts) / 1_000).clamp(1, 3_600_000_000);
        let _ = self.latency[bus.index()].record(us);
        match &msg.kind {
            EventKind::PortfolioUpdate => {
                let p: PortfolioUpdate = msg.decode()?;
                let unrealized = p
                    .positions
                    .into_iter()
                    .map(|v| (v.symbol, v.unrealized_pnl))
                    .collect();
                self.perf.on_equity(p.ts, p.equity, unrealized);
                self.maybe_report(ctx, p.ts).await;
            }
            EventKind::PositionChange => {
                let c: PositionChange = msg.decode()?;
                self.perf.on_realized(&c.symbol, c.realized_pnl, c.fee);
            }
            EventKind::TradeExecution => {
                let x: Execution = msg.decode()?;
                if x.status == ExecStatus::Filled {
                    self.perf.on_fill(x.ts, x.qty * x.price);
                }
            }
            EventKind::EngineHealth => {
                let h: EngineHealth = msg.decode()?;
                self.published_by_engine
                    .insert(h.engine.clone(), h.counts.published);
            }
            _ => {}
        }
        Ok(())
    }

    async fn stop(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        self.publish(ctx, "final").await
    }

    fn health(&self) -> serde_json::Value {
        let p = self.perf.performance();
        serde_json::json!({"reports": self.reports, "equity": p.equity, "pnl": p.pnl, "fills": p.fills})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * NS;

    #[test]
    fn drawdown_turnover_hit_rate_and_pnl_by_symbol() {
        let mut t = PerformanceTracker::default();
        t.on_equity(0, 100_000.0, BTreeMap::new());
        t.on_equity(MIN, 110_000.0, BTreeMap::new());
        t.on_equity(2 * MIN, 99_000.0, BTreeMap::new()); // 10% below the 110,000 peak
        t.on_equity(
            3 * MIN,
            105_000.0,
            BTreeMap::from([("BTC".to_string(), 300.0)]),
        );
        t.on_fill(MIN, 20_000.0);
        t.on_fill(2 * MIN, -30_000.0); // a sell: notional counts in absolute value
        t.on_realized("BTC", 0.0, 10.0); // an opening fill: neither win nor loss
        t.on_realized("BTC", 500.0, 10.0);
        t.on_realized("ETH", -200.0, 5.0);
        t.on_realized("ETH", 4.0, 5.0); // a gain the fee eats: a win before fees, not after
        let p = t.performance();
        assert!((p.max_drawdown - 0.1).abs() < 1e-12, "{p:?}");
        assert_eq!(p.pnl, 5_000.0);
        assert!((p.return_pct - 5.0).abs() < 1e-12);
        assert!((p.turnover - 0.5).abs() < 1e-12); // 50,000 / 100,000
        assert_eq!(p.fills, 2);
        assert_eq!(p.hit_rate, Some(2.0 / 3.0));
        assert_eq!(p.hit_rate_after_fees, Some(1.0 / 3.0));
        assert_eq!(p.pnl_by_symbol["BTC"], 800.0);
        assert_eq!(p.pnl_by_symbol["ETH"], -196.0);
        assert_eq!(p.pnl_by_symbol_after_fees["BTC"], 780.0);
        assert_eq!(p.pnl_by_symbol_after_fees["ETH"], -206.0);
        assert_eq!(p.period_s, 180.0);
    }

    #[test]
    fn sharpe_of_minute_returns_with_gaps_carried() {
        let mut t = PerformanceTracker::default();
        // Minute 0: 100 (then 101 in the same minute: the minute's last counts), minute 1:
        // 102, minute 3: 102 x 1.01 = 103.02 (minute 2 carries 102: a zero return).
        t.on_equity(0, 100.0, BTreeMap::new());
        t.on_equity(30 * NS, 101.0, BTreeMap::new());
        t.on_equity(MIN, 102.0, BTreeMap::new());
        t.on_equity(3 * MIN + 5 * NS, 103.02, BTreeMap::new());
        let r = t.minute_returns();
        assert_eq!(r.len(), 3);
        assert!((r[0] - (102.0 / 101.0 - 1.0)).abs() < 1e-12);
        assert_eq!(r[1], 0.0);
        assert!((r[2] - 0.01).abs() < 1e-12);
        // Under two days of data: mean over sample sd of the three, per minute, not
        // annualized.
        let mean = r.iter().sum::<f64>() / 3.0;
        let sd = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let p = t.performance();
        assert_eq!(p.sharpe, None, "a few minutes are never annualized");
        let per = p.sharpe_per_period.unwrap();
        assert_eq!((per.period.as_str(), per.returns), ("1m", 3));
        assert!((per.value - mean / sd).abs() < 1e-12);
        // Flat equity: no Sharpe.
        let mut flat = PerformanceTracker::default();
        for m in 0..5 {
            flat.on_equity(m * MIN, 100.0, BTreeMap::new());
        }
        assert_eq!(flat.performance().sharpe, None);
        assert_eq!(flat.performance().sharpe_per_period, None);
    }

    #[test]
    fn sharpe_of_daily_returns_from_two_days_on_annualized() {
        const DAY: u64 = 86_400 * NS;
        let mut t = PerformanceTracker::default();
        // Day 0: 100 -> 110 -> 105 (close), day 1: 99.75, day 2: 109.725 at 23:59.
        t.on_equity(0, 100.0, BTreeMap::new());
        t.on_equity(DAY / 2, 110.0, BTreeMap::new());
        t.on_equity(DAY - MIN, 105.0, BTreeMap::new());
        t.on_equity(DAY + 10 * 3_600 * NS, 99.75, BTreeMap::new());
        t.on_equity(3 * DAY - MIN, 109.725, BTreeMap::new());
        // Returns 5%, -5%, 10%: mean 1/30, sample sd sqrt(0.035/6) = 0.0763763
        let r = t.daily_returns();
        assert_eq!(r.len(), 3);
        for (got, want) in r.iter().zip([0.05, -0.05, 0.1]) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        let p = t.performance();
        let per = p.sharpe_per_period.unwrap();
        assert_eq!((per.period.as_str(), per.returns), ("1d", 3));
        assert!((per.value - 0.436_435_780_5).abs() < 1e-9, "{per:?}");
        assert!((p.sharpe.unwrap() - 0.436_435_780_5 * 365f64.sqrt()).abs() < 1e-8);
    }

    #[test]
    fn two_days_means_2880_minutes_of_data() {
        let mut t = PerformanceTracker::default();
        t.on_equity(0, 100.0, BTreeMap::new());
        t.on_equity(MIN, 101.0, BTreeMap::new());
        t.on_equity(2_878 * MIN, 99.0, BTreeMap::new());
        assert_eq!(t.minutes_covered(), 2_879);
        assert_eq!(t.performance().sharpe_per_period.unwrap().period, "1m");
        assert_eq!(t.performance().sharpe, None);
        t.on_equity(2_879 * MIN + 30 * NS, 102.0, BTreeMap::new());
        assert_eq!(t.minutes_covered(), 2_880);
        // Minutes 2,878 and 2,879 are on day 1: day 0 closes at 101, day 1 at 102.
        assert_eq!(t.daily_returns().len(), 2);
        let p = t.performance();
        assert_eq!(p.sharpe_per_period.as_ref().unwrap().period, "1d");
        assert!(p.sharpe.is_some());
    }

    #[test]
    fn drawdown_depth_and_longest_time_under_water() {
        let mut d = DrawdownTracker::default();
        // Peak 110 at t=10, back at 110 at t=50: 40 under water; a new peak 120 at t=60,
        // then 90 at t=70 (25% down) and still under at t=200: 140, the longest.
        let pts = [
            (0, 100.0),
            (10, 110.0),
            (20, 100.0),
            (30, 105.0),
            (50, 110.0),
            (60, 120.0),
            (70, 90.0),
        ];
        for (ts, e) in pts {
            d.on_equity(ts * NS, e);
        }
        assert_eq!(d.longest_ns(), 40 * NS);
        assert!((d.max_depth() - 0.25).abs() < 1e-12);
        assert!((d.on_equity(200 * NS, 100.0) - 20.0 / 120.0).abs() < 1e-12);
        assert_eq!(d.longest_ns(), 140 * NS);
        // Flat at the peak, then a dip: under water from the last time at the peak.
        let mut d = DrawdownTracker::default();
        for (ts, e) in [
            (0, 100.0),
            (10, 100.0),
            (20, 99.0),
            (30, 100.0),
            (90, 100.0),
        ] {
            d.on_equity(ts * NS, e);
        }
        assert_eq!(d.longest_ns(), 20 * NS);
        // Through the tracker: seconds.
        let mut t = PerformanceTracker::default();
        for (ts, e) in pts {
            t.on_equity(ts * NS, e, BTreeMap::new());
        }
        assert_eq!(t.performance().max_drawdown_duration_s, 40.0);
    }

    #[test]
    fn bad_settings_are_named() {
        let p = AnalyticsParams { every_secs: 0 };
        assert!(p.problems()[0].contains("every_secs"));
    }
}
