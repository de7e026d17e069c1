//! The merchant's payment rules (DESIGN §2), as pure functions: each failure is its own
//! [`Error`] variant, and nothing is changed by a check.
//!
//! 1. The channel is open and `now` is before `expiry − settle_margin − payment_cutoff`.
//! 2. The total is above the accepted total and at most the deposit; a dust change must be
//!    signed `NONE|ANYONECANPAY`.
//! 3. The signature is strict DER, low-S, has the expected flag, and verifies.
//!
//! Rule 4 (write durably, then acknowledge) is the state machine's: see [`crate::channel`].

use bitcoin::{Amount, OutPoint, Transaction};

use crate::channel::Phase;
use crate::policy::Policy;
use crate::time::Now;
use crate::tx::payment::verify_payment;
use crate::tx::two1::{parse_payment, Two1Payment};
use crate::tx::ChannelParams;
use crate::Error;

/// What the rules need to know of a channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelView<'a> {
    /// The channel's parameters.
    pub params: &'a ChannelParams,
    /// Its phase.
    pub phase: Phase,
    /// The highest total accepted so far (zero before the first payment).
    pub accepted: Amount,
}

/// Rule 1: the channel takes payments at `now`.
///
/// # Errors
/// [`Error::ChannelNotOpen`] or [`Error::PastCutoff`].
pub fn check_open(view: &ChannelView<'_>, policy: &Policy, now: &Now) -> Result<(), Error> {
    if view.phase != Phase::Open {
        return Err(Error::ChannelNotOpen { phase: view.phase });
    }
    // A dispute channel has no expiry, hence no cutoff.
    let Some(expiry) = view.params.script().expiry() else { return Ok(()) };
    let distance = policy.cutoff_distance(expiry.is_block_height());
    if !now.is_before(expiry, distance) {
        return Err(Error::PastCutoff {
            cutoff: expiry.to_consensus_u32().saturating_sub(distance),
        });
    }
    Ok(())
}

/// Rule 2 (ordering and bounds).
///
/// # Errors
/// [`Error::NotIncreasing`] or [`Error::AboveDeposit`].
pub fn check_total(view: &ChannelView<'_>, total: Amount) -> Result<(), Error> {
    if total <= view.accepted {
        return Err(Error::NotIncreasing { total, accepted: view.accepted });
    }
    if total > view.params.capacity() {
        return Err(Error::AboveDeposit { total, capacity: view.params.capacity() });
    }
    Ok(())
}

/// Rules 1–3 on a compact payment `(channel, total, signature)`.
///
/// # Errors
/// The first rule broken, in the order of the module documentation, starting with
/// [`Error::WrongChannel`].
pub fn validate_payment(
    view: &ChannelView<'_>,
    policy: &Policy,
    now: &Now,
    channel: OutPoint,
    total: Amount,
    signature: &[u8],
) -> Result<(), Error> {
    if channel != view.params.id() {
        return Err(Error::WrongChannel { expected: view.params.id(), got: channel });
    }
    check_open(view, policy, now)?;
    check_total(view, total)?;
    verify_payment(view.params, total, signature)?;
    Ok(())
}

/// Rules 1–3 on a whole half-signed 21 payment transaction.
///
/// # Errors
/// As [`validate_payment`], plus [`Error::MalformedTwo1Payment`] for a transaction of the
/// wrong form.
pub fn validate_two1_payment(
    view: &ChannelView<'_>,
    policy: &Policy,
    now: &Now,
    tx: &Transaction,
) -> Result<Two1Payment, Error> {
    check_open(view, policy, now)?;
    let payment = parse_payment(view.params, tx)?;
    check_total(view, payment.amount)?;
    Ok(payment)
}
