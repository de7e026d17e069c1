//! `paychan bench pay`: a real merchant and a real customer over loopback TCP with real
//! stores on both sides, N channels each paying M payments with W in flight, beside the bound
//! measured first in the same process: the payments/s all cores reach doing nothing but the
//! customer's sign and the merchant's validate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paychan_core::bitcoin::{Amount, ScriptBuf};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::{sign_payment, verify_payment};
use paychan_harness::fixtures::{customer_keypair, params_with, EXPIRY};
use paychan_harness::{Payout, World};
use paychan_store::{ChannelStore, PostgresStore, Role, SqliteStore};
use serde_json::{json, Value};

use super::measure::{on_all_cores, peak_rss_mib, percentile, say};
use crate::error::fail;
use crate::CliError;

/// Where the bench keeps channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite files (WAL, `synchronous=FULL`) in a temporary directory.
    Sqlite,
    /// SQLite files on tmpfs (`/dev/shm`): every cost but the disk flush.
    Memory,
    /// PostgreSQL at this URL (both sides in the same database, by role).
    Postgres(String),
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlite" => Ok(StoreKind::Sqlite),
            "memory" => Ok(StoreKind::Memory),
            p if p.starts_with("postgres://") || p.starts_with("postgresql://") => {
                Ok(StoreKind::Postgres(p.to_string()))
            }
            "postgres" => {
                std::env::var("PAYCHAN_TEST_POSTGRES_URL").map(StoreKind::Postgres).map_err(|_| {
                    "--store postgres needs PAYCHAN_TEST_POSTGRES_URL, or give the postgres:// URL"
                        .to_string()
                })
            }
            other => Err(format!(
                "{other:?}: the store is sqlite, memory, postgres or a postgres:// URL"
            )),
        }
    }
}

/// The bound: customer sign + merchant validate of one payment, on all cores, per second.
fn sign_validate_bound(secs: f64) -> f64 {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let kp = customer_keypair();
    on_all_cores(secs, |i| {
        let total = Amount::from_sat(i % 100_000 + 1);
        if let Ok(sig) = sign_payment(&params, total, &kp) {
            let _ = std::hint::black_box(verify_payment(&params, total, &sig));
        }
    })
}

/// The transport's cost: one payment's frame encrypted by the customer and authenticated and
/// decrypted by the merchant (BOLT 8), on all cores, per second.
fn transport_rate(secs: f64) -> f64 {
    use paychan_core::msg::{encode_frame, Message, Pay};
    use paychan_core::noise::{Initiator, Responder, Session, HEADER_LEN};
    use paychan_harness::fixtures::{key, pubkey};
    type Pair = (Session, Session);
    fn pair() -> Option<Pair> {
        let (hs, one) = Initiator::new(key(1), &pubkey(&key(2)), key(3));
        let (rhs, two) = Responder::new(key(2), key(4)).read_act_one(&one).ok()?;
        let (three, send) = hs.read_act_two(&two).ok()?;
        Some((send, rhs.read_act_three(&three).ok()?.0))
    }
    thread_local! {
        static PAIR: std::cell::RefCell<Option<Pair>> = const { std::cell::RefCell::new(None) };
    }
    // A payment as it travels: the channel, a total and a 72-byte signature.
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let signature =
        sign_payment(&params, Amount::from_sat(1), &customer_keypair()).unwrap_or(vec![0x30; 72]);
    let frame = encode_frame(&Message::Pay(Pay {
        channel: Some(params.id().into()),
        total_sat: 1,
        signature,
    }));
    on_all_cores(secs, |_| {
        PAIR.with(|p| {
            let mut p = p.borrow_mut();
            if p.is_none() {
                *p = pair();
            }
            let Some((send, recv)) = p.as_mut() else { return };
            let mut wire = Vec::with_capacity(frame.len() + 2 * HEADER_LEN);
            if send.encrypt(&frame, &mut wire).is_err() {
                return;
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&wire[..HEADER_LEN]);
            if recv.read_header(&header).is_ok() {
                let mut body = wire.split_off(HEADER_LEN);
                let _ = std::hint::black_box(recv.read_body(&mut body));
            }
        });
    })
}

/// The floor under a payment's latency: one durable commit of the store kind, alone, `n`
/// times in a row (a fresh store beside the bench's own), each timed.
async fn commit_floor(
    kind: &StoreKind,
    dir: &std::path::Path,
    n: usize,
) -> Result<Vec<Duration>, CliError> {
    let mut times = Vec::with_capacity(n);
    match kind {
        StoreKind::Sqlite | StoreKind::Memory => {
            let store = SqliteStore::open(&dir.join("floor.db"))?;
            for _ in 0..n {
                let t = Instant::now();
                store.touch().await?;
                times.push(t.elapsed());
            }
        }
        StoreKind::Postgres(url) => {
            let store = PostgresStore::connect(url).await?;
            for _ in 0..n {
                let t = Instant::now();
                store.touch().await?;
                times.push(t.elapsed());
            }
        }
    }
    times.sort_unstable();
    Ok(times)
}

async fn store(
    kind: &StoreKind,
    dir: &std::path::Path,
    name: &str,
) -> Result<Arc<dyn ChannelStore>, CliError> {
    Ok(match kind {
        StoreKind::Sqlite | StoreKind::Memory => {
            Arc::new(SqliteStore::open(&dir.join(format!("{name}.db")))?)
        }
        StoreKind::Postgres(url) => Arc::new(PostgresStore::connect(url).await?),
    })
}

/// What the pay bench runs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Channels, each paying from its own task.
    pub channels: u32,
    /// Payments per channel.
    pub payments: u32,
    /// Payments in flight per channel.
    pub window: u32,
    /// Merchant instances on the one store.
    pub instances: u32,
}

/// Runs the pay bench.
pub async fn bench_pay(shape: Shape, kind: StoreKind, secs: f64) -> Result<Value, CliError> {
    let base = match kind {
        StoreKind::Memory => std::path::PathBuf::from("/dev/shm"),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("paychan-bench-pay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let r = run(&dir, shape, &kind, secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn run(
    dir: &std::path::Path,
    shape: Shape,
    kind: &StoreKind,
    secs: f64,
) -> Result<Value, CliError> {
    let Shape { channels, payments, window, instances } = shape;
    say("measuring the bound (customer sign + merchant validate) on all cores…");
    let bound = tokio::task::spawn_blocking(move || sign_validate_bound(secs)).await?;
    say("measuring the transport (BOLT 8: a payment frame encrypted and decrypted) on all cores…");
    let transport = tokio::task::spawn_blocking(move || transport_rate(secs)).await?;

    say("measuring one durable commit of the store, 500 times…");
    let floor = commit_floor(kind, dir, 500).await?;

    let policy = Policy::default();
    let w = World::builder()
        .dir(dir)
        .policy(policy.clone())
        .payout(Payout::Script(ScriptBuf::new_op_return([])))
        .merchant_store(store(kind, dir, "merchant").await?)
        .customer_store(store(kind, dir, "customer").await?)
        .start()
        .await?;
    let (node, server, peer, customer) = (&w.node, &w.server, &w.peer, &w.customer);
    say(&format!("opening {channels} channels…"));
    let deposit = Amount::from_sat(
        (u64::from(payments) + policy.close_out.to_sat() + 1_000).max(policy.min_deposit.to_sat()),
    );
    // The other instances: the same merchant (seed, node id) on the same database, each
    // through its own connection and listener; channels are opened through each in turn.
    let mut servers = vec![server.clone()];
    let mut peers = vec![peer.clone()];
    for i in 1..instances {
        let (other, other_peer) =
            w.add_instance(&format!("bench-{i}"), store(kind, dir, "merchant").await?).await?;
        servers.push(other);
        peers.push(other_peer);
    }
    let ids =
        super::measure::open_channels(customer, node, &servers, &peers, channels, deposit).await?;

    say(&format!(
        "paying: {channels} channels × {payments} payments of 1 sat, {window} in flight per channel…"
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in &ids {
        let (customer, id) = (customer.clone(), *id);
        tasks.push(tokio::spawn(async move {
            // Every payment's latency, from its signing to its acknowledgement.
            let mut latencies = Vec::with_capacity(payments as usize);
            if window == 1 {
                for _ in 0..payments {
                    let t = Instant::now();
                    customer.pay(id, Amount::ONE_SAT).await.map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed());
                }
            } else {
                customer
                    .pay_window_timed(id, Amount::ONE_SAT, u64::from(payments), window, &mut |d| {
                        latencies.push(d)
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await?.map_err(fail)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let total = u64::from(channels) * u64::from(payments);
    let per_s = total as f64 / elapsed;
    // Nothing acknowledged is missing from the merchant's store.
    for id in &ids {
        let row = w
            .merchant_store
            .get(*id, Role::Merchant)
            .await?
            .ok_or_else(|| fail("a channel vanished"))?;
        if row.total != Amount::from_sat(u64::from(payments)) {
            return Err(fail(format!("channel {id}: stored {} not {payments} sat", row.total)));
        }
    }
    Ok(json!({
        "bench": "pay",
        "store": match kind { StoreKind::Sqlite => "sqlite", StoreKind::Memory => "memory", StoreKind::Postgres(_) => "postgres" },
        "channels": channels,
        "instances": instances,
        "payments": total,
        "window": window,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "bound_per_s": bound.round(),
        "payments_per_s": per_s.round(),
        "ratio": (per_s / bound * 1000.0).round() / 1000.0,
        // BOLT 8 per payment, as a share of the bound's signing and checking (same run).
        "transport": {
            "per_s": transport.round(),
            "cost_vs_bound": (bound / transport.max(1.0) * 10_000.0).round() / 10_000.0,
        },
        // Measured per payment: from the customer's signing to the acknowledgement, both
        // sides' writes durable.
        "latency_measured": "per payment, from signing to its acknowledgement",
        "latency_samples": latencies.len(),
        // One durable commit alone (the same store kind, same run): a payment paid at window
        // 1 waits for at least one on each side, overlapped.
        "commit_floor_ms": {
            "p50": percentile(&floor, 0.5),
            "p99": percentile(&floor, 0.99),
        },
        "latency_ms": {
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "p99_9": percentile(&latencies, 0.999),
        },
        "peak_rss_mib": peak_rss_mib(),
    }))
}
