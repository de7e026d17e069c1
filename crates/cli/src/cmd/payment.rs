//! Payments as files (DESIGN §1, Cosmos paychan): `paychan channels pay --out FILE` writes a
//! signed payment; the merchant's `paychan payment verify FILE` says what it is worth and
//! `paychan payment submit FILE [--settle]` accepts it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::OutPoint;
use paychan_core::msg::Pay;
use paychan_core::policy::Policy;
use serde_json::{json, Value};

use super::common::{runtime, Common};
use crate::error::fail;
use crate::CliError;

/// `paychan payment …` (the merchant's side).
#[derive(Debug, Subcommand)]
pub enum PaymentCommand {
    /// Check a payment file against the chain and the store: what it is worth.
    Verify {
        /// The file.
        file: PathBuf,
        /// `sqlite` (default), `sqlite:PATH` or a `postgres://` URL.
        #[arg(long, default_value = "sqlite")]
        store: String,
    },
    /// Accept a payment file (stored durably); with --settle, settle the channel on chain.
    /// While `paychan serve` runs for this home, the payment goes through its API (so the
    /// running merchant and its store agree); otherwise straight into the store.
    Submit {
        /// The file.
        file: PathBuf,
        /// Settle the channel right away.
        #[arg(long)]
        settle: bool,
        /// `sqlite` (default), `sqlite:PATH` or a `postgres://` URL.
        #[arg(long, default_value = "sqlite")]
        store: String,
        /// The running merchant's admin token, for --settle (default: <home>/admin.token).
        #[arg(long, env = "PAYCHAN_ADMIN_TOKEN")]
        admin_token: Option<String>,
    },
}

/// The file's JSON for a signed payment.
pub fn to_json(pay: &Pay) -> Result<Value, CliError> {
    let channel =
        pay.channel.as_ref().ok_or_else(|| fail("payment without a channel"))?.outpoint()?;
    Ok(json!({
        "paychan_payment": 1,
        "channel": channel.to_string(),
        "total_sat": pay.total_sat,
        "signature": pay.signature.to_lower_hex_string(),
    }))
}

fn read(file: &Path) -> Result<Pay, CliError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| fail(format!("{}: not JSON: {e}", file.display())))?;
    if v["paychan_payment"] != 1 {
        return Err(fail(format!("{}: not a paychan payment file (version 1)", file.display())));
    }
    let channel: OutPoint = v["channel"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("the file's channel is not txid:vout"))?;
    let total_sat =
        v["total_sat"].as_u64().ok_or_else(|| fail("the file's total_sat is not a number"))?;
    let signature = v["signature"]
        .as_str()
        .and_then(|s| Vec::<u8>::from_hex(s).ok())
        .ok_or_else(|| fail("the file's signature is not hex"))?;
    Ok(Pay { channel: Some(channel.into()), total_sat, signature })
}

/// Submits through the running merchant's JSON API at `http`. `None` when nothing answers
/// there (a file left by a crashed `serve`): the caller writes the store itself then.
async fn submit_to_running(
    common: &Common,
    http: std::net::SocketAddr,
    channel: OutPoint,
    pay: &Pay,
    settle: bool,
    admin_token: Option<String>,
) -> Result<Option<(Value, String)>, CliError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(fail)?;
    let base = format!("http://{http}/v1/channels/{channel}");
    let body =
        json!({"total_sat": pay.total_sat, "signature": pay.signature.to_lower_hex_string()});
    let resp = match client.post(format!("{base}/payments")).json(&body).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            tracing::info!(%http, "no merchant answers at the address serve.json names; writing the store directly");
            return Ok(None);
        }
        Err(e) => return Err(fail(format!("the running merchant at {http}: {e}"))),
    };
    let answer = api_answer(resp).await?;
    let total = answer["total_sat"].as_u64().unwrap_or(pay.total_sat);
    let mut out = json!({"accepted": true, "total_sat": total, "via": format!("http://{http}")});
    let mut text =
        format!("accepted by the running merchant: the channel's total is now {total} sat");
    if settle {
        let token = match admin_token {
            Some(t) => t,
            None => std::fs::read_to_string(common.home().join("admin.token"))
                .map(|t| t.trim().to_string())
                .map_err(|e| fail(format!("--settle through the running merchant needs its admin token (--admin-token or <home>/admin.token): {e}")))?,
        };
        let resp = client
            .post(format!("http://{http}/admin/channels/{channel}/settle"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| fail(format!("the running merchant at {http}: {e}")))?;
        let answer = api_answer(resp).await?;
        let txid = answer["settlement_txid"].as_str().unwrap_or_default().to_string();
        text.push_str(&format!("\nsettled: {txid}"));
        out["settlement_txid"] = json!(txid);
    }
    Ok(Some((out, text)))
}

/// The JSON of a successful API answer, or the refusal as an error with its code.
async fn api_answer(resp: reqwest::Response) -> Result<Value, CliError> {
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let message = v["message"].as_str().map_or_else(|| status.to_string(), str::to_string);
    Err(fail(format!("refused: {message} (code {})", v["code"])))
}

/// Runs a `paychan payment` command.
pub fn run(cmd: PaymentCommand, common: &Common) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        match cmd {
            PaymentCommand::Verify { file, store } => {
                let pay = read(&file)?;
                let (server, _, _) = super::serve::merchant(common, false, &store, Policy::default(), super::serve::Tuning::default()).await?;
                let worth = server.check_payment(&pay).await.map_err(|e| fail(format!("refused: {e}")))?;
                common.print(
                    &json!({"valid": true, "total_sat": pay.total_sat, "worth_sat": worth.to_sat()}),
                    &format!("valid: a total of {} sat, worth {} sat more than accepted so far", pay.total_sat, worth.to_sat()),
                )?;
            }
            PaymentCommand::Submit { file, settle, store, admin_token } => {
                let pay = read(&file)?;
                let channel = pay.channel.as_ref().and_then(|c| c.outpoint().ok()).ok_or_else(|| fail("no channel"))?;
                if let Some(http) = super::serve::running_http(&common.home()) {
                    if let Some((out, text)) = submit_to_running(common, http, channel, &pay, settle, admin_token).await? {
                        common.print(&out, &text)?;
                        return Ok(());
                    }
                }
                let (server, _, _) = super::serve::merchant(common, false, &store, Policy::default(), super::serve::Tuning::default()).await?;
                let ack = server
                    .pay_batch(channel, std::slice::from_ref(&pay))
                    .await
                    .pop()
                    .ok_or_else(|| fail("no answer"))?
                    .map_err(|e| fail(format!("refused: {e}")))?;
                let mut out = json!({"accepted": true, "total_sat": ack.total_sat});
                let mut text = format!("accepted: the channel's total is now {} sat", ack.total_sat);
                if settle {
                    let closed = server.settle(channel).await?;
                    let txid = closed.txid()?;
                    out["settlement_txid"] = json!(txid.to_string());
                    text.push_str(&format!("\nsettled: {txid}"));
                }
                common.print(&out, &text)?;
            }
        }
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
