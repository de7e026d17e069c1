//! Per-channel keys (DESIGN §8): `m/1017'/account'/i'` from a seed (account 0 for merchant
//! channels, 1 for customer channels), with the next index stored durably before a key is
//! handed out, so no key is ever issued twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use paychan_core::bitcoin::bip32::{ChildNumber, Xpriv};
use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
use paychan_core::bitcoin::NetworkKind;

use crate::{io, WalletError};

/// A chain of per-channel keys.
pub struct KeyChain {
    master: Xpriv,
    account: u32,
    counter: PathBuf,
    next: Mutex<u32>,
}

impl std::fmt::Debug for KeyChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyChain").field("counter", &self.counter).finish_non_exhaustive()
    }
}

const PURPOSE: u32 = 1017;

impl KeyChain {
    /// Merchant channel keys.
    pub const MERCHANT: u32 = 0;
    /// Customer channel keys.
    pub const CUSTOMER: u32 = 1;

    /// A key chain from `seed` for `account`, keeping its counter in
    /// `dir/keys-<account>.next`.
    ///
    /// # Errors
    /// [`WalletError::Io`] when the counter cannot be read.
    pub fn open(
        dir: &Path,
        seed: &[u8],
        network: impl Into<NetworkKind>,
        account: u32,
    ) -> Result<Self, WalletError> {
        let master =
            Xpriv::new_master(network, seed).map_err(|e| WalletError::Build(e.to_string()))?;
        Self::from_master(dir, master, account)
    }

    /// A key chain under `master` for `account` (see [`KeyChain::open`]).
    ///
    /// # Errors
    /// [`WalletError::Io`] when the counter cannot be read.
    pub fn from_master(dir: &Path, master: Xpriv, account: u32) -> Result<Self, WalletError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let counter = dir.join(format!("keys-{account}.next"));
        let next = match std::fs::read_to_string(&counter) {
            Ok(s) => s.trim().parse().map_err(|_| {
                WalletError::Build(format!("{} does not hold a number", counter.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&counter, e)),
        };
        Ok(KeyChain { master, account, counter, next: Mutex::new(next) })
    }

    /// Hands out a fresh key: its index and public key. The counter is durable first.
    ///
    /// # Errors
    /// [`WalletError::Io`] when the counter cannot be written.
    pub fn issue(&self) -> Result<(u32, PublicKey), WalletError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let index = *next;
        self.store_next(index.checked_add(1).ok_or_else(|| self.exhausted())?)?;
        *next = index + 1;
        let key = self.secret(index)?;
        Ok((index, PublicKey::from_secret_key(paychan_core::sig::secp(), &key)))
    }

    /// The lowest index no channel uses yet, and its public key: the key to offer a peer that
    /// may open a channel. Nothing is written, so offering keys to anyone costs nothing; the
    /// index is taken with [`KeyChain::mark_used`] when a channel is opened with it.
    ///
    /// # Errors
    /// Key errors (an index beyond the hardened range).
    pub fn peek(&self) -> Result<(u32, PublicKey), WalletError> {
        let index = *self.next.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.secret(index)?;
        Ok((index, PublicKey::from_secret_key(paychan_core::sig::secp(), &key)))
    }

    /// Records that a channel uses `index`: the counter moves past it (durably, before this
    /// returns) unless it is there already.
    ///
    /// # Errors
    /// [`WalletError::Io`] when the counter cannot be written.
    pub fn mark_used(&self, index: u32) -> Result<(), WalletError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if index < *next {
            return Ok(());
        }
        let after = index.checked_add(1).ok_or_else(|| self.exhausted())?;
        self.store_next(after)?;
        *next = after;
        Ok(())
    }

    /// The directory its counter lives in (the wallet's).
    pub fn dir(&self) -> &Path {
        self.counter.parent().unwrap_or(Path::new("."))
    }

    /// The key account (m/1017'/account'/…): [`KeyChain::MERCHANT`] or [`KeyChain::CUSTOMER`].
    pub fn account(&self) -> u32 {
        self.account
    }

    /// The next index [`KeyChain::peek`] offers.
    pub fn next_index(&self) -> u32 {
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exhausted(&self) -> WalletError {
        WalletError::Build(format!("{}: every key index is used", self.counter.display()))
    }

    /// Writes the counter: a temporary file, fsynced, renamed over the old one.
    fn store_next(&self, value: u32) -> Result<(), WalletError> {
        let tmp = self.counter.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(value.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.counter)?;
            // The rename itself is durable only once the directory is.
            if let Some(dir) = self.counter.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| io(&self.counter, e))
    }

    /// The secret key of index `index`.
    ///
    /// # Errors
    /// [`WalletError::Keys`] for an index beyond the hardened range.
    pub fn secret(&self, index: u32) -> Result<SecretKey, WalletError> {
        let path = [
            ChildNumber::from_hardened_idx(PURPOSE),
            ChildNumber::from_hardened_idx(self.account),
            ChildNumber::from_hardened_idx(index),
        ];
        let mut children = Vec::with_capacity(3);
        for c in path {
            children.push(c.map_err(|e| WalletError::Build(e.to_string()))?);
        }
        let child = self
            .master
            .derive_priv(paychan_core::sig::secp(), &children)
            .map_err(|e| WalletError::Build(e.to_string()))?;
        Ok(child.private_key)
    }
}
