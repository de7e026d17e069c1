//! The driver's I/O for every duty: a channel's effects through the one persisted-channel
//! driver ([`Persisted::drain`]), the broadcasts it releases, reloads after a failed write,
//! and retries after a compare-and-swap conflict.

use paychan_chain::Lookback;
use paychan_core::bitcoin::OutPoint;
use paychan_core::channel::merchant::{MerchantChannel, MerchantState};
use paychan_core::channel::{Event, Phase};
use paychan_core::msg::Message;
use paychan_core::Error;
use paychan_store::{Broadcast, Drained, Landed, Role, Storage};
use tracing::{info, warn};

use super::{ChannelServer, Locked, Slot, CONFLICT_RETRIES};
use crate::MerchantError;

/// Runs a call to the chain (which may block) off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, paychan_chain::ChainError> + Send + 'static,
) -> Result<T, MerchantError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| MerchantError::TaskFailed)?
        .map_err(MerchantError::Chain)
}

impl ChannelServer {
    /// Channel `id` locked, ready to take a payment ([`Self::ready_to_pay`]).
    pub(super) async fn payable(&self, id: OutPoint) -> Result<Locked, MerchantError> {
        let mut s = self.live(&id).await?.lock().await;
        self.ready_to_pay(&mut s, id).await?;
        Ok(s)
    }

    /// Makes locked channel `id` ready to take a payment, a close or a settle: reloaded from
    /// the store if a write failed, and its funding's confirmations looked at again while it
    /// awaits them (the chain view brought to the tip first: one call when no block came) —
    /// a channel this instance last saw awaiting its funding may since have been opened to
    /// payments by another instance.
    pub(super) async fn ready_to_pay(
        &self,
        s: &mut Slot,
        id: OutPoint,
    ) -> Result<(), MerchantError> {
        self.reload(s).await?;
        let spend_point = self.watched_spend_point(s);
        let unseen = self.view.is_pending(&spend_point);
        if s.channel.phase() == Phase::AwaitingFunding || unseen {
            // Awaiting its confirmations, or loaded since the view last looked (its funding may
            // have been spent before this start: a store restored from a backup).
            let view = self.view.clone();
            blocking(move || view.sync()).await?;
        }
        if unseen && self.view.spend(&spend_point).is_some() {
            self.notice_spend(s, spend_point).await?;
        }
        // A channel loaded open learns its funding's depth once looked up (then, deep enough,
        // it may leave memory again when idle).
        let fresh = unseen && s.channel.phase() == Phase::Open && !self.view.is_pending(&id);
        if s.channel.phase() == Phase::AwaitingFunding || fresh {
            self.refresh_confirmations(s, id).await?;
        }
        let unseen_dispute = s.channel.phase() == Phase::AwaitingFunding
            && s.channel.state().trigger.is_some()
            && self.config.policy.zero_conf;
        if unseen_dispute {
            // Zero-conf on a dispute channel: its funding must at least be in the node's
            // mempool (the customer broadcasts it; the merchant never had it whole).
            let chain = self.chain.clone();
            if blocking(move || chain.utxo(&id)).await?.is_some() {
                s.channel.handle_funding_in_mempool();
                self.drain(s).await?;
            }
        }
        Ok(())
    }

    /// Runs `op`, and runs it again (up to [`CONFLICT_RETRIES`] times) when its write met a
    /// compare-and-swap conflict: another writer (`paychan payment submit`, another instance
    /// on the same database) moved the channel. The failed write already reloaded the channel
    /// from the store, so the retry checks the request against what the store holds. Nothing
    /// was acknowledged by the attempt that failed.
    pub(super) async fn on_fresh_state<T, F, Fut>(&self, mut op: F) -> Result<T, MerchantError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MerchantError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(MerchantError::Store(paychan_store::StoreError::Conflict {
                    channel, ..
                })) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    info!(%channel, attempt, "the channel moved in the store; checking again");
                }
                other => return other,
            }
        }
    }

    /// Hands the funding's confirmations, as the chain view has them, to the channel.
    pub(super) async fn refresh_confirmations(
        &self,
        s: &mut Slot,
        id: OutPoint,
    ) -> Result<(), MerchantError> {
        let confirmations = self.view.confirmations(&id.txid);
        s.ext.confirmations(confirmations);
        s.channel.handle_funding_confirmations(confirmations);
        self.drain(s).await?;
        Ok(())
    }

    /// Runs the channel's effects through the one persisted-channel driver
    /// ([`Persisted::drain`]: persists coalesced, written before anything held behind them),
    /// then broadcasts what it released. Returns the messages for the peer.
    pub(super) async fn drain_with(
        &self,
        s: &mut Slot,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Vec<Message>, MerchantError> {
        let refunds = &self.metrics.refunds;
        let mut events = |e: &Event| {
            tracing::debug!(?e, "channel event");
            if matches!(e, Event::Refunded { .. }) {
                refunds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            on_event(e);
        };
        let restore = self.restorer();
        // On a failed write the driver has reloaded the machine (or marked it stale).
        let drained = s.drain(&self.storage(&restore), &mut events).await?;
        Ok(self.released(s, drained).await)
    }

    /// Completes a pipelined write that landed ([`Persisted::land`]); returns the messages it
    /// released for the peer.
    pub(super) async fn land(
        &self,
        s: &mut Slot,
        landed: Landed<MerchantState>,
    ) -> Result<Vec<Message>, MerchantError> {
        let restore = self.restorer();
        let drained = s.land(&self.storage(&restore), landed, &mut |_| {}).await?;
        let mut sends = self.released(s, drained).await;
        // What the write released may ask for more (nothing, for payments).
        if s.in_flight() == 0 {
            sends.extend(self.drain(s).await?);
        }
        Ok(sends)
    }

    /// Acts on what a write released: its time in the metrics, the watches it asked for, the
    /// broadcasts; returns the messages for the peer.
    async fn released(&self, s: &mut Slot, drained: Drained<MerchantState>) -> Vec<Message> {
        for t in &drained.write_times {
            self.metrics.store_commit.observe(*t);
        }
        // Watches asked for by the machine (a dispute channel's trigger output) start at the
        // tip unless the caller registered them first with a look back.
        for outpoint in drained.watches {
            self.view.watch(outpoint, Lookback::Never);
        }
        for b in drained.broadcasts {
            let taken = self.broadcast(b).await;
            s.ext.broadcast(taken);
        }
        drained.sends
    }

    /// [`Self::drain_with`] where no event matters beyond the logs and metrics.
    pub(super) async fn drain(&self, s: &mut Slot) -> Result<Vec<Message>, MerchantError> {
        self.drain_with(s, &mut |_| {}).await
    }

    /// [`Self::drain_with`]; whether the machine said a settlement is due.
    pub(super) async fn drain_events(&self, s: &mut Slot) -> Result<bool, MerchantError> {
        let mut due = false;
        self.drain_with(s, &mut |e| due |= matches!(e, Event::SettleDue { .. })).await?;
        Ok(due)
    }

    /// Hands a transaction (or a trigger with its child, as a package) to the node; false
    /// (logged) when it did not take it.
    pub(super) async fn broadcast(&self, b: Broadcast) -> bool {
        let chain = self.chain.clone();
        let txid = match &b {
            Broadcast::Transaction(tx) => tx.compute_txid(),
            Broadcast::Package { child, .. } => child.compute_txid(),
        };
        let sent = move || match &b {
            Broadcast::Transaction(tx) => chain.broadcast(tx),
            Broadcast::Package { parent, child } => chain.broadcast_with_parent(parent, child),
        };
        match blocking(sent).await {
            Ok(_) => true,
            Err(e) => {
                warn!(%txid, error = %e, "broadcast failed; will retry");
                false
            }
        }
    }

    /// How a stored merchant state becomes a machine again.
    pub(super) fn restorer(
        &self,
    ) -> impl Fn(&[u8]) -> Result<MerchantChannel, Error> + Send + Sync + '_ {
        move |bytes: &[u8]| {
            Ok(MerchantChannel::restore(MerchantState::decode(bytes)?, self.config.policy.clone()))
        }
    }

    pub(super) fn storage<'a>(
        &'a self,
        restore: &'a (dyn Fn(&[u8]) -> Result<MerchantChannel, Error> + Send + Sync),
    ) -> Storage<'a, MerchantChannel> {
        Storage { store: &*self.store, role: Role::Merchant, restore }
    }

    /// Replaces a stale slot's machine with the channel as stored. A no-op for a fresh slot.
    ///
    /// # Errors
    /// The store's; the slot then stays stale.
    pub(super) async fn reload(&self, s: &mut Slot) -> Result<(), MerchantError> {
        let restore = self.restorer();
        s.reload(&self.storage(&restore)).await?;
        Ok(())
    }
}
