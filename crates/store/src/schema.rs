//! Versioned schema migrations for both backends. The `paychan_meta` table records the schema
//! version; a database newer than this build is refused with [`StoreError::SchemaTooNew`].

use crate::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

/// The SQL dialect a migration is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Migration 1, with `{int}`, `{bytes}` and `{serial}` standing for the dialect's types.
const V1: &str = r#"
CREATE TABLE channels (
    id              TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    phase           TEXT    NOT NULL,
    total           {int}   NOT NULL DEFAULT 0,
    charged         {int}   NOT NULL DEFAULT 0,
    capacity        {int}   NOT NULL,
    expiry          {int}   NOT NULL,
    customer_key    TEXT    NOT NULL,
    closing_txid    TEXT,
    last_payment    {int},
    state           {bytes} NOT NULL,
    version         {int}   NOT NULL,
    created_at      {int}   NOT NULL,
    updated_at      {int}   NOT NULL,
    PRIMARY KEY (id, role)
);
CREATE INDEX channels_phase ON channels (role, phase);
CREATE INDEX channels_expiry ON channels (expiry);
CREATE INDEX channels_customer ON channels (customer_key);
CREATE TABLE payments (
    seq             {serial} PRIMARY KEY,
    channel_id      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    total           {int}   NOT NULL,
    signature       {bytes} NOT NULL,
    recorded_at     {int}   NOT NULL,
    prev            {int}
);
"#;

/// Migration 2: the `charged` column goes. Since ADR 0011 a channel's charges live in its state
/// (the machine's books, written in the same row and the same commit as its payments); the
/// column was a second copy nothing wrote.
const V2: &str = "ALTER TABLE channels DROP COLUMN charged;";

/// Migration 3: the phase index takes the expiry too, so that a merchant that keeps idle
/// channels out of memory (ADR 0028) finds, without reading the open ones, the channels due by
/// their expiry (a window of one phase), the dispute channels (expiry 0) and its counts by
/// phase and kind (from the index alone).
const V3: &str = "DROP INDEX channels_phase;
CREATE INDEX channels_phase_expiry ON channels (role, phase, expiry);";

/// Migration 4: key indexes are reserved in the database (ADR 0029), so that several merchant
/// instances sharing it (one seed) never hand out the same per-channel key; and leases (ADR
/// 0030: one settlement leader among them), expiring by the database's clock.
const V4: &str = "CREATE TABLE key_counters (
    account         {int}   PRIMARY KEY,
    next            {int}   NOT NULL
);
CREATE TABLE leases (
    name            TEXT    PRIMARY KEY,
    holder          TEXT    NOT NULL,
    expires_at_ms   {int}   NOT NULL
);";

/// The migrations in `dialect`, in order: migration `n` (1-based) brings the schema from
/// version `n − 1` to `n`.
///
/// The payment history is an append-only table with no secondary index: each row links to the
/// channel's previous payment (`prev`) and the channel row points at its latest
/// (`last_payment`). A per-channel index would be written at as many scattered places per
/// commit as there are channels in the commit, which costs group commit most of its gain; the
/// linked list costs one extra write to a page the payment dirties anyway, and a channel's
/// history is read by following the links (a recursive query over primary keys).
pub(crate) fn migrations(dialect: Dialect) -> Vec<String> {
    let (int, bytes, serial) = match dialect {
        Dialect::Sqlite => ("INTEGER", "BLOB", "INTEGER"),
        Dialect::Postgres => ("BIGINT", "BYTEA", "BIGSERIAL"),
    };
    let fill =
        |m: &str| m.replace("{int}", int).replace("{bytes}", bytes).replace("{serial}", serial);
    vec![fill(V1), V2.to_string(), V3.to_string(), fill(V4)]
}

/// Checks a stored version against this build.
pub(crate) fn check(found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_migration_per_version_in_both_dialects() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let m = migrations(d);
            assert_eq!(m.len(), SCHEMA_VERSION as usize);
            assert!(m.iter().all(|sql| !sql.contains('{')), "every placeholder filled");
        }
    }
}
