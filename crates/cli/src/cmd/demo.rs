//! `paychan demo`: the whole product in one command on a fresh machine. It starts the embedded
//! regtest node, funds a customer's and a merchant's wallet, starts a merchant with a paid
//! endpoint (channel server on TCP, paywalled HTTP API), has a customer make paid requests
//! through the paying client (which opens a channel on the first 402), closes, mines the
//! settlement and checks that the chain agrees with the books.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use clap::Args;
use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::{Amount, Network};
use paychan_core::policy::Policy;
use paychan_customer::{Caps, Customer, PayingClient};
use paychan_merchant::paywall::{PaywallConfig, PaywallLayer, Pricing};
use paychan_merchant::{http, tcp, ChannelServer, PayoutSource, ServerConfig};
use paychan_node::Node;
use paychan_store::{ChannelStore, SqliteStore};
use paychan_wallet::{KeyChain, Wallet};
use serde_json::json;

use super::common::{parse_amount, runtime, Common};
use crate::error::fail;
use crate::CliError;

/// Arguments of `paychan demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many paid requests.
    #[arg(long, default_value_t = 10_000)]
    requests: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// The price of one request.
    #[arg(long, value_parser = parse_amount, default_value = "10sat")]
    price: Amount,
    /// The channel's deposit.
    #[arg(long, value_parser = parse_amount, default_value = "200000sat")]
    deposit: Amount,
    /// Keep the demo's files (wallets, stores) in this directory instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Removes the demo's temporary directory when dropped.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A progress bar on stderr (a line every 10% when stderr is not a terminal).
struct Bar {
    total: u64,
    started: Instant,
    tty: bool,
    last_decile: AtomicU64,
}

impl Bar {
    fn show(&self, done: u64) {
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = 30u64;
            let filled = (done * width / self.total.max(1)) as usize;
            let _ = write!(
                err,
                "\r  paying   [{}{}] {done:>6}/{} requests  {rate:>7.0} req/s",
                "#".repeat(filled),
                "-".repeat(width as usize - filled),
                self.total
            );
            if done == self.total {
                let _ = writeln!(err);
            }
        } else {
            let decile = done * 10 / self.total.max(1);
            if decile > self.last_decile.fetch_max(decile, Ordering::Relaxed) {
                let _ = writeln!(err, "  paying   {done}/{} requests  {rate:.0} req/s", self.total);
            }
        }
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `paychan demo`.
pub fn run(a: DemoArgs, common: &Common) -> Result<ExitCode, CliError> {
    if a.requests == 0 || a.concurrency == 0 {
        return Err(fail("--requests and --concurrency must be at least 1"));
    }
    let needed = a
        .price
        .checked_mul(u64::from(a.requests))
        .ok_or_else(|| fail("--price × --requests overflows"))?;
    let policy = Policy::default();
    if a.deposit < needed + policy.close_out {
        return Err(fail(format!(
            "a deposit of {} sat cannot pay {} requests of {} sat (and keep the merchant's close-out reserve of {} sat): give --deposit {} sat or more",
            a.deposit.to_sat(),
            a.requests,
            a.price.to_sat(),
            policy.close_out.to_sat(),
            (needed + policy.close_out).to_sat()
        )));
    }
    let (dir, _scratch) = match &a.keep {
        Some(d) => (d.clone(), Scratch(None)),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let d =
                std::env::temp_dir().join(format!("paychan-demo-{}-{nanos}", std::process::id()));
            (d.clone(), Scratch(Some(d)))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    runtime()?.block_on(demo(a, policy, dir, common))
}

async fn demo(
    a: DemoArgs,
    policy: Policy,
    dir: PathBuf,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let began = Instant::now();
    // 1. The chain: the embedded regtest node, in this process.
    let node = Node::in_memory();
    let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
    let clock = paychan_chain::node_clock(&node);
    say("paychan demo: starting the embedded regtest node");

    // 2. Two wallets, funded by mining.
    let mut mwallet =
        Wallet::create(&dir.join("merchant"), Network::Regtest, None).map_err(fail)?;
    let mut cwallet =
        Wallet::create(&dir.join("customer"), Network::Regtest, None).map_err(fail)?;
    node.mine(1, &mwallet.new_address().map_err(fail)?.script_pubkey()).map_err(fail)?;
    node.mine(101, &cwallet.new_address().map_err(fail)?.script_pubkey()).map_err(fail)?;
    mwallet.sync(&*chain).map_err(fail)?;
    cwallet.sync(&*chain).map_err(fail)?;
    let cbalance = cwallet.balance().confirmed;
    say(&format!(
        "  funded   customer wallet {} sat, merchant wallet {} sat",
        cbalance.to_sat(),
        mwallet.balance().confirmed.to_sat()
    ));

    // 3. The merchant: channel server, store, paid endpoint.
    let keys = mwallet.key_chain(KeyChain::MERCHANT).map_err(fail)?;
    let payout = mwallet.new_address().map_err(fail)?.script_pubkey();
    let mwallet = Arc::new(Mutex::new(mwallet));
    let source: PayoutSource = {
        let w = mwallet.clone();
        Arc::new(move || {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            w.new_address().map(|a| a.script_pubkey()).map_err(|e| e.to_string())
        })
    };
    let mstore: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&dir.join("merchant.db")).map_err(fail)?);
    let config = ServerConfig { policy: policy.clone(), payout, settle_target_blocks: 6 };
    let server = Arc::new(
        ChannelServer::new(config, keys, mstore, chain.clone(), clock.clone())
            .map_err(fail)?
            .with_payout_source(source),
    );
    let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let peer = tcp_listener.local_addr()?.to_string();
    tokio::spawn(tcp::serve(server.clone(), tcp_listener, std::future::pending()));
    let served = Arc::new(AtomicU64::new(0));
    let app = {
        let served = served.clone();
        axum::Router::new()
            .route(
                "/api/fortune",
                get(move || {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    async move { format!("fortune #{n}: a satoshi saved is a satoshi earned\n") }
                }),
            )
            .layer(PaywallLayer::new(
                server.clone(),
                PaywallConfig::new(Pricing::new(a.price), peer.clone()),
            ))
    };
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", http_listener.local_addr()?);
    tokio::spawn(http::serve_with(
        server.clone(),
        http_listener,
        None,
        Some(app),
        std::future::pending(),
    ));
    say(&format!(
        "  merchant channels on {peer}, paid endpoint {base}/api/fortune at {} sat",
        a.price.to_sat()
    ));

    // The chain moves: a block whenever something waits in the mempool; the merchant ticks.
    let miner = {
        let node = node.clone();
        let spk = paychan_core::bitcoin::ScriptBuf::new_op_return([]);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if !node.mempool_txids().is_empty() {
                    let _ = node.mine(1, &spk);
                }
            }
        })
    };

    // 4. The customer: pays on 402, opening a channel on the first one.
    let cstore: Arc<dyn ChannelStore> =
        Arc::new(SqliteStore::open(&dir.join("customer.db")).map_err(fail)?);
    let cwallet = Arc::new(Mutex::new(cwallet));
    let customer =
        Arc::new(Customer::new(cstore, chain.clone(), cwallet.clone(), clock).map_err(fail)?);
    let caps = Caps {
        max_price: a.price,
        max_per_merchant: a.deposit,
        deposit: Some(a.deposit),
        confirm_timeout: Duration::from_secs(60),
    };
    let client = Arc::new(PayingClient::new(customer.clone(), caps));
    let url = format!("{base}/api/fortune");
    let first = client.get(&url).await.map_err(fail)?;
    if first.status != 200 {
        return Err(fail(format!("the first paid request got HTTP {}", first.status)));
    }
    let id = first.channel.ok_or_else(|| fail("the first request was not paid"))?;
    say(&format!(
        "  opened   channel {id} with {} sat; first answer: {}",
        a.deposit.to_sat(),
        String::from_utf8_lossy(&first.body).trim()
    ));

    let total = u64::from(a.requests);
    let bar = Arc::new(Bar {
        total,
        started: Instant::now(),
        tty: std::io::stderr().is_terminal(),
        last_decile: AtomicU64::new(0),
    });
    let next = Arc::new(AtomicU64::new(1));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.min(a.requests) {
        let (client, url, next, bar, failures) =
            (client.clone(), url.clone(), next.clone(), bar.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, String>(());
                }
                match client.get(&url).await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("request {n}: HTTP {}", r.status));
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("request {n}: {e}"));
                    }
                }
                bar.show(n + 1);
            }
        }));
    }
    bar.show(1);
    for t in tasks {
        t.await.map_err(fail)?.map_err(fail)?;
    }
    let pay_secs = bar.started.elapsed().as_secs_f64();
    let status = customer.status(id).await.map_err(fail)?;
    let charged = server
        .channels()
        .await
        .map_err(fail)?
        .into_iter()
        .find(|c| c.0 == id)
        .map(|c| (c.2, c.3))
        .ok_or_else(|| fail("the merchant lost the channel"))?;

    // 5. Close: the merchant settles; a block confirms it.
    let txid = customer.close(id).await.map_err(fail)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (settlement, confirmed) = loop {
        if let Some((tx, Some(loc))) = node.transaction(&txid) {
            break (tx, loc.height);
        }
        if Instant::now() > deadline {
            return Err(fail(format!("the settlement {txid} did not confirm")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    miner.abort();
    server.tick().await.map_err(fail)?;
    customer.tick().await.map_err(fail)?;

    // 6. The books against the chain.
    let funding_value = status.capacity;
    let outputs: Amount = settlement.output.iter().map(|o| o.value).sum();
    let fee = funding_value - outputs;
    let (to_merchant, to_customer) = {
        let mut mw = mwallet.lock().unwrap_or_else(|p| p.into_inner());
        mw.sync(&*chain).map_err(fail)?;
        let cw = cwallet.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = Amount::ZERO;
        let mut c = Amount::ZERO;
        for o in &settlement.output {
            if mw.is_mine(&o.script_pubkey) {
                m += o.value;
            } else if cw.is_mine(&o.script_pubkey) {
                c += o.value;
            }
        }
        (m, c)
    };
    let requests = total;
    let paid = status.signed;
    let expected_charged = a.price * requests;
    let mut problems = Vec::new();
    if failures.load(Ordering::Relaxed) != 0 {
        problems.push("some requests failed".to_string());
    }
    if served.load(Ordering::Relaxed) != requests {
        problems.push(format!(
            "the endpoint served {} requests, not {requests}",
            served.load(Ordering::Relaxed)
        ));
    }
    if charged != (paid, expected_charged) {
        problems.push(format!("the merchant's books (paid, charged) = {charged:?}, expected ({paid}, {expected_charged})"));
    }
    if to_merchant + fee != paid {
        problems.push(format!(
            "the settlement pays the merchant {to_merchant} + fee {fee}, not the paid {paid}"
        ));
    }
    if to_customer != funding_value - paid {
        problems.push(format!(
            "the settlement returns {to_customer} to the customer, not {}",
            funding_value - paid
        ));
    }
    let summary = json!({
        "requests": requests,
        "price_sat": a.price.to_sat(),
        "paid_sat": paid.to_sat(),
        "charged_sat": charged.1.to_sat(),
        "channel": id.to_string(),
        "deposit_sat": funding_value.to_sat(),
        "settlement_txid": txid.to_string(),
        "settlement_height": confirmed,
        "fee_sat": fee.to_sat(),
        "merchant_received_sat": to_merchant.to_sat(),
        "customer_change_sat": to_customer.to_sat(),
        "pay_seconds": (pay_secs * 1000.0).round() / 1000.0,
        "requests_per_second": (requests as f64 / pay_secs).round(),
        "total_seconds": (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "chain_matches_books": problems.is_empty(),
    });
    let text = format!(
        "\npaychan demo: done\n  requests          {requests} paid, {} sat each\n  paid              {} sat (charged {} sat)\n  settlement        {txid} (block {confirmed})\n  fee               {} sat\n  merchant received {} sat\n  customer change   {} sat of {} sat\n  speed             {:.0} paid requests/s ({:.1} s), {:.1} s in all\n  check             {}",
        a.price.to_sat(),
        paid.to_sat(),
        charged.1.to_sat(),
        fee.to_sat(),
        to_merchant.to_sat(),
        to_customer.to_sat(),
        funding_value.to_sat(),
        requests as f64 / pay_secs,
        pay_secs,
        began.elapsed().as_secs_f64(),
        if problems.is_empty() { "the chain matches the books".to_string() } else { problems.join("; ") },
    );
    common.print(&summary, &text)?;
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!("the chain does not match the books: {}", problems.join("; "))))
    }
}
