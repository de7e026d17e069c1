//! The refund: the customer takes the whole deposit back after the expiry (`ELSE` branch).
//!
//! A CLTV channel: `nLockTime = expiry` (so `OP_CHECKLOCKTIMEVERIFY` passes once the locktime
//! is final) and `nSequence = 0xFFFFFFFE` (non-final, which CLTV requires, without BIP 125
//! signalling; full-RBF nodes replace it anyway). A dispute channel (spending the trigger's
//! output): `nLockTime = 0` and `nSequence` = the dispute period in blocks (BIP 68), so it is
//! valid `csv` blocks after the trigger confirms. The customer alone signs, `SIGHASH_ALL`, at
//! whatever fee rate it picks when it broadcasts: no pre-signed fee is ever stuck.

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::SecretKey;
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{FeeRate, ScriptBuf, Sequence, Transaction, TxIn, TxOut};

use super::{check_payout, dummy_sig, fee_for, Branch, ChannelParams};
use crate::policy::{dust_threshold, DEFAULT_DUST_RELAY_FEE};
use crate::script::Lock;
use crate::Error;

/// The refund's input sequence: non-final (CLTV requires it), no BIP 125 signal.
pub const REFUND_SEQUENCE: Sequence = Sequence::ENABLE_LOCKTIME_NO_RBF;

/// Builds and signs the refund of `params`' channel, paying the deposit less the fee at
/// `fee_rate` to `destination`.
///
/// # Errors
/// [`Error::Signing`] when `customer` is not the channel's customer key; [`Error::NonStandardScript`]
/// for a non-standard destination; [`Error::AmountOutOfRange`] for a fee rate below 1 sat/vB;
/// [`Error::Dust`] when the fee leaves a dust output.
pub fn build_refund(
    params: &ChannelParams,
    customer: &SecretKey,
    destination: ScriptBuf,
    fee_rate: FeeRate,
) -> Result<Transaction, Error> {
    let (lock_time, sequence) = match params.script().lock() {
        Lock::Expiry(expiry) => (expiry, REFUND_SEQUENCE),
        Lock::Dispute(blocks) => (LockTime::ZERO, Sequence::from_height(blocks)),
    };
    build_refund_with(params, customer, destination, fee_rate, lock_time, sequence)
}

/// [`build_refund`] with an explicit `nLockTime` and `nSequence`, for tests that show Bitcoin
/// Core's interpreter refuses a refund locked below the expiry or with a final sequence.
#[doc(hidden)]
pub fn build_refund_with(
    params: &ChannelParams,
    customer: &SecretKey,
    destination: ScriptBuf,
    fee_rate: FeeRate,
    lock_time: LockTime,
    sequence: Sequence,
) -> Result<Transaction, Error> {
    if !params.is_customer(customer) {
        return Err(Error::Signing("the key is not the channel's customer key"));
    }
    check_payout(&destination, "refund destination", fee_rate)?;
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time,
        input: vec![TxIn {
            previous_output: params.channel_input(),
            script_sig: ScriptBuf::new(),
            sequence,
            witness: Default::default(),
        }],
        output: vec![TxOut { value: params.capacity(), script_pubkey: destination }],
    };
    params.set_spend(&mut tx, 0, &[&dummy_sig()], Branch::Refund)?;
    let fee = fee_for(tx.weight(), fee_rate)?;
    let value = params
        .capacity()
        .checked_sub(fee)
        .ok_or(Error::InsufficientFunds { needed: fee, available: params.capacity() })?;
    let threshold = dust_threshold(&tx.output[0].script_pubkey, DEFAULT_DUST_RELAY_FEE);
    if value < threshold {
        return Err(Error::Dust { value, threshold });
    }
    tx.output[0].value = value;
    let sig = params.sign(&tx, 0, EcdsaSighashType::All, customer)?;
    params.set_spend(&mut tx, 0, &[&sig], Branch::Refund)?;
    Ok(tx)
}
