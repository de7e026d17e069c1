//! The one mapping from an error to its answer, used by every transport: the protocol's
//! `ErrorMsg` over TCP, the JSON API, the 21 (two1) REST protocol, and the paywall's 402.
//!
//! A refused request gets the same wire code and text everywhere; each HTTP transport's status
//! comes from here too, so a payment refused over one transport is refused the same way over
//! the others. The merchant's own failures (its store, its node, a bug) say only that the
//! merchant failed: their details go to the log, never to the peer.

use axum::http::StatusCode;
use paychan_core::Error;

use crate::{MerchantError, MERCHANT_FAILURE};

/// The 21 operation an error answers (two1's texts depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Opening a channel (`POST /payment`, `Open`).
    Open,
    /// A payment (`PUT /payment/…`, `Pay`, `POST /v1/channels/…/payments`).
    Pay,
    /// A close (`DELETE /payment/…`, `Close`).
    Close,
    /// A paid request carrying a payment (the paywall's `PAYMENT-SIGNATURE`).
    Redeem,
    /// A paid request carrying a 21 token (two1's 402 flow).
    RedeemToken,
}

impl Op {
    fn is_paywall(self) -> bool {
        matches!(self, Op::Redeem | Op::RedeemToken)
    }
}

/// What a transport answers for an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The wire code: the `ErrorMsg` code, the JSON API's and the 402 body's `code`
    /// ([`Error::code`], or [`MERCHANT_FAILURE`]).
    pub code: u32,
    /// The text for the peer (lowercase, as the core words it).
    pub message: String,
    /// Whether the request was refused (the peer can act on it); false for the merchant's own
    /// failures (the peer may try again later).
    pub refused: bool,
    /// The JSON API's status: 404 unknown channel, 409 a payment refused or a deposit used,
    /// 400 other bad input, 500 the merchant's failure.
    pub status: StatusCode,
    /// The paywall's status: 400 for a payment header that does not decode (or of another
    /// protocol version), 402 (with a fresh
    /// requirement and this answer's code and message) for a refused payment, 503 for the
    /// merchant's failure.
    pub paywall_status: StatusCode,
    /// The 21 REST protocol's status: 404 only for an unknown channel (two1 then takes the
    /// channel as closed), 400 for every refusal, 500 for the merchant's failure.
    pub two1_status: StatusCode,
    /// The 21 text: two1's own wording where two1 has one, else the message capitalised with
    /// a full stop. For the paywall's operations `None` (it answers its 402) unless two1's 402
    /// flow has its own text for a token.
    pub two1_text: Option<String>,
}

impl MerchantError {
    /// This error's answer on every transport, for operation `op`.
    pub fn answer(&self, op: Op) -> Answer {
        match self {
            MerchantError::Core(e) => refusal(e, op),
            MerchantError::Shared(e) => e.answer(op),
            _ => Answer {
                code: MERCHANT_FAILURE,
                message: "merchant failure: try again later".into(),
                refused: false,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                paywall_status: StatusCode::SERVICE_UNAVAILABLE,
                two1_status: StatusCode::INTERNAL_SERVER_ERROR,
                two1_text: (!op.is_paywall()).then(|| "Merchant failure: try again later.".into()),
            },
        }
    }
}

fn refusal(e: &Error, op: Op) -> Answer {
    let status = match e {
        Error::UnknownChannel(_) => StatusCode::NOT_FOUND,
        Error::ChannelExists(_) => StatusCode::CONFLICT,
        e if e.is_payment_rejection() => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    // A payment header that does not decode, or speaks another protocol version (the
    // protocol errors, codes 200–299), is a bad request; a payment that decodes but is
    // refused gets a fresh 402.
    let paywall_status = match e {
        Error::Malformed { .. } => StatusCode::BAD_REQUEST,
        e if (200..300).contains(&e.code()) => StatusCode::BAD_REQUEST,
        _ => StatusCode::PAYMENT_REQUIRED,
    };
    let two1_status = match e {
        Error::UnknownChannel(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    Answer {
        code: e.code(),
        message: e.to_string(),
        refused: true,
        status,
        paywall_status,
        two1_status,
        two1_text: two1_text(e, op),
    }
}

/// two1's wording (its server's texts, `shared/two1-protocol.md`).
fn two1_text(e: &Error, op: Op) -> Option<String> {
    let own = match (op, e) {
        (_, Error::UnknownChannel(_)) if !op.is_paywall() => "Related channel not found.",
        (Op::Open, Error::ChannelExists(_)) => {
            "That deposit has already been used to create a channel."
        }
        (Op::Pay, Error::NotIncreasing { .. }) => "Payment must be greater than 0.",
        (Op::Close, Error::InvalidTransition { .. }) => "No payments made in channel.",
        (Op::Close, Error::BadSignature | Error::SignatureNotDer) => "Invalid signature.",
        (Op::RedeemToken, Error::UnknownToken) => {
            "PaymentChannelNotFoundError('Payment not found.')"
        }
        (Op::RedeemToken, Error::AlreadyRedeemed { .. }) => {
            "RedeemPaymentError('Payment already redeemed.')"
        }
        (Op::RedeemToken, Error::ChannelNotOpen { phase }) if phase.is_final() => {
            "Payment channel closed."
        }
        (Op::RedeemToken, Error::ChannelNotOpen { .. }) => "Payment channel not ready.",
        (Op::Redeem | Op::RedeemToken, _) => return None,
        (_, Error::Malformed { reason, .. }) => return Some(reason.clone()),
        _ => return Some(sentence(&e.to_string())),
    };
    Some(own.into())
}

/// `text` capitalised, with a full stop.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(f) => format!("{}{}.", f.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paychan_core::bitcoin::{Amount, OutPoint};

    #[test]
    fn a_refused_payment_has_one_code_and_text_for_every_operation() {
        let e = MerchantError::Core(Error::NotIncreasing {
            total: Amount::from_sat(5),
            accepted: Amount::from_sat(5),
        });
        let answers: Vec<Answer> = [Op::Open, Op::Pay, Op::Close, Op::Redeem, Op::RedeemToken]
            .into_iter()
            .map(|op| e.answer(op))
            .collect();
        for a in &answers {
            assert_eq!(a.code, 104);
            assert_eq!(
                a.message,
                "total 0.00000005 BTC is not above the accepted total 0.00000005 BTC"
            );
            assert_eq!(a.status, StatusCode::CONFLICT);
            assert_eq!(a.paywall_status, StatusCode::PAYMENT_REQUIRED);
            assert!(a.refused);
        }
        assert_eq!(answers[1].two1_text.as_deref(), Some("Payment must be greater than 0."));
        assert_eq!(answers[3].two1_text, None, "the paywall answers its 402");
        assert_eq!(answers[4].two1_text, None, "the paywall answers its 402");
    }

    #[test]
    fn the_merchants_own_failures_say_nothing_more() {
        let store = MerchantError::Store(paychan_store::StoreError::NotFound(OutPoint::null()));
        let shared = MerchantError::Shared(std::sync::Arc::new(store));
        let a = shared.answer(Op::Pay);
        assert_eq!(a.code, MERCHANT_FAILURE);
        assert!(!a.refused);
        assert!(!a.message.contains("store"), "{}", a.message);
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(a.paywall_status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
