//! Every transaction the core builds, checked by Bitcoin Core's own script interpreter
//! (`bitcoinconsensus`, all consensus flags) and by the standardness rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::secp256k1::{Message, Secp256k1};
use paychan_core::bitcoin::sighash::{EcdsaSighashType, SighashCache};
use paychan_core::bitcoin::{
    Amount, FeeRate, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid, Weight, Witness,
};
use paychan_core::script::OutputKind;
use paychan_core::tx::payment::sign_payment;
use paychan_core::tx::recognise::{find_channel_spend, Role};
use paychan_core::tx::refund::{build_refund, build_refund_with, REFUND_SEQUENCE};
use paychan_core::tx::settlement::{build_settlement, WalletInput};
use paychan_core::tx::ChannelParams;
use paychan_core::verify::{verify_input, InputVerdict};
use paychan_core::Error;

const KINDS: [OutputKind; 2] = [OutputKind::P2wsh, OutputKind::P2sh];

fn fee_rate() -> FeeRate {
    FeeRate::from_sat_per_vb(2).unwrap()
}

fn check(tx: &Transaction, index: usize, spent: &TxOut) -> InputVerdict {
    verify_input(tx, index, spent, None)
}

fn settle(params: &ChannelParams, total: Amount) -> Transaction {
    let sig = sign_payment(params, total, &customer_keypair()).unwrap();
    build_settlement(params, total, &sig, &merchant_key(), p2wpkh(&merchant_key()), fee_rate(), &[])
        .unwrap()
        .tx
}

#[test]
fn payment_and_settlement_are_valid_and_standard() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        // SINGLE|ANYONECANPAY with change, and NONE|ANYONECANPAY when the change is dust
        for total in [Amount::from_sat(10_000), Amount::from_sat(99_900), params.capacity()] {
            let tx = settle(&params, total);
            let v = check(&tx, 0, &spent);
            assert!(v.valid && v.standard, "{kind} total {total}: {v:?}");
            let paid: Amount = tx.output.iter().map(|o| o.value).sum();
            assert!(paid < params.capacity());
            let change_dust = params.change_dust();
            if params.capacity() - total >= change_dust {
                assert_eq!(
                    tx.output[0].value,
                    params.capacity() - total,
                    "change kept at output 0"
                );
                assert_eq!(tx.output.len(), 2);
            } else {
                assert_eq!(tx.output.len(), 1, "merchant takes all when change is dust");
            }
            assert_eq!(find_channel_spend(&tx).unwrap().role, Role::Settlement);
        }
    }
}

#[test]
fn settlement_with_a_wallet_input_keeps_the_channel_input_valid() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let total = Amount::from_sat(300); // too little to pay a fee alone
        let sig = sign_payment(&params, total, &customer_keypair()).unwrap();
        let alone = build_settlement(
            &params,
            total,
            &sig,
            &merchant_key(),
            p2wpkh(&merchant_key()),
            fee_rate(),
            &[],
        );
        assert!(matches!(alone, Err(Error::Dust { .. }) | Err(Error::InsufficientFunds { .. })));
        let wallet = WalletInput {
            outpoint: OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 3 },
            txout: TxOut { value: Amount::from_sat(20_000), script_pubkey: p2wpkh(&key(0x44)) },
            satisfaction_weight: Weight::from_wu(272),
        };
        let s = build_settlement(
            &params,
            total,
            &sig,
            &merchant_key(),
            p2wpkh(&merchant_key()),
            fee_rate(),
            &[wallet],
        )
        .unwrap();
        assert_eq!(s.tx.input.len(), 2);
        assert_eq!(s.merchant_amount, total + Amount::from_sat(20_000) - s.fee);
        let v = check(&s.tx, 0, &spent);
        assert!(v.valid && v.standard, "{kind}: {v:?}");
    }
}

#[test]
fn payment_signed_by_the_wrong_key_is_invalid() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let mut tx = settle(&params, Amount::from_sat(5_000));
        // Re-sign the customer's part with another key over the same sighash.
        let flag = EcdsaSighashType::SinglePlusAnyoneCanPay;
        let msg = {
            let mut cache = SighashCache::new(&tx);
            let h = match kind {
                OutputKind::P2wsh => cache
                    .p2wsh_signature_hash(0, params.witness_script(), params.capacity(), flag)
                    .unwrap()
                    .to_byte_array(),
                OutputKind::P2sh => cache
                    .legacy_signature_hash(0, params.witness_script(), flag.to_u32())
                    .unwrap()
                    .to_byte_array(),
            };
            Message::from_digest(h)
        };
        let mut forged = Secp256k1::new().sign_ecdsa(&msg, &key(0x55)).serialize_der().to_vec();
        forged.push(flag as u8);
        replace_stack_item(&mut tx, kind, 0, forged);
        let v = check(&tx, 0, &spent);
        assert!(!v.valid, "{kind}: a forged customer signature must fail: {v:?}");
    }
}

#[test]
fn settlement_missing_the_merchant_signature_is_invalid() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let mut tx = settle(&params, Amount::from_sat(5_000));
        replace_stack_item(&mut tx, kind, 1, Vec::new());
        let v = check(&tx, 0, &spent);
        assert!(!v.valid, "{kind}: {v:?}");
    }
}

#[test]
fn tampering_with_the_change_invalidates_the_settlement() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let mut tx = settle(&params, Amount::from_sat(5_000));
        tx.output[0].value -= Amount::from_sat(1);
        assert!(!check(&tx, 0, &spent).valid, "{kind}");
    }
}

#[test]
fn refund_is_valid_only_after_expiry_with_a_non_final_sequence() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let dest = p2wpkh(&customer_key());
        let refund = build_refund(&params, &customer_key(), dest.clone(), fee_rate()).unwrap();
        assert_eq!(refund.lock_time, LockTime::from_consensus(EXPIRY));
        assert_eq!(refund.input[0].sequence, REFUND_SEQUENCE);
        let v = check(&refund, 0, &spent);
        assert!(v.valid && v.standard, "{kind}: {v:?}");
        assert_eq!(find_channel_spend(&refund).unwrap().role, Role::Refund);

        let refund_with = |lock: u32, sequence: Sequence| {
            let lock = LockTime::from_consensus(lock);
            let tx = build_refund_with(
                &params,
                &customer_key(),
                dest.clone(),
                fee_rate(),
                lock,
                sequence,
            )
            .unwrap();
            check(&tx, 0, &spent).valid
        };
        assert!(!refund_with(EXPIRY - 1, REFUND_SEQUENCE), "{kind}: nLockTime below expiry");
        assert!(refund_with(EXPIRY + 1, REFUND_SEQUENCE), "{kind}: nLockTime above expiry is fine");
        assert!(!refund_with(EXPIRY, Sequence::MAX), "{kind}: final sequence disables CLTV");
        assert!(!refund_with(400_000_000, REFUND_SEQUENCE), "{kind}: height vs time lock");
    }
}

#[test]
fn refund_through_the_payment_branch_is_invalid() {
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let mut refund =
            build_refund(&params, &customer_key(), p2wpkh(&customer_key()), fee_rate()).unwrap();
        // Flip the selector to the IF branch: the merchant's signature is then missing.
        match kind {
            OutputKind::P2wsh => {
                let items: Vec<Vec<u8>> =
                    refund.input[0].witness.iter().map(|i| i.to_vec()).collect();
                let mut w = Witness::new();
                w.push(&items[0]);
                w.push([0x01]);
                w.push(&items[2]);
                refund.input[0].witness = w;
            }
            OutputKind::P2sh => {
                let mut bytes = refund.input[0].script_sig.to_bytes();
                let sig_len = bytes[0] as usize;
                assert_eq!(bytes[1 + sig_len], 0x00, "OP_0 selector");
                bytes[1 + sig_len] = 0x51; // OP_1
                refund.input[0].script_sig = ScriptBuf::from_bytes(bytes);
            }
        }
        assert!(!check(&refund, 0, &spent).valid, "{kind}");
    }
}

#[test]
fn height_based_expiry_refund_is_valid() {
    let (params, funding) = params_with(OutputKind::P2wsh, Amount::from_sat(100_000), 900_000);
    let spent = funding_txout(&params, &funding);
    let refund =
        build_refund(&params, &customer_key(), p2wpkh(&customer_key()), fee_rate()).unwrap();
    let v = check(&refund, 0, &spent);
    assert!(v.valid && v.standard, "{v:?}");
}

#[test]
fn post_2038_expiry_refund_is_valid() {
    // two1 would have encoded this expiry as a negative number; ours takes a fifth byte.
    let (params, funding) =
        params_with(OutputKind::P2wsh, Amount::from_sat(100_000), 3_000_000_000);
    assert_eq!(params.witness_script().len(), 81);
    let spent = funding_txout(&params, &funding);
    let refund =
        build_refund(&params, &customer_key(), p2wpkh(&customer_key()), fee_rate()).unwrap();
    let v = check(&refund, 0, &spent);
    assert!(v.valid && v.standard, "{v:?}");
}

#[test]
fn fee_rates_are_met() {
    let (params, _) = params(OutputKind::P2wsh);
    for rate in [1u64, 2, 10, 50] {
        let fr = FeeRate::from_sat_per_vb(rate).unwrap();
        let refund = build_refund(&params, &customer_key(), p2wpkh(&customer_key()), fr).unwrap();
        let fee = params.capacity() - refund.output[0].value;
        assert!(fee >= fr.fee_vb(refund.vsize() as u64).unwrap(), "refund at {rate} sat/vB");
        let sig = sign_payment(&params, Amount::from_sat(50_000), &customer_keypair()).unwrap();
        let s = build_settlement(
            &params,
            Amount::from_sat(50_000),
            &sig,
            &merchant_key(),
            p2wpkh(&merchant_key()),
            fr,
            &[],
        )
        .unwrap();
        let out: Amount = s.tx.output.iter().map(|o| o.value).sum();
        assert_eq!(params.capacity() - out, s.fee);
        assert!(s.fee >= fr.fee_vb(s.tx.vsize() as u64).unwrap(), "settlement at {rate} sat/vB");
    }
    assert!(build_refund(
        &params,
        &customer_key(),
        p2wpkh(&customer_key()),
        FeeRate::from_sat_per_kwu(100)
    )
    .is_err());
}

#[test]
fn keys_are_checked_before_signing() {
    let (params, _) = params(OutputKind::P2wsh);
    assert!(matches!(
        sign_payment(&params, Amount::from_sat(1_000), &keypair(&merchant_key())),
        Err(Error::Signing(_))
    ));
    assert!(build_refund(&params, &merchant_key(), p2wpkh(&customer_key()), fee_rate()).is_err());
    let sig = sign_payment(&params, Amount::from_sat(10_000), &customer_keypair()).unwrap();
    assert!(matches!(
        build_settlement(
            &params,
            Amount::from_sat(10_000),
            &sig,
            &customer_key(),
            p2wpkh(&merchant_key()),
            fee_rate(),
            &[]
        ),
        Err(Error::Signing(_))
    ));
}

/// Replaces stack item `n` (0 = customer signature, 1 = merchant signature) of input 0.
fn replace_stack_item(tx: &mut Transaction, kind: OutputKind, n: usize, item: Vec<u8>) {
    use paychan_core::bitcoin::script::{Builder, Instruction, PushBytesBuf};
    match kind {
        OutputKind::P2wsh => {
            let mut items: Vec<Vec<u8>> = tx.input[0].witness.iter().map(|i| i.to_vec()).collect();
            items[n] = item;
            tx.input[0].witness = Witness::from_slice(&items);
        }
        OutputKind::P2sh => {
            let mut pushes: Vec<Vec<u8>> = tx.input[0]
                .script_sig
                .instructions()
                .map(|i| match i.unwrap() {
                    Instruction::PushBytes(b) => b.as_bytes().to_vec(),
                    Instruction::Op(_) => vec![0x01],
                })
                .collect();
            pushes[n] = item;
            let mut b = Builder::new();
            for (i, p) in pushes.iter().enumerate() {
                if i == 2 {
                    b = b.push_opcode(paychan_core::bitcoin::opcodes::all::OP_PUSHNUM_1);
                } else {
                    b = b.push_slice(PushBytesBuf::try_from(p.clone()).unwrap());
                }
            }
            tx.input[0].script_sig = b.into_script();
        }
    }
}

#[test]
fn high_s_signature_is_valid_but_not_standard() {
    use paychan_core::bitcoin::secp256k1::ecdsa;
    use paychan_core::sig::malleate_s;
    for kind in KINDS {
        let (params, funding) = params(kind);
        let spent = funding_txout(&params, &funding);
        let mut tx = settle(&params, Amount::from_sat(5_000));
        let cust = match kind {
            OutputKind::P2wsh => tx.input[0].witness.nth(0).unwrap().to_vec(),
            OutputKind::P2sh => {
                let b = tx.input[0].script_sig.as_bytes();
                b[1..1 + b[0] as usize].to_vec()
            }
        };
        let (flag, der) = cust.split_last().unwrap();
        let mut high =
            malleate_s(&ecdsa::Signature::from_der(der).unwrap()).serialize_der().to_vec();
        high.push(*flag);
        replace_stack_item(&mut tx, kind, 0, high);
        let v = check(&tx, 0, &spent);
        assert!(v.valid, "{kind}: consensus accepts high S: {v:?}");
        assert!(!v.standard, "{kind}: policy refuses high S");
        assert!(v.error.unwrap().contains("S value is unnecessarily high"));
    }
}
