//! One test suite for the ChannelStore contract, run against SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, Txid};
use paychan_core::channel::Phase;
use paychan_store::{
    ChannelStore, PaymentUpdate, PostgresStore, Query, Role, SqliteStore, StateUpdate, StoreError,
};

fn pay(n: u32, total: u64, expected_version: u64) -> PaymentUpdate {
    PaymentUpdate {
        id: channel_id(n),
        role: Role::Merchant,
        total: Amount::from_sat(total),
        signature: vec![0x30, total as u8],
        state: total.to_le_bytes().to_vec(),
        expected_version,
        chained: false,
    }
}

async fn create_and_get(s: &dyn ChannelStore) {
    assert_eq!(s.create(new_channel(1, Role::Merchant)).await.unwrap(), 1);
    // The same channel id may exist once per role.
    assert_eq!(s.create(new_channel(1, Role::Customer)).await.unwrap(), 1);
    assert!(matches!(
        s.create(new_channel(1, Role::Merchant)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let row = s.get(channel_id(1), Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.id, channel_id(1));
    assert_eq!(row.phase, Phase::Open);
    assert_eq!(row.total, Amount::ZERO);
    assert_eq!(row.capacity, Amount::from_sat(1_000_000));
    assert_eq!(row.state, vec![1u8; 40]);
    assert_eq!(row.version, 1);
    assert!(s.get(channel_id(99), Role::Merchant).await.unwrap().is_none());
}

async fn payments_are_compare_and_swap(s: &dyn ChannelStore) {
    s.create(new_channel(2, Role::Merchant)).await.unwrap();
    assert_eq!(s.record_payment(pay(2, 100, 1)).await.unwrap(), 2);
    assert_eq!(s.record_payment(pay(2, 250, 2)).await.unwrap(), 3);
    // Lower, equal, and stale-version writes are refused and change nothing.
    for bad in [pay(2, 200, 3), pay(2, 250, 3), pay(2, 300, 2)] {
        match s.record_payment(bad).await {
            Err(StoreError::Conflict { stored_total, stored_version, .. }) => {
                assert_eq!((stored_total, stored_version), (Amount::from_sat(250), 3));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert!(matches!(s.record_payment(pay(77, 1, 1)).await, Err(StoreError::NotFound(_))));
    let row = s.get(channel_id(2), Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(250), 3));
    assert_eq!(row.state, 250u64.to_le_bytes().to_vec());
    let history = s.payments(channel_id(2), Role::Merchant).await.unwrap();
    let totals: Vec<u64> = history.iter().map(|p| p.total.to_sat()).collect();
    assert_eq!(totals, vec![100, 250]);
    assert_eq!(history[1].signature, vec![0x30, 250]);
}

/// Writes queued before the one ahead of them landed (a pipelined driver): applied in call
/// order; and one chained behind a write that failed is refused even when its expected
/// version is the one another writer's change produced.
async fn chained_writes(s: &dyn ChannelStore) {
    s.create(new_channel(5, Role::Merchant)).await.unwrap();
    let chained = |total, version| PaymentUpdate { chained: true, ..pay(5, total, version) };
    // Three queued at once, each counting on the one before.
    let (a, b, c) = (
        s.record_payment(pay(5, 10, 1)),
        s.record_payment(chained(20, 2)),
        s.record_payment(chained(30, 3)),
    );
    assert_eq!((a.await.unwrap(), b.await.unwrap(), c.await.unwrap()), (2, 3, 4));
    // Another writer takes version 5; ours expected 4 and fails; the write chained behind it
    // expects 5, which exists, and is still refused.
    assert_eq!(s.record_payment(pay(5, 35, 4)).await.unwrap(), 5);
    let (a, b) = (s.record_payment(pay(5, 40, 4)), s.record_payment(chained(50, 5)));
    assert!(matches!(a.await, Err(StoreError::Conflict { .. })));
    match b.await {
        Err(StoreError::AfterFailedWrite(id)) => assert_eq!(id, channel_id(5)),
        other => panic!("expected the chained write refused, got {other:?}"),
    }
    let row = s.get(channel_id(5), Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(35), 5));
    // An unchained write (after a reload) goes through, and chains work again after it.
    assert_eq!(s.record_payment(pay(5, 60, 5)).await.unwrap(), 6);
    assert_eq!(s.record_payment(chained(70, 6)).await.unwrap(), 7);
}

async fn phase_changes(s: &dyn ChannelStore) {
    s.create(new_channel(3, Role::Merchant)).await.unwrap();
    let txid = Txid::from_byte_array([9; 32]);
    let up = StateUpdate {
        id: channel_id(3),
        role: Role::Merchant,
        phase: Phase::Settling,
        closing_txid: Some(txid),
        state: vec![3],
        expected_version: 1,
        chained: false,
    };
    assert_eq!(s.update_state(up.clone()).await.unwrap(), 2);
    assert!(matches!(s.update_state(up.clone()).await, Err(StoreError::Conflict { .. })));
    let settled =
        StateUpdate { phase: Phase::Settled, closing_txid: None, expected_version: 2, ..up };
    assert_eq!(s.update_state(settled).await.unwrap(), 3);
    let row = s.get(channel_id(3), Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Settled);
    assert_eq!(row.closing_txid, Some(txid), "a later change keeps the txid");
}

async fn queries(s: &dyn ChannelStore) {
    for n in 10..20 {
        s.create(new_channel(n, if n % 2 == 0 { Role::Merchant } else { Role::Customer }))
            .await
            .unwrap();
    }
    let merchants = s.list(Query { role: Some(Role::Customer), ..Query::default() }).await.unwrap();
    assert!(merchants.iter().all(|r| r.role == Role::Customer));
    let soon = s
        .list(Query {
            expiring_before: Some(1_800_000_013),
            role: Some(Role::Merchant),
            ..Query::default()
        })
        .await
        .unwrap();
    assert!(soon.iter().all(|r| r.expiry < 1_800_000_013));
    assert!(soon.iter().any(|r| r.id == channel_id(12)));
    let by_key = s
        .list(Query { customer_key: Some(format!("02{:064x}", 15)), ..Query::default() })
        .await
        .unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0].id, channel_id(15));
    let open =
        s.list(Query { phases: vec![Phase::Open], limit: 3, ..Query::default() }).await.unwrap();
    assert_eq!(open.len(), 3);
    let none = s.list(Query { phases: vec![Phase::Refunded], ..Query::default() }).await.unwrap();
    assert!(none.is_empty());
}

/// The queries the merchant's lazily loaded channels rest on: pages by id, a window of
/// expiries, the channels of one funding transaction, and the database's own counts.
async fn pages_windows_and_counts(s: &dyn ChannelStore) {
    let ids: Vec<u32> = (200..230).collect();
    for &n in &ids {
        let mut c = new_channel(n, Role::Merchant);
        if n % 5 == 0 {
            c.expiry = 0;
        }
        if n % 3 == 0 {
            c.phase = Phase::Settling;
        }
        s.create(c).await.unwrap();
    }
    s.create(new_channel(230, Role::Customer)).await.unwrap();
    // Pages of 7, by id: every channel once, in order, none of the other role.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q =
            Query { role: Some(Role::Merchant), by_id: true, after, limit: 7, ..Query::default() };
        let page = s.list(q).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|r| r.id.to_string()));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in id order");
    assert!(seen.len() >= ids.len(), "every merchant channel paged");
    for n in &ids {
        assert_eq!(seen.iter().filter(|i| **i == channel_id(*n).to_string()).count(), 1);
    }
    // A window of expiries: [1_800_000_210, 1_800_000_220).
    let window = s
        .list(Query {
            role: Some(Role::Merchant),
            expiring_from: Some(1_800_000_210),
            expiring_before: Some(1_800_000_220),
            ..Query::default()
        })
        .await
        .unwrap();
    let mut got: Vec<u32> = window.iter().map(|r| r.expiry - 1_800_000_000).collect();
    got.sort_unstable();
    assert_eq!(got, vec![211, 212, 213, 214, 216, 217, 218, 219], "no expiry 0, none outside");
    // One funding transaction's channels.
    let funded = s
        .list(Query { funding_txid: Some(channel_id(217).txid), ..Query::default() })
        .await
        .unwrap();
    assert_eq!(funded.iter().map(|r| r.id).collect::<Vec<_>>(), vec![channel_id(217)]);
    // The database's counts agree with the rows.
    let census = s.census(Role::Merchant).await.unwrap();
    let all = s.list(Query::role(Role::Merchant)).await.unwrap();
    for phase in [Phase::Open, Phase::Settling] {
        for no_expiry in [false, true] {
            let rows =
                all.iter().filter(|r| r.phase == phase && (r.expiry == 0) == no_expiry).count()
                    as u64;
            let counted = census
                .iter()
                .find(|c| c.phase == phase && c.no_expiry == no_expiry)
                .map_or(0, |c| c.channels);
            assert_eq!(counted, rows, "{phase:?} no_expiry={no_expiry}");
        }
    }
    assert!(census.iter().any(|c| c.no_expiry && c.phase == Phase::Settling && c.channels >= 2));
}

/// Two tasks race conflicting totals on the same channels: every channel ends at the highest
/// total written, and the history only ever increases.
async fn race(s: Arc<dyn ChannelStore>) {
    for n in 100..110 {
        s.create(new_channel(n, Role::Merchant)).await.unwrap();
    }
    let task = |seed: u64| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut x = seed;
            for i in 0..200u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let n = 100 + (i % 10) as u32;
                let row = s.get(channel_id(n), Role::Merchant).await.unwrap().unwrap();
                // Sometimes lower, sometimes higher than what is stored.
                let total = (row.total.to_sat() + (x >> 33) % 50).saturating_sub((x >> 20) % 20);
                match s.record_payment(pay(n, total, row.version)).await {
                    Ok(_) => wins.push((n, total)),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            wins
        })
    };
    let (a, b) = (task(1), task(2));
    let wins: Vec<(u32, u64)> = a.await.unwrap().into_iter().chain(b.await.unwrap()).collect();
    assert!(!wins.is_empty());
    for n in 100..110 {
        let highest = wins.iter().filter(|(c, _)| *c == n).map(|(_, t)| *t).max().unwrap_or(0);
        let row = s.get(channel_id(n), Role::Merchant).await.unwrap().unwrap();
        assert_eq!(row.total.to_sat(), highest, "channel {n} ends at the highest total");
        let history: Vec<u64> = s
            .payments(channel_id(n), Role::Merchant)
            .await
            .unwrap()
            .iter()
            .map(|p| p.total.to_sat())
            .collect();
        assert!(
            history.windows(2).all(|w| w[0] < w[1]),
            "no lower total after a higher: {history:?}"
        );
    }
}

/// Two stores on one database (two merchant instances) reserve key indexes at once: no index
/// is reserved twice, none is skipped below the counter, a floor moves the counter up and
/// never down, and the accounts count apart.
async fn key_indexes_are_reserved_once(a: Arc<dyn ChannelStore>, b: Arc<dyn ChannelStore>) {
    assert_eq!(a.key_indexes_reserved(0).await.unwrap(), 0);
    let reserve = |s: Arc<dyn ChannelStore>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(s.reserve_key_indexes(0, 0, 7).await.unwrap());
            }
            got
        })
    };
    let (x, y, z) = (reserve(a.clone()), reserve(b.clone()), reserve(a.clone()));
    let mut ranges: Vec<std::ops::Range<u32>> =
        [x.await.unwrap(), y.await.unwrap(), z.await.unwrap()].concat();
    ranges.sort_by_key(|r| r.start);
    assert_eq!(ranges.len(), 150);
    assert_eq!(ranges[0].start, 0);
    for w in ranges.windows(2) {
        assert_eq!(w[0].len(), 7);
        assert_eq!(w[0].end, w[1].start, "disjoint and contiguous: {:?} {:?}", w[0], w[1]);
    }
    assert_eq!(a.key_indexes_reserved(0).await.unwrap(), 1050);
    assert_eq!(b.key_indexes_reserved(0).await.unwrap(), 1050);
    // A floor above the counter (a home's key file from before) moves it up ...
    assert_eq!(b.reserve_key_indexes(0, 5000, 10).await.unwrap(), 5000..5010);
    // ... and one below it changes nothing but the reservation.
    assert_eq!(a.reserve_key_indexes(0, 3, 10).await.unwrap(), 5010..5020);
    // Another account has its own counter.
    assert_eq!(a.reserve_key_indexes(1, 0, 2).await.unwrap(), 0..2);
    assert_eq!(b.key_indexes_reserved(0).await.unwrap(), 5020);
    // Past the last index: refused, and the counter is unchanged.
    assert!(matches!(
        a.reserve_key_indexes(2, u32::MAX - 1, 2).await,
        Err(StoreError::KeyIndexesExhausted { account: 2 })
    ));
    assert_eq!(a.key_indexes_reserved(2).await.unwrap(), 0);
    let near_end = u32::MAX - 5;
    assert_eq!(a.reserve_key_indexes(3, near_end, 3).await.unwrap(), near_end..near_end + 3);
    assert!(matches!(
        b.reserve_key_indexes(3, 0, 5).await,
        Err(StoreError::KeyIndexesExhausted { account: 3 })
    ));
    assert_eq!(a.key_indexes_reserved(3).await.unwrap(), near_end + 3);
    assert_eq!(b.reserve_key_indexes(3, 0, 2).await.unwrap(), near_end + 3..u32::MAX);
}

async fn whole_suite(s: Arc<dyn ChannelStore>) {
    create_and_get(&*s).await;
    payments_are_compare_and_swap(&*s).await;
    chained_writes(&*s).await;
    phase_changes(&*s).await;
    queries(&*s).await;
    pages_windows_and_counts(&*s).await;
    race(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("paychan.db")).unwrap();
    whole_suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_key_indexes_are_reserved_once_across_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paychan.db");
    let a = Arc::new(SqliteStore::open(&path).unwrap());
    let b = Arc::new(SqliteStore::open(&path).unwrap());
    key_indexes_are_reserved_once(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_key_indexes_are_reserved_once_across_stores() {
    let Some(db) = fresh_postgres("postgres_key_indexes").await else { return };
    let a = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    key_indexes_are_reserved_once(a, b).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_without_group_commit_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let opts = paychan_store::SqliteOptions { max_batch: 1, ..Default::default() };
    let store = SqliteStore::open_with(&dir.path().join("paychan.db"), opts).unwrap();
    whole_suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_suite() {
    let Some(db) = fresh_postgres("postgres_suite").await else { return };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    whole_suite(Arc::new(store)).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_survives_reopen_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paychan.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create(new_channel(5, Role::Merchant)).await.unwrap();
        s.record_payment(pay(5, 42, 1)).await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.get(channel_id(5), Role::Merchant).await.unwrap().unwrap().total,
        Amount::from_sat(42)
    );
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE paychan_meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
    drop(c);
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew { found: 99, supported }) => {
            assert_eq!(supported, paychan_store::SCHEMA_VERSION)
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// A version 1 database (with the `charged` column no one wrote since ADR 0011, and the phase
/// index without the expiry) opens: the migrations drop the column, replace the index and
/// keep every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paychan.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create(new_channel(6, Role::Merchant)).await.unwrap();
        s.record_payment(pay(6, 77, 1)).await.unwrap();
    }
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "ALTER TABLE channels ADD COLUMN charged INTEGER NOT NULL DEFAULT 0;
         DROP INDEX channels_phase_expiry;
         CREATE INDEX channels_phase ON channels (role, phase);
         DROP TABLE key_counters;
         DROP TABLE leases;
         UPDATE paychan_meta SET value = '1' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(c);
    let s = SqliteStore::open(&path).unwrap();
    let row = s.get(channel_id(6), Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(77), 2));
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: String = c
        .query_row("SELECT value FROM paychan_meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, paychan_store::SCHEMA_VERSION.to_string());
    assert_eq!(paychan_store::SCHEMA_VERSION, 4);
    let indexes: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'channels'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(indexes.contains(&"channels_phase_expiry".to_string()), "{indexes:?}");
    assert!(!indexes.contains(&"channels_phase".to_string()), "{indexes:?}");
    let charged: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('channels') WHERE name = 'charged'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(charged, 0, "the stale column is gone");
    let counters: i64 = c
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'key_counters'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(counters, 1, "migration 4 made the key counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_newer_schemas_are_refused() {
    let Some(db) = fresh_postgres("postgres_newer_schemas_are_refused").await else { return };
    {
        let s = PostgresStore::connect(&db.url).await.unwrap();
        s.create(new_channel(5, Role::Merchant)).await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("UPDATE paychan_meta SET value = '99' WHERE key = 'schema_version'")
        .await
        .unwrap();
    assert!(matches!(
        PostgresStore::connect(&db.url).await,
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_connects_again_after_the_server_drops_it() {
    let Some(db) = fresh_postgres("postgres_writer_connects_again_after_the_server_drops_it").await
    else {
        return;
    };
    let s = PostgresStore::connect(&db.url).await.unwrap();
    s.create(new_channel(1, Role::Merchant)).await.unwrap();
    assert_eq!(s.record_payment(pay(1, 100, 1)).await.unwrap(), 2);

    // The server drops every connection of the store (a restart, a failover, an admin).
    let (admin, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .len();
    assert!(killed >= 1, "the store's connections were found");

    // Writes fail (nothing acknowledged) until the writer is connected again, then go on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut failed = 0;
    loop {
        match s.record_payment(pay(1, 200, 2)).await {
            Ok(v) => {
                assert_eq!(v, 3);
                break;
            }
            Err(StoreError::Database(_)) => failed += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never came back ({failed} failures)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A failed write changed nothing; the reads work again too.
    let mut row = None;
    for _ in 0..40 {
        if let Ok(r) = s.get(channel_id(1), Role::Merchant).await {
            row = r;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let row = row.expect("the reader pool connects again");
    assert_eq!((row.total, row.version), (Amount::from_sat(200), 3));
    let totals: Vec<u64> = s
        .payments(channel_id(1), Role::Merchant)
        .await
        .unwrap()
        .iter()
        .map(|p| p.total.to_sat())
        .collect();
    assert_eq!(totals, [100, 200]);
    db.drop_db().await;
}

/// An online backup is the database as of one commit, and opens as a store with every row;
/// writes after it are not in it; an existing destination is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_sqlite_backup_opens_with_every_row_as_of_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("merchant.db")).unwrap();
    s.create(new_channel(7, Role::Merchant)).await.unwrap();
    s.record_payment(pay(7, 500, 1)).await.unwrap();
    let copy = dir.path().join("backup.db");
    s.backup_to(&copy).await.unwrap();
    s.record_payment(pay(7, 900, 2)).await.unwrap();
    assert!(s.backup_to(&copy).await.is_err(), "never over an existing file");

    let restored = SqliteStore::open(&copy).unwrap();
    let row = restored.get(channel_id(7), Role::Merchant).await.unwrap().unwrap();
    assert_eq!((row.total, row.version), (Amount::from_sat(500), 2));
    assert_eq!(restored.payments(channel_id(7), Role::Merchant).await.unwrap().len(), 1);
    // The live store went on.
    let live = s.get(channel_id(7), Role::Merchant).await.unwrap().unwrap();
    assert_eq!(live.total, Amount::from_sat(900));
}

/// One lease, two stores on one database (two instances): the first to ask holds it, the
/// other is told who does; the holder renews it; once its time ran out (by the database's
/// clock) the other takes it, and the old holder is then refused.
async fn a_lease_has_one_holder(a: Arc<dyn ChannelStore>, b: Arc<dyn ChannelStore>) {
    assert_eq!(a.claim_lease("settlement", "a", 400).await.unwrap(), "a");
    assert_eq!(b.claim_lease("settlement", "b", 400).await.unwrap(), "a");
    assert_eq!(a.claim_lease("settlement", "a", 400).await.unwrap(), "a", "renewed");
    // Another lease is another row.
    assert_eq!(b.claim_lease("other", "b", 400).await.unwrap(), "b");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(b.claim_lease("settlement", "b", 400).await.unwrap(), "a", "not yet run out");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(b.claim_lease("settlement", "b", 400).await.unwrap(), "b", "taken over");
    assert_eq!(a.claim_lease("settlement", "a", 400).await.unwrap(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_lease_has_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paychan.db");
    let a = Arc::new(SqliteStore::open(&path).unwrap());
    let b = Arc::new(SqliteStore::open(&path).unwrap());
    a_lease_has_one_holder(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lease_has_one_holder() {
    let Some(db) = fresh_postgres("postgres_a_lease_has_one_holder").await else { return };
    let a = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    a_lease_has_one_holder(a, b).await;
    db.drop_db().await;
}
