//! The (legacy, `closing_signed`) closing transaction: version 2, locktime 0, the funding input
//! final (sequence 0xFFFFFFFF), the opener's output less the fee, outputs below the signer's
//! dust limit removed, BIP 69 order.

use bitcoin::absolute::LockTime;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use crate::Error;

/// The balances and scripts of a mutual close, from one side ("local").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosingSpec {
    /// The funding output.
    pub funding_outpoint: OutPoint,
    /// The local final balance (rounded down to whole satoshis).
    pub to_local_msat: u64,
    /// The remote final balance.
    pub to_remote_msat: u64,
    /// The local `scriptpubkey` of `shutdown`.
    pub local_script: ScriptBuf,
    /// The remote `scriptpubkey` of `shutdown`.
    pub remote_script: ScriptBuf,
    /// `fee_satoshis` of `closing_signed`, paid by the opener.
    pub fee_sat: u64,
    /// Whether local opened the channel.
    pub local_is_opener: bool,
    /// The signer's `dust_limit_satoshis`: outputs below it are removed.
    pub dust_limit_sat: u64,
}

/// Builds the closing transaction of `spec`.
///
/// # Errors
/// [`Error::InsufficientFunds`] when the opener's balance cannot pay the fee;
/// [`Error::Bolt3`] when both outputs are below the dust limit.
pub fn build(spec: &ClosingSpec) -> Result<Transaction, Error> {
    let mut local = spec.to_local_msat / 1000;
    let mut remote = spec.to_remote_msat / 1000;
    let opener = if spec.local_is_opener { &mut local } else { &mut remote };
    *opener = opener.checked_sub(spec.fee_sat).ok_or(Error::InsufficientFunds {
        needed: Amount::from_sat(spec.fee_sat),
        available: Amount::from_sat(*opener),
    })?;
    let mut output: Vec<TxOut> = [(local, &spec.local_script), (remote, &spec.remote_script)]
        .into_iter()
        .filter(|(v, _)| *v >= spec.dust_limit_sat && *v > 0)
        .map(|(v, s)| TxOut { value: Amount::from_sat(v), script_pubkey: s.clone() })
        .collect();
    if output.is_empty() {
        return Err(Error::Bolt3("both closing outputs are below the dust limit"));
    }
    output
        .sort_by(|a, b| a.value.cmp(&b.value).then_with(|| a.script_pubkey.cmp(&b.script_pubkey)));
    Ok(Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: spec.funding_outpoint,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output,
    })
}
