//! The ChainView: confirmations and spends of watched fundings from blocks read once each,
//! with a stored cursor, against a node without a transaction index; its cost in calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use paychan_chain::{ChainSource, ChainView, EmbeddedChain, Lookback};
use paychan_core::bitcoin::{Amount, OutPoint, Transaction, TxOut};
use paychan_harness::chain::Instrumented;
use paychan_harness::fixtures::{key, p2wpkh, spend_p2wpkh};
use paychan_node::Node;

type Counted = Arc<Instrumented<EmbeddedChain>>;

/// A node with 101 + `coins` blocks (their coinbases spendable by key 9), not indexing
/// transactions, and a counting source over it.
fn setup(coins: u32) -> (Node, Counted) {
    let node = Node::in_memory();
    assert!(!node.txindex(), "the embedded node keeps no transaction index by default");
    node.mine(101 + coins, &p2wpkh(&key(9))).unwrap();
    (node.clone(), Arc::new(Instrumented::new(EmbeddedChain::new(node))))
}

/// A "funding": the coinbase at `height` paid to one key-9 output.
fn funding(node: &Node, height: u32) -> Transaction {
    let (block, _) = node.block(&node.block_hash(height).unwrap()).unwrap();
    let cb = &block.txdata[0];
    let prev = cb.output[0].clone();
    let out = TxOut { value: prev.value - Amount::from_sat(1_000), script_pubkey: p2wpkh(&key(9)) };
    spend_p2wpkh(&[(OutPoint { txid: cb.compute_txid(), vout: 0 }, prev)], vec![out], &key(9))
}

/// A spend of `funding`'s output.
fn spend(funding: &Transaction, to: u8) -> Transaction {
    let prev = funding.output[0].clone();
    let out =
        TxOut { value: prev.value - Amount::from_sat(1_000), script_pubkey: p2wpkh(&key(to)) };
    let op = OutPoint { txid: funding.compute_txid(), vout: 0 };
    spend_p2wpkh(&[(op, prev)], vec![out], &key(9))
}

/// A funding of the coinbase at height 1, submitted and mined in `blocks` blocks.
fn mined_funding(node: &Node, blocks: u32) -> (Transaction, OutPoint) {
    let f = funding(node, 1);
    let id = OutPoint { txid: f.compute_txid(), vout: 0 };
    node.submit(f.clone(), None).unwrap();
    node.mine(blocks, &p2wpkh(&key(8))).unwrap();
    (f, id)
}

fn view(source: &Counted, cursor: Option<std::path::PathBuf>) -> ChainView {
    ChainView::open(source.clone() as Arc<dyn ChainSource>, cursor).unwrap()
}

/// Many channels cost nothing per block: a sync reads the tip and each new block once,
/// however many fundings are watched; each funding is looked up once (`gettxout`), when it
/// is first watched.
#[test]
fn a_sync_costs_one_call_per_new_block_not_one_per_channel() {
    let (node, source) = setup(60);
    let v = view(&source, None);
    let fundings: Vec<Transaction> = (1..=50).map(|h| funding(&node, h)).collect();
    for f in &fundings {
        node.submit(f.clone(), None).unwrap();
        v.watch(OutPoint { txid: f.compute_txid(), vout: 0 }, Lookback::Never);
    }
    v.sync().unwrap();
    assert_eq!(source.calls("utxo"), 50, "one lookup per funding, once");
    assert!(fundings.iter().all(|f| v.confirmations(&f.compute_txid()) == 0));

    node.mine(1, &p2wpkh(&key(8))).unwrap();
    source.reset();
    v.sync().unwrap();
    assert_eq!(source.calls("tip"), 1);
    assert_eq!(source.calls("block"), 1, "{:?}", source.all_calls());
    assert_eq!(source.all_calls().values().sum::<u64>(), 2, "{:?}", source.all_calls());
    assert!(fundings.iter().all(|f| v.confirmations(&f.compute_txid()) == 1));

    node.mine(5, &p2wpkh(&key(8))).unwrap();
    source.reset();
    v.sync().unwrap();
    // The tip, then each block once: by hash for all but the tip, whose hash the tip gave.
    assert_eq!(source.calls("block"), 5);
    assert_eq!(source.calls("block_hash"), 4);
    assert_eq!(source.all_calls().values().sum::<u64>(), 10, "{:?}", source.all_calls());
    assert!(fundings.iter().all(|f| v.confirmations(&f.compute_txid()) == 6));

    source.reset();
    v.sync().unwrap();
    assert_eq!(source.all_calls().values().sum::<u64>(), 1, "nothing new: the tip only");
}

/// Confirmations and the spending transaction come from the blocks: the node cannot find
/// either by txid (no index), yet the view knows both, and forgets them when a reorg takes
/// their blocks away.
#[test]
fn confirmations_and_spends_come_from_blocks_and_follow_a_reorg() {
    let (node, source) = setup(5);
    let v = view(&source, None);
    let f = funding(&node, 1);
    let id = OutPoint { txid: f.compute_txid(), vout: 0 };
    v.watch(id, Lookback::Never);
    node.submit(f.clone(), None).unwrap();
    v.sync().unwrap();
    node.mine(3, &p2wpkh(&key(8))).unwrap();
    v.sync().unwrap();
    assert_eq!(v.confirmations(&id.txid), 3);
    assert_eq!(source.mempool_transaction(&id.txid).unwrap(), None, "confirmed: not found by txid");

    let s = spend(&f, 7);
    node.submit(s.clone(), None).unwrap();
    v.sync().unwrap();
    assert_eq!(v.spend(&id), None, "in the mempool only");
    assert!(source.in_mempool(&s.compute_txid()).unwrap());
    let b = node.mine(1, &p2wpkh(&key(8))).unwrap()[0];
    v.sync().unwrap();
    let seen = v.spend(&id).unwrap();
    assert_eq!(seen.tx, s, "the spending transaction itself, from its block");
    assert_eq!(seen.height, node.tip().0);

    // The spend's block leaves the chain: the spend is forgotten; mined again, it is back.
    node.invalidate_block(b).unwrap();
    v.sync().unwrap();
    assert_eq!(v.spend(&id), None);
    assert_eq!(v.confirmations(&id.txid), 3);
    node.mine(2, &p2wpkh(&key(6))).unwrap();
    v.sync().unwrap();
    assert_eq!(v.spend(&id).unwrap().tx, s);
}

/// A view stopped and opened again from its stored cursor reads only the blocks mined while
/// it was down, each once, and finds a spend among them; a cursor not committed (a crash
/// before the driver acted) makes it read those blocks again.
#[test]
fn a_view_resumes_from_its_cursor_reading_each_block_once() {
    let (node, source) = setup(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    let (f, id) = mined_funding(&node, 1);
    {
        let v = view(&source, Some(path.clone()));
        v.watch(id, Lookback::Never);
        v.sync().unwrap();
        assert_eq!(v.confirmations(&id.txid), 1);
        v.commit().unwrap();
    }
    // Down: 30 blocks, the funding spent in the 10th.
    node.mine(9, &p2wpkh(&key(8))).unwrap();
    node.submit(spend(&f, 7), None).unwrap();
    node.mine(21, &p2wpkh(&key(8))).unwrap();
    let new_blocks: Vec<_> =
        (node.tip().0 - 29..=node.tip().0).map(|h| node.block_hash(h).unwrap()).collect();
    source.reset();
    {
        let v = view(&source, Some(path.clone()));
        v.watch(id, Lookback::To { height: 0, time: 0 });
        v.sync().unwrap();
        assert_eq!(source.fetched(), new_blocks, "only the blocks since the cursor, once each");
        assert_eq!(v.spend(&id).unwrap().height, node.tip().0 - 20);
        // Not committed: as if the process died before acting on it.
    }
    source.reset();
    let v = view(&source, Some(path.clone()));
    v.watch(id, Lookback::To { height: 0, time: 0 });
    v.sync().unwrap();
    assert_eq!(source.fetched(), new_blocks, "read again, since nobody acted on them");
    assert!(v.spend(&id).is_some());
    v.commit().unwrap();
    source.reset();
    let v = view(&source, Some(path));
    v.sync().unwrap();
    assert!(source.fetched().is_empty(), "committed: nothing to read again");
}

/// A channel whose funding was spent before the view's cursor (its cursor lost, or its store
/// restored from an older backup) finds the spend by reading back, once, no further than the
/// funding's own block; a funding never confirmed is not looked for.
#[test]
fn a_spend_before_the_cursor_is_found_by_reading_back_to_the_funding() {
    let (node, source) = setup(5);
    let f = funding(&node, 1);
    let id = OutPoint { txid: f.compute_txid(), vout: 0 };
    node.submit(f.clone(), None).unwrap();
    node.mine(1, &p2wpkh(&key(8))).unwrap();
    node.mine(4, &p2wpkh(&key(8))).unwrap();
    let s = spend(&f, 7);
    node.submit(s.clone(), None).unwrap();
    node.mine(10, &p2wpkh(&key(8))).unwrap();

    // A fresh view (no cursor) starts at the tip.
    let v = view(&source, None);
    v.sync().unwrap();
    source.reset();
    v.watch(id, Lookback::To { height: 0, time: 0 });
    v.sync().unwrap();
    assert_eq!(v.spend(&id).unwrap().tx, s);
    // From below the view's first block (the tip) back to the spend's block: 9 blocks.
    assert_eq!(source.calls("block"), 9, "{:?}", source.all_calls());
    source.reset();
    v.sync().unwrap();
    assert_eq!(source.calls("block"), 0, "looked back once only");

    // Watched as new (awaiting confirmations), an unknown output is not looked for.
    let other = OutPoint { txid: funding(&node, 2).compute_txid(), vout: 0 };
    v.watch(other, Lookback::Never);
    source.reset();
    v.sync().unwrap();
    assert_eq!(source.calls("block"), 0);
    assert_eq!(v.spend(&other), None);

    // An unspent funding confirmed long ago: dated by gettxout, no block read.
    let g = funding(&node, 3);
    node.submit(g.clone(), None).unwrap();
    node.mine(7, &p2wpkh(&key(8))).unwrap();
    let gid = OutPoint { txid: g.compute_txid(), vout: 0 };
    let fresh = view(&source, None);
    fresh.sync().unwrap();
    source.reset();
    fresh.watch(gid, Lookback::To { height: 0, time: 0 });
    fresh.sync().unwrap();
    assert_eq!(fresh.confirmations(&gid.txid), 7);
    assert_eq!(source.calls("block"), 0);
}

/// The time floor: a look back stops at blocks stamped well before the channel could exist.
#[test]
fn a_look_back_stops_at_the_time_floor() {
    let (node, source) = setup(5);
    let f = funding(&node, 1);
    let id = OutPoint { txid: f.compute_txid(), vout: 0 };
    // Never broadcast: a look back without a floor would read to genesis.
    node.mine(20, &p2wpkh(&key(8))).unwrap();
    let v = view(&source, None);
    v.sync().unwrap();
    source.reset();
    let tip_time = node.block(&node.tip().1).unwrap().0.header.time;
    v.watch(id, Lookback::To { height: 0, time: tip_time + Lookback::TIME_SLACK + 1_000 });
    v.sync().unwrap();
    assert_eq!(v.spend(&id), None);
    assert_eq!(source.calls("block"), 1, "the first block read is already too old");
}

/// A funding confirmed before the view began and spent since is confirmed at least as deep
/// as its spend: never reported unconfirmed (which would take an open channel back to
/// awaiting its funding).
#[test]
fn a_spent_funding_is_at_least_as_confirmed_as_its_spend() {
    let (node, source) = setup(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    let (f, id) = mined_funding(&node, 3);
    let v = view(&source, Some(path.clone()));
    v.sync().unwrap();
    v.commit().unwrap();
    drop(v);
    node.submit(spend(&f, 7), None).unwrap();
    node.mine(2, &p2wpkh(&key(8))).unwrap();
    let v = view(&source, Some(path));
    v.watch(id, Lookback::To { height: 0, time: 0 });
    v.sync().unwrap();
    assert!(v.spend(&id).is_some());
    assert_eq!(v.confirmations(&id.txid), 2, "the spend's depth");
}

/// The node goes away part way through a sync: the blocks read before are not lost (a spend
/// in them is kept), and the next sync reads only the rest.
#[test]
fn a_sync_cut_short_keeps_what_it_read() {
    let (node, source) = setup(5);
    let (f, id) = mined_funding(&node, 1);
    let v = view(&source, None);
    v.watch(id, Lookback::Never);
    v.sync().unwrap();
    node.mine(1, &p2wpkh(&key(8))).unwrap();
    node.submit(spend(&f, 7), None).unwrap();
    node.mine(4, &p2wpkh(&key(8))).unwrap();
    source.reset();
    *source.block_budget.lock().unwrap() = Some(3);
    v.sync().unwrap();
    assert_eq!(v.spend(&id).map(|s| s.height), Some(node.tip().0 - 3), "the spend was read");
    *source.block_budget.lock().unwrap() = None;
    v.sync().unwrap();
    assert_eq!(source.fetched().len(), 5, "3 before the cut, then the 2 left, each once");
}
