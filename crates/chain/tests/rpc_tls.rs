//! The RPC client over HTTPS: a node reached through a TLS terminator (Core's RPC has no TLS),
//! here a TLS terminator on loopback in front of the embedded node's RPC server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use paychan_chain::{BitcoindRpc, ChainError, ChainSource, RpcAuth};
use paychan_harness::tls::{TestPki, TlsTerminator};
use paychan_transport::tls;

fn trusting(ca: &std::path::Path) -> Option<Arc<rustls::ClientConfig>> {
    Some(Arc::new(tls::client_config(Some(ca)).unwrap()))
}

/// A node, and a TLS terminator in front of its RPC with a certificate of a test CA.
fn behind_terminator() -> (common::Running, tempfile::TempDir, TestPki, TlsTerminator) {
    let node = common::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::write(dir.path()).unwrap();
    let target: SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    let relay = TlsTerminator::start(target, &pki).unwrap();
    (node, dir, pki, relay)
}

#[test]
fn the_rpc_client_reaches_a_node_behind_a_tls_terminator_trusting_its_ca() {
    let (node, _dir, pki, relay) = behind_terminator();
    let cookie = RpcAuth::CookieFile(node.cookie.clone());

    let plain = node.rpc();
    let https = BitcoindRpc::new_tls(&relay.url(), cookie.clone(), trusting(&pki.ca)).unwrap();
    let mined = node.node.mine(3, &paychan_core::bitcoin::ScriptBuf::new_op_return([])).unwrap();
    let tip = https.tip().unwrap();
    assert_eq!(tip, plain.tip().unwrap(), "the same node through TLS");
    assert_eq!(tip.height, 3);
    assert_eq!(tip.hash, mined[2]);
    // A block (a large answer), a node error as its own error, an absent height as None.
    assert_eq!(https.block(&mined[0]).unwrap().block_hash(), mined[0]);
    assert_eq!(https.block_hash(99).unwrap(), None);
    let refused = https.call::<serde_json::Value>("getblock", &["00".repeat(32).into()]);
    assert!(matches!(refused, Err(ChainError::Node { code: -5, .. })), "{refused:?}");
    // One kept-alive connection for all of these.
    assert_eq!(relay.accepted(), 1);

    // The terminator closes its idle connections: the next call opens a new one.
    relay.cut();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(https.tip().unwrap(), tip);
    assert_eq!(relay.accepted(), 2);

    // Wrong credentials: the node's 401, said as such.
    let wrong = BitcoindRpc::new_tls(
        &relay.url(),
        RpcAuth::UserPass("__cookie__".into(), "wrong".into()),
        trusting(&pki.ca),
    )
    .unwrap();
    let err = wrong.tip().unwrap_err().to_string();
    assert!(err.contains("HTTP 401") && err.contains("password"), "{err}");
}

#[test]
fn a_node_certificate_from_another_ca_is_refused_with_the_reason() {
    let (node, _dir, pki, relay) = behind_terminator();
    let cookie = RpcAuth::CookieFile(node.cookie.clone());

    for config in [trusting(&pki.other_ca), None] {
        // `None`: `new` trusts the system's roots, which did not sign the test CA.
        let rpc = match config {
            Some(c) => BitcoindRpc::new_tls(&relay.url(), cookie.clone(), Some(c)).unwrap(),
            None => match BitcoindRpc::new(&relay.url(), cookie.clone()) {
                Ok(rpc) => rpc,
                // A machine without system roots: said at construction.
                Err(e) => {
                    assert!(e.to_string().contains("no trusted root"), "{e}");
                    continue;
                }
            },
        };
        let err = rpc.tip().unwrap_err();
        assert!(matches!(err, ChainError::Transport(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("certificate") && err.contains("UnknownIssuer"), "{err}");
    }
    // Plain HTTP to the TLS port is no answer either.
    let plain =
        BitcoindRpc::new(&relay.url().replacen("https", "http", 1), cookie.clone()).unwrap();
    assert!(matches!(plain.tip(), Err(ChainError::Transport(_))));
    // An https URL without a TLS configuration is refused at once.
    let none = BitcoindRpc::new_tls(&relay.url(), cookie, None);
    assert!(matches!(none, Err(ChainError::Transport(_))));
}
