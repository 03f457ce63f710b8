//! One log record on disk.
//!
//! ```text
//! offset  size  field                                              (integers little-endian)
//! 0       4     magic = 0xE1D0_5A17 (never zero: a zero-filled region is not a frame)
//! 4       4     payload length n (at most MAX_PAYLOAD)
//! 8       8     LSN: this record's log sequence number
//! 16      8     synced LSN: every record up to here was durable when this one was written
//! 24      4     CRC32 of bytes 4..24 and the payload, XOR 0xA5A5_5A5A
//! 28      n     payload (a log entry, see `entry.rs`)
//! ```
//!
//! The synced LSN lets recovery tell a torn tail from damage: a damaged record followed by a
//! valid one that says the damaged LSN had already been synced is corruption; otherwise the
//! damage is in writes no sync covered, and the tail from it on is cut off.

use crate::key::MAX_ENCODED_KEY;
use crate::record::{RECORD_OVERHEAD, le_u32, le_u64};

pub(crate) const MAGIC: u32 = 0xE1D0_5A17;
const MAGIC_AT: usize = 0;
const LEN_AT: usize = MAGIC_AT + 4;
const LSN_AT: usize = LEN_AT + 4;
const SYNCED_AT: usize = LSN_AT + 8;
const CRC_AT: usize = SYNCED_AT + 8;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = CRC_AT + 4;
/// The XOR applied to the checksum, so that a run of zeros never checks.
const CRC_XOR: u32 = 0xA5A5_5A5A;

/// The largest outcome any store accepts, whatever its options say.
pub const MAX_OUTCOME_LIMIT: usize = 64 << 20;
/// The largest payload a frame may claim; a larger length is damage, never an allocation.
pub(crate) const MAX_PAYLOAD: usize = 3 + MAX_ENCODED_KEY + RECORD_OVERHEAD + MAX_OUTCOME_LIMIT;

/// A valid frame inside a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub lsn: u64,
    pub synced: u64,
    pub payload: &'a [u8],
    /// Header plus payload.
    pub len: usize,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Fewer bytes than the header or than the length claims.
    Truncated,
    /// The magic is wrong (zeros, garbage).
    BadMagic,
    /// The length is beyond `MAX_PAYLOAD`.
    BadLength,
    /// The checksum does not match.
    BadChecksum,
}

impl Invalid {
    pub fn describe(self) -> &'static str {
        match self {
            Invalid::Truncated => "frame truncated",
            Invalid::BadMagic => "frame magic missing",
            Invalid::BadLength => "frame length out of range",
            Invalid::BadChecksum => "frame checksum mismatch",
        }
    }
}

/// Appends a frame to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, lsn: u64, synced: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    // Payloads are bounded by MAX_PAYLOAD < u32::MAX.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    let crc = checksum(out.get(start + LEN_AT..).unwrap_or_default(), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize() ^ CRC_XOR
}

/// Decodes the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<Frame<'_>, Invalid> {
    let header = buf.get(..HEADER_LEN).ok_or(Invalid::Truncated)?;
    if le_u32(header, MAGIC_AT) != MAGIC {
        return Err(Invalid::BadMagic);
    }
    let len = le_u32(header, LEN_AT) as usize;
    if len > MAX_PAYLOAD {
        return Err(Invalid::BadLength);
    }
    let payload = buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(Invalid::Truncated)?;
    let crc_covered = header.get(LEN_AT..CRC_AT).unwrap_or_default();
    if checksum(crc_covered, payload) != le_u32(header, CRC_AT) {
        return Err(Invalid::BadChecksum);
    }
    Ok(Frame {
        lsn: le_u64(header, LSN_AT),
        synced: le_u64(header, SYNCED_AT),
        payload,
        len: HEADER_LEN + len,
    })
}

/// The offsets after `from` where a valid frame starts, each found by searching for the magic
/// and checking the frame; frames found are skipped whole.
pub(crate) fn valid_frames_after(buf: &[u8], from: usize) -> Vec<(usize, Frame<'_>)> {
    let magic = MAGIC.to_le_bytes();
    let mut found = Vec::new();
    let mut at = from;
    while let Some(rest) = buf.get(at..) {
        let Some(pos) = rest.windows(4).position(|w| w == magic) else {
            break;
        };
        let start = at + pos;
        match decode(buf.get(start..).unwrap_or_default()) {
            Ok(frame) => {
                found.push((start, frame));
                at = start + frame.len;
            }
            Err(_) => at = start + 1,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 5, b"payload");
        let frame = decode(&buf).unwrap();
        assert_eq!(
            (frame.lsn, frame.synced, frame.payload),
            (7, 5, &b"payload"[..])
        );
        assert_eq!(frame.len, buf.len());
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Err(Invalid::Truncated));
        }
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "bit {bit} flip went unnoticed");
        }
        assert_eq!(decode(&[0u8; 64]), Err(Invalid::BadMagic));
    }

    #[test]
    fn finds_frames_after_garbage() {
        let mut buf = vec![0xAB; 10];
        encode(&mut buf, 1, 0, b"a");
        buf.extend_from_slice(&[0; 5]);
        encode(&mut buf, 2, 1, b"b");
        let found = valid_frames_after(&buf, 0);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 10);
        assert_eq!(found[1].1.lsn, 2);
    }
}
