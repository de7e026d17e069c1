//! # paychan-harness
//!
//! One world for the integration tests, the demo and the benches: the embedded regtest node,
//! a funded customer wallet (and a merchant wallet), a merchant ([`ChannelServer`] on a
//! loopback TCP listener, its store), and a [`Customer`], in one call:
//!
//! ```no_run
//! # async fn f() -> Result<(), paychan_harness::HarnessError> {
//! let w = paychan_harness::World::builder().start().await?;
//! let id = w.customer.open(&w.peer, paychan_core::bitcoin::Amount::from_sat(100_000), None).await?;
//! # Ok(()) }
//! ```
//!
//! Every part can be replaced where a test needs its own (a chain that fails, a store that
//! faults, a clock that lags, PostgreSQL). [`fixtures`] holds fixed keys and channel
//! parameters for tests that need no node at all.
//!
//! **Never for real funds**: the fixtures' keys are public, and the world runs on regtest.

#![deny(missing_docs)]

pub mod chain;
pub mod fixtures;
pub mod paywall;
pub mod postgres;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::{Network, ScriptBuf};
use paychan_core::policy::Policy;
use paychan_customer::Customer;
use paychan_merchant::paywall::{PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::{http, tcp, ChannelServer, Clock, PayoutSource, ServerConfig};
use paychan_node::Node;
use paychan_store::{ChannelStore, SqliteStore};
use paychan_wallet::{KeyChain, Wallet};

/// Errors building a world.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The embedded node refused (mining).
    #[error("node: {0}")]
    Node(#[from] paychan_node::NodeError),
    /// A wallet failed.
    #[error("wallet: {0}")]
    Wallet(#[from] paychan_wallet::WalletError),
    /// A store failed to open.
    #[error("store: {0}")]
    Store(#[from] paychan_store::StoreError),
    /// The merchant refused its configuration.
    #[error("merchant: {0}")]
    Merchant(#[from] paychan_merchant::MerchantError),
    /// The customer failed to start.
    #[error("customer: {0}")]
    Customer(#[from] paychan_customer::CustomerError),
    /// A directory or a listener.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A test certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A TLS configuration was refused.
    #[error("{0}")]
    Transport(#[from] paychan_transport::TransportError),
    /// A paid request could not be prepared (the 402 could not be had or read).
    #[error("paywall: {0}")]
    Paywall(String),
    /// The test PostgreSQL server refused to make a fresh database.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The system's randomness failed.
    #[error("randomness: {0}")]
    Random(String),
}

/// Where the merchant's settlements pay.
#[derive(Debug, Clone)]
pub enum Payout {
    /// Always this script.
    Script(ScriptBuf),
    /// A fresh address of the merchant's wallet for each settlement.
    Wallet,
}

/// What [`World::builder`] builds; every setter is optional.
#[must_use]
pub struct Builder {
    dir: Option<PathBuf>,
    node: Option<Node>,
    policy: Policy,
    payout: Payout,
    merchant_chain: Option<Arc<dyn ChainSource>>,
    customer_chain: Option<Arc<dyn ChainSource>>,
    merchant_store: Option<Arc<dyn ChannelStore>>,
    customer_store: Option<Arc<dyn ChannelStore>>,
    customer_clock: Option<Clock>,
    customer_backups: bool,
    max_fee_rate: Option<paychan_core::bitcoin::FeeRate>,
    max_live_channels: Option<usize>,
    merchant_blocks: u32,
    customer_blocks: u32,
}

impl Builder {
    /// Keep wallets and stores in `dir` (created if missing) instead of a temporary directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Use `node` (one a test already holds, to wrap its chain) instead of a fresh one.
    pub fn node(mut self, node: Node) -> Self {
        self.node = Some(node);
        self
    }

    /// The merchant's policy (default: [`Policy::default`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Where settlements pay (default: P2WPKH of [`fixtures::key`]`(0x55)`).
    pub fn payout(mut self, payout: Payout) -> Self {
        self.payout = payout;
        self
    }

    /// How many idle channels the merchant keeps in memory (default:
    /// [`paychan_merchant::DEFAULT_MAX_LIVE_CHANNELS`]).
    pub fn max_live_channels(mut self, n: usize) -> Self {
        self.max_live_channels = Some(n);
        self
    }

    /// The merchant's view of the chain (default: the embedded node).
    pub fn merchant_chain(mut self, chain: Arc<dyn ChainSource>) -> Self {
        self.merchant_chain = Some(chain);
        self
    }

    /// The customer's view of the chain (default: the embedded node).
    pub fn customer_chain(mut self, chain: Arc<dyn ChainSource>) -> Self {
        self.customer_chain = Some(chain);
        self
    }

    /// The merchant's store (default: SQLite in the world's directory).
    pub fn merchant_store(mut self, store: Arc<dyn ChannelStore>) -> Self {
        self.merchant_store = Some(store);
        self
    }

    /// The customer's store (default: SQLite in the world's directory).
    pub fn customer_store(mut self, store: Arc<dyn ChannelStore>) -> Self {
        self.customer_store = Some(store);
        self
    }

    /// The customer's clock (default: the node's).
    pub fn customer_clock(mut self, clock: Clock) -> Self {
        self.customer_clock = Some(clock);
        self
    }

    /// The customer writes a backup of each channel it opens into `<dir>/backups`.
    pub fn customer_backups(mut self) -> Self {
        self.customer_backups = true;
        self
    }

    /// The highest fee rate the merchant's settlements pay (default: regtest's cap).
    pub fn max_fee_rate(mut self, rate: paychan_core::bitcoin::FeeRate) -> Self {
        self.max_fee_rate = Some(rate);
        self
    }

    /// Blocks mined to the merchant's wallet first (default 0).
    pub fn merchant_blocks(mut self, n: u32) -> Self {
        self.merchant_blocks = n;
        self
    }

    /// Blocks mined to the customer's wallet (default 101: one mature coinbase).
    pub fn customer_blocks(mut self, n: u32) -> Self {
        self.customer_blocks = n;
        self
    }

    /// Builds the world: mines and syncs the wallets, starts the merchant on a loopback TCP
    /// listener, and makes the customer.
    ///
    /// # Errors
    /// The first part that failed.
    pub async fn start(self) -> Result<World, HarnessError> {
        let (dir, temp) = match self.dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir)?;
        let node = self.node.unwrap_or_else(Node::in_memory);
        let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
        let clock = paychan_chain::node_clock(&node);

        let mut mwallet = Wallet::create(&dir.join("merchant"), Network::Regtest, None)?;
        let mut cwallet = Wallet::create(&dir.join("customer"), Network::Regtest, None)?;
        if self.merchant_blocks > 0 {
            node.mine(self.merchant_blocks, &mwallet.new_address()?.script_pubkey())?;
        }
        if self.customer_blocks > 0 {
            node.mine(self.customer_blocks, &cwallet.new_address()?.script_pubkey())?;
        }
        mwallet.sync(&*chain)?;
        cwallet.sync(&*chain)?;

        let keys = mwallet.key_chain(KeyChain::MERCHANT)?;
        let payout = match &self.payout {
            Payout::Script(s) => s.clone(),
            Payout::Wallet => mwallet.new_address()?.script_pubkey(),
        };
        let merchant_wallet = Arc::new(Mutex::new(mwallet));
        let merchant_store = match self.merchant_store {
            Some(s) => s,
            None => Arc::new(SqliteStore::open(&dir.join("merchant.db"))?),
        };
        let mut config = ServerConfig::new(self.policy, payout);
        if let Some(cap) = self.max_fee_rate {
            config.max_fee_rate = cap;
        }
        if let Some(n) = self.max_live_channels {
            config.max_live_channels = n;
        }
        let merchant_chain = self.merchant_chain.unwrap_or_else(|| chain.clone());
        let mut server = ChannelServer::new(
            config,
            keys,
            merchant_store.clone(),
            merchant_chain,
            clock.clone(),
        )?
        .with_chain_cursor(dir.join("merchant-chain.cursor"))?;
        if matches!(self.payout, Payout::Wallet) {
            let w = merchant_wallet.clone();
            let source: PayoutSource = Arc::new(move || {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                w.new_address().map(|a| a.script_pubkey()).map_err(|e| e.to_string())
            });
            server = server.with_payout_source(source);
        }
        let server = Arc::new(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        // The merchant's address: its node id (BOLT 8) at the listener.
        let peer = format!("{}@{listen}", server.node_id());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(tcp::serve(server.clone(), listener, async move {
            let _ = stopped.await;
        }));

        let customer_store = match self.customer_store {
            Some(s) => s,
            None => Arc::new(SqliteStore::open(&dir.join("customer.db"))?),
        };
        let customer_chain = self.customer_chain.unwrap_or_else(|| chain.clone());
        let customer_wallet = Arc::new(Mutex::new(cwallet));
        let customer_clock = self.customer_clock.unwrap_or_else(|| clock.clone());
        let mut customer = Customer::new(
            customer_store.clone(),
            customer_chain.clone(),
            customer_wallet.clone(),
            customer_clock,
        )?
        .with_chain_cursor(dir.join("customer-chain.cursor"))?;
        if self.customer_backups {
            customer = customer.with_backups(&dir.join("backups"));
        }
        let customer = Arc::new(customer);
        Ok(World {
            node,
            chain,
            clock,
            server,
            merchant_store,
            merchant_wallet,
            peer,
            listen,
            customer,
            customer_store,
            customer_chain,
            customer_wallet,
            dir,
            merchant_task: Mutex::new(Some((stop, serving))),
            _temp: temp,
        })
    }
}

/// The merchant's TCP server: what stops it, and its task.
type MerchantTask =
    (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>);

/// A node, a merchant and a customer (see the crate's documentation).
pub struct World {
    /// The embedded regtest node.
    pub node: Node,
    /// The node as a chain source.
    pub chain: Arc<dyn ChainSource>,
    /// The node's clock (its time, tip height and median-time-past).
    pub clock: Clock,
    /// The merchant.
    pub server: Arc<ChannelServer>,
    /// The merchant's store.
    pub merchant_store: Arc<dyn ChannelStore>,
    /// The merchant's wallet (its keys, its payouts).
    pub merchant_wallet: Arc<Mutex<Wallet>>,
    /// The merchant's channel protocol address (`<node id>@127.0.0.1:port`).
    pub peer: String,
    /// Where the merchant's TCP listener is (the `host:port` of [`World::peer`]).
    pub listen: std::net::SocketAddr,
    /// The customer.
    pub customer: Arc<Customer>,
    /// The customer's store.
    pub customer_store: Arc<dyn ChannelStore>,
    /// The customer's view of the chain.
    pub customer_chain: Arc<dyn ChainSource>,
    /// The customer's funded wallet.
    pub customer_wallet: Arc<Mutex<Wallet>>,
    /// Where the wallets and stores live.
    pub dir: PathBuf,
    /// Stops the merchant's TCP server, and its task.
    merchant_task: Mutex<Option<MerchantTask>>,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("peer", &self.peer).field("dir", &self.dir).finish()
    }
}

impl World {
    /// A builder with the defaults: a fresh node, a temporary directory, 101 blocks to the
    /// customer, the default policy, payouts to key 0x55.
    pub fn builder() -> Builder {
        Builder {
            dir: None,
            node: None,
            policy: Policy::default(),
            payout: Payout::Script(fixtures::p2wpkh(&fixtures::key(0x55))),
            merchant_chain: None,
            customer_chain: None,
            merchant_store: None,
            customer_store: None,
            customer_clock: None,
            customer_backups: false,
            max_fee_rate: None,
            max_live_channels: None,
            merchant_blocks: 0,
            customer_blocks: 101,
        }
    }

    /// Another customer on the same store, wallet and chain (a restart), with `clock`.
    ///
    /// # Errors
    /// The customer's.
    pub fn customer_with(&self, clock: Clock) -> Result<Customer, HarnessError> {
        Ok(Customer::new(
            self.customer_store.clone(),
            self.customer_chain.clone(),
            self.customer_wallet.clone(),
            clock,
        )?
        .with_chain_cursor(self.dir.join("customer-chain.cursor"))?)
    }

    /// Another instance of the same merchant (issue 22): the same seed (node key, key chain,
    /// payout wallet) over `store` — the merchant's database reached through its own
    /// connection, as another process would — with its own home under the world's directory,
    /// named `name`, ticking nothing on its own, serving the channel protocol on its own
    /// loopback listener. Returns the instance and its peer address (`<node id>@127.0.0.1:port`,
    /// the same node id as [`World::peer`]); it serves until the world is dropped.
    ///
    /// # Errors
    /// The wallet's, the merchant's or the listener's.
    pub async fn add_instance(
        &self,
        name: &str,
        store: Arc<dyn ChannelStore>,
    ) -> Result<(Arc<ChannelServer>, String), HarnessError> {
        let home = self.dir.join(format!("instance-{name}"));
        std::fs::create_dir_all(&home)?;
        let (keys, payout) = {
            let mut w = self.merchant_wallet.lock().unwrap_or_else(|p| p.into_inner());
            (w.key_chain_in(&home, KeyChain::MERCHANT)?, w.new_address()?.script_pubkey())
        };
        let mut config = ServerConfig::new(self.server.policy().clone(), payout);
        config.instance = Some(name.to_string());
        let server = Arc::new(
            ChannelServer::new(config, keys, store, self.chain.clone(), self.clock.clone())?
                .with_chain_cursor(home.join("merchant-chain.cursor"))?,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let peer = format!("{}@{}", server.node_id(), listener.local_addr()?);
        tokio::spawn(tcp::serve(server.clone(), listener, std::future::pending()));
        Ok((server, peer))
    }

    /// Stops the merchant's TCP server (a merchant that goes away: its connections close once
    /// their requests are answered) and waits until it has; its port is free again.
    pub async fn stop_merchant(&self) {
        let task = self.merchant_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, serving)) = task {
            let _ = stop.send(());
            let _ = serving.await;
        }
    }

    /// Serves `routes` behind the paywall at `pricing` (beside the merchant's own HTTP API)
    /// on a loopback listener; returns its base URL (`http://127.0.0.1:port`).
    ///
    /// # Errors
    /// The listener's.
    pub async fn serve_paywalled(
        &self,
        routes: axum::Router,
        pricing: Pricing,
    ) -> Result<String, HarnessError> {
        self.serve_paywalled_with(routes, PaywallConfig::new(pricing, self.peer.clone())).await
    }

    /// [`Self::serve_paywalled`] with a whole paywall configuration (rate limits, a shared
    /// price book, …).
    ///
    /// # Errors
    /// As [`Self::serve_paywalled`].
    pub async fn serve_paywalled_with(
        &self,
        routes: axum::Router,
        config: PaywallConfig,
    ) -> Result<String, HarnessError> {
        let app = routes.layer(PaywallLayer::new(self.server.clone(), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = self.server.clone();
        tokio::spawn(http::serve_with(server, listener, None, Some(app), std::future::pending()));
        Ok(base)
    }

    /// A miner that confirms whatever waits in the mempool, looking every `period`, as a chain
    /// would; abort the handle to stop it.
    pub fn spawn_miner(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let node = self.node.clone();
        let spk = ScriptBuf::new_op_return([]);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if !node.mempool_txids().is_empty() {
                    let _ = node.mine(1, &spk);
                }
            }
        })
    }
}

/// Dials a merchant whose node id is `node_id`, listening at `addr`, over BOLT 8 as a
/// customer does: for tests that speak the channel protocol frame by frame.
///
/// # Errors
/// The transport's: unreachable, or the peer cannot prove `node_id`.
pub async fn dial(
    node_id: paychan_core::bitcoin::secp256k1::PublicKey,
    addr: std::net::SocketAddr,
) -> Result<paychan_transport::NoiseStream, paychan_transport::TransportError> {
    let addr = paychan_transport::NodeAddr { node_id, host_port: addr.to_string() };
    paychan_transport::connect(&addr, std::time::Duration::from_secs(10)).await
}
