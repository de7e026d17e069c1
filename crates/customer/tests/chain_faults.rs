//! Chain faults, in process with a real merchant and customer over loopback TCP: the funding is
//! reorged out after the channel opened (the merchant stops taking payments until it confirms
//! again), and the merchant's node is unreachable for a while (payments on a confirmed channel
//! go on; settlement fails, changes nothing, and goes through once the node is back); a small
//! total at a high fee estimate; the refund and the settlement racing at the expiry; a failing
//! settlement retried with backoff; the merchant's store failing under a payment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use paychan_chain::EmbeddedChain;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint};
use paychan_core::channel::Phase;
use paychan_customer::{Customer, CustomerError};
use paychan_harness::chain::Instrumented;
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_node::Node;
use paychan_store::{
    ChannelRow, ChannelStore, NewChannel, PaymentEntry, PaymentUpdate, Query, Role, SqliteStore,
    StateUpdate, StoreError, StoreFuture,
};

/// The merchant's store, which can fail: writes refused; writes that land but report a failure
/// (a lost reply); reads refused.
#[derive(Default)]
struct Faulty {
    fail_writes: AtomicBool,
    lose_write_replies: AtomicBool,
    fail_reads: AtomicBool,
}

struct FaultyStore {
    inner: SqliteStore,
    faults: Arc<Faulty>,
}

impl FaultyStore {
    /// A write: refused at the call (nothing queued), or queued and its reply lost.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> StoreFuture<'static, T>,
    ) -> StoreFuture<'static, T> {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Database("disk I/O error (test)".into())) });
        }
        let (f, faults) = (f(), self.faults.clone());
        Box::pin(async move {
            let r = f.await;
            if faults.lose_write_replies.load(Ordering::SeqCst) {
                return Err(StoreError::Database("connection reset after commit (test)".into()));
            }
            r
        })
    }

    fn read<'a, T: Send + 'a>(&'a self, f: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        Box::pin(async move {
            if self.faults.fail_reads.load(Ordering::SeqCst) {
                return Err(StoreError::Database("disk I/O error (test)".into()));
            }
            f.await
        })
    }
}

impl ChannelStore for FaultyStore {
    fn create(&self, channel: NewChannel) -> StoreFuture<'static, u64> {
        self.write(|| self.inner.create(channel))
    }
    fn record_payment(&self, update: PaymentUpdate) -> StoreFuture<'static, u64> {
        self.write(|| self.inner.record_payment(update))
    }
    fn update_state(&self, update: StateUpdate) -> StoreFuture<'static, u64> {
        self.write(|| self.inner.update_state(update))
    }
    fn get(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Option<ChannelRow>> {
        self.read(self.inner.get(id, role))
    }
    fn list(&self, query: Query) -> StoreFuture<'_, Vec<ChannelRow>> {
        self.read(self.inner.list(query))
    }
    fn payments(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Vec<PaymentEntry>> {
        self.read(self.inner.payments(id, role))
    }
    fn reserve_key_indexes(
        &self,
        account: u32,
        floor: u32,
        count: u32,
    ) -> StoreFuture<'static, std::ops::Range<u32>> {
        self.write(|| self.inner.reserve_key_indexes(account, floor, count))
    }
    fn claim_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> StoreFuture<'static, String> {
        self.write(|| self.inner.claim_lease(name, holder, ttl_ms))
    }
    fn key_indexes_reserved(&self, account: u32) -> StoreFuture<'_, u32> {
        self.read(self.inner.key_indexes_reserved(account))
    }
}

/// The merchant's view of the chain, which can be cut off.
type Flaky = Instrumented<EmbeddedChain>;

/// The harness's world, the merchant on a chain that fails on demand, both stores faulting
/// on demand.
struct World {
    h: paychan_harness::World,
    flaky: Arc<Flaky>,
    /// The merchant's store.
    store: Arc<dyn ChannelStore>,
    /// The merchant's store faults.
    faults: Arc<Faulty>,
    /// The customer's store faults.
    cfaults: Arc<Faulty>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for World {
    type Target = paychan_harness::World;

    fn deref(&self) -> &Self::Target {
        &self.h
    }
}

async fn world() -> World {
    world_capped(None).await
}

/// [`world`] with the merchant's settlements capped at `cap`.
async fn world_capped(cap: Option<FeeRate>) -> World {
    let node = Node::in_memory();
    let flaky = Arc::new(Instrumented::new(EmbeddedChain::new(node.clone())));
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faulty::default());
    let store: Arc<dyn ChannelStore> = Arc::new(FaultyStore {
        inner: SqliteStore::open(&dir.path().join("m.db")).unwrap(),
        faults: faults.clone(),
    });
    let cfaults = Arc::new(Faulty::default());
    let cstore: Arc<dyn ChannelStore> = Arc::new(FaultyStore {
        inner: SqliteStore::open(&dir.path().join("c.db")).unwrap(),
        faults: cfaults.clone(),
    });
    // The customer's own node connection stays up.
    let mut builder = paychan_harness::World::builder();
    if let Some(cap) = cap {
        builder = builder.max_fee_rate(cap);
    }
    let h = builder
        .node(node)
        .merchant_chain(flaky.clone())
        .merchant_store(store.clone())
        .customer_store(cstore)
        .start()
        .await
        .unwrap();
    World { h, flaky, store, faults, cfaults, _dir: dir }
}

fn refused_with(r: Result<Amount, CustomerError>, code: u32) {
    match r {
        Err(CustomerError::Rejected { code: c, .. }) => assert_eq!(c, code),
        other => panic!("expected refusal {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorged_funding_stops_payments_until_it_confirms_again() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    let block = w.node.mine(1, &p2wpkh(&key(0x77))).unwrap()[0];
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(10));

    // The block with the funding is reorged out: the funding is unconfirmed again.
    w.node.invalidate_block(block).unwrap();
    assert!(w.node.mempool_txids().contains(&id.txid), "back in the mempool");
    w.server.tick().await.unwrap();
    let before = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(before.phase, Phase::AwaitingFunding);
    refused_with(w.customer.pay(id, Amount::from_sat(10)).await, 102);
    // A refused payment leaves the merchant's store as it was; the acknowledged 10 sat stay.
    let after = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!((after.total, after.version), (before.total, before.version));
    assert_eq!(after.total, Amount::from_sat(10));

    // Confirmed again (another block): payments resume. The refused 10 sat were not counted
    // (issue 13: a refused payment is rolled back), so the next payment pays 10, not 20.
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert_eq!(w.customer.sync(id).await.unwrap(), Amount::from_sat(10));
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(20));
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);
}

/// The merchant learns confirmations and spends from blocks, each read once, however many
/// channels it has: a tick after a new block costs the tip and that block, nothing per
/// channel, and no call a node without a transaction index could not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_tick_reads_each_new_block_once_whatever_its_channels() {
    let w = world().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap());
    }
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    for id in &ids {
        w.customer.pay(*id, Amount::from_sat(5_000)).await.unwrap();
        assert_eq!(w.store.get(*id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);
    }

    w.flaky.reset();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let calls = w.flaky.all_calls();
    assert_eq!(calls.get("tip"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("block"), Some(&1), "{calls:?}");
    assert_eq!(calls.values().sum::<u64>(), 2, "nothing per channel: {calls:?}");

    w.flaky.reset();
    w.node.mine(4, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    w.server.tick().await.unwrap();
    assert_eq!(w.flaky.calls("block"), 4, "each block once: {:?}", w.flaky.all_calls());
    assert_eq!(w.flaky.fetched().len(), 4);

    // A settlement is followed from the block that spends the funding.
    let txid = w.server.settle(ids[0]).await.unwrap().txid().unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let row = w.store.get(ids[0], Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    assert_eq!(row.closing_txid, Some(txid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_go_on_while_the_node_is_unreachable_and_settlement_waits_for_it() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay_many(id, &[Amount::from_sat(1_000); 10]).await.unwrap();

    // The merchant loses its node.
    w.flaky.down.store(true, Ordering::SeqCst);
    assert_eq!(
        w.customer.pay_many(id, &[Amount::from_sat(1_000); 10]).await.unwrap(),
        Amount::from_sat(20_000),
        "payments on a confirmed channel need no chain"
    );
    assert!(w.server.tick().await.is_err(), "the chain check reports the fault");
    let before = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert!(w.server.settle(id).await.is_err(), "no settlement without a node");
    let after = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(after, before, "a failed settlement changes nothing");
    assert_eq!(after.phase, Phase::Open);

    // The node is back: the settlement goes through and pays the acknowledged total.
    w.flaky.down.store(false, Ordering::SeqCst);
    let closed = w.server.settle(id).await.unwrap();
    let txid = closed.txid().unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let row = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    let (tx, at) = w.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "mined");
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    let to_merchant = tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
    assert_eq!(to_merchant.value + fee, Amount::from_sat(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_total_at_a_high_fee_estimate_still_settles() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    // 150 sat: too small to settle even at 1 sat/vB. Refused, nothing changes.
    w.customer.pay(id, Amount::from_sat(150)).await.unwrap();
    let before = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    let e = w.server.settle(id).await.unwrap_err().to_string();
    assert!(e.contains("too small to settle"), "{e}");
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap(), before);
    // 2,000 sat with an estimate of 50 sat/vB (a fee of ~10,000 sat): settled at a lower rate.
    w.customer.pay(id, Amount::from_sat(1_850)).await.unwrap();
    *w.flaky.fee.lock().unwrap() = Some(FeeRate::from_sat_per_vb(50).unwrap());
    let txid = w.server.settle(id).await.unwrap().txid().unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, at) = w.node.transaction(&txid).unwrap();
    assert!(at.is_some(), "mined");
    let to_merchant = tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    assert!(to_merchant.value >= Amount::from_sat(294), "above dust: {}", to_merchant.value);
    assert_eq!(to_merchant.value + fee, Amount::from_sat(2_000));
    assert!(fee < Amount::from_sat(50 * 100), "a lower rate than the estimate: {fee}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_settlement_is_retried_with_exponential_backoff_until_it_goes_out() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay_many(id, &[Amount::from_sat(1_000); 20]).await.unwrap();
    w.server.tick().await.unwrap();

    // The node takes no transaction; the settlement falls due (expiry − the 4 h margin).
    w.flaky.refuse_broadcast.store(true, Ordering::SeqCst);
    let expiry = u64::from(w.server.channel_expiry(id).await.unwrap());
    let start = expiry - 4 * 3600 + 60;
    let before = w.flaky.calls("broadcast");
    // Ten minutes of ticks every 5 s (120 ticks): the attempts back off 15 s, 30 s, 60 s, ...
    let mut attempts_at = Vec::new();
    for i in 0..120u64 {
        w.node.set_mock_time(start + i * 5).unwrap();
        let n = w.flaky.calls("broadcast");
        w.server.tick().await.unwrap();
        if w.flaky.calls("broadcast") > n {
            attempts_at.push(i * 5);
        }
    }
    assert_eq!(attempts_at, [0, 15, 45, 105, 225, 465], "attempts back off exponentially");
    assert_eq!(w.flaky.calls("broadcast") - before, 6);
    let metrics = w.server.metrics_text().await.unwrap();
    assert!(metrics.contains("paychan_settlement_failures_total 6"), "{metrics}");
    // Nothing was lost meanwhile: the stored total is the acknowledged one.
    let row = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(20_000));
    assert_eq!(row.phase, Phase::Settling);

    // The node takes transactions again: the next attempt (due at 465 + 480 s) goes out, and
    // the settlement is mined and recorded.
    w.flaky.refuse_broadcast.store(false, Ordering::SeqCst);
    let mut out_at = None;
    for i in 120..240u64 {
        w.node.set_mock_time(start + i * 5).unwrap();
        w.server.tick().await.unwrap();
        let txid = w.store.get(id, Role::Merchant).await.unwrap().unwrap().closing_txid.unwrap();
        if w.node.mempool_txids().contains(&txid) {
            out_at = Some(i * 5);
            break;
        }
    }
    assert_eq!(out_at, Some(465 + 480), "retried when due, not before");
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let row = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    let (tx, _) = w.node.transaction(&row.closing_txid.unwrap()).unwrap();
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    let to_merchant = tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
    assert_eq!(to_merchant.value + fee, Amount::from_sat(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_failure_acknowledges_nothing_and_the_channel_goes_on_from_the_store() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay_many(id, &[Amount::from_sat(10); 2]).await.unwrap();

    // 1. The write fails (reads still work): the payment is refused, nothing acknowledged.
    w.faults.fail_writes.store(true, Ordering::SeqCst);
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err());
    w.faults.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(20));
    // The merchant went back to what it stored: the same signed total, delivered again by the
    // resume, is accepted now (a merchant still holding it in memory would call it a replay).
    assert_eq!(w.customer.sync(id).await.unwrap(), Amount::from_sat(30));
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(30));

    // 2. The store is down altogether (the reload fails too): refused; once it is back, the
    //    channel is reloaded before its next use and the redelivered total is accepted.
    w.faults.fail_writes.store(true, Ordering::SeqCst);
    w.faults.fail_reads.store(true, Ordering::SeqCst);
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err());
    w.faults.fail_writes.store(false, Ordering::SeqCst);
    w.faults.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(w.customer.sync(id).await.unwrap(), Amount::from_sat(40));
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(40));

    // 3. The write lands but its reply is lost: refused (not acknowledged), yet stored; the
    //    merchant reloads the new version, so the channel is not wedged on a stale version.
    w.faults.lose_write_replies.store(true, Ordering::SeqCst);
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err());
    w.faults.lose_write_replies.store(false, Ordering::SeqCst);
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(50));
    assert_eq!(w.customer.sync(id).await.unwrap(), Amount::from_sat(50), "the resume finds it");
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(60));
    let row = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.phase), (Amount::from_sat(60), Phase::Open));
    let history: Vec<u64> = w
        .store
        .payments(id, Role::Merchant)
        .await
        .unwrap()
        .iter()
        .map(|p| p.total.to_sat())
        .collect();
    assert_eq!(history, [20, 30, 40, 50, 60], "the first two came in one write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_store_write_failure_sends_nothing_and_costs_nothing() {
    let w = world().await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(10));

    // The customer cannot store its next payment: refused before anything is sent.
    w.cfaults.fail_writes.store(true, Ordering::SeqCst);
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err());
    w.cfaults.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(10));
    // The failed payment is forgotten, not sent later with the next one: the caller was told
    // it failed, so it costs nothing.
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(20));
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(20));

    // The write lands but its reply is lost: the payment counts as spent (it is stored) and
    // the channel is not wedged on a stale version; the resume delivers it.
    w.cfaults.lose_write_replies.store(true, Ordering::SeqCst);
    assert!(w.customer.pay(id, Amount::from_sat(10)).await.is_err());
    w.cfaults.lose_write_replies.store(false, Ordering::SeqCst);
    assert_eq!(w.customer.sync(id).await.unwrap(), Amount::from_sat(30));
    assert_eq!(w.customer.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(40));
    let status = w.customer.status(id).await.unwrap();
    assert_eq!((status.signed, status.acked), (Amount::from_sat(40), Amount::from_sat(40)));
    assert_eq!(w.store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::from_sat(40));
}

/// Moves the node's clock past the channel's expiry and mines 11 blocks, so median-time-past
/// passes it too: the refund is final.
fn past_expiry(w: &World) -> u32 {
    let expiry = w.node.now() as u32 + 86_400;
    w.node.set_mock_time(u64::from(expiry) + 2 * 3600).unwrap();
    for _ in 0..11 {
        w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    }
    expiry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_and_settlement_race_at_the_expiry_and_both_sides_agree_on_the_winner() {
    for settlement_first in [true, false] {
        let w = world().await;
        let id = w.customer.open(&w.peer, Amount::from_sat(100_000), Some(86_400)).await.unwrap();
        w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
        w.customer.pay_many(id, &[Amount::from_sat(1_000); 20]).await.unwrap();
        past_expiry(&w);
        // Both spends go out: the second is a double spend the node refuses (or replaces).
        if settlement_first {
            w.server.settle(id).await.unwrap();
            let _ = w.customer.tick().await;
        } else {
            let refunds = w.customer.tick().await.unwrap();
            assert_eq!(refunds.len(), 1, "the refund is due");
            let _ = w.server.settle(id).await;
        }
        w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
        w.server.tick().await.unwrap();
        w.customer.tick().await.unwrap();
        let merchant = w.store.get(id, Role::Merchant).await.unwrap().unwrap();
        let customer = w.customer.status(id).await.unwrap();
        assert!(
            merchant.phase.is_final() && customer.phase.is_final(),
            "{merchant:?} {customer:?}"
        );
        assert_eq!(merchant.phase, customer.phase, "both sides agree on who won");
        // The winner's transaction is the one on chain, and the amounts are its.
        let spender = customer.closing_txid.expect("the customer records the spend");
        let (tx, at) = w.node.transaction(&spender).unwrap();
        assert!(at.is_some());
        let total_out: Amount = tx.output.iter().map(|o| o.value).sum();
        match merchant.phase {
            Phase::Settled => {
                let to_merchant =
                    tx.output.iter().find(|o| o.script_pubkey == p2wpkh(&key(0x55))).unwrap();
                assert_eq!(
                    to_merchant.value + (Amount::from_sat(100_000) - total_out),
                    Amount::from_sat(20_000)
                );
            }
            Phase::Refunded => {
                assert!(
                    !settlement_first,
                    "a settlement broadcast first is not replaced by the refund"
                );
                assert!(total_out > Amount::from_sat(99_000), "the refund returns the deposit");
            }
            other => panic!("unexpected phase {other:?}"),
        }
        if settlement_first {
            assert_eq!(merchant.phase, Phase::Settled, "the settlement went out first");
        } else {
            assert_eq!(merchant.phase, Phase::Refunded, "the refund went out first");
        }
    }
}

/// A fee estimate far above the network's cap: the settlement pays the cap, not the estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_never_pays_above_the_fee_cap() {
    let w = world_capped(Some(FeeRate::from_sat_per_vb(20).unwrap())).await;
    let id = w.customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.customer.pay(id, Amount::from_sat(50_000)).await.unwrap();
    *w.flaky.fee.lock().unwrap() = Some(FeeRate::from_sat_per_vb(400).unwrap());
    let txid = w.server.settle(id).await.unwrap().txid().unwrap();
    let (tx, _) = w.node.transaction(&txid).unwrap();
    let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
    let rate = fee.to_sat() as f64 / tx.vsize() as f64;
    assert!((19.0..=20.5).contains(&rate), "{rate} sat/vB: the cap, not the 400 estimated");
}

/// A funding pays at most the customer's fee cap, whatever the node estimates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funding_never_pays_above_the_fee_cap() {
    let w = world().await;
    *w.flaky.fee.lock().unwrap() = Some(FeeRate::from_sat_per_vb(400).unwrap());
    let customer = Customer::new(
        w.customer_store.clone(),
        w.flaky.clone(),
        w.customer_wallet.clone(),
        w.clock.clone(),
    )
    .unwrap()
    .with_max_fee_rate(FeeRate::from_sat_per_vb(5).unwrap());
    let id = customer.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    let mempool = w.node.mempool_entry(&id.txid).unwrap().0;
    let rate = mempool.fee.to_sat() as f64 / mempool.vsize as f64;
    assert!(rate <= 5.01, "{rate} sat/vB: the cap, not the 400 estimated");
}
