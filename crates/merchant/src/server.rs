//! The channel server: the driver between the core's merchant state machines, the store and
//! the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paychan_chain::ChainSource;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};
use paychan_core::channel::merchant::{params_from_open, MerchantChannel, MerchantState, Redeemed};
use paychan_core::channel::{Event, Phase};
use paychan_core::msg::{self, Closed, Message, Opened, PaymentAck, Resumed, Welcome};
use paychan_core::policy::Policy;
use paychan_core::{Error, Now};
use paychan_store::{ChannelStore, Persisted, Role, Storage};
use tracing::{info, warn};

use crate::{KeyChain, MerchantError};

/// A channel as the admin API lists it.
fn listing(id: OutPoint, st: &MerchantState) -> (OutPoint, Phase, Amount, Amount, Amount, u32) {
    (
        id,
        st.phase,
        st.accepted,
        st.charged,
        st.params.capacity(),
        st.params.script().expiry().to_consensus_u32(),
    )
}

/// The channel a message names.
fn named(
    channel: &Option<msg::ChannelRef>,
    missing: &'static str,
) -> Result<OutPoint, MerchantError> {
    Ok(channel.as_ref().ok_or(Error::Decode(missing.into()))?.outpoint()?)
}

/// The merchant key index used for every 21 (two1) channel: two1's `GET /payment` shows one
/// key. Far above the indices handed out one by one for the paychan protocol.
pub const TWO1_KEY_INDEX: u32 = 0x7fff_ffff;

/// Where "now" comes from (the core reads no clock): wall time and the chain tip.
pub type Clock = Arc<dyn Fn() -> Now + Send + Sync>;

/// The server's settings.
pub struct ServerConfig {
    /// The channel policy.
    pub policy: Policy,
    /// Where settlements pay the merchant.
    pub payout: ScriptBuf,
    /// Confirmation target for settlement fee estimates.
    pub settle_target_blocks: u32,
}

struct Slot {
    /// The machine and its row.
    p: Persisted<MerchantChannel>,
    /// The last settlement broadcast: at which height, at which fee rate.
    settlement: Option<(u32, FeeRate)>,
    /// The funding's confirmations at the last look (0 before the first).
    depth: u32,
    /// When settlement work on this channel may be tried again after failures.
    retry: Retry,
    /// The last broadcast of this channel's transactions failed.
    broadcast_failed: bool,
}

impl Slot {
    fn new(p: Persisted<MerchantChannel>) -> Self {
        Slot { p, settlement: None, depth: 0, retry: Retry::default(), broadcast_failed: false }
    }
}

/// `s.channel` is the machine.
impl std::ops::Deref for Slot {
    type Target = Persisted<MerchantChannel>;

    fn deref(&self) -> &Self::Target {
        &self.p
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.p
    }
}

/// The first retry of failed settlement work comes this many seconds after the failure; each
/// further failure doubles the wait, up to [`SETTLE_RETRY_MAX_SECS`].
pub const SETTLE_RETRY_FIRST_SECS: u64 = 15;
/// The longest wait between two settlement attempts: well inside the settle margin (4 hours by
/// default: at least 24 attempts before the expiry).
pub const SETTLE_RETRY_MAX_SECS: u64 = 600;
/// A funding this deep is not looked at again at every tick (a reorg deeper than this is not
/// followed; Bitcoin Core's own wallet treats 6 as final in practice).
pub const REORG_SAFETY_DEPTH: u32 = 6;

/// Exponential backoff of one channel's settlement work (build, broadcast, follow-up).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Retry {
    failures: u32,
    /// Wall time (Unix seconds) before which nothing is tried again.
    not_before: u64,
}

impl Retry {
    fn due(&self, now: u64) -> bool {
        now >= self.not_before
    }

    /// Records a failure at `now`; returns the wait before the next attempt.
    fn failed(&mut self, now: u64) -> u64 {
        let wait = SETTLE_RETRY_FIRST_SECS
            .saturating_mul(1 << self.failures.min(16))
            .min(SETTLE_RETRY_MAX_SECS);
        self.failures = self.failures.saturating_add(1);
        self.not_before = now.saturating_add(wait);
        wait
    }

    fn succeeded(&mut self) {
        *self = Retry::default();
    }
}

/// How many times a request is checked again after its write met a compare-and-swap conflict
/// (another writer moved the channel) before the request fails.
pub const CONFLICT_RETRIES: u32 = 3;

/// A settlement unconfirmed after this many blocks is replaced at a higher fee rate.
pub const BUMP_AFTER_BLOCKS: u32 = 3;

/// Drives every channel of one merchant.
pub struct ChannelServer {
    config: ServerConfig,
    keys: KeyChain,
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    clock: Clock,
    channels: Mutex<HashMap<OutPoint, Arc<tokio::sync::Mutex<Slot>>>>,
    metrics: crate::metrics::Metrics,
    payout_source: Option<PayoutSource>,
    /// 21 tokens (payment txids) → their channel.
    tokens: Mutex<HashMap<Txid, OutPoint>>,
    /// The chain tip at the last tick.
    last_tip: Mutex<Option<paychan_core::bitcoin::BlockHash>>,
}

/// Hands out a fresh payout script per settlement (the merchant's wallet).
pub type PayoutSource = Arc<dyn Fn() -> Result<ScriptBuf, String> + Send + Sync>;

impl std::fmt::Debug for ChannelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelServer").finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, paychan_chain::ChainError> + Send + 'static,
) -> Result<T, MerchantError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| MerchantError::TaskFailed)?
        .map_err(MerchantError::Chain)
}

impl ChannelServer {
    /// A server; call [`ChannelServer::load`] to bring back stored channels.
    ///
    /// # Errors
    /// [`MerchantError::Core`] for an invalid policy.
    pub fn new(
        config: ServerConfig,
        keys: KeyChain,
        store: Arc<dyn ChannelStore>,
        chain: Arc<dyn ChainSource>,
        clock: Clock,
    ) -> Result<Self, MerchantError> {
        config.policy.validate()?;
        Ok(ChannelServer {
            config,
            keys,
            store,
            chain,
            clock,
            channels: Mutex::new(HashMap::new()),
            metrics: crate::metrics::Metrics::default(),
            payout_source: None,
            tokens: Mutex::new(HashMap::new()),
            last_tip: Mutex::new(None),
        })
    }

    /// Pays each settlement to a fresh script from `source` (falling back to the configured
    /// payout if it fails), so settlements never reuse an address.
    pub fn with_payout_source(mut self, source: PayoutSource) -> Self {
        self.payout_source = Some(source);
        self
    }

    /// Loads every stored live channel (after a restart).
    ///
    /// # Errors
    /// [`MerchantError::Store`]; [`MerchantError::Core`] for an undecodable row.
    pub async fn load(&self) -> Result<usize, MerchantError> {
        let rows = self
            .store
            .list(paychan_store::Query { role: Some(Role::Merchant), ..Default::default() })
            .await?;
        let mut n = 0;
        for row in rows.into_iter().filter(|r| !r.phase.is_final()) {
            let state = MerchantState::decode(&row.state)?;
            if let Some(tx) = &state.two1_tx {
                self.token_index().insert(tx.compute_txid(), row.id);
            }
            let channel = MerchantChannel::restore(state, self.config.policy.clone());
            let slot = Slot::new(Persisted::stored(channel, row.version, row.total));
            self.slots().insert(row.id, Arc::new(tokio::sync::Mutex::new(slot)));
            n += 1;
        }
        Ok(n)
    }

    fn token_index(&self) -> std::sync::MutexGuard<'_, HashMap<Txid, OutPoint>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<OutPoint, Arc<tokio::sync::Mutex<Slot>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, id: &OutPoint) -> Result<Arc<tokio::sync::Mutex<Slot>>, MerchantError> {
        self.slots().get(id).cloned().ok_or(MerchantError::Core(Error::UnknownChannel(*id)))
    }

    /// Channel `id` locked, ready to take a payment: reloaded from the store if a write
    /// failed, and its funding's confirmations looked at again while it awaits them.
    async fn payable(
        &self,
        id: OutPoint,
    ) -> Result<tokio::sync::OwnedMutexGuard<Slot>, MerchantError> {
        let mut s = self.slot(&id)?.lock_owned().await;
        self.reload(&mut s).await?;
        if s.channel.phase() == Phase::AwaitingFunding {
            self.refresh_confirmations(&mut s, id).await?;
        }
        Ok(s)
    }

    /// Answers a `Hello`: the version, the key a new channel would use, the policy. The key's
    /// index is taken only when a channel is opened with it ([`ChannelServer::open`]), so a
    /// handshake writes nothing and costs nothing; two peers greeted at once may be offered
    /// the same key, and both may open with it (their channel scripts still differ).
    ///
    /// # Errors
    /// [`Error::UnsupportedVersion`]; key errors (every per-channel index used).
    pub fn hello(&self, hello: &msg::Hello) -> Result<Welcome, MerchantError> {
        let version = msg::negotiate(hello)?;
        let (key_index, key) = self.keys.peek()?;
        if key_index >= TWO1_KEY_INDEX {
            return Err(MerchantError::KeysExhausted);
        }
        Ok(Welcome {
            version,
            merchant_pubkey: key.serialize().to_vec(),
            policy: Some((&self.config.policy).into()),
            key_index,
        })
    }

    /// Accepts a channel: checks it against the policy, stores it, broadcasts its funding (the
    /// node's acceptance proves the deposit is real), and answers `Opened`.
    ///
    /// # Errors
    /// The policy or decoding error; [`MerchantError::Chain`] when the node refuses the funding.
    pub async fn open(&self, open: &msg::Open) -> Result<Opened, MerchantError> {
        // Only keys offered in a Welcome: at most the next one, never the 21 key's index.
        let next = self.keys.next_index();
        if open.key_index > next || open.key_index >= TWO1_KEY_INDEX {
            return Err(Error::UnknownKeyIndex { index: open.key_index, next }.into());
        }
        let key = self.keys.secret(open.key_index)?;
        let pubkey = PublicKey::from_secret_key(paychan_core::sig::secp(), &key);
        let (params, funding_tx) = params_from_open(open, &pubkey, &self.config.policy)?;
        let id = params.id();
        self.ensure_new(id).await?;
        let now = (self.clock)();
        let channel =
            MerchantChannel::open(params, self.config.policy.clone(), &now, open.key_index)?;
        let out = self.admit(id, channel, funding_tx, Some(open.key_index)).await?;
        info!(channel = %id, "channel opened");
        out.into_iter()
            .find_map(|m| if let Message::Opened(o) = m { Some(o) } else { None })
            .ok_or(MerchantError::Internal("no Opened message"))
    }

    /// Refuses a deposit that already has a channel: live (in memory) or ended (in the store
    /// only).
    async fn ensure_new(&self, id: OutPoint) -> Result<(), MerchantError> {
        if self.slots().contains_key(&id) || self.store.get(id, Role::Merchant).await?.is_some() {
            return Err(Error::ChannelExists(id).into());
        }
        Ok(())
    }

    /// Broadcasts a new channel's funding (the node's acceptance proves the deposit is real),
    /// takes its key index (`key_index`: only once the deposit is real, so opens with made-up
    /// deposits cannot use up indexes), stores the channel, and registers it.
    async fn admit(
        &self,
        id: OutPoint,
        channel: MerchantChannel,
        funding_tx: Transaction,
        key_index: Option<u32>,
    ) -> Result<Vec<Message>, MerchantError> {
        let slot = Arc::new(tokio::sync::Mutex::new(Slot::new(Persisted::new(channel))));
        let mut guard = slot.lock().await;
        let chain = self.chain.clone();
        blocking(move || chain.broadcast(&funding_tx)).await.map_err(|e| match e {
            // The customer's own transaction: say why the node refused it.
            MerchantError::Chain(paychan_chain::ChainError::Rejected { reason, .. }) => {
                MerchantError::Core(Error::FundingRefused { reason })
            }
            other => other,
        })?;
        if let Some(index) = key_index {
            self.keys.mark_used(index)?;
        }
        let out = self.drain(&mut guard).await?;
        drop(guard);
        self.slots().insert(id, slot);
        Ok(out)
    }

    /// A payment: validated by the core, stored, then acknowledged.
    ///
    /// # Errors
    /// The payment rule broken (the channel is unchanged), or a store failure.
    pub async fn pay(&self, pay: &msg::Pay) -> Result<PaymentAck, MerchantError> {
        let channel = named(&pay.channel, "payment without a channel")?;
        self.pay_batch(channel, std::slice::from_ref(pay))
            .await
            .pop()
            .ok_or(MerchantError::Internal("no answer"))?
    }

    /// Several payments on one channel, as they arrived pipelined: each is validated in turn,
    /// the accepted ones are stored in one write, then acknowledged. Returns one answer per
    /// payment, in order (a refused payment changes nothing and does not stop the others).
    pub async fn pay_batch(
        &self,
        channel: OutPoint,
        pays: &[msg::Pay],
    ) -> Vec<Result<PaymentAck, MerchantError>> {
        match self.on_fresh_state(|| self.pay_batch_once(channel, pays)).await {
            Ok(answers) => answers,
            Err(MerchantError::Core(e @ Error::UnknownChannel(_))) => {
                pays.iter().map(|_| Err(e.clone().into())).collect()
            }
            Err(e) => {
                let shared = std::sync::Arc::new(e);
                pays.iter().map(|_| Err(MerchantError::Shared(shared.clone()))).collect()
            }
        }
    }

    /// Runs `op`, and runs it again (up to [`CONFLICT_RETRIES`] times) when its write met a
    /// compare-and-swap conflict: another writer (`paychan payment submit`, another instance
    /// on the same database) moved the channel. The failed write already reloaded the channel
    /// from the store, so the retry checks the request against what the store holds. Nothing
    /// was acknowledged by the attempt that failed.
    async fn on_fresh_state<T, F, Fut>(&self, mut op: F) -> Result<T, MerchantError>
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

    /// One attempt of [`ChannelServer::pay_batch`]: `Err` when the driver failed (nothing
    /// acknowledged), else one answer per payment.
    async fn pay_batch_once(
        &self,
        channel: OutPoint,
        pays: &[msg::Pay],
    ) -> Result<Vec<Result<PaymentAck, MerchantError>>, MerchantError> {
        let mut s = self.payable(channel).await?;
        let started = std::time::Instant::now();
        let now = (self.clock)();
        let before = s.channel.accepted();
        let mut results: Vec<Result<(), MerchantError>> = Vec::with_capacity(pays.len());
        for p in pays {
            results.push(
                s.channel
                    .handle_payment(&now, channel, Amount::from_sat(p.total_sat), &p.signature)
                    .map_err(MerchantError::from),
            );
        }
        let gained = s.channel.accepted().checked_sub(before).unwrap_or(Amount::ZERO);
        let mut exhausted = false;
        let acks = self
            .drain_with(&mut s, &mut |e| {
                exhausted |= matches!(
                    e,
                    Event::SettleDue { reason: paychan_core::channel::SettleReason::Exhausted, .. }
                );
            })
            .await?;
        // Counted once stored (a retried attempt is not counted twice).
        let accepted = results.iter().filter(|r| r.is_ok()).count() as u64;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.metrics.payments.fetch_add(accepted, relaxed);
        self.metrics.rejections.fetch_add(results.len() as u64 - accepted, relaxed);
        self.metrics.revenue_sat.fetch_add(gained.to_sat(), relaxed);
        if exhausted && s.channel.phase() == Phase::Open {
            // Too little left to be worth keeping open: settle now (after the payments are
            // stored; the acknowledgements below do not wait for the settlement).
            self.settle_exhausted(&mut s, channel, now.time).await;
        }
        let elapsed = started.elapsed();
        for _ in 0..pays.len() {
            self.metrics.payment_latency.observe(elapsed);
        }
        let mut acks = acks.into_iter().filter_map(|m| match m {
            Message::PaymentAck(a) => Some(a),
            _ => None,
        });
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(()) => acks.next().ok_or(MerchantError::Internal("no acknowledgement")),
                Err(e) => Err(e),
            })
            .collect())
    }

    /// A paid request on `channel`: the customer's signature of `total` pays `price` (DESIGN §2
    /// accounting; see [`MerchantChannel::redeem`]). When this returns, the charge (and the
    /// payment, if it raised the total) is durable: serve the request only then.
    ///
    /// # Errors
    /// The payment rule broken, [`Error::AlreadyRedeemed`], [`Error::CreditTooLow`] (the
    /// channel is unchanged); a store failure.
    pub async fn redeem(
        &self,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
        price: Amount,
    ) -> Result<Redeemed, MerchantError> {
        self.on_fresh_state(|| self.redeem_once(channel, total, signature, price)).await
    }

    async fn redeem_once(
        &self,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
        price: Amount,
    ) -> Result<Redeemed, MerchantError> {
        let started = std::time::Instant::now();
        let mut s = self.payable(channel).await?;
        let now = (self.clock)();
        let r = match s.channel.redeem(&now, channel, total, signature, price) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e.into());
            }
        };
        self.drain_paid(&mut s, channel).await?;
        // Counted once stored (a retried attempt is not counted twice).
        self.metrics.payments.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .revenue_sat
            .fetch_add(r.increment.to_sat(), std::sync::atomic::Ordering::Relaxed);
        self.metrics.requests_charged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.payment_latency.observe(started.elapsed());
        Ok(r)
    }

    /// Redeems a 21 token (the txid a `PUT /payment/…` answered) for a request of `price`.
    ///
    /// # Errors
    /// [`Error::UnknownToken`] (unknown or already used), [`Error::CreditTooLow`],
    /// [`Error::ChannelNotOpen`]; a store failure.
    pub async fn redeem_token(
        &self,
        token: &Txid,
        price: Amount,
    ) -> Result<(OutPoint, Redeemed), MerchantError> {
        self.on_fresh_state(|| self.redeem_token_once(token, price)).await
    }

    async fn redeem_token_once(
        &self,
        token: &Txid,
        price: Amount,
    ) -> Result<(OutPoint, Redeemed), MerchantError> {
        let id = self.token_index().get(token).copied().ok_or(Error::UnknownToken)?;
        let slot = self.slot(&id)?;
        let mut s = slot.lock().await;
        self.reload(&mut s).await?;
        if !s.channel.has_token(token) {
            // Fell out of the channel's window of tokens.
            self.token_index().remove(token);
            return Err(Error::UnknownToken.into());
        }
        let now = (self.clock)();
        let r = s.channel.redeem_token(&now, token, price)?;
        self.drain_paid(&mut s, id).await?;
        self.metrics.requests_charged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((id, r))
    }

    /// Reverses the charge of a request that failed after it was charged; `total` (the
    /// request's payment, if it carried one) may then be used again. Durable when it returns.
    /// Returns the channel's credit.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`], [`Error::AmountOutOfRange`]; a store failure.
    pub async fn refund_request(
        &self,
        channel: OutPoint,
        total: Option<Amount>,
        price: Amount,
    ) -> Result<Amount, MerchantError> {
        self.on_fresh_state(|| async {
            let slot = self.slot(&channel)?;
            let mut s = slot.lock().await;
            self.reload(&mut s).await?;
            let credit = s.channel.refund_request(total, price)?;
            self.drain(&mut s).await?;
            self.metrics.requests_refunded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(credit)
        })
        .await
    }

    /// Drains after a paid request, settling the channel if the payment exhausted it.
    async fn drain_paid(&self, s: &mut Slot, channel: OutPoint) -> Result<(), MerchantError> {
        let mut exhausted = false;
        self.drain_with(s, &mut |e| {
            exhausted |= matches!(
                e,
                Event::SettleDue { reason: paychan_core::channel::SettleReason::Exhausted, .. }
            );
        })
        .await?;
        if exhausted && s.channel.phase() == Phase::Open {
            let now = (self.clock)().time;
            self.settle_exhausted(s, channel, now).await;
        }
        Ok(())
    }

    /// Settles a channel a payment just exhausted, unless its settlement is backing off after
    /// failures (then the tick retries it when due).
    async fn settle_exhausted(&self, s: &mut Slot, channel: OutPoint, now: u64) {
        if !s.retry.due(now) {
            return;
        }
        let r = self.settle_locked(s).await;
        self.settled_or_backoff(s, channel, now, r.map(|_| ()), "settling an exhausted channel");
    }

    /// Records the outcome of settlement work on a channel: a success (with a broadcast that
    /// went out) clears its backoff; a failure doubles it, and says when the next try comes.
    fn settled_or_backoff(
        &self,
        s: &mut Slot,
        channel: OutPoint,
        now: u64,
        result: Result<(), MerchantError>,
        what: &'static str,
    ) {
        let result = match result {
            Ok(()) if s.broadcast_failed => Err(MerchantError::BroadcastFailed),
            other => other,
        };
        match result {
            Ok(()) => s.retry.succeeded(),
            Err(e) => {
                let wait = s.retry.failed(now);
                self.metrics.settle_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(%channel, error = %e, attempt = s.retry.failures, retry_in_secs = wait, "{what} failed; will retry");
            }
        }
    }

    /// The merchant's policy.
    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// Checks a payment without accepting it: what it would add to the channel.
    ///
    /// # Errors
    /// The payment rule it breaks.
    pub async fn check_payment(&self, pay: &msg::Pay) -> Result<Amount, MerchantError> {
        let channel = named(&pay.channel, "payment without a channel")?;
        let s = self.payable(channel).await?;
        let mut probe = s.channel.clone();
        let before = probe.accepted();
        let now = (self.clock)();
        probe.handle_payment(&now, channel, Amount::from_sat(pay.total_sat), &pay.signature)?;
        Ok(probe.accepted() - before)
    }

    /// The key two1 clients see at `GET /payment` (one key for every 21 channel, as two1's
    /// merchant has): index [`TWO1_KEY_INDEX`] of the merchant's key chain.
    ///
    /// # Errors
    /// Key errors.
    pub fn two1_key(&self) -> Result<PublicKey, MerchantError> {
        let key = self.keys.secret(TWO1_KEY_INDEX)?;
        Ok(PublicKey::from_secret_key(paychan_core::sig::secp(), &key))
    }

    /// Whether zero-confirmation channels are accepted.
    pub fn zero_conf(&self) -> bool {
        self.config.policy.zero_conf
    }

    /// Opens a 21 channel: a P2SH deposit paying `redeem_script`, whose merchant key must be
    /// [`ChannelServer::two1_key`]. The deposit is broadcast (it must be valid).
    ///
    /// # Errors
    /// The policy's refusal, a script that is not a channel script for our key, a deposit the
    /// node refuses, or a deposit already used.
    pub async fn two1_open(
        &self,
        deposit: &Transaction,
        redeem_script: &paychan_core::bitcoin::Script,
    ) -> Result<OutPoint, MerchantError> {
        let script = paychan_core::script::ChannelScript::from_script(redeem_script)?;
        if script.merchant() != self.two1_key()? {
            return Err(Error::NotChannelScript("the merchant key is not this merchant's").into());
        }
        let funding = paychan_core::tx::FundingOutput::find(deposit, &script)?;
        if funding.kind != paychan_core::script::OutputKind::P2sh {
            return Err(Error::NotChannelScript("21 deposits pay P2SH").into());
        }
        let change = ScriptBuf::new_p2pkh(
            &paychan_core::bitcoin::CompressedPublicKey(script.customer()).pubkey_hash(),
        );
        let params = paychan_core::tx::ChannelParams::new(
            script,
            funding,
            change,
            self.config.policy.dust_relay_fee,
        )?;
        let id = params.id();
        self.ensure_new(id).await?;
        let now = (self.clock)();
        let channel =
            MerchantChannel::open(params, self.config.policy.clone(), &now, TWO1_KEY_INDEX)?;
        self.admit(id, channel, deposit.clone(), None).await?;
        Ok(id)
    }

    /// The channel whose deposit is `txid` (21 channels are named by their deposit txid).
    pub fn find_by_txid(&self, txid: &paychan_core::bitcoin::Txid) -> Option<OutPoint> {
        self.slots().keys().find(|o| o.txid == *txid).copied()
    }

    /// A 21 payment: a whole half-signed transaction. Returns the increment it pays.
    ///
    /// # Errors
    /// The rule it breaks (the channel is unchanged).
    pub async fn two1_pay(&self, id: OutPoint, tx: &Transaction) -> Result<Amount, MerchantError> {
        self.on_fresh_state(|| async {
            let mut s = self.payable(id).await?;
            let now = (self.clock)();
            let increment = s.channel.handle_two1_payment(&now, tx)?;
            self.drain(&mut s).await?;
            self.token_index().insert(tx.compute_txid(), id);
            Ok(increment)
        })
        .await
    }

    /// A 21 close: `signature` is the customer's DER signature of SHA-256 of the deposit txid's
    /// hex text. Settles and returns the settlement.
    ///
    /// # Errors
    /// [`Error::SignatureNotDer`], [`Error::BadSignature`], [`Error::InvalidTransition`] when
    /// nothing was paid.
    pub async fn two1_close(
        &self,
        id: OutPoint,
        signature: &[u8],
    ) -> Result<Closed, MerchantError> {
        use paychan_core::bitcoin::hashes::{sha256, Hash};
        let slot = self.slot(&id)?;
        let mut s = slot.lock().await;
        self.reload(&mut s).await?;
        let digest = sha256::Hash::hash(id.txid.to_string().as_bytes()).to_byte_array();
        let sig = paychan_core::bitcoin::secp256k1::ecdsa::Signature::from_der(signature)
            .map_err(|_| Error::SignatureNotDer)?;
        let mut normal = sig;
        normal.normalize_s();
        paychan_core::sig::secp()
            .verify_ecdsa(
                &paychan_core::bitcoin::secp256k1::Message::from_digest(digest),
                &normal,
                &s.channel.state().params.script().customer(),
            )
            .map_err(|_| Error::BadSignature)?;
        if s.channel.accepted() == Amount::ZERO {
            return Err(
                Error::InvalidTransition { phase: s.channel.phase(), event: "close" }.into()
            );
        }
        self.settle_locked(&mut s).await
    }

    /// The Prometheus text exposition of the merchant's metrics.
    pub async fn metrics_text(&self) -> String {
        let slots: Vec<_> = self.slots().values().cloned().collect();
        let mut by_phase: HashMap<&'static str, usize> = HashMap::new();
        for slot in slots {
            let phase = slot.lock().await.channel.phase();
            *by_phase.entry(phase.as_str()).or_default() += 1;
        }
        let mut phases: Vec<(&str, usize)> = by_phase.into_iter().collect();
        phases.sort_unstable();
        self.metrics.render(&phases)
    }

    /// Every channel, live ones from memory and ended ones (settled, refunded, abandoned:
    /// not kept in memory) from the store: (id, phase, accepted total, charged, capacity,
    /// expiry).
    ///
    /// # Errors
    /// The store's, or an undecodable row.
    pub async fn channels(
        &self,
    ) -> Result<Vec<(OutPoint, Phase, Amount, Amount, Amount, u32)>, MerchantError> {
        let slots: Vec<_> = self.slots().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut out = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            let s = slot.lock().await;
            out.push(listing(id, s.channel.state()));
        }
        let ended = self
            .store
            .list(paychan_store::Query {
                role: Some(Role::Merchant),
                phases: vec![Phase::Settled, Phase::Refunded, Phase::Abandoned],
                ..Default::default()
            })
            .await?;
        for row in ended {
            if self.slots().contains_key(&row.id) {
                continue;
            }
            out.push(listing(row.id, &MerchantState::decode(&row.state)?));
        }
        out.sort_by_key(|c| (c.5, c.0));
        Ok(out)
    }

    /// A channel's phase and stored total; an ended channel's from the store.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`]; the store's.
    pub async fn channel_status(&self, id: OutPoint) -> Result<(Phase, Amount), MerchantError> {
        if let Ok(slot) = self.slot(&id) {
            let s = slot.lock().await;
            return Ok((s.channel.phase(), s.stored_total()));
        }
        let row = self.store.get(id, Role::Merchant).await?.ok_or(Error::UnknownChannel(id))?;
        Ok((row.phase, row.total))
    }

    /// A channel's expiry (locktime value).
    ///
    /// # Errors
    /// [`Error::UnknownChannel`].
    pub async fn channel_expiry(&self, id: OutPoint) -> Result<u32, MerchantError> {
        let slot = self.slot(&id)?;
        let s = slot.lock().await;
        Ok(s.channel.state().params.script().expiry().to_consensus_u32())
    }

    /// Settles channel `id` now, at the merchant's own initiative; returns the txid.
    ///
    /// # Errors
    /// State or chain errors (nothing paid yet, channel over).
    pub async fn settle(&self, id: OutPoint) -> Result<Closed, MerchantError> {
        let slot = self.slot(&id)?;
        let mut s = slot.lock().await;
        self.reload(&mut s).await?;
        self.settle_locked(&mut s).await
    }

    /// A reconnecting customer asks for the latest stored total.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`].
    pub async fn resume(&self, resume: &msg::Resume) -> Result<Resumed, MerchantError> {
        let channel = named(&resume.channel, "resume without a channel")?;
        let (_, total) = self.channel_status(channel).await?;
        Ok(Resumed { channel: Some(channel.into()), total_sat: total.to_sat() })
    }

    /// The customer asks to close: checks its signature, settles, answers with the txid.
    ///
    /// # Errors
    /// Signature or state errors; chain errors.
    pub async fn close(&self, close: &msg::Close) -> Result<Closed, MerchantError> {
        let channel = named(&close.channel, "close without a channel")?;
        let slot = self.slot(&channel)?;
        let mut s = slot.lock().await;
        self.reload(&mut s).await?;
        s.channel.handle_close(&close.signature)?;
        self.settle_locked(&mut s).await
    }

    async fn settle_locked(&self, s: &mut Slot) -> Result<Closed, MerchantError> {
        let chain = self.chain.clone();
        let target = self.config.settle_target_blocks;
        let fee_rate = blocking(move || chain.estimate_fee(target)).await?;
        self.settle_at(s, fee_rate).await
    }

    /// Settles at `fee_rate`, or, when that fee would leave the merchant's output below the
    /// dust threshold (a small total at a high fee rate), at the highest rate that leaves it
    /// above, down to the 1 sat/vB relay minimum: a settlement that confirms late beats none
    /// (it is then bumped as long as the output stays above dust).
    async fn settle_at(&self, s: &mut Slot, fee_rate: FeeRate) -> Result<Closed, MerchantError> {
        self.settle_above(s, fee_rate, None).await
    }

    /// As [`Self::settle_at`], but never at or below `floor` (a replacement must pay more
    /// than the transaction it replaces, BIP 125): then it fails and changes nothing.
    async fn settle_above(
        &self,
        s: &mut Slot,
        fee_rate: FeeRate,
        floor: Option<FeeRate>,
    ) -> Result<Closed, MerchantError> {
        let chain = self.chain.clone();
        let height = blocking(move || chain.tip()).await?.height;
        let key = self.keys.secret(s.channel.state().key_index)?;
        let payout = match &self.payout_source {
            Some(source) => source().unwrap_or_else(|e| {
                warn!(error = %e, "no fresh payout address; using the configured one");
                self.config.payout.clone()
            }),
            None => self.config.payout.clone(),
        };
        let mut rate = fee_rate;
        let used = loop {
            if floor.is_some_and(|f| rate <= f) {
                return Err(Error::ReplacementWouldBeDust.into());
            }
            match s.channel.settle(&key, payout.clone(), rate, &[]) {
                Ok(_) => break rate,
                Err(Error::Dust { .. } | Error::InsufficientFunds { .. })
                    if rate > FeeRate::BROADCAST_MIN =>
                {
                    // Halve the rate (never below the relay minimum) and try again.
                    rate = FeeRate::from_sat_per_kwu(rate.to_sat_per_kwu() / 2)
                        .max(FeeRate::BROADCAST_MIN);
                }
                Err(Error::Dust { .. } | Error::InsufficientFunds { .. }) => {
                    return Err(Error::SettlementTooSmall { total: s.channel.accepted() }.into())
                }
                Err(e) => return Err(e.into()),
            }
        };
        if used < fee_rate {
            info!(estimate = %fee_rate, used = %used, "settling below the fee estimate: a higher fee would leave the output as dust");
        }
        s.settlement = Some((height, used));
        self.metrics.settlements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.broadcast_failed = false;
        let out = self.drain(s).await?;
        out.into_iter()
            .find_map(|m| if let Message::Closed(c) = m { Some(c) } else { None })
            .ok_or(MerchantError::Internal("no Closed message"))
    }

    /// Checks the chain for every channel: funding confirmations, expiry deadlines (settling
    /// when due), settlements out. Call it when a block arrives, or periodically. A channel's
    /// failed settlement work is retried with exponential backoff
    /// ([`SETTLE_RETRY_FIRST_SECS`] doubling up to [`SETTLE_RETRY_MAX_SECS`]); one channel's
    /// failure does not stop the others.
    ///
    /// # Errors
    /// The first failure met (the chain unreachable, a store failure); every channel was still
    /// visited.
    pub async fn tick(&self) -> Result<(), MerchantError> {
        let chain = self.chain.clone();
        let tip = blocking(move || chain.tip()).await?;
        let new_tip = {
            let mut last = self.last_tip.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *last != Some(tip.hash);
            *last = Some(tip.hash);
            changed
        };
        let slots: Vec<(OutPoint, Arc<tokio::sync::Mutex<Slot>>)> =
            self.slots().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut first_error = None;
        for (id, slot) in slots {
            let mut s = slot.lock().await;
            if let Err(e) = self.tick_one(&mut s, id, new_tip).await {
                warn!(channel = %id, error = %e, "chain check failed; will retry");
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_some() {
            // Look at every channel again at the next tick, new block or not.
            *self.last_tip.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn tick_one(
        &self,
        s: &mut Slot,
        id: OutPoint,
        new_tip: bool,
    ) -> Result<(), MerchantError> {
        self.reload(s).await?;
        if s.channel.phase().is_final() {
            return Ok(());
        }
        // Confirmations change only with a new block; a deep funding is not looked at again.
        let shallow = s.depth < REORG_SAFETY_DEPTH || s.channel.phase() != Phase::Open;
        if new_tip && shallow {
            self.refresh_confirmations(s, id).await?;
        }
        let now = (self.clock)();
        s.channel.handle_tick(&now);
        let due = self.drain_events(s).await?;
        if !s.retry.due(now.time) {
            tracing::debug!(channel = %id, not_before = s.retry.not_before, "settlement backing off");
            return Ok(());
        }
        if due && s.channel.accepted() > Amount::ZERO && s.channel.phase() != Phase::Settling {
            let r = self.settle_locked(s).await.map(|_| ());
            self.settled_or_backoff(s, id, now.time, r, "settlement");
            // Followed from the next tick on.
            return Ok(());
        }
        // Spends and confirmations come with blocks; a retry after a failure comes when due.
        let look = new_tip || s.retry.failures > 0;
        if look && matches!(s.channel.phase(), Phase::Settling | Phase::Expired) {
            // Past the expiry the customer's refund can spend the funding too (and win a
            // race with the settlement): whoever spent it decides the phase.
            if let Err(e) = self.notice_spend(s, id).await {
                warn!(channel = %id, error = %e, "checking the funding's spend failed; will retry");
            }
            if s.channel.phase().is_final() {
                return Ok(());
            }
        }
        if look && s.channel.phase() == Phase::Settling {
            s.broadcast_failed = false;
            let r = self.follow_settlement(s).await;
            self.settled_or_backoff(s, id, now.time, r, "settlement follow-up");
        }
        Ok(())
    }

    /// If the funding output is spent in a block (by our settlement, or by the customer's
    /// refund), records the spend: settled or refunded, with the winner's amounts.
    async fn notice_spend(&self, s: &mut Slot, id: OutPoint) -> Result<(), MerchantError> {
        let chain = self.chain.clone();
        if blocking(move || chain.utxo(&id)).await?.is_some() {
            return Ok(());
        }
        let chain = self.chain.clone();
        let from = match blocking(move || chain.tx_status(&id.txid)).await? {
            paychan_chain::TxStatus::Confirmed { block, .. } => block.height,
            _ => 0,
        };
        let chain = self.chain.clone();
        let Some((txid, Some(_))) = blocking(move || chain.spent_by(&id, from)).await? else {
            return Ok(());
        };
        let chain = self.chain.clone();
        if let Some(tx) = blocking(move || chain.transaction(&txid)).await? {
            s.channel.handle_funding_spent(&tx)?;
            self.drain(s).await?;
            info!(channel = %id, %txid, phase = s.channel.phase().as_str(), "the funding was spent");
        }
        Ok(())
    }

    /// A settlement out: when it confirms, the channel is settled; while it does not, it is
    /// re-broadcast, and replaced at a higher fee rate after [`BUMP_AFTER_BLOCKS`] blocks (the
    /// customer's `SINGLE|ANYONECANPAY` signature leaves the merchant's output and fee free).
    async fn follow_settlement(&self, s: &mut Slot) -> Result<(), MerchantError> {
        let Some(txid) = s.channel.state().settlement_txid else { return Ok(()) };
        let chain = self.chain.clone();
        let status = blocking(move || chain.tx_status(&txid)).await?;
        if let paychan_chain::TxStatus::Confirmed { .. } = status {
            let chain = self.chain.clone();
            if let Some(tx) = blocking(move || chain.transaction(&txid)).await? {
                s.channel.handle_funding_spent(&tx)?;
                self.drain(s).await?;
                info!(%txid, "settlement confirmed");
            }
            return Ok(());
        }
        let chain = self.chain.clone();
        let height = blocking(move || chain.tip()).await?.height;
        let (since, rate) = match s.settlement {
            Some(x) => x,
            None => {
                // After a restart: rebuild it at today's estimate (same inputs, so a replacement
                // or the very same transaction) and start counting again.
                self.settle_locked(s).await?;
                return Ok(());
            }
        };
        if height >= since + BUMP_AFTER_BLOCKS {
            let chain = self.chain.clone();
            let target = self.config.settle_target_blocks;
            let estimate = blocking(move || chain.estimate_fee(target)).await?;
            // BIP 125: a higher fee rate and more absolute fee than the one replaced.
            let bumped = FeeRate::from_sat_per_kwu(
                (rate.to_sat_per_kwu() * 3 / 2).max(rate.to_sat_per_kwu() + 500),
            )
            .max(estimate);
            info!(%txid, from = %rate, to = %bumped, "settlement unconfirmed: replacing it at a higher fee");
            if let Err(e) = self.settle_above(s, bumped, Some(rate)).await {
                // Keep the one out there; count the blocks again before the next try.
                s.settlement = Some((height, rate));
                return Err(e);
            }
        } else if status == paychan_chain::TxStatus::Unknown {
            // Dropped from the mempool: the same transaction again.
            self.settle_at(s, rate).await?;
            s.settlement = Some((since, rate));
        }
        Ok(())
    }

    async fn refresh_confirmations(&self, s: &mut Slot, id: OutPoint) -> Result<(), MerchantError> {
        let chain = self.chain.clone();
        let status = blocking(move || chain.tx_status(&id.txid)).await?;
        let confirmations = match status {
            paychan_chain::TxStatus::Confirmed { confirmations, .. } => confirmations,
            _ => 0,
        };
        s.depth = confirmations;
        s.channel.handle_funding_confirmations(confirmations);
        self.drain(s).await?;
        Ok(())
    }

    async fn drain_events(&self, s: &mut Slot) -> Result<bool, MerchantError> {
        let mut due = false;
        let out = self
            .drain_with(s, &mut |e| {
                if matches!(e, Event::SettleDue { .. }) {
                    due = true;
                }
            })
            .await?;
        drop(out);
        Ok(due)
    }

    async fn drain(&self, s: &mut Slot) -> Result<Vec<Message>, MerchantError> {
        self.drain_with(s, &mut |_| {}).await
    }

    /// Runs the channel's effects through the one persisted-channel driver
    /// ([`Persisted::drain`]: persists coalesced, written before anything held behind them),
    /// then broadcasts what it released. Returns the messages for the peer.
    async fn drain_with(
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
        let drained = s.p.drain(&self.storage(&restore), &mut events).await?;
        for t in &drained.write_times {
            self.metrics.store_commit.observe(*t);
        }
        for tx in drained.broadcasts {
            s.broadcast_failed |= !self.broadcast(tx).await;
        }
        Ok(drained.sends)
    }

    /// Hands `tx` to the node; false (logged) when it did not take it.
    async fn broadcast(&self, tx: Transaction) -> bool {
        let chain = self.chain.clone();
        let txid = tx.compute_txid();
        match blocking(move || chain.broadcast(&tx)).await {
            Ok(_) => true,
            Err(e) => {
                warn!(%txid, error = %e, "broadcast failed; will retry");
                false
            }
        }
    }

    /// How a stored merchant state becomes a machine again.
    fn restorer(&self) -> impl Fn(&[u8]) -> Result<MerchantChannel, Error> + Send + Sync + '_ {
        move |bytes: &[u8]| {
            Ok(MerchantChannel::restore(MerchantState::decode(bytes)?, self.config.policy.clone()))
        }
    }

    fn storage<'a>(
        &'a self,
        restore: &'a (dyn Fn(&[u8]) -> Result<MerchantChannel, Error> + Send + Sync),
    ) -> Storage<'a, MerchantChannel> {
        Storage { store: &*self.store, role: Role::Merchant, restore }
    }

    /// Replaces a stale slot's machine with the channel as stored. A no-op for a fresh slot.
    ///
    /// # Errors
    /// The store's; the slot then stays stale.
    async fn reload(&self, s: &mut Slot) -> Result<(), MerchantError> {
        let restore = self.restorer();
        s.p.reload(&self.storage(&restore)).await?;
        Ok(())
    }
}
