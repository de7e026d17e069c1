//! [`ChainView`]: what a channel driver knows about its fundings, learnt from blocks.
//!
//! A stock `bitcoind` (no `-txindex`) cannot say whether a confirmed transaction it does not
//! own is in the chain, nor who spent an output. So the drivers never ask it per channel: one
//! [`ChainWatcher`] reads each new block once (from a [`Cursor`] stored durably, so that a
//! restart reads only what came since), and the view keeps, for every funding outpoint it
//! watches, the height of the block that confirmed it and the transaction that spent it.
//!
//! A funding the view has not seen confirm (it confirmed before the cursor, or before the view
//! was told about it) is looked up once with `gettxout`, whose depth dates it. A funding that
//! a channel knows was confirmed, but that is neither unspent nor seen spent, was spent before
//! the cursor (a lost cursor, a store restored from a backup): the view reads blocks backwards
//! from the cursor, once, until it finds the spend or the funding's own block
//! ([`Lookback`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use paychan_core::bitcoin::{OutPoint, Transaction, Txid};
use tracing::{info, warn};

use crate::{BlockRef, ChainError, ChainEvent, ChainSource, ChainWatcher, Cursor};

/// How far back the view may read when a watched funding is neither unspent nor seen spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// Never: the funding is new (not yet confirmed when it was watched), so its spend can
    /// only come in a block the view reads anyway.
    Never,
    /// Down to the funding's own block, and never below what the channel's terms allow: the
    /// funding cannot be older than `height` (for example its anti-fee-sniping locktime) nor
    /// than `time` (for example the channel's expiry less its longest life).
    To {
        /// The lowest height to read.
        height: u32,
        /// A Unix time; blocks stamped more than [`Lookback::TIME_SLACK`] seconds before it
        /// are not read.
        time: u32,
    },
}

impl Lookback {
    /// How far a block's timestamp may lag the time it was mined: Bitcoin accepts a block
    /// whose time is only above the median of the 11 before it (about an hour behind), and
    /// two hours ahead; three hours covers both.
    pub const TIME_SLACK: u32 = 3 * 3600;
}

/// A watched funding's spend, from the block that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    /// The spending transaction.
    pub tx: Transaction,
    /// The height of its block.
    pub height: u32,
}

/// One driver's view of the chain. Cheap to share (`Arc`); every method takes `&self`.
pub struct ChainView {
    source: Arc<dyn ChainSource>,
    cursor_path: Option<PathBuf>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ChainView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainView").field("cursor", &self.cursor_path).finish_non_exhaustive()
    }
}

struct Inner {
    /// Created at the first sync when there was no cursor.
    watcher: Option<ChainWatcher<Arc<dyn ChainSource>>>,
    /// Watched fundings.
    watched: HashSet<OutPoint>,
    /// Fundings still to look up once (`gettxout`, maybe a look back).
    pending: HashMap<OutPoint, Lookback>,
    /// Height of the block that confirmed each watched funding transaction.
    confirmed: HashMap<Txid, u32>,
    /// The spend of each watched funding.
    spent: HashMap<OutPoint, Spend>,
    /// The cursor as last saved.
    saved: Option<Cursor>,
}

impl ChainView {
    /// A view over `source` that resumes from the cursor at `cursor_path` (if any is saved
    /// there) and saves it there on [`ChainView::commit`]. Without a saved cursor it starts at
    /// the node's tip at the first [`ChainView::sync`]: older fundings are looked up when
    /// watched. Reads no more than the cursor file.
    ///
    /// # Errors
    /// [`ChainError::Cursor`] for a damaged cursor file.
    pub fn open(
        source: Arc<dyn ChainSource>,
        cursor_path: Option<PathBuf>,
    ) -> Result<Self, ChainError> {
        let saved = match &cursor_path {
            Some(p) => Cursor::load(p)?,
            None => None,
        };
        let watcher = saved.clone().filter(|c| !c.blocks.is_empty()).map(|cursor| {
            let last = cursor.blocks.last().map(|b| b.height);
            info!(last_block = ?last, "following the chain from the stored cursor");
            ChainWatcher::resume(source.clone(), cursor, 1)
        });
        Ok(ChainView {
            source,
            cursor_path,
            inner: Mutex::new(Inner {
                watcher,
                watched: HashSet::new(),
                pending: HashMap::new(),
                confirmed: HashMap::new(),
                spent: HashMap::new(),
                saved,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn ChainSource> {
        &self.source
    }

    /// Watches a channel's funding output: its transaction's confirmation and the output's
    /// spend. Idempotent; the first call schedules a one-time lookup at the next
    /// [`ChainView::sync`] (see the module's documentation).
    pub fn watch(&self, funding: OutPoint, lookback: Lookback) {
        let mut i = self.lock();
        if i.watched.insert(funding) {
            if let Some(w) = &mut i.watcher {
                w.watch_tx(funding.txid);
                w.watch_outpoint(funding);
            }
            i.pending.insert(funding, lookback);
        }
    }

    /// Stops watching a funding (its channel is over).
    pub fn unwatch(&self, funding: &OutPoint) {
        let mut i = self.lock();
        if i.watched.remove(funding) {
            if let Some(w) = &mut i.watcher {
                w.unwatch_tx(&funding.txid);
                w.unwatch_outpoint(funding);
            }
            i.pending.remove(funding);
            i.confirmed.remove(&funding.txid);
            i.spent.remove(funding);
        }
    }

    /// Reads the blocks since the last sync (each once), then looks up the fundings watched
    /// since. Returns the tip the view is at.
    ///
    /// # Errors
    /// The source's errors ([`ChainError::Pruned`] when the node no longer has a block the
    /// view needs). What was read before the error is kept; the next sync resumes.
    pub fn sync(&self) -> Result<BlockRef, ChainError> {
        let mut guard = self.lock();
        let i = &mut *guard;
        // Without a cursor, start at the node's tip.
        let start = match i.watcher {
            Some(_) => 0,
            None => self.source.tip()?.height,
        };
        let watcher = i.watcher.get_or_insert_with(|| {
            let mut w = ChainWatcher::new(self.source.clone(), start, 1);
            for f in &i.watched {
                w.watch_tx(f.txid);
                w.watch_outpoint(*f);
            }
            w
        });
        let events = watcher.poll()?;
        let tip = watcher.tip();
        for e in events {
            match e {
                ChainEvent::BlockDisconnected(b) => {
                    i.confirmed.retain(|_, h| *h < b.height);
                    i.spent.retain(|_, s| s.height < b.height);
                }
                ChainEvent::Confirmed { txid, block, .. } => {
                    i.confirmed.insert(txid, block.height);
                }
                ChainEvent::Spent { outpoint, tx, block, .. } => {
                    i.spent.insert(outpoint, Spend { tx: *tx, height: block.height });
                }
                _ => {}
            }
        }
        let tip = tip.ok_or(ChainError::Node {
            code: -1,
            message: "the node has no blocks at the view's start height".into(),
        })?;
        let pending: Vec<_> = i.pending.iter().map(|(o, l)| (*o, *l)).collect();
        for (funding, lookback) in pending {
            if self.look_up(i, funding, lookback, tip)? {
                i.pending.remove(&funding);
            }
        }
        Ok(tip)
    }

    /// The one-time lookup of a newly watched funding; false when it must be tried again at
    /// the next sync (the node moved on between the two reads).
    fn look_up(
        &self,
        i: &mut Inner,
        funding: OutPoint,
        lookback: Lookback,
        tip: BlockRef,
    ) -> Result<bool, ChainError> {
        if i.spent.contains_key(&funding) {
            return Ok(true);
        }
        match self.source.utxo(&funding)? {
            Some(u) if u.confirmations == 0 => Ok(true),
            Some(u) if u.best_block == tip.hash => {
                let height = tip.height + 1 - u.confirmations.min(tip.height + 1);
                i.confirmed.entry(funding.txid).or_insert(height);
                Ok(true)
            }
            // Counted from another tip than ours: again after the next sync.
            Some(_) => Ok(false),
            None => {
                if let Lookback::To { height, time } = lookback {
                    self.look_back(i, funding, height, time)?;
                }
                Ok(true)
            }
        }
    }

    /// Reads blocks backwards from below the cursor to `floor`, until the funding's spend, the
    /// funding's own block, or a block older than `not_before` allows.
    fn look_back(
        &self,
        i: &mut Inner,
        funding: OutPoint,
        floor: u32,
        not_before: u32,
    ) -> Result<(), ChainError> {
        let Some(first) = i.watcher.as_ref().map(|w| w.reads_from()) else { return Ok(()) };
        if i.confirmed.contains_key(&funding.txid) {
            // Confirmed in a block the view read, so spent (if at all) in one it read too.
            return Ok(());
        }
        warn!(%funding, from = first, to = floor, "a channel's funding was spent before the stored cursor: reading blocks back to find the spend");
        let mut spend: Option<Spend> = None;
        for (n, height) in (floor..first).rev().enumerate() {
            if n > 0 && n % 1_000 == 0 {
                info!(%funding, height, read = n, "still reading blocks back");
            }
            let Some(hash) = self.source.block_hash(height)? else { continue };
            let block = self.source.block(&hash).map_err(|e| match e {
                ChainError::Pruned { hash, .. } => {
                    ChainError::Pruned { hash, height: Some(height) }
                }
                other => other,
            })?;
            let spender = block
                .txdata
                .iter()
                .find(|tx| tx.input.iter().any(|inp| inp.previous_output == funding));
            if let Some(tx) = spender {
                spend = Some(Spend { tx: tx.clone(), height });
                break;
            }
            if block.txdata.iter().any(|tx| tx.compute_txid() == funding.txid) {
                i.confirmed.insert(funding.txid, height);
                break;
            }
            if block.header.time.saturating_add(Lookback::TIME_SLACK) < not_before {
                break;
            }
        }
        if let Some(s) = spend {
            info!(%funding, height = s.height, spender = %s.tx.compute_txid(), "found the funding's spend");
            i.spent.insert(funding, s);
        }
        Ok(())
    }

    /// A watched funding transaction's confirmations (0 while unconfirmed or unknown). A
    /// funding whose output was spent in a block was confirmed at or below that block: when
    /// its own block is not known (it confirmed before the view began), the spend's depth is
    /// the answer, a lower bound.
    pub fn confirmations(&self, txid: &Txid) -> u32 {
        let i = self.lock();
        let tip = i.watcher.as_ref().and_then(|w| w.tip()).map_or(0, |b| b.height);
        let height = i.confirmed.get(txid).copied().or_else(|| {
            i.spent.iter().filter(|(o, _)| o.txid == *txid).map(|(_, s)| s.height).min()
        });
        height.map_or(0, |h| (tip + 1).saturating_sub(h))
    }

    /// The transaction that spent a watched funding, from its block.
    pub fn spend(&self, funding: &OutPoint) -> Option<Spend> {
        self.lock().spent.get(funding).cloned()
    }

    /// Every watched outpoint seen spent (a driver that keeps idle channels out of memory
    /// loads their channels to act on it).
    pub fn spent_outpoints(&self) -> Vec<OutPoint> {
        self.lock().spent.keys().copied().collect()
    }

    /// Whether `outpoint` is watched.
    pub fn is_watched(&self, outpoint: &OutPoint) -> bool {
        self.lock().watched.contains(outpoint)
    }

    /// Whether a watched funding still waits for its one-time lookup (until the next
    /// [`ChainView::sync`]): its confirmations and spend are not known yet.
    pub fn is_pending(&self, funding: &OutPoint) -> bool {
        self.lock().pending.contains_key(funding)
    }

    /// Stores the cursor (atomically) when it moved since the last save. Call it after the
    /// driver has acted on what [`ChainView::sync`] returned, so that a crash before re-reads
    /// those blocks.
    ///
    /// # Errors
    /// [`ChainError::Cursor`] when the file cannot be written.
    pub fn commit(&self) -> Result<(), ChainError> {
        let Some(path) = &self.cursor_path else { return Ok(()) };
        let mut i = self.lock();
        let Some(cursor) = i.watcher.as_ref().map(|w| w.cursor()) else { return Ok(()) };
        if i.saved.as_ref() != Some(&cursor) {
            cursor.save(path)?;
            i.saved = Some(cursor);
        }
        Ok(())
    }
}
