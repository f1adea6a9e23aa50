//! What a backtest records as it runs, for its report and charts: the Portfolio engine's
//! output and the bars (the ledger), and the prices the hub took from the provider (the tape).

use async_trait::async_trait;
use dualbus_engines::provider::{HistoryRequest, MarketStream, Provider, ProviderError};
use dualbus_model::features::FeatureVector;
use dualbus_model::market::{Bar, Instrument, MarketEvent};
use dualbus_model::portfolio::{PortfolioUpdate, PositionChange};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The Portfolio engine's output and the bars per symbol, as the run goes.
#[derive(Default)]
pub(super) struct Ledger {
    /// Every fill's effect on its position, in order.
    pub(super) changes: Vec<PositionChange>,
    /// (ts, equity, gross exposure, drawdown fraction) of every `portfolio_update`.
    pub(super) equity: Vec<(u64, f64, f64, f64)>,
    /// Feature vectors (one per bar) per symbol.
    pub(super) bars: BTreeMap<String, u64>,
}

impl Ledger {
    pub(super) fn on(&mut self, kind: &str, v: &Option<Value>) {
        let Some(v) = v else { return };
        match kind {
            "position_change" => {
                if let Ok(c) = serde_json::from_value::<PositionChange>(v.clone()) {
                    self.changes.push(c);
                }
            }
            "portfolio_update" => {
                if let Ok(u) = serde_json::from_value::<PortfolioUpdate>(v.clone()) {
                    self.equity
                        .push((u.ts, u.equity, u.gross_exposure, u.drawdown));
                }
            }
            "feature_vector" => {
                if let Ok(f) = serde_json::from_value::<FeatureVector>(v.clone()) {
                    *self.bars.entry(f.symbol).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

/// Prices of the data as the hub took them from the provider: per symbol, trade prices and
/// quote mids (the last of each second, enough for the benchmark and the plots).
#[derive(Default)]
pub(super) struct PriceTape {
    /// Data time of the first and the last event, Unix ns.
    pub(super) first_ts: Option<u64>,
    pub(super) last_ts: Option<u64>,
    pub(super) symbols: BTreeMap<String, SymbolPrices>,
}

/// One symbol's prices.
#[derive(Default)]
pub(super) struct SymbolPrices {
    pub(super) trades: Vec<(u64, f64)>,
    pub(super) mids: Vec<(u64, f64)>,
}

impl SymbolPrices {
    /// Trade prices, or quote mids for a symbol without trades.
    pub(super) fn prices(&self) -> &[(u64, f64)] {
        if self.trades.is_empty() {
            &self.mids
        } else {
            &self.trades
        }
    }
}

/// Keeps the last price of each second, and the very first.
pub(super) fn push_price(series: &mut Vec<(u64, f64)>, ts: u64, price: f64) {
    if !(price.is_finite() && price > 0.0) {
        return;
    }
    let n = series.len();
    match series.last_mut() {
        Some(last) if n > 1 && last.0 / NS_PER_S == ts / NS_PER_S => *last = (ts, price),
        _ => series.push((ts, price)),
    }
}

pub(super) const NS_PER_S: u64 = 1_000_000_000;

impl PriceTape {
    pub(super) fn on(&mut self, ev: &MarketEvent) {
        // A bar's time is its end, which may lie past the data (the last bar of a file ends
        // at the next whole minute): the span is that of the trades and quotes.
        if !matches!(ev, MarketEvent::Bar(_)) {
            let ts = ev.ts();
            self.first_ts = Some(self.first_ts.map_or(ts, |f| f.min(ts)));
            self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));
        }
        match ev {
            MarketEvent::Trade(t) => {
                let s = self.symbols.entry(t.symbol.clone()).or_default();
                push_price(&mut s.trades, t.ts, t.price);
            }
            MarketEvent::Quote(q) => {
                let s = self.symbols.entry(q.symbol.clone()).or_default();
                push_price(&mut s.mids, q.ts, q.mid());
            }
            _ => {}
        }
    }

    /// Seconds of data time from the first event to the last.
    pub(super) fn covers_s(&self) -> f64 {
        match (self.first_ts, self.last_ts) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => 0.0,
        }
    }

    /// (symbol, first ts, first price, last ts, last price) of each symbol with prices.
    pub(super) fn first_last(&self) -> Vec<(String, u64, f64, u64, f64)> {
        self.symbols
            .iter()
            .filter_map(|(sym, p)| {
                let (a, b) = (p.prices().first()?, p.prices().last()?);
                Some((sym.clone(), a.0, a.1, b.0, b.1))
            })
            .collect()
    }
}

/// A provider whose stream also writes every event's price to a [`PriceTape`].
pub(super) struct TapedProvider {
    pub(super) inner: Arc<dyn Provider>,
    pub(super) tape: Arc<Mutex<PriceTape>>,
}

#[async_trait]
impl Provider for TapedProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn instruments(&self) -> Vec<Instrument> {
        self.inner.instruments()
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        Ok(Box::new(TapedStream {
            inner: self.inner.stream().await?,
            tape: self.tape.clone(),
        }))
    }

    async fn history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        self.inner.history(req).await
    }
}

pub(super) struct TapedStream {
    inner: Box<dyn MarketStream>,
    tape: Arc<Mutex<PriceTape>>,
}

#[async_trait]
impl MarketStream for TapedStream {
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        let from = out.len();
        let more = self.inner.next_batch(out).await?;
        let mut tape = self.tape.lock();
        for ev in &out[from..] {
            tape.on(ev);
        }
        Ok(more)
    }

    fn skipped(&self) -> u64 {
        self.inner.skipped()
    }
}
