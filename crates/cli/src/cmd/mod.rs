//! The subcommands.

pub mod tx;
