//! Shared helpers: fresh databases for each backend, and channel rows.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::Phase;
use paychan_store::{NewChannel, Role};

/// A fresh PostgreSQL database for this test, or `None` (with a note) when
/// `PAYCHAN_TEST_POSTGRES_URL` is unset.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

pub async fn fresh_postgres(test: &str) -> Option<PgDb> {
    let Ok(admin) = std::env::var("PAYCHAN_TEST_POSTGRES_URL") else {
        eprintln!("skipped {test} on PostgreSQL: PAYCHAN_TEST_POSTGRES_URL is unset");
        return None;
    };
    let mut r = [0u8; 6];
    getrandom::getrandom(&mut r).unwrap();
    let name = format!("paychan_t_{}", r.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = replace_db(&admin, &name);
    Some(PgDb { url, admin, name })
}

impl PgDb {
    pub async fn drop_db(self) {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&self.admin, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .await;
        }
    }
}

/// `url` with its database name replaced by `db`.
pub fn replace_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => {
            let (base, rest) = url.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{db}{query}")
        }
        _ => format!("{url}/{db}"),
    }
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
