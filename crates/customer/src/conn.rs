//! A framed protocol connection to a merchant, inside BOLT 8 (`paychan_transport`).

use std::time::Duration;

use paychan_core::msg::{self, FrameDecoder, Hello, Message, Welcome, MAX_FRAME_LEN};
use paychan_transport::{NodeAddr, NoiseStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::CustomerError;

/// How long to wait for the merchant's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One encrypted connection speaking the channel protocol.
#[derive(Debug)]
pub struct Connection {
    stream: NoiseStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `peer` (`<node id>@host:port`), makes it prove that node id (BOLT 8), and
    /// says hello.
    ///
    /// # Errors
    /// [`CustomerError::Transport`] for an address without a node id, an unreachable peer or
    /// one that cannot prove the node id; [`CustomerError::Io`] or
    /// [`CustomerError::Protocol`].
    pub async fn connect(peer: &str) -> Result<(Self, Welcome), CustomerError> {
        let addr: NodeAddr = peer.parse()?;
        let stream = paychan_transport::connect(&addr, ANSWER_TIMEOUT).await?;
        let mut c =
            Connection { stream, decoder: FrameDecoder::new(MAX_FRAME_LEN), buf: vec![0; 65_536] };
        c.send(&[Message::Hello(Hello {
            min_version: msg::MIN_PROTOCOL_VERSION,
            max_version: msg::PROTOCOL_VERSION,
            user_agent: concat!("paychan/", env!("CARGO_PKG_VERSION")).into(),
        })])
        .await?;
        match c.recv().await? {
            Message::Welcome(w) => Ok((c, w)),
            Message::Error(e) => Err(CustomerError::Rejected { code: e.code, message: e.message }),
            _ => Err(CustomerError::Protocol("the merchant did not answer Hello with Welcome")),
        }
    }

    /// Sends messages in one write.
    ///
    /// # Errors
    /// [`CustomerError::Io`].
    pub async fn send(&mut self, msgs: &[Message]) -> Result<(), CustomerError> {
        let mut bytes = Vec::new();
        for m in msgs {
            bytes.extend(msg::encode_frame(m));
        }
        self.stream.write_all(&bytes).await.map_err(|e| CustomerError::Io(e.to_string()))?;
        self.stream.flush().await.map_err(|e| CustomerError::Io(e.to_string()))
    }

    /// The next message.
    ///
    /// # Errors
    /// [`CustomerError::Io`] on timeout or a closed connection; [`CustomerError::Core`] for a
    /// frame that does not decode.
    pub async fn recv(&mut self) -> Result<Message, CustomerError> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            let n = tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read(&mut self.buf))
                .await
                .map_err(|_| CustomerError::Io("the merchant did not answer in time".into()))?
                .map_err(|e| CustomerError::Io(e.to_string()))?;
            if n == 0 {
                return Err(CustomerError::Io("the merchant closed the connection".into()));
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}
