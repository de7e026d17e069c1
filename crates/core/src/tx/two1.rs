//! The 21 (two1) form of payments: whole half-signed `SIGHASH_ALL` transactions on a P2SH
//! channel, as two1's client sends them to `PUT /payment/{deposit_txid}`.
//!
//! ```text
//! version 1, nLockTime 0
//! input 0:  the deposit's P2SH outpoint, nSequence 0xFFFFFFFF,
//!           scriptSig <customer sig ‖ 01> OP_1 <redeem script>
//! output 0: P2PKH(HASH160(merchant key))  = cumulative amount paid
//! output 1: P2PKH(HASH160(customer key))  = deposit − fee − amount
//! ```
//!
//! The merchant completes one by inserting its own signature:
//! `<customer sig> <merchant sig> OP_1 <redeem>`.

use bitcoin::absolute::LockTime;
use bitcoin::opcodes::all::OP_PUSHNUM_1;
use bitcoin::script::Instruction;
use bitcoin::secp256k1::{ecdsa, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, CompressedPublicKey, PubkeyHash, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
};

use super::{Branch, ChannelParams};
use crate::policy::{dust_threshold, DEFAULT_DUST_RELAY_FEE, MIN_RELAY_FEE};
use crate::script::OutputKind;
use crate::{sig, Error};

/// two1's fee in every payment transaction (`TWO1_CHANNELS_FEE`).
pub const TWO1_FEE: Amount = Amount::from_sat(125_000);
/// two1's smallest payment output (`PAYMENT_TX_MIN_OUTPUT_AMOUNT`); the first payment is raised
/// to it.
pub const TWO1_MIN_OUTPUT: Amount = Amount::from_sat(3_000);

/// A validated 21 payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Two1Payment {
    /// The half-signed transaction as received.
    pub tx: Transaction,
    /// Cumulative amount paid to the merchant (output 0).
    pub amount: Amount,
    /// The customer's change (output 1).
    pub change: Amount,
    /// The fee the transaction pays.
    pub fee: Amount,
    /// The customer's signature with its sighash byte.
    pub customer_sig: Vec<u8>,
}

fn p2pkh_of(key: bitcoin::secp256k1::PublicKey) -> ScriptBuf {
    ScriptBuf::new_p2pkh(&PubkeyHash::from(CompressedPublicKey(key)))
}

fn require_p2sh(params: &ChannelParams) -> Result<(), Error> {
    if params.funding().kind != OutputKind::P2sh {
        return Err(Error::MalformedTwo1Payment("21 payments need a P2SH channel"));
    }
    Ok(())
}

/// Builds and signs a 21 payment of cumulative `amount` with `fee`, as two1's client does.
///
/// # Errors
/// [`Error::MalformedTwo1Payment`] for a P2WSH channel; [`Error::Signing`] for a key that is not
/// the customer's; [`Error::InsufficientFunds`] when amount and fee exceed the deposit.
pub fn build_payment(
    params: &ChannelParams,
    amount: Amount,
    fee: Amount,
    customer: &SecretKey,
) -> Result<Transaction, Error> {
    require_p2sh(params)?;
    if !params.is_customer(customer) {
        return Err(Error::Signing("the key is not the channel's customer key"));
    }
    let needed = amount.checked_add(fee).ok_or(Error::AmountOutOfRange("amount + fee"))?;
    let change = params
        .capacity()
        .checked_sub(needed)
        .ok_or(Error::InsufficientFunds { needed, available: params.capacity() })?;
    let script = params.script();
    let mut tx = Transaction {
        version: Version::ONE,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: params.id(),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Default::default(),
        }],
        output: vec![
            TxOut { value: amount, script_pubkey: p2pkh_of(script.merchant()) },
            TxOut { value: change, script_pubkey: p2pkh_of(script.customer()) },
        ],
    };
    let sig = params.sign(&tx, 0, EcdsaSighashType::All, customer)?;
    params.set_spend(&mut tx, 0, &[&sig], Branch::Payment)?;
    Ok(tx)
}

/// Validates a 21 payment for `params`' channel: its form, amounts and the customer's
/// `SIGHASH_ALL` signature. The caller checks the channel's phase and that `amount` increases.
///
/// # Errors
/// [`Error::MalformedTwo1Payment`] naming what is wrong with the form; [`Error::Dust`] when an
/// output is dust; the signature errors of rule 3.
pub fn parse_payment(params: &ChannelParams, tx: &Transaction) -> Result<Two1Payment, Error> {
    require_p2sh(params)?;
    let bad = Error::MalformedTwo1Payment;
    if tx.version != Version::ONE && tx.version != Version::TWO {
        return Err(bad("version must be 1 or 2"));
    }
    if tx.lock_time != LockTime::ZERO {
        return Err(bad("nLockTime must be 0"));
    }
    let [input] = tx.input.as_slice() else {
        return Err(bad("must have exactly one input"));
    };
    if input.previous_output != params.id() {
        return Err(bad("does not spend the channel's deposit"));
    }
    if input.sequence.is_relative_lock_time() && tx.version >= Version::TWO {
        return Err(bad("input carries a relative timelock"));
    }
    if !input.witness.is_empty() {
        return Err(bad("a P2SH spend carries no witness"));
    }
    let mut pushes = Vec::with_capacity(3);
    for ins in input.script_sig.instructions() {
        match ins {
            Ok(Instruction::PushBytes(b)) => pushes.push(b.as_bytes()),
            Ok(Instruction::Op(op)) if op == OP_PUSHNUM_1 => pushes.push(&[0x01][..]),
            _ => return Err(bad("scriptSig must be <signature> OP_1 <redeem script>")),
        }
    }
    let [customer_sig, selector, redeem] = pushes.as_slice() else {
        return Err(bad("scriptSig must be <signature> OP_1 <redeem script>"));
    };
    if *selector != [0x01] {
        return Err(bad("branch selector must be OP_1 (the payment branch)"));
    }
    if *redeem != params.witness_script().as_bytes() {
        return Err(bad("redeem script is not the channel's"));
    }
    let [to_merchant, to_customer] = tx.output.as_slice() else {
        return Err(bad("must have exactly two outputs"));
    };
    let script = params.script();
    if to_merchant.script_pubkey != p2pkh_of(script.merchant()) {
        return Err(bad("output 0 must pay the merchant's P2PKH"));
    }
    if to_customer.script_pubkey != p2pkh_of(script.customer()) {
        return Err(bad("output 1 must pay the customer's P2PKH"));
    }
    for out in &tx.output {
        let threshold = dust_threshold(&out.script_pubkey, DEFAULT_DUST_RELAY_FEE);
        if out.value < threshold {
            return Err(Error::Dust { value: out.value, threshold });
        }
    }
    let outputs =
        to_merchant.value.checked_add(to_customer.value).ok_or(bad("output values overflow"))?;
    let fee = params
        .capacity()
        .checked_sub(outputs)
        .ok_or(Error::AboveDeposit { total: outputs, capacity: params.capacity() })?;
    // The merchant's signature adds at most 74 bytes; the completed settlement must still pay
    // Bitcoin Core's minimum relay fee or it could never be mined.
    let min_fee = MIN_RELAY_FEE
        .fee_vb(tx.vsize() as u64 + 74)
        .ok_or(Error::AmountOutOfRange("fee overflows"))?;
    if fee < min_fee {
        return Err(bad("fee is below the minimum relay fee of the settlement"));
    }
    let s = sig::parse_strict(customer_sig, EcdsaSighashType::All)?;
    verify_all(params, tx, &s, &script.customer())?;
    Ok(Two1Payment {
        tx: tx.clone(),
        amount: to_merchant.value,
        change: to_customer.value,
        fee,
        customer_sig: customer_sig.to_vec(),
    })
}

fn verify_all(
    params: &ChannelParams,
    tx: &Transaction,
    s: &ecdsa::Signature,
    key: &bitcoin::secp256k1::PublicKey,
) -> Result<(), Error> {
    let msg = params.sighash(tx, 0, EcdsaSighashType::All)?;
    sig::secp().verify_ecdsa(&msg, s, key).map_err(|_| Error::BadSignature)
}

/// Completes a validated 21 payment with the merchant's signature: the settlement two1's
/// merchant broadcasts on `DELETE /payment/{deposit_txid}`.
///
/// # Errors
/// [`Error::Signing`] when `merchant` is not the channel's merchant key.
pub fn complete_payment(
    params: &ChannelParams,
    payment: &Two1Payment,
    merchant: &SecretKey,
) -> Result<Transaction, Error> {
    if !params.is_merchant(merchant) {
        return Err(Error::Signing("the key is not the channel's merchant key"));
    }
    let mut tx = payment.tx.clone();
    let merchant_sig = params.sign(&tx, 0, EcdsaSighashType::All, merchant)?;
    params.set_spend(&mut tx, 0, &[&payment.customer_sig, &merchant_sig], Branch::Payment)?;
    Ok(tx)
}
