//! Dispute channels as real processes on loopback: `paychan node start`, `paychan serve`, the
//! customer's CLI. A cooperative close pays the merchant exactly the latest total less the
//! fee in one transaction; a force close with the merchant serving ends with the merchant's
//! settlement of the latest total; with the merchant stopped, with the customer's refund of
//! the whole deposit once the dispute period (144 blocks) has passed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use paychan_chain::{BitcoindRpc, ChainSource, RpcAuth};
use serde_json::{json, Value};

mod common;

use common::World;

fn rpc(w: &World) -> BitcoindRpc {
    BitcoindRpc::new(&w.url, RpcAuth::CookieFile(w.cookie.clone())).unwrap()
}

fn mine(w: &World, n: u32) -> Value {
    w.customer(&["node", "mine", &n.to_string()])
}

/// A funded customer with a 100,000 sat dispute channel to a merchant serving on loopback,
/// confirmed, and `payments` payments of 10 sat on it. Returns the merchant process and the
/// channel.
fn open_and_pay(w: &World, payments: u32) -> (common::Kill, String) {
    let (merchant, serving) = w.serve(&["--tick-secs", "1"]);
    let peer = serving["address"].as_str().unwrap().to_string();
    w.fund_customer();
    let opened = w.customer(&[
        "channels",
        "open",
        "--merchant",
        &peer,
        "--deposit",
        "100000sat",
        "--kind",
        "dispute",
    ]);
    assert_eq!(opened["kind"], "dispute", "{opened}");
    assert_eq!(opened["dispute_blocks"], 144);
    assert_eq!(opened["expiry"], 0, "no expiry");
    let channel = opened["channel"].as_str().unwrap().to_string();
    mine(w, 1);
    let paid = w.customer(&[
        "channels",
        "pay",
        "--channel",
        &channel,
        "--amount",
        "10sat",
        "--count",
        &payments.to_string(),
    ]);
    assert_eq!(paid["acked_sat"], u64::from(payments) * 10);
    (merchant, channel)
}

/// A mined transaction by its txid and the block that holds it (no transaction index).
fn mined_tx(w: &World, txid: &str, block: &Value) -> Value {
    rpc(w).call("getrawtransaction", &[json!(txid), json!(true), block.clone()]).unwrap()
}

fn sat(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1e8).round() as u64
}

fn phase(w: &World) -> String {
    w.customer(&["channels", "list"])[0]["phase"].as_str().unwrap().to_string()
}

#[test]
fn a_cooperative_close_pays_the_merchant_the_latest_total_in_one_transaction() {
    let w = World::new();
    let (_merchant, channel) = open_and_pay(&w, 1_000);
    let closed = w.customer(&["channels", "close", "--channel", &channel]);
    let close = closed["settlement_txid"].as_str().unwrap().to_string();
    let block = mine(&w, 1)["blocks"][0].clone();
    let tx = mined_tx(&w, &close, &block);
    let vin = tx["vin"].as_array().unwrap();
    assert_eq!(vin.len(), 1, "one transaction, from the funding itself");
    assert_eq!(format!("{}:{}", vin[0]["txid"].as_str().unwrap(), vin[0]["vout"]), channel);
    let outs = tx["vout"].as_array().unwrap();
    let fee = 100_000 - outs.iter().map(|o| sat(&o["value"])).sum::<u64>();
    assert_eq!(sat(&outs[0]["value"]), 90_000, "the customer's change");
    assert_eq!(sat(&outs[1]["value"]), 10_000 - fee, "the merchant's 10,000 sat less the fee");
    assert!(fee > 0 && fee < 1_000, "{fee}");
    assert_eq!(phase(&w), "settled");
}

#[test]
fn a_force_close_with_the_merchant_serving_ends_in_its_settlement_of_the_latest_total() {
    let w = World::new();
    let (_merchant, channel) = open_and_pay(&w, 500);
    let forced = w.customer(&["channels", "close", "--channel", &channel, "--force"]);
    let trigger = forced["trigger_txid"].as_str().unwrap().to_string();
    // The trigger and the customer's exit child, one package.
    assert_eq!(rpc(&w).mempool().unwrap().len(), 2);
    mine(&w, 1);
    // The merchant (ticking every second) sees the trigger and settles at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let settlement = loop {
        let pool = rpc(&w).mempool().unwrap();
        if let Some(t) = pool.first() {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "no settlement from the merchant");
        std::thread::sleep(Duration::from_millis(200));
    };
    let block = mine(&w, 1)["blocks"][0].clone();
    let tx = mined_tx(&w, &settlement, &block);
    assert_eq!(tx["vin"][0]["txid"], trigger.as_str(), "it spends the trigger's output");
    let outs = tx["vout"].as_array().unwrap();
    assert_eq!(sat(&outs[0]["value"]), 95_000, "the customer's change");
    let to_merchant = sat(&outs[1]["value"]);
    assert!(to_merchant > 4_000 && to_merchant < 5_000, "5,000 sat less the fee: {to_merchant}");
    assert_eq!(phase(&w), "settled");
}

#[test]
fn a_force_close_without_the_merchant_refunds_the_deposit_after_the_dispute_period() {
    let w = World::new();
    let (merchant, channel) = open_and_pay(&w, 300);
    drop(merchant);
    w.customer(&["channels", "close", "--channel", &channel, "--force"]);
    mine(&w, 1);
    assert_eq!(phase(&w), "disputed");
    // 143 more blocks: the trigger has 144 confirmations; the refund goes out at the next look.
    mine(&w, 143);
    assert_eq!(phase(&w), "disputed");
    let pool = rpc(&w).mempool().unwrap();
    assert_eq!(pool.len(), 1, "the refund");
    let refund = pool[0].to_string();
    let block = mine(&w, 1)["blocks"][0].clone();
    let tx = mined_tx(&w, &refund, &block);
    let back = sat(&tx["vout"][0]["value"]);
    assert!(back > 99_000 && back < 100_000, "the whole deposit less the refund's fee: {back}");
    assert_eq!(phase(&w), "refunded");
}

#[test]
fn the_merchant_alone_ends_an_exhausted_channel_by_the_trigger_and_its_settlement() {
    let w = World::new();
    // 99,500 of 100,000 sat paid: below the close-out balance, the merchant settles by itself
    // (the customer never closes), sending the trigger and its settlement as one package.
    let (_merchant, _channel) = open_and_pay(&w, 9_950);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rpc(&w).mempool().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no package from the merchant");
        std::thread::sleep(Duration::from_millis(200));
    }
    mine(&w, 1);
    assert!(rpc(&w).mempool().unwrap().is_empty(), "the trigger and the settlement, both mined");
    let deadline = Instant::now() + Duration::from_secs(60);
    while phase(&w) != "settled" {
        assert!(Instant::now() < deadline, "the customer never saw the settlement");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_merchant_sigkilled_and_restarted_during_the_dispute_period_still_settles() {
    let w = World::new();
    let (merchant, channel) = open_and_pay(&w, 700);
    // SIGKILL; the customer leaves while the merchant is down, and blocks come.
    drop(merchant);
    let forced = w.customer(&["channels", "close", "--channel", &channel, "--force"]);
    let trigger = forced["trigger_txid"].as_str().unwrap().to_string();
    mine(&w, 3);
    // The merchant comes back within the dispute period: it finds the trigger and settles.
    let (_merchant, _) = w.serve(&["--tick-secs", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let settlement = loop {
        if let Some(t) = rpc(&w).mempool().unwrap().first() {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "no settlement after the restart");
        std::thread::sleep(Duration::from_millis(200));
    };
    let block = mine(&w, 1)["blocks"][0].clone();
    let tx = mined_tx(&w, &settlement, &block);
    assert_eq!(tx["vin"][0]["txid"], trigger.as_str());
    assert_eq!(sat(&tx["vout"][0]["value"]), 93_000, "the customer's change for 7,000 sat");
    assert!(sat(&tx["vout"][1]["value"]) > 6_000, "7,000 sat less the fee to the merchant");
}
