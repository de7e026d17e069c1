//! The mempool: acceptance (Bitcoin Core's `AcceptToMemoryPool` for the rules of
//! [`crate::policy`] and [`crate::chain`], with full-RBF replacement, the TRUC rules of BIP 431
//! with sibling eviction, ephemeral dust), package acceptance (`submitpackage`,
//! `testmempoolaccept` of several transactions: Core's `AcceptPackage`), its entries and their
//! relations (parents, ancestors, descendants).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use paychan_core::bitcoin::consensus::encode::serialize;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Transaction, TxOut, Txid, Wtxid};
use paychan_core::verify::verify_input_raw;
use tracing::debug;

use crate::chain::{Coin, Finality};
use crate::policy::{
    check_standard, check_witness_standard, dust_outputs, ANCESTOR_LIMIT, INCREMENTAL_RELAY_FEE,
    MIN_RELAY_FEE, TRUC_CHILD_MAX_VSIZE, TRUC_MAX_VSIZE, TRUC_VERSION,
};
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

/// How one transaction is being accepted (Core's `ATMPArgs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    /// Check only; change nothing.
    pub test_only: bool,
    /// `sendrawtransaction`'s `maxfeerate`.
    pub max_fee_rate: Option<FeeRate>,
    /// A transaction the node had already (back from a disconnected block, the mempool
    /// file): no minimum relay fee (Core's `bypass_limits`).
    pub bypass_limits: bool,
    /// Its own fee rate is not checked: the package's is (Core's `m_package_feerates`).
    pub package_feerates: bool,
    /// Conflicts may be replaced.
    pub replacement: bool,
    /// A TRUC child may evict its parent's other child (single transactions only).
    pub sibling_eviction: bool,
}

impl Mode {
    /// One transaction, as `sendrawtransaction` (or `testmempoolaccept` of one) submits it.
    pub fn single(test_only: bool, max_fee_rate: Option<FeeRate>) -> Mode {
        Mode {
            test_only,
            max_fee_rate,
            bypass_limits: false,
            package_feerates: false,
            replacement: true,
            sibling_eviction: true,
        }
    }
}

/// A transaction that passed every check, with what accepting it changes.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub tx: Transaction,
    pub accepted: Accepted,
    /// Its direct parents in the mempool.
    pub mempool_parents: Vec<Txid>,
    /// What accepting it removes: conflicts (and an evicted sibling) with their descendants.
    pub replaced: Vec<Txid>,
    /// Direct conflicts (for package replacement).
    pub conflicts: HashSet<Txid>,
}

/// The outcome for one transaction of a package (`submitpackage`'s `tx-results`,
/// `testmempoolaccept`'s entries).
#[derive(Debug)]
#[non_exhaustive]
pub enum TxOutcome {
    /// Accepted (or, for a test, would be).
    Accepted {
        /// What was accepted.
        accepted: Accepted,
        /// The fee rate it was judged by (the package's when it needed its child), sat/kvB.
        effective_sat_per_kvb: u64,
        /// The transactions whose fees and sizes make that rate.
        effective_includes: Vec<Wtxid>,
    },
    /// It was in the mempool already.
    InMempool {
        /// It, as the mempool has it (fee and size of the mempool's entry).
        accepted: Accepted,
        /// The mempool's witness id, when the mempool holds the same transaction with another
        /// witness.
        other_wtxid: Option<Wtxid>,
    },
    /// Refused.
    Rejected {
        /// The transaction's id.
        txid: Txid,
        /// Its witness id.
        wtxid: Wtxid,
        /// Why.
        error: NodeError,
    },
    /// Not judged: the package failed before it was reached.
    Unevaluated {
        /// The transaction's id.
        txid: Txid,
        /// Its witness id.
        wtxid: Wtxid,
    },
}

impl TxOutcome {
    /// The transaction's txid and wtxid.
    pub fn ids(&self) -> (Txid, Wtxid) {
        match self {
            TxOutcome::Accepted { accepted: a, .. } => (a.txid, a.wtxid),
            TxOutcome::InMempool { accepted: a, .. } => (a.txid, a.wtxid),
            TxOutcome::Rejected { txid, wtxid, .. } | TxOutcome::Unevaluated { txid, wtxid } => {
                (*txid, *wtxid)
            }
        }
    }
}

/// What package acceptance reports.
#[derive(Debug)]
pub struct PackageOutcome {
    /// `"success"`, or Core's message for the package ("transaction failed", "unspent-dust",
    /// "TRUC-violation, …", "package RBF failed: …").
    pub message: String,
    /// Whether the failure is about the package as a whole (Core's `PCKG_POLICY`:
    /// `testmempoolaccept` reports it as each transaction's `package-error`).
    pub package_error: bool,
    /// One outcome per transaction, in the package's order.
    pub results: Vec<TxOutcome>,
    /// Transactions the package replaced.
    pub replaced: Vec<Txid>,
}

impl PackageOutcome {
    /// Whether every transaction is in the mempool now (or would be, for a test).
    pub fn success(&self) -> bool {
        self.message == "success"
    }
}

/// Earlier transactions of a package that are not in the mempool: visible as parents.
#[derive(Debug, Default)]
pub(crate) struct Overlay<'a> {
    pub txs: HashMap<Txid, &'a Transaction>,
}

/// `fee` over `vsize` in sat/kvB, as Core's `CFeeRate`.
pub(crate) fn sat_per_kvb(fee: Amount, vsize: u64) -> u64 {
    fee.to_sat().saturating_mul(1_000) / vsize.max(1)
}

/// Core's `PaysForRBF`: the replacement pays at least the fees it removes, plus its own
/// relay at the incremental rate.
pub(crate) fn pays_for_rbf(
    replaced_fees: Amount,
    fee: Amount,
    vsize: u64,
    txid: Txid,
) -> Option<String> {
    if fee < replaced_fees {
        return Some(format!(
            "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
            fee.to_btc(),
            replaced_fees.to_btc()
        ));
    }
    let min_additional = INCREMENTAL_RELAY_FEE.fee_vb(vsize).unwrap_or(Amount::MAX_MONEY);
    if fee - replaced_fees < min_additional {
        return Some(format!(
            "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
            (fee - replaced_fees).to_btc(),
            min_additional.to_btc()
        ));
    }
    None
}

/// Core's `CheckFeeRate` against the minimum relay fee.
pub(crate) fn check_fee_rate(fee: Amount, vsize: u64) -> Result<(), NodeError> {
    let min_fee = MIN_RELAY_FEE.fee_vb(vsize).unwrap_or(Amount::MAX_MONEY);
    if fee < min_fee {
        return Err(NodeError::rejected(format!(
            "min relay fee not met, {} < {}",
            fee.to_sat(),
            min_fee.to_sat()
        )));
    }
    Ok(())
}

/// Whether a refusal may change in a package (Core's `TX_RECONSIDERABLE`, plus missing inputs
/// whose parent is earlier in the package).
pub(crate) fn reconsiderable(e: &NodeError) -> bool {
    match e {
        NodeError::MissingInputs => true,
        NodeError::Rejected(r) => {
            r.starts_with("min relay fee not met") || r.starts_with("insufficient fee")
        }
        _ => false,
    }
}

pub(crate) fn truc(reason: String) -> NodeError {
    NodeError::Rejected(format!("TRUC-violation, {reason}"))
}

/// Core's `CheckEphemeralSpends` for one transaction: every dust output of its unconfirmed
/// parents (in `package` or the mempool) must be spent by it.
pub(crate) fn unspent_dust(
    tx: &Transaction,
    mempool: &Mempool,
    overlay: &Overlay<'_>,
) -> Option<NodeError> {
    let mut dust: HashSet<OutPoint> = HashSet::new();
    let mut seen = HashSet::new();
    for input in &tx.input {
        let parent_txid = input.previous_output.txid;
        if !seen.insert(parent_txid) {
            continue;
        }
        let parent = overlay
            .txs
            .get(&parent_txid)
            .copied()
            .or_else(|| mempool.entries.get(&parent_txid).map(|e| &*e.tx));
        if let Some(parent) = parent {
            for vout in dust_outputs(parent) {
                dust.insert(OutPoint { txid: parent_txid, vout });
            }
        }
    }
    for input in &tx.input {
        dust.remove(&input.previous_output);
    }
    (!dust.is_empty()).then(|| {
        NodeError::rejected(format!(
            "missing-ephemeral-spends, tx {} (wtxid={}) did not spend parent's ephemeral dust",
            tx.compute_txid(),
            tx.compute_wtxid()
        ))
    })
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
        self.accept_mode(tx, Mode::single(test_only, max_fee_rate))
    }

    /// Takes back a transaction the node had already (from a disconnected block or the mempool
    /// file) without the minimum relay fee, as Core does: a zero-fee TRUC parent stays with
    /// its child.
    pub fn readmit(&mut self, tx: Transaction) -> Result<Accepted, NodeError> {
        let mode = Mode { bypass_limits: true, ..Mode::single(false, None) };
        self.accept_mode(tx, mode)
    }

    fn accept_mode(&mut self, tx: Transaction, mode: Mode) -> Result<Accepted, NodeError> {
        let checked = self.check(tx, mode, &Overlay::default())?;
        let accepted = checked.accepted.clone();
        if !mode.test_only {
            self.commit(checked)?;
        }
        Ok(accepted)
    }

    /// Every check of Core's `PreChecks`, `ReplacementChecks` and script checks on one
    /// transaction, whose unconfirmed parents are in the mempool or `overlay`.
    pub(crate) fn check(
        &self,
        tx: Transaction,
        mode: Mode,
        overlay: &Overlay<'_>,
    ) -> Result<Checked, NodeError> {
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
        if !conflicts.is_empty() && !mode.replacement {
            return Err(NodeError::rejected("bip125-replacement-disallowed"));
        }

        // Inputs, from the UTXO set, the mempool or the package.
        let mut coins = Vec::with_capacity(tx.input.len());
        let mut mempool_parents: Vec<Txid> = Vec::new();
        let mut package_parents: Vec<Txid> = Vec::new();
        for input in &tx.input {
            let op = input.previous_output;
            let unconfirmed = |out: Option<&TxOut>| match out {
                Some(out) => Ok(Coin { txout: out.clone(), height: next_height, coinbase: false }),
                None => Err(NodeError::MissingInputs),
            };
            let coin = if let Some(c) = self.chain.utxos.get(&op) {
                c.clone()
            } else if let Some(parent) = self.mempool.entries.get(&op.txid) {
                if conflicts.contains(&op.txid) {
                    return Err(NodeError::rejected("bad-txns-spends-conflicting-tx"));
                }
                if !mempool_parents.contains(&op.txid) {
                    mempool_parents.push(op.txid);
                }
                unconfirmed(parent.tx.output.get(op.vout as usize))?
            } else if let Some(parent) = overlay.txs.get(&op.txid) {
                if !package_parents.contains(&op.txid) {
                    package_parents.push(op.txid);
                }
                unconfirmed(parent.output.get(op.vout as usize))?
            } else {
                let outputs_exist = (0..tx.output.len())
                    .any(|v| self.chain.utxos.contains_key(&OutPoint { txid, vout: v as u32 }));
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
        let spent: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
        check_witness_standard(&tx, &spent).map_err(NodeError::Rejected)?;
        // Ephemeral dust: a transaction with dust pays nothing, so it is never mined alone.
        if fee != Amount::ZERO && !dust_outputs(&tx).is_empty() {
            return Err(NodeError::rejected("dust, tx with dust output must be 0-fee"));
        }
        let vsize = tx.vsize() as u64;
        let wtxid = tx.compute_wtxid();
        if !mode.bypass_limits && !mode.package_feerates {
            check_fee_rate(fee, vsize)?;
        }
        if let Some(max) = mode.max_fee_rate.filter(|m| *m > FeeRate::ZERO) {
            if fee.to_sat() * 250 / vsize.max(1) > max.to_sat_per_kwu() {
                return Err(NodeError::MaxFeeExceeded);
            }
        }
        let ancestors = self.mempool.ancestors_of(&tx);
        let in_package = overlay.ancestors(&tx);
        if ancestors.len() + in_package + 1 > ANCESTOR_LIMIT {
            return Err(NodeError::rejected(format!(
                "too-long-mempool-chain, too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]"
            )));
        }
        // TRUC (BIP 431), against the mempool; the package's own topology is checked with
        // the package.
        let mut direct = conflicts.clone();
        let mut sibling_eviction = false;
        if let Err((reason, sibling)) =
            self.truc_single(&tx, txid, wtxid, vsize, &mempool_parents, &conflicts)
        {
            match sibling {
                Some(s) if mode.sibling_eviction => {
                    direct.insert(s);
                    sibling_eviction = true;
                }
                _ => return Err(truc(reason)),
            }
        }
        // Replacement (full RBF, BIP 125 rules 3, 4 and 6); a package's as a whole, by
        // `State::package_replacement`.
        let sibling_note = if sibling_eviction { " (including sibling eviction)" } else { "" };
        let mut replaced: Vec<Txid> = Vec::new();
        for c in &direct {
            for t in self.mempool.with_descendants(*c) {
                if ancestors.contains(&t) {
                    return Err(NodeError::rejected("bad-txns-spends-conflicting-tx"));
                }
                if !replaced.contains(&t) {
                    replaced.push(t);
                }
            }
        }
        if !direct.is_empty() && !mode.package_feerates {
            let new_rate = fee.to_sat() as f64 / vsize as f64;
            for c in &direct {
                if let Some(e) = self.mempool.entries.get(c) {
                    let old_rate = e.fee.to_sat() as f64 / e.vsize as f64;
                    if new_rate <= old_rate {
                        return Err(NodeError::rejected(format!(
                            "insufficient fee{sibling_note}, rejecting replacement {txid}; new feerate {:.8} <= old feerate {:.8}",
                            new_rate * 1e-5,
                            old_rate * 1e-5
                        )));
                    }
                }
            }
            if replaced.len() > 100 {
                return Err(NodeError::rejected("too many potential replacements"));
            }
            let replaced_fees = self.fees_of(&replaced);
            if let Some(reason) = pays_for_rbf(replaced_fees, fee, vsize, txid) {
                return Err(NodeError::rejected(format!(
                    "insufficient fee{sibling_note}, {reason}"
                )));
            }
        }
        // Ephemeral dust of mempool parents must be spent by this child (a package's own is
        // checked with the package).
        if !mode.package_feerates {
            if let Some(e) = unspent_dust(&tx, &self.mempool, &Overlay::default()) {
                return Err(e);
            }
        }
        // Scripts: consensus first, then the standardness rules.
        if !self.script_ok.contains(&txid) {
            let raw = serialize(&tx);
            for (n, c) in coins.iter().enumerate() {
                let v = verify_input_raw(&tx, &raw, n, &c.txout, Some(&spent));
                if let Some(e) = v.error {
                    return Err(NodeError::Rejected(e));
                }
            }
        }
        Ok(Checked {
            tx,
            accepted: Accepted { txid, wtxid, fee, vsize },
            mempool_parents,
            replaced,
            conflicts,
        })
    }

    /// Core's `SingleTRUCChecks`: the reason in Core's words, and the sibling that may be
    /// evicted instead when the only fault is the parent's other child.
    pub(crate) fn truc_single(
        &self,
        tx: &Transaction,
        txid: Txid,
        wtxid: Wtxid,
        vsize: u64,
        mempool_parents: &[Txid],
        direct_conflicts: &HashSet<Txid>,
    ) -> Result<(), (String, Option<Txid>)> {
        let is_truc = tx.version.0 == TRUC_VERSION;
        for p in mempool_parents {
            let Some(parent) = self.mempool.entries.get(p) else { continue };
            let parent_truc = parent.tx.version.0 == TRUC_VERSION;
            if !is_truc && parent_truc {
                return Err((
                    format!(
                        "non-version=3 tx {txid} (wtxid={wtxid}) cannot spend from version=3 tx {} (wtxid={})",
                        parent.txid, parent.wtxid
                    ),
                    None,
                ));
            }
            if is_truc && !parent_truc {
                return Err((
                    format!(
                        "version=3 tx {txid} (wtxid={wtxid}) cannot spend from non-version=3 tx {} (wtxid={})",
                        parent.txid, parent.wtxid
                    ),
                    None,
                ));
            }
        }
        if !is_truc {
            return Ok(());
        }
        if vsize > TRUC_MAX_VSIZE {
            return Err((
                format!(
                    "version=3 tx {txid} (wtxid={wtxid}) is too big: {vsize} > {TRUC_MAX_VSIZE} virtual bytes"
                ),
                None,
            ));
        }
        let too_many_ancestors =
            || (format!("tx {txid} (wtxid={wtxid}) would have too many ancestors"), None);
        if mempool_parents.len() + 1 > 2 {
            return Err(too_many_ancestors());
        }
        let Some(parent) = mempool_parents.first().and_then(|p| self.mempool.entries.get(p)) else {
            return Ok(());
        };
        if self.mempool.ancestors_of(&parent.tx).len() + 1 + 1 > 2 {
            return Err(too_many_ancestors());
        }
        if vsize > TRUC_CHILD_MAX_VSIZE {
            return Err((
                format!(
                    "version=3 child tx {txid} (wtxid={wtxid}) is too big: {vsize} > {TRUC_CHILD_MAX_VSIZE} virtual bytes"
                ),
                None,
            ));
        }
        let family = self.mempool.with_descendants(parent.txid);
        let descendants = &family[1..];
        let child_will_be_replaced = descendants.iter().any(|d| direct_conflicts.contains(d));
        if family.len() + 1 > 2 && !child_will_be_replaced {
            // One other child, itself without descendants: it may be evicted by the
            // replacement rules.
            let sibling = match descendants {
                [only] => self
                    .mempool
                    .entries
                    .get(only)
                    .filter(|e| self.mempool.ancestors_of(&e.tx).len() + 1 == 2)
                    .map(|_| *only),
                _ => None,
            };
            return Err((
                format!(
                    "tx {} (wtxid={}) would exceed descendant count limit",
                    parent.txid, parent.wtxid
                ),
                sibling,
            ));
        }
        Ok(())
    }

    /// The total fee of mempool transactions `txids`.
    pub(crate) fn fees_of(&self, txids: &[Txid]) -> Amount {
        txids.iter().filter_map(|t| self.mempool.entries.get(t)).map(|e| e.fee).sum()
    }

    /// Puts a checked transaction in the mempool, removing what it replaces.
    pub(crate) fn commit(&mut self, checked: Checked) -> Result<(), NodeError> {
        let Checked { tx, accepted, replaced, .. } = checked;
        let txid = accepted.txid;
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
            fee: accepted.fee,
            vsize: accepted.vsize,
            time: now,
            height: self.chain.height(),
            seq: 0,
        });
        Ok(())
    }
}

impl<'a> Overlay<'a> {
    /// How many of `tx`'s unconfirmed ancestors are in the package.
    fn ancestors(&self, tx: &Transaction) -> usize {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Txid> = tx.input.iter().map(|i| i.previous_output.txid).collect();
        while let Some(t) = queue.pop_front() {
            if let Some(p) = self.txs.get(&t) {
                if seen.insert(t) {
                    queue.extend(p.input.iter().map(|i| i.previous_output.txid));
                }
            }
        }
        seen.len()
    }
}
