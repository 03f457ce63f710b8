//! Exhaustive damage to a small log on the simulated disk: the last segment cut at every byte
//! offset, its tail zero-filled from every offset, every bit of it flipped, and damage in a
//! segment that is not the last. Each case must open with exactly the state of a prefix of the
//! log (cutting a torn tail and saying so) or fail with `Error::Corruption` where the damage
//! provably hit a synced record; no case may return a wrong outcome.
//!
//! Most cases are opened twice: on the simulated disk, where recovery opens the index and then
//! reads the log, and in a real directory, where it reads the log while the index opens and
//! must come to the same verdict.

mod model;

use std::collections::BTreeMap;
use std::time::Duration;

use idemstore::storage::{CrashMode, SimDisk};
use idemstore::{Begin, Durability, Error, Key, ManualClock, Options, Record};
use model::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, parse_segment_name};
use model::harness::dump;
use model::store_model as m;

type State = BTreeMap<Key, Record>;

/// A store's files after a power cut, with the state after each prefix of its log.
struct Image {
    clock: ManualClock,
    files: Vec<(String, Vec<u8>)>,
    /// The newest segment's name.
    last: String,
    /// (start, end) of every frame in the newest segment.
    frames: Vec<(usize, usize)>,
    /// `states[j]`: the store's state after the first `j` records of the newest segment.
    states: Vec<State>,
}

fn options(clock: &ManualClock) -> Options {
    model::options(clock)
        .durability(Durability::Immediate)
        .checkpoint_bytes(u64::MAX)
        .segment_size(4096)
}

fn key(n: u32) -> Key {
    Key::new("damage", format!("key-{n}"), "POST /op").expect("valid key")
}

/// Writes one record per step (claims and completions of `outcome_len`-byte outcomes), then
/// cuts the power, so that only the log holds them (the index is still at its first
/// checkpoint).
fn build(steps: u32, outcome_len: usize) -> Image {
    build_with_checkpoint(steps, outcome_len, None)
}

/// As [`build`], with a checkpoint after record `checkpoint_after` (the index then holds the
/// records up to it, and the newest segment holds records on both sides of it).
fn build_with_checkpoint(steps: u32, outcome_len: usize, checkpoint_after: Option<u32>) -> Image {
    let clock = ManualClock::new(m::start_time());
    let disk = SimDisk::new("damage");
    let store = options(&clock).open_storage(disk.clone()).expect("open");
    let mut states = vec![dump(&store)];
    let mut segment_of_state = vec![newest_segment(&disk)];
    let mut claim = None;
    for step in 0..steps {
        clock.advance(Duration::from_secs(1));
        match claim.take() {
            None => match store.begin(&key(step), b"request").expect("begin") {
                Begin::Claimed(c) => claim = Some(c),
                other => panic!("not claimed: {other:?}"),
            },
            Some(c) => {
                let data: Vec<u8> = format!("outcome-{step}-")
                    .bytes()
                    .cycle()
                    .take(outcome_len)
                    .collect();
                store.complete(&c, &data).expect("complete");
            }
        }
        states.push(dump(&store));
        segment_of_state.push(newest_segment(&disk));
        if checkpoint_after == Some(step) {
            store.checkpoint().expect("checkpoint");
        }
    }
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);

    let last = newest_segment(&disk);
    // The state before the newest segment's first record, and each one after.
    let first = segment_of_state
        .iter()
        .position(|s| *s == last)
        .expect("the newest segment")
        .saturating_sub(1);
    let files = disk
        .file_names()
        .into_iter()
        .map(|n| {
            let bytes = disk.read_file(&n).expect("listed file");
            (n, bytes)
        })
        .collect();
    let mut image = Image {
        clock,
        files,
        frames: Vec::new(),
        states: states.split_off(first),
        last,
    };
    image.frames = frames(image.bytes(&image.last));
    assert_eq!(
        image.frames.len() + 1,
        image.states.len(),
        "one frame per write"
    );
    image
}

fn newest_segment(disk: &SimDisk) -> String {
    disk.file_names()
        .into_iter()
        .filter(|n| parse_segment_name(n).is_some())
        .max()
        .expect("a segment")
}

/// The frames of a well-formed segment: (start, end).
fn frames(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < segment.len() {
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().expect("4 bytes"));
        let end = at + FRAME_HEADER_LEN + len as usize;
        out.push((at, end));
        at = end;
    }
    assert_eq!(at, segment.len(), "frames fill the segment");
    out
}

#[derive(Debug)]
enum Opened {
    /// Opened with `states[j]`; whether a torn tail was cut.
    Prefix { j: usize, torn: bool },
    /// Refused: where (as the error says) and why.
    Corruption { at: String, what: String },
}

impl Opened {
    /// The same verdict, wherever the files were (the location names the storage).
    fn same(&self, other: &Opened) -> bool {
        match (self, other) {
            (Opened::Prefix { j, torn }, Opened::Prefix { j: j2, torn: torn2 }) => {
                j == j2 && torn == torn2
            }
            (Opened::Corruption { what, .. }, Opened::Corruption { what: what2, .. }) => {
                what == what2
            }
            _ => false,
        }
    }
}

impl Image {
    fn bytes(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == name).expect("file").1
    }

    /// Opens the image with `name` replaced by `bytes`; the state must be a prefix state. With
    /// `real_dir`, also opens a copy in a real directory and checks it comes to the same.
    fn open_with(&self, name: &str, bytes: Vec<u8>, real_dir: bool) -> Opened {
        let disk = SimDisk::new("damaged");
        for (n, b) in &self.files {
            if n != name {
                disk.write_file(n, b.clone());
            }
        }
        disk.write_file(name, bytes.clone());
        let simulated = self.judge(options(&self.clock).open_storage(disk));
        if real_dir {
            let dir = tempfile::tempdir().expect("a temporary directory");
            for (n, b) in &self.files {
                let b = if n == name { &bytes } else { b };
                std::fs::write(dir.path().join(n), b).expect("write a file");
            }
            let real = self.judge(options(&self.clock).open(dir.path()));
            assert!(
                simulated.same(&real),
                "{name}: the simulated disk gave {simulated:?}, a real directory {real:?}"
            );
        }
        simulated
    }

    fn judge(&self, opened: idemstore::Result<idemstore::Store>) -> Opened {
        let store = match opened {
            Ok(store) => store,
            Err(Error::Corruption { what, location }) => {
                return Opened::Corruption { at: location, what };
            }
            Err(e) => panic!("neither opened nor Corruption: {e:?}"),
        };
        let found = dump(&store);
        let j = self
            .states
            .iter()
            .position(|s| *s == found)
            .unwrap_or_else(|| panic!("a state no prefix of the log produced: {found:?}"));
        // Retries get the answers that state implies: a replay of the exact outcome.
        for (key, record) in &found {
            if let Some(outcome) = record.outcome() {
                let replay = store.begin(key, b"request").expect("begin");
                assert!(
                    matches!(&replay, Begin::Completed(o) if *o == outcome),
                    "{key}: {replay:?}"
                );
            }
        }
        Opened::Prefix {
            j,
            torn: store.recovery_report().torn_tail.is_some(),
        }
    }
}

#[test]
fn cutting_the_last_segment_at_any_offset_keeps_exactly_the_whole_records_before_it() {
    let image = build(4, 40);
    let original = image.bytes(&image.last).to_vec();
    for cut in 0..=original.len() {
        let whole = image.frames.iter().filter(|(_, end)| *end <= cut).count();
        let boundary = cut == SEGMENT_HEADER_LEN || image.frames.iter().any(|(_, e)| *e == cut);
        match image.open_with(&image.last, original[..cut].to_vec(), true) {
            Opened::Prefix { j, torn } => {
                assert_eq!(j, whole, "cut at {cut}");
                assert_eq!(torn, !boundary, "cut at {cut}: torn tail reported wrongly");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn zero_filling_the_tail_from_any_offset_keeps_exactly_the_intact_records() {
    let image = build(4, 40);
    let original = image.bytes(&image.last).to_vec();
    for start in 0..original.len() {
        let mut damaged = original.clone();
        damaged[start..].fill(0);
        let intact = |from: usize, to: usize| damaged[from..to] == original[from..to];
        let header_intact = intact(0, SEGMENT_HEADER_LEN);
        let whole = if header_intact {
            image
                .frames
                .iter()
                .take_while(|(s, e)| intact(*s, *e))
                .count()
        } else {
            0
        };
        match image.open_with(&image.last, damaged.clone(), true) {
            Opened::Prefix { j, torn } => {
                assert_eq!(j, whole, "zeros from {start}");
                assert_eq!(torn, damaged != original, "zeros from {start}");
            }
            other => panic!("zeros from {start}: {other:?}"),
        }
    }
}

#[test]
fn flipping_any_bit_of_a_small_log_is_cut_off_as_torn_or_refused_as_corruption() {
    let image = build(3, 24);
    let original = image.bytes(&image.last).to_vec();
    let n = image.frames.len();
    let (last_start, _) = image.frames[n - 1];
    let (mut refused, mut cut) = (0, 0);
    for bit in 0..original.len() * 8 {
        let mut damaged = original.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let byte = bit / 8;
        // Every 16th bit in a real directory too: each open there syncs files.
        let opened = image.open_with(&image.last, damaged, bit % 16 == 0);
        match (byte, &opened) {
            // The header's last four bytes are reserved and not checksummed.
            (28..32, Opened::Prefix { j, torn: false }) if *j == n => {}
            // A damaged header with records behind it, or a record that a later record
            // proves was synced: never guessed around.
            (0..28, Opened::Corruption { .. }) => refused += 1,
            (b, Opened::Corruption { .. }) if b >= SEGMENT_HEADER_LEN && b < last_start => {
                refused += 1;
            }
            // Damage in the last record, which nothing proves was synced: a torn tail.
            (b, Opened::Prefix { j, torn: true }) if b >= last_start && *j == n - 1 => cut += 1,
            _ => panic!("bit {bit} (byte {byte}) flipped: {opened:?}"),
        }
    }
    assert!(refused > 0 && cut > 0);
}

#[test]
fn damage_in_a_segment_before_the_last_is_corruption() {
    // Outcomes of 1500 bytes fill a 4096-byte segment in a few records.
    let image = build(12, 1500);
    let segments: Vec<&String> = image
        .files
        .iter()
        .map(|(n, _)| n)
        .filter(|n| parse_segment_name(n).is_some())
        .collect();
    assert!(segments.len() >= 2, "the log did not roll: {segments:?}");
    let first = segments[0].clone();
    let original = image.bytes(&first).to_vec();
    let body = frames(&original);
    // Every byte of every frame header, and a stride through the payloads.
    let mut offsets: Vec<usize> = (0..28).collect();
    for (start, end) in &body {
        offsets.extend(*start..start + FRAME_HEADER_LEN);
        offsets.extend((start + FRAME_HEADER_LEN..*end).step_by(61));
    }
    for at in offsets {
        let mut damaged = original.clone();
        damaged[at] ^= 0x40;
        let opened = image.open_with(&first, damaged, true);
        // Refused, naming the damaged segment.
        assert!(
            matches!(&opened, Opened::Corruption { at, .. } if at.contains(&first)),
            "byte {at} of {first} damaged: {opened:?}"
        );
    }
    // Cut short, too.
    for cut in [0, 10, SEGMENT_HEADER_LEN, body[0].1 - 1, original.len() - 1] {
        let opened = image.open_with(&first, original[..cut].to_vec(), true);
        // (Cut on a record boundary, the gap shows only where the next segment begins.)
        assert!(
            matches!(opened, Opened::Corruption { .. }),
            "{first} cut at {cut}: {opened:?}"
        );
    }
}

/// With the checkpoint in the middle of the last segment, the read that runs while the index
/// opens (from the segment's start, dropping what the checkpoint covers) must reach the same
/// verdict as the read after the checkpoint, for every cut, every zero-filled tail and a
/// stride of flipped bits: the same prefix state and torn tail, or the same corruption.
#[test]
fn the_log_read_while_the_index_opens_agrees_with_the_read_after_the_checkpoint() {
    let image = build_with_checkpoint(6, 40, Some(2));
    let original = image.bytes(&image.last).to_vec();
    let (mut opened, mut refused) = (0, 0);
    let mut count = |o: Opened| match o {
        Opened::Prefix { .. } => opened += 1,
        Opened::Corruption { .. } => refused += 1,
    };
    for cut in 0..=original.len() {
        count(image.open_with(&image.last, original[..cut].to_vec(), true));
    }
    for start in (0..original.len()).step_by(3) {
        let mut damaged = original.clone();
        damaged[start..].fill(0);
        count(image.open_with(&image.last, damaged, true));
    }
    for bit in (0..original.len() * 8).step_by(13) {
        let mut damaged = original.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        count(image.open_with(&image.last, damaged, true));
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}
