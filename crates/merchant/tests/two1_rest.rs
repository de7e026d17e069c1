//! The 21 REST protocol v2 at /payment, driven as two1's client does (form bodies), with the
//! transactions two1 builds: P2SH deposit of capacity + 3,000 + 125,000 sat, half-signed
//! SIGHASH_ALL payments with a 125,000 sat fee, close signed over SHA-256 of the txid text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{setup, Setup};

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::serialize_hex;
use paychan_core::bitcoin::hashes::{sha256, Hash};
use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::secp256k1::{Message as SecpMessage, PublicKey};
use paychan_core::bitcoin::{Amount, CompressedPublicKey, OutPoint, ScriptBuf, TxOut};
use paychan_core::policy::Policy;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::testkit::{customer_key, key, p2wpkh, pubkey, spend_p2wpkh};
use paychan_core::tx::two1::{build_payment, TWO1_FEE, TWO1_MIN_OUTPUT};
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_merchant::paywall::{PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::two1;

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two1_client_opens_pays_and_closes() {
    let Setup { node, server, dir: _dir, .. } = setup(101);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/payment", listener.local_addr().unwrap());
    // A paid resource beside /payment, as two1's `@payment.required(1000)` view.
    let paid = axum::Router::new()
        .route("/resource", axum::routing::get(|| async { "paid content" }))
        .layer(PaywallLayer::new(
            server.clone(),
            PaywallConfig::new(Pricing::new(Amount::from_sat(1_000)), "127.0.0.1:9735"),
        ));
    let app = two1::router(server.clone()).merge(paid);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    // GET /payment
    let info: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["version"], 2);
    assert_eq!(info["zeroconf"], false);
    let merchant =
        PublicKey::from_slice(&Vec::<u8>::from_hex(info["public_key"].as_str().unwrap()).unwrap())
            .unwrap();
    // A second GET shows the same key (two1 keeps one).
    let again: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["public_key"], info["public_key"]);

    // The deposit: P2SH of the redeem script, capacity + 3,000 + fee.
    let expiry = node.now() as u32 + 5 * 86_400;
    let script =
        ChannelScript::new(merchant, pubkey(&customer_key()), LockTime::from_consensus(expiry))
            .unwrap();
    let capacity = 200_000 + TWO1_MIN_OUTPUT.to_sat() + TWO1_FEE.to_sat();
    let (block, _) = node.block(&node.block_hash(1).unwrap()).unwrap();
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
    let redeem = script.script().to_hex_string();
    let r = http
        .post(&base)
        .form(&[
            ("deposit_tx", serialize_hex(&deposit).as_str()),
            ("redeem_script", redeem.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let opened: Value = r.json().await.unwrap();
    let deposit_txid = opened["deposit_txid"].as_str().unwrap().to_string();
    assert_eq!(deposit_txid, deposit.compute_txid().to_string());
    // The same deposit again: refused with two1's words.
    let r = http
        .post(&base)
        .form(&[
            ("deposit_tx", serialize_hex(&deposit).as_str()),
            ("redeem_script", redeem.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "That deposit has already been used to create a channel.");
    let r = http.post(&base).form(&[("redeem_script", redeem.as_str())]).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "No deposit provided.");

    // Confirming, then ready once the deposit confirms (checked when the payment arrives).
    let status: Value =
        http.get(format!("{base}/{deposit_txid}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "confirming");
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();

    let funding = FundingOutput::find(&deposit, &script).unwrap();
    let change_spk =
        ScriptBuf::new_p2pkh(&CompressedPublicKey(pubkey(&customer_key())).pubkey_hash());
    let params =
        ChannelParams::new(script, funding, change_spk, Policy::default().dust_relay_fee).unwrap();
    let payment = |amount: u64| {
        build_payment(&params, Amount::from_sat(amount), TWO1_FEE, &customer_key()).unwrap()
    };
    let put = |tx: String| {
        let http = http.clone();
        let url = format!("{base}/{deposit_txid}");
        async move { http.put(url).form(&[("payment_tx", tx.as_str())]).send().await.unwrap() }
    };
    let p1 = payment(3_000);
    let r = put(serialize_hex(&p1)).await;
    assert_eq!(r.status(), 200);
    let token: Value = r.json().await.unwrap();
    assert_eq!(
        token["payment_txid"],
        p1.compute_txid().to_string(),
        "the token is the half-signed txid"
    );

    // The 402 flow: the headers two1's client reads, then the token, single use.
    let resource = base.replace("/payment", "/resource");
    let r = http.get(&resource).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["price"], "1000");
    assert_eq!(r.headers()["bitcoin-payment-channel-server"], base.as_str());
    let first_token = token["payment_txid"].as_str().unwrap().to_string();
    let token = first_token.clone();
    let with_token = |t: String| {
        let http = http.clone();
        let url = resource.clone();
        async move {
            let r = http.get(url).header("Bitcoin-Payment-Channel-Token", t).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(with_token(token.clone()).await, (200, "paid content".to_string()));
    assert_eq!(
        with_token(token.clone()).await,
        (400, "RedeemPaymentError('Payment already redeemed.')".to_string())
    );
    assert_eq!(
        with_token("ab".repeat(32)).await,
        (400, "PaymentChannelNotFoundError('Payment not found.')".to_string())
    );
    assert_eq!(
        with_token("nonsense".into()).await,
        (400, "PaymentChannelNotFoundError('Payment not found.')".to_string())
    );
    let id = server.find_by_txid(&deposit_txid.parse().unwrap()).unwrap();
    let charged = |server: std::sync::Arc<paychan_merchant::ChannelServer>| async move {
        server.channels().await.into_iter().find(|c| c.0 == id).unwrap().3
    };
    assert_eq!(charged(server.clone()).await, Amount::from_sat(1_000), "charged once");

    let r = put(serialize_hex(&payment(4_000))).await;
    assert_eq!(r.status(), 200);
    let token2 = r.json::<Value>().await.unwrap()["payment_txid"].as_str().unwrap().to_string();
    assert_eq!(with_token(token2).await, (200, "paid content".to_string()));
    assert_eq!(charged(server.clone()).await, Amount::from_sat(2_000));
    // A replay is refused with two1's words; an unknown channel is a 404.
    let r = put(serialize_hex(&p1)).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (400, "Payment must be greater than 0.".to_string())
    );
    let r = http
        .put(format!("{base}/{}", "ab".repeat(32)))
        .form(&[("payment_tx", serialize_hex(&p1))])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (404, "Related channel not found.".to_string())
    );
    // JSON bodies work too.
    let r = http
        .put(format!("{base}/{deposit_txid}"))
        .json(&serde_json::json!({"payment_tx": "zz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let status: Value =
        http.get(format!("{base}/{deposit_txid}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "ready");
    assert_eq!(status["balance"], 4_000);
    assert_eq!(status["time_left"], expiry, "two1's time_left is the absolute expiry");

    // Close: no signature, a signature over another message, then the real one.
    let del = |sig: Option<String>| {
        let http = http.clone();
        let url = format!("{base}/{deposit_txid}");
        async move {
            match sig {
                Some(s) => {
                    http.delete(url).form(&[("signature", s.as_str())]).send().await.unwrap()
                }
                None => http.delete(url).send().await.unwrap(),
            }
        }
    };
    let r = del(None).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (400, "No signature provided.".to_string())
    );
    let sign = |m: &[u8]| {
        let d = sha256::Hash::hash(m).to_byte_array();
        paychan_core::sig::secp()
            .sign_ecdsa(&SecpMessage::from_digest(d), &customer_key())
            .serialize_der()
            .to_lower_hex_string()
    };
    let r = del(Some(sign(b"another message"))).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (400, "Invalid signature.".to_string())
    );
    let r = del(Some(sign(deposit_txid.as_bytes()))).await;
    assert_eq!(r.status(), 200);
    let closed: Value = r.json().await.unwrap();
    let settled: paychan_core::bitcoin::Txid =
        closed["payment_txid"].as_str().unwrap().parse().unwrap();
    assert_ne!(settled.to_string(), first_token, "the settled txid differs from the token");
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (tx, loc) = node.transaction(&settled).unwrap();
    assert!(loc.is_some(), "the settlement is mined");
    assert_eq!(tx.output[0].value, Amount::from_sat(4_000), "the merchant's P2PKH output");
    let r = put(serialize_hex(&payment(5_000))).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (400, "Payment channel closed.".to_string())
    );
    let status: Value =
        http.get(format!("{base}/{deposit_txid}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "closed");
    assert_eq!(status["balance"], 4_000);
}
