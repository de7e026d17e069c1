//! The writes both backends' writers batch.

use std::collections::HashSet;

use paychan_core::bitcoin::OutPoint;
use tokio::sync::oneshot;

use crate::{NewChannel, PaymentUpdate, Role, StateUpdate, StoreError};

pub(crate) enum Op {
    Create(NewChannel),
    Payment(PaymentUpdate),
    State(StateUpdate),
    /// A bare single-row write: the baseline of one durable commit, for benchmarks.
    Touch,
    /// Reserves key indexes ([`crate::ChannelStore::reserve_key_indexes`]).
    ReserveKeys {
        account: u32,
        floor: u32,
        count: u32,
    },
    /// Claims or renews a lease ([`crate::ChannelStore::claim_lease`]).
    Lease {
        name: String,
        holder: String,
        ttl_ms: u64,
    },
}

pub(crate) enum Done {
    Version(u64),
    Unit,
    Keys(std::ops::Range<u32>),
    Holder(String),
}

pub(crate) struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

pub(crate) fn holder(d: Done) -> Result<String, StoreError> {
    match d {
        Done::Holder(h) => Ok(h),
        _ => Err(StoreError::Database("unexpected writer reply".into())),
    }
}

pub(crate) fn keys(d: Done) -> Result<std::ops::Range<u32>, StoreError> {
    match d {
        Done::Keys(r) => Ok(r),
        _ => Err(StoreError::Database("unexpected writer reply".into())),
    }
}

pub(crate) fn version(d: Done) -> Result<u64, StoreError> {
    match d {
        Done::Version(v) => Ok(v),
        _ => Err(StoreError::Database("unexpected writer reply".into())),
    }
}

impl Op {
    pub fn key(&self) -> Option<(OutPoint, Role)> {
        match self {
            Op::Create(c) => Some((c.id, c.role)),
            Op::Payment(p) => Some((p.id, p.role)),
            Op::State(s) => Some((s.id, s.role)),
            Op::Touch | Op::ReserveKeys { .. } | Op::Lease { .. } => None,
        }
    }

    pub fn chained(&self) -> bool {
        match self {
            Op::Payment(p) => p.chained,
            Op::State(s) => s.chained,
            Op::Create(_) | Op::Touch | Op::ReserveKeys { .. } | Op::Lease { .. } => false,
        }
    }
}

/// What a writer remembers of the writes it applied: the channels whose last write failed,
/// so that a write chained behind it ([`PaymentUpdate::chained`]) is refused rather than
/// applied on top of another writer's change. A channel leaves the set at its next write that
/// succeeds (after a failure the driver reloads and writes unchained).
#[derive(Default)]
pub(crate) struct Chains {
    failed: HashSet<(OutPoint, Role)>,
}

impl Chains {
    /// Why `op` must not be applied, if it must not.
    pub fn refusal(&self, op: &Op) -> Option<StoreError> {
        let key = op.key()?;
        (op.chained() && self.failed.contains(&key)).then_some(StoreError::AfterFailedWrite(key.0))
    }

    /// Notes how `op` ended (its transaction committed, or not).
    pub fn record(&mut self, op: &Op, ok: bool) {
        let Some(key) = op.key() else { return };
        if ok {
            self.failed.remove(&key);
        } else {
            self.failed.insert(key);
        }
    }
}
