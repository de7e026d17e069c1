//! The node's state behind its lock: chain, mempool, clock, store; and the operations that
//! change them (mining, reorgs). Mempool acceptance is in [`crate::mempool`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use paychan_core::bitcoin::{Amount, Block, BlockHash, FeeRate, ScriptBuf, Transaction, Txid};
use tracing::{debug, info, warn};

use crate::chain::Chain;
use crate::mempool::{Entry, Mempool};
use crate::policy::MIN_RELAY_FEE;
use crate::store::Store;
use crate::{mining, params, NodeError};

pub(crate) struct State {
    pub chain: Chain,
    pub mempool: Mempool,
    /// Transactions whose scripts passed in the mempool (Core's script cache).
    pub script_ok: HashSet<Txid>,
    pub mock_time: Option<u64>,
    pub store: Option<Store>,
    pub started: Instant,
    /// Blocks persisted already (so a reorg back onto them does not append them again).
    pub stored: HashSet<BlockHash>,
    /// Largest block weight the miner assembles (Core's `-blockmaxweight`).
    pub block_max_weight: u64,
    /// Whether the RPC answers `getrawtransaction` for confirmed transactions without a block
    /// hash (Core's `-txindex`; off by default, as in Core). The node itself always knows
    /// where a transaction is.
    pub txindex: bool,
}

impl State {
    pub fn new(store: Option<Store>) -> Self {
        State {
            chain: Chain::new(),
            mempool: Mempool::default(),
            script_ok: HashSet::new(),
            mock_time: None,
            store,
            started: Instant::now(),
            stored: HashSet::new(),
            block_max_weight: params::MAX_BLOCK_WEIGHT,
            txindex: false,
        }
    }

    /// Node time: mock time when set, else the system clock.
    pub fn now(&self) -> u64 {
        self.mock_time.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        })
    }

    /// The time for a new block: after the tip's median-time-past, and now.
    fn block_time(&self) -> u32 {
        let mtp = self.chain.mtp(self.chain.height());
        let now = u32::try_from(self.now()).unwrap_or(u32::MAX);
        now.max(mtp + 1)
    }

    /// Mines one block on the tip with the mempool's best transactions (or exactly `txs`).
    pub fn mine_one(
        &mut self,
        script_pubkey: ScriptBuf,
        txs: Option<Vec<Transaction>>,
    ) -> Result<BlockHash, NodeError> {
        let (txs, fees) = match txs {
            Some(txs) => {
                let fees = txs
                    .iter()
                    .map(|t| self.fee_of(t))
                    .try_fold(Amount::ZERO, |a, f| a.checked_add(f))
                    .unwrap_or(Amount::ZERO);
                (txs, fees)
            }
            None => {
                let (ids, fees) = mining::select(&self.mempool, self.block_max_weight);
                let txs = ids
                    .iter()
                    .filter_map(|t| self.mempool.entries.get(t))
                    .map(|e| (*e.tx).clone())
                    .collect();
                (txs, fees)
            }
        };
        let height = self.chain.height() + 1;
        let block = mining::mine_block(
            self.chain.tip(),
            height,
            self.block_time(),
            fees,
            script_pubkey,
            txs,
        );
        let hash = block.block_hash();
        self.submit_block(block)?;
        if self.chain.tip() != hash {
            return Err(NodeError::InvalidBlock {
                hash: hash.to_string(),
                reason: "the new block did not become the tip".into(),
            });
        }
        Ok(hash)
    }

    /// What `tx` pays in fees, by the UTXO set and the mempool (zero when unknown).
    fn fee_of(&self, tx: &Transaction) -> Amount {
        let mut value_in = Amount::ZERO;
        for i in &tx.input {
            let op = i.previous_output;
            let v = self.chain.utxos.get(&op).map(|c| c.txout.value).or_else(|| {
                self.mempool
                    .entries
                    .get(&op.txid)
                    .and_then(|e| e.tx.output.get(op.vout as usize))
                    .map(|o| o.value)
            });
            value_in += v.unwrap_or(Amount::ZERO);
        }
        let out: Amount = tx.output.iter().map(|o| o.value).sum();
        value_in.checked_sub(out).unwrap_or(Amount::ZERO)
    }

    /// Adds a block to the tree and moves to the best chain.
    pub fn submit_block(&mut self, block: Block) -> Result<(), NodeError> {
        let hash = block.block_hash();
        let block = Arc::new(block);
        let inserted = self
            .chain
            .insert(block.clone())
            .map_err(|reason| NodeError::InvalidBlock { hash: hash.to_string(), reason })?;
        if inserted && !self.stored.contains(&hash) {
            if let Some(store) = self.store.as_mut() {
                store.append_block(&block)?;
            }
            self.stored.insert(hash);
        }
        self.activate_best(true)?;
        if let Some(e) = self.chain.entries.get(&hash) {
            if e.invalid {
                return Err(NodeError::InvalidBlock {
                    hash: hash.to_string(),
                    reason: "failed validation".into(),
                });
            }
        }
        Ok(())
    }

    /// Moves the active chain to the best valid block, disconnecting and connecting as needed,
    /// and brings the mempool in line (Bitcoin Core's `ActivateBestChain`).
    pub fn activate_best(&mut self, verify: bool) -> Result<(), NodeError> {
        let mut changed = false;
        loop {
            let best = self.chain.best_leaf();
            if best == self.chain.tip() {
                break;
            }
            changed = true;
            let (fork, path) = self.chain.branch_to(best);
            let mut disconnected = Vec::new();
            while self.chain.height() > fork {
                if let Some(b) = self.chain.disconnect_tip() {
                    info!(height = self.chain.height() + 1, hash = %b.block_hash(), "block disconnected");
                    disconnected.push(b);
                }
            }
            let mut failed = false;
            for h in path {
                match self.chain.connect(h, verify, &self.script_ok) {
                    Ok(()) => {
                        if let Some(b) = self.chain.entries.get(&h).map(|e| e.block.clone()) {
                            self.remove_for_block(&b);
                        }
                        debug!(height = self.chain.height(), hash = %h, "block connected");
                    }
                    Err(reason) => {
                        warn!(hash = %h, %reason, "block invalid");
                        self.chain.set_invalid(h, true);
                        failed = true;
                        break;
                    }
                }
            }
            // Transactions of disconnected blocks go back to the mempool when still valid.
            for b in disconnected.iter().rev() {
                for tx in b.txdata.iter().skip(1) {
                    let _ = self.readmit(tx.clone());
                }
            }
            if !failed {
                break;
            }
        }
        if changed {
            self.revalidate_mempool();
        }
        Ok(())
    }

    fn remove_for_block(&mut self, block: &Block) {
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            self.mempool.remove(&txid);
            self.script_ok.remove(&txid);
            for i in &tx.input {
                if let Some(c) = self.mempool.spends.get(&i.previous_output).copied() {
                    for e in self.mempool.remove_with_descendants(c) {
                        self.script_ok.remove(&e.txid);
                    }
                }
            }
        }
    }

    /// Re-checks every mempool transaction against the new tip (after a reorg: coinbase
    /// maturity, finality and inputs may have changed), then rewrites the mempool file.
    fn revalidate_mempool(&mut self) {
        let mut entries: Vec<Entry> = self.mempool.entries.drain().map(|(_, e)| e).collect();
        self.mempool.spends.clear();
        entries.sort_by_key(|e| e.seq);
        // Parents may have arrived after children (they came back from a disconnected block):
        // retry until no more is accepted.
        loop {
            let before = entries.len();
            entries.retain(|e| self.readmit((*e.tx).clone()).is_err());
            if entries.len() == before || entries.is_empty() {
                break;
            }
        }
        for e in entries {
            self.script_ok.remove(&e.txid);
        }
        self.persist_mempool();
    }

    /// Rewrites the mempool file from the mempool, parents first.
    pub fn persist_mempool(&mut self) {
        let mut order: Vec<&Entry> = self.mempool.entries.values().collect();
        order.sort_by_key(|e| (self.mempool.ancestors_of(&e.tx).len(), e.seq));
        let txs: Vec<Transaction> = order.iter().map(|e| (*e.tx).clone()).collect();
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.rewrite_mempool(txs.iter()) {
                warn!(error = %e, "cannot rewrite mempool.dat");
            }
        }
    }

    /// Marks a block invalid and moves off it.
    pub fn invalidate(&mut self, hash: BlockHash) -> Result<(), NodeError> {
        if !self.chain.entries.contains_key(&hash) {
            return Err(NodeError::NotFound("Block not found".into()));
        }
        if self.chain.entries.get(&hash).is_some_and(|e| e.height == 0) {
            return Err(NodeError::InvalidParameter("cannot invalidate the genesis block".into()));
        }
        self.chain.set_invalid(hash, true);
        // Disconnect down to the invalid block's parent first, so a shorter valid branch can win.
        while self.chain.entries.get(&self.chain.tip()).is_some_and(|e| e.invalid) {
            if let Some(b) = self.chain.disconnect_tip() {
                for tx in b.txdata.iter().skip(1) {
                    let _ = self.readmit(tx.clone());
                }
            }
        }
        self.activate_best(true)?;
        self.revalidate_mempool();
        self.save_state()
    }

    /// Clears the invalid mark of a block (and its ancestors and descendants).
    pub fn reconsider(&mut self, hash: BlockHash) -> Result<(), NodeError> {
        if !self.chain.entries.contains_key(&hash) {
            return Err(NodeError::NotFound("Block not found".into()));
        }
        self.chain.set_invalid(hash, false);
        self.activate_best(true)?;
        self.save_state()
    }

    pub fn save_state(&self) -> Result<(), NodeError> {
        if let Some(store) = &self.store {
            let invalid: Vec<BlockHash> =
                self.chain.entries.iter().filter(|(_, e)| e.invalid).map(|(h, _)| *h).collect();
            store.write_state(self.mock_time, &invalid)?;
        }
        Ok(())
    }

    /// A fee-rate estimate: the median fee rate of the transactions in the last `blocks`
    /// blocks (or the mempool when they had none), never below 1 sat/vB.
    pub fn estimate_fee(&self, blocks: u32) -> Option<FeeRate> {
        let mut rates: Vec<u64> = Vec::new();
        let h = self.chain.height();
        for height in h.saturating_sub(blocks.max(1) * 3 - 1)..=h {
            let Some(b) = self.chain.block_at(height) else { continue };
            for tx in b.txdata.iter().skip(1) {
                let fee = self.confirmed_fee(tx);
                rates.push(fee * 250 / (tx.vsize() as u64).max(1));
            }
        }
        if rates.is_empty() {
            rates = self.mempool.entries.values().map(|e| e.fee_rate().to_sat_per_kwu()).collect();
        }
        rates.sort_unstable();
        let median = rates.get(rates.len() / 2).copied()?;
        Some(FeeRate::from_sat_per_kwu(median).max(MIN_RELAY_FEE))
    }

    fn confirmed_fee(&self, tx: &Transaction) -> u64 {
        let mut value_in = 0u64;
        for i in &tx.input {
            let op = i.previous_output;
            let Some(loc) = self.chain.tx_index.get(&op.txid) else { return 0 };
            let Some(b) = self.chain.block_at(loc.height) else { return 0 };
            match b.txdata.get(loc.index).and_then(|t| t.output.get(op.vout as usize)) {
                Some(o) => value_in += o.value.to_sat(),
                None => return 0,
            }
        }
        let out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        value_in.saturating_sub(out)
    }
}
