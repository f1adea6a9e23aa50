//! A backtest's fills respect causality: in lockstep with quotes made from trades (as
//! `dualbus backtest` runs on a trade file), an order sent in reaction to a trade fills at that
//! trade's price or worse, stamped no earlier than the trade, never at the trade before.

mod support;

use async_trait::async_trait;
use dualbus_bus::DualBus;
use dualbus_core::EventKind;
use dualbus_engines::engine::HostOptions;
use dualbus_engines::hub::{FeedGate, HubOptions, MarketDataHub};
use dualbus_engines::provider::{HistoryRequest, MarketStream, Provider, ProviderError};
use dualbus_model::market::{Bar, Instrument, MarketEvent, Side, Trade};
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest, OrderType};
use dualbus_model::Message;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use support::{start_engine, until, Checker};

const S: u64 = 1_000_000_000;
/// A minute boundary.
const T0: u64 = 1_699_999_980 * S;
const SYM: &str = "BTCUSDT";

/// Plays a fixed list of trades in one batch, then ends.
struct Trades(Mutex<Option<Vec<MarketEvent>>>);

struct Once(Option<Vec<MarketEvent>>);

#[async_trait]
impl MarketStream for Once {
    async fn next_batch(&mut self, out: &mut Vec<MarketEvent>) -> Result<bool, ProviderError> {
        match self.0.take() {
            Some(evs) => {
                out.extend(evs);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait]
impl Provider for Trades {
    fn name(&self) -> &'static str {
        "trades"
    }

    fn instruments(&self) -> Vec<Instrument> {
        vec![Instrument {
            symbol: SYM.into(),
            tick_size: 0.01,
            lot_size: 0.001,
        }]
    }

    async fn stream(&self) -> Result<Box<dyn MarketStream>, ProviderError> {
        Ok(Box::new(Once(self.0.lock().take())))
    }

    async fn history(&self, _: &HistoryRequest) -> Result<Vec<Bar>, ProviderError> {
        Ok(Vec::new())
    }
}

fn trade(ts: u64, price: f64, id: u64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: SYM.into(),
        ts,
        price,
        size: 0.5,
        side: Side::Buy,
        id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_sent_on_a_trade_fills_at_that_trades_price_not_the_one_before() {
    let run = async {
        // Two trades at 100 in the first minute, then 105 opening the next one: the trade on
        // which a strategy would act on the first bar's close.
        let events = vec![
            trade(T0 + 10 * S, 100.0, 1),
            trade(T0 + 20 * S, 100.0, 2),
            trade(T0 + 65 * S, 105.0, 3),
        ];
        let root = DualBus::builder("test").build().unwrap();
        let checker = Checker::start(&root, &["market_data.trade.>", "trade_execution.>"]).await;
        let trades = || checker.of::<Trade>(EventKind::MarketData);
        let gate = FeedGate::new();
        let hub = MarketDataHub::new(
            Arc::new(Trades(Mutex::new(Some(events)))),
            HubOptions {
                quotes_from_trades: true,
                gate: Some(gate.clone()),
                ..Default::default()
            },
        );
        let handle = hub.handle();
        let _hub = start_engine(hub, &root, "marketdata", HostOptions::default()).await;
        let risk = root.sibling("risk", "risk-1").unwrap();
        // Lockstep, as a backtest runs: one permit, then wait until what it let out arrived
        // (a derived quote per trade, so every trade makes two messages).
        while trades().last().is_none_or(|t| t.price != 105.0) {
            let published = handle.stats().published;
            assert!(
                !handle.is_feed_done(),
                "the data ended before the trade at 105"
            );
            gate.open_one();
            until(|| handle.stats().published > published).await;
            until(|| trades().len() as u64 * 2 >= handle.stats().published).await;
        }
        // The strategy reacts to the trade at 105 (it closed the first bar): a market buy.
        let order = OrderRequest {
            order_id: "o-1".into(),
            symbol: SYM.into(),
            side: Side::Buy,
            qty: 1.0,
            order_type: OrderType::Market,
            limit_price: None,
        };
        risk.publish(OrderRequest::kind(), &order.topic(), &order)
            .await
            .unwrap();
        checker.wait_for(EventKind::TradeExecution, 1).await;
        let fill = checker.of::<Execution>(EventKind::TradeExecution)[0].clone();
        assert_eq!(fill.status, ExecStatus::Filled, "{fill:?}");
        assert!(
            fill.price >= 105.0,
            "filled at {} before the trade at 105",
            fill.price
        );
        assert!(
            fill.ts >= T0 + 65 * S,
            "stamped {} before the trade at {}",
            fill.ts,
            T0 + 65 * S
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no hang");
}
