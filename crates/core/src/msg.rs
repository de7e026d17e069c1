//! The TCP protocol's messages (DESIGN §7): protobuf bodies in length-prefixed frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a protobuf [`Frame`].
//! Decoding is total: truncated, oversized and garbage input return an [`Error`], never panic,
//! and an oversized frame is refused from its header alone, before its body is buffered.
//!
//! A session starts with [`Hello`] (the versions the client speaks) answered by [`Welcome`] (the
//! version chosen, the merchant's key for a new channel, the policy limits). Then: [`Open`] →
//! [`Opened`]; [`Pay`] → [`PaymentAck`] (pipelined: several pays in flight, acknowledged in
//! order); [`Resume`] → [`Resumed`] after a reconnect; [`Close`] → [`Closed`]; and [`ErrorMsg`]
//! (code and text) in answer to anything refused.

use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, Txid};
use prost::Message as _;

use crate::policy::Policy;
use crate::Error;

/// The protocol version this build speaks: 2 adds dispute channels (the trigger's signatures
/// in [`Open`] and [`Opened`], the cooperative close in [`Closed`]).
pub const PROTOCOL_VERSION: u32 = 2;
/// The first protocol version with dispute channels.
pub const DISPUTE_PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The largest frame body accepted (a funding transaction at Bitcoin Core's maximum standard
/// weight fits with room to spare).
pub const MAX_FRAME_LEN: usize = 512 * 1024;
/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// One frame's body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// The message.
    #[prost(oneof = "Message", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub message: Option<Message>,
}

/// Every message of the protocol.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Message {
    /// Client → merchant: the versions the client speaks.
    #[prost(message, tag = "1")]
    Hello(Hello),
    /// Merchant → client: version chosen, channel key, policy.
    #[prost(message, tag = "2")]
    Welcome(Welcome),
    /// Client → merchant: open a channel on this funding transaction.
    #[prost(message, tag = "3")]
    Open(Open),
    /// Merchant → client: the channel is accepted.
    #[prost(message, tag = "4")]
    Opened(Opened),
    /// Client → merchant: a payment of a new cumulative total.
    #[prost(message, tag = "5")]
    Pay(Pay),
    /// Merchant → client: the total is stored durably.
    #[prost(message, tag = "6")]
    PaymentAck(PaymentAck),
    /// Client → merchant: continue a channel after a reconnect.
    #[prost(message, tag = "7")]
    Resume(Resume),
    /// Merchant → client: the latest accepted total.
    #[prost(message, tag = "8")]
    Resumed(Resumed),
    /// Client → merchant: settle the channel now.
    #[prost(message, tag = "9")]
    Close(Close),
    /// Merchant → client: the settlement's txid.
    #[prost(message, tag = "10")]
    Closed(Closed),
    /// Either way: a refusal, with a code and text.
    #[prost(message, tag = "11")]
    Error(ErrorMsg),
}

/// A channel id on the wire: the funding outpoint.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChannelRef {
    /// Funding txid, 32 bytes in internal byte order.
    #[prost(bytes = "vec", tag = "1")]
    pub txid: Vec<u8>,
    /// Funding output index.
    #[prost(uint32, tag = "2")]
    pub vout: u32,
}

impl From<OutPoint> for ChannelRef {
    fn from(o: OutPoint) -> Self {
        ChannelRef { txid: o.txid.to_byte_array().to_vec(), vout: o.vout }
    }
}

impl ChannelRef {
    /// The outpoint this names.
    ///
    /// # Errors
    /// [`Error::Decode`] when the txid is not 32 bytes.
    pub fn outpoint(&self) -> Result<OutPoint, Error> {
        let bytes: [u8; 32] = self
            .txid
            .as_slice()
            .try_into()
            .map_err(|_| Error::Decode(format!("txid of {} bytes, not 32", self.txid.len())))?;
        Ok(OutPoint { txid: Txid::from_byte_array(bytes), vout: self.vout })
    }
}

/// Opening of a session.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Hello {
    /// Lowest version the client speaks.
    #[prost(uint32, tag = "1")]
    pub min_version: u32,
    /// Highest version the client speaks.
    #[prost(uint32, tag = "2")]
    pub max_version: u32,
    /// Free-form client name and version.
    #[prost(string, tag = "3")]
    pub user_agent: String,
}

/// The merchant's policy limits, as a client needs them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicyLimits {
    /// Smallest deposit accepted, sat.
    #[prost(uint64, tag = "1")]
    pub min_deposit_sat: u64,
    /// Largest deposit accepted, sat.
    #[prost(uint64, tag = "2")]
    pub max_deposit_sat: u64,
    /// Shortest channel life accepted at open, s.
    #[prost(uint32, tag = "3")]
    pub min_channel_life_secs: u32,
    /// Longest channel life accepted at open, s.
    #[prost(uint32, tag = "4")]
    pub max_channel_life_secs: u32,
    /// Settlement happens this long before expiry, s.
    #[prost(uint32, tag = "5")]
    pub settle_margin_secs: u32,
    /// Payments stop this long before the settlement, s.
    #[prost(uint32, tag = "6")]
    pub payment_cutoff_secs: u32,
    /// Funding confirmations before payments are accepted.
    #[prost(uint32, tag = "7")]
    pub min_confirmations: u32,
    /// Whether unconfirmed funding is accepted.
    #[prost(bool, tag = "8")]
    pub zero_conf: bool,
    /// Dust relay fee, sat per 1,000 vbytes.
    #[prost(uint64, tag = "9")]
    pub dust_relay_fee_sat_per_kvb: u64,
    /// Close-out balance, sat.
    #[prost(uint64, tag = "10")]
    pub close_out_sat: u64,
    /// Shortest dispute period accepted for a dispute channel, blocks (0 from a merchant
    /// without dispute channels).
    #[prost(uint32, tag = "11")]
    pub min_dispute_blocks: u32,
}

impl From<&Policy> for PolicyLimits {
    fn from(p: &Policy) -> Self {
        PolicyLimits {
            min_deposit_sat: p.min_deposit.to_sat(),
            max_deposit_sat: p.max_deposit.to_sat(),
            min_channel_life_secs: p.min_channel_life_secs,
            max_channel_life_secs: p.max_channel_life_secs,
            settle_margin_secs: p.settle_margin_secs,
            payment_cutoff_secs: p.payment_cutoff_secs,
            min_confirmations: p.min_confirmations,
            zero_conf: p.zero_conf,
            dust_relay_fee_sat_per_kvb: p.dust_relay_fee.to_sat_per_kwu() * 4,
            close_out_sat: p.close_out.to_sat(),
            min_dispute_blocks: u32::from(p.min_dispute_blocks),
        }
    }
}

impl PolicyLimits {
    /// The policy these limits describe (with the default deposit and expiry clamped into
    /// them), validated.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] when the limits are inconsistent.
    pub fn to_policy(&self) -> Result<Policy, Error> {
        let d = Policy::default();
        let min_deposit = Amount::from_sat(self.min_deposit_sat);
        let max_deposit = Amount::from_sat(self.max_deposit_sat);
        let p = Policy {
            default_deposit: d.default_deposit.clamp(min_deposit, max_deposit.max(min_deposit)),
            min_deposit,
            max_deposit,
            default_expiry_secs: d.default_expiry_secs.clamp(
                self.min_channel_life_secs,
                self.max_channel_life_secs.max(self.min_channel_life_secs),
            ),
            min_channel_life_secs: self.min_channel_life_secs,
            max_channel_life_secs: self.max_channel_life_secs,
            settle_margin_secs: self.settle_margin_secs,
            payment_cutoff_secs: self.payment_cutoff_secs,
            min_confirmations: self.min_confirmations,
            zero_conf: self.zero_conf,
            dust_relay_fee: bitcoin::FeeRate::from_sat_per_kwu(self.dust_relay_fee_sat_per_kvb / 4),
            close_out: Amount::from_sat(self.close_out_sat),
            // An older merchant (no dispute channels) sends 0: the default, unused.
            min_dispute_blocks: match u16::try_from(self.min_dispute_blocks) {
                Ok(0) => d.min_dispute_blocks,
                Ok(b) => b,
                Err(_) => u16::MAX,
            },
        };
        p.validate()?;
        Ok(p)
    }
}

/// The merchant's answer to [`Hello`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Welcome {
    /// The version both speak.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// A fresh merchant key for a new channel (33-byte compressed).
    #[prost(bytes = "vec", tag = "2")]
    pub merchant_pubkey: Vec<u8>,
    /// The merchant's limits.
    #[prost(message, optional, tag = "3")]
    pub policy: Option<PolicyLimits>,
    /// Which of the merchant's derived keys `merchant_pubkey` is; echoed in [`Open`].
    #[prost(uint32, tag = "4")]
    pub key_index: u32,
}

/// A channel proposal: the funding transaction (not yet broadcast) and the script's terms.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Open {
    /// The signed funding transaction, consensus-encoded.
    #[prost(bytes = "vec", tag = "1")]
    pub funding_tx: Vec<u8>,
    /// The customer's channel key (33-byte compressed).
    #[prost(bytes = "vec", tag = "2")]
    pub customer_pubkey: Vec<u8>,
    /// The merchant key from [`Welcome`].
    #[prost(bytes = "vec", tag = "3")]
    pub merchant_pubkey: Vec<u8>,
    /// The expiry: an absolute locktime (height or Unix time).
    #[prost(uint32, tag = "4")]
    pub expiry: u32,
    /// Where the customer's change goes in every payment.
    #[prost(bytes = "vec", tag = "5")]
    pub change_script: Vec<u8>,
    /// The `key_index` from [`Welcome`].
    #[prost(uint32, tag = "6")]
    pub key_index: u32,
    /// A dispute channel's dispute period in blocks; 0 for a CLTV channel (then `expiry`).
    #[prost(uint32, tag = "7")]
    pub dispute_blocks: u32,
    /// A dispute channel: the customer's signature (DER ‖ `SIGHASH_ALL`) of the trigger. The
    /// funding transaction is then sent without its witnesses: the customer signs and
    /// broadcasts it only once the merchant signed the trigger too.
    #[prost(bytes = "vec", tag = "8")]
    pub trigger_signature: Vec<u8>,
}

/// The merchant accepted a channel.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Opened {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// Confirmations the merchant waits for before accepting payments.
    #[prost(uint32, tag = "2")]
    pub confirmations_required: u32,
    /// A dispute channel: the merchant's signature of the trigger.
    #[prost(bytes = "vec", tag = "3")]
    pub trigger_signature: Vec<u8>,
}

/// A payment: a new cumulative total and the customer's signature (DER ‖ sighash byte).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pay {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// The new cumulative total, sat.
    #[prost(uint64, tag = "2")]
    pub total_sat: u64,
    /// The customer's signature of the payment template.
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// The merchant stored a total durably.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PaymentAck {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// The total now stored, sat.
    #[prost(uint64, tag = "2")]
    pub total_sat: u64,
}

/// Continue a channel after a reconnect.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Resume {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
}

/// The merchant's view of a resumed channel.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Resumed {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// The highest total the merchant has stored, sat.
    #[prost(uint64, tag = "2")]
    pub total_sat: u64,
    /// The customer's signature of `total_sat` (empty for zero): what lets a customer that
    /// lost the write of a payment it sent adopt the total.
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// The customer asks the merchant to settle now.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Close {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// The customer's signature (DER) of [`close_digest`] of the channel.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// The merchant settled.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Closed {
    /// The channel.
    #[prost(message, optional, tag = "1")]
    pub channel: Option<ChannelRef>,
    /// The settlement's txid (32 bytes, internal order); for a dispute channel's cooperative
    /// close, the close's.
    #[prost(bytes = "vec", tag = "2")]
    pub settlement_txid: Vec<u8>,
    /// A dispute channel's cooperative close: the unsigned close transaction
    /// (consensus-encoded), which the customer checks, signs and broadcasts.
    #[prost(bytes = "vec", tag = "3")]
    pub close_tx: Vec<u8>,
    /// The merchant's signature of `close_tx` (DER ‖ `SIGHASH_ALL`).
    #[prost(bytes = "vec", tag = "4")]
    pub merchant_signature: Vec<u8>,
}

impl Closed {
    /// The settlement's txid.
    ///
    /// # Errors
    /// [`Error::Decode`] when it is not 32 bytes.
    pub fn txid(&self) -> Result<Txid, Error> {
        let bytes: [u8; 32] = self.settlement_txid.as_slice().try_into().map_err(|_| {
            Error::Decode(format!(
                "settlement txid of {} bytes, not 32",
                self.settlement_txid.len()
            ))
        })?;
        Ok(Txid::from_byte_array(bytes))
    }
}

/// A refusal.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ErrorMsg {
    /// The stable code of [`Error::code`].
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// What was wrong, for people.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The channel concerned, if any.
    #[prost(message, optional, tag = "3")]
    pub channel: Option<ChannelRef>,
}

impl ErrorMsg {
    /// The wire form of `e`, for `channel`.
    pub fn from_error(e: &Error, channel: Option<OutPoint>) -> Self {
        ErrorMsg { code: e.code(), message: e.to_string(), channel: channel.map(Into::into) }
    }
}

/// The digest a customer signs to ask for a close: SHA-256 of `"paychan/close/v1"` followed by
/// the channel's funding outpoint (txid in internal order, vout little-endian).
pub fn close_digest(channel: OutPoint) -> [u8; 32] {
    use bitcoin::hashes::sha256;
    let mut engine = sha256::Hash::engine();
    bitcoin::hashes::HashEngine::input(&mut engine, b"paychan/close/v1");
    bitcoin::hashes::HashEngine::input(&mut engine, &channel.txid.to_byte_array());
    bitcoin::hashes::HashEngine::input(&mut engine, &channel.vout.to_le_bytes());
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// Picks the version to speak with a client that speaks `min..=max`.
///
/// # Errors
/// [`Error::UnsupportedVersion`] when the ranges do not meet.
pub fn negotiate(hello: &Hello) -> Result<u32, Error> {
    let v = hello.max_version.min(PROTOCOL_VERSION);
    if v < hello.min_version || v < MIN_PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion {
            got: hello.max_version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    Ok(v)
}

/// Encodes `msg` as one frame: header and body.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let frame = Frame { message: Some(msg.clone()) };
    let len = frame.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = frame.encode(&mut out);
    out
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again), or
/// `Ok(Some((message, bytes_used)))`.
///
/// # Errors
/// [`Error::FrameTooLarge`] as soon as the header declares more than `max_len` bytes;
/// [`Error::Decode`] when the body is not a message.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(Message, usize)>, Error> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_len {
        return Err(Error::FrameTooLarge { len, max: max_len });
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = Frame::decode(body).map_err(|e| Error::Decode(e.to_string()))?;
    let msg = frame.message.ok_or_else(|| Error::Decode("frame carries no message".into()))?;
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Decodes `buf`, which must be exactly one whole frame.
///
/// # Errors
/// [`Error::FrameTruncated`] when it is cut short, [`Error::Decode`] when bytes follow the
/// frame or the body is garbage, [`Error::FrameTooLarge`].
pub fn decode_one(buf: &[u8], max_len: usize) -> Result<Message, Error> {
    match decode_frame(buf, max_len)? {
        None => {
            let needed = buf
                .get(..HEADER_LEN)
                .map(|h| HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
                .unwrap_or(HEADER_LEN);
            Err(Error::FrameTruncated { needed, have: buf.len() })
        }
        Some((msg, used)) if used == buf.len() => Ok(msg),
        Some((_, used)) => {
            Err(Error::Decode(format!("{} bytes after the frame", buf.len() - used)))
        }
    }
}

/// A sans-I/O stream decoder: push bytes as they arrive, pop whole messages.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames above `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FrameDecoder { buf: Vec::new(), start: 0, max_len }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    ///
    /// # Errors
    /// Any error of [`decode_frame`]; the connection should then be closed, since the stream
    /// can no longer be framed.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        match decode_frame(&self.buf[self.start..], self.max_len)? {
            None => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(None)
            }
            Some((msg, used)) => {
                self.start += used;
                Ok(Some(msg))
            }
        }
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}
