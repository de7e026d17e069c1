//! The witnesses of the BOLT 3 spending paths that are not pre-signed by both sides (those are
//! in [`crate::bolt3::htlc`] and [`crate::bolt3::justice`]).
//!
//! | output | who, when | witness | input needs |
//! |---|---|---|---|
//! | `to_local` / second-stage output | owner, after `to_self_delay` | `<sig> <> <script>` | sequence ≥ delay |
//! | `to_remote` (static) | remote, at once | `<sig> <pubkey>` | |
//! | `to_remote` (anchors) | remote, one block | `<sig> <script>` | sequence ≥ 1 |
//! | offered HTLC | remote, with the preimage | `<sig> <preimage> <script>` | (anchors: sequence ≥ 1) |
//! | received HTLC | remote, after expiry | `<sig> <> <script>` | locktime ≥ expiry (anchors: sequence ≥ 1) |
//! | anchor | its owner | `<sig> <script>` | |
//! | anchor | anyone, 16 blocks on | `<> <script>` | sequence ≥ 16 |

use bitcoin::secp256k1::{ecdsa::Signature, PublicKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Script, Witness};

use crate::bolt3::sign::witness_item;

fn witness(items: &[&[u8]], script: &Script) -> Witness {
    let mut w = Witness::new();
    for i in items {
        w.push(i);
    }
    w.push(script.as_bytes());
    w
}

/// The owner takes a `to_local` (or second-stage) output after `to_self_delay`.
pub fn to_local_delayed(sig: &Signature, script: &Script) -> Witness {
    witness(&[&witness_item(sig, EcdsaSighashType::All), &[]], script)
}

/// The remote takes its `to_remote` P2WPKH output (`option_static_remotekey`).
pub fn to_remote_static(sig: &Signature, key: &PublicKey) -> Witness {
    let mut w = Witness::new();
    w.push(witness_item(sig, EcdsaSighashType::All));
    w.push(key.serialize());
    w
}

/// The remote takes its `to_remote` output with anchors (after one confirmation).
pub fn to_remote_anchors(sig: &Signature, script: &Script) -> Witness {
    witness(&[&witness_item(sig, EcdsaSighashType::All)], script)
}

/// The remote claims an HTLC offered to it with the preimage.
pub fn offered_htlc_preimage(sig: &Signature, preimage: &[u8; 32], script: &Script) -> Witness {
    witness(&[&witness_item(sig, EcdsaSighashType::All), preimage], script)
}

/// The remote takes back an HTLC it offered (received by the broadcaster) after its expiry.
pub fn received_htlc_timeout(sig: &Signature, script: &Script) -> Witness {
    witness(&[&witness_item(sig, EcdsaSighashType::All), &[]], script)
}

/// An anchor spent by its owner's funding key.
pub fn anchor_by_owner(sig: &Signature, script: &Script) -> Witness {
    witness(&[&witness_item(sig, EcdsaSighashType::All)], script)
}

/// An anchor spent by anyone, 16 blocks after the commitment confirmed.
pub fn anchor_by_anyone(script: &Script) -> Witness {
    witness(&[&[]], script)
}
