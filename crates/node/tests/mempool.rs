//! Mempool acceptance, block assembly and chain rules of the embedded node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Sequence, TxOut};
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::refund::build_refund;
use paychan_core::tx::settlement::build_settlement;
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_harness::fixtures::{
    channel_script, customer_key, customer_keypair, merchant_key, p2wpkh,
};
use paychan_node::{Node, NodeError};

fn rejected(r: Result<impl std::fmt::Debug, NodeError>) -> String {
    match r {
        Err(e) => e.reject_details(),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

/// Funds a channel expiring at `expiry` from the coinbase at `height`; returns its params.
fn open_channel(node: &Node, height: u32, expiry: u32, kind: OutputKind) -> ChannelParams {
    let script = channel_script(expiry);
    let coin = coinbase_coin(node, height);
    let change = coin.1.value.to_sat() - 100_000 - 1_000;
    let funding = spend(
        &[coin],
        vec![
            TxOut { value: Amount::from_sat(100_000), script_pubkey: script.script_pubkey(kind) },
            out(change, miner_spk()),
        ],
        &miner_key(),
    );
    node.submit(funding.clone(), None).unwrap();
    node.mine(1, &miner_spk()).unwrap();
    let f = FundingOutput::find(&funding, &script).unwrap();
    ChannelParams::new(
        script,
        f,
        p2wpkh(&customer_key()),
        paychan_core::policy::DEFAULT_DUST_RELAY_FEE,
    )
    .unwrap()
}

#[test]
fn refund_is_non_final_before_expiry_and_mined_after() {
    for kind in [OutputKind::P2wsh, OutputKind::P2sh] {
        let node = funded_node(0);
        let now = node.now() as u32;
        let expiry = now + 3_600;
        let params = open_channel(&node, 1, expiry, kind);
        let fee = FeeRate::from_sat_per_vb(2).unwrap();
        let refund = build_refund(&params, &customer_key(), p2wpkh(&customer_key()), fee).unwrap();
        assert_eq!(rejected(node.submit(refund.clone(), None)), "non-final");
        // Past the expiry by the wall clock, but median-time-past lags: still non-final.
        node.set_mock_time(u64::from(expiry) + 1).unwrap();
        node.mine(1, &miner_spk()).unwrap();
        assert_eq!(rejected(node.submit(refund.clone(), None)), "non-final");
        // Six more blocks at the new time move median-time-past past the expiry.
        node.mine(6, &miner_spk()).unwrap();
        assert!(node.median_time_past() > expiry);
        let txid = node.submit(refund.clone(), None).unwrap();
        node.mine(1, &miner_spk()).unwrap();
        let (_, loc) = node.transaction(&txid).unwrap();
        assert!(loc.is_some(), "{kind}: refund mined");
        assert!(node.utxo(&params.id(), true).is_none(), "funding spent");
    }
}

#[test]
fn payment_settlement_is_accepted_and_mined() {
    for kind in [OutputKind::P2wsh, OutputKind::P2sh] {
        let node = funded_node(0);
        let expiry = node.now() as u32 + 86_400;
        let params = open_channel(&node, 1, expiry, kind);
        let total = Amount::from_sat(10_000);
        let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
        let fee = node.estimate_fee(6);
        let s = build_settlement(
            &params,
            total,
            &sig,
            &merchant_key(),
            p2wpkh(&merchant_key()),
            fee,
            &[],
        )
        .unwrap();
        let txid = node.submit(s.tx.clone(), None).unwrap();
        node.mine(1, &miner_spk()).unwrap();
        assert!(node.transaction(&txid).unwrap().1.is_some(), "{kind}: settlement mined");
        let change = node.utxo(&OutPoint { txid, vout: 0 }, true).unwrap();
        assert_eq!(change.0.value, Amount::from_sat(90_000));
        assert_eq!(change.0.script_pubkey, p2wpkh(&customer_key()));
    }
}

#[test]
fn dust_output_is_rejected() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let tx = spend(
        &[coin],
        vec![out(293, miner_spk()), out(v - 293 - 1_000, miner_spk())],
        &miner_key(),
    );
    // Core 29: one dust output is allowed only as ephemeral dust, in a transaction paying no
    // fee (see relay_rules.rs).
    assert_eq!(rejected(node.submit(tx, None)), "dust, tx with dust output must be 0-fee");
}

#[test]
fn fee_below_one_sat_per_vbyte_is_rejected() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let tx = spend(std::slice::from_ref(&coin), vec![out(v - 50, miner_spk())], &miner_key());
    let reason = rejected(node.submit(tx.clone(), None));
    assert!(reason.starts_with("min relay fee not met, 50 < "), "{reason}");
    // 1 sat/vB of the refused one's size, plus 1 sat: the new signature may be a byte longer
    // (DER length varies), which can add a vbyte.
    let ok = spend(&[coin], vec![out(v - tx.vsize() as u64 - 1, miner_spk())], &miner_key());
    node.submit(ok, None).unwrap();
}

#[test]
fn double_spend_is_rejected_and_replacement_needs_more_fee() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let first = spend(std::slice::from_ref(&coin), vec![out(v - 1_000, miner_spk())], &miner_key());
    node.submit(first.clone(), None).unwrap();
    // Same fee to another address: refused.
    let same_fee = spend(
        std::slice::from_ref(&coin),
        vec![out(v - 1_000, p2wpkh(&merchant_key()))],
        &miner_key(),
    );
    let r = rejected(node.submit(same_fee, None));
    assert!(r.starts_with("insufficient fee"), "{r}");
    // More fee, but not enough to pay for its own relay: refused.
    let bit_more = spend(
        std::slice::from_ref(&coin),
        vec![out(v - 1_050, p2wpkh(&merchant_key()))],
        &miner_key(),
    );
    let r = rejected(node.submit(bit_more, None));
    assert!(r.contains("not enough additional fees to relay"), "{r}");
    // Enough more: replaces.
    let better = spend(&[coin], vec![out(v - 2_000, p2wpkh(&merchant_key()))], &miner_key());
    let txid = node.submit(better, None).unwrap();
    assert_eq!(node.mempool_txids(), vec![txid]);
    // Spending an output that was already confirmed and spent: missing inputs.
    node.mine(1, &miner_spk()).unwrap();
    let again = spend(&[coinbase_coin(&node, 1)], vec![out(v - 5_000, miner_spk())], &miner_key());
    assert!(matches!(node.submit(again, None), Err(NodeError::MissingInputs)));
    // Re-sending a confirmed transaction.
    assert!(matches!(node.submit(first, None), Err(NodeError::MissingInputs)));
}

#[test]
fn immature_coinbase_spend_is_rejected() {
    let node = funded_node(0);
    let (h, _) = node.tip();
    let coin = coinbase_coin(&node, h - 98);
    let v = coin.1.value.to_sat();
    let tx = spend(&[coin], vec![out(v - 1_000, miner_spk())], &miner_key());
    assert_eq!(rejected(node.submit(tx, None)), "bad-txns-premature-spend-of-coinbase");
}

#[test]
fn bad_signature_is_rejected_with_cores_reason() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let mut tx = spend(&[coin], vec![out(v - 1_000, miner_spk())], &miner_key());
    tx.output[0].value -= Amount::from_sat(1); // invalidates the signature
    let r = rejected(node.submit(tx, None));
    assert!(r.starts_with("mandatory-script-verify-flag-failed"), "{r}");
}

#[test]
fn cpfp_child_gets_its_parent_mined() {
    let node = funded_node(1);
    let coins = split(&node, 1, 8, 100_000);
    // Parent at the minimum fee rate, child paying a lot.
    let parent = spend(&coins[..1], vec![out(100_000 - 110, miner_spk())], &miner_key());
    let parent_id = node.submit(parent.clone(), None).unwrap();
    let p_out = (OutPoint { txid: parent_id, vout: 0 }, parent.output[0].clone());
    let child = spend(&[p_out], vec![out(100_000 - 110 - 20_000, miner_spk())], &miner_key());
    let child_id = node.submit(child, None).unwrap();
    // Unrelated transactions at a middling fee rate.
    let mut others = Vec::new();
    for c in &coins[1..] {
        others.push(
            node.submit(
                spend(
                    std::slice::from_ref(c),
                    vec![out(100_000 - 2_000, miner_spk())],
                    &miner_key(),
                ),
                None,
            )
            .unwrap(),
        );
    }
    // A block with room for about four small transactions.
    node.set_block_max_weight(4_000 + 4 * 4 * 115);
    let hash = node.mine(1, &miner_spk()).unwrap()[0];
    let (block, _) = node.block(&hash).unwrap();
    let txids: Vec<_> = block.txdata.iter().map(|t| t.compute_txid()).collect();
    assert!(txids.contains(&parent_id), "the parent rides on its child's fee");
    assert!(txids.contains(&child_id));
    let pos = |t| txids.iter().position(|x| *x == t).unwrap();
    assert!(pos(parent_id) < pos(child_id));
    assert!(others.iter().any(|t| !txids.contains(t)), "the block was full");
}

#[test]
fn sequence_locks_and_locktime_are_enforced() {
    let node = funded_node(1);
    let coins = split(&node, 1, 2, 100_000);
    // BIP 68: a relative lock of 5 blocks on a coin with 1 confirmation.
    let rel = spend_with(
        &coins[..1],
        vec![out(99_000, miner_spk())],
        &miner_key(),
        Version::TWO,
        LockTime::ZERO,
        Sequence::from_height(5),
    );
    assert_eq!(rejected(node.submit(rel.clone(), None)), "non-BIP68-final");
    node.mine(4, &miner_spk()).unwrap();
    node.submit(rel, None).unwrap();
    // nLockTime at a future height.
    let (h, _) = node.tip();
    let lt = spend_with(
        &coins[1..],
        vec![out(99_000, miner_spk())],
        &miner_key(),
        Version::TWO,
        LockTime::from_consensus(h + 2),
        Sequence::ENABLE_LOCKTIME_NO_RBF,
    );
    assert_eq!(rejected(node.submit(lt.clone(), None)), "non-final");
    node.mine(1, &miner_spk()).unwrap();
    // Final once nLockTime is below the next block's height (Core's IsFinalTx at the tip).
    assert_eq!(rejected(node.submit(lt.clone(), None)), "non-final");
    node.mine(1, &miner_spk()).unwrap();
    node.submit(lt, None).unwrap();
}

#[test]
fn invalidate_and_reconsider_move_the_chain_and_the_mempool() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let tx = spend(&[coin], vec![out(v - 1_000, miner_spk())], &miner_key());
    let txid = node.submit(tx, None).unwrap();
    let (h0, _) = node.tip();
    let block = node.mine(1, &miner_spk()).unwrap()[0];
    assert!(node.mempool_txids().is_empty());
    node.invalidate_block(block).unwrap();
    assert_eq!(node.tip().0, h0);
    assert_eq!(node.mempool_txids(), vec![txid], "back in the mempool");
    assert_eq!(node.block(&block).unwrap().1.confirmations, -1);
    node.reconsider_block(block).unwrap();
    assert_eq!(node.tip(), (h0 + 1, block));
    assert!(node.mempool_txids().is_empty());
    assert!(node.transaction(&txid).unwrap().1.is_some());
}

#[test]
fn a_longer_branch_wins_after_invalidation() {
    let node = funded_node(0);
    let (h, tip) = node.tip();
    let a = node.mine(2, &miner_spk()).unwrap();
    node.invalidate_block(a[0]).unwrap();
    assert_eq!(node.tip(), (h, tip));
    let b = node.mine(3, &miner_spk()).unwrap();
    assert_eq!(node.tip(), (h + 3, b[2]));
    // Reconsidering the shorter branch does not displace the longer one.
    node.reconsider_block(a[0]).unwrap();
    assert_eq!(node.tip(), (h + 3, b[2]));
    assert_eq!(node.block(&a[1]).unwrap().1.confirmations, -1);
}

#[test]
fn restart_keeps_chain_utxos_and_mempool() {
    let dir = tempfile::tempdir().unwrap();
    let (tip, digest, mempool) = {
        let node = Node::open(dir.path()).unwrap();
        node.mine(105, &miner_spk()).unwrap();
        let coin = coinbase_coin(&node, 1);
        let v = coin.1.value.to_sat();
        node.submit(spend(&[coin], vec![out(v - 1_000, miner_spk())], &miner_key()), None).unwrap();
        let invalid = node.mine(2, &miner_spk()).unwrap();
        node.invalidate_block(invalid[1]).unwrap();
        let coin = coinbase_coin(&node, 2);
        let v = coin.1.value.to_sat();
        node.submit(spend(&[coin], vec![out(v - 1_000, miner_spk())], &miner_key()), None).unwrap();
        node.set_mock_time(1_900_000_000).unwrap();
        (node.tip(), node.utxo_set_digest(), node.mempool_txids())
        // dropped without any shutdown step, as a killed process would be
    };
    let node = Node::open(dir.path()).unwrap();
    assert_eq!(node.tip(), tip);
    assert_eq!(node.utxo_set_digest(), digest);
    assert_eq!(node.mempool_txids(), mempool);
    assert_eq!(node.now(), 1_900_000_000);
}

#[test]
fn maxfeerate_is_enforced_before_scripts_run() {
    let node = funded_node(0);
    let coin = coinbase_coin(&node, 1);
    let v = coin.1.value.to_sat();
    let tx = spend(&[coin], vec![out(v - 5_000, miner_spk())], &miner_key());
    let cap = FeeRate::from_sat_per_vb(10).unwrap();
    assert!(matches!(node.submit(tx.clone(), Some(cap)), Err(NodeError::MaxFeeExceeded)));
    assert!(node.mempool_txids().is_empty(), "a refused transaction changes nothing");
    node.submit(tx, Some(FeeRate::from_sat_per_vb(100).unwrap())).unwrap();
}
