//! Prometheus metrics of the merchant (text exposition format), kept in atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The merchant's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Payments accepted.
    pub payments: AtomicU64,
    /// Satoshis accepted (sum of increments).
    pub revenue_sat: AtomicU64,
    /// Payments refused.
    pub rejections: AtomicU64,
    /// Settlements broadcast (replacements included).
    pub settlements: AtomicU64,
    /// Settlement attempts (build, broadcast, follow-up) that failed and were put off.
    pub settle_failures: AtomicU64,
    /// Channels that ended in the customer's refund.
    pub refunds: AtomicU64,
    /// Paid HTTP requests charged.
    pub requests_charged: AtomicU64,
    /// Charges reversed because the request failed upstream.
    pub requests_refunded: AtomicU64,
    /// From a payment's arrival to its acknowledgement.
    pub payment_latency: Histogram,
    /// Store writes.
    pub store_commit: Histogram,
    /// 1 while this instance holds the settlement lease (ADR 0030), else 0.
    pub leader: AtomicU64,
}

impl Metrics {
    /// The text exposition, with `channels` as (phase, count), `kinds` as (kind, count) and
    /// `in_memory` the channels held in memory.
    pub fn render(
        &self,
        channels: &[(&str, usize)],
        kinds: &[(&str, usize)],
        in_memory: usize,
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(&mut out, "paychan_payments_total", "Payments accepted.", &self.payments);
        counter(
            &mut out,
            "paychan_revenue_sat_total",
            "Satoshis accepted in payments.",
            &self.revenue_sat,
        );
        counter(
            &mut out,
            "paychan_payment_rejections_total",
            "Payments refused.",
            &self.rejections,
        );
        counter(&mut out, "paychan_settlements_total", "Settlements broadcast.", &self.settlements);
        counter(
            &mut out,
            "paychan_settlement_failures_total",
            "Settlement attempts that failed (retried with backoff).",
            &self.settle_failures,
        );
        counter(
            &mut out,
            "paychan_refunds_total",
            "Channels refunded to the customer.",
            &self.refunds,
        );
        counter(
            &mut out,
            "paychan_requests_charged_total",
            "Paid HTTP requests charged.",
            &self.requests_charged,
        );
        counter(
            &mut out,
            "paychan_requests_refunded_total",
            "Charges reversed because the request failed upstream.",
            &self.requests_refunded,
        );
        let _ = writeln!(
            out,
            "# HELP paychan_channels Live channels by phase (the store's count).\n# TYPE paychan_channels gauge"
        );
        for (phase, n) in channels {
            let _ = writeln!(out, "paychan_channels{{phase=\"{phase}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP paychan_channels_by_kind Live channels by kind (cltv, dispute).\n# TYPE paychan_channels_by_kind gauge"
        );
        for (kind, n) in kinds {
            let _ = writeln!(out, "paychan_channels_by_kind{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP paychan_channels_in_memory Channels held in memory (in use, with chain work, or idle up to the cache's bound).\n# TYPE paychan_channels_in_memory gauge\npaychan_channels_in_memory {in_memory}"
        );
        let _ = writeln!(
            out,
            "# HELP paychan_settlement_leader 1 while this instance holds the settlement lease (it alone settles, follows and bumps settlements).\n# TYPE paychan_settlement_leader gauge\npaychan_settlement_leader {}",
            self.leader.load(Ordering::Relaxed)
        );
        self.payment_latency.render(
            "paychan_payment_latency_seconds",
            "From a payment's arrival to its acknowledgement.",
            &mut out,
        );
        self.store_commit.render("paychan_store_commit_seconds", "Durable store writes.", &mut out);
        out
    }
}
