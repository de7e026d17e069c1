//! The channel server on a real loopback socket, with the real store and the embedded node:
//! a customer state machine opens a channel, pays 1,000 times pipelined, and closes; the
//! settlement is mined. Bad input gets its error code and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use paychan_chain::ChainSource;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, OutPoint, TxOut};
use paychan_core::channel::customer::{CustomerChannel, CustomerTerms};
use paychan_core::channel::Effect;
use paychan_core::msg::{self, Message};
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_harness::fixtures::{customer_key, key, p2wpkh, pubkey, spend_p2wpkh};
use paychan_merchant::tcp;
use paychan_store::Role;
use tokio::io::AsyncWriteExt;

/// Runs the customer's effects: persists complete at once, sends are returned.
fn drain(c: &mut CustomerChannel, chain: &dyn ChainSource) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_effect() {
        match e {
            Effect::Persist { id, .. } => c.persisted(id).unwrap(),
            Effect::Send(m) => out.push(m),
            Effect::Broadcast(tx) => {
                chain.broadcast(&tx).unwrap();
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pay_pipelined_and_close_over_tcp() {
    let common::Setup { node, chain, store, clock, server, dir } = common::setup(101);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tcp::serve(server.clone(), listener, std::future::pending()));
    let mut conn = common::Conn::dial(&server, addr).await;

    // Handshake.
    conn.send(&[Message::Hello(msg::Hello {
        min_version: 1,
        max_version: 1,
        user_agent: "test".into(),
    })])
    .await;
    let Some(Message::Welcome(w)) = conn.recv().await else { panic!("no welcome") };
    let merchant = PublicKey::from_slice(&w.merchant_pubkey).unwrap();
    let policy = w.policy.unwrap().to_policy().unwrap();

    // Open: the customer stores the channel, sends Open, broadcasts after Opened.
    let expiry = LockTime::from_consensus(node.now() as u32 + 86_400);
    let terms = CustomerTerms {
        script: ChannelScript::new(merchant, pubkey(&customer_key()), expiry).unwrap(),
        kind: OutputKind::P2wsh,
        change_script: p2wpkh(&customer_key()),
        dust_relay_fee: policy.dust_relay_fee,
        cutoff_distance: policy.cutoff_distance(false),
        key_index: w.key_index,
        customer_key_index: 0,
        peer: addr.to_string(),
    };
    let mut customer = CustomerChannel::new(terms, customer_key()).unwrap();
    let (block, _) = node.block(&node.block_hash(1).unwrap()).unwrap();
    let cb = &block.txdata[0];
    let coin = (OutPoint { txid: cb.compute_txid(), vout: 0 }, cb.output[0].clone());
    let change = coin.1.value - Amount::from_sat(101_000);
    let funding = spend_p2wpkh(
        &[coin],
        vec![
            TxOut {
                value: Amount::from_sat(100_000),
                script_pubkey: customer.funding_script_pubkey(),
            },
            TxOut { value: change, script_pubkey: p2wpkh(&key(0x77)) },
        ],
        &key(0x77),
    );
    let id = customer.handle_funding_built(funding).unwrap();
    conn.send(&drain(&mut customer, &*chain)).await;
    let Some(Message::Opened(_)) = conn.recv().await else { panic!("not opened") };
    customer.handle_opened(&[]).unwrap();
    drain(&mut customer, &*chain);
    assert!(node.mempool_txids().contains(&id.txid), "the funding is broadcast");
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    server.tick().await.unwrap();

    // A bad signature: its own error code, nothing changes.
    let bad =
        msg::Pay { channel: Some(id.into()), total_sat: 10, signature: vec![0x30, 0x01, 0x01] };
    conn.send(&[Message::Pay(bad)]).await;
    let Some(Message::Error(e)) = conn.recv().await else { panic!("no error") };
    assert_eq!(e.code, paychan_core::Error::SignatureNotDer.code());
    assert_eq!(store.get(id, Role::Merchant).await.unwrap().unwrap().total, Amount::ZERO);

    // 1,000 payments of 10 sat, pipelined: all sent at once, acknowledged in order.
    let now = clock();
    let mut frames = Vec::new();
    for _ in 0..1_000 {
        customer.pay(&now, Amount::from_sat(10)).unwrap();
        frames.extend(drain(&mut customer, &*chain));
    }
    conn.send(&frames).await;
    let mut last = 0;
    for _ in 0..1_000 {
        match conn.recv().await {
            Some(Message::PaymentAck(a)) => {
                assert!(a.total_sat > last, "acks in order");
                last = a.total_sat;
                customer.handle_ack(Amount::from_sat(a.total_sat)).unwrap();
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert_eq!(customer.state().acked, Amount::from_sat(10_000));
    let row = store.get(id, Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(10_000), "every acknowledged payment is stored");

    // A restarted server knows the channel from the store.
    let again = common::server_on(&dir, store.clone(), chain.clone(), clock.clone());
    assert_eq!(again.load().await.unwrap(), 1);
    let r = again.resume(&msg::Resume { channel: Some(id.into()) }).await.unwrap();
    assert_eq!(r.total_sat, 10_000);

    // Close: the merchant settles and answers with the txid; the settlement is mined.
    customer.close().unwrap();
    conn.send(&drain(&mut customer, &*chain)).await;
    let Some(Message::Closed(c)) = conn.recv().await else { panic!("not closed") };
    let txid: paychan_core::bitcoin::Txid =
        paychan_core::bitcoin::hashes::Hash::from_byte_array(c.settlement_txid.try_into().unwrap());
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    let (settlement, loc) = node.transaction(&txid).unwrap();
    assert!(loc.is_some(), "the settlement is mined");
    assert_eq!(settlement.output[0].value, Amount::from_sat(90_000), "the customer's change");
    assert_eq!(settlement.output[0].script_pubkey, p2wpkh(&customer_key()));
    let fee = Amount::from_sat(100_000) - settlement.output.iter().map(|o| o.value).sum::<Amount>();
    assert_eq!(
        settlement.output[1].value,
        Amount::from_sat(10_000) - fee,
        "the merchant's share less its fee"
    );
    assert_eq!(settlement.output[1].script_pubkey, p2wpkh(&key(0x55)));

    // A garbage frame closes that connection only.
    conn.stream.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    conn.stream.flush().await.unwrap();
    let Some(Message::Error(e)) = conn.recv().await else { panic!("no error for garbage") };
    assert_eq!(e.code, paychan_core::Error::Decode(String::new()).code());
    assert!(conn.recv().await.is_none(), "connection closed");
    let mut other = common::Conn::dial(&server, addr).await;
    other
        .send(&[Message::Hello(msg::Hello {
            min_version: 1,
            max_version: 1,
            user_agent: String::new(),
        })])
        .await;
    assert!(
        matches!(other.recv().await, Some(Message::Welcome(w2)) if w2.key_index == w.key_index + 1),
        "a fresh key per handshake"
    );
}
