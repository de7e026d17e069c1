//! `paychan bench soak`: many customers paying one merchant at once for a while, half over the
//! TCP protocol and half as paid HTTP requests through the paywall, with real stores. It
//! fails on any error, and at the end checks that every acknowledged payment is in the
//! merchant's store and that every paid request was charged once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use paychan_core::bitcoin::{Amount, ScriptBuf};
use paychan_core::paywall::{decode_header, PaymentResponse};
use paychan_harness::{Payout, World};
use paychan_merchant::paywall::Pricing;
use paychan_store::Role;
use serde_json::{json, Value};

use super::measure::{peak_rss_mib, rss_mib, say};
use crate::error::fail;
use crate::CliError;
use paychan_harness::paywall::{payment_header, payment_required};

/// Runs the soak: `customers` channels (half TCP, half HTTP) for `secs` seconds.
pub async fn soak(customers: u32, secs: f64) -> Result<Value, CliError> {
    let dir = std::env::temp_dir().join(format!("paychan-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let r = run(&dir, customers, secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn run(dir: &std::path::Path, customers: u32, secs: f64) -> Result<Value, CliError> {
    let w = World::builder()
        .dir(dir)
        .payout(Payout::Script(ScriptBuf::new_op_return([])))
        // Coins for the customers' deposits: one coinbase each, at most.
        .customer_blocks(100 + customers / 40 + 1)
        .start()
        .await?;
    let price = Amount::from_sat(1);
    let routes = axum::Router::new().route("/api", get(|| async { "paid\n" }));
    let url = format!("{}/api", w.serve_paywalled(routes, Pricing::new(price)).await?);
    let required = Arc::new(payment_required(&url).await?);
    let (node, server, peer, customer, mstore) =
        (&w.node, &w.server, &w.peer, &w.customer, &w.merchant_store);
    say(&format!("opening {customers} channels…"));
    let deposit = Amount::from_sat(1_000_000);
    let ids = super::measure::open_channels(
        customer,
        node,
        std::slice::from_ref(server),
        std::slice::from_ref(peer),
        customers,
        deposit,
    )
    .await?;

    say(&format!(
        "paying for {secs} s: {} over TCP, {} over HTTP…",
        ids.len().div_ceil(2),
        ids.len() / 2
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_payments = Arc::new(AtomicU64::new(0));
    let http_requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (customer, id, stop) = (customer.clone(), *id, stop.clone());
        if i % 2 == 0 {
            let n = tcp_payments.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    customer
                        .pay_many(id, &[Amount::ONE_SAT; 4])
                        .await
                        .map_err(|e| format!("TCP payment on {id}: {e}"))?;
                    n.fetch_add(4, Ordering::Relaxed);
                }
                Ok::<_, String>(())
            }));
        } else {
            // Each HTTP customer pays on its own channel and connection: signs (and stores)
            // a payment, sends it in the header, takes the receipt as the acknowledgement.
            let n = http_requests.clone();
            let (url, required) = (url.clone(), required.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .map_err(|e| e.to_string())?;
                while !stop.load(Ordering::Relaxed) {
                    let pay = customer
                        .sign_payment(id, price)
                        .await
                        .map_err(|e| format!("signing on {id}: {e}"))?;
                    let header = payment_header(
                        &required,
                        id,
                        Amount::from_sat(pay.total_sat),
                        &pay.signature,
                    )
                    .map_err(|e| e.to_string())?;
                    let r = http
                        .get(&url)
                        .header("payment-signature", header)
                        .send()
                        .await
                        .map_err(|e| format!("HTTP request: {e}"))?;
                    if r.status() != 200 {
                        return Err(format!("HTTP request on {id}: status {}", r.status()));
                    }
                    let receipt = r
                        .headers()
                        .get("payment-response")
                        .and_then(|h| decode_header::<PaymentResponse>(h.as_bytes()).ok())
                        .ok_or_else(|| format!("HTTP request on {id}: no receipt"))?;
                    let _ = r.bytes().await;
                    let (total, _) = receipt
                        .extra
                        .as_ref()
                        .ok_or_else(|| format!("HTTP request on {id}: receipt without totals"))?
                        .amounts()
                        .map_err(|e| format!("HTTP request on {id}: {e}"))?;
                    customer
                        .acknowledge(id, total)
                        .await
                        .map_err(|e| format!("receipt on {id}: {e}"))?;
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
    }
    let mut last = Instant::now();
    // Every 10 s: RSS now (SQLite's page caches fill up to their configured size as the
    // databases grow, then stay: `PAYCHAN_SQLITE_CACHE_MIB` sets it).
    let mut samples = Vec::new();
    while started.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            let rss = rss_mib();
            samples.push(json!({ "s": started.elapsed().as_secs(), "rss_mib": rss }));
            say(&format!(
                "  {:>4.0} s: {} TCP payments, {} paid HTTP requests, RSS {rss} MiB",
                started.elapsed().as_secs_f64(),
                tcp_payments.load(Ordering::Relaxed),
                http_requests.load(Ordering::Relaxed),
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Nothing acknowledged is missing from the merchant's store.
    let mut lost = 0u64;
    let mut charged_total = Amount::ZERO;
    for s in customer.list().await {
        let row = mstore.get(s.id, Role::Merchant).await?;
        let stored = row.as_ref().map_or(Amount::ZERO, |r| r.total);
        if s.acked > stored {
            lost += 1;
        }
    }
    for c in server.channels().await? {
        charged_total += c.charged;
    }
    let http_n = http_requests.load(Ordering::Relaxed);
    let r = json!({
        "bench": "soak",
        "customers": customers,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "tcp_payments": tcp_payments.load(Ordering::Relaxed),
        "http_requests": http_n,
        "payments_per_s": ((tcp_payments.load(Ordering::Relaxed) + http_n) as f64 / elapsed).round(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "channels_with_lost_acks": lost,
        "charged_sat": charged_total.to_sat(),
        "peak_rss_mib": peak_rss_mib(),
        "rss_samples": samples,
    });
    if !errors.is_empty() || lost > 0 || charged_total.to_sat() < http_n {
        return Err(fail(format!("soak failed: {r}")));
    }
    Ok(r)
}
