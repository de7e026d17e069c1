//! The consistency target: a customer and a merchant state machine driven by random events —
//! payments, messages delivered, dropped, duplicated and reordered, persists that complete
//! late or never (a crash), restarts from what was persisted, resumes, time jumps — checking
//! after every step the invariants that make a channel safe:
//!
//! 1. every total the customer holds as acknowledged is in the merchant's durable state, and
//!    the merchant can settle its durable total;
//! 2. the customer never signs above what its caller authorised, nor above the deposit;
//! 3. the merchant never holds a total the customer did not sign (a payment may leave while
//!    the customer's write of it is in flight, DESIGN §6: a customer restarted from a record
//!    without it adopts it from the merchant's resume, which shows its signature);
//! 4. after a resume with everything delivered, both agree.
//!
//! The first input byte's low bit picks the channel kind: a CLTV channel, or a dispute channel
//! (its trigger signed by both at open, DESIGN §3a): the invariants are the same.

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::{Amount, FeeRate};
use paychan_core::channel::customer::{CustomerChannel, CustomerState, CustomerTerms};
use paychan_core::channel::merchant::{params_from_open, MerchantChannel, MerchantState};
use paychan_core::channel::{Effect, Phase};
use paychan_core::msg::{Message, Resumed};
use paychan_core::policy::Policy;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::Now;
use paychan_harness::fixtures::{
    customer_key, funding_tx, merchant_key, p2wpkh, pubkey, EXPIRY, NOW,
};

const DEPOSIT: u64 = 1_000_000;

struct Side<S> {
    /// Persists issued and not yet completed: (id, state).
    pending: Vec<(u64, Box<S>)>,
    /// The last state written durably.
    durable: Option<Box<S>>,
}

impl<S> Default for Side<S> {
    fn default() -> Self {
        Side { pending: Vec::new(), durable: None }
    }
}

struct World {
    now: Now,
    policy: Policy,
    customer: CustomerChannel,
    merchant: MerchantChannel,
    c: Side<CustomerState>,
    m: Side<MerchantState>,
    to_merchant: Vec<Message>,
    to_customer: Vec<Message>,
    authorised: Amount,
    /// The merchant's last refusal of a payment.
    refusal: Option<paychan_core::Error>,
    /// The highest total the customer ever signed (across restarts).
    signed_ever: Amount,
    /// The connection: a restart of either side or a reconnect starts a new one.
    conn: u64,
    /// The connection each accepted payment came on: its acknowledgement goes back on that
    /// one, and is lost with it (a payment may reach the merchant before the customer's write
    /// of it lands, so an old connection's acknowledgement can name a total a restarted
    /// customer never recorded).
    ack_conn: std::collections::HashMap<u64, u64>,
}

/// Reads bytes as events.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

fn collect_customer(w: &mut World) {
    w.signed_ever = w.signed_ever.max(w.customer.state().signed);
    while let Some(e) = w.customer.poll_effect() {
        match e {
            Effect::Persist { id, state } => w.c.pending.push((id, state)),
            Effect::Send(m) => w.to_merchant.push(m),
            _ => {}
        }
    }
}

fn collect_merchant(w: &mut World) {
    while let Some(e) = w.merchant.poll_effect() {
        match e {
            Effect::Persist { id, state } => w.m.pending.push((id, state)),
            Effect::Send(Message::PaymentAck(a))
                if w.ack_conn.get(&a.total_sat).is_some_and(|c| *c != w.conn) => {}
            Effect::Send(m) => w.to_customer.push(m),
            _ => {}
        }
    }
}

/// Opens and confirms a channel (a dispute channel when `dispute`), everything delivered and
/// persisted.
fn open(authorised: Amount, dispute: bool) -> World {
    let policy = Policy::default();
    let now = Now { time: NOW, height: 800_000, median_time_past: (NOW - 3600) as u32 };
    let (m, c) = (pubkey(&merchant_key()), pubkey(&customer_key()));
    let script = if dispute {
        ChannelScript::dispute(m, c, policy.min_dispute_blocks)
    } else {
        ChannelScript::new(m, c, LockTime::from_consensus(EXPIRY))
    }
    .expect("channel script");
    let terms = CustomerTerms {
        script,
        kind: OutputKind::P2wsh,
        change_script: p2wpkh(&customer_key()),
        dust_relay_fee: policy.dust_relay_fee,
        cutoff_distance: policy.cutoff_distance(false),
        key_index: 0,
        customer_key_index: 0,
        peer: String::new(),
    };
    let mut customer = CustomerChannel::new(terms, customer_key()).expect("customer");
    customer.authorise(authorised);
    customer
        .handle_funding_built(funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(DEPOSIT)))
        .expect("funding");
    let mut open = None;
    let mut c = Side::default();
    while let Some(e) = customer.poll_effect() {
        match e {
            Effect::Persist { id, state } => {
                c.durable = Some(state);
                customer.persisted(id).expect("persisted");
            }
            Effect::Send(Message::Open(o)) => open = Some(o),
            _ => {}
        }
    }
    let open = open.expect("an Open");
    let (params, _) = params_from_open(&open, &pubkey(&merchant_key()), &policy).expect("params");
    let mut merchant = if dispute {
        let sig = &open.trigger_signature;
        MerchantChannel::open_dispute(params, policy.clone(), &now, 0, sig, &merchant_key())
    } else {
        MerchantChannel::open(params, policy.clone(), &now, 0)
    }
    .expect("merchant");
    merchant.handle_funding_confirmations(1);
    let mut m = Side::default();
    let mut trigger_signature = Vec::new();
    while let Some(e) = merchant.poll_effect() {
        match e {
            Effect::Persist { id, state } => {
                m.durable = Some(state);
                merchant.persisted(id).expect("persisted");
            }
            Effect::Send(Message::Opened(o)) => trigger_signature = o.trigger_signature,
            _ => {}
        }
    }
    customer.handle_opened(&trigger_signature).expect("opened");
    while let Some(e) = customer.poll_effect() {
        if let Effect::Persist { id, state } = e {
            c.durable = Some(state);
            customer.persisted(id).expect("persisted");
        }
    }
    World {
        now,
        policy,
        customer,
        merchant,
        c,
        m,
        to_merchant: Vec::new(),
        to_customer: Vec::new(),
        authorised,
        signed_ever: Amount::ZERO,
        conn: 0,
        ack_conn: std::collections::HashMap::new(),
        refusal: None,
    }
}

fn deliver_to_merchant(w: &mut World, msg: Message) {
    let now = w.now;
    match msg {
        Message::Pay(p) => {
            let Some(ch) = p.channel.and_then(|c| c.outpoint().ok()) else { return };
            // A refusal changes nothing; the driver would send an error, which the customer
            // ignores here.
            match w.merchant.handle_payment(&now, ch, Amount::from_sat(p.total_sat), &p.signature) {
                Ok(()) => {
                    w.ack_conn.insert(p.total_sat, w.conn);
                }
                Err(e) => w.refusal = Some(e),
            }
        }
        Message::Resume(_) => {
            // The driver answers from the durable state.
            let (total, signature) =
                w.m.durable
                    .as_ref()
                    .map_or((Amount::ZERO, Vec::new()), |s| (s.accepted, s.signature.clone()));
            w.to_customer.push(Message::Resumed(Resumed {
                channel: Some(w.merchant.id().into()),
                total_sat: total.to_sat(),
                signature,
            }));
        }
        _ => {}
    }
    collect_merchant(w);
}

fn deliver_to_customer(w: &mut World, msg: Message) {
    match msg {
        Message::PaymentAck(a) => {
            w.customer.handle_ack(Amount::from_sat(a.total_sat)).expect("an ack of a signed total")
        }
        Message::Resumed(r) => w
            .customer
            .handle_resumed(Amount::from_sat(r.total_sat), &r.signature)
            .expect("a resume within the signed"),
        _ => {}
    }
    collect_customer(w);
}

/// Completes the oldest pending persists (in order: one writer per channel); `which` picks how
/// many at once. The newest of them is now the durable state; returns its id.
fn complete<S>(side: &mut Side<S>, which: u8) -> Option<u64> {
    if side.pending.is_empty() {
        return None;
    }
    let n = usize::from(which) % side.pending.len() + 1;
    let done: Vec<_> = side.pending.drain(..n).collect();
    let id = done.last().map(|(id, _)| *id)?;
    side.durable = done.into_iter().last().map(|(_, s)| s);
    Some(id)
}

fn restart_merchant(w: &mut World) {
    let state = w.m.durable.as_ref().expect("stored at open").as_ref().clone();
    w.merchant = MerchantChannel::restore(state, w.policy.clone());
    w.m.pending.clear();
    w.to_merchant.clear();
    w.to_customer.clear();
    w.conn += 1;
}

fn restart_customer(w: &mut World) {
    let state = w.c.durable.as_ref().expect("stored at open").as_ref().clone();
    w.customer = CustomerChannel::restore(state, customer_key()).expect("restore");
    w.c.pending.clear();
    w.to_merchant.clear();
    w.to_customer.clear();
    w.conn += 1;
}

fn check(w: &World) {
    let c = w.customer.state();
    let m_durable = w.m.durable.as_ref().map_or(Amount::ZERO, |s| s.accepted);
    // 1. Acknowledged ⇒ durable at the merchant.
    assert!(c.acked <= m_durable, "acked {} but the merchant stored only {}", c.acked, m_durable);
    // 2. Never above the authorisation or the deposit.
    assert!(c.signed <= w.authorised, "signed {} above authorised {}", c.signed, w.authorised);
    assert!(c.signed <= Amount::from_sat(DEPOSIT));
    // 3. The merchant holds nothing the customer did not sign.
    assert!(
        w.merchant.accepted() <= w.signed_ever,
        "merchant accepted {} beyond anything the customer signed ({})",
        w.merchant.accepted(),
        w.signed_ever
    );
    assert!(m_durable <= w.signed_ever, "merchant stored {m_durable}, never signed");
}

/// The merchant's durable state settles (for totals large enough to leave a non-dust output).
fn check_settles(w: &World) {
    let Some(state) = w.m.durable.as_ref() else { return };
    if state.accepted < Amount::from_sat(5_000) || state.phase != Phase::Open {
        return;
    }
    let mut m = MerchantChannel::restore(state.as_ref().clone(), w.policy.clone());
    let s = m
        .settle(&merchant_key(), p2wpkh(&merchant_key()), FeeRate::from_sat_per_vb_u32(2), &[])
        .expect("the merchant can settle its durable total");
    assert!(s.merchant_amount >= state.accepted || s.merchant_amount > Amount::ZERO);
}

/// The target.
pub fn channels(data: &[u8]) {
    let mut input = Input(data);
    let first = input.byte().unwrap_or(255);
    let authorised = Amount::from_sat(u64::from(first) * 4_000 + 1);
    let mut w = open(authorised, first & 1 == 1);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 400 {
            break;
        }
        match op % 14 {
            0 | 1 => {
                let amount = u64::from(input.byte().unwrap_or(1)).max(1) * 37;
                let now = w.now;
                let _ = w.customer.pay(&now, Amount::from_sat(amount));
                collect_customer(&mut w);
            }
            2 => {
                let which = input.byte().unwrap_or(0);
                if let Some(id) = complete(&mut w.c, which) {
                    w.customer.persisted(id).expect("a pending persist");
                    collect_customer(&mut w);
                }
            }
            3 => {
                let which = input.byte().unwrap_or(0);
                if let Some(id) = complete(&mut w.m, which) {
                    w.merchant.persisted(id).expect("a pending persist");
                    collect_merchant(&mut w);
                }
            }
            4 | 5 => {
                if !w.to_merchant.is_empty() {
                    let m = w.to_merchant.remove(0);
                    deliver_to_merchant(&mut w, m);
                }
            }
            6 => {
                if !w.to_customer.is_empty() {
                    let m = w.to_customer.remove(0);
                    deliver_to_customer(&mut w, m);
                }
            }
            7 => {
                // Dropped on the way to the merchant, or to the customer.
                if input.byte().unwrap_or(0) % 2 == 0 {
                    if !w.to_merchant.is_empty() {
                        w.to_merchant.remove(0);
                    }
                } else if !w.to_customer.is_empty() {
                    w.to_customer.remove(0);
                }
            }
            8 => {
                if let Some(m) = w.to_merchant.first().cloned() {
                    w.to_merchant.push(m);
                }
            }
            9 => {
                if w.to_merchant.len() >= 2 {
                    w.to_merchant.swap(0, 1);
                }
                if w.to_customer.len() >= 2 {
                    w.to_customer.swap(0, 1);
                }
            }
            10 => restart_merchant(&mut w),
            11 => restart_customer(&mut w),
            12 => {
                // Reconnect: the customer resumes.
                w.to_merchant.clear();
                w.to_customer.clear();
                w.conn += 1;
                if w.customer.resume().is_ok() {
                    collect_customer(&mut w);
                }
            }
            _ => {
                let secs = u64::from(input.byte().unwrap_or(0)) * 600;
                w.now.time += secs;
                w.merchant.handle_tick(&w.now);
                w.customer.handle_tick(&w.now);
                collect_merchant(&mut w);
                collect_customer(&mut w);
            }
        }
        check(&w);
    }
    check_settles(&w);
    quiesce_and_agree(&mut w);
}

/// Completes every persist, reconnects, resumes, delivers everything: both sides agree.
fn quiesce_and_agree(w: &mut World) {
    if w.customer.phase() != Phase::Open || w.merchant.phase() != Phase::Open {
        return;
    }
    w.to_merchant.clear();
    w.to_customer.clear();
    w.conn += 1;
    for _ in 0..8 {
        if let Some((id, _)) = w.c.pending.last().map(|(id, s)| (*id, s.clone())) {
            w.c.durable = w.c.pending.pop().map(|(_, s)| s);
            w.c.pending.clear();
            w.customer.persisted(id).expect("persisted");
        }
        complete_all_merchant(w);
        collect_customer(w);
        collect_merchant(w);
        deliver_all(w);
        if w.c.pending.is_empty() && w.m.pending.is_empty() {
            break;
        }
    }
    // A fresh resume settles any difference.
    w.refusal = None;
    if w.customer.resume().is_ok() {
        collect_customer(w);
        for _ in 0..8 {
            if complete_all_merchant(w) {
                collect_merchant(w);
            }
            if w.to_merchant.is_empty() && w.to_customer.is_empty() && w.m.pending.is_empty() {
                break;
            }
            deliver_all(w);
        }
        check(w);
        let c = w.customer.state();
        let m = w.m.durable.as_ref().map_or(Amount::ZERO, |s| s.accepted);
        match &w.refusal {
            // Time ran past the cutoff: the last payment stays signed and unacknowledged (the
            // customer counts it as spent); the merchant holds its durable total.
            Some(
                paychan_core::Error::PastCutoff { .. } | paychan_core::Error::ChannelNotOpen { .. },
            ) => {
                assert_eq!(c.acked, m, "after a resume both agree on the acknowledged total");
            }
            Some(other) => panic!("the merchant refused the customer's own payment: {other}"),
            None if w.merchant.phase() == Phase::Open && !w.merchant.persist_pending() => {
                assert_eq!(c.acked, m, "after a resume both agree on the total");
                assert_eq!(c.signed, m, "and nothing signed is left unacknowledged");
            }
            None => {}
        }
    }
}

/// Delivers every message in flight, both ways, until none is left.
fn deliver_all(w: &mut World) {
    while !w.to_merchant.is_empty() || !w.to_customer.is_empty() {
        if !w.to_merchant.is_empty() {
            let m = w.to_merchant.remove(0);
            deliver_to_merchant(w, m);
        }
        if !w.to_customer.is_empty() {
            let m = w.to_customer.remove(0);
            deliver_to_customer(w, m);
        }
    }
}

/// Completes every pending merchant persist at once (the newest is durable); whether there
/// was one.
fn complete_all_merchant(w: &mut World) -> bool {
    let Some((id, _)) = w.m.pending.last().map(|(id, s)| (*id, s.clone())) else { return false };
    w.m.durable = w.m.pending.pop().map(|(_, s)| s);
    w.m.pending.clear();
    w.merchant.persisted(id).expect("persisted");
    true
}
