//! A dispute channel's own transactions (DESIGN §3a): the 2-of-2 funding, the trigger T, the
//! cooperative close, and the customer's exit child.
//!
//! ```text
//! funding:  P2WSH(<M> OP_CHECKSIGVERIFY <C> OP_CHECKSIG)                      (deposit)
//! T:        version 3, input: the funding (nSequence 0xFFFFFFFD), zero fee
//!           output 0: the whole deposit to P2WSH(D)    (D: the channel script with CSV)
//!           output 1: 0 sat to pay-to-anchor (OP_1 0x4e73), ephemeral dust
//! close:    version 2, input: the funding; outputs: the customer's change, the merchant's
//!           share less the fee (both sign SIGHASH_ALL)
//! exit:     version 3, inputs: T:1 and the customer's coins; pays for T and itself
//! ```
//!
//! Payments, the merchant's settlement and the customer's refund spend T:0 with the ordinary
//! channel machinery ([`ChannelParams`] of a [`Lock::Dispute`] script: its id is the funding,
//! its [`ChannelParams::channel_input`] is T:0): version 3, and the settlement also spends the
//! anchor.

use bitcoin::hashes::Hash;
use bitcoin::opcodes::all::{OP_CHECKSIG, OP_CHECKSIGVERIFY};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, FeeRate, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Weight, Witness,
};

use super::settlement::WalletInput;
use super::{check_payout, fee_for, ChannelParams, FundingOutput};
use crate::policy::{dust_threshold, DEFAULT_DUST_RELAY_FEE};
use crate::script::{ChannelScript, Lock, OutputKind};
use crate::{sig, Error};

/// BIP 431's TRUC version: the trigger and every transaction spending it unconfirmed.
pub const TRUC_VERSION: Version = Version(3);
/// The trigger's output paying the channel script D.
pub const CHANNEL_VOUT: u32 = 0;
/// The trigger's pay-to-anchor output.
pub const ANCHOR_VOUT: u32 = 1;
/// `nSequence` of the trigger's input: final for locks, replaceable.
pub const TRIGGER_SEQUENCE: Sequence = Sequence::ENABLE_RBF_NO_LOCKTIME;
/// Weight of an anchor input once "signed" (an empty witness: its item count, 1 WU).
pub const ANCHOR_SATISFACTION_WEIGHT: Weight = Weight::from_wu(1);

/// The trigger's anchor: 0 sat to pay-to-anchor (BIP 433), ephemeral dust.
pub fn anchor_output() -> TxOut {
    TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_p2a() }
}

fn require_dispute(script: &ChannelScript) -> Result<u16, Error> {
    match script.lock() {
        Lock::Dispute(blocks) => Ok(blocks),
        Lock::Expiry(_) => Err(Error::NotChannelScript("not a dispute channel script")),
    }
}

/// The funding's 2-of-2 witness script: `<M> OP_CHECKSIGVERIFY <C> OP_CHECKSIG`.
pub fn funding_script(script: &ChannelScript) -> ScriptBuf {
    Builder::new()
        .push_slice(script.merchant().serialize())
        .push_opcode(OP_CHECKSIGVERIFY)
        .push_slice(script.customer().serialize())
        .push_opcode(OP_CHECKSIG)
        .into_script()
}

/// The funding output's `scriptPubKey`: P2WSH of [`funding_script`].
pub fn funding_script_pubkey(script: &ChannelScript) -> ScriptBuf {
    ScriptBuf::new_p2wsh(&funding_script(script).wscript_hash())
}

/// The unsigned trigger of `script`'s channel funded by `funding`.
pub(crate) fn trigger_of(script: &ChannelScript, funding: &FundingOutput) -> Transaction {
    Transaction {
        version: TRUC_VERSION,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: funding.outpoint,
            script_sig: ScriptBuf::new(),
            sequence: TRIGGER_SEQUENCE,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut { value: funding.value, script_pubkey: script.script_pubkey(OutputKind::P2wsh) },
            anchor_output(),
        ],
    }
}

/// The unsigned trigger T of a dispute channel.
///
/// # Errors
/// [`Error::NotChannelScript`] for a CLTV channel.
pub fn trigger(params: &ChannelParams) -> Result<Transaction, Error> {
    require_dispute(params.script())?;
    Ok(trigger_of(params.script(), params.funding()))
}

fn sighash(params: &ChannelParams, tx: &Transaction) -> Result<Message, Error> {
    require_dispute(params.script())?;
    match tx.input.as_slice() {
        [only] if only.previous_output == params.id() => {}
        _ => return Err(Error::Signing("not a spend of the channel's funding alone")),
    }
    let script = funding_script(params.script());
    SighashCache::new(tx)
        .p2wsh_signature_hash(0, &script, params.capacity(), EcdsaSighashType::All)
        .map(|h| Message::from_digest(h.to_byte_array()))
        .map_err(|_| Error::Signing("the transaction has no input 0"))
}

/// Signs `tx` (the trigger or a cooperative close: a spend of the funding alone),
/// `SIGHASH_ALL`, with the merchant's or the customer's key.
///
/// # Errors
/// [`Error::Signing`] when `key` is neither channel key or `tx` does not spend the funding
/// alone; [`Error::NotChannelScript`] for a CLTV channel.
pub fn sign(params: &ChannelParams, tx: &Transaction, key: &SecretKey) -> Result<Vec<u8>, Error> {
    if !params.is_merchant(key) && !params.is_customer(key) {
        return Err(Error::Signing("the key is not one of the channel's keys"));
    }
    let s = sig::secp().sign_ecdsa(&sighash(params, tx)?, key);
    Ok(sig::serialize(&s, EcdsaSighashType::All))
}

/// Checks `signer`'s signature on `tx` (a spend of the funding alone): strict DER, low S,
/// `SIGHASH_ALL`, valid.
///
/// # Errors
/// [`Error::SignatureNotDer`], [`Error::SignatureHighS`], [`Error::WrongSighashFlag`],
/// [`Error::BadSignature`]; [`Error::Signing`] or [`Error::NotChannelScript`] as [`sign`].
pub fn verify(
    params: &ChannelParams,
    tx: &Transaction,
    signer: PublicKey,
    signature: &[u8],
) -> Result<(), Error> {
    let msg = sighash(params, tx)?;
    let s = sig::parse_strict(signature, EcdsaSighashType::All)?;
    sig::secp().verify_ecdsa(&msg, &s, &signer).map_err(|_| Error::BadSignature)
}

/// `tx` with both signatures in its witness, each checked first.
///
/// # Errors
/// As [`verify`], for either signature.
pub fn complete(
    params: &ChannelParams,
    mut tx: Transaction,
    merchant_sig: &[u8],
    customer_sig: &[u8],
) -> Result<Transaction, Error> {
    verify(params, &tx, params.script().merchant(), merchant_sig)?;
    verify(params, &tx, params.script().customer(), customer_sig)?;
    let script = funding_script(params.script());
    // OP_CHECKSIGVERIFY takes the top item (the merchant's), OP_CHECKSIG the next.
    tx.input[0].witness = Witness::from_slice(&[customer_sig, merchant_sig, script.as_bytes()]);
    Ok(tx)
}

/// The unsigned cooperative close at cumulative `total`: the customer's change
/// (`capacity − total`, omitted below its dust threshold, as a `NONE` payment) and the
/// merchant's share less the fee at `fee_rate`, to `merchant_destination`.
///
/// # Errors
/// [`Error::NotChannelScript`] for a CLTV channel; [`Error::AboveDeposit`];
/// [`Error::NonStandardScript`]; [`Error::AmountOutOfRange`] for a fee rate below 1 sat/vB;
/// [`Error::Dust`] or [`Error::InsufficientFunds`] when the merchant's share cannot pay the fee.
pub fn close(
    params: &ChannelParams,
    total: Amount,
    merchant_destination: ScriptBuf,
    fee_rate: FeeRate,
) -> Result<Transaction, Error> {
    require_dispute(params.script())?;
    check_payout(&merchant_destination, "close destination", fee_rate)?;
    let change = params.change_for(total)?;
    let mut output = Vec::new();
    let mut available = total;
    if change >= params.change_dust() {
        output.push(TxOut { value: change, script_pubkey: params.change_script().to_owned() });
    } else {
        available = params.capacity();
    }
    output.push(TxOut { value: Amount::ZERO, script_pubkey: merchant_destination });
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: params.id(),
            script_sig: ScriptBuf::new(),
            sequence: TRIGGER_SEQUENCE,
            witness: Witness::new(),
        }],
        output,
    };
    let dummy = super::dummy_sig();
    let script = funding_script(params.script());
    tx.input[0].witness = Witness::from_slice(&[&dummy[..], &dummy[..], script.as_bytes()]);
    let fee = fee_for(tx.weight(), fee_rate)?;
    tx.input[0].witness = Witness::new();
    let merchant =
        available.checked_sub(fee).ok_or(Error::InsufficientFunds { needed: fee, available })?;
    let last = tx.output.len() - 1;
    let threshold = dust_threshold(&tx.output[last].script_pubkey, DEFAULT_DUST_RELAY_FEE);
    if merchant < threshold {
        return Err(Error::Dust { value: merchant, threshold });
    }
    tx.output[last].value = merchant;
    Ok(tx)
}

/// The customer's exit child: spends the trigger's anchor and `coins` (the customer's, signed
/// by its wallet after this returns: inputs 1..), paying `destination` what is left after a fee
/// at `fee_rate` for both the trigger and itself (the trigger pays none).
///
/// # Errors
/// [`Error::NonStandardScript`], [`Error::AmountOutOfRange`] (fee rate), [`Error::Dust`] or
/// [`Error::InsufficientFunds`] when the coins cannot pay the fee.
pub fn exit_child(
    trigger: &Transaction,
    coins: &[WalletInput],
    destination: ScriptBuf,
    fee_rate: FeeRate,
) -> Result<Transaction, Error> {
    check_payout(&destination, "exit destination", fee_rate)?;
    let anchor = OutPoint { txid: trigger.compute_txid(), vout: ANCHOR_VOUT };
    let mut tx = Transaction {
        version: TRUC_VERSION,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: anchor,
            script_sig: ScriptBuf::new(),
            sequence: TRIGGER_SEQUENCE,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::ZERO, script_pubkey: destination }],
    };
    let mut available = Amount::ZERO;
    let mut weight = trigger.weight() + ANCHOR_SATISFACTION_WEIGHT + Weight::from_wu(2);
    for c in coins {
        available = available
            .checked_add(c.txout.value)
            .ok_or(Error::AmountOutOfRange("coins overflow"))?;
        weight += c.satisfaction_weight;
        tx.input.push(TxIn {
            previous_output: c.outpoint,
            script_sig: ScriptBuf::new(),
            sequence: TRIGGER_SEQUENCE,
            witness: Witness::new(),
        });
    }
    let fee = fee_for(tx.weight() + weight, fee_rate)?;
    let value =
        available.checked_sub(fee).ok_or(Error::InsufficientFunds { needed: fee, available })?;
    let threshold = dust_threshold(&tx.output[0].script_pubkey, DEFAULT_DUST_RELAY_FEE);
    if value < threshold {
        return Err(Error::Dust { value, threshold });
    }
    tx.output[0].value = value;
    Ok(tx)
}
