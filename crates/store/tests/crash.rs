//! Crash and race tests with real processes: a writer killed with SIGKILL at random moments
//! never loses an acknowledged payment, and two processes racing on PostgreSQL never let a lower
//! total overwrite a higher one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{OutPoint, Txid};
use paychan_store::{ChannelStore, PostgresStore, Role, SqliteStore};

const CHANNELS: u32 = 16;
const KILLS: usize = 20;

fn stress_id(n: u32) -> OutPoint {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 0xcc;
    OutPoint { txid: Txid::from_byte_array(b), vout: 0 }
}

/// Runs the writer, kills it after a pseudo-random delay, returns every acknowledged total.
fn run_and_kill(backend: &[&str], delay: Duration) -> HashMap<u32, u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paychan-store-stress"))
        .arg("record")
        .args(backend)
        .args(["--channels", &CHANNELS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    // Wait until it writes, then let it run for `delay`, then SIGKILL.
    let mut acked: HashMap<u32, u64> = HashMap::new();
    let start = Instant::now();
    let mut first_ack: Option<Instant> = None;
    loop {
        let l = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => String::new(),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the writer exited early"),
        };
        note(&mut acked, &l);
        if first_ack.is_none() && l.starts_with("ack") {
            first_ack = Some(Instant::now());
        }
        if first_ack.is_some_and(|t| t.elapsed() >= delay) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the writer never acknowledged");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Lines printed before the kill are acknowledgements too.
    while let Ok(l) = rx.try_recv() {
        note(&mut acked, &l);
    }
    acked
}

fn note(acked: &mut HashMap<u32, u64>, line: &str) {
    let mut parts = line.split_whitespace();
    if parts.next() == Some("ack") {
        // A torn last line (the kill landed mid-write) is not a complete acknowledgement.
        if let (Some(n), Some(t), None) = (parts.next(), parts.next(), parts.next()) {
            if let (Ok(n), Ok(t)) = (n.parse::<u32>(), t.parse::<u64>()) {
                let e = acked.entry(n).or_default();
                *e = (*e).max(t);
            }
        }
    }
}

async fn check(store: &dyn ChannelStore, acked: &HashMap<u32, u64>, round: usize) -> u64 {
    let mut seen = 0;
    for (n, total) in acked {
        let row = store.get(stress_id(*n), Role::Merchant).await.unwrap().unwrap();
        assert!(
            row.total.to_sat() >= *total,
            "round {round}: channel {n} acknowledged {total} but the store has {}",
            row.total
        );
        seen += 1;
    }
    seen
}

fn delay(round: usize) -> Duration {
    // 5..=155 ms, varied so kills land at many points of the commit cycle.
    Duration::from_millis(5 + ((round as u64 * 7_919) % 151))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_loses_no_acknowledged_payment_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let path_s = path.display().to_string();
    let mut total_acks = 0usize;
    for round in 0..KILLS {
        let acked = run_and_kill(&["--sqlite", &path_s], delay(round));
        assert!(!acked.is_empty(), "round {round}: no acknowledgement before the kill");
        total_acks += acked.len();
        let store = SqliteStore::open(&path).unwrap();
        check(&store, &acked, round).await;
    }
    assert!(total_acks >= KILLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_loses_no_acknowledged_payment_under_sigkill() {
    let Some(db) =
        common::fresh_postgres("postgres_loses_no_acknowledged_payment_under_sigkill").await
    else {
        return;
    };
    for round in 0..KILLS {
        let acked = run_and_kill(&["--postgres", &db.url], delay(round));
        assert!(!acked.is_empty(), "round {round}: no acknowledgement before the kill");
        let store = PostgresStore::connect(&db.url).await.unwrap();
        check(&store, &acked, round).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_on_postgres_without_losing_the_highest_total() {
    let Some(db) = common::fresh_postgres("two_processes_race_on_postgres").await else { return };
    // Create the channels first so both racers start from the same rows.
    {
        let s = PostgresStore::connect(&db.url).await.unwrap();
        drop(s);
    }
    let spawn = |seed: &str| {
        Command::new(env!("CARGO_BIN_EXE_paychan-store-stress"))
            .args([
                "race",
                "--postgres",
                &db.url,
                "--channels",
                "8",
                "--rounds",
                "400",
                "--seed",
                seed,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("11"), spawn("23"));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut wins: HashMap<u32, Vec<u64>> = HashMap::new();
    for o in &outs {
        assert!(o.status.success());
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let p: Vec<&str> = l.split_whitespace().collect();
            if p.len() == 3 && p[0] == "win" {
                wins.entry(p[1].parse().unwrap()).or_default().push(p[2].parse().unwrap());
            }
        }
    }
    assert!(wins.values().map(Vec::len).sum::<usize>() > 16, "both raced and won some writes");
    let store = PostgresStore::connect(&db.url).await.unwrap();
    for n in 0..8u32 {
        let highest = wins.get(&n).and_then(|w| w.iter().max().copied()).unwrap_or(0);
        let row = store.get(stress_id(n), Role::Merchant).await.unwrap().unwrap();
        assert_eq!(row.total.to_sat(), highest, "channel {n} ends at the highest total won");
        let history: Vec<u64> = store
            .payments(stress_id(n), Role::Merchant)
            .await
            .unwrap()
            .iter()
            .map(|p| p.total.to_sat())
            .collect();
        assert!(history.windows(2).all(|w| w[0] < w[1]), "channel {n}: {history:?}");
        let mut won = wins.get(&n).cloned().unwrap_or_default();
        won.sort_unstable();
        assert_eq!(history, won, "every win is in the history, in order, and nothing else");
    }
    db.drop_db().await;
}
