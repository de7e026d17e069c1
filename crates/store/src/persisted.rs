//! The one persisted-channel driver (ADR 0014): a channel machine and the row that stores it.
//! The merchant's and the customer's drivers (and every later channel kind) run their machines
//! through it, so "drain the effects in order, coalesce persists, write by compare-and-swap,
//! reload after a failed write, release what was held behind a write only after it" is written
//! once.
//!
//! What it does not do is I/O other than the store: the messages and transactions a drain
//! releases come back in [`Drained`] for the caller to send and broadcast (each was held by the
//! machine until the write it depends on completed, so any later moment is safe).

use std::time::{Duration, Instant};

use paychan_core::bitcoin::{Amount, OutPoint, Transaction};
use paychan_core::channel::{Effect, Event, Machine, StoredState};
use paychan_core::msg::Message;

use crate::{ChannelStore, NewChannel, PaymentUpdate, Role, StateUpdate, StoreError};

/// Makes a machine again from its stored, encoded state.
pub type Restore<'a, M> = &'a (dyn Fn(&[u8]) -> Result<M, paychan_core::Error> + Send + Sync);

/// Where a [`Persisted`] channel is written, and how it is read back.
pub struct Storage<'a, M> {
    /// The store.
    pub store: &'a dyn ChannelStore,
    /// Whose row.
    pub role: Role,
    /// Rebuilds the machine from a stored state (after a failed write).
    pub restore: Restore<'a, M>,
}

/// A transaction, or a zero-fee parent with the child that pays for it, for the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// One transaction.
    Transaction(Transaction),
    /// A package (`ChainSource::broadcast_with_parent`): a dispute channel's trigger and the
    /// settlement or exit child.
    Package {
        /// The trigger.
        parent: Transaction,
        /// Its child.
        child: Transaction,
    },
}

/// What a drain released, in order, once the writes they wait for were durable.
#[derive(Debug)]
pub struct Drained<S> {
    /// Messages for the peer.
    pub sends: Vec<Message>,
    /// Transactions and packages to broadcast.
    pub broadcasts: Vec<Broadcast>,
    /// Outpoints the machine asked to be watched (beside the channel's own funding, which the
    /// drivers watch from the start): a dispute channel's trigger output.
    pub watches: Vec<OutPoint>,
    /// The newest state written by this drain, if any.
    pub written: Option<Box<S>>,
    /// How long each write took.
    pub write_times: Vec<Duration>,
}

/// A channel machine with the version and total of its row, and `ext`: what the driver keeps
/// beside each channel (the merchant's settlement scheduler, the customer's connection).
#[derive(Debug, Clone)]
pub struct Persisted<M, X = ()> {
    /// The machine.
    pub channel: M,
    /// The driver's own data for this channel.
    pub ext: X,
    version: u64,
    stored_total: Amount,
    stale: bool,
    reloaded: bool,
}

impl<M: Machine, X: Default> Persisted<M, X> {
    /// A machine with no row yet (its first persist creates it).
    pub fn new(channel: M) -> Self {
        Self::stored(channel, 0, Amount::ZERO)
    }

    /// A machine restored from its row, read at `version` with `total`.
    pub fn stored(channel: M, version: u64, total: Amount) -> Self {
        Persisted {
            channel,
            ext: X::default(),
            version,
            stored_total: total,
            stale: false,
            reloaded: false,
        }
    }
}

impl<M: Machine, X> Persisted<M, X> {
    /// The row's version (0 before the row exists).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The total in the row.
    pub fn stored_total(&self) -> Amount {
        self.stored_total
    }

    /// Whether the machine was replaced by the stored one since the last call (a failed write
    /// or [`Persisted::reload`]): whatever the caller derived from the old one is stale too.
    pub fn take_reloaded(&mut self) -> bool {
        std::mem::take(&mut self.reloaded)
    }

    /// Forget whatever the machine holds beyond its row (effects not yet written): it is
    /// reloaded from the store before its next use ([`Persisted::reload`]).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Replaces a stale machine with the channel as stored. A no-op for a fresh one.
    ///
    /// # Errors
    /// The store's ([`StoreError::NotFound`] if the row is gone; [`StoreError::Channel`] for a
    /// state that does not decode); the machine then stays stale.
    pub async fn reload(&mut self, to: &Storage<'_, M>) -> Result<(), StoreError> {
        if !self.stale || self.version == 0 {
            self.stale = false;
            return Ok(());
        }
        let Some(id) = self.channel.channel_id() else {
            self.stale = false;
            return Ok(());
        };
        let row = to.store.get(id, to.role).await?.ok_or(StoreError::NotFound(id))?;
        self.channel = (to.restore)(&row.state)?;
        self.version = row.version;
        self.stored_total = row.total;
        self.stale = false;
        self.reloaded = true;
        tracing::info!(channel = %id, total = %row.total, version = row.version, "channel reloaded from the store");
        Ok(())
    }

    /// Runs the machine's effects in order. Consecutive persists are coalesced into one write
    /// of the newest state (each carries the whole state, so the newest covers the others),
    /// written and completed before anything held behind it is released. Events go to
    /// `on_event` as they come.
    ///
    /// # Errors
    /// A failed write: nothing behind it was released, and the machine is reloaded from the
    /// store (at once, or before its next use if the store cannot be read either), so it is
    /// never ahead of its row. [`StoreError::Channel`] when the machine refuses a completion.
    pub async fn drain(
        &mut self,
        to: &Storage<'_, M>,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Drained<M::State>, StoreError> {
        let mut out = Drained {
            sends: Vec::new(),
            broadcasts: Vec::new(),
            watches: Vec::new(),
            written: None,
            write_times: Vec::new(),
        };
        let mut pending: Option<(u64, Box<M::State>)> = None;
        loop {
            match self.channel.poll_effect() {
                Some(Effect::Persist { id, state }) => pending = Some((id, state)),
                Some(Effect::Event(e)) => on_event(&e),
                Some(Effect::Watch(outpoint)) => out.watches.push(outpoint),
                Some(other) => {
                    if let Some((id, state)) = pending.take() {
                        self.complete(to, id, state, &mut out).await?;
                    }
                    match other {
                        Effect::Send(m) => out.sends.push(m),
                        Effect::Broadcast(tx) => out.broadcasts.push(Broadcast::Transaction(tx)),
                        Effect::BroadcastPackage { parent, child } => {
                            out.broadcasts.push(Broadcast::Package { parent, child })
                        }
                        // Persists, events and watches were taken above.
                        Effect::Persist { .. } | Effect::Event(_) | Effect::Watch(_) => {}
                    }
                }
                None => match pending.take() {
                    Some((id, state)) => self.complete(to, id, state, &mut out).await?,
                    None => break,
                },
            }
        }
        Ok(out)
    }

    /// Writes persist `id` and tells the machine it is durable.
    async fn complete(
        &mut self,
        to: &Storage<'_, M>,
        id: u64,
        state: Box<M::State>,
        out: &mut Drained<M::State>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let written = self.write(to, &state).await;
        out.write_times.push(started.elapsed());
        if let Err(e) = written {
            // Nothing behind this write is released, but the machine is now ahead of the
            // store (and a write that failed late may even have landed, moving the version):
            // start again from what the store holds.
            let channel = self.channel.channel_id().map(|c| c.to_string()).unwrap_or_default();
            tracing::warn!(%channel, error = %e, "store write failed; reloading the channel from the store");
            self.stale = true;
            if let Err(e) = self.reload(to).await {
                tracing::warn!(error = %e, "reloading the channel failed; will reload before its next use");
            }
            return Err(e);
        }
        self.channel.persisted(id)?;
        out.written = Some(state);
        Ok(())
    }

    async fn write(&mut self, to: &Storage<'_, M>, state: &M::State) -> Result<(), StoreError> {
        let Some(row) = state.row() else { return Ok(()) };
        if self.version == 0 {
            self.version = to
                .store
                .create(NewChannel {
                    id: row.id,
                    role: to.role,
                    phase: row.phase,
                    capacity: row.capacity,
                    expiry: row.expiry,
                    customer_key: row.customer_key,
                    state: row.state,
                })
                .await?;
        } else if row.total > self.stored_total {
            self.version = to
                .store
                .record_payment(PaymentUpdate {
                    id: row.id,
                    role: to.role,
                    total: row.total,
                    signature: row.signature,
                    state: row.state,
                    expected_version: self.version,
                })
                .await?;
            self.stored_total = row.total;
        } else {
            self.version = to
                .store
                .update_state(StateUpdate {
                    id: row.id,
                    role: to.role,
                    phase: row.phase,
                    closing_txid: row.closing_txid,
                    state: row.state,
                    expected_version: self.version,
                })
                .await?;
        }
        Ok(())
    }
}
