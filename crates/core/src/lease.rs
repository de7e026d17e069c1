//! The settlement lease as one instance sees it (issue 22, ADR 0030), sans-I/O: time comes in as
//! milliseconds of the instance's own monotonic clock, the store's answers come in as results.
//!
//! Several merchant instances on one database agree on one settlement leader through a lease
//! row the database expires by its own clock: an instance asks for (or renews) the lease for
//! `ttl`, and the database grants it when it is free, expired or already the asker's. The asker
//! cannot read the database's clock, so it counts its leadership from the moment it *sent* the
//! request, which is no later than the moment the database started the lease: it believes
//! itself leader until `sent + ttl − margin`, which ends before the database would grant the
//! lease to anyone else, as long as the two clocks run at about the same rate (the margin
//! covers their drift over one `ttl`). It asks again every `ttl / 3`, so one lost renewal does
//! not cost the lease.

/// The timing of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long the database holds the lease for its holder after each grant, ms.
    pub ttl_ms: u64,
    /// How much earlier than `ttl` the holder stops acting as leader, ms: the clocks' drift
    /// over one `ttl` and the time an action started just before the end takes to finish.
    pub margin_ms: u64,
}

impl LeaseTiming {
    /// A lease of `ttl_ms` with a margin of a fifth of it.
    pub fn with_ttl(ttl_ms: u64) -> Self {
        LeaseTiming { ttl_ms, margin_ms: ttl_ms / 5 }
    }

    /// How often the holder (or a candidate) asks: a third of the ttl.
    pub fn renew_every_ms(&self) -> u64 {
        (self.ttl_ms / 3).max(1)
    }

    /// The longest a dead leader keeps the others from settling: its last grant's `ttl`, plus
    /// one interval before a candidate asks again.
    pub fn takeover_bound_ms(&self) -> u64 {
        self.ttl_ms + self.renew_every_ms()
    }
}

/// One instance's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    timing: LeaseTiming,
    /// Until when (own clock) this instance may act as leader; `None`: not the leader.
    held_until_ms: Option<u64>,
    /// When the last request was sent (own clock); `None`: never asked.
    last_ask_ms: Option<u64>,
}

impl Lease {
    /// Not held, never asked.
    pub fn new(timing: LeaseTiming) -> Self {
        Lease { timing, held_until_ms: None, last_ask_ms: None }
    }

    /// Its timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Whether it is time to ask the database (again) at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        match self.last_ask_ms {
            None => true,
            Some(t) => now_ms.saturating_sub(t) >= self.timing.renew_every_ms(),
        }
    }

    /// Records a request sent at `sent_ms`; then hand its answer to [`Lease::answered`].
    pub fn asking(&mut self, sent_ms: u64) {
        self.last_ask_ms = Some(sent_ms);
    }

    /// The database's answer to the request sent at `sent_ms`: granted to this instance, or
    /// held by another (`false`). A request that failed (no answer) changes nothing: a held
    /// lease runs out on its own.
    pub fn answered(&mut self, sent_ms: u64, granted: bool) {
        self.held_until_ms = if granted {
            let until = sent_ms + self.timing.ttl_ms.saturating_sub(self.timing.margin_ms);
            // An answer that arrives after a later one cannot shorten the lease.
            Some(self.held_until_ms.map_or(until, |u| u.max(until)))
        } else {
            None
        };
    }

    /// Whether this instance may act as the leader at `now_ms`.
    pub fn is_leader(&self, now_ms: u64) -> bool {
        self.held_until_ms.is_some_and(|until| now_ms < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_lease_ends_before_the_database_would_grant_it_again() {
        let t = LeaseTiming::with_ttl(15_000);
        let mut l = Lease::new(t);
        assert!(l.due(0) && !l.is_leader(0));
        l.asking(1_000);
        // The answer came 400 ms later; leadership counts from the send.
        l.answered(1_000, true);
        assert!(l.is_leader(1_400));
        assert!(l.is_leader(1_000 + 12_000 - 1));
        assert!(!l.is_leader(1_000 + 12_000), "ttl − margin after the send");
        // The database grants it to another only after sent + ttl (it started no earlier).
        assert!(1_000 + 12_000 < 1_000 + t.ttl_ms);
    }

    #[test]
    fn renewals_come_every_third_of_the_ttl_and_extend_the_lease() {
        let t = LeaseTiming::with_ttl(15_000);
        let mut l = Lease::new(t);
        l.asking(0);
        l.answered(0, true);
        assert!(!l.due(4_999));
        assert!(l.due(5_000));
        l.asking(5_000);
        l.answered(5_000, true);
        assert!(l.is_leader(16_999));
        assert!(!l.is_leader(17_000));
        // A late answer to an older request does not shorten it.
        l.answered(0, true);
        assert!(l.is_leader(16_999));
    }

    #[test]
    fn a_refusal_ends_leadership_at_once_and_a_failed_request_changes_nothing() {
        let mut l = Lease::new(LeaseTiming::with_ttl(15_000));
        l.asking(0);
        l.answered(0, true);
        // A request that failed: asked, never answered; the lease runs out on its own.
        l.asking(5_000);
        assert!(l.is_leader(11_999));
        assert!(!l.is_leader(12_000));
        l.asking(12_000);
        l.answered(12_000, false);
        assert!(!l.is_leader(12_001));
    }

    #[test]
    fn the_takeover_bound_is_a_ttl_and_one_interval() {
        let t = LeaseTiming::with_ttl(9_000);
        assert_eq!(t.renew_every_ms(), 3_000);
        assert_eq!(t.takeover_bound_ms(), 12_000);
    }
}
