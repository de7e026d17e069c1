//! `paychan node start|mine|time`: run the embedded regtest node and talk to it over RPC.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use paychan_chain::{BitcoindRpc, RpcAuth};
use paychan_core::bitcoin::opcodes::OP_TRUE;
use paychan_core::bitcoin::script::Builder;
use paychan_core::bitcoin::{Address, Network};
use paychan_node::rpc::{cookie_path, Auth, RpcServer};
use paychan_node::Node;
use serde_json::{json, Value};

use paychan_core::network::NetworkParams;

use super::common::Common;
use crate::CliError;

/// `paychan node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the embedded regtest node with its bitcoind-compatible JSON-RPC server.
    Start(StartArgs),
    /// Mine blocks (generatetoaddress) on a running node.
    Mine(MineArgs),
    /// Move a running node's clock (setmocktime).
    Time(TimeArgs),
}

/// Where a running node's cookie is (with the global --rpc-url / --rpc-user options).
#[derive(Debug, Args)]
pub struct Connect {
    /// The node's data directory (its `.cookie` is used unless --rpc-user is given).
    #[arg(long)]
    datadir: Option<PathBuf>,
}

/// Arguments of `paychan node start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Data directory (default: <home>/node). The global --rpc-user/--rpc-password, when
    /// given, are allowed besides the cookie.
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Address the RPC server listens on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18443")]
    rpc_bind: SocketAddr,
    /// Mine a block every SECS seconds (0: only on request).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    block_interval: u64,
    /// Serve confirmed transactions by txid over RPC (Core's `-txindex`): `false` (the
    /// default, as a stock bitcoind: paychan needs no index) or `true`.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    txindex: bool,
}

/// Arguments of `paychan node mine`.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// How many blocks.
    n: u32,
    /// Address the coinbases pay (default: an anyone-can-spend P2WSH(OP_TRUE) address).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    connect: Connect,
}

/// Arguments of `paychan node time`.
#[derive(Debug, Args)]
pub struct TimeArgs {
    /// Move the clock forward by this much: 90s, 30m, 12h, 1d (or plain seconds).
    #[arg(long, value_parser = parse_duration, conflicts_with = "set")]
    advance: Option<u64>,
    /// Set the clock to this Unix time (0 returns to the system clock).
    #[arg(long)]
    set: Option<u64>,
    #[command(flatten)]
    connect: Connect,
}

/// Parses `90s`, `30m`, `12h`, `1d`, `2w` or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 12h, 1d or 5h59m");
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut last_mult = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{text:?} is too long"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult = match unit {
            "" if rest.is_empty() && total == 0 => 1,
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(format!("unknown unit {unit:?} in {text:?}: use s, m, h, d or w")),
        };
        // Largest unit first, each once: 1d12h, not 12h1d or 1h1h.
        if mult >= last_mult {
            return Err(bad());
        }
        last_mult = mult;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
    }
    Ok(total)
}

/// The address blocks pay when no other is given: P2WSH(OP_TRUE), spendable by anyone — fine
/// on regtest, where coins are worthless.
pub fn anyone_can_spend_address() -> Address {
    Address::p2wsh(&Builder::new().push_opcode(OP_TRUE).into_script(), Network::Regtest)
}

/// Runs a `paychan node` command.
pub fn run(cmd: NodeCommand, common: &Common) -> Result<ExitCode, CliError> {
    match cmd {
        NodeCommand::Start(a) => start(a, common),
        NodeCommand::Mine(a) => mine(a, common),
        NodeCommand::Time(a) => time(a, common),
    }
}

fn print(v: &Value, json: bool, text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    out.flush()?;
    Ok(())
}

fn start(a: StartArgs, common: &Common) -> Result<ExitCode, CliError> {
    embedded_network(common)?;
    let datadir = a.datadir.unwrap_or_else(|| common.home().join("node"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    // The port first: a busy port (another node running) fails before anything is created
    // or overwritten (its cookie above all, which would lock its clients out).
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(a.rpc_bind))
        .map_err(|e| CliError::Failed(format!("cannot listen on {}: {e}", a.rpc_bind)))?;
    let node = Node::open(&datadir).map_err(|e| CliError::Failed(e.to_string()))?;
    node.set_txindex(a.txindex);
    let cookie = cookie_path(&datadir);
    let mut auth =
        Auth::default().with_new_cookie(&cookie).map_err(|e| CliError::Failed(e.to_string()))?;
    if let (Some(u), Some(p)) = (&common.rpc_user, &common.rpc_password) {
        auth = auth.with_user(u, p);
    }
    let cookie_shown = cookie.clone();
    rt.block_on(async move {
        let cookie = cookie_shown;
        let addr = listener.local_addr()?;
        let (height, tip) = node.tip();
        let url = format!("http://{addr}");
        print(
            &json!({
                "rpc_url": url,
                "cookie": cookie.display().to_string(),
                "datadir": datadir.display().to_string(),
                "height": height,
                "tip": tip.to_string(),
            }),
            common.json,
            &format!(
                "paychan node: regtest at height {height}\n  RPC     {url}\n  cookie  {}\n  datadir {}",
                cookie.display(),
                datadir.display()
            ),
        )?;
        if a.block_interval > 0 {
            let miner = node.clone();
            let every = Duration::from_secs(a.block_interval);
            let spk = anyone_can_spend_address().script_pubkey();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let (m, s) = (miner.clone(), spk.clone());
                    match tokio::task::spawn_blocking(move || m.mine(1, &s)).await {
                        Ok(Ok(h)) => tracing::info!(hash = ?h.first(), "mined a block"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "mining failed"),
                        Err(_) => break,
                    }
                }
            });
        }
        let server = RpcServer::new(node, auth);
        let shutdown = async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
        };
        server.serve(listener, shutdown).await?;
        Ok::<_, CliError>(())
    })?;
    let _ = std::fs::remove_file(&cookie);
    Ok(ExitCode::SUCCESS)
}

fn client(c: &Connect, common: &Common) -> Result<BitcoindRpc, CliError> {
    let n = embedded_network(common)?;
    match &c.datadir {
        // The node started with that --datadir: its cookie.
        Some(dir) if common.rpc_user.is_none() => {
            let cookie = cookie_path(dir);
            if !cookie.exists() {
                return Err(CliError::Failed(format!(
                    "no cookie at {}: is `paychan node start` running with that --datadir?",
                    cookie.display()
                )));
            }
            Ok(BitcoindRpc::new(&common.rpc_url(&n), RpcAuth::CookieFile(cookie))?)
        }
        _ => common.rpc(&n),
    }
}

/// The embedded node runs regtest only.
fn embedded_network(common: &Common) -> Result<NetworkParams, CliError> {
    let n = common.network()?;
    if n.network != paychan_core::bitcoin::Network::Regtest {
        return Err(CliError::Usage(format!(
            "the embedded node runs regtest only, not {n}: run bitcoind for {n}"
        )));
    }
    Ok(n)
}

fn mine(a: MineArgs, common: &Common) -> Result<ExitCode, CliError> {
    let rpc = client(&a.connect, common)?;
    let to = match a.to {
        Some(t) => t,
        None => anyone_can_spend_address().to_string(),
    };
    let hashes: Value = rpc
        .call("generatetoaddress", &[json!(a.n), json!(to)])
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let height: u64 =
        rpc.call("getblockcount", &[]).map_err(|e| CliError::Failed(e.to_string()))?;
    print(&json!({"blocks": hashes, "height": height, "to": to}), true, "")?;
    Ok(ExitCode::SUCCESS)
}

fn time(a: TimeArgs, common: &Common) -> Result<ExitCode, CliError> {
    let rpc = client(&a.connect, common)?;
    let now: u64 = rpc.call("getmocktime", &[]).map_err(|e| CliError::Failed(e.to_string()))?;
    let target = match (a.advance, a.set) {
        (Some(d), _) => now + d,
        (None, Some(t)) => t,
        (None, None) => {
            print(&json!({"time": now}), true, "")?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let _: Value =
        rpc.call("setmocktime", &[json!(target)]).map_err(|e| CliError::Failed(e.to_string()))?;
    let after: u64 = rpc.call("getmocktime", &[]).map_err(|e| CliError::Failed(e.to_string()))?;
    print(&json!({"time": after, "previous": now}), true, "")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1_800));
        assert_eq!(parse_duration("5h59m"), Ok(5 * 3_600 + 59 * 60));
        assert_eq!(parse_duration("1d12h"), Ok(129_600));
        assert_eq!(parse_duration("1w2d3h4m5s"), Ok(604_800 + 2 * 86_400 + 3 * 3_600 + 245));
        for bad in ["", "h", "5x", "12h1d", "1h1h", "5h59", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("99999999999999999999w").is_err());
    }
}
