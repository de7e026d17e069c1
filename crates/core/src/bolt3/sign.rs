//! Signatures over BOLT 3 transactions. All inputs are P2WSH (BIP 143 sighash); signatures are
//! deterministic (RFC 6979), as the BOLT 3 vectors are. On the wire (BOLT 2) a signature is its
//! 64-byte compact form and the sighash type is implied by what is signed.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, Script, Transaction};

use crate::{sig, Error};

/// The BIP 143 signature hash of input `index` of `tx`, which spends a P2WSH output of `value`
/// with `witness_script`.
///
/// # Errors
/// [`Error::Signing`] when `index` is not an input of `tx`.
pub fn sighash(
    tx: &Transaction,
    index: usize,
    witness_script: &Script,
    value: u64,
    flag: EcdsaSighashType,
) -> Result<Message, Error> {
    SighashCache::new(tx)
        .p2wsh_signature_hash(index, witness_script, Amount::from_sat(value), flag)
        .map(|h| Message::from_digest(h.to_byte_array()))
        .map_err(|_| Error::Signing("input index out of range"))
}

/// Signs input `index` of `tx` (RFC 6979, no grinding).
///
/// # Errors
/// As [`sighash`].
pub fn sign(
    tx: &Transaction,
    index: usize,
    witness_script: &Script,
    value: u64,
    flag: EcdsaSighashType,
    key: &SecretKey,
) -> Result<Signature, Error> {
    let msg = sighash(tx, index, witness_script, value, flag)?;
    Ok(sig::secp().sign_ecdsa(&msg, key))
}

/// Checks `signature` by `key` over input `index` of `tx`.
///
/// # Errors
/// [`Error::BadSignature`] when it does not verify; [`Error::SignatureHighS`] for a high-S
/// signature (non-standard in a witness); as [`sighash`].
pub fn verify(
    tx: &Transaction,
    index: usize,
    witness_script: &Script,
    value: u64,
    flag: EcdsaSighashType,
    signature: &Signature,
    key: &PublicKey,
) -> Result<(), Error> {
    let mut normalized = *signature;
    normalized.normalize_s();
    if normalized != *signature {
        return Err(Error::SignatureHighS);
    }
    let msg = sighash(tx, index, witness_script, value, flag)?;
    sig::secp().verify_ecdsa(&msg, signature, key).map_err(|_| Error::BadSignature)
}

/// A signature as BOLT 2 sends it (`commitment_signed`, `closing_signed`, …): 64 bytes,
/// `r || s`, no sighash byte.
pub fn to_wire(signature: &Signature) -> [u8; 64] {
    signature.serialize_compact()
}

/// Reads a BOLT 2 signature, refusing what BOLT 2 says to refuse: an invalid encoding or a
/// high S ("non-compliant with the LOW-S-standard rule").
///
/// # Errors
/// [`Error::Bolt3`] for bytes that are not a signature; [`Error::SignatureHighS`].
pub fn from_wire(bytes: &[u8; 64]) -> Result<Signature, Error> {
    let s = Signature::from_compact(bytes).map_err(|_| Error::Bolt3("not a compact signature"))?;
    let mut low = s;
    low.normalize_s();
    if low != s {
        return Err(Error::SignatureHighS);
    }
    Ok(s)
}

/// A signature as a witness item: DER plus the sighash byte.
pub fn witness_item(signature: &Signature, flag: EcdsaSighashType) -> Vec<u8> {
    sig::serialize(signature, flag)
}
