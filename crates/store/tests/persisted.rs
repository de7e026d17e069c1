//! The one persisted-channel driver (`Persisted`) against a real SQLite store: persists are
//! coalesced into one write per drain and nothing held behind a write leaves before it; a write
//! that meets another writer's change fails, releases nothing, and reloads the machine from the
//! store, which then goes on from there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::Amount;
use paychan_core::channel::merchant::{MerchantChannel, MerchantState};
use paychan_core::msg::Message;
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::Now;
use paychan_harness::fixtures::{customer_keypair, params_with, EXPIRY, NOW};
use paychan_store::{ChannelStore, Persisted, Role, SqliteStore, Storage, StoreError};

fn restore(bytes: &[u8]) -> Result<MerchantChannel, paychan_core::Error> {
    Ok(MerchantChannel::restore(MerchantState::decode(bytes)?, Policy::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_per_drain_and_a_reload_after_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).unwrap();
    let to = Storage { store: &store, role: Role::Merchant, restore: &restore };
    let now = Now { time: NOW, height: 800_000, median_time_past: NOW as u32 };
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let id = params.id();
    let pay = |p: &mut Persisted<MerchantChannel>, total: u64| {
        let sig = sign_payment(&params, Amount::from_sat(total), &customer_keypair()).unwrap();
        p.channel.handle_payment(&now, id, Amount::from_sat(total), &sig).unwrap();
    };

    let m = MerchantChannel::open(params.clone(), Policy::default(), &now, 0).unwrap();
    let mut p = Persisted::new(m);
    let d = p.drain(&to, &mut |_| {}).await.unwrap();
    assert_eq!((p.version(), d.write_times.len()), (1, 1), "the row is created");

    // A confirmation and three payments: one write, then the three acknowledgements.
    p.channel.handle_funding_confirmations(1);
    for t in [100, 200, 300] {
        pay(&mut p, t);
    }
    let d = p.drain(&to, &mut |_| {}).await.unwrap();
    assert_eq!(d.write_times.len(), 1, "coalesced into one write");
    let acks: Vec<u64> = d
        .sends
        .iter()
        .filter_map(|m| if let Message::PaymentAck(a) = m { Some(a.total_sat) } else { None })
        .collect();
    assert_eq!(acks, vec![100, 200, 300]);
    assert_eq!(d.written.unwrap().accepted, Amount::from_sat(300));
    assert_eq!((p.version(), p.stored_total()), (2, Amount::from_sat(300)));

    // Another writer on the same row takes 400.
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    let mut other = Persisted::stored(restore(&row.state).unwrap(), row.version, row.total);
    pay(&mut other, 400);
    other.drain(&to, &mut |_| {}).await.unwrap();

    // The first one's next write conflicts: nothing released, the machine reloaded.
    pay(&mut p, 500);
    match p.drain(&to, &mut |_| {}).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected a conflict: {other:?}"),
    }
    assert!(p.take_reloaded());
    assert_eq!(p.channel.accepted(), Amount::from_sat(400), "as stored, not as it was");
    assert_eq!(p.stored_total(), Amount::from_sat(400));
    // And it goes on from there.
    pay(&mut p, 500);
    let d = p.drain(&to, &mut |_| {}).await.unwrap();
    assert_eq!(d.sends.len(), 1);
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(500), p.version()));
}

/// A dispute channel's merchant settling alone watches the trigger's output and sends the
/// trigger with its settlement as a package: the drain hands both out (the package after the
/// write it waits for), not only single transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_and_watches_come_out_of_the_drain() {
    use paychan_core::script::ChannelScript;
    use paychan_core::tx::{dispute, ChannelParams, FundingOutput};
    use paychan_harness::fixtures::{customer_key, funding_tx, merchant_key, p2wpkh, pubkey};
    use paychan_store::Broadcast;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).unwrap();
    let to = Storage { store: &store, role: Role::Merchant, restore: &restore };
    let now = Now { time: NOW, height: 800_000, median_time_past: NOW as u32 };
    let script =
        ChannelScript::dispute(pubkey(&merchant_key()), pubkey(&customer_key()), 144).unwrap();
    let tx = funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(1_000_000));
    let funding = FundingOutput::find(&tx, &script).unwrap();
    let params = ChannelParams::new(
        script,
        funding,
        p2wpkh(&customer_key()),
        Policy::default().dust_relay_fee,
    )
    .unwrap();
    let unsigned = dispute::trigger(&params).unwrap();
    let by_customer = dispute::sign(&params, &unsigned, &customer_key()).unwrap();
    let m = MerchantChannel::open_dispute(
        params.clone(),
        Policy::default(),
        &now,
        0,
        &by_customer,
        &merchant_key(),
    )
    .unwrap();
    let trigger = m.state().trigger.clone().unwrap();
    let mut p: Persisted<MerchantChannel> = Persisted::new(m);
    p.drain(&to, &mut |_| {}).await.unwrap();
    p.channel.handle_funding_confirmations(1);
    let sig = sign_payment(&params, Amount::from_sat(5_000), &customer_keypair()).unwrap();
    p.channel.handle_payment(&now, params.id(), Amount::from_sat(5_000), &sig).unwrap();
    p.drain(&to, &mut |_| {}).await.unwrap();

    // The merchant alone (the customer gone) settles by the trigger.
    let fee = paychan_core::bitcoin::FeeRate::from_sat_per_vb(2).unwrap();
    let settlement = p.channel.settle(&merchant_key(), p2wpkh(&merchant_key()), fee, &[]).unwrap();
    let d = p.drain(&to, &mut |_| {}).await.unwrap();
    assert_eq!(d.write_times.len(), 1, "written before it goes out");
    assert_eq!(d.watches, vec![params.channel_input()]);
    assert_eq!(d.broadcasts, vec![Broadcast::Package { parent: trigger, child: settlement.tx }]);
}

fn open_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).unwrap();
    (dir, store)
}

/// A channel opened, confirmed and stored.
async fn open_channel(to: &Storage<'_, MerchantChannel>) -> Persisted<MerchantChannel> {
    let now = Now { time: NOW, height: 800_000, median_time_past: NOW as u32 };
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let m = MerchantChannel::open(params, Policy::default(), &now, 0).unwrap();
    let mut p = Persisted::new(m);
    p.channel.handle_funding_confirmations(1);
    p.drain(to, &mut |_| {}).await.unwrap();
    p
}

/// The merchant's machine takes the customer's payment of `total`.
fn pay(p: &mut Persisted<MerchantChannel>, total: u64) {
    let now = Now { time: NOW, height: 800_000, median_time_past: NOW as u32 };
    let params = p.channel.state().params.clone();
    let sig = sign_payment(&params, Amount::from_sat(total), &customer_keypair()).unwrap();
    p.channel.handle_payment(&now, params.id(), Amount::from_sat(total), &sig).unwrap();
}

fn acks_of<S>(d: &paychan_store::Drained<S>) -> Vec<u64> {
    d.sends
        .iter()
        .filter_map(|m| if let Message::PaymentAck(a) = m { Some(a.total_sat) } else { None })
        .collect()
}

/// The pipelined driver (ADR 0027): run k+1 is checked and its write queued while run k's
/// write is in flight; each landing releases its own run's acknowledgements and nothing of
/// the next; the store holds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_runs_land_in_order_and_release_only_their_own_acks() {
    let (_dir, store) = open_store();
    let to = Storage { store: &store, role: Role::Merchant, restore: &restore };
    let mut p = open_channel(&to).await;
    let id = p.channel.id();
    let v0 = p.version();

    pay(&mut p, 100);
    pay(&mut p, 200);
    let first = p.submit(&to, &mut |_| {});
    assert!(first.released.sends.is_empty(), "nothing leaves before its write");
    pay(&mut p, 300);
    let second = p.submit(&to, &mut |_| {});
    assert!(second.released.sends.is_empty());
    assert_eq!((p.in_flight(), p.version()), (2, v0 + 2), "two writes queued, counted on");
    assert_eq!(p.stored_total(), Amount::ZERO, "nothing landed yet");

    let (first, second) = (first.write.unwrap(), second.write.unwrap());
    let (a, b) = (first.wait().await, second.wait().await);
    let d = p.land(&to, a, &mut |_| {}).await.unwrap();
    assert_eq!(acks_of(&d), vec![100, 200], "the first run's acknowledgements only");
    assert_eq!(p.stored_total(), Amount::from_sat(200));
    let d = p.land(&to, b, &mut |_| {}).await.unwrap();
    assert_eq!(acks_of(&d), vec![300]);
    assert_eq!(p.in_flight(), 0);
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(300), v0 + 2));
    let history: Vec<u64> = store
        .payments(id, Role::Merchant)
        .await
        .unwrap()
        .iter()
        .map(|e| e.total.to_sat())
        .collect();
    assert_eq!(history, vec![200, 300], "one history entry per landed write");
}

/// A pipelined write that fails (another writer moved the row) releases nothing, and the write
/// queued behind it is not applied, though its expected version is the one the other writer's
/// change produced; the machine is as stored and goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pipelined_write_fails_every_write_behind_it() {
    let (_dir, store) = open_store();
    let to = Storage { store: &store, role: Role::Merchant, restore: &restore };
    let mut p = open_channel(&to).await;
    let id = p.channel.id();

    // Another writer takes 150 first.
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    let mut other = Persisted::stored(restore(&row.state).unwrap(), row.version, row.total);
    pay(&mut other, 150);
    other.drain(&to, &mut |_| {}).await.unwrap();

    pay(&mut p, 100);
    let first = p.submit(&to, &mut |_| {}).write.unwrap();
    pay(&mut p, 200);
    let second = p.submit(&to, &mut |_| {}).write.unwrap();
    let (a, b) = (first.wait().await, second.wait().await);
    match p.land(&to, a, &mut |_| {}).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected a conflict: {other:?}"),
    }
    assert!(p.take_reloaded());
    match p.land(&to, b, &mut |_| {}).await {
        Err(StoreError::AfterFailedWrite(_)) => {}
        other => panic!("expected the second to be refused behind the first: {other:?}"),
    }
    assert_eq!(p.channel.accepted(), Amount::from_sat(150), "as stored");
    assert_eq!(p.in_flight(), 0);
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(150), "neither pipelined write landed");
    pay(&mut p, 250);
    let d = p.drain(&to, &mut |_| {}).await.unwrap();
    assert_eq!(acks_of(&d), vec![250]);

    // Writes given up on (their waiter went away) release nothing later either.
    pay(&mut p, 260);
    let lost = p.submit(&to, &mut |_| {}).write.unwrap();
    p.abandon_in_flight();
    let landed = lost.wait().await;
    assert!(matches!(p.land(&to, landed, &mut |_| {}).await, Err(StoreError::Superseded(_))));
    p.reload(&to).await.unwrap();
    assert_eq!(p.channel.accepted(), Amount::from_sat(260), "what landed is what the store says");
}
