//! An x402 facilitator (x402 v2 §7) for channel payments, so that a resource server in any
//! language charges through this merchant: `POST /x402/verify`, `POST /x402/settle`,
//! `GET /x402/supported`, in x402's JSON (point an x402 SDK's facilitator client at
//! `https://merchant/x402`).
//!
//! * `verify` checks the payment against the channel as it is now and changes nothing;
//! * `settle` charges it exactly as the paywall does (durable before the answer);
//! * both take the same checks first: the requirements are this merchant's (scheme, network,
//!   asset, `payTo` = its node id), the payment's `accepted` is those requirements, the price
//!   is a canonical satoshi amount.
//!
//! `verify` and `settle` need the admin bearer token (a settle charges a customer's channel);
//! `supported` is public. A refused payment is a `200` with `isValid: false` / `success: false`
//! and a stable reason string ([`reason`]); a body that does not decode is a `400`; the
//! merchant's own failure a `500`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paychan_core::bitcoin::{Amount, Network, OutPoint};
use paychan_core::paywall::{
    asset, caip2, reason, FacilitatorRequest, Limits, PaychanExtra, PaymentResponse, Requirement,
    SupportedKind, SupportedResponse, VerifyResponse, SCHEME, X402_VERSION,
};
use paychan_core::Error;
use serde_json::json;

use crate::answer::Op;
use crate::{ChannelServer, MerchantError};
use paychan_core::channel::merchant::Redeemed;

/// The facilitator's settings.
#[derive(Clone)]
pub struct FacilitatorConfig {
    /// The chain the channels are on.
    pub network: Network,
    /// Where customers open channels, `nodeid@host:port` (named in `/supported`).
    pub peer: String,
    /// The bearer token `verify` and `settle` require (the admin token).
    pub token: String,
}

impl std::fmt::Debug for FacilitatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilitatorConfig")
            .field("network", &self.network)
            .field("peer", &self.peer)
            .field("token", &"…")
            .finish()
    }
}

#[derive(Clone)]
struct Facilitator {
    server: Arc<ChannelServer>,
    config: Arc<FacilitatorConfig>,
    network: String,
    asset: String,
    node_id: String,
    limits: Limits,
}

/// The facilitator's routes under `/x402`.
pub fn router(server: Arc<ChannelServer>, config: FacilitatorConfig) -> Router {
    let f = Facilitator {
        network: caip2(config.network),
        asset: asset(config.network),
        node_id: server.node_id().to_string(),
        limits: Limits::from(server.policy()),
        server,
        config: Arc::new(config),
    };
    Router::new()
        .route("/x402/verify", post(verify))
        .route("/x402/settle", post(settle))
        .route("/x402/supported", get(supported))
        .with_state(f)
}

/// A payment the checks let through: its channel, total, signature and price.
struct Checked {
    channel: OutPoint,
    total: Amount,
    signature: Vec<u8>,
    price: Amount,
}

impl Facilitator {
    fn check(&self, req: &FacilitatorRequest) -> Result<Checked, Error> {
        if req.x402_version != X402_VERSION {
            return Err(Error::UnsupportedVersion {
                got: req.x402_version,
                min: X402_VERSION,
                max: X402_VERSION,
            });
        }
        let r: &Requirement = &req.payment_requirements;
        for (field, got, ours) in [
            ("scheme", &r.scheme, SCHEME),
            ("network", &r.network, self.network.as_str()),
            ("asset", &r.asset, self.asset.as_str()),
            ("payTo", &r.pay_to, self.node_id.as_str()),
        ] {
            if got != ours {
                return Err(Error::NotOurRequirements {
                    field,
                    got: got.clone(),
                    ours: ours.to_string(),
                });
            }
        }
        r.check_accepted(&req.payment_payload.accepted)?;
        let price = r.price()?;
        let (channel, total, signature) = req.payment_payload.decode()?;
        Ok(Checked { channel, total, signature, price })
    }

    /// The request, once the bearer token is right (else `401`) and the body decodes (else
    /// `400`).
    fn admit(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<FacilitatorRequest, Box<Response>> {
        if !crate::http::bearer_matches(headers, &self.config.token) {
            let answer = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "a valid bearer token is required"})),
            );
            return Err(Box::new(answer.into_response()));
        }
        serde_json::from_slice(body).map_err(|e| {
            let answer = (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("not an x402 facilitator request: {e}")})),
            );
            Box::new(answer.into_response())
        })
    }
}

/// A refusal's reason and message, or `None` for the merchant's own failure.
fn refusal(e: &MerchantError) -> Option<(&'static str, String)> {
    let a = e.answer(Op::Redeem);
    a.refused.then(|| (reason::of_code(a.code), a.message))
}

async fn verify(State(f): State<Facilitator>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match f.admit(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let result = match f.check(&req) {
        Ok(c) => f
            .server
            .check_redeem(c.channel, c.total, &c.signature, c.price)
            .await
            .map(|_| c.channel),
        Err(e) => Err(e.into()),
    };
    let payer = req.payment_payload.payload.channel.clone();
    match result {
        Ok(channel) => Json(VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(channel.to_string()),
        })
        .into_response(),
        Err(e) => match refusal(&e) {
            Some((reason, message)) => Json(VerifyResponse {
                is_valid: false,
                invalid_reason: Some(reason.into()),
                invalid_message: Some(message),
                payer: Some(payer),
            })
            .into_response(),
            None => failure("unexpected_verify_error", &e),
        },
    }
}

async fn settle(State(f): State<Facilitator>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match f.admit(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let checked = f.check(&req);
    let result: Result<(OutPoint, Amount, Redeemed), MerchantError> = match checked {
        Ok(c) => f
            .server
            .redeem(c.channel, c.total, &c.signature, c.price)
            .await
            .map(|r| (c.channel, c.price, r)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok((channel, price, r)) => {
            Json(PaymentResponse::charged(&f.network, channel, price, &r)).into_response()
        }
        Err(e) => match refusal(&e) {
            Some((reason, message)) => Json(PaymentResponse::refused(
                &f.network,
                reason,
                message,
                Some(req.payment_payload.payload.channel.clone()),
            ))
            .into_response(),
            None => failure("unexpected_settle_error", &e),
        },
    }
}

async fn supported(State(f): State<Facilitator>) -> Json<SupportedResponse> {
    Json(SupportedResponse {
        kinds: vec![SupportedKind {
            x402_version: X402_VERSION,
            scheme: SCHEME.into(),
            network: f.network.clone(),
            extra: Some(PaychanExtra {
                peer: f.config.peer.clone(),
                two1_server: None,
                policy: f.limits,
            }),
        }],
        extensions: Vec::new(),
        signers: [("bip122:*".to_string(), vec![f.node_id.clone()])].into_iter().collect(),
    })
}

fn failure(reason: &str, e: &MerchantError) -> Response {
    tracing::warn!(error = %e, "facilitator request failed on the merchant's side");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "merchant failure: try again later", "reason": reason})),
    )
        .into_response()
}
