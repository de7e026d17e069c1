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
    /// An HTLC-success transaction (reveals the preimage).
    HtlcSuccess {
        /// The commitment output it spends.
        htlc: OutPoint,
        /// The preimage.
        preimage: [u8; 32],
        /// The channel type (from the script).
        channel_type: ChannelType,
    },
    /// An HTLC-timeout transaction.
    HtlcTimeout {
        /// The commitment output it spends.
        htlc: OutPoint,
        /// The HTLC's expiry (the transaction's locktime).
        cltv_expiry: u32,
        /// The channel type (from the script).
        channel_type: ChannelType,
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

/// Recognises a BOLT 3 transaction; `None` when it is not one.
pub fn recognise(tx: &Transaction) -> Option<Bolt3Tx> {
    if let [input] = tx.input.as_slice() {
        let w: Vec<&[u8]> = input.witness.iter().collect();
        let last = w.last().map(|s| Script::from_bytes(s));
        let kind = last.and_then(classify_script);
        let obscured = obscured_parts(tx);
        match (kind, w.len()) {
            (Some(ScriptKind::Funding), 4) | (None, 0) if obscured.is_some() => {
                let (lo, hi) = obscured?;
                return Some(Bolt3Tx::Commitment {
                    funding: input.previous_output,
                    obscured_number: u64::from(hi) << 24 | u64::from(lo),
                    signed: !w.is_empty(),
                });
            }
            (Some(ScriptKind::Funding), 4) if tx.version == bitcoin::transaction::Version::TWO => {
                return Some(Bolt3Tx::Closing { funding: input.previous_output });
            }
            (Some(ScriptKind::OfferedHtlc(ct)), 5) if w[0].is_empty() && w[3].is_empty() => {
                return Some(Bolt3Tx::HtlcTimeout {
                    htlc: input.previous_output,
                    cltv_expiry: tx.lock_time.to_consensus_u32(),
                    channel_type: ct,
                });
            }
            (Some(ScriptKind::ReceivedHtlc { channel_type, .. }), 5) if w[0].is_empty() => {
                let preimage = <[u8; 32]>::try_from(w[3]).ok()?;
                return Some(Bolt3Tx::HtlcSuccess {
                    htlc: input.previous_output,
                    preimage,
                    channel_type,
                });
            }
            _ => {}
        }
    }
    let inputs: Vec<(OutPoint, JusticeInput)> = tx
        .input
        .iter()
        .filter_map(|i| {
            let w: Vec<&[u8]> = i.witness.iter().collect();
            let [_, middle, last] = w.as_slice() else { return None };
            let s = Script::from_bytes(last);
            match classify_script(s)? {
                ScriptKind::ToLocal { .. } if *middle == [1u8] => {
                    Some((i.previous_output, JusticeInput::ToLocal))
                }
                ScriptKind::OfferedHtlc(_) | ScriptKind::ReceivedHtlc { .. }
                    if middle.len() == 33
                        && s.as_bytes().get(3..23)
                            == Some(&hash160::Hash::hash(middle).to_byte_array()[..]) =>
                {
                    Some((i.previous_output, JusticeInput::Htlc))
                }
                _ => None,
            }
        })
        .collect();
    (!inputs.is_empty()).then_some(Bolt3Tx::Justice { inputs })
}
