//! The JSON HTTP API on a loopback socket: open, pay, status, close; and every payment rule
//! broken gets its code, its HTTP status, and an unchanged channel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sends, setup, Setup};

use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::secp256k1::{Keypair, Message as SecpMessage, PublicKey};
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::msg::{self, Message};
use paychan_core::policy::Policy;
use paychan_core::tx::payment::sign_payment;
use paychan_harness::fixtures::{customer_key, key, p2wpkh};
use paychan_merchant::http;
use paychan_store::Role;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_open_pay_close_and_refusals() {
    let Setup { node, store, server, dir: _dir, .. } = setup(101);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        server.clone(),
        listener,
        Some("s3cret".into()),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();

    // Open.
    let info: Value =
        client.get(format!("{base}/v1/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["version"], paychan_core::msg::PROTOCOL_VERSION);
    let merchant =
        PublicKey::from_slice(&Vec::<u8>::from_hex(info["public_key"].as_str().unwrap()).unwrap())
            .unwrap();
    let key_index = info["key_index"].as_u64().unwrap() as u32;
    let mut customer = common::funded_customer(merchant, key_index, &Policy::default(), &node, 1);
    let Message::Open(o) = sends(&mut customer).remove(0) else { panic!() };
    let body = json!({
        "funding_tx": o.funding_tx.to_lower_hex_string(),
        "customer_pubkey": o.customer_pubkey.to_lower_hex_string(),
        "merchant_pubkey": o.merchant_pubkey.to_lower_hex_string(),
        "key_index": o.key_index,
        "expiry": o.expiry,
        "change_script": o.change_script.to_lower_hex_string(),
    });
    let r = client.post(format!("{base}/v1/channels")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let opened: Value = r.json().await.unwrap();
    let id: OutPoint = opened["channel"].as_str().unwrap().parse().unwrap();
    customer.handle_opened(&[]).unwrap();
    sends(&mut customer);
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();

    // Pay 3,000 sat.
    let params = customer.state().params.clone().unwrap();
    let kp = Keypair::from_secret_key(paychan_core::sig::secp(), &customer_key());
    let sig =
        |t: u64| sign_payment(&params, Amount::from_sat(t), &kp).unwrap().to_lower_hex_string();
    let pay = |total: u64, signature: String| {
        let client = client.clone();
        let url = format!("{base}/v1/channels/{id}/payments");
        async move {
            client
                .post(url)
                .json(&json!({"total_sat": total, "signature": signature}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = pay(3_000, sig(3_000)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["total_sat"], 3_000);
    let st: Value =
        client.get(format!("{base}/v1/channels/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((st["phase"].as_str(), st["total_sat"].as_u64()), (Some("open"), Some(3_000)));

    // Refusals: code, status, unchanged channel.
    let cases: Vec<(&str, u64, String, u16, u32)> = vec![
        ("replay", 3_000, sig(3_000), 409, 104),
        ("above the deposit", 100_001, sig(3_500), 409, 105),
        ("not DER", 3_500, "3002010183".into(), 409, 107),
        ("bad signature", 3_500, sig(4_000), 409, 110),
        ("not hex", 3_500, "zz".into(), 400, 203),
    ];
    for (name, total, signature, status, code) in cases {
        let before = store.get(id, Role::Merchant).await.unwrap().unwrap();
        let r = pay(total, signature).await;
        assert_eq!(r.status().as_u16(), status, "{name}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], code, "{name}: {e}");
        assert_eq!(
            store.get(id, Role::Merchant).await.unwrap().unwrap(),
            before,
            "{name}: unchanged"
        );
    }
    let r = client
        .post(format!("{base}/v1/channels/{}:0/payments", "ab".repeat(32)))
        .json(&json!({"total_sat": 1, "signature": sig(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(format!("{base}/v1/channels/{id}/payments"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());

    // Close with the customer's signature; the settlement is mined.
    let digest = SecpMessage::from_digest(msg::close_digest(id));
    let close_sig =
        paychan_core::sig::secp().sign_ecdsa(&digest, &customer_key()).serialize_der().to_vec();
    let r = client
        .post(format!("{base}/v1/channels/{id}/close"))
        .json(&json!({"signature": close_sig.to_lower_hex_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let closed: Value = r.json().await.unwrap();
    let txid: paychan_core::bitcoin::Txid =
        closed["settlement_txid"].as_str().unwrap().parse().unwrap();
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert!(node.transaction(&txid).unwrap().1.is_some());

    // Admin API: refused without its token, answers with it; metrics count what happened.
    let r = client.get(format!("{base}/admin/channels")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(format!("{base}/admin/summary")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let list = common::admin_get(&client, &base, "/admin/channels", "s3cret").await;
    assert_eq!(list[0]["channel"], id.to_string());
    assert_eq!(list[0]["paid_sat"], 3_000);
    // A page at a time: the one channel, then nothing after it; a bad id is a clear 400.
    let page = common::admin_get(&client, &base, "/admin/channels?limit=1", "s3cret").await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["channel"], id.to_string());
    let next = format!("/admin/channels?limit=1&after={id}");
    let rest = common::admin_get(&client, &base, &next, "s3cret").await;
    assert_eq!(rest, json!([]));
    let r = client
        .get(format!("{base}/admin/channels?after=nonsense"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let summary = common::admin_get(&client, &base, "/admin/summary", "s3cret").await;
    assert_eq!(summary["paid_sat"], 3_000);
    assert_eq!(summary["revenue_sat"], 3_000);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("paychan_payments_total 1\n"), "{metrics}");
    assert!(metrics.contains("paychan_revenue_sat_total 3000\n"));
    assert!(metrics.contains("paychan_payment_rejections_total 4\n"), "{metrics}");
    assert!(metrics.contains("paychan_settlements_total 1\n"));
    assert!(metrics.contains("paychan_payment_latency_seconds_count 5\n"), "{metrics}");
    assert!(metrics.contains("paychan_store_commit_seconds_count"));
    assert!(metrics.contains("paychan_channels{phase=\"settling\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_payment_headers_have_size_limits() {
    use paychan_merchant::paywall::{PaywallConfig, PaywallLayer, Pricing};
    let Setup { server, dir: _dir, .. } = setup(101);
    let paid = axum::Router::new().route("/r", axum::routing::get(|| async { "ok" })).layer(
        PaywallLayer::new(
            server.clone(),
            PaywallConfig::new(Pricing::new(Amount::from_sat(1)), "127.0.0.1:9735"),
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve_with(server, listener, None, Some(paid), std::future::pending()));
    // A fresh connection per request: the server closes a connection after refusing a request
    // unread, and a pooled one would be reused after that close.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let big = vec![b'a'; 3 * 1024 * 1024];
    // The server answers 413 from the declared length and closes without reading the body, so
    // the client sees either the 413 or, when the close beats its upload, a broken pipe while
    // still sending (hyper's client does not read the answer then). Never anything else.
    let refused = |r: Result<reqwest::Response, reqwest::Error>, what: &str| match r {
        Ok(r) => assert_eq!(r.status(), 413, "{what}"),
        Err(e) => assert!(e.is_request(), "{what}: {e:?}"),
    };
    let r =
        client.put(format!("{base}/payment/{}", "ab".repeat(32))).body(big.clone()).send().await;
    refused(r, "a 3 MiB body to /payment");
    let r = client
        .post(format!("{base}/v1/channels/{}:0/payments", "ab".repeat(32)))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    refused(r, "a 3 MiB body to the JSON API");
    // A body just under the limit is read (and refused for what it says, not for its size).
    let r = client
        .post(format!("{base}/v1/channels/{}:0/payments", "ab".repeat(32)))
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 413, "1 MiB is within the limit");
    // A payment header above 8 KiB is refused unread.
    let r = client
        .get(format!("{base}/r"))
        .header("payment-signature", "A".repeat(9 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Headers beyond the server's limit: refused by HTTP itself.
    let r =
        client.get(format!("{base}/r")).header("x-big", "b".repeat(4 * 1024 * 1024)).send().await;
    match r {
        Ok(r) => assert_eq!(r.status().as_u16(), 431, "oversized headers refused"),
        Err(e) => assert!(e.is_request(), "oversized headers refused: {e:?}"),
    }
}
