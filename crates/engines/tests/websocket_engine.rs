//! The WebSocket engine over the wire: a tokio-tungstenite client on `/ws`, raw HTTP requests
//! for `/`, `/health` and `/api/state`, on an embedded bus.

mod support;

use dualbus_bus::DualBus;
use dualbus_core::{EventKind, Priority};
use dualbus_engines::engine::{EngineError, HostOptions, RunningEngine};
use dualbus_engines::websocket::WebSocketEngine;
use dualbus_model::market::Quote;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::{received, start_engine, try_start_engine, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(
    root: &DualBus,
    config: Value,
) -> Result<RunningEngine<WebSocketEngine>, EngineError> {
    try_start_engine(
        WebSocketEngine::default(),
        root,
        "websocket",
        HostOptions {
            config,
            ..Default::default()
        },
    )
    .await
}

/// The next JSON frame, skipping `traffic` frames (sent every second to every client).
async fn next_frame(ws: &mut Client) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "traffic" {
                    return v;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// One raw HTTP request (which should ask for `Connection: close`: the body is read to the
/// end); the status line, the head, and the body.
async fn http(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_the_kinds_they_ask_for_prices_health_and_the_page() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let engine = start(&root, json!({"bind": "127.0.0.1:0", "price_every_ms": 50}))
            .await
            .unwrap();
        let addr = engine.with(|e| e.local_addr()).await.unwrap();
        let publisher = root.sibling("risk", "risk-1").unwrap();

        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?kinds=risk_alert"))
                .await
                .unwrap();
        assert_eq!(response.status(), 101);
        let snapshot = next_frame(&mut ws).await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        assert_eq!(snapshot["clients"], 1);
        assert!(snapshot["portfolio"].is_null());

        // A portfolio_update the client did not ask for, handled before the alert.
        let pu = publisher
            .envelope(
                EventKind::PortfolioUpdate,
                "portfolio_update.main",
                Priority::Normal,
                &json!({"equity": 100250.0, "realized_pnl": 200.0, "unrealized_pnl": 50.0}),
            )
            .unwrap();
        publisher.publish_envelope(pu).await.unwrap();
        // The test's publishes go to different streams, so their relative order is not
        // otherwise known: wait until the engine has handled the portfolio_update.
        until(|| received(&engine.counts(), "portfolio_update") >= 1).await;
        let alert = publisher
            .envelope(
                EventKind::RiskAlert,
                "risk_alert.BTCUSDT",
                Priority::Critical,
                &json!({"symbol": "BTCUSDT", "reason": "position limit 3 BTC exceeded"}),
            )
            .unwrap();
        publisher.publish_envelope(alert).await.unwrap();
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(
            frame["kind"], "risk_alert",
            "the portfolio_update was not asked for"
        );
        assert_eq!(frame["topic"], "risk_alert.BTCUSDT");
        assert_eq!(frame["src"], "risk");
        assert!(frame["ts"].as_u64().unwrap() > 0);
        assert_eq!(frame["payload"]["reason"], "position limit 3 BTC exceeded");

        // Quotes arrive coalesced as prices frames, the latest per symbol.
        let md = root.sibling("marketdata", "marketdata-1").unwrap();
        let quotes = 20u64;
        for i in 1..=quotes {
            for (sym, px) in [("BTCUSDT", 40000.0), ("ETHUSDT", 2500.0)] {
                let q = Quote {
                    symbol: sym.into(),
                    ts: i,
                    bid: px + i as f64,
                    ask: px + i as f64 + 1.0,
                    bid_size: 1.0,
                    ask_size: 1.0,
                };
                md.publish(
                    EventKind::MarketData,
                    &format!("market_data.quote.{sym}"),
                    &q,
                )
                .await
                .unwrap();
            }
        }
        let mut latest = serde_json::Map::new();
        while latest.get("BTCUSDT").map(|p| &p["ts"]) != Some(&json!(quotes))
            || latest.get("ETHUSDT").map(|p| &p["ts"]) != Some(&json!(quotes))
        {
            let f = next_frame(&mut ws).await;
            assert_eq!(f["type"], "prices", "only prices frames now: {f}");
            for (sym, p) in f["prices"].as_object().unwrap() {
                assert_eq!(p.as_object().unwrap().len(), 4, "{p}");
                latest.insert(sym.clone(), p.clone());
            }
        }
        assert_eq!(
            latest["BTCUSDT"],
            json!({"bid": 40020.0, "ask": 40021.0, "mid": 40020.5, "ts": quotes})
        );

        // /health
        let (status, head, body) = get(addr, "/health").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(head.contains("content-type: application/json"), "{head}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["engine"], "websocket");
        assert_eq!(health["clients"], 1);
        assert!(health["uptime_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(health["messages"]["risk_alert"], 1);
        assert_eq!(health["messages"]["portfolio_update"], 1);
        assert_eq!(health["messages"]["market_data"], 2 * quotes);
        assert!(health["engines"].is_object(), "{health}");

        // /api/state: what a late client sees at once.
        let (status, _, body) = get(addr, "/api/state").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let state: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(state["portfolio"]["payload"]["equity"], 100250.0);
        assert_eq!(state["alerts"][0]["kind"], "risk_alert");
        assert_eq!(state["prices"]["ETHUSDT"]["ts"], quotes);

        // The page.
        let (status, head, body) = get(addr, "/").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(body.contains("<title>dualbus live</title>"));
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "no CDN"
        );

        // Unknown paths and kinds.
        assert_eq!(get(addr, "/nope").await.0, "HTTP/1.1 404 Not Found");
        let (status, _, body) = http(
            addr,
            "GET /ws?kinds=risk_alert,bogus HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(body.starts_with("unknown kinds: bogus "), "{body}");

        // Stopping closes the client with 1001 and the listener.
        engine.stop().await;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(c)))) => {
                    assert_eq!(c.code, CloseCode::Away);
                    break;
                }
                Some(Ok(Message::Text(_) | Message::Ping(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_a_config_error_naming_it() {
    let run = async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let root = DualBus::builder("test").build().unwrap();
        let err = match start(&root, json!({"bind": addr.to_string()})).await {
            Ok(_) => panic!("started on a taken address"),
            Err(e) => e,
        };
        assert!(matches!(err, EngineError::Config { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("{addr} is in use; set websocket.bind")),
            "{err}"
        );
        let err = match start(&root, json!({"bind": "127.0.0.1:0", "queue": 1})).await {
            Ok(_) => panic!("started with an unknown setting"),
            Err(e) => e,
        };
        assert!(
            err.to_string()
                .contains("websocket.queue: unknown key; known keys: bind,"),
            "{err}"
        );
        let err = match start(&root, json!({"bind": "127.0.0.1:0", "max_clients": "many"})).await {
            Ok(_) => panic!("started with a setting of the wrong type"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains(
                "websocket.max_clients: expected a whole number (0 or more), got the string \"many\""
            ),
            "{err}"
        );
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}

/// A WebSocket handshake with these extra header lines; the status line of the answer and its
/// body (by its content-length: the connection stays open, upgraded or kept alive).
async fn ws_handshake(addr: SocketAddr, path: &str, extra: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")?
                .parse()
                .ok()
        })
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (
        head.lines().next().unwrap().to_string(),
        String::from_utf8(body).unwrap(),
    )
}

/// With a token, nothing but the probes answers without it; the page given it in the query
/// hands it on as a cookie; a page from another origin cannot open the feed, with or without
/// the token; each refusal is counted in /health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_closes_the_dashboard_and_other_origins_cannot_open_the_feed() {
    let run = async {
        let token = "0123456789abcdef0123";
        let root = DualBus::builder("test").build().unwrap();
        let engine = start(&root, json!({"bind": "127.0.0.1:0", "token": token}))
            .await
            .unwrap();
        let addr = engine.with(|e| e.local_addr()).await.unwrap();

        for path in ["/", "/health", "/api/state", "/assets/uplot.js", "/nowhere"] {
            let (status, head, body) = get(addr, path).await;
            assert!(status.contains("401"), "{path}: {status}");
            assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
            assert!(body.contains("needs its token"), "{path}: {body}");
            assert!(!body.contains(token), "the answer repeats the token");
        }
        let (status, _, _) = get(addr, "/?token=0123456789abcdef0124").await;
        assert!(status.contains("401"), "a wrong token: {status}");
        let (status, head, body) = get(addr, &format!("/?token={token}")).await;
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("<html"), "the page");
        assert!(
            head.contains(&format!(
                "set-cookie: dualbus_token={token}; path=/; httponly; samesite=strict"
            )),
            "{head}"
        );
        let with_cookie = |path: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: test\r\nCookie: a=b; dualbus_token={token}\r\n\
                 Connection: close\r\n\r\n"
            )
        };
        let (status, _, _) = http(addr, &with_cookie("/assets/uplot.js")).await;
        assert!(status.contains("200"), "an asset with the cookie: {status}");
        let (status, _, body) = http(
            addr,
            &format!(
                "GET /health HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(status.contains("200"), "{status}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["refused"]["token"], 6, "{health}");

        // The feed: the token in the cookie, from the page's own origin: upgraded.
        let cookie = format!("Cookie: dualbus_token={token}\r\n");
        let (status, _) =
            ws_handshake(addr, "/ws", &format!("{cookie}Origin: http://{addr}\r\n")).await;
        assert!(status.contains("101"), "own origin: {status}");
        // From another origin, even with the token: refused, naming the origin and the setting.
        let (status, body) = ws_handshake(
            addr,
            "/ws",
            &format!("{cookie}Origin: https://evil.example\r\n"),
        )
        .await;
        assert!(status.contains("403"), "{status}");
        assert!(
            body.contains("\"https://evil.example\"") && body.contains("websocket.allowed_origins"),
            "{body}"
        );
        // Without the token: refused before anything else.
        let (status, _) = ws_handshake(addr, "/ws", &format!("Origin: http://{addr}\r\n")).await;
        assert!(status.contains("401"), "{status}");

        let (_, _, body) = http(addr, &with_cookie("/health")).await;
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["refused"]["origin"], 1, "{health}");
        assert_eq!(health["refused"]["token"], 7, "{health}");
        assert_eq!(health["refused"]["max_clients"], 0, "{health}");
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}

/// An allowed origin may open the feed; a token that is too short is a configuration error
/// that does not repeat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_and_bad_tokens() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let engine = start(
            &root,
            json!({"bind": "127.0.0.1:0", "allowed_origins": ["https://desk.example.com"]}),
        )
        .await
        .unwrap();
        let addr = engine.with(|e| e.local_addr()).await.unwrap();
        let (status, _) = ws_handshake(addr, "/ws", "Origin: https://desk.example.com\r\n").await;
        assert!(status.contains("101"), "{status}");
        let (status, _) = ws_handshake(addr, "/ws", "Origin: https://other.example.com\r\n").await;
        assert!(status.contains("403"), "{status}");
        // No token configured: the page answers anyone who reaches it (on 127.0.0.1 here).
        let (status, _, _) = get(addr, "/").await;
        assert!(status.contains("200"), "{status}");

        let err = match start(
            &root,
            json!({"bind": "127.0.0.1:0", "token": "short secret"}),
        )
        .await
        {
            Ok(_) => panic!("started with a bad token"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("token must be at least 16 printable characters"),
            "{err}"
        );
        assert!(!err.contains("short secret"), "{err}");
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}

/// A request with a body is refused (413) before anything else, and every refusal is counted
/// in `/health` and in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_refused_and_refusals_are_in_the_metrics() {
    let run = async {
        let root = DualBus::builder("test").build().unwrap();
        let engine = start_engine(
            WebSocketEngine::default(),
            &root,
            "websocket",
            HostOptions {
                config: json!({"bind": "127.0.0.1:0", "token": "0123456789abcdef0123"}),
                metrics: Some(std::sync::Arc::new(
                    dualbus_engines::metrics::BusMetrics::default(),
                )),
                ..Default::default()
            },
        )
        .await;
        let addr = engine.with(|e| e.local_addr()).await.unwrap();
        let auth = "Authorization: Bearer 0123456789abcdef0123\r\n";
        for request in [
            format!(
                "POST /health HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 5\r\n\
                 Connection: close\r\n\r\nhello"
            ),
            format!(
                "GET / HTTP/1.1\r\nHost: test\r\n{auth}Transfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ] {
            let (status, _, body) = http(addr, &request).await;
            assert!(status.contains("413"), "{status}");
            assert!(body.contains("no request bodies"), "{body}");
        }
        // A head over 16 KiB: refused by the HTTP server before any route, and counted.
        let (status, _, _) = http(
            addr,
            &format!(
                "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "x".repeat(20 * 1024)
            ),
        )
        .await;
        assert!(status.contains("431"), "{status}");
        // Without the token: refused too (counted once, as a body).
        let (status, _, _) = http(
            addr,
            "POST /health HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        )
        .await;
        assert!(status.contains("413"), "{status}");
        let (status, _, _) = get(addr, "/health").await;
        assert!(status.contains("401"), "{status}");
        let (_, _, body) = http(
            addr,
            &format!("GET /health HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"),
        )
        .await;
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["refused"]["body"], 3, "{health}");
        assert_eq!(health["refused"]["token"], 1, "{health}");
        assert_eq!(health["refused"]["head_too_large"], 1, "{health}");
        let (status, _, metrics) = http(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"),
        )
        .await;
        assert!(status.contains("200"), "{status}");
        for line in [
            "dualbus_dashboard_refused_total{reason=\"body\"} 3",
            "dualbus_dashboard_refused_total{reason=\"token\"} 1",
            "dualbus_dashboard_refused_total{reason=\"origin\"} 0",
            "dualbus_dashboard_refused_total{reason=\"max_clients\"} 0",
            "dualbus_dashboard_refused_total{reason=\"head_too_large\"} 1",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{line} not in\n{metrics}"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test timed out");
}
