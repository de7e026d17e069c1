//! The HTTP 402 paywall end to end on loopback: an axum app behind the Layer and a reverse
//! proxy in front of an upstream, paid by the paying client over real channels on the embedded
//! node (with a merchant that waits for one confirmation, and a miner that confirms).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::paywall::{
    decode_header, encode_header, ChannelPayment, PaymentPayload, PaymentRequired, PaymentResponse,
    SCHEME,
};
use paychan_customer::{Caps, CustomerError, PayingClient};
use paychan_harness::paywall::{payment_header, payment_required};
use paychan_merchant::paywall::{reverse_proxy, PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::{http, ChannelServer};

/// The harness's world, with a miner that confirms whatever waits in the mempool.
async fn world() -> paychan_harness::World {
    let w = paychan_harness::World::builder().start().await.unwrap();
    w.spawn_miner(Duration::from_millis(200));
    w
}

/// An app with a paid `/hello` (10 sat), a paid `/fail` that answers 500, and a free `/free`,
/// served on loopback; returns its base URL.
async fn paid_app(w: &paychan_harness::World) -> String {
    let app = Router::new()
        .route("/hello", get(|| async { "hello, paid world" }))
        .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke") }))
        .route("/free", get(|| async { "free" }));
    w.serve_paywalled(app, Pricing::new(Amount::from_sat(10)).free("/free")).await.unwrap()
}

async fn charged(server: &ChannelServer, id: OutPoint) -> (Amount, Amount) {
    let c = server.channels().await.unwrap().into_iter().find(|c| c.id == id).unwrap();
    (c.paid, c.charged)
}

fn client(w: &paychan_harness::World) -> PayingClient {
    let caps = Caps { confirm_timeout: Duration::from_secs(60), ..Caps::default() };
    PayingClient::new(w.customer.clone(), caps)
}

/// The receipt's (charged, total, credit), sat.
fn amounts(r: &PaymentResponse) -> (u64, u64, u64) {
    let (total, credit) = r.extra.as_ref().unwrap().amounts().unwrap();
    (r.amount.as_deref().unwrap().parse().unwrap(), total.to_sat(), credit.to_sat())
}

/// The `errorReason` of a refused paid request's `PAYMENT-RESPONSE`.
fn reason(r: &reqwest::Response) -> String {
    let refusal: PaymentResponse =
        decode_header(r.headers()["payment-response"].as_bytes()).unwrap();
    assert!(!refusal.success);
    assert_eq!(refusal.transaction, "");
    refusal.error_reason.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_gets_402_paid_gets_200_a_replay_is_refused() {
    let w = world().await;
    let base = paid_app(&w).await;
    let plain = reqwest::Client::new();

    // Unpaid: 402, in the x402 v2 shape and with the 21 headers.
    let r = plain.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["price"], "10");
    assert!(r.headers()["bitcoin-payment-channel-server"].to_str().unwrap().ends_with("/payment"));
    let required: PaymentRequired =
        decode_header(r.headers()["payment-required"].as_bytes()).unwrap();
    assert_eq!(required.x402_version, 2);
    let req = &required.accepts[0];
    assert_eq!((req.scheme.as_str(), req.amount.as_str()), (SCHEME, "10"));
    assert_eq!(req.extra.peer, w.peer);
    assert_eq!(req.extra.policy.min_confirmations, 1);
    assert_eq!(req.network, "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
    assert_eq!(req.asset, "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:1");
    assert_eq!(Some(req.pay_to.as_str()), w.peer.split('@').next(), "payTo is the node id");
    assert_eq!(req.max_timeout_seconds, 60 + 3_600, "a minute and an hour per confirmation");
    assert_eq!(required.resource.url, format!("{base}/hello"), "an absolute URL");
    assert!(r.headers().get("payment-response").is_none(), "nothing refused yet");
    // Free paths are free.
    let r = plain.get(format!("{base}/free")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "free".to_string()));

    // Paid: the client opens a channel, waits for its confirmation, pays, gets the body.
    let c = client(&w);
    let r = c.get(&format!("{base}/hello")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, paid world");
    assert_eq!(r.paid, Amount::from_sat(10));
    let receipt = r.receipt.clone().unwrap();
    assert!(receipt.success);
    assert_eq!(amounts(&receipt), (10, 10, 0));
    assert_eq!(receipt.transaction, "");
    let id = r.channel.unwrap();
    assert_eq!(charged(&w.server, id).await, (Amount::from_sat(10), Amount::from_sat(10)));
    assert_eq!(w.customer.status(id).await.unwrap().acked, Amount::from_sat(10));
    // A second request reuses the channel.
    let r = c.get(&format!("{base}/hello")).await.unwrap();
    assert_eq!((r.status, r.channel), (200, Some(id)));

    // A payment header used twice: served once, then refused with its code; nothing changes.
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let required = payment_required(&format!("{base}/hello")).await.unwrap();
    let header =
        payment_header(&required, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    let send = || plain.get(format!("{base}/hello")).header("PAYMENT-SIGNATURE", &header).send();
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200);
    let receipt: PaymentResponse =
        decode_header(r.headers()["payment-response"].as_bytes()).unwrap();
    assert_eq!(amounts(&receipt).1, 30);
    let before = charged(&w.server, id).await;
    let r = send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(reason(&r), "invalid_paychan_total_already_used");
    let refusal: PaymentRequired =
        decode_header(r.headers()["payment-required"].as_bytes()).unwrap();
    assert_eq!(refusal.accepts.len(), 1, "a refusal offers the way to pay again");
    assert_eq!(charged(&w.server, id).await, before, "a replay changes nothing");

    // Garbage in the header: 400, nothing changes.
    let r =
        plain.get(format!("{base}/hello")).header("PAYMENT-SIGNATURE", "%%%").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A tampered total: the signature does not verify.
    let forged =
        payment_header(&required, id, Amount::from_sat(pay.total_sat + 1_000), &pay.signature)
            .unwrap();
    let r = plain
        .get(format!("{base}/hello"))
        .header("PAYMENT-SIGNATURE", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(reason(&r), "invalid_paychan_payload_signature");
    assert_eq!(charged(&w.server, id).await, before);
    // A payment that names another price than the one offered: refused, nothing changes.
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let mut payload: PaymentPayload = decode_header(
        payment_header(&required, id, Amount::from_sat(pay.total_sat), &pay.signature)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    payload.accepted.amount = "1".into();
    let r = plain
        .get(format!("{base}/hello"))
        .header("PAYMENT-SIGNATURE", encode_header(&payload).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(reason(&r), "invalid_paychan_accepted_mismatch");
    assert_eq!(charged(&w.server, id).await, before);
    // Without `accepted` the header does not decode: 400.
    let mut json = serde_json::to_value(&payload).unwrap();
    json.as_object_mut().unwrap().remove("accepted");
    let r = plain
        .get(format!("{base}/hello"))
        .header("PAYMENT-SIGNATURE", encode_header(&json).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(reason(&r), "invalid_payload");
    assert_eq!(charged(&w.server, id).await, before);
    drop(w.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_on_one_channel_are_each_charged_once() {
    let w = world().await;
    let base = paid_app(&w).await;
    let c = Arc::new(client(&w));
    let first = c.get(&format!("{base}/hello")).await.unwrap();
    let id = first.channel.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = c.clone();
        let url = format!("{base}/hello");
        tasks.push(tokio::spawn(async move { c.get(&url).await }));
    }
    let mut served = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, paid world"[..]));
        assert_eq!(r.channel, Some(id));
        served += 1;
    }
    assert_eq!(served, 64);
    // 65 requests, 10 sat each: paid 650, charged 650, nothing twice, nothing lost.
    assert_eq!(charged(&w.server, id).await, (Amount::from_sat(650), Amount::from_sat(650)));
    let s = w.customer.status(id).await.unwrap();
    assert_eq!((s.signed, s.acked), (Amount::from_sat(650), Amount::from_sat(650)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_not_charged_and_its_credit_pays_the_next() {
    let w = world().await;
    let base = paid_app(&w).await;
    let c = client(&w);
    let id = c.get(&format!("{base}/hello")).await.unwrap().channel.unwrap();
    let before = charged(&w.server, id).await;
    let r = c.get(&format!("{base}/fail")).await.unwrap();
    assert_eq!(r.status, 500);
    let receipt = r.receipt.unwrap();
    assert!(!receipt.success);
    let (charged_now, _, credit) = amounts(&receipt);
    assert_eq!((charged_now, credit), (0, 10));
    assert_eq!(receipt.error_reason.as_deref(), Some("paychan_request_failed_not_charged"));
    let after = charged(&w.server, id).await;
    assert_eq!(after.1, before.1, "an upstream 500 leaves `charged` unchanged");
    assert_eq!(after.0, before.0 + Amount::from_sat(10), "the payment itself was accepted");
    // The next request uses that credit: 1 sat of new money for a 10 sat request.
    let r = c.get(&format!("{base}/hello")).await.unwrap();
    assert_eq!((r.status, r.paid), (200, Amount::ONE_SAT));
    assert_eq!(charged(&w.server, id).await, (Amount::from_sat(21), Amount::from_sat(20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_caps_hold_before_anything_is_paid() {
    let w = world().await;
    let base = paid_app(&w).await;
    let caps = Caps { max_price: Amount::from_sat(5), ..Caps::default() };
    let c = PayingClient::new(w.customer.clone(), caps);
    let e = c.get(&format!("{base}/hello")).await.unwrap_err();
    assert!(matches!(e, CustomerError::PriceTooHigh { .. }), "{e}");
    assert!(w.customer.list().await.is_empty(), "no channel opened, nothing signed");
    // A per-merchant cap below the merchant's smallest deposit: refused before opening.
    let caps = Caps { max_per_merchant: Amount::from_sat(5_000), ..Caps::default() };
    let c = PayingClient::new(w.customer.clone(), caps);
    let e = c.get(&format!("{base}/hello")).await.unwrap_err();
    assert!(matches!(e, CustomerError::SpendingCap { .. }), "{e}");
    assert!(w.customer.list().await.is_empty());
    // A cap that allows one channel of 10,000 sat: payments stop at the cap.
    let caps = Caps {
        max_per_merchant: Amount::from_sat(10_020),
        deposit: Some(Amount::from_sat(50_000)),
        confirm_timeout: Duration::from_secs(60),
        ..Caps::default()
    };
    let c = PayingClient::new(w.customer.clone(), caps);
    let r = c.get(&format!("{base}/hello")).await.unwrap();
    let id = r.channel.unwrap();
    assert_eq!(w.customer.status(id).await.unwrap().capacity, Amount::from_sat(10_020));
    c.get(&format!("{base}/hello")).await.unwrap();
    let spent = w.customer.status(id).await.unwrap().signed;
    assert_eq!(spent, Amount::from_sat(20));
    // 10,020 - 20 left: 1,000 more requests fit, so the cap is checked, not hit; lower the cap
    // through a new client that sees the spent total.
    let caps = Caps { max_per_merchant: Amount::from_sat(25), ..caps };
    let c = PayingClient::new(w.customer.clone(), caps);
    let e = c.get(&format!("{base}/hello")).await.unwrap_err();
    assert!(matches!(e, CustomerError::SpendingCap { .. }), "{e}");
    assert_eq!(w.customer.status(id).await.unwrap().signed, spent, "nothing signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_proxy_charges_for_an_upstream_and_refunds_its_failures() {
    let w = world().await;
    // The upstream: any API on loopback.
    let upstream =
        Router::new()
            .route(
                "/api/echo",
                get(|q: axum::extract::RawQuery| async move {
                    format!("echo {}", q.0.unwrap_or_default())
                }),
            )
            .route("/api/boom", get(|| async { (StatusCode::BAD_GATEWAY, "boom") }))
            .route("/health", get(|| async { "ok" }));
    let ul = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", ul.local_addr().unwrap());
    let (stop_upstream, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(ul, upstream)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let pricing =
        Pricing::new(Amount::from_sat(10)).route("/api/*", Amount::from_sat(25)).free("/health");
    let proxy = reverse_proxy(upstream_url, Duration::from_secs(5))
        .layer(PaywallLayer::new(w.server.clone(), PaywallConfig::new(pricing, w.peer.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve_with(
        w.server.clone(),
        listener,
        None,
        Some(proxy),
        std::future::pending(),
    ));

    let plain = reqwest::Client::new();
    let r = plain.get(format!("{base}/api/echo?x=1")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["price"].to_str().unwrap()), (402, "25"));
    let r = plain.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // The merchant's own API is still there beside the proxy.
    let r = plain.get(format!("{base}/v1/info")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let c = client(&w);
    let r = c.get(&format!("{base}/api/echo?x=1")).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"echo x=1"[..]));
    let id = r.channel.unwrap();
    assert_eq!(charged(&w.server, id).await.1, Amount::from_sat(25));
    // The upstream's 5xx: passed through, not charged.
    let r = c.get(&format!("{base}/api/boom")).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (502, &b"boom"[..]));
    assert_eq!(charged(&w.server, id).await.1, Amount::from_sat(25));
    // The upstream gone: 502, not charged.
    stop_upstream.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.get(&format!("{base}/api/echo")).await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(charged(&w.server, id).await.1, Amount::from_sat(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charge_is_durable_before_the_handler_runs() {
    use paychan_core::channel::merchant::MerchantState;
    let w = world().await;
    // The handler reads the merchant's store: the charge for this very request must be there.
    let store = w.merchant_store.clone();
    let app = Router::new()
        .route(
            "/audit",
            get(move || {
                let store = store.clone();
                async move {
                    let rows = store.list(paychan_store::Query::default()).await.unwrap();
                    let charged: u64 = rows
                        .iter()
                        .map(|r| MerchantState::decode(&r.state).unwrap().charged.to_sat())
                        .sum();
                    format!("{charged}")
                }
            }),
        )
        .layer(PaywallLayer::new(
            w.server.clone(),
            PaywallConfig::new(Pricing::new(Amount::from_sat(7)), w.peer.clone()),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(&w);
    for n in 1..=3u64 {
        let r = c.get(&format!("{base}/audit")).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8(r.body).unwrap(), format!("{}", 7 * n), "request {n}");
    }
}

/// Runs the x402 SDK script (`sdk/python/conformance/x402_headers.py`) on `job`; its report.
async fn run_sdk(python: std::ffi::OsString, job: serde_json::Value) -> serde_json::Value {
    let script =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python/conformance/x402_headers.py");
    run_script(python, script, job).await
}

/// Runs `program script` with `job` on stdin; its JSON report.
async fn run_script(
    program: std::ffi::OsString,
    script: &'static str,
    job: serde_json::Value,
) -> serde_json::Value {
    let python = program;
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every header shape the paywall and the paying client emit, fed to the x402 reference SDK for
/// Python (PyPI `x402`, pinned in `sdk/python/conformance/requirements.txt`): its decoders and
/// pydantic models must take each one whole (nothing unknown dropped, nothing missing); and
/// the SDK's own encodings (a payment it builds from our 402, its re-encoded 402s and receipts)
/// must be read by us and paid for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x402_reference_sdk_reads_every_header_and_we_read_its() {
    let Some(python) = std::env::var_os("PAYCHAN_X402_PYTHON") else {
        eprintln!(
            "skipped: PAYCHAN_X402_PYTHON is unset (.ci/run installs the x402 SDK and sets it)"
        );
        return;
    };
    let w = world().await;
    let base = paid_app(&w).await;
    let url = format!("{base}/hello");
    let plain = reqwest::Client::new();
    let header_of = |h: &reqwest::header::HeaderMap, name: &str| -> String {
        h.get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_string()
    };
    let (mut required, mut payloads, mut responses) = (Vec::new(), Vec::new(), Vec::new());

    // The 402 of an unpaid request, with the 21 headers beside x402's (two1 clients unaffected).
    let r = plain.get(&url).send().await.unwrap();
    required.push(header_of(r.headers(), "payment-required"));
    assert_eq!(header_of(r.headers(), "price"), "10");
    assert!(header_of(r.headers(), "bitcoin-payment-channel-server").ends_with("/payment"));
    // A paid request (the client opens the channel) and a reversed one (the upstream fails).
    let c = client(&w);
    let paid = c.get(&url).await.unwrap();
    assert_eq!(paid.status, 200);
    responses.push(header_of(&paid.headers, "payment-response"));
    let id = paid.channel.unwrap();

    // Refusals, one per reason we can provoke, each with the payload that provoked it.
    let offer = payment_required(&url).await.unwrap();
    // A total one satoshi up (below the 10 sat price), then one ten up (the price).
    let small = w.customer.sign_payment(id, Amount::from_sat(1)).await.unwrap();
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let good = payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    // The same signature with a high S (BIP 62: non-standard), and with another sighash byte.
    let (der, flag) = pay.signature.split_at(pay.signature.len() - 1);
    let parsed = paychan_core::bitcoin::secp256k1::ecdsa::Signature::from_der(der).unwrap();
    let mut high_s = paychan_core::sig::malleate_s(&parsed).serialize_der().to_vec();
    high_s.push(flag[0]);
    let mut wrong_flag = der.to_vec();
    wrong_flag.push(0x03);
    let mut mismatch: PaymentPayload = decode_header(good.as_bytes()).unwrap();
    mismatch.accepted.amount = "9".into();
    let mut v1 = mismatch.clone();
    v1.accepted.amount = "10".into();
    v1.x402_version = 3;
    let unknown: OutPoint = format!("{}:7", "cd".repeat(32)).parse().unwrap();
    // A total above the deposit (its signature cannot be right either; the deposit is checked
    // first).
    let capacity = w.customer.status(id).await.unwrap().capacity;
    let cases: Vec<(String, &str, bool)> = vec![
        (
            payment_header(&offer, id, Amount::from_sat(small.total_sat), &small.signature)
                .unwrap(),
            "invalid_paychan_amount_below_price",
            true,
        ),
        (
            payment_header(&offer, id, capacity + Amount::ONE_SAT, &pay.signature).unwrap(),
            "insufficient_funds",
            true,
        ),
        (
            payment_header(&offer, id, Amount::from_sat(pay.total_sat), &high_s).unwrap(),
            "invalid_paychan_payload_signature_high_s",
            true,
        ),
        (
            payment_header(&offer, id, Amount::from_sat(pay.total_sat), &[0x30, 0x01, 0x01])
                .unwrap(),
            "invalid_paychan_payload_signature",
            true,
        ),
        (
            payment_header(&offer, id, Amount::from_sat(pay.total_sat), &wrong_flag).unwrap(),
            "invalid_paychan_payload_sighash",
            true,
        ),
        (good.clone(), "", true), // paid: 200
        (good.clone(), "invalid_paychan_total_already_used", true),
        (
            payment_header(&offer, id, Amount::from_sat(pay.total_sat + 5), &pay.signature)
                .unwrap(),
            "invalid_paychan_payload_signature",
            true,
        ),
        (
            payment_header(&offer, unknown, Amount::from_sat(10), &pay.signature).unwrap(),
            "invalid_paychan_unknown_channel",
            true,
        ),
        (encode_header(&mismatch).unwrap(), "invalid_paychan_accepted_mismatch", true),
        (encode_header(&v1).unwrap(), "invalid_x402_version", false),
    ];
    for (header, reason_expected, is_payload) in cases {
        let r = plain.get(&url).header("payment-signature", &header).send().await.unwrap();
        if reason_expected.is_empty() {
            assert_eq!(r.status(), 200);
            responses.push(header_of(r.headers(), "payment-response"));
        } else {
            assert_eq!(reason(&r), reason_expected);
            required.push(header_of(r.headers(), "payment-required"));
            responses.push(header_of(r.headers(), "payment-response"));
        }
        // Every payload we sent is the SDK's to read but the x402Version 3 one (the SDK reads
        // any other version as v2 or v1 by design).
        if is_payload {
            payloads.push(header);
        }
    }
    // A channel whose funding has no confirmation yet (a merchant without a miner beside it):
    // not open.
    let quiet = paychan_harness::World::builder().start().await.unwrap();
    let quiet_base = quiet
        .serve_paywalled(
            Router::new().route("/hello", get(|| async { "hello" })),
            Pricing::new(Amount::from_sat(10)),
        )
        .await
        .unwrap();
    let quiet_url = format!("{quiet_base}/hello");
    let quiet_id = quiet.customer.open(&quiet.peer, Amount::from_sat(100_000), None).await.unwrap();
    let quiet_offer = payment_required(&quiet_url).await.unwrap();
    let p = quiet.customer.sign_payment(quiet_id, Amount::from_sat(10)).await.unwrap();
    let header =
        payment_header(&quiet_offer, quiet_id, Amount::from_sat(p.total_sat), &p.signature)
            .unwrap();
    let r = plain.get(&quiet_url).header("payment-signature", &header).send().await.unwrap();
    assert_eq!(reason(&r), "invalid_paychan_channel_not_open");
    required.push(header_of(r.headers(), "payment-required"));
    responses.push(header_of(r.headers(), "payment-response"));
    payloads.push(header);
    // A reversed charge (the upstream failed): its receipt.
    let failed = c.get(&format!("{base}/fail")).await.unwrap();
    responses.push(header_of(&failed.headers, "payment-response"));
    // The paying client's own header, as it sent it.
    payloads
        .push(payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap());

    // Payments the SDK will encode from our 402.
    let mut sign = Vec::new();
    for _ in 0..3 {
        let p = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
        sign.push(ChannelPayment::new(id, Amount::from_sat(p.total_sat), &p.signature));
    }
    let job = serde_json::json!({
        "required": required, "payloads": payloads, "responses": responses, "sign": sign,
    });
    // The TypeScript SDK (npm @x402/core) too, when installed (.ci/run installs it).
    match std::env::var_os("PAYCHAN_X402_NODE") {
        Some(node) => {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../sdk/typescript/conformance/x402_headers.mjs"
            );
            let ts = run_script(node, script, job.clone()).await;
            eprintln!("@x402/core {} checked {}", ts["sdk_version"], ts["checked"]);
            assert_eq!(ts["errors"], serde_json::json!([]), "@x402/core refused headers");
            assert_eq!(ts["checked"]["required"], required.len());
        }
        None => eprintln!("skipped @x402/core: PAYCHAN_X402_NODE is unset"),
    }
    let report = run_sdk(python, job).await;
    eprintln!("x402 SDK {} checked {}", report["sdk_version"], report["checked"]);
    assert_eq!(report["errors"], serde_json::json!([]), "the SDK refused or changed headers");
    assert_eq!(report["checked"]["required"], required.len());
    assert_eq!(report["checked"]["responses"], responses.len());
    assert!(required.len() >= 7 && responses.len() >= 10 && payloads.len() >= 7);

    // What the SDK encodes, we read: its payments are paid for…
    let before = charged(&w.server, id).await;
    for h in report["sdk_payloads"].as_array().unwrap() {
        let r =
            plain.get(&url).header("payment-signature", h.as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200, "an SDK-encoded payment");
        let receipt: PaymentResponse =
            decode_header(r.headers()["payment-response"].as_bytes()).unwrap();
        assert!(receipt.success);
    }
    let after = charged(&w.server, id).await;
    assert_eq!(after.1 - before.1, Amount::from_sat(30), "three SDK-encoded payments, 10 sat each");
    // …and its re-encodings of our 402s and receipts decode to the same values.
    for (ours, theirs) in required.iter().zip(report["sdk_required"].as_array().unwrap()) {
        let a: PaymentRequired = decode_header(ours.as_bytes()).unwrap();
        let b: PaymentRequired = decode_header(theirs.as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(a, b);
    }
    for (ours, theirs) in responses.iter().zip(report["sdk_responses"].as_array().unwrap()) {
        let a: PaymentResponse = decode_header(ours.as_bytes()).unwrap();
        let b: PaymentResponse = decode_header(theirs.as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(a, b);
    }
}

/// The x402 facilitator (`/x402/verify`, `/x402/settle`, `/x402/supported`): verify changes
/// nothing, settle charges as the paywall does, a settled payment is not settled twice,
/// requirements that are not this merchant's and a missing token are refused; then the x402
/// SDK's own facilitator client drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facilitator_verifies_and_settles_channel_payments() {
    use paychan_core::paywall::{FacilitatorRequest, SupportedResponse, VerifyResponse};
    use paychan_merchant::facilitator::{router, FacilitatorConfig};
    let w = world().await;
    let config = FacilitatorConfig {
        network: paychan_core::bitcoin::Network::Regtest,
        peer: w.peer.clone(),
        token: "tok".into(),
    };
    let app = Router::new()
        .route("/hello", get(|| async { "hello, paid world" }))
        .merge(router(w.server.clone(), config));
    let base =
        w.serve_paywalled(app, Pricing::new(Amount::from_sat(10)).free("/x402/*")).await.unwrap();
    let url = format!("{base}/hello");
    let c = client(&w);
    let id = c.get(&url).await.unwrap().channel.unwrap();
    let offer = payment_required(&url).await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, token: Option<&str>| {
        let mut r = http.post(format!("{base}/x402/{path}")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let request = |total_sat: u64, sig: &[u8]| {
        let payload: PaymentPayload = decode_header(
            payment_header(&offer, id, Amount::from_sat(total_sat), sig).unwrap().as_bytes(),
        )
        .unwrap();
        FacilitatorRequest {
            x402_version: 2,
            payment_payload: payload,
            payment_requirements: offer.accepts[0].clone(),
        }
    };
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let req = serde_json::to_value(request(pay.total_sat, &pay.signature)).unwrap();

    // No token, a wrong token: 401; a body that is no request: 400. Nothing charged.
    let before = charged(&w.server, id).await;
    assert_eq!(post("verify", req.clone(), None).await.unwrap().status(), 401);
    assert_eq!(post("settle", req.clone(), Some("nope")).await.unwrap().status(), 401);
    assert_eq!(
        post("settle", serde_json::json!({"x": 1}), Some("tok")).await.unwrap().status(),
        400
    );
    // Verify: valid, and nothing changes.
    let v: VerifyResponse =
        post("verify", req.clone(), Some("tok")).await.unwrap().json().await.unwrap();
    assert!(v.is_valid, "{v:?}");
    assert_eq!(v.payer, Some(id.to_string()));
    assert_eq!(charged(&w.server, id).await, before, "verify charges nothing");
    // Settle: charged, once.
    let s: PaymentResponse =
        post("settle", req.clone(), Some("tok")).await.unwrap().json().await.unwrap();
    assert!(s.success, "{s:?}");
    assert_eq!((s.amount.as_deref(), s.transaction.as_str()), (Some("10"), ""));
    assert_eq!(charged(&w.server, id).await.1, before.1 + Amount::from_sat(10));
    let again: PaymentResponse =
        post("settle", req.clone(), Some("tok")).await.unwrap().json().await.unwrap();
    assert!(!again.success);
    assert_eq!(again.error_reason.as_deref(), Some("invalid_paychan_total_already_used"));
    let v: VerifyResponse =
        post("verify", req.clone(), Some("tok")).await.unwrap().json().await.unwrap();
    assert_eq!(v.invalid_reason.as_deref(), Some("invalid_paychan_total_already_used"));
    // Requirements for another payee: refused before anything is looked at.
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let mut other = request(pay.total_sat, &pay.signature);
    other.payment_requirements.pay_to = "02".to_string() + &"11".repeat(32);
    other.payment_payload.accepted.pay_to = other.payment_requirements.pay_to.clone();
    let s: PaymentResponse = post("settle", serde_json::to_value(&other).unwrap(), Some("tok"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.error_reason.as_deref(), Some("invalid_paychan_requirements"));
    let after_refusals = charged(&w.server, id).await;
    // Supported: public.
    let sup: SupportedResponse =
        http.get(format!("{base}/x402/supported")).send().await.unwrap().json().await.unwrap();
    assert_eq!(sup.kinds[0].scheme, "paychan");
    assert_eq!(sup.signers["bip122:*"], vec![offer.accepts[0].pay_to.clone()]);

    // The SDK's facilitator client, against the same endpoints.
    let Some(python) = std::env::var_os("PAYCHAN_X402_PYTHON") else {
        eprintln!("skipped the SDK part: PAYCHAN_X402_PYTHON is unset (.ci/run sets it)");
        return;
    };
    let mut payments = Vec::new();
    for _ in 0..2 {
        let p = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
        payments
            .push(payment_header(&offer, id, Amount::from_sat(p.total_sat), &p.signature).unwrap());
    }
    let required = encode_header(&offer).unwrap();
    let job = serde_json::json!({"facilitator": {
        "url": format!("{base}/x402"), "token": "tok", "required": required, "payments": payments,
    }});
    let report = run_sdk(python, job).await;
    assert_eq!(report["supported"]["kinds"][0]["scheme"], "paychan", "{report}");
    for r in report["results"].as_array().unwrap() {
        assert_eq!(r["verify"]["isValid"], true, "{r}");
        assert_eq!(r["settle"]["success"], true, "{r}");
        assert_eq!(r["settle_again"]["success"], false, "{r}");
        assert_eq!(r["settle_again"]["errorReason"], "invalid_paychan_total_already_used");
    }
    assert_eq!(report["results"].as_array().unwrap().len(), 2);
    assert_eq!(
        charged(&w.server, id).await.1,
        after_refusals.1 + Amount::from_sat(20),
        "two SDK settlements, 10 sat each, nothing twice"
    );
}

/// Rate limits: a client over its address's rate, or a channel over its rate, gets `429` with
/// `Retry-After` and is not charged; the free quota serves without asking a price, then asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_get_429_and_are_not_charged() {
    use paychan_core::ratelimit::Rate;
    use paychan_merchant::paywall::RateLimits;
    let w = world().await;
    let app = Router::new().route("/hello", get(|| async { "hello, paid world" }));
    let mut config = PaywallConfig::new(Pricing::new(Amount::from_sat(10)), w.peer.clone());
    config.limits = RateLimits {
        per_ip: Some(Rate::parse("100/m").unwrap()),
        per_channel: Some(Rate::parse("2/h").unwrap()),
        free_per_ip: Some(Rate::parse("2/h").unwrap()),
    };
    let base = w.serve_paywalled_with(app, config).await.unwrap();
    let url = format!("{base}/hello");
    let plain = reqwest::Client::new();
    // The free quota: two requests served without a price, the third asks one.
    for _ in 0..2 {
        let r = plain.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-paychan-free"], "1");
    }
    assert_eq!(plain.get(&url).send().await.unwrap().status(), 402);
    // The paying client: its first request opens a channel and pays (1 of the channel's 2).
    let c = client(&w);
    let r = c.get(&url).await.unwrap();
    assert_eq!(r.status, 200);
    let id = r.channel.unwrap();
    assert_eq!(c.get(&url).await.unwrap().status, 200);
    let before = charged(&w.server, id).await;
    let acked = w.customer.status(id).await.unwrap().acked;
    // The channel's third paid request within the hour: 429, Retry-After, nothing charged.
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let offer = payment_required(&url).await.unwrap();
    let header =
        payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    let r = plain.get(&url).header("payment-signature", &header).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1_800).contains(&retry), "Retry-After {retry}");
    assert!(r.headers().get("payment-response").is_none(), "no receipt: nothing was taken");
    assert_eq!(charged(&w.server, id).await, before, "a limited request is not charged");
    assert_eq!(w.customer.status(id).await.unwrap().acked, acked);
    // The paying client sees the 429 as it is.
    assert_eq!(c.get(&url).await.unwrap().status, 429);
    assert_eq!(charged(&w.server, id).await, before);
}

/// Prices changed at runtime through the admin API take effect on the next request, and are
/// read back from their file after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_changed_through_the_admin_api_hold_now_and_after_a_restart() {
    use paychan_merchant::http::{admin_router, AdminConfig};
    use paychan_merchant::paywall::PriceBook;
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.json");
    // The admin API beside the paid routes is free (as `paychan serve` routes it).
    let pricing = Pricing::new(Amount::from_sat(10)).free("/admin/*");
    let prices = PriceBook::stored(pricing.clone(), file.clone()).unwrap();
    let app = Router::new().route("/api/report", get(|| async { "report" }));
    let mut config = PaywallConfig::new(pricing.clone(), w.peer.clone());
    config.prices = prices.clone();
    let admin = AdminConfig { prices: Some(prices.clone()), ..AdminConfig::new("tok") };
    let app = app.merge(admin_router(w.server.clone(), admin));
    let base = w.serve_paywalled_with(app, config).await.unwrap();
    let price = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { payment_required(&url).await.unwrap().accepts[0].amount.clone() }
    };
    assert_eq!(price("/api/report").await, "10");
    let http = reqwest::Client::new();
    // Without the token: 401, nothing changes.
    let r = http
        .post(format!("{base}/admin/prices/routes"))
        .json(&serde_json::json!({"pattern": "/api/*", "price_sat": 25}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(price("/api/report").await, "10");
    // A bad pattern: 400, nothing changes.
    let r = http
        .post(format!("{base}/admin/prices/routes"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"pattern": "api*x", "price_sat": 25}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!file.exists(), "nothing stored");
    // Set: the next request pays 25.
    let r = http
        .post(format!("{base}/admin/prices/routes"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"pattern": "/api/*", "price_sat": 25}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(price("/api/report").await, "25");
    let c = client(&w);
    let r = c.get(&format!("{base}/api/report")).await.unwrap();
    assert_eq!((r.status, r.price), (200, Amount::from_sat(25)));
    let table: serde_json::Value = http
        .get(format!("{base}/admin/prices"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["routes"][0], serde_json::json!({"pattern": "/api/*", "price_sat": 25}));
    // A restart reads the stored prices (the flags say 10 sat; the file wins).
    let again = PriceBook::stored(pricing, file.clone()).unwrap();
    let uri: axum::http::Uri = "/api/report".parse().unwrap();
    assert_eq!(
        again.price_of(&axum::http::Method::GET, &uri, &axum::http::HeaderMap::new()),
        Some(Amount::from_sat(25))
    );
    // Remove: back to the default.
    let r = http
        .delete(format!("{base}/admin/prices/routes?pattern=/api/*"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(price("/api/report").await, "10");
    let r = http
        .delete(format!("{base}/admin/prices/routes?pattern=/api/*"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The reverse proxy streams: server-sent events reach the client as the upstream sends them;
/// a WebSocket passes through the paywall, charged once at the upgrade; two upstreams are
/// chosen by path prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_streams_events_passes_websockets_and_routes_two_upstreams() {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use futures_util::{SinkExt, StreamExt};
    use paychan_merchant::proxy::{router as proxy, Upstream, Upstreams};
    let w = world().await;
    // Upstream one: events every 400 ms, a WebSocket echo, `/who`.
    let events = || async {
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            if n == 3 {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Some((Ok::<_, std::convert::Infallible>(format!("data: {n}\n\n")), n + 1))
        });
        ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream))
    };
    let echo = |ws: WebSocketUpgrade| async {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) || socket.send(m).await.is_err() {
                    break;
                }
            }
        })
    };
    let one = Router::new()
        .route("/events", get(events))
        .route("/ws", get(echo))
        .route("/who", get(|| async { "one" }));
    let two = Router::new().route("/files/who", get(|| async { "two" }));
    let serve = |app: Router| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    };
    let (one, two) = (serve(one).await, serve(two).await);
    let upstreams = Upstreams::new(vec![
        Upstream::parse(&one).unwrap(),
        Upstream::parse(&format!("/files={two}")).unwrap(),
    ]);
    let app = proxy(upstreams, Duration::from_secs(5), reqwest::Client::builder(), None);
    let base = w.serve_paywalled(app, Pricing::new(Amount::from_sat(10))).await.unwrap();

    // Two upstreams by prefix, both paid.
    let c = client(&w);
    let r = c.get(&format!("{base}/who")).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"one"[..]));
    let id = r.channel.unwrap();
    let r = c.get(&format!("{base}/files/who")).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"two"[..]));

    // Server-sent events: the first event arrives long before the stream ends.
    let offer = payment_required(&format!("{base}/events")).await.unwrap();
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let header =
        payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    let started = std::time::Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{base}/events"))
        .header("payment-signature", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: 0\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let all_at = started.elapsed();
    assert_eq!(rest, b"data: 1\n\ndata: 2\n\n");
    assert!(all_at >= Duration::from_millis(800), "the upstream took 800 ms: {all_at:?}");
    assert!(
        first_at + Duration::from_millis(600) < all_at,
        "first event at {first_at:?}, all at {all_at:?}"
    );

    // A WebSocket through the paywall: paid at the upgrade, charged once, then free talk.
    let before = charged(&w.server, id).await;
    let offer = payment_required(&format!("{base}/ws")).await.unwrap();
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let header =
        payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    let ws_url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .unwrap();
    request.headers_mut().insert("payment-signature", header.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("payment-response").is_some(), "the upgrade carries the receipt");
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    let after = charged(&w.server, id).await;
    assert_eq!(after.1 - before.1, Amount::from_sat(10), "charged once for the whole socket");
    // Without a payment the upgrade is a 402, and nothing is proxied.
    let e = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap_err();
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 402),
        other => panic!("expected a 402, got {other}"),
    }
}

/// A price hook: asked first for every request not on a free path; `null` leaves the price to
/// the static rules; a hook that fails makes the request a 503, nothing charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_hook_sets_prices_and_its_failure_charges_nothing() {
    use paychan_merchant::paywall::PriceHook;
    let w = world().await;
    let hook = Router::new().route(
        "/price",
        axum::routing::post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
            match v["path"].as_str() {
                Some("/broken") => {
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({})))
                }
                Some(p) if p.starts_with("/api/") => {
                    let big = v["query"].as_str() == Some("size=big");
                    (
                        StatusCode::OK,
                        axum::Json(serde_json::json!({"price_sat": if big { 70 } else { 7 }})),
                    )
                }
                _ => (StatusCode::OK, axum::Json(serde_json::json!({"price_sat": null}))),
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/price", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, hook).await });
    let app = Router::new()
        .route("/api/report", get(|| async { "report" }))
        .route("/other", get(|| async { "other" }))
        .route("/broken", get(|| async { "never served" }))
        .route("/free", get(|| async { "free" }));
    let mut config =
        PaywallConfig::new(Pricing::new(Amount::from_sat(10)).free("/free"), w.peer.clone());
    config.price_hook = Some(PriceHook::new(hook_url, Duration::from_secs(2)).unwrap());
    let base = w.serve_paywalled_with(app, config).await.unwrap();
    let amount = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { payment_required(&url).await.unwrap().accepts[0].amount.clone() }
    };
    assert_eq!(amount("/api/report").await, "7");
    assert_eq!(amount("/api/report?size=big").await, "70");
    assert_eq!(amount("/other").await, "10", "null: the static rules");
    // Paid at the hook's price.
    let c = client(&w);
    let r = c.get(&format!("{base}/api/report")).await.unwrap();
    assert_eq!((r.status, r.price), (200, Amount::from_sat(7)));
    let id = r.channel.unwrap();
    let before = charged(&w.server, id).await;
    // The hook fails: 503, not served, nothing charged (even with a payment attached).
    let pay = w.customer.sign_payment(id, Amount::from_sat(10)).await.unwrap();
    let offer = payment_required(&format!("{base}/other")).await.unwrap();
    let header =
        payment_header(&offer, id, Amount::from_sat(pay.total_sat), &pay.signature).unwrap();
    let r = reqwest::Client::new()
        .get(format!("{base}/broken"))
        .header("payment-signature", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_ne!(r.text().await.unwrap(), "never served");
    assert_eq!(charged(&w.server, id).await, before);
    // Free paths never ask the hook.
    let r = reqwest::get(format!("{base}/free")).await.unwrap();
    assert_eq!(r.status(), 200);
}
