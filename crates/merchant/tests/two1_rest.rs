//! The 21 REST protocol v2 at /payment, driven as two1's client does (form bodies), with the
//! transactions two1 builds: P2SH deposit of capacity + 3,000 + 125,000 sat, half-signed
//! SIGHASH_ALL payments with a 125,000 sat fee, close signed over SHA-256 of the txid text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{deposit_for, setup, Setup};

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::serialize_hex;
use paychan_core::bitcoin::hashes::{sha256, Hash};
use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::secp256k1::{Message as SecpMessage, PublicKey};
use paychan_core::bitcoin::{Amount, CompressedPublicKey, OutPoint, ScriptBuf};
use paychan_core::policy::Policy;
use paychan_core::script::ChannelScript;
use paychan_core::tx::two1::{build_payment, TWO1_FEE};
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_harness::fixtures::{customer_key, key, p2wpkh, pubkey};
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
    let (deposit, script, expiry) = deposit_for(&node, merchant, 1);
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
    let id = server.find_by_txid(&deposit_txid.parse().unwrap()).await.unwrap().unwrap();
    let charged = |server: std::sync::Arc<paychan_merchant::ChannelServer>| async move {
        server.channels().await.unwrap().into_iter().find(|c| c.id == id).unwrap().charged
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

/// Malformed or malicious 21 payments (whole half-signed transactions) over `PUT /payment`:
/// each gets 400 with its exact text and leaves the stored channel byte-equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_two1_payments_are_refused_and_change_nothing() {
    use paychan_core::bitcoin::blockdata::opcodes::all::OP_PUSHNUM_1;
    use paychan_core::bitcoin::script::{Builder, PushBytesBuf};
    use paychan_core::bitcoin::transaction::Version;
    use paychan_core::bitcoin::{Sequence, Transaction, TxIn};
    use paychan_store::Role;

    let Setup { node, server, store, dir: _dir, .. } = setup(101);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/payment", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, two1::router(server)).await });
    let http = reqwest::Client::new();
    let info: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    let merchant =
        PublicKey::from_slice(&Vec::<u8>::from_hex(info["public_key"].as_str().unwrap()).unwrap())
            .unwrap();
    let (deposit, script, _) = deposit_for(&node, merchant, 1);
    let r = http
        .post(&base)
        .form(&[
            ("deposit_tx", serialize_hex(&deposit).as_str()),
            ("redeem_script", script.script().to_hex_string().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let deposit_txid = deposit.compute_txid();
    let funding = FundingOutput::find(&deposit, &script).unwrap();
    let id = funding.outpoint;
    let change_spk =
        ScriptBuf::new_p2pkh(&CompressedPublicKey(pubkey(&customer_key())).pubkey_hash());
    let params =
        ChannelParams::new(script, funding, change_spk, Policy::default().dust_relay_fee).unwrap();
    let payment = |amount: u64| {
        build_payment(&params, Amount::from_sat(amount), TWO1_FEE, &customer_key()).unwrap()
    };
    let put = |tx: Transaction| {
        let http = http.clone();
        let url = format!("{base}/{deposit_txid}");
        async move {
            let r = http.put(url).form(&[("payment_tx", serialize_hex(&tx))]).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // One good payment first.
    assert_eq!(put(payment(3_000)).await.0, 200);

    // The parts of a good scriptSig, to rebuild it wrongly.
    let good = payment(4_000);
    let pushes: Vec<Vec<u8>> = good.input[0]
        .script_sig
        .instructions()
        .map(|i| match i.unwrap() {
            paychan_core::bitcoin::script::Instruction::PushBytes(b) => b.as_bytes().to_vec(),
            paychan_core::bitcoin::script::Instruction::Op(_) => vec![0x01],
        })
        .collect();
    let (sig, redeem) = (pushes[0].clone(), pushes[2].clone());
    let script_sig = |sig: &[u8], selector_op1: bool, redeem: &[u8]| {
        let b = Builder::new().push_slice(PushBytesBuf::try_from(sig.to_vec()).unwrap());
        let b = if selector_op1 { b.push_opcode(OP_PUSHNUM_1) } else { b.push_int(0) };
        b.push_slice(PushBytesBuf::try_from(redeem.to_vec()).unwrap()).into_script()
    };
    let with = |f: &dyn Fn(&mut Transaction)| {
        let mut t = good.clone();
        f(&mut t);
        t
    };
    let other_script =
        ChannelScript::new(merchant, pubkey(&key(0x99)), params.script().expiry().unwrap())
            .unwrap()
            .script()
            .to_bytes();
    let high_s = {
        let (flag, der) = sig.split_last().unwrap();
        let s = paychan_core::bitcoin::secp256k1::ecdsa::Signature::from_der(der).unwrap();
        let mut h = paychan_core::sig::malleate_s(&s).serialize_der().to_vec();
        h.push(*flag);
        h
    };
    let mut none_flag = sig.clone();
    *none_flag.last_mut().unwrap() = 0x02;
    let malformed = |what: &str| format!("Malformed 21 payment: {what}.");
    let cases: Vec<(&str, Transaction, String)> = vec![
        (
            "altered after signing",
            with(&|t| {
                t.output[0].value += Amount::from_sat(1_000);
                t.output[1].value -= Amount::from_sat(1_000);
            }),
            "Signature does not verify under the customer key.".into(),
        ),
        (
            "extra input",
            with(&|t| {
                t.input.push(TxIn { previous_output: OutPoint::null(), ..t.input[0].clone() })
            }),
            malformed("must have exactly one input"),
        ),
        (
            "extra output",
            with(&|t| t.output.push(t.output[1].clone())),
            malformed("must have exactly two outputs"),
        ),
        (
            "outputs swapped",
            with(&|t| t.output.swap(0, 1)),
            malformed("output 0 must pay the merchant's P2PKH"),
        ),
        (
            "nLockTime set",
            with(&|t| t.lock_time = LockTime::from_consensus(1)),
            malformed("nLockTime must be 0"),
        ),
        ("version 3", with(&|t| t.version = Version(3)), malformed("version must be 1 or 2")),
        (
            "relative timelock",
            with(&|t| {
                t.version = Version::TWO;
                t.input[0].sequence = Sequence::from_height(10);
            }),
            malformed("input carries a relative timelock"),
        ),
        (
            "spends another outpoint",
            with(&|t| t.input[0].previous_output.vout = 7),
            malformed("does not spend the channel's deposit"),
        ),
        (
            "carries a witness",
            with(&|t| t.input[0].witness.push([1u8])),
            malformed("a P2SH spend carries no witness"),
        ),
        (
            "IF selector OP_0 (the refund branch)",
            with(&|t| t.input[0].script_sig = script_sig(&sig, false, &redeem)),
            malformed("branch selector must be OP_1 (the payment branch)"),
        ),
        (
            "another customer key in the redeem script",
            with(&|t| t.input[0].script_sig = script_sig(&sig, true, &other_script)),
            malformed("redeem script is not the channel's"),
        ),
        (
            "fee below the relay minimum",
            with(&|t| {
                t.output[1].value = params.capacity() - t.output[0].value - Amount::from_sat(10)
            }),
            malformed("fee is below the minimum relay fee of the settlement"),
        ),
        (
            "high-S signature",
            with(&|t| t.input[0].script_sig = script_sig(&high_s, true, &redeem)),
            "Signature has a high S value.".into(),
        ),
        (
            "SIGHASH_NONE instead of ALL",
            with(&|t| t.input[0].script_sig = script_sig(&none_flag, true, &redeem)),
            "Sighash flag 0x02 where 0x01 is required.".into(),
        ),
        ("replayed payment", payment(3_000), "Payment must be greater than 0.".into()),
        ("lower payment", payment(2_000), "Payment must be greater than 0.".into()),
    ];
    for (name, tx, text) in cases {
        let before = store.get(id, Role::Merchant).await.unwrap().unwrap();
        assert_eq!(put(tx).await, (400, text), "{name}");
        assert_eq!(
            store.get(id, Role::Merchant).await.unwrap().unwrap(),
            before,
            "{name}: unchanged"
        );
    }
    // The channel still takes the good one.
    assert_eq!(put(good).await.0, 200);
}

/// A 21 channel and its unredeemed token survive a restart although nothing is loaded at the
/// start: the channel is found by its deposit txid in the store, the token by one read of the
/// stored channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two1_token_paid_before_a_restart_is_redeemed_after_it() {
    let Setup { node, chain, store, clock, server, dir } = setup(101);
    let serve = |server: std::sync::Arc<paychan_merchant::ChannelServer>| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/payment", listener.local_addr().unwrap());
        let paid = axum::Router::new()
            .route("/resource", axum::routing::get(|| async { "paid content" }))
            .layer(PaywallLayer::new(
                server.clone(),
                PaywallConfig::new(Pricing::new(Amount::from_sat(1_000)), "127.0.0.1:9735"),
            ));
        let app = two1::router(server).merge(paid);
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    };
    let base = serve(server.clone()).await;
    let http = reqwest::Client::new();
    let info: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    let merchant =
        PublicKey::from_slice(&Vec::<u8>::from_hex(info["public_key"].as_str().unwrap()).unwrap())
            .unwrap();
    let (deposit, script, _) = deposit_for(&node, merchant, 1);
    let r = http
        .post(&base)
        .form(&[
            ("deposit_tx", serialize_hex(&deposit).as_str()),
            ("redeem_script", script.script().to_hex_string().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deposit_txid = deposit.compute_txid().to_string();
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let funding = FundingOutput::find(&deposit, &script).unwrap();
    let change_spk =
        ScriptBuf::new_p2pkh(&CompressedPublicKey(pubkey(&customer_key())).pubkey_hash());
    let params =
        ChannelParams::new(script, funding, change_spk, Policy::default().dust_relay_fee).unwrap();
    let payment =
        build_payment(&params, Amount::from_sat(3_000), TWO1_FEE, &customer_key()).unwrap();
    let r = http
        .put(format!("{base}/{deposit_txid}"))
        .form(&[("payment_tx", serialize_hex(&payment).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["payment_txid"].as_str().unwrap().to_string();

    // The merchant restarts: nothing open is loaded.
    let again = std::sync::Arc::new(common::server_on(&dir, store, chain, clock));
    assert_eq!(again.load().await.unwrap(), 1);
    assert_eq!(again.channels_in_memory(), 0);
    let base = serve(again.clone()).await;
    let status: Value =
        http.get(format!("{base}/{deposit_txid}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "ready", "found by its deposit txid in the store");
    assert_eq!(status["balance"], 3_000);
    let resource = base.replace("/payment", "/resource");
    let redeem = |t: String| {
        let (http, url) = (http.clone(), resource.clone());
        async move {
            let r = http.get(url).header("Bitcoin-Payment-Channel-Token", t).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        redeem("ab".repeat(32)).await,
        (400, "PaymentChannelNotFoundError('Payment not found.')".to_string())
    );
    assert_eq!(redeem(token.clone()).await, (200, "paid content".to_string()));
    assert_eq!(
        redeem(token).await,
        (400, "RedeemPaymentError('Payment already redeemed.')".to_string())
    );
}
