//! # paychan-customer
//!
//! The paying side (DESIGN §2, §4): opens channels with merchants over the TCP protocol, pays
//! (one at a time or pipelined), resumes after a dropped connection or a crash, closes, and
//! refunds after the expiry. It keeps the customer's rules: a channel is stored before its
//! funding is sent, a payment is stored as spent before it is sent, and nothing is signed
//! above the caller's authorisation.

#![deny(missing_docs)]

mod conn;
pub mod paying;
pub mod proxy;

use std::collections::HashMap;
use std::sync::Arc;

use paychan_chain::ChainSource;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Txid};
use paychan_core::channel::customer::{CustomerChannel, CustomerState, CustomerTerms};
use paychan_core::channel::{Event, Phase};
use paychan_core::msg::{self, Message};
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::Now;
use paychan_store::{ChannelStore, Persisted, Role, Storage};
use paychan_wallet::{KeyChain, Wallet};
use tracing::{info, warn};

pub use conn::Connection;
pub use paying::{Caps, PaidResponse, PayingClient, Progress};

/// Errors of the customer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustomerError {
    /// The core refused (a cap, the cutoff, a transition).
    #[error(transparent)]
    Core(#[from] paychan_core::Error),
    /// The merchant refused, with its code and reason.
    #[error("the merchant refused: {message} (code {code})")]
    Rejected {
        /// The wire code.
        code: u32,
        /// The merchant's text.
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] paychan_store::StoreError),
    /// The chain source failed.
    #[error("chain: {0}")]
    Chain(#[from] paychan_chain::ChainError),
    /// The wallet failed.
    #[error(transparent)]
    Wallet(#[from] paychan_wallet::WalletError),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(String),
    /// The merchant broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// No such channel.
    #[error("unknown channel {0}")]
    UnknownChannel(OutPoint),
    /// A 402 asked more than the client's per-request cap; nothing was paid.
    #[error("the price {price} is above the limit of {max} per request; nothing was paid")]
    PriceTooHigh {
        /// The price asked.
        price: Amount,
        /// The cap.
        max: Amount,
    },
    /// Paying would take this merchant's total above the client's cap; nothing was paid.
    #[error(
        "paying would exceed the limit of {cap} per merchant ({spent} spent); nothing was paid"
    )]
    SpendingCap {
        /// Signed to this merchant so far.
        spent: Amount,
        /// The cap.
        cap: Amount,
    },
    /// An HTTP request failed.
    #[error("http: {0}")]
    Http(String),
    /// The channel life asked is outside what the merchant accepts; nothing was funded.
    #[error("a channel life of {life} s is outside the merchant's range of {min} to {max} s; nothing was funded")]
    LifeOutOfRange {
        /// The life asked, in seconds.
        life: u32,
        /// The merchant's shortest.
        min: u32,
        /// The merchant's longest.
        max: u32,
    },
}

/// Where "now" comes from.
pub type Clock = Arc<dyn Fn() -> Now + Send + Sync>;

/// A channel as the customer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    /// The channel.
    pub id: OutPoint,
    /// The merchant's address.
    pub peer: String,
    /// The phase.
    pub phase: Phase,
    /// The deposit.
    pub capacity: Amount,
    /// Signed (spent) so far.
    pub signed: Amount,
    /// Acknowledged by the merchant.
    pub acked: Amount,
    /// The expiry.
    pub expiry: u32,
    /// The settlement or refund, once known.
    pub closing_txid: Option<Txid>,
}

struct Entry {
    /// The machine and its row.
    p: Persisted<CustomerChannel>,
    conn: Option<Connection>,
    /// The acknowledged total as last written to the store.
    stored_acked: Amount,
}

impl Entry {
    fn new(p: Persisted<CustomerChannel>) -> Self {
        let stored_acked = p.channel.state().acked;
        Entry { p, conn: None, stored_acked }
    }

    /// After the driver replaced the machine with the stored one: what was derived from the
    /// old one goes too (reconnect and resume before the next payment).
    fn after_reload(&mut self) {
        if self.p.take_reloaded() {
            self.stored_acked = self.p.channel.state().acked;
            self.conn = None;
        }
    }
}

/// `e.channel` is the machine.
impl std::ops::Deref for Entry {
    type Target = Persisted<CustomerChannel>;

    fn deref(&self) -> &Self::Target {
        &self.p
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.p
    }
}

/// The customer's channel manager.
pub struct Customer {
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    wallet: Arc<std::sync::Mutex<Wallet>>,
    keys: KeyChain,
    clock: Clock,
    fee_target_blocks: u32,
    channels: std::sync::Mutex<HashMap<OutPoint, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer").finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static, E: Into<CustomerError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CustomerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| CustomerError::Io("a blocking task failed".into()))?
        .map_err(Into::into)
}

impl Customer {
    /// A customer paying from `wallet`, storing channels in `store`.
    ///
    /// # Errors
    /// [`CustomerError::Wallet`] when the key chain cannot be opened.
    pub fn new(
        store: Arc<dyn ChannelStore>,
        chain: Arc<dyn ChainSource>,
        wallet: Arc<std::sync::Mutex<Wallet>>,
        clock: Clock,
    ) -> Result<Self, CustomerError> {
        let keys =
            wallet.lock().unwrap_or_else(|p| p.into_inner()).key_chain(KeyChain::CUSTOMER)?;
        Ok(Customer {
            store,
            chain,
            wallet,
            keys,
            clock,
            fee_target_blocks: 6,
            channels: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<OutPoint, Arc<tokio::sync::Mutex<Entry>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &OutPoint) -> Result<Arc<tokio::sync::Mutex<Entry>>, CustomerError> {
        self.map().get(id).cloned().ok_or(CustomerError::UnknownChannel(*id))
    }

    /// The channel, locked, and reloaded from the store first if a write failed.
    async fn locked(
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
    async fn reload(&self, e: &mut Entry) -> Result<(), CustomerError> {
        let restore = self.restorer();
        let r = e.p.reload(&self.storage(&restore)).await;
        e.after_reload();
        Ok(r?)
    }

    /// How a stored customer state becomes a machine again (its key derived anew).
    fn restorer(
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

    fn storage<'a>(
        &'a self,
        restore: &'a (dyn Fn(&[u8]) -> Result<CustomerChannel, paychan_core::Error> + Send + Sync),
    ) -> Storage<'a, CustomerChannel> {
        Storage { store: &*self.store, role: Role::Customer, restore }
    }

    /// Loads every stored channel (after a restart). Returns how many are live.
    ///
    /// # Errors
    /// Store or decoding errors.
    pub async fn load(&self) -> Result<usize, CustomerError> {
        let rows = self
            .store
            .list(paychan_store::Query { role: Some(Role::Customer), ..Default::default() })
            .await?;
        let mut live = 0;
        for row in rows {
            let state = CustomerState::decode(&row.state)?;
            let key = self.keys.secret(state.terms.customer_key_index)?;
            let channel = CustomerChannel::restore(state, key)?;
            live += usize::from(!channel.phase().is_final());
            let e = Entry::new(Persisted::stored(channel, row.version, row.total));
            self.map().insert(row.id, Arc::new(tokio::sync::Mutex::new(e)));
        }
        Ok(live)
    }

    /// Opens a channel of `deposit` with the merchant at `peer` (`host:port`), living
    /// `life_secs` (the merchant's default when `None`). The funding is built by the wallet,
    /// stored, sent to the merchant, and broadcast once the merchant accepts.
    ///
    /// # Errors
    /// The merchant's refusal; wallet, store or connection errors.
    pub async fn open(
        &self,
        peer: &str,
        deposit: Amount,
        life_secs: Option<u32>,
    ) -> Result<OutPoint, CustomerError> {
        let (mut conn, welcome) = Connection::connect(peer).await?;
        let merchant = PublicKey::from_slice(&welcome.merchant_pubkey)
            .map_err(|_| CustomerError::Protocol("the merchant's key is not a valid public key"))?;
        let policy = welcome
            .policy
            .ok_or(CustomerError::Protocol("the merchant sent no policy"))?
            .to_policy()?;
        let now = (self.clock)();
        let life = life_secs.unwrap_or(policy.default_expiry_secs);
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
        let terms = CustomerTerms {
            script: ChannelScript::new(merchant, customer_pub, expiry)?,
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
        let fee_rate: FeeRate = blocking(move || chain.estimate_fee(target)).await?;
        let wallet = self.wallet.clone();
        let (funding, _fee) = blocking(move || {
            wallet.lock().unwrap_or_else(|p| p.into_inner()).build_payment(spk, deposit, fee_rate)
        })
        .await?;
        let funding_txid = funding.compute_txid();
        let id = channel.handle_funding_built(funding)?;
        let mut entry = Entry::new(Persisted::new(channel));
        let msgs = self.drain(&mut entry).await?;
        let answer = match conn.send(&msgs).await {
            Ok(()) => conn.recv().await,
            Err(e) => Err(e),
        };
        let refusal = match answer {
            Ok(Message::Opened(_)) => None,
            Ok(Message::Error(e)) => {
                Some(CustomerError::Rejected { code: e.code, message: e.message })
            }
            Ok(_) => Some(CustomerError::Protocol("expected Opened")),
            Err(e) => Some(e),
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
        entry.channel.handle_opened()?;
        self.drain(&mut entry).await?;
        entry.conn = Some(conn);
        self.map().insert(id, Arc::new(tokio::sync::Mutex::new(entry)));
        info!(channel = %id, %deposit, "channel opened");
        Ok(id)
    }

    /// Limits what a channel may ever sign (a spending cap).
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`].
    pub async fn authorise(&self, id: OutPoint, max_total: Amount) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        e.channel.authorise(max_total);
        Ok(())
    }

    /// Pays `amount` on channel `id`; returns the acknowledged total (the receipt).
    ///
    /// # Errors
    /// As [`Customer::pay_many`].
    pub async fn pay(&self, id: OutPoint, amount: Amount) -> Result<Amount, CustomerError> {
        self.pay_many(id, &[amount]).await
    }

    /// Pays each of `amounts` in turn, pipelined: every payment is signed and stored, all are
    /// sent in one write, and the acknowledgements are awaited in order. Returns the final
    /// acknowledged total.
    ///
    /// # Errors
    /// The core's refusal (cap, cutoff) before anything is sent; the merchant's refusal; store
    /// or connection errors (the signed payments then count as spent until a resume settles it).
    pub async fn pay_many(
        &self,
        id: OutPoint,
        amounts: &[Amount],
    ) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        let now = (self.clock)();
        let mut last = e.channel.state().signed;
        for a in amounts {
            match e.channel.pay(&now, *a) {
                Ok(total) => last = total,
                Err(err) => return Err(self.unsign(&mut e, err).await),
            }
        }
        let msgs = self.drain(&mut e).await?;
        let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
        let answered = match conn.send(&msgs).await {
            Ok(()) => self.await_acks(&mut e, last).await,
            Err(err) => Err(err),
        };
        match answered {
            // The connection broke (a merchant closes connections idle for long, or it
            // restarted): once more on a fresh one, whose resume delivers what was signed.
            Err(CustomerError::Io(why)) => {
                info!(channel = %id, %why, "connection lost while paying; reconnecting");
                e.conn = None;
                self.ensure_connected(&mut e).await?;
                Ok(e.channel.state().acked)
            }
            other => other,
        }
    }

    /// Pays `count` payments of `amount` on channel `id` with up to `window` unacknowledged
    /// at any time (a sliding window): while the merchant checks one half-window, the next is
    /// signed, stored and sent, so both sides work at once. Returns the final acknowledged
    /// total.
    ///
    /// # Errors
    /// As [`Customer::pay_many`].
    pub async fn pay_window(
        &self,
        id: OutPoint,
        amount: Amount,
        count: u64,
        window: u32,
    ) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        let window = u64::from(window.max(1));
        let chunk = (window / 2).max(1);
        // Totals sent and not yet acknowledged, oldest first.
        let mut in_flight: std::collections::VecDeque<Amount> = std::collections::VecDeque::new();
        let mut left = count;
        loop {
            // Refill a whole chunk at a time: each chunk costs one durable write.
            while left > 0 && in_flight.len() as u64 + chunk.min(left) <= window {
                let n = chunk.min(left);
                let now = (self.clock)();
                for _ in 0..n {
                    match e.channel.pay(&now, amount) {
                        Ok(total) => in_flight.push_back(total),
                        Err(err) => return Err(self.unsign(&mut e, err).await),
                    }
                }
                left -= n;
                // One durable write for the chunk, then one send.
                let msgs = self.drain(&mut e).await?;
                let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
                conn.send(&msgs).await?;
            }
            if in_flight.is_empty() {
                return Ok(e.channel.state().acked);
            }
            let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
            let m = match conn.recv().await {
                Ok(m) => m,
                Err(err) => {
                    e.conn = None;
                    return Err(err);
                }
            };
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Error(err) => return Err(self.refused(&mut e, err).await),
                _ => return Err(CustomerError::Protocol("unexpected message while paying")),
            }
            let acked = e.channel.state().acked;
            while in_flight.front().is_some_and(|t| *t <= acked) {
                in_flight.pop_front();
            }
            self.drain(&mut e).await?;
        }
    }

    /// Signs a payment of `amount` more and stores it as spent, without sending it: a payment
    /// to hand over by other means (a file). The merchant redeems it with `paychan payment
    /// submit`; a later resume re-sends the same signature if the merchant lacks it.
    ///
    /// # Errors
    /// The core's refusal (cap, cutoff); store errors.
    pub async fn sign_payment(
        &self,
        id: OutPoint,
        amount: Amount,
    ) -> Result<msg::Pay, CustomerError> {
        let mut e = self.locked(&id).await?;
        let now = (self.clock)();
        e.channel.pay(&now, amount)?;
        let msgs = self.drain(&mut e).await?;
        msgs.into_iter()
            .find_map(|m| if let Message::Pay(p) = m { Some(p) } else { None })
            .ok_or(CustomerError::Protocol("no payment was signed"))
    }

    async fn await_acks(&self, e: &mut Entry, target: Amount) -> Result<Amount, CustomerError> {
        loop {
            if e.channel.state().acked >= target {
                return Ok(e.channel.state().acked);
            }
            let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
            let m = match conn.recv().await {
                Ok(m) => m,
                Err(err) => {
                    e.conn = None;
                    return Err(err);
                }
            };
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Resumed(r) => e.channel.handle_resumed(Amount::from_sat(r.total_sat))?,
                Message::Error(err) => return Err(self.refused(e, err).await),
                _ => return Err(CustomerError::Protocol("unexpected message while paying")),
            }
            let msgs = self.drain(e).await?;
            if !msgs.is_empty() {
                let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
                conn.send(&msgs).await?;
            }
        }
    }

    /// The core refused a payment part-way through a run: the run's earlier payments are
    /// signed in the machine but neither stored nor sent. Forget them (the machine again as
    /// stored), so the caller's "failed" is true and none of them leaves later with another
    /// payment. Returns the refusal.
    async fn unsign(&self, e: &mut Entry, err: paychan_core::Error) -> CustomerError {
        e.p.mark_stale();
        if let Err(other) = self.reload(e).await {
            warn!(error = %other, "reloading the channel failed; will reload before its next use");
        }
        err.into()
    }

    /// The merchant refused a payment by a payment rule (codes 100–199): learn what it holds
    /// after answering everything sent before (a `Resume` on the same connection is answered
    /// after them), and stop counting the refused totals as spent
    /// ([`CustomerChannel::handle_refused`]). Returns the refusal. If that fails, the refused
    /// payment stays counted as spent (the safe side) until the next sync.
    async fn refused(&self, e: &mut Entry, err: msg::ErrorMsg) -> CustomerError {
        let rule_broken = (100..200).contains(&err.code);
        let refusal = CustomerError::Rejected { code: err.code, message: err.message };
        if !rule_broken {
            // The merchant's own failure (its store, say): it may yet hold the payment, so it
            // stays spent and the next resume delivers it again.
            return refusal;
        }
        match self.roll_back_refused(e).await {
            Ok(total) => {
                info!(%total, error = %refusal, "payment refused; the merchant holds {total}: counting from there");
            }
            Err(other) => {
                warn!(error = %other, "cannot learn what the merchant holds after a refusal; the refused payment counts as spent until the next sync");
                e.conn = None;
            }
        }
        refusal
    }

    async fn roll_back_refused(&self, e: &mut Entry) -> Result<Amount, CustomerError> {
        e.channel.resume()?;
        let msgs = self.drain(e).await?;
        e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?.send(&msgs).await?;
        loop {
            let m = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                // The answers to other payments that were in flight.
                Message::Error(_) => {}
                Message::Resumed(r) => {
                    let total = Amount::from_sat(r.total_sat);
                    e.channel.handle_refused(total)?;
                    self.drain(e).await?;
                    return Ok(total);
                }
                _ => return Err(CustomerError::Protocol("unexpected message while resuming")),
            }
        }
    }

    /// Writes the acknowledged total if it moved since the last write (acknowledgements alone
    /// are not written on the payment path, to keep it at one write per run of payments).
    async fn store_acks(&self, e: &mut Entry) -> Result<(), CustomerError> {
        if e.channel.state().acked > e.stored_acked {
            e.channel.checkpoint();
            self.drain(e).await?;
        }
        Ok(())
    }

    /// Writes channel `id`'s acknowledged total to the store now (see
    /// [`ChannelStatus::acked`]); a command that paid calls it before it exits.
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`]; store errors.
    pub async fn checkpoint(&self, id: OutPoint) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        self.store_acks(&mut e).await
    }

    /// (Re)connects and resumes: the merchant tells its latest total; a payment it lacks is
    /// sent again with the same signature.
    async fn ensure_connected(&self, e: &mut Entry) -> Result<(), CustomerError> {
        if e.conn.is_some() {
            return Ok(());
        }
        let (conn, _) = Connection::connect(&e.channel.state().terms.peer).await?;
        e.conn = Some(conn);
        e.channel.resume()?;
        let msgs = self.drain(e).await?;
        let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
        conn.send(&msgs).await?;
        match conn.recv().await? {
            Message::Resumed(r) => e.channel.handle_resumed(Amount::from_sat(r.total_sat))?,
            Message::Error(err) => {
                return Err(CustomerError::Rejected { code: err.code, message: err.message })
            }
            _ => return Err(CustomerError::Protocol("expected Resumed")),
        }
        let signed = e.channel.state().signed;
        let msgs = self.drain(e).await?;
        if !msgs.is_empty() {
            let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
            conn.send(&msgs).await?;
            self.await_acks(e, signed).await?;
        }
        Ok(())
    }

    /// The merchant acknowledged `total` by other means than the channel protocol (an HTTP
    /// receipt).
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`]; [`paychan_core::Error::UnexpectedMessage`] for a
    /// total never signed.
    pub async fn acknowledge(&self, id: OutPoint, total: Amount) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        e.channel.handle_ack(total)?;
        self.drain(&mut e).await?;
        Ok(())
    }

    /// Resumes channel `id` now (after a crash or a dropped connection); returns the
    /// acknowledged total, which then matches the merchant's.
    ///
    /// # Errors
    /// Connection or protocol errors.
    pub async fn sync(&self, id: OutPoint) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        e.conn = None;
        self.ensure_connected(&mut e).await?;
        self.store_acks(&mut e).await?;
        Ok(e.channel.state().acked)
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
        let conn = e.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))?;
        conn.send(&msgs).await?;
        match conn.recv().await? {
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

    /// Every channel's status.
    pub async fn list(&self) -> Vec<ChannelStatus> {
        let entries: Vec<_> = self.map().values().cloned().collect();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.lock().await;
            if let Some(s) = status_of(&e.channel) {
                out.push(s);
            }
        }
        out.sort_by_key(|s| (s.expiry, s.id));
        out
    }

    /// One channel's status.
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`].
    pub async fn status(&self, id: OutPoint) -> Result<ChannelStatus, CustomerError> {
        let e = self.entry(&id)?;
        let e = e.lock().await;
        status_of(&e.channel).ok_or(CustomerError::UnknownChannel(id))
    }

    /// Periodic check: notices funding spends (settled or refunded) and broadcasts the refund
    /// of every channel whose expiry has passed unsettled. Returns the refunds broadcast.
    ///
    /// # Errors
    /// Chain, wallet or store errors.
    pub async fn tick(&self) -> Result<Vec<Txid>, CustomerError> {
        let entries: Vec<_> = self.map().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut refunds = Vec::new();
        for (id, e) in entries {
            let mut e = e.lock_owned().await;
            self.reload(&mut e).await?;
            if e.channel.phase().is_final() {
                continue;
            }
            let chain = self.chain.clone();
            let from = 0;
            let spent = blocking(move || chain.spent_by(&id, from)).await?;
            if let Some((txid, Some(_))) = spent {
                let chain = self.chain.clone();
                if let Some(tx) = blocking(move || chain.transaction(&txid)).await? {
                    e.channel.handle_funding_spent(&tx)?;
                    self.drain(&mut e).await?;
                    continue;
                }
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
        Ok(refunds)
    }

    async fn drain_events(&self, e: &mut Entry) -> Result<bool, CustomerError> {
        let mut due = false;
        self.drain_with(e, &mut |ev| due |= matches!(ev, Event::RefundDue { .. })).await?;
        Ok(due)
    }

    async fn drain(&self, e: &mut Entry) -> Result<Vec<Message>, CustomerError> {
        self.drain_with(e, &mut |_| {}).await
    }

    /// Runs the channel's effects through the one persisted-channel driver
    /// ([`Persisted::drain`]: persists coalesced, written before anything held behind them),
    /// then broadcasts what it released. Returns the messages for the merchant.
    async fn drain_with(
        &self,
        e: &mut Entry,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Vec<Message>, CustomerError> {
        let restore = self.restorer();
        let drained = e.p.drain(&self.storage(&restore), on_event).await;
        e.after_reload();
        let drained = drained?;
        if let Some(written) = &drained.written {
            e.stored_acked = written.acked;
        }
        for tx in drained.broadcasts {
            let chain = self.chain.clone();
            let txid = tx.compute_txid();
            if let Err(err) = blocking(move || chain.broadcast(&tx)).await {
                warn!(%txid, error = %err, "broadcast failed; the next tick retries");
            }
        }
        Ok(drained.sends)
    }
}

fn status_of(c: &CustomerChannel) -> Option<ChannelStatus> {
    let s = c.state();
    let params = s.params.as_ref()?;
    Some(ChannelStatus {
        id: params.id(),
        peer: s.terms.peer.clone(),
        phase: s.phase,
        capacity: params.capacity(),
        signed: s.signed,
        acked: s.acked,
        expiry: params.script().expiry().to_consensus_u32(),
        closing_txid: s.closing_txid,
    })
}
