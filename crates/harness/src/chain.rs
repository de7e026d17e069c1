//! [`Instrumented`]: a chain source that counts what it is asked and fails on demand, over
//! any other — for the tests that check how often paychan reads the chain, and how it
//! behaves when the node is down or refuses transactions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use paychan_chain::{BlockRef, ChainError, ChainSource, Utxo};
use paychan_core::bitcoin::{Block, BlockHash, FeeRate, OutPoint, Transaction, Txid};

/// A [`ChainSource`] over `C` that counts every call by method (one call is one RPC against
/// `bitcoind`), records the blocks fetched, and fails on demand.
#[derive(Debug)]
pub struct Instrumented<C> {
    inner: C,
    /// Every call fails as if the node were unreachable.
    pub down: AtomicBool,
    /// Every broadcast is refused (a full mempool, say).
    pub refuse_broadcast: AtomicBool,
    /// The fee estimate, instead of the node's.
    pub fee: Mutex<Option<FeeRate>>,
    /// How many more blocks may be fetched before `block` fails as if the node went away
    /// (`None`: no limit).
    pub block_budget: Mutex<Option<u64>>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    fetched: Mutex<Vec<BlockHash>>,
}

impl<C> Instrumented<C> {
    /// Wraps `inner`.
    pub fn new(inner: C) -> Self {
        Instrumented {
            inner,
            down: AtomicBool::new(false),
            refuse_broadcast: AtomicBool::new(false),
            fee: Mutex::new(None),
            block_budget: Mutex::new(None),
            calls: Mutex::new(BTreeMap::new()),
            fetched: Mutex::new(Vec::new()),
        }
    }

    /// Calls of `method` (the trait method's name) so far.
    pub fn calls(&self, method: &str) -> u64 {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).get(method).copied().unwrap_or(0)
    }

    /// Every call so far, by method.
    pub fn all_calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The blocks fetched so far, in order.
    pub fn fetched(&self) -> Vec<BlockHash> {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the counts and the blocks fetched.
    pub fn reset(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn call(&self, method: &'static str) -> Result<(), ChainError> {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()).entry(method).or_default() += 1;
        if self.down.load(Ordering::SeqCst) {
            Err(ChainError::Transport("connection refused (test)".into()))
        } else {
            Ok(())
        }
    }
}

impl<C: ChainSource> ChainSource for Instrumented<C> {
    fn tip(&self) -> Result<BlockRef, ChainError> {
        self.call("tip")?;
        self.inner.tip()
    }
    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        self.call("block_hash")?;
        self.inner.block_hash(height)
    }
    fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        self.call("block")?;
        if let Some(left) = self.block_budget.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            if *left == 0 {
                return Err(ChainError::Transport("connection lost (test)".into()));
            }
            *left -= 1;
        }
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).push(*hash);
        self.inner.block(hash)
    }
    fn median_time_past(&self) -> Result<u32, ChainError> {
        self.call("median_time_past")?;
        self.inner.median_time_past()
    }
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        self.call("broadcast")?;
        if self.refuse_broadcast.load(Ordering::SeqCst) {
            return Err(ChainError::Transport("mempool full (test)".into()));
        }
        self.inner.broadcast(tx)
    }
    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        self.call("broadcast_package")?;
        if self.refuse_broadcast.load(Ordering::SeqCst) {
            return Err(ChainError::Transport("mempool full (test)".into()));
        }
        self.inner.broadcast_package(txs)
    }
    fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError> {
        self.call("mempool_transaction")?;
        self.inner.mempool_transaction(txid)
    }
    fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        self.call("in_mempool")?;
        self.inner.in_mempool(txid)
    }
    fn mempool(&self) -> Result<Vec<Txid>, ChainError> {
        self.call("mempool")?;
        self.inner.mempool()
    }
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        self.call("utxo")?;
        self.inner.utxo(outpoint)
    }
    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError> {
        self.call("estimate_fee")?;
        match *self.fee.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => Ok(f),
            None => self.inner.estimate_fee(target_blocks),
        }
    }
}
