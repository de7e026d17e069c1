//! The subcommands.

pub mod bench;
pub mod bench_memory;
pub mod bench_node;
pub mod bench_pay;
pub mod bench_soak;
pub mod buy;
pub mod channels;
pub mod common;
pub mod demo;
pub mod node;
pub mod payment;
pub mod serve;
pub mod tx;
pub mod wallet;
