//! BOLT 8's published test vectors (Appendix A, in `testdata/bolt8/appendix-a.json`): both
//! handshakes, every failing act, and the message encryption through two key rotations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bitcoin::hex::FromHex;
use paychan_core::noise::{Initiator, Responder, Session, HEADER_LEN};
use paychan_core::Error;
use secp256k1::{PublicKey, SecretKey};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/bolt8/appendix-a.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    Vec::<u8>::from_hex(v.as_str().unwrap()).unwrap()
}

fn secret(v: &Value) -> SecretKey {
    SecretKey::from_slice(&bytes(v)).unwrap()
}

fn public(v: &Value) -> PublicKey {
    PublicKey::from_slice(&bytes(v)).unwrap()
}

/// The error each named failure of the appendix maps to.
fn expected(name: &str) -> fn(&Error) -> bool {
    match name {
        n if n.ends_with("READ_FAILED") => |e| matches!(e, Error::ActLength { .. }),
        n if n.ends_with("BAD_VERSION") => |e| matches!(e, Error::HandshakeVersion(1)),
        n if n.ends_with("BAD_PUBKEY") => |e| matches!(e, Error::HandshakeKey),
        n if n.ends_with("BAD_TAG") || n.ends_with("BAD_CIPHERTEXT") => {
            |e| matches!(e, Error::HandshakeFailed)
        }
        other => panic!("unknown failure {other}"),
    }
}

fn initiator(v: &Value) -> (Initiator, [u8; 50]) {
    Initiator::new(secret(&v["ls_priv"]), &public(&v["rs_pub"]), secret(&v["e_priv"]))
}

/// Encrypts "hello" once and returns the wire bytes.
fn hello(s: &mut Session) -> Vec<u8> {
    let mut out = Vec::new();
    s.encrypt(b"hello", &mut out).unwrap();
    out
}

/// Reads one message of `wire` with `s`.
fn read(s: &mut Session, wire: &[u8]) -> Result<Vec<u8>, Error> {
    let header: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
    let n = s.read_header(&header)?;
    let mut body = wire[HEADER_LEN..HEADER_LEN + n].to_vec();
    s.read_body(&mut body)?;
    Ok(body)
}

#[test]
fn the_initiator_handshake_and_its_failures() {
    let v = &vectors()["initiator"];
    let (hs, act_one) = initiator(v);
    assert_eq!(act_one.to_vec(), bytes(&v["act_one"]));
    let (act_three, mut session) = hs.read_act_two(&bytes(&v["act_two"])).unwrap();
    assert_eq!(act_three.to_vec(), bytes(&v["act_three"]));
    // sk is checked by the first message of the message vectors.
    assert_eq!(hello(&mut session), bytes(&vectors()["messages"]["outputs"]["0"]));

    for f in v["failures"].as_array().unwrap() {
        let (hs, _) = initiator(v);
        let e = hs.read_act_two(&bytes(&f["act_two"])).unwrap_err();
        assert!(expected(f["error"].as_str().unwrap())(&e), "{}: {e:?}", f["name"]);
    }
}

#[test]
fn the_responder_handshake_and_its_failures() {
    let v = &vectors()["responder"];
    let responder = || Responder::new(secret(&v["ls_priv"]), secret(&v["e_priv"]));
    let (hs, act_two) = responder().read_act_one(&bytes(&v["act_one"])).unwrap();
    assert_eq!(act_two.to_vec(), bytes(&v["act_two"]));
    let (mut session, rs) = hs.read_act_three(&bytes(&v["act_three"])).unwrap();
    assert_eq!(rs, public(&v["rs_pub"]), "the initiator's static key");
    // rk: the responder reads the initiator's first message of the message vectors.
    let first = bytes(&vectors()["messages"]["outputs"]["0"]);
    assert_eq!(read(&mut session, &first).unwrap(), b"hello");

    for f in v["act_one_failures"].as_array().unwrap() {
        let e = responder().read_act_one(&bytes(&f["act_one"])).unwrap_err();
        assert!(expected(f["error"].as_str().unwrap())(&e), "{}: {e:?}", f["name"]);
    }
    for f in v["act_three_failures"].as_array().unwrap() {
        let (hs, _) = responder().read_act_one(&bytes(&v["act_one"])).unwrap();
        let e = hs.read_act_three(&bytes(&f["act_three"])).unwrap_err();
        assert!(expected(f["error"].as_str().unwrap())(&e), "{}: {e:?}", f["name"]);
    }
}

/// 1,002 messages from the initiator: outputs 0, 1, 500, 501, 1000 and 1001 as published
/// (two key rotations, at 1,000 nonce uses each); the responder reads them all back.
#[test]
fn messages_with_key_rotation() {
    let all = vectors();
    let v = &all["initiator"];
    let (hs, act_one) = initiator(v);
    let r = &all["responder"];
    let (rhs, act_two) =
        Responder::new(secret(&r["ls_priv"]), secret(&r["e_priv"])).read_act_one(&act_one).unwrap();
    let (act_three, mut sender) = hs.read_act_two(&act_two).unwrap();
    let (mut receiver, _) = rhs.read_act_three(&act_three).unwrap();
    let outputs = all["messages"]["outputs"].as_object().unwrap();
    for i in 0..=1001u32 {
        let wire = hello(&mut sender);
        if let Some(want) = outputs.get(&i.to_string()) {
            assert_eq!(wire, bytes(want), "output {i}");
        }
        assert_eq!(read(&mut receiver, &wire).unwrap(), b"hello", "read back {i}");
    }
    // And the other way, with the responder's sending key.
    let wire = hello(&mut receiver);
    assert_eq!(read(&mut sender, &wire).unwrap(), b"hello");
}

/// A flipped bit anywhere in a message is refused; a message replayed (an old nonce) too; a
/// body longer than 65,535 bytes cannot be sent.
#[test]
fn tampering_replay_and_oversize_are_refused() {
    let all = vectors();
    let v = &all["initiator"];
    let r = &all["responder"];
    let fresh = || {
        let (hs, act_one) = initiator(v);
        let (rhs, act_two) = Responder::new(secret(&r["ls_priv"]), secret(&r["e_priv"]))
            .read_act_one(&act_one)
            .unwrap();
        let (act_three, s) = hs.read_act_two(&act_two).unwrap();
        (s, rhs.read_act_three(&act_three).unwrap().0)
    };
    let (mut s, _) = fresh();
    let wire = hello(&mut s);
    for bit in [0, 8 * 5, 8 * HEADER_LEN, 8 * (wire.len() - 1)] {
        let (_, mut r) = fresh();
        let mut bad = wire.clone();
        bad[bit / 8] ^= 1;
        assert!(matches!(read(&mut r, &bad), Err(Error::TransportTag)), "bit {bit}");
    }
    let (mut s, mut r) = fresh();
    let first = hello(&mut s);
    assert!(read(&mut r, &first).is_ok());
    assert!(matches!(read(&mut r, &first), Err(Error::TransportTag)), "a replay");
    // (A session that met an error is closed by its driver; start again.)
    let (mut s, mut r) = fresh();
    let mut out = Vec::new();
    assert!(matches!(s.encrypt(&[0; 65_536], &mut out), Err(Error::FrameTooLarge { .. })));
    assert!(out.is_empty());
    s.encrypt(&[7; 65_535], &mut out).unwrap();
    assert_eq!(out.len(), HEADER_LEN + 65_535 + 16);
    assert_eq!(read(&mut r, &out).unwrap(), vec![7; 65_535]);
}
