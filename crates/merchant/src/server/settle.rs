//! The settlement scheduler's I/O. The policy (when work is due, the dust fallback, the
//! replacement rule, the retry backoff) is the core's
//! [`settlement`](paychan_core::channel::settlement) module; this module reads the chain,
//! signs, broadcasts and reports the outcome back to each channel's [`Scheduler`].
//!
//! [`Scheduler`]: paychan_core::channel::settlement::Scheduler

use paychan_core::bitcoin::{FeeRate, OutPoint, ScriptBuf};
use paychan_core::channel::settlement::{
    due_expiries, settle_with_fallback, Broadcast, FeeCap, FollowUp, SettlementSeen,
};
use paychan_core::channel::Phase;
use paychan_core::msg::{self, Closed, Message};
use paychan_core::Now;
use tracing::{info, warn};

use paychan_chain::Lookback;

use super::{blocking, named, ChannelServer, Slot};
use crate::MerchantError;

impl ChannelServer {
    /// Settles channel `id` now, at the merchant's own initiative; returns the txid.
    ///
    /// # Errors
    /// State or chain errors (nothing paid yet, channel over).
    pub async fn settle(&self, id: OutPoint) -> Result<Closed, MerchantError> {
        // Another instance may have moved the channel since this one last saw it: the write
        // of `Settling` then meets a conflict (before anything is broadcast), and the settle
        // is checked again on the channel as stored.
        self.on_fresh_state(|| async {
            let slot = self.live(&id).await?;
            let mut s = slot.lock().await;
            self.ready_to_pay(&mut s, id).await?;
            self.settle_locked(&mut s).await
        })
        .await
    }

    /// The customer asks to close: checks its signature, settles, answers with the txid.
    ///
    /// # Errors
    /// Signature or state errors; chain errors.
    pub async fn close(&self, close: &msg::Close) -> Result<Closed, MerchantError> {
        let channel = named(&close.channel, "close without a channel")?;
        // As `settle`: a conflict (another instance moved the channel) checks the close again
        // on the channel as stored.
        self.on_fresh_state(|| async {
            let slot = self.live(&channel).await?;
            let mut s = slot.lock().await;
            self.ready_to_pay(&mut s, channel).await?;
            s.channel.handle_close(&close.signature)?;
            if s.channel.state().trigger.is_some() {
                return self.close_cooperatively(&mut s).await;
            }
            self.settle_locked(&mut s).await
        })
        .await
    }

    /// A dispute channel's cooperative close at the fee estimate: the close and the merchant's
    /// signature go back in `Closed`; the customer signs and broadcasts it, and the chain view
    /// sees it spend the funding (no settlement to follow: the trigger remains the merchant's
    /// way out if the customer never broadcasts it).
    async fn close_cooperatively(&self, s: &mut Slot) -> Result<Closed, MerchantError> {
        let fee_rate = self.cap().first(self.estimate().await?);
        let key = self.keys.secret(s.channel.state().key_index)?;
        let payout = self.payout();
        s.channel.cooperative_close(&key, payout, fee_rate)?;
        let out = self.drain(s).await?;
        out.into_iter()
            .find_map(|m| if let Message::Closed(c) = m { Some(c) } else { None })
            .ok_or(MerchantError::Internal("no Closed message"))
    }

    /// Settles a channel a payment just exhausted, unless its settlement is backing off after
    /// failures (then the tick retries it when due).
    pub(super) async fn settle_exhausted(&self, s: &mut Slot, channel: OutPoint, now: &Now) {
        if !s.ext.may_settle(now) {
            return;
        }
        let r = self.settle_locked(s).await.map(|_| ());
        self.record(s, channel, now, r, "settling an exhausted channel");
    }

    /// Reports the outcome of settlement work to the channel's scheduler; a failure is
    /// counted and logged with the wait before the next try.
    fn record(
        &self,
        s: &mut Slot,
        channel: OutPoint,
        now: &Now,
        result: Result<(), MerchantError>,
        what: &'static str,
    ) {
        let Some(wait) = s.ext.outcome(now, result.is_ok()) else { return };
        self.metrics.settle_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let error = result.err().unwrap_or(MerchantError::BroadcastFailed);
        let attempt = s.ext.backoff().failures();
        warn!(%channel, %error, attempt, retry_in_secs = wait, "{what} failed; will retry");
    }

    /// Signs and broadcasts a settlement at the fee estimate (lower when the estimate would
    /// leave dust: [`settle_with_fallback`]); blocks are counted from now.
    pub(super) async fn settle_locked(&self, s: &mut Slot) -> Result<Closed, MerchantError> {
        let estimate = self.cap().first(self.estimate().await?);
        let height = self.height().await?;
        let (closed, fee_rate) = self.sign_and_send(s, estimate, None).await?;
        s.ext.sent(Broadcast { height, fee_rate });
        Ok(closed)
    }

    /// Signs the settlement at `fee_rate` (never at or below `floor`), stores it, then
    /// broadcasts it; returns the `Closed` answer and the rate used.
    async fn sign_and_send(
        &self,
        s: &mut Slot,
        fee_rate: FeeRate,
        floor: Option<FeeRate>,
    ) -> Result<(Closed, FeeRate), MerchantError> {
        let key = self.keys.secret(s.channel.state().key_index)?;
        let payout = self.payout();
        let (_, used) = settle_with_fallback(&mut s.channel, &key, &payout, fee_rate, floor)?;
        if used < fee_rate {
            info!(estimate = %fee_rate, %used, "settling below the fee estimate: a higher fee would leave the output as dust");
        }
        s.ext.begin();
        let out = self.drain(s).await?;
        self.metrics.settlements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let closed = out
            .into_iter()
            .find_map(|m| if let Message::Closed(c) = m { Some(c) } else { None })
            .ok_or(MerchantError::Internal("no Closed message"))?;
        Ok((closed, used))
    }

    /// A fresh payout script from the wallet, or the configured one.
    fn payout(&self) -> ScriptBuf {
        match &self.payout_source {
            Some(source) => source().unwrap_or_else(|e| {
                warn!(error = %e, "no fresh payout address; using the configured one");
                self.config.payout.clone()
            }),
            None => self.config.payout.clone(),
        }
    }

    fn cap(&self) -> FeeCap {
        FeeCap(self.config.max_fee_rate)
    }

    async fn estimate(&self) -> Result<FeeRate, MerchantError> {
        let chain = self.chain.clone();
        let target = self.config.settle_target_blocks;
        blocking(move || chain.estimate_fee(target)).await
    }

    async fn height(&self) -> Result<u32, MerchantError> {
        let chain = self.chain.clone();
        Ok(blocking(move || chain.tip()).await?.height)
    }

    /// Checks the chain for every channel: funding confirmations, expiry deadlines (settling
    /// when due), settlements out. Call it when a block arrives, or periodically. A channel's
    /// failed settlement work is retried with exponential backoff (the core's
    /// [`Backoff`](paychan_core::channel::settlement::Backoff)); one channel's failure does
    /// not stop the others.
    ///
    /// # Errors
    /// The first failure met (the chain unreachable, a store failure); every channel was still
    /// visited.
    pub async fn tick(&self) -> Result<(), MerchantError> {
        // Asked first, whatever fails after: a leader whose node is away keeps the lease.
        self.holds_settlement_lease().await;
        if let Err(e) = self.sweep_next().await {
            warn!(error = %e, "the start-up sweep could not read the store; will retry");
        }
        let view = self.view.clone();
        let tip = blocking(move || view.sync()).await?;
        self.sweep_done_with_batch();
        let new_tip = {
            let mut last = self.last_tip.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *last != Some(tip.hash);
            *last = Some(tip.hash);
            changed
        };
        let mut first_error = None;
        // Besides the channels in memory: those the store says are due and those whose
        // watched output was spent, loaded now (ADR 0028).
        let loaded = match self.load_due().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "loading the channels due failed; will retry");
                first_error.get_or_insert(e);
                0
            }
        };
        if loaded > 0 {
            // Their fundings are looked up now, not at the next tick.
            let view = self.view.clone();
            blocking(move || view.sync()).await?;
        }
        let ids: Vec<OutPoint> = self.slots().keys().copied().collect();
        for id in ids {
            // Left memory since (idle: nothing to do).
            let Some(slot) = self.in_memory(&id) else { continue };
            let mut s = slot.lock().await;
            let mut r = self.tick_one(&mut s, id, tip.height, new_tip).await;
            // Another instance (or `paychan payment submit`) moved the channel: the failed write
            // reloaded it; look at it again as stored.
            let mut attempt = 0;
            while attempt < super::CONFLICT_RETRIES
                && matches!(
                    r,
                    Err(MerchantError::Store(paychan_store::StoreError::Conflict { .. }))
                )
            {
                attempt += 1;
                r = self.tick_one(&mut s, id, tip.height, new_tip).await;
            }
            if let Err(e) = r {
                warn!(channel = %id, error = %e, "chain check failed; will retry");
                first_error.get_or_insert(e);
            }
        }
        // Channels the tick brought in or made idle leave memory if there are too many.
        self.evict_idle();
        if first_error.is_some() {
            // Look at every channel again at the next tick, new block or not; the cursor
            // stays where it was, so a restart before then reads these blocks again.
            *self.last_tip.lock().unwrap_or_else(|p| p.into_inner()) = None;
        } else {
            let view = self.view.clone();
            blocking(move || view.commit()).await?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Watches the next batch of the start-up sweep: of the next [`super::SWEEP_BATCH`]
    /// stored channels, the open CLTV ones not in memory (a dispute channel's funding is
    /// watched from the start). The next sync looks each up
    /// once; a funding found spent (a store restored from before its settlement) gets its
    /// channel loaded like any spend.
    async fn sweep_next(&self) -> Result<(), MerchantError> {
        let after = {
            let sweep = self.sweep.lock().unwrap_or_else(|p| p.into_inner());
            match &*sweep {
                Some(s) if !s.read_all => s.after,
                _ => return Ok(()),
            }
        };
        let page = self
            .store
            .list(paychan_store::Query {
                // By id alone (the primary key's order: no sort, whatever the phases).
                role: Some(paychan_store::Role::Merchant),
                by_id: true,
                after,
                limit: super::SWEEP_BATCH,
                ..Default::default()
            })
            .await?;
        let mut watched = Vec::new();
        for row in page.iter().filter(|r| r.phase == Phase::Open && r.expiry > 0) {
            if self.in_memory(&row.id).is_none() && !self.view.is_watched(&row.id) {
                self.view.watch(row.id, self.lookback_of(Phase::Open, row.expiry));
                watched.push(row.id);
            }
        }
        let read_all = page.len() < super::SWEEP_BATCH;
        if read_all {
            info!("the start-up sweep read every stored open channel");
        }
        let mut sweep = self.sweep.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sweep.as_mut() {
            s.after = page.last().map(|r| r.id).or(s.after);
            s.watched.extend(watched);
            s.read_all = read_all;
        }
        Ok(())
    }

    /// After the sync: stops watching the swept fundings that were looked up and found
    /// unspent (their channels stay in the store); the spent ones are loaded by the tick.
    fn sweep_done_with_batch(&self) {
        let mut sweep = self.sweep.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = sweep.as_mut() else { return };
        let mut still = Vec::new();
        for id in s.watched.drain(..) {
            if self.view.is_pending(&id) {
                still.push(id);
            } else if self.view.spend(&id).is_none() && self.in_memory(&id).is_none() {
                self.view.unwatch(&id);
            }
        }
        s.watched = still;
        if s.read_all && s.watched.is_empty() {
            *sweep = None;
        }
    }

    /// Loads the stored channels matching `query` that are not in memory; returns how many.
    async fn load_matching(&self, query: paychan_store::Query) -> Result<usize, MerchantError> {
        let mut loaded = 0;
        for row in self.store.list(query).await? {
            if self.in_memory(&row.id).is_none() {
                self.live_from_row(row)?;
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Loads the open channels whose settlement the store's expiry index says is due now
    /// ([`due_expiries`]) and the channels whose watched output was seen spent, unless in
    /// memory already; returns how many were loaded.
    async fn load_due(&self) -> Result<usize, MerchantError> {
        let now = (self.clock)();
        let mut loaded = 0;
        if self.holds_settlement_lease().await {
            // The leader follows every settlement, whichever instance sent it, and settles the
            // channels another instance's tick found expired (ADR 0030).
            loaded += self
                .load_matching(paychan_store::Query {
                    role: Some(paychan_store::Role::Merchant),
                    phases: vec![Phase::Settling, Phase::Expired],
                    ..Default::default()
                })
                .await?;
        }
        for window in due_expiries(&self.config.policy, &now) {
            if window.is_empty() {
                continue;
            }
            loaded += self
                .load_matching(paychan_store::Query {
                    role: Some(paychan_store::Role::Merchant),
                    phases: vec![Phase::Open],
                    expiring_from: Some(*window.start()),
                    expiring_before: window.end().checked_add(1),
                    ..Default::default()
                })
                .await?;
        }
        for spent in self.view.spent_outpoints() {
            if self.in_memory(&spent).is_some() {
                continue;
            }
            match self.live(&spent).await {
                Ok(_) => loaded += 1,
                // An output that is no channel's funding (a dispute trigger's output: its
                // channel is in memory under its own id while disputed).
                Err(MerchantError::Core(paychan_core::Error::UnknownChannel(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(loaded)
    }

    async fn tick_one(
        &self,
        s: &mut Slot,
        id: OutPoint,
        height: u32,
        new_tip: bool,
    ) -> Result<(), MerchantError> {
        self.reload(s).await?;
        if s.channel.phase().is_final() {
            self.drop_watches(id, s);
            return Ok(());
        }
        // Whoever spent the funding decides the phase, whatever the channel thought (its
        // settlement, the customer's refund, a settlement the store restored from an older
        // copy does not know): the spend is in the chain view's memory, no call. A dispute
        // channel's funding is spent by its trigger (then its settlement is due at once, and
        // what ends the channel is the spend of the trigger's output) or its cooperative close.
        let spent = self.watched_spend_point(s);
        if self.view.spend(&spent).is_some() {
            self.notice_spend(s, spent).await?;
            if s.channel.phase() != Phase::Disputed || spent != id {
                return Ok(());
            }
        }
        // Not while the view has yet to look the funding up (a channel loaded since the
        // sync): it would read as unconfirmed, a reorganisation.
        if s.ext.wants_confirmations(s.channel.phase(), new_tip) && !self.view.is_pending(&id) {
            self.refresh_confirmations(s, id).await?;
        }
        let now = (self.clock)();
        s.channel.handle_tick(&now);
        let due = self.drain_events(s).await?;
        let work = s.ext.handle_tick(&now, &s.channel, due, new_tip);
        if (work.settle || work.follow) && !self.holds_settlement_lease().await {
            // Another instance holds the settlement lease: it settles and follows (ADR 0030).
            return Ok(());
        }
        if work.settle {
            let r = self.settle_locked(s).await.map(|_| ());
            self.record(s, id, &now, r, "settlement");
            // Followed from the next tick on.
            return Ok(());
        }
        if work.follow && s.channel.phase() == Phase::Settling {
            s.ext.begin();
            let r = self.follow_settlement(s, height).await;
            self.record(s, id, &now, r, "settlement follow-up");
        }
        Ok(())
    }

    /// If the funding output is spent in a block (by our settlement, or by the customer's
    /// refund), records the spend: settled or refunded, with the winner's amounts. The spend
    /// comes from the block the chain view read, so no transaction index is needed.
    pub(super) async fn notice_spend(
        &self,
        s: &mut Slot,
        id: OutPoint,
    ) -> Result<(), MerchantError> {
        let Some(spend) = self.view.spend(&id) else { return Ok(()) };
        s.channel.handle_funding_spent(&spend.tx)?;
        if s.channel.phase() == Phase::Disputed {
            // The trigger confirmed at `spend.height`: its output is watched from that block
            // on (a settlement may be in the same block). Registered before the drain, whose
            // watch would start at the tip.
            let output = s.channel.state().params.channel_input();
            self.view.watch(output, Lookback::To { height: spend.height, time: 0 });
        }
        self.drain(s).await?;
        let txid = spend.tx.compute_txid();
        info!(channel = %id, %txid, phase = s.channel.phase().as_str(), "the funding was spent");
        Ok(())
    }

    /// The outpoint whose spend ends the channel now: the funding, or, once a dispute
    /// channel's trigger is out, the trigger's output.
    pub(super) fn watched_spend_point(&self, s: &Slot) -> OutPoint {
        s.channel.state().params.ending_outpoint(s.channel.phase())
    }

    /// A settlement out: recorded when it confirms; broadcast again when it left the mempool;
    /// replaced at a higher fee rate when it stays unconfirmed (the customer's
    /// `SINGLE|ANYONECANPAY` signature leaves the merchant's output and fee free). What to do
    /// is the scheduler's [`follow`](paychan_core::channel::settlement::Scheduler::follow).
    /// `height` is the tip the tick read (one RPC per tick, not one per settling channel).
    async fn follow_settlement(&self, s: &mut Slot, height: u32) -> Result<(), MerchantError> {
        let Some(txid) = s.channel.state().settlement_txid else { return Ok(()) };
        // The funding spent in a block (by this settlement, an earlier one, or a refund), or
        // the settlement still in the mempool (one call per settling channel). A disputed
        // channel's settlement spends the trigger's output.
        let spend = self.view.spend(&self.watched_spend_point(s));
        let seen = if spend.is_some() {
            SettlementSeen::Confirmed
        } else {
            let chain = self.chain.clone();
            match blocking(move || chain.in_mempool(&txid)).await? {
                true => SettlementSeen::InMempool,
                false => SettlementSeen::Unknown,
            }
        };
        match s.ext.follow(seen, height) {
            FollowUp::Confirmed => {
                if let Some(spend) = spend {
                    s.channel.handle_funding_spent(&spend.tx)?;
                    self.drain(s).await?;
                    info!(txid = %spend.tx.compute_txid(), "settlement confirmed");
                }
            }
            FollowUp::Wait => {}
            FollowUp::Rebroadcast { fee_rate } => {
                // The same transaction again; the blocks are still counted from the first.
                self.sign_and_send(s, fee_rate, None).await?;
            }
            FollowUp::Replace { previous } => {
                let Some(bumped) = self.cap().replacement(previous, self.estimate().await?) else {
                    info!(%txid, rate = %previous, "settlement unconfirmed at the fee cap: waiting");
                    s.ext.replacement_failed(height);
                    return Ok(());
                };
                info!(%txid, from = %previous, to = %bumped, "settlement unconfirmed: replacing it at a higher fee");
                match self.sign_and_send(s, bumped, Some(previous)).await {
                    Ok((_, fee_rate)) => s.ext.sent(Broadcast { height, fee_rate }),
                    Err(e) => {
                        // Keep the one out there; count the blocks again before the next try.
                        s.ext.replacement_failed(height);
                        return Err(e);
                    }
                }
            }
            // After a restart: sign it again at today's estimate (same inputs, so the same
            // transaction or a replacement) and count from now.
            FollowUp::Rebuild => {
                self.settle_locked(s).await?;
            }
        }
        Ok(())
    }
}
