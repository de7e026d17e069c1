//! Bitcoin Core's transaction standardness (`IsStandardTx`) and relay-fee policy.

use paychan_core::bitcoin::{FeeRate, Transaction};
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
        if out.value < dust_threshold(spk, DEFAULT_DUST_RELAY_FEE) {
            return Err("dust".into());
        }
    }
    if op_returns > 1 {
        return Err("multi-op-return".into());
    }
    Ok(())
}
