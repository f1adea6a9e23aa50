//! HTTP: the routes (page, `/ws`, `/api/state`, `/health`, `/metrics`), the token, the origin
//! check and the WebSocket upgrade, and each client's connection.

use super::*;

/// The server's shared state, as every route sees it.
#[derive(Clone)]
pub(super) struct App {
    pub(super) feed: Arc<Feed>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The WebSocket clients' tasks (they leave the HTTP server once upgraded); stop waits
    /// for them.
    pub(super) clients: Arc<Mutex<JoinSet<()>>>,
    /// Clients connected or being connected.
    pub(super) open: Arc<AtomicU64>,
    pub(super) max_clients: usize,
    /// See [`WebSocketParams::token`].
    pub(super) token: Option<Arc<str>>,
    /// See [`WebSocketParams::allowed_origins`].
    pub(super) allowed_origins: Arc<[String]>,
}

/// The environment variable that gives the token when the configuration does not.
pub const TOKEN_ENV: &str = "DUALBUS_DASHBOARD_TOKEN";

/// The cookie that carries the token for a browser.
pub(super) const TOKEN_COOKIE: &str = "dualbus_token";

/// Equal strings, compared in a time that does not depend on where they first differ.
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// How a request presented the token, if it did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    Header,
    Cookie,
    Query,
}

/// Where `req` carries `token`: the `Authorization: Bearer` header, the cookie or the query.
pub(crate) fn presented(
    headers: &HeaderMap,
    query: Option<&str>,
    token: &str,
) -> Option<Presented> {
    let t = token.as_bytes();
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .any(|v| same_secret(v.trim().as_bytes(), t));
    if bearer {
        return Some(Presented::Header);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .any(|v| same_secret(v.as_bytes(), t));
    if cookie {
        return Some(Presented::Cookie);
    }
    let query = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("token="))
        .any(|v| same_secret(v.as_bytes(), t));
    query.then_some(Presented::Query)
}

/// Refuses (413) a request that carries a body: the dashboard only serves GETs, so a body is
/// never read, and a client sending one is told at once rather than left writing into a
/// connection nobody reads.
pub(super) async fn refuse_body(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = req.headers();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || h.contains_key(header::TRANSFER_ENCODING);
    if !declared {
        return next.run(req).await;
    }
    app.feed.refused_body.fetch_add(1, Ordering::Relaxed);
    let mut r = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the dashboard takes no request bodies\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// The dashboard's refusals and frames in `/metrics`.
pub(super) struct DashboardCollector(pub(super) Arc<Feed>);

impl std::fmt::Debug for DashboardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DashboardCollector")
    }
}

impl prometheus_client::collector::Collector for DashboardCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;
        let feed = &self.0;
        let mut m = enc.encode_descriptor(
            "dualbus_dashboard_refused",
            "Dashboard requests refused, by reason (max_clients, token, origin, body, head_too_large, head_timeout)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in feed.refusals() {
            ConstCounter::new(n).encode(m.encode_family(&[("reason", reason)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "dualbus_dashboard_frames",
            "WebSocket frames the dashboard sent, and dropped from slow clients' queues",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("sent", feed.frames_sent.load(Ordering::Relaxed)),
            ("dropped", feed.frames_dropped.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// With a token configured, refuses (401) a request that does not carry it, except the
/// probes; a request that carried it in the query gets it back as a cookie.
pub(super) async fn require_token(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = app.token.clone() else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    match presented(req.headers(), req.uri().query(), &token) {
        None => {
            app.feed.refused_token.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "this dashboard needs its token: open /?token=TOKEN in a browser, or send \
                 Authorization: Bearer TOKEN (the token is websocket.token or \
                 DUALBUS_DASHBOARD_TOKEN where the dashboard runs)\n",
            )
                .into_response()
        }
        Some(Presented::Query) => {
            let mut res = next.run(req).await;
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(v) = header::HeaderValue::from_str(&cookie) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Some(_) => next.run(req).await,
    }
}

/// Whether a browser page from `origin` may open `/ws` on a server reached as `host`: its own
/// origin (`http://host` or `https://host`) or one of `allowed`.
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let own = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    own || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// Checks a `/ws` request: the kinds it asks for and the WebSocket handshake. On success the
/// `Sec-WebSocket-Accept` value and the filter; else the status and text to answer with.
pub(crate) fn check_upgrade(
    headers: &HeaderMap,
    query: Option<&str>,
    default: &KindFilter,
) -> Result<(String, KindFilter), (StatusCode, String)> {
    let bad = |m: String| Err((StatusCode::BAD_REQUEST, m + "\n"));
    let kinds = match parse_kinds(query, default) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let upgrade = header(header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (true, Some(key)) = (upgrade, header(header::SEC_WEBSOCKET_KEY)) else {
        return bad("/ws expects a WebSocket upgrade request".into());
    };
    if header(header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return bad("/ws speaks WebSocket version 13 only".into());
    }
    Ok((derive_accept_key(key.trim().as_bytes()), kinds))
}

pub(super) fn json_response(v: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// `GET /ws`: upgrades to WebSocket (through hyper, so the connection speaks the same
/// tokio-tungstenite as the Binance client) and feeds the client until it leaves or the
/// server stops.
pub(super) async fn ws_route(State(app): State<App>, mut req: axum::extract::Request) -> Response {
    let (accept, kinds) =
        match check_upgrade(req.headers(), req.uri().query(), &app.feed.default_kinds) {
            Ok(ok) => ok,
            Err(reply) => return reply.into_response(),
        };
    // Browsers always send Origin; other clients (scripts, tests) may not, and pass.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if !origin_allowed(origin, host, &app.allowed_origins) {
            app.feed.refused_origin.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::FORBIDDEN,
                format!(
                    "a page from {origin:?} may not open this feed; add it to \
                     websocket.allowed_origins if it should\n"
                ),
            )
                .into_response();
        }
    }
    // Counted before the answer, so a burst of connections cannot pass the limit together.
    let open = app.open.fetch_add(1, Ordering::SeqCst) as usize;
    if open >= app.max_clients {
        app.open.fetch_sub(1, Ordering::SeqCst);
        app.feed.refused_clients.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} clients are connected, the most this dashboard serves; \
                 set websocket.max_clients\n",
                app.max_clients
            ),
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    {
        let mut tasks = app.clients.lock();
        // Reap finished clients so the set holds only the live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let app = task_app;
            let _open = OpenClient(app.open.clone());
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            // Browsers send only small control and text frames; nothing needs more.
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 << 10))
                .max_frame_size(Some(64 << 10));
            let ws = WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            feed_client(ws, &app.feed, kinds, app.shutdown.clone()).await;
        });
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Counts a client as open until it ends.
pub(super) struct OpenClient(Arc<AtomicU64>);

impl Drop for OpenClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn method_not_allowed(method: axum::http::Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed; use GET\n"),
    )
        .into_response()
}

/// The dashboard's routes; with `metrics`, also `/metrics`, `/healthz` and `/readyz`.
pub(super) fn routes(app: App, metrics: Option<Arc<BusMetrics>>) -> axum::Router {
    let get_only = |r: axum::routing::MethodRouter<App>| r.fallback(method_not_allowed);
    let page = || async {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            PAGE,
        )
    };
    let asset = |content_type: &'static str, body: &'static str| {
        get_only(get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "max-age=3600"),
                ],
                body,
            )
        }))
    };
    let router = axum::Router::new()
        .route("/", get_only(get(page)))
        .route(
            "/assets/uplot.js",
            asset("text/javascript; charset=utf-8", UPLOT_JS),
        )
        .route(
            "/assets/uplot.css",
            asset("text/css; charset=utf-8", UPLOT_CSS),
        )
        .route(
            "/health",
            get_only(get(|State(app): State<App>| async move {
                json_response(app.feed.health_json())
            })),
        )
        .route(
            "/api/state",
            get_only(get(|State(app): State<App>| async move {
                json_response(app.feed.state_json())
            })),
        )
        .route("/ws", get_only(get(ws_route)))
        .with_state(app.clone());
    let router = match metrics {
        Some(m) => router.merge(telemetry::routes(m)),
        None => router,
    };
    router
        .fallback(telemetry::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(app, refuse_body))
}

/// Sends a client its queued frames until it leaves or the server stops.
pub(super) async fn feed_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    feed: &Feed,
    kinds: KindFilter,
    mut shutdown: watch::Receiver<bool>,
) {
    let reg = Registered {
        feed,
        client: feed.register(kinds),
    };
    let client = &reg.client;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = stopping(&mut shutdown) => break,
            _ = client.ready.notified() => {
                client.queue.lock().take(&mut out);
                let n = out.len() as u64;
                let sent = tokio::select! {
                    // A client that stopped reading must not hold up the stop.
                    _ = stopping(&mut shutdown) => break,
                    r = send_all(&mut ws, &mut out) => r,
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "client gone");
                    return;
                }
                feed.frames_sent.fetch_add(n, Ordering::Relaxed);
            }
            incoming = ws.next() => match incoming {
                // The client closed (tungstenite answers its close frame) or vanished.
                None | Some(Err(_)) => return,
                // Pings are answered by tungstenite; the client has nothing else to say.
                Some(Ok(_)) => {}
            },
        }
    }
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "server stopping".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
}

pub(super) async fn send_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    out: &mut Vec<Frame>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for f in out.drain(..) {
        ws.feed(Message::Text(f)).await?;
    }
    ws.flush().await
}
