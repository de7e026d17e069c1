//! The mempool's entries and their relations (parents, ancestors, descendants).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid, Wtxid};

/// One transaction in the mempool.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The transaction.
    pub tx: Arc<Transaction>,
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Its fee.
    pub fee: Amount,
    /// Its virtual size.
    pub vsize: u64,
    /// When it entered (node time).
    pub time: u64,
    /// The chain height when it entered.
    pub height: u32,
    pub(crate) seq: u64,
}

impl Entry {
    /// Its fee rate.
    pub fn fee_rate(&self) -> FeeRate {
        FeeRate::from_sat_per_kwu(self.fee.to_sat() * 250 / self.vsize.max(1))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Mempool {
    pub entries: HashMap<Txid, Entry>,
    /// Which mempool transaction spends an outpoint.
    pub spends: HashMap<OutPoint, Txid>,
    next_seq: u64,
}

impl Mempool {
    pub fn insert(&mut self, mut e: Entry) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        for i in &e.tx.input {
            self.spends.insert(i.previous_output, e.txid);
        }
        self.entries.insert(e.txid, e);
    }

    pub fn remove(&mut self, txid: &Txid) -> Option<Entry> {
        let e = self.entries.remove(txid)?;
        for i in &e.tx.input {
            if self.spends.get(&i.previous_output) == Some(txid) {
                self.spends.remove(&i.previous_output);
            }
        }
        Some(e)
    }

    /// In-mempool parents of `tx`.
    pub fn parents_of(&self, tx: &Transaction) -> HashSet<Txid> {
        tx.input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect()
    }

    /// Every in-mempool ancestor of `tx` (not including itself).
    pub fn ancestors_of(&self, tx: &Transaction) -> HashSet<Txid> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Txid> = self.parents_of(tx).into_iter().collect();
        while let Some(t) = queue.pop_front() {
            if seen.insert(t) {
                if let Some(e) = self.entries.get(&t) {
                    queue.extend(self.parents_of(&e.tx));
                }
            }
        }
        seen
    }

    /// `txid` and every in-mempool descendant of it.
    pub fn with_descendants(&self, txid: Txid) -> Vec<Txid> {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut queue = VecDeque::from([txid]);
        while let Some(t) = queue.pop_front() {
            if !seen.insert(t) {
                continue;
            }
            order.push(t);
            if let Some(e) = self.entries.get(&t) {
                for vout in 0..e.tx.output.len() {
                    if let Some(child) = self.spends.get(&OutPoint { txid: t, vout: vout as u32 }) {
                        queue.push_back(*child);
                    }
                }
            }
        }
        order
    }

    /// Removes `txid` and its descendants; returns them.
    pub fn remove_with_descendants(&mut self, txid: Txid) -> Vec<Entry> {
        self.with_descendants(txid).iter().filter_map(|t| self.remove(t)).collect()
    }

    /// Transactions in an order where parents come before children (by arrival).
    pub fn in_arrival_order(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| e.seq);
        v
    }
}
