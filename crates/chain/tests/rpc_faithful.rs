//! The node's RPC as `bitcoincore-rpc` (the client BDK and much Rust tooling use) sees it: its
//! typed results deserialise only if every field has bitcoind's name and type.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bitcoincore_rpc::RpcApi;
use paychan_core::bitcoin::{Address, Amount, CompressedPublicKey, Network};
use paychan_harness::fixtures::{key, pubkey};
use serde_json::{json, Value};

fn address(n: u8) -> Address {
    Address::p2wpkh(&CompressedPublicKey(pubkey(&key(n))), Network::Regtest)
}

#[test]
fn typed_results_deserialise() {
    let r = common::start();
    let rpc = r.rpc();
    let c = rpc.client();
    let hashes = c.generate_to_address(101, &address(1)).unwrap();
    assert_eq!(hashes.len(), 101);
    let info = c.get_blockchain_info().unwrap();
    assert_eq!(info.blocks, 101);
    assert_eq!(info.best_block_hash, hashes[100]);
    assert_eq!(c.get_block_count().unwrap(), 101);
    assert_eq!(c.get_best_block_hash().unwrap(), hashes[100]);
    assert_eq!(c.get_block_hash(1).unwrap(), hashes[0]);

    let block = c.get_block(&hashes[0]).unwrap();
    assert_eq!(block.block_hash(), hashes[0]);
    let binfo = c.get_block_info(&hashes[0]).unwrap();
    assert_eq!(binfo.height, 1);
    assert_eq!(binfo.confirmations, 101);
    assert_eq!(binfo.nextblockhash, Some(hashes[1]));
    let hinfo = c.get_block_header_info(&hashes[100]).unwrap();
    assert_eq!(hinfo.height, 101);
    assert_eq!(hinfo.next_block_hash, None);
    assert_eq!(c.get_block_header(&hashes[5]).unwrap().block_hash(), hashes[5]);

    let coinbase = block.txdata[0].compute_txid();
    // No transaction index (Core's default): a confirmed transaction needs its block hash.
    let txinfo = c.get_raw_transaction_info(&coinbase, Some(&hashes[0])).unwrap();
    assert_eq!(txinfo.blockhash, Some(hashes[0]));
    assert_eq!(txinfo.confirmations, Some(101));
    let out = c.get_tx_out(&coinbase, 0, Some(true)).unwrap().unwrap();
    assert_eq!(out.value, Amount::from_int_btc(50));
    assert!(out.coinbase);
    assert_eq!(out.confirmations, 101);
    assert!(c.get_tx_out(&coinbase, 7, Some(true)).unwrap().is_none());

    // A chain of coinbases only: no estimate, as Core answers it (the typed result still
    // deserialises).
    let fee = c.estimate_smart_fee(6, None).unwrap();
    assert!(fee.fee_rate.is_none());
    assert_eq!(fee.errors, Some(vec!["Insufficient data or no feerate found".to_string()]));
    let net = c.get_network_info().unwrap();
    assert!(net.version >= 270_000);
    assert!(c.get_raw_mempool().unwrap().is_empty());
    assert!(c.uptime().unwrap() < 600);
}

#[test]
fn errors_have_bitcoinds_codes_and_http_behaviour() {
    let r = common::start();
    let rpc = r.rpc();
    let c = rpc.client();
    c.generate_to_address(1, &address(1)).unwrap();
    let err = |res: Result<Value, bitcoincore_rpc::Error>| match res {
        Err(bitcoincore_rpc::Error::JsonRpc(bitcoincore_rpc::jsonrpc::Error::Rpc(e))) => {
            (e.code, e.message)
        }
        other => panic!("expected an RPC error, got {other:?}"),
    };
    assert_eq!(err(c.call("nosuchmethod", &[])).0, -32601);
    assert_eq!(err(c.call("getblockhash", &[json!(99)])), (-8, "Block height out of range".into()));
    let unknown = "00".repeat(32);
    assert_eq!(err(c.call("getrawtransaction", &[json!(unknown)])).0, -5);
    assert_eq!(err(c.call("getblock", &[json!(unknown)])).0, -5);
    assert_eq!(err(c.call("sendrawtransaction", &[json!("zz")])).0, -22);
    // A spend of a missing output: -25 with Core's reason.
    let tx = {
        use paychan_core::bitcoin::consensus::encode::serialize_hex;
        use paychan_core::bitcoin::{
            hashes::Hash, OutPoint, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
        };
        let tx = Transaction {
            version: paychan_core::bitcoin::transaction::Version::TWO,
            lock_time: paychan_core::bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: Txid::from_byte_array([0xaa; 32]), vout: 0 },
                script_sig: Default::default(),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[vec![1u8; 72], vec![2u8; 33]]),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1_000),
                script_pubkey: address(2).script_pubkey(),
            }],
        };
        serialize_hex(&tx)
    };
    let (code, msg) = err(c.call("sendrawtransaction", &[json!(tx)]));
    assert_eq!((code, msg.as_str()), (-25, "bad-txns-inputs-missingorspent"), "{msg}");
    let accept: Value = c.call("testmempoolaccept", &[json!([tx])]).unwrap();
    assert_eq!(accept[0]["allowed"], false);
    // testmempoolaccept says "missing-inputs" for this, as Core does.
    assert_eq!(accept[0]["reject-reason"], "missing-inputs");
    // Batch requests and named parameters.
    let batch: Value = rpc.call("getblockcount", &[]).unwrap();
    assert_eq!(batch, json!(1));
}

#[test]
fn wrong_credentials_are_refused() {
    let r = common::start();
    let bad = paychan_chain::BitcoindRpc::new(
        &r.url,
        paychan_chain::RpcAuth::UserPass("__cookie__".into(), "wrong".into()),
    )
    .unwrap();
    let e = bad.client().get_block_count().unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
}

#[test]
fn raw_http_batch_and_named_params() {
    use std::io::{Read, Write};
    let r = common::start();
    let cookie = std::fs::read_to_string(&r.cookie).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&r.cookie).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "cookie file is private");
    }
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
    let body = r#"[{"jsonrpc":"1.0","id":1,"method":"getblockcount","params":[]},{"jsonrpc":"2.0","id":2,"method":"getblockhash","params":{"height":0}},{"id":3,"method":"nope"}]"#;
    let addr = r.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json_start = resp.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&resp[json_start..]).unwrap();
    assert_eq!(v[0]["result"], 0);
    assert_eq!(v[1]["result"], "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206");
    assert_eq!(v[1]["jsonrpc"], "2.0");
    assert_eq!(v[2]["error"]["code"], -32601);
}

#[test]
fn transactions_through_the_rpc() {
    use paychan_core::bitcoin::consensus::encode::serialize_hex;
    use paychan_core::bitcoin::{OutPoint, TxOut};
    let r = common::start();
    let rpc = r.rpc();
    let c = rpc.client();
    let hashes = c.generate_to_address(101, &address(1)).unwrap();
    let cb = c.get_block(&hashes[0]).unwrap().txdata[0].clone();
    let prev = cb.output[0].clone();
    let out = TxOut {
        value: prev.value - Amount::from_sat(1_000),
        script_pubkey: address(2).script_pubkey(),
    };
    let tx = paychan_harness::fixtures::spend_p2wpkh(
        &[(OutPoint { txid: cb.compute_txid(), vout: 0 }, prev)],
        vec![out],
        &key(1),
    );
    let hex = serialize_hex(&tx);
    let txid = tx.compute_txid();

    let accept: Value = c.call("testmempoolaccept", &[json!([hex])]).unwrap();
    assert_eq!(accept[0]["allowed"], true);
    assert_eq!(accept[0]["vsize"], tx.vsize());
    assert_eq!(accept[0]["fees"]["base"], json!(0.00001));
    assert_eq!(c.send_raw_transaction(hex.as_str()).unwrap(), txid);
    // Re-sending a known transaction returns its txid.
    assert_eq!(c.send_raw_transaction(hex.as_str()).unwrap(), txid);
    let entry: Value = c.call("getmempoolentry", &[json!(txid.to_string())]).unwrap();
    assert_eq!(entry["vsize"], tx.vsize());
    assert_eq!(entry["fees"]["base"], json!(0.00001));
    assert!(
        c.get_tx_out(&cb.compute_txid(), 0, Some(true)).unwrap().is_none(),
        "spent in the mempool"
    );
    assert!(c.get_tx_out(&cb.compute_txid(), 0, Some(false)).unwrap().is_some());
    let verbose: Value = c.call("getrawmempool", &[json!(true)]).unwrap();
    assert!(verbose[txid.to_string()]["wtxid"].is_string());

    // generateblock with the mempool transaction by txid.
    let gen: Value = c
        .call("generateblock", &[json!(address(3).to_string()), json!([txid.to_string()])])
        .unwrap();
    let bh = gen["hash"].as_str().unwrap().to_string();
    let b2: Value = c.call("getblock", &[json!(bh), json!(2)]).unwrap();
    let t = &b2["tx"][1];
    assert_eq!(t["txid"], txid.to_string());
    assert_eq!(t["hex"], hex);
    assert_eq!(t["vin"][0]["txid"], cb.compute_txid().to_string());
    assert_eq!(t["vout"][0]["n"], 0);
    assert_eq!(t["vout"][0]["value"], json!(49.99999));
    assert_eq!(t["vout"][0]["scriptPubKey"]["hex"], address(2).script_pubkey().to_hex_string());
    let info: Value =
        c.call("getrawtransaction", &[json!(txid.to_string()), json!(true), json!(bh)]).unwrap();
    assert_eq!(info["in_active_chain"], true);
    assert_eq!(info["confirmations"], 1);
    // A confirmed transaction sent again: -27, or its txid (bitcoind answers either way).
    match c.send_raw_transaction(hex.as_str()) {
        Ok(t) => assert_eq!(t, txid),
        Err(bitcoincore_rpc::Error::JsonRpc(bitcoincore_rpc::jsonrpc::Error::Rpc(e))) => {
            assert!(e.code == -27 || e.code == -25, "{e:?}")
        }
        Err(e) => panic!("{e}"),
    }
    // Reorg through the RPC.
    let bh: paychan_core::bitcoin::BlockHash = bh.parse().unwrap();
    c.invalidate_block(&bh).unwrap();
    assert_eq!(c.get_block_count().unwrap(), 101);
    assert_eq!(c.get_raw_mempool().unwrap(), vec![txid]);
    assert_eq!(c.get_block_info(&bh).unwrap().confirmations, -1);
    c.reconsider_block(&bh).unwrap();
    assert_eq!(c.get_best_block_hash().unwrap(), bh);
    let _: Value = c.call("setmocktime", &[json!(2_000_000_000u64)]).unwrap();
    let t: u64 = rpc.call("getmocktime", &[]).unwrap();
    assert_eq!(t, 2_000_000_000);
}

/// A raw POST to the node's RPC with the cookie's credentials: the status and the JSON body.
fn post(r: &common::Running, body: &[u8]) -> (u16, Value) {
    use base64::Engine;
    use std::io::{Read, Write};
    let cookie = std::fs::read_to_string(&r.cookie).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
    let host = r.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before the whole body is sent.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text:.300}")))
}

#[test]
fn oversized_bodies_and_batches_get_json_rpc_errors() {
    let r = common::start();
    // 40 MiB: above the 32 MiB bitcoind reads; a JSON-RPC error, not plain text.
    let big = vec![b' '; 40 * 1024 * 1024];
    let (status, v) = post(&r, &big);
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    // A batch at the limit is answered call by call; one above it is refused whole.
    let batch = |n: usize| {
        let calls: Vec<Value> =
            (0..n).map(|i| json!({"method": "getblockcount", "params": [], "id": i})).collect();
        serde_json::to_vec(&calls).unwrap()
    };
    let (status, v) = post(&r, &batch(1_000));
    assert_eq!(status, 200);
    assert_eq!(v.as_array().unwrap().len(), 1_000);
    let (status, v) = post(&r, &batch(1_001));
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("at most 1000"), "{v}");
}

/// Without `-txindex` (as a stock bitcoind) `getrawtransaction` finds a confirmed
/// transaction only with its block hash, and fails with -5 and Core's words otherwise; the
/// mempool is always searched. With the index, the txid alone finds it. `getindexinfo` says
/// which.
#[test]
fn getrawtransaction_needs_the_index_or_a_block_hash_for_confirmed_transactions() {
    use paychan_chain::ChainError;
    use paychan_harness::fixtures::{p2wpkh, spend_p2wpkh};
    let r = common::start();
    let rpc = r.rpc();
    let hashes = rpc.client().generate_to_address(101, &address(1)).unwrap();
    let block = rpc.client().get_block(&hashes[0]).unwrap();
    let coinbase = &block.txdata[0];
    let txid = coinbase.compute_txid();
    // A transaction in the mempool.
    let coin = (paychan_core::bitcoin::OutPoint { txid, vout: 0 }, coinbase.output[0].clone());
    let out = paychan_core::bitcoin::TxOut {
        value: coin.1.value - Amount::from_sat(1_000),
        script_pubkey: p2wpkh(&key(2)),
    };
    let pending = spend_p2wpkh(&[coin], vec![out], &key(1));
    let pending_id = rpc.client().send_raw_transaction(&pending).unwrap();

    assert!(!r.node.txindex(), "off by default, as in Bitcoin Core");
    let e = rpc.call::<Value>("getrawtransaction", &[json!(txid.to_string())]).unwrap_err();
    let ChainError::Node { code, message } = e else { panic!("{e}") };
    assert_eq!(code, -5);
    assert_eq!(message, "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries. Use gettransaction for wallet transactions.");
    let found: Value = rpc
        .call(
            "getrawtransaction",
            &[json!(txid.to_string()), json!(true), json!(hashes[0].to_string())],
        )
        .unwrap();
    assert_eq!(found["txid"], txid.to_string());
    assert_eq!(found["in_active_chain"], true);
    let mempool: Value = rpc.call("getrawtransaction", &[json!(pending_id.to_string())]).unwrap();
    assert!(mempool.is_string(), "the mempool is searched without the index");
    assert_eq!(rpc.call::<Value>("getindexinfo", &[]).unwrap(), json!({}));

    r.node.set_txindex(true);
    let found: Value =
        rpc.call("getrawtransaction", &[json!(txid.to_string()), json!(true)]).unwrap();
    assert_eq!(found["confirmations"], 101);
    let info: Value = rpc.call("getindexinfo", &[]).unwrap();
    assert_eq!(info["txindex"]["synced"], true);
    assert_eq!(info["txindex"]["best_block_height"], 101);
    assert_eq!(rpc.call::<Value>("getindexinfo", &[json!("coinstatsindex")]).unwrap(), json!({}));
}

/// A fresh node has no fee estimate: `estimatesmartfee` says so in Core's words, and the
/// client uses its configured fallback rate; once the chain has transactions, the estimate.
#[test]
fn without_an_estimate_the_fallback_fee_rate_is_used() {
    use paychan_chain::ChainSource;
    use paychan_core::bitcoin::FeeRate;
    use paychan_harness::fixtures::{p2wpkh, spend_p2wpkh};
    let r = common::start();
    let fallback = FeeRate::from_sat_per_vb(7).unwrap();
    let rpc = r.rpc().with_fallback_fee(fallback);
    let hashes = rpc.client().generate_to_address(101, &address(1)).unwrap();
    let raw: Value = rpc.call("estimatesmartfee", &[json!(6)]).unwrap();
    assert_eq!(raw, json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}));
    assert_eq!(rpc.estimate_fee(6).unwrap(), fallback);
    assert!(rpc.client().estimate_smart_fee(6, None).unwrap().fee_rate.is_none());

    // A block with a transaction paying 5 sat/vB: the estimate is that.
    let cb = rpc.client().get_block(&hashes[0]).unwrap().txdata[0].clone();
    let coin = (
        paychan_core::bitcoin::OutPoint { txid: cb.compute_txid(), vout: 0 },
        cb.output[0].clone(),
    );
    let out = |fee: u64| paychan_core::bitcoin::TxOut {
        value: coin.1.value - Amount::from_sat(fee),
        script_pubkey: p2wpkh(&key(2)),
    };
    let probe = spend_p2wpkh(std::slice::from_ref(&coin), vec![out(0)], &key(1));
    let fee = 5 * probe.vsize() as u64;
    let tx = spend_p2wpkh(std::slice::from_ref(&coin), vec![out(fee)], &key(1));
    rpc.client().send_raw_transaction(&tx).unwrap();
    rpc.client().generate_to_address(1, &address(1)).unwrap();
    let estimate = rpc.estimate_fee(6).unwrap();
    assert_eq!(estimate.to_sat_per_vb_floor(), 5, "{estimate}");
}
