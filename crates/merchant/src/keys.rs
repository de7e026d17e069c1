//! Per-channel merchant keys (DESIGN §8): `m/1017'/0'/i'` from the merchant's seed, with the
//! next index stored durably before a key is handed out, so no key is ever issued twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use paychan_core::bitcoin::bip32::{ChildNumber, Xpriv};
use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
use paychan_core::bitcoin::Network;

use crate::MerchantError;

/// The merchant's key chain.
pub struct KeyChain {
    master: Xpriv,
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
    /// A key chain from `seed`, keeping its counter in `dir/keys.next`.
    ///
    /// # Errors
    /// [`MerchantError::Io`] when the counter cannot be read.
    pub fn open(dir: &Path, seed: &[u8; 32], network: Network) -> Result<Self, MerchantError> {
        let master =
            Xpriv::new_master(network, seed).map_err(|e| MerchantError::Keys(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(|e| MerchantError::io(dir, e))?;
        let counter = dir.join("keys.next");
        let next = match std::fs::read_to_string(&counter) {
            Ok(s) => s.trim().parse().map_err(|_| {
                MerchantError::Keys(format!("{} does not hold a number", counter.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(MerchantError::io(&counter, e)),
        };
        Ok(KeyChain { master, counter, next: Mutex::new(next) })
    }

    /// Hands out a fresh key: its index and public key. The counter is durable first.
    ///
    /// # Errors
    /// [`MerchantError::Io`] when the counter cannot be written.
    pub fn issue(&self) -> Result<(u32, PublicKey), MerchantError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let index = *next;
        let tmp = self.counter.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all((index + 1).to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.counter)
        };
        write().map_err(|e| MerchantError::io(&self.counter, e))?;
        *next = index + 1;
        let key = self.secret(index)?;
        Ok((index, PublicKey::from_secret_key(paychan_core::sig::secp(), &key)))
    }

    /// The secret key of index `index`.
    ///
    /// # Errors
    /// [`MerchantError::Keys`] for an index beyond the hardened range.
    pub fn secret(&self, index: u32) -> Result<SecretKey, MerchantError> {
        let path = [
            ChildNumber::from_hardened_idx(PURPOSE),
            ChildNumber::from_hardened_idx(0),
            ChildNumber::from_hardened_idx(index),
        ];
        let mut children = Vec::with_capacity(3);
        for c in path {
            children.push(c.map_err(|e| MerchantError::Keys(e.to_string()))?);
        }
        let child = self
            .master
            .derive_priv(paychan_core::sig::secp(), &children)
            .map_err(|e| MerchantError::Keys(e.to_string()))?;
        Ok(child.private_key)
    }
}
