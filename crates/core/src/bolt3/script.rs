//! BOLT 3 output scripts: funding, `to_local`, `to_remote`, offered and received HTLCs, anchors.

use bitcoin::hashes::{hash160, ripemd160, Hash};
use bitcoin::opcodes::all::{
    OP_CHECKMULTISIG, OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CLTV, OP_CSV, OP_DROP, OP_DUP, OP_ELSE,
    OP_ENDIF, OP_EQUAL, OP_EQUALVERIFY, OP_HASH160, OP_IF, OP_IFDUP, OP_NOTIF, OP_PUSHNUM_16,
    OP_SIZE, OP_SWAP,
};
use bitcoin::script::Builder;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{CompressedPublicKey, ScriptBuf};

use crate::bolt3::ChannelType;

/// The value of each anchor output (BOLT 3, `option_anchors`).
pub const ANCHOR_SAT: u64 = 330;

/// The 2-of-2 funding witness script, the two keys in lexicographic order of their
/// compressed serialisation.
pub fn funding(a: &PublicKey, b: &PublicKey) -> ScriptBuf {
    let (first, second) = if a.serialize() <= b.serialize() { (a, b) } else { (b, a) };
    Builder::new()
        .push_int(2)
        .push_slice(first.serialize())
        .push_slice(second.serialize())
        .push_int(2)
        .push_opcode(OP_CHECKMULTISIG)
        .into_script()
}

/// The revocable output (`to_local`, and the output of HTLC second-stage transactions):
///
/// ```text
/// OP_IF <revocationpubkey> OP_ELSE <to_self_delay> OP_CSV OP_DROP <local_delayedpubkey>
/// OP_ENDIF OP_CHECKSIG
/// ```
pub fn to_local(revocation: &PublicKey, to_self_delay: u16, delayed: &PublicKey) -> ScriptBuf {
    Builder::new()
        .push_opcode(OP_IF)
        .push_slice(revocation.serialize())
        .push_opcode(OP_ELSE)
        .push_int(i64::from(to_self_delay))
        .push_opcode(OP_CSV)
        .push_opcode(OP_DROP)
        .push_slice(delayed.serialize())
        .push_opcode(OP_ENDIF)
        .push_opcode(OP_CHECKSIG)
        .into_script()
}

/// The `to_remote` witness script with anchors: `<remotepubkey> OP_CHECKSIGVERIFY 1 OP_CSV`.
pub fn to_remote_anchors(remote: &PublicKey) -> ScriptBuf {
    Builder::new()
        .push_slice(remote.serialize())
        .push_opcode(OP_CHECKSIGVERIFY)
        .push_int(1)
        .push_opcode(OP_CSV)
        .into_script()
}

/// The `to_remote` output's scriptPubKey: P2WPKH of `remotepubkey` (`option_static_remotekey`)
/// or P2WSH of [`to_remote_anchors`].
pub fn to_remote_script_pubkey(channel_type: ChannelType, remote: &PublicKey) -> ScriptBuf {
    match channel_type {
        ChannelType::StaticRemoteKey => {
            ScriptBuf::new_p2wpkh(&CompressedPublicKey(*remote).wpubkey_hash())
        }
        ChannelType::Anchors => to_remote_anchors(remote).to_p2wsh(),
    }
}

/// An anchor: `<funding_pubkey> OP_CHECKSIG OP_IFDUP OP_NOTIF OP_16 OP_CSV OP_ENDIF`.
pub fn anchor(funding_pubkey: &PublicKey) -> ScriptBuf {
    Builder::new()
        .push_slice(funding_pubkey.serialize())
        .push_opcode(OP_CHECKSIG)
        .push_opcode(OP_IFDUP)
        .push_opcode(OP_NOTIF)
        .push_opcode(OP_PUSHNUM_16)
        .push_opcode(OP_CSV)
        .push_opcode(OP_ENDIF)
        .into_script()
}

pub(crate) fn revocation_hash(revocation: &PublicKey) -> [u8; 20] {
    hash160::Hash::hash(&revocation.serialize()).to_byte_array()
}

pub(crate) fn payment_hash160(payment_hash: &[u8; 32]) -> [u8; 20] {
    ripemd160::Hash::hash(payment_hash).to_byte_array()
}

/// An offered HTLC (the broadcaster pays it; the remote claims it with the preimage, the
/// broadcaster takes it back through an HTLC-timeout transaction).
pub fn offered_htlc(
    channel_type: ChannelType,
    revocation: &PublicKey,
    local_htlc: &PublicKey,
    remote_htlc: &PublicKey,
    payment_hash: &[u8; 32],
) -> ScriptBuf {
    offered_htlc_from(
        channel_type,
        revocation_hash(revocation),
        local_htlc,
        remote_htlc,
        payment_hash160(payment_hash),
    )
}

/// [`offered_htlc`] from the hashes the script holds (to rebuild a script found on chain).
pub(crate) fn offered_htlc_from(
    channel_type: ChannelType,
    revocation_hash: [u8; 20],
    local_htlc: &PublicKey,
    remote_htlc: &PublicKey,
    payment_hash160: [u8; 20],
) -> ScriptBuf {
    let b = htlc_head(revocation_hash, remote_htlc).push_opcode(OP_NOTIF).push_opcode(OP_DROP);
    let b = two_of_two_with_local(b, local_htlc)
        .push_opcode(OP_ELSE)
        .push_opcode(OP_HASH160)
        .push_slice(payment_hash160)
        .push_opcode(OP_EQUALVERIFY)
        .push_opcode(OP_CHECKSIG)
        .push_opcode(OP_ENDIF);
    csv_one(b, channel_type).push_opcode(OP_ENDIF).into_script()
}

/// A received HTLC (the broadcaster claims it with the preimage through an HTLC-success
/// transaction; the remote takes it back after `cltv_expiry`).
pub fn received_htlc(
    channel_type: ChannelType,
    revocation: &PublicKey,
    local_htlc: &PublicKey,
    remote_htlc: &PublicKey,
    payment_hash: &[u8; 32],
    cltv_expiry: u32,
) -> ScriptBuf {
    received_htlc_from(
        channel_type,
        revocation_hash(revocation),
        local_htlc,
        remote_htlc,
        payment_hash160(payment_hash),
        cltv_expiry,
    )
}

/// [`received_htlc`] from the hashes the script holds.
pub(crate) fn received_htlc_from(
    channel_type: ChannelType,
    revocation_hash: [u8; 20],
    local_htlc: &PublicKey,
    remote_htlc: &PublicKey,
    payment_hash160: [u8; 20],
    cltv_expiry: u32,
) -> ScriptBuf {
    let b = htlc_head(revocation_hash, remote_htlc)
        .push_opcode(OP_IF)
        .push_opcode(OP_HASH160)
        .push_slice(payment_hash160)
        .push_opcode(OP_EQUALVERIFY);
    let b = two_of_two_with_local(b, local_htlc)
        .push_opcode(OP_ELSE)
        .push_opcode(OP_DROP)
        .push_int(i64::from(cltv_expiry))
        .push_opcode(OP_CLTV)
        .push_opcode(OP_DROP)
        .push_opcode(OP_CHECKSIG)
        .push_opcode(OP_ENDIF);
    csv_one(b, channel_type).push_opcode(OP_ENDIF).into_script()
}

/// The part both HTLC scripts share: the revocation branch, then the remote HTLC key and the
/// preimage-size test that picks the branch.
///
/// ```text
/// OP_DUP OP_HASH160 <RIPEMD160(SHA256(revocationpubkey))> OP_EQUAL
/// OP_IF OP_CHECKSIG
/// OP_ELSE <remote_htlcpubkey> OP_SWAP OP_SIZE 32 OP_EQUAL
/// ```
fn htlc_head(revocation_hash: [u8; 20], remote_htlc: &PublicKey) -> Builder {
    Builder::new()
        .push_opcode(OP_DUP)
        .push_opcode(OP_HASH160)
        .push_slice(revocation_hash)
        .push_opcode(OP_EQUAL)
        .push_opcode(OP_IF)
        .push_opcode(OP_CHECKSIG)
        .push_opcode(OP_ELSE)
        .push_slice(remote_htlc.serialize())
        .push_opcode(OP_SWAP)
        .push_opcode(OP_SIZE)
        .push_int(32)
        .push_opcode(OP_EQUAL)
}

/// `2 OP_SWAP <local_htlcpubkey> 2 OP_CHECKMULTISIG`: the remote's key (already on the stack
/// under its signature) and the local key, 2-of-2 (the second-stage transactions' path).
fn two_of_two_with_local(b: Builder, local_htlc: &PublicKey) -> Builder {
    b.push_int(2)
        .push_opcode(OP_SWAP)
        .push_slice(local_htlc.serialize())
        .push_int(2)
        .push_opcode(OP_CHECKMULTISIG)
}

fn csv_one(b: Builder, channel_type: ChannelType) -> Builder {
    match channel_type {
        ChannelType::StaticRemoteKey => b,
        ChannelType::Anchors => b.push_int(1).push_opcode(OP_CSV).push_opcode(OP_DROP),
    }
}
