//! A tiny test wallet for the node's tests: P2WPKH coins from mined coinbases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::secp256k1::{Message, SecretKey};
use paychan_core::bitcoin::sighash::{EcdsaSighashType, SighashCache};
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{
    Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use paychan_core::testkit::{key, p2wpkh, pubkey};
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
    spend_with(coins, outputs, key, Version::TWO, LockTime::ZERO, Sequence::ENABLE_RBF_NO_LOCKTIME)
}

pub fn spend_with(
    coins: &[(OutPoint, TxOut)],
    outputs: Vec<TxOut>,
    key: &SecretKey,
    version: Version,
    lock_time: LockTime,
    sequence: Sequence,
) -> Transaction {
    let mut tx = Transaction {
        version,
        lock_time,
        input: coins
            .iter()
            .map(|(o, _)| TxIn {
                previous_output: *o,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    let secp = paychan_core::sig::secp();
    let pk = paychan_core::bitcoin::CompressedPublicKey(pubkey(key));
    for (i, (_, txout)) in coins.iter().enumerate() {
        let mut cache = SighashCache::new(&tx);
        let h = cache
            .p2wpkh_signature_hash(i, &txout.script_pubkey, txout.value, EcdsaSighashType::All)
            .unwrap();
        let sig = secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), key);
        let mut s = sig.serialize_der().to_vec();
        s.push(0x01);
        tx.input[i].witness = Witness::from_slice(&[s, pk.to_bytes().to_vec()]);
    }
    tx
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
