//! `paychan bench http`: paid requests/s through the paywall Layer beside unpaid requests/s of
//! the same endpoint, raw secp256k1 verifies/s and the validate-only bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use paychan_core::bitcoin::secp256k1::Message;
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::{sign_payment, verify_payment};
use paychan_harness::fixtures::{customer_keypair, params_with, EXPIRY};
use paychan_harness::{Payout, World};
use paychan_merchant::paywall::Pricing;
use serde_json::json;

use super::measure::{on_all_cores, peak_rss_mib, percentile, say};
use crate::error::fail;
use crate::CliError;
use paychan_harness::paywall::{payment_header, payment_required};

/// Raw verifies/s and the merchant's validate-only bound (rebuild the payment, sighash,
/// strict-DER and low-S checks, verify), on all cores.
fn bounds(secs: f64) -> Result<(f64, f64), CliError> {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let kp = customer_keypair();
    let sigs: Vec<Vec<u8>> = (1..=256u64)
        .map(|t| sign_payment(&params, Amount::from_sat(t), &kp))
        .collect::<Result<_, _>>()?;
    let secp = paychan_core::sig::secp();
    let msg = Message::from_digest([7; 32]);
    let raw_sig = secp.sign_ecdsa(&msg, &kp.secret_key());
    let pk = kp.public_key();
    let raw = on_all_cores(secs, |_| {
        let _ = std::hint::black_box(secp.verify_ecdsa(&msg, &raw_sig, &pk));
    });
    let validate = on_all_cores(secs, |i| {
        let t = i % 256;
        let _ = std::hint::black_box(verify_payment(
            &params,
            Amount::from_sat(t + 1),
            &sigs[t as usize],
        ));
    });
    Ok((raw, validate))
}

pub(super) async fn bench_http(
    connections: u32,
    requests: u32,
    secs: f64,
) -> Result<serde_json::Value, CliError> {
    let dir = std::env::temp_dir().join(format!("paychan-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = bench_http_in(&dir, connections, requests, secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench_http_in(
    dir: &std::path::Path,
    connections: u32,
    requests: u32,
    secs: f64,
) -> Result<serde_json::Value, CliError> {
    say("measuring the bounds (raw verify, validate-only) on all cores…");
    let (raw, validate) = tokio::task::spawn_blocking(move || bounds(secs)).await??;

    // A merchant (zero-conf, so the bench needs no blocks) with one paid and one free path to
    // the same handler, both through the Layer.
    let w = World::builder()
        .dir(dir)
        .policy(Policy { zero_conf: true, ..Policy::default() })
        .payout(Payout::Script(paychan_core::bitcoin::ScriptBuf::new_op_return([])))
        .start()
        .await?;
    let (node, server, peer) = (&w.node, &w.server, &w.peer);
    let price = Amount::from_sat(1);
    let handler = || async { "a result worth one satoshi\n" };
    let routes = axum::Router::new().route("/paid", get(handler)).route("/free", get(handler));
    let base = w.serve_paywalled(routes, Pricing::new(price).free("/free")).await?;

    // One client per connection, so each connection is its own TCP stream.
    let clients: Vec<reqwest::Client> = (0..connections)
        .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap_or_default())
        .collect();

    say(&format!("unpaid requests on {connections} connections…"));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in &clients {
        let (c, stop, count, url) =
            (c.clone(), stop.clone(), count.clone(), format!("{base}/free"));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if matches!(c.get(&url).send().await, Ok(r) if r.status() == 200) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let unpaid = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Channels: one per connection, opened by a real customer over TCP; the payments are
    // signed (and stored by the customer) before the timed run, so the run measures the
    // merchant, not the load generator's signing.
    say(&format!(
        "opening {connections} channels and pre-signing {} payments…",
        u64::from(connections) * u64::from(requests)
    ));
    let customer = &w.customer;
    let deposit = Amount::from_sat(
        (u64::from(requests) * price.to_sat() + 20_000).max(Policy::default().min_deposit.to_sat()),
    );
    let mut channels: Vec<OutPoint> = Vec::new();
    for i in 0..connections {
        channels.push(customer.open(peer, deposit, None).await?);
        if i % 10 == 9 {
            node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([]))?;
        }
    }
    node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([]))?;
    let required = Arc::new(payment_required(&format!("{base}/paid")).await?);
    let mut signers = Vec::new();
    for id in &channels {
        let (customer, id, required) = (customer.clone(), *id, required.clone());
        signers.push(tokio::spawn(async move {
            let mut headers = Vec::with_capacity(requests as usize);
            for _ in 0..requests {
                let p = customer.sign_payment(id, price).await.map_err(|e| e.to_string())?;
                let h = payment_header(&required, id, Amount::from_sat(p.total_sat), &p.signature)
                    .map_err(|e| e.to_string())?;
                headers.push(h);
            }
            Ok::<_, String>(headers)
        }));
    }
    let mut presigned = Vec::new();
    for s in signers {
        presigned.push(s.await?.map_err(fail)?);
    }

    say(&format!("paid requests on {connections} connections…"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, headers) in clients.iter().zip(presigned) {
        let (c, url) = (c.clone(), format!("{base}/paid"));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(headers.len());
            for h in headers {
                let t = Instant::now();
                let r = c
                    .get(&url)
                    .header("payment-signature", h)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let _ = r.bytes().await;
                if status != 200 {
                    return Err(format!("a paid request got HTTP {status}"));
                }
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?.map_err(fail)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let paid = latencies.len() as f64 / elapsed;
    latencies.sort_unstable();
    // Every paid request was charged exactly once.
    let charged: Amount = server.channels().await?.iter().map(|c| c.charged).sum();
    let expected = price * (u64::from(connections) * u64::from(requests));
    if charged != expected {
        return Err(fail(format!("charged {charged}, expected {expected}")));
    }
    let bound = validate.min(unpaid);
    // What the cores can do at best: a paid request does all an unpaid one does plus one
    // payment check, on the same cores (its durable write not even counted).
    let ceiling = 1.0 / (1.0 / unpaid + 1.0 / validate);
    // The merchant's own view: how long its durable writes took.
    let metrics = server.metrics_text().await?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let commit_ms = metric("paychan_store_commit_seconds_sum ")
        / metric("paychan_store_commit_seconds_count ").max(1.0)
        * 1000.0;
    Ok(json!({
        "bench": "http",
        "connections": connections,
        "paid_requests": latencies.len(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "raw_verify_per_s": raw.round(),
        "validate_bound_per_s": validate.round(),
        "unpaid_per_s": unpaid.round(),
        "paid_per_s": paid.round(),
        "bound_per_s": bound.round(),
        "ratio": (paid / bound * 1000.0).round() / 1000.0,
        "cpu_ceiling_per_s": ceiling.round(),
        "ceiling_vs_bound": (ceiling / bound * 1000.0).round() / 1000.0,
        "paid_vs_ceiling": (paid / ceiling * 1000.0).round() / 1000.0,
        "paid_vs_raw_verify": (paid / raw * 1000.0).round() / 1000.0,
        "paid_latency_ms": {
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "p99_9": percentile(&latencies, 0.999),
        },
        "store_write_ms_avg": (commit_ms * 1000.0).round() / 1000.0,
        "redeem_ms_avg": (metric("paychan_payment_latency_seconds_sum ")
            / metric("paychan_payment_latency_seconds_count ").max(1.0)
            * 1e6).round() / 1000.0,
        "peak_rss_mib": peak_rss_mib(),
    }))
}
