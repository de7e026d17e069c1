//! # paychan-core
//!
//! The sans-I/O core of paychan: unidirectional Bitcoin payment channels (DESIGN §2).
//!
//! * [`script`]: the channel script and its P2WSH / P2SH funding outputs.
//! * [`tx`]: refund, payment, settlement and the 21 (two1) payment form.
//! * [`validate`]: the merchant's payment rules, one error variant each.
//! * [`channel`]: the customer's and merchant's state machines, which enforce "persist before
//!   send".
//! * [`policy`]: limits, margins and defaults.
//! * [`msg`]: the TCP protocol's protobuf messages and framing.
//! * [`bolt3`]: BOLT 3 keys, scripts and transactions for duplex channels (DESIGN §3b).
//! * [`verify`]: script checks with Bitcoin Core's interpreter plus its standardness rules.
//!
//! Nothing here reads a clock, draws randomness, touches a file or a socket: time comes in as
//! [`Now`], keys come in from the caller, and outputs are returned values or
//! [`channel::Effect`]s for the caller to execute.

#![deny(missing_docs)]

pub mod bolt3;
pub mod channel;
mod error;
pub mod lease;
pub mod msg;
pub mod network;
pub mod noise;
pub mod paywall;
pub mod policy;
pub mod ratelimit;
pub mod script;
pub mod sig;

pub mod time;
pub mod tx;
pub mod validate;
pub mod verify;

pub use bitcoin;
pub use error::Error;
pub use time::Now;
