//! What a BOLT 3 script or transaction found on chain is, from its shape and witnesses alone
//! (no channel state needed): for `paychan tx decode` and for watching the chain.

use bitcoin::hashes::{hash160, Hash};
use bitcoin::script::Instruction;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{OutPoint, Script, Transaction};

use crate::bolt3::commitment::obscured_parts;
use crate::bolt3::{script, ChannelType};

/// A BOLT 3 witness script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// The 2-of-2 funding script.
    Funding,
    /// A revocable output (`to_local` or an HTLC transaction's output).
    ToLocal {
        /// Its `to_self_delay`.
        to_self_delay: u16,
    },
    /// `to_remote` with anchors.
    ToRemoteAnchors,
    /// An offered HTLC.
    OfferedHtlc(ChannelType),
    /// A received HTLC.
    ReceivedHtlc {
        /// Its channel type.
        channel_type: ChannelType,
        /// Its expiry.
        cltv_expiry: u32,
    },
    /// An anchor.
    Anchor,
}

fn key(i: &Instruction<'_>) -> Option<PublicKey> {
    i.push_bytes().and_then(|p| PublicKey::from_slice(p.as_bytes()).ok())
}

fn hash20(i: &Instruction<'_>) -> Option<[u8; 20]> {
    i.push_bytes().and_then(|p| <[u8; 20]>::try_from(p.as_bytes()).ok())
}

/// Classifies a witness script: the parts it carries are read out and the script rebuilt from
/// them, so only a byte-exact BOLT 3 script is recognised.
pub fn classify_script(s: &Script) -> Option<ScriptKind> {
    let ins: Vec<Instruction<'_>> = s.instructions().collect::<Result<_, _>>().ok()?;
    let same = |built: bitcoin::ScriptBuf| built.as_script() == s;
    match ins.len() {
        5 => {
            let (a, b) = (key(&ins[1])?, key(&ins[2])?);
            same(script::funding(&a, &b)).then_some(ScriptKind::Funding)
        }
        4 => {
            let k = key(&ins[0])?;
            same(script::to_remote_anchors(&k)).then_some(ScriptKind::ToRemoteAnchors)
        }
        7 => {
            let k = key(&ins[0])?;
            same(script::anchor(&k)).then_some(ScriptKind::Anchor)
        }
        9 => {
            let (r, d) = (key(&ins[1])?, key(&ins[6])?);
            let delay = u16::try_from(ins[3].script_num()?).ok()?;
            same(script::to_local(&r, delay, &d))
                .then_some(ScriptKind::ToLocal { to_self_delay: delay })
        }
        n @ (26 | 29 | 32) => {
            let received = ins[12].opcode() == Some(bitcoin::opcodes::all::OP_IF);
            let ct = match (received, n) {
                (false, 26) | (true, 29) => ChannelType::StaticRemoteKey,
                (false, 29) | (true, 32) => ChannelType::Anchors,
                _ => return None,
            };
            if !received {
                let built = script::offered_htlc_from(
                    ct,
                    hash20(&ins[2])?,
                    &key(&ins[16])?,
                    &key(&ins[7])?,
                    hash20(&ins[21])?,
                );
                return same(built).then_some(ScriptKind::OfferedHtlc(ct));
            }
            let cltv = u32::try_from(ins[23].script_num()?).ok()?;
            let built = script::received_htlc_from(
                ct,
                hash20(&ins[2])?,
                &key(&ins[18])?,
                &key(&ins[7])?,
                hash20(&ins[14])?,
                cltv,
            );
            same(built).then_some(ScriptKind::ReceivedHtlc { channel_type: ct, cltv_expiry: cltv })
        }
        _ => None,
    }
}

/// How a justice transaction takes one revoked output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JusticeInput {
    /// A revoked `to_local` or HTLC-transaction output, through the revocation branch.
    ToLocal,
    /// A revoked HTLC output, with the revocation key.
    Htlc,
}

/// One HTLC output taken by its commitment's broadcaster through a pre-signed second-stage
/// input (with anchors, several may share a transaction with fee inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondStageInput {
    /// The commitment output it spends.
    pub htlc: OutPoint,
    /// The channel type (from the script).
    pub channel_type: ChannelType,
    /// `Some(preimage)` for an HTLC-success, `None` for an HTLC-timeout.
    pub preimage: Option<[u8; 32]>,
}

/// A BOLT 3 transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bolt3Tx {
    /// A commitment transaction.
    Commitment {
        /// The funding output it spends.
        funding: OutPoint,
        /// The commitment number XORed with the channel's obscuring factor.
        obscured_number: u64,
        /// Whether it carries both funding signatures.
        signed: bool,
    },
    /// HTLC-success and/or HTLC-timeout transactions (one, or several batched with fee
    /// inputs). An HTLC-timeout's expiry is the transaction's locktime.
    SecondStage {
        /// The HTLC outputs it takes.
        inputs: Vec<SecondStageInput>,
    },
    /// A mutual close of a channel.
    Closing {
        /// The funding output.
        funding: OutPoint,
    },
    /// A justice transaction (revoked outputs taken with the revocation key).
    Justice {
        /// The revoked outputs it takes and how.
        inputs: Vec<(OutPoint, JusticeInput)>,
    },
}

impl Bolt3Tx {
    /// A short lowercase name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Bolt3Tx::Commitment { .. } => "bolt3-commitment",
            Bolt3Tx::SecondStage { inputs } if inputs.iter().all(|i| i.preimage.is_some()) => {
                "bolt3-htlc-success"
            }
            Bolt3Tx::SecondStage { inputs } if inputs.iter().all(|i| i.preimage.is_none()) => {
                "bolt3-htlc-timeout"
            }
            Bolt3Tx::SecondStage { .. } => "bolt3-htlc-success-and-timeout",
            Bolt3Tx::Closing { .. } => "bolt3-closing",
            Bolt3Tx::Justice { .. } => "bolt3-justice",
        }
    }
}

fn witness_script<'a>(w: &[&'a [u8]]) -> Option<(&'a Script, ScriptKind)> {
    let s = Script::from_bytes(w.last()?);
    Some((s, classify_script(s)?))
}

/// Recognises a BOLT 3 transaction; `None` when it is not one.
pub fn recognise(tx: &Transaction) -> Option<Bolt3Tx> {
    if let [input] = tx.input.as_slice() {
        let w: Vec<&[u8]> = input.witness.iter().collect();
        let funding_spend =
            w.len() == 4 && matches!(witness_script(&w), Some((_, ScriptKind::Funding)));
        if let Some((lo, hi)) = obscured_parts(tx) {
            if funding_spend || w.is_empty() {
                return Some(Bolt3Tx::Commitment {
                    funding: input.previous_output,
                    obscured_number: u64::from(hi) << 24 | u64::from(lo),
                    signed: !w.is_empty(),
                });
            }
        }
        if funding_spend && tx.version == bitcoin::transaction::Version::TWO {
            return Some(Bolt3Tx::Closing { funding: input.previous_output });
        }
    }
    let mut second = Vec::new();
    let mut justice = Vec::new();
    for i in &tx.input {
        let w: Vec<&[u8]> = i.witness.iter().collect();
        let Some((s, kind)) = witness_script(&w) else { continue };
        match (kind, w.as_slice()) {
            (ScriptKind::OfferedHtlc(ct), [[], _, _, [], _]) => {
                second.push(SecondStageInput {
                    htlc: i.previous_output,
                    channel_type: ct,
                    preimage: None,
                });
            }
            (ScriptKind::ReceivedHtlc { channel_type, .. }, [[], _, _, preimage, _]) => {
                if let Ok(p) = <[u8; 32]>::try_from(*preimage) {
                    second.push(SecondStageInput {
                        htlc: i.previous_output,
                        channel_type,
                        preimage: Some(p),
                    });
                }
            }
            (ScriptKind::ToLocal { .. }, [_, middle, _]) if *middle == [1u8] => {
                justice.push((i.previous_output, JusticeInput::ToLocal));
            }
            (ScriptKind::OfferedHtlc(_) | ScriptKind::ReceivedHtlc { .. }, [_, middle, _])
                if middle.len() == 33
                    && s.as_bytes().get(3..23)
                        == Some(&hash160::Hash::hash(middle).to_byte_array()[..]) =>
            {
                justice.push((i.previous_output, JusticeInput::Htlc));
            }
            _ => {}
        }
    }
    if !justice.is_empty() {
        Some(Bolt3Tx::Justice { inputs: justice })
    } else if !second.is_empty() {
        Some(Bolt3Tx::SecondStage { inputs: second })
    } else {
        None
    }
}
