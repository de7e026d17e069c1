//! Shared fixtures for the core's integration tests: the crate's own test kit.

pub use paychan_harness::fixtures::*;
