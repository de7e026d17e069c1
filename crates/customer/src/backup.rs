//! Channel backups: losing the channel store must not lose the deposits (issue 15, DESIGN §2).
//!
//! When a channel is opened, before its funding can reach the chain, the customer writes a
//! small file (`<dir>/<txid>_<vout>.json`, atomically: a temporary file, fsynced, renamed) with
//! what a refund needs besides the keys: the channel script's fields, the funding outpoint,
//! value and kind, and the index of the customer's key. With the wallet's mnemonic (which
//! rebuilds the keys) and these files, [`refund_from_backups`] refunds every channel whose
//! expiry has passed and whose deposit is still unspent, with no channel store at all.
//!
//! A dispute channel's backup is written once its trigger is signed by both (before its
//! funding is broadcast), and holds the trigger: restoring then means broadcasting the
//! trigger with a child paying for it (from the restored wallet), and, once the trigger has
//! the dispute period's confirmations, the refund.
//!
//! A backup holds no secret: the key is derived from the mnemonic at restore time.

use std::path::{Path, PathBuf};

use paychan_chain::ChainSource;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid};
use paychan_core::policy::DEFAULT_DUST_RELAY_FEE;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::refund::build_refund;
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_wallet::{KeyChain, Wallet};
use serde_json::{json, Value};

use crate::CustomerError;

/// What a refund needs besides the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelBackup {
    /// The funding outpoint (the channel's id).
    pub funding: OutPoint,
    /// The deposit.
    pub value: Amount,
    /// How the funding output commits to the script.
    pub kind: OutputKind,
    /// The merchant's key in the channel script.
    pub merchant: PublicKey,
    /// The customer's key in the channel script.
    pub customer: PublicKey,
    /// The index of the customer's key in its key chain (`KeyChain::CUSTOMER`).
    pub customer_key_index: u32,
    /// The expiry (the refund's `nLockTime`); 0 for a dispute channel.
    pub expiry: LockTime,
    /// A dispute channel's period and its trigger signed by both; `None` for a CLTV channel.
    pub dispute: Option<DisputeBackup>,
    /// The merchant's address, for the record.
    pub peer: String,
}

/// What a dispute channel's backup adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeBackup {
    /// The dispute period in blocks.
    pub blocks: u16,
    /// The trigger, signed by both.
    pub trigger: Transaction,
}

/// The format's version in each file: 1 for a CLTV channel; 2 for a dispute channel (a
/// reader of version 1 must not take it for a CLTV channel with expiry 0).
const VERSION: u64 = 1;
const DISPUTE_VERSION: u64 = 2;

impl ChannelBackup {
    /// The file's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "paychan_channel_backup": if self.dispute.is_some() { DISPUTE_VERSION } else { VERSION },
            "funding": self.funding.to_string(),
            "value_sat": self.value.to_sat(),
            "kind": match self.kind { OutputKind::P2wsh => "p2wsh", OutputKind::P2sh => "p2sh" },
            "merchant_pubkey": self.merchant.to_string(),
            "customer_pubkey": self.customer.to_string(),
            "customer_key_index": self.customer_key_index,
            "expiry": self.expiry.to_consensus_u32(),
            "peer": self.peer,
        });
        if let Some(d) = &self.dispute {
            v["dispute_blocks"] = json!(d.blocks);
            v["trigger"] = json!(serialize_hex(&d.trigger));
        }
        v
    }

    /// Reads a file's JSON.
    ///
    /// # Errors
    /// [`CustomerError::Backup`] naming the field that is missing or wrong.
    pub fn from_json(v: &Value) -> Result<Self, CustomerError> {
        let bad = |what: &str| CustomerError::Backup(format!("{what} is missing or malformed"));
        let version = v["paychan_channel_backup"].as_u64();
        if version != Some(VERSION) && version != Some(DISPUTE_VERSION) {
            return Err(bad("paychan_channel_backup (the format version)"));
        }
        let text = |k: &str| v[k].as_str().ok_or_else(|| bad(k));
        let num = |k: &str| v[k].as_u64().ok_or_else(|| bad(k));
        let dispute = if version == Some(DISPUTE_VERSION) {
            Some(DisputeBackup {
                blocks: u16::try_from(num("dispute_blocks")?).map_err(|_| bad("dispute_blocks"))?,
                trigger: deserialize_hex(text("trigger")?).map_err(|_| bad("trigger"))?,
            })
        } else {
            None
        };
        Ok(ChannelBackup {
            funding: text("funding")?.parse().map_err(|_| bad("funding"))?,
            value: Amount::from_sat(num("value_sat")?),
            kind: text("kind")?.parse().map_err(|_| bad("kind"))?,
            merchant: text("merchant_pubkey")?.parse().map_err(|_| bad("merchant_pubkey"))?,
            customer: text("customer_pubkey")?.parse().map_err(|_| bad("customer_pubkey"))?,
            customer_key_index: u32::try_from(num("customer_key_index")?)
                .map_err(|_| bad("customer_key_index"))?,
            expiry: LockTime::from_consensus(
                u32::try_from(num("expiry")?).map_err(|_| bad("expiry"))?,
            ),
            dispute,
            peer: text("peer")?.to_string(),
        })
    }

    /// The channel's parameters, refunding to `destination`.
    fn params(
        &self,
        destination: &paychan_core::bitcoin::ScriptBuf,
    ) -> Result<ChannelParams, CustomerError> {
        let script = match &self.dispute {
            Some(d) => ChannelScript::dispute(self.merchant, self.customer, d.blocks)?,
            None => ChannelScript::new(self.merchant, self.customer, self.expiry)?,
        };
        let funding = FundingOutput { outpoint: self.funding, value: self.value, kind: self.kind };
        Ok(ChannelParams::new(script, funding, destination.clone(), DEFAULT_DUST_RELAY_FEE)?)
    }
}

/// The file of `funding` in `dir`.
fn file_of(dir: &Path, funding: &OutPoint) -> PathBuf {
    dir.join(format!("{}_{}.json", funding.txid, funding.vout))
}

/// Writes `backup` into `dir` atomically (temporary file, fsync, rename, fsync of the
/// directory): a crash leaves the old file or the new one, never half of one.
///
/// # Errors
/// [`CustomerError::Backup`] when the directory cannot be written.
pub fn write(dir: &Path, backup: &ChannelBackup) -> Result<(), CustomerError> {
    let io = |e: std::io::Error| CustomerError::Backup(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = file_of(dir, &backup.funding);
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(&backup.to_json())
        .map_err(|e| CustomerError::Backup(e.to_string()))?;
    text.push('\n');
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Every backup in `dir`, oldest expiry first (a missing directory has none).
///
/// # Errors
/// [`CustomerError::Backup`] for a file that cannot be read or parsed, naming it.
pub fn read_all(dir: &Path) -> Result<Vec<ChannelBackup>, CustomerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CustomerError::Backup(format!("{}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CustomerError::Backup(e.to_string()))?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let named = |e: String| CustomerError::Backup(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| named(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| named(e.to_string()))?;
        out.push(ChannelBackup::from_json(&v).map_err(|e| named(e.to_string()))?);
    }
    out.sort_by_key(|b| (b.expiry.to_consensus_u32(), b.funding));
    Ok(out)
}

/// What became of one backed-up channel at a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Its refund was broadcast.
    Refunded {
        /// The channel.
        funding: OutPoint,
        /// The refund.
        txid: Txid,
    },
    /// The deposit is still locked: the refund is valid once median-time-past passes the
    /// expiry (or the tip reaches it, for a height).
    Locked {
        /// The channel.
        funding: OutPoint,
        /// The expiry.
        expiry: LockTime,
    },
    /// A dispute channel's trigger (with a child paying for it) was broadcast: the refund
    /// follows once the trigger has the dispute period's confirmations (restore again then).
    Triggered {
        /// The channel.
        funding: OutPoint,
        /// The trigger.
        trigger: Txid,
    },
    /// A dispute channel's trigger is out; its refund is valid after `remaining` more blocks.
    Disputed {
        /// The channel.
        funding: OutPoint,
        /// Blocks until the refund is valid.
        remaining: u32,
    },
    /// The deposit is spent already (settled, refunded) or was never funded.
    Spent {
        /// The channel.
        funding: OutPoint,
    },
}

/// Refunds every backed-up channel of `dir` whose expiry has passed and whose deposit is
/// unspent, to fresh addresses of `wallet`, at `fee_rate`; keys come from the wallet's
/// mnemonic (`KeyChain::CUSTOMER`). No channel store is needed.
///
/// # Errors
/// [`CustomerError::Backup`] for unreadable files or a backup whose key is not this wallet's;
/// chain errors; the node's refusal of a refund.
pub fn refund_from_backups(
    dir: &Path,
    wallet: &mut Wallet,
    chain: &dyn ChainSource,
    fee_rate: FeeRate,
) -> Result<Vec<Restored>, CustomerError> {
    let keys = wallet.key_chain(KeyChain::CUSTOMER)?;
    let tip = chain.tip()?;
    let mtp = chain.median_time_past()?;
    let mut out = Vec::new();
    for b in read_all(dir)? {
        let key = keys.secret(b.customer_key_index)?;
        if PublicKey::from_secret_key(paychan_core::sig::secp(), &key) != b.customer {
            return Err(CustomerError::Backup(format!(
                "channel {}: key {} of this wallet is not the channel's customer key (another wallet's backup?)",
                b.funding, b.customer_key_index
            )));
        }
        if let Some(d) = &b.dispute {
            out.push(restore_dispute(&b, d, &key, wallet, chain, fee_rate)?);
            continue;
        }
        if chain.utxo(&b.funding)?.is_none() {
            out.push(Restored::Spent { funding: b.funding });
            continue;
        }
        let due = match b.expiry {
            LockTime::Blocks(h) => tip.height >= h.to_consensus_u32(),
            LockTime::Seconds(t) => mtp > t.to_consensus_u32(),
        };
        if !due {
            out.push(Restored::Locked { funding: b.funding, expiry: b.expiry });
            continue;
        }
        let destination = wallet.new_address()?.script_pubkey();
        let params = b.params(&destination)?;
        let refund = build_refund(&params, &key, destination, fee_rate)?;
        let txid = chain.broadcast(&refund)?;
        out.push(Restored::Refunded { funding: b.funding, txid });
    }
    Ok(out)
}

/// A dispute channel from its backup: the trigger (and a child paying for it) while the
/// funding is unspent; the refund once the trigger has the period's confirmations.
fn restore_dispute(
    b: &ChannelBackup,
    d: &DisputeBackup,
    key: &paychan_core::bitcoin::secp256k1::SecretKey,
    wallet: &mut Wallet,
    chain: &dyn ChainSource,
    fee_rate: FeeRate,
) -> Result<Restored, CustomerError> {
    let funding = b.funding;
    let trigger_txid = d.trigger.compute_txid();
    if chain.utxo(&funding)?.is_some() {
        let anchor = OutPoint { txid: trigger_txid, vout: paychan_core::tx::dispute::ANCHOR_VOUT };
        let child = wallet.build_anchor_child(
            anchor,
            paychan_core::tx::dispute::anchor_output(),
            d.trigger.weight(),
            fee_rate,
        )?;
        chain.broadcast_with_parent(&d.trigger, &child)?;
        return Ok(Restored::Triggered { funding, trigger: trigger_txid });
    }
    let output = OutPoint { txid: trigger_txid, vout: paychan_core::tx::dispute::CHANNEL_VOUT };
    let Some(utxo) = chain.utxo(&output)? else {
        // Settled, closed cooperatively, refunded already, or never funded.
        return Ok(Restored::Spent { funding });
    };
    if utxo.confirmations < u32::from(d.blocks) {
        return Ok(Restored::Disputed {
            funding,
            remaining: u32::from(d.blocks) - utxo.confirmations,
        });
    }
    let destination = wallet.new_address()?.script_pubkey();
    let params = b.params(&destination)?;
    let refund = build_refund(&params, key, destination, fee_rate)?;
    let txid = chain.broadcast(&refund)?;
    Ok(Restored::Refunded { funding, txid })
}
