//! What the system tests share: engine processes with their output in files, killed when the
//! test ends, and the heartbeats that say an engine is up.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One engine process, its output going to files (no pipe to fill up and block it).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub status: Option<ExitStatus>,
}

/// The engine processes and their output directory; dropping it kills those still running
/// (so a failing or timed-out test leaves nothing behind) and removes the directory.
pub struct Procs {
    pub dir: PathBuf,
    pub all: Vec<Proc>,
}

impl Procs {
    /// Processes whose output goes to a new directory named after `test`.
    pub fn new(test: &str) -> Procs {
        let dir = std::env::temp_dir().join(format!("dualbus-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the output directory");
        Procs {
            dir,
            all: Vec::new(),
        }
    }

    /// Starts `dualbus ARGS...` as the process `name`, with `env` set.
    pub fn spawn(&mut self, name: &str, args: &[String], env: &[(&str, &str)]) {
        let stdout = self.dir.join(format!("{name}.out"));
        let stderr = self.dir.join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_dualbus"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create a stdout file"))
            .stderr(File::create(&stderr).expect("create a stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `dualbus {}`: {e}", args.join(" ")));
        self.all.push(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            status: None,
        });
    }

    /// Whether `name`'s process has exited (recording its status).
    pub fn exited(&mut self, name: &str) -> bool {
        let p = self
            .all
            .iter_mut()
            .find(|p| p.name == name)
            .expect("a started engine");
        if p.status.is_none() {
            p.status = p.child.try_wait().expect("try_wait");
        }
        p.status.is_some()
    }

    /// Waits until every process has exited; false if `limit` passed first.
    pub fn wait_all(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let names: Vec<String> = self.all.iter().map(|p| p.name.clone()).collect();
            let running = names.iter().filter(|n| !self.exited(n)).count();
            if running == 0 {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every process's stderr, for a failure message.
    pub fn stderrs(&self) -> String {
        let mut s = String::new();
        for p in &self.all {
            let err = std::fs::read_to_string(&p.stderr).unwrap_or_default();
            s += &format!(
                "\n----- {} (exit {}) stderr -----\n{}",
                p.name,
                p.status
                    .map(|st| st.to_string())
                    .unwrap_or_else(|| "still running".into()),
                err.trim_end()
            );
        }
        s
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.all {
            if p.status.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `field` (`src`: the engine, `inst`: the instance) of every heartbeat on the Engine
/// Logic bus so far. An engine host subscribes first and sends its first heartbeat after, so a
/// heartbeat means its groups exist. The stream key is the bus's `{prefix}:{bus}:{kind}` with
/// the default prefix.
pub fn heartbeats(
    conn: &mut Option<redis::Connection>,
    url: &str,
    field: &str,
) -> BTreeSet<String> {
    if conn.is_none() {
        *conn = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .ok();
    }
    let Some(c) = conn.as_mut() else {
        return BTreeSet::new();
    };
    let reply: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XRANGE")
        .arg("dualbus:logic:engine_health")
        .arg("-")
        .arg("+")
        .query(c);
    match reply {
        Ok(r) => r
            .ids
            .iter()
            .filter_map(|id| id.get::<String>(field))
            .collect(),
        Err(_) => {
            *conn = None;
            BTreeSet::new()
        }
    }
}

/// A count of an engine's final report (`received` or `published`, by kind).
pub fn count(v: &Value, side: &str, kind: &str) -> u64 {
    v[side][kind].as_u64().unwrap_or(0)
}

/// `engine NAME --backend redis` on the two buses, as instance `inst`, stopping after
/// `duration`, reporting its counts as JSON.
pub fn engine_args(name: &str, inst: &str, md: &str, logic: &str, duration: &str) -> Vec<String> {
    [
        "engine",
        name,
        "--backend",
        "redis",
        "--md-url",
        md,
        "--logic-url",
        logic,
        "--instance",
        inst,
        "--duration",
        duration,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
