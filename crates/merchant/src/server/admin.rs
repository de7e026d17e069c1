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
    /// The Prometheus text exposition of the merchant's metrics. The channels by phase and
    /// kind are the store's counts (most channels are not in memory, ADR 0028).
    ///
    /// # Errors
    /// The store's.
    pub async fn metrics_text(&self) -> Result<String, MerchantError> {
        let census = self.store.census(Role::Merchant).await?;
        let mut by_phase: HashMap<&'static str, usize> = HashMap::new();
        let mut by_kind: HashMap<&'static str, usize> = HashMap::new();
        for c in census.iter().filter(|c| !c.phase.is_final()) {
            let n = usize::try_from(c.channels).unwrap_or(usize::MAX);
            *by_phase.entry(c.phase.as_str()).or_default() += n;
            *by_kind.entry(if c.no_expiry { "dispute" } else { "cltv" }).or_default() += n;
        }
        let mut phases: Vec<(&str, usize)> = by_phase.into_iter().collect();
        phases.sort_unstable();
        let mut kinds: Vec<(&str, usize)> = by_kind.into_iter().collect();
        kinds.sort_unstable();
        Ok(self.metrics.render(&phases, &kinds, self.channels_in_memory()))
    }

    /// Every channel of the store ([`Self::channels_page`] page after page), ordered by
    /// expiry.
    ///
    /// # Errors
    /// The store's, or an undecodable row.
    pub async fn channels(&self) -> Result<Vec<ChannelListing>, MerchantError> {
        const PAGE: usize = 1_000;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.channels_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let full = page.len() == PAGE;
            out.extend(page);
            if !full {
                break;
            }
        }
        out.sort_by_key(|c| (c.expiry, c.id));
        Ok(out)
    }

    /// Up to `limit` channels of the store after channel `after`, in the store's order of ids
    /// (pass the last one's id for the next page): each as its row says, or as memory has it
    /// when it is there (a pipelined run may be ahead of its row).
    ///
    /// # Errors
    /// The store's, or an undecodable row.
    pub async fn channels_page(
        &self,
        after: Option<OutPoint>,
        limit: usize,
    ) -> Result<Vec<ChannelListing>, MerchantError> {
        let rows = self
            .store
            .list(paychan_store::Query {
                role: Some(Role::Merchant),
                by_id: true,
                after,
                limit: limit.max(1),
                ..Default::default()
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let cached = self.in_memory(&row.id);
            match cached {
                Some(live) => {
                    let s = live.peek().await;
                    out.push(listing(row.id, s.channel.state()));
                }
                None => out.push(listing(row.id, &MerchantState::decode(&row.state)?)),
            }
        }
        Ok(out)
    }

    /// A channel's phase and stored total; an ended channel's from the store.
    ///
    /// # Errors
    /// [`Error::UnknownChannel`]; the store's.
    pub async fn channel_status(&self, id: OutPoint) -> Result<(Phase, Amount), MerchantError> {
        if let Some(slot) = self.cached(&id) {
            let s = slot.peek().await;
            return Ok((s.channel.phase(), s.stored_total()));
        }
        let row = self.store.get(id, Role::Merchant).await?.ok_or(Error::UnknownChannel(id))?;
        Ok((row.phase, row.total))
    }

    /// A channel's expiry (locktime value).
    ///
    /// # Errors
    /// [`Error::UnknownChannel`]; the store's.
    pub async fn channel_expiry(&self, id: OutPoint) -> Result<u32, MerchantError> {
        let slot = self.live(&id).await?;
        let s = slot.peek().await;
        Ok(s.channel.state().params.script().expiry().map_or(0, |e| e.to_consensus_u32()))
    }
}
