//! Versioned schema migrations for both backends. The `paychan_meta` table records the schema
//! version; a database newer than this build is refused with [`StoreError::SchemaTooNew`].

use crate::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Migration `n` (1-based) brings the schema from version `n − 1` to `n`.
///
/// The payment history is an append-only table with no secondary index: each row links to the
/// channel's previous payment (`prev`) and the channel row points at its latest
/// (`last_payment`). A per-channel index would be written at as many scattered places per
/// commit as there are channels in the commit, which costs group commit most of its gain; the
/// linked list costs one extra write to a page the payment dirties anyway, and a channel's
/// history is read by following the links (a recursive query over primary keys).
pub(crate) const SQLITE_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE channels (
    id              TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    phase           TEXT    NOT NULL,
    total           INTEGER NOT NULL DEFAULT 0,
    charged         INTEGER NOT NULL DEFAULT 0,
    capacity        INTEGER NOT NULL,
    expiry          INTEGER NOT NULL,
    customer_key    TEXT    NOT NULL,
    closing_txid    TEXT,
    last_payment    INTEGER,
    state           BLOB    NOT NULL,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (id, role)
);
CREATE INDEX channels_phase ON channels (role, phase);
CREATE INDEX channels_expiry ON channels (expiry);
CREATE INDEX channels_customer ON channels (customer_key);
CREATE TABLE payments (
    seq             INTEGER PRIMARY KEY,
    channel_id      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    total           INTEGER NOT NULL,
    signature       BLOB    NOT NULL,
    recorded_at     INTEGER NOT NULL,
    prev            INTEGER
);
"#,
    // 2: the `charged` column goes. Since ADR 0011 a channel's charges live in its state (the
    // machine's books, written in the same row and the same commit as its payments); the
    // column was a second copy nothing wrote.
    "ALTER TABLE channels DROP COLUMN charged;",
];

/// The same for PostgreSQL.
pub(crate) const POSTGRES_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE channels (
    id              TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    phase           TEXT    NOT NULL,
    total           BIGINT  NOT NULL DEFAULT 0,
    charged         BIGINT  NOT NULL DEFAULT 0,
    capacity        BIGINT  NOT NULL,
    expiry          BIGINT  NOT NULL,
    customer_key    TEXT    NOT NULL,
    closing_txid    TEXT,
    last_payment    BIGINT,
    state           BYTEA   NOT NULL,
    version         BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (id, role)
);
CREATE INDEX channels_phase ON channels (role, phase);
CREATE INDEX channels_expiry ON channels (expiry);
CREATE INDEX channels_customer ON channels (customer_key);
CREATE TABLE payments (
    seq             BIGSERIAL PRIMARY KEY,
    channel_id      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    total           BIGINT  NOT NULL,
    signature       BYTEA   NOT NULL,
    recorded_at     BIGINT  NOT NULL,
    prev            BIGINT
);
"#,
    // 2: as for SQLite.
    "ALTER TABLE channels DROP COLUMN charged;",
];

/// Checks a stored version against this build.
pub(crate) fn check(found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    Ok(())
}
