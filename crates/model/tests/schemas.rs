//! The schemas in `docs/schemas/` are the ones the types generate (a schema that drifts from its
//! type fails here), every schema file belongs to a contract, and the catalog's names, kinds and
//! topics agree with the types' `Message` implementations.

use dualbus_core::{EventKind, Topic};
use dualbus_model::catalog::{self, Role, CONTRACTS};
use dualbus_model::Message;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas")
}

const REGENERATE: &str =
    "regenerate them with `cargo run -p dualbus -- schema --write docs/schemas`";

#[test]
fn schema_files_match_the_types() {
    let mut drifted = Vec::new();
    for c in CONTRACTS {
        let path = schema_dir().join(format!("{}.json", c.name));
        match std::fs::read_to_string(&path) {
            Ok(text) if text == c.schema_json() => {}
            Ok(_) => drifted.push(format!("{} differs from {}", path.display(), c.type_name)),
            Err(e) => drifted.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(drifted.is_empty(), "{}; {REGENERATE}", drifted.join("; "));
}

#[test]
fn every_schema_file_belongs_to_a_contract() {
    let names: BTreeSet<String> = CONTRACTS
        .iter()
        .map(|c| format!("{}.json", c.name))
        .collect();
    let stale: Vec<String> = std::fs::read_dir(schema_dir())
        .expect("docs/schemas exists")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with(".json") && !names.contains(f))
        .collect();
    assert!(
        stale.is_empty(),
        "schemas of no payload in docs/schemas: {stale:?}"
    );
}

#[test]
fn names_are_unique_and_kinds_are_valid() {
    let mut seen = BTreeSet::new();
    for c in CONTRACTS {
        assert!(seen.insert(c.name), "{} listed twice", c.name);
        assert!(
            c.role == Role::Reply
                || c.name == c.kind
                || c.name.starts_with(&format!("{}.", c.kind)),
            "{}: a published or request payload's name is its kind or kind.type",
            c.name
        );
        EventKind::parse(c.kind).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        if c.role != Role::Reply {
            let example = c
                .topic
                .split(' ')
                .next()
                .unwrap()
                .replace("{SYMBOL}", "BTCUSDT")
                .replace("{ACCOUNT}", "main")
                .replace("{ENGINE}", "risk");
            let topic = Topic::new(&example).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!(
                topic.as_str().starts_with(&format!("{}.", c.kind)),
                "{}: topic {} does not start with its kind",
                c.name,
                c.topic
            );
        }
    }
}

/// A payload type's contract agrees with its `Message` implementation: same kind, and the topic
/// of a message fits the listed pattern.
fn agrees<M: Message>(name: &str, msg: &M, expected_topic: &str) {
    let c = catalog::find(name);
    assert_eq!(c.len(), 1, "{name}");
    assert_eq!(M::kind().as_str(), c[0].kind, "{name}");
    assert_eq!(msg.topic(), expected_topic, "{name}");
    let v = serde_json::to_value(msg).unwrap();
    assert_eq!((c[0].check)(&v), Ok(v.clone()), "{name} round trip");
}

#[test]
fn messages_agree_with_the_catalog() {
    use dualbus_model::market::{Quote, Side, Trade};
    use dualbus_model::orders::{OrderRequest, OrderType};
    use dualbus_model::risk::{RiskAction, RiskAlert};
    let trade = Trade {
        symbol: "BTCUSDT".into(),
        ts: 1,
        price: 100.0,
        size: 0.5,
        side: Side::Buy,
        id: 7,
    };
    agrees("market_data.trade", &trade, "market_data.trade.BTCUSDT");
    let quote = Quote {
        symbol: "ETHUSDT".into(),
        ts: 1,
        bid: 99.0,
        ask: 101.0,
        bid_size: 1.0,
        ask_size: 2.0,
    };
    agrees("market_data.quote", &quote, "market_data.quote.ETHUSDT");
    let order = OrderRequest {
        order_id: "o-1".into(),
        symbol: "BTCUSDT".into(),
        side: Side::Sell,
        qty: 0.1,
        order_type: OrderType::Limit,
        limit_price: Some(99.0),
    };
    agrees("order_request", &order, "order_request.BTCUSDT");
    let book_alert = RiskAlert {
        rule: "max_drawdown".into(),
        symbol: None,
        ts: 1,
        value: 0.2,
        limit: 0.1,
        action: RiskAction::CircuitBreakerTripped,
        order_id: None,
        reason: "drawdown".into(),
    };
    agrees("risk_alert", &book_alert, "risk_alert.book");
}

#[test]
fn check_names_what_does_not_decode() {
    let c = catalog::find("order_request")[0];
    let err = (c.check)(&serde_json::json!({"order_id": "o-1", "symbol": "BTCUSDT"})).unwrap_err();
    assert!(err.contains("missing field `side`"), "{err}");
}

#[test]
fn a_kind_with_several_payloads_finds_them_all() {
    let names: Vec<&str> = catalog::find("market_data")
        .iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        [
            "market_data.trade",
            "market_data.quote",
            "market_data.bar",
            "market_data.book"
        ]
    );
    assert!(catalog::find("no_such_kind").is_empty());
}
