//! BOLT 3 transactions and keys: the on-chain layer of duplex (bidirectional) channels
//! (DESIGN §3b), byte for byte as the Lightning implementations build them.
//!
//! * [`keys`]: per-commitment secrets and points, the derived keys of each commitment.
//! * [`secrets`]: the compact store of the counterparty's revealed secrets.
//! * [`script`]: funding, `to_local`, `to_remote`, HTLC and anchor scripts.
//! * [`commitment`]: fees, trimming, outputs and their order.
//! * [`htlc`]: HTLC-timeout and HTLC-success transactions.
//! * [`closing`]: the mutual close.
//! * [`justice`]: sweeping a revoked commitment.
//! * [`spend`]: the witnesses of every other spending path.
//! * [`recognise`]: what a transaction found on chain is.
//!
//! Two channel types: `option_static_remotekey` and `option_anchors` (zero-fee HTLC
//! transactions). Pure functions: keys come in, transactions come out.

pub mod closing;
pub mod commitment;
pub mod htlc;
pub mod justice;
pub mod keys;
pub mod recognise;
pub mod script;
pub mod secrets;
pub mod sign;
pub mod spend;

use bitcoin::secp256k1::{ecdsa::Signature, PublicKey, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Transaction, Witness};

pub use commitment::{Commitment, CommitmentParams, CommitmentState, OutputRole};
pub use keys::{BaseSecrets, Basepoints, CommitmentKeys};
pub use secrets::CommitmentSecrets;

use crate::Error;

/// The commitment format both sides agreed on (BOLT 9 channel types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// `option_static_remotekey`: `to_remote` pays the remote `payment_basepoint` (P2WPKH).
    StaticRemoteKey,
    /// `option_anchors` (zero-fee HTLC transactions): two 330-sat anchors, `to_remote` and HTLC
    /// outputs wait one block, HTLC transactions carry no fee.
    Anchors,
}

impl ChannelType {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::StaticRemoteKey => "static_remotekey",
            ChannelType::Anchors => "anchors",
        }
    }
}

/// An HTLC committed to a commitment transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Htlc {
    /// Offered by the commitment's broadcaster (else received by it).
    pub offered: bool,
    /// The amount in millisatoshis (the output carries the whole satoshis).
    pub amount_msat: u64,
    /// SHA256 of the payment preimage.
    pub payment_hash: [u8; 32],
    /// The absolute block height at which it times out.
    pub cltv_expiry: u32,
}

impl CommitmentParams {
    /// Signs the commitment `tx` with a funding key (either side's; `SIGHASH_ALL`).
    ///
    /// # Errors
    /// As [`sign::sign`].
    pub fn sign_commitment(
        &self,
        tx: &Transaction,
        funding_key: &SecretKey,
    ) -> Result<Signature, Error> {
        sign::sign(
            tx,
            0,
            &self.funding_script(),
            self.funding_sat,
            EcdsaSighashType::All,
            funding_key,
        )
    }

    /// Checks the countersignatory's signature on the commitment `tx`.
    ///
    /// # Errors
    /// As [`sign::verify`].
    pub fn verify_countersignatory(
        &self,
        tx: &Transaction,
        signature: &Signature,
    ) -> Result<(), Error> {
        sign::verify(
            tx,
            0,
            &self.funding_script(),
            self.funding_sat,
            EcdsaSighashType::All,
            signature,
            &self.countersignatory.funding,
        )
    }

    /// The commitment `tx` (or a closing transaction of the channel) with its funding witness:
    /// `0 <sig for the first key> <sig for the second key> <script>`.
    pub fn complete_funding_spend(
        &self,
        tx: &Transaction,
        broadcaster_sig: &Signature,
        countersignatory_sig: &Signature,
    ) -> Transaction {
        let w = funding_witness(
            (&self.broadcaster.funding, broadcaster_sig),
            (&self.countersignatory.funding, countersignatory_sig),
        );
        let mut tx = tx.clone();
        if let Some(input) = tx.input.first_mut() {
            input.witness = w;
        }
        tx
    }
}

/// The witness that spends the 2-of-2 funding output: `0 <sig for the first key> <sig for the
/// second key> <script>`, keys in the script's (lexicographic) order, `SIGHASH_ALL`.
pub fn funding_witness(a: (&PublicKey, &Signature), b: (&PublicKey, &Signature)) -> Witness {
    let (first, second) = if a.0.serialize() <= b.0.serialize() { (a, b) } else { (b, a) };
    let mut w = Witness::new();
    w.push([]);
    w.push(sign::witness_item(first.1, EcdsaSighashType::All));
    w.push(sign::witness_item(second.1, EcdsaSighashType::All));
    w.push(script::funding(a.0, b.0).as_bytes());
    w
}
