//! The Backtesting engine: a simplified, bar-level backtest of the live strategy over the
//! MarketData hub's history, served over request/reply and re-run periodically during a run.
//!
//! # The bar-level backtest ([`bar_backtest`])
//! A simplified backtest on bars, not a replay of trades and quotes. It runs the same pure
//! components the live engines use, in one process and in data time, so the same bars and
//! parameters always give the same report (byte for byte once serialized: every map is a
//! `BTreeMap` and no field depends on the wall clock).
//!
//! The symbols' bars are merged in time order (bar start, then symbol). For each bar:
//!
//! 1. The symbol's pending target, if any, is filled at this bar's **open** for
//!    `target - position` (a buy or a sell of the whole quantity), with the fee of
//!    `fee_bps` on its notional, through the portfolio [`Book`]. A signal is therefore filled
//!    at the open of the symbol's bar after the one that made it (no look-ahead), and a signal
//!    made on a symbol's last bar is never filled.
//! 2. The close is a quote (bid = ask = close, at the bar's end): it marks the [`Book`] and
//!    goes to [`StrategyState::on_quote`], so what this bar makes is sized at this bar's close
//!    (the live strategy sizes at the latest mid).
//! 3. [`FeatureCalculator::on_bar`] gives the bar's feature vector, [`SymbolModel::on_vector`]
//!    a prediction from it, which goes to [`StrategyState::on_prediction`].
//! 4. [`FactorModel::on_bar`] takes the bar's close and volume; the cross-sections it lets
//!    through go to [`StrategyState::on_factors`].
//! 5. Each signal of steps 2 to 4 replaces the pending target of its symbol (the strategy
//!    publishes absolute targets, so the latest one is the one to trade).
//!
//! After every bar of a period (all symbols' bars starting at the same time) the book is
//! sampled at the period's end ([`Book::update`]) and the equity goes to the
//! [`PerformanceTracker`], which also gets every fill and its realized P&L. Sampling per period
//! rather than per bar keeps half-marked states (one symbol at the new close, the others at
//! the previous one) out of the drawdown.
//!
//! What it leaves out, on purpose: **no risk checks** (the Risk engine's limits and circuit
//! breaker are not applied: every signal trades), no toxicity or flash crash alerts (they need
//! trades), no spread, slippage or partial fills (fills at the open exactly, in full), and
//! features from bars alone (no quotes, so no `spread_bps`; order imbalance from the bars'
//! buy volume). Bars of another length than `bar_secs`, with a price that is not a positive
//! number, or not after the symbol's previous bar, are skipped and counted.
//!
//! # Requests
//! `backtest_request.run` ([`backtest_request_kind`], the Engine Logic bus): a
//! [`BacktestRequest`] in, a [`BacktestReply`] out. The engine asks the hub for each symbol's
//! latest `limit` bars ending at or before `end_ts` ([`HubClient::history`], concurrently, each
//! with the engine's `request_timeout_ms`), runs the backtest with the request's parameters (or
//! the engine's live ones) and replies with the report. A bad request (no symbols, a symbol
//! the hub has no bars for, `limit` 0, bad parameters) gets an error reply naming every bad
//! value. [`BacktestClient`] is the typed client side.
//!
//! # Periodic re-run
//! The engine reads `feature_vector.>` (one per symbol per bar, from the Features engine) to
//! learn the symbols and the data time (the latest vector's bar end). Once a symbol has had
//! `min_bars` vectors (the hub then holds that many of its bars), and then every `every_secs`
//! of data time, it fetches the last `limit` bars of every known symbol ending at that data
//! time and backtests them with the live parameters; the result goes out as
//! `analytics_result.backtest` ([`BacktestResult`], low priority). Asking up to the data time,
//! rather than for "the latest", keeps each re-run's request distinct, so the hub's history
//! cache cannot answer it with the bars of an earlier re-run. What the hub's history holds
//! depends on its provider: the synthetic provider's warm-up bars plus the bars its stream has
//! closed so far; a replay's bars replayed so far.
//!
//! Answers and re-runs are worked out off the message path: each is a task of its own (the
//! hub's history requests awaited there, the backtest itself on the blocking pool), so the
//! engine goes on reading feature vectors and requests while one runs, and no message waits
//! behind a backtest. One periodic re-run runs at a time; one that falls due meanwhile runs
//! when it ends, at the latest data time. A request is acknowledged when its task starts; if
//! the process dies before it answers, the requester's timeout tells it. Stopping the engine
//! waits for the tasks in flight (each bounded by the hub client's timeout).

use crate::analytics::PerformanceTracker;
use dualbus_model::backtest::{
    backtest_request_kind, BacktestParams, BacktestReply, BacktestReport, BacktestRequest,
    BacktestResult, BACKTEST_TOPIC,
};

use crate::engine::{Engine, EngineContext, EngineError, Interest};
use crate::factor::FactorModel;
use crate::features::FeatureCalculator;
use crate::hub::HubClient;
use crate::ml::SymbolModel;
use crate::portfolio::{Book, PortfolioParams};
use crate::strategy::StrategyState;
use async_trait::async_trait;
use dualbus_bus::{DualBus, HandlerError, RequestError};
use dualbus_core::{Envelope, EventKind};
use dualbus_model::features::FeatureVector;
use dualbus_model::hub::{hub_request_kind, HistoryQuery};
use dualbus_model::market::{Bar, Quote, Side};
use dualbus_model::orders::{ExecStatus, Execution};
use dualbus_model::strategy::StrategySignal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const NS: u64 = 1_000_000_000;

/// One fill of a backtest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BacktestFill {
    /// Instrument.
    pub symbol: String,
    /// Start of the bar at whose open it filled, Unix ns.
    pub ts: u64,
    /// Data time the signal was made: the end of the bar being processed then, Unix ns (at
    /// most `ts`).
    pub signal_ts: u64,
    /// Buy or sell.
    pub side: Side,
    /// Quantity (positive).
    pub qty: f64,
    /// Fill price: the bar's open.
    pub price: f64,
    /// Fee paid.
    pub fee: f64,
    /// P&L the fill realized.
    pub realized_pnl: f64,
    /// Position after the fill.
    pub position: f64,
}

/// A backtest's report and its fills, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct BacktestRun {
    /// The report.
    pub report: BacktestReport,
    /// Every fill.
    pub fills: Vec<BacktestFill>,
    /// Every signal the strategy made, in order, with the end of the bar it was made on.
    pub signals: Vec<(u64, StrategySignal)>,
}

/// The bar-level backtest of `params` over `bars` (per symbol, oldest first), as the module
/// documentation says. Parameters are assumed valid ([`BacktestParams::problems`]).
pub fn bar_backtest(bars: &BTreeMap<String, Vec<Bar>>, params: &BacktestParams) -> BacktestReport {
    bar_backtest_fills(bars, params).report
}

/// [`bar_backtest`] with the list of fills.
pub fn bar_backtest_fills(bars: &BTreeMap<String, Vec<Bar>>, p: &BacktestParams) -> BacktestRun {
    let bar_secs = p.bar_secs.max(1);
    let bar_ns = u64::from(bar_secs) * NS;
    let usable = |b: &Bar| {
        b.secs == bar_secs
            && [b.open, b.close].iter().all(|x| x.is_finite() && *x > 0.0)
            && b.volume.is_finite()
            && b.volume >= 0.0
    };
    let mut skipped = 0u64;
    let mut merged: Vec<(&str, &Bar)> = Vec::new();
    for (symbol, list) in bars {
        let mut own: Vec<&Bar> = list.iter().collect();
        own.sort_by_key(|b| b.ts);
        let mut last: Option<u64> = None;
        for b in own {
            if !usable(b) || last.is_some_and(|l| b.ts <= l) {
                skipped += 1;
                continue;
            }
            last = Some(b.ts);
            merged.push((symbol.as_str(), b));
        }
    }
    merged.sort_by(|a, b| (a.1.ts, a.0).cmp(&(b.1.ts, b.0)));

    let mut calcs: BTreeMap<&str, FeatureCalculator> = BTreeMap::new();
    let mut models: BTreeMap<&str, SymbolModel> = BTreeMap::new();
    let mut factor = FactorModel::new();
    let mut strategy = StrategyState::new(p.strategy.clone());
    let mut book = Book::new(PortfolioParams {
        initial_cash: p.initial_cash,
        fee_bps: p.fee_bps,
        account: "backtest".to_string(),
        ..PortfolioParams::default()
    });
    let mut perf = PerformanceTracker::default();
    // Per symbol: (target position, data time the signal was made).
    let mut pending: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    let mut fills: Vec<BacktestFill> = Vec::new();
    let mut signals = 0u64;
    let mut cross = Vec::new();
    let mut made: Vec<StrategySignal> = Vec::new();
    let mut signal_log: Vec<(u64, StrategySignal)> = Vec::new();

    for (i, &(symbol, bar)) in merged.iter().enumerate() {
        let end = bar.ts + bar_ns;
        // 1. The previous bar's decision at this bar's open.
        if let Some((target, signal_ts)) = pending.remove(symbol) {
            let delta = target - book.qty(symbol);
            if delta != 0.0 && delta.is_finite() {
                let x = Execution {
                    order_id: format!("backtest-{}", fills.len() + 1),
                    symbol: symbol.to_string(),
                    side: if delta > 0.0 { Side::Buy } else { Side::Sell },
                    qty: delta.abs(),
                    price: bar.open,
                    status: ExecStatus::Filled,
                    reason: None,
                    liquidity: Some("taker".to_string()),
                    ts: bar.ts,
                };
                if let Some(c) = book.on_fill(&x) {
                    perf.on_fill(x.ts, x.qty * x.price);
                    perf.on_realized(symbol, c.realized_pnl, c.fee);
                    fills.push(BacktestFill {
                        symbol: x.symbol,
                        ts: x.ts,
                        signal_ts,
                        side: x.side,
                        qty: x.qty,
                        price: x.price,
                        fee: c.fee,
                        realized_pnl: c.realized_pnl,
                        position: c.qty,
                    });
                }
            }
        }
        // 2. The close as a quote at the bar's end: the strategy sizes what this bar makes at
        //    this bar's close, as the live strategy sizes at the latest mid.
        book.mark(symbol, bar.close, end);
        let q = Quote {
            symbol: symbol.to_string(),
            ts: end,
            bid: bar.close,
            ask: bar.close,
            bid_size: 0.0,
            ask_size: 0.0,
        };
        made.extend(strategy.on_quote(&q));
        // 3. Features, model, strategy.
        let calc = calcs
            .entry(symbol)
            .or_insert_with(|| FeatureCalculator::new(symbol, bar_secs));
        if let Some(v) = calc.on_bar(bar) {
            let model = models
                .entry(symbol)
                .or_insert_with(|| SymbolModel::new(symbol, &p.ml));
            if let Some(pred) = model.on_vector(v.ts, v.bar_secs, &v.features) {
                made.extend(strategy.on_prediction(&pred));
            }
        }
        // 4. Factors across the universe.
        factor.on_bar(symbol, bar.ts, bar_secs, bar.close, bar.volume, &mut cross);
        for c in cross.drain(..) {
            made.extend(strategy.on_factors(&c));
        }
        // 5. The latest target of each symbol is the one to trade.
        for s in made.drain(..) {
            signals += 1;
            if let Some((key, _)) = bars.get_key_value(s.symbol.as_str()) {
                pending.insert(key.as_str(), (s.target_position, end));
            }
            signal_log.push((end, s));
        }
        // The period's last bar: sample the book.
        if merged.get(i + 1).is_none_or(|(_, next)| next.ts != bar.ts) {
            let u = book.update(end);
            let unrealized = u
                .positions
                .iter()
                .map(|v| (v.symbol.clone(), v.unrealized_pnl))
                .collect();
            perf.on_equity(u.ts, u.equity, unrealized);
        }
    }
    // The end of the data: periods still waiting for a symbol (their signals are not filled).
    factor.finish(&mut cross);
    for c in cross.drain(..) {
        signals += strategy.on_factors(&c).len() as u64;
    }

    let snapshot = book.snapshot();
    let report = BacktestReport {
        symbols: bars.keys().cloned().collect(),
        bars: merged.len() as u64,
        bars_skipped: skipped,
        from_ts: merged.first().map_or(0, |(_, b)| b.ts),
        to_ts: merged.last().map_or(0, |(_, b)| b.ts + bar_ns),
        fills: fills.len() as u64,
        signals,
        fees: book.fees(),
        realized_pnl: book.realized_pnl(),
        unrealized_pnl: book.unrealized_pnl(),
        positions: snapshot
            .positions
            .iter()
            .map(|v| (v.symbol.clone(), v.qty))
            .collect(),
        final_equity: book.equity(),
        performance: perf.performance(),
        params: p.clone(),
    };
    BacktestRun {
        report,
        fills,
        signals: signal_log,
    }
}

/// Backtesting engine settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BacktestingParams {
    /// The live parameters: of the periodic re-runs and of requests without their own.
    pub live: BacktestParams,
    /// Data time between two re-runs, seconds (default 1800).
    pub every_secs: u64,
    /// Feature vectors a symbol needs before the first re-run (default 30).
    pub min_bars: u64,
    /// Bars per symbol of a re-run (default 240).
    pub limit: u32,
    /// Timeout of each history request to the hub, milliseconds (default 5000).
    pub request_timeout_ms: u64,
}

impl Default for BacktestingParams {
    fn default() -> Self {
        BacktestingParams {
            live: BacktestParams::default(),
            every_secs: 1800,
            min_bars: 30,
            limit: 240,
            request_timeout_ms: 5000,
        }
    }
}

impl BacktestingParams {
    /// Every problem with these settings (empty when valid), each naming the value.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .live
            .problems()
            .into_iter()
            .map(|p| format!("live.{p}"))
            .collect();
        if self.every_secs == 0 {
            out.push("every_secs 0 must be at least 1".to_string());
        }
        if self.min_bars == 0 {
            out.push("min_bars 0 must be at least 1".to_string());
        }
        if self.limit == 0 {
            out.push("limit 0 must be at least 1".to_string());
        }
        if self.request_timeout_ms == 0 {
            out.push("request_timeout_ms 0 must be at least 1".to_string());
        }
        out
    }
}

/// Whether `s` can be a topic segment (`hub_request.history.{SYMBOL}`).
fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The parameters a request runs with, or every problem with it, each naming the value.
fn check_request(req: &BacktestRequest, live: &BacktestParams) -> Result<BacktestParams, String> {
    let mut problems = Vec::new();
    if req.symbols.is_empty() {
        problems.push("symbols is empty: name at least one symbol".to_string());
    }
    let mut seen = BTreeSet::new();
    for s in &req.symbols {
        if !segment_ok(s) {
            problems.push(format!(
                "symbol {s:?} must be 1+ characters of A-Z, a-z, 0-9, '_', '-'"
            ));
        } else if !seen.insert(s.as_str()) {
            problems.push(format!("symbol {s:?} is named twice"));
        }
    }
    if req.limit == 0 {
        problems.push("limit 0 must be at least 1 bar per symbol".to_string());
    }
    let params = req.params.clone().unwrap_or_else(|| live.clone());
    problems.extend(params.problems().into_iter().map(|p| format!("params.{p}")));
    if problems.is_empty() {
        Ok(params)
    } else {
        Err(problems.join("; "))
    }
}

/// Fetches `symbols`' bars from the hub concurrently: the bars of those that have some, and a
/// problem naming each of the others.
async fn fetch_history(
    hub: &HubClient,
    symbols: &[String],
    query: &HistoryQuery,
) -> (BTreeMap<String, Vec<Bar>>, Vec<String>) {
    let answers =
        futures_util::future::join_all(symbols.iter().map(|s| hub.history(s, query))).await;
    let mut bars = BTreeMap::new();
    let mut problems = Vec::new();
    for (s, answer) in symbols.iter().zip(answers) {
        match answer {
            Ok(b) if b.is_empty() => problems.push(format!(
                "no bars of {s:?} in the hub's history{}",
                query
                    .end_ts
                    .map(|t| format!(" ending at or before {t}"))
                    .unwrap_or_default()
            )),
            Ok(b) => {
                bars.insert(s.clone(), b);
            }
            Err(e) => problems.push(format!("history of {s:?}: {e}")),
        }
    }
    (bars, problems)
}

/// Runs [`bar_backtest`] on the blocking pool, so a long backtest does not hold a runtime
/// worker.
async fn run_backtest(
    bars: BTreeMap<String, Vec<Bar>>,
    params: BacktestParams,
) -> Result<BacktestReport, String> {
    tokio::task::spawn_blocking(move || bar_backtest(&bars, &params))
        .await
        .map_err(|e| format!("the backtest failed: {e}"))
}

/// When the periodic re-runs are due, from the feature vectors seen.
#[derive(Clone, Debug)]
struct RerunClock {
    min_bars: u64,
    every_ns: u64,
    /// Vectors seen per symbol.
    seen: BTreeMap<String, u64>,
    /// The latest bar end seen, Unix ns.
    data_ts: u64,
    /// Data time of the next re-run once the first is done.
    next: Option<u64>,
}

impl RerunClock {
    fn new(min_bars: u64, every_secs: u64) -> RerunClock {
        RerunClock {
            min_bars,
            every_ns: every_secs.saturating_mul(NS),
            seen: BTreeMap::new(),
            data_ts: 0,
            next: None,
        }
    }

    /// A vector of `symbol`'s bar ending at `end_ts`; the data time to re-run at, if one is due.
    fn on_vector(&mut self, symbol: &str, end_ts: u64) -> Option<u64> {
        match self.seen.get_mut(symbol) {
            Some(n) => *n += 1,
            None => {
                self.seen.insert(symbol.to_string(), 1);
            }
        }
        self.data_ts = self.data_ts.max(end_ts);
        let due = match self.next {
            None => self.seen.values().any(|n| *n >= self.min_bars),
            Some(next) => self.data_ts >= next,
        };
        due.then(|| {
            self.next = Some(self.data_ts.saturating_add(self.every_ns));
            self.data_ts
        })
    }

    fn symbols(&self) -> Vec<String> {
        self.seen.keys().cloned().collect()
    }
}

/// The Backtesting engine (`backtesting`); see the module documentation. Configuration:
/// [`BacktestingParams`].
pub struct BacktestingEngine {
    params: BacktestingParams,
    hub: Option<HubClient>,
    clock: RerunClock,
    /// Counters and the latest result, shared with the tasks that answer and re-run.
    state: Arc<Mutex<BacktestingState>>,
    /// Answers and re-runs in flight.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the answering and re-running tasks report back.
#[derive(Default)]
struct BacktestingState {
    requests: u64,
    request_errors: u64,
    reruns: u64,
    rerun_failures: u64,
    last: Option<BacktestResult>,
    /// A re-run is in flight.
    rerunning: bool,
    /// A re-run fell due while one was in flight: its data time and the symbols known then.
    due: Option<(u64, Vec<String>)>,
}

impl Default for BacktestingEngine {
    fn default() -> Self {
        BacktestingEngine::new(BacktestingParams::default())
    }
}

impl BacktestingEngine {
    /// An engine with `params` (replaced by the engine's configuration section, if any).
    pub fn new(params: BacktestingParams) -> BacktestingEngine {
        BacktestingEngine {
            clock: RerunClock::new(params.min_bars, params.every_secs),
            params,
            hub: None,
            state: Default::default(),
            tasks: Vec::new(),
        }
    }

    /// The settings.
    pub fn params(&self) -> &BacktestingParams {
        &self.params
    }

    /// The latest periodic result published.
    pub fn last(&self) -> Option<BacktestResult> {
        self.state.lock().last.clone()
    }

    /// Starts a task of the engine's (an answer or a re-run), forgetting those that ended.
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(task));
    }

    /// Re-runs at `ts` in a task of its own, or, while one runs, marks `ts` due for after it.
    fn start_rerun(&mut self, ctx: &EngineContext, ts: u64) {
        let Some(hub) = self.hub.clone() else {
            return;
        };
        {
            let mut st = self.state.lock();
            if st.rerunning {
                st.due = Some((ts, self.clock.symbols()));
                return;
            }
            st.rerunning = true;
        }
        let (ctx, state) = (ctx.clone(), self.state.clone());
        let (symbols, limit, live) = (
            self.clock.symbols(),
            self.params.limit,
            self.params.live.clone(),
        );
        self.spawn(async move {
            let (mut ts, mut symbols) = (ts, symbols);
            loop {
                rerun(&ctx, &hub, &state, &symbols, limit, &live, ts).await;
                let mut st = state.lock();
                match st.due.take() {
                    Some(next) => (ts, symbols) = next,
                    None => {
                        st.rerunning = false;
                        return;
                    }
                }
            }
        });
    }
}

/// Answers one request: the report, or the error naming what was wrong.
async fn answer(hub: &HubClient, live: &BacktestParams, msg: &Envelope) -> BacktestReply {
    let fail = |error: String| BacktestReply {
        report: None,
        error: Some(error),
    };
    let req: BacktestRequest = match msg.enc.decode(&msg.payload) {
        Ok(r) => r,
        Err(e) => return fail(format!("backtest request does not decode: {e}")),
    };
    let params = match check_request(&req, live) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let query = HistoryQuery {
        bar_secs: params.bar_secs,
        limit: req.limit,
        end_ts: req.end_ts,
    };
    let (bars, problems) = fetch_history(hub, &req.symbols, &query).await;
    if !problems.is_empty() {
        return fail(problems.join("; "));
    }
    match run_backtest(bars, params).await {
        Ok(report) => BacktestReply {
            report: Some(report),
            error: None,
        },
        Err(e) => fail(e),
    }
}

/// Re-runs the live parameters over the hub's history of `symbols` up to `ts` and publishes
/// the result.
async fn rerun(
    ctx: &EngineContext,
    hub: &HubClient,
    state: &Mutex<BacktestingState>,
    symbols: &[String],
    limit: u32,
    live: &BacktestParams,
    ts: u64,
) {
    let query = HistoryQuery {
        bar_secs: live.bar_secs,
        limit,
        end_ts: Some(ts),
    };
    let (bars, problems) = fetch_history(hub, symbols, &query).await;
    if bars.is_empty() {
        state.lock().rerun_failures += 1;
        tracing::warn!(ts, problems = %problems.join("; "), "backtest re-run without bars");
        return;
    }
    if !problems.is_empty() {
        tracing::warn!(ts, problems = %problems.join("; "), "backtest re-run leaves symbols out");
    }
    let backtest = match run_backtest(bars, live.clone()).await {
        Ok(r) => r,
        Err(e) => {
            state.lock().rerun_failures += 1;
            tracing::warn!(ts, error = %e, "backtest re-run failed");
            return;
        }
    };
    let result = BacktestResult {
        report: "backtest".to_string(),
        ts,
        problems,
        backtest,
    };
    if let Err(e) = ctx.send(&result).await {
        tracing::warn!(ts, error = %e, "backtest result not published");
    }
    let mut st = state.lock();
    st.reruns += 1;
    st.last = Some(result);
}

#[async_trait]
impl Engine for BacktestingEngine {
    fn name(&self) -> &'static str {
        "backtesting"
    }

    fn publishes(&self) -> Vec<EventKind> {
        vec![EventKind::AnalyticsResult, hub_request_kind()]
    }

    fn subscriptions(&self) -> Vec<Interest> {
        // Two interests: a request is read as soon as it comes, not behind a backlog of vectors.
        vec![
            Interest::reliable(&["backtest_request.>"]),
            Interest::reliable(&["feature_vector.>"]),
        ]
    }

    async fn start(&mut self, ctx: &EngineContext) -> Result<(), EngineError> {
        if !ctx.config().is_null() {
            self.params = ctx.settings()?;
        }
        EngineError::check("backtesting", self.params.problems())?;
        self.clock = RerunClock::new(self.params.min_bars, self.params.every_secs);
        self.hub = Some(HubClient::new(
            ctx.bus().clone(),
            Some(Duration::from_millis(self.params.request_timeout_ms)),
        ));
        Ok(())
    }

    async fn on_message(
        &mut self,
        ctx: &EngineContext,
        msg: &Envelope,
    ) -> Result<(), HandlerError> {
        if msg.kind == EventKind::FeatureVector {
            let v: FeatureVector = msg.decode()?;
            let end = v.ts.saturating_add(u64::from(v.bar_secs) * NS);
            if let Some(ts) = self.clock.on_vector(&v.symbol, end) {
                self.start_rerun(ctx, ts);
            }
            return Ok(());
        }
        if msg.kind != backtest_request_kind() {
            return Ok(());
        }
        let Some(hub) = self.hub.clone() else {
            return Err(HandlerError("the engine has not started".to_string()));
        };
        let (ctx, msg, live, state) = (
            ctx.clone(),
            msg.clone(),
            self.params.live.clone(),
            self.state.clone(),
        );
        self.spawn(async move {
            let reply = answer(&hub, &live, &msg).await;
            {
                let mut st = state.lock();
                st.requests += 1;
                if let Some(e) = &reply.error {
                    st.request_errors += 1;
                    tracing::debug!(error = %e, "backtest request refused");
                }
            }
            // A request that expects no reply (published, not requested) is logged, not retried.
            if let Err(e) = ctx.reply(&msg, &reply).await {
                tracing::warn!(topic = %msg.topic, error = %e, "backtest reply not sent");
            }
        });
        Ok(())
    }

    async fn stop(&mut self, _ctx: &EngineContext) -> Result<(), EngineError> {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let st = self.state.lock();
        serde_json::json!({
            "symbols": self.clock.seen.len(),
            "requests": st.requests,
            "request_errors": st.request_errors,
            "reruns": st.reruns,
            "rerun_failures": st.rerun_failures,
            "last_final_equity": st.last.as_ref().map(|r| r.backtest.final_equity),
            "next_rerun_ts": self.clock.next,
        })
    }
}

/// Errors of [`BacktestClient`].
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The request could not be made or was not answered in time.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The engine refused the request; the reason names the bad values.
    #[error("backtesting: {0}")]
    Refused(String),
    /// The answer could not be read.
    #[error("backtest reply: {0}")]
    Reply(String),
}

/// The client side of the Backtesting engine's request/reply.
#[derive(Clone)]
pub struct BacktestClient {
    bus: DualBus,
    timeout: Option<Duration>,
}

impl BacktestClient {
    /// Asks over `bus`; `timeout` `None` uses the bus config's. The engine waits for the hub up
    /// to its `request_timeout_ms` (5 s by default), so give it more than that.
    pub fn new(bus: DualBus, timeout: Option<Duration>) -> BacktestClient {
        BacktestClient { bus, timeout }
    }

    /// Runs a backtest. Cancel-safe: dropping the future abandons the request (the engine
    /// still answers; the answer is discarded).
    ///
    /// # Errors
    /// [`BacktestError::Refused`] naming the bad values of a bad request (no symbols, a symbol
    /// without bars, `limit` 0, bad parameters); `Request` when no answer came in time.
    pub async fn run(&self, req: &BacktestRequest) -> Result<BacktestReport, BacktestError> {
        let env = self
            .bus
            .request(backtest_request_kind(), BACKTEST_TOPIC, req, self.timeout)
            .await?;
        let reply: BacktestReply = env
            .enc
            .decode(&env.payload)
            .map_err(|e| BacktestError::Reply(e.to_string()))?;
        match reply {
            BacktestReply {
                error: Some(reason),
                ..
            } => Err(BacktestError::Refused(reason)),
            BacktestReply {
                report: Some(r), ..
            } => Ok(r),
            _ => Err(BacktestError::Reply(
                "neither a report nor an error".to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualbus_model::strategy::StrategyParams;

    const MIN: u64 = 60 * NS;
    /// A minute boundary.
    const T0: u64 = 1_717_171_200 * NS;
    const SYMBOLS: [&str; 3] = ["AAAUSDT", "BBBUSDT", "CCCUSDT"];
    const BARS: u64 = 150;

    /// SplitMix64 in [-1, 1): the same numbers on every machine.
    fn noise(seed: u64) -> f64 {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// 150 one-minute bars of three symbols: random walks with a slow cycle, opens gapping
    /// from the previous close, varied volume and buy volume.
    fn series() -> BTreeMap<String, Vec<Bar>> {
        let mut out = BTreeMap::new();
        for (k, s) in SYMBOLS.iter().enumerate() {
            let mut close = 100.0 * (k as f64 + 1.0);
            let mut bars = Vec::new();
            for i in 0..BARS {
                let seed = (k as u64) << 32 | i;
                let open = close * (1.0 + 0.0005 * noise(seed ^ 0xA5A5));
                let drift = 0.002 * ((i as f64) / (7.0 + k as f64)).sin();
                close = open * (1.0 + drift + 0.004 * noise(seed));
                let volume = 10.0 + 5.0 * (1.0 + noise(seed ^ 0x5A5A));
                bars.push(Bar {
                    symbol: s.to_string(),
                    ts: T0 + i * MIN,
                    secs: 60,
                    open,
                    high: open.max(close) * 1.001,
                    low: open.min(close) * 0.999,
                    close,
                    volume,
                    buy_volume: volume * (0.5 + 0.4 * noise(seed ^ 0x3C3C)),
                    trades: 10,
                });
            }
            out.insert(s.to_string(), bars);
        }
        out
    }

    fn open_at(bars: &BTreeMap<String, Vec<Bar>>, symbol: &str, ts: u64) -> f64 {
        bars[symbol].iter().find(|b| b.ts == ts).unwrap().open
    }

    #[test]
    fn the_same_input_gives_the_same_report_byte_for_byte() {
        let bars = series();
        let p = BacktestParams::default();
        let a = serde_json::to_string(&bar_backtest(&bars, &p)).unwrap();
        let b = serde_json::to_string(&bar_backtest(&bars, &p)).unwrap();
        assert_eq!(a, b);
        let r = bar_backtest(&bars, &p);
        assert!(r.fills > 10 && r.signals >= r.fills, "{r:?}");
        assert_eq!(r.bars, 3 * BARS);
        assert_eq!((r.from_ts, r.to_ts), (T0, T0 + BARS * MIN));
        assert_eq!(r.performance.fills, r.fills);
        assert_eq!(r.symbols, SYMBOLS.to_vec());
        // The report reads back (floats to within a rounding of the last digit: serde_json's
        // parser is not exact).
        let back: BacktestReport = serde_json::from_str(&a).unwrap();
        assert_eq!(
            (back.fills, back.signals, &back.params),
            (r.fills, r.signals, &p)
        );
        assert!((back.final_equity - r.final_equity).abs() <= 1e-9 * r.final_equity);
    }

    #[test]
    fn a_signal_fills_at_the_next_open_of_its_symbol() {
        let bars = series();
        let p = BacktestParams::default();
        let run = bar_backtest_fills(&bars, &p);
        assert!(!run.fills.is_empty());
        for f in &run.fills {
            // At the open of a bar that starts at or after the signal's bar ended.
            assert!(f.ts >= f.signal_ts, "{f:?}");
            assert_eq!(f.price, open_at(&bars, &f.symbol, f.ts), "{f:?}");
        }
        // Bar t+1's open moves: the fill of bar t's signal moves with it, nothing before does.
        let k = run.fills.len() / 2;
        let f = &run.fills[k];
        let mut moved = bars.clone();
        let i = ((f.ts - T0) / MIN) as usize;
        moved.get_mut(&f.symbol).unwrap()[i].open *= 1.01;
        let again = bar_backtest_fills(&moved, &p);
        let g = &again.fills[k];
        assert_eq!(&again.fills[..k], &run.fills[..k]);
        assert_eq!(
            (&g.symbol, g.ts, g.side, g.qty),
            (&f.symbol, f.ts, f.side, f.qty)
        );
        assert_eq!(g.price, f.price * 1.01);
    }

    #[test]
    fn a_signal_is_sized_at_the_close_of_the_bar_that_made_it() {
        let bars = series();
        let run = bar_backtest_fills(&bars, &BacktestParams::default());
        assert!(run.signals.len() > 10, "{}", run.signals.len());
        for (end, s) in &run.signals {
            let close = bars[&s.symbol]
                .iter()
                .find(|b| b.ts + MIN == *end)
                .unwrap()
                .close;
            assert_eq!(s.price, close, "signal made at {end}: {s:?}");
        }
    }

    #[test]
    fn data_after_a_fill_does_not_change_it() {
        let bars = series();
        let p = BacktestParams::default();
        let run = bar_backtest_fills(&bars, &p);
        let cut = run.fills[run.fills.len() / 2].ts;
        let mut later = bars.clone();
        for list in later.values_mut() {
            for b in list.iter_mut().filter(|b| b.ts > cut) {
                b.open *= 0.97;
                b.close *= 1.05;
                b.volume *= 2.0;
            }
        }
        let again = bar_backtest_fills(&later, &p);
        let before = |r: &BacktestRun| -> Vec<BacktestFill> {
            r.fills.iter().filter(|f| f.ts <= cut).cloned().collect()
        };
        assert_eq!(before(&again), before(&run));
        // The changed data did change what came after (the test is not vacuous).
        assert_ne!(again.fills, run.fills);
    }

    #[test]
    fn zero_strategy_weights_never_trade() {
        let mut p = BacktestParams::default();
        p.strategy.w_ml = 0.0;
        p.strategy.w_factor = 0.0;
        let r = bar_backtest(&series(), &p);
        assert_eq!((r.fills, r.signals, r.performance.fills), (0, 0, 0));
        assert_eq!(r.final_equity, p.initial_cash);
        assert_eq!(r.fees, 0.0);
        assert!(r.positions.is_empty());
    }

    #[test]
    fn equity_is_initial_cash_plus_pnl_minus_fees() {
        let bars = series();
        let p = BacktestParams::default();
        let run = bar_backtest_fills(&bars, &p);
        let r = &run.report;
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        assert!(r.fees > 0.0);
        assert!(near(
            r.final_equity,
            p.initial_cash + r.realized_pnl + r.unrealized_pnl - r.fees
        ));
        let fees: f64 = run.fills.iter().map(|f| f.fee).sum();
        let by_notional: f64 = run
            .fills
            .iter()
            .map(|f| f.qty * f.price * p.fee_bps / 1e4)
            .sum();
        assert!(near(r.fees, fees) && near(r.fees, by_notional));
        // Fees do not change the trades, only the equity, by exactly the fees.
        let free = bar_backtest_fills(
            &bars,
            &BacktestParams {
                fee_bps: 0.0,
                ..p.clone()
            },
        );
        assert_eq!(free.fills.len(), run.fills.len());
        assert_eq!(free.report.fees, 0.0);
        assert!(near(free.report.final_equity - r.final_equity, r.fees));
        assert_eq!(r.performance.equity, Some(r.final_equity));
    }

    #[test]
    fn bad_bars_are_skipped_and_counted() {
        let mut bars = series();
        let list = bars.get_mut("AAAUSDT").unwrap();
        list[10].close = f64::NAN;
        list[20].secs = 300;
        let dup = list[30].clone();
        list.insert(31, dup);
        let r = bar_backtest(&bars, &BacktestParams::default());
        assert_eq!((r.bars, r.bars_skipped), (3 * BARS - 2, 3));
        let empty = bar_backtest(&BTreeMap::new(), &BacktestParams::default());
        assert_eq!(
            (empty.bars, empty.fills, empty.from_ts, empty.to_ts),
            (0, 0, 0, 0)
        );
        assert_eq!(empty.final_equity, 100_000.0);
    }

    #[test]
    fn bad_requests_are_refused_naming_the_value() {
        let live = BacktestParams::default();
        let req = |symbols: &[&str], limit: u32| BacktestRequest {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            limit,
            ..Default::default()
        };
        assert_eq!(
            check_request(&req(&["BTCUSDT"], 10), &live),
            Ok(live.clone())
        );
        let e = check_request(&req(&[], 10), &live).unwrap_err();
        assert!(e.contains("symbols is empty"), "{e}");
        let e = check_request(&req(&["BTCUSDT"], 0), &live).unwrap_err();
        assert!(e.contains("limit 0"), "{e}");
        let e = check_request(&req(&["BTC.USDT", "ETHUSDT", "ETHUSDT"], 10), &live).unwrap_err();
        assert!(
            e.contains("\"BTC.USDT\"") && e.contains("\"ETHUSDT\" is named twice"),
            "{e}"
        );
        let mut bad = req(&["BTCUSDT"], 10);
        bad.params = Some(BacktestParams {
            fee_bps: -1.0,
            strategy: StrategyParams {
                max_notional: 0.0,
                ..Default::default()
            },
            ..Default::default()
        });
        let e = check_request(&bad, &live).unwrap_err();
        assert!(
            e.contains("params.fee_bps -1") && e.contains("params.strategy.max_notional 0"),
            "{e}"
        );
    }

    #[test]
    fn requests_and_settings_decode_with_defaults_and_refuse_unknown_fields() {
        let r: BacktestRequest = serde_json::from_str(r#"{"symbols": ["BTCUSDT"]}"#).unwrap();
        assert_eq!((r.limit, r.end_ts, r.params), (500, None, None));
        let p: BacktestParams = serde_json::from_str(r#"{"fee_bps": 2.5}"#).unwrap();
        assert_eq!(
            (p.fee_bps, p.initial_cash, p.bar_secs),
            (2.5, 100_000.0, 60)
        );
        let e = serde_json::from_str::<BacktestRequest>(r#"{"symbol": ["X"]}"#).unwrap_err();
        assert!(e.to_string().contains("symbol"), "{e}");
        let s: BacktestingParams = serde_json::from_str(r#"{"limit": 120}"#).unwrap();
        assert_eq!((s.limit, s.every_secs, s.min_bars), (120, 1800, 30));
        assert!(serde_json::from_str::<BacktestingParams>(r#"{"every": 1}"#).is_err());
        let bad = BacktestingParams {
            every_secs: 0,
            limit: 0,
            ..Default::default()
        };
        assert_eq!(
            bad.problems(),
            vec![
                "every_secs 0 must be at least 1",
                "limit 0 must be at least 1"
            ]
        );
    }

    #[test]
    fn reruns_start_at_min_bars_then_every_period_of_data_time() {
        let mut c = RerunClock::new(3, 120);
        let mut due = Vec::new();
        for i in 1..=12u64 {
            for s in ["A", "B"] {
                if let Some(ts) = c.on_vector(s, T0 + i * MIN) {
                    due.push((s, (ts - T0) / MIN));
                }
            }
        }
        // The first once A has 3 vectors, then every 2 minutes of data time.
        assert_eq!(due, vec![("A", 3), ("A", 5), ("A", 7), ("A", 9), ("A", 11)]);
        assert_eq!(c.symbols(), vec!["A", "B"]);
    }

    #[test]
    fn the_periodic_result_flattens_the_report() {
        let result = BacktestResult {
            report: "backtest".into(),
            ts: T0,
            problems: Vec::new(),
            backtest: bar_backtest(&series(), &BacktestParams::default()),
        };
        let v = serde_json::to_value(&result).unwrap();
        assert_eq!(v["report"], "backtest");
        assert_eq!(v["bars"], 3 * BARS);
        assert!(v["performance"]["equity"].is_number());
        let back: BacktestResult = serde_json::from_value(v).unwrap();
        assert_eq!(back.backtest.fills, result.backtest.fills);
    }
}
