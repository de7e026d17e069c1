//! The one error type of `paychan-core`.
//!
//! Every variant says what was wrong in lowercase words and carries the values that were
//! compared, so that a user who meets it knows what to change. Payment rejections (the merchant's
//! rules of DESIGN §2) each have their own variant and their own stable wire code
//! ([`Error::code`]), so a peer can act on them without parsing text.

use bitcoin::{Amount, OutPoint, Txid};

use crate::channel::Phase;

/// Errors returned by `paychan-core`.
///
/// No function of this crate changes any state when it returns an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- scripts, parameters and transactions ----
    /// The expiry cannot be used as a channel timelock.
    #[error("invalid expiry {expiry}: {reason}")]
    InvalidExpiry {
        /// The raw locktime value.
        expiry: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A script is not the channel script of DESIGN §2.
    #[error("not a channel script: {0}")]
    NotChannelScript(&'static str),
    /// The funding transaction has no output paying the channel script.
    #[error("funding transaction {txid} has no output paying the channel script")]
    FundingOutputNotFound {
        /// The funding transaction's id.
        txid: Txid,
    },
    /// The funding transaction pays the channel script more than once.
    #[error("funding transaction {txid} pays the channel script in more than one output")]
    FundingOutputAmbiguous {
        /// The funding transaction's id.
        txid: Txid,
    },
    /// The funding output is smaller than required.
    #[error("funding output carries {got}, below the required {required}")]
    FundingTooSmall {
        /// Value of the funding output.
        got: Amount,
        /// The smallest value accepted.
        required: Amount,
    },
    /// An amount computation overflowed or went below zero.
    #[error("amount out of range: {0}")]
    AmountOutOfRange(&'static str),
    /// An output would be below Bitcoin Core's dust threshold and could not be relayed.
    #[error("output of {value} is below the dust threshold of {threshold}")]
    Dust {
        /// The value of the output.
        value: Amount,
        /// Bitcoin Core's dust threshold for the output's script.
        threshold: Amount,
    },
    /// The inputs cannot pay the fee.
    #[error("insufficient funds: need {needed}, have {available}")]
    InsufficientFunds {
        /// What the transaction needs (outputs and fee).
        needed: Amount,
        /// What the inputs carry.
        available: Amount,
    },
    /// A transaction could not be signed or hashed (bad input index, missing output).
    #[error("cannot sign transaction: {0}")]
    Signing(&'static str),
    /// A hex string, transaction or other encoded value could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A value could not be encoded (a header's JSON).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// An output script that Bitcoin Core would not relay (not P2PKH, P2SH, P2WPKH, P2WSH or
    /// P2TR), given where a payout or change must go.
    #[error("the {0} is not a standard P2PKH, P2SH, P2WPKH, P2WSH or P2TR output script")]
    NonStandardScript(&'static str),
    /// An open names a merchant key this merchant did not hand out at that index.
    #[error("the merchant key is not the key this merchant handed out")]
    NotOurKey,
    /// The funding transaction pays the other output kind (P2SH for a P2WSH channel, or the
    /// reverse).
    #[error("the funding transaction pays the other output kind")]
    WrongOutputKind,
    /// A network paychan does not run on (`testnet` is testnet3: use `testnet4`).
    #[error("unsupported network {0:?}: use bitcoin, testnet4, signet or regtest")]
    UnsupportedNetwork(String),
    /// The policy is inconsistent.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// A channel on this deposit exists already (live, settled or refunded): an open cannot be
    /// replayed.
    #[error("a channel on deposit {0} exists already")]
    ChannelExists(OutPoint),
    /// The node refused the customer's funding transaction (the channel is not opened).
    #[error("the funding transaction was refused by the node: {reason}")]
    FundingRefused {
        /// The node's reason.
        reason: String,
    },
    /// The paid total is too small to settle on chain: even at 1 sat/vB the fee would leave the
    /// merchant's output below the dust threshold (ADR 0012).
    #[error("the paid total of {total} is too small to settle on chain: even at 1 sat/vB the fee would leave the merchant's output below the dust threshold")]
    SettlementTooSmall {
        /// The paid total.
        total: Amount,
    },
    /// A fee-bump replacement of the settlement would have to pay more than the merchant's
    /// output can give without becoming dust; the settlement out there stays.
    #[error("a settlement replacement at a higher fee would leave the merchant's output as dust")]
    ReplacementWouldBeDust,
    /// An open names a merchant key index the merchant never offered (or one outside the
    /// per-channel index space).
    #[error("key index {index} was never offered by this merchant (next: {next}); say Hello again and use the key it offers")]
    UnknownKeyIndex {
        /// The index the open named.
        index: u32,
        /// The next index the merchant offers.
        next: u32,
    },

    // ---- payment rules (DESIGN §2), in the order the merchant checks them ----
    /// The payment names another channel.
    #[error("payment is for channel {got}, not {expected}")]
    WrongChannel {
        /// The channel the payment was sent to.
        expected: OutPoint,
        /// The channel the payment names.
        got: OutPoint,
    },
    /// No channel is known under that id.
    #[error("unknown channel {0}")]
    UnknownChannel(OutPoint),
    /// The channel does not accept payments in its current phase.
    #[error("channel is {phase}, not open: it cannot take payments")]
    ChannelNotOpen {
        /// The channel's phase.
        phase: Phase,
    },
    /// The channel is too close to its expiry to take payments.
    #[error("channel is past its payment cutoff ({cutoff}); open a new channel")]
    PastCutoff {
        /// The last moment (unix time or height, as the expiry) payments were accepted.
        cutoff: u32,
    },
    /// The new total is not above the highest total already accepted.
    #[error("total {total} is not above the accepted total {accepted}")]
    NotIncreasing {
        /// The total of the payment.
        total: Amount,
        /// The highest total accepted so far.
        accepted: Amount,
    },
    /// The new total exceeds the channel's deposit.
    #[error("total {total} exceeds the channel deposit {capacity}")]
    AboveDeposit {
        /// The total of the payment.
        total: Amount,
        /// The value of the funding output.
        capacity: Amount,
    },
    /// The customer's change would be dust, but the payment was not signed `NONE|ANYONECANPAY`.
    #[error(
        "change {change} is below dust ({dust}): the payment must be signed NONE|ANYONECANPAY"
    )]
    DustChangeNeedsNone {
        /// The customer's change.
        change: Amount,
        /// The dust threshold of the customer's change script.
        dust: Amount,
    },
    /// The signature is not strictly DER encoded (BIP 66).
    #[error("signature is not strict DER")]
    SignatureNotDer,
    /// The signature has a high S value (not standard: BIP 62 low-S).
    #[error("signature has a high S value")]
    SignatureHighS,
    /// The signature's sighash flag is not the one required.
    #[error("sighash flag {got:#04x} where {expected:#04x} is required")]
    WrongSighashFlag {
        /// The flag required.
        expected: u8,
        /// The flag found.
        got: u8,
    },
    /// The signature does not verify under the customer's key.
    #[error("signature does not verify under the customer key")]
    BadSignature,
    /// A whole-transaction (21 / two1) payment is not of the expected form.
    #[error("malformed 21 payment: {0}")]
    MalformedTwo1Payment(&'static str),
    /// A paid request carried a payment already used for another request, or one older than
    /// the replay window: each signed total pays for one request (DESIGN §2 accounting).
    #[error("payment of total {total} was already redeemed")]
    AlreadyRedeemed {
        /// The payment's total.
        total: Amount,
    },
    /// The channel's credit (paid minus charged) does not cover the request's price.
    #[error("the channel's credit of {credit} does not cover the price of {price}")]
    CreditTooLow {
        /// The request's price.
        price: Amount,
        /// Paid but not yet charged, counting the payment offered.
        credit: Amount,
    },
    /// A 21 payment token names no payment (unknown, or already redeemed before a restart).
    #[error("payment not found")]
    UnknownToken,

    // ---- state machines ----
    /// The customer was asked to sign more than its caller authorised.
    #[error("total {total} exceeds the authorised {authorised}")]
    AboveAuthorised {
        /// The total that would be signed.
        total: Amount,
        /// The highest total the caller authorised.
        authorised: Amount,
    },
    /// The event is not valid in the channel's phase.
    #[error("cannot {event} while the channel is {phase}")]
    InvalidTransition {
        /// The channel's phase.
        phase: Phase,
        /// What was attempted.
        event: &'static str,
    },
    /// A persist completion names no pending persist.
    #[error("no pending persist with id {0}")]
    UnknownPersist(u64),
    /// A message from the peer does not match the channel's state.
    #[error("unexpected message from peer: {0}")]
    UnexpectedMessage(&'static str),

    // ---- protocol messages ----
    // ---- the transport (BOLT 8) ----
    /// A handshake act of the wrong size (BOLT 8: 50, 50 and 66 bytes).
    #[error("transport handshake: act of {got} bytes, {expected} expected")]
    ActLength {
        /// The act's size.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A handshake act with a version other than 0.
    #[error("transport handshake: unknown version {0}")]
    HandshakeVersion(u8),
    /// A handshake act carries bytes that are not a public key.
    #[error("transport handshake: the peer sent an invalid public key")]
    HandshakeKey,
    /// A handshake act failed its authentication: the peer does not hold the node key that was
    /// dialed (or does not know ours), or the bytes were tampered with.
    #[error("transport handshake failed: the peer did not prove the expected node key")]
    HandshakeFailed,
    /// An encrypted message failed its authentication: tampered with, or not from the peer.
    #[error("transport: a message failed its authentication (tampered with or out of order)")]
    TransportTag,
    /// A frame's declared length is above the limit.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame ended before its declared length.
    #[error("truncated frame: {needed} bytes needed, {have} present")]
    FrameTruncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// A paid request's `accepted` is not what the merchant offers for it (x402 v2: the
    /// payment names the requirement it pays).
    #[error("the payment's accepted {field} is {accepted:?}, the merchant offers {offered:?}")]
    AcceptedMismatch {
        /// The field that differs (x402's name).
        field: &'static str,
        /// What the merchant offers.
        offered: String,
        /// What the payment says.
        accepted: String,
    },
    /// A facilitator was asked to settle for requirements that are not its own (another
    /// scheme, network, asset or payee).
    #[error("the payment requirements' {field} is {got:?}; this merchant settles {ours:?}")]
    NotOurRequirements {
        /// The field (x402's name).
        field: &'static str,
        /// What the requirements say.
        got: String,
        /// What this merchant settles.
        ours: String,
    },
    // ---- BOLT 3 (duplex channels) ----
    /// A BOLT 3 key, script or transaction could not be built from these inputs.
    #[error("bolt 3: {0}")]
    Bolt3(&'static str),
    /// A commitment's balances and HTLCs do not add up to the funding amount.
    #[error("commitment amounts add up to {} msat, the funding is {funding_msat} msat", total_msat.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string()))]
    Bolt3Amounts {
        /// Balances plus HTLCs (`None` on overflow).
        total_msat: Option<u64>,
        /// The funding amount.
        funding_msat: u64,
    },
    /// A per-commitment secret arrived for another index than the next one.
    #[error("per-commitment secret for index {got}, expected index {expected}")]
    SecretOutOfOrder {
        /// The index expected next.
        expected: u64,
        /// The index given.
        got: u64,
    },
    /// A per-commitment secret does not derive a secret received before: the peer lied about one
    /// of them.
    #[error("per-commitment secret for index {index} does not derive the secret of index {earlier} (slot {slot})")]
    SecretInconsistent {
        /// The index of the new secret.
        index: u64,
        /// The index of the earlier secret it fails to derive.
        earlier: u64,
        /// The storage slot of the earlier secret.
        slot: usize,
    },
    /// A frame's body is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The peer speaks no protocol version this build speaks.
    #[error("unsupported protocol version {got} (this build speaks {min} to {max})")]
    UnsupportedVersion {
        /// The peer's version.
        got: u32,
        /// Lowest supported version.
        min: u32,
        /// Highest supported version.
        max: u32,
    },
}

impl Error {
    /// A stable numeric code for the wire protocol's `Error` message.
    ///
    /// Codes 100–199 are payment rejections; the channel is unchanged and the peer may retry
    /// with a corrected payment. Codes 200–299 are protocol errors. Codes 1–99 are other errors.
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidExpiry { .. } => 1,
            Error::NotChannelScript(_) => 2,
            Error::FundingOutputNotFound { .. } => 3,
            Error::FundingOutputAmbiguous { .. } => 4,
            Error::FundingTooSmall { .. } => 5,
            Error::AmountOutOfRange(_) => 6,
            Error::Dust { .. } => 7,
            Error::InsufficientFunds { .. } => 8,
            Error::Signing(_) => 9,
            Error::Malformed { .. } => 10,
            Error::InvalidPolicy(_) => 11,
            Error::AboveAuthorised { .. } => 12,
            Error::InvalidTransition { .. } => 13,
            Error::UnknownPersist(_) => 14,
            Error::ChannelExists(_) => 15,
            Error::UnknownKeyIndex { .. } => 16,
            Error::FundingRefused { .. } => 17,
            Error::SettlementTooSmall { .. } => 18,
            Error::ReplacementWouldBeDust => 19,
            Error::Encode { .. } => 20,
            Error::NonStandardScript(_) => 21,
            Error::NotOurKey => 22,
            Error::WrongOutputKind => 23,
            Error::UnsupportedNetwork(_) => 24,
            Error::Bolt3(_) => 25,
            Error::Bolt3Amounts { .. } => 26,
            Error::SecretOutOfOrder { .. } => 210,
            Error::SecretInconsistent { .. } => 211,
            Error::WrongChannel { .. } => 100,
            Error::UnknownChannel(_) => 101,
            Error::ChannelNotOpen { .. } => 102,
            Error::PastCutoff { .. } => 103,
            Error::NotIncreasing { .. } => 104,
            Error::AboveDeposit { .. } => 105,
            Error::DustChangeNeedsNone { .. } => 106,
            Error::SignatureNotDer => 107,
            Error::SignatureHighS => 108,
            Error::WrongSighashFlag { .. } => 109,
            Error::BadSignature => 110,
            Error::MalformedTwo1Payment(_) => 111,
            Error::AlreadyRedeemed { .. } => 112,
            Error::CreditTooLow { .. } => 113,
            Error::UnknownToken => 114,
            Error::AcceptedMismatch { .. } => 115,
            Error::NotOurRequirements { .. } => 116,
            Error::UnexpectedMessage(_) => 200,
            Error::FrameTooLarge { .. } => 201,
            Error::FrameTruncated { .. } => 202,
            Error::Decode(_) => 203,
            Error::UnsupportedVersion { .. } => 204,
            Error::ActLength { .. } => 205,
            Error::HandshakeVersion(_) => 206,
            Error::HandshakeKey => 207,
            Error::HandshakeFailed => 208,
            Error::TransportTag => 209,
        }
    }

    /// Whether this is the merchant refusing a payment (the channel is unchanged).
    pub fn is_payment_rejection(&self) -> bool {
        (100..200).contains(&self.code())
    }

    /// [`Error::Malformed`]: `what` did not decode, because of `reason`. Only decoding makes it.
    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Error::Malformed { what, reason: reason.to_string() }
    }
}
