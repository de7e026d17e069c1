//! What every bench shares: progress lines, a bound measured on all cores, percentiles, the
//! process's memory, and channels opened for a run. Depends on no other bench.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_merchant::ChannelServer;
use paychan_node::Node;

use crate::CliError;

pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `f` on every core for `secs`; returns the operations per second of all together.
pub fn on_all_cores(secs: f64, f: impl Fn(u64) + Sync) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for core in 0..cores {
            let (stop, done, f) = (&stop, &done, &f);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(core as u64 * 1_000_000 + n);
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Opens `n` channels of `deposit` with the merchant at `peer`, mining a block every ten
/// opens (the wallet chains unconfirmed change, and the mempool limits chains to 25), then
/// confirms them all and lets the merchant see it.
pub async fn open_channels(
    customer: &paychan_customer::Customer,
    node: &Node,
    servers: &[std::sync::Arc<ChannelServer>],
    peers: &[String],
    n: u32,
    deposit: Amount,
) -> Result<Vec<OutPoint>, CliError> {
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        // Through each instance in turn.
        let peer = peers
            .get(i as usize % peers.len().max(1))
            .ok_or_else(|| crate::error::fail("no merchant to open channels with"))?;
        ids.push(customer.open(peer, deposit, None).await?);
        if i % 10 == 9 {
            node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([]))?;
        }
    }
    node.mine(1, &paychan_core::bitcoin::ScriptBuf::new_op_return([]))?;
    for server in servers {
        server.tick().await?;
    }
    Ok(ids)
}

/// Peak resident set size of this process, MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> u64 {
    status_kib("VmHWM:") / 1024
}

/// Resident set size of this process now, MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> u64 {
    status_kib("VmRSS:") / 1024
}

pub(super) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .unwrap_or(0)
}
