//! Helper process for the store's crash and race tests: records payments as fast as it can and
//! prints one line per acknowledged write, so a test can kill it at any moment and check that
//! every acknowledged total is in the store.
//!
//! ```text
//! paychan-store-stress record (--sqlite PATH | --postgres URL) --channels N
//!     prints `ack <channel> <total>` after each durable payment, forever
//! paychan-store-stress race --postgres URL --channels N --rounds R --seed S
//!     races conflicting totals; prints `win <channel> <total>` for each write that won
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::Arc;

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::Phase;
use paychan_store::{
    ChannelStore, NewChannel, PaymentUpdate, PostgresStore, Role, SqliteStore, StoreError,
};

fn channel_id(n: u32) -> OutPoint {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 0xcc;
    OutPoint { txid: Txid::from_byte_array(b), vout: 0 }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn fail(msg: &str) -> ! {
    eprintln!("paychan-store-stress: {msg}");
    std::process::exit(2)
}

fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

async fn open(args: &[String]) -> Arc<dyn ChannelStore> {
    if let Some(path) = arg(args, "--sqlite") {
        match SqliteStore::open(std::path::Path::new(&path)) {
            Ok(s) => Arc::new(s),
            Err(e) => fail(&e.to_string()),
        }
    } else if let Some(url) = arg(args, "--postgres") {
        match PostgresStore::connect(&url).await {
            Ok(s) => Arc::new(s),
            Err(e) => fail(&e.to_string()),
        }
    } else {
        fail("give --sqlite PATH or --postgres URL")
    }
}

async fn ensure(store: &dyn ChannelStore, n: u32) -> (u64, u64) {
    let new = NewChannel {
        id: channel_id(n),
        role: Role::Merchant,
        phase: Phase::Open,
        capacity: Amount::from_sat(u64::from(u32::MAX)),
        expiry: 2_000_000_000,
        customer_key: format!("03{n:064x}"),
        state: Vec::new(),
    };
    match store.create(new).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => fail(&e.to_string()),
    }
    match store.get(channel_id(n), Role::Merchant).await {
        Ok(Some(r)) => (r.total.to_sat(), r.version),
        Ok(None) => fail("channel vanished"),
        Err(e) => fail(&e.to_string()),
    }
}

fn payment(n: u32, total: u64, version: u64) -> PaymentUpdate {
    PaymentUpdate {
        id: channel_id(n),
        role: Role::Merchant,
        total: Amount::from_sat(total),
        signature: vec![0x30],
        state: total.to_le_bytes().to_vec(),
        expected_version: version,
        chained: false,
    }
}

async fn record(store: Arc<dyn ChannelStore>, channels: u32) {
    let mut tasks = Vec::new();
    for n in 0..channels {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (mut total, mut version) = ensure(&*store, n).await;
            line("ready");
            loop {
                match store.record_payment(payment(n, total + 1, version)).await {
                    Ok(v) => {
                        total += 1;
                        version = v;
                        line(&format!("ack {n} {total}"));
                    }
                    Err(StoreError::Conflict { stored_total, stored_version, .. }) => {
                        total = stored_total.to_sat();
                        version = stored_version;
                    }
                    Err(e) => fail(&e.to_string()),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn race(store: Arc<dyn ChannelStore>, channels: u32, rounds: u64, seed: u64) {
    for n in 0..channels {
        ensure(&*store, n).await;
    }
    let mut x = seed;
    for i in 0..rounds {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = (i % u64::from(channels)) as u32;
        let row = match store.get(channel_id(n), Role::Merchant).await {
            Ok(Some(r)) => r,
            Ok(None) => fail("channel vanished"),
            Err(e) => fail(&e.to_string()),
        };
        let total = (row.total.to_sat() + (x >> 33) % 50).saturating_sub((x >> 20) % 20);
        match store.record_payment(payment(n, total, row.version)).await {
            Ok(_) => line(&format!("win {n} {total}")),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => fail(&e.to_string()),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => fail(&e.to_string()),
        };
    let channels: u32 = arg(&args, "--channels").and_then(|s| s.parse().ok()).unwrap_or(10);
    rt.block_on(async {
        let store = open(&args).await;
        match args.get(1).map(String::as_str) {
            Some("record") => record(store, channels).await,
            Some("race") => {
                let rounds = arg(&args, "--rounds").and_then(|s| s.parse().ok()).unwrap_or(500);
                let seed = arg(&args, "--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
                race(store, channels, rounds, seed).await;
            }
            _ => fail("usage: paychan-store-stress (record|race) ..."),
        }
    });
}
