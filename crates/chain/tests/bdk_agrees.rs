//! BDK agrees: a `bdk_wallet` synced through `bdk_bitcoind_rpc::Emitter` from the node's RPC
//! sees the balance the node's UTXO set says, and its own transaction, broadcast through the
//! RPC, is mined. The proof that the RPC is faithful to bitcoind's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bdk_bitcoind_rpc::bitcoincore_rpc::RpcApi;
use bdk_bitcoind_rpc::{Emitter, NO_EXPECTED_MEMPOOL_TXS};
use bdk_wallet::{KeychainKind, SignOptions, Wallet};
use paychan_core::bitcoin::{Address, Amount, CompressedPublicKey, FeeRate, Network};
use paychan_harness::fixtures::{key, pubkey};

// A BIP 84 test key (regtest), public test vector material: never for real funds.
const XPRV: &str = "tprv8ZgxMBicQKsPd1EzCPZcQSPhsotX5HvRDCivA7ASNQFmjWuTsW3WWEwUNKFAZrnD9qpz55rtyLdphqkwRZUqNWYXwSEzd6P4pYvXGByRim3";

fn sync(wallet: &mut Wallet, client: &bdk_bitcoind_rpc::bitcoincore_rpc::Client) {
    let mut emitter = Emitter::new(client, wallet.latest_checkpoint(), 0, NO_EXPECTED_MEMPOOL_TXS);
    while let Some(ev) = emitter.next_block().unwrap() {
        let height = ev.block_height();
        let connected_to = ev.connected_to();
        wallet.apply_block_connected_to(&ev.block, height, connected_to).unwrap();
    }
    let mempool = emitter.mempool().unwrap();
    wallet.apply_unconfirmed_txs(mempool.update);
}

#[test]
fn bdk_wallet_syncs_and_spends_through_the_rpc() {
    let r = common::start();
    let rpc = r.rpc();
    let client = rpc.client();
    let mut wallet = Wallet::create(
        format!("wpkh({XPRV}/84'/1'/0'/0/*)"),
        format!("wpkh({XPRV}/84'/1'/0'/1/*)"),
    )
    .network(Network::Regtest)
    .create_wallet_no_persist()
    .unwrap();
    let addr = wallet.reveal_next_address(KeychainKind::External).address;
    client.generate_to_address(101, &addr).unwrap();
    let other = Address::p2wpkh(&CompressedPublicKey(pubkey(&key(5))), Network::Regtest);
    sync(&mut wallet, &client);

    // What the node's UTXO set holds for the wallet's address.
    let mut node_total = Amount::ZERO;
    let mut node_mature = Amount::ZERO;
    for h in 1..=101u64 {
        let block = client.get_block(&client.get_block_hash(h).unwrap()).unwrap();
        let cb = block.txdata[0].compute_txid();
        if let Some(out) = client.get_tx_out(&cb, 0, Some(true)).unwrap() {
            node_total += out.value;
            if out.confirmations >= 100 {
                node_mature += out.value;
            }
        }
    }
    let balance = wallet.balance();
    assert_eq!(balance.total(), node_total);
    assert_eq!(balance.confirmed, node_mature);
    assert_eq!(balance.immature, node_total - node_mature);
    // Coinbases at heights 1 and 2 can be spent in the next block (Core's maturity rule).
    assert_eq!(node_mature, Amount::from_int_btc(100));

    // The wallet builds, signs and broadcasts through the RPC; the node mines it.
    let mut builder = wallet.build_tx();
    builder.add_recipient(other.script_pubkey(), Amount::from_int_btc(1));
    builder.fee_rate(FeeRate::from_sat_per_vb(2).unwrap());
    let mut psbt = builder.finish().unwrap();
    #[allow(deprecated)]
    let signed = wallet.sign(&mut psbt, SignOptions::default()).unwrap();
    assert!(signed);
    let tx = psbt.extract_tx().unwrap();
    let fee = wallet.calculate_fee(&tx).unwrap();
    let txid = client.send_raw_transaction(&tx).unwrap();
    assert_eq!(txid, tx.compute_txid());
    sync(&mut wallet, &client);
    assert_eq!(
        wallet.balance().trusted_pending + wallet.balance().confirmed,
        Amount::from_int_btc(99) - fee
    );
    client.generate_to_address(1, &other).unwrap();
    sync(&mut wallet, &client);
    let wtx = wallet.get_tx(txid).unwrap();
    assert!(wtx.chain_position.is_confirmed(), "mined, as BDK sees it");
    // One more coinbase (height 3) matured meanwhile.
    let after = wallet.balance();
    assert_eq!(after.confirmed, Amount::from_int_btc(149) - fee);
    let paid = client
        .get_tx_out(&txid, 0, Some(true))
        .unwrap()
        .or(client.get_tx_out(&txid, 1, Some(true)).unwrap());
    assert!(paid.is_some());
}
