//! [`ChainSource`] over the in-process embedded node.

use paychan_core::bitcoin::{Block, BlockHash, FeeRate, OutPoint, Transaction, Txid};
use paychan_node::{Node, NodeError, TxOutcome};

use crate::{BlockRef, ChainError, ChainSource, Utxo};

/// The embedded node as a chain source, without RPC.
#[derive(Debug, Clone)]
pub struct EmbeddedChain {
    node: Node,
}

impl EmbeddedChain {
    /// Wraps `node`.
    pub fn new(node: Node) -> Self {
        EmbeddedChain { node }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

fn map(e: NodeError) -> ChainError {
    match e {
        NodeError::Rejected(_)
        | NodeError::MissingInputs
        | NodeError::MaxFeeExceeded
        | NodeError::AlreadyInChain
        | NodeError::InvalidPackage(_) => {
            ChainError::Rejected { code: e.rpc_code(), reason: e.to_string() }
        }
        other => ChainError::Node { code: other.rpc_code(), message: other.to_string() },
    }
}

impl ChainSource for EmbeddedChain {
    fn tip(&self) -> Result<BlockRef, ChainError> {
        let (height, hash) = self.node.tip();
        Ok(BlockRef { height, hash })
    }

    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        Ok(self.node.block_hash(height))
    }

    fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        self.node
            .block(hash)
            .map(|(b, _)| (*b).clone())
            .ok_or(ChainError::Node { code: -5, message: "Block not found".into() })
    }

    fn median_time_past(&self) -> Result<u32, ChainError> {
        Ok(self.node.median_time_past())
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        let txid = tx.compute_txid();
        match self.node.submit(tx.clone(), None) {
            Ok(t) => Ok(t),
            Err(NodeError::AlreadyInChain) => Ok(txid),
            Err(e) => Err(map(e)),
        }
    }

    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        let outcome = self.node.submit_package(txs.to_vec(), None).map_err(map)?;
        if outcome.success() {
            return Ok(txs.iter().map(Transaction::compute_txid).collect());
        }
        let refusals = outcome.results.iter().filter_map(|r| match r {
            TxOutcome::Rejected { txid, error, .. } => Some((*txid, error.to_string())),
            _ => None,
        });
        Err(crate::package_refused(&outcome.message, refusals))
    }

    fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError> {
        Ok(self.node.transaction(txid).and_then(|(t, at)| at.is_none().then_some(t)))
    }

    fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        Ok(self.node.mempool_entry(txid).is_some())
    }

    fn mempool(&self) -> Result<Vec<Txid>, ChainError> {
        Ok(self.node.mempool_txids())
    }

    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        // One lock for the output and the tip, so that the depth and the tip agree.
        Ok(self.node.utxo_at_tip(outpoint).map(|(output, confirmations, best_block)| Utxo {
            output,
            confirmations,
            best_block,
        }))
    }

    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError> {
        Ok(self.node.estimate_fee(target_blocks))
    }
}

/// A clock over the in-process node: its time (mock time on regtest), tip height and
/// median-time-past, read when called (the node is in memory: no round trip).
pub fn node_clock(node: &Node) -> std::sync::Arc<dyn Fn() -> paychan_core::Now + Send + Sync> {
    let node = node.clone();
    std::sync::Arc::new(move || paychan_core::Now {
        time: node.now(),
        height: node.tip().0,
        median_time_past: node.median_time_past(),
    })
}
