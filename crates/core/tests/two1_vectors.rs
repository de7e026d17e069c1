//! The 21 (two1) worked example from `testdata/two1-channel.json` (a copy of
//! `shared/vectors/two1-channel.json`): real mainnet transactions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::consensus::encode::deserialize_hex;
use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, CompressedPublicKey, Network, ScriptBuf, Transaction};
use paychan_core::policy::DEFAULT_DUST_RELAY_FEE;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::recognise::{find_channel_spend, Role};
use paychan_core::tx::two1::parse_payment;
use paychan_core::tx::{ChannelParams, FundingOutput};
use paychan_core::verify::verify_input;
use paychan_core::Error;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/two1-channel.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector field {k}"))
}

fn tx(v: &Value, k: &str) -> Transaction {
    deserialize_hex(s(v, k)).unwrap()
}

fn script(v: &Value) -> ChannelScript {
    let m: PublicKey = s(v, "merchant_pubkey").parse().unwrap();
    let c: PublicKey = s(v, "customer_pubkey").parse().unwrap();
    let expiry = LockTime::from_consensus(v["expiry_unix_time"].as_u64().unwrap() as u32);
    ChannelScript::new(m, c, expiry).unwrap()
}

fn params(v: &Value) -> ChannelParams {
    let cs = script(v);
    let funding = FundingOutput::find(&tx(v, "deposit_tx_hex"), &cs).unwrap();
    let change = ScriptBuf::new_p2pkh(&CompressedPublicKey(cs.customer()).pubkey_hash());
    ChannelParams::new(cs, funding, change, DEFAULT_DUST_RELAY_FEE).unwrap()
}

#[test]
fn redeem_script_is_rebuilt_byte_for_byte() {
    let v = vectors();
    let cs = script(&v);
    assert_eq!(cs.script().to_hex_string(), s(&v, "redeem_script_hex"));
    let parsed =
        ChannelScript::from_script(&ScriptBuf::from_hex(s(&v, "redeem_script_hex")).unwrap())
            .unwrap();
    assert_eq!(parsed, cs);
}

#[test]
fn p2sh_address_matches() {
    let v = vectors();
    let addr = script(&v).address(OutputKind::P2sh, Network::Bitcoin).unwrap();
    assert_eq!(addr.to_string(), s(&v, "p2sh_address"));
}

#[test]
fn channel_output_is_found_in_the_deposit() {
    let v = vectors();
    let deposit = tx(&v, "deposit_tx_hex");
    assert_eq!(deposit.compute_txid().to_string(), s(&v, "deposit_txid"));
    let f = FundingOutput::find(&deposit, &script(&v)).unwrap();
    assert_eq!(f.outpoint.vout as u64, v["deposit_channel_output"]["vout"].as_u64().unwrap());
    assert_eq!(f.value.to_sat(), v["deposit_channel_output"]["value_sat"].as_u64().unwrap());
    assert_eq!(f.kind, OutputKind::P2sh);
}

#[test]
fn refund_is_recognised_and_valid_under_bitcoin_core_rules() {
    let v = vectors();
    let refund = tx(&v, "refund_tx_hex");
    let spend = find_channel_spend(&refund).unwrap();
    assert_eq!(spend.role, Role::Refund);
    assert_eq!(spend.kind, OutputKind::P2sh);
    assert_eq!(spend.script, script(&v));
    assert_eq!(refund.output[0].value, Amount::from_sat(101_000));
    assert_eq!(refund.lock_time, LockTime::from_consensus(1_450_302_052));
    let p = params(&v);
    let deposit = tx(&v, "deposit_tx_hex");
    let verdict = verify_input(&refund, 0, &deposit.output[p.id().vout as usize], None);
    assert!(verdict.valid, "{verdict:?}");
}

#[test]
fn half_signed_payment_is_recognised_and_its_signature_verifies() {
    let v = vectors();
    let payment = tx(&v, "half_signed_payment_tx_hex");
    let spend = find_channel_spend(&payment).unwrap();
    assert_eq!(spend.role, Role::Payment);
    let p = params(&v);
    // Legacy sighash, SIGHASH_ALL, under the customer key: parse_payment verifies it.
    let parsed = parse_payment(&p, &payment).unwrap();
    assert_eq!(parsed.amount, Amount::from_sat(28_000));
    assert_eq!(parsed.change, Amount::from_sat(73_000));
    assert_eq!(parsed.fee, Amount::from_sat(10_000));
    assert_eq!(*parsed.customer_sig.last().unwrap(), 0x01);
    // Half-signed: not yet spendable under consensus rules.
    let deposit = tx(&v, "deposit_tx_hex");
    assert!(!verify_input(&payment, 0, &deposit.output[1], None).valid);
}

#[test]
fn a_tampered_21_payment_is_refused() {
    let v = vectors();
    let p = params(&v);
    let mut payment = tx(&v, "half_signed_payment_tx_hex");
    payment.output[0].value += Amount::from_sat(1_000);
    assert_eq!(parse_payment(&p, &payment).unwrap_err(), Error::BadSignature);
    let mut swapped = tx(&v, "half_signed_payment_tx_hex");
    swapped.output.swap(0, 1);
    assert!(matches!(parse_payment(&p, &swapped), Err(Error::MalformedTwo1Payment(_))));
}

#[test]
fn a_21_payment_without_a_relayable_fee_is_refused() {
    use paychan_core::tx::two1::build_payment;
    let v = vectors();
    let p = params(&v);
    let key = paychan_core::bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).unwrap();
    // Not the customer's key: refused before anything is signed.
    assert!(matches!(
        build_payment(&p, Amount::from_sat(3_000), Amount::from_sat(100), &key),
        Err(Error::Signing(_))
    ));
}
