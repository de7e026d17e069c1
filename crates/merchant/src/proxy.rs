//! The paywall's reverse proxy: bodies stream both ways (no whole-body buffer: a 200 MiB
//! download or a server-sent event stream goes through as it comes, with the client's pace
//! holding the upstream back), WebSocket upgrades are passed through (the paywall charges the
//! upgrade request, once), and several upstreams are chosen by host and path prefix.
//!
//! An unreachable upstream is a `502`, one that does not answer within the timeout a `504`
//! (the timeout covers the answer's head, not a long body or stream); both reverse the
//! charge, as any 5xx does.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use paychan_core::paywall::end_to_end;
use tracing::{debug, warn};

use crate::MerchantError;

/// One upstream and the requests it takes: those to `host` (any host when `None`) whose path
/// starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The `Host` it serves (lowercase, without port), or every host.
    pub host: Option<String>,
    /// The path prefix (`/` for every path).
    pub prefix: String,
    /// Its base URL, `http://host:port[/base]` or `https://…`.
    pub base: String,
}

impl Upstream {
    /// Parses `URL` (every path), `/prefix=URL`, or `host/prefix=URL`.
    ///
    /// # Errors
    /// [`MerchantError::Upstream`] for anything else.
    pub fn parse(s: &str) -> Result<Self, MerchantError> {
        let bad = |why: &str| MerchantError::Upstream(format!("--upstream {s:?}: {why}"));
        let (route, url) = match s.split_once('=') {
            Some((r, u)) => (Some(r), u),
            None => (None, s),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("the upstream URL starts with http:// or https://"));
        }
        url.parse::<Uri>().map_err(|e| bad(&e.to_string()))?;
        let (host, prefix) = match route {
            None => (None, "/".to_string()),
            Some(r) if r.starts_with('/') => (None, r.to_string()),
            Some(r) => match r.split_once('/') {
                Some((h, p)) if !h.is_empty() => (Some(h.to_ascii_lowercase()), format!("/{p}")),
                _ => return Err(bad("a route is /prefix or host/prefix")),
            },
        };
        Ok(Upstream { host, prefix, base: url.trim_end_matches('/').to_string() })
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(h)) => want == h,
            (Some(_), None) => false,
        };
        // `/api` takes `/api` and `/api/…`, not `/apis`.
        let p = self.prefix.trim_end_matches('/');
        host_ok && (p.is_empty() || path == p || path.starts_with(&format!("{p}/")))
    }
}

/// The upstreams of a proxy; a request goes to the matching one with a host first, then the
/// longest prefix.
#[derive(Debug, Clone, Default)]
pub struct Upstreams(Vec<Upstream>);

impl Upstreams {
    /// The upstreams, in any order.
    pub fn new(mut all: Vec<Upstream>) -> Self {
        all.sort_by_key(|u| {
            (u.host.is_none(), std::cmp::Reverse(u.prefix.trim_end_matches('/').len()))
        });
        Upstreams(all)
    }

    /// The upstream of a request to `host` (with or without port) for `path`.
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<&Upstream> {
        let host = host.map(|h| {
            let name = if h.starts_with('[') {
                h.split(']').next().map_or(h, |n| n).trim_start_matches('[')
            } else {
                h.rsplit_once(':').map_or(h, |(n, _)| n)
            };
            name.to_ascii_lowercase()
        });
        self.0.iter().find(|u| u.matches(host.as_deref(), path))
    }
}

struct Proxy {
    upstreams: Upstreams,
    client: reqwest::Client,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A service forwarding each request to its upstream (see the module documentation). `http`
/// makes the HTTP client (its TLS trust); `tls` is the trust of WebSocket upgrades to
/// `https://` upstreams (the system's roots when `None`).
pub fn router(
    upstreams: Upstreams,
    timeout: Duration,
    http: reqwest::ClientBuilder,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> axum::Router {
    let client = http
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .build()
        .unwrap_or_default();
    let proxy = Arc::new(Proxy { upstreams, client, timeout, tls });
    axum::Router::new().fallback(move |req: Request<Body>| {
        let proxy = proxy.clone();
        async move { proxy.forward(req).await }
    })
}

fn is_upgrade(h: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has(header::CONNECTION, "upgrade") && h.contains_key(header::UPGRADE)
}

/// Whether the request has a body to send (a length, or a transfer coding).
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl Proxy {
    async fn forward(&self, req: Request<Body>) -> Response {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(up) = self.upstreams.pick(host.as_deref(), req.uri().path()) else {
            return (StatusCode::NOT_FOUND, "no upstream serves this path").into_response();
        };
        let base = up.base.clone();
        if is_upgrade(req.headers()) {
            return self.upgrade(&base, req).await;
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{base}{path}");
        let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
            return (StatusCode::METHOD_NOT_ALLOWED, "unsupported method").into_response();
        };
        let mut headers = end_to_end(&parts.headers);
        let mut out = self.client.request(method, &url);
        if has_body(&parts.headers) {
            // Streamed as it arrives; a known length is kept (else chunked).
            if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
                headers.insert(header::CONTENT_LENGTH, len.clone());
            }
            out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        let resp = match tokio::time::timeout(self.timeout, out.headers(headers).send()).await {
            Err(_) => {
                return (StatusCode::GATEWAY_TIMEOUT, "the upstream did not answer in time")
                    .into_response()
            }
            Ok(Err(e)) => {
                warn!(upstream = %base, error = %e, "upstream unreachable");
                return (StatusCode::BAD_GATEWAY, "the upstream is unreachable").into_response();
            }
            Ok(Ok(r)) => r,
        };
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut headers = end_to_end(resp.headers());
        if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, len.clone());
        }
        let stream = resp.bytes_stream().map_err(|e| {
            debug!(error = %e, "the upstream's answer broke off");
            std::io::Error::other(e)
        });
        let mut r = Response::new(Body::from_stream(stream));
        *r.status_mut() = status;
        r.headers_mut().extend(headers);
        r
    }

    /// A WebSocket (or other `Upgrade`) request: sent to the upstream on a connection of its
    /// own; on `101` both upgraded connections are joined byte for byte until either closes.
    async fn upgrade(&self, base: &str, mut req: Request<Body>) -> Response {
        let on_client = hyper::upgrade::on(&mut req);
        let Ok(uri) = base.parse::<Uri>() else {
            return (StatusCode::BAD_GATEWAY, "bad upstream URL").into_response();
        };
        let https = uri.scheme_str() == Some("https");
        let Some(host) = uri.host().map(str::to_string) else {
            return (StatusCode::BAD_GATEWAY, "bad upstream URL").into_response();
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = match tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => return (StatusCode::BAD_GATEWAY, "the upstream is unreachable").into_response(),
        };
        let io: Box<dyn Io> = if https {
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => match paychan_transport::tls::client_config(None) {
                    Ok(c) => Arc::new(c),
                    Err(_) => {
                        return (StatusCode::BAD_GATEWAY, "no TLS trust for the upstream")
                            .into_response()
                    }
                },
            };
            let Ok(name) = rustls::pki_types::ServerName::try_from(host.clone()) else {
                return (StatusCode::BAD_GATEWAY, "bad upstream host").into_response();
            };
            match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    warn!(upstream = %base, error = %e, "TLS to the upstream failed");
                    return (StatusCode::BAD_GATEWAY, "TLS to the upstream failed").into_response();
                }
            }
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await {
                Ok(x) => x,
                Err(_) => {
                    return (StatusCode::BAD_GATEWAY, "the upstream is unreachable").into_response()
                }
            };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream upgrade connection ended");
            }
        });
        // The request as the client sent it (the upgrade headers included), for the
        // upstream's host and path.
        let base_path = uri.path().trim_end_matches('/');
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut up = Request::builder().method(req.method()).uri(format!("{base_path}{path}"));
        for (name, value) in req.headers() {
            if name != header::HOST {
                up = up.header(name, value);
            }
        }
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let Ok(up) = up.header(header::HOST, authority).body(Body::empty()) else {
            return (StatusCode::BAD_REQUEST, "bad upgrade request").into_response();
        };
        let mut resp = match tokio::time::timeout(self.timeout, sender.send_request(up)).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                return (StatusCode::BAD_GATEWAY, "the upstream is unreachable").into_response()
            }
            Err(_) => {
                return (StatusCode::GATEWAY_TIMEOUT, "the upstream did not answer in time")
                    .into_response()
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Refused: its answer as it is.
            let (parts, body) = resp.into_parts();
            return Response::from_parts(parts, Body::new(body));
        }
        let on_upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (on_client.await, on_upstream.await) {
                (Ok(c), Ok(u)) => {
                    let (mut c, mut u) =
                        (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                (c, u) => debug!(client = c.is_ok(), upstream = u.is_ok(), "upgrade not completed"),
            }
        });
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (name, value) in resp.headers() {
            out.headers_mut().append(name, value.clone());
        }
        if !out.headers().contains_key(header::CONNECTION) {
            out.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        out
    }
}

/// A byte stream to an upstream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstreams_by_host_and_longest_prefix() {
        let u = Upstreams::new(vec![
            Upstream::parse("http://default:1").unwrap(),
            Upstream::parse("/api=http://api:2").unwrap(),
            Upstream::parse("/api/v2=http://v2:3/base/").unwrap(),
            Upstream::parse("files.example/=http://files:4").unwrap(),
        ]);
        let pick = |h: Option<&str>, p: &str| u.pick(h, p).map(|x| x.base.as_str());
        assert_eq!(pick(None, "/"), Some("http://default:1"));
        assert_eq!(pick(None, "/api"), Some("http://api:2"));
        assert_eq!(pick(None, "/api/x"), Some("http://api:2"));
        assert_eq!(pick(None, "/apis"), Some("http://default:1"), "a prefix is a path segment");
        assert_eq!(pick(None, "/api/v2/y"), Some("http://v2:3/base"));
        assert_eq!(pick(Some("FILES.example:8080"), "/api"), Some("http://files:4"), "host first");
        assert_eq!(pick(Some("other"), "/x"), Some("http://default:1"));
        for bad in ["ftp://x", "/api=", "=http://x", "api"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        let only = Upstreams::new(vec![Upstream::parse("/api=http://api:2").unwrap()]);
        assert!(only.pick(None, "/other").is_none());
    }
}
