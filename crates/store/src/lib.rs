//! # paychan-store
//!
//! The channel store: the truth about every channel (DESIGN §6). A merchant writes a payment
//! before acknowledging it; a customer writes a channel before broadcasting its funding and a
//! payment before sending it. [`ChannelStore`] is that contract; [`SqliteStore`] (one file, the
//! embedded default, group commit) and [`PostgresStore`] (several `paychan serve` processes on one
//! database) implement it.
//!
//! ## The contract
//!
//! * When a write's future resolves `Ok`, the write is **durable**: it survives a crash of the
//!   process and of the machine (SQLite `synchronous=FULL` in WAL mode; PostgreSQL's committed
//!   transactions). Until it resolves, the caller must not acknowledge anything that depends on it.
//! * A write that returns `Err` changed nothing.
//! * [`ChannelStore::record_payment`] is a **compare-and-swap**: the new total is written only if
//!   it is above the stored total and the row's version is the one the caller read. So two
//!   writers (tasks, or processes sharing PostgreSQL) can never both record conflicting totals,
//!   and a lower total never overwrites a higher one.
//! * Every successful write bumps the row's version by one and returns the new version.

#![deny(missing_docs)]

mod ops;
mod persisted;
mod postgres;
mod schema;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::Phase;

pub use persisted::{Broadcast, Drained, InFlight, Landed, Persisted, Restore, Storage, Submitted};
pub use postgres::PostgresStore;
pub use schema::SCHEMA_VERSION;
pub use sqlite::{SqliteOptions, SqliteStore, DEFAULT_CACHE_MIB};

/// A boxed future, so [`ChannelStore`] can be used as a trait object.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The compare-and-swap failed: the row changed since it was read, or the total is not
    /// above the stored one. Nothing was written; re-read and decide again.
    #[error(
        "conflict on channel {channel}: stored total {stored_total} at version {stored_version}"
    )]
    Conflict {
        /// The channel.
        channel: OutPoint,
        /// The total in the store.
        stored_total: Amount,
        /// The version in the store.
        stored_version: u64,
    },
    /// No such channel.
    #[error("unknown channel {0}")]
    NotFound(OutPoint),
    /// The channel machine refused a stored state (it does not decode) or a completion
    /// ([`Persisted`]).
    #[error("channel: {0}")]
    Channel(#[from] paychan_core::Error),
    /// The channel exists already.
    #[error("channel {0} exists already")]
    AlreadyExists(OutPoint),
    /// The database was written by a newer paychan.
    #[error("the database has schema version {found}, newer than this build's {supported}: upgrade paychan")]
    SchemaTooNew {
        /// The database's version.
        found: u32,
        /// The newest this build knows.
        supported: u32,
    },
    /// A row holds something this build cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The write queued before this one on the same channel (through the same store) failed,
    /// and this one was chained behind it ([`PaymentUpdate::chained`]): not applied.
    #[error("channel {0}: the write queued before this one failed; this one was not applied")]
    AfterFailedWrite(OutPoint),
    /// The channel was reloaded from the store while this write was in flight (an earlier
    /// write of its pipeline failed): the write's outcome is in the store, and nothing held
    /// behind it was released. Re-read and decide again.
    #[error("channel {0} was reloaded from the store while this write was in flight")]
    Superseded(OutPoint),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
    /// Every key index of the account was reserved (or the reservation asked for would pass
    /// the last one).
    #[error("key account {account}: no key index is left to reserve")]
    KeyIndexesExhausted {
        /// The key account.
        account: u32,
    },
}

/// Which side of the channel a row belongs to (a process can be both, e.g. in the demo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The receiving side.
    Merchant,
    /// The paying side.
    Customer,
}

impl Role {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Merchant => "merchant",
            Role::Customer => "customer",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "merchant" => Ok(Role::Merchant),
            "customer" => Ok(Role::Customer),
            _ => Err(StoreError::Corrupt(format!("unknown role {s:?}"))),
        }
    }
}

pub(crate) fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Opening => "opening",
        Phase::AwaitingFunding => "awaiting_funding",
        Phase::Open => "open",
        Phase::Settling => "settling",
        Phase::Settled => "settled",
        Phase::Refunded => "refunded",
        Phase::Abandoned => "abandoned",
        Phase::Expired => "expired",
        Phase::Disputed => "disputed",
    }
}

pub(crate) fn parse_phase(s: &str) -> Result<Phase, StoreError> {
    Ok(match s {
        "opening" => Phase::Opening,
        "awaiting_funding" => Phase::AwaitingFunding,
        "open" => Phase::Open,
        "settling" => Phase::Settling,
        "settled" => Phase::Settled,
        "refunded" => Phase::Refunded,
        "abandoned" => Phase::Abandoned,
        "expired" => Phase::Expired,
        "disputed" => Phase::Disputed,
        _ => return Err(StoreError::Corrupt(format!("unknown phase {s:?}"))),
    })
}

/// A census from the database's counts per phase: (phase, channels, of which without expiry).
pub(crate) fn census_of(
    rows: impl Iterator<Item = (String, u64, u64)>,
) -> Result<Vec<Census>, StoreError> {
    let mut out = Vec::new();
    for (phase, all, no_expiry) in rows {
        let phase = parse_phase(&phase)?;
        for (no_expiry, channels) in [(false, all - no_expiry.min(all)), (true, no_expiry)] {
            if channels > 0 {
                out.push(Census { phase, no_expiry, channels });
            }
        }
    }
    Ok(out)
}

pub(crate) fn parse_outpoint(s: &str) -> Result<OutPoint, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt(format!("bad channel id {s:?}")))
}

/// A new channel row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannel {
    /// The channel (funding outpoint).
    pub id: OutPoint,
    /// Whose row.
    pub role: Role,
    /// Its phase.
    pub phase: Phase,
    /// The deposit.
    pub capacity: Amount,
    /// The expiry (locktime value).
    pub expiry: u32,
    /// The customer's channel key, hex.
    pub customer_key: String,
    /// The encoded state (`MerchantState::encode` / `CustomerState::encode`).
    pub state: Vec<u8>,
}

/// A stored channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// The channel.
    pub id: OutPoint,
    /// Whose row.
    pub role: Role,
    /// Its phase.
    pub phase: Phase,
    /// Highest total (merchant: accepted; customer: signed).
    pub total: Amount,
    /// The deposit.
    pub capacity: Amount,
    /// The expiry.
    pub expiry: u32,
    /// The customer's key, hex.
    pub customer_key: String,
    /// The settlement (or refund) txid, once known.
    pub closing_txid: Option<Txid>,
    /// The encoded state.
    pub state: Vec<u8>,
    /// The row's version (1 at creation, +1 per write).
    pub version: u64,
}

/// A payment to record (compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentUpdate {
    /// The channel.
    pub id: OutPoint,
    /// Whose row.
    pub role: Role,
    /// The new total: written only if above the stored total.
    pub total: Amount,
    /// The customer's signature of it (kept in the history).
    pub signature: Vec<u8>,
    /// The new encoded state.
    pub state: Vec<u8>,
    /// The version the caller read; the write happens only if the row still has it.
    pub expected_version: u64,
    /// Queued behind an earlier write of this channel through the same store that has not
    /// landed yet (a pipelined driver, [`Persisted::submit`]): `expected_version` is the one
    /// that write produces. Applied only if that write was; else
    /// [`StoreError::AfterFailedWrite`]. (Versions alone cannot tell: another writer's change
    /// may have produced the same version.)
    pub chained: bool,
}

/// A phase change (or any other state change that is not a payment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    /// The channel.
    pub id: OutPoint,
    /// Whose row.
    pub role: Role,
    /// The new phase.
    pub phase: Phase,
    /// The settlement or refund txid, if known.
    pub closing_txid: Option<Txid>,
    /// The new encoded state.
    pub state: Vec<u8>,
    /// The version the caller read.
    pub expected_version: u64,
    /// As [`PaymentUpdate::chained`].
    pub chained: bool,
}

/// Which channels to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this role.
    pub role: Option<Role>,
    /// Only these phases.
    pub phases: Vec<Phase>,
    /// Only channels expiring before this (locktime value).
    pub expiring_before: Option<u32>,
    /// Only channels expiring at or after this (locktime value): with `expiring_before`, one
    /// kind of lock (heights below 500,000,000, times from it).
    pub expiring_from: Option<u32>,
    /// Only the channels funded by outputs of this transaction.
    pub funding_txid: Option<Txid>,
    /// Ordered by id (the primary key's order) instead of by age: pages through a large
    /// store, `limit` rows at a time, with [`Query::after`].
    pub by_id: bool,
    /// Only channels whose id comes after this one in the store's order of ids (the last id of
    /// the page before; implies [`Query::by_id`]).
    pub after: Option<OutPoint>,
    /// Only this customer key (hex).
    pub customer_key: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

impl Query {
    /// Every channel of `role`.
    pub fn role(role: Role) -> Self {
        Query { role: Some(role), ..Query::default() }
    }
}

/// How many channels are in one phase with one kind of lock ([`ChannelStore::census`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// The phase.
    pub phase: Phase,
    /// Channels without an expiry (stored expiry 0: dispute channels).
    pub no_expiry: bool,
    /// How many.
    pub channels: u64,
}

/// One entry of a channel's payment history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEntry {
    /// The total recorded.
    pub total: Amount,
    /// Its signature.
    pub signature: Vec<u8>,
    /// When it was recorded (Unix seconds).
    pub recorded_at: u64,
}

/// The store's contract (see the crate documentation).
///
/// A write is queued when its method is called, not when its future is first polled, and the
/// writes of one channel are applied in the order their methods were called: a driver may
/// queue the write of a channel's next state before the previous write has landed
/// ([`Persisted::submit`]). The futures of writes borrow nothing.
pub trait ChannelStore: Send + Sync {
    /// Creates a channel row at version 1. Durable when it resolves.
    fn create(&self, channel: NewChannel) -> StoreFuture<'static, u64>;

    /// Records a payment by compare-and-swap; returns the new version. Durable when it resolves.
    fn record_payment(&self, update: PaymentUpdate) -> StoreFuture<'static, u64>;

    /// Writes a phase change; returns the new version. Durable when it resolves.
    fn update_state(&self, update: StateUpdate) -> StoreFuture<'static, u64>;

    /// One channel.
    fn get(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Option<ChannelRow>>;

    /// Channels matching `query`, oldest first (by id with [`Query::by_id`]).
    fn list(&self, query: Query) -> StoreFuture<'_, Vec<ChannelRow>>;

    /// How many channels of `role` the store holds, by phase and kind of lock, counted by the
    /// database (no row is read out).
    fn census(&self, role: Role) -> StoreFuture<'_, Vec<Census>> {
        Box::pin(async move {
            let rows = self.list(Query::role(role)).await?;
            let mut out: Vec<Census> = Vec::new();
            for r in rows {
                let no_expiry = r.expiry == 0;
                match out.iter_mut().find(|c| c.phase == r.phase && c.no_expiry == no_expiry) {
                    Some(c) => c.channels += 1,
                    None => out.push(Census { phase: r.phase, no_expiry, channels: 1 }),
                }
            }
            Ok(out)
        })
    }

    /// A channel's payment history, oldest first.
    fn payments(&self, id: OutPoint, role: Role) -> StoreFuture<'_, Vec<PaymentEntry>>;

    /// Reserves `count` key indexes of key account `account` for the caller: the range returned
    /// is reserved for no other caller, in this process or in another one on the same database,
    /// ever (ADR 0029). It starts at `floor` or above (a counter kept before the database kept
    /// it, e.g. a home's key file). Durable when it resolves.
    fn reserve_key_indexes(
        &self,
        account: u32,
        floor: u32,
        count: u32,
    ) -> StoreFuture<'static, std::ops::Range<u32>>;

    /// Every key index of `account` below this one has been reserved by some caller.
    fn key_indexes_reserved(&self, account: u32) -> StoreFuture<'_, u32>;

    /// Asks for lease `name` for `holder`, for `ttl_ms` by the database's clock (ADR 0030): it
    /// is granted when nobody holds it, when its holder's time ran out, or when `holder` holds
    /// it already (then it runs `ttl_ms` from now). Returns who holds it after the request.
    /// Durable when it resolves.
    fn claim_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> StoreFuture<'static, String>;
}

/// The range a key counter that now stands at `next` (after adding `count`) reserved, or
/// [`StoreError::KeyIndexesExhausted`] past `u32`.
pub(crate) fn reserved_range(
    account: u32,
    next: i64,
    count: u32,
) -> Result<std::ops::Range<u32>, StoreError> {
    let end = u32::try_from(next).map_err(|_| StoreError::KeyIndexesExhausted { account })?;
    let start = end.checked_sub(count).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "key counter of account {account} at {next}, below the {count} just reserved"
        ))
    })?;
    Ok(start..end)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
