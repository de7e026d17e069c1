//! `paychan bench`: speed figures beside their physical bound, measured in the same run on the
//! same cores (machines are noisy; ratios travel, absolute numbers do not).
//!
//! * `http`: paid requests/s through the paywall Layer (real merchant, SQLite store with
//!   `synchronous=FULL`, real channels opened over TCP, loopback HTTP with C connections)
//!   beside unpaid requests/s of the same endpoint, raw secp256k1 verifies/s and the
//!   validate-only bound (all cores doing nothing but the merchant's payment check).

use std::process::ExitCode;

use clap::Subcommand;

use super::common::{runtime, Common};

mod http;
mod measure;
mod memory;
mod node;
mod pay;
mod soak;

use crate::error::fail;
use crate::CliError;
use measure::say;

/// `paychan bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Paid vs unpaid requests/s through the paywall Layer, beside the validate-only bound.
    Http {
        /// Concurrent connections (each paying on its own channel).
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Paid requests per connection.
        #[arg(long, default_value_t = 300)]
        requests: u32,
        /// Seconds of each bound measurement and of the unpaid run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Payments/s over loopback TCP with real stores, beside the sign + validate bound.
    Pay {
        /// Channels, each paying from its own task.
        #[arg(long, default_value_t = 100)]
        channels: u32,
        /// Payments per channel.
        #[arg(long, default_value_t = 1_000)]
        payments: u32,
        /// Payments in flight per channel (pipelined, acknowledged together).
        #[arg(long, default_value_t = 32)]
        window: u32,
        /// `sqlite` (files, synchronous=FULL), `memory` (SQLite on /dev/shm), `postgres`
        /// (PAYCHAN_TEST_POSTGRES_URL) or a postgres:// URL.
        #[arg(long, default_value = "sqlite")]
        store: pay::StoreKind,
        /// Seconds of the bound measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Merchant instances on the one store (issue 22): each its own connection to it and
        /// its own listener; the channels are opened through them in turn.
        #[arg(long, default_value_t = 1)]
        instances: u32,
    },
    /// A merchant starting on a store of N open channels, some of which pay: its peak RSS
    /// (bound 256 MiB) and the time to its first payment (bound 1 s).
    Memory {
        /// Open channels in the store.
        #[arg(long, default_value_t = 1_000_000)]
        channels: u32,
        /// How many of them pay during the run (twice each).
        #[arg(long, default_value_t = 10_000)]
        paying: u32,
    },
    /// (Internal: the merchant process of `bench memory`.)
    #[command(hide = true)]
    MemoryLoad {
        /// The SQLite store.
        #[arg(long)]
        store: std::path::PathBuf,
        /// The key chain's directory.
        #[arg(long)]
        keys: std::path::PathBuf,
        /// How many channels the store holds.
        #[arg(long)]
        stored: u32,
        /// How many of them pay.
        #[arg(long)]
        paying: u32,
    },
    /// Many customers paying one merchant at once for a while, half over TCP, half over HTTP:
    /// fails on any error or any acknowledged payment missing from the merchant's store.
    Soak {
        /// Customers (each with its own channel and connection).
        #[arg(long, default_value_t = 1_000)]
        customers: u32,
        /// Seconds of paying.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Mempool acceptance and block assembly beside raw script verifications/s.
    Node {
        /// One-input transactions to accept and mine.
        #[arg(long, default_value_t = 2_000)]
        transactions: usize,
    },
}

/// Runs `paychan bench`.
pub fn run(cmd: BenchCommand, common: &Common) -> Result<ExitCode, CliError> {
    match cmd {
        BenchCommand::Pay { channels, payments, window, store, seconds, instances } => {
            if channels == 0 || payments == 0 || window == 0 || seconds <= 0.0 || instances == 0 {
                return Err(fail(
                    "--channels, --payments, --window, --seconds and --instances must be above zero",
                ));
            }
            let shape = pay::Shape { channels, payments, window, instances };
            let r = runtime()?.block_on(pay::bench_pay(shape, store, seconds))?;
            let text = format!(
                "paychan bench pay ({} store, {channels} channels, window {window}, {} cores)\n  bound: sign + validate   {:>9.0} payments/s\n  payments                 {:>9.0} /s  = {:.0}% of the bound\n  latency per payment      p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n  one durable commit       p50 {:.2} ms, p99 {:.2} ms\n  peak RSS                 {} MiB",
                r["store"].as_str().unwrap_or(""),
                r["cores"],
                r["bound_per_s"].as_f64().unwrap_or(0.0),
                r["payments_per_s"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99_9"].as_f64().unwrap_or(0.0),
                r["commit_floor_ms"]["p50"].as_f64().unwrap_or(0.0),
                r["commit_floor_ms"]["p99"].as_f64().unwrap_or(0.0),
                r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Memory { channels, paying } => {
            if channels == 0 {
                return Err(fail("--channels must be above zero"));
            }
            let r = runtime()?.block_on(memory::bench_memory(channels, paying))?;
            let text = format!(
                "paychan bench memory ({channels} open channels in SQLite, {} of them paying)\n  serving after        {} s\n  first payment after  {} s (bound 1 s)\n  payments             {} at {}/s\n  ticks                {} s\n  channels in memory   {}\n  merchant peak RSS    {} MiB (bound 256 MiB)",
                r["paying_channels"], r["serving_after_seconds"], r["first_payment_seconds"],
                r["payments"], r["payments_per_second"], r["tick_seconds"],
                r["channels_in_memory"], r["merchant_peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::MemoryLoad { store, keys, stored, paying } => {
            let r = runtime()?.block_on(memory::load(&store, &keys, stored, paying))?;
            common.print(&r, &r.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Soak { customers, seconds } => {
            if customers == 0 || seconds <= 0.0 {
                return Err(fail("--customers and --seconds must be above zero"));
            }
            let r = runtime()?.block_on(soak::soak(customers, seconds))?;
            let text = format!(
                "paychan bench soak ({customers} customers, {} s)\n  TCP payments       {}\n  paid HTTP requests {}\n  together           {} /s\n  errors             {}\n  acknowledged payments missing from the merchant's store: {}\n  peak RSS           {} MiB",
                r["seconds"], r["tcp_payments"], r["http_requests"], r["payments_per_s"], r["errors"], r["channels_with_lost_acks"], r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Node { transactions } => {
            if transactions == 0 {
                return Err(fail("--transactions must be above zero"));
            }
            say(&format!("accepting and mining {transactions} transactions…"));
            let r = node::bench_node(transactions)?;
            let text = format!(
                "paychan bench node ({transactions} one-input P2WPKH transactions)\n  raw libbitcoinconsensus verify  {:>9.0} /s (bound)\n  mempool acceptance              {:>9.0} tx/s = {:.2}× the bound (p99 {:.0} µs)\n  assemble + connect the block    {:>9.1} ms (scripts cached from the mempool)\n  connect it verifying every input{:>9.1} ms = {:.2}× the bound\n  peak RSS                        {} MiB",
                r["raw_verify_per_s"].as_f64().unwrap_or(0.0),
                r["mempool_accept_per_s"].as_f64().unwrap_or(0.0),
                r["mempool_ratio"].as_f64().unwrap_or(0.0),
                r["accept_latency_us"]["p99"].as_f64().unwrap_or(0.0),
                r["assemble_and_connect_ms"].as_f64().unwrap_or(0.0),
                r["connect_verifying_ms"].as_f64().unwrap_or(0.0),
                r["connect_verifying_ratio"].as_f64().unwrap_or(0.0),
                r["peak_rss_mib"],
            );
            common.print(&r, &text)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Http { connections, requests, seconds } => {
            if connections == 0 || requests == 0 || seconds <= 0.0 {
                return Err(fail("--connections, --requests and --seconds must be above zero"));
            }
            let report = runtime()?.block_on(http::bench_http(connections, requests, seconds))?;
            let text = format!(
                "paychan bench http ({connections} connections, {cores} cores)\n  raw secp256k1 verify   {:>9.0} /s\n  validate-only bound    {:>9.0} /s\n  unpaid requests        {:>9.0} /s\n  paid requests          {:>9.0} /s  = {:.0}% of the lower bound ({:.0} /s)\n  CPU ceiling            {:>9.0} /s  = {:.0}% of the lower bound (unpaid work + one check per request on the same cores); paid = {:.0}% of it\n  paid latency           p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n  peak RSS               {} MiB",
                report["raw_verify_per_s"].as_f64().unwrap_or(0.0),
                report["validate_bound_per_s"].as_f64().unwrap_or(0.0),
                report["unpaid_per_s"].as_f64().unwrap_or(0.0),
                report["paid_per_s"].as_f64().unwrap_or(0.0),
                report["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                report["bound_per_s"].as_f64().unwrap_or(0.0),
                report["cpu_ceiling_per_s"].as_f64().unwrap_or(0.0),
                report["ceiling_vs_bound"].as_f64().unwrap_or(0.0) * 100.0,
                report["paid_vs_ceiling"].as_f64().unwrap_or(0.0) * 100.0,
                report["paid_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                report["paid_latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                report["paid_latency_ms"]["p99_9"].as_f64().unwrap_or(0.0),
                report["peak_rss_mib"],
                cores = report["cores"],
            );
            common.print(&report, &text)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
