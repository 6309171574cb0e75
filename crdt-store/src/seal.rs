//! Encryption at rest: what the store writes to disk of documents, the result log and sync
//! states, sealed with AES-256-GCM.
//!
//! Envelope encryption: values are sealed with a data key, random and kept in the store only
//! wrapped (sealed) by the store key, which the operator holds (a file, an environment
//! variable, a systemd credential). Rotating the store key re-wraps the data keys, which is
//! instant; moving the data to a new data key re-seals value by value in the background, and a
//! value says which data key sealed it, so old and new coexist until it is done.
//!
//! A sealed value is `0xE1 | data key id (u32, big-endian) | nonce (12) | ciphertext | tag (16)`,
//! with the value's own table key as associated data, so a sealed value cannot be moved to
//! another key. A value that does not start with `0xE1` is plaintext (written before the store
//! was encrypted: Automerge chunks start with `0x85`, records with `{`, sync states with `0x43`)
//! and is read as it is while such values may remain, until re-sealing has reached them all;
//! from then on a value that is not sealed is refused, so that bytes put into the file by hand
//! cannot pass for the store's own. Table keys (document ids and names, result
//! sequence numbers) and value sizes stay readable.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The first byte of every sealed value.
pub const SEALED: u8 = 0xE1;

/// Bytes a sealed value takes beyond its plaintext.
pub const OVERHEAD: usize = 1 + 4 + NONCE_LEN + 16;

/// Why a value or a data key could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value names a data key this store does not hold.
    #[error("sealed with data key {0}, which this store does not hold")]
    UnknownKey(u32),
    /// The value is shorter than a sealed value can be.
    #[error("a sealed value of {0} bytes is truncated")]
    Truncated(usize),
    /// A value that is not sealed, in a store where every value is.
    #[error("a value is not sealed, in a store that seals every value")]
    NotSealed,
    /// Authentication failed: the bytes were changed, moved to another key, or the key is not
    /// the one that sealed them.
    #[error("a sealed value does not open: it was altered, moved, or sealed with another key")]
    Altered,
}

/// A 256-bit key: the store key (which wraps data keys) or a data key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A new random key.
    pub fn generate() -> Key {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        Key(bytes)
    }

    /// A key from 64 hex digits (a key file or `RHIZOME_STORE_KEY`).
    pub fn from_hex(text: &str) -> Option<Key> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Key(bytes))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short public name of the key (the first 8 bytes of a SHA-256 of it), to tell which
    /// store key wrapped a data key without revealing it.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest([b"rhizome store key\n".as_slice(), &self.0].concat());
        hex::encode(&digest[..8])
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("a 32-byte AES key"))
    }

    /// Wraps a data key with this store key (for the store's key table).
    pub fn wrap(&self, data_key: &Key, id: u32) -> Vec<u8> {
        seal_with(&self.aead(), id, &id.to_be_bytes(), &data_key.0)
    }

    /// Unwraps data key `id`; `None` when this is not the store key that wrapped it.
    pub fn unwrap_key(&self, id: u32, wrapped: &[u8]) -> Option<Key> {
        let plain = open_with(&self.aead(), &id.to_be_bytes(), wrapped).ok()?;
        <[u8; 32]>::try_from(plain.as_slice()).ok().map(Key)
    }
}

fn seal_with(key: &LessSafeKey, id: u32, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source works");
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.push(SEALED);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .expect("sealing a value of any size up to 2^36 bytes");
    out.extend_from_slice(&body);
    out
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < OVERHEAD || sealed[0] != SEALED {
        return Err(SealError::Truncated(sealed.len()));
    }
    let nonce: [u8; NONCE_LEN] = sealed[5..5 + NONCE_LEN].try_into().expect("length checked");
    let mut body = sealed[5 + NONCE_LEN..].to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| SealError::Altered)?;
    Ok(plain.to_vec())
}

/// The data key id of a sealed value; `None` for plaintext.
pub fn key_id(stored: &[u8]) -> Option<u32> {
    (stored.first() == Some(&SEALED) && stored.len() >= 5)
        .then(|| u32::from_be_bytes(stored[1..5].try_into().expect("length checked")))
}

/// The data keys of a store: the current one seals, any of them opens.
#[derive(Clone)]
pub struct Sealer {
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
    /// Whether values written before the store was encrypted may remain, and read as they are.
    plaintext: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl Sealer {
    /// A sealer with these data keys, sealing with `current`.
    pub fn new(keys: &BTreeMap<u32, Key>, current: u32) -> Sealer {
        assert!(
            keys.contains_key(&current),
            "the current data key is among the keys"
        );
        Sealer {
            keys: keys.iter().map(|(id, k)| (*id, k.aead())).collect(),
            current,
            plaintext: false,
        }
    }

    /// Lets values that are not sealed read as they are (`true`: the store was encrypted after
    /// it was written to, and re-sealing has not reached everything yet).
    pub fn with_plaintext(mut self, allowed: bool) -> Sealer {
        self.plaintext = allowed;
        self
    }

    /// The data key that seals.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Seals a value stored under table key `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.keys[&self.current], self.current, aad, plain)
    }

    /// Opens a value stored under table key `aad`; plaintext passes through while allowed.
    pub fn open<'a>(&self, aad: &[u8], stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        let Some(id) = key_id(stored) else {
            if self.plaintext {
                return Ok(Cow::Borrowed(stored));
            }
            return Err(SealError::NotSealed);
        };
        let key = self.keys.get(&id).ok_or(SealError::UnknownKey(id))?;
        open_with(key, aad, stored).map(Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_place() {
        let (one, two) = (Key::generate(), Key::generate());
        let keys = BTreeMap::from([(1, one.clone()), (2, two)]);
        let sealer = Sealer::new(&keys, 2);
        let sealed = sealer.seal(b"doc/incremental/abc", b"secret run output");
        assert_eq!(key_id(&sealed), Some(2));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            sealer
                .open(b"doc/incremental/abc", &sealed)
                .unwrap()
                .as_ref(),
            b"secret run output"
        );
        // Moved to another key, altered, or opened without its data key.
        assert_eq!(
            sealer.open(b"doc/incremental/xyz", &sealed),
            Err(SealError::Altered)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            sealer.open(b"doc/incremental/abc", &altered),
            Err(SealError::Altered)
        );
        let only_one = Sealer::new(&BTreeMap::from([(1, one)]), 1);
        assert_eq!(
            only_one.open(b"doc/incremental/abc", &sealed),
            Err(SealError::UnknownKey(2))
        );
        assert_eq!(
            sealer.open(b"k", &sealed[..10]),
            Err(SealError::Truncated(10))
        );
        // Plaintext written before encryption reads as it is while it may remain, and is
        // refused once every value is sealed.
        assert_eq!(sealer.open(b"k", b"{\"run\":1}"), Err(SealError::NotSealed));
        let converting = sealer.clone().with_plaintext(true);
        assert_eq!(
            converting.open(b"k", b"{\"run\":1}").unwrap().as_ref(),
            b"{\"run\":1}"
        );
    }

    #[test]
    fn a_data_key_unwraps_only_with_the_store_key_that_wrapped_it() {
        let (store_key, other) = (Key::generate(), Key::generate());
        let data = Key::generate();
        let wrapped = store_key.wrap(&data, 7);
        assert_eq!(store_key.unwrap_key(7, &wrapped).unwrap().0, data.0);
        assert!(other.unwrap_key(7, &wrapped).is_none());
        assert!(
            store_key.unwrap_key(8, &wrapped).is_none(),
            "bound to its id"
        );
        assert_eq!(Key::from_hex(&store_key.to_hex()).unwrap().0, store_key.0);
        assert!(Key::from_hex("zz").is_none());
        assert_ne!(store_key.fingerprint(), other.fingerprint());
    }
}
