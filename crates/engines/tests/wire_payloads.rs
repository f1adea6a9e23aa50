//! The payload examples of `docs/wire-format.md` for the kinds the engines publish or consume
//! decode into the engines' own types, so the document cannot drift from the code.

use dualbus_model::market::Trade;
use dualbus_model::orders::{ExecStatus, Execution, OrderRequest};

const DOC: &str = include_str!("../../../docs/wire-format.md");

/// The `payload` of the first JSON example under "### `kind`".
fn example_payload(kind: &str) -> serde_json::Value {
    let heading = format!("### `{kind}`");
    let at = DOC.find(&heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &DOC[at..];
    let start = rest.find("```json").expect("a json block") + "```json".len();
    let end = start + rest[start..].find("```").expect("end of the block");
    let entry: serde_json::Value = serde_json::from_str(&rest[start..end]).expect("valid JSON");
    entry["payload"].clone()
}

#[test]
fn market_data_trade_example_is_a_trade() {
    let t: Trade = serde_json::from_value(example_payload("market_data")).expect("a Trade");
    assert_eq!(t.symbol, "BTCUSDT");
    assert!(t.price > 0.0 && t.size > 0.0);
}

#[test]
fn order_request_example_is_an_order() {
    let o: OrderRequest =
        serde_json::from_value(example_payload("order_request")).expect("an OrderRequest");
    assert!(o.qty > 0.0);
    assert!(o.limit_price.is_some());
}

#[test]
fn trade_execution_example_is_an_execution() {
    let x: Execution =
        serde_json::from_value(example_payload("trade_execution")).expect("an Execution");
    assert_eq!(x.status, ExecStatus::Filled);
}
