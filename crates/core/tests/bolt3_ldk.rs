//! Differential tests of `paychan_core::bolt3` against LDK's `lightning` crate (the oracle):
//! random keys, balances, feerates, `to_self_delay`, dust limits, HTLC sets around the dust
//! limits and commitment numbers must give byte-identical commitment, HTLC and closing
//! transactions, identical keys and secrets, and signatures Bitcoin Core's interpreter accepts.
//!
//! 10,000 cases in a release build (what `cargo test --workspace --release` runs), 300 in a
//! debug build; `PAYCHAN_LDK_CASES=N` runs N (e.g. 1000000 by hand).
//!
//! LDK keeps fee and trimming in its channel state machine (crate-private), so this test applies
//! BOLT 3's rule with LDK's public HTLC transaction weights to decide what LDK is given; the
//! fee and trimming themselves are pinned by the BOLT 3 vectors (`bolt3_vectors.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lightning::chain::transaction::OutPoint as LdkOutPoint;
use lightning::ln::chan_utils::{
    self as ldk, ChannelPublicKeys, ChannelTransactionParameters,
    CounterpartyChannelTransactionParameters, CounterpartyCommitmentSecrets,
    HTLCOutputInCommitment,
};
use lightning::ln::channel_keys::{DelayedPaymentBasepoint, HtlcBasepoint, RevocationBasepoint};
use lightning::types::features::ChannelTypeFeatures;
use lightning::types::payment::PaymentHash;
use paychan_core::bitcoin::hashes::{sha256, Hash};
use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut, Txid, WPubkeyHash};
use paychan_core::bolt3::commitment::{self, CommitmentParams, CommitmentState};
use paychan_core::bolt3::justice::{self, RevokedKind, RevokedOutput};
use paychan_core::bolt3::recognise::{recognise, Bolt3Tx};
use paychan_core::bolt3::{
    closing, htlc, keys, script, BaseSecrets, ChannelType, CommitmentKeys, CommitmentSecrets, Htlc,
    OutputRole,
};
use paychan_core::{sig, verify, Error};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PAYCHAN_LDK_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 300 } else { 10_000 })
}

/// A side's public keys as LDK takes them.
fn ldk_pubkeys(side: &Side) -> ChannelPublicKeys {
    let b = side.basepoints();
    ChannelPublicKeys {
        funding_pubkey: b.funding,
        revocation_basepoint: RevocationBasepoint(b.revocation),
        payment_point: b.payment,
        delayed_payment_basepoint: DelayedPaymentBasepoint(b.delayed_payment),
        htlc_basepoint: HtlcBasepoint(b.htlc),
    }
}

type Side = BaseSecrets;

#[derive(Debug, Clone)]
struct Case {
    anchors: bool,
    broadcaster: Side,
    countersignatory: Side,
    broadcaster_is_opener: bool,
    seed: [u8; 32],
    commitment_number: u64,
    funding_txid: [u8; 32],
    funding_vout: u16,
    funding_sat: u64,
    to_self_delay: u16,
    dust_limit_sat: u64,
    feerate_per_kw: u32,
    /// (offered, amount_msat, preimage, cltv_expiry)
    htlcs: Vec<(bool, u64, [u8; 32], u32)>,
    /// Share of the non-HTLC balance that is the broadcaster's, in millionths.
    local_share: u64,
    closing_fee_sat: u64,
    closing_scripts: (u8, u8),
}

fn secret() -> impl Strategy<Value = SecretKey> {
    any::<[u8; 32]>().prop_filter_map("valid key", |b| SecretKey::from_slice(&b).ok())
}

fn side() -> impl Strategy<Value = Side> {
    (secret(), secret(), secret(), secret(), secret()).prop_map(
        |(funding, revocation, payment, delayed, htlc)| Side {
            funding,
            revocation,
            payment,
            delayed_payment: delayed,
            htlc,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let numbers = prop_oneof![Just(0u64), Just(keys::FIRST_INDEX), 0..=keys::FIRST_INDEX];
    let feerates = prop_oneof![Just(253u32), 0u32..=300, 253u32..=50_000, 50_000u32..=2_000_000];
    let delays = prop_oneof![1u16..=16, 17u16..=2016, Just(u16::MAX)];
    let dust = prop_oneof![Just(354u64), 354u64..=600, 600u64..=20_000];
    // HTLC amounts: anywhere, or within a few satoshis of a trim threshold (filled in below).
    let htlc = (
        any::<bool>(),
        prop_oneof![1_000u64..=50_000_000, 0u64..=2_000_000],
        0u8..4,        // one of four preimages, so that outputs collide
        500u32..=504,  // expiries that collide
        -3i64..=3,     // offset from the trim threshold
        any::<bool>(), // near the threshold?
    );
    (
        (any::<bool>(), side(), side(), any::<bool>(), any::<[u8; 32]>(), numbers),
        (
            any::<[u8; 32]>(),
            any::<u16>(),
            prop_oneof![1_000_000u64..=16_777_215, 16_777_216u64..=500_000_000],
        ),
        (delays, dust, feerates, prop::collection::vec(htlc, 0..=12), 0u64..=1_000_000),
        (0u64..=20_000, (0u8..4, 0u8..4)),
    )
        .prop_map(
            |(
                (anchors, broadcaster, countersignatory, opener, seed, number),
                (txid, vout, funding_sat),
                (delay, dust, feerate, raw_htlcs, share),
                (closing_fee_sat, closing_scripts),
            )| {
                let ct = if anchors { ChannelType::Anchors } else { ChannelType::StaticRemoteKey };
                let htlcs = raw_htlcs
                    .into_iter()
                    .map(|(offered, amount, preimage, cltv, offset, near)| {
                        let amount_msat = if near {
                            let threshold =
                                dust + commitment::htlc_tx_fee_sat(ct, feerate, offered);
                            (threshold as i64 + offset).max(0) as u64 * 1000 + amount % 1000
                        } else {
                            amount
                        };
                        (offered, amount_msat, [preimage; 32], cltv)
                    })
                    .collect();
                Case {
                    anchors,
                    broadcaster,
                    countersignatory,
                    broadcaster_is_opener: opener,
                    seed,
                    commitment_number: number,
                    funding_txid: txid,
                    funding_vout: vout,
                    funding_sat,
                    to_self_delay: delay,
                    dust_limit_sat: dust,
                    feerate_per_kw: feerate,
                    htlcs,
                    local_share: share,
                    closing_fee_sat,
                    closing_scripts,
                }
            },
        )
}

fn features(anchors: bool) -> ChannelTypeFeatures {
    if anchors {
        ChannelTypeFeatures::anchors_zero_htlc_fee_and_dependencies()
    } else {
        ChannelTypeFeatures::only_static_remote_key()
    }
}

/// A shutdown script of one of four kinds.
fn shutdown_script(kind: u8, seed: u8) -> ScriptBuf {
    let b = [seed; 32];
    match kind {
        0 => ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([seed; 20])),
        1 => ScriptBuf::new_p2wsh(&paychan_core::bitcoin::WScriptHash::from_byte_array(b)),
        2 => ScriptBuf::new_p2pkh(&paychan_core::bitcoin::PubkeyHash::from_byte_array([seed; 20])),
        _ => ScriptBuf::new_p2sh(&paychan_core::bitcoin::ScriptHash::from_byte_array([seed; 20])),
    }
}

/// Runs Core's interpreter (consensus and standardness) on input `index` of `tx`.
fn interpreter_accepts(tx: &Transaction, index: usize, spent: &TxOut, what: &str) {
    let v = verify::verify_input(tx, index, spent, None);
    assert!(v.valid && v.standard, "{what}: {:?}", v.error);
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let secp = sig::secp();
    let ct = if c.anchors { ChannelType::Anchors } else { ChannelType::StaticRemoteKey };
    let (bb, cb) = (c.broadcaster.basepoints(), c.countersignatory.basepoints());

    // ---- secrets and keys ----
    let index = keys::index_of(c.commitment_number).expect("index");
    let secret = keys::commitment_secret(&c.seed, index);
    prop_assert_eq!(secret, ldk::build_commitment_secret(&c.seed, index));
    let point = keys::per_commitment_point(&secret).expect("point");
    let secret_key = SecretKey::from_slice(&secret).expect("secret");
    let k = CommitmentKeys::derive(&point, &bb, &cb).expect("keys");
    let ldk_keys = ldk::TxCreationKeys::from_channel_static_keys(
        &point,
        &ldk_pubkeys(&c.broadcaster),
        &ldk_pubkeys(&c.countersignatory),
        secp,
    );
    prop_assert_eq!(k.revocation, ldk_keys.revocation_key.to_public_key());
    prop_assert_eq!(k.broadcaster_htlc, ldk_keys.broadcaster_htlc_key.to_public_key());
    prop_assert_eq!(k.countersignatory_htlc, ldk_keys.countersignatory_htlc_key.to_public_key());
    prop_assert_eq!(
        k.broadcaster_delayed,
        ldk_keys.broadcaster_delayed_payment_key.to_public_key()
    );
    let revocation_secret =
        keys::revocation_privkey(&c.countersignatory.revocation, &secret).expect("revocation key");
    prop_assert_eq!(
        revocation_secret,
        ldk::derive_private_revocation_key(secp, &secret_key, &c.countersignatory.revocation)
    );
    prop_assert_eq!(PublicKey::from_secret_key(secp, &revocation_secret), k.revocation);
    let broadcaster_htlc_secret =
        keys::derive_privkey(&c.broadcaster.htlc, &point).expect("derive");
    prop_assert_eq!(
        broadcaster_htlc_secret,
        ldk::derive_private_key(secp, &point, &c.broadcaster.htlc)
    );
    let countersignatory_htlc_secret =
        keys::derive_privkey(&c.countersignatory.htlc, &point).expect("derive");

    // ---- the commitment ----
    let htlcs: Vec<Htlc> = c
        .htlcs
        .iter()
        .map(|(offered, amount_msat, preimage, cltv)| Htlc {
            offered: *offered,
            amount_msat: *amount_msat,
            payment_hash: sha256::Hash::hash(preimage).to_byte_array(),
            cltv_expiry: *cltv,
        })
        .collect();
    let htlc_msat: u64 = htlcs.iter().map(|h| h.amount_msat).sum();
    prop_assume!(htlc_msat <= c.funding_sat * 1000);
    let balance = c.funding_sat * 1000 - htlc_msat;
    let to_local_msat = (u128::from(balance) * u128::from(c.local_share) / 1_000_000) as u64;
    let to_remote_msat = balance - to_local_msat;
    let funding_outpoint =
        OutPoint { txid: Txid::from_byte_array(c.funding_txid), vout: u32::from(c.funding_vout) };
    let params = CommitmentParams {
        channel_type: ct,
        funding_outpoint,
        funding_sat: c.funding_sat,
        broadcaster: bb,
        countersignatory: cb,
        broadcaster_is_opener: c.broadcaster_is_opener,
        to_self_delay: c.to_self_delay,
        dust_limit_sat: c.dust_limit_sat,
    };
    let state = CommitmentState {
        commitment_number: c.commitment_number,
        to_local_msat,
        to_remote_msat,
        feerate_per_kw: c.feerate_per_kw,
        htlcs: htlcs.clone(),
    };

    // BOLT 3's fee and trimming, with LDK's public HTLC transaction weights.
    let f = features(c.anchors);
    let trimmed = |h: &Htlc| {
        let weight = if h.offered {
            ldk::htlc_timeout_tx_weight(&f)
        } else {
            ldk::htlc_success_tx_weight(&f)
        };
        let fee = if c.anchors { 0 } else { u64::from(c.feerate_per_kw) * weight / 1000 };
        h.amount_msat / 1000 < c.dust_limit_sat + fee
    };
    let nondust: Vec<&Htlc> = htlcs.iter().filter(|h| !trimmed(h)).collect();
    let base_weight = if c.anchors { 1124 } else { 724 };
    let fee = u64::from(c.feerate_per_kw)
        * (base_weight + 172 /* BOLT 3: weight per HTLC output */ * nondust.len() as u64)
        / 1000;
    let anchors_sat = if c.anchors { 660 } else { 0 };
    let opener_msat = if c.broadcaster_is_opener { to_local_msat } else { to_remote_msat };
    let opener_after_fee = (opener_msat / 1000).saturating_sub(fee);

    let built = commitment::build(&params, &state, &k);
    if opener_after_fee < anchors_sat {
        // The opener cannot pay for the anchors: no valid channel reaches this state, and the
        // builder says so rather than create value.
        if let Err(e) = &built {
            prop_assert!(matches!(e, Error::Bolt3(_)), "{e}");
            return Err(TestCaseError::reject("opener cannot pay the anchors"));
        }
    }
    let built = built.expect("commitment builds");
    let opener_sat = opener_after_fee.saturating_sub(anchors_sat);
    let (mut to_b, mut to_c) = if c.broadcaster_is_opener {
        (opener_sat, to_remote_msat / 1000)
    } else {
        (to_local_msat / 1000, opener_sat)
    };
    if to_b < c.dust_limit_sat {
        to_b = 0;
    }
    if to_c < c.dust_limit_sat {
        to_c = 0;
    }
    let ldk_htlcs: Vec<HTLCOutputInCommitment> = nondust
        .iter()
        .map(|h| HTLCOutputInCommitment {
            offered: h.offered,
            amount_msat: h.amount_msat,
            cltv_expiry: h.cltv_expiry,
            payment_hash: PaymentHash(h.payment_hash),
            transaction_output_index: None,
        })
        .collect();
    let channel = ChannelTransactionParameters {
        holder_pubkeys: ldk_pubkeys(&c.broadcaster),
        holder_selected_contest_delay: 144,
        is_outbound_from_holder: c.broadcaster_is_opener,
        counterparty_parameters: Some(CounterpartyChannelTransactionParameters {
            pubkeys: ldk_pubkeys(&c.countersignatory),
            selected_contest_delay: c.to_self_delay,
        }),
        funding_outpoint: Some(LdkOutPoint { txid: funding_outpoint.txid, index: c.funding_vout }),
        splice_parent_funding_txid: None,
        channel_type_features: f.clone(),
        channel_value_satoshis: c.funding_sat,
    };
    let directed = channel.as_holder_broadcastable();
    let ldk_commitment = ldk::CommitmentTransaction::new(
        keys::FIRST_INDEX - c.commitment_number,
        &point,
        to_b,
        to_c,
        c.feerate_per_kw,
        ldk_htlcs,
        &directed,
        secp,
    );
    let trusted = ldk_commitment.trust();
    let ldk_tx = &trusted.built_transaction().transaction;
    prop_assert_eq!(&built.tx, ldk_tx, "commitment transactions differ");

    // The countersignatory's signature, byte for byte (both RFC 6979), and Core accepts the
    // commitment with both signatures.
    let funding_script = params.funding_script();
    prop_assert_eq!(&funding_script, &ldk::make_funding_redeemscript(&bb.funding, &cb.funding));
    let remote_sig = params.sign_commitment(&built.tx, &c.countersignatory.funding).expect("sign");
    let ldk_sig = trusted.built_transaction().sign_counterparty_commitment(
        &c.countersignatory.funding,
        &funding_script,
        c.funding_sat,
        secp,
    );
    prop_assert_eq!(remote_sig, ldk_sig);
    params.verify_countersignatory(&built.tx, &remote_sig).expect("verifies");
    let local_sig = params.sign_commitment(&built.tx, &c.broadcaster.funding).expect("sign");
    let signed = params.complete_funding_spend(&built.tx, &local_sig, &remote_sig);
    let funding_out =
        TxOut { value: Amount::from_sat(c.funding_sat), script_pubkey: funding_script.to_p2wsh() };
    interpreter_accepts(&signed, 0, &funding_out, "commitment");
    prop_assert!(
        matches!(recognise(&signed), Some(Bolt3Tx::Commitment { signed: true, .. })),
        "commitment recognised"
    );

    // ---- HTLC transactions: identical, in the same order, and Core accepts them ----
    let ours = htlc::build_all(&params, &htlcs, c.feerate_per_kw, &built);
    let theirs = ldk_commitment.nondust_htlcs();
    prop_assert_eq!(ours.len(), theirs.len());
    let commitment_txid = built.tx.compute_txid();
    for (o, t) in ours.iter().zip(theirs) {
        let h = &htlcs[o.htlc];
        prop_assert_eq!(
            (h.offered, h.amount_msat, h.cltv_expiry),
            (t.offered, t.amount_msat, t.cltv_expiry)
        );
        prop_assert_eq!(Some(o.tx.input[0].previous_output.vout), t.transaction_output_index);
        let ldk_htlc_tx = ldk::build_htlc_transaction(
            &commitment_txid,
            c.feerate_per_kw,
            c.to_self_delay,
            t,
            &f,
            &ldk_keys.broadcaster_delayed_payment_key,
            &ldk_keys.revocation_key,
        );
        prop_assert_eq!(&o.tx, &ldk_htlc_tx, "HTLC transactions differ");
        prop_assert_eq!(&o.witness_script, &ldk::get_htlc_redeemscript(t, &f, &ldk_keys));
        let remote = o.sign_remote(ct, &countersignatory_htlc_secret).expect("sign");
        o.verify_remote(ct, &k, &remote).expect("remote HTLC signature verifies");
        let local = o.sign_local(&broadcaster_htlc_secret).expect("sign");
        let preimage = c.htlcs[o.htlc].2;
        let done =
            o.complete(ct, &remote, &local, (!o.timeout).then_some(&preimage)).expect("complete");
        let spent = &built.tx.output[o.tx.input[0].previous_output.vout as usize];
        interpreter_accepts(&done, 0, spent, "HTLC transaction");
        let kind = recognise(&done).map(|k| k.kind());
        prop_assert_eq!(
            kind,
            Some(if o.timeout { "bolt3-htlc-timeout" } else { "bolt3-htlc-success" })
        );
    }

    // ---- justice: every revoked output in one transaction, Core accepts each input ----
    let mut revoked: Vec<RevokedOutput> = built
        .outputs
        .iter()
        .enumerate()
        .filter_map(|(vout, role)| {
            let (kind, ws) = match role {
                OutputRole::ToLocal(ws) => (RevokedKind::ToLocal, ws.clone()),
                OutputRole::Htlc(_, ws) => (RevokedKind::Htlc, ws.clone()),
                _ => return None,
            };
            Some(RevokedOutput {
                outpoint: OutPoint { txid: commitment_txid, vout: vout as u32 },
                value_sat: built.tx.output[vout].value.to_sat(),
                witness_script: ws,
                kind,
            })
        })
        .collect();
    // ...and the output of the first HTLC transaction, as if it had confirmed.
    if let Some(o) = ours.first() {
        revoked.push(RevokedOutput {
            outpoint: OutPoint { txid: o.tx.compute_txid(), vout: 0 },
            value_sat: o.tx.output[0].value.to_sat(),
            witness_script: script::to_local(
                &k.revocation,
                c.to_self_delay,
                &k.broadcaster_delayed,
            ),
            kind: RevokedKind::SecondStage,
        });
    }
    let destination = shutdown_script(0, 7);
    if let Ok(j) = justice::build(&revoked, destination, c.feerate_per_kw.max(253)) {
        let signed = justice::sign_all(&j, &revoked, &revocation_secret).expect("sign");
        for (i, r) in revoked.iter().enumerate() {
            let spent = TxOut {
                value: Amount::from_sat(r.value_sat),
                script_pubkey: r.witness_script.to_p2wsh(),
            };
            interpreter_accepts(&signed, i, &spent, "justice input");
            // The estimate covers the real witness.
            prop_assert!(signed.input[i].witness.size() as u64 <= r.witness_weight());
        }
        prop_assert!(
            matches!(recognise(&signed), Some(Bolt3Tx::Justice { inputs }) if inputs.len() == revoked.len()),
            "justice recognised"
        );
        // The revocation key of another commitment does not open them.
        let other = keys::revocation_privkey(
            &c.countersignatory.revocation,
            &keys::commitment_secret(&c.seed, index ^ 1),
        )
        .expect("key");
        let wrong = justice::sign_all(&j, &revoked, &other).expect("sign");
        let spent = TxOut {
            value: Amount::from_sat(revoked[0].value_sat),
            script_pubkey: revoked[0].witness_script.to_p2wsh(),
        };
        prop_assert!(!verify::verify_input(&wrong, 0, &spent, None).valid);
        // LDK's to_local justice spends the same output.
        if let (Some(vout), Ok(ldk_j)) =
            (built.to_local_vout(), trusted.build_to_local_justice_tx(253, shutdown_script(0, 7)))
        {
            prop_assert_eq!(
                ldk_j.input[0].previous_output,
                OutPoint { txid: commitment_txid, vout }
            );
        }
    }

    // ---- the closing transaction ----
    let spec = closing::ClosingSpec {
        funding_outpoint,
        to_local_msat: to_local_msat + htlc_msat,
        to_remote_msat,
        local_script: shutdown_script(c.closing_scripts.0, 1),
        remote_script: shutdown_script(c.closing_scripts.1, 2),
        fee_sat: c.closing_fee_sat,
        local_is_opener: c.broadcaster_is_opener,
        dust_limit_sat: c.dust_limit_sat,
    };
    match closing::build(&spec) {
        Ok(tx) => {
            let value_of = |s: &ScriptBuf| {
                tx.output.iter().find(|o| &o.script_pubkey == s).map_or(0, |o| o.value.to_sat())
            };
            let ldk_closing = ldk::ClosingTransaction::new(
                value_of(&spec.local_script),
                value_of(&spec.remote_script),
                spec.local_script.clone(),
                spec.remote_script.clone(),
                funding_outpoint,
            );
            let ldk_trusted = ldk_closing.trust();
            prop_assert_eq!(&tx, ldk_trusted.built_transaction(), "closing transactions differ");
            let ours = params.sign_commitment(&tx, &c.countersignatory.funding).expect("sign");
            let theirs =
                ldk_trusted.sign(&c.countersignatory.funding, &funding_script, c.funding_sat, secp);
            prop_assert_eq!(ours, theirs);
            let local = params.sign_commitment(&tx, &c.broadcaster.funding).expect("sign");
            let signed = params.complete_funding_spend(&tx, &local, &ours);
            interpreter_accepts(&signed, 0, &funding_out, "closing");
            prop_assert!(
                matches!(recognise(&signed), Some(Bolt3Tx::Closing { .. })),
                "closing recognised"
            );
        }
        Err(e) => {
            prop_assert!(matches!(e, Error::InsufficientFunds { .. } | Error::Bolt3(_)), "{e}")
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_global_rejects: cases().saturating_mul(4),
        ..ProptestConfig::default()
    })]

    /// Commitment, HTLC, closing and justice transactions, keys and signatures against LDK.
    #[test]
    fn transactions_match_ldk(c in case()) {
        check(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(debug_assertions) { 20 } else { 200 }))]

    /// The secret store against LDK's: the same secrets accepted, the same secrets derived, a
    /// corrupted one refused by both.
    #[test]
    fn secret_store_matches_ldk(seed in any::<[u8; 32]>(), count in 1usize..300, corrupt in any::<prop::sample::Index>()) {
        let mut ours = CommitmentSecrets::new();
        let mut theirs = CounterpartyCommitmentSecrets::new();
        let bad = corrupt.index(count);
        let mut refused_at = None;
        for n in 0..count {
            let index = keys::FIRST_INDEX - n as u64;
            let mut s = keys::commitment_secret(&seed, index);
            if n == bad {
                s[0] ^= 1;
            }
            let a = ours.insert(index, s);
            let b = theirs.provide_secret(index, s);
            prop_assert_eq!(a.is_ok(), b.is_ok(), "index {}", index);
            if a.is_err() {
                refused_at = Some(n);
                break;
            }
        }
        // A corrupted secret is refused once a later secret should derive it: at the latest
        // when the next index with more trailing zeros arrives.
        if let Some(n) = refused_at {
            prop_assert!(n >= bad);
        }
        for n in 0..refused_at.unwrap_or(count) {
            let index = keys::FIRST_INDEX - n as u64;
            prop_assert_eq!(ours.get(index), theirs.get_secret(index));
        }
        // Out of order is refused and changes nothing.
        let before = ours.clone();
        let next = ours.next_index();
        let out_of_order = ours.insert(next.wrapping_sub(1), [0; 32]);
        prop_assert!(matches!(out_of_order, Err(Error::SecretOutOfOrder { .. })), "out of order accepted");
        prop_assert_eq!(ours, before);
    }
}
