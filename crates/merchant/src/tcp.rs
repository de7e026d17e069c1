//! The TCP listener: BOLT 8 (the merchant proves its node key; `paychan_transport`), then
//! length-prefixed protobuf frames inside it (DESIGN §7). A connection starts with `Hello`;
//! every request gets its answer (or an `ErrorMsg`) in order; an undecodable frame gets an
//! error and closes that connection only. Nothing is read in plaintext.

use std::future::Future;
use std::sync::Arc;

use paychan_core::msg::{self, ErrorMsg, FrameDecoder, Message, MAX_FRAME_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

pub use crate::listen::SHUTDOWN_GRACE;
use crate::listen::{serve_connections, Accepted, Limits};
use crate::{ChannelServer, MerchantError};

/// Serves `server` on `listener` with the default [`Limits`] until `shutdown` completes (see
/// [`serve_limited`]).
///
/// # Errors
/// None today: accept errors are ridden out (the signature keeps room for setup errors).
pub async fn serve(
    server: Arc<ChannelServer>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_limited(server, listener, Limits::default(), shutdown).await
}

/// Serves `server` on `listener` until `shutdown` completes. Then it stops accepting, lets
/// every connection finish the requests it is handling (their payments stored and
/// acknowledged), and returns once they have (or after [`SHUTDOWN_GRACE`]).
///
/// At most `limits.max_connections` are open at once; a peer that has not sent its `Hello`
/// within `limits.handshake_timeout`, or sends nothing for `limits.idle_timeout`, is
/// disconnected; an accept error never ends the server (see [`crate::listen`]).
///
/// # Errors
/// None today: accept errors are ridden out (the signature keeps room for setup errors).
pub async fn serve_limited(
    server: Arc<ChannelServer>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let handle = |accepted: Accepted, stop: tokio::sync::watch::Receiver<bool>| {
        let server = server.clone();
        let limits = limits.clone();
        async move {
            let Accepted { stream, peer, permit } = accepted;
            if let Err(e) = connection(server, stream, &limits, stop).await {
                debug!(%peer, error = %e, "connection closed");
            }
            drop(permit);
        }
    };
    serve_connections(listener, &limits, "channel server", shutdown, handle).await;
    Ok(())
}

async fn connection(
    server: Arc<ChannelServer>,
    tcp: TcpStream,
    limits: &Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The transport handshake counts against the Hello's deadline.
    let started = tokio::time::Instant::now();
    let handshake = paychan_transport::accept(tcp, server.node_key(), limits.handshake_timeout);
    let mut stream = tokio::select! {
        r = handshake => match r {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "transport handshake failed");
                return Ok(());
            }
        },
        _ = stop.changed() => return Ok(()),
    };
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    let mut greeted = false;
    let hello_by = started + limits.handshake_timeout;
    loop {
        // Until the Hello, one deadline from the start (a peer sending a byte at a time gains
        // nothing); then the idle timeout between requests.
        let deadline =
            if greeted { tokio::time::Instant::now() + limits.idle_timeout } else { hello_by };
        // Between requests only: a request being handled always finishes.
        let n = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match read {
                Ok(read) => read?,
                Err(_) => {
                    debug!(greeted, "connection timed out");
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
        let mut incoming = Vec::new();
        let mut broken = None;
        loop {
            match decoder.next_message() {
                Ok(Some(m)) => incoming.push(m),
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        let mut replies = Vec::new();
        let mut i = 0;
        while i < incoming.len() {
            // A run of pipelined payments on one channel is validated, stored in one write,
            // and acknowledged together.
            if let (true, Message::Pay(first)) = (greeted, &incoming[i]) {
                let channel = first.channel.as_ref().and_then(|c| c.outpoint().ok());
                let mut run = Vec::new();
                while let Some(Message::Pay(p)) = incoming.get(i) {
                    if p.channel.as_ref().and_then(|c| c.outpoint().ok()) != channel {
                        break;
                    }
                    run.push(p.clone());
                    i += 1;
                }
                let answers = match channel {
                    Some(ch) => server.pay_batch(ch, &run).await,
                    None => run
                        .iter()
                        .map(|_| {
                            Err(MerchantError::Core(paychan_core::Error::Decode(
                                "payment without a valid channel".into(),
                            )))
                        })
                        .collect(),
                };
                for a in answers {
                    let reply = a
                        .map(Message::PaymentAck)
                        .unwrap_or_else(|e| Message::Error(e.to_wire(channel)));
                    replies.extend(msg::encode_frame(&reply));
                }
                continue;
            }
            let message = &incoming[i];
            i += 1;
            let reply = match (message, greeted) {
                (Message::Hello(h), _) => server.hello(h).map(|w| {
                    greeted = true;
                    Message::Welcome(w)
                }),
                (_, false) => Err(MerchantError::Core(paychan_core::Error::UnexpectedMessage(
                    "the first message must be Hello",
                ))),
                (Message::Open(o), true) => server.open(o).await.map(Message::Opened),
                (Message::Resume(r), true) => server.resume(r).await.map(Message::Resumed),
                (Message::Close(c), true) => server.close(c).await.map(Message::Closed),
                (_, true) => Err(MerchantError::Core(paychan_core::Error::UnexpectedMessage(
                    "not a request",
                ))),
            };
            let channel = match message {
                Message::Close(c) => c.channel.as_ref().and_then(|c| c.outpoint().ok()),
                Message::Resume(r) => r.channel.as_ref().and_then(|c| c.outpoint().ok()),
                _ => None,
            };
            let reply = reply.unwrap_or_else(|e| Message::Error(e.to_wire(channel)));
            replies.extend(msg::encode_frame(&reply));
        }
        if let Some(e) = broken {
            // The stream can no longer be framed: answer what came before, say why, hang up.
            replies.extend(msg::encode_frame(&Message::Error(ErrorMsg::from_error(&e, None))));
            stream.write_all(&replies).await?;
            stream.flush().await?;
            return Ok(());
        }
        // Pipelined requests: all their answers leave in one write, in order.
        if !replies.is_empty() {
            stream.write_all(&replies).await?;
            stream.flush().await?;
        }
    }
}
