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
        let dir = std::env::temp_dir().join(format!("dualbus-redis-{}-{port}", std::process::id()));
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
