//! The examples of `docs/wire-format.md`, for the tests that check the document against the
//! code (one parser for all of them).

use serde_json::Value;

/// The document, as built into the test binaries.
pub const WIRE_FORMAT: &str = include_str!("../../../docs/wire-format.md");

/// Each "### `kind`" section's first JSON example, as (heading, whole entry), in document order.
///
/// # Panics
/// When an example is not valid JSON (the document is broken).
pub fn wire_examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut rest = WIRE_FORMAT;
    while let Some(at) = rest.find("\n### `") {
        rest = &rest[at + "\n### `".len()..];
        let kind = rest[..rest.find('`').expect("a closing backtick")].to_string();
        let section = &rest[..rest.find("\n### ").unwrap_or(rest.len())];
        if let Some(start) = section.find("```json") {
            let body = &section[start + "```json".len()..];
            let end = body.find("```").expect("end of the block");
            let entry: Value = serde_json::from_str(&body[..end])
                .unwrap_or_else(|e| panic!("{kind}: the example is not JSON: {e}"));
            out.push((kind, entry));
        }
    }
    out
}

/// The `payload` of the first example under "### `kind`".
///
/// # Panics
/// When the document has no example of that kind.
pub fn wire_example(kind: &str) -> Value {
    wire_examples()
        .into_iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("docs/wire-format.md has no example of {kind}"))
        .1["payload"]
        .clone()
}
