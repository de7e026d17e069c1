//! A fresh PostgreSQL database per test, on the server `PAYCHAN_TEST_POSTGRES_URL` names (the
//! tests that need one print that they skipped when it is unset).

use crate::HarnessError;

/// The variable naming the test PostgreSQL server (a URL whose user may create databases).
pub const URL_VAR: &str = "PAYCHAN_TEST_POSTGRES_URL";

/// A database made for one test; [`PgDb::drop_db`] removes it.
#[derive(Debug)]
pub struct PgDb {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

/// A fresh database for `test`, or `None` (with a note on stderr) when [`URL_VAR`] is unset or
/// empty.
///
/// # Errors
/// The server refused the connection or the `CREATE DATABASE`.
pub async fn fresh(test: &str) -> Result<Option<PgDb>, HarnessError> {
    let Some(admin) = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty()) else {
        note_skipped(test);
        return Ok(None);
    };
    let mut r = [0u8; 6];
    getrandom::getrandom(&mut r).map_err(|e| HarnessError::Random(e.to_string()))?;
    let name = format!("paychan_t_{}", r.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let url = replace_db(&admin, &name);
    Ok(Some(PgDb { url, admin, name }))
}

#[allow(clippy::print_stderr)]
fn note_skipped(test: &str) {
    eprintln!("skipped {test} on PostgreSQL: {URL_VAR} is unset");
}

impl PgDb {
    /// Drops the database (best effort: a test's leftover is harmless).
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
