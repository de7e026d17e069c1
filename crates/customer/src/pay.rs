//! Payments: authorise, pay (one at a time, pipelined, windowed), acknowledgements, the
//! merchant's refusals rolled back, resume after a dropped connection.

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::msg::{self, Message};
use tracing::{info, warn};

use crate::{Connection, Customer, CustomerError, Entry};

impl Customer {
    /// Limits what a channel may ever sign (a spending cap).
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`].
    pub async fn authorise(&self, id: OutPoint, max_total: Amount) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        e.channel.authorise(max_total);
        Ok(())
    }

    /// Pays `amount` on channel `id`; returns the acknowledged total (the receipt).
    ///
    /// # Errors
    /// As [`Customer::pay_many`].
    pub async fn pay(&self, id: OutPoint, amount: Amount) -> Result<Amount, CustomerError> {
        self.pay_many(id, &[amount]).await
    }

    /// Pays each of `amounts` in turn, pipelined: every payment is signed and stored, all are
    /// sent in one write, and the acknowledgements are awaited in order. Returns the final
    /// acknowledged total.
    ///
    /// # Errors
    /// The core's refusal (cap, cutoff) before anything is sent; the merchant's refusal; store
    /// or connection errors (the signed payments then count as spent until a resume settles it).
    pub async fn pay_many(
        &self,
        id: OutPoint,
        amounts: &[Amount],
    ) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        let now = (self.clock)();
        let mut last = e.channel.state().signed;
        for a in amounts {
            match e.channel.pay(&now, *a) {
                Ok(total) => last = total,
                Err(err) => return Err(self.unsign(&mut e, err).await),
            }
        }
        let msgs = self.drain(&mut e).await?;
        let conn = e.ext.conn()?;
        let answered = match conn.send(&msgs).await {
            Ok(()) => self.await_acks(&mut e, last).await,
            Err(err) => Err(err),
        };
        match answered {
            // The connection broke (a merchant closes connections idle for long, or it
            // restarted): once more on a fresh one, whose resume delivers what was signed.
            Err(CustomerError::Io(why)) => {
                info!(channel = %id, %why, "connection lost while paying; reconnecting");
                e.ext.conn = None;
                self.ensure_connected(&mut e).await?;
                Ok(e.channel.state().acked)
            }
            other => other,
        }
    }

    /// Pays `count` payments of `amount` on channel `id` with up to `window` unacknowledged
    /// at any time (a sliding window): while the merchant checks one half-window, the next is
    /// signed, stored and sent, so both sides work at once. Returns the final acknowledged
    /// total.
    ///
    /// # Errors
    /// As [`Customer::pay_many`].
    pub async fn pay_window(
        &self,
        id: OutPoint,
        amount: Amount,
        count: u64,
        window: u32,
    ) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        let window = u64::from(window.max(1));
        let chunk = (window / 2).max(1);
        // Totals sent and not yet acknowledged, oldest first.
        let mut in_flight: std::collections::VecDeque<Amount> = std::collections::VecDeque::new();
        let mut left = count;
        loop {
            // Refill a whole chunk at a time: each chunk costs one durable write.
            while left > 0 && in_flight.len() as u64 + chunk.min(left) <= window {
                let n = chunk.min(left);
                let now = (self.clock)();
                for _ in 0..n {
                    match e.channel.pay(&now, amount) {
                        Ok(total) => in_flight.push_back(total),
                        Err(err) => return Err(self.unsign(&mut e, err).await),
                    }
                }
                left -= n;
                // One durable write for the chunk, then one send.
                let msgs = self.drain(&mut e).await?;
                let conn = e.ext.conn()?;
                conn.send(&msgs).await?;
            }
            if in_flight.is_empty() {
                return Ok(e.channel.state().acked);
            }
            let m = e.ext.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Error(err) => return Err(self.refused(&mut e, err).await),
                _ => return Err(CustomerError::Protocol("unexpected message while paying")),
            }
            let acked = e.channel.state().acked;
            while in_flight.front().is_some_and(|t| *t <= acked) {
                in_flight.pop_front();
            }
            self.drain(&mut e).await?;
        }
    }

    /// Signs a payment of `amount` more and stores it as spent, without sending it: a payment
    /// to hand over by other means (a file). The merchant redeems it with `paychan payment
    /// submit`; a later resume re-sends the same signature if the merchant lacks it.
    ///
    /// # Errors
    /// The core's refusal (cap, cutoff); store errors.
    pub async fn sign_payment(
        &self,
        id: OutPoint,
        amount: Amount,
    ) -> Result<msg::Pay, CustomerError> {
        let mut e = self.locked(&id).await?;
        let now = (self.clock)();
        e.channel.pay(&now, amount)?;
        let msgs = self.drain(&mut e).await?;
        msgs.into_iter()
            .find_map(|m| if let Message::Pay(p) = m { Some(p) } else { None })
            .ok_or(CustomerError::Protocol("no payment was signed"))
    }

    pub(crate) async fn await_acks(
        &self,
        e: &mut Entry,
        target: Amount,
    ) -> Result<Amount, CustomerError> {
        loop {
            if e.channel.state().acked >= target {
                return Ok(e.channel.state().acked);
            }
            let m = e.ext.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Resumed(r) => e.channel.handle_resumed(Amount::from_sat(r.total_sat))?,
                Message::Error(err) => return Err(self.refused(e, err).await),
                _ => return Err(CustomerError::Protocol("unexpected message while paying")),
            }
            let msgs = self.drain(e).await?;
            if !msgs.is_empty() {
                let conn = e.ext.conn()?;
                conn.send(&msgs).await?;
            }
        }
    }

    /// The core refused a payment part-way through a run: the run's earlier payments are
    /// signed in the machine but neither stored nor sent. Forget them (the machine again as
    /// stored), so the caller's "failed" is true and none of them leaves later with another
    /// payment. Returns the refusal.
    pub(crate) async fn unsign(&self, e: &mut Entry, err: paychan_core::Error) -> CustomerError {
        e.mark_stale();
        if let Err(other) = self.reload(e).await {
            warn!(error = %other, "reloading the channel failed; will reload before its next use");
        }
        err.into()
    }

    /// The merchant refused a payment by a payment rule (codes 100–199): learn what it holds
    /// after answering everything sent before (a `Resume` on the same connection is answered
    /// after them), and stop counting the refused totals as spent
    /// ([`CustomerChannel::handle_refused`]). Returns the refusal. If that fails, the refused
    /// payment stays counted as spent (the safe side) until the next sync.
    pub(crate) async fn refused(&self, e: &mut Entry, err: msg::ErrorMsg) -> CustomerError {
        let rule_broken = (100..200).contains(&err.code);
        let refusal = CustomerError::Rejected { code: err.code, message: err.message };
        if !rule_broken {
            // The merchant's own failure (its store, say): it may yet hold the payment, so it
            // stays spent and the next resume delivers it again.
            return refusal;
        }
        match self.roll_back_refused(e).await {
            Ok(total) => {
                info!(%total, error = %refusal, "payment refused; the merchant holds {total}: counting from there");
            }
            Err(other) => {
                warn!(error = %other, "cannot learn what the merchant holds after a refusal; the refused payment counts as spent until the next sync");
                e.ext.conn = None;
            }
        }
        refusal
    }

    pub(crate) async fn roll_back_refused(&self, e: &mut Entry) -> Result<Amount, CustomerError> {
        e.channel.resume()?;
        let msgs = self.drain(e).await?;
        e.ext.conn()?.send(&msgs).await?;
        loop {
            let m = e.ext.conn()?.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                // The answers to other payments that were in flight.
                Message::Error(_) => {}
                Message::Resumed(r) => {
                    let total = Amount::from_sat(r.total_sat);
                    e.channel.handle_refused(total)?;
                    self.drain(e).await?;
                    return Ok(total);
                }
                _ => return Err(CustomerError::Protocol("unexpected message while resuming")),
            }
        }
    }

    /// Writes the acknowledged total if it moved since the last write (acknowledgements alone
    /// are not written on the payment path, to keep it at one write per run of payments).
    pub(crate) async fn store_acks(&self, e: &mut Entry) -> Result<(), CustomerError> {
        if e.channel.state().acked > e.ext.stored_acked {
            e.channel.checkpoint();
            self.drain(e).await?;
        }
        Ok(())
    }

    /// Writes channel `id`'s acknowledged total to the store now (see
    /// [`ChannelStatus::acked`]); a command that paid calls it before it exits.
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`]; store errors.
    pub async fn checkpoint(&self, id: OutPoint) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        self.store_acks(&mut e).await
    }

    /// (Re)connects and resumes: the merchant tells its latest total; a payment it lacks is
    /// sent again with the same signature.
    pub(crate) async fn ensure_connected(&self, e: &mut Entry) -> Result<(), CustomerError> {
        if e.ext.conn.is_some() {
            return Ok(());
        }
        let (conn, _) = Connection::connect(&e.channel.state().terms.peer).await?;
        e.ext.conn = Some(conn);
        e.channel.resume()?;
        let msgs = self.drain(e).await?;
        let conn = e.ext.conn()?;
        conn.send(&msgs).await?;
        match conn.recv().await? {
            Message::Resumed(r) => e.channel.handle_resumed(Amount::from_sat(r.total_sat))?,
            Message::Error(err) => {
                return Err(CustomerError::Rejected { code: err.code, message: err.message })
            }
            _ => return Err(CustomerError::Protocol("expected Resumed")),
        }
        let signed = e.channel.state().signed;
        let msgs = self.drain(e).await?;
        if !msgs.is_empty() {
            let conn = e.ext.conn()?;
            conn.send(&msgs).await?;
            self.await_acks(e, signed).await?;
        }
        Ok(())
    }

    /// The merchant acknowledged `total` by other means than the channel protocol (an HTTP
    /// receipt).
    ///
    /// # Errors
    /// [`CustomerError::UnknownChannel`]; [`paychan_core::Error::UnexpectedMessage`] for a
    /// total never signed.
    pub async fn acknowledge(&self, id: OutPoint, total: Amount) -> Result<(), CustomerError> {
        let mut e = self.locked(&id).await?;
        e.channel.handle_ack(total)?;
        self.drain(&mut e).await?;
        Ok(())
    }

    /// Resumes channel `id` now (after a crash or a dropped connection); returns the
    /// acknowledged total, which then matches the merchant's.
    ///
    /// # Errors
    /// Connection or protocol errors.
    pub async fn sync(&self, id: OutPoint) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        e.ext.conn = None;
        self.ensure_connected(&mut e).await?;
        self.store_acks(&mut e).await?;
        Ok(e.channel.state().acked)
    }
}
