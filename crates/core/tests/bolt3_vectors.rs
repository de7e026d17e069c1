//! BOLT 3's own test vectors (Appendices C, D, E and F), read from the copy of the
//! specification in `testdata/bolt3/03-transactions.md` (see its README for the source).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use paychan_core::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use paychan_core::bitcoin::hashes::{sha256, Hash};
use paychan_core::bitcoin::hex::FromHex;
use paychan_core::bitcoin::secp256k1::{ecdsa::Signature, PublicKey, SecretKey};
use paychan_core::bitcoin::{OutPoint, Transaction, Txid};
use paychan_core::bolt3::commitment::{self, CommitmentParams, CommitmentState};
use paychan_core::bolt3::{
    htlc, keys, sign, Basepoints, ChannelType, CommitmentKeys, CommitmentSecrets, Htlc,
};
use paychan_core::{sig, Error};

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/bolt3/03-transactions.md");
    std::fs::read_to_string(path).expect("the BOLT 3 copy is in testdata/bolt3")
}

/// The text of one appendix ("# Appendix C: ..." up to the next top-level heading).
fn appendix(letter: char) -> String {
    let text = spec();
    let start = text.find(&format!("# Appendix {letter}:")).expect("appendix present");
    let rest = &text[start + 1..];
    let end = rest.find("\n# Appendix").map_or(rest.len(), |e| e + 1);
    text[start..start + end].to_string()
}

fn bytes(hex: &str) -> Vec<u8> {
    let hex = hex.trim().trim_start_matches("0x");
    Vec::<u8>::from_hex(hex).unwrap_or_else(|e| panic!("hex {hex}: {e}"))
}

fn b32(hex: &str) -> [u8; 32] {
    bytes(hex).try_into().expect("32 bytes")
}

fn pk(hex: &str) -> PublicKey {
    PublicKey::from_slice(&bytes(hex)).expect("public key")
}

/// A private key as BOLT 3 prints it: 32 bytes, then 01 (compressed).
fn sk(hex: &str) -> SecretKey {
    let b = bytes(hex);
    SecretKey::from_slice(&b[..32]).expect("private key")
}

fn der(hex: &str) -> Signature {
    Signature::from_der(&bytes(hex)).expect("DER signature")
}

// ---------------------------------------------------------------------------------------------
// Appendix C and F: commitment and HTLC transactions
// ---------------------------------------------------------------------------------------------

/// Appendix C's common parameters: every `key: value` line before the first test, with the
/// `INTERNAL:` values of the HTML comment (the secrets the signatures were made with).
fn c_params() -> BTreeMap<String, String> {
    let text = appendix('C');
    let head = &text[..text.find("name:").expect("tests")];
    head.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("INTERNAL: ");
            let (k, v) = l.split_once(": ")?;
            (!k.starts_with('#') && !k.contains(' ') || k.starts_with("htlc "))
                .then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

struct World {
    params: BTreeMap<String, String>,
    local: Basepoints,
    remote: Basepoints,
    keys: CommitmentKeys,
    local_funding: SecretKey,
    remote_funding: SecretKey,
    local_htlc: SecretKey,
    remote_htlc: SecretKey,
}

impl World {
    fn new() -> Self {
        let p = c_params();
        let g = |k: &str| p.get(k).unwrap_or_else(|| panic!("parameter {k}")).clone();
        // Unused basepoints (the broadcaster's revocation, the countersignatory's delayed) do not
        // appear in a commitment seen from the broadcaster; any key will do.
        let unused = pk(&g("remote_revocation_basepoint"));
        let local = Basepoints {
            funding: pk(&g("local_funding_pubkey")),
            revocation: unused,
            payment: pk(&g("local_payment_basepoint")),
            delayed_payment: pk(&g("local_delayed_payment_basepoint")),
            htlc: pk(&g("local_htlc_basepoint")),
        };
        let remote = Basepoints {
            funding: pk(&g("remote_funding_pubkey")),
            revocation: pk(&g("remote_revocation_basepoint")),
            payment: pk(&g("remote_payment_basepoint")),
            delayed_payment: unused,
            htlc: pk(&g("remote_htlc_basepoint")),
        };
        let point = pk(&g("local_per_commitment_point"));
        let keys = CommitmentKeys::derive(&point, &local, &remote).expect("keys");
        World {
            local,
            remote,
            keys,
            local_funding: sk(&g("local_funding_privkey")),
            remote_funding: sk(&g("remote_funding_privkey")),
            local_htlc: sk(&g("local_privkey")),
            remote_htlc: sk(&g("remote_privkey")),
            params: p,
        }
    }

    fn get(&self, k: &str) -> &str {
        self.params.get(k).unwrap_or_else(|| panic!("parameter {k}"))
    }

    fn commitment_params(
        &self,
        channel_type: ChannelType,
        dust_limit_sat: u64,
    ) -> CommitmentParams {
        let txid: Txid = self.get("funding_tx_id").parse().expect("txid");
        CommitmentParams {
            channel_type,
            funding_outpoint: OutPoint {
                txid,
                vout: self.get("funding_output_index").parse().expect("vout"),
            },
            funding_sat: self.get("funding_amount_satoshi").parse().expect("amount"),
            broadcaster: self.local,
            countersignatory: self.remote,
            broadcaster_is_opener: true,
            to_self_delay: self.get("local_delay").parse().expect("delay"),
            dust_limit_sat,
        }
    }

    /// HTLC `n` of the common parameters, `offered` as seen from local.
    fn htlc(&self, n: usize) -> Htlc {
        let g = |f: &str| self.get(&format!("htlc {n} {f}")).to_string();
        Htlc {
            offered: g("direction") == "local->remote",
            amount_msat: g("amount_msat").parse().expect("amount"),
            payment_hash: sha256::Hash::hash(&bytes(&g("payment_preimage"))).to_byte_array(),
            cltv_expiry: g("expiry").parse().expect("expiry"),
        }
    }

    fn preimage(&self, n: usize) -> [u8; 32] {
        b32(self.get(&format!("htlc {n} payment_preimage")))
    }

    /// The HTLC set of a test: none for the first, HTLCs 1, 5 and 6 for the "same amount and
    /// preimage" test, 0–4 for the others (Appendix C's preamble).
    fn htlc_set(&self, name: &str, use_htlcs: bool) -> Vec<usize> {
        if !use_htlcs {
            vec![]
        } else if name.contains("same amount and preimage") {
            vec![1, 5, 6]
        } else {
            (0..5).collect()
        }
    }
}

#[test]
fn appendix_c_keys_are_derived_as_listed() {
    let w = World::new();
    assert_eq!(w.keys.broadcaster_htlc, pk(w.get("local_htlcpubkey")));
    assert_eq!(w.keys.countersignatory_htlc, pk(w.get("remote_htlcpubkey")));
    assert_eq!(w.keys.broadcaster_delayed, pk(w.get("local_delayedpubkey")));
    assert_eq!(w.keys.revocation, pk(w.get("local_revocation_pubkey")));
    let secp = sig::secp();
    assert_eq!(PublicKey::from_secret_key(secp, &w.local_htlc), w.keys.broadcaster_htlc);
    assert_eq!(PublicKey::from_secret_key(secp, &w.remote_htlc), w.keys.countersignatory_htlc);
    assert_eq!(PublicKey::from_secret_key(secp, &w.local_funding), w.local.funding);
    assert_eq!(PublicKey::from_secret_key(secp, &w.remote_funding), w.remote.funding);
    // The per-commitment secret gives the point; the delayed key's private key is as listed.
    let secret = b32(&w.get("x_local_per_commitment_secret")[..64]);
    assert_eq!(keys::per_commitment_point(&secret).expect("point"), w.keys.per_commitment_point);
    let delayed = keys::derive_privkey(
        &sk(w.get("local_delayed_payment_basepoint_secret")),
        &w.keys.per_commitment_point,
    )
    .expect("derive");
    assert_eq!(delayed, sk(w.get("local_delayed_privkey")));
    // "obscured commitment number = 0x2bb038521914 ^ 42"
    let params = w.commitment_params(ChannelType::StaticRemoteKey, 546);
    assert_eq!(params.obscuring_factor(), 0x2bb0_3852_1914);
    assert_eq!(
        params.funding_script().to_hex_string(),
        "5221023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb21030e9f7b623d2ccc7c9bd44d66d5ce21ce504c0acf6385a132cec6d3c39fa711c152ae"
    );
}

/// One HTLC transaction of a vector: which HTLC, the remote signature, the local signature
/// (when listed) and the whole transaction.
struct HtlcCase {
    htlc: usize,
    remote_sig: Signature,
    local_sig: Option<Signature>,
    tx: String,
}

struct Case {
    name: String,
    channel_type: ChannelType,
    to_local_msat: u64,
    to_remote_msat: u64,
    feerate: u32,
    dust_limit_sat: u64,
    use_htlcs: bool,
    remote_sig: Signature,
    local_sig: Option<Signature>,
    tx: String,
    num_htlcs: Option<usize>,
    base_fee: Option<u64>,
    actual_fee: Option<u64>,
    /// `# ... wscript <hex>` comments: the witness scripts of the outputs.
    wscripts: Vec<String>,
    htlcs: Vec<HtlcCase>,
}

fn appendix_c_cases() -> Vec<Case> {
    let text = appendix('C');
    let dust: u64 = c_params()["local_dust_limit_satoshi"].parse().expect("dust");
    let mut cases = Vec::new();
    for block in text.split("\n    name: ").skip(1) {
        let mut lines = block.lines();
        let name = lines.next().expect("name").trim().to_string();
        let mut c = Case {
            name,
            channel_type: ChannelType::StaticRemoteKey,
            to_local_msat: 0,
            to_remote_msat: 0,
            feerate: 0,
            dust_limit_sat: dust,
            use_htlcs: true,
            remote_sig: der("3006020101020101"),
            local_sig: None,
            tx: String::new(),
            num_htlcs: None,
            base_fee: None,
            actual_fee: None,
            wscripts: vec![],
            htlcs: vec![],
        };
        let mut pending_remote: Option<Signature> = None;
        let mut pending_local: Option<Signature> = None;
        for l in lines {
            let l = l.trim();
            let after = |p: &str| l.strip_prefix(p).map(str::trim);
            if let Some(v) = after("to_local_msat:") {
                c.to_local_msat = v.parse().expect("msat");
            } else if let Some(v) = after("to_remote_msat:") {
                c.to_remote_msat = v.parse().expect("msat");
            } else if let Some(v) = after("local_feerate_per_kw:") {
                c.feerate = v.parse().expect("feerate");
            } else if let Some(v) = after("# base commitment transaction fee =") {
                c.base_fee = Some(v.parse().expect("fee"));
            } else if let Some(v) = after("# actual commitment transaction fee =") {
                c.actual_fee = Some(v.parse().expect("fee"));
            } else if let Some(v) = after("remote_signature =") {
                c.remote_sig = der(v);
            } else if let Some(v) = after("# local_signature =") {
                c.local_sig = Some(der(v));
            } else if let Some(v) = after("output commit_tx:") {
                c.tx = v.to_string();
            } else if let Some(v) = after("num_htlcs:") {
                c.num_htlcs = Some(v.parse().expect("count"));
            } else if let Some(v) = after("remote_htlc_signature =") {
                pending_remote = Some(der(v));
            } else if let Some(v) = after("# local_htlc_signature =") {
                pending_local = Some(der(v));
            } else if l.starts_with("htlc_success_tx (htlc #")
                || l.starts_with("htlc_timeout_tx (htlc #")
            {
                let (head, hex) = l.split_once("): ").expect("htlc tx");
                let n = head.rsplit('#').next().expect("number").parse().expect("htlc number");
                c.htlcs.push(HtlcCase {
                    htlc: n,
                    remote_sig: pending_remote.take().expect("remote htlc signature first"),
                    local_sig: pending_local.take(),
                    tx: hex.trim().to_string(),
                });
            } else if l.starts_with('#') && l.contains(" wscript ") {
                c.wscripts.push(l.rsplit(' ').next().expect("script").to_string());
            } else if l.starts_with("# Appendix") || l.starts_with("<!--") {
                break;
            }
        }
        c.use_htlcs = !c.name.contains("no HTLCs");
        cases.push(c);
    }
    cases
}

fn appendix_f_cases() -> Vec<Case> {
    let text = appendix('F');
    let start = text.find("```yaml").expect("yaml block") + "```yaml".len();
    let end = start + text[start..].find("```").expect("end of block");
    let json: serde_json::Value =
        serde_json::from_str(&text[start..end]).expect("appendix F parses as JSON");
    json.as_array()
        .expect("array")
        .iter()
        .map(|v| {
            let name = v["Name"].as_str().expect("name").to_string();
            let use_htlcs = v["UseTestHtlcs"].as_bool().expect("bool");
            let descs = v["HtlcDescs"].as_array().expect("descs");
            Case {
                channel_type: ChannelType::Anchors,
                to_local_msat: v["LocalBalance"].as_u64().expect("balance"),
                to_remote_msat: v["RemoteBalance"].as_u64().expect("balance"),
                feerate: u32::try_from(v["FeePerKw"].as_u64().expect("feerate")).expect("u32"),
                dust_limit_sat: v["DustLimitSatoshis"].as_u64().expect("dust"),
                use_htlcs,
                remote_sig: der(v["RemoteSigHex"].as_str().expect("sig")),
                local_sig: None,
                tx: v["ExpectedCommitmentTxHex"].as_str().expect("tx").to_string(),
                num_htlcs: Some(descs.len()),
                base_fee: None,
                actual_fee: None,
                wscripts: vec![],
                // The HTLC of each description is read from its transaction below.
                htlcs: descs
                    .iter()
                    .map(|d| HtlcCase {
                        htlc: usize::MAX,
                        remote_sig: der(d["RemoteSigHex"].as_str().expect("sig")),
                        local_sig: None,
                        tx: d["ResolutionTxHex"].as_str().expect("tx").to_string(),
                    })
                    .collect(),
                name,
            }
        })
        .collect()
}

/// Builds, signs and checks one vector; returns how many HTLC transactions it checked.
fn check_case(w: &World, c: &Case) -> usize {
    let params = w.commitment_params(c.channel_type, c.dust_limit_sat);
    let set = w.htlc_set(&c.name, c.use_htlcs);
    let htlcs: Vec<Htlc> = set.iter().map(|n| w.htlc(*n)).collect();
    let state = CommitmentState {
        commitment_number: w.get("commitment_number").parse().expect("number"),
        to_local_msat: c.to_local_msat,
        to_remote_msat: c.to_remote_msat,
        feerate_per_kw: c.feerate,
        htlcs: htlcs.clone(),
    };
    let built =
        commitment::build(&params, &state, &w.keys).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    if let Some(fee) = c.base_fee {
        assert_eq!(built.base_fee_sat, fee, "{}: base fee", c.name);
    }
    if let Some(fee) = c.actual_fee {
        assert_eq!(built.fee_sat, fee, "{}: actual fee", c.name);
    }
    for ws in &c.wscripts {
        assert!(
            built.outputs.iter().any(|r| match r {
                paychan_core::bolt3::OutputRole::ToLocal(s)
                | paychan_core::bolt3::OutputRole::Htlc(_, s) => s.to_hex_string() == *ws,
                _ => false,
            }),
            "{}: no output with witness script {ws}",
            c.name
        );
    }
    // Both signatures as the vector lists them, and the remote one verifies.
    let remote = params.sign_commitment(&built.tx, &w.remote_funding).expect("sign");
    assert_eq!(remote, c.remote_sig, "{}: remote signature", c.name);
    // As BOLT 2 carries it: 64 bytes, read back; its high-S twin is refused.
    assert_eq!(sign::from_wire(&sign::to_wire(&remote)), Ok(remote));
    let high = sign::to_wire(&sig::malleate_s(&remote));
    assert_eq!(sign::from_wire(&high), Err(Error::SignatureHighS));
    params.verify_countersignatory(&built.tx, &c.remote_sig).expect("remote signature verifies");
    let local = params.sign_commitment(&built.tx, &w.local_funding).expect("sign");
    if let Some(expected) = &c.local_sig {
        assert_eq!(local, *expected, "{}: local signature", c.name);
    }
    let signed = params.complete_funding_spend(&built.tx, &local, &remote);
    assert_eq!(serialize_hex(&signed), c.tx, "{}: commitment transaction", c.name);

    // HTLC transactions, in output order, with the signatures as listed.
    let txs = htlc::build_all(&params, &htlcs, c.feerate, &built);
    if let Some(n) = c.num_htlcs {
        assert_eq!(txs.len(), n, "{}: number of HTLC transactions", c.name);
    }
    assert_eq!(txs.len(), c.htlcs.len(), "{}: HTLC transactions listed", c.name);
    for (t, expected) in txs.iter().zip(&c.htlcs) {
        let n = set[t.htlc];
        if expected.htlc != usize::MAX {
            assert_eq!(n, expected.htlc, "{}: HTLC order", c.name);
        }
        let remote = t.sign_remote(c.channel_type, &w.remote_htlc).expect("sign");
        assert_eq!(remote, expected.remote_sig, "{}: remote HTLC signature for htlc #{n}", c.name);
        t.verify_remote(c.channel_type, &built.keys, &remote).expect("verifies");
        let local = t.sign_local(&w.local_htlc).expect("sign");
        if let Some(l) = &expected.local_sig {
            assert_eq!(local, *l, "{}: local HTLC signature for htlc #{n}", c.name);
        }
        let preimage = (!t.timeout).then(|| w.preimage(n));
        let done =
            t.complete(c.channel_type, &remote, &local, preimage.as_ref()).expect("complete");
        assert_eq!(serialize_hex(&done), expected.tx, "{}: HTLC transaction for htlc #{n}", c.name);
        // And the expected transaction decodes to the same thing.
        let parsed: Transaction = deserialize_hex(&expected.tx).expect("decodes");
        assert_eq!(parsed, done);
    }
    txs.len()
}

#[test]
fn appendix_c_every_commitment_and_htlc_transaction() {
    let w = World::new();
    let cases = appendix_c_cases();
    assert_eq!(cases.len(), 16, "Appendix C has 16 vectors");
    let htlc_txs: usize = cases.iter().map(|c| check_case(&w, c)).sum();
    assert_eq!(htlc_txs, cases.iter().map(|c| c.htlcs.len()).sum::<usize>());
    assert_eq!(htlc_txs, 33, "Appendix C lists 33 HTLC transactions");
}

#[test]
fn appendix_f_every_anchor_commitment_and_htlc_transaction() {
    let w = World::new();
    let cases = appendix_f_cases();
    assert_eq!(cases.len(), 9, "Appendix F has 9 vectors");
    let htlc_txs: usize = cases.iter().map(|c| check_case(&w, c)).sum();
    assert_eq!(htlc_txs, 15, "Appendix F lists 15 HTLC transactions");
}

// ---------------------------------------------------------------------------------------------
// Appendix D: per-commitment secrets
// ---------------------------------------------------------------------------------------------

/// Appendix D's named blocks: name → lines of `key: value`.
fn appendix_d_blocks(section: &str) -> Vec<(String, Vec<(String, String)>)> {
    let text = appendix('D');
    let start = text.find(section).expect("section");
    let body = &text[start..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |e| e + 3)];
    body.split("name: ")
        .skip(1)
        .map(|b| {
            let mut lines = b.lines();
            let name = lines.next().expect("name").trim().to_string();
            let kv = lines
                .filter_map(|l| l.trim().split_once(": "))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect();
            (name, kv)
        })
        .collect()
}

fn parse_index(v: &str) -> u64 {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("hex index"),
        None => v.parse().expect("index"),
    }
}

#[test]
fn appendix_d_generation() {
    let blocks = appendix_d_blocks("## Generation Tests");
    assert_eq!(blocks.len(), 5);
    for (name, kv) in blocks {
        let g = |k: &str| kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).expect(k);
        let seed = b32(&g("seed"));
        let got = keys::commitment_secret(&seed, parse_index(&g("I")));
        assert_eq!(got, b32(&g("output")), "{name}");
    }
}

#[test]
fn appendix_d_storage_accepts_the_correct_and_refuses_every_incorrect_secret() {
    let blocks = appendix_d_blocks("## Storage Tests");
    assert_eq!(blocks.len(), 9, "Appendix D has 9 storage tests");
    let mut refused = 0;
    for (name, kv) in blocks {
        let mut store = CommitmentSecrets::new();
        let mut index = None;
        let mut secret = None;
        let mut inserted = Vec::new();
        for (k, v) in kv {
            match k.as_str() {
                "I" => index = Some(parse_index(&v)),
                "secret" => secret = Some(b32(&v)),
                "output" => {
                    let i = index.take().expect("I before output");
                    let s = secret.take().expect("secret before output");
                    let before = store.clone();
                    let r = store.insert(i, s);
                    match v.as_str() {
                        "OK" => {
                            r.unwrap_or_else(|e| panic!("{name}: index {i}: {e}"));
                            inserted.push((i, s));
                        }
                        "ERROR" => {
                            assert!(
                                matches!(r, Err(Error::SecretInconsistent { index, .. }) if index == i),
                                "{name}: index {i} accepted: {r:?}"
                            );
                            assert_eq!(store, before, "{name}: a refused secret changes nothing");
                            refused += 1;
                        }
                        other => panic!("{name}: output {other}"),
                    }
                }
                _ => {}
            }
        }
        // Whatever was accepted can be read back, and a store rebuilt from its slots agrees.
        for (i, s) in &inserted {
            assert_eq!(store.get(*i), Some(*s), "{name}: secret {i} read back");
        }
        let slots: Vec<_> = store.slots().collect();
        assert_eq!(CommitmentSecrets::from_slots(&slots).expect("slots"), store, "{name}");
    }
    assert_eq!(refused, 8, "each of the 8 incorrect secrets is refused");
}

// ---------------------------------------------------------------------------------------------
// Appendix E: key derivation
// ---------------------------------------------------------------------------------------------

#[test]
fn appendix_e_key_derivation() {
    let text = appendix('E');
    let get = |k: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{k}: ")))
            .next()
            .unwrap_or_else(|| panic!("{k}"))
            .to_string()
    };
    let base_secret = SecretKey::from_slice(&bytes(&get("base_secret"))).expect("secret");
    let commitment_secret = b32(&get("per_commitment_secret"));
    let base_point = pk(&get("base_point"));
    let point = pk(&get("per_commitment_point"));
    assert_eq!(PublicKey::from_secret_key(sig::secp(), &base_secret), base_point);
    assert_eq!(keys::per_commitment_point(&commitment_secret).expect("point"), point);

    assert_eq!(keys::derive_pubkey(&base_point, &point).expect("derive"), pk(&get("localpubkey")));
    assert_eq!(
        keys::derive_privkey(&base_secret, &point).expect("derive").secret_bytes(),
        b32(&get("localprivkey"))
    );
    assert_eq!(
        keys::revocation_pubkey(&base_point, &point).expect("derive"),
        pk(&get("revocationpubkey"))
    );
    assert_eq!(
        keys::revocation_privkey(&base_secret, &commitment_secret).expect("derive").secret_bytes(),
        b32(&get("revocationprivkey"))
    );
}
