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

/// A directory of its own for one test, removed when the test ends.
struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("dualbus-errors-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
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

/// `backtest --data` on a file that is not market data (here a README): for every format
/// the error names the file once and the flag to change or give, with no WARN line per bad
/// row before it; without `--format` it names the flag and the formats.
#[test]
fn a_file_that_is_not_market_data_names_the_file_and_the_flag() {
    let dir = scratch("notdata");
    let text: String = (1..=40)
        .map(|i| format!("# Heading {i}\n\nSome prose, with commas, on line {i}.\n"))
        .collect();
    std::fs::write(dir.join("README.md"), text).unwrap();
    let (ok, _, err) = dualbus_in(&dir, &["backtest", "--data", "README.md"]);
    assert!(!ok);
    assert!(
        err.contains("--data README.md needs --format: binance, tardis or quotes"),
        "{err}"
    );
    for (format, flag) in [
        ("binance", "--symbol"),
        ("tardis", "--format"),
        ("quotes", "--format"),
    ] {
        let (ok, out, err) = dualbus_in(
            &dir,
            &["backtest", "--data", "README.md", "--format", format],
        );
        assert!(!ok, "{format}");
        assert!(out.is_empty(), "{format}: {out}");
        assert_eq!(count(&err, "README.md"), 1, "{format}: {err}");
        assert!(err.contains(flag), "{format}: {err}");
        assert!(!err.contains("WARN"), "{format}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{format}: {err}");
    }
    // With the symbol given, the Binance reader finds no trade and says which line it tried.
    let (ok, _, err) = dualbus_in(
        &dir,
        &[
            "backtest",
            "--data",
            "README.md",
            "--format",
            "binance",
            "--symbol",
            "BTCUSDT",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("README.md: no line is a binance trade"),
        "{err}"
    );
    assert!(err.contains("line 1, \"# Heading 1\""), "{err}");
    assert!(err.contains("is --format right?"), "{err}");
    assert!(!err.contains("WARN"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A few bad rows in a good file are reported once, counted, with their lines.
#[test]
fn a_few_bad_rows_are_one_warning() {
    let dir = scratch("badrows");
    let mut rows = String::new();
    for i in 0..10u64 {
        let ts = 1_610_064_000_000 + i * 1000;
        if i == 3 || i == 6 {
            rows.push_str(&format!("{i},oops,0.1,1,{ts},True,True\n"));
        } else {
            rows.push_str(&format!("{i},100.0,0.1,1,{ts},True,True\n"));
        }
    }
    std::fs::write(dir.join("BTCUSDT-trades-x.csv"), rows).unwrap();
    let (ok, _, err) = dualbus_in(
        &dir,
        &["vpin", "BTCUSDT-trades-x.csv", "--format", "binance"],
    );
    assert!(ok, "{err}");
    assert_eq!(count(&err, "WARN"), 1, "{err}");
    assert!(
        err.contains("BTCUSDT-trades-x.csv: skipped 2 unreadable rows (lines 4, 7)"),
        "{err}"
    );
    assert!(err.contains("price: expected a number"), "{err}");
}

/// A port in use names the address and the flag that sets it: `--port` (and the setting,
/// `websocket.bind`) for the dashboard of `run`, `--metrics-port` for the metrics server.
#[test]
fn a_port_in_use_names_the_flag() {
    let dir = scratch("port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, out, err) = dualbus_in(
        &dir,
        &["run", "--port", &port, "--duration", "1s", "--quiet"],
    );
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "127.0.0.1:{port} is in use: pick another with --port"
        )),
        "{err}"
    );
    assert!(err.contains("websocket.bind"), "{err}");
    let (ok, _, err) = dualbus_in(&dir, &["hub", "--metrics-port", &port, "--duration", "1s"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "127.0.0.1:{port} is in use: pick another with --metrics-port"
        )),
        "{err}"
    );
    drop(taken);
}

/// A config file with several problems: each is reported at once by its dotted key, a wrong
/// type says what was expected and what was written, an unknown key lists the known ones, and
/// an engine's section says where engine settings go.
#[test]
fn every_config_problem_is_named_by_its_key_at_once() {
    let dir = scratch("config");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[risk]\nmax_drawdown = \"x\"\n[md]\nport = 6380\nmaxlen = \"big\"\n\
         [delivery]\nqueue_bound = \"lots\"\nmode = \"sometimes\"\n",
    )
    .unwrap();
    let (ok, out, err) = dualbus_in(&dir, &["--config", file.to_str().unwrap(), "stats"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("invalid configuration (5 problems)"), "{err}");
    for want in [
        "md.maxlen: expected a whole number (0 or more), got the string \"big\"",
        "delivery.queue_bound: expected a whole number (0 or more), got the string \"lots\"",
        "md.port: unknown key; known keys: url, maxlen, connect_timeout_ms, max_payload_bytes",
        "delivery.mode = \"sometimes\": expected \"reliable\" or \"fast\"",
        "risk: unknown key: engine settings are not read from the config file",
        "--settings '{\"risk\": {...}}'",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

/// A wrong `--settings` value names the engine's dotted key, the type expected and the value;
/// every bad key of that engine is named at once.
#[test]
fn a_wrong_engine_setting_names_its_dotted_key() {
    let dir = scratch("settings");
    let (ok, _, err) = dualbus_in(
        &dir,
        &[
            "backtest",
            "--provider",
            "synthetic",
            "--duration",
            "1h",
            "--settings",
            r#"{"risk": {"max_drawdown": "x", "colour": 1}}"#,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("risk.max_drawdown: expected a number, got the string \"x\""),
        "{err}"
    );
    assert!(
        err.contains("risk.colour: unknown key; known keys: ") && err.contains("max_drawdown,"),
        "{err}"
    );
}
