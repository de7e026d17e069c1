//! The channel's transactions: funding output, refund, payment, settlement, the 21 form, and
//! a dispute channel's own (trigger, cooperative close, exit child: [`dispute`]).
//!
//! All of them spend (or create) the one funding output of a channel; [`ChannelParams`] is what
//! both peers know of a channel and is enough to rebuild any of its transactions.

pub mod dispute;
pub mod funding;
pub mod payment;
pub mod recognise;
pub mod refund;
pub mod settlement;
pub mod two1;

use bitcoin::hashes::Hash;
use bitcoin::opcodes::all::{OP_PUSHBYTES_0, OP_PUSHNUM_1};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, FeeRate, OutPoint, Script, ScriptBuf, Transaction, Weight, Witness};

pub use funding::FundingOutput;

use crate::policy::dust_threshold;
use crate::script::{ChannelScript, OutputKind};
use crate::{sig, Error};

/// Placeholder for a signature while a transaction's size is estimated: the longest strict-DER
/// ECDSA signature (72 bytes) plus its sighash byte.
pub(crate) const MAX_SIG_LEN: usize = 73;

/// Everything both peers know about one channel: the script, the funding output and the
/// customer's change script. Enough to rebuild every transaction of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelParams {
    script: ChannelScript,
    witness_script: ScriptBuf,
    funding: FundingOutput,
    /// The output payments, settlements and refunds spend: the funding itself (a CLTV
    /// channel), or the trigger's output 0 (a dispute channel).
    channel_input: OutPoint,
    change_script: ScriptBuf,
    change_dust: Amount,
}

impl ChannelParams {
    /// Puts a channel's parameters together.
    ///
    /// `dust_relay_fee` fixes, for the channel's life, the change below which the customer
    /// signs `NONE|ANYONECANPAY` (DESIGN §2): Bitcoin Core's dust threshold of `change_script`.
    ///
    /// A dispute channel's `funding` is its 2-of-2 output (P2WSH); payments then spend the
    /// trigger's output 0, which holds the same value.
    ///
    /// # Errors
    /// [`Error::NonStandardScript`] when `change_script` is not a standard output script (P2PKH, P2SH,
    /// P2WPKH, P2WSH or P2TR), which would make the settlement non-standard;
    /// [`Error::NotChannelScript`] for a dispute channel funded otherwise than by P2WSH.
    pub fn new(
        script: ChannelScript,
        funding: FundingOutput,
        change_script: ScriptBuf,
        dust_relay_fee: FeeRate,
    ) -> Result<Self, Error> {
        if !is_standard_destination(&change_script) {
            return Err(Error::NonStandardScript("change script"));
        }
        if script.dispute_blocks().is_some() && funding.kind != OutputKind::P2wsh {
            return Err(Error::NotChannelScript("a dispute channel's funding is P2WSH"));
        }
        let change_dust = dust_threshold(&change_script, dust_relay_fee);
        Ok(Self::from_parts(script, funding, change_script, change_dust))
    }

    /// Reassembles stored parameters (the change dust threshold as it was fixed at open).
    pub(crate) fn from_parts(
        script: ChannelScript,
        funding: FundingOutput,
        change_script: ScriptBuf,
        change_dust: Amount,
    ) -> Self {
        let channel_input = match script.lock() {
            crate::script::Lock::Expiry(_) => funding.outpoint,
            crate::script::Lock::Dispute(_) => OutPoint {
                txid: dispute::trigger_of(&script, &funding).compute_txid(),
                vout: dispute::CHANNEL_VOUT,
            },
        };
        ChannelParams {
            witness_script: script.script(),
            script,
            funding,
            channel_input,
            change_script,
            change_dust,
        }
    }

    /// The channel's id: its funding outpoint.
    pub fn id(&self) -> OutPoint {
        self.funding.outpoint
    }

    /// The output payments, settlements and refunds spend: the funding (a CLTV channel) or
    /// the trigger's output 0 (a dispute channel), holding the deposit either way.
    pub fn channel_input(&self) -> OutPoint {
        self.channel_input
    }

    /// The channel script's parameters.
    pub fn script(&self) -> &ChannelScript {
        &self.script
    }

    /// The channel script's bytes (witness or redeem script).
    pub fn witness_script(&self) -> &Script {
        &self.witness_script
    }

    /// The funding output.
    pub fn funding(&self) -> &FundingOutput {
        &self.funding
    }

    /// The channel's capacity: the funding output's value, the most that can be paid.
    pub fn capacity(&self) -> Amount {
        self.funding.value
    }

    /// The script the customer's change is paid to.
    pub fn change_script(&self) -> &Script {
        &self.change_script
    }

    /// The change below which payments are signed `NONE|ANYONECANPAY`.
    pub fn change_dust(&self) -> Amount {
        self.change_dust
    }

    /// The customer's change for a cumulative `total`.
    ///
    /// # Errors
    /// [`Error::AboveDeposit`] when `total` exceeds the capacity.
    pub fn change_for(&self, total: Amount) -> Result<Amount, Error> {
        self.capacity()
            .checked_sub(total)
            .ok_or(Error::AboveDeposit { total, capacity: self.capacity() })
    }

    /// Computes the signature hash of input `index` of `tx`, which spends this channel's
    /// funding output with the channel script, for `flag`.
    pub(crate) fn sighash(
        &self,
        tx: &Transaction,
        index: usize,
        flag: EcdsaSighashType,
    ) -> Result<Message, Error> {
        let mut cache = SighashCache::new(tx);
        match self.funding.kind {
            OutputKind::P2wsh => cache
                .p2wsh_signature_hash(index, &self.witness_script, self.funding.value, flag)
                .map(|h| Message::from_digest(h.to_byte_array()))
                .map_err(|_| Error::Signing("input index out of range")),
            OutputKind::P2sh => cache
                .legacy_signature_hash(index, &self.witness_script, flag.to_u32())
                .map(|h| Message::from_digest(h.to_byte_array()))
                .map_err(|_| Error::Signing("input index out of range")),
        }
    }

    /// Signs input `index` of `tx` with `key` and returns the signature with its sighash byte.
    pub(crate) fn sign(
        &self,
        tx: &Transaction,
        index: usize,
        flag: EcdsaSighashType,
        key: &SecretKey,
    ) -> Result<Vec<u8>, Error> {
        let msg = self.sighash(tx, index, flag)?;
        let s = sig::secp().sign_ecdsa(&msg, key);
        Ok(sig::serialize(&s, flag))
    }

    /// Writes the spend of the channel output into input `index`: the stack `items` (bottom
    /// first), the branch selector and the script, as witness (P2WSH) or scriptSig (P2SH).
    pub(crate) fn set_spend(
        &self,
        tx: &mut Transaction,
        index: usize,
        items: &[&[u8]],
        branch: Branch,
    ) -> Result<(), Error> {
        let input = tx.input.get_mut(index).ok_or(Error::Signing("input index out of range"))?;
        match self.funding.kind {
            OutputKind::P2wsh => {
                let mut w = Witness::new();
                for i in items {
                    w.push(i);
                }
                // MINIMALIF (policy for segwit v0): true is exactly [0x01], false is empty.
                w.push(match branch {
                    Branch::Payment => &[0x01][..],
                    Branch::Refund => &[][..],
                });
                w.push(self.witness_script.as_bytes());
                input.witness = w;
                input.script_sig = ScriptBuf::new();
            }
            OutputKind::P2sh => {
                let mut b = Builder::new();
                for i in items {
                    b = b.push_slice(push_bytes(i)?);
                }
                b = b.push_opcode(match branch {
                    Branch::Payment => OP_PUSHNUM_1,
                    Branch::Refund => OP_PUSHBYTES_0,
                });
                b = b.push_slice(push_bytes(self.witness_script.as_bytes())?);
                input.script_sig = b.into_script();
                input.witness = Witness::new();
            }
        }
        Ok(())
    }

    /// The version of the transactions spending the channel output: 2, or 3 (TRUC) for a
    /// dispute channel, whose output is the zero-fee trigger's, a TRUC parent.
    pub fn tx_version(&self) -> bitcoin::transaction::Version {
        match self.script.lock() {
            crate::script::Lock::Expiry(_) => bitcoin::transaction::Version::TWO,
            crate::script::Lock::Dispute(_) => dispute::TRUC_VERSION,
        }
    }

    /// Whether `tx` spends the funding.
    pub fn spends_funding(&self, tx: &Transaction) -> bool {
        tx.input.iter().any(|i| i.previous_output == self.id())
    }

    /// Whether `tx` spends the funding or, for a dispute channel, the trigger's output (by the
    /// settlement or the refund).
    pub fn spends_channel(&self, tx: &Transaction) -> bool {
        self.spends_funding(tx) || tx.input.iter().any(|i| i.previous_output == self.channel_input)
    }

    /// The outpoint whose spend ends the channel in `phase`: the funding, or, once a dispute
    /// channel's trigger is out, the trigger's output.
    pub fn ending_outpoint(&self, phase: crate::channel::Phase) -> OutPoint {
        match phase {
            crate::channel::Phase::Disputed => self.channel_input,
            _ => self.id(),
        }
    }

    /// The trigger's anchor, which a dispute channel's settlement spends (its ephemeral dust);
    /// `None` for a CLTV channel.
    pub fn anchor(&self) -> Option<(OutPoint, bitcoin::TxOut)> {
        self.script.dispute_blocks().map(|_| {
            (
                OutPoint { txid: self.channel_input.txid, vout: dispute::ANCHOR_VOUT },
                dispute::anchor_output(),
            )
        })
    }

    /// Whether `key` is the channel's customer key.
    pub(crate) fn is_customer(&self, key: &SecretKey) -> bool {
        PublicKey::from_secret_key(sig::secp(), key) == self.script.customer()
    }

    /// Whether `key` is the channel's merchant key.
    pub(crate) fn is_merchant(&self, key: &SecretKey) -> bool {
        PublicKey::from_secret_key(sig::secp(), key) == self.script.merchant()
    }
}

/// Which branch of the channel script a spend takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Branch {
    /// `IF`: merchant and customer sign (payments and settlements).
    Payment,
    /// `ELSE`: the customer alone after the expiry (refunds).
    Refund,
}

fn push_bytes(b: &[u8]) -> Result<PushBytesBuf, Error> {
    PushBytesBuf::try_from(b.to_vec()).map_err(|_| Error::Signing("push larger than 4 GiB"))
}

/// What every transaction paying out of the channel checks first: its destination (`what`
/// names it) is a standard output script, and it pays at least the 1 sat/vB relay fee.
pub(crate) fn check_payout(
    destination: &Script,
    what: &'static str,
    fee_rate: FeeRate,
) -> Result<(), Error> {
    if !is_standard_destination(destination) {
        return Err(Error::NonStandardScript(what));
    }
    if fee_rate < crate::policy::MIN_RELAY_FEE {
        return Err(Error::AmountOutOfRange("fee rate below the 1 sat/vB minimum relay fee"));
    }
    Ok(())
}

/// Whether `spk` is an output script every node relays: P2PKH, P2SH, P2WPKH, P2WSH or P2TR.
pub fn is_standard_destination(spk: &Script) -> bool {
    spk.is_p2pkh() || spk.is_p2sh() || spk.is_p2wpkh() || spk.is_p2wsh() || spk.is_p2tr()
}

/// The fee for `weight` at `fee_rate`, rounding the virtual size up as Bitcoin Core does.
pub(crate) fn fee_for(weight: Weight, fee_rate: FeeRate) -> Result<Amount, Error> {
    fee_rate.fee_vb(weight.to_vbytes_ceil()).ok_or(Error::AmountOutOfRange("fee overflows"))
}

/// A placeholder signature of the maximum length, for size estimates.
pub(crate) fn dummy_sig() -> [u8; MAX_SIG_LEN] {
    [0u8; MAX_SIG_LEN]
}
