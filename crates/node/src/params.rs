//! Regtest consensus parameters, as Bitcoin Core's `CRegTestParams` sets them.

use paychan_core::bitcoin::blockdata::constants::genesis_block;
use paychan_core::bitcoin::{Amount, Block, CompactTarget, Network};

/// Regtest's proof-of-work limit, in compact form (`0x207fffff`): about half of all hashes pass.
pub fn pow_bits() -> CompactTarget {
    CompactTarget::from_consensus(0x207f_ffff)
}
/// Blocks between subsidy halvings on regtest.
pub const HALVING_INTERVAL: u32 = 150;
/// Confirmations before a coinbase output can be spent.
pub const COINBASE_MATURITY: u32 = 100;
/// Blocks used for median-time-past.
pub const MTP_WINDOW: usize = 11;
/// Consensus block weight limit.
pub const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
/// Weight kept free for the coinbase when assembling a block (Core's default reserve).
pub const COINBASE_RESERVE_WEIGHT: u64 = 4_000;

/// The regtest genesis block.
pub fn genesis() -> Block {
    genesis_block(Network::Regtest)
}

/// The block subsidy at `height`.
pub fn subsidy(height: u32) -> Amount {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000) >> halvings)
}
