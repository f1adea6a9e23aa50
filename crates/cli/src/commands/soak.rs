//! `dualbus stress soak`: the whole system on two `redis-server` processes of its own for a
//! while, with faults on a schedule: every engine of the system as a `dualbus engine NAME`
//! process (this binary), the checked traffic of the stress harness beside them on the same
//! servers, a broker killed every `--kill-every`, and between kills a consumer kill, a slow
//! consumer or a burst in turn. The report: what the checked traffic lost, duplicated or got
//! out of order, what the brokers dead-lettered and trimmed unread, engine restarts and deaths,
//! and the peak resident set of every process.

use super::{bus_name, inspect, BUSES};
use anyhow::Context;
use dualbus_bus::{BusId, Config, Router};
use dualbus_engines::system::ENGINES;
use dualbus_stress::soak::{
    schedule, Phase, SoakTraffic, SoakTrafficOptions, SoakTrafficReport, Step,
};
use dualbus_stress::{peak_rss_of, RedisServer, DEFAULT_PREFIX};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The prefix of the checked traffic's stream keys: the engines use the default, so none of
/// them takes the checked messages for its own.
const CHECKED_PREFIX: &str = "soak";
/// The engine whose process each consumer kill kills (SIGKILL) and starts again.
pub const KILLED_ENGINE: &str = "vpin";
/// The hub's market: three symbols of the synthetic provider at a minute of market a second.
const HUB_ARGS: [&str; 4] = ["--speed", "60x", "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT"];
/// The shortest soak: time for a kill of each broker and each other fault.
pub const MIN_DURATION: Duration = Duration::from_secs(30);
/// The longest soak.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The shortest interval between broker kills.
pub const MIN_KILL_EVERY: Duration = Duration::from_secs(10);
/// Market data during a burst: this many times the rate.
const BURST_FACTOR: u64 = 50;
/// How long engines take to come up, at most (a startup wait, not a measurement).
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// How long the checked groups may take to catch up before a broker kill, and a killed bus to
/// be taken back, at most.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// How long a killed broker stays down before it is restarted.
const BROKER_DOWN: Duration = Duration::from_secs(1);
/// How long an engine process has to stop after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How often processes are checked and their peak memory read.
const POLL: Duration = Duration::from_millis(500);

/// How to run the soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long.
    pub duration: Duration,
    /// A broker kill every this long (a third of the duration when that is shorter).
    pub kill_every: Duration,
    /// Checked messages per second per bus.
    pub rate: u64,
    /// This `dualbus` binary: the engine processes and the checked consumer process.
    pub exe: PathBuf,
}

/// One engine process's part of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineReport {
    /// The engine.
    pub name: String,
    /// Largest peak resident set (VmHWM) of its processes.
    pub peak_rss_bytes: u64,
    /// Times it was killed and started again.
    pub restarts: u64,
    /// Why its last process stopped, from its final counts (`terminated`: the soak's SIGTERM).
    pub stopped: Option<String>,
    /// Messages its last process received and published, every kind.
    pub received: u64,
    /// See `received`.
    pub published: u64,
}

/// What a soak found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// `soak`.
    pub scenario: String,
    /// How long it ran.
    pub duration_s: f64,
    /// The interval between broker kills.
    pub kill_every_s: f64,
    /// The checked traffic.
    #[serde(flatten)]
    pub checked: SoakTrafficReport,
    /// Broker kills by bus (`md`, `logic`).
    pub broker_kills: BTreeMap<String, u64>,
    /// Engine processes killed (SIGKILL) and started again.
    pub consumer_kills: u64,
    /// Stalls of the slow group.
    pub slow_consumer_stalls: u64,
    /// Bursts of market data.
    pub bursts: u64,
    /// Dead letters on the brokers, every group (engines' and checked), summed over each
    /// server's life: read before each kill and at the end.
    pub dead_lettered: u64,
    /// The same by group.
    pub dead_lettered_by_group: BTreeMap<String, u64>,
    /// Entries trimmed before a group read them (`{stream}#trimmed`), read and summed as
    /// `dead_lettered` is.
    pub trimmed_unread: u64,
    /// The same by group.
    pub trimmed_unread_by_group: BTreeMap<String, u64>,
    /// Every engine process.
    pub engines: Vec<EngineReport>,
    /// Engine processes that exited on their own.
    pub engine_deaths: Vec<String>,
    /// Peak resident set of every process: `self`, each engine, each `redis-server`, the
    /// checked consumer processes.
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// What makes the soak fail (empty: it passed).
    pub failures: Vec<String>,
}

/// An engine process, restarted under the same instance name.
struct EngineProc {
    name: &'static str,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    peak_rss: u64,
    restarts: u64,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The processes of the soak and what it has counted so far.
struct Soak<'a> {
    opts: &'a SoakOptions,
    dir: PathBuf,
    md_server: RedisServer,
    logic_server: RedisServer,
    engines: Vec<EngineProc>,
    report: SoakReport,
    server_rss: [u64; 2],
    self_rss: u64,
    start: Instant,
    progress: &'a (dyn Fn(&str) + Sync),
}

/// Runs the soak; `progress` receives a line per phase.
///
/// # Errors
/// When the servers or engines cannot be started, a broker cannot be read, or the soak is
/// interrupted (SIGINT, SIGTERM): its processes are killed then, and there is no report.
pub async fn run(
    opts: &SoakOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<SoakReport> {
    let (every, steps) = schedule(opts.duration, opts.kill_every);
    let dir = std::env::temp_dir().join(format!("dualbus-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut soak = Soak {
        opts,
        md_server: RedisServer::start().context("starting the MarketData redis-server")?,
        logic_server: RedisServer::start().context("starting the Engine Logic redis-server")?,
        dir,
        engines: Vec::new(),
        report: SoakReport {
            scenario: "soak".into(),
            kill_every_s: every.as_secs_f64(),
            ..Default::default()
        },
        server_rss: [0; 2],
        self_rss: 0,
        start: Instant::now(),
        progress,
    };
    // SIGINT or SIGTERM ends the soak at once: dropping it kills its processes.
    let mut stop = super::stop::StopSignal::new()?;
    let result = tokio::select! {
        r = soak.run(&steps, every) => r,
        why = stop.recv() => Err(anyhow::anyhow!(
            "{why}: the soak's processes are killed, no report"
        )),
    };
    // A failed soak keeps the engines' output for a look; a passed one removes it.
    match result {
        Ok(r) if r.failures.is_empty() => {
            let _ = std::fs::remove_dir_all(&soak.dir);
            Ok(r)
        }
        Ok(r) => Ok(r),
        Err(e) => Err(e.context(format!("the engines' output is in {}", soak.dir.display()))),
    }
}

impl Soak<'_> {
    async fn run(&mut self, steps: &[Step], every: Duration) -> anyhow::Result<SoakReport> {
        let (md, logic) = (self.md_server.url(), self.logic_server.url());
        self.start_engines(&md, &logic).await?;
        let mut traffic = SoakTraffic::start(
            &md,
            &logic,
            &SoakTrafficOptions {
                rate: self.opts.rate,
                prefix: CHECKED_PREFIX.into(),
                consumer_exe: Some(self.opts.exe.clone()),
                // The kills are seen at once (the connection breaks); a longer heartbeat keeps
                // the load of thirteen engine processes from passing for a hung broker.
                heartbeat_timeout: Some(Duration::from_secs(1)),
                idle: Duration::from_secs(5),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the checked traffic: {e}"))?;
        self.start = Instant::now();
        let stall = (every / 4).min(Duration::from_secs(20));
        let burst = (every / 4).min(Duration::from_secs(10));
        let mut broker = BrokerCounts::default();
        for step in steps {
            self.idle_until(self.start + step.at).await;
            match step.phase {
                Phase::BrokerKill(bus) => {
                    let caught_up = traffic.catch_up(CATCH_UP_LIMIT).await;
                    self.sample();
                    let server = self.server(bus);
                    broker.add(broker_counts(&server.url(), bus).await?);
                    server.kill();
                    traffic.fault(bus);
                    *self
                        .report
                        .broker_kills
                        .entry(bus.as_str().to_string())
                        .or_default() += 1;
                    tokio::time::sleep(BROKER_DOWN).await;
                    self.server(bus)
                        .restart()
                        .with_context(|| format!("restarting the {} server", bus_name(bus)))?;
                    let t = Instant::now();
                    let back = traffic.wait_back(bus, CATCH_UP_LIMIT).await;
                    if !back {
                        self.report.failures.push(format!(
                            "the checked publisher did not take the {} bus back within {:?} \
                             of its restart at {}",
                            bus_name(bus),
                            CATCH_UP_LIMIT,
                            self.clock()
                        ));
                    }
                    self.say(&format!(
                        "broker kill: {} server (SIGKILL, restarted empty after {BROKER_DOWN:?}; \
                         traffic back on it after {:.1} s{})",
                        bus_name(bus),
                        t.elapsed().as_secs_f64(),
                        if caught_up {
                            ""
                        } else {
                            "; the checked groups had not caught up before it"
                        }
                    ));
                }
                Phase::ConsumerKill => {
                    let md = md.clone();
                    let logic = logic.clone();
                    self.kill_engine(KILLED_ENGINE, &md, &logic).await?;
                    let checked = traffic
                        .kill_consumer(Duration::from_secs(2))
                        .await
                        .map_err(|e| anyhow::anyhow!("the checked consumer kill: {e}"))?;
                    self.report.consumer_kills += 1;
                    self.say(&format!(
                        "consumer kill: engine {KILLED_ENGINE} (SIGKILL, started again){}",
                        if checked {
                            "; a consumer process of the checked group killed holding its batch"
                        } else {
                            ""
                        }
                    ));
                }
                Phase::SlowConsumer => {
                    traffic.stall_slow(true);
                    self.idle_for(stall).await;
                    let behind = traffic.behind();
                    traffic.stall_slow(false);
                    let t = Instant::now();
                    let caught_up = traffic.catch_up(CATCH_UP_LIMIT).await;
                    self.report.slow_consumer_stalls += 1;
                    self.say(&format!(
                        "slow consumer: the slow group stalled {stall:?} ({behind} messages \
                         behind), {} {} ms",
                        if caught_up {
                            "caught up in"
                        } else {
                            "had not caught up after"
                        },
                        t.elapsed().as_millis()
                    ));
                }
                Phase::Burst => {
                    traffic.set_rate_factor(BURST_FACTOR);
                    self.idle_for(burst).await;
                    traffic.set_rate_factor(1);
                    self.report.bursts += 1;
                    self.say(&format!(
                        "burst: market data at {BURST_FACTOR}x ({} msgs/s) for {burst:?}",
                        self.opts.rate * BURST_FACTOR
                    ));
                }
            }
        }
        self.idle_until(self.start + self.opts.duration).await;
        self.report.duration_s = self.start.elapsed().as_secs_f64();
        self.say("stopping: the checked traffic drains, then the engines stop (SIGTERM)");
        self.report.checked = traffic.finish(Duration::from_secs(30)).await;
        self.sample();
        self.stop_engines().await;
        for (bus, _) in BUSES {
            broker.add(broker_counts(&self.server(bus).url(), bus).await?);
        }
        self.finish_report(broker);
        Ok(std::mem::take(&mut self.report))
    }

    fn server(&mut self, bus: BusId) -> &mut RedisServer {
        match bus {
            BusId::MarketData => &mut self.md_server,
            BusId::Logic => &mut self.logic_server,
        }
    }

    /// `m:ss` since the faults began.
    fn clock(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!("{}:{:02}", s / 60, s % 60)
    }

    fn say(&self, line: &str) {
        (self.progress)(&format!("  [{}] {line}", self.clock()));
    }

    /// The engine processes: the consumers first, each up (its first heartbeat) before the
    /// hub starts, as `dualbus run` starts them.
    async fn start_engines(&mut self, md: &str, logic: &str) -> anyhow::Result<()> {
        for name in ENGINES.iter().copied().filter(|n| *n != "marketdata") {
            self.spawn(name, md, logic)?;
        }
        self.wait_up(logic, ENGINES.iter().filter(|n| **n != "marketdata"))
            .await?;
        self.spawn("marketdata", md, logic)?;
        self.wait_up(logic, ["marketdata"].iter()).await?;
        (self.progress)(&format!(
            "  {} engine processes up (the hub: synthetic market, {})",
            self.engines.len(),
            HUB_ARGS.join(" ")
        ));
        Ok(())
    }

    /// Starts engine `name`'s process (again, when it ran before), its output appended to
    /// files of the soak's directory. It reads no `dualbus.toml` and no `DUALBUS_*` variable:
    /// the system runs on the built-in settings.
    fn spawn(&mut self, name: &'static str, md: &str, logic: &str) -> anyhow::Result<()> {
        let i = match self.engines.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                let mut args: Vec<String> = [
                    "engine",
                    name,
                    "--backend",
                    "redis",
                    "--md-url",
                    md,
                    "--logic-url",
                    logic,
                    "--instance",
                    &format!("{name}-1"),
                    "--json",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                match name {
                    "marketdata" => args.extend(HUB_ARGS.iter().map(|s| s.to_string())),
                    // The dashboard on any free port.
                    "websocket" => args.extend([
                        "--settings".to_string(),
                        r#"{"bind":"127.0.0.1:0"}"#.to_string(),
                    ]),
                    _ => {}
                }
                self.engines.push(EngineProc {
                    name,
                    args,
                    child: None,
                    pid: None,
                    peak_rss: 0,
                    restarts: 0,
                    stdout: self.dir.join(format!("{name}.out")),
                    stderr: self.dir.join(format!("{name}.err")),
                });
                self.engines.len() - 1
            }
        };
        let e = &mut self.engines[i];
        let append = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let mut cmd = tokio::process::Command::new(&self.opts.exe);
        cmd.args(&e.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(append(&e.stdout)?)
            .stderr(append(&e.stderr)?)
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DUALBUS_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} engine {name}", self.opts.exe.display()))?;
        e.pid = child.id();
        e.child = Some(child);
        Ok(())
    }

    /// Waits until each of `names` has sent a heartbeat on the Engine Logic bus (an engine
    /// subscribes first, then sends its first heartbeat).
    async fn wait_up<'n>(
        &mut self,
        logic: &str,
        names: impl Iterator<Item = &'n &'static str>,
    ) -> anyhow::Result<()> {
        let names: Vec<&str> = names.copied().collect();
        let mut cfg = Config::default();
        cfg.logic.url = logic.to_string();
        let mut conn = inspect::connect(&cfg, BusId::Logic, Duration::from_secs(2)).await?;
        let key = format!("{DEFAULT_PREFIX}:logic:engine_health");
        let t = Instant::now();
        loop {
            let up: BTreeSet<String> = inspect::all_entries(&mut conn, &key)
                .await?
                .iter()
                .filter_map(|(_, fields)| {
                    fields
                        .iter()
                        .find(|(k, _)| k == b"src")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                })
                .collect();
            let waiting: Vec<&str> = names.iter().copied().filter(|n| !up.contains(*n)).collect();
            if waiting.is_empty() {
                return Ok(());
            }
            self.poll();
            if let Some(d) = self.report.engine_deaths.first() {
                anyhow::bail!("an engine died while the system started: {d}");
            }
            if t.elapsed() > STARTUP_LIMIT {
                anyhow::bail!(
                    "engines {waiting:?} did not come up within {STARTUP_LIMIT:?} (their \
                     output: {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills engine `name`'s process (SIGKILL) and starts it again under the same instance
    /// name (it re-reads its own pending messages first).
    async fn kill_engine(
        &mut self,
        name: &'static str,
        md: &str,
        logic: &str,
    ) -> anyhow::Result<()> {
        self.sample();
        let Some(e) = self.engines.iter_mut().find(|e| e.name == name) else {
            anyhow::bail!("no engine {name}");
        };
        let Some(mut child) = e.child.take() else {
            // It died on its own: that is reported; it is not started again.
            return Ok(());
        };
        child.start_kill()?;
        let _ = child.wait().await;
        e.restarts += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.spawn(name, md, logic)
    }

    /// Reads every process's peak resident set.
    fn sample(&mut self) {
        self.self_rss = self.self_rss.max(peak_rss_of("self"));
        for e in &mut self.engines {
            if let (Some(pid), Some(_)) = (e.pid, &e.child) {
                e.peak_rss = e.peak_rss.max(peak_rss_of(&pid.to_string()));
            }
        }
        for (i, s) in [&self.md_server, &self.logic_server].iter().enumerate() {
            if let Some(pid) = s.pid() {
                self.server_rss[i] = self.server_rss[i].max(peak_rss_of(&pid.to_string()));
            }
        }
    }

    /// Samples memory and notes engine processes that exited on their own (they are not
    /// started again).
    fn poll(&mut self) {
        self.sample();
        let clock = self.clock();
        for e in &mut self.engines {
            let Some(child) = e.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                e.child = None;
                self.report.engine_deaths.push(format!(
                    "{} exited on its own ({status}) at {clock}; its last output: {}",
                    e.name,
                    tail(&e.stderr, 5)
                ));
            }
        }
    }

    /// Watches the processes until `deadline`.
    async fn idle_until(&mut self, deadline: Instant) {
        loop {
            self.poll();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    async fn idle_for(&mut self, d: Duration) {
        self.idle_until(Instant::now() + d).await;
    }

    /// Stops every engine process with SIGTERM and reads its final counts.
    async fn stop_engines(&mut self) {
        self.poll();
        for e in &self.engines {
            if let (Some(pid), Some(_)) = (e.pid, &e.child) {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        for e in &mut self.engines {
            let Some(mut child) = e.child.take() else {
                continue;
            };
            match tokio::time::timeout(STOP_LIMIT, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(status) => self.report.failures.push(format!(
                    "engine {} ended with {status:?} after SIGTERM; its last output: {}",
                    e.name,
                    tail(&e.stderr, 5)
                )),
                Err(_) => {
                    let _ = child.start_kill();
                    self.report.failures.push(format!(
                        "engine {} did not stop within {STOP_LIMIT:?} of SIGTERM",
                        e.name
                    ));
                }
            }
            let out = std::fs::read_to_string(&e.stdout).unwrap_or_default();
            let last = out
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok());
            let sum = |v: &serde_json::Value| -> u64 {
                v.as_object()
                    .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
                    .unwrap_or(0)
            };
            self.report.engines.push(EngineReport {
                name: e.name.to_string(),
                peak_rss_bytes: e.peak_rss,
                restarts: e.restarts,
                stopped: last
                    .as_ref()
                    .and_then(|v| v["stopped"].as_str().map(str::to_string)),
                received: last.as_ref().map_or(0, |v| sum(&v["received"])),
                published: last.as_ref().map_or(0, |v| sum(&v["published"])),
            });
        }
    }

    /// Totals, memory and what failed.
    fn finish_report(&mut self, broker: BrokerCounts) {
        let r = &mut self.report;
        r.dead_lettered = broker.dead.values().sum();
        r.dead_lettered_by_group = broker.dead;
        r.trimmed_unread = broker.trimmed.values().sum();
        r.trimmed_unread_by_group = broker.trimmed;
        r.peak_rss_bytes.insert("self".into(), self.self_rss);
        for (i, (bus, _)) in BUSES.iter().enumerate() {
            r.peak_rss_bytes
                .insert(format!("redis-server {}", bus.as_str()), self.server_rss[i]);
        }
        if r.checked.checked_consumer_kills > 0 {
            r.peak_rss_bytes
                .insert("stress-consumer".into(), r.checked.consumer_peak_rss_bytes);
        }
        for e in &r.engines {
            r.peak_rss_bytes
                .insert(format!("engine {}", e.name), e.peak_rss_bytes);
        }
        let c = &r.checked;
        let per_group = |f: fn(&dualbus_stress::Tally) -> u64| {
            c.groups
                .iter()
                .map(|g| format!("{} {}", g.group, f(&g.tally)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut failures = Vec::new();
        if c.lost > 0 {
            failures.push(format!(
                "{} checked messages lost ({})",
                c.lost,
                per_group(|t| t.lost)
            ));
        }
        if c.duplicated > 0 {
            failures.push(format!(
                "{} checked messages duplicated ({})",
                c.duplicated,
                per_group(|t| t.duplicated)
            ));
        }
        if c.published == 0 {
            failures.push("nothing was published".into());
        }
        failures.extend(r.engine_deaths.iter().cloned());
        failures.append(&mut r.failures);
        r.failures = failures;
    }
}

/// Dead letters and entries trimmed unread, by group.
#[derive(Debug, Default)]
struct BrokerCounts {
    dead: BTreeMap<String, u64>,
    trimmed: BTreeMap<String, u64>,
}

impl BrokerCounts {
    fn add(&mut self, other: BrokerCounts) {
        for (mine, theirs) in [
            (&mut self.dead, other.dead),
            (&mut self.trimmed, other.trimmed),
        ] {
            for (g, n) in theirs {
                *mine.entry(g).or_default() += n;
            }
        }
    }
}

/// What the server at `url` (the `bus` bus's) holds now: the dead letters of both buses'
/// dead-letter streams (a bus's own, and the other's failover mirror) and the entries trimmed
/// before a group read them, for the engines' streams and the checked traffic's.
async fn broker_counts(url: &str, bus: BusId) -> anyhow::Result<BrokerCounts> {
    let mut cfg = Config::default();
    cfg.md.url = url.to_string();
    cfg.logic.url = url.to_string();
    let mut conn = inspect::connect(&cfg, bus, Duration::from_secs(2)).await?;
    let mut out = BrokerCounts::default();
    for prefix in [DEFAULT_PREFIX, CHECKED_PREFIX] {
        let mut keys = Config::default();
        keys.prefix = prefix.to_string();
        let router = Router::new(&keys);
        for b in BusId::ALL {
            for ((_, group), n) in inspect::dead_counts(&mut conn, &router.dead_stream(b)).await? {
                *out.dead.entry(group).or_default() += n;
            }
        }
        for stream in inspect::streams(&mut conn, prefix).await? {
            for g in stream.groups.into_iter().filter(|g| g.trimmed > 0) {
                *out.trimmed.entry(g.name).or_default() += g.trimmed;
            }
        }
    }
    Ok(out)
}

/// The last `n` lines of a file, joined with ` | `.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
