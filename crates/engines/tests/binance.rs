//! The Binance provider against local servers that speak Binance's frames: a WebSocket server
//! on `127.0.0.1:0` for the live stream and a plain HTTP server for klines. Nothing here
//! touches the real Binance.

use dualbus_engines::provider::binance::{BinanceOptions, BinanceProvider, BinanceStream};
use dualbus_engines::provider::{HistoryRequest, MarketStream, Provider, ProviderError};
use dualbus_model::market::{Bar, MarketEvent, Quote, Side, Trade};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{accept_async, WebSocketStream};

/// Every test is guarded so a bug fails it instead of hanging the suite.
async fn guarded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("test timed out after 20 s")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// What the provider must subscribe to for symbols `BTCUSDT` and `ethusdt`.
const STREAMS: [&str; 4] = [
    "btcusdt@trade",
    "btcusdt@bookTicker",
    "ethusdt@trade",
    "ethusdt@bookTicker",
];

type Ws = WebSocketStream<TcpStream>;

async fn accept_ws(listener: &TcpListener) -> Ws {
    let (tcp, _) = listener.accept().await.expect("accept");
    accept_async(tcp).await.expect("websocket handshake")
}

/// Reads the SUBSCRIBE request, checks it, and answers it; returns its id.
async fn expect_subscribe(ws: &mut Ws) -> u64 {
    let msg = ws.next().await.expect("a request").expect("readable");
    let text = msg.into_text().expect("a text frame");
    let req: Value = serde_json::from_str(text.as_str()).expect("JSON request");
    assert_eq!(req["method"], "SUBSCRIBE", "{req}");
    assert_eq!(req["params"], json!(STREAMS), "{req}");
    let id = req["id"].as_u64().expect("numeric id");
    let reply = json!({ "result": null, "id": id }).to_string();
    ws.send(Message::text(reply)).await.expect("send reply");
    id
}

async fn send_all(ws: &mut Ws, frames: &[&str]) {
    for f in frames {
        ws.send(Message::text(*f)).await.expect("send frame");
    }
}

/// Waits until the client goes away (its stream was dropped).
async fn until_closed(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// Reads from `stream` until `n` events have arrived, failing early if `server` ends (it
/// panicked) first.
async fn collect<T: std::fmt::Debug>(
    stream: &mut BinanceStream,
    n: usize,
    server: &mut JoinHandle<T>,
) -> Vec<MarketEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        tokio::select! {
            r = stream.next_batch(&mut out) => {
                assert!(r.expect("stream keeps going"), "a live stream never ends");
            }
            r = &mut *server => panic!("server ended before the client had its events: {r:?}"),
        }
    }
    assert_eq!(out.len(), n, "more events than sent: {out:?}");
    out
}

fn options(ws_url: String) -> BinanceOptions {
    BinanceOptions::new(["BTCUSDT", "ethusdt"])
        .ws_url(ws_url)
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .idle_timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn stream_parses_frames_then_reconnects_and_resubscribes() {
    guarded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let mut server = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut ws = accept_ws(&listener).await;
            ids.push(expect_subscribe(&mut ws).await);
            // The client must answer pings (tungstenite does) and flush the pong.
            ws.send(Message::Ping("hb".into())).await.expect("ping");
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"hb"),
                other => panic!("expected the pong, got {other:?}"),
            }
            send_all(
                &mut ws,
                &[
                    r#"{"e":"trade","E":1700000000123,"s":"BTCUSDT","t":42,"p":"37000.50","q":"0.125","T":1700000000100,"m":true,"M":true}"#,
                    "this is not json {",
                    r#"{"stream":"ethusdt@bookTicker","data":{"u":400900217,"s":"ETHUSDT","b":"2000.10","B":"31.21","a":"2000.11","A":"40.66"}}"#,
                    r#"{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}"#,
                    r#"{"e":"trade","E":1700000000201,"s":"ETHUSDT","t":7,"p":"2000.05","q":"1.5","T":1700000000200,"m":false,"M":true}"#,
                ],
            )
            .await;
            // Drop the connection without a close handshake, as a network failure would.
            drop(ws);

            let mut ws = accept_ws(&listener).await;
            ids.push(expect_subscribe(&mut ws).await);
            ws.send(Message::binary(vec![1u8, 2, 3])).await.expect("binary");
            send_all(
                &mut ws,
                &[
                    r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"abc","q":"1","T":1,"m":true}"#,
                    r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000001001,"s":"BTCUSDT","t":43,"p":"37001","q":"0.5","T":1700000001000,"m":false,"M":true}}"#,
                    r#"{"u":400900300,"s":"BTCUSDT","b":"37000.99","B":"1.5","a":"37001.01","A":"2.25","E":1700000001500}"#,
                ],
            )
            .await;
            until_closed(&mut ws).await;
            ids
        });

        let provider = BinanceProvider::new(options(url)).expect("valid options");
        let before = now_ns();
        let mut stream = provider.open_stream().expect("in a runtime");
        let events = collect(&mut stream, 5, &mut server).await;
        let after = now_ns();

        assert_eq!(
            events[0],
            MarketEvent::Trade(Trade {
                symbol: "BTCUSDT".into(),
                ts: 1_700_000_000_100_000_000,
                price: 37000.5,
                size: 0.125,
                side: Side::Sell, // m=true: the buyer made the market, the seller took it
                id: 42,
            })
        );
        // Spot bookTicker has no time: stamped on receipt.
        let MarketEvent::Quote(q) = &events[1] else {
            panic!("expected a quote, got {:?}", events[1]);
        };
        assert!(before <= q.ts && q.ts <= after, "{} not in [{before}, {after}]", q.ts);
        assert_eq!(
            *q,
            Quote {
                symbol: "ETHUSDT".into(),
                ts: q.ts,
                bid: 2000.10,
                ask: 2000.11,
                bid_size: 31.21,
                ask_size: 40.66,
            }
        );
        assert_eq!(
            events[2],
            MarketEvent::Trade(Trade {
                symbol: "ETHUSDT".into(),
                ts: 1_700_000_000_200_000_000,
                price: 2000.05,
                size: 1.5,
                side: Side::Buy,
                id: 7,
            })
        );
        // Delivered over the second connection.
        assert_eq!(
            events[3],
            MarketEvent::Trade(Trade {
                symbol: "BTCUSDT".into(),
                ts: 1_700_000_001_000_000_000,
                price: 37001.0,
                size: 0.5,
                side: Side::Buy,
                id: 43,
            })
        );
        assert_eq!(
            events[4],
            MarketEvent::Quote(Quote {
                symbol: "BTCUSDT".into(),
                ts: 1_700_000_001_500_000_000,
                bid: 37000.99,
                ask: 37001.01,
                bid_size: 1.5,
                ask_size: 2.25,
            })
        );
        // Garbage, aggTrade, binary, unreadable price.
        assert_eq!(stream.skipped(), 4);
        assert_eq!(provider.skipped(), 4);
        assert_eq!(stream.reconnects(), 1);
        assert_eq!(provider.reconnects(), 1);

        // Dropping the stream closes the connection, which lets the server finish.
        drop(stream);
        let ids = server.await.expect("server checks passed");
        assert_eq!(ids.len(), 2, "subscribed on both connections");
        assert_ne!(ids[0], ids[1], "each request has its own id");
    })
    .await;
}

#[tokio::test]
async fn silent_connection_is_replaced_after_idle_timeout() {
    guarded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let mut server = tokio::spawn(async move {
            let mut ws = accept_ws(&listener).await;
            expect_subscribe(&mut ws).await;
            // Say nothing more: the client must give up on this connection by itself.
            until_closed(&mut ws).await;
            let mut ws = accept_ws(&listener).await;
            expect_subscribe(&mut ws).await;
            send_all(
                &mut ws,
                &[r#"{"e":"trade","E":5,"s":"BTCUSDT","t":9,"p":"1.5","q":"2","T":4,"m":true}"#],
            )
            .await;
            until_closed(&mut ws).await;
        });

        let opts = options(url).idle_timeout(Duration::from_millis(300));
        let provider = BinanceProvider::new(opts).expect("valid options");
        let mut stream = provider.open_stream().expect("in a runtime");
        let events = collect(&mut stream, 1, &mut server).await;
        assert_eq!(events[0].ts(), 4_000_000);
        assert_eq!(stream.reconnects(), 1);
        assert_eq!(stream.skipped(), 0);
        drop(stream);
        server.await.expect("server checks passed");
    })
    .await;
}

#[tokio::test]
async fn stream_fails_after_max_consecutive_connect_failures() {
    guarded(async {
        // A port nobody listens on: every attempt is refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        drop(listener);

        let opts = options(url)
            .reconnect(Duration::from_millis(1), Duration::from_millis(5))
            .max_connect_failures(Some(3));
        let provider = BinanceProvider::new(opts).expect("valid options");
        let mut stream = provider.stream().await.expect("opens");
        let mut out = Vec::new();
        match stream.next_batch(&mut out).await {
            Err(ProviderError::Upstream(msg)) => {
                assert!(msg.contains("3 consecutive failed"), "{msg}");
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
        assert!(out.is_empty());
        assert!(stream.next_batch(&mut out).await.is_err(), "stays failed");
        assert_eq!(provider.reconnects(), 0);
    })
    .await;
}

#[tokio::test]
async fn rejected_subscription_fails_the_stream() {
    guarded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let mut ws = accept_ws(&listener).await;
            let msg = ws.next().await.expect("a request").expect("readable");
            let req: Value =
                serde_json::from_str(msg.into_text().expect("text").as_str()).expect("JSON");
            let reply = json!({
                "error": { "code": 2, "msg": "Invalid request: unknown stream" },
                "id": req["id"],
            });
            ws.send(Message::text(reply.to_string()))
                .await
                .expect("send");
            until_closed(&mut ws).await;
        });

        let provider = BinanceProvider::new(options(url)).expect("valid options");
        let mut stream = provider.stream().await.expect("opens");
        let mut out = Vec::new();
        match stream.next_batch(&mut out).await {
            Err(ProviderError::Upstream(msg)) => {
                assert!(
                    msg.contains("rejected") && msg.contains("unknown stream"),
                    "{msg}"
                );
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
        drop(stream);
        server.await.expect("server ran");
    })
    .await;
}

/// Serves one canned raw HTTP response per connection, in order; returns the request heads.
async fn http_server(responses: Vec<String>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = tokio::spawn(async move {
        let mut heads = Vec::new();
        for response in responses {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut byte).await.expect("read request");
                assert_eq!(
                    n,
                    1,
                    "request ended early: {:?}",
                    String::from_utf8_lossy(&head)
                );
                head.push(byte[0]);
            }
            heads.push(String::from_utf8(head).expect("ASCII request"));
            tcp.write_all(response.as_bytes()).await.expect("write");
            tcp.shutdown().await.expect("shutdown");
        }
        heads
    });
    (base, handle)
}

fn http_ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn http_ok_chunked(body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
}

fn http_status(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn provider_at(rest_url: String) -> BinanceProvider {
    BinanceProvider::new(BinanceOptions::new(["BTCUSDT"]).rest_url(rest_url))
        .expect("valid options")
}

fn request_target(head: &str) -> &str {
    let line = head.lines().next().expect("request line");
    let mut parts = line.split(' ');
    assert_eq!(parts.next(), Some("GET"), "{line}");
    let target = parts.next().expect("target");
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{line}");
    target
}

#[tokio::test]
async fn history_maps_klines_to_bars() {
    guarded(async {
        // The third bar ends after the requested end: dropped even though the server sent it.
        let klines = r#"[
            [1700000040000,"37000.00","37010.50","36990.25","37005.75","12.5",1700000099999,"462500.0",321,"7.25","268000.0","0"],
            [1700000100000,"37005.75","37020.00","37001.00","37015.00","3.75",1700000159999,"138800.0",57,"1.5","55500.0","0"],
            [1700000160000,"37015.00","37016.00","37014.00","37015.50","1",1700000219999,"37015.0",2,"0.5","18507.0","0"]
        ]"#;
        let hourly = r#"[[1690000000000,"1800.5","1810","1790.25","1805",100,1690003599999,"180000",1000,"40.5","72000","0"]]"#;
        let (base, server) = http_server(vec![http_ok(klines), http_ok_chunked(hourly)]).await;
        let addr = base.trim_start_matches("http://").to_string();
        let provider = provider_at(format!("{base}/"));

        let bars = provider
            .history(&HistoryRequest {
                symbol: "btcusdt".into(),
                bar_secs: 60,
                limit: 2,
                end_ts: Some(1_700_000_160_000_000_000),
            })
            .await
            .expect("bars");
        let minute = |ts_ms: u64, o, h, l, c, volume, buy_volume, trades| Bar {
            symbol: "BTCUSDT".into(),
            ts: ts_ms * 1_000_000,
            secs: 60,
            open: o,
            high: h,
            low: l,
            close: c,
            volume,
            buy_volume,
            trades,
        };
        assert_eq!(
            bars,
            vec![
                minute(1_700_000_040_000, 37000.0, 37010.5, 36990.25, 37005.75, 12.5, 7.25, 321),
                minute(1_700_000_100_000, 37005.75, 37020.0, 37001.0, 37015.0, 3.75, 1.5, 57),
            ]
        );

        let before_ms = now_ns() / 1_000_000;
        let bars = provider
            .history(&HistoryRequest {
                symbol: "ETHUSDT".into(),
                bar_secs: 3600,
                limit: 5000,
                end_ts: None,
            })
            .await
            .expect("bars");
        let after_ms = now_ns() / 1_000_000;
        assert_eq!(
            bars,
            vec![Bar {
                symbol: "ETHUSDT".into(),
                ts: 1_690_000_000_000_000_000,
                secs: 3600,
                open: 1800.5,
                high: 1810.0,
                low: 1790.25,
                close: 1805.0,
                volume: 100.0,
                buy_volume: 40.5,
                trades: 1000,
            }]
        );

        let heads = server.await.expect("server ran");
        assert_eq!(
            request_target(&heads[0]),
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2&endTime=1700000100000"
        );
        assert!(
            heads[0].contains(&format!("\r\nHost: {addr}\r\n")),
            "{}",
            heads[0]
        );
        // "Up to now": only finished bars, so the last open time is an hour before now;
        // the limit is clamped to Binance's 1000.
        let target = request_target(&heads[1]);
        let end_time: u64 = target
            .strip_prefix("/api/v3/klines?symbol=ETHUSDT&interval=1h&limit=1000&endTime=")
            .unwrap_or_else(|| panic!("unexpected target {target}"))
            .parse()
            .expect("numeric endTime");
        assert!(
            before_ms - 3_600_000 <= end_time && end_time <= after_ms - 3_600_000,
            "{end_time}"
        );
    })
    .await;
}

#[tokio::test]
async fn history_http_error_is_upstream_naming_the_status() {
    guarded(async {
        let body =
            r#"{"code":-1000,"msg":"An unknown error occurred while processing the request."}"#;
        let (base, server) =
            http_server(vec![http_status("500 Internal Server Error", body)]).await;
        let err = provider_at(base)
            .history(&HistoryRequest {
                symbol: "BTCUSDT".into(),
                bar_secs: 300,
                limit: 10,
                end_ts: None,
            })
            .await
            .expect_err("HTTP 500");
        match err {
            ProviderError::Upstream(msg) => {
                assert!(msg.contains("500"), "{msg}");
                assert!(msg.contains("An unknown error occurred"), "{msg}");
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
        let heads = server.await.expect("server ran");
        assert!(request_target(&heads[0]).contains("interval=5m"));
    })
    .await;
}

#[tokio::test]
async fn history_unknown_symbol_is_bad_request() {
    guarded(async {
        let body = r#"{"code":-1121,"msg":"Invalid symbol."}"#;
        let (base, server) = http_server(vec![http_status("400 Bad Request", body)]).await;
        let err = provider_at(base)
            .history(&HistoryRequest {
                symbol: "NOPEUSDT".into(),
                bar_secs: 60,
                limit: 10,
                end_ts: None,
            })
            .await
            .expect_err("unknown symbol");
        match err {
            ProviderError::BadRequest(msg) => assert!(msg.contains("NOPEUSDT"), "{msg}"),
            other => panic!("expected BadRequest, got {other:?}"),
        }
        server.await.expect("server ran");
    })
    .await;
}

#[tokio::test]
async fn history_unsupported_interval_is_bad_request() {
    guarded(async {
        // Nothing listens there: a request would fail as Upstream, not BadRequest.
        let provider = provider_at("http://127.0.0.1:9".into());
        let err = provider
            .history(&HistoryRequest {
                symbol: "BTCUSDT".into(),
                bar_secs: 120,
                limit: 10,
                end_ts: None,
            })
            .await
            .expect_err("2-minute bars");
        match err {
            ProviderError::BadRequest(msg) => {
                assert!(msg.contains("120"), "{msg}");
                assert!(
                    msg.contains("60 (1m)") && msg.contains("86400 (1d)"),
                    "{msg}"
                );
            }
            other => panic!("expected BadRequest, got {other:?}"),
        }
    })
    .await;
}

#[test]
fn instruments_are_the_configured_symbols_and_bad_options_are_refused() {
    let provider =
        BinanceProvider::new(BinanceOptions::new(["btcusdt", "ETHUSDT"])).expect("valid options");
    assert_eq!(provider.name(), "binance");
    let symbols: Vec<_> = provider
        .instruments()
        .into_iter()
        .map(|i| (i.symbol, i.tick_size, i.lot_size))
        .collect();
    assert_eq!(
        symbols,
        [
            ("BTCUSDT".to_string(), 0.01, 0.00001),
            ("ETHUSDT".to_string(), 0.01, 0.00001)
        ]
    );
    let bad = BinanceOptions::new(Vec::<String>::new()).ws_url("ftp://x");
    match BinanceProvider::new(bad) {
        Err(ProviderError::Config(msg)) => {
            assert!(msg.contains("symbols") && msg.contains("ws_url"), "{msg}");
        }
        other => panic!("expected Config, got {other:?}"),
    }
}
