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

/// A node behind a TLS terminator (Core's RPC has no TLS of its own): `--rpc-url https://…`
/// reaches it when `--rpc-cacert` trusts the terminator's CA; without it, or with another
/// CA, the certificate is refused naming the reason; `--rpc-cacert` with an `http://` URL is a
/// usage error.
#[test]
fn an_https_rpc_url_reaches_a_node_behind_a_tls_terminator_trusting_rpc_cacert() {
    use paychan_harness::tls::{TestPki, TlsTerminator};
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url, cookie) = start_node(&tmp.path().join("node"));
    let pki = TestPki::write(tmp.path()).unwrap();
    let target = url.trim_start_matches("http://").parse().unwrap();
    let terminator = TlsTerminator::start(target, &pki).unwrap();
    let https = terminator.url();
    let home = tmp.path().join("home");
    assert!(paychan(&home, &["wallet", "new"]).status.success());
    let (cookie, ca, other) =
        (cookie.to_str().unwrap(), pki.ca.to_str().unwrap(), pki.other_ca.to_str().unwrap());
    let rpc = ["--rpc-url", https.as_str(), "--rpc-cookie", cookie];

    let o = paychan(
        &home,
        &[&rpc[..], &["--rpc-cacert", ca, "wallet", "faucet", "--blocks", "1"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paychan(&home, &[&rpc[..], &["--rpc-cacert", ca, "wallet", "balance"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The faucet's block, read through the terminator: its coinbase, not yet mature.
    assert_eq!(v["height"], 1, "{v}");
    assert_eq!(v["immature_sat"], 5_000_000_000u64, "{v}");

    for refused in [vec!["--rpc-cacert", other], vec![]] {
        let o = paychan(&home, &[&rpc[..], &refused[..], &["wallet", "balance"]].concat());
        assert_eq!(o.status.code(), Some(1), "{refused:?}: {}", stderr(&o));
        let e = stderr(&o);
        // No system roots at all is said too; with some, the test CA is not among them.
        assert!(
            (e.contains("certificate") && e.contains("UnknownIssuer"))
                || (refused.is_empty() && e.contains("no trusted root")),
            "{refused:?}: {e}"
        );
    }
    let o = paychan(
        &home,
        &["--rpc-url", &url, "--rpc-cookie", cookie, "--rpc-cacert", ca, "wallet", "balance"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--rpc-cacert is for an https://"), "{}", stderr(&o));
}
