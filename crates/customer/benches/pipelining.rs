//! Pipelined payments on one channel against one-at-a-time, over loopback TCP with the real
//! SQLite stores on both sides and the embedded node, measured in the same run.
//!
//! Run: `cargo bench -p paychan-customer --bench pipelining`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::{Amount, Network};
use paychan_core::policy::Policy;
use paychan_core::testkit::{key, p2wpkh};
use paychan_core::Now;
use paychan_customer::Customer;
use paychan_merchant::{tcp, ChannelServer, ServerConfig};
use paychan_node::Node;
use paychan_store::{ChannelStore, SqliteStore};
use paychan_wallet::{KeyChain, Wallet};

const N: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = Node::in_memory();
    let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
    let clock: Arc<dyn Fn() -> Now + Send + Sync> = {
        let node = node.clone();
        Arc::new(move || Now {
            time: node.now(),
            height: node.tip().0,
            median_time_past: node.median_time_past(),
        })
    };
    let (md, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mwallet = Wallet::create(md.path(), Network::Regtest, None).unwrap();
    let keys = mwallet.key_chain(KeyChain::MERCHANT).unwrap();
    let mstore: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&md.path().join("m.db")).unwrap());
    let config = ServerConfig {
        policy: Policy::default(),
        payout: p2wpkh(&key(0x55)),
        settle_target_blocks: 6,
    };
    let server =
        Arc::new(ChannelServer::new(config, keys, mstore, chain.clone(), clock.clone()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tcp::serve(server, listener, std::future::pending()));
    let mut cwallet = Wallet::create(cd.path(), Network::Regtest, None).unwrap();
    let a = cwallet.new_address().unwrap();
    node.mine(101, &a.script_pubkey()).unwrap();
    cwallet.sync(&*chain).unwrap();
    let cstore: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&cd.path().join("c.db")).unwrap());
    let customer = Customer::new(cstore, chain, Arc::new(Mutex::new(cwallet)), clock).unwrap();
    let id = customer.open(&addr, Amount::from_sat(10_000_000), None).await.unwrap();
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    customer.pay(id, Amount::from_sat(1)).await.unwrap(); // warm up, confirms the channel

    let t = Instant::now();
    for _ in 0..N {
        customer.pay(id, Amount::from_sat(1)).await.unwrap();
    }
    let single = N as f64 / t.elapsed().as_secs_f64();
    let single_latency_us = t.elapsed().as_secs_f64() * 1e6 / N as f64;

    let t = Instant::now();
    for _ in 0..N / 100 {
        customer.pay_many(id, &[Amount::from_sat(1); 100]).await.unwrap();
    }
    let pipelined = N as f64 / t.elapsed().as_secs_f64();

    println!("pipelining bench ({N} payments on one channel, loopback TCP, SQLite durable on both sides)");
    println!("  one at a time        {single:>9.0} payments/s  ({single_latency_us:.0} µs each: two durable commits and a round trip)");
    println!(
        "  pipelined, window 100 {pipelined:>8.0} payments/s  {:.1}× one at a time",
        pipelined / single
    );
}
