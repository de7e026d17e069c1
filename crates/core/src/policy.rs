//! The merchant's channel policy: limits, margins and defaults, validated as a whole.
//!
//! Timeline of a time-locked channel (DESIGN §2):
//!
//! ```text
//! open ........ last payment ...... settle ................. expiry ... refund valid
//!               |<- payment_cutoff ->|<---- settle_margin ---->|
//! ```
//!
//! Payments are accepted while `now < expiry − settle_margin − payment_cutoff`; the merchant
//! broadcasts its settlement at `expiry − settle_margin` at the latest, so the settlement has the
//! whole margin to confirm before the customer's refund becomes final. (A refund is final only
//! once median-time-past passes the expiry, which on mainnet trails wall time by about an hour: an
//! extra margin on top, never relied upon.) For a channel whose expiry is a block height, the
//! margins are converted to blocks at 600 s a block, rounding up.

use bitcoin::{Amount, FeeRate, Script};

use crate::Error;

/// Seconds per block used to turn time margins into block margins.
pub const SECONDS_PER_BLOCK: u32 = 600;

/// Bitcoin Core's default `-dustrelayfee` (3 sat/vB).
pub const DEFAULT_DUST_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(750);

/// Bitcoin Core's default minimum relay fee (1 sat/vB).
pub const MIN_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(250);

/// The dispute period a customer picks for a dispute channel unless it asks otherwise, and
/// the shortest a merchant accepts by default: a day of blocks (DESIGN §3a).
pub const DEFAULT_DISPUTE_BLOCKS: u16 = 144;
/// The longest dispute period a merchant accepts: two weeks of blocks (the customer's deposit
/// is locked that long after a force close).
pub const MAX_DISPUTE_BLOCKS: u16 = 2_016;

/// The smallest settle margin a policy may have: time for a settlement to confirm, with fee
/// bumps, before the refund becomes valid.
pub const MIN_SETTLE_MARGIN_SECS: u32 = 3_600;

/// A merchant's channel policy. Build it with [`Policy::default`] and override fields, then call
/// [`Policy::validate`] (every consumer in this crate also validates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The deposit a customer opens with unless it asks otherwise.
    pub default_deposit: Amount,
    /// The smallest funding output the merchant accepts.
    pub min_deposit: Amount,
    /// The largest funding output the merchant accepts.
    pub max_deposit: Amount,
    /// The channel lifetime a customer picks unless it asks otherwise, in seconds.
    pub default_expiry_secs: u32,
    /// The shortest remaining life (expiry − now at open) the merchant accepts, in seconds.
    pub min_channel_life_secs: u32,
    /// The longest remaining life the merchant accepts, in seconds.
    pub max_channel_life_secs: u32,
    /// The settlement is broadcast this long before the expiry.
    pub settle_margin_secs: u32,
    /// Payments stop this long before the settlement deadline.
    pub payment_cutoff_secs: u32,
    /// Confirmations of the funding transaction before payments are accepted.
    pub min_confirmations: u32,
    /// Accept payments on an unconfirmed funding transaction (two1's `zeroconf`).
    pub zero_conf: bool,
    /// Dust relay fee used for Bitcoin Core's dust threshold.
    pub dust_relay_fee: FeeRate,
    /// When the customer's remaining balance falls below this, the channel is exhausted and
    /// the merchant settles it.
    pub close_out: Amount,
    /// The shortest dispute period (blocks) the merchant accepts for a dispute channel: the
    /// time it has to settle once a customer broadcasts the trigger. 144 by default; at most
    /// [`MAX_DISPUTE_BLOCKS`]; tests may lower it.
    pub min_dispute_blocks: u16,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_deposit: Amount::from_sat(100_000),
            min_deposit: Amount::from_sat(10_000),
            max_deposit: Amount::from_sat(100_000_000),
            default_expiry_secs: 86_400,
            min_channel_life_secs: 6 * 3_600,
            max_channel_life_secs: 30 * 86_400,
            settle_margin_secs: 4 * 3_600,
            payment_cutoff_secs: 30 * 60,
            min_confirmations: 1,
            zero_conf: false,
            dust_relay_fee: DEFAULT_DUST_RELAY_FEE,
            close_out: Amount::from_sat(1_000),
            min_dispute_blocks: DEFAULT_DISPUTE_BLOCKS,
        }
    }
}

impl Policy {
    /// [`Policy::validate`], and that the policy is safe on `network`: the settle margin
    /// leaves room for median-time-past running ahead of the merchant's clock (the refund's
    /// timelock is checked against it, BIP 113; blocks may be stamped up to two hours ahead)
    /// plus the settlement's confirmations at ten minutes each.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`], naming the network and the margin it needs.
    pub fn validate_for(&self, network: &crate::network::NetworkParams) -> Result<(), Error> {
        self.validate()?;
        let needed = u64::from(network.mtp_lag_secs) + 600 * u64::from(network.min_confirmations);
        if u64::from(self.settle_margin_secs) < needed {
            return Err(Error::InvalidPolicy(format!(
                "settle margin {} s is too short on {}: median-time-past may run {} s ahead and \
                 the settlement needs {} confirmation(s); at least {needed} s",
                self.settle_margin_secs,
                network.name,
                network.mtp_lag_secs,
                network.min_confirmations
            )));
        }
        Ok(())
    }

    /// Checks that the policy is consistent.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] naming the first inconsistency: margins that overlap the channel
    /// life, deposits out of order, a settle margin too short to confirm a settlement.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidPolicy(s));
        if self.settle_margin_secs < MIN_SETTLE_MARGIN_SECS {
            return bad(format!(
                "settle margin {} s is below the minimum {} s",
                self.settle_margin_secs, MIN_SETTLE_MARGIN_SECS
            ));
        }
        let margins = u64::from(self.settle_margin_secs) + u64::from(self.payment_cutoff_secs);
        if u64::from(self.min_channel_life_secs) <= margins {
            return bad(format!(
                "minimum channel life {} s does not exceed settle margin + payment cutoff ({} s): \
                 a channel could never take a payment",
                self.min_channel_life_secs, margins
            ));
        }
        if self.default_expiry_secs < self.min_channel_life_secs
            || self.default_expiry_secs > self.max_channel_life_secs
        {
            return bad(format!(
                "default expiry {} s is outside the accepted channel life {}..={} s",
                self.default_expiry_secs, self.min_channel_life_secs, self.max_channel_life_secs
            ));
        }
        if self.min_deposit > self.default_deposit || self.default_deposit > self.max_deposit {
            return bad(format!(
                "deposits out of order: min {} ≤ default {} ≤ max {} does not hold",
                self.min_deposit, self.default_deposit, self.max_deposit
            ));
        }
        if self.max_deposit > Amount::MAX_MONEY {
            return bad(format!("max deposit {} exceeds 21 million bitcoin", self.max_deposit));
        }
        if self.close_out >= self.min_deposit {
            return bad(format!(
                "close-out {} is not below the minimum deposit {}",
                self.close_out, self.min_deposit
            ));
        }
        if self.min_confirmations == 0 && !self.zero_conf {
            return bad("min_confirmations is 0 but zero_conf is off".into());
        }
        if self.dust_relay_fee < MIN_RELAY_FEE {
            return bad(format!("dust relay fee {} is below 1 sat/vB", self.dust_relay_fee));
        }
        if self.min_dispute_blocks == 0 || self.min_dispute_blocks > MAX_DISPUTE_BLOCKS {
            return bad(format!(
                "minimum dispute period {} blocks is outside 1..={MAX_DISPUTE_BLOCKS}",
                self.min_dispute_blocks
            ));
        }
        Ok(())
    }

    /// The settle margin and payment cutoff together, in the unit of `expiry`
    /// (seconds for a time expiry, blocks for a height expiry).
    pub fn cutoff_distance(&self, expiry_is_height: bool) -> u32 {
        let secs = self.settle_margin_secs.saturating_add(self.payment_cutoff_secs);
        if expiry_is_height {
            secs.div_ceil(SECONDS_PER_BLOCK)
        } else {
            secs
        }
    }

    /// The settle margin in the unit of `expiry`.
    pub fn settle_distance(&self, expiry_is_height: bool) -> u32 {
        if expiry_is_height {
            self.settle_margin_secs.div_ceil(SECONDS_PER_BLOCK)
        } else {
            self.settle_margin_secs
        }
    }

    /// Bitcoin Core's dust threshold for an output paying `script_pubkey`.
    pub fn dust_threshold(&self, script_pubkey: &Script) -> Amount {
        dust_threshold(script_pubkey, self.dust_relay_fee)
    }
}

/// Bitcoin Core's `GetDustThreshold`: the value below which an output paying `script_pubkey`
/// costs more to spend than it is worth at `dust_relay_fee` (546 sat for P2PKH, 294 for P2WPKH,
/// 540 for P2SH, 330 for P2WSH and P2TR at the default 3 sat/vB; 0 for `OP_RETURN`).
pub fn dust_threshold(script_pubkey: &Script, dust_relay_fee: FeeRate) -> Amount {
    script_pubkey.minimal_non_dust_custom(dust_relay_fee)
}

#[cfg(test)]
mod network_tests {
    use super::*;
    use crate::network::NetworkParams;
    use bitcoin::Network;

    #[test]
    fn the_settle_margin_must_cover_the_median_time_past_lag_and_the_confirmations() {
        let main = NetworkParams::of(Network::Bitcoin).unwrap();
        assert!(Policy::default().validate_for(&main).is_ok(), "the default is safe on mainnet");
        let short = Policy { settle_margin_secs: 2 * 3_600, ..Policy::default() };
        assert!(short.validate().is_ok(), "consistent in itself");
        let e = short.validate_for(&main).unwrap_err().to_string();
        assert!(e.contains("bitcoin") && e.contains("9000"), "{e}");
        // Regtest needs one confirmation: 2 h + 10 min.
        let regtest = NetworkParams::regtest();
        let just = Policy { settle_margin_secs: 7_800, ..Policy::default() };
        assert!(just.validate_for(&regtest).is_ok());
        assert!(just.validate_for(&main).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{PubkeyHash, ScriptBuf, ScriptHash, WPubkeyHash, WScriptHash};

    #[test]
    fn default_policy_is_valid() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn overlapping_margins_are_refused() {
        let p = Policy { min_channel_life_secs: 4 * 3600 + 1800, ..Policy::default() };
        assert!(matches!(p.validate(), Err(Error::InvalidPolicy(_))));
        let p = Policy { settle_margin_secs: 600, ..Policy::default() };
        assert!(p.validate().is_err());
        let p = Policy { default_expiry_secs: 3600, ..Policy::default() };
        assert!(p.validate().is_err());
        let p = Policy { min_deposit: Amount::from_sat(1_000_000), ..Policy::default() };
        assert!(p.validate().is_err());
        let p = Policy { min_confirmations: 0, ..Policy::default() };
        assert!(p.validate().is_err());
    }

    #[test]
    fn dust_thresholds_match_bitcoin_core() {
        let f = DEFAULT_DUST_RELAY_FEE;
        let h = [7u8; 20];
        let w = [7u8; 32];
        assert_eq!(
            dust_threshold(&ScriptBuf::new_p2pkh(&PubkeyHash::from_byte_array(h)), f).to_sat(),
            546
        );
        assert_eq!(
            dust_threshold(&ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array(h)), f).to_sat(),
            294
        );
        assert_eq!(
            dust_threshold(&ScriptBuf::new_p2sh(&ScriptHash::from_byte_array(h)), f).to_sat(),
            540
        );
        assert_eq!(
            dust_threshold(&ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array(w)), f).to_sat(),
            330
        );
    }

    #[test]
    fn height_margins_round_up_to_blocks() {
        let p = Policy::default();
        assert_eq!(p.cutoff_distance(false), 4 * 3600 + 1800);
        assert_eq!(p.cutoff_distance(true), 27);
        assert_eq!(p.settle_distance(true), 24);
    }
}
