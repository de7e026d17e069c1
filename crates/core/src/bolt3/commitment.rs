//! BOLT 3 commitment transactions: fees, dust trimming, outputs and their order.

use bitcoin::absolute::LockTime;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use crate::bolt3::keys::{obscuring_factor, Basepoints, CommitmentKeys};
use crate::bolt3::{script, ChannelType, Htlc};
use crate::Error;

/// Commitment weight without HTLC outputs (BOLT 3 "Fee Calculation").
pub fn base_weight(channel_type: ChannelType) -> u64 {
    match channel_type {
        ChannelType::StaticRemoteKey => 724,
        ChannelType::Anchors => 1124,
    }
}

/// The weight each untrimmed HTLC output adds to a commitment transaction.
pub const WEIGHT_PER_HTLC: u64 = 172;

/// The expected weight of an HTLC-timeout transaction.
pub fn htlc_timeout_weight(channel_type: ChannelType) -> u64 {
    match channel_type {
        ChannelType::StaticRemoteKey => 663,
        ChannelType::Anchors => 666,
    }
}

/// The expected weight of an HTLC-success transaction.
pub fn htlc_success_weight(channel_type: ChannelType) -> u64 {
    match channel_type {
        ChannelType::StaticRemoteKey => 703,
        ChannelType::Anchors => 706,
    }
}

/// `fee = feerate_per_kw × weight / 1000`, rounded down.
pub fn fee_for(feerate_per_kw: u32, weight: u64) -> u64 {
    u64::from(feerate_per_kw) * weight / 1000
}

/// The base fee of a commitment with `untrimmed_htlcs` HTLC outputs.
pub fn commitment_fee_sat(
    channel_type: ChannelType,
    feerate_per_kw: u32,
    untrimmed_htlcs: usize,
) -> u64 {
    fee_for(feerate_per_kw, base_weight(channel_type) + WEIGHT_PER_HTLC * untrimmed_htlcs as u64)
}

/// The fee of the second-stage transaction of `htlc`: zero with anchors (the broadcaster adds
/// fees by attaching inputs), else by the expected weight of an HTLC-timeout (offered) or
/// HTLC-success (received) transaction.
pub fn htlc_tx_fee_sat(channel_type: ChannelType, feerate_per_kw: u32, offered: bool) -> u64 {
    match channel_type {
        ChannelType::Anchors => 0,
        ChannelType::StaticRemoteKey if offered => {
            fee_for(feerate_per_kw, htlc_timeout_weight(channel_type))
        }
        ChannelType::StaticRemoteKey => fee_for(feerate_per_kw, htlc_success_weight(channel_type)),
    }
}

/// Whether `htlc` is trimmed from a commitment whose owner has `dust_limit_sat`: its amount
/// less its second-stage fee is below the dust limit.
pub fn is_trimmed(
    channel_type: ChannelType,
    feerate_per_kw: u32,
    dust_limit_sat: u64,
    htlc: &Htlc,
) -> bool {
    let fee = htlc_tx_fee_sat(channel_type, feerate_per_kw, htlc.offered);
    htlc.amount_msat / 1000 < dust_limit_sat.saturating_add(fee)
}

/// What stays fixed for one side's commitment transactions over the life of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentParams {
    /// The channel type both sides agreed on.
    pub channel_type: ChannelType,
    /// The funding output.
    pub funding_outpoint: OutPoint,
    /// The funding output's value.
    pub funding_sat: u64,
    /// The basepoints of the side that holds (and may broadcast) this commitment ("local").
    pub broadcaster: Basepoints,
    /// The other side's basepoints ("remote").
    pub countersignatory: Basepoints,
    /// Whether the broadcaster opened (funded) the channel: the opener pays the fee and anchors.
    pub broadcaster_is_opener: bool,
    /// The broadcaster's `to_self_delay` (set by the countersignatory).
    pub to_self_delay: u16,
    /// The broadcaster's `dust_limit_satoshis`.
    pub dust_limit_sat: u64,
}

impl CommitmentParams {
    /// The funding witness script.
    pub fn funding_script(&self) -> ScriptBuf {
        script::funding(&self.broadcaster.funding, &self.countersignatory.funding)
    }

    /// The factor XORed with commitment numbers in locktime and sequence.
    pub fn obscuring_factor(&self) -> u64 {
        if self.broadcaster_is_opener {
            obscuring_factor(&self.broadcaster.payment, &self.countersignatory.payment)
        } else {
            obscuring_factor(&self.countersignatory.payment, &self.broadcaster.payment)
        }
    }
}

/// One state of the channel as one side's commitment shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentState {
    /// The commitment number (0 for the first commitment; at most 2⁴⁸−1).
    pub commitment_number: u64,
    /// The broadcaster's balance, without HTLCs and before fee and anchors.
    pub to_local_msat: u64,
    /// The countersignatory's balance, without HTLCs.
    pub to_remote_msat: u64,
    /// `feerate_per_kw` of this commitment.
    pub feerate_per_kw: u32,
    /// The committed HTLCs, `offered` as seen from the broadcaster.
    pub htlcs: Vec<Htlc>,
}

/// What one output of a commitment transaction is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRole {
    /// The broadcaster's revocable, delayed balance; its witness script.
    ToLocal(ScriptBuf),
    /// The countersignatory's balance.
    ToRemote,
    /// The broadcaster's anchor (spent with its funding key).
    LocalAnchor,
    /// The countersignatory's anchor.
    RemoteAnchor,
    /// The HTLC at this index of [`CommitmentState::htlcs`]; its witness script.
    Htlc(usize, ScriptBuf),
}

/// A built commitment transaction and what each of its outputs is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// The transaction, unsigned (an empty witness).
    pub tx: Transaction,
    /// The keys it was built with.
    pub keys: CommitmentKeys,
    /// The role of each output, by output index.
    pub outputs: Vec<OutputRole>,
    /// The fee actually paid (base fee plus trimmed amounts and rounding).
    pub fee_sat: u64,
    /// The base fee the opener paid.
    pub base_fee_sat: u64,
}

impl Commitment {
    /// The HTLC outputs in output order: `(output index, HTLC index, witness script)`. HTLC
    /// signatures are sent in this order (BOLT 2 `commitment_signed`).
    pub fn htlc_outputs(&self) -> impl Iterator<Item = (u32, usize, &ScriptBuf)> {
        self.outputs.iter().enumerate().filter_map(|(vout, role)| match role {
            OutputRole::Htlc(i, s) => Some((vout as u32, *i, s)),
            _ => None,
        })
    }

    /// The output index of the `to_local` output, if present.
    pub fn to_local_vout(&self) -> Option<u32> {
        self.outputs.iter().position(|r| matches!(r, OutputRole::ToLocal(_))).map(|i| i as u32)
    }

    /// The output index of the `to_remote` output, if present.
    pub fn to_remote_vout(&self) -> Option<u32> {
        self.outputs.iter().position(|r| matches!(r, OutputRole::ToRemote)).map(|i| i as u32)
    }
}

/// Builds the commitment transaction of `state` held by `params.broadcaster` at
/// `keys` (BOLT 3 "Commitment Transaction Construction").
///
/// # Errors
/// [`Error::Bolt3Amounts`] when the balances and HTLCs do not add up to the funding amount;
/// [`Error::Bolt3`] for a commitment number above 2⁴⁸−1.
pub fn build(
    params: &CommitmentParams,
    state: &CommitmentState,
    keys: &CommitmentKeys,
) -> Result<Commitment, Error> {
    if state.commitment_number > crate::bolt3::keys::FIRST_INDEX {
        return Err(Error::Bolt3("commitment number above 2^48-1"));
    }
    let htlc_msat = state.htlcs.iter().try_fold(0u64, |acc, h| acc.checked_add(h.amount_msat));
    let total_msat = htlc_msat
        .and_then(|h| h.checked_add(state.to_local_msat))
        .and_then(|t| t.checked_add(state.to_remote_msat));
    let funding_msat = params.funding_sat.saturating_mul(1000);
    if total_msat != Some(funding_msat) {
        return Err(Error::Bolt3Amounts { total_msat, funding_msat });
    }
    let ct = params.channel_type;
    let feerate = state.feerate_per_kw;
    let untrimmed: Vec<usize> = (0..state.htlcs.len())
        .filter(|i| !is_trimmed(ct, feerate, params.dust_limit_sat, &state.htlcs[*i]))
        .collect();
    let base_fee_sat = commitment_fee_sat(ct, feerate, untrimmed.len());
    let anchors_sat = match ct {
        ChannelType::Anchors => 2 * script::ANCHOR_SAT,
        ChannelType::StaticRemoteKey => 0,
    };
    let mut to_local_sat = state.to_local_msat / 1000;
    let mut to_remote_sat = state.to_remote_msat / 1000;
    let opener = if params.broadcaster_is_opener { &mut to_local_sat } else { &mut to_remote_sat };
    *opener = opener.saturating_sub(base_fee_sat).saturating_sub(anchors_sat);

    // (output, role, cltv tie-breaker)
    let mut outs: Vec<(TxOut, OutputRole, u32)> = Vec::with_capacity(untrimmed.len() + 4);
    for i in untrimmed.iter().copied() {
        let h = &state.htlcs[i];
        let ws = if h.offered {
            script::offered_htlc(
                ct,
                &keys.revocation,
                &keys.broadcaster_htlc,
                &keys.countersignatory_htlc,
                &h.payment_hash,
            )
        } else {
            script::received_htlc(
                ct,
                &keys.revocation,
                &keys.broadcaster_htlc,
                &keys.countersignatory_htlc,
                &h.payment_hash,
                h.cltv_expiry,
            )
        };
        let out =
            TxOut { value: Amount::from_sat(h.amount_msat / 1000), script_pubkey: ws.to_p2wsh() };
        outs.push((out, OutputRole::Htlc(i, ws), h.cltv_expiry));
    }
    let has_local = to_local_sat >= params.dust_limit_sat;
    let has_remote = to_remote_sat >= params.dust_limit_sat;
    if has_local {
        let ws =
            script::to_local(&keys.revocation, params.to_self_delay, &keys.broadcaster_delayed);
        let out = TxOut { value: Amount::from_sat(to_local_sat), script_pubkey: ws.to_p2wsh() };
        outs.push((out, OutputRole::ToLocal(ws), 0));
    }
    if has_remote {
        let spk = script::to_remote_script_pubkey(ct, &keys.countersignatory_payment);
        outs.push((
            TxOut { value: Amount::from_sat(to_remote_sat), script_pubkey: spk },
            OutputRole::ToRemote,
            0,
        ));
    }
    if ct == ChannelType::Anchors {
        let anchor = |key| TxOut {
            value: Amount::from_sat(script::ANCHOR_SAT),
            script_pubkey: script::anchor(key).to_p2wsh(),
        };
        if has_local || !untrimmed.is_empty() {
            outs.push((anchor(&params.broadcaster.funding), OutputRole::LocalAnchor, 0));
        }
        if has_remote || !untrimmed.is_empty() {
            outs.push((anchor(&params.countersignatory.funding), OutputRole::RemoteAnchor, 0));
        }
    }
    // BIP 69 (amount, then scriptPubKey), then CLTV expiry for identical HTLC outputs; the sort
    // is stable, so identical HTLCs keep their order.
    outs.sort_by(|a, b| {
        a.0.value
            .cmp(&b.0.value)
            .then_with(|| a.0.script_pubkey.cmp(&b.0.script_pubkey))
            .then_with(|| a.2.cmp(&b.2))
    });

    let obscured = params.obscuring_factor() ^ state.commitment_number;
    let lock_time = LockTime::from_consensus(0x2000_0000 | (obscured & 0xff_ffff) as u32);
    let sequence = Sequence(0x8000_0000 | ((obscured >> 24) & 0xff_ffff) as u32);
    let output_sat: u64 = outs.iter().map(|o| o.0.value.to_sat()).sum();
    if output_sat > params.funding_sat {
        return Err(Error::Bolt3("the opener's balance cannot pay for the anchor outputs"));
    }
    let (output, outputs): (Vec<TxOut>, Vec<OutputRole>) =
        outs.into_iter().map(|(o, r, _)| (o, r)).unzip();
    let tx = Transaction {
        version: Version::TWO,
        lock_time,
        input: vec![TxIn {
            previous_output: params.funding_outpoint,
            script_sig: ScriptBuf::new(),
            sequence,
            witness: Witness::new(),
        }],
        output,
    };
    Ok(Commitment {
        tx,
        keys: *keys,
        outputs,
        fee_sat: params.funding_sat - output_sat,
        base_fee_sat,
    })
}

/// Recovers the commitment number from a commitment transaction's locktime and sequence, given
/// the channel's obscuring factor; `None` when the transaction does not carry the markers.
pub fn commitment_number(tx: &Transaction, obscuring_factor: u64) -> Option<u64> {
    let (lock, seq) = obscured_parts(tx)?;
    Some((u64::from(seq) << 24 | u64::from(lock)) ^ obscuring_factor)
}

/// The obscured commitment number's low and high 24 bits, if `tx` has a commitment's shape
/// (version 2, one input, locktime 0x20…, sequence 0x80…).
pub(crate) fn obscured_parts(tx: &Transaction) -> Option<(u32, u32)> {
    let input = match tx.input.as_slice() {
        [one] => one,
        _ => return None,
    };
    let lock = tx.lock_time.to_consensus_u32();
    let seq = input.sequence.0;
    (tx.version == Version::TWO && lock >> 24 == 0x20 && seq >> 24 == 0x80)
        .then_some((lock & 0xff_ffff, seq & 0xff_ffff))
}
