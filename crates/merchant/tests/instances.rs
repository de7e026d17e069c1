//! Several merchant instances on one store (issue 22, ADR 0029): one seed, key indexes
//! reserved in the database, so no key is offered twice however the opens are spread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{open_channel, server_on, server_with, Setup};
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::channel::Phase;
use paychan_core::lease::LeaseTiming;
use paychan_core::policy::Policy;
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_merchant::{ChannelServer, KeyChain, ServerConfig};
use paychan_store::{ChannelStore, PostgresStore, Query, Role, SqliteStore};

/// How many channels the two instances open between them.
const CHANNELS: u32 = 1_000;

/// Opens [`CHANNELS`] channels at once, alternately through instance `a` and `b` (each its own
/// home, the same seed, one store), each funded by its own coinbase; checks that every
/// channel got its own key and that both instances' channels are in the store.
async fn open_through_two(s: &Setup, a: Arc<ChannelServer>, b: Arc<ChannelServer>) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CHANNELS {
        let server = if n % 2 == 0 { a.clone() } else { b.clone() };
        let node = s.node.clone();
        tasks.spawn(async move {
            let c = open_channel(&server, &node, n + 1).await;
            let terms = &c.state().terms;
            (terms.key_index, terms.script.merchant())
        });
    }
    let mut indexes = HashSet::new();
    let mut keys = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (index, key) = done.unwrap();
        assert!(indexes.insert(index), "key index {index} used by two channels");
        assert!(keys.insert(key), "a merchant key used by two channels");
    }
    assert_eq!(indexes.len() as u32, CHANNELS);
    let stored = s.store.list(Query::role(Role::Merchant)).await.unwrap();
    assert_eq!(stored.len() as u32, CHANNELS);
    let reserved = s.store.key_indexes_reserved(KeyChain::MERCHANT).await.unwrap();
    assert!(indexes.iter().all(|i| *i < reserved));
}

/// A second instance over `store`: its own home, the same seed, the same node.
fn second_instance(
    s: &Setup,
    store: Arc<dyn ChannelStore>,
) -> (Arc<ChannelServer>, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let server = Arc::new(server_on(&home, store, s.chain.clone(), s.clock.clone()));
    (server, home)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_opened_through_two_instances_on_sqlite_get_distinct_keys() {
    let s = common::setup(CHANNELS + 100);
    // The second instance opens the same database file through its own store.
    let other: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&s.dir.path().join("m.db")).unwrap());
    let (b, _home) = second_instance(&s, other);
    open_through_two(&s, s.server.clone(), b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_opened_through_two_instances_on_postgres_get_distinct_keys() {
    let Some(db) =
        paychan_harness::postgres::fresh("channels_opened_through_two_instances").await.unwrap()
    else {
        return;
    };
    let mut s = common::setup(CHANNELS + 100);
    s.store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    s.server = Arc::new(server_on(&s.dir, s.store.clone(), s.chain.clone(), s.clock.clone()));
    let other: Arc<dyn ChannelStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let (b, _home) = second_instance(&s, other);
    open_through_two(&s, s.server.clone(), b).await;
    db.drop_db().await;
}

/// The settlement lease in tests: short, so that a takeover takes a second.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_millis(900);

/// An instance named `name` over `store` with its own home and the short lease.
fn instance(
    s: &Setup,
    store: Arc<dyn ChannelStore>,
    name: &str,
) -> (Arc<ChannelServer>, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(Policy::default(), p2wpkh(&key(0x55)));
    config.lease_ttl = LEASE_TTL;
    config.instance = Some(name.to_string());
    let server = Arc::new(server_with(&home, store, s.chain.clone(), s.clock.clone(), config));
    (server, home)
}

/// Two instances tick; only the lease holder settles a channel that is due. The holder dies
/// (it stops ticking: its lease is not renewed); the other holds the lease within the bound
/// and settles the channel.
async fn one_leader_settles_and_another_takes_over(s: &Setup, other: Arc<dyn ChannelStore>) {
    let (a, _ha) = instance(s, s.store.clone(), "a");
    let (b, _hb) = instance(s, other, "b");
    a.tick().await.unwrap();
    b.tick().await.unwrap();
    assert_eq!(a.settlement_leader().as_deref(), Some("a"));
    assert_eq!(b.settlement_leader().as_deref(), Some("a"), "b is told who leads");
    assert!(!b.holds_settlement_lease().await);

    // A channel opened through the leader, paid through the other instance.
    let c = open_channel(&a, &s.node, 1).await;
    let id = c.state().params.as_ref().unwrap().id();
    s.node.mine(1, &common::p2wpkh_77()).unwrap();
    b.pay(&common::pay_msg(&c, 3_000)).await.unwrap();
    // Its settlement is due: the node's clock at the settle margin before the expiry.
    let expiry =
        u64::from(c.state().params.as_ref().unwrap().script().expiry().unwrap().to_consensus_u32());
    let margin = u64::from(Policy::default().settle_margin_secs);
    s.node.set_mock_time(expiry - margin + 60).unwrap();
    // The instance that does not hold the lease leaves it alone.
    b.tick().await.unwrap();
    let row = s.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Open, "not settled by the instance without the lease");

    // The leader's last renewal (its tick settles the channel), then it dies.
    let died = std::time::Instant::now();
    a.tick().await.unwrap();
    assert_eq!(s.store.get(id, Role::Merchant).await.unwrap().unwrap().phase, Phase::Settling);
    drop(a);
    // Its settlement is out, for the next leader to follow; and another channel comes due
    // after its death, for the next leader to settle.
    let c2 = open_channel(&b, &s.node, 2).await;
    let id2 = c2.state().params.as_ref().unwrap().id();
    s.node.mine(1, &common::p2wpkh_77()).unwrap();
    b.pay(&common::pay_msg(&c2, 5_000)).await.unwrap();
    let expiry2 = u64::from(
        c2.state().params.as_ref().unwrap().script().expiry().unwrap().to_consensus_u32(),
    );
    s.node.set_mock_time(expiry2.max(expiry) - margin + 120).unwrap();

    let bound = LeaseTiming::with_ttl(LEASE_TTL.as_millis() as u64).takeover_bound_ms();
    let took_over = loop {
        b.tick().await.unwrap();
        if b.holds_settlement_lease().await {
            break died.elapsed();
        }
        assert!(
            died.elapsed().as_millis() < u128::from(bound) + 2_000,
            "no takeover after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        took_over.as_millis() <= u128::from(bound) + 500,
        "took over after {took_over:?}, bound {bound} ms"
    );
    assert!(
        took_over >= LEASE_TTL * 4 / 5,
        "not before the dead leader's lease ran out: {took_over:?}"
    );
    assert_eq!(b.settlement_leader().as_deref(), Some("b"));
    // The new leader settles what is due, and follows the settlement the old one sent.
    b.tick().await.unwrap();
    assert_eq!(s.store.get(id2, Role::Merchant).await.unwrap().unwrap().phase, Phase::Settling);
    s.node.mine(1, &common::p2wpkh_77()).unwrap();
    b.tick().await.unwrap();
    for ch in [id, id2] {
        assert_eq!(
            s.store.get(ch, Role::Merchant).await.unwrap().unwrap().phase,
            Phase::Settled,
            "{ch} settled once mined, followed by the new leader"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settlement_lease_has_one_holder_and_moves_when_it_dies_on_sqlite() {
    let s = common::setup(110);
    let other: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&s.dir.path().join("m.db")).unwrap());
    one_leader_settles_and_another_takes_over(&s, other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settlement_lease_has_one_holder_and_moves_when_it_dies_on_postgres() {
    let Some(db) = paychan_harness::postgres::fresh("settlement_lease").await.unwrap() else {
        return;
    };
    let mut s = common::setup(110);
    s.store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let other: Arc<dyn ChannelStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    one_leader_settles_and_another_takes_over(&s, other).await;
    db.drop_db().await;
}

/// Payments alternate between two instances, each holding the channel in memory: each takes
/// the payment the other left it behind on (a conflict reloads the channel). A customer that
/// reconnects to the one behind learns the total the store holds, not what that instance last
/// saw — or it would send a payment the merchant holds again and have it refused (code 104:
/// not above the accepted total), as `crates/cli/tests/instances_e2e.rs` found. A settle asked
/// of the one behind settles the stored total.
async fn payments_alternate_and_resume_reads_the_store(s: &Setup, other: Arc<dyn ChannelStore>) {
    let (a, _ha) = instance(s, s.store.clone(), "a");
    let (b, _hb) = instance(s, other, "b");
    let c = open_channel(&a, &s.node, 1).await;
    let id = c.state().params.as_ref().unwrap().id();
    s.node.mine(1, &common::p2wpkh_77()).unwrap();
    for (n, server) in [&a, &b, &a, &b, &b, &a, &b].into_iter().enumerate() {
        let total = 1_000 * (n as u64 + 1);
        let ack = server.pay(&common::pay_msg(&c, total)).await.unwrap();
        assert_eq!(ack.total_sat, total, "payment {n}");
    }
    // `a` last took 6,000; `b` took 7,000 after it.
    let resume = paychan_core::msg::Resume { channel: Some(id.into()) };
    for server in [&a, &b] {
        let resumed = server.resume(&resume).await.unwrap();
        assert_eq!(resumed.total_sat, 7_000, "the stored total, whichever instance answers");
    }
    let history = s.store.payments(id, Role::Merchant).await.unwrap();
    let totals: Vec<u64> = history.iter().map(|p| p.total.to_sat()).collect();
    assert_eq!(totals, (1..=7).map(|n| n * 1_000).collect::<Vec<_>>());
    // A settle asked of the instance that is behind: its write of `Settling` meets the
    // conflict, the channel is read again, and the settlement pays the stored 7,000.
    let closed = a.settle(id).await.unwrap();
    let row = s.store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.phase, row.total.to_sat()), (Phase::Settling, 7_000));
    let txid = row.closing_txid.unwrap();
    assert_eq!(closed.settlement_txid, txid.as_byte_array().to_vec());
    let (tx, _) = s.node.transaction(&txid).expect("the settlement is in the mempool");
    assert_eq!(tx.input[0].previous_output, id);
    assert_eq!(tx.output[0].value.to_sat(), row.capacity.to_sat() - 7_000, "the customer's change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_alternate_between_instances_and_resume_reads_the_store_on_sqlite() {
    let s = common::setup(110);
    let other: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&s.dir.path().join("m.db")).unwrap());
    payments_alternate_and_resume_reads_the_store(&s, other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_alternate_between_instances_and_resume_reads_the_store_on_postgres() {
    let Some(db) = paychan_harness::postgres::fresh("payments_alternate").await.unwrap() else {
        return;
    };
    let mut s = common::setup(110);
    s.store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let other: Arc<dyn ChannelStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    payments_alternate_and_resume_reads_the_store(&s, other).await;
    db.drop_db().await;
}
