//! Per-engine Redis users for `dualbus redis up`: an ACL file made from the engines'
//! declarations ([`dualbus_engines::system::declarations`]) and one generated password per
//! user.
//!
//! # Users
//!
//! * `default`: off (a client that does not authenticate can run nothing).
//! * one per engine, named after it (`marketdata` is the hub): it may
//!   * read the streams of the kinds it subscribes to and both priority lanes, and manage its
//!     groups there (`XREADGROUP`, `XACK`, `XAUTOCLAIM`, `XCLAIM`, `XPENDING`,
//!     `XGROUP CREATE|CREATECONSUMER|SETID`, `XRANGE`, `XREVRANGE`), recording its queue
//!     bound in their `{stream}#groups` hashes (`HSET`) and renewing its groups' leases
//!     (`SET`, `PEXPIRE` on `{stream}#alive:{group}`); it counts the entries trimmed before its groups read them with a
//!     script (`EVALSHA`, `SCRIPT LOAD`; inside: `XINFO STREAM`, `XRANGE`, `XGROUP SETID`
//!     and `HINCRBY` of `{stream}#trimmed`);
//!   * append (`XADD`) to the streams of the kinds it publishes, its heartbeats
//!     (`engine_health`), the priority lanes when it publishes a critical kind, and the
//!     dead-letter streams; on the streams it appends to it may also enforce the groups'
//!     queue bounds as a publisher does (`XPENDING`, `XRANGE`, `XACK`, `XGROUP SETID`,
//!     `XINFO STREAM`, in a script for `drop_oldest`: `EVALSHA`; `HGETALL` of the bounds,
//!     `EXISTS` of the groups' leases);
//!   * read its own reply streams (`{prefix}:{bus}:reply:{engine}` and `...:{engine}-*`), and
//!     write to every reply stream as a publisher does when it takes requests (it subscribes
//!     to a custom kind named `*_request`: `hub_request`, `backtest_request`);
//!   * see every stream's groups and length (`XINFO GROUPS`, `XLEN`: counts, not contents),
//!     for `/metrics`.
//!
//!   Nothing else: no `FLUSHALL`, `CONFIG`, `KEYS`, `DEL`, `XTRIM`, `XDEL`, `XGROUP DESTROY`, no
//!   other key.
//! * `system`: every engine in one process (`dualbus run --backend redis`): the stream and
//!   hash commands above on every key under the prefix, plus `XGROUP DESTROY` and `HDEL` (a
//!   dropped group's bound and trimmed count) for `run --fresh`; still no server
//!   administration.
//! * `admin`: everything, for the operator's verbs (`redis status|down`, `stats`, `dlq`,
//!   `tail`, `inspect`, `publish`, `bench`, `stress`). `dlq replay` appends to any stream and
//!   deletes from the dead-letter streams (`XDEL`, in a script with `EVALSHA`), which no other
//!   user may.
//!
//! Key patterns hold both buses' names and one file serves both servers, so the failover
//! mirrors (a bus's streams written on the other bus's server) pass the same rules.

use anyhow::Context;
use dualbus_bus::{BusId, Config, Router};
use dualbus_core::EventKind;
use dualbus_engines::system::{declarations, Declaration};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The operator's user.
pub const ADMIN: &str = "admin";
/// The user of `dualbus run --backend redis` (every engine in one process).
pub const SYSTEM: &str = "system";
/// The ACL file's name in `redis up --dir`.
pub const ACL_FILE: &str = "users.acl";
/// The passwords' directory in `redis up --dir` (one file per user, mode 0600).
pub const SECRETS: &str = "secrets";

/// Commands every user needs to connect and stay connected (and, on a Redis Cluster, to learn
/// which node serves which slot).
const CONNECTION: &str = "+ping +hello +auth +select +client|setname +cluster|slots";
/// What a reader does on its groups' leases (`{stream}#alive:{group}`: renewed while it lives).
const LEASE: &str = "+set +pexpire";
/// What a reader does on the streams it reads.
const READ: &str = "+xreadgroup +xack +xautoclaim +xclaim +xpending +xgroup|create \
                    +xgroup|createconsumer +xgroup|setid +xrange +xrevrange";
/// What a reader runs to count the entries trimmed before its groups read them: the script
/// (whose keys are a read stream and its `#trimmed` hash) and what the script calls on them.
const TRIM_CHECK: &str = "+evalsha +xinfo|stream +hincrby";
/// What a publisher does on the streams it writes (appending; after a write whose answer did
/// not come, reading what the broker appended all the same, `XRANGE`/`XREVRANGE`; and the
/// queue bounds: a `drop_oldest` bound is a script, `EVALSHA`, that runs the rest).
const WRITE: &str =
    "+xadd +xpending +xinfo|groups +xinfo|stream +xrange +xrevrange +xack +xgroup|setid +evalsha";

/// Every user's ACL rules but its password, in file order: `default`, the engines, `system`,
/// `admin`.
pub fn rules(cfg: &Config) -> Vec<(String, String)> {
    let router = Router::new(cfg);
    let mut out = vec![("default".to_string(), "off resetkeys -@all".to_string())];
    for d in declarations() {
        out.push((d.engine.to_string(), engine_rules(&d, &router)));
    }
    // Every stream, and the bounds hashes beside them (`{stream}#groups`).
    let prefix = glob_escape(router.prefix());
    let all = format!("~{prefix}:* ~{{{prefix}:*");
    out.push((
        SYSTEM.to_string(),
        format!(
            "on resetkeys resetchannels -@all {CONNECTION} {all} {READ} {WRITE} \
             {LEASE} {TRIM_CHECK} +script|load +exists +xinfo|stream +xinfo|consumers +xlen \
             +xgroup|destroy +hset +hget +hgetall +hdel"
        ),
    ));
    out.push((
        ADMIN.to_string(),
        "on resetkeys resetchannels ~* &* +@all".to_string(),
    ));
    out
}

/// `s` as a literal in a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The kind a topic pattern reads (`market_data.quote.>` reads `market_data`); `None` for a
/// pattern whose first segment is a wildcard (it reads every kind).
fn pattern_kind(pattern: &str) -> Option<EventKind> {
    let first = pattern.split('.').next()?;
    if first == "*" || first == ">" {
        return None;
    }
    EventKind::parse(first).ok()
}

fn engine_rules(d: &Declaration, router: &Router) -> String {
    let prefix = glob_escape(router.prefix());
    let buses = [BusId::MarketData, BusId::Logic];
    // A kind's stream, and on the MarketData bus its partitions' streams (`[md] partitions`,
    // `{prefix}:md:{pN}:{kind}`), whatever the partitions the servers are later used with.
    let streams = |k: &EventKind| -> Vec<String> {
        let bus = router.bus_of(k);
        let mut out = vec![glob_escape(&router.kind_stream(bus, k))];
        if bus == BusId::MarketData {
            out.push(format!("{prefix}:md:{{p*}}:{}", glob_escape(k.as_str())));
        }
        out
    };
    // Read: the subscribed kinds' streams, both priority lanes, its own reply streams.
    let mut read = BTreeSet::new();
    let mut takes_requests = false;
    for pattern in d.subscriptions.iter().flat_map(|i| &i.patterns) {
        match pattern_kind(pattern) {
            Some(k) => {
                takes_requests |=
                    matches!(k, EventKind::Custom(_)) && k.as_str().ends_with("_request");
                read.extend(streams(&k));
            }
            None => {
                read.insert(format!("{prefix}:*"));
            }
        }
    }
    for b in buses {
        read.insert(glob_escape(&router.priority_stream(b)));
    }
    let mut own_replies = Vec::new();
    for b in buses {
        let r = glob_escape(&router.reply_stream(b, d.engine));
        own_replies.push(format!("{r}-*"));
        own_replies.push(r);
    }
    // Write: the declared kinds, heartbeats, the priority lanes for critical kinds.
    let mut write = BTreeSet::new();
    let mut kinds = d.publishes.clone();
    kinds.push(EventKind::EngineHealth);
    for k in &kinds {
        write.extend(streams(k));
        if k.is_critical() {
            for b in buses {
                write.insert(glob_escape(&router.priority_stream(b)));
            }
        }
    }
    let append_only: Vec<String> = buses
        .iter()
        .map(|b| glob_escape(&router.dead_stream(*b)))
        .collect();
    if takes_requests {
        // A replier enforces the reply streams' queue bounds like any publisher.
        write.insert(format!("{prefix}:*:reply:*"));
    }
    // A stream's own key, or a key beside it in its hash slot: `{stream}#groups` (the bounds)
    // and `{stream}#alive:{group}` (the leases) for a key without a hash tag,
    // `stream#groups` for one with (the partitions' `{pN}`).
    let keys = |set: &mut dyn Iterator<Item = &String>, beside: Option<&str>| -> String {
        let mut s = String::new();
        for k in set {
            let _ = match (beside, k.contains('{')) {
                (None, _) => write!(s, "~{k} "),
                (Some(suffix), true) => write!(s, "~{k}{suffix} "),
                (Some(suffix), false) => write!(s, "~{{{k}}}{suffix} "),
            };
        }
        s
    };
    let reads = || read.iter().chain(own_replies.iter());
    let read_keys = keys(&mut reads(), None);
    let read_bounds = keys(&mut reads(), Some("#groups"));
    let read_leases = keys(&mut reads(), Some("#alive:*"));
    let read_trimmed = keys(&mut reads(), Some("#trimmed"));
    let write_keys = keys(&mut write.iter(), None);
    let write_bounds = keys(&mut write.iter(), Some("#groups"));
    let write_leases = keys(&mut write.iter(), Some("#alive:*"));
    let append_keys = keys(&mut append_only.iter(), None);
    format!(
        "on resetkeys resetchannels -@all {CONNECTION} +script|load \
         (~{prefix}:* +xinfo|groups +xlen) \
         ({read_keys}{READ}) \
         ({read_bounds}+hset +hget +hgetall) \
         ({read_leases}{LEASE}) \
         ({read_keys}{read_trimmed}{TRIM_CHECK}) \
         ({write_keys}{WRITE}) \
         ({write_bounds}+hgetall) \
         ({write_leases}+exists) \
         ({append_keys}+xadd)"
    )
}

/// A new password: 32 random bytes in hex.
fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a password: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `path` readable by its owner only (0600), whatever the umask.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its mode on open: set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `dir/users.acl` and, for each user without one (or every user when `rotate`), a
/// password in `dir/secrets/{user}`. The ACL file holds SHA-256 hashes only. Returns the ACL
/// file's path.
///
/// # Errors
/// A file that cannot be written or read, naming it.
pub fn write(dir: &Path, cfg: &Config, rotate: bool) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let secrets = dir.join(SECRETS);
    std::fs::create_dir_all(&secrets)
        .with_context(|| format!("cannot create {}", secrets.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))?;
    }
    // Redis takes no comments in an ACL file: what it is is said in the servers' configs.
    let mut file = String::new();
    for (user, rules) in rules(cfg) {
        if user == "default" {
            let _ = writeln!(file, "user default {rules}");
            continue;
        }
        let path = secrets.join(&user);
        let existing = if rotate {
            None
        } else {
            std::fs::read_to_string(&path)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
        };
        let password = match existing {
            Some(p) => p,
            None => {
                let p = new_password()?;
                write_private(&path, &format!("{p}\n"))?;
                p
            }
        };
        let hash: String = sha2::Sha256::digest(password.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(file, "user {user} {rules} #{hash}");
    }
    let acl = dir.join(ACL_FILE);
    write_private(&acl, &file)?;
    Ok(acl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user<'a>(all: &'a [(String, String)], name: &str) -> &'a str {
        &all.iter().find(|(u, _)| u == name).expect(name).1
    }

    #[test]
    fn each_engine_may_append_its_declared_kinds_only() {
        let all = rules(&Config::default());
        let features = user(&all, "features");
        assert!(
            features.contains("(~dualbus:logic:engine_health ~dualbus:logic:feature_vector +xadd"),
            "{features}"
        );
        assert!(
            !features.contains("~dualbus:md:market_data +xadd"),
            "{features}"
        );
        assert!(
            features.contains("~dualbus:md:market_data "),
            "reads it: {features}"
        );
        let risk = user(&all, "risk");
        assert!(risk.contains("~dualbus:logic:order_request"), "{risk}");
        // Risk publishes critical alerts: it may append to the priority lanes.
        let write = risk
            .split(" (")
            .find(|s| s.contains("+xadd +xpending"))
            .unwrap();
        assert!(write.contains("~dualbus:logic:priority"), "{write}");
        let features_write = features
            .split(" (")
            .find(|s| s.contains("+xadd +xpending"))
            .unwrap();
        assert!(!features_write.contains("priority"), "{features_write}");
        // Only the hub and the backtesting engine take requests.
        for (u, rules) in &all {
            let replies = rules.contains("~dualbus:*:reply:* ");
            assert_eq!(
                replies,
                u == "marketdata" || u == "backtesting",
                "{u}: {rules}"
            );
        }
        assert_eq!(user(&all, "default"), "off resetkeys -@all");
    }

    #[test]
    fn a_prefix_with_glob_characters_is_escaped() {
        let mut cfg = Config::default();
        cfg.prefix = "a*b".into();
        let all = rules(&cfg);
        assert!(user(&all, "vpin").contains("~a\\*b:md:market_data "));
    }
}
