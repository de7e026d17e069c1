//! The 21 (two1) REST protocol v2 at `/payment`, as two1's own client speaks it
//! (`shared/two1-protocol.md`): `GET /payment` (info), `POST /payment` (open with `deposit_tx`
//! and `redeem_script`), `PUT /payment/{deposit_txid}` (a half-signed `payment_tx`; answers
//! the token), `GET /payment/{deposit_txid}` (status), `DELETE /payment/{deposit_txid}` (close
//! with the customer's `signature` of SHA-256 of the txid's hex text).
//!
//! Parameters come from a JSON body (whatever the Content-Type) or else from the form body and
//! the query string, merged. Errors are plain text with Content-Type `text/html;
//! charset=utf-8`: 404 `Related channel not found.` for an unknown channel, 400 otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paychan_core::bitcoin::consensus::encode::deserialize;
use paychan_core::bitcoin::hex::{DisplayHex, FromHex};
use paychan_core::bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use paychan_core::channel::Phase;
use serde_json::{json, Value};

use crate::answer::Op;
use crate::{ChannelServer, MerchantError};

/// The `/payment` routes.
pub fn router(server: Arc<ChannelServer>) -> Router {
    Router::new()
        .route("/payment", get(info).post(open))
        .route("/payment/{txid}", get(status).put(pay).delete(close))
        .with_state(server)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body.into()).into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Related channel not found.")
}

/// Parameters as two1's Flask server reads them: JSON if the body parses, else form + query.
fn params(body: &[u8], query: Option<String>) -> HashMap<String, String> {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        return m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
    }
    let mut out: HashMap<String, String> =
        query.and_then(|q| serde_urlencoded::from_str(&q).ok()).unwrap_or_default();
    if let Ok(form) = serde_urlencoded::from_bytes::<HashMap<String, String>>(body) {
        out.extend(form);
    }
    out
}

/// The 21 answer to `e` during `op` (the one mapping, [`MerchantError::answer`]).
fn refused(e: &MerchantError, op: Op) -> Response {
    let a = e.answer(op);
    text(a.two1_status, a.two1_text.unwrap_or(a.message))
}

/// The 21 forms' parsing for the fuzzer: the parameters of a body and query, and each value
/// read as a transaction, a script and a signature, as the handlers do.
#[cfg(feature = "fuzz")]
pub fn fuzz_forms(body: &[u8], query: Option<String>) -> usize {
    let p = params(body, query);
    let mut n = p.len();
    for v in p.values() {
        n += usize::from(tx_param(v).is_some());
        n += usize::from(ScriptBuf::from_hex(v).is_ok());
        n += usize::from(Vec::<u8>::from_hex(v).is_ok());
        n += usize::from(v.parse::<Txid>().is_ok());
    }
    n
}

/// A transaction given as hex in a parameter.
fn tx_param(hex: &str) -> Option<Transaction> {
    Vec::<u8>::from_hex(hex).ok().and_then(|b| deserialize::<Transaction>(&b).ok())
}

/// The channel a `/payment/<txid>` path names and the parameter `name` of the request; else
/// the answer: 404 for an unknown channel, 400 with `missing` for an absent parameter.
async fn channel_and(
    server: &ChannelServer,
    txid: &str,
    body: &[u8],
    query: Option<String>,
    name: &str,
    missing: &'static str,
) -> Result<(OutPoint, String), Box<Response>> {
    let id = channel_of(server, txid).await?;
    let mut p = params(body, query);
    let value = p.remove(name).ok_or_else(|| Box::new(text(StatusCode::BAD_REQUEST, missing)))?;
    Ok((id, value))
}

/// The live channel a `/payment/<txid>` path names; else the answer: 404 for an unknown
/// channel, 500 when the store cannot say.
async fn channel_of(server: &ChannelServer, txid: &str) -> Result<OutPoint, Box<Response>> {
    let Ok(txid) = txid.parse::<Txid>() else { return Err(Box::new(not_found())) };
    match server.find_by_txid(&txid).await {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(Box::new(not_found())),
        Err(e) => {
            tracing::warn!(error = %e, "looking up a 21 channel failed");
            Err(Box::new(text(StatusCode::INTERNAL_SERVER_ERROR, "Merchant failure.")))
        }
    }
}

async fn info(State(s): State<Arc<ChannelServer>>) -> Response {
    match s.two1_key() {
        Ok(k) => Json(json!({"public_key": k.serialize().to_lower_hex_string(), "version": 2, "zeroconf": s.zero_conf()}))
            .into_response(),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "Merchant failure."),
    }
}

async fn open(State(s): State<Arc<ChannelServer>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(&body, q);
    let Some(deposit) = p.get("deposit_tx") else {
        return text(StatusCode::BAD_REQUEST, "No deposit provided.");
    };
    let Some(redeem) = p.get("redeem_script") else {
        return text(StatusCode::BAD_REQUEST, "No redeem script provided.");
    };
    let Some(deposit) = tx_param(deposit) else {
        return text(StatusCode::BAD_REQUEST, "The deposit is not a hex-encoded transaction.");
    };
    let Ok(redeem) = ScriptBuf::from_hex(redeem) else {
        return text(StatusCode::BAD_REQUEST, "The redeem script is not hex.");
    };
    match s.two1_open(&deposit, &redeem).await {
        Ok(id) => Json(json!({"deposit_txid": id.txid.to_string()})).into_response(),
        Err(e) => refused(&e, Op::Open),
    }
}

async fn status(State(s): State<Arc<ChannelServer>>, Path(txid): Path<String>) -> Response {
    let id = match channel_of(&s, &txid).await {
        Ok(id) => id,
        Err(answer) => return *answer,
    };
    match s.channel_status(id).await {
        Ok((phase, total)) => {
            let status = match phase {
                Phase::Open => "ready",
                Phase::AwaitingFunding | Phase::Opening => "confirming",
                _ => "closed",
            };
            let expiry = s.channel_expiry(id).await.unwrap_or(0);
            Json(json!({"status": status, "balance": total.to_sat(), "time_left": expiry}))
                .into_response()
        }
        Err(_) => not_found(),
    }
}

async fn pay(
    State(s): State<Arc<ChannelServer>>,
    Path(txid): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (id, payment) =
        match channel_and(&s, &txid, &body, q, "payment_tx", "No payment provided.").await {
            Ok(x) => x,
            Err(answer) => return *answer,
        };
    let Some(tx) = tx_param(&payment) else {
        return text(StatusCode::BAD_REQUEST, "The payment is not a hex-encoded transaction.");
    };
    if let Ok((phase, _)) = s.channel_status(id).await {
        if phase.is_final() || phase == Phase::Settling || phase == Phase::Expired {
            return text(StatusCode::BAD_REQUEST, "Payment channel closed.");
        }
    }
    match s.two1_pay(id, &tx).await {
        // The token is the txid of the half-signed transaction as received.
        Ok(_) => Json(json!({"payment_txid": tx.compute_txid().to_string()})).into_response(),
        Err(e) => refused(&e, Op::Pay),
    }
}

async fn close(
    State(s): State<Arc<ChannelServer>>,
    Path(txid): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (id, sig) =
        match channel_and(&s, &txid, &body, q, "signature", "No signature provided.").await {
            Ok(x) => x,
            Err(answer) => return *answer,
        };
    let Ok(sig) = Vec::<u8>::from_hex(&sig) else {
        return text(StatusCode::BAD_REQUEST, "Invalid signature.");
    };
    match s.two1_close(id, &sig).await {
        Ok(closed) => match closed.txid() {
            Ok(txid) => Json(json!({"payment_txid": txid.to_string()})).into_response(),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "Merchant failure."),
        },
        Err(e) => refused(&e, Op::Close),
    }
}
