//! The node's data directory.
//!
//! * `blocks.dat` — every block ever accepted, appended as `len (u32 LE) ‖ block`, fsynced per
//!   block. The chain and the UTXO set are rebuilt from it at start: a killed node restarts with
//!   the same tip and UTXO set. A torn last record (a crash mid-append) is cut off.
//! * `mempool.dat` — mempool transactions, appended on acceptance (not fsynced: it survives a
//!   killed process, like the OS page cache it sits in, not a power cut) and rewritten after each
//!   block.
//! * `state.json` — mock time and invalidated blocks, replaced atomically.
//! * `.cookie` — the RPC cookie (mode 0600), written by the RPC server.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use paychan_core::bitcoin::consensus::encode::{deserialize, serialize};
use paychan_core::bitcoin::{Block, BlockHash, Transaction};
use serde_json::json;

use crate::NodeError;

/// What the data directory holds at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub blocks: Vec<Block>,
    pub mempool: Vec<Transaction>,
    pub mock_time: Option<u64>,
    pub invalid: Vec<BlockHash>,
}

#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    blocks: File,
    mempool: File,
}

fn read_log(path: &Path) -> Result<(Vec<Vec<u8>>, u64), NodeError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| NodeError::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(NodeError::io(path, e)),
    }
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Some(len) = bytes.get(pos..pos + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        match bytes.get(pos + 4..pos + 4 + len) {
            Some(r) => records.push(r.to_vec()),
            None => break,
        }
        pos += 4 + len;
    }
    Ok((records, pos as u64))
}

fn open_append(path: &Path, good_len: u64) -> Result<File, NodeError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| NodeError::io(path, e))?;
    // Cut a torn tail left by a crash mid-append.
    f.set_len(good_len).map_err(|e| NodeError::io(path, e))?;
    Ok(f)
}

fn record(bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(bytes.len() + 4);
    r.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    r.extend_from_slice(bytes);
    r
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Loaded), NodeError> {
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        let blocks_path = dir.join("blocks.dat");
        let mempool_path = dir.join("mempool.dat");
        let (block_records, blocks_len) = read_log(&blocks_path)?;
        let (mempool_records, mempool_len) = read_log(&mempool_path)?;
        let mut loaded = Loaded::default();
        for r in block_records {
            let b: Block = deserialize(&r).map_err(|e| {
                NodeError::Corrupt(format!("blocks.dat holds an undecodable block: {e}"))
            })?;
            loaded.blocks.push(b);
        }
        for r in mempool_records {
            if let Ok(tx) = deserialize(&r) {
                loaded.mempool.push(tx);
            }
        }
        let state_path = dir.join("state.json");
        match fs::read(&state_path) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| NodeError::Corrupt(format!("state.json: {e}")))?;
                loaded.mock_time = v["mock_time"].as_u64().filter(|t| *t > 0);
                if let Some(list) = v["invalid"].as_array() {
                    for h in list {
                        let h = h.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                            NodeError::Corrupt("state.json: bad block hash in invalid".into())
                        })?;
                        loaded.invalid.push(h);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(&state_path, e)),
        }
        let store = Store {
            blocks: open_append(&blocks_path, blocks_len)?,
            mempool: open_append(&mempool_path, mempool_len)?,
            dir: dir.to_path_buf(),
        };
        Ok((store, loaded))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a block and fsyncs it.
    pub fn append_block(&mut self, block: &Block) -> Result<(), NodeError> {
        let path = self.dir.join("blocks.dat");
        self.blocks.write_all(&record(&serialize(block))).map_err(|e| NodeError::io(&path, e))?;
        self.blocks.sync_data().map_err(|e| NodeError::io(&path, e))
    }

    /// Appends a mempool transaction (no fsync: see the module documentation).
    pub fn append_mempool(&mut self, tx: &Transaction) -> Result<(), NodeError> {
        let path = self.dir.join("mempool.dat");
        self.mempool.write_all(&record(&serialize(tx))).map_err(|e| NodeError::io(&path, e))
    }

    /// Replaces the mempool file with `txs` (parents before children).
    pub fn rewrite_mempool<'a>(
        &mut self,
        txs: impl Iterator<Item = &'a Transaction>,
    ) -> Result<(), NodeError> {
        let path = self.dir.join("mempool.dat");
        let mut bytes = Vec::new();
        for tx in txs {
            bytes.extend_from_slice(&record(&serialize(tx)));
        }
        write_atomically(&path, &bytes)?;
        self.mempool = open_append(&path, bytes.len() as u64)?;
        Ok(())
    }

    /// Replaces `state.json`.
    pub fn write_state(
        &self,
        mock_time: Option<u64>,
        invalid: &[BlockHash],
    ) -> Result<(), NodeError> {
        let v = json!({
            "mock_time": mock_time.unwrap_or(0),
            "invalid": invalid.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        });
        write_atomically(&self.dir.join("state.json"), v.to_string().as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| NodeError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| NodeError::io(&tmp, e))?;
    f.sync_all().map_err(|e| NodeError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
