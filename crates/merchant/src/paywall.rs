//! The HTTP 402 paywall (DESIGN §7): a tower [`Layer`] for axum apps that charges per request,
//! and a reverse proxy ([`reverse_proxy`]) that puts it in front of any upstream API.
//!
//! * A request to a priced route without payment gets `402 Payment Required` with the price
//!   and how to pay: the x402 v2 `PAYMENT-REQUIRED` header (our [`SCHEME`] names the channel
//!   server, the merchant's limits and the price), the 21 headers `Price` and
//!   `Bitcoin-Payment-Channel-Server`, and the same JSON as the body for people with curl.
//! * A request carrying a channel payment in `PAYMENT-SIGNATURE` is charged with the rule
//!   `charged + price ≤ signed_max`, each signed total once
//!   ([`ChannelServer::redeem`]); the charge is durable before the inner service runs. The
//!   answer carries the receipt in `PAYMENT-RESPONSE`.
//! * A request carrying a 21 token (`Bitcoin-Payment-Channel-Token`) is charged the same way,
//!   single use ([`ChannelServer::redeem_token`]), with two1's error texts.
//! * When the inner service answers 5xx (an upstream failure or an unreachable upstream), the
//!   charge is reversed before the answer goes out: a customer never pays for a failed
//!   request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use paychan_core::bitcoin::{Amount, Network, OutPoint, Txid};
use paychan_core::paywall::{
    asset, caip2, decode_header, encode_header, max_timeout_seconds, reason, Limits, PaychanExtra,
    PaymentPayload, PaymentRequired, PaymentResponse, Requirement, Resource, PAYMENT_REQUIRED,
    PAYMENT_RESPONSE, PAYMENT_SIGNATURE, SCHEME, X402_VERSION,
};
use paychan_core::ratelimit::{retry_after_secs, Limiter, Rate};
use paychan_core::Error;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};
use tracing::{debug, warn};

use crate::answer::Op;
use crate::{ChannelServer, MerchantError};

/// The 21 token header.
pub const TOKEN_HEADER: &str = "bitcoin-payment-channel-token";

/// The `errorReason` of a receipt whose charge was reversed because the request failed.
pub const REVERSED: &str = "paychan_request_failed_not_charged";

/// A price rule's path pattern: `/exact`, `/prefix/*`, or `*` for every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(p: impl Into<String>) -> Self {
        Pattern(p.into())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A pattern from user input: `/exact`, `/prefix/*` or `*`.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for anything else.
    pub fn parse(p: &str) -> Result<Self, Error> {
        // A `*` only as the last character.
        let ok =
            p == "*" || (p.starts_with('/') && !p.strip_suffix('*').unwrap_or(p).contains('*'));
        if !ok || p.len() > 1_024 {
            return Err(Error::InvalidPolicy(format!(
                "{p:?} is not a route pattern: /exact, /prefix/* or *"
            )));
        }
        Ok(Pattern(p.to_string()))
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.0,
        }
    }
}

/// A price computed from the request (dynamic pricing); `None` leaves it to the static rules.
pub type PriceFn =
    Arc<dyn Fn(&Method, &axum::http::Uri, &HeaderMap) -> Option<Amount> + Send + Sync>;

/// What each request costs.
#[derive(Clone, Default)]
pub struct Pricing {
    default: Option<Amount>,
    routes: Vec<(Pattern, Amount)>,
    free: Vec<Pattern>,
    dynamic: Option<PriceFn>,
}

impl std::fmt::Debug for Pricing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pricing")
            .field("default", &self.default)
            .field("routes", &self.routes)
            .field("free", &self.free)
            .field("dynamic", &self.dynamic.is_some())
            .finish()
    }
}

impl Pricing {
    /// Every path costs `price` unless a rule says otherwise.
    pub fn new(price: Amount) -> Self {
        Pricing { default: Some(price), ..Default::default() }
    }

    /// Only the routes given cost anything.
    pub fn routes_only() -> Self {
        Pricing::default()
    }

    /// Paths matching `pattern` cost `price` (the first matching rule wins).
    pub fn route(mut self, pattern: &str, price: Amount) -> Self {
        self.routes.push((Pattern::new(pattern), price));
        self
    }

    /// Paths matching `pattern` are free.
    pub fn free(mut self, pattern: &str) -> Self {
        self.free.push(Pattern::new(pattern));
        self
    }

    /// A price computed from each request; when it answers `None` the static rules apply.
    pub fn dynamic(mut self, f: PriceFn) -> Self {
        self.dynamic = Some(f);
        self
    }

    /// The static rules as a table (the dynamic function is not in it).
    pub fn table(&self) -> PriceTable {
        PriceTable {
            default_sat: self.default.map(Amount::to_sat),
            routes: self
                .routes
                .iter()
                .map(|(p, a)| RoutePrice { pattern: p.0.clone(), price_sat: a.to_sat() })
                .collect(),
            free: self.free.iter().map(|p| p.0.clone()).collect(),
        }
    }

    /// These prices with the static rules of `table` (the dynamic function is kept).
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for a pattern that is not one.
    pub fn with_table(&self, table: &PriceTable) -> Result<Self, Error> {
        let routes = table
            .routes
            .iter()
            .map(|r| Ok((Pattern::parse(&r.pattern)?, Amount::from_sat(r.price_sat))))
            .collect::<Result<_, Error>>()?;
        let free = table.free.iter().map(|f| Pattern::parse(f)).collect::<Result<_, _>>()?;
        Ok(Pricing {
            default: table.default_sat.map(Amount::from_sat),
            routes,
            free,
            dynamic: self.dynamic.clone(),
        })
    }

    /// Whether `path` is on a free rule.
    pub fn is_free(&self, path: &str) -> bool {
        self.free.iter().any(|p| p.matches(path))
    }

    /// The price of a request; `None` or zero means free. The paywall asks with the request's
    /// canonical path ([`crate::path`]); patterns are matched against that.
    pub fn price_of(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
    ) -> Option<Amount> {
        let path = uri.path();
        if self.is_free(path) {
            return None;
        }
        if let Some(p) = self.dynamic.as_ref().and_then(|f| f(method, uri, headers)) {
            return Some(p);
        }
        self.routes.iter().find(|(p, _)| p.matches(path)).map(|(_, a)| *a).or(self.default)
    }
}

/// The static prices as the admin API shows and takes them, and as they are stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PriceTable {
    /// The price of every path no rule names, sat (`None`: free).
    pub default_sat: Option<u64>,
    /// Prices of some paths; the first matching pattern wins.
    pub routes: Vec<RoutePrice>,
    /// Free paths (checked first).
    pub free: Vec<String>,
}

/// One route's price.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutePrice {
    /// `/exact`, `/prefix/*` or `*`.
    pub pattern: String,
    /// Its price, sat.
    pub price_sat: u64,
}

/// The prices in force, shared by the paywall and the admin API, changed at runtime. With a
/// file, every change is written there (atomically, synced) before it takes effect, and a
/// restart reads it back.
#[derive(Clone)]
pub struct PriceBook {
    prices: Arc<std::sync::RwLock<Pricing>>,
    file: Option<Arc<std::path::PathBuf>>,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for PriceBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceBook")
            .field("prices", &self.table())
            .field("file", &self.file)
            .finish()
    }
}

impl PriceBook {
    /// Prices kept in memory only.
    pub fn new(pricing: Pricing) -> Self {
        PriceBook {
            prices: Arc::new(std::sync::RwLock::new(pricing)),
            file: None,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Prices kept in `file`: when it exists its table replaces the static rules of `pricing`
    /// (the prices set at runtime survive a restart); else `pricing` holds until the first
    /// change.
    ///
    /// # Errors
    /// [`MerchantError::Prices`] for a file that cannot be read or is not a price table.
    pub fn stored(pricing: Pricing, file: std::path::PathBuf) -> Result<Self, MerchantError> {
        let pricing = match std::fs::read(&file) {
            Ok(bytes) => {
                let table: PriceTable = serde_json::from_slice(&bytes).map_err(|e| {
                    MerchantError::Prices(format!("{}: not a price table: {e}", file.display()))
                })?;
                pricing
                    .with_table(&table)
                    .map_err(|e| MerchantError::Prices(format!("{}: {e}", file.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => pricing,
            Err(e) => return Err(MerchantError::Prices(format!("{}: {e}", file.display()))),
        };
        Ok(PriceBook { file: Some(Arc::new(file)), ..PriceBook::new(pricing) })
    }

    fn file_name(&self) -> String {
        self.file.as_ref().map_or_else(String::new, |f| f.display().to_string())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pricing> {
        self.prices.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `path` is free now (a free rule).
    pub fn is_free(&self, path: &str) -> bool {
        self.read().is_free(path)
    }

    /// The price of a request now (see [`Pricing::price_of`]).
    pub fn price_of(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
    ) -> Option<Amount> {
        self.read().price_of(method, uri, headers)
    }

    /// The static rules now.
    pub fn table(&self) -> PriceTable {
        self.read().table()
    }

    /// Replaces the static rules with `table`: stored first (when the book has a file), then
    /// in force for the next request.
    ///
    /// # Errors
    /// [`MerchantError::Core`] ([`Error::InvalidPolicy`]) for a bad pattern;
    /// [`MerchantError::Prices`] when the file cannot be written (nothing changes then).
    pub async fn set(&self, table: PriceTable) -> Result<(), MerchantError> {
        let _one_writer = self.writer.lock().await;
        let next = self.read().with_table(&table)?;
        if let Some(file) = &self.file {
            let (file, bytes) =
                (file.clone(), serde_json::to_vec_pretty(&table).unwrap_or_default());
            tokio::task::spawn_blocking(move || write_synced(&file, &bytes))
                .await
                .map_err(|_| MerchantError::TaskFailed)?
                .map_err(|e| MerchantError::Prices(format!("{}: {e}", self.file_name())))?;
        }
        *self.prices.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// Sets the price of `pattern` (a new rule goes first, so it wins over broader ones).
    ///
    /// # Errors
    /// As [`Self::set`].
    pub async fn set_route(&self, pattern: &str, price: Amount) -> Result<(), MerchantError> {
        Pattern::parse(pattern)?;
        let mut t = self.table();
        match t.routes.iter_mut().find(|r| r.pattern == pattern) {
            Some(r) => r.price_sat = price.to_sat(),
            None => t
                .routes
                .insert(0, RoutePrice { pattern: pattern.into(), price_sat: price.to_sat() }),
        }
        self.set(t).await
    }

    /// Removes the rule of `pattern`; whether there was one.
    ///
    /// # Errors
    /// As [`Self::set`].
    pub async fn remove_route(&self, pattern: &str) -> Result<bool, MerchantError> {
        let mut t = self.table();
        let before = t.routes.len();
        t.routes.retain(|r| r.pattern != pattern);
        if t.routes.len() == before {
            return Ok(false);
        }
        self.set(t).await.map(|()| true)
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary
/// file beside it, synced, renamed over it, the directory synced.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An external price service: for each request not on a free path, the paywall `POST`s
/// `{"method", "path", "query"}` to `url` and takes `{"price_sat": N}` (or `null`: the static
/// rules decide). A hook that fails or does not answer within `timeout` makes the request a
/// `503` (nothing served, nothing charged): a price is never guessed.
#[derive(Debug, Clone)]
pub struct PriceHook {
    url: String,
    client: reqwest::Client,
}

impl PriceHook {
    /// A hook at `url` (`http://…` or `https://…`) answering within `timeout`.
    ///
    /// # Errors
    /// [`MerchantError::Prices`] for a URL that is not `http(s)://`.
    pub fn new(
        url: impl Into<String>,
        timeout: std::time::Duration,
    ) -> Result<Self, MerchantError> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(MerchantError::Prices(format!("price hook {url:?}: not an http(s) URL")));
        }
        let client = paychan_transport::tls::http_client_builder(None)
            .unwrap_or_else(|_| reqwest::Client::builder())
            .timeout(timeout)
            .build()
            .map_err(|e| MerchantError::Prices(format!("price hook: {e}")))?;
        Ok(PriceHook { url, client })
    }

    /// The hook's price of a request: `Ok(None)` when it leaves it to the static rules.
    async fn price(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
    ) -> Result<Option<Amount>, String> {
        let body = json!({"method": method.as_str(), "path": uri.path(), "query": uri.query().unwrap_or("")});
        let r = self.client.post(&self.url).json(&body).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status()));
        }
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        match &v["price_sat"] {
            serde_json::Value::Null => Ok(None),
            p => p
                .as_u64()
                .map(|n| Some(Amount::from_sat(n)))
                .ok_or_else(|| format!("price_sat is not a count of satoshis: {p}")),
        }
    }
}

/// Rate limits and a free quota of the paywall (none by default). A limited request is
/// answered `429 Too Many Requests` with `Retry-After`, and nothing is charged.
///
/// The per-address limits read the connection's address from the request's
/// `ConnectInfo<SocketAddr>` extension, which paychan's HTTP server sets; an app served without
/// it (plain `axum::serve` without `into_make_service_with_connect_info`) is limited per channel
/// only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Priced requests per client address (behind a proxy, the proxy's address).
    pub per_ip: Option<Rate>,
    /// Paid requests per channel.
    pub per_channel: Option<Rate>,
    /// Requests per client address served free of charge (without a payment) before a price
    /// is asked.
    pub free_per_ip: Option<Rate>,
}

/// Keys each limiter remembers at most.
const LIMITER_KEYS: usize = 100_000;

struct Limiters {
    origin: std::time::Instant,
    per_ip: Option<std::sync::Mutex<Limiter<std::net::IpAddr>>>,
    per_channel: Option<std::sync::Mutex<Limiter<OutPoint>>>,
    free_per_ip: Option<std::sync::Mutex<Limiter<std::net::IpAddr>>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    r: Option<Rate>,
) -> Option<std::sync::Mutex<Limiter<K>>> {
    r.map(|r| std::sync::Mutex::new(Limiter::new(r, LIMITER_KEYS)))
}

impl Limiters {
    fn new(l: RateLimits) -> Self {
        Limiters {
            origin: std::time::Instant::now(),
            per_ip: limiter(l.per_ip),
            per_channel: limiter(l.per_channel),
            free_per_ip: limiter(l.free_per_ip),
        }
    }

    /// Takes a token of `limiter` for `key`: `Err(ms)` to wait when there is none.
    fn take<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<std::sync::Mutex<Limiter<K>>>,
        key: &K,
    ) -> Result<(), u64> {
        let Some(l) = limiter else { return Ok(()) };
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        l.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(key, now)
    }

    /// Returns a token of `limiter` taken for `key` by a request that was not served.
    fn give_back<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<std::sync::Mutex<Limiter<K>>>,
        key: &K,
    ) {
        if let Some(l) = limiter {
            l.lock().unwrap_or_else(std::sync::PoisonError::into_inner).give_back(key);
        }
    }
}

/// The paywall's settings.
#[derive(Debug, Clone)]
pub struct PaywallConfig {
    /// The prices (shared with the admin API, which changes them at runtime).
    pub prices: PriceBook,
    /// Rate limits and a free quota.
    pub limits: RateLimits,
    /// An external price service, asked before the static rules.
    pub price_hook: Option<PriceHook>,
    /// Where customers open channels: the channel server's address, `nodeid@host:port` (the
    /// node id is the requirement's `payTo`). A host of `0.0.0.0` or `[::]` is replaced by the
    /// host the request was sent to.
    pub channel_peer: String,
    /// Path (on the request's host) or absolute URL of the 21 REST endpoint, named in
    /// `Bitcoin-Payment-Channel-Server`; `None` when it is not served.
    pub two1_endpoint: Option<String>,
    /// The chain the channels are on.
    pub network: Network,
    /// The `description` of the 402's resource.
    pub description: String,
    /// The public base URL of the paywall (`https://api.example.com`), when it sits behind a
    /// proxy or load balancer: resource URLs are built on it. `None`: the request's `Host` on
    /// `http`, or on `https` when [`Self::tls`].
    pub public_url: Option<String>,
    /// Whether the paywall's own listener speaks TLS.
    pub tls: bool,
}

impl PaywallConfig {
    /// Settings with `pricing`, channels opened at `channel_peer`, the 21 endpoint at
    /// `/payment`, on regtest.
    pub fn new(pricing: Pricing, channel_peer: impl Into<String>) -> Self {
        PaywallConfig {
            prices: PriceBook::new(pricing),
            limits: RateLimits::default(),
            price_hook: None,
            channel_peer: channel_peer.into(),
            two1_endpoint: Some("/payment".into()),
            network: Network::Regtest,
            description: String::new(),
            public_url: None,
            tls: false,
        }
    }
}

struct Paywall {
    server: Arc<ChannelServer>,
    config: PaywallConfig,
    network: String,
    asset: String,
    limits: Limits,
    rate: Limiters,
}

/// The paywall as a tower [`Layer`]: `Router::new().route(…).layer(PaywallLayer::new(…))`.
#[derive(Clone)]
pub struct PaywallLayer {
    paywall: Arc<Paywall>,
}

impl std::fmt::Debug for PaywallLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallLayer").field("config", &self.paywall.config).finish()
    }
}

impl PaywallLayer {
    /// A paywall charging through `server`.
    pub fn new(server: Arc<ChannelServer>, config: PaywallConfig) -> Self {
        let limits = Limits::from(server.policy());
        let network = caip2(config.network);
        let asset = asset(config.network);
        let rate = Limiters::new(config.limits);
        PaywallLayer { paywall: Arc::new(Paywall { server, config, network, asset, limits, rate }) }
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService { paywall: self.paywall.clone(), inner }
    }
}

/// The service [`PaywallLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct PaywallService<S> {
    paywall: Arc<Paywall>,
    inner: S,
}

impl<S> std::fmt::Debug for PaywallService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallService").finish_non_exhaustive()
    }
}

impl<S> Service<Request<Body>> for PaywallService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is readied per request (on a clone) in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        Box::pin(async move { Ok(paywall.handle(req, inner).await) })
    }
}

/// How a request paid.
enum Paid {
    Payment { channel: OutPoint, total: Amount },
    Token { channel: OutPoint },
}

impl Paywall {
    async fn handle<S>(&self, req: Request<Body>, inner: S) -> Response
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        // Every decision below, and the inner service, sees the one canonical path.
        let mut req = req;
        match crate::path::canonical_uri(req.uri()) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return bad_path(&e),
        }
        let hooked = match &self.config.price_hook {
            Some(hook) if !self.config.prices.is_free(req.uri().path()) => {
                match hook.price(req.method(), req.uri()).await {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "the price hook failed: request not served");
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({"error": "the price of this request is unavailable: try again later"})),
                        )
                            .into_response();
                    }
                }
            }
            _ => None,
        };
        let price =
            hooked.or_else(|| self.config.prices.price_of(req.method(), req.uri(), req.headers()));
        let price = match price {
            Some(p) if p > Amount::ZERO => p,
            _ => return call(inner, req).await,
        };
        let ip = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = ip {
            if let Err(wait) = self.rate.take(&self.rate.per_ip, &ip) {
                return too_many(wait, "requests from this address");
            }
            let unpaid = !req.headers().contains_key(PAYMENT_SIGNATURE)
                && !req.headers().contains_key(TOKEN_HEADER);
            if unpaid
                && self.rate.free_per_ip.is_some()
                && self.rate.take(&self.rate.free_per_ip, &ip).is_ok()
            {
                // Within the free quota: served, nothing asked.
                let mut resp = call(inner, req).await;
                resp.headers_mut().insert("x-paychan-free", HeaderValue::from_static("1"));
                return resp;
            }
        }
        let headers = req.headers();
        let (paid, redeemed) = if let Some(h) = headers.get(PAYMENT_SIGNATURE) {
            let offered = self.requirement(&req, price);
            let payment = decode_header::<PaymentPayload>(h.as_bytes()).and_then(|p| {
                let decoded = p.decode()?;
                offered.check_accepted(&p.accepted)?;
                Ok(decoded)
            });
            let (channel, total, signature) = match payment {
                Ok(p) => p,
                Err(e) => return self.refused(&req, price, &e.into(), Op::Redeem),
            };
            if let Err(wait) = self.rate.take(&self.rate.per_channel, &channel) {
                return too_many(wait, "paid requests on this channel");
            }
            match self.server.redeem(channel, total, &signature, price).await {
                Ok(r) => (Paid::Payment { channel, total }, r),
                Err(e) => {
                    // A refused payment does not count against the channel's rate.
                    self.rate.give_back(&self.rate.per_channel, &channel);
                    return self.refused(&req, price, &e, Op::Redeem);
                }
            }
        } else if let Some(h) = headers.get(TOKEN_HEADER) {
            let Some(token) = h.to_str().ok().and_then(|t| t.trim().parse::<Txid>().ok()) else {
                return self.refused(&req, price, &Error::UnknownToken.into(), Op::RedeemToken);
            };
            match self.server.redeem_token(&token, price).await {
                Ok((channel, r)) => (Paid::Token { channel }, r),
                Err(e) => return self.refused(&req, price, &e, Op::RedeemToken),
            }
        } else {
            return self.payment_required(&req, price, None, StatusCode::PAYMENT_REQUIRED);
        };
        let (channel, total) = match paid {
            Paid::Payment { channel, total } => (channel, Some(total)),
            Paid::Token { channel } => (channel, None),
        };
        req.headers_mut().remove(PAYMENT_SIGNATURE);
        req.headers_mut().remove(TOKEN_HEADER);
        let mut resp = call(inner, req).await;
        let mut receipt = PaymentResponse::charged(&self.network, channel, price, &redeemed);
        if resp.status().is_server_error() {
            // A failed request is not paid for: reverse the charge before answering.
            match self.server.refund_request(channel, total, price).await {
                Ok(credit) => {
                    debug!(%channel, status = %resp.status(), "request failed upstream; charge reversed");
                    receipt.success = false;
                    receipt.amount = Some("0".into());
                    receipt.error_reason = Some(REVERSED.into());
                    receipt.error_message =
                        Some(format!("the request failed ({}): not charged", resp.status()));
                    if let Some(x) = receipt.extra.as_mut() {
                        x.credit = credit.to_sat().to_string();
                    }
                }
                Err(e) => {
                    warn!(%channel, error = %e, "reversing the charge of a failed request failed");
                }
            }
        }
        if let Some(v) = header_value(&receipt) {
            resp.headers_mut().insert(HeaderName::from_static(PAYMENT_RESPONSE), v);
        }
        resp
    }

    /// A payment that was refused: a new 402 saying why (or 400 for an unreadable header, or
    /// 503 for the merchant's own failure).
    /// The answer to a paid request the merchant did not take (the one mapping,
    /// [`MerchantError::answer`]): two1's own text where its 402 flow has one, a fresh 402
    /// (or a 400 for a header that does not decode) with the reason, or a 503 for the
    /// merchant's own failure.
    fn refused(&self, req: &Request<Body>, price: Amount, e: &MerchantError, op: Op) -> Response {
        let a = e.answer(op);
        if let Some(text) = a.two1_text {
            return (a.two1_status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], text)
                .into_response();
        }
        if !a.refused {
            return unavailable(e);
        }
        self.payment_required(req, price, Some((a.message, a.code)), a.paywall_status)
    }

    fn requirement(&self, req: &Request<Body>, price: Amount) -> Requirement {
        let host = request_host(req);
        let peer = replace_wildcard_host(&self.config.channel_peer, host.as_deref());
        let node_id = peer.split_once('@').map_or("", |(id, _)| id).to_string();
        let two1 = self.config.two1_endpoint.as_ref().map(|e| {
            if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("{}{e}", self.base_url(host.as_deref()))
            }
        });
        Requirement {
            scheme: SCHEME.into(),
            network: self.network.clone(),
            amount: price.to_sat().to_string(),
            asset: self.asset.clone(),
            pay_to: node_id,
            max_timeout_seconds: max_timeout_seconds(&self.limits),
            extra: PaychanExtra { peer, two1_server: two1, policy: self.limits },
        }
    }

    /// `scheme://host` of the paywall as its clients reach it.
    fn base_url(&self, host: Option<&str>) -> String {
        if let Some(u) = &self.config.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let scheme = if self.config.tls { "https" } else { "http" };
        format!("{scheme}://{}", host.unwrap_or("127.0.0.1"))
    }

    fn payment_required(
        &self,
        req: &Request<Body>,
        price: Amount,
        error: Option<(String, u32)>,
        status: StatusCode,
    ) -> Response {
        let requirement = self.requirement(req, price);
        let host = request_host(req);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let body = PaymentRequired {
            x402_version: X402_VERSION,
            error: Some(match &error {
                Some((message, _)) => message.clone(),
                None => "PAYMENT-SIGNATURE header is required".to_string(),
            }),
            resource: Resource {
                url: format!("{}{path}", self.base_url(host.as_deref())),
                description: (!self.config.description.is_empty())
                    .then(|| self.config.description.clone()),
                mime_type: None,
            },
            accepts: vec![requirement.clone()],
            extensions: None,
        };
        let mut resp = (status, axum::Json(&body)).into_response();
        let h = resp.headers_mut();
        if let Some(v) = header_value(&body) {
            h.insert(HeaderName::from_static(PAYMENT_REQUIRED), v);
        }
        // A refused payment also says why in x402's settlement-response shape.
        if let Some((message, code)) = error {
            let refusal =
                PaymentResponse::refused(&self.network, reason::of_code(code), message, None);
            if let Some(v) = header_value(&refusal) {
                h.insert(HeaderName::from_static(PAYMENT_RESPONSE), v);
            }
        }
        h.insert(HeaderName::from_static("price"), HeaderValue::from(price.to_sat()));
        if let Some(v) = requirement.extra.two1_server.and_then(|u| HeaderValue::from_str(&u).ok())
        {
            h.insert(HeaderName::from_static("bitcoin-payment-channel-server"), v);
        }
        resp
    }
}

async fn call<S>(inner: S, req: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match inner.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds); nothing was charged.
fn too_many(wait_ms: u64, what: &str) -> Response {
    let secs = retry_after_secs(wait_ms);
    debug!(what, secs, "rate limited");
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "error": format!("too many {what}: retry in {secs} s (nothing was charged)"),
            "retry_after_secs": secs,
        })),
    )
        .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// A paywall header's value (base64 is always a valid header value).
fn header_value<T: serde::Serialize>(v: &T) -> Option<HeaderValue> {
    encode_header(v).ok().and_then(|s| HeaderValue::from_str(&s).ok())
}

/// A request whose path has no canonical form (see [`crate::path`]).
pub(crate) fn bad_path(e: &crate::path::PathError) -> Response {
    debug!(error = %e, "request refused: no canonical path");
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": format!("bad request path: {e}")})))
        .into_response()
}

fn unavailable(e: &MerchantError) -> Response {
    warn!(error = %e, "paid request failed on the merchant's side");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "merchant failure: try again later"})),
    )
        .into_response()
}

/// The `host[:port]` the request was sent to.
fn request_host(req: &Request<Body>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// `0.0.0.0:9735` seen through `example.org:8080` is `example.org:9735`.
fn replace_wildcard_host(peer: &str, request_host: Option<&str>) -> String {
    let Some((host, port)) = peer.rsplit_once(':') else { return peer.to_string() };
    if host != "0.0.0.0" && host != "[::]" {
        return peer.to_string();
    }
    let Some(rh) = request_host else { return peer.to_string() };
    let name = if rh.starts_with('[') {
        rh.split_once(']').map_or(rh.to_string(), |(h, _)| format!("{h}]"))
    } else {
        rh.rsplit_once(':').map_or(rh, |(h, _)| h).to_string()
    };
    format!("{name}:{port}")
}

/// A service forwarding every request to `upstream` (`http://host:port` or `https://…`, whose
/// certificate must chain to the system's roots; optionally with a base path), streaming both
/// ways ([`crate::proxy`]). Put [`PaywallLayer`] on it to charge for the upstream's API. An
/// unreachable upstream is a `502`, a slow one (no answer within `timeout`) a `504`; both
/// reverse the charge.
pub fn reverse_proxy(upstream: String, timeout: std::time::Duration) -> axum::Router {
    let http = paychan_transport::tls::http_client_builder(None)
        .unwrap_or_else(|_| reqwest::Client::builder());
    reverse_proxy_with(upstream, timeout, http)
}

/// [`reverse_proxy`] with the HTTP client `http` (for example one that also trusts a private
/// CA for an `https://` upstream: `paychan_transport::tls::http_client_builder`).
pub fn reverse_proxy_with(
    upstream: String,
    timeout: std::time::Duration,
    http: reqwest::ClientBuilder,
) -> axum::Router {
    let all = crate::proxy::Upstream {
        host: None,
        prefix: "/".into(),
        base: upstream.trim_end_matches('/').to_string(),
    };
    crate::proxy::router(crate::proxy::Upstreams::new(vec![all]), timeout, http, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_prices() {
        let p = Pricing::new(Amount::from_sat(10))
            .route("/api/*", Amount::from_sat(25))
            .route("/cheap", Amount::from_sat(1))
            .free("/health");
        let price = |path: &str| {
            let uri: axum::http::Uri = path.parse().unwrap_or_default();
            p.price_of(&Method::GET, &uri, &HeaderMap::new())
        };
        assert_eq!(price("/api/x?y=1"), Some(Amount::from_sat(25)));
        assert_eq!(price("/cheap"), Some(Amount::from_sat(1)));
        assert_eq!(price("/cheap/er"), Some(Amount::from_sat(10)));
        assert_eq!(price("/health"), None);
        let dynamic = p.dynamic(Arc::new(|m: &Method, _: &axum::http::Uri, _: &HeaderMap| {
            (m == Method::POST).then_some(Amount::from_sat(99))
        }));
        let uri: axum::http::Uri = "/api/x".parse().unwrap_or_default();
        assert_eq!(
            dynamic.price_of(&Method::POST, &uri, &HeaderMap::new()),
            Some(Amount::from_sat(99))
        );
        assert_eq!(
            dynamic.price_of(&Method::GET, &uri, &HeaderMap::new()),
            Some(Amount::from_sat(25))
        );
    }

    #[test]
    fn route_patterns_from_input() {
        for good in ["*", "/", "/api", "/api/*", "/é/*"] {
            assert!(Pattern::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "api", "/a*b", "/**", "**", "/é*x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_hosts_take_the_request_host() {
        assert_eq!(
            replace_wildcard_host("0.0.0.0:9735", Some("shop.example:8080")),
            "shop.example:9735"
        );
        assert_eq!(replace_wildcard_host("[::]:9735", Some("[::1]:80")), "[::1]:9735");
        assert_eq!(replace_wildcard_host("10.0.0.1:9735", Some("x:1")), "10.0.0.1:9735");
        assert_eq!(replace_wildcard_host("0.0.0.0:9735", None), "0.0.0.0:9735");
    }
}
