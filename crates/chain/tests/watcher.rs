//! The ChainWatcher through a reorg, over the embedded node and over RPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use paychan_chain::{ChainEvent, ChainSource, ChainWatcher, EmbeddedChain};
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut};
use paychan_harness::chain::Instrumented;
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
    assert!(w.source().in_mempool(&sid).unwrap());
    let b3 = node.mine(1, &p2wpkh(&key(8))).unwrap()[0];
    let ev = w.poll().unwrap();
    assert!(ev.iter().any(|e| matches!(e, ChainEvent::Spent { outpoint, by, block, .. } if outpoint.txid == fid && *by == sid && block.hash == b3)), "{ev:?}");
    assert!(!w.source().in_mempool(&sid).unwrap());
    assert_eq!(w.source().utxo(&OutPoint { txid: fid, vout: 0 }).unwrap(), None);
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

fn counting(node: &Node) -> Instrumented<EmbeddedChain> {
    Instrumented::new(EmbeddedChain::new(node.clone()))
}

/// A watcher stopped and resumed from its saved cursor reads only the blocks mined while it
/// was down, each once; a reorg across the cursor is walked back, and a spend in the new
/// branch is reported.
#[test]
fn a_resumed_watcher_reads_each_block_once_and_follows_a_reorg_across_its_cursor() {
    use paychan_chain::Cursor;
    let node = Node::in_memory();
    node.mine(101, &p2wpkh(&key(9))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    assert_eq!(Cursor::load(&path).unwrap(), None);

    let mut w = ChainWatcher::new(counting(&node), 0, 6);
    w.poll().unwrap();
    assert_eq!(w.source().fetched().len(), 102, "genesis and 101 blocks, once");
    w.cursor().save(&path).unwrap();
    let saved_tip = w.tip().unwrap();
    drop(w);

    // Down while 50 blocks are mined.
    node.mine(50, &p2wpkh(&key(8))).unwrap();
    let cursor = Cursor::load(&path).unwrap().unwrap();
    assert_eq!(cursor.blocks.len(), 102, "every block seen, fewer than Cursor::KEEP");
    assert_eq!(cursor.blocks.last().copied(), Some(saved_tip));
    let mut w = ChainWatcher::resume(counting(&node), cursor, 6);
    let ev = w.poll().unwrap();
    let fetched = w.source().fetched();
    assert_eq!(fetched.len(), 50, "only the new blocks");
    let mut unique = fetched.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "each once");
    assert_eq!(ev.iter().filter(|e| matches!(e, ChainEvent::BlockConnected(_))).count(), 50);
    assert!(!ev.iter().any(|e| matches!(e, ChainEvent::BlockDisconnected(_))));
    w.cursor().save(&path).unwrap();
    assert_eq!(w.cursor().blocks.len(), Cursor::KEEP, "the newest blocks only");
    drop(w);

    // Down again; the chain reorganises across the saved cursor: its last 3 blocks are
    // replaced by a longer branch in which a watched outpoint is spent.
    let tip = node.tip();
    let fork = node.block_hash(tip.0 - 2).unwrap();
    node.invalidate_block(fork).unwrap();
    let spend = spend_coinbase(&node, 2, p2wpkh(&key(7)));
    let coin = spend.input[0].previous_output;
    node.submit(spend.clone(), None).unwrap();
    let new_branch = node.mine(5, &p2wpkh(&key(6))).unwrap();
    let mut w = ChainWatcher::resume(counting(&node), Cursor::load(&path).unwrap().unwrap(), 6);
    w.watch_outpoint(coin);
    let ev = w.poll().unwrap();
    let gone: Vec<_> = ev
        .iter()
        .filter_map(
            |e| if let ChainEvent::BlockDisconnected(b) = e { Some(b.height) } else { None },
        )
        .collect();
    assert_eq!(gone, [tip.0, tip.0 - 1, tip.0 - 2], "walked back over the cursor's stale blocks");
    let mut fetched = w.source().fetched();
    fetched.sort();
    let mut expected = new_branch.clone();
    expected.sort();
    assert_eq!(fetched, expected, "only the new branch, each block once");
    assert!(
        ev.iter().any(|e| matches!(e, ChainEvent::Spent { outpoint, by, .. } if *outpoint == coin && *by == spend.compute_txid())),
        "{ev:?}"
    );
    assert_eq!(w.tip().map(|b| b.hash), new_branch.last().copied());
}

#[test]
fn a_damaged_cursor_is_refused_naming_the_line() {
    use paychan_chain::Cursor;
    let hash = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
    assert!(Cursor::decode(&format!("0 {hash}\n")).is_ok());
    for bad in [format!("0 {hash}\n2 {hash}\n"), "x y\n".to_string(), "7\n".to_string()] {
        let e = Cursor::decode(&bad).unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
    }
}
