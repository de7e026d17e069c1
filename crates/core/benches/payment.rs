//! The payment hot path beside its physical bound, in one group so the ratios show:
//! raw secp256k1 ECDSA sign and verify, the customer's "build + sign payment", and the
//! merchant's "validate payment" (parse, sighash, verify) and "handle payment" (validate, update
//! state, queue persist and ack).
//!
//! After criterion's report, a summary line prints each path as a ratio of one raw verify,
//! measured again in the same process, interleaved, median of several rounds.
//!
//! Run: `cargo bench -p paychan-core --bench payment`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use paychan_core::bitcoin::secp256k1::{ecdsa, Keypair, Message, PublicKey, SecretKey};
use paychan_core::bitcoin::Amount;
use paychan_core::channel::merchant::MerchantChannel;
use paychan_core::channel::Phase;
use paychan_core::msg::{encode_frame, Message as Msg, Pay};
use paychan_core::noise::{Initiator, Responder, Session, HEADER_LEN};
use paychan_core::policy::Policy;
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::ChannelParams;
use paychan_core::validate::{validate_payment, ChannelView};
use paychan_core::Now;
use paychan_harness::fixtures::{customer_key, keypair, params_with, pubkey, EXPIRY, NOW};

const PRESIGNED: u64 = 4_096;

struct Fixture {
    params: ChannelParams,
    customer: SecretKey,
    keypair: Keypair,
    customer_pub: PublicKey,
    now: Now,
    policy: Policy,
    merchant: MerchantChannel,
    /// Signatures of totals 1..=PRESIGNED.
    sigs: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let (params, _) = params_with(OutputKind::P2wsh, Amount::from_sat(1_000_000), EXPIRY);
    let ck = customer_key();
    let policy = Policy::default();
    let now = Now { time: NOW, height: 800_000, median_time_past: 0 };
    let mut merchant = MerchantChannel::open(params.clone(), policy.clone(), &now, 0).unwrap();
    merchant.handle_funding_confirmations(1);
    while merchant.poll_effect().is_some() {}
    let kp = keypair(&ck);
    let sigs =
        (1..=PRESIGNED).map(|t| sign_payment(&params, Amount::from_sat(t), &kp).unwrap()).collect();
    Fixture {
        params,
        customer: ck,
        keypair: kp,
        customer_pub: pubkey(&ck),
        now,
        policy,
        merchant,
        sigs,
    }
}

fn raw_pair(f: &Fixture) -> (Message, ecdsa::Signature) {
    let msg = Message::from_digest([0x5a; 32]);
    let sig = paychan_core::sig::secp().sign_ecdsa(&msg, &f.customer);
    (msg, sig)
}

fn validate_once(f: &Fixture, i: usize) {
    let view = ChannelView { params: &f.params, phase: Phase::Open, accepted: Amount::ZERO };
    let total = Amount::from_sat(i as u64 + 1);
    validate_payment(&view, &f.policy, &f.now, f.params.id(), total, &f.sigs[i]).unwrap();
}

/// A BOLT 8 session pair (customer → merchant) and a payment's frame as it travels.
fn transport_fixture(f: &Fixture) -> (Session, Session, Vec<u8>) {
    use paychan_harness::fixtures::key;
    let (hs, one) = Initiator::new(key(1), &pubkey(&key(2)), key(3));
    let (rhs, two) = Responder::new(key(2), key(4)).read_act_one(&one).unwrap();
    let (three, send) = hs.read_act_two(&two).unwrap();
    let (recv, _) = rhs.read_act_three(&three).unwrap();
    let frame = encode_frame(&Msg::Pay(Pay {
        channel: Some(f.params.id().into()),
        total_sat: 1,
        signature: f.sigs[0].clone(),
    }));
    (send, recv, frame)
}

/// The customer encrypts a payment's frame; the merchant authenticates and decrypts it.
fn transport_once(send: &mut Session, recv: &mut Session, frame: &[u8]) {
    let mut wire = Vec::with_capacity(frame.len() + 2 * HEADER_LEN);
    send.encrypt(frame, &mut wire).unwrap();
    let header: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
    recv.read_header(&header).unwrap();
    let mut body = wire.split_off(HEADER_LEN);
    recv.read_body(&mut body).unwrap();
    black_box(body);
}

fn bench_payment(c: &mut Criterion) {
    let f = fixture();
    let secp = paychan_core::sig::secp();
    let (msg, sig) = raw_pair(&f);
    let mut g = c.benchmark_group("payment");
    g.bench_function("raw secp256k1 sign", |b| {
        b.iter(|| secp.sign_ecdsa(black_box(&msg), black_box(&f.customer)))
    });
    g.bench_function("raw secp256k1 verify", |b| {
        b.iter(|| secp.verify_ecdsa(black_box(&msg), black_box(&sig), black_box(&f.customer_pub)))
    });
    let mut n = 0u64;
    g.bench_function("customer build + sign payment", |b| {
        b.iter(|| {
            n = n % 900_000 + 1;
            sign_payment(black_box(&f.params), Amount::from_sat(n), &f.keypair).unwrap()
        })
    });
    let mut i = 0usize;
    g.bench_function("merchant validate payment", |b| {
        b.iter(|| {
            i = (i + 1) % f.sigs.len();
            validate_once(&f, i)
        })
    });
    let (mut send, mut recv, frame) = transport_fixture(&f);
    g.bench_function("transport: encrypt + decrypt a payment frame (BOLT 8)", |b| {
        b.iter(|| transport_once(&mut send, &mut recv, &frame))
    });
    g.bench_function("merchant handle payment", |b| {
        b.iter_custom(|iters| {
            let mut m = f.merchant.clone();
            let start = Instant::now();
            for k in 0..iters {
                let idx = (k % PRESIGNED) as usize;
                if idx == 0 && k > 0 {
                    m = f.merchant.clone();
                }
                let total = Amount::from_sat(idx as u64 + 1);
                m.handle_payment(&f.now, f.params.id(), total, &f.sigs[idx]).unwrap();
                while let Some(e) = m.poll_effect() {
                    if let paychan_core::channel::Effect::Persist { id, .. } = e {
                        m.persisted(id).unwrap();
                    }
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_payment);

/// Median ns per op of `op` over `rounds` rounds of `n` ops.
fn per_op(rounds: usize, n: usize, mut op: impl FnMut(usize)) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for k in 0..n {
                op(k);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary() {
    let f = fixture();
    let secp = paychan_core::sig::secp();
    let (msg, sig) = raw_pair(&f);
    let (mut verify, mut sign, mut validate, mut build_sign) = (vec![], vec![], vec![], vec![]);
    let mut transport = vec![];
    let (mut send, mut recv, frame) = transport_fixture(&f);
    // Interleave rounds so drift on a noisy machine hits every path alike.
    for _ in 0..7 {
        verify.extend(per_op(1, 2_000, |_| {
            secp.verify_ecdsa(black_box(&msg), black_box(&sig), &f.customer_pub).unwrap()
        }));
        validate.extend(per_op(1, 2_000, |k| validate_once(&f, k % f.sigs.len())));
        sign.extend(per_op(1, 2_000, |_| {
            black_box(secp.sign_ecdsa(black_box(&msg), &f.customer));
        }));
        transport.extend(per_op(1, 2_000, |_| transport_once(&mut send, &mut recv, &frame)));
        build_sign.extend(per_op(1, 2_000, |k| {
            black_box(sign_payment(&f.params, Amount::from_sat(k as u64 + 1), &f.keypair).unwrap());
        }));
    }
    let (v, s, val, bs) = (median(verify), median(sign), median(validate), median(build_sign));
    println!();
    println!("summary (median of 7 interleaved rounds, same process):");
    println!("  raw verify                 {:>8.2} µs   1.00× (bound)", v / 1e3);
    println!("  merchant validate payment  {:>8.2} µs   {:.2}× raw verify", val / 1e3, val / v);
    println!("  raw sign                   {:>8.2} µs", s / 1e3);
    println!("  customer build + sign      {:>8.2} µs   {:.2}× raw sign", bs / 1e3, bs / s);
    let t = median(transport);
    println!("  transport (BOLT 8, both ends) {:>5.2} µs   {:.3}× raw verify", t / 1e3, t / v);
    println!("  sign + validate bound: {:.0} payments/s on one core", 1e9 / (bs + val));
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
