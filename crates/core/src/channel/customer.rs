//! The customer's side of a channel.
//!
//! ```text
//!  new() ─► Opening ─funding_built─► AwaitingFunding ─Opened─► Open ─Closed─► Settling ─► Settled
//!              │                          │ (error)            │                  └───► Refunded
//!              │                          ▼                    └──refund()──────────────► Refunded
//!              └─────────────────────► Abandoned
//! ```
//!
//! A dispute channel (DESIGN §3a): `Open` carries the funding without its witnesses and the
//! customer's signature of the trigger; the funding is signed and broadcast only once
//! `Opened` brings the merchant's trigger signature (checked, the whole trigger stored first).
//! It ends by a cooperative close (the merchant's `Closed` carries the close, which the
//! customer checks, signs and broadcasts), or by [`CustomerChannel::force_close`]: the trigger
//! with an exit child (`Disputed`), then the refund once the trigger has the dispute period's
//! confirmations ([`Event::RefundDue`]). No payment is signed after a force close.
//!
//! The customer keeps DESIGN §2's rules: it never signs a total above what its caller
//! authorised; it stores the channel before the funding is sent to the merchant (and broadcasts
//! only once the merchant accepted it, so a refused channel never locks coins); it records every
//! payment as spent before sending it; and it reports [`Event::RefundDue`] when the funding is
//! still unspent once the refund is final.

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::serialize;
use bitcoin::secp256k1::{Keypair, Message as SecpMessage, PublicKey, SecretKey};
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};

use super::{Effect, Event, Outbox, Phase};
use crate::msg::{close_digest, Close, Message, Open, Pay, Resume};
use crate::script::{ChannelScript, Lock, OutputKind};
use crate::time::Now;
use crate::tx::payment::{sign_payment, verify_payment};
use crate::tx::recognise::{find_channel_spend, Role};
use crate::tx::refund::build_refund;
use crate::tx::{dispute, ChannelParams, FundingOutput};
use crate::{sig, Error};

/// What the customer agreed with the merchant before the funding exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerTerms {
    /// The channel script (merchant key from the handshake, customer key, expiry).
    pub script: ChannelScript,
    /// P2WSH (default) or P2SH.
    pub kind: OutputKind,
    /// Where the change of every payment goes.
    pub change_script: ScriptBuf,
    /// Dust relay fee from the merchant's policy (fixes the `NONE` switch point).
    pub dust_relay_fee: FeeRate,
    /// Settle margin plus payment cutoff from the merchant's policy, in the expiry's unit:
    /// the customer stops paying when the merchant would stop accepting.
    pub cutoff_distance: u32,
    /// The merchant's `key_index` from its `Welcome`, echoed in `Open`.
    pub key_index: u32,
    /// Which of the customer's derived keys is this channel's (to derive it again).
    pub customer_key_index: u32,
    /// Where the merchant is (opaque to the core: the driver's address for it).
    pub peer: String,
}

/// Everything the customer stores about a channel. The channel's secret key is not part of it:
/// the caller derives it again (from its seed) when it restores the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerState {
    /// The terms.
    pub terms: CustomerTerms,
    /// The parameters, once the funding transaction is built.
    pub params: Option<ChannelParams>,
    /// The funding transaction, stored before it is sent or broadcast.
    pub funding_tx: Option<Transaction>,
    /// The phase.
    pub phase: Phase,
    /// The highest total the caller authorised.
    pub authorised: Amount,
    /// The highest total signed: treated as spent from the moment it is signed.
    pub signed: Amount,
    /// The signature of `signed` (so a resume re-sends it rather than signing anew).
    pub signature: Vec<u8>,
    /// The highest total the merchant acknowledged.
    pub acked: Amount,
    /// The settlement or refund that spent (or will spend) the funding output.
    pub closing_txid: Option<Txid>,
    /// A dispute channel's trigger, signed by both (stored before the funding is broadcast).
    pub trigger: Option<Transaction>,
}

/// The customer's state machine for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerChannel {
    state: CustomerState,
    key: Keypair,
    outbox: Outbox<CustomerState>,
}

impl CustomerChannel {
    /// Starts a channel with `terms`. `key` must be the secret of `terms.script.customer()`.
    /// Returns the channel in [`Phase::Opening`]: build the funding transaction to
    /// [`CustomerChannel::funding_script_pubkey`], then call
    /// [`CustomerChannel::handle_funding_built`].
    ///
    /// # Errors
    /// [`Error::Signing`] when `key` does not match; [`Error::NonStandardScript`] for a
    /// non-standard change script.
    pub fn new(terms: CustomerTerms, key: SecretKey) -> Result<Self, Error> {
        if PublicKey::from_secret_key(sig::secp(), &key) != terms.script.customer() {
            return Err(Error::Signing("the key is not the channel's customer key"));
        }
        if !crate::tx::is_standard_destination(&terms.change_script) {
            return Err(Error::NonStandardScript("change script"));
        }
        let state = CustomerState {
            terms,
            params: None,
            funding_tx: None,
            phase: Phase::Opening,
            authorised: Amount::ZERO,
            signed: Amount::ZERO,
            signature: Vec::new(),
            acked: Amount::ZERO,
            closing_txid: None,
            trigger: None,
        };
        let key = Keypair::from_secret_key(sig::secp(), &key);
        Ok(CustomerChannel { state, key, outbox: Outbox::default() })
    }

    /// Rebuilds a channel from its stored state and its secret key.
    ///
    /// # Errors
    /// [`Error::Signing`] when `key` is not the stored channel's key.
    pub fn restore(state: CustomerState, key: SecretKey) -> Result<Self, Error> {
        if PublicKey::from_secret_key(sig::secp(), &key) != state.terms.script.customer() {
            return Err(Error::Signing("the key is not the channel's customer key"));
        }
        let key = Keypair::from_secret_key(sig::secp(), &key);
        Ok(CustomerChannel { state, key, outbox: Outbox::default() })
    }

    /// The stored state.
    pub fn state(&self) -> &CustomerState {
        &self.state
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// The channel id, once the funding exists.
    pub fn id(&self) -> Option<OutPoint> {
        self.state.params.as_ref().map(ChannelParams::id)
    }

    /// The output script the funding transaction must pay.
    pub fn funding_script_pubkey(&self) -> ScriptBuf {
        match self.state.terms.script.lock() {
            Lock::Expiry(_) => self.state.terms.script.script_pubkey(self.state.terms.kind),
            Lock::Dispute(_) => dispute::funding_script_pubkey(&self.state.terms.script),
        }
    }

    /// A dispute channel's trigger, once signed by both.
    pub fn trigger(&self) -> Option<&Transaction> {
        self.state.trigger.as_ref()
    }

    /// The next effect to execute.
    pub fn poll_effect(&mut self) -> Option<Effect<CustomerState>> {
        self.outbox.poll()
    }

    /// Reports persist `id` durable; releases what waited for it.
    ///
    /// # Errors
    /// [`Error::UnknownPersist`] for an id never issued.
    pub fn persisted(&mut self, id: u64) -> Result<(), Error> {
        self.outbox.persisted(id)
    }

    fn params(&self, event: &'static str) -> Result<&ChannelParams, Error> {
        self.state
            .params
            .as_ref()
            .ok_or(Error::InvalidTransition { phase: self.state.phase, event })
    }

    /// The wallet built (and signed) `funding_tx`. Queues: persist (with the funding), then
    /// [`Open`] to the merchant. The funding is broadcast only once the merchant accepts.
    /// Authorises payments up to the deposit unless [`CustomerChannel::authorise`] lowered it.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] outside [`Phase::Opening`]; [`Error::FundingOutputNotFound`]
    /// or [`Error::FundingOutputAmbiguous`]; [`Error::WrongOutputKind`] when it pays the other
    /// kind.
    pub fn handle_funding_built(&mut self, funding_tx: Transaction) -> Result<OutPoint, Error> {
        if self.state.phase != Phase::Opening {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "fund" });
        }
        let terms = &self.state.terms;
        let funding = FundingOutput::find(&funding_tx, &terms.script)?;
        if funding.kind != terms.kind {
            return Err(Error::WrongOutputKind);
        }
        let params = ChannelParams::new(
            terms.script,
            funding,
            terms.change_script.clone(),
            terms.dust_relay_fee,
        )?;
        // A dispute channel's funding goes out without its witnesses (the txid is the same):
        // the merchant cannot broadcast it before it has signed the trigger.
        let (sent, dispute_blocks, trigger_signature) = match terms.script.lock() {
            Lock::Expiry(_) => (funding_tx.clone(), 0, Vec::new()),
            Lock::Dispute(blocks) => {
                let mut bare = funding_tx.clone();
                for input in &mut bare.input {
                    input.witness = bitcoin::Witness::new();
                }
                let trigger = dispute::trigger(&params)?;
                let sig = dispute::sign(&params, &trigger, &self.key.secret_key())?;
                (bare, u32::from(blocks), sig)
            }
        };
        let open = Open {
            funding_tx: serialize(&sent),
            customer_pubkey: terms.script.customer().serialize().to_vec(),
            merchant_pubkey: terms.script.merchant().serialize().to_vec(),
            expiry: terms.script.expiry().map_or(0, |e| e.to_consensus_u32()),
            change_script: terms.change_script.to_bytes(),
            key_index: terms.key_index,
            dispute_blocks,
            trigger_signature,
        };
        if self.state.authorised == Amount::ZERO {
            self.state.authorised = funding.value;
        }
        self.state.params = Some(params);
        self.state.funding_tx = Some(funding_tx);
        self.state.phase = Phase::AwaitingFunding;
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::Send(Message::Open(open)));
        Ok(funding.outpoint)
    }

    /// The merchant accepted the channel: broadcast the funding and watch it. A dispute
    /// channel's `merchant_trigger_sig` is checked and the whole trigger stored first; a bad one
    /// abandons the channel (its funding was never broadcast, so its coins are free).
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless awaiting funding; the signature errors of
    /// [`dispute::verify`].
    pub fn handle_opened(&mut self, merchant_trigger_sig: &[u8]) -> Result<(), Error> {
        let (Phase::AwaitingFunding, Some(tx)) = (self.state.phase, &self.state.funding_tx) else {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "opened" });
        };
        let tx = tx.clone();
        let params = self.params("opened")?;
        let id = params.id();
        if params.script().dispute_blocks().is_some() {
            let completed = dispute::trigger(params).and_then(|t| {
                let own = dispute::sign(params, &t, &self.key.secret_key())?;
                dispute::complete(params, t, merchant_trigger_sig, &own)
            });
            match completed {
                Ok(trigger) => self.state.trigger = Some(trigger),
                Err(e) => {
                    self.state.phase = Phase::Abandoned;
                    self.outbox.persist(self.state.clone());
                    return Err(e);
                }
            }
        }
        self.state.phase = Phase::Open;
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::Broadcast(tx));
        self.outbox.now(Effect::Watch(id));
        Ok(())
    }

    /// The merchant refused the channel before the funding was broadcast: the funding's inputs
    /// are free again.
    pub fn handle_open_refused(&mut self, code: u32, message: String) {
        if matches!(self.state.phase, Phase::Opening | Phase::AwaitingFunding) {
            self.state.phase = Phase::Abandoned;
            self.outbox.persist(self.state.clone());
            if let Some(channel) = self.id() {
                self.outbox.now(Effect::Event(Event::PeerError { channel, code, message }));
            }
        }
    }

    /// Sets the highest total the caller allows this channel to sign (a spending cap). It may
    /// not go below what is already signed.
    pub fn authorise(&mut self, max_total: Amount) {
        self.state.authorised = max_total.max(self.state.signed);
    }

    /// Pays `amount` more: signs the new cumulative total, records it as spent (persist) and
    /// sends it. The send may leave while the write is in flight (DESIGN §6), after every
    /// message held before it; a driver reports the payment paid only once both its
    /// acknowledgement and its write are done, and a resume after a crash that lost the write
    /// adopts the total the merchant shows with this customer's signature
    /// ([`CustomerChannel::handle_resumed`]). Returns the new total.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless open; [`Error::PastCutoff`] when the merchant would
    /// no longer accept it; [`Error::AboveAuthorised`]; [`Error::AboveDeposit`].
    pub fn pay(&mut self, now: &Now, amount: Amount) -> Result<Amount, Error> {
        if self.state.phase != Phase::Open {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "pay" });
        }
        if amount == Amount::ZERO {
            return Err(Error::AmountOutOfRange("a payment must be above zero"));
        }
        let params = self.params("pay")?;
        let expiry: Option<LockTime> = params.script().expiry();
        let distance = self.state.terms.cutoff_distance;
        if let Some(expiry) = expiry.filter(|e| !now.is_before(*e, distance)) {
            return Err(Error::PastCutoff {
                cutoff: expiry.to_consensus_u32().saturating_sub(distance),
            });
        }
        let total = self
            .state
            .signed
            .checked_add(amount)
            .ok_or(Error::AmountOutOfRange("total overflows"))?;
        if total > self.state.authorised {
            return Err(Error::AboveAuthorised { total, authorised: self.state.authorised });
        }
        let signature = sign_payment(params, total, &self.key)?;
        let id = params.id();
        self.state.signed = total;
        self.state.signature = signature.clone();
        self.outbox.persist(self.state.clone());
        self.outbox.overlapped(Effect::Send(Message::Pay(Pay {
            channel: Some(id.into()),
            total_sat: total.to_sat(),
            signature,
        })));
        Ok(total)
    }

    /// The merchant acknowledged `total`.
    ///
    /// # Errors
    /// [`Error::UnexpectedMessage`] for a total never signed.
    pub fn handle_ack(&mut self, total: Amount) -> Result<(), Error> {
        let id = self.params("ack")?.id();
        if total > self.state.signed {
            return Err(Error::UnexpectedMessage("acknowledgement of a total never signed"));
        }
        if total > self.state.acked {
            self.state.acked = total;
            self.outbox.now(Effect::Event(Event::PaymentAcked { channel: id, total }));
        }
        Ok(())
    }

    /// After a reconnect: ask the merchant for its latest total.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] before the funding exists.
    pub fn resume(&mut self) -> Result<(), Error> {
        let id = self.params("resume")?.id();
        self.outbox
            .after_persist(Effect::Send(Message::Resume(Resume { channel: Some(id.into()) })));
        Ok(())
    }

    /// The merchant's latest stored total after a resume, with its signature. When it lacks
    /// the latest signed payment, the same signature is sent again (never a new one). When it
    /// holds more than this side has stored (a payment sent while its write was in flight,
    /// and the write lost in a crash), the total is adopted, acknowledged and stored if
    /// `signature` is this customer's valid signature of it.
    ///
    /// # Errors
    /// [`Error::UnexpectedMessage`] when the merchant claims more than was signed and cannot
    /// show the signature. Nothing changes then.
    pub fn handle_resumed(
        &mut self,
        merchant_total: Amount,
        signature: &[u8],
    ) -> Result<(), Error> {
        let params = self.params("resumed")?;
        let id = params.id();
        if merchant_total > self.state.signed {
            if verify_payment(params, merchant_total, signature).is_err() {
                return Err(Error::UnexpectedMessage("merchant claims a total never signed"));
            }
            self.state.signed = merchant_total;
            self.state.signature = signature.to_vec();
            self.state.authorised = self.state.authorised.max(merchant_total);
            self.state.acked = merchant_total;
            self.outbox.persist(self.state.clone());
            return Ok(());
        }
        self.handle_ack(merchant_total)?;
        if merchant_total < self.state.signed && self.state.phase == Phase::Open {
            self.outbox.after_persist(Effect::Send(Message::Pay(Pay {
                channel: Some(id.into()),
                total_sat: self.state.signed.to_sat(),
                signature: self.state.signature.clone(),
            })));
        }
        Ok(())
    }

    /// The merchant refused a payment and then said (in `Resumed`, after answering every
    /// payment sent before) that it holds `merchant_total`: the totals above it were refused,
    /// so they no longer count as spent. `signed` falls back to `merchant_total` (its
    /// signature made again: signing is deterministic), which becomes acknowledged too, and
    /// the next payment builds on it. A merchant that lies here can at most settle with a
    /// refused signature it kept: never more than the highest total ever signed.
    ///
    /// # Errors
    /// [`Error::UnexpectedMessage`] for a total never signed or below an acknowledged one;
    /// signing errors. Nothing changes then.
    pub fn handle_refused(&mut self, merchant_total: Amount) -> Result<(), Error> {
        let params = self.params("refused")?;
        if merchant_total > self.state.signed {
            return Err(Error::UnexpectedMessage("merchant claims a total never signed"));
        }
        if merchant_total < self.state.acked {
            return Err(Error::UnexpectedMessage("merchant holds less than it acknowledged"));
        }
        if merchant_total == self.state.signed {
            return self.handle_ack(merchant_total);
        }
        let signature = if merchant_total == Amount::ZERO {
            Vec::new()
        } else {
            sign_payment(params, merchant_total, &self.key)?
        };
        self.state.signed = merchant_total;
        self.state.signature = signature;
        self.handle_ack(merchant_total)?;
        self.outbox.persist(self.state.clone());
        Ok(())
    }

    /// Stores the state as it is now (the acknowledged total, which acknowledgements alone do
    /// not write: a driver calls this when it is done with a run of payments).
    pub fn checkpoint(&mut self) {
        if self.state.params.is_some() {
            self.outbox.persist(self.state.clone());
        }
    }

    /// Asks the merchant to settle now: sends [`Close`] signed with the channel key.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless open.
    pub fn close(&mut self) -> Result<(), Error> {
        if self.state.phase != Phase::Open {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "close" });
        }
        let id = self.params("close")?.id();
        let digest = SecpMessage::from_digest(close_digest(id));
        let s = sig::secp().sign_ecdsa(&digest, &self.key.secret_key());
        self.outbox.after_persist(Effect::Send(Message::Close(Close {
            channel: Some(id.into()),
            signature: s.serialize_der().to_vec(),
        })));
        Ok(())
    }

    /// The merchant reports its settlement txid.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] when the channel is over.
    pub fn handle_closed(&mut self, settlement: Txid) -> Result<(), Error> {
        if self.state.phase.is_final() || self.state.params.is_none() {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "closed" });
        }
        self.state.phase = Phase::Settling;
        self.state.closing_txid = Some(settlement);
        self.outbox.persist(self.state.clone());
        Ok(())
    }

    /// Periodic check: once the refund is final at `now` (median-time-past, or the tip height,
    /// past the expiry) and the funding is, as far as this channel knows, unspent, the channel
    /// is [`Phase::Expired`] and [`Event::RefundDue`] is reported (on every tick until the
    /// funding is spent).
    pub fn handle_tick(&mut self, now: &Now) {
        let Some(params) = &self.state.params else { return };
        let live = matches!(
            self.state.phase,
            Phase::AwaitingFunding | Phase::Open | Phase::Settling | Phase::Expired
        );
        if live && params.script().expiry().is_some_and(|e| now.lock_is_final(e)) {
            let channel = params.id();
            if self.state.phase != Phase::Expired && self.state.closing_txid.is_none() {
                self.state.phase = Phase::Expired;
                self.outbox.persist(self.state.clone());
            }
            self.outbox.now(Effect::Event(Event::RefundDue { channel }));
        }
    }

    /// Builds and signs the refund at `fee_rate` to `destination`. Queues: persist, then
    /// broadcast. May be called again at a higher fee rate.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] when the channel is over or never funded; the errors of
    /// [`build_refund`].
    pub fn refund(
        &mut self,
        destination: ScriptBuf,
        fee_rate: FeeRate,
    ) -> Result<Transaction, Error> {
        let params = self.params("refund")?;
        // A dispute channel refunds from the trigger's output: only once the trigger is out.
        let dispute_unready =
            params.script().dispute_blocks().is_some() && self.state.phase != Phase::Disputed;
        if self.state.phase.is_final() || dispute_unready {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "refund" });
        }
        let tx =
            build_refund(self.params("refund")?, &self.key.secret_key(), destination, fee_rate)?;
        self.state.closing_txid = Some(tx.compute_txid());
        if self.state.phase != Phase::Disputed {
            self.state.phase = Phase::Settling;
        }
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::Broadcast(tx.clone()));
        Ok(tx)
    }

    /// A dispute channel's force close: the customer leaves alone. `exit_child` spends the
    /// trigger's anchor and pays for both (built with [`dispute::exit_child`] from
    /// [`CustomerChannel::trigger`], its wallet inputs signed). Queues: persist (disputed: no
    /// payment is ever signed again), then the trigger and the child as one package, and a
    /// watch on the trigger's output. The refund is due once the trigger has the dispute
    /// period's confirmations ([`CustomerChannel::handle_trigger_confirmations`]).
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] for a CLTV channel or a channel over or not yet open;
    /// [`Error::UnexpectedMessage`] when `exit_child` does not spend the trigger's anchor.
    pub fn force_close(&mut self, exit_child: Transaction) -> Result<(), Error> {
        let phase = self.state.phase;
        let (Some(trigger), Some(params)) = (&self.state.trigger, &self.state.params) else {
            return Err(Error::InvalidTransition { phase, event: "force close" });
        };
        if !matches!(phase, Phase::Open | Phase::Settling | Phase::Disputed) {
            return Err(Error::InvalidTransition { phase, event: "force close" });
        }
        let anchor = params.anchor().map(|(a, _)| a);
        if !exit_child.input.iter().any(|i| Some(i.previous_output) == anchor) {
            return Err(Error::UnexpectedMessage("the exit child does not spend the anchor"));
        }
        let (trigger, watch) = (trigger.clone(), params.channel_input());
        self.state.phase = Phase::Disputed;
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::BroadcastPackage { parent: trigger, child: exit_child });
        self.outbox.now(Effect::Watch(watch));
        Ok(())
    }

    /// The trigger has `confirmations` confirmations: once they reach the dispute period and
    /// the trigger's output is, as far as this channel knows, unspent, [`Event::RefundDue`].
    pub fn handle_trigger_confirmations(&mut self, confirmations: u32) {
        let Some(params) = &self.state.params else { return };
        let Some(blocks) = params.script().dispute_blocks() else { return };
        if self.state.phase == Phase::Disputed && confirmations >= u32::from(blocks) {
            self.outbox.now(Effect::Event(Event::RefundDue { channel: params.id() }));
        }
    }

    /// A dispute channel's cooperative close from the merchant ([`Closed`](crate::msg::Closed)
    /// with a transaction): checks that it spends the funding alone and pays this channel's
    /// change for the highest signed total (nothing less; omitted only below its dust
    /// threshold), checks the merchant's signature, signs, and queues persist (settling, with
    /// the close's txid) then the broadcast. Returns the complete close.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] unless a dispute channel open or settling;
    /// [`Error::Malformed`] for undecodable bytes; [`Error::UnexpectedMessage`] for a close
    /// that does not pay the change; the signature errors of [`dispute::verify`].
    pub fn handle_cooperative_close(
        &mut self,
        close_tx: &[u8],
        merchant_sig: &[u8],
    ) -> Result<Transaction, Error> {
        let phase = self.state.phase;
        let params = self.params("cooperative close")?;
        if self.state.trigger.is_none() || !matches!(phase, Phase::Open | Phase::Settling) {
            return Err(Error::InvalidTransition { phase, event: "cooperative close" });
        }
        let tx: Transaction = bitcoin::consensus::deserialize(close_tx)
            .map_err(|e| Error::malformed("close transaction", e))?;
        let change = params.change_for(self.state.signed)?;
        let pays_change = tx
            .output
            .iter()
            .any(|o| o.script_pubkey.as_script() == params.change_script() && o.value >= change);
        if change >= params.change_dust() && !pays_change {
            return Err(Error::UnexpectedMessage("the close does not pay the customer's change"));
        }
        let own = dispute::sign(params, &tx, &self.key.secret_key())?;
        let tx = dispute::complete(params, tx, merchant_sig, &own)?;
        self.state.phase = Phase::Settling;
        self.state.closing_txid = Some(tx.compute_txid());
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::Broadcast(tx.clone()));
        Ok(tx)
    }

    /// The funding output was spent by `tx` (confirmed).
    ///
    /// # Errors
    /// [`Error::UnexpectedMessage`] when `tx` does not spend this channel.
    pub fn handle_funding_spent(&mut self, tx: &Transaction) -> Result<(), Error> {
        let params = self.params("spent")?;
        let (id, input) = (params.id(), params.channel_input());
        if !params.spends_channel(tx) {
            return Err(Error::UnexpectedMessage("transaction does not spend the channel"));
        }
        let txid = tx.compute_txid();
        let is_trigger = self.state.trigger.as_ref().is_some_and(|t| t.compute_txid() == txid);
        if is_trigger {
            // The dispute period runs (the merchant's, or this customer's own force close):
            // no payment is signed any more; the trigger's output is watched.
            if !matches!(self.state.phase, Phase::Disputed) && !self.state.phase.is_final() {
                self.state.phase = Phase::Disputed;
                self.outbox.persist(self.state.clone());
                self.outbox.now(Effect::Watch(input));
                self.outbox.now(Effect::Event(Event::Disputed { channel: id, trigger: txid }));
            }
            return Ok(());
        }
        self.state.closing_txid = Some(txid);
        let event = match find_channel_spend(tx).map(|s| s.role) {
            Some(Role::Refund) => {
                self.state.phase = Phase::Refunded;
                Event::Refunded { channel: id, txid, unsettled: Amount::ZERO }
            }
            _ => {
                self.state.phase = Phase::Settled;
                Event::Settled { channel: id, txid }
            }
        };
        self.outbox.persist(self.state.clone());
        self.outbox.now(Effect::Event(event));
        Ok(())
    }
}
