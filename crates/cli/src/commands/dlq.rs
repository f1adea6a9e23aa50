//! `dualbus dlq list|show|replay`: the dead letters of the Redis buses, looked at and put back
//! on the streams they came from.
//!
//! A dead letter is an entry of a bus's dead-letter stream, `{prefix}:{bus}:dead`
//! (docs/wire-format.md, "Dead letters"): the original entry's fields plus `dead_reason`,
//! `dead_stream`, `dead_group`, `dead_entry` and `dead_deliveries`. Each bus's dead letters are
//! on that bus's servers (a reader of the failover mirror dead-letters on the server it reads,
//! so `dualbus:logic:dead` can hold letters from `dualbus:md:...` streams).
//!
//! Replaying appends the original fields to the original stream, on the servers of the bus that
//! stream belongs to, trimmed as the transport's publishers trim (`MAXLEN ~ maxlen` of that bus),
//! byte for byte as they were (no re-encoding, unknown fields kept). It does not go through the
//! publishers' admission: the groups' queue bounds are not waited for.

use super::{inspect, runtime, unreachable, Global};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dualbus_bus::{BusId, Config, Router};
use dualbus_core::Envelope;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Arguments of `dualbus dlq`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
A message goes to its bus's dead-letter stream ({prefix}:{bus}:dead) when a consumer group gave \
up on it: its handler failed max_deliveries times (delivery.max_deliveries, 5 by default), or \
the entry does not parse as a message (each group that reads it dead-letters its own copy). \
`dualbus stats` counts them per stream and group; these verbs show and replay them.

Examples:
  dualbus dlq list
  dualbus dlq list --bus logic --group risk --json
  dualbus dlq show 1717171200123-0
  dualbus dlq replay --all --group risk --dry-run
  dualbus dlq replay 1717171200123-0 1717171200124-0 --delete

Run as the operator's Redis user (`admin`), like `stats` and `tail`: credentials and TLS come \
from the same places (see `dualbus redis --help`).")]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// One line per dead letter: bus, dead-letter id, original stream, group, original entry,
    /// deliveries, the message's kind when it parses, and why.
    List(ListArgs),
    /// One dead letter whole: why, where it came from, its fields and the message decoded.
    Show(ShowArgs),
    /// Put dead letters back on the streams they came from, to be delivered again (read
    /// `dualbus dlq replay --help` first: every group of the stream gets them).
    Replay(ReplayArgs),
}

/// The dead letters to look at: `--bus`, `--stream`, `--group`.
#[derive(Args, Debug)]
struct Filter {
    /// Only the dead letters of this bus (`md` or `logic`), the entries of its dead-letter
    /// stream `{prefix}:{bus}:dead`. Default: both buses.
    #[arg(long, value_parser = parse_bus, value_name = "BUS")]
    bus: Option<BusId>,
    /// Only dead letters from this original stream (as `list` prints it, e.g.
    /// `dualbus:logic:strategy_signal`).
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// Only dead letters this consumer group gave up on.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
}

/// Arguments of `dualbus dlq list`.
#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    filter: Filter,
    /// At most this many dead letters, the oldest first.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// One JSON object per dead letter, with the whole reason, instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dualbus dlq show`.
#[derive(Args, Debug)]
struct ShowArgs {
    /// The dead letter's id, as `dualbus dlq list` prints it (e.g. `1717171200123-0`).
    id: String,
    /// Look on this bus only (`md` or `logic`): needed when both buses hold the id.
    #[arg(long, value_parser = parse_bus, value_name = "BUS")]
    bus: Option<BusId>,
    /// One JSON object: the dead letter's fields and the decoded message.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dualbus dlq replay`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
What a replay does:
  Each dead letter's original fields (without the dead_* fields) are appended to its original \
stream (dead_stream) on the servers of that stream's bus, with the bus's MAXLEN trimming, as a \
new entry. Dead letters of one original entry (several groups gave up on it) go back as one \
entry. With --delete each is then deleted from its dead-letter stream: in the same Lua script \
as the append when both keys are on one server (the delete runs only if the append succeeded), \
else right after the append succeeded.

Who gets a replayed message:
  The message goes to the stream, not to a group, so EVERY consumer group of that stream gets it \
again, not only the group that gave up (the replay prints the stream's groups). Consumers drop \
duplicates by (src, inst, seq), which a replay keeps, in memory, per process:
  * the group that gave up handles it again: a failed message is never remembered as seen;
  * a group that had handled it drops it as a duplicate (acknowledged, not handled; counted in \
dualbus_duplicates_total) as long as the process that handled it runs, and handles it a second \
time if that process was restarted since;
  * a group made since the message first came handles it.
  So make sure the other groups' handlers tolerate a message twice, or replay when only the \
group that gave up reads the stream.

Entries that do not parse:
  A dead letter whose fields do not parse as a message (a missing or bad field, a payload over \
max_payload_bytes) is skipped and counted as skipped with the reason. --raw replays it as it is: \
every group that reads it then dead-letters its own copy again, unless what refused it changed \
(e.g. a larger max_payload_bytes).

Examples:
  dualbus dlq replay --all --group risk --dry-run     # what would go back, nothing changed
  dualbus dlq replay --all --group risk --delete      # back to their streams, off the dead-letter stream
  dualbus dlq replay 1717171200123-0 --raw            # an entry that did not parse, as it is")]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
struct ReplayArgs {
    /// Dead-letter ids, as `dualbus dlq list` prints them (e.g. `1717171200123-0`).
    #[arg(value_name = "ID", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter (of `--bus`, `--stream` and `--group` when given), the oldest first.
    #[arg(long)]
    all: bool,
    /// With --all: only dead letters from this original stream.
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// With --all: only dead letters this group gave up on (the replay still reaches every
    /// group of the stream).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Only the dead letters of this bus (`md` or `logic`). Default: both buses.
    #[arg(long, value_parser = parse_bus, value_name = "BUS")]
    bus: Option<BusId>,
    /// Delete each replayed dead letter from its dead-letter stream, once its copy is on the
    /// original stream (never one that was skipped or whose append failed).
    #[arg(long)]
    delete: bool,
    /// Print what would be replayed (and deleted); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also replay dead letters whose fields do not parse as a message, as they are (they are
    /// skipped otherwise).
    #[arg(long)]
    raw: bool,
}

fn parse_bus(s: &str) -> Result<BusId, String> {
    BusId::parse(s).ok_or_else(|| {
        format!("unknown bus {s:?}: the buses are md (MarketData) and logic (Engine Logic)")
    })
}

/// Runs `dualbus dlq`.
pub fn run(args: DlqArgs, global: &Global) -> anyhow::Result<()> {
    let cfg = global.redis_config()?;
    let router = Router::new(&cfg);
    runtime(1)?.block_on(async {
        let mut servers = Servers::new(&cfg);
        match args.command {
            DlqCommand::List(a) => list(a, &router, &mut servers).await,
            DlqCommand::Show(a) => show(a, &router, &mut servers).await,
            DlqCommand::Replay(a) => replay(a, &router, &mut servers).await,
        }
    })
}

/// One server of a bus.
struct Node {
    /// Its address, password redacted, for messages.
    shown: String,
    conn: MultiplexedConnection,
}

/// The servers of a bus: one, or the masters of a Redis Cluster.
struct BusNodes {
    nodes: Vec<Node>,
    /// A Redis Cluster (`redis+cluster://`): keys of different hash slots never share a
    /// script or a transaction, even on one master.
    cluster: bool,
    /// Which node serves a key, once asked (a cluster's).
    owners: HashMap<String, usize>,
}

/// Connections to the buses, made when first needed (a verb about one bus does not fail
/// because the other one is down).
struct Servers<'a> {
    cfg: &'a Config,
    buses: [Option<BusNodes>; 2],
}

impl<'a> Servers<'a> {
    fn new(cfg: &'a Config) -> Servers<'a> {
        Servers {
            cfg,
            buses: [None, None],
        }
    }

    /// The servers of `bus`, connected.
    ///
    /// # Errors
    /// A server that does not answer ([`unreachable`]) or refuses the credentials.
    async fn bus(&mut self, bus: BusId) -> anyhow::Result<&mut BusNodes> {
        let slot = &mut self.buses[bus.index()];
        if slot.is_none() {
            let timeout = Duration::from_millis(self.cfg.bus(bus).connect_timeout_ms);
            let nodes = inspect::connect_nodes_named(self.cfg, bus, timeout)
                .await
                .map_err(unreachable)?
                .into_iter()
                .map(|(shown, conn)| Node { shown, conn })
                .collect();
            *slot = Some(BusNodes {
                nodes,
                cluster: dualbus_redis::is_cluster_url(&self.cfg.bus(bus).url),
                owners: HashMap::new(),
            });
        }
        slot.as_mut().context("the bus was just connected")
    }

    /// The index of the node of `bus` that serves `key`: the only one, or on a cluster the
    /// master that answers for the key's slot (asked with `TYPE`, which the others answer with
    /// `MOVED`).
    async fn owner(&mut self, bus: BusId, key: &str) -> anyhow::Result<usize> {
        let b = self.bus(bus).await?;
        if b.nodes.len() == 1 {
            return Ok(0);
        }
        if let Some(&i) = b.owners.get(key) {
            return Ok(i);
        }
        for (i, node) in b.nodes.iter_mut().enumerate() {
            match redis::cmd("TYPE")
                .arg(key)
                .query_async::<Value>(&mut node.conn)
                .await
            {
                Ok(_) => {
                    b.owners.insert(key.to_string(), i);
                    return Ok(i);
                }
                Err(e) if e.code() == Some("MOVED") => continue,
                Err(e) => return Err(redis_error(e, &node.shown)),
            }
        }
        bail!(
            "no server of the {} bus serves {key} (each answered MOVED): is the cluster \
             changing? try again",
            bus.as_str()
        )
    }
}

/// A Redis error from `shown`: a lost connection is [`unreachable`].
fn redis_error(e: redis::RedisError, shown: &str) -> anyhow::Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        unreachable(anyhow::Error::new(e).context(format!("the server at {shown}")))
    } else {
        anyhow::Error::new(e).context(format!("the server at {shown}"))
    }
}

use inspect::Fields;

/// One dead letter.
struct Letter {
    /// The bus whose dead-letter stream holds it.
    bus: BusId,
    /// The node of that bus that holds it.
    node: usize,
    /// Its id in the dead-letter stream.
    id: String,
    /// Every field, in order.
    fields: Fields,
}

impl Letter {
    /// A field's value (the last one when a name appears twice, as the wire format reads).
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// A field as text, empty when absent.
    fn text(&self, name: &str) -> String {
        self.field(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    fn stream(&self) -> String {
        self.text("dead_stream")
    }

    fn group(&self) -> String {
        self.text("dead_group")
    }

    fn deliveries(&self) -> Option<u64> {
        self.text("dead_deliveries").parse().ok()
    }

    /// The original entry's fields: all but the `dead_*` ones.
    fn original(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .filter(|(k, _)| !k.starts_with(b"dead_"))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The original fields as a message, with the payload limit of the original stream's bus.
    fn envelope(&self, cfg: &Config, router: &Router) -> Result<Envelope, String> {
        let bus = router.bus_of_stream(&self.stream()).unwrap_or(self.bus);
        let limit = cfg.bus(bus).max_payload_bytes as usize;
        Envelope::from_wire_fields(self.original(), limit).map_err(|e| e.to_string())
    }
}

/// The buses `--bus` selects.
fn buses(bus: Option<BusId>) -> Vec<BusId> {
    bus.map_or_else(|| BusId::ALL.to_vec(), |b| vec![b])
}

/// Every dead letter of `bus`, the oldest first, read from each of its servers (on a cluster
/// the master of the dead-letter stream's slot holds them; the others answer `MOVED`).
async fn read_bus(
    servers: &mut Servers<'_>,
    router: &Router,
    bus: BusId,
) -> anyhow::Result<Vec<Letter>> {
    let key = router.dead_stream(bus);
    let mut out = Vec::new();
    for (i, node) in servers.bus(bus).await?.nodes.iter_mut().enumerate() {
        let page = inspect::all_entries(&mut node.conn, &key)
            .await
            .map_err(|e| redis_error(e, &node.shown).context(format!("reading {key}")))?;
        out.extend(page.into_iter().map(|(id, fields)| Letter {
            bus,
            node: i,
            id,
            fields,
        }));
    }
    Ok(out)
}

/// The dead letters of `bus` (both buses when `None`), only those from `stream` and of `group`
/// when given.
async fn read_filtered(
    servers: &mut Servers<'_>,
    router: &Router,
    bus: Option<BusId>,
    stream: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<Vec<Letter>> {
    let mut out = Vec::new();
    for b in buses(bus) {
        out.extend(
            read_bus(servers, router, b)
                .await?
                .into_iter()
                .filter(|l| stream.is_none_or(|s| l.stream() == s))
                .filter(|l| group.is_none_or(|g| l.group() == g)),
        );
    }
    Ok(out)
}

/// Whether `id` is a whole stream entry id (`1717171200123-0`).
fn check_id(id: &str) -> anyhow::Result<()> {
    let whole = id
        .split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
        && id.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    if !whole {
        bail!(
            "{id:?} is not a dead-letter id: they look like 1717171200123-0 (`dualbus dlq list` \
             prints them)"
        );
    }
    Ok(())
}

/// The dead letter `id` of the selected buses.
///
/// # Errors
/// A malformed id, an id on no bus or on both (each naming the id).
async fn find(
    servers: &mut Servers<'_>,
    router: &Router,
    bus: Option<BusId>,
    id: &str,
) -> anyhow::Result<Letter> {
    check_id(id)?;
    let mut found = Vec::new();
    let mut keys = Vec::new();
    for b in buses(bus) {
        let key = router.dead_stream(b);
        keys.push(key.to_string());
        for (i, node) in servers.bus(b).await?.nodes.iter_mut().enumerate() {
            let v: Value = match redis::cmd("XRANGE")
                .arg(&*key)
                .arg(id)
                .arg(id)
                .query_async(&mut node.conn)
                .await
            {
                Ok(v) => v,
                Err(e) if e.code() == Some("MOVED") => continue,
                Err(e) => return Err(redis_error(e, &node.shown).context(format!("reading {key}"))),
            };
            found.extend(inspect::entries(&v).into_iter().map(|(id, fields)| Letter {
                bus: b,
                node: i,
                id,
                fields,
            }));
        }
    }
    match found.len() {
        0 => bail!(
            "no dead letter {id} in {} (`dualbus dlq list` shows the ids there are)",
            keys.join(" or ")
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "dead letter {id} is in both {}: give --bus md or --bus logic",
            keys.join(" and ")
        ),
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The reason on one line (a handler's error may hold newlines).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Widest reason the table prints; `--json` and `show` give it whole.
const REASON_WIDTH: usize = 80;

async fn list(args: ListArgs, router: &Router, servers: &mut Servers<'_>) -> anyhow::Result<()> {
    let f = &args.filter;
    let letters = read_filtered(
        servers,
        router,
        f.bus,
        f.stream.as_deref(),
        f.group.as_deref(),
    )
    .await?;
    let total = letters.len();
    let shown = &letters[..args.count.unwrap_or(total).min(total)];
    let cfg = servers.cfg;
    if args.json {
        for l in shown {
            let env = l.envelope(cfg, router);
            let v = json!({
                "bus": l.bus.as_str(),
                "id": l.id,
                "stream": l.stream(),
                "group": l.group(),
                "entry": l.text("dead_entry"),
                "deliveries": l.deliveries(),
                "reason": l.text("dead_reason"),
                "kind": env.as_ref().ok().map(|e| e.kind.as_str().to_string()),
                "topic": env.as_ref().ok().map(|e| e.topic.as_str().to_string()),
                "message": env.as_ref().ok().map(|e| e.id()),
                "parse_error": env.as_ref().err(),
            });
            println!("{v}");
        }
        return Ok(());
    }
    let mut rows = vec![[
        "bus".to_string(),
        "id".into(),
        "stream".into(),
        "group".into(),
        "entry".into(),
        "deliveries".into(),
        "kind".into(),
        "reason".into(),
    ]];
    for l in shown {
        let kind = match l.envelope(cfg, router) {
            Ok(e) => e.kind.as_str().to_string(),
            Err(_) => "(unparsable)".into(),
        };
        rows.push([
            l.bus.as_str().to_string(),
            l.id.clone(),
            l.stream(),
            l.group(),
            l.text("dead_entry"),
            l.text("dead_deliveries"),
            kind,
            cut(&one_line(&l.text("dead_reason")), REASON_WIDTH),
        ]);
    }
    let which = match (&f.stream, &f.group) {
        (None, None) => String::new(),
        (Some(s), None) => format!(" from {s}"),
        (None, Some(g)) => format!(" of group {g}"),
        (Some(s), Some(g)) => format!(" from {s} of group {g}"),
    };
    let keys: Vec<String> = buses(f.bus)
        .into_iter()
        .map(|b| router.dead_stream(b).to_string())
        .collect();
    if total == 0 {
        println!("no dead letters{which} in {}", keys.join(" or "));
        return Ok(());
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
    let plural = if total == 1 { "" } else { "s" };
    if shown.len() < total {
        println!(
            "({} of {total} dead letter{plural}{which} shown, the oldest; --count N shows more; \
             `dualbus dlq show ID` prints one whole)",
            shown.len()
        );
    } else {
        println!("({total} dead letter{plural}{which}; `dualbus dlq show ID` prints one whole)");
    }
    Ok(())
}

/// A field's value for people: its text, or what it is when it is not text.
fn shown_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("<{} bytes, not UTF-8 text>", v.len()),
    }
}

async fn show(args: ShowArgs, router: &Router, servers: &mut Servers<'_>) -> anyhow::Result<()> {
    let l = find(servers, router, args.bus, &args.id).await?;
    let env = l.envelope(servers.cfg, router);
    let key = router.dead_stream(l.bus);
    let node = &servers.bus(l.bus).await?.nodes[l.node].shown;
    if args.json {
        let fields: serde_json::Map<String, serde_json::Value> = l
            .fields
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    match std::str::from_utf8(v) {
                        Ok(s) => json!(s),
                        // Not text (a msgpack payload): its bytes.
                        Err(_) => json!(v),
                    },
                )
            })
            .collect();
        let v = json!({
            "bus": l.bus.as_str(),
            "id": l.id,
            "dead_letter_stream": &*key,
            "server": node,
            "stream": l.stream(),
            "group": l.group(),
            "entry": l.text("dead_entry"),
            "deliveries": l.deliveries(),
            "reason": l.text("dead_reason"),
            "fields": fields,
            "envelope": env.as_ref().ok().map(|e| e.to_json()),
            "parse_error": env.as_ref().err(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "dead letter {} of the {} bus ({key} on {node})",
        l.id,
        super::bus_name(l.bus)
    );
    for (label, field) in [
        ("reason", "dead_reason"),
        ("stream", "dead_stream"),
        ("group", "dead_group"),
        ("entry", "dead_entry"),
        ("deliveries", "dead_deliveries"),
    ] {
        let v = l.field(field).map_or("(absent)".to_string(), shown_value);
        println!("  {:<11} {v}", format!("{label}:"));
    }
    println!("original fields:");
    let width = l
        .original()
        .map(|(k, _)| String::from_utf8_lossy(k).chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in l.original() {
        println!(
            "  {:<width$}  {}",
            String::from_utf8_lossy(k),
            shown_value(v)
        );
    }
    match env {
        Ok(e) => {
            println!("message (the fields parse; payload decoded):");
            let text = serde_json::to_string_pretty(&e.to_json())?;
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Err(reason) => println!(
            "message: the fields do not parse ({reason}); `dualbus dlq replay {} --raw` puts \
             them back as they are",
            l.id
        ),
    }
    Ok(())
}

/// What happens to one dead letter in a replay.
enum Plan {
    /// Appended to `stream` of `bus`.
    Replay { bus: BusId, stream: String },
    /// Left where it is, for the reason given.
    Skip(String),
}

/// Whether `l` can go back, and where.
fn plan(l: &Letter, router: &Router, cfg: &Config, raw: bool) -> Plan {
    let stream = l.stream();
    if stream.is_empty() {
        return Plan::Skip("it names no original stream (no dead_stream field)".into());
    }
    let Some(bus) = router.bus_of_stream(&stream) else {
        return Plan::Skip(format!(
            "its original stream {stream} is not a stream of this system (prefix {:?}): not \
             written to",
            router.prefix()
        ));
    };
    if stream == *router.dead_stream(bus) {
        return Plan::Skip(format!(
            "its original stream {stream} is a dead-letter stream"
        ));
    }
    if l.original().next().is_none() {
        return Plan::Skip("it holds no original fields".into());
    }
    if let Err(e) = l.envelope(cfg, router) {
        if !raw {
            return Plan::Skip(format!(
                "its fields do not parse as a message ({e}); --raw replays it as it is"
            ));
        }
    }
    Plan::Replay { bus, stream }
}

/// The `XADD` of a replay: the original fields onto `stream`, trimmed as the transport's
/// publishers trim (`MAXLEN ~ maxlen`).
fn xadd<'a>(
    stream: &str,
    maxlen: u64,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd
}

/// Appends the fields to `KEYS[1]` (`MAXLEN ~ ARGV[1]`; `ARGV[2]` field and value arguments
/// follow) and only then deletes the ids that follow them from `KEYS[2]`.
///
/// Not `MULTI`/`EXEC`: a transaction does not stop at a command that fails when `EXEC` runs
/// it, so an `XADD` refused there (`WRONGTYPE`: the key holds something else) would still be
/// followed by the `XDEL`, and the letter would be gone without its copy. `WATCH` could guard
/// the key, but any publish to it (a busy stream takes thousands a second) would abort the
/// transaction. A script runs with no other client's command in between, like a transaction,
/// and stops at the first command that fails: the append comes first, so a letter is never
/// deleted without its copy, and once the script ran the letter is gone, so running the replay
/// again cannot append it twice.
const APPEND_THEN_DELETE: &str = r"
local n = tonumber(ARGV[2])
local add = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
for i = 3, 2 + n do add[#add + 1] = ARGV[i] end
local id = redis.call(unpack(add))
local del = {'XDEL', KEYS[2]}
for i = 3 + n, #ARGV do del[#del + 1] = ARGV[i] end
redis.call(unpack(del))
return id
";

/// The dead letters of one original entry, replayed together.
struct Batch {
    bus: BusId,
    stream: String,
    /// Indices into the selected letters; all of one dead-letter stream and node.
    letters: Vec<usize>,
}

async fn replay(
    args: ReplayArgs,
    router: &Router,
    servers: &mut Servers<'_>,
) -> anyhow::Result<()> {
    let cfg = servers.cfg;
    if !args.all && (args.stream.is_some() || args.group.is_some()) {
        bail!(
            "--stream and --group choose dead letters for --all; to replay given ids, name the \
             ids alone (`dualbus dlq list --stream S --group G` shows them)"
        );
    }
    let letters = if args.all {
        read_filtered(
            servers,
            router,
            args.bus,
            args.stream.as_deref(),
            args.group.as_deref(),
        )
        .await?
    } else {
        // Every id is looked up before anything is written: a bad one changes nothing.
        let mut out: Vec<Letter> = Vec::new();
        for id in &args.ids {
            let l = find(servers, router, args.bus, id).await?;
            if !out.iter().any(|o| o.bus == l.bus && o.id == l.id) {
                out.push(l);
            }
        }
        out
    };
    let total = letters.len();
    if total == 0 {
        let keys: Vec<String> = buses(args.bus)
            .into_iter()
            .map(|b| router.dead_stream(b).to_string())
            .collect();
        println!("no dead letters to replay in {}", keys.join(" or "));
        return Ok(());
    }
    // Letters of one original entry (several groups gave up on it, each wrote its own) go back
    // as one entry: the stream gives it to every group anyway.
    let mut batches: Vec<Batch> = Vec::new();
    let mut index: HashMap<(BusId, usize, String, String), usize> = HashMap::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    let mut raw_replays = 0usize;
    for (i, l) in letters.iter().enumerate() {
        match plan(l, router, cfg, args.raw) {
            Plan::Skip(reason) => skipped.push((i, reason)),
            Plan::Replay { bus, stream } => {
                if l.envelope(cfg, router).is_err() {
                    raw_replays += 1;
                }
                let entry = l.text("dead_entry");
                let entry = if entry.is_empty() {
                    l.id.clone()
                } else {
                    entry
                };
                let key = (l.bus, l.node, stream.clone(), entry);
                match index.get(&key) {
                    Some(&b) => batches[b].letters.push(i),
                    None => {
                        index.insert(key, batches.len());
                        batches.push(Batch {
                            bus,
                            stream,
                            letters: vec![i],
                        });
                    }
                }
            }
        }
    }
    let describe = |b: &Batch| -> String {
        let ids: Vec<&str> = b.letters.iter().map(|&i| letters[i].id.as_str()).collect();
        let groups: BTreeSet<String> = b.letters.iter().map(|&i| letters[i].group()).collect();
        let groups: Vec<String> = groups.into_iter().collect();
        format!(
            "{} ({} {})",
            ids.join(", "),
            if groups.len() == 1 { "group" } else { "groups" },
            groups.join(", ")
        )
    };
    let mut replayed = 0usize;
    let mut entries = 0usize;
    let mut failure = None;
    for b in &batches {
        let first = &letters[b.letters[0]];
        if args.dry_run {
            println!("  {} -> {} (dry run)", describe(b), b.stream);
            replayed += b.letters.len();
            entries += 1;
            continue;
        }
        match append(servers, router, b, &letters, args.delete).await {
            Ok(new_id) => {
                println!("  {} -> {} {new_id}", describe(b), b.stream);
                replayed += b.letters.len();
                entries += 1;
            }
            Err(e) => {
                failure = Some(e.context(format!(
                    "replaying dead letter {} to {}",
                    first.id, b.stream
                )));
                break;
            }
        }
    }
    for (i, reason) in &skipped {
        let l = &letters[*i];
        println!("  {} (group {}) skipped: {reason}", l.id, l.group());
    }
    // The summary.
    let streams: BTreeSet<&str> = batches.iter().map(|b| b.stream.as_str()).collect();
    let noun = if total == 1 {
        "dead letter"
    } else {
        "dead letters"
    };
    let to = match streams.len() {
        0 => String::new(),
        1 => format!(" to {}", streams.iter().next().copied().unwrap_or_default()),
        n => format!(" to {n} streams"),
    };
    let mut summary = format!(
        "{}{replayed} of {total} {noun}{to}",
        if args.dry_run {
            "dry run, nothing changed: would replay "
        } else {
            "replayed "
        }
    );
    if entries < replayed {
        summary += &format!(
            " as {entries} entr{} (dead letters of one entry from several groups go back once)",
            if entries == 1 { "y" } else { "ies" }
        );
    }
    if args.delete && replayed > 0 {
        let dead: BTreeSet<String> = batches
            .iter()
            .flat_map(|b| &b.letters)
            .map(|&i| router.dead_stream(letters[i].bus).to_string())
            .collect();
        let dead: Vec<String> = dead.into_iter().collect();
        summary += &format!(
            ", {} them from {}",
            if args.dry_run {
                "and would delete"
            } else {
                "and deleted"
            },
            dead.join(" and ")
        );
    }
    if !skipped.is_empty() {
        summary += &format!("; skipped {} (reasons above)", skipped.len());
    }
    println!("{summary}");
    if let Some(e) = failure {
        bail!(
            "{}; it and the dead letters after it were left as they are ({replayed} of {total} \
             replayed before it)",
            super::error_line(&e)
        );
    }
    // Who gets them: every group of each stream.
    for stream in &streams {
        let bus = batches
            .iter()
            .find(|b| b.stream == *stream)
            .map(|b| b.bus)
            .unwrap_or(BusId::Logic);
        let groups = stream_groups(servers, bus, stream).await;
        let gave_up: BTreeSet<String> = batches
            .iter()
            .filter(|b| b.stream == *stream)
            .flat_map(|b| &b.letters)
            .map(|&i| letters[i].group())
            .collect();
        let gave_up: Vec<String> = gave_up.into_iter().collect();
        let others: Vec<&String> = groups
            .iter()
            .flatten()
            .filter(|g| !gave_up.contains(g))
            .collect();
        println!(
            "note: {} to every group of {stream}, not only to the one that gave up ({}){}",
            if args.dry_run {
                "a replay would go"
            } else {
                "each replayed message goes"
            },
            gave_up.join(", "),
            match (&groups, others.is_empty()) {
                (None, _) => String::new(),
                (Some(_), true) => "; the stream has no other group now".to_string(),
                (Some(_), false) => format!(
                    "; its other groups now: {}",
                    others
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        );
    }
    if !streams.is_empty() {
        println!(
            "  A group that gave up handles it again (a failed message is never remembered as \
             seen). A group that had handled it drops it as a duplicate (same src, inst and \
             seq; counted in dualbus_duplicates_total) while the process that handled it runs, \
             and handles it again if that process restarted since."
        );
    }
    if raw_replays > 0 {
        println!(
            "note: {raw_replays} {} not parse as a message: every group that reads {} \
             dead-letters its own copy again, unless what refused {} has changed",
            if raw_replays == 1 {
                "replayed entry does"
            } else {
                "replayed entries do"
            },
            if raw_replays == 1 { "it" } else { "them" },
            if raw_replays == 1 { "it" } else { "them" },
        );
    }
    Ok(())
}

/// The consumer groups of `stream` (`None` when they cannot be read: the note then names none).
async fn stream_groups(servers: &mut Servers<'_>, bus: BusId, stream: &str) -> Option<Vec<String>> {
    let node = servers.owner(bus, stream).await.ok()?;
    let conn = &mut servers.bus(bus).await.ok()?.nodes[node].conn;
    let v: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok()?;
    let Value::Array(groups) = v else {
        return Some(Vec::new());
    };
    let mut names = Vec::new();
    for g in &groups {
        let pairs: Vec<(Vec<u8>, &Value)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((inspect::bytes(k), v)),
                    _ => None,
                })
                .collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (inspect::bytes(k), v)).collect(),
            _ => Vec::new(),
        };
        if let Some((_, v)) = pairs.iter().find(|(k, _)| k == b"name") {
            names.push(String::from_utf8_lossy(&inspect::bytes(v)).into_owned());
        }
    }
    names.sort();
    Some(names)
}

/// Appends one batch's original fields to its stream and, with `delete`, deletes its letters;
/// returns the new entry's id.
async fn append(
    servers: &mut Servers<'_>,
    router: &Router,
    b: &Batch,
    letters: &[Letter],
    delete: bool,
) -> anyhow::Result<String> {
    let first = &letters[b.letters[0]];
    let maxlen = servers.cfg.bus(b.bus).maxlen;
    let dead_key = router.dead_stream(first.bus);
    let ids: Vec<&str> = b.letters.iter().map(|&i| letters[i].id.as_str()).collect();
    let target = servers.owner(b.bus, &b.stream).await?;
    let one_server = b.bus == first.bus && !servers.bus(b.bus).await?.cluster;
    if delete && one_server {
        let node = &mut servers.bus(b.bus).await?.nodes[target];
        let fields: Vec<(&[u8], &[u8])> = first.original().collect();
        let script = redis::Script::new(APPEND_THEN_DELETE);
        let mut inv = script.prepare_invoke();
        inv.key(&b.stream)
            .key(&*dead_key)
            .arg(maxlen)
            .arg(fields.len() * 2);
        for (k, v) in &fields {
            inv.arg(*k).arg(*v);
        }
        for id in &ids {
            inv.arg(*id);
        }
        let id: String = inv
            .invoke_async(&mut node.conn)
            .await
            .map_err(|e| redis_error(e, &node.shown))?;
        return Ok(id);
    }
    // Two servers (the original stream on the other bus's: a letter of a failover mirror), or
    // a Redis Cluster, where the two keys are in different hash slots and no script or
    // transaction may span slots: append, and delete only once the append succeeded.
    let node = &mut servers.bus(b.bus).await?.nodes[target];
    let id: String = xadd(&b.stream, maxlen, first.original())
        .query_async(&mut node.conn)
        .await
        .map_err(|e| redis_error(e, &node.shown))?;
    if delete {
        let node = &mut servers.bus(first.bus).await?.nodes[first.node];
        redis::cmd("XDEL")
            .arg(&*dead_key)
            .arg(&ids)
            .query_async::<u64>(&mut node.conn)
            .await
            .map_err(|e| redis_error(e, &node.shown))
            .with_context(|| {
                format!(
                    "{} went back to {} as {id}, but deleting {} from {dead_key} failed",
                    ids.join(", "),
                    b.stream,
                    if ids.len() == 1 { "it" } else { "them" }
                )
            })?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_trimmed_as_the_transport_trims() {
        let fields: Vec<(&[u8], &[u8])> = vec![(b"v", b"1"), (b"payload", b"{}")];
        let cmd = xadd("dualbus:logic:x", 1000, fields.into_iter());
        let mut expected = redis::cmd("XADD");
        expected
            .arg("dualbus:logic:x")
            .arg("MAXLEN")
            .arg("~")
            .arg(1000u64)
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("payload")
            .arg("{}");
        assert_eq!(cmd.get_packed_command(), expected.get_packed_command());
    }

    #[test]
    fn ids_must_be_whole_entry_ids() {
        assert!(check_id("1717171200123-0").is_ok());
        for bad in [
            "1717171200123",
            "abc",
            "1-",
            "-1",
            "1-2-3",
            "+",
            "99999999999999999999-0",
        ] {
            let e = check_id(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn the_original_fields_leave_out_the_dead_letter_fields() {
        let l = Letter {
            bus: BusId::Logic,
            node: 0,
            id: "1-0".into(),
            fields: vec![
                (b"v".to_vec(), b"1".to_vec()),
                (b"dead_reason".to_vec(), b"boom".to_vec()),
                (b"payload".to_vec(), b"{}".to_vec()),
                (b"dead_stream".to_vec(), b"dualbus:logic:x".to_vec()),
            ],
        };
        let names: Vec<&[u8]> = l.original().map(|(k, _)| k).collect();
        assert_eq!(names, vec![&b"v"[..], &b"payload"[..]]);
        assert_eq!(l.stream(), "dualbus:logic:x");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(one_line("a\n  b"), "a b");
    }
}
