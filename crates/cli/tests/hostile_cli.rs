//! Hostile conditions against `paychan serve` as a real process (issue 13): a process out of
//! file descriptors keeps running and serves again once connections close; a payment
//! submitted from the command line while the merchant runs leaves both agreeing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{first_line, start_node, Kill, World};

/// `GET /v1/info` on a fresh connection: the status line, or `None` if nothing answered.
fn info(http: &str) -> Option<String> {
    let mut s = TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.lines().next().map(str::to_string)
}

/// The transport handshake and a channel-protocol `Hello` on a fresh connection to
/// `address` (`<node id>@host:port`): whether a `Welcome` came back.
fn welcomed(address: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return false;
    };
    rt.block_on(async {
        let c = paychan_customer::Connection::connect(address);
        matches!(tokio::time::timeout(Duration::from_secs(5), c).await, Ok(Ok(_)))
    })
}

#[test]
fn serve_survives_running_out_of_file_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url, cookie) = start_node(&tmp.path().join("node"));
    let home = tmp.path().join("merchant");
    let log = tmp.path().join("serve.log");
    // 96 descriptors for the whole process, a connection cap far above it, and handshake and
    // idle timeouts long enough that only the descriptor limit is at work.
    let mut serve = Command::new("sh");
    serve
        .arg("-c")
        .arg("ulimit -n 96 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_paychan"))
        .arg("--home")
        .arg(&home)
        .args(["--rpc-url", &url, "--json", "--rpc-cookie"])
        .arg(&cookie)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--max-connections", "100000", "--handshake-timeout-secs", "600"])
        .args(["--idle-timeout-secs", "600"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = serve.spawn().unwrap();
    let serving = first_line(&mut child);
    let mut child = Kill(child);
    let listen = serving["listen"].as_str().unwrap().to_string();
    let address = serving["address"].as_str().unwrap().to_string();
    let http = serving["http"].as_str().unwrap().to_string();
    assert!(info(&http).unwrap().starts_with("HTTP/1.1 200"));

    // 60 idle connections to each listener: more than the process has descriptors for (the
    // rest wait in the kernel's backlog).
    let mut idle = Vec::new();
    for _ in 0..60 {
        for addr in [&listen, &http] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                idle.push(s);
            }
        }
    }
    assert!(idle.len() > 96, "{} connections", idle.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("accept failed") {
        assert!(Instant::now() < deadline, "the server never ran out of descriptors");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.0.try_wait().unwrap().is_none(), "serve is still running");

    // They close: the server serves both protocols again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = info(&http).is_some_and(|l| l.starts_with("HTTP/1.1 200")) && welcomed(&address);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not serve again");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.0.try_wait().unwrap().is_none(), "serve is still running");
}

#[test]
fn a_payment_submitted_while_serve_runs_goes_through_it() {
    let w = World::new();
    let (_merchant, serving) =
        w.serve(&["--tick-secs", "1", "--upstream", &common::upstream(), "--price", "10sat"]);
    let listen = serving["address"].as_str().unwrap().to_string();
    let http = serving["http"].as_str().unwrap().to_string();
    w.fund_customer();
    let opened = w.customer(&["channels", "open", "--merchant", &listen, "--deposit", "100000sat"]);
    let channel = opened["channel"].as_str().unwrap().to_string();
    w.customer(&["node", "mine", "1"]);
    let paid = w.customer(&["channels", "pay", "--channel", &channel, "--amount", "100sat"]);
    assert_eq!(paid["acked_sat"], 100);

    // A payment by file, submitted on the merchant's side while serve runs.
    let file = w.tmp.path().join("payment.json").display().to_string();
    let signed = w.customer(&[
        "channels",
        "pay",
        "--channel",
        &channel,
        "--amount",
        "50sat",
        "--out",
        &file,
    ]);
    assert_eq!(signed["total_sat"], 150);
    let submitted = w.merchant(&["payment", "submit", &file]);
    assert_eq!(submitted["total_sat"], 150);
    assert_eq!(submitted["via"], format!("http://{http}"), "{submitted}");

    // The running merchant knows it: its API says 150, and the next payment goes through.
    let status = |http: &str| -> Value {
        let mut s = TcpStream::connect(http).unwrap();
        write!(s, "GET /v1/channels/{channel} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    assert_eq!(status(&http)["total_sat"], 150);
    // The next paid request (HTTP, 10 sat, on the same channel) is served...
    let bought = w.customer(&["buy", &format!("http://{http}/report")]);
    assert_eq!(bought["status"], 200, "{bought}");
    assert_eq!(bought["channel"], channel.as_str(), "{bought}");
    assert_eq!(status(&http)["total_sat"], 160);
    // ...and so is the next payment over the channel protocol.
    let paid = w.customer(&["channels", "pay", "--channel", &channel, "--amount", "10sat"]);
    assert_eq!(paid["acked_sat"], 170);
    assert_eq!(status(&http)["total_sat"], 170);
    // Both sides agree, and status says what sync says.
    let synced = w.customer(&["channels", "sync", "--channel", &channel]);
    let st = w.customer(&["channels", "status", "--channel", &channel]);
    assert_eq!(st["acked_sat"], synced["acked_sat"], "{st} {synced}");
    assert_eq!(
        (st["signed_sat"].as_u64(), st["acked_sat"].as_u64(), st["in_flight_sat"].as_u64()),
        (Some(170), Some(170), Some(0))
    );
}

#[test]
fn a_busy_port_fails_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();

    let datadir = tmp.path().join("node");
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["node", "start", "--rpc-bind", &port, "--datadir"])
        .arg(&datadir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot listen on"), "{o:?}");
    assert!(!datadir.exists(), "node start created its data directory");

    let home = tmp.path().join("merchant");
    for args in [
        ["--listen", port.as_str(), "--http", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--http", port.as_str()],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
            .arg("--home")
            .arg(&home)
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("cannot listen on"), "{o:?}");
        assert!(!home.exists(), "serve created its home");
    }
}

#[test]
fn buy_on_regtest_says_how_to_get_a_confirmation() {
    let w = World::new();
    let (_merchant, serving) = w.serve(&["--upstream", &common::upstream()]);
    let shop = format!("http://{}", serving["http"].as_str().unwrap());
    w.fund_customer();
    // Nothing mines: the wait says how to get the confirmation, then gives up.
    let o = w
        .customer_cmd()
        .args(["buy", "--confirm-timeout-secs", "2", &format!("{shop}/x")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("paychan node mine 1"), "{err}");
    assert_eq!(err.matches("waiting for the funding to confirm").count(), 1, "said once: {err}");
}
