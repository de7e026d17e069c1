//! `paychan tx decode` and `paychan tx verify`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::deserialize;
use paychan_core::bitcoin::hex::FromHex;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, Script, ScriptBuf, Transaction, TxOut,
    Txid,
};
use paychan_core::bolt3::recognise::{recognise as recognise_bolt3, Bolt3Tx, JusticeInput};
use paychan_core::script::{ChannelScript, Lock};
use paychan_core::tx::recognise::{find_channel_spend, find_funding, Role};
use paychan_core::verify::verify_input_raw;
use serde_json::{json, Value};

use super::common::Common;
use crate::CliError;

/// `paychan tx …`
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// Decode a transaction; recognise channel funding, refunds, payments and settlements, and
    /// BOLT 3 commitment, HTLC-timeout/success, closing and justice transactions.
    Decode(DecodeArgs),
    /// Verify a transaction's inputs with Bitcoin Core's script interpreter.
    ///
    /// Checks every input of TX that spends a given output with libbitcoinconsensus (P2SH,
    /// DERSIG, NULLDUMMY, CLTV, CSV, WITNESS; TAPROOT when every spent output is given), then
    /// Bitcoin Core's standardness rules (low-S, strict DER, defined sighash types, push-only
    /// scriptSig, compressed segwit keys). Prints JSON. Exit 0 when every input checked is
    /// valid, 1 when one fails, 2 on malformed input.
    Verify(VerifyArgs),
}

/// Arguments of `paychan tx decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The transaction, consensus-encoded hex.
    tx: String,
    /// A channel script (hex) to recognise the funding output of.
    #[arg(long = "script", value_name = "SCRIPT_HEX")]
    script: Option<String>,
}

/// Arguments of `paychan tx verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The transaction to verify, consensus-encoded hex.
    tx: String,
    /// A transaction whose outputs TX spends (repeatable).
    #[arg(long = "spent", value_name = "FUNDING_TX_HEX")]
    spent: Vec<String>,
    /// An output TX spends, given directly (repeatable).
    #[arg(long = "spent-output", value_name = "TXID:VOUT:VALUE_SAT:SCRIPT_HEX")]
    spent_output: Vec<String>,
}

/// Runs a `paychan tx` command.
pub fn run(cmd: TxCommand, common: &Common) -> Result<ExitCode, CliError> {
    match cmd {
        TxCommand::Decode(a) => {
            let v = decode(&a, common.network_for_display().network)?;
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        TxCommand::Verify(a) => {
            let (v, all_valid) = verify(&a)?;
            print_json(&v)?;
            Ok(if all_valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn print_json(v: &Value) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn parse_tx(what: &str, hex: &str) -> Result<Transaction, CliError> {
    let bytes = Vec::<u8>::from_hex(hex.trim())
        .map_err(|e| CliError::Usage(format!("{what} is not hex: {e}")))?;
    deserialize(&bytes).map_err(|e| CliError::Usage(format!("{what} is not a transaction: {e}")))
}

fn address(spk: &Script, network: Network) -> Value {
    Address::from_script(spk, network).map(|a| json!(a.to_string())).unwrap_or(Value::Null)
}

/// The script's lock: an absolute expiry (height or time) or a dispute period in blocks.
fn expiry_json(lock: Lock) -> Value {
    match lock {
        Lock::Expiry(LockTime::Blocks(h)) => {
            json!({"type": "height", "value": h.to_consensus_u32()})
        }
        Lock::Expiry(LockTime::Seconds(t)) => {
            json!({"type": "time", "value": t.to_consensus_u32()})
        }
        Lock::Dispute(blocks) => json!({"type": "dispute_blocks", "value": blocks}),
    }
}

fn pays_key(spk: &Script, key: PublicKey) -> bool {
    let k = CompressedPublicKey(key);
    *spk == ScriptBuf::new_p2pkh(&k.pubkey_hash())
        || *spk == ScriptBuf::new_p2wpkh(&k.wpubkey_hash())
}

fn channel_json(tx: &Transaction, role: Role, script: &ChannelScript, extra: Value) -> Value {
    let sum = |key| -> u64 {
        tx.output.iter().filter(|o| pays_key(&o.script_pubkey, key)).map(|o| o.value.to_sat()).sum()
    };
    let mut v = json!({
        "role": role.as_str(),
        "merchant_pubkey": script.merchant().to_string(),
        "customer_pubkey": script.customer().to_string(),
        "expiry": expiry_json(script.lock()),
        "script": script.script().to_hex_string(),
        "to_merchant_key_sat": sum(script.merchant()),
        "to_customer_key_sat": sum(script.customer()),
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

fn decode(a: &DecodeArgs, network: Network) -> Result<Value, CliError> {
    let tx = parse_tx("TX", &a.tx)?;
    let hint = a
        .script
        .as_deref()
        .map(|h| {
            let s = ScriptBuf::from_hex(h.trim())
                .map_err(|e| CliError::Usage(format!("--script is not hex: {e}")))?;
            ChannelScript::from_script(&s).map_err(|e| CliError::Usage(format!("--script: {e}")))
        })
        .transpose()?;
    let inputs: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            json!({
                "txid": i.previous_output.txid.to_string(),
                "vout": i.previous_output.vout,
                "sequence": i.sequence.0,
                "script_sig": i.script_sig.to_hex_string(),
                "witness": i.witness.iter().map(|w| json!(hex(w))).collect::<Vec<_>>(),
            })
        })
        .collect();
    let outputs: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            json!({
                "n": n,
                "value_sat": o.value.to_sat(),
                "script_pubkey": o.script_pubkey.to_hex_string(),
                "address": address(&o.script_pubkey, network),
            })
        })
        .collect();
    let channel = if let Some(spend) = find_channel_spend(&tx) {
        channel_json(
            &tx,
            spend.role,
            &spend.script,
            json!({"input": spend.input, "kind": spend.kind.as_str()}),
        )
    } else if let Some((s, f)) = hint.as_ref().and_then(|s| find_funding(&tx, s).map(|f| (s, f))) {
        channel_json(
            &tx,
            Role::Funding,
            s,
            json!({"vout": f.outpoint.vout, "kind": f.kind.as_str(), "deposit_sat": f.value.to_sat()}),
        )
    } else {
        Value::Null
    };
    Ok(json!({
        "txid": tx.compute_txid().to_string(),
        "wtxid": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "locktime": tx.lock_time.to_consensus_u32(),
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "inputs": inputs,
        "outputs": outputs,
        "channel": channel,
        "bolt3": bolt3_json(&tx),
    }))
}

fn outpoint(o: &OutPoint) -> String {
    format!("{}:{}", o.txid, o.vout)
}

/// What a BOLT 3 (duplex channel) transaction is, from its shape and witnesses.
fn bolt3_json(tx: &Transaction) -> Value {
    let Some(t) = recognise_bolt3(tx) else { return Value::Null };
    let detail = match &t {
        Bolt3Tx::Commitment { funding, obscured_number, signed } => json!({
            "funding": outpoint(funding),
            "obscured_commitment_number": obscured_number,
            "signed": signed,
        }),
        Bolt3Tx::SecondStage { inputs } => json!({
            "inputs": inputs.iter().map(|i| {
                let mut v = json!({
                    "htlc": outpoint(&i.htlc),
                    "type": if i.preimage.is_some() { "success" } else { "timeout" },
                    "channel_type": i.channel_type.as_str(),
                });
                match (i.preimage, &mut v) {
                    (Some(p), Value::Object(m)) => { m.insert("preimage".into(), json!(hex(&p))); }
                    (None, Value::Object(m)) => { m.insert("cltv_expiry".into(), json!(tx.lock_time.to_consensus_u32())); }
                    _ => {}
                }
                v
            }).collect::<Vec<_>>(),
        }),
        Bolt3Tx::Closing { funding } => json!({ "funding": outpoint(funding) }),
        Bolt3Tx::Justice { inputs } => json!({
            "inputs": inputs.iter().map(|(o, how)| json!({
                "revoked": outpoint(o),
                "takes": match how { JusticeInput::ToLocal => "to_local", JusticeInput::Htlc => "htlc" },
            })).collect::<Vec<_>>(),
        }),
    };
    let mut v = json!({ "kind": t.kind() });
    if let (Value::Object(m), Value::Object(d)) = (&mut v, detail) {
        m.extend(d);
    }
    v
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn parse_spent_output(s: &str) -> Result<(OutPoint, TxOut), CliError> {
    let bad = |why: &str| {
        CliError::Usage(format!(
            "--spent-output {s:?}: {why} (expected TXID:VOUT:VALUE_SAT:SCRIPT_HEX)"
        ))
    };
    let parts: Vec<&str> = s.trim().split(':').collect();
    let [txid, vout, value, script] = parts.as_slice() else {
        return Err(bad("needs four fields"));
    };
    let txid: Txid = txid.parse().map_err(|_| bad("TXID is not 64 hex characters"))?;
    let vout: u32 = vout.parse().map_err(|_| bad("VOUT is not a number"))?;
    let value: u64 = value.parse().map_err(|_| bad("VALUE_SAT is not a number"))?;
    let value = Amount::from_sat(value);
    if value > Amount::MAX_MONEY {
        return Err(bad("VALUE_SAT exceeds 21 million bitcoin"));
    }
    let script_pubkey = ScriptBuf::from_hex(script).map_err(|_| bad("SCRIPT_HEX is not hex"))?;
    Ok((OutPoint { txid, vout }, TxOut { value, script_pubkey }))
}

fn verify(a: &VerifyArgs) -> Result<(Value, bool), CliError> {
    let tx = parse_tx("TX", &a.tx)?;
    let mut known: Vec<(OutPoint, TxOut)> = Vec::new();
    for (i, hex) in a.spent.iter().enumerate() {
        let f = parse_tx(&format!("--spent #{}", i + 1), hex)?;
        let txid = f.compute_txid();
        for (vout, out) in f.output.into_iter().enumerate() {
            known.push((OutPoint { txid, vout: vout as u32 }, out));
        }
    }
    for s in &a.spent_output {
        known.push(parse_spent_output(s)?);
    }
    if known.is_empty() {
        return Err(CliError::Usage(
            "give the outputs TX spends with --spent FUNDING_TX_HEX or --spent-output".into(),
        ));
    }
    let lookup = |o: &OutPoint| known.iter().find(|(p, _)| p == o).map(|(_, t)| t.clone());
    let spent: Vec<Option<TxOut>> = tx.input.iter().map(|i| lookup(&i.previous_output)).collect();
    if spent.iter().all(Option::is_none) {
        return Err(CliError::Usage("no input of TX spends an output given with --spent".into()));
    }
    let all: Option<Vec<TxOut>> = spent.iter().cloned().collect();
    let raw = paychan_core::bitcoin::consensus::encode::serialize(&tx);
    let mut inputs = Vec::new();
    let (mut valid, mut standard) = (true, true);
    for (index, s) in spent.iter().enumerate() {
        let Some(s) = s else { continue };
        let v = verify_input_raw(&tx, &raw, index, s, all.as_deref());
        valid &= v.valid;
        standard &= v.standard;
        inputs.push(
            json!({"index": v.index, "valid": v.valid, "standard": v.standard, "error": v.error}),
        );
    }
    let unchecked: Vec<usize> =
        spent.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    Ok((
        json!({"valid": valid, "standard": standard, "inputs": inputs, "unchecked_inputs": unchecked}),
        valid,
    ))
}
