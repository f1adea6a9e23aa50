//! Every payload example of `docs/wire-format.md` decodes into its type of the model and reads
//! back the same: the document cannot drift from the code. One test over every kind.

use dualbus_model::catalog::{Contract, Role, CONTRACTS};
use dualbus_testkit::wire_examples as examples;
use serde_json::Value;

/// Kinds the document shows with no type in the model (no engine publishes them yet).
const WITHOUT_TYPE: [&str; 2] = ["price_update", "system_alert"];

/// The published contract of an entry: by kind and, where a kind has several, the topic's
/// second segment (`market_data.quote.BTCUSDT` -> `market_data.quote`).
fn contract_of(entry: &Value) -> Option<&'static Contract> {
    let kind = entry["kind"].as_str()?;
    let topic = entry["topic"].as_str()?;
    let mut seg = topic.split('.');
    let typed = format!("{}.{}", seg.next()?, seg.next().unwrap_or(""));
    CONTRACTS
        .iter()
        .filter(|c| c.role == Role::Published && c.kind == kind)
        .find(|c| c.name == kind || c.name == typed)
}

#[test]
fn every_example_decodes_into_its_type() {
    let examples = examples();
    assert!(
        examples.len() >= 18,
        "found only {} examples",
        examples.len()
    );
    let mut untyped = Vec::new();
    for (heading, entry) in &examples {
        assert_eq!(
            entry["kind"].as_str(),
            Some(heading.as_str()),
            "{heading}: entry kind"
        );
        let Some(c) = contract_of(entry) else {
            untyped.push(heading.clone());
            continue;
        };
        let payload = &entry["payload"];
        let back = (c.check)(payload)
            .unwrap_or_else(|e| panic!("{heading}: the example is not a {}: {e}", c.type_name));
        // What the example gives reads back unchanged (fields it leaves out take defaults).
        for (key, value) in payload.as_object().expect("an object payload") {
            assert_eq!(
                &back[key], value,
                "{heading}: field {key} after a round trip"
            );
        }
    }
    assert_eq!(
        untyped, WITHOUT_TYPE,
        "examples with no type in dualbus-model"
    );
}

#[test]
fn an_example_that_drifts_fails() {
    let (_, entry) = examples()
        .into_iter()
        .find(|(k, _)| k == "order_request")
        .expect("an order_request example");
    let mut payload = entry["payload"].clone();
    payload.as_object_mut().unwrap().remove("side");
    let c = contract_of(&entry).unwrap();
    let err = (c.check)(&payload).unwrap_err();
    assert!(err.contains("side"), "{err}");
}
