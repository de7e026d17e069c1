//! Package acceptance: Bitcoin Core's `AcceptPackage` (`submitpackage`) and
//! `AcceptMultipleTransactions` (`testmempoolaccept` of several transactions).
//!
//! A submitted package is a child with its unconfirmed parents, parents first. Each
//! transaction is tried alone first (one already in the mempool is skipped); those refused
//! only for their fee rate (a zero-fee TRUC parent) or for a parent refused so are then judged
//! together, by the package's fee rate, with TRUC's package rules, package replacement
//! (one parent, one child) and ephemeral dust (the child spends the parent's dust).

use std::collections::HashSet;

use paychan_core::bitcoin::{Amount, Transaction, Txid, Wtxid};

use crate::mempool::{
    check_fee_rate, pays_for_rbf, reconsiderable, sat_per_kvb, truc, unspent_dust, Accepted,
    Checked, Mode, Overlay, PackageOutcome, TxOutcome,
};
use crate::policy::{
    MAX_PACKAGE_COUNT, MAX_PACKAGE_WEIGHT, TRUC_CHILD_MAX_VSIZE, TRUC_MAX_VSIZE, TRUC_VERSION,
};
use crate::state::State;
use crate::NodeError;

fn ids(tx: &Transaction) -> (Txid, Wtxid) {
    (tx.compute_txid(), tx.compute_wtxid())
}

/// Every transaction of `txs` as not judged yet.
fn unevaluated(txs: &[Transaction]) -> Vec<TxOutcome> {
    txs.iter()
        .map(|t| {
            let (txid, wtxid) = ids(t);
            TxOutcome::Unevaluated { txid, wtxid }
        })
        .collect()
}

/// Core's `IsWellFormedPackage`: the package-level reason, if any.
fn well_formed(txs: &[Transaction]) -> Option<&'static str> {
    if txs.len() > MAX_PACKAGE_COUNT {
        return Some("package-too-many-transactions");
    }
    let weight: u64 = txs.iter().map(|t| t.weight().to_wu()).sum();
    if txs.len() > 1 && weight > MAX_PACKAGE_WEIGHT {
        return Some("package-too-large");
    }
    let txids: Vec<Txid> = txs.iter().map(Transaction::compute_txid).collect();
    let unique: HashSet<&Txid> = txids.iter().collect();
    if unique.len() != txids.len() {
        return Some("package-contains-duplicates");
    }
    // Sorted: no transaction spends one that comes after it.
    for (i, tx) in txs.iter().enumerate() {
        if tx.input.iter().any(|input| txids[i + 1..].contains(&input.previous_output.txid)) {
            return Some("package-not-sorted");
        }
    }
    let mut spent = HashSet::new();
    for tx in txs {
        for input in &tx.input {
            if !spent.insert(input.previous_output) {
                return Some("conflict-in-package");
            }
        }
    }
    None
}

/// Core's `IsChildWithParentsTree`: the last transaction spends an output of every other one,
/// and no parent spends another.
fn child_with_parents_tree(txs: &[Transaction]) -> bool {
    let Some((child, parents)) = txs.split_last() else { return false };
    let parent_ids: HashSet<Txid> = parents.iter().map(Transaction::compute_txid).collect();
    let spent: HashSet<Txid> = child.input.iter().map(|i| i.previous_output.txid).collect();
    parent_ids.iter().all(|p| spent.contains(p))
        && parents
            .iter()
            .all(|p| p.input.iter().all(|i| !parent_ids.contains(&i.previous_output.txid)))
}

/// What judging transactions together concluded.
struct Verdict {
    message: String,
    package_error: bool,
    replaced: Vec<Txid>,
}

impl Verdict {
    fn failed(message: impl Into<String>, package_error: bool) -> Verdict {
        Verdict { message: message.into(), package_error, replaced: Vec::new() }
    }
}

fn outcome(message: impl Into<String>, results: Vec<TxOutcome>) -> PackageOutcome {
    PackageOutcome { message: message.into(), package_error: false, results, replaced: Vec::new() }
}

impl State {
    /// `submitpackage` (or, with `test_only`, `testmempoolaccept` of several transactions).
    ///
    /// # Errors
    /// [`NodeError::InvalidParameter`] for an empty or too long list;
    /// [`NodeError::InvalidPackage`] when a submitted package is not a child with its parents.
    /// A refused package is an `Ok` outcome with the reasons.
    pub fn accept_package(
        &mut self,
        txs: Vec<Transaction>,
        test_only: bool,
        max_fee_rate: Option<paychan_core::bitcoin::FeeRate>,
    ) -> Result<PackageOutcome, NodeError> {
        if txs.is_empty() || txs.len() > MAX_PACKAGE_COUNT {
            return Err(NodeError::InvalidParameter(format!(
                "Array must contain between 1 and {MAX_PACKAGE_COUNT} transactions."
            )));
        }
        if !test_only && !child_with_parents_tree(&txs) {
            return Err(NodeError::InvalidPackage(
                "package topology disallowed. not child-with-parents or parents depend on each other."
                    .into(),
            ));
        }
        if let Some(reason) = well_formed(&txs) {
            let mut o = outcome(reason, unevaluated(&txs));
            o.package_error = true;
            return Ok(o);
        }
        if test_only {
            let mode = Mode {
                test_only: true,
                max_fee_rate: None,
                bypass_limits: false,
                package_feerates: false,
                replacement: false,
                sibling_eviction: false,
            };
            let mut results = unevaluated(&txs);
            let all: Vec<usize> = (0..txs.len()).collect();
            let verdict = self.accept_together(&txs, &all, mode, &mut results)?;
            return Ok(PackageOutcome {
                message: verdict.message,
                package_error: verdict.package_error,
                results,
                replaced: Vec::new(),
            });
        }
        self.submit_package(&txs, max_fee_rate)
    }

    /// Core's `AcceptPackage`: each transaction alone, then those refused only for their fee
    /// rate together.
    fn submit_package(
        &mut self,
        txs: &[Transaction],
        max_fee_rate: Option<paychan_core::bitcoin::FeeRate>,
    ) -> Result<PackageOutcome, NodeError> {
        let mut results = unevaluated(txs);
        let mut replaced: Vec<Txid> = Vec::new();
        let mut together: Vec<usize> = Vec::new();
        let mut quit_early = false;
        for (i, tx) in txs.iter().enumerate() {
            let (txid, wtxid) = ids(tx);
            if let Some(e) = self.mempool.entries.get(&txid) {
                results[i] = TxOutcome::InMempool {
                    accepted: Accepted { txid, wtxid, fee: e.fee, vsize: e.vsize },
                    other_wtxid: (e.wtxid != wtxid).then_some(e.wtxid),
                };
                continue;
            }
            match self.check(tx.clone(), Mode::single(false, max_fee_rate), &Overlay::default()) {
                Ok(c) => {
                    replaced.extend(c.replaced.iter().copied());
                    let a = c.accepted.clone();
                    self.commit(c)?;
                    results[i] = TxOutcome::Accepted {
                        effective_sat_per_kvb: sat_per_kvb(a.fee, a.vsize),
                        effective_includes: vec![a.wtxid],
                        accepted: a,
                    };
                }
                Err(error) => {
                    if txs.len() > 1 && reconsiderable(&error) {
                        together.push(i);
                    } else {
                        quit_early = true;
                    }
                    results[i] = TxOutcome::Rejected { txid, wtxid, error };
                }
            }
        }
        let mut message = "success".to_string();
        let mut package_error = false;
        if quit_early {
            message = "transaction failed".into();
        } else if !together.is_empty() {
            let mode = Mode {
                test_only: false,
                max_fee_rate,
                bypass_limits: false,
                package_feerates: together.len() > 1,
                replacement: true,
                sibling_eviction: together.len() == 1,
            };
            let verdict = self.accept_together(txs, &together, mode, &mut results)?;
            (message, package_error) = (verdict.message, verdict.package_error);
            replaced.extend(verdict.replaced);
        }
        Ok(PackageOutcome { message, package_error, results, replaced })
    }

    /// Core's `AcceptMultipleTransactions` on `txs[which]` (parents first): every transaction
    /// checked with the earlier ones visible, then the package's TRUC topology, fee rate,
    /// replacement and ephemeral dust; all are added, or none. Returns the package message
    /// and whether it is a package-level failure; sets the outcomes of `which` it reached.
    fn accept_together(
        &mut self,
        txs: &[Transaction],
        which: &[usize],
        mode: Mode,
        results: &mut [TxOutcome],
    ) -> Result<Verdict, NodeError> {
        let subset: Vec<&Transaction> = which.iter().map(|i| &txs[*i]).collect();
        let mut overlay = Overlay::default();
        let mut checked: Vec<(usize, Checked)> = Vec::new();
        for &i in which {
            let tx = &txs[i];
            match self.check(tx.clone(), mode, &overlay) {
                Ok(c) => {
                    overlay.txs.insert(c.accepted.txid, tx);
                    checked.push((i, c));
                }
                Err(error) => {
                    let (txid, wtxid) = ids(tx);
                    results[i] = TxOutcome::Rejected { txid, wtxid, error };
                    return Ok(Verdict::failed("transaction failed", false));
                }
            }
        }
        if subset.len() > 1 {
            for (_, c) in &checked {
                if let Some(reason) = self.truc_package(c, &subset) {
                    return Ok(Verdict::failed(truc(reason).to_string(), true));
                }
            }
        }
        let total_fee: Amount = checked.iter().map(|(_, c)| c.accepted.fee).sum();
        let total_vsize: u64 = checked.iter().map(|(_, c)| c.accepted.vsize).sum();
        if mode.package_feerates {
            if let Err(error) = check_fee_rate(total_fee, total_vsize) {
                if let Some((i, c)) = checked.last() {
                    let a = &c.accepted;
                    results[*i] = TxOutcome::Rejected { txid: a.txid, wtxid: a.wtxid, error };
                }
                return Ok(Verdict::failed("transaction failed", false));
            }
        }
        let conflicts: HashSet<Txid> =
            checked.iter().flat_map(|(_, c)| c.conflicts.iter().copied()).collect();
        let mut replaced: Vec<Txid> = Vec::new();
        for (_, c) in &checked {
            for t in &c.replaced {
                if !replaced.contains(t) {
                    replaced.push(*t);
                }
            }
        }
        if !conflicts.is_empty() && mode.package_feerates {
            if let Some(reason) =
                self.package_replacement(&checked, &conflicts, &replaced, total_fee, total_vsize)
            {
                return Ok(Verdict::failed(format!("package RBF failed: {reason}"), true));
            }
        }
        for (i, c) in &checked {
            if let Some(error) = unspent_dust(&c.tx, &self.mempool, &overlay) {
                let a = &c.accepted;
                results[*i] = TxOutcome::Rejected { txid: a.txid, wtxid: a.wtxid, error };
                return Ok(Verdict::failed("unspent-dust", false));
            }
        }
        let wtxids: Vec<Wtxid> = checked.iter().map(|(_, c)| c.accepted.wtxid).collect();
        for (i, c) in checked {
            let a = c.accepted.clone();
            let (effective_sat_per_kvb, effective_includes) = if mode.package_feerates {
                (sat_per_kvb(total_fee, total_vsize), wtxids.clone())
            } else {
                (sat_per_kvb(a.fee, a.vsize), vec![a.wtxid])
            };
            if !mode.test_only {
                self.commit(c)?;
            }
            results[i] =
                TxOutcome::Accepted { accepted: a, effective_sat_per_kvb, effective_includes };
        }
        let replaced = if mode.test_only { Vec::new() } else { replaced };
        Ok(Verdict { message: "success".into(), package_error: false, replaced })
    }

    /// Core's `PackageTRUCChecks` for one transaction of `package`.
    fn truc_package(&self, c: &Checked, package: &[&Transaction]) -> Option<String> {
        let (tx, txid, wtxid, vsize) = (&c.tx, c.accepted.txid, c.accepted.wtxid, c.accepted.vsize);
        let spends: HashSet<Txid> = tx.input.iter().map(|i| i.previous_output.txid).collect();
        let position = package.iter().position(|p| p.compute_txid() == txid)?;
        let in_package_parents: Vec<&Transaction> = package[..position]
            .iter()
            .copied()
            .filter(|p| spends.contains(&p.compute_txid()))
            .collect();
        let mempool_parents: Vec<_> =
            c.mempool_parents.iter().filter_map(|p| self.mempool.entries.get(p)).collect();
        if tx.version.0 != TRUC_VERSION {
            let truc_parent = mempool_parents
                .iter()
                .map(|e| (e.txid, e.wtxid, e.tx.version.0))
                .chain(
                    in_package_parents
                        .iter()
                        .map(|p| (p.compute_txid(), p.compute_wtxid(), p.version.0)),
                )
                .find(|(_, _, v)| *v == TRUC_VERSION);
            return truc_parent.map(|(ptxid, pwtxid, _)| {
                format!(
                    "non-version=3 tx {txid} (wtxid={wtxid}) cannot spend from version=3 tx {ptxid} (wtxid={pwtxid})"
                )
            });
        }
        if vsize > TRUC_MAX_VSIZE {
            return Some(format!(
                "version=3 tx {txid} (wtxid={wtxid}) is too big: {vsize} > {TRUC_MAX_VSIZE} virtual bytes"
            ));
        }
        let too_many = format!("tx {txid} (wtxid={wtxid}) would have too many ancestors");
        if mempool_parents.len() + in_package_parents.len() + 1 > 2 {
            return Some(too_many);
        }
        if let Some(p) = mempool_parents.first() {
            if self.mempool.ancestors_of(&p.tx).len() + 1 + in_package_parents.len() + 1 > 2 {
                return Some(too_many);
            }
        }
        let (ptxid, pwtxid, pversion, has_mempool_descendant) =
            match (mempool_parents.first(), in_package_parents.first()) {
                (Some(p), _) => (
                    p.txid,
                    p.wtxid,
                    p.tx.version.0,
                    self.mempool.with_descendants(p.txid).len() > 1,
                ),
                (None, Some(p)) => (p.compute_txid(), p.compute_wtxid(), p.version.0, false),
                (None, None) => return None,
            };
        if vsize > TRUC_CHILD_MAX_VSIZE {
            return Some(format!(
                "version=3 child tx {txid} (wtxid={wtxid}) is too big: {vsize} > {TRUC_CHILD_MAX_VSIZE} virtual bytes"
            ));
        }
        if pversion != TRUC_VERSION {
            return Some(format!(
                "version=3 tx {txid} (wtxid={wtxid}) cannot spend from non-version=3 tx {ptxid} (wtxid={pwtxid})"
            ));
        }
        for other in package.iter().filter(|p| p.compute_txid() != txid) {
            for input in &other.input {
                if input.previous_output.txid == ptxid {
                    return Some(format!(
                        "tx {ptxid} (wtxid={pwtxid}) would exceed descendant count limit"
                    ));
                }
                if input.previous_output.txid == txid {
                    return Some(format!(
                        "tx {} (wtxid={}) would have too many ancestors",
                        other.compute_txid(),
                        other.compute_wtxid()
                    ));
                }
            }
        }
        has_mempool_descendant
            .then(|| format!("tx {ptxid} (wtxid={pwtxid}) would exceed descendant count limit"))
    }

    /// Core 28's package replacement rules (`PackageRBFChecks`), for one parent and one child
    /// without mempool ancestors replacing clusters of at most two transactions. Core's
    /// feerate-diagram comparison is taken as: the package's fee rate beats each replaced
    /// cluster's.
    fn package_replacement(
        &self,
        checked: &[(usize, Checked)],
        conflicts: &HashSet<Txid>,
        replaced: &[Txid],
        total_fee: Amount,
        total_vsize: u64,
    ) -> Option<String> {
        if checked.len() != 2 {
            return Some("package must be 1-parent-1-child".into());
        }
        if checked.iter().any(|(_, c)| !c.mempool_parents.is_empty()) {
            return Some("new transaction cannot have mempool ancestors".into());
        }
        if replaced.len() > 100 {
            return Some("too many potential replacements".into());
        }
        for c in conflicts {
            let Some(e) = self.mempool.entries.get(c) else { continue };
            let ancestors = self.mempool.ancestors_of(&e.tx);
            let family = self.mempool.with_descendants(*c);
            if ancestors.len() + family.len() > 2 {
                return Some(format!("{c} is in a cluster of more than 2 transactions"));
            }
            let cluster: Vec<Txid> = ancestors.into_iter().chain(family).collect();
            let fee = self.fees_of(&cluster);
            let vsize: u64 =
                cluster.iter().filter_map(|t| self.mempool.entries.get(t)).map(|e| e.vsize).sum();
            if u128::from(total_fee.to_sat()) * u128::from(vsize)
                <= u128::from(fee.to_sat()) * u128::from(total_vsize)
            {
                return Some("insufficient feerate: does not improve feerate diagram".into());
            }
        }
        let child = checked.last().map(|(_, c)| c.accepted.txid)?;
        pays_for_rbf(self.fees_of(replaced), total_fee, total_vsize, child)
            .map(|reason| format!("insufficient anti-DoS fees, {reason}"))
    }
}
