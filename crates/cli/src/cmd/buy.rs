//! `paychan buy URL` (a paying curl) and `paychan proxy` (a local HTTP proxy that pays): both
//! pay a merchant's 402 from the customer's channels, within spending caps.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use paychan_core::bitcoin::Amount;
use paychan_customer::paying::Quote;
use paychan_customer::spent::{SpendingLog, Spent};
use paychan_customer::{Caps, PayingClient, Progress};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

use super::common::{parse_amount, runtime, Common};
use crate::error::fail;
use crate::CliError;

/// Spending caps, shared by `buy` and `proxy`.
#[derive(Debug, Clone, Args)]
pub struct CapArgs {
    /// The most one request may cost; a dearer one is refused without paying.
    #[arg(long, value_parser = parse_amount, default_value = "1000sat")]
    max_price: Amount,
    /// The most all channels with one merchant may carry.
    #[arg(long, value_parser = parse_amount, default_value = "1000000sat")]
    max_per_merchant: Amount,
    /// The deposit of a channel opened to pay (default: the merchant's suggestion).
    #[arg(long, value_parser = parse_amount)]
    deposit: Option<Amount>,
    /// How long to wait for a new channel's funding to confirm, in seconds.
    #[arg(long, default_value_t = 1800)]
    confirm_timeout_secs: u64,
    /// Trust the CA certificates in this PEM file for HTTPS merchants, besides the system's.
    #[arg(long, value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
}

impl CapArgs {
    fn caps(&self) -> Caps {
        Caps {
            max_price: self.max_price,
            max_per_merchant: self.max_per_merchant,
            deposit: self.deposit,
            confirm_timeout: Duration::from_secs(self.confirm_timeout_secs),
        }
    }
}

/// Arguments of `paychan buy`.
#[derive(Debug, Args)]
pub struct BuyArgs {
    /// The URL.
    url: String,
    /// The method (GET, or POST with --data).
    #[arg(short = 'X', long = "request")]
    method: Option<String>,
    /// The request body.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// A header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Write the answer's body to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    /// Say nothing on stderr but errors (no progress, no channel opening lines).
    #[arg(short = 's', long = "silent")]
    silent: bool,
    /// Show the price and pay nothing: the request is sent once, a 402's price is printed.
    #[arg(long)]
    no_pay: bool,
    #[command(flatten)]
    caps: CapArgs,
}

/// `paychan buy`'s exit status when the price is above `--max-price` (nothing was paid).
pub const EXIT_PRICE_ABOVE_MAX: u8 = 3;
/// `paychan buy`'s exit status when paying would pass `--max-per-merchant`.
pub const EXIT_SPENDING_CAP: u8 = 4;
/// `paychan buy`'s exit status when the server answered an error (as `curl --fail`).
pub const EXIT_HTTP_ERROR: u8 = 22;

/// Arguments of `paychan sign-payment`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The x402 requirement to pay (JSON, as in a 402's `accepts`).
    #[arg(long)]
    requirement: String,
    #[command(flatten)]
    caps: CapArgs,
}

/// Arguments of `paychan proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Where the proxy listens (keep it on loopback: whoever reaches it spends your channels).
    #[arg(long, default_value = "127.0.0.1:8402")]
    listen: SocketAddr,
    /// Fetch the `http://` URLs asked of the proxy over HTTPS (same host, port and path): curl
    /// speaks plain HTTP to the proxy on loopback, the merchant is reached over TLS.
    #[arg(long)]
    https_upstream: bool,
    #[command(flatten)]
    caps: CapArgs,
}

/// Progress on stderr: opening a channel, waiting for its confirmation.
fn progress() -> paychan_customer::paying::ProgressFn {
    // The ten-second step last reported, so each is said once.
    let said = std::sync::Mutex::new(None::<u64>);
    Arc::new(move |p: &Progress| {
        let mut err = std::io::stderr().lock();
        let _ = match p {
            Progress::Opening { peer, deposit } => {
                writeln!(err, "paychan: opening a channel of {} sat with {peer}…", deposit.to_sat())
            }
            Progress::Opened { channel } => writeln!(err, "paychan: channel {channel} opened"),
            Progress::WaitingForConfirmation { waited_secs, .. } => {
                let step = waited_secs / 10;
                let mut said = said.lock().unwrap_or_else(|p| p.into_inner());
                if *said == Some(step) {
                    return;
                }
                *said = Some(step);
                if step == 0 {
                    writeln!(
                        err,
                        "paychan: waiting for the funding to confirm; on regtest no block comes by itself: mine one with `paychan node mine 1` (or start the node with --block-interval 10)"
                    )
                } else {
                    writeln!(err, "paychan: waiting for the funding to confirm ({waited_secs} s)…")
                }
            }
        };
    })
}

/// The spending log of the customer's home (`paychan spent` reads it).
pub fn spending_log_path(common: &Common) -> std::path::PathBuf {
    common.home().join("spent.jsonl")
}

async fn paying_client(
    common: &Common,
    caps: &CapArgs,
    silent: bool,
) -> Result<PayingClient, CliError> {
    let (customer, _) = super::channels::customer(common).await?;
    let mut client = PayingClient::new(Arc::new(customer), caps.caps())
        .with_spending_log(SpendingLog::new(spending_log_path(common)));
    if !silent {
        client = client.with_progress(progress());
    }
    if let Some(ca) = &caps.cacert {
        client = client.with_cacert(ca)?;
    }
    Ok(client)
}

/// Runs `paychan buy`.
pub fn buy(a: BuyArgs, common: &Common) -> Result<ExitCode, CliError> {
    let method = match (&a.method, &a.data) {
        (Some(m), _) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| fail(format!("{m:?} is not an HTTP method")))?,
        (None, Some(_)) => reqwest::Method::POST,
        (None, None) => reqwest::Method::GET,
    };
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| fail(format!("{h:?} is not a header `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| fail(format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| fail(format!("{value:?} is not a header value")))?;
        headers.append(name, value);
    }
    if a.data.is_some() && !headers.contains_key("content-type") {
        headers
            .insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
    }
    let body = a.data.clone().unwrap_or_default().into_bytes();
    if a.no_pay {
        return quote(&a, common, method, &headers, body);
    }
    let r = runtime()?.block_on(async {
        let client = paying_client(common, &a.caps, a.silent).await?;
        client.request(method, &a.url, &headers, body).await.map_err(CliError::from)
    })?;
    write_body(&a, common.json, &r.body)?;
    if common.json {
        common.print(
            &json!({
                "status": r.status,
                "price_sat": r.price.to_sat(),
                "paid_sat": r.paid.to_sat(),
                "channel": r.channel.map(|c| c.to_string()),
                "receipt": r.receipt,
                "body": if a.output.is_some() { serde_json::Value::Null } else { json!(String::from_utf8_lossy(&r.body)) },
            }),
            "",
        )?;
    } else if r.price > Amount::ZERO {
        tracing::info!(
            price = r.price.to_sat(),
            paid = r.paid.to_sat(),
            status = r.status,
            "paid request"
        );
    }
    if r.status >= 400 {
        let _ = writeln!(std::io::stderr().lock(), "error: the server answered HTTP {}", r.status);
        return Ok(ExitCode::from(EXIT_HTTP_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// The body to `-o FILE`, or to stdout (not with `--json`: the body is in the JSON).
fn write_body(a: &BuyArgs, json: bool, body: &[u8]) -> Result<(), CliError> {
    match &a.output {
        Some(path) => std::fs::write(path, body)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display()))),
        None if json => Ok(()),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(body)?;
            out.flush()?;
            Ok(())
        }
    }
}

/// `paychan buy --no-pay`: the price, nothing paid.
fn quote(
    a: &BuyArgs,
    common: &Common,
    method: reqwest::Method,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<ExitCode, CliError> {
    // No wallet, no channel: one plain request.
    let http = paychan_transport::tls::http_client_builder(a.caps.cacert.as_deref())?
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let q = runtime()?
        .block_on(paychan_customer::paying::quote(&http, method, &a.url, headers, body))?;
    match q {
        Quote::Price { price, requirement, resource } => {
            let above = price > a.caps.max_price;
            common.print(
                &json!({
                    "status": 402,
                    "price_sat": price.to_sat(),
                    "paid_sat": 0,
                    "above_max_price": above,
                    "resource": resource.url,
                    "pay_to": requirement.pay_to,
                    "peer": requirement.extra.peer,
                    "network": requirement.network,
                    "max_timeout_seconds": requirement.max_timeout_seconds,
                }),
                &format!(
                    "{} sat for {} (merchant {}, channels at {}){}; nothing was paid",
                    price.to_sat(),
                    resource.url,
                    requirement.pay_to,
                    requirement.extra.peer,
                    if above { ", above --max-price" } else { "" }
                ),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Quote::Answer(r) => {
            write_body(a, true, &r.body)?;
            common.print(
                &json!({"status": r.status, "price_sat": 0, "paid_sat": 0, "body": String::from_utf8_lossy(&r.body)}),
                &format!("free: the server answered HTTP {} without asking to pay", r.status),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `paychan sign-payment`: signs (and stores as spent) a payment of one x402 requirement,
/// opening or reusing a channel, and prints the scheme's payload (`{channel, total,
/// signature}`) as JSON, for an x402 SDK's paychan plugin to send.
pub fn sign_payment(a: SignArgs, common: &Common) -> Result<ExitCode, CliError> {
    let requirement: paychan_core::paywall::Requirement = serde_json::from_str(&a.requirement)
        .map_err(|e| CliError::Usage(format!("--requirement is not an x402 requirement: {e}")))?;
    let payment = runtime()?.block_on(async {
        let client = paying_client(common, &a.caps, true).await?;
        client.pay_requirement(&requirement).await.map_err(CliError::from)
    })?;
    let v = serde_json::to_value(&payment).map_err(|e| fail(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `paychan spent`: what was paid, to whom, for which URL.
pub fn spent(common: &Common) -> Result<ExitCode, CliError> {
    let entries: Vec<Spent> = SpendingLog::read(&spending_log_path(common))?;
    let total: u64 = entries.iter().map(|e| e.paid_sat).sum();
    let human = entries
        .iter()
        .map(|e| {
            format!(
                "{}  {:>8} sat  {} {}  → {}  HTTP {}{}",
                e.time,
                e.paid_sat,
                e.method,
                e.url,
                e.merchant,
                e.status,
                if e.charged { "" } else { "  (not charged: credit kept)" }
            )
        })
        .chain(std::iter::once(format!("{} requests, {total} sat", entries.len())))
        .collect::<Vec<_>>()
        .join("\n");
    common.print(&json!({"entries": entries, "total_paid_sat": total}), &human)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `paychan proxy` until Ctrl-C or SIGTERM.
pub fn proxy(a: ProxyArgs, common: &Common) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let client = Arc::new(paying_client(common, &a.caps, false).await?);
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|e| fail(format!("cannot listen on {}: {e}", a.listen)))?;
        let addr = listener.local_addr()?;
        let upstream = if a.https_upstream { "https" } else { "http" };
        common.print(
            &json!({"listen": addr.to_string(), "upstream_scheme": upstream}),
            &format!("paychan proxy on http://{addr}: `curl -x http://{addr} http://merchant/…` pays 402s from your channels (merchants reached over {upstream})"),
        )?;
        let app = paychan_customer::proxy::router(client, a.https_upstream);
        axum::serve(listener, app).with_graceful_shutdown(super::serve::shutdown_signal()).await?;
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
