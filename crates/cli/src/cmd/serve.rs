//! `paychan serve`: the merchant daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use paychan_core::bitcoin::Amount;
use paychan_core::network::NetworkParams;
use paychan_core::policy::Policy;
use paychan_core::ratelimit::Rate;
use paychan_merchant::http::MetricsAccess;
use paychan_merchant::listen::Limits;
use paychan_merchant::paywall::{
    PaywallConfig, PaywallLayer, PriceBook, PriceHook, Pricing, RateLimits,
};
use paychan_merchant::{tcp, ChannelServer, ServerConfig};
use paychan_store::{ChannelStore, PostgresStore, SqliteStore};
use paychan_wallet::{KeyChain, Wallet};
use serde::Deserialize;
use serde_json::json;

use super::common::{parse_amount, runtime, Common};
use crate::error::fail;
use crate::CliError;

/// Arguments of `paychan serve`; each may also be set in the `--config` TOML file (same names,
/// with underscores). Flags win over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of these options.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the channel protocol's TCP listener (loopback by default).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the JSON HTTP API (loopback by default).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The channel port as customers reach it, `host:port`, when that is not `--listen` (a
    /// load balancer's or a NAT's address): the `address` printed at start, the 402s and the
    /// x402 facilitator name it.
    #[arg(long, value_name = "HOST:PORT")]
    public_address: Option<String>,
    /// `sqlite` (default: <home>/merchant.db), `sqlite:PATH`, or a `postgres://` URL.
    #[arg(long)]
    store: Option<String>,
    /// Accept payments before the funding confirms (two1's zeroconf).
    #[arg(long)]
    zero_conf: Option<bool>,
    /// Confirmations of the funding before payments are accepted.
    #[arg(long)]
    min_confirmations: Option<u32>,
    /// Seconds between chain checks (confirmations, expiry settlements).
    #[arg(long)]
    tick_secs: Option<u64>,
    /// The admin API's bearer token (default: <home>/admin.token, created 0600 if missing).
    #[arg(long, env = "PAYCHAN_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Protect this API (`http://host:port`): every path the merchant's own API does not use is
    /// forwarded to it, paid per request, on the HTTP listener. Repeatable with a route:
    /// `/files=http://files:9000` (a path prefix) or `cdn.example/=http://cdn:9000` (a host and
    /// prefix); the most specific route wins.
    #[arg(long)]
    upstream: Vec<String>,
    /// The price of a request to the upstream (with --upstream; default 10sat).
    #[arg(long, value_parser = parse_amount)]
    price: Option<Amount>,
    /// A price for some paths: `/api/*=25sat` (`*` at the end matches any rest); repeatable,
    /// the first match wins.
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<(String, Amount)>,
    /// A free path (`/health`, `/public/*`); repeatable.
    #[arg(long = "free")]
    free: Vec<String>,
    /// Seconds to wait for the upstream's answer (then 504, not charged).
    #[arg(long)]
    upstream_timeout_secs: Option<u64>,
    /// At most this many priced requests per client address, like `10/s` or `600/m` (then
    /// `429` with `Retry-After`, nothing charged).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate_limit_ip: Option<Rate>,
    /// At most this many paid requests per channel, like `100/s`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate_limit_channel: Option<Rate>,
    /// Requests each client address gets free (without paying) before a price is asked, like
    /// `100/d`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    free_quota: Option<Rate>,
    /// Ask this price service for each request's price first (`POST {method, path, query}` →
    /// `{price_sat}` or `{price_sat: null}` for the static rules); when it fails the request
    /// is a 503, never charged at a guessed price.
    #[arg(long, value_name = "URL")]
    price_hook: Option<String>,
    /// The paywall's public base URL (`https://api.example.com`) when a proxy or load balancer
    /// sits in front: the 402's resource URLs are built on it (default: the request's `Host`,
    /// on `https` when `--tls-cert` is given).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Trust the CA certificates in this PEM file for an `https://` upstream, besides the
    /// system's.
    #[arg(long, value_name = "PEM")]
    upstream_cacert: Option<PathBuf>,
    /// Serve the HTTP listener (API, 21 endpoints, paywall) over TLS with this PEM certificate
    /// chain (with `--tls-key`).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections open at once, per listener (default 1024); keep it below `ulimit -n`.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Idle channels kept in memory (default 16384, about 26 MiB); the others are loaded from
    /// the store when used. Channels in use or with chain work are always kept.
    #[arg(long)]
    max_live_channels: Option<usize>,
    /// This instance's name among several `serve` instances on one PostgreSQL (ADR 0030; shown
    /// in `/admin/summary`); default: the host name and an id kept in the wallet's directory.
    #[arg(long)]
    instance: Option<String>,
    /// Seconds the settlement lease lasts after each renewal (default 15): with several
    /// instances on one database, a dead leader's settlements are taken over within this plus
    /// a third of it. Keep it above three `--tick-secs`.
    #[arg(long)]
    lease_ttl_secs: Option<u64>,
    /// Seconds a new connection has for its `Hello` (TCP) or its request headers (HTTP)
    /// (default 10).
    #[arg(long)]
    handshake_timeout_secs: Option<u64>,
    /// Seconds of silence after which a connection is closed (default 300).
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Who may read /metrics: `token` (the admin token), `loopback` (the token, or any
    /// client on this machine; the default) or `public`.
    #[arg(long)]
    metrics: Option<MetricsAccess>,
}

/// A `--public-address`: `host:port` with a port, no scheme, no node id.
fn check_public_address(p: &str) -> Result<(), CliError> {
    let usage = || {
        CliError::Usage(format!(
            "--public-address {p:?}: give host:port as customers reach the channel port, like lb.example.com:9735"
        ))
    };
    if p.contains("://") || p.contains('@') || p.contains(char::is_whitespace) {
        return Err(usage());
    }
    let (host, port) = p.rsplit_once(':').ok_or_else(usage)?;
    if host.is_empty() || !matches!(port.parse::<u16>(), Ok(n) if n > 0) {
        return Err(usage());
    }
    Ok(())
}

/// `N/s`, `N/m`, `N/h`, `N/d`.
fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s).map_err(|e| e.to_string())
}

/// `PATTERN=AMOUNT`.
fn parse_route(s: &str) -> Result<(String, Amount), String> {
    let (pattern, price) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not PATTERN=PRICE, like /api/*=25sat"))?;
    if !pattern.starts_with('/') && pattern != "*" {
        return Err(format!("{pattern:?}: a route pattern starts with /"));
    }
    Ok((pattern.to_string(), parse_amount(price)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    public_address: Option<String>,
    store: Option<String>,
    zero_conf: Option<bool>,
    min_confirmations: Option<u32>,
    tick_secs: Option<u64>,
    upstream: Option<String>,
    #[serde(default)]
    upstreams: Vec<String>,
    price: Option<String>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    free: Vec<String>,
    upstream_timeout_secs: Option<u64>,
    public_url: Option<String>,
    rate_limit_ip: Option<String>,
    rate_limit_channel: Option<String>,
    free_quota: Option<String>,
    price_hook: Option<String>,
    upstream_cacert: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_live_channels: Option<usize>,
    instance: Option<String>,
    lease_ttl_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    metrics: Option<String>,
    /// The network (as `--network`; the flag wins).
    network: Option<String>,
    /// Confirms mainnet (as `--i-understand-mainnet`).
    i_understand_mainnet: Option<bool>,
}

/// Runs the merchant until Ctrl-C or SIGTERM.
pub fn run(a: ServeArgs, common: &Common) -> Result<ExitCode, CliError> {
    let file: ServeFile = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            toml::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        None => ServeFile::default(),
    };
    let listen =
        a.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9735)));
    let http_listen =
        a.http.or(file.http).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9736)));
    let public_address = a.public_address.or(file.public_address);
    if let Some(p) = &public_address {
        check_public_address(p)?;
    }
    let store_spec = a.store.or(file.store).unwrap_or_else(|| "sqlite".into());
    let common = &match (&common.network, &file.network) {
        (None, Some(name)) => Common {
            network: Some(NetworkParams::parse(name).map_err(|e| CliError::Usage(e.to_string()))?),
            ..common.clone()
        },
        _ => common.clone(),
    };
    let mainnet_confirmed = file.i_understand_mainnet.unwrap_or(false);
    let n = common.network()?;
    common.check_mainnet(&n, mainnet_confirmed)?;
    // The network's defaults; flags and the file win.
    let mut policy = Policy {
        min_confirmations: n.min_confirmations,
        max_deposit: Policy::default().max_deposit.min(n.max_deposit),
        ..Policy::default()
    };
    if let Some(z) = a.zero_conf.or(file.zero_conf) {
        policy.zero_conf = z;
    }
    if let Some(n) = a.min_confirmations.or(file.min_confirmations) {
        policy.min_confirmations = n;
    }
    policy.validate_for(&n)?;
    let tick = Duration::from_secs(a.tick_secs.or(file.tick_secs).unwrap_or(2).max(1));
    let admin_token = a.admin_token;
    let upstream_args: Vec<String> = if a.upstream.is_empty() {
        file.upstream.into_iter().chain(file.upstreams).collect()
    } else {
        a.upstream
    };
    let upstreams = upstream_args
        .iter()
        .map(|u| paychan_merchant::proxy::Upstream::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let upstream = (!upstreams.is_empty()).then(|| upstream_args.join(" "));
    let price = match (a.price, file.price) {
        (Some(p), _) => p,
        (None, Some(p)) => parse_amount(&p).map_err(fail)?,
        (None, None) => Amount::from_sat(10),
    };
    let mut routes = a.routes;
    for r in &file.routes {
        routes.push(parse_route(r).map_err(fail)?);
    }
    let mut pricing = Pricing::new(price);
    for (pattern, p) in &routes {
        pricing = pricing.route(pattern, *p);
    }
    for f in a.free.iter().chain(&file.free) {
        pricing = pricing.free(f);
    }
    let upstream_timeout =
        Duration::from_secs(a.upstream_timeout_secs.or(file.upstream_timeout_secs).unwrap_or(30));
    // TLS for the HTTP listener: both files or neither; checked before anything starts.
    let tls = match (a.tls_cert.or(file.tls_cert), a.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(paychan_transport::tls::server_config(&cert, &key)?),
        (None, None) => None,
        _ => return Err(fail("TLS needs both a certificate (tls_cert) and its key (tls_key)")),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = a.public_url.or(file.public_url);
    let rate_of = |flag: Option<Rate>, key: &Option<String>| -> Result<Option<Rate>, CliError> {
        match (flag, key) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(k)) => Rate::parse(k).map(Some).map_err(|e| CliError::Usage(e.to_string())),
            (None, None) => Ok(None),
        }
    };
    let price_hook = a
        .price_hook
        .or(file.price_hook)
        .map(|u| PriceHook::new(u, Duration::from_secs(2)))
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let rate_limits = RateLimits {
        per_ip: rate_of(a.rate_limit_ip, &file.rate_limit_ip)?,
        per_channel: rate_of(a.rate_limit_channel, &file.rate_limit_channel)?,
        free_per_ip: rate_of(a.free_quota, &file.free_quota)?,
    };
    if let Some(u) = &public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--public-url {u:?}: give the scheme, like https://api.example.com"
            )));
        }
    }
    let upstream_cacert = a.upstream_cacert.or(file.upstream_cacert);
    let upstream_http = paychan_transport::tls::http_client_builder(upstream_cacert.as_deref())?;
    // The trust of WebSocket upgrades to https:// upstreams (the same as the HTTP client's).
    let upstream_tls = paychan_transport::tls::client_config(upstream_cacert.as_deref())
        .ok()
        .map(std::sync::Arc::new);
    let metrics_access = match (a.metrics, &file.metrics) {
        (Some(m), _) => m,
        (None, Some(m)) => m.parse().map_err(fail)?,
        (None, None) => MetricsAccess::default(),
    };
    let defaults = Limits::default();
    let limits = Limits {
        max_connections: a
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections)
            .max(1),
        handshake_timeout: a
            .handshake_timeout_secs
            .or(file.handshake_timeout_secs)
            .map_or(defaults.handshake_timeout, |s| Duration::from_secs(s.max(1))),
        idle_timeout: a
            .idle_timeout_secs
            .or(file.idle_timeout_secs)
            .map_or(defaults.idle_timeout, |s| Duration::from_secs(s.max(1))),
    };
    let max_live = a
        .max_live_channels
        .or(file.max_live_channels)
        .unwrap_or(paychan_merchant::DEFAULT_MAX_LIVE_CHANNELS)
        .max(1);
    let tuning = Tuning {
        max_live,
        instance: a.instance.clone().or(file.instance.clone()),
        lease_ttl: a
            .lease_ttl_secs
            .or(file.lease_ttl_secs)
            .map_or(paychan_merchant::DEFAULT_LEASE_TTL, |s| Duration::from_secs(s.max(1))),
    };
    let home = common.home();
    let rt = runtime()?;
    rt.block_on(async move {
        // Both ports first: a busy port fails before anything is created on disk.
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| fail(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        let http_listener = tokio::net::TcpListener::bind(http_listen)
            .await
            .map_err(|e| fail(format!("cannot listen on {http_listen}: {e}")))?;
        let http_addr = http_listener.local_addr()?;
        let (server, payout, loaded) =
            merchant(common, mainnet_confirmed, &store_spec, policy, tuning).await?;
        // The address customers dial: the node id (BOLT 8) at the listener, or at the public
        // address in front of it.
        let node_id = server.node_id();
        let address = match &public_address {
            Some(p) => format!("{node_id}@{p}"),
            None => format!("{node_id}@{addr}"),
        };
        common.print(
            &json!({"listen": addr.to_string(), "node_id": node_id.to_string(), "address": address, "http": http_addr.to_string(), "tls": scheme == "https", "payout": payout.to_string(), "channels": loaded}),
            &format!(
                "paychan serve: channel protocol (BOLT 8) at {address}, JSON API on {scheme}://{http_addr}, {loaded} live channels in the store (loaded when used), settlements pay fresh addresses of the wallet (first {payout})"
            ),
        )?;
        // Where the running merchant can be reached: `paychan payment submit` goes through
        // its API instead of writing the store behind its back. Removed at a clean exit.
        let running = RunningFile::write(&home, addr, http_addr, scheme)?;
        let token_path = home.join("admin.token");
        let token = match admin_token {
            Some(t) => t,
            None => read_or_make_token(&token_path)?,
        };
        // The prices: as given, or as last set through the admin API (stored in the home).
        let prices = PriceBook::stored(pricing.clone(), home.join("prices.json"))?;
        let fallback = upstream.as_ref().map(|_| {
            let mut config = PaywallConfig::new(pricing.clone(), address.clone());
            config.prices = prices.clone();
            config.limits = rate_limits;
            config.price_hook = price_hook.clone();
            config.network = n.network;
            config.tls = scheme == "https";
            config.public_url = public_url.clone();
            paychan_merchant::proxy::router(
                paychan_merchant::proxy::Upstreams::new(upstreams.clone()),
                upstream_timeout,
                upstream_http,
                upstream_tls.clone(),
            )
            .layer(PaywallLayer::new(server.clone(), config))
        });
        if let Some(u) = &upstream {
            tracing::info!(upstream = %u, ?prices, "paywall: forwarding paid requests to the upstream");
        }
        // An x402 facilitator for resource servers in any language, behind the admin token.
        let facilitator = paychan_merchant::facilitator::router(
            server.clone(),
            paychan_merchant::facilitator::FacilitatorConfig {
                network: n.network,
                peer: address.clone(),
                token: token.clone(),
            },
        );
        let admin = paychan_merchant::http::AdminConfig {
            token,
            metrics: metrics_access,
            prices: upstream.is_some().then(|| prices.clone()),
        };
        let app = paychan_merchant::http::app(server.clone(), Some(admin), fallback).merge(facilitator);
        let http_task = tokio::spawn(paychan_merchant::http::serve_app_tls(
            app,
            http_listener,
            limits.clone(),
            tls,
            shutdown_signal(),
        ));
        let ticker = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(tick);
                let mut failures: u32 = 0;
                loop {
                    t.tick().await;
                    match server.tick().await {
                        // The first failure, then the 2nd, 4th, 8th, ...: no log flood while
                        // the node is away (each channel's settlement backs off on its own).
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            if failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures, "chain check failed; retrying");
                            }
                        }
                        Ok(()) if failures > 0 => {
                            tracing::info!(failures, "chain check works again");
                            failures = 0;
                        }
                        Ok(()) => {}
                    }
                }
            })
        };
        tcp::serve_limited(server, listener, limits, shutdown_signal()).await?;
        ticker.abort();
        let _ = http_task.await;
        drop(running);
        tracing::info!("shutting down");
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `<home>/serve.json`: the running merchant's listeners, removed when dropped.
struct RunningFile(PathBuf);

/// The file's name in the home directory.
pub const RUNNING_FILE: &str = "serve.json";

impl RunningFile {
    fn write(
        home: &std::path::Path,
        listen: SocketAddr,
        http: SocketAddr,
        scheme: &str,
    ) -> Result<Self, CliError> {
        std::fs::create_dir_all(home)?;
        let path = home.join(RUNNING_FILE);
        let body = json!({"listen": listen.to_string(), "http": http.to_string(), "scheme": scheme, "pid": std::process::id()});
        std::fs::write(&path, body.to_string())
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        Ok(RunningFile(path))
    }
}

impl Drop for RunningFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The base URL (`http://…` or `https://…`) of the merchant `serve` runs for `home`, if its
/// file is there.
pub fn running_url(home: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(home.join(RUNNING_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let scheme = v["scheme"].as_str().unwrap_or("http");
    Some(format!("{scheme}://{}", v["http"].as_str()?))
}

/// The HTTP address of the merchant `serve` runs for `home`, if its file is there (it may be
/// stale after a crash: callers fall back when nothing answers there).
pub fn running_http(home: &std::path::Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(home.join(RUNNING_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["http"].as_str()?.parse().ok()
}

/// Reads the admin token, or writes a fresh random one (mode 0600).
pub fn read_or_make_token(path: &std::path::Path) -> Result<String, CliError> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| fail(format!("no randomness for the admin token: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok(token)
}

/// How a merchant instance runs beside others ([`merchant`]).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Idle channels kept in memory.
    pub max_live: usize,
    /// The instance's name in the settlement lease (`None`: random).
    pub instance: Option<String>,
    /// The settlement lease's length.
    pub lease_ttl: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_live: paychan_merchant::DEFAULT_MAX_LIVE_CHANNELS,
            instance: None,
            lease_ttl: paychan_merchant::DEFAULT_LEASE_TTL,
        }
    }
}

/// The merchant's channel server, as `serve` and `payment` use it: wallet (keys, payout),
/// store, chain; the stored channels with chain work loaded (the others load when used), at
/// most `tuning.max_live` idle ones kept in memory.
pub async fn merchant(
    common: &Common,
    mainnet_confirmed: bool,
    store_spec: &str,
    policy: Policy,
    tuning: Tuning,
) -> Result<(Arc<ChannelServer>, paychan_core::bitcoin::Address, usize), CliError> {
    let home = common.home();
    let n = common.claim_network(mainnet_confirmed)?;
    let network = n.network;
    let chain = common.chain()?;
    let mut wallet = match Wallet::open(&common.wallet_dir(), network) {
        Err(paychan_wallet::WalletError::Missing(_)) => {
            let mut w = Wallet::create(&common.wallet_dir(), network, None)?;
            w.set_birthday(super::wallet::fresh_birthday(common))?;
            w
        }
        other => other?,
    };
    let keys = wallet.key_chain(KeyChain::MERCHANT)?;
    let payout = wallet.new_address()?;
    let clock = common.clock(chain.clone());
    let store: Arc<dyn ChannelStore> =
        if store_spec.starts_with("postgres://") || store_spec.starts_with("postgresql://") {
            Arc::new(PostgresStore::connect(store_spec).await?)
        } else {
            let path = match store_spec.strip_prefix("sqlite:") {
                Some(p) => PathBuf::from(p),
                None => home.join("merchant.db"),
            };
            std::fs::create_dir_all(&home)?;
            Arc::new(SqliteStore::open(&path)?)
        };
    let config = ServerConfig {
        max_fee_rate: n.max_fee_rate,
        max_live_channels: tuning.max_live,
        instance: tuning.instance,
        lease_ttl: tuning.lease_ttl,
        ..ServerConfig::new(policy, payout.script_pubkey())
    };
    // Each settlement pays a fresh address of the merchant's wallet.
    let wallet = Arc::new(std::sync::Mutex::new(wallet));
    let source: paychan_merchant::PayoutSource = Arc::new(move || {
        let mut w = wallet.lock().unwrap_or_else(|p| p.into_inner());
        w.new_address().map(|a| a.script_pubkey()).map_err(|e| e.to_string())
    });
    // The blocks already read are not read again after a restart.
    let server = Arc::new(
        ChannelServer::new(config, keys, store, chain, clock)?
            .with_chain_cursor(home.join("merchant-chain.cursor"))?
            .with_payout_source(source),
    );
    let loaded = server.load().await?;
    Ok((server, payout, loaded))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else { return };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::check_public_address;

    #[test]
    fn a_public_address_is_host_and_port() {
        for good in ["lb.example.com:9735", "127.0.0.1:9735", "[::1]:9735"] {
            assert!(check_public_address(good).is_ok(), "{good}");
        }
        for bad in
            ["lb.example.com", "tcp://lb:9735", "02ab@lb:9735", ":9735", "lb:0", "lb:x", "lb :1"]
        {
            assert!(check_public_address(bad).is_err(), "{bad}");
        }
    }
}
