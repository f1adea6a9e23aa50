//! `dualbus schema [NAME]`: the JSON Schema of a payload, the list of every contract, or every
//! schema written to a directory (`docs/schemas/` holds them).

use anyhow::{bail, Context};
use clap::Args;
use dualbus_model::catalog::{self, CONTRACTS};
use std::path::PathBuf;

/// Arguments of `dualbus schema`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Every payload that crosses a bus has a JSON Schema (draft 2020-12) generated from its Rust
type in the dualbus-model crate; docs/schemas/ holds them, one file per name.

Names are the kind (`risk_alert`), or kind.type where a kind carries several payloads
(`market_data.trade`, `market_data.quote`, `analytics_result.backtest`, `hub_request.history`).
A kind alone with several payloads lists them.

Examples:
  dualbus schema --list
  dualbus schema risk_alert
  dualbus schema market_data.quote > quote.json
  dualbus schema --write docs/schemas")]
pub struct SchemaArgs {
    /// The payload's name (`dualbus schema --list` shows them all).
    name: Option<String>,
    /// List every payload: name, kind, topic, publisher and consumers.
    #[arg(long, conflicts_with_all = ["name", "write"])]
    list: bool,
    /// Write every schema to DIR as NAME.json (and the index README.md).
    #[arg(long, value_name = "DIR", conflicts_with = "name")]
    write: Option<PathBuf>,
}

/// Runs `dualbus schema`.
pub fn run(args: SchemaArgs) -> anyhow::Result<()> {
    if args.list {
        print!("{}", list());
        return Ok(());
    }
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for c in CONTRACTS {
            let path = dir.join(format!("{}.json", c.name));
            std::fs::write(&path, c.schema_json())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let index = dir.join("README.md");
        std::fs::write(&index, index_markdown())
            .with_context(|| format!("cannot write {}", index.display()))?;
        eprintln!(
            "wrote {} schemas and README.md to {}",
            CONTRACTS.len(),
            dir.display()
        );
        return Ok(());
    }
    let Some(name) = args.name else {
        bail!("give a payload name (dualbus schema risk_alert), --list or --write DIR");
    };
    match catalog::find(&name).as_slice() {
        [] => bail!(
            "no payload named {name:?}; known names: {}",
            CONTRACTS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        [one] => {
            print!("{}", one.schema_json());
            Ok(())
        }
        several => bail!(
            "{name:?} carries several payloads; name one: {}",
            several
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The contracts as an aligned table.
fn list() -> String {
    let head = ["NAME", "ROLE", "TOPIC", "PUBLISHER", "CONSUMERS"];
    let rows: Vec<[&str; 5]> = CONTRACTS
        .iter()
        .map(|c| [c.name, c.role.as_str(), c.topic, c.publisher, c.consumers])
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `docs/schemas/README.md`: what each schema is, generated with the schemas.
pub fn index_markdown() -> String {
    let mut out = String::from(
        "# Payload schemas\n\n\
         One JSON Schema (draft 2020-12) per payload that crosses a bus, generated from the Rust \
         types of the `dualbus-model` crate by `dualbus schema --write docs/schemas` (a test \
         fails when a file differs from its type). `dualbus schema NAME` prints one; \
         [the wire format](../wire-format.md) describes the envelope around them.\n\n\
         | Schema | Role | Topic | Publisher | Consumers | Rust type |\n\
         |---|---|---|---|---|---|\n",
    );
    for c in CONTRACTS {
        out.push_str(&format!(
            "| [`{name}`]({name}.json) | {role} | `{topic}` | {publisher} | {consumers} | `{ty}` |\n",
            name = c.name,
            role = c.role.as_str(),
            topic = c.topic,
            publisher = c.publisher,
            consumers = c.consumers,
            ty = c.type_name,
        ));
    }
    out
}
