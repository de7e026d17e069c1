//! Payments: the customer's signature on a cumulative total (DESIGN §2).
//!
//! A payment of cumulative `total` is the customer's signature on input 0 of this template:
//!
//! ```text
//! version 2 (3 for a dispute channel), nLockTime 0
//! input 0:  the funding outpoint, nSequence 0xFFFFFFFD
//! output 0: capacity − total to the customer's change script   (omitted under NONE)
//! ```
//!
//! signed `SIGHASH_SINGLE|ANYONECANPAY`, so it commits to the funding input and the customer's
//! change alone and the merchant may add its own output, inputs and fee at settlement. When the
//! change would be dust the customer signs `SIGHASH_NONE|ANYONECANPAY` and the merchant takes all.
//! Both sides rebuild the template from `(channel, total)`, so a payment on the wire is just
//! `(channel_id, total, signature)`.

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::{ecdsa, Keypair};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{Amount, ScriptBuf, Sequence, Transaction, TxIn, TxOut};

use super::ChannelParams;
use crate::{sig, Error};

/// Version of a CLTV channel's payment and settlement transactions (a dispute channel's are
/// version 3: [`ChannelParams::tx_version`]).
pub const PAYMENT_VERSION: Version = Version::TWO;
/// `nLockTime` of payment and settlement transactions: final at once.
pub const PAYMENT_LOCK_TIME: LockTime = LockTime::ZERO;
/// `nSequence` of the funding input in payments and settlements: final, no relative lock,
/// signals BIP 125 replaceability so the merchant can bump its settlement's fee.
pub const PAYMENT_SEQUENCE: Sequence = Sequence::ENABLE_RBF_NO_LOCKTIME;

/// The sighash flag a payment of `total` must carry: `SINGLE|ANYONECANPAY`, or
/// `NONE|ANYONECANPAY` when the change would be below the dust threshold.
///
/// # Errors
/// [`Error::AboveDeposit`] when `total` exceeds the capacity.
pub fn payment_flag(params: &ChannelParams, total: Amount) -> Result<EcdsaSighashType, Error> {
    let change = params.change_for(total)?;
    Ok(if change >= params.change_dust() {
        EcdsaSighashType::SinglePlusAnyoneCanPay
    } else {
        EcdsaSighashType::NonePlusAnyoneCanPay
    })
}

/// The unsigned template a payment of `total` signs, and its sighash flag.
///
/// # Errors
/// [`Error::AboveDeposit`] when `total` exceeds the capacity.
pub fn payment_template(
    params: &ChannelParams,
    total: Amount,
) -> Result<(Transaction, EcdsaSighashType), Error> {
    let flag = payment_flag(params, total)?;
    let output = match flag {
        EcdsaSighashType::SinglePlusAnyoneCanPay => vec![TxOut {
            value: params.change_for(total)?,
            script_pubkey: params.change_script().to_owned(),
        }],
        _ => Vec::new(),
    };
    let tx = Transaction {
        version: params.tx_version(),
        lock_time: PAYMENT_LOCK_TIME,
        input: vec![TxIn {
            previous_output: params.channel_input(),
            script_sig: ScriptBuf::new(),
            sequence: PAYMENT_SEQUENCE,
            witness: Default::default(),
        }],
        output,
    };
    Ok((tx, flag))
}

/// Signs a payment of cumulative `total` with the customer's key; returns DER ‖ sighash byte.
///
/// Takes a [`Keypair`] so that checking the key against the channel costs a comparison, not a
/// point multiplication: this is the customer's hot path.
///
/// # Errors
/// [`Error::AboveDeposit`]; [`Error::Signing`] when `customer` is not the channel's customer key.
pub fn sign_payment(
    params: &ChannelParams,
    total: Amount,
    customer: &Keypair,
) -> Result<Vec<u8>, Error> {
    if customer.public_key() != params.script().customer() {
        return Err(Error::Signing("the key is not the channel's customer key"));
    }
    let (tx, flag) = payment_template(params, total)?;
    params.sign(&tx, 0, flag, &customer.secret_key())
}

/// Checks a payment signature (rule 3 of DESIGN §2, and the dust part of rule 2): strict DER,
/// low S, the flag the total requires, and a valid signature by the customer's key.
///
/// # Errors
/// [`Error::AboveDeposit`], [`Error::DustChangeNeedsNone`], [`Error::SignatureNotDer`],
/// [`Error::SignatureHighS`], [`Error::WrongSighashFlag`] or [`Error::BadSignature`].
pub fn verify_payment(
    params: &ChannelParams,
    total: Amount,
    signature: &[u8],
) -> Result<ecdsa::Signature, Error> {
    let (tx, flag) = payment_template(params, total)?;
    let s = sig::parse_strict(signature, flag).map_err(|e| match e {
        Error::WrongSighashFlag { got, .. }
            if got == EcdsaSighashType::SinglePlusAnyoneCanPay as u8 =>
        {
            Error::DustChangeNeedsNone {
                change: params.change_for(total).unwrap_or(Amount::ZERO),
                dust: params.change_dust(),
            }
        }
        e => e,
    })?;
    let msg = params.sighash(&tx, 0, flag)?;
    sig::secp()
        .verify_ecdsa(&msg, &s, &params.script().customer())
        .map_err(|_| Error::BadSignature)?;
    Ok(s)
}
