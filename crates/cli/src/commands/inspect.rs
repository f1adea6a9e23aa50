//! Reading the state of a running Redis bus: streams, groups, memory, dead letters. Shared by
//! `redis status` and `stats`.

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One consumer group of a stream.
#[derive(Debug, Clone, Default)]
pub struct GroupRow {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    pub lag: Option<u64>,
    /// What Redis counts as read: delivered, plus what a trim removed unread (the consumers
    /// fold each counted loss in, see `trimmed`).
    pub entries_read: Option<u64>,
    /// Entries trimmed from the stream before the group read them (`{stream}#trimmed`).
    pub trimmed: u64,
}

impl GroupRow {
    /// Entries delivered to the group: what it read, without what was trimmed unread.
    pub fn delivered(&self) -> Option<u64> {
        self.entries_read.map(|r| r.saturating_sub(self.trimmed))
    }
}

/// One stream.
#[derive(Debug, Clone, Default)]
pub struct StreamRow {
    pub key: String,
    pub length: u64,
    pub entries_added: u64,
    pub groups: Vec<GroupRow>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Okay => "OK".into(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => String::new(),
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => Some((*i).max(0) as u64),
        Value::BulkString(_) | Value::SimpleString(_) => text(v).parse().ok(),
        _ => None,
    }
}

fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((text(k), v)),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}

fn list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        _ => Vec::new(),
    }
}

/// Connects to one bus, failing within `timeout` with the bus and address named.
pub async fn connect(
    cfg: &dualbus_bus::Config,
    bus: dualbus_bus::BusId,
    timeout: Duration,
) -> anyhow::Result<MultiplexedConnection> {
    let url = &cfg.bus(bus).url;
    // The bus as people read it, for the messages below.
    let bus = super::bus_name(bus);
    let shown = dualbus_core::redact_url(url);
    let client = super::redis_client(cfg, url)
        .with_context(|| format!("the {bus} bus URL {shown:?} is invalid"))?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach the {bus} bus at {shown} within {timeout:?}"))?
    .map_err(|e| refused_or(e, bus, &shown))?;
    let mut conn = conn;
    // A server with users answers the first command, not the connection, with NOAUTH.
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| refused_or(e, bus, &shown))?;
    Ok(conn)
}

/// Connections to every server of a bus: the one server, or each master of a Redis Cluster
/// (`redis+cluster://`), where each holds the streams of its hash slots. See
/// [`connect_nodes_named`] for their addresses.
///
/// # Errors
/// As [`connect`], for the first server that cannot be reached.
pub async fn connect_nodes(
    cfg: &dualbus_bus::Config,
    bus: dualbus_bus::BusId,
    timeout: Duration,
) -> anyhow::Result<Vec<MultiplexedConnection>> {
    Ok(connect_nodes_named(cfg, bus, timeout)
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// [`connect_nodes`], each connection with its server's address (redacted URL).
///
/// # Errors
/// As [`connect`], for the first server that cannot be reached.
pub async fn connect_nodes_named(
    cfg: &dualbus_bus::Config,
    bus: dualbus_bus::BusId,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, MultiplexedConnection)>> {
    let url = &cfg.bus(bus).url;
    if !dualbus_redis::is_cluster_url(url) {
        return Ok(vec![(
            dualbus_core::redact_url(url),
            connect(cfg, bus, timeout).await?,
        )]);
    }
    let masters = dualbus_redis::cluster::master_urls(dualbus_bus::redis_options(cfg, bus)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for m in masters {
        let mut one = cfg.clone();
        let shown = dualbus_core::redact_url(&m);
        match bus {
            dualbus_bus::BusId::MarketData => one.md.url = m,
            dualbus_bus::BusId::Logic => one.logic.url = m,
        }
        out.push((shown, connect(&one, bus, timeout).await?));
    }
    Ok(out)
}

/// `e`, from reaching the bus at `shown`, as the verbs print it; a refusal of the
/// credentials says where they come from.
fn refused_or(e: redis::RedisError, bus: &str, shown: &str) -> anyhow::Error {
    if dualbus_redis::is_auth_error(&e) {
        anyhow::anyhow!(
            "the {bus} bus at {shown} refused the credentials: {e}; {}",
            super::AUTH_HINT
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot reach the {bus} bus at {shown}"))
    }
}

/// Every stream whose key starts with `{prefix}:`, with its groups.
pub async fn streams(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<Vec<StreamRow>> {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let v: Value = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await?;
        let parts = list(&v);
        cursor = parts.first().map(|c| text(c)).unwrap_or_else(|| "0".into());
        if let Some(found) = parts.get(1) {
            keys.extend(list(found).into_iter().map(text));
        }
        if cursor == "0" {
            break;
        }
    }
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let info: Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(conn)
            .await?;
        let mut row = StreamRow {
            key: key.clone(),
            ..Default::default()
        };
        for (k, v) in pairs(&info) {
            match k.as_str() {
                "length" => row.length = int(v).unwrap_or(0),
                "entries-added" => row.entries_added = int(v).unwrap_or(0),
                _ => {}
            }
        }
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(conn)
            .await?;
        for g in list(&groups) {
            let mut gr = GroupRow::default();
            for (k, v) in pairs(g) {
                match k.as_str() {
                    "name" => gr.name = text(v),
                    "consumers" => gr.consumers = int(v).unwrap_or(0),
                    "pending" => gr.pending = int(v).unwrap_or(0),
                    "lag" => gr.lag = int(v),
                    "entries-read" => gr.entries_read = int(v),
                    _ => {}
                }
            }
            row.groups.push(gr);
        }
        if !row.groups.is_empty() {
            let trimmed: BTreeMap<String, u64> = redis::cmd("HGETALL")
                .arg(dualbus_redis::trimmed_key(&key))
                .query_async(conn)
                .await?;
            for g in &mut row.groups {
                g.trimmed = trimmed.get(&g.name).copied().unwrap_or(0);
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// `INFO` fields of interest: used memory, eviction policy, persistence.
pub async fn server_info(
    conn: &mut MultiplexedConnection,
) -> anyhow::Result<BTreeMap<String, String>> {
    let info: String = redis::cmd("INFO").query_async(conn).await?;
    let wanted = [
        "redis_version",
        "used_memory_human",
        "maxmemory_human",
        "maxmemory",
        "maxmemory_policy",
        "aof_enabled",
        "rdb_last_save_time",
        "process_id",
    ];
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| wanted.contains(k))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// A stream entry's fields, in order, as bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A reply value as bytes (a string, or an integer written out).
pub fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::VerbatimString { text, .. } => text.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// The entries of an `XRANGE` reply: id and fields (RESP2 arrays or RESP3 maps).
pub fn entries(v: &Value) -> Vec<(String, Fields)> {
    list(v)
        .into_iter()
        .filter_map(|e| {
            let parts = list(e);
            let id = String::from_utf8_lossy(&bytes(parts.first()?)).into_owned();
            let fields = match parts.get(1)? {
                Value::Map(m) => m.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
                kv => list(kv)
                    .chunks(2)
                    .filter_map(|c| match c {
                        [k, v] => Some((bytes(k), bytes(v))),
                        _ => None,
                    })
                    .collect(),
            };
            Some((id, fields))
        })
        .collect()
}

/// Every entry of `key` on this server, the oldest first, read 1000 at a time; nothing from a
/// cluster master that does not hold the key (it answers `MOVED`: another one does).
pub async fn all_entries(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<Vec<(String, Fields)>, redis::RedisError> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let v: Value = match redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some("MOVED") => return Ok(out),
            Err(e) => return Err(e),
        };
        let page = entries(&v);
        let n = page.len();
        if let Some((last, _)) = page.last() {
            start = format!("({last}");
        }
        out.extend(page);
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// Dead letters per (original stream, group), from the bus's dead-letter stream.
pub async fn dead_counts(
    conn: &mut MultiplexedConnection,
    dead_key: &str,
) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let mut out = BTreeMap::new();
    for (_, fields) in all_entries(conn, dead_key).await? {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        *out.entry((get("dead_stream"), get("dead_group")))
            .or_insert(0) += 1;
    }
    Ok(out)
}

/// Whether something answers a plain `PING` on `host:port` (an error such as `NOAUTH` counts).
pub fn ping(host: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    // A server that requires a password answers -NOAUTH: it is up, but not ours to manage.
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}
