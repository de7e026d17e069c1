//! # paychan-chain
//!
//! How paychan sees the chain (DESIGN §4, §5):
//!
//! * [`ChainSource`] — a small, synchronous trait: tip, blocks, broadcast, transaction status,
//!   unspent outputs, fee estimates, median-time-past. Nothing a stock `bitcoind` (no
//!   `-txindex`, no wallet, pruned) cannot answer: no confirmed transaction by txid.
//! * [`BitcoindRpc`] — the trait over bitcoind's JSON-RPC; it talks to `paychan node` and to a
//!   real `bitcoind` alike.
//! * [`EmbeddedChain`] (feature `embedded`) — the trait over the in-process embedded node, for
//!   tests and the demo.
//! * [`ChainWatcher`] — turns new blocks into events (confirmed at depth N, outpoint spent,
//!   block disconnected) and follows reorgs, from a durable [`Cursor`].
//! * [`ChainView`] — what the channel drivers ask: a funding's confirmations, who spent it,
//!   from the blocks the watcher read once each (DESIGN §3d).

#![deny(missing_docs)]

mod https;
mod rpc;
mod view;
mod watcher;

#[cfg(feature = "embedded")]
mod embedded;

use paychan_core::bitcoin::{Block, BlockHash, FeeRate, OutPoint, Transaction, TxOut, Txid};

#[cfg(feature = "embedded")]
pub use embedded::{node_clock, EmbeddedChain};
pub use rpc::{BitcoindRpc, RpcAuth};
pub use view::{ChainView, Lookback, Spend};
pub use watcher::{ChainEvent, ChainWatcher, Cursor};

/// A refused package as [`ChainError::Rejected`]: Core's package message, then each refused
/// transaction's reason (`txid: reason`).
pub(crate) fn package_refused(
    message: &str,
    refusals: impl IntoIterator<Item = (Txid, String)>,
) -> ChainError {
    let mut reason = message.to_string();
    for (txid, why) in refusals {
        reason.push_str(&format!("; {txid}: {why}"));
    }
    // bitcoind's RPC_VERIFY_REJECTED, as for a single refused transaction.
    ChainError::Rejected { code: -26, reason }
}

/// Errors of a chain source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The node refused a transaction; the reason is Bitcoin Core's.
    #[error("transaction rejected: {reason} (code {code})")]
    Rejected {
        /// bitcoind's RPC code.
        code: i32,
        /// The reject reason.
        reason: String,
    },
    /// The node answered with another error.
    #[error("node error {code}: {message}")]
    Node {
        /// bitcoind's RPC code.
        code: i32,
        /// Its message.
        message: String,
    },
    /// The node could not be reached or answered garbage.
    #[error("cannot reach the node: {0}")]
    Transport(String),
    /// The node pruned a block paychan needs (a pruned node keeps only recent blocks).
    #[error("the node has pruned block {hash}{}, which paychan needs to follow its channels: give the node a larger -prune, or resync it without pruning", height.map(|h| format!(" (height {h})")).unwrap_or_default())]
    Pruned {
        /// The block.
        hash: BlockHash,
        /// Its height, when known.
        height: Option<u32>,
    },
    /// The node does not accept packages (`submitpackage` needs Bitcoin Core 28 or later).
    #[error("the node does not accept transaction packages (submitpackage): {0}; paychan needs Bitcoin Core 28 or later for this")]
    PackagesUnsupported(String),
    /// A watcher's stored cursor could not be read or written.
    #[error("watcher cursor: {0}")]
    Cursor(String),
}

/// The tip of the chain, or any block's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Height.
    pub height: u32,
    /// Hash.
    pub hash: BlockHash,
}

/// An unspent output as `gettxout` reports it: the output, its depth, and the tip the depth
/// was counted from (so that the caller can tell which block confirmed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    /// The output.
    pub output: TxOut,
    /// Confirmations: 0 for an output of a mempool transaction, 1 in the tip.
    pub confirmations: u32,
    /// The tip the confirmations were counted from.
    pub best_block: BlockHash,
}

/// A source of chain data. Implementations are synchronous and may block on I/O: call them from
/// a blocking context (`tokio::task::spawn_blocking`) in async code.
///
/// Contract: every method reflects one consistent view of the node at the time of the call;
/// [`ChainSource::broadcast`] of a transaction the node already has (mempool or chain) succeeds
/// with its txid.
pub trait ChainSource: Send + Sync {
    /// The active tip.
    ///
    /// # Errors
    /// [`ChainError::Transport`] or [`ChainError::Node`].
    fn tip(&self) -> Result<BlockRef, ChainError>;

    /// The active block at `height`, if the chain is that tall.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError>;

    /// A block by hash.
    ///
    /// # Errors
    /// As [`ChainSource::tip`]; [`ChainError::Node`] for an unknown block;
    /// [`ChainError::Pruned`] for a block a pruned node no longer has.
    fn block(&self, hash: &BlockHash) -> Result<Block, ChainError>;

    /// Median-time-past of the tip (BIP 113): the clock locktimes are checked against.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn median_time_past(&self) -> Result<u32, ChainError>;

    /// Sends a transaction to the node's mempool.
    ///
    /// # Errors
    /// [`ChainError::Rejected`] with Core's reason.
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError>;

    /// Sends a child with its unconfirmed parents (parents first) to the node's mempool as one
    /// package (`submitpackage`): a zero-fee TRUC parent enters with the child that pays for
    /// it. Transactions the mempool has already are fine. Returns the txids, in order, once
    /// every one is in the mempool.
    ///
    /// # Errors
    /// [`ChainError::Rejected`] with Core's package message and each refused transaction's
    /// reason; [`ChainError::PackagesUnsupported`] from a node older than Core 28.
    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError>;

    /// Sends `child` with its zero-fee `parent` (a dispute channel's trigger): as one package,
    /// or the child alone when the node refuses the package because the parent is confirmed
    /// already (then only the child is new). Returns the child's txid.
    ///
    /// # Errors
    /// The package's refusal when the child alone is refused too.
    fn broadcast_with_parent(
        &self,
        parent: &Transaction,
        child: &Transaction,
    ) -> Result<Txid, ChainError> {
        match self.broadcast_package(&[parent.clone(), child.clone()]) {
            Ok(_) => Ok(child.compute_txid()),
            Err(package @ ChainError::Rejected { .. }) => match self.broadcast(child) {
                Ok(txid) => Ok(txid),
                Err(_) => Err(package),
            },
            Err(other) => Err(other),
        }
    }

    /// A transaction in the mempool (never a confirmed one: a node without `-txindex` cannot
    /// find those, so paychan never asks; confirmations and spends come from blocks, through
    /// [`ChainView`]).
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError>;

    /// Whether the mempool holds `txid` (`getmempoolentry`).
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError>;

    /// The mempool's txids.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn mempool(&self) -> Result<Vec<Txid>, ChainError>;

    /// An output unspent in the chain (or created by a mempool transaction) and not spent in
    /// the mempool, with its depth: `gettxout` with `include_mempool`.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError>;

    /// A fee rate expected to confirm within `target_blocks`.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError>;
}

impl<T: ChainSource + ?Sized> ChainSource for std::sync::Arc<T> {
    fn tip(&self) -> Result<BlockRef, ChainError> {
        (**self).tip()
    }
    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        (**self).block_hash(height)
    }
    fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        (**self).block(hash)
    }
    fn median_time_past(&self) -> Result<u32, ChainError> {
        (**self).median_time_past()
    }
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        (**self).broadcast(tx)
    }
    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        (**self).broadcast_package(txs)
    }
    fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError> {
        (**self).mempool_transaction(txid)
    }
    fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        (**self).in_mempool(txid)
    }
    fn mempool(&self) -> Result<Vec<Txid>, ChainError> {
        (**self).mempool()
    }
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        (**self).utxo(outpoint)
    }
    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError> {
        (**self).estimate_fee(target_blocks)
    }
}
