//! Crashes with real processes: the merchant killed (SIGKILL) during a payment stream restarts
//! and still settles at least the highest acknowledged total; the customer killed mid-stream
//! resumes the same channel and its view matches the merchant's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paychan_core::bitcoin::OutPoint;
use paychan_store::{ChannelStore, Role, SqliteStore};
use serde_json::Value;

mod common;

use common::{free_port, start_node, Kill};

struct Env {
    url: String,
    cookie: PathBuf,
}

impl Env {
    fn cmd(&self, home: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
        c.arg("--home")
            .arg(home)
            .args(["--rpc-url", &self.url, "--json", "--rpc-cookie"])
            .arg(&self.cookie);
        c
    }

    fn run(&self, home: &Path, args: &[&str]) -> Value {
        let o = self.cmd(home).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
    }

    /// A customer wallet at `home` with coins, and a confirmed channel of 1,000,000 sat with
    /// the merchant at `address`.
    fn open_channel(&self, home: &Path, address: &str) -> (String, OutPoint) {
        self.run(home, &["wallet", "new"]);
        self.run(home, &["wallet", "faucet"]);
        let opened =
            self.run(home, &["channels", "open", "--merchant", address, "--deposit", "1000000sat"]);
        let channel = opened["channel"].as_str().unwrap().to_string();
        self.run(home, &["node", "mine", "1"]);
        let id = channel.parse().unwrap();
        (channel, id)
    }

    /// `paychan serve` on `port`: the process and the address customers dial
    /// (`<node id>@127.0.0.1:port`, the same across restarts: the node key is the wallet's).
    fn serve(&self, home: &Path, port: u16) -> (Kill, String) {
        let mut child = self
            .cmd(home)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http",
                "127.0.0.1:0",
                "--tick-secs",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let serving: Value = serde_json::from_str(&line).unwrap();
        let address = serving["address"].as_str().unwrap().to_string();
        (Kill(child), address)
    }
}

/// Streams payments until `stop` says so, then kills `victim` (or the payer itself when
/// `victim` is None); returns the highest total the payer saw acknowledged.
fn stream_and_kill(
    env: &Env,
    home: &Path,
    channel: &str,
    after: u64,
    victim: Option<&mut Kill>,
) -> u64 {
    let mut payer = env
        .cmd(home)
        .args([
            "channels",
            "pay",
            "--channel",
            channel,
            "--amount",
            "1sat",
            "--count",
            "100000",
            "--progress",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(payer.stdout.take().unwrap());
    let start = Instant::now();
    let mut highest = 0;
    let mut killed = false;
    let mut victim = victim;
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let Some(a) = v["acked_sat"].as_u64() {
                highest = highest.max(a);
            }
        }
        if !killed && highest >= after {
            match victim.as_mut() {
                Some(v) => {
                    v.0.kill().unwrap();
                    v.0.wait().unwrap();
                }
                None => {
                    payer.kill().unwrap();
                }
            }
            killed = true;
            if victim.is_none() {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the stream is too slow");
    }
    let _ = payer.kill();
    let _ = payer.wait();
    assert!(killed, "the kill happened");
    highest
}

#[test]
fn merchant_and_customer_crashes_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (node_dir, m, c) = (tmp.path().join("node"), tmp.path().join("m"), tmp.path().join("c"));
    let (_node, url, cookie) = start_node(&node_dir);
    let env = Env { url, cookie };
    let port = free_port();
    let (mut merchant, address) = env.serve(&m, port);

    let (channel, id) = env.open_channel(&c, &address);

    // The merchant is killed mid-stream.
    let acked = stream_and_kill(&env, &c, &channel, 2_000, Some(&mut merchant));
    assert!(acked >= 2_000);
    let (_merchant, again) = env.serve(&m, port);
    assert_eq!(again, address, "the node id survives a restart");
    let synced = env.run(&c, &["channels", "sync", "--channel", &channel]);
    let after = synced["acked_sat"].as_u64().unwrap();
    assert!(
        after >= acked,
        "the restarted merchant has every acknowledged total ({after} ≥ {acked})"
    );

    // The customer is killed mid-stream; it resumes and agrees with the merchant.
    stream_and_kill(&env, &c, &channel, after + 1_000, None);
    let synced = env.run(&c, &["channels", "sync", "--channel", &channel]);
    let customer_view = synced["acked_sat"].as_u64().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let merchant_total = rt.block_on(async {
        let store = SqliteStore::open(&m.join("merchant.db")).unwrap();
        store.get(id, Role::Merchant).await.unwrap().unwrap().total.to_sat()
    });
    assert_eq!(customer_view, merchant_total, "both sides agree after the resume");
    let status = env.run(&c, &["channels", "status", "--channel", &channel]);
    assert_eq!(status["paid_sat"].as_u64().unwrap(), merchant_total);

    // A graceful stop (SIGTERM) mid-stream: the merchant finishes what it is handling and exits
    // cleanly; nothing acknowledged is lost.
    let mut merchant = _merchant;
    let pid = merchant.0.id().to_string();
    let before_term = customer_view;
    let highest = {
        let mut payer = env
            .cmd(&c)
            .args([
                "channels",
                "pay",
                "--channel",
                &channel,
                "--amount",
                "1sat",
                "--count",
                "100000",
                "--progress",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut highest = 0;
        let mut termed = false;
        for line in BufReader::new(payer.stdout.take().unwrap()).lines() {
            let Ok(line) = line else { break };
            if let Some(a) =
                serde_json::from_str::<Value>(&line).ok().and_then(|v| v["acked_sat"].as_u64())
            {
                highest = highest.max(a);
            }
            if !termed && highest >= before_term + 1_000 {
                assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
                termed = true;
            }
        }
        let _ = payer.wait();
        highest
    };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = merchant.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the merchant stops within its grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit");
    let (_merchant, again) = env.serve(&m, port);
    assert_eq!(again, address, "the node id survives a restart");
    let synced = env.run(&c, &["channels", "sync", "--channel", &channel]);
    assert!(synced["acked_sat"].as_u64().unwrap() >= highest);
    let merchant_total = rt.block_on(async {
        let store = SqliteStore::open(&m.join("merchant.db")).unwrap();
        store.get(id, Role::Merchant).await.unwrap().unwrap().total.to_sat()
    });

    // Settle: at least the highest acknowledged total reaches the chain.
    let closed = env.run(&c, &["channels", "close", "--channel", &channel]);
    let mined = env.run(&c, &["node", "mine", "1"]);
    let rpc = paychan_chain::BitcoindRpc::new(
        &env.url,
        paychan_chain::RpcAuth::CookieFile(env.cookie.clone()),
    )
    .unwrap();
    // No transaction index (as a stock bitcoind): ask with the block hash.
    let tx: Value = rpc
        .call(
            "getrawtransaction",
            &[
                closed["settlement_txid"].clone(),
                serde_json::json!(true),
                mined["blocks"][0].clone(),
            ],
        )
        .unwrap();
    assert_eq!(tx["confirmations"], 1);
    let change = (tx["vout"][0]["value"].as_f64().unwrap() * 1e8).round() as u64;
    assert_eq!(change, 1_000_000 - merchant_total, "settled at the merchant's total");
}

/// The customer's write of a payment overlaps its send (DESIGN §6): here the customer's store
/// is held locked by another process, so the payment leaves and is acknowledged while its write
/// cannot land; the customer is SIGKILLed then. Its store lacks the payment; the resume adopts
/// the total the merchant shows with the customer's own signature, and both agree.
#[test]
fn a_customer_killed_between_send_and_write_adopts_the_merchants_total() {
    let tmp = tempfile::tempdir().unwrap();
    let (node_dir, m, c) = (tmp.path().join("node"), tmp.path().join("m"), tmp.path().join("c"));
    let (_node, url, cookie) = start_node(&node_dir);
    let env = Env { url, cookie };
    let (_merchant, address) = env.serve(&m, free_port());
    let (channel, id) = env.open_channel(&c, &address);
    env.run(&c, &["channels", "pay", "--channel", &channel, "--amount", "500sat"]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stored = |db: &Path, role| {
        rt.block_on(async {
            let store = SqliteStore::open(db).unwrap();
            store.get(id, role).await.unwrap().unwrap().total.to_sat()
        })
    };
    assert_eq!(stored(&m.join("merchant.db"), Role::Merchant), 500);

    // Another process holds the customer's database's write lock.
    let blocker = rusqlite::Connection::open(c.join("channels.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut payer = env
        .cmd(&c)
        .args(["channels", "pay", "--channel", &channel, "--amount", "700sat"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The payment reaches the merchant (stored, acknowledged) while the customer's write waits.
    let start = Instant::now();
    while stored(&m.join("merchant.db"), Role::Merchant) < 1_200 {
        assert!(start.elapsed() < Duration::from_secs(20), "the payment left before its write");
        if payer.try_wait().unwrap().is_some() {
            let mut why = String::new();
            std::io::Read::read_to_string(&mut payer.stderr.take().unwrap(), &mut why).unwrap();
            panic!("the payer should wait for its write, but it ended: {why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    payer.kill().unwrap();
    payer.wait().unwrap();
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    assert_eq!(stored(&c.join("channels.db"), Role::Customer), 500, "the write was lost");

    let synced = env.run(&c, &["channels", "sync", "--channel", &channel]);
    assert_eq!(synced["acked_sat"].as_u64().unwrap(), 1_200, "adopted from the merchant");
    assert_eq!(stored(&c.join("channels.db"), Role::Customer), 1_200, "and stored");
    // It goes on from there: the next payment builds on 1,200.
    env.run(&c, &["channels", "pay", "--channel", &channel, "--amount", "1sat"]);
    assert_eq!(stored(&m.join("merchant.db"), Role::Merchant), 1_201);
    assert_eq!(stored(&c.join("channels.db"), Role::Customer), 1_201);
}

#[test]
fn with_the_merchant_stopped_the_refund_is_mined_after_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let (node_dir, m, c) = (tmp.path().join("node"), tmp.path().join("m"), tmp.path().join("c"));
    let (_node, url, cookie) = start_node(&node_dir);
    let env = Env { url, cookie };
    let port = free_port();
    let (merchant, address) = env.serve(&m, port);
    env.run(&c, &["wallet", "new"]);
    env.run(&c, &["wallet", "faucet"]);
    let opened = env.run(
        &c,
        &["channels", "open", "--merchant", &address, "--deposit", "50000sat", "--life", "7h"],
    );
    let channel = opened["channel"].as_str().unwrap().to_string();
    env.run(&c, &["node", "mine", "1"]);
    env.run(&c, &["channels", "pay", "--channel", &channel, "--amount", "1000sat"]);
    drop(merchant); // the merchant is gone for good and never settles

    env.run(&c, &["node", "time", "--advance", "8h"]);
    env.run(&c, &["node", "mine", "11"]); // median-time-past passes the expiry
    let list = env.run(&c, &["channels", "list"]); // ticks: the refund is broadcast
    assert_eq!(list[0]["phase"], "settling", "{list}");
    let mined = env.run(&c, &["node", "mine", "1"]);
    let list = env.run(&c, &["channels", "list"]);
    assert_eq!(list[0]["phase"], "refunded", "{list}");
    let refund = list[0]["closing_txid"].as_str().unwrap().to_string();
    let rpc = paychan_chain::BitcoindRpc::new(
        &env.url,
        paychan_chain::RpcAuth::CookieFile(env.cookie.clone()),
    )
    .unwrap();
    let tx: Value = rpc
        .call(
            "getrawtransaction",
            &[serde_json::json!(refund), serde_json::json!(true), mined["blocks"][0].clone()],
        )
        .unwrap();
    assert_eq!(tx["confirmations"], 1, "the refund is mined");
    let back = (tx["vout"][0]["value"].as_f64().unwrap() * 1e8).round() as u64;
    assert!(back > 49_000 && back < 50_000, "the whole deposit less the fee: {back}");
}

/// `paychan node start` on a fixed loopback port (so it can be restarted at the same address).
fn node_at(datadir: &Path, port: u16) -> Kill {
    let mut node = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "node", "start", "--rpc-bind", &format!("127.0.0.1:{port}"), "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = common::first_line(&mut node);
    Kill(node)
}

#[test]
fn the_node_restarting_mid_stream_loses_nothing_and_settlement_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let (node_dir, m, c) = (tmp.path().join("node"), tmp.path().join("m"), tmp.path().join("c"));
    let rpc_port = free_port();
    let node = node_at(&node_dir, rpc_port);
    let env = Env { url: format!("http://127.0.0.1:{rpc_port}"), cookie: node_dir.join(".cookie") };
    let port = free_port();
    let (_merchant, address) = env.serve(&m, port);
    env.run(&c, &["wallet", "new"]);
    env.run(&c, &["wallet", "faucet"]);
    let opened =
        env.run(&c, &["channels", "open", "--merchant", &address, "--deposit", "100000sat"]);
    let channel = opened["channel"].as_str().unwrap().to_string();
    env.run(&c, &["node", "mine", "1"]);
    let paid = env.run(
        &c,
        &["channels", "pay", "--channel", &channel, "--amount", "10sat", "--count", "100"],
    );
    assert_eq!(paid["acked_sat"], 1_000);

    // The node dies (SIGKILL): payments on the confirmed channel go on without it.
    drop(node);
    let paid = env.run(
        &c,
        &["channels", "pay", "--channel", &channel, "--amount", "10sat", "--count", "100"],
    );
    assert_eq!(paid["acked_sat"], 2_000, "paid while the node was down");

    // It comes back (with a new cookie, as bitcoind does): the merchant reconnects and settles.
    let _node = node_at(&node_dir, rpc_port);
    let closed = env.run(&c, &["channels", "close", "--channel", &channel]);
    let settlement = closed["settlement_txid"].as_str().unwrap().to_string();
    let mined = env.run(&c, &["node", "mine", "1"]);
    let rpc = paychan_chain::BitcoindRpc::new(
        &env.url,
        paychan_chain::RpcAuth::CookieFile(env.cookie.clone()),
    )
    .unwrap();
    let tx: Value = rpc
        .call(
            "getrawtransaction",
            &[serde_json::json!(settlement), serde_json::json!(true), mined["blocks"][0].clone()],
        )
        .unwrap();
    assert_eq!(tx["confirmations"], 1, "the settlement is mined");
    let outputs: f64 =
        tx["vout"].as_array().unwrap().iter().map(|o| o["value"].as_f64().unwrap()).sum();
    let fee = 100_000 - (outputs * 1e8).round() as u64;
    let change = tx["vout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["value"].as_f64().unwrap() * 1e8).round() as u64)
        .find(|v| *v == 98_000)
        .expect("the customer's change");
    assert_eq!(
        change + 2_000,
        100_000,
        "the settlement pays every acknowledged payment (fee {fee})"
    );
}
