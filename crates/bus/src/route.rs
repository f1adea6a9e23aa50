//! The router: which bus and which stream a message travels on.

use crate::config::{BusId, Config};
use dualbus_core::transport::StreamKey;
use dualbus_core::{EventKind, Priority};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// A lane of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The kind's own stream.
    Normal,
    /// The priority stream: critical kinds and critical-priority messages.
    Priority,
}

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The bus.
    pub bus: BusId,
    /// The lane.
    pub lane: Lane,
    /// The stream key.
    pub stream: StreamKey,
}

/// The default bus of a kind (docs/architecture.md, "Buses and routing by kind"): market data,
/// price updates and executions on the MarketData bus, everything else on the Engine Logic bus.
pub fn default_bus(kind: &EventKind) -> BusId {
    match kind {
        EventKind::MarketData | EventKind::PriceUpdate | EventKind::TradeExecution => {
            BusId::MarketData
        }
        _ => BusId::Logic,
    }
}

/// Whether a message takes the priority lane: the critical kinds always, any kind at critical
/// priority.
pub fn is_priority(kind: &EventKind, prio: Priority) -> bool {
    kind.is_critical() || prio == Priority::Critical
}

/// Maps kinds to buses and stream keys (`{prefix}:{bus}:{kind}`), caching the keys.
pub struct Router {
    prefix: Arc<str>,
    overrides: HashMap<EventKind, BusId>,
    known: Vec<[StreamKey; 2]>,
    priority: [StreamKey; 2],
    dead: [StreamKey; 2],
    custom: RwLock<HashMap<Arc<str>, [StreamKey; 2]>>,
}

impl Router {
    /// A router for a validated config.
    pub fn new(cfg: &Config) -> Router {
        let prefix: Arc<str> = Arc::from(cfg.prefix.as_str());
        let key = |bus: BusId, name: &str| -> StreamKey {
            Arc::from(format!("{prefix}:{}:{name}", bus.as_str()))
        };
        let overrides = cfg
            .routes
            .iter()
            .filter_map(|(k, b)| Some((EventKind::parse(k).ok()?, BusId::parse(b)?)))
            .collect();
        Router {
            known: EventKind::KNOWN
                .iter()
                .map(|k| {
                    [
                        key(BusId::MarketData, k.as_str()),
                        key(BusId::Logic, k.as_str()),
                    ]
                })
                .collect(),
            priority: [
                key(BusId::MarketData, "priority"),
                key(BusId::Logic, "priority"),
            ],
            dead: [key(BusId::MarketData, "dead"), key(BusId::Logic, "dead")],
            custom: RwLock::new(HashMap::new()),
            overrides,
            prefix,
        }
    }

    /// The stream-key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bus a kind is routed to.
    pub fn bus_of(&self, kind: &EventKind) -> BusId {
        if self.overrides.is_empty() {
            return default_bus(kind);
        }
        self.overrides
            .get(kind)
            .copied()
            .unwrap_or_else(|| default_bus(kind))
    }

    /// The stream of `kind` on `bus` (its normal lane).
    pub fn kind_stream(&self, bus: BusId, kind: &EventKind) -> StreamKey {
        if let Some(i) = EventKind::KNOWN.iter().position(|k| k == kind) {
            return self.known[i][bus.index()].clone();
        }
        let name: Arc<str> = Arc::from(kind.as_str());
        if let Some(keys) = self.custom.read().get(&name) {
            return keys[bus.index()].clone();
        }
        let keys: [StreamKey; 2] = [
            Arc::from(format!("{}:md:{name}", self.prefix)),
            Arc::from(format!("{}:logic:{name}", self.prefix)),
        ];
        let out = keys[bus.index()].clone();
        self.custom.write().insert(name, keys);
        out
    }

    /// The priority-lane stream of a bus.
    pub fn priority_stream(&self, bus: BusId) -> StreamKey {
        self.priority[bus.index()].clone()
    }

    /// The dead-letter stream of a bus.
    pub fn dead_stream(&self, bus: BusId) -> StreamKey {
        self.dead[bus.index()].clone()
    }

    /// The reply stream of a requester instance on a bus.
    pub fn reply_stream(&self, bus: BusId, inst: &str) -> StreamKey {
        Arc::from(format!("{}:{}:reply:{inst}", self.prefix, bus.as_str()))
    }

    /// Whether `stream` is a requester's reply stream of this bus system
    /// (`{prefix}:{bus}:reply:{inst}` with an instance name of `[A-Za-z0-9_-]`, at most 128):
    /// a reply is written there and nowhere else, whatever a request names.
    pub fn is_reply_stream(&self, stream: &str) -> bool {
        [BusId::MarketData, BusId::Logic].iter().any(|bus| {
            stream
                .strip_prefix(&*self.prefix)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|r| r.strip_prefix(bus.as_str()))
                .and_then(|r| r.strip_prefix(":reply:"))
                .is_some_and(|inst| {
                    !inst.is_empty()
                        && inst.len() <= 128
                        && inst
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        })
    }

    /// Where a message of this kind and priority goes.
    pub fn route(&self, kind: &EventKind, prio: Priority) -> Route {
        let bus = self.bus_of(kind);
        if is_priority(kind, prio) {
            Route {
                bus,
                lane: Lane::Priority,
                stream: self.priority_stream(bus),
            }
        } else {
            Route {
                bus,
                lane: Lane::Normal,
                stream: self.kind_stream(bus, kind),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let r = Router::new(&Config::default());
        for k in EventKind::KNOWN.iter() {
            let expected = match k.as_str() {
                "market_data" | "price_update" | "trade_execution" => BusId::MarketData,
                _ => BusId::Logic,
            };
            assert_eq!(r.bus_of(k), expected, "{k}");
        }
        assert_eq!(
            r.bus_of(&EventKind::parse("my_kind").unwrap()),
            BusId::Logic
        );
        let route = r.route(&EventKind::MarketData, Priority::Normal);
        assert_eq!(&*route.stream, "dualbus:md:market_data");
        let route = r.route(&EventKind::RiskAlert, Priority::Normal);
        assert_eq!(
            (route.lane, &*route.stream),
            (Lane::Priority, "dualbus:logic:priority")
        );
        let route = r.route(&EventKind::StrategySignal, Priority::Critical);
        assert_eq!(route.lane, Lane::Priority);
    }

    #[test]
    fn overrides_apply() {
        let mut cfg = Config::default();
        cfg.routes.insert("my_quotes".into(), "md".into());
        cfg.routes.insert("price_update".into(), "logic".into());
        let r = Router::new(&cfg);
        let q = EventKind::parse("my_quotes").unwrap();
        assert_eq!(r.bus_of(&q), BusId::MarketData);
        assert_eq!(
            &*r.kind_stream(BusId::MarketData, &q),
            "dualbus:md:my_quotes"
        );
        assert_eq!(r.bus_of(&EventKind::PriceUpdate), BusId::Logic);
    }
}
