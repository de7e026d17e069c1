//! A JSON-RPC server speaking bitcoind's dialect: the same method names, parameters (positional
//! or named), result fields, error codes and HTTP behaviour (JSON-RPC 1.0 errors with HTTP 500,
//! 404 for an unknown method; JSON-RPC 2.0 always 200), cookie-file and user/password basic
//! auth, and batch requests. So a client written for bitcoind — `bitcoincore-rpc`, BDK's
//! `bdk_bitcoind_rpc`, `bitcoin-cli` — talks to the embedded node unchanged.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use base64::Engine as _;
use paychan_core::bitcoin::consensus::encode::{deserialize, serialize_hex};
use paychan_core::bitcoin::hex::FromHex;
use paychan_core::bitcoin::{
    Address, Amount, Block, BlockHash, FeeRate, Network, OutPoint, Script, ScriptBuf, Transaction,
    Txid,
};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::error::code;
use crate::{BlockInfo, Node, NodeError};

/// Who may call the RPC: `user:password` pairs checked against HTTP basic auth.
#[derive(Clone, Default)]
pub struct Auth {
    credentials: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} credentials)", self.credentials.len())
    }
}

impl Auth {
    /// Allows `user` with `password`.
    pub fn with_user(mut self, user: &str, password: &str) -> Self {
        self.credentials.push(format!("{user}:{password}"));
        self
    }

    /// Writes a fresh cookie (`__cookie__:<64 hex>`, mode 0600) to `path` and allows it.
    ///
    /// # Errors
    /// [`NodeError::Io`] when the file cannot be written.
    pub fn with_new_cookie(mut self, path: &Path) -> Result<Self, NodeError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| NodeError::io(path, std::io::Error::other(e.to_string())))?;
        let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let cookie = format!("__cookie__:{password}");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| NodeError::io(path, e))?;
        f.write_all(cookie.as_bytes()).map_err(|e| NodeError::io(path, e))?;
        f.sync_all().map_err(|e| NodeError::io(path, e))?;
        self.credentials.push(cookie);
        Ok(self)
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(b64) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        // Compare every credential in full, so timing says nothing about which nearly matched.
        self.credentials.iter().fold(false, |ok, c| ok | constant_time_eq(c.as_bytes(), &decoded))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the cookie of a node in `datadir` lives.
pub fn cookie_path(datadir: &Path) -> PathBuf {
    datadir.join(".cookie")
}

/// An RPC error: bitcoind's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code (`error::code`).
    pub code: i32,
    /// The message.
    pub message: String,
}

impl RpcError {
    fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
}

impl From<NodeError> for RpcError {
    fn from(e: NodeError) -> Self {
        RpcError { code: e.rpc_code(), message: e.to_string() }
    }
}

type RpcResult = Result<Value, RpcError>;

struct Shared {
    node: Node,
    auth: Auth,
    stop: Arc<Notify>,
}

/// The RPC server of a node.
pub struct RpcServer {
    shared: Arc<Shared>,
}

impl RpcServer {
    /// A server for `node` admitting `auth`.
    pub fn new(node: Node, auth: Auth) -> Self {
        RpcServer { shared: Arc::new(Shared { node, auth, stop: Arc::new(Notify::new()) }) }
    }

    /// Notified when a client calls `stop`.
    pub fn stop_signal(&self) -> Arc<Notify> {
        self.shared.stop.clone()
    }

    /// Serves on `listener` until `shutdown` completes or a client calls `stop`.
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        info!(?addr, "RPC server listening");
        let stop = self.shared.stop.clone();
        let app = Router::new()
            .route("/", axum::routing::post(handle))
            .route("/wallet/{name}", axum::routing::post(handle))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self.shared);
        // No Nagle delay: each response leaves at once (and axum writes it in one piece).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop.notified() => {}
                }
            })
            .await
    }
}

/// The largest request body read (Bitcoin Core's `MAX_SIZE`, 32 MiB); a larger one is
/// answered with a JSON-RPC error and HTTP 413.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// The most calls in one batch; a larger batch is refused whole (each reply is held until
/// the batch is answered, so this bounds the memory one request can take).
pub const MAX_BATCH: usize = 1_000;

async fn handle(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !s.auth.allows(&headers) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")])
            .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"result": null, "error": {"code": code::INVALID_REQUEST, "message": format!("request body above {} MiB", MAX_BODY >> 20)}, "id": null}),
        );
    };
    let node = s.node.clone();
    let stop = s.stop.clone();
    // Calls take the node's lock and may verify scripts: run them off the async workers.
    let outcome = tokio::task::spawn_blocking(move || answer(&node, &stop, &body)).await;
    match outcome {
        Ok((status, body)) => json_response(status, &body),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"result": null, "error": {"code": code::MISC, "message": "internal error"}, "id": null}),
        ),
    }
}

/// Answers a request body (one call or a batch) as bitcoind would: the HTTP status and the
/// reply. Authentication is the caller's.
fn answer(node: &Node, stop: &Notify, body: &[u8]) -> (StatusCode, Value) {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(calls)) if calls.len() > MAX_BATCH => (
            StatusCode::BAD_REQUEST,
            json!({"result": null, "error": {"code": code::INVALID_REQUEST, "message": format!("a batch of {} calls: at most {MAX_BATCH}", calls.len())}, "id": null}),
        ),
        Ok(Value::Array(calls)) => {
            let replies: Vec<Value> = calls.iter().map(|c| reply(node, stop, c).1).collect();
            (StatusCode::OK, Value::Array(replies))
        }
        Ok(single) => reply(node, stop, &single),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"result": null, "error": {"code": code::PARSE, "message": format!("Parse error: {e}")}, "id": null}),
        ),
    }
}

/// [`answer`] for the fuzzer: any bytes in, a status and a reply out, never a panic.
#[doc(hidden)]
pub fn fuzz_answer(node: &Node, body: &[u8]) -> (u16, Value) {
    let (status, v) = answer(node, &Notify::new(), body);
    (status.as_u16(), v)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Answers one call: the HTTP status bitcoind would use and the reply object.
fn reply(node: &Node, stop: &Notify, call: &Value) -> (StatusCode, Value) {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let v2 = call.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let result = match call.get("method").and_then(Value::as_str) {
        Some(method) => {
            debug!(method, "rpc");
            let params = call.get("params").cloned().unwrap_or(Value::Null);
            dispatch(node, stop, method, &params)
        }
        None => Err(RpcError::new(code::INVALID_REQUEST, "Method must be a string")),
    };
    match (result, v2) {
        (Ok(r), false) => (StatusCode::OK, json!({"result": r, "error": null, "id": id})),
        (Ok(r), true) => (StatusCode::OK, json!({"jsonrpc": "2.0", "result": r, "id": id})),
        (Err(e), v2) => {
            let err = json!({"code": e.code, "message": e.message});
            if v2 {
                (StatusCode::OK, json!({"jsonrpc": "2.0", "error": err, "id": id}))
            } else {
                let status = match e.code {
                    code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                    code::INVALID_REQUEST => StatusCode::BAD_REQUEST,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, json!({"result": null, "error": err, "id": id}))
            }
        }
    }
}

/// Positional parameters, from an array or (bitcoin-cli `-named`) an object.
struct Params(Vec<Value>);

impl Params {
    fn new(raw: &Value, names: &[&str]) -> Result<Self, RpcError> {
        match raw {
            Value::Null => Ok(Params(Vec::new())),
            Value::Array(a) => Ok(Params(a.clone())),
            Value::Object(o) => {
                for k in o.keys() {
                    if !names.contains(&k.as_str()) {
                        return Err(RpcError::new(
                            code::MISC,
                            format!("Unknown named parameter {k}"),
                        ));
                    }
                }
                Ok(Params(
                    names.iter().map(|n| o.get(*n).cloned().unwrap_or(Value::Null)).collect(),
                ))
            }
            _ => Err(RpcError::new(code::INVALID_REQUEST, "Params must be an array or object")),
        }
    }

    fn get(&self, i: usize) -> Option<&Value> {
        self.0.get(i).filter(|v| !v.is_null())
    }

    fn required(&self, i: usize, name: &str) -> Result<&Value, RpcError> {
        self.get(i)
            .ok_or_else(|| RpcError::new(code::MISC, format!("missing required parameter {name}")))
    }

    fn str(&self, i: usize, name: &str) -> Result<&str, RpcError> {
        self.required(i, name)?.as_str().ok_or_else(|| {
            RpcError::new(code::TYPE, format!("JSON value of {name} is not a string as expected"))
        })
    }

    fn u64(&self, i: usize, name: &str) -> Result<u64, RpcError> {
        self.required(i, name)?.as_u64().ok_or_else(|| {
            RpcError::new(code::TYPE, format!("JSON value of {name} is not a non-negative integer"))
        })
    }

    fn opt_bool(&self, i: usize, default: bool) -> Result<bool, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) => Ok(n.as_i64().unwrap_or(0) != 0),
            Some(_) => Err(RpcError::new(code::TYPE, "JSON value is not a boolean as expected")),
        }
    }

    fn hash<T: std::str::FromStr>(&self, i: usize, name: &str) -> Result<T, RpcError> {
        let s = self.str(i, name)?;
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RpcError::new(
                code::INVALID_PARAMETER,
                format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
            ));
        }
        s.parse().map_err(|_| {
            RpcError::new(
                code::INVALID_PARAMETER,
                format!("{name} must be hexadecimal string (not '{s}')"),
            )
        })
    }
}

fn decode_tx(hex: &str) -> Result<Transaction, RpcError> {
    let bytes = Vec::<u8>::from_hex(hex)
        .map_err(|_| RpcError::new(code::DESERIALIZATION, "TX decode failed"))?;
    deserialize(&bytes).map_err(|_| {
        RpcError::new(
            code::DESERIALIZATION,
            "TX decode failed. Make sure the tx has at least one input.",
        )
    })
}

fn btc(a: Amount) -> Value {
    json!(a.to_btc())
}

fn fee_rate_btc_kvb(r: FeeRate) -> Value {
    json!(r.to_sat_per_kwu() as f64 * 4.0 / 1e8 * 1000.0 / 1000.0)
}

fn parse_fee_rate(v: Option<&Value>, default: FeeRate) -> Result<FeeRate, RpcError> {
    match v {
        None => Ok(default),
        Some(v) => {
            let btc_per_kvb = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .filter(|x| *x >= 0.0)
            .ok_or_else(|| RpcError::new(code::TYPE, "maxfeerate must be a number of BTC/kvB"))?;
            Ok(FeeRate::from_sat_per_kwu((btc_per_kvb * 1e8 / 4.0).round() as u64))
        }
    }
}

fn script_type(s: &Script) -> &'static str {
    if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2sh() {
        "scripthash"
    } else if s.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if s.is_p2wsh() {
        "witness_v0_scripthash"
    } else if s.is_p2tr() {
        "witness_v1_taproot"
    } else if s.is_op_return() {
        "nulldata"
    } else if s.is_witness_program() {
        "witness_unknown"
    } else if s.is_p2pk() {
        "pubkey"
    } else if s.is_multisig() {
        "multisig"
    } else {
        "nonstandard"
    }
}

fn script_pubkey_json(s: &Script) -> Value {
    let mut m = Map::new();
    m.insert("asm".into(), json!(s.to_asm_string()));
    m.insert("hex".into(), json!(s.to_hex_string()));
    if let Ok(a) = Address::from_script(s, Network::Regtest) {
        m.insert("address".into(), json!(a.to_string()));
    }
    m.insert("type".into(), json!(script_type(s)));
    Value::Object(m)
}

/// `decoderawtransaction`'s object for `tx`, with `hex`.
pub fn tx_json(tx: &Transaction) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let mut m = Map::new();
            if tx.is_coinbase() {
                m.insert("coinbase".into(), json!(i.script_sig.to_hex_string()));
            } else {
                m.insert("txid".into(), json!(i.previous_output.txid.to_string()));
                m.insert("vout".into(), json!(i.previous_output.vout));
                m.insert(
                    "scriptSig".into(),
                    json!({"asm": i.script_sig.to_asm_string(), "hex": i.script_sig.to_hex_string()}),
                );
            }
            if !i.witness.is_empty() {
                let items: Vec<Value> = i.witness.iter().map(|w| json!(hex(w))).collect();
                m.insert("txinwitness".into(), Value::Array(items));
            }
            m.insert("sequence".into(), json!(i.sequence.0));
            Value::Object(m)
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": btc(o.value), "n": n, "scriptPubKey": script_pubkey_json(&o.script_pubkey)}))
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
    })
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Regtest's difficulty (`0x207fffff` against the difficulty-1 target).
const REGTEST_DIFFICULTY: f64 = 4.656542373906925e-10;

fn chainwork_hex(height: u32) -> String {
    // Every regtest block adds 2 units of work; genesis included.
    format!("{:064x}", (u64::from(height) + 1) * 2)
}

fn header_json(block: &Block, info: &BlockInfo) -> Value {
    let h = &block.header;
    let mut m = Map::new();
    m.insert("hash".into(), json!(info.hash.to_string()));
    m.insert("confirmations".into(), json!(info.confirmations));
    m.insert("height".into(), json!(info.height));
    m.insert("version".into(), json!(h.version.to_consensus()));
    m.insert("versionHex".into(), json!(format!("{:08x}", h.version.to_consensus())));
    m.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    m.insert("time".into(), json!(h.time));
    m.insert("mediantime".into(), json!(info.median_time_past));
    m.insert("nonce".into(), json!(h.nonce));
    m.insert("bits".into(), json!(format!("{:08x}", h.bits.to_consensus())));
    m.insert("difficulty".into(), json!(REGTEST_DIFFICULTY));
    m.insert("chainwork".into(), json!(chainwork_hex(info.height)));
    m.insert("nTx".into(), json!(block.txdata.len()));
    if info.height > 0 {
        m.insert("previousblockhash".into(), json!(h.prev_blockhash.to_string()));
    }
    if let Some(n) = info.next {
        m.insert("nextblockhash".into(), json!(n.to_string()));
    }
    Value::Object(m)
}

fn block_of(node: &Node, hash: &BlockHash) -> Result<(Arc<Block>, BlockInfo), RpcError> {
    node.block(hash).ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))
}

fn address_script(addr: &str) -> Result<ScriptBuf, RpcError> {
    let a: Address<paychan_core::bitcoin::address::NetworkUnchecked> = addr
        .parse()
        .map_err(|_| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    let a = a
        .require_network(Network::Regtest)
        .map_err(|_| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    Ok(a.script_pubkey())
}

/// Every method this server answers, with its parameter names.
pub const METHODS: &[(&str, &[&str])] = &[
    ("getblockchaininfo", &[]),
    ("getblockcount", &[]),
    ("getbestblockhash", &[]),
    ("getblockhash", &["height"]),
    ("getblockheader", &["blockhash", "verbose"]),
    ("getblock", &["blockhash", "verbosity"]),
    ("getrawtransaction", &["txid", "verbose", "blockhash"]),
    ("decoderawtransaction", &["hexstring"]),
    ("sendrawtransaction", &["hexstring", "maxfeerate"]),
    ("testmempoolaccept", &["rawtxs", "maxfeerate"]),
    ("gettxout", &["txid", "n", "include_mempool"]),
    ("gettxoutsetinfo", &[]),
    ("getrawmempool", &["verbose"]),
    ("getmempoolentry", &["txid"]),
    ("getmempoolinfo", &[]),
    ("estimatesmartfee", &["conf_target", "estimate_mode"]),
    ("generatetoaddress", &["nblocks", "address", "maxtries"]),
    ("generateblock", &["output", "transactions"]),
    ("submitblock", &["hexdata"]),
    ("setmocktime", &["timestamp"]),
    ("getmocktime", &[]),
    ("invalidateblock", &["blockhash"]),
    ("reconsiderblock", &["blockhash"]),
    ("getnetworkinfo", &[]),
    ("uptime", &[]),
    ("ping", &[]),
    ("stop", &[]),
];

fn dispatch(node: &Node, stop: &Notify, method: &str, raw: &Value) -> RpcResult {
    let names = METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, n)| *n)
        .ok_or_else(|| RpcError::new(code::METHOD_NOT_FOUND, "Method not found"))?;
    let p = Params::new(raw, names)?;
    match method {
        "getblockchaininfo" => {
            let (height, hash) = node.tip();
            let (block, info) = block_of(node, &hash)?;
            Ok(json!({
                "chain": "regtest",
                "blocks": height,
                "headers": height,
                "bestblockhash": hash.to_string(),
                "difficulty": REGTEST_DIFFICULTY,
                "time": block.header.time,
                "mediantime": info.median_time_past,
                "verificationprogress": 1,
                "initialblockdownload": false,
                "chainwork": chainwork_hex(height),
                "size_on_disk": node.size_on_disk(),
                "pruned": false,
                "warnings": "",
            }))
        }
        "getblockcount" => Ok(json!(node.tip().0)),
        "getbestblockhash" => Ok(json!(node.tip().1.to_string())),
        "getblockhash" => {
            let h = p
                .required(0, "height")?
                .as_i64()
                .ok_or_else(|| RpcError::new(code::TYPE, "height must be an integer"))?;
            u32::try_from(h)
                .ok()
                .and_then(|h| node.block_hash(h))
                .map(|b| json!(b.to_string()))
                .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "Block height out of range"))
        }
        "getblockheader" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            let (block, info) = block_of(node, &hash)?;
            if p.opt_bool(1, true)? {
                Ok(header_json(&block, &info))
            } else {
                Ok(json!(serialize_hex(&block.header)))
            }
        }
        "getblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            let (block, info) = block_of(node, &hash)?;
            let verbosity = match p.get(1) {
                None => 1,
                Some(Value::Bool(b)) => u64::from(*b),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| RpcError::new(code::TYPE, "verbosity must be 0, 1, 2 or 3"))?,
            };
            if verbosity == 0 {
                return Ok(json!(serialize_hex(&*block)));
            }
            let mut v = header_json(&block, &info);
            let txs: Vec<Value> = if verbosity == 1 {
                block.txdata.iter().map(|t| json!(t.compute_txid().to_string())).collect()
            } else {
                block.txdata.iter().map(tx_json).collect()
            };
            if let Value::Object(m) = &mut v {
                let stripped = (block.weight().to_wu() as usize - block.total_size()) / 3;
                m.insert("strippedsize".into(), json!(stripped));
                m.insert("size".into(), json!(block.total_size()));
                m.insert("weight".into(), json!(block.weight().to_wu()));
                m.insert("tx".into(), Value::Array(txs));
            }
            Ok(v)
        }
        "getrawtransaction" => {
            let txid: Txid = p.hash(0, "txid")?;
            let verbose = match p.get(1) {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0) > 0,
                Some(_) => {
                    return Err(RpcError::new(code::TYPE, "verbose must be a boolean or 0/1/2"))
                }
            };
            let (tx, loc, in_active) = if p.get(2).is_some() {
                let bh: BlockHash = p.hash(2, "blockhash")?;
                let (block, info) = block_of(node, &bh)?;
                let found = block.txdata.iter().enumerate().find(|(_, t)| t.compute_txid() == txid);
                let Some((index, tx)) = found else {
                    return Err(RpcError::new(code::INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. Use gettransaction for wallet transactions."));
                };
                (tx.clone(), Some((bh, info, index)), Some(info.confirmations > 0))
            } else {
                let (tx, loc) = node.transaction(&txid).ok_or_else(|| {
                    RpcError::new(code::INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.")
                })?;
                let loc =
                    loc.and_then(|l| node.block(&l.block).map(|(_, i)| (l.block, i, l.index)));
                (tx, loc, None)
            };
            if !verbose {
                return Ok(json!(serialize_hex(&tx)));
            }
            let mut v = tx_json(&tx);
            if let Value::Object(m) = &mut v {
                if let Some(a) = in_active {
                    m.insert("in_active_chain".into(), json!(a));
                }
                if let Some((bh, info, _)) = loc {
                    let (block, _) = block_of(node, &bh)?;
                    m.insert("blockhash".into(), json!(bh.to_string()));
                    m.insert("confirmations".into(), json!(info.confirmations.max(0)));
                    m.insert("time".into(), json!(block.header.time));
                    m.insert("blocktime".into(), json!(block.header.time));
                }
            }
            Ok(v)
        }
        "decoderawtransaction" => {
            let mut v = tx_json(&decode_tx(p.str(0, "hexstring")?)?);
            if let Value::Object(m) = &mut v {
                m.remove("hex");
            }
            Ok(v)
        }
        "sendrawtransaction" => {
            let tx = decode_tx(p.str(0, "hexstring")?)?;
            let max = parse_fee_rate(p.get(1), crate::policy::DEFAULT_MAX_FEE_RATE)?;
            Ok(json!(node.submit(tx, Some(max))?.to_string()))
        }
        "testmempoolaccept" => {
            let raw = p
                .required(0, "rawtxs")?
                .as_array()
                .ok_or_else(|| RpcError::new(code::TYPE, "rawtxs must be an array"))?;
            if raw.len() != 1 {
                return Err(RpcError::new(
                    code::INVALID_PARAMETER,
                    "Array must contain exactly one raw transaction for now",
                ));
            }
            let max = parse_fee_rate(p.get(1), crate::policy::DEFAULT_MAX_FEE_RATE)?;
            let tx = decode_tx(raw[0].as_str().unwrap_or_default())?;
            let txid = tx.compute_txid().to_string();
            let wtxid = tx.compute_wtxid().to_string();
            let r = match node.test_accept(tx) {
                Ok(a)
                    if max > FeeRate::ZERO
                        && a.fee.to_sat() * 250 / a.vsize.max(1) > max.to_sat_per_kwu() =>
                {
                    json!({"txid": txid, "wtxid": wtxid, "allowed": false, "reject-reason": "max-fee-exceeded"})
                }
                Ok(a) => {
                    json!({"txid": txid, "wtxid": wtxid, "allowed": true, "vsize": a.vsize, "fees": {"base": btc(a.fee)}})
                }
                Err(e) => {
                    json!({"txid": txid, "wtxid": wtxid, "allowed": false, "reject-reason": e.reject_reason()})
                }
            };
            Ok(json!([r]))
        }
        "gettxout" => {
            let txid: Txid = p.hash(0, "txid")?;
            let vout = u32::try_from(p.u64(1, "n")?)
                .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "n out of range"))?;
            let include_mempool = p.opt_bool(2, true)?;
            match node.utxo(&OutPoint { txid, vout }, include_mempool) {
                None => Ok(Value::Null),
                Some((out, confirmations, coinbase)) => Ok(json!({
                    "bestblock": node.tip().1.to_string(),
                    "confirmations": confirmations,
                    "value": btc(out.value),
                    "scriptPubKey": script_pubkey_json(&out.script_pubkey),
                    "coinbase": coinbase,
                })),
            }
        }
        "gettxoutsetinfo" => {
            let (height, hash) = node.tip();
            let (n, total, digest) = node.utxo_set_digest();
            Ok(json!({
                "height": height,
                "bestblock": hash.to_string(),
                "txouts": n,
                "hash_serialized_3": hex(&digest),
                "total_amount": btc(total),
            }))
        }
        "getrawmempool" => {
            if p.opt_bool(0, false)? {
                let mut m = Map::new();
                for t in node.mempool_txids() {
                    if let Some(v) = mempool_entry_json(node, &t) {
                        m.insert(t.to_string(), v);
                    }
                }
                Ok(Value::Object(m))
            } else {
                Ok(json!(node.mempool_txids().iter().map(Txid::to_string).collect::<Vec<_>>()))
            }
        }
        "getmempoolentry" => {
            let txid: Txid = p.hash(0, "txid")?;
            mempool_entry_json(node, &txid).ok_or_else(|| {
                RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
            })
        }
        "getmempoolinfo" => {
            let (n, fees) = node.mempool_size();
            Ok(json!({
                "loaded": true,
                "size": n,
                "total_fee": btc(fees),
                "mempoolminfee": 0.00001,
                "minrelaytxfee": 0.00001,
                "incrementalrelayfee": 0.00001,
                "fullrbf": true,
            }))
        }
        "estimatesmartfee" => {
            let target = p.u64(0, "conf_target")?;
            if !(1..=1008).contains(&target) {
                return Err(RpcError::new(
                    code::INVALID_PARAMETER,
                    "Invalid conf_target, must be between 1 and 1008",
                ));
            }
            let target = target as u32;
            Ok(
                json!({"feerate": fee_rate_btc_kvb(node.estimate_fee(target)), "blocks": target.max(2)}),
            )
        }
        "generatetoaddress" => {
            let n = p.u64(0, "nblocks")?;
            let spk = address_script(p.str(1, "address")?)?;
            let n = u32::try_from(n)
                .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "nblocks out of range"))?;
            let hashes = node.mine(n, &spk)?;
            Ok(json!(hashes.iter().map(BlockHash::to_string).collect::<Vec<_>>()))
        }
        "generateblock" => {
            let spk = address_script(p.str(0, "output")?)?;
            let list = p
                .required(1, "transactions")?
                .as_array()
                .ok_or_else(|| RpcError::new(code::TYPE, "transactions must be an array"))?;
            let mut txs = Vec::with_capacity(list.len());
            for item in list {
                let s = item.as_str().unwrap_or_default();
                if s.len() == 64 {
                    let txid: Txid = s.parse().map_err(|_| {
                        RpcError::new(
                            code::INVALID_PARAMETER,
                            format!("Transaction {s} not in mempool."),
                        )
                    })?;
                    match node.transaction(&txid) {
                        Some((tx, None)) => txs.push(tx),
                        _ => {
                            return Err(RpcError::new(
                                code::INVALID_ADDRESS_OR_KEY,
                                format!("Transaction {s} not in mempool."),
                            ))
                        }
                    }
                } else {
                    txs.push(decode_tx(s)?);
                }
            }
            let hash = node.generate_block(&spk, txs)?;
            Ok(json!({"hash": hash.to_string()}))
        }
        "submitblock" => {
            let bytes = Vec::<u8>::from_hex(p.str(0, "hexdata")?)
                .map_err(|_| RpcError::new(code::DESERIALIZATION, "Block decode failed"))?;
            let block: Block = deserialize(&bytes)
                .map_err(|_| RpcError::new(code::DESERIALIZATION, "Block decode failed"))?;
            match node.submit_block(block) {
                Ok(()) => Ok(Value::Null),
                Err(NodeError::InvalidBlock { reason, .. }) => Ok(json!(reason)),
                Err(e) => Err(e.into()),
            }
        }
        "setmocktime" => {
            let t = p.required(0, "timestamp")?.as_i64().filter(|t| *t >= 0).ok_or_else(|| {
                RpcError::new(code::INVALID_PARAMETER, "Mocktime cannot be negative: -1.")
            })?;
            node.set_mock_time(t as u64)?;
            Ok(Value::Null)
        }
        // paychan's extension: the node's clock (mock time when set), so tools can advance it.
        "getmocktime" => Ok(json!(node.now())),
        "invalidateblock" => {
            node.invalidate_block(p.hash(0, "blockhash")?)?;
            Ok(Value::Null)
        }
        "reconsiderblock" => {
            node.reconsider_block(p.hash(0, "blockhash")?)?;
            Ok(Value::Null)
        }
        "getnetworkinfo" => Ok(json!({
            "version": 270000,
            "subversion": concat!("/paychan-node:", env!("CARGO_PKG_VERSION"), "/"),
            "protocolversion": 70016,
            "localservices": "0000000000000409",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
            "localrelay": true,
            "timeoffset": 0,
            "networkactive": true,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": 0.00001,
            "incrementalfee": 0.00001,
            "localaddresses": [],
            "warnings": "",
        })),
        "uptime" => Ok(json!(node.uptime())),
        "ping" => Ok(Value::Null),
        "stop" => {
            stop.notify_one();
            Ok(json!("paychan node stopping"))
        }
        _ => Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
    }
}

fn mempool_entry_json(node: &Node, txid: &Txid) -> Option<Value> {
    let (e, parents, children) = node.mempool_entry(txid)?;
    Some(json!({
        "vsize": e.vsize,
        "weight": e.tx.weight().to_wu(),
        "time": e.time,
        "height": e.height,
        "descendantcount": children.len() + 1,
        "ancestorcount": parents.len() + 1,
        "wtxid": e.wtxid.to_string(),
        "fees": {"base": btc(e.fee), "modified": btc(e.fee), "ancestor": btc(e.fee), "descendant": btc(e.fee)},
        "depends": parents.iter().map(Txid::to_string).collect::<Vec<_>>(),
        "spentby": children.iter().map(Txid::to_string).collect::<Vec<_>>(),
        "bip125-replaceable": true,
        "unbroadcast": false,
    }))
}
