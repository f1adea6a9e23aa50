//! `dualbus redis status` on two real servers: the memory limit is said in words ("no limit"
//! for `maxmemory 0`, "limit 100.00M" once one is set), not as `limit 0B`.

use dualbus_testkit::RedisServer;
use std::process::Command;

fn status(md: &RedisServer, logic: &RedisServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["--md-url", &md.url(), "--logic-url", &logic.url()])
        .args(["redis", "status"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn redis_status_says_no_limit_rather_than_zero_bytes() {
    let md = RedisServer::start().expect("redis-server");
    let logic = RedisServer::start().expect("redis-server");
    let text = status(&md, &logic);
    assert_eq!(text.matches("(no limit)").count(), 2, "{text}");
    assert!(!text.contains("limit 0B"), "{text}");

    let set = Command::new("redis-cli")
        .args([
            "-p",
            &md.port().to_string(),
            "config",
            "set",
            "maxmemory",
            "100mb",
        ])
        .output()
        .expect("redis-cli");
    assert!(set.status.success());
    let text = status(&md, &logic);
    let md_line = text.lines().find(|l| l.starts_with("MarketData")).unwrap();
    assert!(md_line.contains("(limit 100.00M)"), "{text}");
    assert_eq!(text.matches("(no limit)").count(), 1, "{text}");
}
