//! JSON-RPC over HTTPS: a [`jsonrpc::Transport`] for a node reached through a TLS terminator
//! (Bitcoin Core's RPC server has no TLS of its own since 0.12).
//!
//! HTTP/1.1 on one kept-alive `rustls` connection, as `jsonrpc`'s own `simple_http` does over
//! plain TCP: requests are serialised by a lock (the node answers one at a time per
//! connection anyway), a connection the other side closed while idle is replaced once, and
//! the response body may come with a `Content-Length` or chunked (terminators re-chunk).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bitcoincore_rpc::jsonrpc::{self, Request, Response};
use rustls::pki_types::ServerName;

/// The longest response accepted (a block of 4 MB weight in hex is under 8 MB).
const MAX_BODY: usize = 64 << 20;
/// The longest status or header line accepted.
const MAX_LINE: u64 = 8 << 10;

type Stream = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// [`jsonrpc::Transport`] over HTTPS.
pub(crate) struct HttpsTransport {
    /// `host:port` as given, for the `Host` header and messages.
    authority: String,
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    path: String,
    /// `Basic …`, when the node wants a user and password (always, for Core).
    authorization: Option<String>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    conn: Mutex<Option<Stream>>,
}

fn error(message: impl Into<String>) -> jsonrpc::Error {
    jsonrpc::Error::Transport(message.into().into())
}

fn io_error(authority: &str, e: &std::io::Error) -> jsonrpc::Error {
    // rustls's own error (e.g. "invalid peer certificate: UnknownIssuer") is the io error's
    // inner error; its text is the io error's text.
    error(format!("https://{authority}: {e}"))
}

impl HttpsTransport {
    /// A transport to `url` (`https://host[:port][/path]`; 443 when no port is given).
    pub(crate) fn new(
        url: &str,
        user: Option<String>,
        pass: Option<String>,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, jsonrpc::Error> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| error(format!("{url}: not an https:// URL")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(error(format!("{url}: give the user and password apart, not in the URL")));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| error(format!("{url}: expected https://host[:port][/path]")))?;
        let addrs: Vec<SocketAddr> =
            (host, port).to_socket_addrs().map_err(|e| error(format!("{url}: {e}")))?.collect();
        if addrs.is_empty() {
            return Err(error(format!("{url}: the host has no address")));
        }
        let server_name =
            ServerName::try_from(host.to_string()).map_err(|e| error(format!("{url}: {e}")))?;
        let authorization = user.map(|u| {
            let pair = format!("{u}:{}", pass.unwrap_or_default());
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        Ok(HttpsTransport {
            authority: authority.to_string(),
            addrs,
            server_name,
            path: path.to_string(),
            authorization,
            config,
            timeout: Duration::from_secs(15),
            conn: Mutex::new(None),
        })
    }

    fn connect(&self) -> Result<Stream, jsonrpc::Error> {
        let mut last = None;
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, self.timeout) {
                Ok(tcp) => {
                    let io = |e: std::io::Error| io_error(&self.authority, &e);
                    tcp.set_read_timeout(Some(self.timeout)).map_err(io)?;
                    tcp.set_write_timeout(Some(self.timeout)).map_err(io)?;
                    tcp.set_nodelay(true).map_err(io)?;
                    let tls = rustls::ClientConnection::new(
                        self.config.clone(),
                        self.server_name.clone(),
                    )
                    .map_err(|e| error(format!("https://{}: {e}", self.authority)))?;
                    return Ok(BufReader::new(rustls::StreamOwned::new(tls, tcp)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => io_error(&self.authority, &e),
            None => error(format!("https://{}: no address", self.authority)),
        })
    }

    fn request_bytes(&self, body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.path,
            self.authority,
            body.len()
        );
        if let Some(a) = &self.authorization {
            head.push_str("Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// POSTs `body` and returns the response's status and body.
    fn post(&self, body: &[u8]) -> Result<(u16, Vec<u8>), jsonrpc::Error> {
        let request = self.request_bytes(body);
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // A kept connection may have been closed by the other side while idle: a failure
        // before any byte of the answer is retried once on a fresh connection. A fresh
        // connection's failure is the answer.
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => self.connect()?,
        };
        let answer = match exchange(&mut stream, &request) {
            Err(Failure::BeforeAnswer(_)) if reused => {
                stream = self.connect()?;
                exchange(&mut stream, &request)
            }
            other => other,
        };
        match answer {
            Ok((status, body, keep)) => {
                if keep {
                    *conn = Some(stream);
                }
                Ok((status, body))
            }
            Err(Failure::BeforeAnswer(e) | Failure::InAnswer(e)) => {
                Err(io_error(&self.authority, &e))
            }
            Err(Failure::Malformed(m)) => {
                Err(error(format!("https://{}: malformed HTTP answer: {m}", self.authority)))
            }
        }
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: &impl serde::Serialize,
    ) -> Result<T, jsonrpc::Error> {
        let body = serde_json::to_vec(request)?;
        let (status, body) = self.post(&body)?;
        // Core answers an RPC error with a JSON body and a non-200 status (500, 404); its
        // body is the answer. Anything else with an error status is the status.
        match serde_json::from_slice(&body) {
            Ok(r) => Ok(r),
            Err(_) if status == 401 || status == 403 => Err(error(format!(
                "https://{}: HTTP {status}: the node refused the RPC user and password",
                self.authority
            ))),
            Err(_) if status != 200 => {
                Err(error(format!("https://{}: HTTP {status}", self.authority)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl jsonrpc::Transport for HttpsTransport {
    fn send_request(&self, request: Request) -> Result<Response, jsonrpc::Error> {
        self.call(&request)
    }

    fn send_batch(&self, requests: &[Request]) -> Result<Vec<Response>, jsonrpc::Error> {
        self.call(&requests)
    }

    fn fmt_target(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority, self.path)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 443,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None if !authority.is_empty() => Some((authority, 443)),
        None => None,
    }
}

enum Failure {
    /// Nothing of the answer was read: the request may be sent again on a new connection.
    BeforeAnswer(std::io::Error),
    InAnswer(std::io::Error),
    Malformed(String),
}

/// Sends `request` and reads one answer: status, body, and whether the connection may be kept.
fn exchange(stream: &mut Stream, request: &[u8]) -> Result<(u16, Vec<u8>, bool), Failure> {
    stream.get_mut().write_all(request).map_err(Failure::BeforeAnswer)?;
    stream.get_mut().flush().map_err(Failure::BeforeAnswer)?;
    let status_line = match read_line(stream) {
        Ok(l) if l.is_empty() => {
            return Err(Failure::BeforeAnswer(std::io::ErrorKind::UnexpectedEof.into()))
        }
        Ok(l) => l,
        Err(e) => return Err(Failure::BeforeAnswer(e)),
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Failure::Malformed(format!("status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Malformed(format!("status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = version != "HTTP/1.0";
    loop {
        let line = read_line(stream).map_err(Failure::InAnswer)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Failure::Malformed(format!("header {line:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| Failure::Malformed(format!("Content-Length {value:?}")))?;
                if n > MAX_BODY {
                    return Err(Failure::Malformed(format!("a body of {n} bytes")));
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(stream)?
    } else if let Some(n) = length {
        let mut body = vec![0; n];
        stream.read_exact(&mut body).map_err(Failure::InAnswer)?;
        body
    } else {
        // No length: the body ends with the connection.
        keep = false;
        let mut body = Vec::new();
        stream.take(MAX_BODY as u64 + 1).read_to_end(&mut body).map_err(Failure::InAnswer)?;
        if body.len() > MAX_BODY {
            return Err(Failure::Malformed("a body over the limit".into()));
        }
        body
    };
    Ok((status, body, keep))
}

/// One line without its CRLF; empty at the end of the headers (or of the stream).
fn read_line(stream: &mut Stream) -> std::io::Result<String> {
    let mut line = String::new();
    stream.by_ref().take(MAX_LINE).read_line(&mut line)?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

fn read_chunked(stream: &mut Stream) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream).map_err(Failure::InAnswer)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16)
            .map_err(|_| Failure::Malformed(format!("chunk size {line:?}")))?;
        if n == 0 {
            // Trailers, then the empty line.
            while !read_line(stream).map_err(Failure::InAnswer)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + n > MAX_BODY {
            return Err(Failure::Malformed("a body over the limit".into()));
        }
        let start = body.len();
        body.resize(start + n, 0);
        stream.read_exact(&mut body[start..]).map_err(Failure::InAnswer)?;
        let mut crlf = [0; 2];
        stream.read_exact(&mut crlf).map_err(Failure::InAnswer)?;
        if &crlf != b"\r\n" {
            return Err(Failure::Malformed("a chunk without its CRLF".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_and_port_are_split_with_443_by_default() {
        assert_eq!(split_host_port("node.example:8443"), Some(("node.example", 8443)));
        assert_eq!(split_host_port("node.example"), Some(("node.example", 443)));
        assert_eq!(split_host_port("[::1]:8443"), Some(("::1", 8443)));
        assert_eq!(split_host_port("[::1]"), Some(("::1", 443)));
        assert_eq!(split_host_port(":8443"), None);
        assert_eq!(split_host_port("host:port"), None);
        assert_eq!(split_host_port(""), None);
    }
}
