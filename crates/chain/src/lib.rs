//! # paychan-chain
//!
//! How paychan sees the chain (DESIGN §4, §5):
//!
//! * [`ChainSource`] — a small, synchronous trait: tip, blocks, broadcast, transaction status,
//!   unspent outputs, fee estimates, median-time-past, who spent an outpoint.
//! * [`BitcoindRpc`] — the trait over bitcoind's JSON-RPC; it talks to `paychan node` and to a
//!   real `bitcoind` alike.
//! * [`EmbeddedChain`] (feature `embedded`) — the trait over the in-process embedded node, for
//!   tests and the demo.
//! * [`ChainWatcher`] — turns new blocks into events (confirmed at depth N, outpoint spent,
//!   block disconnected) and follows reorgs.

#![deny(missing_docs)]

mod rpc;
mod watcher;

#[cfg(feature = "embedded")]
mod embedded;

use paychan_core::bitcoin::{Block, BlockHash, FeeRate, OutPoint, Transaction, TxOut, Txid};

#[cfg(feature = "embedded")]
pub use embedded::{node_clock, EmbeddedChain};
pub use rpc::{BitcoindRpc, RpcAuth};
pub use watcher::{ChainEvent, ChainWatcher, Cursor};

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

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Neither in the mempool nor (as far as the source can tell) in the chain.
    Unknown,
    /// In the mempool.
    InMempool,
    /// In the active chain.
    Confirmed {
        /// The block.
        block: BlockRef,
        /// Confirmations (1 = in the tip).
        confirmations: u32,
    },
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
    /// As [`ChainSource::tip`]; [`ChainError::Node`] for an unknown block.
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

    /// Where a transaction stands.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn tx_status(&self, txid: &Txid) -> Result<TxStatus, ChainError>;

    /// A transaction from the mempool or the chain, if the node can find it.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError>;

    /// The mempool's txids.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn mempool(&self) -> Result<Vec<Txid>, ChainError>;

    /// An output unspent in the chain and not spent in the mempool.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, ChainError>;

    /// A fee rate expected to confirm within `target_blocks`.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError>;

    /// Who spent `outpoint`: a mempool transaction (height `None`), or a transaction in a block
    /// from `from_height` on. bitcoind has no index for this, so the default scans.
    ///
    /// # Errors
    /// As [`ChainSource::tip`].
    fn spent_by(
        &self,
        outpoint: &OutPoint,
        from_height: u32,
    ) -> Result<Option<(Txid, Option<u32>)>, ChainError> {
        for txid in self.mempool()? {
            if let Some(tx) = self.transaction(&txid)? {
                if tx.input.iter().any(|i| i.previous_output == *outpoint) {
                    return Ok(Some((txid, None)));
                }
            }
        }
        let tip = self.tip()?;
        for h in from_height..=tip.height {
            let Some(hash) = self.block_hash(h)? else { break };
            let block = self.block(&hash)?;
            for tx in &block.txdata {
                if tx.input.iter().any(|i| i.previous_output == *outpoint) {
                    return Ok(Some((tx.compute_txid(), Some(h))));
                }
            }
        }
        Ok(None)
    }
}
