//! One merchant as several `paychan serve` processes on one PostgreSQL (issue 22, DESIGN §6,
//! ADR 0029/0030), behind a real load balancer: HAProxy in TCP mode for the channel port and in
//! HTTP mode for the paywall. Customers are real `paychan` processes (`channels pay`,
//! `paychan proxy` with curl). Instances are SIGKILLed and restarted mid-stream; nothing
//! acknowledged is lost and every channel settles once.
//!
//! Both tests need `PAYCHAN_TEST_POSTGRES_URL`; the first also needs HAProxy (`haproxy` on the
//! `PATH`, or `PAYCHAN_TEST_HAPROXY`; `.ci/run` installs it and sets the variable). Without them
//! they say they skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paychan_core::bitcoin::OutPoint;
use paychan_core::channel::merchant::MerchantState;
use paychan_core::channel::Phase;
use paychan_store::{ChannelStore, PostgresStore, Query, Role};
use serde_json::{json, Value};

mod common;

use common::{first_line, free_port, mined_tx, paychan, run, start_node, upstream, Kill};

/// The admin token every instance shares.
const TOKEN: &str = "instances-e2e-admin-token";
/// The settlement lease's ttl, seconds: a dead leader is replaced within `ttl + ttl/3` plus a
/// tick.
const LEASE_TTL_SECS: u64 = 3;
/// Seconds between ticks.
const TICK_SECS: u64 = 1;

/// The tests run one at a time: the lease's move is timed, and the other test's fifty
/// customers would load the machine's cores meanwhile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The HAProxy binary, or None (the test then says it skipped). When `.ci/run` named one in
/// `PAYCHAN_TEST_HAPROXY`, it must work.
fn haproxy() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PAYCHAN_TEST_HAPROXY") {
        let path = PathBuf::from(path);
        let o = Command::new(&path).arg("-v").output();
        assert!(o.is_ok_and(|o| o.status.success()), "PAYCHAN_TEST_HAPROXY={path:?} does not run");
        return Some(path);
    }
    let found = Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("haproxy"))
}

/// A fresh PostgreSQL database for this test, or None (said skipped).
fn postgres(rt: &tokio::runtime::Runtime, test: &str) -> Option<paychan_harness::postgres::PgDb> {
    rt.block_on(paychan_harness::postgres::fresh(test)).unwrap()
}

/// One merchant's processes: the node, the shared database, and instance homes holding the
/// same wallet (one seed: one node id, one key chain, one payout wallet).
struct Merchant {
    url: String,
    cookie: PathBuf,
    db: String,
    dir: PathBuf,
    mnemonic: String,
}

/// One `paychan serve` instance: its name, ports, extra arguments and process.
struct Instance {
    name: String,
    listen: u16,
    http: u16,
    extra: Vec<String>,
    process: Option<Kill>,
}

impl Merchant {
    fn new(url: &str, cookie: &Path, db: &str, dir: &Path) -> Self {
        let first = dir.join("seed");
        let made = run(paychan_cmd(&first, url, cookie, &["wallet", "new"]));
        let mnemonic =
            std::fs::read_to_string(made["mnemonic_file"].as_str().unwrap()).unwrap().trim().into();
        Merchant {
            url: url.into(),
            cookie: cookie.into(),
            db: db.into(),
            dir: dir.into(),
            mnemonic,
        }
    }

    /// An instance named `name` in its own home (the merchant's wallet restored there) on
    /// fresh loopback ports, not started.
    fn instance(&self, name: &str, extra: &[String]) -> Instance {
        let home = self.dir.join(name);
        run(paychan_cmd(
            &home,
            &self.url,
            &self.cookie,
            &["wallet", "new", "--mnemonic", &self.mnemonic],
        ));
        Instance {
            name: name.into(),
            listen: free_port(),
            http: free_port(),
            extra: extra.to_vec(),
            process: None,
        }
    }

    /// Starts `i` (on its ports, again after a stop): returns its first line.
    fn start(&self, i: &mut Instance) -> Value {
        let home = self.dir.join(&i.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", i.name))).unwrap();
        let mut child = paychan(&home, &self.url, &self.cookie)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", i.listen)])
            .args(["--http", &format!("127.0.0.1:{}", i.http), "--store", &self.db])
            .args(["--instance", &i.name, "--admin-token", TOKEN])
            .args(["--tick-secs", &TICK_SECS.to_string()])
            .args(["--lease-ttl-secs", &LEASE_TTL_SECS.to_string()])
            .args(&i.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let serving = first_line(&mut child);
        i.process = Some(Kill(child));
        serving
    }
}

fn paychan_cmd(home: &Path, url: &str, cookie: &Path, args: &[&str]) -> Command {
    let mut c = paychan(home, url, cookie);
    c.args(args);
    c
}

/// `GET http://127.0.0.1:{port}{path}` with the admin token (curl): the body.
fn get(port: u16, path: &str) -> String {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A counter's value in an instance's `/metrics`.
fn metric(port: u16, name: &str) -> u64 {
    let text = get(port, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics of :{port}: {text}"))
}

/// `/admin/summary` of the instance on `port`, or None when it does not answer.
fn summary(port: u16) -> Option<Value> {
    serde_json::from_str(&get(port, "/admin/summary")).ok()
}

/// Sends SIGTERM to `i` and waits (bounded) for its clean exit.
fn stop_gracefully(i: &mut Instance) {
    let mut p = i.process.take().unwrap();
    let pid = p.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{} stops within its grace", i.name);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{} exits cleanly", i.name);
}

/// Waits until `ok` holds, at most `limit`; panics with `what` otherwise.
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out ({limit:?}) waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The merchant's rows in the shared database, by channel.
fn merchant_rows(
    rt: &tokio::runtime::Runtime,
    store: &PostgresStore,
) -> HashMap<OutPoint, paychan_store::ChannelRow> {
    rt.block_on(store.list(Query::role(Role::Merchant)))
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r))
        .collect()
}

/// What the streams saw, per customer: the highest acknowledged total (TCP) or the sum the
/// paid requests were charged (paywall), and the runs or requests that failed.
struct Seen {
    acked: Vec<AtomicU64>,
    failures: Vec<AtomicU64>,
    /// The pids of the processes running for each customer, killed at the end.
    pids: Mutex<HashMap<usize, u32>>,
    stop: AtomicBool,
}

impl Seen {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Seen {
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            failures: (0..n).map(|_| AtomicU64::new(0)).collect(),
            pids: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn levels(&self) -> Vec<u64> {
        self.acked.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    }

    /// Waits until every customer is at least `step` past `from`.
    fn wait_past(&self, from: &[u64], step: u64, what: &str) {
        wait_for(what, Duration::from_secs(180), || {
            self.levels().iter().zip(from).all(|(now, before)| *now >= before + step)
        });
    }

    /// Stops the streams: no new run starts, the running ones are killed.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for pid in self.pids.lock().unwrap().values() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn three_instances_behind_haproxy_are_one_merchant() {
    const TCP_CUSTOMERS: usize = 25;
    const WEB_CUSTOMERS: usize = 25;
    // Enough per request that a paywall channel's settlement is worth its fee.
    const PRICE_SAT: u64 = 500;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(haproxy) = haproxy() else {
        eprintln!("skipped three_instances_behind_haproxy_are_one_merchant: no haproxy");
        return;
    };
    let Some(pg) = postgres(&rt, "three_instances_behind_haproxy_are_one_merchant") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url, cookie) = start_node(&tmp.path().join("node"));
    let merchant = Merchant::new(&url, &cookie, &pg.url, &tmp.path().join("merchant"));

    // The load balancer's two ports, named by every instance as its public addresses.
    let (lb_tcp, lb_http, lb_stats) = (free_port(), free_port(), free_port());
    let shop = format!("http://127.0.0.1:{lb_http}");
    let extra: Vec<String> = [
        "--zero-conf",
        "true",
        "--upstream",
        &upstream(),
        "--price",
        &format!("{PRICE_SAT}sat"),
        "--public-url",
        &shop,
        "--public-address",
        &format!("127.0.0.1:{lb_tcp}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut instances: Vec<Instance> =
        ["i1", "i2", "i3"].iter().map(|n| merchant.instance(n, &extra)).collect();
    let mut address = String::new();
    for i in &mut instances {
        let serving = merchant.start(i);
        address = serving["address"].as_str().unwrap().to_string();
    }
    assert!(address.ends_with(&format!("@127.0.0.1:{lb_tcp}")), "customers dial the balancer");

    // HAProxy: TCP mode for the channel port, HTTP mode for the paywall; health checks every
    // 200 ms; a connection refused by a dead instance is retried on another.
    let servers = |port: fn(&Instance) -> u16| -> String {
        instances
            .iter()
            .map(|i| format!("    server {} 127.0.0.1:{} check\n", i.name, port(i)))
            .collect()
    };
    let config = format!(
        "global\n    maxconn 4096\n\
         defaults\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n\
         \x20   retries 3\n    option redispatch\n    default-server inter 200ms fall 2 rise 1\n\
         frontend channels\n    mode tcp\n    bind 127.0.0.1:{lb_tcp}\n    default_backend channel_port\n\
         backend channel_port\n    mode tcp\n    balance roundrobin\n{}\
         frontend paywall\n    mode http\n    bind 127.0.0.1:{lb_http}\n    default_backend http_port\n\
         backend http_port\n    mode http\n    balance roundrobin\n    option httpchk GET /v1/info\n{}\
         listen stats\n    mode http\n    bind 127.0.0.1:{lb_stats}\n    stats enable\n    stats uri /stats\n",
        servers(|i| i.listen),
        servers(|i| i.http),
    );
    let config_file = tmp.path().join("haproxy.cfg");
    std::fs::write(&config_file, config).unwrap();
    let balancer = Command::new(&haproxy)
        .arg("-f")
        .arg(&config_file)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("haproxy.log")).unwrap())
        .spawn()
        .unwrap();
    let _balancer = Kill(balancer);
    wait_for("HAProxy's ports", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", lb_tcp)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", lb_http)).is_ok()
    });

    // Fifty customers, each with coins: one block each, then 100 so they mature.
    let n = TCP_CUSTOMERS + WEB_CUSTOMERS;
    let homes: Vec<PathBuf> = (0..n).map(|c| tmp.path().join(format!("c{c}"))).collect();
    let customer = |c: usize, args: &[&str]| run(paychan_cmd(&homes[c], &url, &cookie, args));
    let parallel = |f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for lane in 0..8 {
                s.spawn(move || (lane..n).step_by(8).for_each(f));
            }
        })
    };
    parallel(&|c| {
        customer(c, &["wallet", "new"]);
        customer(c, &["wallet", "faucet", "--blocks", "1"]);
    });
    customer(0, &["node", "mine", "100"]);
    // The TCP customers open their channels through the balancer's TCP port.
    let channels: Vec<Mutex<String>> = (0..n).map(|_| Mutex::new(String::new())).collect();
    parallel(&|c| {
        if c < TCP_CUSTOMERS {
            let opened = customer(
                c,
                &["channels", "open", "--merchant", &address, "--deposit", "1000000sat"],
            );
            *channels[c].lock().unwrap() = opened["channel"].as_str().unwrap().to_string();
        }
    });

    // The streams: TCP customers run `channels pay` again and again (a run that fails when an
    // instance dies is followed by the next, which resumes); paywall customers send requests
    // through their own `paychan proxy`, which opens a channel at the 402's address.
    let tcp = Seen::new(TCP_CUSTOMERS);
    let web = Seen::new(WEB_CUSTOMERS);
    let mut streams = Vec::new();
    for c in 0..TCP_CUSTOMERS {
        let (seen, home, channel) =
            (tcp.clone(), homes[c].clone(), channels[c].lock().unwrap().clone());
        let (url, cookie) = (url.clone(), cookie.clone());
        streams.push(std::thread::spawn(move || {
            while !seen.stop.load(Ordering::SeqCst) {
                let mut payer = paychan(&home, &url, &cookie)
                    .args(["channels", "pay", "--channel", &channel, "--amount", "1sat"])
                    .args(["--count", "500", "--progress"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                seen.pids.lock().unwrap().insert(c, payer.id());
                for line in BufReader::new(payer.stdout.take().unwrap()).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v["acked_sat"].as_u64())
                    {
                        seen.acked[c].fetch_max(a, Ordering::SeqCst);
                    }
                }
                // Out of the list before it is reaped, so a stop never signals a reused pid.
                seen.pids.lock().unwrap().remove(&c);
                if !payer.wait().unwrap().success() {
                    seen.failures[c].fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }));
    }
    for w in 0..WEB_CUSTOMERS {
        let (seen, home) = (web.clone(), homes[TCP_CUSTOMERS + w].clone());
        let (url, cookie, shop) = (url.clone(), cookie.clone(), shop.clone());
        streams.push(std::thread::spawn(move || {
            let mut proxy = paychan(&home, &url, &cookie)
                .args(["proxy", "--listen", "127.0.0.1:0", "--max-price", "500sat"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let listening = first_line(&mut proxy);
            seen.pids.lock().unwrap().insert(w, proxy.id());
            let proxy_url = format!("http://{}", listening["listen"].as_str().unwrap());
            let mut k = 0u64;
            while !seen.stop.load(Ordering::SeqCst) {
                k += 1;
                let o = Command::new("curl")
                    .args(["-s", "--max-time", "30", "-D", "-", "-x", &proxy_url])
                    .arg(format!("{shop}/data/{w}/{k}"))
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
                let paid = out
                    .lines()
                    .find_map(|l| l.strip_prefix("x-paychan-paid-sat: "))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match paid {
                    Some(p)
                        if out.starts_with("http/1.1 200")
                            && out.ends_with(&format!("upstream says hi to /data/{w}/{k}\n")) =>
                    {
                        seen.acked[w].fetch_add(p, Ordering::SeqCst);
                    }
                    _ => {
                        seen.failures[w].fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            seen.pids.lock().unwrap().remove(&w);
            let _ = proxy.kill();
            let _ = proxy.wait();
        }));
    }

    // Everyone pays, and the balancer spreads the work over all three instances.
    let zero = vec![0; n];
    tcp.wait_past(&zero[..TCP_CUSTOMERS], 300, "every TCP customer to have 300 sat acknowledged");
    web.wait_past(
        &zero[..WEB_CUSTOMERS],
        3 * PRICE_SAT,
        "every web customer to have 3 paid requests",
    );
    // HAProxy's own count of the sessions it sent to each instance, on both ports.
    let stats = get(lb_stats, "/stats;csv");
    let mut spread = Vec::new();
    for backend in ["channel_port", "http_port"] {
        for i in &instances {
            let sessions = stats
                .lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .find(|f| f.len() > 7 && f[0] == backend && f[1] == i.name)
                .and_then(|f| f[7].parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {backend}/{} in HAProxy's stats: {stats}", i.name));
            assert!(sessions > 0, "HAProxy sent {backend} sessions to {}", i.name);
            spread.push(format!("{backend}/{} {sessions}", i.name));
        }
    }
    for i in &instances {
        assert!(metric(i.http, "paychan_payments_total") > 0, "{} took payments", i.name);
        assert!(
            metric(i.http, "paychan_requests_charged_total") > 0,
            "{} charged requests",
            i.name
        );
    }

    // i1 is SIGKILLed mid-stream; everyone goes on through the other two.
    let (t, w) = (tcp.levels(), web.levels());
    drop(instances[0].process.take());
    tcp.wait_past(&t, 300, "every TCP customer to go on after i1 was killed");
    web.wait_past(&w, 3 * PRICE_SAT, "every web customer to go on after i1 was killed");

    // i2 is restarted (SIGTERM, then started again on its ports); everyone goes on.
    let (t, w) = (tcp.levels(), web.levels());
    stop_gracefully(&mut instances[1]);
    merchant.start(&mut instances[1]);
    tcp.wait_past(&t, 300, "every TCP customer to go on after i2 restarted");
    web.wait_past(&w, 3 * PRICE_SAT, "every web customer to go on after i2 restarted");
    tcp.stop();
    web.stop();
    for s in streams {
        s.join().unwrap();
    }

    // Each TCP customer resumes (delivering a payment it signed and stored but had no answer
    // for when its run was killed) and both sides then agree.
    let synced: Vec<AtomicU64> = (0..TCP_CUSTOMERS).map(|_| AtomicU64::new(0)).collect();
    parallel(&|c| {
        if c < TCP_CUSTOMERS {
            let channel = channels[c].lock().unwrap().clone();
            let v = customer(c, &["channels", "sync", "--channel", &channel]);
            synced[c].store(v["acked_sat"].as_u64().unwrap(), Ordering::SeqCst);
        }
    });

    // Every acknowledged payment is in the store; every channel's history strictly increases.
    let store = rt.block_on(PostgresStore::connect(&pg.url)).unwrap();
    let rows = merchant_rows(&rt, &store);
    assert_eq!(rows.len(), n, "one channel per customer");
    let mut ids: Vec<OutPoint> = Vec::new();
    for c in 0..n {
        let list = customer(c, &["channels", "list"]);
        assert_eq!(list.as_array().unwrap().len(), 1, "customer {c}: {list}");
        let id: OutPoint = list[0]["channel"].as_str().unwrap().parse().unwrap();
        let row = &rows[&id];
        let history = rt.block_on(store.payments(id, Role::Merchant)).unwrap();
        assert!(
            history.windows(2).all(|p| p[0].total < p[1].total),
            "customer {c}: the stored history strictly increases"
        );
        assert_eq!(history.last().map(|p| p.total), Some(row.total), "customer {c}");
        if c < TCP_CUSTOMERS {
            let acked = tcp.acked[c].load(Ordering::SeqCst);
            assert!(row.total.to_sat() >= acked, "customer {c}: {} < acked {acked}", row.total);
            let synced = synced[c].load(Ordering::SeqCst);
            assert_eq!(synced, row.total.to_sat(), "customer {c}: both sides agree after a resume");
        } else {
            let charged = web.acked[c - TCP_CUSTOMERS].load(Ordering::SeqCst);
            let state = MerchantState::decode(&row.state).unwrap();
            assert!(
                state.charged.to_sat() >= charged && state.charged <= row.total,
                "customer {c}: stored charged {} against {charged} charged by 200s, total {}",
                state.charged,
                row.total
            );
        }
        ids.push(id);
    }

    // Each channel is settled once: closed through the balancer, mined, its one settlement
    // pays the stored total, and the leader follows every one to `Settled`.
    let settlements: Vec<Mutex<String>> = (0..n).map(|_| Mutex::new(String::new())).collect();
    parallel(&|c| {
        let closed = customer(c, &["channels", "close", "--channel", &ids[c].to_string()]);
        *settlements[c].lock().unwrap() = closed["settlement_txid"].as_str().unwrap().to_string();
    });
    let mined = customer(0, &["node", "mine", "1"]);
    let rpc = common::rpc(&url, &cookie);
    let block: Value = rpc.call("getblock", &[mined["blocks"][0].clone(), json!(2)]).unwrap();
    let mempool: Value = rpc.call("getrawmempool", &[]).unwrap();
    assert_eq!(mempool, json!([]), "nothing else was sent");
    let rows = merchant_rows(&rt, &store);
    for (c, id) in ids.iter().enumerate() {
        let txid = settlements[c].lock().unwrap().clone();
        let spends: Vec<&Value> = block["tx"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tx| {
                tx["vin"].as_array().unwrap().iter().any(|i| {
                    i["txid"].as_str() == Some(&id.txid.to_string())
                        && i["vout"].as_u64() == Some(u64::from(id.vout))
                })
            })
            .collect();
        assert_eq!(spends.len(), 1, "customer {c}: one spend of the funding");
        assert_eq!(spends[0]["txid"].as_str(), Some(txid.as_str()), "customer {c}");
        let row = &rows[id];
        let change = (spends[0]["vout"][0]["value"].as_f64().unwrap() * 1e8).round() as u64;
        assert_eq!(
            change,
            row.capacity.to_sat() - row.total.to_sat(),
            "customer {c}: settled at the stored total"
        );
    }
    wait_for(
        "the leader to follow every settlement to its confirmation",
        Duration::from_secs(60),
        || {
            let rows = merchant_rows(&rt, &store);
            ids.iter().enumerate().all(|(c, id)| {
                rows[id].phase == Phase::Settled
                    && rows[id].closing_txid.map(|t| t.to_string())
                        == Some(settlements[c].lock().unwrap().clone())
            })
        },
    );
    let live: Vec<Value> = instances[1..].iter().map(|i| summary(i.http).unwrap()).collect();
    let leaders: Vec<&Value> = live.iter().filter(|s| s["is_settlement_leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "one leader among the living: {live:?}");
    eprintln!("instances_e2e: sessions before the kill: {}", spread.join(", "));
    eprintln!(
        "instances_e2e: {} TCP payments and {} paid requests acknowledged; {} TCP runs and {} requests failed over",
        tcp.levels().iter().sum::<u64>(),
        web.levels().iter().sum::<u64>() / PRICE_SAT,
        tcp.failures.iter().map(|f| f.load(Ordering::SeqCst)).sum::<u64>(),
        web.failures.iter().map(|f| f.load(Ordering::SeqCst)).sum::<u64>(),
    );
    drop(instances);
    rt.block_on(pg.drop_db());
}

#[test]
fn a_killed_leader_is_replaced_within_the_bound_and_the_next_settles() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) =
        postgres(&rt, "a_killed_leader_is_replaced_within_the_bound_and_the_next_settles")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url, cookie) = start_node(&tmp.path().join("node"));
    let merchant = Merchant::new(&url, &cookie, &pg.url, &tmp.path().join("merchant"));
    let mut instances: Vec<Instance> =
        ["a", "b"].iter().map(|n| merchant.instance(n, &[])).collect();
    let mut addresses = Vec::new();
    for i in &mut instances {
        addresses.push(merchant.start(i)["address"].as_str().unwrap().to_string());
    }
    let leader_of = |instances: &[Instance]| -> Option<usize> {
        let flags: Vec<bool> = instances
            .iter()
            .map(|i| {
                i.process.is_some()
                    && summary(i.http).is_some_and(|s| s["is_settlement_leader"] == true)
            })
            .collect();
        match flags.iter().filter(|f| **f).count() {
            1 => flags.iter().position(|f| *f),
            _ => None,
        }
    };
    let mut leader = None;
    wait_for("one leader", Duration::from_secs(20), || {
        leader = leader_of(&instances);
        leader.is_some()
    });
    let leader = leader.unwrap();
    let other = 1 - leader;

    // A customer's channel, paid through the instance that does not lead.
    let home = tmp.path().join("customer");
    let customer = |args: &[&str]| run(paychan_cmd(&home, &url, &cookie, args));
    customer(&["wallet", "new"]);
    customer(&["wallet", "faucet"]);
    let opened = customer(&[
        "channels",
        "open",
        "--merchant",
        &addresses[other],
        "--deposit",
        "100000sat",
        "--life",
        "7h",
    ]);
    let channel = opened["channel"].as_str().unwrap().to_string();
    let id: OutPoint = channel.parse().unwrap();
    customer(&["node", "mine", "1"]);
    let paid =
        customer(&["channels", "pay", "--channel", &channel, "--amount", "7sat", "--count", "100"]);
    assert_eq!(paid["acked_sat"], 700);

    // The leader is SIGKILLed: the other holds the lease within ttl + ttl/3 and a tick (and a
    // second for the processes' scheduling).
    let killed = Instant::now();
    drop(instances[leader].process.take());
    let bound = Duration::from_millis(LEASE_TTL_SECS * 1000 * 4 / 3 + TICK_SECS * 1000 + 1000);
    wait_for("the other instance to hold the lease", bound + Duration::from_secs(10), || {
        leader_of(&instances) == Some(other)
    });
    let took = killed.elapsed();
    assert!(took <= bound, "the lease moved in {took:?}, above the bound {bound:?}");
    eprintln!(
        "instances_e2e: the lease moved {took:?} after the leader was killed (bound {bound:?})"
    );

    // The channel comes due (4 h before its expiry): the new leader settles it on its own.
    customer(&["node", "time", "--advance", "5h"]);
    customer(&["node", "mine", "11"]);
    let store = rt.block_on(PostgresStore::connect(&pg.url)).unwrap();
    let mut settlement = None;
    wait_for("the new leader's settlement", Duration::from_secs(30), || {
        let row = rt.block_on(store.get(id, Role::Merchant)).unwrap().unwrap();
        settlement = row.closing_txid;
        row.phase == Phase::Settling && settlement.is_some()
    });
    let mined = customer(&["node", "mine", "1"]);
    let tx = mined_tx(&url, &cookie, &settlement.unwrap().to_string(), &mined["blocks"][0]);
    assert_eq!(tx["confirmations"], 1, "the settlement is mined");
    let change = (tx["vout"][0]["value"].as_f64().unwrap() * 1e8).round() as u64;
    assert_eq!(change, 100_000 - 700, "settled at the acknowledged total");
    wait_for("the leader to see it settled", Duration::from_secs(30), || {
        rt.block_on(store.get(id, Role::Merchant)).unwrap().unwrap().phase == Phase::Settled
    });
    drop(instances);
    rt.block_on(pg.drop_db());
}
