//! Every BOLT 3 transaction kind through Bitcoin Core's interpreter and the embedded node's
//! mempool (standardness, finality, BIP 68), for both channel types: the commitment, the
//! HTLC-timeout and HTLC-success transactions, the closing transaction, justice for each revoked
//! output, and every other spending path, with the refused cases: an HTLC-timeout before its
//! CLTV, a received HTLC taken back before its CLTV, `to_local` before `to_self_delay`, a
//! revocation key that does not match, an anchor taken by anyone before 16 blocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::{sha256, Hash};
use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
use paychan_core::bitcoin::sighash::EcdsaSighashType;
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut};
use paychan_core::bolt3::commitment::{self, Commitment, CommitmentParams, CommitmentState};
use paychan_core::bolt3::htlc::{self, HtlcTx};
use paychan_core::bolt3::justice::{self, RevokedKind, RevokedOutput};
use paychan_core::bolt3::recognise::{recognise, Bolt3Tx, JusticeInput};
use paychan_core::bolt3::{
    closing, keys, script, sign, spend, BaseSecrets, ChannelType, CommitmentKeys, Htlc,
};
use paychan_core::sig;
use paychan_core::verify::verify_input;
use paychan_harness::fixtures::{key, p2wpkh, sign_p2wpkh};
use paychan_node::{Node, NodeError};

const FUNDING: u64 = 1_000_000;
const DELAY: u16 = 6;
const FEERATE: u32 = 2_500; // sat/kw: 10 sat/vB
const NUMBER: u64 = 42;

/// Five consecutive fixture keys as one side's base secrets.
fn side(base: u8) -> BaseSecrets {
    BaseSecrets {
        funding: key(base),
        revocation: key(base + 1),
        payment: key(base + 2),
        delayed_payment: key(base + 3),
        htlc: key(base + 4),
    }
}

/// A funded channel and local's commitment number 42 with an offered and a received HTLC.
struct World {
    node: Node,
    ct: ChannelType,
    local: BaseSecrets,
    remote: BaseSecrets,
    params: CommitmentParams,
    state: CommitmentState,
    commitment: Commitment,
    signed: Transaction,
    htlc_txs: Vec<HtlcTx>,
    per_commitment_secret: [u8; 32],
    preimages: [[u8; 32]; 2],
    /// Confirmed miner coins for fees.
    coins: Vec<(OutPoint, TxOut)>,
    funding_out: TxOut,
}

impl World {
    fn new(ct: ChannelType) -> Self {
        let node = funded_node(1);
        let mut coins = split(&node, 1, 6, 1_000_000);
        let (local, remote) = (side(0x10), side(0x20));
        let (lb, rb) = (local.basepoints(), remote.basepoints());
        let funding_script = script::funding(&lb.funding, &rb.funding);
        let funding_out = out(FUNDING, funding_script.to_p2wsh());
        let two = [coins.pop().unwrap(), coins.pop().unwrap()];
        let funding_tx =
            spend(&two, vec![funding_out.clone(), out(990_000, miner_spk())], &miner_key());
        node.submit(funding_tx.clone(), None).unwrap();
        node.mine(1, &miner_spk()).unwrap();
        let height = node.tip().0;

        let params = CommitmentParams {
            channel_type: ct,
            funding_outpoint: OutPoint { txid: funding_tx.compute_txid(), vout: 0 },
            funding_sat: FUNDING,
            broadcaster: lb,
            countersignatory: rb,
            broadcaster_is_opener: true,
            to_self_delay: DELAY,
            dust_limit_sat: 546,
        };
        let preimages = [[1u8; 32], [2u8; 32]];
        let htlc = |offered, preimage: &[u8; 32], cltv| Htlc {
            offered,
            amount_msat: 50_000_000,
            payment_hash: sha256::Hash::hash(preimage).to_byte_array(),
            cltv_expiry: cltv,
        };
        let state = CommitmentState {
            commitment_number: NUMBER,
            to_local_msat: 600_000_000,
            to_remote_msat: 300_000_000,
            feerate_per_kw: FEERATE,
            htlcs: vec![
                htlc(true, &preimages[0], height + 10),
                htlc(false, &preimages[1], height + 12),
            ],
        };
        let seed = [9u8; 32];
        let per_commitment_secret = keys::commitment_secret(&seed, keys::index_of(NUMBER).unwrap());
        let point = keys::per_commitment_point(&per_commitment_secret).unwrap();
        let k = CommitmentKeys::derive(&point, &lb, &rb).unwrap();
        let commitment = commitment::build(&params, &state, &k).unwrap();
        let local_sig = params.sign_commitment(&commitment.tx, &local.funding).unwrap();
        let remote_sig = params.sign_commitment(&commitment.tx, &remote.funding).unwrap();
        let signed = params.complete_funding_spend(&commitment.tx, &local_sig, &remote_sig);
        let htlc_txs = htlc::build_all(&params, &state.htlcs, FEERATE, &commitment);
        assert_eq!(htlc_txs.len(), 2);
        World {
            node,
            ct,
            local,
            remote,
            params,
            state,
            commitment,
            signed,
            htlc_txs,
            per_commitment_secret,
            preimages,
            coins,
            funding_out,
        }
    }

    fn point(&self) -> PublicKey {
        self.commitment.keys.per_commitment_point
    }

    fn txid(&self) -> paychan_core::bitcoin::Txid {
        self.commitment.tx.compute_txid()
    }

    fn output(&self, vout: u32) -> TxOut {
        self.commitment.tx.output[vout as usize].clone()
    }

    fn vout_of(&self, offered: bool) -> u32 {
        self.commitment
            .htlc_outputs()
            .find(|(_, i, _)| self.state.htlcs[*i].offered == offered)
            .map(|(v, _, _)| v)
            .unwrap()
    }

    fn anchor_vout(&self, local: bool) -> u32 {
        let role = if local {
            commitment::OutputRole::LocalAnchor
        } else {
            commitment::OutputRole::RemoteAnchor
        };
        self.commitment.outputs.iter().position(|r| *r == role).unwrap() as u32
    }

    /// The second-stage transaction for the offered (timeout) or received (success) HTLC,
    /// signed by both; with anchors a miner coin pays its fee.
    fn second_stage(&mut self, timeout: bool) -> Transaction {
        let t = self.htlc_txs.iter().find(|t| t.timeout == timeout).unwrap().clone();
        let remote_htlc = keys::derive_privkey(&self.remote.htlc, &self.point()).unwrap();
        let local_htlc = keys::derive_privkey(&self.local.htlc, &self.point()).unwrap();
        let remote = t.sign_remote(self.ct, &remote_htlc).unwrap();
        let preimage = (!timeout).then_some(self.preimages[1]);
        let mut tx = t.tx.clone();
        let fee_coin = (self.ct == ChannelType::Anchors).then(|| self.coins.pop().unwrap());
        if let Some((op, txout)) = &fee_coin {
            tx.input.push(TxIn {
                previous_output: *op,
                sequence: Sequence::MAX,
                ..TxIn::default()
            });
            tx.output.push(out(txout.value.to_sat() - 5_000, miner_spk()));
        }
        let local = t.sign_local_on(&tx, &local_htlc).unwrap();
        let mut tx = t.complete_on(tx, self.ct, &remote, &local, preimage.as_ref()).unwrap();
        if let Some((_, txout)) = &fee_coin {
            sign_p2wpkh(&mut tx, 1, txout, &miner_key());
        }
        tx
    }

    /// A one-input transaction spending `outpoint` to the miner, less 2,000 sat.
    fn sweep(&self, outpoint: OutPoint, value: u64, lock_time: u32, sequence: u32) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::from_consensus(lock_time),
            input: vec![TxIn {
                previous_output: outpoint,
                sequence: Sequence(sequence),
                ..TxIn::default()
            }],
            output: vec![out(value - 2_000, miner_spk())],
        }
    }
}

fn sign_input(
    tx: &Transaction,
    ws: &ScriptBuf,
    value: u64,
    k: &SecretKey,
) -> paychan_core::bitcoin::secp256k1::ecdsa::Signature {
    sign::sign(tx, 0, ws, value, EcdsaSighashType::All, k).unwrap()
}

fn accepted(node: &Node, tx: &Transaction, what: &str) {
    if let Err(e) = node.test_accept(tx.clone()) {
        panic!("{what}: refused: {e}");
    }
}

fn refused(node: &Node, tx: &Transaction, reason: &str, what: &str) {
    match node.test_accept(tx.clone()) {
        Err(NodeError::Rejected(r)) => {
            assert!(r.starts_with(reason), "{what}: refused for {r}, expected {reason}")
        }
        other => panic!("{what}: expected {reason}, got {other:?}"),
    }
}

fn script_fails(tx: &Transaction, spent: &TxOut, what: &str) {
    let v = verify_input(tx, 0, spent, None);
    assert!(!v.valid, "{what}: Core's interpreter accepted it");
}

fn both_types(f: impl Fn(ChannelType)) {
    for ct in [ChannelType::StaticRemoteKey, ChannelType::Anchors] {
        f(ct);
    }
}

#[test]
fn closing_transaction_spends_the_funding() {
    both_types(|ct| {
        let w = World::new(ct);
        let spec = closing::ClosingSpec {
            funding_outpoint: w.params.funding_outpoint,
            to_local_msat: 700_000_000,
            to_remote_msat: 300_000_000,
            local_script: p2wpkh(&key(0x51)),
            remote_script: p2wpkh(&key(0x52)),
            fee_sat: 2_000,
            local_is_opener: true,
            dust_limit_sat: 546,
        };
        let tx = closing::build(&spec).unwrap();
        let a = w.params.sign_commitment(&tx, &w.local.funding).unwrap();
        let b = w.params.sign_commitment(&tx, &w.remote.funding).unwrap();
        let signed = w.params.complete_funding_spend(&tx, &a, &b);
        assert!(matches!(recognise(&signed), Some(Bolt3Tx::Closing { .. })));
        accepted(&w.node, &signed, "closing");
        // One signature swapped for a key that is not in the 2-of-2: refused.
        let c = w.params.sign_commitment(&tx, &key(0x53)).unwrap();
        let bad = w.params.complete_funding_spend(&tx, &a, &c);
        script_fails(&bad, &w.funding_out, "closing with a foreign signature");
        refused(
            &w.node,
            &bad,
            "mandatory-script-verify-flag-failed",
            "closing with a foreign signature",
        );
    });
}

#[test]
fn commitment_then_every_path_of_its_outputs() {
    both_types(|ct| {
        let mut w = World::new(ct);
        let tag = ct.as_str();
        accepted(&w.node, &w.signed, "commitment");
        w.node.submit(w.signed.clone(), None).unwrap();
        w.node.mine(1, &miner_spk()).unwrap();
        let height = w.node.tip().0;
        let htlc_timeout_cltv = w.state.htlcs[0].cltv_expiry;
        let offered_vout = w.vout_of(true);
        let received_vout = w.vout_of(false);
        let remote_htlc = keys::derive_privkey(&w.remote.htlc, &w.point()).unwrap();
        let csv_one = if ct == ChannelType::Anchors { 1 } else { 0 };

        // HTLC-success: at once, with the preimage.
        let success = w.second_stage(false);
        assert!(
            matches!(recognise(&success), Some(Bolt3Tx::SecondStage { inputs }) if inputs[0].preimage == Some(w.preimages[1])),
            "{tag}"
        );
        accepted(&w.node, &success, "HTLC-success");

        // HTLC-timeout: not before its CLTV.
        let timeout = w.second_stage(true);
        assert!(height < htlc_timeout_cltv);
        assert_eq!(recognise(&timeout).map(|t| t.kind()), Some("bolt3-htlc-timeout"), "{tag}");
        refused(&w.node, &timeout, "non-final", "HTLC-timeout before its CLTV");

        // The remote claims the offered HTLC with the preimage (anchors: one block on).
        let ws = match &w.commitment.outputs[offered_vout as usize] {
            commitment::OutputRole::Htlc(_, s) => s.clone(),
            _ => unreachable!(),
        };
        let value = w.output(offered_vout).value.to_sat();
        let mut claim = w.sweep(OutPoint { txid: w.txid(), vout: offered_vout }, value, 0, csv_one);
        let s = sign_input(&claim, &ws, value, &remote_htlc);
        claim.input[0].witness = spend::offered_htlc_preimage(&s, &w.preimages[0], &ws);
        accepted(&w.node, &claim, "offered HTLC claimed with the preimage");
        let mut wrong = claim.clone();
        wrong.input[0].witness = spend::offered_htlc_preimage(&s, &[7; 32], &ws);
        script_fails(&wrong, &w.output(offered_vout), "offered HTLC with a wrong preimage");

        // The remote takes back the received HTLC: not before its CLTV (the script's
        // OP_CHECKLOCKTIMEVERIFY), and the node refuses a transaction not final yet.
        let rws = match &w.commitment.outputs[received_vout as usize] {
            commitment::OutputRole::Htlc(_, s) => s.clone(),
            _ => unreachable!(),
        };
        let cltv = w.state.htlcs[1].cltv_expiry;
        let rvalue = w.output(received_vout).value.to_sat();
        let mut early =
            w.sweep(OutPoint { txid: w.txid(), vout: received_vout }, rvalue, cltv - 1, csv_one);
        let s = sign_input(&early, &rws, rvalue, &remote_htlc);
        early.input[0].witness = spend::received_htlc_timeout(&s, &rws);
        script_fails(&early, &w.output(received_vout), "received HTLC taken back before its CLTV");
        let mut back =
            w.sweep(OutPoint { txid: w.txid(), vout: received_vout }, rvalue, cltv, csv_one);
        let s = sign_input(&back, &rws, rvalue, &remote_htlc);
        back.input[0].witness = spend::received_htlc_timeout(&s, &rws);
        assert!(verify_input(&back, 0, &w.output(received_vout), None).valid, "{tag}: at its CLTV");
        refused(
            &w.node,
            &back,
            "non-final",
            "received HTLC taken back before the chain reaches its CLTV",
        );

        // to_remote: the remote's key (anchors: one block on).
        let rv = w.commitment.to_remote_vout().unwrap();
        let value = w.output(rv).value.to_sat();
        let mut to_remote = w.sweep(OutPoint { txid: w.txid(), vout: rv }, value, 0, csv_one);
        let remote_key = PublicKey::from_secret_key(sig::secp(), &w.remote.payment);
        to_remote.input[0].witness = match ct {
            ChannelType::StaticRemoteKey => {
                let mut t = to_remote.clone();
                sign_p2wpkh(&mut t, 0, &w.output(rv), &w.remote.payment);
                t.input[0].witness.clone()
            }
            ChannelType::Anchors => {
                let ws = script::to_remote_anchors(&remote_key);
                spend::to_remote_anchors(
                    &sign_input(&to_remote, &ws, value, &w.remote.payment),
                    &ws,
                )
            }
        };
        accepted(&w.node, &to_remote, "to_remote");
        if ct == ChannelType::Anchors {
            let mut now = to_remote.clone();
            now.input[0].sequence = Sequence::ZERO;
            script_fails(&now, &w.output(rv), "to_remote with anchors in the commitment's block");
        }

        // to_local: the delayed key, not before to_self_delay.
        let lv = w.commitment.to_local_vout().unwrap();
        let lws = script::to_local(
            &w.commitment.keys.revocation,
            DELAY,
            &w.commitment.keys.broadcaster_delayed,
        );
        let delayed = keys::derive_privkey(&w.local.delayed_payment, &w.point()).unwrap();
        let value = w.output(lv).value.to_sat();
        let mut to_local =
            w.sweep(OutPoint { txid: w.txid(), vout: lv }, value, 0, u32::from(DELAY));
        to_local.input[0].witness =
            spend::to_local_delayed(&sign_input(&to_local, &lws, value, &delayed), &lws);
        refused(&w.node, &to_local, "non-BIP68-final", "to_local before to_self_delay");
        let mut short =
            w.sweep(OutPoint { txid: w.txid(), vout: lv }, value, 0, u32::from(DELAY) - 1);
        short.input[0].witness =
            spend::to_local_delayed(&sign_input(&short, &lws, value, &delayed), &lws);
        script_fails(&short, &w.output(lv), "to_local with a sequence below to_self_delay");

        // Anchors: the owner's funding key at once; anyone only 16 blocks on.
        if ct == ChannelType::Anchors {
            let av = w.anchor_vout(true);
            let aws = script::anchor(&w.params.broadcaster.funding);
            let (op, coin) = w.coins.pop().unwrap();
            let mut cpfp = Transaction {
                version: Version::TWO,
                lock_time: LockTime::ZERO,
                input: vec![
                    TxIn {
                        previous_output: OutPoint { txid: w.txid(), vout: av },
                        ..TxIn::default()
                    },
                    TxIn { previous_output: op, ..TxIn::default() },
                ],
                output: vec![out(coin.value.to_sat() + 330 - 3_000, miner_spk())],
            };
            let s =
                sign::sign(&cpfp, 0, &aws, 330, EcdsaSighashType::All, &w.local.funding).unwrap();
            cpfp.input[0].witness = spend::anchor_by_owner(&s, &aws);
            sign_p2wpkh(&mut cpfp, 1, &coin, &miner_key());
            accepted(&w.node, &cpfp, "anchor by its owner");
            let mut anyone = cpfp.clone();
            anyone.input[0].sequence = Sequence(16);
            anyone.input[0].witness = spend::anchor_by_anyone(&aws);
            sign_p2wpkh(&mut anyone, 1, &coin, &miner_key());
            refused(&w.node, &anyone, "non-BIP68-final", "anchor by anyone before 16 blocks");
            w.node.mine(16, &miner_spk()).unwrap();
            accepted(&w.node, &anyone, "anchor by anyone 16 blocks on");
        }

        // Time passes: to_local opens, the HTLC-timeout becomes final.
        let tip = w.node.tip().0;
        w.node
            .mine((htlc_timeout_cltv.max(tip + u32::from(DELAY)) - tip).max(1), &miner_spk())
            .unwrap();
        accepted(&w.node, &to_local, "to_local after to_self_delay");
        accepted(&w.node, &timeout, "HTLC-timeout at its CLTV");

        // The HTLC-timeout confirmed: its output waits to_self_delay like to_local.
        w.node.submit(timeout.clone(), None).unwrap();
        w.node.mine(1, &miner_spk()).unwrap();
        let second = OutPoint { txid: timeout.compute_txid(), vout: 0 };
        let value = timeout.output[0].value.to_sat();
        let mut claim2 = w.sweep(second, value, 0, u32::from(DELAY));
        claim2.input[0].witness =
            spend::to_local_delayed(&sign_input(&claim2, &lws, value, &delayed), &lws);
        refused(&w.node, &claim2, "non-BIP68-final", "HTLC-timeout output before to_self_delay");
        w.node.mine(u32::from(DELAY), &miner_spk()).unwrap();
        accepted(&w.node, &claim2, "HTLC-timeout output after to_self_delay");
    });
}

#[test]
fn justice_takes_every_revoked_output_and_only_with_the_right_key() {
    both_types(|ct| {
        let mut w = World::new(ct);
        let tag = ct.as_str();
        w.node.submit(w.signed.clone(), None).unwrap();
        w.node.mine(1, &miner_spk()).unwrap();
        // The cheater also confirms its HTLC-success transaction.
        let success = w.second_stage(false);
        w.node.submit(success.clone(), None).unwrap();
        w.node.mine(1, &miner_spk()).unwrap();

        let revocation_key =
            keys::revocation_privkey(&w.remote.revocation, &w.per_commitment_secret).unwrap();
        assert_eq!(
            PublicKey::from_secret_key(sig::secp(), &revocation_key),
            w.commitment.keys.revocation
        );
        let received_vout = w.vout_of(false);
        let mut revoked: Vec<RevokedOutput> = w
            .commitment
            .outputs
            .iter()
            .enumerate()
            .filter_map(|(vout, role)| {
                let (kind, ws) = match role {
                    commitment::OutputRole::ToLocal(s) => (RevokedKind::ToLocal, s.clone()),
                    commitment::OutputRole::Htlc(_, s) if vout as u32 != received_vout => {
                        (RevokedKind::Htlc, s.clone())
                    }
                    _ => return None,
                };
                Some(RevokedOutput {
                    outpoint: OutPoint { txid: w.txid(), vout: vout as u32 },
                    value_sat: w.output(vout as u32).value.to_sat(),
                    witness_script: ws,
                    kind,
                })
            })
            .collect();
        revoked.push(RevokedOutput {
            outpoint: OutPoint { txid: success.compute_txid(), vout: 0 },
            value_sat: success.output[0].value.to_sat(),
            witness_script: script::to_local(
                &w.commitment.keys.revocation,
                DELAY,
                &w.commitment.keys.broadcaster_delayed,
            ),
            kind: RevokedKind::SecondStage,
        });
        assert_eq!(revoked.len(), 3, "{tag}: to_local, the offered HTLC, the HTLC-success output");
        let tx = justice::build(&revoked, p2wpkh(&key(0x60)), FEERATE).unwrap();
        let signed = justice::sign_all(&tx, &revoked, &revocation_key).unwrap();
        match recognise(&signed) {
            Some(Bolt3Tx::Justice { inputs }) => {
                assert_eq!(inputs.iter().filter(|(_, k)| *k == JusticeInput::Htlc).count(), 1);
                assert_eq!(inputs.iter().filter(|(_, k)| *k == JusticeInput::ToLocal).count(), 2);
            }
            other => panic!("{tag}: recognised as {other:?}"),
        }
        accepted(&w.node, &signed, "justice");
        // Each output alone, too, and the received HTLC's output before the HTLC-success.
        let mut alone = revoked.clone();
        alone.push(RevokedOutput {
            outpoint: OutPoint { txid: w.txid(), vout: received_vout },
            value_sat: w.output(received_vout).value.to_sat(),
            witness_script: match &w.commitment.outputs[received_vout as usize] {
                commitment::OutputRole::Htlc(_, s) => s.clone(),
                _ => unreachable!(),
            },
            kind: RevokedKind::Htlc,
        });
        for r in &alone {
            let one = justice::build(std::slice::from_ref(r), p2wpkh(&key(0x60)), FEERATE).unwrap();
            let one = justice::sign_all(&one, std::slice::from_ref(r), &revocation_key).unwrap();
            let spent = TxOut {
                value: Amount::from_sat(r.value_sat),
                script_pubkey: r.witness_script.to_p2wsh(),
            };
            let v = verify_input(&one, 0, &spent, None);
            assert!(v.valid && v.standard, "{tag}: justice of {:?}: {:?}", r.kind, v.error);
        }
        // The revocation key of another commitment does not match: refused, changes nothing.
        let other_secret = keys::commitment_secret(&[9u8; 32], keys::index_of(NUMBER + 1).unwrap());
        let wrong_key = keys::revocation_privkey(&w.remote.revocation, &other_secret).unwrap();
        let wrong = justice::sign_all(&tx, &revoked, &wrong_key).unwrap();
        refused(
            &w.node,
            &wrong,
            "mandatory-script-verify-flag-failed",
            "justice with a revocation key that does not match",
        );
        for (i, r) in revoked.iter().enumerate() {
            let spent = TxOut {
                value: Amount::from_sat(r.value_sat),
                script_pubkey: r.witness_script.to_p2wsh(),
            };
            assert!(
                !verify_input(&wrong, i, &spent, None).valid,
                "{tag}: input {i} with the wrong key"
            );
        }
        // The base secret alone (no per-commitment secret) is no revocation key either.
        let no_secret = justice::sign_all(&tx, &revoked, &w.remote.revocation).unwrap();
        refused(
            &w.node,
            &no_secret,
            "mandatory-script-verify-flag-failed",
            "justice with the basepoint secret",
        );
        // The justice transaction confirms.
        w.node.submit(signed, None).unwrap();
        w.node.mine(1, &miner_spk()).unwrap();
    });
}
