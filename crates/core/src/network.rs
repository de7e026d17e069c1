//! The networks paychan runs on, and what differs between them (DESIGN §3d): the names, Bitcoin
//! Core's defaults (RPC port, data subdirectory, chain name), the BIP 84 coin type, the
//! confirmations a funding needs, and the caps that protect real money.
//!
//! `testnet3` is not supported: `testnet4` replaced it (BIP 94).

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::{Amount, BlockHash, FeeRate, Network};

use crate::Error;

/// The networks paychan supports, in the order `--network` lists them.
pub const SUPPORTED: [Network; 4] =
    [Network::Bitcoin, Network::Testnet4, Network::Signet, Network::Regtest];

/// What paychan and Bitcoin Core do differently on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkParams {
    /// The network.
    pub network: Network,
    /// paychan's name for it (`--network`): `bitcoin`, `testnet4`, `signet`, `regtest`.
    pub name: &'static str,
    /// Bitcoin Core's `getblockchaininfo.chain`: `main`, `testnet4`, `signet`, `regtest`.
    pub core_chain: &'static str,
    /// Bitcoin Core's default RPC port.
    pub rpc_port: u16,
    /// Bitcoin Core's subdirectory of its data directory ("" on mainnet): where its `.cookie`
    /// is.
    pub datadir: &'static str,
    /// The BIP 44/84 coin type: 0 on mainnet, 1 on every test network.
    pub coin_type: u32,
    /// Confirmations a channel's funding needs before payments (a reorg on mainnet costs real
    /// money; test networks and regtest take one).
    pub min_confirmations: u32,
    /// The highest fee rate paychan pays for its own transactions: settlements (first or
    /// replacement, `settlement::FeeCap`), fundings and the wallet's sends. A broken fee
    /// estimate must not burn a channel or a wallet.
    pub max_fee_rate: FeeRate,
    /// The fee rate used when the node has no estimate (a fresh node): Core's `-fallbackfee`.
    pub fallback_fee_rate: FeeRate,
    /// The largest deposit a channel takes by default.
    pub max_deposit: Amount,
    /// How far median-time-past lags wall time, in seconds, at most (BIP 113 locks are checked
    /// against it; about an hour on mainnet). A channel's expiry must leave this room (the
    /// policy check is to come, issue 15).
    pub mtp_lag_secs: u32,
}

impl NetworkParams {
    /// The parameters of `network`.
    ///
    /// # Errors
    /// [`Error::UnsupportedNetwork`] for `testnet` (testnet3) and networks added later.
    pub fn of(network: Network) -> Result<Self, Error> {
        let base = NetworkParams { network, ..Self::regtest() };
        Ok(match network {
            Network::Bitcoin => NetworkParams {
                name: "bitcoin",
                core_chain: "main",
                rpc_port: 8332,
                datadir: "",
                coin_type: 0,
                min_confirmations: 3,
                max_fee_rate: FeeRate::from_sat_per_vb_u32(500),
                fallback_fee_rate: FeeRate::from_sat_per_vb_u32(10),
                max_deposit: Amount::from_sat(10_000_000),
                ..base
            },
            Network::Testnet4 => NetworkParams {
                name: "testnet4",
                core_chain: "testnet4",
                rpc_port: 48332,
                datadir: "testnet4",
                ..base
            },
            Network::Signet => NetworkParams {
                name: "signet",
                core_chain: "signet",
                rpc_port: 38332,
                datadir: "signet",
                ..base
            },
            Network::Regtest => base,
            other => return Err(Error::UnsupportedNetwork(other.to_string())),
        })
    }

    /// Regtest's parameters (the default network: the embedded node, the demo, the tests).
    pub fn regtest() -> Self {
        NetworkParams {
            network: Network::Regtest,
            name: "regtest",
            core_chain: "regtest",
            rpc_port: 18443,
            datadir: "regtest",
            coin_type: 1,
            min_confirmations: 1,
            max_fee_rate: FeeRate::from_sat_per_vb_u32(1_000),
            fallback_fee_rate: FeeRate::from_sat_per_vb_u32(1),
            max_deposit: Amount::from_sat(100_000_000),
            mtp_lag_secs: 2 * 3_600,
        }
    }

    /// The network `--network` names: `bitcoin` (or `mainnet`, `main`), `testnet4`, `signet`,
    /// `regtest`.
    ///
    /// # Errors
    /// [`Error::UnsupportedNetwork`] for any other name (`testnet` included).
    pub fn parse(name: &str) -> Result<Self, Error> {
        let network = match name.trim().to_ascii_lowercase().as_str() {
            "bitcoin" | "mainnet" | "main" => Network::Bitcoin,
            "testnet4" => Network::Testnet4,
            "signet" => Network::Signet,
            "regtest" => Network::Regtest,
            other => return Err(Error::UnsupportedNetwork(other.to_string())),
        };
        Self::of(network)
    }

    /// The hash of the network's genesis block: what identifies a node's chain.
    pub fn genesis(&self) -> BlockHash {
        genesis_block(self.network).block_hash()
    }

    /// The supported network whose genesis block is `hash`, if any.
    pub fn by_genesis(hash: &BlockHash) -> Option<Self> {
        SUPPORTED.iter().filter_map(|n| Self::of(*n).ok()).find(|p| p.genesis() == *hash)
    }
}

impl core::fmt::Display for NetworkParams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn names_round_trip_and_testnet3_is_refused() {
        for n in SUPPORTED {
            let p = NetworkParams::of(n).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(NetworkParams::parse(p.name), Ok(p));
            assert_eq!(p.to_string(), p.name);
            assert_eq!(NetworkParams::by_genesis(&p.genesis()), Some(p));
        }
        assert_eq!(NetworkParams::parse("mainnet").map(|p| p.network), Ok(Network::Bitcoin));
        for bad in ["testnet", "testnet3", "liquid", ""] {
            assert!(matches!(NetworkParams::parse(bad), Err(Error::UnsupportedNetwork(_))));
        }
        assert!(NetworkParams::of(Network::Testnet).is_err());
    }

    /// Bitcoin Core's defaults, the coin type, the confirmations, and the CAIP-2 name the 402
    /// shows, network by network.
    #[test]
    fn each_networks_defaults() {
        let table = [
            ("bitcoin", "main", 8332, "", 0, 3, "bip122:000000000019d6689c085ae165831e93"),
            (
                "testnet4",
                "testnet4",
                48332,
                "testnet4",
                1,
                1,
                "bip122:00000000da84f2bafbbc53dee25a72ae",
            ),
            ("signet", "signet", 38332, "signet", 1, 1, "bip122:00000008819873e925422c1ff0f99f7c"),
            (
                "regtest",
                "regtest",
                18443,
                "regtest",
                1,
                1,
                "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
            ),
        ];
        for (name, chain, port, dir, coin, confs, caip2) in table {
            let p = NetworkParams::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (p.core_chain, p.rpc_port, p.datadir, p.coin_type, p.min_confirmations),
                (chain, port, dir, coin, confs),
                "{name}"
            );
            assert_eq!(crate::paywall::caip2(p.network), caip2, "{name}");
            assert!(p.max_fee_rate >= FeeRate::from_sat_per_vb_u32(100), "{name}");
        }
        let main = NetworkParams::of(Network::Bitcoin).unwrap_or_else(|e| panic!("{e}"));
        assert!(main.max_deposit < Amount::from_sat(100_000_000), "a smaller cap on real money");
    }
}
