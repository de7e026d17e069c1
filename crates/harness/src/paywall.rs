//! A paid request's header as a real x402 client makes it: ask once, read the 402, then pay
//! the requirement it offers (`accepted` is checked by the merchant).

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::paywall::{
    decode_header, encode_header, ChannelPayment, PaymentPayload, PaymentRequired, PAYMENT_REQUIRED,
};

use crate::HarnessError;

/// The 402 that `url` answers to an unpaid `GET`.
///
/// # Errors
/// [`HarnessError::Paywall`] when the request fails or the answer carries no `PAYMENT-REQUIRED`.
pub async fn payment_required(url: &str) -> Result<PaymentRequired, HarnessError> {
    let setup = |e: String| HarnessError::Paywall(format!("GET {url}: {e}"));
    let r = reqwest::get(url).await.map_err(|e| setup(e.to_string()))?;
    let h = r
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| setup(format!("HTTP {} without a 402", r.status())))?;
    decode_header(h.as_bytes()).map_err(|e| setup(e.to_string()))
}

/// A `PAYMENT-SIGNATURE` value paying `required`'s first requirement with the signature of
/// `total` on `channel`.
///
/// # Errors
/// [`HarnessError::Paywall`] when the 402 offers no way to pay.
pub fn payment_header(
    required: &PaymentRequired,
    channel: OutPoint,
    total: Amount,
    signature: &[u8],
) -> Result<String, HarnessError> {
    let requirement = required
        .accepts
        .first()
        .ok_or_else(|| HarnessError::Paywall("the 402 offers no way to pay".into()))?;
    let payload = PaymentPayload::paying(
        required,
        requirement,
        ChannelPayment::new(channel, total, signature),
    );
    encode_header(&payload).map_err(|e| HarnessError::Paywall(e.to_string()))
}
