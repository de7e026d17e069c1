//! BOLT 3 keys: per-commitment secrets and points, and the per-commitment keys derived from
//! each side's basepoints ("Key Derivation").
//!
//! ```text
//! pubkey            = basepoint + SHA256(per_commitment_point || basepoint) · G
//! privkey           = basepoint_secret + SHA256(per_commitment_point || basepoint)
//! revocationpubkey  = revocation_basepoint · SHA256(revocation_basepoint || per_commitment_point)
//!                   + per_commitment_point · SHA256(per_commitment_point || revocation_basepoint)
//! revocationprivkey = revocation_basepoint_secret · SHA256(revocation_basepoint || per_commitment_point)
//!                   + per_commitment_secret · SHA256(per_commitment_point || revocation_basepoint)
//! ```
//!
//! The same formula gives `localpubkey`, `local_htlcpubkey`, `remote_htlcpubkey` and
//! `local_delayedpubkey`; with `option_static_remotekey` the `remotepubkey` is the remote
//! `payment_basepoint` itself.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{PublicKey, Scalar, SecretKey};

use crate::{sig, Error};

/// The highest per-commitment index; commitment number `n` uses index `FIRST_INDEX - n`.
pub const FIRST_INDEX: u64 = (1 << 48) - 1;

/// The per-commitment index (BOLT 3 counts down from 2⁴⁸−1) of commitment number `n`.
///
/// # Errors
/// [`Error::Bolt3`] when `n` is above 2⁴⁸−1.
pub fn index_of(commitment_number: u64) -> Result<u64, Error> {
    FIRST_INDEX.checked_sub(commitment_number).ok_or(Error::Bolt3("commitment number above 2^48-1"))
}

/// `generate_from_seed(seed, I)`: the per-commitment secret at index `index` (48 bits) of the
/// shachain rooted at `seed`.
pub fn commitment_secret(seed: &[u8; 32], index: u64) -> [u8; 32] {
    derive_from(*seed, 48, index)
}

/// Walks from a secret known for bits `0..bits` of an index down to `index`: for each set bit
/// `b` below `bits`, highest first, flip bit `b` of the value and hash it.
pub(crate) fn derive_from(mut p: [u8; 32], bits: u8, index: u64) -> [u8; 32] {
    for b in (0..bits).rev() {
        if index >> b & 1 == 1 {
            p[usize::from(b / 8)] ^= 1 << (b % 8);
            p = sha256::Hash::hash(&p).to_byte_array();
        }
    }
    p
}

/// The per-commitment point of a per-commitment secret.
///
/// # Errors
/// [`Error::Bolt3`] when the secret is zero or not below the curve order.
pub fn per_commitment_point(secret: &[u8; 32]) -> Result<PublicKey, Error> {
    let sk = SecretKey::from_slice(secret)
        .map_err(|_| Error::Bolt3("per-commitment secret is not a valid private key"))?;
    Ok(PublicKey::from_secret_key(sig::secp(), &sk))
}

fn tweak(first: &PublicKey, second: &PublicKey) -> Result<Scalar, Error> {
    let mut e = sha256::Hash::engine();
    e.input(&first.serialize());
    e.input(&second.serialize());
    Scalar::from_be_bytes(sha256::Hash::from_engine(e).to_byte_array())
        .map_err(|_| Error::Bolt3("key tweak is not below the curve order"))
}

/// `localpubkey`, `htlcpubkey` and `delayedpubkey`: `basepoint + SHA256(point || basepoint)·G`.
///
/// # Errors
/// [`Error::Bolt3`] in the negligible case that the tweak is out of range or gives infinity.
pub fn derive_pubkey(
    basepoint: &PublicKey,
    per_commitment_point: &PublicKey,
) -> Result<PublicKey, Error> {
    let t = tweak(per_commitment_point, basepoint)?;
    basepoint.add_exp_tweak(sig::secp(), &t).map_err(|_| Error::Bolt3("derived key is infinity"))
}

/// The private key of [`derive_pubkey`]: `basepoint_secret + SHA256(point || basepoint)`.
///
/// # Errors
/// As [`derive_pubkey`].
pub fn derive_privkey(
    basepoint_secret: &SecretKey,
    per_commitment_point: &PublicKey,
) -> Result<SecretKey, Error> {
    let basepoint = PublicKey::from_secret_key(sig::secp(), basepoint_secret);
    let t = tweak(per_commitment_point, &basepoint)?;
    basepoint_secret.add_tweak(&t).map_err(|_| Error::Bolt3("derived key is zero"))
}

/// `revocationpubkey` from the countersignatory's revocation basepoint and the broadcaster's
/// per-commitment point.
///
/// # Errors
/// As [`derive_pubkey`].
pub fn revocation_pubkey(
    revocation_basepoint: &PublicKey,
    per_commitment_point: &PublicKey,
) -> Result<PublicKey, Error> {
    let a = revocation_basepoint
        .mul_tweak(sig::secp(), &tweak(revocation_basepoint, per_commitment_point)?)
        .map_err(|_| Error::Bolt3("revocation key part is infinity"))?;
    let b = per_commitment_point
        .mul_tweak(sig::secp(), &tweak(per_commitment_point, revocation_basepoint)?)
        .map_err(|_| Error::Bolt3("revocation key part is infinity"))?;
    a.combine(&b).map_err(|_| Error::Bolt3("revocation key is infinity"))
}

/// `revocationprivkey`: known only to the countersignatory once the broadcaster has revealed
/// `per_commitment_secret`.
///
/// # Errors
/// As [`derive_pubkey`], or when the secret is not a valid private key.
pub fn revocation_privkey(
    revocation_basepoint_secret: &SecretKey,
    per_commitment_secret: &[u8; 32],
) -> Result<SecretKey, Error> {
    let secp = sig::secp();
    let commitment_secret = SecretKey::from_slice(per_commitment_secret)
        .map_err(|_| Error::Bolt3("per-commitment secret is not a valid private key"))?;
    let revocation_basepoint = PublicKey::from_secret_key(secp, revocation_basepoint_secret);
    let point = PublicKey::from_secret_key(secp, &commitment_secret);
    let a = revocation_basepoint_secret
        .mul_tweak(&tweak(&revocation_basepoint, &point)?)
        .map_err(|_| Error::Bolt3("revocation key part is zero"))?;
    let b = commitment_secret
        .mul_tweak(&tweak(&point, &revocation_basepoint)?)
        .map_err(|_| Error::Bolt3("revocation key part is zero"))?;
    a.add_tweak(&Scalar::from(b)).map_err(|_| Error::Bolt3("revocation key is zero"))
}

/// One side's channel basepoints (BOLT 2 `open_channel` / `accept_channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basepoints {
    /// `funding_pubkey`.
    pub funding: PublicKey,
    /// `revocation_basepoint`.
    pub revocation: PublicKey,
    /// `payment_basepoint` (with `option_static_remotekey`, the `to_remote` key itself).
    pub payment: PublicKey,
    /// `delayed_payment_basepoint`.
    pub delayed_payment: PublicKey,
    /// `htlc_basepoint`.
    pub htlc: PublicKey,
}

/// One side's five base secrets, from which its [`Basepoints`] and every per-commitment
/// private key are derived.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseSecrets {
    /// The funding key.
    pub funding: SecretKey,
    /// The revocation basepoint secret.
    pub revocation: SecretKey,
    /// The payment basepoint secret.
    pub payment: SecretKey,
    /// The delayed payment basepoint secret.
    pub delayed_payment: SecretKey,
    /// The HTLC basepoint secret.
    pub htlc: SecretKey,
}

impl core::fmt::Debug for BaseSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BaseSecrets")
            .field("basepoints", &self.basepoints())
            .finish_non_exhaustive()
    }
}

impl BaseSecrets {
    /// The public basepoints.
    pub fn basepoints(&self) -> Basepoints {
        let p = |k: &SecretKey| PublicKey::from_secret_key(sig::secp(), k);
        Basepoints {
            funding: p(&self.funding),
            revocation: p(&self.revocation),
            payment: p(&self.payment),
            delayed_payment: p(&self.delayed_payment),
            htlc: p(&self.htlc),
        }
    }
}

/// The keys of one commitment transaction, seen from its broadcaster ("local").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitmentKeys {
    /// The broadcaster's per-commitment point.
    pub per_commitment_point: PublicKey,
    /// `revocationpubkey`: from the countersignatory's revocation basepoint.
    pub revocation: PublicKey,
    /// `local_delayedpubkey`: the broadcaster's delayed key.
    pub broadcaster_delayed: PublicKey,
    /// `local_htlcpubkey`.
    pub broadcaster_htlc: PublicKey,
    /// `remote_htlcpubkey`.
    pub countersignatory_htlc: PublicKey,
    /// `remotepubkey`: the countersignatory's `payment_basepoint` (`option_static_remotekey`).
    pub countersignatory_payment: PublicKey,
}

impl CommitmentKeys {
    /// Derives the keys of the commitment that `broadcaster` holds at `per_commitment_point`.
    ///
    /// # Errors
    /// As [`derive_pubkey`].
    pub fn derive(
        per_commitment_point: &PublicKey,
        broadcaster: &Basepoints,
        countersignatory: &Basepoints,
    ) -> Result<Self, Error> {
        Ok(CommitmentKeys {
            per_commitment_point: *per_commitment_point,
            revocation: revocation_pubkey(&countersignatory.revocation, per_commitment_point)?,
            broadcaster_delayed: derive_pubkey(&broadcaster.delayed_payment, per_commitment_point)?,
            broadcaster_htlc: derive_pubkey(&broadcaster.htlc, per_commitment_point)?,
            countersignatory_htlc: derive_pubkey(&countersignatory.htlc, per_commitment_point)?,
            countersignatory_payment: countersignatory.payment,
        })
    }
}

/// The 48-bit factor that obscures commitment numbers: the low 48 bits of
/// `SHA256(opener_payment_basepoint || accepter_payment_basepoint)`.
pub fn obscuring_factor(opener_payment: &PublicKey, accepter_payment: &PublicKey) -> u64 {
    let mut e = sha256::Hash::engine();
    e.input(&opener_payment.serialize());
    e.input(&accepter_payment.serialize());
    let h = sha256::Hash::from_engine(e).to_byte_array();
    h[26..32].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b))
}
