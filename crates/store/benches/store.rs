//! Durable payment records per second, beside raw single-statement commits per second measured
//! in the same run, for SQLite (with and without group commit) and PostgreSQL (when
//! `PAYCHAN_TEST_POSTGRES_URL` is set; a fresh database is created and dropped).
//!
//! Run: `cargo bench -p paychan-store --bench store`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::Phase;
use paychan_store::{
    ChannelStore, NewChannel, PaymentUpdate, PostgresStore, Role, SqliteOptions, SqliteStore,
};

const RUN: Duration = Duration::from_secs(3);

fn id(n: u32) -> OutPoint {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    OutPoint { txid: Txid::from_byte_array(b), vout: 1 }
}

async fn setup(store: &dyn ChannelStore, from: u32, to: u32) {
    for n in from..to {
        store
            .create(NewChannel {
                id: id(n),
                role: Role::Merchant,
                phase: Phase::Open,
                capacity: Amount::from_sat(u64::from(u32::MAX)),
                expiry: 2_000_000_000,
                customer_key: format!("02{n:064x}"),
                state: vec![0; 200],
            })
            .await
            .unwrap();
    }
}

/// Payments/s with `channels` concurrent channels, each paying one at a time.
async fn payments(store: Arc<dyn ChannelStore>, channels: u32, base: u32) -> f64 {
    setup(&*store, base, base + channels).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in base..base + channels {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (mut total, mut version, mut count) = (0u64, 1u64, 0u64);
            while start.elapsed() < RUN {
                total += 1;
                let sig = vec![0x30; 72];
                let state = vec![1u8; 200];
                version = store
                    .record_payment(PaymentUpdate {
                        id: id(n),
                        role: Role::Merchant,
                        total: Amount::from_sat(total),
                        signature: sig,
                        state,
                        expected_version: version,
                        chained: false,
                    })
                    .await
                    .unwrap();
                count += 1;
            }
            count
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, raw: f64, one: f64, hundred: f64) {
    println!("{name}");
    println!("  raw single-statement commits   {raw:>9.0} /s   (bound for one writer in flight)");
    println!("  payments, 1 channel            {one:>9.0} /s   {:.2}× raw", one / raw);
    println!("  payments, 100 channels         {hundred:>9.0} /s   {:.2}× raw", hundred / raw);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let grouped = Arc::new(SqliteStore::open(&dir.path().join("grouped.db")).unwrap());
    let single = Arc::new(
        SqliteStore::open_with(
            &dir.path().join("single.db"),
            SqliteOptions { max_batch: 1, ..Default::default() },
        )
        .unwrap(),
    );
    // Raw: one bare durable commit at a time.
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < RUN {
        single.touch().await.unwrap();
        raw += 1;
    }
    let raw = raw as f64 / start.elapsed().as_secs_f64();
    let g1 = payments(grouped.clone(), 1, 0).await;
    let g100 = payments(grouped.clone(), 100, 10).await;
    let s100 = payments(single.clone(), 100, 10).await;
    println!("store bench ({}s per figure, SQLite WAL synchronous=FULL)", RUN.as_secs());
    report("SQLite, group commit", raw, g1, g100);
    println!(
        "  100 channels, one commit per payment {s100:>6.0} /s: group commit is {:.1}× faster",
        g100 / s100
    );

    if let Some(db) = paychan_harness::postgres::fresh("the store bench").await.unwrap() {
        let url = db.url.clone();
        let pg = Arc::new(PostgresStore::connect(&url).await.unwrap());
        let start = Instant::now();
        let mut raw = 0u64;
        while start.elapsed() < RUN {
            pg.touch().await.unwrap();
            raw += 1;
        }
        let raw = raw as f64 / start.elapsed().as_secs_f64();
        let p1 = payments(pg.clone(), 1, 0).await;
        let p100 = payments(pg.clone(), 100, 10).await;
        report("PostgreSQL, group commit", raw, p1, p100);
        drop(pg);
        db.drop_db().await;
    } else {
        println!("PostgreSQL: skipped (PAYCHAN_TEST_POSTGRES_URL is unset)");
    }
}
