//! Every payment rule broken, over TCP and over the JSON API, gets its own error code and leaves
//! the channel as it was: 23 compact-payment cases on both transports, then past the cutoff and
//! settled on both, and an oversized frame. (The 21 whole-transaction cases are in `two1_rest`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sends, setup, Setup};

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::hex::DisplayHex;
use paychan_core::bitcoin::secp256k1::{ecdsa, Keypair, Message as SecpMessage};
use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::customer::CustomerChannel;
use paychan_core::msg::{self, FrameDecoder, Message, MAX_FRAME_LEN};
use paychan_core::tx::payment::sign_payment;
use paychan_core::{Error, Now};
use paychan_harness::fixtures::{customer_key, key, p2wpkh};
use paychan_merchant::tcp;
use paychan_node::Node;
use paychan_store::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens a channel funded by the coinbase at `height`.
async fn open(conn: &mut common::Conn, node: &Node, height: u32) -> CustomerChannel {
    let Message::Welcome(w) = conn
        .ask(Message::Hello(msg::Hello {
            min_version: 1,
            max_version: 1,
            user_agent: String::new(),
        }))
        .await
    else {
        panic!("no welcome")
    };
    let mut c = common::customer_for(&w, node, height);
    let open = sends(&mut c).remove(0);
    assert!(matches!(conn.ask(open).await, Message::Opened(_)));
    c.handle_opened(&[]).unwrap();
    sends(&mut c);
    c
}

/// A payment over the JSON API: (HTTP status, error code).
async fn http_pay(
    client: &reqwest::Client,
    base: &str,
    channel: OutPoint,
    total: u64,
    signature: &[u8],
) -> (u16, u64) {
    let r = client
        .post(format!("{base}/v1/channels/{channel}/payments"))
        .json(
            &serde_json::json!({"total_sat": total, "signature": signature.to_lower_hex_string()}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    (status, body["code"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_broken_gets_its_code_and_changes_nothing() {
    let Setup { node, store, server, dir: _dir, .. } = setup(102);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tcp::serve(server.clone(), listener, std::future::pending()));
    let mut conn = common::Conn::dial(&server, addr).await;

    // Two channels: one confirmed, one not.
    let mut customer = open(&mut conn, &node, 1).await;
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let unconfirmed = open(&mut conn, &node, 2).await;
    let params = customer.state().params.clone().unwrap();
    let id = params.id();
    let kp = Keypair::from_secret_key(paychan_core::sig::secp(), &customer_key());

    // One good payment of 1,000 sat.
    let now =
        Now { time: node.now(), height: node.tip().0, median_time_past: node.median_time_past() };
    customer.pay(&now, Amount::from_sat(1_000)).unwrap();
    let pay = sends(&mut customer).remove(0);
    assert!(matches!(conn.ask(pay).await, Message::PaymentAck(a) if a.total_sat == 1_000));

    let good = |total: u64| sign_payment(&params, Amount::from_sat(total), &kp).unwrap();
    let with_flag = |total: u64, flag: u8| {
        let mut s = good(total);
        let n = s.len();
        s[n - 1] = flag;
        s
    };
    let high_s = {
        let s = good(2_000);
        let (flag, der) = s.split_last().unwrap();
        let mut h = paychan_core::sig::malleate_s(&ecdsa::Signature::from_der(der).unwrap())
            .serialize_der()
            .to_vec();
        h.push(*flag);
        h
    };
    let other_key = {
        let other = Keypair::from_secret_key(paychan_core::sig::secp(), &key(0x99));
        let digest = SecpMessage::from_digest([5; 32]);
        let mut s = paychan_core::sig::secp()
            .sign_ecdsa(&digest, &other.secret_key())
            .serialize_der()
            .to_vec();
        s.push(0x83);
        s
    };
    // The merchant's own channel key (the server's key chain: seed [7; 32] in `common`).
    let merchant_sig = {
        let keys = paychan_merchant::KeyChain::open(
            _dir.path(),
            &[7; 32],
            paychan_core::bitcoin::Network::Regtest,
            paychan_merchant::KeyChain::MERCHANT,
        )
        .unwrap();
        let mk = Keypair::from_secret_key(
            paychan_core::sig::secp(),
            &keys.secret(customer.state().terms.key_index).unwrap(),
        );
        assert_eq!(mk.public_key(), params.script().merchant());
        let (tx, flag) =
            paychan_core::tx::payment::payment_template(&params, Amount::from_sat(2_000)).unwrap();
        let digest = paychan_core::bitcoin::sighash::SighashCache::new(&tx)
            .p2wsh_signature_hash(0, params.witness_script(), params.capacity(), flag)
            .unwrap();
        let digest = SecpMessage::from(digest);
        let mut s = paychan_core::sig::secp()
            .sign_ecdsa(&digest, &mk.secret_key())
            .serialize_der()
            .to_vec();
        s.push(flag as u8);
        s
    };
    let other_channel_sig = {
        let other = unconfirmed.state().params.clone().unwrap();
        sign_payment(&other, Amount::from_sat(2_000), &kp).unwrap()
    };
    let trailing_garbage = {
        let mut s = good(2_000);
        let flag = s.pop().unwrap();
        s.extend([0x00, flag]);
        s
    };
    let no_flag = {
        let mut s = good(2_000);
        s.pop();
        s
    };
    let unknown = OutPoint { txid: Txid::from_byte_array([0xee; 32]), vout: 0 };
    let unconfirmed_id = unconfirmed.state().params.as_ref().unwrap().id();
    let cases: Vec<(&str, OutPoint, u64, Vec<u8>, u32)> = vec![
        ("unknown channel", unknown, 2_000, good(2_000), Error::UnknownChannel(unknown).code()),
        ("channel not confirmed", unconfirmed_id, 2_000, good(2_000), 102),
        ("replayed total", id, 1_000, good(1_000), 104),
        ("lower total", id, 500, good(500), 104),
        ("above the deposit", id, 100_001, good(100_000), 105),
        ("dust change signed SINGLE", id, 99_900, with_flag(99_900, 0x83), 106),
        ("not DER", id, 2_000, vec![0x30, 0x02, 0x01, 0x01, 0x83], 107),
        ("high S", id, 2_000, high_s, 108),
        ("SIGHASH_ALL", id, 2_000, with_flag(2_000, 0x01), 109),
        ("NONE without dust", id, 2_000, with_flag(2_000, 0x82), 109),
        ("0x03 without ANYONECANPAY", id, 2_000, with_flag(2_000, 0x03), 109),
        ("another key", id, 2_000, other_key, 110),
        ("a signature for another total", id, 3_000, good(2_000), 110),
        ("amount near u64::MAX", id, u64::MAX, good(2_000), 105),
        ("zero total", id, 0, good(2_000), 104),
        ("SIGHASH_ALL|ANYONECANPAY (0x81)", id, 2_000, with_flag(2_000, 0x81), 109),
        ("the whole deposit signed SINGLE", id, 100_000, with_flag(100_000, 0x83), 106),
        ("empty signature", id, 2_000, Vec::new(), 107),
        ("DER with trailing garbage", id, 2_000, trailing_garbage, 107),
        ("no sighash byte", id, 2_000, no_flag, 107),
        ("signed by the merchant's key", id, 2_000, merchant_sig, 110),
        ("another channel's signature", id, 2_000, other_channel_sig, 110),
        ("another output of the funding tx", OutPoint { vout: 1, ..id }, 2_000, good(2_000), 101),
    ];
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http_listener.local_addr().unwrap());
    tokio::spawn(paychan_merchant::http::serve(
        server.clone(),
        http_listener,
        None,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    for (name, channel, total, signature, code) in cases {
        // Over HTTP first: the same code, 409 (or 404 for an unknown channel), nothing changes.
        let before = store.get(id, Role::Merchant).await.unwrap().unwrap();
        let r = client
            .post(format!("{base}/v1/channels/{channel}/payments"))
            .json(&serde_json::json!({"total_sat": total, "signature": signature.to_lower_hex_string()}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{name} over HTTP: {body}");
        assert_eq!(status, if code == 101 { 404 } else { 409 }, "{name} over HTTP");
        assert_eq!(
            store.get(id, Role::Merchant).await.unwrap().unwrap(),
            before,
            "{name} over HTTP: unchanged"
        );
        // Then over TCP.
        let reply = conn
            .ask(Message::Pay(msg::Pay {
                channel: Some(channel.into()),
                total_sat: total,
                signature,
            }))
            .await;
        match reply {
            Message::Error(e) => assert_eq!(e.code, code, "{name}: {}", e.message),
            other => panic!("{name}: expected an error, got {other:?}"),
        }
        let after = store.get(id, Role::Merchant).await.unwrap().unwrap();
        assert_eq!(after, before, "{name}: the channel is unchanged");
    }
    // The channel still takes a good payment.
    customer.pay(&now, Amount::from_sat(1_000)).unwrap();
    let pay = sends(&mut customer).remove(0);
    assert!(matches!(conn.ask(pay).await, Message::PaymentAck(a) if a.total_sat == 2_000));

    // Past the cutoff (the node's clock 30 min before the expiry): refused with 103.
    let expiry = u64::from(params.script().expiry().unwrap().to_consensus_u32());
    node.set_mock_time(expiry - 4 * 3600 - 60).unwrap();
    let before = store.get(id, Role::Merchant).await.unwrap().unwrap();
    let reply = conn
        .ask(Message::Pay(msg::Pay {
            channel: Some(id.into()),
            total_sat: 3_000,
            signature: good(3_000),
        }))
        .await;
    assert!(matches!(&reply, Message::Error(e) if e.code == 103), "past the cutoff: {reply:?}");
    assert_eq!(http_pay(&client, &base, id, 3_000, &good(3_000)).await, (409, 103));
    assert_eq!(store.get(id, Role::Merchant).await.unwrap().unwrap(), before);

    // Settled: the merchant settles (its own decision), then a payment is refused with 102.
    server.settle(id).await.unwrap();
    let before = store.get(id, Role::Merchant).await.unwrap().unwrap();
    let reply = conn
        .ask(Message::Pay(msg::Pay {
            channel: Some(id.into()),
            total_sat: 3_000,
            signature: good(3_000),
        }))
        .await;
    assert!(matches!(&reply, Message::Error(e) if e.code == 102), "settled: {reply:?}");
    assert_eq!(http_pay(&client, &base, id, 3_000, &good(3_000)).await, (409, 102));
    assert_eq!(store.get(id, Role::Merchant).await.unwrap().unwrap(), before);

    // An oversized frame: an error and the connection closes; other connections go on.
    let mut raw = common::Conn::dial(&server, addr).await.stream;
    raw.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes()).await.unwrap();
    raw.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("the merchant closes the connection");
    let mut d = FrameDecoder::new(MAX_FRAME_LEN);
    d.push(&answer);
    assert!(
        matches!(d.next_message(), Ok(Some(Message::Error(e))) if e.code == Error::FrameTooLarge { len: 0, max: 0 }.code()),
        "the oversized frame is answered with its error"
    );
    let Message::Welcome(_) = conn
        .ask(Message::Hello(msg::Hello {
            min_version: 1,
            max_version: 1,
            user_agent: String::new(),
        }))
        .await
    else {
        panic!("the first connection still works")
    };
}
