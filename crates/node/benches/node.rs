//! The embedded node's speed beside its bound, measured in one run:
//!
//! * raw `libbitcoinconsensus` verifications per second (one P2WPKH input): the bound;
//! * mempool acceptance of 2,000 one-input transactions (transactions per second, and the
//!   ratio to the bound);
//! * assembling and connecting a block of those 2,000 transactions (scripts already verified at
//!   acceptance, as Bitcoin Core's script cache does), and connecting the same block on a second
//!   node that verifies every script.
//!
//! Run: `cargo bench -p paychan-node --bench node`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::serialize;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{
    Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use paychan_core::verify::verify_consensus;
use paychan_harness::fixtures::{key, p2wpkh, sign_p2wpkh, spend_p2wpkh};
use paychan_node::Node;

const N: usize = 2_000;

fn sign(tx: &mut Transaction, prev: &TxOut) {
    sign_p2wpkh(tx, 0, prev, &key(0x42));
}

fn one_in_one_out(prev: OutPoint, prev_out: &TxOut, to: ScriptBuf) -> Transaction {
    let out = TxOut { value: prev_out.value - Amount::from_sat(500), script_pubkey: to };
    spend_p2wpkh(&[(prev, prev_out.clone())], vec![out], &key(0x42))
}

fn main() {
    let spk = p2wpkh(&key(0x42));
    let a = Node::in_memory();
    a.mine(101, &spk).unwrap();
    // Split one coinbase into N coins, confirmed.
    let (cb_block, _) = a.block(&a.block_hash(1).unwrap()).unwrap();
    let cb = &cb_block.txdata[0];
    let mut split = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: cb.compute_txid(), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: (0..N)
            .map(|_| TxOut { value: Amount::from_sat(100_000), script_pubkey: spk.clone() })
            .collect(),
    };
    sign(&mut split, &cb.output[0]);
    let split_id = a.submit(split.clone(), None).unwrap();
    a.mine(1, &spk).unwrap();
    let spends: Vec<Transaction> = (0..N)
        .map(|v| {
            one_in_one_out(
                OutPoint { txid: split_id, vout: v as u32 },
                &split.output[v],
                p2wpkh(&key(0x43)),
            )
        })
        .collect();

    // A second node with the same chain (blocks copied), to connect with full verification.
    let b = Node::in_memory();
    for h in 1..=a.tip().0 {
        let (blk, _) = a.block(&a.block_hash(h).unwrap()).unwrap();
        b.submit_block((*blk).clone()).unwrap();
    }

    // Bound: raw libbitcoinconsensus verifications of the same inputs.
    let raws: Vec<Vec<u8>> = spends.iter().map(serialize).collect();
    let t = Instant::now();
    for (i, raw) in raws.iter().enumerate() {
        verify_consensus(raw, 0, &split.output[i], None).unwrap();
    }
    let raw_per_s = N as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    for tx in &spends {
        a.submit(tx.clone(), None).unwrap();
    }
    let accept = t.elapsed();
    let accept_per_s = N as f64 / accept.as_secs_f64();

    let t = Instant::now();
    let hash = a.mine(1, &spk).unwrap()[0];
    let mine = t.elapsed();
    let (blk, _) = a.block(&hash).unwrap();
    assert_eq!(blk.txdata.len(), N + 1, "every transaction fits one block");

    let t = Instant::now();
    b.submit_block((*blk).clone()).unwrap();
    let connect_full = t.elapsed();
    assert_eq!(b.tip().1, hash);

    println!("node bench ({N} one-input P2WPKH transactions, one process, same run)");
    println!("  raw libbitcoinconsensus verify   {raw_per_s:>10.0} /s   (bound)");
    println!(
        "  mempool acceptance               {accept_per_s:>10.0} tx/s  {:.2}× bound",
        accept_per_s / raw_per_s
    );
    println!(
        "  assemble + connect 2,000-tx block {:>9.1} ms  (scripts cached from the mempool)",
        mine.as_secs_f64() * 1e3
    );
    println!(
        "  connect the same block, verifying {:>8.1} ms  ({:.0} inputs/s, {:.2}× bound)",
        connect_full.as_secs_f64() * 1e3,
        N as f64 / connect_full.as_secs_f64(),
        N as f64 / connect_full.as_secs_f64() / raw_per_s
    );
}
