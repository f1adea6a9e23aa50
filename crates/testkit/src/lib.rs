//! Test support for dualbus: the conformance suite, written once and instantiated for every
//! transport, so the embedded and Redis transports cannot drift apart.
//!
//! # Layout
//!
//! * [`TransportFactory`] / [`TransportPair`]: how a transport under test is created (a fresh
//!   MarketData and Engine Logic pair per test, plus whatever guard keeps its servers alive).
//! * [`conformance`]: the tests, as `async fn(&dyn TransportFactory)`.
//! * [`conformance_suite!`]: expands to one `#[tokio::test]` per conformance test.
//! * [`MemoryFactory`], [`RedisFactory`]: the factories of the embedded and Redis transports.
//! * [`RedisServer`]: a real `redis-server` on a free port, killed on drop; [`redis_client`]:
//!   a client over two Redis transports made from options.
//! * [`CapturedLog`]: what a test's log subscriber wrote.
//! * [`stress`]: the `dualbus-stress` crate, re-exported: fault injection under load (crash,
//!   hang, flash crash, slow consumer), shared by `dualbus stress` and the failover tests.
//! * [`wire_doc`]: the examples of `docs/wire-format.md`, for the tests that check it.
//!
//! ```ignore
//! dualbus_testkit::conformance_suite!(dualbus_testkit::MemoryFactory);
//! ```

#![forbid(unsafe_code)]

pub mod conformance;
pub mod wire_doc;

pub use dualbus_stress as stress;
pub use dualbus_stress::{RedisCluster, RedisServer};
pub use wire_doc::{wire_example, wire_examples};

use async_trait::async_trait;
use dualbus_bus::{Config, DualBus};
use dualbus_core::Transport;
use dualbus_memory::MemoryTransport;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fresh pair of transports for one test.
pub struct TransportPair {
    /// The MarketData bus.
    pub md: Arc<dyn Transport>,
    /// The Engine Logic bus.
    pub logic: Arc<dyn Transport>,
    /// Stream-key prefix to use, unique per test where servers are shared.
    pub prefix: String,
    /// Keeps servers alive for the test's duration.
    pub guard: Box<dyn Any + Send>,
}

impl TransportPair {
    /// A config using this pair's prefix.
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.prefix = self.prefix.clone();
        cfg
    }

    /// A client for engine `src` (instance `{src}-1`) on this pair, sequence numbers from 1.
    pub fn bus(&self, src: &str) -> DualBus {
        self.bus_with(src, &format!("{src}-1"), self.config())
    }

    /// A client with a given instance and config (whose prefix is replaced by the pair's).
    pub fn bus_with(&self, src: &str, inst: &str, mut cfg: Config) -> DualBus {
        cfg.prefix = self.prefix.clone();
        DualBus::builder(src)
            .instance(inst)
            .config(cfg)
            .transports(self.md.clone(), self.logic.clone())
            .first_seq(1)
            .build()
            .expect("valid test client")
    }
}

/// Creates transports under test.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport's name, for messages.
    fn name(&self) -> &'static str;
    /// A fresh pair.
    async fn pair(&self) -> TransportPair;
}

/// The embedded transport's factory.
pub struct MemoryFactory;

#[async_trait]
impl TransportFactory for MemoryFactory {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn pair(&self) -> TransportPair {
        TransportPair {
            md: Arc::new(MemoryTransport::new()),
            logic: Arc::new(MemoryTransport::new()),
            prefix: "dualbus".into(),
            guard: Box::new(()),
        }
    }
}

/// The Redis transport's factory: two fresh `redis-server` processes per test.
pub struct RedisFactory;

#[async_trait]
impl TransportFactory for RedisFactory {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn pair(&self) -> TransportPair {
        let md = RedisServer::start().expect("start the MarketData redis-server");
        let logic = RedisServer::start().expect("start the Engine Logic redis-server");
        let md_t = connect_redis("md", &md.url()).await;
        let logic_t = connect_redis("logic", &logic.url()).await;
        TransportPair {
            md: Arc::new(md_t),
            logic: Arc::new(logic_t),
            prefix: "dualbus".into(),
            guard: Box::new((md, logic)),
        }
    }
}

async fn connect_redis(bus: &str, url: &str) -> dualbus_redis::RedisTransport {
    let mut opts = dualbus_redis::RedisOptions::new(bus, url);
    // A dead group stops holding publishers after 1 s instead of 10.
    opts.group_lease = Duration::from_secs(1);
    dualbus_redis::RedisTransport::connect(opts)
        .await
        .expect("connect to the test redis-server")
}

/// A client for engine `src` (sequence numbers from 1) over two Redis transports connected with
/// `md` and `logic`; the transports too, for their stats. Without `cfg`, the default config
/// with failover off: tests often give both buses one server, where a bus marked down under
/// load would re-send its window to the same server and stream.
pub async fn redis_client(
    src: &str,
    md: dualbus_redis::RedisOptions,
    logic: dualbus_redis::RedisOptions,
    cfg: Option<Config>,
) -> (
    DualBus,
    Arc<dualbus_redis::RedisTransport>,
    Arc<dualbus_redis::RedisTransport>,
) {
    let md = Arc::new(
        dualbus_redis::RedisTransport::connect(md)
            .await
            .expect("connect to the test redis-server (md)"),
    );
    let logic = Arc::new(
        dualbus_redis::RedisTransport::connect(logic)
            .await
            .expect("connect to the test redis-server (logic)"),
    );
    let bus = DualBus::builder(src)
        .config(cfg.unwrap_or_else(|| {
            let mut c = Config::default();
            c.failover.enabled = dualbus_bus::FailoverMode::Off;
            c
        }))
        .transports(md.clone(), logic.clone())
        .first_seq(1)
        .build()
        .expect("valid test client");
    (bus, md, logic)
}

/// Collects what a `tracing_subscriber` fmt layer writes, for tests that check log lines
/// (`.with_writer(move || log.clone())`).
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<parking_lot::Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `cond` every 2 ms until it holds; panics with `what` after `limit` (a guard against a
/// hang, not a performance bound).
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs a test future with a hang guard.
pub async fn guarded<F: Future<Output = ()>>(name: &str, f: F) {
    if tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .is_err()
    {
        panic!("conformance test {name} hung for 120 s");
    }
}

/// Expands to one `#[tokio::test]` per conformance test, each creating its transports with
/// `$factory` (an expression of a type implementing [`TransportFactory`]).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            fan_out_every_group_gets_every_message,
            load_balancing_within_a_group,
            per_source_order,
            ack_after_success_and_redelivery_after_failure,
            dead_consumer_messages_are_reclaimed,
            restarted_consumer_rereads_its_own_pending,
            dead_letter_after_max_deliveries,
            redelivery_backs_off,
            duplicates_are_suppressed,
            backpressure_block,
            dead_group_holds_no_publisher,
            start_from_time,
            a_panicking_handler_fails_its_message_not_its_reader,
            backpressure_drop_oldest,
            backpressure_reject,
            fast_mode_skips_to_head,
            every_kind_is_routed_to_its_bus,
            priority_lane_overtakes_bulk_traffic,
            request_reply,
            request_timeout,
            msgpack_and_json_decode_by_envelope,
            new_group_starts_at_newest_or_oldest,
            partitions_split_symbols_between_instances
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::guarded(stringify!($name), $crate::conformance::$name(&factory)).await;
            }
        )*
    };
}
