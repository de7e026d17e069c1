//! HTLC-timeout and HTLC-success transactions (BOLT 3 second stage).
//!
//! The broadcaster of a commitment cannot spend an HTLC output alone: it spends it with a
//! transaction both sides signed beforehand, whose output is revocable and delayed like
//! `to_local`. The HTLC-timeout (for an offered HTLC) is timelocked to the HTLC's expiry; the
//! HTLC-success (for a received HTLC) reveals the preimage. With anchors they carry no fee and the
//! countersignatory signs `SIGHASH_SINGLE|ANYONECANPAY`, so the broadcaster can add inputs and a
//! change output to pay one.

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::{ecdsa::Signature, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};

use crate::bolt3::commitment::{htlc_tx_fee_sat, Commitment, CommitmentParams};
use crate::bolt3::keys::CommitmentKeys;
use crate::bolt3::{script, sign, ChannelType, Htlc};
use crate::Error;

/// A second-stage transaction and the HTLC output it spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtlcTx {
    /// The unsigned transaction.
    pub tx: Transaction,
    /// The index of the HTLC in the commitment state.
    pub htlc: usize,
    /// Whether it is an HTLC-timeout (the HTLC was offered by the broadcaster).
    pub timeout: bool,
    /// The HTLC output's witness script.
    pub witness_script: ScriptBuf,
    /// The HTLC output's value.
    pub value_sat: u64,
}

/// The sighash type of the countersignatory's HTLC signature.
pub fn remote_sighash(channel_type: ChannelType) -> EcdsaSighashType {
    match channel_type {
        ChannelType::StaticRemoteKey => EcdsaSighashType::All,
        ChannelType::Anchors => EcdsaSighashType::SinglePlusAnyoneCanPay,
    }
}

/// Builds the second-stage transaction of `htlc`, the output `vout` of commitment `txid`.
pub fn build_one(
    channel_type: ChannelType,
    commitment_txid: Txid,
    vout: u32,
    htlc: &Htlc,
    feerate_per_kw: u32,
    to_self_delay: u16,
    keys: &CommitmentKeys,
) -> Transaction {
    let fee = htlc_tx_fee_sat(channel_type, feerate_per_kw, htlc.offered);
    let out = script::to_local(&keys.revocation, to_self_delay, &keys.broadcaster_delayed);
    Transaction {
        version: Version::TWO,
        lock_time: if htlc.offered {
            LockTime::from_consensus(htlc.cltv_expiry)
        } else {
            LockTime::ZERO
        },
        input: vec![TxIn {
            previous_output: OutPoint { txid: commitment_txid, vout },
            script_sig: ScriptBuf::new(),
            sequence: match channel_type {
                ChannelType::StaticRemoteKey => Sequence::ZERO,
                ChannelType::Anchors => Sequence(1),
            },
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat((htlc.amount_msat / 1000).saturating_sub(fee)),
            script_pubkey: out.to_p2wsh(),
        }],
    }
}

/// The second-stage transactions of every untrimmed HTLC of `commitment`, in output order (the
/// order of the HTLC signatures in `commitment_signed`).
pub fn build_all(
    params: &CommitmentParams,
    htlcs: &[Htlc],
    feerate_per_kw: u32,
    commitment: &Commitment,
) -> Vec<HtlcTx> {
    let txid = commitment.tx.compute_txid();
    commitment
        .htlc_outputs()
        .filter_map(|(vout, i, ws)| {
            let h = htlcs.get(i)?;
            Some(HtlcTx {
                tx: build_one(
                    params.channel_type,
                    txid,
                    vout,
                    h,
                    feerate_per_kw,
                    params.to_self_delay,
                    &commitment.keys,
                ),
                htlc: i,
                timeout: h.offered,
                witness_script: ws.clone(),
                value_sat: h.amount_msat / 1000,
            })
        })
        .collect()
}

impl HtlcTx {
    /// The countersignatory's signature (sent in `commitment_signed`), with its
    /// `remote_htlcpubkey` private key.
    ///
    /// # Errors
    /// As [`sign::sign`].
    pub fn sign_remote(
        &self,
        channel_type: ChannelType,
        key: &SecretKey,
    ) -> Result<Signature, Error> {
        sign::sign(
            &self.tx,
            0,
            &self.witness_script,
            self.value_sat,
            remote_sighash(channel_type),
            key,
        )
    }

    /// The broadcaster's own signature (`SIGHASH_ALL`), with its `local_htlcpubkey` private key.
    ///
    /// # Errors
    /// As [`sign::sign`].
    pub fn sign_local(&self, key: &SecretKey) -> Result<Signature, Error> {
        self.sign_local_on(&self.tx, key)
    }

    /// The broadcaster's signature on `tx`: this transaction with inputs and outputs added
    /// after the HTLC input and its output (with anchors, to pay a fee; the countersignatory's
    /// `SIGHASH_SINGLE|ANYONECANPAY` signature stays valid).
    ///
    /// # Errors
    /// [`Error::Bolt3`] when `tx` does not keep this transaction's input 0 and output 0; as
    /// [`sign::sign`].
    pub fn sign_local_on(&self, tx: &Transaction, key: &SecretKey) -> Result<Signature, Error> {
        self.check_extends(tx)?;
        sign::sign(tx, 0, &self.witness_script, self.value_sat, EcdsaSighashType::All, key)
    }

    fn check_extends(&self, tx: &Transaction) -> Result<(), Error> {
        let same_input = tx.input.first().map(|i| (i.previous_output, i.sequence))
            == self.tx.input.first().map(|i| (i.previous_output, i.sequence));
        if !same_input
            || tx.output.first() != self.tx.output.first()
            || tx.version != self.tx.version
            || tx.lock_time != self.tx.lock_time
        {
            return Err(Error::Bolt3("the transaction does not extend this HTLC transaction"));
        }
        Ok(())
    }

    /// Checks the countersignatory's signature against `keys.countersignatory_htlc`.
    ///
    /// # Errors
    /// As [`sign::verify`].
    pub fn verify_remote(
        &self,
        channel_type: ChannelType,
        keys: &CommitmentKeys,
        signature: &Signature,
    ) -> Result<(), Error> {
        sign::verify(
            &self.tx,
            0,
            &self.witness_script,
            self.value_sat,
            remote_sighash(channel_type),
            signature,
            &keys.countersignatory_htlc,
        )
    }

    /// The transaction with its witness: `0 <remote sig> <local sig> <preimage or empty>
    /// <script>`.
    ///
    /// # Errors
    /// [`Error::Bolt3`] when an HTLC-success is given no preimage, or an HTLC-timeout one.
    pub fn complete(
        &self,
        channel_type: ChannelType,
        remote: &Signature,
        local: &Signature,
        preimage: Option<&[u8; 32]>,
    ) -> Result<Transaction, Error> {
        self.complete_on(self.tx.clone(), channel_type, remote, local, preimage)
    }

    /// [`Self::complete`] on `tx`, this transaction with inputs and outputs added (see
    /// [`Self::sign_local_on`]); only input 0's witness is written.
    ///
    /// # Errors
    /// As [`Self::complete`], and when `tx` does not extend this transaction.
    pub fn complete_on(
        &self,
        mut tx: Transaction,
        channel_type: ChannelType,
        remote: &Signature,
        local: &Signature,
        preimage: Option<&[u8; 32]>,
    ) -> Result<Transaction, Error> {
        self.check_extends(&tx)?;
        let last: &[u8] = match (self.timeout, preimage) {
            (true, None) => &[],
            (false, Some(p)) => p,
            (true, Some(_)) => return Err(Error::Bolt3("an HTLC-timeout takes no preimage")),
            (false, None) => return Err(Error::Bolt3("an HTLC-success needs the preimage")),
        };
        let mut w = Witness::new();
        w.push([]);
        w.push(sign::witness_item(remote, remote_sighash(channel_type)));
        w.push(sign::witness_item(local, EcdsaSighashType::All));
        w.push(last);
        w.push(self.witness_script.as_bytes());
        tx.input[0].witness = w;
        Ok(tx)
    }
}
