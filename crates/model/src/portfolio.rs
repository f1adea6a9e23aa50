//! The portfolio: positions, P&L and equity (`portfolio_update.{ACCOUNT}`) and each change of
//! position (`position_change.{SYMBOL}`).

use crate::Message;
use dualbus_core::{EventKind, Priority};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One position in a portfolio update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PositionView {
    /// Instrument.
    pub symbol: String,
    /// Signed quantity (long > 0, short < 0, flat 0).
    pub qty: f64,
    /// Average price of the open quantity (0 when flat).
    pub avg_price: f64,
    /// The mark: the latest quote mid, or the last fill price before any quote.
    pub mark: f64,
    /// `qty x (mark - avg_price)`.
    pub unrealized_pnl: f64,
    /// P&L realized on this symbol so far.
    pub realized_pnl: f64,
}

/// The payload of a `portfolio_update`: the account's state at `ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortfolioUpdate {
    /// The account.
    pub account: String,
    /// Event time of the latest data the update includes, Unix ns.
    pub ts: u64,
    /// `cash + sum(qty x mark)` = `initial_cash + realized_pnl + unrealized_pnl - fees`.
    pub equity: f64,
    /// `initial_cash - sum(signed qty x price) - fees`.
    pub cash: f64,
    /// Realized P&L so far (before fees).
    pub realized_pnl: f64,
    /// Unrealized P&L at the marks.
    pub unrealized_pnl: f64,
    /// Fees paid so far.
    pub fees: f64,
    /// `sum(|qty x mark|)`.
    pub gross_exposure: f64,
    /// `sum(qty x mark)`.
    pub net_exposure: f64,
    /// Highest equity of all updates so far (at least `initial_cash`).
    pub peak_equity: f64,
    /// `(peak_equity - equity) / peak_equity`: the fraction below the peak.
    pub drawdown: f64,
    /// Fills so far (rejections not counted).
    pub fills: u64,
    /// Every symbol traded, flat ones included, ordered by symbol.
    pub positions: Vec<PositionView>,
}

/// The payload of a `position_change`: one fill's effect on one position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PositionChange {
    /// The account.
    pub account: String,
    /// Instrument.
    pub symbol: String,
    /// Event time of the fill, Unix ns.
    pub ts: u64,
    /// Quantity before the fill.
    pub prev_qty: f64,
    /// Quantity after the fill.
    pub qty: f64,
    /// Signed quantity of the fill (`qty - prev_qty`, up to rounding).
    pub delta: f64,
    /// Average price after the fill (0 when flat).
    pub avg_price: f64,
    /// The fill's price.
    pub fill_price: f64,
    /// The fill's fee.
    pub fee: f64,
    /// P&L this fill realized.
    pub realized_pnl: f64,
    /// The order's id.
    pub order_id: String,
}

impl Message for PortfolioUpdate {
    fn kind() -> EventKind {
        EventKind::PortfolioUpdate
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("portfolio_update.{}", self.account)
    }
}

impl Message for PositionChange {
    fn kind() -> EventKind {
        EventKind::PositionChange
    }

    const PRIORITY: Priority = Priority::Normal;

    fn topic(&self) -> String {
        format!("position_change.{}", self.symbol)
    }
}
