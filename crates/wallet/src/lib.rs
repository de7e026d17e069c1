//! # paychan-wallet
//!
//! The on-chain wallet (DESIGN §4): a BIP 39 mnemonic, BIP 84 (`wpkh`) descriptors, BDK's
//! wallet persisted in SQLite in the data directory, synced block by block from any
//! [`ChainSource`] (the embedded node or bitcoind), and able to fund a channel deposit, receive
//! settlements and refunds to fresh addresses, and send.
//!
//! Files in the data directory: `mnemonic` (the secret, mode 0600, never logged) and
//! `wallet.sqlite` (BDK's store, mode 0600: it holds descriptors with private keys).

#![deny(missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

mod keys;

pub use keys::KeyChain;

use bdk_wallet::chain::BlockId;
use bdk_wallet::rusqlite::Connection;
use bdk_wallet::{Balance, KeychainKind, PersistedWallet, SignOptions};
use bip39::Mnemonic;
use paychan_chain::{ChainError, ChainSource};
use paychan_core::bitcoin::bip32::Xpriv;
use paychan_core::bitcoin::{
    Address, Amount, FeeRate, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid,
    Weight, Witness,
};

/// The size [`Wallet::build_anchor_child`] pays for itself: the anchor, one P2WPKH coin and
/// the change, with room for a second coin.
pub const ANCHOR_CHILD_VBYTES: u64 = 250;
use tracing::{debug, info};

/// Errors of the wallet. None of them carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// A wallet exists already in the directory.
    #[error("a wallet exists already in {0}")]
    Exists(PathBuf),
    /// No wallet in the directory.
    #[error("no wallet in {0}: create one with `paychan wallet new`")]
    Missing(PathBuf),
    /// The mnemonic is not a valid BIP 39 phrase (the phrase itself is not repeated).
    #[error("invalid mnemonic: {0}")]
    BadMnemonic(String),
    /// The wallet cannot pay: not enough confirmed funds, dust, etc.
    #[error("cannot build the transaction: {0}")]
    Build(String),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The chain source failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The wallet's database failed.
    #[error("wallet database: {0}")]
    Database(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> WalletError {
    WalletError::Io { path: path.to_path_buf(), source }
}

fn database(e: impl std::fmt::Display) -> WalletError {
    WalletError::Database(e.to_string())
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// The tip height synced to.
    pub height: u32,
    /// Blocks applied (after a reorg, from the fork point).
    pub blocks: u32,
    /// Mempool transactions seen.
    pub mempool: usize,
}

/// The on-chain wallet.
pub struct Wallet {
    inner: PersistedWallet<Connection>,
    db: Connection,
    xprv: Xpriv,
    dir: PathBuf,
    /// Mempool transactions already read: each is fetched once, not at every sync.
    mempool_seen: std::collections::HashSet<Txid>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet").field("dir", &self.dir).finish_non_exhaustive()
    }
}

const MNEMONIC_FILE: &str = "mnemonic";
/// The height below which the wallet has no transactions (its creation's tip).
const BIRTHDAY_FILE: &str = "birthday";
const DB_FILE: &str = "wallet.sqlite";

fn write_secret(path: &Path, contents: &str) -> Result<(), WalletError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

fn make_private(path: &Path) -> Result<(), WalletError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(path, e))?;
    }
    Ok(())
}

fn descriptors(xprv: &Xpriv, network: Network) -> (String, String) {
    let coin = if network == Network::Bitcoin { 0 } else { 1 };
    (format!("wpkh({xprv}/84'/{coin}'/0'/0/*)"), format!("wpkh({xprv}/84'/{coin}'/0'/1/*)"))
}

fn xprv_of(mnemonic: &Mnemonic, network: Network) -> Result<Xpriv, WalletError> {
    Xpriv::new_master(network, &mnemonic.to_seed("")).map_err(|e| WalletError::Build(e.to_string()))
}

impl Wallet {
    /// Creates a wallet in `dir` from `mnemonic`, or from a fresh 12-word mnemonic.
    ///
    /// # Errors
    /// [`WalletError::Exists`] when `dir` has a wallet; [`WalletError::BadMnemonic`].
    pub fn create(
        dir: &Path,
        network: Network,
        mnemonic: Option<&str>,
    ) -> Result<Self, WalletError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let secret = dir.join(MNEMONIC_FILE);
        if secret.exists() || dir.join(DB_FILE).exists() {
            return Err(WalletError::Exists(dir.to_path_buf()));
        }
        let mnemonic = match mnemonic {
            Some(words) => Mnemonic::parse(words.trim())
                .map_err(|e| WalletError::BadMnemonic(e.to_string()))?,
            None => {
                let mut entropy = [0u8; 16];
                getrandom::getrandom(&mut entropy)
                    .map_err(|e| WalletError::Build(format!("no randomness: {e}")))?;
                Mnemonic::from_entropy(&entropy)
                    .map_err(|e| WalletError::BadMnemonic(e.to_string()))?
            }
        };
        let xprv = xprv_of(&mnemonic, network)?;
        write_secret(&secret, &mnemonic.to_string())?;
        let db_path = dir.join(DB_FILE);
        let mut db = Connection::open(&db_path).map_err(database)?;
        make_private(&db_path)?;
        let (ext, int) = descriptors(&xprv, network);
        let inner = bdk_wallet::Wallet::create(ext, int)
            .network(network)
            .create_wallet(&mut db)
            .map_err(database)?;
        info!(dir = %dir.display(), "wallet created");
        Ok(Wallet { inner, db, xprv, dir: dir.to_path_buf(), mempool_seen: Default::default() })
    }

    /// Opens the wallet in `dir`.
    ///
    /// # Errors
    /// [`WalletError::Missing`]; [`WalletError::Database`].
    pub fn open(dir: &Path, network: Network) -> Result<Self, WalletError> {
        let secret = dir.join(MNEMONIC_FILE);
        let words = match std::fs::read_to_string(&secret) {
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalletError::Missing(dir.to_path_buf()))
            }
            Err(e) => return Err(io(&secret, e)),
        };
        let mnemonic = Mnemonic::parse(words.trim())
            .map_err(|_| WalletError::BadMnemonic(format!("{} is damaged", secret.display())))?;
        let xprv = xprv_of(&mnemonic, network)?;
        let mut db = Connection::open(dir.join(DB_FILE)).map_err(database)?;
        let (ext, int) = descriptors(&xprv, network);
        let inner = bdk_wallet::Wallet::load()
            .descriptor(KeychainKind::External, Some(ext))
            .descriptor(KeychainKind::Internal, Some(int))
            .check_network(network)
            .load_wallet(&mut db)
            .map_err(database)?
            .ok_or_else(|| WalletError::Missing(dir.to_path_buf()))?;
        Ok(Wallet { inner, db, xprv, dir: dir.to_path_buf(), mempool_seen: Default::default() })
    }

    /// Opens the wallet in `dir`, creating one (with a fresh mnemonic) if there is none.
    ///
    /// # Errors
    /// As [`Wallet::open`] and [`Wallet::create`].
    pub fn open_or_create(dir: &Path, network: Network) -> Result<Self, WalletError> {
        match Self::open(dir, network) {
            Err(WalletError::Missing(_)) => Self::create(dir, network, None),
            other => other,
        }
    }

    /// The wallet's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The receiving descriptor, with public keys only (`wpkh([fingerprint/84'/coin'/0']xpub…/0/*)`).
    pub fn public_descriptor(&self) -> String {
        self.inner.public_descriptor(KeychainKind::External).to_string()
    }

    fn persist(&mut self) -> Result<(), WalletError> {
        self.inner.persist(&mut self.db).map_err(database)?;
        Ok(())
    }

    /// A fresh receiving address (never handed out before).
    ///
    /// # Errors
    /// [`WalletError::Database`] when the reveal cannot be stored.
    pub fn new_address(&mut self) -> Result<Address, WalletError> {
        let a = self.inner.reveal_next_address(KeychainKind::External).address;
        self.persist()?;
        Ok(a)
    }

    /// The balance, as of the last sync.
    pub fn balance(&self) -> Balance {
        self.inner.balance()
    }

    /// Records that the wallet has no transaction below `height` (a fresh wallet: the tip at
    /// its creation), so that its first sync starts there instead of at the genesis block —
    /// hours of blocks on a real network, and blocks a pruned node no longer has.
    ///
    /// # Errors
    /// [`WalletError::Io`] when the file cannot be written.
    pub fn set_birthday(&mut self, height: u32) -> Result<(), WalletError> {
        let path = self.dir.join(BIRTHDAY_FILE);
        std::fs::write(&path, format!("{height}\n")).map_err(|e| io(&path, e))
    }

    /// The height set by [`Wallet::set_birthday`]; 0 when none was.
    pub fn birthday(&self) -> u32 {
        std::fs::read_to_string(self.dir.join(BIRTHDAY_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Height of the last synced block.
    pub fn synced_height(&self) -> u32 {
        self.inner.latest_checkpoint().height()
    }

    /// Brings the wallet to `chain`'s tip, following reorgs, then reads the mempool.
    ///
    /// A reorg is followed when the new branch's blocks arrive: applying them from the fork
    /// point displaces the old branch. (BDK's local chain only moves forward, so blocks
    /// disconnected with nothing yet in their place stay in the wallet's view until then.)
    ///
    /// # Errors
    /// [`WalletError::Chain`]; [`WalletError::Database`].
    pub fn sync(&mut self, chain: &dyn ChainSource) -> Result<SyncReport, WalletError> {
        let tip = chain.tip()?;
        // The highest checkpoint the chain still has: the fork point after a reorg.
        let mut agree = None;
        for cp in self.inner.latest_checkpoint().iter() {
            if chain.block_hash(cp.height())? == Some(cp.hash()) {
                agree = Some(cp.block_id());
                break;
            }
        }
        let mut from = agree.map_or(0, |b: BlockId| b.height + 1);
        // A wallet born later has nothing in the blocks before: start at its birthday, the
        // first block connected to the checkpoint the chain agrees with.
        let mut skipped_to = None;
        if agree.is_some() && self.birthday() > from {
            from = self.birthday();
            skipped_to = agree;
        }
        let mut blocks = 0;
        for height in from..=tip.height {
            let Some(hash) = chain.block_hash(height)? else { break };
            let block = chain.block(&hash)?;
            let prev = match skipped_to.take() {
                Some(agreed) => agreed,
                None => {
                    BlockId { height: height.saturating_sub(1), hash: block.header.prev_blockhash }
                }
            };
            let result = if height == 0 {
                Ok(())
            } else {
                self.inner.apply_block_connected_to(&block, height, prev).map(|_| ())
            };
            result
                .map_err(|e| WalletError::Database(format!("cannot apply block {height}: {e}")))?;
            blocks += 1;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut unconfirmed = Vec::new();
        let in_mempool: std::collections::HashSet<Txid> = chain.mempool()?.into_iter().collect();
        self.mempool_seen.retain(|t| in_mempool.contains(t));
        for txid in in_mempool {
            if !self.mempool_seen.contains(&txid) {
                if let Some(tx) = chain.mempool_transaction(&txid)? {
                    unconfirmed.push((tx, now));
                }
                self.mempool_seen.insert(txid);
            }
        }
        let mempool = unconfirmed.len();
        self.inner.apply_unconfirmed_txs(unconfirmed);
        self.persist()?;
        debug!(height = tip.height, blocks, "wallet synced");
        Ok(SyncReport { height: tip.height, blocks, mempool })
    }

    /// Builds and signs a transaction paying `amount` to `script_pubkey` at `fee_rate` from
    /// confirmed (and own unconfirmed) coins, with change to a fresh internal address. Not
    /// broadcast: a channel's funding is stored and sent to the merchant first (DESIGN §2).
    /// Returns the transaction and its fee.
    ///
    /// # Errors
    /// [`WalletError::Build`] (e.g. insufficient funds) or [`WalletError::Sign`].
    pub fn build_payment(
        &mut self,
        script_pubkey: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<(Transaction, Amount), WalletError> {
        let mut builder = self.inner.build_tx();
        builder.add_recipient(script_pubkey, amount);
        builder.fee_rate(fee_rate);
        let psbt = builder.finish().map_err(|e| WalletError::Build(e.to_string()))?;
        let tx = self.sign_and_keep(psbt)?;
        let fee = self.inner.calculate_fee(&tx).map_err(|e| WalletError::Build(e.to_string()))?;
        Ok((tx, fee))
    }

    /// A version-3 child of a zero-fee TRUC parent (a dispute channel's trigger): it spends
    /// the parent's pay-to-anchor output `anchor` (empty witness) and confirmed coins of this
    /// wallet (a TRUC child may not spend unconfirmed non-TRUC outputs), and returns the rest
    /// to the wallet. Its fee pays `fee_rate` for the parent (`parent_weight`) and for itself,
    /// counted as [`ANCHOR_CHILD_VBYTES`] (more inputs make its rate a little lower). Signed,
    /// not broadcast: send it with the parent as a package.
    ///
    /// # Errors
    /// [`WalletError::Build`] (no confirmed coin to pay with) or [`WalletError::Sign`].
    pub fn build_anchor_child(
        &mut self,
        anchor: OutPoint,
        anchor_output: TxOut,
        parent_weight: Weight,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        let build = |e: &dyn std::fmt::Display| WalletError::Build(e.to_string());
        let allowance = parent_weight + Weight::from_vb(ANCHOR_CHILD_VBYTES).unwrap_or(Weight::MAX);
        let fee = fee_rate.fee_wu(allowance).ok_or_else(|| build(&"the fee overflows"))?;
        let change = self.inner.reveal_next_address(KeychainKind::Internal).script_pubkey();
        let input = bdk_wallet::bitcoin::psbt::Input {
            witness_utxo: Some(anchor_output),
            // Already final: anyone spends a pay-to-anchor output with an empty witness.
            final_script_witness: Some(Witness::new()),
            ..Default::default()
        };
        let mut builder = self.inner.build_tx();
        builder
            .version(3)
            .exclude_unconfirmed()
            .only_witness_utxo()
            .add_foreign_utxo_with_sequence(
                anchor,
                input,
                Weight::from_wu(1),
                Sequence::ENABLE_RBF_NO_LOCKTIME,
            )
            .map_err(|e| build(&e))?
            .drain_to(change)
            .fee_absolute(fee);
        let psbt = builder.finish().map_err(|e| build(&e))?;
        self.sign_and_keep(psbt)
    }

    /// Signs the wallet's inputs of `psbt` (inputs already final, such as a pay-to-anchor
    /// spend, are no key's and stay as they are), finalises it, and records the transaction
    /// as the wallet's own unconfirmed one (its coins spent, its change address handed out).
    fn sign_and_keep(
        &mut self,
        mut psbt: bdk_wallet::bitcoin::Psbt,
    ) -> Result<Transaction, WalletError> {
        if let Err((_, errors)) = psbt.sign(&self.xprv, self.inner.secp_ctx()) {
            let own_failed = errors.keys().any(|i| {
                psbt.inputs.get(*i).is_some_and(|input| input.final_script_witness.is_none())
            });
            if own_failed {
                return Err(WalletError::Sign("the wallet's keys do not sign its inputs".into()));
            }
        }
        let finalized = self
            .inner
            .finalize_psbt(&mut psbt, SignOptions::default())
            .map_err(|e| WalletError::Sign(e.to_string()))?;
        if !finalized {
            return Err(WalletError::Sign("the transaction could not be finalised".into()));
        }
        let tx = psbt.extract_tx().map_err(|e| WalletError::Sign(e.to_string()))?;
        self.inner.apply_unconfirmed_txs([(tx.clone(), 0)]);
        self.persist()?;
        Ok(tx)
    }

    /// Forgets a transaction built by [`Wallet::build_payment`] that will never be broadcast
    /// (a channel the merchant refused): its coins are free again.
    ///
    /// # Errors
    /// [`WalletError::Database`].
    pub fn forget(&mut self, txid: Txid) -> Result<(), WalletError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.inner.apply_evicted_txs([(txid, now.max(1))]);
        self.persist()
    }

    /// Pays `amount` to `address` and broadcasts it through `chain`.
    ///
    /// # Errors
    /// As [`Wallet::build_payment`]; [`WalletError::Chain`] when the node refuses it.
    pub fn send(
        &mut self,
        chain: &dyn ChainSource,
        address: &Address,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Txid, WalletError> {
        let (tx, _) = self.build_payment(address.script_pubkey(), amount, fee_rate)?;
        Ok(chain.broadcast(&tx)?)
    }

    /// The key chain for channel keys of `account` ([`KeyChain::MERCHANT`] or
    /// [`KeyChain::CUSTOMER`]), derived from this wallet's seed.
    ///
    /// # Errors
    /// [`WalletError::Io`] when its counter cannot be read.
    pub fn key_chain(&self, account: u32) -> Result<KeyChain, WalletError> {
        KeyChain::from_master(&self.dir, self.xprv, account)
    }

    /// [`Wallet::key_chain`] keeping its files (counter, instance id) in `dir`: another
    /// instance of the same merchant, with its own home, on the same seed.
    ///
    /// # Errors
    /// As [`Wallet::key_chain`].
    pub fn key_chain_in(&self, dir: &Path, account: u32) -> Result<KeyChain, WalletError> {
        KeyChain::from_master(dir, self.xprv, account)
    }

    /// Whether `script_pubkey` belongs to this wallet.
    pub fn is_mine(&self, script_pubkey: &ScriptBuf) -> bool {
        self.inner.is_mine(script_pubkey.clone())
    }
}
