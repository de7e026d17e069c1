//! Script verification with Bitcoin Core's own interpreter, plus the standardness rules Core's
//! mempool adds that `bitcoinconsensus` cannot be asked for.
//!
//! Consensus: `bitcoinconsensus` with `P2SH | DERSIG | NULLDUMMY | CHECKLOCKTIMEVERIFY |
//! CHECKSEQUENCEVERIFY | WITNESS` (and `TAPROOT` when every spent output is known).
//!
//! Standardness, checked here on the input's data: a push-only scriptSig (`SIGPUSHONLY`); every
//! element shaped like a signature is strict DER (`DERSIG`), low-S (`LOW_S`) and has a defined
//! sighash type (`STRICTENC`); keys in segwit v0 scripts are compressed (`WITNESS_PUBKEYTYPE`); a
//! channel script's branch selector is minimal (`MINIMALIF`); and Core's size limits on
//! scriptSigs (1,650 bytes), P2WSH stack items (80 bytes) and witness scripts (3,600 bytes).
//! Signatures are recognised by their shape (a `0x30` DER header, 9 to 73 bytes), because only an
//! interpreter knows which element a `CHECKSIG` will consume; this can flag a non-signature that
//! looks like one, never miss a signature of the channel scripts.

use bitcoin::consensus::Encodable;
use bitcoin::script::Instruction;
use bitcoin::{Script, Transaction, TxOut};

use crate::script::ChannelScript;
use crate::sig;

/// The consensus flags every input is verified with.
pub const CONSENSUS_FLAGS: u32 = bitcoinconsensus::VERIFY_P2SH
    | bitcoinconsensus::VERIFY_DERSIG
    | bitcoinconsensus::VERIFY_NULLDUMMY
    | bitcoinconsensus::VERIFY_CHECKLOCKTIMEVERIFY
    | bitcoinconsensus::VERIFY_CHECKSEQUENCEVERIFY
    | bitcoinconsensus::VERIFY_WITNESS;

/// Core's `MAX_STANDARD_SCRIPTSIG_SIZE`.
pub const MAX_STANDARD_SCRIPTSIG_SIZE: usize = 1_650;
/// Core's `MAX_STANDARD_P2WSH_STACK_ITEM_SIZE`.
pub const MAX_STANDARD_P2WSH_STACK_ITEM_SIZE: usize = 80;
/// Core's `MAX_STANDARD_P2WSH_SCRIPT_SIZE`.
pub const MAX_STANDARD_P2WSH_SCRIPT_SIZE: usize = 3_600;

/// The verdict on one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputVerdict {
    /// The input's index.
    pub index: usize,
    /// It passes Bitcoin Core's consensus script checks.
    pub valid: bool,
    /// It also passes the standardness rules above.
    pub standard: bool,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// Verifies input `index` of `tx`, which spends `spent`. `all_spent` are the outputs spent by
/// every input of `tx`, in order, when they are all known (needed for taproot).
pub fn verify_input(
    tx: &Transaction,
    index: usize,
    spent: &TxOut,
    all_spent: Option<&[TxOut]>,
) -> InputVerdict {
    let mut raw = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = tx.consensus_encode(&mut raw);
    verify_input_raw(tx, &raw, index, spent, all_spent)
}

/// [`verify_input`] with the transaction's serialisation already at hand (callers verifying
/// many inputs of one transaction serialise it once).
pub fn verify_input_raw(
    tx: &Transaction,
    raw_tx: &[u8],
    index: usize,
    spent: &TxOut,
    all_spent: Option<&[TxOut]>,
) -> InputVerdict {
    let verdict =
        |valid, standard, error: Option<String>| InputVerdict { index, valid, standard, error };
    if let Err(e) = verify_consensus(raw_tx, index, spent, all_spent) {
        return verdict(false, false, Some(e));
    }
    match check_standard_input(tx, index, spent) {
        Ok(()) => verdict(true, true, None),
        Err(e) => verdict(true, false, Some(e)),
    }
}

/// Runs only the consensus script check (`libbitcoinconsensus`) on input `index` of the
/// serialised transaction `raw_tx`. `all_spent`, when given, enables taproot.
///
/// # Errors
/// A lowercase message in Bitcoin Core's words.
pub fn verify_consensus(
    raw_tx: &[u8],
    index: usize,
    spent: &TxOut,
    all_spent: Option<&[TxOut]>,
) -> Result<(), String> {
    let utxos: Option<Vec<bitcoinconsensus::Utxo>> = all_spent.map(|outs| {
        outs.iter()
            .map(|o| bitcoinconsensus::Utxo {
                script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
                script_pubkey_len: o.script_pubkey.len() as u32,
                value: o.value.to_sat() as i64,
            })
            .collect()
    });
    let flags = if utxos.is_some() {
        CONSENSUS_FLAGS | bitcoinconsensus::VERIFY_TAPROOT
    } else {
        CONSENSUS_FLAGS
    };
    bitcoinconsensus::verify_with_flags(
        spent.script_pubkey.as_bytes(),
        spent.value.to_sat(),
        raw_tx,
        utxos.as_deref(),
        index,
        flags,
    )
    .map_err(|e| match e {
        bitcoinconsensus::Error::ERR_SCRIPT => {
            "mandatory-script-verify-flag-failed (script evaluated false or failed)".to_string()
        }
        other => format!("cannot verify: {other}"),
    })
}

/// Checks the standardness rules listed in the module documentation on input `index`.
///
/// # Errors
/// A lowercase message in Core's words for the first rule broken.
pub fn check_standard_input(tx: &Transaction, index: usize, spent: &TxOut) -> Result<(), String> {
    let input = tx.input.get(index).ok_or("input index out of range")?;
    let spk = &spent.script_pubkey;
    if input.script_sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE {
        return Err("scriptsig-size".into());
    }
    if !input.script_sig.is_push_only() {
        return Err("scriptsig-not-pushonly".into());
    }
    // Data elements that may be signatures: scriptSig pushes and witness items, minus the
    // redeem script (P2SH) and the witness script (P2WSH), which are scripts, not data.
    let mut elements: Vec<&[u8]> = Vec::new();
    for ins in input.script_sig.instructions() {
        if let Ok(Instruction::PushBytes(b)) = ins {
            elements.push(b.as_bytes());
        }
    }
    if spk.is_p2sh() {
        elements.pop();
    }
    let redeem = last_push(&input.script_sig);
    let program = if spk.is_witness_program() {
        Some(spk.as_script())
    } else if spk.is_p2sh() {
        redeem.map(Script::from_bytes).filter(|r| r.is_witness_program())
    } else {
        None
    };
    let witness: Vec<&[u8]> = input.witness.iter().collect();
    let witness_data = match witness.split_last() {
        Some((_, data)) if program.is_some_and(|p| p.is_p2wsh()) => data,
        _ => &witness[..],
    };
    elements.extend(witness_data.iter().copied());
    for e in &elements {
        if e.first() == Some(&0x30) && (9..=73).contains(&e.len()) {
            if !sig::is_strict_der(e) {
                return Err("non-mandatory-script-verify-flag (Non-canonical DER signature)".into());
            }
            let (flag, der) = e.split_last().ok_or("empty signature")?;
            if !sig::is_low_s(der) {
                return Err(
                    "non-mandatory-script-verify-flag (Non-canonical signature: S value is unnecessarily high)".into(),
                );
            }
            if !sig::is_defined_hashtype(*flag) {
                return Err(
                    "non-mandatory-script-verify-flag (Signature hash type missing or not understood)".into(),
                );
            }
        }
    }
    match program {
        Some(p) if p.is_p2wpkh() && (witness.len() != 2 || witness[1].len() != 33) => {
            return Err(
                "non-mandatory-script-verify-flag (Using non-compressed keys in segwit)".into()
            );
        }
        Some(p) if p.is_p2wsh() => {
            let Some((script, items)) = witness.split_last() else {
                return Ok(()); // consensus already refused an empty P2WSH witness
            };
            if script.len() > MAX_STANDARD_P2WSH_SCRIPT_SIZE {
                return Err("bad-witness-nonstandard (witness script too large)".into());
            }
            if items.iter().any(|i| i.len() > MAX_STANDARD_P2WSH_STACK_ITEM_SIZE) {
                return Err("bad-witness-nonstandard (stack item too large)".into());
            }
            let script = Script::from_bytes(script);
            check_compressed_keys(script)?;
            if ChannelScript::from_script(script).is_ok() {
                if let Some(selector) = items.last() {
                    if !(selector.is_empty() || *selector == [0x01]) {
                        return Err(
                            "non-mandatory-script-verify-flag (OP_IF/NOTIF argument must be minimal)".into(),
                        );
                    }
                }
            }
        }
        // Witness versions 1 to 16 that are not taproot (v1, 32 bytes) nor, unwrapped,
        // pay-to-anchor (BIP 433) are reserved for upgrades: not standard to spend
        // (`DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM`).
        Some(p) => {
            let bytes = p.as_bytes();
            let version = bytes.first().copied().unwrap_or(0);
            let taproot = version == 0x51 && bytes.len() == 34;
            let anchor = spk.as_bytes() == PAY_TO_ANCHOR;
            if version != 0 && !taproot && !anchor {
                return Err(
                    "non-mandatory-script-verify-flag (Witness version reserved for soft-fork upgrades)"
                        .into(),
                );
            }
        }
        None => {}
    }
    Ok(())
}

/// BIP 433's pay-to-anchor output script: `OP_1 <0x4e73>`.
pub const PAY_TO_ANCHOR: [u8; 4] = [0x51, 0x02, 0x4e, 0x73];

fn last_push(script_sig: &Script) -> Option<&[u8]> {
    match script_sig.instructions().filter_map(Result::ok).last() {
        Some(Instruction::PushBytes(b)) => Some(b.as_bytes()),
        _ => None,
    }
}

fn check_compressed_keys(script: &Script) -> Result<(), String> {
    for ins in script.instructions() {
        match ins {
            Ok(Instruction::PushBytes(b)) if b.len() == 65 && b.as_bytes()[0] == 0x04 => {
                return Err(
                    "non-mandatory-script-verify-flag (Using non-compressed keys in segwit)".into(),
                );
            }
            _ => {}
        }
    }
    Ok(())
}
