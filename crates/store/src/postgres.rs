//! The PostgreSQL store: the same contract for merchants that outgrow one machine. Several
//! processes may share one database: every payment is a compare-and-swap in SQL (`WHERE version
//! = $expected AND total < $new`), which PostgreSQL evaluates against the latest committed row,
//! so two processes can never both record conflicting totals. Writes are batched per process
//! into one transaction (group commit), like the SQLite store.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use paychan_core::bitcoin::{Amount, OutPoint};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, error, info, warn};

use crate::ops::{holder, keys, version, Chains, Done, Job, Op};
use crate::schema::{self, Dialect};
use crate::{
    census_of, parse_outpoint, parse_phase, phase_str, unix_now, Census, ChannelRow, ChannelStore,
    NewChannel, PaymentEntry, Query, Role, StoreError, StoreFuture,
};

/// The PostgreSQL [`ChannelStore`].
pub struct PostgresStore {
    jobs: mpsc::Sender<Job>,
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(describe(&e))
}

/// The error with PostgreSQL's own message (tokio-postgres alone says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn connect_client(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| StoreError::Database("connecting to the database timed out".into()))?
        .map_err(db)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db)?;
    // One migrator at a time across processes.
    tx.execute("SELECT pg_advisory_xact_lock(7227696)", &[]).await.map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS paychan_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .await
    .map_err(db)?;
    let found: u32 = tx
        .query_opt("SELECT value FROM paychan_meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(db)?
        .map(|r| r.get::<_, String>(0).parse().unwrap_or(u32::MAX))
        .unwrap_or(0);
    schema::check(found)?;
    for (i, sql) in schema::migrations(Dialect::Postgres).iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO paychan_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&(i + 1).to_string()],
        )
        .await
        .map_err(db)?;
        debug!(version = i + 1, "postgres schema migrated");
    }
    tx.commit().await.map_err(db)
}

impl PostgresStore {
    /// Connects to `url` (e.g. `postgres://user@127.0.0.1:5432/paychan`), migrates the schema,
    /// and starts the writer. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Database`]; [`StoreError::SchemaTooNew`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 1_024).await
    }

    /// As [`PostgresStore::connect`], committing at most `max_batch` writes together.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect_with(url: &str, max_batch: usize) -> Result<Self, StoreError> {
        let mut writer = connect_client(url).await?;
        migrate(&mut writer).await?;
        let config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| StoreError::Database(e.to_string()))?;
        let mgr = Manager::from_config(
            config,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(mgr)
            .max_size(4)
            .build()
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let (jobs, rx) = mpsc::channel(65_536);
        tokio::spawn(write_loop(url.to_owned(), writer, rx, max_batch.max(1)));
        Ok(PostgresStore { jobs, pool })
    }

    /// Queues `op` now (writes of one channel are applied in call order); the future answers
    /// once its transaction committed.
    fn submit(&self, op: Op) -> StoreFuture<'static, Done> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.clone();
        // Queued at the call, so that writes keep the order of the calls.
        let waiting = match jobs.try_send(Job { op, reply }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => Some(job),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Box::pin(async { Err(StoreError::Closed) })
            }
        };
        Box::pin(async move {
            if let Some(job) = waiting {
                // The queue is full: wait for room. (A later write of the same channel may
                // then go first; its compare-and-swap fails, safely.)
                jobs.send(job).await.map_err(|_| StoreError::Closed)?;
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// A bare single-row write through the same writer: the baseline of one durable commit.
    #[doc(hidden)]
    pub fn touch(&self) -> StoreFuture<'_, ()> {
        let f = self.submit(Op::Touch);
        Box::pin(async move { f.await.map(|_| ()) })
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Database(e.to_string()))
    }
}

/// The first wait before connecting the writer again after a failed attempt; it doubles up to
/// [`RECONNECT_MAX`].
pub const RECONNECT_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest wait between two attempts to connect the writer again.
pub const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The writer's connection: lost when the server restarts or drops it, then connected again
/// (with backoff between failed attempts) by the next batch. While it is down, batches fail at
/// once with [`StoreError::Database`]: nothing is acknowledged that was not committed.
struct Writer {
    url: String,
    client: Option<Client>,
    wait: std::time::Duration,
    next_try: tokio::time::Instant,
}

impl Writer {
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            warn!("postgres writer connection lost; connecting again");
            self.client = None;
        }
        if self.client.is_none() {
            if tokio::time::Instant::now() < self.next_try {
                return Err(StoreError::Database(format!(
                    "the database connection is down; next attempt in {} ms",
                    self.next_try
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_millis()
                )));
            }
            match connect_client(&self.url).await {
                Ok(c) => {
                    info!("postgres writer connected again");
                    self.client = Some(c);
                    self.wait = RECONNECT_FIRST;
                }
                Err(e) => {
                    self.next_try = tokio::time::Instant::now() + self.wait;
                    self.wait = (self.wait * 2).min(RECONNECT_MAX);
                    return Err(e);
                }
            }
        }
        self.client.as_mut().ok_or(StoreError::Closed)
    }
}

async fn write_loop(url: String, client: Client, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut writer = Writer {
        url,
        client: Some(client),
        wait: RECONNECT_FIRST,
        next_try: tokio::time::Instant::now(),
    };
    let mut chains = Chains::default();
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                // A chained write goes in a later batch than the write it is chained behind:
                // the statements of a batch run pipelined, so it could not see how that one
                // went.
                Ok(j) if j.op.chained() && batch.iter().any(|b| b.op.key() == j.op.key()) => {
                    carried = Some(j);
                    break;
                }
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let refusals: Vec<Option<StoreError>> =
            batch.iter().map(|j| chains.refusal(&j.op)).collect();
        let results = match writer.client().await {
            Ok(client) => run_batch(client, &batch, refusals).await,
            Err(e) => {
                let text = e.to_string();
                batch.iter().map(|_| Err(StoreError::Database(text.clone()))).collect()
            }
        };
        for (job, r) in batch.into_iter().zip(results) {
            chains.record(&job.op, r.is_ok());
            let _ = job.reply.send(r);
        }
    }
}

/// Runs a batch in one transaction; a job with a refusal is answered with it and not run.
async fn run_batch(
    client: &mut Client,
    batch: &[Job],
    mut refusals: Vec<Option<StoreError>>,
) -> Vec<Result<Done, StoreError>> {
    let failed = |e: &tokio_postgres::Error| -> Vec<Result<Done, StoreError>> {
        batch.iter().map(|_| Err(StoreError::Database(describe(e)))).collect()
    };
    let tx = match client.transaction().await {
        Ok(t) => t,
        Err(e) => return failed(&e),
    };
    // Every write is one statement, so the whole batch is pipelined on the connection. The
    // server runs pipelined statements in the order they were sent: writes to one channel keep
    // their order.
    let run: Vec<usize> = (0..batch.len()).filter(|i| refusals[*i].is_none()).collect();
    let results =
        futures_util::future::join_all(run.iter().map(|i| apply(&tx, &batch[*i].op))).await;
    let mut applied: Vec<Option<Result<Done, StoreError>>> = batch.iter().map(|_| None).collect();
    for (i, r) in run.into_iter().zip(results) {
        match r {
            Ok(r) => applied[i] = Some(r),
            // A statement error aborts a PostgreSQL transaction: nothing of this batch commits.
            Err(e) => {
                error!(error = %describe(&e), "postgres write failed");
                return failed(&e);
            }
        }
    }
    match tx.commit().await {
        Ok(()) => applied
            .into_iter()
            .zip(refusals.iter_mut())
            .map(|(r, refused)| match (r, refused.take()) {
                (Some(r), _) => r,
                (None, Some(refused)) => Err(refused),
                (None, None) => {
                    Err(StoreError::Database("a write was neither run nor refused".into()))
                }
            })
            .collect(),
        Err(e) => failed(&e),
    }
}

fn conflict_from(id: OutPoint, row: Option<&tokio_postgres::Row>, total_col: usize) -> StoreError {
    match row {
        None => StoreError::NotFound(id),
        Some(r) => StoreError::Conflict {
            channel: id,
            stored_total: Amount::from_sat(r.get::<_, i64>(total_col) as u64),
            stored_version: r.get::<_, i64>(total_col + 1) as u64,
        },
    }
}

/// One write as one statement. The final `SELECT` of each reads the snapshot the statement
/// started from, which is what a refused compare-and-swap reports.
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    op: &Op,
) -> Result<Result<Done, StoreError>, tokio_postgres::Error> {
    let now = unix_now();
    Ok(match op {
        Op::Create(c) => {
            let rows = tx
                .query(
                    "INSERT INTO channels (id, role, phase, capacity, expiry, customer_key, state,
                                           version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8)
                     ON CONFLICT (id, role) DO NOTHING RETURNING 1",
                    &[
                        &c.id.to_string(),
                        &c.role.as_str(),
                        &phase_str(c.phase),
                        &(c.capacity.to_sat() as i64),
                        &i64::from(c.expiry),
                        &c.customer_key,
                        &c.state,
                        &now,
                    ],
                )
                .await?;
            if rows.is_empty() {
                Err(StoreError::AlreadyExists(c.id))
            } else {
                Ok(Done::Version(1))
            }
        }
        Op::Payment(p) => {
            let row = tx
                .query_opt(
                    "WITH upd AS (
                         UPDATE channels c SET total = $1, state = $2, version = c.version + 1,
                                               updated_at = $3,
                                               last_payment = nextval('payments_seq_seq')
                         FROM (SELECT last_payment AS prev FROM channels
                               WHERE id = $4 AND role = $5) o
                         WHERE c.id = $4 AND c.role = $5 AND c.version = $6 AND c.total < $1
                         RETURNING c.version, c.last_payment AS seq, o.prev),
                     ins AS (
                         INSERT INTO payments (seq, channel_id, role, total, signature,
                                               recorded_at, prev)
                         SELECT upd.seq, $4, $5, $1, $7, $3, upd.prev FROM upd)
                     SELECT (SELECT version FROM upd), c.total, c.version
                     FROM channels c WHERE c.id = $4 AND c.role = $5",
                    &[
                        &(p.total.to_sat() as i64),
                        &p.state,
                        &now,
                        &p.id.to_string(),
                        &p.role.as_str(),
                        &(p.expected_version as i64),
                        &p.signature,
                    ],
                )
                .await?;
            match row.as_ref().and_then(|r| r.get::<_, Option<i64>>(0)) {
                Some(v) => Ok(Done::Version(v as u64)),
                None => Err(conflict_from(p.id, row.as_ref(), 1)),
            }
        }
        Op::State(s) => {
            let row = tx
                .query_opt(
                    "WITH upd AS (
                         UPDATE channels SET phase = $1, closing_txid = COALESCE($2, closing_txid),
                                             state = $3, version = version + 1, updated_at = $4
                         WHERE id = $5 AND role = $6 AND version = $7
                         RETURNING version)
                     SELECT (SELECT version FROM upd), c.total, c.version
                     FROM channels c WHERE c.id = $5 AND c.role = $6",
                    &[
                        &phase_str(s.phase),
                        &s.closing_txid.map(|t| t.to_string()),
                        &s.state,
                        &now,
                        &s.id.to_string(),
                        &s.role.as_str(),
                        &(s.expected_version as i64),
                    ],
                )
                .await?;
            match row.as_ref().and_then(|r| r.get::<_, Option<i64>>(0)) {
                Some(v) => Ok(Done::Version(v as u64)),
                None => Err(conflict_from(s.id, row.as_ref(), 1)),
            }
        }
        Op::Touch => {
            tx.execute(
                "INSERT INTO paychan_meta (key, value) VALUES ('touch', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&now.to_string()],
            )
            .await?;
            Ok(Done::Unit)
        }
        Op::ReserveKeys { account, floor, count } if floor.checked_add(*count).is_none() => {
            Err(StoreError::KeyIndexesExhausted { account: *account })
        }
        Op::ReserveKeys { account, floor, count } => {
            // No row returned: the counter would pass the last index; it is left as it is.
            let row = tx
                .query_opt(
                    "INSERT INTO key_counters (account, next) VALUES ($1, $2::BIGINT + $3::BIGINT)
                     ON CONFLICT (account)
                     DO UPDATE SET next = GREATEST(key_counters.next, $2::BIGINT) + $3::BIGINT
                     WHERE GREATEST(key_counters.next, $2::BIGINT) + $3::BIGINT <= $4::BIGINT
                     RETURNING next",
                    &[
                        &i64::from(*account),
                        &i64::from(*floor),
                        &i64::from(*count),
                        &i64::from(u32::MAX),
                    ],
                )
                .await?;
            match row {
                Some(r) => {
                    crate::reserved_range(*account, r.get::<_, i64>(0), *count).map(Done::Keys)
                }
                None => Err(StoreError::KeyIndexesExhausted { account: *account }),
            }
        }
        Op::Lease { name, holder, ttl_ms } => {
            // Milliseconds of the database server's clock: one clock for every instance.
            const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
            let ttl = i64::try_from(*ttl_ms).unwrap_or(i64::MAX / 2);
            tx.execute(
                &format!(
                    "INSERT INTO leases (name, holder, expires_at_ms)
                     VALUES ($1, $2, {NOW_MS} + $3::BIGINT)
                     ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS}"
                ),
                &[name, holder, &ttl],
            )
            .await?;
            let row = tx.query_one("SELECT holder FROM leases WHERE name = $1", &[name]).await?;
            Ok(Done::Holder(row.get(0)))
        }
    })
}

const COLUMNS: &str =
    "id, role, phase, total, capacity, expiry, customer_key, closing_txid, state, version";

fn to_row(r: &tokio_postgres::Row) -> Result<ChannelRow, StoreError> {
    let closing: Option<String> = r.get(7);
    Ok(ChannelRow {
        id: parse_outpoint(r.get(0))?,
        role: Role::parse(r.get(1))?,
        phase: parse_phase(r.get(2))?,
        total: Amount::from_sat(r.get::<_, i64>(3) as u64),
        capacity: Amount::from_sat(r.get::<_, i64>(4) as u64),
        expiry: r.get::<_, i64>(5) as u32,
        customer_key: r.get(6),
        closing_txid: closing
            .map(|t| t.parse().map_err(|_| StoreError::Corrupt(format!("bad txid {t:?}"))))
            .transpose()?,
        state: r.get(8),
        version: r.get::<_, i64>(9) as u64,
    })
}

impl ChannelStore for PostgresStore {
    fn create(&self, channel: NewChannel) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::Create(channel));
        Box::pin(async move { version(f.await?) })
    }

    fn record_payment(&self, update: crate::PaymentUpdate) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::Payment(update));
        Box::pin(async move { version(f.await?) })
    }

    fn update_state(&self, update: crate::StateUpdate) -> StoreFuture<'static, u64> {
        let f = self.submit(Op::State(update));
        Box::pin(async move { version(f.await?) })
    }

    fn get(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Option<ChannelRow>> {
        Box::pin(async move {
            let c = self.reader().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM channels WHERE id = $1 AND role = $2"),
                    &[&id.to_string(), &role.as_str()],
                )
                .await
                .map_err(db)?;
            row.as_ref().map(to_row).transpose()
        })
    }

    fn list(&self, query: Query) -> StoreFuture<'_, Vec<ChannelRow>> {
        Box::pin(async move {
            let c = self.reader().await?;
            let mut sql = format!("SELECT {COLUMNS} FROM channels WHERE TRUE");
            let role = query.role.map(|r| r.as_str().to_string());
            let phases: Vec<String> =
                query.phases.iter().map(|p| phase_str(*p).to_string()).collect();
            let expiry = query.expiring_before.map(i64::from);
            let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
            if let Some(r) = &role {
                args.push(r);
                sql.push_str(&format!(" AND role = ${}", args.len()));
            }
            if !phases.is_empty() {
                args.push(&phases);
                sql.push_str(&format!(" AND phase = ANY(${})", args.len()));
            }
            if let Some(e) = &expiry {
                args.push(e);
                sql.push_str(&format!(" AND expiry < ${}", args.len()));
            }
            let from = query.expiring_from.map(i64::from);
            if let Some(e) = &from {
                args.push(e);
                sql.push_str(&format!(" AND expiry >= ${}", args.len()));
            }
            if let Some(k) = &query.customer_key {
                args.push(k);
                sql.push_str(&format!(" AND customer_key = ${}", args.len()));
            }
            // Ids are "txid:vout" (hex and a colon: nothing LIKE treats specially).
            let funded_by = query.funding_txid.map(|t| format!("{t}:%"));
            if let Some(pattern) = &funded_by {
                args.push(pattern);
                sql.push_str(&format!(" AND id LIKE ${}", args.len()));
            }
            let after = query.after.map(|o| o.to_string());
            if let Some(after) = &after {
                args.push(after);
                sql.push_str(&format!(" AND id > ${}", args.len()));
            }
            let by_id = query.by_id || query.after.is_some();
            sql.push_str(if by_id { " ORDER BY id" } else { " ORDER BY created_at, id" });
            if query.limit > 0 {
                sql.push_str(&format!(" LIMIT {}", query.limit));
            }
            let rows = c.query(&sql, &args).await.map_err(db)?;
            rows.iter().map(to_row).collect()
        })
    }

    fn census(&self, role: Role) -> StoreFuture<'_, Vec<Census>> {
        Box::pin(async move {
            let c = self.reader().await?;
            let rows = c
                .query(
                    "SELECT phase, COUNT(*), COUNT(*) FILTER (WHERE expiry = 0) FROM channels
                     WHERE role = $1 GROUP BY phase",
                    &[&role.as_str()],
                )
                .await
                .map_err(db)?;
            census_of(rows.iter().map(|r| {
                let phase: String = r.get(0);
                (phase, r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64)
            }))
        })
    }

    fn payments(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Vec<PaymentEntry>> {
        Box::pin(async move {
            let c = self.reader().await?;
            let rows = c
                .query(
                    "WITH RECURSIVE h(seq) AS (
                         SELECT last_payment FROM channels WHERE id = $1 AND role = $2
                         UNION ALL
                         SELECT p.prev FROM payments p JOIN h ON p.seq = h.seq
                         WHERE p.prev IS NOT NULL)
                     SELECT p.total, p.signature, p.recorded_at FROM h
                     JOIN payments p ON p.seq = h.seq ORDER BY p.seq",
                    &[&id.to_string(), &role.as_str()],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| PaymentEntry {
                    total: Amount::from_sat(r.get::<_, i64>(0) as u64),
                    signature: r.get(1),
                    recorded_at: r.get::<_, i64>(2) as u64,
                })
                .collect())
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
        Box::pin(async move {
            let c = self.reader().await?;
            let row = c
                .query_opt(
                    "SELECT next FROM key_counters WHERE account = $1",
                    &[&i64::from(account)],
                )
                .await
                .map_err(db)?;
            let next = row.map_or(0, |r| r.get::<_, i64>(0));
            u32::try_from(next).map_err(|_| StoreError::KeyIndexesExhausted { account })
        })
    }
}
