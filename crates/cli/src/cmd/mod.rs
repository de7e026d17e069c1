//! The subcommands.

pub mod node;
pub mod tx;
