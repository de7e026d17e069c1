//! The merchant's settlement policy with a logical clock: the retry backoff, the dust fallback
//! and the replacement rule, without a node, a socket or a sleep (the merchant's end-to-end
//! tests check the same rules against a real node).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::{Amount, FeeRate};
use paychan_core::channel::merchant::MerchantChannel;
use paychan_core::channel::settlement::{
    replacement_rate, settle_with_fallback, Broadcast, FeeCap, FollowUp, Scheduler, SettlementSeen,
    Work, BUMP_AFTER_BLOCKS, REORG_SAFETY_DEPTH, RETRY_FIRST_SECS, RETRY_MAX_SECS,
};
use paychan_core::channel::{Effect, Event, Phase};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::{Error, Now};

const CAPACITY: u64 = 100_000;

fn at(time: u64, height: u32) -> Now {
    Now { time, height, median_time_past: (time - 3_600) as u32 }
}

/// An open channel that accepted `total`, its effects drained.
fn paid(total: u64) -> MerchantChannel {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
    let now = at(NOW, 800_000);
    let mut m = MerchantChannel::open(params.clone(), Policy::default(), &now, 0).unwrap();
    m.handle_funding_confirmations(1);
    let total = Amount::from_sat(total);
    let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
    m.handle_payment(&now, m.id(), total, &sig).unwrap();
    drain(&mut m);
    m
}

/// Completes every persist; returns whether the machine reported a settlement due.
fn drain(m: &mut MerchantChannel) -> bool {
    let mut due = false;
    while let Some(e) = m.poll_effect() {
        match e {
            Effect::Persist { id, .. } => m.persisted(id).unwrap(),
            Effect::Event(Event::SettleDue { .. }) => due = true,
            _ => {}
        }
    }
    due
}

fn sat_vb(n: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(n).unwrap()
}

#[test]
fn failed_settlement_work_backs_off_exponentially_up_to_the_cap() {
    let m = paid(20_000);
    let mut s = Scheduler::default();
    let start = u64::from(EXPIRY) - 4 * 3_600 + 60;
    // Every settlement attempt fails (the node refuses the broadcast); a tick every 5 s for
    // 33 minutes of logical time.
    let mut attempts_at = Vec::new();
    for i in 0..400u64 {
        let now = at(start + i * 5, 800_000);
        let work = s.handle_tick(&now, &m, true, false);
        if work.settle {
            attempts_at.push(i * 5);
            s.begin();
            s.broadcast(false);
            assert!(s.outcome(&now, true).is_some(), "a refused broadcast is a failure");
        } else {
            assert_eq!(work, Work::default(), "nothing else while backing off");
        }
    }
    // 15 s, doubling: 15, 30, 60, 120, 240, 480, then the 600 s cap.
    assert_eq!(attempts_at, [0, 15, 45, 105, 225, 465, 945, 1_545]);
    assert_eq!(RETRY_FIRST_SECS, 15);
    assert_eq!(RETRY_MAX_SECS, 600);
    assert_eq!(s.backoff().failures(), 8);

    // A success clears the backoff: the next failure waits the first step again.
    let now = at(start + 1_545 + 600, 800_000);
    s.begin();
    assert_eq!(s.outcome(&now, true), None);
    assert_eq!(s.backoff().failures(), 0);
    assert_eq!(s.outcome(&now, false), Some(RETRY_FIRST_SECS));
}

#[test]
fn the_wait_saturates_and_never_overflows() {
    let mut s = Scheduler::default();
    let mut last = 0;
    for _ in 0..100 {
        last = s.outcome(&at(u64::MAX - 1, 0), false).unwrap();
    }
    assert_eq!(last, RETRY_MAX_SECS);
    assert_eq!(s.backoff().not_before(), u64::MAX);
}

#[test]
fn the_tick_asks_for_the_work_the_phase_needs() {
    let now = at(NOW, 800_000);
    let mut m = paid(20_000);
    let s = Scheduler::default();
    // Open, nothing due, no block: nothing.
    assert_eq!(s.handle_tick(&now, &m, false, true), Work::default());
    // Due: settle (not while nothing is paid, see below).
    assert_eq!(s.handle_tick(&now, &m, true, false), Work { settle: true, ..Work::default() });
    assert!(!s.handle_tick(&now, &paid_nothing(), true, true).settle);

    // Settling: looked at only when a block arrived (or a retry is due).
    settle_with_fallback(&mut m, &merchant_key(), &p2wpkh(&key(0x55)), sat_vb(2), None).unwrap();
    drain(&mut m);
    assert_eq!(m.phase(), Phase::Settling);
    assert_eq!(s.handle_tick(&now, &m, true, false), Work::default(), "not settled twice");
    assert_eq!(s.handle_tick(&now, &m, false, true), Work { settle: false, follow: true });
    let mut retrying = s.clone();
    retrying.outcome(&now, false);
    assert_eq!(retrying.handle_tick(&now, &m, false, false), Work::default(), "backing off");
    let later = at(NOW + RETRY_FIRST_SECS, 800_000);
    assert!(retrying.handle_tick(&later, &m, false, false).follow, "a due retry looks again");

    // Confirmations: looked at with new blocks only, and not once an open channel's funding
    // is deep enough.
    let mut s = Scheduler::default();
    assert!(s.wants_confirmations(Phase::Open, true));
    assert!(!s.wants_confirmations(Phase::Open, false));
    s.confirmations(REORG_SAFETY_DEPTH);
    assert!(!s.wants_confirmations(Phase::Open, true));
    assert!(s.wants_confirmations(Phase::Settling, true));
}

fn paid_nothing() -> MerchantChannel {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
    let mut m = MerchantChannel::open(params, Policy::default(), &at(NOW, 800_000), 0).unwrap();
    m.handle_funding_confirmations(1);
    drain(&mut m);
    m
}

#[test]
fn a_small_total_at_a_high_estimate_settles_at_a_lower_rate_above_dust() {
    let payout = p2wpkh(&key(0x55));
    // 150 sat cannot be settled even at 1 sat/vB: refused, the channel unchanged.
    let mut m = paid(150);
    let before = m.clone();
    let e = settle_with_fallback(&mut m, &merchant_key(), &payout, sat_vb(50), None).unwrap_err();
    assert!(matches!(e, Error::SettlementTooSmall { total } if total == Amount::from_sat(150)));
    assert_eq!(m, before);
    assert!(m.poll_effect().is_none(), "nothing to persist or broadcast");

    // 2,000 sat at 50 sat/vB (a fee of ~10,000 sat): halved until the output is above dust.
    let mut m = paid(2_000);
    let (settlement, used) =
        settle_with_fallback(&mut m, &merchant_key(), &payout, sat_vb(50), None).unwrap();
    assert!(used < sat_vb(50) && used >= FeeRate::BROADCAST_MIN, "{used}");
    let to_merchant = settlement.tx.output.iter().find(|o| o.script_pubkey == payout).unwrap();
    assert!(to_merchant.value >= Policy::default().dust_threshold(&payout));
    assert_eq!(to_merchant.value + settlement.fee, Amount::from_sat(2_000));
    // The highest such rate: twice it would have left dust.
    let mut again = paid(2_000);
    let doubled = FeeRate::from_sat_per_kwu(used.to_sat_per_kwu() * 2);
    assert!(matches!(
        again.settle(&merchant_key(), payout.clone(), doubled, &[]),
        Err(Error::Dust { .. } | Error::InsufficientFunds { .. })
    ));

    // A large total pays the estimate itself.
    let mut m = paid(50_000);
    let (_, used) =
        settle_with_fallback(&mut m, &merchant_key(), &payout, sat_vb(50), None).unwrap();
    assert_eq!(used, sat_vb(50));
}

#[test]
fn an_unconfirmed_settlement_is_replaced_after_three_blocks_at_a_higher_rate() {
    let mut s = Scheduler::default();
    let estimate = sat_vb(2);
    // After a restart nothing is known of the broadcast: sign it again.
    assert_eq!(s.follow(SettlementSeen::InMempool, 800_000), FollowUp::Rebuild);
    s.sent(Broadcast { height: 800_000, fee_rate: sat_vb(4) });
    assert_eq!(BUMP_AFTER_BLOCKS, 3);
    for height in 800_000..800_003 {
        assert_eq!(s.follow(SettlementSeen::InMempool, height), FollowUp::Wait);
        // Dropped from the mempool: the very same transaction again.
        assert_eq!(
            s.follow(SettlementSeen::Unknown, height),
            FollowUp::Rebroadcast { fee_rate: sat_vb(4) }
        );
    }
    assert_eq!(
        s.follow(SettlementSeen::InMempool, 800_003),
        FollowUp::Replace { previous: sat_vb(4) }
    );
    assert_eq!(replacement_rate(sat_vb(4), estimate), sat_vb(6), "half as much again");
    assert_eq!(s.follow(SettlementSeen::Confirmed, 800_003), FollowUp::Confirmed);

    // The rule: more than the rate replaced (by at least 2 sat/vB), and at least the estimate.
    assert_eq!(replacement_rate(FeeRate::BROADCAST_MIN, estimate), sat_vb(3));
    assert_eq!(replacement_rate(sat_vb(10), sat_vb(40)), sat_vb(40));
    for kwu in [0u64, 1, 250, 1_000, 77_777, u64::MAX / 2] {
        let previous = FeeRate::from_sat_per_kwu(kwu);
        assert!(replacement_rate(previous, FeeRate::ZERO) > previous, "{kwu}");
    }

    // A replacement that cannot be signed leaves the one out there and counts again.
    s.replacement_failed(800_004);
    assert_eq!(s.follow(SettlementSeen::InMempool, 800_006), FollowUp::Wait);
    assert_eq!(
        s.follow(SettlementSeen::InMempool, 800_007),
        FollowUp::Replace { previous: sat_vb(4) }
    );
}

#[test]
fn a_replacement_that_would_leave_dust_is_refused_and_changes_nothing() {
    let payout = p2wpkh(&key(0x55));
    let mut m = paid(2_000);
    let (first, used) =
        settle_with_fallback(&mut m, &merchant_key(), &payout, sat_vb(50), None).unwrap();
    drain(&mut m);
    let before = m.clone();
    // The replacement's rate would leave dust, and every lower rate is at or below the first.
    let bumped = replacement_rate(used, sat_vb(50));
    let e = settle_with_fallback(&mut m, &merchant_key(), &payout, bumped, Some(used)).unwrap_err();
    assert_eq!(e, Error::ReplacementWouldBeDust);
    assert_eq!(m, before);
    assert_eq!(m.state().settlement_txid, Some(first.tx.compute_txid()));

    // With room to pay more, the replacement goes out above the first's rate.
    let mut m = paid(50_000);
    let (_, used) =
        settle_with_fallback(&mut m, &merchant_key(), &payout, sat_vb(2), None).unwrap();
    drain(&mut m);
    let (second, rate) = settle_with_fallback(
        &mut m,
        &merchant_key(),
        &payout,
        replacement_rate(used, sat_vb(2)),
        Some(used),
    )
    .unwrap();
    assert!(rate > used);
    assert_eq!(m.state().settlement_txid, Some(second.tx.compute_txid()));
}

/// What the merchant's rules decide has its own variant: `Malformed` is left to bytes that do
/// not decode.
#[test]
fn validation_failures_are_not_malformed() {
    use paychan_core::tx::refund::build_refund;
    use paychan_core::tx::ChannelParams;
    // A bare OP_TRUE: valid, not standard.
    let payout = paychan_core::bitcoin::ScriptBuf::from_bytes(vec![0x51]);
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
    assert_eq!(
        build_refund(&params, &customer_key(), payout.clone(), sat_vb(2)).unwrap_err(),
        Error::NonStandardScript("refund destination")
    );
    let mut m = paid(20_000);
    assert_eq!(
        m.settle(&merchant_key(), payout.clone(), sat_vb(2), &[]).unwrap_err(),
        Error::NonStandardScript("settlement destination")
    );
    let e = ChannelParams::new(
        *params.script(),
        *params.funding(),
        payout,
        Policy::default().dust_relay_fee,
    )
    .unwrap_err();
    assert_eq!(e, Error::NonStandardScript("change script"));
    assert_eq!(e.code(), 21);
    // Bytes that do not decode are still Malformed.
    let e = "p2pkh".parse::<OutputKind>().unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}

/// The fee cap: a first settlement pays at most the cap, replacements climb to it and stop
/// there (the one out there waits).
#[test]
fn settlements_never_pay_above_the_fee_cap() {
    let cap = FeeCap(sat_vb(20));
    assert_eq!(cap.first(sat_vb(5)), sat_vb(5));
    assert_eq!(cap.first(sat_vb(500)), sat_vb(20), "a broken estimate is capped");
    // 4 → 6 → 9 → 13.5 → 20 (capped) → none.
    let mut rate = sat_vb(4);
    let mut steps = vec![rate];
    while let Some(next) = cap.replacement(rate, sat_vb(1)) {
        assert!(next > rate && next <= sat_vb(20), "{next}");
        rate = next;
        steps.push(rate);
    }
    assert_eq!(rate, sat_vb(20));
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(cap.replacement(sat_vb(20), sat_vb(80)), None, "not even for a higher estimate");
    assert_eq!(cap.replacement(sat_vb(25), sat_vb(1)), None, "above the cap already");
}

/// Whether an open channel expiring at `expiry`, paid, reports its expiry settlement due at
/// `now` (the machine's own rule).
fn machine_says_due(expiry: u32, now: &Now) -> bool {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), expiry);
    // Opened and paid well before its deadlines.
    let open_at = if expiry < 500_000_000 {
        Now { height: expiry - 300, ..*now }
    } else {
        let time = u64::from(expiry) - 3 * 86_400;
        Now { time, height: now.height, median_time_past: time as u32 - 3_600 }
    };
    let mut m = MerchantChannel::open(params.clone(), Policy::default(), &open_at, 0).unwrap();
    m.handle_funding_confirmations(1);
    let total = Amount::from_sat(5_000);
    let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
    m.handle_payment(&open_at, m.id(), total, &sig).unwrap();
    assert!(!drain(&mut m));
    m.handle_tick(now);
    // Not exhausted: a settlement due is the expiry's.
    drain(&mut m)
}

/// The windows a store is asked for hold exactly the expiries the machine itself finds due:
/// heights and times, on both sides of each boundary.
#[test]
fn due_expiries_are_the_machines_own_deadlines() {
    let policy = Policy::default();
    let now = Now { time: 1_800_000_000, height: 850_000, median_time_past: 1_799_996_400 };
    let [heights, times] = paychan_core::channel::settlement::due_expiries(&policy, &now);
    let blocks = policy.settle_distance(true);
    let secs = policy.settle_distance(false);
    let mut checked = 0;
    for expiry in [
        now.height + blocks - 1,
        now.height + blocks,
        now.height + blocks + 1,
        now.height,
        600_000,
        1_000_000,
        (now.time as u32) + secs - 1,
        (now.time as u32) + secs,
        (now.time as u32) + secs + 1,
        (now.time as u32) - 86_400,
        (now.time as u32) + 86_400,
    ] {
        let in_window = heights.contains(&expiry) || times.contains(&expiry);
        assert_eq!(in_window, machine_says_due(expiry, &now), "expiry {expiry}");
        checked += usize::from(in_window);
    }
    assert_eq!(checked, 7, "both kinds have expiries due and not due");
    assert!(!heights.contains(&0) && !times.contains(&0), "no dispute channel (expiry 0)");
}

/// A scheduler is idle (its channel may leave memory) only when it knows nothing the row does
/// not: open, deep, nothing out, no backoff.
#[test]
fn a_scheduler_is_idle_only_when_the_row_says_it_all() {
    let mut s = Scheduler::default();
    assert!(!s.is_idle(Phase::Open), "funding depth not yet looked at");
    s.confirmations(REORG_SAFETY_DEPTH);
    assert!(s.is_idle(Phase::Open));
    assert!(!s.is_idle(Phase::Settling));
    assert!(!s.is_idle(Phase::AwaitingFunding));
    let mut failed = s.clone();
    failed.outcome(&at(NOW, 1), false);
    assert!(!failed.is_idle(Phase::Open), "a backoff lives only in memory");
    let mut out = s.clone();
    out.sent(Broadcast { height: 1, fee_rate: FeeRate::from_sat_per_vb_u32(2) });
    assert!(!out.is_idle(Phase::Open));
    let mut refused = s;
    refused.begin();
    refused.broadcast(false);
    assert!(!refused.is_idle(Phase::Open));
}
