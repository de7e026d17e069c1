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

/// The CAIP-19 name of native bitcoin on `network`: `<caip2>/slip44:<coin type>` (0 on
/// mainnet, 1 on the test networks), as x402's Bitcoin scheme drafts name it.
pub fn asset(network: Network) -> String {
    let coin_type = if network == Network::Bitcoin { 0 } else { 1 };
    format!("{}/slip44:{coin_type}", caip2(network))
}

/// How long a client may take to pay, in seconds: one minute, plus an hour for each
/// confirmation a new channel's funding needs (a first payment waits for them; a block takes
/// more than an hour once in 400).
pub fn max_timeout_seconds(limits: &Limits) -> u64 {
    60 + 3_600 * u64::from(limits.min_confirmations)
}

/// A JSON object of protocol extensions (x402's `extensions`), kept as given.
pub type Extensions = serde_json::Map<String, serde_json::Value>;

/// The body of `PAYMENT-REQUIRED` (x402 v2 `PaymentRequired`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// Why the request was not served, for people (the machine reason of a refused payment is
    /// the `errorReason` of the answer's `PAYMENT-RESPONSE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resource asked for.
    pub resource: Resource,
    /// The ways to pay, best first.
    pub accepts: Vec<Requirement>,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
}

/// The resource a 402 names (x402 `ResourceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Its absolute URL.
    pub url: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its media type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One way to pay (x402 `PaymentRequirements`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// [`SCHEME`] for a channel payment.
    pub scheme: String,
    /// CAIP-2 network ([`caip2`]).
    pub network: String,
    /// The price in satoshis, a canonical decimal string.
    pub amount: String,
    /// CAIP-19 native bitcoin ([`asset`]).
    pub asset: String,
    /// The merchant's node id: its compressed public key, 66 lowercase hex digits.
    pub pay_to: String,
    /// How long the client may take to pay ([`max_timeout_seconds`]).
    pub max_timeout_seconds: u64,
    /// The scheme's details.
    pub extra: PaychanExtra,
}

/// The paychan scheme's details in a [`Requirement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaychanExtra {
    /// The channel server (BOLT 8 channel protocol), `nodeid@host:port`.
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
    /// The price, when `amount` is a canonical satoshi count.
    ///
    /// # Errors
    /// [`Error::Malformed`].
    pub fn price(&self) -> Result<Amount, Error> {
        parse_sat("price", &self.amount)
    }

    /// Checks that `accepted` (a client's `PaymentPayload.accepted`) is this requirement: every
    /// core field, and the scheme's server-declared `extra` fields (the client may add
    /// fields of its own).
    ///
    /// # Errors
    /// [`Error::AcceptedMismatch`] naming the first field that differs.
    pub fn check_accepted(&self, accepted: &Requirement) -> Result<(), Error> {
        let fields: [(&'static str, &str, &str); 6] = [
            ("scheme", &self.scheme, &accepted.scheme),
            ("network", &self.network, &accepted.network),
            ("amount", &self.amount, &accepted.amount),
            ("asset", &self.asset, &accepted.asset),
            ("payTo", &self.pay_to, &accepted.pay_to),
            ("extra.peer", &self.extra.peer, &accepted.extra.peer),
        ];
        for (field, offered, got) in fields {
            if offered != got {
                return Err(Error::AcceptedMismatch {
                    field,
                    offered: offered.to_string(),
                    accepted: got.to_string(),
                });
            }
        }
        if self.max_timeout_seconds != accepted.max_timeout_seconds {
            return Err(Error::AcceptedMismatch {
                field: "maxTimeoutSeconds",
                offered: self.max_timeout_seconds.to_string(),
                accepted: accepted.max_timeout_seconds.to_string(),
            });
        }
        Ok(())
    }
}

/// A canonical decimal satoshi count: digits only, no sign, no leading zero (but "0").
fn parse_sat(what: &'static str, s: &str) -> Result<Amount, Error> {
    let canonical = !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(Error::malformed(what, format!("{s:?} is not a canonical satoshi amount")));
    }
    s.parse::<u64>().map(Amount::from_sat).map_err(|e| Error::malformed(what, e))
}

/// The body of `PAYMENT-SIGNATURE` (x402 v2 `PaymentPayload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// The resource paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// The requirement this pays, as offered (checked by the merchant).
    pub accepted: Requirement,
    /// The channel payment.
    pub payload: ChannelPayment,
    /// Protocol extensions (echoed from the 402).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
}

impl PaymentPayload {
    /// The payload that pays `requirement` (one of `required.accepts`) with `payment`: the
    /// resource and extensions of the 402 echoed, the requirement as `accepted`.
    pub fn paying(
        required: &PaymentRequired,
        requirement: &Requirement,
        payment: ChannelPayment,
    ) -> Self {
        PaymentPayload {
            x402_version: X402_VERSION,
            resource: Some(required.resource.clone()),
            accepted: requirement.clone(),
            payload: payment,
            extensions: required.extensions.clone(),
        }
    }

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
    /// The new cumulative total, sat, a canonical decimal string.
    pub total: String,
    /// The DER signature with its sighash byte, hex.
    pub signature: String,
}

impl ChannelPayment {
    /// A payment of `total` on `channel`.
    pub fn new(channel: OutPoint, total: Amount, signature: &[u8]) -> Self {
        ChannelPayment {
            channel: channel.to_string(),
            total: total.to_sat().to_string(),
            signature: signature.to_lower_hex_string(),
        }
    }

    /// The decoded fields.
    ///
    /// # Errors
    /// [`Error::Malformed`] for a channel that is not `txid:vout`, a total that is not a
    /// canonical satoshi count, or a signature that is not hex of at most 73 bytes.
    pub fn decode(&self) -> Result<(OutPoint, Amount, Vec<u8>), Error> {
        let channel: OutPoint =
            self.channel.parse().map_err(|e| Error::malformed("payment channel", e))?;
        let total = parse_sat("payment total", &self.total)?;
        let sig = Vec::<u8>::from_hex(&self.signature)
            .map_err(|e| Error::malformed("payment signature", e))?;
        if sig.len() > 73 {
            return Err(Error::malformed("payment signature", "longer than 73 bytes"));
        }
        Ok((channel, total, sig))
    }
}

/// The body of `PAYMENT-RESPONSE` (x402 v2 `SettlementResponse`): the receipt of a paid
/// request, or why a payment was refused.
///
/// A channel payment moves no coin on chain per request, so `transaction` is empty (as in
/// x402's Bitcoin batch-settlement draft); the channel and its totals are in `extra`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponse {
    /// Whether the request was charged (false when refused or when the charge was reversed).
    pub success: bool,
    /// Why not, as a stable string ([`reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Why not, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The payer: the channel, `txid:vout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Always empty: no on-chain transaction per request (required by x402 all the same).
    #[serde(default)]
    pub transaction: String,
    /// CAIP-2 network.
    pub network: String,
    /// What this request was charged, sat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The channel's state after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<ReceiptExtra>,
}

impl PaymentResponse {
    /// The receipt of a request charged `price` on `channel`, which now stands as `redeemed`
    /// says.
    pub fn charged(
        network: &str,
        channel: OutPoint,
        price: Amount,
        redeemed: &crate::channel::merchant::Redeemed,
    ) -> Self {
        PaymentResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(channel.to_string()),
            transaction: String::new(),
            network: network.to_string(),
            amount: Some(price.to_sat().to_string()),
            extra: Some(ReceiptExtra {
                scheme: SCHEME.into(),
                channel: channel.to_string(),
                total: redeemed.accepted.to_sat().to_string(),
                credit: redeemed.credit.to_sat().to_string(),
            }),
        }
    }

    /// A refused payment: `reason` ([`reason`]) and `message`, from `payer` when known.
    pub fn refused(network: &str, reason: &str, message: String, payer: Option<String>) -> Self {
        PaymentResponse {
            success: false,
            error_reason: Some(reason.to_string()),
            error_message: Some(message),
            payer,
            transaction: String::new(),
            network: network.to_string(),
            amount: None,
            extra: None,
        }
    }
}

/// The paychan details of a [`PaymentResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptExtra {
    /// [`SCHEME`].
    pub scheme: String,
    /// The channel, `txid:vout`.
    pub channel: String,
    /// The channel's highest accepted total, sat.
    pub total: String,
    /// Paid but not yet charged on the channel, sat.
    pub credit: String,
}

impl ReceiptExtra {
    /// The accepted total and the credit, sat.
    ///
    /// # Errors
    /// [`Error::Malformed`] for amounts that are not canonical satoshi counts.
    pub fn amounts(&self) -> Result<(Amount, Amount), Error> {
        Ok((parse_sat("receipt total", &self.total)?, parse_sat("receipt credit", &self.credit)?))
    }
}

/// The body of a facilitator's `POST /verify` and `POST /settle` (x402 §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// The x402 version of the request.
    pub x402_version: u32,
    /// The client's payment.
    pub payment_payload: PaymentPayload,
    /// What the resource server asks for this request.
    pub payment_requirements: Requirement,
}

/// The answer of a facilitator's `POST /verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether settling the payment now would succeed.
    pub is_valid: bool,
    /// Why not, as a stable string ([`reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Why not, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer: the channel, `txid:vout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// One kind of payment a facilitator settles (x402 §7.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// The x402 version.
    pub x402_version: u32,
    /// [`SCHEME`].
    pub scheme: String,
    /// CAIP-2 network.
    pub network: String,
    /// The scheme's details: where channels are opened and the merchant's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<PaychanExtra>,
}

/// The answer of a facilitator's `GET /supported`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    /// What it settles.
    pub kinds: Vec<SupportedKind>,
    /// Extensions it implements.
    pub extensions: Vec<String>,
    /// CAIP-2 patterns to the keys payments are bound to (the merchant's node id).
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
}

/// The stable `errorReason` strings of refused payments, and the core error codes they stand
/// for. x402's own strings where one fits (`insufficient_funds`, `invalid_payload`,
/// `invalid_x402_version`), `invalid_paychan_*` for the scheme's own rules.
pub mod reason {
    /// (core error code, `errorReason`).
    pub const TABLE: &[(u32, &str)] = &[
        (100, "invalid_paychan_wrong_channel"),
        (101, "invalid_paychan_unknown_channel"),
        (102, "invalid_paychan_channel_not_open"),
        (103, "invalid_paychan_channel_past_cutoff"),
        (104, "invalid_paychan_total_not_increasing"),
        (105, "insufficient_funds"),
        (106, "invalid_paychan_payload_sighash"),
        (107, "invalid_paychan_payload_signature"),
        (108, "invalid_paychan_payload_signature_high_s"),
        (109, "invalid_paychan_payload_sighash"),
        (110, "invalid_paychan_payload_signature"),
        (111, "invalid_payload"),
        (112, "invalid_paychan_total_already_used"),
        (113, "invalid_paychan_amount_below_price"),
        (114, "invalid_paychan_unknown_token"),
        (115, "invalid_paychan_accepted_mismatch"),
        (116, "invalid_paychan_requirements"),
        (10, "invalid_payload"),
        (204, "invalid_x402_version"),
    ];

    /// The `errorReason` of a core error code; `unexpected_settle_error` for a code that is no
    /// refusal of a payment.
    pub fn of_code(code: u32) -> &'static str {
        TABLE.iter().find(|(c, _)| *c == code).map_or("unexpected_settle_error", |(_, r)| r)
    }

    /// The core error code an `errorReason` stands for (the first listed for a shared reason).
    pub fn code_of(reason: &str) -> Option<u32> {
        TABLE.iter().find(|(_, r)| *r == reason).map(|(c, _)| *c)
    }
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
        let p = PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: requirement(),
            payload: ChannelPayment::new(OutPoint::null(), Amount::from_sat(10), &[0x30, 1]),
            extensions: None,
        };
        let h = encode_header(&p).unwrap();
        assert_eq!(decode_header::<PaymentPayload>(h.as_bytes()).unwrap(), p);
        assert!(p.decode().is_ok());
        let v1 = PaymentPayload { x402_version: 1, ..p.clone() };
        assert_eq!(v1.decode().unwrap_err().code(), 204, "a v1 payload is not read as v2");
        for bad in [&b"%%%"[..], b"", b"e30=", &[b'A'; MAX_HEADER_LEN + 4][..]] {
            assert!(matches!(decode_header::<PaymentPayload>(bad), Err(Error::Malformed { .. })));
        }
        let long = ChannelPayment { signature: "00".repeat(80), ..p.payload.clone() };
        assert!(long.decode().is_err());
        let bad_channel = ChannelPayment { channel: "nope".into(), ..p.payload.clone() };
        assert!(bad_channel.decode().is_err());
        for total in ["", "-1", "+1", "01", "1.0", "1e3", " 1", "99999999999999999999999"] {
            let bad_total = ChannelPayment { total: total.into(), ..p.payload.clone() };
            assert!(bad_total.decode().is_err(), "total {total:?}");
        }
        // `accepted` is required.
        let mut json: serde_json::Value = serde_json::to_value(&p).unwrap();
        json.as_object_mut().unwrap().remove("accepted");
        assert!(serde_json::from_value::<PaymentPayload>(json).is_err());
    }

    fn requirement() -> Requirement {
        Requirement {
            scheme: SCHEME.into(),
            network: caip2(Network::Regtest),
            amount: "10".into(),
            asset: asset(Network::Regtest),
            pay_to: "02".to_string() + &"ab".repeat(32),
            max_timeout_seconds: 60,
            extra: PaychanExtra {
                peer: "x@127.0.0.1:9735".into(),
                two1_server: None,
                policy: Limits {
                    min_deposit: 1,
                    max_deposit: 2,
                    default_deposit: 2,
                    min_channel_life_secs: 1,
                    max_channel_life_secs: 2,
                    min_confirmations: 1,
                    min_dispute_blocks: 144,
                },
            },
        }
    }

    #[test]
    fn accepted_must_be_what_was_offered() {
        let offered = requirement();
        assert_eq!(offered.check_accepted(&offered.clone()), Ok(()));
        let mut other = offered.clone();
        other.amount = "9".into();
        assert!(matches!(
            offered.check_accepted(&other),
            Err(Error::AcceptedMismatch { field: "amount", .. })
        ));
        let mut other = offered.clone();
        other.extra.peer = "y@127.0.0.1:1".into();
        assert!(matches!(
            offered.check_accepted(&other),
            Err(Error::AcceptedMismatch { field: "extra.peer", .. })
        ));
        let mut other = offered.clone();
        other.max_timeout_seconds = 61;
        assert!(offered.check_accepted(&other).is_err());
        // Fields the client adds to `extra` are its own.
        let mut json = serde_json::to_value(&offered).unwrap();
        json["extra"]["clientNote"] = serde_json::json!("hi");
        let with_more: Requirement = serde_json::from_value(json).unwrap();
        assert_eq!(offered.check_accepted(&with_more), Ok(()));
    }

    #[test]
    fn reasons_and_assets() {
        assert_eq!(reason::of_code(105), "insufficient_funds");
        assert_eq!(reason::of_code(500), "unexpected_settle_error");
        assert_eq!(reason::code_of("invalid_paychan_channel_not_open"), Some(102));
        assert_eq!(asset(Network::Bitcoin), "bip122:000000000019d6689c085ae165831e93/slip44:0");
        assert_eq!(asset(Network::Regtest), "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:1");
        let mut l = requirement().extra.policy;
        assert_eq!(max_timeout_seconds(&l), 3_660);
        l.min_confirmations = 0;
        assert_eq!(max_timeout_seconds(&l), 60);
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
