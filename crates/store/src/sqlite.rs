//! The SQLite store: one file, WAL, `synchronous=FULL`, and a single writer thread with group
//! commit — every write that is waiting when a transaction starts rides in it, and each caller
//! is answered only after that transaction's commit (fsync) returns.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use paychan_core::bitcoin::{Amount, OutPoint};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::ops::{holder, keys, version, Chains, Done, Job, Op};
use crate::schema::{self, Dialect};
use crate::{
    census_of, parse_outpoint, parse_phase, phase_str, reserved_range, unix_now, Census,
    ChannelRow, ChannelStore, NewChannel, PaymentEntry, PaymentUpdate, Query, Role, StateUpdate,
    StoreError, StoreFuture,
};

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most writes committed together (1 disables group commit: one commit per write).
    pub max_batch: usize,
    /// Queue length before writers wait for room.
    pub queue: usize,
    /// Page cache of each of the store's two connections (writer and reader), MiB. The
    /// caches fill up to this as the database grows, then stay.
    pub cache_mib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        let cache_mib = std::env::var("PAYCHAN_SQLITE_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CACHE_MIB);
        SqliteOptions { max_batch: 1_024, queue: 65_536, cache_mib }
    }
}

/// The default page cache per connection, MiB (`PAYCHAN_SQLITE_CACHE_MIB` overrides it).
pub const DEFAULT_CACHE_MIB: u32 = 8;

/// The SQLite [`ChannelStore`].
pub struct SqliteStore {
    path: PathBuf,
    jobs: SyncSender<Job>,
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn open_connection(path: &Path, cache_mib: u32) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    // First: another process may hold the write lock (a `serve` beside a command), and
    // setting the journal mode may need it.
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    // Checkpoint the WAL less often (every ~32 MiB): fewer stalls of the writer.
    conn.pragma_update(None, "wal_autocheckpoint", 8_192).map_err(db)?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_mib.max(1)) * 1024).map_err(db)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS paychan_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .map_err(db)?;
    let found: u32 = conn
        .query_row("SELECT value FROM paychan_meta WHERE key = 'schema_version'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db)?
        .map(|v| v.parse().unwrap_or(u32::MAX))
        .unwrap_or(0);
    schema::check(found)?;
    for (i, sql) in schema::migrations(Dialect::Sqlite).iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO paychan_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![(i + 1).to_string()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        debug!(version = i + 1, "sqlite schema migrated");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` with default options.
    ///
    /// # Errors
    /// [`StoreError::Database`]; [`StoreError::SchemaTooNew`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError::Database`]; [`StoreError::SchemaTooNew`].
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let mut writer = open_connection(path, options.cache_mib)?;
        migrate(&mut writer)?;
        let reader = open_connection(path, options.cache_mib)?;
        let (jobs, rx) = mpsc::sync_channel(options.queue.max(1));
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("paychan-sqlite-writer".into())
            .spawn(move || write_loop(writer, rx, max_batch))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { path: path.to_path_buf(), jobs, reader: Arc::new(Mutex::new(reader)) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `op` now (writes of one channel are applied in call order); the future answers
    /// once its transaction committed.
    fn submit(&self, op: Op) -> StoreFuture<'static, Done> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.clone();
        // Queued at the call, so that writes keep the order of the calls.
        let waiting = match jobs.try_send(Job { op, reply }) {
            Ok(()) => None,
            Err(mpsc::TrySendError::Full(job)) => Some(job),
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Box::pin(async { Err(StoreError::Closed) })
            }
        };
        Box::pin(async move {
            if let Some(job) = waiting {
                // The queue is full: wait for room off the async workers. (A later write of
                // the same channel may then go first; its compare-and-swap fails, safely.)
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(|_| StoreError::Closed)?;
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Writes a consistent copy of the whole database to `dest` while the store runs
    /// (`VACUUM INTO`: one read transaction, so the copy is the database as of one commit,
    /// never half a write). `dest` must not exist.
    ///
    /// # Errors
    /// [`StoreError::Database`] when `dest` exists or cannot be written.
    pub fn backup_to(&self, dest: &Path) -> StoreFuture<'_, ()> {
        let dest = dest.to_path_buf();
        self.read(move |c| {
            if dest.exists() {
                return Err(StoreError::Database(format!("{} exists already", dest.display())));
            }
            let path = dest
                .to_str()
                .ok_or_else(|| StoreError::Database(format!("{} is not UTF-8", dest.display())))?;
            c.execute("VACUUM INTO ?1", params![path]).map_err(db)?;
            std::fs::File::open(&dest)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::Database(format!("{}: {e}", dest.display())))?;
            Ok(())
        })
    }

    /// A bare single-row write through the same writer: the baseline of one durable commit.
    #[doc(hidden)]
    pub fn touch(&self) -> StoreFuture<'_, ()> {
        let f = self.submit(Op::Touch);
        Box::pin(async move { f.await.map(|_| ()) })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&conn)
            })
            .await
            .map_err(|_| StoreError::Closed)?
        })
    }
}

fn write_loop(mut conn: Connection, rx: Receiver<Job>, max_batch: usize) {
    let mut chains = Chains::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // IMMEDIATE: take the write lock at the start, waiting (busy timeout) for another
        // process that holds it; a deferred transaction that reads first would be refused at
        // once when it upgrades.
        let results = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => {
                // In order: a chained write sees how the write before it (in this batch or an
                // earlier one) went.
                let mut results = Vec::with_capacity(batch.len());
                for j in &batch {
                    let r = match chains.refusal(&j.op) {
                        Some(refused) => Err(refused),
                        None => apply(&tx, &j.op),
                    };
                    chains.record(&j.op, r.is_ok());
                    results.push(r);
                }
                match tx.commit() {
                    Ok(()) => results,
                    Err(e) => {
                        error!(error = %e, "sqlite commit failed");
                        batch.iter().map(|_| Err(db_clone(&e))).collect()
                    }
                }
            }
            Err(e) => batch.iter().map(|_| Err(db_clone(&e))).collect(),
        };
        for (job, r) in batch.into_iter().zip(results) {
            // Nothing of a batch that did not commit was applied.
            chains.record(&job.op, r.is_ok());
            let _ = job.reply.send(r);
        }
    }
}

fn db_clone(e: &rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn current(tx: &Transaction<'_>, id: &str, role: Role) -> Result<Option<(u64, u64)>, StoreError> {
    tx.query_row(
        "SELECT total, version FROM channels WHERE id = ?1 AND role = ?2",
        params![id, role.as_str()],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .optional()
    .map_err(db)
}

fn apply(tx: &Transaction<'_>, op: &Op) -> Result<Done, StoreError> {
    let now = unix_now();
    match op {
        Op::Create(c) => {
            let n = tx
                .prepare_cached(
                    "INSERT INTO channels (id, role, phase, capacity, expiry, customer_key, state,
                                           version, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?8)
                     ON CONFLICT (id, role) DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        c.id.to_string(),
                        c.role.as_str(),
                        phase_str(c.phase),
                        c.capacity.to_sat() as i64,
                        i64::from(c.expiry),
                        c.customer_key,
                        c.state,
                        now
                    ])
                })
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(c.id));
            }
            Ok(Done::Version(1))
        }
        Op::Payment(p) => {
            // Two statements: the payment row, inserted only when the channel is at the
            // expected version below the new total (the compare-and-swap) and linked to the
            // channel's previous payment; then the channel row, pointing at it.
            let id = p.id.to_string();
            let role = p.role.as_str();
            let total = p.total.to_sat() as i64;
            let version = p.expected_version as i64;
            let n = tx
                .prepare_cached(
                    "INSERT INTO payments (channel_id, role, total, signature, recorded_at, prev)
                     SELECT id, role, ?3, ?4, ?5, last_payment FROM channels
                     WHERE id = ?1 AND role = ?2 AND version = ?6 AND total < ?3",
                )
                .and_then(|mut st| st.execute(params![id, role, total, p.signature, now, version]))
                .map_err(db)?;
            if n == 0 {
                return Err(conflict_or_missing(tx, p.id, p.role)?);
            }
            let seq = tx.last_insert_rowid();
            let n = tx
                .prepare_cached(
                    "UPDATE channels SET total = ?1, state = ?2, version = version + 1,
                                         updated_at = ?3, last_payment = ?4
                     WHERE id = ?5 AND role = ?6 AND version = ?7",
                )
                .and_then(|mut st| st.execute(params![total, p.state, now, seq, id, role, version]))
                .map_err(db)?;
            if n != 1 {
                // The row matched the insert's condition a statement ago, in this transaction.
                return Err(StoreError::Database(format!("channel {id} changed mid-write")));
            }
            Ok(Done::Version(p.expected_version + 1))
        }
        Op::State(s) => {
            let n = tx
                .execute(
                    "UPDATE channels SET phase = ?1, closing_txid = COALESCE(?2, closing_txid),
                                         state = ?3, version = version + 1, updated_at = ?4
                     WHERE id = ?5 AND role = ?6 AND version = ?7",
                    params![
                        phase_str(s.phase),
                        s.closing_txid.map(|t| t.to_string()),
                        s.state,
                        now,
                        s.id.to_string(),
                        s.role.as_str(),
                        s.expected_version as i64
                    ],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(conflict_or_missing(tx, s.id, s.role)?);
            }
            Ok(Done::Version(s.expected_version + 1))
        }
        Op::Touch => {
            // A value that changes every time: SQLite writes nothing (and syncs nothing) for
            // a row rewritten with the same bytes.
            tx.execute(
                "INSERT INTO paychan_meta (key, value) VALUES ('touch', '0')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                [],
            )
            .map_err(db)?;
            Ok(Done::Unit)
        }
        Op::ReserveKeys { account, floor, count } => {
            let exhausted = || StoreError::KeyIndexesExhausted { account: *account };
            if floor.checked_add(*count).is_none() {
                return Err(exhausted());
            }
            // No row returned: the counter would pass the last index; it is left as it is.
            let next: i64 = tx
                .query_row(
                    "INSERT INTO key_counters (account, next) VALUES (?1, ?2 + ?3)
                     ON CONFLICT (account) DO UPDATE SET next = MAX(next, ?2) + ?3
                     WHERE MAX(next, ?2) + ?3 <= ?4
                     RETURNING next",
                    params![
                        i64::from(*account),
                        i64::from(*floor),
                        i64::from(*count),
                        i64::from(u32::MAX)
                    ],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?
                .ok_or_else(exhausted)?;
            Ok(Done::Keys(reserved_range(*account, next, *count)?))
        }
        Op::Lease { name, holder, ttl_ms } => {
            // Milliseconds of the database's clock (one machine's, for SQLite).
            const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
            let ttl = i64::try_from(*ttl_ms).unwrap_or(i64::MAX / 2);
            tx.execute(
                &format!(
                    "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, {NOW_MS} + ?3)
                     ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS}"
                ),
                params![name, holder, ttl],
            )
            .map_err(db)?;
            let now_holder: String = tx
                .query_row("SELECT holder FROM leases WHERE name = ?1", params![name], |r| r.get(0))
                .map_err(db)?;
            Ok(Done::Holder(now_holder))
        }
    }
}

fn conflict_or_missing(
    tx: &Transaction<'_>,
    id: OutPoint,
    role: Role,
) -> Result<StoreError, StoreError> {
    Ok(match current(tx, &id.to_string(), role)? {
        None => StoreError::NotFound(id),
        Some((total, version)) => StoreError::Conflict {
            channel: id,
            stored_total: Amount::from_sat(total),
            stored_version: version,
        },
    })
}

/// A channel's history: follow the links back from its latest payment.
const HISTORY_SQL: &str = "
    WITH RECURSIVE h(seq) AS (
        SELECT last_payment FROM channels WHERE id = ?1 AND role = ?2
        UNION ALL
        SELECT p.prev FROM payments p JOIN h ON p.seq = h.seq WHERE p.prev IS NOT NULL)
    SELECT p.total, p.signature, p.recorded_at FROM h JOIN payments p ON p.seq = h.seq
    ORDER BY p.seq";

const COLUMNS: &str =
    "id, role, phase, total, capacity, expiry, customer_key, closing_txid, state, version";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

type RawRow = (String, String, String, i64, i64, i64, String, Option<String>, Vec<u8>, i64);

fn to_row(r: RawRow) -> Result<ChannelRow, StoreError> {
    let (id, role, phase, total, capacity, expiry, customer_key, closing, state, version) = r;
    Ok(ChannelRow {
        id: parse_outpoint(&id)?,
        role: Role::parse(&role)?,
        phase: parse_phase(&phase)?,
        total: Amount::from_sat(total as u64),
        capacity: Amount::from_sat(capacity as u64),
        expiry: expiry as u32,
        customer_key,
        closing_txid: closing
            .map(|t| t.parse().map_err(|_| StoreError::Corrupt(format!("bad txid {t:?}"))))
            .transpose()?,
        state,
        version: version as u64,
    })
}

impl ChannelStore for SqliteStore {
    fn create(&self, channel: NewChannel) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::Create(channel));
        Box::pin(async move { version(f.await?) })
    }

    fn record_payment(&self, update: PaymentUpdate) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::Payment(update));
        Box::pin(async move { version(f.await?) })
    }

    fn update_state(&self, update: StateUpdate) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::State(update));
        Box::pin(async move { version(f.await?) })
    }

    fn get(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Option<ChannelRow>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM channels WHERE id = ?1 AND role = ?2"),
                params![id.to_string(), role.as_str()],
                row,
            )
            .optional()
            .map_err(db)?
            .map(to_row)
            .transpose()
        })
    }

    fn list(&self, query: Query) -> StoreFuture<'_, Vec<ChannelRow>> {
        self.read(move |c| {
            let mut sql = format!("SELECT {COLUMNS} FROM channels WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let by_id = query.by_id || query.after.is_some();
            if let Some(r) = query.role {
                args.push(r.as_str().to_string().into());
                // Paging by id: the primary key, not the role's index and a sort of them all
                // (`+` keeps SQLite's planner off an index for that term).
                let column = if by_id { "+role" } else { "role" };
                sql.push_str(&format!(" AND {column} = ?{}", args.len()));
            }
            if !query.phases.is_empty() {
                let mut marks = Vec::new();
                for p in &query.phases {
                    args.push(phase_str(*p).to_string().into());
                    marks.push(format!("?{}", args.len()));
                }
                sql.push_str(&format!(" AND phase IN ({})", marks.join(", ")));
            }
            if let Some(e) = query.expiring_before {
                args.push(i64::from(e).into());
                sql.push_str(&format!(" AND expiry < ?{}", args.len()));
            }
            if let Some(e) = query.expiring_from {
                args.push(i64::from(e).into());
                sql.push_str(&format!(" AND expiry >= ?{}", args.len()));
            }
            if let Some(k) = &query.customer_key {
                args.push(k.clone().into());
                sql.push_str(&format!(" AND customer_key = ?{}", args.len()));
            }
            if let Some(txid) = &query.funding_txid {
                // Ids are "txid:vout"; ';' follows ':' (the primary key's binary order).
                args.push(format!("{txid}:").into());
                args.push(format!("{txid};").into());
                let n = args.len();
                sql.push_str(&format!(" AND id >= ?{} AND id < ?{n}", n - 1));
            }
            if let Some(after) = &query.after {
                args.push(after.to_string().into());
                sql.push_str(&format!(" AND id > ?{}", args.len()));
            }
            sql.push_str(if by_id { " ORDER BY id" } else { " ORDER BY created_at, id" });
            if query.limit > 0 {
                sql.push_str(&format!(" LIMIT {}", query.limit));
            }
            let mut stmt = c.prepare(&sql).map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), row)
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            rows.into_iter().map(to_row).collect()
        })
    }

    fn census(&self, role: Role) -> StoreFuture<'_, Vec<Census>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    // Grouped in the index's own order (no sort): one pass over its entries.
                    "SELECT phase, COUNT(*), SUM(expiry = 0) FROM channels WHERE role = ?1
                     GROUP BY phase",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([role.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            census_of(rows.into_iter().map(|(p, all, none)| (p, all as u64, none as u64)))
        })
    }

    fn payments(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Vec<PaymentEntry>> {
        self.read(move |c| {
            let mut stmt = c.prepare(HISTORY_SQL).map_err(db)?;
            let rows = stmt
                .query_map(params![id.to_string(), role.as_str()], |r| {
                    Ok(PaymentEntry {
                        total: Amount::from_sat(r.get::<_, i64>(0)? as u64),
                        signature: r.get(1)?,
                        recorded_at: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            Ok(rows)
        })
    }

    fn reserve_key_indexes(
        &self,
        account: u32,
        floor: u32,
        count: u32,
    ) -> StoreFuture<'static, std::ops::Range<u32>> {
        let f = self.submit(Op::ReserveKeys { account, floor, count });
        Box::pin(async move { keys(f.await?) })
    }

    fn claim_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> StoreFuture<'static, String> {
        let f =
            self.submit(Op::Lease { name: name.to_string(), holder: holder.to_string(), ttl_ms });
        Box::pin(async move { self::holder(f.await?) })
    }

    fn key_indexes_reserved(&self, account: u32) -> StoreFuture<'_, u32> {
        self.read(move |c| {
            let next: Option<i64> = c
                .query_row(
                    "SELECT next FROM key_counters WHERE account = ?1",
                    params![i64::from(account)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            u32::try_from(next.unwrap_or(0))
                .map_err(|_| StoreError::KeyIndexesExhausted { account })
        })
    }
}
