//! The funding output: where a channel's deposit sits.

use bitcoin::{Amount, OutPoint, Transaction};

use crate::script::{ChannelScript, OutputKind};
use crate::Error;

/// The channel's funding output, as found in the deposit transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FundingOutput {
    /// The outpoint; also the channel's id.
    pub outpoint: OutPoint,
    /// The deposit.
    pub value: Amount,
    /// How the output commits to the channel script.
    pub kind: OutputKind,
}

impl FundingOutput {
    /// Finds the one output of `tx` that funds `script`'s channel: the script as P2WSH or P2SH,
    /// or, for a dispute channel, its 2-of-2 funding script as P2WSH.
    ///
    /// # Errors
    /// [`Error::FundingOutputNotFound`] when no output pays it;
    /// [`Error::FundingOutputAmbiguous`] when several do.
    pub fn find(tx: &Transaction, script: &ChannelScript) -> Result<Self, Error> {
        let txid = tx.compute_txid();
        let (wsh, sh) = match script.lock() {
            crate::script::Lock::Expiry(_) => (
                script.script_pubkey(OutputKind::P2wsh),
                Some(script.script_pubkey(OutputKind::P2sh)),
            ),
            // A dispute channel is funded by P2WSH only.
            crate::script::Lock::Dispute(_) => {
                (super::dispute::funding_script_pubkey(script), None)
            }
        };
        let mut found = None;
        for (vout, out) in tx.output.iter().enumerate() {
            let kind = if out.script_pubkey == wsh {
                OutputKind::P2wsh
            } else if sh.as_ref() == Some(&out.script_pubkey) {
                OutputKind::P2sh
            } else {
                continue;
            };
            if found.is_some() {
                return Err(Error::FundingOutputAmbiguous { txid });
            }
            let vout = u32::try_from(vout).map_err(|_| Error::FundingOutputNotFound { txid })?;
            found =
                Some(FundingOutput { outpoint: OutPoint { txid, vout }, value: out.value, kind });
        }
        found.ok_or(Error::FundingOutputNotFound { txid })
    }
}
