//! `dualbus dlq list|show|replay` on real dead letters: a consumer group whose handler fails
//! until told otherwise, and an entry published by hand that does not parse, each dead-lettered
//! by the library as in production; then the `dualbus` binary lists, shows and replays them,
//! and the consumers get the replays. Needs `redis-server` on the PATH (CI installs it); every
//! server is started here, on free ports, and killed when the test ends.

use dualbus_bus::Router;
use dualbus_bus::{handler_fn, Config, DualBus, HandlerError, SubscribeOptions, TransportKind};
use dualbus_core::partition::slot_of;
use dualbus_core::{EventKind, Priority, StartFrom};
use dualbus_testkit::{RedisCluster, RedisServer};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound on waiting for something the test caused (a guard against a hang, not a
/// measurement).
const LIMIT: Duration = Duration::from_secs(60);

fn redis_server(args: &[&str]) -> RedisServer {
    RedisServer::start_with(args).unwrap_or_else(|e| {
        panic!("this test needs redis-server on the PATH (apt-get install redis-server): {e}")
    })
}

/// What a `dualbus` run printed.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit ok: {}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// How the tests run the binary: on two buses, from a directory of its own (no password files
/// found by accident), with the environment given.
struct Cli {
    md: String,
    logic: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(name: &str, md: String, logic: String) -> Cli {
        let dir = std::env::temp_dir().join(format!("dualbus-dlq-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the test");
        Cli {
            md,
            logic,
            dir,
            env: Vec::new(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dualbus"))
            .args(["--md-url", &self.md, "--logic-url", &self.logic])
            .args(args)
            .env_remove("DUALBUS_REDIS_PASSWORD")
            .env_remove("DUALBUS_REDIS_SECRETS")
            .env_remove("DUALBUS_MD_URL")
            .env_remove("DUALBUS_LOGIC_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .output()
            .await
            .expect("run dualbus");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A run that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.ok, "dualbus {}: {out}", args.join(" "));
        out.stdout
    }

    /// `dlq list --json ARGS`, parsed.
    async fn letters(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["dlq", "list", "--json"];
        all.extend_from_slice(args);
        self.ok(&all)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until `dlq list --json ARGS` shows `n` dead letters; returns them.
    async fn wait_letters(&self, n: usize, args: &[&str]) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let letters = self.letters(args).await;
            if letters.len() >= n {
                assert_eq!(letters.len(), n, "{letters:?}");
                return letters;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{} of {n} dead letters came: {letters:?}",
                letters.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(md: &str, logic: &str) -> Config {
    let mut cfg = Config::default();
    cfg.transport = TransportKind::Redis;
    cfg.md.url = md.to_string();
    cfg.logic.url = logic.to_string();
    cfg
}

/// What a consumer group's handler did: the `n` of every message it handled, and whether it
/// fails the messages `fails` selects.
#[derive(Clone, Default)]
struct Record {
    handled: Arc<Mutex<Vec<u64>>>,
    failing: Arc<AtomicBool>,
}

impl Record {
    fn handled(&self) -> Vec<u64> {
        let mut v = self.handled.lock().clone();
        v.sort_unstable();
        v
    }

    /// A subscription of `group` to `pattern` on `bus`: its handler fails the messages whose
    /// `n` `fails` selects while failing is on, with "price is NaN"; handled messages are
    /// recorded. At most `deliveries` deliveries, redelivered after 100 ms.
    async fn subscribe(
        &self,
        bus: &DualBus,
        group: &str,
        pattern: &str,
        deliveries: u32,
        fails: fn(u64) -> bool,
    ) -> dualbus_bus::Subscription {
        let (handled, failing) = (self.handled.clone(), self.failing.clone());
        let h = handler_fn(move |m| {
            let n = m.enc.to_json_value(&m.payload).expect("decodes")["n"]
                .as_u64()
                .unwrap_or(u64::MAX);
            if failing.load(Ordering::SeqCst) && fails(n) {
                return Err(HandlerError::from("price is NaN"));
            }
            handled.lock().push(n);
            Ok(())
        });
        let opts = SubscribeOptions::new(group, &[pattern])
            .expect("a pattern")
            .start(StartFrom::Oldest)
            .redelivery(Duration::from_millis(100), deliveries);
        bus.subscribe(opts, h).await.expect("subscribe")
    }
}

/// Waits until `cond` holds, failing with `what` after [`LIMIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn xlen(c: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(c)
        .await
        .expect("XLEN")
}

const SIGNALS: &str = "dualbus:logic:strategy_signal";
const LOGIC_DEAD: &str = "dualbus:logic:dead";

/// The ids of `letters`.
fn ids(letters: &[Value]) -> Vec<String> {
    letters
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_string())
        .collect()
}

/// A group whose handler fails three of five strategy signals has them dead-lettered after two
/// deliveries; `list` shows them with the reason, `show` prints one whole, `--dry-run` changes
/// nothing, an unknown id is an error naming it. Replayed (one by id, then the others with
/// `--all`, both with `--delete`), they reach every group of the stream: the group that gave up
/// handles each once, the group that had handled them drops them as duplicates; the dead-letter
/// stream is then empty and the counts printed match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_to_every_group() {
    let md = redis_server(&[]);
    let logic = redis_server(&[]);
    let cli = Cli::new("replay", md.url(), logic.url());
    let cfg = config(&md.url(), &logic.url());
    let consumer = DualBus::connect("risk", cfg.clone())
        .await
        .expect("connect");
    let risk = Record::default();
    risk.failing.store(true, Ordering::SeqCst);
    let _risk_sub = risk
        .subscribe(&consumer, "risk", "strategy_signal.>", 2, |n| {
            (1..=3).contains(&n)
        })
        .await;
    let audit = Record::default();
    let audit_sub = audit
        .subscribe(&consumer, "audit", "strategy_signal.>", 2, |_| false)
        .await;
    let publisher = DualBus::connect("strategy", cfg.clone())
        .await
        .expect("connect");
    for n in 0..5u64 {
        let env = publisher
            .envelope(
                EventKind::StrategySignal,
                "strategy_signal.BTCUSDT",
                Priority::Normal,
                &json!({ "n": n }),
            )
            .expect("an envelope");
        publisher.publish_confirmed(env).await.expect("publish");
    }

    // Listed: three, from the stream and group, with the handler's reason and the kind.
    let letters = cli.wait_letters(3, &[]).await;
    for l in &letters {
        assert_eq!(l["bus"], "logic", "{l}");
        assert_eq!(l["stream"], SIGNALS, "{l}");
        assert_eq!(l["group"], "risk", "{l}");
        assert_eq!(l["deliveries"], 2, "{l}");
        assert_eq!(l["kind"], "strategy_signal", "{l}");
        assert!(
            l["reason"].as_str().unwrap().contains("price is NaN"),
            "{l}"
        );
    }
    wait_until("the audit group handles all five", || {
        audit.handled() == vec![0, 1, 2, 3, 4]
    })
    .await;
    assert_eq!(risk.handled(), vec![0, 4]);
    let table = cli.ok(&["dlq", "list"]).await;
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("logic ")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (row, id) in rows.iter().zip(ids(&letters)) {
        for part in [
            id.as_str(),
            SIGNALS,
            " risk ",
            "strategy_signal",
            "price is NaN",
        ] {
            assert!(row.contains(part), "{part:?} not in {row}");
        }
    }
    assert!(table.contains("(3 dead letters;"), "{table}");
    assert_eq!(
        cli.letters(&["--group", "audit"]).await.len(),
        0,
        "--group filters"
    );
    assert_eq!(
        cli.letters(&["--bus", "md"]).await.len(),
        0,
        "--bus filters"
    );
    assert_eq!(cli.letters(&["--count", "2"]).await.len(), 2, "--count");

    // Shown whole: the dead-letter fields, the original fields, the message decoded.
    let first = ids(&letters)[0].clone();
    let shown = cli.ok(&["dlq", "show", &first]).await;
    for part in [
        format!("dead letter {first} of the Engine Logic bus"),
        "price is NaN".to_string(),
        SIGNALS.to_string(),
        "message (the fields parse; payload decoded)".to_string(),
    ] {
        assert!(shown.contains(&part), "{part:?} not in {shown}");
    }
    let shown: Value =
        serde_json::from_str(&cli.ok(&["dlq", "show", &first, "--json"]).await).expect("JSON");
    let n = shown["envelope"]["payload"]["n"].as_u64().expect("n");
    assert!((1..=3).contains(&n), "{shown}");
    assert_eq!(shown["fields"]["dead_group"], "risk", "{shown}");

    // Unknown and malformed ids, an unknown bus: errors naming the value; nothing changes.
    let out = cli.run(&["dlq", "show", "12345-0"]).await;
    assert!(!out.ok && out.stderr.contains("12345-0"), "{out}");
    let out = cli
        .run(&["dlq", "replay", &first, "99-0", "--delete"])
        .await;
    assert!(
        !out.ok && out.stderr.contains("no dead letter 99-0"),
        "{out}"
    );
    let out = cli.run(&["dlq", "show", "not-an-id"]).await;
    assert!(!out.ok && out.stderr.contains("\"not-an-id\""), "{out}");
    let out = cli.run(&["dlq", "replay", &first, "--group", "risk"]).await;
    assert!(
        !out.ok && out.stderr.contains("--group choose dead letters for --all"),
        "{out}"
    );
    let out = cli.run(&["dlq", "list", "--bus", "mdx"]).await;
    assert!(!out.ok && out.stderr.contains("\"mdx\""), "{out}");
    let mut redis = conn(&logic.url()).await;
    assert_eq!(xlen(&mut redis, LOGIC_DEAD).await, 3);

    // A dry run says what it would do and does nothing.
    let dry = cli
        .ok(&["dlq", "replay", "--all", "--delete", "--dry-run"])
        .await;
    assert!(
        dry.contains(&format!(
            "dry run, nothing changed: would replay 3 of 3 dead letters to {SIGNALS}, and would \
             delete them from {LOGIC_DEAD}"
        )),
        "{dry}"
    );
    assert_eq!(xlen(&mut redis, LOGIC_DEAD).await, 3);
    assert_eq!(xlen(&mut redis, SIGNALS).await, 5);

    // The handler is fixed; one letter goes back by id.
    risk.failing.store(false, Ordering::SeqCst);
    let one = cli.ok(&["dlq", "replay", &first, "--delete"]).await;
    assert!(
        one.contains(&format!(
            "replayed 1 of 1 dead letter to {SIGNALS}, and deleted them from {LOGIC_DEAD}"
        )),
        "{one}"
    );
    // The note names the stream's other group, which gets the replay too.
    assert!(one.contains("its other groups now: audit"), "{one}");
    wait_until("risk handles the replayed message", || {
        risk.handled().len() == 3
    })
    .await;
    assert_eq!(risk.handled(), {
        let mut v = vec![0, 4, n];
        v.sort_unstable();
        v
    });
    assert_eq!(xlen(&mut redis, LOGIC_DEAD).await, 2);

    // The two others with --all.
    let rest = cli.ok(&["dlq", "replay", "--all", "--delete"]).await;
    assert!(
        rest.contains(&format!(
            "replayed 2 of 2 dead letters to {SIGNALS}, and deleted them from {LOGIC_DEAD}"
        )),
        "{rest}"
    );
    assert_eq!(rest.lines().filter(|l| l.contains(" -> ")).count(), 2);
    wait_until("risk handles every replayed message", || {
        risk.handled().len() == 5
    })
    .await;
    // The audit group had handled them: it drops the three replays as duplicates.
    let audit_stats = audit_sub.shared_stats();
    wait_until("audit drops the three replays as duplicates", || {
        audit_stats.duplicates.load(Ordering::SeqCst) == 3
    })
    .await;
    // Nothing more is on its way: both groups have read the stream to its end and
    // acknowledged everything.
    let info: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(SIGNALS)
        .query_async(&mut redis)
        .await
        .expect("XINFO GROUPS");
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(SIGNALS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("XREVRANGE");
    let last = &last.ids[0].id;
    for g in &info.groups {
        assert_eq!(g.pending, 0, "{}", g.name);
        assert_eq!(&g.last_delivered_id, last, "{}", g.name);
    }
    assert_eq!(risk.handled(), vec![0, 1, 2, 3, 4], "each message once");
    assert_eq!(audit.handled(), vec![0, 1, 2, 3, 4], "each message once");
    assert_eq!(xlen(&mut redis, SIGNALS).await, 8);
    assert_eq!(xlen(&mut redis, LOGIC_DEAD).await, 0);
    let empty = cli.ok(&["dlq", "list"]).await;
    assert!(empty.starts_with("no dead letters in"), "{empty}");
}

/// Two servers with the users of `dualbus redis acl`, the password files in `dir/secrets`.
struct AclServers {
    dir: PathBuf,
    md: RedisServer,
    logic: RedisServer,
}

impl AclServers {
    async fn start(name: &str) -> AclServers {
        let dir =
            std::env::temp_dir().join(format!("dualbus-dlq-acl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dualbus"))
            .args(["redis", "acl", "--dir", dir.to_str().unwrap()])
            .output()
            .await
            .expect("dualbus redis acl");
        assert!(out.status.success(), "{out:?}");
        let acl = dir.join("users.acl");
        let acl = acl.to_str().unwrap();
        AclServers {
            md: redis_server(&["--aclfile", acl]),
            logic: redis_server(&["--aclfile", acl]),
            dir,
        }
    }

    fn url_as(&self, url: &str, user: &str) -> String {
        let password =
            std::fs::read_to_string(self.dir.join("secrets").join(user)).expect("a password file");
        url.replace("redis://", &format!("redis://{user}:{}@", password.trim()))
    }
}

impl Drop for AclServers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An entry published by hand that does not parse is dead-lettered by the group that reads
/// it; `dlq` (as the `admin` user, from the password files) lists it as unparsable and skips
/// it on replay unless `--raw`; replayed raw it is dead-lettered again by the group; replayed
/// onto a stream longer than the bus's `maxlen`, the stream is trimmed as the publishers trim;
/// an append that fails (the key holds a string) deletes nothing, which a `MULTI`/`EXEC` of the
/// append and the delete would not guarantee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_entry_is_skipped_unless_raw_and_replays_are_trimmed() {
    let servers = AclServers::start("raw").await;
    let (md, logic) = (servers.md.url(), servers.logic.url());
    let mut cli = Cli::new("raw", md.clone(), logic.clone());
    // The buses' `maxlen` is lowered below, and a queue bound may not exceed it.
    cli.env.push(("DUALBUS_QUEUE_BOUND".into(), "1000".into()));
    let secrets = servers.dir.join("secrets");
    cli.env.push((
        "DUALBUS_REDIS_SECRETS".into(),
        secrets.to_string_lossy().into_owned(),
    ));
    // The engines' own user reads (as `dualbus run --backend redis` does).
    let cfg = config(
        &servers.url_as(&md, "system"),
        &servers.url_as(&logic, "system"),
    );
    let consumer = DualBus::connect("risk", cfg).await.expect("connect");
    let risk = Record::default();
    let sub = risk
        .subscribe(&consumer, "risk", "strategy_signal.>", 5, |_| false)
        .await;
    let mut admin = conn(&servers.url_as(&logic, "admin")).await;
    // No `seq`: a hand-written producer's mistake.
    let _: String = redis::cmd("XADD")
        .arg(SIGNALS)
        .arg("*")
        .arg(&[
            ("v", "1"),
            ("id", "ops:ops-1:7"),
            ("kind", "strategy_signal"),
            ("topic", "strategy_signal.BTCUSDT"),
            ("src", "ops"),
            ("inst", "ops-1"),
            ("ts", "1717171200000000000"),
            ("prio", "normal"),
            ("enc", "json"),
            ("payload", "{\"n\":7}"),
        ])
        .query_async(&mut admin)
        .await
        .expect("XADD by hand");

    let letters = cli.wait_letters(1, &[]).await;
    let first = ids(&letters)[0].clone();
    assert_eq!(letters[0]["kind"], Value::Null, "{letters:?}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("missing field `seq`"),
        "{letters:?}"
    );
    let table = cli.ok(&["dlq", "list"]).await;
    assert!(table.contains("(unparsable)"), "{table}");
    let shown = cli.ok(&["dlq", "show", &first]).await;
    assert!(
        shown.contains("the fields do not parse (missing field `seq`)"),
        "{shown}"
    );
    // `publish` names the bus it wrote to without the password the secrets gave it.
    let published = cli
        .ok(&[
            "publish",
            "--kind",
            "ml_prediction",
            "--topic",
            "ml_prediction.BTCUSDT",
            "--payload",
            r#"{"symbol":"BTCUSDT","prob_up":0.6}"#,
        ])
        .await;
    let password = std::fs::read_to_string(secrets.join("admin")).expect("admin password");
    assert!(published.contains("published 1 message"), "{published}");
    assert!(!published.contains(password.trim()), "{published}");

    // Without --raw: skipped, with the reason, and left where it is.
    let skipped = cli.ok(&["dlq", "replay", "--all", "--delete"]).await;
    assert!(
        skipped.contains("replayed 0 of 1 dead letter;"),
        "{skipped}"
    );
    assert!(
        skipped.contains(&format!(
            "{first} (group risk) skipped: its fields do not parse as a message (missing field \
             `seq`); --raw replays it as it is"
        )),
        "{skipped}"
    );
    assert!(skipped.contains("skipped 1"), "{skipped}");
    assert_eq!(xlen(&mut admin, LOGIC_DEAD).await, 1);

    // With --raw, kept: the group reads it again and dead-letters its new entry.
    let raw = cli.ok(&["dlq", "replay", &first, "--raw"]).await;
    assert!(
        raw.contains(&format!("replayed 1 of 1 dead letter to {SIGNALS}")),
        "{raw}"
    );
    assert!(raw.contains("dead-letters its own copy again"), "{raw}");
    let new_entry = raw
        .lines()
        .find_map(|l| l.split(&format!("-> {SIGNALS} ")).nth(1))
        .expect("the new entry's id")
        .trim()
        .to_string();
    let letters = cli.wait_letters(2, &[]).await;
    assert_eq!(letters[1]["entry"], new_entry.as_str(), "{letters:?}");
    assert!(risk.handled().is_empty());

    // Replayed with --delete onto a stream of 3000 entries with maxlen 1000: the XADD trims
    // (`MAXLEN ~`, which drops whole nodes of up to 100 entries, so a little more remains).
    sub.stop().await;
    let mut fill = redis::pipe();
    for i in 0..3000 {
        fill.cmd("XADD")
            .arg(SIGNALS)
            .arg("*")
            .arg("filler")
            .arg(i)
            .ignore();
    }
    let () = fill.query_async(&mut admin).await.expect("fill the stream");
    let out = cli
        .run_with(
            &["dlq", "replay", "--all", "--raw", "--delete"],
            &[("DUALBUS_LOGIC_MAXLEN", "1000")],
        )
        .await;
    assert!(out.ok, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "replayed 2 of 2 dead letters to {SIGNALS}, and deleted them from {LOGIC_DEAD}"
        )),
        "{out}"
    );
    assert_eq!(xlen(&mut admin, LOGIC_DEAD).await, 0);
    let len = xlen(&mut admin, SIGNALS).await;
    assert!(
        (1000..1200).contains(&len),
        "{len} entries after the replay"
    );

    // An append that fails deletes nothing: the original stream's key holds a string.
    let oops = "dualbus:logic:oops";
    let () = redis::cmd("SET")
        .arg(oops)
        .arg("not a stream")
        .query_async(&mut admin)
        .await
        .expect("SET");
    let letter: String = redis::cmd("XADD")
        .arg(LOGIC_DEAD)
        .arg("*")
        .arg(&[
            ("v", "1"),
            ("dead_reason", "missing field `id`"),
            ("dead_stream", oops),
            ("dead_group", "risk"),
            ("dead_entry", "1717171200000-0"),
            ("dead_deliveries", "1"),
        ])
        .query_async(&mut admin)
        .await
        .expect("XADD a dead letter");
    let out = cli
        .run(&["dlq", "replay", "--all", "--raw", "--delete"])
        .await;
    assert!(!out.ok, "{out}");
    assert!(
        out.stderr
            .contains(&format!("replaying dead letter {letter} to {oops}"))
            && out.stderr.contains("WRONGTYPE"),
        "{out}"
    );
    assert_eq!(xlen(&mut admin, LOGIC_DEAD).await, 1, "the letter is kept");
}

/// With the MarketData bus on a Redis Cluster and partitioned, the dead letters (on the master
/// of `dualbus:md:dead`'s slot) are listed, and each replay goes to the master of its
/// partition's slot, where the group reads it; `--delete` then deletes them (two servers, or
/// two slots of one: append first, then delete).
///
/// The dead letters are written by hand, in the shape of docs/wire-format.md: the Redis
/// transport cannot dead-letter on a cluster yet (its `MULTI` holds the dead-letter stream's
/// `XADD` and the partition stream's `XACK`, keys of two slots, which a cluster refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_replay_goes_to_the_master_of_its_stream() {
    let cluster = RedisCluster::start(3)
        .unwrap_or_else(|e| panic!("this test needs redis-server and redis-cli on the PATH: {e}"));
    let logic = redis_server(&[]);
    let mut cli = Cli::new("cluster", cluster.url(), logic.url());
    cli.env.push(("DUALBUS_MD_PARTITIONS".into(), "4".into()));
    let mut cfg = config(&cluster.url(), &logic.url());
    cfg.md.partitions = 4;
    let router = Router::new(&cfg);
    let consumer = DualBus::connect("features", cfg.clone())
        .await
        .expect("connect");
    let features = Record::default();
    let _sub = features
        .subscribe(&consumer, "features", "market_data.trade.>", 2, |_| false)
        .await;
    let hub = DualBus::connect("marketdata", cfg).await.expect("connect");
    let dead = "dualbus:md:dead";
    let port = cluster
        .master_of(slot_of(dead.as_bytes()))
        .expect("a master serves the dead-letter stream's slot");
    let mut master = conn(&format!("redis://127.0.0.1:{port}")).await;
    let symbols = [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT",
    ];
    let mut streams = BTreeMap::new();
    for (n, symbol) in symbols.iter().enumerate() {
        let topic = format!("market_data.trade.{symbol}");
        let env = hub
            .envelope(
                EventKind::MarketData,
                &topic,
                Priority::Normal,
                &json!({ "n": n }),
            )
            .expect("an envelope");
        let stream = router
            .route_topic(&EventKind::MarketData, Priority::Normal, &topic)
            .stream
            .to_string();
        *streams.entry(stream.clone()).or_insert(0) += 1;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(dead).arg("*");
        for (k, v) in env.to_wire_fields() {
            xadd.arg(k).arg(&v[..]);
        }
        xadd.arg("dead_reason")
            .arg("not acknowledged after 5 deliveries; last error: price is NaN")
            .arg("dead_stream")
            .arg(&stream)
            .arg("dead_group")
            .arg("features")
            .arg("dead_entry")
            .arg(format!("1717171200000-{n}"))
            .arg("dead_deliveries")
            .arg(5);
        let _: String = xadd.query_async(&mut master).await.expect("XADD");
    }
    assert!(
        streams.len() > 1,
        "the symbols share one partition: {streams:?}"
    );
    let letters = cli.letters(&["--bus", "md"]).await;
    assert_eq!(letters.len(), symbols.len(), "{letters:?}");
    for l in &letters {
        assert_eq!(l["kind"], "market_data", "{l}");
        assert!(streams.contains_key(l["stream"].as_str().unwrap()), "{l}");
    }

    let out = cli.ok(&["dlq", "replay", "--all", "--delete"]).await;
    assert!(
        out.contains(&format!(
            "replayed {0} of {0} dead letters to {1} streams, and deleted them from {dead}",
            symbols.len(),
            streams.len()
        )),
        "{out}"
    );
    wait_until("features handles every replayed trade", || {
        features.handled().len() == symbols.len()
    })
    .await;
    assert_eq!(
        features.handled(),
        (0..symbols.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(xlen(&mut master, dead).await, 0);
    assert!(cli.letters(&[]).await.is_empty());
}
