//! A merchant on the embedded node with a SQLite store, for the merchant's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::{Network, OutPoint, TxOut};
use paychan_core::channel::customer::CustomerChannel;
use paychan_core::channel::Effect;
use paychan_core::msg::Message;
use paychan_core::policy::Policy;
use paychan_core::Now;
use paychan_harness::fixtures::{key, p2wpkh};
use paychan_merchant::{ChannelServer, Clock, KeyChain, ServerConfig};
use paychan_node::Node;
use paychan_store::{ChannelStore, SqliteStore};

pub struct Setup {
    pub node: Node,
    pub chain: Arc<dyn ChainSource>,
    pub store: Arc<dyn ChannelStore>,
    pub clock: Clock,
    pub server: Arc<ChannelServer>,
    pub dir: tempfile::TempDir,
}

/// A node with `blocks` mined to key 0x77, and a merchant paying out to key 0x55.
pub fn setup(blocks: u32) -> Setup {
    let node = Node::in_memory();
    let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
    node.mine(blocks, &p2wpkh(&key(0x77))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&dir.path().join("m.db")).unwrap());
    let clock: Clock = {
        let node = node.clone();
        Arc::new(move || Now {
            time: node.now(),
            height: node.tip().0,
            median_time_past: node.median_time_past(),
        })
    };
    let server = Arc::new(server_on(&dir, store.clone(), chain.clone(), clock.clone()));
    Setup { node, chain, store, clock, server, dir }
}

/// A merchant server (again) over the same directory and store: a restart.
pub fn server_on(
    dir: &tempfile::TempDir,
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    clock: Clock,
) -> ChannelServer {
    let config = ServerConfig::new(Policy::default(), p2wpkh(&key(0x55)));
    server_with(dir, store, chain, clock, config)
}

/// [`server_on`] with `config`.
pub fn server_with(
    dir: &tempfile::TempDir,
    store: Arc<dyn ChannelStore>,
    chain: Arc<dyn ChainSource>,
    clock: Clock,
    config: ServerConfig,
) -> ChannelServer {
    let keys = KeyChain::open(dir.path(), &[7; 32], Network::Regtest, KeyChain::MERCHANT).unwrap();
    ChannelServer::new(config, keys, store, chain, clock).unwrap()
}

/// The coinbase output of the block at `height`.
pub fn coinbase_coin(node: &Node, height: u32) -> (OutPoint, TxOut) {
    let (block, _) = node.block(&node.block_hash(height).unwrap()).unwrap();
    let cb = &block.txdata[0];
    (OutPoint { txid: cb.compute_txid(), vout: 0 }, cb.output[0].clone())
}

/// Runs a customer machine's effects: persists complete at once, sends are returned.
pub fn sends(c: &mut CustomerChannel) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_effect() {
        match e {
            Effect::Persist { id, .. } => c.persisted(id).unwrap(),
            Effect::Send(m) => out.push(m),
            _ => {}
        }
    }
    out
}

/// A customer machine for a 100,000 sat channel with the merchant key offered (`merchant`,
/// `key_index`, under `policy`), its funding (the coinbase at `height`) built: the `Open` is
/// the first message [`sends`] returns.
pub fn funded_customer(
    merchant: paychan_core::bitcoin::secp256k1::PublicKey,
    key_index: u32,
    policy: &Policy,
    node: &Node,
    height: u32,
) -> CustomerChannel {
    use paychan_core::bitcoin::absolute::LockTime;
    use paychan_core::bitcoin::Amount;
    use paychan_core::channel::customer::CustomerTerms;
    use paychan_core::script::{ChannelScript, OutputKind};
    use paychan_harness::fixtures::{customer_key, pubkey, spend_p2wpkh};
    let terms = CustomerTerms {
        script: ChannelScript::new(
            merchant,
            pubkey(&customer_key()),
            LockTime::from_consensus(node.now() as u32 + 86_400),
        )
        .unwrap(),
        kind: OutputKind::P2wsh,
        change_script: p2wpkh(&customer_key()),
        dust_relay_fee: policy.dust_relay_fee,
        cutoff_distance: policy.cutoff_distance(false),
        key_index,
        customer_key_index: 0,
        peer: String::new(),
    };
    let mut c = CustomerChannel::new(terms, customer_key()).unwrap();
    let coin = coinbase_coin(node, height);
    let change = coin.1.value - Amount::from_sat(101_000);
    let funding = spend_p2wpkh(
        &[coin],
        vec![
            TxOut { value: Amount::from_sat(100_000), script_pubkey: c.funding_script_pubkey() },
            TxOut { value: change, script_pubkey: p2wpkh(&key(0x77)) },
        ],
        &key(0x77),
    );
    c.handle_funding_built(funding).unwrap();
    c
}

/// [`funded_customer`] for the key a `Welcome` offers.
pub fn customer_for(w: &paychan_core::msg::Welcome, node: &Node, height: u32) -> CustomerChannel {
    let merchant =
        paychan_core::bitcoin::secp256k1::PublicKey::from_slice(&w.merchant_pubkey).unwrap();
    let policy = w.policy.clone().unwrap().to_policy().unwrap();
    funded_customer(merchant, w.key_index, &policy, node, height)
}

/// Opens a 100,000 sat channel with `server` (Hello, then Open, as the TCP server would call
/// them), funded by the coinbase at `height`; the customer's machine, opened.
pub async fn open_channel(server: &ChannelServer, node: &Node, height: u32) -> CustomerChannel {
    let w = server
        .hello(&paychan_core::msg::Hello {
            min_version: 1,
            max_version: 1,
            user_agent: String::new(),
        })
        .await
        .unwrap();
    let mut c = customer_for(&w, node, height);
    let Message::Open(open) = sends(&mut c).remove(0) else { panic!("no Open") };
    server.open(&open).await.unwrap();
    c.handle_opened(&[]).unwrap();
    sends(&mut c);
    c
}

/// A signed payment of `total` on `c`'s channel.
pub fn pay_msg(c: &CustomerChannel, total: u64) -> paychan_core::msg::Pay {
    let params = c.state().params.clone().unwrap();
    let kp = paychan_core::bitcoin::secp256k1::Keypair::from_secret_key(
        paychan_core::sig::secp(),
        &paychan_harness::fixtures::customer_key(),
    );
    let amount = paychan_core::bitcoin::Amount::from_sat(total);
    paychan_core::msg::Pay {
        channel: Some(params.id().into()),
        total_sat: total,
        signature: paychan_core::tx::payment::sign_payment(&params, amount, &kp).unwrap(),
    }
}

/// The test miner's script (key 0x77).
pub fn p2wpkh_77() -> paychan_core::bitcoin::ScriptBuf {
    p2wpkh(&key(0x77))
}

/// `GET base+path` with the admin bearer `token`: the JSON answer.
pub async fn admin_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
) -> serde_json::Value {
    client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A 21 deposit, as two1 builds it, from the coinbase of block `height`: P2SH of the channel
/// script with the customer key, capacity 200,000 + 3,000 + 125,000 sat.
pub fn deposit_for(
    node: &paychan_node::Node,
    merchant: paychan_core::bitcoin::secp256k1::PublicKey,
    height: u32,
) -> (paychan_core::bitcoin::Transaction, paychan_core::script::ChannelScript, u32) {
    use paychan_core::bitcoin::absolute::LockTime;
    use paychan_core::bitcoin::Amount;
    use paychan_core::script::{ChannelScript, OutputKind};
    use paychan_core::tx::two1::{TWO1_FEE, TWO1_MIN_OUTPUT};
    use paychan_harness::fixtures::{customer_key, pubkey, spend_p2wpkh};
    let expiry = node.now() as u32 + 5 * 86_400;
    let script =
        ChannelScript::new(merchant, pubkey(&customer_key()), LockTime::from_consensus(expiry))
            .unwrap();
    let capacity = 200_000 + TWO1_MIN_OUTPUT.to_sat() + TWO1_FEE.to_sat();
    let (block, _) = node.block(&node.block_hash(height).unwrap()).unwrap();
    let cb = &block.txdata[0];
    let coin = (OutPoint { txid: cb.compute_txid(), vout: 0 }, cb.output[0].clone());
    let change = coin.1.value - Amount::from_sat(capacity + 1_000);
    let deposit = spend_p2wpkh(
        &[coin],
        vec![
            TxOut {
                value: Amount::from_sat(capacity),
                script_pubkey: script.script_pubkey(OutputKind::P2sh),
            },
            TxOut { value: change, script_pubkey: p2wpkh(&key(0x77)) },
        ],
        &key(0x77),
    );
    (deposit, script, expiry)
}

/// A channel protocol connection to a merchant, over BOLT 8 as a customer dials it, speaking
/// frame by frame.
pub struct Conn {
    /// The encrypted stream.
    pub stream: paychan_transport::NoiseStream,
    decoder: paychan_core::msg::FrameDecoder,
}

impl Conn {
    /// Dials `server` listening at `addr`.
    pub async fn dial(server: &ChannelServer, addr: std::net::SocketAddr) -> Self {
        let stream = paychan_harness::dial(server.node_id(), addr).await.unwrap();
        Conn {
            stream,
            decoder: paychan_core::msg::FrameDecoder::new(paychan_core::msg::MAX_FRAME_LEN),
        }
    }

    /// Sends `msgs` in one write.
    pub async fn send(&mut self, msgs: &[Message]) {
        use tokio::io::AsyncWriteExt;
        let mut bytes = Vec::new();
        for m in msgs {
            bytes.extend(paychan_core::msg::encode_frame(m));
        }
        self.stream.write_all(&bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next message; `None` when the merchant closed the connection.
    pub async fn recv(&mut self) -> Option<Message> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.stream.read(&mut buf),
            )
            .await
            .expect("the server answers within 20 s")
            .unwrap();
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Sends `m`, returns the answer.
    pub async fn ask(&mut self, m: Message) -> Message {
        self.send(&[m]).await;
        self.recv().await.expect("connection closed")
    }
}
