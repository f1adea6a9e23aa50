//! Behaviour of the Redis Streams transport that the shared conformance suite cannot express:
//! hostile entries written by hand, connection errors, a server restarted empty, and interop
//! with the Python example clients (`examples/python/`).
//!
//! Every test starts its own `redis-server` processes on free ports (never 6380/6381, never a
//! server it did not start) and asserts what was delivered, how many times, in what order, and
//! what errors say; timeouts only guard against hangs.

use dualbus_bus::{
    handler_fn, BusId, Config, DualBus, FailoverMode, Handler, SubscribeOptions, Subscription,
};
use dualbus_core::{Encoding, Envelope, EventKind, Priority, StartFrom, Transport};
use dualbus_redis::{RedisOptions, RedisTransport};
use dualbus_testkit::{wait_until, RedisServer};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::future::Future;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

/// Hang guard of one wait (not a performance bound).
const LIMIT: Duration = Duration::from_secs(30);

const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/python/");

/// Runs a test body with a hang guard.
async fn guarded(name: &str, f: impl Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .is_err()
    {
        panic!("{name} hung for 90 s");
    }
}

/// Two fresh servers (MarketData, Engine Logic) and transports connected to them.
struct Buses {
    /// Keeps the MarketData server alive.
    _md_server: RedisServer,
    logic_server: RedisServer,
    md: Arc<dyn Transport>,
    logic: Arc<dyn Transport>,
}

impl Buses {
    /// Starts both servers; the logic bus accepts payloads up to `max_payload` bytes.
    async fn start(max_payload: usize) -> Buses {
        let md_server = RedisServer::start().expect("start the MarketData redis-server");
        let logic_server = RedisServer::start().expect("start the Engine Logic redis-server");
        let md = RedisTransport::connect(RedisOptions::new("md", &md_server.url()))
            .await
            .unwrap_or_else(|e| panic!("connect md: {e}"));
        let logic = RedisTransport::connect(RedisOptions {
            max_payload,
            ..RedisOptions::new("logic", &logic_server.url())
        })
        .await
        .unwrap_or_else(|e| panic!("connect logic: {e}"));
        Buses {
            _md_server: md_server,
            logic_server,
            md: Arc::new(md),
            logic: Arc::new(logic),
        }
    }

    /// A client for engine `src` (instance `{src}-1`) on these transports.
    fn client(&self, src: &str, cfg: Config) -> DualBus {
        DualBus::builder(src)
            .instance(&format!("{src}-1"))
            .config(cfg)
            .transports(self.md.clone(), self.logic.clone())
            .build()
            .expect("valid client")
    }

    /// A plain Redis connection to the Engine Logic server.
    async fn raw_logic(&self) -> MultiplexedConnection {
        redis::Client::open(self.logic_server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the logic redis-server")
    }
}

/// Records every handled message.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Envelope>>>);

impl Recorder {
    fn handler(&self) -> impl Handler {
        let r = self.0.clone();
        handler_fn(move |m| {
            r.lock().push(m.clone());
            Ok(())
        })
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    fn all(&self) -> Vec<Envelope> {
        self.0.lock().clone()
    }
}

fn payload_json(e: &Envelope) -> Value {
    e.enc.to_json_value(&e.payload).expect("payload decodes")
}

fn n_of(e: &Envelope) -> u64 {
    payload_json(e)["n"].as_u64().expect("payload has n")
}

async fn subscribe(bus: &DualBus, group: &str, pattern: &str, rec: &Recorder) -> Subscription {
    let opts = SubscribeOptions::new(group, &[pattern])
        .expect("valid pattern")
        .start(StartFrom::Oldest);
    bus.subscribe(opts, rec.handler()).await.expect("subscribe")
}

/// Wire fields of a valid `strategy_signal` entry from `hand`/`hand-1`.
fn wire(seq: u64, payload: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let text = |s: &str| s.as_bytes().to_vec();
    vec![
        ("v", text("1")),
        ("id", text(&format!("hand:hand-1:{seq}"))),
        ("kind", text("strategy_signal")),
        ("topic", text("strategy_signal.BTCUSDT")),
        ("src", text("hand")),
        ("inst", text("hand-1")),
        ("seq", text(&seq.to_string())),
        ("ts", text("1717171200123456789")),
        ("prio", text("normal")),
        ("enc", text("json")),
        ("payload", payload.to_vec()),
    ]
}

fn without(mut f: Vec<(&'static str, Vec<u8>)>, field: &str) -> Vec<(&'static str, Vec<u8>)> {
    f.retain(|(k, _)| *k != field);
    f
}

fn with(
    mut f: Vec<(&'static str, Vec<u8>)>,
    field: &str,
    value: &str,
) -> Vec<(&'static str, Vec<u8>)> {
    for (k, v) in f.iter_mut() {
        if *k == field {
            *v = value.as_bytes().to_vec();
        }
    }
    f
}

/// XADDs raw fields; returns the entry id.
async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(&'static str, Vec<u8>)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(&v[..]);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// `XPENDING stream group`: how many entries the group has delivered but not acknowledged.
async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("XPENDING");
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING count {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Entries that are not valid envelopes go to the dead-letter stream with a reason naming the
/// problem, are counted and acknowledged; the valid entries between them are all handled, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_dead_lettered_and_valid_ones_delivered() {
    guarded("hostile_entries", async {
        let mut cfg = Config::default();
        cfg.logic.max_payload_bytes = 64;
        let buses = Buses::start(cfg.logic.max_payload_bytes as usize).await;
        let stream = "dualbus:logic:strategy_signal";
        let rec = Recorder::default();
        let risk = buses.client("risk", cfg.clone());
        let sub = subscribe(&risk, "risk", "strategy_signal.>", &rec).await;

        let mut conn = buses.raw_logic().await;
        let valid = |seq: u64, n: u64| wire(seq, format!(r#"{{"n":{n}}}"#).as_bytes());
        let big = format!(r#"{{"n":9,"pad":"{}"}}"#, "x".repeat(100));
        assert!(big.len() > 64);
        let mut bad_ids = Vec::new();
        xadd(&mut conn, stream, &valid(1, 0)).await;
        bad_ids.push(xadd(&mut conn, stream, &without(valid(2, 9), "seq")).await);
        xadd(&mut conn, stream, &valid(3, 1)).await;
        bad_ids.push(xadd(&mut conn, stream, &with(valid(4, 9), "enc", "protobuf")).await);
        xadd(&mut conn, stream, &valid(5, 2)).await;
        bad_ids.push(xadd(&mut conn, stream, &wire(6, br#"{"n": 9,"#)).await);
        xadd(&mut conn, stream, &valid(7, 3)).await;
        bad_ids.push(xadd(&mut conn, stream, &wire(8, big.as_bytes())).await);
        xadd(&mut conn, stream, &valid(9, 4)).await;

        wait_until("5 valid entries handled", LIMIT, || rec.len() >= 5).await;
        wait_until("4 entries dead-lettered", LIMIT, || {
            buses.logic.stats().dead_lettered >= 4
        })
        .await;
        // Stopping finishes and acknowledges the batch in hand.
        sub.stop().await;

        let handled = rec.all();
        assert_eq!(
            handled.iter().map(n_of).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4],
            "every valid entry handled once, in order"
        );
        assert_eq!(
            handled.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3, 5, 7, 9]
        );
        assert_eq!(buses.logic.stats().dead_lettered, 4);
        assert_eq!(risk.counters(BusId::Logic).dead_lettered, 4);

        let dead = risk
            .dead_letters(BusId::Logic, 100)
            .await
            .expect("dead letters");
        assert_eq!(dead.len(), 4, "{dead:#?}");
        let expect: [&[&str]; 4] = [
            &["missing field `seq`"],
            &["field `enc`", "protobuf"],
            &["field `payload`", "cannot decode json"],
            &["payload of", "exceeds the limit of 64 bytes"],
        ];
        for ((d, id), words) in dead.iter().zip(&bad_ids).zip(expect) {
            for w in words {
                assert!(
                    d.reason.contains(w),
                    "dead letter of entry {id}: reason {:?} should contain {w:?}",
                    d.reason
                );
            }
            assert_eq!(d.stream, stream);
            assert_eq!(&d.entry.to_string(), id, "dead letter names its entry");
        }
        assert_eq!(
            pending(&mut conn, stream, "risk").await,
            0,
            "nothing left pending"
        );
    })
    .await;
}

/// A bad URL and an address where nothing listens both fail with an error naming the bus and
/// the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_name_the_bus_and_address() {
    guarded("connect_errors", async {
        let err = match RedisTransport::connect(RedisOptions::new("logic", "http://nope")).await {
            Ok(_) => panic!("http://nope must not connect"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("logic bus"), "{err}");
        assert!(err.contains("http://nope"), "{err}");

        // A free port outside the ephemeral range, so that no redis-server started meanwhile
        // by another test (they take ephemeral ports) can be listening there.
        let port = (20_000..30_000)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port in 20000..30000");
        let url = format!("redis://127.0.0.1:{port}");
        let opts = RedisOptions {
            connect_timeout: Duration::from_millis(300),
            ..RedisOptions::new("md", &url)
        };
        let err = match RedisTransport::connect(opts).await {
            Ok(_) => panic!("nothing listens on {url}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("md bus"), "{err}");
        assert!(err.contains(&url), "{err}");
    })
    .await;
}

/// The server restarts empty: the running subscription recreates its group on its own and
/// receives every message published after the restart, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_recreates_its_group_after_the_server_restarts_empty() {
    guarded("nogroup_recovery", async {
        let mut buses = Buses::start(1 << 20).await;
        let rec = Recorder::default();
        // Failover off: this test is about the group coming back on the restarted server, not
        // about traffic moving to the other bus meanwhile.
        let mut cfg = Config::default();
        cfg.failover.enabled = FailoverMode::Off;
        let strategy = buses.client("strategy", cfg.clone());
        let sub = subscribe(&strategy, "strategy", "ml_prediction.>", &rec).await;
        let ml = buses.client("ml", cfg);
        let topic = "ml_prediction.BTCUSDT";
        for n in 0..5u64 {
            ml.publish(EventKind::MlPrediction, topic, &json!({ "n": n }))
                .await
                .expect("publish before the restart");
        }
        wait_until("5 messages before the restart", LIMIT, || rec.len() >= 5).await;

        buses
            .logic_server
            .restart()
            .expect("restart the logic server");
        for n in 5..15u64 {
            // The writer reconnects on its own; publishing may fail while it does.
            let mut tries = 0;
            while let Err(e) = ml
                .publish(EventKind::MlPrediction, topic, &json!({ "n": n }))
                .await
            {
                tries += 1;
                assert!(tries < 500, "publishing never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        wait_until("message 14 handled", LIMIT, || {
            rec.all().last().is_some_and(|e| n_of(e) == 14)
        })
        .await;
        sub.stop().await;
        assert_eq!(
            rec.all().iter().map(n_of).collect::<Vec<_>>(),
            (0..15).collect::<Vec<_>>(),
            "every message once, in order, without resubscribing"
        );

        let mut conn = buses.raw_logic().await;
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("dualbus:logic:ml_prediction")
            .query_async(&mut conn)
            .await
            .expect("XINFO GROUPS after the restart");
        assert!(
            format!("{groups:?}").contains("strategy"),
            "group recreated: {groups:?}"
        );
    })
    .await;
}

/// Runs one of the Python example scripts; fails the test (never skips it) when python3,
/// redis-py, msgpack or jsonschema is missing, or the script fails.
async fn python(script: &str, args: &[&str]) -> Output {
    let out = python_status(script, args).await;
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs one of the Python example scripts, whatever its exit status.
async fn python_status(script: &str, args: &[&str]) -> Output {
    let check = tokio::process::Command::new("python3")
        .args(["-c", "import redis, msgpack, jsonschema"])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("python3 is required for the interop tests: {e}");
        });
    assert!(
        check.status.success(),
        "the interop tests need redis-py, msgpack and jsonschema \
         (pip install -r examples/python/requirements.txt): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let path = format!("{PYTHON_DIR}{script}");
    tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3 {path}: {e}"))
}

/// `producer.py` (json and msgpack) to a Rust subscription: every message, decoded, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_to_rust_subscriber() {
    guarded("python_producer", async {
        let buses = Buses::start(1 << 20).await;
        let rec = Recorder::default();
        let strategy = buses.client("strategy", Config::default());
        let sub = subscribe(&strategy, "strategy", "ml_prediction.>", &rec).await;
        let url = buses.logic_server.url();
        let common = [
            "--url",
            url.as_str(),
            "--stream",
            "dualbus:logic:ml_prediction",
            "--kind",
            "ml_prediction",
            "--topic",
            "ml_prediction.BTCUSDT",
            "--count",
            "20",
        ];
        python("producer.py", &[&common[..], &["--enc", "json"]].concat()).await;
        let mp = ["--enc", "msgpack", "--src", "pymp", "--inst", "pymp-1"];
        python("producer.py", &[&common[..], &mp[..]].concat()).await;

        wait_until("40 messages", LIMIT, || rec.len() >= 40).await;
        sub.stop().await;
        let all = rec.all();
        assert_eq!(all.len(), 40);
        for (src, enc) in [("py", Encoding::Json), ("pymp", Encoding::Msgpack)] {
            let mine: Vec<&Envelope> = all.iter().filter(|e| &*e.src == src).collect();
            assert_eq!(
                mine.iter().map(|e| n_of(e)).collect::<Vec<_>>(),
                (0..20).collect::<Vec<_>>(),
                "{src}: n 0..20 in order"
            );
            assert!(mine.iter().all(|e| e.enc == enc), "{src} is {enc:?}");
            assert!(mine
                .iter()
                .all(|e| payload_json(e)["from"] == json!("python")));
        }
    })
    .await;
}

/// Rust publishers (json and msgpack) to `consumer.py`: every payload decodes to what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishers_to_python_consumer() {
    guarded("python_consumer", async {
        let buses = Buses::start(1 << 20).await;
        let json_bus = buses.client("mljson", Config::default());
        let mut mp_cfg = Config::default();
        mp_cfg.encoding = "msgpack".into();
        let mp_bus = buses.client("mlmp", mp_cfg);
        let topic = "ml_prediction.ETHUSDT";
        let mut sent: Vec<(String, &str, Value)> = Vec::new();
        for (bus, enc) in [(&json_bus, "json"), (&mp_bus, "msgpack")] {
            for n in 0..10u64 {
                let payload = json!({
                    "n": n,
                    "symbol": "ETHUSDT",
                    "p_up": 0.25 + n as f64 / 64.0,
                    "features": [n, n * 2, -(n as i64)],
                    "model": { "name": "gbm", "enc": enc },
                });
                let env = bus
                    .envelope(EventKind::MlPrediction, topic, Priority::Normal, &payload)
                    .expect("envelope");
                assert_eq!(env.enc.as_str(), enc);
                sent.push((env.id(), enc, payload));
                bus.publish_confirmed(env).await.expect("publish");
            }
        }

        let url = buses.logic_server.url();
        let out = python(
            "consumer.py",
            &[
                "--url",
                url.as_str(),
                "--stream",
                "dualbus:logic:ml_prediction",
                "--group",
                "pyconsumer",
                "--consumer",
                "py-1",
                "--count",
                "20",
                "--from-start",
                "--timeout",
                "30",
            ],
        )
        .await;
        let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect();
        assert_eq!(lines.len(), 20, "{stdout}");
        for (line, (id, enc, payload)) in lines.iter().zip(&sent) {
            assert_eq!(line["id"], json!(id));
            assert_eq!(line["enc"], json!(enc));
            assert_eq!(line["kind"], json!("ml_prediction"));
            assert_eq!(line["topic"], json!(topic));
            assert_eq!(&line["payload"], payload, "message {id}");
        }
    })
    .await;
}

/// Reads every entry of `stream` with `consumer.py --schemas docs/schemas`.
async fn consume_checked(url: &str, stream: &str, count: usize) -> Output {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schemas");
    let count = count.to_string();
    python_status(
        "consumer.py",
        &[
            "--url",
            url,
            "--stream",
            stream,
            "--group",
            "pycheck",
            "--consumer",
            "pycheck-1",
            "--count",
            &count,
            "--from-start",
            "--timeout",
            "30",
            "--schemas",
            schemas,
        ],
    )
    .await
}

/// What the engines' types publish follows the schemas of `docs/schemas` as Python's
/// `jsonschema` reads them (JSON and MessagePack, a `null` utilization, an optional symbol), and
/// a payload that breaks its schema is reported naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_checks_payloads_against_the_schemas() {
    use dualbus_model::collateral::{MarginCall, MarginPosition};
    use dualbus_model::market::Side;
    use dualbus_model::orders::{OrderRequest, OrderType};
    use dualbus_model::risk::{RiskAction, RiskAlert};
    use dualbus_model::Message;

    async fn send<M: Message>(bus: &DualBus, m: &M) {
        let env = bus
            .envelope(M::kind(), &m.topic(), M::PRIORITY, m)
            .expect("envelope");
        bus.publish_confirmed(env).await.expect("publish");
    }

    guarded("python_schemas", async {
        let buses = Buses::start(1 << 20).await;
        let json_bus = buses.client("riskjson", Config::default());
        let mut mp_cfg = Config::default();
        mp_cfg.encoding = "msgpack".into();
        let mp_bus = buses.client("riskmp", mp_cfg);
        let alert = RiskAlert {
            rule: "max_drawdown".into(),
            symbol: None,
            ts: 1,
            value: 0.12,
            limit: 0.1,
            action: RiskAction::CircuitBreakerTripped,
            order_id: None,
            reason: "drawdown 12% over 10%".into(),
        };
        let call = MarginCall {
            account: "main".into(),
            ts: 2,
            margin_utilization: f64::INFINITY,
            threshold: 0.8,
            equity: -5.0,
            margin: 100.0,
            positions: vec![MarginPosition {
                symbol: "BTCUSDT".into(),
                notional: -1000.0,
                rate: 0.1,
                margin: 100.0,
            }],
            action: "reduce_positions".into(),
            reason: "equity is not positive".into(),
        };
        let order = OrderRequest {
            order_id: "risk-1-000001".into(),
            symbol: "BTCUSDT".into(),
            side: Side::Buy,
            qty: 0.01,
            order_type: OrderType::Limit,
            limit_price: Some(60_000.0),
        };
        send(&json_bus, &alert).await;
        send(&mp_bus, &alert).await;
        send(&mp_bus, &call).await;
        send(&json_bus, &order).await;
        // A risk alert without its `action`, on the same priority lane.
        let mut broken = serde_json::to_value(&alert).unwrap();
        broken.as_object_mut().unwrap().remove("action");
        let env = json_bus
            .envelope(
                EventKind::RiskAlert,
                "risk_alert.book",
                Priority::Critical,
                &broken,
            )
            .expect("envelope");
        json_bus.publish_confirmed(env).await.expect("publish");

        let url = buses.logic_server.url();
        let out = consume_checked(&url, "dualbus:logic:order_request", 1).await;
        assert!(
            out.status.success(),
            "the order follows its schema: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = consume_checked(&url, "dualbus:logic:priority", 4).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "one payload breaks its schema: {stderr}"
        );
        let reports: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("breaks its schema"))
            .collect();
        assert_eq!(reports.len(), 1, "{stderr}");
        assert!(
            reports[0].contains("risk_alert schema") && reports[0].contains("'action'"),
            "{stderr}"
        );
        assert!(
            stderr.contains("1 of 4 payloads broke their schema"),
            "{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.lines().count(),
            4,
            "every entry is still printed: {stdout}"
        );
    })
    .await;
}

/// The Python helper (`dualbus_wire.py`) picks the same partition and stream as the bus for
/// every symbol: a Python producer's market data reaches the Rust readers of its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_agree_on_partitions() {
    let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "X", "A-B_C", "123456789"];
    let script = format!(
        "import sys; sys.path.insert(0, {PYTHON_DIR:?}); import dualbus_wire as w\n\
         for s in {symbols:?}:\n    \
         print(w.partition_of(s, 12), w.stream_for('market_data', topic='market_data.trade.' + s, partitions=12))"
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .expect("python3 is required for the interop tests");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut cfg = Config::default();
    cfg.md.partitions = 12;
    let router = dualbus_bus::Router::new(&cfg);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), symbols.len(), "{text}");
    for (s, line) in symbols.iter().zip(lines) {
        let p = dualbus_core::partition::partition_of(s, 12);
        let stream = router
            .route_topic(
                &EventKind::MarketData,
                Priority::Normal,
                &format!("market_data.trade.{s}"),
            )
            .stream;
        assert_eq!(line, format!("{p} {stream}"), "{s}");
    }
}
