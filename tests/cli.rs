//! The `idemstore` CLI, run as a real process on stores made here.
//!
//! The binary exists only with the `cli` feature, so this file is compiled only with it. CI runs
//! `cargo test --all-features`, which includes it; a plain `cargo test` skips it.
#![cfg(feature = "cli")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use idemstore::{Begin, Claim, Key, Options, Store};

const RESOURCE: &str = "POST /v1/charges";

fn idemstore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(args)
        .output()
        .expect("run the idemstore binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the command failed with exit code 2 and exactly one line on stderr, and
/// returns that line.
fn one_line_error(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    err
}

fn key(client: &str, request: &str) -> Key {
    Key::new(client, request, RESOURCE).expect("valid key")
}

fn claim(store: &Store, key: &Key, request: &[u8]) -> Claim {
    match store.begin(key, request).expect("begin") {
        Begin::Claimed(claim) => claim,
        other => panic!("expected a claim for {key}, got {other:?}"),
    }
}

/// A closed store holding: one expired record; `alice/charge-1` completed with text;
/// `alice/charge-2` completed with binary bytes; `bob/charge-3` claimed and never completed.
fn make_store(dir: &Path) {
    let store = Options::new()
        .retention(Duration::from_millis(1))
        .purge_interval(None)
        .open(dir)
        .expect("open");
    let expired = key("carol", "old-charge");
    let c = claim(&store, &expired, b"amount=1");
    store.complete(&c, b"old").expect("complete");
    store.close().expect("close");
    std::thread::sleep(Duration::from_millis(20));

    let store = Options::new()
        .purge_interval(None)
        .open(dir)
        .expect("reopen");
    let c = claim(&store, &key("alice", "charge-1"), b"amount=1000");
    store
        .complete(&c, br#"{"charge":"ch_1"}"#)
        .expect("complete");
    let c = claim(&store, &key("alice", "charge-2"), b"amount=2000");
    store.complete(&c, &[0xff, 0x00, 0x7f]).expect("complete");
    let _in_doubt = claim(&store, &key("bob", "charge-3"), b"amount=3000");
    store.close().expect("close");
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("UTF-8 temp path")
}

/// Every file in `dir` (the lock file included) and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

#[test]
fn stats_counts_records_and_reports_the_open() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let out = idemstore(&["stats", path(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The expired record is still counted until purged.
    assert!(text.contains("records      4 (1 in progress"), "{text}");
    assert!(text.contains("torn tail    none"), "{text}");

    let out = idemstore(&["stats", path(&dir), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(json.contains(r#""records":4,"in_progress":1"#), "{json}");
}

#[test]
fn get_prints_text_outcomes_as_utf8_and_others_as_hex() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let get = |request: &str, json: bool| {
        let mut args = vec!["get", path(&dir), "--client", "alice"];
        args.extend(["--request", request, "--resource", RESOURCE]);
        if json {
            args.push("--json");
        }
        let out = idemstore(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = get("charge-1", false);
    assert!(text.contains("state        completed"), "{text}");
    assert!(text.contains(r#"utf8: {"charge":"ch_1"}"#), "{text}");
    let json = get("charge-1", true);
    assert!(
        json.contains(r#""outcome":"{\"charge\":\"ch_1\"}""#),
        "{json}"
    );
    assert!(json.contains(r#""outcome_encoding":"utf8""#), "{json}");

    let text = get("charge-2", false);
    assert!(text.contains("3 bytes, hex: ff007f"), "{text}");
    let json = get("charge-2", true);
    assert!(
        json.contains(r#""outcome":"ff007f","outcome_encoding":"hex""#),
        "{json}"
    );

    assert!(get("never-sent", false).starts_with("absent: alice/never-sent/"));
    assert_eq!(get("never-sent", true).trim_end(), r#"{"state":"absent"}"#);
}

#[test]
fn list_prints_json_lines_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let list = |filters: &[&str]| {
        let mut args = vec!["list", path(&dir)];
        args.extend(filters);
        let out = idemstore(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        for line in text.lines() {
            assert!(
                line.starts_with(r#"{"client":"#) && line.ends_with('}'),
                "{line}"
            );
        }
        text.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    // The expired record is invisible.
    assert_eq!(list(&[]).len(), 3);
    let alice = list(&["--client", "alice"]);
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().all(|l| l.contains(r#""client":"alice""#)));

    let in_doubt = list(&["--in-doubt"]);
    assert_eq!(in_doubt.len(), 1);
    assert!(
        in_doubt[0].contains(r#""request":"charge-3""#),
        "{}",
        in_doubt[0]
    );
    assert!(
        in_doubt[0].contains(r#""state":"in_progress""#),
        "{}",
        in_doubt[0]
    );
    assert_eq!(list(&["--state", "in-progress"]), in_doubt);
    assert_eq!(list(&["--state", "completed"]).len(), 2);
    assert!(list(&["--state", "completed", "--client", "bob"]).is_empty());

    assert!(list(&["--expiring-before", "2001-09-09T01:46:40Z"]).is_empty());
    assert_eq!(list(&["--expiring-before", "4102444800"]).len(), 3);
    assert_eq!(
        list(&["--expiring-before", "2100-01-01T00:00:00+01:00"]).len(),
        3
    );

    let bad = idemstore(&["list", path(&dir), "--expiring-before", "tomorrow"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("neither RFC 3339"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn purge_removes_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let out = idemstore(&["purge", path(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("purged 1 expired records"),
        "{}",
        stdout(&out)
    );
    let out = idemstore(&["purge", path(&dir), "--json"]);
    assert_eq!(stdout(&out).trim_end(), r#"{"purged":0}"#);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.stats().unwrap().records, 3);
}

#[test]
fn remove_invalidates_a_key() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let remove = |json: bool| {
        let mut args = vec!["remove", path(&dir), "--client", "alice"];
        args.extend(["--request", "charge-1", "--resource", RESOURCE]);
        if json {
            args.push("--json");
        }
        let out = idemstore(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert!(remove(false).starts_with("removed alice/charge-1/"));
    assert_eq!(remove(true).trim_end(), r#"{"removed":false}"#);
    assert!(remove(false).starts_with("not present: alice/charge-1/"));

    let store = Store::open(dir.path()).unwrap();
    assert!(store.get(&key("alice", "charge-1")).unwrap().is_none());
    assert!(store.get(&key("alice", "charge-2")).unwrap().is_some());
}

#[test]
fn verify_passes_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let out = idemstore(&["verify", path(&dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(": OK ("), "{}", stdout(&out));
    let out = idemstore(&["verify", path(&dir), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains(r#""clean":true"#), "{}", stdout(&out));
}

#[test]
fn verify_exits_1_and_names_the_damage_after_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for n in 0..20 {
        let c = claim(&store, &key("alice", &format!("charge-{n}")), b"amount=1");
        store.complete(&c, b"charged").unwrap();
    }
    store.close().unwrap();

    let segment = "00000000000000000001.log";
    let file = dir.path().join(segment);
    let mut bytes = std::fs::read(&file).expect("the first log segment");
    // A byte inside the first frame, after the 32-byte segment header.
    assert!(bytes.len() > 64, "segment has frames");
    bytes[32 + 20] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let out = idemstore(&["verify", path(&dir)]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(text.contains(&format!("{segment} at offset 32")), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");

    let out = idemstore(&["verify", path(&dir), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(r#""clean":false"#),
        "{}",
        stdout(&out)
    );

    // Opening commands refuse the damaged store with one line.
    let err = one_line_error(&idemstore(&["stats", path(&dir)]));
    assert!(err.contains("corruption"), "{err}");
}

#[test]
fn a_held_lock_is_one_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let store = Store::open(dir.path()).unwrap();
    let get = [
        "get",
        path(&dir),
        "--client",
        "alice",
        "--request",
        "charge-1",
    ];
    for args in [
        vec!["stats", path(&dir)],
        vec!["list", path(&dir)],
        [&get[..], &["--resource", RESOURCE]].concat(),
        vec!["purge", path(&dir)],
        vec!["verify", path(&dir)],
    ] {
        let err = one_line_error(&idemstore(&args));
        assert!(err.contains("is locked"), "{args:?}: {err}");
        assert!(err.contains("stop it and retry"), "{err}");
    }
    drop(store);
    assert!(idemstore(&["stats", path(&dir)]).status.success());
}

#[test]
fn bad_input_is_one_line_and_never_creates_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    for command in ["stats", "list", "purge"] {
        let err = one_line_error(&idemstore(&[command, missing]));
        assert!(err.contains(&format!("no store at {missing}")), "{err}");
        assert!(err.contains("no index.redb"), "{err}");
        assert!(
            !Path::new(missing).exists(),
            "{command} created a directory"
        );
    }

    for command in ["stats", "list", "purge"] {
        let err = one_line_error(&idemstore(&[command, path(&dir)]));
        assert!(err.contains("no index.redb"), "{err}");
        assert!(snapshot(dir.path()).is_empty(), "{command} created a file");
    }
    let verify = idemstore(&["verify", path(&dir)]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("no index.redb"));
    assert!(snapshot(dir.path()).is_empty(), "verify created a file");

    make_store(dir.path());
    let args = ["get", path(&dir), "--client", "a", "--request", ""];
    let err = one_line_error(&idemstore(&[&args[..], &["--resource", "x"]].concat()));
    assert!(err.contains("invalid key"), "{err}");

    let usage = idemstore(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("unrecognized subcommand"));
}

#[test]
fn reading_commands_leave_a_torn_store_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    // What a crash in the middle of a write leaves at the end of the log.
    let segment = snapshot(dir.path())
        .into_keys()
        .filter(|n| n.ends_with(".log"))
        .max()
        .expect("a log segment");
    let mut log = std::fs::read(dir.path().join(&segment)).unwrap();
    let end = log.len();
    log.extend_from_slice(b"\x01\x02 the rest of a write a crash cut short");
    std::fs::write(dir.path().join(&segment), &log).unwrap();
    let before = snapshot(dir.path());

    let out = idemstore(&["stats", path(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("(read-only: in memory, nothing written)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("at offset {end} of {segment}")),
        "{text}"
    );
    assert!(text.contains("left on disk"), "{text}");
    let out = idemstore(&["stats", path(&dir), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(
        json.contains(r#""read_only":true,"torn_tail":{"segment""#),
        "{json}"
    );

    let out = idemstore(&["list", path(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3);
    let get = [
        "get",
        path(&dir),
        "--client",
        "alice",
        "--request",
        "charge-1",
    ];
    let out = idemstore(&[&get[..], &["--resource", RESOURCE]].concat());
    assert!(
        stdout(&out).contains("state        completed"),
        "{}",
        stdout(&out)
    );
    let out = idemstore(&["verify", path(&dir)]);
    assert!(stdout(&out).contains("torn log tail"), "{}", stdout(&out));
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a reading command changed a file"
    );

    // A writing command recovers on disk: the tail is cut.
    let out = idemstore(&["purge", path(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cut = std::fs::read(dir.path().join(&segment)).unwrap();
    assert_eq!(&cut[..end], &log[..end]);
    assert!(idemstore(&["stats", path(&dir)]).status.success());
    let text = stdout(&idemstore(&["stats", path(&dir)]));
    assert!(text.contains("torn tail    none"), "{text}");
}

#[test]
fn bench_reports_write_and_lookup_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let out = idemstore(&[
        "bench",
        "--records",
        "200",
        "--lookups",
        "2000",
        "--threads",
        "2",
        "--durability",
        "none",
        "--temp-dir",
        path(&dir),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(json.contains(r#""records":200,"#), "{json}");
    assert!(json.contains(r#""lookups":2000,"#), "{json}");
    assert!(json.contains(r#""writes_per_sec":"#), "{json}");
    // The temporary store is removed afterwards.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A store on a read-only file system (a backup mounted read-only, say): `stats`, `get` and
/// `verify` open every file read-only and take the lock without creating anything, with or
/// without a lock file there. It runs in a private mount namespace (`unshare`, which needs
/// root, as on CI); where that is refused it says it skipped.
#[test]
fn reading_commands_work_on_a_read_only_mount() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    make_store(&store);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Exit 97: no mount rights. Each round mounts a fresh copy read-only; the second has no
    // lock file, which a writer would have had to create.
    let script = r#"
        set -e
        round() {
            mount -t tmpfs tmpfs "$MNT" || exit 97
            cp -a "$STORE/." "$MNT/"
            if [ "$1" = no-lock ]; then rm "$MNT/LOCK"; fi
            mount -o remount,ro "$MNT"
            if touch "$MNT/probe" 2>/dev/null; then exit 98; fi
            echo "== $1"
            "$BIN" stats "$MNT" --json
            "$BIN" get "$MNT" --client alice --request charge-1 --resource "$RESOURCE"
            "$BIN" verify "$MNT"
            ls -A "$MNT"
            umount "$MNT"
        }
        round with-lock
        round no-lock
    "#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("MNT", &mnt)
        .env("STORE", &store)
        .env("RESOURCE", RESOURCE)
        .env("BIN", env!("CARGO_BIN_EXE_idemstore"))
        .output();
    let out = match out {
        Ok(out) if out.status.code() != Some(97) && !stderr(&out).starts_with("unshare:") => out,
        Ok(out) => {
            eprintln!("skipped: no right to mount here: {}", stderr(&out));
            return;
        }
        Err(e) => {
            eprintln!("skipped: unshare not available: {e}");
            return;
        }
    };
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    for round in text.split("== ").skip(1) {
        assert!(round.contains(r#""records":4,"in_progress":1"#), "{round}");
        assert!(round.contains(r#"{"charge":"ch_1"}"#), "{round}");
        assert!(round.contains(": OK ("), "{round}");
    }
    assert_eq!(text.matches("== ").count(), 2, "{text}");
    // Nothing was created: the second copy still has no lock file.
    let no_lock = text.split("== no-lock").nth(1).unwrap();
    assert!(!no_lock.contains("LOCK"), "{no_lock}");
}
