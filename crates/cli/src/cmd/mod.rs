//! The subcommands.

pub mod channels;
pub mod common;
pub mod node;
pub mod payment;
pub mod serve;
pub mod tx;
pub mod wallet;
