//! Configuration: one TOML file (`dualbus.toml`, or a path given with `--config`), then
//! environment overrides, then validation that reports every problem at once.
//!
//! ```toml
//! transport = "memory"          # or "redis"
//! prefix = "dualbus"            # stream keys are {prefix}:{bus}:{kind}
//! encoding = "json"             # payload encoding this client writes: json or msgpack
//! request_timeout_ms = 5000
//!
//! [md]                          # the MarketData bus
//! url = "redis://127.0.0.1:6380"  # or redis+cluster://host:port,host:port (a Redis Cluster)
//! maxlen = 1000000
//! partitions = 1                # > 1: each stream split by symbol (docs/scaling.md)
//!
//! [logic]                       # the Engine Logic bus
//! url = "redis://127.0.0.1:6381"
//!
//! [delivery]                    # defaults for every subscription
//! mode = "reliable"             # or "fast"
//! backpressure = "block"        # or "drop_oldest", "reject"
//! queue_bound = 100000
//!
//! [routes]                      # kind -> bus, overriding the defaults
//! my_quotes = "md"
//! ```

use dualbus_core::{Backpressure, Encoding, EventKind, Mode, StartFrom};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default config file name, looked up in the working directory.
pub const DEFAULT_FILE: &str = "dualbus.toml";

/// Environment variables that override config keys, with the key each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DUALBUS_TRANSPORT", "transport"),
    ("DUALBUS_PREFIX", "prefix"),
    ("DUALBUS_INSTANCE", "instance"),
    ("DUALBUS_ENCODING", "encoding"),
    ("DUALBUS_REQUEST_TIMEOUT_MS", "request_timeout_ms"),
    ("DUALBUS_MD_URL", "md.url"),
    ("DUALBUS_MD_MAXLEN", "md.maxlen"),
    ("DUALBUS_MD_PARTITIONS", "md.partitions"),
    ("DUALBUS_LOGIC_URL", "logic.url"),
    ("DUALBUS_LOGIC_MAXLEN", "logic.maxlen"),
    ("DUALBUS_MODE", "delivery.mode"),
    ("DUALBUS_BACKPRESSURE", "delivery.backpressure"),
    ("DUALBUS_QUEUE_BOUND", "delivery.queue_bound"),
    ("DUALBUS_GROUP_LEASE_MS", "delivery.group_lease_ms"),
    ("DUALBUS_TLS_CA_FILE", "tls.ca_file"),
    ("DUALBUS_TLS_CERT_FILE", "tls.cert_file"),
    ("DUALBUS_TLS_KEY_FILE", "tls.key_file"),
];

/// The keys of the file's top level and of each section, for "unknown key" messages.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "transport",
            "prefix",
            "instance",
            "encoding",
            "request_timeout_ms",
            "md",
            "logic",
            "delivery",
            "memory",
            "failover",
            "routes",
            "tls",
        ],
    ),
    ("tls", &["ca_file", "cert_file", "key_file"]),
    ("md", BUS_KEYS),
    ("logic", BUS_KEYS),
    (
        "delivery",
        &[
            "mode",
            "start",
            "queue_bound",
            "backpressure",
            "idle_timeout_ms",
            "backoff_max_ms",
            "group_lease_ms",
            "max_deliveries",
            "lag_limit",
            "batch_max",
            "dedup_window",
            "priority_thread",
            "priority_realtime",
        ],
    ),
    ("memory", &["spin_us"]),
    (
        "failover",
        &[
            "enabled",
            "heartbeat_ms",
            "heartbeat_timeout_ms",
            "window",
            "window_ms",
        ],
    ),
];

const BUS_KEYS: &[&str] = &[
    "url",
    "maxlen",
    "connect_timeout_ms",
    "max_payload_bytes",
    "partitions",
];

/// The sections whose keys are checked one by one (`routes` takes any kind name).
const SECTIONS: [&str; 6] = ["md", "logic", "delivery", "memory", "failover", "routes"];

/// Explains a `serde` error about one value in words: `expected a number, got the string
/// "x"`, or `unknown key; known keys: ...`. `got` describes the value as written. Shared by
/// the config file and the engines' settings.
pub fn explain_serde_error(message: &str, got: &str) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    if let Some(rest) = first.strip_prefix("unknown field `") {
        return match rest.split_once(", expected one of ") {
            Some((_, known)) => format!("unknown key; known keys: {}", known.replace('`', "")),
            None => match rest.split_once(", expected ") {
                Some((_, known)) => {
                    format!("unknown key; the only key is {}", known.replace('`', ""))
                }
                None => "unknown key".to_string(),
            },
        };
    }
    let wrong = first
        .strip_prefix("invalid type: ")
        .or_else(|| first.strip_prefix("invalid value: "));
    match wrong.and_then(|w| w.split_once(", expected ")) {
        Some((_, expected)) => format!("expected {}, got {got}", in_words(expected)),
        None => first.to_string(),
    }
}

/// A `serde` "expected" in words.
fn in_words(expected: &str) -> String {
    match expected {
        "f64" | "f32" => "a number".into(),
        "u64" | "u32" | "u16" | "u8" | "usize" => "a whole number (0 or more)".into(),
        "i64" | "i32" | "i16" | "i8" | "isize" => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_string(),
    }
}

/// A TOML value as an error message shows it: `the string "x"`, `-1`, `a table`.
fn toml_in_words(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the number {i}"),
        toml::Value::Float(x) => format!("the number {x}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "a list".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// Whether `table` sets `section.key` explicitly.
fn section_sets(table: &toml::Table, section: &str, key: &str) -> bool {
    table
        .get(section)
        .and_then(|v| v.as_table())
        .is_some_and(|t| t.contains_key(key))
}

/// Settings of one bus.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BusSection {
    /// Broker address (Redis transport).
    pub url: String,
    /// Most entries per stream (`MAXLEN ~`).
    pub maxlen: u64,
    /// How long connecting may take before it fails.
    pub connect_timeout_ms: u64,
    /// Largest payload accepted from the wire; larger entries are dead-lettered.
    pub max_payload_bytes: u64,
    /// Partitions by symbol (MarketData bus only): each stream of the bus becomes this many
    /// streams, `{prefix}:md:{pN}:{kind}`, and a message goes to the partition of its topic's
    /// last segment ([`dualbus_core::partition`]). 1: one stream per kind.
    pub partitions: u32,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl BusSection {
    fn with_url(url: &str) -> BusSection {
        BusSection {
            url: url.to_string(),
            maxlen: 1_000_000,
            connect_timeout_ms: 2_000,
            max_payload_bytes: 1 << 20,
            partitions: 1,
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection::with_url("")
    }
}

/// Defaults for subscriptions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DeliverySection {
    /// `reliable` or `fast`.
    pub mode: String,
    /// Where a new group starts: `newest`, `oldest`, or a time (RFC 3339,
    /// `2026-12-05T09:30:00Z`): what the streams hold from then on.
    pub start: String,
    /// Most messages a group may hold unread or unacknowledged.
    pub queue_bound: u64,
    /// `block`, `drop_oldest` (also `drop-oldest`) or `reject`.
    #[serde(deserialize_with = "backpressure")]
    pub backpressure: Backpressure,
    /// Unacknowledged messages idle this long are redelivered; each further redelivery of the
    /// same message waits twice as long as the one before, up to `backoff_max_ms`.
    pub idle_timeout_ms: u64,
    /// The longest wait before a redelivery; `idle_timeout_ms` or less: no backoff.
    pub backoff_max_ms: u64,
    /// Redis: a group counts as alive until this long after its last consumer stopped
    /// renewing its lease (every quarter of this); a group whose consumers all died stops
    /// holding publishers to its `queue_bound` then.
    pub group_lease_ms: u64,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u64,
    /// Fast mode: how far a consumer may fall behind before it jumps to the head.
    pub lag_limit: u64,
    /// Most messages handed to a subscription per read.
    pub batch_max: u64,
    /// Sequence numbers remembered per source for duplicate suppression.
    pub dedup_window: u64,
    /// Priority-lane readers, and the handlers they call, run on a thread of their own (one
    /// per process), so no runtime busy with bulk traffic delays a critical message. Off only
    /// where one thread must do everything in a fixed order (`dualbus backtest`).
    pub priority_thread: bool,
    /// The priority-lane thread asks the operating system for real-time scheduling
    /// (`SCHED_FIFO` at the lowest real-time priority, Linux), so a critical message is
    /// handled as soon as it arrives instead of waiting for a core the engines' threads hold.
    /// Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` above 0; without them the thread keeps the
    /// normal policy and says so once at `info`.
    pub priority_realtime: bool,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            mode: "reliable".into(),
            start: "newest".into(),
            queue_bound: 100_000,
            backpressure: Backpressure::Block,
            idle_timeout_ms: 30_000,
            backoff_max_ms: 120_000,
            group_lease_ms: 10_000,
            max_deliveries: 5,
            lag_limit: 100_000,
            batch_max: 512,
            dedup_window: 1 << 20,
            priority_thread: true,
            priority_realtime: true,
            unknown: BTreeMap::new(),
        }
    }
}

/// Embedded transport settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct MemorySection {
    /// Microseconds an idle consumer spins before parking. Unset: 20 µs, except in
    /// `dualbus run` and `dualbus engine`, whose engines share the cores (a reader that spins
    /// there takes the CPU from the one that has work): they park at once.
    pub spin_us: Option<u64>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// How long an idle embedded consumer spins before parking when `memory.spin_us` is unset.
pub const DEFAULT_SPIN_US: u64 = 20;

impl MemorySection {
    /// The spin, with the default applied.
    pub fn spin(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.spin_us.unwrap_or(DEFAULT_SPIN_US))
    }
}

/// TLS of `rediss://` bus addresses (docs/security.md): PEM files.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsSection {
    /// The CA that signed the servers' certificates (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for servers that ask for one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// Failover between the buses (docs/architecture.md, "Failover between the buses").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct FailoverSection {
    /// `auto` (on for Redis, off for the embedded transport), `on` or `off`.
    pub enabled: FailoverMode,
    /// Heartbeat period of each bus.
    pub heartbeat_ms: u64,
    /// A heartbeat answered later than this marks the bus down.
    pub heartbeat_timeout_ms: u64,
    /// Most recently published messages kept per bus, re-sent on the other bus when it fails.
    pub window: u64,
    /// Oldest message kept in that window.
    pub window_ms: u64,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl Default for FailoverSection {
    fn default() -> Self {
        FailoverSection {
            enabled: FailoverMode::Auto,
            heartbeat_ms: 10,
            heartbeat_timeout_ms: 100,
            window: 10_000,
            window_ms: 500,
            unknown: BTreeMap::new(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// `memory` (embedded, the default) or `redis`.
    pub transport: TransportKind,
    /// First part of every stream key.
    pub prefix: String,
    /// This process's instance id; defaults to `{engine}-1`.
    pub instance: Option<String>,
    /// Encoding of payloads this client writes: `json` or `msgpack`.
    pub encoding: String,
    /// Default timeout of a request.
    pub request_timeout_ms: u64,
    /// The MarketData bus.
    pub md: BusSection,
    /// The Engine Logic bus.
    pub logic: BusSection,
    /// Subscription defaults.
    pub delivery: DeliverySection,
    /// Embedded transport settings.
    pub memory: MemorySection,
    /// Failover between the buses.
    pub failover: FailoverSection,
    /// Route overrides: kind name -> `md` or `logic`.
    pub routes: BTreeMap<String, String>,
    /// TLS of `rediss://` addresses.
    pub tls: TlsSection,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
    /// Keys set from the environment, for error messages.
    #[serde(skip)]
    from_env: BTreeMap<String, &'static str>,
    /// Whether the file or the environment named the transport.
    #[serde(skip)]
    transport_set: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transport: TransportKind::Memory,
            prefix: "dualbus".into(),
            instance: None,
            encoding: "json".into(),
            request_timeout_ms: 5_000,
            md: BusSection::with_url("redis://127.0.0.1:6380"),
            logic: BusSection::with_url("redis://127.0.0.1:6381"),
            delivery: DeliverySection::default(),
            memory: MemorySection::default(),
            failover: FailoverSection::default(),
            routes: BTreeMap::new(),
            tls: TlsSection::default(),
            unknown: BTreeMap::new(),
            from_env: BTreeMap::new(),
            transport_set: false,
        }
    }
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`delivery.queue_bound`), with the environment variable that set it.
    pub key: String,
    /// The offending value as written (empty when the reason says it, or when the key is
    /// unknown).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.reason)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.reason)
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file (or `<environment>`).
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// One or more values are invalid or of the wrong type, or keys unknown; every problem is
    /// listed.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A bus of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusId {
    /// The MarketData bus (star).
    MarketData,
    /// The Engine Logic bus (mesh).
    Logic,
}

impl BusId {
    /// Both buses.
    pub const ALL: [BusId; 2] = [BusId::MarketData, BusId::Logic];

    /// The short name used in stream keys and config (`md`, `logic`).
    pub fn as_str(self) -> &'static str {
        match self {
            BusId::MarketData => "md",
            BusId::Logic => "logic",
        }
    }

    /// The other bus.
    pub fn other(self) -> BusId {
        match self {
            BusId::MarketData => BusId::Logic,
            BusId::Logic => BusId::MarketData,
        }
    }

    /// Index 0 (md) or 1 (logic).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses `md` / `logic` (also `market_data`, `engine_logic`).
    pub fn parse(s: &str) -> Option<BusId> {
        match s {
            "md" | "market_data" => Some(BusId::MarketData),
            "logic" | "engine_logic" => Some(BusId::Logic),
            _ => None,
        }
    }
}

impl fmt::Display for BusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport of both buses (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// In-process buses (`memory`, also `embedded`): the default.
    #[default]
    Memory,
    /// The two Redis servers of `[md]` and `[logic]` (`redis`).
    Redis,
}

impl TransportKind {
    /// Its name in the config (`memory`, `redis`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Memory => "memory",
            TransportKind::Redis => "redis",
        }
    }

    /// Parses `memory` (also `embedded`) / `redis`.
    pub fn parse(s: &str) -> Option<TransportKind> {
        match s {
            "memory" | "embedded" => Some(TransportKind::Memory),
            "redis" => Some(TransportKind::Redis),
            _ => None,
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TransportKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(
            d,
            TransportKind::parse,
            "\"memory\" (also \"embedded\") or \"redis\"",
        )
    }
}

/// Whether failover between the buses is on (`failover.enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverMode {
    /// On for Redis, off for the embedded transport (`auto`): the default.
    #[default]
    Auto,
    /// On (`on`).
    On,
    /// Off (`off`).
    Off,
}

impl FailoverMode {
    /// Its name in the config (`auto`, `on`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Auto => "auto",
            FailoverMode::On => "on",
            FailoverMode::Off => "off",
        }
    }

    /// Parses `auto` / `on` / `off`.
    pub fn parse(s: &str) -> Option<FailoverMode> {
        match s {
            "auto" => Some(FailoverMode::Auto),
            "on" => Some(FailoverMode::On),
            "off" => Some(FailoverMode::Off),
            _ => None,
        }
    }
}

impl fmt::Display for FailoverMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailoverMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(d, FailoverMode::parse, "\"auto\", \"on\" or \"off\"")
    }
}

/// `delivery.backpressure`: [`parse_backpressure`]'s names.
fn backpressure<'de, D: Deserializer<'de>>(d: D) -> Result<Backpressure, D::Error> {
    one_of(
        d,
        parse_backpressure,
        "\"block\", \"drop_oldest\" or \"reject\"",
    )
}

/// A string that `parse` takes; another string is an invalid value, reported with `expected`
/// (`key = "x": expected ...`), and another type an invalid type (`expected a string`).
fn one_of<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Option<T>,
    expected: &'static str,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s)
        .ok_or_else(|| serde::de::Error::invalid_value(serde::de::Unexpected::Str(&s), &expected))
}

fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_string())
    }
}

impl Config {
    /// Loads `path`, or `./dualbus.toml` when it exists, or the defaults; then applies the
    /// environment overrides of [`ENV_OVERRIDES`] and validates.
    ///
    /// # Errors
    /// [`ConfigError`]: an unreadable file, bad TOML, or every invalid value at once.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.to_path_buf(),
            ),
            None if Path::new(DEFAULT_FILE).exists() => (
                std::fs::read_to_string(DEFAULT_FILE).map_err(|source| ConfigError::Io {
                    path: DEFAULT_FILE.into(),
                    source,
                })?,
                PathBuf::from(DEFAULT_FILE),
            ),
            None => (String::new(), PathBuf::from("<defaults>")),
        };
        let env: Vec<(&'static str, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, _)| std::env::var(var).ok().map(|v| (*var, v)))
            .collect();
        Config::from_toml_with_env(&text, &origin, &env)
    }

    /// Parses TOML text, applies `env` (pairs of variable name and value, as in
    /// [`ENV_OVERRIDES`]) and validates.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: &[(&'static str, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_path_buf(),
                    message: e.to_string(),
                })?;
        let mut from_env = BTreeMap::new();
        for (var, raw) in env {
            let Some((_, key)) = ENV_OVERRIDES.iter().find(|(v, _)| v == var) else {
                continue;
            };
            let mut t = &mut table;
            let parts: Vec<&str> = key.split('.').collect();
            for section in &parts[..parts.len() - 1] {
                t = match t
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                {
                    toml::Value::Table(inner) => inner,
                    _ => {
                        return Err(ConfigError::Parse {
                            path: origin.to_path_buf(),
                            message: format!("`{section}` must be a table"),
                        })
                    }
                };
            }
            // URLs, names and modes stay strings even when they look like numbers.
            let value = if matches!(*key, "prefix" | "instance" | "md.url" | "logic.url") {
                toml::Value::String(raw.clone())
            } else {
                env_value(raw)
            };
            t.insert(parts[parts.len() - 1].to_string(), value);
            from_env.insert(key.to_string(), *var);
        }
        // Each key is deserialised alone first, so that every value of the wrong type (or a
        // string a typed key does not take) is reported (by its dotted key), not only the first;
        // the rest is then read without them.
        let mut type_problems = Vec::new();
        let mut bad_type = |key: String, value: &toml::Value, e: toml::de::Error| {
            let key = match from_env.get(&key) {
                Some(var) => format!("{key} (from {var})"),
                None => key,
            };
            // A string that is none of a typed key's values (`transport = "kafka"`) is shown
            // with the values it may take, as the checks of `problems` show theirs.
            let not_taken = match value {
                toml::Value::String(s) => e
                    .message()
                    .strip_prefix(&format!("invalid value: string {s:?}, expected "))
                    .map(|expected| (format!("{s:?}"), format!("expected {expected}"))),
                _ => None,
            };
            let (value, reason) = not_taken.unwrap_or_else(|| {
                (
                    String::new(),
                    explain_serde_error(e.message(), &toml_in_words(value)),
                )
            });
            type_problems.push(Problem { key, value, reason });
        };
        let alone = |section: &str, key: &str, value: &toml::Value| {
            let mut one = toml::Table::new();
            one.insert(key.to_string(), value.clone());
            let mut top = toml::Table::new();
            if section.is_empty() {
                top = one;
            } else {
                top.insert(section.to_string(), toml::Value::Table(one));
            }
            toml::Value::Table(top).try_into::<Config>().map(|_| ())
        };
        let mut clean = toml::Table::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(inner) if SECTIONS.contains(&key.as_str()) => {
                    let mut kept = toml::Table::new();
                    for (k, v) in inner {
                        match alone(key, k, v) {
                            Ok(()) => {
                                kept.insert(k.clone(), v.clone());
                            }
                            Err(e) => bad_type(format!("{key}.{k}"), v, e),
                        }
                    }
                    clean.insert(key.clone(), toml::Value::Table(kept));
                }
                _ => match alone("", key, value) {
                    Ok(()) => {
                        clean.insert(key.clone(), value.clone());
                    }
                    Err(e) => bad_type(key.clone(), value, e),
                },
            }
        }
        let table_keys = table;
        let mut cfg: Config =
            toml::Value::Table(clean)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_path_buf(),
                    message: e.to_string(),
                })?;
        cfg.from_env = from_env;
        cfg.transport_set = table_keys.contains_key("transport");
        // A `[md]` or `[logic]` section that sets other keys keeps the bus's default address.
        let defaults = Config::default();
        if cfg.md.url.is_empty() && !section_sets(&table_keys, "md", "url") {
            cfg.md.url = defaults.md.url;
        }
        if cfg.logic.url.is_empty() && !section_sets(&table_keys, "logic", "url") {
            cfg.logic.url = defaults.logic.url;
        }
        let mut problems = type_problems;
        problems.extend(cfg.problems());
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Whether the config file or `DUALBUS_TRANSPORT` named the transport (else it is the
    /// default, and each verb uses its own default: embedded for `run`, Redis for `engine`).
    pub fn transport_is_set(&self) -> bool {
        self.transport_set
    }

    /// Every problem with this configuration (empty when valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, value: &dyn fmt::Display, reason: &str| {
            let key = match self.from_env.get(key) {
                Some(var) => format!("{key} (from {var})"),
                None => key.to_string(),
            };
            out.push(Problem {
                key,
                value: value.to_string(),
                reason: reason.to_string(),
            });
        };
        let unknown = |section: &str,
                       map: &BTreeMap<String, toml::Value>,
                       bad: &mut dyn FnMut(&str, &dyn fmt::Display, &str)| {
            let known = KNOWN_KEYS
                .iter()
                .find(|(s, _)| *s == section)
                .map_or(&[][..], |(_, keys)| *keys);
            for k in map.keys() {
                let key = if section.is_empty() {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                bad(
                    &key,
                    &"",
                    &format!("unknown key; known keys: {}", known.join(", ")),
                );
            }
        };
        unknown("", &self.unknown, &mut bad);
        unknown("md", &self.md.unknown, &mut bad);
        unknown("logic", &self.logic.unknown, &mut bad);
        unknown("delivery", &self.delivery.unknown, &mut bad);
        unknown("memory", &self.memory.unknown, &mut bad);
        unknown("failover", &self.failover.unknown, &mut bad);

        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.prefix) {
            bad(
                "prefix",
                &format!("{:?}", self.prefix),
                "must be non-empty and of [A-Za-z0-9_-]",
            );
        }
        if let Some(inst) = &self.instance {
            if !name_ok(inst) {
                bad(
                    "instance",
                    &format!("{inst:?}"),
                    "must be non-empty and of [A-Za-z0-9_-]",
                );
            }
        }
        if self.encoding.parse::<Encoding>().is_err() {
            bad(
                "encoding",
                &format!("{:?}", self.encoding),
                "expected \"json\" or \"msgpack\"",
            );
        }
        if self.request_timeout_ms == 0 {
            bad("request_timeout_ms", &0, "must be at least 1");
        }
        for (name, b) in [("md", &self.md), ("logic", &self.logic)] {
            // Only what the transport serves end to end: unix sockets used to pass here and
            // fail later, and a TLS address that skips verification protects nothing.
            let why = if b.url.starts_with("redis://") {
                None
            } else if dualbus_redis::is_cluster_url(&b.url) {
                match dualbus_redis::cluster::seed_urls(&b.url) {
                    Ok(_) if b.url.contains("insecure") => Some(
                        "TLS without verifying the server (#insecure) is refused: give the CA \
                         that signed its certificate in [tls] ca_file (docs/security.md)",
                    ),
                    Ok(_) => None,
                    Err(_) => Some("expected redis+cluster://host:port,host:port"),
                }
            } else if b.url.starts_with("rediss://") {
                b.url.contains("insecure").then_some(
                    "TLS without verifying the server (#insecure) is refused: give the CA that \
                     signed its certificate in [tls] ca_file (docs/security.md)",
                )
            } else if b.url.starts_with("unix://") || b.url.starts_with("redis+unix://") {
                Some("unix sockets are not supported: use redis://host:port")
            } else {
                Some("expected redis://host:port (or redis+cluster://host:port,host:port)")
            };
            if let Some(why) = why {
                bad(
                    &format!("{name}.url"),
                    &format!("{:?}", dualbus_core::redact_url(&b.url)),
                    why,
                );
            }
            if b.maxlen < 1_000 {
                bad(
                    &format!("{name}.maxlen"),
                    &b.maxlen,
                    "must be at least 1000",
                );
            }
            if b.connect_timeout_ms == 0 {
                bad(
                    &format!("{name}.connect_timeout_ms"),
                    &0,
                    "must be at least 1",
                );
            }
            if b.max_payload_bytes == 0 {
                bad(
                    &format!("{name}.max_payload_bytes"),
                    &0,
                    "must be at least 1",
                );
            }
        }
        let max = dualbus_core::partition::MAX_PARTITIONS;
        if !(1..=max).contains(&self.md.partitions) {
            bad(
                "md.partitions",
                &self.md.partitions,
                &format!("expected 1 to {max}"),
            );
        }
        if self.logic.partitions != 1 {
            bad(
                "logic.partitions",
                &self.logic.partitions,
                "only the MarketData bus is partitioned (by symbol): remove it or set 1",
            );
        }
        let d = &self.delivery;
        if parse_mode(&d.mode).is_none() {
            bad(
                "delivery.mode",
                &format!("{:?}", d.mode),
                "expected \"reliable\" or \"fast\"",
            );
        }
        if parse_start(&d.start).is_none() {
            bad(
                "delivery.start",
                &format!("{:?}", d.start),
                "expected \"newest\", \"oldest\" or a time such as \"2026-12-05T09:30:00Z\" (RFC 3339)",
            );
        }
        for (key, v, min) in [
            ("delivery.queue_bound", d.queue_bound, 1),
            ("delivery.idle_timeout_ms", d.idle_timeout_ms, 1),
            ("delivery.group_lease_ms", d.group_lease_ms, 100),
            ("delivery.max_deliveries", d.max_deliveries, 1),
            ("delivery.lag_limit", d.lag_limit, 1),
            ("delivery.batch_max", d.batch_max, 1),
            ("delivery.dedup_window", d.dedup_window, 64),
        ] {
            if v < min {
                bad(key, &v, &format!("must be at least {min}"));
            }
        }
        if d.dedup_window > dualbus_core::dedup::MAX_WINDOW {
            bad(
                "delivery.dedup_window",
                &d.dedup_window,
                &format!(
                    "must be at most {} (each source's window takes dedup_window/8 bytes, and a \
                     subscription keeps at most {} MiB of them)",
                    dualbus_core::dedup::MAX_WINDOW,
                    dualbus_core::dedup::MAX_BYTES >> 20
                ),
            );
        }
        for (name, b) in [("md", &self.md), ("logic", &self.logic)] {
            if d.queue_bound > b.maxlen {
                bad(
                    "delivery.queue_bound",
                    &d.queue_bound,
                    &format!(
                        "exceeds {name}.maxlen ({}): a group's backlog beyond the stream's length is trimmed away",
                        b.maxlen
                    ),
                );
            }
        }
        if d.max_deliveries > u32::MAX as u64 {
            bad("delivery.max_deliveries", &d.max_deliveries, "too large");
        }
        let f = &self.failover;
        for (key, v) in [
            ("failover.heartbeat_ms", f.heartbeat_ms),
            ("failover.heartbeat_timeout_ms", f.heartbeat_timeout_ms),
            ("failover.window", f.window),
            ("failover.window_ms", f.window_ms),
        ] {
            if v == 0 {
                bad(key, &v, "must be at least 1");
            }
        }
        for (kind, bus) in &self.routes {
            if let Err(e) = EventKind::parse(kind) {
                bad(
                    &format!("routes.{kind}"),
                    &format!("{bus:?}"),
                    &format!("bad kind name: {}", e.reason),
                );
            }
            if BusId::parse(bus).is_none() {
                bad(
                    &format!("routes.{kind}"),
                    &format!("{bus:?}"),
                    "expected \"md\" or \"logic\"",
                );
            }
        }
        out
    }

    /// The default subscription mode.
    pub fn mode(&self) -> Mode {
        parse_mode(&self.delivery.mode).unwrap_or_default()
    }
    /// Where new groups start by default.
    pub fn start(&self) -> StartFrom {
        parse_start(&self.delivery.start).unwrap_or_default()
    }
    /// The default backpressure policy.
    pub fn backpressure(&self) -> Backpressure {
        self.delivery.backpressure
    }
    /// The encoding this client writes.
    pub fn encoding(&self) -> Encoding {
        self.encoding.parse().unwrap_or_default()
    }
    /// The default request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// The section of one bus.
    pub fn bus(&self, bus: BusId) -> &BusSection {
        match bus {
            BusId::MarketData => &self.md,
            BusId::Logic => &self.logic,
        }
    }
}

/// Parses `reliable` / `fast`.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "reliable" => Some(Mode::Reliable),
        "fast" => Some(Mode::Fast),
        _ => None,
    }
}

/// Parses `newest` / `oldest` / a time in RFC 3339 (`2026-12-05T09:30:00Z`, read by the
/// `humantime` crate), the latter as [`StartFrom::Time`].
pub fn parse_start(s: &str) -> Option<StartFrom> {
    match s {
        "newest" => Some(StartFrom::Newest),
        "oldest" => Some(StartFrom::Oldest),
        _ => {
            let at = humantime::parse_rfc3339_weak(s).ok()?;
            let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
            Some(StartFrom::Time(ms as u64))
        }
    }
}

/// Parses `block` / `drop_oldest` (or `drop-oldest`) / `reject`.
pub fn parse_backpressure(s: &str) -> Option<Backpressure> {
    match s {
        "block" => Some(Backpressure::Block),
        // Flags spell it with a hyphen; both spellings are taken everywhere.
        "drop_oldest" | "drop-oldest" => Some(Backpressure::DropOldest),
        "reject" => Some(Backpressure::Reject),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn delivery_start_takes_a_time() {
        let cfg = Config::from_toml_with_env(
            "[delivery]\nstart = \"2026-12-05T09:30:00Z\"\n",
            Path::new("t.toml"),
            &[],
        )
        .expect("valid");
        assert_eq!(cfg.start(), StartFrom::Time(1_796_463_000_000));
        let err = Config::from_toml_with_env(
            "[delivery]\nstart = \"yesterday\"\n",
            Path::new("t.toml"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("delivery.start"), "{err}");
        assert!(err.contains("\"yesterday\""), "{err}");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn a_partial_bus_section_keeps_the_default_address() {
        let cfg = Config::from_toml_with_env(
            "[md]\nmaxlen = 500000\n",
            Path::new("t.toml"),
            &[("DUALBUS_LOGIC_MAXLEN", "700000".to_string())],
        )
        .expect("valid");
        assert_eq!(cfg.md.maxlen, 500000);
        assert_eq!(cfg.md.url, "redis://127.0.0.1:6380");
        assert_eq!(cfg.logic.maxlen, 700000);
        assert_eq!(cfg.logic.url, "redis://127.0.0.1:6381");
        // An explicitly empty address is still reported.
        let err =
            Config::from_toml_with_env("[md]\nurl = \"\"\n", Path::new("t.toml"), &[]).unwrap_err();
        assert!(err.to_string().contains("md.url"), "{err}");
    }

    use super::*;

    fn parse(text: &str, env: &[(&'static str, String)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Path::new("test.toml"), env)
    }

    /// Unix-socket and unverified TLS addresses are refused up front, saying why, and a
    /// password in a refused address is not repeated; a TLS address is taken.
    #[test]
    fn addresses_the_transport_cannot_serve_are_refused_without_their_password() {
        let err = parse(
            "[md]\nurl = \"rediss://u:s3cret@h:6380/#insecure\"\n[logic]\nurl = \"unix:///tmp/r.sock\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("md.url") && err.contains("without verifying the server"),
            "{err}"
        );
        assert!(parse("[md]\nurl = \"rediss://h:6380\"\n", &[]).is_ok());
        assert!(err.contains("rediss://u:***@h:6380/#insecure"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(
            err.contains("logic.url") && err.contains("unix sockets are not supported"),
            "{err}"
        );
        let err = parse("[delivery]\ndedup_window = 100000000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery.dedup_window") && err.contains("must be at most 8388608"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.md.url, "redis://127.0.0.1:6380");
        assert_eq!(c.logic.url, "redis://127.0.0.1:6381");
        assert_eq!(c.md.maxlen, 1_000_000);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            transport = "kafka"
            colour = "blue"
            [md]
            url = "http://x"
            maxlen = 10
            [delivery]
            mode = "sometimes"
            queue_bound = 0
            backpresure = "block"
            [routes]
            risk_alert = "fast_bus"
        "#;
        let err = parse(text, &[]).unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "transport",
            "colour",
            "md.url",
            "md.maxlen",
            "delivery.mode",
            "delivery.queue_bound",
            "delivery.backpresure",
            "routes.risk_alert",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("transport = \"kafka\""), "{text}");
        assert!(
            text.contains("delivery.backpresure") && text.contains("unknown key"),
            "{text}"
        );
    }

    /// A transport, failover mode or backpressure policy that is none of its key's values is
    /// named with the values it may take, from the file and from the environment; the other
    /// spellings (`embedded`, `drop-oldest`) are taken.
    #[test]
    fn a_value_of_a_typed_key_is_named_with_the_values_it_may_take() {
        let err = parse(
            "transport = \"kafka\"\n[delivery]\nbackpressure = \"spill\"\n\
             [failover]\nenabled = \"maybe\"\n",
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err}")
        };
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines,
            [
                "delivery.backpressure = \"spill\": expected \"block\", \"drop_oldest\" or \"reject\"",
                "failover.enabled = \"maybe\": expected \"auto\", \"on\" or \"off\"",
                "transport = \"kafka\": expected \"memory\" (also \"embedded\") or \"redis\"",
            ]
        );
        assert_eq!(problems[2].value, "\"kafka\"");
        let err = parse(
            "[failover]\nenabled = true\n",
            &[
                ("DUALBUS_TRANSPORT", "kafka".into()),
                ("DUALBUS_BACKPRESSURE", "1".into()),
            ],
        )
        .unwrap_err()
        .to_string();
        for want in [
            "transport (from DUALBUS_TRANSPORT) = \"kafka\": expected \"memory\" (also \"embedded\") or \"redis\"",
            "delivery.backpressure (from DUALBUS_BACKPRESSURE): expected a string, got the number 1",
            "failover.enabled: expected a string, got true",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
        let c = parse(
            "transport = \"embedded\"\n[delivery]\nbackpressure = \"drop-oldest\"\n\
             [failover]\nenabled = \"off\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.transport, TransportKind::Memory);
        assert_eq!(c.transport.to_string(), "memory");
        assert!(c.transport_is_set());
        assert_eq!(c.backpressure(), Backpressure::DropOldest);
        assert_eq!(c.failover.enabled, FailoverMode::Off);
    }

    #[test]
    fn environment_overrides_the_file_and_is_named_in_errors() {
        let c = parse(
            "[md]\nurl = \"redis://a:1\"",
            &[
                ("DUALBUS_MD_URL", "redis://b:2".into()),
                ("DUALBUS_QUEUE_BOUND", "7".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.md.url, "redis://b:2");
        assert_eq!(c.delivery.queue_bound, 7);

        let err = parse("", &[("DUALBUS_MODE", "sloppy".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.mode (from DUALBUS_MODE)"), "{err}");
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\ntransport")
            .expect("README has the config example")
            + 8;
        let end = start + readme[start..].find("```").expect("closed block");
        let cfg = parse(&readme[start..end], &[]).unwrap();
        assert_eq!(cfg.failover.window, 10_000);
        assert_eq!(cfg.routes.get("my_quotes").map(String::as_str), Some("md"));
    }

    #[test]
    fn every_wrong_type_is_reported_at_once_by_its_dotted_key() {
        let text = r#"
            transport = 3
            colour = "blue"
            [md]
            maxlen = "big"
            [delivery]
            queue_bound = "lots"
            max_deliveries = -1
            mode = "sometimes"
            [failover]
            window = true
            [routes]
            my_quotes = 1
        "#;
        let err = parse(text, &[]).unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err}")
        };
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for want in [
            "transport: expected a string, got the number 3",
            "md.maxlen: expected a whole number (0 or more), got the string \"big\"",
            "delivery.queue_bound: expected a whole number (0 or more), got the string \"lots\"",
            "delivery.max_deliveries: expected a whole number (0 or more), got the number -1",
            "failover.window: expected a whole number (0 or more), got true",
            "routes.my_quotes: expected a string, got the number 1",
            "delivery.mode = \"sometimes\": expected \"reliable\" or \"fast\"",
        ] {
            assert!(
                lines.iter().any(|l| l == want),
                "missing {want:?} in {lines:#?}"
            );
        }
        let colour = lines.iter().find(|l| l.starts_with("colour")).unwrap();
        assert!(
            colour.starts_with("colour: unknown key; known keys: transport, prefix,"),
            "{colour}"
        );
        assert_eq!(problems.len(), 8, "{lines:#?}");

        let err = parse("", &[("DUALBUS_QUEUE_BOUND", "lots".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery.queue_bound (from DUALBUS_QUEUE_BOUND): expected a whole"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_keys_of_its_section() {
        let err = parse("[md]\nport = 6380\n[risk]\nmax_drawdown = 0.1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "md.port: unknown key; known keys: url, maxlen, connect_timeout_ms, max_payload_bytes"
            ),
            "{err}"
        );
        assert!(err.contains("risk: unknown key; known keys: "), "{err}");
        assert!(!err.contains("max_drawdown = "), "{err}");
    }

    #[test]
    fn every_known_key_is_known() {
        for (section, keys) in KNOWN_KEYS {
            for key in *keys {
                let text = if section.is_empty() {
                    format!("{key} = 1\n")
                } else {
                    format!("[{section}]\n{key} = 1\n")
                };
                if let Err(ConfigError::Invalid(problems)) = parse(&text, &[]) {
                    assert!(
                        problems
                            .iter()
                            .all(|p| !p.reason.starts_with("unknown key")),
                        "{section}.{key}: {problems:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn serde_errors_are_explained_in_words() {
        assert_eq!(
            explain_serde_error(
                "invalid type: string \"x\", expected f64",
                "the string \"x\""
            ),
            "expected a number, got the string \"x\""
        );
        assert_eq!(
            explain_serde_error(
                "unknown field `port`, expected one of `bind`, `max_clients`",
                "1"
            ),
            "unknown key; known keys: bind, max_clients"
        );
        assert_eq!(
            explain_serde_error("something else\nmore", "1"),
            "something else"
        );
    }
}
