//! Keys and request fingerprints.

use std::fmt;

use crate::error::{Error, Result};

/// The largest size of one key part in bytes.
pub const MAX_KEY_PART: usize = 255;

/// The largest size of an encoded key: three length bytes and three parts.
pub(crate) const MAX_ENCODED_KEY: usize = 3 * (1 + MAX_KEY_PART);

/// The identity of an operation: who asks (`client`), the idempotency key they chose
/// (`request`) and what it acts on (`resource`, e.g. `POST /v1/charges`).
///
/// Each part is at most [`MAX_KEY_PART`] bytes and `request` is not empty. The encoding is a
/// length byte before each part, so `("a", "bc", "x")` and `("ab", "c", "x")` are different keys.
///
/// ```
/// use idemstore::Key;
/// let key = Key::new("client-42", "9f1c-idempotency-key", "POST /v1/charges")?;
/// assert_eq!(key.client(), b"client-42");
/// assert!(Key::new("client-42", "", "POST /v1/charges").is_err());
/// # Ok::<(), idemstore::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    // Encoded form: [len u8][client][len u8][request][len u8][resource]
    encoded: Vec<u8>,
    request_at: usize,
    resource_at: usize,
}

impl Key {
    /// Builds a key, or [`Error::InvalidKey`] if a part is longer than [`MAX_KEY_PART`] bytes or
    /// `request` is empty.
    pub fn new(
        client: impl AsRef<[u8]>,
        request: impl AsRef<[u8]>,
        resource: impl AsRef<[u8]>,
    ) -> Result<Key> {
        let parts = [client.as_ref(), request.as_ref(), resource.as_ref()];
        if parts[1].is_empty() {
            return Err(Error::invalid_key("the request id is empty"));
        }
        let mut encoded = Vec::with_capacity(3 + parts.iter().map(|p| p.len()).sum::<usize>());
        for (name, part) in ["client", "request", "resource"].iter().zip(parts) {
            let len = u8::try_from(part.len()).map_err(|_| {
                Error::invalid_key(format!(
                    "the {name} part is {} bytes, more than {MAX_KEY_PART}",
                    part.len()
                ))
            })?;
            encoded.push(len);
            encoded.extend_from_slice(part);
        }
        Ok(Key::from_valid_encoding(encoded))
    }

    /// Decodes a key from its stored form; `None` if the bytes are not exactly one valid key.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Key> {
        let mut at = 0usize;
        for part in 0..3 {
            let len = usize::from(*bytes.get(at)?);
            if part == 1 && len == 0 {
                return None;
            }
            at = at.checked_add(1 + len)?;
        }
        (at == bytes.len()).then(|| Key::from_valid_encoding(bytes.to_vec()))
    }

    fn from_valid_encoding(encoded: Vec<u8>) -> Key {
        // Callers checked that three length-prefixed parts fill `encoded` exactly.
        let client_len = usize::from(encoded.first().copied().unwrap_or(0));
        let request_at = 1 + client_len;
        let request_len = usize::from(encoded.get(request_at).copied().unwrap_or(0));
        let resource_at = request_at + 1 + request_len;
        Key {
            encoded,
            request_at,
            resource_at,
        }
    }

    /// The client part.
    pub fn client(&self) -> &[u8] {
        self.encoded.get(1..self.request_at).unwrap_or_default()
    }

    /// The request part (the idempotency key).
    pub fn request(&self) -> &[u8] {
        self.encoded
            .get(self.request_at + 1..self.resource_at)
            .unwrap_or_default()
    }

    /// The resource part.
    pub fn resource(&self) -> &[u8] {
        self.encoded.get(self.resource_at + 1..).unwrap_or_default()
    }

    /// The unambiguous byte encoding used as the index key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("client", &String::from_utf8_lossy(self.client()))
            .field("request", &String::from_utf8_lossy(self.request()))
            .field("resource", &String::from_utf8_lossy(self.resource()))
            .finish()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            String::from_utf8_lossy(self.client()),
            String::from_utf8_lossy(self.request()),
            String::from_utf8_lossy(self.resource())
        )
    }
}

/// Lowercase hex of an encoded key (at most its first 64 bytes), for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(64).map(|b| format!("{b:02x}")).collect()
}

/// An encoded key for messages: `client/request/resource` when it decodes (with its bytes
/// in hex, since the parts may hold `/` or be binary), else just the hex.
pub(crate) fn describe(encoded: &[u8]) -> String {
    match Key::decode(encoded) {
        Some(key) => format!("{key} (0x{})", hex(encoded)),
        None => format!("0x{}", hex(encoded)),
    }
}

/// A 32-byte blake3 hash of a request, stored with its claim so that a retry carrying a
/// different request under the same key is answered with [`Begin::Mismatch`](crate::Begin).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The blake3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::hash(bytes).as_bytes())
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in self.0.get(..8).unwrap_or_default() {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        let a = Key::new("a", "bc", "x").unwrap();
        let b = Key::new("ab", "c", "x").unwrap();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn parts_round_trip_through_decode() {
        let key = Key::new("client", "req", "").unwrap();
        let back = Key::decode(key.as_bytes()).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.client(), b"client");
        assert_eq!(back.request(), b"req");
        assert_eq!(back.resource(), b"");
    }

    #[test]
    fn decode_rejects_malformed() {
        assert!(Key::decode(&[]).is_none());
        assert!(Key::decode(&[1, b'a', 0, 0]).is_none(), "empty request");
        assert!(
            Key::decode(&[0, 1, b'r', 5]).is_none(),
            "resource runs past end"
        );
        assert!(Key::decode(&[0, 1, b'r', 0, 9]).is_none(), "trailing byte");
    }

    #[test]
    fn limits() {
        let long = vec![b'x'; MAX_KEY_PART + 1];
        assert!(matches!(
            Key::new(&long, "r", ""),
            Err(Error::InvalidKey { .. })
        ));
        assert!(Key::new(&long[1..], &long[1..], &long[1..]).is_ok());
        assert!(matches!(
            Key::new("c", "", "x"),
            Err(Error::InvalidKey { .. })
        ));
    }
}
