//! `paychan wallet new|address|balance|send|faucet`.

use std::process::ExitCode;

use clap::Subcommand;
use paychan_chain::ChainSource;
use paychan_core::bitcoin::{Address, Amount, FeeRate, Network};
use paychan_wallet::Wallet;
use serde_json::json;

use super::common::{parse_amount, Common};
use crate::error::fail;
use crate::CliError;

/// `paychan wallet …`
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Create a wallet (a fresh 12-word mnemonic, or --mnemonic to restore).
    New {
        /// Restore from these words.
        #[arg(long)]
        mnemonic: Option<String>,
        /// The wallet has no transaction below this height: its first sync starts there.
        /// Default: the node's tip for a fresh wallet (nothing can be older), 0 (the whole
        /// chain) for a restored one.
        #[arg(long, value_name = "HEIGHT")]
        birthday: Option<u32>,
    },
    /// A fresh receiving address.
    Address,
    /// The balance (syncs first).
    Balance,
    /// Send to an address.
    Send {
        /// Destination address.
        address: String,
        /// Amount: 10sat, 0.001btc or satoshis.
        #[arg(value_parser = parse_amount)]
        amount: Amount,
        /// Fee rate in sat/vB (default: the node's estimate).
        #[arg(long)]
        fee_rate: Option<u64>,
    },
    /// Regtest only: mine blocks to this wallet (101 makes the first coinbase spendable).
    Faucet {
        /// Blocks to mine.
        #[arg(long, default_value_t = 101)]
        blocks: u32,
    },
}

/// Runs a `paychan wallet` command.
pub fn run(cmd: WalletCommand, common: &Common) -> Result<ExitCode, CliError> {
    let dir = common.wallet_dir();
    let n = common.claim_network(false)?;
    let network = n.network;
    match cmd {
        WalletCommand::New { mnemonic, birthday } => {
            let mut w = Wallet::create(&dir, network, mnemonic.as_deref())?;
            let birthday = match (birthday, &mnemonic) {
                (Some(h), _) => h,
                (None, Some(_)) => 0,
                (None, None) => fresh_birthday(common),
            };
            w.set_birthday(birthday)?;
            common.print(
                &json!({"wallet": w.dir().display().to_string(), "mnemonic_file": w.dir().join("mnemonic").display().to_string(), "birthday": birthday}),
                &format!(
                    "wallet created in {}\nits 12 words are in {} (readable by you only): write them down",
                    w.dir().display(),
                    w.dir().join("mnemonic").display()
                ),
            )?;
        }
        WalletCommand::Address => {
            let mut w = Wallet::open(&dir, network)?;
            let a = w.new_address()?;
            common.print(&json!({"address": a.to_string()}), &a.to_string())?;
        }
        WalletCommand::Balance => {
            let chain = common.chain()?;
            let mut w = Wallet::open(&dir, network)?;
            let r = w.sync(&*chain)?;
            let b = w.balance();
            common.print(
                &json!({
                    "confirmed_sat": b.confirmed.to_sat(),
                    "pending_sat": (b.trusted_pending + b.untrusted_pending).to_sat(),
                    "immature_sat": b.immature.to_sat(),
                    "height": r.height,
                }),
                &format!(
                    "confirmed {} sat, pending {} sat, immature {} sat (height {})",
                    b.confirmed.to_sat(),
                    (b.trusted_pending + b.untrusted_pending).to_sat(),
                    b.immature.to_sat(),
                    r.height
                ),
            )?;
        }
        WalletCommand::Send { address, amount, fee_rate } => {
            let chain = common.chain()?;
            let mut w = Wallet::open(&dir, network)?;
            w.sync(&*chain)?;
            let address: Address = address
                .parse::<Address<_>>()
                .map_err(fail)?
                .require_network(network)
                .map_err(fail)?;
            let rate = match fee_rate {
                Some(r) => {
                    let rate =
                        FeeRate::from_sat_per_vb(r).ok_or_else(|| fail("fee rate too high"))?;
                    if rate > n.max_fee_rate {
                        return Err(CliError::Usage(format!(
                            "--fee-rate {r} sat/vB is above {n}'s cap of {} sat/vB",
                            n.max_fee_rate.to_sat_per_vb_floor()
                        )));
                    }
                    rate
                }
                // A broken estimate must not burn the coins.
                None => chain.estimate_fee(6)?.min(n.max_fee_rate),
            };
            let txid = w.send(&*chain, &address, amount, rate)?;
            common.print(&json!({"txid": txid.to_string()}), &txid.to_string())?;
        }
        WalletCommand::Faucet { blocks } => {
            if network != Network::Regtest {
                return Err(CliError::Usage(format!(
                    "the faucet mines regtest blocks; on {n}, send coins to `paychan wallet address`"
                )));
            }
            let chain = common.chain()?;
            let mut w = Wallet::open(&dir, network)?;
            let a = w.new_address()?;
            let rpc = common.rpc(&n)?;
            let _: serde_json::Value =
                rpc.call("generatetoaddress", &[json!(blocks), json!(a.to_string())])?;
            w.sync(&*chain)?;
            let b = w.balance();
            common.print(
                &json!({"address": a.to_string(), "blocks": blocks, "confirmed_sat": b.confirmed.to_sat()}),
                &format!("mined {blocks} blocks to {a}: {} sat spendable", b.confirmed.to_sat()),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh wallet's birthday: the node's tip (no coin can be older than its keys); 0, with a
/// warning, when the node cannot be reached (the first sync then reads the whole chain).
pub fn fresh_birthday(common: &Common) -> u32 {
    match common.chain().and_then(|c| c.tip().map_err(CliError::from)) {
        Ok(tip) => tip.height,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the node: the wallet's first sync will read the chain from its start");
            0
        }
    }
}
