//! The payload of a frame: one change to one key.
//!
//! ```text
//! offset  size  field                                   (integers little-endian)
//! 0       1     kind: 1 = put, 2 = delete
//! 1       2     encoded key length k
//! 3       k     encoded key (see `key.rs`)
//! 3+k     ...   put only: the encoded entry (see `record.rs`, it carries its own CRC)
//! ```
//!
//! Replay applies entries in LSN order; each sets the whole state of its key, so replaying a
//! prefix twice gives the same state as once.

use crate::key::{Key, MAX_ENCODED_KEY};

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// A decoded log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEntry<'a> {
    pub key: &'a [u8],
    /// The new encoded entry, or `None` for a delete.
    pub entry: Option<&'a [u8]>,
}

/// Appends the payload of a change to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, key: &[u8], entry: Option<&[u8]>) {
    out.push(if entry.is_some() {
        KIND_PUT
    } else {
        KIND_DELETE
    });
    // Keys are at most MAX_ENCODED_KEY bytes.
    out.extend_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(key);
    if let Some(entry) = entry {
        out.extend_from_slice(entry);
    }
}

/// Decodes a payload; `None` if it is not a well-formed entry (the frame's checksum matched,
/// so this means a writer bug or a newer format, and recovery reports it as corruption).
pub(crate) fn decode(payload: &[u8]) -> Option<LogEntry<'_>> {
    let kind = *payload.first()?;
    let len = usize::from(u16::from_le_bytes([*payload.get(1)?, *payload.get(2)?]));
    if len > MAX_ENCODED_KEY {
        return None;
    }
    let key = payload.get(3..3 + len)?;
    Key::decode(key)?;
    let rest = payload.get(3 + len..)?;
    match kind {
        KIND_PUT if !rest.is_empty() => Some(LogEntry {
            key,
            entry: Some(rest),
        }),
        KIND_DELETE if rest.is_empty() => Some(LogEntry { key, entry: None }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = Key::new("c", "r", "x").unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, key.as_bytes(), Some(b"entry"));
        assert_eq!(
            decode(&buf),
            Some(LogEntry {
                key: key.as_bytes(),
                entry: Some(&b"entry"[..])
            })
        );
        buf.clear();
        encode(&mut buf, key.as_bytes(), None);
        assert_eq!(decode(&buf).unwrap().entry, None);
        assert!(decode(&[]).is_none());
        assert!(decode(&[9, 0, 0]).is_none());
    }
}
