//! Bitcoin Core's transaction standardness (`IsStandardTx`, the witness rules of
//! `IsWitnessStandard` that concern pay-to-anchor), relay-fee policy, and the constants of
//! TRUC (BIP 431), ephemeral dust and packages (Core 28/29).

use paychan_core::bitcoin::{FeeRate, Script, Transaction, TxOut};
use paychan_core::policy::{dust_threshold, DEFAULT_DUST_RELAY_FEE};
use paychan_core::verify::MAX_STANDARD_SCRIPTSIG_SIZE;

/// Core's `MAX_STANDARD_TX_WEIGHT`.
pub const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
/// Core's `MIN_STANDARD_TX_NONWITNESS_SIZE`.
pub const MIN_STANDARD_TX_NONWITNESS_SIZE: usize = 65;
/// Core's `MAX_OP_RETURN_RELAY` (83 bytes of script).
pub const MAX_OP_RETURN_RELAY: usize = 83;
/// Core's default `-minrelaytxfee` (1 sat/vB).
pub const MIN_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(250);
/// Core's default `maxfeerate` for `sendrawtransaction` (0.10 BTC/kvB = 10,000 sat/vB).
pub const DEFAULT_MAX_FEE_RATE: FeeRate = FeeRate::from_sat_per_kwu(2_500_000);
/// Core's `DEFAULT_ANCESTOR_LIMIT`.
pub const ANCESTOR_LIMIT: usize = 25;
/// Core's default `-incrementalrelayfee` (1 sat/vB): what a replacement pays for its own relay.
pub const INCREMENTAL_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(250);
/// BIP 431's version: `TRUC_VERSION`.
pub const TRUC_VERSION: i32 = 3;
/// `TRUC_MAX_VSIZE`: the largest TRUC transaction.
pub const TRUC_MAX_VSIZE: u64 = 10_000;
/// `TRUC_CHILD_MAX_VSIZE`: the largest TRUC transaction with an unconfirmed TRUC parent.
pub const TRUC_CHILD_MAX_VSIZE: u64 = 1_000;
/// Core 29's `MAX_DUST_OUTPUTS_PER_TX`: dust is allowed once per transaction, as ephemeral dust.
pub const MAX_DUST_OUTPUTS_PER_TX: usize = 1;
/// Core's `MAX_PACKAGE_COUNT`.
pub const MAX_PACKAGE_COUNT: usize = 25;
/// Core's `MAX_PACKAGE_WEIGHT`.
pub const MAX_PACKAGE_WEIGHT: u64 = 404_000;

/// Whether `spk` is pay-to-anchor (BIP 433): `OP_1 <0x4e73>`.
pub fn is_pay_to_anchor(spk: &Script) -> bool {
    spk.as_bytes() == paychan_core::verify::PAY_TO_ANCHOR
}

/// Core's `IsDust` at the default dust relay fee.
pub fn is_dust(out: &TxOut) -> bool {
    out.value < dust_threshold(&out.script_pubkey, DEFAULT_DUST_RELAY_FEE)
}

/// The indexes of `tx`'s dust outputs (Core's `GetDust`).
pub fn dust_outputs(tx: &Transaction) -> Vec<u32> {
    tx.output.iter().enumerate().filter(|(_, o)| is_dust(o)).map(|(i, _)| i as u32).collect()
}

/// The pay-to-anchor rule of Core's `IsWitnessStandard`: a P2A output is spent with an empty
/// witness ("witness stuffing" otherwise). `spent` are the outputs `tx` spends, in order.
///
/// # Errors
/// `bad-witness-nonstandard`.
pub fn check_witness_standard(tx: &Transaction, spent: &[TxOut]) -> Result<(), String> {
    for (input, prev) in tx.input.iter().zip(spent) {
        if is_pay_to_anchor(&prev.script_pubkey) && !input.witness.is_empty() {
            return Err("bad-witness-nonstandard".into());
        }
    }
    Ok(())
}

/// `IsStandardTx`: the reason in Core's words when `tx` is not standard.
pub fn check_standard(tx: &Transaction) -> Result<(), String> {
    if !(1..=3).contains(&tx.version.0) {
        return Err("version".into());
    }
    if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
        return Err("tx-size".into());
    }
    if tx.base_size() < MIN_STANDARD_TX_NONWITNESS_SIZE {
        return Err("tx-size-small".into());
    }
    for input in &tx.input {
        if input.script_sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE {
            return Err("scriptsig-size".into());
        }
        if !input.script_sig.is_push_only() {
            return Err("scriptsig-not-pushonly".into());
        }
    }
    let mut op_returns = 0;
    let mut dust = 0;
    for out in &tx.output {
        let spk = &out.script_pubkey;
        if spk.is_op_return() {
            if spk.len() > MAX_OP_RETURN_RELAY {
                return Err("scriptpubkey".into());
            }
            op_returns += 1;
            continue;
        }
        let standard = spk.is_p2pkh()
            || spk.is_p2sh()
            || spk.is_witness_program()
            || spk.is_p2pk()
            || spk.is_multisig();
        if !standard {
            return Err("scriptpubkey".into());
        }
        if is_dust(out) {
            dust += 1;
        }
    }
    // One dust output, which must be spent in the same package (ephemeral dust: the mempool
    // checks that the transaction pays no fee and that its child spends it).
    if dust > MAX_DUST_OUTPUTS_PER_TX {
        return Err("dust".into());
    }
    if op_returns > 1 {
        return Err("multi-op-return".into());
    }
    Ok(())
}
