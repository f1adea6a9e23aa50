//! What the CLI prints when something is wrong (issue 15, "errors that help"): every cause
//! once, the bad value, file, flag or key named, and a hint where one helps.

use std::process::Command;

/// Runs the binary in `dir` (a fresh directory, so no `dualbus.toml` is picked up):
/// (success, stdout, stderr).
fn dualbus_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory of its own for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dualbus-errors-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn a_missing_config_file_prints_its_cause_once() {
    let dir = scratch("nofile");
    let missing = dir.join("nope.toml");
    let (ok, out, err) = dualbus_in(&dir, &["--config", missing.to_str().unwrap(), "run"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert_eq!(count(&err, "No such file or directory"), 1, "{err}");
}

/// A `redis://` URL on a port nobody listens on.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("redis://127.0.0.1:{port}")
}

const START_HINT: &str =
    "start them with `dualbus redis up`, or point --md-url/--logic-url at running servers";

/// `stats`, `redis status`, `publish` and `tail` with no server: the error names the bus and
/// address, gives the cause once, and ends with how to start the buses; `stats` prints no
/// table header before it.
#[test]
fn an_unreachable_bus_ends_every_verb_with_how_to_start_them() {
    let dir = scratch("unreachable");
    let (md, logic) = (dead_url(), dead_url());
    let flags = ["--md-url", md.as_str(), "--logic-url", logic.as_str()];
    for verb in [
        &["stats"][..],
        &["stats", "--json"],
        &["redis", "status"],
        &["publish", "--kind", "risk_alert", "--topic", "risk_alert.X"],
        &["tail", ">"],
    ] {
        let args: Vec<&str> = verb.iter().chain(&flags).copied().collect();
        let (ok, out, err) = dualbus_in(&dir, &args);
        assert!(!ok, "{verb:?}");
        let last = err.trim_end().lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "{verb:?}: {err}");
        assert!(last.ends_with(START_HINT), "{verb:?}: {err}");
        if verb[0] == "redis" {
            // One line per bus on stdout, each naming its address and cause once.
            for url in [&md, &logic] {
                let line = out.lines().find(|l| l.contains(url.as_str())).unwrap();
                assert!(line.contains("unreachable"), "{out}");
                assert_eq!(count(line, "Connection refused"), 1, "{out}");
            }
        } else {
            assert!(out.is_empty(), "{verb:?} printed {out:?}");
            assert!(err.contains(&md), "{verb:?}: {err}");
            assert_eq!(count(&err, "Connection refused"), 1, "{verb:?}: {err}");
        }
    }
}
