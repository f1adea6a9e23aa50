//! One module per verb, plus what they share: global flags and the configuration.

pub mod acl;
pub mod backtest;
pub mod bench;
pub mod certs;
pub mod dlq;
pub mod hub;
pub mod inspect;
pub(crate) mod plot;
pub mod progress;
pub mod provider;
pub mod publish;
pub mod redis;
pub mod redis_cluster;
pub mod run;
pub mod schema;
pub mod soak;
pub mod stats;
pub mod stop;
pub mod stress;
pub mod summary;
pub mod tail;
pub mod vpin;

use anyhow::{bail, Context};
use clap::Args;
use dualbus_bus::{BusError, BusId, Config, ConfigError, DualBus, TransportKind};
use dualbus_engines::provider::replay::{ReplayOptions, ReplayProvider};
use dualbus_engines::provider::ProviderError;
use dualbus_engines::system::ENGINES;
use dualbus_redis::ConnectError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Flags every verb takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Config file (default: ./dualbus.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// MarketData bus address (also DUALBUS_MD_URL or `[md] url`; default redis://127.0.0.1:6380).
    #[arg(long, global = true, value_name = "URL")]
    pub md_url: Option<String>,
    /// Engine Logic bus address (also DUALBUS_LOGIC_URL or `[logic] url`; default redis://127.0.0.1:6381).
    #[arg(long, global = true, value_name = "URL")]
    pub logic_url: Option<String>,
    /// Where the Redis passwords are, one file per user (also DUALBUS_REDIS_SECRETS; default
    /// .dualbus/redis/secrets when it exists, as `dualbus redis up` writes them). Used when a
    /// bus URL names no user and DUALBUS_REDIS_PASSWORD is not set.
    #[arg(long, global = true, value_name = "DIR")]
    pub redis_secrets: Option<PathBuf>,
}

impl Global {
    /// The configuration: file, then environment, then these flags; validated.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load(self.config.as_deref()).map_err(engine_sections)?;
        if let Some(u) = &self.md_url {
            cfg.md.url = u.clone();
        }
        if let Some(u) = &self.logic_url {
            cfg.logic.url = u.clone();
        }
        let problems = cfg.problems();
        if !problems.is_empty() {
            bail!(
                "invalid settings:\n{}",
                problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(cfg)
    }

    /// The configuration with the Redis transport, as the operator (`admin`), for the verbs
    /// that inspect or drive running buses.
    pub fn redis_config(&self) -> anyhow::Result<Config> {
        let mut cfg = self.config()?;
        cfg.transport = TransportKind::Redis;
        self.authenticate(&mut cfg, acl::ADMIN)?;
        Ok(cfg)
    }

    /// For `rediss://` buses with no `[tls]` files: the certificates `dualbus redis up --tls`
    /// made, in the directory of the secrets (`.dualbus/redis/tls/` by default) when they are
    /// there.
    fn find_tls(&self, cfg: &mut Config) -> anyhow::Result<()> {
        let tls_urls = [&cfg.md.url, &cfg.logic.url]
            .iter()
            .any(|u| u.starts_with("rediss://"));
        let t = &cfg.tls;
        if !tls_urls || t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some() {
            return Ok(());
        }
        let dir = match self.secrets_dir()? {
            Some(secrets) => secrets.parent().map(PathBuf::from).unwrap_or_default(),
            None => PathBuf::from(".dualbus/redis"),
        };
        let files = certs::TlsFiles::in_dir(&dir);
        if files.exist() {
            cfg.tls.ca_file = Some(files.ca);
            cfg.tls.cert_file = Some(files.client_cert);
            cfg.tls.key_file = Some(files.client_key);
        }
        Ok(())
    }

    /// The directory of the Redis passwords: `--redis-secrets`, else DUALBUS_REDIS_SECRETS
    /// (either must exist), else `.dualbus/redis/secrets` when it exists.
    fn secrets_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        let given = self.redis_secrets.clone().or_else(|| {
            std::env::var_os("DUALBUS_REDIS_SECRETS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match given {
            Some(dir) if dir.is_dir() => Ok(Some(dir)),
            Some(dir) => bail!(
                "the Redis secrets directory {} does not exist (--redis-secrets or \
                 DUALBUS_REDIS_SECRETS); `dualbus redis up --dir D` writes D/secrets",
                dir.display()
            ),
            None => {
                let default = PathBuf::from(".dualbus/redis").join(acl::SECRETS);
                Ok(default.is_dir().then_some(default))
            }
        }
    }

    /// Puts Redis credentials for `user` into the bus URLs of `cfg` (for a verb about to use
    /// the Redis transport): a URL that names a user or password keeps it; else DUALBUS_REDIS_PASSWORD (as
    /// DUALBUS_REDIS_USER, default `user`); else the password file `user` of the secrets
    /// directory; else none (a server without ACLs).
    ///
    /// # Errors
    /// A secrets directory without a file for `user`, naming both.
    pub fn authenticate(&self, cfg: &mut Config, user: &str) -> anyhow::Result<()> {
        self.find_tls(cfg)?;
        let from_env = std::env::var("DUALBUS_REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty());
        let credentials = match from_env {
            Some(password) => {
                let name = std::env::var("DUALBUS_REDIS_USER")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| user.to_string());
                Some((name, password))
            }
            None => match self.secrets_dir()? {
                None => None,
                Some(dir) => {
                    let path = dir.join(user);
                    let password = std::fs::read_to_string(&path).map_err(|e| {
                        anyhow::anyhow!(
                            "no Redis password for user {user:?}: cannot read {} ({e}); \
                             `dualbus redis up` writes one file per engine, `system` and `admin`",
                            path.display()
                        )
                    })?;
                    Some((user.to_string(), password.trim().to_string()))
                }
            },
        };
        let Some((name, password)) = credentials else {
            return Ok(());
        };
        for url in [&mut cfg.md.url, &mut cfg.logic.url] {
            let shown = dualbus_core::redact_url(url);
            if dualbus_redis::is_cluster_url(url) {
                // `redis+cluster://a:1,b:2` is no URL a parser takes: insert the credentials,
                // percent-encoded as in any URL, before the node list.
                let (scheme, rest) = url.split_once("://").expect("a cluster URL");
                let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
                if authority.contains('@') {
                    continue;
                }
                let mut probe = url::Url::parse("redis://h").expect("a valid URL");
                probe
                    .set_username(&name)
                    .and_then(|()| probe.set_password(Some(&password)))
                    .map_err(|()| anyhow::anyhow!("bus address {shown} cannot take a user"))?;
                *url = format!(
                    "{scheme}://{}:{}@{rest}",
                    probe.username(),
                    probe.password().unwrap_or("")
                );
                continue;
            }
            let mut parsed = url::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("bad bus address {shown}: {e}"))?;
            if !parsed.username().is_empty() || parsed.password().is_some() {
                continue;
            }
            parsed
                .set_username(&name)
                .and_then(|()| parsed.set_password(Some(&password)))
                .map_err(|()| anyhow::anyhow!("bus address {shown} cannot take a user"))?;
            *url = parsed.to_string();
        }
        Ok(())
    }
}

/// A config file with a section named after an engine (`[risk]`): those settings are not
/// read from the file, so the "unknown key" says where they go.
fn engine_sections(e: ConfigError) -> ConfigError {
    let ConfigError::Invalid(mut problems) = e else {
        return e;
    };
    for p in &mut problems {
        if ENGINES.contains(&p.key.as_str()) && p.reason.starts_with("unknown key") {
            p.reason = format!(
                "unknown key: engine settings are not read from the config file; `dualbus run`, \
                 `backtest` and `engine` take them as --settings '{{\"{}\": {{...}}}}'",
                p.key
            );
        }
    }
    ConfigError::Invalid(problems)
}

/// Where a long-running verb serves `/metrics`, `/healthz` and `/readyz` on a port of its own.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (with /healthz and /readyz);
    /// off unless given (`dualbus run` also serves them on its dashboard's port).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// The address the metrics port listens on (0.0.0.0 to let a Prometheus on another
    /// host scrape it).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub metrics_host: String,
}

impl MetricsArgs {
    /// Starts the metrics server when `--metrics-port` was given; prints where it listens
    /// unless `quiet`.
    ///
    /// # Errors
    /// The address cannot be listened on (the message names it and the flag).
    pub async fn serve(
        &self,
        metrics: &std::sync::Arc<dualbus_engines::metrics::BusMetrics>,
        quiet: bool,
    ) -> anyhow::Result<Option<dualbus_engines::telemetry::MetricsServer>> {
        let Some(port) = self.metrics_port else {
            return Ok(None);
        };
        let bind = if self.metrics_host.contains(':') {
            format!("[{}]:{port}", self.metrics_host)
        } else {
            format!("{}:{port}", self.metrics_host)
        };
        let server = dualbus_engines::telemetry::MetricsServer::start(&bind, metrics.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}: pick another with --metrics-port"))?;
        if !quiet {
            eprintln!("metrics: http://{}/metrics", server.addr());
        }
        Ok(Some(server))
    }
}

/// An error and its causes on one line, `outer: cause: cause`, each cause once.
///
/// Many error types print their source in their own message as well as returning it from
/// `source()` (a `redis::RedisError` wrapping an I/O error, a `thiserror` type with
/// `{source}` in its format): a cause whose text the line already holds is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// How every verb that needs the Redis buses ends its error when one does not answer.
pub const START_HINT: &str =
    "start them with `dualbus redis up`, or point --md-url/--logic-url at running servers";

/// `e`, from reaching a Redis bus, as the verbs print it: what failed, then [`START_HINT`].
pub fn unreachable(e: impl Into<anyhow::Error>) -> anyhow::Error {
    let line = error_line(&e.into());
    if line.contains(AUTH_HINT) {
        // The server is there: it refused the credentials, and the line says so.
        return anyhow::anyhow!("{line}");
    }
    anyhow::anyhow!("the Redis buses are not reachable: {line}; {START_HINT}")
}

/// How every verb ends its error when a Redis bus refuses its credentials.
pub const AUTH_HINT: &str = "the dualbus commands take a Redis user and password from the bus \
     URL (redis://USER:PASSWORD@host:port), else DUALBUS_REDIS_PASSWORD (and DUALBUS_REDIS_USER), \
     else the password files `dualbus redis up` writes (.dualbus/redis/secrets, found from the \
     directory it ran in; elsewhere --redis-secrets DIR or DUALBUS_REDIS_SECRETS)";

/// Connects the buses of `cfg` as engine `src`; a Redis bus that does not answer is
/// [`unreachable`], one that refuses the credentials says where they come from.
pub async fn connect_buses(src: &str, cfg: Config) -> anyhow::Result<DualBus> {
    DualBus::connect(src, cfg).await.map_err(|e| match e {
        BusError::Connect(ConnectError::Unreachable { .. }) => unreachable(e),
        BusError::Connect(ConnectError::Refused { .. }) => anyhow::anyhow!("{e}; {AUTH_HINT}"),
        other => other.into(),
    })
}

/// Opens a replay file for a verb whose flags are `--format` and `--symbol` (`backtest`,
/// `hub`, `vpin`): an error says which of the two to give or change.
///
/// # Errors
/// The replay's, naming the file once.
pub fn open_replay(opts: ReplayOptions) -> anyhow::Result<ReplayProvider> {
    ReplayProvider::open(opts).map_err(|e| match e {
        ProviderError::Mismatch { message, option } => match option {
            "format" => {
                anyhow::anyhow!("{message}; is --format right? (binance, tardis or quotes)")
            }
            "symbol" => anyhow::anyhow!("{message}: give the symbol with --symbol"),
            other => anyhow::anyhow!("{message}; check --{other}"),
        },
        other => other.into(),
    })
}

/// A Tokio runtime for one command.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

/// Both buses with their names, for loops.
/// A redis-rs client for `url`, one of `cfg`'s buses, with the `[tls]` certificates when it is
/// a `rediss://` address.
///
/// # Errors
/// A bad URL or certificate file.
pub fn redis_client(cfg: &Config, url: &str) -> anyhow::Result<::redis::Client> {
    let info = ::redis::IntoConnectionInfo::into_connection_info(url)?;
    let tls = dualbus_bus::client::tls_config(cfg)?;
    Ok(dualbus_redis::client(info, tls.as_ref())?)
}

/// The name of `bus` people read (`MarketData`, `Engine Logic`).
pub fn bus_name(bus: BusId) -> &'static str {
    BUSES
        .iter()
        .find(|(b, _)| *b == bus)
        .map_or("?", |(_, n)| n)
}

pub const BUSES: [(BusId, &str); 2] = [
    (BusId::MarketData, "MarketData"),
    (BusId::Logic, "Engine Logic"),
];

/// Parses a duration such as `500ms`, `30s`, `5m`, `2h`, `1d` or a bare number of seconds.
///
/// # Errors
/// A message naming the bad value and the accepted forms.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => f64::NAN,
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && scale.is_finite() => {
            Ok(std::time::Duration::from_secs_f64(n * scale))
        }
        _ => bail!(
            "invalid duration {s:?}: expected a number with ms, s, m, h or d (e.g. 30s, 5m, 1d)"
        ),
    }
}

/// The `--settings` of `run` and `backtest`: a JSON object keyed by engine name.
///
/// # Errors
/// A message naming a key that is not an engine, or saying the text is not such an object.
pub fn parse_settings(s: Option<&str>) -> anyhow::Result<BTreeMap<String, Value>> {
    let Some(s) = s else {
        return Ok(Default::default());
    };
    let v: BTreeMap<String, Value> =
        serde_json::from_str(s).context("--settings must be a JSON object of engine names")?;
    if let Some(bad) = v.keys().find(|k| !ENGINES.contains(&k.as_str())) {
        bail!(
            "--settings names {bad:?}, which is not an engine; the engines are {}",
            ENGINES.join(", ")
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::{error_line, parse_duration};
    use anyhow::Context;
    use std::time::Duration;

    /// An error that prints its source in its message and also returns it as its source.
    #[derive(Debug)]
    struct SaysItsSource {
        source: std::io::Error,
    }

    impl std::fmt::Display for SaysItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read x.toml: {}", self.source)
        }
    }

    impl std::error::Error for SaysItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn every_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(SaysItsSource { source: io() });
        assert_eq!(error_line(&e), "cannot read x.toml: no such file");
        let e = Err::<(), _>(io())
            .context("loading the config")
            .unwrap_err();
        assert_eq!(error_line(&e), "loading the config: no such file");
    }

    #[test]
    fn durations_parse_and_bad_ones_name_the_value() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        let e = parse_duration("5 parsecs").unwrap_err().to_string();
        assert!(e.contains("\"5 parsecs\""), "{e}");
        assert!(parse_duration("-1s").is_err());
    }
}

/// A duration in nanoseconds for people: `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s` (JSON output
/// keeps the nanoseconds).
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn durations_and_times_read_as_people_write_them() {
        // Times are printed with the tearsheet's `iso8601`.
        assert_eq!(human_ns(850), "850 ns");
        assert_eq!(human_ns(12_345), "12.3 µs");
        assert_eq!(human_ns(4_560_000), "4.56 ms");
        assert_eq!(human_ns(1_234_000_000), "1.23 s");
        use dualbus_engines::tearsheet::iso8601 as iso_ns;
        assert_eq!(iso_ns(0), "1970-01-01T00:00:00.000Z");
        // 2021-01-08T00:00:01.250Z (the sample Binance file's day) and a leap day.
        assert_eq!(
            iso_ns(1_610_064_001_250_000_000),
            "2021-01-08T00:00:01.250Z"
        );
        assert_eq!(
            iso_ns(1_709_164_800_000_000_000),
            "2024-02-29T00:00:00.000Z"
        );
    }
}
