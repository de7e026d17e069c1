//! One refused payment over every transport: the protocol over TCP, the JSON API, the
//! paywall's 402 and the 21 REST protocol each answer what the one mapping
//! ([`MerchantError::answer`]) says, so the code, the text and the HTTP status agree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{deposit_for, open_channel, setup, Setup};

use paychan_core::bitcoin::consensus::encode::serialize_hex;
use paychan_core::bitcoin::hex::DisplayHex;
use paychan_core::bitcoin::secp256k1::Keypair;
use paychan_core::bitcoin::{Amount, CompressedPublicKey, ScriptBuf};
use paychan_core::msg::{self, FrameDecoder, Message};
use paychan_core::paywall::{decode_header, reason, PaymentResponse};
use paychan_core::policy::Policy;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::two1::{build_payment, TWO1_FEE};
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_core::Error;
use paychan_harness::fixtures::{customer_key, key, p2wpkh, pubkey};
use paychan_merchant::answer::Op;
use paychan_merchant::paywall::{PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::{http, listen::Limits, tcp, MerchantError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One frame's exchange over a fresh connection: Hello, then `m`; the answer to `m`.
async fn over_tcp(
    server: &paychan_merchant::ChannelServer,
    addr: std::net::SocketAddr,
    m: Message,
) -> Message {
    let mut stream = common::Conn::dial(server, addr).await.stream;
    let hello =
        Message::Hello(msg::Hello { min_version: 1, max_version: 1, user_agent: "t".into() });
    let mut bytes = msg::encode_frame(&hello);
    bytes.extend(msg::encode_frame(&m));
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();
    let mut decoder = FrameDecoder::new(msg::MAX_FRAME_LEN);
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while answers.len() < 2 {
        while let Some(m) = decoder.next_message().unwrap() {
            answers.push(m);
        }
        if answers.len() == 2 {
            break;
        }
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut buf));
        let n = read.await.expect("answered within 20 s").unwrap();
        assert!(n > 0, "the server closed early");
        decoder.push(&buf[..n]);
    }
    answers.pop().unwrap()
}

/// A merchant serving TCP and HTTP (the JSON API and the 21 REST protocol, with a paywalled
/// resource behind them), an open paychan channel with 1,000 sat paid, and the refused
/// payment: 2,000 sat with the customer's signature of 1,500 sat.
struct World {
    setup: Setup,
    tcp: std::net::SocketAddr,
    base: String,
    client: reqwest::Client,
    id: paychan_core::bitcoin::OutPoint,
    forged: Vec<u8>,
}

/// What the one mapping answers for the refused payment.
fn refusal() -> MerchantError {
    MerchantError::Core(Error::BadSignature)
}

async fn world() -> World {
    let setup = setup(101);
    let server = setup.server.clone();
    let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tcp_listener.local_addr().unwrap();
    tokio::spawn(tcp::serve(server.clone(), tcp_listener, std::future::pending()));
    let paid = axum::Router::new()
        .route("/resource", axum::routing::get(|| async { "paid content" }))
        .layer(PaywallLayer::new(
            server.clone(),
            PaywallConfig::new(Pricing::new(Amount::from_sat(1_000)), "127.0.0.1:9735"),
        ));
    let app = http::app(server.clone(), None, Some(paid));
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http_listener.local_addr().unwrap());
    tokio::spawn(http::serve_app(app, http_listener, Limits::default(), std::future::pending()));

    let customer = open_channel(&server, &setup.node, 1).await;
    setup.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let params = customer.state().params.clone().unwrap();
    server.pay(&common::pay_msg(&customer, 1_000)).await.unwrap();
    let kp = Keypair::from_secret_key(paychan_core::sig::secp(), &customer_key());
    let forged = sign_payment(&params, Amount::from_sat(1_500), &kp).unwrap();
    World { setup, tcp, base, client: reqwest::Client::new(), id: params.id(), forged }
}

impl World {
    /// Nothing changed: the channel holds the 1,000 sat paid before.
    async fn unchanged(&self) {
        let (_, total) = self.setup.server.channel_status(self.id).await.unwrap();
        assert_eq!(total, Amount::from_sat(1_000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_the_mappings_code_and_text() {
    let w = world().await;
    let expected = refusal().answer(Op::Pay);
    assert_eq!(expected.code, 110);
    assert_eq!(expected.message, "signature does not verify under the customer key");
    let pay =
        msg::Pay { channel: Some(w.id.into()), total_sat: 2_000, signature: w.forged.clone() };
    let Message::Error(e) = over_tcp(&w.setup.server, w.tcp, Message::Pay(pay)).await else {
        panic!("an Error answers a refused payment")
    };
    assert_eq!((e.code, e.message.as_str()), (expected.code, expected.message.as_str()));
    w.unchanged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_the_mappings_status_code_and_text() {
    let w = world().await;
    let expected = refusal().answer(Op::Pay);
    let r = w
        .client
        .post(format!("{}/v1/channels/{}/payments", w.base, w.id))
        .json(&json!({"total_sat": 2_000, "signature": w.forged.to_lower_hex_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), expected.status);
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["code"].as_u64(), v["message"].as_str()), (Some(110), Some(&*expected.message)));
    w.unchanged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paywall_answers_a_402_with_the_mappings_code_and_reason() {
    let w = world().await;
    let expected = refusal().answer(Op::Redeem);
    assert_eq!(expected.message, refusal().answer(Op::Pay).message, "the same text");
    let url = format!("{}/resource", w.base);
    let required = paychan_harness::paywall::payment_required(&url).await.unwrap();
    let header = paychan_harness::paywall::payment_header(
        &required,
        w.id,
        Amount::from_sat(2_000),
        &w.forged,
    )
    .unwrap();
    let r = w.client.get(&url).header("payment-signature", header).send().await.unwrap();
    assert_eq!(r.status(), expected.paywall_status);
    assert_eq!(r.status(), 402);
    let refusal: PaymentResponse =
        decode_header(r.headers()["payment-response"].as_bytes()).unwrap();
    assert_eq!(
        (refusal.error_reason.as_deref(), refusal.error_message.as_deref()),
        (Some(reason::of_code(110)), Some(&*expected.message))
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"].as_str(), Some(&*expected.message));
    w.unchanged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_21_rest_protocol_answers_the_mappings_status_and_21_text() {
    let w = world().await;
    let expected = refusal().answer(Op::Pay);
    let (node, server, client, base) = (&w.setup.node, &w.setup.server, &w.client, &w.base);
    // A 21 channel, and a payment altered after it was signed.
    let (deposit, script, _) = deposit_for(node, server.two1_key().unwrap(), 2);
    let r = client
        .post(format!("{base}/payment"))
        .form(&[
            ("deposit_tx", serialize_hex(&deposit)),
            ("redeem_script", script.script().to_hex_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let funding = FundingOutput::find(&deposit, &script).unwrap();
    let change = ScriptBuf::new_p2pkh(&CompressedPublicKey(pubkey(&customer_key())).pubkey_hash());
    let params =
        ChannelParams::new(script, funding, change, Policy::default().dust_relay_fee).unwrap();
    let mut tx =
        build_payment(&params, Amount::from_sat(5_000), TWO1_FEE, &customer_key()).unwrap();
    tx.output[0].value += Amount::from_sat(1_000);
    tx.output[1].value -= Amount::from_sat(1_000);
    let r = client
        .put(format!("{base}/payment/{}", deposit.compute_txid()))
        .form(&[("payment_tx", serialize_hex(&tx))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), expected.two1_status);
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert_eq!(Some(text.as_str()), expected.two1_text.as_deref());
    assert_eq!(text, "Signature does not verify under the customer key.");
    let (_, total) = server.channel_status(params.id()).await.unwrap();
    assert_eq!(total, Amount::ZERO, "the 21 channel is unchanged");
}
