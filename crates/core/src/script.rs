//! The channel script (DESIGN §2) and its funding outputs.
//!
//! ```text
//! OP_IF
//!     <merchant_pubkey> OP_CHECKSIGVERIFY
//! OP_ELSE
//!     <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP      (a CLTV channel)
//!     <blocks> OP_CHECKSEQUENCEVERIFY OP_DROP      (a dispute channel's script D, §3a)
//! OP_ENDIF
//! <customer_pubkey> OP_CHECKSIG
//! ```
//!
//! The `ELSE` branch is the channel's [`Lock`]: an absolute expiry, or a dispute period counted
//! from the confirmation of the output (the dispute channel's trigger output).
//!
//! The script is byte-identical to the 21 (two1) redeem script for expiries before 2038. From
//! 2038 on (a Unix time ≥ 2³¹) the expiry needs a fifth byte so that it stays a positive script
//! number; two1 omitted that byte, which made its refunds unspendable. [`ChannelScript`] always
//! encodes minimally and refuses to parse a negative expiry.

use bitcoin::absolute::LockTime;
use bitcoin::opcodes::all::{
    OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CLTV, OP_CSV, OP_DROP, OP_ELSE, OP_ENDIF, OP_IF,
};
use bitcoin::script::{Builder, Instruction, PushBytesBuf};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Network, Script, ScriptBuf};

use crate::Error;

/// How a channel's funding output commits to the channel script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// Pay-to-witness-script-hash (BIP 141): the default; txids cannot be malleated.
    P2wsh,
    /// Pay-to-script-hash (BIP 16): the 21 (two1) layout, for compatibility.
    P2sh,
}

impl OutputKind {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::P2wsh => "p2wsh",
            OutputKind::P2sh => "p2sh",
        }
    }
}

impl core::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for OutputKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "p2wsh" => Ok(OutputKind::P2wsh),
            "p2sh" => Ok(OutputKind::P2sh),
            _ => Err(Error::malformed("output kind", format!("{s:?} is neither p2wsh nor p2sh"))),
        }
    }
}

/// The smallest expiry accepted: anything below would be pushed as a small-integer opcode and
/// is no sensible channel expiry anyway.
const MIN_EXPIRY: u32 = 17;

/// What lets the customer spend alone: the script's `ELSE` branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lock {
    /// `<expiry> OP_CHECKLOCKTIMEVERIFY`: after an absolute expiry (the CLTV channel of §2,
    /// and 21's).
    Expiry(LockTime),
    /// `<blocks> OP_CHECKSEQUENCEVERIFY`: `blocks` after the output confirms (a dispute
    /// channel's script D, §3a).
    Dispute(u16),
}

/// The parameters of one channel script: two keys and the customer's [`Lock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelScript {
    merchant: PublicKey,
    customer: PublicKey,
    lock: Lock,
}

impl ChannelScript {
    /// Creates the script parameters.
    ///
    /// `expiry` is an absolute locktime: a block height below 500,000,000, or a Unix time.
    ///
    /// # Errors
    /// [`Error::InvalidExpiry`] for an expiry below 17 or when both keys are the same.
    pub fn new(merchant: PublicKey, customer: PublicKey, expiry: LockTime) -> Result<Self, Error> {
        let raw = expiry.to_consensus_u32();
        if raw < MIN_EXPIRY {
            return Err(Error::InvalidExpiry { expiry: raw, reason: "must be at least 17" });
        }
        if merchant == customer {
            return Err(Error::NotChannelScript("merchant and customer keys are the same"));
        }
        Ok(ChannelScript { merchant, customer, lock: Lock::Expiry(expiry) })
    }

    /// The script D of a dispute channel: the customer spends alone `blocks` after the output
    /// confirms (BIP 68 block count, so at most 65,535).
    ///
    /// # Errors
    /// [`Error::InvalidExpiry`] for a period of 0 blocks; [`Error::NotChannelScript`] when both
    /// keys are the same.
    pub fn dispute(merchant: PublicKey, customer: PublicKey, blocks: u16) -> Result<Self, Error> {
        if blocks == 0 {
            return Err(Error::InvalidExpiry { expiry: 0, reason: "a dispute period of 0 blocks" });
        }
        if merchant == customer {
            return Err(Error::NotChannelScript("merchant and customer keys are the same"));
        }
        Ok(ChannelScript { merchant, customer, lock: Lock::Dispute(blocks) })
    }

    /// The customer's lock (the `ELSE` branch).
    pub fn lock(&self) -> Lock {
        self.lock
    }

    /// The merchant's key (the `IF` branch).
    pub fn merchant(&self) -> PublicKey {
        self.merchant
    }

    /// The customer's key (signs every spend).
    pub fn customer(&self) -> PublicKey {
        self.customer
    }

    /// The absolute expiry after which the customer alone can spend (the `ELSE` branch of a
    /// CLTV channel); `None` for a dispute channel, which never expires.
    pub fn expiry(&self) -> Option<LockTime> {
        match self.lock {
            Lock::Expiry(e) => Some(e),
            Lock::Dispute(_) => None,
        }
    }

    /// A dispute channel's dispute period, in blocks; `None` for a CLTV channel.
    pub fn dispute_blocks(&self) -> Option<u16> {
        match self.lock {
            Lock::Dispute(b) => Some(b),
            Lock::Expiry(_) => None,
        }
    }

    /// The script itself: the P2WSH witness script or the P2SH redeem script.
    pub fn script(&self) -> ScriptBuf {
        let b = Builder::new()
            .push_opcode(OP_IF)
            .push_slice(self.merchant.serialize())
            .push_opcode(OP_CHECKSIGVERIFY)
            .push_opcode(OP_ELSE);
        let b = match self.lock {
            Lock::Expiry(e) => {
                b.push_slice(encode_script_num(e.to_consensus_u32())).push_opcode(OP_CLTV)
            }
            // push_int: OP_1..OP_16 for small periods (MINIMALDATA), a minimal push above.
            Lock::Dispute(blocks) => b.push_int(i64::from(blocks)).push_opcode(OP_CSV),
        };
        b.push_opcode(OP_DROP)
            .push_opcode(OP_ENDIF)
            .push_slice(self.customer.serialize())
            .push_opcode(OP_CHECKSIG)
            .into_script()
    }

    /// Parses a channel script, accepting only the exact, minimally encoded form
    /// [`ChannelScript::script`] produces: parsing and rebuilding gives the same bytes.
    ///
    /// # Errors
    /// [`Error::NotChannelScript`] naming the first difference; [`Error::InvalidExpiry`] for a
    /// negative or too small expiry.
    pub fn from_script(script: &Script) -> Result<Self, Error> {
        let mut ins = script.instructions();
        let mut next = || -> Result<Instruction<'_>, Error> {
            match ins.next() {
                Some(Ok(i)) => Ok(i),
                Some(Err(_)) => Err(Error::NotChannelScript("truncated push")),
                None => Err(Error::NotChannelScript("script ends early")),
            }
        };
        let op = |i: Instruction<'_>, want: bitcoin::Opcode, what: &'static str| match i {
            Instruction::Op(o) if o == want => Ok(()),
            _ => Err(Error::NotChannelScript(what)),
        };
        op(next()?, OP_IF, "does not start with OP_IF")?;
        let merchant = parse_key(next()?)?;
        op(next()?, OP_CHECKSIGVERIFY, "expected OP_CHECKSIGVERIFY after the merchant key")?;
        op(next()?, OP_ELSE, "expected OP_ELSE")?;
        let number = match next()? {
            Instruction::PushBytes(b) => decode_script_num(b.as_bytes())?,
            // OP_1..OP_16: a small dispute period.
            Instruction::Op(o) if (0x51..=0x60).contains(&o.to_u8()) => u32::from(o.to_u8() - 0x50),
            Instruction::Op(_) => return Err(Error::NotChannelScript("expiry is not a number")),
        };
        let lock = match next()? {
            Instruction::Op(o) if o == OP_CLTV => Lock::Expiry(LockTime::from_consensus(number)),
            Instruction::Op(o) if o == OP_CSV => Lock::Dispute(
                u16::try_from(number)
                    .map_err(|_| Error::NotChannelScript("dispute period above 65,535 blocks"))?,
            ),
            _ => {
                return Err(Error::NotChannelScript(
                    "expected OP_CHECKLOCKTIMEVERIFY or OP_CHECKSEQUENCEVERIFY",
                ))
            }
        };
        op(next()?, OP_DROP, "expected OP_DROP")?;
        op(next()?, OP_ENDIF, "expected OP_ENDIF")?;
        let customer = parse_key(next()?)?;
        op(next()?, OP_CHECKSIG, "expected OP_CHECKSIG at the end")?;
        if ins.next().is_some() {
            return Err(Error::NotChannelScript("trailing data after OP_CHECKSIG"));
        }
        let parsed = match lock {
            Lock::Expiry(expiry) => ChannelScript::new(merchant, customer, expiry)?,
            Lock::Dispute(blocks) => ChannelScript::dispute(merchant, customer, blocks)?,
        };
        // Reject any push encoded non-minimally (e.g. OP_PUSHDATA1 for a 33-byte key): the
        // script must be exactly what we would build, or two peers could disagree on the hash.
        if parsed.script().as_bytes() != script.as_bytes() {
            return Err(Error::NotChannelScript("pushes are not minimally encoded"));
        }
        Ok(parsed)
    }

    /// The funding output's `scriptPubKey` for `kind`.
    pub fn script_pubkey(&self, kind: OutputKind) -> ScriptBuf {
        let script = self.script();
        match kind {
            OutputKind::P2wsh => ScriptBuf::new_p2wsh(&script.wscript_hash()),
            OutputKind::P2sh => ScriptBuf::new_p2sh(&script.script_hash()),
        }
    }

    /// The funding address for `kind` on `network`.
    ///
    /// # Errors
    /// None in practice: a channel script (80 or 81 bytes) is far below the 520-byte P2SH limit.
    pub fn address(&self, kind: OutputKind, network: Network) -> Result<Address, Error> {
        Address::from_script(&self.script_pubkey(kind), network)
            .map_err(|e| Error::malformed("funding address", e))
    }

    /// Which kind of output `script_pubkey` is for this channel, if it pays it at all.
    pub fn output_kind_of(&self, script_pubkey: &Script) -> Option<OutputKind> {
        let script = self.script();
        if script_pubkey.is_p2wsh()
            && script_pubkey.as_bytes()[2..] == script.wscript_hash().to_byte_array()[..]
        {
            Some(OutputKind::P2wsh)
        } else if script_pubkey.is_p2sh()
            && script_pubkey.as_bytes()[2..22] == script.script_hash().to_byte_array()[..]
        {
            Some(OutputKind::P2sh)
        } else {
            None
        }
    }
}

use bitcoin::hashes::Hash as _;

fn parse_key(i: Instruction<'_>) -> Result<PublicKey, Error> {
    match i {
        Instruction::PushBytes(b) if b.len() == 33 => PublicKey::from_slice(b.as_bytes())
            .map_err(|_| Error::NotChannelScript("key is not a valid curve point")),
        Instruction::PushBytes(b) if b.len() == 65 => {
            Err(Error::NotChannelScript("uncompressed keys are not allowed"))
        }
        _ => Err(Error::NotChannelScript("expected a 33-byte compressed public key")),
    }
}

/// Encodes a non-negative number as a minimal script number (`CScriptNum`), as
/// `OP_CHECKLOCKTIMEVERIFY` reads it: little-endian, with an extra `0x00` byte when the top bit
/// of the most significant byte is set (so a Unix time from 2038 on takes 5 bytes).
pub fn encode_script_num(n: u32) -> PushBytesBuf {
    let mut out = PushBytesBuf::new();
    let mut v = n;
    while v > 0 {
        // Pushing onto a PushBytesBuf fails only past 2^32 bytes.
        let _ = out.push((v & 0xff) as u8);
        v >>= 8;
    }
    if out.as_bytes().last().is_some_and(|b| b & 0x80 != 0) {
        let _ = out.push(0x00);
    }
    out
}

/// Decodes a minimal, non-negative script number of at most 5 bytes (the size
/// `OP_CHECKLOCKTIMEVERIFY` accepts) that fits a `u32` locktime.
///
/// # Errors
/// [`Error::InvalidExpiry`] when the encoding is not minimal, is negative (two1's post-2038
/// bug), or does not fit a locktime.
pub fn decode_script_num(bytes: &[u8]) -> Result<u32, Error> {
    let bad = |reason| Error::InvalidExpiry { expiry: 0, reason };
    let Some(&last) = bytes.last() else {
        return Err(bad("empty expiry push"));
    };
    if bytes.len() > 5 {
        return Err(bad("longer than the 5 bytes OP_CHECKLOCKTIMEVERIFY reads"));
    }
    if last & 0x7f == 0 && (bytes.len() == 1 || bytes[bytes.len() - 2] & 0x80 == 0) {
        return Err(bad("not minimally encoded"));
    }
    if last & 0x80 != 0 {
        return Err(bad(
            "negative script number: the refund could never be spent (two1's post-2038 encoding)",
        ));
    }
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    u32::try_from(v).map_err(|_| bad("does not fit a 32-bit locktime"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn keys() -> (PublicKey, PublicKey) {
        let s = Secp256k1::new();
        let m = SecretKey::from_slice(&[1; 32]).unwrap().public_key(&s);
        let c = SecretKey::from_slice(&[2; 32]).unwrap().public_key(&s);
        (m, c)
    }

    #[test]
    fn script_num_round_trips_and_is_minimal() {
        for n in [
            17u32,
            127,
            128,
            255,
            256,
            0x7fff,
            0x8000,
            499_999_999,
            1_450_302_052,
            2_000_000_000,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX,
        ] {
            let enc = encode_script_num(n);
            assert_eq!(decode_script_num(enc.as_bytes()).unwrap(), n, "{n}");
        }
        assert_eq!(encode_script_num(2_000_000_000).as_bytes(), &[0x00, 0x94, 0x35, 0x77]);
        assert_eq!(encode_script_num(0x8000_0000).as_bytes(), &[0, 0, 0, 0x80, 0]);
        assert_eq!(encode_script_num(128).as_bytes(), &[0x80, 0x00]);
        // two1's post-2038 form: four bytes with the sign bit set
        assert!(matches!(decode_script_num(&[0, 0, 0, 0x80]), Err(Error::InvalidExpiry { .. })));
        // non-minimal
        assert!(decode_script_num(&[0x11, 0x00]).is_err());
        assert!(decode_script_num(&[]).is_err());
    }

    #[test]
    fn script_round_trips_for_time_and_height_expiries() {
        let (m, c) = keys();
        for expiry in [
            LockTime::from_consensus(800_000),
            LockTime::from_consensus(1_450_302_052),
            LockTime::from_consensus(3_000_000_000),
        ] {
            let cs = ChannelScript::new(m, c, expiry).unwrap();
            let s = cs.script();
            assert_eq!(ChannelScript::from_script(&s).unwrap(), cs);
            for kind in [OutputKind::P2wsh, OutputKind::P2sh] {
                assert_eq!(cs.output_kind_of(&cs.script_pubkey(kind)), Some(kind));
                assert_eq!(
                    cs.address(kind, Network::Regtest).unwrap().script_pubkey(),
                    cs.script_pubkey(kind)
                );
            }
        }
    }

    #[test]
    fn dispute_scripts_round_trip_with_minimal_csv_pushes() {
        let (m, c) = keys();
        for blocks in [1u16, 10, 16, 17, 127, 128, 144, 2016, 0x7fff, 0x8000, u16::MAX] {
            let cs = ChannelScript::dispute(m, c, blocks).unwrap();
            assert_eq!(cs.lock(), Lock::Dispute(blocks));
            assert_eq!(cs.expiry(), None);
            assert_eq!(cs.dispute_blocks(), Some(blocks));
            let s = cs.script();
            assert_eq!(ChannelScript::from_script(&s).unwrap(), cs, "{blocks}");
            assert!(s.instructions().any(|i| i == Ok(Instruction::Op(OP_CSV))));
        }
        // 1..16 as OP_N (MINIMALDATA), 144 as a two-byte push (0x90 has the sign bit).
        let ten = ChannelScript::dispute(m, c, 10).unwrap().script();
        assert_eq!(ten.as_bytes()[37], 0x5a, "OP_10");
        let day = ChannelScript::dispute(m, c, 144).unwrap().script();
        assert_eq!(&day.as_bytes()[37..40], &[0x02, 0x90, 0x00]);
        // A dispute script and a CLTV script with the same number differ.
        let cltv = ChannelScript::new(m, c, LockTime::from_consensus(144)).unwrap();
        assert_ne!(cltv.script(), day);
        assert!(ChannelScript::dispute(m, c, 0).is_err());
        assert!(ChannelScript::dispute(m, m, 144).is_err());
        // A period pushed non-minimally (OP_10 as a one-byte push) is refused.
        let mut padded = ten.clone().into_bytes();
        padded.splice(37..38, [0x01, 0x0a]);
        assert!(ChannelScript::from_script(Script::from_bytes(&padded)).is_err());
    }

    #[test]
    fn parse_refuses_near_misses() {
        let (m, c) = keys();
        let cs = ChannelScript::new(m, c, LockTime::from_consensus(1_700_000_000)).unwrap();
        let good = cs.script().into_bytes();
        // every truncation fails
        for n in 0..good.len() {
            assert!(ChannelScript::from_script(Script::from_bytes(&good[..n])).is_err(), "len {n}");
        }
        // trailing byte
        let mut longer = good.clone();
        longer.push(0x75);
        assert!(ChannelScript::from_script(Script::from_bytes(&longer)).is_err());
        // swapped CHECKSIGVERIFY for CHECKSIG
        let mut swapped = good.clone();
        swapped[35] = 0xac;
        assert!(ChannelScript::from_script(Script::from_bytes(&swapped)).is_err());
        assert!(ChannelScript::new(m, m, LockTime::from_consensus(1_700_000_000)).is_err());
        assert!(ChannelScript::new(m, c, LockTime::from_consensus(16)).is_err());
    }
}
