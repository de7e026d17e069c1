//! A tiny test wallet for the node's tests: P2WPKH coins from mined coinbases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::SecretKey;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut};
use paychan_harness::fixtures::{key, p2wpkh, spend_p2wpkh, spend_p2wpkh_with};
use paychan_node::Node;

pub fn miner_key() -> SecretKey {
    key(0x77)
}

pub fn miner_spk() -> ScriptBuf {
    p2wpkh(&miner_key())
}

/// A node with 101 + `extra` blocks mined to the miner key: coinbases 1..=1+extra are mature.
pub fn funded_node(extra: u32) -> Node {
    let node = Node::in_memory();
    node.mine(101 + extra, &miner_spk()).unwrap();
    node
}

/// The coinbase output of the block at `height`.
pub fn coinbase_coin(node: &Node, height: u32) -> (OutPoint, TxOut) {
    let hash = node.block_hash(height).unwrap();
    let (block, _) = node.block(&hash).unwrap();
    let cb = &block.txdata[0];
    (OutPoint { txid: cb.compute_txid(), vout: 0 }, cb.output[0].clone())
}

/// Spends `coins` (all P2WPKH of `key`) to `outputs`, signing SIGHASH_ALL.
pub fn spend(coins: &[(OutPoint, TxOut)], outputs: Vec<TxOut>, key: &SecretKey) -> Transaction {
    spend_p2wpkh(coins, outputs, key)
}

pub fn spend_with(
    coins: &[(OutPoint, TxOut)],
    outputs: Vec<TxOut>,
    key: &SecretKey,
    version: Version,
    lock_time: LockTime,
    sequence: Sequence,
) -> Transaction {
    spend_p2wpkh_with(coins, outputs, key, version, lock_time, sequence)
}

/// One output of `value` to `spk`.
pub fn out(value: u64, spk: ScriptBuf) -> TxOut {
    TxOut { value: Amount::from_sat(value), script_pubkey: spk }
}

/// Splits the mature coinbase at `height` into `n` outputs of `each` sat to the miner key,
/// confirmed. Returns the new coins.
pub fn split(node: &Node, height: u32, n: usize, each: u64) -> Vec<(OutPoint, TxOut)> {
    let coin = coinbase_coin(node, height);
    let outputs = (0..n).map(|_| out(each, miner_spk())).collect();
    let tx = spend(&[coin], outputs, &miner_key());
    let txid = node.submit(tx.clone(), None).unwrap();
    node.mine(1, &miner_spk()).unwrap();
    tx.output
        .iter()
        .enumerate()
        .map(|(v, o)| (OutPoint { txid, vout: v as u32 }, o.clone()))
        .collect()
}
