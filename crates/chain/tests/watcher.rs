//! The ChainWatcher through a reorg, over the embedded node and over RPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use paychan_chain::{ChainEvent, ChainSource, ChainWatcher, EmbeddedChain};
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut};
use paychan_harness::fixtures::{key, p2wpkh, spend_p2wpkh};
use paychan_node::Node;

/// Spends the coinbase at `height` (P2WPKH of key 9) to one output; returns the tx.
fn spend_coinbase(node: &Node, height: u32, to: ScriptBuf) -> Transaction {
    let (block, _) = node.block(&node.block_hash(height).unwrap()).unwrap();
    let cb = &block.txdata[0];
    let prev = cb.output[0].clone();
    let out = TxOut { value: prev.value - Amount::from_sat(1_000), script_pubkey: to };
    spend_p2wpkh(&[(OutPoint { txid: cb.compute_txid(), vout: 0 }, prev)], vec![out], &key(9))
}

fn run_reorg_scenario<C: ChainSource>(node: &Node, source: C) {
    node.mine(101, &p2wpkh(&key(9))).unwrap();
    let mut w = ChainWatcher::new(source, 0, 6);
    w.poll().unwrap();
    // A "funding" transaction, watched before it confirms, and its output watched for a spend.
    let funding = spend_coinbase(node, 1, p2wpkh(&key(9)));
    let fid = funding.compute_txid();
    w.watch_tx(fid);
    w.watch_outpoint(OutPoint { txid: fid, vout: 0 });
    node.submit(funding.clone(), None).unwrap();
    assert!(w.poll().unwrap().is_empty(), "nothing confirmed yet");
    let b1 = node.mine(1, &p2wpkh(&key(8))).unwrap()[0];
    let ev = w.poll().unwrap();
    assert!(ev.iter().any(|e| matches!(e, ChainEvent::Confirmed { txid, confirmations: 1, block } if *txid == fid && block.hash == b1)), "{ev:?}");
    node.mine(2, &p2wpkh(&key(8))).unwrap();
    let ev = w.poll().unwrap();
    assert!(
        ev.iter().any(
            |e| matches!(e, ChainEvent::Confirmed { txid, confirmations: 3, .. } if *txid == fid)
        ),
        "{ev:?}"
    );

    // Reorg: the funding's block is invalidated.
    node.invalidate_block(b1).unwrap();
    let ev = w.poll().unwrap();
    assert!(
        ev.iter().any(|e| matches!(e, ChainEvent::BlockDisconnected(b) if b.hash == b1)),
        "{ev:?}"
    );
    assert!(ev.contains(&ChainEvent::Unconfirmed { txid: fid }), "{ev:?}");
    assert_eq!(ev.iter().filter(|e| matches!(e, ChainEvent::BlockDisconnected(_))).count(), 3);

    // The funding is back in the mempool; a new block confirms it again.
    assert!(node.mempool_txids().contains(&fid));
    let b2 = node.mine(1, &p2wpkh(&key(8))).unwrap()[0];
    let ev = w.poll().unwrap();
    assert!(ev.iter().any(|e| matches!(e, ChainEvent::Confirmed { txid, confirmations: 1, block } if *txid == fid && block.hash == b2)), "{ev:?}");

    // The watched outpoint is spent: the spender's txid is reported.
    let (fblock, _) = node.block(&b2).unwrap();
    assert!(fblock.txdata.iter().any(|t| t.compute_txid() == fid));
    let prev = funding.output[0].clone();
    let out = TxOut { value: prev.value - Amount::from_sat(1_000), script_pubkey: p2wpkh(&key(7)) };
    let spend = spend_p2wpkh(&[(OutPoint { txid: fid, vout: 0 }, prev)], vec![out], &key(9));
    let sid = w.source().broadcast(&spend).unwrap();
    assert_eq!(
        w.source().spent_by(&OutPoint { txid: fid, vout: 0 }, 0).unwrap(),
        Some((sid, None))
    );
    let b3 = node.mine(1, &p2wpkh(&key(8))).unwrap()[0];
    let ev = w.poll().unwrap();
    assert!(ev.iter().any(|e| matches!(e, ChainEvent::Spent { outpoint, by, block } if outpoint.txid == fid && *by == sid && block.hash == b3)), "{ev:?}");
    let h3 = node.tip().0;
    assert_eq!(
        w.source().spent_by(&OutPoint { txid: fid, vout: 0 }, 0).unwrap(),
        Some((sid, Some(h3)))
    );
}

#[test]
fn watcher_follows_a_reorg_on_the_embedded_node() {
    let node = Node::in_memory();
    run_reorg_scenario(&node, EmbeddedChain::new(node.clone()));
}

#[test]
fn watcher_follows_a_reorg_over_rpc() {
    let r = common::start();
    run_reorg_scenario(&r.node, r.rpc());
}
