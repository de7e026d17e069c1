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
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

mod json;
mod methods;

pub use json::tx_json;
use methods::dispatch;

use crate::error::code;
use crate::{Node, NodeError};

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
#[cfg(feature = "fuzz")]
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
