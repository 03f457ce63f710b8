//! Segment files: a header, then frames.
//!
//! A segment is named after the LSN of its first frame, zero-padded to 20 digits
//! (`00000000000000000001.log`), so that names sort in log order.
//!
//! ```text
//! offset  size  field                                   (integers little-endian)
//! 0       8     magic = "IDEMLOG\0"
//! 8       4     format version = 1
//! 12      4     reserved, zero
//! 16      8     first LSN: the LSN of the segment's first frame
//! 24      4     CRC32 of bytes 0..24
//! 28      4     reserved, zero
//! 32      ...   frames (see `frame.rs`)
//! ```

use crate::record::{le_u32, le_u64};

use super::frame::{self, Frame, Invalid};

const MAGIC: &[u8; 8] = b"IDEMLOG\0";
pub(crate) const FORMAT_VERSION: u32 = 1;
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const FIRST_LSN_AT: usize = VERSION_AT + 8;
const CRC_AT: usize = FIRST_LSN_AT + 8;
/// Bytes before the first frame.
pub(crate) const HEADER_LEN: usize = CRC_AT + 8;

const SUFFIX: &str = ".log";

/// The file name of the segment whose first frame has `first_lsn`.
pub(crate) fn name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

/// The first LSN a segment file name stands for, or `None` for other files.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a new segment.
pub(crate) fn header(first_lsn: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    h.copy_from_slice(&bytes);
    h
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHeader {
    /// Shorter than a header, or damaged: what a crash during creation leaves.
    Damaged,
    /// Valid, but of a format version this build does not read.
    UnknownVersion(u32),
}

/// Checks a segment's header and returns its first LSN.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<u64, BadHeader> {
    let h = bytes.get(..HEADER_LEN).ok_or(BadHeader::Damaged)?;
    let covered = h.get(..CRC_AT).unwrap_or_default();
    if h.get(..8) != Some(&MAGIC[..]) || crc32fast::hash(covered) != le_u32(h, CRC_AT) {
        return Err(BadHeader::Damaged);
    }
    let version = le_u32(h, VERSION_AT);
    if version != FORMAT_VERSION {
        return Err(BadHeader::UnknownVersion(version));
    }
    Ok(le_u64(h, FIRST_LSN_AT))
}

/// The frames of a segment body, up to the first invalid one.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// Valid frames with their offsets in the file, in order.
    pub frames: Vec<(usize, Frame<'a>)>,
    /// The first invalid frame's offset and why, or `None` if the frames fill the file.
    pub damage: Option<(usize, Invalid)>,
}

/// Reads the frames of a whole segment file (header included in `bytes`).
pub(crate) fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut frames = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match frame::decode(bytes.get(at..).unwrap_or_default()) {
            Ok(f) => {
                frames.push((at, f));
                at += f.len;
            }
            Err(why) => {
                return Scan {
                    frames,
                    damage: Some((at, why)),
                };
            }
        }
    }
    Scan {
        frames,
        damage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(name(1), "00000000000000000001.log");
        assert_eq!(parse_name(&name(u64::MAX)), Some(u64::MAX));
        assert!(name(9) < name(10));
        assert_eq!(parse_name("index.redb"), None);
        assert_eq!(parse_name("0000000000000000000x.log"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = header(42);
        assert_eq!(parse_header(&h), Ok(42));
        for i in 0..24 {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert_eq!(parse_header(&bad), Err(BadHeader::Damaged));
        }
        assert_eq!(parse_header(&h[..20]), Err(BadHeader::Damaged));
        assert_eq!(parse_header(&[0; HEADER_LEN]), Err(BadHeader::Damaged));
    }

    #[test]
    fn scan_stops_at_damage() {
        let mut file = header(1).to_vec();
        frame::encode(&mut file, 1, 0, b"a");
        let good_end = file.len();
        frame::encode(&mut file, 2, 1, b"b");
        file.truncate(file.len() - 1);
        let scan = scan(&file);
        assert_eq!(scan.frames.len(), 1);
        assert_eq!(scan.damage, Some((good_end, Invalid::Truncated)));
    }
}
