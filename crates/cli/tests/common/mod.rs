//! Helpers for the process-level tests: a child that is killed when dropped, and a node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first stdout line of `child`, as JSON.
pub fn first_line(child: &mut Child) -> Value {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// `paychan node start` in `datadir` on a free loopback port: the process, its RPC URL and
/// its cookie file.
pub fn start_node(datadir: &Path) -> (Kill, String, PathBuf) {
    let mut node = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "node", "start", "--rpc-bind", "127.0.0.1:0", "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info = first_line(&mut node);
    let url = info["rpc_url"].as_str().unwrap().to_string();
    (Kill(node), url, datadir.join(".cookie"))
}

/// A plain HTTP/1.1 upstream on loopback answering `upstream says hi to <path>`, one
/// connection at a time, at most 100,000; returns its URL. The thread ends with the test
/// process.
pub fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100_000) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let text = format!("upstream says hi to {path}\n");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    url
}

/// `paychan --home HOME --rpc-url URL --json --rpc-cookie COOKIE`, ready for arguments.
pub fn paychan(home: &Path, url: &str, cookie: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.arg("--home").arg(home).args(["--rpc-url", url, "--json", "--rpc-cookie"]).arg(cookie);
    c
}

/// Runs `c`, which must succeed, and reads its stdout as JSON.
pub fn run(mut c: Command) -> Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The usual process-level world: a node on loopback and a merchant's and a customer's home,
/// all in one temporary directory.
pub struct World {
    /// The node's RPC URL.
    pub url: String,
    /// The node's cookie file.
    pub cookie: PathBuf,
    /// The merchant's home.
    pub merchant_home: PathBuf,
    /// The customer's home.
    pub customer_home: PathBuf,
    // Dropped in this order: the node, then its directory.
    _node: Kill,
    pub tmp: tempfile::TempDir,
}

impl World {
    /// A fresh node in a fresh directory.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (node, url, cookie) = start_node(&tmp.path().join("node"));
        World {
            url,
            cookie,
            merchant_home: tmp.path().join("merchant"),
            customer_home: tmp.path().join("customer"),
            _node: node,
            tmp,
        }
    }

    /// `paychan` on the merchant's home, ready for arguments.
    pub fn merchant_cmd(&self) -> Command {
        paychan(&self.merchant_home, &self.url, &self.cookie)
    }

    /// `paychan` on the customer's home, ready for arguments.
    pub fn customer_cmd(&self) -> Command {
        paychan(&self.customer_home, &self.url, &self.cookie)
    }

    /// Runs a customer command, which must succeed: its JSON.
    pub fn customer(&self, args: &[&str]) -> Value {
        let mut c = self.customer_cmd();
        c.args(args);
        run(c)
    }

    /// Runs a merchant command, which must succeed: its JSON.
    pub fn merchant(&self, args: &[&str]) -> Value {
        let mut c = self.merchant_cmd();
        c.args(args);
        run(c)
    }

    /// `paychan serve` on free loopback ports with `args` besides: the process and its first
    /// line (`listen`, `http`, …).
    pub fn serve(&self, args: &[&str]) -> (Kill, Value) {
        let mut merchant = self
            .merchant_cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let serving = first_line(&mut merchant);
        (Kill(merchant), serving)
    }

    /// A customer wallet with mined coins: the faucet's JSON.
    pub fn fund_customer(&self) -> Value {
        self.customer(&["wallet", "new"]);
        self.customer(&["wallet", "faucet"])
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// The node's RPC client (cookie auth).
pub fn rpc(url: &str, cookie: &Path) -> paychan_chain::BitcoindRpc {
    paychan_chain::BitcoindRpc::new(url, paychan_chain::RpcAuth::CookieFile(cookie.to_path_buf()))
        .unwrap()
}

/// Transaction `txid` as mined in block `block` (a JSON block hash), verbose. The node keeps
/// no transaction index (as a stock bitcoind): the block hash says where to look.
pub fn mined_tx(url: &str, cookie: &Path, txid: &str, block: &Value) -> Value {
    rpc(url, cookie)
        .call(
            "getrawtransaction",
            &[serde_json::json!(txid), serde_json::json!(true), block.clone()],
        )
        .unwrap()
}

/// A loopback port free now (bound and released: a process started next can take it, and
/// take it again after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
