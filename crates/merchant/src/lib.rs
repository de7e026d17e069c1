//! # paychan-merchant
//!
//! The merchant side of paychan (DESIGN §4, §7): [`ChannelServer`] drives one
//! [`MerchantChannel`](paychan_core::channel::merchant::MerchantChannel) per channel, writes
//! every state change to the [`ChannelStore`](paychan_store::ChannelStore) before releasing the
//! acknowledgement the core holds back, broadcasts and settles through a
//! [`ChainSource`](paychan_chain::ChainSource), and issues a fresh key per channel
//! ([`KeyChain`]). [`tcp::serve`] speaks the protobuf protocol on a TCP listener.

#![deny(missing_docs)]

pub mod answer;
pub mod facilitator;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod path;
pub mod paywall;
pub mod proxy;
mod server;
pub mod tcp;
pub mod two1;

pub use paychan_wallet::KeyChain;

pub use paychan_core::channel::settlement::BUMP_AFTER_BLOCKS;
pub use server::{
    ChannelListing, ChannelServer, Clock, PayAnswers, PayRun, PayoutSource, ServerConfig,
    DEFAULT_LEASE_TTL, DEFAULT_MAX_LIVE_CHANNELS, KEY_BLOCK, NODE_KEY_INDEX, TWO1_KEY_INDEX,
};

/// The wire code of the merchant's own failures (its store, its node, a bug): the request
/// may be tried again; nothing was acknowledged. Outside the codes of
/// [`paychan_core::Error::code`].
pub const MERCHANT_FAILURE: u32 = 500;

/// Errors of the merchant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MerchantError {
    /// A channel or payment was refused; the wire code and text go back to the peer.
    #[error(transparent)]
    Core(#[from] paychan_core::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] paychan_store::StoreError),
    /// The chain source failed.
    #[error("chain: {0}")]
    Chain(#[from] paychan_chain::ChainError),
    /// The wallet or key chain failed.
    #[error(transparent)]
    Wallet(#[from] paychan_wallet::WalletError),
    /// Every per-channel key index is used.
    #[error("every per-channel key index is used")]
    KeysExhausted,
    /// A blocking task (a call to the chain) panicked or was cancelled.
    #[error("a blocking task failed")]
    TaskFailed,
    /// The node did not take a transaction of this channel (logged; retried with backoff).
    #[error("the node did not take the transaction")]
    BroadcastFailed,
    /// The driver broke one of its own invariants: a bug.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The instance's name could not be read or kept (its `instance-id` file).
    #[error("instance name: {0}")]
    InstanceName(String),
    /// One failure, answered to each payment of a run that it failed.
    #[error(transparent)]
    Shared(std::sync::Arc<MerchantError>),
    /// The stored prices cannot be read or written.
    #[error("prices: {0}")]
    Prices(String),
    /// An upstream of the reverse proxy is not one.
    #[error("{0}")]
    Upstream(String),
}

impl MerchantError {
    /// The error as the protocol's `ErrorMsg` (internal failures say only that the merchant
    /// failed, never their details).
    pub fn to_wire(
        &self,
        channel: Option<paychan_core::bitcoin::OutPoint>,
    ) -> paychan_core::msg::ErrorMsg {
        let a = self.answer(answer::Op::Pay);
        if !a.refused {
            // The peer hears only that the merchant failed; the log says why.
            tracing::warn!(error = %self, channel = ?channel, "a request failed on the merchant's side");
        }
        paychan_core::msg::ErrorMsg {
            code: a.code,
            message: a.message,
            channel: channel.map(Into::into),
        }
    }
}
