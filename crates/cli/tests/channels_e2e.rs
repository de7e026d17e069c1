//! The walkthrough as real processes on loopback: `paychan node start`, `paychan serve`, a
//! customer wallet, `paychan channels open` (100,000 sat), 1,000 payments of 10 sat, close; the
//! settlement is mined and pays the merchant exactly 10,000 sat less its fee, the customer the
//! rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;

mod common;

use common::{paychan, run, World};

#[test]
fn open_pay_1000_times_close_and_settle_with_real_processes() {
    let w = World::new();
    let (url, cookie, merchant_home, customer_home) =
        (w.url.clone(), w.cookie.clone(), w.merchant_home.clone(), w.customer_home.clone());
    let (_merchant, serving) = w.serve(&["--tick-secs", "1"]);
    let listen = serving["address"].as_str().unwrap().to_string();

    let f = w.fund_customer();
    assert!(f["confirmed_sat"].as_u64().unwrap() >= 5_000_000_000);

    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "open", "--merchant", &listen, "--deposit", "100000sat"]);
    let opened = run(c);
    let channel = opened["channel"].as_str().unwrap().to_string();
    assert_eq!(opened["capacity_sat"], 100_000);
    // Confirm the funding; the merchant checks it when the first payment arrives.
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["node", "mine", "1"]);
    run(c);

    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "pay", "--channel", &channel, "--amount", "10sat", "--count", "1000"]);
    let paid = run(c);
    assert_eq!(paid["acked_sat"], 10_000);

    // The customer's channel was backed up at its open; the merchant copies its store while
    // serving, and the copy holds the 10,000 sat.
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["backup", "list"]);
    let backups = run(c);
    assert_eq!(backups[0]["funding"], channel.as_str());
    assert_eq!(backups[0]["value_sat"], 100_000);
    let copy = w.tmp.path().join("merchant-backup.db");
    let mut c = paychan(&merchant_home, &url, &cookie);
    c.args(["backup", "export"]).arg(&copy);
    run(c);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let row = rt.block_on(async {
        let s = paychan_store::SqliteStore::open(&copy).unwrap();
        let id: paychan_core::bitcoin::OutPoint = channel.parse().unwrap();
        paychan_store::ChannelStore::get(&s, id, paychan_store::Role::Merchant).await.unwrap()
    });
    assert_eq!(row.unwrap().total.to_sat(), 10_000);

    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "close", "--channel", &channel]);
    let closed = run(c);
    let settlement = closed["settlement_txid"].as_str().unwrap().to_string();
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["node", "mine", "1"]);
    let mined = run(c);

    let tx = common::mined_tx(&url, &cookie, &settlement, &mined["blocks"][0]);
    assert_eq!(tx["confirmations"], 1, "the settlement is mined");
    let sat = |v: &Value| (v.as_f64().unwrap() * 1e8).round() as u64;
    let outs = tx["vout"].as_array().unwrap();
    assert_eq!(outs.len(), 2, "the customer's change, then the merchant's output");
    let to_merchant = sat(&outs[1]["value"]);
    let total_out: u64 = outs.iter().map(|o| sat(&o["value"])).sum();
    let fee = 100_000 - total_out;
    assert_eq!(to_merchant, 10_000 - fee, "the merchant gets 10,000 sat less its fee");
    assert_eq!(sat(&outs[0]["value"]), 90_000, "the customer gets the rest");
    // The merchant's output is its wallet's: its balance is exactly that.
    let mut c = paychan(&merchant_home, &url, &cookie);
    c.args(["wallet", "balance"]);
    assert_eq!(run(c)["confirmed_sat"], 10_000 - fee);

    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "list"]);
    let list = run(c);
    assert_eq!(list[0]["phase"], "settled");
}

#[test]
fn a_payment_file_is_verified_and_submitted_by_the_merchant_and_a_tampered_one_refused() {
    let w = World::new();
    let tmp = &w.tmp;
    let (url, cookie, merchant_home, customer_home) =
        (w.url.clone(), w.cookie.clone(), w.merchant_home.clone(), w.customer_home.clone());
    let (merchant, serving) = w.serve(&[]);
    let listen = serving["address"].as_str().unwrap().to_string();

    w.fund_customer();
    // A CLTV channel: the merchant settles 500 sat alone with one transaction (a dispute
    // channel's settlement would also pay for its trigger, too much for 500 sat).
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "open", "--merchant", &listen, "--deposit", "100000sat", "--kind", "cltv"]);
    let channel = run(c)["channel"].as_str().unwrap().to_string();
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["node", "mine", "1"]);
    run(c);
    // The merchant goes offline; the customer pays by file.
    drop(merchant);
    let file = tmp.path().join("payment.json");
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "pay", "--channel", &channel, "--amount", "500sat", "--out"]).arg(&file);
    assert_eq!(run(c)["total_sat"], 500);

    // A tampered copy (a higher total) is refused with the reason.
    let tampered = tmp.path().join("tampered.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    v["total_sat"] = serde_json::json!(5_000);
    std::fs::write(&tampered, v.to_string()).unwrap();
    let o = paychan(&merchant_home, &url, &cookie)
        .args(["payment", "verify"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("signature does not verify"), "{err}");

    let mut c = paychan(&merchant_home, &url, &cookie);
    c.args(["payment", "verify"]).arg(&file);
    let verified = run(c);
    assert_eq!(
        (verified["valid"].as_bool(), verified["worth_sat"].as_u64()),
        (Some(true), Some(500))
    );
    let mut c = paychan(&merchant_home, &url, &cookie);
    c.args(["payment", "submit", "--settle"]).arg(&file);
    let submitted = run(c);
    assert_eq!(submitted["total_sat"], 500);
    let settlement = submitted["settlement_txid"].as_str().unwrap().to_string();
    // Submitting it again is a replay: refused.
    let o = paychan(&merchant_home, &url, &cookie)
        .args(["payment", "submit"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["node", "mine", "1"]);
    let mined = run(c);
    let rpc =
        paychan_chain::BitcoindRpc::new(&url, paychan_chain::RpcAuth::CookieFile(cookie.clone()))
            .unwrap();
    let tx: Value = rpc
        .call(
            "getrawtransaction",
            &[serde_json::json!(settlement), serde_json::json!(true), mined["blocks"][0].clone()],
        )
        .unwrap();
    assert_eq!(tx["confirmations"], 1);
    assert_eq!((tx["vout"][0]["value"].as_f64().unwrap() * 1e8).round() as u64, 99_500);
}
