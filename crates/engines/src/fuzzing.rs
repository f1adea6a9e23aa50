//! The properties the fuzz targets (`fuzz/`) and the property tests check on the engines'
//! decoders: the replay files, Binance's messages and HTTP bodies, the dashboard's request
//! handling, the payloads engines read. Not a stable API: for fuzzing and tests only.

use crate::provider::binance::{decode, Dechunker};
use crate::provider::replay::{FileFormat, ReplayOptions, ReplayProvider};
use crate::websocket::{check_upgrade, origin_allowed, parse_kinds, presented, KindFilter};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};

/// The token the dashboard property runs with.
pub const TOKEN: &str = "0123456789abcdef0123";

/// On any file contents: the replay reader of each format (binance, tardis, quotes) gives
/// its events or an error, never a panic, and every event it gives has a finite, positive
/// price.
pub fn replay_file(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "dualbus-fuzz-{}-{}.csv",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).expect("a temporary file");
    for format in FileFormat::ALL {
        let opts = ReplayOptions::new(&path, format).symbol("BTCUSDT");
        if let Ok(p) = ReplayProvider::open(opts) {
            let _ = (p.len(), p.time_range(), p.skipped_rows().len());
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// On any bytes: Binance's WebSocket frame decoder never panics; the chunked-body decoder
/// never panics and gives the same body whether the bytes arrive at once or in two pieces.
pub fn binance(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode(text, || 42);
    }
    let mut whole = Dechunker::default();
    let at_once = whole.advance(data);
    let mut pieces = Dechunker::default();
    let half = data.len() / 2;
    let first = pieces.advance(&data[..half]);
    let in_two = match first {
        Ok(true) => Ok(true),
        Ok(false) => pieces.advance(data),
        Err(e) => Err(e),
    };
    match (&at_once, &in_two) {
        (Ok(true), Ok(true)) => assert_eq!(whole.out, pieces.out),
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        // A malformed prefix is malformed whole too.
        (Ok(_), Err(e)) => panic!("the first half is refused ({e}) but the whole is not"),
        (Err(_), _) => {}
    }
}

/// On any request head: the dashboard's checks (the token, the WebSocket upgrade and its
/// `kinds`, the origin) never panic, and a request is taken as carrying the token only when
/// its bytes hold the token.
pub fn dashboard_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(data), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let (path, query) = match req.path.unwrap_or("/").split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.unwrap_or("/"), None),
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    let carried = presented(&map, query, TOKEN).is_some();
    let holds_token = data.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
    assert!(
        !carried || holds_token,
        "a request without the token passed"
    );
    let default = KindFilter::from_names(["portfolio_update"]).expect("a feed kind");
    let _ = parse_kinds(query, &default);
    if path == "/ws" {
        let _ = check_upgrade(&map, query, &default);
    }
    if let Some(origin) = map.get("origin").and_then(|v| v.to_str().ok()) {
        let host = map.get("host").and_then(|v| v.to_str().ok());
        let _ = origin_allowed(origin, host, &["https://allowed.example".to_string()]);
    }
}

/// On any bytes: the payloads the engines read (orders, executions, quotes, trades) decode
/// from JSON and MessagePack or fail, never panic; what decodes encodes again.
pub fn engine_payloads(data: &[u8]) {
    use dualbus_core::Encoding;
    fn one<T: serde::Serialize + serde::de::DeserializeOwned>(enc: Encoding, data: &[u8]) {
        if let Ok(v) = enc.decode::<T>(data) {
            enc.encode(&v).expect("a decoded payload encodes");
        }
    }
    for enc in [Encoding::Json, Encoding::Msgpack] {
        one::<dualbus_model::orders::OrderRequest>(enc, data);
        one::<dualbus_model::orders::Execution>(enc, data);
        one::<dualbus_model::market::Quote>(enc, data);
        one::<dualbus_model::market::Trade>(enc, data);
        one::<dualbus_model::hub::HistoryQuery>(enc, data);
    }
}
