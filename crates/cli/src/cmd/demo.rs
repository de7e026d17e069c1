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
use paychan_core::bitcoin::Amount;
use paychan_core::policy::Policy;
use paychan_customer::{Caps, PayingClient};
use paychan_harness::{Payout, World};
use paychan_merchant::paywall::Pricing;
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

/// What the paid part of the demo did.
struct Paid {
    channel: paychan_core::bitcoin::OutPoint,
    requests: u64,
    failures: u64,
    seconds: f64,
}

/// What the settlement did.
struct Settled {
    txid: paychan_core::bitcoin::Txid,
    tx: paychan_core::bitcoin::Transaction,
    height: u32,
}

async fn demo(
    a: DemoArgs,
    policy: Policy,
    dir: PathBuf,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let began = Instant::now();
    let w = start(&dir, policy).await?;
    let served = Arc::new(AtomicU64::new(0));
    let url = paid_endpoint(&w, a.price, served.clone()).await?;
    // The chain moves: a block whenever something waits in the mempool.
    let miner = w.spawn_miner(Duration::from_millis(250));
    let client = Arc::new(PayingClient::new(
        w.customer.clone(),
        Caps {
            max_price: a.price,
            max_per_merchant: a.deposit,
            deposit: Some(a.deposit),
            confirm_timeout: Duration::from_secs(60),
        },
    ));
    let paid = pay(&client, &url, &a).await?;
    let settled = close(&w, paid.channel).await?;
    miner.abort();
    let books = check(&w, &a, &paid, &settled, served.load(Ordering::Relaxed)).await?;
    report(common, &a, &paid, &settled, &books, began)
}

/// Step 1: the embedded regtest node, two wallets funded by mining, the merchant (channel
/// server on TCP, its store, payouts to fresh wallet addresses), the customer.
async fn start(dir: &std::path::Path, policy: Policy) -> Result<World, CliError> {
    say("paychan demo: starting the embedded regtest node");
    let w = World::builder()
        .dir(dir)
        .policy(policy)
        .payout(Payout::Wallet)
        .merchant_blocks(1)
        .start()
        .await?;
    let balance = |wallet: &Mutex<paychan_wallet::Wallet>| {
        wallet.lock().unwrap_or_else(|p| p.into_inner()).balance().confirmed.to_sat()
    };
    say(&format!(
        "  funded   customer wallet {} sat, merchant wallet {} sat",
        balance(&w.customer_wallet),
        balance(&w.merchant_wallet)
    ));
    Ok(w)
}

/// Step 2: the merchant's paid endpoint, behind the paywall; returns its URL.
async fn paid_endpoint(
    w: &World,
    price: Amount,
    served: Arc<AtomicU64>,
) -> Result<String, CliError> {
    let routes = axum::Router::new().route(
        "/api/fortune",
        get(move || {
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            async move { format!("fortune #{n}: a satoshi saved is a satoshi earned\n") }
        }),
    );
    let base = w.serve_paywalled(routes, Pricing::new(price)).await?;
    say(&format!(
        "  merchant channels on {}, paid endpoint {base}/api/fortune at {} sat",
        w.peer,
        price.to_sat()
    ));
    Ok(format!("{base}/api/fortune"))
}

/// Step 3: the customer pays on 402 (opening a channel on the first one), `a.requests`
/// requests with `a.concurrency` in flight.
async fn pay(client: &Arc<PayingClient>, url: &str, a: &DemoArgs) -> Result<Paid, CliError> {
    let first = client.get(url).await?;
    if first.status != 200 {
        return Err(fail(format!("the first paid request got HTTP {}", first.status)));
    }
    let channel = first.channel.ok_or_else(|| fail("the first request was not paid"))?;
    say(&format!(
        "  opened   channel {channel} with {} sat; first answer: {}",
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
            (client.clone(), url.to_string(), next.clone(), bar.clone(), failures.clone());
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
        t.await?.map_err(fail)?;
    }
    Ok(Paid {
        channel,
        requests: total,
        failures: failures.load(Ordering::Relaxed),
        seconds: bar.started.elapsed().as_secs_f64(),
    })
}

/// Step 4: the customer closes; the merchant settles; a block confirms it; both sides see it.
async fn close(w: &World, channel: paychan_core::bitcoin::OutPoint) -> Result<Settled, CliError> {
    let txid = w.customer.close(channel).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (tx, height) = loop {
        if let Some((tx, Some(loc))) = w.node.transaction(&txid) {
            break (tx, loc.height);
        }
        if Instant::now() > deadline {
            return Err(fail(format!("the settlement {txid} did not confirm")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    w.server.tick().await?;
    w.customer.tick().await?;
    Ok(Settled { txid, tx, height })
}

/// The books as the chain shows them.
struct Books {
    deposit: Amount,
    paid: Amount,
    charged: Amount,
    fee: Amount,
    to_merchant: Amount,
    to_customer: Amount,
    problems: Vec<String>,
}

/// Step 5: the books (the customer's and the merchant's) against the chain.
async fn check(
    w: &World,
    a: &DemoArgs,
    paid: &Paid,
    settled: &Settled,
    served: u64,
) -> Result<Books, CliError> {
    let status = w.customer.status(paid.channel).await?;
    let (merchant_paid, charged) = w
        .server
        .channels()
        .await?
        .into_iter()
        .find(|c| c.id == paid.channel)
        .map(|c| (c.paid, c.charged))
        .ok_or_else(|| fail("the merchant lost the channel"))?;
    let deposit = status.capacity;
    let outputs: Amount = settled.tx.output.iter().map(|o| o.value).sum();
    let fee = deposit - outputs;
    let (to_merchant, to_customer) = {
        let mut mw = w.merchant_wallet.lock().unwrap_or_else(|p| p.into_inner());
        mw.sync(&*w.chain)?;
        let cw = w.customer_wallet.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = Amount::ZERO;
        let mut c = Amount::ZERO;
        for o in &settled.tx.output {
            if mw.is_mine(&o.script_pubkey) {
                m += o.value;
            } else if cw.is_mine(&o.script_pubkey) {
                c += o.value;
            }
        }
        (m, c)
    };
    let requests = paid.requests;
    let signed = status.signed;
    let expected_charged = a.price * requests;
    let mut problems = Vec::new();
    if paid.failures != 0 {
        problems.push("some requests failed".to_string());
    }
    if served != requests {
        problems.push(format!("the endpoint served {served} requests, not {requests}"));
    }
    if (merchant_paid, charged) != (signed, expected_charged) {
        problems.push(format!("the merchant's books (paid, charged) = ({merchant_paid}, {charged}), expected ({signed}, {expected_charged})"));
    }
    if to_merchant + fee != signed {
        problems.push(format!(
            "the settlement pays the merchant {to_merchant} + fee {fee}, not the paid {signed}"
        ));
    }
    if to_customer != deposit - signed {
        problems.push(format!(
            "the settlement returns {to_customer} to the customer, not {}",
            deposit - signed
        ));
    }
    Ok(Books { deposit, paid: signed, charged, fee, to_merchant, to_customer, problems })
}

/// Step 6: the summary, as text or JSON; fails when the chain does not match the books.
fn report(
    common: &Common,
    a: &DemoArgs,
    paid: &Paid,
    settled: &Settled,
    books: &Books,
    began: Instant,
) -> Result<ExitCode, CliError> {
    let (requests, pay_secs, txid, confirmed) =
        (paid.requests, paid.seconds, settled.txid, settled.height);
    let summary = json!({
        "requests": requests,
        "price_sat": a.price.to_sat(),
        "paid_sat": books.paid.to_sat(),
        "charged_sat": books.charged.to_sat(),
        "channel": paid.channel.to_string(),
        "deposit_sat": books.deposit.to_sat(),
        "settlement_txid": txid.to_string(),
        "settlement_height": confirmed,
        "fee_sat": books.fee.to_sat(),
        "merchant_received_sat": books.to_merchant.to_sat(),
        "customer_change_sat": books.to_customer.to_sat(),
        "pay_seconds": (pay_secs * 1000.0).round() / 1000.0,
        "requests_per_second": (requests as f64 / pay_secs).round(),
        "total_seconds": (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "chain_matches_books": books.problems.is_empty(),
    });
    let text = format!(
        "\npaychan demo: done\n  requests          {requests} paid, {} sat each\n  paid              {} sat (charged {} sat)\n  settlement        {txid} (block {confirmed})\n  fee               {} sat\n  merchant received {} sat\n  customer change   {} sat of {} sat\n  speed             {:.0} paid requests/s ({:.1} s), {:.1} s in all\n  check             {}",
        a.price.to_sat(),
        books.paid.to_sat(),
        books.charged.to_sat(),
        books.fee.to_sat(),
        books.to_merchant.to_sat(),
        books.to_customer.to_sat(),
        books.deposit.to_sat(),
        requests as f64 / pay_secs,
        pay_secs,
        began.elapsed().as_secs_f64(),
        if books.problems.is_empty() { "the chain matches the books".to_string() } else { books.problems.join("; ") },
    );
    common.print(&summary, &text)?;
    if books.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!("the chain does not match the books: {}", books.problems.join("; "))))
    }
}
