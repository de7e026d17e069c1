//! Paid requests against a channel (DESIGN §2 accounting): `charged + price ≤ signed_max`, each
//! signed total used once, out-of-order arrival, refunds of failed requests, 21 tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::channel::merchant::{MerchantChannel, MerchantState, REDEEM_WINDOW};
use paychan_core::channel::{Effect, Phase};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::ChannelParams;
use paychan_core::{Error, Now};

fn now() -> Now {
    Now { time: NOW, height: 800_000, median_time_past: NOW as u32 }
}

fn open(kind: OutputKind) -> (MerchantChannel, ChannelParams) {
    let (params, _) = params_with(kind, Amount::from_sat(1_000_000), EXPIRY);
    let mut m = MerchantChannel::open(params.clone(), Policy::default(), &now(), 0).unwrap();
    m.handle_funding_confirmations(1);
    drain(&mut m);
    (m, params)
}

/// Completes every persist; returns how many there were.
fn drain(m: &mut MerchantChannel) -> usize {
    let mut n = 0;
    while let Some(e) = m.poll_effect() {
        if let Effect::Persist { id, .. } = e {
            m.persisted(id).unwrap();
            n += 1;
        }
    }
    n
}

fn sig(params: &ChannelParams, total: u64) -> Vec<u8> {
    sign_payment(params, Amount::from_sat(total), &customer_keypair()).unwrap()
}

fn sat(n: u64) -> Amount {
    Amount::from_sat(n)
}

#[test]
fn each_total_pays_for_one_request_in_any_order() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    let price = sat(10);
    // The customer signs 10, 20, …, 640; the requests arrive in a scrambled order.
    let mut totals: Vec<u64> = (1..=64).map(|i| i * 10).collect();
    totals.reverse();
    totals.swap(3, 40);
    for t in &totals {
        let r = m.redeem(&now(), id, sat(*t), &sig(&params, *t), price).unwrap();
        assert_eq!(r.price, price);
        assert_eq!(drain(&mut m), 1, "one durable write per request");
    }
    assert_eq!(m.accepted(), sat(640));
    assert_eq!(m.state().charged, sat(640));
    // Every one of them again: refused, nothing changes.
    let before = m.state().clone();
    for t in &totals {
        let e = m.redeem(&now(), id, sat(*t), &sig(&params, *t), price).unwrap_err();
        assert!(matches!(e, Error::AlreadyRedeemed { .. }), "{e:?}");
        assert_eq!(e.code(), 112);
    }
    assert_eq!(m.state(), &before);
    assert_eq!(drain(&mut m), 0);
}

#[test]
fn credit_must_cover_the_price_and_a_refusal_changes_nothing() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    let before = m.state().clone();
    let e = m.redeem(&now(), id, sat(5), &sig(&params, 5), sat(10)).unwrap_err();
    assert_eq!(e, Error::CreditTooLow { price: sat(10), credit: sat(5) });
    assert_eq!(e.code(), 113);
    assert_eq!(m.state(), &before);
    assert_eq!(drain(&mut m), 0);
    // Overpaying leaves credit, which pays for a later request with a 1 sat increment.
    let r = m.redeem(&now(), id, sat(25), &sig(&params, 25), sat(10)).unwrap();
    assert_eq!((r.increment, r.credit), (sat(25), sat(15)));
    let r = m.redeem(&now(), id, sat(26), &sig(&params, 26), sat(10)).unwrap();
    assert_eq!((r.increment, r.credit), (sat(1), sat(6)));
}

#[test]
fn an_older_total_needs_a_valid_signature() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    m.redeem(&now(), id, sat(100), &sig(&params, 100), sat(10)).unwrap();
    drain(&mut m);
    let before = m.state().clone();
    // The signature of 100 presented as 50: does not verify.
    let e = m.redeem(&now(), id, sat(50), &sig(&params, 100), sat(10)).unwrap_err();
    assert_eq!(e, Error::BadSignature);
    // Another channel's id.
    let other = OutPoint { vout: 7, ..id };
    let e = m.redeem(&now(), other, sat(50), &sig(&params, 50), sat(10)).unwrap_err();
    assert!(matches!(e, Error::WrongChannel { .. }));
    // Zero.
    let e = m.redeem(&now(), id, sat(0), &sig(&params, 100), sat(10)).unwrap_err();
    assert!(matches!(e, Error::NotIncreasing { .. }));
    // Above the deposit.
    let e = m.redeem(&now(), id, sat(2_000_000), &sig(&params, 100), sat(10)).unwrap_err();
    assert!(matches!(e, Error::AboveDeposit { .. }));
    assert_eq!(m.state(), &before);
    // The real signature of 50 is served.
    m.redeem(&now(), id, sat(50), &sig(&params, 50), sat(10)).unwrap();
}

#[test]
fn a_refunded_request_can_be_retried_with_the_same_payment() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    m.redeem(&now(), id, sat(10), &sig(&params, 10), sat(10)).unwrap();
    drain(&mut m);
    assert_eq!(m.refund_request(Some(sat(10)), sat(10)).unwrap(), sat(10));
    assert_eq!(drain(&mut m), 1, "the refund is persisted");
    assert_eq!(m.state().charged, sat(0));
    assert_eq!(m.accepted(), sat(10), "the payment itself stays accepted");
    m.redeem(&now(), id, sat(10), &sig(&params, 10), sat(10)).unwrap();
    assert_eq!(m.state().charged, sat(10));
    assert!(matches!(m.refund_request(None, sat(11)), Err(Error::AmountOutOfRange(_))));
}

#[test]
fn plain_payments_are_credit_never_a_request() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    m.handle_payment(&now(), id, sat(100), &sig(&params, 100)).unwrap();
    drain(&mut m);
    let e = m.redeem(&now(), id, sat(100), &sig(&params, 100), sat(10)).unwrap_err();
    assert!(matches!(e, Error::AlreadyRedeemed { .. }));
    // Its credit pays for requests carrying new totals.
    let r = m.redeem(&now(), id, sat(101), &sig(&params, 101), sat(50)).unwrap();
    assert_eq!(r.credit, sat(51));
}

#[test]
fn after_a_restart_no_total_up_to_the_stored_one_is_redeemable() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    m.redeem(&now(), id, sat(20), &sig(&params, 20), sat(10)).unwrap();
    drain(&mut m);
    let stored = MerchantState::decode(&m.state().encode()).unwrap();
    let mut m = MerchantChannel::restore(stored, Policy::default());
    // 10 was signed but never presented before the restart: refused now (its money is in 20).
    let e = m.redeem(&now(), id, sat(10), &sig(&params, 10), sat(10)).unwrap_err();
    assert!(matches!(e, Error::AlreadyRedeemed { .. }));
    // The credit it left is spent with a new total.
    let r = m.redeem(&now(), id, sat(21), &sig(&params, 21), sat(10)).unwrap();
    assert_eq!(r.credit, sat(1));
}

#[test]
fn the_replay_window_slides() {
    let (mut m, params) = open(OutputKind::P2wsh);
    let id = params.id();
    let n = REDEEM_WINDOW as u64 + 10;
    // Totals 2, 4, 6, …: the odd ones are "late" and arrive after the window moved on.
    let keypair = customer_keypair();
    for i in 1..=n {
        let t = 2 * i;
        let s = sign_payment(&params, sat(t), &keypair).unwrap();
        m.redeem(&now(), id, sat(t), &s, sat(1)).unwrap();
    }
    drain(&mut m);
    let e = m.redeem(&now(), id, sat(1), &sig(&params, 1), sat(1)).unwrap_err();
    assert!(matches!(e, Error::AlreadyRedeemed { .. }), "below the window: {e:?}");
    let t = 2 * n - 1;
    m.redeem(&now(), id, sat(t), &sig(&params, t), sat(1)).unwrap();
}

#[test]
fn requests_need_an_open_channel_before_the_cutoff() {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let mut m = MerchantChannel::open(params.clone(), Policy::default(), &now(), 0).unwrap();
    let e = m.redeem(&now(), params.id(), sat(10), &sig(&params, 10), sat(10)).unwrap_err();
    assert!(matches!(e, Error::ChannelNotOpen { phase: Phase::AwaitingFunding }), "{e:?}");
    m.handle_funding_confirmations(1);
    let late = Now { time: u64::from(EXPIRY) - 60, ..now() };
    let e = m.redeem(&late, params.id(), sat(10), &sig(&params, 10), sat(10)).unwrap_err();
    assert!(matches!(e, Error::PastCutoff { .. }), "{e:?}");
}

#[test]
fn two1_tokens_are_single_use_and_survive_a_restart() {
    use paychan_core::tx::two1::{build_payment, TWO1_FEE};
    let (params, _) = params_with(OutputKind::P2sh, Amount::from_sat(300_000), EXPIRY);
    let mut m = MerchantChannel::open(params.clone(), Policy::default(), &now(), 0).unwrap();
    m.handle_funding_confirmations(1);
    let p1 = build_payment(&params, sat(3_000), TWO1_FEE, &customer_key()).unwrap();
    m.handle_two1_payment(&now(), &p1).unwrap();
    let t1 = p1.compute_txid();
    assert!(m.has_token(&t1));
    // Restart before the token is used: still redeemable, once.
    let mut m = MerchantChannel::restore(
        MerchantState::decode(&m.state().encode()).unwrap(),
        Policy::default(),
    );
    let r = m.redeem_token(&now(), &t1, sat(1_000)).unwrap();
    assert_eq!(r.credit, sat(2_000));
    let used = Err(Error::AlreadyRedeemed { total: sat(3_000) });
    assert_eq!(m.redeem_token(&now(), &t1, sat(1_000)), used);
    // Restart after it was used: still used.
    let mut m = MerchantChannel::restore(
        MerchantState::decode(&m.state().encode()).unwrap(),
        Policy::default(),
    );
    assert_eq!(m.redeem_token(&now(), &t1, sat(1_000)), used);
    let unknown = paychan_core::bitcoin::Txid::from_byte_array([7; 32]);
    assert_eq!(m.redeem_token(&now(), &unknown, sat(1_000)), Err(Error::UnknownToken));
    // A price above the credit: refused, the token stays usable.
    let p2 = build_payment(&params, sat(4_000), TWO1_FEE, &customer_key()).unwrap();
    m.handle_two1_payment(&now(), &p2).unwrap();
    let t2 = p2.compute_txid();
    let e = m.redeem_token(&now(), &t2, sat(5_000)).unwrap_err();
    assert_eq!(e, Error::CreditTooLow { price: sat(5_000), credit: sat(3_000) });
    m.redeem_token(&now(), &t2, sat(3_000)).unwrap();
}
