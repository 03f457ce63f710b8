//! Facts about the machine and the process: CPU, file system, memory, disk usage.

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
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    first_field(&status, "VmHWM")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0), so each phase reports its own peak.
pub fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
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
