//! Payments: authorise, pay (one at a time, pipelined, windowed), acknowledgements, the
//! merchant's refusals rolled back, resume after a dropped connection.

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::msg::{self, Message};
use tracing::{info, warn};

use paychan_core::channel::customer::CustomerState;
use paychan_store::InFlight;

use crate::{Connection, Customer, CustomerError, Entry};

/// Hands `latency` the time since signing of every payment in `in_flight` that is paid:
/// acknowledged and stored.
fn pop_paid(
    e: &Entry,
    in_flight: &mut std::collections::VecDeque<(Amount, std::time::Instant)>,
    latency: &mut (dyn FnMut(std::time::Duration) + Send),
) {
    let paid = e.channel.state().acked.min(e.stored_total());
    while let Some((_, signed)) = in_flight.front().filter(|(t, _)| *t <= paid) {
        latency(signed.elapsed());
        in_flight.pop_front();
    }
}

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

    /// Pays each of `amounts` in turn, pipelined: every payment is signed, queued for the
    /// store and sent in one write while the store writes (DESIGN §6), and the
    /// acknowledgements are awaited in order. Returns the final acknowledged total once the
    /// payments are stored too.
    ///
    /// # Errors
    /// The core's refusal (cap, cutoff) before anything is sent; the merchant's refusal; store
    /// or connection errors (the signed payments then count as spent until a resume settles
    /// it: a payment whose write failed after it was sent is adopted again from the
    /// merchant's answer to the resume).
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
        let (msgs, write) = self.submit_to_send(&mut e).await?;
        let sent = match e.ext.conn() {
            Ok(conn) => conn.send(&msgs).await,
            Err(err) => Err(err),
        };
        let mut writes = std::collections::VecDeque::from_iter(write);
        let answered = match sent {
            Ok(()) => self.await_acks(&mut e, last, &mut writes).await,
            Err(err) => Err(err),
        };
        // Paid once stored too: the write went on meanwhile.
        self.land_all(&mut e, &mut writes).await?;
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

    /// Queues the write of the payments just signed and returns them to send, with the write
    /// if it is still in flight. A write the store refused at once sends nothing: the
    /// payments are forgotten (the channel reloaded as stored) and the caller told they failed.
    ///
    /// # Errors
    /// The store's refusal.
    async fn submit_to_send(
        &self,
        e: &mut Entry,
    ) -> Result<(Vec<Message>, Option<InFlight<CustomerState>>), CustomerError> {
        let (mut msgs, write) = self.submit(e).await;
        match write.map(InFlight::landed_now) {
            None => Ok((msgs, None)),
            Some(Err(in_flight)) => Ok((msgs, Some(in_flight))),
            Some(Ok(landed)) => {
                msgs.extend(self.land(e, landed).await?);
                Ok((msgs, None))
            }
        }
    }

    /// Lands every write in `writes`, oldest first, waiting for each.
    ///
    /// # Errors
    /// The first write that failed (the channel is then reloaded from the store; the writes
    /// after it land nothing).
    async fn land_all(
        &self,
        e: &mut Entry,
        writes: &mut std::collections::VecDeque<InFlight<CustomerState>>,
    ) -> Result<(), CustomerError> {
        let mut first_error = None;
        while let Some(write) = writes.pop_front() {
            let landed = write.wait().await;
            match self.land(e, landed).await {
                Ok(msgs) => self.send_released(e, &msgs).await?,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lands the writes in `writes` that have landed already, oldest first, without waiting.
    async fn land_ready(
        &self,
        e: &mut Entry,
        writes: &mut std::collections::VecDeque<InFlight<CustomerState>>,
    ) -> Result<(), CustomerError> {
        while let Some(write) = writes.pop_front() {
            match write.landed_now() {
                Ok(landed) => {
                    let msgs = self.land(e, landed).await?;
                    self.send_released(e, &msgs).await?;
                }
                Err(write) => {
                    writes.push_front(write);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sends what a landed write released (nothing, for payments: they left at once).
    async fn send_released(&self, e: &mut Entry, msgs: &[Message]) -> Result<(), CustomerError> {
        if !msgs.is_empty() {
            e.ext.conn()?.send(msgs).await?;
        }
        Ok(())
    }

    /// Pays `count` payments of `amount` on channel `id` with up to `window` unacknowledged
    /// at any time (a sliding window): while the merchant checks one half-window, the next is
    /// signed, queued for the store and sent, so both sides work at once. Returns the final
    /// acknowledged total, once every payment is stored too.
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
        self.pay_window_timed(id, amount, count, window, &mut |_| {}).await
    }

    /// [`Customer::pay_window`], handing `latency` each payment's time from its signing until
    /// it is paid (acknowledged and stored), as they come.
    ///
    /// # Errors
    /// As [`Customer::pay_many`].
    pub async fn pay_window_timed(
        &self,
        id: OutPoint,
        amount: Amount,
        count: u64,
        window: u32,
        latency: &mut (dyn FnMut(std::time::Duration) + Send),
    ) -> Result<Amount, CustomerError> {
        let mut e = self.locked(&id).await?;
        self.ensure_connected(&mut e).await?;
        let mut writes = std::collections::VecDeque::new();
        let paid = self.window(&mut e, amount, count, window, &mut writes, latency).await;
        // Whatever happened, the writes queued go on: land them before anything else.
        let landed = self.land_all(&mut e, &mut writes).await;
        let acked = paid?;
        landed?;
        Ok(acked)
    }

    async fn window(
        &self,
        e: &mut Entry,
        amount: Amount,
        count: u64,
        window: u32,
        writes: &mut std::collections::VecDeque<InFlight<CustomerState>>,
        latency: &mut (dyn FnMut(std::time::Duration) + Send),
    ) -> Result<Amount, CustomerError> {
        let window = u64::from(window.max(1));
        let chunk = (window / 2).max(1);
        // Totals sent and not yet paid (acknowledged and stored), oldest first, with when
        // each was signed.
        let mut in_flight: std::collections::VecDeque<(Amount, std::time::Instant)> =
            std::collections::VecDeque::new();
        let mut left = count;
        loop {
            // Refill a whole chunk at a time: each chunk costs one durable write.
            while left > 0 && in_flight.len() as u64 + chunk.min(left) <= window {
                let n = chunk.min(left);
                let now = (self.clock)();
                for _ in 0..n {
                    match e.channel.pay(&now, amount) {
                        Ok(total) => in_flight.push_back((total, std::time::Instant::now())),
                        Err(err) => {
                            // Forget the chunk's signed payments (never sent) as stored, once
                            // the writes of the chunks before it landed.
                            self.land_all(e, writes).await?;
                            return Err(self.unsign(e, err).await);
                        }
                    }
                }
                left -= n;
                // The chunk's write queued, its payments sent while the store writes.
                let (msgs, write) = self.submit_to_send(e).await?;
                writes.extend(write);
                e.ext.conn()?.send(&msgs).await?;
            }
            if in_flight.is_empty() {
                return Ok(e.channel.state().acked);
            }
            if e.channel.state().acked >= in_flight.back().map_or(Amount::ZERO, |t| t.0) {
                // Everything sent is acknowledged: what is left is the store.
                let Some(write) = writes.pop_front() else {
                    // Every write landed: all of it is stored.
                    for (_, signed) in in_flight.drain(..) {
                        latency(signed.elapsed());
                    }
                    continue;
                };
                let msgs = self.land(e, write.wait().await).await?;
                self.send_released(e, &msgs).await?;
                pop_paid(e, &mut in_flight, latency);
                continue;
            }
            let m = e.ext.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Error(err) => {
                    self.land_all(e, writes).await?;
                    return Err(self.refused(e, err).await);
                }
                _ => return Err(CustomerError::Protocol("unexpected message while paying")),
            }
            self.land_ready(e, writes).await?;
            pop_paid(e, &mut in_flight, latency);
            self.drain(e).await?;
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

    /// Awaits acknowledgements up to `target`. `writes` are the payments' writes in flight:
    /// landed before a refusal is handled (its resume waits for them).
    pub(crate) async fn await_acks(
        &self,
        e: &mut Entry,
        target: Amount,
        writes: &mut std::collections::VecDeque<InFlight<CustomerState>>,
    ) -> Result<Amount, CustomerError> {
        loop {
            if e.channel.state().acked >= target {
                return Ok(e.channel.state().acked);
            }
            let m = e.ext.recv().await?;
            match m {
                Message::PaymentAck(a) => e.channel.handle_ack(Amount::from_sat(a.total_sat))?,
                Message::Resumed(r) => {
                    e.channel.handle_resumed(Amount::from_sat(r.total_sat), &r.signature)?
                }
                Message::Error(err) => {
                    self.land_all(e, writes).await?;
                    return Err(self.refused(e, err).await);
                }
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
            Message::Resumed(r) => {
                e.channel.handle_resumed(Amount::from_sat(r.total_sat), &r.signature)?
            }
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
            self.await_acks(e, signed, &mut std::collections::VecDeque::new()).await?;
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
