//! Event kinds and priorities.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The kind of an event: says what the payload is and, through the bus's routes, which bus and
/// stream carry it. Known kinds are variants; any other snake_case name is a [`EventKind::Custom`]
/// kind (routed to the Engine Logic bus unless configured otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Trades, quotes, bars and books (`market_data.{trade,quote,bar,book}.{SYMBOL}`).
    MarketData,
    /// A price change notification.
    PriceUpdate,
    /// A fill from a venue.
    TradeExecution,
    /// A risk limit breach or a rejected order.
    RiskAlert,
    /// A model prediction.
    MlPrediction,
    /// A strategy's target position.
    StrategySignal,
    /// Positions, P&L and equity.
    PortfolioUpdate,
    /// A VPIN value.
    VpinCalculation,
    /// Cross-sectional factor scores.
    FactorCalculation,
    /// Per-symbol features.
    FeatureVector,
    /// Performance and traffic analytics.
    AnalyticsResult,
    /// An order for the venue.
    OrderRequest,
    /// A change of position.
    PositionChange,
    /// Margin utilisation above its threshold.
    MarginCall,
    /// Order flow toxicity above its threshold.
    ToxicityAlert,
    /// A flash crash detected.
    FlashCrashAlert,
    /// An engine's heartbeat.
    EngineHealth,
    /// A system-wide alert.
    SystemAlert,
    /// Any other kind: a snake_case name of `[a-z0-9_]`.
    Custom(Arc<str>),
}

/// A kind name that is not snake_case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event kind {name:?}: {reason}")]
pub struct KindError {
    /// The rejected name.
    pub name: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl EventKind {
    /// Every known (non-custom) kind, in the order of docs/architecture.md, "Buses and routing
    /// by kind".
    pub const KNOWN: [EventKind; 18] = [
        EventKind::MarketData,
        EventKind::PriceUpdate,
        EventKind::TradeExecution,
        EventKind::RiskAlert,
        EventKind::MlPrediction,
        EventKind::StrategySignal,
        EventKind::PortfolioUpdate,
        EventKind::VpinCalculation,
        EventKind::FactorCalculation,
        EventKind::FeatureVector,
        EventKind::AnalyticsResult,
        EventKind::OrderRequest,
        EventKind::PositionChange,
        EventKind::MarginCall,
        EventKind::ToxicityAlert,
        EventKind::FlashCrashAlert,
        EventKind::EngineHealth,
        EventKind::SystemAlert,
    ];

    /// The snake_case wire name (`risk_alert`).
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::MarketData => "market_data",
            EventKind::PriceUpdate => "price_update",
            EventKind::TradeExecution => "trade_execution",
            EventKind::RiskAlert => "risk_alert",
            EventKind::MlPrediction => "ml_prediction",
            EventKind::StrategySignal => "strategy_signal",
            EventKind::PortfolioUpdate => "portfolio_update",
            EventKind::VpinCalculation => "vpin_calculation",
            EventKind::FactorCalculation => "factor_calculation",
            EventKind::FeatureVector => "feature_vector",
            EventKind::AnalyticsResult => "analytics_result",
            EventKind::OrderRequest => "order_request",
            EventKind::PositionChange => "position_change",
            EventKind::MarginCall => "margin_call",
            EventKind::ToxicityAlert => "toxicity_alert",
            EventKind::FlashCrashAlert => "flash_crash_alert",
            EventKind::EngineHealth => "engine_health",
            EventKind::SystemAlert => "system_alert",
            EventKind::Custom(name) => name,
        }
    }

    /// Kinds that always travel on the priority lane (docs/architecture.md, "Lanes and the
    /// priority lane").
    pub fn is_critical(&self) -> bool {
        matches!(
            self,
            EventKind::RiskAlert
                | EventKind::FlashCrashAlert
                | EventKind::MarginCall
                | EventKind::SystemAlert
        )
    }

    /// Parses a wire name; known names give their variant, other valid names a custom kind.
    ///
    /// # Errors
    /// [`KindError`] when the name is empty, too long or not of `[a-z0-9_]`.
    pub fn parse(name: &str) -> Result<EventKind, KindError> {
        if let Some(known) = EventKind::KNOWN.iter().find(|k| k.as_str() == name) {
            return Ok(known.clone());
        }
        let err = |reason| KindError {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(err("empty"));
        }
        if name.len() > 64 {
            return Err(err("longer than 64 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(err("only lowercase letters, digits and '_' are allowed"));
        }
        Ok(EventKind::Custom(Arc::from(name)))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = KindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::parse(s)
    }
}

/// Message priority. `Critical` messages, and the critical kinds, take the priority lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Bulk traffic.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal traffic where a transport can order it.
    High,
    /// Priority lane: its own stream and reader.
    Critical,
}

impl Priority {
    /// The wire name (`critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "critical" => Ok(Priority::Critical),
            other => Err(format!(
                "invalid priority {other:?}: expected low, normal, high or critical"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds_round_trip() {
        for k in EventKind::KNOWN.iter() {
            assert_eq!(&EventKind::parse(k.as_str()).unwrap(), k);
        }
    }

    #[test]
    fn custom_kinds_are_validated() {
        assert_eq!(
            EventKind::parse("my_signal").unwrap(),
            EventKind::Custom("my_signal".into())
        );
        let err = EventKind::parse("Bad-Kind").unwrap_err();
        assert!(err.to_string().contains("\"Bad-Kind\""), "{err}");
        assert!(EventKind::parse("").is_err());
    }

    #[test]
    fn priorities_parse() {
        assert_eq!("critical".parse::<Priority>().unwrap(), Priority::Critical);
        assert!("urgent".parse::<Priority>().unwrap_err().contains("urgent"));
    }
}
