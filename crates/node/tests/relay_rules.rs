//! Bitcoin Core 28/29's relay rules in the embedded node, one test per rule, each with the
//! accepted case, the refused case and Core's reason: TRUC (BIP 431) with sibling eviction,
//! pay-to-anchor (BIP 433), ephemeral dust, package acceptance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use paychan_harness::fixtures::p2a;
use paychan_node::{Node, NodeError, PackageOutcome, TxOutcome};

type Coin = (OutPoint, TxOut);

const V3: Version = Version(3);

/// A transaction of `version` spending `coins` (P2WPKH of the miner key, or anchors).
fn tx(version: Version, coins: &[Coin], outputs: Vec<TxOut>) -> Transaction {
    let rbf = Sequence::ENABLE_RBF_NO_LOCKTIME;
    spend_with(coins, outputs, &miner_key(), version, LockTime::ZERO, rbf)
}

/// Output `vout` of `t` as a coin.
fn coin(t: &Transaction, vout: u32) -> Coin {
    (OutPoint { txid: t.compute_txid(), vout }, t.output[vout as usize].clone())
}

/// `n` outputs of `each` sat to the miner.
fn outs(n: usize, each: u64) -> Vec<TxOut> {
    (0..n).map(|_| out(each, miner_spk())).collect()
}

/// A node with `n` confirmed coins of 1,000,000 sat.
fn node_with_coins(n: usize) -> (Node, Vec<Coin>) {
    let node = funded_node(1);
    let coins = split(&node, 1, n, 1_000_000);
    (node, coins)
}

/// The refusal's full text (Core's `reject-reason, details`), and its short reason.
fn refused(r: Result<impl std::fmt::Debug, NodeError>) -> (String, String) {
    match r {
        Err(e) => (e.reject_details(), e.reject_reason()),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

fn in_mempool(node: &Node, t: &Transaction) -> bool {
    node.mempool_txids().contains(&t.compute_txid())
}

fn error_of(o: &PackageOutcome, txid: Txid) -> String {
    o.results
        .iter()
        .find_map(|r| match r {
            TxOutcome::Rejected { txid: t, error, .. } if *t == txid => {
                Some(error.reject_details())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{txid} not refused: {o:?}"))
}

#[test]
fn truc_size_limit() {
    let (node, coins) = node_with_coins(2);
    // 330 outputs: over 10,000 vB.
    let big = tx(V3, &coins[..1], outs(330, 1_000));
    let vsize = big.vsize();
    assert!(vsize > 10_000, "{vsize}");
    let (details, reason) = refused(node.submit(big.clone(), None));
    assert_eq!(reason, "TRUC-violation");
    assert_eq!(
        details,
        format!(
            "TRUC-violation, version=3 tx {} (wtxid={}) is too big: {vsize} > 10000 virtual bytes",
            big.compute_txid(),
            big.compute_wtxid()
        )
    );
    // The same as version 2 is fine, and a version-3 transaction within the limit too.
    node.test_accept(tx(Version::TWO, &coins[..1], outs(330, 1_000))).unwrap();
    let fits = tx(V3, &coins[1..2], outs(300, 1_000));
    assert!(fits.vsize() <= 10_000);
    node.submit(fits, None).unwrap();
}

#[test]
fn truc_child_size_limit() {
    let (node, coins) = node_with_coins(1);
    let parent = tx(V3, &coins, outs(2, 490_000));
    node.submit(parent.clone(), None).unwrap();
    let big = tx(V3, &[coin(&parent, 0)], outs(40, 10_000));
    let vsize = big.vsize();
    assert!(vsize > 1_000, "{vsize}");
    let (details, reason) = refused(node.submit(big.clone(), None));
    assert_eq!(reason, "TRUC-violation");
    assert_eq!(
        details,
        format!(
            "TRUC-violation, version=3 child tx {} (wtxid={}) is too big: {vsize} > 1000 virtual bytes",
            big.compute_txid(),
            big.compute_wtxid()
        )
    );
    let small = tx(V3, &[coin(&parent, 0)], outs(2, 240_000));
    assert!(small.vsize() <= 1_000);
    node.submit(small, None).unwrap();
}

#[test]
fn truc_one_unconfirmed_child_and_one_unconfirmed_ancestor() {
    let (node, coins) = node_with_coins(1);
    let parent = tx(V3, &coins, outs(2, 490_000));
    let child = tx(V3, &[coin(&parent, 0)], outs(1, 480_000));
    let second = tx(V3, &[coin(&parent, 1)], outs(1, 489_000));
    // Judged together (no sibling eviction in a package): a second child is refused.
    let o = node.test_package(vec![parent.clone(), child.clone(), second.clone()]).unwrap();
    assert!(o.package_error, "{o:?}");
    assert_eq!(
        o.message,
        format!(
            "TRUC-violation, tx {} (wtxid={}) would exceed descendant count limit",
            parent.compute_txid(),
            parent.compute_wtxid()
        )
    );
    node.submit(parent.clone(), None).unwrap();
    node.submit(child.clone(), None).unwrap();
    // Alone, a second child may only take the first one's place (sibling eviction), and this
    // one pays too little for that.
    let (details, reason) = refused(node.submit(second, None));
    assert_eq!(reason, "insufficient fee (including sibling eviction)", "{details}");
    // A grandchild would have two unconfirmed ancestors.
    let grandchild = tx(V3, &[coin(&child, 0)], outs(1, 479_000));
    let (details, _) = refused(node.submit(grandchild.clone(), None));
    assert_eq!(
        details,
        format!(
            "TRUC-violation, tx {} (wtxid={}) would have too many ancestors",
            grandchild.compute_txid(),
            grandchild.compute_wtxid()
        )
    );
    assert!(in_mempool(&node, &parent) && in_mempool(&node, &child));
}

#[test]
fn truc_and_non_truc_do_not_spend_each_other_unconfirmed() {
    let (node, coins) = node_with_coins(2);
    // Version 3 spending an unconfirmed version 2 output: refused.
    let v2_parent = tx(Version::TWO, &coins[..1], outs(1, 990_000));
    node.submit(v2_parent.clone(), None).unwrap();
    let v3_child = tx(V3, &[coin(&v2_parent, 0)], outs(1, 980_000));
    let (details, _) = refused(node.submit(v3_child.clone(), None));
    assert_eq!(
        details,
        format!(
            "TRUC-violation, version=3 tx {} (wtxid={}) cannot spend from non-version=3 tx {} (wtxid={})",
            v3_child.compute_txid(),
            v3_child.compute_wtxid(),
            v2_parent.compute_txid(),
            v2_parent.compute_wtxid()
        )
    );
    // And the reverse.
    let v3_parent = tx(V3, &coins[1..2], outs(1, 990_000));
    node.submit(v3_parent.clone(), None).unwrap();
    let v2_child = tx(Version::TWO, &[coin(&v3_parent, 0)], outs(1, 980_000));
    let (details, _) = refused(node.submit(v2_child.clone(), None));
    assert_eq!(
        details,
        format!(
            "TRUC-violation, non-version=3 tx {} (wtxid={}) cannot spend from version=3 tx {} (wtxid={})",
            v2_child.compute_txid(),
            v2_child.compute_wtxid(),
            v3_parent.compute_txid(),
            v3_parent.compute_wtxid()
        )
    );
    // Once confirmed, either version may spend either.
    node.mine(1, &miner_spk()).unwrap();
    node.submit(v3_child, None).unwrap();
    node.submit(v2_child, None).unwrap();
}

#[test]
fn truc_sibling_eviction() {
    let (node, coins) = node_with_coins(1);
    let parent = tx(V3, &coins, outs(2, 490_000));
    node.submit(parent.clone(), None).unwrap();
    let first = tx(V3, &[coin(&parent, 0)], outs(1, 489_000)); // 1,000 sat
    node.submit(first.clone(), None).unwrap();
    // A sibling paying the same: not enough to evict the first child.
    let cheap = tx(V3, &[coin(&parent, 1)], outs(1, 489_000));
    let (details, reason) = refused(node.submit(cheap, None));
    assert_eq!(reason, "insufficient fee (including sibling eviction)", "{details}");
    assert!(in_mempool(&node, &first));
    // Paying more than the first child plus its own relay: the first child is evicted.
    let better = tx(V3, &[coin(&parent, 1)], outs(1, 487_000)); // 3,000 sat
    node.submit(better.clone(), None).unwrap();
    assert!(in_mempool(&node, &better));
    assert!(!in_mempool(&node, &first), "the sibling was evicted");
    assert!(in_mempool(&node, &parent));
}

#[test]
fn pay_to_anchor_is_standard_and_spent_with_an_empty_witness() {
    let (node, coins) = node_with_coins(3);
    // A P2A output above the dust limit (240 sat at 3 sat/vB) in an ordinary transaction.
    let anchored = tx(Version::TWO, &coins[..1], vec![p2a(240), out(998_000, miner_spk())]);
    node.submit(anchored.clone(), None).unwrap();
    node.mine(1, &miner_spk()).unwrap();
    let anchor = coin(&anchored, 0);
    // Spent by anyone with an empty witness (plus a coin for the fee).
    let spend = tx(Version::TWO, &[anchor.clone(), coins[1].clone()], outs(1, 999_000));
    node.test_accept(spend.clone()).unwrap();
    // A non-empty witness on the anchor is witness stuffing: not standard.
    let mut stuffed = spend.clone();
    stuffed.input[0].witness.push([0x01]);
    let (details, reason) = refused(node.submit(stuffed, None));
    assert_eq!(reason, "bad-witness-nonstandard", "{details}");
    node.submit(spend.clone(), None).unwrap();
    // Another unknown witness program stays non-standard to spend (reserved for upgrades).
    let other = TxOut {
        value: Amount::from_sat(1_000),
        script_pubkey: ScriptBuf::from_bytes(vec![0x51, 0x02, 0x4e, 0x74]),
    };
    let t = tx(Version::TWO, &coins[2..3], vec![other, out(998_000, miner_spk())]);
    node.submit(t.clone(), None).unwrap();
    node.mine(1, &miner_spk()).unwrap();
    let spend_other = tx(Version::TWO, &[coin(&t, 0), coin(&t, 1)], outs(1, 998_000));
    let (details, _) = refused(node.submit(spend_other, None));
    assert!(details.contains("Witness version reserved for soft-fork upgrades"), "{details}");
}

/// A zero-fee version-3 parent with a 0-sat anchor (ephemeral dust) and an output to the
/// miner, as a dispute channel's trigger is; and a child spending the anchor and a coin.
fn dust_parent_and_child(coins: &[Coin], child_fee: u64) -> (Transaction, Transaction) {
    let parent = tx(V3, &coins[..1], vec![out(1_000_000, miner_spk()), p2a(0)]);
    let child = tx(V3, &[coin(&parent, 1), coins[1].clone()], outs(1, 1_000_000 - child_fee));
    (parent, child)
}

#[test]
fn zero_fee_parent_alone_refused_with_a_child_as_a_package_accepted_and_mined() {
    let (node, coins) = node_with_coins(2);
    let (parent, child) = dust_parent_and_child(&coins, 2_000);
    let (details, reason) = refused(node.submit(parent.clone(), None));
    assert_eq!(reason, "min relay fee not met");
    assert_eq!(details, format!("min relay fee not met, 0 < {}", parent.vsize()));
    // The child alone has no parent to spend.
    assert!(matches!(node.submit(child.clone(), None), Err(NodeError::MissingInputs)));

    let o = node.submit_package(vec![parent.clone(), child.clone()], None).unwrap();
    assert!(o.success(), "{o:?}");
    let package_vsize = (parent.vsize() + child.vsize()) as u64;
    for r in &o.results {
        match r {
            TxOutcome::Accepted { effective_sat_per_kvb, effective_includes, .. } => {
                assert_eq!(*effective_sat_per_kvb, 2_000 * 1_000 / package_vsize);
                assert_eq!(effective_includes, &[parent.compute_wtxid(), child.compute_wtxid()]);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(in_mempool(&node, &parent) && in_mempool(&node, &child));
    // Submitting it again: both already there, a success.
    let again = node.submit_package(vec![parent.clone(), child.clone()], None).unwrap();
    assert!(again.success());
    assert!(again.results.iter().all(|r| matches!(r, TxOutcome::InMempool { .. })));
    // Block assembly takes them by the package's fee rate: both in the next block.
    let hash = node.mine(1, &miner_spk()).unwrap()[0];
    let (block, _) = node.block(&hash).unwrap();
    let mined: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
    assert!(mined.contains(&parent.compute_txid()) && mined.contains(&child.compute_txid()));
    assert!(node.mempool_txids().is_empty());
}

#[test]
fn a_package_whose_child_cannot_pay_for_both_is_refused() {
    let (node, coins) = node_with_coins(2);
    let (parent, child) = dust_parent_and_child(&coins, 150);
    let total = (parent.vsize() + child.vsize()) as u64;
    assert!(150 < total, "the child pays less than the package's size");
    let o = node.submit_package(vec![parent.clone(), child.clone()], None).unwrap();
    assert_eq!(o.message, "transaction failed");
    assert_eq!(error_of(&o, child.compute_txid()), format!("min relay fee not met, 150 < {total}"));
    assert_eq!(
        error_of(&o, parent.compute_txid()),
        format!("min relay fee not met, 0 < {}", parent.vsize())
    );
    assert!(node.mempool_txids().is_empty(), "all or nothing");
}

#[test]
fn ephemeral_dust_must_be_spent_by_the_child() {
    let (node, coins) = node_with_coins(3);
    let (parent, child) = dust_parent_and_child(&coins, 2_000);
    // A child spending the parent's other output but not its dust.
    let leaves_dust = tx(V3, &[coin(&parent, 0)], outs(1, 998_000));
    let o = node.submit_package(vec![parent.clone(), leaves_dust.clone()], None).unwrap();
    assert_eq!(o.message, "unspent-dust");
    assert_eq!(
        error_of(&o, leaves_dust.compute_txid()),
        format!(
            "missing-ephemeral-spends, tx {} (wtxid={}) did not spend parent's ephemeral dust",
            leaves_dust.compute_txid(),
            leaves_dust.compute_wtxid()
        )
    );
    assert!(node.mempool_txids().is_empty());
    // Dust in a transaction that pays a fee: refused, so it is never mined without its child.
    let paying = tx(V3, &coins[2..3], vec![out(990_000, miner_spk()), p2a(0)]);
    let (details, _) = refused(node.submit(paying, None));
    assert_eq!(details, "dust, tx with dust output must be 0-fee");
    // Two dust outputs: refused as dust outright.
    let twice = tx(V3, &coins[2..3], vec![out(1_000_000, miner_spk()), p2a(0), p2a(0)]);
    assert_eq!(refused(node.submit(twice, None)).1, "dust");

    // Accepted with a child that spends the dust; a replacement child that leaves it unspent
    // is refused even when it pays more.
    assert!(node.submit_package(vec![parent.clone(), child.clone()], None).unwrap().success());
    let replacement = tx(V3, &[coin(&parent, 0)], outs(1, 900_000));
    let (details, reason) = refused(node.submit(replacement, None));
    assert_eq!(reason, "missing-ephemeral-spends", "{details}");
    assert!(in_mempool(&node, &child));
}

#[test]
fn testmempoolaccept_judges_each_transaction_of_a_package_by_its_own_fee_rate() {
    let (node, coins) = node_with_coins(2);
    // A chain of two paying transactions: both allowed, nothing added.
    let a = tx(V3, &coins[..1], outs(1, 998_000));
    let b = tx(V3, &[coin(&a, 0)], outs(1, 996_000));
    let o = node.test_package(vec![a.clone(), b.clone()]).unwrap();
    assert!(o.success(), "{o:?}");
    assert!(o.results.iter().all(|r| matches!(r, TxOutcome::Accepted { .. })));
    assert!(node.mempool_txids().is_empty());
    // A zero-fee parent: refused by its own fee rate (Core's test accept uses no package fee
    // rate), its child unevaluated.
    let (parent, child) = dust_parent_and_child(&coins, 2_000);
    let o = node.test_package(vec![parent.clone(), child.clone()]).unwrap();
    assert_eq!(o.message, "transaction failed");
    assert_eq!(
        error_of(&o, parent.compute_txid()),
        format!("min relay fee not met, 0 < {}", parent.vsize())
    );
    assert!(matches!(o.results[1], TxOutcome::Unevaluated { .. }));
    // Not sorted: a package-level error.
    let o = node.test_package(vec![b, a]).unwrap();
    assert!(o.package_error);
    assert_eq!(o.message, "package-not-sorted");
}

#[test]
fn submitpackage_wants_a_child_with_its_parents() {
    let (node, coins) = node_with_coins(2);
    let a = tx(V3, &coins[..1], outs(1, 998_000));
    let unrelated = tx(V3, &coins[1..2], outs(1, 998_000));
    let e = node.submit_package(vec![a, unrelated], None).unwrap_err();
    assert!(matches!(e, NodeError::InvalidPackage(_)), "{e:?}");
    assert_eq!(e.rpc_code(), -25);
    assert!(e.to_string().contains("not child-with-parents"), "{e}");
    assert!(matches!(node.submit_package(vec![], None), Err(NodeError::InvalidParameter(_))));
}

#[test]
fn a_package_disconnected_by_a_reorg_returns_to_the_mempool_whole() {
    let (node, coins) = node_with_coins(2);
    let (parent, child) = dust_parent_and_child(&coins, 2_000);
    assert!(node.submit_package(vec![parent.clone(), child.clone()], None).unwrap().success());
    let hash = node.mine(1, &miner_spk()).unwrap()[0];
    assert!(node.mempool_txids().is_empty());
    // The zero-fee parent comes back although it could not enter alone (Core re-admits a
    // disconnected block's transactions without the relay fee), and its child with it.
    node.invalidate_block(hash).unwrap();
    assert!(in_mempool(&node, &parent) && in_mempool(&node, &child));
}
