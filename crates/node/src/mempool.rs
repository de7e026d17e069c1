//! The mempool: acceptance (Bitcoin Core's `AcceptToMemoryPool` for the rules of
//! [`crate::policy`] and [`crate::chain`], with full-RBF replacement), its entries and their
//! relations (parents, ancestors, descendants).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use paychan_core::bitcoin::consensus::encode::serialize;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Transaction, TxOut, Txid, Wtxid};
use paychan_core::verify::verify_input_raw;
use tracing::debug;

use crate::chain::{Coin, Finality};
use crate::policy::{check_standard, ANCESTOR_LIMIT, MIN_RELAY_FEE};
use crate::state::State;
use crate::{params, NodeError};

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

/// What mempool acceptance reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The transaction's id.
    pub txid: Txid,
    /// Its witness id.
    pub wtxid: paychan_core::bitcoin::Wtxid,
    /// The fee it pays.
    pub fee: Amount,
    /// Its virtual size.
    pub vsize: u64,
}

impl State {
    /// Bitcoin Core's `AcceptToMemoryPool` for the rules listed in `policy` and `chain`.
    pub fn accept(&mut self, tx: Transaction, test_only: bool) -> Result<Accepted, NodeError> {
        self.accept_with(tx, test_only, None)
    }

    /// [`State::accept`], refusing a fee rate above `max_fee_rate` before any script is run
    /// (`sendrawtransaction`'s `maxfeerate`).
    pub fn accept_with(
        &mut self,
        tx: Transaction,
        test_only: bool,
        max_fee_rate: Option<FeeRate>,
    ) -> Result<Accepted, NodeError> {
        let txid = tx.compute_txid();
        if tx.input.is_empty() {
            return Err(NodeError::rejected("bad-txns-vin-empty"));
        }
        if tx.output.is_empty() {
            return Err(NodeError::rejected("bad-txns-vout-empty"));
        }
        if tx.is_coinbase() {
            return Err(NodeError::rejected("coinbase"));
        }
        let mut seen = HashSet::new();
        if !tx.input.iter().all(|i| seen.insert(i.previous_output)) {
            return Err(NodeError::rejected("bad-txns-inputs-duplicate"));
        }
        let value_out = tx
            .output
            .iter()
            .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value))
            .filter(|v| *v <= Amount::MAX_MONEY)
            .ok_or_else(|| NodeError::rejected("bad-txns-txouttotal-toolarge"))?;
        check_standard(&tx).map_err(NodeError::Rejected)?;
        if self.mempool.entries.contains_key(&txid) {
            return Err(NodeError::rejected("txn-already-in-mempool"));
        }
        let next_height = self.chain.height() + 1;
        let tip_mtp = self.chain.mtp(self.chain.height());

        // Conflicts: mempool transactions spending the same outputs.
        let conflicts: HashSet<Txid> = tx
            .input
            .iter()
            .filter_map(|i| self.mempool.spends.get(&i.previous_output).copied())
            .collect();

        // Inputs, from the UTXO set or the mempool.
        let mut coins = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let op = input.previous_output;
            let coin = if let Some(c) = self.chain.utxos.get(&op) {
                c.clone()
            } else if let Some(parent) = self.mempool.entries.get(&op.txid) {
                if conflicts.contains(&op.txid) {
                    return Err(NodeError::rejected("bad-txns-spends-conflicting-tx"));
                }
                match parent.tx.output.get(op.vout as usize) {
                    Some(out) => Coin { txout: out.clone(), height: next_height, coinbase: false },
                    None => return Err(NodeError::MissingInputs),
                }
            } else {
                let outputs_exist = (0..tx.output.len()).any(|v| {
                    self.chain
                        .utxos
                        .contains_key(&paychan_core::bitcoin::OutPoint { txid, vout: v as u32 })
                });
                if outputs_exist || self.chain.tx_index.contains_key(&txid) {
                    return Err(NodeError::AlreadyInChain);
                }
                return Err(NodeError::MissingInputs);
            };
            coins.push(coin);
        }
        for c in &coins {
            if c.coinbase && next_height - c.height < params::COINBASE_MATURITY {
                return Err(NodeError::rejected("bad-txns-premature-spend-of-coinbase"));
            }
        }
        match self.chain.finality(&tx, next_height, tip_mtp, &coins) {
            Finality::Final => {}
            Finality::NonFinal => return Err(NodeError::rejected("non-final")),
            Finality::NonBip68Final => return Err(NodeError::rejected("non-BIP68-final")),
        }
        let value_in: Amount = coins.iter().map(|c| c.txout.value).sum();
        let fee = value_in.checked_sub(value_out).ok_or_else(|| {
            NodeError::rejected(format!(
                "bad-txns-in-belowout, value in ({value_in}) < value out ({value_out})"
            ))
        })?;
        let vsize = tx.vsize() as u64;
        let min_fee = MIN_RELAY_FEE.fee_vb(vsize).unwrap_or(Amount::MAX_MONEY);
        if fee < min_fee {
            return Err(NodeError::rejected(format!(
                "min relay fee not met, {} < {}",
                fee.to_sat(),
                min_fee.to_sat()
            )));
        }
        if let Some(max) = max_fee_rate.filter(|m| *m > FeeRate::ZERO) {
            if fee.to_sat() * 250 / vsize.max(1) > max.to_sat_per_kwu() {
                return Err(NodeError::MaxFeeExceeded);
            }
        }
        let ancestors = self.mempool.ancestors_of(&tx);
        if ancestors.len() + 1 > ANCESTOR_LIMIT {
            return Err(NodeError::rejected(format!(
                "too-long-mempool-chain, too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]"
            )));
        }
        // Replacement (full RBF, BIP 125 rules 3, 4 and 6).
        let mut replaced: Vec<Txid> = Vec::new();
        if !conflicts.is_empty() {
            let new_rate = fee.to_sat() as f64 / vsize as f64;
            let mut replaced_fees = Amount::ZERO;
            for c in &conflicts {
                for t in self.mempool.with_descendants(*c) {
                    if ancestors.contains(&t) {
                        return Err(NodeError::rejected("bad-txns-spends-conflicting-tx"));
                    }
                    if !replaced.contains(&t) {
                        replaced.push(t);
                    }
                }
                if let Some(e) = self.mempool.entries.get(c) {
                    let old_rate = e.fee.to_sat() as f64 / e.vsize as f64;
                    if new_rate <= old_rate {
                        return Err(NodeError::rejected(format!(
                            "insufficient fee, rejecting replacement {txid}; new feerate {:.8} <= old feerate {:.8}",
                            new_rate * 1e-5,
                            old_rate * 1e-5
                        )));
                    }
                }
            }
            if replaced.len() > 100 {
                return Err(NodeError::rejected("too many potential replacements"));
            }
            for t in &replaced {
                if let Some(e) = self.mempool.entries.get(t) {
                    replaced_fees += e.fee;
                }
            }
            if fee < replaced_fees {
                return Err(NodeError::rejected(format!(
                    "insufficient fee, rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                    fee.to_btc(),
                    replaced_fees.to_btc()
                )));
            }
            if fee - replaced_fees < min_fee {
                return Err(NodeError::rejected(format!(
                    "insufficient fee, rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                    (fee - replaced_fees).to_btc(),
                    min_fee.to_btc()
                )));
            }
        }
        // Scripts: consensus first, then the standardness rules.
        if !self.script_ok.contains(&txid) {
            let raw = serialize(&tx);
            let outs: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
            for (n, c) in coins.iter().enumerate() {
                let v = verify_input_raw(&tx, &raw, n, &c.txout, Some(&outs));
                if let Some(e) = v.error {
                    return Err(NodeError::Rejected(e));
                }
            }
        }
        let accepted = Accepted { txid, wtxid: tx.compute_wtxid(), fee, vsize };
        if test_only {
            return Ok(accepted);
        }
        for t in replaced {
            self.mempool.remove(&t);
            self.script_ok.remove(&t);
            debug!(%t, by = %txid, "replaced in mempool");
        }
        if let Some(store) = self.store.as_mut() {
            store.append_mempool(&tx)?;
        }
        self.script_ok.insert(txid);
        let now = self.now();
        self.mempool.insert(Entry {
            tx: Arc::new(tx),
            txid,
            wtxid: accepted.wtxid,
            fee,
            vsize,
            time: now,
            height: self.chain.height(),
            seq: 0,
        });
        Ok(accepted)
    }
}
