//! Paid-request accounting (DESIGN §2, ADR 0011): a request is paid by a payment (or a 21
//! token) and charged in the same durable write; a request that fails after its charge is
//! refunded.

use paychan_core::bitcoin::{Amount, OutPoint, Txid};
use paychan_core::channel::merchant::{MerchantState, Redeemed};
use paychan_core::channel::Phase;
use paychan_core::Error;

use super::{exhausted, ChannelServer, Slot};
use crate::MerchantError;

impl ChannelServer {
    /// A paid request on `channel`: the customer's signature of `total` pays `price` (DESIGN §2
    /// accounting; see [`MerchantChannel::redeem`]). When this returns, the charge (and the
    /// payment, if it raised the total) is durable: serve the request only then.
    ///
    /// # Errors
    /// The payment rule broken, [`Error::AlreadyRedeemed`], [`Error::CreditTooLow`] (the
    /// channel is unchanged); a store failure.
    pub async fn redeem(
        &self,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
        price: Amount,
    ) -> Result<Redeemed, MerchantError> {
        self.on_fresh_state(|| async {
            let started = std::time::Instant::now();
            let mut s = self.payable(channel).await?;
            let now = (self.clock)();
            let r = match s.channel.redeem(&now, channel, total, signature, price) {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(e.into());
                }
            };
            self.drain_paid(&mut s, channel).await?;
            // Counted once stored (a retried attempt is not counted twice).
            self.metrics.payments.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics
                .revenue_sat
                .fetch_add(r.increment.to_sat(), std::sync::atomic::Ordering::Relaxed);
            self.metrics.requests_charged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.payment_latency.observe(started.elapsed());
            Ok(r)
        })
        .await
    }

    /// What [`Self::redeem`] would answer now, without charging anything or writing: the
    /// payment checked against the channel as it is (an x402 facilitator's `/verify`).
    ///
    /// # Errors
    /// As [`Self::redeem`].
    pub async fn check_redeem(
        &self,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
        price: Amount,
    ) -> Result<Redeemed, MerchantError> {
        let s = self.payable(channel).await?;
        let now = (self.clock)();
        let mut probe = s.channel.clone();
        Ok(probe.redeem(&now, channel, total, signature, price)?)
    }

    /// Redeems a 21 token (the txid a `PUT /payment/…` answered) for a request of `price`.
    ///
    /// # Errors
    /// [`Error::UnknownToken`] (unknown or already used), [`Error::CreditTooLow`],
    /// [`Error::ChannelNotOpen`]; a store failure.
    pub async fn redeem_token(
        &self,
        token: &Txid,
        price: Amount,
    ) -> Result<(OutPoint, Redeemed), MerchantError> {
        self.on_fresh_state(|| self.redeem_token_once(token, price)).await
    }

    pub(super) async fn redeem_token_once(
        &self,
        token: &Txid,
        price: Amount,
    ) -> Result<(OutPoint, Redeemed), MerchantError> {
        let found = self.token_index().get(token).copied();
        let id = match found {
            Some(id) => id,
            None => {
                // Since the start only channels in use were indexed: read the rest once.
                self.index_tokens().await?;
                self.token_index().get(token).copied().ok_or(Error::UnknownToken)?
            }
        };
        let slot = self.live(&id).await?;
        let mut s = slot.lock().await;
        self.reload(&mut s).await?;
        if !s.channel.has_token(token) {
            // Fell out of the channel's window of tokens.
            self.token_index().remove(token);
            return Err(Error::UnknownToken.into());
        }
        let now = (self.clock)();
        let r = s.channel.redeem_token(&now, token, price)?;
        self.drain_paid(&mut s, id).await?;
        self.metrics.requests_charged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((id, r))
    }

    /// Indexes every stored live channel's latest 21 token, once after a start, reading the
    /// store a page at a time (decoded and dropped: nothing but the tokens stays in memory).
    async fn index_tokens(&self) -> Result<(), MerchantError> {
        const PAGE: usize = 1_000;
        self.tokens_indexed
            .get_or_try_init(|| async {
                let mut after = None;
                let mut indexed = 0usize;
                loop {
                    let page = self
                        .store
                        .list(paychan_store::Query {
                            role: Some(paychan_store::Role::Merchant),
                            by_id: true,
                            after,
                            limit: PAGE,
                            ..Default::default()
                        })
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    for row in page.iter().filter(|r| !r.phase.is_final()) {
                        let state = MerchantState::decode(&row.state)?;
                        if let Some(tx) = &state.two1_tx {
                            self.token_index().entry(tx.compute_txid()).or_insert(row.id);
                            indexed += 1;
                        }
                    }
                }
                tracing::info!(indexed, "21 tokens of the stored channels indexed");
                Ok::<(), MerchantError>(())
            })
            .await?;
        Ok(())
    }

    /// Reverses the charge of a request that failed after it was charged; `total` (the
    /// request's payment, if it carried one) may then be used again. Durable when it returns.
    /// Returns the channel's credit.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`], [`Error::AmountOutOfRange`]; a store failure.
    pub async fn refund_request(
        &self,
        channel: OutPoint,
        total: Option<Amount>,
        price: Amount,
    ) -> Result<Amount, MerchantError> {
        self.on_fresh_state(|| async {
            let slot = self.live(&channel).await?;
            let mut s = slot.lock().await;
            self.reload(&mut s).await?;
            let credit = s.channel.refund_request(total, price)?;
            self.drain(&mut s).await?;
            self.metrics.requests_refunded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(credit)
        })
        .await
    }

    /// Drains after a paid request, settling the channel if the payment exhausted it.
    pub(super) async fn drain_paid(
        &self,
        s: &mut Slot,
        channel: OutPoint,
    ) -> Result<(), MerchantError> {
        let mut due = false;
        self.drain_with(s, &mut |e| due |= exhausted(e)).await?;
        if due && s.channel.phase() == Phase::Open {
            let now = (self.clock)();
            self.settle_exhausted(s, channel, &now).await;
        }
        Ok(())
    }
}
