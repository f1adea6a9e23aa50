//! Parsing of Redis replies into plain structures (RESP2 arrays and RESP3 maps alike).

use bytes::Bytes;
use dualbus_core::EntryId;
use redis::Value;

/// One stream entry: its id and its fields; `deleted` for an entry that was deleted while
/// pending. The byte strings may be slices of one reply's buffer (see `resp`), so building an
/// entry allocates once per entry, not once per field.
pub(crate) struct Entry {
    pub id: EntryId,
    pub raw_id: Bytes,
    pub fields: Vec<(Bytes, Bytes)>,
    pub deleted: bool,
}

pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Parses `ms-seq`.
pub(crate) fn parse_id(raw: &[u8]) -> Option<EntryId> {
    let s = std::str::from_utf8(raw).ok()?;
    let (ms, seq) = s.split_once('-')?;
    Some(EntryId {
        ms: ms.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The bytes of a string reply, moved out of it (no copy for bulk strings).
fn into_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        other => bytes(&other).map(Bytes::from),
    }
}

/// The items of an array, set or map reply, moved out of it.
fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Parses a list of entries (`XRANGE`, `XCLAIM`, one stream of `XREADGROUP`).
/// Takes the reply by value: the field buffers move into the entries instead of being copied
/// (on the read path, every field of every entry; a profile of `dualbus run --backend redis`
/// showed reply handling as half of each engine's CPU).
pub(crate) fn entries(v: Value) -> Result<Vec<Entry>, String> {
    let list = into_items(v);
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let mut parts = into_items(e).into_iter();
        let raw_id = parts
            .next()
            .and_then(into_bytes)
            .ok_or_else(|| "an entry without an id".to_string())?;
        let id = parse_id(&raw_id).ok_or_else(|| format!("bad entry id {raw_id:?}"))?;
        let (fields, deleted) = match parts.next() {
            None | Some(Value::Nil) => (Vec::new(), true),
            Some(f) => {
                let flat = into_items(f);
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    fields.push((
                        into_bytes(k).unwrap_or_default(),
                        into_bytes(v).unwrap_or_default(),
                    ));
                }
                (fields, false)
            }
        };
        out.push(Entry {
            id,
            raw_id,
            fields,
            deleted,
        });
    }
    Ok(out)
}

/// The entries an `XREADGROUP` returned for one stream key.
pub(crate) type StreamEntries = (Bytes, Vec<Entry>);

/// Parses an `XREADGROUP` reply into (stream key, entries) pairs; `Nil` (timeout) is empty.
pub(crate) fn read_reply(v: Value) -> Result<Vec<StreamEntries>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Ok((into_bytes(k).unwrap_or_default(), entries(v)?)))
            .collect(),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| {
                let mut parts = into_items(s).into_iter();
                let key = parts.next().and_then(into_bytes).unwrap_or_default();
                let list = parts.next().map(entries).transpose()?.unwrap_or_default();
                Ok((key, list))
            })
            .collect(),
        other => Err(format!("unexpected XREADGROUP reply {other:?}")),
    }
}

/// One group of `XINFO GROUPS`.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupInfo {
    pub name: String,
    pub pending: u64,
    pub lag: Option<u64>,
    pub entries_read: Option<u64>,
    pub last_delivered: Vec<u8>,
}

/// Parses `XINFO GROUPS`.
pub(crate) fn groups(v: &Value) -> Vec<GroupInfo> {
    items(v)
        .into_iter()
        .map(|g| {
            let flat = items(g);
            let mut info = GroupInfo::default();
            for pair in flat.chunks(2) {
                if let [k, v] = pair {
                    match bytes(k).as_deref() {
                        Some(b"name") => {
                            info.name =
                                String::from_utf8_lossy(&bytes(v).unwrap_or_default()).into_owned()
                        }
                        Some(b"pending") => info.pending = int(v).unwrap_or(0).max(0) as u64,
                        Some(b"lag") => info.lag = int(v).map(|l| l.max(0) as u64),
                        Some(b"entries-read") => {
                            info.entries_read = int(v).map(|l| l.max(0) as u64)
                        }
                        Some(b"last-delivered-id") => {
                            info.last_delivered = bytes(v).unwrap_or_default()
                        }
                        _ => {}
                    }
                }
            }
            info
        })
        .collect()
}

/// `XINFO GROUPS` of a stream; a stream that does not exist yet has no groups.
pub(crate) async fn xinfo_groups(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> redis::RedisResult<Vec<GroupInfo>> {
    match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async::<Value>(conn)
        .await
    {
        Ok(v) => Ok(groups(&v)),
        Err(e) if e.to_string().contains("no such key") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Entries of `stream` after the id `after` (exclusive), counting at most `cap` (for a group
/// whose lag Redis cannot tell).
pub(crate) async fn count_after(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    after: &[u8],
    cap: u64,
) -> redis::RedisResult<u64> {
    let mut start = b"(".to_vec();
    start.extend_from_slice(if after.is_empty() { b"0-0" } else { after });
    let v: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(&start[..])
        .arg("+")
        .arg("COUNT")
        // Redis refuses a COUNT beyond a signed 64-bit integer ("no limit" callers pass more).
        .arg(cap.min(i64::MAX as u64))
        .query_async(conn)
        .await?;
    Ok(entries(v).map(|e| e.len() as u64).unwrap_or(0))
}

/// One row of extended `XPENDING`.
pub(crate) struct PendingRow {
    pub id: EntryId,
    pub raw_id: Vec<u8>,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// Times it was delivered.
    pub deliveries: u64,
}

/// The rows of extended `XPENDING` (id, consumer, idle ms, deliveries).
pub(crate) fn pending_rows(v: &Value) -> Vec<PendingRow> {
    items(v)
        .into_iter()
        .filter_map(|row| {
            let r = items(row);
            let raw_id = bytes(r.first()?)?;
            Some(PendingRow {
                id: parse_id(&raw_id)?,
                raw_id,
                idle_ms: int(r.get(2)?)?.max(0) as u64,
                deliveries: int(r.get(3)?)?.max(0) as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "No limit" callers pass a cap beyond what Redis takes as COUNT; it must still count.
    #[tokio::test]
    async fn count_after_takes_a_cap_beyond_a_signed_count() {
        let server = dualbus_testkit::RedisServer::start().expect("redis-server");
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for _ in 0..3 {
            let _: String = redis::cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("f")
                .arg("v")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let n = count_after(&mut conn, "s", b"", u64::MAX / 2 + 1)
            .await
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(count_after(&mut conn, "s", b"", 2).await.unwrap(), 2);
    }

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_xreadgroup() {
        let v = Value::Array(vec![Value::Array(vec![
            bs("dualbus:logic:risk_alert"),
            Value::Array(vec![
                Value::Array(vec![bs("1-0"), Value::Array(vec![bs("v"), bs("1")])]),
                Value::Array(vec![bs("1-1"), Value::Nil]),
            ]),
        ])]);
        let r = read_reply(v).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, &b"dualbus:logic:risk_alert"[..]);
        assert_eq!(r[0].1[0].id, EntryId { ms: 1, seq: 0 });
        assert_eq!(r[0].1[0].fields, vec![(Bytes::from("v"), Bytes::from("1"))]);
        assert!(r[0].1[1].deleted);
        assert!(read_reply(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn parses_xinfo_groups() {
        let v = Value::Array(vec![Value::Array(vec![
            bs("name"),
            bs("risk"),
            bs("consumers"),
            Value::Int(1),
            bs("pending"),
            Value::Int(3),
            bs("last-delivered-id"),
            bs("5-0"),
            bs("entries-read"),
            Value::Int(5),
            bs("lag"),
            Value::Nil,
        ])]);
        let g = groups(&v);
        assert_eq!(g[0].name, "risk");
        assert_eq!(g[0].pending, 3);
        assert_eq!(g[0].lag, None);
        assert_eq!(g[0].last_delivered, b"5-0");
    }
}
