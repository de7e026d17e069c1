//! Paid-request accounting (DESIGN §2, ADR 0011): a request is paid by a payment (or a 21
//! token) and charged in the same persist as the payment; a replayed total is refused; a
//! request that failed after its charge is refunded.

use bitcoin::{Amount, OutPoint, Txid};

use super::MerchantChannel;
use crate::time::Now;
use crate::validate::validate_payment;
use crate::Error;

/// How many redeemed totals a channel remembers above its floor: a paid request may arrive
/// after up to this many later ones on the same channel and still be served.
pub const REDEEM_WINDOW: usize = 256;

/// How many 21 tokens (PUT but not yet redeemed) a channel keeps.
pub const TOKEN_WINDOW: usize = 64;

/// What a paid request was charged (DESIGN §2 accounting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redeemed {
    /// The channel's highest accepted total after the request.
    pub accepted: Amount,
    /// New money the request's payment brought (zero for a payment older than the highest).
    pub increment: Amount,
    /// The price charged.
    pub price: Amount,
    /// Paid but not yet charged, after this request.
    pub credit: Amount,
}

/// The replay guard: totals already used for a request. Every total at or below `floor` counts
/// as used; the set holds the used ones above it, at most [`REDEEM_WINDOW`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Redemptions {
    pub(super) floor: u64,
    pub(super) used: std::collections::BTreeSet<u64>,
}

impl Redemptions {
    pub(super) fn is_used(&self, total: Amount) -> bool {
        total.to_sat() <= self.floor || self.used.contains(&total.to_sat())
    }

    pub(super) fn mark(&mut self, total: Amount) {
        self.used.insert(total.to_sat());
        while self.used.len() > REDEEM_WINDOW {
            if let Some(first) = self.used.pop_first() {
                self.floor = self.floor.max(first);
            }
        }
    }

    pub(super) fn unmark(&mut self, total: Amount) {
        self.used.remove(&total.to_sat());
    }
}

impl MerchantChannel {
    /// A paid request (DESIGN §2 accounting): the customer's signature of `total` pays for a
    /// request costing `price`. Served when the signature is valid, `total` was never used for
    /// another request, and `charged + price ≤ max(accepted, total)`. A total above the highest
    /// accepted one is also accepted as a payment (with its acknowledgement held behind the
    /// persist like any payment); an older one only needs a valid signature, so requests may
    /// arrive out of order on several connections. On success one persist is queued: the
    /// charge is durable before the request is served.
    ///
    /// # Errors
    /// The payment rule broken (as [`MerchantChannel::handle_payment`]),
    /// [`Error::AlreadyRedeemed`] or [`Error::CreditTooLow`]; the channel is then unchanged.
    pub fn redeem(
        &mut self,
        now: &Now,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
        price: Amount,
    ) -> Result<Redeemed, Error> {
        if total > self.state.accepted {
            validate_payment(&self.view(), &self.policy, now, channel, total, signature)?;
        } else {
            if channel != self.id() {
                return Err(Error::WrongChannel { expected: self.id(), got: channel });
            }
            crate::validate::check_open(&self.view(), &self.policy, now)?;
            if total == Amount::ZERO {
                return Err(Error::NotIncreasing { total, accepted: self.state.accepted });
            }
        }
        if self.redemptions.is_used(total) {
            return Err(Error::AlreadyRedeemed { total });
        }
        if total <= self.state.accepted {
            // An older payment, arriving after a later one: still the customer's signature?
            crate::tx::payment::verify_payment(&self.state.params, total, signature)?;
        }
        let accepted = self.state.accepted.max(total);
        let charged = self.charged_with(price, accepted)?;
        self.redemptions.mark(total);
        self.state.charged = charged;
        let increment = accepted - self.state.accepted;
        if increment > Amount::ZERO {
            self.state.accepted = total;
            self.state.signature = signature.to_vec();
            self.state.two1_tx = None;
            self.accepted_effects(increment);
        } else {
            self.outbox.persist(self.state.clone());
        }
        Ok(Redeemed { accepted, increment, price, credit: accepted - charged })
    }

    /// Reverses the charge of a request that failed after it was charged (the upstream
    /// answered 5xx or was unreachable): `charged` goes down by `price`, and the request's
    /// payment `total` (if any) may be used again, so the customer can retry with the same
    /// payment. Queues a persist. Returns the credit after the reversal.
    ///
    /// # Errors
    /// [`Error::AmountOutOfRange`] when less than `price` was charged.
    pub fn refund_request(
        &mut self,
        total: Option<Amount>,
        price: Amount,
    ) -> Result<Amount, Error> {
        let charged = self
            .state
            .charged
            .checked_sub(price)
            .ok_or(Error::AmountOutOfRange("refund above the charged amount"))?;
        self.state.charged = charged;
        if let Some(total) = total {
            self.redemptions.unmark(total);
        }
        self.outbox.persist(self.state.clone());
        Ok(self.state.accepted - charged)
    }

    /// Whether this channel issued the 21 token `txid` (redeemed or not).
    pub fn has_token(&self, txid: &Txid) -> bool {
        self.tokens.iter().any(|(t, _)| t == txid)
    }

    /// Redeems a 21 payment token (two1's `Bitcoin-Payment-Channel-Token`, the txid a `PUT`
    /// answered) for a request costing `price`: single use, charged against the channel's
    /// credit. Queues a persist.
    ///
    /// # Errors
    /// [`Error::UnknownToken`]; [`Error::AlreadyRedeemed`]; [`Error::ChannelNotOpen`] /
    /// [`Error::PastCutoff`];
    /// [`Error::CreditTooLow`] (the token stays unused). The channel is then unchanged.
    pub fn redeem_token(
        &mut self,
        now: &Now,
        txid: &Txid,
        price: Amount,
    ) -> Result<Redeemed, Error> {
        let Some(pos) = self.tokens.iter().position(|(t, _)| t == txid) else {
            return Err(Error::UnknownToken);
        };
        if self.tokens[pos].1 {
            return Err(Error::AlreadyRedeemed { total: self.state.accepted });
        }
        crate::validate::check_open(&self.view(), &self.policy, now)?;
        let charged = self.charged_with(price, self.state.accepted)?;
        self.tokens[pos].1 = true;
        if self.state.two1_tx.as_ref().is_some_and(|tx| tx.compute_txid() == *txid) {
            self.state.two1_token_redeemed = true;
        }
        self.state.charged = charged;
        self.outbox.persist(self.state.clone());
        Ok(Redeemed {
            accepted: self.state.accepted,
            increment: Amount::ZERO,
            price,
            credit: self.state.accepted - charged,
        })
    }
}
