//! A customer and a merchant over loopback TCP, each with its own wallet and store, on the
//! embedded node: open, pay (pipelined), crash and resume, close and settle, a refused open
//! that never broadcasts, and a refund after the expiry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use paychan_core::bitcoin::Amount;
use paychan_core::channel::Phase;
use paychan_core::policy::Policy;
use paychan_core::Now;
use paychan_customer::{Customer, CustomerError};
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_merchant::tcp;
use paychan_store::Role;

/// The harness's world, and how far the customer's clock runs behind the node's.
struct World {
    h: paychan_harness::World,
    /// Seconds the customer's clock runs behind the node's.
    lag: Arc<std::sync::atomic::AtomicU64>,
}

impl std::ops::Deref for World {
    type Target = paychan_harness::World;

    fn deref(&self) -> &Self::Target {
        &self.h
    }
}

async fn world() -> World {
    let h = paychan_harness::World::builder().start().await.unwrap();
    World { h, lag: Arc::new(std::sync::atomic::AtomicU64::new(0)) }
}

fn customer(w: &World) -> Customer {
    let (clock, lag) = (w.clock.clone(), w.lag.clone());
    let lagging: Arc<dyn Fn() -> Now + Send + Sync> = Arc::new(move || {
        let mut n = clock();
        n.time -= lag.load(std::sync::atomic::Ordering::SeqCst);
        n
    });
    w.customer_with(lagging).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pay_resume_close_settle() {
    let w = world().await;
    let c = customer(&w);
    let id = c.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    assert!(w.node.mempool_txids().contains(&id.txid));
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();

    // 1,000 payments of 10 sat, pipelined in batches of 100.
    for _ in 0..10 {
        c.pay_many(id, &[Amount::from_sat(10); 100]).await.unwrap();
    }
    assert_eq!(c.status(id).await.unwrap().acked, Amount::from_sat(10_000));
    assert_eq!(
        w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(10_000)
    );

    // The customer process "crashes": a new one loads the channel from its store and goes on.
    drop(c);
    let c = customer(&w);
    assert_eq!(c.load().await.unwrap(), 1);
    let s = c.status(id).await.unwrap();
    assert_eq!((s.signed, s.phase), (Amount::from_sat(10_000), Phase::Open));
    assert_eq!(
        c.sync(id).await.unwrap(),
        Amount::from_sat(10_000),
        "its view matches the merchant's"
    );
    assert_eq!(c.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(10_010));
    // A spending cap holds before anything is signed.
    c.authorise(id, Amount::from_sat(10_015)).await.unwrap();
    assert!(matches!(
        c.pay(id, Amount::from_sat(10)).await,
        Err(CustomerError::Core(paychan_core::Error::AboveAuthorised { .. }))
    ));

    // Close: the merchant settles; mined; both sides see it.
    let txid = c.close(id).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (settlement, loc) = w.node.transaction(&txid).unwrap();
    assert!(loc.is_some());
    assert_eq!(settlement.output[0].value, Amount::from_sat(100_000 - 10_010));
    let fee = Amount::from_sat(100_000) - settlement.output.iter().map(|o| o.value).sum::<Amount>();
    assert_eq!(settlement.output[1].value, Amount::from_sat(10_010) - fee);
    c.tick().await.unwrap();
    assert_eq!(c.status(id).await.unwrap().phase, Phase::Settled);
    // The change came back to the customer's wallet.
    let mut wallet = w.customer_wallet.lock().unwrap();
    wallet.sync(&*w.chain).unwrap();
    assert!(wallet.is_mine(&settlement.output[0].script_pubkey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_open_never_broadcasts_and_an_expired_channel_is_refunded() {
    let w = world().await;
    let c = customer(&w);
    let mempool_before = w.node.mempool_txids();
    let balance_before = w.customer_wallet.lock().unwrap().balance();
    match c.open(&w.peer, Amount::from_sat(5_000), None).await {
        Err(CustomerError::Rejected { code, .. }) => {
            assert_eq!(code, 5, "deposit below the minimum")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(w.node.mempool_txids(), mempool_before, "the refused funding was never broadcast");
    assert_eq!(
        w.customer_wallet.lock().unwrap().balance(),
        balance_before,
        "its coins are free again"
    );

    // A 7-hour channel, never paid: after the expiry the customer takes its deposit back.
    let id = c.open(&w.peer, Amount::from_sat(50_000), Some(7 * 3_600)).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert!(c.tick().await.unwrap().is_empty(), "no refund before the expiry");
    let expiry = c.status(id).await.unwrap().expiry;
    w.node.set_mock_time(u64::from(expiry) + 60).unwrap();
    w.node.mine(11, &p2wpkh(&key(0x77))).unwrap();
    let refunds = c.tick().await.unwrap();
    assert_eq!(refunds.len(), 1);
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert!(w.node.transaction(&refunds[0]).unwrap().1.is_some(), "the refund is mined");
    c.tick().await.unwrap();
    assert_eq!(c.status(id).await.unwrap().phase, Phase::Refunded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merchant_settles_before_the_expiry_and_refuses_payments_past_the_cutoff() {
    let w = world().await;
    let c = customer(&w);
    let id = c.open(&w.peer, Amount::from_sat(100_000), Some(86_400)).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    c.pay(id, Amount::from_sat(4_000)).await.unwrap();
    let expiry = u64::from(c.status(id).await.unwrap().expiry);
    let policy = Policy::default();
    let cutoff = expiry - u64::from(policy.settle_margin_secs + policy.payment_cutoff_secs);

    // Inside the cutoff, the customer refuses by itself with a clear error...
    w.node.set_mock_time(cutoff + 10).unwrap();
    match c.pay(id, Amount::from_sat(10)).await {
        Err(CustomerError::Core(paychan_core::Error::PastCutoff { .. })) => {}
        other => panic!("expected PastCutoff, got {other:?}"),
    }
    // ...and a customer whose clock runs late is refused by the merchant, with its code.
    w.lag.store(60, std::sync::atomic::Ordering::SeqCst);
    match c.pay(id, Amount::from_sat(10)).await {
        Err(CustomerError::Rejected { code, message }) => {
            assert_eq!(code, paychan_core::Error::PastCutoff { cutoff: 0 }.code());
            assert!(message.contains("cutoff"), "{message}");
        }
        other => panic!("expected the merchant's refusal, got {other:?}"),
    }
    assert_eq!(
        w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(4_000)
    );

    // Before the settle margin the merchant waits; at expiry − settle margin it settles alone.
    w.server.tick().await.unwrap();
    assert_eq!(w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Open);
    w.node.set_mock_time(expiry - u64::from(policy.settle_margin_secs) + 1).unwrap();
    w.server.tick().await.unwrap();
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settling);
    let settlement = row.closing_txid.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, loc) = w.node.transaction(&settlement).unwrap();
    assert!(loc.is_some(), "the settlement is mined");
    assert_eq!(tx.output[0].value, Amount::from_sat(96_000));
    c.tick().await.unwrap();
    assert_eq!(c.status(id).await.unwrap().phase, Phase::Settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_settlement_is_replaced_at_a_higher_fee() {
    let w = world().await;
    let c = customer(&w);
    let id = c.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    c.pay(id, Amount::from_sat(20_000)).await.unwrap();
    let first = c.close(id).await.unwrap();
    assert!(w.node.mempool_txids().contains(&first));
    let fee_of = |txid| {
        let (tx, _) = w.node.transaction(&txid).unwrap();
        Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>()
    };
    let first_fee = fee_of(first);

    // Blocks too small for it: the settlement waits.
    w.node.set_block_max_weight(4_100);
    w.node.mine(paychan_merchant::BUMP_AFTER_BLOCKS, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    let second = row.closing_txid.unwrap();
    assert_ne!(second, first, "replaced");
    assert!(fee_of(second) > first_fee, "at a higher fee");
    assert!(!w.node.mempool_txids().contains(&first), "the replacement evicted the first");
    let (tx, _) = w.node.transaction(&second).unwrap();
    assert_eq!(tx.output[0].value, Amount::from_sat(80_000), "the customer's change is untouched");

    // Room again: mined, and both sides see the channel settled.
    w.node.set_block_max_weight(4_000_000);
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    c.tick().await.unwrap();
    assert_eq!(c.status(id).await.unwrap().phase, Phase::Settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_channel_is_settled_by_the_merchant() {
    let w = world().await;
    let c = customer(&w);
    let id = c.open(&w.peer, Amount::from_sat(20_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    c.pay(id, Amount::from_sat(19_500)).await.unwrap();
    // 500 sat left, below the 1,000 sat close-out: the merchant settles by itself.
    let row = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settling);
    let settlement = row.closing_txid.unwrap();
    assert!(w.node.mempool_txids().contains(&settlement));
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    c.tick().await.unwrap();
    assert_eq!(c.status(id).await.unwrap().phase, Phase::Settled);
}

/// A payment the merchant refuses (here: the funding is not confirmed yet, code 102) is not
/// counted: the customer's totals stay as they were, and the next payments build on what the
/// merchant holds. The acknowledged total is stored (by `sync`), so a restarted customer shows
/// what the merchant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payment_is_not_counted() {
    let w = world().await;
    let c = customer(&w);
    let id = c.open(&w.peer, Amount::from_sat(100_000), None).await.unwrap();

    // Not confirmed: refused, and nothing counted.
    match c.pay(id, Amount::from_sat(500)).await {
        Err(CustomerError::Rejected { code: 102, .. }) => {}
        other => panic!("expected a refusal (102): {other:?}"),
    }
    let s = c.status(id).await.unwrap();
    assert_eq!((s.signed, s.acked), (Amount::ZERO, Amount::ZERO));
    // As stored, too.
    let again = customer(&w);
    again.load().await.unwrap();
    assert_eq!(again.status(id).await.unwrap().signed, Amount::ZERO);
    drop(again);

    // Confirmed: the next payments pay what they say, and both sides agree.
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    w.server.tick().await.unwrap();
    assert_eq!(c.pay_many(id, &[Amount::from_sat(10); 2]).await.unwrap(), Amount::from_sat(20));
    let s = c.status(id).await.unwrap();
    assert_eq!((s.signed, s.acked), (Amount::from_sat(20), Amount::from_sat(20)));
    assert_eq!(
        w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(20)
    );

    // A run the customer itself refuses part-way (past the deposit): none of it counts, and
    // nothing of it goes out later with another payment.
    match c.pay_many(id, &[Amount::from_sat(30), Amount::from_sat(200_000)]).await {
        Err(CustomerError::Core(_)) => {}
        other => panic!("expected the customer's own refusal: {other:?}"),
    }
    assert_eq!(c.status(id).await.unwrap().signed, Amount::from_sat(20));
    assert_eq!(c.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(30));
    assert_eq!(
        w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(30)
    );

    // Refused after others were acknowledged (past the merchant's cutoff, the customer's
    // clock late): the customer counts what the merchant holds.
    let expiry = u64::from(c.status(id).await.unwrap().expiry);
    let policy = Policy::default();
    let cutoff = expiry - u64::from(policy.settle_margin_secs + policy.payment_cutoff_secs);
    w.node.set_mock_time(cutoff + 10).unwrap();
    w.lag.store(60, std::sync::atomic::Ordering::SeqCst);
    match c.pay_many(id, &[Amount::from_sat(5); 3]).await {
        Err(CustomerError::Rejected { code: 103, .. }) => {}
        other => panic!("expected the merchant's refusal (103): {other:?}"),
    }
    let merchant = w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total;
    assert_eq!(merchant, Amount::from_sat(30));
    let s = c.status(id).await.unwrap();
    assert_eq!(
        (s.signed, s.acked),
        (merchant, merchant),
        "the customer counts what the merchant holds"
    );

    // The acknowledged total survives a restart once synced.
    drop(c);
    let c = customer(&w);
    c.load().await.unwrap();
    assert_eq!(c.sync(id).await.unwrap(), merchant);
    drop(c);
    let c = customer(&w);
    c.load().await.unwrap();
    let s = c.status(id).await.unwrap();
    assert_eq!((s.signed, s.acked), (merchant, merchant), "acks are stored");
}

/// A channel life outside the merchant's range is refused before anything is funded, saying
/// the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_life_outside_the_merchants_range_funds_nothing() {
    let w = world().await;
    let c = customer(&w);
    let before = w.node.mempool_txids().len();
    match c.open(&w.peer, Amount::from_sat(100_000), Some(5 * 3_600 + 59 * 60)).await {
        Err(e @ CustomerError::LifeOutOfRange { .. }) => {
            assert!(e.to_string().contains("21600"), "{e}");
        }
        other => panic!("expected LifeOutOfRange: {other:?}"),
    }
    assert_eq!(w.node.mempool_txids().len(), before);
    assert!(c.list().await.is_empty());
    // A little over six hours is fine.
    c.open(&w.peer, Amount::from_sat(100_000), Some(6 * 3_600 + 600)).await.unwrap();
}

/// A merchant closes connections idle for long; the customer's next payment reconnects and
/// goes through (the resume delivers it), instead of failing once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_after_the_merchant_closed_an_idle_connection_goes_through() {
    use paychan_merchant::listen::Limits;
    let w = world().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strict = format!("{}@{}", w.server.node_id(), listener.local_addr().unwrap());
    let limits =
        Limits { idle_timeout: std::time::Duration::from_millis(300), ..Limits::default() };
    tokio::spawn(tcp::serve_limited(w.server.clone(), listener, limits, std::future::pending()));
    let c = customer(&w);
    let id = c.open(&strict, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert_eq!(c.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(10));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(c.pay(id, Amount::from_sat(10)).await.unwrap(), Amount::from_sat(20));
    assert_eq!(
        w.merchant_store.get(id, Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(20)
    );
}
