//! The Redis users of `dualbus redis up` (`dualbus redis acl` writes the same files) on real
//! servers: each engine may append only the kinds it declares, a refused publish fails with
//! an error naming the engine, the kind and the rule, is counted, and nothing else breaks;
//! no engine user may administer the server; a client without credentials can do nothing.
//! Needs `redis-server` on the PATH (CI installs it).

use dualbus_bus::{BusError, BusId, Config, DualBus, TransportKind};
use dualbus_core::{EventKind, Priority};
use dualbus_testkit::RedisServer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dualbus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .output()
        .expect("run dualbus")
}

/// Two servers with the ACL file of `dualbus redis acl --dir DIR`.
struct Servers {
    dir: PathBuf,
    md: RedisServer,
    logic: RedisServer,
}

impl Servers {
    /// `name`: the test's, for a directory of its own.
    fn start(name: &str) -> Servers {
        let dir = std::env::temp_dir().join(format!("dualbus-acl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dualbus(&["redis", "acl", "--dir", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let acl = dir.join("users.acl");
        let acl = acl.to_str().unwrap();
        let start = || {
            RedisServer::start_with(&["--aclfile", acl]).unwrap_or_else(|e| {
                panic!(
                    "this test needs redis-server on the PATH (apt-get install redis-server): {e}"
                )
            })
        };
        Servers {
            md: start(),
            logic: start(),
            dir,
        }
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join("secrets").join(user))
            .expect("a password file")
            .trim()
            .to_string()
    }

    /// `url` with `user`'s credentials.
    fn url_as(&self, url: &str, user: &str) -> String {
        url.replace(
            "redis://",
            &format!("redis://{user}:{}@", self.password(user)),
        )
    }

    /// The buses' config for Redis user `user`.
    fn config_as(&self, user: &str) -> Config {
        let mut cfg = Config::default();
        cfg.transport = TransportKind::Redis;
        cfg.md.url = self.url_as(&self.md.url(), user);
        cfg.logic.url = self.url_as(&self.logic.url(), user);
        cfg
    }

    fn raw(&self, user: Option<&str>) -> redis::Connection {
        let url = match user {
            Some(u) => self.url_as(&self.md.url(), u),
            None => self.md.url(),
        };
        redis::Client::open(url)
            .unwrap()
            .get_connection()
            .expect("a connection")
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_acl_files_are_private_and_hold_no_password() {
    let servers = Servers::start("files");
    let acl = std::fs::read_to_string(servers.dir.join("users.acl")).unwrap();
    assert_eq!(mode(&servers.dir.join("users.acl")), 0o600);
    assert_eq!(mode(&servers.dir.join("secrets")), 0o700);
    for user in ["marketdata", "features", "risk", "system", "admin"] {
        let path = servers.dir.join("secrets").join(user);
        assert_eq!(mode(&path), 0o600, "{user}");
        let password = servers.password(user);
        assert_eq!(password.len(), 64, "{user}");
        assert!(
            !acl.contains(&password),
            "{user}'s password is in users.acl"
        );
    }
    // Written again, the passwords stay; rotated, they change.
    let before = servers.password("features");
    let dir = servers.dir.to_str().unwrap();
    assert!(dualbus(&["redis", "acl", "--dir", dir]).status.success());
    assert_eq!(servers.password("features"), before);
    assert!(
        dualbus(&["redis", "acl", "--dir", dir, "--rotate-passwords"])
            .status
            .success()
    );
    assert_ne!(servers.password("features"), before);
}

#[test]
fn no_engine_user_may_administer_the_server_and_no_client_may_skip_authentication() {
    let servers = Servers::start("admin");
    let mut anonymous = servers.raw(None);
    let e = redis::cmd("XLEN")
        .arg("dualbus:md:market_data")
        .query::<i64>(&mut anonymous)
        .expect_err("no credentials");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    for user in ["features", "marketdata", "risk", "system"] {
        let mut c = servers.raw(Some(user));
        for (cmd, args) in [
            ("FLUSHALL", vec![]),
            ("CONFIG", vec!["SET", "maxmemory", "1"]),
            ("KEYS", vec!["*"]),
            ("DEL", vec!["dualbus:md:market_data"]),
            ("SHUTDOWN", vec![]),
        ] {
            let e = redis::cmd(cmd)
                .arg(&args)
                .query::<redis::Value>(&mut c)
                .expect_err("refused");
            assert_eq!(e.code(), Some("NOPERM"), "{user} {cmd}: {e}");
        }
    }
    // The operator may.
    let mut admin = servers.raw(Some("admin"));
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut admin)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_appends_only_the_kinds_it_declares_and_a_refusal_breaks_nothing() {
    let servers = Servers::start("append");
    let json = serde_json::json!({"price": 1.0});
    let features = DualBus::connect("features", servers.config_as("features"))
        .await
        .expect("features connects as its user");
    let send = |bus: &DualBus, kind: EventKind, topic: &str| {
        let env = bus.envelope(kind, topic, Priority::Normal, &json).unwrap();
        let bus = bus.clone();
        async move { bus.publish_confirmed(env).await }
    };
    // Market data and orders from the features engine's user: refused by the broker.
    for (kind, topic, bus, stream) in [
        (
            EventKind::MarketData,
            "market_data.trade.BTCUSDT",
            BusId::MarketData,
            "dualbus:md:market_data",
        ),
        (
            EventKind::OrderRequest,
            "order_request.BTCUSDT",
            BusId::Logic,
            "dualbus:logic:order_request",
        ),
    ] {
        let err = send(&features, kind.clone(), topic)
            .await
            .expect_err("refused by the ACL");
        assert!(matches!(err, BusError::Publish { .. }), "{err:?}");
        let text = err.to_string();
        let refused = format!("refused {kind} from features (features-1) on {stream}");
        for part in [
            refused.as_str(),
            "no permissions to access one of the keys",
            "the Redis user of features may not append to",
            "an engine appends only the kinds it declares",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(features.counters(bus).refused, 1, "{kind}");
    }
    // Its own kind still goes through, on the same connections.
    send(
        &features,
        EventKind::FeatureVector,
        "feature_vector.BTCUSDT",
    )
    .await
    .expect("feature vectors are the features engine's");
    // The refusals took no bus down (no failover to the other server).
    for b in [BusId::MarketData, BusId::Logic] {
        assert!(features.failover_counters(b).up, "{b} failed over");
    }
    // The hub may publish market data and executions, not orders.
    let hub = DualBus::connect("marketdata", servers.config_as("marketdata"))
        .await
        .expect("the hub connects as its user");
    send(&hub, EventKind::MarketData, "market_data.trade.BTCUSDT")
        .await
        .expect("market data is the hub's");
    send(&hub, EventKind::TradeExecution, "trade_execution.BTCUSDT")
        .await
        .expect("executions are the hub's");
    assert!(send(&hub, EventKind::OrderRequest, "order_request.BTCUSDT")
        .await
        .is_err());
    // Risk may send orders, and its critical alerts take the priority lane.
    let risk = DualBus::connect("risk", servers.config_as("risk"))
        .await
        .expect("risk connects as its user");
    send(&risk, EventKind::OrderRequest, "order_request.BTCUSDT")
        .await
        .expect("orders are Risk's");
    let alert = risk
        .envelope(
            EventKind::RiskAlert,
            "risk_alert.book",
            Priority::Critical,
            &json,
        )
        .unwrap();
    risk.publish_confirmed(alert).await.expect("risk alerts");
    // What reached the streams: exactly the allowed messages.
    let mut admin = servers.raw(Some("admin"));
    let len = |c: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("XLEN").arg(key).query(c).unwrap()
    };
    assert_eq!(len(&mut admin, "dualbus:md:market_data"), 1);
    assert_eq!(len(&mut admin, "dualbus:md:trade_execution"), 1);
    assert_eq!(
        len(&mut admin, "dualbus:logic:feature_vector"),
        0,
        "on the other server"
    );
    let mut admin_logic = redis::Client::open(servers.url_as(&servers.logic.url(), "admin"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(len(&mut admin_logic, "dualbus:logic:feature_vector"), 1);
    assert_eq!(len(&mut admin_logic, "dualbus:logic:order_request"), 1);
    assert_eq!(len(&mut admin_logic, "dualbus:logic:priority"), 1);
}

#[test]
fn a_wrong_password_or_none_is_an_error_saying_where_credentials_come_from() {
    let servers = Servers::start("auth");
    let (md, logic) = (servers.md.url(), servers.logic.url());
    let empty = servers.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dualbus"));
        cmd.args([
            "engine",
            "features",
            "--backend",
            "redis",
            "--md-url",
            &md,
            "--logic-url",
            &logic,
            "--duration",
            "1s",
        ])
        .args(extra)
        .env_remove("DUALBUS_REDIS_PASSWORD")
        .env_remove("DUALBUS_REDIS_SECRETS")
        .current_dir(&servers.dir);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run dualbus engine");
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let wrong = run(&[], Some(("DUALBUS_REDIS_PASSWORD", "not-the-password")));
    assert!(wrong.contains("refused the credentials"), "{wrong}");
    assert!(wrong.contains("--redis-secrets"), "{wrong}");
    assert!(
        !wrong.contains("not-the-password"),
        "the password is printed: {wrong}"
    );
    let missing = run(&["--redis-secrets", empty.to_str().unwrap()], None);
    assert!(
        missing.contains("no Redis password for user \"features\"") && missing.contains("empty"),
        "{missing}"
    );
    // With none at all (the directory has no .dualbus/redis/secrets): the server asks.
    let none = run(&[], None);
    assert!(
        none.contains("NOAUTH") && none.contains("refused the credentials"),
        "{none}"
    );
}

/// An engine's user may count what a trim took from its group before it read it (the check is
/// a script: `EVALSHA`, and inside it `XINFO STREAM`, `XRANGE`, `XGROUP SETID` and `HINCRBY`
/// of `{stream}#trimmed`). Without those rules the check is refused and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_user_counts_what_a_trim_took_from_its_group() {
    let servers = Servers::start("trim");
    let stream = "dualbus:logic:strategy_signal";
    let mut admin_logic = redis::Client::open(servers.url_as(&servers.logic.url(), "admin"))
        .unwrap()
        .get_connection()
        .unwrap();
    // Risk subscribes as its own user (making its group), then goes away; 3000 signals go by
    // a stream kept to about 1000.
    let risk = DualBus::connect("risk", servers.config_as("risk"))
        .await
        .expect("risk connects as its user");
    let subscribe = |got: std::sync::Arc<std::sync::atomic::AtomicU64>| {
        risk.subscribe(
            dualbus_bus::SubscribeOptions::new("risk", &["strategy_signal.>"]).unwrap(),
            dualbus_bus::handler_fn(move |_| {
                got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }),
        )
    };
    subscribe(Default::default()).await.unwrap().stop().await;
    let mut cfg = servers.config_as("admin");
    cfg.logic.maxlen = 1000;
    cfg.delivery.queue_bound = 1000;
    let publisher = DualBus::connect("strategy", cfg).await.unwrap();
    for n in 0..3000u64 {
        let env = publisher
            .envelope(
                EventKind::StrategySignal,
                "strategy_signal.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({ "n": n }),
            )
            .unwrap();
        if n == 2999 {
            publisher.publish_confirmed(env).await.unwrap();
        } else {
            publisher.publish_envelope(env).await.unwrap();
        }
    }
    let left: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query(&mut admin_logic)
        .unwrap();
    assert!(left < 3000, "trimmed: {left} left");
    // Risk comes back: the check runs before its first read, so by the time it has been given
    // what is left, the rest is counted.
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let _sub = subscribe(got.clone()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while got.load(std::sync::atomic::Ordering::Relaxed) < left {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("risk is given what is left");
    assert_eq!(got.load(std::sync::atomic::Ordering::Relaxed), left);
    assert_eq!(risk.counters(BusId::Logic).trimmed_unread, 3000 - left);
    let recorded: u64 = redis::cmd("HGET")
        .arg(format!("{{{stream}}}#trimmed"))
        .arg("risk")
        .query(&mut admin_logic)
        .unwrap();
    assert_eq!(recorded, 3000 - left);
}

/// An engine's user may enforce a `drop_oldest` bound when it publishes (a script: `EVALSHA`,
/// and inside it `XPENDING`, `XACK`, `XINFO`, `XRANGE`, `XGROUP SETID` on the stream it
/// writes): its publishes go through and the oldest messages are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_user_drops_the_oldest_at_a_bound() {
    let servers = Servers::start("dropoldest");
    let risk = DualBus::connect("risk", servers.config_as("risk"))
        .await
        .expect("risk connects as its user");
    let _sub = risk
        .subscribe(
            dualbus_bus::SubscribeOptions::new("risk", &["strategy_signal.>"])
                .unwrap()
                .bound(10, dualbus_core::Backpressure::DropOldest),
            dualbus_bus::handler_fn(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                Ok(())
            }),
        )
        .await
        .unwrap();
    let strategy = DualBus::connect("strategy", servers.config_as("strategy"))
        .await
        .expect("strategy connects as its user");
    for n in 0..200u64 {
        let env = strategy
            .envelope(
                EventKind::StrategySignal,
                "strategy_signal.BTCUSDT",
                Priority::Normal,
                &serde_json::json!({ "n": n }),
            )
            .unwrap();
        strategy
            .publish_confirmed(env)
            .await
            .expect("the strategy's user may enforce the bound");
    }
    assert!(strategy.counters(BusId::Logic).dropped > 0);
    assert_eq!(strategy.counters(BusId::Logic).refused, 0);
}
