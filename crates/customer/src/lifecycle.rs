//! A channel's life on chain: open (funding stored before it is sent), close (the merchant
//! settles), and the tick that follows the chain (confirmations, settlement, the refund after
//! the expiry).

use std::sync::Arc;

use paychan_chain::Lookback;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Txid};
use paychan_core::channel::customer::{CustomerChannel, CustomerTerms};
use paychan_core::msg::Message;
use paychan_core::script::{ChannelScript, OutputKind};
use tracing::info;

use crate::driver::blocking;
use crate::{Connection, Customer, CustomerError, Entry};

/// Which kind of channel to open (ADR 0023).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A CLTV channel living `life_secs` (the merchant's default when `None`).
    Cltv {
        /// The channel's life in seconds.
        life_secs: Option<u32>,
    },
    /// A dispute channel with a dispute period of `blocks` (the merchant's minimum when
    /// `None`): no expiry; closed cooperatively or by the trigger.
    Dispute {
        /// The dispute period in blocks.
        blocks: Option<u16>,
    },
}

impl Customer {
    /// Opens a CLTV channel of `deposit` with the merchant at `peer`, living `life_secs` (the
    /// merchant's default when `None`): [`Customer::open_kind`].
    ///
    /// # Errors
    /// As [`Customer::open_kind`].
    pub async fn open(
        &self,
        peer: &str,
        deposit: Amount,
        life_secs: Option<u32>,
    ) -> Result<OutPoint, CustomerError> {
        self.open_kind(peer, deposit, ChannelKind::Cltv { life_secs }).await
    }

    /// Opens a channel of `kind` and `deposit` with the merchant at `peer`
    /// (`<node id>@host:port`). The funding is built by the wallet, stored, sent to the
    /// merchant, and broadcast once the merchant accepts (a dispute channel's: once the
    /// merchant's signature of the trigger is checked and the trigger stored).
    ///
    /// # Errors
    /// The merchant's refusal; [`CustomerError::NoDisputeChannels`] from a merchant that
    /// speaks no dispute channels; wallet, store or connection errors.
    pub async fn open_kind(
        &self,
        peer: &str,
        deposit: Amount,
        kind: ChannelKind,
    ) -> Result<OutPoint, CustomerError> {
        let (mut conn, welcome) = Connection::connect(peer).await?;
        if matches!(kind, ChannelKind::Dispute { .. })
            && welcome.version < paychan_core::msg::DISPUTE_PROTOCOL_VERSION
        {
            return Err(CustomerError::NoDisputeChannels { version: welcome.version });
        }
        let merchant = PublicKey::from_slice(&welcome.merchant_pubkey)
            .map_err(|_| CustomerError::Protocol("the merchant's key is not a valid public key"))?;
        let policy = welcome
            .policy
            .ok_or(CustomerError::Protocol("the merchant sent no policy"))?
            .to_policy()?;
        let now = (self.clock)();
        let life = match kind {
            ChannelKind::Cltv { life_secs } => life_secs.unwrap_or(policy.default_expiry_secs),
            ChannelKind::Dispute { .. } => policy.default_expiry_secs,
        };
        if life < policy.min_channel_life_secs || life > policy.max_channel_life_secs {
            // Said before any coin is touched (the merchant would refuse the open).
            return Err(CustomerError::LifeOutOfRange {
                life,
                min: policy.min_channel_life_secs,
                max: policy.max_channel_life_secs,
            });
        }
        let expiry = LockTime::from_consensus(
            u32::try_from(now.time + u64::from(life))
                .map_err(|_| CustomerError::Protocol("expiry out of range"))?,
        );
        let (key_index, customer_pub) = self.keys.issue()?;
        let key = self.keys.secret(key_index)?;
        let change = {
            let mut w = self.wallet.lock().unwrap_or_else(|p| p.into_inner());
            w.new_address()?.script_pubkey()
        };
        let script = match kind {
            ChannelKind::Cltv { .. } => ChannelScript::new(merchant, customer_pub, expiry)?,
            ChannelKind::Dispute { blocks } => {
                let blocks = blocks.unwrap_or(policy.min_dispute_blocks);
                ChannelScript::dispute(merchant, customer_pub, blocks)?
            }
        };
        let terms = CustomerTerms {
            script,
            kind: OutputKind::P2wsh,
            change_script: change,
            dust_relay_fee: policy.dust_relay_fee,
            cutoff_distance: policy.cutoff_distance(false),
            key_index: welcome.key_index,
            customer_key_index: key_index,
            peer: peer.to_string(),
        };
        let mut channel = CustomerChannel::new(terms, key)?;
        let spk = channel.funding_script_pubkey();
        let chain = self.chain.clone();
        let target = self.fee_target_blocks;
        let estimate: FeeRate = blocking(move || chain.estimate_fee(target)).await?;
        let fee_rate = estimate.min(self.max_fee_rate);
        let wallet = self.wallet.clone();
        let (funding, _fee) = blocking(move || {
            wallet.lock().unwrap_or_else(|p| p.into_inner()).build_payment(spk, deposit, fee_rate)
        })
        .await?;
        let funding_txid = funding.compute_txid();
        let id = channel.handle_funding_built(funding)?;
        // What a backup of this channel holds (a dispute channel's adds its trigger).
        let backup = |expiry, dispute| crate::backup::ChannelBackup {
            funding: id,
            value: deposit,
            kind: OutputKind::P2wsh,
            merchant,
            customer: customer_pub,
            customer_key_index: key_index,
            expiry,
            dispute,
            peer: peer.to_string(),
        };
        if let (Some(dir), ChannelKind::Cltv { .. }) = (&self.backups, kind) {
            // Before the funding can reach the chain: the merchant broadcasts it on `Open`.
            let b = backup(expiry, None);
            let dir = dir.clone();
            blocking(move || crate::backup::write(&dir, &b)).await?;
        }
        let mut entry = crate::entry(Entry::new(channel));
        let msgs = self.drain(&mut entry).await?;
        let answer = match conn.send(&msgs).await {
            Ok(()) => conn.recv().await,
            Err(e) => Err(e),
        };
        let (refusal, trigger_signature) = match answer {
            Ok(Message::Opened(o)) => (None, o.trigger_signature),
            Ok(Message::Error(e)) => {
                (Some(CustomerError::Rejected { code: e.code, message: e.message }), Vec::new())
            }
            Ok(_) => (Some(CustomerError::Protocol("expected Opened")), Vec::new()),
            Err(e) => (Some(e), Vec::new()),
        };
        if let Some(err) = refusal {
            // Not broadcast by us; the merchant broadcasts only channels it accepts. Free the
            // funding's coins in the wallet and mark the channel abandoned.
            let (code, message) = match &err {
                CustomerError::Rejected { code, message } => (*code, message.clone()),
                other => (0, other.to_string()),
            };
            entry.channel.handle_open_refused(code, message);
            self.drain(&mut entry).await?;
            let wallet = self.wallet.clone();
            blocking(move || wallet.lock().unwrap_or_else(|p| p.into_inner()).forget(funding_txid))
                .await?;
            return Err(err);
        }
        let opened = entry.channel.handle_opened(&trigger_signature);
        if let (Ok(()), Some(dir), Some(trigger), Some(blocks)) = (
            &opened,
            &self.backups,
            entry.channel.trigger().cloned(),
            entry.channel.state().terms.script.dispute_blocks(),
        ) {
            // A dispute channel's backup holds its trigger: written before the funding can be
            // broadcast (the drain below).
            let b = backup(LockTime::ZERO, Some(crate::backup::DisputeBackup { blocks, trigger }));
            let dir = dir.clone();
            blocking(move || crate::backup::write(&dir, &b)).await?;
        }
        if let Err(e) = opened {
            // A dispute channel whose trigger the merchant did not sign properly: the funding
            // was never signed for broadcast; free its coins.
            self.drain(&mut entry).await?;
            let wallet = self.wallet.clone();
            blocking(move || wallet.lock().unwrap_or_else(|p| p.into_inner()).forget(funding_txid))
                .await?;
            return Err(e.into());
        }
        self.drain(&mut entry).await?;
        self.view.watch(id, Lookback::Never);
        entry.ext.conn = Some(conn);
        self.map().insert(id, Arc::new(tokio::sync::Mutex::new(entry)));
        info!(channel = %id, %deposit, "channel opened");
        Ok(id)
    }

    /// Asks the merchant to settle now; returns the settlement's txid.
    ///
    /// # Errors
    /// The merchant's refusal; connection errors.
    pub async fn close(&self, id: OutPoint) -> Result<Txid, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        e.channel.close()?;
        let msgs = self.drain(&mut e).await?;
        let conn = e.ext.conn()?;
        conn.send(&msgs).await?;
        match conn.recv().await? {
            // A dispute channel: the cooperative close, checked, signed and broadcast here.
            Message::Closed(c) if !c.close_tx.is_empty() => {
                let tx = e.channel.handle_cooperative_close(&c.close_tx, &c.merchant_signature)?;
                self.drain(&mut e).await?;
                Ok(tx.compute_txid())
            }
            Message::Closed(c) => {
                let txid = c.txid()?;
                e.channel.handle_closed(txid)?;
                self.drain(&mut e).await?;
                Ok(txid)
            }
            Message::Error(err) => {
                Err(CustomerError::Rejected { code: err.code, message: err.message })
            }
            _ => Err(CustomerError::Protocol("expected Closed")),
        }
    }

    /// A dispute channel's force close: the customer leaves without the merchant. Broadcasts
    /// the trigger with an exit child paying for both (from a confirmed wallet coin); no
    /// payment is signed on the channel any more; [`Customer::tick`] refunds the deposit once
    /// the trigger has the dispute period's confirmations, unless the merchant settled the
    /// latest payment first. Returns the trigger's txid.
    ///
    /// # Errors
    /// [`CustomerError::Core`] for a CLTV channel or one not open; wallet (no confirmed coin
    /// for the fee) or chain errors.
    pub async fn force_close(&self, id: OutPoint) -> Result<Txid, CustomerError> {
        let mut e = self.locked(&id).await?;
        let phase = e.channel.phase();
        let not_dispute = || paychan_core::Error::InvalidTransition { phase, event: "force close" };
        // Checked before the wallet builds (and reserves the coins of) an exit child.
        if !matches!(
            phase,
            paychan_core::channel::Phase::Open
                | paychan_core::channel::Phase::Settling
                | paychan_core::channel::Phase::Disputed
        ) {
            return Err(not_dispute().into());
        }
        let trigger = e.channel.trigger().cloned().ok_or_else(not_dispute)?;
        let params = e.channel.state().params.clone().ok_or_else(not_dispute)?;
        let (anchor, anchor_output) = params.anchor().ok_or_else(not_dispute)?;
        let chain = self.chain.clone();
        let target = self.fee_target_blocks;
        let fee_rate = blocking(move || chain.estimate_fee(target)).await?.min(self.max_fee_rate);
        let wallet = self.wallet.clone();
        let weight = trigger.weight();
        let exit = blocking(move || {
            let mut w = wallet.lock().unwrap_or_else(|p| p.into_inner());
            w.build_anchor_child(anchor, anchor_output, weight, fee_rate)
        })
        .await?;
        let exit_txid = exit.compute_txid();
        if let Err(err) = e.channel.force_close(exit) {
            // Never broadcast: its coins are free again.
            let wallet = self.wallet.clone();
            blocking(move || wallet.lock().unwrap_or_else(|p| p.into_inner()).forget(exit_txid))
                .await?;
            return Err(err.into());
        }
        self.drain(&mut e).await?;
        let txid = trigger.compute_txid();
        info!(channel = %id, trigger = %txid, "force close: the dispute period starts when the trigger confirms");
        Ok(txid)
    }

    /// Periodic check: notices funding spends (settled or refunded) and broadcasts the refund
    /// of every channel whose expiry has passed unsettled (a dispute channel's, once its
    /// trigger has the dispute period's confirmations). Returns the refunds broadcast.
    ///
    /// # Errors
    /// Chain, wallet or store errors.
    pub async fn tick(&self) -> Result<Vec<Txid>, CustomerError> {
        let view = self.view.clone();
        blocking(move || view.sync()).await?;
        let entries: Vec<_> = self.map().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut refunds = Vec::new();
        for (id, e) in entries {
            let mut e = e.lock_owned().await;
            self.reload(&mut e).await?;
            if e.channel.phase().is_final() {
                self.view.unwatch(&id);
                continue;
            }
            // The funding's spend, from the block the chain view read (once a dispute
            // channel's trigger is out: the trigger output's spend).
            let phase = e.channel.phase();
            let point = e.channel.state().params.as_ref().map_or(id, |p| p.ending_outpoint(phase));
            if let Some(spend) = self.view.spend(&point) {
                e.channel.handle_funding_spent(&spend.tx)?;
                if let (Some(p), true) = (&e.channel.state().params, point == id) {
                    // The trigger confirmed at `spend.height`: its output is watched from that
                    // block on (the merchant's settlement may be in it), before the drain's
                    // watch from the tip.
                    let lookback = Lookback::To { height: spend.height, time: 0 };
                    self.view.watch(p.channel_input(), lookback);
                }
                self.drain(&mut e).await?;
                if point != id || e.channel.phase() != paychan_core::channel::Phase::Disputed {
                    continue;
                }
            }
            if let Some(trigger) = e.channel.trigger() {
                let confirmations = self.view.confirmations(&trigger.compute_txid());
                e.channel.handle_trigger_confirmations(confirmations);
            }
            let now = (self.clock)();
            e.channel.handle_tick(&now);
            let due = self.drain_events(&mut e).await?;
            if due {
                let destination = {
                    let mut w = self.wallet.lock().unwrap_or_else(|p| p.into_inner());
                    w.new_address()?.script_pubkey()
                };
                let chain = self.chain.clone();
                let target = self.fee_target_blocks;
                let fee_rate = blocking(move || chain.estimate_fee(target)).await?;
                let tx = e.channel.refund(destination, fee_rate)?;
                self.drain(&mut e).await?;
                refunds.push(tx.compute_txid());
            }
        }
        // Acted on: a restart need not read these blocks again.
        let view = self.view.clone();
        blocking(move || view.commit()).await?;
        Ok(refunds)
    }
}
