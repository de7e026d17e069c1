//! The channel protocol inside BOLT 8: a customer that dials the wrong node id stops at the
//! handshake, sending nothing else; the bytes of a payment on the wire are not its plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::Amount;
use paychan_customer::{Connection, CustomerError};
use paychan_harness::fixtures::{key, p2wpkh, pubkey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A customer dialing the merchant's listener under another node id fails the handshake
/// with an error that says so; one that dials a peer answering with garbage sends act one
/// (50 bytes) and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_node_id_fails_the_handshake_and_nothing_else_is_sent() {
    let w = paychan_harness::World::builder().start().await.unwrap();
    let wrong = format!("{}@{}", pubkey(&key(0x42)), w.listen);
    let e = Connection::connect(&wrong).await.unwrap_err();
    assert!(matches!(e, CustomerError::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("did not prove the expected node key"), "{e}");
    // The right one works.
    assert!(Connection::connect(&w.peer).await.is_ok());
    // An address without a node id is refused before any connection.
    let e = Connection::connect(&w.listen.to_string()).await.unwrap_err();
    assert!(e.to_string().contains("<node id"), "{e}");

    // An impostor at the address: it records what it receives and answers act two with bytes
    // it cannot have made (it does not hold the key).
    let impostor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = impostor.local_addr().unwrap();
    let received = tokio::spawn(async move {
        let (mut s, _) = impostor.accept().await.unwrap();
        let mut act_one = [0u8; 50];
        s.read_exact(&mut act_one).await.unwrap();
        let mut fake = [0u8; 50];
        fake[1..34].copy_from_slice(&pubkey(&key(0x43)).serialize());
        s.write_all(&fake).await.unwrap();
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        50 + rest.len()
    });
    let e = Connection::connect(&format!("{}@{at}", w.server.node_id())).await.unwrap_err();
    assert!(e.to_string().contains("did not prove the expected node key"), "{e}");
    assert_eq!(received.await.unwrap(), 50, "act one only: no Hello, no payment");
}

/// A relay between customer and merchant records every byte the customer sends: the
/// channel's outpoint and the payment's signature, which a plaintext `Pay` frame carries,
/// never appear on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_on_the_wire_is_not_its_plaintext() {
    let w = paychan_harness::World::builder().start().await.unwrap();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_at = relay.local_addr().unwrap();
    let wire = Arc::new(Mutex::new(Vec::<u8>::new()));
    let seen = wire.clone();
    let merchant = w.listen;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = relay.accept().await else { return };
            let server = tokio::net::TcpStream::connect(merchant).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    let through_relay = format!("{}@{relay_at}", w.server.node_id());
    let id = w.customer.open(&through_relay, Amount::from_sat(100_000), None).await.unwrap();
    w.node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    assert_eq!(w.customer.pay(id, Amount::from_sat(1_234)).await.unwrap(), Amount::from_sat(1_234));
    let (_, total) = w.server.channel_status(id).await.unwrap();
    assert_eq!(total, Amount::from_sat(1_234), "paid through the relay");

    let wire = wire.lock().unwrap().clone();
    assert!(wire.len() > 500, "the open and the payment went through the relay");
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&id.txid.to_byte_array()), "the channel's txid is not in clear");
    assert!(!contains(b"paychan/"), "not even the Hello's user agent");
    let state = w.customer.status(id).await.unwrap();
    assert_eq!(state.signed, Amount::from_sat(1_234));
}
