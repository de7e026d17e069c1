//! Hostile inputs (issue 13): paths that try to reach paid content through free paths, peers
//! that hold connections without speaking, handshakes that would burn key indexes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, Setup};
use paychan_core::bitcoin::Amount;
use paychan_core::msg::{self, FrameDecoder, Message, MAX_FRAME_LEN};
use paychan_merchant::listen::Limits;
use paychan_merchant::paywall::{reverse_proxy, PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::{http, tcp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 request, sent byte for byte as given (no client normalises the path):
/// the status and the `price` header.
async fn raw_get(addr: &str, path: &str) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let price = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("price:").map(|v| v.trim().to_string()));
    (status, price, text)
}

/// An upstream recording every path it is asked for.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(uri.path().to_string());
            format!("upstream: {}", uri.path())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn pricing() -> Pricing {
    Pricing::new(Amount::from_sat(10)).route("/premium/*", Amount::from_sat(50)).free("/public/*")
}

/// Through the reverse proxy: dot segments, encoded dots, duplicate slashes and encoded
/// slashes never reach priced content for free; the upstream sees only canonical paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_reach_paid_content_through_free_paths_via_the_proxy() {
    let Setup { server, dir: _dir, .. } = setup(101);
    let (upstream, seen) = recording_upstream().await;
    let app = reverse_proxy(upstream, Duration::from_secs(5))
        .layer(PaywallLayer::new(server.clone(), PaywallConfig::new(pricing(), "127.0.0.1:9735")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(http::serve_with(server, listener, None, Some(app), std::future::pending()));

    // The free path is free (and forwarded as it is).
    let (status, _, body) = raw_get(&addr, "/public/hello").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("upstream: /public/hello"), "{body}");

    // Through the free path to the default-priced /secret.txt: 402 at its price.
    for path in [
        "/public/../secret.txt",
        "/public/%2e%2e/secret.txt",
        "/public/.%2E/secret.txt",
        "/public//../secret.txt",
        "/public/./x/../../secret.txt",
        "//secret.txt",
        "/sec%72et.txt",
    ] {
        let (status, price, body) = raw_get(&addr, path).await;
        assert_eq!(status, 402, "{path}: {body}");
        assert_eq!(price.as_deref(), Some("10"), "{path}");
    }
    // Through the free path to the priced route: 402 at the route's price.
    for path in ["/public/../premium/report", "/%70remium/report", "//premium//report"] {
        let (status, price, body) = raw_get(&addr, path).await;
        assert_eq!(status, 402, "{path}: {body}");
        assert_eq!(price.as_deref(), Some("50"), "{path}");
    }
    // No canonical form: refused outright.
    for path in [
        "/public/..%2fsecret.txt",
        "/public%2F..%2Fsecret.txt",
        "/public/..%5csecret.txt",
        "/public/..;/secret.txt",
        "/public/../../secret.txt",
        "/public//../../secret.txt",
        "/public/%00",
        "/public/%zz",
    ] {
        let (status, _, body) = raw_get(&addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("bad request path"), "{path}: {body}");
    }
    // The upstream was asked for the free path only.
    assert_eq!(*seen.lock().unwrap(), vec!["/public/hello".to_string()]);
}

/// The Layer alone (an axum app's own routes, no canonicalising server around it): the price
/// is decided on the canonical path, and the handler sees that path too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_prices_the_canonical_path() {
    use tower::ServiceExt;
    let Setup { server, dir: _dir, .. } = setup(101);
    let app = axum::Router::new()
        .route(
            "/public/{*rest}",
            axum::routing::get(|uri: axum::http::Uri| async move { format!("public {uri}") }),
        )
        .fallback(|uri: axum::http::Uri| async move { format!("other {uri}") })
        .layer(PaywallLayer::new(server, PaywallConfig::new(pricing(), "127.0.0.1:9735")));
    let call = |path: &'static str| {
        let app = app.clone();
        async move {
            let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let price = resp.headers().get("price").map(|v| v.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            (status, price, String::from_utf8_lossy(&body).to_string())
        }
    };
    assert_eq!(call("/public/a").await.0, 200);
    for path in ["/public/../secret.txt", "/public/%2E%2E/secret.txt", "/public/.%2e/premium/x"] {
        let (status, _, body) = call(path).await;
        assert_eq!(status, 402, "{path}: {body}");
    }
    assert_eq!(call("/public/.%2e/premium/x").await.1.as_deref(), Some("50"));
    for path in ["/public/..%2Fsecret.txt", "/public/..;/secret.txt", "/public/%5c..%5csecret"] {
        let (status, _, body) = call(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    // A free request reaches the handler with its canonical path.
    let (status, _, body) = call("/public/./a//b").await;
    assert_eq!(status, 200);
    assert_eq!(body, "public /public/a/b");
}

async fn hello<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Option<Message> {
    let m =
        Message::Hello(msg::Hello { min_version: 1, max_version: 1, user_agent: String::new() });
    stream.write_all(&msg::encode_frame(&m)).await.ok()?;
    stream.flush().await.ok()?;
    read_message(stream, Duration::from_secs(5)).await
}

async fn read_message<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Option<Message> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(m)) = decoder.next_message() {
            return Some(m);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => decoder.push(&buf[..n]),
            _ => return None,
        }
    }
}

/// Whether the server closes `stream` within `within` (reads EOF or a reset).
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Two connections, 400 ms to say something, 1.5 s of silence at most.
fn small_limits() -> Limits {
    Limits {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(1500),
    }
}

/// The TCP listener: a peer that never says `Hello` is dropped after the handshake timeout,
/// a silent one after the idle timeout; past the cap new connections wait until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_and_timed_out() {
    let Setup { server, dir: _dir, .. } = setup(101);
    let limits = small_limits();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node_id = server.node_id();
    tokio::spawn(tcp::serve_limited(server, listener, limits, std::future::pending()));

    // Never starts the transport handshake: dropped after the handshake timeout.
    let mut mute = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut mute, Duration::from_secs(5)).await, "a mute peer is dropped");
    // A byte at a time gains nothing: the deadline runs from the start (here the bytes are
    // not even a handshake: plaintext is never read).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    let frame = msg::encode_frame(&Message::Hello(msg::Hello {
        min_version: 1,
        max_version: 1,
        user_agent: "one byte at a time".into(),
    }));
    for byte in frame {
        if slow.write_all(&[byte]).await.is_err()
            || closed_within(&mut slow, Duration::from_millis(150)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed && started.elapsed() < Duration::from_secs(2), "a trickling peer is dropped");

    // Two greeted connections fill the cap; a third waits, its handshake unanswered.
    let mut a = paychan_harness::dial(node_id, addr).await.unwrap();
    assert!(matches!(hello(&mut a).await, Some(Message::Welcome(_))));
    let mut b = paychan_harness::dial(node_id, addr).await.unwrap();
    assert!(matches!(hello(&mut b).await, Some(Message::Welcome(_))));
    let mut third = tokio::spawn(paychan_harness::dial(node_id, addr));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third).await.is_err(),
        "over the cap"
    );
    // One closes: the third is served.
    drop(a);
    let mut c =
        tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(hello(&mut c).await, Some(Message::Welcome(_))),
        "served once a connection closed"
    );
    // Silent after the handshake: closed after the idle timeout.
    assert!(closed_within(&mut b, Duration::from_secs(5)).await, "an idle peer is dropped");
}

/// The HTTP listener: no headers within the handshake timeout, or silence after a request,
/// and the connection is closed; past the cap new connections wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped_and_timed_out() {
    let Setup { server, dir: _dir, .. } = setup(101);
    let limits = small_limits();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = http::app(server, None, None);
    tokio::spawn(http::serve_app(app, listener, limits, std::future::pending()));

    // Nothing sent, or headers that never end: closed.
    let mut mute = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut mute, Duration::from_secs(5)).await, "no request: closed");
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut partial, Duration::from_secs(5)).await, "endless headers: closed");

    // Two open connections fill the cap; a third's request waits until one closes.
    let a = TcpStream::connect(&addr).await.unwrap();
    let b = TcpStream::connect(&addr).await.unwrap();
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let early = tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await;
    assert!(early.is_err(), "over the cap: not served yet");
    drop(a);
    drop(b);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Idle after a request on a kept-alive connection: closed.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let n =
        tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut kept, Duration::from_secs(5)).await, "idle keep-alive: closed");
}

fn hello_msg() -> msg::Hello {
    msg::Hello { min_version: 1, max_version: 1, user_agent: String::new() }
}

/// Every handshake and info request offers a key no other one offered (ADR 0029), at the cost
/// of one durable write per [`KEY_BLOCK`] of them; an open naming an index never offered, or
/// the node's or the 21 key's, is refused before anything happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_offers_its_own_key() {
    use paychan_merchant::{KeyChain, KEY_BLOCK, NODE_KEY_INDEX, TWO1_KEY_INDEX};
    let Setup { node, server, store, dir: _dir, .. } = setup(101);
    let mut offered = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let first = server.hello(&hello_msg()).await.unwrap();
    offered.insert(first.key_index);
    keys.insert(first.merchant_pubkey.clone());
    for _ in 0..999 {
        let w = server.hello(&hello_msg()).await.unwrap();
        assert!(offered.insert(w.key_index), "index {} offered twice", w.key_index);
        assert!(keys.insert(w.merchant_pubkey), "a key offered twice");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(server.clone(), listener, None, std::future::pending()));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let info: serde_json::Value =
            client.get(format!("{base}/v1/info")).send().await.unwrap().json().await.unwrap();
        let index = u32::try_from(info["key_index"].as_u64().unwrap()).unwrap();
        assert!(offered.insert(index), "index {index} offered twice");
    }
    // 1,200 offers: twelve reservations of a block, no more.
    let reserved = store.key_indexes_reserved(KeyChain::MERCHANT).await.unwrap();
    assert_eq!(reserved, 1_200u32.div_ceil(KEY_BLOCK) * KEY_BLOCK);
    assert!(offered.iter().all(|i| *i < reserved));

    // A channel opens with a key offered to it.
    let c = common::open_channel(&server, &node, 1).await;
    assert!(c.state().terms.key_index >= reserved, "a fresh key: {}", c.state().terms.key_index);

    // An index never offered, or the node's or the 21 key's, is refused before anything
    // happens.
    let reserved = store.key_indexes_reserved(KeyChain::MERCHANT).await.unwrap();
    for index in [reserved, reserved + 5, NODE_KEY_INDEX, TWO1_KEY_INDEX] {
        let open = msg::Open {
            funding_tx: vec![],
            customer_pubkey: vec![],
            merchant_pubkey: vec![],
            expiry: 0,
            change_script: vec![],
            key_index: index,
            ..Default::default()
        };
        let e = server.open(&open).await.unwrap_err();
        assert_eq!(e.to_wire(None).code, 16, "{e}");
    }
    assert_eq!(store.key_indexes_reserved(KeyChain::MERCHANT).await.unwrap(), reserved);
}

/// A settled channel is in the books and the API after a restart, and its open cannot be
/// replayed (a clear 4xx, not a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_channels_survive_a_restart() {
    use paychan_core::channel::Phase;
    let Setup { node, chain, store, clock, server, dir } = setup(101);
    let c = common::open_channel(&server, &node, 1).await;
    let id = c.state().params.as_ref().unwrap().id();
    node.mine(1, &common::p2wpkh_77()).unwrap();
    server.pay(&common::pay_msg(&c, 3_000)).await.unwrap();
    server.settle(id).await.unwrap();
    node.mine(1, &common::p2wpkh_77()).unwrap();
    server.tick().await.unwrap();
    assert_eq!(server.channel_status(id).await.unwrap(), (Phase::Settled, Amount::from_sat(3_000)));

    // A restart: nothing live to load, the settled channel still answers.
    let again = Arc::new(common::server_on(&dir, store, chain, clock));
    assert_eq!(again.load().await.unwrap(), 0);
    assert_eq!(again.channel_status(id).await.unwrap(), (Phase::Settled, Amount::from_sat(3_000)));
    let listed = again.channels().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id, listed[0].phase, listed[0].paid),
        (id, Phase::Settled, Amount::from_sat(3_000))
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(again.clone(), listener, Some("tok".into()), std::future::pending()));
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/v1/channels/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["phase"].as_str(), v["total_sat"].as_u64()), (Some("settled"), Some(3_000)));
    let summary = common::admin_get(&client, &base, "/admin/summary", "tok").await;
    assert_eq!(summary["revenue_sat"], 3_000, "{summary}");
    assert_eq!(summary["channels"]["settled"], 1, "{summary}");

    // The open again: refused with its own code, over the API as 409.
    let open = msg::Open {
        funding_tx: paychan_core::bitcoin::consensus::encode::serialize(
            c.state().funding_tx.as_ref().unwrap(),
        ),
        customer_pubkey: c.state().terms.script.customer().serialize().to_vec(),
        merchant_pubkey: c.state().terms.script.merchant().serialize().to_vec(),
        expiry: c.state().terms.script.expiry().unwrap().to_consensus_u32(),
        change_script: c.state().terms.change_script.to_bytes(),
        key_index: c.state().terms.key_index,
        ..Default::default()
    };
    let e = again.open(&open).await.unwrap_err();
    assert_eq!(e.to_wire(None).code, 15, "{e}");
    use paychan_core::bitcoin::hex::DisplayHex;
    let body = serde_json::json!({
        "funding_tx": open.funding_tx.to_lower_hex_string(),
        "customer_pubkey": open.customer_pubkey.to_lower_hex_string(),
        "merchant_pubkey": open.merchant_pubkey.to_lower_hex_string(),
        "key_index": open.key_index,
        "expiry": open.expiry,
        "change_script": open.change_script.to_lower_hex_string(),
    });
    let r = client.post(format!("{base}/v1/channels")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], 15);
}

/// Another writer moves a channel behind the live server's back (`paychan payment submit`,
/// another instance): the server's next write meets the conflict, reloads, checks the request
/// again and serves it; nothing is lost and both agree.
/// A channel the server took 1,000 on, then a second server on the same store (the other
/// writer) took 2,000 behind its back.
struct Behind {
    server: std::sync::Arc<paychan_merchant::ChannelServer>,
    other: paychan_merchant::ChannelServer,
    store: std::sync::Arc<dyn paychan_store::ChannelStore>,
    c: paychan_core::channel::customer::CustomerChannel,
    id: paychan_core::bitcoin::OutPoint,
    _dir: tempfile::TempDir,
}

async fn paid_behind_the_servers_back() -> Behind {
    let Setup { node, chain, store, clock, server, dir } = setup(101);
    let c = common::open_channel(&server, &node, 1).await;
    let id = c.state().params.as_ref().unwrap().id();
    node.mine(1, &common::p2wpkh_77()).unwrap();
    server.pay(&common::pay_msg(&c, 1_000)).await.unwrap();
    let other = common::server_on(&dir, store.clone(), chain, clock);
    other.load().await.unwrap();
    other.pay(&common::pay_msg(&c, 2_000)).await.unwrap();
    Behind { server, other, store, c, id, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_the_servers_back_is_picked_up() {
    let Behind { server, other, store, c, id, _dir } = paid_behind_the_servers_back().await;

    // The live server still thinks 1,000; its next payment goes through all the same.
    let ack = server.pay(&common::pay_msg(&c, 3_000)).await.unwrap();
    assert_eq!(ack.total_sat, 3_000);
    let row = store.get(id, paychan_store::Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(3_000));
    assert_eq!(server.channel_status(id).await.unwrap().1, Amount::from_sat(3_000));

    // Again, on the paid-request path: a charge behind its back, then a paid request.
    other.load().await.unwrap();
    other.pay(&common::pay_msg(&c, 3_500)).await.unwrap();
    let p = common::pay_msg(&c, 4_000);
    let r = server
        .redeem(id, Amount::from_sat(4_000), &p.signature, Amount::from_sat(10))
        .await
        .unwrap();
    assert_eq!(r.accepted, Amount::from_sat(4_000));
    let row = store.get(id, paychan_store::Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(4_000));
    // A stale total is refused for what it is, not as a store failure.
    let e = server.pay(&common::pay_msg(&c, 2_500)).await.unwrap_err();
    assert_eq!(e.to_wire(None).code, 104, "{e}");
}

/// Pipelined runs (ADR 0027) after another writer moved the channel: the first run's write
/// conflicts, the run queued behind it is refused by the store (chained behind a failed
/// write); both are checked again against the store and answered in order — without waiting
/// for each other (checking the first again must not wait for the second, which its caller
/// finishes only after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_runs_behind_a_conflict_are_checked_again_in_order() {
    let Behind { server, store, c, id, _dir, .. } = paid_behind_the_servers_back().await;

    let first = server.pay_submit(id, vec![common::pay_msg(&c, 3_000)]).await;
    let second = server.pay_submit(id, vec![common::pay_msg(&c, 4_000)]).await;
    let answers = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let a = server.pay_finish(first).await;
        let b = server.pay_finish(second).await;
        (a, b)
    })
    .await
    .expect("the runs are answered (no deadlock)");
    let total = |p: &paychan_merchant::PayAnswers| p.answers[0].as_ref().unwrap().total_sat;
    assert_eq!((total(&answers.0), total(&answers.1)), (3_000, 4_000));
    let row = store.get(id, paychan_store::Role::Merchant).await.unwrap().unwrap();
    assert_eq!(row.total, Amount::from_sat(4_000));
    let history: Vec<u64> = store
        .payments(id, paychan_store::Role::Merchant)
        .await
        .unwrap()
        .iter()
        .map(|p| p.total.to_sat())
        .collect();
    assert_eq!(history, [1_000, 2_000, 3_000, 4_000]);
}

/// `/metrics` (revenue figures) needs the admin token, except from loopback by default, and
/// for anyone when the operator says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_or_loopback() {
    use http::{AdminConfig, MetricsAccess};
    use tower::ServiceExt;
    let Setup { server, dir: _dir, .. } = setup(101);
    let ask = |access: MetricsAccess, from: &'static str, token: Option<&'static str>| {
        let app = http::app(
            server.clone(),
            Some(AdminConfig { token: "tok".into(), metrics: access, prices: None }),
            None,
        );
        async move {
            let mut req = axum::http::Request::get("/metrics");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let mut req = req.body(axum::body::Body::empty()).unwrap();
            let peer: std::net::SocketAddr = from.parse().unwrap();
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app.oneshot(req).await.unwrap().status().as_u16()
        }
    };
    let (lo, far) = ("127.0.0.1:5000", "192.0.2.7:5000");
    assert_eq!(ask(MetricsAccess::Loopback, lo, None).await, 200);
    assert_eq!(ask(MetricsAccess::Loopback, far, None).await, 401);
    assert_eq!(ask(MetricsAccess::Loopback, far, Some("tok")).await, 200);
    assert_eq!(ask(MetricsAccess::Loopback, far, Some("nope")).await, 401);
    assert_eq!(ask(MetricsAccess::Token, lo, None).await, 401);
    assert_eq!(ask(MetricsAccess::Token, lo, Some("tok")).await, 200);
    assert_eq!(ask(MetricsAccess::Public, far, None).await, 200);
    assert_eq!(MetricsAccess::default(), MetricsAccess::Loopback);
}

/// A payment header of another x402 version is not read as version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x402_v1_payment_is_refused() {
    use paychan_core::paywall::{
        decode_header, encode_header, ChannelPayment, PaymentPayload, PaymentRequired,
        PaymentResponse,
    };
    use tower::ServiceExt;
    let Setup { server, dir: _dir, .. } = setup(101);
    let app = axum::Router::new()
        .route("/r", axum::routing::get(|| async { "ok" }))
        .layer(PaywallLayer::new(server, PaywallConfig::new(pricing(), "127.0.0.1:9735")));
    let get = |h: Option<String>| {
        let mut req = axum::http::Request::get("/r");
        if let Some(h) = h {
            req = req.header("payment-signature", h);
        }
        app.clone().oneshot(req.body(axum::body::Body::empty()).unwrap())
    };
    let first = get(None).await.unwrap();
    let required: PaymentRequired =
        decode_header(first.headers()["payment-required"].as_bytes()).unwrap();
    let channel: paychan_core::bitcoin::OutPoint =
        format!("{}:0", "ab".repeat(32)).parse().unwrap();
    for version in [1, 3] {
        let p = PaymentPayload {
            x402_version: version,
            ..PaymentPayload::paying(
                &required,
                &required.accepts[0],
                ChannelPayment::new(channel, Amount::from_sat(10), &[0x30, 1]),
            )
        };
        let resp = get(Some(encode_header(&p).unwrap())).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "x402Version {version}");
        let refusal: PaymentResponse =
            decode_header(resp.headers()["payment-response"].as_bytes()).unwrap();
        assert_eq!(refusal.error_reason.as_deref(), Some("invalid_x402_version"));
    }
}

/// Each wire code means one thing: the merchant's own failures have a code of their own (it
/// was 1, the code of an invalid expiry), and a failure answered to every payment of a run
/// keeps its code.
#[test]
fn wire_codes_mean_one_thing() {
    use paychan_core::bitcoin::OutPoint;
    use paychan_core::Error;
    use paychan_merchant::{MerchantError, MERCHANT_FAILURE};
    let samples = [
        Error::InvalidExpiry { expiry: 0, reason: "" },
        Error::Malformed { what: "x", reason: String::new() },
        Error::ChannelExists(OutPoint::null()),
        Error::UnknownKeyIndex { index: 0, next: 0 },
        Error::FundingRefused { reason: String::new() },
        Error::SettlementTooSmall { total: Amount::ZERO },
        Error::ReplacementWouldBeDust,
        Error::UnknownChannel(OutPoint::null()),
        Error::Decode(String::new()),
    ];
    let mut codes: Vec<u32> = samples.iter().map(Error::code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), samples.len(), "distinct codes");
    assert!(!codes.contains(&MERCHANT_FAILURE));
    let store = MerchantError::Store(paychan_store::StoreError::NotFound(OutPoint::null()));
    assert_eq!(store.to_wire(None).code, MERCHANT_FAILURE);
    let shared = MerchantError::Shared(Arc::new(store));
    assert_eq!(shared.to_wire(None).code, MERCHANT_FAILURE);
    let refused = MerchantError::Shared(Arc::new(Error::ReplacementWouldBeDust.into()));
    assert_eq!(refused.to_wire(None).code, 19);
}
