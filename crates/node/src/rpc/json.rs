//! bitcoind's JSON shapes (transactions, headers, scripts, amounts) and the parsing of the
//! values its methods take.

use std::sync::Arc;

use paychan_core::bitcoin::consensus::encode::{deserialize, serialize_hex};
use paychan_core::bitcoin::hex::FromHex;
use paychan_core::bitcoin::{
    Address, Amount, Block, BlockHash, FeeRate, Network, Script, ScriptBuf, Transaction, Txid,
};
use serde_json::{json, Map, Value};

use super::RpcError;
use crate::error::code;
use crate::{BlockInfo, Node};

pub(super) fn decode_tx(hex: &str) -> Result<Transaction, RpcError> {
    let bytes = Vec::<u8>::from_hex(hex)
        .map_err(|_| RpcError::new(code::DESERIALIZATION, "TX decode failed"))?;
    deserialize(&bytes).map_err(|_| {
        RpcError::new(
            code::DESERIALIZATION,
            "TX decode failed. Make sure the tx has at least one input.",
        )
    })
}

pub(super) fn btc(a: Amount) -> Value {
    json!(a.to_btc())
}

pub(super) fn fee_rate_btc_kvb(r: FeeRate) -> Value {
    json!(r.to_sat_per_kwu() as f64 * 4.0 / 1e8 * 1000.0 / 1000.0)
}

pub(super) fn parse_fee_rate(v: Option<&Value>, default: FeeRate) -> Result<FeeRate, RpcError> {
    match v {
        None => Ok(default),
        Some(v) => {
            let btc_per_kvb = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .filter(|x| *x >= 0.0)
            .ok_or_else(|| RpcError::new(code::TYPE, "maxfeerate must be a number of BTC/kvB"))?;
            Ok(FeeRate::from_sat_per_kwu((btc_per_kvb * 1e8 / 4.0).round() as u64))
        }
    }
}

pub(super) fn script_type(s: &Script) -> &'static str {
    if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2sh() {
        "scripthash"
    } else if s.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if s.is_p2wsh() {
        "witness_v0_scripthash"
    } else if s.is_p2tr() {
        "witness_v1_taproot"
    } else if s.is_op_return() {
        "nulldata"
    } else if s.is_witness_program() {
        "witness_unknown"
    } else if s.is_p2pk() {
        "pubkey"
    } else if s.is_multisig() {
        "multisig"
    } else {
        "nonstandard"
    }
}

pub(super) fn script_pubkey_json(s: &Script) -> Value {
    let mut m = Map::new();
    m.insert("asm".into(), json!(s.to_asm_string()));
    m.insert("hex".into(), json!(s.to_hex_string()));
    if let Ok(a) = Address::from_script(s, Network::Regtest) {
        m.insert("address".into(), json!(a.to_string()));
    }
    m.insert("type".into(), json!(script_type(s)));
    Value::Object(m)
}

/// `decoderawtransaction`'s object for `tx`, with `hex`.
pub fn tx_json(tx: &Transaction) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let mut m = Map::new();
            if tx.is_coinbase() {
                m.insert("coinbase".into(), json!(i.script_sig.to_hex_string()));
            } else {
                m.insert("txid".into(), json!(i.previous_output.txid.to_string()));
                m.insert("vout".into(), json!(i.previous_output.vout));
                m.insert(
                    "scriptSig".into(),
                    json!({"asm": i.script_sig.to_asm_string(), "hex": i.script_sig.to_hex_string()}),
                );
            }
            if !i.witness.is_empty() {
                let items: Vec<Value> = i.witness.iter().map(|w| json!(hex(w))).collect();
                m.insert("txinwitness".into(), Value::Array(items));
            }
            m.insert("sequence".into(), json!(i.sequence.0));
            Value::Object(m)
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": btc(o.value), "n": n, "scriptPubKey": script_pubkey_json(&o.script_pubkey)}))
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
    })
}

pub(super) fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Regtest's difficulty (`0x207fffff` against the difficulty-1 target).
pub(super) const REGTEST_DIFFICULTY: f64 = 4.656542373906925e-10;

pub(super) fn chainwork_hex(height: u32) -> String {
    // Every regtest block adds 2 units of work; genesis included.
    format!("{:064x}", (u64::from(height) + 1) * 2)
}

pub(super) fn header_json(block: &Block, info: &BlockInfo) -> Value {
    let h = &block.header;
    let mut m = Map::new();
    m.insert("hash".into(), json!(info.hash.to_string()));
    m.insert("confirmations".into(), json!(info.confirmations));
    m.insert("height".into(), json!(info.height));
    m.insert("version".into(), json!(h.version.to_consensus()));
    m.insert("versionHex".into(), json!(format!("{:08x}", h.version.to_consensus())));
    m.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    m.insert("time".into(), json!(h.time));
    m.insert("mediantime".into(), json!(info.median_time_past));
    m.insert("nonce".into(), json!(h.nonce));
    m.insert("bits".into(), json!(format!("{:08x}", h.bits.to_consensus())));
    m.insert("difficulty".into(), json!(REGTEST_DIFFICULTY));
    m.insert("chainwork".into(), json!(chainwork_hex(info.height)));
    m.insert("nTx".into(), json!(block.txdata.len()));
    if info.height > 0 {
        m.insert("previousblockhash".into(), json!(h.prev_blockhash.to_string()));
    }
    if let Some(n) = info.next {
        m.insert("nextblockhash".into(), json!(n.to_string()));
    }
    Value::Object(m)
}

pub(super) fn block_of(node: &Node, hash: &BlockHash) -> Result<(Arc<Block>, BlockInfo), RpcError> {
    node.block(hash).ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))
}

pub(super) fn address_script(addr: &str) -> Result<ScriptBuf, RpcError> {
    let a: Address<paychan_core::bitcoin::address::NetworkUnchecked> = addr
        .parse()
        .map_err(|_| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    let a = a
        .require_network(Network::Regtest)
        .map_err(|_| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    Ok(a.script_pubkey())
}

pub(super) fn mempool_entry_json(node: &Node, txid: &Txid) -> Option<Value> {
    let (e, parents, children) = node.mempool_entry(txid)?;
    // Ancestors: the in-mempool parents, transitively (Core's ancestor package).
    let mut ancestors: Vec<Txid> = Vec::new();
    let mut todo = parents.clone();
    while let Some(t) = todo.pop() {
        if !ancestors.contains(&t) {
            ancestors.push(t);
            if let Some((_, ps, _)) = node.mempool_entry(&t) {
                todo.extend(ps);
            }
        }
    }
    let package = |ids: &[Txid]| {
        ids.iter()
            .filter_map(|t| node.mempool_entry(t))
            .fold((e.vsize, e.fee), |(size, fee), (o, _, _)| (size + o.vsize, fee + o.fee))
    };
    let (ancestor_size, ancestor_fee) = package(&ancestors);
    let (descendant_size, descendant_fee) = package(&children);
    Some(json!({
        "vsize": e.vsize,
        "weight": e.tx.weight().to_wu(),
        "time": e.time,
        "height": e.height,
        "descendantcount": children.len() + 1,
        "descendantsize": descendant_size,
        "ancestorcount": ancestors.len() + 1,
        "ancestorsize": ancestor_size,
        "wtxid": e.wtxid.to_string(),
        "fees": {
            "base": btc(e.fee),
            "modified": btc(e.fee),
            "ancestor": btc(ancestor_fee),
            "descendant": btc(descendant_fee),
        },
        "depends": parents.iter().map(Txid::to_string).collect::<Vec<_>>(),
        "spentby": children.iter().map(Txid::to_string).collect::<Vec<_>>(),
        "bip125-replaceable": true,
        "unbroadcast": false,
    }))
}
