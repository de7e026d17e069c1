//! Deterministic fixtures for tests and benchmarks: fixed keys, a placeholder funding
//! transaction, channel parameters. **Never for real funds**: every key here is public.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use paychan_core::bitcoin::absolute::LockTime;
use paychan_core::bitcoin::hashes::Hash;
use paychan_core::bitcoin::secp256k1::{Keypair, Message, PublicKey, SecretKey};
use paychan_core::bitcoin::sighash::{EcdsaSighashType, SighashCache};
use paychan_core::bitcoin::transaction::Version;
use paychan_core::bitcoin::{
    Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    WPubkeyHash, Witness,
};

use paychan_core::policy::DEFAULT_DUST_RELAY_FEE;
use paychan_core::script::{ChannelScript, OutputKind};
use paychan_core::sig::secp;
use paychan_core::tx::{ChannelParams, FundingOutput};

/// The expiry of the fixtures' channels (a Unix time in 2027).
pub const EXPIRY: u32 = 1_800_000_000;
/// A wall-clock time one day before [`EXPIRY`].
pub const NOW: u64 = EXPIRY as u64 - 86_400;

/// The secret key `[n; 32]`.
///
/// # Panics
/// For `n` = 0 or 0xff, which are not valid keys.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_slice(&[n; 32]).expect("1..=255 repeated is a valid key")
}

/// The public key of `k`.
pub fn pubkey(k: &SecretKey) -> PublicKey {
    PublicKey::from_secret_key(secp(), k)
}

/// The key pair of `k`.
pub fn keypair(k: &SecretKey) -> Keypair {
    Keypair::from_secret_key(secp(), k)
}

/// The fixtures' merchant key.
pub fn merchant_key() -> SecretKey {
    key(0x11)
}

/// The fixtures' customer key.
pub fn customer_key() -> SecretKey {
    key(0x22)
}

/// The fixtures' customer key pair.
pub fn customer_keypair() -> Keypair {
    keypair(&customer_key())
}

/// P2WPKH of `k`'s public key.
pub fn p2wpkh(k: &SecretKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from(CompressedPublicKey(pubkey(k))))
}

/// The channel script between the fixtures' merchant and customer, expiring at `expiry`.
pub fn channel_script(expiry: u32) -> ChannelScript {
    ChannelScript::new(
        pubkey(&merchant_key()),
        pubkey(&customer_key()),
        LockTime::from_consensus(expiry),
    )
    .expect("distinct keys, expiry ≥ 17")
}

/// A funding transaction paying `value` to `script`'s channel at output 1 (a dispute channel's
/// 2-of-2; its own input is a placeholder: only its outputs are ever spent with it).
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
            TxOut {
                value,
                script_pubkey: match script.lock() {
                    paychan_core::script::Lock::Expiry(_) => script.script_pubkey(kind),
                    paychan_core::script::Lock::Dispute(_) => {
                        paychan_core::tx::dispute::funding_script_pubkey(script)
                    }
                },
            },
        ],
    }
}

/// A channel of `value` expiring at `expiry`, and its funding transaction.
pub fn params_with(kind: OutputKind, value: Amount, expiry: u32) -> (ChannelParams, Transaction) {
    let script = channel_script(expiry);
    let tx = funding_tx(&script, kind, value);
    let funding = FundingOutput::find(&tx, &script).expect("the funding pays the script");
    let params =
        ChannelParams::new(script, funding, p2wpkh(&customer_key()), DEFAULT_DUST_RELAY_FEE)
            .expect("P2WPKH change is standard");
    (params, tx)
}

/// A 100,000 sat channel expiring at [`EXPIRY`], and its funding transaction.
pub fn params(kind: OutputKind) -> (ChannelParams, Transaction) {
    params_with(kind, Amount::from_sat(100_000), EXPIRY)
}

/// A pay-to-anchor output (BIP 433) of `value` sat.
pub fn p2a(value: u64) -> TxOut {
    TxOut { value: Amount::from_sat(value), script_pubkey: ScriptBuf::new_p2a() }
}

/// The output of `funding` that `params`' channel spends.
pub fn funding_txout(params: &ChannelParams, funding: &Transaction) -> TxOut {
    funding.output[params.id().vout as usize].clone()
}

/// Signs input `index` of `tx`, which spends `prev` (P2WPKH of `k`), `SIGHASH_ALL`.
///
/// # Panics
/// When `index` is out of range or `prev` is not P2WPKH.
pub fn sign_p2wpkh(tx: &mut Transaction, index: usize, prev: &TxOut, k: &SecretKey) {
    let h = SighashCache::new(&*tx)
        .p2wpkh_signature_hash(index, &prev.script_pubkey, prev.value, EcdsaSighashType::All)
        .expect("a P2WPKH input in range");
    let sig = secp().sign_ecdsa(&Message::from_digest(h.to_byte_array()), k);
    let mut s = sig.serialize_der().to_vec();
    s.push(EcdsaSighashType::All as u8);
    let pk = CompressedPublicKey(pubkey(k)).to_bytes().to_vec();
    tx.input[index].witness = Witness::from_slice(&[s, pk]);
}

/// A transaction of `version` spending `coins` to `outputs`, with `sequence` on every input
/// and `lock_time`: P2WPKH coins (of `k`) signed; anyone-can-spend coins (pay-to-anchor) left
/// with an empty witness.
pub fn spend_p2wpkh_with(
    coins: &[(OutPoint, TxOut)],
    outputs: Vec<TxOut>,
    k: &SecretKey,
    version: Version,
    lock_time: LockTime,
    sequence: Sequence,
) -> Transaction {
    let mut tx = Transaction {
        version,
        lock_time,
        input: coins
            .iter()
            .map(|(o, _)| TxIn {
                previous_output: *o,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    for (i, (_, prev)) in coins.iter().enumerate() {
        if prev.script_pubkey.is_p2wpkh() {
            sign_p2wpkh(&mut tx, i, prev, k);
        }
    }
    tx
}

/// [`spend_p2wpkh_with`] with version 2, locktime 0 and RBF-signalling sequences.
pub fn spend_p2wpkh(
    coins: &[(OutPoint, TxOut)],
    outputs: Vec<TxOut>,
    k: &SecretKey,
) -> Transaction {
    spend_p2wpkh_with(
        coins,
        outputs,
        k,
        Version::TWO,
        LockTime::ZERO,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
    )
}
