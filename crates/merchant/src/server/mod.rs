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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use paychan_chain::{ChainSource, ChainView, Lookback};
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};
use paychan_core::channel::merchant::{params_from_open, MerchantChannel, MerchantState};
use paychan_core::channel::settlement::Scheduler;
use paychan_core::channel::{Event, Phase, SettleReason};
use paychan_core::lease::{Lease, LeaseTiming};
use paychan_core::msg::{self, Message, Opened, PaymentAck, Resumed, Welcome};
use paychan_core::policy::Policy;
use paychan_core::{Error, Now};
use paychan_store::{ChannelStore, Persisted, Role};
use tracing::{debug, info, warn};

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
    /// How many channels are kept in memory when idle (ADR 0028): above it, the open channels
    /// least recently used that hold nothing the store lacks are dropped, and loaded again
    /// from the store on their next use. Channels with work in flight are always kept.
    pub max_live_channels: usize,
    /// How long the settlement lease lasts after each renewal (ADR 0030): with several
    /// instances on one database, a dead leader's settlements wait at most this long plus a
    /// third of it before another instance takes them over.
    pub lease_ttl: std::time::Duration,
    /// This instance's name in the lease (and the admin API); `None`: the host name and an id
    /// kept in the wallet's directory (`instance-id`, made at the first start).
    pub instance: Option<String>,
}

/// The default of [`ServerConfig::lease_ttl`].
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// The store's name of the settlement lease.
const SETTLEMENT_LEASE: &str = "settlement";

/// The default of [`ServerConfig::max_live_channels`]: about 26 MiB of channels.
pub const DEFAULT_MAX_LIVE_CHANNELS: usize = 16_384;

impl ServerConfig {
    /// Settings with `policy` and `payout`: fee estimates for 6 blocks, and regtest's fee cap
    /// (1,000 sat/vB; `serve` takes its network's).
    pub fn new(policy: Policy, payout: ScriptBuf) -> Self {
        ServerConfig {
            policy,
            payout,
            settle_target_blocks: 6,
            max_fee_rate: paychan_core::network::NetworkParams::regtest().max_fee_rate,
            max_live_channels: DEFAULT_MAX_LIVE_CHANNELS,
            lease_ttl: DEFAULT_LEASE_TTL,
            instance: None,
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
    /// When it was last asked for (the registry's use counter): the least recently used
    /// idle channels leave memory first.
    last_used: AtomicU64,
}

impl Live {
    fn new(slot: Slot) -> Arc<Self> {
        Arc::new(Live {
            gate: Arc::new(tokio::sync::RwLock::new(())),
            slot: Arc::new(tokio::sync::Mutex::new(slot)),
            last_used: AtomicU64::new(0),
        })
    }

    /// Whether nobody holds or waits for the channel and it holds nothing its row lacks (or it
    /// ended), so it may leave memory. Called with the registry locked: nobody can take a new hold then.
    fn evictable(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) != 1
            || Arc::strong_count(&self.slot) != 1
            || Arc::strong_count(&self.gate) != 1
        {
            return false;
        }
        match self.slot.try_lock() {
            Ok(s) => {
                let phase = s.channel.phase();
                s.in_flight() == 0 && (phase.is_final() || s.ext.is_idle(phase))
            }
            Err(_) => false,
        }
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
    /// The channels in memory: those in use, those with chain work, and idle ones up to
    /// [`ServerConfig::max_live_channels`]; the others are loaded from the store on use.
    channels: Mutex<HashMap<OutPoint, Arc<Live>>>,
    /// Counts uses of channels (their `last_used`).
    uses: AtomicU64,
    metrics: crate::metrics::Metrics,
    payout_source: Option<PayoutSource>,
    /// 21 tokens (payment txids) → their channel.
    tokens: Mutex<HashMap<Txid, OutPoint>>,
    /// Set once every stored channel's latest 21 token is in `tokens` (read at the first
    /// token not found there after a start).
    tokens_indexed: tokio::sync::OnceCell<()>,
    /// Where the start-up sweep of the open channels' fundings is (`None`: done).
    sweep: Mutex<Option<Sweep>>,
    /// The chain tip at the last tick.
    last_tip: Mutex<Option<paychan_core::bitcoin::BlockHash>>,
    /// The key indexes this instance reserved in the store and has not offered yet (ADR 0029).
    key_block: tokio::sync::Mutex<std::ops::Range<u32>>,
    /// This instance's name in the settlement lease.
    instance: String,
    /// The settlement lease as this instance sees it (ADR 0030), on the clock of `epoch`.
    lease: Mutex<Lease>,
    /// Who held the lease at the last answer.
    lease_holder: Mutex<Option<String>>,
    /// The origin of the lease's clock.
    epoch: std::time::Instant,
}

/// The name of an instance that was given none: the machine's host name and a random id kept
/// in the wallet's directory (`instance-id`, made at the first start), so that a restarted
/// instance takes its own lease back at once, and two homes (or two machines) never share a
/// name — unless a home is copied with its id: give such copies `--instance`.
fn default_instance_name(dir: &std::path::Path) -> Result<String, MerchantError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let path = dir.join("instance-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let mut r = [0u8; 8];
            getrandom::getrandom(&mut r).map_err(|_| MerchantError::Internal("no randomness"))?;
            let id: String = r.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&path, &id).map_err(|e| {
                MerchantError::InstanceName(format!("cannot write {}: {e}", path.display()))
            })?;
            id
        }
    };
    Ok(format!("{host}-{id}"))
}

/// How many key indexes an instance reserves in the store at a time (one durable write per
/// this many `Welcome`s; a restart leaves the rest of its block unused).
pub const KEY_BLOCK: u32 = 100;

/// The start-up sweep's place: after a start, each tick looks up [`SWEEP_BATCH`] more open
/// channels' fundings that are not in memory, in id order, until every one was looked at once
/// (ADR 0028).
#[derive(Debug, Default)]
struct Sweep {
    /// The last channel looked at.
    after: Option<OutPoint>,
    /// The fundings of the last batch, watched until the sync after it.
    watched: Vec<OutPoint>,
    /// Every open channel was read: the sweep ends once `watched` is looked up.
    read_all: bool,
}

/// How many stored open channels one tick's sweep looks up (one `gettxout` each).
pub const SWEEP_BATCH: usize = 1_000;

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
        let instance = match &config.instance {
            Some(name) => name.clone(),
            None => default_instance_name(keys.dir())?,
        };
        let lease_timing = LeaseTiming::with_ttl(
            u64::try_from(config.lease_ttl.as_millis()).unwrap_or(u64::MAX).max(3),
        );
        Ok(ChannelServer {
            config,
            keys,
            node_key,
            store,
            chain,
            view,
            clock,
            channels: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
            metrics: crate::metrics::Metrics::default(),
            payout_source: None,
            tokens: Mutex::new(HashMap::new()),
            tokens_indexed: tokio::sync::OnceCell::new(),
            sweep: Mutex::new(Some(Sweep::default())),
            last_tip: Mutex::new(None),
            key_block: tokio::sync::Mutex::new(0..0),
            instance,
            lease: Mutex::new(Lease::new(lease_timing)),
            lease_holder: Mutex::new(None),
            epoch: std::time::Instant::now(),
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

    /// Brings back what a restart needs before it serves (ADR 0028): the channels with chain
    /// work at every tick (awaiting their funding, settling, expired, disputed) are loaded,
    /// and open dispute channels are watched (their trigger may come at any time); open
    /// channels stay in the store until they are used, fall due or are spent. Returns how many
    /// live (not ended) channels the store holds.
    ///
    /// # Errors
    /// [`MerchantError::Store`]; [`MerchantError::Core`] for an undecodable row.
    pub async fn load(&self) -> Result<usize, MerchantError> {
        let busy = self
            .store
            .list(paychan_store::Query {
                role: Some(Role::Merchant),
                phases: vec![
                    Phase::AwaitingFunding,
                    Phase::Settling,
                    Phase::Expired,
                    Phase::Disputed,
                ],
                ..Default::default()
            })
            .await?;
        for row in busy {
            self.live_from_row(row)?;
        }
        let disputable = self
            .store
            .list(paychan_store::Query {
                role: Some(Role::Merchant),
                phases: vec![Phase::Open],
                expiring_before: Some(1),
                ..Default::default()
            })
            .await?;
        for row in disputable {
            // Open, so confirmed: its spend (a trigger) may be in any block since.
            self.view.watch(row.id, Lookback::To { height: 0, time: 0 });
        }
        let census = self.store.census(Role::Merchant).await?;
        let live = census.iter().filter(|c| !c.phase.is_final()).map(|c| c.channels).sum::<u64>();
        Ok(usize::try_from(live).unwrap_or(usize::MAX))
    }

    /// Channel `row`'s live channel: the one in memory if it is there, else restored from the
    /// row (its 21 token indexed, its funding watched) and kept.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`] for an ended channel; [`MerchantError::Core`] for an
    /// undecodable row.
    fn live_from_row(&self, row: paychan_store::ChannelRow) -> Result<Arc<Live>, MerchantError> {
        if let Some(live) = self.cached(&row.id) {
            return Ok(live);
        }
        if row.phase.is_final() {
            return Err(Error::UnknownChannel(row.id).into());
        }
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
        let live = Live::new(Slot::stored(channel, row.version, row.total));
        Ok(self.keep(row.id, live))
    }

    /// Keeps `live` as channel `id`'s, unless another task kept one first (then that one);
    /// then trims the idle channels if there are too many.
    fn keep(&self, id: OutPoint, live: Arc<Live>) -> Arc<Live> {
        live.last_used.store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let (kept, over) = {
            let mut slots = self.slots();
            let kept = slots.entry(id).or_insert(live).clone();
            (kept, slots.len() > self.config.max_live_channels)
        };
        if over {
            self.evict_idle();
        }
        kept
    }

    /// Drops the least recently used idle channels until an eighth of the cache is free (or
    /// no idle channel is left): each holds nothing its row lacks, and comes back from the
    /// store on its next use. A CLTV channel's funding is no longer watched (the tick loads it
    /// again when its settlement falls due); a dispute channel's stays watched (its trigger).
    fn evict_idle(&self) {
        let cap = self.config.max_live_channels;
        let target = cap - cap / 8;
        let mut slots = self.slots();
        if slots.len() <= cap {
            return;
        }
        let mut idle: Vec<(u64, OutPoint)> = slots
            .iter()
            .filter(|(_, live)| live.evictable())
            .map(|(id, live)| (live.last_used.load(Ordering::Relaxed), *id))
            .collect();
        idle.sort_unstable();
        let excess = slots.len().saturating_sub(target);
        let mut evicted = 0;
        for (_, id) in idle.into_iter().take(excess) {
            let Some(live) = slots.remove(&id) else { continue };
            if let Ok(s) = live.slot.try_lock() {
                self.drop_watches(id, &s);
            }
            evicted += 1;
        }
        tracing::debug!(evicted, kept = slots.len(), "idle channels left memory");
    }

    /// What the chain view stops watching for a channel leaving memory: an ended channel's
    /// outputs, an open CLTV channel's funding (the tick loads it again when its settlement
    /// falls due); an open dispute channel's funding stays watched (its trigger may come).
    fn drop_watches(&self, id: OutPoint, s: &Slot) {
        let state = s.channel.state();
        if s.channel.phase().is_final() {
            self.view.unwatch(&id);
            if state.trigger.is_some() {
                self.view.unwatch(&state.params.channel_input());
            }
        } else if state.params.script().expiry().is_some() {
            self.view.unwatch(&id);
        }
    }

    /// Channel `id` if it is in memory, without marking it used (the tick, listings).
    fn in_memory(&self, id: &OutPoint) -> Option<Arc<Live>> {
        self.slots().get(id).cloned()
    }

    /// Channel `id` if it is in memory (marked used).
    fn cached(&self, id: &OutPoint) -> Option<Arc<Live>> {
        let live = self.slots().get(id).cloned()?;
        live.last_used.store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(live)
    }

    /// Channel `id`, from memory or loaded from the store.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`] when the store has no live channel `id`; the store's.
    async fn live(&self, id: &OutPoint) -> Result<Arc<Live>, MerchantError> {
        if let Some(live) = self.cached(id) {
            return Ok(live);
        }
        let row = self.store.get(*id, Role::Merchant).await?.ok_or(Error::UnknownChannel(*id))?;
        self.live_from_row(row)
    }

    /// How many channels are in memory.
    pub fn channels_in_memory(&self) -> usize {
        self.slots().len()
    }

    /// How far back the chain view may read for a stored channel's funding spend: not at
    /// all while the funding awaits its confirmations (its spend can only come later); else
    /// down to the funding's block, and not before the channel's expiry less the policy's
    /// longest channel life.
    fn lookback(&self, state: &MerchantState) -> Lookback {
        let expiry = state.params.script().expiry().map_or(0, |e| e.to_consensus_u32());
        self.lookback_of(state.phase, expiry)
    }

    /// [`Self::lookback`] from a row's columns: its phase and stored expiry (0: none).
    fn lookback_of(&self, phase: Phase, expiry: u32) -> Lookback {
        if phase == Phase::AwaitingFunding {
            return Lookback::Never;
        }
        let life = self.config.policy.max_channel_life_secs;
        match (expiry, LockTime::from_consensus(expiry)) {
            // No expiry (a dispute channel): down to the funding's own block.
            (0, _) => Lookback::To { height: 0, time: 0 },
            (t, LockTime::Seconds(_)) => Lookback::To { height: 0, time: t.saturating_sub(life) },
            // Blocks come every ten minutes on average; allow them twice as fast.
            (h, LockTime::Blocks(_)) => {
                Lookback::To { height: h.saturating_sub(life / 300), time: 0 }
            }
        }
    }

    fn token_index(&self) -> std::sync::MutexGuard<'_, HashMap<Txid, OutPoint>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<OutPoint, Arc<Live>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a `Hello`: the version, a fresh key for a new channel, the policy. Each
    /// `Welcome` offers a key no other `Welcome` offered, from this instance or another one on
    /// the same store (ADR 0029): the indexes come from a block this instance reserved in the
    /// store, so a handshake costs one durable write per [`KEY_BLOCK`] handshakes.
    ///
    /// # Errors
    /// [`Error::UnsupportedVersion`]; [`MerchantError::KeysExhausted`]; a store failure.
    pub async fn hello(&self, hello: &msg::Hello) -> Result<Welcome, MerchantError> {
        let version = msg::negotiate(hello)?;
        let (key_index, key) = self.issue_key().await?;
        Ok(Welcome {
            version,
            merchant_pubkey: key.serialize().to_vec(),
            policy: Some((&self.config.policy).into()),
            key_index,
        })
    }

    /// This instance's name in the settlement lease.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Who held the settlement lease at the last answer of the store (`None`: not asked yet).
    pub fn settlement_leader(&self) -> Option<String> {
        self.lease_holder.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lease_clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this instance holds the settlement lease now (ADR 0030): only the holder
    /// settles, follows and bumps settlements. Asks the store first when the lease is due for
    /// renewal (every third of its ttl), so a lone instance holds it from its first question.
    pub async fn holds_settlement_lease(&self) -> bool {
        let lock = || self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let (sent, ttl) = {
            let mut lease = lock();
            let now = self.lease_clock_ms();
            if !lease.due(now) {
                return lease.is_leader(now);
            }
            lease.asking(now);
            (now, lease.timing().ttl_ms)
        };
        // Unanswered: a held lease runs out on its own.
        let answer = self.store.claim_lease(SETTLEMENT_LEASE, &self.instance, ttl).await;
        let leader = {
            let mut lease = lock();
            if let Ok(holder) = &answer {
                let granted = *holder == self.instance;
                if granted != lease.is_leader(sent) {
                    info!(instance = %self.instance, %holder, leader = granted, "settlement lease");
                }
                lease.answered(sent, granted);
            }
            lease.is_leader(self.lease_clock_ms())
        };
        match answer {
            Ok(holder) => {
                *self.lease_holder.lock().unwrap_or_else(|p| p.into_inner()) = Some(holder);
            }
            Err(e) => warn!(error = %e, "the settlement lease could not be renewed; will retry"),
        }
        self.metrics.leader.store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
        leader
    }

    /// A key index no one was offered yet, and its public key: the next of this instance's
    /// block, reserving a new block in the store when it is used up (its floor is the home's
    /// key file, the counter kept before the store kept it).
    async fn issue_key(&self) -> Result<(u32, PublicKey), MerchantError> {
        let mut block = self.key_block.lock().await;
        if block.is_empty() {
            let floor = self.keys.next_index();
            let fresh =
                self.store.reserve_key_indexes(self.keys.account(), floor, KEY_BLOCK).await?;
            debug!(start = fresh.start, end = fresh.end, "key indexes reserved");
            *block = fresh.start..fresh.end.min(NODE_KEY_INDEX);
        }
        let index = block.next().ok_or(MerchantError::KeysExhausted)?;
        let key = self.keys.secret(index)?;
        Ok((index, PublicKey::from_secret_key(paychan_core::sig::secp(), &key)))
    }

    /// Accepts a channel: checks it against the policy, stores it, broadcasts its funding (the
    /// node's acceptance proves the deposit is real), and answers `Opened`.
    ///
    /// # Errors
    /// The policy or decoding error; [`MerchantError::Chain`] when the node refuses the funding.
    pub async fn open(&self, open: &msg::Open) -> Result<Opened, MerchantError> {
        // Only keys offered in a Welcome (by any instance on this store): never one above
        // what the instances reserved, nor the node's or the 21 key's.
        let reserved = self.store.key_indexes_reserved(self.keys.account()).await?;
        let next = reserved.min(NODE_KEY_INDEX);
        if open.key_index >= next {
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
        if self.cached(&id).is_some() || self.store.get(id, Role::Merchant).await?.is_some() {
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
        self.keep(id, slot);
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
        let live = match self.live(&channel).await {
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
        let live = self.live(&channel).await?;
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
        let Ok(live) = self.live(&channel).await else { return };
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

    /// The stored total of `channel` and the customer's signature of it, read from the store:
    /// not from this instance's memory, which another instance on the same store may have left
    /// behind (the customer would then send again a payment the merchant holds, and have it
    /// refused as not above the accepted total). One read per reconnection.
    async fn stored_payment(&self, channel: OutPoint) -> Result<(Amount, Vec<u8>), MerchantError> {
        let row =
            self.store.get(channel, Role::Merchant).await?.ok_or(Error::UnknownChannel(channel))?;
        let state = MerchantState::decode(&row.state)?;
        Ok((row.total, state.signature))
    }
}
