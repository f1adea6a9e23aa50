//! The dashboard in a real browser: `dualbus run` with a flash crash, the page loaded in
//! headless Chromium (Debian's `chromium`, which `./scripts/test` installs when missing), driven
//! over the DevTools protocol. The test waits for data, then checks the rendered page: charts
//! holding points, position rows, fills, an alert row whose reason is readable (a wide cell,
//! numbers rounded), and it keeps a screenshot in `target/tmp/dashboard.png`.

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the run when the test ends, however it ends.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The browser to drive: `DUALBUS_CHROMIUM`, else the first of the usual names on the PATH.
fn chromium() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("DUALBUS_CHROMIUM") {
        return p.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the browser test needs Chromium: `apt-get install chromium` (./scripts/test installs \
         it when missing), or set DUALBUS_CHROMIUM to a Chrome or Chromium binary"
    );
}

/// What the page shows, measured in the page.
const PROBE: &str = r#"(() => {
  const el = (id) => document.getElementById(id);
  const points = (id) => Number(el(id).dataset.points || 0);
  const rows = (id) => Array.from(document.querySelectorAll('#' + id + ' tr'))
    .filter((tr) => !tr.querySelector('.empty'));
  const reasons = Array.from(document.querySelectorAll('#alert-rules td.reason, #alerts td.reason'))
    .filter((td) => td.textContent.length > 0);
  const rule = rows('alert-rules')[0];
  return JSON.stringify({
    status: el('status').textContent,
    equity_points: points('equity-chart'),
    price_points: points('price-chart'),
    price_fills: Number(el('price-chart').dataset.fills || 0),
    bus_points: points('bus-chart'),
    canvases: document.querySelectorAll('canvas').length,
    positions: rows('positions').length,
    trades: rows('trades').length,
    alert_rules: rows('alert-rules').length,
    first_rule: rule ? rule.innerText : null,
    reason_min_width: reasons.length ? Math.min(...reasons.map((td) => td.getBoundingClientRect().width)) : 0,
    reason_max_len: Math.max(0, ...reasons.map((td) => td.textContent.length)),
    // Numbers with more than 8 significant digits (such as 91.51711549216303).
    long_floats: reasons.filter((td) => (td.textContent.match(/\d+\.\d+/g) || [])
      .some((m) => m.replace('.', '').replace(/^0+/, '').length > 8)).length,
    banner: el('banner').className === 'on' ? el('banner').innerText : null,
    equity: el('equity').textContent,
  });
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_charts_positions_fills_and_readable_alerts() {
    let port = free_port();
    // 600x: ten minutes of market per second; the crash 40 minutes in (about 4 s after the
    // start) sets off toxicity and flash crash alerts and trips the circuit breaker.
    let run = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args([
            "run",
            "--duration",
            "150s",
            "--speed",
            "600x",
            "--flash-crash",
            "40m",
            "--symbols",
            "BTCUSDT,ETHUSDT,SOLUSDT",
            "--port",
            &port.to_string(),
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dualbus run starts");
    let _run = Run(run);
    let url = format!("http://127.0.0.1:{port}/");
    // Wait for the server.
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the dashboard never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let profile = std::env::temp_dir().join(format!("dualbus-chromium-{}", std::process::id()));
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .new_headless_mode()
        .no_sandbox()
        .window_size(1400, 2600)
        .viewport(None)
        .user_data_dir(&profile)
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .build()
        .expect("browser config");
    let (mut browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page(url.as_str()).await.expect("page opens");

    // Wait until every panel has data (the crash comes about 4 s in; the breaker trips soon
    // after), then look at what the page shows.
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen: Value = loop {
        let probe: String = page
            .evaluate(PROBE)
            .await
            .expect("the probe runs")
            .into_value()
            .expect("a string");
        let v: Value = serde_json::from_str(&probe).unwrap();
        let ready = v["equity_points"].as_u64() >= Some(3)
            && v["price_points"].as_u64() >= Some(3)
            && v["price_fills"].as_u64() >= Some(1)
            && v["bus_points"].as_u64() >= Some(2)
            && v["positions"].as_u64() >= Some(1)
            && v["trades"].as_u64() >= Some(1)
            && v["alert_rules"].as_u64() >= Some(1)
            && v["banner"].is_string();
        if ready {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed everything: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &shot)
        .await
        .expect("screenshot");
    eprintln!("screenshot: {}", shot.display());
    eprintln!("page: {seen:#}");

    assert_eq!(seen["status"], "connected");
    assert_eq!(seen["canvases"].as_u64(), Some(4), "four charts: {seen}");
    // Readable alerts: the reason column is wide (not a 45 px sliver), the numbers rounded.
    assert!(
        seen["reason_min_width"].as_f64().unwrap() >= 250.0,
        "alert reasons squeezed: {seen}"
    );
    assert!(seen["reason_max_len"].as_u64().unwrap() >= 40, "{seen}");
    assert_eq!(
        seen["long_floats"].as_u64(),
        Some(0),
        "unrounded numbers: {seen}"
    );
    assert!(
        seen["banner"].as_str().unwrap().contains("Circuit breaker")
            || seen["banner"].as_str().unwrap().contains("halted"),
        "{seen}"
    );
    assert!(seen["equity"].as_str().unwrap().contains('.'), "{seen}");

    browser.close().await.ok();
    browser.wait().await.ok();
    events.abort();
    let _ = std::fs::remove_dir_all(&profile);
}
