//! The customer and merchant state machines driven together in one process, with a test
//! driver that plays store, network and chain: no sockets, no clock, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid};
use paychan_core::channel::customer::{CustomerChannel, CustomerState, CustomerTerms};
use paychan_core::channel::merchant::{params_from_open, MerchantChannel, MerchantState};
use paychan_core::channel::{Effect, Event, Phase, SettleReason};
use paychan_core::msg::{ErrorMsg, Message};
use paychan_core::policy::Policy;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::recognise::{find_channel_spend, Role};
use paychan_core::verify::verify_input;
use paychan_core::{Error, Now};

/// Plays store, network and chain for one customer and one merchant.
struct Harness {
    now: Now,
    policy: Policy,
    customer: CustomerChannel,
    merchant: Option<MerchantChannel>,
    merchant_pubkey: PublicKey,
    /// Stored bytes, as a store would hold them.
    customer_store: Option<Vec<u8>>,
    merchant_store: Option<Vec<u8>>,
    /// When false, persists are written but their completion is not reported (a slow store).
    complete_persists: bool,
    pending_merchant_persists: Vec<u64>,
    broadcasts: Vec<Transaction>,
    events: Vec<Event>,
    to_merchant: Vec<Message>,
    to_customer: Vec<Message>,
    funding: Option<Transaction>,
}

impl Harness {
    fn new(kind: OutputKind) -> Self {
        let script = ChannelScript::new(
            pubkey(&merchant_key()),
            pubkey(&customer_key()),
            LockTime::from_consensus(EXPIRY),
        )
        .unwrap();
        Self::with_script(script, kind)
    }

    /// A dispute channel with a dispute period of `blocks` (the policy allows 10).
    fn dispute(blocks: u16) -> Self {
        let script =
            ChannelScript::dispute(pubkey(&merchant_key()), pubkey(&customer_key()), blocks)
                .unwrap();
        let mut h = Self::with_script(script, OutputKind::P2wsh);
        h.policy.min_dispute_blocks = 10;
        h
    }

    fn with_script(script: ChannelScript, kind: OutputKind) -> Self {
        let policy = Policy::default();
        let now = Now { time: NOW, height: 800_000, median_time_past: (NOW - 3600) as u32 };
        let merchant_pubkey = pubkey(&merchant_key());
        let terms = CustomerTerms {
            script,
            kind,
            change_script: p2wpkh(&customer_key()),
            dust_relay_fee: policy.dust_relay_fee,
            cutoff_distance: policy.cutoff_distance(false),
            key_index: 0,
            customer_key_index: 0,
            peer: String::new(),
        };
        let customer = CustomerChannel::new(terms, customer_key()).unwrap();
        Harness {
            now,
            policy,
            customer,
            merchant: None,
            merchant_pubkey,
            customer_store: None,
            merchant_store: None,
            complete_persists: true,
            pending_merchant_persists: Vec::new(),
            broadcasts: Vec::new(),
            events: Vec::new(),
            to_merchant: Vec::new(),
            to_customer: Vec::new(),
            funding: None,
        }
    }

    fn merchant(&mut self) -> &mut MerchantChannel {
        self.merchant.as_mut().unwrap()
    }

    /// Runs every effect and delivers every message until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some(e) = self.customer.poll_effect() {
                moved = true;
                match e {
                    Effect::Persist { id, state } => {
                        self.customer_store = Some(state.encode());
                        self.customer.persisted(id).unwrap();
                    }
                    Effect::Send(m) => self.to_merchant.push(m),
                    Effect::Broadcast(tx) => self.broadcasts.push(tx),
                    Effect::BroadcastPackage { parent, child } => {
                        self.broadcasts.push(parent);
                        self.broadcasts.push(child);
                    }
                    Effect::Watch(_) => {}
                    Effect::Event(ev) => self.events.push(ev),
                }
            }
            if let Some(m) = self.merchant.as_mut() {
                while let Some(e) = m.poll_effect() {
                    moved = true;
                    match e {
                        Effect::Persist { id, state } => {
                            self.merchant_store = Some(state.encode());
                            if self.complete_persists {
                                m.persisted(id).unwrap();
                            } else {
                                self.pending_merchant_persists.push(id);
                            }
                        }
                        Effect::Send(msg) => self.to_customer.push(msg),
                        Effect::Broadcast(tx) => self.broadcasts.push(tx),
                        Effect::BroadcastPackage { parent, child } => {
                            self.broadcasts.push(parent);
                            self.broadcasts.push(child);
                        }
                        Effect::Watch(_) => {}
                        Effect::Event(ev) => self.events.push(ev),
                    }
                }
            }
            for msg in std::mem::take(&mut self.to_merchant) {
                moved = true;
                self.deliver_to_merchant(msg);
            }
            for msg in std::mem::take(&mut self.to_customer) {
                moved = true;
                self.deliver_to_customer(msg);
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver_to_merchant(&mut self, msg: Message) {
        let now = self.now;
        let result = match msg {
            Message::Open(open) => {
                let policy = self.policy.clone();
                match params_from_open(&open, &self.merchant_pubkey, &self.policy).and_then(
                    |(p, _)| {
                        if open.dispute_blocks > 0 {
                            let sig = &open.trigger_signature;
                            MerchantChannel::open_dispute(p, policy, &now, 0, sig, &merchant_key())
                        } else {
                            MerchantChannel::open(p, policy, &now, 0)
                        }
                    },
                ) {
                    Ok(m) => {
                        self.merchant = Some(m);
                        Ok(())
                    }
                    Err(e) => Err((e, None)),
                }
            }
            Message::Pay(pay) => {
                let ch = pay.channel.unwrap().outpoint().unwrap();
                self.merchant()
                    .handle_payment(&now, ch, Amount::from_sat(pay.total_sat), &pay.signature)
                    .map_err(|e| (e, Some(ch)))
            }
            Message::Resume(_) => {
                let m = self.merchant();
                let resumed = paychan_core::msg::Resumed {
                    channel: Some(m.id().into()),
                    total_sat: m.accepted().to_sat(),
                    signature: m.state().signature.clone(),
                };
                self.to_customer.push(Message::Resumed(resumed));
                Ok(())
            }
            Message::Close(close) => {
                let m = self.merchant();
                m.handle_close(&close.signature).map_err(|e| (e, Some(m.id())))
            }
            other => panic!("merchant got {other:?}"),
        };
        if let Err((e, ch)) = result {
            self.to_customer.push(Message::Error(ErrorMsg::from_error(&e, ch)));
        }
    }

    fn deliver_to_customer(&mut self, msg: Message) {
        match msg {
            Message::Opened(o) => self.customer.handle_opened(&o.trigger_signature).unwrap(),
            Message::PaymentAck(ack) => {
                self.customer.handle_ack(Amount::from_sat(ack.total_sat)).unwrap()
            }
            Message::Resumed(r) => {
                self.customer.handle_resumed(Amount::from_sat(r.total_sat), &r.signature).unwrap()
            }
            Message::Closed(c) if !c.close_tx.is_empty() => {
                self.customer.handle_cooperative_close(&c.close_tx, &c.merchant_signature).unwrap();
            }
            Message::Closed(c) => self
                .customer
                .handle_closed(Txid::from_byte_array(c.settlement_txid.try_into().unwrap()))
                .unwrap(),
            Message::Error(e) => {
                if self.customer.phase() == Phase::AwaitingFunding {
                    // The machine reports the refusal as an event itself.
                    self.customer.handle_open_refused(e.code, e.message);
                } else {
                    self.events.push(Event::PeerError {
                        channel: OutPoint::null(),
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            other => panic!("customer got {other:?}"),
        }
    }

    /// Opens with `deposit`, and confirms the funding.
    fn open(&mut self, deposit: Amount) {
        let script = self.customer.state().terms.script;
        let tx = funding_tx(&script, self.customer.state().terms.kind, deposit);
        self.funding = Some(tx.clone());
        self.customer.handle_funding_built(tx).unwrap();
        self.run();
        assert_eq!(self.customer.phase(), Phase::Open);
        assert!(self.broadcasts.iter().any(|b| Some(b) == self.funding.as_ref()));
        self.merchant().handle_funding_confirmations(1);
        self.run();
        assert_eq!(self.merchant().phase(), Phase::Open);
    }

    fn pay(&mut self, sat: u64) -> Result<Amount, Error> {
        let now = self.now;
        let r = self.customer.pay(&now, Amount::from_sat(sat));
        self.run();
        r
    }

    fn peer_errors(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::PeerError { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn open_pay_close_settle_end_to_end() {
    for kind in [OutputKind::P2wsh, OutputKind::P2sh] {
        let mut h = Harness::new(kind);
        h.open(Amount::from_sat(100_000));
        for _ in 0..100 {
            h.pay(10).unwrap();
        }
        assert_eq!(h.customer.state().acked, Amount::from_sat(1_000));
        assert_eq!(h.merchant().accepted(), Amount::from_sat(1_000));

        h.customer.close().unwrap();
        h.run();
        let id = h.merchant().id();
        assert!(h
            .events
            .contains(&Event::SettleDue { channel: id, reason: SettleReason::CustomerClose }));
        let fee = FeeRate::from_sat_per_vb(1).unwrap();
        let settlement =
            h.merchant().settle(&merchant_key(), p2wpkh(&merchant_key()), fee, &[]).unwrap();
        h.run();
        let tx = settlement.tx.clone();
        assert!(h.broadcasts.contains(&tx), "settlement broadcast after its persist");
        assert_eq!(h.customer.phase(), Phase::Settling);
        assert_eq!(h.customer.state().closing_txid, Some(tx.compute_txid()));

        let funding = h.funding.clone().unwrap();
        let spent = &funding.output[h.merchant().id().vout as usize];
        let v = verify_input(&tx, 0, spent, None);
        assert!(v.valid && v.standard, "{kind}: {v:?}");
        assert_eq!(tx.output[0].value, Amount::from_sat(99_000), "customer change");
        assert_eq!(settlement.merchant_amount, Amount::from_sat(1_000) - settlement.fee);

        h.customer.handle_funding_spent(&tx).unwrap();
        h.merchant().handle_funding_spent(&tx).unwrap();
        h.run();
        assert_eq!(h.customer.phase(), Phase::Settled);
        assert_eq!(h.merchant().phase(), Phase::Settled);
    }
}

#[test]
fn merchant_ack_is_released_only_after_the_persist_completes() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.complete_persists = false;
    // Pipelined: three payments in flight.
    for _ in 0..3 {
        h.customer.pay(&h.now.clone(), Amount::from_sat(100)).unwrap();
    }
    h.run();
    assert_eq!(h.merchant().accepted(), Amount::from_sat(300));
    assert_eq!(h.pending_merchant_persists.len(), 3);
    assert_eq!(h.customer.state().acked, Amount::ZERO, "no ack may escape before the write");
    assert_eq!(h.customer.state().signed, Amount::from_sat(300), "in flight counts as spent");
    assert!(h.merchant().persist_pending());
    // The stored bytes already hold the newest total: the store is the truth.
    let stored = MerchantState::decode(h.merchant_store.as_ref().unwrap()).unwrap();
    assert_eq!(stored.accepted, Amount::from_sat(300));

    // Completing the first write releases exactly the first ack.
    let first = h.pending_merchant_persists[0];
    h.merchant().persisted(first).unwrap();
    h.run();
    assert_eq!(h.customer.state().acked, Amount::from_sat(100));
    // Completing the last releases the rest, in order.
    let last = *h.pending_merchant_persists.last().unwrap();
    h.merchant().persisted(last).unwrap();
    h.run();
    assert_eq!(h.customer.state().acked, Amount::from_sat(300));
    assert!(!h.merchant().persist_pending());
    assert_eq!(h.merchant().persisted(999), Err(Error::UnknownPersist(999)));
}

#[test]
fn customer_queues_a_payments_write_before_its_send_and_the_send_does_not_wait() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    let now = h.now;
    h.customer.pay(&now, Amount::from_sat(500)).unwrap();
    let Some(Effect::Persist { id, state }) = h.customer.poll_effect() else {
        panic!("the first effect of a payment must be its persist");
    };
    assert_eq!(state.signed, Amount::from_sat(500));
    // The send leaves while the write is in flight (DESIGN §6).
    assert!(
        matches!(h.customer.poll_effect(), Some(Effect::Send(Message::Pay(p))) if p.total_sat == 500)
    );
    assert!(h.customer.poll_effect().is_none());
    h.customer.persisted(id).unwrap();
    // But not before a message held earlier: a resume waiting for a write goes first.
    h.customer.pay(&now, Amount::from_sat(100)).unwrap();
    h.customer.resume().unwrap();
    h.customer.pay(&now, Amount::from_sat(100)).unwrap();
    let kinds: Vec<&str> = std::iter::from_fn(|| h.customer.poll_effect())
        .map(|e| match e {
            Effect::Persist { .. } => "persist",
            Effect::Send(Message::Pay(_)) => "pay",
            Effect::Send(Message::Resume(_)) => "resume",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["persist", "pay", "persist"], "the resume waits for its write");
}

/// A customer restarted from a record that lacks a payment it sent (its write was lost in a
/// crash) adopts the merchant's total only with its own valid signature of it.
#[test]
fn a_resume_adopts_a_higher_total_only_with_the_customers_signature() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.pay(1_000).unwrap();
    let stored = h.customer.state().clone();
    h.pay(700).unwrap();
    let merchant_sig = h.merchant().state().signature.clone();
    assert_eq!(h.merchant().accepted(), Amount::from_sat(1_700));
    let key = paychan_harness::fixtures::customer_key();
    let restart = || CustomerChannel::restore(stored.clone(), key).unwrap();

    // A signature that is not the customer's of 1,700 (its signature of 1,000): refused,
    // nothing changes.
    let mut c = restart();
    let err = c.handle_resumed(Amount::from_sat(1_700), &stored.signature).unwrap_err();
    assert_eq!(err, Error::UnexpectedMessage("merchant claims a total never signed"));
    assert_eq!(c.state(), &stored);
    assert!(c.poll_effect().is_none());
    // The customer's own signature: adopted, acknowledged and stored.
    let mut c = restart();
    c.handle_resumed(Amount::from_sat(1_700), &merchant_sig).unwrap();
    assert_eq!(
        (c.state().signed, c.state().acked),
        (Amount::from_sat(1_700), Amount::from_sat(1_700))
    );
    let Some(Effect::Persist { state, .. }) = c.poll_effect() else { panic!("stored") };
    assert_eq!(state.signed, Amount::from_sat(1_700));
    // And the next payment builds on it.
    let now = h.now;
    assert_eq!(c.pay(&now, Amount::from_sat(1)).unwrap(), Amount::from_sat(1_701));
}

#[test]
fn rejected_payments_get_their_own_codes_and_change_nothing() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.pay(1_000).unwrap();
    let before = h.merchant().clone();
    let now = h.now;
    let id = h.merchant().id();
    let sig = paychan_core::tx::payment::sign_payment(
        &before.state().params,
        Amount::from_sat(1_000),
        &customer_keypair(),
    )
    .unwrap();
    let m = h.merchant();
    // replay
    assert_eq!(
        m.handle_payment(&now, id, Amount::from_sat(1_000), &sig).unwrap_err().code(),
        Error::NotIncreasing { total: Amount::ZERO, accepted: Amount::ZERO }.code()
    );
    // a signature for another total
    assert_eq!(m.handle_payment(&now, id, Amount::from_sat(2_000), &sig), Err(Error::BadSignature));
    // wrong channel
    let other = OutPoint { txid: Txid::from_byte_array([1; 32]), vout: 0 };
    assert!(matches!(
        m.handle_payment(&now, other, Amount::from_sat(2_000), &sig),
        Err(Error::WrongChannel { .. })
    ));
    // above the deposit
    assert!(matches!(
        m.handle_payment(&now, id, Amount::from_sat(100_001), &sig),
        Err(Error::AboveDeposit { .. })
    ));
    // past the cutoff
    let late = Now { time: u64::from(EXPIRY) - 4 * 3600 - 1800, ..now };
    assert!(matches!(
        m.handle_payment(&late, id, Amount::from_sat(2_000), &sig),
        Err(Error::PastCutoff { .. })
    ));
    assert_eq!(*m, before, "rejections leave the machine untouched");
    assert_eq!(m.state().encode(), before.state().encode());
    assert!(m.poll_effect().is_none());
}

#[test]
fn customer_refuses_to_pay_past_the_cutoff_or_the_cap() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.customer.authorise(Amount::from_sat(2_000));
    h.pay(1_500).unwrap();
    assert!(matches!(h.pay(600), Err(Error::AboveAuthorised { .. })));
    assert_eq!(h.customer.state().signed, Amount::from_sat(1_500));
    h.now.time = u64::from(EXPIRY) - 4 * 3600 - 1800;
    assert!(matches!(h.pay(1), Err(Error::PastCutoff { .. })));
}

#[test]
fn payments_wait_for_funding_confirmation() {
    let mut h = Harness::new(OutputKind::P2wsh);
    let script = h.customer.state().terms.script;
    let tx = funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(50_000));
    h.customer.handle_funding_built(tx).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::AwaitingFunding);
    h.pay(100).unwrap();
    assert_eq!(h.peer_errors(), vec![102], "channel not open");
    assert_eq!(h.merchant().accepted(), Amount::ZERO);
    // Confirmed, then reorged out: payments stop again.
    h.merchant().handle_funding_confirmations(1);
    h.pay(100).unwrap();
    assert_eq!(h.merchant().accepted(), Amount::from_sat(200), "resent total 200 accepted");
    h.merchant().handle_funding_confirmations(0);
    h.run();
    assert_eq!(h.merchant().phase(), Phase::AwaitingFunding);
    assert!(h.events.iter().any(|e| matches!(e, Event::FundingReorged { .. })));
}

#[test]
fn merchant_refuses_channels_outside_its_policy() {
    // Expiry too close: the customer never broadcasts the funding.
    let mut h = Harness::new(OutputKind::P2wsh);
    h.now.time = u64::from(EXPIRY) - 3600;
    let script = h.customer.state().terms.script;
    let tx = funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(50_000));
    h.customer.handle_funding_built(tx.clone()).unwrap();
    h.run();
    assert!(h.merchant.is_none());
    assert_eq!(h.customer.phase(), Phase::Abandoned);
    assert!(!h.broadcasts.contains(&tx), "a refused channel's funding is never broadcast");
    assert_eq!(h.peer_errors(), vec![1]);

    // Deposit too small.
    let mut h = Harness::new(OutputKind::P2wsh);
    let script = h.customer.state().terms.script;
    h.customer
        .handle_funding_built(funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(5_000)))
        .unwrap();
    h.run();
    assert_eq!(h.peer_errors(), vec![5]);
}

#[test]
fn resume_resends_the_same_signature_after_a_lost_message() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.pay(700).unwrap();
    let now = h.now;
    h.customer.pay(&now, Amount::from_sat(300)).unwrap();
    // The connection drops: the Pay message is lost.
    while let Some(e) = h.customer.poll_effect() {
        if let Effect::Persist { id, state } = e {
            h.customer_store = Some(state.encode());
            h.customer.persisted(id).unwrap();
        }
    }
    assert_eq!(h.merchant().accepted(), Amount::from_sat(700));
    // The customer process restarts from its store, and resumes.
    let state = CustomerState::decode(h.customer_store.as_ref().unwrap()).unwrap();
    assert_eq!(state.signed, Amount::from_sat(1_000));
    h.customer = CustomerChannel::restore(state, customer_key()).unwrap();
    h.customer.resume().unwrap();
    h.run();
    assert_eq!(h.merchant().accepted(), Amount::from_sat(1_000));
    assert_eq!(h.customer.state().acked, Amount::from_sat(1_000));
    let customer_sig = h.customer.state().signature.clone();
    assert_eq!(h.merchant().state().signature, customer_sig);
}

#[test]
fn merchant_restored_from_its_bytes_settles_the_highest_acknowledged_total() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    for _ in 0..10 {
        h.pay(250).unwrap();
    }
    let acked = h.customer.state().acked;
    // Crash: all in-memory state is gone; only the stored bytes remain.
    let state = MerchantState::decode(h.merchant_store.as_ref().unwrap()).unwrap();
    assert_eq!(state.encode(), *h.merchant_store.as_ref().unwrap());
    let mut m = MerchantChannel::restore(state, Policy::default());
    assert_eq!(m.accepted(), acked);
    let s = m
        .settle(&merchant_key(), p2wpkh(&merchant_key()), FeeRate::from_sat_per_vb(1).unwrap(), &[])
        .unwrap();
    let funding = h.funding.clone().unwrap();
    let v = verify_input(&s.tx, 0, &funding.output[m.id().vout as usize], None);
    assert!(v.valid, "{v:?}");
    assert_eq!(s.tx.output[0].value, Amount::from_sat(100_000) - acked);
}

#[test]
fn merchant_settles_by_itself_before_the_expiry_margin() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.pay(5_000).unwrap();
    let id = h.merchant().id();
    let early = h.now;
    h.merchant().handle_tick(&early);
    h.run();
    assert!(!h.events.iter().any(|e| matches!(e, Event::SettleDue { .. })));
    let before_margin = Now { time: u64::from(EXPIRY) - 4 * 3600 - 1, ..early };
    h.merchant().handle_tick(&before_margin);
    h.run();
    assert!(!h.events.iter().any(|e| matches!(e, Event::SettleDue { .. })), "one second early");
    let due = Now { time: u64::from(EXPIRY) - 4 * 3600, ..early };
    h.merchant().handle_tick(&due);
    h.run();
    assert!(h.events.contains(&Event::SettleDue { channel: id, reason: SettleReason::Expiry }));
}

#[test]
fn exhausting_the_channel_asks_for_settlement() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(20_000));
    h.pay(19_500).unwrap();
    let id = h.merchant().id();
    assert!(h.events.contains(&Event::SettleDue { channel: id, reason: SettleReason::Exhausted }));
    // The change (500 sat) is below P2WPKH dust (294)? No: 500 ≥ 294, so SINGLE still applies.
    h.pay(300).unwrap(); // change 200 < 294: NONE|ANYONECANPAY
    assert_eq!(h.merchant().accepted(), Amount::from_sat(19_800));
    assert_eq!(*h.merchant().state().signature.last().unwrap(), 0x82);
    let s = h
        .merchant()
        .settle(&merchant_key(), p2wpkh(&merchant_key()), FeeRate::from_sat_per_vb(1).unwrap(), &[])
        .unwrap();
    assert_eq!(s.tx.output.len(), 1, "the merchant takes the dust change");
    let funding = h.funding.clone().unwrap();
    assert!(verify_input(&s.tx, 0, &funding.output[1], None).valid);
}

#[test]
fn refund_becomes_due_only_when_final_and_is_valid() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    h.pay(1_000).unwrap();
    // Wall clock past the expiry but median-time-past not yet: not final.
    let mut now = h.now;
    now.time = u64::from(EXPIRY) + 600;
    now.median_time_past = EXPIRY;
    h.customer.handle_tick(&now);
    h.run();
    assert!(!h.events.iter().any(|e| matches!(e, Event::RefundDue { .. })));
    assert_eq!(h.customer.phase(), Phase::Open);
    now.median_time_past = EXPIRY + 1;
    h.customer.handle_tick(&now);
    h.run();
    assert!(h.events.iter().any(|e| matches!(e, Event::RefundDue { .. })));
    assert_eq!(h.customer.phase(), Phase::Expired);
    assert_eq!(
        CustomerState::decode(h.customer_store.as_ref().unwrap()).unwrap().phase,
        Phase::Expired
    );
    // The merchant, which never settled, sees the expiry pass too and stops for good.
    h.merchant().handle_tick(&now);
    h.run();
    assert_eq!(h.merchant().phase(), Phase::Expired);
    assert_eq!(
        MerchantState::decode(h.merchant_store.as_ref().unwrap()).unwrap().phase,
        Phase::Expired
    );
    let refund =
        h.customer.refund(p2wpkh(&customer_key()), FeeRate::from_sat_per_vb(2).unwrap()).unwrap();
    h.run();
    assert!(h.broadcasts.contains(&refund));
    let funding = h.funding.clone().unwrap();
    assert!(verify_input(&refund, 0, &funding.output[1], None).valid);
    assert_eq!(find_channel_spend(&refund).unwrap().role, Role::Refund);
    h.merchant().handle_funding_spent(&refund).unwrap();
    h.customer.handle_funding_spent(&refund).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::Refunded);
    assert_eq!(h.customer.phase(), Phase::Refunded);
    assert!(h.events.iter().any(
        |e| matches!(e, Event::Refunded { unsettled, .. } if *unsettled == Amount::from_sat(1_000))
    ));
}

#[test]
fn close_needs_the_customer_signature() {
    let mut h = Harness::new(OutputKind::P2wsh);
    h.open(Amount::from_sat(100_000));
    let m = h.merchant();
    // nothing paid yet
    let id = m.id();
    let digest =
        paychan_core::bitcoin::secp256k1::Message::from_digest(paychan_core::msg::close_digest(id));
    let secp = paychan_core::sig::secp();
    let good = secp.sign_ecdsa(&digest, &customer_key()).serialize_der().to_vec();
    let bad = secp.sign_ecdsa(&digest, &key(0x66)).serialize_der().to_vec();
    assert!(matches!(m.handle_close(&good), Err(Error::InvalidTransition { .. })));
    h.pay(10).unwrap();
    let m = h.merchant();
    assert_eq!(m.handle_close(&bad), Err(Error::BadSignature));
    assert_eq!(m.handle_close(b"junk"), Err(Error::SignatureNotDer));
    assert!(m.handle_close(&good).is_ok());
}

#[test]
fn invalid_transitions_are_errors_not_panics() {
    let mut h = Harness::new(OutputKind::P2wsh);
    let now = h.now;
    assert!(matches!(
        h.customer.pay(&now, Amount::from_sat(1)),
        Err(Error::InvalidTransition { .. })
    ));
    assert!(h.customer.close().is_err());
    assert!(h.customer.handle_opened(&[]).is_err());
    assert!(h.customer.resume().is_err());
    assert!(h
        .customer
        .refund(p2wpkh(&customer_key()), FeeRate::from_sat_per_vb(1).unwrap())
        .is_err());
    h.open(Amount::from_sat(100_000));
    let fee = FeeRate::from_sat_per_vb(1).unwrap();
    assert!(matches!(
        h.merchant().settle(&merchant_key(), p2wpkh(&merchant_key()), fee, &[]),
        Err(Error::InvalidTransition { .. })
    ));
    assert!(h.customer.handle_funding_built(h.funding.clone().unwrap()).is_err());
    assert!(h.customer.handle_ack(Amount::from_sat(5)).is_err(), "ack of a total never signed");
}

#[test]
fn two1_payments_through_the_merchant_machine() {
    use paychan_core::tx::two1::{build_payment, TWO1_FEE};
    let policy = Policy::default();
    let (params, funding) = params_with(OutputKind::P2sh, Amount::from_sat(300_000), EXPIRY);
    let now = Now { time: NOW, height: 800_000, median_time_past: NOW as u32 };
    let mut m = MerchantChannel::open(params.clone(), policy, &now, 0).unwrap();
    m.handle_funding_confirmations(1);
    let p1 = build_payment(&params, Amount::from_sat(3_000), TWO1_FEE, &customer_key()).unwrap();
    assert_eq!(m.handle_two1_payment(&now, &p1).unwrap(), Amount::from_sat(3_000));
    let p2 = build_payment(&params, Amount::from_sat(4_000), TWO1_FEE, &customer_key()).unwrap();
    assert_eq!(m.handle_two1_payment(&now, &p2).unwrap(), Amount::from_sat(1_000));
    assert!(matches!(m.handle_two1_payment(&now, &p2), Err(Error::NotIncreasing { .. })));
    let s = m
        .settle(&merchant_key(), p2wpkh(&merchant_key()), FeeRate::from_sat_per_vb(1).unwrap(), &[])
        .unwrap();
    assert_eq!(s.fee, TWO1_FEE);
    assert!(s.tx.compute_txid() != p2.compute_txid(), "the settled txid differs from the token");
    let v = verify_input(&s.tx, 0, &funding.output[1], None);
    assert!(v.valid && v.standard, "{v:?}");
}

// ---- Dispute channels (DESIGN §3a) ----

use paychan_core::channel::customer::CustomerState as StoredCustomer;
use paychan_core::tx::dispute;
use paychan_core::tx::settlement::WalletInput;

/// The funding output of the harness's funding transaction.
fn funding_out(h: &Harness) -> paychan_core::bitcoin::TxOut {
    h.funding.as_ref().unwrap().output[1].clone()
}

fn rate(sat_per_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_per_vb).unwrap()
}

#[test]
fn a_dispute_channel_opens_with_the_trigger_signed_by_both_and_closes_cooperatively() {
    let mut h = Harness::dispute(144);
    h.open(Amount::from_sat(100_000));
    // Both hold the same trigger, complete and valid, stored before the funding went out.
    let trigger = h.customer.trigger().unwrap().clone();
    assert_eq!(h.merchant().state().trigger.as_ref(), Some(&trigger));
    let v = verify_input(&trigger, 0, &funding_out(&h), None);
    assert!(v.valid && v.standard, "{v:?}");
    let stored = StoredCustomer::decode(h.customer_store.as_ref().unwrap()).unwrap();
    assert_eq!(stored.trigger.as_ref(), Some(&trigger));
    let stored = MerchantState::decode(h.merchant_store.as_ref().unwrap()).unwrap();
    assert_eq!(stored.trigger.as_ref(), Some(&trigger));

    for _ in 0..1_000 {
        h.pay(10).unwrap();
    }
    assert_eq!(h.merchant().accepted(), Amount::from_sat(10_000));
    h.customer.close().unwrap();
    h.run();
    let id = h.merchant().id();
    assert!(h
        .events
        .contains(&Event::SettleDue { channel: id, reason: SettleReason::CustomerClose }));
    let unsigned =
        h.merchant().cooperative_close(&merchant_key(), p2wpkh(&merchant_key()), rate(2)).unwrap();
    h.run();
    let close =
        h.broadcasts.iter().find(|t| t.compute_txid() == unsigned.compute_txid()).unwrap().clone();
    let v = verify_input(&close, 0, &funding_out(&h), None);
    assert!(v.valid && v.standard, "{v:?}");
    assert_eq!(close.output[0].value, Amount::from_sat(90_000), "the customer's change");
    assert_eq!(close.output[0].script_pubkey, p2wpkh(&customer_key()));
    let fee = Amount::from_sat(10_000) - close.output[1].value;
    assert!(fee.to_sat() >= 2 * close.vsize() as u64 && fee.to_sat() < 1_000, "{fee}");
    h.merchant().handle_funding_spent(&close).unwrap();
    h.customer.handle_funding_spent(&close).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::Settled);
    assert_eq!(h.customer.phase(), Phase::Settled);
}

#[test]
fn the_merchant_settles_at_once_when_the_trigger_appears() {
    let mut h = Harness::dispute(144);
    h.open(Amount::from_sat(100_000));
    for _ in 0..50 {
        h.pay(100).unwrap();
    }
    let trigger = h.customer.trigger().unwrap().clone();
    let id = h.merchant().id();
    h.merchant().handle_funding_spent(&trigger).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::Disputed);
    assert!(h.events.contains(&Event::SettleDue { channel: id, reason: SettleReason::Disputed }));
    let settlement =
        h.merchant().settle(&merchant_key(), p2wpkh(&merchant_key()), rate(2), &[]).unwrap();
    h.run();
    // The trigger came from a block: the settlement goes out alone, spending its output 0 only
    // (the anchor may be the customer's exit child's already).
    assert!(h.broadcasts.contains(&settlement.tx));
    assert_eq!(settlement.tx.input.len(), 1);
    let v = verify_input(&settlement.tx, 0, &trigger.output[0], None);
    assert!(v.valid && v.standard, "{v:?}");
    assert_eq!(settlement.tx.output[0].value, Amount::from_sat(95_000));
    // Out: not due again, but followed (rebroadcast, replaced) by the scheduler until it
    // confirms; the customer's side sees the dispute too.
    h.events.clear();
    let now = h.now;
    h.merchant().handle_tick(&now);
    h.run();
    assert!(!h.events.iter().any(|e| matches!(e, Event::SettleDue { .. })), "{:?}", h.events);
    let scheduler = paychan_core::channel::settlement::Scheduler::default();
    let work = scheduler.handle_tick(&now, h.merchant.as_ref().unwrap(), false, true);
    assert!(work.follow && !work.settle, "{work:?}");
    h.customer.handle_funding_spent(&trigger).unwrap();
    assert_eq!(h.customer.phase(), Phase::Disputed);
    assert!(h.pay(10).is_err(), "no payment once the trigger is out");
    h.merchant().handle_funding_spent(&settlement.tx).unwrap();
    h.customer.handle_funding_spent(&settlement.tx).unwrap();
    h.run();
    assert_eq!((h.merchant().phase(), h.customer.phase()), (Phase::Settled, Phase::Settled));
}

#[test]
fn the_merchant_alone_settles_with_the_trigger_as_a_package() {
    // The customer is gone: the merchant ends the channel by the trigger and its settlement,
    // one package; the settlement spends the anchor and pays for both.
    let mut h = Harness::dispute(144);
    h.open(Amount::from_sat(100_000));
    h.pay(3_000).unwrap();
    let trigger = h.customer.trigger().unwrap().clone();
    let settlement =
        h.merchant().settle(&merchant_key(), p2wpkh(&merchant_key()), rate(2), &[]).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::Disputed);
    let at = |t: &Transaction| h.broadcasts.iter().position(|b| b == t);
    assert_eq!(at(&trigger).unwrap() + 1, at(&settlement.tx).unwrap(), "parent, then child");
    let spent = [trigger.output[0].clone(), trigger.output[1].clone()];
    for i in 0..2 {
        let v = verify_input(&settlement.tx, i, &spent[i], Some(&spent));
        assert!(v.valid && v.standard, "input {i}: {v:?}");
    }
    let vsize = (trigger.vsize() + settlement.tx.vsize()) as u64;
    assert!(settlement.fee.to_sat() >= 2 * vsize, "the fee pays for the trigger too");
    // The trigger confirming does not make it due again: the settlement is out.
    h.events.clear();
    h.merchant().handle_funding_spent(&trigger).unwrap();
    h.run();
    assert!(!h.events.iter().any(|e| matches!(e, Event::SettleDue { .. })), "{:?}", h.events);
}

#[test]
fn a_force_close_stops_payments_and_the_refund_is_due_after_the_dispute_period() {
    let mut h = Harness::dispute(144);
    h.open(Amount::from_sat(100_000));
    h.pay(1_000).unwrap();
    // Before a force close there is nothing to refund from.
    assert!(h.customer.refund(p2wpkh(&customer_key()), rate(2)).is_err());
    let trigger = h.customer.trigger().unwrap().clone();
    let coin = WalletInput {
        outpoint: OutPoint { txid: Txid::from_byte_array([5; 32]), vout: 0 },
        txout: paychan_core::bitcoin::TxOut {
            value: Amount::from_sat(20_000),
            script_pubkey: p2wpkh(&customer_key()),
        },
        satisfaction_weight: paychan_core::bitcoin::Weight::from_wu(108),
    };
    let exit = dispute::exit_child(&trigger, &[coin], p2wpkh(&customer_key()), rate(2)).unwrap();
    // An exit child that does not spend the anchor is refused.
    let mut wrong = exit.clone();
    wrong.input.remove(0);
    assert!(h.customer.force_close(wrong).is_err());
    h.customer.force_close(exit.clone()).unwrap();
    h.run();
    assert_eq!(h.customer.phase(), Phase::Disputed);
    let stored = StoredCustomer::decode(h.customer_store.as_ref().unwrap()).unwrap();
    assert_eq!(stored.phase, Phase::Disputed, "disputed is stored before the broadcast");
    assert!(h.broadcasts.contains(&trigger) && h.broadcasts.contains(&exit));
    assert!(matches!(h.pay(10), Err(Error::InvalidTransition { .. })));
    // The refund is due once the trigger has the dispute period's confirmations.
    let id = h.customer.id().unwrap();
    h.customer.handle_trigger_confirmations(143);
    h.run();
    assert!(!h.events.contains(&Event::RefundDue { channel: id }));
    h.customer.handle_trigger_confirmations(144);
    h.run();
    assert!(h.events.contains(&Event::RefundDue { channel: id }));
    let refund = h.customer.refund(p2wpkh(&customer_key()), rate(2)).unwrap();
    assert_eq!(refund.input[0].previous_output.txid, trigger.compute_txid());
    assert_eq!(refund.input[0].sequence, paychan_core::bitcoin::Sequence::from_height(144));
    let v = verify_input(&refund, 0, &trigger.output[0], None);
    assert!(v.valid && v.standard, "{v:?}");
}

#[test]
fn a_bad_trigger_signature_stops_the_open_before_the_funding_is_broadcast() {
    // The merchant's signature is bad: the customer abandons; the funding never goes out.
    let mut h = Harness::dispute(144);
    let script = h.customer.state().terms.script;
    let tx = funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(100_000));
    h.customer.handle_funding_built(tx.clone()).unwrap();
    while let Some(e) = h.customer.poll_effect() {
        match e {
            Effect::Persist { id, .. } => h.customer.persisted(id).unwrap(),
            Effect::Send(Message::Open(open)) => {
                assert_eq!(open.dispute_blocks, 144);
                assert!(!open.trigger_signature.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
    let mut bad = vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x01];
    assert!(h.customer.handle_opened(&bad).is_err());
    bad.clear();
    assert_eq!(h.customer.phase(), Phase::Abandoned);
    h.run();
    assert!(!h.broadcasts.contains(&tx));

    // The customer's signature is bad, or the period is below the merchant's policy: refused.
    let h = Harness::dispute(144);
    let params = {
        let funding = paychan_core::tx::FundingOutput::find(&tx, &script).unwrap();
        paychan_core::tx::ChannelParams::new(
            script,
            funding,
            p2wpkh(&customer_key()),
            h.policy.dust_relay_fee,
        )
        .unwrap()
    };
    let t = dispute::trigger(&params).unwrap();
    let by_merchant = dispute::sign(&params, &t, &merchant_key()).unwrap();
    let e = MerchantChannel::open_dispute(
        params.clone(),
        h.policy.clone(),
        &h.now,
        0,
        &by_merchant,
        &merchant_key(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadSignature), "{e:?}");
    let by_customer = dispute::sign(&params, &t, &customer_key()).unwrap();
    let strict = Policy { min_dispute_blocks: 288, ..h.policy.clone() };
    let e = MerchantChannel::open_dispute(
        params.clone(),
        strict,
        &h.now,
        0,
        &by_customer,
        &merchant_key(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidExpiry { expiry: 144, .. }), "{e:?}");
    assert!(MerchantChannel::open_dispute(
        params,
        h.policy.clone(),
        &h.now,
        0,
        &by_customer,
        &merchant_key()
    )
    .is_ok());
}

#[test]
fn a_dispute_channel_never_expires() {
    let mut h = Harness::dispute(144);
    h.open(Amount::from_sat(100_000));
    h.pay(10).unwrap();
    // 2,000 blocks and 90 days later: no settlement due, no refund due, still payable.
    h.now.height += 2_000;
    h.now.time += 90 * 86_400;
    h.now.median_time_past += 90 * 86_400;
    h.events.clear();
    let now = h.now;
    h.merchant().handle_tick(&now);
    h.customer.handle_tick(&now);
    h.run();
    assert!(h.events.is_empty(), "{:?}", h.events);
    assert_eq!(h.pay(10).unwrap(), Amount::from_sat(20));
    assert_eq!(h.merchant().phase(), Phase::Open);
    assert_eq!(h.merchant().accepted(), Amount::from_sat(20));
}

#[test]
fn a_dispute_channel_waits_for_its_funding_to_confirm_even_under_zero_conf() {
    // Zero-conf trusts a funding the merchant broadcast itself; a dispute channel's comes
    // without witnesses and is the customer's to broadcast.
    let mut h = Harness::dispute(144);
    h.policy.zero_conf = true;
    h.policy.min_confirmations = 0;
    let script = h.customer.state().terms.script;
    let tx = funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(100_000));
    h.customer.handle_funding_built(tx).unwrap();
    h.run();
    assert_eq!(h.merchant().phase(), Phase::AwaitingFunding);
    assert!(h.pay(10).is_err() || h.merchant().accepted() == Amount::ZERO);
    h.merchant().handle_funding_confirmations(0);
    assert_eq!(h.merchant().phase(), Phase::AwaitingFunding);
    // Seen in the mempool (the driver asks the node): zero-conf takes it from there.
    h.merchant().handle_funding_in_mempool();
    assert_eq!(h.merchant().phase(), Phase::Open);
    h.merchant().handle_funding_confirmations(1);
    assert_eq!(h.merchant().phase(), Phase::Open);
    // Under zero-conf, no confirmation (yet, or after a reorg) does not stop it: it was seen.
    h.merchant().handle_funding_confirmations(0);
    assert_eq!(h.merchant().phase(), Phase::Open);
}
