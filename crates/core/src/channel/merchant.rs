//! The merchant's side of a channel.
//!
//! ```text
//!  open() ─► AwaitingFunding ──confirmed──► Open ──settle()──► Settling ──spent──► Settled
//!                 ▲                │  ▲                                  └─────► Refunded
//!                 └────reorged─────┘  └ handle_payment / handle_two1_payment
//! ```
//!
//! A dispute channel (DESIGN §3a) opens with [`MerchantChannel::open_dispute`] (the trigger
//! signed by both before the funding exists), has no expiry, and leaves `Open` by a
//! cooperative close ([`MerchantChannel::cooperative_close`] → `Settling` → `Settled`) or by
//! its trigger (`Disputed`: [`Event::SettleDue`] at once; the settlement goes out with the
//! trigger as a package → `Settled`, or the customer's refund after the period → `Refunded`).
//!
//! `handle_payment` validates (DESIGN §2 rules 1–3), updates the state, queues a
//! [`Effect::Persist`] and holds the [`PaymentAck`] until the driver calls
//! [`MerchantChannel::persisted`] (rule 4). A rejected payment returns the error and changes
//! nothing, not even the outbox: the driver sends the [`ErrorMsg`](crate::msg::ErrorMsg).

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::{ecdsa, Message as SecpMessage, PublicKey, SecretKey};
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};

mod accounting;

use accounting::Redemptions;
pub use accounting::{Redeemed, REDEEM_WINDOW, TOKEN_WINDOW};

use super::{Effect, Event, Outbox, Phase, SettleReason};
use crate::msg::{close_digest, ChannelRef, Closed, Message, Opened, PaymentAck};
use crate::policy::{Policy, MAX_DISPUTE_BLOCKS};
use crate::script::ChannelScript;
use crate::time::Now;
use crate::tx::recognise::{find_channel_spend, Role};
use crate::tx::settlement::{build_settlement_with_parent, Settlement, WalletInput};
use crate::tx::two1::{complete_payment, Two1Payment};
use crate::tx::{dispute, ChannelParams, FundingOutput};
use crate::validate::{validate_payment, validate_two1_payment, ChannelView};
use crate::{sig, Error};

/// Reads a customer's [`Open`](crate::msg::Open): decodes the funding transaction, rebuilds the
/// channel script from the keys and expiry, and finds the funding output. `merchant_pubkey` is
/// the key the merchant handed out in its [`Welcome`](crate::msg::Welcome) for this channel.
///
/// Returns the parameters and the funding transaction (which the merchant may broadcast).
///
/// # Errors
/// [`Error::Malformed`] for undecodable fields; [`Error::NotOurKey`] for a merchant key that is
/// not the one handed out;
/// the errors of [`ChannelScript::new`], [`FundingOutput::find`] and [`ChannelParams::new`].
pub fn params_from_open(
    open: &crate::msg::Open,
    merchant_pubkey: &PublicKey,
    policy: &Policy,
) -> Result<(ChannelParams, Transaction), Error> {
    let funding_tx: Transaction = bitcoin::consensus::deserialize(&open.funding_tx)
        .map_err(|e| Error::malformed("funding transaction", e))?;
    let merchant = PublicKey::from_slice(&open.merchant_pubkey)
        .map_err(|e| Error::malformed("merchant key", e))?;
    if merchant != *merchant_pubkey {
        return Err(Error::NotOurKey);
    }
    let customer = PublicKey::from_slice(&open.customer_pubkey)
        .map_err(|e| Error::malformed("customer key", e))?;
    let script = if open.dispute_blocks > 0 {
        let blocks = u16::try_from(open.dispute_blocks).map_err(|_| Error::InvalidExpiry {
            expiry: open.dispute_blocks,
            reason: "a dispute period above 65,535 blocks",
        })?;
        ChannelScript::dispute(merchant, customer, blocks)?
    } else {
        ChannelScript::new(merchant, customer, LockTime::from_consensus(open.expiry))?
    };
    let funding = FundingOutput::find(&funding_tx, &script)?;
    let change = ScriptBuf::from_bytes(open.change_script.clone());
    let params = ChannelParams::new(script, funding, change, policy.dust_relay_fee)?;
    Ok((params, funding_tx))
}

/// Everything the merchant stores about a channel. Encoded with [`MerchantState::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantState {
    /// The channel's parameters.
    pub params: ChannelParams,
    /// The phase.
    pub phase: Phase,
    /// The highest valid total (`signed_max` of DESIGN §2).
    pub accepted: Amount,
    /// The customer's signature of `accepted` (empty before the first payment). For a 21
    /// payment, its signature inside `two1_tx`.
    pub signature: Vec<u8>,
    /// The latest payment when it came as a whole 21 transaction.
    pub two1_tx: Option<Transaction>,
    /// Sum of the prices of requests served against this channel.
    pub charged: Amount,
    /// The settlement broadcast, if any.
    pub settlement_txid: Option<Txid>,
    /// Which of the merchant's derived keys is this channel's.
    pub key_index: u32,
    /// Whether the token of the latest 21 payment (`two1_tx`) has paid for a request.
    pub two1_token_redeemed: bool,
    /// A dispute channel's trigger, signed by both (stored before `Opened` is sent).
    pub trigger: Option<Transaction>,
    /// Whether the trigger was seen confirmed (its spend of the funding came from a block):
    /// the settlement then goes out alone, without the anchor.
    pub trigger_confirmed: bool,
}

impl MerchantState {
    /// The state of a channel just opened.
    pub fn new(params: ChannelParams) -> Self {
        MerchantState {
            key_index: 0,
            params,
            phase: Phase::AwaitingFunding,
            accepted: Amount::ZERO,
            signature: Vec::new(),
            two1_tx: None,
            charged: Amount::ZERO,
            settlement_txid: None,
            two1_token_redeemed: false,
            trigger: None,
            trigger_confirmed: false,
        }
    }
}

/// The merchant's state machine for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct MerchantChannel {
    state: MerchantState,
    policy: Policy,
    outbox: Outbox<MerchantState>,
    /// Totals used for paid requests (in memory: after a restart every total up to the stored
    /// one counts as used, so none is ever redeemable twice).
    redemptions: Redemptions,
    /// 21 tokens PUT, oldest first, with whether each was redeemed.
    tokens: std::collections::VecDeque<(Txid, bool)>,
}

impl MerchantChannel {
    /// Accepts a new channel after the driver checked the funding transaction pays `params`'
    /// script with the merchant's key. Checks the deposit and expiry against `policy`.
    ///
    /// Queues: persist, watch the funding outpoint, then (after the persist) [`Opened`].
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for an invalid policy; [`Error::FundingTooSmall`] /
    /// [`Error::AmountOutOfRange`] for a deposit outside the policy; [`Error::InvalidExpiry`]
    /// for an expiry too near or too far.
    pub fn open(
        params: ChannelParams,
        policy: Policy,
        now: &Now,
        key_index: u32,
    ) -> Result<Self, Error> {
        Self::open_with(params, policy, now, key_index, None)
    }

    /// Accepts a new dispute channel (DESIGN §3a): checks the dispute period against
    /// `policy`, the customer's signature of the trigger, and signs the trigger with
    /// `merchant_key`. The whole trigger is stored, then [`Opened`] carries the merchant's
    /// signature: only then may the customer sign and broadcast the funding.
    ///
    /// # Errors
    /// As [`MerchantChannel::open`]; [`Error::InvalidExpiry`] for a dispute period outside
    /// the policy; the signature errors of [`dispute::verify`] for the customer's trigger
    /// signature; [`Error::Signing`] when `merchant_key` is not the channel's.
    pub fn open_dispute(
        params: ChannelParams,
        policy: Policy,
        now: &Now,
        key_index: u32,
        customer_trigger_sig: &[u8],
        merchant_key: &SecretKey,
    ) -> Result<Self, Error> {
        let Some(blocks) = params.script().dispute_blocks() else {
            return Err(Error::InvalidExpiry { expiry: 0, reason: "not a dispute channel script" });
        };
        if blocks < policy.min_dispute_blocks || blocks > MAX_DISPUTE_BLOCKS {
            return Err(Error::InvalidExpiry {
                expiry: u32::from(blocks),
                reason: "dispute period outside the merchant's policy",
            });
        }
        if !params.is_merchant(merchant_key) {
            return Err(Error::Signing("the key is not the channel's merchant key"));
        }
        let unsigned = dispute::trigger(&params)?;
        dispute::verify(&params, &unsigned, params.script().customer(), customer_trigger_sig)?;
        let merchant_sig = dispute::sign(&params, &unsigned, merchant_key)?;
        let trigger = dispute::complete(&params, unsigned, &merchant_sig, customer_trigger_sig)?;
        Self::open_with(params, policy, now, key_index, Some((trigger, merchant_sig)))
    }

    fn open_with(
        params: ChannelParams,
        policy: Policy,
        now: &Now,
        key_index: u32,
        trigger: Option<(Transaction, Vec<u8>)>,
    ) -> Result<Self, Error> {
        policy.validate()?;
        if params.capacity() < policy.min_deposit {
            return Err(Error::FundingTooSmall {
                got: params.capacity(),
                required: policy.min_deposit,
            });
        }
        if params.capacity() > policy.max_deposit {
            return Err(Error::AmountOutOfRange("deposit above the merchant's maximum"));
        }
        match (params.script().expiry(), &trigger) {
            (Some(expiry), None) => check_expiry(expiry, &policy, now)?,
            (None, Some(_)) => {}
            _ => {
                return Err(Error::InvalidExpiry {
                    expiry: 0,
                    reason: "channel kind and terms disagree",
                })
            }
        }
        let (trigger, trigger_signature) = match trigger {
            Some((t, s)) => (Some(t), s),
            None => (None, Vec::new()),
        };
        let mut state = MerchantState::new(params);
        state.key_index = key_index;
        state.trigger = trigger;
        // Zero-conf is for a funding the merchant broadcast itself (the node's acceptance
        // proved it); a dispute channel's funding comes without witnesses and is the
        // customer's to broadcast, so it is taken only confirmed.
        if policy.zero_conf && state.trigger.is_none() {
            state.phase = Phase::Open;
        }
        let mut ch = MerchantChannel {
            state,
            policy,
            outbox: Outbox::default(),
            redemptions: Redemptions::default(),
            tokens: Default::default(),
        };
        let id = ch.id();
        ch.outbox.persist(ch.state.clone());
        ch.outbox.now(Effect::Watch(id));
        ch.outbox.after_persist(Effect::Send(Message::Opened(Opened {
            channel: Some(id.into()),
            confirmations_required: ch.confirmations_required(),
            trigger_signature,
        })));
        Ok(ch)
    }
}

/// A CLTV channel's expiry against the merchant's policy: far enough for the minimum life,
/// not beyond the maximum.
fn check_expiry(expiry: LockTime, policy: &Policy, now: &Now) -> Result<(), Error> {
    {
        let raw = expiry.to_consensus_u32();
        let is_height = expiry.is_block_height();
        // Seconds in the expiry's unit: blocks for a height expiry.
        let in_expiry_units = |secs: u32| {
            if is_height {
                secs.div_ceil(crate::policy::SECONDS_PER_BLOCK)
            } else {
                secs
            }
        };
        if !now.is_before(expiry, in_expiry_units(policy.min_channel_life_secs)) {
            return Err(Error::InvalidExpiry {
                expiry: raw,
                reason: "too soon: less than the merchant's minimum channel life remains",
            });
        }
        let max_life = in_expiry_units(policy.max_channel_life_secs);
        let too_far = if is_height {
            u64::from(raw) > u64::from(now.height) + u64::from(max_life)
        } else {
            u64::from(raw) > now.time + u64::from(max_life)
        };
        if too_far {
            return Err(Error::InvalidExpiry {
                expiry: raw,
                reason: "too far: beyond the merchant's maximum channel life",
            });
        }
        Ok(())
    }
}

impl MerchantChannel {
    /// Rebuilds a channel from its stored state.
    ///
    /// Every total up to the stored one counts as redeemed (the in-memory replay window is not
    /// stored); the latest 21 token stays redeemable unless it was redeemed.
    pub fn restore(state: MerchantState, policy: Policy) -> Self {
        let redemptions = Redemptions { floor: state.accepted.to_sat(), ..Default::default() };
        let tokens = match &state.two1_tx {
            Some(tx) => [(tx.compute_txid(), state.two1_token_redeemed)].into_iter().collect(),
            None => Default::default(),
        };
        MerchantChannel { state, policy, outbox: Outbox::default(), redemptions, tokens }
    }

    /// The channel's id (funding outpoint).
    pub fn id(&self) -> OutPoint {
        self.state.params.id()
    }

    /// The stored state.
    pub fn state(&self) -> &MerchantState {
        &self.state
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// The highest accepted total (in memory; durable once its persist completes).
    pub fn accepted(&self) -> Amount {
        self.state.accepted
    }

    /// The next effect to execute.
    pub fn poll_effect(&mut self) -> Option<Effect<MerchantState>> {
        self.outbox.poll()
    }

    /// Reports persist `id` durable; releases the acknowledgements that waited for it.
    ///
    /// # Errors
    /// [`Error::UnknownPersist`] for an id never issued.
    pub fn persisted(&mut self, id: u64) -> Result<(), Error> {
        self.outbox.persisted(id)
    }

    /// Whether a persist is still outstanding.
    pub fn persist_pending(&self) -> bool {
        self.outbox.persist_pending()
    }

    fn view(&self) -> ChannelView<'_> {
        ChannelView {
            params: &self.state.params,
            phase: self.state.phase,
            accepted: self.state.accepted,
        }
    }

    /// The funding's confirmations before payments are accepted: the policy's (0 with
    /// zero-conf), and at least 1 for a dispute channel (its funding is not the merchant's to
    /// broadcast: under zero-conf it is taken once seen in the mempool,
    /// [`MerchantChannel::handle_funding_in_mempool`]).
    fn confirmations_required(&self) -> u32 {
        match (&self.state.trigger, self.policy.zero_conf) {
            (Some(_), _) => self.policy.min_confirmations.max(1),
            (None, true) => 0,
            (None, false) => self.policy.min_confirmations,
        }
    }

    /// A dispute channel's funding is in the node's mempool (the customer broadcast it): under
    /// zero-conf, payments are accepted from now on, as a CLTV channel's are once the merchant
    /// broadcast its funding. Nothing otherwise.
    pub fn handle_funding_in_mempool(&mut self) {
        if self.state.phase == Phase::AwaitingFunding
            && self.state.trigger.is_some()
            && self.policy.zero_conf
        {
            self.state.phase = Phase::Open;
            self.outbox.persist(self.state.clone());
            self.outbox.now(Effect::Event(Event::FundingConfirmed { channel: self.id() }));
        }
    }

    /// The funding transaction has `confirmations` confirmations.
    pub fn handle_funding_confirmations(&mut self, confirmations: u32) {
        let id = self.id();
        match self.state.phase {
            Phase::AwaitingFunding if confirmations >= self.confirmations_required() => {
                self.state.phase = Phase::Open;
                self.outbox.persist(self.state.clone());
                self.outbox.now(Effect::Event(Event::FundingConfirmed { channel: id }));
            }
            Phase::Open if confirmations == 0 && !self.policy.zero_conf => {
                self.state.phase = Phase::AwaitingFunding;
                self.outbox.persist(self.state.clone());
                self.outbox.now(Effect::Event(Event::FundingReorged { channel: id }));
            }
            _ => {}
        }
    }

    /// A compact payment arrived (DESIGN §2). On success the new total is accepted in memory,
    /// a persist is queued, and the acknowledgement waits for it.
    ///
    /// # Errors
    /// The first payment rule broken; the channel is then unchanged.
    pub fn handle_payment(
        &mut self,
        now: &Now,
        channel: OutPoint,
        total: Amount,
        signature: &[u8],
    ) -> Result<(), Error> {
        validate_payment(&self.view(), &self.policy, now, channel, total, signature)?;
        let increment = total - self.state.accepted;
        self.state.accepted = total;
        self.state.signature = signature.to_vec();
        self.state.two1_tx = None;
        // A plain payment buys credit, not a request: its total can never also be a request's.
        self.redemptions.mark(total);
        self.accepted_effects(increment);
        Ok(())
    }

    /// A whole 21 payment transaction arrived. Returns the validated payment, whose `amount`
    /// minus the previous total is the increment (two1's redeem value).
    ///
    /// # Errors
    /// As [`MerchantChannel::handle_payment`], plus malformed-21 errors.
    pub fn handle_two1_payment(&mut self, now: &Now, tx: &Transaction) -> Result<Amount, Error> {
        let payment = validate_two1_payment(&self.view(), &self.policy, now, tx)?;
        let increment = payment.amount - self.state.accepted;
        self.redemptions.mark(payment.amount);
        self.tokens.push_back((payment.tx.compute_txid(), false));
        if self.tokens.len() > TOKEN_WINDOW {
            self.tokens.pop_front();
        }
        self.state.accepted = payment.amount;
        self.state.signature = payment.customer_sig;
        self.state.two1_tx = Some(payment.tx);
        self.state.two1_token_redeemed = false;
        self.accepted_effects(increment);
        Ok(increment)
    }

    fn accepted_effects(&mut self, increment: Amount) {
        let id = self.id();
        let total = self.state.accepted;
        self.outbox.persist(self.state.clone());
        self.outbox.now(Effect::Event(Event::PaymentAccepted { channel: id, total, increment }));
        self.outbox.after_persist(Effect::Send(Message::PaymentAck(PaymentAck {
            channel: Some(id.into()),
            total_sat: total.to_sat(),
        })));
        let remaining = self.state.params.capacity() - total;
        if remaining < self.policy.close_out {
            self.outbox.now(Effect::Event(Event::SettleDue {
                channel: id,
                reason: SettleReason::Exhausted,
            }));
        }
    }

    /// `charged + price`, when `accepted` covers it (DESIGN §2 accounting).
    fn charged_with(&self, price: Amount, accepted: Amount) -> Result<Amount, Error> {
        let charged = self
            .state
            .charged
            .checked_add(price)
            .ok_or(Error::AmountOutOfRange("charged overflows"))?;
        if charged > accepted {
            return Err(Error::CreditTooLow {
                price,
                credit: accepted.checked_sub(self.state.charged).unwrap_or(Amount::ZERO),
            });
        }
        Ok(charged)
    }

    /// Periodic check: reports [`Event::SettleDue`] once the expiry is within the settle
    /// margin (when anything was paid) or while an exhausted channel is still open, and moves to [`Phase::Expired`] once the expiry itself
    /// has passed unsettled.
    pub fn handle_tick(&mut self, now: &Now) {
        if self.state.phase == Phase::Disputed {
            // The trigger is out: due at every tick until a settlement is out (then it is
            // followed like any other, by its spend of the trigger's output).
            if self.state.accepted == Amount::ZERO || self.state.settlement_txid.is_some() {
                return;
            }
            self.outbox.now(Effect::Event(Event::SettleDue {
                channel: self.id(),
                reason: SettleReason::Disputed,
            }));
            return;
        }
        if !matches!(self.state.phase, Phase::Open | Phase::AwaitingFunding | Phase::Expired) {
            return;
        }
        // A dispute channel has no expiry: only exhaustion makes it due.
        let expiry = self.state.params.script().expiry();
        if let Some(expiry) = expiry {
            if self.state.phase != Phase::Expired && !now.is_before(expiry, 0) {
                self.state.phase = Phase::Expired;
                self.outbox.persist(self.state.clone());
            }
        }
        let due = |e: LockTime| !now.is_before(e, self.policy.settle_distance(e.is_block_height()));
        if self.state.accepted > Amount::ZERO && expiry.is_some_and(due) {
            self.outbox.now(Effect::Event(Event::SettleDue {
                channel: self.id(),
                reason: SettleReason::Expiry,
            }));
        } else if self.state.phase == Phase::Open
            && self.state.accepted > Amount::ZERO
            && self.state.params.capacity() - self.state.accepted < self.policy.close_out
        {
            // Exhausted and still open (its settlement failed, or the merchant restarted):
            // due again at every tick until it goes out.
            self.outbox.now(Effect::Event(Event::SettleDue {
                channel: self.id(),
                reason: SettleReason::Exhausted,
            }));
        }
    }

    /// The customer asks to close: checks its signature of [`close_digest`], then reports
    /// [`Event::SettleDue`].
    ///
    /// # Errors
    /// [`Error::SignatureNotDer`] or [`Error::BadSignature`]; [`Error::InvalidTransition`] when
    /// nothing was paid or the channel is not open.
    pub fn handle_close(&mut self, signature: &[u8]) -> Result<(), Error> {
        let digest = SecpMessage::from_digest(close_digest(self.id()));
        let s = ecdsa::Signature::from_der(signature).map_err(|_| Error::SignatureNotDer)?;
        sig::secp()
            .verify_ecdsa(&digest, &s, &self.state.params.script().customer())
            .map_err(|_| Error::BadSignature)?;
        if self.state.phase != Phase::Open || self.state.accepted == Amount::ZERO {
            return Err(Error::InvalidTransition { phase: self.state.phase, event: "close" });
        }
        self.outbox.now(Effect::Event(Event::SettleDue {
            channel: self.id(),
            reason: SettleReason::CustomerClose,
        }));
        Ok(())
    }

    /// Builds and signs the settlement of the accepted total at `fee_rate`, paying the
    /// merchant's share to `destination`. Queues: persist (phase settling, with the txid), then
    /// broadcast and [`Closed`]. Calling it again while settling re-signs at the new fee rate (a
    /// BIP 125 replacement).
    ///
    /// Returns the settlement; when `wallet_inputs` are given, the driver's wallet must sign
    /// them before the broadcast effect is executed.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] when nothing was paid or the channel is over; the errors of
    /// [`build_settlement`].
    pub fn settle(
        &mut self,
        merchant_key: &SecretKey,
        destination: ScriptBuf,
        fee_rate: FeeRate,
        wallet_inputs: &[WalletInput],
    ) -> Result<Settlement, Error> {
        let phase = self.state.phase;
        if !matches!(
            phase,
            Phase::Open
                | Phase::Settling
                | Phase::AwaitingFunding
                | Phase::Expired
                | Phase::Disputed
        ) || self.state.accepted == Amount::ZERO
        {
            return Err(Error::InvalidTransition { phase, event: "settle" });
        }
        let settlement = match &self.state.two1_tx {
            Some(tx) => {
                let p = Two1Payment {
                    tx: tx.clone(),
                    amount: self.state.accepted,
                    change: Amount::ZERO,
                    fee: Amount::ZERO,
                    customer_sig: self.state.signature.clone(),
                };
                let tx = complete_payment(&self.state.params, &p, merchant_key)?;
                let paid_out: Amount = tx.output.iter().map(|o| o.value).sum();
                let fee =
                    self.state.params.capacity().checked_sub(paid_out).unwrap_or(Amount::ZERO);
                Settlement { tx, fee, merchant_amount: self.state.accepted }
            }
            // A dispute channel settles as the trigger's child; its fee pays for both (the
            // trigger may be confirmed already: then it overpays by the trigger's size).
            None => build_settlement_with_parent(
                &self.state.params,
                self.state.accepted,
                &self.state.signature,
                merchant_key,
                destination,
                fee_rate,
                wallet_inputs,
                self.unconfirmed_trigger(),
            )?,
        };
        let txid = settlement.tx.compute_txid();
        // A dispute channel settles by its trigger: whoever broadcast it, the dispute is on.
        self.state.phase =
            if self.state.trigger.is_some() { Phase::Disputed } else { Phase::Settling };
        self.state.settlement_txid = Some(txid);
        self.outbox.persist(self.state.clone());
        if self.state.trigger.is_some() {
            // What ends the channel now is the spend of the trigger's output.
            self.outbox.now(Effect::Watch(self.state.params.channel_input()));
        }
        match self.unconfirmed_trigger().cloned() {
            Some(trigger) => self.outbox.after_persist(Effect::BroadcastPackage {
                parent: trigger,
                child: settlement.tx.clone(),
            }),
            None => self.outbox.after_persist(Effect::Broadcast(settlement.tx.clone())),
        }
        self.outbox.after_persist(Effect::Send(Message::Closed(Closed {
            channel: Some(ChannelRef::from(self.id())),
            settlement_txid: bitcoin::hashes::Hash::to_byte_array(txid).to_vec(),
            close_tx: Vec::new(),
            merchant_signature: Vec::new(),
        })));
        Ok(settlement)
    }

    /// A dispute channel's trigger while it is not known confirmed: the settlement's parent.
    fn unconfirmed_trigger(&self) -> Option<&Transaction> {
        self.state.trigger.as_ref().filter(|_| !self.state.trigger_confirmed)
    }

    /// A dispute channel's cooperative close (after the customer's [`Close`](crate::msg::Close)
    /// request): builds the close at the accepted total, the merchant's share less the fee at
    /// `fee_rate` to `destination`, signs it, and queues persist (settling, with its txid)
    /// then [`Closed`] carrying the transaction and the signature. The customer signs and
    /// broadcasts it. Calling it again re-signs at a new fee rate.
    ///
    /// # Errors
    /// [`Error::InvalidTransition`] for a CLTV channel, when nothing was paid, or unless open
    /// (or settling); the errors of [`dispute::close`].
    pub fn cooperative_close(
        &mut self,
        merchant_key: &SecretKey,
        destination: ScriptBuf,
        fee_rate: FeeRate,
    ) -> Result<Transaction, Error> {
        let phase = self.state.phase;
        if self.state.trigger.is_none()
            || !matches!(phase, Phase::Open | Phase::Settling)
            || self.state.accepted == Amount::ZERO
        {
            return Err(Error::InvalidTransition { phase, event: "cooperative close" });
        }
        let params = &self.state.params;
        let tx = dispute::close(params, self.state.accepted, destination, fee_rate)?;
        let signature = dispute::sign(params, &tx, merchant_key)?;
        let txid = tx.compute_txid();
        self.state.phase = Phase::Settling;
        self.state.settlement_txid = Some(txid);
        self.outbox.persist(self.state.clone());
        self.outbox.after_persist(Effect::Send(Message::Closed(Closed {
            channel: Some(ChannelRef::from(self.id())),
            settlement_txid: bitcoin::hashes::Hash::to_byte_array(txid).to_vec(),
            close_tx: bitcoin::consensus::serialize(&tx),
            merchant_signature: signature,
        })));
        Ok(tx)
    }

    /// The funding output was spent by `tx` (confirmed). Moves to settled or refunded.
    ///
    /// # Errors
    /// [`Error::UnexpectedMessage`] when `tx` does not spend this channel's funding output.
    pub fn handle_funding_spent(&mut self, tx: &Transaction) -> Result<(), Error> {
        let id = self.id();
        if !self.state.params.spends_channel(tx) {
            return Err(Error::UnexpectedMessage("transaction does not spend the channel"));
        }
        let txid = tx.compute_txid();
        if self.state.params.spends_funding(tx) && self.state.trigger.is_some() {
            return self.handle_dispute_funding_spent(txid);
        }
        let event = match find_channel_spend(tx).map(|s| s.role) {
            Some(Role::Refund) => {
                self.state.phase = Phase::Refunded;
                Event::Refunded { channel: id, txid, unsettled: self.state.accepted }
            }
            _ => {
                self.state.phase = Phase::Settled;
                self.state.settlement_txid = Some(txid);
                Event::Settled { channel: id, txid }
            }
        };
        self.outbox.persist(self.state.clone());
        self.outbox.now(Effect::Event(event));
        Ok(())
    }

    /// A dispute channel's funding was spent: by the trigger (the dispute period starts: watch
    /// its output and settle at once) or by the cooperative close.
    fn handle_dispute_funding_spent(&mut self, txid: Txid) -> Result<(), Error> {
        let id = self.id();
        let is_trigger = self.state.trigger.as_ref().is_some_and(|t| t.compute_txid() == txid);
        if is_trigger {
            // Spends reach the machine from blocks: the trigger is confirmed.
            if self.state.trigger_confirmed || self.state.phase.is_final() {
                return Ok(());
            }
            self.state.trigger_confirmed = true;
            let newly = self.state.phase != Phase::Disputed;
            self.state.phase = Phase::Disputed;
            self.outbox.persist(self.state.clone());
            self.outbox.now(Effect::Watch(self.state.params.channel_input()));
            if newly {
                self.outbox.now(Effect::Event(Event::Disputed { channel: id, trigger: txid }));
            }
            if self.state.accepted > Amount::ZERO && self.state.settlement_txid.is_none() {
                self.outbox.now(Effect::Event(Event::SettleDue {
                    channel: id,
                    reason: SettleReason::Disputed,
                }));
            }
            return Ok(());
        }
        // Not the trigger: the cooperative close (the only other spend both keys sign).
        self.state.phase = Phase::Settled;
        self.state.settlement_txid = Some(txid);
        self.outbox.persist(self.state.clone());
        self.outbox.now(Effect::Event(Event::Settled { channel: id, txid }));
        Ok(())
    }
}
