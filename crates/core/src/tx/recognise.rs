//! Recognising a channel's transactions in the wild, for `paychan tx decode` and chain watching.

use bitcoin::opcodes::all::{OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_PUSHBYTES_0, OP_PUSHNUM_1};
use bitcoin::script::Instruction;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Script, Transaction};

use super::{dispute, FundingOutput};
use crate::script::{ChannelScript, OutputKind};

/// What a transaction is to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It creates the channel's funding output.
    Funding,
    /// It spends the funding output through the `ELSE` branch: the customer's refund.
    Refund,
    /// It spends through the `IF` branch with the customer's signature only: a half-signed
    /// payment (the 21 form).
    Payment,
    /// It spends through the `IF` branch with both signatures: a settlement.
    Settlement,
    /// It spends a dispute channel's 2-of-2 funding into the channel script and an anchor:
    /// the trigger (someone started the dispute period).
    Trigger,
    /// It spends a dispute channel's 2-of-2 funding otherwise: the cooperative close.
    Close,
}

impl Role {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Funding => "funding",
            Role::Refund => "refund",
            Role::Payment => "payment",
            Role::Settlement => "settlement",
            Role::Trigger => "trigger",
            Role::Close => "close",
        }
    }
}

/// A channel spend found in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpend {
    /// The input that spends the channel output.
    pub input: usize,
    /// Refund, payment or settlement.
    pub role: Role,
    /// The channel script revealed by the spend.
    pub script: ChannelScript,
    /// P2WSH (witness) or P2SH (scriptSig).
    pub kind: OutputKind,
}

/// Finds the first input of `tx` that spends a channel script, and what kind of spend it is.
pub fn find_channel_spend(tx: &Transaction) -> Option<ChannelSpend> {
    tx.input.iter().enumerate().find_map(|(input, txin)| {
        let (kind, items): (OutputKind, Vec<Vec<u8>>) = if !txin.witness.is_empty() {
            (OutputKind::P2wsh, txin.witness.iter().map(<[u8]>::to_vec).collect())
        } else {
            (OutputKind::P2sh, script_sig_pushes(&txin.script_sig)?)
        };
        let (last, rest) = items.split_last()?;
        let script = ChannelScript::from_script(Script::from_bytes(last)).ok()?;
        let (selector, sigs) = rest.split_last()?;
        let role = if cast_to_bool(selector) {
            match sigs.len() {
                1 => Role::Payment,
                2 => Role::Settlement,
                _ => return None,
            }
        } else if sigs.len() == 1 {
            Role::Refund
        } else {
            return None;
        };
        Some(ChannelSpend { input, role, script, kind })
    })
}

/// A spend of a dispute channel's 2-of-2 funding found in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FundingSpend {
    /// The input that spends the funding.
    pub input: usize,
    /// [`Role::Trigger`] or [`Role::Close`].
    pub role: Role,
    /// The merchant's key (checked first by the script).
    pub merchant: PublicKey,
    /// The customer's key.
    pub customer: PublicKey,
}

/// Finds the first input of `tx` that spends a dispute channel's 2-of-2 funding (witness:
/// two signatures and `<M> OP_CHECKSIGVERIFY <C> OP_CHECKSIG`): the trigger when `tx` is the
/// version-3 transaction paying one P2WSH output and a pay-to-anchor, else a close.
pub fn find_funding_spend(tx: &Transaction) -> Option<FundingSpend> {
    tx.input.iter().enumerate().find_map(|(input, txin)| {
        let items: Vec<&[u8]> = txin.witness.iter().collect();
        let [_, _, script] = items.as_slice() else { return None };
        let (merchant, customer) = parse_funding_script(Script::from_bytes(script))?;
        let trigger = tx.version == dispute::TRUC_VERSION
            && tx.input.len() == 1
            && tx.output.len() == 2
            && tx.output[0].script_pubkey.is_p2wsh()
            && tx.output[1] == dispute::anchor_output();
        let role = if trigger { Role::Trigger } else { Role::Close };
        Some(FundingSpend { input, role, merchant, customer })
    })
}

fn parse_funding_script(script: &Script) -> Option<(PublicKey, PublicKey)> {
    let mut ins = script.instructions();
    let key = |i: Option<Result<Instruction<'_>, _>>| match i {
        Some(Ok(Instruction::PushBytes(b))) if b.len() == 33 => {
            PublicKey::from_slice(b.as_bytes()).ok()
        }
        _ => None,
    };
    let op = |i: Option<Result<Instruction<'_>, _>>, want| matches!(i, Some(Ok(Instruction::Op(o))) if o == want);
    let merchant = key(ins.next())?;
    op(ins.next(), OP_CHECKSIGVERIFY).then_some(())?;
    let customer = key(ins.next())?;
    op(ins.next(), OP_CHECKSIG).then_some(())?;
    if ins.next().is_some() {
        return None;
    }
    // Exactly as built (minimal pushes), or two peers could disagree on the hash.
    let rebuilt = ChannelScript::dispute(merchant, customer, 1).ok()?;
    (dispute::funding_script(&rebuilt).as_bytes() == script.as_bytes())
        .then_some((merchant, customer))
}

/// Finds the output of `tx` that funds `script`'s channel, if any.
pub fn find_funding(tx: &Transaction, script: &ChannelScript) -> Option<FundingOutput> {
    FundingOutput::find(tx, script).ok()
}

fn script_sig_pushes(script: &Script) -> Option<Vec<Vec<u8>>> {
    script
        .instructions()
        .map(|i| match i {
            Ok(Instruction::PushBytes(b)) => Some(b.as_bytes().to_vec()),
            Ok(Instruction::Op(op)) if op == OP_PUSHNUM_1 => Some(vec![0x01]),
            Ok(Instruction::Op(op)) if op == OP_PUSHBYTES_0 => Some(Vec::new()),
            _ => None,
        })
        .collect()
}

/// Bitcoin Core's `CastToBool`: false for empty, all-zero, or negative zero.
fn cast_to_bool(v: &[u8]) -> bool {
    for (i, b) in v.iter().enumerate() {
        if *b != 0 {
            return !(i == v.len() - 1 && *b == 0x80);
        }
    }
    false
}
