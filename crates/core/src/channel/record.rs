//! Stored forms of the channel states: protobuf records, so a newer build can read an older
//! one's rows (unknown fields are skipped, missing ones default).

use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Txid};
use prost::Message as _;

use super::customer::{CustomerState, CustomerTerms};
use super::merchant::MerchantState;
use super::Phase;
use crate::script::{ChannelScript, OutputKind};
use crate::tx::{ChannelParams, FundingOutput};
use crate::Error;

#[derive(Clone, PartialEq, prost::Message)]
struct ParamsRecord {
    #[prost(bytes = "vec", tag = "1")]
    script: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    funding_txid: Vec<u8>,
    #[prost(uint32, tag = "3")]
    funding_vout: u32,
    #[prost(uint64, tag = "4")]
    funding_value: u64,
    #[prost(uint32, tag = "5")]
    kind: u32,
    #[prost(bytes = "vec", tag = "6")]
    change_script: Vec<u8>,
    #[prost(uint64, tag = "7")]
    change_dust: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MerchantRecord {
    #[prost(message, optional, tag = "1")]
    params: Option<ParamsRecord>,
    #[prost(uint32, tag = "2")]
    phase: u32,
    #[prost(uint64, tag = "3")]
    accepted: u64,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "5")]
    two1_tx: Option<Vec<u8>>,
    #[prost(uint64, tag = "6")]
    charged: u64,
    #[prost(bytes = "vec", optional, tag = "7")]
    settlement_txid: Option<Vec<u8>>,
    #[prost(uint32, tag = "8")]
    key_index: u32,
    #[prost(bool, tag = "9")]
    two1_token_redeemed: bool,
    #[prost(bytes = "vec", optional, tag = "10")]
    trigger: Option<Vec<u8>>,
    #[prost(bool, tag = "11")]
    trigger_confirmed: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CustomerRecord {
    #[prost(bytes = "vec", tag = "1")]
    script: Vec<u8>,
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(bytes = "vec", tag = "3")]
    change_script: Vec<u8>,
    #[prost(uint64, tag = "4")]
    dust_relay_fee_sat_kwu: u64,
    #[prost(uint32, tag = "5")]
    cutoff_distance: u32,
    #[prost(message, optional, tag = "6")]
    params: Option<ParamsRecord>,
    #[prost(bytes = "vec", optional, tag = "7")]
    funding_tx: Option<Vec<u8>>,
    #[prost(uint32, tag = "8")]
    phase: u32,
    #[prost(uint64, tag = "9")]
    authorised: u64,
    #[prost(uint64, tag = "10")]
    signed: u64,
    #[prost(bytes = "vec", tag = "11")]
    signature: Vec<u8>,
    #[prost(uint64, tag = "12")]
    acked: u64,
    #[prost(bytes = "vec", optional, tag = "13")]
    closing_txid: Option<Vec<u8>>,
    #[prost(uint32, tag = "14")]
    key_index: u32,
    #[prost(uint32, tag = "15")]
    customer_key_index: u32,
    #[prost(string, tag = "16")]
    peer: String,
    #[prost(bytes = "vec", optional, tag = "17")]
    trigger: Option<Vec<u8>>,
}

fn kind_to_u32(k: OutputKind) -> u32 {
    match k {
        OutputKind::P2wsh => 0,
        OutputKind::P2sh => 1,
    }
}

fn kind_from_u32(v: u32) -> Result<OutputKind, Error> {
    match v {
        0 => Ok(OutputKind::P2wsh),
        1 => Ok(OutputKind::P2sh),
        _ => Err(Error::Decode(format!("unknown output kind {v}"))),
    }
}

fn txid_from(bytes: &[u8]) -> Result<Txid, Error> {
    let arr: [u8; 32] =
        bytes.try_into().map_err(|_| Error::Decode("stored txid is not 32 bytes".into()))?;
    Ok(Txid::from_byte_array(arr))
}

fn tx_from(bytes: Option<Vec<u8>>) -> Result<Option<bitcoin::Transaction>, Error> {
    bytes.map(|b| deserialize(&b).map_err(|e| Error::Decode(e.to_string()))).transpose()
}

fn script_from(bytes: &[u8]) -> Result<ChannelScript, Error> {
    ChannelScript::from_script(bitcoin::Script::from_bytes(bytes))
}

impl From<&ChannelParams> for ParamsRecord {
    fn from(p: &ChannelParams) -> Self {
        let f = p.funding();
        ParamsRecord {
            script: p.witness_script().to_bytes(),
            funding_txid: f.outpoint.txid.to_byte_array().to_vec(),
            funding_vout: f.outpoint.vout,
            funding_value: f.value.to_sat(),
            kind: kind_to_u32(f.kind),
            change_script: p.change_script().to_bytes(),
            change_dust: p.change_dust().to_sat(),
        }
    }
}

impl ParamsRecord {
    fn into_params(self) -> Result<ChannelParams, Error> {
        let funding = FundingOutput {
            outpoint: OutPoint { txid: txid_from(&self.funding_txid)?, vout: self.funding_vout },
            value: Amount::from_sat(self.funding_value),
            kind: kind_from_u32(self.kind)?,
        };
        Ok(ChannelParams::from_parts(
            script_from(&self.script)?,
            funding,
            ScriptBuf::from_bytes(self.change_script),
            Amount::from_sat(self.change_dust),
        ))
    }
}

impl MerchantState {
    /// The stored form: deterministic bytes (equal states encode equally).
    pub fn encode(&self) -> Vec<u8> {
        MerchantRecord {
            params: Some((&self.params).into()),
            phase: self.phase.to_u32(),
            accepted: self.accepted.to_sat(),
            signature: self.signature.clone(),
            two1_tx: self.two1_tx.as_ref().map(serialize),
            charged: self.charged.to_sat(),
            settlement_txid: self.settlement_txid.map(|t| t.to_byte_array().to_vec()),
            key_index: self.key_index,
            two1_token_redeemed: self.two1_token_redeemed,
            trigger: self.trigger.as_ref().map(serialize),
            trigger_confirmed: self.trigger_confirmed,
        }
        .encode_to_vec()
    }

    /// Reads a stored state.
    ///
    /// # Errors
    /// [`Error::Decode`] for bytes that are not a merchant state.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let r = MerchantRecord::decode(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        let params = r.params.ok_or_else(|| Error::Decode("no channel parameters".into()))?;
        Ok(MerchantState {
            params: params.into_params()?,
            phase: Phase::from_u32(r.phase)?,
            accepted: Amount::from_sat(r.accepted),
            signature: r.signature,
            two1_tx: tx_from(r.two1_tx)?,
            charged: Amount::from_sat(r.charged),
            settlement_txid: r.settlement_txid.as_deref().map(txid_from).transpose()?,
            key_index: r.key_index,
            two1_token_redeemed: r.two1_token_redeemed,
            trigger: tx_from(r.trigger)?,
            trigger_confirmed: r.trigger_confirmed,
        })
    }
}

impl CustomerState {
    /// The stored form: deterministic bytes (equal states encode equally).
    pub fn encode(&self) -> Vec<u8> {
        CustomerRecord {
            script: self.terms.script.script().to_bytes(),
            kind: kind_to_u32(self.terms.kind),
            change_script: self.terms.change_script.to_bytes(),
            dust_relay_fee_sat_kwu: self.terms.dust_relay_fee.to_sat_per_kwu(),
            cutoff_distance: self.terms.cutoff_distance,
            params: self.params.as_ref().map(Into::into),
            funding_tx: self.funding_tx.as_ref().map(serialize),
            phase: self.phase.to_u32(),
            authorised: self.authorised.to_sat(),
            signed: self.signed.to_sat(),
            signature: self.signature.clone(),
            acked: self.acked.to_sat(),
            closing_txid: self.closing_txid.map(|t| t.to_byte_array().to_vec()),
            key_index: self.terms.key_index,
            customer_key_index: self.terms.customer_key_index,
            peer: self.terms.peer.clone(),
            trigger: self.trigger.as_ref().map(serialize),
        }
        .encode_to_vec()
    }

    /// Reads a stored state.
    ///
    /// # Errors
    /// [`Error::Decode`] for bytes that are not a customer state.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let r = CustomerRecord::decode(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(CustomerState {
            terms: CustomerTerms {
                script: script_from(&r.script)?,
                kind: kind_from_u32(r.kind)?,
                change_script: ScriptBuf::from_bytes(r.change_script),
                dust_relay_fee: FeeRate::from_sat_per_kwu(r.dust_relay_fee_sat_kwu),
                cutoff_distance: r.cutoff_distance,
                key_index: r.key_index,
                customer_key_index: r.customer_key_index,
                peer: r.peer,
            },
            params: r.params.map(ParamsRecord::into_params).transpose()?,
            funding_tx: tx_from(r.funding_tx)?,
            phase: Phase::from_u32(r.phase)?,
            authorised: Amount::from_sat(r.authorised),
            signed: Amount::from_sat(r.signed),
            signature: r.signature,
            acked: Amount::from_sat(r.acked),
            closing_txid: r.closing_txid.as_deref().map(txid_from).transpose()?,
            trigger: tx_from(r.trigger)?,
        })
    }
}
