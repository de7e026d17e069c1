//! The paywall as real processes on loopback: `paychan serve --upstream` protects a plain HTTP
//! upstream, `paychan buy` pays for one request (and refuses a price above `--max-price`
//! without paying), and curl pays through `paychan proxy` (`curl -x`). `paychan demo` runs to
//! completion and its summary matches the settlement it found on chain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::{first_line, paychan, run, upstream, Kill, World};

#[test]
fn buy_and_curl_through_the_proxy_pay_a_reverse_proxied_upstream() {
    let w = World::new();
    let (url, cookie, customer_home) = (w.url.clone(), w.cookie.clone(), w.customer_home.clone());
    let upstream = upstream();
    let (_merchant, serving) = w.serve(&[
        "--tick-secs",
        "1",
        "--zero-conf",
        "true",
        "--upstream",
        &upstream,
        "--price",
        "10sat",
        "--route",
        "/api/*=25sat",
        "--free",
        "/health",
        "--public-url",
        "https://shop.example/",
    ]);
    let shop = format!("http://{}", serving["http"].as_str().unwrap());
    w.fund_customer();

    // The 402 names the resource on the public URL, and payTo is the merchant's node id.
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-D", "-", "-o", "/dev/null"])
        .arg(format!("{shop}/api/report?q=1"))
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    let value = head
        .lines()
        .find_map(|l| l.strip_prefix("payment-required: "))
        .unwrap_or_else(|| panic!("no PAYMENT-REQUIRED in {head}"));
    let required: paychan_core::paywall::PaymentRequired =
        paychan_core::paywall::decode_header(value.trim().as_bytes()).unwrap();
    assert_eq!(required.resource.url, "https://shop.example/api/report?q=1");
    assert_eq!(required.accepts[0].pay_to, serving["node_id"].as_str().unwrap());
    assert_eq!(required.accepts[0].amount, "25");

    // A price above --max-price: refused, nothing paid, no channel.
    let o = paychan(&customer_home, &url, &cookie)
        .args(["buy", "--max-price", "20sat", &format!("{shop}/api/report")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "a price above --max-price has its own exit code");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("above the limit") && err.contains("nothing was paid"), "{err}");
    // The same with --json: the error is a JSON object on stdout too.
    let o = paychan(&customer_home, &url, &cookie)
        .args(["buy", "--max-price", "20sat", &format!("{shop}/api/report")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((e["kind"].as_str(), e["exit_code"].as_u64()), (Some("price_above_max"), Some(3)));
    // --no-pay: the price, nothing paid.
    let o = paychan(&customer_home, &url, &cookie)
        .args(["buy", "--no-pay", &format!("{shop}/api/report")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let q: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (q["status"].as_u64(), q["price_sat"].as_u64(), q["paid_sat"].as_u64()),
        (Some(402), Some(25), Some(0))
    );
    assert_eq!(q["pay_to"], serving["node_id"]);
    // Without --json (as people run it).
    let plain = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
        c.arg("--home").arg(&customer_home).args(["--rpc-url", &url, "--rpc-cookie"]).arg(&cookie);
        c
    };
    let o = plain().args(["buy", "--no-pay", &format!("{shop}/api/report")]).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.starts_with("25 sat for https://shop.example/api/report")
            && said.contains("nothing was paid"),
        "{said}"
    );
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "list"]);
    assert_eq!(run(c), serde_json::json!([]));

    // `paychan buy`: opens a channel, pays 25 sat, prints the upstream's body.
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .arg("--home")
        .arg(&customer_home)
        .args(["--rpc-url", &url, "--rpc-cookie"])
        .arg(&cookie)
        .args(["buy", "--max-price", "50sat", &format!("{shop}/api/report?q=1")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "upstream says hi to /api/report?q=1\n");
    // -o FILE -s: the body in the file, nothing on stdout or stderr.
    let file = customer_home.join("report.txt");
    let o = plain()
        .args(["buy", "-s", "-o"])
        .arg(&file)
        .arg(format!("{shop}/api/report?q=2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "upstream says hi to /api/report?q=2\n");

    // curl through `paychan proxy`: paid automatically.
    let mut proxy = paychan(&customer_home, &url, &cookie)
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = first_line(&mut proxy);
    let _proxy = Kill(proxy);
    let proxy_url = format!("http://{}", listening["listen"].as_str().unwrap());
    let curl = |path: &str| {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "30", "-D", "-", "-x", &proxy_url, &format!("{shop}{path}")])
            .output()
            .expect("curl runs");
        assert!(o.status.success(), "curl failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let out = curl("/api/weather");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-paychan-paid-sat: 25"), "{out}");
    assert!(out.ends_with("upstream says hi to /api/weather\n"), "{out}");
    // The upstream's Content-Type, once (the proxy adds none of its own).
    let content_types: Vec<&str> =
        out.lines().filter(|l| l.to_ascii_lowercase().starts_with("content-type:")).collect();
    assert_eq!(content_types, vec!["content-type: text/plain"], "{out}");
    let out = curl("/other");
    assert!(out.to_ascii_lowercase().contains("x-paychan-paid-sat: 10"), "{out}");
    let out = curl("/health");
    assert!(out.to_ascii_lowercase().contains("x-paychan-paid-sat: 0"), "{out}");
    assert!(out.ends_with("upstream says hi to /health\n"), "{out}");
    drop(_proxy);

    // One channel carried all three payments: 25 + 25 + 10.
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "list"]);
    let list = run(c);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["paid_sat"], 85);
    // `paychan spent`: every paid request, to whom, for which URL; the free one is not there.
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["spent"]);
    let spent = run(c);
    let entries = spent["entries"].as_array().unwrap();
    let urls: Vec<&str> = entries.iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert_eq!(
        urls,
        vec![
            format!("{shop}/api/report?q=1"),
            format!("{shop}/api/report?q=2"),
            format!("{shop}/api/weather"),
            format!("{shop}/other"),
        ],
        "{spent}"
    );
    assert!(entries.iter().all(|e| e["merchant"] == serving["node_id"] && e["charged"] == true));
    assert_eq!(spent["total_paid_sat"], 85);
}

#[test]
fn the_demo_runs_and_its_summary_matches_the_chain() {
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "demo"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["requests"], 10_000);
    assert_eq!(s["chain_matches_books"], true, "{s}");
    let paid = s["paid_sat"].as_u64().unwrap();
    assert_eq!(paid, 10_000 * s["price_sat"].as_u64().unwrap());
    assert_eq!(s["charged_sat"].as_u64().unwrap(), paid);
    assert_eq!(s["merchant_received_sat"].as_u64().unwrap() + s["fee_sat"].as_u64().unwrap(), paid);
    assert_eq!(
        s["customer_change_sat"].as_u64().unwrap(),
        s["deposit_sat"].as_u64().unwrap() - paid
    );
    assert!(s["settlement_height"].as_u64().unwrap() > 101);
    assert_eq!(s["settlement_txid"].as_str().unwrap().len(), 64);
}

#[test]
fn bench_http_reports_paid_beside_unpaid_and_the_bounds() {
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "bench", "http", "--connections", "4", "--requests", "25"])
        .args(["--seconds", "0.3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["paid_requests"], 100, "{r}");
    for k in ["raw_verify_per_s", "validate_bound_per_s", "unpaid_per_s", "paid_per_s"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    let ratio = r["ratio"].as_f64().unwrap();
    let expected = r["paid_per_s"].as_f64().unwrap() / r["bound_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 0.01, "{r}");
}

fn bench(args: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "bench"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn bench_pay_node_soak_and_memory_report_each_figure_beside_its_bound() {
    let r =
        bench(&["pay", "--channels", "3", "--payments", "40", "--window", "8", "--seconds", "0.2"]);
    assert_eq!(r["payments"], 120, "{r}");
    assert!(
        r["bound_per_s"].as_f64().unwrap() > 0.0 && r["payments_per_s"].as_f64().unwrap() > 0.0
    );
    let r =
        bench(&["pay", "--channels", "1", "--payments", "20", "--window", "1", "--seconds", "0.2"]);
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    // Two instances of the merchant on one store: channels opened through each, every payment
    // in the store (the bench checks each channel's stored total).
    let r = bench(&[
        "pay",
        "--instances",
        "2",
        "--channels",
        "4",
        "--payments",
        "30",
        "--window",
        "4",
        "--seconds",
        "0.2",
    ]);
    assert_eq!((r["instances"].as_u64(), r["payments"].as_u64()), (Some(2), Some(120)), "{r}");
    let r = bench(&["node", "--transactions", "200"]);
    assert!(r["mempool_ratio"].as_f64().unwrap() > 0.0, "{r}");
    let r = bench(&["soak", "--customers", "40", "--seconds", "3"]);
    assert_eq!(
        (r["errors"].as_u64(), r["channels_with_lost_acks"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert!(
        r["tcp_payments"].as_u64().unwrap() > 0 && r["http_requests"].as_u64().unwrap() > 0,
        "{r}"
    );
    let r = bench(&["memory", "--channels", "500", "--paying", "50"]);
    assert_eq!(r["live_channels"], 500, "{r}");
    assert_eq!(r["paying_channels"], 50, "{r}");
    assert_eq!(r["payments"], 100, "{r}");
    assert!(r["channels_in_memory"].as_u64().unwrap() < 500, "not every channel loaded: {r}");
    assert!(r["merchant_peak_rss_mib"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn no_secret_appears_in_the_logs_of_a_full_run() {
    let keep = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["--json", "demo", "--requests", "300", "--keep"])
        .arg(keep.path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let logs =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(logs.lines().count() > 20, "debug logs were written");
    for who in ["customer", "merchant"] {
        let file = keep.path().join(who).join("mnemonic");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{who}'s mnemonic file is 0600");
        }
        let phrase = std::fs::read_to_string(&file).unwrap();
        let phrase = phrase.trim();
        assert!(phrase.split_whitespace().count() >= 12, "a mnemonic: {who}");
        assert!(!logs.contains(phrase), "{who}'s mnemonic leaked into the logs");
        // No run of four consecutive mnemonic words either.
        let words: Vec<&str> = phrase.split_whitespace().collect();
        for w in words.windows(4) {
            assert!(!logs.contains(&w.join(" ")), "part of {who}'s mnemonic leaked");
        }
    }
    for secret in ["tprv", "xprv"] {
        assert!(!logs.contains(secret), "an extended private key leaked into the logs");
    }
}

/// `paychan serve --tls-cert/--tls-key` serves the paywall over HTTPS: curl checks its
/// certificate against the CA (`curl --cacert`); `paychan buy --cacert` pays it, and so does
/// curl through `paychan proxy --https-upstream --cacert` (plain HTTP to the proxy on
/// loopback, TLS to the merchant); without the CA, or with another one, the certificate is
/// refused with an error that says so, before anything is paid.
#[test]
fn an_https_paywall_is_paid_by_buy_trusting_its_ca_and_a_wrong_certificate_is_refused() {
    let w = World::new();
    let (url, cookie, customer_home) = (w.url.clone(), w.cookie.clone(), w.customer_home.clone());
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = paychan_harness::tls::TestPki::write(pki_dir.path()).unwrap();
    let file = |p: &std::path::Path| p.display().to_string();
    let upstream = upstream();
    let (_merchant, serving) = w.serve(&[
        "--zero-conf",
        "true",
        "--upstream",
        &upstream,
        "--price",
        "10sat",
        "--free",
        "/health",
        "--tls-cert",
        &file(&pki.cert),
        "--tls-key",
        &file(&pki.key),
    ]);
    assert_eq!(serving["tls"], true, "{serving}");
    let shop = format!("https://{}", serving["http"].as_str().unwrap());
    w.fund_customer();
    let buy = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paychan"))
            .arg("--home")
            .arg(&customer_home)
            .args(["--rpc-url", &url, "--rpc-cookie"])
            .arg(&cookie)
            .arg("buy")
            .args(extra)
            .arg(format!("{shop}/api/tls"))
            .output()
            .unwrap()
    };
    for refused in [vec![], vec!["--cacert".to_string(), file(&pki.other_ca)]] {
        let args: Vec<&str> = refused.iter().map(String::as_str).collect();
        let o = buy(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("certificate") && err.contains("UnknownIssuer"), "{args:?}: {err}");
    }
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "list"]);
    assert_eq!(run(c), serde_json::json!([]), "nothing paid, no channel");

    // A stock client checks the certificate against the CA: accepted with it, refused
    // without it.
    let curl = |args: &[&str]| {
        Command::new("curl").args(["-s", "--max-time", "30"]).args(args).output().unwrap()
    };
    let o = curl(&["--cacert", &file(&pki.ca), &format!("{shop}/health")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "upstream says hi to /health\n");
    assert!(!curl(&[&format!("{shop}/health")]).status.success(), "untrusted without the CA");

    let o = buy(&["--cacert", &file(&pki.ca)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "upstream says hi to /api/tls\n");

    // curl through the proxy, which reaches the merchant over TLS.
    let mut proxy = paychan(&customer_home, &url, &cookie)
        .args(["proxy", "--listen", "127.0.0.1:0", "--https-upstream", "--cacert", &file(&pki.ca)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = first_line(&mut proxy);
    let _proxy = Kill(proxy);
    assert_eq!(listening["upstream_scheme"], "https");
    let proxy_url = format!("http://{}", listening["listen"].as_str().unwrap());
    let plain = shop.replacen("https://", "http://", 1);
    let o = curl(&["-D", "-", "-x", &proxy_url, &format!("{plain}/api/proxied")]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-paychan-paid-sat: 10"), "{out}");
    assert!(out.ends_with("upstream says hi to /api/proxied\n"), "{out}");
}

/// `--upstream https://…`: a merchant's paywall forwards paid requests to an upstream over
/// TLS, checking its certificate against `--upstream-cacert`; without that CA the upstream's
/// certificate is refused and the buyer gets a 502.
#[test]
fn an_https_upstream_is_reached_over_tls_trusting_its_ca() {
    let w = World::new();
    let (url, cookie, customer_home) = (w.url.clone(), w.cookie.clone(), w.customer_home.clone());
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = paychan_harness::tls::TestPki::write(pki_dir.path()).unwrap();
    let file = |p: &std::path::Path| p.display().to_string();
    // The upstream: another paychan, over TLS, forwarding everything for free.
    let plain = upstream();
    let mut tls_upstream = paychan(&pki_dir.path().join("upstream-home"), &url, &cookie)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--upstream", &plain])
        .args(["--free", "/*", "--tls-cert", &file(&pki.cert), "--tls-key", &file(&pki.key)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = first_line(&mut tls_upstream);
    let _up = Kill(tls_upstream);
    let https_upstream = format!("https://{}", up["http"].as_str().unwrap());
    w.fund_customer();
    for (trusting, expected) in [(false, None), (true, Some("upstream says hi to /api/chained\n"))]
    {
        let mut args =
            vec!["--zero-conf", "true", "--upstream", &https_upstream, "--price", "10sat"];
        let ca = file(&pki.ca);
        if trusting {
            args.extend(["--upstream-cacert", ca.as_str()]);
        }
        let (_merchant, serving) = w.serve(&args);
        let shop = format!("http://{}", serving["http"].as_str().unwrap());
        let o = Command::new(env!("CARGO_BIN_EXE_paychan"))
            .arg("--home")
            .arg(&customer_home)
            .args(["--rpc-url", &url, "--rpc-cookie"])
            .arg(&cookie)
            .args(["buy", &format!("{shop}/api/chained")])
            .output()
            .unwrap();
        match expected {
            Some(body) => {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(String::from_utf8_lossy(&o.stdout), body);
            }
            None => {
                assert_eq!(o.status.code(), Some(22), "an HTTP error: {o:?}");
                assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 502"), "{o:?}");
            }
        }
    }
}

/// A route's price set through the admin API holds for the next request and after the merchant
/// restarts (the flags say otherwise; the stored prices win).
#[test]
fn a_price_set_through_the_admin_api_survives_a_restart() {
    let w = World::new();
    let (url, cookie, customer_home) = (w.url.clone(), w.cookie.clone(), w.customer_home.clone());
    let upstream = upstream();
    let args = [
        "--zero-conf",
        "true",
        "--upstream",
        &upstream,
        "--price",
        "10sat",
        "--admin-token",
        "tok",
    ];
    let (merchant, serving) = w.serve(&args);
    let shop = format!("http://{}", serving["http"].as_str().unwrap());
    let price_of = |shop: &str| {
        let o = paychan(&customer_home, &url, &cookie)
            .args(["buy", "--no-pay", &format!("{shop}/api/report")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["price_sat"].as_u64().unwrap()
    };
    assert_eq!(price_of(&shop), 10);
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-X", "POST", "-H", "content-type: application/json"])
        .args(["-H", "authorization: Bearer tok"])
        .args(["-d", r#"{"pattern": "/api/*", "price_sat": 42}"#])
        .arg(format!("{shop}/admin/prices/routes"))
        .output()
        .expect("curl runs");
    let table: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(table["routes"][0]["price_sat"], 42, "{table}");
    assert_eq!(price_of(&shop), 42, "the next request");
    drop(merchant);
    let (_merchant, serving) = w.serve(&args);
    let shop = format!("http://{}", serving["http"].as_str().unwrap());
    assert_eq!(price_of(&shop), 42, "after a restart");
    // The same through `paychan admin prices` (the home names the merchant and its token).
    let mut c = w.merchant_cmd();
    c.args(["admin", "--admin-token", "tok", "prices", "set", "/api/*", "7sat"]);
    assert_eq!(run(c)["routes"][0]["price_sat"], 7);
    assert_eq!(price_of(&shop), 7);
    let mut c = w.merchant_cmd();
    c.args(["admin", "prices", "remove", "/api/*"]).env("PAYCHAN_ADMIN_TOKEN", "tok");
    assert_eq!(run(c)["routes"], serde_json::json!([]));
    assert_eq!(price_of(&shop), 10);
    let mut c = w.merchant_cmd();
    c.args(["admin", "--admin-token", "tok", "prices", "list"]);
    assert_eq!(run(c)["default_sat"], 10);
}

/// An upstream that answers every request with `size` bytes (a known length, written 64 KiB
/// at a time, as fast as the reader takes them).
fn big_upstream(size: u64) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n");
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![0x5au8; 64 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    url
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A 200 MiB download streams through `paychan serve --upstream`: every byte arrives and the
/// merchant's resident memory stays flat (it holds no whole body).
#[test]
fn a_200_mib_download_streams_through_the_proxy_with_flat_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let w = World::new();
    let big = big_upstream(SIZE);
    let (merchant, serving) =
        w.serve(&["--zero-conf", "true", "--upstream", &big, "--free", "/download"]);
    let pid = merchant.0.id();
    let shop = format!("http://{}", serving["http"].as_str().unwrap());
    // Warm up (allocators, connection pools), then take the baseline.
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-r", "0-0"])
        .arg(format!("{shop}/download"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let baseline = rss_kib(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let started = std::time::Instant::now();
    let o = Command::new("curl")
        .args(["-s", "--max-time", "120", "-o", "/dev/null", "-w", "%{size_download} %{http_code}"])
        .arg(format!("{shop}/download"))
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(said, format!("{SIZE} 200"), "every byte arrived");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!(
        "200 MiB through the proxy in {secs:.2} s ({:.0} MiB/s): merchant RSS {:.1} MiB before, peak {:.1} MiB (+{growth_mib:.1} MiB)",
        200.0 / secs,
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(growth_mib < 32.0, "the proxy held {growth_mib:.1} MiB of a 200 MiB body");
}

/// A stock x402 resource server (Flask with the x402 SDK's middleware) and a stock x402 client
/// (requests with the SDK's adapter), each with paychan's scheme plugin (`sdk/python`), pay and
/// charge through a running `paychan serve` (its facilitator at `/x402`).
#[test]
fn a_stock_x402_client_and_server_pay_and_charge_through_paychan() {
    let Some(python) = std::env::var_os("PAYCHAN_X402_PYTHON") else {
        eprintln!(
            "skipped: PAYCHAN_X402_PYTHON is unset (.ci/run installs the x402 SDK and sets it)"
        );
        return;
    };
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python");
    let w = World::new();
    let (url, cookie, customer_home) = (w.url.clone(), w.cookie.clone(), w.customer_home.clone());
    let (_merchant, serving) = w.serve(&["--zero-conf", "true", "--admin-token", "tok"]);
    let facilitator = format!("http://{}/x402", serving["http"].as_str().unwrap());
    let node_id = serving["node_id"].as_str().unwrap().to_string();
    let network = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";
    w.fund_customer();
    // The resource server, on a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Command::new(&python)
        .arg(format!("{sdk}/examples/paychan_server.py"))
        .args([&facilitator, "tok", &node_id, network, &port.to_string()])
        .env("PYTHONPATH", sdk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Kill(server);
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the x402 resource server did not start");
    let resource = format!("http://127.0.0.1:{port}/report");
    let pay = || {
        let o = Command::new(&python)
            .arg(format!("{sdk}/examples/paychan_client.py"))
            .args([&resource, network, env!("CARGO_BIN_EXE_paychan"), "--home"])
            .arg(&customer_home)
            .args(["--rpc-url", &url, "--rpc-cookie"])
            .arg(&cookie)
            .env("PYTHONPATH", sdk)
            .output()
            .unwrap();
        assert!(o.status.success(), "client: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let r = pay();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], "a report worth 21 satoshis\n");
    assert_eq!(r["payment_response"]["success"], true, "{r}");
    assert_eq!(r["payment_response"]["amount"], "21");
    let r = pay();
    assert_eq!(r["status"], 200, "{r}");
    // The TypeScript SDK's client (@x402/core) with paychan's plugin (`sdk/typescript`), on the
    // same server and channel.
    let mut expected = 42;
    match std::env::var_os("PAYCHAN_X402_NODE") {
        Some(node) => {
            let o = Command::new(node)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../sdk/typescript/examples/paychan_client.mjs"
                ))
                .args([&resource, network, env!("CARGO_BIN_EXE_paychan"), "--home"])
                .arg(&customer_home)
                .args(["--rpc-url", &url, "--rpc-cookie"])
                .arg(&cookie)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "TypeScript client: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let r: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["body"], "a report worth 21 satoshis\n");
            assert_eq!(r["payment_response"]["success"], true, "{r}");
            expected += 21;
        }
        None => eprintln!("skipped the TypeScript client: PAYCHAN_X402_NODE is unset"),
    }
    // One channel, every payment signed by the customer and charged by the merchant.
    let mut c = paychan(&customer_home, &url, &cookie);
    c.args(["channels", "list"]);
    let list = run(c);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["paid_sat"], expected);
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-H", "authorization: Bearer tok"])
        .arg(format!("http://{}/admin/channels", serving["http"].as_str().unwrap()))
        .output()
        .unwrap();
    let channels: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(channels[0]["charged_sat"], expected, "{channels}");
}
