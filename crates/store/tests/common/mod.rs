//! Shared helpers: fresh databases for each backend, and channel rows.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::Phase;
use paychan_store::{NewChannel, Role};

pub use paychan_harness::postgres::PgDb;

/// A fresh PostgreSQL database for this test, or `None` (with a note) when
/// `PAYCHAN_TEST_POSTGRES_URL` is unset.
pub async fn fresh_postgres(test: &str) -> Option<PgDb> {
    paychan_harness::postgres::fresh(test).await.unwrap()
}

pub fn channel_id(n: u32) -> OutPoint {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    OutPoint { txid: Txid::from_byte_array(b), vout: n % 3 }
}

pub fn new_channel(n: u32, role: Role) -> NewChannel {
    NewChannel {
        id: channel_id(n),
        role,
        phase: Phase::Open,
        capacity: Amount::from_sat(1_000_000),
        expiry: 1_800_000_000 + n,
        customer_key: format!("02{:064x}", n),
        state: vec![n as u8; 40],
    }
}
