//! A dispute channel against a real merchant server on the embedded node: the trigger signed
//! by both before the funding exists (the merchant never broadcasts a funding it was given
//! without witnesses), and the two ways the merchant ends it by itself: when the customer
//! broadcasts the trigger, it settles the latest total at once; when the channel is exhausted,
//! it sends the trigger and its settlement as one package.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::{Amount, OutPoint, Transaction, Weight};
use paychan_core::channel::customer::{CustomerChannel, CustomerTerms};
use paychan_core::channel::{Effect, Phase};
use paychan_core::msg::{self, Message};
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::dispute;
use paychan_core::tx::settlement::WalletInput;
use paychan_harness::fixtures::{customer_key, key, p2wpkh, pubkey, sign_p2wpkh, spend_p2wpkh};
use paychan_store::Role;

const DEPOSIT: u64 = 100_000;

/// A dispute customer for `server`'s offered key, its funding (the coinbase at `height`) built
/// and its `Open` returned.
async fn dispute_customer(s: &Setup, height: u32) -> (CustomerChannel, msg::Open) {
    let w = s
        .server
        .hello(&msg::Hello {
            min_version: 1,
            max_version: msg::PROTOCOL_VERSION,
            user_agent: String::new(),
        })
        .await
        .unwrap();
    assert!(w.version >= msg::DISPUTE_PROTOCOL_VERSION);
    let policy = w.policy.clone().unwrap().to_policy().unwrap();
    let merchant =
        paychan_core::bitcoin::secp256k1::PublicKey::from_slice(&w.merchant_pubkey).unwrap();
    let terms = CustomerTerms {
        script: ChannelScript::dispute(
            merchant,
            pubkey(&customer_key()),
            policy.min_dispute_blocks,
        )
        .unwrap(),
        kind: OutputKind::P2wsh,
        change_script: p2wpkh(&customer_key()),
        dust_relay_fee: policy.dust_relay_fee,
        cutoff_distance: 0,
        key_index: w.key_index,
        customer_key_index: 0,
        peer: String::new(),
    };
    let mut c = CustomerChannel::new(terms, customer_key()).unwrap();
    let coin = coinbase_coin(&s.node, height);
    let change = coin.1.value - Amount::from_sat(DEPOSIT + 1_000);
    let funding = spend_p2wpkh(
        &[coin],
        vec![
            paychan_core::bitcoin::TxOut {
                value: Amount::from_sat(DEPOSIT),
                script_pubkey: c.funding_script_pubkey(),
            },
            paychan_core::bitcoin::TxOut { value: change, script_pubkey: p2wpkh(&key(0x77)) },
        ],
        &key(0x77),
    );
    c.handle_funding_built(funding).unwrap();
    let Message::Open(open) = sends(&mut c).remove(0) else { panic!("no Open") };
    (c, open)
}

/// Runs the customer's effects; its broadcasts go to the node.
fn run_customer(s: &Setup, c: &mut CustomerChannel) {
    while let Some(e) = c.poll_effect() {
        match e {
            Effect::Persist { id, .. } => c.persisted(id).unwrap(),
            Effect::Broadcast(tx) => {
                s.chain.broadcast(&tx).unwrap();
            }
            _ => {}
        }
    }
}

/// Opens a dispute channel with the server and confirms its funding.
async fn open(s: &Setup) -> (CustomerChannel, OutPoint) {
    let (mut c, open) = dispute_customer(s, 1).await;
    assert_eq!(open.dispute_blocks, 144);
    let funding_txid = c.state().funding_tx.as_ref().unwrap().compute_txid();
    let opened = s.server.open(&open).await.unwrap();
    assert!(!opened.trigger_signature.is_empty());
    assert!(
        !s.node.mempool_txids().contains(&funding_txid),
        "the merchant cannot broadcast a funding it got without witnesses"
    );
    c.handle_opened(&opened.trigger_signature).unwrap();
    run_customer(s, &mut c);
    assert!(s.node.mempool_txids().contains(&funding_txid), "the customer broadcasts it");
    s.node.mine(1, &p2wpkh_77()).unwrap();
    s.server.tick().await.unwrap();
    let id = c.id().unwrap();
    assert_eq!(s.server.channel_status(id).await.unwrap().0, Phase::Open);
    // The kind shows in the admin listing and the metrics.
    let listed = s.server.channels().await.unwrap();
    assert_eq!(
        (listed[0].kind(), listed[0].dispute_blocks, listed[0].expiry),
        ("dispute", Some(144), 0)
    );
    let metrics = s.server.metrics_text().await.unwrap();
    assert!(metrics.contains("paychan_channels_by_kind{kind=\"dispute\"} 1"), "{metrics}");
    (c, id)
}

/// The customer leaves alone: `trigger` and an exit child paying for it (from the coinbase
/// at height 2), as one package.
fn customer_triggers(s: &Setup, trigger: &Transaction) {
    let coin = coinbase_coin(&s.node, 2);
    let input = WalletInput {
        outpoint: coin.0,
        txout: coin.1.clone(),
        satisfaction_weight: Weight::from_wu(108),
    };
    let fee = paychan_core::bitcoin::FeeRate::from_sat_per_vb(2).unwrap();
    let mut exit = dispute::exit_child(trigger, &[input], p2wpkh_77(), fee).unwrap();
    sign_p2wpkh(&mut exit, 1, &coin.1, &key(0x77));
    assert!(s.node.submit_package(vec![trigger.clone(), exit], None).unwrap().success());
}

async fn pay(s: &Setup, c: &CustomerChannel, total: u64) {
    s.server.pay(&pay_msg(c, total)).await.unwrap();
}

/// The settlement (or close) the store recorded for `id`, as mined.
async fn closing(s: &Setup, id: OutPoint) -> Transaction {
    let row = s.store.get(id, Role::Merchant).await.unwrap().unwrap();
    let txid = row.closing_txid.unwrap();
    let (tx, at) = s.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "confirmed");
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merchant_settles_the_latest_total_when_the_customer_triggers() {
    let s = setup(110);
    let (c, id) = open(&s).await;
    for total in (1..=20).map(|n| n * 500) {
        pay(&s, &c, total).await;
    }
    // The customer leaves: its trigger and an exit child paying for it, as a package.
    let trigger = c.trigger().unwrap().clone();
    customer_triggers(&s, &trigger);
    s.node.mine(1, &p2wpkh_77()).unwrap();

    // The merchant sees the trigger in the block and settles at once.
    s.server.tick().await.unwrap();
    assert_eq!(s.server.channel_status(id).await.unwrap().0, Phase::Disputed);
    assert_eq!(s.node.mempool_txids().len(), 1, "the settlement is out");
    s.node.mine(1, &p2wpkh_77()).unwrap();
    s.server.tick().await.unwrap();
    assert_eq!(s.server.channel_status(id).await.unwrap().0, Phase::Settled);
    let settlement = closing(&s, id).await;
    assert_eq!(settlement.input[0].previous_output.txid, trigger.compute_txid());
    assert_eq!(settlement.output[0].value, Amount::from_sat(DEPOSIT - 10_000), "the change");
    assert_eq!(settlement.output[1].script_pubkey, p2wpkh(&key(0x55)));
    let merchant = settlement.output[1].value.to_sat();
    assert!((9_000..10_000).contains(&merchant), "the latest total less the fee: {merchant}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merchant_alone_settles_an_exhausted_channel_by_the_trigger_and_a_package() {
    let s = setup(110);
    let (c, id) = open(&s).await;
    // Below the close-out balance: the merchant settles by itself, with the customer gone.
    pay(&s, &c, DEPOSIT - 500).await;
    let trigger = c.trigger().unwrap().clone();
    let mempool = s.node.mempool_txids();
    assert!(mempool.contains(&trigger.compute_txid()), "the trigger went out: {mempool:?}");
    assert_eq!(mempool.len(), 2, "with its settlement, as one package");
    assert_eq!(s.server.channel_status(id).await.unwrap().0, Phase::Disputed);
    s.node.mine(1, &p2wpkh_77()).unwrap();
    assert!(s.node.mempool_txids().is_empty(), "both mined");
    s.server.tick().await.unwrap();
    s.server.tick().await.unwrap();
    assert_eq!(s.server.channel_status(id).await.unwrap().0, Phase::Settled);
    let settlement = closing(&s, id).await;
    assert_eq!(settlement.input.len(), 2, "the channel output and the anchor");
    assert_eq!(settlement.output[0].value, Amount::from_sat(500), "the customer's change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_restarted_during_the_dispute_period_still_settles() {
    let s = setup(110);
    let (c, id) = open(&s).await;
    pay(&s, &c, 7_000).await;
    // The merchant stops; the customer triggers meanwhile (its trigger and exit child mined).
    drop(s.server.clone());
    customer_triggers(&s, c.trigger().unwrap());
    s.node.mine(3, &p2wpkh_77()).unwrap();
    // A new server over the same store and key chain: it finds the trigger and settles.
    let again = server_on(&s.dir, s.store.clone(), s.chain.clone(), s.clock.clone());
    assert_eq!(again.load().await.unwrap(), 1);
    again.tick().await.unwrap();
    assert_eq!(again.channel_status(id).await.unwrap().0, Phase::Disputed);
    s.node.mine(1, &p2wpkh_77()).unwrap();
    again.tick().await.unwrap();
    assert_eq!(again.channel_status(id).await.unwrap().0, Phase::Settled);
    let settlement = closing(&s, id).await;
    assert_eq!(settlement.output[0].value, Amount::from_sat(DEPOSIT - 7_000));
}
