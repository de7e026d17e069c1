//! `paychan channels open|pay|status|sync|close|list`: the customer's side.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Subcommand;
use paychan_chain::ChainSource;
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_customer::{ChannelKind, ChannelStatus, Customer};
use paychan_store::{ChannelStore, SqliteStore};
use paychan_wallet::Wallet;
use serde_json::{json, Value};

use super::common::{parse_amount, runtime, Common};
use super::node::parse_duration;
use crate::error::fail;
use crate::CliError;

/// `paychan channels …`
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Open a channel with a merchant.
    Open {
        /// The merchant's channel protocol address (host:port).
        #[arg(long)]
        merchant: String,
        /// The deposit: 100000sat, 0.001btc or satoshis.
        #[arg(long, value_parser = parse_amount, default_value = "100000sat")]
        deposit: Amount,
        /// Channel life: 1d, 12h… (default: the merchant's). A CLTV channel's (implies
        /// `--kind cltv`).
        #[arg(long, value_parser = parse_duration, conflicts_with = "dispute_blocks")]
        life: Option<u64>,
        /// The kind: `dispute` (no expiry: closed cooperatively, or by either side alone after
        /// a dispute period) or `cltv` (a fixed expiry; what 21 clients speak).
        #[arg(long, default_value = "dispute", value_parser = ["cltv", "dispute"])]
        kind: String,
        /// A dispute channel's dispute period in blocks (default: the merchant's minimum).
        #[arg(long)]
        dispute_blocks: Option<u16>,
        /// Wait until the funding has a confirmation.
        #[arg(long)]
        wait: bool,
    },
    /// Pay on a channel.
    Pay {
        /// The channel (funding txid:vout).
        #[arg(long)]
        channel: OutPoint,
        /// The amount of each payment.
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
        /// How many payments (sent pipelined, in batches of 100).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Print a JSON line with the acknowledged total after every batch.
        #[arg(long)]
        progress: bool,
        /// Do not send: write the signed payment to this file, for `paychan payment submit`.
        #[arg(long, conflicts_with_all = ["count", "progress"])]
        out: Option<std::path::PathBuf>,
    },
    /// One channel's status.
    Status {
        /// The channel.
        #[arg(long)]
        channel: OutPoint,
    },
    /// Resume a channel with its merchant: both views agree afterwards.
    Sync {
        /// The channel.
        #[arg(long)]
        channel: OutPoint,
    },
    /// Ask the merchant to settle now (a dispute channel: one cooperative close transaction).
    Close {
        /// The channel.
        #[arg(long)]
        channel: OutPoint,
        /// A dispute channel without the merchant: broadcast the trigger (with a fee-paying
        /// child); the deposit comes back after the dispute period unless the merchant
        /// settles the latest payment first (`paychan channels list` follows it).
        #[arg(long)]
        force: bool,
    },
    /// Every channel.
    List,
}

fn status_json(s: &ChannelStatus) -> Value {
    json!({
        "channel": s.id.to_string(),
        "merchant": s.peer,
        "phase": s.phase.as_str(),
        "capacity_sat": s.capacity.to_sat(),
        "paid_sat": s.signed.to_sat(),
        "signed_sat": s.signed.to_sat(),
        "acked_sat": s.acked.to_sat(),
        "in_flight_sat": (s.signed - s.acked.min(s.signed)).to_sat(),
        "kind": if s.dispute_blocks.is_some() { "dispute" } else { "cltv" },
        "expiry": s.expiry,
        "dispute_blocks": s.dispute_blocks,
        "closing_txid": s.closing_txid.map(|t| t.to_string()),
    })
}

fn status_line(s: &ChannelStatus) -> String {
    format!(
        "{:<68} {:<16} {:>12} {:>12} {:>12}",
        s.id.to_string(),
        s.phase.as_str(),
        s.capacity.to_sat(),
        s.signed.to_sat(),
        (s.capacity - s.signed.min(s.capacity)).to_sat()
    )
}

const HEADER: &str = "CHANNEL                                                              PHASE              DEPOSIT         PAID    REMAINING";

/// The customer of `<home>`: its wallet synced with the node, its channels
/// (`<home>/channels.db`) loaded. Returns it with the chain client.
pub async fn customer(common: &Common) -> Result<(Customer, Arc<dyn ChainSource>), CliError> {
    let n = common.claim_network(false)?;
    let network = n.network;
    let chain = common.chain()?;
    let dir = common.wallet_dir();
    let c = chain.clone();
    let wallet = tokio::task::spawn_blocking(move || {
        let mut wallet = Wallet::open(&dir, network)?;
        // Paying, resuming and closing need no chain: with the node unreachable the wallet
        // keeps what it knew (opening a channel then fails on the chain, with its reason).
        if let Err(e) = wallet.sync(&*c) {
            tracing::warn!(error = %e, "cannot sync the wallet with the node; going on without it");
        }
        Ok::<_, CliError>(wallet)
    })
    .await??;
    let wallet = Arc::new(Mutex::new(wallet));
    let home = common.home();
    let clock = common.clock(chain.clone());
    let store: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(&home.join("channels.db"))?);
    let customer = Customer::new(store, chain.clone(), wallet, clock)?
        .with_chain_cursor(home.join("customer-chain.cursor"))?
        .with_backups(&super::backup::backup_dir(common))
        .with_max_fee_rate(n.max_fee_rate);
    customer.load().await?;
    Ok((customer, chain))
}

/// Runs a `paychan channels` command.
pub fn run(cmd: ChannelsCommand, common: &Common) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        let (customer, chain) = customer(common).await?;
        match cmd {
            ChannelsCommand::Open { merchant, deposit, life, kind, dispute_blocks, wait } => {
                let kind = match kind.as_str() {
                    "dispute" if life.is_none() => ChannelKind::Dispute { blocks: dispute_blocks },
                    _ => {
                        let life_secs = life.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
                        ChannelKind::Cltv { life_secs }
                    }
                };
                let id = customer.open_kind(&merchant, deposit, kind).await?;
                if wait {
                    let mut waited = 0u64;
                    loop {
                        // gettxout dates the funding output: no transaction index needed.
                        match chain.utxo(&id)? {
                            Some(u) if u.confirmations > 0 => break,
                            _ => {
                                if waited % 10 == 0 {
                                    tracing::info!(channel = %id, seconds = waited, "waiting for the funding to confirm");
                                }
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                waited += 1;
                            }
                        }
                    }
                }
                let s = customer.status(id).await?;
                common.print(&status_json(&s), &format!("opened {id}\n{HEADER}\n{}", status_line(&s)))?;
            }
            ChannelsCommand::Pay { channel, amount, out: Some(file), .. } => {
                let pay = customer.sign_payment(channel, amount).await?;
                let v = super::payment::to_json(&pay)?;
                std::fs::write(&file, format!("{v:#}\n")).map_err(|e| fail(format!("{}: {e}", file.display())))?;
                common.print(
                    &json!({"file": file.display().to_string(), "total_sat": pay.total_sat}),
                    &format!("signed a total of {} sat into {}", pay.total_sat, file.display()),
                )?;
            }
            ChannelsCommand::Pay { channel, amount, count, progress, out: None } => {
                let mut left = count;
                let mut acked = Amount::ZERO;
                while left > 0 {
                    let n = left.min(100);
                    let batch = vec![amount; n as usize];
                    let paid = customer.pay_many(channel, &batch).await;
                    // What the merchant acknowledged is stored even when a payment failed.
                    let stored = customer.checkpoint(channel).await;
                    acked = paid?;
                    stored?;
                    left -= n;
                    if progress {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", json!({"acked_sat": acked.to_sat()}))?;
                        out.flush()?;
                    }
                }
                common.print(
                    &json!({"channel": channel.to_string(), "payments": count, "acked_sat": acked.to_sat()}),
                    &format!("paid {count} × {} sat; the merchant has acknowledged {} sat", amount.to_sat(), acked.to_sat()),
                )?;
            }
            ChannelsCommand::Status { channel } => {
                let s = customer.status(channel).await?;
                common.print(&status_json(&s), &format!("{HEADER}\n{}", status_line(&s)))?;
            }
            ChannelsCommand::Sync { channel } => {
                let acked = customer.sync(channel).await?;
                common.print(
                    &json!({"channel": channel.to_string(), "acked_sat": acked.to_sat()}),
                    &format!("in sync: {} sat acknowledged", acked.to_sat()),
                )?;
            }
            ChannelsCommand::Close { channel, force: true } => {
                let txid = customer.force_close(channel).await?;
                common.print(
                    &json!({"channel": channel.to_string(), "trigger_txid": txid.to_string()}),
                    &format!("force close: trigger {txid} broadcast; the refund follows the dispute period"),
                )?;
            }
            ChannelsCommand::Close { channel, force: false } => {
                let txid = customer.close(channel).await?;
                common.print(
                    &json!({"channel": channel.to_string(), "settlement_txid": txid.to_string()}),
                    &format!("closed: settlement {txid}"),
                )?;
            }
            ChannelsCommand::List => {
                let _ = customer.tick().await;
                let all = customer.list().await;
                let v: Vec<Value> = all.iter().map(status_json).collect();
                let mut text = HEADER.to_string();
                for s in &all {
                    text.push('\n');
                    text.push_str(&status_line(s));
                }
                common.print(&json!(v), &text)?;
            }
        }
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
