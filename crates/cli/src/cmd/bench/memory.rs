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

/// Runs the memory bench: fills a store with `n` channels, then measures a fresh merchant
/// process loading them.
pub async fn bench_memory(n: u32) -> Result<Value, CliError> {
    let dir = std::env::temp_dir().join(format!("paychan-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let db = dir.join("merchant.db");
        say(&format!("writing {n} open channels into {}…", db.display()));
        fill(&db, n).await?;
        say("starting a merchant on that store in a fresh process…");
        let exe = std::env::current_exe()?;
        let out = tokio::process::Command::new(exe)
            .args(["--json", "bench", "memory-load", "--store"])
            .arg(&db)
            .arg("--keys")
            .arg(&dir)
            .output()
            .await?;
        if !out.status.success() {
            return Err(fail(format!(
                "the merchant process failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let child: Value = serde_json::from_slice(&out.stdout).map_err(fail)?;
        Ok(json!({
            "bench": "memory",
            "channels": n,
            "loaded": child["loaded"],
            "load_seconds": child["load_seconds"],
            "merchant_peak_rss_mib": child["peak_rss_mib"],
            "bound_mib": 256,
        }))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The child: a merchant on `store` loads every channel; reports its peak RSS.
pub async fn load(store_path: &Path, keys_dir: &Path) -> Result<Value, CliError> {
    let started = std::time::Instant::now();
    let node = Node::in_memory();
    let chain: Arc<dyn ChainSource> = Arc::new(EmbeddedChain::new(node.clone()));
    let clock = paychan_chain::node_clock(&node);
    let keys = KeyChain::open(keys_dir, &[7; 32], Network::Regtest, KeyChain::MERCHANT)?;
    let store: Arc<dyn ChannelStore> = Arc::new(SqliteStore::open(store_path)?);
    let config = ServerConfig::new(Policy::default(), ScriptBuf::new_op_return([]));
    let server = ChannelServer::new(config, keys, store, chain, clock)?;
    let loaded = server.load().await?;
    Ok(json!({
        "loaded": loaded,
        "load_seconds": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        "peak_rss_mib": peak_rss_mib(),
    }))
}
