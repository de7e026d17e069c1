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

/// What the reader hands the writer, in the order of the requests.
enum Out {
    /// Answers ready to go.
    Frames(Vec<u8>),
    /// A run of payments whose write is in flight: answered once it landed.
    Run(Box<crate::PayRun>),
    /// Answered once everything before it was written out: the reader waits for it before a
    /// request that must see the payments before it stored (a resume, a close).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Runs of payments one connection may have checked and in flight at once.
const PIPELINE_DEPTH: usize = 64;

/// One connection, split (ADR 0027): the reader checks each run of pipelined payments and
/// queues its write, and goes on to the next run while the writer waits for the write to land
/// and sends the acknowledgements it released, in order.
async fn connection(
    server: Arc<ChannelServer>,
    tcp: TcpStream,
    limits: &Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The transport handshake counts against the Hello's deadline.
    let started = tokio::time::Instant::now();
    let handshake = paychan_transport::accept(tcp, server.node_key(), limits.handshake_timeout);
    let stream = tokio::select! {
        r = handshake => match r {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "transport handshake failed");
                return Ok(());
            }
        },
        _ = stop.changed() => return Ok(()),
    };
    let (reader, writer) = tokio::io::split(stream);
    let (tx, rx) = tokio::sync::mpsc::channel(PIPELINE_DEPTH);
    let read = read_requests(&server, reader, tx, limits, started, &mut stop);
    let write = write_answers(&server, writer, rx);
    let (read, write) = tokio::join!(read, write);
    read.and(write)
}

/// The reader: frames in, requests handled, answers (or runs in flight) out to the writer.
async fn read_requests<R: tokio::io::AsyncRead + Unpin>(
    server: &Arc<ChannelServer>,
    mut stream: R,
    tx: tokio::sync::mpsc::Sender<Out>,
    limits: &Limits,
    started: tokio::time::Instant,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    let mut greeted = false;
    let hello_by = started + limits.handshake_timeout;
    // The writer is gone (the peer stopped reading): nothing more to answer.
    let gone = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
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
            // A run of pipelined payments on one channel is validated and its write queued;
            // the writer acknowledges it once the write landed, while the next run is checked.
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
                if !replies.is_empty() {
                    tx.send(Out::Frames(std::mem::take(&mut replies))).await.map_err(|_| gone())?;
                }
                match channel {
                    Some(ch) => {
                        let run = server.pay_submit(ch, run).await;
                        tx.send(Out::Run(Box::new(run))).await.map_err(|_| gone())?;
                    }
                    None => {
                        for _ in &run {
                            let e = MerchantError::Core(paychan_core::Error::Decode(
                                "payment without a valid channel".into(),
                            ));
                            replies.extend(msg::encode_frame(&Message::Error(e.to_wire(None))));
                        }
                    }
                }
                continue;
            }
            let message = &incoming[i];
            i += 1;
            if greeted {
                // Whatever this is sees the payments before it stored and answered.
                let (done, wait) = tokio::sync::oneshot::channel();
                if !replies.is_empty() {
                    tx.send(Out::Frames(std::mem::take(&mut replies))).await.map_err(|_| gone())?;
                }
                tx.send(Out::Barrier(done)).await.map_err(|_| gone())?;
                wait.await.map_err(|_| gone())?;
            }
            let reply = match (message, greeted) {
                (Message::Hello(h), _) => server.hello(h).await.map(|w| {
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
            tx.send(Out::Frames(replies)).await.map_err(|_| gone())?;
            return Ok(());
        }
        if !replies.is_empty() {
            tx.send(Out::Frames(replies)).await.map_err(|_| gone())?;
        }
    }
}

/// The writer: answers out in the order of the requests. Every run handed to it is finished
/// (its write landed and handed back to the channel) even once the peer is gone, so the
/// channel never keeps a write in flight for nobody.
async fn write_answers<W: tokio::io::AsyncWrite + Unpin>(
    server: &Arc<ChannelServer>,
    mut stream: W,
    mut rx: tokio::sync::mpsc::Receiver<Out>,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut failed: Option<std::io::Error> = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Everything ready now leaves in one write.
        while let Some(item) = next.take() {
            match item {
                Out::Frames(frames) => out.extend(frames),
                Out::Run(run) => {
                    let channel = run.channel();
                    let done = server.pay_finish(*run).await;
                    for a in done.answers {
                        let reply = a
                            .map(Message::PaymentAck)
                            .unwrap_or_else(|e| Message::Error(e.to_wire(Some(channel))));
                        out.extend(msg::encode_frame(&reply));
                    }
                    if done.exhausted {
                        // Not here: it waits for every run of the channel in flight, and this
                        // writer finishes some of them.
                        let server = server.clone();
                        tokio::spawn(async move { server.settle_if_exhausted(channel).await });
                    }
                }
                Out::Barrier(done) => {
                    if failed.is_none() && !out.is_empty() {
                        if let Err(e) = send(&mut stream, &mut out).await {
                            failed = Some(e);
                        }
                    }
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if failed.is_none() && !out.is_empty() {
            if let Err(e) = send(&mut stream, &mut out).await {
                failed = Some(e);
            }
        }
        out.clear();
    }
    match failed {
        Some(e) => Err(e),
        None => {
            let _ = stream.shutdown().await;
            Ok(())
        }
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(())
}
