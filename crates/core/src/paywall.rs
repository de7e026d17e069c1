//! The HTTP 402 paywall's wire forms (DESIGN §7), in the x402 v2 shape: the `PAYMENT-REQUIRED`
//! header of a `402` answer lists how to pay, the `PAYMENT-SIGNATURE` header of a request
//! carries one payment, and the `PAYMENT-RESPONSE` header of the answer is the receipt. Each
//! is base64 (standard alphabet, padded) of a JSON object. Our scheme is named
//! [`SCHEME`]; its payment is a channel payment: the channel, the new cumulative total and the
//! customer's signature of it.
//!
//! Parsing is bounded ([`MAX_HEADER_LEN`]) and total: any malformed header is an
//! [`Error::Malformed`], never a panic.

use base64::Engine as _;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{Amount, Network, OutPoint};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::Error;

/// The x402 protocol version spoken.
pub const X402_VERSION: u32 = 2;
/// The scheme name of a paychan channel payment in `accepts`.
pub const SCHEME: &str = "paychan";
/// The 402 answer's header: how to pay.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// The request's header: one payment.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// The answer's header: the receipt.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// Headers a proxy does not forward: hop-by-hop (RFC 9110 §7.6.1), `host` and
/// `content-length` (set anew for the forwarded message).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The end-to-end headers of `headers`: all but [`HOP_BY_HOP`], for a proxy to forward.
pub fn end_to_end(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The largest request body a proxy (the merchant's reverse proxy, the customer's paying
/// proxy) forwards.
pub const MAX_PROXY_BODY: usize = 16 * 1024 * 1024;

/// A paywall header longer than this is refused unread.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// The CAIP-2 name of a Bitcoin network (`bip122:` and the genesis hash's first 32 hex digits).
pub fn caip2(network: Network) -> String {
    let genesis = bitcoin::blockdata::constants::genesis_block(network).block_hash().to_string();
    format!("bip122:{}", &genesis[..32])
}

/// The body of `PAYMENT-REQUIRED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// Why the request was not served (no payment, or what was wrong with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// paychan's error code when a payment was refused (an extension; see
    /// [`Error::code`](crate::Error::code)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    /// The resource asked for.
    pub resource: Resource,
    /// The ways to pay, best first.
    pub accepts: Vec<Requirement>,
}

/// The resource a 402 names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Its URL (path and query when the absolute URL is unknown).
    pub url: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Its media type, when known.
    #[serde(default)]
    pub mime_type: String,
}

/// One way to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// [`SCHEME`] for a channel payment.
    pub scheme: String,
    /// CAIP-2 network ([`caip2`]).
    pub network: String,
    /// The price in satoshis, as a decimal string.
    pub amount: String,
    /// `"sat"`.
    pub asset: String,
    /// Where channels are opened: the merchant's channel server, `host:port`.
    pub pay_to: String,
    /// How long the payment stays good.
    pub max_timeout_seconds: u64,
    /// The scheme's details.
    pub extra: PaychanExtra,
}

/// The paychan scheme's details in a [`Requirement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaychanExtra {
    /// The channel server (TCP protocol), `host:port`.
    pub peer: String,
    /// The 21 REST protocol's endpoint, an absolute URL, when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two1_server: Option<String>,
    /// The merchant's channel limits.
    pub policy: Limits,
}

/// The merchant's channel limits, as a customer needs them to open a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Smallest deposit, sat.
    pub min_deposit: u64,
    /// Largest deposit, sat.
    pub max_deposit: u64,
    /// The deposit the merchant suggests, sat.
    pub default_deposit: u64,
    /// Shortest channel life, seconds.
    pub min_channel_life_secs: u32,
    /// Longest channel life, seconds.
    pub max_channel_life_secs: u32,
    /// Confirmations the funding needs before payments count (0 with zero-conf).
    pub min_confirmations: u32,
    /// The shortest dispute period (blocks) of a dispute channel; 0 from a merchant without
    /// dispute channels (then a paying client opens a CLTV channel).
    #[serde(default)]
    pub min_dispute_blocks: u32,
}

impl From<&Policy> for Limits {
    fn from(p: &Policy) -> Self {
        Limits {
            min_deposit: p.min_deposit.to_sat(),
            max_deposit: p.max_deposit.to_sat(),
            default_deposit: p.default_deposit.to_sat(),
            min_channel_life_secs: p.min_channel_life_secs,
            max_channel_life_secs: p.max_channel_life_secs,
            min_confirmations: if p.zero_conf { 0 } else { p.min_confirmations },
            min_dispute_blocks: u32::from(p.min_dispute_blocks),
        }
    }
}

impl Requirement {
    /// The price, when `amount` is a satoshi count.
    ///
    /// # Errors
    /// [`Error::Malformed`].
    pub fn price(&self) -> Result<Amount, Error> {
        self.amount.parse::<u64>().map(Amount::from_sat).map_err(|e| Error::malformed("price", e))
    }
}

/// The body of `PAYMENT-SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSignature {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// The requirement this pays (echoed; informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<serde_json::Value>,
    /// The channel payment.
    pub payload: ChannelPayment,
}

impl PaymentSignature {
    /// The payment it carries, for this x402 version only.
    ///
    /// # Errors
    /// [`Error::UnsupportedVersion`] for an `x402Version` other than [`X402_VERSION`] (a v1
    /// payload is laid out differently and is not read as v2); as [`ChannelPayment::decode`].
    pub fn decode(&self) -> Result<(OutPoint, Amount, Vec<u8>), Error> {
        if self.x402_version != X402_VERSION {
            return Err(Error::UnsupportedVersion {
                got: self.x402_version,
                min: X402_VERSION,
                max: X402_VERSION,
            });
        }
        self.payload.decode()
    }
}

/// A channel payment: the customer's signature of a new cumulative total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPayment {
    /// The channel, `txid:vout`.
    pub channel: String,
    /// The new cumulative total, sat.
    pub total: u64,
    /// The DER signature with its sighash byte, hex.
    pub signature: String,
}

impl ChannelPayment {
    /// A payment of `total` on `channel`.
    pub fn new(channel: OutPoint, total: Amount, signature: &[u8]) -> Self {
        ChannelPayment {
            channel: channel.to_string(),
            total: total.to_sat(),
            signature: signature.to_lower_hex_string(),
        }
    }

    /// The decoded fields.
    ///
    /// # Errors
    /// [`Error::Malformed`] for a channel that is not `txid:vout` or a signature that is not
    /// hex of at most 73 bytes.
    pub fn decode(&self) -> Result<(OutPoint, Amount, Vec<u8>), Error> {
        let channel: OutPoint =
            self.channel.parse().map_err(|e| Error::malformed("payment channel", e))?;
        let sig = Vec::<u8>::from_hex(&self.signature)
            .map_err(|e| Error::malformed("payment signature", e))?;
        if sig.len() > 73 {
            return Err(Error::malformed("payment signature", "longer than 73 bytes"));
        }
        Ok((channel, Amount::from_sat(self.total), sig))
    }
}

/// The body of `PAYMENT-RESPONSE`: the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponse {
    /// Whether the request was charged (false when the charge was reversed).
    pub success: bool,
    /// [`SCHEME`].
    pub scheme: String,
    /// CAIP-2 network.
    pub network: String,
    /// The channel, `txid:vout`.
    pub channel: String,
    /// The channel's highest accepted total, sat.
    pub total: u64,
    /// What this request was charged, sat.
    pub charged: u64,
    /// Paid but not yet charged on the channel, sat.
    pub credit: u64,
    /// Why the charge was reversed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A header value: base64 of the JSON of `value`.
///
/// # Errors
/// [`Error::Encode`] if `value` does not serialise (never for this module's types).
pub fn encode_header<T: Serialize>(value: &T) -> Result<String, Error> {
    let json = serde_json::to_vec(value)
        .map_err(|e| Error::Encode { what: "paywall header", reason: e.to_string() })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(json))
}

/// Reads a header value written by [`encode_header`].
///
/// # Errors
/// [`Error::Malformed`] for a value above [`MAX_HEADER_LEN`], not base64, or not the JSON of a
/// `T`.
pub fn decode_header<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Result<T, Error> {
    if value.len() > MAX_HEADER_LEN {
        return Err(Error::malformed("paywall header", "longer than 8 KiB"));
    }
    let trimmed = value.trim_ascii();
    let json = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|e| Error::malformed("paywall header", format!("not base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| Error::malformed("paywall header", e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_an_error() {
        let p = PaymentSignature {
            x402_version: X402_VERSION,
            accepted: None,
            payload: ChannelPayment::new(OutPoint::null(), Amount::from_sat(10), &[0x30, 1]),
        };
        let h = encode_header(&p).unwrap();
        assert_eq!(decode_header::<PaymentSignature>(h.as_bytes()).unwrap(), p);
        assert!(p.decode().is_ok());
        let v1 = PaymentSignature { x402_version: 1, ..p.clone() };
        assert_eq!(v1.decode().unwrap_err().code(), 204, "a v1 payload is not read as v2");
        for bad in [&b"%%%"[..], b"", b"e30=", &[b'A'; MAX_HEADER_LEN + 4][..]] {
            assert!(matches!(decode_header::<PaymentSignature>(bad), Err(Error::Malformed { .. })));
        }
        let long = ChannelPayment { signature: "00".repeat(80), ..p.payload.clone() };
        assert!(long.decode().is_err());
        let bad_channel = ChannelPayment { channel: "nope".into(), ..p.payload };
        assert!(bad_channel.decode().is_err());
    }

    #[test]
    fn end_to_end_drops_hop_by_hop_headers_only() {
        let mut h = http::HeaderMap::new();
        for name in HOP_BY_HOP {
            h.insert(*name, http::HeaderValue::from_static("x"));
        }
        h.append("x-kept", http::HeaderValue::from_static("1"));
        h.append("x-kept", http::HeaderValue::from_static("2"));
        h.insert("payment-signature", http::HeaderValue::from_static("abc"));
        let out = end_to_end(&h);
        assert_eq!(out.len(), 3);
        assert_eq!(out.get_all("x-kept").iter().count(), 2, "repeated headers kept");
        assert!(HOP_BY_HOP.iter().all(|n| !out.contains_key(*n)));
    }

    #[test]
    fn caip2_names_the_genesis_block() {
        assert_eq!(caip2(Network::Bitcoin), "bip122:000000000019d6689c085ae165831e93");
        assert_eq!(caip2(Network::Regtest), "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
    }
}
