//! The write-ahead log: CRC-framed entries in numbered segments.
//!
//! - [`frame`]: one record on disk (magic, length, LSN, synced LSN, checksum).
//! - [`entry`]: a frame's payload, one key's new state.
//! - [`segment`]: segment files, their header and names, and scanning one.
//! - [`writer`]: appending, rolling, and removing segments behind the checkpoint.
//! - [`reader`]: reading segments back in order and finding where the log ends.

pub(crate) mod entry;
pub(crate) mod frame;
pub(crate) mod reader;
pub(crate) mod segment;
pub(crate) mod writer;
