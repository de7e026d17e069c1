//! `paychan backup export|list|refund`: what to keep so that losing a disk loses no money.
//!
//! * The merchant's channel store: `export FILE` writes a consistent copy while `serve` runs
//!   (SQLite `VACUUM INTO`; PostgreSQL users use `pg_dump` or their own backups). A merchant
//!   restored from an older copy gets the newer payments back as each customer resumes.
//! * The customer's channels: a small file per channel in `<home>/backups`, written at each
//!   open before the funding can reach the chain. With the wallet's 12 words (`paychan wallet
//!   new --mnemonic "…"`) and those files, `refund` gets every deposit back after its expiry,
//!   with no channel store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use paychan_core::bitcoin::FeeRate;
use paychan_customer::backup::{read_all, refund_from_backups, Restored};
use paychan_store::SqliteStore;
use paychan_wallet::Wallet;
use serde_json::json;

use super::common::{runtime, Common};
use crate::error::fail;
use crate::CliError;

/// `paychan backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// The merchant: a consistent copy of the SQLite channel store, taken while serving.
    Export {
        /// Where to write the copy (must not exist).
        file: PathBuf,
        /// The store to copy: `sqlite` (<home>/merchant.db) or `sqlite:PATH`.
        #[arg(long, default_value = "sqlite")]
        store: String,
    },
    /// The customer: the channels backed up in <home>/backups.
    List,
    /// The customer: refund every backed-up channel whose expiry has passed and whose
    /// deposit is unspent, to the wallet (restored from its 12 words if it was lost).
    Refund {
        /// Fee rate in sat/vB (default: the node's estimate).
        #[arg(long)]
        fee_rate: Option<u64>,
    },
}

/// The directory of the customer's channel backups.
pub fn backup_dir(common: &Common) -> PathBuf {
    common.home().join("backups")
}

/// Runs a `paychan backup` command.
pub fn run(cmd: BackupCommand, common: &Common) -> Result<ExitCode, CliError> {
    let n = common.claim_network(false)?;
    match cmd {
        BackupCommand::Export { file, store } => {
            let path = match store.as_str() {
                "sqlite" => common.home().join("merchant.db"),
                other => match other.strip_prefix("sqlite:") {
                    Some(p) => PathBuf::from(p),
                    None => {
                        return Err(CliError::Usage(format!(
                            "--store {other}: export copies SQLite stores; back PostgreSQL up with pg_dump"
                        )))
                    }
                },
            };
            if !path.exists() {
                return Err(fail(format!("no store at {}", path.display())));
            }
            runtime()?.block_on(async {
                let s = SqliteStore::open(&path)?;
                s.backup_to(&file).await?;
                Ok::<_, CliError>(())
            })?;
            common.print(
                &json!({"store": path.display().to_string(), "backup": file.display().to_string()}),
                &format!("copied {} to {}", path.display(), file.display()),
            )?;
        }
        BackupCommand::List => {
            let backups = read_all(&backup_dir(common))?;
            let rows: Vec<_> = backups.iter().map(|b| b.to_json()).collect();
            let text = backups
                .iter()
                .map(|b| {
                    format!(
                        "{}  {} sat  expiry {}  {}",
                        b.funding,
                        b.value.to_sat(),
                        b.expiry.to_consensus_u32(),
                        b.peer
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            common
                .print(&json!(rows), if text.is_empty() { "no channel backups" } else { &text })?;
        }
        BackupCommand::Refund { fee_rate } => {
            let chain = common.chain()?;
            let mut wallet = Wallet::open(&common.wallet_dir(), n.network)?;
            wallet.sync(&*chain)?;
            let rate = match fee_rate {
                Some(r) => FeeRate::from_sat_per_vb(r).ok_or_else(|| fail("fee rate too high"))?,
                None => chain.estimate_fee(6)?,
            };
            let done = refund_from_backups(&backup_dir(common), &mut wallet, &*chain, rate)?;
            let rows: Vec<_> = done
                .iter()
                .map(|r| match r {
                    Restored::Refunded { funding, txid } => json!({"channel": funding.to_string(), "refund": txid.to_string()}),
                    Restored::Locked { funding, expiry } => json!({"channel": funding.to_string(), "locked_until": expiry.to_consensus_u32()}),
                    Restored::Spent { funding } => json!({"channel": funding.to_string(), "spent": true}),
                    Restored::Triggered { funding, trigger } => json!({"channel": funding.to_string(), "trigger": trigger.to_string()}),
                    Restored::Disputed { funding, remaining } => json!({"channel": funding.to_string(), "refund_in_blocks": remaining}),
                })
                .collect();
            let text = done
                .iter()
                .map(|r| match r {
                    Restored::Refunded { funding, txid } => {
                        format!("{funding}: refund {txid} broadcast")
                    }
                    Restored::Locked { funding, expiry } => format!(
                        "{funding}: locked until {} (median-time-past)",
                        expiry.to_consensus_u32()
                    ),
                    Restored::Spent { funding } => {
                        format!("{funding}: already spent (settled or refunded)")
                    }
                    Restored::Triggered { funding, trigger } => format!(
                        "{funding}: trigger {trigger} broadcast; run again once the dispute period has passed"
                    ),
                    Restored::Disputed { funding, remaining } => {
                        format!("{funding}: the refund is valid in {remaining} blocks")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            common
                .print(&json!(rows), if text.is_empty() { "no channel backups" } else { &text })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
