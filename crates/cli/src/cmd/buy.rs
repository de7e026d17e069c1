//! `paychan buy URL` (a paying curl) and `paychan proxy` (a local HTTP proxy that pays): both
//! pay a merchant's 402 from the customer's channels, within spending caps.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use paychan_core::bitcoin::Amount;
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

async fn paying_client(common: &Common, caps: &CapArgs) -> Result<PayingClient, CliError> {
    let (customer, _) = super::channels::customer(common).await?;
    let mut client = PayingClient::new(Arc::new(customer), caps.caps()).with_progress(progress());
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
    let r = runtime()?.block_on(async {
        let client = paying_client(common, &a.caps).await?;
        client.request(method, &a.url, &headers, body).await.map_err(fail)
    })?;
    if common.json {
        common.print(
            &json!({
                "status": r.status,
                "price_sat": r.price.to_sat(),
                "paid_sat": r.paid.to_sat(),
                "channel": r.channel.map(|c| c.to_string()),
                "receipt": r.receipt,
                "body": String::from_utf8_lossy(&r.body),
            }),
            "",
        )?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&r.body)?;
        out.flush()?;
        if r.price > Amount::ZERO {
            tracing::info!(
                price = r.price.to_sat(),
                paid = r.paid.to_sat(),
                status = r.status,
                "paid request"
            );
        }
    }
    if r.status >= 400 {
        let _ = writeln!(std::io::stderr().lock(), "error: the server answered HTTP {}", r.status);
        return Ok(ExitCode::from(22));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `paychan proxy` until Ctrl-C or SIGTERM.
pub fn proxy(a: ProxyArgs, common: &Common) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let client = Arc::new(paying_client(common, &a.caps).await?);
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
