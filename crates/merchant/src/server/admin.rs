//! Listings and metrics for the admin API.

use std::collections::HashMap;

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::channel::merchant::MerchantState;
use paychan_core::channel::Phase;
use paychan_core::Error;
use paychan_store::Role;

use super::ChannelServer;
use crate::MerchantError;

/// A channel as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelListing {
    /// The channel (funding outpoint).
    pub id: OutPoint,
    /// Its phase.
    pub phase: Phase,
    /// The accepted (paid) total.
    pub paid: Amount,
    /// What paid requests charged against it.
    pub charged: Amount,
    /// The deposit.
    pub capacity: Amount,
    /// A CLTV channel's expiry (locktime value); 0 for a dispute channel.
    pub expiry: u32,
    /// A dispute channel's dispute period in blocks; `None` for a CLTV channel.
    pub dispute_blocks: Option<u16>,
}

impl ChannelListing {
    /// `"cltv"` or `"dispute"`.
    pub fn kind(&self) -> &'static str {
        if self.dispute_blocks.is_some() {
            "dispute"
        } else {
            "cltv"
        }
    }
}

fn listing(id: OutPoint, st: &MerchantState) -> ChannelListing {
    let script = st.params.script();
    ChannelListing {
        id,
        phase: st.phase,
        paid: st.accepted,
        charged: st.charged,
        capacity: st.params.capacity(),
        expiry: script.expiry().map_or(0, |e| e.to_consensus_u32()),
        dispute_blocks: script.dispute_blocks(),
    }
}

impl ChannelServer {
    /// The Prometheus text exposition of the merchant's metrics.
    pub async fn metrics_text(&self) -> String {
        let slots: Vec<_> = self.slots().values().cloned().collect();
        let mut by_phase: HashMap<&'static str, usize> = HashMap::new();
        let mut by_kind: HashMap<&'static str, usize> = HashMap::new();
        for slot in slots {
            let s = slot.peek().await;
            *by_phase.entry(s.channel.phase().as_str()).or_default() += 1;
            let l = listing(s.channel.id(), s.channel.state());
            *by_kind.entry(l.kind()).or_default() += 1;
        }
        let mut phases: Vec<(&str, usize)> = by_phase.into_iter().collect();
        phases.sort_unstable();
        let mut kinds: Vec<(&str, usize)> = by_kind.into_iter().collect();
        kinds.sort_unstable();
        self.metrics.render(&phases, &kinds)
    }

    /// Every channel, live ones from memory and ended ones (settled, refunded, abandoned:
    /// not kept in memory) from the store.
    ///
    /// # Errors
    /// The store's, or an undecodable row.
    pub async fn channels(&self) -> Result<Vec<ChannelListing>, MerchantError> {
        let slots: Vec<_> = self.slots().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut out = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            let s = slot.peek().await;
            out.push(listing(id, s.channel.state()));
        }
        let ended = self
            .store
            .list(paychan_store::Query {
                role: Some(Role::Merchant),
                phases: vec![Phase::Settled, Phase::Refunded, Phase::Abandoned],
                ..Default::default()
            })
            .await?;
        for row in ended {
            if self.slots().contains_key(&row.id) {
                continue;
            }
            out.push(listing(row.id, &MerchantState::decode(&row.state)?));
        }
        out.sort_by_key(|c| (c.expiry, c.id));
        Ok(out)
    }

    /// A channel's phase and stored total; an ended channel's from the store.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`]; the store's.
    pub async fn channel_status(&self, id: OutPoint) -> Result<(Phase, Amount), MerchantError> {
        if let Ok(slot) = self.slot(&id) {
            let s = slot.peek().await;
            return Ok((s.channel.phase(), s.stored_total()));
        }
        let row = self.store.get(id, Role::Merchant).await?.ok_or(Error::UnknownChannel(id))?;
        Ok((row.phase, row.total))
    }

    /// A channel's expiry (locktime value).
    ///
    /// # Errors
    /// [`Error::UnknownChannel`].
    pub async fn channel_expiry(&self, id: OutPoint) -> Result<u32, MerchantError> {
        let slot = self.slot(&id)?;
        let s = slot.peek().await;
        Ok(s.channel.state().params.script().expiry().map_or(0, |e| e.to_consensus_u32()))
    }
}
