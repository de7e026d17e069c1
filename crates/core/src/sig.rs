//! ECDSA signature encoding rules as Bitcoin Core applies them.
//!
//! Core's interpreter takes a signature as DER bytes followed by one sighash byte. Consensus
//! (BIP 66, `DERSIG`) requires strict DER; standardness policy also requires a low S value
//! (`LOW_S`, BIP 62) and a defined sighash type (`STRICTENC`). `bitcoinconsensus` cannot be
//! asked for the policy flags, so they are checked here, and the same code serves payment
//! validation, `paychan tx verify` and the node's mempool.

use std::sync::LazyLock;

use bitcoin::secp256k1::{ecdsa, All, Secp256k1};
use bitcoin::sighash::EcdsaSighashType;

use crate::Error;

static SECP: LazyLock<Secp256k1<All>> = LazyLock::new(Secp256k1::new);

/// The process-wide secp256k1 context (signing and verification).
pub fn secp() -> &'static Secp256k1<All> {
    &SECP
}

/// BIP 66's `IsValidSignatureEncoding`: `sig` is strict DER followed by one sighash byte.
pub fn is_strict_der(sig: &[u8]) -> bool {
    let len = sig.len();
    if !(9..=73).contains(&len) || sig[0] != 0x30 || usize::from(sig[1]) != len - 3 {
        return false;
    }
    let len_r = usize::from(sig[3]);
    if 5 + len_r >= len {
        return false;
    }
    let len_s = usize::from(sig[5 + len_r]);
    if len_r + len_s + 7 != len {
        return false;
    }
    if sig[2] != 0x02 || len_r == 0 || sig[4] & 0x80 != 0 {
        return false;
    }
    if len_r > 1 && sig[4] == 0x00 && sig[5] & 0x80 == 0 {
        return false;
    }
    if sig[len_r + 4] != 0x02 || len_s == 0 || sig[len_r + 6] & 0x80 != 0 {
        return false;
    }
    if len_s > 1 && sig[len_r + 6] == 0x00 && sig[len_r + 7] & 0x80 == 0 {
        return false;
    }
    true
}

/// Core's `IsDefinedHashtypeSignature`: `ALL`, `NONE` or `SINGLE`, with or without
/// `ANYONECANPAY`.
pub fn is_defined_hashtype(flag: u8) -> bool {
    (1..=3).contains(&(flag & !0x80))
}

/// Whether a DER signature (without its sighash byte) has a low S value.
///
/// Returns `false` when the DER cannot be parsed.
pub fn is_low_s(der: &[u8]) -> bool {
    match ecdsa::Signature::from_der(der) {
        Ok(sig) => {
            let mut normal = sig;
            normal.normalize_s();
            normal == sig
        }
        Err(_) => false,
    }
}

/// Parses `bytes` (DER ‖ sighash byte) the way the merchant's payment rule 3 does: strict
/// DER, then low S, then the flag must equal `expected`.
///
/// # Errors
/// [`Error::SignatureNotDer`], [`Error::SignatureHighS`] or [`Error::WrongSighashFlag`].
pub fn parse_strict(bytes: &[u8], expected: EcdsaSighashType) -> Result<ecdsa::Signature, Error> {
    if !is_strict_der(bytes) {
        return Err(Error::SignatureNotDer);
    }
    let (flag, der) = match bytes.split_last() {
        Some((f, d)) => (*f, d),
        None => return Err(Error::SignatureNotDer),
    };
    let sig = ecdsa::Signature::from_der(der).map_err(|_| Error::SignatureNotDer)?;
    let mut normal = sig;
    normal.normalize_s();
    if normal != sig {
        return Err(Error::SignatureHighS);
    }
    if flag != expected as u8 {
        return Err(Error::WrongSighashFlag { expected: expected as u8, got: flag });
    }
    Ok(sig)
}

/// Serialises a signature with its sighash byte, as it goes on chain.
pub fn serialize(sig: &ecdsa::Signature, flag: EcdsaSighashType) -> Vec<u8> {
    let der = sig.serialize_der();
    let mut v = Vec::with_capacity(der.len() + 1);
    v.extend_from_slice(&der);
    v.push(flag as u8);
    v
}

/// The high-S twin of a signature (`S → n − S`): the BIP 62 malleation that consensus accepts
/// and standardness refuses. For adversarial tests.
#[doc(hidden)]
pub fn malleate_s(sig: &ecdsa::Signature) -> ecdsa::Signature {
    // The curve order n, big-endian.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];
    let mut compact = sig.serialize_compact();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(compact[32 + i]) - borrow;
        compact[32 + i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    // n − s for 0 < s < n is again in range, so parsing cannot fail.
    ecdsa::Signature::from_compact(&compact).unwrap_or(*sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Message, SecretKey};

    #[test]
    fn strict_der_accepts_real_and_refuses_mangled() {
        let sk = SecretKey::from_slice(&[3; 32]).unwrap();
        let sig = secp().sign_ecdsa(&Message::from_digest([9; 32]), &sk);
        let good = serialize(&sig, EcdsaSighashType::All);
        assert!(is_strict_der(&good));
        assert!(parse_strict(&good, EcdsaSighashType::All).is_ok());
        assert_eq!(
            parse_strict(&good, EcdsaSighashType::SinglePlusAnyoneCanPay),
            Err(Error::WrongSighashFlag { expected: 0x83, got: 0x01 })
        );
        let mut bad = good.clone();
        bad[1] += 1;
        assert!(!is_strict_der(&bad));
        assert_eq!(parse_strict(&bad, EcdsaSighashType::All), Err(Error::SignatureNotDer));
        // a padded R (extra leading zero) is not strict DER
        let mut padded = vec![0x30, good[1] + 1, 0x02, good[3] + 1, 0x00];
        padded.extend_from_slice(&good[4..]);
        assert!(!is_strict_der(&padded));
    }

    #[test]
    fn high_s_is_detected() {
        let sk = SecretKey::from_slice(&[4; 32]).unwrap();
        let sig = secp().sign_ecdsa(&Message::from_digest([1; 32]), &sk);
        let high = malleate_s(&sig);
        assert_ne!(high, sig);
        let bytes = serialize(&high, EcdsaSighashType::All);
        assert!(is_strict_der(&bytes));
        assert!(!is_low_s(&bytes[..bytes.len() - 1]));
        assert_eq!(parse_strict(&bytes, EcdsaSighashType::All), Err(Error::SignatureHighS));
        let mut back = high;
        back.normalize_s();
        assert_eq!(back, sig);
    }

    #[test]
    fn defined_hashtypes() {
        for f in [0x01, 0x02, 0x03, 0x81, 0x82, 0x83] {
            assert!(is_defined_hashtype(f));
        }
        for f in [0x00, 0x04, 0x80, 0x84, 0x41] {
            assert!(!is_defined_hashtype(f));
        }
    }
}
