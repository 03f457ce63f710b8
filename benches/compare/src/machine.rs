//! Facts about the machine and the process: CPU, file system, memory, disk usage.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{Value, json};

fn first_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The mount holding `dir`: (mount point, device, file system type, options).
pub fn filesystem(dir: &Path) -> (String, String, String, String) {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(String, String, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || !dir.starts_with(f[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|b| f[1].len() >= b.0.len()) {
            best = Some((f[1].into(), f[0].into(), f[2].into(), f[3].into()));
        }
    }
    best.unwrap_or_default()
}

/// Versions of the crates this harness was built with, from its Cargo.lock.
pub fn crate_versions() -> Value {
    let lock = include_str!("../Cargo.lock");
    let wanted = [
        "idemstore",
        "redb",
        "rusqlite",
        "libsqlite3-sys",
        "redis",
        "postgres",
    ];
    let mut out = serde_json::Map::new();
    let mut name: Option<&str> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(n), Some(v)) = (name, line.strip_prefix("version = "))
            && wanted.contains(&n)
        {
            out.insert(n.to_string(), json!(v.trim_matches('"')));
            name = None;
        }
    }
    out.insert("sqlite (bundled)".into(), json!(rusqlite::version()));
    Value::Object(out)
}

pub fn facts(data_dir: &Path) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (mount, device, fstype, options) = filesystem(data_dir);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": first_field(&cpuinfo, "model name").unwrap_or_default(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": first_field(&meminfo, "MemTotal").unwrap_or_default(),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "hypervisor": cpuinfo.contains(" hypervisor"),
        "data_dir": data_dir.display().to_string(),
        "filesystem": format!("{fstype} on {device} (mounted at {mount}; {options})"),
        "rustc": rustc,
        "crates": crate_versions(),
    })
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM")
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`…), in bytes (0 if it cannot be
/// read).
pub fn status_bytes(name: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    first_field(&status, name)
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0), so each phase reports its own peak.
pub fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// CPU time used so far by each live thread of this process: thread id → (name, user
/// seconds, system seconds). The name is the thread's `comm`, at most 15 bytes:
/// `idemstore-maint` is the store's background apply and checkpoint thread, `idemstore-commi`
/// its async committer, `idemstore-write` the index writeback helper; caller threads carry
/// the harness's own name.
pub fn thread_cpu() -> BTreeMap<u64, (String, f64, f64)> {
    // Linux reports the times in USER_HZ ticks, 100 per second on every architecture.
    const TICKS_PER_SEC: f64 = 100.0;
    let mut threads = BTreeMap::new();
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().parse::<u64>();
        // A thread that exited meanwhile has no stat to read.
        let times = fs::read_to_string(task.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(task_times);
        if let (Ok(tid), Some((name, user, sys))) = (tid, times) {
            threads.insert(tid, (name, user / TICKS_PER_SEC, sys / TICKS_PER_SEC));
        }
    }
    threads
}

/// A thread's name and its user and system time in ticks, from `/proc/…/task/…/stat`:
/// `tid (comm) state ppid …`. The name may hold spaces and parentheses, so the fields are
/// counted from the last `)`; utime and stime are the 12th and 13th after it.
fn task_times(stat: &str) -> Option<(String, f64, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let sys = fields.next()?.parse().ok()?;
    Some((name, user, sys))
}

/// What the threads used between two readings of [`thread_cpu`], summed per thread name,
/// busiest first. Each thread counts what it used since the first reading (all of it, if it
/// started after); a thread that exited before the second reading is missing from it, and
/// so is what it used in between.
pub fn cpu_between(
    before: &BTreeMap<u64, (String, f64, f64)>,
    after: &BTreeMap<u64, (String, f64, f64)>,
) -> Vec<(String, f64, f64)> {
    let mut by_name: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (tid, (name, u, s)) in after {
        let (u0, s0) = match before.get(tid) {
            Some((_, u0, s0)) => (*u0, *s0),
            None => (0.0, 0.0),
        };
        let entry = by_name.entry(name).or_default();
        entry.0 += (u - u0).max(0.0);
        entry.1 += (s - s0).max(0.0);
    }
    let mut used: Vec<(String, f64, f64)> = by_name
        .into_iter()
        .filter(|(_, (u, s))| u + s > 0.0)
        .map(|(name, (u, s))| (name.to_string(), u, s))
        .collect();
    used.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    used
}

/// Bytes allocated on disk (st_blocks × 512) by the files under `dir`, and their apparent size.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut allocated = 0;
    let mut apparent = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    let (a, b) = disk_usage(&e.path());
                    allocated += a;
                    apparent += b;
                } else {
                    allocated += m.blocks() * 512;
                    apparent += m.len();
                }
            }
        }
    }
    (allocated, apparent)
}

/// "name 12.3 MiB, ..." for the files directly in `dir`, largest first (allocated bytes).
pub fn file_breakdown(dir: &Path) -> String {
    let mut files: Vec<(u64, String)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    m.is_file().then(|| {
                        (
                            m.blocks() * 512,
                            e.file_name().to_string_lossy().into_owned(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by(|a, b| b.cmp(a));
    files
        .iter()
        .filter(|(bytes, _)| *bytes > 0)
        .map(|(bytes, name)| format!("{name} {:.1} MiB", *bytes as f64 / (1 << 20) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_times_reads_utime_and_stime_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194368 10 0 0 0 123 45 0 0 20 0 3 0";
        assert_eq!(
            task_times(stat),
            Some(("my (odd) name".to_string(), 123.0, 45.0))
        );
        assert_eq!(task_times("4242 (short) S 1 2"), None);
        assert_eq!(task_times("garbage"), None);
    }

    #[test]
    fn a_thread_that_exits_does_not_take_its_namesakes_time_away() {
        let tick = |name: &str, t: f64| (name.to_string(), t, 0.0);
        let before = BTreeMap::from([
            (1, tick("a", 5.0)),
            (2, tick("a", 7.0)),
            (3, tick("b", 1.0)),
        ]);
        // Thread 2 exited; thread 4 started; thread 1 used 0.5 s more.
        let after = BTreeMap::from([
            (1, tick("a", 5.5)),
            (3, tick("b", 1.0)),
            (4, tick("a", 0.25)),
        ]);
        assert_eq!(
            cpu_between(&before, &after),
            vec![("a".to_string(), 0.75, 0.0)]
        );
    }

    #[test]
    fn a_spinning_thread_shows_up_and_cpu_between_keeps_only_what_grew() {
        let before = thread_cpu();
        // Spin until 0.2 s of CPU shows (ticks are 10 ms); a loaded machine may take longer
        // than 0.2 s of wall time to give it, so the deadline is generous.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let used = loop {
            let spun = std::time::Instant::now();
            while spun.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let used = cpu_between(&before, &thread_cpu());
            let total: f64 = used.iter().map(|(_, u, s)| u + s).sum();
            if total >= 0.2 || started.elapsed() > std::time::Duration::from_secs(60) {
                break used;
            }
        };
        let total: f64 = used.iter().map(|(_, u, s)| u + s).sum();
        assert!(
            total >= 0.2,
            "a minute of spinning showed as {total} s: {used:?}"
        );
        assert!(used.iter().all(|(_, u, s)| u + s > 0.0));
        assert!(used.windows(2).all(|w| w[0].1 + w[0].2 >= w[1].1 + w[1].2));
    }
}
