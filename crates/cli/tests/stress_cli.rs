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
