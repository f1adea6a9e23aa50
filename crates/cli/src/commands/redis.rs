//! `dualbus redis up|down|status`: two local Redis servers, one per bus.

use super::{acl, certs, inspect, redis_cluster, runtime, Global, BUSES};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use dualbus_bus::Config;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Arguments of `dualbus redis`.
#[derive(Args, Debug)]
pub struct RedisArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Start both servers (loopback only, `maxmemory-policy noeviction` so streams are never
    /// evicted, one Redis user per engine), from configs generated in --dir.
    Up(UpArgs),
    /// Stop both servers and the cluster's nodes, if any (as `admin`, with the password in
    /// --dir/secrets).
    Down(DownArgs),
    /// Per bus: reachable, memory, streams with length, groups with lag and pending.
    Status,
    /// Write the ACL file and the passwords only, for servers you run yourself: put
    /// `aclfile DIR/users.acl` in their redis.conf and give the engines DIR/secrets (or each
    /// engine its own password, in its URL or DUALBUS_REDIS_PASSWORD).
    Acl(AclArgs),
}

#[derive(Args, Debug)]
struct AclArgs {
    /// Where users.acl and secrets/ go.
    #[arg(long, default_value = ".dualbus/redis")]
    dir: PathBuf,
    /// Make new passwords for every user (servers load them on restart, or with `ACL LOAD`).
    #[arg(long)]
    rotate_passwords: bool,
    /// Also make a CA and server and client certificates in --dir/tls (kept when there), for
    /// servers with `tls-port`, `tls-cert-file`, `tls-key-file`, `tls-ca-cert-file`.
    #[arg(long)]
    tls: bool,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Where the generated configs, logs, pid files and data live.
    #[arg(long, default_value = ".dualbus/redis")]
    dir: PathBuf,
    /// Persistence: `none` (a restart starts empty), `rdb` (snapshots: a crash loses the writes
    /// since the last one) or `aof` (append-only file, fsync every second: a crash loses at most
    /// about one second).
    #[arg(long, value_enum, default_value_t = Persistence::None)]
    persistence: Persistence,
    /// Memory limit per server (Redis syntax, e.g. `4gb`; `0` = no limit). At the limit writes
    /// fail rather than evict.
    #[arg(long, default_value = "0")]
    maxmemory: String,
    /// Start the servers without users and passwords: anyone who reaches the ports may read,
    /// write or delete every stream (the behaviour before per-engine users).
    #[arg(long)]
    no_acl: bool,
    /// Make new passwords for every user (the servers must be restarted to use them: `redis
    /// down`, then `redis up --rotate-passwords`).
    #[arg(long)]
    rotate_passwords: bool,
    /// Serve TLS only (rediss://), with a CA and server and client certificates made in
    /// --dir/tls (kept across runs); clients must present the client certificate.
    #[arg(long)]
    tls: bool,
    /// Put the MarketData bus on a local Redis Cluster of N masters (at least 3), each with
    /// one replica, instead of one server; prints the redis+cluster:// address to give the
    /// engines (docs/scaling.md).
    #[arg(long, value_name = "N")]
    cluster: Option<u16>,
    /// The cluster's first port: the nodes use 2N ports from here (and each its port + 10000
    /// for the cluster bus).
    #[arg(long, default_value_t = 7000, requires = "cluster")]
    cluster_port: u16,
}

#[derive(Args, Debug)]
struct DownArgs {
    /// The directory `redis up` used (its secrets/admin password stops the servers).
    #[arg(long, default_value = ".dualbus/redis")]
    dir: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Persistence {
    None,
    Rdb,
    Aof,
}

/// Runs `dualbus redis ...`.
pub fn run(args: RedisArgs, global: &Global) -> anyhow::Result<()> {
    match args.action {
        Action::Up(up) => start(global, &up),
        Action::Down(down) => {
            let cfg = in_dir(global, &down.dir).redis_config()?;
            runtime(1)?.block_on(stop(&cfg))?;
            let n = redis_cluster::down(&down.dir, admin_password(&down.dir).as_deref())?;
            if n > 0 {
                println!("MarketData bus: the cluster's {n} nodes stopped");
            }
            Ok(())
        }
        Action::Status => runtime(1)?.block_on(status(&global.redis_config()?)),
        Action::Acl(a) => {
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("cannot create {}", a.dir.display()))?;
            let file = acl::write(&a.dir, &global.config()?, a.rotate_passwords)?;
            println!(
                "ACL file {} (aclfile in each server's redis.conf); passwords in {} (mode 0600)",
                file.display(),
                a.dir.join(acl::SECRETS).display()
            );
            if a.tls {
                let t = certs::write(&a.dir)?;
                println!(
                    "TLS: CA {}, server certificate {} and key {}, client certificate {} and \
                     key {}",
                    t.ca.display(),
                    t.server_cert.display(),
                    t.server_key.display(),
                    t.client_cert.display(),
                    t.client_key.display()
                );
            }
            Ok(())
        }
    }
}

/// (host, port) of a `redis://host:port` URL.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let shown = dualbus_core::redact_url(url);
    let info = redis::Client::open(url)
        .with_context(|| format!("invalid URL {shown:?}"))?
        .get_connection_info()
        .addr()
        .clone();
    match info {
        redis::ConnectionAddr::Tcp(host, port) => Ok((host, port)),
        redis::ConnectionAddr::TcpTls { host, port, .. } => Ok((host, port)),
        other => {
            bail!("{shown}: only redis://host:port addresses can be started locally ({other:?})")
        }
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// The `save` and `appendonly` lines of a persistence choice.
fn persistence_lines(p: Persistence) -> (&'static str, &'static str) {
    match p {
        Persistence::None => ("save \"\"", "appendonly no"),
        Persistence::Rdb => ("save 900 1 300 10 60 10000", "appendonly no"),
        Persistence::Aof => ("save \"\"", "appendonly yes\nappendfsync everysec"),
    }
}

/// The redis.conf of one bus.
fn conf(
    port: u16,
    dir: &Path,
    name: &str,
    up: &UpArgs,
    acl_file: Option<&Path>,
    tls: Option<&certs::TlsFiles>,
) -> String {
    let listen = match tls {
        None => format!("port {port}"),
        Some(t) => format!(
            "# TLS only, and every client presents a certificate signed by the CA.\n\
             port 0\n\
             tls-port {port}\n\
             tls-cert-file {}\n\
             tls-key-file {}\n\
             tls-ca-cert-file {}\n\
             tls-auth-clients yes",
            t.server_cert.display(),
            t.server_key.display(),
            t.ca.display()
        ),
    };
    let data = dir.join(format!("{name}-data"));
    let (save, aof) = persistence_lines(up.persistence);
    format!(
        "# Generated by `dualbus redis up` for the {name} bus.\n\
         {listen}\n\
         bind 127.0.0.1\n\
         protected-mode yes\n\
         daemonize yes\n\
         pidfile {pid}\n\
         logfile {log}\n\
         dir {data}\n\
         # Streams must never be evicted: at the memory limit writes fail instead.\n\
         maxmemory {maxmemory}\n\
         maxmemory-policy noeviction\n\
         # Persistence: {persistence}\n\
         {save}\n\
         {aof}\n\
         {acl}\n",
        pid = dir.join(format!("{name}.pid")).display(),
        log = dir.join(format!("{name}.log")).display(),
        data = data.display(),
        maxmemory = up.maxmemory,
        persistence = format!("{:?}", up.persistence).to_lowercase(),
        acl = match acl_file {
            Some(f) => format!(
                "# Users: one per engine, system and admin; the default user is off.\naclfile {}",
                f.display()
            ),
            None => "# No users (--no-acl): the default user may do anything.".to_string(),
        },
    )
}

/// The config file of the Redis server at `url` (`INFO server`, `config_file`; empty when it
/// runs without one); `None` when it does not answer that (a password, not Redis).
fn config_file(cfg: &Config, url: &str) -> Option<String> {
    let client = super::redis_client(cfg, url).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("config_file:"))
        .map(|f| f.trim().to_string())
}

/// Whether something listens on `url`'s port: for `redis://`, a server that answers a plain
/// `PING`; for `rediss://` (which a plain `PING` cannot reach), an accepted connection.
fn listening(url: &str) -> anyhow::Result<bool> {
    let (host, port) = host_port(url)?;
    if url.starts_with("rediss://") {
        return Ok(std::net::TcpStream::connect((host.as_str(), port)).is_ok());
    }
    Ok(inspect::ping(&host, port))
}

/// The admin password `redis up` wrote in `dir`, if any.
fn admin_password(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(acl::SECRETS).join(acl::ADMIN))
        .ok()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// `global`, taking the passwords from `dir/secrets` unless told where they are.
fn in_dir(global: &Global, dir: &Path) -> Global {
    let mut g = global.clone();
    let secrets = dir.join(acl::SECRETS);
    if g.redis_secrets.is_none() && secrets.is_dir() {
        g.redis_secrets = Some(secrets);
    }
    g
}

fn start(global: &Global, up: &UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&up.dir)
        .with_context(|| format!("cannot create {}", up.dir.display()))?;
    let dir = std::fs::canonicalize(&up.dir)?;
    let mut cfg = global.config()?;
    let tls = if up.tls {
        let files = certs::write(&dir)?;
        // The buses' addresses as TLS ones, with the certificates made for them.
        for url in [&mut cfg.md.url, &mut cfg.logic.url] {
            if let Some(rest) = url.strip_prefix("redis://") {
                *url = format!("rediss://{rest}");
            }
        }
        cfg.tls.ca_file = Some(files.ca.clone());
        cfg.tls.cert_file = Some(files.client_cert.clone());
        cfg.tls.key_file = Some(files.client_key.clone());
        Some(files)
    } else {
        None
    };
    if up.cluster.is_some() && up.tls {
        bail!("--cluster with --tls is not supported yet: start the cluster without --tls");
    }
    if up.cluster.is_none() && dualbus_redis::is_cluster_url(&cfg.md.url) {
        bail!(
            "the md bus is a cluster ({}): `dualbus redis up --cluster N` starts a local one",
            dualbus_core::redact_url(&cfg.md.url)
        );
    }
    let cfg = &cfg;
    if up.rotate_passwords {
        for (bus, name) in BUSES {
            if listening(&cfg.bus(bus).url)? {
                bail!(
                    "--rotate-passwords: the {name} bus is running; stop the servers first \
                     (`dualbus redis down`), then `dualbus redis up --rotate-passwords`, and \
                     restart the engines (they hold the old passwords)"
                );
            }
        }
    }
    let acl_file = if up.no_acl {
        None
    } else {
        Some(acl::write(&dir, cfg, up.rotate_passwords)?)
    };
    // As the operator, for a server that asks for a password.
    let mut admin = cfg.clone();
    in_dir(global, &dir).authenticate(&mut admin, acl::ADMIN)?;
    for (bus, name) in BUSES {
        if bus == dualbus_bus::BusId::MarketData && up.cluster.is_some() {
            continue;
        }
        let url = &cfg.bus(bus).url;
        let shown = dualbus_core::redact_url(url);
        let (host, port) = host_port(url)?;
        if !is_local(&host) {
            bail!("the {name} bus is at {shown}, which is not on this machine; `dualbus redis up` only starts local servers");
        }
        let short = bus.as_str();
        let conf_path = dir.join(format!("{short}.conf"));
        if listening(url)? {
            // Only a server `redis up` started (its config file is one of ours) is taken as
            // this bus's: another one on the port has its own settings (eviction,
            // persistence, memory), which this command would otherwise seem to vouch for.
            // Asked without credentials first: a server that is not ours never sees the
            // admin password unless it demands one.
            match config_file(cfg, url).or_else(|| config_file(&admin, &admin.bus(bus).url)) {
                Some(file) if file.ends_with(&format!("/{short}.conf")) => {
                    println!("{name} bus: {shown} already running (config {file})");
                    continue;
                }
                found => bail!(
                    "the {name} bus's address {shown} is taken by a Redis server that `dualbus \
                     redis up` did not start ({}); stop it, or give the bus another address \
                     (--{}-url)",
                    match found {
                        Some(f) if f.is_empty() => "it runs without a config file".to_string(),
                        Some(f) => format!("its config file is {f}"),
                        None => "it does not say how it was started".to_string(),
                    },
                    if short == "md" { "md" } else { "logic" }
                ),
            }
        }
        std::fs::create_dir_all(dir.join(format!("{short}-data")))?;
        std::fs::write(
            &conf_path,
            conf(port, &dir, short, up, acl_file.as_deref(), tls.as_ref()),
        )?;
        let status = Command::new("redis-server")
            .arg(&conf_path)
            .status()
            .context(
                "cannot run redis-server: install it (Debian/Ubuntu: apt-get install redis-server)",
            )?;
        if !status.success() {
            bail!(
                "redis-server refused {} ({status}); see {}",
                conf_path.display(),
                dir.join(format!("{short}.log")).display()
            );
        }
        let t0 = Instant::now();
        while !listening(url)? {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the {name} bus did not answer on {shown} within 10 s; see {}",
                    dir.join(format!("{short}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{name} bus: {shown} up (config {}, persistence {}, maxmemory-policy noeviction)",
            conf_path.display(),
            format!("{:?}", up.persistence).to_lowercase()
        );
    }
    if let Some(masters) = up.cluster {
        let plan = redis_cluster::ClusterPlan {
            masters,
            port: up.cluster_port,
        };
        let (save, aof) = persistence_lines(up.persistence);
        let persistence = format!("{save}\n{aof}");
        redis_cluster::up(
            &dir,
            &plan,
            &redis_cluster::NodeSettings {
                persistence: &persistence,
                persistent: up.persistence != Persistence::None,
                maxmemory: &up.maxmemory,
                acl_file: acl_file.as_deref(),
            },
            admin_password(&dir)
                .as_deref()
                .filter(|_| acl_file.is_some()),
        )?;
        let last = up.cluster_port + 2 * masters - 1;
        println!(
            "MarketData bus: Redis Cluster of {masters} masters and {masters} replicas on \
             127.0.0.1:{}-{last} (configs {}/cluster-PORT.conf, persistence {})\n  \
             give the engines its address, and split the market data over the masters:\n  \
             export DUALBUS_MD_URL={} DUALBUS_MD_PARTITIONS={}",
            up.cluster_port,
            dir.display(),
            format!("{:?}", up.persistence).to_lowercase(),
            plan.url(),
            4 * masters
        );
    }
    match &acl_file {
        Some(file) => println!(
            "users: one per engine, `system` (dualbus run) and `admin`; the default user is \
             off (ACL file {}); passwords in {} (mode 0600), found there by the dualbus \
             commands run from this directory (elsewhere: --redis-secrets)",
            file.display(),
            dir.join(acl::SECRETS).display()
        ),
        None => println!(
            "no users and no passwords (--no-acl): anyone who reaches the ports may read, \
             write or delete every stream"
        ),
    }
    if let Some(t) = &tls {
        println!(
            "TLS only, clients present a certificate: CA and certificates in {}; the dualbus \
             commands run from this directory find them for rediss:// addresses:\n  \
             export DUALBUS_MD_URL={} DUALBUS_LOGIC_URL={}",
            t.ca.parent().map_or(dir.clone(), PathBuf::from).display(),
            cfg.md.url,
            cfg.logic.url
        );
    }
    Ok(())
}

async fn stop(cfg: &Config) -> anyhow::Result<()> {
    for (bus, name) in BUSES {
        let url = &cfg.bus(bus).url;
        if dualbus_redis::is_cluster_url(url) {
            // A cluster's nodes are stopped from the files `redis up --cluster` wrote.
            continue;
        }
        let shown = dualbus_core::redact_url(url);
        let (host, _) = host_port(url)?;
        if !is_local(&host) {
            bail!("the {name} bus is at {shown}, which is not on this machine; `dualbus redis down` only stops local servers");
        }
        if !listening(url)? {
            println!("{name} bus: {shown} not running");
            continue;
        }
        let mut conn = inspect::connect(cfg, bus, Duration::from_secs(2)).await?;
        // The server closes the connection as it stops: an I/O error here is success.
        let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
        let t0 = Instant::now();
        while listening(url)? {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the {name} bus at {shown} is still running 10 s after SHUTDOWN");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("{name} bus: {shown} stopped");
    }
    Ok(())
}

async fn status(cfg: &Config) -> anyhow::Result<()> {
    let mut all_up = true;
    for (bus, name) in BUSES {
        let url = &cfg.bus(bus).url;
        let shown = dualbus_core::redact_url(url);
        let t0 = Instant::now();
        // The bus's server, or each master of its cluster.
        let conns = inspect::connect_nodes_named(
            cfg,
            bus,
            Duration::from_millis(cfg.bus(bus).connect_timeout_ms),
        )
        .await;
        let conns = match conns {
            Ok(c) => c,
            Err(e) => {
                all_up = false;
                println!(
                    "{name} bus ({shown}): unreachable: {}",
                    super::error_line(&e)
                );
                continue;
            }
        };
        let cluster = dualbus_redis::is_cluster_url(url);
        if cluster {
            println!(
                "{name} bus ({shown}): Redis Cluster, {} masters",
                conns.len()
            );
        }
        for (i, (node, mut conn)) in conns.into_iter().enumerate() {
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            let rtt = t0.elapsed();
            let info = inspect::server_info(&mut conn).await?;
            let get = |k: &str| info.get(k).cloned().unwrap_or_else(|| "?".into());
            let label = if cluster {
                format!("  master {} ({node})", i + 1)
            } else {
                format!("{name} bus ({shown})")
            };
            println!(
                "{label}: reachable (connect+PING {:.1} ms), redis {}, memory {} ({}), maxmemory-policy {}, aof {}",
                rtt.as_secs_f64() * 1e3,
                get("redis_version"),
                get("used_memory_human"),
                // `maxmemory 0` means the server may use all the host's memory.
                match info.get("maxmemory").map(String::as_str) {
                    Some("0") => "no limit".to_string(),
                    _ => format!("limit {}", get("maxmemory_human")),
                },
                get("maxmemory_policy"),
                if get("aof_enabled") == "1" { "on" } else { "off" },
            );
            let streams = inspect::streams(&mut conn, &cfg.prefix).await?;
            if streams.is_empty() {
                println!("  no streams under {}:*", cfg.prefix);
            }
            for s in streams {
                println!("  stream {}  length {}", s.key, s.length);
                for g in s.groups {
                    println!(
                        "    group {:<20} consumers {:<3} pending {:<8} lag {}",
                        g.name,
                        g.consumers,
                        g.pending,
                        g.lag.map_or("unknown".to_string(), |l| l.to_string())
                    );
                }
            }
        }
    }
    if !all_up {
        bail!("not every bus is reachable; {}", super::START_HINT);
    }
    Ok(())
}
