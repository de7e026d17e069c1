//! `paychan tx decode` and `paychan tx verify`, run as a user would: the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use paychan_core::bitcoin::consensus::encode::serialize_hex;
use paychan_core::bitcoin::{Amount, FeeRate};
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::settlement::build_settlement;
use paychan_harness::fixtures::{customer_keypair, merchant_key, p2wpkh, params};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/two1-channel.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn v(k: &str) -> String {
    vectors()[k].as_str().unwrap().to_string()
}

fn paychan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paychan")).args(args).output().unwrap()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn decode_recognises_the_21_refund() {
    let o = paychan(&["tx", "decode", "--network", "bitcoin", &v("refund_tx_hex")]);
    assert!(o.status.success());
    let j = json_of(&o);
    assert_eq!(j["channel"]["role"], "refund");
    assert_eq!(j["channel"]["kind"], "p2sh");
    assert_eq!(j["channel"]["to_customer_key_sat"], 101_000);
    assert_eq!(j["channel"]["merchant_pubkey"], v("merchant_pubkey").as_str());
    assert_eq!(j["channel"]["customer_pubkey"], v("customer_pubkey").as_str());
    assert_eq!(j["channel"]["expiry"]["type"], "time");
    assert_eq!(j["channel"]["expiry"]["value"], 1_450_302_052);
    assert_eq!(j["locktime"], 1_450_302_052);
    assert_eq!(j["outputs"][0]["address"], "13xQZeaJ4TbSrnSxNWiaMyrTxWMasjCPyC");
}

#[test]
fn decode_recognises_the_21_half_signed_payment() {
    let o = paychan(&["tx", "decode", &v("half_signed_payment_tx_hex")]);
    assert!(o.status.success());
    let j = json_of(&o);
    assert_eq!(j["channel"]["role"], "payment");
    assert_eq!(j["channel"]["to_merchant_key_sat"], 28_000);
    assert_eq!(j["channel"]["to_customer_key_sat"], 73_000);
}

#[test]
fn decode_recognises_funding_given_the_script() {
    let o = paychan(&["tx", "decode", "--script", &v("redeem_script_hex"), &v("deposit_tx_hex")]);
    assert!(o.status.success());
    let j = json_of(&o);
    assert_eq!(j["txid"], v("deposit_txid").as_str());
    assert_eq!(j["channel"]["role"], "funding");
    assert_eq!(j["channel"]["vout"], 1);
    assert_eq!(j["channel"]["deposit_sat"], 111_000);
    // Without the script a funding transaction is just a transaction.
    let j = json_of(&paychan(&["tx", "decode", &v("deposit_tx_hex")]));
    assert!(j["channel"].is_null());
}

#[test]
fn verify_accepts_the_21_refund_and_refuses_the_half_signed_payment() {
    let o = paychan(&["tx", "verify", "--spent", &v("deposit_tx_hex"), &v("refund_tx_hex")]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let j = json_of(&o);
    assert_eq!(j["valid"], true);
    assert_eq!(j["standard"], true);
    assert_eq!(j["inputs"][0]["index"], 0);

    let o = paychan(&[
        "tx",
        "verify",
        "--spent",
        &v("deposit_tx_hex"),
        &v("half_signed_payment_tx_hex"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let j = json_of(&o);
    assert_eq!(j["valid"], false);
    assert!(j["inputs"][0]["error"].as_str().unwrap().contains("script"));
}

#[test]
fn verify_takes_spent_outputs_directly() {
    let vec = vectors();
    let spent = format!(
        "{}:1:111000:a914ddbe2dc0ce28de6648b2980b9bd705ca608fe7a187",
        vec["deposit_txid"].as_str().unwrap()
    );
    let o = paychan(&["tx", "verify", "--spent-output", &spent, &v("refund_tx_hex")]);
    assert_eq!(o.status.code(), Some(0));
    // The wrong amount does not matter to a legacy P2SH input, the wrong script does.
    let wrong = spent.replace("a914dd", "a914de");
    let o = paychan(&["tx", "verify", "--spent-output", &wrong, &v("refund_tx_hex")]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn malformed_input_exits_2_with_one_line() {
    for args in [
        vec!["tx", "verify", "--spent", "zz", "00"],
        vec!["tx", "verify", "--spent-output", "abc:1:2", "0100"],
        vec!["tx", "decode", "0100000001"],
    ] {
        let o = paychan(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    // A transaction that spends none of the outputs given.
    let o = paychan(&["tx", "verify", "--spent", &v("refund_tx_hex"), &v("refund_tx_hex")]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn verify_a_settlement_built_by_the_core() {
    let (params, funding) = params(OutputKind::P2wsh);
    let total = Amount::from_sat(12_345);
    let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
    let fee = FeeRate::from_sat_per_vb(1).unwrap();
    let s =
        build_settlement(&params, total, &sig, &merchant_key(), p2wpkh(&merchant_key()), fee, &[])
            .unwrap();
    let o = paychan(&["tx", "verify", "--spent", &serialize_hex(&funding), &serialize_hex(&s.tx)]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let j = json_of(&paychan(&["tx", "decode", &serialize_hex(&s.tx)]));
    assert_eq!(j["channel"]["role"], "settlement");
    assert_eq!(j["channel"]["kind"], "p2wsh");
    assert_eq!(j["outputs"][0]["value_sat"], 100_000 - 12_345);
}

/// The first line of BOLT 3 (testdata copy) that starts with `prefix`, after it.
fn bolt3_line(prefix: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/bolt3/03-transactions.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{prefix}"))
        .trim()
        .to_string()
}

#[test]
fn decode_recognises_bolt3_commitment_and_htlc_transactions() {
    // Appendix C's first commitment: obscured number 0x2bb038521914 ^ 42.
    let j = json_of(&paychan(&["tx", "decode", &bolt3_line("output commit_tx:")]));
    assert_eq!(j["bolt3"]["kind"], "bolt3-commitment");
    assert_eq!(j["bolt3"]["obscured_commitment_number"], 0x2bb0_3852_1914_u64 ^ 42);
    assert_eq!(j["bolt3"]["signed"], true);
    assert_eq!(
        j["bolt3"]["funding"],
        "8984484a580b825b9972d7adb15050b3ab624ccd731946b3eeddb92f4e7ef6be:0"
    );
    assert!(j["channel"].is_null());

    let j = json_of(&paychan(&["tx", "decode", &bolt3_line("htlc_success_tx (htlc #0):")]));
    assert_eq!(j["bolt3"]["kind"], "bolt3-htlc-success");
    assert_eq!(j["bolt3"]["inputs"][0]["type"], "success");
    assert_eq!(j["bolt3"]["inputs"][0]["channel_type"], "static_remotekey");
    assert_eq!(j["bolt3"]["inputs"][0]["preimage"], "00".repeat(32));

    let j = json_of(&paychan(&["tx", "decode", &bolt3_line("htlc_timeout_tx (htlc #2):")]));
    assert_eq!(j["bolt3"]["kind"], "bolt3-htlc-timeout");
    assert_eq!(j["bolt3"]["inputs"][0]["cltv_expiry"], 502);

    // A unidirectional channel's transaction is not a BOLT 3 one.
    let j = json_of(&paychan(&["tx", "decode", &v("refund_tx_hex")]));
    assert!(j["bolt3"].is_null());
}

#[test]
fn decode_recognises_bolt3_closing_and_justice_transactions() {
    use paychan_core::bitcoin::hashes::Hash;
    use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
    use paychan_core::bitcoin::{OutPoint, Txid};
    use paychan_core::bolt3::justice::{self, RevokedKind, RevokedOutput};
    use paychan_core::bolt3::{closing, keys, script, sign};
    use paychan_harness::fixtures::key;

    let pk = |k: &SecretKey| PublicKey::from_secret_key(paychan_core::sig::secp(), k);
    let (a, b) = (key(1), key(2));
    let funding_script = script::funding(&pk(&a), &pk(&b));
    let funding = OutPoint { txid: Txid::from_byte_array([5; 32]), vout: 1 };
    let tx = closing::build(&closing::ClosingSpec {
        funding_outpoint: funding,
        to_local_msat: 600_000_000,
        to_remote_msat: 400_000_000,
        local_script: p2wpkh(&key(3)),
        remote_script: p2wpkh(&key(4)),
        fee_sat: 1_000,
        local_is_opener: true,
        dust_limit_sat: 546,
    })
    .unwrap();
    let sig = |k| {
        sign::sign(
            &tx,
            0,
            &funding_script,
            1_000_000,
            paychan_core::bitcoin::EcdsaSighashType::All,
            k,
        )
        .unwrap()
    };
    let mut signed = tx.clone();
    signed.input[0].witness =
        paychan_core::bolt3::funding_witness((&pk(&a), &sig(&a)), (&pk(&b), &sig(&b)));
    let j = json_of(&paychan(&["tx", "decode", &serialize_hex(&signed)]));
    assert_eq!(j["bolt3"]["kind"], "bolt3-closing");
    assert_eq!(j["bolt3"]["funding"], format!("{}:1", funding.txid));

    // A justice transaction taking a revoked to_local.
    let secret = keys::commitment_secret(&[3; 32], keys::FIRST_INDEX - 7);
    let point = keys::per_commitment_point(&secret).unwrap();
    let revocation = keys::revocation_pubkey(&pk(&key(5)), &point).unwrap();
    let revoked = [RevokedOutput {
        outpoint: OutPoint { txid: Txid::from_byte_array([6; 32]), vout: 2 },
        value_sat: 200_000,
        witness_script: script::to_local(&revocation, 144, &pk(&key(6))),
        kind: RevokedKind::ToLocal,
    }];
    let j_tx = justice::build(&revoked, p2wpkh(&key(7)), 1_000).unwrap();
    let j_tx =
        justice::sign_all(&j_tx, &revoked, &keys::revocation_privkey(&key(5), &secret).unwrap())
            .unwrap();
    let j = json_of(&paychan(&["tx", "decode", &serialize_hex(&j_tx)]));
    assert_eq!(j["bolt3"]["kind"], "bolt3-justice");
    assert_eq!(j["bolt3"]["inputs"][0]["takes"], "to_local");
    assert_eq!(j["bolt3"]["inputs"][0]["revoked"], format!("{}:2", revoked[0].outpoint.txid));
}
