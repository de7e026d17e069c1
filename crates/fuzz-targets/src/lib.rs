//! # paychan-fuzz-targets
//!
//! Every fuzz target as a plain function of the input bytes (DESIGN §8: bad input never
//! panics). `fuzz/` runs them under libFuzzer (`cargo fuzz run <name>`); `cargo test` replays
//! the committed corpora (`fuzz/corpus/<name>/`) and a bounded number of generated inputs
//! through the same functions, so a regression on a known input fails CI without a fuzzer.
//!
//! A target returns normally for any input; a broken invariant panics (that is the finding).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use paychan_core::bitcoin::consensus::encode::deserialize;
use paychan_core::bitcoin::{Amount, Transaction};
use paychan_core::msg::{self, FrameDecoder, Message, MAX_FRAME_LEN};
use paychan_core::paywall::{decode_header, PaymentPayload, PaymentRequired, PaymentResponse};
use paychan_core::script::OutputKind;
use paychan_core::tx::ChannelParams;
use paychan_harness::fixtures::{params_with, EXPIRY};

mod channels;

pub use channels::channels;

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and `cargo fuzz` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("transactions", transactions),
    ("two1_forms", two1_forms),
    ("paywall_headers", paywall_headers),
    ("rpc", rpc),
    ("channels", channels),
];

/// Protocol frames: pushed in chunks (the first byte sets the chunk size) through the stream
/// decoder; every message decoded must encode and decode back to itself.
pub fn frames(data: &[u8]) {
    let chunk = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut d = FrameDecoder::new(MAX_FRAME_LEN);
    for part in data.chunks(chunk) {
        d.push(part);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    let frame = msg::encode_frame(&m);
                    let back =
                        msg::decode_one(&frame, MAX_FRAME_LEN).expect("a frame we encoded decodes");
                    assert_eq!(back, m, "frame round trip");
                    if let Message::Open(open) = &m {
                        let key = paychan_harness::fixtures::pubkey(
                            &paychan_harness::fixtures::merchant_key(),
                        );
                        let _ = paychan_core::channel::merchant::params_from_open(
                            open,
                            &key,
                            &paychan_core::policy::Policy::default(),
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn channel(kind: OutputKind) -> &'static ChannelParams {
    static WSH: OnceLock<ChannelParams> = OnceLock::new();
    static SH: OnceLock<ChannelParams> = OnceLock::new();
    let cell = if kind == OutputKind::P2wsh { &WSH } else { &SH };
    cell.get_or_init(|| params_with(kind, Amount::from_sat(300_000), EXPIRY).0)
}

/// Transactions: decoded, then read as a 21 payment of a fixed channel, as channel spends, as
/// BOLT 3 transactions (every witness item as a script), and their first input's script bytes
/// as a compact payment signature of the output's value.
pub fn transactions(data: &[u8]) {
    let Ok(tx) = deserialize::<Transaction>(data) else { return };
    let sh = channel(OutputKind::P2sh);
    if let Ok(p) = paychan_core::tx::two1::parse_payment(sh, &tx) {
        // Whatever passes is a fully valid payment of this channel.
        assert!(p.amount <= sh.capacity(), "a 21 payment above the deposit passed");
    }
    let _ = paychan_core::tx::recognise::find_channel_spend(&tx);
    // BOLT 3 recognition reads every witness script; whatever it reports, rebuilding it from the
    // parts it read gives the same script.
    let _ = paychan_core::bolt3::recognise::recognise(&tx);
    for input in &tx.input {
        for item in input.witness.iter() {
            let _ = paychan_core::bolt3::recognise::classify_script(
                paychan_core::bitcoin::Script::from_bytes(item),
            );
        }
    }
    let wsh = channel(OutputKind::P2wsh);
    let total = tx.output.first().map_or(Amount::ZERO, |o| o.value);
    if let Some(input) = tx.input.first() {
        let _ = paychan_core::tx::payment::verify_payment(wsh, total, input.script_sig.as_bytes());
    }
}

/// The 21 REST forms: query string (up to the first NUL) and body, as `PUT /payment` reads
/// them.
pub fn two1_forms(data: &[u8]) {
    let (query, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (Some(String::from_utf8_lossy(&data[..i]).into_owned()), &data[i + 1..]),
        None => (None, data),
    };
    let _ = paychan_merchant::two1::fuzz_forms(body, query);
}

/// The paywall headers: `PAYMENT-SIGNATURE` (and its payment), `PAYMENT-REQUIRED`,
/// `PAYMENT-RESPONSE`.
pub fn paywall_headers(data: &[u8]) {
    if let Ok(p) = decode_header::<PaymentPayload>(data) {
        let _ = p.payload.decode();
        // A requirement always accepts itself.
        assert!(p.accepted.check_accepted(&p.accepted).is_ok());
    }
    if let Ok(r) = decode_header::<PaymentRequired>(data) {
        for a in &r.accepts {
            let _ = a.price();
        }
    }
    if let Ok(r) = decode_header::<PaymentResponse>(data) {
        let _ = r.extra.map(|x| x.amounts());
    }
}

/// Methods that change the node's state or take unbounded time (mining counts): not fuzzed
/// against the shared node.
const MUTATING: &[&str] = &[
    "generatetoaddress",
    "generateblock",
    "generatetodescriptor",
    "generate",
    "stop",
    "invalidateblock",
    "reconsiderblock",
    "setmocktime",
    "submitblock",
    "sendrawtransaction",
];

/// The node's JSON-RPC request parser and dispatch, on a node with 101 blocks.
pub fn rpc(data: &[u8]) {
    static NODE: OnceLock<paychan_node::Node> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        let n = paychan_node::Node::in_memory();
        let spk = paychan_harness::fixtures::p2wpkh(&paychan_harness::fixtures::key(1));
        n.mine(101, &spk).expect("mining on a fresh node");
        n
    });
    if let Ok(v) = serde_json_value(data) {
        let calls: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        let mutating = calls.iter().any(|c| {
            c.get("method").and_then(|m| m.as_str()).is_some_and(|m| {
                let m = m.to_ascii_lowercase();
                MUTATING.iter().any(|x| m.starts_with(x))
            })
        });
        if mutating {
            return;
        }
    }
    let (status, reply) = paychan_node::rpc::fuzz_answer(node, data);
    assert!((200..600).contains(&status));
    assert!(reply.is_object() || reply.is_array());
}

fn serde_json_value(data: &[u8]) -> Result<serde_json::Value, ()> {
    serde_json::from_slice(data).map_err(|_| ())
}
