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
