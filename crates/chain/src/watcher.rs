//! [`ChainWatcher`]: follows the active chain block by block and reports what happened to the
//! transactions and outpoints it watches, reorgs included.

use std::collections::HashMap;

use paychan_core::bitcoin::{Block, BlockHash, OutPoint, Transaction, Txid};
use tracing::debug;

use crate::{BlockRef, ChainError, ChainSource};

/// What the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEvent {
    /// A block was connected to the active chain.
    BlockConnected(BlockRef),
    /// A block left the active chain (reorg).
    BlockDisconnected(BlockRef),
    /// A watched transaction has `confirmations` confirmations (reported as the depth grows, up
    /// to the watcher's maximum depth).
    Confirmed {
        /// The transaction.
        txid: Txid,
        /// Its block.
        block: BlockRef,
        /// Its depth (1 = in the tip).
        confirmations: u32,
    },
    /// A watched transaction's block was disconnected.
    Unconfirmed {
        /// The transaction.
        txid: Txid,
    },
    /// A watched outpoint was spent in a block.
    Spent {
        /// The outpoint.
        outpoint: OutPoint,
        /// The spending transaction's id.
        by: Txid,
        /// The spending transaction, from the block (no transaction index needed).
        tx: Box<Transaction>,
        /// The block.
        block: BlockRef,
    },
    /// The block that spent a watched outpoint was disconnected.
    Unspent {
        /// The outpoint.
        outpoint: OutPoint,
    },
}

/// Where a watcher is: the last blocks it processed, newest last (enough to notice a reorg of
/// up to [`Cursor::KEEP`] blocks when it resumes). Save it after each poll
/// ([`Cursor::save`]); after a restart, [`ChainWatcher::resume`] from it reads only the blocks
/// that came since, and walks back first if the chain reorganised across it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The blocks, oldest first.
    pub blocks: Vec<BlockRef>,
}

impl Cursor {
    /// Blocks a cursor keeps: a day of blocks, deeper than any reorg seen on mainnet.
    pub const KEEP: usize = 144;

    /// The cursor as text: one `height hash` line per block.
    pub fn encode(&self) -> String {
        self.blocks.iter().map(|b| format!("{} {}\n", b.height, b.hash)).collect()
    }

    /// Reads [`Cursor::encode`]'s text.
    ///
    /// # Errors
    /// [`ChainError::Cursor`] naming the line that does not parse, or heights that do not
    /// follow one another.
    pub fn decode(text: &str) -> Result<Self, ChainError> {
        let mut blocks: Vec<BlockRef> = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = || ChainError::Cursor(format!("line {}: {line:?}", n + 1));
            let (h, hash) = line.trim().split_once(' ').ok_or_else(bad)?;
            let b = BlockRef {
                height: h.parse().map_err(|_| bad())?,
                hash: hash.parse().map_err(|_| bad())?,
            };
            if blocks.last().is_some_and(|p| p.height + 1 != b.height) {
                return Err(bad());
            }
            blocks.push(b);
        }
        Ok(Cursor { blocks })
    }

    /// Writes the cursor to `path` atomically (temporary file, fsync, rename).
    ///
    /// # Errors
    /// [`ChainError::Cursor`] when the file cannot be written.
    pub fn save(&self, path: &std::path::Path) -> Result<(), ChainError> {
        let io = |e: std::io::Error| ChainError::Cursor(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(self.encode().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The cursor saved at `path`; `None` when there is none yet.
    ///
    /// # Errors
    /// [`ChainError::Cursor`] when it cannot be read or parsed.
    pub fn load(path: &std::path::Path) -> Result<Option<Self>, ChainError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Self::decode(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ChainError::Cursor(format!("{}: {e}", path.display()))),
        }
    }
}

/// Follows a [`ChainSource`]; call [`ChainWatcher::poll`] when a new block may have arrived.
#[derive(Debug)]
pub struct ChainWatcher<C> {
    source: C,
    /// The active chain as the watcher last saw it, from its start height on.
    seen: Vec<BlockRef>,
    start: u32,
    reads_from: u32,
    txs: HashMap<Txid, Option<(BlockRef, u32)>>,
    outpoints: HashMap<OutPoint, Option<(Txid, BlockRef)>>,
    max_depth: u32,
}

impl<C: ChainSource> ChainWatcher<C> {
    /// A watcher that scans blocks from `start_height` on and reports depths up to `max_depth`.
    pub fn new(source: C, start_height: u32, max_depth: u32) -> Self {
        ChainWatcher {
            source,
            seen: Vec::new(),
            start: start_height,
            reads_from: start_height,
            txs: HashMap::new(),
            outpoints: HashMap::new(),
            max_depth: max_depth.max(1),
        }
    }

    /// A watcher that resumes from `cursor` (saved by an earlier one): its next poll reads
    /// only the blocks after the cursor, after walking back over any of the cursor's blocks
    /// the chain no longer has. Watches are not part of the cursor: register them again.
    pub fn resume(source: C, cursor: Cursor, max_depth: u32) -> Self {
        let start = cursor.blocks.first().map_or(0, |b| b.height);
        let mut w = Self::new(source, start, max_depth);
        w.reads_from = cursor.blocks.last().map_or(start, |b| b.height + 1);
        w.seen = cursor.blocks;
        w
    }

    /// Where the watcher is, to save for a restart.
    pub fn cursor(&self) -> Cursor {
        let from = self.seen.len().saturating_sub(Cursor::KEEP);
        Cursor { blocks: self.seen[from..].to_vec() }
    }

    /// The source.
    pub fn source(&self) -> &C {
        &self.source
    }

    /// Watches a transaction. Blocks already scanned are not searched again: watch before the
    /// transaction can confirm (or start the watcher low enough).
    pub fn watch_tx(&mut self, txid: Txid) {
        self.txs.entry(txid).or_insert(None);
    }

    /// Watches an outpoint for its spend.
    pub fn watch_outpoint(&mut self, outpoint: OutPoint) {
        self.outpoints.entry(outpoint).or_insert(None);
    }

    /// Stops watching a transaction.
    pub fn unwatch_tx(&mut self, txid: &Txid) {
        self.txs.remove(txid);
    }

    /// Stops watching an outpoint.
    pub fn unwatch_outpoint(&mut self, outpoint: &OutPoint) {
        self.outpoints.remove(outpoint);
    }

    /// The first height this watcher reads itself: the blocks below it were read by an
    /// earlier watcher (the cursor's), if at all.
    pub fn reads_from(&self) -> u32 {
        self.reads_from
    }

    /// The last block the watcher processed.
    pub fn tip(&self) -> Option<BlockRef> {
        self.seen.last().copied()
    }

    /// Brings the watcher to the source's tip and returns what happened, in order.
    ///
    /// Each new block is read once (`getblock`, plus `getblockhash` for all but the tip), and
    /// a poll with nothing new costs one call (the tip). A reorg is noticed when a new block
    /// does not build on the last one seen (or the tip is no higher and differs); the watcher
    /// then walks back by block hashes alone, without reading the stale blocks.
    ///
    /// # Errors
    /// Any error of the source ([`ChainError::Pruned`] with the height when the node no longer
    /// has a block the watcher needs); the watcher stays consistent and the next poll resumes.
    pub fn poll(&mut self) -> Result<Vec<ChainEvent>, ChainError> {
        let mut events = Vec::new();
        match self.poll_into(&mut events) {
            Ok(()) => Ok(events),
            // Blocks were connected or disconnected before the error: report them (the
            // watcher has moved past them and will not report them again); the next poll
            // resumes from there and meets the error again if it lasts.
            Err(e) if !events.is_empty() => {
                debug!(error = %e, "poll stopped part way; reporting what it saw");
                Ok(events)
            }
            Err(e) => Err(e),
        }
    }

    fn poll_into(&mut self, events: &mut Vec<ChainEvent>) -> Result<(), ChainError> {
        let tip = self.source.tip()?;
        // A block read while finding a fork, kept to connect without reading it again.
        let mut held: Option<(BlockHash, Block)> = None;
        loop {
            let last = self.seen.last().copied();
            if last.is_some_and(|l| l.hash == tip.hash) {
                break;
            }
            let height = last.map_or(self.start, |l| l.height + 1);
            if height > tip.height {
                match last {
                    // The node's chain is no longer than ours and ends elsewhere.
                    Some(l) if self.source.block_hash(l.height)? != Some(l.hash) => {
                        self.disconnect_last(events);
                        continue;
                    }
                    // Every block seen was disconnected and the chain is now shorter than
                    // where the watcher started: follow it from its tip.
                    None if self.start > tip.height => {
                        self.start = tip.height;
                        self.reads_from = self.reads_from.min(tip.height);
                        continue;
                    }
                    _ => break,
                }
            }
            let hash = if height == tip.height {
                tip.hash
            } else {
                match self.source.block_hash(height)? {
                    Some(h) => h,
                    None => break,
                }
            };
            let reuse = held.as_ref().is_some_and(|(h, _)| *h == hash);
            let block = match if reuse { held.take() } else { None } {
                Some((_, b)) => b,
                None => self.source.block(&hash).map_err(|e| match e {
                    ChainError::Pruned { hash, .. } => {
                        ChainError::Pruned { hash, height: Some(height) }
                    }
                    other => other,
                })?,
            };
            if let Some(l) = last {
                if block.header.prev_blockhash != l.hash {
                    // A fork: walk back by hashes until the node agrees, then read forward.
                    held = Some((hash, block));
                    self.disconnect_last(events);
                    while let Some(l) = self.seen.last().copied() {
                        if self.source.block_hash(l.height)? == Some(l.hash) {
                            break;
                        }
                        self.disconnect_last(events);
                    }
                    continue;
                }
            }
            self.connect(BlockRef { height, hash }, &block, events);
        }
        // Depths, as they grew.
        let top = self.seen.last().map_or(0, |b| b.height);
        let mut confirmed: Vec<(Txid, BlockRef, u32)> = Vec::new();
        for (txid, conf) in self.txs.iter_mut() {
            if let Some((block, reported)) = conf {
                let depth = (top - block.height + 1).min(self.max_depth);
                if depth > *reported {
                    *reported = depth;
                    confirmed.push((*txid, *block, depth));
                }
            }
        }
        confirmed.sort_by_key(|(t, b, _)| (b.height, *t));
        events.extend(confirmed.into_iter().map(|(txid, block, confirmations)| {
            ChainEvent::Confirmed { txid, block, confirmations }
        }));
        // Keep the view bounded: deep blocks no longer reorg in practice.
        const KEEP: usize = 2_016;
        if self.seen.len() > KEEP {
            let cut = self.seen.len() - KEEP;
            self.seen.drain(..cut);
        }
        Ok(())
    }

    fn disconnect_last(&mut self, events: &mut Vec<ChainEvent>) {
        let Some(last) = self.seen.pop() else { return };
        debug!(height = last.height, hash = %last.hash, "block disconnected");
        events.push(ChainEvent::BlockDisconnected(last));
        for (txid, conf) in self.txs.iter_mut() {
            if conf.is_some_and(|(b, _)| b == last) {
                *conf = None;
                events.push(ChainEvent::Unconfirmed { txid: *txid });
            }
        }
        for (op, spent) in self.outpoints.iter_mut() {
            if spent.is_some_and(|(_, b)| b == last) {
                *spent = None;
                events.push(ChainEvent::Unspent { outpoint: *op });
            }
        }
    }

    fn connect(&mut self, here: BlockRef, block: &Block, events: &mut Vec<ChainEvent>) {
        self.seen.push(here);
        events.push(ChainEvent::BlockConnected(here));
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            if let Some(conf) = self.txs.get_mut(&txid) {
                *conf = Some((here, 0));
            }
            for input in &tx.input {
                if let Some(spent) = self.outpoints.get_mut(&input.previous_output) {
                    *spent = Some((txid, here));
                    events.push(ChainEvent::Spent {
                        outpoint: input.previous_output,
                        by: txid,
                        tx: Box::new(tx.clone()),
                        block: here,
                    });
                }
            }
        }
    }

    /// The hash the watcher has for `height`, if it still holds it.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.seen.iter().find(|b| b.height == height).map(|b| b.hash)
    }
}
