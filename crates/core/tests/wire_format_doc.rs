//! Keeps `docs/wire-format.md` true: every "### `kind`" example under "## Payloads by kind" must
//! be a valid wire entry of that kind, and every known kind must have one.

use dualbus_core::envelope::DEFAULT_MAX_PAYLOAD;
use dualbus_core::{Envelope, EventKind, Priority};
use serde_json::Value;

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/wire-format.md");

/// The wire fields every example must carry, as JSON strings.
const REQUIRED: [&str; 10] = [
    "v", "id", "kind", "topic", "src", "inst", "seq", "ts", "prio", "enc",
];

/// One "### `kind`" section: its heading's kind, the line it starts on, its json blocks.
struct Section {
    kind: String,
    line: usize,
    blocks: Vec<String>,
}

fn read_doc() -> String {
    std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("cannot read {DOC_PATH}: {e}"))
}

/// The sections of "## Payloads by kind" (up to the next "## " heading).
fn sections(doc: &str) -> Vec<Section> {
    let mut lines = doc.lines().enumerate();
    assert!(
        lines.any(|(_, l)| l.trim_end() == "## Payloads by kind"),
        "{DOC_PATH} has no \"## Payloads by kind\" section"
    );
    let mut out: Vec<Section> = Vec::new();
    let mut in_block: Option<String> = None;
    for (i, line) in lines {
        let lineno = i + 1;
        if let Some(block) = in_block.as_mut() {
            if line.trim_end() == "```" {
                let block = in_block.take().unwrap();
                out.last_mut()
                    .unwrap_or_else(|| panic!("line {lineno}: json block before any kind heading"))
                    .blocks
                    .push(block);
            } else {
                block.push_str(line);
                block.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            break;
        }
        if let Some(rest) = line.strip_prefix("### ") {
            let kind = rest
                .trim_end()
                .strip_prefix('`')
                .and_then(|r| r.strip_suffix('`'))
                .unwrap_or_else(|| {
                    panic!("line {lineno}: heading {line:?} is not of the form ### `kind`")
                });
            out.push(Section {
                kind: kind.to_string(),
                line: lineno,
                blocks: Vec::new(),
            });
        } else if line.trim_end() == "```json" {
            in_block = Some(String::new());
        } else if line.starts_with("```") {
            panic!("line {lineno}: only ```json blocks belong under the kind headings: {line:?}");
        }
    }
    assert!(in_block.is_none(), "unterminated ```json block at the end");
    out
}

/// Turns one documented example into wire fields and checks it parses as documented.
fn check_example(section: &Section, text: &str) {
    let kind = &section.kind;
    let ctx = format!("{DOC_PATH}, section `{kind}` (line {})", section.line);
    let example: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{ctx}: invalid JSON: {e}"));
    let obj = example
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: the example is not a JSON object"));

    for f in REQUIRED {
        assert!(
            obj.get(f).is_some_and(Value::is_string),
            "{ctx}: wire field `{f}` is missing or not a JSON string"
        );
    }
    assert_eq!(
        obj["kind"].as_str(),
        Some(kind.as_str()),
        "{ctx}: the heading's kind differs from the example's \"kind\""
    );
    assert_eq!(
        obj["enc"], "json",
        "{ctx}: examples are written with enc json"
    );

    let payload = obj
        .get("payload")
        .unwrap_or_else(|| panic!("{ctx}: no `payload`"));
    let mut raw: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, value) in obj {
        let bytes = if name == "payload" {
            serde_json::to_vec(value).unwrap()
        } else {
            value
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: field `{name}` is not a JSON string"))
                .as_bytes()
                .to_vec()
        };
        raw.push((name.as_bytes().to_vec(), bytes));
    }

    let env = Envelope::from_wire_fields(
        raw.iter().map(|(k, v)| (&k[..], &v[..])),
        DEFAULT_MAX_PAYLOAD,
    )
    .unwrap_or_else(|e| panic!("{ctx}: not a valid wire entry: {e}"));
    assert_eq!(env.kind.as_str(), kind, "{ctx}: decoded kind");
    let decoded = env
        .enc
        .to_json_value(&env.payload)
        .unwrap_or_else(|e| panic!("{ctx}: payload does not decode: {e}"));
    assert_eq!(&decoded, payload, "{ctx}: payload does not round-trip");

    // Conventions the reader does not check but the contract states.
    assert!(
        env.topic.starts_with_segment(kind),
        "{ctx}: topic {:?} does not start with the kind",
        env.topic.as_str()
    );
    if env.kind.is_critical() {
        assert_eq!(
            env.prio,
            Priority::Critical,
            "{ctx}: critical kinds are shown at critical priority"
        );
    }

    // The example is in canonical form: writing the envelope back gives the same fields.
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut written: Vec<(String, String)> = env
        .to_wire_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), text(&v)))
        .collect();
    let mut fields: Vec<(String, String)> = raw.iter().map(|(k, v)| (text(k), text(v))).collect();
    written.sort();
    fields.sort();
    assert_eq!(
        written, fields,
        "{ctx}: the example is not in the form the Rust publisher writes"
    );
}

#[test]
fn every_documented_example_is_a_valid_wire_entry() {
    let doc = read_doc();
    let sections = sections(&doc);
    assert!(!sections.is_empty(), "no ### `kind` sections found");
    for s in &sections {
        assert_eq!(
            s.blocks.len(),
            1,
            "section `{}` (line {}) must hold exactly one ```json block, found {}",
            s.kind,
            s.line,
            s.blocks.len()
        );
        check_example(s, &s.blocks[0]);
    }
}

#[test]
fn every_known_kind_is_documented_once() {
    let doc = read_doc();
    let sections = sections(&doc);
    for kind in EventKind::KNOWN.iter() {
        let n = sections.iter().filter(|s| s.kind == kind.as_str()).count();
        assert_eq!(
            n, 1,
            "kind `{kind}` must have exactly one \"### `{kind}`\" section in {DOC_PATH}, found {n}"
        );
    }
}
