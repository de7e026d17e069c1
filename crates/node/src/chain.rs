//! The block tree, the active chain, the UTXO set with undo data, and block validation
//! (Bitcoin Core's `ConnectBlock`, for the rules a regtest chain exercises).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::serialize;
use paychan_core::bitcoin::script::Builder;
use paychan_core::bitcoin::{
    Amount, Block, BlockHash, OutPoint, Sequence, Transaction, TxOut, Txid,
};
use paychan_core::verify::verify_consensus;

use crate::params::{self, COINBASE_MATURITY, MAX_BLOCK_WEIGHT, MTP_WINDOW};

/// BIP 68: the sequence's relative lock is disabled.
const SEQUENCE_DISABLE_FLAG: u32 = 1 << 31;
/// BIP 68: the relative lock is in units of 512 seconds.
const SEQUENCE_TYPE_FLAG: u32 = 1 << 22;
/// BIP 68: the relative lock's value.
const SEQUENCE_VALUE_MASK: u32 = 0x0000_ffff;

/// An unspent output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    /// The output.
    pub txout: TxOut,
    /// Height of the block that created it (the next height for mempool outputs).
    pub height: u32,
    /// Created by a coinbase transaction.
    pub coinbase: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct BlockEntry {
    pub block: Arc<Block>,
    pub height: u32,
    pub invalid: bool,
    /// Order of arrival: ties between equal-height branches go to the first seen.
    pub seq: u64,
}

/// Where a confirmed transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLocation {
    /// The block.
    pub block: BlockHash,
    /// Its height.
    pub height: u32,
    /// Position in the block.
    pub index: usize,
}

#[derive(Debug)]
pub(crate) struct Chain {
    pub entries: HashMap<BlockHash, BlockEntry>,
    pub children: HashMap<BlockHash, Vec<BlockHash>>,
    pub active: Vec<BlockHash>,
    pub utxos: HashMap<OutPoint, Coin>,
    undo: HashMap<BlockHash, Vec<(OutPoint, Coin)>>,
    pub tx_index: HashMap<Txid, TxLocation>,
    next_seq: u64,
}

/// What connecting a block did to the UTXO set so far (to undo it on failure).
#[derive(Default)]
struct Changes {
    spent: Vec<(OutPoint, Coin)>,
    created: Vec<OutPoint>,
}

/// Why `IsFinalTx` / sequence locks say no.
pub(crate) enum Finality {
    Final,
    NonFinal,
    NonBip68Final,
}

impl Chain {
    pub fn new() -> Self {
        let genesis = Arc::new(params::genesis());
        let hash = genesis.block_hash();
        let mut c = Chain {
            entries: HashMap::new(),
            children: HashMap::new(),
            active: Vec::new(),
            utxos: HashMap::new(),
            undo: HashMap::new(),
            tx_index: HashMap::new(),
            next_seq: 1,
        };
        c.entries.insert(hash, BlockEntry { block: genesis, height: 0, invalid: false, seq: 0 });
        // The genesis coinbase is unspendable (as in Bitcoin Core): no UTXO, no index entry.
        c.active.push(hash);
        c
    }

    pub fn height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    pub fn tip(&self) -> BlockHash {
        self.active[self.active.len() - 1]
    }

    pub fn block_at(&self, height: u32) -> Option<&Arc<Block>> {
        self.active.get(height as usize).and_then(|h| self.entries.get(h)).map(|e| &e.block)
    }

    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.entries.get(hash).is_some_and(|e| self.active.get(e.height as usize) == Some(hash))
    }

    /// Median-time-past of the active block at `height`.
    pub fn mtp(&self, height: u32) -> u32 {
        let lo = (height as usize + 1).saturating_sub(MTP_WINDOW);
        let mut times: Vec<u32> = (lo..=height as usize)
            .filter_map(|h| self.block_at(h as u32))
            .map(|b| b.header.time)
            .collect();
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Median-time-past of the block `hash` (walking its own ancestry, active or not).
    pub fn mtp_of(&self, hash: &BlockHash) -> u32 {
        let mut times = Vec::with_capacity(MTP_WINDOW);
        let mut cur = Some(*hash);
        while let Some(h) = cur {
            if times.len() == MTP_WINDOW {
                break;
            }
            match self.entries.get(&h) {
                Some(e) => {
                    times.push(e.block.header.time);
                    cur = if e.height == 0 { None } else { Some(e.block.header.prev_blockhash) };
                }
                None => break,
            }
        }
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Adds a block to the tree (not yet connected). Returns false when already known.
    pub fn insert(&mut self, block: Arc<Block>) -> Result<bool, String> {
        let hash = block.block_hash();
        if self.entries.contains_key(&hash) {
            return Ok(false);
        }
        let prev = block.header.prev_blockhash;
        let parent = self.entries.get(&prev).ok_or("prev-blk-not-found")?;
        let height = parent.height + 1;
        let invalid = parent.invalid;
        self.entries.insert(hash, BlockEntry { block, height, invalid, seq: self.next_seq });
        self.next_seq += 1;
        self.children.entry(prev).or_default().push(hash);
        Ok(true)
    }

    /// `IsFinalTx` and BIP 68 sequence locks of `tx` for inclusion in a block at `height` whose
    /// parent has median-time-past `prev_mtp`. `coin_of` gives each input's coin.
    pub fn finality(
        &self,
        tx: &Transaction,
        height: u32,
        prev_mtp: u32,
        coins: &[Coin],
    ) -> Finality {
        let final_lock = match tx.lock_time {
            LockTime::Blocks(h) => h.to_consensus_u32() < height,
            LockTime::Seconds(t) => t.to_consensus_u32() < prev_mtp,
        };
        if !(final_lock
            || tx.lock_time == LockTime::ZERO
            || tx.input.iter().all(|i| i.sequence == Sequence::MAX))
        {
            return Finality::NonFinal;
        }
        if tx.version.0 < 2 {
            return Finality::Final;
        }
        let (mut min_height, mut min_time) = (-1i64, -1i64);
        for (input, coin) in tx.input.iter().zip(coins) {
            let seq = input.sequence.0;
            if seq & SEQUENCE_DISABLE_FLAG != 0 {
                continue;
            }
            let value = i64::from(seq & SEQUENCE_VALUE_MASK);
            if seq & SEQUENCE_TYPE_FLAG != 0 {
                let coin_time =
                    i64::from(self.mtp(coin.height.saturating_sub(1).min(self.height())));
                min_time = min_time.max(coin_time + (value << 9) - 1);
            } else {
                min_height = min_height.max(i64::from(coin.height) + value - 1);
            }
        }
        if min_height >= i64::from(height) || min_time >= i64::from(prev_mtp) {
            return Finality::NonBip68Final;
        }
        Finality::Final
    }

    /// Connects `hash` (whose parent is the tip). Scripts are verified when `verify_scripts`,
    /// except for transactions in `script_ok` (verified at mempool acceptance).
    pub fn connect(
        &mut self,
        hash: BlockHash,
        verify_scripts: bool,
        script_ok: &HashSet<Txid>,
    ) -> Result<(), String> {
        let entry = self.entries.get(&hash).ok_or("unknown block")?.clone();
        let block = entry.block.clone();
        let height = entry.height;
        if block.header.prev_blockhash != self.tip() {
            return Err("prev-blk-not-tip".into());
        }
        if block.header.bits != params::pow_bits() {
            return Err("bad-diffbits".into());
        }
        if block.header.validate_pow(block.header.target()).is_err() {
            return Err("high-hash".into());
        }
        let prev_mtp = self.mtp(height - 1);
        if block.header.time <= prev_mtp {
            return Err("time-too-old".into());
        }
        if !block.check_merkle_root() {
            return Err("bad-txnmrklroot".into());
        }
        if !block.check_witness_commitment() {
            return Err("bad-witness-merkle-match".into());
        }
        if block.weight().to_wu() > MAX_BLOCK_WEIGHT {
            return Err("bad-blk-weight".into());
        }
        let Some((coinbase, txs)) = block.txdata.split_first() else {
            return Err("bad-blk-length".into());
        };
        if !coinbase.is_coinbase() || txs.iter().any(Transaction::is_coinbase) {
            return Err("bad-cb-missing".into());
        }
        let expect = Builder::new().push_int(i64::from(height)).into_script();
        let sig = coinbase.input[0].script_sig.as_bytes();
        if !sig.starts_with(expect.as_bytes()) || !(2..=100).contains(&sig.len()) {
            return Err("bad-cb-height".into());
        }
        let mut changes = Changes::default();
        let result = self.apply(&block, height, prev_mtp, verify_scripts, script_ok, &mut changes);
        if let Err(e) = result {
            for o in changes.created {
                self.utxos.remove(&o);
            }
            for (o, c) in changes.spent.into_iter().rev() {
                self.utxos.insert(o, c);
            }
            return Err(e);
        }
        let spent = changes.spent;
        for (index, tx) in block.txdata.iter().enumerate() {
            self.tx_index.insert(tx.compute_txid(), TxLocation { block: hash, height, index });
        }
        self.undo.insert(hash, spent);
        self.active.push(hash);
        Ok(())
    }

    fn apply(
        &mut self,
        block: &Block,
        height: u32,
        prev_mtp: u32,
        verify_scripts: bool,
        script_ok: &HashSet<Txid>,
        changes: &mut Changes,
    ) -> Result<(), String> {
        let mut fees = Amount::ZERO;
        for (i, tx) in block.txdata.iter().enumerate() {
            let txid = tx.compute_txid();
            if i > 0 {
                let mut coins = Vec::with_capacity(tx.input.len());
                for input in &tx.input {
                    let coin = self
                        .utxos
                        .remove(&input.previous_output)
                        .ok_or("bad-txns-inputs-missingorspent")?;
                    changes.spent.push((input.previous_output, coin.clone()));
                    if coin.coinbase && height - coin.height < COINBASE_MATURITY {
                        return Err("bad-txns-premature-spend-of-coinbase".into());
                    }
                    coins.push(coin);
                }
                match self.finality(tx, height, prev_mtp, &coins) {
                    Finality::Final => {}
                    Finality::NonFinal => return Err("bad-txns-nonfinal".into()),
                    Finality::NonBip68Final => return Err("bad-txns-nonfinal".into()),
                }
                let value_in: Amount = coins.iter().map(|c| c.txout.value).sum();
                let value_out: Amount = tx.output.iter().map(|o| o.value).sum();
                let fee = value_in.checked_sub(value_out).ok_or("bad-txns-in-belowout")?;
                fees = fees.checked_add(fee).ok_or("bad-txns-accumulated-fee-outofrange")?;
                if verify_scripts && !script_ok.contains(&txid) {
                    let raw = serialize(tx);
                    let outs: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
                    for (n, c) in coins.iter().enumerate() {
                        verify_consensus(&raw, n, &c.txout, Some(&outs)).map_err(|e| {
                            format!("block-script-verify-flag-failed ({e}) in {txid}")
                        })?;
                    }
                }
            }
            for (vout, out) in tx.output.iter().enumerate() {
                if out.script_pubkey.is_op_return() {
                    continue;
                }
                let op = OutPoint { txid, vout: vout as u32 };
                let coin = Coin { txout: out.clone(), height, coinbase: i == 0 };
                if self.utxos.insert(op, coin).is_some() {
                    return Err("bad-txns-BIP30".into());
                }
                changes.created.push(op);
            }
        }
        let reward: Amount = block.txdata[0].output.iter().map(|o| o.value).sum();
        if reward > params::subsidy(height) + fees {
            return Err("bad-cb-amount".into());
        }
        Ok(())
    }

    /// Disconnects the tip; returns the block. The genesis block is never disconnected.
    pub fn disconnect_tip(&mut self) -> Option<Arc<Block>> {
        if self.active.len() <= 1 {
            return None;
        }
        let hash = self.active.pop()?;
        let block = self.entries.get(&hash)?.block.clone();
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint { txid, vout: vout as u32 });
            }
            self.tx_index.remove(&txid);
        }
        for (o, c) in self.undo.remove(&hash).unwrap_or_default().into_iter().rev() {
            self.utxos.insert(o, c);
        }
        Some(block)
    }

    /// Marks `hash` and its descendants invalid (or valid again).
    pub fn set_invalid(&mut self, hash: BlockHash, invalid: bool) {
        let mut stack = vec![hash];
        while let Some(h) = stack.pop() {
            if let Some(e) = self.entries.get_mut(&h) {
                e.invalid = invalid;
            }
            if let Some(kids) = self.children.get(&h) {
                stack.extend(kids.iter().copied());
            }
        }
        if !invalid {
            // Reconsidering a block also clears its invalid ancestors.
            let mut cur = self.entries.get(&hash).map(|e| e.block.header.prev_blockhash);
            while let Some(h) = cur {
                match self.entries.get_mut(&h) {
                    Some(e) if e.invalid => {
                        e.invalid = false;
                        cur = Some(e.block.header.prev_blockhash);
                    }
                    _ => break,
                }
            }
        }
    }

    /// The best valid block: most work (every regtest block weighs the same, so the greatest
    /// height); on a tie the active chain keeps its tip, otherwise the first seen wins.
    pub fn best_leaf(&self) -> BlockHash {
        let key = |(h, e): (&BlockHash, &BlockEntry)| {
            (e.height, self.is_active(h), std::cmp::Reverse(e.seq))
        };
        self.entries
            .iter()
            .filter(|(_, e)| !e.invalid)
            .max_by_key(|x| key(*x))
            .map_or(self.tip(), |(h, _)| *h)
    }

    /// The path from the fork point with the active chain to `leaf`, oldest first, and the
    /// fork point's height.
    pub fn branch_to(&self, leaf: BlockHash) -> (u32, Vec<BlockHash>) {
        let mut path = Vec::new();
        let mut cur = leaf;
        while !self.is_active(&cur) {
            path.push(cur);
            match self.entries.get(&cur) {
                Some(e) => cur = e.block.header.prev_blockhash,
                None => break,
            }
        }
        path.reverse();
        let fork = self.entries.get(&cur).map_or(0, |e| e.height);
        (fork, path)
    }
}
