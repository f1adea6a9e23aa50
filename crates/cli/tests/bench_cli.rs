//! `dualbus bench` as a user runs it: one JSON object with the documented keys, every message
//! delivered once.

use dualbus_testkit::RedisServer;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "dualbus bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "exactly one JSON object: {text}");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn throughput_json_has_every_key_and_loses_nothing() {
    let v = bench(&["throughput", "--messages", "20000"]);
    for k in [
        "backend",
        "scenario",
        "mode",
        "messages",
        "payload_bytes",
        "duration_s",
        "throughput_msgs_per_s",
        "delivered",
        "lost",
        "duplicated",
        "latency_ns",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ns"].get(k).is_some(), "missing latency_ns.{k}");
    }
    assert_eq!(v["backend"], "embedded");
    assert_eq!(v["scenario"], "throughput");
    assert_eq!(v["delivered"], 20000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
}

#[test]
fn fanout_delivers_to_every_group() {
    let v = bench(&[
        "fanout",
        "--messages",
        "5000",
        "--groups",
        "12",
        "--mode",
        "fast",
    ]);
    assert_eq!(v["delivered"], 60000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["mode"], "fast");
}

#[test]
fn latency_is_paced() {
    let v = bench(&["latency", "--messages", "2000", "--rate", "20000"]);
    assert_eq!(v["delivered"], 2000);
    assert_eq!(v["lost"], 0);
}

#[test]
fn latency_measures_the_floor_in_the_same_run() {
    let v = bench(&["latency", "--messages", "2000", "--rate", "20000"]);
    assert_eq!(v["delivered"], 2000);
    // The floor received every timestamp.
    assert_eq!(v["baseline_delivered"], 2000, "{v}");
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["baseline_latency_ns"][k].as_u64().is_some_and(|x| x >= 1),
            "missing baseline_latency_ns.{k} in {v}"
        );
    }
    for k in ["p50", "p99"] {
        let ours = v["latency_ns"][k].as_u64().unwrap() as f64;
        let floor = v["baseline_latency_ns"][k].as_u64().unwrap() as f64;
        let ratio = v[format!("{k}_vs_baseline")].as_f64().unwrap();
        assert!(
            (ratio - ours / floor).abs() <= 1e-9 * ratio.abs().max(1.0),
            "{k}_vs_baseline is ours / floor: {v}"
        );
    }
    assert!(v["baseline_method"]
        .as_str()
        .is_some_and(|m| m.contains("after ours")));
}

#[test]
fn memory_isolation_omits_the_raw_redis_baseline() {
    let v = bench(&["isolation", "--messages", "1000", "--batch", "256"]);
    assert_eq!(v["delivered"], 1000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["idle_lost"], 0);
    assert!(v["p99_ratio"].as_f64().is_some(), "{v}");
    for k in [
        "raw_idle_latency_ns",
        "raw_latency_ns",
        "raw_p99_ratio",
        "p99_ratio_vs_raw",
    ] {
        assert!(v.get(k).is_none(), "{k} is for the redis backend: {v}");
    }
}

/// Keys left on a server whose name starts with `bench` (a bench run's private prefix).
fn bench_keys(url: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("KEYS").arg("bench*").query(&mut conn).unwrap()
}

#[test]
fn redis_isolation_runs_the_raw_baseline_and_cleans_up() {
    let servers = || -> std::io::Result<(RedisServer, RedisServer)> {
        Ok((RedisServer::start()?, RedisServer::start()?))
    };
    let (md, logic) = servers().unwrap_or_else(|e| {
        panic!(
            "this test needs redis-server on the PATH (install it: apt-get install \
             redis-server; CI installs it): {e}"
        )
    });
    let (md_url, logic_url) = (md.url(), logic.url());
    let v = bench(&[
        "isolation",
        "--backend",
        "redis",
        "--messages",
        "1000",
        // Phases of half a second: long enough for the flood to publish in each, even on a
        // loaded machine (at 5,000/s a phase of 0.2 s once saw no flood batch complete).
        "--rate",
        "2000",
        "--batch",
        "256",
        "--md-url",
        &md_url,
        "--logic-url",
        &logic_url,
    ]);
    assert_eq!(v["backend"], "redis");
    assert_eq!(v["delivered"], 1000);
    assert_eq!(v["lost"], 0);
    // The bare client's entries all arrived, idle and flooded.
    assert_eq!(v["raw_idle_delivered"], 1000, "{v}");
    assert_eq!(v["raw_delivered"], 1000, "{v}");
    for h in ["raw_idle_latency_ns", "raw_latency_ns"] {
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                v[h][k].as_u64().is_some_and(|x| x >= 1),
                "missing {h}.{k} in {v}"
            );
        }
    }
    let ratio = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("missing {k} in {v}"))
    };
    let raw_ratio = v["raw_latency_ns"]["p99"].as_u64().unwrap() as f64
        / v["raw_idle_latency_ns"]["p99"].as_u64().unwrap() as f64;
    assert!((ratio("raw_p99_ratio") - raw_ratio).abs() <= 1e-9 * raw_ratio.max(1.0));
    let vs = ratio("p99_ratio") / ratio("raw_p99_ratio");
    assert!((ratio("p99_ratio_vs_raw") - vs).abs() <= 1e-9 * vs.max(1.0));
    // The flood ran during both flooded phases.
    assert!(
        ratio("md_flood_msgs_per_s") > 0.0 && ratio("raw_md_flood_msgs_per_s") > 0.0,
        "{v}"
    );
    // The private prefix, raw streams included, is gone from both servers.
    assert_eq!(bench_keys(&md_url), Vec::<String>::new());
    assert_eq!(bench_keys(&logic_url), Vec::<String>::new());
}

#[test]
fn stall_with_reject_bounds_the_queue() {
    let v = bench(&[
        "stall",
        "--messages",
        "50000",
        "--queue-bound",
        "1000",
        "--backpressure",
        "reject",
        "--batch",
        "100",
    ]);
    assert_eq!(v["accepted"], 1000);
    assert_eq!(v["rejected"], 49000);
    assert_eq!(v["blocked"], false);
    assert_eq!(v["retained_in_stream"], 1000);
}

#[test]
fn bad_values_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["bench", "throughput", "--mode", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sometimes"), "{err}");
}

/// Polylines of an SVG that plot something (more than two points).
fn plotted_lines(svg: &str) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| {
            let pts = p.split("points=\"").nth(1).unwrap_or("");
            pts.split('"').next().unwrap_or("").split(' ').count() > 2
        })
        .count()
}

#[test]
fn latency_plot_is_an_svg_cdf_of_ours_and_the_floor() {
    let dir = std::env::temp_dir().join(format!("dualbus-bench-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg_path = dir.join("latency.svg");
    let v = bench(&[
        "latency",
        "--messages",
        "5000",
        "--rate",
        "50000",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    assert_eq!(v["delivered"], 5000);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    // Two distributions (ours and the floor), each a line, named in the legend.
    assert!(plotted_lines(&svg) >= 2, "{svg}");
    assert!(svg.contains("ours: publish -&gt; handler") || svg.contains("ours: publish"));
    assert!(svg.contains("floor"), "{svg}");
    assert!(svg.contains("latency, µs (log scale)"), "{svg}");
    // Isolation: the idle and the flooded phase.
    let iso = dir.join("isolation.svg");
    bench(&[
        "isolation",
        "--messages",
        "2000",
        "--rate",
        "20000",
        "--plot",
        iso.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&iso).unwrap();
    assert!(plotted_lines(&svg) >= 2, "{svg}");
    assert!(svg.contains("idle") && svg.contains("flooded"), "{svg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plot_is_refused_where_there_is_no_latency_distribution() {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(["bench", "stall", "--messages", "10", "--plot", "x.svg"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plot") && err.contains("stall"), "{err}");
}
