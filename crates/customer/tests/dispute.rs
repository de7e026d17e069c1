//! Dispute channels between a real customer and a real merchant over loopback TCP (BOLT 8),
//! each with its own wallet and store, on the embedded node: the cooperative close (one
//! transaction), the force close with the merchant running (it settles the latest total), and
//! the force close with the merchant gone (the refund after the dispute period).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::{Amount, OutPoint, Transaction};
use paychan_core::channel::Phase;
use paychan_core::policy::Policy;
use paychan_customer::ChannelKind;
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_harness::World;
use paychan_store::Role;

/// A dispute period short enough for a test (the policy allows it; 144 by default).
const CSV: u16 = 10;

async fn world() -> World {
    let policy = Policy { min_dispute_blocks: CSV, ..Policy::default() };
    World::builder().policy(policy).start().await.unwrap()
}

fn mine(w: &World, n: u32) {
    w.node.mine(n, &p2wpkh(&key(0x77))).unwrap();
}

/// Opens a 100,000 sat dispute channel and confirms it; pays `total` in 10 sat payments.
async fn open_and_pay(w: &World, total: u64) -> OutPoint {
    let kind = ChannelKind::Dispute { blocks: None };
    let id = w.customer.open_kind(&w.peer, Amount::from_sat(100_000), kind).await.unwrap();
    assert!(w.node.mempool_txids().contains(&id.txid), "the customer broadcast its funding");
    mine(w, 1);
    w.server.tick().await.unwrap();
    let s = w.customer.status(id).await.unwrap();
    assert_eq!((s.dispute_blocks, s.expiry), (Some(CSV), 0), "no expiry");
    for _ in 0..total / 1_000 {
        w.customer.pay_many(id, &[Amount::from_sat(10); 100]).await.unwrap();
    }
    assert_eq!(w.customer.status(id).await.unwrap().acked, Amount::from_sat(total));
    id
}

fn mined(w: &World, txid: &paychan_core::bitcoin::Txid) -> Transaction {
    let (tx, at) = w.node.transaction(txid).unwrap();
    assert!(at.is_some(), "{txid} is mined");
    tx
}

async fn merchant_phase(w: &World, id: OutPoint) -> Phase {
    w.server.channel_status(id).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_close_is_one_transaction_paying_the_latest_total() {
    let w = world().await;
    let id = open_and_pay(&w, 10_000).await;
    let txid = w.customer.close(id).await.unwrap();
    assert_eq!(w.node.mempool_txids(), vec![txid], "the customer broadcast the close");
    mine(&w, 1);
    w.server.tick().await.unwrap();
    w.customer.tick().await.unwrap();
    assert_eq!(merchant_phase(&w, id).await, Phase::Settled);
    assert_eq!(w.customer.status(id).await.unwrap().phase, Phase::Settled);
    let close = mined(&w, &txid);
    assert_eq!(close.input.len(), 1);
    assert_eq!(close.input[0].previous_output, id, "the funding, directly: no trigger");
    assert_eq!(close.output[0].value, Amount::from_sat(90_000), "the customer's change");
    let fee = 10_000 - close.output[1].value.to_sat();
    assert!(fee > 0 && fee < 1_000, "the merchant's 10,000 sat less the fee: {fee}");
    // Over: no force close, and no coin of the wallet is taken for one.
    w.customer_wallet.lock().unwrap().sync(&*w.chain).unwrap();
    let before = w.customer_wallet.lock().unwrap().balance();
    assert!(w.customer.force_close(id).await.is_err());
    assert_eq!(w.customer_wallet.lock().unwrap().balance(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_close_with_the_merchant_running_pays_the_merchant_the_latest_total() {
    let w = world().await;
    let id = open_and_pay(&w, 5_000).await;
    w.customer_wallet.lock().unwrap().sync(&*w.chain).unwrap();
    let trigger = w.customer.force_close(id).await.unwrap();
    assert_eq!(w.node.mempool_txids().len(), 2, "the trigger and its exit child");
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err(), "no payment after it");
    mine(&w, 1);
    mined(&w, &trigger);
    // The merchant sees the trigger and settles the latest payment at once.
    w.server.tick().await.unwrap();
    assert_eq!(merchant_phase(&w, id).await, Phase::Disputed);
    mine(&w, 1);
    w.server.tick().await.unwrap();
    w.customer.tick().await.unwrap();
    assert_eq!(merchant_phase(&w, id).await, Phase::Settled);
    assert_eq!(w.customer.status(id).await.unwrap().phase, Phase::Settled);
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    let settlement = mined(&w, &row.closing_txid.unwrap());
    assert_eq!(settlement.input[0].previous_output.txid, trigger);
    assert_eq!(settlement.output[0].value, Amount::from_sat(95_000), "the customer's change");
    assert!(settlement.output[1].value.to_sat() > 4_000, "the merchant's 5,000 less the fee");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_close_with_the_merchant_gone_refunds_after_the_dispute_period() {
    let w = world().await;
    let id = open_and_pay(&w, 3_000).await;
    w.stop_merchant().await;
    w.customer_wallet.lock().unwrap().sync(&*w.chain).unwrap();
    let trigger = w.customer.force_close(id).await.unwrap();
    mine(&w, 1);
    let at = w.node.tip().0;
    // Nothing to refund before the period: the trigger's output is locked CSV blocks.
    for _ in 1..CSV {
        assert!(w.customer.tick().await.unwrap().is_empty());
        mine(&w, 1);
    }
    let refunds = w.customer.tick().await.unwrap();
    assert_eq!(refunds.len(), 1, "refund due once the trigger has {CSV} confirmations");
    assert_eq!(w.node.tip().0, at + u32::from(CSV) - 1);
    mine(&w, 1);
    w.customer.tick().await.unwrap();
    assert_eq!(w.customer.status(id).await.unwrap().phase, Phase::Refunded);
    let refund = mined(&w, &refunds[0]);
    assert_eq!(refund.input[0].previous_output.txid, trigger);
    let back = refund.output[0].value.to_sat();
    assert!(back > 99_000 && back < 100_000, "the whole deposit less the refund's fee: {back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_channel_stays_payable_across_2000_blocks_and_90_days() {
    let w = world().await;
    let id = open_and_pay(&w, 1_000).await;
    // 90 days of (mock) time and 2,000 blocks: no expiry, no settlement forced by anyone.
    let later = w.node.now() + 90 * 86_400;
    w.node.set_mock_time(later).unwrap();
    mine(&w, 2_000);
    w.server.tick().await.unwrap();
    assert!(w.customer.tick().await.unwrap().is_empty(), "no refund");
    assert!(w.node.mempool_txids().is_empty(), "nothing broadcast by either side");
    assert_eq!(merchant_phase(&w, id).await, Phase::Open);
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(1_010));
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(1_010));
}
