//! The one persisted-channel driver (ADR 0014): a channel machine and the row that stores it.
//! The merchant's and the customer's drivers (and every later channel kind) run their machines
//! through it, so "drain the effects in order, coalesce persists, write by compare-and-swap,
//! reload after a failed write, release what was held behind a write only after it" is written
//! once.
//!
//! Two ways to run it (ADR 0027):
//!
//! * [`Persisted::drain`] writes and waits: what it returns is released.
//! * [`Persisted::submit`] queues the write and returns at once with an [`InFlight`] write; the
//!   caller may release the machine, take more input on it (the next run of payments) and
//!   submit again, then [`InFlight::wait`] outside any lock and hand the [`Landed`] write back
//!   to [`Persisted::land`], which releases what the machine held behind it. Writes of one
//!   channel land in the order they were submitted (the stores apply one channel's writes in
//!   call order), and each is a compare-and-swap on the version the one before it produces, so
//!   a write that lands proves that every earlier one did; after a failure every later write
//!   of the pipeline fails too and nothing behind any of them is released.
//!
//! What it does not do is I/O other than the store: the messages and transactions a drain
//! releases come back in [`Drained`] for the caller to send and broadcast (each was held by the
//! machine until the write it depends on completed, so any later moment is safe).

use std::time::{Duration, Instant};

use paychan_core::bitcoin::{Amount, OutPoint, Transaction};
use paychan_core::channel::{Effect, Event, Machine, StoredState};
use paychan_core::msg::Message;

use crate::{ChannelStore, NewChannel, PaymentUpdate, Role, StateUpdate, StoreError, StoreFuture};

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
    /// How long each write took, from its submission to its landing.
    pub write_times: Vec<Duration>,
}

impl<S> Default for Drained<S> {
    fn default() -> Self {
        Drained {
            sends: Vec::new(),
            broadcasts: Vec::new(),
            watches: Vec::new(),
            written: None,
            write_times: Vec::new(),
        }
    }
}

impl<S> Drained<S> {
    /// Appends what `later` released after this.
    pub fn append(&mut self, later: Drained<S>) {
        self.sends.extend(later.sends);
        self.broadcasts.extend(later.broadcasts);
        self.watches.extend(later.watches);
        if later.written.is_some() {
            self.written = later.written;
        }
        self.write_times.extend(later.write_times);
    }

    /// Takes an effect that needs no write (any more).
    fn release<T>(&mut self, effect: Effect<T>) {
        match effect {
            Effect::Send(m) => self.sends.push(m),
            Effect::Broadcast(tx) => self.broadcasts.push(Broadcast::Transaction(tx)),
            Effect::BroadcastPackage { parent, child } => {
                self.broadcasts.push(Broadcast::Package { parent, child })
            }
            Effect::Watch(outpoint) => self.watches.push(outpoint),
            // Persists and events are taken where they are polled.
            Effect::Persist { .. } | Effect::Event(_) => {}
        }
    }
}

/// What [`Persisted::submit`] did: effects released at once, and the write it queued.
#[derive(Debug)]
#[must_use = "an in-flight write must be waited for and landed, or what it holds is never released"]
pub struct Submitted<S> {
    /// Released without waiting (they needed no write, or one already durable).
    pub released: Drained<S>,
    /// The write queued, if the machine asked for one.
    pub write: Option<InFlight<S>>,
}

/// A write queued in the store and not yet landed. It borrows nothing: wait for it outside any
/// lock ([`InFlight::wait`]), then give the result to [`Persisted::land`].
#[must_use = "an in-flight write must be waited for and landed, or what it holds is never released"]
pub struct InFlight<S> {
    id: u64,
    generation: u64,
    channel: Option<OutPoint>,
    state: Box<S>,
    total: Amount,
    write: Option<StoreFuture<'static, u64>>,
    wrote: bool,
    submitted: Instant,
}

impl<S> std::fmt::Debug for InFlight<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<S> InFlight<S> {
    /// Waits until the store answered.
    pub async fn wait(mut self) -> Landed<S> {
        let result = match self.write.take() {
            Some(write) => write.await.map(|_| ()),
            None => Ok(()),
        };
        let elapsed = self.submitted.elapsed();
        Landed { flight: self, result, elapsed }
    }

    /// The landed write if the store has answered already; else the write, still in flight.
    ///
    /// # Errors
    /// The write itself, when it has not landed yet.
    pub fn landed_now(mut self) -> Result<Landed<S>, Self> {
        let result = match self.write.as_mut() {
            None => Ok(()),
            Some(write) => match futures_util::FutureExt::now_or_never(write) {
                Some(r) => r.map(|_| ()),
                None => return Err(self),
            },
        };
        self.write = None;
        let elapsed = self.submitted.elapsed();
        Ok(Landed { flight: self, result, elapsed })
    }
}

/// A write the store answered, for [`Persisted::land`].
#[must_use = "a landed write must be handed to Persisted::land, or what it holds is never released"]
pub struct Landed<S> {
    flight: InFlight<S>,
    result: Result<(), StoreError>,
    elapsed: Duration,
}

impl<S> std::fmt::Debug for Landed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Landed")
            .field("flight", &self.flight)
            .field("ok", &self.result.is_ok())
            .finish_non_exhaustive()
    }
}

/// A channel machine with the version and total of its row, and `ext`: what the driver keeps
/// beside each channel (the merchant's settlement scheduler, the customer's connection).
#[derive(Debug, Clone)]
pub struct Persisted<M: Machine, X = ()> {
    /// The machine.
    pub channel: M,
    /// The driver's own data for this channel.
    pub ext: X,
    /// The row's version once every submitted write has landed.
    version: u64,
    /// The row's total once every submitted write has landed.
    queued_total: Amount,
    /// The total of the newest write that landed.
    durable_total: Amount,
    stale: bool,
    reloaded: bool,
    /// Bumped whenever the machine is replaced by the stored one: a write submitted before
    /// belongs to a machine that is gone.
    generation: u64,
    in_flight: usize,
    /// A persist [`Persisted::land`] polled while taking what a write released: the next
    /// drain or submit takes it first.
    unpolled: Option<Effect<M::State>>,
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
            queued_total: total,
            durable_total: total,
            stale: false,
            reloaded: false,
            generation: 0,
            in_flight: 0,
            unpolled: None,
        }
    }
}

impl<M: Machine, X> Persisted<M, X> {
    /// The row's version once every submitted write has landed (0 before the row exists).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The total in the row: the newest write that landed.
    pub fn stored_total(&self) -> Amount {
        self.durable_total
    }

    /// Writes submitted ([`Persisted::submit`]) and not yet landed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
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

    /// Gives up on every write in flight (their waiters went away without landing them): the
    /// machine is reloaded from the store before its next use, and the writes, whatever they
    /// did, release nothing.
    pub fn abandon_in_flight(&mut self) {
        if self.in_flight > 0 {
            self.generation += 1;
            self.in_flight = 0;
            self.stale = true;
        }
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
        self.queued_total = row.total;
        self.durable_total = row.total;
        self.stale = false;
        self.reloaded = true;
        self.unpolled = None;
        // Writes still in flight belong to the machine just replaced.
        self.generation += 1;
        self.in_flight = 0;
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
        let mut out = Drained::default();
        loop {
            let submitted = self.submit(to, on_event);
            out.append(submitted.released);
            let Some(write) = submitted.write else { return Ok(out) };
            out.append(self.land(to, write.wait().await, on_event).await?);
        }
    }

    /// Runs the machine's effects in order and queues the write of the newest persist among
    /// them in the store without waiting for it (consecutive persists coalesced, as in
    /// [`Persisted::drain`]). Every other effect the machine hands out is released at once:
    /// the machine holds back what must wait for a write, and [`Persisted::land`] releases it
    /// once that write landed. Events go to `on_event` as they come.
    pub fn submit(
        &mut self,
        to: &Storage<'_, M>,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Submitted<M::State> {
        let mut released = Drained::default();
        let mut pending: Option<(u64, Box<M::State>)> = None;
        while let Some(effect) = self.poll() {
            match effect {
                Effect::Persist { id, state } => pending = Some((id, state)),
                Effect::Event(e) => on_event(&e),
                other => released.release(other),
            }
        }
        let write = pending.map(|(id, state)| self.queue(to, id, state));
        Submitted { released, write }
    }

    /// Queues the write of persist `id`, counting on it (the next write's compare-and-swap
    /// expects the version this one produces).
    fn queue(&mut self, to: &Storage<'_, M>, id: u64, state: Box<M::State>) -> InFlight<M::State> {
        let mut total = self.queued_total;
        // Behind a write not yet landed: applied only if that one was.
        let chained = self.in_flight > 0;
        let write = state.row().map(|row| {
            if self.version == 0 {
                self.version = 1;
                total = row.total;
                to.store.create(NewChannel {
                    id: row.id,
                    role: to.role,
                    phase: row.phase,
                    capacity: row.capacity,
                    expiry: row.expiry,
                    customer_key: row.customer_key,
                    state: row.state,
                })
            } else if row.total > self.queued_total {
                let expected_version = self.version;
                self.version += 1;
                total = row.total;
                to.store.record_payment(PaymentUpdate {
                    id: row.id,
                    role: to.role,
                    total: row.total,
                    signature: row.signature,
                    state: row.state,
                    expected_version,
                    chained,
                })
            } else {
                let expected_version = self.version;
                self.version += 1;
                to.store.update_state(StateUpdate {
                    id: row.id,
                    role: to.role,
                    phase: row.phase,
                    closing_txid: row.closing_txid,
                    state: row.state,
                    expected_version,
                    chained,
                })
            }
        });
        self.queued_total = total;
        self.in_flight += 1;
        InFlight {
            id,
            generation: self.generation,
            channel: self.channel.channel_id(),
            state,
            total,
            wrote: write.is_some(),
            write,
            submitted: Instant::now(),
        }
    }

    /// Completes a write that landed: tells the machine it is durable and returns what was
    /// held behind it and nothing later (what waits for later writes stays held; a persist
    /// the machine asked for meanwhile waits for the next drain or submit). Events go to
    /// `on_event`.
    ///
    /// # Errors
    /// The write's own failure: nothing behind it is released, and the machine is reloaded
    /// from the store (at once, or before its next use), so it is never ahead of its row;
    /// every write submitted after it fails too. [`StoreError::Superseded`] when the machine
    /// was reloaded since the write was submitted (an earlier write failed): the write's
    /// outcome is in the store, and what it held left with the machine it belonged to.
    /// [`StoreError::Channel`] when the machine refuses the completion.
    pub async fn land(
        &mut self,
        to: &Storage<'_, M>,
        landed: Landed<M::State>,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Drained<M::State>, StoreError> {
        let Landed { flight, result, elapsed } = landed;
        if flight.generation != self.generation {
            return Err(match (result, flight.channel) {
                (Err(e), _) => e,
                (Ok(()), Some(channel)) => StoreError::Superseded(channel),
                (Ok(()), None) => StoreError::Closed,
            });
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Err(e) = result {
            // Nothing behind this write is released, but the machine is now ahead of the
            // store (and a write that failed late may even have landed, moving the version):
            // start again from what the store holds.
            let channel = flight.channel.map(|c| c.to_string()).unwrap_or_default();
            if matches!(e, StoreError::Conflict { .. }) {
                // Another writer moved the channel (another instance on the same database):
                // routine with several instances, and the caller checks again.
                tracing::debug!(%channel, error = %e, "the channel moved in the store; reloading it");
            } else {
                tracing::warn!(%channel, error = %e, "store write failed; reloading the channel from the store");
            }
            self.stale = true;
            if let Err(e) = self.reload(to).await {
                tracing::warn!(error = %e, "reloading the channel failed; will reload before its next use");
                // Whatever is still in flight belongs to the machine that failed.
                self.generation += 1;
                self.in_flight = 0;
            }
            return Err(e);
        }
        self.durable_total = self.durable_total.max(flight.total);
        self.channel.persisted(flight.id)?;
        let mut out = Drained::default();
        if flight.wrote {
            out.write_times.push(elapsed);
        }
        // What the machine held behind this write (and nothing later: those wait for their
        // own writes).
        while let Some(effect) = self.poll() {
            match effect {
                Effect::Persist { .. } => {
                    self.unpolled = Some(effect);
                    break;
                }
                Effect::Event(e) => on_event(&e),
                other => out.release(other),
            }
        }
        out.written = Some(flight.state);
        Ok(out)
    }

    fn poll(&mut self) -> Option<Effect<M::State>> {
        self.unpolled.take().or_else(|| self.channel.poll_effect())
    }
}
