//! Packages over JSON-RPC as Bitcoin Core 28 answers them: `submitpackage` and
//! `testmempoolaccept` of several transactions, decoded by field name; `broadcast_package`
//! over RPC and in process; and the error from a node that has no `submitpackage`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use bitcoincore_rpc::RpcApi;
use paychan_chain::{ChainError, ChainSource, EmbeddedChain};
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::serialize_hex;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{Amount, OutPoint, Sequence, Transaction, TxOut};
use paychan_harness::fixtures::{key, p2a, p2wpkh, spend_p2wpkh_with};
use paychan_node::Node;
use serde::Deserialize;
use serde_json::{json, Value};

/// `submitpackage`'s answer, with Core 28's field names.
#[derive(Debug, Deserialize)]
struct SubmitPackage {
    package_msg: String,
    #[serde(rename = "tx-results")]
    tx_results: BTreeMap<String, TxResult>,
    #[serde(rename = "replaced-transactions")]
    replaced_transactions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TxResult {
    txid: String,
    vsize: Option<u64>,
    fees: Option<Fees>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Fees {
    base: f64,
    #[serde(rename = "effective-feerate")]
    effective_feerate: Option<f64>,
    #[serde(rename = "effective-includes")]
    effective_includes: Option<Vec<String>>,
}

/// `n` confirmed coins of 1,000,000 sat of the test key.
fn coins(node: &Node, n: usize) -> Vec<(OutPoint, TxOut)> {
    let spk = p2wpkh(&key(1));
    node.mine(101, &spk).unwrap();
    let hash = node.block_hash(1).unwrap();
    let cb = node.block(&hash).unwrap().0.txdata[0].clone();
    let coin = (OutPoint { txid: cb.compute_txid(), vout: 0 }, cb.output[0].clone());
    let each = TxOut { value: Amount::from_sat(1_000_000), script_pubkey: spk.clone() };
    let split = v(Version::TWO, &[coin], vec![each; n]);
    node.submit(split.clone(), None).unwrap();
    node.mine(1, &spk).unwrap();
    let txid = split.compute_txid();
    (0..n as u32)
        .map(|vout| (OutPoint { txid, vout }, split.output[vout as usize].clone()))
        .collect()
}

fn v(version: Version, coins: &[(OutPoint, TxOut)], outputs: Vec<TxOut>) -> Transaction {
    spend_p2wpkh_with(
        coins,
        outputs,
        &key(1),
        version,
        LockTime::ZERO,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
    )
}

/// A zero-fee version-3 parent with a 0-sat anchor and a child paying `fee` for both.
fn package(coins: &[(OutPoint, TxOut)], fee: u64) -> (Transaction, Transaction) {
    let v3 = Version(3);
    let keep = TxOut { value: Amount::from_sat(1_000_000), script_pubkey: p2wpkh(&key(1)) };
    let parent = v(v3, &coins[..1], vec![keep, p2a(0)]);
    let anchor = (OutPoint { txid: parent.compute_txid(), vout: 1 }, parent.output[1].clone());
    let back = TxOut { value: Amount::from_sat(1_000_000 - fee), script_pubkey: p2wpkh(&key(1)) };
    let child = v(v3, &[anchor, coins[1].clone()], vec![back]);
    (parent, child)
}

#[test]
fn submitpackage_takes_a_zero_fee_truc_parent_with_its_child_and_both_are_mined() {
    let r = common::start();
    let rpc = r.rpc();
    let coins = coins(&r.node, 2);
    let (parent, child) = package(&coins, 2_000);

    // testmempoolaccept: the typed client decodes Core's entries; of both, the child is
    // unevaluated (no `allowed`, as Core answers, which that client's type cannot hold).
    let tested = rpc.client().test_mempool_accept(&[&parent]).unwrap();
    assert!(!tested[0].allowed);
    assert_eq!(tested[0].reject_reason.as_deref(), Some("min relay fee not met"));
    let raw: Value = rpc
        .call("testmempoolaccept", &[json!([serialize_hex(&parent), serialize_hex(&child)])])
        .unwrap();
    assert_eq!(raw[0]["wtxid"], parent.compute_wtxid().to_string());
    assert_eq!(raw[0]["reject-details"], format!("min relay fee not met, 0 < {}", parent.vsize()));
    assert_eq!(
        raw[1],
        json!({"txid": child.compute_txid().to_string(), "wtxid": child.compute_wtxid().to_string()})
    );

    let hex = json!([serialize_hex(&parent), serialize_hex(&child)]);
    let answer: SubmitPackage = rpc.call("submitpackage", std::slice::from_ref(&hex)).unwrap();
    assert_eq!(answer.package_msg, "success");
    assert!(answer.replaced_transactions.is_empty());
    let vsize = (parent.vsize() + child.vsize()) as u64;
    for t in [&parent, &child] {
        let res = &answer.tx_results[&t.compute_wtxid().to_string()];
        assert_eq!(res.txid, t.compute_txid().to_string());
        assert_eq!(res.vsize, Some(t.vsize() as u64));
        assert!(res.error.is_none());
        let fees = res.fees.as_ref().unwrap();
        let own = if t == &parent { 0.0 } else { 0.00002 };
        assert!((fees.base - own).abs() < 1e-12, "{fees:?}");
        // The package's rate: 2,000 sat over both, in BTC/kvB.
        let expected = (2_000 * 1_000 / vsize) as f64 / 1e8;
        assert!((fees.effective_feerate.unwrap() - expected).abs() < 1e-12, "{fees:?}");
        assert_eq!(
            fees.effective_includes.as_deref().unwrap(),
            [parent.compute_wtxid().to_string(), child.compute_wtxid().to_string()]
        );
    }
    let mempool = rpc.client().get_raw_mempool().unwrap();
    assert!(mempool.contains(&parent.compute_txid()) && mempool.contains(&child.compute_txid()));
    // Again: both are in the mempool already, still a success (the entries have no
    // effective fee rate, as Core's).
    let again: SubmitPackage = rpc.call("submitpackage", &[hex]).unwrap();
    assert_eq!(again.package_msg, "success");
    let fees = again.tx_results[&child.compute_wtxid().to_string()].fees.as_ref().unwrap();
    assert!(fees.effective_feerate.is_none());

    let hash = r.node.mine(1, &p2wpkh(&key(9))).unwrap()[0];
    let block = rpc.client().get_block(&hash).unwrap();
    let mined: Vec<_> = block.txdata.iter().map(Transaction::compute_txid).collect();
    assert!(mined.contains(&parent.compute_txid()) && mined.contains(&child.compute_txid()));
    assert!(rpc.client().get_raw_mempool().unwrap().is_empty());
}

#[test]
fn broadcast_package_over_rpc_and_in_process_says_why_a_package_is_refused() {
    let r = common::start();
    let coins = coins(&r.node, 4);
    let rpc = r.rpc();
    let embedded = EmbeddedChain::new(r.node.clone());
    let sources: [(&str, &dyn ChainSource, &[_]); 2] =
        [("rpc", &rpc, &coins[..2]), ("embedded", &embedded, &coins[2..])];
    for (name, source, coins) in sources {
        // Refused: the child pays too little for both; the reason names the transaction.
        let (parent, child) = package(coins, 100);
        let e = source.broadcast_package(&[parent.clone(), child.clone()]).unwrap_err();
        let ChainError::Rejected { code, reason } = &e else { panic!("{name}: {e}") };
        assert_eq!(*code, -26, "{name}");
        assert!(reason.starts_with("transaction failed"), "{name}: {reason}");
        assert!(
            reason.contains(&format!("{}: min relay fee not met, 100 < ", child.compute_txid())),
            "{name}: {reason}"
        );
        assert!(source.mempool().unwrap().is_empty(), "{name}");
        // Accepted; and again (already there) fine.
        let (parent, child) = package(coins, 2_000);
        let ids = source.broadcast_package(&[parent.clone(), child.clone()]).unwrap();
        assert_eq!(ids, vec![parent.compute_txid(), child.compute_txid()], "{name}");
        assert!(source.in_mempool(&parent.compute_txid()).unwrap(), "{name}");
        source.broadcast_package(&[parent, child]).unwrap();
        r.node.mine(1, &p2wpkh(&key(9))).unwrap();
    }
}

/// A node older than Core 28 answers `submitpackage` with "Method not found": said as such.
#[test]
fn a_node_without_submitpackage_is_named_as_too_old() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(request["method"], "submitpackage");
        let answer = json!({"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": request["id"]}).to_string();
        let mut stream = stream;
        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()).unwrap();
    });
    let rpc = paychan_chain::BitcoindRpc::new(
        &format!("http://{addr}"),
        paychan_chain::RpcAuth::UserPass("u".into(), "p".into()),
    )
    .unwrap();
    let node = Node::in_memory();
    let coins = coins(&node, 2);
    let (parent, child) = package(&coins, 2_000);
    let e = rpc.broadcast_package(&[parent, child]).unwrap_err();
    assert!(matches!(e, ChainError::PackagesUnsupported(_)), "{e:?}");
    assert!(e.to_string().contains("Bitcoin Core 28 or later"), "{e}");
    server.join().unwrap();
}

/// `broadcast_with_parent` sends a package, and the child alone once the parent is confirmed
/// (the package would be refused then: the parent is no longer new).
#[test]
fn broadcast_with_parent_sends_the_child_alone_once_the_parent_is_confirmed() {
    let r = common::start();
    let coins = coins(&r.node, 2);
    let rpc = r.rpc();
    let (parent, child) = package(&coins, 2_000);
    assert_eq!(rpc.broadcast_with_parent(&parent, &child).unwrap(), child.compute_txid());
    r.node.mine(1, &p2wpkh(&key(9))).unwrap();
    // Another child, of the parent's confirmed output 0.
    let out0 = (OutPoint { txid: parent.compute_txid(), vout: 0 }, parent.output[0].clone());
    let back = TxOut { value: Amount::from_sat(998_000), script_pubkey: p2wpkh(&key(1)) };
    let late = v(Version(3), &[out0], vec![back]);
    assert!(rpc.broadcast_package(&[parent.clone(), late.clone()]).is_err());
    assert_eq!(rpc.broadcast_with_parent(&parent, &late).unwrap(), late.compute_txid());
    assert!(rpc.in_mempool(&late.compute_txid()).unwrap());
}
