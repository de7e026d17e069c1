//! `paychan bench node`: the embedded node's mempool acceptance and block assembly beside raw
//! `libbitcoinconsensus` script verifications per second (one core, as the node verifies on
//! one), all measured in one run.

use std::time::Instant;

use paychan_core::bitcoin::consensus::encode::serialize;
use paychan_core::bitcoin::{Amount, OutPoint, Transaction, TxOut};
use paychan_core::verify::verify_consensus;
use paychan_harness::fixtures::{key, p2wpkh, spend_p2wpkh};
use paychan_node::Node;
use serde_json::{json, Value};

use crate::error::fail;
use crate::CliError;

/// A one-input transaction spending `prev` (key 0x42's P2WPKH coin) to `outputs`.
fn spend(prev: OutPoint, prev_out: &TxOut, outputs: Vec<TxOut>) -> Transaction {
    spend_p2wpkh(&[(prev, prev_out.clone())], outputs, &key(0x42))
}

/// Runs the node bench with `n` one-input P2WPKH transactions.
pub fn bench_node(n: usize) -> Result<Value, CliError> {
    let spk = p2wpkh(&key(0x42));
    let a = Node::in_memory();
    a.mine(101, &spk)?;
    // Split one coinbase into n confirmed coins.
    let hash = a.block_hash(1).ok_or_else(|| fail("no block 1"))?;
    let (cb_block, _) = a.block(&hash).ok_or_else(|| fail("no block 1"))?;
    let cb = &cb_block.txdata[0];
    let value =
        Amount::from_sat((cb.output[0].value.to_sat().saturating_sub(1_000_000)) / n.max(1) as u64);
    let split = spend(
        OutPoint { txid: cb.compute_txid(), vout: 0 },
        &cb.output[0],
        (0..n).map(|_| TxOut { value, script_pubkey: spk.clone() }).collect(),
    );
    let split_id = a.submit(split.clone(), None)?;
    a.mine(1, &spk)?;
    let spends: Vec<Transaction> = (0..n)
        .map(|v| {
            spend(
                OutPoint { txid: split_id, vout: v as u32 },
                &split.output[v],
                vec![TxOut {
                    value: value - Amount::from_sat(500),
                    script_pubkey: p2wpkh(&key(0x43)),
                }],
            )
        })
        .collect();
    // A second node with the same chain, to connect the block verifying every script.
    let b = Node::in_memory();
    for h in 1..=a.tip().0 {
        let hash = a.block_hash(h).ok_or_else(|| fail("missing block"))?;
        let (blk, _) = a.block(&hash).ok_or_else(|| fail("missing block"))?;
        b.submit_block((*blk).clone())?;
    }

    // The bound: raw verifications of the same inputs.
    let raws: Vec<Vec<u8>> = spends.iter().map(serialize).collect();
    let t = Instant::now();
    for (i, raw) in raws.iter().enumerate() {
        verify_consensus(raw, 0, &split.output[i], None).map_err(fail)?;
    }
    let raw_per_s = n as f64 / t.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(n);
    let t = Instant::now();
    for tx in &spends {
        let one = Instant::now();
        a.submit(tx.clone(), None)?;
        latencies.push(one.elapsed());
    }
    let accept_per_s = n as f64 / t.elapsed().as_secs_f64();
    latencies.sort_unstable();

    let t = Instant::now();
    let hash = *a.mine(1, &spk)?.first().ok_or_else(|| fail("no block mined"))?;
    let assemble = t.elapsed();
    let (blk, _) = a.block(&hash).ok_or_else(|| fail("the block vanished"))?;
    if blk.txdata.len() != n + 1 {
        return Err(fail(format!(
            "the block holds {} transactions, not {}",
            blk.txdata.len(),
            n + 1
        )));
    }
    let t = Instant::now();
    b.submit_block((*blk).clone())?;
    let connect = t.elapsed();
    let connect_per_s = n as f64 / connect.as_secs_f64();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(json!({
        "bench": "node",
        "transactions": n,
        "raw_verify_per_s": raw_per_s.round(),
        "mempool_accept_per_s": accept_per_s.round(),
        "mempool_ratio": (accept_per_s / raw_per_s * 1000.0).round() / 1000.0,
        "accept_latency_us": {"p50": pct(0.5), "p99": pct(0.99), "p99_9": pct(0.999)},
        "assemble_and_connect_ms": (assemble.as_secs_f64() * 1e4).round() / 10.0,
        "connect_verifying_ms": (connect.as_secs_f64() * 1e4).round() / 10.0,
        "connect_verifying_ratio": (connect_per_s / raw_per_s * 1000.0).round() / 1000.0,
        "peak_rss_mib": super::measure::peak_rss_mib(),
    }))
}
