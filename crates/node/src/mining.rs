//! Block assembly: transactions picked by ancestor fee rate (so a child paying for its parent
//! gets both mined), a BIP 34 coinbase with the segwit witness commitment, and regtest proof of
//! work.

use std::collections::{BinaryHeap, HashMap, HashSet};

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::block::{Header, Version as BlockVersion};
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::opcodes::all::OP_RETURN;
use paychan_core::bitcoin::script::{Builder, PushBytesBuf};
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{
    Amount, Block, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode,
    TxOut, Txid, Witness,
};

use crate::mempool::Mempool;
use crate::params::{self, COINBASE_RESERVE_WEIGHT, MAX_BLOCK_WEIGHT};

/// Picks mempool transactions for a block by ancestor fee rate, in an order where every parent
/// precedes its children. Returns the txids and their total fees.
pub(crate) fn select(mempool: &Mempool, max_weight: u64) -> (Vec<Txid>, Amount) {
    let ancestors: HashMap<Txid, HashSet<Txid>> =
        mempool.entries.iter().map(|(t, e)| (*t, mempool.ancestors_of(&e.tx))).collect();
    let mut included: HashSet<Txid> = HashSet::new();
    let mut order = Vec::new();
    let mut weight = COINBASE_RESERVE_WEIGHT;
    let mut fees = Amount::ZERO;
    // Score: package fee and vsize (the transaction with its not-yet-included ancestors).
    let package = |t: &Txid, included: &HashSet<Txid>| -> (u64, u64) {
        let mut fee = 0;
        let mut vsize = 0;
        for a in ancestors[t].iter().chain(std::iter::once(t)) {
            if !included.contains(a) {
                if let Some(e) = mempool.entries.get(a) {
                    fee += e.fee.to_sat();
                    vsize += e.vsize;
                }
            }
        }
        (fee, vsize.max(1))
    };
    #[derive(PartialEq, Eq)]
    struct Scored {
        fee: u64,
        vsize: u64,
        txid: Txid,
    }
    impl Ord for Scored {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            // fee/vsize compared without division; ties by txid for determinism.
            (u128::from(self.fee) * u128::from(o.vsize))
                .cmp(&(u128::from(o.fee) * u128::from(self.vsize)))
                .then_with(|| o.txid.cmp(&self.txid))
        }
    }
    impl PartialOrd for Scored {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Scored> = mempool
        .entries
        .keys()
        .map(|t| {
            let (fee, vsize) = package(t, &included);
            Scored { fee, vsize, txid: *t }
        })
        .collect();
    let mut failed: HashSet<Txid> = HashSet::new();
    while let Some(top) = heap.pop() {
        if included.contains(&top.txid) || failed.contains(&top.txid) {
            continue;
        }
        let (fee, vsize) = package(&top.txid, &included);
        let current = Scored { fee, vsize, txid: top.txid };
        if heap.peek().is_some_and(|next| current < *next) {
            heap.push(current); // stale: its ancestors were included since it was scored
            continue;
        }
        let mut pkg: Vec<Txid> = ancestors[&top.txid]
            .iter()
            .copied()
            .filter(|a| !included.contains(a))
            .chain(std::iter::once(top.txid))
            .collect();
        let pkg_weight: u64 =
            pkg.iter().filter_map(|t| mempool.entries.get(t)).map(|e| e.vsize * 4).sum();
        if weight + pkg_weight > max_weight.min(MAX_BLOCK_WEIGHT)
            || pkg.iter().any(|t| failed.contains(t))
        {
            failed.insert(top.txid);
            continue;
        }
        // Parents first: an ancestor has fewer ancestors than its descendants.
        pkg.sort_by_key(|t| (ancestors[t].len(), *t));
        for t in pkg {
            if let Some(e) = mempool.entries.get(&t) {
                fees += e.fee;
                weight += e.vsize * 4;
            }
            included.insert(t);
            order.push(t);
        }
    }
    (order, fees)
}

/// Builds the coinbase for a block at `height` paying `reward` to `script_pubkey`.
///
/// The scriptSig is the BIP 34 height and an 8-byte extra nonce, so that two blocks mined on the
/// same parent in the same second (after an `invalidateblock`) still differ.
pub(crate) fn coinbase(height: u32, reward: Amount, script_pubkey: ScriptBuf) -> Transaction {
    let mut nonce = [0u8; 8];
    if getrandom::getrandom(&mut nonce).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        nonce = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes();
    }
    let script_sig = Builder::new().push_int(i64::from(height)).push_slice(nonce).into_script();
    let mut witness = Witness::new();
    witness.push([0u8; 32]);
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness,
        }],
        output: vec![TxOut { value: reward, script_pubkey }],
    }
}

/// Assembles and mines a block on `prev` with `txs` (coinbase added here).
pub(crate) fn mine_block(
    prev: BlockHash,
    height: u32,
    time: u32,
    fees: Amount,
    script_pubkey: ScriptBuf,
    txs: Vec<Transaction>,
) -> Block {
    let reward = params::subsidy(height) + fees;
    let mut txdata = Vec::with_capacity(txs.len() + 1);
    txdata.push(coinbase(height, reward, script_pubkey));
    txdata.extend(txs);
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(0x2000_0000),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: params::pow_bits(),
            nonce: 0,
        },
        txdata,
    };
    // Segwit commitment (BIP 141): OP_RETURN 0xaa21a9ed ‖ SHA256d(witness root ‖ reserved).
    if let Some(root) = block.witness_root() {
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut data = PushBytesBuf::new();
        let _ = data.extend_from_slice(&[0xaa, 0x21, 0xa9, 0xed]);
        let _ = data.extend_from_slice(commitment.as_byte_array());
        let spk = Builder::new().push_opcode(OP_RETURN).push_slice(data).into_script();
        block.txdata[0].output.push(TxOut { value: Amount::ZERO, script_pubkey: spk });
    }
    if let Some(root) = block.compute_merkle_root() {
        block.header.merkle_root = root;
    }
    let target = block.header.target();
    while block.header.validate_pow(target).is_err() {
        block.header.nonce = block.header.nonce.wrapping_add(1);
    }
    block
}
