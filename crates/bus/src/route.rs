//! The router: which bus and which stream a message travels on.

use crate::config::{BusId, Config};
use dualbus_core::partition::{partition_of, symbol_of};
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

/// Maps kinds to buses and stream keys (`{prefix}:{bus}:{kind}`, and with partitions
/// `{prefix}:md:{pN}:{kind}` on the MarketData bus), caching the keys.
pub struct Router {
    prefix: Arc<str>,
    overrides: HashMap<EventKind, BusId>,
    known: Vec<[StreamKey; 2]>,
    /// MarketData bus partitions (1: none).
    partitions: u32,
    /// With partitions: the keys of each known kind on the MarketData bus, per partition.
    known_parts: Vec<Arc<[StreamKey]>>,
    custom_parts: RwLock<HashMap<Arc<str>, Arc<[StreamKey]>>>,
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
        let partitions = cfg.md.partitions.max(1);
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
            known_parts: if partitions > 1 {
                EventKind::KNOWN
                    .iter()
                    .map(|k| Arc::from(part_keys(&prefix, k.as_str(), partitions)))
                    .collect()
            } else {
                Vec::new()
            },
            custom_parts: RwLock::new(HashMap::new()),
            partitions,
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

    /// How many partitions the MarketData bus has (1: none).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether `kind`'s normal lane is split by symbol: kinds on a partitioned MarketData bus.
    pub fn is_partitioned(&self, kind: &EventKind) -> bool {
        self.partitions > 1 && self.bus_of(kind) == BusId::MarketData
    }

    /// Every stream of `kind`'s normal lane on `bus`: one, or one per partition.
    pub fn kind_streams(&self, bus: BusId, kind: &EventKind) -> Vec<StreamKey> {
        if bus == BusId::MarketData && self.partitions > 1 {
            self.partition_keys(kind).to_vec()
        } else {
            vec![self.kind_stream(bus, kind)]
        }
    }

    /// The streams of `kind`'s normal lane on `bus` for the given partitions (all of them when
    /// the bus has none).
    pub fn kind_streams_in(&self, bus: BusId, kind: &EventKind, parts: &[u32]) -> Vec<StreamKey> {
        if bus == BusId::MarketData && self.partitions > 1 {
            let keys = self.partition_keys(kind);
            parts
                .iter()
                .filter_map(|&p| keys.get(p as usize).cloned())
                .collect()
        } else {
            vec![self.kind_stream(bus, kind)]
        }
    }

    /// The stream of `kind` on `bus` for a message with this topic: its partition's stream when
    /// the bus is partitioned.
    pub fn kind_stream_for(&self, bus: BusId, kind: &EventKind, topic: &str) -> StreamKey {
        if bus == BusId::MarketData && self.partitions > 1 {
            let p = partition_of(symbol_of(topic), self.partitions) as usize;
            if let Some(i) = EventKind::KNOWN.iter().position(|k| k == kind) {
                return self.known_parts[i][p].clone();
            }
            self.partition_keys(kind)[p].clone()
        } else {
            self.kind_stream(bus, kind)
        }
    }

    fn partition_keys(&self, kind: &EventKind) -> Arc<[StreamKey]> {
        if let Some(i) = EventKind::KNOWN.iter().position(|k| k == kind) {
            return self.known_parts[i].clone();
        }
        let name: Arc<str> = Arc::from(kind.as_str());
        if let Some(keys) = self.custom_parts.read().get(&name) {
            return keys.clone();
        }
        let keys: Arc<[StreamKey]> = Arc::from(part_keys(&self.prefix, &name, self.partitions));
        self.custom_parts.write().insert(name, keys.clone());
        keys
    }

    /// The priority-lane stream of a bus.
    pub fn priority_stream(&self, bus: BusId) -> StreamKey {
        self.priority[bus.index()].clone()
    }

    /// The dead-letter stream of a bus.
    pub fn dead_stream(&self, bus: BusId) -> StreamKey {
        self.dead[bus.index()].clone()
    }

    /// The bus whose key space `stream` is in (`{prefix}:{bus}:...`), if any. Each bus's
    /// servers also hold the other bus's streams (the failover mirror): this tells them apart.
    pub fn bus_of_stream(&self, stream: &str) -> Option<BusId> {
        let rest = stream.strip_prefix(&*self.prefix)?.strip_prefix(':')?;
        BusId::ALL.into_iter().find(|bus| {
            rest.strip_prefix(bus.as_str())
                .is_some_and(|r| r.starts_with(':'))
        })
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

    /// Where a message of this kind, priority and topic goes: as [`Router::route`], and on a
    /// partitioned bus to its symbol's partition.
    pub fn route_topic(&self, kind: &EventKind, prio: Priority, topic: &str) -> Route {
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
                stream: self.kind_stream_for(bus, kind, topic),
            }
        }
    }

    /// Where a message of this kind and priority goes (on a partitioned bus, the stream of
    /// partition 0: use [`Router::route_topic`] for messages).
    pub fn route(&self, kind: &EventKind, prio: Priority) -> Route {
        self.route_topic(kind, prio, "")
    }
}

/// The keys of a kind's stream on the MarketData bus, one per partition, each with its
/// partition as the hash tag (`{prefix}:md:{p3}:{kind}`).
fn part_keys(prefix: &str, kind: &str, partitions: u32) -> Vec<StreamKey> {
    (0..partitions)
        .map(|p| Arc::from(format!("{prefix}:md:{{p{p}}}:{kind}")))
        .collect()
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
    fn a_stream_is_placed_in_its_buss_key_space() {
        let mut cfg = Config::default();
        cfg.md.partitions = 4;
        let r = Router::new(&cfg);
        for bus in BusId::ALL {
            for k in EventKind::KNOWN.iter() {
                for key in r.kind_streams(bus, k) {
                    assert_eq!(r.bus_of_stream(&key), Some(bus), "{key}");
                }
            }
            assert_eq!(r.bus_of_stream(&r.dead_stream(bus)), Some(bus));
            assert_eq!(r.bus_of_stream(&r.reply_stream(bus, "x-1")), Some(bus));
        }
        for other in [
            "dualbus:mdx:trade",
            "other:md:market_data",
            "dualbus:md",
            "dualbus",
        ] {
            assert_eq!(r.bus_of_stream(other), None, "{other}");
        }
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

    #[test]
    fn partitions_split_the_market_data_streams_by_symbol() {
        let mut cfg = Config::default();
        cfg.md.partitions = 4;
        let r = Router::new(&cfg);
        let md = EventKind::MarketData;
        let keys = r.kind_streams(BusId::MarketData, &md);
        assert_eq!(
            keys.iter().map(|k| &**k).collect::<Vec<_>>(),
            [
                "dualbus:md:{p0}:market_data",
                "dualbus:md:{p1}:market_data",
                "dualbus:md:{p2}:market_data",
                "dualbus:md:{p3}:market_data"
            ]
        );
        let p = partition_of("BTCUSDT", 4) as usize;
        let route = r.route_topic(&md, Priority::Normal, "market_data.trade.BTCUSDT");
        assert_eq!(route.stream, keys[p]);
        // A custom kind on the MarketData bus is partitioned too; the Engine Logic bus never is.
        cfg.routes.insert("my_quotes".into(), "md".into());
        let r = Router::new(&cfg);
        let q = EventKind::parse("my_quotes").unwrap();
        assert_eq!(
            &*r.route_topic(&q, Priority::Normal, "my_quotes.ETHUSDT")
                .stream,
            format!("dualbus:md:{{p{}}}:my_quotes", partition_of("ETHUSDT", 4))
        );
        assert!(r.is_partitioned(&q));
        assert!(!r.is_partitioned(&EventKind::FeatureVector));
        assert_eq!(
            r.kind_streams(BusId::Logic, &EventKind::FeatureVector)
                .len(),
            1
        );
        assert_eq!(
            &*r.kind_streams_in(BusId::MarketData, &md, &[1, 3])[1],
            "dualbus:md:{p3}:market_data"
        );
    }
}
