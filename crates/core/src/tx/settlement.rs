//! Settlement: the merchant completes the latest payment and broadcasts it.
//!
//! The merchant keeps the customer's input 0 and change output 0 exactly as signed, adds its own
//! output (and wallet inputs when its share cannot pay the fee), picks the fee from its own
//! share, and signs input 0 `SIGHASH_ALL`. The customer's `SINGLE|ANYONECANPAY` signature stays
//! valid whatever the merchant adds, so the merchant can re-sign the settlement at a higher fee
//! (BIP 125 replacement) as often as it needs to.

use bitcoin::secp256k1::SecretKey;
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Weight};

use super::payment::{payment_template, verify_payment, PAYMENT_SEQUENCE};
use super::{check_payout, dummy_sig, fee_for, Branch, ChannelParams};
use crate::policy::{dust_threshold, DEFAULT_DUST_RELAY_FEE};
use crate::Error;

/// A wallet input the merchant adds to a settlement to pay its fee. The caller's wallet signs it
/// after [`build_settlement`] returns (the merchant's `SIGHASH_ALL` signature already commits to
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletInput {
    /// The outpoint spent.
    pub outpoint: OutPoint,
    /// The output spent.
    pub txout: TxOut,
    /// Weight of the input's scriptSig and witness once signed (e.g. 272 WU for P2WPKH:
    /// 1 + 73 + 1 + 33 witness bytes plus the item count, and the empty scriptSig's length).
    pub satisfaction_weight: Weight,
}

/// A settlement ready to broadcast (once any wallet inputs are signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The transaction: input 0 complete (then, for a dispute channel, the trigger's anchor,
    /// complete with its empty witness), wallet inputs last, unsigned.
    pub tx: Transaction,
    /// The fee it pays.
    pub fee: Amount,
    /// What the merchant's output receives.
    pub merchant_amount: Amount,
}

/// Completes the payment of cumulative `total` signed `customer_sig` into a settlement paying
/// the merchant's share, less a fee at `fee_rate`, plus any `wallet_inputs`, to `destination`.
///
/// # Errors
/// Any payment error of [`verify_payment`] when `customer_sig` is not a valid payment of `total`;
/// [`Error::Signing`] when `merchant` is not the channel's merchant key;
/// [`Error::AmountOutOfRange`] for a fee rate below 1 sat/vB; [`Error::Dust`] when the
/// merchant's output would be dust (add a wallet input); [`Error::InsufficientFunds`] when the
/// fee exceeds the merchant's share and the wallet inputs.
pub fn build_settlement(
    params: &ChannelParams,
    total: Amount,
    customer_sig: &[u8],
    merchant: &SecretKey,
    destination: ScriptBuf,
    fee_rate: FeeRate,
    wallet_inputs: &[WalletInput],
) -> Result<Settlement, Error> {
    let no_parent = None;
    build_settlement_with_parent(
        params,
        total,
        customer_sig,
        merchant,
        destination,
        fee_rate,
        wallet_inputs,
        no_parent,
    )
}

/// [`build_settlement`] for a dispute channel whose trigger is not confirmed: the settlement
/// also spends the trigger's anchor, and the fee at `fee_rate` pays for `unconfirmed_parent`
/// (the zero-fee trigger) too, as the package's child. With `None` (a CLTV channel, or a
/// confirmed trigger) it is [`build_settlement`].
///
/// # Errors
/// As [`build_settlement`].
#[allow(clippy::too_many_arguments)]
pub fn build_settlement_with_parent(
    params: &ChannelParams,
    total: Amount,
    customer_sig: &[u8],
    merchant: &SecretKey,
    destination: ScriptBuf,
    fee_rate: FeeRate,
    wallet_inputs: &[WalletInput],
    unconfirmed_parent: Option<&Transaction>,
) -> Result<Settlement, Error> {
    if !params.is_merchant(merchant) {
        return Err(Error::Signing("the key is not the channel's merchant key"));
    }
    check_payout(&destination, "settlement destination", fee_rate)?;
    verify_payment(params, total, customer_sig)?;
    let (mut tx, flag) = payment_template(params, total)?;
    // Under SINGLE the customer's change stays at output 0; under NONE the merchant takes all.
    let mut available = match flag {
        EcdsaSighashType::SinglePlusAnyoneCanPay => total,
        _ => params.capacity(),
    };
    // Wallet inputs may be segwit while the funding input is not: count the segwit marker and
    // flag (2 WU) so the fee never falls short.
    let mut extra_weight = if wallet_inputs.is_empty() { Weight::ZERO } else { Weight::from_wu(2) };
    // A dispute channel's settlement with its trigger unconfirmed also spends the trigger's
    // anchor (ephemeral dust must be spent by the child that pays for it), with an empty
    // witness. Once the trigger is confirmed the anchor is no longer needed (and may be spent
    // already by the customer's exit child).
    if let Some((anchor, _)) = params.anchor().filter(|_| unconfirmed_parent.is_some()) {
        tx.input.push(TxIn {
            previous_output: anchor,
            script_sig: ScriptBuf::new(),
            sequence: PAYMENT_SEQUENCE,
            witness: Default::default(),
        });
    }
    for w in wallet_inputs {
        available = available
            .checked_add(w.txout.value)
            .ok_or(Error::AmountOutOfRange("wallet inputs overflow"))?;
        extra_weight += w.satisfaction_weight;
        tx.input.push(TxIn {
            previous_output: w.outpoint,
            script_sig: ScriptBuf::new(),
            sequence: PAYMENT_SEQUENCE,
            witness: Default::default(),
        });
    }
    tx.output.push(TxOut { value: Amount::ZERO, script_pubkey: destination });
    params.set_spend(&mut tx, 0, &[&dummy_sig(), &dummy_sig()], Branch::Payment)?;
    let parent_weight = unconfirmed_parent.map_or(Weight::ZERO, Transaction::weight);
    let fee = fee_for(tx.weight() + extra_weight + parent_weight, fee_rate)?;
    let merchant_amount =
        available.checked_sub(fee).ok_or(Error::InsufficientFunds { needed: fee, available })?;
    let merchant_out = tx.output.len() - 1;
    let threshold = dust_threshold(&tx.output[merchant_out].script_pubkey, DEFAULT_DUST_RELAY_FEE);
    if merchant_amount < threshold {
        return Err(Error::Dust { value: merchant_amount, threshold });
    }
    tx.output[merchant_out].value = merchant_amount;
    let merchant_sig = params.sign(&tx, 0, EcdsaSighashType::All, merchant)?;
    params.set_spend(&mut tx, 0, &[customer_sig, &merchant_sig], Branch::Payment)?;
    Ok(Settlement { tx, fee, merchant_amount })
}
