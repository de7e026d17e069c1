//! The TCP listener: length-prefixed protobuf frames (DESIGN §7). A connection starts with
//! `Hello`; every request gets its answer (or an `ErrorMsg`) in order; an undecodable frame
//! gets an error and closes that connection only.

use std::future::Future;
use std::sync::Arc;

use paychan_core::msg::{self, ErrorMsg, FrameDecoder, Message, MAX_FRAME_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::{ChannelServer, MerchantError};

/// How long a shutdown waits for connections to finish the requests they are handling.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `server` on `listener` until `shutdown` completes. Then it stops accepting, lets
/// every connection finish the requests it is handling (their payments stored and
/// acknowledged), and returns once they have (or after [`SHUTDOWN_GRACE`]).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    server: Arc<ChannelServer>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    info!(addr = ?listener.local_addr().ok(), "channel server listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    if let Err(e) = connection(server, stream, stop).await {
                        debug!(%peer, error = %e, "connection closed");
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    info!(connections = open, finished = drained.is_ok(), "channel server stopped");
    Ok(())
}

async fn connection(
    server: Arc<ChannelServer>,
    mut stream: TcpStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    let mut greeted = false;
    loop {
        // Between requests only: a request being handled always finishes.
        let n = tokio::select! {
            read = stream.read(&mut buf) => read?,
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
            return Ok(());
        }
        // Pipelined requests: all their answers leave in one write, in order.
        if !replies.is_empty() {
            stream.write_all(&replies).await?;
        }
    }
}
