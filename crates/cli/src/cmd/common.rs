//! What the commands share: the home directory, the chain connection, amounts, output.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use paychan_chain::{BitcoindRpc, ChainSource, RpcAuth};
use paychan_core::bitcoin::Amount;
use paychan_core::Now;
use serde_json::Value;

use crate::CliError;

/// Where paychan keeps its files, and how to reach the node.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// paychan's home directory (wallet, channel stores).
    #[arg(long, env = "PAYCHAN_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// The node's RPC URL (`paychan node start` or bitcoind).
    #[arg(long, default_value = "http://127.0.0.1:18443", global = true)]
    pub rpc_url: String,
    /// The node's cookie file (default: <home>/node/.cookie).
    #[arg(long, global = true)]
    pub rpc_cookie: Option<PathBuf>,
    /// RPC user (instead of the cookie).
    #[arg(long, requires = "rpc_password", global = true)]
    pub rpc_user: Option<String>,
    /// RPC password.
    #[arg(long, global = true)]
    pub rpc_password: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    /// The home directory.
    pub fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".paychan"))
                .unwrap_or_else(|| PathBuf::from(".paychan"))
        })
    }

    /// The wallet's directory.
    pub fn wallet_dir(&self) -> PathBuf {
        self.home().join("wallet")
    }

    /// A chain client.
    pub fn chain(&self) -> Result<Arc<dyn ChainSource>, CliError> {
        let auth = match (&self.rpc_user, &self.rpc_password) {
            (Some(u), Some(p)) => RpcAuth::UserPass(u.clone(), p.clone()),
            _ => {
                let cookie = self
                    .rpc_cookie
                    .clone()
                    .unwrap_or_else(|| self.home().join("node").join(".cookie"));
                if !cookie.exists() {
                    return Err(CliError::Failed(format!(
                        "no node cookie at {}: start `paychan node start`, or give --rpc-cookie or --rpc-user",
                        cookie.display()
                    )));
                }
                RpcAuth::CookieFile(cookie)
            }
        };
        let rpc =
            BitcoindRpc::new(&self.rpc_url, auth).map_err(|e| CliError::Failed(e.to_string()))?;
        Ok(Arc::new(rpc))
    }

    /// A clock reading wall time and the chain tip. The tip (height, median-time-past) is
    /// read once now and then refreshed every second by a background thread, never on the
    /// payment path: a payment costs no RPC round trip, and payments on confirmed channels go
    /// on while the node is unreachable (the last tip seen stays in use).
    pub fn clock(&self, chain: Arc<dyn ChainSource>) -> Arc<dyn Fn() -> Now + Send + Sync> {
        let read = |chain: &dyn ChainSource| -> Option<(u32, u32)> {
            Some((chain.tip().ok()?.height, chain.median_time_past().ok()?))
        };
        let tip = Arc::new(std::sync::Mutex::new(read(&*chain).unwrap_or((0, 0))));
        {
            let tip = Arc::downgrade(&tip);
            let _ = std::thread::Builder::new().name("paychan-tip".into()).spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // Stops once the clock is gone.
                let Some(tip) = tip.upgrade() else { return };
                match read(&*chain) {
                    Some(t) => *tip.lock().unwrap_or_else(|p| p.into_inner()) = t,
                    None => tracing::debug!("chain unreachable; the clock keeps the last tip"),
                }
            });
        }
        Arc::new(move || {
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (height, mtp) = *tip.lock().unwrap_or_else(|p| p.into_inner());
            // On regtest the node's mock time may run ahead of the wall clock.
            Now { time: time.max(u64::from(mtp)), height, median_time_past: mtp }
        })
    }

    /// Prints `v` as JSON, or `text` for people.
    pub fn print(&self, v: &Value, text: &str) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Parses an amount: `10sat`, `0.001btc`, or plain satoshis.
pub fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || format!("{s:?} is not an amount like 10sat, 0.001btc or 1000");
    if let Some(n) = t.strip_suffix("sat").or_else(|| t.strip_suffix("sats")) {
        n.trim().parse::<u64>().map(Amount::from_sat).map_err(|_| bad())
    } else if let Some(n) = t.strip_suffix("btc") {
        Amount::from_str_in(n.trim(), paychan_core::bitcoin::Denomination::Bitcoin)
            .map_err(|_| bad())
    } else {
        t.parse::<u64>().map(Amount::from_sat).map_err(|_| bad())
    }
}

/// A tokio runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))
}
