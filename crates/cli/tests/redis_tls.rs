//! TLS end to end: the certificates of `dualbus redis acl --tls` (the ones `redis up --tls`
//! makes), two real servers that speak TLS only and require a client certificate, and the
//! whole system over `rediss://` with the per-engine users on. A plain connection and a TLS
//! one without the client certificate are refused. Needs `redis-server` on the PATH.

use dualbus_bus::{BusId, Config, DualBus, TransportKind};
use dualbus_core::{EventKind, Priority};
use dualbus_testkit::RedisServer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dualbus(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .current_dir(dir)
        .env_remove("DUALBUS_REDIS_PASSWORD")
        .env_remove("DUALBUS_REDIS_SECRETS")
        .output()
        .expect("run dualbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Setup {
    /// The working directory; `.dualbus/redis` in it holds the users, passwords, certificates.
    dir: PathBuf,
    md: RedisServer,
    logic: RedisServer,
}

impl Setup {
    fn start(name: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("dualbus-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ok, _, err) = dualbus(&dir, &["redis", "acl", "--tls"]);
        assert!(ok, "{err}");
        let redis = dir.join(".dualbus/redis");
        let tls = redis.join("tls");
        let acl = redis.join("users.acl");
        let start = || {
            RedisServer::start_tls(
                &tls.join("server.crt"),
                &tls.join("server.key"),
                &tls.join("ca.crt"),
                &["--aclfile", acl.to_str().unwrap()],
            )
            .unwrap_or_else(|e| panic!("this test needs redis-server with TLS on the PATH: {e}"))
        };
        Setup {
            md: start(),
            logic: start(),
            dir,
        }
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(".dualbus/redis").join(rel)
    }

    /// The config of user `user` over TLS, with the client certificate unless `no_client`.
    fn config_as(&self, user: &str, no_client: bool) -> Config {
        let password = std::fs::read_to_string(self.file(&format!("secrets/{user}"))).unwrap();
        let with = |url: String| url.replace("://", &format!("://{user}:{}@", password.trim()));
        let mut cfg = Config::default();
        cfg.transport = TransportKind::Redis;
        cfg.md.url = with(self.md.url());
        cfg.logic.url = with(self.logic.url());
        cfg.tls.ca_file = Some(self.file("tls/ca.crt"));
        if !no_client {
            cfg.tls.cert_file = Some(self.file("tls/client.crt"));
            cfg.tls.key_file = Some(self.file("tls/client.key"));
        }
        cfg
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_system_runs_over_tls_with_its_users_and_finds_the_certificates_itself() {
    let s = Setup::start("run");
    assert!(s.md.url().starts_with("rediss://"));
    let report = s.dir.join("run.json");
    // From the directory `redis acl` ran in: the passwords and the certificates are found.
    let (ok, out, err) = dualbus(
        &s.dir,
        &[
            "run",
            "--backend",
            "redis",
            "--md-url",
            &s.md.url(),
            "--logic-url",
            &s.logic.url(),
            "--duration",
            "5s",
            "--speed",
            "3000x",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--quiet",
            "--port",
            "0",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let published = |e: &str, k: &str| r["engines"][e]["published"][k].as_u64().unwrap_or(0);
    let received = |e: &str, k: &str| r["engines"][e]["received"][k].as_u64().unwrap_or(0);
    assert!(published("marketdata", "market_data") > 1000, "{r}");
    assert!(received("features", "market_data") > 1000, "{r}");
    assert!(published("features", "feature_vector") > 0, "{r}");
    // `redis status` as the operator, over TLS.
    let (ok, out, err) = dualbus(
        &s.dir,
        &[
            "redis",
            "status",
            "--md-url",
            &s.md.url(),
            "--logic-url",
            &s.logic.url(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("reachable") && out.contains("dualbus:md:market_data"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_connections_and_clients_without_a_certificate_are_refused() {
    let s = Setup::start("refused");
    // The hub's user over TLS with the client certificate: publishes.
    let hub = DualBus::connect("marketdata", s.config_as("marketdata", false))
        .await
        .expect("TLS with a client certificate");
    let env = hub
        .envelope(
            EventKind::MarketData,
            "market_data.trade.BTCUSDT",
            Priority::Normal,
            &serde_json::json!({"price": 1.0}),
        )
        .unwrap();
    hub.publish_confirmed(env)
        .await
        .expect("published over TLS");
    assert_eq!(hub.counters(BusId::MarketData).refused, 0);
    // Without the client certificate: the server ends the handshake.
    let mut cfg = s.config_as("marketdata", true);
    cfg.md.connect_timeout_ms = 2000;
    assert!(DualBus::connect("marketdata", cfg).await.is_err());
    // Plain TCP to the TLS port: no answer a client can use.
    let mut cfg = s.config_as("marketdata", false);
    cfg.md.url = cfg.md.url.replace("rediss://", "redis://");
    cfg.md.connect_timeout_ms = 2000;
    assert!(DualBus::connect("marketdata", cfg).await.is_err());
    // A CA file that is not PEM: an error naming it, before connecting.
    let mut cfg = s.config_as("marketdata", false);
    let bad = s.dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    cfg.tls.ca_file = Some(bad.clone());
    let err = DualBus::connect("marketdata", cfg)
        .await
        .err()
        .expect("a bad CA file")
        .to_string();
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("no PEM certificate"),
        "{err}"
    );
}
