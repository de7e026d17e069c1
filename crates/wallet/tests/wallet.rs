//! The wallet against the embedded node: create, restore, sync, fund a channel, follow a reorg.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paychan_chain::{ChainSource, EmbeddedChain};
use paychan_core::bitcoin::{Amount, FeeRate, Network, OutPoint};
use paychan_core::script::OutputKind;
use paychan_core::tx::FundingOutput;
use paychan_harness::fixtures::{channel_script, key, p2wpkh};
use paychan_node::Node;
use paychan_wallet::{Wallet, WalletError};

const WORDS: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

#[test]
fn create_restore_and_private_files() {
    let a = tempfile::tempdir().unwrap();
    let mut w = Wallet::create(a.path(), Network::Regtest, Some(WORDS)).unwrap();
    let first = w.new_address().unwrap();
    let second = w.new_address().unwrap();
    assert_ne!(first, second, "addresses are never reused");
    assert!(matches!(
        Wallet::create(a.path(), Network::Regtest, None),
        Err(WalletError::Exists(_))
    ));
    drop(w);
    // Reopened: the next address continues after the ones handed out.
    let mut w = Wallet::open(a.path(), Network::Regtest).unwrap();
    let third = w.new_address().unwrap();
    assert!(third != first && third != second);
    // Restored elsewhere from the same words: the same first address.
    let b = tempfile::tempdir().unwrap();
    let mut r = Wallet::create(b.path(), Network::Regtest, Some(WORDS)).unwrap();
    assert_eq!(r.new_address().unwrap(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["mnemonic", "wallet.sqlite"] {
            let mode = std::fs::metadata(a.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by its owner only");
        }
    }
    assert!(matches!(
        Wallet::create(tempfile::tempdir().unwrap().path(), Network::Regtest, Some("not a mnemonic")),
        Err(WalletError::BadMnemonic(m)) if !m.contains("not a mnemonic")
    ));
    let missing = tempfile::tempdir().unwrap();
    assert!(matches!(Wallet::open(missing.path(), Network::Regtest), Err(WalletError::Missing(_))));
    let debug = format!("{w:?}");
    assert!(!debug.contains("abandon") && !debug.contains("prv"), "no secret in Debug: {debug}");
}

#[test]
fn sync_fund_a_channel_and_follow_a_reorg() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::in_memory();
    let chain = EmbeddedChain::new(node.clone());
    let mut w = Wallet::create(dir.path(), Network::Regtest, None).unwrap();
    let addr = w.new_address().unwrap();
    node.mine(101, &addr.script_pubkey()).unwrap();
    let r = w.sync(&chain).unwrap();
    assert_eq!(r.height, 101);
    let b = w.balance();
    assert_eq!(b.confirmed, Amount::from_int_btc(100), "coinbases 1 and 2 are spendable");
    assert_eq!(b.immature, Amount::from_int_btc(99 * 50));

    // Fund a channel: the deposit pays the channel script; the node accepts it.
    let script = channel_script(node.now() as u32 + 86_400);
    let spk = script.script_pubkey(OutputKind::P2wsh);
    let fee_rate = FeeRate::from_sat_per_vb(2).unwrap();
    let (funding, fee) = w.build_payment(spk, Amount::from_sat(100_000), fee_rate).unwrap();
    let f = FundingOutput::find(&funding, &script).unwrap();
    assert_eq!(f.value, Amount::from_sat(100_000));
    assert!(fee >= fee_rate.fee_wu(funding.weight()).unwrap(), "the fee rate is met");
    let txid = chain.broadcast(&funding).unwrap();
    let hash = node.mine(1, &p2wpkh(&key(9))).unwrap()[0];
    w.sync(&chain).unwrap();
    let after = w.balance();
    assert_eq!(after.confirmed, Amount::from_int_btc(150) - Amount::from_sat(100_000) - fee);

    // The block is reorged out and another branch overtakes it: the wallet follows it.
    node.invalidate_block(hash).unwrap();
    assert!(node.mempool_txids().contains(&txid), "the funding is back in the mempool");
    let r = w.sync(&chain).unwrap();
    assert_eq!(r.mempool, 1);
    let branch = node.mine(2, &p2wpkh(&key(9))).unwrap();
    let r = w.sync(&chain).unwrap();
    assert_eq!((r.height, w.synced_height()), (103, 103));
    assert!(r.blocks >= 2, "re-applied from the fork point");
    let (_, loc) = node.transaction(&txid).unwrap();
    assert_eq!(loc.unwrap().block, branch[0], "the funding confirmed on the new branch");
    assert_eq!(w.balance().trusted_pending, Amount::ZERO);
    // At height 103 the coinbases of heights 1 to 4 are spendable.
    assert_eq!(w.balance().confirmed, Amount::from_int_btc(200) - Amount::from_sat(100_000) - fee);

    // Spend to an outside address; more than the balance is refused with a clear error.
    let other =
        paychan_core::bitcoin::Address::from_script(&p2wpkh(&key(5)), Network::Regtest).unwrap();
    let sent = w.send(&chain, &other, Amount::from_int_btc(1), fee_rate).unwrap();
    assert!(node.mempool_txids().contains(&sent));
    assert!(matches!(
        w.send(&chain, &other, Amount::from_int_btc(10_000), fee_rate),
        Err(WalletError::Build(_))
    ));
    assert!(node.utxo(&OutPoint { txid: sent, vout: 0 }, true).is_some());
}

#[test]
fn channel_keys_are_never_issued_twice() {
    use paychan_wallet::KeyChain;
    let dir = tempfile::tempdir().unwrap();
    let w = Wallet::create(dir.path(), Network::Regtest, Some(WORDS)).unwrap();
    let merchant = w.key_chain(KeyChain::MERCHANT).unwrap();
    let (i0, k0) = merchant.issue().unwrap();
    let (i1, k1) = merchant.issue().unwrap();
    assert_eq!((i0, i1), (0, 1));
    assert_ne!(k0, k1);
    // The customer account is a separate chain.
    let customer = w.key_chain(KeyChain::CUSTOMER).unwrap();
    let (c0, ck0) = customer.issue().unwrap();
    assert_eq!(c0, 0);
    assert_ne!(ck0, k0);
    drop(merchant);
    // After a restart the counter continues; derivation is deterministic.
    let again = w.key_chain(KeyChain::MERCHANT).unwrap();
    let (i2, k2) = again.issue().unwrap();
    assert_eq!(i2, 2);
    assert!(k2 != k0 && k2 != k1);
    let s1 = again.secret(1).unwrap();
    assert_eq!(
        paychan_core::bitcoin::secp256k1::PublicKey::from_secret_key(
            paychan_core::sig::secp(),
            &s1
        ),
        k1
    );
}

/// Each network's wallet: BIP 84 coin type 0 on mainnet and 1 elsewhere, and the network's
/// address prefix.
#[test]
fn each_network_has_its_coin_type_and_address_prefix() {
    use paychan_core::network::NetworkParams;
    for (name, hrp) in
        [("bitcoin", "bc1q"), ("testnet4", "tb1q"), ("signet", "tb1q"), ("regtest", "bcrt1q")]
    {
        let n = NetworkParams::parse(name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut w = paychan_wallet::Wallet::create(dir.path(), n.network, None).unwrap();
        let descriptor = w.public_descriptor();
        assert!(descriptor.contains(&format!("/84'/{}'/0']", n.coin_type)), "{name}: {descriptor}");
        let prefix = if n.coin_type == 0 { "xpub" } else { "tpub" };
        assert!(descriptor.contains(prefix), "{name}: {descriptor}");
        let a = w.new_address().unwrap().to_string();
        assert!(a.starts_with(hrp), "{name}: {a}");
        // Reopened on another network: refused.
        drop(w);
        let other = if n.network == paychan_core::bitcoin::Network::Bitcoin {
            paychan_core::bitcoin::Network::Regtest
        } else {
            paychan_core::bitcoin::Network::Bitcoin
        };
        assert!(paychan_wallet::Wallet::open(dir.path(), other).is_err(), "{name}");
    }
}

/// A wallet born at a height reads no block below it (a fresh wallet on a real network need
/// not read the chain from genesis, which a pruned node no longer has), yet sees what comes
/// after; the mempool transactions it has read are not fetched again at the next sync.
#[test]
fn a_wallet_starts_at_its_birthday_and_reads_each_mempool_transaction_once() {
    use paychan_harness::chain::Instrumented;
    let node = Node::in_memory();
    node.mine(150, &p2wpkh(&key(9))).unwrap();
    let source = Instrumented::new(EmbeddedChain::new(node.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut w = Wallet::create(dir.path(), Network::Regtest, None).unwrap();
    assert_eq!(w.birthday(), 0);
    w.set_birthday(150).unwrap();
    assert_eq!(w.birthday(), 150);
    let mine = w.new_address().unwrap();
    w.sync(&source).unwrap();
    assert_eq!(source.fetched().len(), 1, "the birthday's block only");
    assert_eq!(w.synced_height(), 150);

    node.mine(2, &mine.script_pubkey()).unwrap();
    source.reset();
    w.sync(&source).unwrap();
    assert_eq!(source.fetched().len(), 2);
    // Two coinbases of 25 BTC (regtest halves every 150 blocks).
    assert_eq!(w.balance().immature, Amount::from_int_btc(50), "its coinbases are seen");

    // A payment to the wallet waits in the mempool: read once, not at every sync.
    node.mine(100, &p2wpkh(&key(9))).unwrap();
    w.sync(&source).unwrap();
    let to = w.new_address().unwrap().script_pubkey();
    let (tx, _) = w
        .build_payment(to, Amount::from_sat(10_000), FeeRate::from_sat_per_vb(2).unwrap())
        .unwrap();
    source.broadcast(&tx).unwrap();
    source.reset();
    w.sync(&source).unwrap();
    assert_eq!(source.calls("mempool_transaction"), 1);
    w.sync(&source).unwrap();
    assert_eq!(source.calls("mempool_transaction"), 1, "already read");
}
