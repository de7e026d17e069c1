//! The merchant keeps in memory the channels in use, not every stored one (ADR 0028): an idle
//! channel leaves memory past the cache's bound and comes back from the store when used; a
//! restarted merchant loads nothing open, yet settles an untouched channel when it falls due;
//! listings and metrics count from the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::Amount;
use paychan_core::channel::Phase;
use paychan_core::policy::Policy;
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_merchant::{ChannelServer, ServerConfig};
use paychan_store::Role;

/// The merchant of `w` again on its own store, chain cursor and keys (a restart), keeping at
/// most `max_live` idle channels.
fn restarted(w: &paychan_harness::World, max_live: usize) -> ChannelServer {
    let keys =
        w.merchant_wallet.lock().unwrap().key_chain(paychan_wallet::KeyChain::MERCHANT).unwrap();
    let config = ServerConfig {
        max_live_channels: max_live,
        ..ServerConfig::new(Policy::default(), p2wpkh(&key(0x55)))
    };
    ChannelServer::new(config, keys, w.merchant_store.clone(), w.chain.clone(), w.clock.clone())
        .unwrap()
        .with_chain_cursor(w.dir.join("merchant-chain.cursor"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_nobody_touched_since_the_restart_is_settled_on_time() {
    let w = paychan_harness::World::builder().start().await.unwrap();
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), Some(86_400)).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay(id, Amount::from_sat(4_000)).await.unwrap();
    let expiry = u64::from(w.customer.status(id).await.unwrap().expiry);
    w.stop_merchant().await;

    let server = restarted(&w, 16);
    assert_eq!(server.load().await.unwrap(), 1, "one live channel in the store");
    assert_eq!(server.channels_in_memory(), 0, "an open channel is not loaded at the start");
    // Ticks before its deadline look it up once (the start-up sweep) and leave it in the store.
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    server.tick().await.unwrap();
    server.tick().await.unwrap();
    assert_eq!(server.channels_in_memory(), 0);
    assert_eq!(w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);

    // At expiry − settle margin, the store's expiry index brings it back and it is settled.
    let margin = u64::from(Policy::default().settle_margin_secs);
    w.node.set_mock_time(expiry - margin - 60).unwrap();
    server.tick().await.unwrap();
    assert_eq!(w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);
    w.node.set_mock_time(expiry - margin + 1).unwrap();
    server.tick().await.unwrap();
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settling, "settled at its deadline, never touched before");
    let settlement = row.closing_txid.unwrap();
    assert!(w.node.mempool_txids().contains(&settlement));
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    server.tick().await.unwrap();
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    let (tx, _) = w.node.transaction(&settlement).unwrap();
    let to_merchant = tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    assert_eq!(to_merchant.value + fee, Amount::from_sat(4_000), "the stored total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_channels_leave_memory_past_the_bound_and_come_back_when_used() {
    const CAP: usize = 3;
    const CHANNELS: usize = 9;
    let w = paychan_harness::World::builder().max_live_channels(CAP).start().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..CHANNELS {
        let id = w.customer.open(&w.peer, Amount::from_sat(50_000), Some(86_400)).await.unwrap();
        w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
        ids.push(id);
    }
    // Deep enough never to be looked at again: idle once the tick saw it.
    w.node
        .mine(paychan_core::channel::settlement::REORG_SAFETY_DEPTH, &p2wpkh(&key(0x77)))
        .unwrap();
    w.server.tick().await.unwrap();
    assert!(w.server.channels_in_memory() <= CAP, "{} in memory", w.server.channels_in_memory());

    // Each channel paid twice, round after round: the evicted ones come back from the store,
    // and memory stays within the bound (plus the one in use).
    for round in 1..=2u64 {
        for (n, id) in ids.iter().enumerate() {
            let total = Amount::from_sat(round * 1_000 + n as u64);
            w.customer.pay(*id, total - w.customer.status(*id).await.unwrap().acked).await.unwrap();
            assert!(w.server.channels_in_memory() <= CAP + 1);
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let row = w.merchant_store.get(*id, Role::Merchant).await.unwrap().unwrap();
        assert_eq!(row.total, Amount::from_sat(2_000 + n as u64), "every payment stored");
        let history = w.merchant_store.payments(*id, Role::Merchant).await.unwrap();
        assert!(history.windows(2).all(|p| p[0].total < p[1].total));
    }

    // Listings and metrics count every channel, from the store.
    let listed = w.server.channels().await.unwrap();
    assert_eq!(listed.len(), CHANNELS);
    assert!(listed.iter().all(|c| c.phase == Phase::Open && c.paid >= Amount::from_sat(2_000)));
    let metrics = w.server.metrics_text().await.unwrap();
    assert!(
        metrics.contains(&format!("paychan_channels{{phase=\"open\"}} {CHANNELS}")),
        "{metrics}"
    );
    let in_memory = metrics
        .lines()
        .find_map(|l| l.strip_prefix("paychan_channels_in_memory "))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap();
    assert!(in_memory <= CAP + 1);

    // A close reaches an evicted channel too.
    let first = ids[0];
    let txid = w.customer.close(first).await.unwrap();
    assert!(w.node.mempool_txids().contains(&txid));
}
