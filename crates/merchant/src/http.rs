//! The channel protocol as a JSON HTTP API (DESIGN §7): the same operations as the TCP
//! protocol, for clients that speak HTTP. Errors are JSON `{"code", "message"}` with the
//! protocol's stable codes; payment refusals are `409 Conflict` (the channel is unchanged),
//! an unknown channel `404`, malformed input `400`, the merchant's own failures `500` (no
//! internals leak).
//!
//! | method & path | body | answer |
//! |---|---|---|
//! | `GET /v1/info` | — | `{version, public_key, key_index, policy}` (a fresh key for a new channel: each answer offers its own, ADR 0029) |
//! | `POST /v1/channels` | `{funding_tx, customer_pubkey, merchant_pubkey, key_index, expiry, change_script}` (hex) | `{channel, confirmations_required}` |
//! | `GET /v1/channels/{txid}:{vout}` | — | `{channel, phase, total_sat}` |
//! | `POST /v1/channels/{txid}:{vout}/payments` | `{total_sat, signature}` | `{channel, total_sat}` |
//! | `POST /v1/channels/{txid}:{vout}/close` | `{signature}` | `{channel, settlement_txid}` |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::msg;
use serde_json::{json, Value};

use std::future::Future as _;

use crate::listen::{serve_connections, Accepted, Limits};
use crate::{ChannelServer, MerchantError};

/// The API's routes, for mounting in an axum app or serving alone.
pub fn router(server: Arc<ChannelServer>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/channels", post(open))
        .route("/v1/channels/{id}", get(status))
        .route("/v1/channels/{id}/payments", post(pay))
        .route("/v1/channels/{id}/close", post(close))
        .with_state(server)
}

/// An error answer.
struct ApiError(StatusCode, u32, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response()
    }
}

impl From<MerchantError> for ApiError {
    fn from(e: MerchantError) -> Self {
        let a = e.answer(crate::answer::Op::Pay);
        ApiError(a.status, a.code, a.message)
    }
}

fn bad(what: &str) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        paychan_core::Error::Decode(String::new()).code(),
        what.to_string(),
    )
}

fn hex_field(v: &Value, name: &str) -> Result<Vec<u8>, ApiError> {
    v.get(name)
        .and_then(Value::as_str)
        .and_then(|s| Vec::<u8>::from_hex(s).ok())
        .ok_or_else(|| bad(&format!("{name} must be a hex string")))
}

fn u64_field(v: &Value, name: &str) -> Result<u64, ApiError> {
    v.get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(&format!("{name} must be a non-negative integer")))
}

fn channel_id(s: &str) -> Result<OutPoint, ApiError> {
    s.parse().map_err(|_| bad("the channel must be txid:vout"))
}

async fn info(State(s): State<Arc<ChannelServer>>) -> Result<Json<Value>, ApiError> {
    let hello = msg::Hello {
        min_version: 1,
        max_version: msg::PROTOCOL_VERSION,
        user_agent: String::new(),
    };
    let w = s.hello(&hello).await?;
    let policy = w.policy.as_ref().map(|p| {
        json!({
            "min_deposit_sat": p.min_deposit_sat,
            "max_deposit_sat": p.max_deposit_sat,
            "min_channel_life_secs": p.min_channel_life_secs,
            "max_channel_life_secs": p.max_channel_life_secs,
            "settle_margin_secs": p.settle_margin_secs,
            "payment_cutoff_secs": p.payment_cutoff_secs,
            "min_confirmations": p.min_confirmations,
            "zero_conf": p.zero_conf,
            "min_dispute_blocks": p.min_dispute_blocks,
            "dust_relay_fee_sat_per_kvb": p.dust_relay_fee_sat_per_kvb,
            "close_out_sat": p.close_out_sat,
        })
    });
    Ok(Json(json!({
        "version": w.version,
        "node_id": s.node_id().to_string(),
        "public_key": w.merchant_pubkey.to_lower_hex_string(),
        "key_index": w.key_index,
        "policy": policy,
    })))
}

async fn open(
    State(s): State<Arc<ChannelServer>>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let Json(v) = body.ok_or_else(|| bad("the body must be JSON"))?;
    let open = msg::Open {
        funding_tx: hex_field(&v, "funding_tx")?,
        customer_pubkey: hex_field(&v, "customer_pubkey")?,
        merchant_pubkey: hex_field(&v, "merchant_pubkey")?,
        expiry: u32::try_from(u64_field(&v, "expiry")?).map_err(|_| bad("expiry out of range"))?,
        change_script: hex_field(&v, "change_script")?,
        key_index: u32::try_from(u64_field(&v, "key_index")?)
            .map_err(|_| bad("key_index out of range"))?,
        // The JSON API opens CLTV channels; dispute channels open over the channel protocol.
        dispute_blocks: 0,
        trigger_signature: Vec::new(),
    };
    let opened = s.open(&open).await?;
    let channel = opened.channel.as_ref().and_then(|c| c.outpoint().ok()).map(|o| o.to_string());
    Ok(Json(json!({"channel": channel, "confirmations_required": opened.confirmations_required})))
}

async fn status(
    State(s): State<Arc<ChannelServer>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = channel_id(&id)?;
    let (phase, total) = s.channel_status(id).await?;
    Ok(Json(
        json!({"channel": id.to_string(), "phase": phase.as_str(), "total_sat": total.to_sat()}),
    ))
}

/// The channel a `/v1/channels/{id}/…` path names and the request's JSON body.
fn channel_body(id: &str, body: Option<Json<Value>>) -> Result<(OutPoint, Value), ApiError> {
    let id = channel_id(id)?;
    let Json(v) = body.ok_or_else(|| bad("the body must be JSON"))?;
    Ok((id, v))
}

async fn pay(
    State(s): State<Arc<ChannelServer>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let (id, v) = channel_body(&id, body)?;
    let pay = msg::Pay {
        channel: Some(id.into()),
        total_sat: u64_field(&v, "total_sat")?,
        signature: hex_field(&v, "signature")?,
    };
    let ack = s
        .pay_batch(id, std::slice::from_ref(&pay))
        .await
        .pop()
        .ok_or_else(|| bad("no answer"))??;
    Ok(Json(json!({"channel": id.to_string(), "total_sat": ack.total_sat})))
}

async fn close(
    State(s): State<Arc<ChannelServer>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let (id, v) = channel_body(&id, body)?;
    let close = msg::Close { channel: Some(id.into()), signature: hex_field(&v, "signature")? };
    let closed = s.close(&close).await?;
    let txid = closed.txid().map_err(|_| bad("bad txid"))?;
    Ok(Json(json!({"channel": id.to_string(), "settlement_txid": txid.to_string()})))
}

#[derive(Clone)]
struct Admin {
    server: Arc<ChannelServer>,
    token: Arc<String>,
    metrics: MetricsAccess,
    prices: Option<crate::paywall::PriceBook>,
}

/// Who may read `/metrics` (its figures include revenue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Only with the admin bearer token.
    Token,
    /// With the token, or from a loopback address (a scraper on the same machine). The default.
    #[default]
    Loopback,
    /// Anyone (behind a firewall of your own).
    Public,
}

impl std::str::FromStr for MetricsAccess {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "token" => Ok(MetricsAccess::Token),
            "loopback" => Ok(MetricsAccess::Loopback),
            "public" => Ok(MetricsAccess::Public),
            other => Err(format!("{other:?}: metrics access is token, loopback or public")),
        }
    }
}

/// The admin API's settings (its `Debug` hides the token).
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token of `/admin/*` (and of `/metrics`, see [`MetricsAccess`]).
    pub token: String,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// The paywall's prices, changed at runtime through `/admin/prices` (none without a
    /// paywall).
    pub prices: Option<crate::paywall::PriceBook>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("token", &"…").field("metrics", &self.metrics).finish()
    }
}

impl AdminConfig {
    /// `token`, with `/metrics` open to loopback.
    pub fn new(token: impl Into<String>) -> Self {
        AdminConfig { token: token.into(), metrics: MetricsAccess::default(), prices: None }
    }
}

/// The admin API behind a bearer token, and `/metrics` (Prometheus text format):
///
/// | method & path | answer |
/// |---|---|
/// | `GET /admin/channels` | every channel: phase, paid, charged, deposit, expiry (`?limit=N&after=ID`: one page) |
/// | `GET /admin/summary` | channels by phase, total paid, revenue (paid on settled channels); this instance's name and the settlement lease's holder |
/// | `POST /admin/channels/{txid}:{vout}/settle` | settles now; `{settlement_txid}` |
/// | `GET /metrics` | counters, channels by phase, payment and store latency histograms |
/// | `GET /admin/prices` | the paywall's prices: `{default_sat, routes: [{pattern, price_sat}], free}` |
/// | `PUT /admin/prices` | replaces them (same JSON); stored, then in force for the next request |
/// | `POST /admin/prices/routes` | `{pattern, price_sat}`: sets one route's price (a new one goes first) |
/// | `DELETE /admin/prices/routes?pattern=/api/*` | removes one route (`404` when there is none) |
pub fn admin_router(server: Arc<ChannelServer>, admin: AdminConfig) -> Router {
    let state = Admin {
        server,
        token: Arc::new(admin.token),
        metrics: admin.metrics,
        prices: admin.prices,
    };
    Router::new()
        .route("/admin/channels", get(admin_channels))
        .route("/admin/summary", get(admin_summary))
        .route("/admin/channels/{id}/settle", post(admin_settle))
        .route("/admin/prices", get(admin_prices).put(admin_set_prices))
        .route("/admin/prices/routes", post(admin_set_route).delete(admin_remove_route))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn price_book(a: &Admin) -> Result<&crate::paywall::PriceBook, ApiError> {
    a.prices.as_ref().ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, 404, "this merchant runs no paywall (no --upstream)".into())
    })
}

async fn admin_prices(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
) -> Result<Json<crate::paywall::PriceTable>, ApiError> {
    authorised(&a, &headers)?;
    Ok(Json(price_book(&a)?.table()))
}

async fn admin_set_prices(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<crate::paywall::PriceTable>, ApiError> {
    authorised(&a, &headers)?;
    let table: crate::paywall::PriceTable =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("not a price table: {e}")))?;
    let book = price_book(&a)?;
    book.set(table).await?;
    Ok(Json(book.table()))
}

#[derive(serde::Deserialize)]
struct RouteBody {
    pattern: String,
    price_sat: u64,
}

async fn admin_set_route(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<crate::paywall::PriceTable>, ApiError> {
    authorised(&a, &headers)?;
    let r: RouteBody = serde_json::from_slice(&body)
        .map_err(|e| bad(&format!("expected {{\"pattern\", \"price_sat\"}}: {e}")))?;
    let book = price_book(&a)?;
    book.set_route(&r.pattern, Amount::from_sat(r.price_sat)).await?;
    Ok(Json(book.table()))
}

#[derive(serde::Deserialize)]
struct PatternQuery {
    pattern: String,
}

async fn admin_remove_route(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<PatternQuery>,
) -> Result<Json<crate::paywall::PriceTable>, ApiError> {
    authorised(&a, &headers)?;
    let book = price_book(&a)?;
    if !book.remove_route(&q.pattern).await? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            404,
            format!("no route {:?} to remove", q.pattern),
        ));
    }
    Ok(Json(book.table()))
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
pub(crate) fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let want = token.as_bytes();
    given.len() == want.len() && given.bytes().zip(want).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorised(a: &Admin, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if bearer_matches(headers, &a.token) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            401,
            "a valid admin bearer token is required".into(),
        ))
    }
}

/// `GET /admin/channels`: every channel ordered by expiry, or with `?limit=N` (and
/// `&after=<txid>:<vout>`, the last id of the page before) one page in the store's order.
#[derive(Debug, serde::Deserialize)]
struct ChannelsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn admin_channels(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ChannelsQuery>,
) -> Result<Json<Value>, ApiError> {
    authorised(&a, &headers)?;
    let channels = match (q.limit, q.after) {
        (None, None) => a.server.channels().await?,
        (limit, after) => {
            let after = after.as_deref().map(channel_id).transpose()?;
            a.server.channels_page(after, limit.unwrap_or(1_000).min(10_000)).await?
        }
    };
    let list: Vec<Value> = channels
        .into_iter()
        .map(|c| {
            json!({
                "channel": c.id.to_string(),
                "kind": c.kind(),
                "phase": c.phase.as_str(),
                "paid_sat": c.paid.to_sat(),
                "charged_sat": c.charged.to_sat(),
                "capacity_sat": c.capacity.to_sat(),
                "expiry": c.expiry,
                "dispute_blocks": c.dispute_blocks,
            })
        })
        .collect();
    Ok(Json(json!(list)))
}

async fn admin_summary(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorised(&a, &headers)?;
    let mut by_phase = serde_json::Map::new();
    let (mut paid, mut revenue) = (0u64, 0u64);
    for c in a.server.channels().await? {
        let (phase, total) = (c.phase, c.paid);
        let n = by_phase.get(phase.as_str()).and_then(Value::as_u64).unwrap_or(0);
        by_phase.insert(phase.as_str().into(), json!(n + 1));
        paid += total.to_sat();
        if matches!(
            phase,
            paychan_core::channel::Phase::Settled | paychan_core::channel::Phase::Settling
        ) {
            revenue += total.to_sat();
        }
    }
    let leader = a.server.settlement_leader();
    Ok(Json(json!({
        "channels": by_phase,
        "paid_sat": paid,
        "revenue_sat": revenue,
        "instance": a.server.instance(),
        "settlement_leader": leader,
        "is_settlement_leader": leader.as_deref() == Some(a.server.instance()),
    })))
}

async fn admin_settle(
    State(a): State<Admin>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorised(&a, &headers)?;
    let id = channel_id(&id)?;
    let closed = a.server.settle(id).await?;
    let txid = closed.txid().map_err(|_| bad("bad txid"))?;
    Ok(Json(json!({"channel": id.to_string(), "settlement_txid": txid.to_string()})))
}

async fn metrics(
    State(a): State<Admin>,
    req: axum::http::Request<axum::body::Body>,
) -> Result<Response, ApiError> {
    let from_loopback = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    match a.metrics {
        MetricsAccess::Public => {}
        MetricsAccess::Loopback if from_loopback => {}
        MetricsAccess::Loopback | MetricsAccess::Token => authorised(&a, req.headers())?,
    }
    let body = a.server.metrics_text().await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Serves the API, the 21 REST protocol at `/payment`, and (with a token) the admin API and
/// `/metrics`, on `listener` until `shutdown` completes.
///
/// # Errors
/// None today: accept errors are ridden out (see [`serve_app`]).
pub async fn serve(
    server: Arc<ChannelServer>,
    listener: tokio::net::TcpListener,
    admin_token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(server, listener, admin_token, None, shutdown).await
}

/// As [`serve`], with `fallback` answering every path the merchant's own routes do not (a
/// paywalled upstream: [`crate::paywall::reverse_proxy`] under a
/// [`PaywallLayer`](crate::paywall::PaywallLayer)), with the default [`Limits`].
///
/// # Errors
/// None today: accept errors are ridden out (see [`serve_app`]).
pub async fn serve_with(
    server: Arc<ChannelServer>,
    listener: tokio::net::TcpListener,
    admin_token: Option<String>,
    fallback: Option<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admin = admin_token.map(AdminConfig::new);
    serve_app(app(server, admin, fallback), listener, Limits::default(), shutdown).await
}

/// The merchant's whole HTTP app: the API, the 21 REST protocol, the admin API and
/// `/metrics` when `admin` is given, and `fallback` for every other path.
pub fn app(
    server: Arc<ChannelServer>,
    admin: Option<AdminConfig>,
    fallback: Option<Router>,
) -> Router {
    let mut app = router(server.clone()).merge(crate::two1::router(server.clone()));
    if let Some(admin) = admin {
        app = app.merge(admin_router(server, admin));
    }
    if let Some(f) = fallback {
        app = app.fallback_service(f);
    }
    app
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish (up
/// to [`crate::listen::SHUTDOWN_GRACE`]).
///
/// Every request's path is brought to its canonical form ([`crate::path`]) *before* routing,
/// so routes, prices, free paths and the upstream all see the same path; a path without one
/// is answered `400`. At most `limits.max_connections` connections are open at once; request
/// headers must arrive within `limits.handshake_timeout`; a connection silent for
/// `limits.idle_timeout` is closed; accept errors never end the server ([`crate::listen`]).
///
/// # Errors
/// None today: accept errors are ridden out (the signature keeps room for setup errors).
pub async fn serve_app(
    app: Router,
    listener: tokio::net::TcpListener,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app_tls(app, listener, limits, None, shutdown).await
}

/// [`serve_app`], over TLS when `tls` is given: the TLS handshake must finish within
/// `limits.handshake_timeout` (a failed one is logged and closes that connection only).
///
/// # Errors
/// None today (see [`serve_app`]).
pub async fn serve_app_tls(
    app: Router,
    listener: tokio::net::TcpListener,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let handle = |accepted: Accepted, stop: tokio::sync::watch::Receiver<bool>| {
        http_connection(app.clone(), accepted, limits.clone(), tls.clone(), stop)
    };
    serve_connections(listener, &limits, "HTTP server", shutdown, handle).await;
    Ok(())
}

async fn http_connection(
    app: Router,
    accepted: Accepted,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let Accepted { stream, peer, permit } = accepted;
    let idle = IdleIo::new(stream, limits.idle_timeout);
    match tls {
        None => serve_http(app, hyper_util::rt::TokioIo::new(idle), peer, &limits, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(idle)).await {
                Ok(Ok(stream)) => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    serve_http(app, io, peer, &limits, stop).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    drop(permit);
}

/// HTTP/1.1 on `io` until the peer leaves, the connection idles out, or `stop`.
async fn serve_http<I>(
    app: Router,
    io: I,
    peer: std::net::SocketAddr,
    limits: &Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            // For handlers that care who asks (`/metrics` from loopback).
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let app = app.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    canonical_then(app, req.map(axum::body::Body::new)).await,
                )
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Routes `req` by its canonical path, or answers `400` when it has none.
async fn canonical_then(app: Router, mut req: axum::http::Request<axum::body::Body>) -> Response {
    match crate::path::canonical_uri(req.uri()) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return crate::paywall::bad_path(&e),
    }
    match tower::ServiceExt::oneshot(app, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written for `idle`.
struct IdleIo {
    inner: tokio::net::TcpStream,
    idle: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleIo {
    fn new(inner: tokio::net::TcpStream, idle: std::time::Duration) -> Self {
        IdleIo { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// A write's outcome: progress resets the idle deadline; a write that waits fails once the
    /// connection has been idle too long.
    fn wrote(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        match r {
            std::task::Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.touch();
                }
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => self.expired(cx).map(Err),
        }
    }

    /// `Pending` unless the connection has been idle too long.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        match self.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle too long",
            )),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for IdleIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => self.expired(cx).map(Err),
        }
    }
}

impl tokio::io::AsyncWrite for IdleIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(cx, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
