//! A dispute channel's transactions (DESIGN §3a) checked by Bitcoin Core's interpreter and
//! accepted by the embedded node under Core 28/29's relay rules: the trigger with the
//! merchant's settlement as a package, the trigger with the customer's exit child and the
//! refund after the dispute period, the merchant's settlement replacing the customer's exit
//! child, the cooperative close.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Sequence, Transaction, TxOut, Weight};
use paychan_core::policy::DEFAULT_DUST_RELAY_FEE;
use paychan_core::script::ChannelScript;
use paychan_core::tx::dispute;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::recognise::{find_channel_spend, find_funding_spend, Role};
use paychan_core::tx::refund::{build_refund, build_refund_with};
use paychan_core::tx::settlement::{build_settlement_with_parent, WalletInput};
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_core::verify::verify_input;
use paychan_harness::fixtures::{customer_key, customer_keypair, merchant_key, p2wpkh, pubkey};
use paychan_node::{Node, NodeError};

const CSV: u16 = 10;
const DEPOSIT: u64 = 500_000;

fn rate(sat_per_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_per_vb).unwrap()
}

/// Verifies every input of `tx` with Core's interpreter and the standardness rules.
fn verified(tx: &Transaction, spent: &[TxOut]) {
    for i in 0..tx.input.len() {
        let v = verify_input(tx, i, &spent[i], Some(spent));
        assert!(v.valid && v.standard, "input {i}: {v:?}");
    }
}

struct Channel {
    node: Node,
    funding_out: TxOut,
    trigger: Transaction,
    params: ChannelParams,
    /// A confirmed coin of the miner's for fees.
    spare: (OutPoint, TxOut),
}

/// A dispute channel funded and confirmed, its trigger signed by both.
fn open() -> Channel {
    let node = funded_node(1);
    let coins = split(&node, 1, 2, 1_000_000);
    let script =
        ChannelScript::dispute(pubkey(&merchant_key()), pubkey(&customer_key()), CSV).unwrap();
    let funding_out = TxOut {
        value: Amount::from_sat(DEPOSIT),
        script_pubkey: dispute::funding_script_pubkey(&script),
    };
    let funding_tx =
        spend(&coins[..1], vec![funding_out.clone(), out(499_000, miner_spk())], &miner_key());
    let funding = FundingOutput::find(&funding_tx, &script).unwrap();
    let params =
        ChannelParams::new(script, funding, p2wpkh(&customer_key()), DEFAULT_DUST_RELAY_FEE)
            .unwrap();
    assert_eq!(params.id(), funding.outpoint, "the channel is known by its funding");
    // T is signed by both before the funding is broadcast.
    let unsigned = dispute::trigger(&params).unwrap();
    let by_merchant = dispute::sign(&params, &unsigned, &merchant_key()).unwrap();
    let by_customer = dispute::sign(&params, &unsigned, &customer_key()).unwrap();
    let trigger = dispute::complete(&params, unsigned, &by_merchant, &by_customer).unwrap();
    assert_eq!(params.channel_input().txid, trigger.compute_txid(), "payments spend T:0");
    node.submit(funding_tx, None).unwrap();
    node.mine(1, &miner_spk()).unwrap();
    Channel { node, funding_out, trigger, params, spare: coins[1].clone() }
}

/// The customer's exit child of `c`'s trigger, paying 2 sat/vB for both from the spare coin.
fn exit_child(c: &Channel) -> Transaction {
    let coin = WalletInput {
        outpoint: c.spare.0,
        txout: c.spare.1.clone(),
        satisfaction_weight: Weight::from_wu(108),
    };
    let mut exit =
        dispute::exit_child(&c.trigger, std::slice::from_ref(&coin), miner_spk(), rate(2)).unwrap();
    paychan_harness::fixtures::sign_p2wpkh(&mut exit, 1, &c.spare.1, &miner_key());
    exit
}

fn trigger_outputs(c: &Channel) -> Vec<TxOut> {
    c.trigger.output.clone()
}

#[test]
fn the_trigger_is_a_zero_fee_truc_transaction_with_an_anchor_signed_by_both() {
    let c = open();
    let t = &c.trigger;
    assert_eq!(t.version.0, 3);
    assert_eq!(t.output[0].value, Amount::from_sat(DEPOSIT), "zero fee: the whole deposit");
    assert_eq!(t.output[1], dispute::anchor_output());
    assert_eq!(
        t.output[0].script_pubkey,
        c.params.script().script_pubkey(paychan_core::script::OutputKind::P2wsh)
    );
    verified(t, std::slice::from_ref(&c.funding_out));
    let found = find_funding_spend(t).unwrap();
    assert_eq!(
        (found.role, found.merchant, found.customer),
        (Role::Trigger, pubkey(&merchant_key()), pubkey(&customer_key()))
    );
    // A bad signature is refused before anything is assembled.
    let unsigned = dispute::trigger(&c.params).unwrap();
    let by_customer = dispute::sign(&c.params, &unsigned, &customer_key()).unwrap();
    let wrong = dispute::sign(&c.params, &unsigned, &customer_key()).unwrap();
    let e = dispute::complete(&c.params, unsigned.clone(), &wrong, &by_customer).unwrap_err();
    assert!(matches!(e, paychan_core::Error::BadSignature), "{e:?}");
    assert!(dispute::sign(&c.params, &unsigned, &miner_key()).is_err(), "not a channel key");
    // Alone, the trigger cannot enter the mempool: it pays nothing.
    let (_, reason) = match c.node.submit(t.clone(), None) {
        Err(e) => (e.reject_details(), e.reject_reason()),
        Ok(_) => panic!("a zero-fee trigger accepted alone"),
    };
    assert_eq!(reason, "min relay fee not met");
}

#[test]
fn the_merchant_settles_with_the_trigger_as_a_package_at_the_latest_payment() {
    let c = open();
    let total = Amount::from_sat(10_000);
    let sig = sign_payment(&c.params, total, &customer_keypair()).unwrap();
    let settlement = build_settlement_with_parent(
        &c.params,
        total,
        &sig,
        &merchant_key(),
        p2wpkh(&merchant_key()),
        rate(2),
        &[],
        Some(&c.trigger),
    )
    .unwrap();
    assert_eq!(settlement.tx.version.0, 3);
    verified(&settlement.tx, &trigger_outputs(&c));
    let spend = find_channel_spend(&settlement.tx).unwrap();
    assert_eq!((spend.role, spend.script), (Role::Settlement, *c.params.script()));
    // The fee pays for both at 2 sat/vB.
    let vsize = (c.trigger.vsize() + settlement.tx.vsize()) as u64;
    assert!(settlement.fee.to_sat() >= 2 * vsize, "{} < {}", settlement.fee, 2 * vsize);
    let o = c.node.submit_package(vec![c.trigger.clone(), settlement.tx.clone()], None).unwrap();
    assert!(o.success(), "{o:?}");
    c.node.mine(1, &miner_spk()).unwrap();
    assert!(c.node.mempool_txids().is_empty(), "both mined");
    let (mined, at) = c.node.transaction(&settlement.tx.compute_txid()).unwrap();
    assert!(at.is_some());
    assert_eq!(mined.output[0].value, Amount::from_sat(DEPOSIT) - total, "the customer's change");
    assert_eq!(mined.output[1].value, total - settlement.fee, "the merchant's share less the fee");
}

#[test]
fn the_customer_leaves_by_the_trigger_and_its_exit_child_then_refunds_after_the_dispute_period() {
    let c = open();
    let exit = exit_child(&c);
    verified(&exit, &[dispute::anchor_output(), c.spare.1.clone()]);
    let o = c.node.submit_package(vec![c.trigger.clone(), exit.clone()], None).unwrap();
    assert!(o.success(), "{o:?}");
    c.node.mine(1, &miner_spk()).unwrap();
    let (height, _) = c.node.tip();

    let refund =
        build_refund(&c.params, &customer_key(), p2wpkh(&customer_key()), rate(2)).unwrap();
    assert_eq!(refund.input[0].sequence, Sequence::from_height(CSV));
    verified(&refund, &trigger_outputs(&c)[..1]);
    assert_eq!(find_channel_spend(&refund).unwrap().role, Role::Refund);
    assert!(find_funding_spend(&exit).is_none() && find_channel_spend(&exit).is_none());
    // One block short of the dispute period: not yet.
    c.node.mine(u32::from(CSV) - 2, &miner_spk()).unwrap();
    let e = c.node.submit(refund.clone(), None).unwrap_err();
    assert_eq!(e.reject_reason(), "non-BIP68-final");
    c.node.mine(1, &miner_spk()).unwrap();
    c.node.submit(refund.clone(), None).unwrap();
    c.node.mine(1, &miner_spk()).unwrap();
    let (mined, at) = c.node.transaction(&refund.compute_txid()).unwrap();
    assert_eq!(at.unwrap().height, height + u32::from(CSV));
    let fee = Amount::from_sat(DEPOSIT) - mined.output[0].value;
    assert!(fee.to_sat() < 1_000, "the whole deposit less a fee: {fee}");
    // A refund claiming a shorter period is refused by the interpreter.
    let early = build_refund_with(
        &c.params,
        &customer_key(),
        p2wpkh(&customer_key()),
        rate(2),
        LockTime::ZERO,
        Sequence::from_height(CSV - 1),
    )
    .unwrap();
    let v = verify_input(&early, 0, &trigger_outputs(&c)[0], None);
    assert!(!v.valid, "{v:?}");
}

#[test]
fn the_merchants_settlement_replaces_the_customers_exit_child() {
    let c = open();
    let exit = exit_child(&c);
    assert!(c.node.submit_package(vec![c.trigger.clone(), exit.clone()], None).unwrap().success());
    // The trigger is in the mempool: the merchant settles at once. Both children spend the
    // anchor, so the settlement replaces the exit child by the ordinary replacement rules: a
    // higher fee rate than the exit child's own (which paid for the trigger too) and more fee.
    let total = Amount::from_sat(40_000);
    let sig = sign_payment(&c.params, total, &customer_keypair()).unwrap();
    let settle = |rate: FeeRate| {
        build_settlement_with_parent(
            &c.params,
            total,
            &sig,
            &merchant_key(),
            p2wpkh(&merchant_key()),
            rate,
            &[],
            Some(&c.trigger),
        )
        .unwrap()
        .tx
    };
    let cheap = settle(rate(1));
    let e = c.node.submit(cheap, None).unwrap_err();
    assert!(
        matches!(&e, NodeError::Rejected(r) if r.starts_with("insufficient fee, rejecting replacement")),
        "{e}"
    );
    let settlement = settle(rate(10));
    c.node.submit(settlement.clone(), None).unwrap();
    let mempool = c.node.mempool_txids();
    assert!(
        mempool.contains(&settlement.compute_txid()) && !mempool.contains(&exit.compute_txid())
    );
    c.node.mine(1, &miner_spk()).unwrap();
    let (mined, at) = c.node.transaction(&settlement.compute_txid()).unwrap();
    assert!(at.is_some());
    assert_eq!(mined.output[0].value, Amount::from_sat(DEPOSIT) - total);
}

#[test]
fn the_cooperative_close_is_one_transaction_signed_by_both() {
    let c = open();
    let total = Amount::from_sat(10_000);
    let unsigned = dispute::close(&c.params, total, p2wpkh(&merchant_key()), rate(2)).unwrap();
    let by_merchant = dispute::sign(&c.params, &unsigned, &merchant_key()).unwrap();
    let by_customer = dispute::sign(&c.params, &unsigned, &customer_key()).unwrap();
    let close = dispute::complete(&c.params, unsigned, &by_merchant, &by_customer).unwrap();
    verified(&close, std::slice::from_ref(&c.funding_out));
    assert_eq!(find_funding_spend(&close).unwrap().role, Role::Close);
    c.node.submit(close.clone(), None).unwrap();
    c.node.mine(1, &miner_spk()).unwrap();
    let (mined, at) = c.node.transaction(&close.compute_txid()).unwrap();
    assert!(at.is_some());
    assert_eq!(mined.output[0].value, Amount::from_sat(DEPOSIT) - total, "the customer's change");
    let fee = total - mined.output[1].value;
    assert!(fee.to_sat() >= 2 * close.vsize() as u64 && fee.to_sat() < 1_000, "{fee}");
    // The trigger can no longer be broadcast: its input is spent.
    assert!(matches!(c.node.submit(c.trigger.clone(), None), Err(NodeError::MissingInputs)));
}
