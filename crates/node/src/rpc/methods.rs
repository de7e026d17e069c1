//! The RPC methods: one function each, found through one table ([`METHODS`]).

use paychan_core::bitcoin::consensus::encode::{deserialize, serialize_hex};
use paychan_core::bitcoin::hex::FromHex;
use paychan_core::bitcoin::{
    Amount, Block, BlockHash, FeeRate, OutPoint, Transaction, Txid, Wtxid,
};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use super::json::*;
use super::{Params, RpcError, RpcResult};
use crate::error::code;
use crate::{Accepted, Node, NodeError, TxOutcome};

/// A method's handler.
type Handler = fn(&Node, &Notify, &Params) -> RpcResult;

/// Every method this server answers: its name, its parameter names (positional order, and the
/// names bitcoin-cli `-named` uses), and its handler.
pub(super) const METHODS: &[(&str, &[&str], Handler)] = &[
    ("getblockchaininfo", &[], getblockchaininfo),
    ("getblockcount", &[], getblockcount),
    ("getbestblockhash", &[], getbestblockhash),
    ("getblockhash", &["height"], getblockhash),
    ("getblockheader", &["blockhash", "verbose"], getblockheader),
    ("getblock", &["blockhash", "verbosity"], getblock),
    ("getrawtransaction", &["txid", "verbose", "blockhash"], getrawtransaction),
    ("decoderawtransaction", &["hexstring"], decoderawtransaction),
    ("sendrawtransaction", &["hexstring", "maxfeerate"], sendrawtransaction),
    ("testmempoolaccept", &["rawtxs", "maxfeerate"], testmempoolaccept),
    ("submitpackage", &["package", "maxfeerate", "maxburnamount"], submitpackage),
    ("gettxout", &["txid", "n", "include_mempool"], gettxout),
    ("gettxoutsetinfo", &[], gettxoutsetinfo),
    ("getrawmempool", &["verbose"], getrawmempool),
    ("getmempoolentry", &["txid"], getmempoolentry),
    ("getmempoolinfo", &[], getmempoolinfo),
    ("estimatesmartfee", &["conf_target", "estimate_mode"], estimatesmartfee),
    ("generatetoaddress", &["nblocks", "address", "maxtries"], generatetoaddress),
    ("generateblock", &["output", "transactions"], generateblock),
    ("submitblock", &["hexdata"], submitblock),
    ("setmocktime", &["timestamp"], setmocktime),
    ("getmocktime", &[], getmocktime),
    ("invalidateblock", &["blockhash"], invalidateblock),
    ("reconsiderblock", &["blockhash"], reconsiderblock),
    ("getnetworkinfo", &[], getnetworkinfo),
    ("getindexinfo", &["index_name"], getindexinfo),
    ("uptime", &[], uptime),
    ("ping", &[], ping),
    ("stop", &[], stop),
];

/// Runs `method` with `raw` parameters: its handler from [`METHODS`].
pub(super) fn dispatch(node: &Node, stop: &Notify, method: &str, raw: &Value) -> RpcResult {
    let (_, names, handler) = METHODS
        .iter()
        .find(|(m, _, _)| *m == method)
        .ok_or_else(|| RpcError::new(code::METHOD_NOT_FOUND, "Method not found"))?;
    handler(node, stop, &Params::new(raw, names)?)
}

/// `getblockchaininfo`.
fn getblockchaininfo(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    let (height, hash) = node.tip();
    let (block, info) = block_of(node, &hash)?;
    Ok(json!({
        "chain": "regtest",
        "blocks": height,
        "headers": height,
        "bestblockhash": hash.to_string(),
        "difficulty": REGTEST_DIFFICULTY,
        "time": block.header.time,
        "mediantime": info.median_time_past,
        "verificationprogress": 1,
        "initialblockdownload": false,
        "chainwork": chainwork_hex(height),
        "size_on_disk": node.size_on_disk(),
        "pruned": false,
        "warnings": "",
    }))
}

/// `getblockcount`.
fn getblockcount(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(json!(node.tip().0))
}

/// `getbestblockhash`.
fn getbestblockhash(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(json!(node.tip().1.to_string()))
}

/// `getblockhash`.
fn getblockhash(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let h = p
        .required(0, "height")?
        .as_i64()
        .ok_or_else(|| RpcError::new(code::TYPE, "height must be an integer"))?;
    u32::try_from(h)
        .ok()
        .and_then(|h| node.block_hash(h))
        .map(|b| json!(b.to_string()))
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "Block height out of range"))
}

/// `getblockheader`.
fn getblockheader(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let hash: BlockHash = p.hash(0, "blockhash")?;
    let (block, info) = block_of(node, &hash)?;
    if p.opt_bool(1, true)? {
        Ok(header_json(&block, &info))
    } else {
        Ok(json!(serialize_hex(&block.header)))
    }
}

/// `getblock`.
fn getblock(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let hash: BlockHash = p.hash(0, "blockhash")?;
    let (block, info) = block_of(node, &hash)?;
    let verbosity = match p.get(1) {
        None => 1,
        Some(Value::Bool(b)) => u64::from(*b),
        Some(v) => {
            v.as_u64().ok_or_else(|| RpcError::new(code::TYPE, "verbosity must be 0, 1, 2 or 3"))?
        }
    };
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&*block)));
    }
    let mut v = header_json(&block, &info);
    let txs: Vec<Value> = if verbosity == 1 {
        block.txdata.iter().map(|t| json!(t.compute_txid().to_string())).collect()
    } else {
        block.txdata.iter().map(tx_json).collect()
    };
    if let Value::Object(m) = &mut v {
        let stripped = (block.weight().to_wu() as usize - block.total_size()) / 3;
        m.insert("strippedsize".into(), json!(stripped));
        m.insert("size".into(), json!(block.total_size()));
        m.insert("weight".into(), json!(block.weight().to_wu()));
        m.insert("tx".into(), Value::Array(txs));
    }
    Ok(v)
}

/// `getrawtransaction`.
fn getrawtransaction(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let txid: Txid = p.hash(0, "txid")?;
    let verbose = match p.get(1) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) > 0,
        Some(_) => return Err(RpcError::new(code::TYPE, "verbose must be a boolean or 0/1/2")),
    };
    let (tx, loc, in_active) = if p.get(2).is_some() {
        let bh: BlockHash = p.hash(2, "blockhash")?;
        let (block, info) = block_of(node, &bh)?;
        let found = block.txdata.iter().enumerate().find(|(_, t)| t.compute_txid() == txid);
        let Some((index, tx)) = found else {
            return Err(RpcError::new(code::INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. Use gettransaction for wallet transactions."));
        };
        (tx.clone(), Some((bh, info, index)), Some(info.confirmations > 0))
    } else {
        // Without the index only the mempool is searched, as in Bitcoin Core.
        let found = node.transaction(&txid).filter(|(_, loc)| loc.is_none() || node.txindex());
        let (tx, loc) = found.ok_or_else(|| {
            RpcError::new(
                code::INVALID_ADDRESS_OR_KEY,
                if node.txindex() {
                    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
                } else {
                    "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries. Use gettransaction for wallet transactions."
                },
            )
        })?;
        let loc = loc.and_then(|l| node.block(&l.block).map(|(_, i)| (l.block, i, l.index)));
        (tx, loc, None)
    };
    if !verbose {
        return Ok(json!(serialize_hex(&tx)));
    }
    let mut v = tx_json(&tx);
    if let Value::Object(m) = &mut v {
        if let Some(a) = in_active {
            m.insert("in_active_chain".into(), json!(a));
        }
        if let Some((bh, info, _)) = loc {
            let (block, _) = block_of(node, &bh)?;
            m.insert("blockhash".into(), json!(bh.to_string()));
            m.insert("confirmations".into(), json!(info.confirmations.max(0)));
            m.insert("time".into(), json!(block.header.time));
            m.insert("blocktime".into(), json!(block.header.time));
        }
    }
    Ok(v)
}

/// `decoderawtransaction`.
fn decoderawtransaction(_node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let mut v = tx_json(&decode_tx(p.str(0, "hexstring")?)?);
    if let Value::Object(m) = &mut v {
        m.remove("hex");
    }
    Ok(v)
}

/// `sendrawtransaction`.
fn sendrawtransaction(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let tx = decode_tx(p.str(0, "hexstring")?)?;
    let max = parse_fee_rate(p.get(1), crate::policy::DEFAULT_MAX_FEE_RATE)?;
    Ok(json!(node.submit(tx, Some(max))?.to_string()))
}

/// Raw transactions from an array parameter.
fn decode_txs(p: &Params, i: usize, name: &str) -> Result<Vec<Transaction>, RpcError> {
    let raw = p
        .required(i, name)?
        .as_array()
        .ok_or_else(|| RpcError::new(code::TYPE, format!("{name} must be an array")))?;
    if raw.is_empty() || raw.len() > crate::policy::MAX_PACKAGE_COUNT {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            format!(
                "Array must contain between 1 and {} transactions.",
                crate::policy::MAX_PACKAGE_COUNT
            ),
        ));
    }
    raw.iter().map(|h| decode_tx(h.as_str().unwrap_or_default())).collect()
}

fn above(a: &Accepted, max: FeeRate) -> bool {
    max > FeeRate::ZERO && a.fee.to_sat() * 250 / a.vsize.max(1) > max.to_sat_per_kwu()
}

/// The `fees` object of an accepted transaction.
fn fees_json(a: &Accepted, effective: Option<(u64, &[Wtxid])>) -> Value {
    let mut fees = json!({"base": btc(a.fee)});
    if let Some((sat_per_kvb, includes)) = effective {
        fees["effective-feerate"] = btc(Amount::from_sat(sat_per_kvb));
        fees["effective-includes"] =
            includes.iter().map(|w| json!(w.to_string())).collect::<Vec<_>>().into();
    }
    fees
}

/// `testmempoolaccept`: one transaction, or several judged as a package (each by its own
/// fee rate, parents first, as Core does).
fn testmempoolaccept(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let txs = decode_txs(p, 0, "rawtxs")?;
    let max = parse_fee_rate(p.get(1), crate::policy::DEFAULT_MAX_FEE_RATE)?;
    if let [tx] = &txs[..] {
        let txid = tx.compute_txid().to_string();
        let wtxid = tx.compute_wtxid().to_string();
        let r = match node.test_accept(tx.clone()) {
            Ok(a) if above(&a, max) => {
                json!({"txid": txid, "wtxid": wtxid, "allowed": false, "reject-reason": "max-fee-exceeded"})
            }
            Ok(a) => {
                let fees = fees_json(&a, Some((sat_per_kvb(&a), &[a.wtxid])));
                json!({"txid": txid, "wtxid": wtxid, "allowed": true, "vsize": a.vsize, "fees": fees})
            }
            Err(e) => rejected_json(txid, wtxid, &e),
        };
        return Ok(json!([r]));
    }
    let outcome = node.test_package(txs)?;
    let mut out = Vec::new();
    // A transaction above maxfeerate leaves the rest blank: their parent would not be sent.
    let mut exit_early = false;
    for r in &outcome.results {
        let (txid, wtxid) = r.ids();
        let mut entry = json!({"txid": txid.to_string(), "wtxid": wtxid.to_string()});
        if outcome.package_error {
            entry["package-error"] = json!(outcome.message);
        }
        if exit_early {
            out.push(entry);
            continue;
        }
        match r {
            TxOutcome::Accepted { accepted, .. } if above(accepted, max) => {
                entry["allowed"] = json!(false);
                entry["reject-reason"] = json!("max-fee-exceeded");
                exit_early = true;
            }
            TxOutcome::Accepted { accepted, effective_sat_per_kvb, effective_includes } => {
                entry["allowed"] = json!(true);
                entry["vsize"] = json!(accepted.vsize);
                entry["fees"] =
                    fees_json(accepted, Some((*effective_sat_per_kvb, effective_includes)));
            }
            TxOutcome::Rejected { txid, wtxid, error } => {
                entry = rejected_json(txid.to_string(), wtxid.to_string(), error);
                if outcome.package_error {
                    entry["package-error"] = json!(outcome.message);
                }
            }
            TxOutcome::InMempool { .. } | TxOutcome::Unevaluated { .. } => {}
        }
        out.push(entry);
    }
    Ok(Value::Array(out))
}

fn sat_per_kvb(a: &Accepted) -> u64 {
    a.fee.to_sat().saturating_mul(1_000) / a.vsize.max(1)
}

fn rejected_json(txid: String, wtxid: String, e: &NodeError) -> Value {
    let mut v =
        json!({"txid": txid, "wtxid": wtxid, "allowed": false, "reject-reason": e.reject_reason()});
    if !matches!(e, NodeError::MissingInputs | NodeError::MaxFeeExceeded) {
        v["reject-details"] = json!(e.reject_details());
    }
    v
}

/// `submitpackage`: a child with its unconfirmed parents; Core 28's result shape
/// (`package_msg`, `tx-results` keyed by wtxid, `replaced-transactions`).
fn submitpackage(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let txs = decode_txs(p, 0, "package")?;
    let max = parse_fee_rate(p.get(1), crate::policy::DEFAULT_MAX_FEE_RATE)?;
    let max_burn = match p.get(2) {
        None | Some(Value::Null) => Amount::ZERO,
        Some(v) => v
            .as_f64()
            .and_then(|b| Amount::from_btc(b).ok())
            .ok_or_else(|| RpcError::new(code::TYPE, "maxburnamount must be an amount in BTC"))?,
    };
    for out in txs.iter().flat_map(|t| &t.output) {
        let unspendable = out.script_pubkey.is_op_return() || out.script_pubkey.len() > 10_000;
        if unspendable && out.value > max_burn {
            return Err(RpcError::new(
                code::VERIFY_ERROR,
                "Unspendable output exceeds maximum configured by user (maxburnamount)",
            ));
        }
    }
    let outcome = node.submit_package(txs, Some(max))?;
    let mut results = Map::new();
    for r in &outcome.results {
        let (txid, wtxid) = r.ids();
        let mut entry = json!({"txid": txid.to_string()});
        match r {
            TxOutcome::Accepted { accepted, effective_sat_per_kvb, effective_includes } => {
                entry["vsize"] = json!(accepted.vsize);
                entry["fees"] =
                    fees_json(accepted, Some((*effective_sat_per_kvb, effective_includes)));
            }
            TxOutcome::InMempool { other_wtxid: Some(other), .. } => {
                entry["other-wtxid"] = json!(other.to_string());
            }
            TxOutcome::InMempool { accepted, other_wtxid: None } => {
                entry["vsize"] = json!(accepted.vsize);
                entry["fees"] = fees_json(accepted, None);
            }
            TxOutcome::Rejected { error, .. } => entry["error"] = json!(error.reject_details()),
            TxOutcome::Unevaluated { .. } => entry["error"] = json!("unevaluated"),
        }
        results.insert(wtxid.to_string(), entry);
    }
    let replaced: Vec<Value> = outcome.replaced.iter().map(|t| json!(t.to_string())).collect();
    Ok(json!({
        "package_msg": outcome.message,
        "tx-results": results,
        "replaced-transactions": replaced,
    }))
}

/// `gettxout`.
fn gettxout(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let txid: Txid = p.hash(0, "txid")?;
    let vout = u32::try_from(p.u64(1, "n")?)
        .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "n out of range"))?;
    let include_mempool = p.opt_bool(2, true)?;
    match node.utxo(&OutPoint { txid, vout }, include_mempool) {
        None => Ok(Value::Null),
        Some((out, confirmations, coinbase)) => Ok(json!({
            "bestblock": node.tip().1.to_string(),
            "confirmations": confirmations,
            "value": btc(out.value),
            "scriptPubKey": script_pubkey_json(&out.script_pubkey),
            "coinbase": coinbase,
        })),
    }
}

/// `gettxoutsetinfo`.
fn gettxoutsetinfo(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    let (height, hash) = node.tip();
    let (n, total, digest) = node.utxo_set_digest();
    Ok(json!({
        "height": height,
        "bestblock": hash.to_string(),
        "txouts": n,
        "hash_serialized_3": hex(&digest),
        "total_amount": btc(total),
    }))
}

/// `getrawmempool`.
fn getrawmempool(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    if p.opt_bool(0, false)? {
        let mut m = Map::new();
        for t in node.mempool_txids() {
            if let Some(v) = mempool_entry_json(node, &t) {
                m.insert(t.to_string(), v);
            }
        }
        Ok(Value::Object(m))
    } else {
        Ok(json!(node.mempool_txids().iter().map(Txid::to_string).collect::<Vec<_>>()))
    }
}

/// `getmempoolentry`.
fn getmempoolentry(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let txid: Txid = p.hash(0, "txid")?;
    mempool_entry_json(node, &txid)
        .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"))
}

/// `getmempoolinfo`.
fn getmempoolinfo(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    let (n, fees) = node.mempool_size();
    Ok(json!({
        "loaded": true,
        "size": n,
        "total_fee": btc(fees),
        "mempoolminfee": 0.00001,
        "minrelaytxfee": 0.00001,
        "incrementalrelayfee": 0.00001,
        "fullrbf": true,
    }))
}

/// `estimatesmartfee`.
fn estimatesmartfee(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let target = p.u64(0, "conf_target")?;
    if !(1..=1008).contains(&target) {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            "Invalid conf_target, must be between 1 and 1008",
        ));
    }
    let target = target as u32;
    Ok(match node.estimate_smart_fee(target) {
        Some(rate) => json!({"feerate": fee_rate_btc_kvb(rate), "blocks": target.max(2)}),
        None => json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}),
    })
}

/// `generatetoaddress`.
fn generatetoaddress(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let n = p.u64(0, "nblocks")?;
    let spk = address_script(p.str(1, "address")?)?;
    let n = u32::try_from(n)
        .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "nblocks out of range"))?;
    let hashes = node.mine(n, &spk)?;
    Ok(json!(hashes.iter().map(BlockHash::to_string).collect::<Vec<_>>()))
}

/// `generateblock`.
fn generateblock(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let spk = address_script(p.str(0, "output")?)?;
    let list = p
        .required(1, "transactions")?
        .as_array()
        .ok_or_else(|| RpcError::new(code::TYPE, "transactions must be an array"))?;
    let mut txs = Vec::with_capacity(list.len());
    for item in list {
        let s = item.as_str().unwrap_or_default();
        if s.len() == 64 {
            let txid: Txid = s.parse().map_err(|_| {
                RpcError::new(code::INVALID_PARAMETER, format!("Transaction {s} not in mempool."))
            })?;
            match node.transaction(&txid) {
                Some((tx, None)) => txs.push(tx),
                _ => {
                    return Err(RpcError::new(
                        code::INVALID_ADDRESS_OR_KEY,
                        format!("Transaction {s} not in mempool."),
                    ))
                }
            }
        } else {
            txs.push(decode_tx(s)?);
        }
    }
    let hash = node.generate_block(&spk, txs)?;
    Ok(json!({"hash": hash.to_string()}))
}

/// `submitblock`.
fn submitblock(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let bytes = Vec::<u8>::from_hex(p.str(0, "hexdata")?)
        .map_err(|_| RpcError::new(code::DESERIALIZATION, "Block decode failed"))?;
    let block: Block = deserialize(&bytes)
        .map_err(|_| RpcError::new(code::DESERIALIZATION, "Block decode failed"))?;
    match node.submit_block(block) {
        Ok(()) => Ok(Value::Null),
        Err(NodeError::InvalidBlock { reason, .. }) => Ok(json!(reason)),
        Err(e) => Err(e.into()),
    }
}

/// `setmocktime`.
fn setmocktime(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let t = p.required(0, "timestamp")?.as_i64().filter(|t| *t >= 0).ok_or_else(|| {
        RpcError::new(code::INVALID_PARAMETER, "Mocktime cannot be negative: -1.")
    })?;
    node.set_mock_time(t as u64)?;
    Ok(Value::Null)
}

/// `getmocktime`: paychan's extension: the node's clock (mock time when set), so tools can advance it.
fn getmocktime(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(json!(node.now()))
}

/// `invalidateblock`.
fn invalidateblock(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    node.invalidate_block(p.hash(0, "blockhash")?)?;
    Ok(Value::Null)
}

/// `reconsiderblock`.
fn reconsiderblock(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    node.reconsider_block(p.hash(0, "blockhash")?)?;
    Ok(Value::Null)
}

/// `getnetworkinfo`.
fn getnetworkinfo(_node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(json!({
        "version": 270000,
        "subversion": concat!("/paychan-node:", env!("CARGO_PKG_VERSION"), "/"),
        "protocolversion": 70016,
        "localservices": "0000000000000409",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": 0.00001,
        "incrementalfee": 0.00001,
        "localaddresses": [],
        "warnings": "",
    }))
}

/// `getindexinfo`: the transaction index, when it is on (`-txindex`); `{}` otherwise.
fn getindexinfo(node: &Node, _stop: &Notify, p: &Params) -> RpcResult {
    let name = match p.get(0) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str().ok_or_else(|| RpcError::new(code::TYPE, "index_name must be a string"))?,
        ),
    };
    let mut out = Map::new();
    if node.txindex() && name.is_none_or(|n| n == "txindex") {
        out.insert("txindex".into(), json!({"synced": true, "best_block_height": node.tip().0}));
    }
    Ok(Value::Object(out))
}

/// `uptime`.
fn uptime(node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(json!(node.uptime()))
}

/// `ping`.
fn ping(_node: &Node, _stop: &Notify, _p: &Params) -> RpcResult {
    Ok(Value::Null)
}

/// `stop`.
fn stop(_node: &Node, stop: &Notify, _p: &Params) -> RpcResult {
    stop.notify_one();
    Ok(json!("paychan node stopping"))
}
