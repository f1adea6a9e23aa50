//! `dualbus stress consumer-crash` as a user runs it: the consumer that dies is a separate
//! process killed with SIGKILL holding a batch; the other instance of its group takes the
//! batch over. Needs `redis-server` on the PATH (CI installs it).

use std::process::Command;

#[test]
fn a_killed_consumer_process_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["stress", "consumer-crash", "--json"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(n("published") > 0, "{v}");
    assert_eq!(n("delivered"), n("published"), "{v}");
    assert_eq!(n("lost"), 0, "{v}");
    assert_eq!(n("duplicated"), 0, "{v}");
    assert_eq!(n("reordered"), 0, "{v}");
    // The dead process's batch came back through the broker to the other instance.
    assert!(n("redelivered") > 0, "{v}");
}

/// The clients' retries while servers are killed are expected: they are counted into one
/// summary line of the table, not printed as hundreds of WARN lines over it (`-v` prints them);
/// the piped output carries no colour codes.
#[test]
fn a_crash_run_summarises_the_clients_warnings() {
    let run = |verbose: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dualbus"));
        cmd.args(["stress", "crash", "--kills", "2", "--rate", "500"])
            .env_remove("RUST_LOG");
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd.output().expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run(false);
    assert!(stdout.contains("lost 0"), "{stdout}");
    let warnings = stdout
        .lines()
        .find(|l| l.starts_with("warnings      : "))
        .unwrap_or_else(|| panic!("no warnings line: {stdout}"));
    // Two kills: the clients of the killed server retried and said so.
    assert!(warnings.contains("\"read failed; retrying\""), "{warnings}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped output: {stderr}"
    );

    let (stdout, stderr) = run(true);
    assert!(!stdout.contains("warnings      : "), "{stdout}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped output: {stderr}"
    );
}
