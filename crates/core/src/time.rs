//! The notion of "now" the state machines are given: the core reads no clock.

use bitcoin::absolute::LockTime;

/// What the caller knows of the present: wall-clock time and the chain tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Wall-clock Unix time, in seconds.
    pub time: u64,
    /// Height of the best block.
    pub height: u32,
    /// Median-time-past of the best block (BIP 113): the clock locktimes are checked against.
    pub median_time_past: u32,
}

impl Now {
    /// A `Now` with all three fields derived from one Unix time (for tests and tools without a
    /// chain: height 0, median-time-past equal to the time).
    pub fn from_unix(time: u64) -> Self {
        Now { time, height: 0, median_time_past: u32::try_from(time).unwrap_or(u32::MAX) }
    }

    /// Whether the present is at least `distance` (seconds, or blocks for a height lock) before
    /// `lock`, by wall time or tip height. Used for the merchant's deadlines, which are
    /// deliberately measured by the wall clock: it runs ahead of median-time-past.
    pub fn is_before(&self, lock: LockTime, distance: u32) -> bool {
        match lock {
            LockTime::Blocks(h) => {
                u64::from(self.height) + u64::from(distance) < u64::from(h.to_consensus_u32())
            }
            LockTime::Seconds(t) => {
                self.time.saturating_add(u64::from(distance)) < u64::from(t.to_consensus_u32())
            }
        }
    }

    /// Whether a transaction with `nLockTime = lock` can be mined in the next block (Bitcoin
    /// Core's `IsFinalTx` against the next height and the tip's median-time-past).
    pub fn lock_is_final(&self, lock: LockTime) -> bool {
        match lock {
            LockTime::Blocks(h) => h.to_consensus_u32() <= self.height,
            LockTime::Seconds(t) => t.to_consensus_u32() < self.median_time_past,
        }
    }
}
