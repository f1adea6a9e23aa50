//! Backtests: the request and reply of `backtest_request.run` and the result the Backtesting
//! engine publishes (`analytics_result.backtest`).

use crate::analytics::Performance;
use crate::ml::MlParams;
use crate::strategy::StrategyParams;
use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of backtest requests.
pub const BACKTEST_REQUEST: &str = "backtest_request";

/// The topic `BacktestClient` (dualbus-engines) sends requests on (the engine answers any
/// `backtest_request.>` topic).
pub const BACKTEST_TOPIC: &str = "backtest_request.run";

/// The [`EventKind`] of backtest requests (a custom kind: it routes to the Engine Logic bus).
pub fn backtest_request_kind() -> EventKind {
    EventKind::Custom(BACKTEST_REQUEST.into())
}

/// What a backtest runs: the strategy, its model and the account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BacktestParams {
    /// The Strategy engine's parameters.
    pub strategy: StrategyParams,
    /// The ML engine's parameters.
    pub ml: MlParams,
    /// Fee per fill, basis points of its notional (default 1).
    pub fee_bps: f64,
    /// Cash at the start, quote currency (default 100,000).
    pub initial_cash: f64,
    /// Bar length in seconds (default 60).
    pub bar_secs: u32,
}

impl Default for BacktestParams {
    fn default() -> Self {
        BacktestParams {
            strategy: StrategyParams::default(),
            ml: MlParams::default(),
            fee_bps: 1.0,
            initial_cash: 100_000.0,
            bar_secs: 60,
        }
    }
}

impl BacktestParams {
    /// Every problem with these parameters (empty when valid), each naming the value; those of
    /// the strategy and the model are prefixed `strategy.` and `ml.`.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .strategy
            .problems()
            .into_iter()
            .map(|p| format!("strategy.{p}"))
            .chain(self.ml.problems().into_iter().map(|p| format!("ml.{p}")))
            .collect();
        if !(self.fee_bps.is_finite() && self.fee_bps >= 0.0) {
            out.push(format!(
                "fee_bps {} must be a number at least 0",
                self.fee_bps
            ));
        }
        if !(self.initial_cash.is_finite() && self.initial_cash > 0.0) {
            out.push(format!(
                "initial_cash {} must be a positive number",
                self.initial_cash
            ));
        }
        if self.bar_secs == 0 {
            out.push("bar_secs 0 must be at least 1".to_string());
        }
        out
    }
}

/// The outcome of a backtest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BacktestReport {
    /// The symbols given, in order.
    pub symbols: Vec<String>,
    /// Bars used, all symbols.
    pub bars: u64,
    /// Bars skipped: of another length, with a bad price, or not after the symbol's previous
    /// bar.
    pub bars_skipped: u64,
    /// Start of the first bar used, Unix ns (0 without bars).
    pub from_ts: u64,
    /// End of the last bar used, Unix ns (0 without bars).
    pub to_ts: u64,
    /// Fills.
    pub fills: u64,
    /// Strategy signals made, all of them: only a symbol's latest one before its next bar is
    /// traded, and none made on its last bar.
    pub signals: u64,
    /// Fees paid.
    pub fees: f64,
    /// Realized P&L (before fees).
    pub realized_pnl: f64,
    /// Unrealized P&L at the last closes.
    pub unrealized_pnl: f64,
    /// Final position of every symbol traded (flat ones too).
    pub positions: BTreeMap<String, f64>,
    /// `initial_cash + realized_pnl + unrealized_pnl - fees`.
    pub final_equity: f64,
    /// Sharpe ratio, drawdown, turnover, hit rate, P&L by symbol (the Analytics engine's
    /// figures over the backtest's equity and fills).
    pub performance: Performance,
    /// The parameters it ran with.
    pub params: BacktestParams,
}

/// A backtest request (the payload of `backtest_request.run`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BacktestRequest {
    /// The symbols to trade together (at least one).
    pub symbols: Vec<String>,
    /// Bars per symbol: the latest this many (default 500).
    pub limit: u32,
    /// Only bars ending at or before this Unix ns time; `None` for the latest.
    pub end_ts: Option<u64>,
    /// The parameters; `None` for the live parameters the engine was configured with.
    pub params: Option<BacktestParams>,
}

impl Default for BacktestRequest {
    fn default() -> Self {
        BacktestRequest {
            symbols: Vec::new(),
            limit: 500,
            end_ts: None,
            params: None,
        }
    }
}

/// The answer to a backtest request: a report, or the error naming what was wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BacktestReply {
    /// The report (when it ran).
    pub report: Option<BacktestReport>,
    /// Why it did not run.
    pub error: Option<String>,
}

/// The payload of `analytics_result.backtest`: a periodic re-run's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BacktestResult {
    /// `backtest`.
    pub report: String,
    /// Data time of the re-run (the bars end at or before it), Unix ns.
    pub ts: u64,
    /// Symbols left out, each with the reason (the hub had no bars, or did not answer).
    #[serde(default)]
    pub problems: Vec<String>,
    /// The backtest.
    #[serde(flatten)]
    pub backtest: BacktestReport,
}

impl Message for BacktestResult {
    fn kind() -> EventKind {
        EventKind::AnalyticsResult
    }

    const PRIORITY: Priority = Priority::Low;

    fn topic(&self) -> String {
        "analytics_result.backtest".to_string()
    }
}
