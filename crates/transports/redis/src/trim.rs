//! Entries a stream trim removed before a reliable group read them (`trimmed_unread`).
//!
//! Publishers append with `XADD ... MAXLEN ~ maxlen`. A group further behind than `maxlen`
//! (its consumers stopped, or several publishers overfilled it) loses the oldest entries it
//! has not read, and its next `XREADGROUP` jumps the gap without a word. Redis keeps what is
//! needed to count them: the stream's `entries-added` and `length`, and the group's
//! `entries-read` (which grows by one per entry the group is given, so a jumped gap leaves it
//! short). With `after` the number of entries still in the stream past the group's
//! last-delivered id:
//!
//! ```text
//! lost = entries-added - entries-read - after
//! ```
//!
//! The script below computes it atomically. `after` is exact when the group is behind the
//! stream's first entry (`after` = `length`: a stopped or stalled group, the case that loses
//! entries) or when either side of the group's position holds fewer than [`COUNT_LIMIT`]
//! entries (counted with `XRANGE`: a group near the head, the usual case, or near the tail).
//! Otherwise (a group in the middle of a long stream) it takes `after` = `length`, a lower
//! bound: what is counted was lost, and the rest is counted by a later check, at the latest
//! once the group is near the head again. When it
//! finds a loss it adds it to the group's field of `{stream}#trimmed` (`HINCRBY`, so
//! `dualbus stats` shows it for every process) and sets the group's `entries-read` to include
//! it (`XGROUP SETID` with the group's own last-delivered id, so the cursor does not move):
//! the same loss is never counted twice, by this consumer or another.
//!
//! Each reliable consumer runs it on every stream when it subscribes (a group coming back
//! after its consumers were gone) and at every sweep.
//!
//! Redis 7.0 writes a group's reads to its AOF and its replicas as `XCLAIM ... LASTID`, which
//! carries the position but not `entries-read`: a server restarted from its AOF, or a promoted
//! replica, has the group where it was but its counter as of the last `XGROUP SETID ...
//! ENTRIESREAD`. So the script writes the counter down (`SETID` at the group's own position)
//! at every check, and never counts more than the trims removed (`entries-added - length`):
//! after such a restart, a stream that was never trimmed counts nothing, and one that was can
//! count at most the reads since the last check (at most a second of them) as trimmed.

use crate::admission;
use redis::aio::ConnectionLike;

/// Most entries the script reads with `XRANGE` to count the group's side of the stream.
pub(crate) const COUNT_LIMIT: u64 = 1000;

/// KEYS: the stream, its `#trimmed` hash. ARGV: the group, the count limit. Returns the number
/// of entries found lost (counted and folded into the group's `entries-read`), or -1 when
/// Redis cannot tell (the stream has holes from `XDEL` past its first entry).
///
/// A group Redis has just created has no `entries-read` (Redis 7 sets it at the group's first
/// read, estimated from its position, which hides a gap trimmed before that read). The script
/// then sets it from the `lag` Redis estimates (exact while nothing was trimmed past the group):
/// a subscriber runs the check right after creating its groups, so the counter is exact from
/// then on.
const SCRIPT: &str = r#"
local function field(t, name)
  for i = 1, #t, 2 do
    if t[i] == name then return t[i + 1] end
  end
  return nil
end
local function id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = id(a)
  local bm, bs = id(b)
  return am < bm or (am == bm and as < bs)
end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return 0 end
local group = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(g, 'name') == ARGV[1] then group = g end
end
if not group then return 0 end
local last = field(group, 'last-delivered-id')
local added = field(info, 'entries-added')
local read = field(group, 'entries-read')
if not read then
  local lag = field(group, 'lag')
  if not lag then return -1 end
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added - lag)
  return 0
end
local length = field(info, 'length')
local first = field(info, 'first-entry')
local deleted = field(info, 'max-deleted-entry-id')
if first and deleted ~= '0-0' and not before(deleted, first[1]) then return -1 end
local limit = tonumber(ARGV[2])
local after = length
if first and not before(last, first[1]) then
  local tail = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', limit)
  if tail < limit then
    after = tail
  else
    local upto = #redis.call('XRANGE', KEYS[1], '-', last, 'COUNT', limit)
    if upto < limit then after = length - upto end
  end
end
local lost = added - read - after
-- Never more than the trims removed (a stale counter, see the module doc).
if lost > added - length then lost = added - length end
if lost < 0 then lost = 0 end
-- Written down at every check, lost or not: reads reach the AOF and replicas as
-- XCLAIM ... LASTID, which do not carry the counter.
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', read + lost)
if lost == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], lost)
return lost
"#;

/// The hash counting each group's trimmed-unread entries of a stream, in the stream's slot:
/// `{stream}#trimmed` (or `stream#trimmed` for a key with a hash tag).
pub fn trimmed_key(stream: &str) -> String {
    admission::slot_key(stream, "#trimmed")
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// This many entries were trimmed unread since the last check (0: none).
    Lost(u64),
    /// Redis cannot tell (`XDEL` holes, or no `entries-read` and no lag estimate).
    Unknown,
}

/// Checks `group` on `stream` once (see the module doc).
pub(crate) async fn check(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Found, redis::RedisError> {
    // A maintained helper: EVALSHA, and SCRIPT LOAD then EVALSHA again after a NOSCRIPT
    // (a restarted or failed-over server).
    static CHECK: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
    let n: i64 = CHECK
        .key(stream)
        .key(trimmed_key(stream))
        .arg(group)
        .arg(COUNT_LIMIT)
        .invoke_async(conn)
        .await?;
    Ok(if n < 0 {
        Found::Unknown
    } else {
        Found::Lost(n as u64)
    })
}
