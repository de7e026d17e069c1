//! Listeners that never exit on a bad peer (ADR 0013): the TCP channel server and the HTTP
//! server both accept through one [`Acceptor`], which
//!
//! * caps the connections open at once ([`Limits::max_connections`]; past it, new ones wait in
//!   the kernel's backlog until one closes),
//! * survives accept errors: a failed connection is skipped, and a process out of file
//!   descriptors (or memory) logs, backs off (5 ms doubling to 1 s) and tries again, so the
//!   server serves again as soon as descriptors are free,
//!
//! and each server applies [`Limits::handshake_timeout`] (a TCP peer's `Hello`, an HTTP
//! request's headers) and [`Limits::idle_timeout`] (nothing received between requests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// How long a shutdown waits for connections to finish the requests they are handling.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits of a listener; every field has a default a public server can live with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (default 1,024). Keep it below the process's descriptor limit.
    pub max_connections: usize,
    /// Time for a new connection's first message: the TCP `Hello`, or an HTTP request's
    /// headers (default 10 s).
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (default 5 minutes).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The first wait after an accept error that is not the peer's (out of descriptors, memory).
pub const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The longest wait between two accept attempts after such errors.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections within [`Limits::max_connections`], riding out accept errors.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    /// Accept errors in a row.
    failures: u32,
}

/// An accepted connection; it counts against the cap until dropped.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Held while the connection lives.
    pub permit: OwnedSemaphorePermit,
}

impl Acceptor {
    /// Accepts on `listener` with `limits`.
    pub fn new(listener: TcpListener, limits: &Limits) -> Self {
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            failures: 0,
        }
    }

    /// The listener's address.
    ///
    /// # Errors
    /// The operating system's.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, once one is free under the cap. Never fails: errors of one
    /// connection are skipped, others logged and waited out.
    pub async fn accept(&mut self) -> Accepted {
        let permit = loop {
            // The semaphore is never closed.
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                break p;
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if self.failures > 0 {
                        info!(failures = self.failures, "accepting connections again");
                        self.failures = 0;
                    }
                    let _ = stream.set_nodelay(true);
                    return Accepted { stream, peer, permit };
                }
                Err(e) if is_peer_error(&e) => {}
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let wait = ACCEPT_BACKOFF_FIRST
                        .saturating_mul(1 << self.failures.min(16))
                        .min(ACCEPT_BACKOFF_MAX);
                    // The 1st, 2nd, 4th, 8th… in a row: no log flood while it lasts.
                    if self.failures.is_power_of_two() {
                        warn!(error = %e, failures = self.failures, retry_in_ms = wait.as_millis() as u64, "accept failed (out of file descriptors?); backing off");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Errors that concern one connection only.
fn is_peer_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Accepts on `listener` within `limits` and runs `handle` for each connection (its own
/// task) until `shutdown` completes. Then it stops accepting, tells every connection to stop
/// through the receiver it was given (they finish the request they are handling), and returns
/// once they have, or after [`SHUTDOWN_GRACE`]. Finished connections are reaped as they end.
pub async fn serve_connections<H, F>(
    listener: TcpListener,
    limits: &Limits,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
    handle: H,
) where
    H: Fn(Accepted, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener, limits);
    info!(addr = ?acceptor.local_addr().ok(), "{what} listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = acceptor.accept() => {
                connections.spawn(handle(accepted, stop_rx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    info!(connections = open, finished = drained.is_ok(), "{what} stopped");
}
