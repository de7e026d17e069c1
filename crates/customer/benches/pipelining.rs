//! Pipelined payments on one channel against one-at-a-time, over loopback TCP with the real
//! SQLite stores on both sides and the embedded node, measured in the same run.
//!
//! Run: `cargo bench -p paychan-customer --bench pipelining`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use paychan_core::bitcoin::Amount;
use paychan_harness::fixtures::{key, p2wpkh};

const N: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let w = paychan_harness::World::builder().start().await.unwrap();
    let (node, customer) = (&w.node, &w.customer);
    let id = customer.open(&w.peer, Amount::from_sat(10_000_000), None).await.unwrap();
    node.mine(1, &p2wpkh(&key(0x77))).unwrap();
    customer.pay(id, Amount::from_sat(1)).await.unwrap(); // warm up, confirms the channel

    let t = Instant::now();
    let mut latencies = Vec::with_capacity(N);
    for _ in 0..N {
        let one = Instant::now();
        customer.pay(id, Amount::from_sat(1)).await.unwrap();
        latencies.push(one.elapsed());
    }
    let single = N as f64 / t.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p50_us = latencies[N / 2].as_secs_f64() * 1e6;
    let p99_us = latencies[N * 99 / 100].as_secs_f64() * 1e6;

    let t = Instant::now();
    for _ in 0..N / 100 {
        customer.pay_many(id, &[Amount::from_sat(1); 100]).await.unwrap();
    }
    let pipelined = N as f64 / t.elapsed().as_secs_f64();

    println!("pipelining bench ({N} payments on one channel, loopback TCP, SQLite durable on both sides)");
    println!("  one at a time        {single:>9.0} payments/s  (p50 {p50_us:.0} µs, p99 {p99_us:.0} µs each: two durable commits and a round trip)");
    println!(
        "  pipelined, window 100 {pipelined:>8.0} payments/s  {:.1}× one at a time",
        pipelined / single
    );
}
