//! Property tests of the payment rules, the customer's spending cap, and message decoding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::{Amount, FeeRate};
use paychan_core::channel::customer::{CustomerChannel, CustomerTerms};
use paychan_core::channel::merchant::MerchantChannel;
use paychan_core::channel::Effect;
use paychan_core::msg::{self, Message, MAX_FRAME_LEN};
use paychan_core::policy::Policy;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::payment::sign_payment;
use paychan_core::{Error, Now};
use proptest::prelude::*;

const CAPACITY: u64 = 100_000;

fn now() -> Now {
    Now { time: NOW, height: 800_000, median_time_past: NOW as u32 }
}

fn open_merchant() -> MerchantChannel {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
    let mut m = MerchantChannel::open(params, Policy::default(), &now(), 0).unwrap();
    m.handle_funding_confirmations(1);
    drain_merchant(&mut m);
    m
}

fn drain_merchant(m: &mut MerchantChannel) {
    while let Some(e) = m.poll_effect() {
        if let Effect::Persist { id, .. } = e {
            m.persisted(id).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The merchant accepts exactly the totals that are strictly increasing and at most the
    /// deposit; a rejected payment leaves its state byte-equal to before.
    #[test]
    fn merchant_accepts_exactly_increasing_totals_within_the_deposit(
        totals in prop::collection::vec(0u64..CAPACITY + CAPACITY / 5, 1..24)
    ) {
        let mut m = open_merchant();
        let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
        let id = m.id();
        let mut highest = 0u64;
        for t in totals {
            let total = Amount::from_sat(t);
            // A valid signature where one can exist; above the deposit, the deposit's.
            let sig = sign_payment(&params, total.min(params.capacity()), &customer_keypair()).unwrap();
            let before = m.clone();
            let bytes_before = m.state().encode();
            let result = m.handle_payment(&now(), id, total, &sig);
            let should_accept = t > highest && t <= CAPACITY;
            prop_assert_eq!(result.is_ok(), should_accept, "total {} after {}: {:?}", t, highest, result);
            if should_accept {
                highest = t;
                drain_merchant(&mut m);
            } else {
                prop_assert_eq!(&m, &before);
                prop_assert_eq!(m.state().encode(), bytes_before);
                let e = result.unwrap_err();
                prop_assert!(e.is_payment_rejection(), "{}", e);
            }
            prop_assert_eq!(m.accepted(), Amount::from_sat(highest));
        }
    }

    /// The customer never signs a total above what its caller authorised, whatever the
    /// sequence of authorisations and payment requests.
    #[test]
    fn customer_never_signs_above_its_authorisation(
        ops in prop::collection::vec((any::<bool>(), 1u64..40_000), 1..30)
    ) {
        let policy = Policy::default();
        let script = ChannelScript::new(
            pubkey(&merchant_key()),
            pubkey(&customer_key()),
            LockTime::from_consensus(EXPIRY),
        ).unwrap();
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
        let mut c = CustomerChannel::new(terms, customer_key()).unwrap();
        c.authorise(Amount::from_sat(1));
        c.handle_funding_built(funding_tx(&script, OutputKind::P2wsh, Amount::from_sat(CAPACITY))).unwrap();
        c.handle_opened(&[]).unwrap();
        let mut authorised = Amount::from_sat(1);
        for (is_authorise, n) in ops {
            if is_authorise {
                c.authorise(Amount::from_sat(n * 2));
                authorised = Amount::from_sat(n * 2).max(c.state().signed);
            } else {
                let before = c.state().signed;
                match c.pay(&now(), Amount::from_sat(n)) {
                    Ok(total) => prop_assert!(total <= authorised),
                    Err(Error::AboveAuthorised { .. }) => {
                        prop_assert!(before + Amount::from_sat(n) > authorised);
                        prop_assert_eq!(c.state().signed, before);
                    }
                    Err(e) => prop_assert!(false, "unexpected {}", e),
                }
            }
            while let Some(e) = c.poll_effect() {
                match e {
                    Effect::Persist { id, .. } => c.persisted(id).unwrap(),
                    Effect::Send(Message::Pay(p)) => {
                        prop_assert!(Amount::from_sat(p.total_sat) <= authorised);
                        prop_assert!(p.total_sat <= CAPACITY);
                    }
                    _ => {}
                }
            }
            prop_assert!(c.state().signed <= authorised);
        }
    }

    /// Random bytes never panic the frame decoder.
    #[test]
    fn garbage_frames_return_errors(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = msg::decode_frame(&bytes, MAX_FRAME_LEN);
        let _ = msg::decode_one(&bytes, MAX_FRAME_LEN);
        let mut d = msg::FrameDecoder::new(MAX_FRAME_LEN);
        d.push(&bytes);
        for _ in 0..64 {
            match d.next_message() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Every message round-trips, and every truncation of it is refused as truncated.
    #[test]
    fn messages_round_trip_and_truncations_fail(total in any::<u64>(), sig in prop::collection::vec(any::<u8>(), 0..80), vout in any::<u32>(), text in ".{0,40}") {
        for m in sample_messages(total, sig.clone(), vout, text.clone()) {
            let frame = msg::encode_frame(&m);
            prop_assert_eq!(msg::decode_one(&frame, MAX_FRAME_LEN).unwrap(), m.clone());
            for cut in 0..frame.len() {
                let r = msg::decode_one(&frame[..cut], MAX_FRAME_LEN);
                let truncated = matches!(r, Err(Error::FrameTruncated { .. }));
                prop_assert!(truncated, "cut at {}: {:?}", cut, r);
            }
            // The streaming decoder gets the same message byte by byte.
            let mut d = msg::FrameDecoder::new(MAX_FRAME_LEN);
            let mut got = None;
            for b in &frame {
                d.push(std::slice::from_ref(b));
                if let Some(x) = d.next_message().unwrap() {
                    got = Some(x);
                }
            }
            prop_assert_eq!(got, Some(m));
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}

fn sample_messages(total: u64, sig: Vec<u8>, vout: u32, text: String) -> Vec<Message> {
    use paychan_core::bitcoin::hashes::Hash;
    use paychan_core::bitcoin::{OutPoint, Txid};
    let ch = Some(msg::ChannelRef::from(OutPoint { txid: Txid::from_byte_array([3; 32]), vout }));
    vec![
        Message::Hello(msg::Hello { min_version: 1, max_version: vout, user_agent: text.clone() }),
        Message::Welcome(msg::Welcome {
            version: 1,
            merchant_pubkey: sig.clone(),
            policy: Some((&Policy::default()).into()),
            key_index: vout,
        }),
        Message::Open(msg::Open {
            funding_tx: sig.clone(),
            customer_pubkey: sig.clone(),
            merchant_pubkey: vec![2; 33],
            expiry: vout,
            change_script: sig.clone(),
            key_index: vout,
            dispute_blocks: vout,
            trigger_signature: sig.clone(),
        }),
        Message::Opened(msg::Opened {
            channel: ch.clone(),
            confirmations_required: vout,
            trigger_signature: sig.clone(),
        }),
        Message::Pay(msg::Pay { channel: ch.clone(), total_sat: total, signature: sig.clone() }),
        Message::PaymentAck(msg::PaymentAck { channel: ch.clone(), total_sat: total }),
        Message::Resume(msg::Resume { channel: ch.clone() }),
        Message::Resumed(msg::Resumed {
            channel: ch.clone(),
            total_sat: total,
            signature: sig.clone(),
        }),
        Message::Close(msg::Close { channel: ch.clone(), signature: sig.clone() }),
        Message::Closed(msg::Closed {
            channel: ch.clone(),
            settlement_txid: vec![9; 32],
            close_tx: sig.clone(),
            merchant_signature: sig.clone(),
        }),
        Message::Error(msg::ErrorMsg { code: vout, message: text, channel: ch }),
    ]
}

#[test]
fn oversized_frames_are_refused_from_the_header() {
    let mut header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    assert!(matches!(msg::decode_frame(&header, MAX_FRAME_LEN), Err(Error::FrameTooLarge { .. })));
    header.extend_from_slice(&[0; 16]);
    let mut d = msg::FrameDecoder::new(MAX_FRAME_LEN);
    d.push(&header);
    assert!(matches!(d.next_message(), Err(Error::FrameTooLarge { .. })));
}

#[test]
fn empty_and_trailing_frames_are_refused() {
    // A frame whose body carries no message.
    assert!(matches!(msg::decode_one(&[0, 0, 0, 0], MAX_FRAME_LEN), Err(Error::Decode(_))));
    // Garbage body: a field with an invalid wire type.
    assert!(matches!(
        msg::decode_one(&[0, 0, 0, 2, 0x0f, 0xff], MAX_FRAME_LEN),
        Err(Error::Decode(_))
    ));
    let mut two = msg::encode_frame(&Message::Resume(msg::Resume { channel: None }));
    two.push(0);
    assert!(matches!(msg::decode_one(&two, MAX_FRAME_LEN), Err(Error::Decode(_))));
}

#[test]
fn version_negotiation() {
    let ok = msg::Hello { min_version: 1, max_version: 7, user_agent: String::new() };
    assert_eq!(msg::negotiate(&ok).unwrap(), msg::PROTOCOL_VERSION);
    // A version-1 client (no dispute channels) still gets version 1.
    let old = msg::Hello { min_version: 1, max_version: 1, user_agent: String::new() };
    assert_eq!(msg::negotiate(&old).unwrap(), 1);
    let too_new = msg::Hello {
        min_version: msg::PROTOCOL_VERSION + 1,
        max_version: msg::PROTOCOL_VERSION + 2,
        user_agent: String::new(),
    };
    assert!(matches!(msg::negotiate(&too_new), Err(Error::UnsupportedVersion { .. })));
}

#[test]
fn policy_limits_round_trip() {
    let p = Policy {
        zero_conf: true,
        dust_relay_fee: FeeRate::from_sat_per_kwu(1_000),
        ..Policy::default()
    };
    let limits = msg::PolicyLimits::from(&p);
    assert_eq!(limits.to_policy().unwrap(), p);
}

#[test]
fn a_payment_frame_is_about_a_hundred_bytes() {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(CAPACITY), EXPIRY);
    let total = Amount::from_sat(54_321);
    let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
    let frame = msg::encode_frame(&Message::Pay(msg::Pay {
        channel: Some(params.id().into()),
        total_sat: total.to_sat(),
        signature: sig,
    }));
    assert!(frame.len() <= 125, "payment frame is {} bytes", frame.len());
}
