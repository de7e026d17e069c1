//! The merchant's settlement policy, sans-I/O (DESIGN §2, §7): when a channel's settlement
//! work is due, at which fee rate a settlement goes out, when an unconfirmed one is replaced,
//! and how long to wait after a failure.
//!
//! The driver keeps one [`Scheduler`] beside each [`MerchantChannel`] and does only the I/O:
//! it reads the chain (tip, fee estimate, a transaction's status), asks the scheduler what is
//! due ([`Scheduler::handle_tick`], [`Scheduler::follow`]), signs with
//! [`settle_with_fallback`], broadcasts, and reports the outcome
//! ([`Scheduler::outcome`]). Time comes in as [`Now`]: every rule here is tested with a
//! logical clock.

use bitcoin::secp256k1::SecretKey;
use bitcoin::{Amount, FeeRate, ScriptBuf};

use std::ops::RangeInclusive;

use super::merchant::MerchantChannel;
use super::Phase;
use crate::policy::Policy;
use crate::tx::settlement::Settlement;
use crate::{Error, Now};

/// The first retry of failed settlement work comes this many seconds after the failure; each
/// further failure doubles the wait, up to [`RETRY_MAX_SECS`].
pub const RETRY_FIRST_SECS: u64 = 15;
/// The longest wait between two settlement attempts: well inside the settle margin (4 hours by
/// default: at least 24 attempts before the expiry).
pub const RETRY_MAX_SECS: u64 = 600;
/// A settlement unconfirmed after this many blocks is replaced at a higher fee rate.
pub const BUMP_AFTER_BLOCKS: u32 = 3;
/// A funding this deep is not looked at again at every tick (a reorg deeper than this is not
/// followed; Bitcoin Core's own wallet treats 6 as final in practice).
pub const REORG_SAFETY_DEPTH: u32 = 6;

/// Exponential backoff of one channel's settlement work (build, broadcast, follow-up).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    /// Wall time (Unix seconds) before which nothing is tried again.
    not_before: u64,
}

impl Backoff {
    /// Whether work may be tried at `now` (Unix seconds).
    pub fn due(&self, now: u64) -> bool {
        now >= self.not_before
    }

    /// Records a failure at `now`; returns the wait in seconds before the next attempt:
    /// [`RETRY_FIRST_SECS`], doubled at each further failure, at most [`RETRY_MAX_SECS`].
    pub fn failed(&mut self, now: u64) -> u64 {
        let wait = RETRY_FIRST_SECS.saturating_mul(1 << self.failures.min(16)).min(RETRY_MAX_SECS);
        self.failures = self.failures.saturating_add(1);
        self.not_before = now.saturating_add(wait);
        wait
    }

    /// Records a success: the next failure waits [`RETRY_FIRST_SECS`] again.
    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The Unix time before which nothing is tried again.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }
}

/// A settlement the driver broadcast: the tip height then, and the fee rate it pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast {
    /// The tip's height when it went out: blocks are counted from here.
    pub height: u32,
    /// The fee rate it pays.
    pub fee_rate: FeeRate,
}

/// What the chain says of the settlement that is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementSeen {
    /// In a block.
    Confirmed,
    /// In the node's mempool.
    InMempool,
    /// Neither: dropped from the mempool (or never taken).
    Unknown,
}

/// The settlement work due on one channel at a tick, done in this order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Sign and broadcast a settlement at the fee estimate.
    pub settle: bool,
    /// Follow the settlement that is out ([`Scheduler::follow`]). (A spend of the funding,
    /// by whoever, is the driver's to notice at every tick: it decides the phase.)
    pub follow: bool,
}

/// What to do about the settlement that is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// It confirmed: record the spend.
    Confirmed,
    /// Wait for more blocks.
    Wait,
    /// It left the mempool: broadcast the same transaction again (same fee rate; the blocks
    /// are still counted from the first broadcast).
    Rebroadcast {
        /// The rate it paid.
        fee_rate: FeeRate,
    },
    /// Unconfirmed after [`BUMP_AFTER_BLOCKS`]: replace it at
    /// [`replacement_rate`]`(previous, estimate)`, never at or below `previous` (BIP 125: a
    /// replacement pays a higher rate and more fee).
    Replace {
        /// The rate of the one it replaces.
        previous: FeeRate,
    },
    /// Nothing is known of the last broadcast (the merchant restarted): sign it again at the
    /// estimate (same inputs: the same transaction or a replacement) and count from now.
    Rebuild,
}

/// One channel's settlement scheduler: its backoff, the settlement it has out, and how deep
/// its funding was at the last look.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scheduler {
    backoff: Backoff,
    out: Option<Broadcast>,
    depth: u32,
    broadcast_failed: bool,
}

impl Scheduler {
    /// Whether to look at the funding's confirmations at this tick: only when a block
    /// arrived, and never again for a funding [`REORG_SAFETY_DEPTH`] deep under an open
    /// channel.
    pub fn wants_confirmations(&self, phase: Phase, new_tip: bool) -> bool {
        new_tip && (self.depth < REORG_SAFETY_DEPTH || phase != Phase::Open)
    }

    /// Records the funding's confirmations at the last look.
    pub fn confirmations(&mut self, confirmations: u32) {
        self.depth = confirmations;
    }

    /// The work due at `now` for `channel`, after the machine's own tick: `settle_due` when
    /// it reported [`Event::SettleDue`](super::Event::SettleDue), `new_tip` when a block
    /// arrived since the last tick. Nothing while backing off after a failure; the settlement
    /// out is followed when a block arrived or a retry is due.
    pub fn handle_tick(
        &self,
        now: &Now,
        channel: &MerchantChannel,
        settle_due: bool,
        new_tip: bool,
    ) -> Work {
        let phase = channel.phase();
        if phase.is_final() || !self.backoff.due(now.time) {
            return Work::default();
        }
        if settle_due && channel.accepted() > Amount::ZERO && phase != Phase::Settling {
            return Work { settle: true, ..Work::default() };
        }
        let look = new_tip || self.backoff.failures() > 0;
        // A dispute channel's settlement goes out while disputed and stays so until it
        // confirms; its cooperative close (settling) is the customer's to broadcast: nothing
        // to follow but the funding's spend.
        let state = channel.state();
        let out = (phase == Phase::Settling && state.trigger.is_none())
            || (phase == Phase::Disputed && state.settlement_txid.is_some());
        Work { settle: false, follow: look && out }
    }

    /// Whether a settlement may be tried at `now` outside a tick (a payment exhausted the
    /// channel): not while backing off.
    pub fn may_settle(&self, now: &Now) -> bool {
        self.backoff.due(now.time)
    }

    /// What to do about the settlement that is out, seen `seen` at tip `height`.
    pub fn follow(&self, seen: SettlementSeen, height: u32) -> FollowUp {
        if seen == SettlementSeen::Confirmed {
            return FollowUp::Confirmed;
        }
        let Some(out) = self.out else { return FollowUp::Rebuild };
        if height >= out.height.saturating_add(BUMP_AFTER_BLOCKS) {
            FollowUp::Replace { previous: out.fee_rate }
        } else if seen == SettlementSeen::Unknown {
            FollowUp::Rebroadcast { fee_rate: out.fee_rate }
        } else {
            FollowUp::Wait
        }
    }

    /// A settlement went out (a first one, or a replacement): blocks are counted from here.
    pub fn sent(&mut self, broadcast: Broadcast) {
        self.out = Some(broadcast);
    }

    /// A replacement could not be signed: the one out there stays, and the blocks are counted
    /// again from `height` before the next try.
    pub fn replacement_failed(&mut self, height: u32) {
        if let Some(out) = &mut self.out {
            out.height = height;
        }
    }

    /// The settlement that is out, as last recorded.
    pub fn out(&self) -> Option<Broadcast> {
        self.out
    }

    /// Settlement work starts: forget an earlier broadcast failure.
    pub fn begin(&mut self) {
        self.broadcast_failed = false;
    }

    /// Records whether the node took a broadcast of this channel's transactions.
    pub fn broadcast(&mut self, taken: bool) {
        self.broadcast_failed |= !taken;
    }

    /// Records the outcome of settlement work at `now` (`ok`: it did not fail, and every
    /// broadcast since [`Scheduler::begin`] was taken). A success clears the backoff; a failure
    /// returns the wait before the next try.
    pub fn outcome(&mut self, now: &Now, ok: bool) -> Option<u64> {
        if ok && !self.broadcast_failed {
            self.backoff.succeeded();
            None
        } else {
            Some(self.backoff.failed(now.time))
        }
    }

    /// The backoff as it stands.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Whether this scheduler knows nothing its channel's stored row does not, for a channel
    /// in `phase`: open, its funding deep enough never to be looked at again, no settlement
    /// out, no failure to back off from. Only then may a driver drop the channel from memory
    /// and load it again from the store later (its scheduler starts afresh).
    pub fn is_idle(&self, phase: Phase) -> bool {
        phase == Phase::Open
            && !self.wants_confirmations(phase, true)
            && self.out.is_none()
            && self.backoff.failures() == 0
            && !self.broadcast_failed
    }
}

/// The stored expiries (locktime values) of the open channels whose settlement is due at
/// `now` under `policy` (the merchant's own tick reports
/// [`SettleReason::Expiry`](super::SettleReason::Expiry) for exactly these): block heights,
/// then Unix times. A driver that keeps idle channels out of memory asks its store for the
/// channels in these windows at each tick. A dispute channel (no expiry, stored as 0) is in
/// neither.
pub fn due_expiries(policy: &Policy, now: &Now) -> [RangeInclusive<u32>; 2] {
    let blocks = policy.settle_distance(true);
    let secs = policy.settle_distance(false);
    let last_height = now.height.saturating_add(blocks).min(LOCK_TIME_THRESHOLD - 1);
    let last_time = u32::try_from(now.time.saturating_add(u64::from(secs))).unwrap_or(u32::MAX);
    [1..=last_height, LOCK_TIME_THRESHOLD..=last_time.max(LOCK_TIME_THRESHOLD - 1)]
}

/// Where locktime values stop being heights and start being Unix times.
const LOCK_TIME_THRESHOLD: u32 = 500_000_000;

/// The rate of a replacement for a settlement paying `previous`: half as much again, at least
/// 500 sat/kwu (2 sat/vB) more (BIP 125 wants a higher rate and more absolute fee; the
/// settlement's size does not change), and at least today's `estimate`.
pub fn replacement_rate(previous: FeeRate, estimate: FeeRate) -> FeeRate {
    let kwu = previous.to_sat_per_kwu();
    FeeRate::from_sat_per_kwu(kwu.saturating_mul(3) / 2)
        .max(FeeRate::from_sat_per_kwu(kwu.saturating_add(500)))
        .max(estimate)
}

/// The highest fee rate a merchant pays for its settlements (the network's cap, ADR 0018): a
/// broken estimate, or replacements piling up, must not burn the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeCap(pub FeeRate);

impl FeeCap {
    /// The rate of a first settlement: the estimate, at most the cap.
    pub fn first(&self, estimate: FeeRate) -> FeeRate {
        estimate.min(self.0)
    }

    /// The rate of a replacement for a settlement paying `previous` ([`replacement_rate`],
    /// at most the cap); `None` once `previous` is at the cap: nothing more is paid, the one
    /// out there waits.
    pub fn replacement(&self, previous: FeeRate, estimate: FeeRate) -> Option<FeeRate> {
        let rate = replacement_rate(previous, estimate).min(self.0);
        (rate > previous).then_some(rate)
    }
}

/// Signs `channel`'s settlement paying `destination` at `fee_rate`, or, when that fee would
/// leave the merchant's output below the dust threshold (a small total at a high fee rate), at
/// the highest rate that leaves it above, halving down to the 1 sat/vB relay minimum: a
/// settlement that confirms late beats none (it is then bumped as long as the output stays
/// above dust). Never at or below `floor` (the rate of the settlement it replaces). Returns
/// the settlement and the rate used.
///
/// # Errors
/// [`Error::SettlementTooSmall`] when even the relay minimum leaves dust;
/// [`Error::ReplacementWouldBeDust`] when only rates at or below `floor` would do; the errors
/// of [`MerchantChannel::settle`]. The channel is unchanged on every error.
pub fn settle_with_fallback(
    channel: &mut MerchantChannel,
    key: &SecretKey,
    destination: &ScriptBuf,
    fee_rate: FeeRate,
    floor: Option<FeeRate>,
) -> Result<(Settlement, FeeRate), Error> {
    let mut rate = fee_rate;
    loop {
        if floor.is_some_and(|f| rate <= f) {
            return Err(Error::ReplacementWouldBeDust);
        }
        match channel.settle(key, destination.clone(), rate, &[]) {
            Ok(settlement) => return Ok((settlement, rate)),
            Err(Error::Dust { .. } | Error::InsufficientFunds { .. })
                if rate > FeeRate::BROADCAST_MIN =>
            {
                rate = FeeRate::from_sat_per_kwu(rate.to_sat_per_kwu() / 2)
                    .max(FeeRate::BROADCAST_MIN);
            }
            Err(Error::Dust { .. } | Error::InsufficientFunds { .. }) => {
                return Err(Error::SettlementTooSmall { total: channel.accepted() })
            }
            Err(e) => return Err(e),
        }
    }
}
