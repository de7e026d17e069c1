//! The channel server: the driver between the core's merchant state machines, the store and
//! the chain, split by duty:
//!
//! * this module: the channel registry and the protocol's operations (hello, open, pay,
//!   resume, close);
//! * [`paid`]: paid-request accounting (redeem a payment or a 21 token for a request, refund
//!   a failed request);
//! * [`settle`]: the settlement scheduler's I/O (the policy is the core's
//!   [`settlement`](paychan_core::channel::settlement) module);
//! * [`two1`]: the 21 (two1) channel operations the REST adapter calls;
//! * [`admin`]: listings and metrics;
//! * [`driver`]: effects through the one persisted-channel driver, broadcasts, reloads.

mod admin;
pub use admin::ChannelListing;
mod driver;
mod paid;
mod settle;
mod two1;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paychan_chain::{ChainSource, ChainView, Lookback};
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};
use paychan_core::channel::merchant::{params_from_open, MerchantChannel, MerchantState};
use paychan_core::channel::settlement::Scheduler;
use paychan_core::channel::{Event, Phase, SettleReason};
use paychan_core::msg::{self, Message, Opened, PaymentAck, Resumed, Welcome};
use paychan_core::policy::Policy;
use paychan_core::{Error, Now};
use paychan_store::{ChannelStore, Persisted, Role};
use tracing::info;

pub use two1::TWO1_KEY_INDEX;

use crate::{KeyChain, MerchantError};
use driver::blocking;

/// The channel a message names.
fn named(
    channel: &Option<msg::ChannelRef>,
    missing: &'static str,
) -> Result<OutPoint, MerchantError> {
    Ok(channel.as_ref().ok_or(Error::Decode(missing.into()))?.outpoint()?)
}

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
    /// The highest fee rate a settlement pays (first or replacement).
    pub max_fee_rate: FeeRate,
}

impl ServerConfig {
    /// Settings with `policy` and `payout`: fee estimates for 6 blocks, and regtest's fee cap
    /// (1,000 sat/vB; `serve` takes its network's).
    pub fn new(policy: Policy, payout: ScriptBuf) -> Self {
        ServerConfig {
            policy,
            payout,
            settle_target_blocks: 6,
            max_fee_rate: paychan_core::network::NetworkParams::regtest().max_fee_rate,
        }
    }
}

/// One live channel: the machine with its row, and (`ext`) its settlement scheduler.
type Slot = Persisted<MerchantChannel, Scheduler>;

/// A live channel: its machine behind a lock, and the gate that lets the pipelined payment
/// runs of a connection overlap (each holds it shared from its check until its write landed)
/// while every other operation takes it whole, so it never runs beside a write in flight
/// (ADR 0027).
struct Live {
    gate: Arc<tokio::sync::RwLock<()>>,
    slot: Arc<tokio::sync::Mutex<Slot>>,
}

impl Live {
    fn new(slot: Slot) -> Arc<Self> {
        Arc::new(Live {
            gate: Arc::new(tokio::sync::RwLock::new(())),
            slot: Arc::new(tokio::sync::Mutex::new(slot)),
        })
    }

    /// The channel for any operation: once no pipelined write is in flight.
    async fn lock(&self) -> Locked {
        let gate = self.gate.clone().write_owned().await;
        Locked { slot: self.slot.clone().lock_owned().await, _gate: gate }
    }

    /// The channel for a look only (listings): a pipelined run in flight may be ahead of its
    /// row.
    async fn peek(&self) -> tokio::sync::MutexGuard<'_, Slot> {
        self.slot.lock().await
    }
}

/// A channel locked with no pipelined write in flight.
struct Locked {
    slot: tokio::sync::OwnedMutexGuard<Slot>,
    _gate: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl std::ops::Deref for Locked {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.slot
    }
}

/// A run of payments on one channel checked, with its write queued in the store
/// ([`ChannelServer::pay_submit`]); [`ChannelServer::pay_finish`] answers it once the write
/// landed. While it is held, other runs of the channel may be checked and queued behind it;
/// every other operation on the channel waits for it.
#[must_use = "a submitted run must be finished, or its payments are never acknowledged"]
pub struct PayRun {
    channel: OutPoint,
    pays: Vec<msg::Pay>,
    /// The run's own part: absent when the channel is unknown.
    live: Option<Arc<Live>>,
    _gate: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    results: Vec<Result<(), MerchantError>>,
    flight: Option<paychan_store::InFlight<MerchantState>>,
    /// Messages released at the check (normally none: acknowledgements wait for the write).
    released: Vec<Message>,
    gained: Amount,
    exhausted: bool,
    /// Why the run failed as a whole before its write (nothing acknowledged).
    failed: Option<MerchantError>,
    started: std::time::Instant,
    /// Its write was handed back to the channel (or there was none).
    landed: bool,
}

impl Drop for PayRun {
    /// A run dropped before its write landed (its connection's task went away): the channel
    /// gives up on the writes in flight and is reloaded from the store before its next use,
    /// so no acknowledgement it held is handed to a later run.
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let Some(live) = self.live.take() else { return };
        let done = match live.slot.try_lock() {
            Ok(mut s) => {
                s.abandon_in_flight();
                true
            }
            Err(_) => false,
        };
        if !done {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { live.slot.lock().await.abandon_in_flight() });
            }
        }
    }
}

impl PayRun {
    /// The run's channel.
    pub fn channel(&self) -> OutPoint {
        self.channel
    }
}

impl std::fmt::Debug for PayRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayRun")
            .field("channel", &self.channel)
            .field("payments", &self.pays.len())
            .finish_non_exhaustive()
    }
}

/// The answers to a finished [`PayRun`], one per payment in order, and whether the run
/// exhausted the channel: then call [`ChannelServer::settle_if_exhausted`] (not while other
/// runs of the same channel wait to be finished by the caller: it waits for them).
#[derive(Debug)]
pub struct PayAnswers {
    /// One answer per payment.
    pub answers: Vec<Result<PaymentAck, MerchantError>>,
    /// The run left too little in the channel to keep it open.
    pub exhausted: bool,
}

/// How many times a request is checked again after its write met a compare-and-swap conflict
/// (another writer moved the channel) before the request fails.
pub const CONFLICT_RETRIES: u32 = 3;

/// The same failure for each of `n` payments: a run that failed as a whole (nothing
/// acknowledged).
fn failed_all(e: MerchantError, n: usize) -> Vec<Result<PaymentAck, MerchantError>> {
    match e {
        MerchantError::Core(e @ Error::UnknownChannel(_)) => {
            (0..n).map(|_| Err(e.clone().into())).collect()
        }
        e => {
            let shared = Arc::new(e);
            (0..n).map(|_| Err(MerchantError::Shared(shared.clone()))).collect()
        }
    }
}

/// Whether a drained event says a payment exhausted the channel (settle it now).
fn exhausted(e: &Event) -> bool {
    matches!(e, Event::SettleDue { reason: SettleReason::Exhausted, .. })
}

/// The merchant key chain's index of the node key (the BOLT 8 identity of `<node id>@host:port`),
/// below the 21 key's; no channel is offered an index from here up.
pub const NODE_KEY_INDEX: u32 = TWO1_KEY_INDEX - 1;

/// Drives every channel of one merchant.
pub struct ChannelServer {
    config: ServerConfig,
    keys: KeyChain,
    /// The node key: what a customer dialing `<node id>@host:port` makes the merchant prove.
    node_key: paychan_core::bitcoin::secp256k1::SecretKey,
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    /// What the blocks say about the channels' fundings (read once each, from a cursor).
    view: Arc<ChainView>,
    clock: Clock,
    channels: Mutex<HashMap<OutPoint, Arc<Live>>>,
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
        let view = Arc::new(ChainView::open(chain.clone(), None)?);
        let node_key = keys.secret(NODE_KEY_INDEX)?;
        Ok(ChannelServer {
            config,
            keys,
            node_key,
            store,
            chain,
            view,
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

    /// Follows the chain from the cursor stored at `path` (and stores it there after each
    /// tick), so that a restart reads only the blocks since. Call before
    /// [`ChannelServer::load`].
    ///
    /// # Errors
    /// [`MerchantError::Chain`] for a cursor file that cannot be read.
    pub fn with_chain_cursor(mut self, path: std::path::PathBuf) -> Result<Self, MerchantError> {
        self.view = Arc::new(ChainView::open(self.chain.clone(), Some(path))?);
        Ok(self)
    }

    /// The node id: the public node key, the first half of the merchant's address
    /// `<node id>@host:port`.
    pub fn node_id(&self) -> PublicKey {
        PublicKey::from_secret_key(
            &paychan_core::bitcoin::secp256k1::Secp256k1::signing_only(),
            &self.node_key,
        )
    }

    /// The node key, for the transport handshake.
    pub(crate) fn node_key(&self) -> &paychan_core::bitcoin::secp256k1::SecretKey {
        &self.node_key
    }

    /// Loads every stored live channel (after a restart).
    ///
    /// # Errors
    /// [`MerchantError::Store`]; [`MerchantError::Core`] for an undecodable row.
    pub async fn load(&self) -> Result<usize, MerchantError> {
        let rows = self.store.list(paychan_store::Query::role(Role::Merchant)).await?;
        let mut n = 0;
        for row in rows.into_iter().filter(|r| !r.phase.is_final()) {
            let state = MerchantState::decode(&row.state)?;
            if let Some(tx) = &state.two1_tx {
                self.token_index().insert(tx.compute_txid(), row.id);
            }
            self.view.watch(row.id, self.lookback(&state));
            if state.phase == Phase::Disputed {
                // The trigger is out: what ends the channel is the spend of its output.
                self.view.watch(state.params.channel_input(), self.lookback(&state));
            }
            let channel = MerchantChannel::restore(state, self.config.policy.clone());
            let slot = Slot::stored(channel, row.version, row.total);
            self.slots().insert(row.id, Live::new(slot));
            n += 1;
        }
        Ok(n)
    }

    /// How far back the chain view may read for a stored channel's funding spend: not at
    /// all while the funding awaits its confirmations (its spend can only come later); else
    /// down to the funding's block, and not before the channel's expiry less the policy's
    /// longest channel life.
    fn lookback(&self, state: &MerchantState) -> Lookback {
        if state.phase == Phase::AwaitingFunding {
            return Lookback::Never;
        }
        let life = self.config.policy.max_channel_life_secs;
        match state.params.script().expiry() {
            Some(LockTime::Seconds(t)) => {
                Lookback::To { height: 0, time: t.to_consensus_u32().saturating_sub(life) }
            }
            // Blocks come every ten minutes on average; allow them twice as fast.
            Some(LockTime::Blocks(h)) => {
                Lookback::To { height: h.to_consensus_u32().saturating_sub(life / 300), time: 0 }
            }
            // No expiry (a dispute channel): down to the funding's own block.
            None => Lookback::To { height: 0, time: 0 },
        }
    }

    fn token_index(&self) -> std::sync::MutexGuard<'_, HashMap<Txid, OutPoint>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<OutPoint, Arc<Live>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, id: &OutPoint) -> Result<Arc<Live>, MerchantError> {
        self.slots().get(id).cloned().ok_or(MerchantError::Core(Error::UnknownChannel(*id)))
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
        if key_index >= NODE_KEY_INDEX {
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
        let policy = self.config.policy.clone();
        let (channel, funding_tx) = if open.dispute_blocks > 0 {
            // A dispute channel: the trigger signed by both before the customer signs the
            // funding, which therefore came without its witnesses and cannot be broadcast
            // here; the channel waits for the customer's broadcast to confirm.
            let sig = &open.trigger_signature;
            (MerchantChannel::open_dispute(params, policy, &now, open.key_index, sig, &key)?, None)
        } else {
            (MerchantChannel::open(params, policy, &now, open.key_index)?, Some(funding_tx))
        };
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

    /// Broadcasts a new channel's funding when given (the node's acceptance proves the deposit
    /// is real), takes its key index (`key_index`: for a CLTV channel only once the deposit is
    /// real, so opens with made-up deposits cannot use up indexes; a dispute channel's funding
    /// comes without witnesses, so its deposit is proven only when it confirms), stores the
    /// channel, and registers it.
    async fn admit(
        &self,
        id: OutPoint,
        channel: MerchantChannel,
        funding_tx: Option<Transaction>,
        key_index: Option<u32>,
    ) -> Result<Vec<Message>, MerchantError> {
        let slot = Live::new(Slot::new(channel));
        let mut guard = slot.lock().await;
        if let Some(funding_tx) = funding_tx {
            let chain = self.chain.clone();
            blocking(move || chain.broadcast(&funding_tx)).await.map_err(|e| match e {
                // The customer's own transaction: say why the node refused it.
                MerchantError::Chain(paychan_chain::ChainError::Rejected { reason, .. }) => {
                    MerchantError::Core(Error::FundingRefused { reason })
                }
                other => other,
            })?;
        }
        if let Some(index) = key_index {
            self.keys.mark_used(index)?;
        }
        let out = self.drain(&mut guard).await?;
        drop(guard);
        self.view.watch(id, Lookback::Never);
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
        let run = self.pay_submit(channel, pays.to_vec()).await;
        let done = self.pay_finish(run).await;
        if done.exhausted {
            self.settle_if_exhausted(channel).await;
        }
        done.answers
    }

    /// Checks a run of payments on `channel` and queues its write in the store without
    /// waiting for it (the pipelined driver, ADR 0027): the caller may check the next run
    /// while this one is written, then answers each with [`ChannelServer::pay_finish`], in
    /// the order they were submitted.
    pub async fn pay_submit(&self, channel: OutPoint, pays: Vec<msg::Pay>) -> PayRun {
        let mut run = PayRun {
            channel,
            pays,
            live: None,
            _gate: None,
            results: Vec::new(),
            flight: None,
            released: Vec::new(),
            gained: Amount::ZERO,
            exhausted: false,
            failed: None,
            started: std::time::Instant::now(),
            landed: true,
        };
        let live = match self.slot(&channel) {
            Ok(live) => live,
            Err(e) => {
                run.failed = Some(e);
                return run;
            }
        };
        run._gate = Some(live.gate.clone().read_owned().await);
        let mut s = match self.for_payments(&live, channel).await {
            Ok(s) => s,
            Err(e) => {
                run.failed = Some(e);
                return run;
            }
        };
        (run.results, run.gained) = self.check_run(&mut s, channel, &run.pays);
        let restore = self.restorer();
        let exhausted = &mut run.exhausted;
        let submitted =
            s.submit(&self.storage(&restore), &mut |e| *exhausted |= self::exhausted(e));
        run.released = submitted.released.sends;
        run.landed = submitted.write.is_none();
        run.flight = submitted.write;
        drop(s);
        run.live = Some(live);
        run
    }

    /// Answers a run of [`ChannelServer::pay_submit`] once its write landed: the
    /// acknowledgements it held, or why not. A run whose write met a compare-and-swap conflict
    /// (another writer moved the channel), or whose channel was reloaded while it was in
    /// flight, is checked again against the channel as stored.
    pub async fn pay_finish(&self, mut run: PayRun) -> PayAnswers {
        let landed = match run.flight.take() {
            Some(flight) => Some(flight.wait().await),
            None => None,
        };
        let outcome = match (run.failed.take(), &run.live) {
            (Some(e), _) => Err(e),
            (None, None) => Err(MerchantError::Internal("a run without its channel")),
            (None, Some(live)) => {
                let mut s = live.slot.lock().await;
                let mut acks = std::mem::take(&mut run.released);
                let landed = match landed {
                    Some(landed) => {
                        run.landed = true;
                        self.land(&mut s, landed).await
                    }
                    None => Ok(Vec::new()),
                };
                if landed.is_ok() && run.exhausted && s.in_flight() == 0 {
                    // Too little left to be worth keeping open, and nothing of the channel in
                    // flight: settle now, before the acknowledgements go (with runs in flight
                    // the caller settles once they landed: settle_if_exhausted).
                    run.exhausted = false;
                    if s.channel.phase() == Phase::Open {
                        let now = (self.clock)();
                        self.settle_exhausted(&mut s, run.channel, &now).await;
                    }
                }
                landed.map(|more| {
                    acks.extend(more);
                    acks
                })
            }
        };
        let retry = matches!(
            outcome,
            Err(MerchantError::Store(
                paychan_store::StoreError::Conflict { .. }
                    | paychan_store::StoreError::Superseded(_)
                    | paychan_store::StoreError::AfterFailedWrite(_)
            ))
        );
        let (channel, pays) = (run.channel, std::mem::take(&mut run.pays));
        let acks = match outcome {
            Ok(acks) => acks,
            Err(e) if retry => {
                // Checked again, alone, against the channel as the store holds it (after the
                // runs queued before it).
                drop(run);
                info!(%channel, error = %e, "the channel moved in the store; checking the run again");
                return Box::pin(self.pay_again(channel, &pays)).await;
            }
            Err(e) => return PayAnswers { answers: failed_all(e, pays.len()), exhausted: false },
        };
        // Counted once stored (a run checked again is not counted twice).
        let answers = self.answer(std::mem::take(&mut run.results), acks, run.gained);
        let elapsed = run.started.elapsed();
        for _ in 0..pays.len() {
            self.metrics.payment_latency.observe(elapsed);
        }
        PayAnswers { answers, exhausted: run.exhausted }
    }

    /// A run checked again after its write met a conflict: checked against the channel as
    /// stored and written, up to [`CONFLICT_RETRIES`] times. It does not take the channel
    /// whole (that would wait for the caller's own later runs: a deadlock).
    async fn pay_again(&self, channel: OutPoint, pays: &[msg::Pay]) -> PayAnswers {
        self.on_fresh_state(|| self.pay_locked(channel, pays))
            .await
            .unwrap_or_else(|e| PayAnswers { answers: failed_all(e, pays.len()), exhausted: false })
    }

    /// One attempt of [`Self::pay_again`]: `Err` when the driver failed (nothing
    /// acknowledged), else one answer per payment.
    async fn pay_locked(
        &self,
        channel: OutPoint,
        pays: &[msg::Pay],
    ) -> Result<PayAnswers, MerchantError> {
        // Not the whole channel: later runs of the caller's connection may be in flight, and
        // they are finished by the same caller after this one.
        let live = self.slot(&channel)?;
        let mut s = self.for_payments(&live, channel).await?;
        let (results, gained) = self.check_run(&mut s, channel, pays);
        let mut exhausted = false;
        let acks = self.drain_with(&mut s, &mut |e| exhausted |= self::exhausted(e)).await?;
        Ok(PayAnswers { answers: self.answer(results, acks, gained), exhausted })
    }

    /// Checks each payment of a run in turn (a refused one changes nothing and does not stop
    /// the others); returns each one's outcome and what the accepted ones added.
    fn check_run(
        &self,
        s: &mut Slot,
        channel: OutPoint,
        pays: &[msg::Pay],
    ) -> (Vec<Result<(), MerchantError>>, Amount) {
        let now = (self.clock)();
        let before = s.channel.accepted();
        let results = pays
            .iter()
            .map(|p| {
                s.channel
                    .handle_payment(&now, channel, Amount::from_sat(p.total_sat), &p.signature)
                    .map_err(MerchantError::from)
            })
            .collect();
        (results, s.channel.accepted().checked_sub(before).unwrap_or(Amount::ZERO))
    }

    /// One answer per checked payment, in order: the accepted ones with their
    /// acknowledgements from `released` (all the run's writes landed), counted in the metrics.
    fn answer(
        &self,
        results: Vec<Result<(), MerchantError>>,
        released: Vec<Message>,
        gained: Amount,
    ) -> Vec<Result<PaymentAck, MerchantError>> {
        let accepted = results.iter().filter(|r| r.is_ok()).count() as u64;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.metrics.payments.fetch_add(accepted, relaxed);
        self.metrics.rejections.fetch_add(results.len() as u64 - accepted, relaxed);
        self.metrics.revenue_sat.fetch_add(gained.to_sat(), relaxed);
        let mut acks = released.into_iter().filter_map(|m| match m {
            Message::PaymentAck(a) => Some(a),
            _ => None,
        });
        results
            .into_iter()
            .map(|r| match r {
                Ok(()) => acks.next().ok_or(MerchantError::Internal("no acknowledgement")),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Channel `live` locked for payments beside pipelined runs (not taken whole): when nothing
    /// of it is in flight, reloaded if a write failed and its funding looked at again
    /// ([`Self::ready_to_pay`]); otherwise the runs in flight already did.
    async fn for_payments<'a>(
        &self,
        live: &'a Live,
        channel: OutPoint,
    ) -> Result<tokio::sync::MutexGuard<'a, Slot>, MerchantError> {
        let mut s = live.slot.lock().await;
        if s.in_flight() == 0 {
            self.ready_to_pay(&mut s, channel).await?;
        }
        Ok(s)
    }

    /// Settles `channel` if a payment exhausted it (too little left to be worth keeping open),
    /// once no pipelined write of it is in flight.
    pub async fn settle_if_exhausted(&self, channel: OutPoint) {
        let Ok(live) = self.slot(&channel) else { return };
        let mut s = live.lock().await;
        if s.channel.phase() == Phase::Open {
            let now = (self.clock)();
            self.settle_exhausted(&mut s, channel, &now).await;
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

    /// Whether zero-confirmation channels are accepted.
    pub fn zero_conf(&self) -> bool {
        self.config.policy.zero_conf
    }

    /// A reconnecting customer asks for the latest stored total.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`].
    pub async fn resume(&self, resume: &msg::Resume) -> Result<Resumed, MerchantError> {
        let channel = named(&resume.channel, "resume without a channel")?;
        let (total, signature) = self.stored_payment(channel).await?;
        Ok(Resumed { channel: Some(channel.into()), total_sat: total.to_sat(), signature })
    }

    /// The stored total of `channel` and the customer's signature of it.
    async fn stored_payment(&self, channel: OutPoint) -> Result<(Amount, Vec<u8>), MerchantError> {
        if let Ok(live) = self.slot(&channel) {
            let s = live.peek().await;
            // Unless a pipelined run is in flight, the machine is its row.
            if s.channel.accepted() == s.stored_total() {
                return Ok((s.stored_total(), s.channel.state().signature.clone()));
            }
        }
        let row =
            self.store.get(channel, Role::Merchant).await?.ok_or(Error::UnknownChannel(channel))?;
        let state = MerchantState::decode(&row.state)?;
        Ok((row.total, state.signature))
    }
}
