//! Justice transactions: once a peer broadcasts a commitment it has revoked, the other side
//! knows its `revocationprivkey` and takes every output of that commitment that pays the
//! cheater (`to_local`, offered and received HTLCs) and every output of its HTLC transactions, in
//! one transaction (BOLT 5 "Revoked Transaction Close Handling").

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::{PublicKey, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, VarInt, Witness};

use crate::bolt3::sign;
use crate::{sig, Error};

/// What a revoked output is, which decides its witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedKind {
    /// The cheater's `to_local` (witness `<sig> 1 <script>`).
    ToLocal,
    /// The output of the cheater's HTLC-timeout or HTLC-success transaction (the same script
    /// and witness as `to_local`).
    SecondStage,
    /// An HTLC output of the revoked commitment (witness `<sig> <revocationpubkey> <script>`).
    Htlc,
}

/// One output the justice transaction takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedOutput {
    /// The output.
    pub outpoint: OutPoint,
    /// Its value.
    pub value_sat: u64,
    /// Its witness script.
    pub witness_script: ScriptBuf,
    /// What it is.
    pub kind: RevokedKind,
}

impl RevokedOutput {
    /// The weight of this input's witness with a 73-byte signature (the largest).
    pub fn witness_weight(&self) -> u64 {
        let script_len = self.witness_script.len() as u64;
        let middle = match self.kind {
            RevokedKind::ToLocal | RevokedKind::SecondStage => 1 + 1, // [0x01]
            RevokedKind::Htlc => 1 + 33,                              // revocationpubkey
        };
        1 + (1 + 73) + middle + VarInt(script_len).size() as u64 + script_len
    }
}

/// Builds the unsigned justice transaction sweeping `outputs` to `destination` at
/// `feerate_per_kw` (fee rounded up, for the largest signatures). Every input signals
/// replaceability, so the sweep can be bumped.
///
/// # Errors
/// [`Error::Bolt3`] when there is nothing to sweep or the outputs cannot pay the fee and leave
/// a non-dust output.
pub fn build(
    outputs: &[RevokedOutput],
    destination: ScriptBuf,
    feerate_per_kw: u32,
) -> Result<Transaction, Error> {
    if outputs.is_empty() {
        return Err(Error::Bolt3("a justice transaction needs at least one revoked output"));
    }
    let total: u64 = outputs.iter().map(|o| o.value_sat).sum();
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: outputs
            .iter()
            .map(|o| TxIn {
                previous_output: o.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![TxOut { value: Amount::ZERO, script_pubkey: destination }],
    };
    // Segwit marker and flag (2) plus every witness.
    let weight =
        tx.weight().to_wu() + 2 + outputs.iter().map(RevokedOutput::witness_weight).sum::<u64>();
    let fee = (u64::from(feerate_per_kw) * weight).div_ceil(1000);
    let value = total
        .checked_sub(fee)
        .filter(|v| Amount::from_sat(*v) >= tx.output[0].script_pubkey.minimal_non_dust())
        .ok_or(Error::Bolt3(
            "the revoked outputs cannot pay the justice fee and leave a non-dust output",
        ))?;
    tx.output[0].value = Amount::from_sat(value);
    Ok(tx)
}

/// Signs every input of `tx` (built by [`build`] from `outputs`) with `revocation_key` and
/// writes the witnesses.
///
/// # Errors
/// [`Error::Bolt3`] when `tx` does not spend `outputs` in order; as [`sign::sign`].
pub fn sign_all(
    tx: &Transaction,
    outputs: &[RevokedOutput],
    revocation_key: &SecretKey,
) -> Result<Transaction, Error> {
    if tx.input.len() != outputs.len()
        || tx.input.iter().zip(outputs).any(|(i, o)| i.previous_output != o.outpoint)
    {
        return Err(Error::Bolt3("the justice transaction does not spend these outputs"));
    }
    let revocation_pubkey = PublicKey::from_secret_key(sig::secp(), revocation_key);
    let mut signed = tx.clone();
    for (index, o) in outputs.iter().enumerate() {
        let s = sign::sign(
            tx,
            index,
            &o.witness_script,
            o.value_sat,
            EcdsaSighashType::All,
            revocation_key,
        )?;
        let mut w = Witness::new();
        w.push(sign::witness_item(&s, EcdsaSighashType::All));
        match o.kind {
            RevokedKind::ToLocal | RevokedKind::SecondStage => w.push([1u8]),
            RevokedKind::Htlc => w.push(revocation_pubkey.serialize()),
        }
        w.push(o.witness_script.as_bytes());
        signed.input[index].witness = w;
    }
    Ok(signed)
}
