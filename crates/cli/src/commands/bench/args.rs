//! The arguments of `dualbus bench` and the names they print.

use clap::{Args, ValueEnum};
use dualbus_core::{Backpressure, Mode};

/// Arguments of `dualbus bench`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Scenarios:
  throughput  1 producer, 1 consumer group; messages published in batches of --batch. On Redis
              it also measures, in the same run, the raw ceiling of pipelined XADD on the
              MarketData server with redis-benchmark, and prints our figure as a ratio of it
  fanout      1 producer, --groups groups (12); rate at which every group has every message;
              with --rate, paced one message at a time (latency of every delivery)
  latency     1 producer paced at --rate (default 100,000/s), one message per publish;
              publish-to-handler latency; then, after it in the same run, the floor (below)
  isolation   Engine Logic bus latency at --rate (default 10,000/s) with the MarketData bus
              idle, then while a flood saturates the MarketData bus, in one run; on Redis
              also the raw baseline (below); on memory the raw fields are omitted (the
              latency scenario's floor is the in-process reference)
  stall       a reliable group that never handles anything, with --queue-bound and
              --backpressure; shows that memory stays bounded (blocks, rejects or drops)
  hub         the MarketData hub (synthetic data at --speed, history calls slowed to
              --history-latency-ms) and --engines client engines, each its own group of all
              market data, asking for every symbol's snapshot every --snapshot-every-ms and
              its last 500 bars every --history-every-s, for --duration: cache hit rate,
              upstream calls and coalescing (the hub's counters), distribution latency

Floors (measured in the same run, on the same machine, so that a ratio to them carries across
machines where absolute figures do not):
  latency     after our phase (never at the same time), the same paced publisher thread (same
              pacing code, 1 µs timer slack) hands a timestamp to a consumer thread over a
              bounded std::sync::mpsc::sync_channel; the consumer busy-polls (try_recv, never
              parks) and records publish-to-receive latency. Same count and rate. Reported as
              baseline_latency_ns, with p50_vs_baseline and p99_vs_baseline (ours / floor):
              what two threads of this machine cost at best, with no bus in between
  isolation   (--backend redis) a bare redis client, no dualbus code in the path: XADD of the
              same entry as ours (same fields and payload, ts rewritten) on a stream of the
              Engine Logic server, paced at the same rate by the same pacing code, read by
              XREADGROUP BLOCK on a group of that stream (XACK each); first with the MarketData
              server idle (after our idle phase), then during the same dualbus flood as ours
              (after our saturated phase, the flood still running): raw_idle_latency_ns,
              raw_latency_ns, raw_p99_ratio (flooded / idle) beside our p99_ratio, and
              p99_ratio_vs_raw (ours / raw)

The Redis backend uses the buses of --md-url / --logic-url (default 127.0.0.1:6380 and 6381,
start them with `dualbus redis up`) under a private key prefix, removed afterwards.

Examples:
  dualbus bench throughput --messages 10000000 --payload-bytes 64
  dualbus bench fanout --messages 2000000 --json
  dualbus bench latency --rate 100000 --messages 1000000
  dualbus bench latency --messages 200000 --plot latency.svg
  dualbus bench throughput --backend redis --messages 500000
  dualbus bench isolation --backend redis --messages 50000
  dualbus bench stall --messages 10000000 --queue-bound 100000 --backpressure reject
  dualbus bench hub --duration 60s --json
  dualbus bench hub --backend redis --duration 30s")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub(super) scenario: Scenario,
    /// Transport under test.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    pub(super) backend: Backend,
    /// Messages to publish (per phase for isolation).
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) messages: u64,
    /// Publish rate in messages per second (latency: default 100,000; isolation: 10,000).
    #[arg(long)]
    pub(super) rate: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub(super) payload_bytes: usize,
    /// Delivery mode of the consumer groups.
    #[arg(long, value_enum, default_value_t = ModeArg::Reliable)]
    pub(super) mode: ModeArg,
    /// Consumer groups (fanout scenario).
    #[arg(long, default_value_t = 12)]
    pub(super) groups: usize,
    /// Envelopes per publish call (throughput, fanout, the isolation flood).
    #[arg(long, default_value_t = 1024)]
    pub(super) batch: usize,
    /// Queue bound of each group.
    #[arg(long, default_value_t = 100_000)]
    pub(super) queue_bound: usize,
    /// Policy at the queue bound.
    #[arg(long, value_enum, default_value_t = PolicyArg::Block)]
    pub(super) backpressure: PolicyArg,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub(super) threads: usize,
    /// Redis ceiling: pipeline depth of redis-benchmark (`-P`).
    #[arg(long, default_value_t = 64)]
    pub(super) ceiling_pipeline: usize,
    /// Redis ceiling: connections of redis-benchmark (`-c`).
    #[arg(long, default_value_t = 4)]
    pub(super) ceiling_clients: usize,
    /// hub: client engines.
    #[arg(long, default_value_t = 12)]
    pub(super) engines: usize,
    /// hub: how long to run, e.g. `60s`.
    #[arg(long, default_value = "60s")]
    pub(super) duration: String,
    /// hub: playback speed of the synthetic market data (`60x`: about 10,000 msgs/s).
    #[arg(long, default_value = "60x")]
    pub(super) speed: String,
    /// hub: latency added to every upstream history call, in ms.
    #[arg(long, default_value_t = 50)]
    pub(super) history_latency_ms: u64,
    /// hub: each engine asks for every symbol's snapshot this often, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub(super) snapshot_every_ms: u64,
    /// hub: each engine asks for every symbol's last 500 bars this often, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(super) history_every_s: u64,
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// throughput, fanout, latency, isolation: also write the latency distribution here as an
    /// SVG chart, a cumulative distribution on a logarithmic µs axis: ours, and the floor
    /// (latency) or the idle phase and the raw baseline (isolation) where the run has them.
    #[arg(long, value_name = "FILE.svg")]
    pub(super) plot: Option<std::path::PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scenario {
    Throughput,
    Fanout,
    Latency,
    Isolation,
    Stall,
    Hub,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    /// The embedded (in-process) transport (also spelt `memory`).
    #[value(alias = "memory")]
    Embedded,
    /// The config's two Redis servers.
    Redis,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ModeArg {
    Reliable,
    Fast,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PolicyArg {
    Block,
    /// Also spelt `drop_oldest`, as in the config file.
    #[value(alias = "drop_oldest")]
    DropOldest,
    Reject,
}

impl Scenario {
    pub(super) fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Isolation => "isolation",
            Scenario::Stall => "stall",
            Scenario::Hub => "hub",
        }
    }
}

impl BenchArgs {
    pub(super) fn mode(&self) -> Mode {
        match self.mode {
            ModeArg::Reliable => Mode::Reliable,
            ModeArg::Fast => Mode::Fast,
        }
    }
    pub(super) fn mode_name(&self) -> &'static str {
        match self.mode {
            ModeArg::Reliable => "reliable",
            ModeArg::Fast => "fast",
        }
    }
    pub(super) fn policy(&self) -> Backpressure {
        match self.backpressure {
            PolicyArg::Block => Backpressure::Block,
            PolicyArg::DropOldest => Backpressure::DropOldest,
            PolicyArg::Reject => Backpressure::Reject,
        }
    }
    pub(super) fn policy_name(&self) -> &'static str {
        match self.backpressure {
            PolicyArg::Block => "block",
            PolicyArg::DropOldest => "drop_oldest",
            PolicyArg::Reject => "reject",
        }
    }
    pub(super) fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }
    pub(super) fn rate(&self) -> u64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Isolation => 10_000,
            _ => 100_000,
        })
    }
}
