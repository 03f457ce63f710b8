//! Results: rows with their peer and ratio, the bars, and the Markdown and JSON output.

use serde_json::{Value, json};

use crate::workload::Measured;

/// One measured figure and the peer it is compared with in the same run.
#[derive(Debug, Clone)]
pub struct Row {
    pub group: String,
    pub subject: String,
    /// The headline value: ops/s for throughput rows, else in `unit`.
    pub value: f64,
    pub unit: &'static str,
    /// p50, p99, p99.9 in microseconds, for rows with latency samples.
    pub latency: Option<[f64; 3]>,
    pub peer: Option<(String, f64)>,
    pub note: String,
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        self.peer
            .as_ref()
            .filter(|(_, v)| *v > 0.0 && v.is_finite())
            .map(|(_, v)| self.value / v)
    }

    pub fn json(&self) -> Value {
        json!({
            "group": self.group,
            "subject": self.subject,
            "value": finite(self.value),
            "unit": self.unit,
            "p50_us": self.latency.map(|l| finite(l[0])),
            "p99_us": self.latency.map(|l| finite(l[1])),
            "p999_us": self.latency.map(|l| finite(l[2])),
            "peer": self.peer.as_ref().map(|p| p.0.clone()),
            "peer_value": self.peer.as_ref().map(|p| finite(p.1)),
            "ratio_to_peer": self.ratio().map(finite),
            "note": self.note,
        })
    }
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

pub fn latency(m: &Measured) -> Option<[f64; 3]> {
    (!m.samples.is_empty()).then(|| {
        [
            m.quantile_us(0.5),
            m.quantile_us(0.99),
            m.quantile_us(0.999),
        ]
    })
}

/// A goal from issue 4 and whether this run met it.
#[derive(Debug, Clone)]
pub struct Bar {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    match unit {
        "ops/s" | "records/s" => {
            if v >= 1e6 {
                format!("{:.2} M", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1} k", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        }
        "s" => format!("{v:.3} s"),
        "ms" => format!("{v:.2} ms"),
        "MiB" => format!("{v:.1} MiB"),
        "B" => format!("{v:.0} B"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

pub fn markdown(
    rows: &[Row],
    bars: &[Bar],
    facts: &Value,
    config: &Value,
    notes: &[String],
) -> String {
    let mut out = String::new();
    out.push_str("## Machine and run\n\n");
    if let (Value::Object(f), Value::Object(c)) = (facts, config) {
        for (k, v) in f.iter().chain(c.iter()) {
            out.push_str(&format!("- **{k}**: {}\n", compact(v)));
        }
    }
    if !notes.is_empty() {
        out.push_str("\n## Notes from this run\n\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    let mut groups: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for g in groups {
        out.push_str(&format!("\n### {g}\n\n"));
        out.push_str("| subject | value | p50 | p99 | p99.9 | ratio | peer (same run) | note |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
        for r in rows.iter().filter(|r| r.group == g) {
            let (p50, p99, p999) = match r.latency {
                Some(l) => (fmt_us(l[0]), fmt_us(l[1]), fmt_us(l[2])),
                None => ("".into(), "".into(), "".into()),
            };
            let value = match r.unit {
                "ops/s" | "records/s" => format!("{} {}", fmt_value(r.value, r.unit), r.unit),
                _ => fmt_value(r.value, r.unit),
            };
            let ratio = r.ratio().map_or(String::new(), |x| format!("{x:.2}×"));
            let peer = r.peer.as_ref().map_or(String::new(), |(n, v)| {
                format!("{n} ({})", fmt_value(*v, r.unit))
            });
            out.push_str(&format!(
                "| {} | {value} | {p50} | {p99} | {p999} | {ratio} | {peer} | {} |\n",
                r.subject, r.note
            ));
        }
    }
    out.push_str("\n### The bars of issue 4\n\n| goal | measured | met |\n|---|---|---|\n");
    for b in bars {
        let met = match b.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        out.push_str(&format!("| {} | {} | {met} |\n", b.goal, b.measured));
    }
    out
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {}", compact(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

pub fn json_report(
    rows: &[Row],
    bars: &[Bar],
    facts: &Value,
    config: &Value,
    notes: &[String],
) -> Value {
    json!({
        "machine": facts,
        "config": config,
        "notes": notes,
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "bars": bars.iter().map(|b| json!({"goal": b.goal, "measured": b.measured, "met": b.met})).collect::<Vec<_>>(),
    })
}
