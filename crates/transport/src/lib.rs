//! # paychan-transport
//!
//! How the channel protocol travels: inside BOLT 8 (`Noise_XK_secp256k1_ChaChaPoly_SHA256`,
//! the core's sans-I/O [`noise`](paychan_core::noise) module) over TCP. A merchant is reached
//! at a [`NodeAddr`], `<node id>@host:port`: the customer refuses a peer that cannot prove
//! that node key, so nobody on the path can read the payments or stand in for the merchant.
//!
//! [`NoiseStream`] is an ordinary byte stream (`AsyncRead + AsyncWrite`) over the encrypted
//! session, so the drivers' framing runs on it unchanged: what is written is cut into BOLT 8
//! messages of at most 65,535 bytes, and what is read is authenticated before it is seen.
//!
//! [`tls`] builds the `rustls` configurations of the HTTP sides (listener, paying clients).

#![deny(missing_docs)]

pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use paychan_core::bitcoin::secp256k1::{PublicKey, SecretKey};
use paychan_core::noise::{
    Initiator, Responder, Session, ACT_ONE_LEN, ACT_THREE_LEN, ACT_TWO_LEN, HEADER_LEN,
    MAX_MESSAGE_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Errors of a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Not `<node id>@host:port`.
    #[error("not a merchant address {0:?}: expected <node id (66 hex digits)>@host:port")]
    Address(String),
    /// The connection could not be made or broke during the handshake.
    #[error("{peer}: {message}")]
    Io {
        /// Where.
        peer: String,
        /// What the system said.
        message: String,
    },
    /// The handshake did not finish in time.
    #[error("{0}: the transport handshake timed out")]
    Timeout(String),
    /// The handshake failed: for a customer, the peer does not hold the node key it dialed.
    #[error("{peer}: {error}")]
    Handshake {
        /// Where.
        peer: String,
        /// The core's reason.
        error: paychan_core::Error,
    },
    /// A TLS certificate, key or configuration could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The system gave no randomness for an ephemeral key.
    #[error("no randomness for a key: {0}")]
    Randomness(String),
}

/// A merchant's address: its node key and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// The node key (the merchant's node id).
    pub node_id: PublicKey,
    /// `host:port`.
    pub host_port: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node_id, self.host_port)
    }
}

impl std::str::FromStr for NodeAddr {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TransportError::Address(s.to_string());
        let (id, host_port) = s.trim().split_once('@').ok_or_else(bad)?;
        if id.len() != 66 || host_port.is_empty() || !host_port.contains(':') {
            return Err(bad());
        }
        let node_id = id.parse().map_err(|_| bad())?;
        Ok(NodeAddr { node_id, host_port: host_port.to_string() })
    }
}

/// A fresh secret key from the system's randomness.
///
/// # Errors
/// [`TransportError::Randomness`].
pub fn random_key() -> Result<SecretKey, TransportError> {
    for _ in 0..8 {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).map_err(|e| TransportError::Randomness(e.to_string()))?;
        // Below the curve order but for a chance of about 2^-128.
        if let Ok(k) = SecretKey::from_slice(&b) {
            return Ok(k);
        }
    }
    Err(TransportError::Randomness("no valid key in 8 draws".into()))
}

fn io_error(peer: &str) -> impl Fn(io::Error) -> TransportError + '_ {
    move |e| TransportError::Io { peer: peer.to_string(), message: e.to_string() }
}

/// Dials `addr` and runs the handshake as initiator with a fresh key of its own (a customer
/// needs no lasting identity): the merchant must prove `addr.node_id`. Nothing but the
/// handshake is sent before it has.
///
/// # Errors
/// [`TransportError::Io`], [`TransportError::Timeout`], or [`TransportError::Handshake`]
/// ([`paychan_core::Error::HandshakeFailed`]: the peer does not hold that node key).
pub async fn connect(addr: &NodeAddr, timeout: Duration) -> Result<NoiseStream, TransportError> {
    let peer = addr.to_string();
    let run = async {
        let mut tcp = TcpStream::connect(&addr.host_port).await.map_err(io_error(&peer))?;
        let _ = tcp.set_nodelay(true);
        let (hs, act_one) = Initiator::new(random_key()?, &addr.node_id, random_key()?);
        tcp.write_all(&act_one).await.map_err(io_error(&peer))?;
        let mut act_two = [0u8; ACT_TWO_LEN];
        tcp.read_exact(&mut act_two).await.map_err(|e| match e.kind() {
            // A merchant that cannot read act one (it is not encrypted to its key) hangs up.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                TransportError::Handshake {
                    peer: peer.clone(),
                    error: paychan_core::Error::HandshakeFailed,
                }
            }
            _ => io_error(&peer)(e),
        })?;
        let (act_three, session) = hs
            .read_act_two(&act_two)
            .map_err(|error| TransportError::Handshake { peer: peer.clone(), error })?;
        tcp.write_all(&act_three).await.map_err(io_error(&peer))?;
        Ok(NoiseStream::new(tcp, session))
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| TransportError::Timeout(peer.clone()))?
}

/// Runs the handshake as responder on an accepted connection, proving `node_key`. Returns
/// the stream and the initiator's (per-connection) key.
///
/// # Errors
/// As [`connect`]; [`paychan_core::Error::HandshakeFailed`] when the initiator does not know
/// this node's key.
pub async fn accept(
    mut tcp: TcpStream,
    node_key: &SecretKey,
    timeout: Duration,
) -> Result<(NoiseStream, PublicKey), TransportError> {
    let peer = tcp.peer_addr().map_or_else(|_| "peer".to_string(), |a| a.to_string());
    let run = async {
        let _ = tcp.set_nodelay(true);
        let responder = Responder::new(*node_key, random_key()?);
        let mut act_one = [0u8; ACT_ONE_LEN];
        tcp.read_exact(&mut act_one).await.map_err(io_error(&peer))?;
        let handshake = |error| TransportError::Handshake { peer: peer.clone(), error };
        let (hs, act_two) = responder.read_act_one(&act_one).map_err(handshake)?;
        tcp.write_all(&act_two).await.map_err(io_error(&peer))?;
        let mut act_three = [0u8; ACT_THREE_LEN];
        tcp.read_exact(&mut act_three).await.map_err(io_error(&peer))?;
        let (session, remote) = hs.read_act_three(&act_three).map_err(handshake)?;
        Ok((NoiseStream::new(tcp, session), remote))
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| TransportError::Timeout(peer.clone()))?
}

/// A byte stream inside an established BOLT 8 session.
pub struct NoiseStream<S = TcpStream> {
    inner: S,
    session: Session,
    /// Ciphertext read and not yet decrypted.
    rbuf: Vec<u8>,
    /// The wire size of the body announced by the last header read, until it is read.
    body_len: Option<usize>,
    /// Plaintext decrypted and not yet handed out, from `rpos`.
    plain: Vec<u8>,
    rpos: usize,
    /// Ciphertext not yet written, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> std::fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream").finish_non_exhaustive()
    }
}

impl<S> NoiseStream<S> {
    /// Wraps `inner` in the established `session`.
    pub fn new(inner: S, session: Session) -> Self {
        NoiseStream {
            inner,
            session,
            rbuf: Vec::with_capacity(HEADER_LEN + MAX_MESSAGE_LEN + 16),
            body_len: None,
            plain: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Decrypts whatever whole parts `rbuf` holds; true once a message's plaintext is ready.
    fn decrypt_ready(&mut self) -> io::Result<bool> {
        let bad = |e: paychan_core::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        if self.body_len.is_none() && self.rbuf.len() >= HEADER_LEN {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&self.rbuf[..HEADER_LEN]);
            self.body_len = Some(self.session.read_header(&header).map_err(bad)?);
            self.rbuf.drain(..HEADER_LEN);
        }
        match self.body_len {
            Some(n) if self.rbuf.len() >= n => {
                let mut body: Vec<u8> = self.rbuf.drain(..n).collect();
                self.session.read_body(&mut body).map_err(bad)?;
                self.body_len = None;
                self.plain = body;
                self.rpos = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rpos < this.plain.len() {
                let n = out.remaining().min(this.plain.len() - this.rpos);
                out.put_slice(&this.plain[this.rpos..this.rpos + n]);
                this.rpos += n;
                return Poll::Ready(Ok(()));
            }
            if this.decrypt_ready()? {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: clean only between messages.
                if this.rbuf.is_empty() && this.body_len.is_none() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            this.rbuf.extend_from_slice(rb.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out the ciphertext waiting in `wbuf`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier ciphertext first: at most one message waits at a time.
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_MESSAGE_LEN);
        this.session
            .encrypt(&buf[..n], &mut this.wbuf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Accepted: what the socket does not take now goes at the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
