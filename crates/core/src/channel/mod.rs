//! Channel state machines: [`customer::CustomerChannel`] and [`merchant::MerchantChannel`].
//!
//! Both are sans-I/O, in the style of LDK and quinn: inputs are `handle_*` methods that take
//! `now`; outputs are [`Effect`]s the driver drains with `poll_effect` and executes.
//!
//! **Persist before send is enforced here, not left to the driver.** A state change yields an
//! [`Effect::Persist`] carrying the whole new state; every message and broadcast that depends on
//! it is held until the driver reports the write complete with `persisted(id)`. A merchant's
//! [`PaymentAck`](crate::msg::PaymentAck) therefore cannot leave before its payment is durable,
//! and a customer's payment cannot leave before it is recorded as spent. Because each persist
//! carries the whole state, completing persist `n` makes every earlier one moot: the driver may
//! coalesce them (group commit), as long as it never lets an older state overwrite a newer one.

pub mod customer;
pub mod merchant;
mod record;
pub mod settlement;

use std::collections::VecDeque;

use bitcoin::{Amount, OutPoint, Transaction, Txid};

use crate::msg::Message;
use crate::Error;

/// The phase of a channel, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Customer only: the script is fixed, the funding transaction not yet built or accepted.
    Opening,
    /// The funding transaction is known and waits for its confirmations.
    AwaitingFunding,
    /// Payments flow.
    Open,
    /// A settlement (or a close request) is out; waiting for it to confirm.
    Settling,
    /// The expiry passed with the funding output unspent: the customer's refund is (or is about
    /// to be) valid. The merchant may still race its settlement; the customer refunds.
    Expired,
    /// The funding output was spent by a settlement.
    Settled,
    /// The funding output was spent by the customer's refund.
    Refunded,
    /// Customer only: the merchant refused the channel before its funding was broadcast.
    Abandoned,
    /// A dispute channel's trigger is out (in the mempool or confirmed): the merchant settles
    /// at once with the latest payment; the customer refunds after the dispute period.
    Disputed,
}

impl Phase {
    /// The lowercase name used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Opening => "opening",
            Phase::AwaitingFunding => "awaiting funding",
            Phase::Open => "open",
            Phase::Settling => "settling",
            Phase::Expired => "expired",
            Phase::Settled => "settled",
            Phase::Refunded => "refunded",
            Phase::Abandoned => "abandoned",
            Phase::Disputed => "disputed",
        }
    }

    /// Whether the channel is over (its funding output is spent or was never created).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Settled | Phase::Refunded | Phase::Abandoned)
    }

    pub(crate) fn to_u32(self) -> u32 {
        match self {
            Phase::Opening => 0,
            Phase::AwaitingFunding => 1,
            Phase::Open => 2,
            Phase::Settling => 3,
            Phase::Settled => 4,
            Phase::Refunded => 5,
            Phase::Abandoned => 6,
            Phase::Expired => 7,
            Phase::Disputed => 8,
        }
    }

    pub(crate) fn from_u32(v: u32) -> Result<Self, Error> {
        Ok(match v {
            0 => Phase::Opening,
            1 => Phase::AwaitingFunding,
            2 => Phase::Open,
            3 => Phase::Settling,
            4 => Phase::Settled,
            5 => Phase::Refunded,
            6 => Phase::Abandoned,
            7 => Phase::Expired,
            8 => Phase::Disputed,
            _ => return Err(Error::Decode(format!("unknown phase {v}"))),
        })
    }
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the merchant should settle now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleReason {
    /// The customer asked (a valid close request).
    CustomerClose,
    /// The expiry is within the settle margin.
    Expiry,
    /// The customer's remaining balance is below the close-out amount.
    Exhausted,
    /// A dispute channel's trigger is out: settle with the latest payment before the
    /// customer's refund becomes valid.
    Disputed,
}

/// Something that happened, for the driver's logs, metrics and schedulers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The funding transaction reached the required confirmations.
    FundingConfirmed {
        /// The channel.
        channel: OutPoint,
    },
    /// The funding transaction left the chain (reorg): payments stop until it confirms again.
    FundingReorged {
        /// The channel.
        channel: OutPoint,
    },
    /// Merchant: a payment passed validation (it is acknowledged once persisted).
    PaymentAccepted {
        /// The channel.
        channel: OutPoint,
        /// The new total.
        total: Amount,
        /// What it adds.
        increment: Amount,
    },
    /// Customer: the merchant acknowledged a total.
    PaymentAcked {
        /// The channel.
        channel: OutPoint,
        /// The acknowledged total.
        total: Amount,
    },
    /// Merchant: time to call `settle`.
    SettleDue {
        /// The channel.
        channel: OutPoint,
        /// Why.
        reason: SettleReason,
    },
    /// Customer: the refund is final; time to call `refund`.
    RefundDue {
        /// The channel.
        channel: OutPoint,
    },
    /// A dispute channel's trigger is out: the dispute period runs from its confirmation.
    Disputed {
        /// The channel.
        channel: OutPoint,
        /// The trigger.
        trigger: Txid,
    },
    /// The funding output was spent by a settlement.
    Settled {
        /// The channel.
        channel: OutPoint,
        /// The settlement.
        txid: Txid,
    },
    /// The funding output was spent by a refund.
    Refunded {
        /// The channel.
        channel: OutPoint,
        /// The refund.
        txid: Txid,
        /// Merchant: what it had accepted but never settled (lost).
        unsettled: Amount,
    },
    /// The peer refused something.
    PeerError {
        /// The channel.
        channel: OutPoint,
        /// The peer's code.
        code: u32,
        /// The peer's text.
        message: String,
    },
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "effects must be executed; dropping a Persist loses state"]
pub enum Effect<S> {
    /// Write `state` durably (fsync), then call `persisted(id)`.
    Persist {
        /// The persist's id; ids increase.
        id: u64,
        /// The whole state to write.
        state: Box<S>,
    },
    /// Send a message to the peer.
    Send(Message),
    /// Broadcast a transaction.
    Broadcast(Transaction),
    /// Broadcast a zero-fee parent (a dispute channel's trigger) and the child that pays for
    /// it as one package (`submitpackage`); the child alone when the parent is confirmed.
    BroadcastPackage {
        /// The trigger.
        parent: Transaction,
        /// The settlement or the exit child.
        child: Transaction,
    },
    /// Watch an outpoint for confirmations and spends.
    Watch(OutPoint),
    /// Report an event.
    Event(Event),
}

/// A channel state machine as a driver runs it: effects out, persists completed back. Both
/// machines implement it, so one driver (`paychan_store::Persisted`) runs every channel kind.
pub trait Machine {
    /// The whole state each [`Effect::Persist`] carries.
    type State: StoredState;

    /// The next effect, in order; `None` when there is nothing to do.
    fn poll_effect(&mut self) -> Option<Effect<Self::State>>;

    /// Persist `id` is durable: releases what was held behind it.
    ///
    /// # Errors
    /// [`Error::UnknownPersist`] for an id never handed out.
    fn persisted(&mut self, id: u64) -> Result<(), Error>;

    /// The channel (its funding outpoint), once known.
    fn channel_id(&self) -> Option<OutPoint>;
}

/// What a store row keeps of a channel state: the indexed columns and the encoding.
pub trait StoredState {
    /// The row, or `None` while there is nothing to store yet (a customer's channel before
    /// its funding is built).
    fn row(&self) -> Option<StateRow>;
}

/// A state as a store row sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// The channel.
    pub id: OutPoint,
    /// Its phase.
    pub phase: Phase,
    /// The deposit.
    pub capacity: Amount,
    /// The expiry (locktime value).
    pub expiry: u32,
    /// The customer's channel key, hex.
    pub customer_key: String,
    /// The payment total this side stands by (merchant: accepted; customer: signed) and its
    /// signature.
    pub total: Amount,
    /// The signature of `total`.
    pub signature: Vec<u8>,
    /// The settlement or refund, once known.
    pub closing_txid: Option<Txid>,
    /// The encoded state.
    pub state: Vec<u8>,
}

impl Machine for merchant::MerchantChannel {
    type State = merchant::MerchantState;

    fn poll_effect(&mut self) -> Option<Effect<Self::State>> {
        merchant::MerchantChannel::poll_effect(self)
    }

    fn persisted(&mut self, id: u64) -> Result<(), Error> {
        merchant::MerchantChannel::persisted(self, id)
    }

    fn channel_id(&self) -> Option<OutPoint> {
        Some(self.id())
    }
}

impl StoredState for merchant::MerchantState {
    fn row(&self) -> Option<StateRow> {
        Some(StateRow {
            id: self.params.id(),
            phase: self.phase,
            capacity: self.params.capacity(),
            expiry: self.params.script().expiry().map_or(0, |e| e.to_consensus_u32()),
            customer_key: self.params.script().customer().to_string(),
            total: self.accepted,
            signature: self.signature.clone(),
            closing_txid: self.settlement_txid,
            state: self.encode(),
        })
    }
}

impl Machine for customer::CustomerChannel {
    type State = customer::CustomerState;

    fn poll_effect(&mut self) -> Option<Effect<Self::State>> {
        customer::CustomerChannel::poll_effect(self)
    }

    fn persisted(&mut self, id: u64) -> Result<(), Error> {
        customer::CustomerChannel::persisted(self, id)
    }

    fn channel_id(&self) -> Option<OutPoint> {
        self.id()
    }
}

impl StoredState for customer::CustomerState {
    fn row(&self) -> Option<StateRow> {
        let params = self.params.as_ref()?;
        Some(StateRow {
            id: params.id(),
            phase: self.phase,
            capacity: params.capacity(),
            expiry: params.script().expiry().map_or(0, |e| e.to_consensus_u32()),
            customer_key: params.script().customer().to_string(),
            total: self.signed,
            signature: self.signature.clone(),
            closing_txid: self.closing_txid,
            state: self.encode(),
        })
    }
}

/// Effects waiting to be drained, with the sends that wait for a persist held back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outbox<S> {
    next_id: u64,
    durable: u64,
    ready: VecDeque<Effect<S>>,
    held: VecDeque<(u64, Effect<S>)>,
}

impl<S> Default for Outbox<S> {
    fn default() -> Self {
        Outbox { next_id: 1, durable: 0, ready: VecDeque::new(), held: VecDeque::new() }
    }
}

impl<S> Outbox<S> {
    /// Queues a persist of `state`; later [`Outbox::after_persist`] effects wait for it.
    pub(crate) fn persist(&mut self, state: S) {
        let id = self.next_id;
        self.next_id += 1;
        self.ready.push_back(Effect::Persist { id, state: Box::new(state) });
    }

    /// Queues an effect that must not run before every persist queued so far is durable. It
    /// also keeps its place behind effects already held, so messages leave in order: every
    /// `Send` goes through here.
    pub(crate) fn after_persist(&mut self, effect: Effect<S>) {
        let gate = self.next_id - 1;
        if gate > self.durable || !self.held.is_empty() {
            self.held.push_back((gate.max(self.held.back().map_or(0, |h| h.0)), effect));
        } else {
            self.ready.push_back(effect);
        }
    }

    /// Queues an effect that may run while the persists queued so far are in flight, but after
    /// every effect already held (so messages still leave in order): a customer's payment,
    /// whose write may overlap its send (DESIGN §6).
    pub(crate) fn overlapped(&mut self, effect: Effect<S>) {
        match self.held.back().map(|h| h.0) {
            Some(gate) => self.held.push_back((gate, effect)),
            None => self.ready.push_back(effect),
        }
    }

    /// Queues an effect that needs no persist (events, watches).
    pub(crate) fn now(&mut self, effect: Effect<S>) {
        self.ready.push_back(effect);
    }

    /// Marks persist `id` (and so every earlier one) durable and releases what waited for it.
    pub(crate) fn persisted(&mut self, id: u64) -> Result<(), Error> {
        if id == 0 || id >= self.next_id {
            return Err(Error::UnknownPersist(id));
        }
        self.durable = self.durable.max(id);
        while self.held.front().is_some_and(|(gate, _)| *gate <= self.durable) {
            if let Some((_, e)) = self.held.pop_front() {
                self.ready.push_back(e);
            }
        }
        Ok(())
    }

    pub(crate) fn poll(&mut self) -> Option<Effect<S>> {
        self.ready.pop_front()
    }

    /// Whether any persist is not yet reported durable.
    pub(crate) fn persist_pending(&self) -> bool {
        self.durable + 1 < self.next_id
    }
}
