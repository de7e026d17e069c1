//! # paychan-customer
//!
//! The paying side (DESIGN §2, §4): opens channels with merchants over the TCP protocol, pays
//! (one at a time or pipelined), resumes after a dropped connection or a crash, closes, and
//! refunds after the expiry. It keeps the customer's rules: a channel is stored before its
//! funding is sent, a payment is stored as spent before it is sent, and nothing is signed
//! above the caller's authorisation.

#![deny(missing_docs)]

pub mod backup;
mod conn;
mod driver;
mod lifecycle;
mod pay;
pub mod paying;
pub mod proxy;
pub mod spent;

use std::collections::HashMap;
use std::sync::Arc;

use paychan_chain::{ChainSource, ChainView, Lookback};
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::customer::{CustomerChannel, CustomerState};
use paychan_core::channel::Phase;
use paychan_core::Now;
use paychan_store::{ChannelStore, Persisted, Role};
use paychan_wallet::{KeyChain, Wallet};

pub use conn::Connection;
pub use lifecycle::ChannelKind;
pub use paying::{Caps, PaidResponse, PayingClient, Progress};

/// Errors of the customer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustomerError {
    /// The core refused (a cap, the cutoff, a transition).
    #[error(transparent)]
    Core(#[from] paychan_core::Error),
    /// A dispute channel was asked of a merchant whose protocol has none.
    #[error("the merchant speaks protocol {version}, which has no dispute channels: open a CLTV channel (--kind cltv)")]
    NoDisputeChannels {
        /// The merchant's protocol version.
        version: u32,
    },
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
    /// A channel backup could not be written or read.
    #[error("channel backup: {0}")]
    Backup(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(String),
    /// The spending log could not be written or read.
    #[error("spending log: {0}")]
    SpendingLog(String),
    /// The merchant's address is not `<node id>@host:port`, or the peer there could not prove
    /// that node id (nothing but the handshake was sent).
    #[error("transport: {0}")]
    Transport(#[from] paychan_transport::TransportError),
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
    /// The expiry (0 for a dispute channel, which has none).
    pub expiry: u32,
    /// A dispute channel's dispute period in blocks; `None` for a CLTV channel.
    pub dispute_blocks: Option<u16>,
    /// The settlement or refund, once known.
    pub closing_txid: Option<Txid>,
}

/// What the customer keeps beside each channel: its connection to the merchant, and the
/// acknowledged total as last written to the store.
#[derive(Debug, Default)]
struct Link {
    conn: Option<Connection>,
    /// The acknowledged total as last written to the store.
    stored_acked: Amount,
}

impl Link {
    /// The open connection.
    fn conn(&mut self) -> Result<&mut Connection, CustomerError> {
        self.conn.as_mut().ok_or(CustomerError::Protocol("not connected"))
    }

    /// The next message from the merchant; a broken connection is dropped (the next use
    /// reconnects and resumes).
    async fn recv(&mut self) -> Result<paychan_core::msg::Message, CustomerError> {
        let r = self.conn()?.recv().await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// One channel: the machine with its row, and (`ext`) its link to the merchant.
type Entry = Persisted<CustomerChannel, Link>;

/// A channel as loaded or opened: its acknowledged total is the stored one.
fn entry(p: Entry) -> Entry {
    let mut e = p;
    e.ext.stored_acked = e.channel.state().acked;
    e
}

/// After the driver replaced the machine with the stored one: what was derived from the old
/// one goes too (reconnect and resume before the next payment).
fn after_reload(e: &mut Entry) {
    if e.take_reloaded() {
        e.ext.stored_acked = e.channel.state().acked;
        e.ext.conn = None;
    }
}

/// The customer's channel manager.
pub struct Customer {
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    /// What the blocks say about the channels' fundings (read once each, from a cursor).
    view: Arc<ChainView>,
    wallet: Arc<std::sync::Mutex<Wallet>>,
    keys: KeyChain,
    clock: Clock,
    fee_target_blocks: u32,
    channels: std::sync::Mutex<HashMap<OutPoint, Arc<tokio::sync::Mutex<Entry>>>>,
    /// Where each channel's backup is written at its open ([`backup`]), if anywhere.
    backups: Option<std::path::PathBuf>,
    /// The highest fee rate a funding pays.
    max_fee_rate: paychan_core::bitcoin::FeeRate,
}

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer").finish_non_exhaustive()
    }
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
        let view = Arc::new(ChainView::open(chain.clone(), None)?);
        Ok(Customer {
            store,
            chain,
            view,
            wallet,
            keys,
            clock,
            fee_target_blocks: 6,
            channels: std::sync::Mutex::new(HashMap::new()),
            backups: None,
            max_fee_rate: paychan_core::network::NetworkParams::regtest().max_fee_rate,
        })
    }

    /// Pays at most `rate` for a channel's funding, whatever the node estimates (the
    /// network's cap; regtest's by default).
    #[must_use]
    pub fn with_max_fee_rate(mut self, rate: paychan_core::bitcoin::FeeRate) -> Self {
        self.max_fee_rate = rate;
        self
    }

    /// Writes a backup of each channel into `dir` when it is opened, before its funding can
    /// reach the chain ([`backup::write`]): with the wallet's mnemonic, enough to refund it
    /// after the expiry if the channel store is lost ([`backup::refund_from_backups`]).
    #[must_use]
    pub fn with_backups(mut self, dir: &std::path::Path) -> Self {
        self.backups = Some(dir.to_path_buf());
        self
    }

    /// Follows the chain from the cursor stored at `path` (and stores it there after each
    /// tick), so that a restart reads only the blocks since. Call before [`Customer::load`].
    ///
    /// # Errors
    /// [`CustomerError::Chain`] for a cursor file that cannot be read.
    pub fn with_chain_cursor(mut self, path: std::path::PathBuf) -> Result<Self, CustomerError> {
        self.view = Arc::new(ChainView::open(self.chain.clone(), Some(path))?);
        Ok(self)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<OutPoint, Arc<tokio::sync::Mutex<Entry>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &OutPoint) -> Result<Arc<tokio::sync::Mutex<Entry>>, CustomerError> {
        self.map().get(id).cloned().ok_or(CustomerError::UnknownChannel(*id))
    }

    /// Loads every stored channel (after a restart). Returns how many are live.
    ///
    /// # Errors
    /// Store or decoding errors.
    pub async fn load(&self) -> Result<usize, CustomerError> {
        let rows = self.store.list(paychan_store::Query::role(Role::Customer)).await?;
        let mut live = 0;
        for row in rows {
            let state = CustomerState::decode(&row.state)?;
            let key = self.keys.secret(state.terms.customer_key_index)?;
            let channel = CustomerChannel::restore(state, key)?;
            if !channel.phase().is_final() {
                self.view.watch(row.id, lookback(channel.state()));
            }
            if let (Phase::Disputed, Some(p)) = (channel.phase(), &channel.state().params) {
                // The trigger is out: its confirmations and its output's spend end the channel.
                self.view.watch(p.channel_input(), lookback(channel.state()));
            }
            live += usize::from(!channel.phase().is_final());
            let e = entry(Entry::stored(channel, row.version, row.total));
            self.map().insert(row.id, Arc::new(tokio::sync::Mutex::new(e)));
        }
        Ok(live)
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
}

/// The longest a customer assumes a channel lives, to bound a look back for its funding's
/// spend (the merchant's policy is not stored with the channel): a year.
const LONGEST_LIFE_SECS: u32 = 366 * 24 * 3600;

/// How far back the chain view may read for a stored channel's funding spend: not at all
/// before the funding can be confirmed; else down to the funding's block, no lower than its
/// anti-fee-sniping locktime, and not more than [`LONGEST_LIFE_SECS`] before the expiry.
fn lookback(state: &paychan_core::channel::customer::CustomerState) -> Lookback {
    use paychan_core::bitcoin::absolute::LockTime;
    if matches!(state.phase, Phase::Opening | Phase::AwaitingFunding) {
        return Lookback::Never;
    }
    let sniping = match state.funding_tx.as_ref().map(|t| t.lock_time) {
        Some(LockTime::Blocks(h)) => h.to_consensus_u32(),
        _ => 0,
    };
    match state.terms.script.expiry() {
        Some(LockTime::Seconds(t)) => Lookback::To {
            height: sniping,
            time: t.to_consensus_u32().saturating_sub(LONGEST_LIFE_SECS),
        },
        // Blocks twice as fast as every ten minutes.
        Some(LockTime::Blocks(h)) => Lookback::To {
            height: sniping.max(h.to_consensus_u32().saturating_sub(LONGEST_LIFE_SECS / 300)),
            time: 0,
        },
        // No expiry (a dispute channel): down to the funding's own block.
        None => Lookback::To { height: sniping, time: 0 },
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
        expiry: params.script().expiry().map_or(0, |e| e.to_consensus_u32()),
        dispute_blocks: params.script().dispute_blocks(),
        closing_txid: s.closing_txid,
    })
}
