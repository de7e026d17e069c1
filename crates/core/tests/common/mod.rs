//! Shared fixtures for the core's integration tests.
#![allow(dead_code)]

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::secp256k1::{Keypair, PublicKey, Secp256k1, SecretKey};
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{
    Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    WPubkeyHash, Witness,
};
use paychan_core::policy::DEFAULT_DUST_RELAY_FEE;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::tx::{ChannelParams, FundingOutput};

pub const EXPIRY: u32 = 1_800_000_000;
pub const NOW: u64 = EXPIRY as u64 - 86_400;

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_slice(&[n; 32]).unwrap()
}

pub fn pubkey(k: &SecretKey) -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), k)
}

pub fn merchant_key() -> SecretKey {
    key(0x11)
}

pub fn customer_key() -> SecretKey {
    key(0x22)
}

pub fn keypair(k: &SecretKey) -> Keypair {
    Keypair::from_secret_key(&Secp256k1::new(), k)
}

pub fn customer_keypair() -> Keypair {
    keypair(&customer_key())
}

pub fn p2wpkh(k: &SecretKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from(CompressedPublicKey(pubkey(k))))
}

pub fn channel_script(expiry: u32) -> ChannelScript {
    ChannelScript::new(
        pubkey(&merchant_key()),
        pubkey(&customer_key()),
        LockTime::from_consensus(expiry),
    )
    .unwrap()
}

/// A funding transaction paying `value` to the channel script (its own input is a placeholder:
/// only its output is ever spent in these tests).
pub fn funding_tx(script: &ChannelScript, kind: OutputKind, value: Amount) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([7; 32]), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut { value: Amount::from_sat(50_000), script_pubkey: p2wpkh(&key(0x33)) },
            TxOut { value, script_pubkey: script.script_pubkey(kind) },
        ],
    }
}

pub fn params_with(kind: OutputKind, value: Amount, expiry: u32) -> (ChannelParams, Transaction) {
    let script = channel_script(expiry);
    let tx = funding_tx(&script, kind, value);
    let funding = FundingOutput::find(&tx, &script).unwrap();
    let params =
        ChannelParams::new(script, funding, p2wpkh(&customer_key()), DEFAULT_DUST_RELAY_FEE)
            .unwrap();
    (params, tx)
}

pub fn params(kind: OutputKind) -> (ChannelParams, Transaction) {
    params_with(kind, Amount::from_sat(100_000), EXPIRY)
}

pub fn funding_txout(params: &ChannelParams, funding: &Transaction) -> TxOut {
    funding.output[params.id().vout as usize].clone()
}
