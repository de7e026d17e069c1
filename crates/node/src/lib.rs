//! # paychan-node
//!
//! A regtest-style Bitcoin node in one process, so paychan works out of the box (DESIGN §5):
//! real block and transaction formats, coinbase maturity, median-time-past, every input verified
//! by Bitcoin Core's `libbitcoinconsensus` plus Core's standardness and relay policy, BIP 68,
//! full-RBF replacement, block assembly by ancestor fee rate (CPFP), mock time, reorgs by
//! `invalidateblock`, persistence in a data directory, and a JSON-RPC server speaking bitcoind's
//! dialect ([`rpc`]), so that one client talks to this node and to a real `bitcoind` alike.
//!
//! [`Node`] is the in-process handle: cheap to clone, safe to share between threads.

#![deny(missing_docs)]

mod chain;
mod error;
mod mempool;
mod mining;
mod package;
pub mod params;
pub mod policy;
pub mod rpc;
mod state;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use paychan_core::bitcoin::{
    Amount, Block, BlockHash, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Txid,
};

pub use chain::{Coin, TxLocation};
pub use error::{code, NodeError};
pub use mempool::Entry as MempoolEntry;
pub use mempool::{Accepted, PackageOutcome, TxOutcome};

use state::State;

/// A block's place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Confirmations: 1 for the tip, −1 when not in the active chain (as bitcoind).
    pub confirmations: i64,
    /// Median-time-past at this block.
    pub median_time_past: u32,
    /// The next block in the active chain.
    pub next: Option<BlockHash>,
}

/// The embedded node. Clones share one node.
#[derive(Clone)]
pub struct Node {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    /// A node that keeps nothing on disk (tests).
    pub fn in_memory() -> Node {
        Node { state: Arc::new(Mutex::new(State::new(None))) }
    }

    /// Opens (or creates) a node in `datadir`, rebuilding chain, UTXO set and mempool from it.
    ///
    /// # Errors
    /// [`NodeError::Io`] or [`NodeError::Corrupt`] when the directory cannot be read.
    pub fn open(datadir: &Path) -> Result<Node, NodeError> {
        let (store, loaded) = store::Store::open(datadir)?;
        let mut st = State::new(Some(store));
        st.mock_time = loaded.mock_time;
        let genesis = st.chain.tip();
        st.stored.insert(genesis);
        for b in loaded.blocks {
            let hash = b.block_hash();
            st.stored.insert(hash);
            st.chain.insert(Arc::new(b)).map_err(|e| {
                NodeError::Corrupt(format!("blocks.dat: block {hash} does not connect: {e}"))
            })?;
        }
        for h in &loaded.invalid {
            st.chain.set_invalid(*h, true);
        }
        // Scripts were verified when each block was first connected.
        st.activate_best(false)?;
        for tx in loaded.mempool {
            let _ = st.readmit(tx);
        }
        st.persist_mempool();
        tracing::info!(
            datadir = %datadir.display(),
            height = st.chain.height(),
            mempool = st.mempool.entries.len(),
            "node opened"
        );
        Ok(Node { state: Arc::new(Mutex::new(st)) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation is completed or
        // rolled back before it can panic), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data directory, if any.
    pub fn datadir(&self) -> Option<std::path::PathBuf> {
        self.lock().store.as_ref().map(|s| s.dir().to_path_buf())
    }

    /// Height and hash of the tip.
    pub fn tip(&self) -> (u32, BlockHash) {
        let st = self.lock();
        (st.chain.height(), st.chain.tip())
    }

    /// The active block hash at `height`.
    pub fn block_hash(&self, height: u32) -> Option<BlockHash> {
        self.lock().chain.active.get(height as usize).copied()
    }

    /// A block (active or not) and where it stands.
    pub fn block(&self, hash: &BlockHash) -> Option<(Arc<Block>, BlockInfo)> {
        let st = self.lock();
        let e = st.chain.entries.get(hash)?;
        let active = st.chain.is_active(hash);
        let info = BlockInfo {
            hash: *hash,
            height: e.height,
            confirmations: if active { i64::from(st.chain.height() - e.height) + 1 } else { -1 },
            median_time_past: st.chain.mtp_of(hash),
            next: if active { st.chain.active.get(e.height as usize + 1).copied() } else { None },
        };
        Some((e.block.clone(), info))
    }

    /// Median-time-past of the tip.
    pub fn median_time_past(&self) -> u32 {
        let st = self.lock();
        st.chain.mtp(st.chain.height())
    }

    /// Node time (mock time when set).
    pub fn now(&self) -> u64 {
        self.lock().now()
    }

    /// Sets (or with 0 clears) mock time, like `setmocktime`.
    ///
    /// # Errors
    /// [`NodeError::Io`] when the state cannot be saved.
    pub fn set_mock_time(&self, t: u64) -> Result<(), NodeError> {
        let mut st = self.lock();
        st.mock_time = (t > 0).then_some(t);
        st.save_state()
    }

    /// Serve confirmed transactions by txid alone over RPC (`getrawtransaction` without a block
    /// hash), as Core does with `-txindex`; off, such a call fails with -5 as on a stock node.
    pub fn set_txindex(&self, on: bool) {
        self.lock().txindex = on;
    }

    /// Whether the RPC serves confirmed transactions by txid alone (Core's `-txindex`).
    pub fn txindex(&self) -> bool {
        self.lock().txindex
    }

    /// Sets the largest block weight the miner assembles (Core's `-blockmaxweight`), at most the
    /// consensus limit.
    pub fn set_block_max_weight(&self, weight: u64) {
        self.lock().block_max_weight = weight.min(params::MAX_BLOCK_WEIGHT);
    }

    /// A digest of the UTXO set: (number of outputs, total value, SHA-256 over the sorted
    /// outpoints and outputs). Equal digests mean equal UTXO sets.
    pub fn utxo_set_digest(&self) -> (usize, Amount, [u8; 32]) {
        use paychan_core::bitcoin::consensus::encode::serialize;
        use paychan_core::bitcoin::hashes::{sha256, Hash, HashEngine};
        let st = self.lock();
        let mut items: Vec<(&OutPoint, &Coin)> = st.chain.utxos.iter().collect();
        items.sort_by_key(|(o, _)| **o);
        let mut engine = sha256::Hash::engine();
        let mut total = Amount::ZERO;
        for (o, c) in &items {
            engine.input(&serialize(*o));
            engine.input(&serialize(&c.txout));
            engine.input(&c.height.to_le_bytes());
            engine.input(&[u8::from(c.coinbase)]);
            total += c.txout.value;
        }
        (items.len(), total, sha256::Hash::from_engine(engine).to_byte_array())
    }

    /// Seconds since the node started.
    pub fn uptime(&self) -> u64 {
        self.lock().started.elapsed().as_secs()
    }

    /// Mempool acceptance (`sendrawtransaction`), refusing fee rates above `max_fee_rate`.
    ///
    /// # Errors
    /// The reject reason, in Bitcoin Core's words.
    pub fn submit(
        &self,
        tx: Transaction,
        max_fee_rate: Option<FeeRate>,
    ) -> Result<Txid, NodeError> {
        let mut st = self.lock();
        let txid = tx.compute_txid();
        match st.accept_with(tx, false, max_fee_rate) {
            Ok(a) => Ok(a.txid),
            // Re-sending a transaction the mempool has is not an error (bitcoind returns its txid).
            Err(NodeError::Rejected(r)) if r == "txn-already-in-mempool" => Ok(txid),
            Err(e) => Err(e),
        }
    }

    /// Package acceptance (`submitpackage`): a child with its unconfirmed parents, parents
    /// first; see [`PackageOutcome`] for what each transaction became.
    ///
    /// # Errors
    /// [`NodeError::InvalidParameter`] (no transaction, or more than 25) or
    /// [`NodeError::InvalidPackage`] (not a child with its parents). A refused package is an
    /// `Ok` outcome that says why.
    pub fn submit_package(
        &self,
        txs: Vec<Transaction>,
        max_fee_rate: Option<FeeRate>,
    ) -> Result<PackageOutcome, NodeError> {
        self.lock().accept_package(txs, false, max_fee_rate)
    }

    /// `testmempoolaccept` of several transactions (parents first): each judged with the
    /// earlier ones visible, by its own fee rate, as Core does; nothing is added.
    ///
    /// # Errors
    /// [`NodeError::InvalidParameter`] for no transaction or more than 25.
    pub fn test_package(&self, txs: Vec<Transaction>) -> Result<PackageOutcome, NodeError> {
        self.lock().accept_package(txs, true, None)
    }

    /// Mempool acceptance without adding (`testmempoolaccept`).
    ///
    /// # Errors
    /// The reject reason.
    pub fn test_accept(&self, tx: Transaction) -> Result<Accepted, NodeError> {
        self.lock().accept(tx, true)
    }

    /// Mines `n` blocks paying `script_pubkey`; returns their hashes.
    ///
    /// # Errors
    /// [`NodeError::Io`] when a block cannot be stored.
    pub fn mine(&self, n: u32, script_pubkey: &ScriptBuf) -> Result<Vec<BlockHash>, NodeError> {
        let mut st = self.lock();
        let mut hashes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            hashes.push(st.mine_one(script_pubkey.clone(), None)?);
        }
        st.persist_mempool();
        Ok(hashes)
    }

    /// Mines one block with exactly `txs` (`generateblock`): they need not be in the mempool but
    /// must be valid under consensus rules.
    ///
    /// # Errors
    /// [`NodeError::InvalidBlock`] with the consensus reason.
    pub fn generate_block(
        &self,
        script_pubkey: &ScriptBuf,
        txs: Vec<Transaction>,
    ) -> Result<BlockHash, NodeError> {
        let mut st = self.lock();
        let h = st.mine_one(script_pubkey.clone(), Some(txs))?;
        st.persist_mempool();
        Ok(h)
    }

    /// Adds a block mined elsewhere (`submitblock`).
    ///
    /// # Errors
    /// [`NodeError::InvalidBlock`].
    pub fn submit_block(&self, block: Block) -> Result<(), NodeError> {
        let mut st = self.lock();
        st.submit_block(block)?;
        st.persist_mempool();
        Ok(())
    }

    /// `invalidateblock`.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] for an unknown block.
    pub fn invalidate_block(&self, hash: BlockHash) -> Result<(), NodeError> {
        self.lock().invalidate(hash)
    }

    /// `reconsiderblock`.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] for an unknown block.
    pub fn reconsider_block(&self, hash: BlockHash) -> Result<(), NodeError> {
        self.lock().reconsider(hash)
    }

    /// An unspent output: from the UTXO set, and (with `include_mempool`) from mempool
    /// transactions, minus what the mempool spends. Returns the output, its confirmations
    /// (0 in the mempool) and whether a coinbase created it.
    pub fn utxo(&self, outpoint: &OutPoint, include_mempool: bool) -> Option<(TxOut, u32, bool)> {
        utxo_in(&self.lock(), outpoint, include_mempool)
    }

    /// [`Node::utxo`] with the mempool, and the tip its depth was counted from (one lock, as
    /// Core's `gettxout` reports `bestblock`).
    pub fn utxo_at_tip(&self, outpoint: &OutPoint) -> Option<(TxOut, u32, BlockHash)> {
        let st = self.lock();
        let (out, depth, _) = utxo_in(&st, outpoint, true)?;
        Some((out, depth, st.chain.tip()))
    }

    /// A transaction in the active chain or the mempool, and where it is confirmed.
    pub fn transaction(&self, txid: &Txid) -> Option<(Transaction, Option<TxLocation>)> {
        let st = self.lock();
        if let Some(e) = st.mempool.entries.get(txid) {
            return Some(((*e.tx).clone(), None));
        }
        let loc = *st.chain.tx_index.get(txid)?;
        let b = st.chain.block_at(loc.height)?;
        Some((b.txdata.get(loc.index)?.clone(), Some(loc)))
    }

    /// The mempool's txids.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        let st = self.lock();
        st.mempool.in_arrival_order().iter().map(|e| e.txid).collect()
    }

    /// A mempool entry, with its in-mempool parents and children.
    pub fn mempool_entry(&self, txid: &Txid) -> Option<(MempoolEntry, Vec<Txid>, Vec<Txid>)> {
        let st = self.lock();
        let e = st.mempool.entries.get(txid)?.clone();
        let parents = st.mempool.parents_of(&e.tx).into_iter().collect();
        let children = st.mempool.with_descendants(*txid).into_iter().skip(1).collect();
        Some((e, parents, children))
    }

    /// The mempool's total fees and count.
    pub fn mempool_size(&self) -> (usize, Amount) {
        let st = self.lock();
        (st.mempool.entries.len(), st.mempool.entries.values().map(|e| e.fee).sum())
    }

    /// A fee-rate estimate for confirmation within `blocks` (the relay minimum when the node
    /// has seen no transaction to estimate from).
    pub fn estimate_fee(&self, blocks: u32) -> FeeRate {
        self.estimate_smart_fee(blocks).unwrap_or(policy::MIN_RELAY_FEE)
    }

    /// A fee-rate estimate for confirmation within `blocks`: the median rate paid in the last
    /// `3 × blocks` blocks, else in the mempool; `None` without any (a fresh chain), where
    /// Core's `estimatesmartfee` answers "Insufficient data or no feerate found".
    pub fn estimate_smart_fee(&self, blocks: u32) -> Option<FeeRate> {
        self.lock().estimate_fee(blocks)
    }

    /// Bytes the node keeps on disk.
    pub fn size_on_disk(&self) -> u64 {
        let Some(dir) = self.datadir() else { return 0 };
        ["blocks.dat", "mempool.dat", "state.json"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// [`Node::utxo`] under a lock already held.
fn utxo_in(st: &State, outpoint: &OutPoint, include_mempool: bool) -> Option<(TxOut, u32, bool)> {
    if include_mempool && st.mempool.spends.contains_key(outpoint) {
        return None;
    }
    if let Some(c) = st.chain.utxos.get(outpoint) {
        return Some((c.txout.clone(), st.chain.height() - c.height + 1, c.coinbase));
    }
    if include_mempool {
        let e = st.mempool.entries.get(&outpoint.txid)?;
        return e.tx.output.get(outpoint.vout as usize).map(|o| (o.clone(), 0, false));
    }
    None
}
