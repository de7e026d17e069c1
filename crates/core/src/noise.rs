//! The channel protocol's transport: BOLT 8's `Noise_XK_secp256k1_ChaChaPoly_SHA256`, sans-I/O.
//!
//! The customer (initiator) knows the merchant's node key before it dials: it is part of the
//! merchant's address (`<node id>@host:port`). Three acts (50, 50 and 66 bytes) prove that the
//! merchant holds that key and give both sides a pair of ChaCha20-Poly1305 keys; each message
//! is then `encrypted length (2 + 16 bytes) || encrypted body (len + 16 bytes)`, at most 65,535
//! bytes of plaintext, and each key is rotated after 1,000 uses. Nothing here does I/O: the
//! caller feeds the bytes read and sends the bytes returned, and supplies the ephemeral keys
//! (its randomness), so the published test vectors run as they are (BOLT 8, Appendix A).
//!
//! A failed check consumes the handshake; the caller closes the connection without sending
//! anything more, as BOLT 8 requires.

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use secp256k1::ecdh::SharedSecret;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

use crate::Error;

/// The protocol name hashed into the handshake's first state.
const PROTOCOL_NAME: &[u8] = b"Noise_XK_secp256k1_ChaChaPoly_SHA256";
/// BOLT 8's prologue.
const PROLOGUE: &[u8] = b"lightning";
/// The only handshake version.
const VERSION: u8 = 0;
/// A Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Act one and act two.
pub const ACT_ONE_LEN: usize = 50;
/// Act two.
pub const ACT_TWO_LEN: usize = 50;
/// Act three.
pub const ACT_THREE_LEN: usize = 66;
/// The encrypted length prefix of every message.
pub const HEADER_LEN: usize = 2 + TAG_LEN;
/// The longest message body (plaintext).
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// A key is replaced after this many uses (each message uses its key twice).
const ROTATE_AFTER: u64 = 1_000;

type Key32 = [u8; 32];

/// `HKDF(salt, ikm)` of BOLT 8: RFC 5869 with SHA-256 and an empty `info`, two 32-byte outputs.
fn hkdf(salt: &Key32, ikm: &[u8]) -> (Key32, Key32) {
    let mut extract = hmac::HmacEngine::<sha256::Hash>::new(salt);
    extract.input(ikm);
    let prk = hmac::Hmac::<sha256::Hash>::from_engine(extract).to_byte_array();
    let mut t1 = hmac::HmacEngine::<sha256::Hash>::new(&prk);
    t1.input(&[1]);
    let t1 = hmac::Hmac::<sha256::Hash>::from_engine(t1).to_byte_array();
    let mut t2 = hmac::HmacEngine::<sha256::Hash>::new(&prk);
    t2.input(&t1);
    t2.input(&[2]);
    (t1, hmac::Hmac::<sha256::Hash>::from_engine(t2).to_byte_array())
}

/// The 96-bit nonce: 32 zero bits, then `n` little-endian.
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

/// ChaCha20-Poly1305 (RFC 8439) under `k`: `ring`'s, whose assembly is several times faster
/// than portable code on small messages (a payment is about 120 bytes).
fn cipher(k: &Key32) -> Option<LessSafeKey> {
    // A 32-byte key is always the right length for ChaCha20-Poly1305.
    UnboundKey::new(&CHACHA20_POLY1305, k).ok().map(LessSafeKey::new)
}

/// `encryptWithAD`: `buf` is encrypted in place and its tag appended.
fn seal(k: &Key32, n: u64, ad: &[u8], buf: &mut Vec<u8>) {
    // Sealing fails only past ChaCha20's 256 GiB per nonce, far above a message's 64 KiB.
    if let Some(Ok(tag)) =
        cipher(k).map(|c| c.seal_in_place_separate_tag(nonce(n), Aad::from(ad), buf))
    {
        buf.extend_from_slice(tag.as_ref());
    }
}

/// `decryptWithAD`: checks and strips the tag of `buf`, decrypting it in place.
fn open(k: &Key32, n: u64, ad: &[u8], buf: &mut Vec<u8>) -> Result<(), ()> {
    if buf.len() < TAG_LEN {
        return Err(());
    }
    let c = cipher(k).ok_or(())?;
    let plain = c.open_in_place(nonce(n), Aad::from(ad), buf).map_err(|_| ())?.len();
    buf.truncate(plain);
    Ok(())
}

fn ecdh(point: &PublicKey, key: &SecretKey) -> Key32 {
    // libsecp256k1's default: SHA-256 of the compressed shared point, as BOLT 8 defines ECDH.
    SharedSecret::new(point, key).secret_bytes()
}

/// `ck`, `h` and the last temporary key: what both sides accumulate.
#[derive(Clone)]
struct Symmetric {
    ck: Key32,
    h: Key32,
    temp_k: Key32,
}

impl Symmetric {
    /// The state both sides start from, with the responder's static key mixed in.
    fn new(responder_static: &PublicKey) -> Self {
        let h = sha256::Hash::hash(PROTOCOL_NAME).to_byte_array();
        let mut s = Symmetric { ck: h, h, temp_k: [0; 32] };
        s.mix_hash(PROLOGUE);
        s.mix_hash(&responder_static.serialize());
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut e = sha256::Hash::engine();
        e.input(&self.h);
        e.input(data);
        self.h = sha256::Hash::from_engine(e).to_byte_array();
    }

    fn mix_key(&mut self, ss: &Key32) {
        (self.ck, self.temp_k) = hkdf(&self.ck, ss);
    }

    /// `encryptWithAD(temp_k, n, h, plaintext)`, then `h = SHA-256(h || c)`.
    fn encrypt_and_hash(&mut self, n: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut c = plaintext.to_vec();
        seal(&self.temp_k, n, &self.h, &mut c);
        self.mix_hash(&c);
        c
    }

    /// `decryptWithAD(temp_k, n, h, c)`, then `h = SHA-256(h || c)`.
    fn decrypt_and_hash(&mut self, n: u64, c: &[u8]) -> Result<Vec<u8>, Error> {
        let mut p = c.to_vec();
        open(&self.temp_k, n, &self.h, &mut p).map_err(|()| Error::HandshakeFailed)?;
        self.mix_hash(c);
        Ok(p)
    }
}

/// Checks an act's length and version; returns its body (after the version byte).
fn act(bytes: &[u8], expected: usize) -> Result<&[u8], Error> {
    if bytes.len() != expected {
        return Err(Error::ActLength { expected, got: bytes.len() });
    }
    match bytes[0] {
        VERSION => Ok(&bytes[1..]),
        v => Err(Error::HandshakeVersion(v)),
    }
}

fn public_key(bytes: &[u8]) -> Result<PublicKey, Error> {
    PublicKey::from_slice(bytes).map_err(|_| Error::HandshakeKey)
}

/// The customer's side of the handshake, after act one was sent.
pub struct Initiator {
    sym: Symmetric,
    local: SecretKey,
    ephemeral: SecretKey,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with the peer whose node key is `remote`, as `local`, with the fresh
    /// `ephemeral` key (the caller's randomness). Returns act one, to send.
    pub fn new(
        local: SecretKey,
        remote: &PublicKey,
        ephemeral: SecretKey,
    ) -> (Self, [u8; ACT_ONE_LEN]) {
        let secp = Secp256k1::signing_only();
        let mut sym = Symmetric::new(remote);
        let e = PublicKey::from_secret_key(&secp, &ephemeral);
        sym.mix_hash(&e.serialize());
        sym.mix_key(&ecdh(remote, &ephemeral));
        let c = sym.encrypt_and_hash(0, &[]);
        let mut out = [0u8; ACT_ONE_LEN];
        out[1..34].copy_from_slice(&e.serialize());
        out[34..].copy_from_slice(&c);
        (Initiator { sym, local, ephemeral }, out)
    }

    /// Reads act two; returns act three, to send, and the session.
    ///
    /// # Errors
    /// [`Error::ActLength`], [`Error::HandshakeVersion`], [`Error::HandshakeKey`], or
    /// [`Error::HandshakeFailed`]: the peer does not hold the node key that was dialed.
    pub fn read_act_two(mut self, bytes: &[u8]) -> Result<([u8; ACT_THREE_LEN], Session), Error> {
        let body = act(bytes, ACT_TWO_LEN)?;
        let re = public_key(&body[..33])?;
        self.sym.mix_hash(&re.serialize());
        self.sym.mix_key(&ecdh(&re, &self.ephemeral));
        self.sym.decrypt_and_hash(0, &body[33..])?;
        let secp = Secp256k1::signing_only();
        let s = PublicKey::from_secret_key(&secp, &self.local);
        let c = self.sym.encrypt_and_hash(1, &s.serialize());
        self.sym.mix_key(&ecdh(&re, &self.local));
        let t = self.sym.encrypt_and_hash(0, &[]);
        let (sk, rk) = hkdf(&self.sym.ck, &[]);
        let mut out = [0u8; ACT_THREE_LEN];
        out[1..50].copy_from_slice(&c);
        out[50..].copy_from_slice(&t);
        Ok((out, Session::new(self.sym.ck, sk, rk)))
    }
}

/// The merchant's side of the handshake, before act one.
pub struct Responder {
    sym: Symmetric,
    local: SecretKey,
    ephemeral: SecretKey,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

/// The merchant's side of the handshake, after act two was sent.
pub struct AwaitingActThree {
    sym: Symmetric,
    ephemeral: SecretKey,
}

impl std::fmt::Debug for AwaitingActThree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingActThree").finish_non_exhaustive()
    }
}

impl Responder {
    /// Waits for a handshake to the node key `local`, answering with the fresh `ephemeral` key.
    pub fn new(local: SecretKey, ephemeral: SecretKey) -> Self {
        let secp = Secp256k1::signing_only();
        let sym = Symmetric::new(&PublicKey::from_secret_key(&secp, &local));
        Responder { sym, local, ephemeral }
    }

    /// Reads act one; returns act two, to send.
    ///
    /// # Errors
    /// [`Error::ActLength`], [`Error::HandshakeVersion`], [`Error::HandshakeKey`], or
    /// [`Error::HandshakeFailed`]: the initiator does not know this node's key.
    pub fn read_act_one(
        mut self,
        bytes: &[u8],
    ) -> Result<(AwaitingActThree, [u8; ACT_TWO_LEN]), Error> {
        let body = act(bytes, ACT_ONE_LEN)?;
        let re = public_key(&body[..33])?;
        self.sym.mix_hash(&re.serialize());
        self.sym.mix_key(&ecdh(&re, &self.local));
        self.sym.decrypt_and_hash(0, &body[33..])?;
        let secp = Secp256k1::signing_only();
        let e = PublicKey::from_secret_key(&secp, &self.ephemeral);
        self.sym.mix_hash(&e.serialize());
        self.sym.mix_key(&ecdh(&re, &self.ephemeral));
        let c = self.sym.encrypt_and_hash(0, &[]);
        let mut out = [0u8; ACT_TWO_LEN];
        out[1..34].copy_from_slice(&e.serialize());
        out[34..].copy_from_slice(&c);
        Ok((AwaitingActThree { sym: self.sym, ephemeral: self.ephemeral }, out))
    }
}

impl AwaitingActThree {
    /// Reads act three; returns the session and the initiator's static key.
    ///
    /// # Errors
    /// [`Error::ActLength`], [`Error::HandshakeVersion`], [`Error::HandshakeKey`], or
    /// [`Error::HandshakeFailed`].
    pub fn read_act_three(mut self, bytes: &[u8]) -> Result<(Session, PublicKey), Error> {
        let body = act(bytes, ACT_THREE_LEN)?;
        let rs = self.sym.decrypt_and_hash(1, &body[..49])?;
        let rs = public_key(&rs)?;
        self.sym.mix_key(&ecdh(&rs, &self.ephemeral));
        self.sym.decrypt_and_hash(0, &body[49..])?;
        let (rk, sk) = hkdf(&self.sym.ck, &[]);
        Ok((Session::new(self.sym.ck, sk, rk), rs))
    }
}

/// One direction's key, nonce and chaining key (for rotation).
#[derive(Clone)]
struct Cipher {
    ck: Key32,
    k: Key32,
    n: u64,
}

impl Cipher {
    /// The nonce to use now; the key is rotated once it has been used 1,000 times.
    fn next(&mut self) -> (Key32, u64) {
        let used = (self.k, self.n);
        self.n += 1;
        if self.n == ROTATE_AFTER {
            (self.ck, self.k) = hkdf(&self.ck, &self.k);
            self.n = 0;
        }
        used
    }
}

/// An established session: encrypts what is sent, authenticates and decrypts what is read.
pub struct Session {
    send: Cipher,
    recv: Cipher,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    fn new(ck: Key32, sk: Key32, rk: Key32) -> Self {
        Session { send: Cipher { ck, k: sk, n: 0 }, recv: Cipher { ck, k: rk, n: 0 } }
    }

    /// Appends the encryption of `message` (at most [`MAX_MESSAGE_LEN`] bytes) to `out`:
    /// `HEADER_LEN + message.len() + TAG_LEN` bytes.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] for a longer message (nothing is appended, no nonce used).
    pub fn encrypt(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let len = u16::try_from(message.len())
            .map_err(|_| Error::FrameTooLarge { len: message.len(), max: MAX_MESSAGE_LEN })?;
        let (k, n) = self.send.next();
        let mut header = len.to_be_bytes().to_vec();
        seal(&k, n, &[], &mut header);
        out.extend_from_slice(&header);
        let (k, n) = self.send.next();
        let mut body = message.to_vec();
        seal(&k, n, &[], &mut body);
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Reads a message's encrypted length prefix; returns how many bytes its body takes on
    /// the wire (length + [`TAG_LEN`]).
    ///
    /// # Errors
    /// [`Error::TransportTag`]: the bytes were not sent by the peer of this session.
    pub fn read_header(&mut self, header: &[u8; HEADER_LEN]) -> Result<usize, Error> {
        let (k, n) = self.recv.next();
        let mut buf = header.to_vec();
        open(&k, n, &[], &mut buf).map_err(|()| Error::TransportTag)?;
        Ok(usize::from(u16::from_be_bytes([buf[0], buf[1]])) + TAG_LEN)
    }

    /// Decrypts a message's body (as many bytes as [`Session::read_header`] said) in place.
    ///
    /// # Errors
    /// [`Error::TransportTag`]: tampered with, or not the body that header announced.
    pub fn read_body(&mut self, body: &mut Vec<u8>) -> Result<(), Error> {
        let (k, n) = self.recv.next();
        open(&k, n, &[], body).map_err(|()| Error::TransportTag)
    }
}
