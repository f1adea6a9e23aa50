//! A real `redis-server` for tests and benchmarks, on a free loopback port, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process. Dropping it kills the server (SIGKILL) and removes its
/// working directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Further `redis-server` arguments (`--aclfile PATH`).
    extra: Vec<String>,
    /// TLS only ([`RedisServer::start_tls`]): `port` is the TLS port.
    tls: bool,
}

/// Ports the user's own buses use by default; tests never take them.
const RESERVED: [u16; 2] = [6380, 6381];

fn free_port() -> std::io::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !RESERVED.contains(&port) {
            return Ok(port);
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    // A server whose default user is off answers -NOAUTH: it is up.
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && (&buf[..5] == b"+PONG" || &buf[..5] == b"-NOAU"))
}

impl RedisServer {
    /// Starts a server on a free port (persistence off) and waits until it answers.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up.
    pub fn start() -> std::io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Starts a server on a free port with further `redis-server` arguments (e.g.
    /// `["--aclfile", path]`), and waits until it answers.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up.
    pub fn start_with(args: &[&str]) -> std::io::Result<RedisServer> {
        RedisServer::start_any(args, false)
    }

    /// Starts a server on a free port that speaks TLS only (`rediss://`), with the server
    /// certificate and key given, requiring clients to present a certificate signed by `ca`,
    /// and further arguments.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        args: &[&str],
    ) -> std::io::Result<RedisServer> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut all: Vec<String> = [
            "--tls-cert-file".to_string(),
            path(cert),
            "--tls-key-file".to_string(),
            path(key),
            "--tls-ca-cert-file".to_string(),
            path(ca),
            "--tls-auth-clients".to_string(),
            "yes".to_string(),
        ]
        .into();
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        RedisServer::start_any(&all, true)
    }

    fn start_any(args: &[&str], tls: bool) -> std::io::Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match RedisServer::start_on_with(port, args, tls) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Starts a server on `port`.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not answer within 10 s.
    pub fn start_on(port: u16) -> std::io::Result<RedisServer> {
        RedisServer::start_on_with(port, &[], false)
    }

    fn start_on_with(port: u16, args: &[&str], tls: bool) -> std::io::Result<RedisServer> {
        let dir = node_dir(port);
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: args.iter().map(|a| a.to_string()).collect(),
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(if self.tls {
                vec![
                    "--port".to_string(),
                    "0".to_string(),
                    "--tls-port".to_string(),
                ]
            } else {
                vec!["--port".to_string()]
            })
            .args([
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start redis-server ({e}); install it: apt-get install redis-server"
                    ),
                )
            })?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(std::io::Error::other(format!(
                        "redis-server on port {} exited: {status}",
                        self.port
                    )));
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                self.kill();
                return Err(std::io::Error::other(format!(
                    "redis-server on port {} did not answer within 10 s",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Whether it is up: it answers `PING` (TLS: it accepts a connection).
    fn answers(&self) -> bool {
        if self.tls {
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        ping(self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:{port}` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Freezes the server (SIGSTOP), as a hung host would: connections stay open, nothing
    /// answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    ///
    /// # Errors
    /// When it does not come up.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local Redis Cluster for tests: `masters` masters, each with one replica, on free loopback
/// ports (each node's cluster bus on its port + 10000), every node killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> std::io::Result<u16> {
    for _ in 0..1000 {
        let port = free_port()?;
        if port > 55_000 || taken.contains(&port) || taken.contains(&(port + 10_000)) {
            // An ephemeral port high enough that its bus port does not exist: pick from a
            // range below instead.
            let alt = 20_000 + (port % 30_000);
            if !taken.contains(&alt)
                && TcpListener::bind(("127.0.0.1", alt)).is_ok()
                && TcpListener::bind(("127.0.0.1", alt + 10_000)).is_ok()
                && !RESERVED.contains(&alt)
            {
                return Ok(alt);
            }
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free pair of ports for a cluster node",
    ))
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas (`cluster-node-timeout` 1000 ms), forms
    /// the cluster with `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Errors
    /// When a node does not start or the cluster does not form within 30 s.
    pub fn start(masters: usize) -> std::io::Result<RedisCluster> {
        let mut nodes: Vec<RedisServer> = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..2 * masters {
            let port = free_cluster_port(&ports)?;
            ports.push(port);
            let log = node_dir(port).join("redis.log");
            std::fs::create_dir_all(node_dir(port))?;
            nodes.push(RedisServer::start_on_with(
                port,
                &[
                    "--logfile",
                    &log.to_string_lossy(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    // Replicas copy their master at once (the default waits 5 s for others).
                    "--repl-diskless-sync-delay",
                    "0",
                ],
                false,
            )?);
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let cluster = RedisCluster { nodes, masters };
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every running node reports `cluster_state:ok` and every running replica has
    /// copied its master (`master_link_status:up`): before that a replica cannot take over.
    ///
    /// # Errors
    /// When they do not within `within`.
    pub fn wait_ready(&self, within: Duration) -> std::io::Result<()> {
        let t0 = Instant::now();
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                cluster_info(n.port).is_some_and(|i| i.contains("cluster_state:ok"))
                    && replication(n.port).is_some_and(|r| {
                        r.contains("role:master") || r.contains("master_link_status:up")
                    })
            });
            if ok {
                return Ok(());
            }
            if t0.elapsed() > within {
                return Err(std::io::Error::other(format!(
                    "the cluster is not ready after {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of the cluster for the bus: `redis+cluster://` and the first masters' addresses.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Every node's port, masters first as created.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The port of the master now serving `slot` (asked of a running node).
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let n = self.nodes.iter().find(|n| n.child.is_some())?;
        let out = Command::new("redis-cli")
            .args(["-p", &n.port.to_string(), "CLUSTER", "SLOTS"])
            .output()
            .ok()?;
        // Lines: first, last, ip, port, id, (replicas)... per range.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(first), Ok(last)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>()) {
                if (first..=last).contains(&slot) {
                    return lines[i + 3].parse().ok();
                }
            }
            i += 1;
        }
        None
    }

    /// The log of the node on `port`.
    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(node_dir(port).join("redis.log")).unwrap_or_default()
    }

    /// Kills the node on `port` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }
}

/// The working directory of the test server on `port`.
fn node_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("dualbus-redis-{}-{port}", std::process::id()))
}

/// `INFO replication` of the node on `port`.
fn replication(port: u16) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "replication"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CLUSTER INFO` of the node on `port`.
fn cluster_info(port: u16) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
