//! `paychan bench`: speed figures beside their physical bound, measured in the same run on the
//! same cores (machines are noisy; ratios travel, absolute numbers do not).
//!
//! * `http`: paid requests/s through the paywall Layer (real merchant, SQLite store with
//!   `synchronous=FULL`, real channels opened over TCP, loopback HTTP with C connections)
//!   beside unpaid requests/s of the same endpoint, raw secp256k1 verifies/s and the
//!   validate-only bound (all cores doing nothing but the merchant's payment check).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use clap::Subcommand;
use paychan_core::bitcoin::secp256k1::Message;
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::paywall::{encode_header, ChannelPayment, PaymentSignature, X402_VERSION};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::{sign_payment, verify_payment};
use paychan_harness::fixtures::{customer_keypair, params_with, EXPIRY};
use paychan_harness::{Payout, World};
use paychan_merchant::paywall::Pricing;
use paychan_merchant::ChannelServer;
use paychan_node::Node;
use serde_json::json;

use super::common::{runtime, Common};
use crate::error::fail;
use crate::CliError;

/// `paychan bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Paid vs unpaid requests/s through the paywall Layer, beside the validate-only bound.
    Http {
        /// Concurrent connections (each paying on its own channel).
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Paid requests per connection.
        #[arg(long, default_value_t = 300)]
        requests: u32,
        /// Seconds of each bound measurement and of the unpaid run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Payments/s over loopback TCP with real stores, beside the sign + validate bound.
    Pay {
        /// Channels, each paying from its own task.
        #[arg(long, default_value_t = 100)]
        channels: u32,
        /// Payments per channel.
        #[arg(long, default_value_t = 1_000)]
        payments: u32,
        /// Payments in flight per channel (pipelined, acknowledged together).
        #[arg(long, default_value_t = 32)]
        window: u32,
        /// `sqlite` (files, synchronous=FULL), `memory` (SQLite on /dev/shm), `postgres`
        /// (PAYCHAN_TEST_POSTGRES_URL) or a postgres:// URL.
        #[arg(long, default_value = "sqlite")]
        store: super::bench_pay::StoreKind,
        /// Seconds of the bound measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// The merchant's peak RSS with N open channels in its store (bound: 256 MiB at 100,000).
    Memory {
        /// Open channels in the store.
        #[arg(long, default_value_t = 100_000)]
        channels: u32,
    },
    /// (Internal: the merchant process of `bench memory`.)
    #[command(hide = true)]
    MemoryLoad {
        /// The SQLite store.
        #[arg(long)]
        store: std::path::PathBuf,
        /// The key chain's directory.
        #[arg(long)]
        keys: std::path::PathBuf,
    },
    /// Many customers paying one merchant at once for a while, half over TCP, half over HTTP:
    /// fails on any error or any acknowledged payment missing from the merchant's store.
    Soak {
        /// Customers (each with its own channel and connection).
        #[arg(long, default_value_t = 1_000)]
        customers: u32,
        /// Seconds of paying.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Mempool acceptance and block assembly beside raw script verifications/s.
    Node {
        /// One-input transactions to accept and mine.
        #[arg(long, default_value_t = 2_000)]
        transactions: usize,
    },
}

pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `paychan bench`.
pub fn run(cmd: BenchCommand, common: &Common) -> Result<ExitCode, CliError> {
    match cmd {
        BenchCommand::Pay { channels, payments, window, store, seconds } => {
            if channels == 0 || payments == 0 || window == 0 || seconds <= 0.0 {
                return Err(fail(
                    "--channels, --payments, --window and --seconds must be above zero",
                ));
            }
            let r = runtime()?.block_on(super::bench_pay::bench_pay(
                channels, payments, window, store, seconds,
            ))?;
            let text = format!(
                "paychan bench pay ({} store, {channels} channels, window {window}, {} cores)\n  bound: sign + validate   {:>9.0} payments/s\n  payments                 {:>9.0} /s  = {:.0}% of the bound\n  latency per window       p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n  peak RSS                 {} MiB",
                r["store"].as_str().unwrap_or(""),
                r["cores"],
                r["bound_per_s"].as_f64().unwrap_or(0.0),
                r["payments_per_s"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99_9"].as_f64().unwrap_or(0.0),
                r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Memory { channels } => {
            let r = runtime()?.block_on(super::bench_memory::bench_memory(channels))?;
            let text = format!(
                "paychan bench memory ({channels} open channels in SQLite)\n  merchant loaded {} channels in {} s\n  merchant peak RSS  {} MiB (bound 256 MiB)",
                r["loaded"], r["load_seconds"], r["merchant_peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::MemoryLoad { store, keys } => {
            let r = runtime()?.block_on(super::bench_memory::load(&store, &keys))?;
            common.print(&r, &r.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Soak { customers, seconds } => {
            if customers == 0 || seconds <= 0.0 {
                return Err(fail("--customers and --seconds must be above zero"));
            }
            let r = runtime()?.block_on(super::bench_soak::soak(customers, seconds))?;
            let text = format!(
                "paychan bench soak ({customers} customers, {} s)\n  TCP payments       {}\n  paid HTTP requests {}\n  together           {} /s\n  errors             {}\n  acknowledged payments missing from the merchant's store: {}\n  peak RSS           {} MiB",
                r["seconds"], r["tcp_payments"], r["http_requests"], r["payments_per_s"], r["errors"], r["channels_with_lost_acks"], r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Node { transactions } => {
            if transactions == 0 {
                return Err(fail("--transactions must be above zero"));
            }
            say(&format!("accepting and mining {transactions} transactions…"));
            let r = super::bench_node::bench_node(transactions)?;
            let text = format!(
                "paychan bench node ({transactions} one-input P2WPKH transactions)\n  raw libbitcoinconsensus verify  {:>9.0} /s (bound)\n  mempool acceptance              {:>9.0} tx/s = {:.2}× the bound (p99 {:.0} µs)\n  assemble + connect the block    {:>9.1} ms (scripts cached from the mempool)\n  connect it verifying every input{:>9.1} ms = {:.2}× the bound\n  peak RSS                        {} MiB",
                r["raw_verify_per_s"].as_f64().unwrap_or(0.0),
                r["mempool_accept_per_s"].as_f64().unwrap_or(0.0),
                r["mempool_ratio"].as_f64().unwrap_or(0.0),
                r["accept_latency_us"]["p99"].as_f64().unwrap_or(0.0),
                r["assemble_and_connect_ms"].as_f64().unwrap_or(0.0),
                r["connect_verifying_ms"].as_f64().unwrap_or(0.0),
                r["connect_verifying_ratio"].as_f64().unwrap_or(0.0),
                r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Http { connections, requests, seconds } => {
            if connections == 0 || requests == 0 || seconds <= 0.0 {
                return Err(fail("--connections, --requests and --seconds must be above zero"));
            }
            let report = runtime()?.block_on(bench_http(connections, requests, seconds))?;
            let text = format!(
                "paychan bench http ({connections} connections, {cores} cores)\n  raw secp256k1 verify   {:>9.0} /s\n  validate-only bound    {:>9.0} /s\n  unpaid requests        {:>9.0} /s\n  paid requests          {:>9.0} /s  = {:.0}% of the lower bound ({:.0} /s)\n  CPU ceiling            {:>9.0} /s  = {:.0}% of the lower bound (unpaid work + one check per request on the same cores); paid = {:.0}% of it\n  paid latency           p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n  peak RSS               {} MiB",
                report["raw_verify_per_s"].as_f64().unwrap_or(0.0),
                report["validate_bound_per_s"].as_f64().unwrap_or(0.0),
                report["unpaid_per_s"].as_f64().unwrap_or(0.0),
                report["paid_per_s"].as_f64().unwrap_or(0.0),
                report["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                report["bound_per_s"].as_f64().unwrap_or(0.0),
                report["cpu_ceiling_per_s"].as_f64().unwrap_or(0.0),
                report["ceiling_vs_bound"].as_f64().unwrap_or(0.0) * 100.0,
                report["paid_vs_ceiling"].as_f64().unwrap_or(0.0) * 100.0,
                report["paid_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                report["paid_latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                report["paid_latency_ms"]["p99_9"].as_f64().unwrap_or(0.0),
                report["peak_rss_mib"],
                cores = report["cores"],
            );
            common.print(&report, &text)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `f` on every core for `secs`; returns the operations per second of all together.
pub fn on_all_cores(secs: f64, f: impl Fn(u64) + Sync) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for core in 0..cores {
            let (stop, done, f) = (&stop, &done, &f);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(core as u64 * 1_000_000 + n);
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Raw verifies/s and the merchant's validate-only bound (rebuild the payment, sighash,
/// strict-DER and low-S checks, verify), on all cores.
fn bounds(secs: f64) -> Result<(f64, f64), CliError> {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let kp = customer_keypair();
    let sigs: Vec<Vec<u8>> = (1..=256u64)
        .map(|t| sign_payment(&params, Amount::from_sat(t), &kp))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
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

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Opens `n` channels of `deposit` with the merchant at `peer`, mining a block every ten
/// opens (the wallet chains unconfirmed change, and the mempool limits chains to 25), then
/// confirms them all and lets the merchant see it.
pub async fn open_channels(
    customer: &paychan_customer::Customer,
    node: &Node,
    server: &ChannelServer,
    peer: &str,
    n: u32,
    deposit: Amount,
) -> Result<Vec<OutPoint>, CliError> {
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        ids.push(customer.open(peer, deposit, None).await.map_err(fail)?);
        if i % 10 == 9 {
            node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([])).map_err(fail)?;
        }
    }
    node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([])).map_err(fail)?;
    server.tick().await.map_err(fail)?;
    Ok(ids)
}

/// Peak resident set size of this process, MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> u64 {
    status_kib("VmHWM:") / 1024
}

/// Resident set size of this process now, MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> u64 {
    status_kib("VmRSS:") / 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .unwrap_or(0)
}

async fn bench_http(
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
    let (raw, validate) =
        tokio::task::spawn_blocking(move || bounds(secs)).await.map_err(fail)??;

    // A merchant (zero-conf, so the bench needs no blocks) with one paid and one free path to
    // the same handler, both through the Layer.
    let w = World::builder()
        .dir(dir)
        .policy(Policy { zero_conf: true, ..Policy::default() })
        .payout(Payout::Script(paychan_core::bitcoin::ScriptBuf::new_op_return([])))
        .start()
        .await
        .map_err(fail)?;
    let (node, server, peer) = (&w.node, &w.server, &w.peer);
    let price = Amount::from_sat(1);
    let handler = || async { "a result worth one satoshi\n" };
    let routes = axum::Router::new().route("/paid", get(handler)).route("/free", get(handler));
    let base = w.serve_paywalled(routes, Pricing::new(price).free("/free")).await.map_err(fail)?;

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
        channels.push(customer.open(peer, deposit, None).await.map_err(fail)?);
        if i % 10 == 9 {
            node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([])).map_err(fail)?;
        }
    }
    node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([])).map_err(fail)?;
    let mut signers = Vec::new();
    for id in &channels {
        let (customer, id) = (customer.clone(), *id);
        signers.push(tokio::spawn(async move {
            let mut headers = Vec::with_capacity(requests as usize);
            for _ in 0..requests {
                let p = customer.sign_payment(id, price).await.map_err(|e| e.to_string())?;
                let h = encode_header(&PaymentSignature {
                    x402_version: X402_VERSION,
                    accepted: None,
                    payload: ChannelPayment::new(id, Amount::from_sat(p.total_sat), &p.signature),
                })
                .map_err(|e| e.to_string())?;
                headers.push(h);
            }
            Ok::<_, String>(headers)
        }));
    }
    let mut presigned = Vec::new();
    for s in signers {
        presigned.push(s.await.map_err(fail)?.map_err(fail)?);
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
        latencies.extend(t.await.map_err(fail)?.map_err(fail)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let paid = latencies.len() as f64 / elapsed;
    latencies.sort_unstable();
    // Every paid request was charged exactly once.
    let charged: Amount = server.channels().await.map_err(fail)?.iter().map(|c| c.3).sum();
    let expected = price * (u64::from(connections) * u64::from(requests));
    if charged != expected {
        return Err(fail(format!("charged {charged}, expected {expected}")));
    }
    let bound = validate.min(unpaid);
    // What the cores can do at best: a paid request does all an unpaid one does plus one
    // payment check, on the same cores (its durable write not even counted).
    let ceiling = 1.0 / (1.0 / unpaid + 1.0 / validate);
    // The merchant's own view: how long its durable writes took.
    let metrics = server.metrics_text().await;
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
