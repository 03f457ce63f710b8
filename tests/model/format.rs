//! The on-disk format, written independently of the crate from its documentation
//! (`docs/design.md`), so that tests can plant logs the store never wrote and recognise every
//! record the store returns. All integers little-endian.

use idemstore::{Key, Record, RecordState};

/// The index file's name.
pub const INDEX_FILE: &str = "index.redb";
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_LEN: usize = 28;
const FRAME_MAGIC: u32 = 0xE1D0_5A17;
const FRAME_CRC_XOR: u32 = 0xA5A5_5A5A;
const STATE_IN_PROGRESS: u8 = 1;
const STATE_COMPLETED: u8 = 2;

/// The file name of the segment whose first frame has `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The first LSN a segment name stands for.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `magic "IDEMLOG\0" | version 1 u32 | 0 u32 | first LSN u64 | CRC32 of 0..24 | 0 u32`.
pub fn segment_header(first_lsn: u64) -> Vec<u8> {
    let mut h = b"IDEMLOG\0".to_vec();
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// `magic | len u32 | lsn u64 | synced u64 | CRC32(bytes 4..24 ++ payload) ^ XOR | payload`.
pub fn frame(out: &mut Vec<u8>, lsn: u64, synced: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload fits a frame");
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    let covered_at = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(out.get(covered_at..).unwrap_or_default());
    h.update(payload);
    out.extend_from_slice(&(h.finalize() ^ FRAME_CRC_XOR).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A frame payload: `kind (1 put, 2 delete) | key length u16 | key | encoded record (put)`.
pub fn entry_payload(key: &Key, record: Option<&[u8]>) -> Vec<u8> {
    let key = key.as_bytes();
    let mut out = vec![if record.is_some() { 1 } else { 2 }];
    out.extend_from_slice(&u16::try_from(key.len()).expect("key fits").to_le_bytes());
    out.extend_from_slice(key);
    if let Some(record) = record {
        out.extend_from_slice(record);
    }
    out
}

/// The fields of one stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub fingerprint: [u8; 32],
    pub token: u64,
    pub attempt: u32,
    /// Lease expiry (in progress) or completion time (completed), ns since the epoch.
    pub at: u64,
    pub expires_at: u64,
    /// `None` while in progress.
    pub outcome: Option<Vec<u8>>,
}

impl RawRecord {
    /// `version 1 | state | fingerprint | token | attempt | at | expires_at | len u32 |
    /// outcome | CRC32(key ++ everything before)`.
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        let data = self.outcome.as_deref().unwrap_or_default();
        let state = if self.outcome.is_some() {
            STATE_COMPLETED
        } else {
            STATE_IN_PROGRESS
        };
        let mut out = vec![1, state];
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.token.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&self.at.to_le_bytes());
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).expect("fits").to_le_bytes());
        out.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(key.as_bytes());
        h.update(&out);
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out
    }

    /// The fields of a record the store returned.
    pub fn of(record: &Record) -> RawRecord {
        let expires_at = nanos(record.expires_at());
        let fingerprint = *record.fingerprint().as_bytes();
        match record.state() {
            RecordState::InProgress {
                token,
                attempt,
                lease_expires_at,
            } => RawRecord {
                fingerprint,
                token,
                attempt,
                at: nanos(lease_expires_at),
                expires_at,
                outcome: None,
            },
            RecordState::Completed(o) => RawRecord {
                fingerprint,
                token: o.token(),
                attempt: o.attempt(),
                at: nanos(o.completed_at()),
                expires_at: nanos(o.expires_at()),
                outcome: Some(o.data().to_vec()),
            },
            other => panic!("a record state this model does not know: {other:?}"),
        }
    }
}

/// Nanoseconds since the Unix epoch, the unit of every stored time.
pub fn nanos(t: std::time::SystemTime) -> u64 {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("stored times are after the epoch");
    u64::try_from(d.as_nanos()).expect("stored times fit u64 nanoseconds")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
