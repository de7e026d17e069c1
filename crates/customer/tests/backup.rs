//! Losing the channel store loses no deposit: with the wallet's mnemonic and the backup
//! written at each open, a customer refunds its channels after the expiry, with no store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::{Amount, FeeRate, Network};
use paychan_customer::backup::{read_all, refund_from_backups, Restored};
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_wallet::Wallet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_recovered_from_the_mnemonic_and_the_backups() {
    let w = paychan_harness::World::builder().customer_backups().start().await.unwrap();
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay(id, Amount::from_sat(5_000)).await.unwrap();

    // The backup was written at the open: the channel's script and funding, no secret.
    let dir = w.dir.join("backups");
    let backups = read_all(&dir).unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!((backups[0].funding, backups[0].value), (id, Amount::from_sat(100_000)));
    let text =
        std::fs::read_to_string(std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path())
            .unwrap();
    let mnemonic = std::fs::read_to_string(w.dir.join("customer").join("mnemonic")).unwrap();
    assert!(!text.contains(mnemonic.trim()) && !text.contains("prv"), "no secret: {text}");

    // The store and the wallet are lost; a new wallet from the mnemonic alone.
    let lost = tempfile::tempdir().unwrap();
    let mut wallet = Wallet::create(lost.path(), Network::Regtest, Some(mnemonic.trim())).unwrap();
    wallet.sync(&*w.chain).unwrap();
    let fee_rate = FeeRate::from_sat_per_vb(2).unwrap();

    // Before the expiry the deposit is locked: nothing is broadcast.
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    assert!(matches!(r[..], [Restored::Locked { funding, .. }] if funding == id), "{r:?}");
    assert!(w.node.mempool_txids().is_empty());

    // Past the expiry (median-time-past included): the refund goes out and is mined, to the
    // restored wallet.
    let expiry = u64::from(backups[0].expiry.to_consensus_u32());
    w.node.set_mock_time(expiry + 2 * 3_600).unwrap();
    for _ in 0..11 {
        w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    }
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    let [Restored::Refunded { funding, txid }] = r[..] else { panic!("{r:?}") };
    assert_eq!(funding, id);
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, at) = w.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "the refund is mined");
    wallet.sync(&*w.chain).unwrap();
    assert!(wallet.is_mine(&tx.output[0].script_pubkey), "paid to the restored wallet");
    assert!(tx.output[0].value > Amount::from_sat(99_000), "the whole deposit less the fee");

    // Again: nothing left to refund.
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    assert!(matches!(r[..], [Restored::Spent { funding }] if funding == id), "{r:?}");
}

#[test]
fn a_malformed_backup_is_refused_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.json"), "{\"paychan_channel_backup\": 1}").unwrap();
    let e = read_all(dir.path()).unwrap_err().to_string();
    assert!(e.contains("x.json") && e.contains("funding"), "{e}");
}

/// A merchant on its own SQLite store with one channel paid 5,000 sat, and a copy of that
/// store taken then (`copy.db` in the returned directory).
async fn merchant_with_a_copy() -> (
    tempfile::TempDir,
    std::sync::Arc<paychan_store::SqliteStore>,
    paychan_harness::World,
    paychan_core::bitcoin::OutPoint,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        paychan_store::SqliteStore::open(&dir.path().join("merchant.db")).unwrap(),
    );
    let w = paychan_harness::World::builder().merchant_store(store.clone()).start().await.unwrap();
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay(id, Amount::from_sat(5_000)).await.unwrap();
    let copy = dir.path().join("copy.db");
    store.backup_to(&copy).await.unwrap();
    (dir, store, w, id, copy)
}

/// The merchant of `w` again, on `store` (its keys, its clock, its chain), paying
/// settlements to key 0x55.
fn merchant_on(
    w: &paychan_harness::World,
    store: std::sync::Arc<dyn paychan_store::ChannelStore>,
) -> paychan_merchant::ChannelServer {
    use paychan_core::policy::Policy;
    use paychan_merchant::{ChannelServer, ServerConfig};
    let keys =
        w.merchant_wallet.lock().unwrap().key_chain(paychan_wallet::KeyChain::MERCHANT).unwrap();
    let config = ServerConfig::new(Policy::default(), p2wpkh(&key(0x55)));
    ChannelServer::new(config, keys, store, w.chain.clone(), w.clock.clone()).unwrap()
}

/// A merchant restored from a copy of its store older than its last payments gets them back:
/// each customer, resuming, sends its latest signed total; the settlement mined pays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_restored_from_an_older_copy_gets_the_newer_payments_back() {
    use std::sync::Arc;

    use paychan_merchant::tcp;
    use paychan_store::{ChannelStore, Role, SqliteStore};

    let (_dir, _store, w, id, copy) = merchant_with_a_copy().await;
    // Payments after the copy: 8,000 sat in all, acknowledged.
    w.customer.pay_many(id, &[Amount::from_sat(1_000); 3]).await.unwrap();

    // The merchant's disk is lost; it comes back from the copy (5,000 sat), same keys, same
    // address.
    w.stop_merchant().await;
    let restored: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(&copy).unwrap());
    assert_eq!(
        restored.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(5_000)
    );
    let server = Arc::new(merchant_on(&w, restored.clone()));
    assert_eq!(server.load().await.unwrap(), 1);
    let listener = tokio::net::TcpListener::bind(w.listen).await.unwrap();
    tokio::spawn(tcp::serve(server.clone(), listener, std::future::pending()));

    // The customer resumes (no new payment): it sends its latest signed total, which the
    // restored merchant stores.
    w.customer.sync(id).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while restored.get(id, Role::Merchant).await.unwrap().unwrap().total < Amount::from_sat(8_000) {
        assert!(std::time::Instant::now() < deadline, "the latest total came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        restored.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(8_000)
    );
    // Payments go on from there.
    assert_eq!(w.customer.pay(id, Amount::from_sat(1_000)).await.unwrap(), Amount::from_sat(9_000));
    assert_eq!(
        restored.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(9_000)
    );

    // The settlement pays the latest total.
    let txid = w.customer.close(id).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, at) = w.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "mined");
    let to_merchant = tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    assert_eq!(to_merchant.value + fee, Amount::from_sat(9_000));
}

/// A merchant restored from a copy of its store made before its settlement was mined, with
/// its chain cursor already past that block, still learns the channel is settled: the
/// channel was open in the copy, its funding is spent, so the chain view reads blocks back
/// (once) to the spend — no transaction index needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_restored_from_before_its_settlement_finds_it_in_older_blocks() {
    use std::sync::Arc;

    use paychan_core::channel::Phase;
    use paychan_store::{ChannelStore, Role, SqliteStore};

    let (_dir, store, w, id, copy) = merchant_with_a_copy().await;

    let settlement = w.customer.close(id).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    assert_eq!(store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Settled);
    w.node.mine(5, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap(); // the cursor is stored past the settlement's block
    w.stop_merchant().await;

    let restored: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(&copy).unwrap());
    assert_eq!(restored.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);
    let server = merchant_on(&w, restored.clone())
        .with_chain_cursor(w.dir.join("merchant-chain.cursor"))
        .unwrap();
    assert_eq!(server.load().await.unwrap(), 1);
    server.tick().await.unwrap();
    let row = restored.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled, "found in a block before the cursor");
    assert_eq!(row.closing_txid, Some(settlement));
}

/// A dispute channel's backup holds its trigger: from the mnemonic and the backup alone, the
/// customer broadcasts the trigger (with a child paying for it), then refunds the whole
/// deposit once the dispute period has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dispute_channel_is_recovered_by_its_trigger_and_the_refund() {
    use paychan_core::policy::Policy;
    use paychan_customer::ChannelKind;
    let policy = Policy { min_dispute_blocks: 10, ..Policy::default() };
    let w =
        paychan_harness::World::builder().policy(policy).customer_backups().start().await.unwrap();
    let kind = ChannelKind::Dispute { blocks: None };
    let id = w.customer.open_kind(&w.peer, Amount::from_sat(100_000), kind).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay(id, Amount::from_sat(5_000)).await.unwrap();
    w.stop_merchant().await;

    let dir = w.dir.join("backups");
    let backups = read_all(&dir).unwrap();
    let d = backups[0].dispute.clone().expect("a dispute channel's backup");
    assert_eq!(d.blocks, 10);
    let mnemonic = std::fs::read_to_string(w.dir.join("customer").join("mnemonic")).unwrap();
    let lost = tempfile::tempdir().unwrap();
    let mut wallet = Wallet::create(lost.path(), Network::Regtest, Some(mnemonic.trim())).unwrap();
    wallet.sync(&*w.chain).unwrap();
    let fee_rate = FeeRate::from_sat_per_vb(2).unwrap();

    // The funding is unspent: the trigger goes out with its child.
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    let [Restored::Triggered { funding, trigger }] = r[..] else { panic!("{r:?}") };
    assert_eq!((funding, trigger), (id, d.trigger.compute_txid()));
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    wallet.sync(&*w.chain).unwrap();
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    assert!(matches!(r[..], [Restored::Disputed { remaining: 9, .. }]), "{r:?}");
    w.node.mine(9, &p2wpkh(&key(0x77))).unwrap();
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    let [Restored::Refunded { txid, .. }] = r[..] else { panic!("{r:?}") };
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, at) = w.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "the refund is mined");
    assert!(tx.output[0].value > Amount::from_sat(99_000), "the whole deposit less the fee");
    let r = refund_from_backups(&dir, &mut wallet, &*w.chain, fee_rate).unwrap();
    assert!(matches!(r[..], [Restored::Spent { .. }]), "{r:?}");
}
