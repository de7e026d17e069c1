//! A local HTTP proxy that pays (`paychan proxy`): every request is sent on through a
//! [`PayingClient`], which pays the merchant's 402 from the customer's channels within its
//! [`Caps`](crate::Caps).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use paychan_core::paywall::{end_to_end, MAX_PROXY_BODY};

use crate::{CustomerError, PayingClient};

/// The proxy's app: every request, whatever its path, goes through [`forward`]. With
/// `https_upstream`, an `http://` URL asked of the proxy is fetched as `https://` (same host,
/// port and path): local clients keep speaking plain HTTP to the proxy on loopback, the
/// merchant is reached over TLS (its certificate checked), and payments never cross the
/// network in clear.
pub fn router(client: Arc<PayingClient>, https_upstream: bool) -> axum::Router {
    axum::Router::new().fallback(move |req: Request<Body>| {
        let client = client.clone();
        async move { forward(&client, req, https_upstream).await }
    })
}

/// Sends one proxied request (absolute-form, `GET http://merchant/path`) on through `client`,
/// paying a 402 on the way; answers the merchant's response with `x-paychan-paid-sat`, or
/// 402 when a cap refused the price, or 502 when the merchant could not be reached or paid.
pub async fn forward(client: &PayingClient, req: Request<Body>, https_upstream: bool) -> Response {
    if req.method() == axum::http::Method::CONNECT {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "paychan proxy cannot pay inside a tunnel (CONNECT): ask it for the http:// URL and \
             start it with --https-upstream to reach an HTTPS merchant, or use `paychan buy`\n",
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "paychan proxy is an HTTP proxy: curl -x http://127.0.0.1:8402 http://merchant/path\n",
        )
            .into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_PROXY_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body above 16 MiB\n").into_response()
        }
    };
    let url = match (https_upstream, parts.uri.scheme_str()) {
        (true, Some("http")) => format!("https{}", &parts.uri.to_string()["http".len()..]),
        _ => parts.uri.to_string(),
    };
    match client.request(parts.method, &url, &end_to_end(&parts.headers), body).await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            // The upstream's headers only (no Content-Type of our own beside theirs).
            let mut resp = Response::new(Body::from(r.body));
            *resp.status_mut() = status;
            *resp.headers_mut() = end_to_end(&r.headers);
            resp.headers_mut()
                .insert("x-paychan-paid-sat", axum::http::HeaderValue::from(r.paid.to_sat()));
            resp
        }
        Err(e @ (CustomerError::PriceTooHigh { .. } | CustomerError::SpendingCap { .. })) => {
            (StatusCode::PAYMENT_REQUIRED, format!("paychan proxy: {e}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("paychan proxy: {e}\n")).into_response(),
    }
}
