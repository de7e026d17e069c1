//! The customer's I/O around its channels: a channel's effects through the one
//! persisted-channel driver ([`Persisted::drain`](paychan_store::Persisted::drain)), reloads
//! after a failed write, and calls to the chain off the async runtime.

use paychan_core::bitcoin::OutPoint;
use paychan_core::channel::customer::{CustomerChannel, CustomerState};
use paychan_core::channel::Event;
use paychan_core::msg::Message;
use paychan_store::{Drained, InFlight, Landed, Role, Storage};
use tracing::warn;

use crate::{Customer, CustomerError, Entry};

/// Runs a call to the chain or the wallet (which may block) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static, E: Into<CustomerError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CustomerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| CustomerError::Io("a blocking task failed".into()))?
        .map_err(Into::into)
}

impl Customer {
    /// The channel, locked, and reloaded from the store first if a write failed.
    pub(crate) async fn locked(
        &self,
        id: &OutPoint,
    ) -> Result<tokio::sync::OwnedMutexGuard<Entry>, CustomerError> {
        let mut e = self.entry(id)?.lock_owned().await;
        self.reload(&mut e).await?;
        Ok(e)
    }

    /// Replaces a stale entry's machine with the channel as stored (a payment signed but not
    /// stored was never sent: forgetting it is safe, and the caller was told it failed).
    ///
    /// # Errors
    /// The store's; the entry then stays stale.
    pub(crate) async fn reload(&self, e: &mut Entry) -> Result<(), CustomerError> {
        let restore = self.restorer();
        let r = e.reload(&self.storage(&restore)).await;
        crate::after_reload(e);
        Ok(r?)
    }

    /// How a stored customer state becomes a machine again (its key derived anew).
    pub(crate) fn restorer(
        &self,
    ) -> impl Fn(&[u8]) -> Result<CustomerChannel, paychan_core::Error> + Send + Sync + '_ {
        move |bytes: &[u8]| {
            let state = CustomerState::decode(bytes)?;
            let key = self
                .keys
                .secret(state.terms.customer_key_index)
                .map_err(|_| paychan_core::Error::Signing("the channel's key cannot be derived"))?;
            CustomerChannel::restore(state, key)
        }
    }

    pub(crate) fn storage<'a>(
        &'a self,
        restore: &'a (dyn Fn(&[u8]) -> Result<CustomerChannel, paychan_core::Error> + Send + Sync),
    ) -> Storage<'a, CustomerChannel> {
        Storage { store: &*self.store, role: Role::Customer, restore }
    }

    pub(crate) async fn drain_events(&self, e: &mut Entry) -> Result<bool, CustomerError> {
        let mut due = false;
        self.drain_with(e, &mut |ev| due |= matches!(ev, Event::RefundDue { .. })).await?;
        Ok(due)
    }

    pub(crate) async fn drain(&self, e: &mut Entry) -> Result<Vec<Message>, CustomerError> {
        self.drain_with(e, &mut |_| {}).await
    }

    /// Runs the channel's effects through the one persisted-channel driver
    /// ([`Persisted::drain`]: persists coalesced, written before anything held behind them),
    /// then broadcasts what it released. Returns the messages for the merchant.
    pub(crate) async fn drain_with(
        &self,
        e: &mut Entry,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Vec<Message>, CustomerError> {
        let restore = self.restorer();
        let drained = e.drain(&self.storage(&restore), on_event).await;
        crate::after_reload(e);
        Ok(self.released(e, drained?).await)
    }

    /// Runs the channel's effects and queues their write without waiting for it
    /// ([`Persisted::submit`](paychan_store::Persisted::submit)): returns the messages for the
    /// merchant released at once (a payment may leave while its write is in flight, DESIGN
    /// §6) and the write, for [`Customer::land`].
    pub(crate) async fn submit(
        &self,
        e: &mut Entry,
    ) -> (Vec<Message>, Option<InFlight<CustomerState>>) {
        let restore = self.restorer();
        let submitted = e.submit(&self.storage(&restore), &mut |_| {});
        (self.released(e, submitted.released).await, submitted.write)
    }

    /// Completes a write [`Customer::submit`] queued, once it landed; returns the messages it
    /// released.
    ///
    /// # Errors
    /// The write's failure: the channel is reloaded from the store (and must resume before
    /// its next payment).
    pub(crate) async fn land(
        &self,
        e: &mut Entry,
        landed: Landed<CustomerState>,
    ) -> Result<Vec<Message>, CustomerError> {
        let restore = self.restorer();
        let drained = e.land(&self.storage(&restore), landed, &mut |_| {}).await;
        crate::after_reload(e);
        Ok(self.released(e, drained?).await)
    }

    /// Acts on what a write released: the acknowledged total it stored, watches, broadcasts;
    /// returns the messages for the merchant.
    async fn released(&self, e: &mut Entry, drained: Drained<CustomerState>) -> Vec<Message> {
        if let Some(written) = &drained.written {
            e.ext.stored_acked = e.ext.stored_acked.max(written.acked);
        }
        for outpoint in drained.watches {
            self.view.watch(outpoint, paychan_chain::Lookback::Never);
        }
        for b in drained.broadcasts {
            let chain = self.chain.clone();
            let (txid, sent) = match b {
                paychan_store::Broadcast::Transaction(tx) => {
                    (tx.compute_txid(), blocking(move || chain.broadcast(&tx)).await)
                }
                paychan_store::Broadcast::Package { parent, child } => (
                    child.compute_txid(),
                    blocking(move || chain.broadcast_with_parent(&parent, &child)).await,
                ),
            };
            if let Err(err) = sent {
                warn!(%txid, error = %err, "broadcast failed; the next tick retries");
            }
        }
        drained.sends
    }
}
