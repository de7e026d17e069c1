//! What the commands share: the home directory, the chain connection, amounts, output.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use paychan_chain::{BitcoindRpc, ChainSource, RpcAuth};
use paychan_core::bitcoin::{Amount, Network};
use paychan_core::network::NetworkParams;
use paychan_core::Now;
use serde_json::Value;

use crate::CliError;

/// Where paychan keeps its files, and how to reach the node.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// paychan's home directory (wallet, channel stores).
    #[arg(long, env = "PAYCHAN_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// The network: bitcoin, testnet4, signet or regtest (default: the one the home was made
    /// on, else regtest). A home stays on the network it was made on.
    #[arg(long, env = "PAYCHAN_NETWORK", global = true, value_parser = parse_network)]
    pub network: Option<NetworkParams>,
    /// On mainnet, paychan moves real money: this says you mean it (required with
    /// `--network bitcoin`; `serve` also takes `i_understand_mainnet = true` in its config).
    #[arg(long, env = "PAYCHAN_I_UNDERSTAND_MAINNET", global = true)]
    pub i_understand_mainnet: bool,
    /// The node's RPC URL (default: http://127.0.0.1 and Bitcoin Core's port for the network:
    /// 8332, 48332, 38332, 18443). `https://…` for a node behind a TLS terminator (Core's RPC
    /// has no TLS of its own): its certificate is checked against the system's roots, or
    /// `--rpc-cacert`.
    #[arg(long, global = true)]
    pub rpc_url: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` `--rpc-url` (a private CA),
    /// besides the system's roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub rpc_cacert: Option<PathBuf>,
    /// The node's cookie file (default: <home>/node/.cookie on regtest, the embedded node's;
    /// ~/.bitcoin/<network>/.cookie elsewhere, bitcoind's).
    #[arg(long, global = true)]
    pub rpc_cookie: Option<PathBuf>,
    /// The fee rate (sat/vB) used when the node has no estimate yet (a fresh node); default
    /// 10 on mainnet, 1 elsewhere. A warning is logged each time it is used.
    #[arg(long, global = true, value_name = "SAT_PER_VB")]
    pub fallback_fee_rate: Option<u64>,
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

    /// The network this command runs on: `--network` (or `PAYCHAN_NETWORK`), which must be
    /// the home's if the home has one; else the home's; else regtest.
    ///
    /// # Errors
    /// [`CliError::Usage`] when `--network` names another network than the home's.
    pub fn network(&self) -> Result<NetworkParams, CliError> {
        let file = self.home().join(NETWORK_FILE);
        let recorded = match std::fs::read_to_string(&file) {
            Ok(text) => Some(
                NetworkParams::parse(&text)
                    .map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CliError::Failed(format!("{}: {e}", file.display()))),
        };
        match (self.network, recorded) {
            (Some(asked), Some(home)) if asked != home => Err(CliError::Usage(format!(
                "the home {} is on {home}; --network {asked} names another network: give another --home",
                self.home().display()
            ))),
            (Some(n), _) | (None, Some(n)) => Ok(n),
            (None, None) => Ok(NetworkParams::regtest()),
        }
    }

    /// The network to show addresses for, when nothing is at stake (`tx decode`): `--network`,
    /// else the home's, else regtest. Never an error.
    pub fn network_for_display(&self) -> NetworkParams {
        self.network.or_else(|| self.network().ok()).unwrap_or_else(NetworkParams::regtest)
    }

    /// [`Common::network`], binding the home to it the first time (`<home>/network`). On
    /// mainnet only with the explicit confirmation: `--i-understand-mainnet`, or
    /// `mainnet_confirmed` (a config file's `i_understand_mainnet = true`).
    ///
    /// # Errors
    /// [`CliError::Usage`] for another network than the home's, or mainnet without the
    /// confirmation; [`CliError::Io`] when the home cannot be written.
    pub fn claim_network(&self, mainnet_confirmed: bool) -> Result<NetworkParams, CliError> {
        let n = self.network()?;
        self.check_mainnet(&n, mainnet_confirmed)?;
        let home = self.home();
        let file = home.join(NETWORK_FILE);
        if !file.exists() {
            std::fs::create_dir_all(&home)?;
            let tmp = home.join(format!("{NETWORK_FILE}.tmp"));
            std::fs::write(&tmp, format!("{}\n", n.name))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)?;
        }
        Ok(n)
    }

    /// Refuses mainnet without the explicit confirmation (`--i-understand-mainnet`, or
    /// `mainnet_confirmed` from a config file).
    ///
    /// # Errors
    /// [`CliError::Usage`] saying how to confirm.
    pub fn check_mainnet(
        &self,
        n: &NetworkParams,
        mainnet_confirmed: bool,
    ) -> Result<(), CliError> {
        if n.network == Network::Bitcoin && !(self.i_understand_mainnet || mainnet_confirmed) {
            return Err(CliError::Usage(
                "paychan on mainnet moves real money: give --i-understand-mainnet (or set i_understand_mainnet = true in the serve config) once you have read the README's safety section".into(),
            ));
        }
        Ok(())
    }

    /// The node's RPC URL: `--rpc-url`, else Bitcoin Core's default for the network.
    pub fn rpc_url(&self, n: &NetworkParams) -> String {
        self.rpc_url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", n.rpc_port))
    }

    /// The node's cookie file: `--rpc-cookie`, else the embedded node's on regtest
    /// (`<home>/node/.cookie`), else bitcoind's (`~/.bitcoin/<network dir>/.cookie`).
    pub fn rpc_cookie(&self, n: &NetworkParams) -> PathBuf {
        if let Some(c) = &self.rpc_cookie {
            return c.clone();
        }
        if n.network == Network::Regtest {
            return self.home().join("node").join(".cookie");
        }
        let bitcoin = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".bitcoin"))
            .unwrap_or_else(|| PathBuf::from(".bitcoin"));
        bitcoin.join(n.datadir).join(".cookie")
    }

    /// An RPC client of the node for network `n` (user and password, or the cookie).
    ///
    /// # Errors
    /// [`CliError::Failed`] when there is no cookie where it should be.
    pub fn rpc(&self, n: &NetworkParams) -> Result<BitcoindRpc, CliError> {
        let url = self.rpc_url(n);
        let tls = if url.starts_with("https://") {
            // Bitcoin Core's RPC has no TLS since 0.12: this is a terminator in front of it.
            Some(Arc::new(paychan_transport::tls::client_config(self.rpc_cacert.as_deref())?))
        } else if self.rpc_cacert.is_some() {
            return Err(CliError::Usage(format!(
                "--rpc-cacert is for an https:// --rpc-url, and {url} is not one"
            )));
        } else {
            None
        };
        let auth = match (&self.rpc_user, &self.rpc_password) {
            (Some(u), Some(p)) => RpcAuth::UserPass(u.clone(), p.clone()),
            _ => {
                let cookie = self.rpc_cookie(n);
                if !cookie.exists() {
                    let start = if n.network == Network::Regtest {
                        "start `paychan node start`"
                    } else {
                        "start bitcoind"
                    };
                    return Err(CliError::Failed(format!(
                        "no node cookie at {}: {start}, or give --rpc-cookie or --rpc-user",
                        cookie.display()
                    )));
                }
                RpcAuth::CookieFile(cookie)
            }
        };
        let fallback = match self.fallback_fee_rate {
            Some(r) => paychan_core::bitcoin::FeeRate::from_sat_per_vb(r).ok_or_else(|| {
                CliError::Usage(format!("--fallback-fee-rate {r} sat/vB is out of range"))
            })?,
            None => n.fallback_fee_rate,
        };
        Ok(BitcoindRpc::new_tls(&url, auth, tls)?.with_fallback_fee(fallback))
    }

    /// A chain client for the command's network, checked to be on it (its genesis block).
    ///
    /// # Errors
    /// As [`Common::network`] and [`Common::rpc`]; [`CliError::Failed`] for a node on another
    /// chain, naming both.
    pub fn chain(&self) -> Result<Arc<dyn ChainSource>, CliError> {
        let n = self.network()?;
        let rpc = self.rpc(&n)?;
        check_chain(&rpc, &n, &self.rpc_url(&n))?;
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

/// The file in a home that names its network.
const NETWORK_FILE: &str = "network";

/// Parses `--network`.
fn parse_network(s: &str) -> Result<NetworkParams, String> {
    NetworkParams::parse(s).map_err(|e| e.to_string())
}

/// Checks that the node `chain` (at `url`) is on network `n`: its genesis block is `n`'s.
///
/// # Errors
/// [`CliError::Failed`] naming the node's chain and `n`; the chain's error when the node
/// cannot be asked (unreachable nodes are reported by the command that needs them).
pub fn check_chain(chain: &dyn ChainSource, n: &NetworkParams, url: &str) -> Result<(), CliError> {
    let genesis = match chain.block_hash(0) {
        Ok(Some(h)) => h,
        // An unreachable node is the command's to report, when it needs the node.
        Ok(None) | Err(paychan_chain::ChainError::Transport(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if genesis == n.genesis() {
        return Ok(());
    }
    Err(CliError::Failed(match NetworkParams::by_genesis(&genesis) {
        Some(found) => format!(
            "the node at {url} is on {found}, not {n}: give the --rpc-url of a {n} node, or --network {found}"
        ),
        None => format!(
            "the node at {url} is on an unknown chain (genesis {genesis}), not {n}: give the --rpc-url of a {n} node"
        ),
    }))
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
