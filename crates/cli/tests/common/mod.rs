//! Helpers for the process-level tests: a child that is killed when dropped, and a node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
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
