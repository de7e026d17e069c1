//! The 21 (two1) channel operations the REST adapter ([`crate::two1`]) calls: one key for
//! every 21 channel, P2SH deposits, whole half-signed payment transactions, tokens.

use paychan_core::bitcoin::secp256k1::PublicKey;
use paychan_core::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction};
use paychan_core::channel::merchant::MerchantChannel;
use paychan_core::msg::Closed;
use paychan_core::Error;

use super::ChannelServer;
use crate::MerchantError;

/// The merchant key index used for every 21 (two1) channel: two1's `GET /payment` shows one
/// key. Far above the indices handed out one by one for the paychan protocol.
pub const TWO1_KEY_INDEX: u32 = 0x7fff_ffff;

impl ChannelServer {
    /// The key two1 clients see at `GET /payment` (one key for every 21 channel, as two1's
    /// merchant has): index [`TWO1_KEY_INDEX`] of the merchant's key chain.
    ///
    /// # Errors
    /// Key errors.
    pub fn two1_key(&self) -> Result<PublicKey, MerchantError> {
        let key = self.keys.secret(TWO1_KEY_INDEX)?;
        Ok(PublicKey::from_secret_key(paychan_core::sig::secp(), &key))
    }

    /// Opens a 21 channel: a P2SH deposit paying `redeem_script`, whose merchant key must be
    /// [`ChannelServer::two1_key`]. The deposit is broadcast (it must be valid).
    ///
    /// # Errors
    /// The policy's refusal, a script that is not a channel script for our key, a deposit the
    /// node refuses, or a deposit already used.
    pub async fn two1_open(
        &self,
        deposit: &Transaction,
        redeem_script: &paychan_core::bitcoin::Script,
    ) -> Result<OutPoint, MerchantError> {
        let script = paychan_core::script::ChannelScript::from_script(redeem_script)?;
        if script.merchant() != self.two1_key()? {
            return Err(Error::NotChannelScript("the merchant key is not this merchant's").into());
        }
        let funding = paychan_core::tx::FundingOutput::find(deposit, &script)?;
        if funding.kind != paychan_core::script::OutputKind::P2sh {
            return Err(Error::NotChannelScript("21 deposits pay P2SH").into());
        }
        let change = ScriptBuf::new_p2pkh(
            &paychan_core::bitcoin::CompressedPublicKey(script.customer()).pubkey_hash(),
        );
        let params = paychan_core::tx::ChannelParams::new(
            script,
            funding,
            change,
            self.config.policy.dust_relay_fee,
        )?;
        let id = params.id();
        self.ensure_new(id).await?;
        let now = (self.clock)();
        let channel =
            MerchantChannel::open(params, self.config.policy.clone(), &now, TWO1_KEY_INDEX)?;
        self.admit(id, channel, Some(deposit.clone()), None).await?;
        Ok(id)
    }

    /// The channel whose deposit is `txid` (21 channels are named by their deposit txid).
    ///
    /// # Errors
    /// The store's.
    pub async fn find_by_txid(
        &self,
        txid: &paychan_core::bitcoin::Txid,
    ) -> Result<Option<OutPoint>, MerchantError> {
        if let Some(id) = self.slots().keys().find(|o| o.txid == *txid) {
            return Ok(Some(*id));
        }
        let rows = self
            .store
            .list(paychan_store::Query {
                role: Some(paychan_store::Role::Merchant),
                funding_txid: Some(*txid),
                ..Default::default()
            })
            .await?;
        Ok(rows.into_iter().find(|r| !r.phase.is_final()).map(|r| r.id))
    }

    /// A 21 payment: a whole half-signed transaction. Returns the increment it pays.
    ///
    /// # Errors
    /// The rule it breaks (the channel is unchanged).
    pub async fn two1_pay(&self, id: OutPoint, tx: &Transaction) -> Result<Amount, MerchantError> {
        self.on_fresh_state(|| async {
            let mut s = self.payable(id).await?;
            let now = (self.clock)();
            let increment = s.channel.handle_two1_payment(&now, tx)?;
            self.drain(&mut s).await?;
            self.token_index().insert(tx.compute_txid(), id);
            Ok(increment)
        })
        .await
    }

    /// A 21 close: `signature` is the customer's DER signature of SHA-256 of the deposit txid's
    /// hex text. Settles and returns the settlement.
    ///
    /// # Errors
    /// [`Error::SignatureNotDer`], [`Error::BadSignature`], [`Error::InvalidTransition`] when
    /// nothing was paid.
    pub async fn two1_close(
        &self,
        id: OutPoint,
        signature: &[u8],
    ) -> Result<Closed, MerchantError> {
        use paychan_core::bitcoin::hashes::{sha256, Hash};
        // As `settle`: checked again on the stored channel after a conflict.
        self.on_fresh_state(|| async {
            let slot = self.live(&id).await?;
            let mut s = slot.lock().await;
            self.ready_to_pay(&mut s, id).await?;
            let digest = sha256::Hash::hash(id.txid.to_string().as_bytes()).to_byte_array();
            let sig = paychan_core::bitcoin::secp256k1::ecdsa::Signature::from_der(signature)
                .map_err(|_| Error::SignatureNotDer)?;
            let mut normal = sig;
            normal.normalize_s();
            paychan_core::sig::secp()
                .verify_ecdsa(
                    &paychan_core::bitcoin::secp256k1::Message::from_digest(digest),
                    &normal,
                    &s.channel.state().params.script().customer(),
                )
                .map_err(|_| Error::BadSignature)?;
            if s.channel.accepted() == Amount::ZERO {
                return Err(
                    Error::InvalidTransition { phase: s.channel.phase(), event: "close" }.into()
                );
            }
            self.settle_locked(&mut s).await
        })
        .await
    }
}
