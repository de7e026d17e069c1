//! The writes both backends' writers batch.

use paychan_core::bitcoin::{Amount, OutPoint};
use tokio::sync::oneshot;

use crate::{NewChannel, PaymentUpdate, Role, StateUpdate, StoreError};

pub(crate) enum Op {
    Create(NewChannel),
    Payment(PaymentUpdate),
    State(StateUpdate),
    Charge {
        id: OutPoint,
        role: Role,
        price: Amount,
        refund: bool,
    },
    /// A bare single-row write: the baseline of one durable commit, for benchmarks.
    Touch,
}

pub(crate) enum Done {
    Version(u64),
    Credit(Amount),
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

pub(crate) fn credit(d: Done) -> Result<Amount, StoreError> {
    match d {
        Done::Credit(a) => Ok(a),
        _ => Err(StoreError::Database("unexpected writer reply".into())),
    }
}
