//! Rate limits as token buckets, sans-I/O: time comes in as milliseconds from any fixed origin,
//! so every decision is tested without a clock.
//!
//! A [`Rate`] of `n` per `window` refills one token every `window / n` and holds at most `n`
//! (a client may burst `n` requests, then goes at the rate). [`Limiter`] keeps one bucket per
//! key (an IP address, a channel) and forgets the least recently used keys beyond its bound,
//! so a flood of new keys costs bounded memory.

use std::collections::HashMap;
use std::hash::Hash;

use crate::Error;

/// `n` per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per window (the burst).
    pub n: u32,
    /// The window, milliseconds.
    pub window_ms: u64,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h` or `N/d` (per second, minute, hour, day).
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for anything else, or `N` = 0.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidPolicy(format!("{s:?} is not a rate like 10/s, 600/m, 1000/d"));
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let window_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(bad());
        }
        Ok(Rate { n, window_ms })
    }

    fn interval_ms(&self) -> u64 {
        (self.window_ms / u64::from(self.n)).max(1)
    }
}

impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let unit = match self.window_ms {
            1_000 => "s",
            60_000 => "m",
            3_600_000 => "h",
            86_400_000 => "d",
            _ => return write!(f, "{}/{}ms", self.n, self.window_ms),
        };
        write!(f, "{}/{unit}", self.n)
    }
}

/// One bucket: tokens (in thousandths, for exact refills) and when it was last refilled.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
    used_ms: u64,
}

/// Buckets of one [`Rate`], per key, at most `max_keys` of them.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter at `rate` remembering at most `max_keys` keys (at least 1).
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Limiter { rate, max_keys: max_keys.max(1), buckets: HashMap::new() }
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token for `key` at `now_ms`: `Ok(())`, or `Err(ms)` to wait until one is there.
    /// A refused take changes nothing.
    pub fn take(&mut self, key: &K, now_ms: u64) -> Result<(), u64> {
        let full = u64::from(self.rate.n) * 1_000;
        let interval = self.rate.interval_ms();
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict();
        }
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            milli_tokens: full,
            at_ms: now_ms,
            used_ms: now_ms,
        });
        // Refill: 1,000 milli-tokens per interval since the last refill.
        let elapsed = now_ms.saturating_sub(b.at_ms);
        b.milli_tokens = (b.milli_tokens + elapsed.saturating_mul(1_000) / interval).min(full);
        b.at_ms = now_ms;
        b.used_ms = now_ms;
        if b.milli_tokens >= 1_000 {
            b.milli_tokens -= 1_000;
            Ok(())
        } else {
            let missing = 1_000 - b.milli_tokens;
            Err((missing * interval).div_ceil(1_000))
        }
    }

    /// Returns a token taken for `key` (its request was refused for another reason, so it
    /// does not count).
    pub fn give_back(&mut self, key: &K) {
        let full = u64::from(self.rate.n) * 1_000;
        if let Some(b) = self.buckets.get_mut(key) {
            b.milli_tokens = (b.milli_tokens + 1_000).min(full);
        }
    }

    /// Forgets the least recently used tenth of the keys (at least one).
    fn evict(&mut self) {
        let n = (self.buckets.len() / 10).max(1);
        let mut by_use: Vec<(u64, K)> =
            self.buckets.iter().map(|(k, b)| (b.used_ms, k.clone())).collect();
        by_use.sort_unstable_by_key(|(t, _)| *t);
        for (_, k) in by_use.into_iter().take(n) {
            self.buckets.remove(&k);
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Seconds for a `Retry-After` header: `ms` rounded up, at least 1.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_bursts_then_goes_at_the_rate() {
        let mut l = Limiter::new(Rate::parse("3/s").unwrap(), 10);
        for _ in 0..3 {
            assert_eq!(l.take(&"a", 0), Ok(()));
        }
        // Empty: the next token is one interval (333 ms) away.
        assert_eq!(l.take(&"a", 0), Err(333));
        assert_eq!(l.take(&"a", 200), Err(134), "rounded up: never too early");
        assert_eq!(l.take(&"a", 334), Ok(()));
        // Another key has its own bucket.
        assert_eq!(l.take(&"b", 334), Ok(()));
        // A long pause refills to the burst, no more.
        for _ in 0..3 {
            assert_eq!(l.take(&"a", 100_000), Ok(()));
        }
        assert!(l.take(&"a", 100_000).is_err());
    }

    #[test]
    fn a_refused_take_changes_nothing() {
        let mut l = Limiter::new(Rate { n: 1, window_ms: 1_000 }, 10);
        assert_eq!(l.take(&1, 0), Ok(()));
        assert_eq!(l.take(&1, 500), Err(500));
        assert_eq!(l.take(&1, 500), Err(500), "asking again does not push the wait out");
        assert_eq!(l.take(&1, 1_000), Ok(()));
    }

    #[test]
    fn a_token_given_back_counts_again() {
        let mut l = Limiter::new(Rate { n: 1, window_ms: 60_000 }, 10);
        assert_eq!(l.take(&1, 0), Ok(()));
        assert!(l.take(&1, 1).is_err());
        l.give_back(&1);
        assert_eq!(l.take(&1, 2), Ok(()));
        // Never above the burst.
        l.give_back(&1);
        l.give_back(&1);
        assert_eq!(l.take(&1, 3), Ok(()));
        assert!(l.take(&1, 4).is_err());
    }

    #[test]
    fn keys_are_bounded() {
        let mut l = Limiter::new(Rate::parse("1/d").unwrap(), 100);
        for k in 0..10_000u32 {
            assert_eq!(l.take(&k, u64::from(k)), Ok(()));
            assert!(l.len() <= 100);
        }
        // The most recent keys are still remembered (and limited).
        assert!(l.take(&9_999, 10_000).is_err());
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(Rate::parse("10/s").unwrap(), Rate { n: 10, window_ms: 1_000 });
        assert_eq!(Rate::parse(" 600 / m ").unwrap().to_string(), "600/m");
        for bad in ["", "10", "0/s", "10/y", "-1/s", "x/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
