//! `paychan node start|mine|time` as real processes on loopback, and a node killed with
//! SIGKILL that restarts with the same tip and UTXO set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn paychan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_paychan"))
}

/// Starts `paychan node start` on a free loopback port; returns the child and its JSON line.
fn start(datadir: &Path) -> (Child, Value) {
    let mut child = paychan()
        .args(["node", "start", "--rpc-bind", "127.0.0.1:0", "--json", "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, v)
}

fn run(args: &[&str], url: &str, datadir: &Path) -> Value {
    let o =
        paychan().args(args).args(["--rpc-url", url, "--datadir"]).arg(datadir).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn rpc(url: &str, datadir: &Path) -> paychan_chain::BitcoindRpc {
    paychan_chain::BitcoindRpc::new(
        url,
        paychan_chain::RpcAuth::CookieFile(datadir.join(".cookie")),
    )
    .unwrap()
}

#[test]
fn node_survives_sigkill_with_the_same_tip_and_utxo_set() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, info) = start(dir.path());
    let url = info["rpc_url"].as_str().unwrap().to_string();
    assert_eq!(info["height"], 0);
    assert!(dir.path().join(".cookie").exists(), "start prints where its cookie is");
    assert_eq!(info["cookie"], dir.path().join(".cookie").display().to_string());

    let mined = run(&["node", "mine", "120"], &url, dir.path());
    assert_eq!(mined["height"], 120);
    let t = run(&["node", "time", "--advance", "1d"], &url, dir.path());
    assert_eq!(t["time"].as_u64().unwrap(), t["previous"].as_u64().unwrap() + 86_400);
    run(&["node", "mine", "3"], &url, dir.path());
    let before: Value = rpc(&url, dir.path()).call("gettxoutsetinfo", &[]).unwrap();
    let time_before: u64 = rpc(&url, dir.path()).call("getmocktime", &[]).unwrap();

    child.kill().unwrap(); // SIGKILL: no shutdown step runs
    child.wait().unwrap();

    let (mut child, info) = start(dir.path());
    let url = info["rpc_url"].as_str().unwrap().to_string();
    assert_eq!(info["height"], 123);
    let after: Value = rpc(&url, dir.path()).call("gettxoutsetinfo", &[]).unwrap();
    assert_eq!(after, before, "same tip, same UTXO set");
    let time_after: u64 = rpc(&url, dir.path()).call("getmocktime", &[]).unwrap();
    assert_eq!(time_after, time_before, "mock time survives too");
    let _: Value = rpc(&url, dir.path()).call("stop", &[]).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn durations_and_bad_connections() {
    let dir = tempfile::tempdir().unwrap();
    let o = paychan()
        .args(["node", "mine", "1", "--rpc-url", "http://127.0.0.1:9", "--datadir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no cookie"), "{err}");
    let o = paychan().args(["node", "time", "--advance", "3x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "clap refuses a bad duration");
}
