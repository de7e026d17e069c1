//! `paychan bench memory`: the merchant's peak RSS with N open channels in its store. The
//! channels are written first (by this process), then a fresh process (`paychan bench
//! memory-load`, hidden) starts a merchant on that store, loads every channel, and reports its
//! own peak RSS, so the figure is the merchant's alone.

use std::path::Path;
use std::sync::Arc;

use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::{sha256d, Hash};
use paychan_core::bitcoin::{Amount, Network, OutPoint, ScriptBuf, Txid};
use paychan_core::channel::merchant::MerchantState;
use paychan_core::channel::Phase;
use paychan_core::msg;
use paychan_core::policy::Policy;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_harness::fixtures::{customer_keypair, key, p2wpkh, pubkey, EXPIRY};
use paychan_merchant::{ChannelServer, ServerConfig};
use paychan_node::Node;
use paychan_store::{ChannelStore, NewChannel, Role, SqliteStore};
use paychan_wallet::KeyChain;
use serde_json::{json, Value};

use super::measure::{peak_rss_mib, say};
use crate::error::fail;
use crate::CliError;

/// Writes `n` open merchant channels, each with a payment, into the SQLite store at `path`.
async fn fill(path: &Path, n: u32) -> Result<(), CliError> {
    let store: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(path)?);
    let script = ChannelScript::new(
        pubkey(&key(0x11)),
        customer_keypair().public_key(),
        LockTime::from_consensus(EXPIRY),
    )?;
    let policy = Policy::default();
    let mut done = 0u32;
    while done < n {
        let chunk = (n - done).min(2_000);
        let mut tasks = Vec::with_capacity(chunk as usize);
        for i in done..done + chunk {
            let store = store.clone();
            let txid = Txid::from_raw_hash(sha256d::Hash::hash(&i.to_le_bytes()));
            let funding = FundingOutput {
                outpoint: OutPoint { txid, vout: 0 },
                value: Amount::from_sat(100_000),
                kind: OutputKind::P2wsh,
            };
            let params =
                ChannelParams::new(script, funding, p2wpkh(&key(0x12)), policy.dust_relay_fee)?;
            let total = Amount::from_sat(1_000 + u64::from(i % 1_000));
            let signature = sign_payment(&params, total, &customer_keypair())?;
            let mut state = MerchantState::new(params);
            state.phase = Phase::Open;
            state.accepted = total;
            state.signature = signature;
            state.key_index = i;
            tasks.push(tokio::spawn(async move {
                store
                    .create(NewChannel {
                        id: state.params.id(),
                        role: Role::Merchant,
                        phase: state.phase,
                        capacity: state.params.capacity(),
                        expiry: EXPIRY,
                        customer_key: state.params.script().customer().to_string(),
                        state: state.encode(),
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await??;
        }
        done += chunk;
        if done % 20_000 == 0 || done == n {
            say(&format!("  stored {done}/{n} channels"));
        }
    }
    Ok(())
}

/// The parameters of stored channel `i` (as [`fill`] wrote it).
fn params_of(i: u32) -> Result<ChannelParams, CliError> {
    let script = ChannelScript::new(
        pubkey(&key(0x11)),
        customer_keypair().public_key(),
        LockTime::from_consensus(EXPIRY),
    )?;
    let txid = Txid::from_raw_hash(sha256d::Hash::hash(&i.to_le_bytes()));
    let funding = FundingOutput {
        outpoint: OutPoint { txid, vout: 0 },
        value: Amount::from_sat(100_000),
        kind: OutputKind::P2wsh,
    };
    Ok(ChannelParams::new(script, funding, p2wpkh(&key(0x12)), Policy::default().dust_relay_fee)?)
}

/// The total stored for channel `i`.
fn stored_total(i: u32) -> Amount {
    Amount::from_sat(1_000 + u64::from(i % 1_000))
}

/// Runs the memory bench: fills a store with `n` open channels, then measures a fresh
/// merchant process that starts on it and takes payments on `paying` of them.
pub async fn bench_memory(n: u32, paying: u32) -> Result<Value, CliError> {
    let paying = paying.min(n);
    let dir = std::env::temp_dir().join(format!("paychan-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let db = dir.join("merchant.db");
        say(&format!("writing {n} open channels into {}…", db.display()));
        fill(&db, n).await?;
        say(&format!(
            "starting a merchant on that store in a fresh process; {paying} channels pay…"
        ));
        let exe = std::env::current_exe()?;
        let out = tokio::process::Command::new(exe)
            .args(["--json", "bench", "memory-load", "--store"])
            .arg(&db)
            .arg("--keys")
            .arg(&dir)
            .arg("--stored")
            .arg(n.to_string())
            .arg("--paying")
            .arg(paying.to_string())
            .output()
            .await?;
        if !out.status.success() {
            return Err(fail(format!(
                "the merchant process failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let child: Value = serde_json::from_slice(&out.stdout).map_err(fail)?;
        let mut r = json!({
            "bench": "memory",
            "stored_channels": n,
            "bound_mib": 256,
            "first_payment_bound_seconds": 1.0,
        });
        if let (Some(r), Some(c)) = (r.as_object_mut(), child.as_object()) {
            r.extend(c.clone());
        }
        Ok(r)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The child: a merchant starts on `store` (holding `stored` channels as [`fill`] wrote
/// them), takes one payment, runs a tick, then takes two payments on each of `paying`
/// channels spread over the store (64 at a time), runs a tick again; reports the time from
/// its start to the first payment acknowledged and its own peak RSS.
///
/// The bench's fundings are not on its chain, so the merchant runs zero-conf (an open channel
/// whose funding the node does not know would otherwise be taken for reorganised away).
pub async fn load(
    store_path: &Path,
    keys_dir: &Path,
    stored: u32,
    paying: u32,
) -> Result<Value, CliError> {
    let started = std::time::Instant::now();
    let node = Node::in_memory();
    let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
    let clock = paychan_chain::node_clock(&node);
    let keys = KeyChain::open(keys_dir, &[7; 32], Network::Regtest, KeyChain::MERCHANT)?;
    let store: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(store_path)?);
    let policy = Policy { zero_conf: true, ..Policy::default() };
    let config = ServerConfig::new(policy, ScriptBuf::new_op_return([]));
    let server = Arc::new(ChannelServer::new(config, keys, store, chain, clock)?);
    let live = server.load().await?;
    let serving = started.elapsed().as_secs_f64();
    let pay = |server: Arc<ChannelServer>, i: u32, step: u64| async move {
        let params = params_of(i)?;
        let total = stored_total(i) + Amount::from_sat(100 * step);
        let signature = sign_payment(&params, total, &customer_keypair())?;
        let pay =
            msg::Pay { channel: Some(params.id().into()), total_sat: total.to_sat(), signature };
        server.pay(&pay).await.map_err(CliError::from)
    };
    pay(server.clone(), 0, 1).await?;
    let first_payment = started.elapsed().as_secs_f64();
    let tick_started = std::time::Instant::now();
    server.tick().await?;
    let first_tick = tick_started.elapsed().as_secs_f64();

    // `paying` channels spread over the store, each paid twice, by 64 workers.
    let stride = (stored / paying.max(1)).max(1);
    let chosen: Vec<u32> = (0..paying).map(|k| k * stride).filter(|i| *i < stored).collect();
    let paid_started = std::time::Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..64usize {
        let mine: Vec<u32> = chosen.iter().copied().skip(w).step_by(64).collect();
        let server = server.clone();
        workers.spawn(async move {
            let mut n = 0u64;
            for i in mine {
                // Channel 0 was paid once already.
                let from = if i == 0 { 2 } else { 1 };
                for step in from..=2 {
                    pay(server.clone(), i, step).await?;
                    n += 1;
                }
            }
            Ok::<u64, CliError>(n)
        });
    }
    let mut payments = 1u64;
    while let Some(done) = workers.join_next().await {
        payments += done.map_err(|_| fail("a paying task failed"))??;
    }
    let paying_seconds = paid_started.elapsed().as_secs_f64();
    let tick_started = std::time::Instant::now();
    server.tick().await?;
    let last_tick = tick_started.elapsed().as_secs_f64();
    let round = |x: f64| (x * 1_000.0).round() / 1_000.0;
    Ok(json!({
        "live_channels": live,
        "serving_after_seconds": round(serving),
        "first_payment_seconds": round(first_payment),
        "paying_channels": chosen.len(),
        "payments": payments,
        "payments_per_second": (payments as f64 / paying_seconds).round(),
        "tick_seconds": [round(first_tick), round(last_tick)],
        "channels_in_memory": server.channels_in_memory(),
        "merchant_peak_rss_mib": peak_rss_mib(),
        "what": "the merchant process alone: from its start to serving (store opened, channels with chain work loaded), to its first payment acknowledged (stored); peak RSS (VmHWM) over the start, the payments and two ticks",
    }))
}
