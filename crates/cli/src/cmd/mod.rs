//! The subcommands.

pub mod admin;
pub mod backup;
pub mod bench;
pub mod buy;
pub mod channels;
pub mod common;
pub mod demo;
pub mod node;
pub mod payment;
pub mod serve;
pub mod tx;
pub mod wallet;
