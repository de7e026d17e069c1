//! Networks at the command line: a home stays on the network it was made on, a node on
//! another chain is refused naming both, mainnet needs an explicit confirmation, testnet3 is
//! not a network paychan runs on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::start_node;

/// `paychan --home HOME --json ARGS…`, with no network from the environment.
fn paychan(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paychan"))
        .env_remove("PAYCHAN_NETWORK")
        .env_remove("PAYCHAN_I_UNDERSTAND_MAINNET")
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_home_stays_on_the_network_it_was_made_on() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("signet-home");
    let o = paychan(&home, &["--network", "signet", "wallet", "new"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(home.join("network")).unwrap().trim(), "signet");

    // Without --network the home's network is used: a signet address.
    let o = paychan(&home, &["wallet", "address"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let address = v["address"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(address.starts_with("tb1q"), "{address}");

    // Another network on this home: refused (exit 2), naming both, and nothing changes.
    for other in ["regtest", "testnet4", "bitcoin"] {
        let o = paychan(&home, &["--network", other, "wallet", "address"]);
        assert_eq!(o.status.code(), Some(2), "{other}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("signet") && e.contains(other), "{e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
    assert_eq!(std::fs::read_to_string(home.join("network")).unwrap().trim(), "signet");

    // The environment variable is the flag.
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .env("PAYCHAN_NETWORK", "regtest")
        .arg("--home")
        .arg(&home)
        .args(["wallet", "address"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_node_on_another_chain_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url, cookie) = start_node(&tmp.path().join("node"));
    let home = tmp.path().join("home");
    let cookie = cookie.to_str().unwrap();
    let o = paychan(&home, &["--network", "signet", "wallet", "new"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paychan(
        &home,
        &["--network", "signet", "--rpc-url", &url, "--rpc-cookie", cookie, "wallet", "balance"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!("the node at {url} is on regtest, not signet")), "{e}");

    // The same node for a regtest home: fine.
    let regtest = tmp.path().join("regtest-home");
    assert!(paychan(&regtest, &["wallet", "new"]).status.success());
    let o = paychan(
        &regtest,
        &["--rpc-url", &url, "--rpc-cookie", cookie, "wallet", "faucet", "--blocks", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // A fee rate above the network's cap is refused before anything is built.
    let to = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    let o = paychan(
        &regtest,
        &[
            "--rpc-url",
            &url,
            "--rpc-cookie",
            cookie,
            "wallet",
            "send",
            to,
            "1000sat",
            "--fee-rate",
            "2000",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("above regtest's cap of 1000 sat/vB"), "{}", stderr(&o));
}

#[test]
fn mainnet_needs_an_explicit_confirmation() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("main");
    let o = paychan(&home, &["--network", "bitcoin", "serve"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--i-understand-mainnet"), "{}", stderr(&o));
    assert!(!home.exists(), "nothing created");

    // A config file without the confirmation changes nothing; with it, serve goes on to
    // need a node (bitcoind's cookie: none here).
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, "network = \"bitcoin\"\n").unwrap();
    let o = paychan(&home, &["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    std::fs::write(&config, "network = \"bitcoin\"\ni_understand_mainnet = true\n").unwrap();
    let cookie = tmp.path().join("no-such-cookie");
    let o = paychan(
        &home,
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--rpc-cookie",
            cookie.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no node cookie"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(home.join("network")).unwrap().trim(), "bitcoin");

    // The other commands too.
    let o = paychan(&tmp.path().join("main2"), &["--network", "bitcoin", "wallet", "new"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = paychan(
        &tmp.path().join("main2"),
        &["--network", "bitcoin", "--i-understand-mainnet", "wallet", "new"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn testnet3_and_unknown_networks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["testnet", "liquid"] {
        let o = paychan(tmp.path(), &["--network", bad, "wallet", "new"]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("bitcoin, testnet4, signet or regtest"), "{}", stderr(&o));
    }
    // The embedded node runs regtest only.
    let o = paychan(tmp.path(), &["--network", "signet", "node", "start"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("regtest only"), "{}", stderr(&o));
}

/// Bitcoin Core's RPC has no TLS: an `https://` RPC URL is refused up front with what to do
/// instead, not a transport error later.
#[test]
fn an_https_rpc_url_is_refused_with_the_way_to_reach_a_remote_node() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let o = paychan(&home, &["--rpc-url", "https://127.0.0.1:18443", "wallet", "balance"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("speaks no TLS") && stderr(&o).contains("tunnel"),
        "{}",
        stderr(&o)
    );
}
