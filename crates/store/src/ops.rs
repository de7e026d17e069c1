//! The writes both backends' writers batch.

use tokio::sync::oneshot;

use crate::{NewChannel, PaymentUpdate, StateUpdate, StoreError};

pub(crate) enum Op {
    Create(NewChannel),
    Payment(PaymentUpdate),
    State(StateUpdate),
    /// A bare single-row write: the baseline of one durable commit, for benchmarks.
    Touch,
}

pub(crate) enum Done {
    Version(u64),
    Unit,
}

pub(crate) struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

pub(crate) fn version(d: Done) -> Result<u64, StoreError> {
    match d {
        Done::Version(v) => Ok(v),
        _ => Err(StoreError::Database("unexpected writer reply".into())),
    }
}
