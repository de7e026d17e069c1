//! [`ChainSource`] over bitcoind's JSON-RPC (`bitcoincore-rpc`): a real `bitcoind` or
//! `paychan node`.

use std::path::PathBuf;

use bitcoincore_rpc::jsonrpc::error::Error as JsonRpcError;
use bitcoincore_rpc::{Auth, Client, Error as RpcClientError, RpcApi};
use paychan_core::bitcoin::{Block, BlockHash, FeeRate, OutPoint, Transaction, TxOut, Txid};

use crate::{BlockRef, ChainError, ChainSource, Utxo};

/// How to authenticate to the node.
#[derive(Debug, Clone)]
pub enum RpcAuth {
    /// A cookie file written by the node.
    CookieFile(PathBuf),
    /// A user name and password.
    UserPass(String, String),
}

/// A bitcoind JSON-RPC client.
pub struct BitcoindRpc {
    client: std::sync::RwLock<std::sync::Arc<Client>>,
    url: String,
    /// For an `https://` URL: whom to trust.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// With cookie authentication: the file and the cookie the client was built with. bitcoind
    /// writes a new cookie at every start, so the client is rebuilt when the file changes.
    cookie: Option<(PathBuf, std::sync::Mutex<String>)>,
    /// The rate used when the node has no fee estimate (a fresh node): Core's `-fallbackfee`.
    fallback_fee: FeeRate,
}

impl std::fmt::Debug for BitcoindRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoindRpc").field("url", &self.url).finish_non_exhaustive()
    }
}

const NOT_FOUND: i32 = -5;
const OUT_OF_RANGE: i32 = -8;
const ALREADY_IN_CHAIN: i32 = -27;
const METHOD_NOT_FOUND: i32 = -32601;

fn map(e: RpcClientError) -> ChainError {
    match e {
        RpcClientError::JsonRpc(JsonRpcError::Rpc(r)) => {
            ChainError::Node { code: r.code, message: r.message }
        }
        other => ChainError::Transport(other.to_string()),
    }
}

/// `getblock`'s errors: a pruned block is [`ChainError::Pruned`] (Core: code -1, "Block not
/// available (pruned data)").
fn block_error(hash: BlockHash, e: ChainError) -> ChainError {
    match e {
        ChainError::Node { message, .. } if message.contains("pruned data") => {
            ChainError::Pruned { hash, height: None }
        }
        other => other,
    }
}

/// A client of `url`: `jsonrpc`'s own HTTP transport, or HTTPS with `tls`.
fn connect(
    url: &str,
    auth: Auth,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, ChainError> {
    match tls {
        Some(config) if url.starts_with("https://") => {
            let (user, pass) = auth.get_user_pass().map_err(map)?;
            let transport = crate::https::HttpsTransport::new(url, user, pass, config.clone())
                .map_err(|e| ChainError::Transport(e.to_string()))?;
            Ok(Client::from_jsonrpc(bitcoincore_rpc::jsonrpc::Client::with_transport(transport)))
        }
        _ => Client::new(url, auth).map_err(map),
    }
}

impl BitcoindRpc {
    /// Connects to `url` (e.g. `http://127.0.0.1:18443`). An `https://` URL (a node behind a
    /// TLS terminator) trusts the system's root certificates; [`BitcoindRpc::new_tls`] takes
    /// another trust.
    ///
    /// # Errors
    /// [`ChainError::Transport`] when the cookie file cannot be read, the URL is invalid, or
    /// an `https://` URL finds no trusted roots on the system.
    pub fn new(url: &str, auth: RpcAuth) -> Result<Self, ChainError> {
        let tls = if url.starts_with("https://") {
            let config = paychan_transport::tls::client_config(None)
                .map_err(|e| ChainError::Transport(e.to_string()))?;
            Some(std::sync::Arc::new(config))
        } else {
            None
        };
        Self::new_tls(url, auth, tls)
    }

    /// Connects to `url`; an `https://` URL checks the node's certificate with `tls` (e.g.
    /// [`paychan_transport::tls::client_config`] with a private CA).
    ///
    /// # Errors
    /// [`ChainError::Transport`] when the cookie file cannot be read, the URL is invalid, or
    /// the URL is `https://` and `tls` is `None`.
    pub fn new_tls(
        url: &str,
        auth: RpcAuth,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ChainError> {
        if url.starts_with("https://") && tls.is_none() {
            return Err(ChainError::Transport(format!("{url}: HTTPS needs a TLS configuration")));
        }
        let cookie = match &auth {
            RpcAuth::CookieFile(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ChainError::Transport(format!("{}: {e}", p.display())))?;
                Some((p.clone(), std::sync::Mutex::new(text)))
            }
            RpcAuth::UserPass(..) => None,
        };
        let auth = match auth {
            RpcAuth::CookieFile(p) => Auth::CookieFile(p),
            RpcAuth::UserPass(u, p) => Auth::UserPass(u, p),
        };
        let client = connect(url, auth, tls.as_ref())?;
        Ok(BitcoindRpc {
            client: std::sync::RwLock::new(std::sync::Arc::new(client)),
            url: url.to_string(),
            tls,
            cookie,
            fallback_fee: FeeRate::BROADCAST_MIN,
        })
    }

    /// Uses `rate` when the node has no fee estimate (a fresh node, "Insufficient data or no
    /// feerate found"), with a warning each time; 1 sat/vB by default.
    #[must_use]
    pub fn with_fallback_fee(mut self, rate: FeeRate) -> Self {
        self.fallback_fee = rate.max(FeeRate::BROADCAST_MIN);
        self
    }

    /// The underlying client, for calls this trait does not cover. With cookie
    /// authentication, a node restarted since (with a new cookie) gets a new client.
    pub fn client(&self) -> std::sync::Arc<Client> {
        if let Some((path, seen)) = &self.cookie {
            if let Ok(now) = std::fs::read_to_string(path) {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if *seen != now {
                    if let Ok(c) =
                        connect(&self.url, Auth::CookieFile(path.clone()), self.tls.as_ref())
                    {
                        *self.client.write().unwrap_or_else(|p| p.into_inner()) =
                            std::sync::Arc::new(c);
                        *seen = now;
                    }
                }
            }
        }
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls any method with JSON parameters.
    ///
    /// # Errors
    /// The node's error or a transport error.
    pub fn call<T: for<'a> serde::Deserialize<'a>>(
        &self,
        method: &str,
        params: &[serde_json::Value],
    ) -> Result<T, ChainError> {
        self.client().call(method, params).map_err(map)
    }
}

impl ChainSource for BitcoindRpc {
    fn tip(&self) -> Result<BlockRef, ChainError> {
        // Height and hash from one call, so they always agree.
        let info = self.client().get_blockchain_info().map_err(map)?;
        Ok(BlockRef { height: info.blocks as u32, hash: info.best_block_hash })
    }

    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        match self.client().get_block_hash(u64::from(height)) {
            Ok(h) => Ok(Some(h)),
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) if r.code == OUT_OF_RANGE => {
                Ok(None)
            }
            Err(e) => Err(map(e)),
        }
    }

    fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        self.client().get_block(hash).map_err(|e| block_error(*hash, map(e)))
    }

    fn median_time_past(&self) -> Result<u32, ChainError> {
        Ok(self.client().get_blockchain_info().map_err(map)?.median_time as u32)
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        let txid = tx.compute_txid();
        match self.client().send_raw_transaction(tx) {
            Ok(t) => Ok(t),
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) => {
                let known = r.code == ALREADY_IN_CHAIN
                    || r.message.contains("txn-already-in-mempool")
                    || r.message.contains("txn-already-known");
                if known {
                    Ok(txid)
                } else {
                    Err(ChainError::Rejected { code: r.code, reason: r.message })
                }
            }
            Err(e) => Err(map(e)),
        }
    }

    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        use paychan_core::bitcoin::consensus::encode::serialize_hex;
        let hex: Vec<serde_json::Value> = txs.iter().map(|t| serialize_hex(t).into()).collect();
        let answer: serde_json::Value = match self
            .client()
            .call("submitpackage", &[serde_json::Value::Array(hex)])
        {
            Ok(v) => v,
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) if r.code == METHOD_NOT_FOUND => {
                return Err(ChainError::PackagesUnsupported(r.message));
            }
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) => {
                return Err(ChainError::Rejected { code: r.code, reason: r.message });
            }
            Err(e) => return Err(map(e)),
        };
        let message = answer["package_msg"].as_str().unwrap_or_default();
        if message == "success" {
            return Ok(txs.iter().map(Transaction::compute_txid).collect());
        }
        let refusals = txs.iter().filter_map(|t| {
            let result = &answer["tx-results"][t.compute_wtxid().to_string()];
            result["error"].as_str().map(|e| (t.compute_txid(), e.to_string()))
        });
        Err(crate::package_refused(message, refusals))
    }

    fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, ChainError> {
        // Without a block hash, a node without -txindex searches only its mempool; a node with
        // one (or a wallet transaction) answers for confirmed ones too, which is not asked.
        match self.client().get_raw_transaction_info(txid, None) {
            Ok(info) if info.blockhash.is_none() => info
                .transaction()
                .map(Some)
                .map_err(|e| ChainError::Transport(format!("undecodable transaction: {e}"))),
            Ok(_) => Ok(None),
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) if r.code == NOT_FOUND => Ok(None),
            Err(e) => Err(map(e)),
        }
    }

    fn in_mempool(&self, txid: &Txid) -> Result<bool, ChainError> {
        // Untyped: the entry's fields vary between Core versions; only its presence matters.
        match self.client().call::<serde_json::Value>("getmempoolentry", &[txid.to_string().into()])
        {
            Ok(_) => Ok(true),
            Err(RpcClientError::JsonRpc(JsonRpcError::Rpc(r))) if r.code == NOT_FOUND => Ok(false),
            Err(e) => Err(map(e)),
        }
    }

    fn mempool(&self) -> Result<Vec<Txid>, ChainError> {
        self.client().get_raw_mempool().map_err(map)
    }

    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        let r = self.client().get_tx_out(&outpoint.txid, outpoint.vout, Some(true)).map_err(map)?;
        Ok(r.map(|o| Utxo {
            output: TxOut {
                value: o.value,
                script_pubkey: paychan_core::bitcoin::ScriptBuf::from_bytes(o.script_pub_key.hex),
            },
            confirmations: o.confirmations,
            best_block: o.bestblock,
        }))
    }

    fn estimate_fee(&self, target_blocks: u32) -> Result<FeeRate, ChainError> {
        let r = self
            .client()
            .estimate_smart_fee(target_blocks.clamp(1, 1008) as u16, None)
            .map_err(map)?;
        let Some(per_kvb) = r.fee_rate else {
            let why = r.errors.unwrap_or_default().join("; ");
            tracing::warn!(target_blocks, fallback = %self.fallback_fee, node_says = %why, "the node has no fee estimate; using the fallback fee rate");
            return Ok(self.fallback_fee);
        };
        // BTC per 1,000 vbytes → sat per 1,000 weight units; at least 1 sat/vB.
        Ok(FeeRate::from_sat_per_kwu((per_kvb.to_sat() / 4).max(250)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pruned_block_is_named_as_such() {
        use paychan_core::bitcoin::hashes::Hash;
        let hash = BlockHash::all_zeros();
        let pruned =
            ChainError::Node { code: -1, message: "Block not available (pruned data)".into() };
        let e = block_error(hash, pruned);
        assert!(matches!(e, ChainError::Pruned { height: None, .. }), "{e:?}");
        assert!(e.to_string().contains("-prune"), "{e}");
        let other = ChainError::Node { code: -5, message: "Block not found".into() };
        assert!(matches!(block_error(hash, other), ChainError::Node { code: -5, .. }));
    }
}
